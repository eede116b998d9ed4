"""TCP over IPv6 with the same TCP code (FreeBSD's ``tcp6_input``/``tcp6_output`` share
``tcp_input.c`` and ``tcp_output.c`` with IPv4 the same way).

The TCP layer keys a connection by ``(local port, remote ip, remote port)`` and hands the remote
address to every function that sends.  An IPv6 connection takes part in that with a key
(:func:`key6`) that holds both its addresses: the peer's 128-bit address in the low bits,
:data:`IP6_KEY` (bit 128) set, and our own address above it (``<< 129``).  No IPv4 address can
equal such a key, so the demultiplexing tables, TIME_WAIT, the RST and challenge-ACK paths and
``tcp_ctlinput`` serve both families unchanged, and the IPv4 hot path pays nothing (no family
test, no extra field read); and because our address is in it, a stack with several IPv6
addresses (link-local, global, more) tells ``[A]:p <-> [P]:q`` from ``[B]:p <-> [P]:q``, as a
kernel does (an IPv4 stack has one address, which its keys leave out).  ``key & _ADDRESS`` is
the peer, ``key >> 129`` our address.  What differs is where a segment leaves and what the
headers cost:

- :class:`TcpConnection6` overrides the one method every segment of a connection leaves by,
  ``_checksum_and_send``: the IPv6 pseudo-header (RFC 8200 8.1) and ``ip6_output`` from the
  connection's own source address; and two class constants: the MSS is the MTU less 60 bytes
  of headers (RFC 8200 8.3), and a Packet Too Big never lowers the path MTU below 1280.
- :func:`tcp6_checksum_and_send` is that bottom half; the TCP layer's stateless segments (RST,
  the SYN-ACK of a SYN cookie, a TIME_WAIT ACK) reach it with the keyed remote address.

Segments are built as for IPv4, after ``FRAME_HEADROOM`` (Ethernet + IPv4) bytes, and the bottom
half copies them behind IPv6's 20 bytes more headroom -- all but the one a bulk sender sends
most: :meth:`TcpConnection6._send_data_segment` (the twin of ``_output._send_data_segment``)
builds a data segment with timestamps behind IPv6's headroom from the start, so its payload is
copied once, from the send buffer into the frame, as over IPv4.  (The copy of each 64 KB TSO
segment, with the zeroing of its new buffer, was most of the CPU a bulk transfer spent per GB
over IPv6 beyond IPv4's: the kernel's side of the TAP write costs the same for both families.)
A TSO segment (``gso_size``) goes to the port whole when it segments TCP/IPv6 (``core.tso6``: a
TAP with its virtio-net header), its checksum field holding the pseudo-header sum; for any other
port it is cut in software into ``gso_size`` segments, each with its own checksum, as Linux's
``tcp_gso_segment`` does (FIN and PSH on the last only): by ``native/gso.c``'s
``yas_tcp6_segment`` (``_native.tcp6_segment``) when the frame is finished from the template, as
``ether_output`` cuts IPv4's, else here in Python before ``ip6_output`` (a traced core passes
every piece through it).
"""

from __future__ import annotations

import errno
from ipaddress import IPv6Address
from typing import TYPE_CHECKING

from .._drops import TcpDrop
from .._ip import FRAME_HEADROOM
from .._native import sum16, tcp6_segment
from .._nd6 import REACHABLE
from .._offload import OffloadPacket
from ..wire.ethernet import ETHER_HEADER, ETHER_HEADER_LEN
from ..wire.ipv4 import IPPROTO_TCP
from ..wire.ipv6 import IPV6_HEADER, IPV6_HEADER_LEN, pseudo_header_sum6
from ..wire.tcp import TCP_FIN, TCP_PSH
from ._buffers import NO_SACKS
from ._conn import TcpConnection
from ._fastpath import ack_and_data_input
from ._output import _ACK_WITH_TIMESTAMPS
from ._states import ESTABLISHED, TcpState

