"""TCP options and tcp_input's demultiplexing, in the sans-IO core: window scaling, timestamps and
PAWS (RFC 7323), SACK blocks (RFC 2018), the MSS and path MTU (ICMP "fragmentation needed",
RFC 1191); RST for closed ports (RFC 9293 3.10.7.1) and what tcp_input refuses; SYN cookies
(options carried in the ISN), listen backlog, closing a listener, and TIME_WAIT reuse by a new SYN.
"""

from __future__ import annotations

import errno

import pytest
from helpers import OTHER_IP, OTHER_MAC, OUR_IP, OUR_MAC, PEER_IP, build_icmp_frame, check_ipv4
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
    build_tcp_frame,
    check_tcp,
    fix_iss,
    open_active,
    open_passive,
    seq_add,
    tcp_core,
    tcp_drops,
    tcp_segments,
)

from trio_yastack.stack import StackCore, TcpState
from trio_yastack.stack.wire import IPPROTO_TCP, IcmpRepr, TcpOptions
from trio_yastack.stack.wire.icmp import ICMP_UNREACH_FRAG_NEEDED, ICMP_UNREACH_HOST, ICMP_UNREACH_PORT
from trio_yastack.stack.wire.tcp import TCP_URG

S = TcpState


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


def stats(core: StackCore):  # type: ignore[no-untyped-def]
    return core.statistics().tcp


# -- window scaling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("receive_buffer", "shift", "syn_window", "window"),
    [
        (256 * 1024, 3, 0xFFFF, 256 * 1024 >> 3),
        (4 * 1024 * 1024, 7, 0xFFFF, 4 * 1024 * 1024 >> 7),
        (16 * 1024, 0, 16 * 1024, 16 * 1024),  # no scaling needed: WS 0 is still offered
    ],
)
def test_our_window_is_scaled_except_in_syn_segments(
    receive_buffer: int, shift: int, syn_window: int, window: int
) -> None:
    core = tcp_core(receive_buffer=receive_buffer)
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    [syn] = peer.receive()
    check_tcp(syn, window=syn_window, window_scale=shift)
    [ack] = peer.send(SYN | ACK, now=T0 + 0.05)
    check_tcp(ack, window=window)
    assert conn.rcv_scale == shift


def test_the_peers_window_is_scaled_except_in_its_syn() -> None:
    core = tcp_core()
    conn, peer = open_active(core, wscale=5, synack_window=1000)
    assert conn.snd_wnd == 1000
    peer.send(ACK, now=T0 + 0.1, window=1000)
    assert conn.snd_wnd == 1000 << 5


def test_window_scale_above_14_is_used_as_14() -> None:
    core = tcp_core()
    conn, peer = open_active(core, wscale=15)
    peer.send(ACK, now=T0 + 0.1, window=1)
    assert conn.snd_scale == 14 and conn.snd_wnd == 1 << 14


def test_window_scaling_off_offers_no_option_and_ignores_the_peers() -> None:
    core = tcp_core(window_scaling=False)
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    [syn] = peer.receive()
    check_tcp(syn, window_scale=None)
    [ack] = peer.send(SYN | ACK, now=T0 + 0.05)
    check_tcp(ack, window=0xFFFF)
    peer.send(ACK, now=T0 + 0.1, window=1000)
    assert (conn.snd_scale, conn.rcv_scale, conn.snd_wnd) == (0, 0, 1000)


def test_passive_syn_ack_window_is_never_scaled() -> None:
    core = tcp_core(receive_buffer=4 * 1024 * 1024)
    core.tcp.listen(OUR_PORT)
    [synack] = Peer(core).send(SYN, now=T0)
    check_tcp(synack, flags=SYN | ACK, window=0xFFFF, window_scale=7)


# -- MSS -----------------------------------------------------------------------------------------


