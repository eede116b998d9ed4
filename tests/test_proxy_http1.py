"""The proxy's HTTP/1.1 fast path (``l7/_http1.py``): which requests it takes, how it reads
responses, and that what it writes is byte for byte what h11 writes — for the heads alone and for
whole exchanges through the proxy on kernel sockets, fast path against h11 path."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from proxy_helpers import bootstrap, cluster, hcm, http_listener, route, running_proxy
from test_proxy_http import file_log

from trio_yastack.l7._http1 import (
    MAX_RESPONSE_HEAD,
    PlainRequest,
    RequestParser,
    ResponseReader,
    chunk,
    last_chunk,
    request_head_bytes,
    response_head_bytes,
)
from trio_yastack.l7.http_proxy import (
    HttpConnectionManagerRuntime,
    ProxyLimits,
    _reason,
    _relay_head,
    _with_via,
)
from trio_yastack.l7.router import strip_hop_by_hop
from trio_yastack.l7.upstream import ClusterRuntime

# --- the heads, against h11 ---


def _h11_response_bytes(
    headers: list[tuple[bytes, bytes]],
    body: list[bytes],
    trailers: list[tuple[bytes, bytes]],
    status: int = 200,
) -> bytes:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    out = server.send(h11.Response(status_code=status, headers=headers, reason=b"OK")) or b""
    for data in body:
        out += server.send(h11.Data(data=data)) or b""
    return out + (server.send(h11.EndOfMessage(headers=trailers)) or b"")


@pytest.mark.parametrize("close", [False, True])
def test_a_length_framed_response_is_what_h11_writes(close: bool) -> None:
    headers = [(b"content-length", b"5"), (b"x-a", b"1"), (b"via", b"1.1 trio_yastack")]
    if close:
        headers.append((b"connection", b"close"))
    ours = response_head_bytes(200, b"OK", headers, chunked=False) + b"hello"
    assert ours == _h11_response_bytes(headers, [b"hel", b"lo"], [])


@pytest.mark.parametrize("trailers", [[], [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]])
def test_a_chunked_response_is_what_h11_writes(trailers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"x-a", b"1"), (b"connection", b"close")]
    ours = response_head_bytes(200, b"OK", headers, chunked=True) + chunk(b"abc") + chunk(b"d" * 300)
    ours += last_chunk(trailers)
    assert ours == _h11_response_bytes(headers, [b"abc", b"d" * 300], trailers)


def test_a_204_is_what_h11_writes() -> None:
    headers = [(b"x-a", b"1")]
    assert response_head_bytes(204, b"OK", headers, chunked=False) == _h11_response_bytes(
        headers, [], [], 204
    )


def test_a_request_head_is_what_h11_writes_host_first() -> None:
    headers = [(b"x-a", b"1"), (b"host", b"example"), (b"x-forwarded-for", b"198.18.0.1")]
    client = h11.Connection(h11.CLIENT)
    expected = client.send(h11.Request(method=b"GET", target=b"/p?q=1", headers=headers))
    assert request_head_bytes(b"GET", b"/p?q=1", headers) == expected


# --- which requests the fast path takes ---


def test_a_plain_request_is_parsed_once_names_lowercased_values_trimmed() -> None:
    parser = RequestParser()
    request = parser.parse(
        b"GET /a?b=1 HTTP/1.1\r\nHost: example \r\nX-Thing:  a b\t\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(request, PlainRequest)
    assert (request.method, request.target, request.http_version) == (b"GET", b"/a?b=1", b"1.1")
    assert request.headers == [(b"host", b"example"), (b"x-thing", b"a b"), (b"content-length", b"0")]
    # the same parser takes the connection's next request
    again = parser.parse(b"DELETE /x HTTP/1.1\r\nhost: h\r\nconnection: Keep-Alive\r\n\r\n")
    assert again is not None and again.method == b"DELETE" and again.body == b""
    posted = parser.parse(b"POST /y HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc")
    assert posted is not None and posted.body == b"abc"


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nabc",  # a body not all there yet
        b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: h\r\nupgrade: websocket\r\n\r\n",
        b"PUT / HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\nhost: h\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nhost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host: h11's 400
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nhost: h\r\n\r\n",  # absolute form
        b"GET / HTTP/1.1\r\nhost: h\r\n\r\nGET / HTTP/1.1\r\nhost: h\r\n\r\n",  # pipelined
        b"GET / HTTP/1.1\r\nhost: h\r\n",  # not whole yet
        b"GET / HTTP/1.1\r\nhost h\r\n\r\n",  # malformed
        b"\x16\x03\x01\x00",  # not HTTP
    ],
)
def test_everything_else_is_left_to_h11(raw: bytes) -> None:
    assert RequestParser().parse(raw) is None


@pytest.mark.parametrize(
    ("raw", "taken"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: \xffb\r\n\r\n", True),
        (b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb \t\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", True),
        (b'GET /?q="<>" HTTP/1.1\r\nHost: h\r\n\r\n', True),
        (b"GET /a|b{c} HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (b"OPTIONS /x HTTP/1.1\r\nHOST: h\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", True),
        # llhttp is stricter than h11 here: h11 decides (it accepts these, or refuses the last)
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX:b\r\n  folded\r\n\r\n", False),
        (b"GET / HTTP/1.1\nHost: h\n\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 00\r\n\r\n", True),
        (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", True),
        (b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", False),
    ],
)
def test_what_the_fast_path_takes_h11_takes_the_same_way(raw: bytes, taken: bool) -> None:
    request = RequestParser().parse(raw)
    assert (request is not None) == taken
    if request is None:
        return  # h11's to decide (the proxy's tests of malformed requests hold its answers)
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    assert (request.method, request.target, request.http_version) == (
        event.method,
        event.target,
        event.http_version,
    )
    assert request.headers == list(event.headers)
    body = b""
    while isinstance(event := server.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage) and body == request.body  # the whole body, as for h11


# --- reading responses ---


def _fed(*parts: bytes) -> ResponseReader:
    reader = ResponseReader()
    for part in parts:
        reader.feed(part)
    return reader


def test_a_length_framed_response_in_pieces() -> None:
    reader = _fed(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-A: b \r\n", b"\r\nhel")
    assert reader.head is not None and reader.head.status_code == 200
    assert reader.head.headers == [(b"content-length", b"6"), (b"x-a", b"b")]
    assert reader.take_body() == [b"hel"] and not reader.done
    reader.feed(b"lo\n")
    assert reader.take_body() == [b"lo\n"] and reader.done and reader.reusable
    reader.start()  # the next response on the same connection
    reader.feed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    assert reader.head is not None and reader.head.status_code == 404 and reader.done


def test_a_chunked_response_with_trailers_after_an_informational_one() -> None:
    reader = _fed(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n",
    )
    assert reader.head is not None and reader.head.status_code == 200
    assert reader.head.headers == [(b"transfer-encoding", b"chunked")]  # the 103's dropped
    assert reader.framing == "chunked" and reader.take_body() == [b"abc"]
    assert reader.trailers == [(b"grpc-status", b"0")] and reader.done and reader.reusable


def test_a_response_framed_by_the_close() -> None:
    reader = _fed(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nabc")
    assert reader.framing == "eof" and not reader.done
    assert reader.eof() and reader.done and not reader.reusable
    truncated = _fed(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc")
    assert not truncated.eof()  # the upstream closed mid-body: an error for the caller


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1",  # bytes after the response
    ],
)
def test_a_connection_that_cannot_carry_another_request(raw: bytes) -> None:
    reader = _fed(raw)
    assert reader.done and not reader.reusable


def test_204_has_no_body() -> None:
    reader = _fed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert reader.done and reader.reusable and reader.take_body() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (MAX_RESPONSE_HEAD + 1),
    ],
)
def test_a_bad_response_is_h11_s_remote_protocol_error(raw: bytes) -> None:
    with pytest.raises(h11.RemoteProtocolError):
        _fed(raw)


# --- whole exchanges through the proxy: the fast path against h11 ---

_RESPONSES = {
    b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: keep-alive\r\nX-Up: 1\r\n\r\nhello\n",
    b"/named": (
        b"HTTP/1.1 200 OK\r\nX-Private: secret\r\nConnection: x-private, keep-alive\r\nVia: 1.1 up\r\n"
        b"Content-Length: 2\r\nx-envoy-upstream-service-time: 7\r\n\r\nok"
    ),
    b"/chunked": (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\ngrpc-status: 0\r\n\r\n"
    ),
    b"/post": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngot\n",
    b"/early": b"HTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 204 No Content\r\nx-b: 2\r\n\r\n",
    b"/close": b"HTTP/1.1 200 OK\r\nx-c: 3\r\n\r\nuntil the close",
}


# What the client adds to each request in turn: the headers the proxy rewrites or drops
_EXTRA_HEADERS = [
    b"",
    b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n",
    b"X-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\nX-Forwarded-Proto: https\r\n",
    b"Via: 1.0 other\r\nX-Request-Id: abc\r\nvia: 1.1 more\r\n",
    b"X-Request-Id: one\r\nX-Request-Id: two\r\nX-Forwarded-For:\r\nContent-Length: 0\r\n",
]


_ROUTES = [route("/rw/", prefix_rewrite="/", host_rewrite_literal="backend.local"), route()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _exchanges(
    paths: list[bytes],
    manager: dict[str, Any] | None = None,
    extras: list[bytes] = _EXTRA_HEADERS,
    stats: dict[str, int] | None = None,
) -> tuple[list[bytes], list[bytes]]:
    """Each of ``paths`` as a GET (a POST for ``/post``, an OPTIONS for ``/options...``) with the
    next of ``extras`` through a fresh proxy (connection manager ``manager``) on kernel sockets, on
    one client connection (a new one after a response framed by the close): what the client
    received and what the backend received, per request; ``stats``: filled with the proxy's
    statistics at the end."""
    backend_port, proxy_port = _free_port(), _free_port()
    upstream_seen: list[bytes] = []

    async def backend(stream: trio.SocketStream) -> None:
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(buffer) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                upstream_seen.append(head + b"\r\n\r\n" + body)
                path = head.split(b" ")[1]
                await stream.send_all(_RESPONSES[path])
                if path == b"/close":
                    await stream.aclose()
                    return

    config = bootstrap(
        [http_listener(manager or hcm(_ROUTES), port=proxy_port, address="127.0.0.1")],
        [cluster("app", [backend_port], address="127.0.0.1")],
    )
    received: list[bytes] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_tcp, backend, backend_port, host="127.0.0.1"))
            async with running_proxy(config, None) as proxy:
                client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
                for number, path in enumerate(paths):
                    extra = extras[number % len(extras)]
                    method, body = (b"POST", b"posted body") if path == b"/post" else (b"GET", b"")
                    if path.startswith(b"/options"):
                        method = b"OPTIONS"
                    if body:
                        extra = b"Content-Length: %d\r\n" % len(body)
                    await client.send_all(
                        method
                        + b" "
                        + path
                        + b" HTTP/1.1\r\nHost: example\r\nX-Mine: 1\r\n"
                        + extra
                        + b"\r\n"
                        + body
                    )
                    reader = ResponseReader()  # the client's own parser of what the proxy wrote
                    got = b""
                    while not reader.done:
                        data = await client.receive_some(65536)
                        got += data
                        if not data:
                            assert reader.eof()
                            break
                        reader.feed(data)
                    # the service time may differ by a millisecond between the two runs
                    received.append(
                        b"\r\n".join(line for line in got.split(b"\r\n") if b"service-time" not in line)
                    )
                    if path == b"/close" or b"connection: close" in got:
                        await client.aclose()
                        client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
                await client.aclose()
                if stats is not None:
                    await _closed(proxy)
                    stats.update(proxy.stats.flat())
            nursery.cancel_scope.cancel()
    return received, upstream_seen


async def _closed(proxy: Any) -> None:
    """Until the proxy has counted the client's last close, in the connection manager's and the
    listener's statistics (they then settle)."""
    with trio.fail_after(5):
        while any(v for k, v in proxy.stats.flat().items() if k.endswith("downstream_cx_active")):
            await trio.sleep(0.01)


