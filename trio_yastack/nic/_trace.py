"""A port wrapper that reports every frame it moves, one line each: the demo's view of the wire.
(The journey-of-a-packet tracer watches the same two calls, ``rx_burst`` and ``tx_burst``, with
its own hooks.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from trio_yastack.stack.wire import describe_frame

from ._port import Port, PortWrapper

__all__ = ["TracePort"]


class TracePort(PortWrapper):
    """Calls ``emit(line)`` for each frame received (``<``) or transmitted (``>``)."""

    def __init__(self, inner: Port, emit: Callable[[str], None] = print, *, label: str | None = None) -> None:
        super().__init__(inner)
        self._emit = emit
        self._label = label or inner.name
        self._origin: float | None = None  # times are printed from the first frame, as tcpdump -ttttt

    def _report(self, direction: str, frames: Sequence[bytes]) -> None:
        now = trio.current_time()
        if self._origin is None:
            self._origin = now
        stamp = now - self._origin
        for frame in frames:
            self._emit(f"{stamp:10.6f} {self._label} {direction} {describe_frame(frame)}")

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        frames = self.inner.rx_burst(queue, max_n)
        if frames:
            self._report("<", frames)
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        accepted = self.inner.tx_burst(queue, frames)
        if accepted:
            self._report(">", frames[:accepted])
        return accepted
