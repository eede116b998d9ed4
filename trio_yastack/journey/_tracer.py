"""The trace points of a packet's journey, installed only while something follows it.

YAStack walked a packet through FreeBSD's functions with gdb breakpoints.  Here the same walk is
a trace, by the same names:

- in: ``rx_burst`` -> ``dispatch`` -> ``ring_enqueue`` / ``ring_dequeue`` -> ``ether_input`` ->
  ``arp_input`` | ``ip_input`` -> ``icmp_input`` | ``udp_input`` | ``tcp_input`` -> ``sbappend``
  -> ``accept`` -> ``recv`` (-> ``tls_handshake`` | ``tls_read``) -> ``app``
- out: (``tls_handshake`` | ``tls_write`` ->) ``send`` -> ``tcp_output`` -> ``ip_output`` ->
  ``arpresolve`` -> ``ether_output`` -> ``tx_burst``

Nothing here runs while tracing is off: a :class:`CoreTracer` that starts tracing swaps the
classes of *this core's* objects (the port, the poll loop, the stack core and its layers, the
rings, every TCP connection and listener) for subclasses whose methods record a hop and call
the original; stopping swaps them back.  So the untraced hot path is the stack's own code, and
costs only one attribute read per burst in the poll loop (``core.ether_input``, read there
each burst so that a traced one is seen).
The stack itself stays pure and knows nothing of this: the traced subclasses live here, and
reach the layers below only through the methods they wrap.  Each traced method has the name
and signature of the one it wraps; a traced class is refused (:class:`TraceInstallError`,
nothing swapped) when they no longer match, so a renamed method cannot silently drop a hop.

A journey is one frame's: an ``in`` journey starts at ``rx_burst`` (or ``ring_dequeue`` on the
core a frame was sent to) and ends when the stack is done with it, or, for data, when the
application has read its last byte (``recv``, then ``app``); an ``out`` journey starts at
``send`` (or ``tcp_output``, or ``ip_output`` for what no connection sent) and ends at
``tx_burst``.  Hop times come from ``time.perf_counter`` (CLOCK_MONOTONIC, the same in every
process), so the parts of a journey that crossed cores line up.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import trio

from trio_yastack.stack import IP6_KEY, StackCore, TcpConnection, TcpLayer, TcpListener, TcpState

from . import _tls
from ._filter import PROTO_TCP, PacketFilter, PacketInfo, packet_info
from ._journey import (
    ALL_LAYERS,
    TLS_LAYERS,
    CaptureSubscription,
    Hop,
    Journey,
    TcpSegment,
    TraceSubscription,
    frame_summary,
    parse_headers,
)
from ._overrides import TraceInstallError, check_overrides
from ._tls import TlsOp, current_tls_op

if TYPE_CHECKING:
    from trio_yastack.dispatch import PollLoop, SpscRing
    from trio_yastack.dispatch._percore import CoreLayout
    from trio_yastack.nic import Port
    from trio_yastack.stack._arp import ArpLayer
    from trio_yastack.stack._icmp import IcmpLayer
    from trio_yastack.stack._icmp6 import Icmp6Layer
    from trio_yastack.stack._ip import IpLayer
    from trio_yastack.stack._ip6 import Ip6Layer
    from trio_yastack.stack._nd6 import Nd6Layer
    from trio_yastack.stack._udp import UdpLayer

__all__ = ["CoreTracer", "TraceInstallError"]

#: journeys waiting for the application (data not yet read, connections not yet accepted)
MAX_WAITING = 2000
#: frames an ARP resolution holds, remembered with their journeys
MAX_HELD = 1024

_now = time.perf_counter


def _listening(tcp: TcpLayer, port: int) -> str:
    return "LISTEN" if port in tcp.listeners or port in tcp.listeners6 else "CLOSED"


def _state_name(state: int) -> str:
    try:
        return TcpState(state).name
    except ValueError:
        return str(state)


# -- the traced classes -----------------------------------------------------------------------
# Each is made a subclass of the class it traces (CoreTracer._traced_class, with ``_yas_tracer``,
# ``_yas_original`` and ``_yas_peer`` set on it), so the type checker sees each as a subclass
# of that class too, and checks its methods against the ones they wrap.
if TYPE_CHECKING:
    _PortBase: TypeAlias = Port
    _LoopBase: TypeAlias = PollLoop
    _RingBase: TypeAlias = SpscRing
    _CoreBase: TypeAlias = StackCore
    _ArpBase: TypeAlias = ArpLayer
    _IpBase: TypeAlias = IpLayer
    _IcmpBase: TypeAlias = IcmpLayer
    _UdpBase: TypeAlias = UdpLayer
    _Ip6Base: TypeAlias = Ip6Layer
    _Nd6Base: TypeAlias = Nd6Layer
    _Icmp6Base: TypeAlias = Icmp6Layer
    _TcpLayerBase: TypeAlias = TcpLayer
    _ListenerBase: TypeAlias = TcpListener
    _ConnBase: TypeAlias = TcpConnection
else:
    _PortBase = _LoopBase = _RingBase = _CoreBase = _ArpBase = _IpBase = object
    _IcmpBase = _UdpBase = _TcpLayerBase = _ListenerBase = _ConnBase = object
    _Ip6Base = _Nd6Base = _Icmp6Base = object


class _PortTrace(_PortBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[Port]]

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        frames = self._yas_original.rx_burst(self, queue, max_n)
        self._yas_tracer._on_rx_burst(queue, frames)
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        accepted = self._yas_original.tx_burst(self, queue, frames)
        self._yas_tracer._on_tx_burst(queue, frames, accepted)
        return accepted


class _LoopTrace(_LoopBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[PollLoop]]

    def _dispatch(self, frames: list[bytes], now: float) -> list[bytes]:
        self._yas_tracer._on_dispatch(frames)
        return self._yas_original._dispatch(self, frames, now)


class _RingTrace(_RingBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[SpscRing]]
    _yas_peer: ClassVar[int]  # the core at the other end

    def enqueue(self, frame: bytes | bytearray, flags: int = 0) -> bool:
        accepted = self._yas_original.enqueue(self, frame, flags)
        self._yas_tracer._on_ring_enqueue(self, frame, flags, accepted)
        return accepted

    def dequeue_burst(self, max_n: int) -> list[tuple[bytes, int]]:
        records = self._yas_original.dequeue_burst(self, max_n)
        if records:
            self._yas_tracer._on_ring_dequeue(self, records)
        return records


class _CoreTrace(_CoreBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[StackCore]]

    def ether_input(self, frame: bytes, now: float) -> None:
        tracer = self._yas_tracer
        journey = tracer._input_journey(frame)
        if journey is None:
            return self._yas_original.ether_input(self, frame, now)
        tracer.hop(journey, "ether_input")
        tracer.current_in = journey
        try:
            self._yas_original.ether_input(self, frame, now)
        finally:
            tracer.current_in = None
            tracer._input_done(journey)

    def ether_output(self, packet: bytearray, dst_mac: bytes) -> None:
        tracer = self._yas_tracer
        before = len(self.outbox)
        self._yas_original.ether_output(self, packet, dst_mac)
        tracer._on_ether_output(packet, dst_mac, self.outbox, before)

    def transmit(self, frame: bytearray) -> None:
        tracer = self._yas_tracer
        before = len(self.outbox)
        self._yas_original.transmit(self, frame)
        tracer._on_ether_output(frame, bytes(frame[0:6]), self.outbox, before)


class _ArpTrace(_ArpBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[ArpLayer]]

    def arp_input(self, frame: bytes, offset: int, now: float, *, answer: bool = True) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None:
            spa = IPv4Address(bytes(frame[offset + 14 : offset + 18])) if len(frame) >= offset + 28 else "?"
            tracer.hop(journey, "arp_input", f"from {spa}")
        self._yas_original.arp_input(self, frame, offset, now, answer=answer)


class _IpTrace(_IpBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[IpLayer]]

    def ip_input(self, frame: bytes, offset: int, now: float, looped: bool = False) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None:
            info = journey.info
            tracer.hop(
                journey, "ip_input", f"{IPv4Address(info.src)} > {IPv4Address(info.dst)} proto {info.proto}"
            )
        self._yas_original.ip_input(self, frame, offset, now, looped)

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
        tracer = self._yas_tracer
        previous = tracer.current_out
        tracer.current_out = tracer._begin_ip_output(packet, proto, dst)
        try:
            self._yas_original.ip_output(
                self, packet, proto, dst, now, ttl=ttl, tos=tos, dont_fragment=dont_fragment
            )
        finally:
            tracer.current_out = previous

    def _to_link(self, packet: bytearray, next_hop: int, dst: int, now: float) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_out
        if journey is None:
            return self._yas_original._to_link(self, packet, next_hop, dst, now)
        core = self.core
        if dst != core.ip and dst != 0xFFFFFFFF and dst != self.broadcast:
            entry = core.arp.cache.get(next_hop)
            state = "cached" if entry is not None and now < entry[1] else "unresolved: held, ARP request"
            tracer.hop(journey, "arpresolve", f"next hop {IPv4Address(next_hop)} {state}")
        tracer.emitted = False
        self._yas_original._to_link(self, packet, next_hop, dst, now)
        if not tracer.emitted:
            tracer._held(packet, journey)


class _IcmpTrace(_IcmpBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[IcmpLayer]]

    def icmp_input(self, buf: bytes, start: int, end: int, src: int, dst: int, now: float) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None:
            kind = f"type {buf[start]} code {buf[start + 1]}" if end - start >= 2 else "truncated"
            tracer.hop(journey, "icmp_input", kind)
        self._yas_original.icmp_input(self, buf, start, end, src, dst, now)


class _UdpTrace(_UdpBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[UdpLayer]]

    def udp_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None:
            tracer.hop(journey, "udp_input", f"{end - start - 8} bytes")
        self._yas_original.udp_input(self, buf, start, end, src, dst, ip_offset, now)

    def udp6_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None:
            tracer.hop(journey, "udp_input", f"{end - start - 8} bytes over IPv6")
        self._yas_original.udp6_input(self, buf, start, end, src, dst, ip_offset, now)


class _Ip6Trace(_Ip6Base):
    """IPv6's hops: ``ip6_input`` on the way in; on the way out ``ip6_output`` starts a journey
    (as ``ip_output`` does) and the ND layer's ``nd6_resolve`` is the hop after it."""

    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[Ip6Layer]]

    def ip6_input(self, frame: bytes, offset: int, now: float, looped: bool = False) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None and len(frame) >= offset + 40:
            src = IPv6Address(bytes(frame[offset + 8 : offset + 24]))
            dst = IPv6Address(bytes(frame[offset + 24 : offset + 40]))
            tracer.hop(journey, "ip6_input", f"{src} > {dst} next header {frame[offset + 6]}")
        self._yas_original.ip6_input(self, frame, offset, now, looped)

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
        tracer = self._yas_tracer
        previous = tracer.current_out
        tracer.current_out = tracer._begin_ip6_output(packet, proto, dst)
        try:
            self._yas_original.ip6_output(
                self, packet, proto, dst, now, src=src, hop_limit=hop_limit, traffic_class=traffic_class
            )
        finally:
            tracer.current_out = previous


