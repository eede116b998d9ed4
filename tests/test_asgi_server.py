"""The lean ASGI server as a whole (``serve_asgi``): over two stacks on a memory wire under a
mock clock, on kernel-free memory streams where the stack adds nothing, and on given listeners.

Covered here: serving over the stack (keep-alive, several clients at once, a slow app not holding
up others), the lifespan protocol (state, failures, "auto"), graceful shutdown, the access log,
the CLI's mapping of options, and ``server="hypercorn"`` still reaching hypercorn.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import random
import re
import socket
import ssl
import struct
from typing import Any, Literal

import pytest
import trio
import trio.testing
from asgi_helpers import RawClient, build_request, echo_app, hello_app, running_server, scope_app
from socket_helpers import A_IP, socket_pair, two_stacks
from tcp_sim_helpers import DropPort

from trio_yastack.l7.asgi import Config, HttpConnection, LifespanFailure, ServerConfig, _server, serve_asgi
from trio_yastack.l7.asgi._access_log import format_line
from trio_yastack.l7.asgi._server import SWEEP_INTERVAL
from trio_yastack.socket_api import StackSocket
from trio_yastack.stack.tcp import TcpState
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN
from trio_yastack.tls.certs import make_ca


async def test_keep_alive_requests_over_two_stacks(autojump_clock: trio.testing.MockClock) -> None:
    """GET and POST on one connection over the stack, answered in order, the connection kept."""
    async with (
        two_stacks() as (a, b),
        running_server(hello_app, ServerConfig(bind=("8000",)), stack=a) as urls,
    ):
        assert urls == [f"http://{A_IP}:8000"]
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        for _ in range(3):
            response = await client.request("GET", "/")
            assert (response.status, response.body) == (200, b"Hello, world!")
            assert response.header("content-length") == "13"
            assert response.header("date") is not None
        await client.send(build_request("POST", "/", b"x" * 10))
        assert (await client.response()).status == 200
        await client.stream.aclose()


# -- several clients --------------------------------------------------------------------------------
async def test_other_clients_served_while_one_app_waits(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await release.wait()
        await hello_app(scope, receive, send)

    async with two_stacks() as (a, b), running_server(app, ServerConfig(bind=("8000",)), stack=a):
        slow = RawClient(await b.tcp_connect(A_IP, 8000))
        await slow.send(build_request("GET", "/slow"))
        for _ in range(3):
            other = RawClient(await b.tcp_connect(A_IP, 8000))
            assert (await other.request()).status == 200
            await other.stream.aclose()
        release.set()
        assert (await slow.response()).status == 200


async def test_swept_keep_alive_timeout_over_the_stack(autojump_clock: trio.testing.MockClock) -> None:
    """serve_asgi's sweeper closes an idle keep-alive connection within its resolution."""
    config = ServerConfig(bind=("8000",), keep_alive_timeout=5.0)
    async with two_stacks() as (a, b), running_server(hello_app, config, stack=a):
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        await client.request()
        start = trio.current_time()
        assert await client.wait_closed() == b""
        assert 5.0 <= trio.current_time() - start <= 5.0 + SWEEP_INTERVAL + 0.5


async def test_swept_head_timeout_answers_408(autojump_clock: trio.testing.MockClock) -> None:
    config = ServerConfig(bind=("8000",), request_head_timeout=3.0)
    async with two_stacks() as (a, b), running_server(hello_app, config, stack=a):
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        await client.send(b"GET / HTTP/1.1\r\n")
        assert (await client.response()).status == 408


