"""Tier 1 for IPv6: the fixed header, the extension-header walk, ICMPv6 and ND options, UDP over
IPv6, on frames the kernel sent (``vectors_ipv6.py``); byte-exact emit into a 0xa5-filled buffer;
the bad cases; and hypothesis fuzzing (every parser returns or raises WireError)."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv6Address

import pytest
import vectors_ipv6 as v
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_yastack.stack.wire import BadChecksum, Malformed, Truncated, WireError, WireReason
from trio_yastack.stack.wire.icmpv6 import (
    ICMP6_ECHO_REPLY,
    ICMP6_ECHO_REQUEST,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    Icmpv6Repr,
    parse_icmpv6,
    parse_nd_options,
)
from trio_yastack.stack.wire.ipv6 import (
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    Ipv6FragmentRepr,
    Ipv6Repr,
    eui64_interface_id,
    link_local_from_mac,
    multicast_mac,
    parse_ipv6_header,
    pseudo_header_sum6,
    solicited_node,
    walk_extension_headers,
)
from trio_yastack.stack.wire.udp import UDP_HEADER, parse_udp6_header

ETH = 14
A, B = int(v.HOST_A), int(v.HOST_B)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def oracle_sum(data: bytes) -> int:
    """RFC 1071 by the book, sharing no code with the stack's checksum: the folded 16-bit sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def oracle_pseudo6(src: int, dst: int, proto: int, length: int) -> bytes:
    return src.to_bytes(16, "big") + dst.to_bytes(16, "big") + struct.pack("!IxxxB", length, proto)


# -- the fixed header ----------------------------------------------------------------------------


def test_fixed_header_of_a_captured_echo_request() -> None:
    tclass, flow, payload_len, nxt, hop_limit, src, dst = parse_ipv6_header(v.ECHO_REQUEST, ETH)
    assert (tclass, flow, payload_len, nxt, hop_limit) == (0, 0x9C51F, 64, IPPROTO_ICMPV6, 64)
    assert (src, dst) == (A, B)
    assert Ipv6Repr.parse(v.ECHO_REQUEST, ETH) == Ipv6Repr(v.HOST_A, v.HOST_B, 58, 64, 64, 0, 0x9C51F)


@pytest.mark.parametrize("frame", [v.NEIGHBOR_SOLICIT, v.NEIGHBOR_ADVERT, v.ECHO_REQUEST, v.UDP_DATAGRAM])
def test_header_emit_is_byte_exact(frame: bytes) -> None:
    header = Ipv6Repr.parse(frame, ETH)
    buf = bytearray(b"\xa5" * 44)
    assert header.emit_into(buf, 2) == 42
    assert buf[2:42] == frame[ETH : ETH + 40] and buf[:2] == b"\xa5\xa5" and buf[42:] == b"\xa5\xa5"
    assert header.to_bytes(frame[ETH + 40 :]) == frame[ETH:]


