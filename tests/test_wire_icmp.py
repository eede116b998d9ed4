"""ICMPv4: the kernel's echo request/reply and port unreachable, byte-exact emit, bad checksums."""

from __future__ import annotations

import pytest
from vectors import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_PORT_UNREACHABLE,
    KERNEL_IP,
    PEER_IP,
    UDP_TO_CLOSED_PORT,
    rfc1071_sum,
)

from trio_yastack.stack.wire import (
    IPPROTO_ICMP,
    IPPROTO_UDP,
    BadChecksum,
    EthernetRepr,
    IcmpRepr,
    Ipv4Repr,
    Truncated,
    UdpRepr,
    WireError,
)
from trio_yastack.stack.wire.icmp import (
    ICMP_DEST_UNREACH,
    ICMP_ERROR_TYPES,
    ICMP_TIME_EXCEEDED,
    ICMP_UNREACH_FRAG_NEEDED,
    ICMP_UNREACH_PORT,
    parse_icmp,
)

TYPE_ECHO_REQUEST, TYPE_ECHO_REPLY = 8, 0  # (the vectors module owns the ICMP_ECHO_* names here)

ECHO_DATA = ICMP_ECHO_REQUEST[42:]  # 16-byte timeval + the "yastack" pattern
ALL_ICMP = [ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMP_PORT_UNREACHABLE]
IDS = ["echo", "echo-reply", "unreach"]


# --- deconstruct ---------------------------------------------------------------------------


def test_parse_echo_request() -> None:
    """``ping -c 1``'s request: type 8 code 0, id 0x0e32 seq 1 in the rest-of-header word."""
    assert parse_icmp(ICMP_ECHO_REQUEST, 34, len(ICMP_ECHO_REQUEST)) == (TYPE_ECHO_REQUEST, 0, 0x0E320001)
    icmp = IcmpRepr.parse(ICMP_ECHO_REQUEST, 34)
    assert (icmp.type, icmp.code, icmp.ident, icmp.seq) == (8, 0, 0x0E32, 1)
    assert len(icmp.data) == 56 and icmp.data.endswith(b"yastack")
    assert not icmp.is_error
    assert icmp.buffer_len == 64


def test_parse_echo_reply_mirrors_request() -> None:
    """The reply carries the same identifier, sequence number and data."""
    request = IcmpRepr.parse(ICMP_ECHO_REQUEST, 34)
    reply = IcmpRepr.parse(ICMP_ECHO_REPLY, 34)
    assert reply == IcmpRepr.echo_reply(request.ident, request.seq, request.data)
    assert reply.type == TYPE_ECHO_REPLY


def test_parse_port_unreachable_quotes_the_datagram() -> None:
    """Type 3 code 3; its data is the whole offending datagram, which itself parses as IP + UDP."""
    icmp = IcmpRepr.parse(ICMP_PORT_UNREACHABLE, 34)
    assert (icmp.type, icmp.code, icmp.rest) == (ICMP_DEST_UNREACH, ICMP_UNREACH_PORT, 0)
    assert icmp.is_error and icmp.type in ICMP_ERROR_TYPES
    assert icmp.data == UDP_TO_CLOSED_PORT[14:]
    inner = Ipv4Repr.parse(icmp.data)
    assert (inner.src, inner.dst, inner.protocol) == (KERNEL_IP, PEER_IP, IPPROTO_UDP)
    udp = UdpRepr.parse(icmp.data, inner.src, inner.dst, offset=inner.header_len)
    assert (udp.src_port, udp.dst_port, udp.payload) == (40000, 9, b"nobody listens here\n")


def test_end_limits_the_message() -> None:
    """``end`` (the IP payload's end) bounds the message: link padding after it is not data."""
    padded = ICMP_ECHO_REQUEST + bytes(6)
    assert IcmpRepr.parse(padded, 34, len(ICMP_ECHO_REQUEST)) == IcmpRepr.parse(ICMP_ECHO_REQUEST, 34)


# --- construct -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "icmp"),
    [
        (ICMP_ECHO_REQUEST, IcmpRepr.echo_request(0x0E32, 1, ECHO_DATA)),
        (ICMP_ECHO_REPLY, IcmpRepr.echo_reply(0x0E32, 1, ECHO_DATA)),
        (ICMP_PORT_UNREACHABLE, IcmpRepr.dest_unreachable(ICMP_UNREACH_PORT, UDP_TO_CLOSED_PORT[14:])),
    ],
    ids=IDS,
)
def test_emit_into_prefilled_buffer_matches_capture(frame: bytes, icmp: IcmpRepr) -> None:
    """Messages built with the constructors emit Linux's bytes, checksum included, and nothing more."""
    message = frame[34:]
    buf = bytearray(b"\xa5" * (len(message) + 8))
    assert icmp.emit_into(buf, 4) == 4 + len(message)
    assert buf[4 : 4 + len(message)] == message
    assert buf[:4] == b"\xa5" * 4 and buf[4 + len(message) :] == b"\xa5" * 4
    assert rfc1071_sum(message) == 0xFFFF  # the captured checksum verifies independently


