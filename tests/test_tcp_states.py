"""TCP's state machine in the sans-IO core (RFC 9293 3.10): opens, data and ACKs, closes, resets
and the RFC 5961 defences, and random segments against the connection's invariants.

Every test feeds hand-made frames through ``ether_input`` and checks the exact segments that come
out, the connection's state and the counters.  Both ISNs sit just below 2**32 (``OUR_ISS``,
``PEER_ISN``) so every connection crosses the wrap within its first segments.
"""

from __future__ import annotations

import errno
import random

import pytest
from helpers import OUR_IP, PEER_IP, check_ipv4
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_helpers import (
    ACK,
    FIN,
    OUR_ISS,
    OUR_PORT,
    PEER_ISN,
    PEER_PORT,
    PSH,
    RST,
    SYN,
    T0,
    Peer,
    check_tcp,
    fix_iss,
    open_active,
    seq_add,
    tcp_core,
    tcp_drops,
    tcp_segments,
)

from trio_yastack.stack import StackCore, TcpConnection, TcpState
from trio_yastack.stack.wire import IPPROTO_TCP, TcpOptions

S = TcpState
#: our receive window after the handshake: 256 KiB at window scale 3
FULL_WINDOW = (256 * 1024) >> 3


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


def stats(core: StackCore):  # type: ignore[no-untyped-def]
    return core.statistics().tcp


# -- active open -------------------------------------------------------------------------------


def test_active_open_sends_a_syn_with_linux_ordered_options() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    [frame] = core.take_outbox()
    [syn] = tcp_segments([frame])
    ts = syn.options.timestamps
    assert ts is not None
    check_tcp(syn, flags=SYN, seq=OUR_ISS, ack=0, window=0xFFFF, payload=b"")
    # The bytes Linux sends, in its order (after the 14 + 20 + 20 bytes of headers):
    mss = bytes.fromhex("020405b4")  # MSS 1460
    sack_ts = bytes.fromhex("0402080a") + ts[0].to_bytes(4, "big") + bytes(4)  # SACK-perm., TS, TSecr 0
    wscale = bytes.fromhex("01030303")  # NOP, window scale 3
    assert frame[54:] == mss + sack_ts + wscale
    assert conn.state == S.SYN_SENT
    assert stats(core).active_opens == 1
    assert conn.snd_nxt == conn.snd_max == OUR_ISS + 1


def test_syn_ack_establishes_and_is_acknowledged_across_the_wrap() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    peer.receive()
    [ack] = peer.send(SYN | ACK, now=T0 + 0.05, window=0xFFFF)
    check_tcp(
        ack, flags=ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1, window=FULL_WINDOW, tsecr=peer.tsval(T0 + 0.05)
    )
    assert conn.state == S.ESTABLISHED
    assert (conn.snd_scale, conn.rcv_scale, conn.sack_on, conn.ts_on) == (7, 3, True, True)
    assert conn.mss == 1460 - 12  # the timestamp option's 12 bytes come off every segment
    assert conn.snd_wnd == 0xFFFF  # the SYN-ACK's window is never scaled (RFC 7323 2.2)
    assert conn.srtt == pytest.approx(0.05, abs=0.002)  # RTT from the echoed timestamp
    assert stats(core).connections_established == 1
    assert core.take_outbox() == []


def test_syn_ack_without_options_turns_every_option_off() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core, mss=None, wscale=None, sack=False, ts=False)
    peer.receive()
    [ack] = peer.send(SYN | ACK, now=T0 + 0.05, window=5000)
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1, window=0xFFFF, options=TcpOptions())
    assert (conn.snd_scale, conn.rcv_scale, conn.sack_on, conn.ts_on) == (0, 0, False, False)
    assert conn.mss == 536  # RFC 9293 3.7.1: the default when the SYN has no MSS option
    assert conn.snd_wnd == 5000


def test_syn_ack_acknowledging_something_else_is_answered_with_a_reset() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    peer.receive()
    bad_ack = seq_add(OUR_ISS, 5)
    [rst] = peer.send(SYN | ACK, now=T0 + 0.05, ack=bad_ack)
    # Was a bug (fixed): tcp/_input.py _syn_sent_arrives calls send_reset(..., had_ack=False): it sends
    # <SEQ=0><ACK=0><RST,ACK> instead of RFC 9293 3.10.7.3's <SEQ=SEG.ACK><CTL=RST>.
    check_tcp(rst, flags=RST, seq=bad_ack, ack=0)
    assert conn.state == S.SYN_SENT


