"""``serve_asgi``: the lean server's lifespan, listeners, accept loop and graceful shutdown.

The order of a run: lifespan start-up (a failure aborts, nothing is served), the listeners (on
the stack, on kernel sockets with ``kernel=True``, or the ``listeners`` given), one task per
connection (:class:`~._http11.HttpConnection`; TLS connections that negotiated ``h2`` go to
``_h2.serve_h2``; one whose app runs on after its response is served on in a second task,
:class:`~._http11.Handoffs`), and, once ``shutdown_trigger`` returns, the graceful shutdown: the
listeners close, idle keep-alive connections close at once, requests in flight and apps still
running after their responses (background tasks) get ``graceful_timeout`` seconds to finish, what
is left is cancelled, and the lifespan shutdown runs last.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import importlib
import logging
import socket as stdlib_socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import outcome
import trio

from trio_yastack._open_stack import Stack, current_stack
from trio_yastack._trio_helpers import unwrap_single_exception

from ._access_log import AccessLogger
from ._config import ServerConfig
from ._http11 import Handoffs, HttpConnection
from ._hypercorn import Config, bind_family, parse_bind, serve_asgi_hypercorn, show_host
from ._lifespan import ASGIApp, Lifespan

__all__ = ["serve_asgi"]

logger = logging.getLogger("trio_yastack.asgi")

#: how often the sweeper checks the connections' keep-alive and head timeouts (their resolution)
SWEEP_INTERVAL = 0.5

#: the most connections one accept loop takes per wake-up before the connections' tasks get a turn
ACCEPT_BATCH = 64
#: connection tasks kept parked for the next connections once theirs ended (``_Workers``)
IDLE_WORKERS = 64
#: kernel listeners (Linux TCP_DEFER_ACCEPT): how long a connected client may stay silent before it
#: is accepted anyway (the kernel holds it until its first bytes, at most this long)
DEFER_ACCEPT_SECONDS = 1
#: accept() failed for lack of resources (trio's serve_listeners' list): log, wait, try again
ACCEPT_CAPACITY_ERRNOS = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
ACCEPT_RETRY_SECONDS = 0.1
#: accept() failed for this one connection (trio's SocketListener.accept ignores the same list)
_ACCEPT_IGNORABLE = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT", "EPROTONOSUPPORT",
        "ETIMEDOUT", "ECONNRESET",
    )
    if hasattr(errno, name)
)  # fmt: skip
_ACCEPT_CLOSED = frozenset([errno.EBADF, errno.ENOTSOCK])

#: ALPN offered on TLS listeners: HTTP/2 (hypercorn's protocol) first, as hypercorn offers it
ALPN = ["h2", "http/1.1"]


def _ssl_context(config: ServerConfig) -> ssl.SSLContext:
    """A server context as hypercorn makes one: TLS 1.2+, ALPN h2 and http/1.1."""
    assert config.certfile is not None and config.keyfile is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.certfile, config.keyfile)
    context.set_alpn_protocols(ALPN)
    return context


def _pair(address: Any) -> tuple[str, int] | None:
    """A socket address as the ASGI scope has it: (host, port); None for a non-IP one."""
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def _address(stream: trio.abc.Stream, peer: bool) -> tuple[str, int] | None:
    """The stream's socket address (``peer``: the client's), or None when it has no socket."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return None
    return _socket_address(sock, peer)


def _socket_address(sock: Any, peer: bool) -> tuple[str, int] | None:
    """``_address`` of a socket in hand."""
    try:
        address = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    return _pair(address)


#: the value of a scope address not known at accept: found from the stream's socket
_ASK = ("?", -1)

try:
    # trio's own conflict detector (a private name): what _stack_stream needs to make a stream as
    # trio's constructor makes it; without it (another trio) the constructor itself is used
    from trio._util import ConflictDetector as _ConflictDetector
except ImportError:  # pragma: no cover - every trio this package allows has it
    _ConflictDetector = None  # type: ignore[assignment,misc]  # (the fallback: no lean stream)
