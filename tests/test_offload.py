"""Checksum offload and TSO/GSO in the sans-IO core, and how a port's offloads reach the config.

Transmit: with ``tx_checksum_offload`` TCP data segments are :class:`OffloadPacket` frames whose
checksum field holds the folded pseudo-header sum (Linux's CHECKSUM_PARTIAL), and with
``tso_max_size`` one frame carries many MSS-sized segments (``gso_size``) for the port to cut.  The
TAP driver describes such a frame to the kernel in a virtio-net header (``_offload_header``), and
``complete_checksum`` finishes the checksum as the kernel would; scapy is the independent oracle
for every completed checksum.

Receive: a :class:`ChecksumVerified` frame is not verified again (its checksum may be partial or,
here, plainly wrong), a plain one is, and a GSO super-segment larger than the MTU is taken whole.

Nothing here touches a real interface: StackCore is driven by hand (``tcp_helpers``), and
``open_stack`` runs on a ``memory_wire`` under trio's MockClock (``autojump_clock``).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import trio
from helpers import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    build_arp_frame,
    build_ipv4_frame,
    build_udp_frame,
    drops,
    make_core,
)
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether
from tcp_helpers import (
    ACK,
    FIN,
    OUR_PORT,
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
    tcp_bytes,
    tcp_drops,
    tcp_segments,
)

from trio_yastack import open_stack
from trio_yastack.nic import Port, PortCapabilities, PortWrapper, memory_wire
from trio_yastack.nic.tap import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR,
    _offload_header,
    complete_checksum,
)
from trio_yastack.stack import (
    ChecksumVerified,
    InterfaceConfig,
    OffloadPacket,
    StackConfig,
    StackCore,
    TcpConfig,
    TcpConnection,
)
from trio_yastack.stack._offload import ChecksumVerifiedPacket
from trio_yastack.stack.wire import ARP_REQUEST, IPPROTO_TCP, TcpRepr
from trio_yastack.stack.wire._checksum import pseudo_header_sum

MSS = 1448  # a 1500-byte MTU less IPv4, TCP and the timestamp option
Frame = bytes | bytearray


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


# -- helpers -------------------------------------------------------------------------------------


def offload_core(*, tx_offload: bool, tso: int, mtu: int = 1500, **sections: Any) -> StackCore:
    """A seeded core with the offload settings, the peer's MAC already known."""
    core = make_core(seed=0, mtu=mtu, tx_checksum_offload=tx_offload, tso_max_size=tso, **sections)
    core.arp._learn(int(PEER_IP), bytes(PEER_MAC), T0)
    return core


def fold(value: int) -> int:
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def ip_total_len(frame: Frame) -> int:
    return int.from_bytes(frame[16:18], "big")


def tcp_header_len(frame: Frame) -> int:
    ihl = (frame[14] & 0x0F) * 4
    return (frame[14 + ihl + 12] >> 4) * 4


def tcp_field(frame: Frame) -> int:
    ihl = (frame[14] & 0x0F) * 4
    return int.from_bytes(frame[14 + ihl + 16 : 14 + ihl + 18], "big")


def partial_sum(frame: Frame) -> int:
    """The folded pseudo-header sum CHECKSUM_PARTIAL puts in the field (not complemented)."""
    ihl = (frame[14] & 0x0F) * 4
    src = int.from_bytes(frame[26:30], "big")
    dst = int.from_bytes(frame[30:34], "big")
    return fold(pseudo_header_sum(src, dst, IPPROTO_TCP, ip_total_len(frame) - ihl))


def scapy_tcp_checksum_ok(frame: Frame) -> bool:
    """scapy's opinion: the TCP checksum in ``frame`` equals the one it computes itself."""
    packet = Ether(bytes(frame))
    rebuilt = packet.copy()
    del rebuilt[TCP].chksum
    return packet[TCP].chksum == Ether(bytes(rebuilt))[TCP].chksum


def parse_out(frame: Frame) -> TcpRepr:
    """A frame we sent, as a TCP segment with valid checksums (completed first if offloaded)."""
    whole = complete_checksum(frame) if type(frame) is OffloadPacket else bytes(frame)
    [segment] = tcp_segments([whole])
    return segment