def test_segments_are_cut_to_the_peers_mss() -> None:
    core = tcp_core()
    conn, peer = open_active(core, mss=536)
    assert conn.mss == 536 - 12
    conn.send(b"m" * 2000, T0 + 1)
    assert [len(s.payload) for s in peer.receive()] == [524, 524, 524]  # 428 wait for Nagle


def test_our_mss_follows_the_interface_mtu() -> None:
    core = tcp_core(mtu=1000)
    core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    [syn] = Peer(core).receive()
    check_tcp(syn, mss=960)


def test_data_segments_with_sack_blocks_fit_the_mtu() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    # The peer's data arrives out of order: our segments now carry a SACK option.
    peer.send(ACK, b"z" * 100, now=T0 + 1, seq=seq_add(PEER_ISN, 1 + 500))
    conn.send(b"d" * 3000, T0 + 1.1)
    frames = core.take_outbox()
    for frame in frames:
        ip = check_ipv4(frame, src=OUR_IP, protocol=IPPROTO_TCP)
        # Was a bug (fixed): tcp/_output.py _send_segment adds SACK blocks to full-MSS data segments without
        # cutting the payload, so 1448 + 32 + 12 option bytes exceed the 1500-byte MTU and IP
        # fragments the segment (RFC 9293 3.7.1: options count against the MSS).
        assert not ip.more_fragments and ip.fragment_offset == 0
        assert 14 + ip.total_len <= 14 + 1500
    segments = tcp_segments(frames)
    assert sum(len(s.payload) for s in segments) >= 2 * 1400
    for seg in segments:
        check_tcp(seg, sack_blocks=((PEER_ISN + 501, PEER_ISN + 601),))


# -- timestamps and PAWS -------------------------------------------------------------------------


def test_every_segment_echoes_the_latest_timestamp() -> None:
    core = tcp_core(delayed_ack=0.0)
    conn, peer = open_active(core)
    [ack] = peer.send(ACK, b"a", now=T0 + 1)
    check_tcp(ack, tsecr=peer.tsval(T0 + 1))
    conn.send(b"b", T0 + 2)
    [data] = peer.receive()
    check_tcp(data, tsecr=peer.tsval(T0 + 1))
    ours = data.options.timestamps
    assert ours is not None
    # Our clock: milliseconds plus a random offset.
    assert (ours[0] - ack.options.timestamps[0]) & 0xFFFFFFFF == 1000  # type: ignore[index]


def test_paws_drops_an_old_timestamp_across_the_wrap() -> None:
    core = tcp_core(delayed_ack=0.0)
    conn, peer = open_active(core)  # the peer's clock crossed 2**32 during the handshake
    assert conn.ts_recent < 0x1000
    old = TcpOptions(timestamps=(0xFFFFFFF8, peer.ts_recent))
    [ack] = peer.send(ACK, b"stale", now=T0 + 1, options=old, seq=peer.snd_nxt)
    check_tcp(ack, flags=ACK, ack=PEER_ISN + 1)  # RFC 7323 5.3: ACK and drop
    assert conn.receive(100, T0 + 1) is None
    assert tcp_drops(core) == {"paws": 1}
    [ack] = peer.send(ACK, b"fresh", now=T0 + 1.5)
    check_tcp(ack, ack=PEER_ISN + 6)
    assert conn.receive(100, T0 + 1.5) == b"fresh"
    assert conn.ts_recent == peer.tsval(T0 + 1.5)


def test_paws_does_not_apply_to_a_reset() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    peer.send(RST, now=T0 + 1, options=TcpOptions(timestamps=(0xFFFFFF00, 0)))
    assert conn.state == S.CLOSED