_SEND_CONFLICT = "another task is currently sending data on this SocketStream"  # (trio's words)


def _stack_stream(sock: Any) -> trio.SocketStream:
    """``trio.SocketStream(sock)`` for an accepted socket of the stack (``StackSocket``), made as
    the constructor makes it (its socket, its send conflict detector, TCP_NODELAY and
    TCP_NOTSENT_LOWAT set: ``stream_defaults``) without the constructor's generic part: its type
    checks and two ``setsockopt`` calls under ``suppress``, ~1.3 us of a short connection's.
    tests/test_asgi_server.py holds it equal to the constructor's stream."""
    if _ConflictDetector is None:  # pragma: no cover - see the import
        return trio.SocketStream(sock)
    stream = trio.SocketStream.__new__(trio.SocketStream)
    stream.socket = sock
    stream._send_conflict_detector = _ConflictDetector(_SEND_CONFLICT)
    sock.stream_defaults()
    return stream


class _Workers:
    """The connections' tasks, each reused for the next connection once its own ended.

    A task per connection, as ``trio.serve_listeners`` spawns one, costs the spawn (a coroutine,
    a task, the nursery's books) and the task's exit, ~3-4 us; a short connection
    (``Connection: close``) is served in one step of its task, so that was a fair part of trio's
    share of it.  Here a task whose connection ended parks (up to ``IDLE_WORKERS`` of them), and
    the accept loop hands it the next connection and reschedules it: a connection costs a
    reschedule.  Each connection runs in a fresh copy of the accept loop's context, as a spawned
    task would (``Task.context`` set before the task's next step): a context variable an app
    sets is never seen by the next connection's app.  :meth:`stop` (graceful shutdown) ends the
    parked tasks and spawns no more parking ones; the connections in progress end as before.
    """

    __slots__ = ("_handle", "_idle", "_nursery", "_stopped")

    def __init__(self, handle: Callable[..., Awaitable[None]], nursery: trio.Nursery) -> None:
        self._handle = handle
        self._nursery = nursery
        self._idle: list[trio.lowlevel.Task] = []
        self._stopped = False

    def start(self, stream: trio.abc.Stream, client: Any = _ASK, server: Any = _ASK) -> None:
        """Serve ``stream`` in a parked task, or in a new one when none is parked."""
        idle = self._idle
        if idle:
            task = idle.pop()
            task.context = contextvars.copy_context()  # as a spawn copies the spawner's
            trio.lowlevel.reschedule(task, outcome.Value((stream, client, server)))
        else:
            # named after what it runs: the journey and trio's task tree show ``handle``
            self._nursery.start_soon(self._work, stream, client, server, name=self._handle)

    def stop(self) -> None:
        """End the parked tasks (graceful shutdown): nothing is left waiting for connections."""
        self._stopped = True
        idle, self._idle = self._idle, []
        for task in idle:
            trio.lowlevel.reschedule(task, outcome.Value(None))  # (an outcome is unwrapped once)

    async def _work(self, stream: trio.abc.Stream, client: Any, server: Any) -> None:
        handle = self._handle
        task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._idle.remove(task)  # cancelled while parked (the nursery's scope): it ends
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            await handle(stream, client, server)
            del stream, client, server  # a parked task keeps nothing of its last connection alive
            if self._stopped or len(self._idle) >= IDLE_WORKERS:
                return
            self._idle.append(task)
            job = await trio.lowlevel.wait_task_rescheduled(abort)
            if job is None:
                return
            stream, client, server = job


