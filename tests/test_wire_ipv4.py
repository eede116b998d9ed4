"""IPv4 headers: real kernel datagrams and fragments, byte-exact emit, and every refusal reason."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from vectors import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_PORT_UNREACHABLE,
    KERNEL_IP,
    PEER_IP,
    TCP_SYN,
    TCP_SYN_ACK,
    UDP_DATAGRAM,
    UDP_FRAGMENT_0,
    UDP_FRAGMENT_1,
    UDP_FRAGMENT_2,
    rfc1071_sum,
)

from trio_yastack.stack.wire import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    BadChecksum,
    Ipv4Repr,
    Malformed,
    Truncated,
    WireError,
)
from trio_yastack.stack.wire.ipv4 import IP_DF, IP_MF, parse_ipv4_header

ALL_IPV4 = [
    ICMP_ECHO_REQUEST,
    ICMP_ECHO_REPLY,
    ICMP_PORT_UNREACHABLE,
    TCP_SYN,
    TCP_SYN_ACK,
    UDP_DATAGRAM,
    UDP_FRAGMENT_0,
    UDP_FRAGMENT_1,
    UDP_FRAGMENT_2,
]
IDS = ["echo", "echo-reply", "unreach", "syn", "syn-ack", "udp", "frag0", "frag1", "frag2"]


def ip_part(frame: bytes) -> bytes:
    """The IP datagram in an untagged captured frame (no link padding in these captures)."""
    return frame[14:]


def with_header_bytes(datagram: bytes, offset: int, fmt: str, value: int, fix_checksum: bool = True) -> bytes:
    """``datagram`` with one header field overwritten and, by default, the header checksum redone."""
    buf = bytearray(datagram)
    struct.pack_into(fmt, buf, offset, value)
    if fix_checksum:
        header_len = max(20, min((buf[0] & 0x0F) * 4, len(buf)))
        buf[10:12] = b"\x00\x00"
        struct.pack_into("!H", buf, 10, ~rfc1071_sum(bytes(buf[:header_len])) & 0xFFFF)
    return bytes(buf)


# --- deconstruct ---------------------------------------------------------------------------


def test_parse_udp_datagram_header() -> None:
    """The fast parser's tuple for the captured UDP datagram: DF, ident, TTL 64, protocol 17."""
    header_len, tos, total_len, ident, frag, ttl, proto, src, dst = parse_ipv4_header(UDP_DATAGRAM, 14)
    assert (header_len, tos, total_len) == (20, 0, 53)
    assert ident == 0x5913
    assert frag == IP_DF
    assert (ttl, proto) == (64, IPPROTO_UDP)
    assert (src, dst) == (int(KERNEL_IP), int(PEER_IP))


def test_repr_of_tcp_syn_ack() -> None:
    """Ipv4Repr.parse of the SYN-ACK: ident 0 with DF, payload 40 bytes, no options."""
    ip = Ipv4Repr.parse(TCP_SYN_ACK, 14)
    assert ip == Ipv4Repr(
        src=PEER_IP, dst=KERNEL_IP, protocol=IPPROTO_TCP, payload_len=40, ttl=64, ident=0, dont_fragment=True
    )
    assert ip.header_len == ip.buffer_len == 20
    assert ip.total_len == 60


def test_repr_of_icmp_error_keeps_tos() -> None:
    """The kernel sends ICMP errors with TOS 0xc0 (precedence "internetwork control") and no DF."""
    ip = Ipv4Repr.parse(ICMP_PORT_UNREACHABLE, 14)
    assert ip.tos == 0xC0
    assert ip.protocol == IPPROTO_ICMP
    assert not ip.dont_fragment and not ip.more_fragments
    assert ip.payload_len == 56


def test_fragments_of_a_3000_byte_udp_datagram() -> None:
    """Three fragments share an ident; offsets are in bytes, MF is set on all but the last."""
    frags = [Ipv4Repr.parse(f, 14) for f in (UDP_FRAGMENT_0, UDP_FRAGMENT_1, UDP_FRAGMENT_2)]
    assert {f.ident for f in frags} == {0x5945}
    assert [f.fragment_offset for f in frags] == [0, 1480, 2960]
    assert [f.more_fragments for f in frags] == [True, True, False]
    assert [f.dont_fragment for f in frags] == [False, False, False]
    assert [f.payload_len for f in frags] == [1480, 1480, 48]
    assert sum(f.payload_len for f in frags) == 3008  # UDP header + 3000 bytes
    _, _, _, _, frag, _, _, _, _ = parse_ipv4_header(UDP_FRAGMENT_1, 14)
    assert frag == IP_MF | (1480 >> 3)