# -- SACK blocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("ts", "blocks"), [(True, 3), (False, 4)])
def test_at_most_the_sack_blocks_that_fit_are_sent(ts: bool, blocks: int) -> None:
    core = tcp_core()
    _conn, peer = open_active(core, ts=ts)
    base = PEER_ISN + 1
    for i in range(5):
        [ack] = peer.send(ACK, b"s" * 10, now=T0 + 1 + i / 100, seq=seq_add(base, 100 * (i + 1)))
    expected = tuple((base + 100 * i, base + 100 * i + 10) for i in range(5, 0, -1))[:blocks]
    check_tcp(ack, ack=base, sack_blocks=expected)


def test_no_sack_blocks_when_sack_was_not_negotiated() -> None:
    core = tcp_core()
    _conn, peer = open_active(core, sack=False)
    [ack] = peer.send(ACK, b"s" * 10, now=T0 + 1, seq=seq_add(PEER_ISN, 101))
    check_tcp(ack, ack=PEER_ISN + 1, sack_blocks=())


# -- ICMP: path MTU and errors -------------------------------------------------------------------


def icmp_about(frame: bytes, code: int, mtu: int = 0) -> bytes:
    """An ICMP destination unreachable from a router quoting our ``frame``'s IP header and 8 bytes."""
    quote = frame[14 : 14 + 20 + 8]
    icmp = IcmpRepr.dest_unreachable(code, quote, next_hop_mtu=mtu)
    return build_icmp_frame(OTHER_MAC, OUR_MAC, OTHER_IP, OUR_IP, icmp)


@pytest.mark.parametrize(
    ("mtu", "mss"),
    [
        (1200, 1200 - 40 - 12),
        # Was a bug (fixed): TcpConnection.icmp_error compares the path MSS with conn.mss, which already has
        # the 12 timestamp bytes taken off, so MTUs 1489..1499 (PPPoE's 1492) are ignored and
        # the full-size segments are black-holed.
        (1492, 1492 - 40 - 12),
    ],
)
def test_fragmentation_needed_lowers_the_mss_and_resends_at_once(mtu: int, mss: int) -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    data = bytes(i % 253 for i in range(3000))
    conn.send(data, T0 + 1)
    frames = core.take_outbox()
    assert len(frames) == 2
    peer.received += tcp_segments(frames)
    core.ether_input(icmp_about(frames[0], ICMP_UNREACH_FRAG_NEEDED, mtu), T0 + 1.01)
    assert conn.mss == mss
    # the whole flight again at the new size (FreeBSD tcp_mtudisc), not only its first segment
    again = peer.receive()
    check_tcp(again[0], seq=OUR_ISS + 1, payload=data[:mss])
    assert all(len(seg.payload) <= mss for seg in again)
    flight = b"".join(seg.payload for seg in tcp_segments(frames))
    assert b"".join(seg.payload for seg in again) == flight == data[: len(flight)]
    assert core.statistics().icmp.errors_delivered == 1


@pytest.mark.parametrize("passive", [False, True])
def test_fragmentation_needed_quoting_our_syn_is_harmless(passive: bool) -> None:
    core = tcp_core()
    if passive:
        core.tcp.listen(OUR_PORT)
        core.ether_input(Peer(core).frame(SYN, now=T0), T0)
    else:
        core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    [conn] = core.tcp.connections.values()
    [frame] = core.take_outbox()
    state = conn.state
    # Was a bug (fixed): TcpConnection.icmp_error lowers the MSS below 536 and calls _retransmit(snd_una) with
    # snd_una = ISS, which asks the send buffer for the SYN's sequence number: ValueError out of
    # ether_input (any MTU below 576 quoting our SYN or SYN-ACK).
    core.ether_input(icmp_about(frame, ICMP_UNREACH_FRAG_NEEDED, 552), T0 + 0.01)
    assert conn.state == state
    for seg in tcp_segments(core.take_outbox()):
        check_tcp(seg, seq=OUR_ISS)
        assert seg.flags & SYN


