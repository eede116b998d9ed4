"""TCP's byte structures: the send and receive buffers, the out-of-order queue and the SACK scoreboard.

Every sequence number here is an ABSOLUTE, unwrapped Python int.  The connection turns the 32-bit wire
values into a monotonically increasing int at its boundary (once, with ``_seq.unwrap``, next to a
number it already holds), so in this module plain ``<`` and ``-`` are correct and there is no modulo
arithmetic: a connection that crosses 2**32 just sees numbers above 2**32.

All ranges are half-open ``[start, end)``.  SYN and FIN occupy sequence space but are not bytes: these
structures only ever hold data, and the connection accounts for the two flags itself.

Hot path: no per-byte Python loops. The receive buffer is one ``bytearray`` with a head offset that is
compacted once the dead prefix outweighs the live bytes, the send buffer a ring (a bulk sender appends
and acknowledges with the buffer full, where compacting copied every byte once more), so appends and
consumes are amortised O(1) per byte; the queue and the scoreboard keep sorted, merged ranges searched
with ``bisect``. Every structure is bounded: the buffers and the queue by a byte limit (the queue also
by a number of pieces, so tiny segments cannot pin a large overhead), the scoreboard by a number of
ranges.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from itertools import islice

__all__ = ["NO_REASSEMBLY", "NO_SACKS", "ReassemblyQueue", "ReceiveBuffer", "SackScoreboard", "SendBuffer"]

# A slice of a frame at least this long is appended through a memoryview (one copy, into the buffer)
# rather than as a slice (two: the slice, then the append); below it the view's two objects cost more
# than the bytes they save copying.
_VIEW_MIN = 2048
#: the ring of every SendBuffer that holds nothing (never written: see SendBuffer.append)
_NO_RING = bytearray()
# A dead prefix shorter than this is never compacted away: compacting tiny prefixes costs a copy of the
# live bytes for little memory.
_COMPACT_MIN = 4096


def _as_bytes_view(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """``data`` such that ``len()`` counts bytes (a memoryview of e.g. ``'H'`` items counts items)."""
    if isinstance(data, memoryview) and (data.itemsize != 1 or data.ndim != 1):
        return data.cast("B")
    return data


class _ByteQueue:
    """A FIFO of bytes: a bytearray and the offset of its first live byte.

    Consuming only moves the offset; the dead prefix is deleted when it is at least as long as the live
    bytes (and at least ``_COMPACT_MIN``), so the copy of the live bytes that compaction costs is paid
    for by the bytes consumed since the last one: amortised O(1) per byte, and the memory held stays
    within twice the live bytes plus ``_COMPACT_MIN``.
    """

    __slots__ = ("_buf", "_head")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head = 0

    def __len__(self) -> int:
        return len(self._buf) - self._head

    def _extend(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def _extend_from(self, buf: bytes | bytearray | memoryview, start: int, end: int) -> None:
        """Append ``buf[start:end]`` (a segment's payload in its frame), copied once."""
        if end - start >= _VIEW_MIN:
            # released at once: a bytearray frame must stay resizable by its owner
            with memoryview(buf) as whole, whole[start:end] as part:
                self._buf += part
        else:
            self._buf += buf[start:end]

    def _copy(self, offset: int, length: int) -> bytes:
        """``length`` live bytes from ``offset`` (both already clipped), copied once."""
        start = self._head + offset
        # The views are released at once so the bytearray can be resized again (it refuses while any
        # export is alive, which on PyPy would otherwise last until the next collection).
        with memoryview(self._buf) as whole, whole[start : start + length] as part:
            return part.tobytes()

    def _copy_into(self, out: memoryview, length: int) -> None:
        start = self._head
        with memoryview(self._buf) as whole, whole[start : start + length] as part:
            out[:length] = part

    def _consume(self, length: int) -> None:
        head = self._head + length
        buf = self._buf
        if head == len(buf):
            buf.clear()
            head = 0
        elif head >= _COMPACT_MIN and head >= len(buf) - head:
            del buf[:head]
            head = 0
        self._head = head


class SendBuffer:
    """Bytes the application wrote, from snd_una (``start``) onward; bounded by ``limit`` bytes.

    The bytes stay until they are acknowledged, because any of them may have to be sent again.
    ``start`` is the absolute sequence number of the first byte held: the connection sets it once
    (``iss + 1``, after the SYN) and ``acknowledge`` moves it.  It only advances over data bytes, so an
    ACK of our FIN leaves ``start == end`` one below snd_una.

    A ring, not a :class:`_ByteQueue`: a bulk sender acknowledges from the head while it appends at
    the tail with about the whole buffer held, which made the queue compact (``del buf[:head]``:
    CPython copies the live bytes into an exact-size buffer) and then grow again on the next append
    (a copy of the live bytes once more) -- about one copy of every byte sent beyond the one
    ``append`` makes.  The ring copies each byte once in and once out (``append_to``), view to
    view, and grows only when it must hold more: in place while the held bytes start at index 0
    (as the byte queue grew), else into a new ring of twice the size (amortised O(1) per byte),
    never beyond ``limit`` unless more is held; once nothing is held it is let go, so an idle
    connection holds no buffer, as before.

    ``nospace`` (Linux's ``SOCK_NOSPACE``) says whether the last ``append`` left some of its bytes
    out for want of room: the writer has more to send and waits for an ACK to make room, so a
    tail of the queue shorter than a TSO frame is about to be joined by its next write
    (``tcp_output``'s autocorking holds it for that write).
    """

    __slots__ = ("_cap", "_head", "_ring", "_size", "end", "limit", "nospace", "start")

    def __init__(self, limit: int, start: int) -> None:
        self.limit = limit  # SO_SNDBUF; may be changed at any time, shrinking it never drops data
        self.start = start
        #: Sequence number one past the last byte held (where the next ``append`` goes).  A plain
        #: field, moved by ``append`` only (``acknowledge`` moves ``start`` towards it), because
        #: ``tcp_output`` reads it on every call: a property cost two Python calls per read.
        self.end = start
        self._ring = _NO_RING  # the bytes, from _head on, wrapping at _cap (= len(_ring))
        self._cap = 0
        self._head = 0
        self._size = 0  # bytes held (end - start)
        self.nospace = False  # the last append left bytes out (a writer waits for room)

    def __len__(self) -> int:
        return self._size

    def free(self) -> int:
        """Bytes ``append`` would take now; 0 (never negative) after ``limit`` shrank below the held."""
        return max(0, self.limit - self._size)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Take as much of ``data`` as fits (a prefix) and say how many bytes: like a non-blocking
        ``send()``, the caller keeps the rest for when acknowledgements make room."""
        if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
            data = data.cast("B")  # len() must count bytes, and the ring's view takes bytes ("B")
        size = len(data)
        held = self._size
        room = self.limit - held
        taken = size if size < room else room
        if taken <= 0:
            if size:
                self.nospace = True
            return 0
        if held + taken > self._cap:
            if not held:  # an empty buffer's first write: a ring of exactly these bytes (no spare to zero)
                self._ring = bytearray(data if taken == size else memoryview(data)[:taken])
                self._cap = taken
                self._head = 0
            elif not self._head:
                # The held bytes lie at [0, held): fill the ring's end and extend it in place
                # (bytearray's own growth, as the byte queue grew), no held byte copied -- the
                # writes that refill a buffer emptied while the application made more to send.
                ring = self._ring
                cap = self._cap
                with memoryview(data) as whole:
                    if cap > held:
                        with memoryview(ring) as target:
                            target[held:cap] = whole[: cap - held]
                    with whole[cap - held : taken] as part:
                        ring += part
                self._cap = held + taken
            else:
                self._grow(data, taken)
        else:
            cap = self._cap
            tail = self._head + held
            if tail >= cap:
                tail -= cap
            first = cap - tail  # room before the ring wraps
            # View to view, equal lengths: one copy in place.  (A slice assignment to the
            # bytearray itself first copies a source that is no bytearray into a new one, which
            # was a second copy of every byte sent.)
            with memoryview(self._ring) as target, memoryview(data) as source:
                if taken <= first:
                    target[tail : tail + taken] = source if taken == size else source[:taken]
                else:
                    target[tail:cap] = source[:first]
                    target[: taken - first] = source[first:taken]
        self._size = held + taken
        self.end += taken
        self.nospace = taken < size
        return taken

    def _grow(self, data: bytes | bytearray | memoryview, taken: int) -> None:
        """A new ring holding the held bytes, in order from index 0, then ``data[:taken]``, of at
        least twice the old capacity (never beyond ``limit`` unless more is held)."""
        held = self._size
        need = held + taken
        cap = max(need, min(2 * self._cap, max(self.limit, need)))
        ring = bytearray()
        head = self._head
        end = head + held
        with memoryview(self._ring) as view:
            if end <= self._cap:
                ring += view[head:end]
            else:
                ring += view[head:]
                ring += view[: end - self._cap]
        with memoryview(data) as whole, whole[:taken] as part:
            ring += part
        if cap > need:
            ring += bytes(cap - need)
        self._ring = ring
        self._cap = len(ring)
        self._head = 0

    def _parts(self, offset: int, length: int) -> tuple[int, int, int]:
        """Where ``length`` held bytes from ``offset`` lie: ``(at, first, rest)``, ``first`` bytes from
        ring index ``at`` on, then ``rest`` bytes from index 0 (the wrap)."""
        at = self._head + offset
        cap = self._cap
        if at >= cap:
            at -= cap
        first = cap - at
        if length <= first:
            return at, length, 0
        return at, first, length - first

    def peek(self, seq: int, length: int) -> bytes:
        """Bytes ``[seq, seq + length)`` clipped to what is held, without consuming them (what
        tcp_output sends, or sends again).  ``seq`` outside ``[start, end]`` is a caller bug."""
        offset = seq - self.start
        held = self._size
        if offset < 0 or offset > held:
            raise ValueError(f"seq {seq} outside the send buffer [{self.start}, {self.start + held}]")
        if length < 0:
            raise ValueError(f"negative length {length}")
        length = min(length, held - offset)
        if not length:
            return b""
        at, first, rest = self._parts(offset, length)
        # views released at once, so the ring can be replaced or resized right after
        with memoryview(self._ring) as whole:
            with whole[at : at + first] as part:
                out = part.tobytes()
            if rest:
                with whole[:rest] as part:
                    out += part.tobytes()
        return out

    def append_to(self, out: bytearray, seq: int, length: int) -> None:
        """Append bytes ``[seq, seq + length)`` to ``out`` (a frame being built after its
        headers).  A plain slice for a segment's worth of bytes (cheaper there than a view's
        two objects), a view for more (one copy instead of two).  The range must be held (a
        caller bug otherwise)."""
        offset = seq - self.start
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(f"[{seq}, {seq + length}) outside the send buffer")
        ring = self._ring
        at = self._head + offset
        cap = self._cap
        if at >= cap:
            at -= cap
        if length <= cap - at:  # no wrap: the common case
            if length >= _VIEW_MIN:  # one copy (a TSO segment's worth) through a view, released at once
                with memoryview(ring)[at : at + length] as part:
                    out += part
            else:
                out += ring[at : at + length]
            return
        first = cap - at
        with memoryview(ring) as whole:
            with whole[at:] as part:
                out += part
            with whole[: length - first] as part:
                out += part

    def acknowledge(self, upto: int) -> int:
        """Drop the bytes below ``upto`` (an ACK's cumulative acknowledgement), clipped to ``end``,
        because the peer holds them; return how many were dropped.  An old ``upto`` drops nothing."""
        dropped = min(upto, self.end) - self.start
        if dropped <= 0:
            return 0
        self.start += dropped
        size = self._size - dropped
        self._size = size
        if not size:
            # nothing held: let the ring go (an idle connection holds no buffer); the shared empty
            # one is never written (a write to a ring of no capacity makes a new one)
            self._ring = _NO_RING
            self._cap = self._head = 0
            return dropped
        head = self._head + dropped
        if head >= self._cap:
            head -= self._cap
        self._head = head
        return dropped


class ReceiveBuffer(_ByteQueue):
    """In-order bytes waiting for the application, bounded by ``limit``; the window we advertise is
    ``free()``, which is what makes ``append`` never overflow for a peer that respects it."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit  # SO_RCVBUF

    def free(self) -> int:
        """Room left: the receive window before window-scale rounding.  Never negative."""
        return max(0, self.limit - len(self))

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Queue in-order ``data``.  The connection trims segments to the window it advertised, so
        data that does not fit is a bug in the caller: ValueError, nothing taken."""
        data = _as_bytes_view(data)
        if len(data) > self.free():
            raise ValueError(f"{len(data)} bytes do not fit in the {self.free()} free in the receive buffer")
        if data:
            self._extend(data)

    def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``, oldest first; ``b""`` when empty (the caller decides whether that means
        wait or end of stream)."""
        buf = self._buf
        if not self._head and 0 < len(buf) <= max_bytes:
            # Everything, from the bytearray's start: a keep-alive server reading a request that
            # arrived whole (the buffer restarts at 0 each time it is emptied).  One copy, without
            # the two views and the offset arithmetic of the general case.
            data = bytes(buf)
            buf.clear()
            return data
        if max_bytes < 0:
            raise ValueError(f"negative max_bytes {max_bytes}")
        length = min(max_bytes, len(self))
        if length == 0:
            return b""
        data = self._copy(0, length)
        self._consume(length)
        return data

    def peek(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``, oldest first, left in the buffer (``recv`` with ``MSG_PEEK``)."""
        length = min(max(max_bytes, 0), len(self))
        return self._copy(0, length) if length else b""

    def read_into(self, buffer: memoryview | bytearray) -> int:
        """Fill ``buffer`` from its start with up to ``len(buffer)`` bytes (``recv_into``); return how
        many.  A bytearray is written in place, never resized."""
        with memoryview(buffer) as out:
            flat = out if out.format == "B" and out.ndim == 1 else out.cast("B")
            try:
                length = min(flat.nbytes, len(self))
                if length:
                    self._copy_into(flat, length)
                    self._consume(length)
                return length
            finally:
                if flat is not out:
                    flat.release()


class _Block:
    """One contiguous run of out-of-order bytes: ``[start, end)`` held as pieces in order.

    Pieces are never copied together until the block is delivered, so joining two blocks costs only
    the references of the smaller one (small-to-large: O(n log n) over any arrival order).
    """

    __slots__ = ("chunks", "end", "start")

    def __init__(self, start: int, end: int, chunks: deque[bytes]) -> None:
        self.start = start
        self.end = end
        self.chunks = chunks


def _chunk_count(block: _Block) -> int:
    return len(block.chunks)


def _piece(data: bytes | bytearray | memoryview, start: int, end: int) -> bytes:
    """``data[start:end]`` as bytes we own (the frame under a memoryview may be reused by the NIC)."""
    part = data[start:end]
    return part if isinstance(part, bytes) else bytes(part)


class ReassemblyQueue:
    """Out-of-order segments above rcv_nxt (RFC 9293 section 3.10.7.4, and the blocks RFC 2018 SACK
    reports), bounded by ``limit`` bytes.

    Overlaps: the FIRST copy wins.  Only the bytes of an arriving segment that fall in gaps are stored,
    so nothing held is ever rewritten or copied again (RFC 9293 allows either choice).  Held bytes form
    maximal runs (blocks) that never overlap or touch, which are exactly the SACK blocks to report.

    Bounds: ``limit`` bytes of payload (settable) and ``max(MIN_CHUNKS, limit // BYTES_PER_CHUNK)``
    pieces, because each piece costs about 100 bytes of Python objects whatever its length: a flood of
    1-byte segments is refused long before its overhead matters.  Data starting exactly at rcv_nxt is
    exempt from the piece bound (``pop_in_order`` takes it out at once), never from the byte bound.
    """

    __slots__ = ("_blocks", "_chunks", "_ends", "_held", "_recency", "_starts", "limit")

    BYTES_PER_CHUNK = 256
    MIN_CHUNKS = 64

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._starts: list[int] = []  # sorted, parallel to _ends and _blocks (C-speed bisect)
        self._ends: list[int] = []
        self._blocks: list[_Block] = []
        self._recency: dict[_Block, None] = {}  # insertion order = least to most recently updated
        self._held = 0
        self._chunks = 0

    def __len__(self) -> int:
        """Bytes held."""
        return self._held

    def _max_chunks(self) -> int:
        return max(self.MIN_CHUNKS, self.limit // self.BYTES_PER_CHUNK)

    def _touch(self, block: _Block) -> None:
        recency = self._recency
        recency.pop(block, None)
        recency[block] = None

    def insert(self, seq: int, data: bytes | bytearray | memoryview, rcv_nxt: int, window_end: int) -> int:
        """Store segment ``data`` at ``seq``, trimmed to ``[rcv_nxt, window_end)``; return the number of
        NEW bytes stored (0 for a duplicate, data outside the window, or a refusal).

        Refused whole (returns 0, nothing stored) when its new bytes would take the queue over ``limit``
        or its new pieces over the piece bound: the peer sends it again.  The block that receives the
        segment becomes the most recently updated, even for a pure duplicate, because RFC 2018 section 4
        wants the first SACK block to hold the segment that triggered the ACK.
        """
        data = _as_bytes_view(data)
        start = max(seq, rcv_nxt)
        end = min(seq + len(data), window_end)
        if start >= end:
            return 0
        starts, ends, blocks = self._starts, self._ends, self._blocks
        first = bisect_left(ends, start)  # first block ending at or after start: touches or overlaps
        last = bisect_right(starts, end, first)  # blocks [first, last) start at or before end
        # Gaps of the held data inside [start, end): the only bytes that are new.
        gaps: list[tuple[int, int]] = []
        cursor = start
        for index in range(first, last):
            if starts[index] > cursor:
                gaps.append((cursor, starts[index]))
            cursor = max(cursor, ends[index])
        if cursor < end:
            gaps.append((cursor, end))
        if not gaps:  # everything already held (inside one block, since blocks never touch)
            self._touch(blocks[first])
            return 0
        new = sum(gap_end - gap_start for gap_start, gap_end in gaps)
        if self._held + new > self.limit:
            return 0
        if start > rcv_nxt and self._chunks + len(gaps) > self._max_chunks():
            return 0
        self._held += new
        self._chunks += len(gaps)
        if first == last:
            block = _Block(start, end, deque((_piece(data, start - seq, end - seq),)))
            starts.insert(first, start)
            ends.insert(first, end)
            blocks.insert(first, block)
            self._touch(block)
            return new
        # Join the blocks and the gap pieces into the block with most pieces: the others' pieces
        # are moved by reference, the bytes themselves never copied.
        parts: list[_Block | bytes] = []
        gap_iter = iter(gaps)
        next_gap = next(gap_iter, None)
        for index in range(first, last):
            while next_gap is not None and next_gap[0] < starts[index]:
                parts.append(_piece(data, next_gap[0] - seq, next_gap[1] - seq))
                next_gap = next(gap_iter, None)
            parts.append(blocks[index])
        while next_gap is not None:
            parts.append(_piece(data, next_gap[0] - seq, next_gap[1] - seq))
            next_gap = next(gap_iter, None)
        base = max(blocks[first:last], key=_chunk_count)
        base_at = next(i for i, part in enumerate(parts) if part is base)
        chunks = base.chunks
        for part in reversed(parts[:base_at]):
            if isinstance(part, _Block):
                chunks.extendleft(reversed(part.chunks))
                del self._recency[part]
            else:
                chunks.appendleft(part)
        for part in parts[base_at + 1 :]:
            if isinstance(part, _Block):
                chunks.extend(part.chunks)
                del self._recency[part]
            else:
                chunks.append(part)
        base.start = min(start, starts[first])
        base.end = max(end, ends[last - 1])
        starts[first:last] = [base.start]
        ends[first:last] = [base.end]
        blocks[first:last] = [base]
        self._touch(base)
        return new

    def pop_in_order(self, rcv_nxt: int) -> bytes:
        """Remove and return the held bytes that now continue the stream at ``rcv_nxt`` (``b""`` when
        the lowest block starts above it).  Blocks wholly below rcv_nxt, which in-order data arriving
        directly made stale, are discarded; a block straddling rcv_nxt yields only its part above."""
        starts, ends, blocks = self._starts, self._ends, self._blocks
        stale = bisect_right(ends, rcv_nxt)  # blocks ending at or below rcv_nxt
        taken = stale + 1 if stale < len(starts) and starts[stale] <= rcv_nxt else stale
        if taken == 0:
            return b""
        out = b""
        for block in blocks[:taken]:
            self._held -= block.end - block.start
            self._chunks -= len(block.chunks)
            del self._recency[block]
        if taken > stale:
            block = blocks[stale]
            chunks = block.chunks
            skip = rcv_nxt - block.start
            while skip and skip >= len(chunks[0]):
                skip -= len(chunks.popleft())
            if skip:
                chunks[0] = chunks[0][skip:]
            out = b"".join(chunks)
        del starts[:taken], ends[:taken], blocks[:taken]
        return out

    def sack_blocks(self, max_blocks: int) -> list[tuple[int, int]]:
        """Up to ``max_blocks`` ``(start, end)`` blocks, the most recently updated first, then the
        others by recency (RFC 2018 section 4: repeating recent blocks makes each survive lost ACKs).
        Call after ``pop_in_order`` so that no block lies below rcv_nxt."""
        return [(block.start, block.end) for block in islice(reversed(self._recency), max(0, max_blocks))]

    def clear(self) -> None:
        """Forget everything (connection reset or closed)."""
        self._starts.clear()
        self._ends.clear()
        self._blocks.clear()
        self._recency.clear()
        self._held = 0
        self._chunks = 0


class SackScoreboard:
    """The sender's view of what the receiver SACKed (RFC 6675), above snd_una.

    Sorted, merged ``[start, end)`` ranges that never overlap or touch.  At most ``MAX_RANGES`` are
    kept; beyond that the HIGHEST range is forgotten (as FreeBSD stops tracking holes past
    ``net.inet.tcp.sack.maxholes``).  That is the least valuable information and forgetting it is
    always safe: bytes are never believed SACKed that were not, so the worst outcome is a spurious
    retransmission far above snd_una and a larger ``pipe`` (a more conservative sender), never a stall.
    Loss detection near snd_una, where retransmission happens next, still sees MAX_RANGES ranges.

    High-water marks use the module's half-open convention: ``high_rxt`` is one past the last byte
    retransmitted in this recovery (``snd_una`` on entering it, i.e. RFC 6675's HighRxt + 1), and
    ``highest_sacked()`` is one past the highest SACKed byte.
    """

    __slots__ = ("_ends", "_sacked", "_starts")

    MAX_RANGES = 64

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._sacked = 0

    @property
    def sacked_bytes(self) -> int:
        """Bytes above snd_una believed SACKed."""
        return self._sacked

    def __len__(self) -> int:
        """Number of SACKed ranges held."""
        return len(self._starts)

    def update(self, blocks: list[tuple[int, int]], snd_una: int, snd_max: int) -> int:
        """Merge the SACK blocks of one ACK whose cumulative acknowledgement is ``snd_una`` (state
        below it is dropped first); return the bytes this ACK newly reported SACKed, before the range
        bound may forget some (so "new SACK information" for RFC 6675's DupAck test is never missed).

        Ignored: blocks with ``start >= end`` (invalid), beyond ``snd_max`` (we never sent that: a
        broken or lying receiver), and wholly at or below ``snd_una`` (an RFC 2883 D-SACK of data
        already acknowledged, or a stale ACK).  A block straddling ``snd_una`` (a reordered ACK) is
        clipped to it.  A D-SACK above snd_una reports bytes the receiver holds, so merging it is right.
        """
        self.advance(snd_una)
        new = 0
        for start, end in blocks:
            if start >= end or end <= snd_una or end > snd_max:
                continue
            new += self._add(max(start, snd_una), end)
        starts, ends = self._starts, self._ends
        while len(starts) > self.MAX_RANGES:
            self._sacked -= ends.pop() - starts.pop()
        return new

    def _add(self, start: int, end: int) -> int:
        starts, ends = self._starts, self._ends
        first = bisect_left(ends, start)
        last = bisect_right(starts, end, first)
        if first == last:
            starts.insert(first, start)
            ends.insert(first, end)
            self._sacked += end - start
            return end - start
        covered = 0
        for index in range(first, last):
            covered += max(0, min(end, ends[index]) - max(start, starts[index]))
        merged_start = min(start, starts[first])
        merged_end = max(end, ends[last - 1])
        new = end - start - covered
        starts[first:last] = [merged_start]
        ends[first:last] = [merged_end]
        self._sacked += new
        return new

    def advance(self, snd_una: int) -> None:
        """The cumulative ACK moved to ``snd_una``: forget the ranges it covers."""
        starts, ends = self._starts, self._ends
        if not starts or starts[0] >= snd_una:
            return
        gone = bisect_right(ends, snd_una)
        for index in range(gone):
            self._sacked -= ends[index] - starts[index]
        del starts[:gone], ends[:gone]
        if starts and starts[0] < snd_una:
            self._sacked -= snd_una - starts[0]
            starts[0] = snd_una

    def is_sacked(self, seq: int, end: int) -> bool:
        """Whether all of ``[seq, end)`` is SACKed (true for an empty range)."""
        if end <= seq:
            return True
        index = bisect_right(self._starts, seq) - 1
        return index >= 0 and self._ends[index] >= end

    def _above(self, seq: int) -> tuple[int, int]:
        """(ranges, bytes) SACKed at sequence numbers greater than ``seq``."""
        starts, ends = self._starts, self._ends
        after = seq + 1
        index = bisect_right(ends, after)  # first range holding a byte >= seq + 1
        count = len(starts) - index
        total = 0
        for i in range(index, len(starts)):
            total += ends[i] - max(starts[i], after)
        return count, total

    def is_lost(self, seq: int, mss: int, dupthresh: int = 3) -> bool:
        """RFC 6675 IsLost(seq): ``dupthresh`` discontiguous SACKed ranges above ``seq``, or more than
        ``(dupthresh - 1) * mss`` bytes SACKed above it.

        The scoreboard keeps bytes, not segments, so "discontiguous SACKed sequences" are counted as
        ranges; SACKed segments that arrived back to back merge into one range and are counted by the
        byte rule instead, which is what that rule is for."""
        count, total = self._above(seq)
        return count >= dupthresh or total > (dupthresh - 1) * mss

    def highest_sacked(self) -> int | None:
        """One past the highest SACKed byte, or None when nothing is SACKed."""
        return self._ends[-1] if self._ends else None

    def holes(self, snd_una: int, upto: int) -> list[tuple[int, int]]:
        """The unSACKed ranges in ``[snd_una, upto)``, lowest first."""
        starts, ends = self._starts, self._ends
        out: list[tuple[int, int]] = []
        cursor = snd_una
        for index in range(bisect_right(ends, snd_una), len(starts)):
            start = starts[index]
            if start >= upto:
                break
            if start > cursor:
                out.append((cursor, start))
            cursor = max(cursor, ends[index])
        if cursor < upto:
            out.append((cursor, upto))
        return out

    def next_seg(
        self, snd_una: int, snd_nxt: int, high_rxt: int, mss: int, dupthresh: int = 3
    ) -> tuple[int, int] | None:
        """RFC 6675 NextSeg() rule 1: ``(start, end)`` of the first unSACKed bytes at or above
        ``max(snd_una, high_rxt)`` if they IsLost, at most ``mss`` long and stopping at the next
        SACKed byte and at ``snd_nxt``; None otherwise (the caller then applies rules 2-4).

        Only the first candidate hole is examined: IsLost only gets weaker going up (fewer ranges and
        bytes lie above), so if it is not lost no later hole is."""
        starts, ends = self._starts, self._ends
        seq = max(snd_una, high_rxt)
        index = bisect_right(starts, seq)  # first range starting above seq
        if index and ends[index - 1] > seq:  # seq is SACKed: start after that range
            seq = ends[index - 1]
        if seq >= snd_nxt or not self.is_lost(seq, mss, dupthresh):
            return None
        end = min(seq + mss, snd_nxt)
        if index < len(starts):
            end = min(end, starts[index])
        return seq, end

    def pipe(self, snd_una: int, snd_max: int, high_rxt: int, mss: int, dupthresh: int = 3) -> int:
        """RFC 6675 SetPipe(): bytes presumed in flight.  Each unSACKed byte in ``[snd_una, snd_max)``
        counts once unless it IsLost, and once more if it was retransmitted (below ``high_rxt``).

        Computed per hole, not per byte as the RFC states it: within a hole every byte has the same
        SACKed ranges and bytes above it, so IsLost is the same for all of them."""
        starts, ends = self._starts, self._ends
        threshold = (dupthresh - 1) * mss
        rxt_end = min(high_rxt, snd_max)
        total = 0
        above_count = 0
        above_bytes = 0
        hole_end = snd_max
        for index in range(len(starts) - 1, bisect_right(ends, snd_una) - 1, -1):
            start, end = starts[index], ends[index]
            hole_start = max(end, snd_una)
            if hole_start < hole_end:
                if not (above_count >= dupthresh or above_bytes > threshold):
                    total += hole_end - hole_start
                total += max(0, min(hole_end, rxt_end) - hole_start)
            above_count += 1  # as is_lost counts them: every range above the hole, whole
            above_bytes += end - start
            hole_end = min(hole_end, start)
        if snd_una < hole_end:
            if not (above_count >= dupthresh or above_bytes > threshold):
                total += hole_end - snd_una
            total += max(0, min(hole_end, rxt_end) - snd_una)
        return total

    def clear(self) -> None:
        """Forget everything: after a retransmission timeout the receiver may have reneged
        (RFC 2018 section 8), so SACK information must not be trusted any more."""
        self._starts.clear()
        self._ends.clear()
        self._sacked = 0


#: The out-of-order queue and the scoreboard of every connection that has not needed its own yet:
#: shared, always empty (a short in-order connection never queues a segment out of order or hears
#: of a SACK block, and the pair cost ~0.4 us and ~0.5 KB each).  What reads them or clears them
#: may do so as on any empty one; the two places that add to them (``_data_arrives`` for a segment
#: above RCV.NXT, ``_process_ack`` for SACK blocks) first give the connection one of its own.
NO_REASSEMBLY = ReassemblyQueue(0)
NO_SACKS = SackScoreboard()
