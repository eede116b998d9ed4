"""The native (C, cffi) functions and their pure-Python twins.

Each native function in ``native/`` has a twin here with the same signature and result; the
package uses the native one when the cffi extension was built and imports, and the twin
otherwise (set ``TRIO_YASTACK_NO_NATIVE=1`` to force the twins).  ``tests/test_native.py``
proves they agree.  Callers import the chosen names (``sum16``) and never check which one
they got.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "NATIVE",
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
    "native_sum16",
    "native_tcp4_segment",
    "native_toeplitz",
    "py_ring_dequeue_burst",
    "py_ring_enqueue",
    "py_ring_init",
    "py_sum16",
    "py_sum16_bytes",
    "py_tcp4_segment",
    "py_toeplitz",
    "ring_backend",
    "ring_max_payload",
    "sum16",
    "sum16_bytes",
    "tcp4_segment",
    "toeplitz",
    "toeplitz_tables",
]

Buffer = bytes | bytearray | memoryview


def py_sum16(buf: Buffer, offset: int, length: int, initial: int) -> int:
    """The 16-bit one's-complement sum of ``buf[offset:offset+length]`` plus ``initial``, folded.

    Why this is fast in pure Python: 2**16 is 1 modulo 0xFFFF, so the big-endian integer value
    of the bytes is congruent to the sum of their 16-bit words modulo 0xFFFF, and one
    ``int.from_bytes`` plus one ``%`` replaces a loop over the words.  End-around-carry addition
    yields 0 only when everything added was zero, and 0xFFFF for any other multiple of 0xFFFF.
    """
    if offset < 0 or length < 0 or offset + length > len(buf):
        raise ValueError("checksum range outside the buffer")
    value = int.from_bytes(buf[offset : offset + length], "big")
    if length & 1:
        value <<= 8  # an odd last byte is the high byte of a zero-padded word
    value += initial
    folded = value % 0xFFFF
    if folded == 0 and value:
        return 0xFFFF
    return folded


native_sum16: Callable[[Buffer, int, int, int], int] | None = None
if not os.environ.get("TRIO_YASTACK_NO_NATIVE"):
    try:
        from trio_yastack._native_cffi import ffi as _ffi
        from trio_yastack._native_cffi import lib as _lib
    except ImportError:  # the optional build did not happen or failed: use the twins
        pass
    else:
        _c_sum16 = _lib.yas_sum16
        _from_buffer = _ffi.from_buffer
        _OUT_OF_RANGE = _lib.YAS_SUM16_OUT_OF_RANGE

        def native_sum16(buf: Buffer, offset: int, length: int, initial: int) -> int:
            """The C ``yas_sum16``: ``bytes`` pass without a copy, other buffers by ``from_buffer``.

            The C side checks the range against the buffer's length, so a bad offset is a
            ``ValueError`` here and never a read outside the buffer.
            """
            try:
                if type(buf) is bytes:
                    result = _c_sum16(buf, len(buf), offset, length, initial)
                else:
                    result = _c_sum16(_from_buffer(buf), len(buf), offset, length, initial)
            except OverflowError:  # a negative offset or length does not fit size_t
                raise ValueError("checksum range outside the buffer") from None
            if result == _OUT_OF_RANGE:
                raise ValueError("checksum range outside the buffer")
            return result


def py_sum16_bytes(buf: bytes, buflen: int, offset: int, length: int, initial: int) -> int:
    """Twin of the raw C ``yas_sum16`` for ``bytes``: a range outside the buffer gives the
    out-of-range value (0xFFFFFFFF, never a valid sum) instead of raising."""
    if offset < 0 or length < 0 or offset + length > buflen:
        return 0xFFFFFFFF
    return py_sum16(buf, offset, length, initial)


NATIVE = native_sum16 is not None
sum16: Callable[[Buffer, int, int, int], int] = native_sum16 or py_sum16
#: the raw sum over ``bytes`` for the per-packet verification paths: ``(buf, len(buf), offset,
#: length, initial)``, 0xFFFFFFFF when the range is outside the buffer; no wrapper call on top
sum16_bytes: Callable[[bytes, int, int, int, int], int] = _c_sum16 if NATIVE else py_sum16_bytes  # type: ignore[name-defined]


# -- software GSO: one TCP/IPv4 frame cut into MSS-sized frames (native/gso.c) ------------------
_IP_FIELDS = struct.Struct("!HH")  # total length, identification (at IPv4 offset 2)
_SEQ = struct.Struct("!I")


def _segment_layout(frame: Buffer, mss: int) -> tuple[int, int, int, int]:
    """``(tcp_at, headers, payload, count)`` of a TCP/IPv4 frame to segment; ``ValueError`` when
    it is not one (the same checks as the C side)."""
    if not 0 < mss <= 65535 or len(frame) < 54:
        raise ValueError("not a TCP/IPv4 frame to segment")
    if frame[12] != 8 or frame[13] != 0 or frame[14] >> 4 != 4 or frame[23] != 6:
        raise ValueError("not a TCP/IPv4 frame to segment")
    ihl = (frame[14] & 0x0F) * 4
    ip_total = (frame[16] << 8) | frame[17]
    if ihl < 20 or 14 + ip_total > len(frame) or ip_total < ihl + 20:
        raise ValueError("not a TCP/IPv4 frame to segment")
    tcp_at = 14 + ihl
    thl = (frame[tcp_at + 12] >> 4) * 4
    if thl < 20 or ihl + thl > ip_total:
        raise ValueError("not a TCP/IPv4 frame to segment")
    headers = tcp_at + thl
    payload = 14 + ip_total - headers
    return tcp_at, headers, payload, (payload + mss - 1) // mss if payload else 1


def py_tcp4_segment(frame: Buffer, mss: int) -> list[bytes]:
    """Twin of the C ``yas_tcp4_segment``: ``frame`` (Ethernet + IPv4 + TCP + payload; its TCP
    checksum field is ignored) cut into frames of at most ``mss`` payload bytes, each with its
    own IPv4 length, identification (+i) and checksum, sequence number (+i*mss), FIN/PSH only
    on the last and CWR only on the first, and a full TCP checksum (Linux's tcp4_gso_segment)."""
    tcp_at, headers, payload, count = _segment_layout(frame, mss)
    ihl = tcp_at - 14
    thl = headers - tcp_at
    ident = (frame[18] << 8) | frame[19]
    seq = _SEQ.unpack_from(frame, tcp_at + 4)[0]
    flags = frame[tcp_at + 13]
    pseudo = (frame[26] << 8 | frame[27]) + (frame[28] << 8 | frame[29])
    pseudo += (frame[30] << 8 | frame[31]) + (frame[32] << 8 | frame[33]) + 6
    segments = []
    for i in range(count):
        take = mss if i + 1 < count else payload - i * mss
        seg = bytearray(frame[:headers])
        seg += frame[headers + i * mss : headers + i * mss + take]
        _IP_FIELDS.pack_into(seg, 16, ihl + thl + take, (ident + i) & 0xFFFF)
        seg[24:26] = b"\0\0"
        seg[24:26] = (~py_sum16(seg, 14, ihl, 0) & 0xFFFF).to_bytes(2, "big")
        _SEQ.pack_into(seg, tcp_at + 4, (seq + i * mss) & 0xFFFFFFFF)
        f = flags
        if i + 1 < count:
            f &= ~0x09
        if i > 0:
            f &= ~0x80
        seg[tcp_at + 13] = f
        seg[tcp_at + 16 : tcp_at + 18] = b"\0\0"
        checksum = ~py_sum16(seg, tcp_at, thl + take, pseudo + thl + take) & 0xFFFF
        seg[tcp_at + 16 : tcp_at + 18] = checksum.to_bytes(2, "big")
        segments.append(bytes(seg))
    return segments


native_tcp4_segment: Callable[[Buffer, int], list[bytes]] | None = None
if NATIVE:
    _c_segment = _lib.yas_tcp4_segment  # type: ignore[name-defined]

    def native_tcp4_segment(frame: Buffer, mss: int) -> list[bytes]:
        """The C ``yas_tcp4_segment``: all segments in one call, then one copy each out of the
        shared output buffer."""
        _tcp_at, headers, payload, count = _segment_layout(frame, mss)
        stride = headers + mss
        out = bytearray((count - 1) * stride + headers + payload - (count - 1) * mss)
        made = _c_segment(_from_buffer(frame), len(frame), mss, _from_buffer(out), len(out))  # type: ignore[name-defined]
        if made != count:
            raise ValueError(f"segmenting failed ({made})")
        with memoryview(out) as view:
            last = (count - 1) * stride
            frames = [view[at : at + stride].tobytes() for at in range(0, last, stride)]
            frames.append(view[last:].tobytes())
            return frames


#: the chosen software GSO: ``(frame, mss) -> [frames]``
tcp4_segment: Callable[[Buffer, int], list[bytes]] = native_tcp4_segment or py_tcp4_segment


# -- the Toeplitz hash of receive-side scaling (native/rss.c) ----------------------------------------
@functools.lru_cache(maxsize=16)
def toeplitz_tables(key: bytes) -> tuple[tuple[int, ...], ...]:
    """Per input byte position ``i`` (as many as ``key`` can hash: ``len(key) - 4``), a table of
    the 256 values that byte can XOR into the hash.

    Why: the Toeplitz hash is linear over XOR, so the contribution of a byte depends only on its
    value and its position, and a 12-byte flow hashes in 12 lookups instead of 96 bit tests.
    The tables for one key are built once (about 9 000 ints for the 40-byte key) and cached,
    so the per-packet cost of the twin is a dozen subscripts.
    """
    nbits = len(key) * 8
    key_value = int.from_bytes(key, "big")
    tables = []
    for position in range(len(key) - 4):
        # windows[b]: the 32 key bits from input bit 8*position + b (b = 0 is the byte's MSB)
        windows = [(key_value >> (nbits - 32 - 8 * position - b)) & 0xFFFFFFFF for b in range(8)]
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value
            table[value] = table[value ^ low] ^ windows[8 - low.bit_length()]
        tables.append(tuple(table))
    return tuple(tables)


def py_toeplitz(key: bytes, data: Buffer) -> int:
    """Twin of the C ``yas_toeplitz``: the Microsoft RSS Toeplitz hash of ``data`` with ``key``
    (for each set input bit, MSB first, XOR in the 32 key bits starting at that bit).

    ``ValueError`` when the key is shorter than ``len(data) + 4`` bytes: the last input bit
    needs key bits up to ``8 * len(data) + 30``.
    """
    if len(key) < len(data) + 4:
        raise ValueError("the Toeplitz key needs at least len(data) + 4 bytes")
    result = 0
    for table, byte in zip(toeplitz_tables(bytes(key)), data, strict=False):
        result ^= table[byte]
    return result


native_toeplitz: Callable[[bytes, Buffer], int] | None = None
if NATIVE:
    _c_toeplitz = _lib.yas_toeplitz  # type: ignore[name-defined]

    def native_toeplitz(key: bytes, data: Buffer) -> int:
        """The C ``yas_toeplitz``; ``bytes`` pass without a copy, other buffers by
        ``from_buffer``.  The key length is checked here because 0 is also a valid hash."""
        if len(key) < len(data) + 4:
            raise ValueError("the Toeplitz key needs at least len(data) + 4 bytes")
        try:
            return _c_toeplitz(key, len(key), data, len(data))  # type: ignore[no-any-return]
        except TypeError:  # not bytes: a bytearray or memoryview goes by from_buffer
            key_c = key if isinstance(key, bytes) else _from_buffer(key)  # type: ignore[name-defined]
            data_c = data if isinstance(data, bytes) else _from_buffer(data)  # type: ignore[name-defined]
            return _c_toeplitz(key_c, len(key), data_c, len(data))  # type: ignore[no-any-return]


#: the chosen Toeplitz hash: ``(key, data) -> int``
toeplitz: Callable[[bytes, Buffer], int] = native_toeplitz or py_toeplitz


# -- single-producer/single-consumer rings in shared memory (native/ring.c) --------------------------
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

    def __init__(self, mem: Buffer) -> None:
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

    def __init__(self, mem: Buffer) -> None:
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
if NATIVE:
    _c_ring_init = _lib.yas_ring_init  # type: ignore[name-defined]
    _c_ring_enqueue = _lib.yas_ring_enqueue  # type: ignore[name-defined]
    _c_ring_enqueue_burst = _lib.yas_ring_enqueue_burst  # type: ignore[name-defined]
    _c_ring_dequeue_burst = _lib.yas_ring_dequeue_burst  # type: ignore[name-defined]
    _c_ring_prepare_sleep = _lib.yas_ring_prepare_sleep  # type: ignore[name-defined]
    _c_ring_woke = _lib.yas_ring_woke  # type: ignore[name-defined]
    _c_ring_doorbell_due = _lib.yas_ring_doorbell_due  # type: ignore[name-defined]
    _unpack = _ffi.unpack  # type: ignore[name-defined]
    _new = _ffi.new  # type: ignore[name-defined]

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

        def __init__(self, mem: Buffer) -> None:
            super().__init__(mem)
            self._c = _from_buffer(self._mem, require_writable=True)  # type: ignore[name-defined]
            self._out: bytearray | None = None
            self._out_view = memoryview(b"")
            self._out_c: Any = None
            self._room = 0
            self._lens: Any = None
            self._flags: Any = None
            self._burst_lens: Any = _new("uint32_t[]", 64)
            self._last_rung: Any = _new("uint64_t[1]")  # the producer's last sleep rung for

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
                    code = _c_ring_enqueue(self._c, self._size, _from_buffer(frame), len(frame), flags)  # type: ignore[name-defined]
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
            return code  # type: ignore[no-any-return]

        def _make_room(self, capacity: int, max_n: int) -> None:
            """Size the output buffer to the ring and the arrays to ``max_n`` records."""
            if self._out is None or len(self._out) != capacity:
                self._out_view.release()
                self._out = bytearray(capacity)
                self._out_c = _from_buffer(self._out)  # type: ignore[name-defined]
                self._out_view = memoryview(self._out)
            if max_n > self._room or self._lens is None:
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
            if self._room < max_n or self._out is None or len(self._out) != capacity:
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
            _ffi.release(self._c)  # type: ignore[name-defined]
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


def _one_call(backend: type[RingOps] | None, mem: Buffer, operation: str, *args: Any) -> Any:
    if backend is None:
        raise RuntimeError("the native part is not built")
    with backend(mem) as ops:
        return getattr(ops, operation)(*args)


# Per-call conveniences on a plain buffer (tests, tools): a ring object caches what these redo.
def py_ring_init(mem: Buffer, capacity: int) -> None:
    """Twin of ``yas_ring_init``: make ``mem`` an empty ring of ``capacity`` data bytes."""
    _one_call(PyRingOps, mem, "init", capacity)


def py_ring_enqueue(mem: Buffer, frame: Buffer, flags: int = 0) -> bool:
    """Twin of ``yas_ring_enqueue``: True when enqueued, False when the ring is full (counted)."""
    return _one_call(PyRingOps, mem, "enqueue", frame, flags)  # type: ignore[no-any-return]


def py_ring_dequeue_burst(mem: Buffer, max_n: int) -> list[tuple[bytes, int]]:
    """Twin of ``yas_ring_dequeue_burst``: up to ``max_n`` ``(frame, flags)``, oldest first."""
    return _one_call(PyRingOps, mem, "dequeue_burst", max_n)  # type: ignore[no-any-return]


def native_ring_init(mem: Buffer, capacity: int) -> None:
    """The C ``yas_ring_init`` on a Python buffer (8-byte aligned, as an mmap is)."""
    _one_call(NativeRingOps, mem, "init", capacity)


def native_ring_enqueue(mem: Buffer, frame: Buffer, flags: int = 0) -> bool:
    """The C ``yas_ring_enqueue`` on a Python buffer."""
    return _one_call(NativeRingOps, mem, "enqueue", frame, flags)  # type: ignore[no-any-return]


def native_ring_dequeue_burst(mem: Buffer, max_n: int) -> list[tuple[bytes, int]]:
    """The C ``yas_ring_dequeue_burst`` on a Python buffer."""
    return _one_call(NativeRingOps, mem, "dequeue_burst", max_n)  # type: ignore[no-any-return]