async def test_the_fast_path_writes_what_the_h11_path_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [b"/length", b"/chunked", b"/early", b"/length", b"/close", b"/rw/length", b"/named", b"/post"]
    taken: list[bool] = []
    parse = RequestParser.parse

    def counted(self: RequestParser, data: Any) -> PlainRequest | None:
        request = parse(self, data)
        taken.append(request is not None)
        return request

    monkeypatch.setattr(RequestParser, "parse", counted)
    fast = await _exchanges(paths)
    assert taken == [True] * len(paths)  # every request took the fast path
    monkeypatch.setattr(RequestParser, "parse", lambda self, data: None)  # all through h11
    general = await _exchanges(paths)
    assert fast == general
    client_side, upstream_side = fast
    assert client_side[1].endswith(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\ngrpc-status: 0\r\n\r\n")
    assert b"keep-alive" not in client_side[1]  # hop-by-hop: not relayed
    assert client_side[2].startswith(b"HTTP/1.1 204 No Content\r\n")  # the 103 not relayed
    assert client_side[4].endswith(b"Transfer-Encoding: chunked\r\n\r\nf\r\nuntil the close\r\n0\r\n\r\n")
    assert upstream_side[7].startswith(
        b"POST /post HTTP/1.1\r\nhost: example\r\nx-mine: 1\r\ncontent-length: 11\r\n"
    )
    assert upstream_side[7].endswith(b"\r\n\r\nposted body") and client_side[7].endswith(b"got\n")
    assert b"x-private" not in client_side[6] and b"via: 1.1 up, 1.1 trio_yastack\r\n" in client_side[6]
    assert upstream_side[0].startswith(b"GET /length HTTP/1.1\r\nhost: example\r\nx-mine: 1\r\n")
    assert b"x-forwarded-for: 127.0.0.1" in upstream_side[0] and b"via: 1.1 trio_yastack" in upstream_side[0]
    assert b"keep-alive" not in upstream_side[1] and b"te:" not in upstream_side[1]
    assert b"x-forwarded-for: 10.0.0.1,10.0.0.2, 127.0.0.1\r\nx-forwarded-proto: http" in upstream_side[2]
    assert b"via: 1.0 other,1.1 more, 1.1 trio_yastack" in upstream_side[3]
    assert b"x-request-id: abc" in upstream_side[3]
    assert upstream_side[5].startswith(b"GET /length HTTP/1.1\r\nhost: backend.local\r\n")
    assert b"x-envoy-original-path: /rw/length" in upstream_side[5]


async def _post(request: bytes, answers: list[bytes], **proxy: Any) -> tuple[bytes, list[bytes]]:
    """``request`` (whole) through a fresh proxy whose route retries 5xx once; the backend answers
    with ``answers`` in turn.  What the client received, and each request the backend received."""
    backend_port, proxy_port = _free_port(), _free_port()
    seen: list[bytes] = []
    replies = iter(answers)

    async def backend(stream: trio.SocketStream) -> None:
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                seen.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                await stream.send_all(next(replies))

    retried = route(retry_policy={"retry_on": "5xx", "num_retries": 1})
    config = bootstrap(
        [http_listener(hcm([retried]), port=proxy_port, address="127.0.0.1")],
        [cluster("app", [backend_port], address="127.0.0.1")],
    )
    got = b""
    reader = ResponseReader()  # the client's own parser of what the proxy wrote
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_tcp, backend, backend_port, host="127.0.0.1"))
            async with (
                running_proxy(config, None, **proxy),
                await trio.open_tcp_stream("127.0.0.1", proxy_port) as client,
            ):
                await client.send_all(request)
                while not reader.done:
                    data = await client.receive_some(65536)
                    assert data, "the proxy closed before its whole response"
                    got += data
                    reader.feed(data)
            nursery.cancel_scope.cancel()
    return got, seen


