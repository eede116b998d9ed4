"""The socket layer's ``Waiter``: a ``ParkingLot``'s behaviour for parked socket tasks, on a list.

What the sockets rely on: ``wake()`` reschedules every task parked at that moment and no task
parked after it, and says whether there was one; a parked task that is cancelled leaves the waiter, so
a later ``wake()`` never reschedules a task that is no longer waiting (trio would raise); a wake
with nobody parked is a no-op.
"""

from __future__ import annotations

import trio
import trio.testing

from trio_yastack.socket_api._waiter import Waiter


async def test_wake_reschedules_every_parked_task() -> None:
    waiter = Waiter()
    woken: list[int] = []

    async def park(n: int) -> None:
        await waiter.wait()
        woken.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(park, n)
            await trio.testing.wait_all_tasks_blocked()
        assert len(waiter) == 3
        assert waiter.wake() is True
        assert len(waiter) == 0
    assert sorted(woken) == [0, 1, 2]  # trio runs a batch in either order


async def test_a_task_parked_after_a_wake_waits_for_the_next_one() -> None:
    waiter = Waiter()
    rounds: list[str] = []

    async def twice() -> None:
        await waiter.wait()
        rounds.append("first")
        await waiter.wait()
        rounds.append("second")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(twice)
        await trio.testing.wait_all_tasks_blocked()
        waiter.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert rounds == ["first"]
        assert len(waiter) == 1
        waiter.wake()
    assert rounds == ["first", "second"]


async def test_a_cancelled_task_leaves_the_waiter_and_the_others_stay() -> None:
    waiter = Waiter()
    outcomes: dict[str, str] = {}

    async def park(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await waiter.wait()
            outcomes[name] = "woken"
            return
        outcomes[name] = "cancelled"

    doomed, kept = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(park, "doomed", doomed)
        nursery.start_soon(park, "kept", kept)
        await trio.testing.wait_all_tasks_blocked()
        assert len(waiter) == 2
        doomed.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {"doomed": "cancelled"}
        assert len(waiter) == 1
        waiter.wake()  # would raise inside trio if it rescheduled the cancelled task again
    assert outcomes == {"doomed": "cancelled", "kept": "woken"}


async def test_wake_with_nobody_parked_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    waiter = Waiter()
    assert waiter.wake() is False
    assert len(waiter) == 0
    with trio.move_on_after(1) as scope:  # a wake before the park is not remembered
        await waiter.wait()
    assert scope.cancelled_caught
