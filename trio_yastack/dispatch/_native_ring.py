"""The shared-memory SPSC rings' operations: C (``native/ring.c``) and its pure-Python twin.

``SpscRing`` (in ``_ring``) drives one ring through a ``RingOps`` object of either backend:
``NativeRingOps`` when the dispatcher's extension is built (see ``_native``), ``PyRingOps``
always.  Both take and return the same things and leave the same bytes in the buffer;
``tests/test_ring.py`` proves it operation by operation and across processes, C against twin.
The ``py_ring_*``/``native_ring_*`` functions are per-call conveniences on a plain buffer
(tests, tools).
"""

from __future__ import annotations

import mmap
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from ._native import extension

__all__ = [
    "RING_HEADER",
    "RING_MAX_PAYLOAD",
    "RING_MIN_CAPACITY",
    "NativeRingOps",
    "PyRingOps",
    "RingError",
    "RingOps",
    "native_ring_dequeue_burst",
    "native_ring_enqueue",
    "native_ring_init",
    "py_ring_dequeue_burst",
    "py_ring_enqueue",
    "py_ring_init",
    "ring_backend",
    "ring_max_payload",
]

#: what a frame may be
Buffer = bytes | bytearray | memoryview
#: what may hold a ring: writable memory (a read-only buffer is refused with RING_BAD_ARGS)
Memory = bytearray | memoryview | mmap.mmap

# The layout is described once, in the header comment of native/ring.c; the names below are its
# offsets.  Fields are in host byte order; u64 fields are read and written through a memoryview
# cast to "Q": one 8-byte memcpy each, a single aligned move on x86-64, so never torn.
RING_HEADER = 192
RING_MIN_CAPACITY = 4096
RING_MAX_PAYLOAD = 65599  # 65535 + 64: a GSO frame of up to 64 KB of payload and its headers
RING_PAD = 0xFFFFFFFF
RING_VERSION = 1
RING_MAGIC = int.from_bytes(b"YASR", sys.byteorder)  # the bytes "YASR" read as a host u32
RING_BAD_ARGS = -1
RING_NOT_A_RING = -2
RING_TOO_LARGE = -3
RING_CORRUPT = -4
_RING_MESSAGES = {
    RING_BAD_ARGS: "bad arguments for a ring (buffer too small or misaligned, bad capacity, flags or count)",
    RING_NOT_A_RING: "not a ring (bad magic, version or capacity in the header)",
    RING_TOO_LARGE: "frame too large for the ring",
    RING_CORRUPT: "ring corrupt (positions or a record length out of bounds)",
}
# u64 indexes (offset // 8) and u32 indexes (offset // 4) into the header
_Q_CAPACITY, _Q_HEAD, _Q_ENQUEUED, _Q_DROPPED, _Q_DOORBELLS = 1, 8, 9, 10, 11
_Q_TAIL, _Q_DEQUEUED, _Q_SLEEP_SEQ = 16, 17, 19
_I_MAGIC, _I_VERSION, _I_SLEEPING = 0, 1, 36
_RECORD = struct.Struct("=II")  # length, flags
_PAD_RECORD = _RECORD.pack(RING_PAD, 0)
_ZEROS = [bytes(n) for n in range(8)]
_INT_MAX = 0x7FFFFFFF
_U32_MAX = 0xFFFFFFFF
_U64_MASK = 0xFFFFFFFFFFFFFFFF
#: an uncontended lock taken and given back: on x86-64 both are LOCK-prefixed instructions (a
#: semaphore or PyMutex compare-and-swap), i.e. full fences, the twin's only way to order a
#: store before a later load (the Dekker handshake of the doorbell)
_FENCE_LOCK = threading.Lock()


class RingError(ValueError):
    """A ring call refused: ``code`` is the C side's negative ``YAS_RING_*`` value."""

    def __init__(self, code: int) -> None:
        super().__init__(_RING_MESSAGES.get(code, f"ring error {code}"))
        self.code = code


