"""The lean ASGI server's WebSocket (``trio_yastack.l7.asgi._websocket.serve_websocket``) against real
clients: the ``websockets`` package's sans-IO client protocol, and raw frames where a test needs a
frame no well-behaved client sends.  Over trio memory streams (lockstep ones where backpressure is
the point) and over two stacks on a ``memory_wire``, all under ``MockClock(autojump_threshold=0)``.

The server side of each test does what the HTTP/1.1 connection does on ``Upgrade: websocket``: read
the request head, build the HTTP scope, hand over with the bytes that followed the head.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import pytest
import trio
import trio.testing
from fastapi import FastAPI, WebSocket
from socket_helpers import stream_pair, two_stacks
from starlette.responses import PlainTextResponse
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from trio_yastack.l7.asgi import AccessLogger, ClientDisconnected, HttpConnection, ServerConfig
from trio_yastack.l7.asgi._websocket import MAX_QUEUED, serve_websocket

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULTS = ServerConfig()
#: simulated seconds a test may take before it counts as hung (free under the autojump clock)
BOUND = 60.0


class AccessLog(AccessLogger):
    """The server's access log, written to memory; :attr:`lines` as (request, status) pairs."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        super().__init__(self.buffer)

    @property
    def lines(self) -> list[tuple[str, str]]:
        self.flush()
        return re.findall(r'"([A-Z]+ .* \S+)" (\S+) ', self.buffer.getvalue())


# -- the server side: what _http11 does on an upgrade ---------------------------------------------
async def serve_upgrade(
    stream: trio.abc.Stream,
    app: Callable[[Message, Receive, Send], Awaitable[None]],
    config: ServerConfig = DEFAULTS,
    access_log: AccessLog | None = None,
    shutdown: trio.Event | None = None,
) -> None:
    buffered = b""
    while b"\r\n\r\n" not in buffered:
        chunk = await stream.receive_some(65536)
        assert chunk, "the client left before its request head was complete"
        buffered += chunk
    head, _, leftover = buffered.partition(b"\r\n\r\n")
    request_line, *header_lines = head.split(b"\r\n")
    method, target, _ = request_line.split(b" ")
    headers = []
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method.decode(),
        "scheme": "http",
        "path": unquote(raw_path.decode()),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("198.18.0.2", 50000),
        "server": ("198.18.0.1", 8000),
        "state": {"from": "lifespan"},
        "extensions": {},
    }
    await serve_websocket(stream, scope, app, headers, target, leftover, config, access_log, shutdown)
    await stream.aclose()


# -- the client side: websockets' sans-IO protocol over a trio stream -----------------------------
class Client:
    """``websockets.client.ClientProtocol`` driven over a trio stream (it answers pings and the
    server's close by itself, as the websockets library does)."""

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.events: list[Any] = []

    async def flush(self) -> None:
        """Write what the protocol has to send; a server that closed after failing the connection
        (1002, 1009: no wait for our answer) makes the write fail, which a client shrugs off."""
        try:
            for data in self.protocol.data_to_send():
                if data:
                    await self.stream.send_all(data)
                elif isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handshake(self, path: str = "/chat?room=1", **request_headers: str) -> Response:
        request = self.protocol.connect()
        for name, value in request_headers.items():
            request.headers[name.replace("_", "-")] = value
        request.path = path
        self.protocol.send_request(request)
        await self.flush()
        response = await self.next_event()
        assert isinstance(response, Response)
        return response

    async def next_event(self) -> Any:
        while not self.events:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self.events.extend(self.protocol.events_received())
            await self.flush()
            if not data and not self.events:
                raise EOFError
        return self.events.pop(0)

    async def next_frame(self) -> Frame:
        event = await self.next_event()
        assert isinstance(event, Frame), event
        return event

    async def message(self) -> str | bytes:
        """The next data message, fragments joined (control frames skipped)."""
        parts: list[bytes] = []
        opcode = None
        while True:
            frame = await self.next_frame()
            if frame.opcode in (Opcode.PING, Opcode.PONG):
                continue
            assert frame.opcode is not Opcode.CLOSE, f"closed: {self.protocol.close_code}"
            opcode = frame.opcode if opcode is None else opcode
            parts.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(parts)
                return data.decode() if opcode is Opcode.TEXT else data

    async def wait_closed(self) -> tuple[int | None, str | None]:
        """Read to the end; the close code and reason the server sent."""
        with trio.fail_after(BOUND):
            while self.protocol.state is not State.CLOSED:
                try:
                    await self.next_event()
                except EOFError:
                    break
        return self.protocol.close_code, self.protocol.close_reason


