"""ARP for IPv4 over Ethernet (RFC 826).

::

     0       2       4   5   6       8
    +-------+-------+---+---+-------+
    | htype | ptype |hln|pln| oper  |
    +-------+-------+---+---+-------+-------------------+---------------+
    |  8: sender hardware address    14: sender protocol address       |
    | 18: target hardware address    24: target protocol address       |
    +------------------------------------------------------------------+ 28
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from ._address import MacAddress
from ._errors import Truncated, Unsupported, WireReason

__all__ = ["ARP_LEN", "ARP_REPLY", "ARP_REQUEST", "ArpRepr", "parse_arp"]

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28
ARP_PACKET = struct.Struct("!HHBBH6sI6sI")
_HTYPE_ETHERNET = 1
_PTYPE_IPV4 = 0x0800


def parse_arp(buf: bytes, offset: int = 0) -> tuple[int, bytes, int, bytes, int]:
    """``(operation, sender_mac, sender_ip, target_mac, target_ip)``, addresses as bytes/ints.

    Trailing bytes (Ethernet padding) are allowed.  Raises :class:`Truncated` or
    :class:`Unsupported` (another hardware or protocol type, or an operation other than
    request/reply).
    """
    if len(buf) - offset < ARP_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{len(buf) - offset} bytes is less than an ARP packet")
    htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = ARP_PACKET.unpack_from(buf, offset)
    if htype != _HTYPE_ETHERNET or ptype != _PTYPE_IPV4 or hlen != 6 or plen != 4:
        raise Unsupported(WireReason.BAD_FORMAT, f"htype={htype} ptype={ptype:#x} hlen={hlen} plen={plen}")
    if oper != ARP_REQUEST and oper != ARP_REPLY:
        raise Unsupported(WireReason.BAD_OPERATION, f"operation {oper}")
    return oper, sha, spa, tha, tpa


@dataclass(frozen=True, slots=True)
class ArpRepr:
    """An Ethernet/IPv4 ARP request or reply."""

    operation: int
    sender_mac: MacAddress
    sender_ip: IPv4Address
    target_mac: MacAddress
    target_ip: IPv4Address

    buffer_len = ARP_LEN

    @classmethod
    def parse(cls, buf: bytes, offset: int = 0) -> ArpRepr:
        oper, sha, spa, tha, tpa = parse_arp(buf, offset)
        return cls(oper, MacAddress(sha), IPv4Address(spa), MacAddress(tha), IPv4Address(tpa))

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        ARP_PACKET.pack_into(
            buf, offset, _HTYPE_ETHERNET, _PTYPE_IPV4, 6, 4, self.operation,
            self.sender_mac, int(self.sender_ip), self.target_mac, int(self.target_ip),
        )  # fmt: skip
        return offset + ARP_LEN

    def to_bytes(self) -> bytes:
        buf = bytearray(ARP_LEN)
        self.emit_into(buf)
        return bytes(buf)
