"""ASGI WebSocket over one ``trio.abc.Stream``, with wsproto: what the HTTP/1.1 connection hands over
when a GET asks for ``Upgrade: websocket``.

The interface (the shared design's, used by ``_http11``)::

    await serve_websocket(stream, scope, app, headers, target, leftover, config, access_log)

``scope`` is the HTTP scope of the upgrade request; ``headers`` and ``target`` the request as received
(wsproto checks the handshake itself); ``leftover`` the bytes read after the request head.  It returns
when the websocket is over; the caller then closes the stream.

How it runs, and why:

- The app runs inline in the connection's task.  Once the app accepts, one more task per connection,
  the reader, is the only one that reads the stream: it answers pings and the peer's close at once,
  even while the app is busy sending, and hands whole messages to ``receive()`` through a channel of
  :data:`MAX_QUEUED` messages; when the app does not keep up the reader stops reading (TCP pushes
  back).  No task per message; a message costs one wsproto parse (its unmasking is four
  ``bytes.translate`` calls, C loops) and one channel hop.
- Writes (the app's and the reader's pongs and close replies) go through one lock: trio streams allow
  one writer at a time.
- Fragmented messages are joined before the app sees them, bounded by ``config.ws_max_message_size``
  (counted as hypercorn counts it: bytes, or characters of text); beyond it the connection closes with
  1009, as does a bad frame with wsproto's code (1002 for an unmasked client frame, 1007 for bad UTF-8).
- permessage-deflate is accepted when the client offers it (wsproto implements it; uvicorn and hypercorn
  do the same).  Inflation is per chunk read, so one read of at most 64 KiB inflates to at most about
  64 MiB (deflate's ratio is bounded near 1032:1) before the size limit closes the connection.
- Where ASGI leaves a choice, uvicorn's and hypercorn's: the app closing before accepting gets 403; the
  app raising (or returning) before accepting gets 500; raising after accepting closes with 1011;
  returning after accepting without a close closes with 1000 (uvicorn's websockets server).  After the
  client has gone, ``websocket.send`` raises :class:`ClientDisconnected` (an ``OSError``, ASGI 2.4).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._access_log import AccessLogger
from ._config import ServerConfig
from ._http11 import ClientDisconnected  # one class for HTTP and WebSocket sends after the client left
from ._lifespan import ASGIApp

__all__ = ["MAX_QUEUED", "ClientDisconnected", "serve_websocket"]

logger = logging.getLogger("trio_yastack.asgi")

#: messages parsed ahead of the app's ``receive()``; beyond, the reader stops reading
MAX_QUEUED = 16
#: after our close frame, how long to wait for the peer's (RFC 6455 7.1.1: the server closes TCP after)
CLOSE_TIMEOUT = 5.0
_MAX_RECV = 64 * 1024
#: bytes a client may send before the app accepts (read only when the app asks to receive then)
_MAX_EARLY = 64 * 1024

_OPEN = ConnectionState.OPEN
_CONNECTING = ConnectionState.CONNECTING
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_LOCAL_CLOSING = ConnectionState.LOCAL_CLOSING
_REJECTING = ConnectionState.REJECTING


async def serve_websocket(
    stream: trio.abc.Stream,
    scope: dict[str, Any],
    app: ASGIApp,
    headers: list[tuple[bytes, bytes]],
    target: bytes,
    leftover: bytes,
    config: ServerConfig,
    access_log: AccessLogger | None,
) -> None:
    """Serve one upgrade request as an ASGI websocket; returns when it is over (the caller closes the
    stream).  A request wsproto finds no valid handshake gets wsproto's refusal (400, or 426 with the
    supported version) without the app being called."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(headers, target)
        request = next(ws.events(), None)
        if not isinstance(request, Request):  # wsproto yields the Request for any complete head
            raise RemoteProtocolError("no websocket request", event_hint=RejectConnection())
    except RemoteProtocolError as exc:
        hint = exc.event_hint if isinstance(exc.event_hint, RejectConnection) else RejectConnection()
        try:
            reply = ws.send(hint)
        except LocalProtocolError:
            hint = RejectConnection()
            reply = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        _log_access(access_log, scope, hint.status_code)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(reply)
        return
    ws_scope = dict(scope)
    ws_scope.pop("method", None)
    ws_scope["type"] = "websocket"
    ws_scope["scheme"] = "wss" if scope.get("scheme") == "https" else "ws"
    ws_scope["subprotocols"] = list(request.subprotocols)
    ws_scope["extensions"] = {"websocket.http.response": {}}
    conn = _WebSocket(stream, ws, config, leftover, access_log, ws_scope)
    async with trio.open_nursery() as nursery:
        conn.nursery = nursery
        try:
            await app(ws_scope, conn.receive, conn.send)
        except Exception as exc:
            await conn.app_failed(exc)
        else:
            await conn.app_returned()
        conn.app_gone()
        # RFC 6455 7.1.1: after our close, the peer's close (or its EOF) ends the connection
        with trio.move_on_after(CLOSE_TIMEOUT):
            await conn.reader_done.wait()
        nursery.cancel_scope.cancel()


