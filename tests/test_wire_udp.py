"""UDP: real kernel datagrams (one whole, one fragmented), byte-exact emit, length and checksum rules."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from vectors import (
    KERNEL_IP,
    PEER_IP,
    UDP_DATAGRAM,
    UDP_FRAGMENT_0,
    UDP_FRAGMENT_1,
    UDP_FRAGMENT_2,
    UDP_TO_CLOSED_PORT,
    pseudo_header,
    rfc1071_sum,
)

from trio_yastack.stack.wire import (
    IPPROTO_UDP,
    BadChecksum,
    EthernetRepr,
    Ipv4Repr,
    Malformed,
    Truncated,
    UdpRepr,
    WireError,
)
from trio_yastack.stack.wire.udp import parse_udp_header, udp_checksum

SRC, DST = int(KERNEL_IP), int(PEER_IP)


def udp_part(frame: bytes) -> bytes:
    """The UDP datagram in a captured, unfragmented, untagged frame."""
    return frame[34:]


def refill_checksum(datagram: bytearray, src: IPv4Address = KERNEL_IP, dst: IPv4Address = PEER_IP) -> bytes:
    """Recompute the checksum with the independent oracle, over the length the header claims."""
    length = struct.unpack_from("!H", datagram, 4)[0]
    datagram[6:8] = b"\x00\x00"
    checksum = ~rfc1071_sum(pseudo_header(src, dst, IPPROTO_UDP, length) + bytes(datagram[:length])) & 0xFFFF
    struct.pack_into("!H", datagram, 6, checksum or 0xFFFF)
    return bytes(datagram)


def reassemble() -> bytes:
    """The 3008-byte datagram from the three captured fragments, placed by their offsets."""
    datagram = bytearray(3008)
    for frame in (UDP_FRAGMENT_0, UDP_FRAGMENT_1, UDP_FRAGMENT_2):
        ip = Ipv4Repr.parse(frame, 14)
        start = 14 + ip.header_len
        datagram[ip.fragment_offset : ip.fragment_offset + ip.payload_len] = frame[
            start : start + ip.payload_len
        ]
    return bytes(datagram)


# --- deconstruct ---------------------------------------------------------------------------


def test_parse_header_fields() -> None:
    """The fast parser returns the ports and where the payload ends."""
    end = len(UDP_DATAGRAM)
    assert parse_udp_header(UDP_DATAGRAM, 34, end, SRC, DST) == (40000, 9999, end)


def test_repr_of_captured_datagrams() -> None:
    """UdpRepr.parse gives ports and payload of both small captured datagrams."""
    assert UdpRepr.parse(UDP_DATAGRAM, KERNEL_IP, PEER_IP, 34) == UdpRepr(
        40000, 9999, b"trio_yastack wire vector\n"
    )
    closed = UdpRepr.parse(UDP_TO_CLOSED_PORT, KERNEL_IP, PEER_IP, 34)
    assert closed == UdpRepr(40000, 9, b"nobody listens here\n")
    assert closed.buffer_len == 28


def test_reassembled_fragments_verify() -> None:
    """The kernel's first fragment's checksum covers the whole 3008 bytes: reassembled, it verifies."""
    datagram = reassemble()
    udp = UdpRepr.parse(datagram, KERNEL_IP, PEER_IP)
    assert (udp.src_port, udp.dst_port) == (40000, 9999)
    assert udp.payload == bytes(i & 0xFF for i in range(3000))
    with pytest.raises(Malformed) as info:  # the first fragment alone is not the whole datagram
        UdpRepr.parse(UDP_FRAGMENT_0, KERNEL_IP, PEER_IP, 34)
    assert info.value.reason == "bad_length"


def test_ip_carries_padding_after_the_datagram() -> None:
    """Bytes after the UDP length (within what IP carried) are not payload."""
    datagram = bytearray(udp_part(UDP_DATAGRAM) + b"PAD")
    udp = UdpRepr.parse(bytes(datagram), KERNEL_IP, PEER_IP)
    assert udp.payload == b"trio_yastack wire vector\n"
    assert parse_udp_header(bytes(datagram), 0, len(datagram), SRC, DST)[2] == len(datagram) - 3


# --- construct -----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [UDP_DATAGRAM, UDP_TO_CLOSED_PORT], ids=["9999", "closed"])
def test_emit_into_prefilled_buffer_matches_capture(frame: bytes) -> None:
    """Re-emitting each captured datagram writes Linux's bytes (checksum included) and no more."""
    udp = UdpRepr.parse(frame, KERNEL_IP, PEER_IP, 34)
    datagram = udp_part(frame)
    buf = bytearray(b"\xa5" * (len(datagram) + 6))
    assert udp.emit_into(buf, KERNEL_IP, PEER_IP, 3) == 3 + len(datagram)
    assert buf[3 : 3 + len(datagram)] == datagram
    assert buf[:3] == b"\xa5" * 3 and buf[3 + len(datagram) :] == b"\xa5" * 3