if TYPE_CHECKING:
    from .._core import StackCore
    from .._ip6 import Ip6Layer
    from .._stats import TcpStats
    from ._layer import TcpLayer

__all__ = [
    "IP6_KEY",
    "LOCAL6_SHIFT",
    "TcpConnection6",
    "format_remote",
    "key6",
    "tcp6_checksum_and_send",
    "tcp6_output_frame",
]

#: the mark of an IPv6 connection in the TCP layer's keys: ``peer | IP6_KEY | ours << 129``
IP6_KEY = 1 << 128
#: where our own address sits in an IPv6 key (``key >> LOCAL6_SHIFT``)
LOCAL6_SHIFT = 129
_ADDRESS = IP6_KEY - 1
_MASK = 0xFFFFFFFF
#: ``_ip6.FRAME_HEADROOM6`` (not imported: ``_icmp6`` imports this module for ``IP6_KEY``)
FRAME_HEADROOM6 = ETHER_HEADER_LEN + IPV6_HEADER_LEN
ETHERTYPE_IPV6 = 0x86DD
_MASK64 = (1 << 64) - 1
#: a data segment's headers behind IPv6's headroom: Ethernet + IPv6 + TCP with timestamps
_HEADERS6 = FRAME_HEADROOM6 + 32
#: IPv6's minimum link MTU (RFC 8200 5): the floor a Packet Too Big can lower a path to
IPV6_MIN_MTU = 1280


def key6(remote: int, local: int) -> int:
    """The TCP layer's remote key of an IPv6 connection between our address ``local`` and the
    peer's ``remote`` (both plain 128-bit addresses).  (``StackCore.ether_input_burst`` writes
    the same expression out, for a segment the classifier found a ``CANDIDATE6``.)"""
    return remote | IP6_KEY | local << LOCAL6_SHIFT


def format_remote(remote_ip: int) -> str:
    """A remote address of the TCP layer (IPv4, or IPv6 with :data:`IP6_KEY`) as text."""
    if remote_ip & IP6_KEY:
        return f"[{IPv6Address(remote_ip & _ADDRESS)}]"
    from ipaddress import IPv4Address

    return str(IPv4Address(remote_ip))


