"""TCP's timers and loss recovery in the sans-IO core: the retransmission timer (RFC 6298: back-off,
Karn, give-up), fast retransmit with NewReno (RFC 5681, RFC 6582) and with SACK (RFC 6675),
zero-window probes, keepalive and the user timeout.

Time is driven only through ``core.run_timers(now)``, the way the runtime drives it.
"""

from __future__ import annotations

import errno
import itertools

import pytest
from helpers import PEER_IP
from tcp_helpers import (
    ACK,
    FIN,
    OUR_ISS,
    OUR_PORT,
    PEER_ISN,
    PEER_PORT,
    SYN,
    T0,
    Peer,
    check_tcp,
    fix_iss,
    open_active,
    open_passive,
    seq_add,
    tcp_core,
)

from trio_yastack.stack import StackCore, TcpState
from trio_yastack.stack.wire import TcpRepr

S = TcpState


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


def run_until(core: StackCore, peer: Peer, until: float) -> list[tuple[float, TcpRepr]]:
    """Run the timers at each deadline up to ``until``, as the runtime's poll loop does; return
    ``(time, segment)`` for every segment they sent."""
    sent = []
    while (deadline := core.next_deadline()) is not None and deadline <= until:
        core.run_timers(deadline)
        sent += [(deadline, seg) for seg in peer.receive()]
    core.run_timers(until)
    sent += [(until, seg) for seg in peer.receive()]
    return sent


def stats(core: StackCore):  # type: ignore[no-untyped-def]
    return core.statistics().tcp


# -- the retransmission timer --------------------------------------------------------------------


def test_syn_is_retransmitted_with_exponential_back_off_then_times_out() -> None:
    core = tcp_core()  # rto_initial 1 s, syn_retries 6, rto_max 60 s
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    [_syn] = peer.receive()
    sent = run_until(core, peer, T0 + 122.99)
    assert [round(t - T0, 6) for t, _ in sent] == [1, 3, 7, 15, 31, 63]
    for _, again in sent:
        check_tcp(again, flags=SYN, seq=OUR_ISS, ack=0, mss=1460, window_scale=3, sack_permitted=True)
    assert conn.state == S.SYN_SENT
    assert run_until(core, peer, T0 + 123) == []  # the 7th timeout: 63 s + rto_max
    assert (conn.state, conn.error) == (S.CLOSED, errno.ETIMEDOUT)
    s = stats(core)
    assert (s.rto_timeouts, s.connections_dropped) == (6, 1)
    with pytest.raises(TimeoutError):
        conn.receive(10, T0 + 123)


def test_rto_is_three_seconds_after_a_lost_syn_without_an_rtt_sample() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core, ts=False)
    peer.receive()
    assert len(run_until(core, peer, T0 + 1.5)) == 1  # the SYN was lost once
    peer.send(SYN | ACK, now=T0 + 1.6)
    assert conn.state == S.ESTABLISHED and conn.srtt == 0.0
    # Was a bug (fixed): the backed-off RTO (2 s) was kept; RFC 6298 5.7 (and TCP_TIMEOUT_FALLBACK) make
    # it 3 s when a SYN timed out and no RTT sample was taken.
    assert conn.rto == 3.0


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_syn_retries_bounds_the_retransmissions(retries: int) -> None:
    core = tcp_core(syn_retries=retries, rto_initial=0.5)
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    peer.receive()
    sent = run_until(core, peer, T0 + 100)
    assert [round(t - T0, 6) for t, _ in sent] == [0.5, 1.5, 3.5][:retries]
    assert conn.error == errno.ETIMEDOUT


def test_syn_ack_is_retransmitted_then_the_embryo_is_forgotten() -> None:
    core = tcp_core(synack_retries=2)
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core)
    [_synack] = peer.send(SYN, now=T0)
    sent = run_until(core, peer, T0 + 100)
    assert [round(t - T0, 6) for t, _ in sent] == [1, 3]
    for _, again in sent:
        check_tcp(again, flags=SYN | ACK, seq=OUR_ISS, ack=PEER_ISN + 1)
    assert listener.embryonic == set() and core.tcp.connections == {}
    assert listener.accept() is None


def test_fin_is_retransmitted() -> None:
    core = tcp_core()
    conn, peer = open_active(core, ts=False)
    conn.shutdown(T0 + 1)
    [fin] = peer.receive()
    [(when, again)] = run_until(core, peer, T0 + 2.5)
    assert when == pytest.approx(T0 + 2)
    check_tcp(again, flags=FIN | ACK, seq=fin.seq, ack=fin.ack)
    assert stats(core).retransmitted_segments == 1
    assert peer.send(ACK, now=T0 + 3, ack=seq_add(fin.seq, 1)) == []
    assert conn.state == S.FIN_WAIT_2