def push(
    core: StackCore, conn: TcpConnection, peer: Peer, data: bytes, now: float
) -> tuple[list[Frame], float]:
    """Send ``data`` on ``conn``; after each flight (10 ms) the peer acknowledges it, one ACK per
    two segments.  Returns every frame sent and the time of the last ACK, and checks the peer got
    exactly ``data``."""
    start = peer.rcv_nxt
    assert conn.send(data, now) == len(data)
    frames: list[Frame] = []
    received = bytearray()
    flight_start = start
    out = core.take_outbox()
    for _ in range(200):
        if not out:
            break
        frames += out
        for frame in out:
            segment = parse_out(frame)
            if segment.options.timestamps is not None:
                peer.ts_recent = segment.options.timestamps[0]
            if segment.seq == peer.rcv_nxt and segment.payload:
                peer.rcv_nxt = seq_add(peer.rcv_nxt, len(segment.payload))
                received += segment.payload
        now += 0.01
        # one ACK per two segments, as a real receiver (the sender's window grows per ACK)
        acked = flight_start
        out = []
        while acked != peer.rcv_nxt:
            acked = seq_add(acked, min(2 * MSS, (peer.rcv_nxt - acked) & 0xFFFF_FFFF))
            core.ether_input(peer.frame(ACK, now=now, ack=acked), now)
            out += core.take_outbox()
        flight_start = peer.rcv_nxt
    assert peer.rcv_nxt == seq_add(start, len(data)) and bytes(received) == data
    return frames, now


def payload_len(frame: Frame) -> int:
    ihl = (frame[14] & 0x0F) * 4
    return ip_total_len(frame) - ihl - tcp_header_len(frame)


# -- _offload_header and complete_checksum ---------------------------------------------------------


def as_offload(frame: bytes, gso_size: int = 0) -> OffloadPacket:
    packet = OffloadPacket(len(frame), gso_size)
    packet[:] = frame
    return packet


def partial_frame(
    *, payload: bytes = b"", tcp_options: bytes = b"", ip_options: bytes = b"", padding: bytes = b""
) -> tuple[bytes, bytes]:
    """A TCP frame from us with a full checksum, and the same frame with the pseudo-header sum
    in the field instead (what an OffloadPacket carries)."""
    segment = tcp_bytes(
        40000, 8080, 1, 2, ACK | PSH, options=tcp_options, payload=payload, src_ip=OUR_IP, dst_ip=PEER_IP
    )
    full = build_ipv4_frame(
        OUR_MAC, PEER_MAC, OUR_IP, PEER_IP, IPPROTO_TCP, segment, options=ip_options, padding=padding
    )
    partial = bytearray(full)
    ihl = (full[14] & 0x0F) * 4
    partial[14 + ihl + 16 : 14 + ihl + 18] = partial_sum(full).to_bytes(2, "big")
    return full, bytes(partial)


@pytest.mark.parametrize("gso_size", [0, 1448, 536])
@pytest.mark.parametrize(
    ("ip_options", "tcp_options"), [(b"", b""), (b"", bytes(12)), (b"\x01\x01\x01\x00", b"")]
)
def test_offload_header_describes_a_tcp_ipv4_frame(
    gso_size: int, ip_options: bytes, tcp_options: bytes
) -> None:
    """NEEDS_CSUM at the TCP checksum field (csum_start = 14 + IPv4 header, csum_offset 16), hdr_len
    up to the end of the TCP header, GSO TCPV4 with gso_size iff gso_size > 0."""
    full, _ = partial_frame(payload=b"p" * 3000, tcp_options=tcp_options, ip_options=ip_options)
    header = _offload_header(as_offload(full, gso_size))
    assert header is not None and len(header) == VNET_HDR.size == 10
    flags, gso_type, hdr_len, size, csum_start, csum_offset = VNET_HDR.unpack(header)
    ihl = 20 + len(ip_options)
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert gso_type == (VIRTIO_NET_HDR_GSO_TCPV4 if gso_size else VIRTIO_NET_HDR_GSO_NONE)
    assert size == gso_size
    assert (csum_start, csum_offset) == (14 + ihl, 16)
    assert hdr_len == 14 + ihl + 20 + len(tcp_options)


