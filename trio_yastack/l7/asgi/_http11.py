"""HTTP/1.1 for one ``trio.abc.Stream``, parsed by httptools (llhttp), the app run inline.

The speed lives here (the budget is ~20 µs of CPU per keep-alive request), so the shape is:

- one trio task per connection, and the app runs in it: ``await app(scope, receive, send)``; no
  task, nursery or cancel scope per request.  One cancel scope per connection ends it on the
  keep-alive and head timeouts: ``serve_asgi``'s sweeper cancels it when ``timeout_at`` (``inf``
  while the app runs) has passed, so a request costs two attribute stores, not two deadline moves.
- one reader at a time: the connection task between requests, the app's ``receive()`` while the
  app runs (it reads the stream itself when the parser has nothing queued).  Requests parsed
  ahead (pipelining) wait in a queue bounded by ``max_pipelined``; at the bound nobody reads.
- the response head is held until the first body message, and when that message is the last one
  head and body go out in one ``send_all`` (one segment for a small response).
- an app that runs on after its complete response (FastAPI's and Starlette's background tasks run
  inside the same app call) does not hold the connection: :class:`Handoffs` sees it and the
  connection's reading and serving go on in a new task, spawned only then.

Errors are answered as uvicorn and hypercorn answer them (400, 408, 413, 431, 500, 501) and end
with a lingering close, so the answer is not lost to a reset.  Nothing a client sends raises out
of :meth:`HttpConnection.run` except cancellation.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
import trio

from trio_yastack._trio_helpers import lingering_close
from trio_yastack.tls.client_hello import PrefixedStream

from ._access_log import AccessLogger
from ._config import ServerConfig
from ._lifespan import ASGIApp

__all__ = ["HANDOFF_INTERVAL", "ClientDisconnected", "Handoffs", "HttpConnection"]

logger = logging.getLogger("trio_yastack.asgi")

_STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in HTTPStatus
}
_ASGI = {"version": "3.0", "spec_version": "2.4"}
_DISCONNECT = {"type": "http.disconnect"}
_SPECIAL = frozenset([b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"connection"])
_NO_BODY_STATUS = frozenset([204, 304])
_H2_PREFACE = b"PRI * HTTP/2.0\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INF = float("inf")
#: how long an error reply may take to drain (the lingering close) before the socket is closed
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024
#: while responses keep completing, how often :class:`Handoffs` looks at the apps that ran on
#: after theirs (an idle watcher looks at once); the most a next request waits for such an app
HANDOFF_INTERVAL = 0.005
# What HttpConnection._serve_requests goes on with after _serve_at_hand (see there)
_WAIT_FIRST, _STASHED_FIRST, _FED, _HEAD_PART, _SERVED = range(5)


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client is gone, as ASGI 2.4 asks ("a server-specific
    subclass of OSError"), so an app streaming a long response stops instead of producing it
    for nobody."""


def _from_disconnect(exc: BaseException) -> bool:
    """``exc`` is our ClientDisconnected or was raised because of it (Starlette turns it into
    its own ``ClientDisconnect``): the client left, which is no error of the app's."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; the bound keeps a cyclic one from looping
        if seen is None:
            return False
        if isinstance(seen, ClientDisconnected):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _kernel_socket(sock: trio.socket.SocketType | None) -> socket.socket | None:
    """The stdlib socket under a trio kernel socket (trio keeps it in ``_sock``), else None."""
    if sock is None or type(sock).__module__ != "trio._socket":
        return None
    raw = getattr(sock, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


class _HttpError(Exception):
    """The client's request cannot be served: answer ``status`` and close."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class _DateLine:
    """``date: ...\\r\\n`` recomputed at most once a second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


_DATE = _DateLine()
#: what a closed connection's parser becomes (one, shared; it has no callbacks and is never fed)
_CLOSED_PARSER = httptools.HttpRequestParser(object())


class _Request:
    """One parsed request head and the body bytes the parser has delivered for it."""

    __slots__ = (
        "body",
        "body_complete",
        "body_size",
        "expect_continue",
        "final_sent",
        "handed_off",
        "keep_alive",
        "scope",
        "upgrade",
    )

    def __init__(self, scope: dict[str, Any], keep_alive: bool, expect_continue: bool, upgrade: bool) -> None:
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.body: list[bytes] = []
        self.body_complete = False
        self.body_size = 0
        self.final_sent = False
        self.handed_off = False  # the connection went on in another task while the app ran


class Handoffs:
    """Serves a connection on in a new task when its app outlives its response.

    FastAPI and Starlette run background tasks after the response, inside the same app call.
    The app runs inline in the connection's task, so the next request on the connection would
    wait for them (uvicorn and hypercorn answer it at once).  When a response completes,
    ``send()`` calls :meth:`watch`; the watcher looks once the connection task's step is over
    (the next scheduler batch, or within :data:`HANDOFF_INTERVAL` while responses keep
    completing).  An app that returned by then (nearly all) cost a list append; one that still
    runs gets the connection handed on: a new task in ``nursery`` reads and serves the next
    requests, while the old task finishes the app (its errors logged) and leaves the connection
    alone.  No task is spawned per request, and the watcher wakes at most once per batch or
    interval, not once per request.  :meth:`run` is the watcher; after it ends, nothing is
    handed on (connections keep their app inline, as without a watcher).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        # connections, not requests: nothing of a request outlives it here (a request kept for
        # an interval would be a container the garbage collector walks, for every request)
        self._watched: list[HttpConnection] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._parked = False
        self._closed = False

    def watch(self, connection: HttpConnection) -> None:
        """A response on ``connection`` is complete: look at its app once this task step is over."""
        if self._closed or connection._watched:
            return
        connection._watched = True
        self._watched.append(connection)
        if self._parked:
            self._parked = False
            self._lot.unpark()

    async def run(self) -> None:
        """The watcher: hand on the connections whose apps ran on after their responses."""
        try:
            while True:
                if not self._watched:
                    self._parked = True
                    await self._lot.park()
                watched, self._watched = self._watched, []
                for connection in watched:
                    connection._watched = False
                    if connection._in_app is not None and not connection._hand_off(self._nursery):
                        connection._watched = True
                        self._watched.append(connection)  # not yet: look again
                await trio.sleep(HANDOFF_INTERVAL)  # busy: the next look takes all since
        finally:
            self._closed = True
            self._watched.clear()


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not isinstance(status, int) or not 100 <= status <= 999:
            raise RuntimeError(f"ASGI response status {status!r} is not a three-digit integer")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def _error_reply(status: int) -> bytes:
    phrase = HTTPStatus(status).phrase.encode()
    return (
        _STATUS_LINES[status]
        + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n"
        % len(phrase)
        + _DATE.get()
        + b"\r\n"
        + phrase
    )


