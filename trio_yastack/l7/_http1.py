"""The proxy's HTTP/1.1 fast path: heads parsed by httptools (llhttp), written as bytes.

h11 took about 40 % of the proxy's CPU time per request (the client's request and the upstream's
response parsed into validated events, two heads built and validated again to be sent, two state
machines stepped per event).  Most requests are one predicted case, and for it the proxy uses
httptools, as the lean ASGI server does (``l7/asgi/_http11.py``):

- **the request** (:class:`RequestParser`): one whole HTTP/1.1 request in one read — its head and
  its body, if it has one, framed by ``Content-Length`` (not ``Transfer-Encoding``) —, nothing
  after it (no pipelined request), one ``Host``, an origin-form target, no ``Upgrade``, ``Expect``
  or ``Connection`` other than ``keep-alive``, and not ``HEAD`` or ``CONNECT``.  Anything else —
  including every malformed request — is handed to h11 unchanged, whose answers (400, 431, 501
  ...) stay the proxy's;
- **the response** to such a request (:class:`ResponseReader`): parsed by llhttp, which frames it by
  ``Content-Length``, chunked encoding or the connection's close, and checks its head;
- **the heads the proxy writes** (:func:`request_head_bytes`, :func:`response_head_bytes`,
  :func:`chunk`, :func:`last_chunk`): the bytes h11 would write for the same parts in this case
  (``tests/test_proxy_http1.py`` holds them to h11's output), without h11's validation of parts
  that were validated on the way in or made by the proxy.

h11 stays for the general case: request bodies that take more than the head's read or are chunked,
100-continue, upgrades (WebSocket), pipelining, HTTP/1.0 clients, ``HEAD``, the HTTP filters that
keep or rewrite response bodies (``cache``, ``compressor``), and
the HTTP/2 bridges (:mod:`.h2_downstream`, :mod:`.h2_upstream`), which speak HTTP/1.1 to the proxy
through h11.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11
import httptools

__all__ = [
    "MAX_RESPONSE_HEAD",
    "PlainRequest",
    "PlainResponse",
    "RequestParser",
    "ResponseReader",
    "chunk",
    "last_chunk",
    "request_head_bytes",
    "response_head_bytes",
]

MAX_RESPONSE_HEAD = 64 * 1024  # as h11's max_incomplete_event_size for the upstream's responses

# Request headers whose presence or value decides whether the fast path may take the request.
_WATCHED = frozenset((b"host", b"transfer-encoding", b"connection", b"upgrade", b"expect"))
_NOT_PLAIN_METHODS = frozenset((b"HEAD", b"CONNECT"))  # a HEAD response's framing needs the method
_OWS = b" \t"


class PlainRequest:
    """A request in the fast path's case: its head (the attributes :class:`h11.Request` has; header
    names lowercased, values without trailing whitespace, as h11 gives them) and its whole body;
    ``host``: its one ``Host`` value, kept by the parser so the lean path does not scan for it."""

    __slots__ = ("body", "headers", "host", "http_version", "method", "target")

    def __init__(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, host: bytes = b""
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = b"1.1"
        self.body = body
        self.host = host


class RequestParser:
    """A downstream connection's httptools request parser, used only in the predicted case.

    :meth:`parse` answers a :class:`PlainRequest` or None; after None the parser's state is
    unknown and the caller drops it (and gives the bytes to h11)."""

    __slots__ = (
        "_body",
        "_complete",
        "_headers",
        "_host",
        "_hosts",
        "_messages",
        "_method",
        "_parser",
        "_plain",
        "_target",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._target = b""
        self._method = b""
        self._messages = 0
        self._hosts = 0
        self._host = b""
        self._plain = True
        self._complete = False

    def parse(self, data: bytes | bytearray) -> PlainRequest | None:
        """``data`` as one whole request in the predicted case, else None."""
        self._headers = []
        self._body = []
        self._target = b""
        self._messages = 0
        self._hosts = 0
        self._plain = True
        self._complete = False
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # malformed, an upgrade: h11 decides
            return None
        if not (self._complete and self._plain and self._messages == 1 and self._hosts == 1):
            return None
        if self._target[:1] != b"/" or self._method in _NOT_PLAIN_METHODS:
            return None
        return PlainRequest(self._method, self._target, self._headers, b"".join(self._body), self._host)

    # -- httptools callbacks (called inside feed_data) --
    def on_message_begin(self) -> None:
        self._messages += 1

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(_OWS)
        self._headers.append((name, value))
        if name in _WATCHED:
            if name == b"host":
                self._hosts += 1
                self._host = value
            elif name == b"connection":
                self._plain = self._plain and value.lower() == b"keep-alive"
            else:  # transfer-encoding, upgrade, expect
                self._plain = False

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._method = parser.get_method()
        if parser.get_http_version() != "1.1":
            self._plain = False

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True


class PlainResponse:
    """An upstream's response head (the attributes of :class:`h11.Response` the proxy reads)."""

    __slots__ = ("headers", "status_code")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status_code
        self.headers = headers


