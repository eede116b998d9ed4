"""TCP's byte structures (trio_yastack/stack/tcp/_buffers.py): the send and receive buffers, the
out-of-order queue that generates SACK blocks (RFC 2018) and the sender's SACK scoreboard (RFC 6675).

Sequence numbers here are absolute ints, so most tests start just below 2**32 and run across it: a
structure that wrapped, masked or compared modulo 2**32 would fail them.  Randomised tests compare each
structure with a byte-by-byte model that is too slow for the stack but obviously right.
"""

from __future__ import annotations

import ast
import random
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_yastack.stack.tcp import _buffers as _tcp_buffers
from trio_yastack.stack.tcp._buffers import ReassemblyQueue, ReceiveBuffer, SackScoreboard, SendBuffer

BASE = 2**32 - 10  # absolute sequence numbers crossing the 32-bit wrap point
PATTERN = bytes(range(251)) * 34_000  # 8.5 MB; 251 is prime, so no chunk size lines up with the pattern


def stream(start: int, end: int) -> bytes:
    """The bytes ``[start, end)`` of an endless test stream whose byte at ``seq`` is ``seq % 251``."""
    assert end - start <= len(PATTERN) - 251
    offset = start % 251
    return PATTERN[offset : offset + end - start]


def test_module_is_sans_io() -> None:
    """The TCP core must run under a mock clock and a fake network: no trio, time or socket."""
    tree = ast.parse(Path(_tcp_buffers.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "time", "socket", "asyncio", "threading"}


# ---------------------------------------------------------------------------------------------- SendBuffer


def test_send_append_takes_at_most_free() -> None:
    buf = SendBuffer(limit=10, start=BASE)
    assert buf.append(b"abcdefg") == 7
    assert buf.free() == 3
    assert buf.append(b"hijklmn") == 3  # a prefix, like a non-blocking send()
    assert buf.free() == 0
    assert buf.append(b"xyz") == 0
    assert len(buf) == 10
    assert buf.end == BASE + 10
    assert buf.peek(BASE, 100) == b"abcdefghij"


def test_send_shrinking_limit_drops_nothing() -> None:
    buf = SendBuffer(limit=10, start=BASE)
    buf.append(b"0123456789")
    buf.limit = 4
    assert buf.free() == 0  # never negative
    assert len(buf) == 10
    assert buf.append(b"x") == 0
    assert buf.acknowledge(BASE + 7) == 7
    assert buf.free() == 1
    assert buf.append(b"xyz") == 1
    assert buf.peek(BASE + 7, 10) == b"789x"


def test_send_append_counts_bytes_of_any_memoryview() -> None:
    buf = SendBuffer(limit=5, start=0)
    words = memoryview(bytearray(b"\x01\x02\x03\x04\x05\x06")).cast("H")  # 3 items, 6 bytes
    assert buf.append(words) == 5
    assert buf.peek(0, 10) == b"\x01\x02\x03\x04\x05"


def test_send_append_takes_views_of_any_one_byte_format_into_the_ring() -> None:
    """The ring is written view to view (one copy): a view of signed or char items ('b', 'c') is
    taken as its bytes, at the ring's start and across its wrap."""
    buf = SendBuffer(limit=6, start=0)
    assert buf.append(memoryview(bytearray(b"\x01\x02\x03\x04\x05\x06")).cast("b")) == 6
    assert buf.acknowledge(4) == 4
    assert buf.append(memoryview(b"wx").cast("c")) == 2  # at the ring's start
    assert buf.acknowledge(7) == 3  # one byte held, at index 1
    assert buf.append(memoryview(bytearray(b"abcde")).cast("b")) == 5  # 4 to the end, 1 wrapped
    frame = bytearray()
    buf.append_to(frame, 7, 6)
    assert frame == b"xabcde" == buf.peek(7, 6)


def test_send_peek_across_acknowledge_and_the_32_bit_wrap() -> None:
    buf = SendBuffer(limit=1000, start=BASE)
    assert buf.append(stream(BASE, BASE + 30)) == 30
    assert buf.peek(BASE + 5, 10) == stream(BASE + 5, BASE + 15)  # straddles 2**32
    assert buf.acknowledge(BASE + 12) == 12
    assert buf.start == BASE + 12 and buf.start > 2**32
    assert buf.peek(BASE + 12, 100) == stream(BASE + 12, BASE + 30)  # clipped to what is held
    assert buf.peek(BASE + 30, 5) == b""  # at end: nothing yet, not an error
    with pytest.raises(ValueError):
        buf.peek(BASE + 11, 1)  # already acknowledged
    with pytest.raises(ValueError):
        buf.peek(BASE + 31, 1)  # never written
    assert buf.acknowledge(BASE + 5) == 0  # an old ACK drops nothing
    assert buf.start == BASE + 12
    buf.append(stream(BASE + 30, BASE + 40))
    assert buf.peek(BASE + 25, 15) == stream(BASE + 25, BASE + 40)


def test_send_acknowledge_clips_to_end() -> None:
    """An ACK of our FIN covers one sequence number more than the data."""
    buf = SendBuffer(limit=100, start=BASE)
    buf.append(b"hello")
    assert buf.acknowledge(BASE + 6) == 5
    assert len(buf) == 0
    assert buf.start == buf.end == BASE + 5


def test_send_peek_result_does_not_pin_the_buffer() -> None:
    """peek's views are released: the bytearray can be resized (compacted) right after."""
    buf = SendBuffer(limit=100_000, start=0)
    buf.append(bytes(60_000))
    data = buf.peek(0, 50_000)
    assert buf.acknowledge(50_000) == 50_000  # compacts: dead prefix >= live bytes
    buf.append(b"x" * 1000)
    assert len(data) == 50_000 and buf.peek(59_999, 2) == b"\x00x"


def test_send_acknowledge_is_amortised_constant() -> None:
    """1e5 small appends and acks with 8 MB held: copying the held bytes on every ack (``buf =
    buf[n:]``) would move 800 GB, about a minute; the head offset moves ~16 MB."""
    held = 8 << 20
    buf = SendBuffer(limit=2 * held, start=BASE)
    seq = BASE
    while buf.end < BASE + held:
        buf.append(stream(buf.end, buf.end + 10_000))
    for i in range(100_000):
        assert buf.append(stream(buf.end, buf.end + 10)) == 10
        seq += 10
        assert buf.acknowledge(seq) == 10
        if i % 9973 == 0:
            assert buf.peek(seq, 1000) == stream(seq, seq + 1000)
    assert buf.start == seq == BASE + 1_000_000
    assert len(buf) == buf.end - seq
    assert buf.peek(buf.end - 100, 100) == stream(buf.end - 100, buf.end)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 5000)),
            st.tuples(st.just("ack"), st.integers(-100, 6000)),
            st.tuples(st.just("limit"), st.integers(0, 8000)),
        ),
        max_size=60,
    )
)
def test_send_buffer_matches_a_model(ops: list[tuple[str, int]]) -> None:
    buf = SendBuffer(limit=4000, start=BASE)
    start, held, limit = BASE, b"", 4000
    for op, n in ops:
        if op == "append":
            end = start + len(held)
            taken = buf.append(stream(end, end + n))
            assert taken == min(n, max(0, limit - len(held)))
            held += stream(end, end + taken)
        elif op == "ack":
            dropped = buf.acknowledge(start + n)
            assert dropped == max(0, min(n, len(held)))
            start += dropped
            held = held[dropped:]
        else:
            buf.limit = limit = n
        assert (buf.start, len(buf), buf.end) == (start, len(held), start + len(held))
        assert buf.peek(start, len(held) + 1) == held
        if held:
            assert buf.peek(start + len(held) // 2, 7) == held[len(held) // 2 :][:7]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 5000), st.booleans()),
            st.tuples(st.just("ack"), st.integers(-100, 6000), st.booleans()),
            st.tuples(st.just("limit"), st.integers(0, 8000), st.booleans()),
        ),
        max_size=80,
    ),
    st.randoms(use_true_random=False),
)
def test_send_ring_append_to_matches_a_model(ops: list[tuple[str, int, bool]], rng: random.Random) -> None:
    """The ring wraps, grows and lets go of its bytes (appends of any size, memoryviews among
    them, ACKs, SO_SNDBUF changes): ``append_to`` and ``peek`` of any held range, wrapped or not,
    give the model's bytes after the frame's own, and the ring never holds more capacity than
    the larger of the limit and the bytes held (doubling stops there)."""
    buf = SendBuffer(limit=4000, start=BASE)
    start, held, limit, most = BASE, b"", 4000, 4000
    for op, n, as_view in ops:
        if op == "append":
            end = start + len(held)
            data = stream(end, end + n)
            taken = buf.append(memoryview(data) if as_view else data)
            assert taken == min(n, max(0, limit - len(held)))
            held += data[:taken]
        elif op == "ack":
            dropped = buf.acknowledge(start + n)
            assert dropped == max(0, min(n, len(held)))
            start += dropped
            held = held[dropped:]
        else:
            buf.limit = limit = n
            most = max(most, n)
        assert (buf.start, len(buf), buf.end) == (start, len(held), start + len(held))
        assert buf._cap <= max(most, len(held))
        if not held:
            assert buf._cap == 0  # nothing held, no buffer kept
        for _ in range(3):
            offset = rng.randrange(len(held) + 1)
            length = rng.randrange(len(held) - offset + 1)
            frame = bytearray(b"hdr")
            buf.append_to(frame, start + offset, length)
            assert frame == b"hdr" + held[offset : offset + length]
            assert buf.peek(start + offset, length) == held[offset : offset + length]
        with pytest.raises(ValueError):
            buf.append_to(bytearray(), start, len(held) + 1)


