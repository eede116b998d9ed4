"""TCP over IPv6 with the same TCP code (FreeBSD's ``tcp6_input``/``tcp6_output`` share
``tcp_input.c`` and ``tcp_output.c`` with IPv4 the same way).

The TCP layer keys a connection by ``(local port, remote ip, remote port)`` and hands the remote
address to every function that sends.  An IPv6 peer takes part in that as its 128-bit address
with :data:`IP6_KEY` (bit 128) set: a key that no IPv4 address can equal, so the demultiplexing
tables, TIME_WAIT, the RST and challenge-ACK paths and ``tcp_ctlinput`` serve both families
unchanged, and the IPv4 hot path pays nothing (no family test, no extra field read).  What
differs is where a segment leaves and what the headers cost:

- :class:`TcpConnection6` overrides the one method every segment of a connection leaves by,
  ``_checksum_and_send``: the IPv6 pseudo-header (RFC 8200 8.1) and ``ip6_output`` from the
  connection's own source address; and two class constants: the MSS is the MTU less 60 bytes
  of headers (RFC 8200 8.3), and a Packet Too Big never lowers the path MTU below 1280.
- :func:`tcp6_checksum_and_send` is that bottom half; the TCP layer's stateless segments (RST,
  the SYN-ACK of a SYN cookie, a TIME_WAIT ACK) reach it with the keyed remote address.

Segments are built as for IPv4, after ``FRAME_HEADROOM`` (Ethernet + IPv4) bytes; the bottom
half copies them behind IPv6's 20 bytes more headroom.  A TSO segment the connection built
(``OffloadPacket`` with ``gso_size``) goes to the port whole when it segments TCP/IPv6
(``core.tso6``: a TAP with its virtio-net header); for any other port it is cut here in
software into ``gso_size`` segments, each with its own checksum, as Linux's ``tcp_gso_segment``
does (FIN and PSH on the last only).
"""

from __future__ import annotations

import errno
from ipaddress import IPv6Address
from typing import TYPE_CHECKING

from .._drops import TcpDrop
from .._ip import FRAME_HEADROOM
from .._native import sum16
from .._nd6 import REACHABLE
from .._offload import OffloadPacket
from ..wire.ethernet import ETHER_HEADER, ETHER_HEADER_LEN
from ..wire.ipv4 import IPPROTO_TCP
from ..wire.ipv6 import IPV6_HEADER, IPV6_HEADER_LEN, pseudo_header_sum6
from ..wire.tcp import TCP_FIN, TCP_PSH
from ._conn import TcpConnection
from ._fastpath import ack_and_data_input
from ._states import ESTABLISHED, TcpState

if TYPE_CHECKING:
    from .._core import StackCore
    from .._ip6 import Ip6Layer
    from .._stats import TcpStats
    from ._layer import TcpLayer

__all__ = ["IP6_KEY", "TcpConnection6", "format_remote", "tcp6_checksum_and_send"]

#: the mark of an IPv6 remote address in the TCP layer's keys: ``address | IP6_KEY``
IP6_KEY = 1 << 128
_ADDRESS = IP6_KEY - 1
_MASK = 0xFFFFFFFF
#: ``_ip6.FRAME_HEADROOM6`` (not imported: ``_icmp6`` imports this module for ``IP6_KEY``)
FRAME_HEADROOM6 = ETHER_HEADER_LEN + IPV6_HEADER_LEN
ETHERTYPE_IPV6 = 0x86DD
_MASK64 = (1 << 64) - 1
#: IPv6's minimum link MTU (RFC 8200 5): the floor a Packet Too Big can lower a path to
IPV6_MIN_MTU = 1280


def format_remote(remote_ip: int) -> str:
    """A remote address of the TCP layer (IPv4, or IPv6 with :data:`IP6_KEY`) as text."""
    if remote_ip & IP6_KEY:
        return f"[{IPv6Address(remote_ip & _ADDRESS)}]"
    from ipaddress import IPv4Address

    return str(IPv4Address(remote_ip))


