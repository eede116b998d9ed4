"""Path-MTU discovery for TCP (RFC 1191): DF on every TCP datagram, and the whole flight resent
at the new size after "fragmentation needed" (FreeBSD's ``tcp_mtudisc``).

Tier 2: hand-made segments and a crafted ICMP message from a router, ISNs just below 2**32.
"""

from __future__ import annotations

import pytest
from helpers import OTHER_IP, OTHER_MAC, OUR_IP, OUR_MAC, PEER_IP, build_icmp_frame, check_ipv4
from tcp_helpers import (
    ACK,
    FIN,
    OUR_ISS,
    OUR_PORT,
    PEER_PORT,
    SYN,
    T0,
    Peer,
    check_tcp,
    fix_iss,
    open_active,
    tcp_core,
    tcp_segments,
)

from trio_yastack.stack import StackCore
from trio_yastack.stack.wire import IPPROTO_TCP, TcpRepr
from trio_yastack.stack.wire.icmp import ICMP_UNREACH_FRAG_NEEDED, IcmpRepr


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


def frag_needed(frame: bytes | bytearray, mtu: int) -> bytes:
    """A router's "fragmentation needed" quoting our ``frame``'s IP header and 8 bytes."""
    icmp = IcmpRepr.dest_unreachable(ICMP_UNREACH_FRAG_NEEDED, bytes(frame[14 : 14 + 28]), next_hop_mtu=mtu)
    return build_icmp_frame(OTHER_MAC, OUR_MAC, OTHER_IP, OUR_IP, icmp)


def all_with_df(frames: list[bytes | bytearray]) -> int:
    for frame in frames:
        check_ipv4(bytes(frame), src=OUR_IP, protocol=IPPROTO_TCP, dont_fragment=True, more_fragments=False)
    return len(frames)


def test_every_tcp_segment_leaves_with_df() -> None:
    """RFC 1191 3: SYN, ACK, data, FIN, the TIME_WAIT ACK, and a RST for a closed port."""
    core = tcp_core()
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = Peer(core)
    [syn] = core.take_outbox()
    all_with_df([syn])
    core.ether_input(peer.frame(SYN | ACK, now=T0 + 0.05, ack=(OUR_ISS + 1) & 0xFFFFFFFF), T0 + 0.05)
    peer.snd_nxt += 1
    peer.rcv_nxt = (OUR_ISS + 1) & 0xFFFFFFFF
    assert all_with_df(peer_frames(core, peer)) == 1  # ACK
    conn.send(b"x" * 5000, T0 + 1)
    assert all_with_df(peer_frames(core, peer)) >= 3  # data
    peer.send(ACK, now=T0 + 1.05)
    conn.close(T0 + 2)
    assert all_with_df(peer_frames(core, peer)) == 1  # FIN
    core.ether_input(peer.frame(FIN | ACK, now=T0 + 2.05), T0 + 2.05)
    assert all_with_df(peer_frames(core, peer)) == 1  # the ACK that enters TIME_WAIT
    assert core.tcp.time_wait
    core.ether_input(peer.frame(FIN | ACK, now=T0 + 3), T0 + 3)
    assert all_with_df(peer_frames(core, peer)) == 1  # TIME_WAIT's ACK of a retransmitted FIN
    core.ether_input(Peer(core, port=PEER_PORT + 1, our_port=9).frame(SYN, now=T0 + 4), T0 + 4)
    [rst] = core.take_outbox()
    all_with_df([rst])  # RST for a closed port
    check_tcp(bytes(rst), sport=9, dport=PEER_PORT + 1)


def peer_frames(core: StackCore, peer: Peer) -> list[bytes | bytearray]:
    """The core's outbox, also taken in by ``peer`` (its RCV.NXT and TS.Recent move on)."""
    frames = core.take_outbox()
    for seg in tcp_segments([bytes(frame) for frame in frames]):
        if seg.seq == peer.rcv_nxt or seg.flags & SYN:
            peer.rcv_nxt = (seg.seq + len(seg.payload) + (1 if seg.flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        if seg.options.timestamps is not None:
            peer.ts_recent = seg.options.timestamps[0]
    return frames


def flight_after_icmp(
    core: StackCore, size: int, mtu: int, *, sack: bool
) -> tuple[Peer, bytes, list[TcpRepr]]:
    """Send ``size`` bytes, then the router's ICMP quoting the first segment: the flight that
    was lost and what we sent again (the peer received it)."""
    conn, peer = open_active(core, sack=sack)
    data = bytes(i % 251 for i in range(size))
    conn.send(data, T0 + 1)
    frames = core.take_outbox()
    flight = b"".join(seg.payload for seg in tcp_segments([bytes(frame) for frame in frames]))
    core.ether_input(frag_needed(frames[0], mtu), T0 + 1.01)
    return peer, flight, peer.receive()


@pytest.mark.parametrize("sack", [True, False])
def test_fragmentation_needed_resends_the_whole_flight_at_the_new_size(sack: bool) -> None:
    core = tcp_core()
    _peer, flight, again = flight_after_icmp(core, 10 * 1448, 1000, sack=sack)
    assert len(flight) == 10 * 1448  # the initial window: ten full segments, all too big
    mss = 1000 - 40 - 12
    assert all(len(seg.payload) <= mss for seg in again)
    assert b"".join(seg.payload for seg in again) == flight  # all of it, in order, at once
    check_tcp(again[0], seq=OUR_ISS + 1, payload=flight[:mss])
    tcp = core.statistics().tcp
    assert tcp.retransmitted_bytes == len(flight)
    assert tcp.rto_timeouts == 0


def test_the_flight_resent_is_acknowledged_without_a_timeout() -> None:
    """Was the gap: without SACK the segments after the first waited for the retransmission
    timeout; now one cumulative ACK from the peer covers the whole flight."""
    core = tcp_core()
    peer, _flight, _again = flight_after_icmp(core, 6 * 1448, 1200, sack=False)
    [conn] = core.tcp.connections.values()
    peer.send(ACK, now=T0 + 1.06)
    assert conn.snd_una == conn.snd_max
    assert conn.t_rexmt == 0.0  # nothing left for a timeout to resend
    assert core.statistics().tcp.rto_timeouts == 0
