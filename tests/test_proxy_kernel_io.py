"""The proxy's direct kernel-socket I/O (``l7/_kernel_io.py``) and its per-request helpers that
replaced slower library calls (``RequestIds``, ``_reason``): each holds to what it replaced."""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import uuid
from collections.abc import AsyncIterator
from functools import partial
from http import HTTPStatus
from typing import Any

import h11
import pytest
import trio
import trio.testing
from proxy_helpers import bootstrap, cluster, hcm, http_listener, running_proxy

from trio_yastack.l7 import _kernel_io as kernel_io
from trio_yastack.l7 import http_proxy
from trio_yastack.l7._kernel_io import (
    expire,
    kernel_socket,
    notify_closing,
    receive_later,
    receive_now,
    receive_some,
    receive_until,
    send_all,
    send_now,
    wait_readable,
)
from trio_yastack.l7.http_proxy import RequestIds, _reason


async def _socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair of kernel TCP streams on loopback."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    assert isinstance(server, trio.SocketStream)
    return client, server


async def test_kernel_socket_only_for_a_kernel_socket_stream() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw = kernel_socket(client)
        assert raw is not None and raw.fileno() == client.socket.fileno()
    a, _b = trio.testing.memory_stream_pair()
    assert kernel_socket(a) is None  # not a SocketStream: the stream's own methods


async def test_send_all_and_receive_some_move_every_byte_with_backpressure() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        # Far more than the socket buffers hold: send_all must wait for the reader to drain them.
        payload = random.Random(7).randbytes(8 * 1024 * 1024)
        received = bytearray()

        async def reader() -> None:
            while len(received) < len(payload):
                data = await receive_some(raw_in, 65536)
                assert data, "EOF before the whole payload"
                received.extend(data)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await send_all(raw_out, payload)
        assert bytes(received) == payload
        await client.aclose()
        with trio.fail_after(5):
            assert await receive_some(raw_in, 1024) == b""  # EOF


async def test_receive_now_and_send_now_never_wait() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        assert receive_now(raw_in, 1024) is None  # nothing there: the caller would wait
        assert send_now(raw_out, b"abc") == 3
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(raw_in)
        assert receive_now(raw_in, 1024) == b"abc"
        # Far more than the socket buffers hold: taken in part, then not at all, never waiting.
        payload = b"x" * (16 * 1024 * 1024)
        first = send_now(raw_out, payload)
        assert 0 < first < len(payload)
        while (more := send_now(raw_out, payload)) > 0:  # bounded: the buffers fill
            first += more
        assert more == 0 and first < len(payload)
        raw_out.shutdown(socket.SHUT_WR)
        taken = 0
        with trio.fail_after(10):
            while True:
                data = await receive_some(raw_in, 1 << 20)
                if not data:
                    break
                taken += len(data)
        assert taken == first and receive_now(raw_in, 1024) == b""  # EOF


async def test_receive_later_waits_first_then_reads() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        with trio.move_on_after(0.05) as waiting:  # nothing sent: it waits (cancellably)
            await receive_later(raw_in, 1024)
        assert waiting.cancelled_caught
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, raw_out, b"late")
                assert await receive_later(raw_in, 1024) == b"late"


async def test_receive_some_waits_and_is_cancellable() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw = kernel_socket(server)
        assert raw is not None
        got: list[bytes] = []
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    got.append(await receive_some(raw, 1024))

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                assert got == []  # nothing sent: it waits
                await client.send_all(b"ping")
        assert got == [b"ping"]
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await receive_some(raw, 1024)


async def test_a_wait_ends_when_another_task_closes_the_stream() -> None:
    client, server = await _socket_streams()
    async with client:
        raw = kernel_socket(server)
        assert raw is not None
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def close_soon() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    notify_closing(raw)  # (the kernel drops a closed descriptor from an epoll silently)
                    await server.aclose()

                nursery.start_soon(close_soon)
                with pytest.raises(trio.ClosedResourceError):
                    await receive_some(raw, 1024)


async def test_checkpoints_like_trio() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        with trio.testing.assert_checkpoints():
            await send_all(raw_out, b"x")
        with trio.testing.assert_checkpoints():
            assert await receive_some(raw_in, 16) == b"x"
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await send_all(raw_out, b"y")  # a cancelled caller sends nothing
        client.socket.shutdown(1)
        with trio.fail_after(5):
            assert await receive_some(raw_in, 16) == b""  # only the EOF: "y" was never sent