def test_link_padding_is_ignored() -> None:
    """Bytes beyond total length (Ethernet padding) are allowed and not counted as payload."""
    padded = UDP_DATAGRAM + bytes(7)
    assert Ipv4Repr.parse(padded, 14) == Ipv4Repr.parse(UDP_DATAGRAM, 14)
    assert parse_ipv4_header(padded, 14)[2] == 53


# --- construct -----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ALL_IPV4, ids=IDS)
def test_emit_into_prefilled_buffer_matches_capture(frame: bytes) -> None:
    """Re-emitting each parsed header (checksum included) gives Linux's bytes, and only those."""
    ip = Ipv4Repr.parse(frame, 14)
    buf = bytearray(b"\xa5" * 40)
    assert ip.emit_into(buf, 8) == 28
    assert buf[8:28] == frame[14:34]
    assert buf[:8] == b"\xa5" * 8 and buf[28:] == b"\xa5" * 12


def test_build_syn_header_from_scratch() -> None:
    """A header built from field values equals the captured SYN's, checksum 0xa35e included."""
    ip = Ipv4Repr(KERNEL_IP, PEER_IP, IPPROTO_TCP, payload_len=40, ident=0x0B36, dont_fragment=True)
    header = ip.to_bytes()
    assert header == TCP_SYN[14:34]
    assert header[10:12] == b"\xa3\x5e"
    assert rfc1071_sum(header) == 0xFFFF  # the independent oracle agrees


def test_build_fragment_from_scratch() -> None:
    """A middle fragment (MF, offset 1480) built from fields equals the kernel's."""
    ip = Ipv4Repr(
        KERNEL_IP,
        PEER_IP,
        IPPROTO_UDP,
        payload_len=1480,
        ident=0x5945,
        more_fragments=True,
        fragment_offset=1480,
    )
    assert ip.to_bytes(ip_part(UDP_FRAGMENT_1)[20:]) == ip_part(UDP_FRAGMENT_1)


def test_round_trip_with_options() -> None:
    """Options (here: Router Alert, RFC 2113) are carried raw and re-emitted exactly; IHL counts them."""
    ip = Ipv4Repr(
        IPv4Address("198.18.0.1"),
        IPv4Address("198.18.0.2"),
        protocol=2,
        payload_len=8,
        ttl=1,
        ident=0xFFFF,
        tos=0xB8,
        options=bytes.fromhex("94040000"),
    )
    data = ip.to_bytes(bytes(8))
    assert data[0] == 0x46
    assert rfc1071_sum(data[:24]) == 0xFFFF
    assert Ipv4Repr.parse(data) == ip
    assert parse_ipv4_header(data)[0] == 24


