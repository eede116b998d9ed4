"""HTTP/2 for the lean server: a connection that negotiated ``h2`` by ALPN, or that opened with the h2c
preface (prior knowledge), is served by hypercorn's HTTP/2 protocol in this process.

The interface (for ``_server``/``_http11``)::

    await serve_h2(
        stream,                 # the connection: a trio.SSLStream after its handshake (ALPN "h2"), or
                                # the plain stream whose first bytes were the h2c preface
        app,                    # the ASGI 3 app (the same one HTTP/1.1 serves)
        config,                 # the ServerConfig: keep_alive_timeout, root_path, server_header,
                                # ws_max_message_size (RFC 8441 websockets over h2)
        scheme="https",         # scope["scheme"]: "https" over TLS, else "http"
        client=("198.18.0.2", 51234), server=("198.18.0.1", 8000),  # or None, as in the HTTP scope
        state=state,            # the lifespan state (or None): each request gets a shallow copy
        leftover=b"PRI * ...",  # bytes already read from ``stream`` (the preface among them); or pass
                                # trio_yastack.tls.client_hello.PrefixedStream(leftover, stream) instead
        access_log=access_log,  # the server's AccessLogger (one line per stream), or None
        shutdown=event,         # a trio.Event the server sets on graceful shutdown, or None
    )

It returns when the connection is over, having closed ``stream`` (a second ``aclose`` by the caller is
harmless); an error inside hypercorn's protocol is logged and ends only this connection.

On ``shutdown``: an idle connection closes at once; a busy one refuses new streams and sends GOAWAY
once its streams are done (hypercorn's behaviour with its ``terminated`` event, less a race: see
:class:`_H2Protocol`); the caller's cancel scope bounds the rest (graceful_timeout).  Without
``shutdown`` the connection lives until the client leaves, the keep-alive timeout or that cancel scope.

What HTTP/2 does not share with our HTTP/1.1: ``max_request_body`` (hypercorn has no body limit; its
per-stream flow control bounds what is buffered), the head/body error replies (hypercorn's own).

Why hypercorn's protocol and not our own: HTTP/2's flow control, priorities and stream states are a
large machine that hypercorn (with the ``h2`` package) already runs on trio; HTTP/2 is not where this
server's speed matters (HTTP/1.1 is).  Its protocol class is driven here exactly as hypercorn's own
``hypercorn.trio.tcp_server.TCPServer`` drives it (which needs a socket to ask for addresses, and
starts with a TLS handshake, so it cannot take our streams as they are): one reader task (this one),
writes under one lock, and an idle task for the keep-alive timeout.  Those are hypercorn internals,
checked against the versions pinned in pyproject.toml (``SUPPORTED_HYPERCORN``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.logging import Logger
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import ConnectionState, ResponseSummary, WWWScope

from ._access_log import AccessLogger
from ._config import ServerConfig
from ._lifespan import ASGIApp

__all__ = ["H2C_PREFACE", "serve_h2"]

logger = logging.getLogger("trio_yastack.asgi")

#: what a client with prior knowledge of HTTP/2 sends first in clear (RFC 9113 3.4)
H2C_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_RECV = 64 * 1024


async def serve_h2(
    stream: trio.abc.Stream,
    app: ASGIApp,
    config: ServerConfig,
    *,
    scheme: str,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    state: dict[str, Any] | None,
    leftover: bytes = b"",
    access_log: AccessLogger | None = None,
    shutdown: trio.Event | None = None,
) -> None:
    """Serve one HTTP/2 connection with hypercorn's ``H2Protocol`` (see the module's docstring)."""
    connection = _H2Connection(stream, _hypercorn_config(config, access_log), shutdown)
    tls = scheme == "https"
    try:
        await connection.run(ASGIWrapper(app), state or {}, tls, client, server, leftover)  # type: ignore[arg-type]
        # (hypercorn's ASGIFramework type is its TypedDict scopes; ours are plain dicts, the same at run time)
    except Exception:
        # hypercorn's protocol is a third party's machine: a bug in it ends this connection (logged,
        # and closed by run()), never the server (serve_listeners would go down with a handler)
        logger.exception("HTTP/2 connection from %s failed", client)


@functools.lru_cache(maxsize=16)
def _hypercorn_config(config: ServerConfig, access_log: AccessLogger | None) -> Config:
    """hypercorn's ``Config`` for our ``ServerConfig``, made once per server (both are immutable
    once serving starts; hypercorn only reads its config)."""
    hconfig = _Config()
    hconfig.keep_alive_timeout = config.keep_alive_timeout
    hconfig.root_path = config.root_path
    hconfig.include_server_header = config.server_header
    hconfig.websocket_max_message_size = config.ws_max_message_size
    hconfig.accesslog = None
    hconfig.errorlog = logger  # hypercorn's app errors go to our logger, not to a handler of its own
    hconfig._log = _Log(hconfig, access_log)
    return hconfig


class _Config(Config):
    """hypercorn's config, but the ``server`` header (when asked for) names this server, as the
    HTTP/1.1 side does, not ``hypercorn-h2``."""

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        headers = super().response_headers(protocol)
        if self.include_server_header:
            headers = [
                (b"server", b"trio_yastack") if name == b"server" else (name, value)
                for name, value in headers
            ]
        return headers


class _Log(Logger):
    """hypercorn's logger with its access lines counted into our access log."""

    def __init__(self, config: Config, access_log: AccessLogger | None) -> None:
        super().__init__(config)
        self._access_log = access_log

    async def access(self, request: WWWScope, response: ResponseSummary | None, request_time: float) -> None:
        if self._access_log is not None:
            if response is None:  # the stream ended without a response
                self._access_log.log(dict(request), None, ())
            else:
                self._access_log.log(dict(request), response["status"], response["headers"])


