"""The stack under connection churn: thousands of short connections, as ``wrk -H 'Connection: close'``
makes them, between two stacks on a ``memory_wire`` under ``MockClock`` (2*MSL costs nothing).

The server closes first, so the server holds TIME_WAIT; the client's ephemeral range is narrow, so
its ports come back while the server still holds them in TIME_WAIT and a new SYN takes the pair
over (RFC 6191), which is what wrk's port reuse does to a server.  What must hold:

- the books add up, exactly, at any moment: every connection established is closed, dropped,
  or still in a synchronized state in the table;
- memory comes back: once 2*MSL has passed with nothing open, no connection object is left, the
  TIME_WAIT table and the timer heap are empty, and another round leaves the same;
- the TIME_WAIT bound holds, and what goes beyond it is counted.
"""

from __future__ import annotations

import gc
from collections import Counter

import trio
import trio.testing
from tcp_sim_helpers import B_IP, abort, two_stacks

from trio_yastack import Stack
from trio_yastack.stack import TcpConfig, TcpConnection
from trio_yastack.stack._timers import TimerQueue
from trio_yastack.stack.tcp._states import SYNCHRONIZED, TcpState

PORT = 8080
ABORT_EVERY = 25  # every 25th client resets instead of reading the response
REQUEST = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"