def test_send_ring_keeps_its_capacity_while_a_bulk_sender_runs() -> None:
    """A bulk sender's steady state (the buffer full, an ACK of one TSO segment, one more written):
    the ring neither grows nor is replaced, so no byte is copied but in and out."""
    buf = SendBuffer(limit=256 * 1024, start=BASE)
    chunk = 65_160
    while buf.append(stream(buf.end, buf.end + chunk)):
        pass
    ring, cap = buf._ring, buf._cap
    for _ in range(200):
        assert buf.acknowledge(buf.start + chunk) == chunk
        assert buf.append(stream(buf.end, buf.end + chunk)) == chunk
        frame = bytearray()
        buf.append_to(frame, buf.end - chunk, chunk)
        assert frame == stream(buf.end - chunk, buf.end)
        assert buf._ring is ring and buf._cap == cap
    assert cap <= 256 * 1024


# ------------------------------------------------------------------------------------------- ReceiveBuffer


def test_receive_read_oldest_first() -> None:
    buf = ReceiveBuffer(limit=10)
    assert buf.read(5) == b""
    buf.append(b"abc")
    buf.append(memoryview(b"defg"))
    assert (len(buf), buf.free()) == (7, 3)
    assert buf.read(2) == b"ab"
    assert buf.read(0) == b""
    assert buf.read(100) == b"cdefg"
    assert buf.read(1) == b""
    assert buf.free() == 10


