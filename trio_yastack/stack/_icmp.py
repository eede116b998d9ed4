"""ICMPv4: echo (both ways), errors out (rate limited, RFC 1122 3.2.2 rules) and in (handed to
the transport they concern, FreeBSD's ``pr_ctlinput``)."""

from __future__ import annotations

import errno
from collections import deque
from typing import TYPE_CHECKING

from ._drops import IcmpDrop
from ._ip import FRAME_HEADROOM
from .wire import WireError
from .wire._checksum import sum16
from .wire.icmp import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_ERROR_TYPES,
    ICMP_HEADER,
    ICMP_HEADER_LEN,
    ICMP_PARAMETER_PROBLEM,
    ICMP_REDIRECT,
    ICMP_SOURCE_QUENCH,
    ICMP_TIME_EXCEEDED,
    ICMP_UNREACH_FRAG_NEEDED,
    ICMP_UNREACH_PORT,
    ICMP_UNREACH_PROTOCOL,
    parse_icmp,
)
from .wire.ipv4 import IP_OFFMASK, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER

if TYPE_CHECKING:
    import random

    from ._core import StackCore

__all__ = ["EchoEndpoint", "IcmpLayer", "errno_for_icmp"]


def errno_for_icmp(icmp_type: int, code: int) -> int:
    """The errno a socket reports for an ICMP error (as FreeBSD's ``inetctlerrmap``)."""
    if icmp_type == ICMP_DEST_UNREACH:
        if code in (ICMP_UNREACH_PORT, ICMP_UNREACH_PROTOCOL):
            return errno.ECONNREFUSED
        if code == ICMP_UNREACH_FRAG_NEEDED:
            return errno.EMSGSIZE
        if code in (0, 6, 9, 11):  # net unreachable, unknown, prohibited, for TOS
            return errno.ENETUNREACH
        return errno.EHOSTUNREACH
    if icmp_type == ICMP_TIME_EXCEEDED:
        return errno.EHOSTUNREACH
    if icmp_type == ICMP_PARAMETER_PROBLEM:
        return errno.ENOPROTOOPT
    return 0


class EchoEndpoint:
    """Where echo replies with one identifier go (like a Linux ``SOCK_DGRAM``/``IPPROTO_ICMP``
    ping socket).  ``replies`` is bounded by ``IcmpConfig.echo_queue_limit``."""

    __slots__ = ("closed", "ident", "replies", "waiter")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.replies: deque[tuple[int, int, bytes, float]] = deque()
        self.closed = False
        self.waiter: object = None  # set by the runtime: what to wake when a reply arrives


def echo_open(
    endpoints: dict[int, EchoEndpoint], rng: random.Random, ident: int | None, protocol: str
) -> EchoEndpoint:
    """Register an echo endpoint in ``endpoints`` (ICMP's or ICMPv6's table): ``ident`` is chosen at
    random among the free ones when not given; ``protocol`` names the table in errors."""
    if ident is None:
        for _ in range(64):
            ident = rng.getrandbits(16)
            if ident not in endpoints:
                break
        else:
            raise OSError(errno.EADDRINUSE, f"no free {protocol} echo identifier")
    elif ident in endpoints or not 0 <= ident <= 0xFFFF:
        raise OSError(errno.EADDRINUSE, f"{protocol} echo identifier {ident} in use")
    endpoint = endpoints[ident] = EchoEndpoint(ident)
    return endpoint


def echo_close(endpoints: dict[int, EchoEndpoint], endpoint: EchoEndpoint) -> None:
    """Mark ``endpoint`` closed and drop it from ``endpoints`` unless its identifier was reused."""
    endpoint.closed = True
    if endpoints.get(endpoint.ident) is endpoint:
        del endpoints[endpoint.ident]


