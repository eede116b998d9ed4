"""Helpers for the proxy's behaviour tests (``test_proxy_http.py``, ``test_proxy_tcp_tls.py``).

The usual set-up is the in-process simulator of ``socket_helpers.two_stacks``: the proxy runs on
stack A (198.18.0.2, :data:`PROXY_PORT`), the backends (hypercorn serving :class:`BackendApp`,
or a raw trio server) and the clients on stack B (198.18.0.1), all in one trio run under
``MockClock(autojump_threshold=0)``, so every timeout is simulated and free.

- configs are built as plain data (Envoy v3 shape) by :func:`http_bootstrap` and friends, and
  loaded with the real loader (``load_config``), so a test reads like the YAML it stands for;
- :func:`running_proxy`, :func:`running_backend`, :func:`raw_server` start things in a nursery and
  stop them (by event, never by name) when the ``async with`` ends;
- :class:`Client` is a small h11 HTTP/1.1 client over one connection; :func:`read_response`
  parses whatever a raw request got back.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import h11
import trio
from hypercorn.config import Config
from socket_helpers import A_IP, B_IP

from trio_yastack import Stack
from trio_yastack.l7 import serve_asgi
from trio_yastack.l7.config import (
    DOWNSTREAM_TLS_TYPE,
    HCM_TYPE,
    ROUTER_TYPE,
    TCP_PROXY_TYPE,
    UPSTREAM_TLS_TYPE,
    Bootstrap,
    load_config,
)
from trio_yastack.l7.http_proxy import ProxyLimits
from trio_yastack.l7.network import Network
from trio_yastack.l7.proxy import Proxy

__all__ = [
    "A_IP",
    "B_IP",
    "PROXY_PORT",
    "BackendApp",
    "Client",
    "Response",
    "bootstrap",
    "cluster",
    "connect",
    "downstream_tls",
    "http_bootstrap",
    "http_listener",
    "pattern",
    "raw_server",
    "read_response",
    "route",
    "running_backend",
    "running_proxy",
    "start_backend",
    "tcp_listener",
    "upstream_tls",
    "wait_until",
]

PROXY_PORT = 10000

# --- configs (Envoy v3 shape, as plain data) -------------------------------------------------


def route(
    prefix: str | None = "/",
    cluster: str | None = "app",
    *,
    path: str | None = None,
    headers: list[dict[str, Any]] | None = None,
    direct: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    **action: Any,
) -> dict[str, Any]:
    """One ``routes[]`` entry: ``match`` (prefix or path, header matchers) and either ``route``
    (cluster plus ``action`` fields such as ``timeout="1s"``) or ``direct_response``; ``extra``
    goes on the route itself (``request_headers_to_add`` ...)."""
    match: dict[str, Any] = {"path": path} if path is not None else {"prefix": prefix}
    if headers:
        match["headers"] = headers
    out: dict[str, Any] = {"match": match}
    if direct is not None:
        out["direct_response"] = direct
    else:
        out["route"] = ({"cluster": cluster} if cluster is not None else {}) | action
    return out | (extra or {})


def hcm(
    routes: list[dict[str, Any]] | None = None,
    *,
    virtual_hosts: list[dict[str, Any]] | None = None,
    stat_prefix: str = "ingress",
    **extra: Any,
) -> dict[str, Any]:
    """An ``http_connection_manager`` filter (``extra``: request_timeout, stream_idle_timeout, ...)."""
    if virtual_hosts is None:
        virtual_hosts = [{"name": "all", "domains": ["*"], "routes": routes or [route()]}]
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": stat_prefix,
            "route_config": {"name": "routes", "virtual_hosts": virtual_hosts},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
            **extra,
        },
    }


def http_listener(
    filter_: dict[str, Any], *, port: int = PROXY_PORT, address: str = A_IP, name: str = "ingress"
) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [filter_]}],
    }


def tcp_listener(
    cluster_name: str, *, port: int = PROXY_PORT, address: str = A_IP, idle_timeout: str | None = None
) -> dict[str, Any]:
    typed: dict[str, Any] = {"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", "cluster": cluster_name}
    if idle_timeout is not None:
        typed["idle_timeout"] = idle_timeout
    return {
        "name": "tcp",
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": typed}]}],
    }


def downstream_tls(cert: str, key: str, *, alpn: list[str] | None = None) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]
    }
    if alpn is not None:
        common["alpn_protocols"] = alpn
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": common},
    }


def upstream_tls(*, sni: str | None = None, trusted_ca: str | None = None) -> dict[str, Any]:
    typed: dict[str, Any] = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": {}}
    if trusted_ca is not None:
        typed["common_tls_context"]["validation_context"] = {"trusted_ca": {"filename": trusted_ca}}
    if sni is not None:
        typed["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed}


def cluster(name: str, ports: Iterable[int], *, address: str = B_IP, **extra: Any) -> dict[str, Any]:
    """A STATIC cluster of ``address:port`` endpoints (``extra``: lb_policy, health_checks, ...)."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": address, "port_value": p}}}} for p in ports
    ]
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        **extra,
    }