@pytest.mark.parametrize(
    ("mutate", "error", "reason"),
    [
        (lambda f: f[: ETH + 39], Truncated, WireReason.TOO_SHORT),
        (lambda f: f[:ETH] + b"\x40" + f[ETH + 1 :], Malformed, WireReason.BAD_VERSION),
        (lambda f: f[:-1], Truncated, WireReason.BAD_LENGTH),  # payload length beyond the bytes present
    ],
)
def test_bad_fixed_headers(mutate, error, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as caught:
        parse_ipv6_header(mutate(v.ECHO_REQUEST), ETH)
    assert caught.value.reason == reason


def test_link_padding_after_the_payload_is_ignored() -> None:
    assert parse_ipv6_header(v.ECHO_REQUEST + b"\0" * 6, ETH)[2] == 64


# -- extension headers ---------------------------------------------------------------------------


def ext(next_header: int, body: bytes) -> bytes:
    """An extension header (hop-by-hop, routing, destination options): ``body`` after the two
    first bytes, padded to a multiple of 8 with PadN/Pad1 options."""
    total = 2 + len(body)
    pad = -total % 8
    padding = b"" if pad == 0 else (b"\x00" if pad == 1 else bytes((1, pad - 2)) + b"\0" * (pad - 2))
    raw = body + padding
    return bytes((next_header, (2 + len(raw)) // 8 - 1)) + raw


def test_walk_of_a_plain_packet_is_the_header_itself() -> None:
    assert walk_extension_headers(v.ECHO_REQUEST, ETH + 40, len(v.ECHO_REQUEST), IPPROTO_ICMPV6) == (
        IPPROTO_ICMPV6, ETH + 40, -1, 0, 0,
    )  # fmt: skip


def test_walk_skips_hop_by_hop_destination_options_and_a_spent_routing_header() -> None:
    upper = b"\x80\x00\x00\x00\x00\x01\x00\x01"
    routing = bytes((IPPROTO_DSTOPTS, 0, 4, 0)) + b"\0" * 4  # type 4 (SRH-like), no segments left
    chain = ext(IPPROTO_ROUTING, b"\x05\x02\x00\x00") + routing + ext(IPPROTO_ICMPV6, b"") + upper
    proto, at, frag_at, _, _ = walk_extension_headers(chain, 0, len(chain), IPPROTO_HOPOPTS)
    assert (proto, at, frag_at) == (IPPROTO_ICMPV6, 24, -1)


@pytest.mark.parametrize(
    ("chain", "first", "reason"),
    [
        # hop-by-hop after another header (RFC 8200 4.3)
        (ext(IPPROTO_HOPOPTS, b"") + ext(IPPROTO_ICMPV6, b""), IPPROTO_DSTOPTS, WireReason.BAD_FORMAT),
        # routing type 0 (RFC 5095), even with no segments left
        (bytes((IPPROTO_ICMPV6, 0, 0, 0)) + b"\0" * 4, IPPROTO_ROUTING, WireReason.BAD_ROUTING_HEADER),
        # segments left: we do not route
        (bytes((IPPROTO_ICMPV6, 0, 4, 1)) + b"\0" * 4, IPPROTO_ROUTING, WireReason.BAD_ROUTING_HEADER),
        # an option whose type's high bits say "discard" (0x80: discard and send a parameter problem)
        (ext(IPPROTO_ICMPV6, b"\x80\x00"), IPPROTO_DSTOPTS, WireReason.BAD_OPTION),
        # an option overrunning its header
        (bytes((IPPROTO_ICMPV6, 0, 1, 9)) + b"\0" * 4, IPPROTO_DSTOPTS, WireReason.BAD_OPTION),
        # a header longer than the packet
        (bytes((IPPROTO_ICMPV6, 1)) + b"\x01\x04" + b"\0" * 4, IPPROTO_DSTOPTS, WireReason.BAD_LENGTH),
        (b"\x3a\x00\x00", IPPROTO_FRAGMENT, WireReason.TOO_SHORT),
    ],
)
def test_walk_refuses(chain: bytes, first: int, reason: str) -> None:
    with pytest.raises(WireError) as caught:
        walk_extension_headers(chain, 0, len(chain), first)
    assert caught.value.reason == reason


def test_walk_is_bounded() -> None:
    chain = ext(IPPROTO_DSTOPTS, b"") * 9 + ext(IPPROTO_ICMPV6, b"")
    with pytest.raises(Malformed) as caught:
        walk_extension_headers(chain, 0, len(chain), IPPROTO_DSTOPTS, max_headers=8)
    assert caught.value.reason == WireReason.TOO_MANY_HEADERS
    assert walk_extension_headers(chain, 0, len(chain), IPPROTO_DSTOPTS, max_headers=10)[:2] == (58, 80)


def test_walk_stops_at_a_fragment_and_reads_it() -> None:
    proto, at, frag_at, frag_offset, ident_more = walk_extension_headers(
        v.FRAGMENT_1, ETH + 40, len(v.FRAGMENT_1), IPPROTO_FRAGMENT
    )
    assert (proto, at, frag_at, frag_offset, ident_more) == (58, ETH + 48, ETH + 40, 0, (0x466C9258 << 1) | 1)
    proto, at, frag_at, frag_offset, ident_more = walk_extension_headers(
        v.FRAGMENT_2, ETH + 40, len(v.FRAGMENT_2), IPPROTO_FRAGMENT
    )
    assert (frag_offset, ident_more) == (1448, 0x466C9258 << 1)


def test_an_atomic_fragment_is_walked_through() -> None:
    """RFC 6946: offset 0 without M is no fragment at all."""
    chain = Ipv6FragmentRepr(IPPROTO_ICMPV6, 0, False, 7).to_bytes() + b"\x80" * 8
    assert walk_extension_headers(chain, 0, len(chain), IPPROTO_FRAGMENT)[:3] == (58, 8, -1)


def test_fragment_header_repr_round_trips_the_capture() -> None:
    header = Ipv6FragmentRepr.parse(v.FRAGMENT_2, ETH + 40)
    assert header == Ipv6FragmentRepr(58, 1448, False, 0x466C9258)
    buf = bytearray(b"\xa5" * 8)
    header.emit_into(buf)
    assert buf == v.FRAGMENT_2[ETH + 40 : ETH + 48]
    with pytest.raises(ValueError):
        Ipv6FragmentRepr(58, 3, False, 0).emit_into(bytearray(8))


# -- checksums and ICMPv6 ------------------------------------------------------------------------


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1), st.integers(0, 255), st.integers(0, 2**20))
def test_pseudo_header_sum_agrees_with_the_oracle(src: int, dst: int, proto: int, length: int) -> None:
    def fold(x: int) -> int:
        while x >> 16:
            x = (x & 0xFFFF) + (x >> 16)
        return x

    assert fold(pseudo_header_sum6(src, dst, proto, length)) == oracle_sum(
        oracle_pseudo6(src, dst, proto, length)
    )


@pytest.mark.parametrize(
    ("frame", "src", "dst", "icmp_type"),
    [
        (v.NEIGHBOR_SOLICIT, A, int(IPv6Address("ff02::1:ff00:2")), ND_NEIGHBOR_SOLICIT),
        (v.NEIGHBOR_ADVERT, B, A, ND_NEIGHBOR_ADVERT),
        (v.ECHO_REQUEST, A, B, ICMP6_ECHO_REQUEST),
        (v.ECHO_REPLY, B, A, ICMP6_ECHO_REPLY),
    ],
)
def test_captured_icmpv6_checksums_verify(frame: bytes, src: int, dst: int, icmp_type: int) -> None:
    assert parse_ipv6_header(frame, ETH)[5:] == (src, dst)
    body = frame[ETH + 40 :]
    assert oracle_sum(oracle_pseudo6(src, dst, 58, len(body)) + body) == 0xFFFF  # the oracle agrees first
    assert parse_icmpv6(frame, ETH + 40, len(frame), src, dst)[0] == icmp_type
    broken = bytearray(frame)
    broken[-1] ^= 1
    with pytest.raises(BadChecksum):
        parse_icmpv6(bytes(broken), ETH + 40, len(frame), src, dst)
    parse_icmpv6(bytes(broken), ETH + 40, len(frame), src, dst, verify_checksum=False)


def test_neighbor_messages_construct_byte_exact() -> None:
    ns = Icmpv6Repr.neighbor_solicit(v.HOST_B, v.HOST_A_MAC)
    dst = IPv6Address("ff02::1:ff00:2")
    assert ns.to_bytes(v.HOST_A, dst) == v.NEIGHBOR_SOLICIT[ETH + 40 :]
    na = Icmpv6Repr.neighbor_advert(v.HOST_B, v.HOST_B_MAC, solicited=True, override=True)
    buf = bytearray(b"\xa5" * (na.buffer_len + 2))
    assert na.emit_into(buf, v.HOST_B, v.HOST_A, 1) == na.buffer_len + 1
    assert buf[1:-1] == v.NEIGHBOR_ADVERT[ETH + 40 :] and buf[0] == buf[-1] == 0xA5
    echo = Icmpv6Repr.parse(v.ECHO_REQUEST, v.HOST_A, v.HOST_B, ETH + 40)
    assert (echo.type, echo.ident, echo.seq, len(echo.data)) == (128, 0x539A, 1, 56)
    assert echo.to_bytes(v.HOST_A, v.HOST_B) == v.ECHO_REQUEST[ETH + 40 :]
    reply = Icmpv6Repr.echo_reply(echo.ident, echo.seq, echo.data)
    assert reply.to_bytes(v.HOST_B, v.HOST_A) == v.ECHO_REPLY[ETH + 40 :]


def test_nd_options_of_the_captures() -> None:
    assert parse_nd_options(v.NEIGHBOR_SOLICIT, ETH + 64, len(v.NEIGHBOR_SOLICIT)).source_mac == v.HOST_A_MAC
    assert parse_nd_options(v.NEIGHBOR_ADVERT, ETH + 64, len(v.NEIGHBOR_ADVERT)).target_mac == v.HOST_B_MAC


def test_nd_options_prefix_and_mtu() -> None:
    prefix = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + IPv6Address("2001:2::").packed
    mtu = struct.pack("!BBHI", 5, 1, 0, 1400)
    options = parse_nd_options(prefix + mtu, 0, 40)
    assert options.mtu == 1400
    (info,) = options.prefixes
    assert (info.prefix, info.prefix_len, info.on_link, info.autonomous) == (
        int(IPv6Address("2001:2::")),
        64,
        1,
        1,
    )
    assert (info.valid_lifetime, info.preferred_lifetime) == (86400, 14400)


@pytest.mark.parametrize(
    "options",
    [
        b"\x01\x00" + b"\0" * 6,
        b"\x01\x02" + b"\0" * 6,
        b"\x01\x02" + b"\0" * 14,
        b"\x03\x01" + b"\0" * 6,
        b"\x01",
    ],
)
def test_bad_nd_options(options: bytes) -> None:
    with pytest.raises(Malformed):
        parse_nd_options(options, 0, len(options))


def test_nd_options_are_bounded() -> None:
    many = b"\x0e\x01" + b"\0" * 6
    parse_nd_options(many * 32, 0, 8 * 32)
    with pytest.raises(Malformed):
        parse_nd_options(many * 33, 0, 8 * 33)


# -- UDP over IPv6 -------------------------------------------------------------------------------


def test_udp_over_ipv6_of_the_capture() -> None:
    start = ETH + 40
    sport, dport, end = parse_udp6_header(v.UDP_DATAGRAM, start, len(v.UDP_DATAGRAM), A, B)
    assert (sport, dport, v.UDP_DATAGRAM[start + 8 : end]) == (40000, 9999, b"trio_yastack wire vector\n")
    with pytest.raises(BadChecksum):
        parse_udp6_header(v.UDP_DATAGRAM, start, len(v.UDP_DATAGRAM), B, A + 1)


def test_udp_over_ipv6_without_a_checksum_is_refused() -> None:
    """RFC 8200 8.1: unlike IPv4, a zero checksum is not "none"."""
    zeroed = bytearray(v.UDP_DATAGRAM)
    UDP_HEADER.pack_into(zeroed, ETH + 40, 40000, 9999, 33, 0)
    with pytest.raises(BadChecksum):
        parse_udp6_header(bytes(zeroed), ETH + 40, len(zeroed), A, B, verify_checksum=False)


# -- addresses a host derives --------------------------------------------------------------------


def test_eui64_link_local_solicited_node_and_multicast_mac() -> None:
    """RFC 4291 appendix A's example MAC, and the kernel's own choice for 02:18:00:00:00:01."""
    assert eui64_interface_id(bytes.fromhex("34567890abcd")) == 0x365678FFFE90ABCD
    assert link_local_from_mac(v.HOST_A_MAC) == int(IPv6Address("fe80::18:ff:fe00:1"))
    assert solicited_node(B) == int(IPv6Address("ff02::1:ff00:2"))
    assert multicast_mac(solicited_node(B)) == v.NEIGHBOR_SOLICIT[:6]


# -- fuzzing -------------------------------------------------------------------------------------

SEEDS = [v.NEIGHBOR_SOLICIT, v.NEIGHBOR_ADVERT, v.ECHO_REQUEST, v.FRAGMENT_2, v.UDP_DATAGRAM]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame[: draw(st.integers(0, len(frame)))])


