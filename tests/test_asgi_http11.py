"""HTTP/1.1 of the lean ASGI server (``l7/asgi/_http11.py``), one connection at a time.

Most tests run an :class:`HttpConnection` on trio's memory streams (the stack adds nothing to
HTTP framing), under ``MockClock(autojump_threshold=0)`` so every timeout is simulated; the
client is raw bytes (:class:`asgi_helpers.RawClient`), so framing is seen exactly as written.
Backpressure and "one write per small response" are checked where they live: on a lockstep
stream pair and by counting ``send_all`` calls.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from asgi_helpers import RawClient, build_request, echo_app, hello_app, memory_connection, scope_app

from trio_yastack.l7.asgi import ClientDisconnected, Handoffs, HttpConnection, ServerConfig

Message = dict[str, Any]


class CountingStream(trio.abc.Stream):
    """A stream that counts ``send_all`` calls and the bytes of each (what reaches the socket)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sends: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- keep-alive, pipelining, framing --------------------------------------------------------------
async def test_keep_alive_serves_many_requests_on_one_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_connection(hello_app) as (client, _conn, done):
        for _ in range(5):
            response = await client.request()
            assert (response.status, response.body) == (200, b"Hello, world!")
            assert response.header("connection") is None  # keep-alive is HTTP/1.1's default
        assert not done.is_set()


