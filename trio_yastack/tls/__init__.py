"""TLS for the proxy, over any ``trio.abc.Stream``: a kernel socket's or the user-space stack's.

``trio.SSLStream`` does the TLS itself; this package holds what the proxy needs around it:

- :mod:`.config`: the TLS settings of a filter chain or a cluster, as typed objects;
- :mod:`.contexts`: the ``ssl.SSLContext`` of a filter chain (termination: its certificates, its
  ALPN list, client certificates verified when offered) and of a cluster (origination: the trusted
  CA and SNI), from Envoy's ``DownstreamTlsContext`` and ``UpstreamTlsContext``;
- :mod:`.client_hello`: Envoy's ``tls_inspector``, the SNI and ALPN offer read from the ClientHello
  before the handshake to choose the filter chain, with the bytes it read put back in front of the
  stream (``PrefixedStream``);
- :mod:`.certs`: development certificates (``yastack certs``), a throwaway CA and leaves that a real
  client accepts with hostname checking on.
"""
