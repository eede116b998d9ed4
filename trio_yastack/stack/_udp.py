"""UDP (RFC 768): protocol control blocks, ``udp_input`` with bounded per-socket queues,
``udp_output``, and ICMP errors for connected sockets (``udp_ctlinput``)."""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._drops import UdpDrop
from ._ip import FRAME_HEADROOM
from .tcp._fastpath import SourceTable6
from .wire import WireError
from .wire._checksum import pseudo_header_sum, sum16
from .wire.ethernet import ETHER_HEADER_LEN
from .wire.icmp import ICMP_DEST_UNREACH, ICMP_UNREACH_PORT
from .wire.icmpv6 import ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_NOPORT
from .wire.ipv4 import IPPROTO_UDP
from .wire.ipv6 import IPV6_HEADER_LEN, pseudo_header_sum6
from .wire.udp import UDP_HEADER, UDP_HEADER_LEN, parse_udp6_header, parse_udp_header

if TYPE_CHECKING:
    from ._core import StackCore

__all__ = ["MAX_UDP6_PAYLOAD", "MAX_UDP_PAYLOAD", "UdpLayer", "UdpPcb"]

MAX_UDP_PAYLOAD = 65535 - 20 - UDP_HEADER_LEN
MAX_UDP6_PAYLOAD = 65535 - UDP_HEADER_LEN  # the payload length field counts no IPv6 header
FRAME_HEADROOM6 = ETHER_HEADER_LEN + IPV6_HEADER_LEN
#: the most new IPv6 sources ``udp6_fast_input`` leaves to install after one burst
SRC6_PENDING_LIMIT = 64
_LIMITED_BROADCAST = 0xFFFFFFFF


class UdpPcb:
    """A UDP socket's protocol control block.

    ``queue`` holds ``(payload, (src_ip, src_port))``; ``queued_bytes`` its payload bytes.
    ``so_error`` is the pending error from an ICMP message (connected sockets only, as BSD).
    """

    __slots__ = (
        "broadcast", "closed", "local_ip", "local_port", "queue", "queued_bytes", "remote_ip", "remote_port",
        "so_error", "v6", "waiter",
    )  # fmt: skip

    def __init__(self, *, v6: bool = False) -> None:
        #: an IPv6 socket: its addresses are 128-bit integers, it lives in ``UdpLayer.pcbs6`` and
        #: receives IPv6 datagrams only (as with IPV6_V6ONLY set)
        self.v6 = v6
        self.local_ip = 0
        self.local_port = 0
        self.remote_ip = 0
        self.remote_port = 0
        self.queue: deque[tuple[bytes, tuple[int, int]]] = deque()
        self.queued_bytes = 0
        self.so_error = 0
        self.broadcast = False  # SO_BROADCAST
        self.closed = False
        self.waiter: object = None  # set by the runtime: what to wake when this pcb changes

    def take(self) -> tuple[bytes, tuple[int, int]] | None:
        """The oldest queued datagram, or ``None``."""
        if not self.queue:
            return None
        item = self.queue.popleft()
        self.queued_bytes -= len(item[0])
        return item

    def take_error(self) -> int:
        error, self.so_error = self.so_error, 0
        return error