class HttpConnection:
    """HTTP/1.1 on ``stream`` for ``app`` until the client leaves, a timeout, an error or shutdown.

    ``server``/``client`` are the scope's addresses, ``scheme`` ``"http"`` or ``"https"``,
    ``state`` the lifespan state (copied per request).  :meth:`run` serves; :meth:`shutdown`
    asks it to stop after the response in progress (an idle connection stops at once).
    ``swept``: the keep-alive and head timeouts are enforced by whoever calls
    :meth:`check_timeout` (``serve_asgi``'s sweeper), not by a deadline of the connection's own.
    ``send()`` raises :class:`ClientDisconnected` once the client is gone (ASGI 2.4).
    ``handoffs``: an app that runs on after its complete response has the connection served on
    in another task (:class:`Handoffs`); without it the next request waits for the app to return.
    """

    # Slots: 10 000 idle connections each kept a ~1.6 KB instance dict of these 55 attributes
    __slots__ = (
        "_cancel",
        "_chunked",
        "_closing",
        "_content_length",
        "_current",
        "_disconnect_wait",
        "_ended",
        "_eof",
        "_expect_continue",
        "_fin_sent",
        "_first_bytes",
        "_gone",
        "_handed_on",
        "_handoffs",
        "_head_partial",
        "_head_sent",
        "_head_size",
        "_headers",
        "_idle",
        "_in_app",
        "_in_head",
        "_keep_alive",
        "_length_left",
        "_max_body",
        "_max_head",
        "_no_body",
        "_parser",
        "_parsing",
        "_pending_error",
        "_protocol_shutdown",
        "_raw",
        "_reading",
        "_receive_size",
        "_recv_nowait",
        "_requests",
        "_response_complete",
        "_response_headers",
        "_response_started",
        "_send_nowait",
        "_sock",
        "_status",
        "_swept",
        "_transfer_encoding",
        "_upgrade",
        "_upgrade_leftover",
        "_url",
        "_watched",
        "_written",
        "access_log",
        "app",
        "client",
        "config",
        "scheme",
        "server",
        "state",
        "stream",
        "timeout_at",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        app: ASGIApp,
        config: ServerConfig,
        *,
        scheme: str = "http",
        server: tuple[str, int] | None = None,
        client: tuple[str, int] | None = None,
        state: dict[str, Any] | None = None,
        access_log: AccessLogger | None = None,
        swept: bool = False,
        handoffs: Handoffs | None = None,
    ) -> None:
        self.stream = stream
        self.app = app
        self.config = config
        self.scheme = scheme
        self.server = server
        self.client = client
        self.state = state
        self.access_log = access_log
        self._receive_size = config.receive_size
        # A plain trio.SocketStream is read and written through its socket: the stream adds a
        # context manager and a conflict check per call, ~10% of a small request's CPU, and the
        # one-reader/one-writer discipline here already holds (send() and receive() are the app's)
        self._sock: trio.socket.SocketType | None = (
            stream.socket if type(stream) is trio.SocketStream else None
        )
        # A kernel socket's stdlib socket, read and written as trio's socket does it (the same
        # checkpoints) but without its per-call wrapper and context manager, ~5 us a call
        self._raw = _kernel_socket(self._sock)
        # The stack's socket (socket_api's StackSocket) has a send without a scheduler pass: a
        # response after which the connection closes is queued and the write side shut before
        # the pass, so its FIN leaves in the response's last segment (see _write)
        self._send_nowait: Callable[[bytes], int] | None = (
            getattr(self._sock, "send_nowait", None) if self._raw is None else None
        )
        self._recv_nowait: Callable[[int], bytes] | None = (
            getattr(self._sock, "recv_nowait", None) if self._raw is None else None
        )
        self._max_body = config.max_request_body
        self._max_head = config.max_header_bytes
        # made when the first bytes come (``_feed``): an idle connection holds no parser (~0.9 KB)
        self._parser: httptools.HttpRequestParser | None = None
        # a list, not a deque: an empty deque holds a 64-slot block (~0.76 KB) per connection, and
        # the queue holds at most ``max_pipelined`` requests, so pop(0) moves a handful of pointers
        self._requests: list[_Request] = []
        self._parsing: _Request | None = None  # the request whose body the parser is reading
        self._pending_error: _HttpError | None = None  # answered once the queue ahead of it is served
        self._upgrade_leftover: bytes | None = None  # bytes after an Upgrade request's head
        #: the cancel scope of the task that holds the connection (reads and serves it); a hand-off
        #: gives the new holder a new one, so the old app's task is no longer reached by timeouts
        self._cancel = trio.CancelScope()
        self._handoffs = handoffs
        # Set at the first hand-off.  From then on the apps that ran before it (still holding our
        # receive/send) are told http.disconnect and refused, and each later app gets receive/send
        # bound to its request (so it is refused too once the connection moves past it)
        self._handed_on = False
        self._ended: trio.Event | None = None  # made at the first hand-off: set when the connection ends
        self._in_app: _Request | None = None  # whose app runs in the holder's task
        self._written: _Request | None = None  # whose response was last written whole (watched)
        self._watched = False  # in the watcher's list
        self._fin_sent = False  # the write side was shut with the last response (see _write)
        self._first_bytes: bytes | bytearray | None = None  # read by _serve_at_hand, for _read_first
        #: when the connection's current timeout (keep-alive or head) expires; inf while the app runs
        self.timeout_at = _INF
        self._swept = swept
        self._closing = False  # shutdown asked: no keep-alive after the current response
        # set at graceful shutdown once the connection became a websocket or HTTP/2: they close
        # with 1012 / GOAWAY as uvicorn and hypercorn do (made only when one takes over)
        self._protocol_shutdown: trio.Event | None = None
        self._idle = True  # waiting for a request's first byte (shutdown may close at once)
        self._eof = False  # the client sent EOF (or reset): nothing more to read
        self._gone = False  # a write failed (or an error reply ended it): send() raises
        self._reading = False
        # the head being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_partial = 0  # bytes fed while a head is incomplete (a head split over reads)
        self._in_head = False
        self._content_length: bytes | None = None
        self._transfer_encoding: bytes | None = None
        self._expect_continue = False
        self._upgrade: bytes | None = None
        # the request being served
        self._current: _Request | None = None
        self._response_started = False
        self._response_complete = False
        self._head_sent = False
        self._status = 0
        self._response_headers: list[tuple[bytes, bytes]] | Any = ()
        self._chunked = False
        self._no_body = False
        self._length_left: int | None = None  # the app's content-length minus the body sent
        self._keep_alive = True
        self._disconnect_wait: trio.CancelScope | None = None

    # -- httptools callbacks (called inside feed_data) -------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True
        self._content_length = None
        self._transfer_encoding = None
        self._expect_continue = False
        self._upgrade = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise _HttpError(431, "request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise _HttpError(431, "request head too large")
        if name in _SPECIAL:
            if name == b"content-length":
                if self._content_length is not None and self._content_length != value:
                    raise _HttpError(400, "conflicting content-length headers")
                self._content_length = value
            elif name == b"transfer-encoding":
                previous = self._transfer_encoding
                self._transfer_encoding = value if previous is None else previous + b"," + value
            elif name == b"expect":
                self._expect_continue = value.lower() == b"100-continue"
            elif name == b"upgrade":
                self._upgrade = value.lower()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_partial = 0
        if self._transfer_encoding is not None:
            if self._content_length is not None:
                raise _HttpError(400, "both content-length and transfer-encoding (request smuggling)")
            if self._transfer_encoding.strip().lower() != b"chunked":
                raise _HttpError(501, f"transfer-encoding {self._transfer_encoding!r} not implemented")
        elif self._content_length is not None and self._max_body is not None:
            try:
                declared = int(self._content_length)
            except ValueError:
                raise _HttpError(400, "bad content-length") from None
            if declared > self._max_body:
                raise _HttpError(413, f"content-length {declared} over {self._max_body}")
        parser = self._parser
        assert parser is not None  # an invariant, not input: called only inside _feed's feed_data
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
            raw_path = raw_path.partition(b"#")[0]
            query = query.partition(b"#")[0]
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _HttpError(400, "invalid request target") from None
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "method": parser.get_method().decode("ascii"),
            "scheme": self.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.config.root_path,
            "headers": self._headers,
            "client": self.client,
            "server": self.server,
            "extensions": {},
        }
        if self.state is not None:
            scope["state"] = self.state.copy()
        request = _Request(
            scope, parser.should_keep_alive(), self._expect_continue, self._upgrade is not None
        )
        self._requests.append(request)
        self._parsing = request

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is None:  # pragma: no cover - llhttp calls on_body only inside a message
            return
        request.body_size += len(body)
        if self._max_body is not None and request.body_size > self._max_body:
            raise _HttpError(413, f"request body over {self._max_body} bytes")
        request.body.append(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None:
            request.body_complete = True
            self._parsing = None

    # -- reading -------------------------------------------------------------------------------------
    def _feed(self, data: bytes | bytearray) -> None:
        """Parse ``data``; requests land in the queue.  An error is kept for its turn."""
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops after an Upgrade (or CONNECT) head; what follows is not HTTP/1 to it
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._after_upgrade(bytes(data[offset:]))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._pending_error = (
                cause if isinstance(cause, _HttpError) else _HttpError(500, f"parser callback: {cause!r}")
            )
            if not isinstance(cause, _HttpError):
                logger.error("HTTP parser callback failed", exc_info=cause)
            return
        except httptools.HttpParserError as exc:
            self._pending_error = _HttpError(400, str(exc))
            return
        if self._in_head:
            self._head_partial += len(data)
            if self._head_partial > self._max_head:
                self._pending_error = _HttpError(431, "request head too large")

    def _after_upgrade(self, leftover: bytes) -> None:
        request = self._requests[-1] if self._requests else None
        if request is not None and request.upgrade and self._upgrade == b"websocket":
            self._upgrade_leftover = leftover  # the websocket takes the connection from here
            return
        # h2c (uvicorn ignores it too) or another protocol: served as plain HTTP/1.1
        if request is not None:
            request.upgrade = False
        self._parser = httptools.HttpRequestParser(self)
        if leftover:
            self._feed(leftover)

    def _may_read(self) -> bool:
        """Whether reading ahead (while the app waits for a disconnect) stays within the bounds:
        ``max_pipelined`` requests and ``max_header_bytes * max_pipelined`` bytes queued."""
        if self._eof or self._pending_error is not None or self._upgrade_leftover is not None:
            return False
        requests = self._requests
        if len(requests) >= self.config.max_pipelined:
            return False
        queued = sum(len(chunk) for request in requests for chunk in request.body)
        return queued < self._max_head * self.config.max_pipelined

    async def _receive_bytes(self, first: bool = False) -> bytes | bytearray:
        """One read; ``b""`` at EOF or a reset (the client is gone either way).

        ``first``: the connection's first read, made by a task that has just started (a scheduler
        pass of its own): bytes already there are taken without another pass."""
        self._reading = True
        try:
            raw = self._raw
            if raw is not None:
                await trio.lowlevel.checkpoint_if_cancelled()
                while True:
                    try:
                        data = raw.recv(self._receive_size)
                    except BlockingIOError:
                        data = None
                    if data is None:
                        # waited outside the except clause: inside it the exception and its
                        # traceback live as long as the wait (~0.5 KB per idle connection)
                        await trio.lowlevel.wait_readable(raw)  # the wait is the scheduler pass
                        first = True
                        continue
                    if not first:
                        await trio.lowlevel.cancel_shielded_checkpoint()  # as trio's recv: one pass
                    return data
            if self._sock is not None:
                recv_nowait = self._recv_nowait
                if first and recv_nowait is not None:
                    # over the stack as on a kernel socket: the bytes already there are taken
                    # without another pass; none yet, recv waits for them
                    await trio.lowlevel.checkpoint_if_cancelled()
                    try:
                        return recv_nowait(self._receive_size)
                    except BlockingIOError:
                        pass
                return await self._sock.recv(self._receive_size)
            return await self.stream.receive_some(self._receive_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""
        finally:
            self._reading = False

    async def _read(self) -> bool:
        """One read into the parser; False at EOF (or a reset: the client is gone either way)."""
        data = await self._receive_bytes()
        if not data:
            self._eof = True
            return False
        self._feed(data)
        return True

    # -- timeouts ------------------------------------------------------------------------------------
    def _set_timeout(self, when: float) -> None:
        """Arm (or with ``inf`` disarm) the keep-alive / head timeout.

        Swept (``swept=True``, how ``serve_asgi`` runs connections): only ``timeout_at`` is
        stored and the server's sweeper calls :meth:`check_timeout` a few times a second, because
        moving a cancel scope's deadline twice per request costs more than a whole request's
        parsing.  Alone, the connection's cancel scope carries the deadline itself."""
        self.timeout_at = when
        if not self._swept:
            self._cancel.deadline = when

    def check_timeout(self, now: float) -> None:
        """The sweeper's call: end the connection if its timeout has passed."""
        if now >= self.timeout_at:
            self._cancel.cancel()

    # -- the connection -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful shutdown: no keep-alive after the response in progress; idle: close now."""
        self._closing = True
        if self._protocol_shutdown is not None:
            self._protocol_shutdown.set()
        if self._idle:
            self._cancel.cancel()

    def run(self) -> Coroutine[Any, Any, None]:
        """Serve requests until the connection ends; then close the stream.

        If the connection was handed on (an app ran on after its response), this returns when
        both are over: the app it was running, and the connection (closed by its last holder).
        (A plain function returning :meth:`_hold`'s coroutine: one frame less for every resume
        of the connection's task.)"""
        return self._hold(self._cancel, None)

    async def _hold(self, cancel: trio.CancelScope, after: _Request | None) -> None:
        """Serve the connection in this task, under ``cancel``, until it ends (then close the
        stream) or is handed on; ``after``: a request whose app still runs in the task that
        handed the connection on (None: this is the connection's first task)."""
        try:
            step = _WAIT_FIRST
            if after is None:
                if self._raw is not None or self._recv_nowait is not None:
                    step = await self._serve_at_hand()
                # The head timeout from the first byte awaited: armed only when something will
                # be (a request at hand was served, or runs with no timeout, without the clock
                # read; nothing yields in between, so it starts when it did)
                if step != _SERVED and step != _FED and self.timeout_at == _INF:
                    self._set_timeout(trio.current_time() + self.config.request_head_timeout)
            if step != _SERVED:
                with cancel:
                    await self._serve_requests(after, step)
            # (handed on: another task holds the connection now, and answers its timeouts)
            timed_out = self._cancel is cancel and cancel.cancelled_caught and not self._closing
            if timed_out and (self._in_head or self._head_partial):
                await self._reply_error(_HttpError(408, "request head not complete in time"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to answer
        finally:
            if self._cancel is cancel:  # still the holder (a cancelled old app's task is not)
                sock = self._sock
                if self._raw is not None and self._ended is None:
                    # Never handed on, so no other task can be waiting on the socket, and trio
                    # keeps an fd in its epoll books only while a task waits on it: its
                    # notify_closing would wake nobody and only ask epoll to forget an fd that
                    # close() removes anyway (a failing epoll_ctl and an exception, ~6 us).
                    # trio's socket object sees the stdlib socket closed (fileno -1).
                    self._raw.close()
                elif sock is not None:
                    # what SocketStream.aclose does, less its checkpoint (the task ends here)
                    # and the shielding cancel scope that checkpoint needs
                    sock.close()
                else:
                    with (
                        trio.CancelScope(shield=True),
                        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                    ):
                        await self.stream.aclose()
                # the parser holds this connection's bound callbacks: a reference cycle that
                # only the garbage collector would end; dropped, the connection is freed now
                self._parser = _CLOSED_PARSER
                if self._ended is not None:
                    self._ended.set()
        if after is None and self._ended is not None:
            await self._ended.wait()  # the first task stands for the connection until it ends

    def _hand_off(self, nursery: trio.Nursery) -> bool:
        """The watcher's call (:class:`Handoffs`): if the app running in the holder's task has
        written its whole response and still runs, serve the connection on in a new task in
        ``nursery``.  False: not now (an app's ``receive()`` is still leaving a read), ask again."""
        request = self._in_app
        if request is None or request is not self._written:
            return True  # the app returned: its task went on serving the connection itself
        if self._cancel.cancel_called:
            return True  # the connection is ending in the app's task
        if self._reading or self._disconnect_wait is not None:
            return False  # only one reader: wait until that read has unwound
        request.handed_off = True
        self._handed_on = True
        self._in_app = None  # the holder's app from now on is the new task's
        cancel = self._cancel = trio.CancelScope()
        if self._ended is None:
            self._ended = trio.Event()
        nursery.start_soon(self._take_over, request, cancel)
        return True

    async def _take_over(self, request: _Request, cancel: trio.CancelScope) -> None:
        try:
            await self._hold(cancel, request)
        except Exception:
            # as serve_asgi does for a connection's first task: a bug ends this connection only
            logger.exception("connection from %s failed", self.client)

    def _at_hand(self) -> bytes | bytearray | None:
        """The bytes already received, without waiting and without a scheduler pass: None when
        none have come yet, ``b""`` at EOF or a reset (the client is gone either way)."""
        try:
            if self._raw is not None:
                return self._raw.recv(self._receive_size)
            if self._recv_nowait is not None:
                return self._recv_nowait(self._receive_size)
        except BlockingIOError:
            return None
        except OSError:
            return b""
        return None

    async def _serve_at_hand(self) -> int:
        """The connection's first read when its bytes are already there (kernel listeners defer
        the accept until they are; over the stack they usually came with the handshake's ACK),
        and a ``Connection: close`` request found in them served at once, without the
        connection's cancel scope: entering and leaving one costs trio ~9 us, more than the
        rest of trio's share of such a connection.  The scope carries only the head and
        keep-alive timeouts and the idle close at shutdown, which bound reads that wait; here
        nothing waits (the app runs with no timeout, as under the scope: ``timeout_at`` is inf
        while it runs, and the graceful shutdown's deadline on the connections' nursery still
        reaches it), and the connection ends with this response.

        Returns what :meth:`_serve_requests` goes on with under the scope: ``_SERVED`` (nothing,
        the connection is over), ``_WAIT_FIRST`` (no bytes yet, or a shutdown already asked:
        the first read as usual), ``_STASHED_FIRST`` (the HTTP/2 preface: the first read takes
        the bytes kept), ``_FED`` (a request to serve is queued) or ``_HEAD_PART`` (part of a
        head: its timeout runs, more is read)."""
        if self._closing or self._cancel.cancel_called:
            return _WAIT_FIRST
        await trio.lowlevel.checkpoint_if_cancelled()
        data = self._at_hand()
        if data is None:
            return _WAIT_FIRST
        if not data:
            self._eof = True
            return _SERVED
        if data[:4] == b"PRI ":  # perhaps HTTP/2 with prior knowledge: _read_first decides
            self._first_bytes = data
            return _STASHED_FIRST
        self._feed(data)
        requests = self._requests
        if not requests:  # as _serve_requests after a first read that ended inside a head
            if self._in_head and self._idle:
                self._idle = False
                self._set_timeout(trio.current_time() + self.config.request_head_timeout)
            return _HEAD_PART
        self._idle = False
        self._set_timeout(_INF)
        request = requests[0]
        if request.keep_alive or request.upgrade or self._upgrade_leftover is not None:
            return _FED  # more may follow on the connection: served under the scope
        await self._serve(requests.pop(0))  # the connection ends after it, handed on or not
        return _SERVED

    async def _serve_requests(self, after: _Request | None, step: int = _WAIT_FIRST) -> None:
        requests = self._requests
        first = after is None and step in (_WAIT_FIRST, _STASHED_FIRST)
        head_part = step == _HEAD_PART  # the first read, at hand, ended inside a head
        if after is not None:  # taken over: finish with ``after`` as its app's task would have
            if not after.body_complete and self._keep_alive and self._pending_error is None:
                self._keep_alive = await self._discard_body(after)
            after.body.clear()
            if not self._keep_alive:
                return
            if requests:
                self._set_timeout(_INF)
        while True:
            if not requests:
                if self._pending_error is not None:
                    await self._reply_error(self._pending_error)
                    return
                if self._closing or self._eof:
                    return
                if head_part:
                    head_part = False  # (its head timeout runs, idle is over)
                else:
                    self._idle = True
                    if not first:
                        self._set_timeout(trio.current_time() + self.config.keep_alive_timeout)
                while not requests and self._pending_error is None:
                    if first:
                        first = False
                        if not await self._read_first():
                            return
                    elif not await self._read():
                        return
                    if self._in_head and self._idle:
                        self._idle = False
                        self._set_timeout(trio.current_time() + self.config.request_head_timeout)
                if not requests:
                    continue
                self._idle = False
                self._set_timeout(_INF)
            request = requests.pop(0)
            if request.upgrade and self._upgrade_leftover is not None:
                await self._serve_websocket(request)
                return
            if not await self._serve(request):
                return  # handed on while the app ran on after its response
            if not self._keep_alive:
                return
            if requests:
                self._set_timeout(_INF)  # a pipelined request is next: no timeout while it runs

    async def _read_first(self) -> bool:
        """The connection's first read: HTTP/2 with prior knowledge goes to ``serve_h2``."""
        data = self._first_bytes
        if data is None:
            data = await self._receive_bytes(first=True)
        else:  # read by _serve_at_hand
            self._first_bytes = None
        if not data:
            self._eof = True
            return False
        if data[:4] == b"PRI " and _H2_PREFACE.startswith(bytes(data[: len(_H2_PREFACE)])):
            self._set_timeout(_INF)
            await self._serve_h2(bytes(data))
            self._eof = True
            return False
        self._feed(data)
        return True

    async def _serve(self, request: _Request) -> bool:
        """Run the app for ``request``; False if the connection was handed on meanwhile."""
        self._current = request
        self._response_started = False
        self._response_complete = False
        self._head_sent = False
        self._chunked = False
        self._no_body = False
        self._length_left = None
        self._keep_alive = request.keep_alive and not self._closing
        scope = request.scope
        if self._handed_on:  # after a hand-off: receive/send bound to this request (see __init__)
            receive: Any = partial(self.receive, request)
            send: Any = partial(self.send, request=request)
        else:
            receive, send = self.receive, self.send
        self._in_app = request
        try:
            await self.app(scope, receive, send)
        except trio.Cancelled:
            if self._closing and not request.handed_off:
                await self._cut_by_shutdown(request)
            raise
        except Exception as exc:
            if request.handed_off:  # the connection is another task's: only say what happened
                if _from_disconnect(exc):
                    logger.debug("client %s went away during the app's work after its response", self.client)
                else:
                    logger.error("Exception in ASGI application after its response", exc_info=exc)
                return False
            if self._gone and _from_disconnect(exc):
                logger.debug("client %s went away during the response", self.client)
                self._keep_alive = False
            elif not self._head_sent:  # the head is held until the first body: a 500 still fits
                logger.error("Exception in ASGI application", exc_info=exc)
                self._keep_alive = False
                await self._reply_error(_HttpError(500, "the app raised"))
            else:
                logger.error("Exception in ASGI application after the response started", exc_info=exc)
                self._keep_alive = False
            return True
        finally:
            if self._in_app is request:
                self._in_app = None
        if request.handed_off:
            return False
        if not self._response_started:
            if not self._gone:
                logger.error("ASGI callable returned without starting a response")
                self._keep_alive = False
                await self._reply_error(_HttpError(500, "no response"))
            return True
        if not self._response_complete:
            logger.error("ASGI callable returned without completing its response")
            self._keep_alive = False
            return True
        if not request.body_complete and self._keep_alive and self._pending_error is None:
            # the app answered without reading the whole body: read past it unless it is large
            self._keep_alive = await self._discard_body(request)
        request.body.clear()
        return True

    async def _discard_body(self, request: _Request) -> bool:
        """Read and drop the rest of an unread body (bounded); False to close instead."""
        budget = 4 * self._receive_size
        while not request.body_complete:
            if budget <= 0 or self._pending_error is not None:
                return False
            request.body.clear()
            self._set_timeout(trio.current_time() + self.config.keep_alive_timeout)
            if not await self._read():
                return False
            budget -= self._receive_size
        return True

    # -- the ASGI callables ------------------------------------------------------------------------
    async def receive(self, app_request: _Request | None = None) -> dict[str, Any]:
        """The app's ``receive``: body chunks, then (response pending) the client's departure.

        ``app_request``: the request the calling app serves, bound after a hand-off; once the
        connection has moved past it, ``http.disconnect`` at once (as after any response)."""
        request = self._current
        assert request is not None
        if self._response_complete or self._eof or (self._handed_on and app_request is not request):
            await trio.lowlevel.checkpoint()
            return _DISCONNECT
        while True:
            if request.body:
                body = request.body[0] if len(request.body) == 1 else b"".join(request.body)
                request.body.clear()
                if request.body_complete:
                    request.final_sent = True
                await trio.lowlevel.checkpoint_if_cancelled()  # bytes at hand: no scheduler pass
                return {"type": "http.request", "body": body, "more_body": not request.body_complete}
            if request.body_complete:
                if not request.final_sent:
                    request.final_sent = True
                    await trio.lowlevel.checkpoint_if_cancelled()
                    return {"type": "http.request", "body": b"", "more_body": False}
                await self._wait_disconnect()
                return _DISCONNECT
            if self._pending_error is not None:
                return await self._body_failed()
            if request.expect_continue:
                request.expect_continue = False
                if not self._response_started:
                    await self._write(_CONTINUE)
            if self._reading:
                raise RuntimeError("receive() called while another receive() is waiting")
            if not await self._read():
                return _DISCONNECT

    async def _body_failed(self) -> dict[str, Any]:
        """The request's body broke a rule (413, bad chunking): answer it if nothing was sent."""
        error = self._pending_error
        assert error is not None
        self._keep_alive = False
        if not self._response_started:
            self._pending_error = None
            await self._reply_error(error)
        self._eof = self._gone = True  # the app's later sends raise, its receives disconnect
        return _DISCONNECT

    async def _wait_disconnect(self) -> None:
        """Body done, response pending: read until the client leaves or the response completes.

        Bytes that arrive are a pipelined next request and go to the parser; at the pipelining
        bound reading stops and only the response's completion ends the wait."""
        with trio.CancelScope() as wait:
            self._disconnect_wait = wait
            try:
                while self._may_read():
                    if not await self._read():
                        return
                await trio.sleep_forever()
            finally:
                self._disconnect_wait = None

    async def send(self, message: dict[str, Any], request: _Request | None = None) -> None:
        """The app's ``send``: the head waits for the first body; the last body completes it.

        ``request``: the request the calling app serves, bound after a hand-off; once the
        connection has moved past it, every message is refused (as after any response)."""
        kind = message["type"]
        if self._handed_on and request is not self._current:
            await trio.lowlevel.checkpoint()
            raise RuntimeError(f"ASGI {kind!r} after the response completed")
        if self._gone:
            raise ClientDisconnected(f"client {self.client} disconnected")
        if kind == "http.response.body":
            if not self._response_started:
                raise RuntimeError("ASGI 'http.response.body' before 'http.response.start'")
            if self._response_complete:
                raise RuntimeError("ASGI 'http.response.body' after the response completed")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self._head_sent:
                if self._no_body:
                    data = b""
                elif self._chunked:
                    if body:
                        data = b"%x\r\n%s\r\n" % (len(body), body)
                        if not more:
                            data += b"0\r\n\r\n"
                    else:
                        data = b"" if more else b"0\r\n\r\n"
                else:
                    data = body
            else:
                data = self._head(more, body)
            if self._length_left is not None and not self._no_body:
                # the app's content-length frames the response: more would corrupt the next one
                self._length_left -= len(body)
                if self._length_left < 0:
                    self._keep_alive = False
                    raise RuntimeError("ASGI response body longer than its content-length")
                if not more and self._length_left:
                    self._keep_alive = False  # short: the client sees it cut off, not misframed
            if not more:
                self._response_complete = True
            if data:
                # the write is the checkpoint; the response's last bytes on a connection that
                # closes after it carry the FIN (the connection ends once the app returns)
                if not await self._write(data, last=not more and not self._keep_alive):
                    raise ClientDisconnected(f"client {self.client} disconnected")
            else:
                await trio.lowlevel.checkpoint()
            if not more:
                if self._disconnect_wait is not None:
                    self._disconnect_wait.cancel()
                request = self._current
                assert request is not None
                if self.access_log is not None:
                    self.access_log.log(request.scope, self._status, self._response_headers)
                if self._handoffs is not None and not self._fin_sent:
                    # the app may run on (a background task): watched, so the next request or
                    # the close need not wait for it.  Not once the FIN went with the response:
                    # nothing follows on the connection and the client has seen its end.
                    self._written = request
                    self._handoffs.watch(self)
        elif kind == "http.response.start":
            if self._response_started:
                raise RuntimeError("ASGI 'http.response.start' sent twice")
            self._response_started = True
            self._status = message["status"]
            self._response_headers = message.get("headers", ())
            # no checkpoint: the head is only held (as uvicorn's send returns without yielding);
            # the body's write that follows is the checkpoint, one scheduler pass per response
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an HTTP connection")

    def _head(self, more: bool, body: bytes) -> bytes:
        """The response head (+ the first body, framed) for the first ``http.response.body``."""
        request = self._current
        assert request is not None
        status = self._status
        parts = [_status_line(status), _DATE.get()]
        if self.config.server_header:
            parts.append(b"server: trio_yastack\r\n")
        has_length = False
        chunked = False
        for name, value in self._response_headers:
            lowered = name.lower()
            if lowered == b"content-length":
                has_length = True
                try:
                    self._length_left = int(value)
                except ValueError:
                    raise RuntimeError(f"ASGI response content-length {value!r} is not a number") from None
            elif lowered == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            elif lowered == b"connection" and value.lower() == b"close":
                self._keep_alive = False
            parts.append(b"%s: %s\r\n" % (name, value))
        if self._closing:
            self._keep_alive = False  # graceful shutdown: tell the client this is the last response
        bodyless = status in _NO_BODY_STATUS or status < 200
        method_head = request.scope["method"] == "HEAD"
        http10 = request.scope["http_version"] == "1.0"
        if not has_length and not chunked and not bodyless:
            if not more:
                parts.append(b"content-length: %d\r\n" % len(body))
            elif http10:
                self._keep_alive = False  # the body ends when the connection does
            else:
                chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        self._chunked = chunked and not method_head and not bodyless
        if not self._keep_alive:
            parts.append(b"connection: close\r\n")
        elif http10:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != len(parts) or head.count(b"\r") != len(parts):
            # each part ends in exactly one CRLF: more means a CR or LF in a name or value
            raise RuntimeError("ASGI response header with CR or LF (header injection)")
        self._head_sent = True
        self._no_body = method_head or bodyless
        if self._no_body:
            return head
        if self._chunked:
            if body:
                head += b"%x\r\n%s\r\n" % (len(body), body)
            if not more:
                head += b"0\r\n\r\n"
            return head
        return head + body

    async def _write(self, data: bytes, last: bool = False) -> bool:
        """Write ``data``; False (and the connection marked gone) when the client is gone.

        ``last``: nothing follows on this connection.  Over the stack the write side is then
        shut as soon as the send buffer has taken all of ``data``, before the scheduler pass
        that lets the runtime send it, so the FIN rides on the data's last segment: one
        segment less per ``Connection: close`` response (and no ACK of the client's FIN of its
        own, as the client no longer closes first).  The socket's close follows as before."""
        try:
            send_nowait = self._send_nowait
            if last and send_nowait is not None and self._sock is not None:
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    sent = send_nowait(data)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    self._sock.shutdown(socket.SHUT_WR)
                    self._fin_sent = True
                    await trio.lowlevel.cancel_shielded_checkpoint()  # as send's: one pass
                    return True
                data = data[sent:]  # the send buffer was full: the rest as it drains, FIN at close
            raw = self._raw
            if raw is not None:
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    sent = raw.send(data)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    await trio.lowlevel.cancel_shielded_checkpoint()  # as trio's send: one pass
                    return True
                with memoryview(data) as view:  # the socket buffer was full: the rest as it drains
                    while sent < len(data):
                        await trio.lowlevel.wait_writable(raw)
                        with contextlib.suppress(BlockingIOError):
                            sent += raw.send(view[sent:])
                return True
            sock = self._sock
            if sock is None:
                await self.stream.send_all(data)
                return True
            sent = await sock.send(data)
            if sent < len(data):  # the socket buffer was full: the rest as it drains
                with memoryview(data) as view:
                    while sent < len(data):
                        sent += await sock.send(view[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._eof = self._gone = True  # later sends raise, receive says disconnect
            self._keep_alive = False
            return False
        return True

    async def _cut_by_shutdown(self, request: _Request) -> None:
        """The graceful shutdown's deadline cancelled the app serving ``request``: say so in the log,
        naming the request, and answer 503 if nothing was sent yet (hypercorn and uvicorn leave the
        client an empty reply and the log silent; a client can retry a 503, not an empty reply)."""
        scope = request.scope
        answered = not self._head_sent and not self._gone
        logger.warning(
            "graceful shutdown: %s %s from %s cancelled after graceful_timeout (%s s); %s",
            scope["method"],
            scope["path"],
            self.client,
            self.config.graceful_timeout,
            "answered 503" if answered else "its response was cut short",
        )
        if answered:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + LINGER_SECONDS):
                self._keep_alive = False
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._write(_error_reply(503))
                self._eof = self._gone = True

    async def _reply_error(self, error: _HttpError) -> None:
        """Answer ``error.status`` and close (the lingering close keeps the answer from a reset)."""
        self._keep_alive = False
        logger.debug("HTTP %d to %s: %s", error.status, self.client, error)
        with trio.move_on_after(LINGER_SECONDS):
            await self._write(_error_reply(error.status))
            if not self._eof and not self._gone:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await lingering_close(
                        self.stream, max_bytes=LINGER_BYTES, receive_size=self._receive_size
                    )
        self._eof = self._gone = True

    # -- handing the connection to another protocol -------------------------------------------
    async def _serve_websocket(self, request: _Request) -> None:
        try:
            module = importlib.import_module("trio_yastack.l7.asgi._websocket")
        except ImportError:
            await self._reply_error(_HttpError(501, "websocket support is not installed"))
            return
        self._set_timeout(_INF)
        scope = request.scope
        await module.serve_websocket(
            self.stream,
            scope,
            self.app,
            scope["headers"],
            scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b""),
            self._upgrade_leftover or b"",
            self.config,
            self.access_log,
            shutdown=self._take_over_shutdown(),
        )

    async def _serve_h2(self, preface: bytes) -> None:
        try:
            module = importlib.import_module("trio_yastack.l7.asgi._h2")
        except ImportError:
            logger.debug("HTTP/2 prior knowledge from %s but no _h2 module: closing", self.client)
            return
        await module.serve_h2(
            PrefixedStream(preface, self.stream),
            self.app,
            self.config,
            scheme=self.scheme,
            client=self.client,
            server=self.server,
            state=self.state,
            access_log=self.access_log,
            shutdown=self._take_over_shutdown(),
        )

    def _take_over_shutdown(self) -> trio.Event:
        """The event that tells the protocol taking this connection over that the server is
        shutting down (already set when it is)."""
        event = self._protocol_shutdown = trio.Event()
        if self._closing:
            event.set()
        return event
