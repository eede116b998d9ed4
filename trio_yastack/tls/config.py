r"""The TLS settings of Envoy's ``DownstreamTlsContext`` and ``UpstreamTlsContext``, as typed frozen
objects.

They live here, below ``l7``, because :mod:`.contexts` turns them into ``ssl.SSLContext``\ s and the
layers point down only; :mod:`trio_yastack.l7.config` parses them from a proxy config (with every
problem's YAML path) and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CommonTlsContext", "DownstreamTlsContext", "TlsCertificate", "UpstreamTlsContext"]


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """``tls_certificates[]``: ``certificate_chain.filename`` and ``private_key.filename`` (PEM files).

    Filenames are kept as written; Envoy resolves relative ones against its working directory, and
    :func:`trio_yastack.l7.config.load_config_file` with ``check_files=True`` against the config
    file's directory."""

    certificate_chain: str
    private_key: str


@dataclass(frozen=True, slots=True)
class CommonTlsContext:
    """``common_tls_context``: certificates to present, ``validation_context.trusted_ca.filename`` to
    verify the peer with (no verification when absent), and ALPN protocols to offer (none by default)."""

    tls_certificates: tuple[TlsCertificate, ...] = ()
    trusted_ca: str | None = None
    alpn_protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DownstreamTlsContext:
    """TLS termination on a filter chain; needs at least one certificate."""

    common_tls_context: CommonTlsContext


@dataclass(frozen=True, slots=True)
class UpstreamTlsContext:
    """TLS towards a cluster's endpoints; ``sni`` is the server name sent (none when absent, as in Envoy)."""

    common_tls_context: CommonTlsContext
    sni: str | None = None
