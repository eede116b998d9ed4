"""``ssl.SSLContext`` objects from the proxy's TLS configuration (Envoy's Downstream/UpstreamTlsContext).

Termination: one server context per filter chain, holding that chain's certificates (several key
types may be given, e.g. RSA and ECDSA, and OpenSSL picks by the client's offer) and its ALPN list.
With a ``validation_context`` the client may present a certificate, which is then verified
(Envoy's default ``require_client_certificate: false``); with ``require_client_certificate`` it must
(mutual TLS).  ``match_typed_subject_alt_names`` is checked after the handshake
(:func:`peer_san_matches`), by the caller, which closes a connection whose peer fails it (Envoy
fails the handshake itself; the client sees a close either way).

Origination: a client context per cluster.  With ``validation_context.trusted_ca`` the upstream's
chain is verified, and when ``sni`` is set its certificate must also name that host (stricter than
Envoy, which checks names only with ``match_typed_subject_alt_names``); without a trusted CA the
upstream is not verified, as in Envoy, and the proxy says so when it starts.  Upstreams are spoken
to in HTTP/1.1, so that is the only ALPN protocol offered.

Inline certificates and keys (``inline_string``/``inline_bytes``) are written to a private temporary
directory only for the moment OpenSSL loads them (Python's ``ssl`` loads chains from files only).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

from .config import (
    CommonTlsContext,
    DataSource,
    DownstreamTlsContext,
    TlsParams,
    TlsVersion,
    UpstreamTlsContext,
)

__all__ = ["SERVED_ALPN", "TlsSetupError", "client_context", "peer_san_matches", "server_context"]

#: the ALPN protocols the proxy speaks to clients (h2: trio_yastack.l7.h2_downstream)
SERVED_ALPN = ("h2", "http/1.1")
#: what it offers upstreams (an HTTP/2 cluster's ClusterRuntime sets h2 on its own context)
UPSTREAM_ALPN = ("http/1.1",)

_VERSIONS: dict[TlsVersion, ssl.TLSVersion] = {
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}
#: how Python's getpeercert() names SAN types, in Envoy's names
_SAN_TYPES = {"DNS": "DNS", "URI": "URI", "email": "EMAIL", "IP Address": "IP_ADDRESS"}


class TlsSetupError(ValueError):
    """A certificate, key or CA could not be loaded (or a TLS parameter applied), with the reason."""


def _load_certificates(context: ssl.SSLContext, tls: CommonTlsContext) -> None:
    for cert in tls.tls_certificates:
        chain, key = cert.certificate_chain, cert.private_key
        try:
            if chain.filename is not None and key.filename is not None:
                context.load_cert_chain(chain.filename, key.filename)
            else:
                _load_inline_chain(context, chain, key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"certificate {chain} / key {key}: {exc.strerror or exc}") from None


def _load_inline_chain(context: ssl.SSLContext, chain: DataSource, key: DataSource) -> None:
    with tempfile.TemporaryDirectory(prefix="yastack-tls-") as directory:  # mode 0700
        paths = []
        for name, source in (("chain.pem", chain), ("key.pem", key)):
            path = Path(directory) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(source.read())
            paths.append(str(path))
        context.load_cert_chain(paths[0], paths[1])


def _load_ca(context: ssl.SSLContext, ca: DataSource) -> None:
    try:
        if ca.filename is not None:
            context.load_verify_locations(cafile=ca.filename)
        else:
            context.load_verify_locations(cadata=ca.read().decode("ascii", "replace"))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TlsSetupError(f"trusted_ca {ca}: {getattr(exc, 'strerror', None) or exc}") from None


def _apply_params(context: ssl.SSLContext, params: TlsParams) -> None:
    """``tls_params``: Envoy's defaults are TLS 1.2 to TLS 1.3 (``TLS_AUTO``) both ways."""
    try:
        context.minimum_version = _VERSIONS.get(params.tls_minimum_protocol_version, ssl.TLSVersion.TLSv1_2)
        context.maximum_version = _VERSIONS.get(params.tls_maximum_protocol_version, ssl.TLSVersion.TLSv1_3)
        if params.cipher_suites:
            # Envoy's "[A|B]" equal-preference groups: OpenSSL has none, so the order decides
            names = [n for s in params.cipher_suites for n in s.strip("[]").split("|") if n]
            context.set_ciphers(":".join(names))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsSetupError(f"tls_params: {exc}") from None


def server_context(tls: DownstreamTlsContext) -> ssl.SSLContext:
    """The server context of one filter chain."""
    common = tls.common_tls_context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_params(context, common.tls_params)
    context.options |= ssl.OP_NO_COMPRESSION
    _load_certificates(context, common)
    if common.trusted_ca is not None:
        _load_ca(context, common.trusted_ca)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    alpn = [p for p in common.alpn_protocols if p in SERVED_ALPN]
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def client_context(tls: UpstreamTlsContext) -> ssl.SSLContext:
    """The client context of one cluster (see the module docstring for what is verified)."""
    common = tls.common_tls_context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_params(context, common.tls_params)
    if common.trusted_ca is not None:
        _load_ca(context, common.trusted_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = tls.sni is not None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    _load_certificates(context, common)  # a client certificate, for upstreams that ask (mTLS)
    context.set_alpn_protocols(list(UPSTREAM_ALPN))
    return context


def peer_san_matches(tls: CommonTlsContext, peer_cert: dict[str, Any] | None) -> bool:
    """Whether the verified peer certificate satisfies ``match_typed_subject_alt_names`` (any matcher
    matching any SAN of its type, as Envoy's rule is); True when there are no matchers, and when the
    peer sent no certificate where none is required (Envoy checks only certificates presented)."""
    if not tls.match_subject_alt_names or not peer_cert:
        return True
    sans = [(_SAN_TYPES.get(kind, kind), str(value)) for kind, value in peer_cert.get("subjectAltName", ())]
    return any(m.matches(kind, value) for m in tls.match_subject_alt_names for kind, value in sans)