def test_fragmentation_needed_for_a_larger_mtu_changes_nothing() -> None:
    core = tcp_core()
    conn, _peer = open_active(core)
    conn.send(b"x" * 1448, T0 + 1)
    [frame] = core.take_outbox()
    core.ether_input(icmp_about(frame, ICMP_UNREACH_FRAG_NEEDED, 9000), T0 + 1.01)
    assert conn.mss == 1448
    assert core.take_outbox() == []


def test_icmp_quoting_a_sequence_number_outside_the_window_is_ignored() -> None:
    core = tcp_core()
    conn, _peer = open_active(core)
    conn.send(b"x" * 1448, T0 + 1)
    [frame] = core.take_outbox()
    forged = bytearray(frame)
    forged[14 + 20 + 4 : 14 + 20 + 8] = seq_add(OUR_ISS, 1_000_000).to_bytes(4, "big")
    core.ether_input(icmp_about(bytes(forged), ICMP_UNREACH_FRAG_NEEDED, 600), T0 + 1.01)
    assert conn.mss == 1448
    assert tcp_drops(core) == {"icmp_out_of_window": 1}  # RFC 5927 4.1


def test_port_unreachable_while_connecting_refuses_the_connection() -> None:
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    [frame] = core.take_outbox()
    core.ether_input(icmp_about(frame, ICMP_UNREACH_PORT), T0 + 0.01)
    assert (conn.state, conn.error) == (S.CLOSED, errno.ECONNREFUSED)


def test_soft_icmp_error_is_reported_when_the_connection_times_out() -> None:
    core = tcp_core(data_retries=1)
    conn, _peer = open_active(core, ts=False)
    conn.send(b"x", T0 + 1)
    [frame] = core.take_outbox()
    core.ether_input(icmp_about(frame, ICMP_UNREACH_HOST), T0 + 1.01)
    assert conn.state == S.ESTABLISHED  # RFC 1122 4.2.3.9: a soft error while established
    for t in (T0 + 2, T0 + 4):
        core.run_timers(t)
    assert (conn.state, conn.error) == (S.CLOSED, errno.EHOSTUNREACH)


# -- segments for no connection ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "seq", "ack", "payload", "expect_seq", "expect_ack", "expect_flags"),
    [
        (SYN, 0xFFFFFFFF, 0, b"", 0, 0, RST | ACK),  # SEG.SEQ + 1 wraps to 0
        (SYN, 0xFFFFFFF0, 0, b"data", 0, 0xFFFFFFF5, RST | ACK),
        (ACK, 1234, 0xFFFFFFFE, b"", 0xFFFFFFFE, 0, RST),
        (ACK | PSH, 1234, 99, b"payload", 99, 0, RST),
        (FIN | ACK, 5, 0xFFFFFFFF, b"abc", 0xFFFFFFFF, 0, RST),
    ],
)
def test_segment_to_a_closed_port_is_answered_with_a_reset(
    flags: int, seq: int, ack: int, payload: bytes, expect_seq: int, expect_ack: int, expect_flags: int
) -> None:
    core = tcp_core()
    core.ether_input(build_tcp_frame(PEER_PORT, 9, seq, ack, flags, payload=payload), T0)
    [rst] = tcp_segments(core.take_outbox())
    check_tcp(rst, sport=9, dport=PEER_PORT, flags=expect_flags, seq=expect_seq, ack=expect_ack, window=0)
    assert rst.payload == b"" and rst.options == TcpOptions()
    s = stats(core)
    assert (s.resets_sent, s.dropped.get("no_socket")) == (1, 1)


def test_reset_to_a_closed_port_is_not_answered() -> None:
    core = tcp_core()
    core.ether_input(build_tcp_frame(PEER_PORT, 9, 1, 2, RST | ACK), T0)
    assert core.take_outbox() == []
    assert stats(core).resets_sent == 0