async def test_an_edge_that_came_while_nobody_waited_is_not_lost() -> None:
    # The reads wait on an edge-triggered epoll: data that arrives while the reader is busy
    # elsewhere (its edge seen by the reactor, no waiter) must still end the next wait.
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        with trio.move_on_after(0.05):  # registers the socket, and waits in vain
            await receive_later(raw_in, 1024)
        assert send_now(raw_out, b"first") == 5
        await trio.testing.wait_all_tasks_blocked()  # the reactor has seen the edge: nobody waits
        with trio.fail_after(5):
            assert await receive_later(raw_in, 1024) == b"first"  # (wait first: the mark ends it)
        # A read that takes part of what is there: the rest needs no new edge.
        assert send_now(raw_out, b"0123456789") == 10
        with trio.fail_after(5):
            got = b""
            while len(got) < 10:
                got += await receive_some(raw_in, 3)
        assert got == b"0123456789"
        # A stale mark (its data read by receive_now) costs a read, then a real wait.
        assert send_now(raw_out, b"x") == 1
        await trio.testing.wait_all_tasks_blocked()
        assert receive_now(raw_in, 1024) == b"x"
        with trio.move_on_after(0.05) as waiting:
            await receive_later(raw_in, 1024)
        assert waiting.cancelled_caught


async def test_many_waits_on_one_socket_and_a_reused_descriptor() -> None:
    # Cancelled waits leave no waiter behind; a second reader is refused as trio refuses it; a
    # descriptor number reused by a new socket is registered anew (not taken for the old one).
    client, server = await _socket_streams()
    raw_out, raw_in = kernel_socket(client), kernel_socket(server)
    assert raw_out is not None and raw_in is not None
    for _ in range(3):
        with trio.move_on_after(0.01) as waiting:
            await receive_some(raw_in, 16)
        assert waiting.cancelled_caught
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_some, raw_in, 16)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await receive_some(raw_in, 16)
            await send_all(raw_out, b"z")  # ends the first reader's wait
    fd = raw_in.fileno()
    await server.aclose()
    await client.aclose()
    for _ in range(3):  # the same numbers come back for the next sockets
        client, server = await _socket_streams()
        async with client, server:
            raw_out, raw_in = kernel_socket(client), kernel_socket(server)
            assert raw_out is not None and raw_in is not None
            reused = fd in (raw_in.fileno(), raw_out.fileno())
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_all, raw_out, b"again")
                    assert await receive_later(raw_in, 16) == b"again"
                    nursery.start_soon(send_all, raw_in, b"back")
                    assert await receive_later(raw_out, 16) == b"back"
        if reused:
            break
    assert reused, "the descriptor number was never reused: the case was not tried"


async def test_a_socket_is_registered_once_for_all_its_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The point of the reactor: no epoll_ctl per wait (trio's epoll re-arms every wait).
    calls: list[str] = []
    real_epoll = select.epoll

    class CountingEpoll:  # (select.epoll cannot be subclassed)
        def __init__(self) -> None:
            self._epoll = real_epoll()

        def fileno(self) -> int:
            return self._epoll.fileno()

        def register(self, fd: int, mask: int) -> None:
            calls.append("register")
            self._epoll.register(fd, mask)

        def modify(self, fd: int, mask: int) -> None:
            calls.append("modify")
            self._epoll.modify(fd, mask)

        def unregister(self, fd: int) -> None:
            calls.append("unregister")
            self._epoll.unregister(fd)

        def poll(self, timeout: float) -> list[tuple[int, int]]:
            return self._epoll.poll(timeout)

        def close(self) -> None:
            self._epoll.close()

    monkeypatch.setattr(kernel_io.select, "epoll", CountingEpoll)  # before this run's first wait
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        with trio.fail_after(10):
            for number in range(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_all, raw_out, b"%d" % number)
                    if number % 2:
                        assert await receive_later(raw_in, 16) == b"%d" % number
                    else:
                        assert await receive_until(raw_in, 16, trio.current_time() + 5) == b"%d" % number
    assert calls == ["register"]


async def test_receive_until_keeps_its_deadline_without_a_cancel_scope() -> None:
    # The deadlines are kept by the reactor's timer: each wait ends by its own, an earlier one
    # set while the timer sleeps towards a later one included; a wait that gets its data first
    # leaves nothing behind that could end a later wait.
    first, first_server = await _socket_streams()
    second, second_server = await _socket_streams()
    async with first, first_server, second, second_server:
        raw_a, raw_a_in = kernel_socket(first), kernel_socket(first_server)
        raw_b, raw_b_in = kernel_socket(second), kernel_socket(second_server)
        assert raw_a and raw_a_in and raw_b and raw_b_in
        ended: dict[str, float] = {}

        async def wait(name: str, raw: socket.socket, seconds: float) -> None:
            start = trio.current_time()
            assert await receive_until(raw, 16, start + seconds) is None
            ended[name] = trio.current_time() - start

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, "long", raw_a_in, 0.5)
                await trio.testing.wait_all_tasks_blocked()  # the timer aims at the long one
                nursery.start_soon(wait, "short", raw_b_in, 0.05)
        assert 0.05 <= ended["short"] < 0.4 <= 0.5 <= ended["long"]
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, raw_a, b"in time")
                assert await receive_until(raw_a_in, 16, trio.current_time() + 0.1) == b"in time"
        with trio.CancelScope() as scope:  # cancelled by a scope of the caller's, as any wait
            scope.deadline = trio.current_time() + 0.02
            await receive_until(raw_a_in, 16, trio.current_time() + 0.05)
        assert scope.cancelled_caught
        await trio.sleep(0.1)  # past both deadlines: neither may end the next wait early
        start = trio.current_time()
        assert await receive_until(raw_a_in, 16, start + 0.05) is None
        assert trio.current_time() - start >= 0.05
        with trio.fail_after(5):  # a deadline passed already: no wait, None
            assert await receive_until(raw_a_in, 16, trio.current_time() - 1) is None


