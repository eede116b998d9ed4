"""HTTP/2 to clients (ALPN ``h2`` and h2c prior knowledge), with the ``h2`` library.

Why a bridge: the connection manager (:mod:`.http_proxy`) already does everything a request needs
(timeouts, HTTP filters, routing, retries, mirrors, local replies, access logs) for a request it
reads as HTTP/1.1 through h11.  An HTTP/2 stream *is* a request, so each stream is handed to that
same code as a one-request connection, :class:`StreamBridge`: the stream's HEADERS and DATA are
written as an HTTP/1.1 request by an h11 client connection, and the HTTP/1.1 response the manager
writes back is parsed by the same h11 connection and sent as HEADERS, DATA and trailers.  One
router, one set of filters, one behaviour for both protocols.

The predicted case skips h11 on both sides, as the manager's HTTP/1.1 fast path does: a bodyless
request is written as h11 would write it (when h11's rules allow it), which sends it down the
manager's lean path, and the whole Content-Length response that path writes back in one write is
parsed in one pass (:func:`whole_response`); everything else goes through h11 as above, the h11
client made (and told the request) only then.  Around it, what repeats is done once: a request
whose header list the connection has checked and written before takes those bytes again
(:attr:`H2Downstream.known_requests`), a response head's parse is memoised (:func:`_parse_head`),
HPACK encodes with the static table only and caches its fields, and decodes an indexed request
block it has seen from memory (:mod:`._hpack_cache`); a whole response of one DATA frame is framed
here, h2's state moved as its calls would move it (:mod:`._h2_frames`), and the lean path hands it
over without a wait (:meth:`StreamBridge.send_whole_now`); the connection's streams reuse the
lean path's request parsers (:attr:`H2Downstream.parsers`); and h2's text of each received frame
for its trace log is made only if a logger formats it (:func:`_defer_frame_text`).

Flow control is backpressure both ways:

- **request bodies**: DATA is acknowledged (WINDOW_UPDATE) only when the manager reads it, which it
  does once the upstream took the previous chunk; so a stream holds at most its window, and the
  connection at most the connection window (``http2_protocol_options``).
- **response bodies**: DATA goes out only within the client's windows; what is queued for the
  socket and not yet written is bounded (:data:`OUTBOUND_BOUND`): past it, the manager's write to the
  bridge waits for the socket, so a slow reader stops the upstream read rather than growing a buffer.

One writer task per connection writes every frame (:meth:`H2Downstream._writer`): the streams and the
reader queue their frames and wake it, and it writes all that is queued in one system call (on a
kernel or stack socket straight, as the HTTP/1.1 lean path does; a TLS stream's ``send_all``).  The
streams answered in one scheduler batch (ten responses for ten streams a client sent together) so
cost one system call, not one per frame or per stream; a response's HEADERS, DATA and END_STREAM
always leave in one write.

A client's RST_STREAM cancels its request (the upstream request is abandoned, counted as
``downstream_rq_rx_reset``); a response the manager cannot finish is reset by the proxy.  A drain
(SIGTERM or health checks failed on purpose) sends GOAWAY, lets the streams in flight finish, then
closes the connection.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import hpack
import hyperframe.frame
import trio

from trio_yastack._trio_helpers import unwrap_single_exception

from ._h2_frames import whole_response_frames
from ._hpack_cache import CachingDecoder, StaticEncoder
from ._kernel_io import send_now
from ._stack_io import stream_io

if TYPE_CHECKING:
    from ._http1 import RequestParser
    from .config import Http2Options
    from .proxy import ProxyState

__all__ = [
    "MAX_STREAMS",
    "PREFACE",
    "H2Downstream",
    "StreamBridge",
    "request_headers_problem",
    "server_connection",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: the most streams served at once per connection, whatever ``max_concurrent_streams`` says (a bound)
MAX_STREAMS = 1000
MAX_HEADER_LIST = 60 * 1024  # as for HTTP/1.1 heads (Envoy's max_request_headers_kb default)
RECEIVE_SIZE = 65536
#: frames queued for the socket past which a stream's write waits for the writer (backpressure)
OUTBOUND_BOUND = 256 * 1024
# connection-specific headers (RFC 9113 8.2.2): never sent in HTTP/2
_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
# HPACK never-indexed on the way out (as h2's own normalisation does: credentials stay out of
# the compression context)
_SECURE = frozenset((b"authorization", b"proxy-authorization"))

# --- a request's header block, checked as h2's inbound validation checks it (RFC 9113 8.2, 8.3) ---
#
# Why our own: h2 checks every byte of every name and value in a Python loop, a generator per rule
# (a third of h2's cost per request in the profile); these are the same rules in one pass, each
# byte rule one regular expression.  ``tests/test_proxy_h2.py`` holds the two to the same verdicts.
# A field name: no 0x00-0x20, no uppercase, no 0x7f-0xff, no colon but a pseudo-header's first byte.
_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_BAD_VALUE = re.compile(rb"[\x00\n\r]|\A[ \t]|[ \t]\Z")
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":status", b":protocol"))


def request_headers_problem(headers: Sequence[tuple[bytes, bytes]], trailers: bool) -> str | None:
    """Why a client's header block (``trailers``: a trailer block) is malformed, or None: the
    checks of h2's ``validate_headers`` for a server's inbound block."""
    pseudo: set[bytes] = set()
    regular = False
    method = authority = host = None
    fullmatch, search = _NAME.fullmatch, _BAD_VALUE.search
    for name, value in headers:
        if fullmatch(name) is None:
            return f"bad header name {name!r}"
        if value and search(value) is not None:
            return f"bad value of {name!r}"
        if name[0] == 58:  # b":"
            if name in pseudo or regular or name not in _PSEUDO:
                return f"pseudo-header {name!r} duplicated, late or unknown"
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                return "empty :path"
        else:
            regular = True
            if name in _HOP_BY_HOP:
                return f"connection-specific header {name!r}"
            if name == b"te" and value.lower() != b"trailers":
                return "te other than trailers"
            if name == b"host":
                if host is not None:
                    return "several host headers"
                host = value
    if trailers:
        return "pseudo-header in trailers" if pseudo else None
    if b":method" not in pseudo or b":status" in pseudo:
        return "no :method, or :status in a request"
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        return "no :scheme or :path"
    if not connect and b":protocol" in pseudo:
        return ":protocol without CONNECT"
    if authority is None and host is None:
        return "no :authority or host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host differ"
    return None


# h11's rules for what whole_response takes (else h11 parses the response): a token for a name, a
# value of visible characters, obs-text, spaces and tabs
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_BAD_FIELD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# h11's for a request it writes (h11._abnf: request-target, field-value)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


def whole_response(
    data: bytes | bytearray | memoryview,
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes] | None:
    """The manager's predicted write, parsed: a whole ``HTTP/1.1`` response (status 200-599 but
    204 and 304) framed by one Content-Length, its body all there; ``(status, fields, body)``
    with names lowercased and values stripped as h11 gives them.  None for anything else
    (informational, chunked, close-framed, several writes, anything h11 would refuse): h11 parses
    those.  (The lean path writes its response so, head and body at once.)"""
    data = bytes(data)
    end = data.find(b"\r\n\r\n")
    parsed = _parse_head(data[:end]) if end >= 0 else None
    if parsed is None or parsed[2] != len(data) - end - 4:
        return None
    return parsed[0], list(parsed[1]), data[end + 4 :]


def _whole_response(
    data: bytes | bytearray | memoryview,
) -> tuple[Sequence[tuple[bytes, bytes]], bytes] | None:
    """:func:`whole_response` as the bridge sends it: the HTTP/2 head (``:status`` and
    :func:`_response_headers`), and the body."""
    data = bytes(data)
    end = data.find(b"\r\n\r\n")
    parsed = _parse_head(data[:end]) if end >= 0 else None
    if parsed is None or parsed[2] != len(data) - end - 4:
        return None
    return parsed[3], data[end + 4 :]


@functools.lru_cache(maxsize=64)
def _parse_head(
    head: bytes,
) -> tuple[bytes, tuple[tuple[bytes, bytes], ...], int, tuple[tuple[bytes, bytes], ...]] | None:
    """A response head (without its blank line) as :func:`whole_response` takes it: ``(status,
    fields, content-length, the HTTP/2 head)``, or None.  Memoised: the upstream's heads repeat
    but for a ``date`` each second (a bound of 64 heads, values immutable)."""
    if not head.startswith(b"HTTP/1.1 "):
        return None
    lines = head.split(b"\r\n")
    status = lines[0][9:12]
    if (
        len(status) != 3
        or not status.isdigit()
        or not b"200" <= status <= b"599"
        or status in (b"204", b"304")
    ):
        return None
    if len(lines[0]) > 12 and lines[0][12:13] != b" ":
        return None
    length = -1
    fields: list[tuple[bytes, bytes]] = []
    token, bad = _TOKEN.fullmatch, _BAD_FIELD_VALUE.search
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or token(name) is None or bad(value) is not None:
            return None  # (a line folded onto the one before starts with a space: no token)
        name = name.lower()
        if name == b"content-length":
            if length >= 0 or not value.isdigit():
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            return None
        fields.append((name, value))
    if length < 0:
        return None
    return status, tuple(fields), length, ((b":status", status), *_response_headers(fields))


def _response_headers(fields: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's (or its trailers') fields from h11 (names lowercased and checked, values
    checked and stripped by its parser) for HTTP/2: without the connection-specific ones
    (RFC 9113 8.2.2: ``te`` only as ``trailers``), credentials never indexed.  What h2's outbound
    normalisation and validation would leave, without their per-byte loops (both are off)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        if name in _HOP_BY_HOP or (name == b"te" and value.lower() != b"trailers"):
            continue
        out.append(hpack.NeverIndexedHeaderTuple(name, value) if name in _SECURE else (name, value))
    return out


def _trailers_only(head: Sequence[tuple[bytes, bytes]]) -> Sequence[tuple[bytes, bytes]]:
    """A bodyless response's HEADERS: a gRPC "trailers-only" answer (``grpc-status`` in the head)
    without ``content-length: 0``, as Envoy sends its gRPC local replies on HTTP/2 (the HTTP/1.1
    write the bridge parses must frame its empty body; HTTP/2's END_STREAM does that here)."""
    for name, _ in head:
        if name == b"grpc-status":
            return [(k, v) for k, v in head if k != b"content-length"]
    return head


class _FrameText:
    """A received frame's text for h2's trace log, made only if a logger formats it: h2 calls
    ``repr(frame)`` for every frame it receives whether or not anything logs (a frame's repr
    serializes its body: ~2-3 us of a request's HEADERS and its WINDOW_UPDATEs).  ``%s`` of this
    gives ``repr(frame)``'s text, so a configured logger logs exactly what it did."""

    __slots__ = ("frame",)

    def __init__(self, frame: object) -> None:
        self.frame = frame

    def __str__(self) -> str:
        return repr(self.frame)

    __repr__ = __str__


def _defer_frame_text() -> None:
    """``repr`` in ``h2.connection``'s globals made :class:`_FrameText`: its one ``repr`` call is
    the received frame's, for the trace log (``_receive_frame``; h2 4.4.1, pinned in
    pyproject.toml; ``tests/test_h2_frame_text.py`` checks the call is still where it was and
    deferred).  A module global, not a private method overridden: h2's code runs unchanged."""
    h2.connection.repr = _FrameText  # type: ignore[attr-defined]  # (a global the module lacks: builtins' shadowed)


_defer_frame_text()

_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: a bodyless request's HTTP/1.1 bytes, its (method, target, fields), whether it is a HEAD
_KnownRequest = tuple[bytes, tuple[bytes, bytes, list[tuple[bytes, bytes]]], bool]
#: requests remembered per connection (:attr:`H2Downstream.known_requests`): a bound
KNOWN_REQUESTS = 64


class _Malformed(Exception):
    """A client's header block that :func:`request_headers_problem` rejects."""


class StreamServer(Protocol):
    """What serves one stream's request: the connection manager."""

    async def serve_stream(self, stream: StreamBridge, remote: str, scheme: str) -> None: ...

    def protocol_error(self) -> None:
        """Count a client's HTTP/2 error (a stream reset or the connection's GOAWAY)."""

    def idle_timed_out(self) -> None:
        """Count a connection closed by ``idle_timeout`` (no stream for that long)."""


class StreamBridge(trio.abc.Stream):
    """One HTTP/2 stream as a one-request HTTP/1.1 connection (see the module docstring)."""

    def __init__(
        self,
        conn: H2Downstream,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        ended: bool,
        known: _KnownRequest | None = None,
    ):
        self.conn = conn
        self.stream_id = stream_id
        self._h11: h11.Connection | None = None  # made at first use (:attr:`h11`)
        # a bodyless request written without h11: its parts, told to h11 if h11 is needed
        self._written: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None = None
        self.pending = bytearray()  # request bytes the manager has not read yet
        self.unacked = 0  # flow-controlled bytes in ``pending``, acknowledged when read
        self.request_ended = False
        self.response_ended = False
        self.reset = False  # by the client, or by us
        self.reset_by_client = False
        self.chunked = False
        # a relay cut short (cancelled, or the socket failed) after h11 handed over a part of the
        # response that never reached the client: the response can only be reset now, never ended
        self.interrupted = False
        self.fed = False  # h11 has been given response bytes (else the first write may skip it)
        self.head_request = False
        # set when the request's bytes, its end or a reset come: made only while receive_some
        # waits (most streams never wait: their request came whole)
        self.changed: trio.Event | None = None
        self.scope = trio.CancelScope()
        if known is None:
            self._start_request(headers, ended)
        else:  # the same bodyless request as one before on the connection: its bytes again
            self.pending += known[0]
            self._written = known[1]
            self.head_request = known[2]
            self.request_ended = True

    def known(self) -> _KnownRequest | None:
        """What :meth:`_start_request` made of a bodyless request written without h11, for the
        same request again (:attr:`H2Downstream.known_requests`); None for any other."""
        if self._written is None:
            return None
        return bytes(self.pending), self._written, self.head_request

    @property
    def h11(self) -> h11.Connection:
        """The stream's h11 client; for a request written without it (:meth:`_write_bodyless`),
        made when first needed (a response that is not a whole one, the close), told the request
        first (what it writes then is already written)."""
        conn = self._h11
        if conn is None:
            conn = self._h11 = h11.Connection(h11.CLIENT)
            if self._written is not None:
                method, target, fields = self._written
                conn.send(h11.Request(method=method, target=target, headers=fields))
                conn.send(h11.EndOfMessage())
        return conn

    # --- the request, as HTTP/1.1 ---

    def _write_bodyless(self, method: bytes, target: bytes, fields: list[tuple[bytes, bytes]]) -> bool:
        """A request without a body, written as h11 writes it, if h11 would take it (its rules for
        a method, a target, names and values; no Content-Length, whose checks h11 keeps): the
        predicted case, without an h11 connection and its events.  False: h11 writes it."""
        if _TOKEN.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
            return False
        token, value_ok = _TOKEN.fullmatch, _FIELD_VALUE.fullmatch
        lines = [method + b" " + target + b" HTTP/1.1\r\n"]
        for name, value in fields:
            if token(name) is None or value_ok(value) is None or name == b"content-length":
                return False
            lines.append(name + b": " + value + b"\r\n")
        lines.append(b"\r\n")
        self.pending += b"".join(lines)
        self._written = (method, target, fields)
        self.request_ended = True
        return True

    def _start_request(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        method = path = authority = b""
        fields: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            elif name == b"cookie":
                cookies.append(value)  # RFC 9113 8.2.3: crumbs are joined again for HTTP/1.1
            elif name != b"host" or not authority:
                fields.append((name, value))
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))
        if authority:
            fields.insert(0, (b"host", authority))
        elif not any(n == b"host" for n, _ in fields):
            fields.insert(0, (b"host", b""))
        has_length = any(n == b"content-length" for n, _ in fields)
        if not ended and not has_length:
            fields.append((b"transfer-encoding", b"chunked"))
            self.chunked = True
        self.head_request = method == b"HEAD"
        target = path or authority or b"/"
        if ended and self._write_bodyless(method, target, fields):
            return
        request = h11.Request(method=method, target=target, headers=fields)
        self.pending += self.h11.send(request) or b""
        if ended:
            self.end_request(None)

    def feed(self, data: bytes, flow_controlled: int) -> None:
        """DATA from the client; acknowledged once the manager reads it."""
        if self.request_ended or self.reset:
            self.conn.acknowledge(self.stream_id, flow_controlled, open_stream=False)
            return
        if data:
            try:
                self.pending += self.h11.send(h11.Data(data=data)) or b""
            except h11.LocalProtocolError:  # more than the declared content-length
                self.conn.reset_stream(self.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
        self.unacked += flow_controlled
        self._wake()

    def end_request(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if self.request_ended:
            return
        self.request_ended = True
        try:
            eom = h11.EndOfMessage(headers=trailers or []) if self.chunked else h11.EndOfMessage()
            self.pending += self.h11.send(eom) or b""
        except h11.LocalProtocolError:  # fewer bytes than the declared content-length
            self.conn.reset_stream(self.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._wake()

    def client_reset(self) -> None:
        """RST_STREAM from the client (or its connection gone): the request is cancelled."""
        self.reset = True
        self.reset_by_client = True
        self.scope.cancel()
        self._wake()

    def _wake(self) -> None:
        changed = self.changed
        if changed is not None:
            self.changed = None
            changed.set()

    def take_request(self) -> bytes:
        """The whole request's bytes if they are all here and owe the client no window (a
        bodyless request), taken now; else b"" (the manager reads them with :meth:`receive_some`)."""
        if not self.request_ended or self.unacked or self.reset or not self.pending:
            return b""
        data = bytes(self.pending)
        self.pending.clear()
        return data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # The request's bytes; once they are all read, b"" only when the response is done too, so
        # that the manager never takes the end of a request for a client gone mid-response.
        while not self.pending:
            if self.reset:
                raise trio.BrokenResourceError("stream reset")
            if self.request_ended and self.response_ended:
                return b""
            changed = self.changed
            if changed is None:
                changed = self.changed = trio.Event()
            await changed.wait()
        n = len(self.pending) if max_bytes is None else max_bytes
        data = bytes(self.pending[:n])
        del self.pending[:n]
        if self.unacked:
            self.conn.acknowledge(self.stream_id, self.unacked, open_stream=True)
            self.unacked = 0
            self.conn.queue()
        return data

    # --- the response, from HTTP/1.1 ---

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.reset:
            raise trio.BrokenResourceError("stream reset")
        try:
            whole = None
            if not self.fed and not self.head_request:
                whole = _whole_response(data)
            try:
                if whole is not None:
                    await self._relay_whole(*whole)
                else:
                    self.fed = True
                    self.h11.receive_data(bytes(data))
                    await self._relay()
            except BaseException:
                self.interrupted = True
                raise
        except h2.exceptions.ProtocolError:  # the stream or the connection closed under us
            raise trio.BrokenResourceError("stream closed") from None
        except _NETWORK_ERRORS:
            raise trio.BrokenResourceError("connection closed") from None
        except h11.RemoteProtocolError:  # the manager writes HTTP/1.1; a bad response is a bug
            await self._abort(h2.errors.ErrorCodes.INTERNAL_ERROR)
            raise trio.BrokenResourceError("bad response") from None

    def send_whole_now(self, data: bytes) -> bool:
        """The manager's whole response (:func:`whole_response`'s kind) framed and queued for the
        writer without a wait, if :func:`whole_response_frames` frames it and the frames leave the
        queue within :data:`OUTBOUND_BOUND`: True, the response ended.  False: nothing done, the
        manager writes it with :meth:`send_all` (which waits for room, or raises the socket's
        failure).  Why: the lean path's response is mostly whole and small; written here it needs
        no coroutine, no cancel scope for its timers and no flush of its own (the writer wakes)."""
        conn = self.conn
        # 4 * len(data) + 64 bounds the frames: a field's HPACK literal is at most 4x its
        # ``name: value\r\n`` line (Huffman's longest codes are 30 bits a byte, hpack's own
        # encoder uses them after a table size change), and the frames' 9-byte headers fit the rest
        if (
            self.reset
            or self.fed
            or self.head_request
            or conn.write_error is not None
            or conn.outbound_bytes + 4 * len(data) + 64 > OUTBOUND_BOUND
        ):
            return False
        whole = _whole_response(data)
        if whole is None:
            return False
        head, body = whole
        if not body:
            head = _trailers_only(head)
        conn.queue()  # (what h2 has queued goes first)
        try:
            frames = whole_response_frames(conn.h2, self.stream_id, head, body)
        except h2.exceptions.ProtocolError:  # (as send_all: the stream or the connection closed)
            raise trio.BrokenResourceError("stream closed") from None
        if frames is None:
            return False
        conn.outbound.append(frames)
        conn.outbound_bytes += len(frames)
        conn._wake_writer()
        self.response_ended = True
        self._wake()
        return True

    async def _relay_whole(self, head: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response in one write (:func:`whole_response`), the predicted case: HEADERS,
        then the body's DATA with END_STREAM on its last frame (or HEADERS ending the stream), and
        one flush; h11 never sees it.  A body of one DATA frame within the windows is framed
        without h2's frame objects (:func:`whole_response_frames`)."""
        conn = self.conn
        if not body:
            head = _trailers_only(head)
        conn.queue()  # (what h2 has queued goes first)
        frames = whole_response_frames(conn.h2, self.stream_id, head, body)
        if frames is not None:  # the predicted case: one DATA frame within the windows
            conn.outbound.append(frames)
            conn.outbound_bytes += len(frames)
            conn._wake_writer()
        elif body:
            conn.h2.send_headers(self.stream_id, head)
            await conn.send_data(self, body, end=True)
        else:
            conn.h2.send_headers(self.stream_id, head, end_stream=True)
        self.response_ended = True
        self._wake()
        await conn.flush()

    async def _relay(self) -> None:
        conn = self.conn
        head: list[tuple[bytes, bytes]] | None = None  # a response head held for the event after it
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.InformationalResponse | h11.Response):
                headers = [(b":status", str(event.status_code).encode())]
                headers += _response_headers(event.headers)
                if isinstance(event, h11.InformationalResponse):
                    conn.h2.send_headers(self.stream_id, headers)
                else:
                    head = headers
            elif isinstance(event, h11.Data):
                if head is not None:
                    conn.h2.send_headers(self.stream_id, head)
                    head = None
                await conn.send_data(self, bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                trailers = _response_headers(event.headers)
                if head is not None and not trailers:
                    # a head and no body: one HEADERS frame ending the stream (gRPC's
                    # "trailers-only" error responses must look exactly so)
                    conn.h2.send_headers(self.stream_id, _trailers_only(head), end_stream=True)
                    head = None
                else:
                    if head is not None:
                        conn.h2.send_headers(self.stream_id, head)
                        head = None
                    if trailers:
                        conn.h2.send_headers(self.stream_id, trailers, end_stream=True)
                    else:
                        conn.h2.end_stream(self.stream_id)
                self.response_ended = True
                self._wake()
                break
            else:  # ConnectionClosed: nothing more comes
                break
        if head is not None:
            conn.h2.send_headers(self.stream_id, head)
        await conn.flush()  # the response's frames in one write (with other streams' frames)

    async def wait_send_all_might_not_block(self) -> None:
        await self.conn.window_changed.wait()

    async def _abort(self, code: h2.errors.ErrorCodes) -> None:
        if not self.reset:
            self.reset = True
            self.conn.reset_stream(self.stream_id, code)
            self.conn.queue()

    @property
    def ended_whole(self) -> bool:
        """The whole request read and the whole response sent, nothing reset: :meth:`aclose` has
        nothing to do (the manager skips it, and its shielded scope)."""
        return self.response_ended and self.request_ended and not self.reset

    async def aclose(self) -> None:
        """The manager is done with the request: a response it did not finish is reset."""
        if not self.response_ended and not self.reset and not self.interrupted:
            # A response framed by the close ends here.  (The connection may be closed under us:
            # a client's GOAWAY, or its connection gone, closes h2's state machine, which then
            # refuses the END_STREAM: nothing more can be sent, and nothing needs to be.)
            with contextlib.suppress(h11.RemoteProtocolError, h2.exceptions.ProtocolError):
                self.h11.receive_data(b"")
                with trio.CancelScope(shield=True), contextlib.suppress(*_NETWORK_ERRORS):
                    await self._relay()
        if not self.response_ended:
            await self._abort(h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif not self.request_ended and not self.reset:
            # answered before the request ended (a local reply, an early response): RFC 9113 8.1
            self.reset = True
            self.conn.reset_stream(self.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            self.conn.queue()
        elif not self.reset:
            # the common end (the whole request, then the whole response): nothing to wait for,
            # and the stream's task ends next, so no scheduling turn for a checkpoint
            return
        await trio.lowlevel.checkpoint()


def server_connection() -> h2.connection.H2Connection:
    """The server side's h2 state machine as this downstream runs it: h2's header checks and
    normalisation off (ours: ``request_headers_problem``, ``_response_headers``), and HPACK with
    what repeats computed once (:class:`StaticEncoder`, :class:`CachingDecoder`: the same fields,
    the same indexed request blocks)."""
    config = h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    decoder = CachingDecoder(conn.decoder.max_header_list_size)
    decoder.max_allowed_table_size = conn.decoder.max_allowed_table_size
    conn.encoder, conn.decoder = StaticEncoder(), decoder
    return conn


class H2Downstream:
    """One client connection speaking HTTP/2: reads frames, runs a task per stream, writes frames."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        server: StreamServer,
        options: Http2Options,
        state: ProxyState,
        idle_timeout: float,
    ) -> None:
        self.transport = transport
        # the socket under it read and written straight (kernel or stack socket; None: a TLS
        # stream's own methods), as the HTTP/1.1 lean path does (:mod:`._kernel_io`)
        self.raw, self.io = stream_io(transport)
        self.server = server
        self.state = state
        self.idle_timeout = idle_timeout or float("inf")
        self.h2 = server_connection()
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: min(
                    options.max_concurrent_streams, MAX_STREAMS
                ),
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: options.initial_stream_window_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        self.connection_window = options.initial_connection_window_size
        self.streams: dict[int, StreamBridge] = {}
        # bodyless requests checked and written as HTTP/1.1 before, by their header list
        self.known_requests: dict[tuple[tuple[bytes, bytes], ...], _KnownRequest] = {}
        # the manager's HTTP/1.1 request parsers, reused by the streams (serve_stream; a bound:
        # http_proxy.H2_PARSERS)
        self.parsers: list[RequestParser] = []
        self.window_changed = trio.Event()
        self.goaway_sent = False
        self.read_scope: trio.CancelScope | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        # the writer's side (:meth:`_writer`): frames queued in order, bounded by OUTBOUND_BOUND
        self.outbound: list[bytes] = []
        self.outbound_bytes = 0
        self.writer_task: trio.lowlevel.Task | None = None  # set while the writer is parked
        self.written = trio.Event()  # set (and replaced) after each write: waits for room
        self.write_error: BaseException | None = None  # the socket's failure, once it failed
        self.closing = False  # the reader and the streams are done: the writer ends once drained

    # --- writing ---

    def queue(self) -> None:
        """Queue every frame h2 has ready for the writer, and wake it (it writes them when the
        tasks that run now have queued theirs too: one write for all)."""
        data = self.h2.data_to_send()
        if data:
            self.outbound.append(data)
            self.outbound_bytes += len(data)
            self._wake_writer()

    def _wake_writer(self) -> None:
        task = self.writer_task
        if task is not None:
            self.writer_task = None
            trio.lowlevel.reschedule(task)

    async def flush(self) -> None:
        """:meth:`queue`, then wait while more than :data:`OUTBOUND_BOUND` is queued (a slow
        reader holds the writer back, and so the stream that writes); the socket's failure, if it
        failed, is raised here (BrokenResourceError)."""
        self.queue()
        while self.outbound_bytes > OUTBOUND_BOUND and self.write_error is None:
            await self.written.wait()
        if self.write_error is not None:
            raise trio.BrokenResourceError("connection closed") from self.write_error

    async def _writer(self, cancel_on_error: trio.CancelScope) -> None:
        """The connection's one writer: all that is queued, in one ``send_all`` (in order, so
        frames never interleave); parked while nothing is.  A failed write (the client gone)
        resets every stream and cancels ``cancel_on_error`` (the reader and the streams)."""
        while True:
            if not self.outbound:
                if self.closing:
                    return
                self.writer_task = trio.lowlevel.current_task()

                def abort(_: object) -> trio.lowlevel.Abort:
                    self.writer_task = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            outbound = self.outbound
            data = outbound[0] if len(outbound) == 1 else b"".join(outbound)
            self.outbound = []
            self.outbound_bytes = 0
            self.bytes_sent += len(data)
            try:
                raw = self.raw
                if raw is None:
                    await self.transport.send_all(data)
                elif (sent := send_now(raw, data)) < len(data):  # (no scheduler pass: it parks next)
                    await self.io.send_all(raw, data[sent:])
            except _NETWORK_ERRORS as exc:
                self.write_error = exc
                for bridge in list(self.streams.values()):
                    bridge.client_reset()
                cancel_on_error.cancel()
                return
            finally:
                written, self.written = self.written, trio.Event()
                written.set()

    def acknowledge(self, stream_id: int, n: int, *, open_stream: bool) -> None:
        if n:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(n, stream_id if open_stream else 0)

    def reset_stream(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream_id, code)

    async def send_data(self, bridge: StreamBridge, data: bytes, end: bool = False) -> None:
        """``data`` on the bridge's stream, within the client's windows, chunk by chunk; ``end``:
        the last chunk ends the stream."""
        view = memoryview(data)
        while view:
            if bridge.reset:
                raise trio.BrokenResourceError("stream reset")
            window = self.h2.local_flow_control_window(bridge.stream_id)
            if window <= 0:
                await self.window_changed.wait()
                continue
            n = min(window, self.h2.max_outbound_frame_size, len(view))
            last = n == len(view)
            chunk = data if n == len(data) else bytes(view[:n])
            self.h2.send_data(bridge.stream_id, chunk, end_stream=end and last)
            view = view[n:]
            if view:  # (the last chunk goes with the response's end, in the relay's flush)
                await self.flush()

    # --- reading ---

    async def serve(self, remote: str, scheme: str, initial: bytes) -> None:
        self.h2.initiate_connection()
        if self.connection_window > 65535:
            self.h2.increment_flow_control_window(self.connection_window - 65535)
        self.queue()
        with unwrap_single_exception():
            async with trio.open_nursery() as outer:
                streams_scope = trio.CancelScope()
                outer.start_soon(self._writer, streams_scope)
                try:
                    with streams_scope:
                        async with trio.open_nursery() as nursery:
                            try:
                                await self._read_loop(nursery, remote, scheme, initial)
                            except _NETWORK_ERRORS:
                                pass  # the client went away: so did its streams
                            finally:
                                for bridge in list(self.streams.values()):
                                    bridge.client_reset()  # cancel what is still running
                finally:
                    self.queue()  # (the streams' last frames: RST_STREAM of those cancelled)
                    self.closing = True  # the writer writes what is queued, then ends
                    self._wake_writer()

    async def _read_loop(
        self, nursery: trio.Nursery, remote: str, scheme: str, data: bytes | bytearray
    ) -> None:
        while True:
            if data:
                try:
                    for event in self.h2.receive_data(data):
                        self._dispatch(event, nursery, remote, scheme)
                        if isinstance(event, h2.events.ConnectionTerminated):
                            self.queue()
                            return
                except (h2.exceptions.ProtocolError, _Malformed):
                    self.server.protocol_error()
                    self.queue()  # h2 queued the GOAWAY naming the error
                    return
                await self.flush()  # (SETTINGS and PING acknowledged, WINDOW_UPDATEs)
            if (self.state.draining or self.state.shutting_down) and not self.goaway_sent:
                await self.goaway()
            if self.goaway_sent and not self.streams:
                return
            deadline = trio.current_time() + self.idle_timeout if not self.streams else float("inf")
            with trio.CancelScope(deadline=deadline) as scope:
                self.read_scope = scope
                if not self.goaway_sent:
                    self.state.idle_waits.add(scope)  # a drain wakes us to send GOAWAY
                try:
                    if self.raw is None:
                        data = await self.transport.receive_some(RECEIVE_SIZE)
                    else:
                        data = await self.io.receive_some(self.raw, RECEIVE_SIZE)
                finally:
                    self.state.idle_waits.discard(scope)
                    self.read_scope = None
                self.bytes_received += len(data)
                if not data:
                    return
                continue
            data = b""
            if not self.streams and trio.current_time() >= scope.deadline:
                self.server.idle_timed_out()
                await self.goaway()  # idle_timeout: Envoy sends GOAWAY and closes
                return

    async def goaway(self) -> None:
        """GOAWAY (NO_ERROR) naming the last stream taken; the streams in flight carry on.

        Written by hand: ``h2``'s ``close_connection`` also closes its state machine, after which
        it refuses to send the responses of the streams that GOAWAY lets finish."""
        if not self.goaway_sent:
            self.goaway_sent = True
            frame = hyperframe.frame.GoAwayFrame(0)
            frame.last_stream_id = self.h2.highest_inbound_stream_id
            frame.error_code = h2.errors.ErrorCodes.NO_ERROR
            self.queue()
            self.outbound.append(frame.serialize())
            self.outbound_bytes += len(self.outbound[-1])
            self._wake_writer()
            await self.flush()

    def _malformed(self, headers: list[tuple[bytes, bytes]], trailers: bool) -> None:
        """A malformed header block ends the connection (GOAWAY PROTOCOL_ERROR), as h2's own
        validation does when it is on."""
        problem = request_headers_problem(headers, trailers)
        if problem is not None:
            self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            raise _Malformed(problem)

    def _dispatch(self, event: h2.events.Event, nursery: trio.Nursery, remote: str, scheme: str) -> None:
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            ended = event.stream_ended is not None
            # the same bodyless request again (a client's next request is mostly its last one):
            # checked and translated then, its bytes taken as they were (hpack's header tuples
            # compare and hash as plain tuples of their bytes)
            key = tuple(event.headers or ()) if ended else None
            known = self.known_requests.get(key) if key is not None else None
            headers: list[tuple[bytes, bytes]] = []
            if known is None:
                headers = [(bytes(n), bytes(v)) for n, v in event.headers or ()]
                self._malformed(headers, trailers=False)
            if len(self.streams) >= MAX_STREAMS or self.goaway_sent:
                self.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            try:
                bridge = StreamBridge(self, sid, headers, ended, known)
            except h11.LocalProtocolError:  # valid HTTP/2, yet no HTTP/1.1 request (a bad method, ...)
                self.server.protocol_error()
                self.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
            if key is not None and known is None and (known := bridge.known()) is not None:
                if len(self.known_requests) >= KNOWN_REQUESTS:
                    self.known_requests.clear()
                self.known_requests[key] = known
            self.streams[sid] = bridge
            nursery.start_soon(self._run_stream, bridge, remote, scheme)
        elif isinstance(event, h2.events.DataReceived):
            bridge_or_none = self.streams.get(event.stream_id or 0)
            n = event.flow_controlled_length or 0
            if bridge_or_none is None:
                self.acknowledge(event.stream_id or 0, n, open_stream=False)
            else:
                bridge_or_none.feed(event.data or b"", n)
        elif isinstance(event, h2.events.TrailersReceived):
            trailers = [(bytes(n), bytes(v)) for n, v in event.headers or ()]
            self._malformed(trailers, trailers=True)
            if (bridge_or_none := self.streams.get(event.stream_id or 0)) is not None:
                bridge_or_none.end_request(trailers)
        elif isinstance(event, h2.events.StreamEnded):
            if (bridge_or_none := self.streams.get(event.stream_id or 0)) is not None:
                bridge_or_none.end_request(None)
        elif isinstance(event, h2.events.StreamReset):
            if (bridge_or_none := self.streams.get(event.stream_id or 0)) is not None:
                bridge_or_none.client_reset()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window_changed.set()
            self.window_changed = trio.Event()

    async def _run_stream(self, bridge: StreamBridge, remote: str, scheme: str) -> None:
        try:
            with bridge.scope:
                await self.server.serve_stream(bridge, remote, scheme)
        finally:
            del self.streams[bridge.stream_id]
            if not self.streams and self.read_scope is not None:
                if self.goaway_sent:
                    self.read_scope.cancel()  # the last stream after GOAWAY: the connection can close
                else:
                    self.read_scope.deadline = trio.current_time() + self.idle_timeout  # idle from now
