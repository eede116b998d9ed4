"""ICMPv6 messages (RFC 4443) and Neighbor Discovery's (RFC 4861), with the pseudo-header checksum.

::

     0               1               2               3
    +---------------+---------------+-------------------------------+
    |     Type      |     Code      |           Checksum            |  0
    +---------------+---------------+-------------------------------+
    |  ident + sequence (echo), MTU (packet too big), pointer       |  4
    |  (parameter problem), flags R|S|O (NA), hop limit|M|O|router  |
    |  lifetime (RA), unused (the other errors, NS, RS)             |
    +---------------------------------------------------------------+
    |  NS/NA: target address (16 bytes); RA: reachable time, retrans |  8
    |  timer; then options (type, length in 8-octet units, data)     |
    |  errors: as much of the offending packet as fits in 1280       |

The checksum covers the IPv6 pseudo-header (next header 58) and the whole message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from ._checksum import sum16
from ._errors import BadChecksum, Malformed, Truncated, WireReason
from .ipv6 import IPPROTO_ICMPV6, pseudo_header_sum6

__all__ = [
    "ICMP6_DST_UNREACH",
    "ICMP6_ECHO_REPLY",
    "ICMP6_ECHO_REQUEST",
    "ICMP6_HEADER",
    "ICMP6_HEADER_LEN",
    "ICMP6_PACKET_TOO_BIG",
    "ICMP6_PARAM_PROB",
    "ICMP6_TIME_EXCEEDED",
    "ND_NEIGHBOR_ADVERT",
    "ND_NEIGHBOR_SOLICIT",
    "ND_OPT_MTU",
    "ND_OPT_PREFIX_INFORMATION",
    "ND_OPT_SOURCE_LINKADDR",
    "ND_OPT_TARGET_LINKADDR",
    "ND_REDIRECT",
    "ND_ROUTER_ADVERT",
    "ND_ROUTER_SOLICIT",
    "Icmpv6Repr",
    "NdOptions",
    "PrefixInfo",
    "icmp6_checksum",
    "parse_icmpv6",
    "parse_nd_options",
]

ICMP6_DST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROB = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
ND_ROUTER_SOLICIT = 133
ND_ROUTER_ADVERT = 134
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_REDIRECT = 137
ICMP6_DST_UNREACH_NOROUTE = 0
ICMP6_DST_UNREACH_ADDR = 3
ICMP6_DST_UNREACH_NOPORT = 4
ICMP6_TIME_EXCEED_REASSEMBLY = 1
ICMP6_PARAMPROB_NEXTHEADER = 1
ND_NA_FLAG_ROUTER = 0x80000000
ND_NA_FLAG_SOLICITED = 0x40000000
ND_NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_SOURCE_LINKADDR = 1
ND_OPT_TARGET_LINKADDR = 2
ND_OPT_PREFIX_INFORMATION = 3
ND_OPT_MTU = 5
ND_OPT_PI_FLAG_ONLINK = 0x80
ND_OPT_PI_FLAG_AUTO = 0x40
ICMP6_HEADER_LEN = 8
ICMP6_HEADER = struct.Struct("!BBHI")
#: a prefix information option after its type and length: prefix length, flags, valid and
#: preferred lifetimes, reserved, the prefix as two 64-bit halves
_PREFIX_INFO = struct.Struct("!BBIIIQQ")
#: at most this many options in one ND message (a full 1500-byte RA holds fewer)
MAX_ND_OPTIONS = 32


def parse_icmpv6(
    buf: bytes, offset: int, end: int, src: int, dst: int, verify_checksum: bool = True
) -> tuple[int, int, int]:
    """``(type, code, rest_of_header)`` of the message in ``buf[offset:end]``; ``src``/``dst`` are
    the IPv6 addresses (128-bit integers) for the pseudo-header.  Raises :class:`Truncated` or
    :class:`BadChecksum`."""
    length = end - offset
    if length < ICMP6_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{length} bytes is less than an ICMPv6 header")
    if (
        verify_checksum
        and sum16(buf, offset, length, pseudo_header_sum6(src, dst, IPPROTO_ICMPV6, length)) != 0xFFFF
    ):
        raise BadChecksum(WireReason.BAD_CHECKSUM, "ICMPv6 checksum")
    icmp_type, code, _csum, rest = ICMP6_HEADER.unpack_from(buf, offset)
    return icmp_type, code, rest


def icmp6_checksum(buf: bytes | bytearray | memoryview, offset: int, length: int, src: int, dst: int) -> int:
    """The checksum field for a message whose own field is zero."""
    return ~sum16(buf, offset, length, pseudo_header_sum6(src, dst, IPPROTO_ICMPV6, length)) & 0xFFFF


@dataclass(frozen=True, slots=True)
class PrefixInfo:
    """A prefix information option (RFC 4861 4.6.2)."""

    prefix: int
    prefix_len: int
    on_link: bool
    autonomous: bool
    valid_lifetime: int
    preferred_lifetime: int


@dataclass(frozen=True, slots=True)
class NdOptions:
    """The options of one ND message that this host acts on (the others are skipped)."""

    source_mac: bytes | None = None
    target_mac: bytes | None = None
    mtu: int = 0
    prefixes: tuple[PrefixInfo, ...] = ()


def parse_nd_options(buf: bytes, offset: int, end: int) -> NdOptions:
    """The options in ``buf[offset:end]`` (RFC 4861 4.6): a zero length, an option that overruns
    the message, a link-layer option that is not 8 bytes (Ethernet) or more than
    :data:`MAX_ND_OPTIONS` options raise :class:`Malformed` (the message is silently discarded)."""
    source_mac = target_mac = None
    mtu = 0
    prefixes: list[PrefixInfo] = []
    i = offset
    count = 0
    while i < end:
        if i + 2 > end:
            raise Malformed(WireReason.BAD_OPTION, "ND option cut")
        opt_type, units = buf[i], buf[i + 1]
        opt_end = i + (units << 3)
        if units == 0 or opt_end > end:
            raise Malformed(WireReason.BAD_OPTION, f"ND option {opt_type} of {units} units")
        count += 1
        if count > MAX_ND_OPTIONS:
            raise Malformed(WireReason.BAD_OPTION, f"more than {MAX_ND_OPTIONS} ND options")
        if opt_type in (ND_OPT_SOURCE_LINKADDR, ND_OPT_TARGET_LINKADDR):
            if units != 1:
                raise Malformed(WireReason.BAD_OPTION, f"link-layer address option of {units} units")
            if opt_type == ND_OPT_SOURCE_LINKADDR:
                source_mac = bytes(buf[i + 2 : i + 8])
            else:
                target_mac = bytes(buf[i + 2 : i + 8])
        elif opt_type == ND_OPT_PREFIX_INFORMATION:
            if units != 4:
                raise Malformed(WireReason.BAD_OPTION, f"prefix information of {units} units")
            plen, flags, valid, preferred, _res, hi, lo = _PREFIX_INFO.unpack_from(buf, i + 2)
            if plen <= 128:
                prefixes.append(
                    PrefixInfo(
                        (hi << 64) | lo, plen, bool(flags & ND_OPT_PI_FLAG_ONLINK),
                        bool(flags & ND_OPT_PI_FLAG_AUTO), valid, preferred,
                    )
                )  # fmt: skip
        elif opt_type == ND_OPT_MTU:
            if units != 1:
                raise Malformed(WireReason.BAD_OPTION, f"MTU option of {units} units")
            mtu = int.from_bytes(buf[i + 4 : i + 8], "big")
        i = opt_end
    return NdOptions(source_mac, target_mac, mtu, tuple(prefixes))


def link_option(opt_type: int, mac: bytes) -> bytes:
    """A source or target link-layer address option for an Ethernet MAC (8 bytes)."""
    return bytes((opt_type, 1)) + bytes(mac)


@dataclass(frozen=True, slots=True)
class Icmpv6Repr:
    """An ICMPv6 message: type, code, the 32-bit rest of the header and the data after it (for
    NS/NA the target address and options, for errors the quoted packet)."""

    type: int
    code: int
    rest: int = 0
    data: bytes = b""

    @classmethod
    def echo_request(cls, ident: int, seq: int, data: bytes = b"") -> Icmpv6Repr:
        return cls(ICMP6_ECHO_REQUEST, 0, (ident << 16) | seq, data)

    @classmethod
    def echo_reply(cls, ident: int, seq: int, data: bytes = b"") -> Icmpv6Repr:
        return cls(ICMP6_ECHO_REPLY, 0, (ident << 16) | seq, data)

    @classmethod
    def neighbor_solicit(cls, target: IPv6Address, source_mac: bytes | None = None) -> Icmpv6Repr:
        """An NS; no source link-layer option when sent from the unspecified address (DAD)."""
        options = link_option(ND_OPT_SOURCE_LINKADDR, source_mac) if source_mac is not None else b""
        return cls(ND_NEIGHBOR_SOLICIT, 0, 0, target.packed + options)

    @classmethod
    def neighbor_advert(
        cls,
        target: IPv6Address,
        target_mac: bytes | None,
        *,
        router: bool = False,
        solicited: bool,
        override: bool,
    ) -> Icmpv6Repr:
        flags = (ND_NA_FLAG_ROUTER if router else 0) | (ND_NA_FLAG_SOLICITED if solicited else 0)
        flags |= ND_NA_FLAG_OVERRIDE if override else 0
        options = link_option(ND_OPT_TARGET_LINKADDR, target_mac) if target_mac is not None else b""
        return cls(ND_NEIGHBOR_ADVERT, 0, flags, target.packed + options)

    @classmethod
    def packet_too_big(cls, mtu: int, original: bytes) -> Icmpv6Repr:
        return cls(ICMP6_PACKET_TOO_BIG, 0, mtu, original)

    @property
    def ident(self) -> int:
        return self.rest >> 16

    @property
    def seq(self) -> int:
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        return self.type < 128

    @property
    def buffer_len(self) -> int:
        return ICMP6_HEADER_LEN + len(self.data)

    @classmethod
    def parse(
        cls,
        buf: bytes,
        src: IPv6Address,
        dst: IPv6Address,
        offset: int = 0,
        end: int | None = None,
        verify_checksum: bool = True,
    ) -> Icmpv6Repr:
        end = len(buf) if end is None else end
        icmp_type, code, rest = parse_icmpv6(buf, offset, end, int(src), int(dst), verify_checksum)
        return cls(icmp_type, code, rest, bytes(buf[offset + ICMP6_HEADER_LEN : end]))

    def emit_into(
        self, buf: bytearray | memoryview, src: IPv6Address, dst: IPv6Address, offset: int = 0
    ) -> int:
        ICMP6_HEADER.pack_into(buf, offset, self.type, self.code, 0, self.rest)
        end = offset + ICMP6_HEADER_LEN + len(self.data)
        buf[offset + ICMP6_HEADER_LEN : end] = self.data
        struct.pack_into("!H", buf, offset + 2, icmp6_checksum(buf, offset, end - offset, int(src), int(dst)))
        return end

    def to_bytes(self, src: IPv6Address, dst: IPv6Address) -> bytes:
        buf = bytearray(self.buffer_len)
        self.emit_into(buf, src, dst)
        return bytes(buf)
