"""IPv6: ``ip6_input`` (validate, walk the extension headers, reassemble, demultiplex) and
``ip6_output`` (source selection, route, path MTU, fragment), FreeBSD's ``netinet6/ip6_input.c``
and ``ip6_output.c`` in miniature.

This host does not forward: a packet is for one of our addresses or a group we joined
(all-nodes, our addresses' solicited-node groups), else it is dropped and counted.  Addresses
are 128-bit integers; our own ones carry their DAD state (RFC 4862: a tentative address
receives nothing and is never a source).  Neighbour Discovery is :mod:`._nd6`, ICMPv6
:mod:`._icmp6`; UDP over IPv6 is the UDP layer's ``udp6_input``/``udp6_output``, TCP the TCP
layer's ``tcp6_input`` (and ``tcp.connect6``: see :mod:`.tcp._tcp6`).
"""

from __future__ import annotations

import errno
from collections import deque
from typing import TYPE_CHECKING

from ._drops import Ip6Drop
from ._icmp6 import Icmp6Layer
from ._nd6 import Nd6Layer
from ._offload import OffloadPacket
from ._reassembly import Reassembler
from ._stats import LayerStatistics
from ._stats6 import Ip6Stats
from .tcp._tcp6 import key6
from .wire import WireError
from .wire.ethernet import ETHER_HEADER, ETHER_HEADER_LEN
from .wire.icmpv6 import (
    ICMP6_PARAM_PROB,
    ICMP6_PARAMPROB_NEXTHEADER,
    ICMP6_TIME_EXCEED_REASSEMBLY,
    ICMP6_TIME_EXCEEDED,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_ROUTER_ADVERT,
    parse_icmpv6,
)
from .wire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from .wire.ipv6 import (
    ALL_NODES,
    IPPROTO_FRAGMENT,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPV6_FRAGMENT_HEADER,
    IPV6_FRAGMENT_LEN,
    IPV6_HEADER,
    IPV6_HEADER_LEN,
    IPV6_MIN_MTU,
    is_link_local,
    link_local_from_mac,
    multicast_mac,
    parse_ipv6_header,
    solicited_node,
    walk_extension_headers,
)

if TYPE_CHECKING:
    from ._core import StackCore
    from ._timers import Timer

__all__ = ["ETHERTYPE_IPV6", "FRAME_HEADROOM6", "Ip6Layer", "OurAddress"]

ETHERTYPE_IPV6 = 0x86DD
#: bytes before the transport header in a frame buffer: Ethernet + the fixed IPv6 header
FRAME_HEADROOM6 = ETHER_HEADER_LEN + IPV6_HEADER_LEN
_MASK64 = 2**64 - 1
_LOOPBACK = 1  # ::1
#: the most of an offending packet an ICMPv6 error quotes: what fits in 1280 bytes (RFC 4443 2.4(c))
QUOTE_LIMIT = IPV6_MIN_MTU - IPV6_HEADER_LEN - 8


#: the most addresses handed to the fast path's classifier (``tcp._fastpath.MAX_IP6``)
_FAST_MAX_ADDRESSES = 64


def _prefix_mask(prefix_len: int) -> int:
    return ((1 << prefix_len) - 1) << (128 - prefix_len)


class OurAddress:
    """One of our unicast addresses: its prefix, and whether DAD still tests it (RFC 4862 5.4)."""

    __slots__ = ("address", "dad_sent", "dad_timer", "prefix_len", "tentative", "valid_until")

    def __init__(
        self, address: int, prefix_len: int, tentative: bool, valid_until: float = float("inf")
    ) -> None:
        self.address = address
        self.prefix_len = prefix_len
        self.tentative = tentative
        self.dad_sent = 0
        self.dad_timer: Timer | None = None
        self.valid_until = valid_until