def test_build_whole_frame() -> None:
    """Ethernet + IPv4 (DF, ident 0x5913) + UDP built in one 0xa5 buffer equal the captured frame."""
    udp = UdpRepr(40000, 9999, b"trio_yastack wire vector\n")
    ip = Ipv4Repr(KERNEL_IP, PEER_IP, IPPROTO_UDP, udp.buffer_len, ident=0x5913, dont_fragment=True)
    eth, _ = EthernetRepr.parse(UDP_DATAGRAM)
    buf = bytearray(b"\xa5" * len(UDP_DATAGRAM))
    udp.emit_into(buf, ip.src, ip.dst, ip.emit_into(buf, eth.emit_into(buf)))
    assert bytes(buf) == UDP_DATAGRAM


def test_emit_of_the_fragmented_datagram_matches_the_kernel() -> None:
    """Our checksum over 3008 bytes equals the one Linux put in the first fragment (0x8108)."""
    data = UdpRepr(40000, 9999, bytes(i & 0xFF for i in range(3000))).to_bytes(KERNEL_IP, PEER_IP)
    assert data[:8] == UDP_FRAGMENT_0[34:42]
    assert data == reassemble()


def test_computed_zero_is_sent_as_ffff() -> None:
    """RFC 768: a checksum that computes to 0 is sent as 0xFFFF, and that datagram verifies."""
    # choose the two payload bytes that make the one's-complement sum 0xFFFF, so ~sum == 0
    partial = rfc1071_sum(
        pseudo_header(KERNEL_IP, PEER_IP, IPPROTO_UDP, 10) + bytes.fromhex("9c40270f000a0000")
    )
    filler = (0xFFFF - partial).to_bytes(2, "big")
    udp = UdpRepr(40000, 9999, filler)
    data = udp.to_bytes(KERNEL_IP, PEER_IP)
    assert data[6:8] == b"\xff\xff"
    assert udp_checksum(bytearray(data[:6] + b"\0\0" + data[8:]), 0, 10, SRC, DST) == 0xFFFF
    assert UdpRepr.parse(data, KERNEL_IP, PEER_IP) == udp


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 3])
def test_round_trip(payload: bytes) -> None:
    """to_bytes then parse gives the same datagram, whatever the payload length's parity."""
    udp = UdpRepr(0, 65535, payload)
    data = udp.to_bytes(KERNEL_IP, PEER_IP)
    assert len(data) == udp.buffer_len == 8 + len(payload)
    assert rfc1071_sum(pseudo_header(KERNEL_IP, PEER_IP, IPPROTO_UDP, len(data)) + data) == 0xFFFF
    assert UdpRepr.parse(data, KERNEL_IP, PEER_IP) == udp


def test_emit_refuses_an_oversized_datagram() -> None:
    """A payload that cannot fit the 16-bit length field is the caller's error (ValueError)."""
    with pytest.raises(ValueError, match="length field"):
        UdpRepr(1, 2, bytes(0xFFFF - 7)).to_bytes(KERNEL_IP, PEER_IP)


# --- bad datagrams -------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(8))
def test_truncated_below_a_header(length: int) -> None:
    """Fewer than 8 bytes is Truncated("too_short")."""
    with pytest.raises(Truncated) as info:
        UdpRepr.parse(udp_part(UDP_DATAGRAM)[:length], KERNEL_IP, PEER_IP)
    assert info.value.reason == "too_short"