def test_reset_with_an_acceptable_ack_refuses_the_connection() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    peer.receive()
    assert peer.send(RST | ACK, now=T0 + 0.05, seq=0, ack=OUR_ISS + 1) == []
    assert conn.state == S.CLOSED
    assert conn.error == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        conn.receive(100, T0 + 0.1)
    s = stats(core)
    assert (s.resets_received, s.connections_dropped) == (1, 1)
    assert core.tcp.connections == {}
    core.run_timers(T0 + 200)
    assert core.take_outbox() == []  # no SYN retransmission after the reset


@pytest.mark.parametrize(
    ("flags", "ack", "reason"),
    [
        (RST, 0, "rst_without_ack_in_syn_sent"),
        (RST | ACK, OUR_ISS, "bad_ack_in_syn_sent"),  # acknowledges nothing we sent
        (RST | ACK, OUR_ISS + 2, "bad_ack_in_syn_sent"),  # acknowledges beyond our SYN
        (ACK, OUR_ISS + 1, "no_syn_in_syn_sent"),
    ],
)
def test_syn_sent_ignores_unacceptable_segments(flags: int, ack: int, reason: str) -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    peer.receive()
    assert peer.send(flags, now=T0 + 0.05, ack=ack & 0xFFFFFFFF) == []
    assert conn.state == S.SYN_SENT
    assert tcp_drops(core) == {reason: 1}


# -- passive open ------------------------------------------------------------------------------

FULL = {"mss": 1460, "wscale": 7, "sack": True, "ts": True}


@pytest.mark.parametrize(
    ("peer_options", "expect"),
    [
        (FULL, {"mss": 1460, "window_scale": 3, "sack_permitted": True, "has_timestamps": True}),
        (
            {"mss": None, "wscale": None, "sack": False, "ts": False},
            {"mss": 1460, "window_scale": None, "sack_permitted": False, "has_timestamps": False},
        ),
        (
            {"mss": 1400, "wscale": None, "sack": False, "ts": True},
            {"mss": 1460, "window_scale": None, "sack_permitted": False, "has_timestamps": True},
        ),
        (
            {"mss": 1400, "wscale": 0, "sack": True, "ts": False},
            {"mss": 1460, "window_scale": 3, "sack_permitted": True, "has_timestamps": False},
        ),
    ],
)
def test_passive_open_answers_with_the_negotiated_options_only(peer_options: dict, expect: dict) -> None:
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core, **peer_options)
    [synack] = peer.send(SYN, now=T0)
    check_tcp(synack, flags=SYN | ACK, seq=OUR_ISS, ack=PEER_ISN + 1, window=0xFFFF, **expect)
    if peer_options["ts"]:
        check_tcp(synack, tsecr=peer.tsval(T0))
    [conn] = listener.embryonic
    assert conn.state == S.SYN_RECEIVED
    assert listener.accept() is None
    assert peer.send(ACK, now=T0 + 0.05) == []
    assert conn.state == S.ESTABLISHED
    assert listener.accept() is conn
    assert listener.accept() is None
    assert conn.mss == (peer_options["mss"] or 536) - (12 if peer_options["ts"] else 0)
    s = stats(core)
    assert (s.passive_opens, s.connections_established, s.connections_accepted) == (1, 1, 1)


def test_data_on_the_handshake_ack_is_delivered() -> None:
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core)
    peer.send(SYN, now=T0)
    assert peer.send(ACK | PSH, b"GET / HTTP/1.1\r\n", now=T0 + 0.05) == []  # a delayed ACK follows
    conn = listener.accept()
    assert conn is not None
    assert conn.receive(100, T0 + 0.06) == b"GET / HTTP/1.1\r\n"
    assert conn.rcv_nxt & 0xFFFFFFFF == peer.snd_nxt


def test_retransmitted_syn_in_syn_received_resends_the_syn_ack() -> None:
    core = tcp_core()
    core.tcp.listen(OUR_PORT)
    peer = Peer(core)
    [_first] = peer.send(SYN, now=T0)
    [again] = peer.send(SYN, now=T0 + 1, seq=PEER_ISN)
    check_tcp(again, flags=SYN | ACK, seq=OUR_ISS, ack=PEER_ISN + 1)
    assert len(core.tcp.connections) == 1