def test_offload_header_refuses_what_is_not_ipv4() -> None:
    """An ARP frame, or one too short to hold IPv4 and TCP headers: no header (the port counts it
    in oerrors)."""
    arp = build_arp_frame(ARP_REQUEST, OUR_MAC, OUR_IP, bytes(6), PEER_IP)
    assert _offload_header(as_offload(arp)) is None
    full, _ = partial_frame()
    assert _offload_header(as_offload(full[:53])) is None


# Was a bug (fixed): _offload_header never looked at the IPv4 protocol.
def test_offload_header_does_not_treat_udp_as_tcp() -> None:
    """A UDP/IPv4 OffloadPacket is not a TCP/IPv4 frame: either no header (refused, as tx_burst's
    "not a TCP/IPv4 frame" says) or one pointing at UDP's checksum (offset 6), never TCP's 16."""
    udp = build_udp_frame(OUR_MAC, PEER_MAC, OUR_IP, PEER_IP, 5000, 53, b"x" * 100)
    header = _offload_header(as_offload(udp))
    assert header is None or VNET_HDR.unpack(header)[5] == 6


@pytest.mark.parametrize("payload", [b"", b"a", b"ab", bytes(range(256)) * 5 + b"odd"])
@pytest.mark.parametrize("ip_options", [b"", b"\x01\x01\x01\x00"])
@pytest.mark.parametrize("padding", [b"", bytes(9)])
def test_complete_checksum_matches_a_full_computation(
    payload: bytes, ip_options: bytes, padding: bytes
) -> None:
    """From the pseudo-header sum in the field, complete_checksum gives exactly the checksum a full
    computation gives (and scapy agrees), ignoring link padding after the datagram and leaving its
    argument alone."""
    full, partial = partial_frame(payload=payload, ip_options=ip_options, padding=padding)
    before = bytes(partial)
    completed = complete_checksum(bytearray(partial))
    assert completed == full
    assert partial == before
    assert scapy_tcp_checksum_ok(completed)


# -- transmit: what the core sends -----------------------------------------------------------------


@pytest.mark.parametrize("tso", [65535, 16000])
def test_tso_sends_super_segments_of_whole_mss(tso: int) -> None:
    """With checksum offload and TSO, data leaves as OffloadPackets: those longer than one MSS have
    gso_size == the data MSS (1448), a payload of whole MSS (but the last), an IPv4 datagram of at
    most tso_max_size, a frame longer than the MTU; every checksum field holds the folded
    pseudo-header sum, which complete_checksum (and scapy) turn into a valid checksum; the peer
    gets the bytes in order.  Once the window is open (after a first 250 KB), a 200 KB write goes
    out in frames as large as tso_max_size allows."""
    core = offload_core(tx_offload=True, tso=tso)
    conn, peer = open_active(core)
    assert conn.mss == MSS
    warm_up, now = push(core, conn, peer, random.Random(1).randbytes(250_000), T0 + 1)
    warm_up_end = peer.rcv_nxt
    frames, _ = push(core, conn, peer, random.Random(2).randbytes(200_000), now + 0.001)
    biggest = MSS * ((tso - 100) // MSS)
    assert max(payload_len(f) for f in frames) == biggest
    end = peer.rcv_nxt
    seen_gso = 0
    data_frames = warm_up + frames
    for frame in data_frames:
        assert type(frame) is OffloadPacket
        length = payload_len(frame)
        assert ip_total_len(frame) == len(frame) - 14 <= tso
        assert tcp_field(frame) == partial_sum(frame)
        assert scapy_tcp_checksum_ok(complete_checksum(frame))
        header = VNET_HDR.unpack(_offload_header(frame))  # type: ignore[arg-type]
        if length > MSS:
            seen_gso += 1
            assert frame.gso_size == MSS
            assert len(frame) > 1514
            assert length <= biggest
            last = seq_add(parse_out(frame).seq, length) in (end, warm_up_end)
            assert last or length % MSS == 0, (length, MSS)
            assert header[:2] == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4)
            assert header[2:] == (14 + 20 + 32, MSS, 34, 16)
        else:
            assert frame.gso_size == 0 and len(frame) <= 1514
            assert header[1] == VIRTIO_NET_HDR_GSO_NONE
    assert seen_gso >= 10