class TcpConnection6(TcpConnection):
    """A TCP connection to an IPv6 peer: ``remote_ip`` is its key (:func:`key6`: the peer's
    address with :data:`IP6_KEY`, ours above), ``local_ip6`` our address it talks to (the
    destination of its SYN, or the source chosen for an active open), the key's upper part."""

    __slots__ = ("_header6", "_mac6", "_pseudo6", "local_ip6")

    # MSS from the MTU less IPv6 + TCP headers (RFC 8200 8.3); PMTU never below 1280 (RFC 8201 4)
    IP_TCP_HEADERS = 60
    MIN_PMTU = IPV6_MIN_MTU

    def __init__(
        self,
        layer: TcpLayer,
        local_port: int,
        remote_ip: int,
        remote_port: int,
        iss: int,
        *,
        local_ip6: int,
        send_buffer: int = 0,
        receive_buffer: int = 0,
    ) -> None:
        self.local_ip6 = local_ip6
        remote = remote_ip & _ADDRESS
        #: the pseudo-header sum but for the length (RFC 8200 8.1): the same for every segment
        self._pseudo6 = pseudo_header_sum6(local_ip6, remote, IPPROTO_TCP, 0)
        #: Ethernet + IPv6 header of this connection's frames to the neighbour at ``_mac6``
        #: (the payload length filled in per frame), made when the neighbour is first known
        self._header6 = b""
        self._mac6 = b""
        super().__init__(
            layer,
            local_port,
            remote_ip,
            remote_port,
            iss,
            send_buffer=send_buffer,
            receive_buffer=receive_buffer,
        )

    def __repr__(self) -> str:
        return (
            f"<TcpConnection6 [{IPv6Address(self.local_ip6)}]:{self.local_port} <-> "
            f"{format_remote(self.remote_ip)}:{self.remote_port} {TcpState(self.state).name}>"
        )

    def set_mss(self, mss: int) -> None:
        """The base's, within the path MTU to the peer ``ip6`` already knows (a Packet Too Big
        about an earlier connection, RFC 8201 5.2: the MSS of a new connection starts there)."""
        ip6 = self.core.ip6
        if ip6 is not None and ip6.pmtu:
            mss = min(mss, ip6.path_mtu(self.remote_ip & _ADDRESS, self.last_activity) - self.IP_TCP_HEADERS)
        super().set_mss(mss)

    def _checksum_and_send(self, packet: bytearray, tcp_len: int, now: float) -> None:
        """The bottom of every segment: predicted (:meth:`_frame_predicted6`), else through
        :func:`tcp6_checksum_and_send` and ``ip6_output``."""
        if self._frame_predicted6(packet, tcp_len, now):
            return
        error = tcp6_checksum_and_send(
            self.core, self.stats, packet, tcp_len, self.remote_ip & _ADDRESS, now, src=self.local_ip6
        )
        if error:
            self.soft_error = error

    def _frame_predicted6(self, packet: bytearray, tcp_len: int, now: float) -> bool:
        """IPv6's twin of ``_output._headers_predicted`` for a segment built behind IPv4's
        headroom: the frame written whole from the connection's header template
        (:meth:`_link_header6`), its checksum and the frame queued -- what ``ip6_output`` ->
        ``nd6_resolve`` -> ``ether_output6`` do, with their counters.  False (nothing written,
        nothing counted) when the template declines, which the general path then sends."""
        core = self.core
        header = self._link_header6(core, tcp_len, now)
        if header is None:
            return False
        frame = bytearray(header)
        frame += memoryview(packet)[FRAME_HEADROOM : FRAME_HEADROOM + tcp_len]
        frame[18] = tcp_len >> 8  # the payload length
        frame[19] = tcp_len & 0xFF
        frame[FRAME_HEADROOM6 + 16] = frame[FRAME_HEADROOM6 + 17] = 0  # (an offload's partial sum)
        field = ~sum16(frame, FRAME_HEADROOM6, tcp_len, self._pseudo6 + tcp_len) & 0xFFFF
        frame[FRAME_HEADROOM6 + 16] = field >> 8
        frame[FRAME_HEADROOM6 + 17] = field & 0xFF
        self.stats.segments_sent += 1
        core.ip6.stats.sent += 1  # type: ignore[union-attr]  # _link_header6 found the layer
        core.transmit(frame)
        return True

    def _link_header6(self, core: StackCore, size: int, now: float) -> bytes | None:
        """The Ethernet + IPv6 header of this connection's next frame (the payload length left
        for the caller), for a segment of ``size`` bytes on the wire: to a neighbour whose entry
        is REACHABLE (an entry in the neighbour cache is on-link, RFC 4861 5.1), with no path MTU
        of its own, a segment that fits the link MTU, on an untraced core with room in the
        outbox.  ``None`` for everything else: the general path (``ip6_output``) sends it."""
        ip6 = core.ip6
        if ip6 is None or hasattr(core.__class__, "_yas_tracer"):
            return None
        dst = self.remote_ip & _ADDRESS
        entry = ip6.nd6.cache.get(dst)
        if (
            size > ip6.link_mtu - IPV6_HEADER_LEN
            or entry is None
            or entry.state != REACHABLE
            or now >= entry.reachable_until
            or dst in ip6.pmtu
            or len(core.outbox) >= core.outbox_limit
        ):
            return None
        mac = entry.mac
        if mac != self._mac6:
            header = bytearray(FRAME_HEADROOM6)
            ETHER_HEADER.pack_into(header, 0, mac, core.mac, ETHERTYPE_IPV6)
            local = self.local_ip6
            IPV6_HEADER.pack_into(
                header, ETHER_HEADER_LEN, 6 << 28, 0, IPPROTO_TCP, ip6.config.default_hop_limit,
                local >> 64, local & _MASK64, dst >> 64, dst & _MASK64,
            )  # fmt: skip
            self._header6, self._mac6 = bytes(header), mac
        return self._header6

    def _send_data_segment(self, seq: int, length: int, flags: int, now: float) -> None:
        """IPv6's twin of ``_output._send_data_segment`` (data with timestamps and no other
        option: one MSS or less, or a TSO segment of whole MSS-sized pieces), built behind IPv6's
        headroom so that its payload is copied once, from the send buffer into the frame.  With
        the neighbour's template (:meth:`_link_header6`) the frame is finished here; otherwise
        :func:`tcp6_output_frame` sends it through ``ip6_output``.  A port that completes TCP/IPv6
        checksums (``core.tso6``) gets an ``OffloadPacket`` (the field: the pseudo-header sum),
        any other a frame with its checksum whole, or a TSO segment's pieces (``tcp6_segment``)."""
        rcv_nxt = self.rcv_nxt
        scale = self.rcv_scale
        wire_window = self._receive_window() >> scale
        edge = rcv_nxt + (wire_window << scale)  # _acknowledged(), inline
        if edge > self.rcv_adv:
            self.rcv_adv = edge
        self.last_ack_sent = rcv_nxt
        self.ack_now = False
        self.segs_unacked = 0
        self.t_delack = 0.0
        tcp_len = 32 + length
        core = self.core
        offload = core.tso6
        # as _send_data_segment: a payload longer than one MSS is a TSO segment
        gso_size = self.mss if length > self.mss else 0
        packet = OffloadPacket(_HEADERS6, gso_size) if offload else bytearray(_HEADERS6)
        self.sndbuf.append_to(packet, seq, length)
        _ACK_WITH_TIMESTAMPS.pack_into(
            packet, FRAME_HEADROOM6, self.local_port, self.remote_port, seq & _MASK, rcv_nxt & _MASK,
            0x80, flags, wire_window, 0, 0, 0x0101080A, (int(now * 1000) + self.ts_offset) & _MASK,
            self.ts_recent & _MASK,
        )  # fmt: skip
        header = self._link_header6(core, 32 + gso_size if gso_size else tcp_len, now)
        if header is not None:
            packet[:FRAME_HEADROOM6] = header
            packet[18] = tcp_len >> 8  # the payload length
            packet[19] = tcp_len & 0xFF
            if gso_size and not offload:
                # Software GSO, as ether_output does for IPv4 (validate_xmit_skb ->
                # skb_gso_segment): cut in C, each piece with its own length, sequence number
                # and checksum; counted as ip6_output -> ether_output6 count the pieces.  (As
                # there, the outbox's room was checked for the first piece: a segment's pieces
                # go together, at most 64 KB / MSS over the limit.)
                frames = tcp6_segment(packet, gso_size)
                core.outbox.extend(frames)
                count = len(frames)
                self.stats.segments_sent += count
                core.ip6.stats.sent += count  # type: ignore[union-attr]  # _link_header6 found the layer
                core.stats_ether.sent += count
                return
            if offload:  # CHECKSUM_PARTIAL: the folded pseudo-header sum
                pseudo = self._pseudo6 + tcp_len
                pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
                field = (pseudo & 0xFFFF) + (pseudo >> 16)
            else:
                field = ~sum16(packet, FRAME_HEADROOM6, tcp_len, self._pseudo6 + tcp_len) & 0xFFFF
            packet[FRAME_HEADROOM6 + 16] = field >> 8
            packet[FRAME_HEADROOM6 + 17] = field & 0xFF
            # counted as the segments the wire will carry, as Linux counts OutSegs
            self.stats.segments_sent += (length + gso_size - 1) // gso_size if gso_size else 1
            core.ip6.stats.sent += 1  # type: ignore[union-attr]  # _link_header6 found the layer
            core.transmit(packet)
            return
        error = tcp6_output_frame(
            core, self.stats, packet, gso_size, self.remote_ip & _ADDRESS, now, src=self.local_ip6
        )
        if error:
            self.soft_error = error