def test_handshake_ack_acknowledging_something_else_is_answered_with_a_reset() -> None:
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core)
    peer.send(SYN, now=T0)
    bad_ack = seq_add(OUR_ISS, 1000)
    [rst] = peer.send(ACK, now=T0 + 0.05, ack=bad_ack)
    # Was a bug (fixed): tcp/_input.py segment_arrives (SYN_RECEIVED) calls send_reset(..., had_ack=False): it
    # sends <SEQ=0><ACK=0><RST,ACK> instead of RFC 9293's <SEQ=SEG.ACK><CTL=RST>.
    check_tcp(rst, flags=RST, seq=bad_ack)
    [conn] = listener.embryonic
    assert conn.state == S.SYN_RECEIVED


# -- simultaneous open (RFC 9293 figure 8) -----------------------------------------------------


def simultaneous_syn(core: StackCore) -> tuple[TcpConnection, Peer]:
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    peer.receive()
    [synack] = peer.send(SYN, now=T0 + 0.01, ack=0)
    check_tcp(synack, flags=SYN | ACK, seq=OUR_ISS, ack=PEER_ISN + 1, window_scale=3, sack_permitted=True)
    assert conn.state == S.SYN_RECEIVED
    return conn, peer


def test_simultaneous_open_completes_on_the_peers_syn_ack() -> None:
    core = tcp_core()
    conn, peer = simultaneous_syn(core)
    peer.send(SYN | ACK, now=T0 + 0.02, seq=PEER_ISN, ack=OUR_ISS + 1)
    # Was a bug (fixed): segment_arrives judges the peer's SYN-ACK unacceptable (SEG.SEQ = IRS < RCV.NXT) and
    # only sends an ACK; BSD and Linux drop the SYN bit and take the ACK, as figure 8 shows.
    assert conn.state == S.ESTABLISHED


def test_simultaneous_open_completes_on_an_ack() -> None:
    core = tcp_core()
    conn, peer = simultaneous_syn(core)
    assert peer.send(ACK, now=T0 + 0.02, ack=OUR_ISS + 1) == []
    assert conn.state == S.ESTABLISHED
    assert stats(core).connections_established == 1
    assert conn.send(b"hello", T0 + 0.03) == 5
    [data] = peer.receive()
    check_tcp(data, flags=ACK | PSH, seq=OUR_ISS + 1, payload=b"hello")


def test_reset_in_simultaneous_syn_received_refuses_the_connection() -> None:
    core = tcp_core()
    conn, peer = simultaneous_syn(core)
    assert peer.send(RST, now=T0 + 0.02) == []
    assert (conn.state, conn.error) == (S.CLOSED, errno.ECONNREFUSED)


# -- data --------------------------------------------------------------------------------------


def test_data_from_the_peer_across_the_wrap_is_acknowledged_with_a_shrinking_window() -> None:
    core = tcp_core(delayed_ack=0.0)
    conn, peer = open_active(core)
    chunks = [bytes([i]) * 1000 for i in range(3)]  # the first crosses 2**32
    for i, chunk in enumerate(chunks):
        [ack] = peer.send(ACK, chunk, now=T0 + 1 + i)
        check_tcp(ack, flags=ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1 + 1000 * (i + 1))
        check_tcp(ack, window=(256 * 1024 - 1000 * (i + 1)) >> 3)
    assert conn.receive(10_000, T0 + 5) == b"".join(chunks)
    assert stats(core).bytes_received == 3000


def test_data_to_the_peer_uses_its_scaled_window() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    assert peer.send(ACK, now=T0 + 0.1, window=100) == []  # 100 << 7 = 12800 bytes
    assert conn.snd_wnd == 12800
    data = bytes(range(256)) * 100
    assert conn.send(data, T0 + 0.2) == len(data)
    segments = peer.receive()
    # 8 full segments fill 11584 bytes; the 1216 left would be a sliver below half the largest
    # window the peer offered (sender SWS avoidance), so it waits.
    assert [len(s.payload) for s in segments] == [1448] * 8
    for i, seg in enumerate(segments):
        check_tcp(seg, seq=OUR_ISS + 1 + 1448 * i, ack=PEER_ISN + 1, payload=data[1448 * i : 1448 * (i + 1)])
    # The peer acknowledges them all and opens its window: the rest flows but for a last
    # partial segment, which Nagle holds while full ones are unacknowledged.
    segments = peer.send(ACK, now=T0 + 0.3, window=1000)
    assert [len(s.payload) for s in segments] == [1448] * 9
    assert segments[0].seq == seq_add(OUR_ISS, 1 + 1448 * 8)
    assert conn.snd_wnd == 128_000
    assert len(data) - 1448 * 17 == 984
    [last] = peer.send(ACK, now=T0 + 0.4)
    check_tcp(last, flags=ACK | PSH, payload=data[-984:])