def test_truncated_inside_the_payload() -> None:
    """A datagram cut short of its length field is Malformed("bad_length"), at every length."""
    datagram = udp_part(UDP_DATAGRAM)
    for length in range(8, len(datagram)):
        with pytest.raises(Malformed) as info:
            UdpRepr.parse(datagram[:length], KERNEL_IP, PEER_IP)
        assert info.value.reason == "bad_length"


@pytest.mark.parametrize("length_field", [0, 1, 7, 34, 0xFFFF])
def test_bad_length_field(length_field: int) -> None:
    """A length below 8 or beyond what IP carried (33 bytes here) is Malformed("bad_length")."""
    datagram = bytearray(udp_part(UDP_DATAGRAM))
    struct.pack_into("!H", datagram, 4, length_field)
    datagram[6:8] = b"\x00\x00"  # no checksum, so it is the length that is refused
    with pytest.raises(Malformed) as info:
        parse_udp_header(bytes(datagram), 0, len(datagram), SRC, DST)
    assert info.value.reason == "bad_length"


def test_shorter_length_field_trims_the_payload() -> None:
    """A valid length smaller than the IP payload bounds the datagram (checksum over that length)."""
    datagram = bytearray(udp_part(UDP_DATAGRAM))
    struct.pack_into("!H", datagram, 4, 8 + 4)
    udp = UdpRepr.parse(refill_checksum(datagram), KERNEL_IP, PEER_IP)
    assert udp.payload == b"trio"


def test_zero_checksum_means_none() -> None:
    """A zero checksum field is accepted without verification (RFC 768), even on altered data."""
    datagram = bytearray(udp_part(UDP_DATAGRAM))
    datagram[6:8] = b"\x00\x00"
    datagram[-1] ^= 0xFF
    udp = UdpRepr.parse(bytes(datagram), KERNEL_IP, PEER_IP)
    assert udp.payload == b"trio_yastack wire vector\xf5"


@pytest.mark.parametrize("position", [0, 3, 6, 7, 8, -1])
def test_bad_checksum(position: int) -> None:
    """Any flipped bit covered by the checksum is BadChecksum("bad_checksum"); unverified, it parses."""
    datagram = bytearray(udp_part(UDP_DATAGRAM))
    datagram[position] ^= 0x02
    with pytest.raises(BadChecksum) as info:
        UdpRepr.parse(bytes(datagram), KERNEL_IP, PEER_IP)
    assert info.value.reason == "bad_checksum"
    assert isinstance(info.value, WireError)
    assert UdpRepr.parse(bytes(datagram), KERNEL_IP, PEER_IP, verify_checksum=False).dst_port in (9999, 9997)


def test_wrong_pseudo_header_fails() -> None:
    """The checksum covers the addresses: another destination address fails it."""
    with pytest.raises(BadChecksum):
        UdpRepr.parse(udp_part(UDP_DATAGRAM), KERNEL_IP, IPv4Address("198.18.0.3"))


def test_destination_port_zero_refused() -> None:
    """Port 0 is not a destination: Malformed("bad_port"), even with a valid checksum."""
    datagram = bytearray(udp_part(UDP_DATAGRAM))
    datagram[2:4] = b"\x00\x00"
    with pytest.raises(Malformed) as info:
        UdpRepr.parse(refill_checksum(datagram), KERNEL_IP, PEER_IP)
    assert info.value.reason == "bad_port"


def test_scapy_reads_emitted_datagram() -> None:
    """An independent parser (scapy) reads our datagram in our IPv4 header and agrees on both checksums."""
    scapy_all = pytest.importorskip("scapy.all")
    udp = UdpRepr(5353, 53, b"\x12\x34 query")
    ip = Ipv4Repr(KERNEL_IP, PEER_IP, IPPROTO_UDP, udp.buffer_len, ident=7)
    data = ip.to_bytes(udp.to_bytes(ip.src, ip.dst))
    pkt = scapy_all.IP(data)
    assert (pkt[scapy_all.UDP].sport, pkt[scapy_all.UDP].dport, pkt[scapy_all.UDP].len) == (5353, 53, 16)
    rebuilt = scapy_all.IP(data)
    del rebuilt.chksum
    del rebuilt[scapy_all.UDP].chksum
    assert bytes(rebuilt) == data