def client_for(stream: trio.abc.Stream, **kwargs: Any) -> Client:
    return Client(stream, ClientProtocol(parse_uri("ws://198.18.0.1:8000/"), **kwargs))


async def run_pair(
    app: Callable[[Message, Receive, Send], Awaitable[None]],
    client_part: Callable[[trio.abc.Stream], Awaitable[None]],
    *,
    config: ServerConfig = DEFAULTS,
    access_log: AccessLog | None = None,
    lockstep: bool = False,
) -> None:
    """The server on one end of a memory stream pair, ``client_part`` on the other, both to the end."""
    client_stream, server_stream = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_upgrade, server_stream, app, config, access_log)
            await client_part(client_stream)


# -- apps ---------------------------------------------------------------------------------------
def echo_app(seen: list[Message]) -> Callable[[Message, Receive, Send], Awaitable[None]]:
    """Accepts, echoes every message, records the scope and every event it received."""

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        seen.append(scope)
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            seen.append(event)
            if event["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": event.get("text"), "bytes": event.get("bytes")})

    return app


# -- tests --------------------------------------------------------------------------------------
async def test_echo_text_and_bytes_with_the_websocket_scope(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Message] = []
    log = AccessLog()

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        response = await client.handshake()
        assert response.status_code == 101
        client.protocol.send_text(b"hello")
        client.protocol.send_binary(b"\x00\x01\xff")
        await client.flush()
        assert await client.message() == "hello"
        assert await client.message() == b"\x00\x01\xff"
        client.protocol.send_close(1000, "done")
        await client.flush()
        assert await client.wait_closed() == (1000, "done")

    await run_pair(echo_app(seen), client_part, access_log=log)
    scope = seen[0]
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/chat" and scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == []
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert scope["state"] == {"from": "lifespan"}
    assert "method" not in scope
    assert (b"upgrade", b"websocket") in scope["headers"]
    assert seen[1:] == [
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.receive", "bytes": b"\x00\x01\xff"},
        {"type": "websocket.disconnect", "code": 1000, "reason": "done"},
    ]
    assert log.lines == [("GET /chat 1.1", "101")]


async def test_subprotocol_and_extra_headers(autojump_clock: trio.testing.MockClock) -> None:
    offered: list[list[str]] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        offered.append(scope["subprotocols"])
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "v2.chat", "headers": [(b"X-Room", b"1")]})
        await send({"type": "websocket.close"})
        assert (await receive())["type"] == "websocket.disconnect"

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream, subprotocols=["v1.chat", "v2.chat"])
        response = await client.handshake()
        assert response.status_code == 101
        assert response.headers["Sec-WebSocket-Protocol"] == "v2.chat"
        assert response.headers["X-Room"] == "1"
        assert client.protocol.subprotocol == "v2.chat"
        assert await client.wait_closed() == (1000, "")

    await run_pair(app, client_part)
    assert offered == [["v1.chat", "v2.chat"]]


async def test_server_close_with_code_and_reason(autojump_clock: trio.testing.MockClock) -> None:
    after_close: list[Message] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "room closed"})
        after_close.append(await receive())
        with pytest.raises(ClientDisconnected):
            await send({"type": "websocket.send", "text": "too late"})

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        assert await client.wait_closed() == (4001, "room closed")

    await run_pair(app, client_part)
    # the client's answer to the close carries the same code (RFC 6455 5.5.1)
    assert after_close == [{"type": "websocket.disconnect", "code": 4001, "reason": "room closed"}]


async def test_client_close_reaches_the_app(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Message] = []

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        client.protocol.send_close(4002, "bye")
        await client.flush()
        assert await client.wait_closed() == (4002, "bye")

    await run_pair(echo_app(seen), client_part)
    assert seen[-1] == {"type": "websocket.disconnect", "code": 4002, "reason": "bye"}