class _Server:
    """The connections of one ``serve_asgi`` run, so shutdown can reach each of them."""

    def __init__(
        self,
        app: ASGIApp,
        config: ServerConfig,
        state: dict[str, Any] | None,
        access_log: AccessLogger | None,
        handoffs: Handoffs,
        nursery: trio.Nursery,
    ) -> None:
        self.app = app
        self.config = config
        self.state = state
        self.access_log = access_log
        self.handoffs = handoffs
        #: the connections' tasks (spawned into ``nursery``, reused connection after connection)
        self.workers = _Workers(self.handle, nursery)
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        # graceful shutdown for HTTP/2 connections negotiated by ALPN (GOAWAY after the streams
        # in flight); HTTP/1.1 connections that became websockets or h2c have their own
        self.stopped = trio.Event()

    async def handle(
        self,
        stream: trio.abc.Stream,
        client: tuple[str, int] | None = _ASK,
        server: tuple[str, int] | None = _ASK,
    ) -> None:
        """One accepted connection, from the TLS handshake (if any) to its close.

        ``client``/``server``: the scope's addresses when the accept loop knows them already
        (accept returns the peer's; a listener on one address is every connection's server), so
        a connection costs no getpeername/getsockname; left out, they are asked of the socket.
        The stream is closed when this returns (it owns the stream: no caller closes it again)."""
        scheme = "http"
        if isinstance(stream, trio.SSLStream):
            scheme = "https"
            handshake_ok = False
            with trio.move_on_after(self.config.request_head_timeout):
                try:
                    await stream.do_handshake()
                    handshake_ok = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if not handshake_ok:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
                return
            if stream.selected_alpn_protocol() == "h2":
                try:
                    await self._serve_h2(stream)
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
                return
        connection = HttpConnection(
            stream,
            self.app,
            self.config,
            scheme=scheme,
            server=_address(stream, peer=False) if server is _ASK else server,
            client=_address(stream, peer=True) if client is _ASK else client,
            state=self.state,
            access_log=self.access_log,
            swept=True,
            handoffs=self.handoffs,
        )
        if self.stopping:
            connection.shutdown()
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:
            # a bug on one connection must not end the others (serve_listeners would take the
            # whole server down with it): logged, and that connection is closed
            logger.exception("connection from %s failed", connection.client)
        finally:
            self.connections.discard(connection)

    async def _serve_h2(self, stream: trio.SSLStream[Any]) -> None:
        try:
            module = importlib.import_module("trio_yastack.l7.asgi._h2")
        except ImportError:
            logger.warning("a TLS client chose h2 but HTTP/2 support (_h2) is missing: closing")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            return
        await module.serve_h2(
            stream,
            self.app,
            self.config,
            scheme="https",
            client=_address(stream, peer=True),
            server=_address(stream, peer=False),
            state=self.state,
            access_log=self.access_log,
            shutdown=self.stopped,
        )

    async def sweep(self) -> None:
        """End connections whose keep-alive or head timeout passed (every SWEEP_INTERVAL)."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            now = trio.current_time()
            for connection in list(self.connections):
                connection.check_timeout(now)

    def shutdown(self) -> None:
        """Stop keep-alive everywhere; idle connections close now."""
        self.stopping = True
        self.stopped.set()
        self.workers.stop()
        for connection in list(self.connections):
            connection.shutdown()


async def _stack_listener(stack: Stack, bind: str, backlog: int) -> tuple[trio.SocketListener, str]:
    host, port = parse_bind(bind)
    host = str(stack.address) if host is None else host
    sock = stack.socket(bind_family(host))
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    await sock.bind((host, port))
    sock.listen(backlog)
    shown = stack.address if host in ("0.0.0.0", "::") else show_host(host)  # (:: takes IPv4 too)
    return trio.SocketListener(sock), f"{shown}:{sock.getsockname()[1]}"


async def _kernel_listeners(bind: str, backlog: int) -> tuple[list[trio.SocketListener], str]:
    host, port = parse_bind(bind)
    host = "127.0.0.1" if host is None else host
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    defer = getattr(trio.socket, "TCP_DEFER_ACCEPT", None)
    if defer is not None:
        for listener in listeners:
            with contextlib.suppress(OSError):
                # accept once the client's first bytes are in (every protocol served here has the
                # client speak first): its first read never waits, which saves a scheduler pass and
                # the epoll registration (and removal at close) per connection; a silent client is
                # accepted after DEFER_ACCEPT_SECONDS all the same, and its head timeout runs then
                listener.socket.setsockopt(trio.socket.IPPROTO_TCP, defer, DEFER_ACCEPT_SECONDS)
    return listeners, f"{show_host(host)}:{listeners[0].socket.getsockname()[1]}"


async def _open_listeners(
    config: ServerConfig, stack: Stack | None, kernel: bool
) -> tuple[list[trio.abc.Listener[Any]], list[str]]:
    """The configured listeners (TLS ones for ``bind`` when certfile/keyfile are set) and URLs."""
    listeners: list[trio.abc.Listener[Any]] = []
    urls: list[str] = []
    context = _ssl_context(config) if config.tls else None
    plain_binds = config.insecure_bind if context is not None else config.bind
    plan = [(bind, context) for bind in (config.bind if context is not None else ())]
    plan += [(bind, None) for bind in plain_binds]
    try:
        for bind, tls in plan:
            if kernel:
                opened, where = await _kernel_listeners(bind, config.backlog)
            else:
                assert stack is not None
                one, where = await _stack_listener(stack, bind, config.backlog)
                opened = [one]
            for plain in opened:
                listeners.append(
                    trio.SSLListener(plain, tls, https_compatible=True) if tls is not None else plain
                )
            urls.append(f"{'https' if tls is not None else 'http'}://{where}")
    except BaseException:
        for done in listeners:
            await done.aclose()
        raise
    return listeners, urls


async def serve_asgi(
    app: Any,
    config: ServerConfig | Config | None = None,
    *,
    server: Literal["yastack", "hypercorn"] | None = None,
    stack: Stack | None = None,
    kernel: bool = False,
    listeners: Sequence[trio.abc.Listener[Any]] | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    mode: Literal["asgi", "wsgi"] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` until ``shutdown_trigger`` returns, then shut down gracefully.

    ``server``: ``"yastack"`` (this package's lean server) or ``"hypercorn"`` (hypercorn's trio
    worker over the stack, :func:`~._hypercorn.serve_asgi_hypercorn`).  Left out, it is
    ``"hypercorn"`` when ``config`` is a hypercorn ``Config`` (whose settings mean what they mean
    to hypercorn: existing callers keep their server) and ``"yastack"`` otherwise.  With
    ``server="yastack"`` a hypercorn ``Config`` is mapped by :meth:`ServerConfig.from_hypercorn`.

    Where it listens: on ``stack`` (default: the task's current stack); on kernel sockets with
    ``kernel=True`` (no stack needed: how the server alone is measured against others); or on
    the ``listeners`` given (any ``trio.abc.Listener``; ``config.bind`` is then unused).
    ``task_status.started`` gets the URLs served.
    """
    hypercorn_config = isinstance(config, Config)
    if server is None:
        server = "hypercorn" if hypercorn_config else "yastack"
    if server == "hypercorn":
        if kernel or listeners is not None:
            raise ValueError("serve_asgi(server='hypercorn') listens on the stack only")
        hconfig = config if isinstance(config, Config) else Config()
        await serve_asgi_hypercorn(
            app, hconfig, stack=stack, shutdown_trigger=shutdown_trigger, mode=mode, task_status=task_status
        )
        return
    if server != "yastack":
        raise ValueError(f"serve_asgi: server must be 'yastack' or 'hypercorn', not {server!r}")
    if mode == "wsgi":
        raise ValueError("serve_asgi: WSGI apps need server='hypercorn'")
    if isinstance(config, Config):
        config = ServerConfig.from_hypercorn(config)
    elif config is None:
        config = ServerConfig()
    if listeners is None and not kernel and stack is None:
        stack = current_stack()
    access_log = AccessLogger(config.access_log) if config.access_log is not None else None
    lifespan = Lifespan(app, config.lifespan)
    try:
        # unwrapped: a caller sees LifespanFailure (or its own error) as itself, not in a group
        with unwrap_single_exception():
            await _run(
                app, config, lifespan, access_log, stack, kernel, listeners, shutdown_trigger, task_status
            )
    finally:
        if access_log is not None:
            access_log.close()