def test_the_first_reset_is_sent_even_at_time_zero() -> None:
    core = tcp_core(now=0.0)
    core.ether_input(build_tcp_frame(PEER_PORT, 9, 1, 0, SYN), 0.0)
    # Was a bug (fixed): TcpLayer starts its RST token bucket empty at time 0 (_rst_tokens = 0.0), so with a
    # clock that starts at 0 (trio's MockClock) the first RSTs are dropped as rate limited.
    assert len(core.take_outbox()) == 1


def test_the_first_challenge_ack_is_sent_even_at_time_zero() -> None:
    core = tcp_core(now=0.0)
    _conn, peer = open_active(core, now=0.0, rtt=0.001)
    # Was a bug (fixed): challenge_ack_allowed started its bucket empty at time 0 (_challenge_tokens = 0)
    # so no challenge ACK can be sent in the first 10 ms of a clock that starts at 0.
    assert len(peer.send(RST, now=0.005, seq=seq_add(peer.snd_nxt, 1))) == 1


def test_resets_for_closed_ports_are_rate_limited() -> None:
    core = tcp_core(reset_rate_limit=3.0)
    for i in range(5):
        core.ether_input(build_tcp_frame(PEER_PORT, 9, i, 0, SYN), T0)
    assert len(core.take_outbox()) == 3
    assert tcp_drops(core) == {"no_socket": 5, "reset_rate_limited": 2}


# -- what tcp_input refuses --------------------------------------------------------------------


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | RST, SYN | FIN | RST | ACK, 0, FIN, PSH, TCP_URG | FIN])
def test_impossible_flag_combinations_are_dropped_and_counted(flags: int) -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    listener = core.tcp.listen(9)
    assert peer.send(flags, b"x", now=T0 + 1, ack=OUR_ISS + 1) == []
    core.ether_input(build_tcp_frame(PEER_PORT + 1, 9, 5, 0, flags), T0 + 1)  # to the listener
    core.ether_input(build_tcp_frame(PEER_PORT, 10, 5, 0, flags), T0 + 1)  # to a closed port
    assert core.take_outbox() == []
    assert conn.state == S.ESTABLISHED and conn.receive(10, T0 + 1) is None
    assert listener.embryonic == set()
    assert tcp_drops(core) == {"bad_flags": 3}


def test_bad_checksum_is_dropped_before_anything_else() -> None:
    core = tcp_core()
    conn, peer = open_active(core)
    good = peer.frame(RST, now=T0 + 1)
    checksum = int.from_bytes(good[34 + 16 : 34 + 18], "big")
    core.ether_input(peer.frame(RST, now=T0 + 1, checksum=checksum ^ 0x0101), T0 + 1)
    assert conn.state == S.ESTABLISHED
    assert tcp_drops(core) == {"bad_checksum": 1}
    core.ether_input(good, T0 + 1)
    assert conn.state == S.CLOSED


def test_segments_with_port_zero_are_dropped() -> None:
    core = tcp_core()
    core.tcp.listen(OUR_PORT)
    core.ether_input(build_tcp_frame(0, OUR_PORT, 5, 0, SYN), T0)
    assert core.take_outbox() == []
    assert tcp_drops(core) == {"bad_port": 1}


def test_segment_to_the_subnet_broadcast_is_dropped() -> None:
    core = tcp_core()
    core.tcp.listen(OUR_PORT)
    frame = build_tcp_frame(
        PEER_PORT, OUR_PORT, 5, 0, SYN, dst_ip="198.18.0.255", dst_mac="ff:ff:ff:ff:ff:ff"
    )
    core.ether_input(frame, T0)
    assert core.take_outbox() == []
    assert tcp_drops(core) == {"not_unicast": 1}


# -- SYN cookies ---------------------------------------------------------------------------------


def cookie_syn(core: StackCore, **peer_options) -> tuple[Peer, int]:  # type: ignore[no-untyped-def]
    peer = Peer(core, **peer_options)
    [synack] = peer.send(SYN, now=T0)
    check_tcp(synack, flags=SYN | ACK, ack=PEER_ISN + 1, window=0xFFFF, mss=1460)
    assert core.tcp.connections == {}  # no state kept
    return peer, synack.seq