def test_delayed_ack_acknowledges_every_second_segment_at_once() -> None:
    core = tcp_core()
    _conn, peer = open_active(core)
    assert peer.send(ACK, b"a" * 1448, now=T0 + 1) == []
    [ack] = peer.send(ACK, b"b" * 1448, now=T0 + 1.01)
    check_tcp(ack, flags=ACK, ack=PEER_ISN + 1 + 2896)
    assert stats(core).delayed_acks == 0
    assert peer.run_timers(T0 + 2) == []  # no delayed ACK left pending


def test_delayed_ack_fires_after_the_delayed_ack_time() -> None:
    core = tcp_core(delayed_ack=0.2)
    _conn, peer = open_active(core)
    assert peer.send(ACK, b"a" * 1448, now=T0 + 1) == []
    deadline = core.next_deadline()
    assert deadline is not None and deadline <= T0 + 1.2  # the runtime wakes by then
    assert peer.run_timers(T0 + 1.19) == []
    [ack] = peer.run_timers(T0 + 1.2)
    check_tcp(ack, flags=ACK, ack=PEER_ISN + 1 + 1448)
    assert stats(core).delayed_acks == 1


def test_out_of_order_data_is_sacked_most_recent_first_then_acknowledged() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    base = PEER_ISN + 1
    pieces = [bytes([65 + i]) * 1000 for i in range(4)]

    def send(i: int, now: float) -> list:  # type: ignore[type-arg]
        return peer.send(ACK, pieces[i], now=now, seq=seq_add(base, 1000 * i))

    [dup1] = send(1, T0 + 1)
    check_tcp(dup1, flags=ACK, ack=base, sack_blocks=((base + 1000, base + 2000),))
    [dup2] = send(3, T0 + 1.01)
    check_tcp(dup2, flags=ACK, ack=base, sack_blocks=((base + 3000, base + 4000), (base + 1000, base + 2000)))
    [ack] = send(0, T0 + 1.02)  # fills the first hole: ACK at once (RFC 5681 4.2)
    check_tcp(ack, flags=ACK, ack=base + 2000, sack_blocks=((base + 3000, base + 4000),))
    [ack] = send(2, T0 + 1.03)
    check_tcp(ack, flags=ACK, ack=base + 4000, sack_blocks=())
    assert conn.receive(10_000, T0 + 2) == b"".join(pieces)
    assert stats(core).out_of_order_segments == 2


def test_duplicate_data_is_acknowledged_at_once() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    peer.send(ACK, b"x" * 500, now=T0 + 1)
    core.run_timers(T0 + 2)
    peer.receive()
    [ack] = peer.send(ACK, b"x" * 500, now=T0 + 3, seq=PEER_ISN + 1)
    check_tcp(ack, flags=ACK, ack=PEER_ISN + 501)
    assert stats(core).duplicate_segments == 1
    assert conn.receive(10_000, T0 + 3) == b"x" * 500


def test_ack_of_data_never_sent_is_answered_and_the_segment_dropped() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    [ack] = peer.send(ACK, b"dropped", now=T0 + 1, ack=OUR_ISS + 100)
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1)
    assert conn.state == S.ESTABLISHED
    assert conn.receive(100, T0 + 1) is None
    assert tcp_drops(core) == {"ack_too_new": 1}


def test_old_ack_is_challenged_and_the_segment_dropped() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    [ack] = peer.send(ACK, b"dropped", now=T0 + 1, ack=seq_add(OUR_ISS, 1 - (1 << 30)))
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1)  # RFC 5961 5.2
    assert conn.receive(100, T0 + 1) is None
    assert stats(core).challenge_acks_sent == 1


