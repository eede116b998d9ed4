"""ARP (RFC 826): the neighbour cache, resolution with retries, replies, gratuitous ARP.

``arpresolve`` is where an outgoing IPv4 packet meets the link: it either knows the next hop's
MAC (and the packet goes straight to ``ether_output``) or holds the packet, bounded, while
requests go out once per ``request_interval`` up to ``max_requests`` times.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ._drops import ArpDrop
from .wire import ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP, WireError
from .wire.arp import ARP_LEN, ARP_PACKET, parse_arp
from .wire.ethernet import ETHER_HEADER, ETHER_HEADER_LEN

if TYPE_CHECKING:
    from ._core import StackCore
    from ._timers import Timer

__all__ = ["ArpLayer"]

_ZERO_MAC = b"\x00" * 6


class _Pending:
    """An address being resolved: the packets waiting for it and the retry timer."""

    __slots__ = ("held", "requests_sent", "timer")

    def __init__(self) -> None:
        self.held: deque[bytearray] = deque()
        self.requests_sent = 0
        self.timer: Timer | None = None


class ArpLayer:
    __slots__ = ("cache", "config", "core", "pending", "refreshing", "stats")

    def __init__(self, core: StackCore) -> None:
        self.core = core
        self.config = core.config.arp
        self.stats = core.stats_arp
        #: ip -> (mac, expires_at), in order of last confirmation (oldest first)
        self.cache: dict[int, tuple[bytes, float]] = {}
        self.pending: dict[int, _Pending] = {}
        self.refreshing: set[int] = set()

    # -- input -------------------------------------------------------------------------------
    def arp_input(self, frame: bytes, offset: int, now: float, *, answer: bool = True) -> None:
        """An ARP packet arrived (RFC 826 "packet reception", FreeBSD ``in_arpinput``).

        ``answer=False`` learns from it without replying: the copy another core's dispatcher
        hands every core, so each core's cache learns every binding while only the core that
        received the request answers it.
        """
        stats = self.stats
        stats.received += 1
        try:
            oper, sha, spa, _tha, tpa = parse_arp(frame, offset)
        except WireError as exc:
            stats.drop(exc.reason)
            return
        core = self.core
        if sha == core.mac:
            stats.drop(ArpDrop.OWN_FRAME)  # our own request, looped back by a switch or a tee
            return
        if sha[0] & 1:
            stats.drop(ArpDrop.BAD_SENDER_MAC)  # a group address is never a station's
            return
        if spa == core.ip:
            stats.drop(ArpDrop.ADDRESS_CONFLICT)  # someone else claims our address: never learn it
            return
        if oper == ARP_REQUEST:
            stats.requests_received += 1
        else:
            stats.replies_received += 1
        for_us = tpa == core.ip
        # Merge: update a binding we already have; learn a new one only when we are the target.
        if spa and (spa in self.cache or spa in self.pending or for_us):
            self._learn(spa, sha, now)
        if oper == ARP_REQUEST and for_us and answer:
            self._send(ARP_REPLY, sha, core.ip, sha, spa)
            stats.replies_sent += 1

    def _learn(self, ip: int, mac: bytes, now: float) -> None:
        cache = self.cache
        if ip in cache:
            del cache[ip]  # re-insert at the end: the most recently confirmed
        else:
            self.stats.entries_learned += 1
            if len(cache) >= self.config.cache_limit:
                evicted = next(iter(cache))
                del cache[evicted]
                self.refreshing.discard(evicted)
                self.stats.drop(ArpDrop.CACHE_EVICTED)
        cache[ip] = (mac, now + self.config.max_age)
        self.refreshing.discard(ip)
        pending = self.pending.pop(ip, None)
        if pending is not None:
            self.core.timers.cancel(pending.timer)
            ether_output = self.core.ether_output
            for packet in pending.held:
                ether_output(packet, mac)

    # -- resolution --------------------------------------------------------------------------
    def arpresolve(self, next_hop: int, packet: bytearray, now: float) -> bytes | None:
        """The MAC for ``next_hop``, or ``None`` after taking ``packet`` to hold until it is known.

        ``packet`` is a whole frame buffer with the Ethernet header still to be written.
        """
        entry = self.cache.get(next_hop)
        if entry is not None:
            mac, expires = entry
            if now < expires:
                if now >= expires - self.config.refresh_before and next_hop not in self.refreshing:
                    # Still valid but about to expire while in use: ask again, keep sending.
                    self.refreshing.add(next_hop)
                    self._request(next_hop)
                return mac
            del self.cache[next_hop]
            self.refreshing.discard(next_hop)
        pending = self.pending.get(next_hop)
        if pending is None:
            if len(self.pending) >= self.config.pending_limit:
                self.stats.drop(ArpDrop.TOO_MANY_PENDING)
                return None
            pending = self.pending[next_hop] = _Pending()
            self._retry(now, next_hop)
        if len(pending.held) >= self.config.hold_limit:
            pending.held.popleft()  # keep the newest, as FreeBSD does
            self.stats.drop(ArpDrop.HOLD_QUEUE_FULL)
        pending.held.append(packet)
        self.stats.held += 1
        return None

    def _retry(self, now: float, ip: int) -> None:
        pending = self.pending.get(ip)
        if pending is None:
            return
        if pending.requests_sent >= self.config.max_requests:
            del self.pending[ip]
            self.stats.resolution_failures += 1
            for _ in pending.held:
                self.stats.drop(ArpDrop.UNRESOLVED)
            self.core.host_unreachable(ip)
            return
        pending.requests_sent += 1
        self._request(ip)
        pending.timer = self.core.timers.schedule(now + self.config.request_interval, self._retry, ip)

    def _request(self, ip: int) -> None:
        self._send(ARP_REQUEST, BROADCAST_MAC, self.core.ip, _ZERO_MAC, ip)
        self.stats.requests_sent += 1

    def announce(self) -> None:
        """Gratuitous ARP (a request for our own address), so neighbours update their caches."""
        core = self.core
        self._send(ARP_REQUEST, BROADCAST_MAC, core.ip, _ZERO_MAC, core.ip)
        self.stats.requests_sent += 1

    def _send(self, oper: int, eth_dst: bytes, spa: int, tha: bytes, tpa: int) -> None:
        core = self.core
        frame = bytearray(ETHER_HEADER_LEN + ARP_LEN)
        ETHER_HEADER.pack_into(frame, 0, eth_dst, core.mac, ETHERTYPE_ARP)
        ARP_PACKET.pack_into(frame, ETHER_HEADER_LEN, 1, 0x0800, 6, 4, oper, core.mac, spa, tha, tpa)
        core.transmit(frame)

    def lookup(self, ip: int, now: float) -> bytes | None:
        """The cached MAC for ``ip`` if still valid (no side effects)."""
        entry = self.cache.get(ip)
        return entry[0] if entry is not None and now < entry[1] else None