def bootstrap(
    listeners: list[dict[str, Any]], clusters: list[dict[str, Any]], admin_port: int | None = None
) -> Bootstrap:
    """Loaded by the real loader (JSON is YAML), so every config here is one the loader accepts."""
    doc: dict[str, Any] = {"static_resources": {"listeners": listeners, "clusters": clusters}}
    if admin_port is not None:
        doc["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    return load_config(json.dumps(doc))


def http_bootstrap(
    clusters: list[dict[str, Any]], routes: list[dict[str, Any]] | None = None, **hcm_extra: Any
) -> Bootstrap:
    """One HTTP listener on A_IP:PROXY_PORT with ``routes`` (default: everything to ``app``)."""
    return bootstrap([http_listener(hcm(routes, **hcm_extra))], clusters)


# --- running things ----------------------------------------------------------------------------


@asynccontextmanager
async def running_proxy(
    config: Bootstrap,
    stack: Stack | None,
    *,
    limits: ProxyLimits | None = None,
    drain_time: float = 1.0,
    seed: int = 1,
) -> AsyncIterator[Proxy]:
    """The proxy serving ``config`` (on ``stack``, or kernel sockets when None) until the block
    ends, then drained and awaited."""
    warnings: list[str] = []
    proxy = Proxy(
        config, network=Network(stack), limits=limits, rng=random.Random(seed), warn=warnings.append
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(proxy.run, drain_time=drain_time))
        try:
            yield proxy
        finally:
            proxy.shutdown()


@dataclass
class RunningBackend:
    app: BackendApp
    port: int
    stopped: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        """hypercorn's graceful shutdown: stop accepting, close idle keep-alive connections."""
        self.stopped.set()

    async def stop_and_wait(self) -> None:
        self.stop()
        await self.done.wait()


async def start_backend(
    nursery: trio.Nursery, app: BackendApp, stack: Stack, port: int, *, address: str = B_IP, **config: Any
) -> RunningBackend:
    """hypercorn serving ``app`` on ``stack`` at ``address:port`` (``config``: Config attributes),
    in ``nursery``, until :meth:`RunningBackend.stop`."""
    cfg = Config()
    cfg.bind = [f"{address}:{port}"]
    cfg.graceful_timeout = 1.0
    cfg.accesslog = None
    cfg.errorlog = None
    for key, value in config.items():
        setattr(cfg, key, value)
    handle = RunningBackend(app, port)

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_asgi(
                app, cfg, stack=stack, shutdown_trigger=handle.stopped.wait, task_status=task_status
            )
        finally:
            handle.done.set()

    await nursery.start(serve)
    return handle


@asynccontextmanager
async def running_backend(
    app: BackendApp, stack: Stack, port: int, **config: Any
) -> AsyncIterator[RunningBackend]:
    """:func:`start_backend` for the ``async with`` block."""
    async with trio.open_nursery() as nursery:
        handle = await start_backend(nursery, app, stack, port, **config)
        try:
            yield handle
        finally:
            handle.stop()


@asynccontextmanager
async def raw_server(
    stack: Stack, port: int, handler: Callable[[trio.SocketStream], Awaitable[None]], *, address: str = B_IP
) -> AsyncIterator[trio.SocketListener]:
    """``handler(stream)`` for every connection to ``address:port`` on ``stack`` (closed after)."""
    sock = stack.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    await sock.bind((address, port))
    sock.listen(128)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handle, [listener]))
        try:
            yield listener
        finally:
            nursery.cancel_scope.cancel()


async def connect(stack: Stack, port: int = PROXY_PORT, address: str = A_IP) -> trio.SocketStream:
    """A client connection from ``stack`` to ``address:port``."""
    sock = stack.socket()
    try:
        await sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def wait_until(condition: Callable[[], bool], *, timeout: float = 30.0, step: float = 0.01) -> None:
    """Poll ``condition`` every ``step`` seconds, for at most ``timeout`` (simulated or real) seconds."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(step)


# --- HTTP client -------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v.decode("latin-1") for k, v in self.headers if k == name.lower().encode()]
        return ",".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """HTTP/1.1 over one connection, with h11: ``await client.request("GET", "/")``."""

    def __init__(self, stream: trio.abc.Stream, host: str = "proxy.test") -> None:
        self.stream = stream
        self.host = host
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            self.h11.receive_data(await self.stream.receive_some(65536))

    async def start(
        self, method: str, target: str, headers: Iterable[tuple[str, str]] = (), *, host: str | None = None
    ) -> None:
        all_headers = [("host", host or self.host), *headers]
        await self.send(h11.Request(method=method, target=target, headers=all_headers))

    async def read_response(self, *, sink: Callable[[bytes], None] | None = None) -> Response:
        """The response (1xx skipped but noted) and its body (given to ``sink`` if set); the
        connection is then ready for the next request if h11 says it can carry one."""
        informational: list[int] = []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                informational.append(event.status_code)
                continue
            break
        assert isinstance(event, (h11.Response, h11.InformationalResponse)), event
        response = Response(event.status_code, list(event.headers), informational=informational)
        if event.status_code == 101:
            return response
        parts = []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                if sink is not None:
                    sink(bytes(event.data))
                else:
                    parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r} in a response body")
        response.body = b"".join(parts)
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return response

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        host: str | None = None,
    ) -> Response:
        """One request with a Content-Length body; ready for the next one after."""
        headers = list(headers)
        if body or method in ("POST", "PUT"):
            headers.append(("content-length", str(len(body))))
        await self.start(method, target, headers, host=host)
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        return await self.read_response()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def read_response(stream: trio.abc.Stream, method: str = "GET") -> Response | None:
    """The response to a request sent raw on ``stream`` (h11 parses it as if it had sent a
    ``method`` request); None when the peer closed without a response."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    response: Response | None = None
    body = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await stream.receive_some(65536))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                conn.receive_data(b"")
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            response = Response(event.status_code, list(event.headers))
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            response.body = b"".join(body)
            return response
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    parts = []
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
        if not data:
            break
        parts.append(data)
    return b"".join(parts)


