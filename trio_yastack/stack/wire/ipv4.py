"""IPv4 headers (RFC 791), with options carried but not interpreted.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------+-------+---------------+-------------------------------+
    |Version|  IHL  |   DSCP/ECN    |          Total Length         |  0
    +-------+-------+---------------+-----+-------------------------+
    |         Identification        |Flags|     Fragment Offset     |  4
    +---------------+---------------+-----+-------------------------+
    |  Time to Live |    Protocol   |        Header Checksum        |  8
    +---------------+---------------+-------------------------------+
    |                       Source Address                          | 12
    |                    Destination Address                        | 16
    |                    Options (IHL > 5)                          | 20
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from ._checksum import sum16, sum16_bytes
from ._errors import BadChecksum, Malformed, Truncated, WireReason

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV4_HEADER",
    "IPV4_HEADER_LEN",
    "IP_DF",
    "IP_MF",
    "IP_OFFMASK",
    "Ipv4Repr",
    "parse_ipv4_header",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV4_HEADER_LEN = 20
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF
IPV4_HEADER = struct.Struct("!BBHHHBBHII")


def parse_ipv4_header(
    buf: bytes, offset: int = 0, verify_checksum: bool = True
) -> tuple[int, int, int, int, int, int, int, int, int]:
    """Validate the header at ``offset``; return its fields.

    Returns ``(header_len, tos, total_len, ident, flags_and_fragment, ttl, protocol, src, dst)``
    with addresses as 32-bit integers.  ``total_len`` is checked against the bytes present
    (anything beyond it is link padding).  Raises :class:`Truncated`, :class:`Malformed` or
    :class:`BadChecksum`.
    """
    available = len(buf) - offset
    if available < IPV4_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{available} bytes is less than an IPv4 header")
    vihl, tos, total_len, ident, frag, ttl, proto, _csum, src, dst = IPV4_HEADER.unpack_from(buf, offset)
    if vihl >> 4 != 4:
        raise Malformed(WireReason.BAD_VERSION, f"version {vihl >> 4}")
    header_len = (vihl & 0x0F) << 2
    if header_len < IPV4_HEADER_LEN or header_len > available:
        raise Malformed(WireReason.BAD_HEADER_LENGTH, f"IHL {header_len} bytes with {available} present")
    if total_len < header_len:
        raise Malformed(WireReason.BAD_LENGTH, f"total length {total_len} below header length {header_len}")
    if total_len > available:
        raise Truncated(WireReason.BAD_LENGTH, f"total length {total_len} with {available} bytes present")
    if verify_checksum:
        if type(buf) is bytes:
            total = sum16_bytes(buf, len(buf), offset, header_len, 0)
        else:
            total = sum16(buf, offset, header_len, 0)
        if total != 0xFFFF:
            raise BadChecksum(WireReason.BAD_CHECKSUM, "IPv4 header checksum")
    return header_len, tos, total_len, ident, frag, ttl, proto, src, dst


@dataclass(frozen=True, slots=True)
class Ipv4Repr:
    """An IPv4 header.  ``payload_len`` is the length of what follows the header (and options).

    ``fragment_offset`` is in bytes (a multiple of 8).  ``options`` are kept as raw bytes
    (a multiple of 4 long, at most 40) so a header re-emits exactly; the stack never acts on
    them.
    """

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    payload_len: int
    ttl: int = 64
    ident: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    fragment_offset: int = 0
    tos: int = 0
    options: bytes = b""

    @property
    def header_len(self) -> int:
        return IPV4_HEADER_LEN + len(self.options)

    @property
    def buffer_len(self) -> int:
        return self.header_len

    @property
    def total_len(self) -> int:
        return self.header_len + self.payload_len

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0, verify_checksum: bool = True) -> Ipv4Repr:
        header_len, tos, total_len, ident, frag, ttl, proto, src, dst = parse_ipv4_header(
            buf, offset, verify_checksum
        )
        return cls(
            src=IPv4Address(src),
            dst=IPv4Address(dst),
            protocol=proto,
            payload_len=total_len - header_len,
            ttl=ttl,
            ident=ident,
            dont_fragment=bool(frag & IP_DF),
            more_fragments=bool(frag & IP_MF),
            fragment_offset=(frag & IP_OFFMASK) << 3,
            tos=tos,
            options=bytes(buf[offset + IPV4_HEADER_LEN : offset + header_len]),
        )

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the header with its checksum at ``offset``; return the payload's offset."""
        if len(self.options) % 4 or len(self.options) > 40:
            raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        if self.fragment_offset % 8 or not 0 <= self.fragment_offset <= IP_OFFMASK << 3:
            raise ValueError("fragment offset must be a multiple of 8 below 65536")
        header_len = self.header_len
        frag = (self.fragment_offset >> 3) | (IP_DF if self.dont_fragment else 0)
        frag |= IP_MF if self.more_fragments else 0
        IPV4_HEADER.pack_into(
            buf, offset, 0x40 | (header_len >> 2), self.tos, self.total_len, self.ident, frag,
            self.ttl, self.protocol, 0, int(self.src), int(self.dst),
        )  # fmt: skip
        buf[offset + IPV4_HEADER_LEN : offset + header_len] = self.options
        checksum = ~sum16(buf, offset, header_len, 0) & 0xFFFF
        struct.pack_into("!H", buf, offset + 10, checksum)
        return offset + header_len

    def to_bytes(self, payload: bytes = b"") -> bytes:
        buf = bytearray(self.header_len + len(payload))
        start = self.emit_into(buf)
        buf[start:] = payload
        return bytes(buf)