async def test_given_listeners_and_tls_with_alpn(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    """``listeners=``: any trio listener (here TLS over a stack listener); the scope says https."""
    ca = make_ca("asgi test CA")
    chain, key = ca.issue([A_IP]).write(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(chain, key)
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    client_context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    client_context.set_alpn_protocols(["http/1.1"])
    async with two_stacks() as (a, b):
        listener = trio.SSLListener(a.tcp_listen(8443), server_context, https_compatible=True)
        async with running_server(scope_app, listeners=[listener]) as urls:
            assert urls == ["https://0.0.0.0:8443"]  # what the listener is bound to
            stream = trio.SSLStream(await b.tcp_connect(A_IP, 8443), client_context, server_hostname=A_IP)
            client = RawClient(stream)
            scope = (await client.request("GET", "/tls")).json()
            assert (scope["scheme"], scope["path"]) == ("https", "/tls")
            assert stream.selected_alpn_protocol() == "http/1.1"


async def test_tls_listeners_from_certfile(autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    ca = make_ca("asgi test CA")
    chain, key = ca.issue([A_IP]).write(tmp_path)
    config = ServerConfig(bind=("8443",), insecure_bind=("8000",), certfile=str(chain), keyfile=str(key))
    client_context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    async with two_stacks() as (a, b), running_server(scope_app, config, stack=a) as urls:
        assert urls == [f"https://{A_IP}:8443", f"http://{A_IP}:8000"]
        stream = trio.SSLStream(await b.tcp_connect(A_IP, 8443), client_context, server_hostname=A_IP)
        assert (await RawClient(stream).request()).json()["scheme"] == "https"
        plain = RawClient(await b.tcp_connect(A_IP, 8000))
        assert (await plain.request()).json()["scheme"] == "http"


# -- lifespan ----------------------------------------------------------------------------------------
def lifespan_app(events: list[str], *, fail: str | None = None, raise_in: str | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                events.append(kind)
                if raise_in == kind:
                    raise RuntimeError(f"{kind} broke")
                if kind == "startup":
                    scope["state"]["greeting"] = "hi"
                    if fail:
                        await send({"type": "lifespan.startup.failed", "message": fail})
                        return
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        events.append(f"request {scope['state'].get('greeting')}")
        await hello_app(scope, receive, send)

    return app


async def test_lifespan_state_reaches_requests_and_shutdown_runs_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    config = ServerConfig(bind=("8000",))
    async with two_stacks() as (a, b), running_server(lifespan_app(events), config, stack=a):
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        await client.request()
        assert events == ["startup", "request hi"]
    assert events == ["startup", "request hi", "shutdown"]


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_lifespan_startup_failed_aborts(
    autojump_clock: trio.testing.MockClock, mode: Literal["auto", "on"]
) -> None:
    events: list[str] = []
    async with two_stacks() as (a, b):
        with pytest.raises(LifespanFailure, match="no database"):
            await serve_asgi(lifespan_app(events, fail="no database"), ServerConfig(lifespan=mode), stack=a)
        with pytest.raises(OSError):
            await b.tcp_connect(A_IP, 8000)  # nothing listens
    assert events == ["startup"]


async def test_lifespan_on_aborts_when_the_app_raises(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, _b):
        with pytest.raises(LifespanFailure, match="startup broke"):
            await serve_asgi(lifespan_app([], raise_in="startup"), ServerConfig(lifespan="on"), stack=a)


async def test_lifespan_auto_serves_an_app_without_lifespan(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """hello_app raises on the lifespan scope, as apps without lifespan support do."""
    with caplog.at_level(logging.DEBUG, logger="trio_yastack.asgi"):
        async with two_stacks() as (a, b), running_server(hello_app, ServerConfig(bind=("8000",)), stack=a):
            client = RawClient(await b.tcp_connect(A_IP, 8000))
            assert (await client.request()).status == 200
    assert any("unsupported" in record.getMessage() for record in caplog.records)
    assert not any(record.levelno >= logging.ERROR for record in caplog.records)


async def test_lifespan_off_never_calls_the_app(autojump_clock: trio.testing.MockClock) -> None:
    events: list[str] = []
    config = ServerConfig(bind=("8000",), lifespan="off")
    async with two_stacks() as (a, b), running_server(lifespan_app(events), config, stack=a):
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        await client.request()
    assert events == ["request None"]


# -- graceful shutdown -------------------------------------------------------------------------------
async def test_graceful_shutdown(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown: the listener closes, an idle keep-alive connection closes at once, a request in
    flight finishes (told ``connection: close``), one slower than graceful_timeout is cancelled,
    answered 503 and named in the log, and the lifespan shutdown runs after all of that."""
    events: list[str] = []
    started = {"/short": trio.Event(), "/long": trio.Event()}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan_app(events)(scope, receive, send)
            return
        path = scope["path"]
        if path in started:
            started[path].set()
            await trio.sleep(2.0 if path == "/short" else 60.0)  # the app's own work, simulated
        events.append(f"answered {path}")
        await hello_app(scope, receive, send)

    stop = trio.Event()
    config = ServerConfig(bind=("8000",), graceful_timeout=5.0)
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:

        async def serve() -> None:
            await serve_asgi(app, config, stack=a, shutdown_trigger=stop.wait)
            events.append("serve_asgi returned")

        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        idle = RawClient(await b.tcp_connect(A_IP, 8000))
        await idle.request()
        short = RawClient(await b.tcp_connect(A_IP, 8000))
        await short.send(build_request("GET", "/short"))
        long = RawClient(await b.tcp_connect(A_IP, 8000))
        await long.send(build_request("GET", "/long"))
        await started["/short"].wait()
        await started["/long"].wait()
        begin = trio.current_time()
        stop.set()
        assert await idle.wait_closed() == b""
        assert trio.current_time() - begin < 0.5  # at once, not after keep-alive
        with pytest.raises(OSError):
            await b.tcp_connect(A_IP, 8000)
        response = await short.response()
        assert response.status == 200 and response.header("connection") == "close"
        assert await short.wait_closed() == b""
        cut = await long.response()  # cancelled at graceful_timeout: nothing was sent, so a 503
        assert cut.status == 503 and cut.header("connection") == "close"
        assert await long.wait_closed() == b""
        assert 5.0 <= trio.current_time() - begin < 6.0
    reports = [r.getMessage() for r in caplog.records if "graceful shutdown" in r.getMessage()]
    assert len(reports) == 1 and "GET /long" in reports[0] and "answered 503" in reports[0], reports
    assert events == ["startup", "answered /", "answered /short", "shutdown", "serve_asgi returned"]


async def test_apps_running_on_after_their_responses_over_the_stack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Apps that run on after their responses (background tasks of 2 s and 60 s): the next
    requests on the keep-alive connection are answered at once; at shutdown the idle connection
    closes at once, the 2 s work ends, the 60 s one is cancelled at graceful_timeout, and the
    lifespan shutdown runs after both."""
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan_app(events)(scope, receive, send)
            return
        await hello_app(scope, receive, send)
        if scope["path"].startswith("/work/"):
            seconds = float(scope["path"].removeprefix("/work/"))
            await trio.sleep(seconds)  # the background task's work, simulated
            events.append(f"worked {seconds:g} s")

    stop = trio.Event()
    config = ServerConfig(bind=("8000",), graceful_timeout=5.0)
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:

        async def serve() -> None:
            await serve_asgi(app, config, stack=a, shutdown_trigger=stop.wait)
            events.append("serve_asgi returned")

        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        begin = trio.current_time()
        for path in ("/work/2", "/work/60", "/"):
            assert (await client.request("GET", path)).status == 200
        assert trio.current_time() - begin < 1.0  # not after the first app's 2 s
        stop.set()
        stopped = trio.current_time()
        assert await client.wait_closed() == b""
        assert trio.current_time() - stopped < 0.5  # idle: closed at once, the apps still running
    assert 5.0 <= trio.current_time() - stopped < 6.0
    assert events == ["startup", "worked 2 s", "shutdown", "serve_asgi returned"]


async def test_connection_close_ends_at_the_response_while_the_app_runs_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``Connection: close`` response whose app runs on (a background task of 60 s): over the
    stack the client reads the response and then EOF at once, not after the app; the work
    still ends and the server goes on serving."""
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await hello_app(scope, receive, send)
        await trio.sleep(60)  # the background task's work, simulated
        events.append("worked")

    async with two_stacks() as (a, b), running_server(app, ServerConfig(bind=("8000",)), stack=a):
        with trio.fail_after(120):
            client = RawClient(await b.tcp_connect(A_IP, 8000))
            begin = trio.current_time()
            response = await client.request("GET", "/", connection="close")
            assert (response.status, response.body) == (200, b"Hello, world!")
            assert await client.wait_closed() == b""
            assert trio.current_time() - begin < 1.0  # the client saw the end before the app's
            await client.stream.aclose()
            assert events == []
            again = RawClient(await b.tcp_connect(A_IP, 8000))
            assert (await again.request("GET", "/", connection="close")).status == 200
            await again.stream.aclose()
            while len(events) < 2:
                await trio.sleep(1)
        assert events == ["worked", "worked"]


# -- access log -------------------------------------------------------------------------------------
async def test_access_log_in_hypercorns_format(autojump_clock: trio.testing.MockClock, tmp_path: Any) -> None:
    path = tmp_path / "access.log"
    config = ServerConfig(bind=("8000",), access_log=str(path))
    async with two_stacks() as (a, b), running_server(hello_app, config, stack=a):
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        await client.request("GET", "/x?q=1", referer="http://r/", user_agent="test-agent/1")
        await client.request("HEAD", "/")
    lines = path.read_text().splitlines()
    pattern = (
        r'198\.18\.0\.1:\d+ - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /x 1\.1" 200 - '
        r'"http://r/" "test-agent/1"'
    )
    assert len(lines) == 2 and re.fullmatch(pattern, lines[0]), lines
    # %(b)s is the app's content-length header, absent here: "-" (hypercorn logs the same)
    assert re.fullmatch(r'.* "HEAD / 1\.1" 200 - "-" "-"', lines[1]), lines


def test_format_line_matches_hypercorn() -> None:
    """Our line against hypercorn's own AccessLogAtoms for the same request and response."""
    from hypercorn.logging import AccessLogAtoms

    scope: Any = {  # hypercorn's hint is its HTTPScope TypedDict; ours takes a plain dict
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/p",
        "query_string": b"a=1",
        "scheme": "http",
        "client": ("198.18.0.1", 5555),
        "headers": [(b"user-agent", b"ua"), (b"referer", b"ref")],
    }
    response: Any = {"status": 201, "headers": [(b"content-length", b"7")]}
    atoms = AccessLogAtoms(scope, response, 0.01)
    hypercorn_default = '%(h)s %(l)s %(l)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    expected = hypercorn_default % atoms  # hypercorn applies its format string this way
    ours = format_line(scope, 201, response["headers"])
    assert ours.split("]", 1)[1] == expected.split("]", 1)[1]


# -- the CLI and the hypercorn switch ----------------------------------------------------------------
def test_cli_maps_options_onto_server_config() -> None:
    from trio_yastack._cli import _serve_config, build_parser

    options = (
        "--bind 8080 --keep-alive 7 --graceful-timeout 2 --backlog 64 --max-request-body 1000 --access-log -"
    )
    args = build_parser().parse_args(["serve", "x:app", *options.split()])
    config = _serve_config(args)
    assert isinstance(config, ServerConfig)
    assert config.bind == ("8080",) and config.keep_alive_timeout == 7.0 and config.graceful_timeout == 2.0
    assert (config.backlog, config.max_request_body, config.access_log) == (64, 1000, "-")
    hyper = _serve_config(
        build_parser().parse_args(["serve", "x:app", "--server", "hypercorn", "--bind", "8080"])
    )
    assert isinstance(hyper, Config) and hyper.bind == ["8080"]


async def test_server_hypercorn_still_serves_with_hypercorn(autojump_clock: trio.testing.MockClock) -> None:
    # Any: running_server's hint names ServerConfig, serve_asgi takes hypercorn's Config as well
    config: Any = Config()
    config.bind = ["8000"]
    config.accesslog = config.errorlog = None
    async with two_stacks() as (a, b), running_server(hello_app, config, stack=a, server="hypercorn"):
        response = await RawClient(await b.tcp_connect(A_IP, 8000)).request()
        assert response.status == 200 and response.header("server") == "hypercorn-h11"
    config2: Any = Config()
    config2.bind = ["8001"]
    config2.accesslog = config2.errorlog = None
    async with two_stacks() as (a, b), running_server(hello_app, config2, stack=a, server="yastack"):
        response = await RawClient(await b.tcp_connect(A_IP, 8001)).request()
        assert response.status == 200 and response.header("server") is None  # ours


async def test_bad_input_never_takes_the_server_down(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded garbage, truncated heads, bytes after a reset: each connection gets its answer (or
    is closed) and the server still serves a good client afterwards."""
    rng = random.Random(16)
    nasty = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))) for _ in range(12)] + [
        b"GET / HTTP/1.1\r\nhost: t\r\ncontent-length: -1\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        b"GET " + b"/a" * 40_000 + b" HTTP/1.1\r\n\r\n",
        b"\r\n" * 1000,
    ]
    config = ServerConfig(bind=("8000",), request_head_timeout=2.0)
    async with two_stacks() as (a, b), running_server(echo_app, config, stack=a):
        for raw in nasty:
            client = RawClient(await b.tcp_connect(A_IP, 8000))
            await client.send(raw)
            await client.wait_closed()  # an answer then close, or a 408 after 2 s: bounded either way
        good = RawClient(await b.tcp_connect(A_IP, 8000))
        assert (await good.request("POST", "/", b"still here")).body == b"still here"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no bug met on the way


# -- the accept loop --------------------------------------------------------------------------------
async def test_scope_addresses_over_the_stack_come_from_accept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over the stack the peer's address is accept's (no getpeername per connection) and the
    listener's own address is every connection's server address."""
    async with two_stacks() as (a, b), running_server(scope_app, ServerConfig(bind=("8000",)), stack=a):
        stream = await b.tcp_connect(A_IP, 8000)
        local = stream.socket.getsockname()
        scope = (await RawClient(stream).request()).json()
        assert scope["client"] == [local[0], local[1]]
        assert scope["server"] == [A_IP, 8000]


def _tcp_segments(frames: list[tuple[float, bytes]], port: int) -> list[tuple[int, int]]:
    """``(flags, payload length)`` of each TCP segment from ``port`` in Ethernet+IPv4 ``frames``."""
    out = []
    for _, frame in frames:
        ip = frame[14:]
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800 or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4 : struct.unpack_from("!H", ip, 2)[0]]
        if struct.unpack_from("!H", tcp, 0)[0] == port:
            out.append((tcp[13], len(tcp) - (tcp[12] >> 4) * 4))
    return out


async def test_connection_close_response_carries_the_fin_over_the_stack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over the stack, a ``Connection: close`` response's last segment carries the FIN (as the
    last queued segment does on Linux): the server sends the SYN-ACK, the response with its
    FIN, and the ACK of the client's FIN, and nothing else.  Was: the response, then a FIN of
    its own after the write's scheduler pass let the response leave alone (and often an ACK of
    the client's FIN before it).  The client reads the whole response, then EOF."""
    sent: list[DropPort] = []

    def record(port: Any) -> DropPort:
        sent.append(DropPort(port, lambda frame: False, record=True))
        return sent[-1]

    async with (
        two_stacks(wrap_a=record) as (a, b),
        running_server(hello_app, ServerConfig(bind=("8000",)), stack=a),
    ):
        stream = await b.tcp_connect(A_IP, 8000)
        conn = stream.socket.connection  # type: ignore[attr-defined]  # a StackSocket
        client = RawClient(stream)
        with trio.fail_after(60):
            response = await client.request("GET", "/", connection="close")
            assert (response.status, response.body) == (200, b"Hello, world!")
            assert response.header("connection") == "close"
            assert await client.wait_closed() == b""
            await stream.aclose()
            while conn.state != TcpState.CLOSED:  # the server's ACK of our FIN ends it
                await trio.sleep(0.01)
        flags = [(flag & 0x3F, bool(length)) for flag, length in _tcp_segments(sent[0].sent, 8000)]
        if flags[1:2] == [(TCP_ACK, False)]:
            # The window update after the first read (262 144 bytes against the SYN-ACK's
            # 65 535) may leave before the response: a rule of its own, not the close's.
            del flags[1]
        assert flags == [
            (TCP_SYN | TCP_ACK, False),
            (TCP_PSH | TCP_ACK | TCP_FIN, True),  # the response and its FIN in one segment
            (TCP_ACK, False),  # the ACK of the client's FIN
        ], flags


async def _serve_bytes_at_hand(
    data: bytes, config: ServerConfig, *, shutdown_first: bool = False
) -> tuple[bytes, float, HttpConnection]:
    """An ``HttpConnection`` over the stack whose client's ``data`` is already in its socket when
    it starts (as a kernel listener's deferred accept, or a request that came with the
    handshake's ACK): what the client read until EOF, when EOF came, and the connection."""
    async with two_stacks() as (a, b):
        client, server = await socket_pair(b, a, 8000)  # server: A's accepted socket
        stream = trio.SocketStream(client)
        await stream.send_all(data)
        with trio.fail_after(120):
            while not server.is_readable():
                await trio.testing.wait_all_tasks_blocked()
            connection = HttpConnection(trio.SocketStream(server), hello_app, config)
            if shutdown_first:
                connection.shutdown()
            begin = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run)
                received = await RawClient(stream).wait_closed()
                closed_after = trio.current_time() - begin
        await stream.aclose()
    return received, closed_after, connection


def _entered(scope: trio.CancelScope) -> bool:
    """Whether ``scope`` was ever entered (a scope serves one ``with`` block only)."""
    try:
        with scope:
            pass
    except RuntimeError:
        return True
    return False


async def test_close_request_at_hand_is_served_without_the_cancel_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``Connection: close`` request already there when the connection starts is answered,
    then EOF, without the connection's cancel scope (whose entry and exit cost more than the
    rest of trio's share of such a connection); a keep-alive one is served under it, and its
    keep-alive timeout then closes the connection."""
    config = ServerConfig(keep_alive_timeout=3.0)
    received, _, connection = await _serve_bytes_at_hand(build_request(connection="close"), config)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nHello, world!")
    assert b"connection: close\r\n" in received
    assert not _entered(connection._cancel)
    received, closed_after, connection = await _serve_bytes_at_hand(build_request(), config)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"Hello, world!")
    assert b"connection: close" not in received
    assert 3.0 <= closed_after < 4.0  # the keep-alive timeout, under the scope
    assert _entered(connection._cancel)


async def test_close_request_at_hand_on_a_kernel_socket() -> None:
    """The same on a kernel socket (a connected pair): the request already in the socket is
    answered without the connection's cancel scope, then EOF; the socket is closed."""
    a, b = trio.socket.socketpair()
    client, server = trio.SocketStream(a), trio.SocketStream(b)
    await client.send_all(build_request(connection="close"))
    connection = HttpConnection(server, hello_app, ServerConfig())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            received = await RawClient(client).wait_closed()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"Hello, world!")
    assert not _entered(connection._cancel)
    assert b.fileno() == -1
    await client.aclose()


async def test_part_of_a_head_at_hand_keeps_its_head_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """A first read at hand that ends inside a request head: the head timeout runs from it
    (408, then close), not the keep-alive timeout."""
    config = ServerConfig(request_head_timeout=7.0, keep_alive_timeout=2.0)
    received, closed_after, _ = await _serve_bytes_at_hand(b"GET / HTTP/1.1\r\nhost: x\r\n", config)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert 7.0 <= closed_after < 8.0


async def test_a_connection_shut_down_before_it_starts_serves_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Graceful shutdown asked before the connection's task ran: closed without an answer, even
    with a whole request at hand (as before the at-hand path)."""
    received, closed_after, _ = await _serve_bytes_at_hand(
        build_request(connection="close"), ServerConfig(), shutdown_first=True
    )
    assert received == b""
    assert closed_after < 1.0


async def test_stack_listener_drains_its_queue_in_batches(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Over the stack the accept loop takes connections with ``accept_nowait`` (ACCEPT_BATCH at a
    time, 2 here, so a full batch's turn is taken too) and waits with ``wait_acceptable``, never
    with ``accept`` (a scheduler pass per connection); every client is served, its address from
    the accept."""
    monkeypatch.setattr(_server, "ACCEPT_BATCH", 2)
    taken: list[tuple[str, int]] = []
    accept_nowait = StackSocket.accept_nowait

    def counted(self: StackSocket) -> tuple[StackSocket, tuple[str, int]]:
        conn, address = accept_nowait(self)
        taken.append(address)
        return conn, address

    async def no_accept(self: StackSocket) -> Any:
        raise AssertionError("the stack's listener is drained with accept_nowait")

    monkeypatch.setattr(StackSocket, "accept_nowait", counted)
    monkeypatch.setattr(StackSocket, "accept", no_accept)
    async with two_stacks() as (a, b), running_server(scope_app, ServerConfig(bind=("8000",)), stack=a):
        clients: list[RawClient] = []

        async def connect(index: int) -> None:
            stream = await b.tcp_connect(A_IP, 8000)
            await stream.send_all(build_request("GET", f"/{index}", connection="close"))
            clients.append(RawClient(stream))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:  # handshakes together: several queue at once
                for index in range(5):
                    nursery.start_soon(connect, index)
            locals_: list[tuple[str, int]] = []
            for client in clients:
                scope = (await client.response()).json()
                local = client.stream.socket.getsockname()  # type: ignore[attr-defined]  # a SocketStream
                locals_.append(local)
                assert scope["client"] == [local[0], local[1]]
                assert scope["server"] == [A_IP, 8000]
                assert await client.wait_closed() == b""
                await client.stream.aclose()
        assert sorted(taken) == sorted(locals_)


async def test_connection_tasks_are_reused_each_with_a_fresh_context(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """A connection's task, once its connection ended, serves the next one (``_Workers``: no
    spawn per connection), under a fresh copy of the accept loop's context as a spawned task
    would be: a context variable the app set for one connection is not seen by the next.  At
    most IDLE_WORKERS tasks stay parked (here 1: of two connections served at once, one task
    ends), and shutdown ends the parked ones at once, not after the graceful timeout."""
    monkeypatch.setattr(_server, "IDLE_WORKERS", 1)
    seen = contextvars.ContextVar("seen", default="unset")
    tasks: list[trio.lowlevel.Task] = []
    olds: list[str] = []
    hold = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        tasks.append(trio.lowlevel.current_task())
        olds.append(seen.get())
        seen.set(scope["path"])
        if scope["path"] == "/held":
            await hold.wait()
        await hello_app(scope, receive, send)

    async def one(b: Any, path: str) -> None:
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        await client.send(build_request("GET", path, connection="close"))
        assert (await client.response()).status == 200
        assert await client.wait_closed() == b""
        await client.stream.aclose()

    config = ServerConfig(bind=("8000",), graceful_timeout=30.0)
    async with two_stacks() as (a, b):
        with trio.fail_after(60):
            async with running_server(app, config, stack=a):
                for index in range(3):
                    await one(b, f"/{index}")
                    await trio.testing.wait_all_tasks_blocked()  # its task parked
                assert tasks[0] is tasks[1] is tasks[2]  # one task, reused
                async with trio.open_nursery() as nursery:  # two at once: a second task
                    nursery.start_soon(one, b, "/held")
                    await trio.testing.wait_all_tasks_blocked()
                    await one(b, "/3")
                    hold.set()
                assert tasks[3] is not tasks[4]
                await trio.testing.wait_all_tasks_blocked()
                stopping_at = trio.current_time()
            assert trio.current_time() - stopping_at < config.graceful_timeout  # none waited for
    assert olds == ["unset"] * 5


async def test_stack_stream_is_the_stream_trio_makes(autojump_clock: trio.testing.MockClock) -> None:
    """The accept loop's lean stream for the stack's sockets (``_stack_stream``) is what
    ``trio.SocketStream(sock)`` makes: the same type and attributes, the same options on the
    socket (TCP_NODELAY on, TCP_NOTSENT_LOWAT 16 KiB) and on its connection (Nagle off)."""
    async with two_stacks() as (a, b):
        made: list[tuple[trio.SocketStream, StackSocket]] = []
        for wrap in (trio.SocketStream, _server._stack_stream):
            _, sock = await socket_pair(a, b, 9000 + len(made))
            assert isinstance(sock, StackSocket)
            assert sock.connection is not None and not sock.connection.nodelay  # the stack's default
            made.append((wrap(sock), sock))
        (plain, plain_sock), (lean, lean_sock) = made
        assert type(lean) is type(plain) is trio.SocketStream
        assert vars(lean).keys() == vars(plain).keys() and lean.socket is lean_sock
        assert type(lean._send_conflict_detector) is type(plain._send_conflict_detector)
        assert lean_sock._options == plain_sock._options
        for option in (socket.TCP_NODELAY, socket.TCP_NOTSENT_LOWAT):
            assert lean.getsockopt(socket.IPPROTO_TCP, option) == plain.getsockopt(socket.IPPROTO_TCP, option)
        assert lean_sock.connection is not None and plain_sock.connection is not None
        assert lean_sock.connection.nodelay and plain_sock.connection.nodelay
        await lean.send_all(b"x")  # and it works as a stream
        await plain.aclose()
        await lean.aclose()


async def test_kernel_listener_drains_its_queue_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """On kernel sockets (loopback) connections queued before the server's accept loop runs are all
    taken, ACCEPT_BATCH at a time (2 here, so the full-batch turn is taken too), and each scope
    carries the client's address from accept and the listener's as the server's."""
    monkeypatch.setattr(_server, "ACCEPT_BATCH", 2)
    with trio.fail_after(20):
        async with running_server(scope_app, ServerConfig(bind=("127.0.0.1:0",)), kernel=True) as urls:
            port = int(urls[0].rsplit(":", 1)[1])
            clients = []
            for index in range(5):  # connected and sent in a row: several wait in the queue
                sock = trio.socket.socket()
                await sock.connect(("127.0.0.1", port))
                stream = trio.SocketStream(sock)
                await stream.send_all(build_request("GET", f"/{index}", connection="close"))
                clients.append(RawClient(stream))
            for index, client in enumerate(clients):
                scope = (await client.response()).json()
                local = client.stream.socket.getsockname()  # type: ignore[attr-defined]  # a SocketStream
                assert scope["path"] == f"/{index}"
                assert scope["client"] == [local[0], local[1]]
                assert scope["server"] == ["127.0.0.1", port]
                assert await client.wait_closed() == b""  # Connection: close honoured
                await client.stream.aclose()


async def test_kernel_listener_defers_accept_but_serves_a_slow_client() -> None:
    """The kernel listener asks for TCP_DEFER_ACCEPT (the first read never waits); a client that
    stays silent for a while is still accepted and served, and one that says nothing is closed
    by the head timeout once the kernel hands it over (DEFER_ACCEPT_SECONDS later)."""
    config = ServerConfig(bind=("127.0.0.1:0",), request_head_timeout=0.5)
    with trio.fail_after(20):
        async with running_server(hello_app, config, kernel=True) as urls:
            port = int(urls[0].rsplit(":", 1)[1])
            slow = trio.SocketStream(trio.socket.socket())
            await slow.socket.connect(("127.0.0.1", port))
            silent = trio.SocketStream(trio.socket.socket())
            await silent.socket.connect(("127.0.0.1", port))
            start = trio.current_time()
            await trio.sleep(0.2)  # (the slow client's pause: it is what is tested, not a wait for it)
            client = RawClient(slow)
            assert (await client.request()).status == 200
            assert await RawClient(silent).wait_closed() == b""  # no request, no 408: closed
            waited = trio.current_time() - start
            head = config.request_head_timeout
            # held by the kernel for DEFER_ACCEPT_SECONDS (one SYN-ACK retransmission), then the head timeout
            assert 0.9 * _server.DEFER_ACCEPT_SECONDS + head <= waited
            assert waited <= _server.DEFER_ACCEPT_SECONDS + head + SWEEP_INTERVAL + 3.0
            await slow.aclose()
            await silent.aclose()


def test_fixed_server_address_only_for_a_listener_on_one_address() -> None:
    class Bound:
        def __init__(self, address: Any) -> None:
            self.address = address

        def getsockname(self) -> Any:
            return self.address

    assert _server._fixed_server_address(Bound(("198.18.0.2", 8000))) == ("198.18.0.2", 8000)  # type: ignore[arg-type]  # a fake socket
    for wildcard in (("0.0.0.0", 8000), ("::", 8000, 0, 0)):
        assert _server._fixed_server_address(Bound(wildcard)) is _server._ASK  # type: ignore[arg-type]  # a fake socket


async def test_accept_out_of_descriptors_is_logged_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """As trio.serve_listeners does: EMFILE from accept is logged, waited out, and accepting goes on."""
    server_end, client_end = trio.testing.memory_stream_pair()

    class Flaky(trio.abc.Listener[trio.abc.Stream]):
        def __init__(self) -> None:
            self.calls = 0

        async def accept(self) -> trio.abc.Stream:
            self.calls += 1
            await trio.lowlevel.checkpoint()
            if self.calls == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            if self.calls == 2:
                return server_end
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()

    listener = Flaky()
    async with running_server(hello_app, listeners=[listener]):
        start = trio.current_time()
        client = RawClient(client_end)
        assert (await client.request()).status == 200
        assert trio.current_time() - start >= _server.ACCEPT_RETRY_SECONDS
        assert listener.calls == 3
        assert any("accept returned EMFILE" in record.getMessage() for record in caplog.records)


async def test_kernel_socket_large_response_and_upload_intact() -> None:
    """On kernel sockets the connection writes and reads the stdlib socket itself: a response far
    larger than the socket buffers (written in parts as the client drains them) and an upload
    read over many reads arrive whole, on one keep-alive connection."""
    size = 24 * 1024 * 1024
    blob = random.Random(16).randbytes(size)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            got = bytearray()
            while True:
                message = await receive()
                got += message.get("body", b"")
                if not message.get("more_body"):
                    break
            body = b"%d %d" % (len(got), bytes(got) == blob)
        else:
            body = blob
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with trio.fail_after(60):
        async with running_server(app, ServerConfig(bind=("127.0.0.1:0",)), kernel=True) as urls:
            port = int(urls[0].rsplit(":", 1)[1])
            client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
            response = await client.request()
            assert response.status == 200 and response.body == blob
            response = await client.request("POST", "/", blob)
            assert response.body == b"%d 1" % size
            await client.stream.aclose()


async def test_kernel_connections_one_after_another_reuse_descriptors() -> None:
    """A kernel connection is closed without trio's notify_closing when no other task can wait on
    it; the next connection (very likely the same descriptor number) must still be waited on
    properly: each connection here waits for its request's second half and for EOF."""
    with trio.fail_after(30):
        async with running_server(hello_app, ServerConfig(bind=("127.0.0.1:0",)), kernel=True) as urls:
            port = int(urls[0].rsplit(":", 1)[1])
            for _ in range(4):
                client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
                request = build_request()
                await client.send(request[:5])
                await trio.sleep(0.05)  # the server's first read has the head's start only: it waits
                await client.send(request[5:])
                assert (await client.response()).status == 200
                await trio.sleep(0.05)  # the server now waits for the next request (registered)
                await client.stream.aclose()
