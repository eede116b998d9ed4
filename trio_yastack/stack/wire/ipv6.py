"""IPv6 headers (RFC 8200) and the extension headers a host must walk.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------+---------------+---------------------------------------+
    |Version| Traffic Class |              Flow Label               |  0
    +-------+---------------+-------+---------------+---------------+
    |         Payload Length        |  Next Header  |   Hop Limit   |  4
    +-------------------------------+---------------+---------------+
    |                    Source Address (128 bits)                  |  8
    |                 Destination Address (128 bits)                | 24
    +---------------------------------------------------------------+ 40

Extension headers (RFC 8200 4), each starting with ``next header`` and (but the fragment
header) ``hdr ext len`` in 8-octet units not counting the first 8::

    hop-by-hop (0) / destination options (60): next, len, options (TLV, RFC 8200 4.2)
    routing (43): next, len, routing type, segments left, type-specific data
    fragment (44): next, reserved, offset (13 bits) | res | M, identification (32 bits)

Addresses are 128-bit integers inside the stack (as IPv4's are 32-bit ones), ``IPv6Address``
in representations.  The walk is bounded (``max_headers``) and refuses what a host must not
act on: a hop-by-hop header anywhere but first, a routing header with segments left (this host
does not route; type 0 always, RFC 5095), options whose type says "discard" (RFC 8200 4.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from ._errors import Malformed, Truncated, WireReason

__all__ = [
    "ALL_NODES",
    "ALL_ROUTERS",
    "IPPROTO_DSTOPTS",
    "IPPROTO_FRAGMENT",
    "IPPROTO_HOPOPTS",
    "IPPROTO_ICMPV6",
    "IPPROTO_NONE",
    "IPPROTO_ROUTING",
    "IPV6_FRAGMENT_HEADER",
    "IPV6_FRAGMENT_LEN",
    "IPV6_HEADER",
    "IPV6_HEADER_LEN",
    "IPV6_MIN_MTU",
    "Ipv6FragmentRepr",
    "Ipv6Repr",
    "eui64_interface_id",
    "is_link_local",
    "link_local_from_mac",
    "multicast_mac",
    "parse_ipv6_header",
    "pseudo_header_sum6",
    "solicited_node",
    "walk_extension_headers",
]

IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPV6_HEADER_LEN = 40
IPV6_FRAGMENT_LEN = 8
IPV6_MIN_MTU = 1280  # RFC 8200 5: every link carries 1280-byte packets
#: version/class/flow, payload length, next header, hop limit, then each address as two 64-bit halves
IPV6_HEADER = struct.Struct("!IHBBQQQQ")
#: next header, reserved, offset | M, identification
IPV6_FRAGMENT_HEADER = struct.Struct("!BBHI")
_EXT_HEAD = struct.Struct("!BB")
_ROUTING_HEAD = struct.Struct("!BBBB")


def parse_ipv6_header(buf: bytes, offset: int = 0) -> tuple[int, int, int, int, int, int, int]:
    """Validate the fixed header at ``offset``; return its fields.

    Returns ``(traffic_class, flow_label, payload_len, next_header, hop_limit, src, dst)`` with
    addresses as 128-bit integers.  The payload length is checked against the bytes present
    (anything beyond it is link padding); a jumbogram's zero length (RFC 2675) is refused, since no
    link here carries one.  Raises :class:`Truncated` or :class:`Malformed`.
    """
    available = len(buf) - offset
    if available < IPV6_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{available} bytes is less than an IPv6 header")
    vtf, payload_len, next_header, hop_limit, s_hi, s_lo, d_hi, d_lo = IPV6_HEADER.unpack_from(buf, offset)
    if vtf >> 28 != 6:
        raise Malformed(WireReason.BAD_VERSION, f"version {vtf >> 28}")
    if payload_len > available - IPV6_HEADER_LEN:
        raise Truncated(WireReason.BAD_LENGTH, f"payload length {payload_len} with {available - 40} present")
    if payload_len == 0 and next_header == IPPROTO_HOPOPTS:
        raise Malformed(WireReason.BAD_LENGTH, "jumbogram (payload length 0)")
    return (
        (vtf >> 20) & 0xFF,
        vtf & 0xFFFFF,
        payload_len,
        next_header,
        hop_limit,
        (s_hi << 64) | s_lo,
        (d_hi << 64) | d_lo,
    )


def _walk_options(buf: bytes, start: int, end: int) -> None:
    """Check the TLV options of a hop-by-hop or destination options header (RFC 8200 4.2).

    Pad1 and PadN are skipped; an unknown option is skipped when its two high bits are 00, and
    otherwise the packet is discarded (this host sends no parameter problem for it).
    """
    i = start
    while i < end:
        opt_type = buf[i]
        if opt_type == 0:  # Pad1
            i += 1
            continue
        if i + 2 > end:
            raise Malformed(WireReason.BAD_OPTION, "option cut at the end of its header")
        opt_end = i + 2 + buf[i + 1]
        if opt_end > end:
            raise Malformed(WireReason.BAD_OPTION, f"option {opt_type} overruns its header")
        if opt_type != 1 and opt_type >> 6:
            raise Malformed(WireReason.BAD_OPTION, f"option {opt_type} asks unknown-option discard")
        i = opt_end


def walk_extension_headers(
    buf: bytes, offset: int, end: int, next_header: int, max_headers: int = 8, *, first: bool = True
) -> tuple[int, int, int, int, int]:
    """Walk the extension headers from ``buf[offset]`` (the first is ``next_header``) up to ``end``.

    Returns ``(protocol, start, fragment_at, fragment_offset, ident_more)``: the upper-layer
    protocol and where its header starts; for a fragment header that is not atomic (RFC 6946),
    the walk stops after it: ``fragment_at`` is where the fragment header was (else -1),
    ``fragment_offset`` the fragment's offset in bytes, ``ident_more`` its identification shifted
    left by one with the M flag as the low bit.  ``first`` says whether a hop-by-hop header may
    come first (not in a reassembled payload).  At most ``max_headers`` headers are walked.
    Raises :class:`Truncated` or :class:`Malformed`.
    """
    count = 0
    proto = next_header
    i = offset
    while True:
        if proto in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING):
            if proto == IPPROTO_HOPOPTS and (count or not first):
                raise Malformed(WireReason.BAD_FORMAT, "hop-by-hop options not first (RFC 8200 4.3)")
            if i + 8 > end:
                raise Truncated(WireReason.TOO_SHORT, "extension header cut")
            nxt, length = _EXT_HEAD.unpack_from(buf, i)
            hdr_end = i + 8 + (length << 3)
            if hdr_end > end:
                raise Truncated(WireReason.BAD_LENGTH, f"extension header of {hdr_end - i} bytes cut")
            if proto == IPPROTO_ROUTING:
                routing_type, segments_left = buf[i + 2], buf[i + 3]
                if routing_type == 0 or segments_left:
                    raise Malformed(
                        WireReason.BAD_ROUTING_HEADER, f"routing type {routing_type}, {segments_left} left"
                    )
            else:
                _walk_options(buf, i + 2, hdr_end)
        elif proto == IPPROTO_FRAGMENT:
            if i + IPV6_FRAGMENT_LEN > end:
                raise Truncated(WireReason.TOO_SHORT, "fragment header cut")
            nxt, _res, off_m, ident = IPV6_FRAGMENT_HEADER.unpack_from(buf, i)
            hdr_end = i + IPV6_FRAGMENT_LEN
            if off_m & 0xFFF9:  # an offset or M: a real fragment (the rest waits for reassembly)
                return nxt, hdr_end, i, off_m & 0xFFF8, (ident << 1) | (off_m & 1)
        else:
            return proto, i, -1, 0, 0
        count += 1
        if count > max_headers:
            raise Malformed(WireReason.TOO_MANY_HEADERS, f"more than {max_headers} extension headers")
        proto, i = nxt, hdr_end


def pseudo_header_sum6(src: int, dst: int, protocol: int, length: int) -> int:
    """The partial sum of the IPv6 pseudo-header (RFC 8200 8.1), addresses as 128-bit integers.

    A 128-bit number is congruent modulo 0xFFFF to the ones'-complement sum of its 16-bit words
    (2**16 is 1 modulo 0xFFFF), which is one ``%`` instead of eight shifts; a non-zero number
    whose remainder is 0 sums to 0xFFFF (ones' complement has two zeros, and only 0 sums to 0).
    """
    s = src % 0xFFFF or (0xFFFF if src else 0)
    d = dst % 0xFFFF or (0xFFFF if dst else 0)
    return s + d + (length >> 16) + (length & 0xFFFF) + protocol


@dataclass(frozen=True, slots=True)
class Ipv6Repr:
    """The fixed IPv6 header.  ``payload_len`` counts everything after it (extension headers too)."""

    src: IPv6Address
    dst: IPv6Address
    next_header: int
    payload_len: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    @property
    def buffer_len(self) -> int:
        return IPV6_HEADER_LEN

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0) -> Ipv6Repr:
        tclass, flow, payload_len, nxt, hop_limit, src, dst = parse_ipv6_header(buf, offset)
        return cls(IPv6Address(src), IPv6Address(dst), nxt, payload_len, hop_limit, tclass, flow)

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the header at ``offset``; return the payload's offset."""
        if not 0 <= self.payload_len <= 0xFFFF:
            raise ValueError(f"payload length {self.payload_len} does not fit 16 bits")
        if not 0 <= self.flow_label <= 0xFFFFF or not 0 <= self.traffic_class <= 0xFF:
            raise ValueError("flow label is 20 bits, traffic class 8")
        src, dst = int(self.src), int(self.dst)
        IPV6_HEADER.pack_into(
            buf, offset, (6 << 28) | (self.traffic_class << 20) | self.flow_label, self.payload_len,
            self.next_header, self.hop_limit, src >> 64, src & (2**64 - 1), dst >> 64, dst & (2**64 - 1),
        )  # fmt: skip
        return offset + IPV6_HEADER_LEN

    def to_bytes(self, payload: bytes = b"") -> bytes:
        buf = bytearray(IPV6_HEADER_LEN + len(payload))
        start = self.emit_into(buf)
        buf[start:] = payload
        return bytes(buf)


@dataclass(frozen=True, slots=True)
class Ipv6FragmentRepr:
    """The fragment header (RFC 8200 4.5); ``offset`` in bytes, a multiple of 8."""

    next_header: int
    offset: int
    more: bool
    ident: int

    @property
    def buffer_len(self) -> int:
        return IPV6_FRAGMENT_LEN

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0) -> Ipv6FragmentRepr:
        if len(buf) - offset < IPV6_FRAGMENT_LEN:
            raise Truncated(WireReason.TOO_SHORT, "fragment header cut")
        nxt, _res, off_m, ident = IPV6_FRAGMENT_HEADER.unpack_from(buf, offset)
        return cls(nxt, off_m & 0xFFF8, bool(off_m & 1), ident)

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        if self.offset % 8 or not 0 <= self.offset <= 0xFFF8:
            raise ValueError("fragment offset must be a multiple of 8 below 65536")
        IPV6_FRAGMENT_HEADER.pack_into(buf, offset, self.next_header, 0, self.offset | self.more, self.ident)
        return offset + IPV6_FRAGMENT_LEN

    def to_bytes(self) -> bytes:
        buf = bytearray(IPV6_FRAGMENT_LEN)
        self.emit_into(buf)
        return bytes(buf)