@pytest.mark.parametrize(
    ("peer_options", "mss", "snd_scale", "rcv_scale", "sack", "ts"),
    [
        ({}, 1460 - 12, 7, 3, True, True),
        ({"mss": 1380, "wscale": None, "sack": False, "ts": False}, 1360, 0, 0, False, False),
        ({"mss": 9000, "wscale": 2, "sack": True, "ts": False}, 1460, 2, 3, True, False),
    ],
)
def test_syn_cookie_completes_the_handshake_when_the_syn_queue_is_full(
    peer_options: dict, mss: int, snd_scale: int, rcv_scale: int, sack: bool, ts: bool
) -> None:
    core = tcp_core(syn_queue_limit=0)
    listener = core.tcp.listen(OUR_PORT)
    peer, cookie = cookie_syn(core, **peer_options)
    assert peer.send(ACK, now=T0 + 0.05) == []
    conn = listener.accept()
    assert conn is not None and conn.state == S.ESTABLISHED
    assert (conn.mss, conn.snd_scale, conn.rcv_scale, conn.sack_on, conn.ts_on) == (
        mss, snd_scale, rcv_scale, sack, ts,
    )  # fmt: skip
    s = stats(core)
    assert (s.syncookies_sent, s.syncookies_valid, s.syncookies_failed) == (1, 1, 0)
    # The connection works both ways from the cookie's sequence numbers.
    conn.send(b"hello", T0 + 0.1)
    [data] = peer.receive()
    check_tcp(data, seq=seq_add(cookie, 1), ack=PEER_ISN + 1, payload=b"hello")
    peer.send(ACK, b"world", now=T0 + 0.2)
    assert conn.receive(10, T0 + 0.2) == b"world"


def test_syn_cookie_syn_ack_carries_the_negotiated_options_only() -> None:
    core = tcp_core(syn_queue_limit=0)
    core.tcp.listen(OUR_PORT)
    peer = Peer(core, wscale=None, sack=False, ts=False)
    [synack] = peer.send(SYN, now=T0)
    check_tcp(
        synack, flags=SYN | ACK, mss=1460, window_scale=None, sack_permitted=False, has_timestamps=False
    )


@pytest.mark.parametrize("flip", [1 << 10, 1 << 31, 1])
def test_forged_cookie_ack_is_reset(flip: int) -> None:
    core = tcp_core(syn_queue_limit=0)
    listener = core.tcp.listen(OUR_PORT)
    peer, cookie = cookie_syn(core)
    forged = seq_add(cookie, 1) ^ flip
    [rst] = peer.send(ACK, now=T0 + 0.05, ack=forged)
    check_tcp(rst, flags=RST, seq=forged)
    assert listener.accept() is None and core.tcp.connections == {}
    assert stats(core).syncookies_failed == 1


def test_cookie_ack_for_another_client_isn_is_reset() -> None:
    core = tcp_core(syn_queue_limit=0)
    core.tcp.listen(OUR_PORT)
    peer, cookie = cookie_syn(core)
    [rst] = peer.send(ACK, now=T0 + 0.05, seq=seq_add(PEER_ISN, 2), ack=seq_add(cookie, 1))
    check_tcp(rst, flags=RST)
    assert stats(core).syncookies_failed == 1


def test_syn_queue_limit_switches_to_cookies_only_beyond_it() -> None:
    core = tcp_core(syn_queue_limit=2)
    listener = core.tcp.listen(OUR_PORT)
    for port in (1001, 1002, 1003):
        Peer(core, port=port).send(SYN, now=T0)
    assert len(listener.embryonic) == 2
    assert stats(core).syncookies_sent == 1


def test_syn_queue_full_without_cookies_drops_the_syn() -> None:
    core = tcp_core(syn_queue_limit=0, syncookies=False)
    core.tcp.listen(OUR_PORT)
    assert Peer(core).send(SYN, now=T0) == []
    assert tcp_drops(core) == {"syn_queue_full": 1}


