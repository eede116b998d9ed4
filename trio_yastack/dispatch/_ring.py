"""Single-producer/single-consumer rings of frames between per-core processes.

One ring carries frames from one core to one other (DPDK's ``rte_ring`` in SP/SC mode, with
variable-size records): the dispatching core hands over the frames of flows another core owns,
and that core takes them out a burst at a time.  The ring lives in shared memory, an anonymous
``MAP_SHARED`` mmap made before the cores fork, so a frame crosses with one copy in and one
copy out and no system call.  Nothing is locked: the producer alone writes ``head`` and the
records, the consumer alone writes ``tail``, each on its own cache line.

Layout (in host byte order; the reference is the header comment of ``native/ring.c``)::

    0   u32 magic "YASR" | u32 version 1 | u64 capacity (data bytes, a power of two >= 4096)
    64  producer line: u64 head (byte position, only grows) | u64 enqueued | u64 dropped
                       | u64 doorbells
    128 consumer line: u64 tail | u64 dequeued | u32 consumer_sleeping | u32 reserved
                       | u64 sleep_seq
    192 data area, ``capacity`` bytes of records: u32 length | u32 flags | payload, padded to
        8 bytes; a record never wraps (a PAD marker, length 0xFFFFFFFF, sends the reader back to
        the start); a full ring refuses the frame and counts it in ``dropped``.

The C backend (``native/ring.c``) orders memory with acquire/release atomics; the pure-Python
twin (``_native_ring.PyRingOps``) relies on CPython performing each store in program
order and on x86-64's total store order (on a weakly ordered CPU, use the native backend
across processes).  ``TRIO_YASTACK_NO_NATIVE=1`` forces the twin, as everywhere.

The doorbell: a consumer with nothing to do must sleep without missing a frame, and the
producer must not pay a system call per burst while the consumer is busy.  The consumer sets
``consumer_sleeping`` and looks once more (``prepare_sleep``) before waiting on the ring's
eventfd; the producer, after a burst, writes the eventfd only when the flag is set
(``ring_doorbell_if_sleeping``), once per sleep (it remembers the ``sleep_seq`` it rang for).
A full fence on each side (Dekker's handshake) makes sure at least one of them sees the other.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ._native_ring import RING_HEADER, RING_MIN_CAPACITY, Memory, RingError, RingOps, ring_backend

__all__ = ["RingError", "RingStatistics", "SpscRing"]


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """A snapshot of a ring's counters (the producer's and the consumer's, as seen now)."""

    enqueued: int
    dequeued: int
    dropped: int  # frames a full ring refused
    occupancy_bytes: int  # bytes of records (and PAD) not yet taken
    capacity: int
    doorbells: int = 0  # eventfd writes: times the producer woke a sleeping consumer
    consumer_sleeping: bool = False  # the consumer said it sleeps (between prepare_sleep and woke)


class _Closed:
    """Stands in for the backend of a closed ring: every operation is a ``ValueError``."""

    def __getattr__(self, name: str) -> object:
        raise ValueError("the ring is closed")


_CLOSED = _Closed()


