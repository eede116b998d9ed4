"""UDP datagrams (RFC 768) with the IPv4 pseudo-header checksum.

::

     0               2               4               6               8
    +---------------+---------------+---------------+---------------+
    |  source port  |   dest port   |    length     |   checksum    |
    +---------------+---------------+---------------+---------------+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from ._checksum import pseudo_header_sum, sum16, sum16_bytes
from ._errors import BadChecksum, Malformed, Truncated, WireReason
from .ipv6 import pseudo_header_sum6

__all__ = ["UDP_HEADER", "UDP_HEADER_LEN", "UdpRepr", "parse_udp6_header", "parse_udp_header"]

UDP_HEADER_LEN = 8
UDP_HEADER = struct.Struct("!HHHH")
_IPPROTO_UDP = 17


def parse_udp_header(
    buf: bytes, offset: int, end: int, src: int, dst: int, verify_checksum: bool = True
) -> tuple[int, int, int]:
    """``(src_port, dst_port, payload_end)`` of the datagram in ``buf[offset:end]``.

    ``src``/``dst`` are the IPv4 addresses (integers) for the pseudo-header.  The length field
    must fit in what IP carried; a zero checksum means "none" (RFC 768).  Raises
    :class:`Truncated`, :class:`Malformed` or :class:`BadChecksum`.
    """
    if end - offset < UDP_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{end - offset} bytes is less than a UDP header")
    sport, dport, length, checksum = UDP_HEADER.unpack_from(buf, offset)
    if length < UDP_HEADER_LEN or length > end - offset:
        raise Malformed(WireReason.BAD_LENGTH, f"UDP length {length} with {end - offset} bytes from IP")
    if verify_checksum and checksum:
        initial = pseudo_header_sum(src, dst, _IPPROTO_UDP, length)
        if type(buf) is bytes:
            total = sum16_bytes(buf, len(buf), offset, length, initial)
        else:
            total = sum16(buf, offset, length, initial)
        if total != 0xFFFF:
            raise BadChecksum(WireReason.BAD_CHECKSUM, "UDP checksum")
    if dport == 0:
        raise Malformed(WireReason.BAD_PORT, "destination port 0")
    return sport, dport, offset + length


def parse_udp6_header(
    buf: bytes, offset: int, end: int, src: int, dst: int, verify_checksum: bool = True
) -> tuple[int, int, int]:
    """As :func:`parse_udp_header`, over IPv6: ``src``/``dst`` are 128-bit integers, and a zero
    checksum is refused (RFC 8200 8.1: the checksum is mandatory over IPv6)."""
    if end - offset < UDP_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{end - offset} bytes is less than a UDP header")
    sport, dport, length, checksum = UDP_HEADER.unpack_from(buf, offset)
    if length < UDP_HEADER_LEN or length > end - offset:
        raise Malformed(WireReason.BAD_LENGTH, f"UDP length {length} with {end - offset} bytes from IPv6")
    if checksum == 0:
        raise BadChecksum(WireReason.BAD_CHECKSUM, "UDP over IPv6 without a checksum")
    if verify_checksum:
        initial = pseudo_header_sum6(src, dst, _IPPROTO_UDP, length)
        if sum16(buf, offset, length, initial) != 0xFFFF:
            raise BadChecksum(WireReason.BAD_CHECKSUM, "UDP checksum")
    if dport == 0:
        raise Malformed(WireReason.BAD_PORT, "destination port 0")
    return sport, dport, offset + length


def udp_checksum(buf: bytes | bytearray | memoryview, offset: int, length: int, src: int, dst: int) -> int:
    """The checksum field for a datagram whose own field is zero (0 is sent as 0xFFFF)."""
    checksum = ~sum16(buf, offset, length, pseudo_header_sum(src, dst, _IPPROTO_UDP, length)) & 0xFFFF
    return checksum or 0xFFFF


@dataclass(frozen=True, slots=True)
class UdpRepr:
    """A UDP datagram.  The checksum is always computed on emit (never left zero)."""

    src_port: int
    dst_port: int
    payload: bytes = b""

    @property
    def buffer_len(self) -> int:
        return UDP_HEADER_LEN + len(self.payload)

    @classmethod
    def parse(
        cls,
        buf: bytes,
        src: IPv4Address,
        dst: IPv4Address,
        offset: int = 0,
        end: int | None = None,
        verify_checksum: bool = True,
    ) -> UdpRepr:
        end = len(buf) if end is None else end
        sport, dport, payload_end = parse_udp_header(buf, offset, end, int(src), int(dst), verify_checksum)
        return cls(sport, dport, bytes(buf[offset + UDP_HEADER_LEN : payload_end]))

    def emit_into(
        self, buf: bytearray | memoryview, src: IPv4Address, dst: IPv4Address, offset: int = 0
    ) -> int:
        length = self.buffer_len
        if length > 0xFFFF:
            raise ValueError(f"a UDP datagram of {length} bytes does not fit the length field")
        UDP_HEADER.pack_into(buf, offset, self.src_port, self.dst_port, length, 0)
        buf[offset + UDP_HEADER_LEN : offset + length] = self.payload
        struct.pack_into("!H", buf, offset + 6, udp_checksum(buf, offset, length, int(src), int(dst)))
        return offset + length

    def to_bytes(self, src: IPv4Address, dst: IPv4Address) -> bytes:
        buf = bytearray(self.buffer_len)
        self.emit_into(buf, src, dst)
        return bytes(buf)