# -- listeners -----------------------------------------------------------------------------------


def test_listen_backlog_overflow_drops_the_syn_until_accept() -> None:
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT, backlog=1)
    peer1 = Peer(core, port=1001)
    peer1.send(SYN, now=T0)
    peer1.send(ACK, now=T0 + 0.05)
    assert len(listener.accept_queue) == 1
    peer2 = Peer(core, port=1002)
    assert peer2.send(SYN, now=T0 + 0.1) == []  # as Linux: the client's SYN retry comes back later
    assert tcp_drops(core) == {"listen_queue_overflow": 1}
    assert listener.accept() is not None
    [synack] = peer2.send(SYN, now=T0 + 1, seq=PEER_ISN)
    check_tcp(synack, dport=1002, flags=SYN | ACK)


def test_closing_a_listener_resets_what_was_not_accepted() -> None:
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT)
    done = Peer(core, port=1001)
    done.send(SYN, now=T0)
    done.send(ACK, now=T0 + 0.05)
    half = Peer(core, port=1002, isn=0x7FFF)
    half.send(SYN, now=T0 + 0.1)
    [established] = listener.accept_queue
    [embryo] = listener.embryonic
    listener.close(T0 + 1)
    resets = {seg.dst_port: seg for seg in tcp_segments(core.take_outbox())}
    check_tcp(resets[1001], dport=1001, flags=RST | ACK, seq=OUR_ISS + 1, ack=PEER_ISN + 1)
    check_tcp(resets[1002], dport=1002, flags=RST | ACK, seq=OUR_ISS + 1, ack=0x8000)
    assert established.state == embryo.state == S.CLOSED
    assert core.tcp.connections == {} and core.tcp.listeners == {}
    # The port is closed now.
    [rst] = Peer(core, port=1003).send(SYN, now=T0 + 2)
    check_tcp(rst, dport=1003, flags=RST | ACK)


def test_accepted_connections_survive_closing_the_listener() -> None:
    core = tcp_core()
    listener, conn, _peer = open_passive(core)
    listener.close(T0 + 1)
    assert core.take_outbox() == []
    assert conn.state == S.ESTABLISHED


def test_listening_twice_on_a_port_is_refused() -> None:
    core = tcp_core()
    core.tcp.listen(OUR_PORT)
    with pytest.raises(OSError) as info:
        core.tcp.listen(OUR_PORT)
    assert info.value.errno == errno.EADDRINUSE


# -- TIME_WAIT -----------------------------------------------------------------------------------


def passive_time_wait(core: StackCore, **peer_options):  # type: ignore[no-untyped-def]
    """A passively opened connection that we closed first, now in TIME_WAIT."""
    _listener, conn, peer = open_passive(core, **peer_options)
    conn.shutdown(T0 + 1)
    peer.receive()
    assert peer.send(FIN | ACK, now=T0 + 1.05) != []
    assert conn.state == S.TIME_WAIT
    return conn, peer


def test_time_wait_is_reused_by_a_syn_above_the_old_sequence_space() -> None:
    core = tcp_core()
    old, peer = passive_time_wait(core, ts=False)
    new_isn = seq_add(peer.snd_nxt, 100_000)
    peer2 = Peer(core, isn=new_isn, ts=False)
    [synack] = peer2.send(SYN, now=T0 + 2)
    check_tcp(synack, flags=SYN | ACK, ack=seq_add(new_isn, 1))
    assert old.state == S.CLOSED
    [new] = core.tcp.connections.values()
    assert new is not old and new.state == S.SYN_RECEIVED


