"""What the filters know of the downstream connection a request came on: the peer's and our own
address, and the TLS session's peer certificate (RBAC's principals, ext_authz's ``source``).

Why looked up here, from the connection manager's per-connection object, rather than handed to
every request: only the filters that ask (RBAC, ext_authz) pay for the lookups, once per connection
(the result is kept in the connection's filter state), and a connection manager without them pays
nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["ConnectionInfo", "connection_info"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: how many wrappers (an HTTP/2 stream, TLS, a ClientHello peek) to look through for the socket
_MAX_LAYERS = 8


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """``remote``: the peer's address (Envoy's ``direct_remote_ip``; with no trusted hops of
    ``x-forwarded-for`` also ``remote_ip``); ``local``/``local_port``: the address the client
    connected to; ``tls``: whether the connection is TLS, and ``peer_cert`` the client certificate as
    :meth:`ssl.SSLSocket.getpeercert` gives it (empty when none was presented); ``server_name``: the
    SNI the listener's TLS inspector read (None when it did not run or the ClientHello had none)."""

    remote: Address | None = None
    remote_port: int | None = None
    local: Address | None = None
    local_port: int | None = None
    tls: bool = False
    peer_cert: dict[str, Any] = field(default_factory=dict)
    peer_cert_der: bytes | None = None
    server_name: str | None = None

    def uri_sans(self) -> list[str]:
        return [v for k, v in self.peer_cert.get("subjectAltName", ()) if k == "URI"]

    def dns_sans(self) -> list[str]:
        return [v for k, v in self.peer_cert.get("subjectAltName", ()) if k == "DNS"]

    def subject(self) -> str:
        """The peer certificate's subject in RFC 2253's order and form (``CN=client,O=Example``),
        as Envoy's ``subjectPeerCertificate`` writes it."""
        names = [f"{_RDN_NAMES.get(k, k)}={v}" for rdn in self.peer_cert.get("subject", ()) for k, v in rdn]
        return ",".join(reversed(names))


_RDN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "emailAddress": "emailAddress",
}
_KEY = id(ConnectionInfo)  # the key of the per-connection cache in the connection's filter state


def _address(text: object) -> Address | None:
    try:
        return ipaddress.ip_address(str(text).partition("%")[0])
    except ValueError:
        return None


def connection_info(downstream: object, state: dict[int, object]) -> ConnectionInfo:
    """The :class:`ConnectionInfo` of ``downstream`` (the connection manager's connection object:
    ``remote`` and ``stream``), looked up once per connection and kept in ``state``."""
    found = state.get(_KEY)
    if isinstance(found, ConnectionInfo):
        return found
    remote = _address(getattr(downstream, "remote", None))
    remote_port = local = local_port = None
    tls, cert, der, server_name = False, dict[str, Any](), None, None
    stream: object = getattr(downstream, "stream", None)
    for _ in range(_MAX_LAYERS):
        if isinstance(stream, trio.SSLStream):
            tls = True
            try:
                cert = stream.getpeercert() or {}
                der = stream.getpeercert(binary_form=True)
            except (ValueError, AttributeError):  # not yet handshaken: no certificate to read
                cert, der = {}, None
            stream = stream.transport_stream
        elif isinstance(stream, trio.SocketStream):
            try:
                here, peer = stream.socket.getsockname(), stream.socket.getpeername()
            except OSError:
                break
            local, local_port = _address(here[0]), int(here[1])
            remote_port = int(peer[1])
            break
        else:  # an HTTP/2 stream's connection, or a wrapper that replays a peeked ClientHello
            hello = getattr(stream, "client_hello", None)  # the TLS inspector's reading
            if hello is not None and server_name is None:
                server_name = hello.server_name
            conn = getattr(stream, "conn", None)
            stream = getattr(conn, "transport", None) if conn is not None else getattr(stream, "inner", None)
            if stream is None:
                break
    info = ConnectionInfo(remote, remote_port, local, local_port, tls, cert, der, server_name)
    state[_KEY] = info
    return info