class _Nd6Trace(_Nd6Base):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[Nd6Layer]]

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
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None:
            tracer.hop(journey, "nd6_input", f"type {icmp_type} from {IPv6Address(src)}")
        self._yas_original.nd6_input(
            self, icmp_type, code, rest, buf, start, end, src, dst, hop_limit, now, answer=answer
        )

    def nd6_resolve(self, next_hop: int, packet: bytearray, now: float) -> bytes | None:
        tracer = self._yas_tracer
        journey = tracer.current_out
        tracer.current_out = None  # a solicitation sent meanwhile is not this packet
        try:
            mac = self._yas_original.nd6_resolve(self, next_hop, packet, now)
        finally:
            tracer.current_out = journey
        if journey is not None:
            state = "held, neighbor solicitation" if mac is None else self.cache[next_hop].state
            tracer.hop(journey, "nd6_resolve", f"next hop {IPv6Address(next_hop)} {state}")
            if mac is None:
                tracer._held(packet, journey)
        return mac


class _Icmp6Trace(_Icmp6Base):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[Icmp6Layer]]

    def icmp6_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, hop_limit: int, ip_offset: int, now: float
    ) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is not None:
            kind = f"type {buf[start]} code {buf[start + 1]}" if end - start >= 2 else "truncated"
            tracer.hop(journey, "icmp6_input", kind)
        self._yas_original.icmp6_input(self, buf, start, end, src, dst, hop_limit, ip_offset, now)