@FUZZ
@given(st.one_of(mutated(), st.binary(max_size=200)))
def test_parsers_return_or_raise_wire_error(frame: bytes) -> None:
    for call in (
        lambda: parse_ipv6_header(frame, ETH),
        lambda: walk_extension_headers(
            frame, ETH + 40, len(frame), frame[ETH + 6] if len(frame) > ETH + 6 else 0
        ),
        lambda: walk_extension_headers(frame, 0, len(frame), frame[0] if frame else 0),
        lambda: parse_icmpv6(frame, ETH + 40, len(frame), A, B),
        lambda: parse_nd_options(frame, ETH + 64, len(frame)),
        lambda: parse_udp6_header(frame, ETH + 40, len(frame), A, B),
    ):
        with contextlib.suppress(WireError):
            call()


@FUZZ
@given(st.lists(st.sampled_from([0, 43, 44, 60, 58, 59, 6, 17, 255]), max_size=12), st.binary(max_size=64))
def test_fuzzed_extension_chains(kinds: list[int], tail: bytes) -> None:
    """Chains of random extension headers (each well- or ill-formed) never escape WireError."""
    chain = b""
    for i, kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else 58
        if kind == IPPROTO_FRAGMENT:
            chain += Ipv6FragmentRepr(nxt, (i * 8) & 0xFFF8, bool(i & 1), i).to_bytes()
        elif kind in (0, 43, 60):
            chain += bytes((nxt, 0)) + tail[:6].ljust(6, b"\0")
    chain += tail
    with contextlib.suppress(WireError):
        walk_extension_headers(chain, 0, len(chain), kinds[0] if kinds else 58)