async def test_fragmented_messages_are_joined(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Message] = []

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        client.protocol.send_text("héllo ".encode(), fin=False)
        client.protocol.send_ping(b"in between")  # control frames may come between fragments
        client.protocol.send_continuation("wörld".encode(), fin=True)
        client.protocol.send_binary(b"ab", fin=False)
        client.protocol.send_continuation(b"cd", fin=False)
        client.protocol.send_continuation(b"ef", fin=True)
        await client.flush()
        assert await client.message() == "héllo wörld"
        assert await client.message() == b"abcdef"
        client.protocol.send_close(1000)
        await client.flush()
        await client.wait_closed()

    await run_pair(echo_app(seen), client_part)
    assert seen[1] == {"type": "websocket.receive", "text": "héllo wörld"}
    assert seen[2] == {"type": "websocket.receive", "bytes": b"abcdef"}


@pytest.mark.parametrize("fragments", [1, 4])
async def test_message_over_the_limit_closes_1009(
    autojump_clock: trio.testing.MockClock, fragments: int
) -> None:
    seen: list[Message] = []

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream, max_size=None)
        await client.handshake()
        client.protocol.send_binary(b"x" * 100)  # under the limit: delivered
        piece = b"y" * (1200 // fragments)
        client.protocol.send_binary(piece, fin=fragments == 1)
        for i in range(1, fragments):
            client.protocol.send_continuation(piece, fin=i == fragments - 1)
        await client.flush()
        assert await client.message() == b"x" * 100
        code, _ = await client.wait_closed()
        assert code == 1009

    await run_pair(echo_app(seen), client_part, config=ServerConfig(ws_max_message_size=1000))
    assert seen[1:] == [
        {"type": "websocket.receive", "bytes": b"x" * 100},
        {"type": "websocket.disconnect", "code": 1009, "reason": ""},
    ]


async def test_pings_are_answered_while_the_app_is_busy(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()  # not receiving: the reader answers pings on its own
        await send({"type": "websocket.close"})

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        client.protocol.send_ping(b"are you there")
        await client.flush()
        pong = await client.next_frame()
        assert (pong.opcode, pong.data) == (Opcode.PONG, b"are you there")
        release.set()
        assert await client.wait_closed() == (1000, "")

    await run_pair(app, client_part)


async def test_server_pings_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        start = trio.current_time()
        for n in (1, 2):
            ping = await client.next_frame()
            assert ping.opcode is Opcode.PING
            assert trio.current_time() - start == pytest.approx(20.0 * n)
        client.protocol.send_close(1000)
        await client.flush()
        await client.wait_closed()

    await run_pair(app, client_part, config=ServerConfig(ws_ping_interval=20.0))


async def test_unmasked_client_frame_closes_1002(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Message] = []

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        await stream.send_all(b"\x81\x02hi")  # FIN + text, no mask bit: only servers may send that
        code, _ = await client.wait_closed()
        assert code == 1002

    await run_pair(echo_app(seen), client_part)
    assert seen[-1]["type"] == "websocket.disconnect" and seen[-1]["code"] == 1002


async def test_invalid_utf8_closes_1007(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Message] = []

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        mask = b"\x01\x02\x03\x04"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\xff\xfe"))
        await stream.send_all(b"\x81\x82" + mask + payload)
        code, _ = await client.wait_closed()
        assert code == 1007

    await run_pair(echo_app(seen), client_part)
    assert seen[-1]["code"] == 1007


async def test_denial_response(autojump_clock: trio.testing.MockClock) -> None:
    log = AccessLog()

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"12")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        response = await client.handshake()
        assert response.status_code == 401
        assert response.headers["Content-Type"] == "text/plain"
        assert response.body == b"who are you?"

    await run_pair(app, client_part, access_log=log)
    assert log.lines == [("GET /chat 1.1", "401")]


async def test_close_before_accept_is_403(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1000})

    async def client_part(stream: trio.abc.Stream) -> None:
        response = await client_for(stream).handshake()
        assert response.status_code == 403

    await run_pair(app, client_part)


