"""``PollLoop.kick`` wakes a sleeping poll loop exactly when an application call left it work.

kick no longer calls ``CancelScope.cancel()`` (which formats the calling task's repr in this trio);
it moves the idle scope's deadline to -inf.  These tests hold it to every case the old kick woke
the loop in, and to the cases it must not: under a MockClock that never jumps on its own
(autojump_threshold=inf), a loop that woke ran a turn without the clock moving.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address
from typing import Any

import trio
import trio.testing

from trio_yastack.dispatch import PollLoop
from trio_yastack.nic import memory_wire
from trio_yastack.socket_api._waiter import Waiter as SocketWaiter
from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore
from trio_yastack.stack.wire import MacAddress

A_IP = "198.18.0.1"


@asynccontextmanager
async def idle_loop() -> AsyncIterator[tuple[PollLoop, Any]]:
    """A poll loop on one end of a memory wire, asleep (no timer set): ``(loop, peer port)``."""
    port, peer = memory_wire()
    core = StackCore(StackConfig(InterfaceConfig(MacAddress("02:00:00:00:00:01"), IPv4Address(A_IP))))
    loop = PollLoop(core, port)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await wait_idle(loop)
        yield loop, peer
        nursery.cancel_scope.cancel()


async def wait_idle(loop: PollLoop) -> None:
    """Until the loop sleeps in its idle scope (bounded: it has nothing to do)."""
    for _ in range(100):
        await trio.testing.wait_all_tasks_blocked()
        if loop._idle_scope is not None:
            return
    raise AssertionError("the poll loop never went idle")


class Pending:
    """Stands in for a connection that deferred its output to the loop's turn."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def tcp_output(self, now: float) -> None:
        self.calls.append(now)


class Waiter:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class Owner:
    def __init__(self) -> None:
        self.waiter = Waiter()


async def test_kick_wakes_for_frames_in_the_outbox(mock_clock: trio.testing.MockClock) -> None:
    clock = mock_clock
    async with idle_loop() as (loop, peer):
        waits, start, out = loop.stats.idle_waits, clock.current_time(), loop.stats.frames_out
        before = len(peer.rx_burst(0, 64))  # what start-up sent (a gratuitous ARP)
        assert before == out
        loop.core.outbox.append(b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + b"\x00" * 46)
        loop.kick()
        loop.kick()  # a second kick before the loop ran changes nothing
        await wait_idle_again(loop, waits)
        assert not loop.core.outbox
        assert loop.stats.frames_out == out + 1
        assert len(peer.rx_burst(0, 8)) == 1
        assert clock.current_time() == start


async def test_kick_wakes_for_deferred_output(mock_clock: trio.testing.MockClock) -> None:
    async with idle_loop() as (loop, _peer):
        waits = loop.stats.idle_waits
        pending = Pending()
        loop.core.output_pending[pending] = None
        loop.kick()
        await wait_idle_again(loop, waits)
        assert len(pending.calls) == 1
        assert not loop.core.output_pending


async def test_kick_wakes_for_ready_sockets(mock_clock: trio.testing.MockClock) -> None:
    async with idle_loop() as (loop, _peer):
        waits = loop.stats.idle_waits
        owner = Owner()
        loop.core.ready[owner] = None
        loop.kick()
        await wait_idle_again(loop, waits)
        assert owner.waiter.woken == 1
        assert loop.stats.wakeups == 1


async def test_kick_for_an_earlier_timer_moves_the_wake_up_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = autojump_clock
    async with idle_loop() as (loop, _peer):
        waits, start = loop.stats.idle_waits, trio.current_time()
        fired: list[float] = []
        loop.core.timers.schedule(start + 5.0, lambda now: fired.append(now))
        loop.kick()
        scope = loop._idle_scope
        assert scope is not None and scope.deadline == start + 5.0 and not scope.cancel_called
        await trio.sleep_until(start + 5.0)  # the mock clock jumps there: nothing else is due
        await wait_idle_again(loop, waits)
        assert fired == [start + 5.0]
        assert clock.current_time() == start + 5.0