def _path(fast: bool, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The fast path (recording whether each request took it) or, if not ``fast``, h11 for all."""
    taken: list[bool] = []
    parse = RequestParser.parse

    def recorded(self: RequestParser, data: Any) -> PlainRequest | None:
        request = parse(self, data) if fast else None
        if fast:
            taken.append(request is not None)
        return request

    monkeypatch.setattr(RequestParser, "parse", recorded)
    return taken


_POST = b"POST /p HTTP/1.1\r\nHost: example\r\nContent-Length: 11\r\n\r\nposted body"


@pytest.mark.parametrize("fast", [True, False])
async def test_a_posted_body_is_replayed_on_a_retry(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _path(fast, monkeypatch)
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
    got, seen = await _post(_POST, [unavailable, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"])
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok\n")
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0].endswith(b"\r\n\r\nposted body")
    assert taken == ([True] if fast else [])


@pytest.mark.parametrize("fast", [True, False])
async def test_a_posted_body_over_the_limit_is_413(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _path(fast, monkeypatch)
    got, seen = await _post(_POST, [], limits=ProxyLimits(max_request_body=4))
    assert got.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n") and b"connection: close" in got
    assert seen == [] and taken == ([True] if fast else [])


async def test_the_fast_path_under_cors_writes_what_the_h11_path_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A filter that answers preflights itself and adds headers to responses keeps the fast path.
    cors = "envoy.filters.http.cors"
    policy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": "https://app.example"}],
        "allow_methods": "GET, PUT",
        "expose_headers": "x-reply",
    }
    vhost = {"name": "all", "domains": ["*"], "routes": [route()], "typed_per_filter_config": {cors: policy}}
    manager = hcm(virtual_hosts=[vhost])
    manager["typed_config"]["http_filters"].insert(
        0,
        {
            "name": cors,
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
        },
    )
    origin = b"Origin: https://app.example\r\n"
    extras = [origin + b"Access-Control-Request-Method: PUT\r\n", origin, b"Origin: https://evil.test\r\n"]
    paths = [b"/options/x", b"/length", b"/chunked"]
    taken = _path(True, monkeypatch)
    lean_taken = _lean(True, monkeypatch)
    lean_stats: dict[str, int] = {}
    fast = await _exchanges(paths, manager, extras, lean_stats)
    assert taken == [True] * len(paths) and lean_taken == [True] * len(paths)  # the lean path, filters too
    _lean(False, monkeypatch)  # the fast path's general objects
    objects_stats: dict[str, int] = {}
    assert await _exchanges(paths, manager, extras, objects_stats) == fast
    assert _ports_masked(lean_stats) == _ports_masked(objects_stats)
    _path(False, monkeypatch)
    assert await _exchanges(paths, manager, extras) == fast
    client_side, upstream_side = fast
    assert (
        client_side[0].startswith(b"HTTP/1.1 200 OK\r\n")
        and b"access-control-allow-methods: GET, PUT" in client_side[0]
    )
    assert b"access-control-expose-headers: x-reply" in client_side[1]
    assert b"access-control" not in client_side[2]
    assert [seen.split(b" ")[1] for seen in upstream_side] == [
        b"/length",
        b"/chunked",
    ]  # the preflight answered


# --- the lean path (HttpConnectionManagerRuntime._proxy_plain) against the general objects ---


def _lean(on: bool, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The lean path as it is (recording, per request it was offered, whether it took it) or, if
    not ``on``, declining every request (the fast path's general objects take them)."""
    taken: list[bool] = []
    lean = HttpConnectionManagerRuntime._proxy_plain

    async def recorded(self: HttpConnectionManagerRuntime, *args: Any) -> bool | None:
        if not on:
            return None
        keep = await lean(self, *args)
        taken.append(keep is not None)
        return keep

    monkeypatch.setattr(HttpConnectionManagerRuntime, "_proxy_plain", recorded)
    return taken


def _log_lines(path: Path) -> list[str]:
    """The access log's lines with what the clock decides masked (the start time, the duration,
    the upstream service time: Envoy's default format), and the upstream host's port."""
    out = []
    for line in path.read_text().splitlines():
        start, quoted, rest = line.partition('" ')
        fields = rest.split(" ", 6)
        fields[4] = fields[5] = "T"  # duration, upstream service time
        line = re.sub(r"^\[[^]]*\]", "[T]", start) + quoted + " ".join(fields)
        out.append(re.sub(r':\d+"$', ':P"', line))  # the upstream host's port: a free one per run
    return out


def _ports_masked(stats: dict[str, int]) -> dict[str, int]:
    """``stats`` with the listener's port (a free one per run) out of its scope's name."""
    return {re.sub(r"^listener\.127\.0\.0\.1_\d+", "listener.P", key): value for key, value in stats.items()}


_LEAN_PATHS = [b"/length", b"/chunked", b"/early", b"/length", b"/close", b"/rw/length", b"/named", b"/post"]


async def test_the_lean_path_answers_counts_and_logs_as_the_general_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runs = []
    for name, lean_on, fast in (("lean", True, True), ("objects", False, True), ("h11", False, False)):
        log = tmp_path / f"{name}.log"
        manager = hcm(_ROUTES, access_log=[file_log(log)])
        taken = _lean(lean_on, monkeypatch)
        _path(fast, monkeypatch)
        stats: dict[str, int] = {}
        client_side, upstream_side = await _exchanges(_LEAN_PATHS, manager, stats=stats)
        if lean_on:  # every GET took it; the POST (a body) is the general path's
            assert taken == [True] * (len(_LEAN_PATHS) - 1)
        runs.append((client_side, upstream_side, _ports_masked(stats), _log_lines(log)))
    lean, objects, general = runs
    # The bytes sent to the client include x-envoy-upstream-service-time's digits: "0" or "12" as
    # the clock decides (under load a run can take 10 ms or more), so those may differ a little.
    sent = "http.ingress.downstream_cx_tx_bytes_total"
    lean_sent, objects_sent = lean[2].pop(sent), objects[2].pop(sent)
    assert abs(lean_sent - objects_sent) <= 2 * len(_LEAN_PATHS) and lean_sent > 0
    assert lean[2] == objects[2]
    assert lean == objects
    # h11's path: the same bytes both ways and log lines (its statistics differ in how it finds a
    # pooled connection closed after /close: upstream_cx_destroy_remote_with_active_rq)
    assert lean[:2] == general[:2]
    assert len(lean[3]) == len(_LEAN_PATHS) and lean[3] == general[3]
    assert lean[2]["http.ingress.downstream_rq_2xx"] == len(_LEAN_PATHS)
    assert lean[2]["cluster.app.upstream_rq_200"] == 6 and lean[2]["cluster.app.upstream_rq_201"] == 1
    first = lean[3][0]
    assert first.startswith('[T] "GET /length HTTP/1.1" 200 - 0 6 T T "127.0.0.1" "-" "')
    assert first.endswith('" "example" "127.0.0.1:P"')


async def _one_failure(
    tmp_path: Path, name: str, backend: Callable[[trio.SocketStream], Awaitable[None]] | None, **action: Any
) -> tuple[bytes, dict[str, int], list[str]]:
    """A GET through a fresh proxy whose route (``action``) leads to ``backend`` (None: nothing
    listens there): what the client received, the statistics and the access log."""
    backend_port, proxy_port = _free_port(), _free_port()
    log = tmp_path / f"{name}.log"
    config = bootstrap(
        [
            http_listener(
                hcm([route(**action)], access_log=[file_log(log)]), port=proxy_port, address="127.0.0.1"
            )
        ],
        [cluster("app", [backend_port], address="127.0.0.1")],
    )
    got = b""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            if backend is not None:
                await nursery.start(partial(trio.serve_tcp, backend, backend_port, host="127.0.0.1"))
            async with running_proxy(config, None) as proxy:
                async with await trio.open_tcp_stream("127.0.0.1", proxy_port) as client:
                    await client.send_all(b"GET /f HTTP/1.1\r\nHost: example\r\nUser-Agent: t/1\r\n\r\n")
                    reader = ResponseReader()
                    while not reader.done:
                        data = await client.receive_some(65536)
                        assert data, "the proxy closed before its whole response"
                        got += data
                        reader.feed(data)
                await _closed(proxy)
                stats = _ports_masked(proxy.stats.flat())
            nursery.cancel_scope.cancel()
    return got, stats, _log_lines(log)


async def _silent(stream: trio.SocketStream) -> None:
    """A backend that reads the request and never answers."""
    with contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some(65536):
            pass


@pytest.mark.parametrize(
    ("backend", "action", "status", "flags"),
    [
        (None, {}, b"502", "UF"),  # nothing listens: a connect failure
        (_silent, {"timeout": "0.3s"}, b"504", "UT"),  # the route's timeout
    ],
)
async def test_the_lean_path_fails_as_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    backend: Callable[[trio.SocketStream], Awaitable[None]] | None,
    action: dict[str, Any],
    status: bytes,
    flags: str,
) -> None:
    taken = _lean(True, monkeypatch)
    lean = await _one_failure(tmp_path, "lean", backend, **action)
    assert taken == []  # raised its answer: neither kept nor declined
    _lean(False, monkeypatch)
    objects = await _one_failure(tmp_path, "objects", backend, **action)
    assert lean == objects
    got, stats, lines = lean
    assert got.startswith(b"HTTP/1.1 " + status) and stats["http.ingress.downstream_rq_5xx"] == 1
    assert len(lines) == 1 and f" {status.decode()} {flags} " in lines[0] and '"t/1"' in lines[0]