def test_receive_append_beyond_free_is_refused_whole() -> None:
    buf = ReceiveBuffer(limit=5)
    buf.append(b"abc")
    with pytest.raises(ValueError):
        buf.append(b"def")
    assert buf.read(10) == b"abc"
    with pytest.raises(ValueError):
        buf.read(-1)


def test_receive_read_into_bytearray_and_memoryview() -> None:
    buf = ReceiveBuffer(limit=100)
    buf.append(b"hello world")
    target = bytearray(b"#" * 8)
    assert buf.read_into(target) == 8
    assert target == b"hello wo"  # written in place, not resized
    window = bytearray(b"..........")
    assert buf.read_into(memoryview(window)[2:7]) == 3
    assert window == b"..rld....."
    assert buf.read_into(bytearray(4)) == 0
    buf.append(b"\x01\x02\x03\x04")
    words = memoryview(bytearray(4)).cast("H")  # counts bytes, not 2-byte items
    assert buf.read_into(words) == 4
    assert words.tobytes() == b"\x01\x02\x03\x04"


def test_receive_consume_is_amortised_constant() -> None:
    """1e5 small appends and reads with 8 MB waiting: copying the rest on each read would take a minute."""
    held = 8 << 20
    buf = ReceiveBuffer(limit=2 * held)
    written = read = BASE
    while written < BASE + held:
        buf.append(stream(written, written + 10_000))
        written += 10_000
    target = bytearray(10)
    for i in range(100_000):
        buf.append(stream(written, written + 10))
        written += 10
        if i % 2:
            assert buf.read(10) == stream(read, read + 10)
        else:
            assert buf.read_into(target) == 10
            assert target == stream(read, read + 10)
        read += 10
    assert len(buf) == written - read
    assert buf.read(len(buf)) == stream(read, written)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=60))
def test_receive_buffer_matches_a_model(ops: list[tuple[bool, int]]) -> None:
    buf = ReceiveBuffer(limit=5000)
    model = bytearray()
    written = 0
    for is_append, n in ops:
        if is_append:
            n = min(n, 5000 - len(model))
            buf.append(stream(written, written + n))
            model += stream(written, written + n)
            written += n
        else:
            out = buf.read(n)
            assert out == model[:n] and out.__class__ is bytes  # whole or in part, a copy
            del model[:n]
        assert len(buf) == len(model) and buf.free() == 5000 - len(model)
    assert buf.read(10_000) == model


# ----------------------------------------------------------------------------------------- ReassemblyQueue


def test_reassembly_in_order() -> None:
    queue = ReassemblyQueue(limit=10_000)
    rcv_nxt = BASE
    delivered = b""
    for seq in range(BASE, BASE + 50, 10):
        assert queue.insert(seq, stream(seq, seq + 10), rcv_nxt, rcv_nxt + 1000) == 10
        data = queue.pop_in_order(rcv_nxt)
        rcv_nxt += len(data)
        delivered += data
        assert len(queue) == 0 and queue.sack_blocks(4) == []
    assert delivered == stream(BASE, BASE + 50)


def test_reassembly_reversed() -> None:
    queue = ReassemblyQueue(limit=100_000)
    segments = [(seq, stream(seq, seq + 100)) for seq in range(BASE, BASE + 10_000, 100)]
    for seq, data in reversed(segments[1:]):
        assert queue.insert(seq, data, BASE, BASE + 20_000) == 100
        assert queue.pop_in_order(BASE) == b""
    assert queue.sack_blocks(4) == [(BASE + 100, BASE + 10_000)]  # one merged block
    assert queue.insert(BASE, segments[0][1], BASE, BASE + 20_000) == 100
    assert queue.pop_in_order(BASE) == stream(BASE, BASE + 10_000)
    assert len(queue) == 0