def test_data_rto_backs_off_and_karn_ignores_the_retransmitted_segment() -> None:
    core = tcp_core()
    conn, peer = open_active(core, ts=False)  # no timestamps: RTT from a timed segment only
    assert (conn.rto, conn.srtt) == (1.0, 0.0)
    conn.send(b"first", T0 + 1)
    [first] = peer.receive()
    sent = run_until(core, peer, T0 + 4.5)
    assert [round(t - T0, 6) for t, _ in sent] == [2, 4]  # RTO 1 s, then 2 s
    for _, again in sent:
        check_tcp(again, seq=first.seq, payload=b"first")
    assert conn.rto == 4.0
    assert peer.send(ACK, now=T0 + 4.5, ack=seq_add(OUR_ISS, 6)) == []
    assert conn.srtt == 0.0  # Karn: the ACK may be for any of the copies, no sample
    assert conn.rto == 4.0  # and the backed-off RTO stays until a valid sample (RFC 6298 5.7)
    conn.send(b"second", T0 + 5)
    peer.receive()
    peer.send(ACK, now=T0 + 5.25)
    assert conn.srtt == pytest.approx(0.25)
    assert conn.rto == pytest.approx(0.25 + 4 * 0.125)
    s = stats(core)
    assert (s.rto_timeouts, s.retransmitted_segments, s.retransmitted_bytes) == (2, 2, 10)


def test_rto_collapses_the_window_to_one_segment() -> None:
    core = tcp_core(frto=False)  # the conventional recovery (F-RTO would send new data first)
    conn, peer = open_active(core, ts=False)
    data = bytes(range(256)) * 23  # 5888 bytes: four segments of 1460 and 48 held by Nagle
    conn.send(data, T0 + 1)
    first = peer.receive()
    assert [len(s.payload) for s in first] == [1460] * 4
    [(_, again)] = run_until(core, peer, T0 + 2)
    check_tcp(again, seq=OUR_ISS + 1, payload=data[:1460])
    assert conn.cc.cwnd == conn.mss
    # The ACK of that segment lets two more go (slow start from 1 MSS), not the whole flight.
    resent = peer.send(ACK, now=T0 + 2.1, ack=seq_add(OUR_ISS, 1 + 1460))
    assert [s.seq for s in resent] == [seq_add(OUR_ISS, 1 + 1460 * i) for i in (1, 2)]


def test_data_retries_give_up_with_etimedout() -> None:
    core = tcp_core(data_retries=3)
    conn, peer = open_active(core, ts=False)
    conn.send(b"into the void", T0 + 1)
    peer.receive()
    sent = run_until(core, peer, T0 + 100)
    assert [round(t - T0, 6) for t, _ in sent] == [2, 4, 8]
    assert (conn.state, conn.error) == (S.CLOSED, errno.ETIMEDOUT)
    assert stats(core).connections_dropped == 1


def test_user_timeout_ends_retransmission_early() -> None:
    core = tcp_core(user_timeout=2.5)
    conn, peer = open_active(core, ts=False)  # the peer was last heard from at T0 + 0.05
    conn.send(b"anyone?", T0 + 0.1)
    peer.receive()
    sent = run_until(core, peer, T0 + 100)
    # RTOs at 1.1 and 3.1 s; at 3.1 s the peer has been silent for more than 2.5 s.
    assert [round(t - T0, 6) for t, _ in sent] == [1.1]
    assert (conn.state, conn.error) == (S.CLOSED, errno.ETIMEDOUT)


def test_timestamps_give_an_rtt_sample_per_ack() -> None:
    core = tcp_core()
    conn, peer = open_active(core, rtt=0.1)
    assert conn.srtt == pytest.approx(0.1, abs=0.002)
    conn.send(b"x" * 100, T0 + 1)
    peer.receive()
    peer.send(ACK, now=T0 + 1.3)
    assert conn.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3, abs=0.002)


# -- fast retransmit -----------------------------------------------------------------------------


def flight(core: StackCore, conn, peer: Peer, segments: int, now: float) -> list[TcpRepr]:  # type: ignore[no-untyped-def]
    """``segments`` full segments sent at ``now``, after an ACK from the peer that set its
    window (the SYN-ACK's is unscaled, so the first ACK after it changes the window and is
    never a duplicate, RFC 5681 section 2)."""
    assert peer.send(ACK, now=now) == []
    conn.send(bytes(i % 251 for i in range(segments * conn.mss)), now)
    sent = peer.receive()
    assert [len(s.payload) for s in sent] == [conn.mss] * segments
    return sent