async def _on_a_pooled_connection(
    tmp_path: Path,
    name: str,
    backend: Callable[[trio.SocketStream], Awaitable[None]],
    manager: dict[str, Any] | None = None,
    **action: Any,
) -> tuple[list[bytes], dict[str, int], list[str]]:
    """Two GETs through a fresh proxy on one client connection (a new one if the first answer
    closes it), so that the second finds the first's upstream connection pooled (the lean path's
    wait without a cancel scope, in ``_proxy_plain``): what the client received for each (the
    service time masked), the statistics and the access log."""
    backend_port, proxy_port = _free_port(), _free_port()
    log = tmp_path / f"{name}.log"
    config = bootstrap(
        [
            http_listener(
                manager or hcm([route(**action)], access_log=[file_log(log)]),
                port=proxy_port,
                address="127.0.0.1",
            )
        ],
        [cluster("app", [backend_port], address="127.0.0.1")],
    )
    answers: list[bytes] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_tcp, backend, backend_port, host="127.0.0.1"))
            async with running_proxy(config, None) as proxy:
                client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
                for number in range(2):
                    await client.send_all(
                        b"GET /%d HTTP/1.1\r\nHost: example\r\nUser-Agent: t/1\r\n\r\n" % number
                    )
                    reader = ResponseReader()
                    got = b""
                    while not reader.done:
                        data = await client.receive_some(65536)
                        assert data, "the proxy closed before its whole response"
                        got += data
                        reader.feed(data)
                    answers.append(
                        b"\r\n".join(line for line in got.split(b"\r\n") if b"service-time" not in line)
                    )
                    if b"connection: close" in got:
                        await client.aclose()
                        client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
                await client.aclose()
                await _closed(proxy)
                stats = _ports_masked(proxy.stats.flat())
            nursery.cancel_scope.cancel()
    return answers, stats, _log_lines(log) if log.exists() else []


