"""HTTP/2 in the lean ASGI server (``trio_yastack.l7.asgi._h2.serve_h2``: hypercorn's HTTP/2 protocol
driven over any trio stream), met by the ``h2`` package as a client over trio memory streams and over
two stacks on a ``memory_wire``, under ``MockClock(autojump_threshold=0)``.

The server side does what the HTTP/1.1 connection does when the first bytes are the h2c preface: hand
the stream over with those bytes (``leftover``, or put back in front with ``PrefixedStream``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing
from socket_helpers import make_tls_material, socket_pair, stream_pair, two_stacks
from tap_helpers import KERNEL_ADDRESS, STACK_ADDRESS, NamespaceProgram, requires_netns

from trio_yastack.l7.asgi import AccessLogger, HttpConnection, ServerConfig
from trio_yastack.l7.asgi._h2 import H2C_PREFACE, serve_h2
from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.tls.client_hello import PrefixedStream

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]

DEFAULTS = ServerConfig()
#: simulated seconds a test may take before it counts as hung (free under the autojump clock)
BOUND = 60.0


class AccessLog(AccessLogger):
    """The server's access log, written to memory; :attr:`lines` as (request, status, length)."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        super().__init__(self.buffer)

    @property
    def lines(self) -> list[tuple[str, str, str]]:
        self.flush()
        return re.findall(r'"([A-Z]+ .* \S+)" (\S+) (\S+) ', self.buffer.getvalue())


# -- the app ------------------------------------------------------------------------------------
async def app(scope: Message, receive: Receive, send: Send) -> None:
    """``/echo`` answers with the request body; ``/state`` with the lifespan state it sees;
    ``/boom`` raises; ``/wait`` waits for the state's ``release`` event; anything else says which
    method, path, HTTP version and scheme it saw."""
    assert scope["type"] == "http"
    if scope["path"] == "/boom":
        raise ValueError("broken app")
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    if scope["path"] == "/echo":
        reply = body
    elif scope["path"] == "/wait":
        await scope["state"]["release"].wait()
        reply = b"released"
    elif scope["path"] == "/state":
        scope["state"]["touched"] = True  # a copy per request: the next one must not see this
        reply = repr(sorted(scope["state"].items())).encode()
    else:
        reply = f"{scope['method']} {scope['path']} {scope['http_version']} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": reply})


# -- the client: the h2 package over a trio stream ----------------------------------------------
@dataclass
class Reply:
    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    reset: bool = False


class Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.replies: dict[int, Reply] = {}
        self.bodies: dict[int, bytes] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.eof = False

    async def start(self) -> None:
        self.conn.initiate_connection()  # starts with the preface: prior knowledge
        await self.flush()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def request(self, method: str, path: str, body: bytes = b"") -> int:
        """Open a stream; its body goes out with :meth:`send_bodies` (flow control permitting)."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "test")]
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        self.replies[stream_id] = Reply()
        if body:
            self.bodies[stream_id] = body
        return stream_id

    async def send_bodies(self) -> None:
        """Send every pending request body in frames the windows allow, reading the server's
        window updates (and replies) in between."""
        with trio.fail_after(BOUND):
            while True:
                for stream_id, body in list(self.bodies.items()):
                    window = min(
                        self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
                    )
                    while body and window > 0:
                        piece, body = body[:window], body[window:]
                        self.conn.send_data(stream_id, piece, end_stream=not body)
                        window = min(
                            self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
                        )
                    if body:
                        self.bodies[stream_id] = body
                    else:
                        del self.bodies[stream_id]
                await self.flush()
                if not self.bodies:
                    return
                await self.pump()

    async def pump(self) -> None:
        """Read once; apply what arrived."""
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                reply = self.replies[event.stream_id]
                reply.headers = dict(event.headers)
                reply.status = int(reply.headers[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.replies[event.stream_id].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.replies[event.stream_id].ended = True
            elif isinstance(event, h2.events.StreamReset):
                self.replies[event.stream_id].reset = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
        await self.flush()

    async def wait_for(self, *stream_ids: int) -> list[Reply]:
        with trio.fail_after(BOUND):
            while not all(self.replies[i].ended or self.replies[i].reset for i in stream_ids):
                await self.pump()
                assert not self.eof, "the server closed before answering"
        return [self.replies[i] for i in stream_ids]

    async def read_to_eof(self) -> None:
        with trio.fail_after(BOUND):
            while not self.eof:
                await self.pump()


async def serve_after_preface(
    stream: trio.abc.Stream,
    *,
    state: dict[str, Any] | None = None,
    access_log: AccessLog | None = None,
    shutdown: trio.Event | None = None,
    prefixed: bool = False,
    config: ServerConfig = DEFAULTS,
) -> None:
    """What the HTTP/1.1 side does: read the first bytes, see the h2c preface, hand over."""
    first = bytes(await stream.receive_some(65536))
    assert first.startswith(H2C_PREFACE)
    kwargs: dict[str, Any] = dict(
        scheme="http",
        client=("198.18.0.2", 50000),
        server=("198.18.0.1", 8000),
        state=state,
        access_log=access_log,
        shutdown=shutdown,
    )
    if prefixed:
        await serve_h2(PrefixedStream(first, stream), app, config, **kwargs)
    else:
        await serve_h2(stream, app, config, leftover=first, **kwargs)


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefixed", [False, True])
async def test_get_and_post(autojump_clock: trio.testing.MockClock, prefixed: bool) -> None:
    log = AccessLog()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial_serve(server_stream, access_log=log, prefixed=prefixed))
        client = Client(client_stream)
        await client.start()
        get = client.request("GET", "/hello%20there?x=1")
        await client.flush()
        (reply,) = await client.wait_for(get)
        assert reply.status == 200
        assert reply.body == b"GET /hello there 2 http"
        assert b"server" not in reply.headers  # server_header=False, as the HTTP/1.1 side
        assert b"date" in reply.headers
        body = bytes(range(256)) * 400  # over one frame (16 KiB) and the first window's worth
        post = client.request("POST", "/echo", body)
        await client.send_bodies()
        (reply,) = await client.wait_for(post)
        assert (reply.status, reply.body) == (200, body)
        client.conn.close_connection()
        await client.flush()
        await client_stream.aclose()
    assert log.lines == [("GET /hello there 2", "200", "-"), ("POST /echo 2", "200", "-")]


def partial_serve(stream: trio.abc.Stream, **kwargs: Any) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await serve_after_preface(stream, **kwargs)

    return run


async def test_server_header_when_asked(autojump_clock: trio.testing.MockClock) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial_serve(server_stream, config=ServerConfig(server_header=True)))
        client = Client(client_stream)
        await client.start()
        get = client.request("GET", "/")
        await client.flush()
        (reply,) = await client.wait_for(get)
        assert reply.headers[b"server"] == b"trio_yastack"  # as HTTP/1.1 says it, not hypercorn-h2
        client.conn.close_connection()
        await client.flush()
        await client_stream.aclose()


async def test_several_streams_at_once(autojump_clock: trio.testing.MockClock) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial_serve(server_stream))
        client = Client(client_stream)
        await client.start()
        bodies = {client.request("POST", "/echo", f"body {i}".encode() * 1000): i for i in range(20)}
        await client.send_bodies()
        replies = await client.wait_for(*bodies)
        for reply, i in zip(replies, bodies.values(), strict=True):
            assert (reply.status, reply.body) == (200, f"body {i}".encode() * 1000)
        client.conn.close_connection()
        await client.flush()
        await client_stream.aclose()


async def test_app_raising_is_500_and_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log = AccessLog()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    with caplog.at_level(logging.ERROR, logger="trio_yastack.l7.asgi"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial_serve(server_stream, access_log=log))
            client = Client(client_stream)
            await client.start()
            boom = client.request("GET", "/boom")
            fine = client.request("GET", "/fine")
            await client.flush()
            boom_reply, fine_reply = await client.wait_for(boom, fine)
            assert boom_reply.status == 500
            assert (fine_reply.status, fine_reply.body) == (200, b"GET /fine 2 http")
            client.conn.close_connection()
            await client.flush()
            await client_stream.aclose()
    assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records)
    assert ("GET /boom 2", "500", "-") in log.lines


async def test_lifespan_state_is_copied_into_each_request(autojump_clock: trio.testing.MockClock) -> None:
    state = {"db": "ready"}
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial_serve(server_stream, state=state))
        client = Client(client_stream)
        await client.start()
        first = client.request("GET", "/state")
        await client.flush()
        await client.wait_for(first)
        second = client.request("GET", "/state")
        await client.flush()
        (reply,) = await client.wait_for(second)
        assert reply.body == repr([("db", "ready"), ("touched", True)]).encode()
        client.conn.close_connection()
        await client.flush()
        await client_stream.aclose()
    assert state == {"db": "ready"}  # the app touched copies only


async def test_idle_connection_closes_after_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial_serve(server_stream, config=ServerConfig(keep_alive_timeout=7.0)))
        client = Client(client_stream)
        await client.start()
        get = client.request("GET", "/")
        await client.flush()
        (reply,) = await client.wait_for(get)
        assert reply.status == 200
        idle_since = trio.current_time()
        await client.read_to_eof()
        assert trio.current_time() - idle_since == pytest.approx(7.0)


async def test_shutdown_finishes_streams_then_goes_away(autojump_clock: trio.testing.MockClock) -> None:
    shutdown = trio.Event()
    release = trio.Event()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial_serve(server_stream, shutdown=shutdown, state={"release": release}))
        client = Client(client_stream)
        await client.start()
        slow = client.request("GET", "/wait")
        await client.flush()
        await trio.testing.wait_all_tasks_blocked()
        shutdown.set()
        late = client.request("POST", "/late", b"refused body")  # after shutdown: refused, with its body
        await client.send_bodies()
        (late_reply,) = await client.wait_for(late)
        assert late_reply.reset and late_reply.status is None
        release.set()  # the stream in flight still finishes...
        (reply,) = await client.wait_for(slow)
        assert (reply.status, reply.body) == (200, b"released")
        await client.read_to_eof()  # ...then the server says GOAWAY and closes
        assert client.terminated is not None


async def test_shutdown_closes_an_idle_connection_at_once(autojump_clock: trio.testing.MockClock) -> None:
    shutdown = trio.Event()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial_serve(server_stream, shutdown=shutdown))
        client = Client(client_stream)
        await client.start()
        get = client.request("GET", "/")
        await client.flush()
        await client.wait_for(get)
        start = trio.current_time()
        shutdown.set()
        await client.read_to_eof()
        assert trio.current_time() == start


async def test_over_two_stacks(autojump_clock: trio.testing.MockClock) -> None:
    blob = hashlib.sha256(b"h2").digest() * (300_000 // 32)
    async with two_stacks() as (a, b):
        client_stream, server_stream = await stream_pair(a, b, 8000)
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial_serve(server_stream))
                client = Client(client_stream)
                await client.start()
                ids = [client.request("POST", "/echo", blob) for _ in range(3)]
                await client.send_bodies()
                for reply in await client.wait_for(*ids):
                    assert reply.status == 200
                    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(blob).digest()
                client.conn.close_connection()
                await client.flush()
                await client_stream.aclose()


async def test_prior_knowledge_through_the_http11_connection(autojump_clock: trio.testing.MockClock) -> None:
    """``HttpConnection`` sees the h2c preface on its first read and hands over: HTTP/2 serves the
    same app with the connection's lifespan state, into the same access log."""
    log = AccessLog()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    connection = HttpConnection(server_stream, app, DEFAULTS, state={"db": "ready"}, access_log=log)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            client = Client(client_stream)
            await client.start()
            get, state = client.request("GET", "/"), client.request("GET", "/state")
            await client.flush()
            get_reply, state_reply = await client.wait_for(get, state)
            assert get_reply.body == b"GET / 2 http"
            assert state_reply.body == repr([("db", "ready"), ("touched", True)]).encode()
            client.conn.close_connection()
            await client.flush()
            await client_stream.aclose()
    assert sorted(log.lines) == [("GET / 2", "200", "-"), ("GET /state 2", "200", "-")]