def predicted_input(
    conn: TcpConnection6,
    buf: bytes,
    start: int,
    end: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    tsval: int,
    tsecr: int,
    now: float,
) -> bool:
    """The established-connection prediction of ``_fastpath.fast_input`` for a segment that came
    over IPv6 (ACK, maybe PSH, no options but aligned timestamps): the same declines, then the
    connection's own header prediction, then ``ack_and_data_input``.  Two callers checked the
    segment first: ``tcp6_input`` on the Python path, and ``StackCore.ether_input_burst`` for a
    frame the classifier (C, or its twin) found a ``CANDIDATE6``; each gives the ND hint after.
    ``False``: nothing changed, the general path runs."""
    if (
        conn.state != ESTABLISHED
        or conn.in_recovery
        or conn.rxtshift
        or conn.frto
        or (conn.scoreboard is not NO_SACKS and len(conn.scoreboard))  # as fast_input: no __len__ call
    ):
        return False
    conn.last_activity = now  # as segment_arrives does first (the slow path would repeat it)
    conn.keep_probes = 0
    # data with a new ACK (a request) is never header prediction's: as fast_input, not asked
    if (end == start or ack == conn.snd_una & _MASK) and conn.header_prediction(
        buf, start, end, seq, ack, flags, window, tsval, tsecr, now
    ):
        return True
    return ack_and_data_input(conn, buf, start, end, seq, ack, flags, window, tsval, tsecr, now)