def test_overlapping_retransmission_delivers_only_the_new_bytes() -> None:
    core = tcp_core(delayed_ack=0.0)
    conn, peer = open_active(core)
    peer.send(ACK, b"0123456789", now=T0 + 1)
    [ack] = peer.send(ACK, b"56789abcdef", now=T0 + 1.1, seq=seq_add(PEER_ISN, 6))
    check_tcp(ack, ack=PEER_ISN + 17)
    assert conn.receive(100, T0 + 2) == b"0123456789abcdef"


def test_full_receive_buffer_closes_the_window_and_reading_reopens_it() -> None:
    core = tcp_core(receive_buffer=8192, delayed_ack=0.0)
    conn, peer = open_active(core)
    assert conn.rcv_scale == 0
    windows = [seg.window for i in range(6) for seg in peer.send(ACK, b"y" * 1448, now=T0 + 1 + i / 100)]
    # 952 bytes is a sliver, but it was promised and a window is never taken back; then it closes.
    assert windows == [8192 - 1448, 8192 - 2 * 1448, 8192 - 3 * 1448, 8192 - 4 * 1448, 952, 0]
    assert conn.rcv_nxt & 0xFFFFFFFF == seq_add(PEER_ISN, 1 + 8192)  # the last segment was cut
    # A zero-window probe from the peer is answered with the closed window.
    [ack] = peer.send(ACK, b"?", now=T0 + 2, seq=seq_add(PEER_ISN, 1 + 8192))
    check_tcp(ack, ack=PEER_ISN + 1 + 8192, window=0)
    assert len(conn.receive(100_000, T0 + 3)) == 8192
    [update] = peer.receive()  # the window update is sent as soon as the reader makes room
    check_tcp(update, flags=ACK, ack=PEER_ISN + 1 + 8192, window=8192)


def test_fin_out_of_order_is_taken_when_the_hole_fills() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    [ack] = peer.send(FIN | ACK, b"tail", now=T0 + 1, seq=seq_add(PEER_ISN, 1 + 4))
    check_tcp(ack, ack=PEER_ISN + 1)
    assert conn.state == S.ESTABLISHED
    [ack] = peer.send(ACK, b"head", now=T0 + 1.1, seq=seq_add(PEER_ISN, 1))
    check_tcp(ack, ack=PEER_ISN + 1 + 8 + 1)
    assert conn.state == S.CLOSE_WAIT
    assert conn.receive(100, T0 + 2) == b"headtail"
    assert conn.receive(100, T0 + 2) == b""


def test_data_sent_while_connecting_goes_out_after_the_handshake() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    assert conn.send(b"early", T0) == 5
    peer = Peer(core)
    [syn] = peer.receive()
    assert syn.payload == b""
    segments = peer.send(SYN | ACK, now=T0 + 0.05)
    assert b"".join(s.payload for s in segments) == b"early"
    check_tcp(segments[-1], seq=OUR_ISS + 1, ack=PEER_ISN + 1)


# -- closing -----------------------------------------------------------------------------------


def test_active_close_goes_through_fin_wait_and_time_wait() -> None:
    core = tcp_core(msl=5.0)
    conn, peer = open_active(core)
    conn.shutdown(T0 + 1)
    [fin] = peer.receive()
    check_tcp(fin, flags=FIN | ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1)
    assert conn.state == S.FIN_WAIT_1
    assert peer.send(ACK, now=T0 + 1.05) == []
    assert conn.state == S.FIN_WAIT_2
    [ack] = peer.send(FIN | ACK, now=T0 + 2)
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 2, ack=PEER_ISN + 2)
    assert conn.state == S.TIME_WAIT
    assert conn.receive(10, T0 + 2) == b""
    core.run_timers(T0 + 11.99)
    assert conn.state == S.TIME_WAIT
    core.run_timers(T0 + 12)
    assert conn.state == S.CLOSED and conn.error == 0
    assert core.tcp.connections == {}
    assert stats(core).connections_closed == 1
    assert core.take_outbox() == []


def test_fin_follows_the_queued_data() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    conn.send(b"last words", T0 + 1)
    conn.shutdown(T0 + 1)
    segments = peer.receive()
    assert [s.flags for s in segments][-1] & FIN
    data = b"".join(s.payload for s in segments)
    assert data == b"last words"
    assert conn.fin_seq == OUR_ISS + 1 + len(data)
    peer.send(ACK, now=T0 + 1.1)
    assert conn.state == S.FIN_WAIT_2