class IcmpLayer:
    __slots__ = ("_tokens", "_tokens_at", "config", "core", "echo_endpoints", "stats")

    def __init__(self, core: StackCore) -> None:
        self.core = core
        self.config = core.config.icmp
        self.stats = core.stats_icmp
        self.echo_endpoints: dict[int, EchoEndpoint] = {}
        self._tokens = float(self.config.error_burst)
        self._tokens_at = 0.0

    # -- input -------------------------------------------------------------------------------
    def icmp_input(self, buf: bytes, start: int, end: int, src: int, dst: int, now: float) -> None:
        """An ICMP message arrived in ``buf[start:end]`` (FreeBSD ``icmp_input``)."""
        stats = self.stats
        stats.received += 1
        try:
            icmp_type, code, rest = parse_icmp(buf, start, end, self.core.verify_checksums)
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if icmp_type == ICMP_ECHO_REQUEST:
            stats.echo_requests_received += 1
            if dst != self.core.ip and not self.config.reply_to_broadcast_echo:
                stats.drop(IcmpDrop.BROADCAST_ECHO)
                return
            try:
                self._send(ICMP_ECHO_REPLY, code, rest, buf[start + ICMP_HEADER_LEN : end], src, now)
            except OSError:
                stats.drop(IcmpDrop.NO_ROUTE_BACK)  # e.g. from an off-link source with no gateway
                return
            stats.echo_replies_sent += 1
        elif icmp_type == ICMP_ECHO_REPLY:
            stats.echo_replies_received += 1
            endpoint = self.echo_endpoints.get(rest >> 16)
            if endpoint is None:
                stats.drop(IcmpDrop.NO_ECHO_ENDPOINT)
                return
            if len(endpoint.replies) >= self.config.echo_queue_limit:
                stats.drop(IcmpDrop.ECHO_QUEUE_FULL)
                return
            endpoint.replies.append((src, rest & 0xFFFF, bytes(buf[start + ICMP_HEADER_LEN : end]), now))
            self.core.mark_ready(endpoint)
        elif icmp_type in ICMP_ERROR_TYPES:
            stats.errors_received += 1
            self._error_input(icmp_type, code, rest, buf, start + ICMP_HEADER_LEN, end, now)
        else:
            stats.drop(IcmpDrop.UNKNOWN_TYPE)

    def _error_input(
        self, icmp_type: int, code: int, rest: int, buf: bytes, start: int, end: int, now: float
    ) -> None:
        """Hand an ICMP error to the transport of the datagram it quotes."""
        stats = self.stats
        if icmp_type in (ICMP_REDIRECT, ICMP_SOURCE_QUENCH):
            stats.drop(IcmpDrop.IGNORED_TYPE)  # a host with one route ignores redirects; quench is deprecated
            return
        # The quoted header's checksum and total length may have been changed on the way (and
        # the quote is often cut short), so only the fixed header is checked, as kernels do.
        if end - start < 28:
            stats.drop(IcmpDrop.BAD_QUOTE)
            return
        vihl, _tos, _total, _ident, _frag, _ttl, proto, _c, inner_src, inner_dst = IPV4_HEADER.unpack_from(
            buf, start
        )
        header_len = (vihl & 0x0F) << 2
        if vihl >> 4 != 4 or header_len < 20:
            stats.drop(IcmpDrop.BAD_QUOTE)
            return
        if inner_src != self.core.ip or end - start < header_len + 8:
            stats.drop(IcmpDrop.BAD_QUOTE)
            return
        ports = start + header_len
        sport = (buf[ports] << 8) | buf[ports + 1]
        dport = (buf[ports + 2] << 8) | buf[ports + 3]
        error = errno_for_icmp(icmp_type, code)
        mtu = rest & 0xFFFF if icmp_type == ICMP_DEST_UNREACH and code == ICMP_UNREACH_FRAG_NEEDED else 0
        delivered = False
        if proto == IPPROTO_UDP:
            delivered = self.core.udp.udp_ctlinput(sport, inner_dst, dport, error)
        elif proto == IPPROTO_TCP and self.core.tcp_ctlinput is not None:
            quoted_seq = int.from_bytes(buf[ports + 4 : ports + 8], "big") if end - ports >= 8 else 0
            delivered = self.core.tcp_ctlinput(sport, inner_dst, dport, error, mtu, quoted_seq, now)
        if delivered:
            stats.errors_delivered += 1
        else:
            stats.drop(IcmpDrop.ERROR_NO_SOCKET)

    # -- output ------------------------------------------------------------------------------
    def icmp_error(
        self, icmp_type: int, code: int, buf: bytes, ip_offset: int, now: float, mtu: int = 0
    ) -> None:
        """Report an error about the datagram whose IP header is at ``buf[ip_offset:]``.

        RFC 1122 3.2.2: never about an ICMP error, a broadcast/multicast datagram, a non-initial
        fragment, or a datagram from a non-unicast source; and rate limited (token bucket).
        """
        stats = self.stats
        vihl, _tos, total_len, _ident, frag, _ttl, proto, _csum, src, dst = IPV4_HEADER.unpack_from(
            buf, ip_offset
        )
        header_len = (vihl & 0x0F) << 2
        core = self.core
        if frag & IP_OFFMASK or dst != core.ip:
            return  # not about a non-initial fragment, nor a datagram that was broadcast
        if (
            src == 0
            or src >= 0xE0000000
            or src == core.ip
            or src == core.ip_layer.broadcast
            or src >> 24 == 127
        ):
            return  # only to a unicast source
        if proto == IPPROTO_ICMP:
            offset = ip_offset + header_len
            if (
                len(buf) <= offset
                or buf[offset] in ICMP_ERROR_TYPES
                or buf[offset] not in (0, 8, 13, 14, 15, 16)
            ):
                return
        # Token bucket: error_rate_limit per second, error_burst deep.
        config = self.config
        self._tokens = min(
            float(config.error_burst), self._tokens + (now - self._tokens_at) * config.error_rate_limit
        )
        self._tokens_at = now
        if self._tokens < 1.0:
            stats.errors_rate_limited += 1
            return
        self._tokens -= 1.0
        quote_end = min(len(buf), ip_offset + total_len, ip_offset + header_len + config.quote_len)
        try:
            self._send(icmp_type, code, mtu & 0xFFFF, buf[ip_offset:quote_end], src, now)
        except OSError:
            return
        stats.errors_sent += 1

    def _send(
        self, icmp_type: int, code: int, rest: int, data: bytes | memoryview, dst: int, now: float
    ) -> None:
        packet = bytearray(FRAME_HEADROOM + ICMP_HEADER_LEN + len(data))
        ICMP_HEADER.pack_into(packet, FRAME_HEADROOM, icmp_type, code, 0, rest)
        packet[FRAME_HEADROOM + ICMP_HEADER_LEN :] = data
        checksum = ~sum16(packet, FRAME_HEADROOM, len(packet) - FRAME_HEADROOM, 0) & 0xFFFF
        packet[FRAME_HEADROOM + 2] = checksum >> 8
        packet[FRAME_HEADROOM + 3] = checksum & 0xFF
        self.core.ip_layer.ip_output(packet, IPPROTO_ICMP, dst, now)

    # -- echo (ping) -------------------------------------------------------------------------
    def echo_open(self, ident: int | None = None) -> EchoEndpoint:
        """An endpoint for echo replies; ``ident`` is chosen at random when not given."""
        return echo_open(self.echo_endpoints, self.core.rng, ident, "ICMP")

    def echo_close(self, endpoint: EchoEndpoint) -> None:
        echo_close(self.echo_endpoints, endpoint)

    def send_echo_request(self, endpoint: EchoEndpoint, dst: int, seq: int, data: bytes, now: float) -> None:
        if endpoint.closed:
            raise OSError(errno.EBADF, "echo endpoint closed")
        self._send(ICMP_ECHO_REQUEST, 0, (endpoint.ident << 16) | (seq & 0xFFFF), data, dst, now)
        self.stats.echo_requests_sent += 1