def _answers_once(then: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A backend that answers the first request on each connection, then (``then``) stays silent
    ("silent") or closes the connection without saying so ("close")."""

    async def backend(stream: trio.SocketStream) -> None:
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")
            if then == "close":
                await stream.aclose()
                return
            while await stream.receive_some(65536):
                pass

    return backend


@pytest.mark.parametrize(
    ("then", "action", "manager_extra", "second", "flags"),
    [
        ("silent", {"timeout": "0.3s"}, {}, b"504", "UT"),  # the route's timeout, kept by the timer
        ("silent", {}, {"stream_idle_timeout": "0.3s"}, b"408", "SI"),  # stream idle, the same way
        ("close", {}, {}, b"200", "-"),  # closed while pooled: once more on a fresh connection
    ],
)
async def test_the_lean_path_on_a_pooled_connection_fails_as_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    then: str,
    action: dict[str, Any],
    manager_extra: dict[str, Any],
    second: bytes,
    flags: str,
) -> None:
    unscoped = 0  # requests sent on a pooled connection the lean path took (its unscoped wait)
    idle_connection = ClusterRuntime.idle_connection

    def counted(self: ClusterRuntime, host: Any) -> Any:
        nonlocal unscoped
        conn = idle_connection(self, host)
        unscoped += conn is not None
        return conn

    monkeypatch.setattr(ClusterRuntime, "idle_connection", counted)
    runs = []
    for name, lean_on in (("lean", True), ("objects", False)):
        taken = _lean(lean_on, monkeypatch)
        log = tmp_path / f"{name}.log"
        manager = hcm([route(**action)], access_log=[file_log(log)], **manager_extra)
        runs.append(await _on_a_pooled_connection(tmp_path, name, _answers_once(then), manager))
        if lean_on:  # (a failure is raised as the general path raises it: not recorded)
            assert taken == ([True, True] if second == b"200" else [True])
            assert unscoped == 1  # the second request, on the pooled connection
    lean, objects = runs
    sent = "http.ingress.downstream_cx_tx_bytes_total"  # (the service time's digits: see above)
    assert abs(lean[1].pop(sent) - objects[1].pop(sent)) <= 4
    assert lean == objects
    answers, stats, lines = lean
    assert answers[0].startswith(b"HTTP/1.1 200") and answers[0].endswith(b"hello\n")
    assert answers[1].startswith(b"HTTP/1.1 " + second)
    assert len(lines) == 2 and f" {second.decode()} {flags} " in lines[1]
    if then == "close":
        assert stats["cluster.app.upstream_cx_destroy_remote_with_active_rq"] == 1
        assert stats["cluster.app.upstream_cx_total"] == 2
    else:
        assert stats["cluster.app.upstream_cx_total"] == 1  # the second request took the pooled one


# --- the relayed response head in one pass, against the general path's headers written by h11 ---

_UPSTREAM_HEADS = [
    [(b"content-length", b"6"), (b"server", b"nginx"), (b"connection", b"keep-alive")],
    [(b"server", b"up"), (b"via", b"1.0 a"), (b"via", b"1.1 b"), (b"keep-alive", b"timeout=5")],
    [(b"x-private", b"s"), (b"connection", b"x-private, keep-alive"), (b"content-length", b"2")],
    [(b"via", b"1.1 up"), (b"connection", b"via"), (b"transfer-encoding", b"chunked"), (b"x-a", b"1")],
    [(b"content-length", b"0"), (b"connection", b"Close"), (b"proxy-connection", b"x"), (b"te", b"t")],
]


@pytest.mark.parametrize("upstream", _UPSTREAM_HEADS)
@pytest.mark.parametrize("status", [200, 204, 404])
@pytest.mark.parametrize("added", [[], [(b"x-a", b"2"), (b"access-control-expose-headers", b"x-reply")]])
@pytest.mark.parametrize("close", [False, True])
def test_the_relayed_head_is_what_h11_writes_for_the_general_paths_headers(
    upstream: list[tuple[bytes, bytes]], status: int, added: list[tuple[bytes, bytes]], close: bool
) -> None:
    # _relay_head builds the common case's lines as it reads the upstream's fields, and takes a
    # list of pairs only for a Connection naming other fields or the filters' headers: both ways
    # must write what _UpstreamRequest._relay_response's steps give h11 to write.
    headers = _with_via([*strip_hop_by_hop(upstream), (b"x-envoy-upstream-service-time", b"7")])
    if added:
        names = {name for name, _ in added}
        headers = [h for h in headers if h[0] not in names] + added
    if close:
        headers.append((b"connection", b"close"))
    if status == 204:
        headers = [h for h in headers if h[0] not in (b"content-length", b"transfer-encoding")]
        upstream = [h for h in upstream if h[0] not in (b"content-length", b"transfer-encoding")]
    headers = [h for h in headers if h[0] != b"transfer-encoding"]  # h11 frames it itself
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    expected = server.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
    head, chunked = _relay_head(status, upstream, "7", added, close)
    assert head == expected
    assert chunked == (status != 204 and not any(h[0] == b"content-length" for h in headers))


def test_the_relayed_status_line_is_what_h11_writes_for_every_status() -> None:
    # _relay_head takes the status line from a table made from _reason's phrases (not formatted
    # per response): every three-digit final status, with a phrase (200, 418) or without one (299,
    # 599: the empty phrase), must come out as h11 writes it with _reason's phrase.
    upstream = [(b"content-length", b"0")]
    for status in range(200, 1000):
        server = h11.Connection(h11.SERVER)
        server.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        assert isinstance(server.next_event(), h11.Request)
        expected = server.send(h11.Response(status_code=status, headers=upstream, reason=_reason(status)))
        assert expected is not None
        head, _ = _relay_head(status, upstream, "7", [], False)
        assert head.split(b"\r\n", 1)[0] == expected.split(b"\r\n", 1)[0], status
