"""The memory wire's own timing: a plain wire (no fault, latency or rate) delivers every frame at
once, in the order sent, without reading trio's clock; a wire with latency keeps each frame
until its arrival time.  (The offload marks are ``test_memory_wire_offloads.py``'s.)"""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from trio_yastack.nic import memory_wire


def _frames(count: int, start: int = 0) -> list[bytes]:
    return [bytes([start + i]) * 60 for i in range(count)]


def test_a_plain_wire_delivers_all_at_once_in_order_without_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = memory_wire()

    def no_clock() -> float:
        raise AssertionError("a plain wire reads no clock")

    async def main() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(trio, "current_time", no_clock)
            assert a.tx_burst(0, _frames(3)) == 3
            assert b.rx_burst(0, 2) == _frames(2)  # max_n holds
            assert a.tx_burst(0, _frames(2, start=10)) == 2
            assert b.rx_burst(0, 32) == _frames(1, start=2) + _frames(2, start=10)
            assert b.rx_burst(0, 32) == []
        with trio.fail_after(1):
            a.tx_burst(0, _frames(1))
            await b.wait_rx(0)  # a frame waiting: returns at once
        assert b.rx_burst(0, 32) == _frames(1)
        assert b.statistics().ipackets == 6

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_wire_with_latency_holds_each_frame_until_it_arrives() -> None:
    a, b = memory_wire(latency=0.5)

    async def main() -> None:
        a.tx_burst(0, _frames(1))
        await trio.sleep(0.25)
        a.tx_burst(0, _frames(1, start=1))
        assert b.rx_burst(0, 32) == []
        await b.wait_rx(0)  # until the first frame's arrival
        assert trio.current_time() == pytest.approx(0.5)
        assert b.rx_burst(0, 32) == _frames(1)
        await b.wait_rx(0)
        assert trio.current_time() == pytest.approx(0.75)
        assert b.rx_burst(0, 32) == _frames(1, start=1)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_receiver_parked_in_wait_rx_wakes_on_a_burst() -> None:
    a, b = memory_wire()
    got: list[bytes] = []

    async def receiver() -> None:
        await b.wait_rx(0)
        got.extend(b.rx_burst(0, 32))

    async def main() -> None:
        with trio.fail_after(5):  # a receiver never woken fails here (virtual seconds)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                assert len(b._rx_parked) == 1  # parked: the burst must wake it
                a.tx_burst(0, _frames(2))
        assert got == _frames(2)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("latency", [0.0, 0.5])
def test_the_receivers_queue_is_bounded_on_a_plain_wire_as_on_a_timed_one(latency: float) -> None:
    """``queue_limit`` frames wait at the receiver, plain wire (a FIFO) or not (a heap); those
    beyond are tail-dropped and counted as the receiver's ``imissed`` and the wire's
    ``queue_drops``, and the ones kept arrive in order, bytes and packets counted."""
    a, b = memory_wire(queue_limit=3, latency=latency)

    async def main() -> None:
        assert a.tx_burst(0, _frames(5)) == 5  # handed to the wire: the drops are the receiver's
        await trio.sleep(latency)
        assert b.rx_burst(0, 32) == _frames(3)
        assert b.statistics().imissed == 2 and a.wire_statistics().queue_drops == 2
        assert b.statistics().ipackets == 3 and b.statistics().ibytes == 180
        assert a.tx_burst(0, _frames(1, start=7)) == 1  # room again
        await trio.sleep(latency)
        assert b.rx_burst(0, 32) == _frames(1, start=7)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_tasks_parked_in_wait_rx_are_all_woken_and_a_cancelled_one_leaves() -> None:
    """``wait_rx``'s park behaves as the ``ParkingLot`` it replaced: a burst wakes every task
    parked at that moment; a task cancelled while parked is taken off (the next burst wakes
    only the others), and the port parks nobody afterwards."""
    a, b = memory_wire()
    woke: list[str] = []

    async def waiter(name: str) -> None:
        await b.wait_rx(0)
        woke.append(name)

    gone = trio.CancelScope()

    async def cancelled() -> None:
        with gone:
            await b.wait_rx(0)
        woke.append("cancelled")

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for task in (partial(waiter, "first"), cancelled, partial(waiter, "second")):
                    nursery.start_soon(task)
                    await trio.testing.wait_all_tasks_blocked()
                assert len(b._rx_parked) == 3
                gone.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert woke == ["cancelled"] and len(b._rx_parked) == 2  # cancelled: off the list
                a.tx_burst(0, _frames(1))
        assert woke[0] == "cancelled" and sorted(woke[1:]) == ["first", "second"]  # trio picks the order
        assert b._rx_parked == []

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