def test_build_whole_port_unreachable_frame() -> None:
    """Ethernet + IPv4 (TOS 0xc0, ident 0xb179, no DF) + ICMP, built in one buffer, equal the capture."""
    icmp = IcmpRepr.dest_unreachable(ICMP_UNREACH_PORT, UDP_TO_CLOSED_PORT[14:])
    ip = Ipv4Repr(PEER_IP, KERNEL_IP, IPPROTO_ICMP, payload_len=icmp.buffer_len, ident=0xB179, tos=0xC0)
    eth, _ = EthernetRepr.parse(ICMP_PORT_UNREACHABLE)
    buf = bytearray(b"\xa5" * len(ICMP_PORT_UNREACHABLE))
    end = icmp.emit_into(buf, ip.emit_into(buf, eth.emit_into(buf)))
    assert end == len(ICMP_PORT_UNREACHABLE)
    assert bytes(buf) == ICMP_PORT_UNREACHABLE


@pytest.mark.parametrize("frame", ALL_ICMP, ids=IDS)
def test_round_trip(frame: bytes) -> None:
    """parse then to_bytes reproduces each captured message."""
    assert IcmpRepr.parse(frame, 34).to_bytes() == frame[34:]


def test_fragmentation_needed_carries_the_mtu() -> None:
    """RFC 1191: the next-hop MTU sits in the low 16 bits of the rest-of-header word."""
    original = UDP_TO_CLOSED_PORT[14:62]
    icmp = IcmpRepr.dest_unreachable(ICMP_UNREACH_FRAG_NEEDED, original, next_hop_mtu=1400)
    data = icmp.to_bytes()
    assert data[4:8] == b"\x00\x00\x05\x78"
    parsed = IcmpRepr.parse(data)
    assert parsed.next_hop_mtu == 1400 and parsed.code == ICMP_UNREACH_FRAG_NEEDED and parsed.is_error


@pytest.mark.parametrize("data", [b"", b"x", b"odd", bytes(range(255))])
def test_odd_lengths_round_trip(data: bytes) -> None:
    """Odd-length data is checksummed as if zero-padded (RFC 1071), and verifies."""
    icmp = IcmpRepr(ICMP_TIME_EXCEEDED, 0, 0, data)
    raw = icmp.to_bytes()
    assert rfc1071_sum(raw) == 0xFFFF
    assert IcmpRepr.parse(raw) == icmp


# --- bad messages --------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(8))
def test_truncated_below_a_header(length: int) -> None:
    """Fewer than 8 bytes is Truncated("too_short"), checksum or not."""
    for verify in (True, False):
        with pytest.raises(Truncated) as info:
            IcmpRepr.parse(ICMP_ECHO_REQUEST[34 : 34 + length], verify_checksum=verify)
        assert info.value.reason == "too_short"


def test_truncated_data_fails_the_checksum() -> None:
    """A message cut anywhere past its header no longer verifies: BadChecksum at every length."""
    message = ICMP_ECHO_REQUEST[34:]
    for length in range(8, len(message)):
        with pytest.raises(BadChecksum):
            parse_icmp(message, 0, length)


@pytest.mark.parametrize("frame", ALL_ICMP, ids=IDS)
@pytest.mark.parametrize("position", [2, 3, 4, 8, -1])
def test_bad_checksum(frame: bytes, position: int) -> None:
    """A flipped bit in the checksum, header or data is BadChecksum("bad_checksum"); unverified it parses."""
    message = bytearray(frame[34:])
    message[position] ^= 0x40
    with pytest.raises(BadChecksum) as info:
        IcmpRepr.parse(bytes(message))
    assert info.value.reason == "bad_checksum"
    assert isinstance(info.value, WireError)
    assert IcmpRepr.parse(bytes(message), verify_checksum=False).type == frame[34]


def test_scapy_reads_emitted_echo_request() -> None:
    """An independent parser (scapy) reads our echo request and agrees with its checksum."""
    scapy_all = pytest.importorskip("scapy.all")
    data = IcmpRepr.echo_request(0xBEEF, 0xFFFF, b"trio_yastack").to_bytes()
    pkt = scapy_all.ICMP(data)
    assert (pkt.type, pkt.code, pkt.id, pkt.seq, bytes(pkt.payload)) == (
        8,
        0,
        0xBEEF,
        0xFFFF,
        b"trio_yastack",
    )
    rebuilt = scapy_all.ICMP(data)
    del rebuilt.chksum
    assert bytes(rebuilt) == data