def test_three_duplicate_acks_trigger_newreno_fast_retransmit() -> None:
    core = tcp_core(sack=False)
    conn, peer = open_active(core, ts=False)
    assert not conn.sack_on
    sent = flight(core, conn, peer, 6, T0 + 1)
    una = seq_add(OUR_ISS, 1)
    assert peer.send(ACK, now=T0 + 1.1, ack=una) == []
    assert peer.send(ACK, now=T0 + 1.11, ack=una) == []
    [rexmt] = peer.send(ACK, now=T0 + 1.12, ack=una)
    check_tcp(rexmt, seq=una, payload=sent[0].payload)
    s = stats(core)
    assert (s.duplicate_acks, s.fast_retransmits, s.sack_recovery_episodes) == (3, 1, 0)
    assert conn.in_recovery
    # PRR (RFC 6937), not NewReno's inflation to ssthresh + 3 MSS: the pipe (six in flight less
    # the three the duplicate ACKs report) is below ssthresh, so PRR-SSRB lets cwnd up to it.
    assert conn.cc.cwnd == conn.cc.ssthresh
    # A partial ACK (segments 1 and 2, of a loss of 1 and 3) retransmits the next hole at once.
    [rexmt] = peer.send(ACK, now=T0 + 1.2, ack=sent[2].seq)
    check_tcp(rexmt, seq=sent[2].seq, payload=sent[2].payload)
    assert conn.in_recovery
    # The full ACK ends recovery with cwnd deflated to ssthresh (RFC 6582 3.2 step 3).
    peer.send(ACK, now=T0 + 1.3, ack=seq_add(sent[-1].seq, conn.mss))
    assert not conn.in_recovery
    assert conn.cc.cwnd == conn.cc.ssthresh
    assert stats(core).rto_timeouts == 0


def test_acks_that_change_the_window_or_carry_data_are_not_duplicates() -> None:
    core = tcp_core(sack=False)
    conn, peer = open_active(core, ts=False)
    flight(core, conn, peer, 6, T0 + 1)
    una = seq_add(OUR_ISS, 1)
    peer.send(ACK, now=T0 + 1.1, ack=una, window=0xFFFE)
    peer.send(ACK, b"data", now=T0 + 1.11, ack=una, window=0xFFFE)
    peer.send(ACK, now=T0 + 1.12, ack=una, window=0xFFFD)
    assert stats(core).duplicate_acks == 0
    assert stats(core).fast_retransmits == 0


def test_sack_retransmits_only_the_hole() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    assert conn.sack_on
    sent = flight(core, conn, peer, 6, T0 + 1)
    hole, after = sent[1], sent[2].seq
    end = seq_add(sent[-1].seq, conn.mss)
    # Segment 1 arrives, 2 is lost, 3..6 arrive: a cumulative ACK, then duplicates with SACK.
    assert peer.send(ACK, now=T0 + 1.1, ack=hole.seq, sack_blocks=((after, seq_add(after, conn.mss)),)) == []
    [rexmt] = peer.send(ACK, now=T0 + 1.11, ack=hole.seq, sack_blocks=((after, end),))
    check_tcp(rexmt, seq=hole.seq, payload=hole.payload)
    s = stats(core)
    assert (s.fast_retransmits, s.sack_recovery_episodes) == (1, 1)
    # Further duplicates send nothing again: everything else is SACKed.
    assert peer.send(ACK, now=T0 + 1.12, ack=hole.seq, sack_blocks=((after, end),)) == []
    assert peer.send(ACK, now=T0 + 1.2, ack=end) == []
    assert not conn.in_recovery
    assert stats(core).retransmitted_segments == 1


# -- zero window: persist ------------------------------------------------------------------------


def test_zero_window_is_probed_with_back_off_until_it_opens() -> None:
    core = tcp_core()
    conn, peer = open_active(core, ts=False)
    peer.send(ACK, now=T0 + 0.1, window=0)
    assert conn.snd_wnd == 0
    data = b"w" * 3000
    conn.send(data, T0 + 1)
    assert peer.receive() == []  # nothing fits a closed window
    sent = run_until(core, peer, T0 + 30)
    times = [t - T0 - 1 for t, _ in sent]
    assert len(times) >= 4
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    assert gaps[0] == pytest.approx(1.0)  # no RTT sample yet: rto_initial
    for shorter, longer in itertools.pairwise(gaps):
        assert longer == pytest.approx(min(2 * shorter, 60.0))
    for _, probe in sent:
        # Linux's probe: an ACK one below SND.UNA, no data beyond the closed window.
        check_tcp(probe, flags=ACK, seq=OUR_ISS, ack=PEER_ISN + 1, payload=b"")
    assert stats(core).window_probes == len(sent)
    assert conn.state == S.ESTABLISHED
    # The window opens: data flows at once and probing stops.
    flowing = peer.send(ACK, now=T0 + 31, window=1000)
    assert b"".join(s.payload for s in flowing) == data[: 2 * 1460]
    assert flowing[0].seq == seq_add(OUR_ISS, 1)
    assert conn.t_persist == 0.0


