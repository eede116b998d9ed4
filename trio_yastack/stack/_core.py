"""One instance of the user-space stack: everything one core runs, with no I/O of its own.

The runtime feeds it frames (``ether_input_burst``, or ``ether_input`` one by one) and the time
(``run_timers``), takes the frames it leaves in ``outbox``, wakes the owners of the objects in
``ready`` (sockets, listeners, echo endpoints), and sleeps until ``next_deadline()``. Around the
frames of one ``rx_burst`` it calls ``begin_burst``/``end_burst``: TCP then sends once per
connection at the burst's end (one ACK for many data segments, one ``tcp_output`` for many
ACKs). Nothing here imports trio, ``time`` or ``socket``.
"""

from __future__ import annotations

import errno
import math
import random
from collections.abc import Callable
from typing import Any

from trio_yastack.stack._native import tcp4_segment

from ._arp import ArpLayer
from ._config import StackConfig
from ._drops import EtherDrop
from ._icmp import IcmpLayer
from ._ip import IpLayer
from ._ip6 import ETHERTYPE_IPV6, Ip6Layer
from ._offload import VOUCHED, OffloadPacket
from ._stats import ArpStats, EtherStats, IcmpStats, IpStats, StackStatistics, TcpStats, UdpStats
from ._timers import TimerQueue
from ._udp import UdpLayer
from .tcp import TcpLayer
from .tcp._fastpath import CANDIDATE, CANDIDATE6, FAST_PATH_DEFAULT, UDP, UDP6, classify_burst, fast_input
from .tcp._tcp6 import TcpConnection6, predicted_input
from .tcp._timers import arm_delayed_acks
from .wire import WireError
from .wire.ethernet import (
    ETHER_HEADER,
    ETHER_HEADER_LEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_QINQ,
    ETHERTYPE_VLAN,
    parse_ethernet_header,
)
from .wire.tcp import TCP_SYN

__all__ = ["StackCore"]

_BROADCAST = b"\xff\xff\xff\xff\xff\xff"