def test_retransmitted_fin_in_time_wait_is_acknowledged_and_restarts_2msl() -> None:
    core = tcp_core(msl=5.0)
    conn, peer = open_active(core)
    conn.shutdown(T0 + 1)
    peer.receive()
    peer.send(FIN | ACK, now=T0 + 2)
    assert conn.state == S.TIME_WAIT
    [ack] = peer.send(FIN | ACK, now=T0 + 6, seq=PEER_ISN + 1)
    check_tcp(ack, flags=ACK, ack=PEER_ISN + 2)
    core.run_timers(T0 + 12)
    assert conn.state == S.TIME_WAIT  # 2*MSL counts again from the second FIN
    core.run_timers(T0 + 16)
    assert conn.state == S.CLOSED


def test_passive_close_goes_through_close_wait_and_last_ack() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    [ack] = peer.send(FIN | ACK, now=T0 + 1)
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 2)
    assert conn.state == S.CLOSE_WAIT
    assert conn.receive(100, T0 + 1) == b""
    conn.send(b"bye", T0 + 1.5)
    conn.shutdown(T0 + 1.5)
    segments = peer.receive()
    assert b"".join(s.payload for s in segments) == b"bye"
    check_tcp(segments[-1], seq=OUR_ISS + 1 + 3 - len(segments[-1].payload))
    assert segments[-1].flags & FIN
    assert conn.state == S.LAST_ACK
    assert peer.send(ACK, now=T0 + 1.6) == []
    assert conn.state == S.CLOSED and conn.error == 0
    assert stats(core).connections_closed == 1
    assert core.tcp.connections == {}


def test_simultaneous_close_goes_through_closing() -> None:
    core = tcp_core(msl=5.0)
    conn, peer = open_active(core)
    conn.shutdown(T0 + 1)
    [fin] = peer.receive()
    # The peer's FIN crosses ours: it acknowledges nothing of our FIN.
    [ack] = peer.send(FIN | ACK, now=T0 + 1.01, ack=OUR_ISS + 1)
    check_tcp(ack, flags=ACK, ack=PEER_ISN + 2)
    assert conn.state == S.CLOSING
    after = peer.send(ACK, now=T0 + 1.05, ack=seq_add(fin.seq, 1))
    assert conn.state == S.TIME_WAIT
    # Was a bug (fixed): _enter_time_wait sends an ACK even when entered from CLOSING on a pure ACK (an ACK of
    # an ACK); RFC 9293 3.10.7.4 CLOSING: "enter TIME-WAIT", nothing is sent.
    assert after == []
    core.run_timers(T0 + 11.05)
    assert conn.state == S.CLOSED


def test_half_closed_connection_still_receives() -> None:
    core = tcp_core(delayed_ack=0.0)
    conn, peer = open_active(core)
    conn.shutdown(T0 + 1)
    peer.receive()
    peer.send(ACK, now=T0 + 1.05)
    assert conn.state == S.FIN_WAIT_2
    with pytest.raises(BrokenPipeError):
        conn.send(b"no more", T0 + 1.1)
    [ack] = peer.send(ACK, b"still talking", now=T0 + 2)
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 2, ack=PEER_ISN + 14)
    assert conn.receive(100, T0 + 2) == b"still talking"


def test_close_with_unread_data_resets_the_peer() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    peer.send(ACK, b"unread", now=T0 + 1)
    conn.close(T0 + 1.01)
    [rst] = peer.receive()
    check_tcp(rst, flags=RST | ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 7)
    assert conn.state == S.CLOSED


# -- resets ------------------------------------------------------------------------------------


def drive_to(state: TcpState, conn: TcpConnection, peer: Peer, now: float) -> None:
    """Move an ESTABLISHED connection to ``state`` with the segments a peer would send."""
    if state in (S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.TIME_WAIT):
        conn.shutdown(now)
        [fin] = peer.receive()
        if state == S.FIN_WAIT_2:
            peer.send(ACK, now=now)
        elif state == S.CLOSING:
            peer.send(FIN | ACK, now=now, ack=fin.seq)
        elif state == S.TIME_WAIT:
            peer.send(FIN | ACK, now=now)
    elif state in (S.CLOSE_WAIT, S.LAST_ACK):
        peer.send(FIN | ACK, now=now)
        if state == S.LAST_ACK:
            conn.shutdown(now)
    peer.receive()
    assert conn.state == state