class _Terminated:
    """hypercorn's ``Event`` protocol over the server's shutdown ``trio.Event`` (which only the server
    sets): what hypercorn's protocol consults to refuse new streams and send GOAWAY."""

    __slots__ = ("_event",)

    def __init__(self, event: trio.Event) -> None:
        self._event = event

    async def clear(self) -> None:
        raise RuntimeError("the server's shutdown cannot be undone")

    async def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def is_set(self) -> bool:
        return self._event.is_set()


class _H2Connection:
    """``hypercorn.trio.tcp_server.TCPServer`` for a stream that is already open (and already past
    its TLS handshake): the same reader loop, send lock, idle task and close."""

    def __init__(self, stream: trio.abc.Stream, config: Config, shutdown: trio.Event | None) -> None:
        self.stream = stream
        self.config = config
        self.context = WorkerContext(None)
        self.context.terminated = _Terminated(shutdown if shutdown is not None else trio.Event())
        self.send_lock = trio.Lock()
        self.idle_task = TrioSingleTask()
        self.protocol: _H2Protocol
        self._task_group: TaskGroup

    async def run(
        self,
        app: ASGIWrapper,
        state: dict[str, Any],
        tls: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        leftover: bytes,
    ) -> None:
        try:
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _H2Protocol(
                    app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(state),  # hypercorn copies it into each request's scope
                    tls,
                    client,
                    server,
                    self.protocol_send,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(task_group, self._idle_timeout)
                if leftover:
                    await self.protocol.handle(RawData(leftover))
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            async with self.send_lock:
                try:
                    with trio.CancelScope(shield=True):
                        await self.stream.send_all(event.data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            await self._close()
            await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            if event.idle:
                await self.idle_task.restart(self._task_group, self._idle_timeout)
            else:
                await self.idle_task.stop()

    async def _read_data(self) -> None:
        while True:
            try:
                with trio.fail_after(self.config.read_timeout or math.inf):
                    data = await self.stream.receive_some(_MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if not data:
                break
        await self.protocol.handle(Closed())

    async def _close(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            # already gone, or a write in flight: aclose ends it either way
            with contextlib.suppress(
                trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError
            ):
                await self.stream.send_eof()
        await self.stream.aclose()

    async def _idle_timeout(self) -> None:
        with trio.move_on_after(self.config.keep_alive_timeout):
            await self.context.terminated.wait()
            # shutting down with nothing left to serve: the sender's last frames, then GOAWAY
            await self._let_the_sender_finish()
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.protocol.connection.close_connection()
                await self.protocol._flush()
        with trio.CancelScope(shield=True):
            await self.protocol.handle(Closed())
            await self.stream.aclose()

    async def _let_the_sender_finish(self) -> None:
        """Give hypercorn's send task checkpoints until its buffers are gone (each is dropped once
        its stream's END_STREAM is written), or until it stops making progress (a client that reads
        no more: flow control); the caller's graceful timeout bounds the rest."""
        buffers = self.protocol.stream_buffers
        last: tuple[int, int] | None = None
        stalled = 0
        while buffers and stalled < 3:
            now = (len(buffers), sum(len(buffer.buffer) for buffer in buffers.values()))
            stalled = stalled + 1 if now == last else 0
            last = now
            await trio.sleep(0)


class _H2Protocol(H2Protocol):
    """hypercorn's protocol, but on shutdown it does not send GOAWAY the moment its last stream's
    app finishes: at that moment its send task may still hold the last DATA frame and END_STREAM,
    and h2 refuses both once GOAWAY is out (the client never sees its response end; hypercorn's
    own server has this race).  The idle task sends GOAWAY after the sender is done instead."""

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, StreamClosed) and self.context.terminated.is_set():
            await self._close_stream(event.stream_id)
            await self.send(Updated(idle=self.idle))
            return
        await super().stream_send(event)

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        """Request body arriving for a stream hypercorn no longer has (its app answered and returned
        without reading the body, a 401 to an upload; or the stream was refused at shutdown):
        hypercorn looks the stream up and dies of the KeyError, taking the connection, every other
        stream on it and the caller's task with it.  Such data is dropped here instead, its flow
        control window given back, and the client told to stop sending with RST_STREAM(NO_ERROR)
        (RFC 9113 8.1).  A stream is looked up when its data comes, not before the batch: the
        request that opens it may be earlier in the same batch."""
        streams = self.streams
        if not any(
            isinstance(event, h2.events.DataReceived) and event.stream_id not in streams for event in events
        ):
            await super()._handle_events(events)  # the common case: every stream is known
            return
        pending: list[h2.events.Event] = []
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in streams:
                if pending:  # the request opening this stream may be among them: hypercorn first
                    await super()._handle_events(pending)
                    pending = []
                if event.stream_id not in streams:
                    with contextlib.suppress(h2.exceptions.ProtocolError):  # the stream is gone already
                        self.connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                        self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    continue
            pending.append(event)
        await super()._handle_events(pending)