async def test_prior_knowledge_at_hand_over_the_stack(autojump_clock: trio.testing.MockClock) -> None:
    """Over the stack, the h2c preface already in the socket when ``HttpConnection`` starts (read
    without waiting, kept for the first read): handed over to HTTP/2 all the same."""
    async with two_stacks() as (a, b):
        client_sock, server_sock = await socket_pair(b, a, 8000)
        client = Client(trio.SocketStream(client_sock))
        await client.start()
        get = client.request("GET", "/")
        await client.flush()
        with trio.fail_after(BOUND):
            while not server_sock.is_readable():
                await trio.testing.wait_all_tasks_blocked()
            connection = HttpConnection(trio.SocketStream(server_sock), app, DEFAULTS)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run)
                (reply,) = await client.wait_for(get)
                assert reply.body == b"GET / 2 http"
                client.conn.close_connection()
                await client.flush()
                await client.stream.aclose()


# -- yastack serve in a network namespace, kernel-side clients ------------------------------------
NETNS_APP = '''
"""Lifespan puts a value in the state; HTTP answers with what a request saw; /ws echoes."""
import json


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                scope["state"]["boot"] = "ok"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][0]})
        while (event := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": event.get("text"), "bytes": event.get("bytes")})
        return
    body = json.dumps({"http_version": scope["http_version"], "boot": scope["state"].get("boot")}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
'''