@pytest.mark.parametrize(
    ("state", "error"),
    [
        (S.ESTABLISHED, errno.ECONNRESET),
        (S.CLOSE_WAIT, errno.ECONNRESET),
        (S.FIN_WAIT_1, errno.ECONNRESET),
        (S.FIN_WAIT_2, errno.ECONNRESET),
        (S.CLOSING, 0),
        (S.LAST_ACK, 0),
        (S.TIME_WAIT, 0),
    ],
)
def test_reset_at_rcv_nxt_closes_the_connection(state: TcpState, error: int) -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    drive_to(state, conn, peer, T0 + 1)
    assert peer.send(RST, now=T0 + 2, seq=peer.snd_nxt, ack=0) == []
    assert conn.state == S.CLOSED
    assert conn.error == error
    assert stats(core).resets_received == 1
    assert core.tcp.connections == {}
    core.run_timers(T0 + 1000)
    assert peer.receive() == []  # no timer of the dead connection sends anything


def test_reset_in_established_is_reported_to_the_user() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    peer.send(RST | ACK, now=T0 + 1)
    with pytest.raises(ConnectionResetError):
        conn.receive(100, T0 + 1)
    with pytest.raises(ConnectionResetError):
        conn.send(b"x", T0 + 1)
    assert stats(core).connections_dropped == 1


@pytest.mark.parametrize("state", [S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_2, S.TIME_WAIT])
@pytest.mark.parametrize("offset", [1, 1000, FULL_WINDOW * 8 - 1])
def test_reset_in_the_window_but_not_at_rcv_nxt_gets_a_challenge_ack(state: TcpState, offset: int) -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    drive_to(state, conn, peer, T0 + 1)
    snd_nxt, rcv_nxt = conn.snd_nxt, conn.rcv_nxt
    [ack] = peer.send(RST, now=T0 + 2, seq=seq_add(peer.snd_nxt, offset), ack=0)
    check_tcp(ack, flags=ACK, seq=snd_nxt, ack=rcv_nxt)  # RFC 5961 3.2
    assert conn.state == state
    assert stats(core).challenge_acks_sent == 1
    assert stats(core).resets_received == 0


@pytest.mark.parametrize("offset", [-1, -1000, FULL_WINDOW * 8, 1 << 31])
def test_reset_outside_the_window_is_ignored(offset: int) -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    assert peer.send(RST, now=T0 + 1, seq=seq_add(peer.snd_nxt, offset), ack=0) == []
    assert conn.state == S.ESTABLISHED
    assert tcp_drops(core) == {"rst_out_of_window": 1}


def test_challenge_acks_are_rate_limited() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    sent = sum(len(peer.send(RST, now=T0 + 1, seq=seq_add(peer.snd_nxt, 5))) for _ in range(105))
    assert sent == 100  # RFC 5961 7: at most 100 a second
    assert tcp_drops(core) == {"challenge_ack_rate_limited": 5}
    assert conn.state == S.ESTABLISHED
    assert len(peer.send(RST, now=T0 + 1.5, seq=seq_add(peer.snd_nxt, 5))) == 1  # refilled


def test_syn_in_established_gets_a_challenge_ack() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    [ack] = peer.send(SYN, now=T0 + 1, seq=seq_add(peer.snd_nxt, 10), ack=0)
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1)
    assert conn.state == S.ESTABLISHED
    assert stats(core).challenge_acks_sent == 1


def test_reset_in_passive_syn_received_returns_to_listen() -> None:
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core)
    peer.send(SYN, now=T0)
    [conn] = listener.embryonic
    assert peer.send(RST, now=T0 + 0.05, ack=0) == []
    assert conn.state == S.CLOSED and conn.error == 0
    assert listener.embryonic == set() and listener.accept() is None
    assert stats(core).connections_dropped == 0
    [synack] = Peer(core, isn=7).send(SYN, now=T0 + 1)  # still listening
    check_tcp(synack, flags=SYN | ACK, ack=8)


# -- robustness: random segments to an ESTABLISHED connection -----------------------------------


