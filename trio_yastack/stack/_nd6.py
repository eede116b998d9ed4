"""Neighbor Discovery (RFC 4861) and address autoconfiguration (RFC 4862) for a host.

``nd6_resolve`` is where an outgoing IPv6 packet meets the link, as ``arpresolve`` is for IPv4:
the neighbour cache knows the next hop's MAC in one of RFC 4861 7.3.2's states (REACHABLE,
STALE, DELAY, PROBE: the packet goes), or the entry is INCOMPLETE and the packet is held,
bounded, while multicast solicitations go out once per ``retrans_timer``.  ``nd6_input`` takes
solicitations (answered when the target is ours), advertisements (7.2.5's update rules),
router advertisements (a default router, on-link prefixes, SLAAC addresses, the link MTU) and
runs Duplicate Address Detection for our addresses (RFC 4862 5.4).

MLDv2 (RFC 3810): at start, and when a router advertisement gives us a new address, a
multicast listener report joins our solicited-node groups (all-nodes is never reported, 6), so a
switch that snoops MLD forwards the solicitations for our addresses to our port.  It is sent as
the kernel sends it: to ff02::16 with hop limit 1, a hop-by-hop Router Alert (RFC 2711), one
CHANGE_TO_EXCLUDE_MODE record with no sources per group, from the link-local address or, while
that is still tentative, from the unspecified address (RFC 3810 5.2.13), and repeated once
(the Robustness Variable of 2, RFC 3810 9.1).  A router's MLDv2 query (``mld_query_input``) is
answered after a random delay within its Maximum Response Delay by a current-state report of
every group (at most one answer pending), so a snooping switch keeps our membership past its
listener interval.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING

from ._drops import Nd6Drop
from ._stats6 import Nd6Stats
from .wire import WireError
from .wire.ethernet import ETHER_HEADER_LEN
from .wire.icmpv6 import (
    ICMP6_HEADER,
    ND_NA_FLAG_OVERRIDE,
    ND_NA_FLAG_ROUTER,
    ND_NA_FLAG_SOLICITED,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_OPT_SOURCE_LINKADDR,
    ND_OPT_TARGET_LINKADDR,
    ND_ROUTER_ADVERT,
    ND_ROUTER_SOLICIT,
    icmp6_checksum,
    link_option,
    parse_nd_options,
)
from .wire.ipv6 import (
    ALL_NODES,
    ALL_ROUTERS,
    IPPROTO_HOPOPTS,
    IPV6_HEADER,
    IPV6_HEADER_LEN,
    eui64_interface_id,
    is_link_local,
    multicast_mac,
    solicited_node,
)

if TYPE_CHECKING:
    from ._ip6 import Ip6Layer, OurAddress
    from ._timers import Timer

__all__ = ["DELAY", "INCOMPLETE", "PROBE", "REACHABLE", "STALE", "Nd6Layer", "Neighbor"]

#: MLDv2 (RFC 3810 5.2): the report's ICMPv6 type, where it goes, and a record's type for a join
MLD_LISTENER_REPORT_V2 = 143
ALL_MLDV2_ROUTERS = 0xFF02 << 112 | 0x16  # ff02::16
MLD_LISTENER_QUERY = 130
MLD_MODE_IS_EXCLUDE = 2  # a current-state record (the answer to a query)
MLD_CHANGE_TO_EXCLUDE = 4
_MLDV2_QUERY_LEN = 28  # an MLDv1 query is 24 bytes; MLDv2's is at least 28 (RFC 3810 5.1)
#: hop-by-hop header before the report: next header ICMPv6, length 0, Router Alert (RFC 2711:
#: type 5, length 2, value 0 = MLD), PadN to 8 bytes: Linux's bytes exactly
MLD_HOP_BY_HOP = bytes([58, 0, 5, 2, 0, 0, 1, 0])
_MLD_RECORD = struct.Struct("!BBH")  # record type, aux data length, number of sources (then the group)
_MLD_RECORDS_PER_REPORT = 64  # 64 x 20 bytes: well inside the 1280-byte minimum MTU
_MLD_REPEAT = 1.0  # [Unsolicited Report Interval] (RFC 3810 9.11): when the report goes again
_MASK64 = (1 << 64) - 1

# RFC 4861 7.3.2's states
INCOMPLETE = "incomplete"
REACHABLE = "reachable"
STALE = "stale"
DELAY = "delay"
PROBE = "probe"


class Neighbor:
    """One neighbour cache entry: its MAC (once known), state, the packets waiting for it and the
    timer of its state (retransmission, delay, probe)."""

    __slots__ = ("held", "is_router", "mac", "probes", "reachable_until", "state", "timer")

    def __init__(self, state: str, mac: bytes = b"") -> None:
        self.state = state
        self.mac = mac
        self.held: deque[bytearray] = deque()
        self.probes = 0
        self.reachable_until = 0.0
        self.is_router = False
        self.timer: Timer | None = None


class Nd6Layer:
    __slots__ = ("cache", "config", "ip6", "mld_answer_pending", "stats")

    def __init__(self, ip6: Ip6Layer) -> None:
        self.ip6 = ip6
        self.config = ip6.config
        self.stats = Nd6Stats()
        #: address -> entry, in order of creation or last confirmation (oldest first)
        self.cache: dict[int, Neighbor] = {}
        #: an answer to an MLD query is scheduled (one at a time: it reports every group)
        self.mld_answer_pending = False

    # -- input -------------------------------------------------------------------------------
    def nd6_input(
        self,
        icmp_type: int,
        code: int,
        rest: int,
        buf: bytes,
        start: int,
        end: int,
        src: int,
        dst: int,
        hop_limit: int,
        now: float,
        *,
        answer: bool = True,
    ) -> None:
        """An ND message arrived in ``buf[start:end]`` (its ICMPv6 checksum verified); FreeBSD's
        ``nd6_ns_input``/``nd6_na_input``/``nd6_ra_input``.  ``answer=False`` learns without
        answering (the copy another core's dispatcher hands every core)."""
        stats = self.stats
        stats.received += 1
        if hop_limit != 255:
            stats.drop(Nd6Drop.BAD_HOP_LIMIT)  # RFC 4861 7.1.1: it crossed a router
            return
        if code != 0:
            stats.drop(Nd6Drop.BAD_MESSAGE)
            return
        if icmp_type == ND_NEIGHBOR_SOLICIT:
            stats.solicitations_received += 1
            self._ns_input(buf, start, end, src, dst, now, answer)
        elif icmp_type == ND_NEIGHBOR_ADVERT:
            stats.advertisements_received += 1
            self._na_input(rest, buf, start, end, dst, now)
        elif icmp_type == ND_ROUTER_ADVERT:
            stats.router_advertisements_received += 1
            self._ra_input(rest, buf, start, end, src, now)
        else:
            stats.drop(Nd6Drop.IGNORED)  # router solicitations (we are no router), redirects

    def _target(self, buf: bytes, start: int, end: int) -> int:
        """The target address of an NS/NA, or -1 (counted) when the message is short or the
        target multicast."""
        if end - start < 24:
            self.stats.drop(Nd6Drop.BAD_MESSAGE)
            return -1
        target = int.from_bytes(buf[start + 8 : start + 24], "big")
        if target >> 120 == 0xFF:
            self.stats.drop(Nd6Drop.BAD_TARGET)
            return -1
        return target

    def _ns_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, now: float, answer: bool
    ) -> None:
        """RFC 4861 7.1.1 and 7.2.3; RFC 4862 5.4.3 for a target still under DAD."""
        stats = self.stats
        target = self._target(buf, start, end)
        if target < 0:
            return
        try:
            options = parse_nd_options(buf, start + 24, end)
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if src == 0 and (dst != solicited_node(target) or options.source_mac is not None):
            stats.drop(Nd6Drop.BAD_MESSAGE)  # DAD's NS goes to the solicited-node group, without SLLA
            return
        ip6 = self.ip6
        ours = ip6.addresses.get(target)
        if ours is None:
            stats.drop(Nd6Drop.BAD_TARGET)
            return
        if ours.tentative:
            if src == 0 and answer:
                self._dad_failed(ours)  # another node is testing the same address
            else:
                stats.drop(Nd6Drop.BAD_TARGET)  # 5.4.3: not ours to answer for yet
            return
        if src != 0 and options.source_mac is not None:
            self._learn(src, options.source_mac, now)
        if not answer:
            return
        mac = ip6.core.mac
        if src == 0:  # 7.2.4: answer DAD to all-nodes, unsolicited
            self._send_na(target, ALL_NODES, mac, solicited=False, now=now)
        else:
            self._send_na(target, src, mac, solicited=True, now=now)

    def _na_input(self, flags: int, buf: bytes, start: int, end: int, dst: int, now: float) -> None:
        """RFC 4861 7.1.2 and 7.2.5."""
        stats = self.stats
        target = self._target(buf, start, end)
        if target < 0:
            return
        solicited = flags & ND_NA_FLAG_SOLICITED
        if solicited and dst >> 120 == 0xFF:
            stats.drop(Nd6Drop.BAD_MESSAGE)
            return
        try:
            options = parse_nd_options(buf, start + 24, end)
        except WireError as exc:
            stats.drop(exc.reason)
            return
        ours = self.ip6.addresses.get(target)
        if ours is not None:
            if ours.tentative:
                self._dad_failed(ours)  # RFC 4862 5.4.4: someone uses it already
            else:
                stats.drop(Nd6Drop.ADDRESS_CONFLICT)
            return
        entry = self.cache.get(target)
        if entry is None:
            return  # 7.2.5: no entry, nothing to update (an unsolicited NA creates none)
        mac = options.target_mac
        if entry.state == INCOMPLETE:
            if mac is None:
                return
            entry.mac = mac
            self._confirmed(target, entry, REACHABLE if solicited else STALE, now)
            self._flush(entry)
            return
        same = mac is None or mac == entry.mac
        if not flags & ND_NA_FLAG_OVERRIDE and not same:
            if entry.state == REACHABLE:
                entry.state = STALE  # a different MAC without override: trust it less
            return
        if mac is not None:
            entry.mac = mac
        if solicited:
            self._confirmed(target, entry, REACHABLE, now)
        elif not same:
            self._confirmed(target, entry, STALE, now)
        entry.is_router = bool(flags & ND_NA_FLAG_ROUTER)

    def _ra_input(self, rest: int, buf: bytes, start: int, end: int, src: int, now: float) -> None:
        """RFC 4861 6.1.2 and 6.3.4; prefixes with the A flag make SLAAC addresses (RFC 4862 5.5.3)."""
        stats = self.stats
        ip6 = self.ip6
        if not is_link_local(src):
            stats.drop(Nd6Drop.NOT_FROM_ROUTER)
            return
        if end - start < 16:
            stats.drop(Nd6Drop.BAD_MESSAGE)
            return
        try:
            options = parse_nd_options(buf, start + 16, end)
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if options.source_mac is not None:
            self._learn(src, options.source_mac, now)
        if not self.config.accept_ra:
            return
        lifetime = rest & 0xFFFF
        if lifetime:
            ip6.default_router = src
            ip6.router_expires = now + lifetime
        elif ip6.default_router == src:
            ip6.default_router = 0
        if options.mtu and 1280 <= options.mtu <= ip6.core.mtu:
            ip6.link_mtu = options.mtu
        for info in options.prefixes:
            if is_link_local(info.prefix) or info.prefix_len > 128:
                continue
            mask = ((1 << info.prefix_len) - 1) << (128 - info.prefix_len)
            network = info.prefix & mask
            if info.on_link:
                if info.valid_lifetime == 0:
                    ip6.prefixes.pop(network, None)
                elif network in ip6.prefixes or len(ip6.prefixes) < self.config.prefix_limit:
                    ip6.prefixes[network] = (info.prefix_len, now + info.valid_lifetime)
                else:
                    stats.drop(Nd6Drop.TOO_MANY_PREFIXES)
                    continue
            if (
                info.autonomous
                and info.prefix_len == 64
                and info.valid_lifetime > 0
                and info.preferred_lifetime <= info.valid_lifetime
            ):
                if len(ip6.addresses) > self.config.prefix_limit:
                    stats.drop(Nd6Drop.TOO_MANY_PREFIXES)
                    continue
                address = network | eui64_interface_id(ip6.core.mac)
                new = address not in ip6.addresses
                ours = ip6.add_address(address, 64, now + info.valid_lifetime)
                if new:
                    self.mld_report(now, [solicited_node(address)])
                if ours.tentative and not ours.dad_sent:
                    self.start_dad(ours, now)

    # -- the neighbour cache -----------------------------------------------------------------
    def _entry(self, address: int, state: str, mac: bytes = b"") -> Neighbor:
        cache = self.cache
        if len(cache) >= self.config.neighbor_limit:
            evicted = cache.pop(next(iter(cache)))
            self.ip6.core.timers.cancel(evicted.timer)
            self.stats.drop(Nd6Drop.CACHE_EVICTED)
        entry = cache[address] = Neighbor(state, mac)
        self.stats.entries_learned += 1
        return entry

    def _learn(self, address: int, mac: bytes, now: float) -> None:
        """A neighbour told us its MAC unasked (SLLA of an NS or RA, 7.2.3): STALE unless unchanged."""
        entry = self.cache.get(address)
        if entry is None:
            self._entry(address, STALE, mac)
            return
        if entry.mac != mac or entry.state == INCOMPLETE:
            entry.mac = mac
            self._confirmed(address, entry, STALE, now)
            self._flush(entry)

    def _confirmed(self, address: int, entry: Neighbor, state: str, now: float) -> None:
        entry.state = state
        entry.probes = 0
        self.ip6.core.timers.cancel(entry.timer)
        entry.timer = None
        if state == REACHABLE:
            entry.reachable_until = now + self.config.reachable_time

    def nud_hint(self, address: int, now: float) -> None:
        """Upper-layer reachability confirmation (RFC 4861 7.3.1; FreeBSD's ``nd6_nud_hint``):
        a TCP connection to ``address`` made forward progress (the peer acknowledged new data),
        so its entry is REACHABLE again without a probe; an unresolved one is left alone."""
        entry = self.cache.get(address)
        if entry is None or entry.state == INCOMPLETE:
            return
        if entry.state != REACHABLE or now + self.config.reachable_time - entry.reachable_until > 1.0:
            self._confirmed(address, entry, REACHABLE, now)  # (at most once a second when reachable)

    def _flush(self, entry: Neighbor) -> None:
        held, entry.held = entry.held, deque()
        output = self.ip6.ether_output6
        for packet in held:
            output(packet, entry.mac)

    def nd6_resolve(self, next_hop: int, packet: bytearray, now: float) -> bytes | None:
        """The MAC for ``next_hop``, or ``None`` after taking ``packet`` to hold until it is known
        (RFC 4861 7.2.2; 7.3.3 for the states' transitions on sending)."""
        entry = self.cache.get(next_hop)
        if entry is not None:
            state = entry.state
            if state == REACHABLE:
                if now < entry.reachable_until:
                    return entry.mac
                state = entry.state = STALE
            if state == STALE:
                entry.state = DELAY
                entry.timer = self.ip6.core.timers.schedule(
                    now + self.config.delay_first_probe, self._timeout, next_hop
                )
                return entry.mac
            if state != INCOMPLETE:
                return entry.mac  # DELAY, PROBE
        else:
            entry = self._entry(next_hop, INCOMPLETE)
            self._timeout(now, next_hop)
        if len(entry.held) >= self.config.hold_limit:
            entry.held.popleft()  # keep the newest, as FreeBSD does
            self.stats.drop(Nd6Drop.HOLD_QUEUE_FULL)
        entry.held.append(packet)
        self.stats.held += 1
        return None

    def _timeout(self, now: float, address: int) -> None:
        """The timer of an entry's state: retransmit, start probing, or give up."""
        entry = self.cache.get(address)
        if entry is None:
            return
        entry.timer = None
        config = self.config
        if entry.state == INCOMPLETE:
            if entry.probes >= config.max_multicast_solicit:
                del self.cache[address]
                self.stats.resolution_failures += 1
                for _ in entry.held:
                    self.stats.drop(Nd6Drop.UNRESOLVED)
                return
            self._solicit(address, solicited_node(address), now)
        elif entry.state == DELAY:
            entry.state = PROBE
            self._solicit(address, address, now)
        elif entry.state == PROBE:
            if entry.probes >= config.max_unicast_solicit:
                del self.cache[address]  # 7.3.3: unreachable; the next packet starts again
                return
            self._solicit(address, address, now)
        else:
            return
        entry.probes += 1
        entry.timer = self.ip6.core.timers.schedule(now + config.retrans_timer, self._timeout, address)

    def _solicit(self, target: int, dst: int, now: float) -> None:
        ip6 = self.ip6
        try:
            src = ip6.select_source(target)
        except OSError:
            return  # no usable address yet (DAD under way): the retransmission tries again
        options = link_option(ND_OPT_SOURCE_LINKADDR, ip6.core.mac)
        ip6.icmp6.send(
            ND_NEIGHBOR_SOLICIT, 0, 0, target.to_bytes(16, "big") + options, dst, now, src=src, nd=True
        )
        self.stats.solicitations_sent += 1

    def _send_na(self, target: int, dst: int, mac: bytes, *, solicited: bool, now: float) -> None:
        flags = ND_NA_FLAG_OVERRIDE | (ND_NA_FLAG_SOLICITED if solicited else 0)
        data = target.to_bytes(16, "big") + link_option(ND_OPT_TARGET_LINKADDR, mac)
        self.ip6.icmp6.send(ND_NEIGHBOR_ADVERT, 0, flags, data, dst, now, src=target, nd=True)
        self.stats.advertisements_sent += 1

    def lookup(self, address: int) -> bytes | None:
        """The cached MAC for ``address`` if one is known (no side effects)."""
        entry = self.cache.get(address)
        return entry.mac if entry is not None and entry.state != INCOMPLETE else None

    # -- router solicitation (RFC 4861 6.3.7) ----------------------------------------------
    def start_router_solicitation(self, now: float) -> None:
        """Ask for a router advertisement rather than wait up to ten minutes for one: the first
        solicitation once DAD has had time to make the link-local address usable (so it can carry
        our MAC), then every ``router_solicitation_interval`` until an RA gives a default router."""
        config = self.config
        if config.router_solicitations and config.accept_ra and not self.ip6.default_router:
            first = now + config.retrans_timer * config.dad_transmits
            self.ip6.core.timers.schedule(first, self._solicit_router, 0)

    def _solicit_router(self, now: float, sent: int) -> None:
        ip6 = self.ip6
        if ip6.default_router or sent >= self.config.router_solicitations:
            return
        if ip6.usable(ip6.link_local):
            src, options = ip6.link_local, link_option(ND_OPT_SOURCE_LINKADDR, ip6.core.mac)
        else:
            src, options = 0, b""  # from the unspecified address: no source link-layer option
        ip6.icmp6.send(ND_ROUTER_SOLICIT, 0, 0, options, ALL_ROUTERS, now, src=src, nd=True)
        self.stats.router_solicitations_sent += 1
        ip6.core.timers.schedule(
            now + self.config.router_solicitation_interval, self._solicit_router, sent + 1
        )

    # -- duplicate address detection (RFC 4862 5.4) -----------------------------------------
    def start_dad(self, ours: OurAddress, now: float) -> None:
        self.stats.dad_started += 1
        self._dad(now, ours.address)

    def _dad(self, now: float, address: int) -> None:
        ip6 = self.ip6
        ours = ip6.addresses.get(address)
        if ours is None or not ours.tentative:
            return
        if ours.dad_sent >= self.config.dad_transmits:
            ours.tentative = False  # nobody objected within RetransTimer of the last NS
            ours.dad_timer = None
            ip6.addresses_changed()
            self.stats.dad_succeeded += 1
            return
        ours.dad_sent += 1
        ip6.icmp6.send(
            ND_NEIGHBOR_SOLICIT, 0, 0, address.to_bytes(16, "big"), solicited_node(address), now, nd=True
        )
        self.stats.solicitations_sent += 1
        ours.dad_timer = ip6.core.timers.schedule(now + self.config.retrans_timer, self._dad, address)

    def _dad_failed(self, ours: OurAddress) -> None:
        """RFC 4862 5.4.5: the address is a duplicate; it is not ours."""
        self.stats.drop(Nd6Drop.DAD_FAILED)
        self.ip6.core.timers.cancel(ours.dad_timer)
        self.ip6.addresses.pop(ours.address, None)
        self.ip6.addresses_changed()

    # -- MLDv2 (RFC 3810) --------------------------------------------------------------------
    def mld_report(self, now: float, groups: list[int] | None = None, *, repeat: bool = True) -> None:
        """Report ``groups`` (default: every group we receive but all-nodes) joined, in reports of
        at most 64 records; with ``repeat``, once more after ``_MLD_REPEAT`` seconds."""
        ip6 = self.ip6
        if not self.config.mld:
            return
        if groups is None:
            groups = sorted(group for group in ip6.groups if group != ALL_NODES)
        if not groups:
            return
        src = ip6.link_local if ip6.usable(ip6.link_local) else 0
        for first in range(0, len(groups), _MLD_RECORDS_PER_REPORT):
            self._send_mld_report(groups[first : first + _MLD_RECORDS_PER_REPORT], src)
        if repeat:
            ip6.core.timers.schedule(now + _MLD_REPEAT, self._mld_repeat, tuple(groups))

    def mld_query_input(
        self, buf: bytes, start: int, end: int, src: int, hop_limit: int, rest: int, now: float
    ) -> None:
        """A multicast listener query (RFC 3810 5.1, its ICMPv6 checksum verified): from a
        link-local source with hop limit 1 (7.4), MLDv2's length; answered after a random delay
        up to its Maximum Response Delay (6.2), one answer pending at most."""
        stats = self.stats
        stats.mld_queries_received += 1
        if not is_link_local(src) or hop_limit != 1:
            stats.drop(Nd6Drop.NOT_FROM_ROUTER)
            return
        if end - start < _MLDV2_QUERY_LEN:
            stats.drop(Nd6Drop.IGNORED)  # an MLDv1 querier: v1 reports are not sent
            return
        if self.mld_answer_pending or not self.config.mld:
            return
        code = rest >> 16  # Maximum Response Code, in milliseconds (5.1.3)
        if code >= 0x8000:
            code = ((code & 0xFFF) | 0x1000) << (((code >> 12) & 7) + 3)
        self.mld_answer_pending = True
        delay = self.ip6.core.rng.random() * code / 1000.0
        self.ip6.core.timers.schedule(now + delay, self._mld_answer)

    def _mld_answer(self, now: float) -> None:
        self.mld_answer_pending = False
        ip6 = self.ip6
        groups = sorted(group for group in ip6.groups if group != ALL_NODES)
        src = ip6.link_local if ip6.usable(ip6.link_local) else 0
        for first in range(0, len(groups), _MLD_RECORDS_PER_REPORT):
            self._send_mld_report(groups[first : first + _MLD_RECORDS_PER_REPORT], src, MLD_MODE_IS_EXCLUDE)

    def _mld_repeat(self, now: float, groups: tuple[int, ...]) -> None:
        """The second report (RFC 3810 6.1), for the groups we still receive."""
        still = [group for group in groups if group in self.ip6.groups]
        self.mld_report(now, still, repeat=False)

    def _send_mld_report(self, groups: list[int], src: int, record_type: int = MLD_CHANGE_TO_EXCLUDE) -> None:
        ip6 = self.ip6
        dst = ALL_MLDV2_ROUTERS
        icmp_at = ETHER_HEADER_LEN + IPV6_HEADER_LEN + len(MLD_HOP_BY_HOP)
        record_len = _MLD_RECORD.size + 16
        icmp_len = 8 + record_len * len(groups)
        packet = bytearray(icmp_at + icmp_len)
        packet[icmp_at - len(MLD_HOP_BY_HOP) : icmp_at] = MLD_HOP_BY_HOP
        at = icmp_at + 8
        for group in groups:
            _MLD_RECORD.pack_into(packet, at, record_type, 0, 0)
            packet[at + _MLD_RECORD.size : at + record_len] = group.to_bytes(16, "big")
            at += record_len
        ICMP6_HEADER.pack_into(packet, icmp_at, MLD_LISTENER_REPORT_V2, 0, 0, len(groups))  # reserved, count
        checksum = icmp6_checksum(packet, icmp_at, icmp_len, src, dst)
        ICMP6_HEADER.pack_into(packet, icmp_at, MLD_LISTENER_REPORT_V2, 0, checksum, len(groups))
        IPV6_HEADER.pack_into(
            packet, ETHER_HEADER_LEN, 6 << 28, len(MLD_HOP_BY_HOP) + icmp_len, IPPROTO_HOPOPTS, 1,
            src >> 64, src & _MASK64, dst >> 64, dst & _MASK64,
        )  # fmt: skip
        ip6.stats.sent += 1
        self.stats.mld_reports_sent += 1
        ip6.ether_output6(packet, multicast_mac(dst))