async def test_wait_readable_then_receive_now_as_the_proxy_reads() -> None:
    # The proxy's upstream and idle waits call wait_readable themselves and read with
    # receive_now (no receive_until frame): True once the socket may be read (at once, without a
    # park, on a ready mark, which may be stale: the read then finds nothing and the caller waits
    # again), False when the deadline passes or expire() ends the wait.
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        start = trio.current_time()
        assert await wait_readable(raw_in, start + 0.05) is False  # registers it; nothing came
        assert trio.current_time() - start >= 0.05
        assert send_now(raw_out, b"x") == 1
        await trio.testing.wait_all_tasks_blocked()  # the reactor saw the edge: a ready mark
        assert receive_now(raw_in, 16) == b"x"  # read before the wait: the mark is stale now
        with trio.fail_after(5):
            assert await wait_readable(raw_in, trio.current_time() + 5) is True  # the mark, no park
        assert receive_now(raw_in, 16) is None  # stale: the caller waits again, for a real edge
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, raw_out, b"answer")
                assert await wait_readable(raw_in, trio.current_time() + 5) is True
        assert receive_now(raw_in, 16) == b"answer"
        expire(raw_in)  # a drain before the wait: the next wait ends at once, False
        with trio.fail_after(5):
            assert await wait_readable(raw_in) is False


def test_request_ids_are_uuid4_text_of_the_drawn_bits() -> None:
    """Each id is ``uuid.UUID(bytes=<the next 16 drawn bytes>, version=4)``'s text: the drawn bits
    kept but the version and variant (as Envoy's UUID4), across a block's end too."""
    drawn: list[bytes] = []
    source = random.Random(20)

    def randbytes(n: int) -> bytes:
        data = source.randbytes(n)
        drawn.append(data)
        return data

    ids = RequestIds(randbytes)
    made = [ids.next() for _ in range(3 * 256 + 5)]
    assert len(drawn) == 4 and all(len(block) == 16 * 256 for block in drawn)
    bits = b"".join(drawn)
    for i, value in enumerate(made):
        expected = uuid.UUID(bytes=bits[16 * i : 16 * i + 16], version=4)
        assert value == str(expected).encode()
        parsed = uuid.UUID(value.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(made)) == len(made)
    extremes = RequestIds(lambda n: b"\xff" * n), RequestIds(lambda n: b"\x00" * n)
    assert extremes[0].next() == str(uuid.UUID(int=(1 << 128) - 1, version=4)).encode()
    assert extremes[1].next() == str(uuid.UUID(int=0, version=4)).encode()


def test_request_ids_default_to_the_systems_csprng() -> None:
    assert RequestIds.__init__.__defaults__ == (os.urandom,)  # as Envoy's (RAND_bytes), not random's
    assert uuid.UUID(RequestIds().next().decode()).version == 4