def live_connections() -> int:
    """TcpConnection objects still alive anywhere (tables, timer heap, sockets)."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is TcpConnection)


def states(stack: Stack) -> Counter[str]:
    """Connections by state, TIME_WAIT records (out of the connection table) included."""
    tcp = stack.core.tcp
    counter = Counter(TcpState(conn.state).name for conn in tcp.connections.values())
    if tcp.time_wait:
        counter["TIME_WAIT"] += len(tcp.time_wait)
    return counter


def unaccounted(stack: Stack) -> int:
    """Established connections neither closed, nor dropped, nor still synchronized in the table:
    0 when every end is counted exactly once."""
    tcp = stack.statistics().tcp
    still_open = sum(1 for conn in stack.core.tcp.connections.values() if conn.state in SYNCHRONIZED)
    still_open += len(stack.core.tcp.time_wait)  # TIME_WAIT is synchronized, kept as records
    return tcp.connections_established - tcp.connections_closed - tcp.connections_dropped - still_open


async def serve(listener: trio.SocketListener) -> None:
    """Read a request, answer, close first (a ``Connection: close`` server); a client that
    resets is let go, as a server does."""

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                if await stream.receive_some(4096):
                    await stream.send_all(RESPONSE)
            except trio.BrokenResourceError:
                pass

    async with trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(one, await listener.accept())


async def client_round(client: Stack, count: int, concurrency: int, *, abort_every: int = 0) -> int:
    """``count`` connections, ``concurrency`` at a time, each a request and the response read to
    its end; every ``abort_every``-th one resets instead of reading (0: none).  Returns how many
    responses arrived."""
    limiter = trio.CapacityLimiter(concurrency)
    answered = 0

    async def one(index: int) -> None:
        nonlocal answered
        async with limiter:
            stream = await client.tcp_connect(B_IP, PORT)
            await stream.send_all(REQUEST)
            if abort_every and index % abort_every == 0:
                await abort(stream)
                return
            async with stream:
                received = b""
                while data := await stream.receive_some(4096):
                    received += data
            assert received == RESPONSE
            answered += 1

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)
    return answered


async def test_churn_books_add_up_and_memory_comes_back(autojump_clock: trio.testing.MockClock) -> None:
    per_round, rounds = 300, 3
    aborted = per_round // ABORT_EVERY if ABORT_EVERY else 0
    # 64 client ports for 300 connections a round: most SYNs land on a pair the server still
    # holds in TIME_WAIT and take it over.
    config = TcpConfig(ephemeral_first=50000, ephemeral_last=50063)
    async with two_stacks(11, tcp=config) as (client, server), trio.open_nursery() as nursery:
        baseline = live_connections()
        listener = server.tcp_listen(PORT, 128)
        nursery.start_soon(serve, listener)
        tcp = server.core.tcp
        msl2 = 2 * config.msl
        for round_ in range(1, rounds + 1):
            answered = await client_round(client, per_round, 50, abort_every=ABORT_EVERY)
            assert answered == per_round - aborted
            await trio.testing.wait_all_tasks_blocked()
            for stack in (client, server):
                assert unaccounted(stack) == 0, (round_, stack.statistics().tcp, states(stack))
            assert "CLOSE_WAIT" not in states(server)
            assert 0 < len(tcp.time_wait) <= 64
            assert len(tcp.time_wait) == states(server)["TIME_WAIT"]
            # Pairs were taken over in TIME_WAIT: more connections than ports, all accounted.
            stats = server.statistics().tcp
            assert stats.passive_opens == stats.connections_established == round_ * per_round
            assert stats.connections_accepted == round_ * per_round
            # The aborted ones are dropped (reset), every other one closed or in TIME_WAIT.
            assert stats.connections_dropped == round_ * aborted
            assert stats.connections_closed + len(tcp.time_wait) == round_ * (per_round - aborted)
            await trio.sleep(msl2 + 1)
            # Nothing open any more: no connection left anywhere, no timer entry kept.
            for stack in (client, server):
                assert not stack.core.tcp.connections
                assert not stack.core.tcp.time_wait
                assert unaccounted(stack) == 0
            assert len(server.core.timers) == 0 and len(client.core.timers) == 0
            assert live_connections() == baseline
        stats = server.statistics().tcp
        assert stats.connections_closed + stats.connections_dropped == rounds * per_round
        nursery.cancel_scope.cancel()


async def test_time_wait_bound_recycles_the_oldest_and_counts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit, count = 20, 120
    config = TcpConfig(time_wait_limit=limit)
    async with two_stacks(12, tcp=config) as (client, server), trio.open_nursery() as nursery:
        baseline = live_connections()
        nursery.start_soon(serve, server.tcp_listen(PORT, 128))
        tcp = server.core.tcp
        seen: list[int] = []
        for _ in range(count // 10):
            assert await client_round(client, 10, 10) == 10
            await trio.testing.wait_all_tasks_blocked()
            seen.append(len(tcp.time_wait))
            assert len(tcp.time_wait) <= limit
            assert unaccounted(server) == 0
        assert max(seen) == limit
        stats = server.statistics().tcp
        # Within 2*MSL nothing expired: every connection beyond the bound was recycled, and counted
        # as closed like any other end.
        assert stats.time_wait_recycled == count - limit
        assert stats.connections_closed == count - limit
        assert [tw.state for tw in tcp.time_wait.values()] == [TcpState.TIME_WAIT] * limit
        await trio.sleep(2 * config.msl + 1)
        assert not tcp.time_wait and not tcp.connections
        assert server.statistics().tcp.connections_closed == count
        assert live_connections() == baseline
        nursery.cancel_scope.cancel()


def test_timer_heap_purge_inside_run_keeps_the_queue_consistent() -> None:
    """Connections ending inside a timer callback cancel their heap entries, which may purge the
    heap while ``run`` walks it: the purge must happen in place, so nothing fires twice or is lost."""
    queue = TimerQueue()
    fired: list[int] = []

    def record(now: float, tag: int) -> None:
        fired.append(tag)

    victims = [queue.schedule(10.0 + i, record, 1000 + i) for i in range(100)]

    def cancel_all(now: float) -> None:
        for timer in victims:
            queue.cancel(timer)
        queue.schedule(now, record, 1)  # due at once: fires in this same run

    queue.schedule(1.0, cancel_all)
    later = queue.schedule(2.0, record, 2)
    assert queue.run(5.0) == 3
    assert fired == [2, 1]  # the one scheduled inside is due at run's now (5.0), after 2.0
    queue.cancel(later)  # already fired: a no-op, not a miscount
    assert len(queue) == 0 and queue.next_deadline() is None
    assert queue.run(200.0) == 0 and fired == [2, 1]
