"""``l7/_stack_io.py``: the proxy's reads, writes and waits straight on the stack's sockets.

Two stacks on the in-process memory wire under trio's MockClock (``socket_helpers.two_stacks``,
the ``autojump_clock`` fixture): A (198.18.0.2) and B (198.18.0.1), a TCP connection between
them, the waits on A's end.  What is checked is what :mod:`._kernel_io` promises for a kernel
socket: a wait returns at once when there is something to read, else when it comes; False when
its deadline passes first (the timer's, no cancel scope) or :func:`expire` ends it; a closed
socket's wait raises ``ClosedResourceError``; cancellation leaves the socket's waiter; and a
wake-up for anything but data (the peer's ACK) parks again.  Then the proxy over the stack does
its requests through these functions and never through ``trio.SocketStream``'s methods.
"""

from __future__ import annotations

import socket as stdlib_socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from proxy_helpers import (
    A_IP,
    BackendApp,
    Client,
    cluster,
    connect,
    http_bootstrap,
    running_proxy,
    start_backend,
)
from socket_helpers import stream_pair, two_stacks

from trio_yastack import Stack
from trio_yastack.l7 import _kernel_io, _stack_io
from trio_yastack.l7._kernel_io import receive_now, send_now
from trio_yastack.l7._stack_io import StackRaw, expire, stream_io, wait_readable

PORT = 7000
LIMIT = 300  # simulated seconds any one test may take before it counts as hung


@asynccontextmanager
async def _stacks() -> AsyncIterator[tuple[Stack, Stack]]:
    """``two_stacks()`` for at most :data:`LIMIT` simulated seconds (a wait that never ends fails)."""
    async with two_stacks() as (a, b):
        with trio.fail_after(LIMIT):
            yield a, b


async def _raws(a: Stack, b: Stack) -> tuple[StackRaw, trio.SocketStream, trio.SocketStream]:
    """A's end as :class:`StackRaw` (checked to be what ``stream_io`` gives), and both streams."""
    a_stream, b_stream = await stream_pair(a, b, PORT)
    raw, io = stream_io(a_stream)
    assert isinstance(raw, StackRaw) and io is _stack_io
    return raw, a_stream, b_stream


async def test_stream_io_picks_the_module_for_the_socket(autojump_clock: trio.testing.MockClock) -> None:
    async with _stacks() as (a, b):
        _raw, a_stream, b_stream = await _raws(a, b)
        assert stream_io(b_stream)[1] is _stack_io
        bridge = trio.StapledStream(a_stream, b_stream)  # any other stream: its own methods
        assert stream_io(bridge)[0] is None
        a_stream.socket.close()  # closed: no connection's waiter to wait on
        assert stream_io(a_stream)[0] is None
    kernel_a, kernel_b = trio.socket.socketpair()
    with kernel_a, kernel_b:
        raw, io = stream_io(trio.SocketStream(kernel_a))
        assert isinstance(raw, stdlib_socket.socket) and io is _kernel_io