def ring_max_payload(capacity: int) -> int:
    """The largest frame a ring of ``capacity`` data bytes takes: half the ring at most, so
    that an empty ring always has room for any record, whatever wrapping past the end costs."""
    return min(RING_MAX_PAYLOAD, capacity // 2 - 8)


def _full_fence() -> None:
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


class RingOps:
    """Access to one ring in a writable buffer, by one backend (``PyRingOps``, ``NativeRingOps``).

    Why objects and not plain functions: the per-call work that does not change (a memoryview of
    the header, cffi's view of an mmap, the native side's output buffer) is made once per ring.
    Both backends take and return the same things and leave the same bytes in the buffer; a
    refused call raises ``RingError`` with the C error code.  ``release()`` gives the buffer
    back (an mmap cannot be closed while a view of it is alive).
    """

    __slots__ = ("_i", "_mem", "_q", "_size")

    native = False

    def __init__(self, mem: Memory) -> None:
        view = memoryview(mem)
        if view.readonly or not view.c_contiguous:
            view.release()
            raise RingError(RING_BAD_ARGS)
        view = view.cast("B")
        if view.nbytes < RING_HEADER:
            view.release()
            raise RingError(RING_BAD_ARGS)
        self._mem = view
        self._size = view.nbytes
        self._q = view[:RING_HEADER].cast("Q")
        self._i = view[:RING_HEADER].cast("I")

    def _capacity(self) -> int:
        """The capacity in the header, or ``RING_NOT_A_RING`` (the checks of the C side)."""
        i = self._i
        if i[_I_MAGIC] != RING_MAGIC or i[_I_VERSION] != RING_VERSION:
            return RING_NOT_A_RING
        capacity = self._q[_Q_CAPACITY]
        if capacity < RING_MIN_CAPACITY or capacity & (capacity - 1) or capacity > self._size - RING_HEADER:
            return RING_NOT_A_RING
        return capacity

    def capacity(self) -> int:
        """The data bytes of the ring; ``RingError`` when the buffer holds no valid ring."""
        capacity = self._capacity()
        if capacity < 0:
            raise RingError(capacity)
        return capacity

    def counters(self) -> tuple[int, int, int, int, int, int]:
        """``(enqueued, dequeued, dropped, doorbells, occupancy_bytes, consumer_sleeping)`` as
        now seen; tail is read before head, so the occupancy is never negative."""
        q = self._q
        tail = q[_Q_TAIL]
        occupancy = (q[_Q_HEAD] - tail) & _U64_MASK
        return q[_Q_ENQUEUED], q[_Q_DEQUEUED], q[_Q_DROPPED], q[_Q_DOORBELLS], occupancy, self._i[_I_SLEEPING]

    def count_doorbell(self) -> None:
        """Count one doorbell rung (a producer-side counter, written by the producer only)."""
        self._q[_Q_DOORBELLS] += 1

    def release(self) -> None:
        """Drop every view of the buffer (idempotent)."""
        for view in (self._q, self._i, self._mem):
            view.release()

    def __enter__(self) -> RingOps:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # the operations, one implementation per backend
    def init(self, capacity: int) -> None:
        raise NotImplementedError

    def enqueue(self, frame: Buffer, flags: int = 0) -> bool:
        raise NotImplementedError

    def enqueue_burst(self, frames: Sequence[Buffer], flags: int = 0) -> int:
        raise NotImplementedError

    def dequeue_burst(self, max_n: int) -> list[tuple[bytes, int]]:
        raise NotImplementedError

    def prepare_sleep(self) -> bool:
        raise NotImplementedError

    def woke(self) -> None:
        raise NotImplementedError

    def doorbell_due(self) -> bool:
        raise NotImplementedError


def _ring_put(
    mem: memoryview, capacity: int, head: int, tail: int, frame: Buffer, length: int, flags: int
) -> int:
    """Twin of ``put`` in ring.c: the record written at ``head`` (after a PAD when it would not
    fit before the end), and the new head; -1 and nothing written when there is no room."""
    need = 8 + ((length + 7) & ~7)
    offset = head & (capacity - 1)
    contiguous = capacity - offset
    total = need if need <= contiguous else contiguous + need
    if total > capacity - (head - tail):
        return -1
    if need > contiguous:
        at = RING_HEADER + offset
        mem[at : at + 8] = _PAD_RECORD
        head += contiguous
        offset = 0
    at = RING_HEADER + offset
    _RECORD.pack_into(mem, at, length, flags)
    end = at + 8 + length
    mem[at + 8 : end] = frame
    if need - 8 - length:
        mem[end : at + need] = _ZEROS[need - 8 - length]
    return head + need


class PyRingOps(RingOps):
    """The pure-Python twin of native/ring.c, on any writable buffer (bytearray, mmap).

    Memory ordering: it relies on CPython performing each store when its bytecode runs, in
    program order (a record's bytes, then the counters, then head or tail), and on x86-64's
    total store order, under which other cores see those stores in that order and loads are not
    reordered with older loads; the doorbell's store-then-load is fenced by ``_full_fence``.
    On a weakly ordered CPU (ARM) only the native backend, with its acquire/release atomics,
    is correct across processes.
    """

    __slots__ = ("_last_rung",)

    def __init__(self, mem: Memory) -> None:
        super().__init__(mem)
        self._last_rung = 0  # the producer's memory of the last sleep it rang for

    def init(self, capacity: int) -> None:
        """Twin of ``yas_ring_init``: a zeroed header, magic written last."""
        if capacity < RING_MIN_CAPACITY or capacity & (capacity - 1) or capacity > self._size - RING_HEADER:
            raise RingError(RING_BAD_ARGS)
        self._mem[:RING_HEADER] = bytes(RING_HEADER)
        self._i[_I_VERSION] = RING_VERSION
        self._q[_Q_CAPACITY] = capacity
        self._i[_I_MAGIC] = RING_MAGIC

    def _positions(self, capacity: int) -> tuple[int, int]:
        q = self._q
        head = q[_Q_HEAD]
        tail = q[_Q_TAIL]
        if (head | tail) & 7 or (head - tail) & _U64_MASK > capacity:
            raise RingError(RING_CORRUPT)
        return head, tail

    def enqueue(self, frame: Buffer, flags: int = 0) -> bool:
        """Twin of ``yas_ring_enqueue``: True when enqueued, False when full (counted)."""
        if not 0 <= flags <= _U32_MAX:  # first, as cffi refuses it before the C code runs
            raise RingError(RING_BAD_ARGS)
        capacity = self._capacity()
        if capacity < 0:
            raise RingError(capacity)
        length = len(frame)
        if length > ring_max_payload(capacity):
            raise RingError(RING_TOO_LARGE)
        head, tail = self._positions(capacity)
        q = self._q
        head = _ring_put(self._mem, capacity, head, tail, frame, length, flags)
        if head < 0:
            q[_Q_DROPPED] += 1
            return False
        q[_Q_ENQUEUED] += 1
        q[_Q_HEAD] = head  # last: publishes the record
        return True

    def enqueue_burst(self, frames: Sequence[Buffer], flags: int = 0) -> int:
        """Twin of ``yas_ring_enqueue_burst``: the frames taken, in order, until the first that
        finds no room (after one more look at tail); the rest are counted as dropped.  Too large
        a frame anywhere refuses the whole burst before anything is written."""
        if not 0 <= flags <= _U32_MAX:
            raise RingError(RING_BAD_ARGS)
        capacity = self._capacity()
        if capacity < 0:
            raise RingError(capacity)
        limit = ring_max_payload(capacity)
        lengths = [len(frame) for frame in frames]
        if lengths and max(lengths) > limit:
            raise RingError(RING_TOO_LARGE)
        head, tail = self._positions(capacity)
        mem, q = self._mem, self._q
        taken = 0
        for frame, length in zip(frames, lengths, strict=True):
            new_head = _ring_put(mem, capacity, head, tail, frame, length, flags)
            if new_head < 0:
                tail = q[_Q_TAIL]
                if (tail & 7) or (head - tail) & _U64_MASK > capacity:
                    raise RingError(RING_CORRUPT)
                new_head = _ring_put(mem, capacity, head, tail, frame, length, flags)
                if new_head < 0:
                    break
            head = new_head
            taken += 1
        if taken < len(frames):
            q[_Q_DROPPED] += len(frames) - taken
        if taken:
            q[_Q_ENQUEUED] += taken
            q[_Q_HEAD] = head
        return taken

    def dequeue_burst(self, max_n: int) -> list[tuple[bytes, int]]:
        """Twin of ``yas_ring_dequeue_burst``: up to ``max_n`` ``(frame, flags)``, oldest first,
        PAD markers skipped; tail published once."""
        capacity = self._capacity()
        if capacity < 0:
            raise RingError(capacity)
        if not 0 <= max_n <= _INT_MAX:
            raise RingError(RING_BAD_ARGS)
        head, start = self._positions(capacity)
        mem, mask, limit = self._mem, capacity - 1, ring_max_payload(capacity)
        frames: list[tuple[bytes, int]] = []
        tail = start
        while len(frames) < max_n and tail != head:
            offset = tail & mask
            available = head - tail
            length, flags = _RECORD.unpack_from(mem, RING_HEADER + offset)
            if length == RING_PAD:
                if capacity - offset > available:
                    raise RingError(RING_CORRUPT)
                tail += capacity - offset
                continue
            need = 8 + ((length + 7) & ~7)
            if length > limit or need > available or offset + need > capacity:
                raise RingError(RING_CORRUPT)
            at = RING_HEADER + offset + 8
            frames.append((mem[at : at + length].tobytes(), flags))
            tail += need
        q = self._q
        if frames:
            q[_Q_DEQUEUED] += len(frames)
        if tail != start:
            q[_Q_TAIL] = tail  # last: gives the space back
        return frames

    def prepare_sleep(self) -> bool:
        """Twin of ``yas_ring_prepare_sleep``: flag set, fence, then True only if still empty
        (else the flag is cleared again and the caller must not sleep)."""
        capacity = self._capacity()
        if capacity < 0:
            raise RingError(capacity)
        q = self._q
        q[_Q_SLEEP_SEQ] += 1
        self._i[_I_SLEEPING] = 1
        _full_fence()
        if q[_Q_HEAD] != q[_Q_TAIL]:
            self._i[_I_SLEEPING] = 0
            return False
        return True

    def woke(self) -> None:
        """Twin of ``yas_ring_woke``: the consumer no longer sleeps."""
        capacity = self._capacity()
        if capacity < 0:
            raise RingError(capacity)
        self._i[_I_SLEEPING] = 0

    def doorbell_due(self) -> bool:
        """Twin of ``yas_ring_doorbell_due``, for the producer after it published: fence, then
        True when the consumer sleeps and this producer has not rung for that sleep yet."""
        capacity = self._capacity()
        if capacity < 0:
            raise RingError(capacity)
        _full_fence()
        if not self._i[_I_SLEEPING]:
            return False
        seq = self._q[_Q_SLEEP_SEQ]
        if seq == self._last_rung:
            return False
        self._last_rung = seq
        return True


NativeRingOps: type[RingOps] | None = None
if extension is not None:
    _ffi, _lib = extension
    _c_ring_init = _lib.yas_ring_init
    _c_ring_enqueue = _lib.yas_ring_enqueue
    _c_ring_enqueue_burst = _lib.yas_ring_enqueue_burst
    _c_ring_dequeue_burst = _lib.yas_ring_dequeue_burst
    _c_ring_prepare_sleep = _lib.yas_ring_prepare_sleep
    _c_ring_woke = _lib.yas_ring_woke
    _c_ring_doorbell_due = _lib.yas_ring_doorbell_due
    _from_buffer = _ffi.from_buffer
    _unpack = _ffi.unpack
    _new = _ffi.new

    class _NativeRingOps(RingOps):
        """The C ring functions, with cffi's view of the buffer made once per ring and, for the
        consumer, one output buffer of ``capacity`` bytes (the payloads in a ring never exceed
        its capacity, so one burst always fits) and the length and flag arrays."""

        __slots__ = (
            "_burst_lens",
            "_c",
            "_flags",
            "_last_rung",
            "_lens",
            "_out",
            "_out_c",
            "_out_view",
            "_room",
        )

        native = True

        def __init__(self, mem: Memory) -> None:
            super().__init__(mem)
            self._c = _from_buffer(self._mem, require_writable=True)
            self._out = bytearray()  # sized to the ring by the first dequeue_burst
            self._out_view = memoryview(self._out)
            self._out_c = _from_buffer(self._out)
            self._room = 64
            self._lens = _new("uint32_t[]", 64)
            self._flags = _new("uint32_t[]", 64)
            self._burst_lens = _new("uint32_t[]", 64)
            self._last_rung = _new("uint64_t[1]")  # the producer's last sleep rung for

        def init(self, capacity: int) -> None:
            try:
                code = _c_ring_init(self._c, self._size, capacity)
            except OverflowError:
                code = RING_BAD_ARGS
            if code < 0:
                raise RingError(code)

        def enqueue(self, frame: Buffer, flags: int = 0) -> bool:
            try:
                if isinstance(frame, bytes):
                    code = _c_ring_enqueue(self._c, self._size, frame, len(frame), flags)
                else:
                    code = _c_ring_enqueue(self._c, self._size, _from_buffer(frame), len(frame), flags)
            except OverflowError:
                raise RingError(RING_BAD_ARGS) from None
            if code < 0:
                raise RingError(code)
            return code == 1

        def enqueue_burst(self, frames: Sequence[Buffer], flags: int = 0) -> int:
            count = len(frames)
            lens = self._burst_lens
            if count > len(lens):
                if count > _INT_MAX:
                    raise RingError(RING_BAD_ARGS)
                lens = self._burst_lens = _new("uint32_t[]", count)
            lens[0:count] = [len(frame) for frame in frames]
            blob = b"".join(frames)
            try:
                code = _c_ring_enqueue_burst(self._c, self._size, blob, len(blob), lens, count, flags)
            except OverflowError:
                raise RingError(RING_BAD_ARGS) from None
            if code < 0:
                raise RingError(code)
            return code

        def _make_room(self, capacity: int, max_n: int) -> None:
            """Size the output buffer to the ring and the arrays to ``max_n`` records."""
            if len(self._out) != capacity:
                self._out_view.release()
                self._out = bytearray(capacity)
                self._out_c = _from_buffer(self._out)
                self._out_view = memoryview(self._out)
            if max_n > self._room:
                room = max(max_n, 64)
                self._lens = _new("uint32_t[]", room)
                self._flags = _new("uint32_t[]", room)
                self._room = room

        def dequeue_burst(self, max_n: int) -> list[tuple[bytes, int]]:
            capacity = self._capacity()
            if capacity < 0:
                raise RingError(capacity)
            if not 0 <= max_n <= _INT_MAX:
                raise RingError(RING_BAD_ARGS)
            max_n = min(max_n, capacity >> 3)  # a record takes 8 bytes at least
            if self._room < max_n or len(self._out) != capacity:
                self._make_room(capacity, max_n)
            count = _c_ring_dequeue_burst(
                self._c, self._size, self._out_c, capacity, self._lens, self._flags, max_n
            )
            if count <= 0:
                if count < 0:
                    raise RingError(count)
                return []
            view = self._out_view
            frames = []
            at = 0
            for length, flags in zip(_unpack(self._lens, count), _unpack(self._flags, count), strict=True):
                end = at + length
                frames.append((view[at:end].tobytes(), flags))
                at = end
            return frames

        def prepare_sleep(self) -> bool:
            code = _c_ring_prepare_sleep(self._c, self._size)
            if code < 0:
                raise RingError(code)
            return code == 1

        def woke(self) -> None:
            code = _c_ring_woke(self._c, self._size)
            if code < 0:
                raise RingError(code)

        def doorbell_due(self) -> bool:
            code = _c_ring_doorbell_due(self._c, self._size, self._last_rung)
            if code < 0:
                raise RingError(code)
            return code == 1

        def release(self) -> None:
            _ffi.release(self._c)
            self._out_view.release()
            super().release()

    NativeRingOps = _NativeRingOps


def ring_backend(native: bool | None = None) -> type[RingOps]:
    """The ring implementation to use: the C one when built (``native=None``), or the one asked
    for; ``RuntimeError`` when ``native=True`` and the native part is not built."""
    if native is None:
        native = NativeRingOps is not None
    if not native:
        return PyRingOps
    if NativeRingOps is None:
        raise RuntimeError("the native part is not built (or TRIO_YASTACK_NO_NATIVE is set)")
    return NativeRingOps


_T = TypeVar("_T")


def _one_call(backend: type[RingOps] | None, mem: Memory, operation: Callable[[RingOps], _T]) -> _T:
    if backend is None:
        raise RuntimeError("the native part is not built (or TRIO_YASTACK_NO_NATIVE is set)")
    with backend(mem) as ops:
        return operation(ops)


# Per-call conveniences on a plain buffer (tests, tools): a ring object caches what these redo.
def py_ring_init(mem: Memory, capacity: int) -> None:
    """Twin of ``yas_ring_init``: make ``mem`` an empty ring of ``capacity`` data bytes."""
    _one_call(PyRingOps, mem, lambda ops: ops.init(capacity))


def py_ring_enqueue(mem: Memory, frame: Buffer, flags: int = 0) -> bool:
    """Twin of ``yas_ring_enqueue``: True when enqueued, False when the ring is full (counted)."""
    return _one_call(PyRingOps, mem, lambda ops: ops.enqueue(frame, flags))


def py_ring_dequeue_burst(mem: Memory, max_n: int) -> list[tuple[bytes, int]]:
    """Twin of ``yas_ring_dequeue_burst``: up to ``max_n`` ``(frame, flags)``, oldest first."""
    return _one_call(PyRingOps, mem, lambda ops: ops.dequeue_burst(max_n))


def native_ring_init(mem: Memory, capacity: int) -> None:
    """The C ``yas_ring_init`` on a Python buffer (8-byte aligned, as an mmap is)."""
    _one_call(NativeRingOps, mem, lambda ops: ops.init(capacity))


def native_ring_enqueue(mem: Memory, frame: Buffer, flags: int = 0) -> bool:
    """The C ``yas_ring_enqueue`` on a Python buffer."""
    return _one_call(NativeRingOps, mem, lambda ops: ops.enqueue(frame, flags))


def native_ring_dequeue_burst(mem: Memory, max_n: int) -> list[tuple[bytes, int]]:
    """The C ``yas_ring_dequeue_burst`` on a Python buffer."""
    return _one_call(NativeRingOps, mem, lambda ops: ops.dequeue_burst(max_n))
