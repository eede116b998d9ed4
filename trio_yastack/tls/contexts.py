"""``ssl.SSLContext`` objects from the proxy's TLS configuration (Envoy's Downstream/UpstreamTlsContext).

Termination: one server context per filter chain, holding that chain's certificates (several key
types may be given, e.g. RSA and ECDSA, and OpenSSL picks by the client's offer) and its ALPN list.
With a ``validation_context`` the client may present a certificate, which is then verified
(Envoy's default ``require_client_certificate: false``).

Origination: a client context per cluster.  With ``validation_context.trusted_ca`` the upstream's
chain is verified, and when ``sni`` is set its certificate must also name that host (stricter than
Envoy, which checks names only with ``match_typed_subject_alt_names``); without a trusted CA the
upstream is not verified, as in Envoy, and the proxy says so when it starts.  Upstreams are spoken
to in HTTP/1.1, so that is the only ALPN protocol offered.
"""

from __future__ import annotations

import ssl

from .config import CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext

__all__ = ["SERVED_ALPN", "TlsSetupError", "client_context", "server_context"]

#: the ALPN protocols the proxy speaks to clients (h2 is not served yet: see trio_yastack.l7.proxy)
SERVED_ALPN = ("http/1.1",)


class TlsSetupError(ValueError):
    """A certificate, key or CA file could not be loaded, with the file and the reason."""


def _load_certificates(context: ssl.SSLContext, tls: CommonTlsContext) -> None:
    for cert in tls.tls_certificates:
        try:
            context.load_cert_chain(cert.certificate_chain, cert.private_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(
                f"certificate {cert.certificate_chain} / key {cert.private_key}: {exc.strerror or exc}"
            ) from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"trusted_ca {ca}: {exc.strerror or exc}") from None


def server_context(tls: DownstreamTlsContext) -> ssl.SSLContext:
    """The server context of one filter chain (TLS 1.2 or later)."""
    common = tls.common_tls_context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    _load_certificates(context, common)
    if common.trusted_ca is not None:
        _load_ca(context, common.trusted_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    alpn = [p for p in common.alpn_protocols if p in SERVED_ALPN]
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def client_context(tls: UpstreamTlsContext) -> ssl.SSLContext:
    """The client context of one cluster (see the module docstring for what is verified)."""
    common = tls.common_tls_context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if common.trusted_ca is not None:
        _load_ca(context, common.trusted_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = tls.sni is not None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    _load_certificates(context, common)  # a client certificate, for upstreams that ask (mTLS)
    context.set_alpn_protocols(list(SERVED_ALPN))
    return context