def test_reason_is_httpstatus_phrase() -> None:
    for status in range(0, 1000):
        try:
            expected = HTTPStatus(status).phrase.encode()
        except ValueError:
            expected = b""
        assert _reason(status) == expected


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_proxy_on_kernel_sockets_does_its_io_through_kernel_io(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both legs on loopback kernel sockets: every request's four system calls go through
    # _kernel_io (counted here), and keep-alive holds on both sides.
    calls = {"send": 0, "receive": 0}

    def counted(name: str, fn: Any) -> Any:
        async def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return await fn(*args)

        return wrapper

    def counted_now(name: str, fn: Any) -> Any:  # the calls that never wait
        def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return fn(*args)

        return wrapper

    # (the connections call their io module's waits and general reads and writes: _kernel_io's)
    monkeypatch.setattr(kernel_io, "send_all", counted("send", kernel_io.send_all))
    monkeypatch.setattr(kernel_io, "receive_some", counted("receive", kernel_io.receive_some))
    monkeypatch.setattr(kernel_io, "receive_later", counted("receive", kernel_io.receive_later))
    monkeypatch.setattr(http_proxy, "send_now", counted_now("send", http_proxy.send_now))
    monkeypatch.setattr(http_proxy, "receive_now", counted_now("receive", http_proxy.receive_now))
    backend_port, proxy_port = _free_port(), _free_port()
    backend_connections = 0

    async def backend(stream: trio.SocketStream) -> None:
        nonlocal backend_connections
        backend_connections += 1
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                _head, _, buffer = buffer.partition(b"\r\n\r\n")
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")

    config = bootstrap(
        [http_listener(hcm(), port=proxy_port, address="127.0.0.1")],
        [cluster("app", [backend_port], address="127.0.0.1")],
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_tcp, backend, backend_port, host="127.0.0.1"))
            async with running_proxy(config, None):
                client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
                async with client:
                    conn = h11.Connection(h11.CLIENT)
                    for _ in range(3):
                        request = h11.Request(method="GET", target="/", headers=[("host", "example")])
                        await client.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
                        body = b""
                        while True:
                            event = conn.next_event()
                            if event is h11.NEED_DATA:
                                conn.receive_data(await client.receive_some(65536))
                            elif isinstance(event, h11.Response):
                                assert event.status_code == 200
                            elif isinstance(event, h11.Data):
                                body += event.data
                            elif isinstance(event, h11.EndOfMessage):
                                break
                        assert body == b"hello\n"
                        conn.start_next_cycle()
            nursery.cancel_scope.cancel()
    assert backend_connections == 1  # the upstream connection was pooled and reused
    assert calls["send"] >= 6  # a request out and a response out per request
    assert calls["receive"] >= 6  # a request in and a response in per request


async def test_expire_ends_a_wait_now_or_the_next_one() -> None:
    # What a drain does to a connection waiting for its next request (_Downstream.cancel).
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        expire(raw_in)  # never waited on: not registered, nothing to end
        with trio.move_on_after(0.05) as waiting:
            await receive_until(raw_in, 16, trio.current_time() + 10)
        assert waiting.cancelled_caught  # (the mark was not kept for it)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                got: list[bytes | None] = []

                async def wait() -> None:
                    got.append(await receive_until(raw_in, 16, trio.current_time() + 10))

                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                expire(raw_in)
        assert got == [None]
        expire(raw_in)  # nobody waits: the next wait ends at once
        with trio.fail_after(5):
            assert await receive_until(raw_in, 16, trio.current_time() + 10) is None
        assert send_now(raw_out, b"data") == 4  # and only that one
        with trio.fail_after(5):
            assert await receive_until(raw_in, 16, trio.current_time() + 10) == b"data"


@contextlib.asynccontextmanager
async def _kernel_proxy_exchange(manager: dict[str, Any]) -> AsyncIterator[tuple[Any, trio.SocketStream]]:
    """A proxy on kernel sockets (connection manager ``manager``) before a backend that answers
    ``hello``, and a client connection that has had one answer through it."""
    backend_port, proxy_port = _free_port(), _free_port()

    async def backend(stream: trio.SocketStream) -> None:
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                _head, _, buffer = buffer.partition(b"\r\n\r\n")
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")

    config = bootstrap(
        [http_listener(manager, port=proxy_port, address="127.0.0.1")],
        [cluster("app", [backend_port], address="127.0.0.1")],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_tcp, backend, backend_port, host="127.0.0.1"))
        async with running_proxy(config, None) as proxy:
            client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
            async with client:
                await client.send_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
                got = b""
                while not got.endswith(b"hello\n"):
                    data = await client.receive_some(65536)
                    assert data
                    got += data
                assert got.startswith(b"HTTP/1.1 200")
                yield proxy, client
        nursery.cancel_scope.cancel()


async def _eof(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass


async def test_the_idle_wait_on_kernel_sockets_times_out_and_counts() -> None:
    # The wait for the next request keeps its idle timeout without a cancel scope.
    manager = hcm(common_http_protocol_options={"idle_timeout": "0.3s"})
    with trio.fail_after(20):
        async with _kernel_proxy_exchange(manager) as (proxy, client):
            answered = trio.current_time()
            await _eof(client)
            assert 0.3 <= trio.current_time() - answered < 2.0
            with trio.fail_after(5):
                while not proxy.stats.value("http.ingress.downstream_cx_idle_timeout"):
                    await trio.sleep(0.01)


async def test_a_drain_closes_an_idle_kernel_connection_at_once() -> None:
    with trio.fail_after(20):
        async with _kernel_proxy_exchange(hcm()) as (proxy, client):  # idle timeout: an hour
            await trio.sleep(0.05)  # the proxy waits for the next request
            proxy.shutdown()
            with trio.fail_after(0.9):  # (drain_time is 1 s: this is the drain's own close)
                await _eof(client)
            assert proxy.stats.value("http.ingress.downstream_cx_idle_timeout") == 0