class _TcpLayerTrace(_TcpLayerBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[TcpLayer]]

    def tcp_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is None or end - start < 20:
            return self._yas_original.tcp_input(self, buf, start, end, src, dst, ip_offset, now)
        sport = buf[start] << 8 | buf[start + 1]
        dport = buf[start + 2] << 8 | buf[start + 3]
        key = (dport, src, sport)
        connections = self.connections
        conn = connections.get(key)
        before = _state_name(conn.state) if conn is not None else _listening(self, dport)
        held_before = len(conn.rcvbuf) if conn is not None else 0
        segment = TcpSegment.from_frame(buf, start, end=end)
        hop = tracer.hop(journey, "tcp_input", f"{before} ->", segment=segment, conn=conn)
        self._yas_original.tcp_input(self, buf, start, end, src, dst, ip_offset, now)
        after_conn = connections.get(key)
        after = _state_name(after_conn.state) if after_conn is not None else _listening(self, dport)
        if conn is not None and after_conn is None:
            after = _state_name(conn.state)
        fields = f"seq {segment.seq} ack {segment.ack} [{segment.flags}] len {segment.payload_len}"
        hop.note = f"{before} -> {after}, {fields}"
        if after_conn is not None:
            grown = len(after_conn.rcvbuf) - (held_before if after_conn is conn else 0)
            if grown > 0:
                tracer.hop(
                    journey, "sbappend", f"{grown} bytes, {len(after_conn.rcvbuf)} in the receive buffer"
                )
                tracer._wait_for_read(after_conn, journey, grown)

    def tcp6_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        """TCP over IPv6 is the same ``tcp_input`` hop (as ``udp6_input`` is ``udp_input``), its
        connection found by the IPv6 key (``key6``: both addresses)."""
        tracer = self._yas_tracer
        journey = tracer.current_in
        if journey is None or end - start < 20:
            return self._yas_original.tcp6_input(self, buf, start, end, src, dst, ip_offset, now)
        sport = buf[start] << 8 | buf[start + 1]
        dport = buf[start + 2] << 8 | buf[start + 3]
        key = (dport, src | IP6_KEY | dst << 129, sport)  # key6(src, dst)
        connections = self.connections
        conn = connections.get(key)
        before = _state_name(conn.state) if conn is not None else _listening(self, dport)
        held_before = len(conn.rcvbuf) if conn is not None else 0
        segment = TcpSegment.from_frame(buf, start, end=end)
        hop = tracer.hop(journey, "tcp_input", f"{before} -> (over IPv6)", segment=segment, conn=conn)
        self._yas_original.tcp6_input(self, buf, start, end, src, dst, ip_offset, now)
        after_conn = connections.get(key)
        after = _state_name(after_conn.state) if after_conn is not None else _listening(self, dport)
        if conn is not None and after_conn is None:
            after = _state_name(conn.state)
        fields = f"seq {segment.seq} ack {segment.ack} [{segment.flags}] len {segment.payload_len}"
        hop.note = f"{before} -> {after}, {fields}, over IPv6"
        if after_conn is not None:
            grown = len(after_conn.rcvbuf) - (held_before if after_conn is conn else 0)
            if grown > 0:
                tracer.hop(
                    journey, "sbappend", f"{grown} bytes, {len(after_conn.rcvbuf)} in the receive buffer"
                )
                tracer._wait_for_read(after_conn, journey, grown)

    def _attach(self, conn: TcpConnection) -> None:
        self._yas_original._attach(self, conn)
        self._yas_tracer._swap_tcp(conn)

    def detach(self, conn: TcpConnection, was_state: int) -> None:
        self._yas_original.detach(self, conn, was_state)
        self._yas_tracer._on_detach(conn)

    def listen(self, port: int, backlog: int = 128) -> TcpListener:
        listener = self._yas_original.listen(self, port, backlog)
        self._yas_tracer._swap_tcp(listener)
        return listener

    def listen6(self, port: int, backlog: int = 128, v6only: bool = False) -> TcpListener:
        listener = self._yas_original.listen6(self, port, backlog, v6only)
        self._yas_tracer._swap_tcp(listener)
        return listener


class _ListenerTrace(_ListenerBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[TcpListener]]

    def connection_established(self, conn: TcpConnection) -> None:
        self._yas_original.connection_established(self, conn)
        tracer = self._yas_tracer
        if tracer.current_in is not None:
            tracer._wait_for_accept(conn, tracer.current_in)

    def accept(self) -> TcpConnection | None:
        conn = self._yas_original.accept(self)
        if conn is not None:
            self._yas_tracer._on_accept(conn)
        return conn