def test_round_trip_largest_fragment_offset() -> None:
    """The largest offset (8191 * 8 = 65528 bytes) and both flags survive a round trip."""
    ip = Ipv4Repr(
        KERNEL_IP,
        PEER_IP,
        IPPROTO_UDP,
        payload_len=0,
        fragment_offset=65528,
        dont_fragment=True,
        more_fragments=True,
    )
    data = ip.to_bytes()
    assert data[6:8] == b"\x7f\xff"
    assert Ipv4Repr.parse(data) == ip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"options": b"\x01\x01"}, "multiple of 4"),
        ({"options": b"\x01" * 44}, "at most 40"),
        ({"fragment_offset": 4}, "multiple of 8"),
        ({"fragment_offset": 65536}, "below 65536"),
        ({"fragment_offset": -8}, "below 65536"),
    ],
)
def test_emit_refuses_unrepresentable_headers(kwargs: dict[str, object], message: str) -> None:
    """Options that don't fit IHL and offsets that don't fit 13 bits are the caller's error (ValueError)."""
    ip = Ipv4Repr(KERNEL_IP, PEER_IP, IPPROTO_UDP, payload_len=0, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        ip.to_bytes()


# --- bad headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(20))
def test_truncated_below_a_header(length: int) -> None:
    """Fewer than 20 bytes is Truncated("too_short")."""
    for parse in (parse_ipv4_header, Ipv4Repr.parse):
        with pytest.raises(Truncated) as info:
            parse(TCP_SYN[: 14 + length], 14)
        assert info.value.reason == "too_short"


def test_truncated_at_every_length_inside_the_payload() -> None:
    """A datagram cut anywhere after its header is Truncated("bad_length"): total length promises more."""
    datagram = ip_part(TCP_SYN)
    for length in range(20, len(datagram)):
        with pytest.raises(Truncated) as info:
            Ipv4Repr.parse(datagram[:length])
        assert info.value.reason == "bad_length"


@pytest.mark.parametrize("version", [0, 5, 6, 15])
def test_bad_version(version: int) -> None:
    """Any version but 4 (checksum fixed, so the version is what is refused) is Malformed("bad_version")."""
    data = with_header_bytes(ip_part(UDP_DATAGRAM), 0, "!B", (version << 4) | 5)
    with pytest.raises(Malformed) as info:
        parse_ipv4_header(data)
    assert info.value.reason == "bad_version"


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ihl_too_small(ihl: int) -> None:
    """An IHL below 5 words is Malformed("bad_header_length")."""
    data = with_header_bytes(ip_part(UDP_DATAGRAM), 0, "!B", 0x40 | ihl)
    with pytest.raises(Malformed) as info:
        Ipv4Repr.parse(data)
    assert info.value.reason == "bad_header_length"


def test_ihl_beyond_the_bytes_present() -> None:
    """IHL 15 (60 bytes) on a 53-byte datagram is Malformed("bad_header_length")."""
    data = with_header_bytes(ip_part(UDP_DATAGRAM), 0, "!B", 0x4F, fix_checksum=False)
    with pytest.raises(Malformed) as info:
        Ipv4Repr.parse(data)
    assert info.value.reason == "bad_header_length"


def test_ihl_beyond_total_length() -> None:
    """IHL 6 with total length 20: the header claims more than the datagram, Malformed("bad_length")."""
    data = with_header_bytes(ip_part(UDP_DATAGRAM), 0, "!B", 0x46)
    data = with_header_bytes(data, 2, "!H", 20)
    with pytest.raises(Malformed) as info:
        Ipv4Repr.parse(data)
    assert info.value.reason == "bad_length"


@pytest.mark.parametrize("total_len", [0, 1, 19])
def test_total_length_below_header(total_len: int) -> None:
    """A total length smaller than the header is Malformed("bad_length")."""
    data = with_header_bytes(ip_part(UDP_DATAGRAM), 2, "!H", total_len)
    with pytest.raises(Malformed) as info:
        parse_ipv4_header(data)
    assert info.value.reason == "bad_length"


@pytest.mark.parametrize("total_len", [54, 1500, 0xFFFF])
def test_total_length_overflow(total_len: int) -> None:
    """A total length beyond the bytes present is Truncated("bad_length")."""
    data = with_header_bytes(ip_part(UDP_DATAGRAM), 2, "!H", total_len)
    with pytest.raises(Truncated) as info:
        parse_ipv4_header(data)
    assert info.value.reason == "bad_length"


def test_total_length_shorter_than_the_bytes_is_fine() -> None:
    """A smaller (but valid) total length just makes the rest padding; the payload shrinks."""
    data = with_header_bytes(ip_part(UDP_DATAGRAM), 2, "!H", 28)
    assert Ipv4Repr.parse(data).payload_len == 8


@pytest.mark.parametrize("frame", ALL_IPV4, ids=IDS)
def test_bad_header_checksum(frame: bytes) -> None:
    """One flipped checksum bit is BadChecksum("bad_checksum"); verify_checksum=False accepts it."""
    data = bytearray(ip_part(frame))
    data[11] ^= 0x01
    with pytest.raises(BadChecksum) as info:
        Ipv4Repr.parse(bytes(data))
    assert info.value.reason == "bad_checksum"
    assert isinstance(info.value, WireError)
    assert Ipv4Repr.parse(bytes(data), verify_checksum=False) == Ipv4Repr.parse(ip_part(frame))


def test_corrupted_field_fails_the_checksum() -> None:
    """A flipped TTL bit with the old checksum is caught."""
    data = with_header_bytes(ip_part(TCP_SYN), 8, "!B", 63, fix_checksum=False)
    with pytest.raises(BadChecksum):
        parse_ipv4_header(data)


@pytest.mark.parametrize("frame", ALL_IPV4, ids=IDS)
def test_captured_checksums_verify_independently(frame: bytes) -> None:
    """Every captured header checksum verifies with the slow RFC 1071 oracle (the vectors are sound)."""
    assert rfc1071_sum(frame[14:34]) == 0xFFFF


def test_scapy_reads_emitted_header() -> None:
    """An independent parser (scapy) reads the fields and checksum of a header we emitted."""
    scapy_all = pytest.importorskip("scapy.all")
    ip = Ipv4Repr(
        KERNEL_IP,
        PEER_IP,
        IPPROTO_UDP,
        payload_len=4,
        ttl=17,
        ident=0xBEEF,
        more_fragments=True,
        fragment_offset=2960,
        tos=0x10,
        options=bytes.fromhex("01010100"),
    )
    data = ip.to_bytes(b"abcd")
    pkt = scapy_all.IP(data)
    assert (pkt.version, pkt.ihl, pkt.tos, pkt.len, pkt.id) == (4, 6, 0x10, 28, 0xBEEF)
    assert (pkt.frag, int(pkt.flags), pkt.ttl, pkt.proto) == (370, 1, 17, 17)
    assert (pkt.src, pkt.dst) == ("198.18.0.1", "198.18.0.2")
    recomputed = scapy_all.IP(data)
    del recomputed.chksum  # scapy fills in its own checksum when it builds the header again
    assert bytes(recomputed) == data
