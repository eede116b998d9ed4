"""``envoy.filters.http.grpc_web``: lets gRPC-Web clients (browsers) call a gRPC upstream.

The gRPC-Web protocol (grpc/grpc's doc/PROTOCOL-WEB.md) and Envoy's filter
(source/extensions/filters/http/grpc_web/grpc_web_filter.cc): a request whose content type is
``application/grpc-web[+proto]`` goes upstream as ``application/grpc`` with ``te: trailers``; one of
``application/grpc-web-text[+proto]`` has its body base64-decoded on the way (and its length is no
longer known: it goes chunked).  The response comes back as ``application/grpc-web+proto`` (or
``-text+proto``, base64-encoded), and the trailers (``grpc-status``, ``grpc-message``) travel at the
end of the body in a frame of their own: the byte ``0x80``, a 4-byte big-endian length, then
``name:value\\r\\n`` lines.  A response that is only headers (gRPC's "trailers-only") keeps
``grpc-status`` among its headers, as gRPC-Web allows.

Other requests pass untouched, so the filter can sit in front of plain HTTP and gRPC routes too.
Preflights for gRPC-Web's headers (``x-grpc-web``, ``x-user-agent``) are the CORS filter's work.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import PerRouteConfig
from ..stats import Scope

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["GrpcWebFilter", "GrpcWebResponse", "TextRequestDecoder", "trailer_frame"]

Headers = list[tuple[bytes, bytes]]

GRPC_WEB = b"application/grpc-web"
GRPC_WEB_TEXT = b"application/grpc-web-text"
_GRPC_WEB_PROTO = b"application/grpc-web+proto"
_GRPC_WEB_TEXT_PROTO = b"application/grpc-web-text+proto"
#: the flag of gRPC-Web's trailer frame (the most significant bit of the frame's first byte)
TRAILER_FLAG = 0x80
_FRAME = struct.Struct(">BI")
#: the most base64 text a request may leave undecoded between pieces (less than one group of 4)
_B64_GROUP = 4


def trailer_frame(trailers: Headers) -> bytes:
    """gRPC-Web's trailer frame for ``trailers`` (names lowercased, as HTTP/2 has them)."""
    block = b"".join(name.lower() + b":" + value + b"\r\n" for name, value in trailers)
    return _FRAME.pack(TRAILER_FLAG, len(block)) + block


class TextRequestDecoder:
    """The base64 body of a ``grpc-web-text`` request, decoded piece by piece: text is decoded in
    whole groups of four characters, the rest kept for the next piece.  Clients may send one padded
    base64 string per message; padded groups decode on their own, so concatenations work too."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def decode(self, data: bytes) -> bytes:
        """Decoded bytes of ``data`` (b"" at the end of the body: then nothing may be left)."""
        text = self._rest + bytes(data).replace(b"\r", b"").replace(b"\n", b"")
        if not data and text:
            raise ValueError("grpc-web-text body ends inside a base64 group")
        whole = len(text) - len(text) % _B64_GROUP
        self._rest = text[whole:]
        groups, out, start = text[:whole], [], 0
        try:
            # a padded group ends one base64 string: decode each string on its own
            pad = groups.find(b"=")
            while pad != -1:
                end = pad - pad % _B64_GROUP + _B64_GROUP
                out.append(base64.b64decode(groups[start:end], validate=True))
                start = end
                pad = groups.find(b"=", start)
            out.append(base64.b64decode(groups[start:], validate=True))
        except binascii.Error as exc:
            raise ValueError(f"grpc-web-text body is not base64: {exc}") from None
        return b"".join(out)


class GrpcWebResponse:
    """The response side for one gRPC-Web request (an encoder of :class:`~._chain.FilterOutcome`):
    the content type back to gRPC-Web's, the trailers into the body, base64 for ``-text``."""

    __slots__ = ("_pending", "text")

    def __init__(self, text: bool) -> None:
        self.text = text
        self._pending = b""  # -text: bytes not yet encoded (fewer than 3: base64 works in groups of 3)

    def encode_headers(self, status: int, headers: Headers) -> Headers:
        content_type = _GRPC_WEB_TEXT_PROTO if self.text else _GRPC_WEB_PROTO
        out = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
        out.append((b"content-type", content_type))
        return out

    def encode_data(self, data: bytes) -> bytes:
        if not self.text:
            return data
        data = self._pending + bytes(data)
        whole = len(data) - len(data) % 3
        self._pending = data[whole:]
        return base64.b64encode(data[:whole])

    def encode_end(self, trailers: Headers) -> tuple[bytes, Headers]:
        """The body's last bytes (the trailer frame) and the trailers left to send as trailers
        (none: gRPC-Web clients read them from the body)."""
        frame = trailer_frame(trailers) if trailers else b""
        if not self.text:
            return frame, []
        tail = self._pending
        self._pending = b""
        # the message bytes close with their own padding, then the trailer frame is a padded
        # base64 string of its own (as Envoy writes it: a client decodes padded groups one by one)
        return base64.b64encode(tail) + base64.b64encode(frame), []


class GrpcWebFilter:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: Callable[[], float],
    ) -> None:
        headers = request.headers
        content_type = next((v for k, v in headers if k == b"content-type"), b"").lower()
        if not content_type.startswith(GRPC_WEB):
            return
        text = content_type.startswith(GRPC_WEB_TEXT)
        drop = {b"content-type", b"te"}
        if text:  # the decoded body is shorter: its length goes, and it goes upstream chunked
            drop |= {b"content-length", b"transfer-encoding"}
        headers[:] = [(k, v) for k, v in headers if k not in drop]
        headers.append((b"content-type", b"application/grpc"))
        headers.append((b"te", b"trailers"))
        if text:
            headers.append((b"transfer-encoding", b"chunked"))
            outcome.request_decoder = TextRequestDecoder()
        outcome.encoders.append(GrpcWebResponse(text))