@pytest.mark.parametrize("raise_it", [True, False])
async def test_app_failing_before_accept_is_500(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, raise_it: bool
) -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        if raise_it:
            raise ValueError("broken app")

    async def client_part(stream: trio.abc.Stream) -> None:
        response = await client_for(stream).handshake()
        assert response.status_code == 500

    with caplog.at_level(logging.ERROR, logger="trio_yastack.l7.asgi"):
        await run_pair(app, client_part)
    (record,) = caplog.records
    if raise_it:
        assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    else:
        assert "without accepting" in record.getMessage()


async def test_app_raising_after_accept_closes_1011(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise ValueError("broken app")

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        client.protocol.send_text(b"boom")
        await client.flush()
        code, _ = await client.wait_closed()
        assert code == 1011

    with caplog.at_level(logging.ERROR, logger="trio_yastack.l7.asgi"):
        await run_pair(app, client_part)
    assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records)


async def test_app_returning_after_accept_closes_1000(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        assert await client.message() == "bye"
        assert await client.wait_closed() == (1000, "")

    await run_pair(app, client_part)


async def test_client_vanishing_is_a_disconnect_1006(autojump_clock: trio.testing.MockClock) -> None:
    outcome: list[Any] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except ClientDisconnected as exc:
            outcome.append(exc)

    async def client_part(stream: trio.abc.Stream) -> None:
        await client_for(stream).handshake()
        await stream.aclose()  # gone without a close frame

    await run_pair(app, client_part)
    assert outcome[0] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
    assert isinstance(outcome[1], ClientDisconnected)


async def test_client_vanishing_before_accept(autojump_clock: trio.testing.MockClock) -> None:
    outcome: list[Message] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        outcome.append(await receive())  # waiting before deciding: the client leaves

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        client.protocol.send_request(client.protocol.connect())
        await client.flush()
        await stream.aclose()

    await run_pair(app, client_part)
    assert outcome == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


async def test_accept_while_receive_waits_before_it(autojump_clock: trio.testing.MockClock) -> None:
    """An app that waits in ``receive()`` in one task and accepts from another: the early read
    gives way to the reader, no byte is lost and nothing reads twice."""
    received: list[Message] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        async with trio.open_nursery() as nursery:

            async def listen() -> None:
                received.append(await receive())

            nursery.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        client.protocol.send_text(b"first")
        await client.flush()
        assert await client.wait_closed() == (1000, "")

    await run_pair(app, client_part)
    assert received == [{"type": "websocket.receive", "text": "first"}]


async def test_frames_sent_with_the_handshake_are_kept(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Message] = []

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        client.protocol.send_request(client.protocol.connect())
        head = b"".join(client.protocol.data_to_send())
        # the first message in the same write as the request: the server reads it as "leftover"
        mask = b"\x00\x00\x00\x00"
        await stream.send_all(head + b"\x81\x85" + mask + b"early")
        response = await client.next_event()
        assert isinstance(response, Response) and response.status_code == 101
        assert await client.message() == "early"
        client.protocol.send_close(1000)
        await client.flush()
        await client.wait_closed()

    await run_pair(echo_app(seen), client_part)
    assert seen[1] == {"type": "websocket.receive", "text": "early"}


async def test_not_a_websocket_handshake_is_400_without_the_app(
    autojump_clock: trio.testing.MockClock,
) -> None:
    called: list[Message] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        called.append(scope)

    async def client_part(stream: trio.abc.Stream) -> None:
        await stream.send_all(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 ")

    log = AccessLog()
    await run_pair(app, client_part, access_log=log)
    assert called == []
    assert log.lines == [("GET /chat 1.1", "400")]


async def test_permessage_deflate_when_offered(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Message] = []
    text = "compressible " * 1000

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream, extensions=[ClientPerMessageDeflateFactory()])
        response = await client.handshake()
        assert response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        client.protocol.send_text(text.encode())
        await client.flush()
        frame = await client.next_frame()  # as websockets hands it over: inflated
        assert bytes(frame.data).decode() == text
        client.protocol.send_close(1000)
        await client.flush()
        await client.wait_closed()

    await run_pair(echo_app(seen), client_part)
    assert seen[1] == {"type": "websocket.receive", "text": text}


async def test_a_slow_app_stops_the_reader(autojump_clock: trio.testing.MockClock) -> None:
    """Backpressure: while the app does not receive, at most ``MAX_QUEUED`` messages (and the one
    the reader holds) are taken off the connection; the rest stay with the client, then all arrive
    in order."""
    release = trio.Event()
    got: list[str] = []
    total = MAX_QUEUED * 4

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()
        while len(got) < total:
            got.append((await receive())["text"])
        await send({"type": "websocket.close"})

    async def client_part(stream: trio.abc.Stream) -> None:
        client = client_for(stream)
        await client.handshake()
        sent = 0
        async with trio.open_nursery() as nursery:

            async def send_all_messages() -> None:
                nonlocal sent
                for i in range(total):
                    client.protocol.send_text(str(i).encode())
                    await client.flush()  # lockstep: returns once the server has read it
                    sent += 1

            nursery.start_soon(send_all_messages)
            await trio.testing.wait_all_tasks_blocked()
            assert MAX_QUEUED <= sent <= MAX_QUEUED + 1
            release.set()
        assert await client.wait_closed() == (1000, "")

    await run_pair(app, client_part, lockstep=True)
    assert got == [str(i) for i in range(total)]


async def test_over_two_stacks(autojump_clock: trio.testing.MockClock) -> None:
    """A 1 MB message each way over the user-space TCP of two stacks (segmented, windowed), checked
    by SHA-256, then a clean close."""
    blob = hashlib.sha256(b"seed").digest() * (1_000_000 // 32)
    seen: list[Message] = []
    async with two_stacks() as (a, b):
        client_stream, server_stream = await stream_pair(a, b, 8000)
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_upgrade, server_stream, echo_app(seen), ServerConfig())
                client = client_for(client_stream, max_size=None)
                assert (await client.handshake()).status_code == 101
                client.protocol.send_binary(blob)
                await client.flush()
                echoed = await client.message()
                assert isinstance(echoed, bytes)
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(blob).digest()
                client.protocol.send_close(1001, "going away")
                await client.flush()
                assert await client.wait_closed() == (1001, "going away")
                await client_stream.aclose()
    assert seen[-1] == {"type": "websocket.disconnect", "code": 1001, "reason": "going away"}


# -- through the HTTP/1.1 connection: the hand-over as the server makes it ------------------------
async def test_upgrade_through_the_http11_connection(autojump_clock: trio.testing.MockClock) -> None:
    """``HttpConnection`` sees ``Upgrade: websocket`` and hands over: the websocket scope carries the
    connection's addresses and lifespan state, the access log gets its line, and a frame sent in
    the same write as the request head is not lost."""
    seen: list[Message] = []
    log = AccessLog()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    connection = HttpConnection(
        server_stream,
        echo_app(seen),
        DEFAULTS,
        client=("198.18.0.2", 50000),
        server=("198.18.0.1", 8000),
        state={"from": "lifespan"},
        access_log=log,
    )
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            client = client_for(client_stream)
            client.protocol.send_request(client.protocol.connect())
            head = b"".join(client.protocol.data_to_send())
            # websockets sends nothing before the 101: the frame is written by hand (mask 0)
            await client_stream.send_all(head + b"\x81\x8d\x00\x00\x00\x00with the head")
            response = await client.next_event()
            assert isinstance(response, Response) and response.status_code == 101
            assert await client.message() == "with the head"
            client.protocol.send_close(1000)
            await client.flush()
            assert await client.wait_closed() == (1000, "")
    scope = seen[0]
    assert (scope["type"], scope["scheme"], scope["path"]) == ("websocket", "ws", "/")
    assert scope["client"] == ("198.18.0.2", 50000) and scope["server"] == ("198.18.0.1", 8000)
    assert scope["state"] == {"from": "lifespan"}
    assert seen[1] == {"type": "websocket.receive", "text": "with the head"}
    assert log.lines == [("GET / 1.1", "101")]


async def test_a_bad_client_hurts_no_other_connection(autojump_clock: trio.testing.MockClock) -> None:
    """Two websockets served side by side: one client sends an unmasked frame and is closed with
    1002, the other goes on echoing before and after."""
    seen: list[Message] = []
    bad_stream, bad_server = trio.testing.memory_stream_pair()
    good_stream, good_server = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_upgrade, bad_server, echo_app(seen), DEFAULTS)
            nursery.start_soon(serve_upgrade, good_server, echo_app(seen), DEFAULTS)
            bad, good = client_for(bad_stream), client_for(good_stream)
            await bad.handshake()
            await good.handshake()
            good.protocol.send_text(b"before")
            await good.flush()
            assert await good.message() == "before"
            await bad_stream.send_all(b"\x82\x01x")
            assert (await bad.wait_closed())[0] == 1002
            good.protocol.send_text(b"after")
            await good.flush()
            assert await good.message() == "after"
            good.protocol.send_close(1000)
            await good.flush()
            assert await good.wait_closed() == (1000, "")


