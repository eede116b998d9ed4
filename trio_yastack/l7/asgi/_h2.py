"""HTTP/2 for the lean server: a connection that negotiated ``h2`` by ALPN, or that opened with the h2c
preface (prior knowledge), is served by hypercorn's HTTP/2 protocol in this process.

The interface (for ``_server``/``_http11``)::

    await serve_h2(
        stream,                 # the connection: a trio.SSLStream after its handshake (ALPN "h2"), or
                                # the plain stream whose first bytes were the h2c preface
        app,                    # the ASGI 3 app (the same one HTTP/1.1 serves)
        config=config,          # the ServerConfig: keep_alive_timeout, root_path, server_header,
                                # ws_max_message_size (RFC 8441 websockets over h2)
        state=state,            # the lifespan state: each request's scope["state"] is a shallow copy
        client=("198.18.0.2", 51234), server=("198.18.0.1", 8000),  # or None, as in the HTTP scope
        tls=True,               # scope["scheme"]: "https" when True
        leftover=b"PRI * ...",  # bytes already read from ``stream`` (the preface among them); or pass
                                # trio_yastack.tls.client_hello.PrefixedStream(leftover, stream) instead
        access_log=access_log,  # counted into the same access log (one line per stream), or None
        shutdown=event,         # a trio.Event the server sets on graceful shutdown, or None
    )

It returns when the connection is over, having closed ``stream`` (a second ``aclose`` by the caller is
harmless).  On ``shutdown``: an idle connection closes at once; a busy one refuses new streams and
sends GOAWAY once its streams are done (hypercorn's own behaviour with its ``terminated`` event); the
caller's cancel scope bounds the rest (graceful_timeout).

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
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.logging import Logger
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import ConnectionState, ResponseSummary, WWWScope

__all__ = ["H2C_PREFACE", "serve_h2"]

logger = logging.getLogger("trio_yastack.l7.asgi")

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]

#: what a client with prior knowledge of HTTP/2 sends first in clear (RFC 9113 3.4)
H2C_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_RECV = 64 * 1024


class _Config(Hashable, Protocol):
    """What this module reads of the server's ``ServerConfig`` (a frozen dataclass: hashable)."""

    @property
    def keep_alive_timeout(self) -> float: ...
    @property
    def root_path(self) -> str: ...
    @property
    def server_header(self) -> bool: ...
    @property
    def ws_max_message_size(self) -> int: ...


async def serve_h2(
    stream: trio.abc.Stream,
    app: ASGIApp,
    *,
    config: _Config,
    state: dict[str, Any],
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    tls: bool,
    leftover: bytes = b"",
    access_log: Any | None = None,
    shutdown: trio.Event | None = None,
) -> None:
    """Serve one HTTP/2 connection with hypercorn's ``H2Protocol`` (see the module's docstring)."""
    connection = _H2Connection(stream, _hypercorn_config(config, access_log), shutdown)
    await connection.run(ASGIWrapper(app), state, tls, client, server, leftover)  # type: ignore[arg-type]
    # (hypercorn's ASGIFramework type is its TypedDict scopes; ours are plain dicts, the same at run time)


@functools.lru_cache(maxsize=16)
def _hypercorn_config(config: _Config, access_log: Any | None) -> Config:
    """hypercorn's ``Config`` for our ``ServerConfig``, made once per server (both are immutable
    once serving starts; hypercorn only reads its config)."""
    hconfig = Config()
    hconfig.keep_alive_timeout = config.keep_alive_timeout
    hconfig.root_path = config.root_path
    hconfig.include_server_header = config.server_header
    hconfig.websocket_max_message_size = config.ws_max_message_size
    hconfig.accesslog = None
    hconfig.errorlog = logger  # hypercorn's app errors go to our logger, not to a handler of its own
    hconfig._log = _Log(hconfig, access_log)
    return hconfig


class _Log(Logger):
    """hypercorn's logger with its access lines counted into our access log."""

    def __init__(self, config: Config, access_log: Any | None) -> None:
        super().__init__(config)
        self._access_log = access_log

    async def access(self, request: WWWScope, response: ResponseSummary | None, request_time: float) -> None:
        if self._access_log is not None:
            status = response["status"] if response is not None else None
            self._access_log.access(request, status, request_time)


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
        self.protocol: H2Protocol
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
                self.protocol = H2Protocol(
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
        with trio.CancelScope(shield=True):
            await self.protocol.handle(Closed())
            await self.stream.aclose()
