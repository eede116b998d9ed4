"""Loss recovery (issue 19): RACK-TLP (RFC 8985), SACK loss detection by bytes (RFC 6675), PRR
(RFC 6937) and F-RTO (RFC 5682).

Tier 2: the sent log (``stack/tcp/_rack.py``) on hand-made sequences -- what RACK marks lost and
when, the pipe, the next segment to retransmit, a lost retransmission.

Tier 3: two stacks on a ``memory_wire`` under MockClock, the sender's frames lost by a seeded
wrapper (random, or in bursts by a Gilbert-Elliott chain), or its peer's ACKs lost, with and
without reordering and SACK.  Each transfer is run twice in the same test, side by side: with
``TcpConfig(rack=False, frto=False)`` -- exactly the recovery the stack had before (RFC 6675 by
duplicate ACKs, NewReno, no probe, no undo) -- and with the defaults, both against today's
receiver.  Both deliver identical bytes (SHA-256); the counters give retransmission timeouts per
thousand data frames lost, and with SACK the new recovery must need almost none.  ``-s`` prints
the figures.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import pytest
import trio
import trio.testing
from tcp_helpers import ACK, OUR_ISS, T0, Peer, fix_iss, open_active, seq_add, tcp_core
from tcp_sim_helpers import (
    DropPort,
    check_no_internal_errors,
    connected_pair,
    connection,
    drop_nth_data_segment,
    make_payload,
    receive_all,
    send_all_then_eof,
    sha256,
    tcp_segment,
    tcp_stats,
    two_stacks,
)

from trio_yastack.nic import SOAK_FAULTS, FaultPort, Port, PortCapabilities, PortWrapper
from trio_yastack.stack import OffloadPacket, StackCore, TcpConfig
from trio_yastack.stack._native import tcp4_segment
from trio_yastack.stack.tcp._cc import INFINITE_SSTHRESH, NewReno
from trio_yastack.stack.tcp._rack import (
    LOST,
    RACKED,
    RETRANS,
    REXMT_TLP,
    REXMT_TLP_LONE,
    SACKED,
    WC_DEL_ACK_T,
    SentLog,
)
from trio_yastack.stack.wire import TcpRepr
from trio_yastack.stack.wire.tcp import TCP_FIN

SLOW = os.environ.get("YASTACK_SLOW") == "1"
MB = 1_000_000


# -- tier 2: the sent log --------------------------------------------------------------------------
def test_rack_marks_segments_sent_before_a_delivered_one_after_rtt_plus_reordering_window() -> None:
    log = SentLog()
    for i in range(4):  # four segments of 1000 bytes, one millisecond apart
        log.sent(1000 * i, 1000 * (i + 1), 10.0 + i * 0.001)
    log.sacked([(3000, 4000)], now=10.1)  # the fourth arrived; RTT 97 ms
    assert (log.xmit_ts, log.end_seq) == (10.003, 4000)
    assert log.rtt == pytest.approx(0.097)
    # 10 ms of reordering window: the first three are not lost until sent + 97 ms + 10 ms;
    # the timer waits for the last of them (RFC 8985 6.2 step 5: the largest remaining time).
    timeout, lost, _ = log.detect_lost(now=10.1, reo_wnd=0.01)
    assert lost == 0 and timeout == pytest.approx(10.002 + 0.107 - 10.1)
    timeout, lost, _ = log.detect_lost(now=10.1085, reo_wnd=0.01)
    assert lost == 2000 and timeout > 0  # the first two; the third waits one more millisecond
    assert [flags for *_, flags in log.entries()] == [LOST | RACKED, LOST | RACKED, 0, SACKED]
    assert log.pipe() == 1000  # only the third is presumed in flight
    assert log.next_lost(0) == 0


def test_rack_ties_in_transmission_time_are_broken_by_sequence() -> None:
    """A TSO burst leaves at one instant: the entry below a delivered one is older."""
    log = SentLog()
    log.sent(0, 64000, 5.0)
    log.sent(64000, 128000, 5.0)
    log.sacked([(64000, 128000)], now=5.05)
    assert log.detect_lost(now=5.05, reo_wnd=0.0)[1] == 64000
    # ... and nothing above the delivered one is lost by it.
    log.sent(128000, 130000, 5.05)
    assert log.detect_lost(now=9.0, reo_wnd=0.0)[1] == 0


def test_lost_retransmission_is_detected_and_sent_again() -> None:
    log = SentLog()
    log.sent(0, 1000, 1.0)
    log.sent(1000, 2000, 1.0)
    log.sacked([(1000, 2000)], now=1.1)
    log.detect_lost(now=1.1, reo_wnd=0.0)
    log.sent(0, 1000, 1.1)  # the retransmission
    assert [flags for *_, flags in log.entries()] == [LOST | RETRANS, SACKED]
    assert log.next_lost(0) == -1 and log.pipe() == 1000
    log.sent(2000, 3000, 1.2)  # new data, sent after the retransmission, is delivered ...
    log.sacked([(1000, 3000)], now=1.3)
    _, lost, lost_rexmit = log.detect_lost(now=1.3, reo_wnd=0.0)
    assert (lost, lost_rexmit) == (1000, 1)  # ... so the retransmission was lost too
    assert log.next_lost(0) == 0


def test_the_probe_in_recovery_picks_the_newest_segment_in_flight() -> None:
    """What a probe in recovery resends: the entry sent last that is neither SACKed nor lost
    and waiting -- the retransmission here, not the newer-numbered lost data behind it."""
    log = SentLog()
    for i in range(4):
        log.sent(1000 * i, 1000 * (i + 1), 1.0)
    log.sacked([(3000, 4000)], now=1.1)
    log.detect_lost(now=1.1, reo_wnd=0.0)  # 0-3000 lost
    assert log.newest_in_flight() == -1  # nothing in flight: SACKed, or lost and waiting
    log.sent(0, 1000, 1.1)  # the first one retransmitted; 1000-3000 wait (PRR)
    assert log.span(log.newest_in_flight()) == (0, 1000, LOST | RETRANS)
    log.sent(1000, 2000, 1.2)
    assert log.span(log.newest_in_flight())[:2] == (1000, 2000)


def test_a_retransmitted_probe_acked_beyond_without_a_dsack_was_a_real_loss() -> None:
    """RFC 8985 7.4.2: the episode ends with a loss only on an ACK beyond the probe (one that
    reaches its end may still be followed by the probe's D-SACK); a probe of new data never."""
    log = SentLog()
    log.sent(0, 1000, 1.0)
    log.sent(1000, 2000, 1.0)
    log.sent(1000, 2000, 1.1)  # the probe: the last segment again
    log.tlp_end, log.tlp_retrans, log.tlp_seq = 2000, True, 1000
    assert log.acked(2000, 1.2, -1.0) is False and log.tlp_end == 2000  # waits
    log.sent(2000, 3000, 1.2)
    assert log.acked(3000, 1.3, -1.0) is True and log.tlp_end == -1
    assert log.acked(3000, 1.3, -1.0) is False  # once
    log.sent(3000, 4000, 1.4)
    log.tlp_end, log.tlp_retrans = 4000, False  # a probe of new data
    assert log.acked(4000, 1.5, -1.0) is False and log.tlp_end == -1


def test_a_dsack_of_the_probe_ends_the_episode_without_a_loss() -> None:
    log = SentLog()
    log.sent(0, 1000, 1.0)
    log.sent(0, 1000, 1.1)  # the probe
    log.tlp_end, log.tlp_retrans, log.tlp_seq = 1000, True, 0
    assert log.dsack([(5000, 6000)], snd_una=1000, snd_nxt=6000) is False  # an ordinary SACK block
    assert log.tlp_end == 1000
    assert log.dsack([(0, 1000)], snd_una=1000, snd_nxt=6000) is True  # RFC 2883: below the ACK
    assert log.tlp_end == -1 and not log.tlp_retrans
    log.sent(1000, 2000, 1.2)
    assert log.acked(2000, 1.3, -1.0) is False


def test_dsacks_widen_the_reordering_window_once_per_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8985 6.2 step 4: each round trip with a D-SACK adds a quarter of min RTT to the
    reordering window (a second D-SACK in the same round does not), within SRTT; sixteen
    recoveries without one bring it back to a quarter of min RTT."""
    fix_iss(monkeypatch)
    core = tcp_core()
    conn, peer = open_active(core)
    rack = conn.rack
    assert rack is not None
    conn.send(bytes(4 * 1448), T0 + 1)
    segments = peer.receive()
    start = segments[0].seq
    mss = len(segments[0].payload)
    peer.send(ACK, now=T0 + 1.05, ack=seq_add(start, 4 * mss))
    assert rack.min_rtt == pytest.approx(0.05)
    conn.send(bytes(2 * 1448), T0 + 1.05)
    assert len(peer.receive()) == 2  # two segments out: the round trip the D-SACK falls in
    base = conn._reo_wnd()
    assert base == pytest.approx(0.05 / 4)
    dsack = ((start, seq_add(start, mss)),)  # below the cumulative ACK: RFC 2883
    peer.send(ACK, now=T0 + 1.06, ack=seq_add(start, 4 * mss), sack_blocks=dsack)
    assert conn._reo_wnd() == pytest.approx(2 * base)
    peer.send(ACK, now=T0 + 1.07, ack=seq_add(start, 4 * mss), sack_blocks=dsack)
    assert conn._reo_wnd() == pytest.approx(2 * base)  # the same round trip
    peer.send(ACK, now=T0 + 1.1, ack=seq_add(start, 6 * mss))  # that round is over
    peer.send(ACK, now=T0 + 1.11, ack=seq_add(start, 6 * mss), sack_blocks=dsack)
    assert conn._reo_wnd() == pytest.approx(3 * base)
    assert conn._reo_wnd() <= conn.srtt
    for _ in range(15):
        rack.recovery_ended()
    assert conn._reo_wnd() == pytest.approx(3 * base)
    rack.recovery_ended()
    assert conn._reo_wnd() == pytest.approx(base)


def test_the_minimum_rtt_is_the_minimum_of_the_last_ten_seconds() -> None:
    """Linux's tcp_min_rtt_wlen: after the path's RTT rose from 10 to 50 ms, the reordering
    window follows within 10 s instead of keeping the 10 ms of the start forever."""
    log = SentLog()
    log.sent(0, 1000, 1.0)
    log.acked(1000, 1.01, -1.0)
    assert log.min_rtt == pytest.approx(0.01)
    seq = 1000
    for second in range(2, 13):  # 50 ms RTT samples, one a second
        log.sent(seq, seq + 1000, float(second))
        seq += 1000
        log.acked(seq, second + 0.05, -1.0)
        expected = 0.01 if second + 0.05 <= 1.01 + 10.0 else 0.05
        assert log.min_rtt == pytest.approx(expected), second
    log.sent(seq, seq + 1000, 13.0)
    log.acked(seq + 1000, 13.03, -1.0)  # a lower one is taken at once
    assert log.min_rtt == pytest.approx(0.03)


def test_an_ack_for_the_original_does_not_count_as_the_retransmission_delivered() -> None:
    """RFC 8985 6.2 step 2: the timestamp echoed is older than the retransmission."""
    log = SentLog()
    log.sent(0, 1000, 1.0)
    log.sent(1000, 2000, 1.001)
    log.acked(1000, now=1.05, tsecr_time=1.0)  # a first RTT sample: 50 ms
    log.sent(1000, 2000, 1.06)  # retransmitted (say by a TLP)
    log.acked(2000, now=1.07, tsecr_time=1.001)  # the ACK echoes the original's timestamp
    assert log.xmit_ts == 1.0 and log.rtt == pytest.approx(0.05)


def test_sack_splits_entries_and_counts_new_bytes_once() -> None:
    log = SentLog()
    log.sent(0, 64000, 1.0)
    assert log.sacked([(10000, 20000)], now=1.1) == 10000
    assert log.sacked([(10000, 30000)], now=1.1) == 10000
    assert [(s, e) for s, e, *_ in log.entries()] == [
        (0, 10000),
        (10000, 20000),
        (20000, 30000),
        (30000, 64000),
    ]
    log.acked(15000, now=1.2, tsecr_time=-1.0)
    assert [(s, e) for s, e, *_ in log.entries()][:2] == [(15000, 20000), (20000, 30000)]


def test_isLost_by_bytes_marks_a_hole_however_few_ranges_report_it() -> None:
    """RFC 6675 IsLost by SACKed bytes: one SACK block of a whole TSO segment above a hole is
    more than (DupThresh - 1) * SMSS, so the hole is lost after one ACK (TSO-aware)."""
    log = SentLog()
    log.sent(0, 64000, 1.0)
    log.sent(64000, 128000, 1.0)
    log.sacked([(64000, 128000)], now=1.1)
    assert log.mark_lost_by_sack(log.sacked_after(), mss=1448) == 64000
    small = SentLog()
    small.sent(0, 1448, 1.0)
    small.sent(1448, 2896, 1.0)
    small.sacked([(1448, 2896)], now=1.1)
    assert small.mark_lost_by_sack(small.sacked_after(), mss=1448) == 0  # one segment above: not yet


def test_the_log_is_bounded() -> None:
    log = SentLog()
    for i in range(SentLog.MAX_ENTRIES + 100):
        log.sent(i, i + 1, float(i))
    assert len(log) == SentLog.MAX_ENTRIES
    assert log.entries()[-1][1] == SentLog.MAX_ENTRIES + 100  # the tail still covers every byte


def test_rto_min_is_configurable_and_checked() -> None:
    assert TcpConfig().rto_min == 0.2
    assert TcpConfig(rto_min=1.0).rto_min == 1.0
    with pytest.raises(ValueError, match="rto_min"):
        TcpConfig(rto_min=0.0)
    with pytest.raises(ValueError, match="rto_min"):
        TcpConfig(rto_min=120.0)


def test_a_sacked_retransmission_counts_whatever_timestamp_the_ack_echoes() -> None:
    """Was a bug (fixed): RACK asked a SACKed retransmission for an echoed timestamp newer than
    it, but an ACK for data out of order echoes TS.Recent, from the last segment that arrived
    in order (RFC 7323 4.3), so a SACKed probe never advanced RACK and what was lost before it
    waited for the RTO (the soak's bad path, a FIN flight).  Now only the RTT test applies
    (Linux's tcp_rack_advance): at least the minimum RTT since the retransmission."""
    log = SentLog()
    log.sent(0, 1000, 1.0)
    log.acked(1000, now=1.04, tsecr_time=1.0)  # min RTT 40 ms
    log.sent(1000, 2000, 1.05)  # one frame of two segments, lost whole
    log.sent(2000, 3000, 1.05)
    log.sent(2000, 3000, 1.2)  # the tail loss probe sends the last segment again
    log.sacked([(2000, 3000)], now=1.25)  # 50 ms after the probe: it arrived
    assert (log.xmit_ts, log.end_seq, log.rtt) == (1.2, 3000, pytest.approx(0.05))
    assert log.detect_lost(1.25, 0.01)[1] == 1000  # the first segment was lost
    early = SentLog()
    early.sent(0, 1000, 1.0)
    early.acked(1000, now=1.04, tsecr_time=1.0)
    early.sent(1000, 2000, 1.05)
    early.sent(1000, 2000, 1.2)
    early.sacked([(1000, 2000)], now=1.21)  # 10 ms: below the min RTT, the original's SACK
    assert early.xmit_ts == 1.0


def test_an_rto_keeps_what_was_sacked_and_going_back_n_skips_it() -> None:
    """Linux's tcp_timeout_mark_lost: the RTO marks lost what the receiver does not hold, and
    going back N sends only that (before, every SACK was forgotten and the whole flight went
    again: 18 segments after one timeout in a soak run).  A first segment SACKed means the
    receiver reneged (RFC 2018 8): then nothing SACKed is trusted."""
    log = SentLog()
    for i in range(5):
        log.sent(1000 * i, 1000 * (i + 1), 1.0)
    log.sacked([(2000, 3000)], now=1.05)
    log.timeout_mark_lost()
    assert [flags for *_, flags in log.entries()] == [LOST, LOST, SACKED, LOST, LOST]
    assert log.unsacked_from(0) == (0, 2000)
    assert log.unsacked_from(1500) == (1500, 2000)
    assert log.unsacked_from(2000) == log.unsacked_from(2500) == (3000, -1)
    assert log.unsacked_from(5000) == (5000, -1)
    reneged = SentLog()
    reneged.sent(0, 1000, 1.0)
    reneged.sent(1000, 2000, 1.0)
    reneged.sacked([(0, 1000)], now=1.05)
    reneged.timeout_mark_lost()
    assert [flags for *_, flags in reneged.entries()] == [LOST, LOST]


def lone_segment(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Peer, StackCore]:
    """A request/response connection: an RTT of 10 ms measured, then a response of one segment
    sent at T0 + 1."""
    fix_iss(monkeypatch)
    core = tcp_core()
    conn, peer = open_active(core, rtt=0.01)
    conn.send(b"x" * 500, T0 + 1)
    assert [len(s.payload) for s in peer.receive()] == [500]
    return conn, peer, core


def test_the_probe_waits_for_the_delayed_ack_of_a_lone_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8985 7.2 as Linux computes it: with one segment in flight, PTO = 2 SRTT + the
    worst-case delayed ACK (200 ms), never later than the RTO.  A request/response peer's
    delayed ACK (40 ms from Linux, 100 ms from FreeBSD and this stack) comes first: no probe
    (with SRTT + 100 ms, one probe went for every two such connections in a multi-core test,
    and its late answers met closed connections)."""
    conn, peer, core = lone_segment(monkeypatch)
    assert conn.rexmt_mode == REXMT_TLP_LONE
    assert conn.t_rexmt == pytest.approx(T0 + 1 + min(2 * conn.srtt + WC_DEL_ACK_T, conn.rto))
    assert conn.t_rexmt - (T0 + 1) > 0.1 + 2 * conn.srtt
    assert run_until(core, peer, T0 + 1.19) == []
    peer.send(ACK, now=T0 + 1.1, ack=seq_add(OUR_ISS, 501))  # the delayed ACK
    assert core.statistics().tcp.tlp_probes == 0 and conn.t_rexmt == 0.0
    conn.send(b"y" * 2920, T0 + 2)  # two segments: 2 SRTT and 2 ms
    assert len(peer.receive()) == 2
    assert conn.t_rexmt == pytest.approx(T0 + 2 + 2 * conn.srtt + 0.002)


def test_a_fin_alone_in_flight_is_probed_not_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PTO of a lone FIN (2 SRTT + 200 ms) would come after the RTO; capped at the RTO, the
    probe goes in its place (the FIN again), so a lost FIN costs no timeout, no backoff, no
    cwnd of one segment."""
    conn, peer, core = lone_segment(monkeypatch)
    peer.send(ACK, now=T0 + 1.1, ack=seq_add(OUR_ISS, 501))
    conn.shutdown(T0 + 2)
    [fin] = peer.receive()
    assert fin.flags & TCP_FIN
    [(when, again)] = run_until(core, peer, T0 + 2 + conn.rto)
    assert again.flags & TCP_FIN and again.seq == fin.seq and when <= T0 + 2 + conn.rto
    stats = core.statistics().tcp
    assert (stats.tlp_probes, stats.rto_timeouts) == (1, 0)


def test_a_lone_segments_probe_timeout_is_rearmed_when_more_data_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was a bug (fixed; issue 19, traced over the TAP at 1 % loss): the peer acknowledged all
    but the last segment of a flight, the PTO was armed for that lone segment (2 SRTT + 200 ms,
    capped at the RTO), and the window sent behind it kept that deadline -- a tail loss in it
    waited 200 ms for the probe.  Sending more arms the PTO of a flight again (RFC 8985 7.2,
    as Linux schedules the probe after each transmission), and that PTO has no 10 ms floor
    (Linux's is 2 SRTT + 2 ms): on a 1 ms path the probe goes 4 ms after the last send."""
    fix_iss(monkeypatch)
    core = tcp_core()
    conn, peer = open_active(core, rtt=0.001)
    conn.send(bytes(4 * 1448), T0 + 1)
    assert len(peer.receive()) == 4
    peer.send(ACK, now=T0 + 1.001, ack=seq_add(OUR_ISS, 1 + 3 * 1448))  # all but the last
    assert conn.rexmt_mode == REXMT_TLP_LONE
    assert conn.t_rexmt == pytest.approx(T0 + 1.001 + min(2 * conn.srtt + WC_DEL_ACK_T, conn.rto))
    conn.send(bytes(3 * 1448), T0 + 1.002)  # a flight more behind it
    assert len(peer.receive()) == 3
    assert conn.rexmt_mode == REXMT_TLP
    assert conn.t_rexmt == pytest.approx(T0 + 1.002 + 2 * conn.srtt + 0.002)
    deadline = conn.t_rexmt
    assert deadline < T0 + 1.01
    [(when, probe)] = run_until(core, peer, T0 + 1.01)  # that flight's tail is lost: probed
    assert when == deadline
    assert probe.seq == seq_add(OUR_ISS, 1 + 6 * 1448) and len(probe.payload) == 1448
    assert core.statistics().tcp.tlp_probes == 1


def test_the_probe_resends_the_last_segment_even_with_new_data_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 19: a probe of new data, when only the flight's ACKs were lost, is one in-order
    segment whose ACK the receiver delays (Linux: up to 40 ms; traced: 42 ms on a 0.2 ms path);
    the last segment again is a duplicate, answered at once.  So the probe is the last segment
    sent, though the send buffer holds data that the windows would let out."""
    fix_iss(monkeypatch)
    core = tcp_core()
    conn, peer = open_active(core, rtt=0.01)
    conn.send(bytes(30 * 1448), T0 + 1)
    flight = peer.receive()
    assert 2 <= len(flight) < 30  # cwnd-limited: the rest waits in the send buffer
    last = flight[-1]
    [(_, probe)] = run_until(core, peer, T0 + 1.1)
    assert probe.seq == seq_add(last.seq, len(last.payload) - 1448) and len(probe.payload) == 1448
    stats = core.statistics().tcp
    assert (stats.tlp_probes, stats.tlp_retransmits, stats.rto_timeouts) == (1, 1, 0)


def test_a_dsack_on_the_ack_that_advances_ends_the_probe_without_a_congestion_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was a bug (fixed; issue 19): the flight arrived, its ACKs were lost, the probe (the last
    segment again) reached the receiver as a duplicate, and Linux answered with one ACK for
    everything carrying a D-SACK of the probe.  The D-SACK was tested against SND.UNA before
    that ACK, so it read as an ordinary SACK block; the next ACK beyond the probe then ended
    the episode as a repaired loss (RFC 8985 7.4) and halved cwnd for nothing.  RFC 2883: a
    D-SACK lies below the cumulative ACK of the segment that carries it."""
    fix_iss(monkeypatch)
    core = tcp_core()
    conn, peer = open_active(core, rtt=0.01)
    conn.send(bytes(4 * 1448), T0 + 1)
    assert len(peer.receive()) == 4
    [(_, probe)] = run_until(core, peer, T0 + 1.1)  # every ACK lost: the probe
    cwnd = conn.cc.cwnd
    end = seq_add(OUR_ISS, 1 + 4 * 1448)
    peer.send(ACK, now=T0 + 1.06, ack=end, sack_blocks=((probe.seq, end),))  # the D-SACK
    conn.send(bytes(1448), T0 + 1.07)
    assert len(peer.receive()) == 1
    peer.send(ACK, now=T0 + 1.08, ack=seq_add(end, 1448))  # beyond the probe
    stats = core.statistics().tcp
    assert stats.tlp_loss_recoveries == 0 and conn.cc.cwnd >= cwnd


def test_a_duplicate_segment_is_answered_with_a_dsack(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 2883: the ACK for a segment wholly below RCV.NXT reports its range first in the SACK
    option, ahead of the blocks of what is held out of order.  Without it a tail loss probe
    that our own stack received twice read as a repaired loss at its sender (RFC 8985 7.4), and
    since the probe resends the last segment, every spurious probe halved the window (issue 19:
    4-20 per 60 MB between two stacks on a memory wire)."""
    fix_iss(monkeypatch)
    core = tcp_core()
    _conn, peer = open_active(core, rtt=0.01)
    first = peer.snd_nxt
    assert peer.send(ACK, b"a" * 1000, now=T0 + 1) == []  # in order, its ACK delayed
    ahead = seq_add(first, 3000)
    [ooo] = peer.send(ACK, b"c" * 1000, now=T0 + 1.01, seq=ahead)  # out of order: SACKed
    assert ooo.options.sack_blocks == ((ahead, seq_add(ahead, 1000)),)
    [dup] = peer.send(ACK, b"a" * 1000, now=T0 + 1.02, seq=first)  # the first again
    assert dup.ack == seq_add(first, 1000)
    assert dup.options.sack_blocks == ((first, seq_add(first, 1000)), (ahead, seq_add(ahead, 1000)))
    assert core.statistics().tcp.duplicate_segments == 1


def test_a_retransmission_lost_while_going_back_n_goes_again_before_the_next_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an RTO the connection goes back N from SND.UNA in slow start, and RFC 6582's rule
    keeps it out of recovery until SND.UNA passes what was sent before the timeout.  When a
    segment going back N sends is lost and the next one is SACKed, RACK marks it lost (RFC 8985
    6.2); it goes again then, as from Linux's loss state, and not at the next, backed-off RTO
    (issue 19: cascades of 200, 400, 800 ms on the soak's bad path)."""
    fix_iss(monkeypatch)
    core = tcp_core(frto=False)  # plain going back N, no F-RTO new data
    conn, peer = open_active(core, rtt=0.05)
    conn.send(bytes(4 * 1448), T0 + 1)  # four segments of 1448 (1460 less the timestamps)
    assert [len(s.payload) for s in peer.receive()] == [1448] * 4
    segment = [seq_add(OUR_ISS, 1 + i * 1448) for i in range(5)]
    # nothing comes back: the probe (the last segment again), then the RTO (the first)
    sent = run_until(core, peer, T0 + 1.35)
    assert [s.seq for _, s in sent] == [segment[3], segment[0]]
    assert core.statistics().tcp.rto_timeouts == 1
    out = peer.send(ACK, now=T0 + 1.36, ack=segment[1])  # the first arrived: two go back N
    assert [s.seq for s in out] == [segment[1], segment[2]]
    # the second is lost, the third arrives (and the probe's copy of the fourth had)
    out = peer.send(ACK, now=T0 + 1.42, ack=segment[1], sack_blocks=((segment[2], segment[4]),))
    assert out == []  # not the second yet (RACK's reordering window), nor the SACKed fourth
    again = run_until(core, peer, T0 + 1.5)  # RACK's reordering window runs out
    assert [s.seq for _, s in again] == [segment[1]]
    assert again[0][0] < T0 + 1.45
    assert core.statistics().tcp.rto_timeouts == 1 and conn.rxtshift == 0


# -- tier 2: F-RTO on one connection -----------------------------------------------------------------
def run_until(core: StackCore, peer: Peer, until: float) -> list[tuple[float, TcpRepr]]:
    """Run the timers at each deadline up to ``until``; ``(time, segment)`` of what they sent."""
    sent = []
    while (deadline := core.next_deadline()) is not None and deadline <= until:
        core.run_timers(deadline)
        sent += [(deadline, seg) for seg in peer.receive()]
    return sent


def frto_connection(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Peer, int]:
    """Seven segments of 1460 in flight (20 bytes held by Nagle), then the RTO's retransmission
    of the first.  No RACK, so that the timer is the RTO and nothing else."""
    fix_iss(monkeypatch)
    core = tcp_core(rack=False)
    conn, peer = open_active(core, ts=False)
    conn.send(bytes(range(256)) * 40, T0 + 1)  # 10240 bytes
    assert [len(s.payload) for s in peer.receive()] == [1460] * 7
    cwnd = conn.cc.cwnd
    [(_, again)] = run_until(core, peer, T0 + 2.5)
    assert again.seq == seq_add(OUR_ISS, 1) and len(again.payload) == 1460
    assert conn.frto == 1 and conn.cc.cwnd == conn.mss
    return conn, peer, cwnd


def test_frto_undoes_a_spurious_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 5682: the originals were only late.  The first ACK after the timeout brings new data
    out (2.2 b), not the rest of the flight again; the second ACK acknowledges data the timer
    never resent (2.3 b): the timeout was spurious and its window reduction is undone."""
    conn, peer, cwnd = frto_connection(monkeypatch)
    out = peer.send(ACK, now=T0 + 2.6, ack=seq_add(OUR_ISS, 1 + 2 * 1460))
    assert [(s.seq, len(s.payload)) for s in out] == [(seq_add(OUR_ISS, 1 + 7 * 1460), 20)]
    peer.send(ACK, now=T0 + 2.7, ack=seq_add(OUR_ISS, 1 + 5 * 1460))
    assert conn.core.statistics().tcp.spurious_rto_undos == 1
    assert conn.frto == 0 and conn.cc.cwnd >= cwnd and conn.snd_nxt == conn.snd_max


def test_frto_goes_back_n_after_a_real_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 5682 2.3 a: after the new data, a duplicate ACK says the flight was really lost:
    no undo, and the rest is resent from SND.UNA in slow start."""
    conn, peer, _cwnd = frto_connection(monkeypatch)
    out = peer.send(ACK, now=T0 + 2.6, ack=seq_add(OUR_ISS, 1 + 1460))
    assert [s.seq for s in out] == [seq_add(OUR_ISS, 1 + 7 * 1460)]  # the new data (2.2 b)
    again = peer.send(ACK, now=T0 + 2.7, ack=seq_add(OUR_ISS, 1 + 1460))
    assert conn.core.statistics().tcp.spurious_rto_undos == 0 and conn.frto == 0
    assert [s.seq for s in again] == [seq_add(OUR_ISS, 1 + i * 1460) for i in (1, 2)]  # back N
    assert conn.cc.cwnd < 3 * conn.mss


# -- tier 2: PRR without SACK (RFC 6937 with RFC 6582's retransmissions) ---------------------------
class RenoRecovery:
    """A connection whose peer does not do SACK (NewReno, no timestamps), 20 segments in flight
    (cwnd set to 20 MSS, RFC 6937's worked example) and 60 queued, and a scripted receiver that
    holds what arrives, drops the segments at ``lose`` (offsets in MSS, once each) and answers
    every segment with a cumulative ACK, in the order the segments left -- the ACK clock of one
    path.  Per ACK it records the data segments the ACK released (their offsets in MSS) and
    whether the connection is in recovery after it."""

    def __init__(self, lose: set[int], segments: int = 60) -> None:
        self.core = tcp_core(sack=False, congestion_control="newreno")
        self.conn, self.peer = open_active(self.core, sack=False, ts=False)
        conn = self.conn
        assert not conn.sack_on and conn.rack is None
        self.mss = mss = conn.mss
        self.base = seq_add(int(conn.iss), 1)
        self.data = make_payload(19, segments * mss)
        self.lose = {i * mss for i in lose}
        self.held: dict[int, bytes] = {}
        self.now = T0 + 1
        assert self.peer.send(ACK, now=self.now) == []  # the window, scaled (RFC 7323)
        conn.cc.cwnd = 20 * mss
        conn.send(self.data, self.now)
        self.wire = deque(self.peer.receive())
        assert len(self.wire) == 20
        self.log: list[tuple[list[int], bool]] = []
        self.pipe_at_exit = self.cwnd_at_exit = -1

    def run(self) -> bytes:
        """Deliver until everything is acknowledged (bounded); what the receiver holds, in order."""
        conn, mss = self.conn, self.mss
        acked = 0
        for _ in range(1000):
            if not self.wire:
                break
            segment = self.wire.popleft()
            start = (segment.seq - self.base) & 0xFFFF_FFFF
            if start in self.lose:
                self.lose.discard(start)
                continue
            self.held[start] = bytes(segment.payload)
            while acked in self.held:
                acked += len(self.held[acked])
            self.now += 0.0005
            was_in_recovery = conn.in_recovery
            answer = self.peer.send(ACK, now=self.now, ack=seq_add(self.base, acked))
            released = [s for s in answer if s.payload]
            if was_in_recovery and not conn.in_recovery:
                self.pipe_at_exit = (conn.snd_max - conn.snd_una) // mss
                self.cwnd_at_exit = conn.cc.cwnd
            offsets = [((s.seq - self.base) & 0xFFFF_FFFF) // mss for s in released]
            self.log.append((offsets, conn.in_recovery))
            self.wire.extend(released)
        assert not self.wire and conn.snd_una == conn.snd_max
        return b"".join(self.held[offset] for offset in sorted(self.held))


def test_prr_without_sack_sends_one_segment_per_two_acks_while_the_pipe_is_above_ssthresh() -> None:
    """One loss in a window of 20 (RFC 6937's example, NewReno's beta 0.5): from the third
    duplicate ACK, the fast retransmit, then about one new segment per two ACKs (PRR's
    proportional part, sndcnt = prr_delivered * ssthresh / RecoverFS - prr_out) while the pipe is
    above ssthresh, one per ACK once it is down to ssthresh (PRR-SSRB) -- not NewReno's silence
    for half a window and then a segment per ACK.  The flight and cwnd at the full ACK are
    ssthresh; no timeout; the data is intact."""
    run = RenoRecovery(lose={0})
    assert run.run() == run.data
    stats = run.core.statistics().tcp
    assert (stats.fast_retransmits, stats.recovery_episodes, stats.rto_timeouts) == (1, 1, 0)
    assert stats.retransmitted_segments == 1
    # The first two duplicate ACKs: limited transmit (RFC 3042), two new segments, 20 and 21.
    assert [released for released, _ in run.log[:2]] == [[20, 21], []]
    in_recovery = [released for released, recovering in run.log if recovering]
    assert in_recovery[0] == [0]  # the third: the fast retransmit
    # RecoverFS = 22 segments (20 and the two of limited transmit), ssthresh = 10: after the
    # n-th ACK of the episode, n * 10 // 22 segments sent in all (the retransmission at least),
    # while the pipe (22 less the segments reported delivered, plus those sent) is above 10:
    # the first 13 ACKs.
    assert run.conn.cc.ssthresh == 10 * run.mss
    sent = [len(released) for released in in_recovery]
    assert [sum(sent[:n]) for n in range(1, 14)] == [max(1, n * 10 // 22) for n in range(1, 14)]
    assert sent[:13] == [1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0]
    # The 14th brings the pipe down to ssthresh; from there one per ACK, the pipe held at
    # ssthresh (PRR-SSRB), until the full ACK.
    assert sent[13] == 0 and set(sent[14:]) == {1}
    assert run.pipe_at_exit == 10
    assert run.cwnd_at_exit == run.conn.cc.ssthresh


def test_prr_without_sack_repairs_several_losses_in_one_window_by_partial_acks() -> None:
    """Segments 0, 5 and 12 of a window of 20 lost: one recovery episode (RFC 6582), each partial
    ACK retransmits the next hole at once (and PRR one new segment with it), everything else is
    paced by PRR -- at most one segment on any other ACK; the flight and cwnd at the full ACK are
    ssthresh; no timeout; the data is intact."""
    run = RenoRecovery(lose={0, 5, 12})
    assert run.run() == run.data
    stats = run.core.statistics().tcp
    assert (stats.fast_retransmits, stats.recovery_episodes, stats.rto_timeouts) == (1, 1, 0)
    assert stats.retransmitted_segments == 3
    in_recovery = [released for released, recovering in run.log if recovering]
    assert in_recovery[0] == [0]
    # Before the first partial ACK, PRR's proportion as with one loss (NewReno's inflation
    # would send nothing new until the duplicate ACKs had inflated cwnd past the flight).
    assert sum(len(released) for released in in_recovery[:10]) == 10 * 10 // 22
    partial = [released for released in in_recovery if len(released) > 1]
    assert [released[0] for released in partial] == [5, 12]  # the hole first
    assert all(len(released) == 2 for released in partial)
    assert run.pipe_at_exit == 10
    assert run.cwnd_at_exit == run.conn.cc.ssthresh == 10 * run.mss


# -- tier 3: recovery over lossy wires ---------------------------------------------------------------
class LossModel:
    """Picks which frames of one direction are lost: each frame of the kind ``data`` selects
    (data-carrying TCP segments, or pure ACKs) is lost with probability ``p``; with ``burst``,
    by a Gilbert-Elliott chain instead (good state: no loss; bad state: ``burst_loss``; moving
    good -> bad with ``p``, bad -> good with ``recover``)."""

    def __init__(
        self, seed: int, p: float, *, data: bool = True, burst: bool = False, recover: float = 0.3,
        burst_loss: float = 0.7,
    ) -> None:  # fmt: skip
        self.rng = random.Random(seed)
        self.p, self.data, self.burst, self.recover, self.burst_loss = p, data, burst, recover, burst_loss
        self.bad = False
        self.lost = 0

    def __call__(self, frame: bytes) -> bool:
        segment = tcp_segment(frame)
        if segment is None or bool(segment.payload_len) != self.data:
            return False
        if self.burst:
            if self.bad:
                self.bad = self.rng.random() >= self.recover
            else:
                self.bad = self.rng.random() < self.p
            lose = self.bad and self.rng.random() < self.burst_loss
        else:
            lose = self.rng.random() < self.p
        self.lost += lose
        return lose


#: name -> (loss of A's data frames, loss of B's ACKs, memory_wire faults)
SCENARIOS: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]] = {
    "random-1%": ({"p": 0.01}, None, {}),
    "random-3%": ({"p": 0.03}, None, {}),
    "burst-GE": ({"p": 0.005, "burst": True}, None, {}),
    "random-1%+reorder": ({"p": 0.01}, None, {"reorder": 0.03}),
    "random-1%+ackloss-5%": ({"p": 0.01}, {"p": 0.05, "data": False}, {}),
}
LEGACY: dict[str, Any] = {"rack": False, "frto": False}


async def lossy_transfer(
    seed: int, size: int, tcp: TcpConfig, data_loss: dict[str, Any] | None, ack_loss: dict[str, Any] | None,
    faults: dict[str, Any],
) -> tuple[dict[str, int], int, str, float]:  # fmt: skip
    """``size`` bytes from A to B over a 10 ms wire: (A's TCP counters, data frames lost, the
    SHA-256 of what B received, simulated seconds)."""
    data = make_payload(seed, size)
    data_model = LossModel(seed, **data_loss) if data_loss else None
    ack_model = LossModel(seed + 1000, **ack_loss) if ack_loss else None

    def wrap(model: LossModel | None) -> Callable[[Port], Port] | None:
        return None if model is None else (lambda port: DropPort(port, model))

    async with two_stacks(
        seed, tcp=tcp, wrap_a=wrap(data_model), wrap_b=wrap(ack_model), latency=0.01, **faults
    ) as (a, b):
        client, server, _listener = await connected_pair(a, b)
        start = trio.current_time()
        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all_then_eof, client, data)
                received = await receive_all(server)
        elapsed = trio.current_time() - start
        assert received == data
        counters = dict(tcp_stats(a).counters)
        await client.aclose()
        await server.aclose()
    check_no_internal_errors(a, b)
    return counters, data_model.lost if data_model else 0, sha256(received), elapsed


@pytest.mark.parametrize("rack", [True, False], ids=["rack-tlp", "without"])
async def test_tail_loss_is_repaired_by_the_probe(autojump_clock: trio.testing.MockClock, rack: bool) -> None:
    """The last segment of a response (with the FIN) is lost: nothing follows it to be SACKed.
    RACK-TLP sends it again after the probe timeout (2 SRTT) without a timeout; without it the
    RTO (200 ms at least) repairs it."""
    data = make_payload(7, 10 * 1448)
    async with two_stacks(
        7, tcp=TcpConfig(rack=rack), wrap_a=lambda port: DropPort(port, drop_nth_data_segment(10)),
        latency=0.01,
    ) as (a, b):  # fmt: skip
        client, server, _listener = await connected_pair(a, b)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all_then_eof, client, data)
            received = await receive_all(server)
        elapsed = trio.current_time() - start
        assert received == data
        stats = tcp_stats(a)
        if rack:
            assert (stats.tlp_probes, stats.tlp_retransmits, stats.rto_timeouts) == (1, 1, 0)
            assert elapsed < 0.2
        else:
            assert (stats.tlp_probes, stats.rto_timeouts) == (0, 1)
            assert elapsed > 0.2
        await client.aclose()
        await server.aclose()


def drop_data_segments(*numbers: int) -> Callable[[bytes], bool]:
    """A ``DropPort`` filter that loses the data-carrying segments sent ``numbers``-th (1-based)."""
    count = 0

    def drop(frame: bytes) -> bool:
        nonlocal count
        segment = tcp_segment(frame)
        if segment is None or not segment.payload_len:
            return False
        count += 1
        return count in numbers

    return drop


@pytest.mark.parametrize("lost", [(40,), (40, 44, 51)], ids=["one-loss", "three-losses"])
async def test_recovery_without_sack_is_paced_by_prr_over_a_wire(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, lost: tuple[int, ...]
) -> None:
    """Two stacks without SACK (NewReno), 300 segments over a 10 ms wire, the data segments sent
    ``lost``-th lost once (three in one window in the second case): the duplicate ACKs start one
    fast recovery, partial ACKs repair the rest, no timeout, the data arrives intact, and at the
    full ACK cwnd is ssthresh with the flight no larger.  (The inflation before PRR passed this
    too, with more in flight at the exit: 7 and 5 segments against 4 and 3 now, ssthresh 9; the
    tier-2 tests above are the ones that tell the two apart, ACK by ACK.)"""
    exits: list[tuple[int, int, int]] = []
    original = NewReno.on_recovery_exit

    def on_recovery_exit(cc: NewReno, now: float) -> None:
        original(cc, now)
        exits.append((cc.cwnd, cc.ssthresh, flight()))

    monkeypatch.setattr(NewReno, "on_recovery_exit", on_recovery_exit)
    config = TcpConfig(sack=False, congestion_control="newreno")
    async with two_stacks(
        23, tcp=config, wrap_a=lambda port: DropPort(port, drop_data_segments(*lost)), latency=0.01
    ) as (a, b):
        client, server, _listener = await connected_pair(a, b)
        conn = connection(client)
        assert not conn.sack_on

        def flight() -> int:
            return conn.snd_max - conn.snd_una

        data = make_payload(23, 300 * conn.mss)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all_then_eof, client, data)
                received = await receive_all(server)
        assert received == data
        stats = tcp_stats(a)
        print(f"lost {lost}: (cwnd, ssthresh, flight) at the exit {exits}")
        assert (stats.rto_timeouts, stats.recovery_episodes, stats.fast_retransmits) == (0, 1, 1)
        assert stats.retransmitted_segments == len(lost)
        [(cwnd, ssthresh, in_flight)] = exits
        assert cwnd == ssthresh and in_flight <= ssthresh
        await client.aclose()
        await server.aclose()
    check_no_internal_errors(a, b)


def drop_twice(n: int) -> Callable[[bytes], bool]:
    """Loses the ``n``-th data segment sent (1-based) and the first retransmission of it."""
    count = 0
    seq = -1
    drops = 0

    def drop(frame: bytes) -> bool:
        nonlocal count, seq, drops
        segment = tcp_segment(frame)
        if segment is None or not segment.payload_len:
            return False
        count += 1
        if count == n:
            seq = segment.seq
        if segment.seq == seq and drops < 2:
            drops += 1
            return True
        return False

    return drop


@pytest.mark.parametrize("rack", [True, False], ids=["rack-tlp", "without"])
async def test_a_lost_retransmission_with_nothing_after_it_is_probed(
    autojump_clock: trio.testing.MockClock, rack: bool
) -> None:
    """The fifth of ten segments is lost, and so is its retransmission, the only segment in
    flight then (everything else is SACKed, nothing new is left to send): no later delivery lets
    RACK see the retransmission lost.  The probe in recovery sends it again after two SRTT; without
    RACK only the RTO (200 ms at least) repairs it."""
    data = make_payload(8, 10 * 1448)
    async with two_stacks(
        8, tcp=TcpConfig(rack=rack), wrap_a=lambda port: DropPort(port, drop_twice(5)), latency=0.01
    ) as (a, b):
        client, server, _listener = await connected_pair(a, b)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all_then_eof, client, data)
            received = await receive_all(server)
        elapsed = trio.current_time() - start
        assert received == data
        stats = tcp_stats(a)
        if rack:
            assert (stats.recovery_probes, stats.rto_timeouts, stats.recovery_episodes) == (1, 0, 1)
            assert elapsed < 0.2
        else:
            assert (stats.recovery_probes, stats.rto_timeouts) == (0, 1)
            assert elapsed > 0.2
        await client.aclose()
        await server.aclose()


@pytest.mark.parametrize("lose", [True, False], ids=["tail-lost", "no-loss"])
async def test_a_probe_that_repaired_a_loss_reduces_cwnd(
    autojump_clock: trio.testing.MockClock, lose: bool
) -> None:
    """RFC 8985 7.4: the last of ten segments is lost and the probe sends it again; once data
    sent after it is acknowledged (no D-SACK came), the loss was real and cwnd is reduced, as a
    fast recovery would have -- without the episode ever entering recovery.  Without the loss,
    no probe and no reduction."""
    first, second = make_payload(9, 10 * 1448), make_payload(10, 20 * 1448)
    drop = drop_nth_data_segment(10) if lose else (lambda frame: False)
    async with two_stacks(9, wrap_a=lambda port: DropPort(port, drop), latency=0.01) as (a, b):
        client, server, _listener = await connected_pair(a, b)
        conn = connection(client)
        await client.send_all(first)
        received = b""
        while len(received) < len(first):
            received += await server.receive_some(65536)
        with trio.fail_after(5):
            while conn.snd_una < conn.snd_max:
                await trio.sleep(0.001)
        stats = tcp_stats(a)
        assert (stats.tlp_retransmits, stats.tlp_loss_recoveries) == ((1, 0) if lose else (0, 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all_then_eof, client, second)
            received += await receive_all(server)
        assert received == first + second
        stats = tcp_stats(a)
        assert (stats.tlp_loss_recoveries, stats.recovery_episodes, stats.rto_timeouts) == (int(lose), 0, 0)
        # slow start ended by the response (CUBIC: ssthresh = 0.7 cwnd), or never
        assert (conn.cc.ssthresh < INFINITE_SSTHRESH) == lose
        await client.aclose()
        await server.aclose()


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "no-sack"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_recovery_needs_far_fewer_timeouts(
    autojump_clock: trio.testing.MockClock, scenario: str, sack: bool
) -> None:
    """Side by side, over seeds: the recovery before (``rack=False, frto=False``) and now.  Both
    deliver the same bytes; with SACK the timeouts per thousand lost data frames must be no more
    than before and at most 10 (measured here on the old receiver, which sent one duplicate ACK
    per burst: 20-170 with SACK, 250-970 without), without SACK (no RACK there: duplicate ACKs
    and F-RTO) they must not rise."""
    import trio._core._run as trio_scheduler  # test-only: make the task order repeatable

    data_loss, ack_loss, faults = SCENARIOS[scenario]
    size = (8 if SLOW else 2) * MB
    seeds = range(40, 48 if SLOW else 43)
    totals = {"before": [0, 0], "after": [0, 0]}  # [rto_timeouts, lost data frames]
    for seed in seeds:
        digests = []
        no_change: dict[str, Any] = {}
        for name, extra in (("before", LEGACY), ("after", no_change)):
            trio_scheduler._r.seed(seed)
            config = TcpConfig(sack=sack, **extra)
            counters, lost, digest, elapsed = await lossy_transfer(
                seed, size, config, data_loss, ack_loss, faults
            )
            digests.append(digest)
            totals[name][0] += counters["rto_timeouts"]
            totals[name][1] += lost
            print(
                f"{scenario} {'sack' if sack else 'no-sack'} seed {seed} {name}: lost={lost} "
                f"rto={counters['rto_timeouts']} recoveries={counters['recovery_episodes']} "
                f"rack={counters['rack_retransmits']} tlp={counters['tlp_probes']} "
                f"lost_rexmit={counters['lost_retransmits']} undo={counters['spurious_rto_undos']} "
                f"retransmitted={counters['retransmitted_segments']} simulated_s={elapsed:.2f}"
            )
        assert digests[0] == digests[1] == sha256(make_payload(seed, size))
    per_k = {name: 1000 * rto / max(lost, 1) for name, (rto, lost) in totals.items()}
    print(f"{scenario} {'sack' if sack else 'no-sack'}: timeouts per 1000 lost data frames {per_k}")
    assert totals["after"][1] > 0  # the wire really lost data
    if sack:
        assert per_k["after"] <= min(per_k["before"], 10.0)
    else:
        assert per_k["after"] <= per_k["before"] * 1.25 + 5


class TsoPort(PortWrapper):
    """A TAP with its offloads on, over a memory wire: the stack hands whole TSO frames out (a
    :class:`FaultPort` outside loses, delays or corrupts each whole, as over the soak's TAP),
    cut into MSS frames with their full checksums only here, on the way to the wire."""

    @property
    def capabilities(self) -> PortCapabilities:
        return replace(self.inner.capabilities, tx_checksum_offload=True, tso=True, max_tso_size=0xFFFF)

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        wire: list[bytes] = []
        for frame in frames:
            if frame.__class__ is OffloadPacket:
                try:
                    wire += tcp4_segment(frame, cast(OffloadPacket, frame).gso_size or 0xFFFF)
                except ValueError:
                    wire.append(bytes(frame))  # its headers corrupted by the path: the receiver drops it
            else:
                wire.append(frame)
        self.inner.tx_burst(queue, wire)
        return len(frames)


async def test_the_soaks_bad_path_is_repaired_without_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The soak's bad path (``SOAK_FAULTS``: 5 % loss, 1 % duplication, 5 % reordering, 0.1 %
    corruption, 20 +- 10 ms each way) between the sender's TSO port and the wire, as
    ``soak.bulk`` has it over a TAP: 2 MB over each of ten seeds arrive intact, and at most one
    in twenty retransmissions is a timeout's (the RTO's own or going back N after it).

    Measured here on the code before this test (issue 19, third round): 39 of 475
    retransmissions (8 %) by nine timeouts; now 14 of 455 (3 %) by three (one of them a lost
    SYN's, which resends no data): the PTO capped at the RTO, RACK counting SACKed
    retransmissions, a retransmission lost while going back N sent again at once, and going
    back N skipping what the receiver SACKed.  (The seed-5 timeout: a whole 52 KB frame lost
    in slow start, then the recovery probe's SACK came 29 ms after it, under the 32 ms minimum
    RTT, so RACK could not tell it from the original's -- RFC 8985 6.2 step 2, as Linux.)"""
    import trio._core._run as trio_scheduler  # test-only: make the task order repeatable

    by_timeout = total = 0
    for seed in range(1, 11):
        trio_scheduler._r.seed(seed)
        data = make_payload(seed, 2 * MB)
        faults = replace(SOAK_FAULTS, seed=seed)
        async with two_stacks(seed, wrap_a=lambda port, f=faults: FaultPort(TsoPort(port), f)) as (a, b):
            client, server, _listener = await connected_pair(a, b)
            with trio.fail_after(600):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_all_then_eof, client, data)
                    received = await receive_all(server)
            assert received == data
            counters = tcp_stats(a).counters
            await client.aclose()
            await server.aclose()
        check_no_internal_errors(a, b)
        by_timeout += counters["rto_retransmits"]
        total += counters["retransmitted_segments"]
        print(
            f"soak path seed {seed}: rto={counters['rto_timeouts']} by_timeout={counters['rto_retransmits']} "
            f"retransmitted={counters['retransmitted_segments']} rack={counters['rack_retransmits']} "
            f"tlp={counters['tlp_probes']} recovery_probes={counters['recovery_probes']}"
        )
    assert total > 100  # the path did harm
    assert by_timeout * 20 <= total, (by_timeout, total)


def test_stat_sums_the_recovery_counters_over_cores() -> None:
    """``yastack stat`` prints one line of loss recovery, summed over the cores' counters."""
    from trio_yastack.journey._client import _recovery

    def core(**counters: int) -> dict[str, Any]:
        return {"stack": {"tcp": {"counters": counters}}}

    line = _recovery(
        [
            core(recovery_episodes=2, rack_retransmits=5),
            core(recovery_episodes=1, tlp_probes=4, recovery_probes=1),
        ]
    )
    assert line.startswith(
        "3 recovery episodes, 5 RACK retransmissions, 4 tail loss probes, 1 probes in recovery, 0 timeouts"
    )
    assert line.endswith("0 spurious timeouts undone")