WEBSOCKETS_CLIENT = """
import json, sys
from websockets.sync.client import connect

with connect(sys.argv[1], subprotocols=["chat.v1"]) as ws:
    ws.send("hello " * 10000)
    text = ws.recv()
    ws.send(bytes(range(256)) * 100)
    blob = ws.recv()
    print(json.dumps({
        "subprotocol": ws.subprotocol,
        "text_ok": text == "hello " * 10000,
        "bytes_ok": blob == bytes(range(256)) * 100,
        "deflate": "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or ""),
    }))
"""


@requires_netns
@pytest.mark.netns
def test_yastack_serve_h2c_and_websockets_from_the_kernel(tmp_path: Path) -> None:
    """``yastack serve`` (our server, the default) over the stack: curl with HTTP/2 prior knowledge
    and h2load get the app's answers with the lifespan state, the ``websockets`` library's client
    negotiates a subprotocol and permessage-deflate and gets its messages back, and every HTTP/2
    request is in the access log."""
    (tmp_path / "netns_app.py").write_text(NETNS_APP)
    (tmp_path / "ws_client.py").write_text(WEBSOCKETS_CLIENT)
    access_log = tmp_path / "access.log"
    url = f"http://{STACK_ADDRESS}:8000"
    with NetworkNamespace() as namespace:
        server = NamespaceProgram(
            namespace,
            [
                sys.executable,
                "-m",
                "trio_yastack",
                "serve",
                f"{tmp_path / 'netns_app.py'}:app",
                "--bind",
                "8000",
                "--access-log",
                str(access_log),
                "--log-level",
                "warning",
            ],
        )
        server.wait_for_line("# try:")
        curl = namespace.run(
            ["curl", "-sS", "--max-time", "30", "--http2-prior-knowledge", f"{url}/"], timeout=60
        )
        assert curl.returncode == 0, curl.stderr
        assert json.loads(curl.stdout) == {"http_version": "2", "boot": "ok"}

        h2load = namespace.run(["h2load", "-c4", "-m4", "-n200", f"{url}/"], timeout=60)
        assert h2load.returncode == 0, h2load.stdout + h2load.stderr
        assert "Application protocol: h2c" in h2load.stdout
        assert "200 succeeded, 0 failed, 0 errored" in h2load.stdout, h2load.stdout
        assert "status codes: 200 2xx" in h2load.stdout, h2load.stdout

        ws = namespace.run(
            [sys.executable, str(tmp_path / "ws_client.py"), f"ws://{STACK_ADDRESS}:8000/ws"], timeout=60
        )
        assert ws.returncode == 0, ws.stdout + ws.stderr
        assert json.loads(ws.stdout.strip().splitlines()[-1]) == {
            "subprotocol": "chat.v1",
            "text_ok": True,
            "bytes_ok": True,
            "deflate": True,
        }

        server.send_signal(signal.SIGTERM, b"yastack")
        assert server.wait(timeout=30) == 0, server.output
        assert "Traceback" not in server.output, server.output
    lines = access_log.read_text().splitlines()
    assert sum('"GET / 2" 200 ' in line for line in lines) == 201, lines[:5]
    assert sum('"GET /ws 1.1" 101 ' in line for line in lines) == 1, lines
    assert all(line.startswith(f"{KERNEL_ADDRESS}:") for line in lines), lines[:5]


