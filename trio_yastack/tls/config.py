r"""The TLS settings of Envoy's ``DownstreamTlsContext`` and ``UpstreamTlsContext``, as typed frozen
objects.

They live here, below ``l7``, because :mod:`.contexts` turns them into ``ssl.SSLContext``\ s and the
layers point down only; :mod:`trio_yastack.l7.config` parses them from a proxy config (with every
problem's YAML path) and re-exports them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "TLS_VERSIONS",
    "CommonTlsContext",
    "DataSource",
    "DownstreamTlsContext",
    "SubjectAltNameMatcher",
    "TlsCertificate",
    "TlsParams",
    "UpstreamTlsContext",
]

TlsVersion = Literal["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"]
TLS_VERSIONS: tuple[TlsVersion, ...] = ("TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3")


@dataclass(frozen=True, slots=True)
class DataSource:
    """Envoy's ``DataSource``: a ``filename``, or the bytes themselves (``inline_string`` /
    ``inline_bytes``).  Printed as the filename, or ``<inline>``: a key must never reach a log."""

    filename: str | None = None
    inline: bytes | None = None

    def __str__(self) -> str:
        return self.filename if self.filename is not None else "<inline>"

    def read(self) -> bytes:
        """The bytes (``OSError`` for a file that cannot be read)."""
        if self.inline is not None:
            return self.inline
        assert self.filename is not None  # one of the two is set: the config reader checks
        return Path(self.filename).read_bytes()


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """``tls_certificates[]``: ``certificate_chain`` and ``private_key`` (PEM), each a :class:`DataSource`.

    Filenames are kept as written; Envoy resolves relative ones against its working directory, and
    :func:`trio_yastack.l7.config.load_config_file` against the config file's directory."""

    certificate_chain: DataSource
    private_key: DataSource


@dataclass(frozen=True, slots=True)
class SubjectAltNameMatcher:
    """``match_typed_subject_alt_names[]``: a SAN of ``san_type`` that the peer's certificate must carry,
    matched as a ``StringMatcher`` (``exact``, ``prefix``, ``suffix``, ``contains``, ``safe_regex``)."""

    san_type: Literal["DNS", "URI", "EMAIL", "IP_ADDRESS"]
    kind: Literal["exact", "prefix", "suffix", "contains", "safe_regex"]
    value: str
    ignore_case: bool = False

    def matches(self, san_type: str, text: str) -> bool:
        if san_type != self.san_type:
            return False
        if self.kind == "safe_regex":
            return re.fullmatch(self.value, text) is not None
        value = self.value
        if self.san_type == "IP_ADDRESS" and self.kind == "exact":
            try:  # compare addresses, not spellings (Python prints IPv6 SANs its own way)
                return ipaddress.ip_address(text) == ipaddress.ip_address(value)
            except ValueError:
                return False
        if self.ignore_case:
            value, text = value.lower(), text.lower()
        if self.kind == "exact":
            return text == value
        if self.kind == "prefix":
            return text.startswith(value)
        if self.kind == "suffix":
            return text.endswith(value)
        return value in text


@dataclass(frozen=True, slots=True)
class TlsParams:
    """``tls_params``: protocol versions (Envoy's defaults: TLS 1.2 to 1.3 both ways) and the TLS 1.2
    ``cipher_suites`` (OpenSSL names, which Envoy's BoringSSL names are; empty: OpenSSL's defaults)."""

    tls_minimum_protocol_version: TlsVersion = "TLS_AUTO"
    tls_maximum_protocol_version: TlsVersion = "TLS_AUTO"
    cipher_suites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CommonTlsContext:
    """``common_tls_context``: certificates to present, ``validation_context.trusted_ca`` to verify the
    peer with (no verification when absent) and the SANs the peer must have, ALPN protocols to offer
    (none by default), and ``tls_params``."""

    tls_certificates: tuple[TlsCertificate, ...] = ()
    trusted_ca: DataSource | None = None
    alpn_protocols: tuple[str, ...] = ()
    match_subject_alt_names: tuple[SubjectAltNameMatcher, ...] = ()
    tls_params: TlsParams = field(default_factory=TlsParams)


@dataclass(frozen=True, slots=True)
class DownstreamTlsContext:
    """TLS termination on a filter chain; needs at least one certificate.  With
    ``require_client_certificate`` a client without a valid certificate is refused (mutual TLS)."""

    common_tls_context: CommonTlsContext
    require_client_certificate: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamTlsContext:
    """TLS towards a cluster's endpoints; ``sni`` is the server name sent (none when absent, as in Envoy)."""

    common_tls_context: CommonTlsContext
    sni: str | None = None