def test_zero_window_probe_answered_with_zero_window_keeps_probing() -> None:
    core = tcp_core()
    conn, peer = open_active(core, ts=False)
    peer.send(ACK, now=T0 + 0.1, window=0)
    conn.send(b"w", T0 + 1)
    [(_, _probe)] = run_until(core, peer, T0 + 2)
    assert peer.send(ACK, now=T0 + 2.01, window=0) == []
    assert len(run_until(core, peer, T0 + 4.5)) == 1  # the next, backed off to 2 s
    assert conn.state == S.ESTABLISHED


def test_data_held_for_a_small_window_is_sent_when_the_override_timer_fires() -> None:
    core = tcp_core()
    conn, peer = open_active(core, wscale=None, ts=False)  # the SYN-ACK offers 65535 bytes
    peer.send(ACK, now=T0 + 0.1, window=1000)
    data = b"s" * 5000
    conn.send(data, T0 + 0.2)
    # Sender SWS avoidance: 1000 bytes is less than half the largest window offered, so it waits.
    assert peer.receive() == []
    # Was a bug (fixed): TcpConnection.tcp_output holds window-limited data below max_sndwnd/2 with no timer
    # (no persist since SND.WND > 0, and no RFC 9293 3.8.6.2.1 override timeout): it never sends.
    sent = run_until(core, peer, T0 + 60)
    assert sent, "the connection stalled"
    check_tcp(sent[0][1], seq=OUR_ISS + 1, payload=data[:1000])


def test_user_timeout_ends_unanswered_zero_window_probing() -> None:
    core = tcp_core(user_timeout=5.0)
    conn, peer = open_active(core, ts=False)
    peer.send(ACK, now=T0 + 0.1, window=0)
    conn.send(b"w", T0 + 1)
    run_until(core, peer, T0 + 100)  # the peer has gone: no probe is answered
    # Was a bug (fixed): _persist_timeout asks _user_timeout_expired, which requires SND.MAX > SND.UNA, never
    # true while probing a zero window: the user timeout never fires and probing goes on forever.
    assert (conn.state, conn.error) == (S.CLOSED, errno.ETIMEDOUT)


# -- keepalive -----------------------------------------------------------------------------------


def test_keepalive_probes_then_times_out() -> None:
    core = tcp_core(keepalive_idle=10.0, keepalive_interval=2.0, keepalive_count=3)
    conn, peer = open_active(core, ts=False)
    conn.set_keepalive(True, T0 + 0.05)
    sent = run_until(core, peer, T0 + 15.5)
    assert [round(t - T0, 6) for t, _ in sent] == [10.05, 12.05, 14.05]
    for _, probe in sent:
        check_tcp(probe, flags=ACK, seq=OUR_ISS, ack=PEER_ISN + 1, payload=b"")
    assert conn.state == S.ESTABLISHED
    run_until(core, peer, T0 + 16.05)
    assert (conn.state, conn.error) == (S.CLOSED, errno.ETIMEDOUT)
    assert stats(core).keepalive_probes == 3


def test_keepalive_answered_restarts_the_idle_time() -> None:
    core = tcp_core(keepalive_idle=10.0, keepalive_interval=2.0, keepalive_count=3)
    conn, peer = open_active(core, ts=False)
    conn.set_keepalive(True, T0 + 0.05)
    [(_, _probe)] = run_until(core, peer, T0 + 11)
    assert peer.send(ACK, now=T0 + 11) == []  # the answer: an ACK for rcv_nxt
    sent = run_until(core, peer, T0 + 24)
    assert [round(t - T0, 6) for t, _ in sent] == [21, 23]
    assert conn.state == S.ESTABLISHED


def test_no_keepalive_unless_enabled() -> None:
    core = tcp_core(keepalive_idle=10.0, keepalive_interval=2.0, keepalive_count=3)
    conn, peer = open_active(core)
    assert run_until(core, peer, T0 + 100) == []
    assert conn.state == S.ESTABLISHED


def test_keepalive_on_an_accepted_connection() -> None:
    core = tcp_core(keepalive_idle=5.0, keepalive_interval=1.0, keepalive_count=1)
    _listener, conn, peer = open_passive(core, ts=False)
    conn.set_keepalive(True, T0 + 0.05)
    [(_when, probe)] = run_until(core, peer, T0 + 5.5)
    check_tcp(probe, flags=ACK, seq=OUR_ISS, ack=PEER_ISN + 1)
    run_until(core, peer, T0 + 7)
    assert conn.error == errno.ETIMEDOUT
