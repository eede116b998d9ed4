"""Envoy's ``tls_inspector``: read the server name and ALPN offer from a TLS ClientHello before the
handshake, to pick the filter chain (and with it the certificate and the routes) for a connection.

Why before the handshake rather than in an SNI callback: the filter chain decides more than the
certificate — which routes, whether TLS is terminated at all — and a connection whose name matches
no chain is closed without a handshake, as Envoy closes it.  The parser reads only what it needs,
bounds what it buffers (:data:`MAX_CLIENT_HELLO`, Envoy's ``max_client_hello_size`` default), and
never raises on bad input except :class:`NotClientHello`.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

__all__ = [
    "MAX_CLIENT_HELLO",
    "ClientHelloInfo",
    "NotClientHello",
    "PrefixedStream",
    "parse_client_hello",
    "peek_client_hello",
]

MAX_CLIENT_HELLO = 64 * 1024
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class NotClientHello(ValueError):
    """The bytes are not (the start of) a TLS ClientHello."""


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    server_name: str | None
    alpn_protocols: tuple[str, ...]


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake-layer bytes carried by the leading TLS records of ``data``, or None when the
    ClientHello is not complete yet."""
    out = bytearray()
    offset = 0
    while True:
        if len(data) - offset < 5:
            return None
        content_type, major = data[offset], data[offset + 1]
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if content_type != _HANDSHAKE or major != 3 or length == 0 or length > 16384 + 2048:
            raise NotClientHello("not a TLS handshake record")
        if len(data) - offset - 5 < length:
            return None
        out += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(out) >= 4:
            if out[0] != _CLIENT_HELLO:
                raise NotClientHello("first handshake message is not a ClientHello")
            needed = 4 + int.from_bytes(out[1:4], "big")
            if needed > MAX_CLIENT_HELLO:
                raise NotClientHello("ClientHello larger than the inspector reads")
            if len(out) >= needed:
                return bytes(out[4:needed])


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise NotClientHello("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))


def parse_client_hello(data: bytes) -> ClientHelloInfo | None:
    """The server name and ALPN list of the ClientHello at the start of ``data``; None if more bytes
    are needed; :class:`NotClientHello` if these bytes cannot be one."""
    body = _handshake_bytes(data)
    if body is None:
        return None
    r = _Reader(body)
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # legacy_session_id
    r.vector(2)  # cipher_suites
    r.vector(1)  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if r.pos == len(body):
        return ClientHelloInfo(None, ())  # no extensions at all (SSL 3 style)
    extensions = _Reader(r.vector(2))
    while extensions.pos < len(extensions.data):
        kind = extensions.uint(2)
        ext = _Reader(extensions.vector(2))
        if kind == _EXT_SERVER_NAME:
            names = _Reader(ext.vector(2))
            while names.pos < len(names.data):
                name_type = names.uint(1)
                name = names.vector(2)
                if name_type == 0 and server_name is None:
                    try:
                        server_name = name.decode("ascii").lower().rstrip(".")
                    except UnicodeDecodeError:
                        raise NotClientHello("server name is not ASCII") from None
        elif kind == _EXT_ALPN:
            protocols = _Reader(ext.vector(2))
            found = []
            while protocols.pos < len(protocols.data):
                found.append(protocols.vector(1).decode("latin-1"))
            alpn = tuple(found)
    return ClientHelloInfo(server_name, alpn)


class PrefixedStream(trio.abc.Stream):
    """``inner`` with bytes already read from it put back in front (what the inspector peeked)."""

    def __init__(
        self, prefix: bytes, inner: trio.abc.Stream, client_hello: ClientHelloInfo | None = None
    ) -> None:
        self._prefix = prefix
        self.inner = inner
        self.client_hello = client_hello  # what the peeked bytes said (RBAC's requested_server_name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:n], self._prefix[n:]
            return chunk
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def peek_client_hello(stream: trio.abc.Stream) -> tuple[ClientHelloInfo | None, PrefixedStream]:
    """Read until the ClientHello is whole; returns what it says (None when the bytes are not TLS,
    or the peer closed first) and a stream that still yields every byte read."""
    buffered = b""
    info: ClientHelloInfo | None = None
    while len(buffered) < MAX_CLIENT_HELLO + 5 * 8:
        chunk = await stream.receive_some(16384)
        if not chunk:
            break
        buffered += chunk
        try:
            info = parse_client_hello(buffered)
        except NotClientHello:
            break
        if info is not None:
            break
    return info, PrefixedStream(buffered, stream, info)
