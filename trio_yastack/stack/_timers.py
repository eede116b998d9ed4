"""One timer structure per stack instance: a heap of deadlines with lazy cancellation.

The poll loop asks :meth:`TimerQueue.next_deadline` how long it may sleep, and calls
:meth:`TimerQueue.run` with the current time; nothing here reads a clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["Timer", "TimerQueue"]


class Timer:
    """A scheduled callback; ``cancel()`` is O(1) (the heap entry is skipped later)."""

    __slots__ = ("args", "callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    """Timers ordered by deadline.  Cancelled entries are dropped when they reach the top, and
    the heap is rebuilt when they outnumber the live ones, so its size stays bounded by twice
    the live timers."""

    __slots__ = ("_cancelled", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def schedule(self, deadline: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call ``callback(now, *args)`` from the first :meth:`run` at or after ``deadline``."""
        timer = Timer(deadline, callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, timer))
        return timer

    def cancel(self, timer: Timer | None) -> None:
        if timer is None or timer.cancelled:
            return
        timer.cancelled = True
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > 64 and self._cancelled * 2 > len(heap):
            # In place: cancel() may be called from a callback inside run(), which holds the list.
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def run(self, now: float) -> int:
        """Fire every timer due at or before ``now``; return how many fired."""
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _deadline, _seq, timer = heapq.heappop(heap)
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer.cancelled = True  # fired timers count as done for a later cancel()
            timer.callback(now, *timer.args)
            fired += 1
        return fired