# -- a framework's websockets: Starlette (through anyio on trio) and FastAPI -----------------------
async def test_starlette_and_fastapi_websockets(autojump_clock: trio.testing.MockClock) -> None:
    """Starlette's ``WebSocket`` (accept with a subprotocol, text and JSON, close with a code and
    reason), its denial response (``send_denial_response``, which needs the extension), and a
    FastAPI websocket route with a path parameter, all through ``serve_websocket``.  (FastAPI
    resolves the endpoint's annotations in this module's globals: the imports are at the top.)"""
    api = FastAPI()

    @api.websocket("/rooms/{room}")
    async def room(websocket: WebSocket, room: str) -> None:
        if room == "closed":
            await websocket.send_denial_response(PlainTextResponse("room closed", status_code=403))
            return
        await websocket.accept(subprotocol="chat.v2")
        name = await websocket.receive_text()
        await websocket.send_json({"room": room, "hello": name})
        await websocket.close(code=4000, reason="see you")

    async def api_app(scope: Message, receive: Receive, send: Send) -> None:
        """FastAPI's ASGI types are Starlette's (messages as MutableMappings): adapted, not ignored."""

        async def send_message(message: MutableMapping[str, Any]) -> None:
            await send(dict(message))

        await api(scope, receive, send_message)

    async def open_room(path: str) -> tuple[Response, Client]:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_upgrade, server_stream, api_app, DEFAULTS)
        client = client_for(client_stream, subprotocols=["chat.v1", "chat.v2"])
        return await client.handshake(path), client

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            response, client = await open_room("/rooms/blue")
            assert response.status_code == 101 and client.protocol.subprotocol == "chat.v2"
            client.protocol.send_text(b"ana")
            await client.flush()
            assert await client.message() == '{"room":"blue","hello":"ana"}'
            assert await client.wait_closed() == (4000, "see you")

            response, _ = await open_room("/rooms/closed")
            assert (response.status_code, response.body) == (403, b"room closed")