# --- the backend app -------------------------------------------------------------------------

_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern(nbytes: int) -> Iterable[bytes]:
    """``nbytes`` of 0, 1, ..., 255 repeated, in 64 KiB pieces (made on the fly, never whole)."""
    sent = 0
    while sent < nbytes:
        size = min(len(_BLOCK), nbytes - sent)
        yield _BLOCK[:size]
        sent += size


def pattern_sha256(nbytes: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(nbytes):
        digest.update(piece)
    return digest.hexdigest()


@dataclass
class Seen:
    method: str
    path: str  # with the query
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None


class BackendApp:
    """The ASGI app every test backend serves (``name`` tells the backends apart):

    - ``/status/N``: status N, body ``<name> N``
    - ``/slow?delay=S``: answers 200 after S seconds
    - ``/stream?bytes=N&interval=S``: N bytes of :func:`pattern`, 64 KiB pieces, with a Content-Length
    - ``/upload?delay=S&hold=H``: waits H seconds, then reads the body (sleeping S between pieces:
      a slow reader) and answers its length and SHA-256 as JSON
    - ``/echo``: the request body back, piece by piece (chunked)
    - ``/healthz``: 200 while ``healthy``, else 503
    - anything else: JSON ``{backend, method, path, headers}`` (what the proxy forwarded)
    - WebSocket: echoes every message (text with an ``echo:`` prefix)

    ``force_status`` answers every request (but ``/healthz``) with that status; ``delay`` holds
    every answer back that many seconds.
    """

    def __init__(self, name: str = "backend") -> None:
        self.name = name
        self.healthy = True
        self.force_status: int | None = None  # answer every request (but /healthz) with this
        self.delay = 0.0  # seconds before answering any request (but /healthz)
        self.seen: list[Seen] = []  # every HTTP request but health checks
        self.health_checks = 0
        self.upload_pieces = 0
        self.uploads_completed = 0
        self.streamed = 0  # bytes /stream handed to hypercorn
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await self._websocket(receive, send)
            return
        path = scope["path"]
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        if path == "/healthz":
            self.health_checks += 1
            await _respond(send, 200 if self.healthy else 503, b"ok\n" if self.healthy else b"sick\n")
            return
        full = path + ("?" + scope["query_string"].decode() if scope.get("query_string") else "")
        self.seen.append(Seen(scope["method"], full, headers))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await trio.sleep(self.delay)
            if self.force_status is not None:
                await _respond(send, self.force_status, f"{self.name} {self.force_status}".encode())
                return
            await self._http(path, query, scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _http(
        self, path: str, query: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            await _respond(send, code, f"{self.name} {code}".encode())
        elif path == "/slow":
            await trio.sleep(float(query.get("delay", "1")))
            await _respond(send, 200, f"{self.name} slow".encode())
        elif path == "/stream":
            nbytes = int(query.get("bytes", "1048576"))
            interval = float(query.get("interval", "0"))
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(nbytes).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for piece in pattern(nbytes):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                self.streamed += len(piece)
                if interval:
                    await trio.sleep(interval)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/upload":
            delay = float(query.get("delay", "0"))
            await trio.sleep(float(query.get("hold", "0")))  # a reader that starts late
            digest, total = hashlib.sha256(), 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                piece = message.get("body", b"")
                digest.update(piece)
                total += len(piece)
                self.upload_pieces += 1
                if delay:
                    await trio.sleep(delay)
                if not message.get("more_body"):
                    break
            self.uploads_completed += 1
            body = json.dumps({"bytes": total, "sha256": digest.hexdigest()}).encode()
            await _respond(send, 200, body, b"application/json")
        elif path == "/echo":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                await send(
                    {"type": "http.response.body", "body": message.get("body", b""), "more_body": True}
                )
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.body", "body": b""})
        else:
            while (await receive()).get("more_body"):
                pass
            document = {
                "backend": self.name,
                "method": scope["method"],
                "path": scope["raw_path"].decode("latin-1")
                + ("?" + scope["query_string"].decode() if scope.get("query_string") else ""),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            }
            await _respond(send, 200, json.dumps(document).encode(), b"application/json")

    async def _websocket(self, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": "echo:" + message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _respond(send: Any, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