def tcp6_checksum_and_send(
    core: StackCore, stats: TcpStats, packet: bytearray, tcp_len: int, dst: int, now: float, *, src: int = 0
) -> int:
    """Send the TCP segment at ``packet[FRAME_HEADROOM:]`` (built as for IPv4) over IPv6 to
    ``dst`` (a plain 128-bit address) from ``src`` (0: the source ``ip6_output`` would pick):
    a TSO segment for a port that does not segment TCP/IPv6 cut in software, anything else
    copied behind IPv6's headroom and sent as :func:`tcp6_output_frame` sends it.  Returns 0,
    or the errno of a routing failure (counted as ``output_error``)."""
    view = memoryview(packet)[FRAME_HEADROOM : FRAME_HEADROOM + tcp_len]
    gso_size = packet.gso_size if packet.__class__ is OffloadPacket else 0
    if gso_size and not core.tso6:
        return _cut6(core, stats, view, gso_size, dst, now, src)
    frame = (
        OffloadPacket(FRAME_HEADROOM6 + tcp_len, gso_size)
        if gso_size
        else bytearray(FRAME_HEADROOM6 + tcp_len)
    )
    frame[FRAME_HEADROOM6:] = view
    return tcp6_output_frame(core, stats, frame, gso_size, dst, now, src=src)


def tcp6_output_frame(
    core: StackCore, stats: TcpStats, frame: bytearray, gso_size: int, dst: int, now: float, *, src: int = 0
) -> int:
    """Send the TCP segment at ``frame[FRAME_HEADROOM6:]`` (a frame buffer, built behind IPv6's
    headroom) over IPv6 to ``dst`` from ``src`` (0: the source ``ip6_output`` would pick),
    through ``ip6_output``: a TSO segment (``gso_size``) whole to a port that segments TCP/IPv6
    (``core.tso6``), else cut here in software; an ``OffloadPacket`` with its checksum field
    holding the folded pseudo-header sum (CHECKSUM_PARTIAL, as ``tcp_checksum_and_send`` leaves
    an IPv4 one), any other frame checksummed whole.  Returns 0, or the errno of a routing
    failure (counted as ``output_error``)."""
    tcp_len = len(frame) - FRAME_HEADROOM6
    payload = tcp_len - ((frame[FRAME_HEADROOM6 + 12] >> 4) << 2)
    if gso_size and payload > gso_size and not core.tso6:
        return _cut6(core, stats, memoryview(frame)[FRAME_HEADROOM6:], gso_size, dst, now, src)
    try:
        ip6, src = _source6(core, dst, src)
        if frame.__class__ is not OffloadPacket:
            frame[FRAME_HEADROOM6 + 16] = frame[FRAME_HEADROOM6 + 17] = 0  # (an offload's partial sum)
            _send6(ip6, stats, frame, src, dst, now)
            return 0
        pseudo = pseudo_header_sum6(src, dst, IPPROTO_TCP, tcp_len)
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        field = (pseudo & 0xFFFF) + (pseudo >> 16)
        frame[FRAME_HEADROOM6 + 16] = field >> 8
        frame[FRAME_HEADROOM6 + 17] = field & 0xFF
        # counted as the segments the wire will carry, as Linux counts OutSegs
        stats.segments_sent += (payload + gso_size - 1) // gso_size if gso_size and payload else 1
        ip6.ip6_output(frame, IPPROTO_TCP, dst, now, src=src)
    except OSError as exc:
        stats.drop(TcpDrop.OUTPUT_ERROR)
        return exc.errno or errno.EHOSTUNREACH
    return 0


