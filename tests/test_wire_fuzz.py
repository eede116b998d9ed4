"""Property tests: every parser returns or raises WireError on any bytes, and every Repr round-trips."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectors import (
    ARP_REQUEST,
    ICMP_ECHO_REQUEST,
    ICMP_PORT_UNREACHABLE,
    QINQ_ARP_REQUEST,
    TCP_DATA,
    TCP_SYN,
    TCP_SYN_ACK,
    UDP_DATAGRAM,
    UDP_FRAGMENT_0,
    VLAN_ARP_REQUEST,
)

from trio_yastack.stack import ArpDrop, EtherDrop, IcmpDrop, IpDrop, TcpDrop, UdpDrop
from trio_yastack.stack._drops import registered
from trio_yastack.stack.wire import (
    ArpRepr,
    EthernetRepr,
    IcmpRepr,
    Ipv4Repr,
    MacAddress,
    TcpOptions,
    TcpRepr,
    UdpRepr,
    VlanTag,
    WireError,
)
from trio_yastack.stack.wire.arp import parse_arp
from trio_yastack.stack.wire.ethernet import ETHERTYPE_QINQ, ETHERTYPE_VLAN, parse_ethernet_header
from trio_yastack.stack.wire.icmp import parse_icmp
from trio_yastack.stack.wire.ipv4 import parse_ipv4_header
from trio_yastack.stack.wire.tcp import parse_tcp_header, parse_tcp_options
from trio_yastack.stack.wire.udp import parse_udp_header

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=200, deadline=None)

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 2**32 - 1)
addresses = st.builds(IPv4Address, U32)
macs = st.binary(min_size=6, max_size=6).map(MacAddress)

SEEDS = [
    ARP_REQUEST,
    VLAN_ARP_REQUEST,
    QINQ_ARP_REQUEST,
    ICMP_ECHO_REQUEST,
    ICMP_PORT_UNREACHABLE,
    UDP_DATAGRAM,
    UDP_FRAGMENT_0[:200],
    TCP_SYN,
    TCP_SYN_ACK,
    TCP_DATA,
]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A real frame with a few bytes overwritten and maybe cut short: reaches deeper than random bytes."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame[: draw(st.integers(0, len(frame)))])


frames = st.one_of(st.binary(max_size=120), mutated_frames())


def returns_or_wire_error(parse: Callable[[], object], layer: type) -> object:
    """Call ``parse``; a WireError is fine if its reason is one the ``layer`` that calls this
    parser registered (it becomes that layer's drop counter); any other exception fails the test."""
    try:
        return parse()
    except WireError as exc:
        assert exc.reason in registered(layer), (exc.reason, layer.__name__)
        return exc


# --- parsers never raise anything but WireError -----------------------------------------------


@FUZZ
@given(frames)
def test_ethernet_parsers(frame: bytes) -> None:
    """parse_ethernet_header and EthernetRepr.parse return an offset inside the frame, or WireError."""
    result = returns_or_wire_error(lambda: parse_ethernet_header(frame), EtherDrop)
    if isinstance(result, tuple):
        assert 14 <= result[4] <= len(frame)
    result = returns_or_wire_error(lambda: EthernetRepr.parse(frame), EtherDrop)
    if isinstance(result, tuple):
        eth, offset = result
        assert offset == eth.header_len <= len(frame)


@FUZZ
@given(frames, st.sampled_from([0, 14, 18]))
def test_arp_parsers(frame: bytes, offset: int) -> None:
    """parse_arp and ArpRepr.parse, at any offset, return or raise WireError."""
    returns_or_wire_error(lambda: parse_arp(frame, offset), ArpDrop)
    result = returns_or_wire_error(lambda: ArpRepr.parse(frame, offset), ArpDrop)
    if isinstance(result, ArpRepr):
        assert result.to_bytes() == frame[offset : offset + 28]


@FUZZ
@given(frames, st.sampled_from([0, 14]), st.booleans())
def test_ipv4_parsers(frame: bytes, offset: int, verify: bool) -> None:
    """parse_ipv4_header and Ipv4Repr.parse return or raise WireError; a result fits the bytes."""
    returns_or_wire_error(lambda: parse_ipv4_header(frame, offset, verify), IpDrop)
    result = returns_or_wire_error(lambda: Ipv4Repr.parse(frame, offset, verify), IpDrop)
    if isinstance(result, Ipv4Repr):
        assert offset + result.total_len <= len(frame)
        assert 20 <= result.header_len <= 60


@FUZZ
@given(frames, st.sampled_from([0, 34]), st.booleans())
def test_icmp_parsers(frame: bytes, offset: int, verify: bool) -> None:
    """parse_icmp and IcmpRepr.parse return or raise WireError."""
    returns_or_wire_error(lambda: parse_icmp(frame, offset, max(offset, len(frame)), verify), IcmpDrop)
    result = returns_or_wire_error(lambda: IcmpRepr.parse(frame, offset, None, verify), IcmpDrop)
    if isinstance(result, IcmpRepr):
        assert result.buffer_len == len(frame) - offset


@FUZZ
@given(frames, addresses, addresses, st.sampled_from([0, 34]), st.booleans())
def test_udp_parsers(frame: bytes, src: IPv4Address, dst: IPv4Address, offset: int, verify: bool) -> None:
    """parse_udp_header and UdpRepr.parse return or raise WireError; the payload end is inside the bytes."""
    result = returns_or_wire_error(
        lambda: parse_udp_header(frame, offset, max(offset, len(frame)), int(src), int(dst), verify), UdpDrop
    )
    if isinstance(result, tuple):
        assert offset + 8 <= result[2] <= len(frame)
    returns_or_wire_error(lambda: UdpRepr.parse(frame, src, dst, offset, None, verify), UdpDrop)


@FUZZ
@given(frames, addresses, addresses, st.sampled_from([0, 34]), st.booleans())
def test_tcp_parsers(frame: bytes, src: IPv4Address, dst: IPv4Address, offset: int, verify: bool) -> None:
    """parse_tcp_header and TcpRepr.parse return or raise WireError; the header fits the bytes."""
    end = max(offset, len(frame))
    result = returns_or_wire_error(
        lambda: parse_tcp_header(frame, offset, end, int(src), int(dst), verify), TcpDrop
    )
    if isinstance(result, tuple):
        header_len = result[7]
        assert 20 <= header_len <= end - offset
        returns_or_wire_error(lambda: parse_tcp_options(frame, offset + 20, offset + header_len), TcpDrop)
    returns_or_wire_error(lambda: TcpRepr.parse(frame, src, dst, offset, None, verify), TcpDrop)


@FUZZ
@given(st.binary(max_size=40))
def test_tcp_options_parser(raw: bytes) -> None:
    """parse_tcp_options on any option bytes returns TcpOptions or raises WireError.

    What it returns is representable: re-emitted in Linux's layout, it parses back equal.
    """
    result = returns_or_wire_error(lambda: parse_tcp_options(raw, 0, len(raw)), TcpDrop)
    if isinstance(result, TcpOptions):
        assert len(result.sack_blocks) <= 4
        assert result.mss is None or 0 <= result.mss <= 0xFFFF
        assert options_of_bytes(result.to_bytes()) == result


def options_of_bytes(raw: bytes) -> TcpOptions:
    return parse_tcp_options(raw, 0, len(raw))


# --- generated representations round-trip -----------------------------------------------------

ethertypes = st.integers(0x0600, 0xFFFF).filter(lambda t: t not in (ETHERTYPE_VLAN, ETHERTYPE_QINQ))
vlans = st.none() | st.builds(VlanTag, vid=st.integers(0, 4095), pcp=st.integers(0, 7), dei=st.booleans())


@ROUND_TRIP
@given(st.builds(EthernetRepr, macs, macs, ethertypes, vlans), st.binary(max_size=16))
def test_ethernet_round_trip(eth: EthernetRepr, payload: bytes) -> None:
    """Any Ethernet II header, tagged or not, parses back from its bytes with the payload after it."""
    frame = eth.to_bytes(payload)
    assert EthernetRepr.parse(frame) == (eth, eth.header_len)
    assert frame[eth.header_len :] == payload


@ROUND_TRIP
@given(st.builds(ArpRepr, st.sampled_from([1, 2]), macs, addresses, macs, addresses))
def test_arp_round_trip(arp: ArpRepr) -> None:
    """Any request or reply parses back equal."""
    assert ArpRepr.parse(arp.to_bytes()) == arp


@st.composite
def ipv4_reprs(draw: st.DrawFn) -> Ipv4Repr:
    """Headers with any flags, fragment offsets that are multiples of 8, and 0-40 bytes of options."""
    options_len = draw(st.integers(0, 10)) * 4
    return Ipv4Repr(
        src=draw(addresses),
        dst=draw(addresses),
        protocol=draw(st.integers(0, 255)),
        payload_len=draw(st.integers(0, 300)),
        ttl=draw(st.integers(0, 255)),
        ident=draw(U16),
        dont_fragment=draw(st.booleans()),
        more_fragments=draw(st.booleans()),
        fragment_offset=draw(st.integers(0, 0x1FFF)) * 8,
        tos=draw(st.integers(0, 255)),
        options=draw(st.binary(min_size=options_len, max_size=options_len)),
    )


@ROUND_TRIP
@given(ipv4_reprs())
def test_ipv4_round_trip(ip: Ipv4Repr) -> None:
    """Any representable header, followed by its payload, parses back equal."""
    data = ip.to_bytes(bytes(ip.payload_len))
    assert len(data) == ip.total_len
    assert Ipv4Repr.parse(data) == ip


@ROUND_TRIP
@given(st.builds(IcmpRepr, st.integers(0, 255), st.integers(0, 255), U32, st.binary(max_size=64)))
def test_icmp_round_trip(icmp: IcmpRepr) -> None:
    """Any type, code, rest-of-header and data parse back equal (and the checksum verifies)."""
    assert IcmpRepr.parse(icmp.to_bytes()) == icmp


@ROUND_TRIP
@given(st.builds(UdpRepr, U16, st.integers(1, 0xFFFF), st.binary(max_size=64)), addresses, addresses)
def test_udp_round_trip(udp: UdpRepr, src: IPv4Address, dst: IPv4Address) -> None:
    """Any datagram (destination port 1-65535) parses back equal, and its checksum is never 0."""
    data = udp.to_bytes(src, dst)
    assert data[6:8] != b"\x00\x00"
    assert UdpRepr.parse(data, src, dst) == udp


sack_blocks = st.lists(st.tuples(U32, U32), min_size=1, max_size=4).map(tuple)
tcp_options = st.builds(
    TcpOptions,
    mss=st.none() | U16,
    window_scale=st.none() | st.integers(0, 255),
    sack_permitted=st.booleans(),
    sack_blocks=st.just(()) | sack_blocks,
    timestamps=st.none() | st.tuples(U32, U32),
).filter(lambda options: options.buffer_len <= 40)


@ROUND_TRIP
@given(tcp_options)
def test_tcp_options_round_trip(options: TcpOptions) -> None:
    """Any combination that fits 40 bytes (incl. 1-4 SACK blocks) emits buffer_len bytes and parses back."""
    raw = options.to_bytes()
    assert len(raw) == options.buffer_len and len(raw) % 4 == 0
    assert options_of_bytes(raw) == options


@ROUND_TRIP
@given(
    st.builds(
        TcpRepr,
        src_port=U16,
        dst_port=U16,
        seq=U32,
        ack=U32,
        flags=st.integers(0, 255),
        window=U16,
        options=tcp_options,
        payload=st.binary(max_size=64),
        urgent=U16,
    ),
    addresses,
    addresses,
)
def test_tcp_round_trip(tcp: TcpRepr, src: IPv4Address, dst: IPv4Address) -> None:
    """Any segment (ports, sequence numbers up to 2**32-1, flags, options, payload) parses back equal."""
    buf = bytearray(b"\xa5" * tcp.buffer_len)
    assert tcp.emit_into(buf, src, dst) == tcp.buffer_len
    assert TcpRepr.parse(bytes(buf), src, dst) == tcp