class Ip6Layer:
    """IPv6 of one core: our addresses and groups, on-link prefixes, the default router, path
    MTUs, reassembly, and the two halves ``ip6_input``/``ip6_output``."""

    __slots__ = (
        "addresses",
        "config",
        "core",
        "default_router",
        "groups",
        "icmp6",
        "ident",
        "link_local",
        "link_mtu",
        "loopback",
        "nd6",
        "pmtu",
        "prefixes",
        "reassembler",
        "router_expires",
        "stats",
    )  # fmt: skip

    def __init__(self, core: StackCore) -> None:
        self.core = core
        self.config = core.config.ip6
        self.stats = Ip6Stats()
        self.ident = core.rng.getrandbits(32)
        self.link_mtu = core.mtu
        #: our unicast addresses (link-local first)
        self.addresses: dict[int, OurAddress] = {}
        #: multicast groups we receive (all-nodes and our addresses' solicited-node groups)
        self.groups: set[int] = set()
        #: on-link prefixes: network -> (prefix length, valid until)
        self.prefixes: dict[int, tuple[int, float]] = {}
        gateway = self.config.gateway
        self.default_router = int(gateway) if gateway is not None else 0
        self.router_expires = float("inf") if gateway is not None else 0.0
        #: destination -> (path MTU, expires at), from Packet Too Big (RFC 8201), bounded
        self.pmtu: dict[int, tuple[int, float]] = {}
        self.reassembler = Reassembler(core.config.ip, self.stats, core.timers, self._reassembly_timeout, 0)
        self.loopback: deque[bytes] = deque()
        self.nd6 = Nd6Layer(self)
        self.icmp6 = Icmp6Layer(self)
        self.join(ALL_NODES)
        self.link_local = link_local_from_mac(core.mac)
        self.add_address(self.link_local, 64)
        for interface in core.config.interface.addresses6:
            self.add_address(int(interface.ip), interface.network.prefixlen)

    # -- configuration -----------------------------------------------------------------------
    def addresses_changed(self) -> None:
        """Our addresses or their DAD state changed: rebuild what the fast path's classifier
        compares an IPv6 frame's addresses with (``tcp._fastpath``), kept on the core for
        ``ether_input_burst`` to hand over without a look here: ``core.fast_addresses6``, 16 bytes
        each, the ``core.fast_usable6`` usable ones first.  Past the classifier's limit of
        ``_FAST_MAX_ADDRESSES`` it is handed none, and every IPv6 frame takes ``ip6_input``."""
        usable = [a for a, ours in self.addresses.items() if not ours.tentative]
        tentative = [a for a, ours in self.addresses.items() if ours.tentative]
        if len(self.addresses) > _FAST_MAX_ADDRESSES:
            usable = tentative = []
        core = self.core
        core.fast_addresses6 = b"".join(a.to_bytes(16, "big") for a in usable + tentative)
        core.fast_usable6 = len(usable)
        # a CANDIDATE6's record names its destination by index: that address's part of the key
        core.fast_keys6 = tuple(key6(0, a) for a in usable)

    def join(self, group: int) -> None:
        """Receive ``group`` (its multicast MAC passes ``ether_input``'s filter)."""
        self.groups.add(group)
        self.core.group_macs.add(multicast_mac(group))

    def add_address(self, address: int, prefix_len: int, valid_until: float = float("inf")) -> OurAddress:
        """Take ``address`` as ours: tentative until DAD (started by :meth:`start`, or at once
        when the stack is running) finds no other owner, unless DAD is off."""
        ours = self.addresses.get(address)
        if ours is not None:
            ours.valid_until = valid_until  # (an RA refreshing it: the expiry timer looks again)
            return ours
        ours = self.addresses[address] = OurAddress(
            address, prefix_len, self.config.dad_transmits > 0, valid_until
        )
        self.join(solicited_node(address))
        if valid_until != float("inf"):
            self.core.timers.schedule(valid_until, self._expire_address, address)
        if not is_link_local(address) and prefix_len < 128:
            mask = _prefix_mask(prefix_len)
            self.prefixes.setdefault(address & mask, (prefix_len, valid_until))
        self.addresses_changed()
        return ours

    def _expire_address(self, now: float, address: int) -> None:
        """An address from an RA whose valid lifetime ran out (RFC 4862 5.5.4) is no longer ours,
        unless a later RA extended it."""
        ours = self.addresses.get(address)
        if ours is None:
            return
        if now < ours.valid_until:
            self.core.timers.schedule(ours.valid_until, self._expire_address, address)
            return
        del self.addresses[address]
        self.addresses_changed()
        self.core.timers.cancel(ours.dad_timer)

    def start(self, now: float) -> None:
        """Report our multicast groups (MLDv2, RFC 4862 5.4.2: joined before DAD's first
        solicitation) and begin DAD for every tentative address (RFC 4862 5.4)."""
        self.nd6.mld_report(now)
        for ours in list(self.addresses.values()):
            if ours.tentative and not ours.dad_sent:
                self.nd6.start_dad(ours, now)
        self.nd6.start_router_solicitation(now)

    def usable(self, address: int) -> bool:
        """Whether ``address`` is ours and past DAD."""
        ours = self.addresses.get(address)
        return ours is not None and not ours.tentative

    def statistics(self) -> tuple[LayerStatistics, LayerStatistics, LayerStatistics]:
        """Frozen snapshots of the ``ip6``, ``icmp6`` and ``nd6`` counters."""
        return self.stats.snapshot(), self.icmp6.stats.snapshot(), self.nd6.stats.snapshot()

    # -- input -------------------------------------------------------------------------------
    def ip6_input(self, frame: bytes, offset: int, now: float, looped: bool = False) -> None:
        """An IPv6 packet arrived at ``frame[offset:]`` (FreeBSD ``ip6_input``)."""
        stats = self.stats
        stats.received += 1
        try:
            _tc, _flow, payload_len, nxt, hop_limit, src, dst = parse_ipv6_header(frame, offset)
        except WireError as exc:
            stats.drop(exc.reason)
            return
        ours = self.addresses.get(dst)
        if ours is None:
            if dst not in self.groups:
                stats.drop(Ip6Drop.NOT_FOR_US)
                return
        elif ours.tentative:
            stats.drop(Ip6Drop.TENTATIVE)  # RFC 4862 5.4: only ND (to our groups) reaches it
            return
        if src >> 120 == 0xFF or src == _LOOPBACK or (not looped and src in self.addresses):
            stats.drop(Ip6Drop.BAD_SOURCE)
            return
        start = offset + IPV6_HEADER_LEN
        end = start + payload_len
        if nxt == IPPROTO_TCP:  # the common cases, with no extension header to walk
            stats.delivered += 1
            self.core.tcp.tcp6_input(frame, start, end, src, dst, offset, now)
            return
        if nxt == IPPROTO_UDP:
            stats.delivered += 1
            self.core.udp.udp6_input(frame, start, end, src, dst, offset, now)
            return
        try:
            proto, at, frag_at, frag_offset, ident_more = walk_extension_headers(
                frame, start, end, nxt, self.config.max_extension_headers
            )
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if frag_at < 0:
            self._deliver(frame, at, end, proto, src, dst, hop_limit, offset, start, now)
            return
        # A fragment (RFC 8200 4.5): the fragmentable part waits for its siblings; the key is
        # (source, destination, identification) -- the protocol slot of IPv4's key is unused.
        header = bytes(frame[offset : min(end, offset + QUOTE_LIMIT)])
        whole = self.reassembler.add(
            (src, dst, 0, ident_more >> 1),
            frag_offset,
            bytes(frame[at:end]),
            bool(ident_more & 1),
            header,
            now,
        )
        if whole is None:
            return
        try:
            proto, at, frag_at, _, _ = walk_extension_headers(
                whole, 0, len(whole), proto, self.config.max_extension_headers, first=False
            )
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if frag_at >= 0:
            stats.drop(Ip6Drop.BAD_FORMAT)  # a fragment header inside a reassembled payload
            return
        self._deliver(whole, at, len(whole), proto, src, dst, hop_limit, -1, 0, now)

    def _deliver(
        self,
        buf: bytes,
        at: int,
        end: int,
        proto: int,
        src: int,
        dst: int,
        hop_limit: int,
        ip_offset: int,
        chain_start: int,
        now: float,
    ) -> None:
        """Hand the upper-layer header at ``buf[at:end]`` to its protocol (``ip_offset`` is where
        the IPv6 header is, -1 for a reassembled packet)."""
        stats = self.stats
        if proto == IPPROTO_TCP:
            stats.delivered += 1
            self.core.tcp.tcp6_input(buf, at, end, src, dst, ip_offset, now)
        elif proto == IPPROTO_UDP:
            stats.delivered += 1
            self.core.udp.udp6_input(buf, at, end, src, dst, ip_offset, now)
        elif proto == IPPROTO_ICMPV6:
            stats.delivered += 1
            self.icmp6.icmp6_input(buf, at, end, src, dst, hop_limit, ip_offset, now)
        elif proto == IPPROTO_NONE:
            stats.drop(Ip6Drop.NO_NEXT_HEADER)
        else:
            stats.drop(Ip6Drop.UNKNOWN_PROTOCOL)
            if ip_offset >= 0 and at == chain_start and dst in self.addresses:
                # RFC 8200 4: parameter problem, code 1, pointing at the next header field that
                # named it: the fixed header's (after an extension header, the drop is silent)
                self.icmp6.icmp6_error(ICMP6_PARAM_PROB, ICMP6_PARAMPROB_NEXTHEADER, 6, buf, ip_offset, now)

    def _reassembly_timeout(self, now: float, key: tuple[int, int, int, int], first_header: bytes) -> None:
        if key[1] in self.addresses:  # RFC 8200 4.5: time exceeded, code 1, if the first fragment came
            self.icmp6.icmp6_error(ICMP6_TIME_EXCEEDED, ICMP6_TIME_EXCEED_REASSEMBLY, 0, first_header, 0, now)

    def nd6_learn_from_copy(self, frame: bytes, now: float) -> None:
        """A copy of an IPv6 frame another core received: if it is a Neighbor Discovery message
        (straight after the fixed header, as ND's always are), let ND learn from it without
        answering, so each core's neighbour cache and routes know what the link said."""
        try:
            _tc, _flow, payload_len, nxt, hop_limit, src, dst = parse_ipv6_header(frame, ETHER_HEADER_LEN)
            if nxt != IPPROTO_ICMPV6:
                return
            start = FRAME_HEADROOM6
            end = start + payload_len
            icmp_type, code, rest = parse_icmpv6(frame, start, end, src, dst, self.core.verify_checksums)
        except WireError:
            return  # the receiving core counted it
        if ND_NEIGHBOR_SOLICIT <= icmp_type <= ND_NEIGHBOR_ADVERT or icmp_type == ND_ROUTER_ADVERT:
            self.nd6.nd6_input(
                icmp_type, code, rest, frame, start, end, src, dst, hop_limit, now, answer=False
            )

    # -- output ------------------------------------------------------------------------------
    def select_source(self, dst: int) -> int:
        """Our address to send to ``dst`` from (RFC 6724, simplified to this host's two scopes):
        the link-local one for link-local and link-scope multicast destinations, else a global
        address, one on ``dst``'s prefix first.  ``OSError(EADDRNOTAVAIL)`` when none is usable."""
        if is_link_local(dst) or (dst >> 112) & 0xFF0F == 0xFF02:
            if self.usable(self.link_local):
                return self.link_local
        else:
            best = 0
            for address, ours in self.addresses.items():
                if ours.tentative or is_link_local(address):
                    continue
                if (address ^ dst) & _prefix_mask(ours.prefix_len) == 0:
                    return address
                best = best or address
            if best:
                return best
        self.stats.drop(Ip6Drop.NO_SOURCE)
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    def on_link(self, dst: int, now: float) -> bool:
        if is_link_local(dst) or dst >> 120 == 0xFF:
            return True
        for network, (prefix_len, valid_until) in self.prefixes.items():
            if (dst & _prefix_mask(prefix_len)) == network and now < valid_until:
                return True
        return False

    def route(self, dst: int, now: float) -> int:
        """The next hop for ``dst``; ``OSError(ENETUNREACH)`` when there is none."""
        if dst in self.addresses or self.on_link(dst, now):
            return dst
        if self.default_router and now < self.router_expires:
            return self.default_router
        self.stats.drop(Ip6Drop.NO_ROUTE)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    def path_mtu(self, dst: int, now: float) -> int:
        entry = self.pmtu.get(dst)
        if entry is not None:
            if now < entry[1]:
                return entry[0]
            del self.pmtu[dst]  # RFC 8201 5.3: try the larger MTU again
        return self.link_mtu

    def update_pmtu(self, dst: int, mtu: int, now: float) -> bool:
        """A Packet Too Big for ``dst``: lower its path MTU (never below 1280, RFC 8201 4;
        never raised by one).  Returns whether it changed."""
        mtu = max(IPV6_MIN_MTU, mtu)
        if mtu >= self.path_mtu(dst, now):
            return False
        pmtu = self.pmtu
        pmtu.pop(dst, None)
        while len(pmtu) >= self.config.pmtu_limit:
            del pmtu[next(iter(pmtu))]  # the oldest goes
        pmtu[dst] = (mtu, now + self.config.pmtu_expiry)
        return True

    def ip6_output(
        self,
        packet: bytearray,
        proto: int,
        dst: int,
        now: float,
        *,
        src: int = 0,
        hop_limit: int = 0,
        traffic_class: int = 0,
    ) -> None:
        """Send the upper-layer packet in ``packet[FRAME_HEADROOM6:]`` to ``dst`` (FreeBSD ``ip6_output``).

        ``packet`` is the whole frame buffer.  ``src`` 0 picks a source address.  A packet larger
        than the path MTU is fragmented here (only the source fragments in IPv6).  Raises
        ``OSError`` for no route (ENETUNREACH), no source (EADDRNOTAVAIL) or too big (EMSGSIZE).
        """
        stats = self.stats
        payload_len = len(packet) - FRAME_HEADROOM6
        if payload_len > 0xFFFF:
            stats.drop(Ip6Drop.TOO_BIG)
            raise OSError(errno.EMSGSIZE, "Message too long")
        if not src:
            src = self.select_source(dst)
        next_hop = self.route(dst, now)
        hop_limit = hop_limit or self.config.default_hop_limit
        first_word = (6 << 28) | (traffic_class << 20)
        mtu = self.path_mtu(dst, now)
        stats.sent += 1
        s_hi, s_lo, d_hi, d_lo = src >> 64, src & _MASK64, dst >> 64, dst & _MASK64
        if IPV6_HEADER_LEN + payload_len <= mtu or (packet.__class__ is OffloadPacket and packet.gso_size):
            # (a TSO segment: the port cuts it into segments that fit)
            IPV6_HEADER.pack_into(
                packet, ETHER_HEADER_LEN, first_word, payload_len, proto, hop_limit, s_hi, s_lo, d_hi, d_lo
            )
            self._to_link(packet, next_hop, dst, now)
            return
        # Fragment (RFC 8200 4.5): every piece but the last carries a multiple of 8 bytes.
        chunk = (mtu - IPV6_HEADER_LEN - IPV6_FRAGMENT_LEN) & ~7
        ident = self.ident = (self.ident + 1) & 0xFFFFFFFF
        payload = memoryview(packet)[FRAME_HEADROOM6:]
        head = FRAME_HEADROOM6 + IPV6_FRAGMENT_LEN
        stats.fragmented += 1
        for start in range(0, payload_len, chunk):
            piece = payload[start : start + chunk]
            more = start + chunk < payload_len
            fragment = bytearray(head + len(piece))
            fragment[head:] = piece
            IPV6_HEADER.pack_into(
                fragment, ETHER_HEADER_LEN, first_word, IPV6_FRAGMENT_LEN + len(piece), IPPROTO_FRAGMENT,
                hop_limit, s_hi, s_lo, d_hi, d_lo,
            )  # fmt: skip
            IPV6_FRAGMENT_HEADER.pack_into(fragment, FRAME_HEADROOM6, proto, 0, start | more, ident)
            stats.fragments_created += 1
            self._to_link(fragment, next_hop, dst, now)

    def _to_link(self, packet: bytearray, next_hop: int, dst: int, now: float) -> None:
        if dst in self.addresses:
            # To ourselves: looped back and taken in by the next poll (bounded).
            if len(self.loopback) >= self.core.config.ip.loopback_limit:
                self.stats.drop(Ip6Drop.LOOPBACK_FULL)
                return
            self.loopback.append(bytes(packet))
            return
        if dst >> 120 == 0xFF:
            self.ether_output6(packet, multicast_mac(dst))
            return
        mac = self.nd6.nd6_resolve(next_hop, packet, now)
        if mac is not None:
            self.ether_output6(packet, mac)

    def ether_output6(self, packet: bytearray, dst_mac: bytes) -> None:
        """Write the Ethernet header of an IPv6 frame buffer and queue it."""
        ETHER_HEADER.pack_into(packet, 0, dst_mac, self.core.mac, ETHERTYPE_IPV6)
        self.core.transmit(packet)

    def input_loopback(self, now: float) -> int:
        """Take in the packets we sent to ourselves; return how many."""
        count = 0
        self.core.verify_checksums = False
        while self.loopback:
            self.ip6_input(self.loopback.popleft(), ETHER_HEADER_LEN, now, looped=True)
            count += 1
        return count