async def test_graceful_shutdown_closes_with_1012(autojump_clock: trio.testing.MockClock) -> None:
    """The server's shutdown event closes an open websocket with 1012 (uvicorn's code); the app
    gets the disconnect once the client answers, and a send after that raises."""
    shutdown = trio.Event()
    outcome: list[Any] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "late"})
        except ClientDisconnected as exc:
            outcome.append(exc)

    client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_upgrade, server_stream, app, DEFAULTS, None, shutdown)
            client = client_for(client_stream)
            await client.handshake()
            await trio.testing.wait_all_tasks_blocked()
            shutdown.set()
            assert await client.wait_closed() == (1012, "server shutting down")
    assert outcome[0] == {"type": "websocket.disconnect", "code": 1012, "reason": "server shutting down"}
    assert isinstance(outcome[1], ClientDisconnected)


async def test_graceful_shutdown_reaches_a_websocket_through_the_http11_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``HttpConnection.shutdown()`` (what ``serve_asgi`` calls on SIGTERM for every connection)
    reaches a connection that became a websocket: it closes with 1012 instead of being cut off
    when the graceful timeout runs out.  Was a gap: the connection's shutdown only stopped
    HTTP/1.1 keep-alive, and the websocket never heard of it."""
    outcome: list[Any] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome.append(await receive())

    client_stream, server_stream = trio.testing.memory_stream_pair()
    connection = HttpConnection(
        server_stream, app, DEFAULTS, client=("198.18.0.2", 50000), server=("198.18.0.1", 8000)
    )
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            client = client_for(client_stream)
            await client.handshake()
            await trio.testing.wait_all_tasks_blocked()
            connection.shutdown()
            assert await client.wait_closed() == (1012, "server shutting down")
    assert outcome == [{"type": "websocket.disconnect", "code": 1012, "reason": "server shutting down"}]
