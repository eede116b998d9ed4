"""ICMPv6 (RFC 4443): echo both ways, errors out (rate limited, 2.4(e)'s rules) and in (Packet
Too Big lowers the path MTU; the others go to the transport they concern), Neighbor Discovery's
messages handed to ``nd6_input`` (FreeBSD ``icmp6_input``)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ._drops import Icmp6Drop, Nd6Drop
from ._icmp import EchoEndpoint, echo_close, echo_open
from ._nd6 import MLD_LISTENER_QUERY
from ._stats6 import Icmp6Stats
from .tcp._tcp6 import IP6_KEY, LOCAL6_SHIFT
from .wire import WireError
from .wire.ethernet import ETHER_HEADER_LEN
from .wire.icmpv6 import (
    ICMP6_DST_UNREACH,
    ICMP6_ECHO_REPLY,
    ICMP6_ECHO_REQUEST,
    ICMP6_HEADER,
    ICMP6_HEADER_LEN,
    ICMP6_PACKET_TOO_BIG,
    ICMP6_PARAM_PROB,
    ND_REDIRECT,
    ND_ROUTER_SOLICIT,
    icmp6_checksum,
    parse_icmpv6,
)
from .wire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from .wire.ipv6 import IPPROTO_ICMPV6, IPV6_HEADER, IPV6_HEADER_LEN, IPV6_MIN_MTU, walk_extension_headers

if TYPE_CHECKING:
    from ._ip6 import Ip6Layer

__all__ = ["Icmp6Layer", "errno_for_icmp6"]

_HEADROOM = ETHER_HEADER_LEN + IPV6_HEADER_LEN
_MASK64 = 2**64 - 1
#: the most of an offending packet an error quotes: what fits in 1280 bytes (RFC 4443 2.4(c))
_QUOTE_LIMIT = 1280 - IPV6_HEADER_LEN - ICMP6_HEADER_LEN


def errno_for_icmp6(icmp_type: int, code: int) -> int:
    """The errno a socket reports for an ICMPv6 error (as Linux's ``icmpv6_err_convert``)."""
    if icmp_type == ICMP6_DST_UNREACH:
        return {0: errno.ENETUNREACH, 1: errno.EACCES, 4: errno.ECONNREFUSED}.get(code, errno.EHOSTUNREACH)
    if icmp_type == ICMP6_PACKET_TOO_BIG:
        return errno.EMSGSIZE
    if icmp_type == ICMP6_PARAM_PROB:
        return errno.EPROTO
    return errno.EHOSTUNREACH


class Icmp6Layer:
    __slots__ = ("_tokens", "_tokens_at", "config", "echo_endpoints", "ip6", "stats")

    def __init__(self, ip6: Ip6Layer) -> None:
        self.ip6 = ip6
        self.config = ip6.core.config.icmp  # the same rate limit and echo queue bounds as ICMPv4
        self.stats = Icmp6Stats()
        self.echo_endpoints: dict[int, EchoEndpoint] = {}
        self._tokens = float(self.config.error_burst)
        self._tokens_at = 0.0

    # -- input -------------------------------------------------------------------------------
    def icmp6_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, hop_limit: int, ip_offset: int, now: float
    ) -> None:
        """An ICMPv6 message arrived in ``buf[start:end]`` (FreeBSD ``icmp6_input``)."""
        stats = self.stats
        stats.received += 1
        ip6 = self.ip6
        try:
            icmp_type, code, rest = parse_icmpv6(buf, start, end, src, dst, ip6.core.verify_checksums)
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if ND_ROUTER_SOLICIT <= icmp_type <= ND_REDIRECT:
            stats.nd_received += 1
            if ip_offset >= 0 and buf[6:12] == ip6.core.mac:
                # our own DAD probe coming back would otherwise look like a duplicate (RFC 4862 5.4.3)
                ip6.nd6.stats.received += 1
                ip6.nd6.stats.drop(Nd6Drop.OWN_FRAME)
                return
            ip6.nd6.nd6_input(icmp_type, code, rest, buf, start, end, src, dst, hop_limit, now)
        elif icmp_type == ICMP6_ECHO_REQUEST:
            stats.echo_requests_received += 1
            if dst not in ip6.addresses:
                stats.drop(Icmp6Drop.MULTICAST_ECHO)  # as net.ipv6.icmp.echo_ignore_multicast
                return
            try:
                self.send(ICMP6_ECHO_REPLY, 0, rest, buf[start + ICMP6_HEADER_LEN : end], src, now, src=dst)
            except OSError:
                stats.drop(Icmp6Drop.NO_ROUTE_BACK)
                return
            stats.echo_replies_sent += 1
        elif icmp_type == ICMP6_ECHO_REPLY:
            stats.echo_replies_received += 1
            endpoint = self.echo_endpoints.get(rest >> 16)
            if endpoint is None:
                stats.drop(Icmp6Drop.NO_ECHO_ENDPOINT)
                return
            if len(endpoint.replies) >= self.config.echo_queue_limit:
                stats.drop(Icmp6Drop.ECHO_QUEUE_FULL)
                return
            endpoint.replies.append((src, rest & 0xFFFF, bytes(buf[start + ICMP6_HEADER_LEN : end]), now))
            ip6.core.mark_ready(endpoint)
        elif icmp_type < 128:
            stats.errors_received += 1
            self._error_input(icmp_type, code, rest, buf, start + ICMP6_HEADER_LEN, end, now)
        elif icmp_type == MLD_LISTENER_QUERY:
            ip6.nd6.mld_query_input(buf, start, end, src, hop_limit, rest, now)
        else:
            stats.drop(Icmp6Drop.UNKNOWN_TYPE)  # RFC 4443 2.4(b): unknown informational messages

    def _error_input(
        self, icmp_type: int, code: int, rest: int, buf: bytes, start: int, end: int, now: float
    ) -> None:
        """Hand an error to whom it concerns: the path MTU (Packet Too Big), else the transport
        of the packet it quotes."""
        stats = self.stats
        ip6 = self.ip6
        if end - start < IPV6_HEADER_LEN:
            stats.drop(Icmp6Drop.BAD_QUOTE)
            return
        _vtf, _plen, nxt, _hl, s_hi, s_lo, d_hi, d_lo = IPV6_HEADER.unpack_from(buf, start)
        inner_src, inner_dst = (s_hi << 64) | s_lo, (d_hi << 64) | d_lo
        if inner_src not in ip6.addresses:
            stats.drop(Icmp6Drop.BAD_QUOTE)  # not about a packet we sent
            return
        too_big = icmp_type == ICMP6_PACKET_TOO_BIG
        if too_big:
            stats.packet_too_big_received += 1
            ip6.update_pmtu(inner_dst, rest, now)
        try:
            proto, at, _frag_at, _, _ = walk_extension_headers(
                buf, start + IPV6_HEADER_LEN, end, nxt, ip6.config.max_extension_headers
            )
        except WireError:
            if too_big:
                stats.errors_delivered += 1  # (the path MTU took it)
            else:
                stats.drop(Icmp6Drop.BAD_QUOTE)
            return
        if proto == IPPROTO_TCP and at + 8 <= end:
            # tcp6_ctlinput: the connection the quoted segment belongs to, its sequence number
            # checked against the window (RFC 5927 4.1); a Packet Too Big lowers its MSS.
            sport = (buf[at] << 8) | buf[at + 1]
            dport = (buf[at + 2] << 8) | buf[at + 3]
            seq = int.from_bytes(buf[at + 4 : at + 8], "big")
            error = errno_for_icmp6(icmp_type, code)
            mtu = max(rest, IPV6_MIN_MTU) if too_big else 0
            remote = inner_dst | IP6_KEY | inner_src << LOCAL6_SHIFT  # key6: the quoted packet was ours
            if ip6.core.tcp.tcp_ctlinput(sport, remote, dport, error, mtu, seq, now) or too_big:
                stats.errors_delivered += 1
                return
            stats.drop(Icmp6Drop.ERROR_NO_SOCKET)
            return
        if too_big:
            stats.errors_delivered += 1  # the path MTU is the whole of it for anything but TCP
            return
        if proto == IPPROTO_UDP and at + 4 <= end:
            sport = (buf[at] << 8) | buf[at + 1]
            dport = (buf[at + 2] << 8) | buf[at + 3]
            if ip6.core.udp.udp6_ctlinput(sport, inner_dst, dport, errno_for_icmp6(icmp_type, code)):
                stats.errors_delivered += 1
                return
        stats.drop(Icmp6Drop.ERROR_NO_SOCKET)

    # -- output ------------------------------------------------------------------------------
    def icmp6_error(
        self, icmp_type: int, code: int, rest: int, buf: bytes, ip_offset: int, now: float
    ) -> None:
        """Report an error about the packet whose IPv6 header is at ``buf[ip_offset:]``.

        RFC 4443 2.4(e): never about an ICMPv6 error, a packet to a multicast group (but Packet
        Too Big), or from a source that is not unicast; rate limited (2.4(f), a token bucket).
        """
        ip6 = self.ip6
        _vtf, plen, nxt, _hl, s_hi, s_lo, d_hi, d_lo = IPV6_HEADER.unpack_from(buf, ip_offset)
        src, dst = (s_hi << 64) | s_lo, (d_hi << 64) | d_lo
        if src == 0 or src >> 120 == 0xFF or src in ip6.addresses:
            return
        if dst >> 120 == 0xFF and icmp_type != ICMP6_PACKET_TOO_BIG:
            return
        first = ip_offset + IPV6_HEADER_LEN
        if nxt == IPPROTO_ICMPV6 and (len(buf) <= first or buf[first] < 128):
            return  # never about an error (or an ICMPv6 message we cannot read)
        config = self.config
        self._tokens = min(
            float(config.error_burst), self._tokens + (now - self._tokens_at) * config.error_rate_limit
        )
        self._tokens_at = now
        if self._tokens < 1.0:
            self.stats.errors_rate_limited += 1
            return
        self._tokens -= 1.0
        quote_end = min(len(buf), first + plen, ip_offset + _QUOTE_LIMIT)
        try:
            self.send(
                icmp_type,
                code,
                rest,
                buf[ip_offset:quote_end],
                src,
                now,
                src=dst if dst in ip6.addresses else 0,
            )
        except OSError:
            return
        self.stats.errors_sent += 1

    def send(
        self,
        icmp_type: int,
        code: int,
        rest: int,
        data: bytes | memoryview,
        dst: int,
        now: float,
        *,
        src: int = 0,
        nd: bool = False,
    ) -> None:
        """Send an ICMPv6 message to ``dst`` through ``ip6_output``; ``nd`` sends an ND message
        straight to the link instead: from ``src`` as given (the unspecified address in DAD),
        hop limit 255 (RFC 4861 7.1), never fragmented or routed."""
        ip6 = self.ip6
        packet = bytearray(_HEADROOM + ICMP6_HEADER_LEN + len(data))
        ICMP6_HEADER.pack_into(packet, _HEADROOM, icmp_type, code, 0, rest)
        packet[_HEADROOM + ICMP6_HEADER_LEN :] = data
        if not nd:
            if not src:
                src = ip6.select_source(dst)
            length = len(packet) - _HEADROOM
            ICMP6_HEADER.pack_into(
                packet, _HEADROOM, icmp_type, code, icmp6_checksum(packet, _HEADROOM, length, src, dst), rest
            )
            ip6.ip6_output(packet, IPPROTO_ICMPV6, dst, now, src=src)
            return
        length = len(packet) - _HEADROOM
        ICMP6_HEADER.pack_into(
            packet, _HEADROOM, icmp_type, code, icmp6_checksum(packet, _HEADROOM, length, src, dst), rest
        )
        IPV6_HEADER.pack_into(
            packet, ETHER_HEADER_LEN, 6 << 28, length, IPPROTO_ICMPV6, 255,
            src >> 64, src & _MASK64, dst >> 64, dst & _MASK64,
        )  # fmt: skip
        ip6.stats.sent += 1
        ip6._to_link(packet, dst, dst, now)

    # -- echo (ping -6) ----------------------------------------------------------------------
    def echo_open(self, ident: int | None = None) -> EchoEndpoint:
        """An endpoint for echo replies; ``ident`` is chosen at random when not given."""
        return echo_open(self.echo_endpoints, self.ip6.core.rng, ident, "ICMPv6")

    def echo_close(self, endpoint: EchoEndpoint) -> None:
        echo_close(self.echo_endpoints, endpoint)

    def send_echo_request(self, endpoint: EchoEndpoint, dst: int, seq: int, data: bytes, now: float) -> None:
        if endpoint.closed:
            raise OSError(errno.EBADF, "echo endpoint closed")
        self.send(ICMP6_ECHO_REQUEST, 0, (endpoint.ident << 16) | (seq & 0xFFFF), data, dst, now)
        self.stats.echo_requests_sent += 1