class UdpLayer:
    __slots__ = ("config", "core", "pcbs", "pcbs6", "port_filter", "src6", "src6_ints", "stats")

    def __init__(self, core: StackCore) -> None:
        self.core = core
        self.config = core.config.udp
        self.stats = core.stats_udp
        self.pcbs: dict[int, UdpPcb] = {}
        #: IPv6 sockets by port: a table of their own, so IPv4's lookups stay as they were and a
        #: port may be bound once per family (IPV6_V6ONLY's behaviour)
        self.pcbs6: dict[int, UdpPcb] = {}
        #: as TCP's: which ephemeral ports this core may use towards (remote_ip, remote_port), so
        #: that with several cores the replies of a socket bound implicitly come home
        self.port_filter: Callable[[int, int, int], bool] | None = None
        #: the IPv6 sources of UDP datagrams, for the burst classifier: a known source comes as
        #: its slot, whose 128-bit integer (``src6_ints``, the table's) the queue keeps; turning
        #: the 16 bytes into an integer per datagram was most of IPv6's gap to IPv4
        self.src6 = SourceTable6()
        self.src6_ints = self.src6.ints

    # -- control -----------------------------------------------------------------------------
    def bind(self, pcb: UdpPcb, ip: int = 0, port: int = 0, *, toward: tuple[int, int] = (0, 0)) -> None:
        """Bind ``pcb`` (port 0: an ephemeral port; ``toward`` is the peer an implicit bind is
        for, when known, so the port can be one whose replies reach this core)."""
        if pcb.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if pcb.local_port:
            raise OSError(errno.EINVAL, "Invalid argument: already bound")
        if pcb.v6:
            ip6 = self.core.ip6
            if ip6 is None or (ip and ip not in ip6.addresses):
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            table = self.pcbs6
        elif ip not in (0, self.core.ip):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        else:
            table = self.pcbs
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("port must be 0-65535")
        if port == 0:
            port = self._ephemeral_port(*toward, table=table)
        elif port in table:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        pcb.local_ip, pcb.local_port = ip, port
        table[port] = pcb

    def _ephemeral_port(
        self, remote_ip: int = 0, remote_port: int = 0, *, table: dict[int, UdpPcb] | None = None
    ) -> int:
        pcbs = self.pcbs if table is None else table
        first, last = self.config.ephemeral_first, self.config.ephemeral_last
        span = last - first + 1
        start = self.core.rng.randrange(span)
        # (the RSS filter hashes IPv4 4-tuples: IPv6 ports are chosen without it for now)
        port_filter = self.port_filter if remote_port and pcbs is self.pcbs else None
        for step in range(span):  # random start, then sequential (FreeBSD's algorithm 2)
            port = first + (start + step) % span
            if port not in pcbs and (port_filter is None or port_filter(port, remote_ip, remote_port)):
                return port
        raise OSError(errno.EADDRINUSE, "no free ephemeral port")

    def connect(self, pcb: UdpPcb, ip: int, port: int) -> None:
        if not pcb.local_port:
            self.bind(pcb, toward=(ip, port))
        if ip == 0 or port == 0:  # AF_UNSPEC-like: dissolve the association
            pcb.remote_ip = pcb.remote_port = 0
            return
        if pcb.v6:
            ip6 = self.core.ip6
            if ip6 is None:
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
            ip6.route(ip, 0.0)
            source = pcb.local_ip or ip6.select_source(ip)
        else:
            self.core.ip_layer.route(ip)
            source = pcb.local_ip or self.core.ip
        pcb.remote_ip, pcb.remote_port = ip, port
        pcb.local_ip = source  # a connected socket has a source address, as in the kernel

    def close(self, pcb: UdpPcb) -> None:
        pcb.closed = True
        table = self.pcbs6 if pcb.v6 else self.pcbs
        if table.get(pcb.local_port) is pcb:
            del table[pcb.local_port]
        pcb.queue.clear()
        pcb.queued_bytes = 0

    # -- input -------------------------------------------------------------------------------
    def udp_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        """A UDP datagram arrived in ``buf[start:end]`` (FreeBSD ``udp_input``).

        ``ip_offset`` is where its IP header is in ``buf`` (for an ICMP error), or -1 for a
        reassembled datagram.
        """
        stats = self.stats
        stats.received += 1
        try:
            sport, dport, payload_end = parse_udp_header(
                buf, start, end, src, dst, self.core.verify_checksums
            )
        except WireError as exc:
            stats.drop(exc.reason)
            return
        pcb = self.pcbs.get(dport)
        if (
            pcb is None
            or (pcb.local_ip and pcb.local_ip != dst)
            or (pcb.remote_port and (pcb.remote_ip != src or pcb.remote_port != sport))
        ):
            stats.drop(UdpDrop.NO_SOCKET)
            if dst == self.core.ip and ip_offset >= 0:
                self.core.icmp.icmp_error(ICMP_DEST_UNREACH, ICMP_UNREACH_PORT, buf, ip_offset, now)
            return
        payload = buf[start + UDP_HEADER_LEN : payload_end]
        config = self.config
        if (
            len(pcb.queue) >= config.receive_queue_datagrams
            or pcb.queued_bytes + len(payload) > config.receive_queue_bytes
        ):
            stats.drop(UdpDrop.SOCKET_BUFFER_FULL)
            return
        pcb.queue.append((payload, (src, sport)))
        pcb.queued_bytes += len(payload)
        stats.delivered += 1
        self.core.mark_ready(pcb)

    def udp_fast_input(self, frame: bytes, record: tuple[int, ...]) -> bool:
        """A datagram of a burst the classifier (``tcp/_fastpath.py``, ``UDP`` records) found
        sound: queue it on its socket, as ``udp_input`` would; ``False`` (nothing changed) when
        no socket takes it, which ``udp_input`` answers (a counted drop and an ICMP error).

        Counts what ``udp_input`` counts (received, then delivered or a full queue's drop); the
        caller counts the layers below for the datagrams taken (``True``).
        """
        pcb = self.pcbs.get(record[3])
        if pcb is None:
            return False
        src = record[1]
        if (pcb.local_ip and pcb.local_ip != self.core.ip) or (
            pcb.remote_port and (pcb.remote_ip != src or pcb.remote_port != record[2])
        ):
            return False
        payload = frame[record[10] : record[11]]
        stats = self.stats
        stats.received += 1
        queue = pcb.queue
        config = self.config
        if (
            len(queue) >= config.receive_queue_datagrams
            or pcb.queued_bytes + len(payload) > config.receive_queue_bytes
        ):
            stats.drop(UdpDrop.SOCKET_BUFFER_FULL)
            return True
        queue.append((payload, (src, record[2])))
        pcb.queued_bytes += len(payload)
        stats.delivered += 1
        self.core.ready[pcb] = None  # mark_ready (a traced core takes no fast path)
        return True

    def udp_ctlinput(self, local_port: int, remote_ip: int, remote_port: int, error: int) -> bool:
        """An ICMP error about a datagram we sent; only a connected socket hears of it."""
        pcb = self.pcbs.get(local_port)
        if pcb is None or not error or pcb.remote_ip != remote_ip or pcb.remote_port != remote_port:
            return False
        pcb.so_error = error
        self.core.mark_ready(pcb)
        return True

    # -- output ------------------------------------------------------------------------------
    def udp_output(self, pcb: UdpPcb, data: bytes, dst: int, dport: int, now: float) -> int:
        """Send ``data`` to ``dst:dport`` (the connected peer when ``dport`` is 0); return its length."""
        if pcb.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if dport == 0:
            if not pcb.remote_port:
                raise OSError(errno.EDESTADDRREQ, "Destination address required")
            dst, dport = pcb.remote_ip, pcb.remote_port
        elif pcb.remote_port:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        length = len(data)
        if length > MAX_UDP_PAYLOAD:
            raise OSError(errno.EMSGSIZE, "Message too long")
        if (dst == _LIMITED_BROADCAST or dst == self.core.ip_layer.broadcast) and not pcb.broadcast:
            raise OSError(errno.EACCES, "Permission denied (SO_BROADCAST not set)")
        if not pcb.local_port:
            self.bind(pcb, toward=(dst, dport))
        sport = pcb.local_port
        udp_len = UDP_HEADER_LEN + length
        src = self.core.ip
        checksum = (
            ~sum16(
                data, 0, length, pseudo_header_sum(src, dst, IPPROTO_UDP, udp_len) + sport + dport + udp_len
            )
            & 0xFFFF
        )
        packet = bytearray(FRAME_HEADROOM + udp_len)
        UDP_HEADER.pack_into(packet, FRAME_HEADROOM, sport, dport, udp_len, checksum or 0xFFFF)
        packet[FRAME_HEADROOM + UDP_HEADER_LEN :] = data
        self.core.ip_layer.ip_output(packet, IPPROTO_UDP, dst, now)
        self.stats.sent += 1
        return length

    # -- IPv6 (RFC 8200 8.1: the checksum is mandatory, over the IPv6 pseudo-header) ---------
    def udp6_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        """A UDP datagram arrived over IPv6 in ``buf[start:end]`` (FreeBSD ``udp6_input``)."""
        stats = self.stats
        stats.received += 1
        try:
            sport, dport, payload_end = parse_udp6_header(
                buf, start, end, src, dst, self.core.verify_checksums
            )
        except WireError as exc:
            stats.drop(exc.reason)
            return
        pcb = self.pcbs6.get(dport)
        if (
            pcb is None
            or (pcb.local_ip and pcb.local_ip != dst)
            or (pcb.remote_port and (pcb.remote_ip != src or pcb.remote_port != sport))
        ):
            stats.drop(UdpDrop.NO_SOCKET)
            ip6 = self.core.ip6
            if ip6 is not None and ip_offset >= 0 and dst in ip6.addresses:
                ip6.icmp6.icmp6_error(ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_NOPORT, 0, buf, ip_offset, now)
            return
        payload = buf[start + UDP_HEADER_LEN : payload_end]
        config = self.config
        if (
            len(pcb.queue) >= config.receive_queue_datagrams
            or pcb.queued_bytes + len(payload) > config.receive_queue_bytes
        ):
            stats.drop(UdpDrop.SOCKET_BUFFER_FULL)
            return
        pcb.queue.append((payload, (src, sport)))
        pcb.queued_bytes += len(payload)
        stats.delivered += 1
        self.core.mark_ready(pcb)

    def udp6_fast_input(self, frame: bytes, record: tuple[int, ...]) -> bool:
        """A datagram over IPv6 the classifier found sound (``UDP6`` records, the source in the
        frame's bytes 22..37, the destination 38..53): queue it on its socket, as ``udp6_input``
        would; ``False`` (nothing changed) when no socket takes it, which ``udp6_input`` answers
        (a counted drop and an ICMPv6 error).

        Counts what ``udp6_input`` counts (received, then delivered or a full queue's drop); the
        caller counts the layers below for the datagrams taken (``True``).  A source the record
        found in ``src6`` (``record[1]``: its slot + 1) is that slot's integer; another one is
        converted here and, when the datagram is taken, left for the caller to install at the
        burst's end (``SourceTable6.install``: not before, this burst's records were classified
        against the table as it was).
        """
        hit = record[1]
        if hit:
            src = self.src6_ints[hit]
        else:
            address = frame[22:38]
            src = int.from_bytes(address, "big")
        pcb = self.pcbs6.get(record[3])
        if pcb is None:
            return False
        if (pcb.local_ip and pcb.local_ip != int.from_bytes(frame[38:54], "big")) or (
            pcb.remote_port and (pcb.remote_ip != src or pcb.remote_port != record[2])
        ):
            return False
        if not hit:  # taken (queued, or dropped for a full queue)
            self._src6_miss(record[4], address, src)
        payload = frame[record[10] : record[11]]
        stats = self.stats
        stats.received += 1
        queue = pcb.queue
        config = self.config
        if (
            len(queue) >= config.receive_queue_datagrams
            or pcb.queued_bytes + len(payload) > config.receive_queue_bytes
        ):
            stats.drop(UdpDrop.SOCKET_BUFFER_FULL)
            return True
        queue.append((payload, (src, record[2])))
        pcb.queued_bytes += len(payload)
        stats.delivered += 1
        self.core.ready[pcb] = None  # mark_ready (a traced core takes no fast path)
        return True

    def _src6_miss(self, slot: int, address: bytes, src: int) -> None:
        """A taken datagram's source was not in ``src6``: install it at the burst's end (at most
        ``SRC6_PENDING_LIMIT`` a burst; beyond, a source just waits for a later burst)."""
        pending = self.src6.pending
        if len(pending) < SRC6_PENDING_LIMIT:
            pending.append((slot, address, src))

    def udp6_ctlinput(self, local_port: int, remote_ip: int, remote_port: int, error: int) -> bool:
        """An ICMPv6 error about a datagram we sent; only a connected socket hears of it."""
        pcb = self.pcbs6.get(local_port)
        if pcb is None or not error or pcb.remote_ip != remote_ip or pcb.remote_port != remote_port:
            return False
        pcb.so_error = error
        self.core.mark_ready(pcb)
        return True

    def udp6_output(self, pcb: UdpPcb, data: bytes, dst: int, dport: int, now: float) -> int:
        """Send ``data`` over IPv6 to ``dst:dport`` (the connected peer when ``dport`` is 0)."""
        if pcb.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        ip6 = self.core.ip6
        if ip6 is None or not pcb.v6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        if dport == 0:
            if not pcb.remote_port:
                raise OSError(errno.EDESTADDRREQ, "Destination address required")
            dst, dport = pcb.remote_ip, pcb.remote_port
        elif pcb.remote_port:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        length = len(data)
        if length > MAX_UDP6_PAYLOAD:
            raise OSError(errno.EMSGSIZE, "Message too long")
        if not pcb.local_port:
            self.bind(pcb, toward=(dst, dport))
        src = pcb.local_ip or ip6.select_source(dst)
        sport = pcb.local_port
        udp_len = UDP_HEADER_LEN + length
        initial = pseudo_header_sum6(src, dst, IPPROTO_UDP, udp_len) + sport + dport + udp_len
        checksum = ~sum16(data, 0, length, initial) & 0xFFFF
        packet = bytearray(FRAME_HEADROOM6 + udp_len)
        UDP_HEADER.pack_into(packet, FRAME_HEADROOM6, sport, dport, udp_len, checksum or 0xFFFF)
        packet[FRAME_HEADROOM6 + UDP_HEADER_LEN :] = data
        ip6.ip6_output(packet, IPPROTO_UDP, dst, now, src=src)
        self.stats.sent += 1
        return length