# -- addresses a host derives (RFC 4291 2.5.1, 2.7.1; RFC 2464 7) -------------------------------
LINK_LOCAL_PREFIX = 0xFE80 << 112
ALL_NODES = 0xFF02 << 112 | 1  # ff02::1
ALL_ROUTERS = 0xFF02 << 112 | 2  # ff02::2
_SOLICITED_NODE = 0xFF02_0000_0000_0000_0000_0001_FF00_0000


def eui64_interface_id(mac: bytes) -> int:
    """The modified EUI-64 interface identifier of an Ethernet MAC (RFC 4291 appendix A)."""
    return int.from_bytes(bytes((mac[0] ^ 0x02,)) + bytes(mac[1:3]) + b"\xff\xfe" + bytes(mac[3:6]), "big")


def link_local_from_mac(mac: bytes) -> int:
    """fe80::/64 with the MAC's EUI-64 interface identifier."""
    return LINK_LOCAL_PREFIX | eui64_interface_id(mac)


def solicited_node(address: int) -> int:
    """The solicited-node multicast group of ``address``: ff02::1:ffXX:XXXX (its low 24 bits)."""
    return _SOLICITED_NODE | (address & 0xFFFFFF)


def multicast_mac(group: int) -> bytes:
    """The Ethernet address a multicast group is sent to: 33:33 and the group's low 32 bits."""
    return b"\x33\x33" + (group & 0xFFFFFFFF).to_bytes(4, "big")


def is_link_local(address: int) -> bool:
    return address >> 118 == 0xFE80 >> 6
