"""One core's place among several: which queue it reads, which it writes, its rings, its flows.

Every core runs its own stack (share nothing).  A frame may arrive on any core's queue; the
Toeplitz hash of its flow, looked up in the redirection table (RETA), names the core that owns
the flow, and the frame goes there: processed at once when that is this core, otherwise
enqueued on the ring to the owner.  ARP is copied to every core so that each cache learns every
binding (only the receiving core answers).  Two layouts:

- hardware-like RSS: the port has a queue per core (a multi-queue TAP); the kernel spreads flows
  by its own hash, so a frame can land on a core that does not own its flow: it is redirected
  through a ring (counted as ``redirected``);
- software RSS: the port has one queue, which core 0 reads for everyone (YAStack's
  ``soft_dispatch``): it dispatches by our hash, every other core reads only its rings.

Transmission never crosses cores: each core writes its own queue (or the one shared queue, one
whole frame per write).  An active open on core k picks a local port whose reply hashes to k
(F-Stack's ``ff_rss_check``), so replies come home without redirection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._native_rss import toeplitz
from ._ring import SpscRing
from ._rss import DEFAULT_RSS_KEY, Reta

if TYPE_CHECKING:
    from trio_yastack.stack import StackCore

#: an IPv6 address out of the TCP layer's key (which marks it with bit 128)
_ADDRESS6 = (1 << 128) - 1

__all__ = ["ALL_CORES", "COPY_FLAG", "VERIFIED_FLAG", "CoreLayout", "DispatchStatistics", "flow_owner"]

#: ``flow_owner`` for frames every core must see (ARP)
ALL_CORES = -1
#: ring record flag: a copy to learn from (ARP), not to answer
COPY_FLAG = 1
#: ring record flag: the port vouched for the frame's checksums (it was ``ChecksumVerified``)
VERIFIED_FLAG = 2

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_ARP = 0x0806
_ETHERTYPE_VLAN = 0x8100
_ETHERTYPE_IPV6 = 0x86DD


@dataclass(slots=True)
class DispatchStatistics:
    """What one core's dispatcher did (mutable counters)."""

    local: int = 0  # frames of flows this core owns, taken from its own queue
    dispatched: int = 0  # frames read for another core and sent to it (core 0 in software RSS)
    redirected: int = 0  # frames that arrived on this core's queue for a flow another core owns
    copied: int = 0  # ARP copies sent to the other cores
    from_rings: int = 0  # frames taken from the rings of other cores
    ring_drops: int = 0  # frames a full ring refused

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class CoreLayout:
    """Core ``core_id`` of ``cores``: its queues, its rings and the hash that assigns flows.

    ``rx_queue`` is the port queue this core reads (``None``: only its rings, a non-dispatching
    core in software RSS); ``software_rss`` says core 0 dispatches for everyone (frames it sends
    on are dispatched, not redirected).  ``rings_out[j]`` carries frames from this core to core
    j; ``rings_in`` are the rings to this core.
    """

    core_id: int
    cores: int
    rx_queue: int | None
    tx_queue: int
    rings_out: dict[int, SpscRing]
    rings_in: list[SpscRing]
    reta: Reta
    key: bytes = DEFAULT_RSS_KEY
    software_rss: bool = False
    stats: DispatchStatistics = field(default_factory=DispatchStatistics)

    def owns_reply(self, local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> bool:
        """Whether segments from ``remote_ip:remote_port`` to ``local_ip:local_port`` hash to this
        core: the test an active open's ephemeral port must pass."""
        data = (
            remote_ip.to_bytes(4, "big") + local_ip.to_bytes(4, "big")
            + remote_port.to_bytes(2, "big") + local_port.to_bytes(2, "big")
        )  # fmt: skip
        return self.reta.core_of(toeplitz(self.key, data)) == self.core_id

    def owns_reply6(self, local_ip: int, local_port: int, remote_ip: int, remote_port: int) -> bool:
        """:meth:`owns_reply` for IPv6 addresses (``remote_ip`` may carry the TCP layer's mark
        above bit 127): the 36-byte 4-tuple ``flow_owner`` hashes an IPv6 segment by."""
        data = (
            (remote_ip & _ADDRESS6).to_bytes(16, "big") + local_ip.to_bytes(16, "big")
            + remote_port.to_bytes(2, "big") + local_port.to_bytes(2, "big")
        )  # fmt: skip
        return self.reta.core_of(toeplitz(self.key, data)) == self.core_id

    def install(self, core: StackCore) -> None:
        """Make ``core``'s active opens and implicit UDP binds RSS-aware (ports whose replies
        come to this core)."""
        local_ip = core.ip
        ip6 = core.ip6

        def port_filter(port: int, remote_ip: int, remote_port: int) -> bool:
            if remote_ip > 0xFFFFFFFF and ip6 is not None:  # an IPv6 peer (the TCP layer's IP6_KEY)
                # our address: the TCP layer's key holds it above bit 128 (key6); a UDP peer's
                # plain address does not, so the source ip6_output will pick
                local6 = remote_ip >> 129 or ip6.select_source(remote_ip & _ADDRESS6)
                return self.owns_reply6(local6, port, remote_ip, remote_port)
            return self.owns_reply(local_ip, port, remote_ip, remote_port)

        core.tcp.port_filter = port_filter
        core.udp.port_filter = port_filter


def flow_owner(frame: bytes, key: bytes, entries: list[int], mask: int) -> int:
    """The core that owns ``frame``'s flow: the RETA entry of the Toeplitz hash of its IPv4
    4-tuple as it arrives (source = the peer), or of the address pair when it has no ports (ICMP,
    fragments); for an ICMP error about a TCP/UDP flow, the flow it is about (its quoted
    header, reversed).  ``ALL_CORES`` for ARP; core 0's stack counts anything else as a drop."""
    offset = 14
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype == _ETHERTYPE_VLAN and len(frame) >= 18:
        ethertype = (frame[16] << 8) | frame[17]
        offset = 18
    if ethertype == _ETHERTYPE_IPV4 and len(frame) >= offset + 20:
        ihl = (frame[offset] & 0x0F) << 2
        proto = frame[offset + 9]
        l4 = offset + ihl
        not_fragment = not ((frame[offset + 6] << 8 | frame[offset + 7]) & 0x3FFF)
        if (proto == 6 or proto == 17) and not_fragment and len(frame) >= l4 + 4:
            data = frame[offset + 12 : offset + 20] + frame[l4 : l4 + 4]
        elif proto == 1 and not_fragment and len(frame) >= l4 + 8 + 20 + 4 and frame[l4] in (3, 11, 12):
            # An ICMP error quotes our datagram: its flow, seen arriving, is dst -> src.
            inner = l4 + 8
            inner_l4 = inner + ((frame[inner] & 0x0F) << 2)
            if frame[inner + 9] in (6, 17) and len(frame) >= inner_l4 + 4:
                data = (
                    frame[inner + 16 : inner + 20] + frame[inner + 12 : inner + 16]
                    + frame[inner_l4 + 2 : inner_l4 + 4] + frame[inner_l4 : inner_l4 + 2]
                )  # fmt: skip
            else:
                data = frame[inner + 16 : inner + 20] + frame[inner + 12 : inner + 16]
        else:
            data = frame[offset + 12 : offset + 20]
        return entries[toeplitz(key, data) & mask]
    if ethertype == _ETHERTYPE_ARP:
        return ALL_CORES
    if ethertype == _ETHERTYPE_IPV6 and len(frame) >= offset + 40:
        return _flow_owner6(frame, offset, key, entries, mask)
    return 0


def _flow_owner6(frame: bytes, offset: int, key: bytes, entries: list[int], mask: int) -> int:
    """``flow_owner`` for IPv6: Neighbor Discovery goes to every core (as ARP: each neighbour
    cache learns), TCP/UDP right after the fixed header by the 36-byte 4-tuple, anything else
    (extension headers, fragments, other ICMPv6) by the address pair."""
    nxt = frame[offset + 6]
    l4 = offset + 40
    if nxt == 58 and len(frame) > l4 and 133 <= frame[l4] <= 137:
        return ALL_CORES
    if (nxt == 6 or nxt == 17) and len(frame) >= l4 + 4:
        return entries[toeplitz(key, frame[offset + 8 : offset + 40] + frame[l4 : l4 + 4]) & mask]
    return entries[toeplitz(key, frame[offset + 8 : offset + 40]) & mask]
