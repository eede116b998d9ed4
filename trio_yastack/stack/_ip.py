"""IPv4: ``ip_input`` (validate, reassemble, demultiplex) and ``ip_output`` (route, fragment).

This host does not forward: a datagram is for us (our address, the subnet broadcast or the
limited broadcast) or it is dropped and counted.
"""

from __future__ import annotations

import errno
from collections import deque
from typing import TYPE_CHECKING

from ._drops import IpDrop
from ._offload import OffloadPacket
from ._reassembly import Reassembler
from .wire import WireError
from .wire.ethernet import ETHER_HEADER_LEN
from .wire.icmp import ICMP_TIME_EXCEEDED
from .wire.ipv4 import (
    IP_DF,
    IP_MF,
    IP_OFFMASK,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HEADER,
    IPV4_HEADER_LEN,
    parse_ipv4_header,
)

if TYPE_CHECKING:
    from ._core import StackCore

__all__ = ["FRAME_HEADROOM", "IpLayer"]

#: bytes before the transport header in a frame buffer: Ethernet + IPv4 without options
FRAME_HEADROOM = ETHER_HEADER_LEN + IPV4_HEADER_LEN
_LIMITED_BROADCAST = 0xFFFFFFFF
_ICMP_REASSEMBLY_TIMEOUT = 1  # time exceeded code 1: fragment reassembly time exceeded


def _emit_header(
    packet: bytearray,
    tos: int,
    total_len: int,
    ident: int,
    frag: int,
    ttl: int,
    proto: int,
    src: int,
    dst: int,
) -> None:
    """Write an option-less IPv4 header with its checksum after the Ethernet header's room.

    The checksum is summed from the field values (ten 16-bit words) rather than read back from
    the buffer: cheaper than a call into C for twenty bytes, and the same number (a test checks
    every header against the wire parser).
    """
    total = (
        0x4500 + tos + total_len + ident + frag + (ttl << 8) + proto
        + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
    )  # fmt: skip
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    IPV4_HEADER.pack_into(
        packet, ETHER_HEADER_LEN, 0x45, tos, total_len, ident, frag, ttl, proto, ~total & 0xFFFF, src, dst
    )