class ResponseReader:
    """An upstream connection's httptools response parser: the response to one request of the
    fast path at a time.  After :meth:`feed`, ``head`` is the response head once complete, ``body``
    the body chunks not yet taken, ``done`` whether the response ended; ``reusable`` says whether
    the connection can carry another request afterwards."""

    __slots__ = (
        "_head_bytes",
        "_parser",
        "body",
        "done",
        "extra",
        "framing",
        "head",
        "headers",
        "keep_alive",
        "trailers",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.start()

    def start(self) -> None:
        """Ready for the response to the next request."""
        self.head: PlainResponse | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.framing = ""  # "length", "chunked", "eof" (until the upstream closes), "none"
        self.keep_alive = False
        self.done = False
        self.extra = False  # bytes after the response: the connection is not reused
        self._head_bytes = 0

    @property
    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self.extra

    def feed(self, data: bytes | bytearray) -> None:
        """Parse ``data``; a malformed response (or a head over :data:`MAX_RESPONSE_HEAD`) raises
        :class:`h11.RemoteProtocolError`, as h11 does, so the proxy's handling stays one."""
        if self.head is None:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # a 101 among them
            raise h11.RemoteProtocolError(f"upstream response: {exc}") from None
        if self.head is None and self._head_bytes > MAX_RESPONSE_HEAD:
            raise h11.RemoteProtocolError("upstream response head too large")

    def eof(self) -> bool:
        """The upstream closed: True if that ends the response (framed by the close)."""
        if self.head is not None and self.framing == "eof" and not self.done:
            self.done = True
        return self.done

    def take_body(self) -> list[bytes]:
        body = self.body
        self.body = []
        return body

    # -- httptools callbacks (called inside feed_data) --
    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.lower(), value.rstrip(_OWS))
        if self.head is None:
            self.headers.append(pair)
        else:
            self.trailers.append(pair)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            return  # 100 Continue, 103 Early Hints: not relayed (101 stops the parser: an error here)
        framing = "eof"
        if status in (204, 304):
            framing = "none"
        else:
            for name, value in self.headers:
                if name == b"transfer-encoding":
                    framing = "chunked" if value.lower().endswith(b"chunked") else "eof"
                    break
                if name == b"content-length":
                    framing = "length"
        self.framing = framing
        self.keep_alive = framing != "eof" and parser.should_keep_alive()
        self.head = PlainResponse(status, self.headers)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.head is None:
            self.headers = []  # an informational response ended: the real one follows
            self._head_bytes = 0
            return
        self.done = True


def _header_lines(parts: list[bytes], headers: Sequence[tuple[bytes, bytes]]) -> None:
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")


def request_head_bytes(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """What h11 writes for ``Request(method, target, headers)``: ``Host`` first (RFC 9112 3.2)."""
    parts = [method + b" " + target + b" HTTP/1.1\r\n"]
    rest = []
    for name, value in headers:
        if name == b"host":
            parts.append(name + b": " + value + b"\r\n")
        else:
            rest.append(name + b": " + value + b"\r\n")
    parts += rest
    parts.append(b"\r\n")
    return b"".join(parts)


def response_head_bytes(
    status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], *, chunked: bool
) -> bytes:
    """What h11 writes for ``Response(status, headers, reason)`` to a keep-alive HTTP/1.1 client
    that sent a request in the fast path's case; ``chunked``: the body has no length (h11 then
    appends ``Transfer-Encoding: chunked``).  ``headers`` have no ``Transfer-Encoding`` or
    ``Content-Length`` when ``chunked``, and no ``Host``."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    _header_lines(parts, headers)
    parts.append(b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` not empty), as h11 writes ``Data(data)``."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The end of a chunked body, with ``trailers``, as h11 writes ``EndOfMessage(headers=...)``."""
    parts = [b"0\r\n"]
    _header_lines(parts, trailers)
    parts.append(b"\r\n")
    return b"".join(parts)