async def test_small_response_head_and_body_in_one_write(autojump_clock: trio.testing.MockClock) -> None:
    """The head is held until the body: one ``send_all`` (one segment) per small response."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    counting = CountingStream(server_stream)
    connection = HttpConnection(counting, hello_app, ServerConfig())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        client = RawClient(client_stream)
        await client.request()
        await client.request()
        nursery.cancel_scope.cancel()
    assert len(counting.sends) == 2
    assert all(send.endswith(b"\r\n\r\nHello, world!") for send in counting.sends)


async def test_pipelined_requests_answered_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(scope_app) as (client, _conn, _done):
        await client.send(b"".join(build_request("GET", f"/{n}") for n in range(6)))
        paths = [(await client.response()).json()["path"] for _ in range(6)]
        assert paths == [f"/{n}" for n in range(6)]


async def test_pipelining_bound_stops_reading(autojump_clock: trio.testing.MockClock) -> None:
    """While an app waits for a disconnect, pipelined requests are read ahead only up to
    ``max_pipelined``; then the connection stops reading (the client's next send blocks) until
    the response completes, and every request is then answered in order."""
    release = trio.Event()
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        if scope["path"] == "/slow":
            assert (await receive())["type"] == "http.request"
            async with trio.open_nursery() as nursery:

                async def respond_later() -> None:
                    await release.wait()
                    await send({"type": "http.response.start", "status": 200, "headers": []})
                    await send({"type": "http.response.body", "body": b"slow"})

                nursery.start_soon(respond_later)
                assert (await receive())["type"] == "http.disconnect"  # the response completed
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    connection = HttpConnection(server_stream, app, ServerConfig(max_pipelined=2))
    sent = 0

    async def send_requests() -> None:
        nonlocal sent
        await client_stream.send_all(build_request("GET", "/slow"))
        for n in range(5):
            await client_stream.send_all(build_request("GET", f"/{n}"))
            sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        nursery.start_soon(send_requests)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == 2  # two parsed ahead; the third send waits for the server to read
        assert len(connection._requests) == 2
        assert seen == ["/slow"]
        release.set()
        client = RawClient(client_stream)
        bodies = [(await client.response()).body for _ in range(6)]
        assert bodies == [b"slow", b"/0", b"/1", b"/2", b"/3", b"/4"]
        nursery.cancel_scope.cancel()


async def test_chunked_request_body_and_chunked_response(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message["body"]
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (body[:3], body[3:], b""):
            await send({"type": "http.response.body", "body": piece, "more_body": bool(piece)})

    async with memory_connection(app) as (client, _conn, _done):
        await client.send(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
            b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
        )
        response = await client.response()
        assert response.chunked and response.trailer_ok
        assert response.header("content-length") is None
        assert response.body == b"abcdefg"
        assert (await client.request()).status == 200  # the framing left the connection usable


async def test_more_body_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    """A body sent in pieces arrives as several ``http.request`` (more_body True, then False)."""
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(HttpConnection(server_stream, echo_app, ServerConfig()).run)
        await client_stream.send_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 9\r\n\r\n")
        await client_stream.send_all(b"abc")
        await client_stream.send_all(b"def")
        await client_stream.send_all(b"ghi")
        response = await RawClient(client_stream).response()
        assert response.body == b"abcdefghi"
        chunks = response.header("x-chunks")
        assert chunks is not None and len(chunks.split(",")) >= 3
        nursery.cancel_scope.cancel()


async def test_content_length_from_the_app_is_kept_when_streaming(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"6")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})

    async with memory_connection(app) as (client, _conn, _done):
        response = await client.request()
        assert not response.chunked and response.body == b"abcdef"
        assert (await client.request()).body == b"abcdef"


async def test_expect_100_continue(autojump_clock: trio.testing.MockClock) -> None:
    """``100 Continue`` is written on the app's first receive(), not before."""
    async with memory_connection(echo_app) as (client, _conn, _done):
        await client.send(b"POST / HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        interim = await client.response()
        assert interim.status == 100
        await client.send(b"hello")
        response = await client.response()
        assert (response.status, response.body) == (200, b"hello")


async def test_no_100_continue_when_the_app_answers_without_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_connection(hello_app) as (client, _conn, _done):
        await client.send(b"POST / HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        response = await client.response()
        assert response.status == 200  # straight to the answer


async def test_head_has_get_headers_and_no_body(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(hello_app) as (client, _conn, _done):
        head = await client.request("HEAD")
        assert head.status == 200 and head.header("content-length") == "13"
        get = await client.request("GET")  # would fail to parse if HEAD had left body bytes
        assert get.body == b"Hello, world!"


async def test_full_scope(autojump_clock: trio.testing.MockClock) -> None:
    config = ServerConfig(root_path="/mount")
    async with memory_connection(scope_app, config, state={"db": "x"}) as (client, _conn, _done):
        await client.send(b"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Mixed-Case: Value\r\n\r\n")
        scope = (await client.response()).json()
        assert scope["type"] == "http"
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert scope["http_version"] == "1.1"
        assert scope["method"] == "GET"
        assert scope["scheme"] == "http"
        assert scope["path"] == "/a b/c"
        assert scope["raw_path"] == "/a%20b/c"
        assert scope["query_string"] == "x=1&y=%20"
        assert scope["root_path"] == "/mount"
        assert scope["headers"] == [["host", "t"], ["x-mixed-case", "Value"]]
        assert scope["client"] == ["198.18.0.1", 40000]
        assert scope["server"] == ["198.18.0.2", 8000]
        assert scope["state"] == {"db": "x"}
        assert scope["extensions"] == {}
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        response = await client.response()
        assert response.json()["http_version"] == "1.0"
        assert response.header("connection") == "close"  # HTTP/1.0 without keep-alive
        assert await client.wait_closed() == b""


async def test_state_is_a_copy_per_request(autojump_clock: trio.testing.MockClock) -> None:
    state = {"count": 0}
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["state"]["count"])
        scope["state"]["count"] += 1
        await hello_app(scope, receive, send)

    async with memory_connection(app, state=state) as (client, _conn, _done):
        await client.request()
        await client.request()
    assert seen == [0, 0] and state == {"count": 0}


async def test_http10_keep_alive_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(hello_app) as (client, _conn, done):
        await client.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        response = await client.response()
        assert response.header("connection") == "keep-alive"
        assert (await client.request()).status == 200
        assert not done.is_set()


async def test_connection_close_honoured(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(hello_app) as (client, _conn, done):
        response = await client.request(connection="close")
        assert response.header("connection") == "close"
        assert await client.wait_closed() == b""
        await done.wait()


async def test_streaming_to_http10_ends_with_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})

    async with memory_connection(app) as (client, _conn, _done):
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        response = await client.response()
        assert not response.chunked and response.body == b"abcd"


# -- receive(): http.disconnect ---------------------------------------------------------------------
async def test_disconnect_when_the_client_goes_away(autojump_clock: trio.testing.MockClock) -> None:
    messages: list[Message] = []
    got_disconnect = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        messages.append(await receive())
        messages.append(await receive())  # waits: body done, no response yet
        got_disconnect.set()

    async with memory_connection(app) as (client, _conn, done):
        await client.send(build_request("POST", "/", b"abc"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(messages) == 1
        await client.stream.aclose()
        with trio.fail_after(5):
            await got_disconnect.wait()
            await done.wait()
    assert messages == [
        {"type": "http.request", "body": b"abc", "more_body": False},
        {"type": "http.disconnect"},
    ]


async def test_disconnect_at_once_after_the_response(autojump_clock: trio.testing.MockClock) -> None:
    after: list[Message] = []
    returned = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await hello_app(scope, receive, send)
        after.append(await receive())
        returned.set()

    async with memory_connection(app) as (client, _conn, _done):
        assert (await client.request()).status == 200
        with trio.fail_after(1):
            await returned.wait()
    assert after == [{"type": "http.disconnect"}]


async def test_waiting_receive_returns_when_the_response_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task of the app listening for a disconnect (as Starlette's streaming response does)
    is woken with ``http.disconnect`` when another task completes the response."""
    listened: list[Message] = []
    finished = [trio.Event(), trio.Event()]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()

        async def listen() -> None:
            listened.append(await receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
        finished[len(listened) - 1].set()

    async with memory_connection(app) as (client, _conn, _done):
        assert (await client.request()).body == b"done"
        assert (await client.request()).body == b"done"  # the connection still serves
        with trio.fail_after(1):
            await finished[1].wait()
    assert listened == [{"type": "http.disconnect"}] * 2


# -- backpressure ----------------------------------------------------------------------------------
async def test_a_client_that_does_not_read_blocks_the_apps_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal sent
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(100):
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b""})

    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(HttpConnection(server_stream, app, ServerConfig()).run)
        await client_stream.send_all(build_request())
        await trio.testing.wait_all_tasks_blocked()
        assert sent == 0  # the first body (with the head) waits for the client to read it
        response = await RawClient(client_stream).response()
        assert response.body == b"x" * 100_000 and sent == 100
        nursery.cancel_scope.cancel()


# -- bad input ---------------------------------------------------------------------------------------
BAD_REQUESTS = [
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="malformed"),
    pytest.param(b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, id="header-without-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nx: " + b"a" * 70_000 + b"\r\n\r\n", 431, id="header-over-64k"),
    pytest.param(
        b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: %s\r\n" % (n, b"v" * 100) for n in range(700)) + b"\r\n",
        431,
        id="many-headers",
    ),
    pytest.param(b"POST / HTTP/1.1\r\ncontent-length: 200000000\r\n\r\n", 413, id="declared-body-too-large"),
    pytest.param(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 501, id="unsupported-coding"),
    pytest.param(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501, id="gzip-chunked"),
    pytest.param(
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        id="smuggling-cl-and-te",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", 400, id="two-lengths"
    ),
    pytest.param(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400, id="bad-chunk"),
]


@pytest.mark.parametrize(("raw", "status"), BAD_REQUESTS)
async def test_bad_requests_get_the_right_answer(
    autojump_clock: trio.testing.MockClock, raw: bytes, status: int
) -> None:
    called = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        await hello_app(scope, receive, send)

    async with memory_connection(app) as (client, _conn, done):
        await client.send(raw)
        response = await client.response()
        assert response.status == status
        assert response.header("connection") == "close"
        await client.wait_closed()
        with trio.fail_after(5):
            await done.wait()
    assert called == ([] if status != 400 or b"zz" not in raw else ["/"])


async def test_streamed_body_over_the_limit_gets_413(autojump_clock: trio.testing.MockClock) -> None:
    received = 0
    last: Message = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal received, last
        while True:
            last = await receive()
            if last["type"] != "http.request":
                return
            received += len(last["body"])
            if not last["more_body"]:
                break
        await hello_app(scope, receive, send)

    async with memory_connection(app, ServerConfig(max_request_body=1000)) as (client, _conn, done):
        await client.send(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(5):
            await client.send(b"190\r\n" + b"x" * 400 + b"\r\n")
        response = await client.response()
        assert response.status == 413
        await client.stream.aclose()
        with trio.fail_after(5):
            await done.wait()
    assert received <= 1000 and last == {"type": "http.disconnect"}


async def test_slowloris_head_gets_408_then_close(autojump_clock: trio.testing.MockClock) -> None:
    config = ServerConfig(request_head_timeout=10.0)
    async with memory_connection(hello_app, config) as (client, _conn, done):
        start = trio.current_time()
        await client.send(b"GET / HTTP/1.1\r\nhost: t\r\n")
        for _ in range(3):
            await trio.sleep(2)  # the attacker's pacing: one header every 2 s, never finishing
            await client.send(b"x-drip: 1\r\n")
        response = await client.response()
        assert response.status == 408
        assert 10.0 <= trio.current_time() - start < 11.0
        await client.wait_closed()
        await done.wait()


async def test_idle_keep_alive_connection_closes_quietly(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(hello_app, ServerConfig(keep_alive_timeout=5.0)) as (client, _conn, done):
        await client.request()
        start = trio.current_time()
        assert await client.wait_closed() == b""  # no 408 for an idle connection
        assert 5.0 <= trio.current_time() - start < 5.5
        await done.wait()


async def test_keep_alive_timer_restarts_per_request(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(hello_app, ServerConfig(keep_alive_timeout=5.0)) as (client, _conn, done):
        for _ in range(4):
            await client.request()
            await trio.sleep(4)
        assert (await client.request()).status == 200
        assert not done.is_set()


async def test_app_raises_before_the_response_gets_500_and_is_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ValueError("the app's bug")

    with caplog.at_level(logging.ERROR, logger="trio_yastack.asgi"):
        async with memory_connection(app) as (client, _conn, _done):
            response = await client.request()
            assert response.status == 500 and response.header("connection") == "close"
    assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records)


async def test_app_raises_after_the_response_started_closes(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("midway")

    with caplog.at_level(logging.ERROR, logger="trio_yastack.asgi"):
        async with memory_connection(app) as (client, _conn, done):
            await client.send(build_request())
            received = await client.wait_closed()
            assert received.startswith(b"HTTP/1.1 200 OK") and b"4\r\npart\r\n" in received
            assert not received.endswith(b"0\r\n\r\n")  # not a complete chunked body
            await done.wait()
    assert any("midway" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_app_returns_without_a_response_gets_500(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return

    async with memory_connection(app) as (client, _conn, _done):
        assert (await client.request()).status == 500


async def test_header_injection_from_the_app_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nset-cookie: evil")]}
        )
        await send({"type": "http.response.body", "body": b""})

    async with memory_connection(app) as (client, _conn, _done):
        response = await client.request()
        assert response.status == 500 and response.header("set-cookie") is None


async def test_pipelined_request_after_a_bad_one_is_not_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Good, bad, good in one write: the first answered, then 400 and close (the third never runs)."""
    called = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await hello_app(scope, receive, send)

    async with memory_connection(app) as (client, _conn, _done):
        await client.send(build_request("GET", "/1") + b"BAD\r\n\r\n" + build_request("GET", "/3"))
        assert (await client.response()).status == 200
        assert (await client.response()).status == 400
        await client.wait_closed()
    assert called == ["/1"]


async def test_unread_body_is_skipped_for_the_next_request(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(scope_app) as (client, _conn, _done):
        await client.send(build_request("POST", "/first", b"z" * 5000) + build_request("GET", "/second"))
        assert (await client.response()).json()["path"] == "/first"
        assert (await client.response()).json()["path"] == "/second"


async def test_h2c_upgrade_is_ignored(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_connection(scope_app) as (client, _conn, _done):
        await client.send(
            b"GET /up HTTP/1.1\r\nhost: t\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
            b"http2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n" + build_request("GET", "/next")
        )
        assert (await client.response()).json()["path"] == "/up"
        assert (await client.response()).json()["path"] == "/next"


async def test_send_after_the_client_left_raises_an_oserror(autojump_clock: trio.testing.MockClock) -> None:
    """ASGI 2.4: ``send`` on a closed connection raises an OSError subclass, so a streaming app
    stops (it is not left producing a long response for nobody)."""
    raised: list[BaseException] = []
    sent = 0
    finished = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal sent
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
                sent += 1
        except OSError as exc:
            raised.append(exc)
        finally:
            finished.set()

    async with memory_connection(app) as (client, _conn, done):
        await client.send(build_request())
        await client._until(b"\r\n\r\n")
        await client.stream.aclose()
        with trio.fail_after(5):
            await finished.wait()
            await done.wait()
    assert len(raised) == 1 and isinstance(raised[0], ClientDisconnected)


async def test_an_error_raised_because_the_client_left_is_not_logged_as_an_app_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette turns the OSError from ``send`` into its own ``ClientDisconnect``: still the
    client leaving, logged at debug level, not as an exception in the app."""

    class FrameworkDisconnect(Exception):
        pass

    finished = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        except OSError:
            raise FrameworkDisconnect()  # noqa: B904 (chained implicitly, as Starlette does)
        finally:
            finished.set()

    with caplog.at_level(logging.DEBUG, logger="trio_yastack.asgi"):
        async with memory_connection(app) as (client, _conn, done):
            await client.send(build_request())
            await client._until(b"\r\n\r\n")
            await client.stream.aclose()
            with trio.fail_after(5):
                await finished.wait()
                await done.wait()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("went away" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("declared", "bodies"), [(b"3", [b"ab", b"cd"]), (b"10", [b"ab", b"cd"])])
async def test_content_length_the_app_does_not_keep_ends_the_connection(
    autojump_clock: trio.testing.MockClock, declared: bytes, bodies: list[bytes]
) -> None:
    """A body longer than the app's content-length raises (the extra bytes would be read as the
    next response); a shorter one closes the connection, so the client sees it cut off."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", declared)]})
        for n, body in enumerate(bodies):
            await send({"type": "http.response.body", "body": body, "more_body": n < len(bodies) - 1})

    async with memory_connection(app) as (client, _conn, done):
        await client.send(build_request() + build_request())
        received = await client.wait_closed()
        assert received.count(b"HTTP/1.1") == 1  # the pipelined second request is not answered
        assert received.endswith(b"ab" if declared == b"3" else b"abcd")  # no byte past the length
        await done.wait()


# -- an app that runs on after its response (background tasks) -------------------------------------
@asynccontextmanager
async def watched_connection(
    app: Any, config: ServerConfig | None = None
) -> AsyncIterator[tuple[RawClient, trio.Nursery, trio.Event]]:
    """``memory_connection`` with a :class:`Handoffs` watcher, as ``serve_asgi`` runs connections;
    yields the client, the nursery hand-offs spawn into (its tasks: the watcher and whoever took
    the connection over) and the event set when the connection's first task returned."""
    async with trio.open_nursery() as nursery:
        handoffs = Handoffs(nursery)
        nursery.start_soon(handoffs.run)
        async with memory_connection(app, config, handoffs=handoffs) as (client, _conn, done):
            yield client, nursery, done
        nursery.cancel_scope.cancel()


async def test_next_request_is_served_while_the_app_runs_on_after_its_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two requests on one keep-alive connection; the first app completes its response and then
    waits until the second request has been answered (a background task).  Served inline, the
    second request would wait for the first app, which waits for it: the bound would fail."""
    second_answered = trio.Event()
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await hello_app(scope, receive, send)
        if scope["path"] == "/first":
            await second_answered.wait()
            events.append("first app done")
        else:
            events.append("second answered")
            second_answered.set()

    async with watched_connection(app) as (client, nursery, done):
        with trio.fail_after(5):
            assert (await client.request("GET", "/first")).body == b"Hello, world!"
            assert (await client.request("GET", "/second")).body == b"Hello, world!"
            await trio.testing.wait_all_tasks_blocked()
        assert events == ["second answered", "first app done"]
        assert len(nursery.child_tasks) == 2  # the watcher, and the task serving the connection now
        assert not done.is_set()  # the first task waits for the connection, which is still open
        assert (await client.request("GET", "/third")).status == 200


async def test_an_app_that_returns_at_once_is_not_handed_on(autojump_clock: trio.testing.MockClock) -> None:
    """The fast path spawns nothing: after many requests to an app that returns with its response,
    the watcher is the only task in the hand-off nursery."""
    async with watched_connection(hello_app) as (client, nursery, _done):
        for _ in range(20):
            assert (await client.request()).status == 200
        await client.send(b"".join(build_request() for _ in range(5)))  # pipelined too
        for _ in range(5):
            assert (await client.response()).status == 200
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == 1


async def test_pipelined_requests_keep_their_order_across_a_hand_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three requests in one write; the first app runs on until the third is answered: the
    responses still come in request order, each whole."""
    third_answered = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await scope_app(scope, receive, send)
        if scope["path"] == "/1":
            await third_answered.wait()
        elif scope["path"] == "/3":
            third_answered.set()

    async with watched_connection(app) as (client, _nursery, _done):
        await client.send(b"".join(build_request("GET", f"/{n}") for n in (1, 2, 3)))
        with trio.fail_after(5):
            paths = [(await client.response()).json()["path"] for _ in range(3)]
            await third_answered.wait()
        assert paths == ["/1", "/2", "/3"]


async def test_the_old_apps_receive_and_send_do_not_reach_the_next_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two hand-offs in a row: once the connection has moved on, the first and the second app
    (which kept the connection's own receive/send, and ones bound to its request) are told
    ``http.disconnect`` (they do not take the third request's body) and their ``send`` raises
    (nothing is written into the third response)."""
    third_started = trio.Event()
    checked = {"/first": trio.Event(), "/second": trio.Event()}
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path in checked:
            await hello_app(scope, receive, send)
            await third_started.wait()
            seen[path] = await receive()
            with pytest.raises(RuntimeError, match="after the response completed"):
                await send({"type": "http.response.body", "body": b"intruder"})
            checked[path].set()
        else:
            third_started.set()
            for event in checked.values():
                await event.wait()
            await echo_app(scope, receive, send)

    async with watched_connection(app) as (client, _nursery, _done):
        with trio.fail_after(5):
            assert (await client.request("GET", "/first")).status == 200
            assert (await client.request("GET", "/second")).status == 200
            response = await client.request("POST", "/third", b"the third body")
        assert (response.status, response.body) == (200, b"the third body")
        assert seen == {"/first": {"type": "http.disconnect"}, "/second": {"type": "http.disconnect"}}


async def test_an_error_after_the_hand_off_is_logged_and_the_connection_serves_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    second_answered = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await hello_app(scope, receive, send)
        if scope["path"] == "/first":
            await second_answered.wait()
            raise ValueError("the background task's bug")
        second_answered.set()

    with caplog.at_level(logging.ERROR, logger="trio_yastack.asgi"):
        async with watched_connection(app) as (client, _nursery, _done):
            with trio.fail_after(5):
                assert (await client.request("GET", "/first")).status == 200
                assert (await client.request("GET", "/second")).status == 200
                await trio.testing.wait_all_tasks_blocked()
                assert (await client.request("GET", "/third")).status == 200
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.getMessage() == "Exception in ASGI application after its response"
    assert isinstance(record.exc_info[1], ValueError)  # type: ignore[index]  # exc_info is set: filtered


async def test_connection_close_ends_at_once_while_the_app_runs_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Connection: close`` and a background task: the client sees the end of the connection
    after the response, not when the app returns (uvicorn closes at once too); the app then runs
    to its end."""
    release = trio.Event()
    finished = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await hello_app(scope, receive, send)
        await release.wait()
        finished.set()

    async with watched_connection(app) as (client, _nursery, done):
        await client.send(build_request(connection="close"))
        with trio.fail_after(5):
            response = await client.response()
            assert await client.wait_closed() == b""
        assert response.header("connection") == "close" and not finished.is_set()
        assert not done.is_set()  # the first task still runs the app
        release.set()
        with trio.fail_after(5):
            await finished.wait()
            await done.wait()


async def test_without_a_watcher_the_next_request_waits_for_the_app(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An ``HttpConnection`` run alone (no :class:`Handoffs`) keeps the app inline: the second
    request is answered only once the first app returns (what the watcher is for)."""
    release = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await hello_app(scope, receive, send)
        if scope["path"] == "/first":
            await release.wait()

    async with memory_connection(app) as (client, _conn, _done):
        assert (await client.request("GET", "/first")).status == 200
        await client.send(build_request("GET", "/second"))
        with trio.move_on_after(60):
            await client.response()
            pytest.fail("the second request was answered while the first app ran")
        release.set()
        assert (await client.response()).status == 200