class IpLayer:
    __slots__ = (
        "broadcast", "config", "core", "ident", "loopback", "netmask", "network", "reassembler", "stats",
    )  # fmt: skip

    def __init__(self, core: StackCore) -> None:
        self.core = core
        self.config = core.config.ip
        self.stats = core.stats_ip
        iface = core.config.interface
        self.netmask = int(iface.network.netmask)
        self.network = int(iface.network.network_address)
        self.broadcast = int(iface.network.broadcast_address)
        self.ident = core.rng.getrandbits(16)
        self.reassembler = Reassembler(self.config, self.stats, core.timers, self._reassembly_timeout)
        self.loopback: deque[bytes] = deque()

    # -- input -------------------------------------------------------------------------------
    def ip_input(self, frame: bytes, offset: int, now: float, looped: bool = False) -> None:
        """An IPv4 datagram arrived at ``frame[offset:]`` (FreeBSD ``ip_input``).

        ``looped`` marks a datagram we sent to our own address: it alone may carry our address
        as its source.
        """
        stats = self.stats
        stats.received += 1
        core = self.core
        try:
            header_len, _tos, total_len, ident, frag, ttl, proto, src, dst = parse_ipv4_header(
                frame, offset, core.verify_checksums
            )
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if dst != core.ip and dst != self.broadcast and dst != _LIMITED_BROADCAST:
            stats.drop(IpDrop.NOT_FOR_US)  # a host does not forward (multicast lands here too)
            return
        if (src == core.ip and not looped) or src == self.broadcast or src >= 0xE0000000 or src >> 24 == 127:
            stats.drop(IpDrop.BAD_SOURCE)  # martian: ours, broadcast, multicast/class E or loopback
            return
        if ttl == 0:
            stats.drop(IpDrop.BAD_TTL)  # RFC 1122 3.2.1.7: a host never sends TTL 0
            return
        start = offset + header_len
        end = offset + total_len
        if frag & (IP_MF | IP_OFFMASK):
            header = bytes(frame[offset : offset + header_len + 8])
            payload = self.reassembler.add(
                (src, dst, proto, ident),
                (frag & IP_OFFMASK) << 3,
                frame[start:end],
                bool(frag & IP_MF),
                header,
                now,
            )
            if payload is None:
                return
            frame, start, end = payload, 0, len(payload)
            offset = -1  # no contiguous original header any more
        stats.delivered += 1
        if proto == IPPROTO_TCP and core.tcp_input is not None:
            core.tcp_input(frame, start, end, src, dst, offset, now)
        elif proto == IPPROTO_UDP:
            core.udp.udp_input(frame, start, end, src, dst, offset, now)
        elif proto == IPPROTO_ICMP:
            core.icmp.icmp_input(frame, start, end, src, dst, now)
        else:
            stats.delivered -= 1
            stats.drop(IpDrop.UNKNOWN_PROTOCOL)
            if offset >= 0 and proto != IPPROTO_TCP:
                core.icmp.icmp_error(3, 2, frame, offset, now)  # protocol unreachable

    def _reassembly_timeout(self, now: float, key: tuple[int, int, int, int], first_header: bytes) -> None:
        if key[1] == self.core.ip:  # not for datagrams that were broadcast
            self.core.icmp.icmp_error(ICMP_TIME_EXCEEDED, _ICMP_REASSEMBLY_TIMEOUT, first_header, 0, now)

    # -- output ------------------------------------------------------------------------------
    def route(self, dst: int) -> int:
        """The next hop for ``dst``; raises ``OSError(ENETUNREACH)`` when there is none."""
        core = self.core
        if dst & self.netmask == self.network or dst == _LIMITED_BROADCAST:
            return dst
        if core.gateway:
            return core.gateway
        self.stats.drop(IpDrop.NO_ROUTE)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    def ip_output(
        self,
        packet: bytearray,
        proto: int,
        dst: int,
        now: float,
        *,
        ttl: int = 0,
        tos: int = 0,
        dont_fragment: bool = False,
    ) -> None:
        """Send the transport datagram in ``packet[FRAME_HEADROOM:]`` to ``dst`` (FreeBSD ``ip_output``).

        ``packet`` is the whole frame buffer; the IPv4 header goes at 14, the Ethernet header at
        0.  Raises ``OSError`` for no route (ENETUNREACH) or a datagram too big to send whole
        with DF set, or too big for IPv4 (EMSGSIZE).  Frames held for ARP are not errors.
        """
        core = self.core
        stats = self.stats
        total_len = len(packet) - ETHER_HEADER_LEN
        if total_len > 0xFFFF:
            stats.drop(IpDrop.TOO_BIG)
            raise OSError(errno.EMSGSIZE, "Message too long")
        next_hop = dst if dst & self.netmask == self.network else self.route(dst)
        ident = self.ident = (self.ident + 1) & 0xFFFF
        ttl = ttl or self.config.default_ttl
        src = core.ip
        mtu = core.mtu
        stats.sent += 1
        # RFC 1191 3: TCP does path-MTU discovery, so every TCP datagram carries DF (as Linux's
        # and FreeBSD's do); a smaller hop answers "fragmentation needed" and TCP lowers its MSS.
        df = IP_DF if dont_fragment or proto == IPPROTO_TCP else 0
        if total_len <= mtu or (packet.__class__ is OffloadPacket and packet.gso_size):
            # (a TSO segment goes whole: the port cuts it into MTU-sized segments)
            _emit_header(packet, tos, total_len, ident, df, ttl, proto, src, dst)
            self._to_link(packet, next_hop, dst, now)
            return
        if df:
            stats.drop(IpDrop.CANNOT_FRAGMENT)
            raise OSError(errno.EMSGSIZE, "Message too long")
        # Fragment: every piece but the last carries a multiple of 8 payload bytes.
        chunk = (mtu - IPV4_HEADER_LEN) & ~7
        payload = memoryview(packet)[FRAME_HEADROOM:]
        stats.fragmented += 1
        for start in range(0, len(payload), chunk):
            piece = payload[start : start + chunk]
            more = start + chunk < len(payload)
            fragment = bytearray(FRAME_HEADROOM + len(piece))
            fragment[FRAME_HEADROOM:] = piece
            frag = (start >> 3) | (IP_MF if more else 0)
            _emit_header(fragment, tos, IPV4_HEADER_LEN + len(piece), ident, frag, ttl, proto, src, dst)
            stats.fragments_created += 1
            self._to_link(fragment, next_hop, dst, now)

    def _to_link(self, packet: bytearray, next_hop: int, dst: int, now: float) -> None:
        core = self.core
        if dst == core.ip:
            # To ourselves: looped back and taken in by the next poll (bounded).
            if len(self.loopback) >= self.config.loopback_limit:
                self.stats.drop(IpDrop.LOOPBACK_FULL)
                return
            self.loopback.append(bytes(packet))
            return
        if dst == _LIMITED_BROADCAST or dst == self.broadcast:
            core.ether_output(packet, b"\xff\xff\xff\xff\xff\xff")
            return
        arp = core.arp
        entry = arp.cache.get(next_hop)
        if entry is not None and now < entry[1] - arp.config.refresh_before:
            core.ether_output(packet, entry[0])  # the common case, without arpresolve's call
            return
        mac = arp.arpresolve(next_hop, packet, now)
        if mac is not None:
            core.ether_output(packet, mac)

    def input_loopback(self, now: float) -> int:
        """Take in the datagrams we sent to ourselves; return how many."""
        count = 0
        # Our own datagrams need no verifying, and offloaded ones carry only partial checksums.
        self.core.verify_checksums = False
        while self.loopback:
            frame = self.loopback.popleft()
            self.ip_input(frame, ETHER_HEADER_LEN, now, looped=True)
            count += 1
        return count