@st.composite
def segment_arrivals(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A stream length and segments over it (overlapping, duplicated) in arrival order."""
    length = draw(st.integers(1, 400))
    segments = draw(
        st.lists(
            st.tuples(st.integers(0, length - 1), st.integers(1, 120)).map(lambda t: (t[0], t[0] + t[1])),
            min_size=1,
            max_size=40,
        )
    )
    segments += draw(st.lists(st.sampled_from(segments), max_size=5))  # exact duplicates
    return length, draw(st.permutations(segments))


@settings(max_examples=400, deadline=None)
@given(segment_arrivals(), st.integers(30, 600))
def test_reassembly_random_arrivals_yield_the_original_prefix(
    arrivals: tuple[int, list[tuple[int, int]]], window: int
) -> None:
    """Whatever the order, overlaps and duplicates, the bytes delivered are exactly the stream's prefix
    covered so far, counted once; the SACK blocks are exactly the rest of what was accepted."""
    _, segments = arrivals
    queue = ReassemblyQueue(limit=1_000_000)
    rcv_nxt = BASE
    delivered = bytearray()
    accepted: set[int] = set()  # offsets held or delivered
    for start, end in segments:
        seq = BASE + start
        data = stream(seq, BASE + end)
        window_end = rcv_nxt + window
        new = queue.insert(seq, data, rcv_nxt, window_end)
        in_window = set(range(max(seq, rcv_nxt) - BASE, min(BASE + end, window_end) - BASE))
        assert new == len(in_window - accepted)
        accepted |= in_window
        data = queue.pop_in_order(rcv_nxt)
        delivered += data
        rcv_nxt += len(data)
        assert delivered == stream(BASE, rcv_nxt)
        assert rcv_nxt - BASE not in accepted  # everything contiguous was delivered
        blocks = queue.sack_blocks(1000)
        assert sum(e - s for s, e in blocks) == len(queue) == len(accepted) - len(delivered)
        ordered = sorted(blocks)
        assert all(s > rcv_nxt and s < e for s, e in ordered)
        assert all(a[1] < b[0] for a, b in pairwise(ordered))  # disjoint, not touching
        assert {o for s, e in blocks for o in range(s - BASE, e - BASE)} == accepted - set(
            range(rcv_nxt - BASE)
        )
        arrival = max(seq, window_end - window)  # its first byte in the window, if any
        if in_window and arrival >= rcv_nxt:  # still held (even if a duplicate): reported first
            assert blocks[0][0] <= arrival < blocks[0][1]
    covered = 0
    while covered in accepted:
        covered += 1
    assert bytes(delivered) == stream(BASE, BASE + covered)


def test_reassembly_trims_to_the_window() -> None:
    queue = ReassemblyQueue(limit=10_000)
    rcv_nxt, window_end = BASE + 100, BASE + 200
    assert queue.insert(BASE, stream(BASE, BASE + 50), rcv_nxt, window_end) == 0  # old duplicate
    assert queue.insert(BASE + 200, stream(BASE + 200, BASE + 300), rcv_nxt, window_end) == 0  # beyond
    assert queue.insert(BASE + 180, stream(BASE + 180, BASE + 260), rcv_nxt, window_end) == 20
    assert queue.sack_blocks(4) == [(BASE + 180, BASE + 200)]
    assert queue.insert(BASE + 50, stream(BASE + 50, BASE + 130), rcv_nxt, window_end) == 30
    assert queue.pop_in_order(rcv_nxt) == stream(BASE + 100, BASE + 130)
    assert len(queue) == 20


def test_reassembly_first_copy_wins() -> None:
    queue = ReassemblyQueue(limit=10_000)
    assert queue.insert(BASE + 2, b"AAAA", BASE, BASE + 100) == 4
    assert queue.insert(BASE + 8, b"CC", BASE, BASE + 100) == 2
    assert queue.insert(BASE + 1, b"bbbbbbbbbbbb", BASE, BASE + 100) == 6  # fills 1, 6-7, 10-12
    assert queue.insert(BASE, b"z", BASE, BASE + 100) == 1
    assert queue.pop_in_order(BASE) == b"zbAAAAbbCCbbb"


def test_reassembly_byte_limit() -> None:
    queue = ReassemblyQueue(limit=100)
    assert queue.insert(BASE + 10, bytes(60), BASE, BASE + 1000) == 60
    assert queue.insert(BASE + 100, bytes(50), BASE, BASE + 1000) == 0  # 110 > 100: refused whole
    assert len(queue) == 60 and queue.sack_blocks(4) == [(BASE + 10, BASE + 70)]
    # Bytes already held do not count: 70 bytes of which 40 new fit.
    assert queue.insert(BASE + 40, bytes(70), BASE, BASE + 1000) == 40
    assert len(queue) == 100
    assert queue.insert(BASE + 200, b"x", BASE, BASE + 1000) == 0
    assert queue.insert(BASE + 20, bytes(10), BASE, BASE + 1000) == 0  # duplicate: fine, nothing new
    queue.limit = 101
    assert queue.insert(BASE, b"x", BASE, BASE + 1000) == 1
    assert queue.pop_in_order(BASE) == b"x"
    assert queue.pop_in_order(BASE + 1) == b""  # held block starts at +10
    assert len(queue) == 100


def test_reassembly_piece_bound_refuses_tiny_segment_floods() -> None:
    """Each held piece costs ~100 bytes of objects: 1-byte segments hit the piece bound, not `limit`."""
    queue = ReassemblyQueue(limit=1000)  # max(64, 1000 // 256) = 64 pieces
    stored = sum(queue.insert(BASE + 2 * i + 1, b"x", BASE, BASE + 10_000) for i in range(100))
    assert stored == 64 and len(queue) == 64
    assert queue.insert(BASE + 1000, b"y" * 500, BASE, BASE + 10_000) == 0  # a 65th piece
    # Data at rcv_nxt is delivered at once, so it is never refused for pieces (only for bytes).
    assert queue.insert(BASE, b"0", BASE, BASE + 10_000) == 1
    assert queue.pop_in_order(BASE) == b"0x"
    assert queue.insert(BASE + 1000, b"y" * 500, BASE + 2, BASE + 10_000) == 500  # room again


def test_reassembly_pop_discards_stale_and_clips_straddling() -> None:
    """In-order data delivered directly may overtake held blocks: wholly stale ones go, a block
    straddling rcv_nxt yields only its part above."""
    queue = ReassemblyQueue(limit=10_000)
    for start in (10, 30, 50, 70):
        queue.insert(BASE + start, stream(BASE + start, BASE + start + 10), BASE, BASE + 1000)
    for start in (80, 90):  # the block [70, 100) is held as three pieces
        queue.insert(BASE + start, stream(BASE + start, BASE + start + 10), BASE, BASE + 1000)
    assert queue.pop_in_order(BASE + 35) == stream(BASE + 35, BASE + 40)
    assert queue.sack_blocks(4) == [(BASE + 70, BASE + 100), (BASE + 50, BASE + 60)]
    assert len(queue) == 40
    assert queue.pop_in_order(BASE + 85) == stream(BASE + 85, BASE + 100)
    assert len(queue) == 0 and queue.sack_blocks(4) == []


def test_reassembly_sack_blocks_most_recent_first() -> None:
    queue = ReassemblyQueue(limit=10_000)
    window = (BASE, BASE + 1000)
    a, b = (BASE + 100, BASE + 110), (BASE + 200, BASE + 210)
    c, d = (BASE + 300, BASE + 310), (BASE + 400, BASE + 410)
    for s, e in (a, b, c, d):
        queue.insert(s, bytes(e - s), *window)
    assert queue.sack_blocks(4) == [d, c, b, a]
    assert queue.sack_blocks(3) == [d, c, b]  # RFC 2018: 3 blocks fit beside timestamps
    assert queue.sack_blocks(0) == []
    queue.insert(BASE + 102, bytes(3), *window)  # a duplicate inside `a` triggers this ACK
    assert queue.sack_blocks(4) == [a, d, c, b]
    queue.insert(BASE + 210, bytes(5), *window)  # extends b
    assert queue.sack_blocks(4) == [(BASE + 200, BASE + 215), a, d, c]
    queue.insert(BASE + 290, bytes(150), *window)  # covers c and d: one block
    assert queue.sack_blocks(4) == [(BASE + 290, BASE + 440), (BASE + 200, BASE + 215), a]
    queue.insert(BASE + 215, bytes(75), *window)  # fills the gap between b and c+d exactly
    assert queue.sack_blocks(4) == [(BASE + 200, BASE + 440), a]
    assert len(queue) == 250


def test_reassembly_joins_many_blocks_in_any_order() -> None:
    """A segment bridging many blocks stores only the gaps, in stream order."""
    rng = random.Random(7)
    queue = ReassemblyQueue(limit=1_000_000)
    starts = list(range(BASE + 1, BASE + 20_000, 20))
    rng.shuffle(starts)
    for s in starts:
        assert queue.insert(s, stream(s, s + 10), BASE, BASE + 100_000) == 10
    assert queue.insert(BASE, stream(BASE, BASE + 20_001), BASE, BASE + 100_000) == 20_001 - 10 * len(starts)
    assert queue.pop_in_order(BASE) == stream(BASE, BASE + 20_001)


def test_reassembly_clear() -> None:
    queue = ReassemblyQueue(limit=100)
    queue.insert(BASE + 5, bytes(90), BASE, BASE + 1000)
    queue.clear()
    assert len(queue) == 0 and queue.sack_blocks(4) == []
    assert queue.insert(BASE + 5, bytes(90), BASE, BASE + 1000) == 90


# ------------------------------------------------------------------------------------------ SackScoreboard

MSS = 1000


def test_sack_merging_counts_only_new_bytes() -> None:
    board = SackScoreboard()
    una, smax = BASE, BASE + 10_000
    assert board.update([(BASE + 1000, BASE + 2000)], una, smax) == 1000
    assert board.update([(BASE + 1000, BASE + 2000)], una, smax) == 0  # repeated block
    assert board.update([(BASE + 2000, BASE + 2500)], una, smax) == 500  # adjacent: merges
    assert board.update([(BASE + 3000, BASE + 4000), (BASE + 5000, BASE + 6000)], una, smax) == 2000
    assert len(board) == 3
    assert board.update([(BASE + 1500, BASE + 5500)], una, smax) == 1500  # fills two gaps, one range left
    assert len(board) == 1
    assert board.sacked_bytes == 5000
    assert board.is_sacked(BASE + 1000, BASE + 6000)
    assert not board.is_sacked(BASE + 999, BASE + 1001)
    assert board.highest_sacked() == BASE + 6000


def test_sack_ignores_invalid_beyond_and_dsack_blocks() -> None:
    board = SackScoreboard()
    una, smax = BASE + 1000, BASE + 5000
    blocks = [
        (BASE + 500, BASE + 1000),  # RFC 2883 D-SACK: a duplicate of acknowledged data
        (BASE + 2000, BASE + 2000),  # empty
        (BASE + 3000, BASE + 2500),  # reversed
        (BASE + 4000, BASE + 5001),  # beyond anything sent
        (BASE + 3000, BASE + 3500),
    ]
    assert board.update(blocks, una, smax) == 500
    assert board.holes(una, smax) == [(BASE + 1000, BASE + 3000), (BASE + 3500, BASE + 5000)]
    # RFC 2883 D-SACK inside SACKed data adds nothing; a block straddling snd_una is clipped.
    assert board.update([(BASE + 3100, BASE + 3200), (BASE + 3000, BASE + 3500)], una, smax) == 0
    assert board.update([(BASE + 900, BASE + 1100)], una, smax) == 100
    assert board.sacked_bytes == 600


def test_sack_advance_drops_and_clips() -> None:
    board = SackScoreboard()
    board.update([(BASE + 10, BASE + 20), (BASE + 30, BASE + 40), (BASE + 50, BASE + 60)], BASE, BASE + 100)
    board.advance(BASE + 35)
    assert board.sacked_bytes == 15
    assert board.holes(BASE + 35, BASE + 100) == [(BASE + 40, BASE + 50), (BASE + 60, BASE + 100)]
    assert board.is_sacked(BASE + 35, BASE + 40)
    board.advance(BASE + 30)  # backwards: nothing
    assert board.sacked_bytes == 15
    # update() advances too: an ACK that covers everything SACKed empties the board.
    assert board.update([], BASE + 60, BASE + 100) == 0
    assert board.sacked_bytes == 0 and board.highest_sacked() is None
    assert board.holes(BASE + 60, BASE + 100) == [(BASE + 60, BASE + 100)]


def test_sack_is_lost_byte_rule() -> None:
    """More than (DupThresh - 1) * SMSS bytes SACKed above: 2000 bytes is not enough, 2001 is."""
    board = SackScoreboard()
    board.update([(BASE + 1000, BASE + 3000)], BASE, BASE + 10_000)
    assert not board.is_lost(BASE, MSS)
    board.update([(BASE + 3000, BASE + 3001)], BASE, BASE + 10_000)
    assert board.is_lost(BASE, MSS)
    assert not board.is_lost(BASE + 1000, MSS)  # only 2000 bytes lie above seq 1000
    assert board.is_lost(BASE + 999, MSS)
    assert not board.is_lost(BASE, MSS, dupthresh=4)  # needs more than 3000


def test_sack_is_lost_discontiguous_rule() -> None:
    """DupThresh discontiguous SACKed ranges above, however small (small segments)."""
    board = SackScoreboard()
    board.update([(BASE + 10, BASE + 11), (BASE + 20, BASE + 21)], BASE, BASE + 100)
    assert not board.is_lost(BASE, MSS)
    board.update([(BASE + 30, BASE + 31)], BASE, BASE + 100)
    assert board.is_lost(BASE, MSS)
    assert board.is_lost(BASE + 9, MSS)
    assert not board.is_lost(BASE + 10, MSS)  # above seq 10: two ranges
    assert not board.is_lost(BASE, MSS, dupthresh=4)


def test_sack_holes() -> None:
    board = SackScoreboard()
    board.update([(BASE + 2000, BASE + 4000), (BASE + 5000, BASE + 6000)], BASE, BASE + 10_000)
    assert board.holes(BASE, BASE + 10_000) == [
        (BASE, BASE + 2000),
        (BASE + 4000, BASE + 5000),
        (BASE + 6000, BASE + 10_000),
    ]
    assert board.holes(BASE + 2500, BASE + 5500) == [(BASE + 4000, BASE + 5000)]
    assert board.holes(BASE + 2500, BASE + 3000) == []
    assert board.holes(BASE + 4500, BASE + 4600) == [(BASE + 4500, BASE + 4600)]


def rfc6675_example() -> SackScoreboard:
    """Ten 1000-byte segments 0..9 sent from BASE; segments 2-3, 5 and 7 SACKed; 0, 1, 4, 6, 8, 9 not.

    By hand, with DupThresh 3 and SMSS 1000 (IsLost: >= 3 ranges or > 2000 bytes SACKed above):
      hole [0, 2000):     3 ranges, 4000 bytes above  -> lost
      hole [4000, 5000):  2 ranges, 2000 bytes above  -> not lost (2000 is not more than 2000)
      hole [6000, 7000):  1 range,  1000 bytes above  -> not lost
      hole [8000, 10000): nothing above               -> not lost
    """
    board = SackScoreboard()
    blocks = [(BASE + 7000, BASE + 8000), (BASE + 5000, BASE + 6000), (BASE + 2000, BASE + 4000)]
    assert board.update(blocks, BASE, BASE + 10_000) == 4000
    return board


def test_sack_pipe_hand_worked_rfc6675_example() -> None:
    """SetPipe: not-lost unSACKed bytes count once, retransmitted bytes once more.

    Nothing retransmitted: 0 + 1000 + 1000 + 2000 = 4000.  Segment 0 retransmitted (HighRxt + 1 =
    1000): 4000 + 1000 = 5000.  Segments 0, 1 and 4 retransmitted (high_rxt = 5000): the lost hole adds
    2000, the not-lost one 1000 more: 4000 + 2000 + 1000 = 7000."""
    board = rfc6675_example()
    assert board.pipe(BASE, BASE + 10_000, BASE, MSS) == 4000
    assert board.pipe(BASE, BASE + 10_000, BASE + 1000, MSS) == 5000
    assert board.pipe(BASE, BASE + 10_000, BASE + 5000, MSS) == 7000
    # With DupThresh 2, hole [4000, 5000) (2 ranges above) is lost too: 4000 - 1000.
    assert board.pipe(BASE, BASE + 10_000, BASE, MSS, dupthresh=2) == 3000
    # Once the cumulative ACK covers segments 0-3, nothing below is lost any more.
    board.advance(BASE + 4000)
    assert board.pipe(BASE + 4000, BASE + 10_000, BASE + 4000, MSS) == 4000


def test_sack_next_seg_hand_worked_rfc6675_example() -> None:
    board = rfc6675_example()
    assert board.next_seg(BASE, BASE + 10_000, BASE, MSS) == (BASE, BASE + 1000)
    assert board.next_seg(BASE, BASE + 10_000, BASE + 1000, MSS) == (BASE + 1000, BASE + 2000)
    # Starting mid-hole, the segment stops where the SACKed range begins.
    assert board.next_seg(BASE, BASE + 10_000, BASE + 1500, MSS) == (BASE + 1500, BASE + 2000)
    # Segments 0-1 retransmitted: the next hole [4000, 5000) is not lost, so rule 1 gives nothing.
    assert board.next_seg(BASE, BASE + 10_000, BASE + 2000, MSS) is None
    # One more SACKed range above it makes it lost (3 discontiguous ranges above).
    board.update([(BASE + 9000, BASE + 9500)], BASE, BASE + 10_000)
    assert board.next_seg(BASE, BASE + 10_000, BASE + 2000, MSS) == (BASE + 4000, BASE + 5000)
    # high_rxt on the last SACKed byte of a range: that byte is not sent again.
    assert board.next_seg(BASE, BASE + 10_000, BASE + 3999, MSS) == (BASE + 4000, BASE + 5000)
    assert board.next_seg(BASE, BASE + 10_000, BASE + 2000, 300) == (BASE + 4000, BASE + 4300)
    assert board.next_seg(BASE, BASE + 4200, BASE + 2000, MSS) == (BASE + 4000, BASE + 4200)  # snd_nxt
    assert board.next_seg(BASE, BASE, BASE, MSS) is None  # after an RTO pulled snd_nxt back


def test_sack_range_bound_forgets_the_highest() -> None:
    board = SackScoreboard()
    cap = SackScoreboard.MAX_RANGES
    blocks = [(BASE + 10 * i + 5, BASE + 10 * i + 10) for i in range(cap + 20)]
    new = sum(board.update([block], BASE, BASE + 100_000) for block in blocks)
    assert new == 5 * len(blocks)  # each was new information when it arrived
    assert len(board) == cap
    assert board.sacked_bytes == 5 * cap
    assert board.highest_sacked() == BASE + 10 * (cap - 1) + 10
    assert board.is_sacked(BASE + 5, BASE + 10)
    assert not board.is_sacked(*blocks[-1])  # forgotten: at worst retransmitted spuriously
    board.update([(BASE, BASE + 5)], BASE, BASE + 100_000)  # merging frees a slot ...
    assert len(board) == cap


def test_sack_clear() -> None:
    board = rfc6675_example()
    board.clear()
    assert board.sacked_bytes == 0 and board.highest_sacked() is None
    assert board.holes(BASE, BASE + 10_000) == [(BASE, BASE + 10_000)]
    assert board.pipe(BASE, BASE + 10_000, BASE, MSS) == 10_000


def _reference_lost(sacked: set[int], seq: int, mss: int, dupthresh: int) -> bool:
    """RFC 6675 IsLost over a set of SACKed octets, counting maximal runs as discontiguous sequences."""
    above = sorted(o for o in sacked if o > seq)
    runs = sum(1 for i, o in enumerate(above) if i == 0 or above[i - 1] != o - 1)
    return runs >= dupthresh or len(above) > (dupthresh - 1) * mss


sack_blocks_strategy = st.lists(
    st.lists(st.tuples(st.integers(-20, 140), st.integers(-20, 140)), max_size=4), min_size=1, max_size=12
)


@settings(max_examples=300, deadline=None)
@given(
    sack_blocks_strategy,
    st.lists(st.integers(0, 30), min_size=12, max_size=12),
    st.integers(1, 12),
    st.integers(1, 4),
    st.integers(0, 130),
)
def test_sack_scoreboard_matches_the_rfc_octet_by_octet(
    acks: list[list[tuple[int, int]]], una_steps: list[int], mss: int, dupthresh: int, rxt: int
) -> None:
    """Merged ranges against a set of octets; SetPipe and NextSeg against the RFC's per-octet
    definitions (the module computes them per hole)."""
    board = SackScoreboard()
    sacked: set[int] = set()
    snd_una, snd_max = BASE, BASE + 120
    for blocks, step in zip(acks, una_steps, strict=False):
        snd_una = min(snd_una + step, snd_max)
        blocks = [(BASE + s, BASE + e) for s, e in blocks]
        sacked = {o for o in sacked if o >= snd_una}
        before = len(sacked)
        for s, e in blocks:
            if s < e and snd_una < e <= snd_max:
                sacked |= set(range(max(s, snd_una), e))
        assert board.update(blocks, snd_una, snd_max) == len(sacked) - before
        assert board.sacked_bytes == len(sacked)
        expected_holes: list[tuple[int, int]] = []
        for o in range(snd_una, snd_max):
            if o not in sacked:
                if expected_holes and expected_holes[-1][1] == o:
                    expected_holes[-1] = (expected_holes[-1][0], o + 1)
                else:
                    expected_holes.append((o, o + 1))
        assert board.holes(snd_una, snd_max) == expected_holes
        assert board.highest_sacked() == (max(sacked) + 1 if sacked else None)
        for o in range(snd_una, snd_max, 7):
            assert board.is_sacked(o, o + 3) == ({o, o + 1, o + 2} <= sacked)
            assert board.is_lost(o, mss, dupthresh) == _reference_lost(sacked, o, mss, dupthresh)
        high_rxt = max(snd_una, BASE + rxt)
        pipe = 0
        for o in range(snd_una, snd_max):  # SetPipe, octet by octet
            if o not in sacked:
                if not _reference_lost(sacked, o, mss, dupthresh):
                    pipe += 1
                if o < high_rxt:
                    pipe += 1
        assert board.pipe(snd_una, snd_max, high_rxt, mss, dupthresh) == pipe
        snd_nxt = snd_max - 5
        first = next((o for o in range(high_rxt, snd_nxt) if o not in sacked), None)
        expected = None
        if first is not None and _reference_lost(sacked, first, mss, dupthresh):
            end = first
            while end < min(first + mss, snd_nxt) and end not in sacked:
                end += 1
            expected = (first, end)
        assert board.next_seg(snd_una, snd_nxt, high_rxt, mss, dupthresh) == expected


def test_far_above_2_64() -> None:
    """Nothing masks to 32 or 64 bits: a long-lived connection's unwrapped numbers keep growing."""
    far = 2**80 + 12345
    buf = SendBuffer(limit=100, start=far)
    buf.append(b"abcdef")
    assert buf.acknowledge(far + 2) == 2 and buf.peek(far + 2, 10) == b"cdef"
    queue = ReassemblyQueue(limit=100)
    assert queue.insert(far + 10, b"xyz", far, far + 50) == 3
    assert queue.sack_blocks(3) == [(far + 10, far + 13)]
    board = SackScoreboard()
    assert board.update([(far + 3000, far + 6000)], far, far + 10_000) == 3000
    assert board.next_seg(far, far + 10_000, far, MSS) == (far, far + 1000)
    assert board.pipe(far, far + 10_000, far, MSS) == 4000  # [0, 3000) lost; [6000, 10000) in flight


@pytest.mark.parametrize("length", [0, 1, 2047, 2048, 65_000])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_receive_buffer_extend_from_copies_the_slice_once_and_lets_go(length: int, kind: type) -> None:
    """``_extend_from`` (header prediction's append): the payload in its frame, by slice below
    2 KiB and by a released view above; a bytearray frame stays resizable afterwards."""
    frame = bytes(range(256)) * ((length + 100) // 256 + 1)
    source = kind(frame) if kind is not memoryview else memoryview(bytearray(frame))
    buf = ReceiveBuffer(1 << 20)
    buf.append(b"head")
    buf._extend_from(source, 50, 50 + length)
    assert buf.read(1 << 20) == b"head" + frame[50 : 50 + length]
    if isinstance(source, bytearray):
        source += b"more"  # would raise BufferError if a view were still exported