def check_invariants(core: StackCore, conn: TcpConnection) -> None:
    """What must hold between any two inputs, whatever the peer sent."""
    assert conn.snd_una <= conn.snd_nxt <= conn.snd_max <= conn.sndbuf.end + 1, conn  # + 1: the FIN
    assert conn.snd_una - 1 <= conn.sndbuf.start <= max(conn.snd_una, conn.iss + 1)
    assert len(conn.rcvbuf) + len(conn.reasm) <= conn.rcvbuf.limit
    if conn.state in (S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2):
        assert conn.rcv_nxt <= conn.rcv_adv
    assert conn.cc.cwnd >= conn.mss
    assert conn.config.rto_min <= conn.rto <= conn.config.rto_max
    if conn.state not in (S.CLOSED, S.TIME_WAIT) and conn.snd_max > conn.snd_una:
        assert conn.t_rexmt or conn.t_persist, "data in flight without a timer"
    deadlines = [t for t in (conn.t_rexmt, conn.t_persist, conn.t_keep, conn.t_2msl, conn.t_delack) if t]
    if deadlines and conn.state != S.CLOSED:
        deadline = core.next_deadline()
        assert deadline is not None and deadline <= min(deadlines), "a timer the core will not run"


segment_op = st.tuples(
    st.sampled_from([ACK, ACK, ACK | PSH, ACK | FIN, RST, RST | ACK, SYN, SYN | ACK, FIN, 0]),
    st.one_of(st.integers(-3000, 70_000), st.integers(0, 0xFFFFFFFF)),  # seq - rcv_nxt, or anything
    st.one_of(st.floats(0.0, 1.0), st.integers(0, 0xFFFFFFFF)),  # where in the flight it acks, or anything
    st.one_of(st.just(0xFFFF), st.integers(0, 0xFFFF)),
    st.one_of(
        st.none(), st.binary(max_size=40), st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=4)
    ),
    st.integers(0, 3000),  # payload length
    st.floats(0.0, 3.0),  # time since the previous input
)
app_op = st.one_of(
    st.tuples(st.just("send"), st.integers(1, 20_000)), st.just(("shutdown",)), st.just(("read",))
)


def _segment(conn: TcpConnection, peer: Peer, op: tuple, now: float) -> bytes:  # type: ignore[type-arg]
    flags, seq, ack, window, options, length, _dt = op
    if -3000 <= seq <= 70_000:
        seq = conn.rcv_nxt + seq
    flight = conn.snd_max - conn.snd_una
    if isinstance(ack, float):
        ack = conn.snd_una + round(ack * flight)
    if isinstance(options, list):  # SACK blocks within the flight
        blocks = tuple(
            (conn.snd_una + round(min(a, b) * flight), conn.snd_una + round(max(a, b) * flight))
            for a, b in options
        )
        options = peer.options(now, sack_blocks=blocks[:3])
    seq, ack = seq & 0xFFFFFFFF, ack & 0xFFFFFFFF
    return peer.frame(flags, b"z" * length, now=now, seq=seq, ack=ack, window=window, options=options)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(st.one_of(segment_op, app_op), max_size=30), sending=st.integers(0, 30_000))
def test_random_segments_never_raise_and_keep_the_invariants(ops: list, sending: int) -> None:  # type: ignore[type-arg]
    core = tcp_core(receive_buffer=16 * 1024)
    conn, peer = open_active(core)
    now = T0 + 0.1
    conn.send(random.Random(sending).randbytes(sending), now)
    for op in ops:
        if op[0] == "send":
            if conn.state in (S.ESTABLISHED, S.CLOSE_WAIT) and not conn.shut_wr:
                conn.send(bytes(op[1]), now)
        elif op[0] == "shutdown":
            conn.shutdown(now)
        elif op[0] == "read":
            conn.receive(1 << 20, now)
        else:
            now += op[-1]
            core.ether_input(_segment(conn, peer, op, now), now)
            core.run_timers(now)
        for out in core.take_outbox():  # whatever went out is well formed
            ip = check_ipv4(out, src=OUR_IP, dst=PEER_IP, protocol=IPPROTO_TCP)
            if not (ip.more_fragments or ip.fragment_offset):  # see test_tcp_options' SACK/MTU bug
                tcp_segments([out])
        check_invariants(core, conn)
        if conn.state == S.CLOSED:
            break
    for _ in range(200):  # then let time run out: every timer ends or the connection closes
        deadline = core.next_deadline()
        if deadline is None or conn.state == S.CLOSED:
            break
        core.run_timers(deadline)
        core.take_outbox()
        if conn.state != S.CLOSED:
            check_invariants(core, conn)