def _log_access(access_log: AccessLogger | None, scope: dict[str, Any], status: int | None) -> None:
    if access_log is not None:
        access_log.log(scope, status, ())


class _WebSocket:
    """One websocket's state, shared by the app's ``receive``/``send`` and the reader task."""

    __slots__ = (
        "_access_log",
        "_config",
        "_disconnect",
        "_early",
        "_early_done",
        "_early_scope",
        "_max_size",
        "_queue_in",
        "_queue_out",
        "_scope",
        "_send_lock",
        "_stream",
        "_ws",
        "connect_sent",
        "nursery",
        "reader_done",
        "reading",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        config: ServerConfig,
        leftover: bytes,
        access_log: AccessLogger | None,
        scope: dict[str, Any],
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._config = config
        self._max_size = config.ws_max_message_size
        self._early = bytearray(leftover)
        self._early_scope: trio.CancelScope | None = None
        self._early_done: trio.Event | None = None
        self._access_log = access_log
        self._scope = scope
        self._send_lock = trio.Lock()
        self._queue_in, self._queue_out = trio.open_memory_channel[dict[str, Any]](MAX_QUEUED)
        self._disconnect: dict[str, Any] | None = None
        self.connect_sent = False
        self.nursery: trio.Nursery | None = None
        self.reader_done = trio.Event()
        self.reading = False  # the reader task runs (from the accept on)

    # -- the app's side -------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        if not self.reading and self._disconnect is None and self._ws.state is _CONNECTING:
            await self._wait_before_accept()
        try:
            return await self._queue_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._disconnect is None:  # only app_gone() closes this end: a receive after returning
                raise RuntimeError("receive() after the websocket app returned") from None
            return self._disconnect

    async def _wait_before_accept(self) -> None:
        """``receive()`` before the app decides: nothing can arrive but the client going away.  No
        reader runs yet, so this task reads (keeping the bytes for wsproto) until EOF, or until the
        app accepts from another task (which cancels this read: the reader takes over)."""
        self._early_done = done = trio.Event()
        try:
            with trio.CancelScope() as self._early_scope:
                while len(self._early) < _MAX_EARLY:
                    try:
                        data = await self._stream.receive_some(_MAX_RECV)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        self._finish({"type": "websocket.disconnect", "code": 1006, "reason": ""})
                        return
                    self._early += data
                await trio.sleep_forever()  # a client flooding an undecided handshake waits for the app
        finally:
            self._early_scope = None
            done.set()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        state = self._ws.state
        if kind == "websocket.send":
            if state is not _OPEN:
                raise ClientDisconnected("websocket.send on a closed websocket")
            text = message.get("text")
            data = message.get("bytes") if text is None else text
            if data is None:
                raise RuntimeError("websocket.send needs 'bytes' or 'text'")
            if not await self._write(self._ws.send(Message(data=data))):
                raise ClientDisconnected("the client has gone")
        elif kind == "websocket.accept" and state is _CONNECTING:
            if self._disconnect is not None:  # gone before the decision (seen by receive())
                raise ClientDisconnected("the client has gone before the handshake")
            extra = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers") or ()]
            reply = self._ws.send(
                AcceptConnection(
                    subprotocol=message.get("subprotocol"),
                    extra_headers=extra,
                    extensions=[PerMessageDeflate()],
                )
            )
            self._log(101)
            if self._early_scope is not None:
                self._early_scope.cancel()
            assert self.nursery is not None
            self.reading = True
            self.nursery.start_soon(self._reader)
            interval = self._config.ws_ping_interval
            if interval:
                self.nursery.start_soon(self._pinger, interval)
            if not await self._write(reply):
                raise ClientDisconnected("the client has gone during the handshake")
        elif kind == "websocket.close":
            if state is _CONNECTING:  # ASGI: a close before accepting is a 403
                await self._reject(403)
            elif state is _OPEN or state is _REMOTE_CLOSING:
                code = message.get("code") or 1000
                await self._write(self._ws.send(CloseConnection(code=code, reason=message.get("reason"))))
            # closing a websocket that is closed (or closing) already changes nothing
        elif kind == "websocket.http.response.start" and state is _CONNECTING:
            headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers") or ()]
            if not any(k == b"connection" for k, _ in headers):
                headers.append((b"connection", b"close"))
            status = int(message["status"])
            self._log(status)
            await self._write(self._ws.send(RejectConnection(status, headers, has_body=True)))
        elif kind == "websocket.http.response.body" and state is _REJECTING:
            more = bool(message.get("more_body", False))
            await self._write(self._ws.send(RejectData(bytes(message.get("body", b"")), not more)))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in websocket state {state.name}")

    async def app_failed(self, exc: Exception) -> None:
        """The app raised: 500 before the handshake was answered, close 1011 after (the client's
        departure showing up as :class:`ClientDisconnected` is not the app's bug: not logged as one)."""
        if isinstance(exc, ClientDisconnected):
            logger.debug("websocket app ended after its client left: %r", exc)
        else:
            logger.error("Exception in ASGI application (websocket)", exc_info=exc)
        state = self._ws.state
        if state is _CONNECTING and self._disconnect is None:
            await self._reject(500)
        elif state is _OPEN or state is _REMOTE_CLOSING:
            await self._write(self._ws.send(CloseConnection(code=1011)))

    async def app_returned(self) -> None:
        state = self._ws.state
        if state is _CONNECTING and self._disconnect is None:
            logger.error("ASGI websocket app returned without accepting or closing the handshake")
            await self._reject(500)
        elif state is _OPEN or state is _REMOTE_CLOSING:
            await self._write(self._ws.send(CloseConnection(code=1000)))

    def app_gone(self) -> None:
        """After the app: the reader drops what it would have queued (waiting only for the close);
        with no reader (no handshake, or a refusal), nothing is left to wait for."""
        self._queue_out.close()
        if not self.reading:
            self.reader_done.set()

    def _log(self, status: int) -> None:
        if self._access_log is not None:
            _log_access(self._access_log, self._scope, status)

    async def _reject(self, status: int) -> None:
        self._log(status)
        headers = [(b"connection", b"close")]
        await self._write(self._ws.send(RejectConnection(status_code=status, headers=headers)))

    async def _write(self, data: bytes) -> bool:
        """Send ``data`` (one writer at a time); False when the client has gone."""
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._finish({"type": "websocket.disconnect", "code": 1006, "reason": ""})
                return False
        return True

    def _finish(self, disconnect: dict[str, Any]) -> None:
        """The websocket is over for the app: every later ``receive()`` returns ``disconnect``."""
        if self._disconnect is None:
            self._disconnect = disconnect
            self._queue_in.close()

    # -- the reader task (after the handshake) ------------------------------------------------------

    async def _reader(self) -> None:
        if self._early_done is not None:  # an early read cancelled by the accept must end first
            await self._early_done.wait()
        try:
            await self._read_frames()
        finally:
            self.reader_done.set()

    async def _read_frames(self) -> None:
        ws, stream, queue, max_size = self._ws, self._stream, self._queue_in, self._max_size
        parts: list[Any] = []
        size = 0
        data: bytes | bytearray | None = bytes(self._early) if self._early else None
        self._early = bytearray()
        while True:
            if data is None:
                try:
                    data = await stream.receive_some(_MAX_RECV)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            # None: EOF, which wsproto reports as a close 1006.  A bytearray (the stack's sockets give
            # them) only gets appended to wsproto's buffer, as bytes would: no copy made for the types.
            ws.receive_data(data or None)  # type: ignore[arg-type]
            data = None
            out = b""
            for event in ws.events():
                if isinstance(event, Message):
                    if ws.state is not _OPEN:
                        continue  # we are closing: the app has said it wants no more
                    chunk: Any = event.data
                    size += len(chunk)
                    if size > max_size:
                        out += ws.send(CloseConnection(code=1009, reason="message too big"))
                        await self._write(out)
                        self._finish({"type": "websocket.disconnect", "code": 1009, "reason": ""})
                        return
                    if not event.message_finished:
                        parts.append(chunk)
                        continue
                    size = 0
                    if isinstance(event, TextMessage):
                        if parts:
                            parts.append(chunk)
                            chunk = "".join(parts)
                            parts.clear()
                        message = {"type": "websocket.receive", "text": chunk}
                    else:
                        if parts:
                            parts.append(chunk)
                            chunk = b"".join(parts)
                            parts.clear()
                        message = {"type": "websocket.receive", "bytes": bytes(chunk)}
                    if out:  # pongs first: the app may take its time with the message
                        await self._write(out)
                        out = b""
                    try:
                        await queue.send(message)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        continue  # the app has returned: only the close matters now
                elif isinstance(event, Ping):
                    if ws.state is _OPEN:
                        out += ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    state = ws.state
                    if state is _REMOTE_CLOSING:  # the peer's close: answer with the same code
                        out += ws.send(event.response())
                    elif state is _OPEN:  # a bad frame (wsproto's ParseFailed): close with its code
                        out += ws.send(CloseConnection(code=event.code, reason=event.reason))
                    if out:
                        await self._write(out)
                    self._finish(
                        {"type": "websocket.disconnect", "code": event.code, "reason": event.reason or ""}
                    )
                    return
            if out:
                await self._write(out)

    async def _pinger(self, interval: float) -> None:
        """``ws_ping_interval``: a ping every ``interval`` seconds keeps middleboxes from timing out
        an idle websocket (the pong is not awaited, as in hypercorn)."""
        while self._ws.state is _OPEN:
            await trio.sleep(interval)
            if self._ws.state is not _OPEN or not await self._write(self._ws.send(Ping())):
                return
