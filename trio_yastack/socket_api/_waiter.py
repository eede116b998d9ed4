"""Where stack events become trio wake-ups: one parking lot per stack object (pcb, endpoint).

The stack puts changed objects in ``core.ready``; the poll loop calls ``wake()`` once per object
per turn, so a burst of 32 datagrams for one socket costs one wake-up.
"""

from __future__ import annotations

import trio

__all__ = ["Waiter"]


class Waiter:
    __slots__ = ("_lot",)

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        """Wake every task parked here.  Nobody parked is the common case (a socket closed by
        its only task, a connection whose reader has not parked yet): then it costs one test."""
        lot = self._lot
        if lot:
            lot.unpark_all()

    async def wait(self) -> None:
        """Park until the next ``wake()`` (the caller re-checks its condition)."""
        await self._lot.park()