class StackCore:
    """The stack of one core: Ethernet, ARP, IPv4 (with reassembly), ICMP, UDP and TCP, sans-IO.

    ``rng`` supplies every random choice (IP ids, ephemeral ports, echo ids, the keys of TCP's
    ISNs and SYN cookies), so a seeded instance is deterministic.
    """

    def __init__(self, config: StackConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.SystemRandom()
        iface = config.interface
        self.mac = bytes(iface.mac)
        self.ip = int(iface.address)
        self.gateway = int(iface.gateway) if iface.gateway is not None else 0
        self.mtu = iface.mtu
        #: whether the frame being processed needs its checksums verified (set per frame)
        self.verify_checksums = config.verify_checksums
        self._verify_unmarked = config.verify_checksums
        self.tx_checksum_offload = config.tx_checksum_offload
        self.tso_max_size = config.tso_max_size
        #: the port segments TCP/IPv6 TSO frames too (else ``tcp._tcp6`` cuts them)
        self.tso6 = config.tso6 and bool(config.tso_max_size)
        #: how large a TCP segment tcp_output may build: the port's TSO size, else 64 KB cut in
        #: software (GSO), else one MSS
        self.gso_max_size = config.tso_max_size or (0xFFFF if config.gso else 0)
        self.timers = TimerQueue()
        #: frames for the next ``tx_burst`` (bounded by ``config.outbox_limit``)
        self.outbox: list[bytes | bytearray] = []
        self.outbox_limit = config.outbox_limit
        #: objects (pcbs, echo endpoints) whose state changed since the runtime last looked
        #: (a dict used as an ordered set: wake-ups happen in the order things changed, so a seeded
        #: simulation repeats exactly, which a set ordered by object ids would not)
        self.ready: dict[Any, None] = {}
        self.stats_ether = EtherStats()
        self.stats_arp = ArpStats()
        self.stats_ip = IpStats()
        self.stats_icmp = IcmpStats()
        self.stats_udp = UdpStats()
        self.stats_tcp = TcpStats()
        #: inside a burst (``begin_burst``..``end_burst``), connections defer their output to the
        #: burst's end: many ACKs from one burst cost one pass of tcp_output, and many data
        #: segments one ACK (what Linux gets from GRO and FreeBSD from LRO)
        self.in_burst = False
        self.output_pending: dict[Any, None] = {}
        #: connections that set a delayed ACK's deadline inside a burst, their timer entry not yet
        #: made (``_timers.arm_delayed_acks``): the application's reply usually carries the ACK
        #: first; armed before the heap is read for a sleep, or run past the deadline (bounded,
        #: ``_timers.DELACK_PENDING_LIMIT``; answered ones stay until a pass forgets them)
        self.delack_pending: list[Any] = []
        #: the earliest deadline among them still waiting (``math.inf``: none known)
        self.delack_next = math.inf
        #: set by a runtime that calls :meth:`run_pending_output` every turn: application sends
        #: queue their connection instead of sending at once
        self.autocork = False
        #: autocorking (Linux's tcp_autocorking), set by a runtime that calls
        #: :meth:`release_corked` before it sleeps: tcp_output holds a sub-MSS tail of a send
        #: queue while a frame of the same connection waits in the outbox, so that the
        #: application's next write, made while the loop turns, joins it in a full segment
        self.cork_tails = False
        #: connections holding a tail -> the ``tx_gen`` it was held in (an ordered set)
        self.corked: dict[Any, int] = {}
        #: counts ``take_outbox`` calls: a connection whose ``tx_gen`` equals it has a frame in
        #: the outbox (what Linux reads from the qdisc's hold on the socket's memory)
        self.tx_gen = 0
        #: called with an address ARP gave up on (the TCP layer registers itself)
        self.unreachable_hooks: list[Callable[[int], None]] = []
        self.arp = ArpLayer(self)
        self.ip_layer = IpLayer(self)
        self.icmp = IcmpLayer(self)
        self.udp = UdpLayer(self)
        self.tcp = TcpLayer(self)
        self.tcp_input: Callable[..., None] | None = self.tcp.tcp_input
        self.tcp_ctlinput: Callable[..., bool] | None = self.tcp.tcp_ctlinput
        #: multicast MACs ``ether_input`` accepts besides ours and broadcast (IPv6's groups)
        self.group_macs: set[bytes] = set()
        #: our IPv6 addresses for the fast path's classifier, 16 bytes each, the ``fast_usable6``
        #: usable ones first (``Ip6Layer.addresses_changed`` keeps them; none without IPv6)
        self.fast_addresses6 = b""
        self.fast_usable6 = 0
        #: ``key6(0, address)`` of each usable address, in the classifier's order: a
        #: ``CANDIDATE6`` record's index into it is the part of the connection's key that is ours
        self.fast_keys6: tuple[int, ...] = ()
        #: IPv6, when the interface has an IPv6 address or ``config.ip6.enabled`` (else frames of
        #: that type stay unknown ethertypes, as before)
        self.ip6 = Ip6Layer(self) if config.ip6.enabled or iface.addresses6 else None
        #: whether ``ether_input_burst`` tries the established-connection fast path first
        #: (``stack/tcp/_fastpath.py``); off: every frame takes ``ether_input``
        self.fast_path = FAST_PATH_DEFAULT
        #: segments the fast path took (each also counted received at every layer it skipped)
        self.fast_path_segments = 0
        #: UDP datagrams the fast path took (queued on their socket, or dropped for a full queue)
        self.fast_path_datagrams = 0

    # -- the runtime's calls -----------------------------------------------------------------
    def start(self, now: float) -> None:
        """Bring the interface up: announce our address (gratuitous ARP)."""
        if self.config.arp.gratuitous_at_start:
            self.arp.announce()
        if self.ip6 is not None:
            self.ip6.start(now)  # DAD for our addresses (RFC 4862 5.4)

    def ether_input(self, frame: bytes, now: float) -> None:
        """A frame arrived from the port (FreeBSD ``ether_input``)."""
        stats = self.stats_ether
        stats.received += 1
        self.verify_checksums = self._verify_unmarked and frame.__class__ not in VOUCHED
        if len(frame) < ETHER_HEADER_LEN:
            stats.drop(EtherDrop.TOO_SHORT)
            return
        dst, _src, ethertype = ETHER_HEADER.unpack_from(frame, 0)
        if dst != self.mac and dst != _BROADCAST and dst not in self.group_macs:
            stats.drop(EtherDrop.NOT_FOR_US)
            return
        offset = ETHER_HEADER_LEN
        if ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ):
            try:
                _dst, _src, ethertype, tci, offset = parse_ethernet_header(frame)
            except WireError as exc:
                stats.drop(exc.reason)
                return
            if offset != ETHER_HEADER_LEN + 4 or tci & 0x0FFF:
                stats.drop(EtherDrop.UNKNOWN_VLAN)  # only priority-tagged frames (VLAN 0) are ours
                return
        if ethertype == ETHERTYPE_IPV4:
            self.ip_layer.ip_input(frame, offset, now)
        elif ethertype == ETHERTYPE_ARP:
            self.arp.arp_input(frame, offset, now)
        elif ethertype == ETHERTYPE_IPV6 and self.ip6 is not None:
            self.ip6.ip6_input(frame, offset, now)
        else:
            stats.drop(EtherDrop.UNKNOWN_ETHERTYPE if ethertype >= 0x0600 else EtherDrop.NOT_ETHERNET_II)

    def ether_input_burst(
        self, frames: list[bytes], now: float, on_error: Callable[[Exception], None] | None = None
    ) -> None:
        """The frames of one ``rx_burst``, in order: the established-connection fast path first
        (one classifying pass over the whole burst, in C when built; a sound UDP datagram is
        queued on its socket by ``udp_fast_input``; a TCP segment over IPv6 is taken by
        ``_tcp6.predicted_input``, with the ND reachability hint ``tcp6_input`` would give; a sound
        UDP datagram over IPv6 is queued by ``udp6_fast_input``), ``ether_input`` for every frame it
        declines.
        With ``on_error``, an exception from one frame is handed to it and the burst goes on (the
        runtime counts stack bugs per frame); without, it propagates.

        The fast path is skipped while a tracer has swapped this core's class (a traced frame
        must pass every layer's trace point) and when ``fast_path`` is off.
        """
        ether_input = self.ether_input
        if not self.fast_path or self.__class__ is not StackCore or self.tcp_input is None:
            for frame in frames:
                try:
                    ether_input(frame, now)
                except Exception as exc:
                    if on_error is None:
                        raise
                    on_error(exc)
            return
        udp = self.udp
        keys6 = self.fast_keys6  # (taken with the addresses the classifier is handed)
        records = classify_burst(
            frames, self.mac, self.ip, self.ip_layer.broadcast, self._verify_unmarked, self.fast_addresses6,
            self.fast_usable6, udp.src6,
        )  # fmt: skip
        connections = self.tcp.connections
        udp_fast_input = udp.udp_fast_input
        udp6_fast_input = udp.udp6_fast_input
        taken = udp_taken = taken6 = udp6_taken = 0
        for frame, record in zip(frames, records, strict=True):
            try:
                kind = record[0]
                if kind == CANDIDATE:  # demultiplex by (local port, remote ip, remote port)
                    conn = connections.get((record[3], record[1], record[2]))
                    if conn is not None:
                        if fast_input(conn, frame, record, now):
                            taken += 1
                            continue
                    elif record[6] == TCP_SYN and self.tcp.syn_input(frame, record, now):
                        taken += 1  # a connection request, to its listener
                        continue
                elif kind == UDP and udp_fast_input(frame, record):
                    udp_taken += 1
                    continue
                elif kind == CANDIDATE6 and (ip6 := self.ip6) is not None:  # keyed as key6(src, dst)
                    src = int.from_bytes(frame[22:38], "big")
                    conn = connections.get((record[3], src | keys6[record[1]], record[2]))
                    if conn is not None and conn.__class__ is TcpConnection6:
                        snd_una = conn.snd_una
                        _k, _s, _sp, _dp, seq, ack, flags, window, tsval, tsecr, start, end = record
                        if predicted_input(
                            conn, frame, start, end, seq, ack, flags, window, tsval, tsecr, now
                        ):
                            if conn.snd_una > snd_una:
                                ip6.nd6.nud_hint(src, now)  # as tcp6_input: forward progress (ND6_HINT)
                            taken6 += 1
                            continue
                elif kind == UDP6 and udp6_fast_input(frame, record):
                    udp6_taken += 1
                    continue
                ether_input(frame, now)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(exc)
        if taken or udp_taken:
            # What each layer would have counted for these frames on the Python path (UDP's
            # own counters are udp_fast_input's).
            self.fast_path_segments += taken
            self.fast_path_datagrams += udp_taken
            both = taken + udp_taken
            self.stats_ether.received += both
            stats_ip = self.stats_ip
            stats_ip.received += both
            stats_ip.delivered += both
            self.stats_tcp.segments_received += taken
        if taken6 and (ip6 := self.ip6) is not None:  # ether_input, ip6_input and tcp6_input's counters
            self.fast_path_segments += taken6
            self.stats_ether.received += taken6
            stats_ip6 = ip6.stats
            stats_ip6.received += taken6
            stats_ip6.delivered += taken6
            self.stats_tcp.segments_received += taken6
        if udp6_taken and (ip6 := self.ip6) is not None:  # ether_input and ip6_input's counters
            if udp.src6.pending:  # new sources, now that this burst's records are done with the table
                udp.src6.install()
            self.fast_path_datagrams += udp6_taken
            self.stats_ether.received += udp6_taken
            stats_ip6 = ip6.stats
            stats_ip6.received += udp6_taken
            stats_ip6.delivered += udp6_taken

    def learn_from_copy(self, frame: bytes, now: float) -> None:
        """A copy of a frame another core received (ARP, which every core must learn from):
        update the ARP cache, answer nothing."""
        if len(frame) >= ETHER_HEADER_LEN + 28 and frame[12:14] == b"\x08\x06":
            self.arp.arp_input(frame, ETHER_HEADER_LEN, now, answer=False)
        elif self.ip6 is not None and frame[12:14] == b"\x86\xdd":
            self.ip6.nd6_learn_from_copy(frame, now)

    def begin_burst(self) -> None:
        """Frames of one ``rx_burst`` follow: let transports send once, at :meth:`end_burst`."""
        self.in_burst = True

    def end_burst(self, now: float) -> None:
        """The burst is in: send what its segments made due (once per connection)."""
        self.in_burst = False
        self.run_pending_output(now)

    def run_pending_output(self, now: float) -> None:
        """Run tcp_output once for every connection that deferred it (a burst's segments, or
        application sends under ``autocork``)."""
        if self.output_pending:
            pending, self.output_pending = self.output_pending, {}
            for conn in pending:
                conn.tcp_output(now)

    def release_corked(self, now: float, before: int | None = None) -> None:
        """Send the tails tcp_output held (Linux releases them when the device queue drains; a
        poll loop, before it sleeps or a turn after it held them): all of them, or those held
        before ``tx_gen`` ``before``.  tcp_output does not hold a tail again here."""
        corked = self.corked
        if before is None:
            release: Any = corked
            self.corked = {}
        else:
            release = [conn for conn, gen in corked.items() if gen < before]
            for conn in release:
                del corked[conn]
        cork_tails, self.cork_tails = self.cork_tails, False
        try:
            for conn in release:
                conn.tcp_output(now)
        finally:
            self.cork_tails = cork_tails

    def run_timers(self, now: float) -> int:
        """Fire the timers due at ``now`` and take in datagrams we sent to ourselves."""
        if self.delack_pending and now >= self.delack_next:
            arm_delayed_acks(self, now)  # those due; the others wait for a reply to carry them
        fired = self.timers.run(now)
        if self.ip_layer.loopback:
            fired += self.ip_layer.input_loopback(now)
        if self.ip6 is not None and self.ip6.loopback:
            fired += self.ip6.input_loopback(now)
        return fired

    def next_deadline(self) -> float | None:
        """When :meth:`run_timers` next has work; ``None`` when no timer is set.  Datagrams we
        sent to ourselves are due at once (``-inf``): the poll loop's kick and its sleep read
        this, so a segment to our own address never waits for an unrelated wake-up."""
        if self.ip_layer.loopback:
            return -math.inf
        if self.delack_pending:
            arm_delayed_acks(self)
        return self.timers.next_deadline()

    def take_outbox(self) -> list[bytes | bytearray]:
        frames, self.outbox = self.outbox, []
        self.tx_gen += 1  # no connection has a frame in the new outbox
        return frames

    def take_ready(self) -> dict[Any, None]:
        ready, self.ready = self.ready, {}
        return ready

    def statistics(self) -> StackStatistics:
        return StackStatistics(
            self.stats_ether.snapshot(),
            self.stats_arp.snapshot(),
            self.stats_ip.snapshot(),
            self.stats_icmp.snapshot(),
            self.stats_udp.snapshot(),
            self.stats_tcp.snapshot(),
        )

    # -- the layers' calls -------------------------------------------------------------------
    def ether_output(self, packet: bytearray, dst_mac: bytes) -> None:
        """Write the Ethernet header of an IPv4 frame buffer and queue it (FreeBSD ``ether_output``)."""
        ETHER_HEADER.pack_into(packet, 0, dst_mac, self.mac, ETHERTYPE_IPV4)
        outbox = self.outbox  # transmit(), inline: every frame we send passes here
        if len(outbox) >= self.outbox_limit:
            self.stats_ether.drop(EtherDrop.OUTBOX_FULL)
            return
        if packet.__class__ is OffloadPacket:
            if packet.gso_size and not self.tso_max_size:
                # Software GSO (validate_xmit_skb -> skb_gso_segment): the port cannot segment,
                # so cut the segment here, every piece with its own headers and checksums.
                frames = tcp4_segment(packet, packet.gso_size)
                outbox.extend(frames)
                self.stats_ether.sent += len(frames)
                return
            outbox.append(packet)  # the port completes it (and segments it, with TSO)
        else:
            outbox.append(bytes(packet))
        self.stats_ether.sent += 1

    def transmit(self, frame: bytearray) -> None:
        if len(self.outbox) >= self.outbox_limit:
            self.stats_ether.drop(EtherDrop.OUTBOX_FULL)
            return
        # An offload packet goes as it is (its type carries the marks the port needs, and a
        # 64 KB TSO segment is not worth a copy); other frames leave as immutable bytes.
        self.outbox.append(frame if frame.__class__ is OffloadPacket else bytes(frame))
        self.stats_ether.sent += 1

    def mark_ready(self, owner: Any) -> None:
        self.ready[owner] = None

    def reached_through(self, next_hop: int, remote_ip: int) -> bool:
        """Whether packets to ``remote_ip`` leave through ``next_hop`` (itself, or the gateway
        for an off-link address)."""
        if remote_ip == next_hop:
            return True
        ip_layer = self.ip_layer
        return next_hop == self.gateway != 0 and remote_ip & ip_layer.netmask != ip_layer.network

    def host_unreachable(self, ip: int) -> None:
        """ARP gave up on ``ip``: tell the transports (connected UDP sockets get EHOSTUNREACH).

        When ``ip`` is the gateway, every peer reached through it is unreachable too.
        """
        for pcb in self.udp.pcbs.values():
            if pcb.remote_port and self.reached_through(ip, pcb.remote_ip):
                pcb.so_error = errno.EHOSTUNREACH
                self.mark_ready(pcb)
        for hook in self.unreachable_hooks:
            hook(ip)