def test_checksum_offload_without_tso_sends_mtu_sized_partial_frames() -> None:
    """tx_checksum_offload alone (and no software GSO): data frames are OffloadPackets with
    gso_size 0 and at most 1514 bytes, their fields the pseudo-header sum."""
    core = offload_core(tx_offload=True, tso=0, gso=False)
    conn, peer = open_active(core)
    frames, _ = push(core, conn, peer, random.Random(2).randbytes(60_000), T0 + 1)
    assert len(frames) == -(-60_000 // MSS)
    for frame in frames:
        assert type(frame) is OffloadPacket and frame.gso_size == 0
        assert len(frame) <= 1514 and payload_len(frame) <= MSS
        assert tcp_field(frame) == partial_sum(frame)
        assert scapy_tcp_checksum_ok(complete_checksum(frame))


@pytest.mark.parametrize(
    ("gso", "tx_offload"),
    [(True, False), (True, True), (False, False)],
    ids=["software-gso", "software-gso-csum-offload", "no-gso"],
)
def test_without_tso_frames_leave_mtu_sized_with_full_checksums(gso: bool, tx_offload: bool) -> None:
    """No TSO and software GSO (the default), or no offload at all: frames of at most 1514 bytes
    with complete checksums, scapy agreeing (a lone segment may be left to the port's checksum
    offload), and the peer gets the same bytes either way.  With GSO, tcp_output built 64 KB
    segments and ether_output cut them (native/gso.c)."""
    core = offload_core(tx_offload=tx_offload, tso=0, gso=gso)
    assert core.gso_max_size == (0xFFFF if gso else 0)
    conn, peer = open_active(core)
    data = random.Random(3).randbytes(200_000)
    frames, _ = push(core, conn, peer, data, T0 + 1)  # checks the peer got exactly data
    for frame in frames:
        assert len(frame) <= 1514
        if type(frame) is OffloadPacket:  # one segment, left to the port's checksum offload
            assert tx_offload and frame.gso_size == 0
            frame = complete_checksum(frame)
        assert type(frame) is bytes and scapy_tcp_checksum_ok(frame)
    stats = core.statistics().tcp.counters
    data_frames = [f for f in frames if payload_len(f)]
    assert stats["bytes_sent"] == len(data)
    assert stats["segments_sent"] >= len(data_frames)  # every wire segment counted, GSO or not


class RecordingPeer(Peer):
    """A Peer that also keeps every raw frame it takes from the core's outbox."""

    def __init__(self, core: StackCore, **kwargs: Any) -> None:
        super().__init__(core, **kwargs)
        self.frames: list[Frame] = []

    def receive(self) -> list[TcpRepr]:
        frames = self.core.take_outbox()
        self.frames += frames
        self.core.outbox.extend(frames)
        return super().receive()  # parses them, verifying full checksums


def test_segments_without_payload_are_never_offloaded() -> None:
    """SYN, the handshake ACK, ACKs of received data (immediate, delayed, with a SACK block), the
    FIN and a RST are plain bytes with full checksums even when the port offloads: only data is
    left partial."""
    core = offload_core(tx_offload=True, tso=65535)
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    peer = RecordingPeer(core)
    [_syn] = peer.receive()
    now = T0 + 0.05
    [_ack] = peer.send(SYN | ACK, now=now)
    for chunk in (b"a" * MSS, b"b" * MSS, b"c" * 100):  # every second segment is ACKed at once
        now += 0.001
        peer.send(ACK, chunk, now=now)
    peer.run_timers(now + 1)  # the delayed ACK for the third
    peer.send(ACK, b"d" * 50, now=now + 1, seq=seq_add(peer.snd_nxt, 500))  # out of order: SACK
    conn.shutdown(now + 1)
    peer.receive()
    conn.abort(now + 1)
    peer.receive()
    segments = [parse_out(f) for f in peer.frames]
    assert segments[0].flags == SYN and segments[-1].flags & RST
    assert any(s.flags & FIN for s in segments)
    assert any(s.options.sack_blocks for s in segments)
    assert sum(1 for s in segments if s.flags == ACK) >= 3
    for frame in peer.frames:
        assert type(frame) is bytes, parse_out(frame)
        assert payload_len(frame) == 0
        assert scapy_tcp_checksum_ok(frame)


def test_a_retransmission_is_one_mss_without_gso() -> None:
    """After a TSO flight is lost, the RTO resends one MSS: an OffloadPacket without gso_size that
    fits the MTU and completes to a valid checksum."""
    # rack=False: the retransmission timer's resend (with RACK-TLP a tail loss probe comes first)
    core = offload_core(tx_offload=True, tso=65535, tcp=TcpConfig(rack=False))
    conn, _peer = open_active(core)
    assert conn.send(b"r" * 5000, T0 + 1) == 5000
    [flight] = core.take_outbox()
    # Three whole segments; the 656-byte tail waits for Nagle, as Linux's tcp_mss_split_point holds it.
    assert type(flight) is OffloadPacket and flight.gso_size == MSS and payload_len(flight) == 3 * MSS
    core.run_timers(T0 + 1 + conn.rto + 0.001)
    [again] = core.take_outbox()
    assert type(again) is OffloadPacket and again.gso_size == 0
    assert payload_len(again) == MSS and len(again) <= 1514
    segment = check_tcp(complete_checksum(again), seq=parse_out(flight).seq, payload=b"r" * MSS)
    assert segment.flags & ACK


def test_tso_with_sack_blocks_cuts_segments_that_fit_the_mtu() -> None:
    """While out-of-order data is held our segments carry a SACK block, and a TSO frame's gso_size
    shrinks by its size (the data MSS), so every segment the port cuts still fits the MTU."""
    core = offload_core(tx_offload=True, tso=65535)
    conn, peer = open_active(core)
    core.ether_input(peer.frame(ACK, b"z" * 100, now=T0 + 1, seq=seq_add(peer.snd_nxt, 1000)), T0 + 1)
    [dup] = tcp_segments([bytes(f) for f in core.take_outbox()])
    assert len(dup.options.sack_blocks) == 1
    assert conn.send(b"s" * 50_000, T0 + 1) == 50_000
    frames = core.take_outbox()
    gso = [f for f in frames if type(f) is OffloadPacket and f.gso_size]
    assert gso
    for frame in frames:
        segment = parse_out(frame)
        assert len(segment.options.sack_blocks) == 1
        if type(frame) is OffloadPacket and frame.gso_size:
            assert frame.gso_size == MSS - 12
            assert 14 + 20 + tcp_header_len(frame) + frame.gso_size <= 1514
            assert payload_len(frame) % frame.gso_size == 0  # the flight is cwnd-limited: whole segments
            assert VNET_HDR.unpack(_offload_header(frame))[2] == 14 + 20 + tcp_header_len(frame)
        else:
            assert len(frame) <= 1514


# -- StackConfig ------------------------------------------------------------------------------------


def _interface(mtu: int = 1500) -> InterfaceConfig:
    return InterfaceConfig(mac=OUR_MAC, address=OUR_IP, mtu=mtu)


def test_stack_config_offload_validation() -> None:
    """TSO needs checksum offload, and its size must lie above the MTU and within 65535."""
    with pytest.raises(ValueError, match="TSO needs transmit checksum offload"):
        StackConfig(interface=_interface(), tso_max_size=65535)
    for bad in (1500, 1000, 65536, -1):
        with pytest.raises(ValueError, match="must be 0 or above the MTU"):
            StackConfig(interface=_interface(), tx_checksum_offload=True, tso_max_size=bad)
    with pytest.raises(ValueError, match="above the MTU"):
        StackConfig(interface=_interface(9000), tx_checksum_offload=True, tso_max_size=9000)
    for good in (0, 1501, 65535):
        StackConfig(interface=_interface(), tx_checksum_offload=True, tso_max_size=good)
    assert StackConfig(interface=_interface()).tx_checksum_offload is False
    assert StackConfig(interface=_interface()).tso_max_size == 0


# -- receive ---------------------------------------------------------------------------------------


def _wrong(frame: bytes, field_at: int) -> bytes:
    damaged = bytearray(frame)
    damaged[field_at] ^= 0x5A
    return bytes(damaged)


@pytest.mark.parametrize("mark", [ChecksumVerified, ChecksumVerifiedPacket])
@pytest.mark.parametrize("where", ["tcp", "ip"])
def test_checksum_verified_frames_are_not_verified_again(where: str, mark: Any) -> None:
    """A segment with a wrong TCP (or IPv4 header) checksum handed up as ChecksumVerified (or as
    the memory wire's ChecksumVerifiedPacket) is taken (its data reaches the receive buffer); the
    same bytes as a plain frame are dropped as bad_checksum by the layer whose checksum is wrong."""
    core = offload_core(tx_offload=True, tso=65535)
    conn, peer = open_active(core)
    now = T0 + 1
    good = peer.frame(ACK | PSH, b"hello", now=now)
    bad = _wrong(good, 14 + 20 + 16 if where == "tcp" else 14 + 10)
    core.ether_input(bad, now)
    assert conn.receive(100, now) is None
    assert drops(core) | {f"tcp.{k}": v for k, v in tcp_drops(core).items()} == {f"{where}.bad_checksum": 1}
    core.ether_input(mark(bad), now)
    assert conn.receive(100, now) == b"hello"
    assert core.statistics().tcp.dropped_total + core.statistics().ip.dropped_total == 1


def _as_offload_packet(frame: bytes) -> OffloadPacket:
    packet = OffloadPacket(len(frame))
    packet[:] = frame
    return packet


@pytest.mark.parametrize("burst", [False, True])
@pytest.mark.parametrize("kind", [bytes, bytearray, _as_offload_packet])
def test_only_the_two_marks_skip_verification(kind: Any, burst: bool) -> None:
    """On a port without offloads, a corrupted segment as bytes, a bytearray or an OffloadPacket
    nobody marked (what a port other than the memory wire could hand up) is verified, dropped and
    counted, on ``ether_input`` and on the burst's fast path; the same bytes re-classed as the
    memory wire does it (``ChecksumVerifiedPacket``, no copy) are taken."""
    core = offload_core(tx_offload=False, tso=0)
    conn, peer = open_active(core)
    now = T0 + 1
    frame = peer.frame(ACK | PSH, b"hello", now=now)
    bad = _wrong(frame, 14 + 20 + 16)

    def hand_up(f: Any) -> None:
        if burst:
            core.ether_input_burst([f], now)
        else:
            core.ether_input(f, now)

    hand_up(kind(bad))
    assert conn.receive(100, now) is None
    assert tcp_drops(core) == {"bad_checksum": 1}
    packet: Any = _as_offload_packet(bad)  # re-classed below, as the memory wire does
    packet.__class__ = ChecksumVerifiedPacket
    hand_up(packet)
    assert conn.receive(100, now) == b"hello"
    assert tcp_drops(core) == {"bad_checksum": 1}


def test_the_mark_holds_for_one_frame_only() -> None:
    """ChecksumVerified skips verification for that frame alone: a plain frame after it is verified
    (dropped when wrong, taken when right)."""
    core = offload_core(tx_offload=False, tso=0)
    conn, peer = open_active(core)
    now = T0 + 1
    first = _wrong(peer.frame(ACK, b"one", now=now), 14 + 20 + 16)
    core.ether_input(ChecksumVerified(first), now)
    peer.snd_nxt = seq_add(peer.snd_nxt, 3)
    second = peer.frame(ACK, b"two", now=now)
    core.ether_input(_wrong(second, 14 + 20 + 16), now)
    assert tcp_drops(core) == {"bad_checksum": 1}
    core.ether_input(second, now)
    assert conn.receive(100, now) == b"onetwo"
    assert tcp_drops(core) == {"bad_checksum": 1}


def test_verify_checksums_off_takes_plain_frames_unverified() -> None:
    """``verify_checksums=False`` (a port that verifies everything): plain frames are not checked."""
    core = offload_core(tx_offload=False, tso=0, verify_checksums=False)
    conn, peer = open_active(core)
    now = T0 + 1
    core.ether_input(_wrong(peer.frame(ACK, b"trusted", now=now), 14 + 20 + 16), now)
    assert conn.receive(100, now) == b"trusted"
    assert tcp_drops(core) == {}


@pytest.mark.parametrize("size", [30_000, 65_535 - 20 - 32])
@pytest.mark.parametrize("marked", [True, False])
def test_a_gso_super_segment_is_taken_whole(size: int, marked: bool) -> None:
    """A super-segment far above the MTU (the kernel's GSO/GRO frames): IPv4 total length up to
    65535 in one frame, as ChecksumVerified with only the pseudo-header sum in the field (as the
    kernel sends it) or plain with a full checksum, is one segment taken whole and acknowledged."""
    core = offload_core(tx_offload=True, tso=65535)
    conn, peer = open_active(core)
    now = T0 + 1
    before = core.statistics().tcp.segments_received
    payload = random.Random(size).randbytes(size)
    frame = peer.frame(ACK, payload, now=now)
    assert ip_total_len(frame) == 20 + 32 + size and len(frame) == 14 + 20 + 32 + size
    if marked:
        partial = bytearray(frame)
        partial[50:52] = partial_sum(frame).to_bytes(2, "big")
        frame = ChecksumVerified(partial)
    core.ether_input(frame, now)
    peer.snd_nxt = seq_add(peer.snd_nxt, size)
    assert core.statistics().tcp.segments_received == before + 1
    assert conn.receive(1 << 20, now) == payload
    assert drops(core) == {} and tcp_drops(core) == {}
    acks = peer.receive() + peer.run_timers(now + 1)
    assert acks and acks[-1].ack == peer.snd_nxt


# -- open_stack: port capabilities to config ---------------------------------------------------------


class OffloadCaps(PortWrapper):
    """A memory port that claims offloads it does not have (only the config is looked at)."""

    def __init__(self, inner: Port, **caps: Any) -> None:
        super().__init__(inner)
        self._caps = dataclasses.replace(inner.capabilities, **caps)

    @property
    def capabilities(self) -> PortCapabilities:
        return self._caps


FULL = {"tx_checksum_offload": True, "tso": True, "max_tso_size": 65535}


@pytest.mark.parametrize(
    ("caps", "offloads", "mtu", "expected"),
    [
        (None, True, None, (False, 0)),  # a memory wire offers nothing
        (FULL, True, None, (True, 65535)),
        (FULL, False, None, (False, 0)),
        (FULL, True, 9000, (True, 65535)),
        ({"tx_checksum_offload": True}, True, None, (True, 0)),
        ({"tso": True, "max_tso_size": 65535}, True, None, (False, 0)),  # TSO without checksum offload
        ({**FULL, "max_tso_size": 9000}, True, 9000, (True, 0)),  # not above the MTU
        ({**FULL, "max_tso_size": 32000}, True, None, (True, 32000)),
    ],
)
async def test_open_stack_maps_port_offloads_to_the_config(
    autojump_clock: trio.testing.MockClock,
    caps: dict[str, Any] | None,
    offloads: bool,
    mtu: int | None,
    expected: tuple[bool, int],
) -> None:
    """open_stack turns on checksum offload and TSO only when the port offers them and
    ``offloads`` is true; TSO only with checksum offload and above the MTU; verification of
    received frames stays on either way."""
    port, _other = memory_wire(seed=0)
    nic = OffloadCaps(port, **caps) if caps is not None else port
    async with open_stack(nic, ip="198.18.0.2/24", offloads=offloads, mtu=mtu) as stack:
        core = stack.core
        assert (core.config.tx_checksum_offload, core.config.tso_max_size) == expected
        assert (core.tx_checksum_offload, core.tso_max_size) == expected
        assert core.config.verify_checksums is True


# Was a bug (fixed): open_stack copied a port's max_tso_size (65536 is Linux's gso_max_size)
# into StackConfig unbounded, and StackConfig refuses anything above 65535.
async def test_open_stack_clamps_a_tso_size_above_the_ipv4_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A port that takes TSO frames of up to 65536 (or more) bytes: TSO is used up to 65535, the
    largest IPv4 datagram, rather than the stack failing to open."""
    port, _other = memory_wire(seed=0)
    async with open_stack(OffloadCaps(port, **{**FULL, "max_tso_size": 65536}), ip="198.18.0.2/24") as stack:
        assert stack.core.config.tso_max_size == 65535