def _source6(core: StackCore, dst: int, src: int) -> tuple[Ip6Layer, int]:
    """The IPv6 layer and the source address (``src``, or the one it picks for ``dst``);
    ``OSError`` when there is none."""
    ip6 = core.ip6
    if ip6 is None:
        raise OSError(errno.ENETUNREACH, "Network is unreachable (no IPv6 on this stack)")
    return ip6, src or ip6.select_source(dst)


def _cut6(
    core: StackCore, stats: TcpStats, segment: memoryview, gso_size: int, dst: int, now: float, src: int
) -> int:
    """A TSO segment (``segment``: its TCP header and payload) cut in software for a port that
    does not segment TCP/IPv6, each piece checksummed and sent through ``ip6_output``; 0 or an
    errno, as :func:`tcp6_output_frame`."""
    try:
        ip6, src = _source6(core, dst, src)
        for piece in _segments(segment, (segment[12] >> 4) << 2, gso_size):
            _send6(ip6, stats, piece, src, dst, now)
    except OSError as exc:
        stats.drop(TcpDrop.OUTPUT_ERROR)
        return exc.errno or errno.EHOSTUNREACH
    return 0


def _send6(ip6: Ip6Layer, stats: TcpStats, frame: bytearray, src: int, dst: int, now: float) -> None:
    tcp_len = len(frame) - FRAME_HEADROOM6
    field = (
        ~sum16(frame, FRAME_HEADROOM6, tcp_len, pseudo_header_sum6(src, dst, IPPROTO_TCP, tcp_len)) & 0xFFFF
    )
    frame[FRAME_HEADROOM6 + 16] = field >> 8
    frame[FRAME_HEADROOM6 + 17] = field & 0xFF
    stats.segments_sent += 1
    ip6.ip6_output(frame, IPPROTO_TCP, dst, now, src=src)


def _segments(view: memoryview, header_len: int, gso_size: int) -> list[bytearray]:
    """A TSO segment cut into frames of ``gso_size`` payload bytes: each a copy of the header
    with its sequence number advanced, FIN and PSH left to the last (``tcp_gso_segment``)."""
    header = bytes(view[:header_len])
    seq = int.from_bytes(header[4:8], "big")
    flags = header[13]
    payload = view[header_len:]
    total = len(payload)
    frames = []
    for start in range(0, total, gso_size):
        piece = payload[start : start + gso_size]
        frame = bytearray(FRAME_HEADROOM6 + header_len + len(piece))
        at = FRAME_HEADROOM6
        frame[at : at + header_len] = header
        frame[at + 4 : at + 8] = ((seq + start) & _MASK).to_bytes(4, "big")
        if start + gso_size < total:
            frame[at + 13] = flags & ~(TCP_FIN | TCP_PSH)
        frame[at + 16] = frame[at + 17] = 0
        frame[at + header_len :] = piece
        frames.append(frame)
    return frames
