"""Serve ASGI (and WSGI) apps with hypercorn's own trio machinery over the user-space stack
(``serve_asgi(..., server="hypercorn")``, ``yastack serve --server hypercorn``).

hypercorn's trio worker (``hypercorn.trio.run.worker_serve``) makes kernel sockets from its
``bind`` settings and wraps them with ``trio.socket.from_stdlib_socket``, which only takes
kernel sockets.  Everything else in it is trio and hypercorn's own classes, so this module does
what that worker does with listeners on the stack instead: hypercorn's ``Lifespan``,
``WorkerContext`` and ``TCPServer`` (HTTP/1.1, HTTP/2, WebSockets, its config, its logging) run
unchanged, each accepted stream being a ``trio.SocketStream`` (or ``trio.SSLStream`` with ALPN
``h2``/``http/1.1``) over a stack socket.

Those classes are hypercorn internals, so the versions they were checked against are pinned in
``pyproject.toml`` (:data:`SUPPORTED_HYPERCORN`) and a test checks the pin.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version
from random import randint
from typing import Any, Literal

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from trio_yastack._open_stack import Stack, current_stack

__all__ = ["SUPPORTED_HYPERCORN", "Config", "check_hypercorn_version", "parse_bind", "serve_asgi_hypercorn"]

#: the hypercorn releases whose trio internals this module drives (also pinned in pyproject.toml)
SUPPORTED_HYPERCORN = (">=0.17", "<0.19")


def check_hypercorn_version() -> str:
    """The installed hypercorn version; raises ``RuntimeError`` outside :data:`SUPPORTED_HYPERCORN`."""
    installed = version("hypercorn")
    parts = tuple(int(p) for p in installed.split(".")[:2])
    if not (0, 17) <= parts < (0, 19):
        raise RuntimeError(
            f"hypercorn {installed} is not supported: trio_yastack drives hypercorn's trio worker "
            f"classes and was checked with hypercorn{','.join(SUPPORTED_HYPERCORN)}"
        )
    return installed


def parse_bind(bind: str) -> tuple[str | None, int]:
    """``HOST:PORT`` (or ``[IPV6]:PORT``, ``:PORT``, ``PORT``) as ``(address, port)``: an IPv4
    address, or an IPv6 one without its brackets (``::``: every address of both families, a
    dual-stack listener); ``None`` for a loopback name (hypercorn's default bind is
    127.0.0.1:8000), which means the stack's own address.  ``ValueError`` for anything else."""
    if bind.startswith(("unix:", "fd://")):
        raise ValueError(f"bind {bind!r}: the stack serves TCP over IP only (HOST:PORT or [IPV6]:PORT)")
    host, sep, port_text = bind.rpartition(":")
    if not sep:
        host, port_text = "", bind
    if host.startswith("[") and host.endswith("]"):
        try:
            six = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"bind {bind!r}: not an IPv6 address in [...]") from None
        if six.is_loopback:
            return None, _port(bind, port_text)
        return str(six), _port(bind, port_text)
    if host in ("", "0.0.0.0", "*"):
        host = "0.0.0.0"
    elif host == "localhost" or host.startswith("127."):
        return None, _port(bind, port_text)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"bind {bind!r}: expected IPV4:PORT, [IPV6]:PORT, :PORT or PORT") from None
    return host, _port(bind, port_text)


def bind_family(host: str) -> socket.AddressFamily:
    """The socket family for a host ``parse_bind`` returned (an IPv6 one has a colon)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def show_host(host: str) -> str:
    """A host as a URL shows it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _port(bind: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"bind {bind!r}: expected IPV4:PORT, [IPV6]:PORT, :PORT or PORT") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bind {bind!r}: port {port} out of range")
    return port


def _parse_bind(bind: str, stack: Stack) -> tuple[str, int]:
    host, port = parse_bind(bind)
    return (str(stack.address) if host is None else host), port


async def _listen(stack: Stack, bind: str, backlog: int) -> trio.SocketListener:
    host, port = _parse_bind(bind, stack)
    sock = stack.socket(bind_family(host))
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    await sock.bind((host, port))
    sock.listen(backlog)
    return trio.SocketListener(sock)


def _display(bind: str, stack: Stack, scheme: str) -> str:
    host, port = _parse_bind(bind, stack)
    return f"{scheme}://{stack.address if host in ('0.0.0.0', '::') else show_host(host)}:{port}"


async def serve_asgi_hypercorn(
    app: Any,
    config: Config,
    *,
    stack: Stack | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    mode: Literal["asgi", "wsgi"] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn on ``stack`` (default: the task's current stack) until
    ``shutdown_trigger`` returns, then shut down gracefully.

    ``config`` is a plain ``hypercorn.config.Config``: ``bind`` (``HOST:PORT`` on the stack;
    with ``certfile``/``keyfile`` those are TLS listeners with ALPN ``h2``/``http/1.1`` and
    ``insecure_bind`` adds plain ones), ``backlog``, ``keep_alive_timeout``, ``graceful_timeout``,
    ``accesslog``, ``h2_*``, ``websocket_*`` and the rest mean what they mean to hypercorn.
    ``task_status.started`` gets the URLs served.  Graceful shutdown is hypercorn's: stop
    accepting, let connections finish their requests for up to ``graceful_timeout`` seconds,
    then close what is left; the ASGI lifespan shutdown runs last.
    """
    check_hypercorn_version()
    stack = stack if stack is not None else current_stack()
    wrapped = wrap_app(app, config.wsgi_max_body_size, mode)
    config.set_statsd_logger_class(StatsdLogger)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners: list[trio.abc.Listener[Any]] = []
            urls: list[str] = []
            # hypercorn's rule: with TLS, ``bind`` is served over TLS and ``insecure_bind`` in clear
            ssl_context = config.create_ssl_context() if config.ssl_enabled else None
            insecure = config.insecure_bind if ssl_context is not None else config.bind
            try:
                if ssl_context is not None:
                    for bind in config.bind:
                        plain = await _listen(stack, bind, config.backlog)
                        listeners.append(trio.SSLListener(plain, ssl_context, https_compatible=True))
                        urls.append(_display(bind, stack, "https"))
                for bind in insecure:
                    listeners.append(await _listen(stack, bind, config.backlog))
                    urls.append(_display(bind, stack, "http"))
            except BaseException:
                for opened in listeners:
                    await opened.aclose()
                raise
            for url in urls:
                await config.log.info(f"Running on {url} over the user-space stack (CTRL + C to quit)")
            handler = partial(TCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy()))
            try:
                async with trio.open_nursery() as accepting:

                    async def stop_when(trigger: Callable[[], Awaitable[Any]]) -> None:
                        await trigger()
                        accepting.cancel_scope.cancel()

                    if shutdown_trigger is not None:
                        accepting.start_soon(stop_when, shutdown_trigger)
                    accepting.start_soon(stop_when, context.terminate.wait)
                    accepting.start_soon(
                        partial(trio.serve_listeners, handler, listeners, handler_nursery=connections)
                    )
                    task_status.started(urls)
            finally:
                # Graceful shutdown: no new connections; keep-alive connections close once idle
                # (``terminated``); whatever is still running after graceful_timeout is cancelled.
                with trio.CancelScope(shield=True):
                    for opened in listeners:
                        await opened.aclose()
                    await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
