"""A bulk sender's short frames (issue 19).  While the writer waits for room
(``SendBuffer.nospace``, Linux's ``SOCK_NOSPACE``), the part of the queue shorter than a full
frame is held for the write that the ACK making room wakes, not sent as a frame of its own.

With its send buffer full, a bulk sender held whole frames and a remainder (256 KiB = four 64 KB
TSO frames and 1 504 bytes); each time an ACK caught the sender up, the remainder left as a frame
of one segment -- 8-9 % of the frames of a TAP run, each costing a whole frame's path on both
sides.  And after a loss, TSO frames of half a window rounded up to whole segments, so that
a window is two frames and not two and a frame of a segment or two.  Tier 2 drives one
``StackCore`` by hand, as ``test_tcp_autocork.py`` does.
"""

from __future__ import annotations

from typing import Any

from tcp_helpers import T0, Peer, open_passive, tcp_core

from trio_yastack.stack import StackCore
from trio_yastack.stack.tcp._buffers import SendBuffer

MSS = 1448  # 1500 - 40 - 12 (timestamps)


def test_nospace_says_whether_the_last_append_left_bytes_out() -> None:
    buf = SendBuffer(limit=1000, start=0)
    assert not buf.nospace
    assert buf.append(b"a" * 600) == 600 and not buf.nospace
    assert buf.append(b"b" * 600) == 400 and buf.nospace  # a prefix taken: the writer has more
    assert buf.append(b"c" * 10) == 0 and buf.nospace  # nothing taken: it waits for room
    assert buf.append(b"") == 0 and buf.nospace  # an empty write says nothing about room
    buf.acknowledge(300)
    assert buf.nospace  # an ACK makes room; the writer has not written yet
    assert buf.append(memoryview(b"d" * 300)) == 300 and not buf.nospace  # all of it taken
    assert buf.peek(300, 700) == b"a" * 300 + b"b" * 400


def full_buffer_sender(*, cork: bool) -> tuple[StackCore, Any, Peer]:
    """A connection whose send buffer holds two segments and 100 bytes, the two in flight and
    the 100 bytes held by Nagle, its writer waiting with more to write."""
    core = tcp_core(seed=3)
    core.cork_tails = cork
    _listener, conn, peer = open_passive(core)
    conn.sndbuf.limit = 2 * MSS + 100
    assert conn.send(b"a" * 4000, T0 + 1) == 2 * MSS + 100
    assert conn.sndbuf.nospace
    sent = peer.receive()  # the runtime's flush (a new tx generation)
    assert [len(s.payload) for s in sent] == [MSS, MSS]  # Nagle holds the 100 bytes behind them
    return core, conn, peer


def test_the_tail_waits_for_the_write_the_ack_wakes() -> None:
    core, conn, peer = full_buffer_sender(cork=True)
    assert peer.send(now=T0 + 1.05) == []  # the ACK of both: the tail is held, not sent alone
    assert conn in core.corked and core.statistics().tcp.counters["autocorked"] == 1
    assert conn.snd_una == conn.snd_nxt == conn.sndbuf.start
    assert conn.send(b"b" * 2000, T0 + 1.05) == 2000  # the woken writer's next write joins it
    assert not conn.sndbuf.nospace
    [segment] = peer.receive()  # a whole segment of the two; Nagle holds the rest behind it
    assert segment.payload == b"a" * 100 + b"b" * (MSS - 100)
    core.release_corked(T0 + 1.05)
    assert peer.receive() == []  # nothing left to release


def test_a_writer_that_writes_nothing_more_has_its_tail_released() -> None:
    core, conn, peer = full_buffer_sender(cork=True)
    assert peer.send(now=T0 + 1.05) == []
    core.release_corked(T0 + 1.05)  # the poll loop, before it sleeps
    [tail] = peer.receive()
    assert tail.payload == b"a" * 100
    assert not core.corked and conn.snd_nxt == conn.sndbuf.end


def test_without_cork_tails_the_tail_goes_with_the_ack() -> None:
    _core, _conn, peer = full_buffer_sender(cork=False)
    [tail] = peer.send(now=T0 + 1.05)
    assert tail.payload == b"a" * 100


def test_a_writer_with_room_is_not_waited_for() -> None:
    """The same tail, its writer not waiting (its last write taken whole): sent with the ACK."""
    core = tcp_core(seed=3)
    core.cork_tails = True
    _listener, conn, peer = open_passive(core)
    assert conn.send(b"a" * (2 * MSS + 100), T0 + 1) == 2 * MSS + 100
    assert not conn.sndbuf.nospace
    assert [len(s.payload) for s in peer.receive()] == [MSS, MSS]
    [tail] = peer.send(now=T0 + 1.05)
    assert tail.payload == b"a" * 100
    assert not core.corked and core.statistics().tcp.counters["autocorked"] == 0


def test_segments_sent_are_the_bytes_written() -> None:
    """A writer with more than the buffer holds, its tails held and released by turns: the
    bytes leave in order and once, and all of them."""
    core, conn, peer = full_buffer_sender(cork=True)
    written = bytes(range(256)) * 40
    taken = 0
    now = T0 + 1.05
    for _ in range(50):
        peer.send(now=now)  # the ACK of all received, which wakes the writer
        if taken < len(written):
            taken += conn.send(written[taken:], now)
        core.release_corked(now)  # the poll loop's turn
        peer.receive()
        now += 0.05
    assert taken == len(written)
    stream = b"".join(s.payload for s in peer.received)
    assert stream == b"a" * (2 * MSS + 100) + written
    assert conn.snd_una == conn.sndbuf.end


def tso_segments(conn: Any) -> list[int]:
    """The lengths, in segments, of the TSO segments sent so far (one sent-log entry each)."""
    assert conn.rack is not None
    return [(end - start) // MSS for start, end, _time, _flags in conn.rack.entries()]


def test_half_a_window_is_rounded_up_to_whole_segments() -> None:
    """After a loss, TSO frames are half of cwnd so that a window is two frames; 81 segments of
    cwnd leave as 41 and 40, not 40, 40 and a frame of one segment."""
    core = tcp_core(seed=3)
    _listener, conn, peer = open_passive(core)
    assert core.gso_max_size  # the port segments in software: frames of up to 45 segments
    conn.sndbuf.limit = 1 << 20
    conn.cc.ssthresh = 100 * MSS  # the path has lost something: TSO autosizing on
    conn.cc.cwnd = 81 * MSS
    assert conn.snd_wnd > conn.cc.cwnd
    conn.send(bytes(200 * MSS), T0 + 0.06)
    assert tso_segments(conn) == [41, 40]
    assert conn.snd_nxt - conn.snd_una == conn.cc.cwnd
    assert [len(s.payload) for s in peer.receive()] == [MSS] * 81


def test_half_a_window_not_of_whole_segments_is_still_two_frames() -> None:
    core = tcp_core(seed=3)
    _listener, conn, _peer = open_passive(core)
    conn.sndbuf.limit = 1 << 20
    conn.cc.ssthresh = 100 * MSS
    conn.cc.cwnd = 80 * MSS + 700  # not whole segments (CUBIC counts bytes)
    conn.send(bytes(200 * MSS), T0 + 0.06)
    assert tso_segments(conn) == [41, 39]  # the window's rest, under a segment, waits (SWS)