class TcpConnection6(TcpConnection):
    """A TCP connection to an IPv6 peer: ``remote_ip`` is its address with :data:`IP6_KEY`,
    ``local_ip6`` our address it talks to (the destination of its SYN, or the source chosen
    for an active open)."""

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
        """IPv6's twin of ``_output._frame_predicted``: a segment that fits the link MTU, to a
        neighbour whose entry is REACHABLE (an entry in the neighbour cache is on-link, RFC 4861
        5.1), with no path MTU of its own, on an untraced core with room in the outbox: the
        frame written whole from the connection's header template -- what ``ip6_output`` ->
        ``nd6_resolve`` -> ``ether_output6`` do, with their counters.  False (nothing written,
        nothing counted) for everything else, which the general path then sends."""
        core = self.core
        ip6 = core.ip6
        if ip6 is None or hasattr(core.__class__, "_yas_tracer"):
            return False
        dst = self.remote_ip & _ADDRESS
        entry = ip6.nd6.cache.get(dst)
        if (
            tcp_len > ip6.link_mtu - IPV6_HEADER_LEN
            or entry is None
            or entry.state != REACHABLE
            or now >= entry.reachable_until
            or dst in ip6.pmtu
            or len(core.outbox) >= core.outbox_limit
        ):
            return False
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
        frame = bytearray(self._header6)
        frame += memoryview(packet)[FRAME_HEADROOM : FRAME_HEADROOM + tcp_len]
        frame[18] = tcp_len >> 8  # the payload length
        frame[19] = tcp_len & 0xFF
        frame[FRAME_HEADROOM6 + 16] = frame[FRAME_HEADROOM6 + 17] = 0  # (an offload's partial sum)
        field = ~sum16(frame, FRAME_HEADROOM6, tcp_len, self._pseudo6 + tcp_len) & 0xFFFF
        frame[FRAME_HEADROOM6 + 16] = field >> 8
        frame[FRAME_HEADROOM6 + 17] = field & 0xFF
        self.stats.segments_sent += 1
        ip6.stats.sent += 1
        core.transmit(frame)
        return True


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
    if conn.state != ESTABLISHED or conn.in_recovery or conn.rxtshift or conn.frto or len(conn.scoreboard):
        return False
    conn.last_activity = now  # as segment_arrives does first (the slow path would repeat it)
    conn.keep_probes = 0
    if conn.header_prediction(buf, start, end, seq, ack, flags, window, tsval, tsecr, now):
        return True
    return ack_and_data_input(conn, buf, start, end, seq, ack, flags, window, tsval, tsecr, now)


def tcp6_checksum_and_send(
    core: StackCore, stats: TcpStats, packet: bytearray, tcp_len: int, dst: int, now: float, *, src: int = 0
) -> int:
    """Send the TCP segment at ``packet[FRAME_HEADROOM:]`` (built as for IPv4) over IPv6 to
    ``dst`` (a plain 128-bit address) from ``src`` (0: the source ``ip6_output`` would pick):
    cut in software if it is a TSO segment, checksummed over the IPv6 pseudo-header, through
    ``ip6_output``.  Returns 0, or the errno of a routing failure (counted as ``output_error``)."""
    ip6 = core.ip6
    try:
        if ip6 is None:
            raise OSError(errno.ENETUNREACH, "Network is unreachable (no IPv6 on this stack)")
        if not src:
            src = ip6.select_source(dst)
        view = memoryview(packet)[FRAME_HEADROOM : FRAME_HEADROOM + tcp_len]
        gso_size = packet.gso_size if packet.__class__ is OffloadPacket else 0
        header_len = (view[12] >> 4) << 2
        if gso_size and tcp_len - header_len > gso_size:
            if core.tso6:
                _send_tso6(ip6, stats, view, header_len, gso_size, src, dst, now)
            else:
                for segment in _segments(view, header_len, gso_size):
                    _send6(ip6, stats, segment, src, dst, now)
            return 0
        frame = bytearray(FRAME_HEADROOM6 + tcp_len)
        frame[FRAME_HEADROOM6:] = view
        frame[FRAME_HEADROOM6 + 16] = frame[FRAME_HEADROOM6 + 17] = 0  # (an offload's partial sum)
        _send6(ip6, stats, frame, src, dst, now)
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


def _send_tso6(
    ip6: Ip6Layer,
    stats: TcpStats,
    view: memoryview,
    header_len: int,
    gso_size: int,
    src: int,
    dst: int,
    now: float,
) -> None:
    """A TSO segment to a port that segments TCP/IPv6 (``core.tso6``): one frame, its checksum
    field holding the folded pseudo-header sum (CHECKSUM_PARTIAL, as ``tcp_checksum_and_send``
    leaves an IPv4 one), counted as the segments the wire will carry."""
    tcp_len = len(view)
    frame = OffloadPacket(FRAME_HEADROOM6 + tcp_len, gso_size)
    frame[FRAME_HEADROOM6:] = view
    pseudo = pseudo_header_sum6(src, dst, IPPROTO_TCP, tcp_len)
    pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    field = (pseudo & 0xFFFF) + (pseudo >> 16)
    frame[FRAME_HEADROOM6 + 16] = field >> 8
    frame[FRAME_HEADROOM6 + 17] = field & 0xFF
    stats.segments_sent += (tcp_len - header_len + gso_size - 1) // gso_size
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