async def _run(
    app: ASGIApp,
    config: ServerConfig,
    lifespan: Lifespan,
    access_log: AccessLogger | None,
    stack: Stack | None,
    kernel: bool,
    listeners: Sequence[trio.abc.Listener[Any]] | None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """Lifespan start-up, serving, lifespan shutdown (last)."""
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan.startup(lifespan_nursery)
        state = lifespan.state  # {} when the app has no lifespan: uvicorn gives it every request too
        await _serve(app, config, state, access_log, stack, kernel, listeners, shutdown_trigger, task_status)
        await lifespan.shutdown()


async def _serve(
    app: ASGIApp,
    config: ServerConfig,
    state: dict[str, Any] | None,
    access_log: AccessLogger | None,
    stack: Stack | None,
    kernel: bool,
    given: Sequence[trio.abc.Listener[Any]] | None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    if given is not None:
        listeners = list(given)
        urls = [
            f"{'https' if isinstance(listener, trio.SSLListener) else 'http'}://{_listener_address(listener)}"
            for listener in listeners
        ]
    else:
        listeners, urls = await _open_listeners(config, stack, kernel)
    where = (
        "kernel sockets" if kernel else "the given listeners" if given is not None else "the user-space stack"
    )
    for url in urls:
        logger.info("Running on %s over %s (CTRL + C to quit)", url, where)
    async with trio.open_nursery() as connections:
        # Hand-offs spawn into the connections' nursery (shutdown's deadline reaches the apps
        # that run on); the watcher itself stops with accepting: nothing is handed on after that
        server = _Server(app, config, state, access_log, Handoffs(connections), connections)
        try:
            async with trio.open_nursery() as accepting:

                async def stop_when(trigger: Callable[[], Awaitable[Any]]) -> None:
                    await trigger()
                    accepting.cancel_scope.cancel()

                if shutdown_trigger is not None:
                    accepting.start_soon(stop_when, shutdown_trigger)
                if access_log is not None:
                    accepting.start_soon(_flush_every_second, access_log)
                accepting.start_soon(server.sweep)
                accepting.start_soon(server.handoffs.run)
                for listener in listeners:
                    accepting.start_soon(_accept_loop, listener, server)
                task_status.started(urls)
        finally:
            # Graceful shutdown: no new connections; idle ones close now, the others after their
            # response; whatever still runs after graceful_timeout is cancelled.
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()
            server.shutdown()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


async def _accept_loop(listener: trio.abc.Listener[Any], server: _Server) -> None:
    """Accept connections on ``listener`` for ever, each served by ``server.handle`` in a task of
    the connections' nursery (``server.workers``: a parked one, or a new one).

    What ``trio.serve_listeners`` does, cheaper per connection: the task runs ``handle`` itself (no
    wrapper task frame, no second close), and on a ``trio.SocketListener`` the peer's address comes
    from accept.  On a kernel socket every pending connection is taken per wake-up (up to
    ``ACCEPT_BATCH``), without the scheduler pass trio's ``accept`` makes after each one.  Errors are
    handled as ``serve_listeners`` and ``SocketListener.accept`` handle them: resource exhaustion is
    logged and retried after ``ACCEPT_RETRY_SECONDS``, a connection that failed before it was
    accepted is skipped, anything else (a closed listener: ``ClosedResourceError``) is raised."""
    if type(listener) is trio.SocketListener:
        sock = listener.socket
        raw = getattr(sock, "_sock", None)  # trio's kernel socket keeps its stdlib socket here
        if type(sock).__module__ == "trio._socket" and isinstance(raw, stdlib_socket.socket):
            await _accept_kernel(sock, raw, server)
        else:
            await _accept_socket(sock, server)
        return
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            await _accept_failed(exc)
        else:
            server.workers.start(stream)


async def _accept_failed(exc: OSError) -> None:
    logger.error(
        "accept returned %s (%s); retrying in %s seconds",
        errno.errorcode.get(exc.errno or 0, exc.errno),
        exc.strerror,
        ACCEPT_RETRY_SECONDS,
        exc_info=True,
    )
    await trio.sleep(ACCEPT_RETRY_SECONDS)


def _fixed_server_address(sock: trio.socket.SocketType) -> tuple[str, int] | None:
    """The listener's own address when every connection has it (not a wildcard), else _ASK."""
    try:
        address = sock.getsockname()
    except OSError:
        return _ASK
    if not isinstance(address, tuple) or address[0] in ("0.0.0.0", "::", ""):
        return _ASK
    return _pair(address)


async def _accept_kernel(sock: trio.socket.SocketType, raw: stdlib_socket.socket, server: _Server) -> None:
    """The kernel ``trio.SocketListener`` fast path: drain the accept queue per wake-up."""
    start = server.workers.start
    here = _fixed_server_address(sock)
    from_stdlib = trio.socket.from_stdlib_socket
    while True:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = raw.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _ACCEPT_CLOSED:
                    raise trio.ClosedResourceError from None
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    await _accept_failed(exc)
                    break
                if exc.errno not in _ACCEPT_IGNORABLE:
                    raise
                continue
            start(trio.SocketStream(from_stdlib(conn)), _pair(address), here)
        else:
            await trio.lowlevel.checkpoint()  # a full batch: the new connections run first
            continue
        await trio.lowlevel.wait_readable(raw)


async def _accept_socket(sock: trio.socket.SocketType, server: _Server) -> None:
    """Any other trio socket: one ``accept`` per connection, its address kept; the stack's
    socket, which has a non-blocking accept, is drained per wake-up (``_accept_nowait``)."""
    start = server.workers.start
    here = _fixed_server_address(sock)
    if callable(getattr(sock, "accept_nowait", None)) and callable(getattr(sock, "wait_acceptable", None)):
        await _accept_nowait(sock, server, here)
        return
    while True:
        try:
            conn, address = await sock.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_CLOSED:
                raise trio.ClosedResourceError from None
            if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                await _accept_failed(exc)
            elif exc.errno not in _ACCEPT_IGNORABLE:
                raise
            continue
        start(trio.SocketStream(conn), _pair(address), here)


async def _accept_nowait(sock: Any, server: _Server, here: tuple[str, int] | None) -> None:
    """The stack's listening socket (``StackSocket``): as ``_accept_kernel``, every pending
    connection per wake-up (up to ``ACCEPT_BATCH``) with ``accept_nowait``, then
    ``wait_acceptable``, instead of a scheduler pass per ``accept``."""
    start = server.workers.start
    accept_nowait = sock.accept_nowait
    # the stack's own socket: its streams made lean (_stack_stream); another's as trio makes them
    make_stream: Callable[[Any], trio.SocketStream] = (
        _stack_stream if callable(getattr(sock, "stream_defaults", None)) else trio.SocketStream
    )
    wait_acceptable = sock.wait_acceptable
    while True:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = accept_nowait()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _ACCEPT_CLOSED:
                    raise trio.ClosedResourceError from None
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    await _accept_failed(exc)
                    break
                if exc.errno not in _ACCEPT_IGNORABLE:
                    raise
                continue
            # A listener on a wildcard address: the connection's own, asked of the socket in
            # hand here rather than found again through the stream by handle()
            local = here if here is not _ASK else _socket_address(conn, peer=False)
            start(make_stream(conn), address, local)
        else:
            await trio.lowlevel.checkpoint()  # a full batch: the new connections run first
            continue
        await wait_acceptable()


def _listener_address(listener: trio.abc.Listener[Any]) -> str:
    inner: Any = listener
    while isinstance(inner, trio.SSLListener):
        inner = inner.transport_listener
    sock = getattr(inner, "socket", None)
    if sock is None:
        return "?"
    address = sock.getsockname()
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


async def _flush_every_second(access_log: AccessLogger) -> None:
    while True:
        await trio.sleep(1.0)
        access_log.flush()