async def test_h2_negotiated_by_alpn_over_tls(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """What the server does with a TLS connection whose client chose ``h2``: the stream after the
    handshake goes to ``serve_h2`` as it is (no bytes read yet), and the scope says https."""
    ca_pem, cert_pem, key_pem = make_tls_material(["test"], [])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    client_context = ssl.create_default_context(cadata=ca_pem.decode())
    client_context.set_alpn_protocols(["h2"])
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server_tls = trio.SSLStream(server_raw, server_context, server_side=True)
    client_tls = trio.SSLStream(client_raw, client_context, server_hostname="test")

    async def serve() -> None:
        await server_tls.do_handshake()
        assert server_tls.selected_alpn_protocol() == "h2"
        await serve_h2(server_tls, app, DEFAULTS, scheme="https", client=None, server=None, state={})

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client_tls.do_handshake()
            client = Client(client_tls)
            await client.start()
            get = client.request("GET", "/secure")
            await client.flush()
            (reply,) = await client.wait_for(get)
            assert (reply.status, reply.body) == (200, b"GET /secure 2 https")
            client.conn.close_connection()
            await client.flush()
            await client.read_to_eof()


async def test_body_after_an_early_answer_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """Was a bug (fixed): an app that answers at once without reading the body (``/early``), then
    body DATA for its finished stream: hypercorn's protocol died of a KeyError, killing the
    connection and the task serving it.  Now the data is dropped, the client is told to stop with
    RST_STREAM(NO_ERROR), and the connection serves the next request."""

    async def early(scope: Message, receive: Receive, send: Send) -> None:
        if scope["path"] == "/early":
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"who are you?"})
            return
        await app(scope, receive, send)

    client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                first = bytes(await server_stream.receive_some(65536))
                await serve_h2(
                    server_stream,
                    early,
                    DEFAULTS,
                    scheme="http",
                    client=None,
                    server=None,
                    state={},
                    leftover=first,
                )

            nursery.start_soon(serve)
            client = Client(client_stream)
            await client.start()
            upload = client.request("POST", "/early", b"x")  # headers only so far: body is pending
            client.bodies.clear()
            await client.flush()
            (reply,) = await client.wait_for(upload)
            assert (reply.status, reply.body) == (401, b"who are you?")
            client.conn.send_data(upload, b"late body" * 1000)  # more to come: the server stops it
            await client.flush()
            while not client.replies[upload].reset:
                await client.pump()
                assert not client.eof, "the server closed the connection"
            get = client.request("GET", "/next")
            await client.flush()
            (reply,) = await client.wait_for(get)
            assert (reply.status, reply.body) == (200, b"GET /next 2 http")
            client.conn.close_connection()
            await client.flush()
            await client_stream.aclose()


async def test_a_protocol_bug_ends_only_its_connection(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside hypercorn's protocol (here planted) is logged and closes that connection;
    ``serve_h2`` returns instead of raising into the server's accept loop."""
    from trio_yastack.l7.asgi import _h2

    async def broken(self: Any, events: list[Any]) -> None:
        raise RuntimeError("planted protocol bug")

    monkeypatch.setattr(_h2._H2Protocol, "_handle_events", broken)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    with caplog.at_level(logging.ERROR, logger="trio_yastack.asgi"), trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial_serve(server_stream))
            client = Client(client_stream)
            await client.start()
            await client.read_to_eof()
    (record,) = caplog.records
    assert record.exc_info is not None and "planted protocol bug" in repr(record.exc_info[1])
