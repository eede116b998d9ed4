"""ICMPv4 messages (RFC 792, RFC 1191 for "fragmentation needed").

::

     0               1               2               3
    +---------------+---------------+-------------------------------+
    |     Type      |     Code      |           Checksum            |  0
    +---------------+---------------+-------------------------------+
    |  rest of header: ident + sequence (echo), next-hop MTU (3/4), |  4
    |  pointer (parameter problem), unused (other errors)           |
    +---------------------------------------------------------------+
    |  data: echo payload, or the offending IP header + 8 bytes     |  8
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._checksum import sum16
from ._errors import BadChecksum, Truncated, WireReason

__all__ = [
    "ICMP_DEST_UNREACH",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "ICMP_ERROR_TYPES",
    "ICMP_HEADER_LEN",
    "ICMP_PARAMETER_PROBLEM",
    "ICMP_TIME_EXCEEDED",
    "ICMP_UNREACH_FRAG_NEEDED",
    "ICMP_UNREACH_HOST",
    "ICMP_UNREACH_NET",
    "ICMP_UNREACH_PORT",
    "ICMP_UNREACH_PROTOCOL",
    "IcmpRepr",
    "parse_icmp",
]

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_REDIRECT = 5
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETER_PROBLEM = 12
ICMP_ERROR_TYPES = frozenset(
    {ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED, ICMP_PARAMETER_PROBLEM}
)
ICMP_UNREACH_NET = 0
ICMP_UNREACH_HOST = 1
ICMP_UNREACH_PROTOCOL = 2
ICMP_UNREACH_PORT = 3
ICMP_UNREACH_FRAG_NEEDED = 4
ICMP_HEADER_LEN = 8
ICMP_HEADER = struct.Struct("!BBHI")


def parse_icmp(buf: bytes, offset: int, end: int, verify_checksum: bool = True) -> tuple[int, int, int]:
    """``(type, code, rest_of_header)`` of the message in ``buf[offset:end]``.

    The checksum covers the whole message.  Raises :class:`Truncated` or :class:`BadChecksum`.
    """
    if end - offset < ICMP_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{end - offset} bytes is less than an ICMP header")
    if verify_checksum and sum16(buf, offset, end - offset, 0) != 0xFFFF:
        raise BadChecksum(WireReason.BAD_CHECKSUM, "ICMP checksum")
    icmp_type, code, _csum, rest = ICMP_HEADER.unpack_from(buf, offset)
    return icmp_type, code, rest


@dataclass(frozen=True, slots=True)
class IcmpRepr:
    """An ICMP message: type, code, the 32-bit rest of the header, and the data after it."""

    type: int
    code: int
    rest: int = 0
    data: bytes = b""

    @classmethod
    def echo_request(cls, ident: int, seq: int, data: bytes = b"") -> IcmpRepr:
        return cls(ICMP_ECHO_REQUEST, 0, (ident << 16) | seq, data)

    @classmethod
    def echo_reply(cls, ident: int, seq: int, data: bytes = b"") -> IcmpRepr:
        return cls(ICMP_ECHO_REPLY, 0, (ident << 16) | seq, data)

    @classmethod
    def dest_unreachable(cls, code: int, original: bytes, next_hop_mtu: int = 0) -> IcmpRepr:
        """``original`` is the offending datagram's IP header and at least 8 bytes after it."""
        return cls(ICMP_DEST_UNREACH, code, next_hop_mtu & 0xFFFF, original)

    @property
    def ident(self) -> int:
        return self.rest >> 16

    @property
    def seq(self) -> int:
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        return self.type in ICMP_ERROR_TYPES

    @property
    def buffer_len(self) -> int:
        return ICMP_HEADER_LEN + len(self.data)

    @classmethod
    def parse(
        cls, buf: bytes, offset: int = 0, end: int | None = None, verify_checksum: bool = True
    ) -> IcmpRepr:
        end = len(buf) if end is None else end
        icmp_type, code, rest = parse_icmp(buf, offset, end, verify_checksum)
        return cls(icmp_type, code, rest, bytes(buf[offset + ICMP_HEADER_LEN : end]))

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        ICMP_HEADER.pack_into(buf, offset, self.type, self.code, 0, self.rest)
        end = offset + ICMP_HEADER_LEN + len(self.data)
        buf[offset + ICMP_HEADER_LEN : end] = self.data
        struct.pack_into("!H", buf, offset + 2, ~sum16(buf, offset, end - offset, 0) & 0xFFFF)
        return end

    def to_bytes(self) -> bytes:
        buf = bytearray(self.buffer_len)
        self.emit_into(buf)
        return bytes(buf)