async def test_reads_writes_and_waits(autojump_clock: trio.testing.MockClock) -> None:
    async with _stacks() as (a, b):
        raw, a_stream, b_stream = await _raws(a, b)
        assert _stack_io.receive_now(raw, 100) is None  # nothing yet, told without a read
        assert receive_now(raw, 100) is None  # the generic one on StackRaw: BlockingIOError inside
        assert send_now(raw, b"ping") == 4
        assert await b_stream.receive_some(100) == b"ping"
        got: list[bool] = []

        async def waiter() -> None:
            got.append(await wait_readable(raw))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # parked: nothing to read
            await b_stream.send_all(b"pong")
        assert got == [True]
        assert _stack_io.receive_now(raw, 100) == b"pong"
        await b_stream.send_all(b"more")
        await trio.testing.wait_all_tasks_blocked()
        assert await wait_readable(raw, trio.current_time() + 1) is True  # there already
        assert await _stack_io.receive_some(raw, 100) == b"more"
        big = bytes(range(256)) * 4096  # 1 MiB: more than the send buffer holds at once
        received = bytearray()

        async def drain() -> None:
            while len(received) < len(big):
                received.extend(await b_stream.receive_some(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await _stack_io.send_all(raw, big)
        assert bytes(received) == big
        await b_stream.aclose()  # the peer's FIN: readable, and the read says the end
        assert await wait_readable(raw) is True
        assert _stack_io.receive_now(raw, 100) == b""
        await a_stream.aclose()


async def test_deadline_passes_without_a_cancel_scope(autojump_clock: trio.testing.MockClock) -> None:
    async with _stacks() as (a, b):
        raw, a_stream, b_stream = await _raws(a, b)
        start = trio.current_time()
        assert await wait_readable(raw, start + 5.0) is False
        assert trio.current_time() == pytest.approx(start + 5.0, abs=0.01)
        # A later and an earlier deadline: the timer moves to the earlier one.
        late: list[bool] = []

        async def wait_late() -> None:
            late.append(await wait_readable(raw, trio.current_time() + 100.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_late)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(50.0)
            assert late == []
        assert late == [False]
        # Data before the deadline: True, and the deadline leaves nothing behind for the next wait.
        got: list[bool] = []

        async def wait_data() -> None:
            got.append(await wait_readable(raw, trio.current_time() + 1.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_data)
            await trio.testing.wait_all_tasks_blocked()
            await b_stream.send_all(b"x")
        assert got == [True]
        assert _stack_io.receive_now(raw, 10) == b"x"
        await trio.sleep(2.0)  # past the old deadline
        got.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_data)
            await trio.testing.wait_all_tasks_blocked()
            await b_stream.send_all(b"y")
        assert got == [True]
        await a_stream.aclose()
        await b_stream.aclose()


async def test_expire_ends_the_wait_now_or_the_next(autojump_clock: trio.testing.MockClock) -> None:
    async with _stacks() as (a, b):
        raw, a_stream, b_stream = await _raws(a, b)
        expire(raw)  # nobody waits: the next wait ends at once
        start = trio.current_time()
        assert await wait_readable(raw) is False
        got: list[bool] = []

        async def waiter() -> None:
            got.append(await wait_readable(raw))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            expire(raw)
        assert got == [False]
        assert trio.current_time() == start  # no time passed: ended, not timed out
        await b_stream.send_all(b"z")  # and the mark went with those waits
        assert await wait_readable(raw) is True
        await a_stream.aclose()
        await b_stream.aclose()


async def test_close_cancel_and_a_wake_up_for_an_ack(autojump_clock: trio.testing.MockClock) -> None:
    async with _stacks() as (a, b):
        raw, a_stream, b_stream = await _raws(a, b)
        waiter = raw.waiter
        # Cancelled: the task leaves the socket's waiter, and a later wait works.
        with trio.move_on_after(1.0) as scope:
            await wait_readable(raw, trio.current_time() + 10.0)
        assert scope.cancelled_caught and len(waiter) == 0
        # A wake-up for another change of the connection (B's ACK of A's data): parked again.
        got: list[bool] = []

        async def reader() -> None:
            got.append(await wait_readable(raw))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            wakeups = a.runtime_statistics()["wakeups"]
            await a_stream.send_all(b"data")
            assert await b_stream.receive_some(10) == b"data"
            await trio.sleep(1.0)  # B's (delayed) ACK arrives and wakes A's waiter
            assert a.runtime_statistics()["wakeups"] > wakeups
            assert got == [] and len(waiter) == 1
            await b_stream.send_all(b"answer")
        assert got == [True]
        assert _stack_io.receive_now(raw, 100) == b"answer"
        # Closed by another task while waiting: ClosedResourceError, as trio's.
        closed: list[BaseException] = []

        async def closed_reader() -> None:
            try:
                await wait_readable(raw)
            except trio.ClosedResourceError as exc:
                closed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(closed_reader)
            await trio.testing.wait_all_tasks_blocked()
            a_stream.socket.close()
        assert len(closed) == 1
        with pytest.raises(trio.ClosedResourceError):
            await wait_readable(raw)
        await b_stream.aclose()


async def test_the_proxy_over_the_stack_does_its_io_here(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The proxy on stack A, a client and a backend on B: a keep-alive client's requests go
    # through _stack_io's waits (two per request: the client's next request, the upstream's
    # answer), and no SocketStream method is called on a socket of A's.
    calls: Counter[str] = Counter()
    for name in ("send_all", "receive_some"):
        original = getattr(trio.SocketStream, name)

        def counted(self: trio.SocketStream, *args: Any, _original: Any = original, _name: str = name) -> Any:
            if self.socket.getsockname()[0] == A_IP:
                calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(trio.SocketStream, name, counted)
    original_wait = _stack_io.wait_readable

    async def counted_wait(*args: Any) -> bool:
        calls["wait_readable"] += 1
        return await original_wait(*args)

    monkeypatch.setattr(_stack_io, "wait_readable", counted_wait)
    app = BackendApp("one")
    async with _stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8081)
        async with running_proxy(http_bootstrap([cluster("app", [8081])]), a) as proxy:
            with trio.fail_after(60):
                client = Client(await connect(b))
                for _ in range(5):
                    response = await client.request("GET", "/")
                    assert response.status == 200
                await client.aclose()
            assert proxy.stats.value("http.ingress.downstream_rq_2xx") == 5
        backend.stop()
    assert calls["send_all"] == calls["receive_some"] == 0
    assert calls["wait_readable"] >= 2 * 5 - 1  # the first request: the upstream's connect first