async def test_kick_with_nothing_to_do_costs_no_turn(mock_clock: trio.testing.MockClock) -> None:
    async with idle_loop() as (loop, _peer):
        waits, turns = loop.stats.idle_waits, loop.stats.frames_out
        scope = loop._idle_scope
        loop.kick()
        await trio.testing.wait_all_tasks_blocked()
        assert loop._idle_scope is scope and scope is not None and not scope.cancel_called
        assert scope.deadline == math.inf
        assert (loop.stats.idle_waits, loop.stats.frames_out) == (waits, turns)


async def test_kick_while_running_is_a_no_op(mock_clock: trio.testing.MockClock) -> None:
    async with idle_loop() as (loop, _peer):
        loop._idle_scope = None  # as during a turn: the turn itself sees the work
        loop.core.output_pending[Pending()] = None
        loop.kick()  # must not raise nor touch a scope
        loop.core.output_pending.clear()


async def wait_idle_again(loop: PollLoop, waits: int) -> None:
    """Until the loop ran a turn and slept again (bounded)."""
    for _ in range(100):
        await trio.testing.wait_all_tasks_blocked()
        if loop.stats.idle_waits > waits and loop._idle_scope is not None:
            return
    raise AssertionError("the kick did not wake the poll loop")


async def test_a_turn_that_woke_a_task_turns_again_until_it_ran(mock_clock: trio.testing.MockClock) -> None:
    """A keep-alive request's path: the loop wakes the reader, whose response (deferred
    output and a kick) must find the loop still turning, not asleep -- one sleep per request,
    not two (the loop slept right after the wake-up, and the response's kick ended that sleep).
    Twenty rounds: trio runs each batch in either order, so both orders of the loop's next turn
    and the woken task are taken."""
    async with idle_loop() as (loop, _peer):
        owner = Owner()
        owner.waiter = SocketWaiter()  # type: ignore[assignment]  # the socket layer's, which parks a task
        for _ in range(20):
            waits = loop.stats.idle_waits
            pending = Pending()

            async def reader(pending: Pending) -> None:
                await owner.waiter.wait()  # type: ignore[attr-defined]  # a SocketWaiter here
                loop.core.output_pending[pending] = None  # what a send leaves
                loop.kick()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, pending)
                await trio.testing.wait_all_tasks_blocked()
                loop.core.ready[owner] = None  # data arrived for it (as a turn's input leaves it)
                loop.kick()
            await wait_idle_again(loop, waits)
            assert len(pending.calls) == 1
            assert loop.stats.idle_waits == waits + 1


async def test_a_wake_with_nobody_parked_costs_no_extra_turn(mock_clock: trio.testing.MockClock) -> None:
    """An object made ready with no task parked on it (its reader is busy) wakes nobody, so the
    loop sleeps after that turn as before (no turn to wait for a task that was never woken)."""
    async with idle_loop() as (loop, _peer):
        owner = Owner()
        owner.waiter = SocketWaiter()  # type: ignore[assignment]  # nobody parked on it
        turns = count_turns(loop)
        waits = loop.stats.idle_waits
        loop.core.ready[owner] = None
        loop.kick()
        await wait_idle_again(loop, waits)
        assert loop.stats.idle_waits == waits + 1
        assert turns == [1]  # one turn (one rx_burst), then asleep


def count_turns(loop: PollLoop) -> list[int]:
    """A one-item list counting the loop's turns from now on (each turn makes one rx_burst)."""
    turns = [0]
    rx_burst = loop.port.rx_burst

    def counted(queue: int, max_n: int) -> Any:
        turns[0] += 1
        return rx_burst(queue, max_n)

    loop.port.rx_burst = counted  # type: ignore[method-assign]  # the loop reads it per turn
    return turns
