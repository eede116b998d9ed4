"""Ethernet II frames, with 802.1Q (and 802.1ad) tags recognised.

::

     0                   6                  12      14
    +-------------------+-------------------+-------+------------
    | destination MAC   | source MAC        | type  | payload ...
    +-------------------+-------------------+-------+------------
    with one tag:                           | 8100  | TCI   | type | payload ...
                                            12      14      16     18

The frame check sequence is not part of what a port hands us (DPDK, TAP and pcap alike).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._address import MacAddress
from ._errors import Malformed, Truncated, WireReason

__all__ = [
    "ETHERTYPE_ARP",
    "ETHERTYPE_IPV4",
    "ETHERTYPE_IPV6",
    "ETHERTYPE_QINQ",
    "ETHERTYPE_VLAN",
    "ETHER_HEADER_LEN",
    "EthernetRepr",
    "VlanTag",
    "parse_ethernet_header",
]

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_QINQ = 0x88A8
ETHERTYPE_IPV6 = 0x86DD
ETHER_HEADER_LEN = 14
_TAG_TYPES = (ETHERTYPE_VLAN, ETHERTYPE_QINQ)

ETHER_HEADER = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")  # TCI, then the next ethertype
_MAX_TAGS = 2  # 802.1ad outer + 802.1Q inner; a deeper stack is refused


def parse_ethernet_header(frame: bytes) -> tuple[bytes, bytes, int, int, int]:
    """``(dst, src, ethertype, tci, payload_offset)`` of a frame; ``tci`` is -1 when untagged.

    With two tags (QinQ) ``tci`` is the inner one's.  Raises :class:`Truncated` or
    :class:`Malformed`.
    """
    if len(frame) < ETHER_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{len(frame)} bytes is less than an Ethernet header")
    dst, src, ethertype = ETHER_HEADER.unpack_from(frame, 0)
    offset = ETHER_HEADER_LEN
    tci = -1
    tags = 0
    while ethertype in _TAG_TYPES:
        tags += 1
        if tags > _MAX_TAGS:
            raise Malformed(WireReason.TOO_MANY_TAGS, "more than two VLAN tags")
        if len(frame) < offset + 4:
            raise Truncated(WireReason.TOO_SHORT, "VLAN tag cut short")
        tci, ethertype = _TAG.unpack_from(frame, offset)  # the TCI follows the TPID
        offset += 4
    if ethertype < 0x0600:
        raise Malformed(WireReason.NOT_ETHERNET_II, f"802.3 length field {ethertype}")
    return dst, src, ethertype, tci, offset


@dataclass(frozen=True, slots=True)
class VlanTag:
    """An 802.1Q tag control field: priority (PCP), drop eligible (DEI) and VLAN id."""

    vid: int
    pcp: int = 0
    dei: bool = False

    @classmethod
    def from_tci(cls, tci: int) -> VlanTag:
        return cls(vid=tci & 0x0FFF, pcp=tci >> 13, dei=bool(tci & 0x1000))

    @property
    def tci(self) -> int:
        return (self.pcp << 13) | (int(self.dei) << 12) | self.vid


@dataclass(frozen=True, slots=True)
class EthernetRepr:
    """An Ethernet II header, optionally with one 802.1Q tag."""

    dst: MacAddress
    src: MacAddress
    ethertype: int
    vlan: VlanTag | None = None

    @property
    def header_len(self) -> int:
        return ETHER_HEADER_LEN + (4 if self.vlan is not None else 0)

    buffer_len = header_len

    @classmethod
    def parse(cls, frame: bytes) -> tuple[EthernetRepr, int]:
        """The header and the offset of the payload in ``frame``."""
        dst, src, ethertype, tci, offset = parse_ethernet_header(frame)
        if offset > ETHER_HEADER_LEN + 4:
            raise Malformed(WireReason.TOO_MANY_TAGS, "QinQ frames have no representation")
        vlan = VlanTag.from_tci(tci) if tci >= 0 else None
        return cls(MacAddress(dst), MacAddress(src), ethertype, vlan), offset

    def emit_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the header at ``offset``; return the payload's offset."""
        if self.vlan is None:
            ETHER_HEADER.pack_into(buf, offset, self.dst, self.src, self.ethertype)
            return offset + ETHER_HEADER_LEN
        ETHER_HEADER.pack_into(buf, offset, self.dst, self.src, ETHERTYPE_VLAN)
        _TAG.pack_into(buf, offset + 14, self.vlan.tci, self.ethertype)
        return offset + ETHER_HEADER_LEN + 4

    def to_bytes(self, payload: bytes = b"") -> bytes:
        buf = bytearray(self.header_len + len(payload))
        start = self.emit_into(buf)
        buf[start:] = payload
        return bytes(buf)