class _ConnTrace(_ConnBase):
    __slots__ = ()
    _yas_tracer: ClassVar[CoreTracer]
    _yas_original: ClassVar[type[TcpConnection]]

    def tcp_output(self, now: float, *, limited_transmit: bool = False) -> None:
        tracer = self._yas_tracer
        previous = tracer.out_prefix
        tracer.out_prefix = tracer._tcp_output_prefix(self)
        try:
            self._yas_original.tcp_output(self, now, limited_transmit=limited_transmit)
        finally:
            tracer.out_prefix = previous

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        self._yas_tracer._on_send(self, len(data))
        return self._yas_original.send(self, data, now)

    def receive(self, max_bytes: int, now: float) -> bytes | None:
        data = self._yas_original.receive(self, max_bytes, now)
        if data:
            self._yas_tracer._on_receive(self, len(data))
        return data


# -- the tracer -------------------------------------------------------------------------------
class _Read:
    """A journey's bytes in a connection's receive buffer that the application has yet to read."""

    __slots__ = ("journey", "left", "started")

    def __init__(self, journey: Journey, left: int) -> None:
        self.journey = journey
        self.left = left
        self.started = False  # its first bytes were read: the recv hop is recorded


class CoreTracer:
    """Tracing, breakpoints and capture for one core's stack (one per core, in its process).

    ``subscribe``, ``set_breaks`` and ``add_capture`` add followers; the trace points are
    installed while any trace subscription or breakpoint exists, the port's capture points while
    any capture does, and both are removed with the last one (``close`` removes everything).
    Everything it keeps is bounded.
    """

    def __init__(
        self,
        core: StackCore,
        port: Port,
        loop: PollLoop | None = None,
        *,
        core_id: int = 0,
        layout: CoreLayout | None = None,
    ) -> None:
        self.core = core
        self.port = port
        self.loop = loop
        self.core_id = core_id
        self.layout = layout
        self.subscriptions: list[TraceSubscription] = []
        self.captures: list[CaptureSubscription] = []
        self.breaks: frozenset[str] = frozenset()
        self.break_filter: PacketFilter | None = None
        self.breakpoint_hook: Callable[[], None] | None = None  # default: the builtin breakpoint()
        self.breaks_hit = 0
        self.journeys_emitted = 0
        self.journeys_dropped = 0
        self.current_in: Journey | None = None
        self.current_out: Journey | None = None
        self.out_prefix: tuple[list[Hop], PacketInfo, bool] | None = None
        self.emitted = False
        self._tracing = False
        self._port_traced = False
        self._swapped: dict[int, tuple[object, type]] = {}  # id -> (object, original class)
        self._classes: dict[tuple[type, type, tuple[tuple[str, object], ...]], type] = {}
        self._by_id: dict[int, tuple[bytes, Journey]] = {}  # frames of this burst not yet input
        self._by_key: dict[tuple[int, int], deque[Journey]] = {}  # frames from rings
        self._tx: dict[int, tuple[bytes | bytearray, Journey]] = {}
        self._held_frames: OrderedDict[int, tuple[bytearray, Journey]] = OrderedDict()
        self._sends: dict[TcpConnection, list[Hop]] = {}
        self._reads: dict[TcpConnection, deque[_Read]] = {}
        self._accepts: dict[TcpConnection, list[Journey]] = {}
        self._waiting: OrderedDict[Journey, None] = OrderedDict()
        self._to_restore: list[TcpConnection] = []
        self._update_at_next_burst = False
        self._serial = 0

    # -- public ----------------------------------------------------------------------------
    @property
    def tracing(self) -> bool:
        return self._tracing

    def subscribe(self, subscription: TraceSubscription) -> None:
        """Follow journeys for ``subscription`` (installs the trace points with the first one;
        ``TraceInstallError`` if they no longer match the stack, and nothing changes)."""
        self.subscriptions.append(subscription)
        self._update_or(lambda: self.subscriptions.remove(subscription))

    def unsubscribe(self, subscription: TraceSubscription) -> None:
        if subscription in self.subscriptions:
            self.subscriptions.remove(subscription)
        self._update()

    def set_breaks(self, layers: Iterable[str], packet_filter: PacketFilter | None = None) -> None:
        """Stop in the debugger when a packet matching ``packet_filter`` reaches one of ``layers``."""
        layers = frozenset(layers)
        unknown = layers - set(ALL_LAYERS)
        if unknown:
            raise ValueError(f"unknown layer(s) {', '.join(sorted(unknown))}; known: {', '.join(ALL_LAYERS)}")
        previous = self.breaks, self.break_filter
        self.breaks = layers
        self.break_filter = packet_filter

        def undo() -> None:
            self.breaks, self.break_filter = previous

        self._update_or(undo)

    def add_capture(self, capture: CaptureSubscription) -> None:
        self.captures.append(capture)
        self._update_or(lambda: self.captures.remove(capture))

    def remove_capture(self, capture: CaptureSubscription) -> None:
        if capture in self.captures:
            self.captures.remove(capture)
        self._update()

    def close(self) -> None:
        """Stop everything and put every class back."""
        self.subscriptions.clear()
        self.captures.clear()
        self.breaks = frozenset()
        self._update()

    def statistics(self) -> dict[str, Any]:
        return {
            "tracing": self._tracing,
            "subscriptions": len(self.subscriptions),
            "captures": len(self.captures),
            "breaks": sorted(self.breaks),
            "journeys_emitted": self.journeys_emitted,
            "journeys_dropped": self.journeys_dropped,
            "waiting": len(self._waiting),
        }

    # -- installing and removing the trace points -------------------------------------------
    def _update_or(self, undo: Callable[[], None]) -> None:
        try:
            self._update()
        except TraceInstallError:
            undo()  # _update checked every traced class before it swapped any: nothing to put back
            raise

    def _update(self) -> None:
        want_trace = bool(self.subscriptions or self.breaks)
        want_port = want_trace or bool(self.captures)
        if want_port and not self._port_traced:
            self._traced_class(type(self.port), _PortTrace)  # checked before the stack is touched
        if want_trace and not self._tracing:
            self._install_stack()
        elif not want_trace and self._tracing:
            self._remove_stack()
        if want_port and not self._port_traced:
            self._swap(self.port, _PortTrace)
            self._port_traced = True
        elif not want_port and self._port_traced:
            self._restore(self.port)
            self._port_traced = False

    def _traced_class(self, cls: type, mixin: type, **attributes: object) -> type:
        """``cls`` with ``mixin``'s methods over it, made once (and checked then: a method of
        ``mixin`` that ``cls`` lacks, or has with other parameters, is a ``TraceInstallError``).

        The methods call the original through ``_yas_original`` rather than ``super()``, so that
        one mixin serves classes with and without ``__slots__`` (an object's class may only be
        swapped for one of the same layout: no ``__slots__`` added to a class that has none, an
        empty one to one that has)."""
        key = (cls, mixin, tuple(sorted(attributes.items())))
        traced = self._classes.get(key)
        if traced is None:
            check_overrides(cls, mixin)
            namespace = {name: value for name, value in vars(mixin).items() if not name.startswith("__")}
            namespace.update(attributes, _yas_tracer=self, _yas_original=cls)
            if cls.__dictoffset__ == 0:  # a class with __slots__ and no __dict__
                namespace["__slots__"] = ()
            traced = type(f"Traced{cls.__name__}", (cls,), namespace)
            self._classes[key] = traced
        return traced

    def _swap(self, obj: object, mixin: type, **attributes: object) -> None:
        if id(obj) in self._swapped or getattr(type(obj), "_yas_tracer", None) is not None:
            return  # ours already, or another core's tracer in this process has it (a port shared in a test)
        original = type(obj)
        obj.__class__ = self._traced_class(original, mixin, **attributes)
        self._swapped[id(obj)] = (obj, original)

    def _swap_tcp(self, obj: TcpConnection | TcpListener) -> None:
        """A connection or listener the TCP layer made while tracing is on."""
        if self._tracing:
            self._swap(obj, _ConnTrace if isinstance(obj, TcpConnection) else _ListenerTrace)

    def _restore(self, obj: object) -> None:
        entry = self._swapped.pop(id(obj), None)
        if entry is not None and entry[0] is obj:
            obj.__class__ = entry[1]

    def _rings(self) -> list[tuple[SpscRing, int]]:
        """This core's rings, each with the core at its other end."""
        layout = self.layout
        if self.loop is None or layout is None:
            return []
        rings = [(ring, peer) for peer, ring in layout.rings_out.items()]
        for index, ring in enumerate(layout.rings_in):
            rings.append((ring, index if index < layout.core_id else index + 1))
        return rings

    def _install_stack(self) -> None:
        core = self.core
        tcp = core.tcp
        layers: list[tuple[object, type]] = [
            (core, _CoreTrace),
            (core.ip_layer, _IpTrace),
            (core.arp, _ArpTrace),
            (core.icmp, _IcmpTrace),
            (core.udp, _UdpTrace),
            (tcp, _TcpLayerTrace),
        ]
        if core.ip6 is not None:
            layers += [(core.ip6, _Ip6Trace), (core.ip6.nd6, _Nd6Trace), (core.ip6.icmp6, _Icmp6Trace)]
        if self.loop is not None and self.layout is not None:
            layers.append((self.loop, _LoopTrace))
        # Every traced class this trace needs, made and checked before anything is swapped: a
        # mismatch refuses the trace and leaves the stack as it was.
        for obj, mixin in layers:
            self._traced_class(type(obj), mixin)
        for cls in {TcpConnection, *map(type, tcp.connections.values())}:
            self._traced_class(cls, _ConnTrace)
        for cls in {TcpListener, *map(type, tcp.listeners.values()), *map(type, tcp.listeners6.values())}:
            self._traced_class(cls, _ListenerTrace)
        rings = self._rings()
        for ring, peer in rings:
            self._traced_class(type(ring), _RingTrace, _yas_peer=peer)
        _tls.install(self)  # checks trio.SSLStream's methods, or raises before it changes them
        self._tracing = True
        original_input = core.tcp_input
        for obj, mixin in layers:
            self._swap(obj, mixin)
        if original_input is not None and getattr(original_input, "__self__", None) is tcp:
            core.tcp_input = tcp.tcp_input  # ip_input calls the bound method kept on the core
        for conn in list(tcp.connections.values()):
            self._swap(conn, _ConnTrace)
        for listener in {*tcp.listeners.values(), *tcp.listeners6.values()}:
            self._swap(listener, _ListenerTrace)
        for ring, peer in rings:
            self._swap(ring, _RingTrace, _yas_peer=peer)

    def _remove_stack(self) -> None:
        _tls.uninstall(self)
        core = self.core
        for obj, original in list(self._swapped.values()):
            if obj is not self.port:
                obj.__class__ = original
        port_entry = self._swapped.get(id(self.port))
        self._swapped = {id(self.port): port_entry} if port_entry is not None else {}
        tcp = core.tcp
        if getattr(core.tcp_input, "__self__", None) is tcp:
            core.tcp_input = tcp.tcp_input
        self._tracing = False
        self.current_in = self.current_out = None
        self.out_prefix = None
        for journey in list(self._waiting):
            self._finish(journey, "tracing stopped")
        self._waiting.clear()
        self._reads.clear()
        self._accepts.clear()
        self._sends.clear()
        self._by_id.clear()
        self._by_key.clear()
        self._tx.clear()
        self._held_frames.clear()
        self._to_restore.clear()

    # -- journeys ---------------------------------------------------------------------------
    def _follow(self, info: PacketInfo, direction: str) -> tuple[bool, bool]:
        """Whether any subscription follows such a packet, and whether it may break."""
        wanted = any(sub.wants(info, direction) for sub in self.subscriptions)
        breakable = bool(self.breaks) and (self.break_filter is None or self.break_filter.match(info))
        return wanted or breakable, breakable

    def _new_journey(self, direction: str, info: PacketInfo, breakable: bool) -> Journey:
        self._serial += 1
        return Journey(f"{self.core_id}.{self._serial}", direction, self.core_id, info, breakable=breakable)

    def hop(self, journey: Journey, layer: str, note: str = "", **scope: Any) -> Hop:
        """Record that ``journey`` reached ``layer`` (and stop there if a breakpoint says so)."""
        hop = Hop(layer, _now(), self.core_id, note)
        journey.hops.append(hop)
        if layer in TLS_LAYERS:
            journey.tls = True
        if journey.breakable and layer in self.breaks:
            self._break(journey, layer, scope)
        return hop

    def _break(self, journey: Journey, layer: str, scope: dict[str, Any]) -> None:
        """The breakpoint: ``packet``, ``headers``, ``segment`` (at tcp_input), ``conn`` and
        ``journey`` are local variables of this frame, where the debugger stops."""
        import bdb

        self.breaks_hit += 1
        packet = bytes(journey.frame) if journey.frame is not None else b""
        headers = parse_headers(packet) if packet else {}
        segment = scope.get("segment")
        conn = scope.get("conn")
        hops = [hop.layer for hop in journey.hops]
        print(
            f"# yastack: break at {layer} (journey {journey.id_text()}, core {self.core_id}): "
            f"{journey.summary}\n"
            f"# in scope: packet, headers, segment, conn, journey, hops; 'c' goes on, 'q' stops breaking",
            flush=True,
        )
        hook = self.breakpoint_hook
        try:
            if hook is not None:
                hook()
            else:
                breakpoint()  # the journey stops here: inspect packet, headers, segment
            del packet, headers, segment, conn, hops  # what the debugger showed
        except bdb.BdbQuit:
            print("# yastack: breakpoints off (the debugger quit)", flush=True)
            self.breaks = frozenset()
            # Not _update() now: traced methods of this core are on the stack below us, and
            # putting their classes back under them would pull the floor away.  The next burst.
            self._update_at_next_burst = True

    def _emit(self, journey: Journey) -> None:
        journey.frame = None
        delivered = False
        for sub in list(self.subscriptions):
            if journey.direction not in sub.preset.directions:
                continue
            if sub.preset.tls_only and not journey.tls:
                continue
            if sub.filter is not None and not sub.filter.match(journey.info):
                continue
            sub.sink(journey)
            delivered = True
        if delivered:
            self.journeys_emitted += 1

    def _finish(self, journey: Journey, end: str = "") -> None:
        if end and not journey.end:
            journey.end = end
        self._waiting.pop(journey, None)
        self._emit(journey)

    def _wait(self, journey: Journey) -> None:
        journey.waiting += 1
        self._waiting[journey] = None
        while len(self._waiting) > MAX_WAITING:
            oldest, _ = self._waiting.popitem(last=False)
            self.journeys_dropped += 1
            oldest.waiting = 0
            self._emit_unwaited(oldest, "still waiting when the trace had too many")

    def _emit_unwaited(self, journey: Journey, end: str) -> None:
        journey.end = journey.end or end
        self._emit(journey)

    def _release(self, journey: Journey) -> None:
        journey.waiting -= 1
        if journey.waiting <= 0 and journey in self._waiting:
            self._finish(journey)

    # -- in ---------------------------------------------------------------------------------
    def _on_rx_burst(self, queue: int, frames: list[bytes]) -> None:
        if self._update_at_next_burst:
            self._update_at_next_burst = False
            self._update()
        if self._to_restore:
            self._restore_detached()
        if self.captures and frames:
            self._capture("in", frames)
        if not self._tracing:
            return
        if self._by_id:
            for _frame, journey in self._by_id.values():
                self._finish(journey, "not taken in")
            self._by_id.clear()
        count = len(frames)
        for index, frame in enumerate(frames):
            info = packet_info(frame)
            follow, breakable = self._follow(info, "in")
            if not follow:
                continue
            journey = self._new_journey("in", info, breakable)
            journey.summary = frame_summary(frame)
            journey.key = f"{zlib.crc32(frame):08x}"
            journey.frame = frame
            self._by_id[id(frame)] = (frame, journey)
            self.hop(journey, "rx_burst", f"queue {queue}, frame {index + 1} of {count}")

    def _on_dispatch(self, frames: list[bytes]) -> None:
        layout = self.layout
        if not self._by_id or layout is None:
            return
        from trio_yastack.dispatch._percore import ALL_CORES, flow_owner

        mask = layout.reta.size - 1
        for frame in frames:
            entry = self._by_id.get(id(frame))
            if entry is None:
                continue
            owner = flow_owner(frame, layout.key, layout.reta.entries, mask)
            where = "every core (ARP)" if owner == ALL_CORES else f"core {owner}"
            mine = " (this core)" if owner == layout.core_id else ""
            self.hop(entry[1], "dispatch", f"Toeplitz -> RETA -> {where}{mine}")

    def _on_ring_enqueue(
        self, ring: _RingTrace, frame: bytes | bytearray, flags: int, accepted: bool
    ) -> None:
        entry = self._by_id.get(id(frame))
        if entry is None:
            return
        journey = entry[1]
        copy = flags & 1  # COPY_FLAG: an ARP copy to learn from; the frame is also ours
        what = "copy " if copy else ""
        self.hop(
            journey,
            "ring_enqueue",
            f"{what}to core {ring._yas_peer}{'' if accepted else ' (ring full: dropped)'}",
        )
        if not copy:
            del self._by_id[id(frame)]
            self._finish(journey, f"continues on core {ring._yas_peer} as the frame {journey.key}")

    def _on_ring_dequeue(self, ring: _RingTrace, records: list[tuple[bytes, int]]) -> None:
        for frame, flags in records:
            if flags & 1:  # an ARP copy: learnt from, not input
                continue
            info = packet_info(frame)
            follow, breakable = self._follow(info, "in")
            if not follow:
                continue
            journey = self._new_journey("in", info, breakable)
            journey.summary = frame_summary(frame)
            journey.key = f"{zlib.crc32(frame):08x}"
            journey.frame = frame
            self.hop(journey, "ring_dequeue", f"from core {ring._yas_peer}, frame {journey.key}")
            self._by_key.setdefault((len(frame), zlib.crc32(frame)), deque()).append(journey)
            if len(self._by_key) > MAX_HELD:
                self._by_key.pop(next(iter(self._by_key)))

    def _input_journey(self, frame: bytes) -> Journey | None:
        entry = self._by_id.pop(id(frame), None)
        if entry is not None and entry[0] is frame:
            return entry[1]
        if self._by_key:
            key = (len(frame), zlib.crc32(frame))
            queue = self._by_key.get(key)
            if queue:
                journey = queue.popleft()
                if not queue:
                    del self._by_key[key]
                journey.frame = frame
                return journey
        return None

    def _input_done(self, journey: Journey) -> None:
        if journey.waiting <= 0:
            self._finish(journey)

    def _wait_for_read(self, conn: TcpConnection, journey: Journey, nbytes: int) -> None:
        self._reads.setdefault(conn, deque()).append(_Read(journey, nbytes))
        self._wait(journey)

    def _wait_for_accept(self, conn: TcpConnection, journey: Journey) -> None:
        self._accepts.setdefault(conn, []).append(journey)
        self._wait(journey)

    def _on_accept(self, conn: TcpConnection) -> None:
        note = "the listener hands the connection to the application"
        reading = [read.journey for read in self._reads.get(conn, ())]
        for journey in self._accepts.pop(conn, []):
            self.hop(journey, "accept", note, conn=conn)
            if journey not in reading:  # a journey with data goes on to recv, then the app
                self._app(journey, "accept")
            self._release(journey)
        for journey in reading:
            if not journey.hops or journey.hops[-1].layer != "accept":
                self.hop(journey, "accept", note, conn=conn)

    def _on_receive(self, conn: TcpConnection, nbytes: int) -> None:
        reads = self._reads.get(conn)
        if not reads:
            return
        op = current_tls_op.get()
        while reads and nbytes > 0:
            read = reads[0]
            journey = read.journey
            taken = min(nbytes, read.left)
            if not read.started:
                read.started = True
                self.hop(journey, "recv", f"{taken} of its bytes read by {_task_name()}", conn=conn)
            read.left -= taken
            nbytes -= taken
            if read.left > 0:
                break
            reads.popleft()
            if op is not None:
                op.journeys.append((self, journey))  # the TLS call decides when the application has it
            else:
                self._app(journey, "the bytes")
                self._release(journey)
        if not reads:
            self._reads.pop(conn, None)

    def _app(self, journey: Journey, what: str) -> None:
        self.hop(journey, "app", f"{what} reached {_task_name()}")

    def tls_done(self, op: TlsOp, note: str) -> None:
        """A TLS call returned: its reads' journeys took the TLS hop and reached the app."""
        for tracer, journey in op.journeys:
            if tracer is self:
                self.hop(journey, op.kind, note)
                if op.kind != "tls_handshake":
                    self._app(journey, "the plaintext")
                self._release(journey)

    def _on_detach(self, conn: TcpConnection) -> None:
        for read in self._reads.pop(conn, ()):
            read.journey.end = "the connection closed before the application read it"
            self._release(read.journey)
        for journey in self._accepts.pop(conn, ()):
            journey.end = "the connection closed before it was accepted"
            self._release(journey)
        self._sends.pop(conn, None)
        if id(conn) in self._swapped:
            self._to_restore.append(conn)  # not now: one of its own methods may be running

    def _restore_detached(self) -> None:
        for conn in self._to_restore:
            self._restore(conn)
        self._to_restore.clear()

    # -- out --------------------------------------------------------------------------------
    def _conn_info(self, conn: TcpConnection) -> PacketInfo:
        return PacketInfo(PROTO_TCP, self.core.ip, conn.remote_ip, conn.local_port, conn.remote_port, None, 0)

    def _on_send(self, conn: TcpConnection, nbytes: int) -> None:
        if conn in self._sends:
            return  # a send not yet output: its journey starts at the first one
        follow, breakable = self._follow(self._conn_info(conn), "out")
        if not follow:
            return
        hops: list[Hop] = []
        op = current_tls_op.get()
        if op is not None:
            hops.append(Hop(op.kind, op.started, self.core_id, "the TLS record layer writes"))
        hops.append(Hop("send", _now(), self.core_id, f"{nbytes} bytes from {_task_name()}"))
        self._sends[conn] = hops
        if len(self._sends) > MAX_HELD:
            self._sends.pop(next(iter(self._sends)))
        if breakable:
            journey = self._new_journey("out", self._conn_info(conn), True)
            journey.hops = list(hops)
            for hop in hops:
                if hop.layer in self.breaks:
                    self._break(journey, hop.layer, {"conn": conn})

    def _tcp_output_prefix(self, conn: TcpConnection) -> tuple[list[Hop], PacketInfo, bool] | None:
        info = self._conn_info(conn)
        sends = self._sends.pop(conn, None)
        follow, breakable = self._follow(info, "out")
        if not follow:
            return None
        hops = [*(sends or ()), Hop("tcp_output", _now(), self.core_id, f"state {_state_name(conn.state)}")]
        if breakable and "tcp_output" in self.breaks:
            journey = self._new_journey("out", info, True)
            journey.hops = list(hops)
            self._break(journey, "tcp_output", {"conn": conn})
        return hops, info, breakable

    def _begin_ip_output(self, packet: bytearray, proto: int, dst: int) -> Journey | None:
        # The transport header is written; the IP and Ethernet headers are ip_output's to write.
        info = PacketInfo(proto, self.core.ip, dst, length=len(packet))
        if proto in (6, 17) and len(packet) >= 38:
            sport = packet[34] << 8 | packet[35]
            dport = packet[36] << 8 | packet[37]
            flags = packet[47] if proto == 6 and len(packet) >= 48 else None
            info = PacketInfo(proto, self.core.ip, dst, sport, dport, flags, len(packet))
        follow, breakable = self._follow(info, "out")
        if not follow:
            return None
        journey = self._new_journey("out", info, breakable)
        prefix = self.out_prefix
        if prefix is not None:
            journey.hops = [Hop(h.layer, h.at, h.core, h.note) for h in prefix[0]]
            journey.tls = any(h.layer in TLS_LAYERS for h in journey.hops)
        journey.frame = packet
        self.hop(journey, "ip_output", f"to {IPv4Address(dst)} proto {proto}, {len(packet) - 14} bytes")
        return journey

    def _begin_ip6_output(self, packet: bytearray, proto: int, dst: int) -> Journey | None:
        # The upper-layer header is written at 54; the IPv6 and Ethernet headers are ip6_output's.
        info = PacketInfo(proto, 0, dst, length=len(packet), ip6=True)
        if proto in (6, 17) and len(packet) >= 58:
            sport, dport = packet[54] << 8 | packet[55], packet[56] << 8 | packet[57]
            info = PacketInfo(proto, 0, dst, sport, dport, None, len(packet), ip6=True)
        follow, breakable = self._follow(info, "out")
        if not follow:
            return None
        journey = self._new_journey("out", info, breakable)
        journey.frame = packet
        self.hop(
            journey, "ip6_output", f"to {IPv6Address(dst)} next header {proto}, {len(packet) - 14} bytes"
        )
        return journey

    def _held(self, packet: bytearray, journey: Journey) -> None:
        self._held_frames[id(packet)] = (packet, journey)
        while len(self._held_frames) > MAX_HELD:
            _, (_, oldest) = self._held_frames.popitem(last=False)
            self._finish(oldest, "dropped while held for ARP")

    def _on_ether_output(
        self, packet: bytearray, dst_mac: bytes, outbox: list[bytes | bytearray], before: int
    ) -> None:
        journey: Journey | None
        if packet[12:14] == b"\x08\x06":
            # ARP (a reply from arp_input, a request from arpresolve): a journey of its own,
            # even while an IP packet's journey is asking for the address
            info = packet_info(packet)
            follow, breakable = self._follow(info, "out")
            if not follow:
                return
            journey = self._new_journey("out", info, breakable)
        else:
            self.emitted = True
            journey = self.current_out
            if journey is None:
                held = self._held_frames.pop(id(packet), None)
                if held is None or held[0] is not packet:
                    return
                journey = held[1]
        if journey is None:
            return
        frames = outbox[before:]
        journey.summary = frame_summary(frames[0] if frames else packet)
        journey.info = packet_info(frames[0] if frames else packet)
        journey.frame = frames[0] if frames else packet
        segments = f", {len(frames)} frames (software GSO)" if len(frames) > 1 else ""
        if not frames:
            self.hop(journey, "ether_output", "outbox full: dropped")
            self._finish(journey, "dropped")
            return
        self.hop(journey, "ether_output", f"to {bytes(dst_mac).hex(':')}{segments}")
        for frame in frames:
            self._tx[id(frame)] = (frame, journey)

    def _on_tx_burst(self, queue: int, frames: Sequence[bytes], accepted: int) -> None:
        if self.captures and accepted:
            self._capture("out", frames[:accepted])
        if self._to_restore:
            self._restore_detached()
        if not self._tx:
            return
        done: set[int] = set()
        for index, frame in enumerate(frames):
            entry = self._tx.pop(id(frame), None)
            if entry is None or entry[0] is not frame:
                continue
            journey = entry[1]
            if id(journey) in done:
                continue
            done.add(id(journey))
            if index < accepted:
                self.hop(journey, "tx_burst", f"queue {queue}, frame {index + 1} of {len(frames)}")
                self._finish(journey)
            else:
                self.hop(journey, "tx_burst", "refused by the port: dropped")
                self._finish(journey, "dropped")
        for _frame, journey in self._tx.values():
            if id(journey) not in done:
                self._finish(journey, "not transmitted")
        self._tx.clear()

    # -- capture ----------------------------------------------------------------------------
    def _capture(self, direction: str, frames: Sequence[bytes]) -> None:
        stamp = time.time()
        for capture in self.captures:
            packet_filter = capture.filter
            for frame in frames:
                if packet_filter is None or packet_filter.match_frame(frame):
                    capture.sink(stamp, direction, bytes(frame))


def _task_name() -> str:
    try:
        name = trio.lowlevel.current_task().name
    except RuntimeError:
        return "the application"
    return f"task {name.rsplit('.', 1)[-1]!r}"