def test_time_wait_is_reused_by_a_syn_with_a_newer_timestamp() -> None:
    core = tcp_core()
    old, peer = passive_time_wait(core)
    peer2 = Peer(core, isn=seq_add(peer.snd_nxt, -5000))  # lower sequence, newer timestamp
    [synack] = peer2.send(SYN, now=T0 + 2)
    check_tcp(synack, flags=SYN | ACK, ack=seq_add(peer.snd_nxt, -4999))
    assert old.state == S.CLOSED


def test_time_wait_answers_an_old_syn_with_an_ack() -> None:
    core = tcp_core()
    old, peer = passive_time_wait(core, ts=False)
    [ack] = Peer(core, isn=seq_add(peer.snd_nxt, -5000), ts=False).send(SYN, now=T0 + 2)
    check_tcp(ack, flags=ACK, ack=peer.snd_nxt)
    assert old.state == S.TIME_WAIT


def test_time_wait_connections_beyond_the_limit_are_recycled() -> None:
    core = tcp_core(time_wait_limit=1)
    listener = core.tcp.listen(OUR_PORT)
    conns = []
    for port in (1001, 1002):
        peer = Peer(core, port=port)
        peer.send(SYN, now=T0)
        peer.send(ACK, now=T0 + 0.05)
        conn = listener.accept()
        conn.shutdown(T0 + 1)
        peer.receive()
        peer.send(FIN | ACK, now=T0 + 1.05)
        conns.append(conn)
    assert [c.state for c in conns] == [S.CLOSED, S.TIME_WAIT]
    assert stats(core).time_wait_recycled == 1


def test_isn_source_is_pluggable_per_stack() -> None:
    """``TcpLayer.isn_source`` replaces the ISN generator for one stack instance only."""
    core = tcp_core()
    other = tcp_core()
    core.tcp.isn_source = lambda *args: 0xFFFFFFFE
    assert core.tcp.connect(int(PEER_IP), 80, T0).iss == 0xFFFFFFFE
    assert other.tcp.connect(int(PEER_IP), 80, T0).iss == OUR_ISS  # this file's fixed ISN


def test_linux_syn_options_read_as_the_general_parser_reads_them() -> None:
    """``tcp_input`` reads Linux's SYN option layout (the captured SYN and SYN-ACK of
    vectors.py) with one unpack; the result is the general parser's, and any other layout
    (every single byte of it changed, or the layout without timestamps) is left to the
    general parser (None)."""
    from vectors import TCP_SYN, TCP_SYN_ACK, TCP_SYN_NO_TIMESTAMPS

    from trio_yastack.stack.tcp._layer import linux_syn_options
    from trio_yastack.stack.wire.tcp import parse_tcp_options

    for frame in (TCP_SYN, TCP_SYN_ACK):
        start = 14 + 20 + 20  # Ethernet, IPv4, the TCP header: the 20 option bytes follow
        options = bytes(frame[start : start + 20])
        fast = linux_syn_options(options, 0)
        assert fast is not None and fast == parse_tcp_options(options, 0, 20)
        assert fast.mss == 1460 and fast.window_scale == 10 and fast.sack_permitted
        assert linux_syn_options(b"\xa5" + options, 1) == fast  # at an offset
        for index in (0, 1, 4, 5, 6, 7, 16, 17, 18):  # each fixed byte changed: not this layout
            changed = bytearray(options)
            changed[index] ^= 0x10
            assert linux_syn_options(bytes(changed), 0) is None
        for index in (2, 3, 8, 12, 19):  # the values: still this layout, read as parsed
            changed = bytearray(options)
            changed[index] ^= 0x5A
            assert linux_syn_options(bytes(changed), 0) == parse_tcp_options(bytes(changed), 0, 20)
    start = 14 + 20 + 20
    header_len = (TCP_SYN_NO_TIMESTAMPS[14 + 20 + 12] >> 4) * 4
    no_ts = TCP_SYN_NO_TIMESTAMPS[start : 14 + 20 + header_len] + bytes(20)
    assert linux_syn_options(no_ts, 0) is None