class SpscRing:
    """One single-producer/single-consumer ring in shared memory, with its doorbell.

    Make it with ``create`` (a fresh anonymous shared mmap and eventfd, before forking the two
    sides) or ``attach`` (a buffer that already holds a ring).  One process may only produce and
    one only consume; each call does bounded work and never blocks.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_ops",
        "_owns_buffer",
        "_owns_fd",
        "capacity",
        "doorbell_fd",
        "native",
    )

    def __init__(
        self, ops: RingOps, buffer: Memory, doorbell_fd: int | None, *, owns_buffer: bool, owns_fd: bool
    ) -> None:
        self._ops = ops
        self._buffer = buffer
        self._owns_buffer = owns_buffer
        self._owns_fd = owns_fd
        self._closed = False
        #: whether this ring runs on the C backend
        self.native = ops.native
        self.capacity = ops.capacity()
        #: the eventfd a sleeping consumer waits on (``None`` when attached without one)
        self.doorbell_fd = doorbell_fd

    @classmethod
    def create(cls, capacity: int = 1 << 20, *, native: bool | None = None) -> SpscRing:
        """A new empty ring of ``capacity`` data bytes (a power of two, at least 4096) in an
        anonymous shared mmap, which processes forked afterwards share, with a fresh
        non-blocking eventfd as its doorbell (inherited across ``fork``, closed on ``exec``).
        ``native`` picks the backend (default: C when built)."""
        if capacity < RING_MIN_CAPACITY or capacity & (capacity - 1):
            raise ValueError(f"a ring capacity is a power of two >= {RING_MIN_CAPACITY}, not {capacity}")
        buffer = mmap.mmap(-1, RING_HEADER + capacity)  # MAP_SHARED | MAP_ANONYMOUS on Linux
        ops = ring_backend(native)(buffer)
        try:
            ops.init(capacity)
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            ops.release()
            buffer.close()
            raise
        return cls(ops, buffer, fd, owns_buffer=True, owns_fd=True)

    @classmethod
    def attach(
        cls, buffer: Memory, *, doorbell_fd: int | None = None, native: bool | None = None
    ) -> SpscRing:
        """The ring already in ``buffer`` (``RingError``, a ``ValueError``, when it holds none).
        The caller keeps ``buffer`` and ``doorbell_fd`` (``close`` closes neither)."""
        ops = ring_backend(native)(buffer)
        try:
            ops.capacity()
        except BaseException:
            ops.release()
            raise
        return cls(ops, buffer, doorbell_fd, owns_buffer=False, owns_fd=False)

    @property
    def memory(self) -> Memory:
        """The shared memory holding the ring (to ``attach`` another object to it)."""
        return self._buffer

    # -- producer side ---------------------------------------------------------------------------
    def enqueue(self, frame: bytes | bytearray, flags: int = 0) -> bool:
        """Put one frame (with ``flags``, a u32 the consumer gets back) on the ring: False when it
        is full (the frame is dropped and counted).  ``RingError`` for a frame larger than
        ``min(65599, capacity / 2 - 8)`` bytes.  Does not ring the doorbell: call
        ``ring_doorbell_if_sleeping`` after a batch."""
        return self._ops.enqueue(frame, flags)

    def enqueue_burst(self, frames: Sequence[bytes | bytearray], flags: int = 0) -> int:
        """Put frames on the ring in order until one finds it full: how many were taken; the
        rest are dropped and counted.  Too large a frame refuses the whole burst (``RingError``)
        before anything is enqueued.  Then rings the doorbell if the consumer sleeps."""
        taken = self._ops.enqueue_burst(frames, flags)
        if taken:
            self.ring_doorbell_if_sleeping()
        return taken

    def ring_doorbell_if_sleeping(self) -> bool:
        """Wake the consumer if it said it sleeps and was not rung for that sleep yet (one
        eventfd write per sleep, counted as a doorbell); whether it was rung.  Call after
        enqueuing: the check is fenced after the publication."""
        if self.doorbell_fd is None or not self._ops.doorbell_due():
            return False
        os.eventfd_write(self.doorbell_fd, 1)
        self._ops.count_doorbell()
        return True

    # -- consumer side ---------------------------------------------------------------------------
    def dequeue_burst(self, max_n: int) -> list[tuple[bytes, int]]:
        """Up to ``max_n`` ``(frame, flags)``, oldest first (empty when the ring is)."""
        return self._ops.dequeue_burst(max_n)

    def prepare_sleep(self) -> bool:
        """Say the consumer is about to sleep, then look once more: False when something arrived
        meanwhile (the flag is cleared again; do not sleep).  On True, wait for
        ``doorbell_fd`` to be readable, then call ``woke``."""
        return self._ops.prepare_sleep()

    def woke(self) -> None:
        """After sleeping (or deciding not to): clear the flag and drain the doorbell, so the
        next sleep waits for a new ring.  Harmless when the consumer did not sleep."""
        self._ops.woke()
        if self.doorbell_fd is not None:
            with contextlib.suppress(BlockingIOError):  # nobody rang: nothing to drain
                os.eventfd_read(self.doorbell_fd)

    async def wait_nonempty(self) -> None:
        """Sleep (in trio) until the producer rings, or return at once (after a checkpoint) when
        the ring is not empty.  A spurious wake-up is possible: dequeue and come back."""
        if self.doorbell_fd is None:
            raise RuntimeError("this ring has no doorbell")
        if not self.prepare_sleep():
            await trio.lowlevel.checkpoint()
            return
        try:
            await trio.lowlevel.wait_readable(self.doorbell_fd)
        finally:
            self.woke()

    # -- either side -----------------------------------------------------------------------------
    def occupancy(self) -> int:
        """Bytes of the data area in use (records, their headers and padding, PAD markers)."""
        return self._ops.counters()[4]

    def statistics(self) -> RingStatistics:
        enqueued, dequeued, dropped, doorbells, occupancy, sleeping = self._ops.counters()
        return RingStatistics(
            enqueued=enqueued,
            dequeued=dequeued,
            dropped=dropped,
            occupancy_bytes=occupancy,
            capacity=self.capacity,
            doorbells=doorbells,
            consumer_sleeping=bool(sleeping),
        )

    def close(self) -> None:
        """Release the memory and the doorbell this object made (idempotent).  A forked process
        closes its own copies; the shared memory goes when the last mapping does."""
        if self._closed:
            return
        self._closed = True
        self._ops.release()
        self._ops = _CLOSED  # type: ignore[assignment]  # no call reaches released memory
        if isinstance(self._buffer, mmap.mmap) and self._owns_buffer:
            self._buffer.close()
        if self._owns_fd and self.doorbell_fd is not None:
            os.close(self.doorbell_fd)

    def __enter__(self) -> SpscRing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = "native" if self.native else "python"
        return f"<SpscRing capacity={self.capacity} {backend}{' closed' if self._closed else ''}>"
