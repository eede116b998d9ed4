"""TCP for one stack instance: ``tcp_input`` (validate, demultiplex, listen, SYN cookies, RST for
closed ports), active opens, ephemeral ports, ISNs (RFC 6528), TIME_WAIT (compact records, their
bound and expiry: FreeBSD's ``tcp_timewait.c``), ICMP errors.

Both families share all of it: ``tcp6_input`` checks a segment that came over IPv6 and then
takes the same steps with both addresses in the key (``key6``: the peer's, ``IP6_KEY``, ours
above; see :mod:`._tcp6`); an IPv6
connection is a :class:`~._tcp6.TcpConnection6`, made by ``connect6`` or a listener that
accepts IPv6 (``TcpListener.ipv6``)."""

from __future__ import annotations

import errno
import hashlib
import math
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._drops import TcpDrop
from .._ip import FRAME_HEADROOM
from .._native import sum16
from .._seq import seq_lt, unwrap
from ..wire import WireError
from ..wire.ipv4 import IPPROTO_TCP
from ..wire.ipv6 import pseudo_header_sum6
from ..wire.tcp import (
    TCP_ACK,
    TCP_FIN,
    TCP_HEADER,
    TCP_HEADER_LEN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TcpOptions,
    parse_tcp_header,
    parse_tcp_options,
)
from ._buffers import NO_REASSEMBLY, NO_SACKS
from ._conn import TcpConnection
from ._output import _ACK_WITH_TIMESTAMPS, tcp_checksum_and_send, window_shift_for
from ._states import CLOSED, ESTABLISHED, LISTEN, SYN_RECEIVED, SYN_SENT, TIME_WAIT
from ._syncookie import CookieOptions, SynCookies
from ._tcp6 import (
    IP6_KEY,
    LOCAL6_SHIFT,
    TcpConnection6,
    format_remote,
    key6,
    predicted_input,
    tcp6_checksum_and_send,
)

if TYPE_CHECKING:
    from .._core import StackCore
    from .._timers import Timer

__all__ = ["TcpLayer", "TcpListener", "TcpTimeWait"]

_MASK = 0xFFFFFFFF
#: seconds a listener counts as flooded after its SYN queue last overflowed (_listen_input, shed_syns)
FLOOD_HOLD = 2.0
_TS_ALIGNED = b"\x01\x01\x08\x0a"
_U32X2 = struct.Struct("!II")
_PAIR = struct.Struct("!HIH")
_PAIR6 = struct.Struct("!H33sH")  # an IPv6 connection: its key (key6: both addresses), 33 bytes
_ADDRESS6 = IP6_KEY - 1
#: Linux's SYN and SYN-ACK options, 20 bytes: MSS, SACK-permitted, timestamps, NOP, window scale
#: (tests/vectors.py, TCP_SYN); the fixed bytes below, and the values read with one unpack
_LINUX_SYN = struct.Struct("!2xH4xII3xB")
_LINUX_SYN_MSS = b"\x02\x04"
_LINUX_SYN_SACK_TS = b"\x04\x02\x08\x0a"
_LINUX_SYN_NOP_WS = b"\x01\x03\x03"


def linux_syn_options(buf: bytes, offset: int) -> TcpOptions | None:
    """The 20 option bytes at ``offset`` read as ``parse_tcp_options`` would, when they are laid
    out as Linux lays out a SYN's (every connection from a Linux client opens with them); None
    for any other layout, which the general parser then reads.  Three comparisons of the fixed
    bytes and one unpack instead of the general parser's loop over five options, which was
    ~2 % of a ``Connection: close`` profile over the stack (one SYN per connection)."""
    if (
        buf[offset + 4 : offset + 8] != _LINUX_SYN_SACK_TS
        or buf[offset : offset + 2] != _LINUX_SYN_MSS
        or buf[offset + 16 : offset + 19] != _LINUX_SYN_NOP_WS
    ):
        return None
    mss, tsval, tsecr, window_scale = _LINUX_SYN.unpack_from(buf, offset)
    return TcpOptions(mss, window_scale, True, (), (tsval, tsecr))


#: (local port, remote ip, remote port): the local IPv4 address is ours; an IPv6 connection's
#: "remote ip" is ``key6(peer, ours)``: the peer's address, IP6_KEY, our address above it
ConnectionKey = tuple[int, int, int]


class TcpListener:
    """A listening socket: half-open connections (the SYN queue) and an accept queue, both bounded."""

    __slots__ = (
        "accept_queue",
        "backlog",
        "closed",
        "cookies_at",
        "embryonic",
        "ipv4",
        "ipv6",
        "layer",
        "port",
        "receive_buffer",
        "reuse_port",
        "send_buffer",
        "sockets",
        "waiter",
    )  # fmt: skip

    def __init__(self, layer: TcpLayer, port: int, backlog: int) -> None:
        self.layer = layer
        self.port = port
        self.backlog = backlog
        #: SO_SNDBUF/SO_RCVBUF for the connections this listener makes (0: the stack's default);
        #: set on the listening socket, they shape the window of the SYN-ACK, as in the kernel
        self.send_buffer = 0
        self.receive_buffer = 0
        #: sockets sharing this listener (SO_REUSEPORT); it closes when the last one does
        self.sockets = 1
        self.reuse_port = False
        #: the families it accepts: IPv4 only (``listen``, an AF_INET socket's), or IPv6 and,
        #: unless IPV6_V6ONLY, IPv4 too (``listen6``, an AF_INET6 socket's, whose IPv4 peers
        #: its socket shows v4-mapped); the tables it is in say the same (see ``listeners6``)
        self.ipv4 = True
        self.ipv6 = False
        self.embryonic: set[TcpConnection] = set()
        #: when this listener's SYN queue last overflowed (a SYN answered with a cookie): a flood
        self.cookies_at = -math.inf
        self.accept_queue: deque[TcpConnection] = deque()
        self.closed = False
        self.waiter: object = None

    state = LISTEN

    def connection_established(self, conn: TcpConnection) -> None:
        self.embryonic.discard(conn)
        self.accept_queue.append(conn)
        self.layer.core.mark_ready(self)

    def accept(self) -> TcpConnection | None:
        """The oldest established connection not yet accepted (it may since have closed)."""
        while self.accept_queue:
            conn = self.accept_queue.popleft()
            conn.listener = None
            self.layer.stats.connections_accepted += 1
            return conn
        return None

    def close(self, now: float) -> None:
        """Stop listening; connections not yet accepted are reset, as a kernel does."""
        if self.closed:
            return
        self.closed = True
        if self.layer.listeners.get(self.port) is self:
            del self.layer.listeners[self.port]
        if self.layer.listeners6.get(self.port) is self:
            del self.layer.listeners6[self.port]
        for conn in [*self.accept_queue, *self.embryonic]:
            conn.listener = None
            conn.abort(now)
        self.accept_queue.clear()
        self.embryonic.clear()
        self.layer.core.mark_ready(self)


class TcpTimeWait:
    """A connection in TIME_WAIT, kept as only what TIME_WAIT needs (FreeBSD's ``struct tcptw``).

    A whole :class:`TcpConnection` weighs some kilobytes with its buffers, congestion control
    and timers; under connection churn up to ``time_wait_limit`` of them waited out 2*MSL, and
    the process grew with them.  What the state still does (RFC 9293 3.10.7.4 in TIME-WAIT;
    ``tcp_twcheck``) needs the pair, the two sequence numbers, the window we last offered,
    the timestamp state and the deadline: this record.  The connection object itself stays
    attached (``conn``) only while the application has not closed it, so that it still reads
    TIME_WAIT and then CLOSED as before; a closed one is let go at once.
    """

    __slots__ = (
        "conn",
        "expiry",
        "key",
        "max_sndwnd",
        "rcv_nxt",
        "rcv_scale",
        "rcv_wnd",
        "snd_nxt",
        "ts_offset",
        "ts_recent",
    )  # fmt: skip

    state = TIME_WAIT

    def __init__(self, conn: TcpConnection, key: ConnectionKey, expiry: float) -> None:
        self.key = key
        self.snd_nxt = conn.snd_max  # our FIN is acknowledged: SND.UNA = SND.NXT = SND.MAX
        self.rcv_nxt = conn.rcv_nxt
        rcv_wnd = conn.rcv_adv - conn.rcv_nxt
        self.rcv_wnd = rcv_wnd if rcv_wnd > 0 else 0  # the window we last offered (never shrunk)
        self.rcv_scale = conn.rcv_scale
        self.max_sndwnd = conn.max_sndwnd
        self.ts_recent = conn.ts_recent if conn.ts_on and conn.ts_recent_valid else -1  # -1: no timestamps
        self.ts_offset = conn.ts_offset
        self.expiry = expiry
        self.conn: TcpConnection | None = None if conn.user_closed else conn

    @property
    def local_port(self) -> int:
        return self.key[0]

    @property
    def remote_ip(self) -> int:
        return self.key[1]

    @property
    def remote_port(self) -> int:
        return self.key[2]

    def __repr__(self) -> str:
        return f"<TcpTimeWait {self.key[0]} <-> {format_remote(self.key[1])}:{self.key[2]}>"


class TcpLayer:
    """TCP's share of a stack instance (FreeBSD's ``tcbinfo`` plus ``tcp_input``'s demux)."""

    __slots__ = (
        "_challenge_at",
        "_challenge_tokens",
        "_hash_pair",
        "_hash_value",
        "_isn_hash",
        "_isn_key",
        "_rst_at",
        "_rst_tokens",
        "_tw_timer",
        "bound_ports",
        "config",
        "connections",
        "cookies",
        "cookies_at",
        "core",
        "isn_source",
        "listeners",
        "listeners6",
        "port_filter",
        "port_selector",
        "port_use",
        "stats",
        "time_wait",
    )  # fmt: skip

    def __init__(self, core: StackCore) -> None:
        self.core = core
        self.config = core.config.tcp
        self.stats = core.stats_tcp
        self.connections: dict[ConnectionKey, TcpConnection] = {}
        #: listeners by port: ``listeners`` those that accept IPv4, ``listeners6`` those that
        #: accept IPv6; a dual-stack one is in both.  So each family's input finds only the
        #: listeners of its family, with no test (an AF_INET and an IPV6_V6ONLY AF_INET6 socket
        #: may listen on the same port, as trio.open_tcp_listeners makes them).
        self.listeners: dict[int, TcpListener] = {}
        self.listeners6: dict[int, TcpListener] = {}
        self.port_use: dict[int, int] = {}  # local port -> connections using it
        #: connections in TIME_WAIT as compact records, by pair, in the order they expire (kept
        #: in order with O(1) removal: one that ends early, taken over by a new SYN or reset,
        #: leaves it at once; one whose 2MSL restarts moves to the end).  An ``OrderedDict``,
        #: not a dict: the oldest record is read at every recycling (a busy server's table is
        #: full, so every new record ends the oldest) and expiry, and a dict found it by walking
        #: past the slots its earlier removals at the front left behind (up to a third of the
        #: table until it is rebuilt: ~2-9 us per connection with the table at 16 384, against
        #: its ~0.04 us more per insertion and removal)
        self.time_wait: OrderedDict[ConnectionKey, TcpTimeWait] = OrderedDict()
        #: the one timer entry that expires TIME_WAIT records, at the oldest one's deadline
        self._tw_timer: Timer | None = None
        #: ports that sockets bound without listening or connecting yet (kept off the ephemeral range)
        self.bound_ports: set[int] = set()
        secret = core.rng.getrandbits(256).to_bytes(32, "big")
        self._isn_key = core.rng.getrandbits(256).to_bytes(32, "big")
        #: the keyed hash with the key already absorbed: each pair hashes a copy of it (keying
        #: a new BLAKE2s object compresses the key block again, per connection)
        self._isn_hash = hashlib.blake2s(key=self._isn_key, digest_size=8)
        self._hash_pair: ConnectionKey = (0, 0, 0)  # the last pair _pair_hash hashed (none yet)
        self._hash_value = 0
        self.cookies = SynCookies(secret)
        #: chooses the local port of an active open: ``(remote_ip, remote_port) -> port``; the
        #: per-core runtime replaces it with an RSS-aware one
        self.port_selector: Callable[[int, int], int] = self._ephemeral_port
        #: which ephemeral ports this core may use for (port, remote_ip, remote_port): with
        #: several cores, only those whose reply hashes to this core (set by the runtime)
        self.port_filter: Callable[[int, int, int], bool] | None = None
        #: chooses ISNs: ``(local_port, remote_ip, remote_port, now) -> 32-bit ISN``; RFC 6528's
        #: generator by default, replaceable (tests pin ISNs just below 2**32 this way)
        self.isn_source: Callable[[int, int, int, float], int] = self.initial_sequence_number
        core.unreachable_hooks.append(self.host_unreachable)
        # Token buckets start full: the first RSTs and challenge ACKs go out at once.
        self._rst_tokens = self.config.reset_rate_limit
        self._challenge_tokens = 100.0
        self._rst_at = self._challenge_at = 0.0
        #: when the SYN queue of a listener of this layer last overflowed (see shed_syns)
        self.cookies_at = -math.inf

    # -- ISNs and ports ---------------------------------------------------------------------
    def initial_sequence_number(self, local_port: int, remote_ip: int, remote_port: int, now: float) -> int:
        """RFC 6528: a 4-microsecond clock plus a keyed hash of the connection's identity."""
        return (int(now * 250_000) + (self._pair_hash(local_port, remote_ip, remote_port) >> 32)) & _MASK

    def timestamp_offset(self, local_port: int, remote_ip: int, remote_port: int) -> int:
        """The per-connection offset of our TSval clock (RFC 7323 5.4: do not leak uptime).

        A keyed hash of the connection's identity, not a random draw, so the stateless SYN-ACK
        of a SYN cookie and the connection built later from its ACK use the same clock.
        """
        return self._pair_hash(local_port, remote_ip, remote_port) & _MASK

    def _pair_hash(self, local_port: int, remote_ip: int, remote_port: int) -> int:
        """64 bits of a keyed hash (BLAKE2s, the stack's secret) of a connection's identity: the
        high 32 offset its ISN, the low 32 its TSval clock.  One hash serves both, and the last
        pair's is kept, because a new connection asks for its ISN and then for its clock (a
        keyed hash was a few microseconds of each end's set-up, twice).  Our own IPv4 address is
        the same for every connection of the stack, so the key stands for it; an IPv6 key holds
        ours (RFC 6528's hash covers both addresses)."""
        pair = (local_port, remote_ip, remote_port)
        if pair == self._hash_pair:
            return self._hash_value
        if remote_ip > _MASK:  # an IPv6 key (key6): the hash runs over both addresses
            data = _PAIR6.pack(local_port, remote_ip.to_bytes(33, "big"), remote_port)
        else:
            data = _PAIR.pack(*pair)
        hasher = self._isn_hash.copy()
        hasher.update(data)
        digest = hasher.digest()
        value = self._hash_value = int.from_bytes(digest, "big")
        self._hash_pair = pair
        return value

    def _ephemeral_port(self, remote_ip: int, remote_port: int) -> int:
        config = self.config
        first, last = config.ephemeral_first, config.ephemeral_last
        span = last - first + 1
        start = self.core.rng.randrange(span)
        connections = self.connections
        time_wait = self.time_wait
        port_filter = self.port_filter
        for step in range(span):
            port = first + (start + step) % span
            if (
                port not in self.listeners
                and port not in self.listeners6
                and port not in self.bound_ports
                and (port, remote_ip, remote_port) not in connections
                and (port, remote_ip, remote_port) not in time_wait
                and (port_filter is None or port_filter(port, remote_ip, remote_port))
            ):
                return port
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address (no free ephemeral port)")

    def _attach(self, conn: TcpConnection) -> None:
        key = (conn.local_port, conn.remote_ip, conn.remote_port)
        self.connections[key] = conn
        self.port_use[conn.local_port] = self.port_use.get(conn.local_port, 0) + 1

    def detach(self, conn: TcpConnection, was_state: int) -> None:
        key = (conn.local_port, conn.remote_ip, conn.remote_port)
        if self.connections.get(key) is conn:
            del self.connections[key]
            count = self.port_use.get(conn.local_port, 1) - 1
            if count:
                self.port_use[conn.local_port] = count
            else:
                self.port_use.pop(conn.local_port, None)
        elif was_state == TIME_WAIT:
            # A connection the application still holds, aborted in TIME_WAIT: its record goes too.
            tw = self.time_wait.get(key)
            if tw is not None and tw.conn is conn:
                tw.conn = None
                self._time_wait_remove(tw)
        if conn.listener is not None:
            # An embryo leaves the SYN queue; one already in the accept queue stays there, and
            # accept() hands it out closed, with its error, as the kernel does.
            conn.listener.embryonic.discard(conn)

    # -- TIME_WAIT (FreeBSD's tcp_timewait.c) ------------------------------------------------
    def entered_time_wait(self, conn: TcpConnection, now: float) -> None:
        """``conn`` entered TIME_WAIT (FreeBSD ``tcp_twstart``): a compact record takes its place
        in the demultiplexing tables and the connection lets go of its buffers and timers.

        Bound TIME_WAIT (Linux's tcp_max_tw_buckets): beyond the limit the oldest is ended
        early, counted in ``time_wait_recycled`` (and, as every end, in ``connections_closed``)."""
        key = (conn.local_port, conn.remote_ip, conn.remote_port)
        if self.connections.get(key) is not conn:
            return  # not ours to take over (cannot happen: every connection is attached)
        del self.connections[key]  # port_use stays: the record holds the port until it ends
        tw = TcpTimeWait(conn, key, now + 2 * self.config.msl)
        conn.t_rexmt = conn.t_persist = conn.t_keep = conn.t_2msl = conn.t_delack = 0.0
        conn._timer_at = math.inf
        timer = conn._timer
        if timer is not None:
            conn._timer = None
            self.core.timers.cancel(timer)
        if conn.reasm is not NO_REASSEMBLY:  # (most connections never made their own)
            conn.reasm.clear()
        if conn.scoreboard is not NO_SACKS:
            conn.scoreboard.clear()
        if conn.listener is not None:
            conn.listener.embryonic.discard(conn)
        time_wait = self.time_wait
        time_wait[key] = tw
        limit = self.config.time_wait_limit
        while len(time_wait) > limit:
            oldest = next(iter(time_wait.values()))
            self.stats.time_wait_recycled += 1
            self._time_wait_close(oldest)
        if self._tw_timer is None:
            self._tw_timer = self.core.timers.schedule(tw.expiry, self._time_wait_expire)

    def time_wait_released(self, conn: TcpConnection) -> None:
        """The application closed ``conn`` while in TIME_WAIT: the record no longer keeps it."""
        tw = self.time_wait.get((conn.local_port, conn.remote_ip, conn.remote_port))
        if tw is not None and tw.conn is conn:
            tw.conn = None

    def _time_wait_remove(self, tw: TcpTimeWait) -> None:
        """Take ``tw`` out of the table and give back its port (no counting)."""
        key = tw.key
        time_wait = self.time_wait
        if time_wait.get(key) is not tw:
            return
        del time_wait[key]
        port = key[0]
        count = self.port_use.get(port, 1) - 1
        if count:
            self.port_use[port] = count
        else:
            self.port_use.pop(port, None)
        if not time_wait and self._tw_timer is not None:
            self.core.timers.cancel(self._tw_timer)  # nothing left to expire
            self._tw_timer = None

    def _time_wait_close(self, tw: TcpTimeWait) -> None:
        """End a TIME_WAIT (expired, recycled, reset, taken over by a SYN), counted as closed
        once; a connection object the application still holds moves to CLOSED as before."""
        self._time_wait_remove(tw)
        conn = tw.conn
        if conn is not None:
            tw.conn = None
            conn._drop(0)  # counted there, as every end
        else:
            self.stats.connections_closed += 1

    def _time_wait_expire(self, now: float) -> None:
        """The 2MSL timer (FreeBSD's ``tcp_tw_2msl_scan``): the records are in the order they
        expire, so the oldest ones go until one is not due; one entry waits for the next."""
        self._tw_timer = None
        time_wait = self.time_wait
        for _ in range(len(time_wait)):
            tw = next(iter(time_wait.values()))
            if tw.expiry > now:
                break
            self._time_wait_close(tw)
        if time_wait and self._tw_timer is None:
            self._tw_timer = self.core.timers.schedule(
                next(iter(time_wait.values())).expiry, self._time_wait_expire
            )

    def _time_wait_restart(self, tw: TcpTimeWait, now: float) -> None:
        """The peer sent its FIN again (our last ACK was lost): 2MSL counts again, from now."""
        tw.expiry = now + 2 * self.config.msl
        self.time_wait.move_to_end(tw.key)  # the table stays in expiry order

    def _time_wait_respond(self, tw: TcpTimeWait, now: float) -> None:
        """Send the ACK of a connection in TIME_WAIT (FreeBSD ``tcp_twrespond``), as the
        connection's bare ACK was: SND.NXT, RCV.NXT, the last window, timestamps if on."""
        local_port, remote_ip, remote_port = tw.key
        scale = tw.rcv_scale
        window = tw.rcv_wnd >> scale
        if window > 0xFFFF:
            window = 0xFFFF
        if tw.ts_recent >= 0:
            tcp_len = 32
            packet = bytearray(FRAME_HEADROOM + 32)
            _ACK_WITH_TIMESTAMPS.pack_into(
                packet, FRAME_HEADROOM, local_port, remote_port, tw.snd_nxt & _MASK, tw.rcv_nxt & _MASK,
                0x80, TCP_ACK, window, 0, 0, 0x0101080A, (int(now * 1000) + tw.ts_offset) & _MASK,
                tw.ts_recent,
            )  # fmt: skip
        else:
            tcp_len = 20
            packet = bytearray(FRAME_HEADROOM + 20)
            TCP_HEADER.pack_into(
                packet, FRAME_HEADROOM, local_port, remote_port, tw.snd_nxt & _MASK, tw.rcv_nxt & _MASK,
                0x50, TCP_ACK, window, 0, 0,
            )  # fmt: skip
        if remote_ip > _MASK:
            local = remote_ip >> LOCAL6_SHIFT  # the address of ours the record is for (key6)
            tcp6_checksum_and_send(
                self.core, self.stats, packet, tcp_len, remote_ip & _ADDRESS6, now, src=local
            )
        else:
            tcp_checksum_and_send(self.core, self.stats, packet, tcp_len, remote_ip, now)

    def _time_wait_challenge(self, tw: TcpTimeWait, now: float) -> None:
        """RFC 5961 3.2/4.2 in TIME_WAIT: a suspicious RST or SYN gets a (rate limited) ACK."""
        if self.challenge_ack_allowed(now):
            self.stats.challenge_acks_sent += 1
            self._time_wait_respond(tw, now)
        else:
            self.stats.drop(TcpDrop.CHALLENGE_ACK_RATE_LIMITED)

    def _time_wait_input(
        self, tw: TcpTimeWait, length: int, seq_wire: int, ack_wire: int, flags: int, tsval: int, now: float
    ) -> None:
        """A segment for a pair in TIME_WAIT (FreeBSD ``tcp_twcheck``), answered as RFC 9293
        3.10.7.4 answers it in TIME-WAIT, check by check as the connection did: PAWS, the
        sequence number (a retransmitted FIN is ACKed again and restarts 2MSL), RST (RFC 5961:
        only at RCV.NXT ends it), SYN (a challenge ACK; a newer SYN was taken over before
        this), the ACK field; no text is taken."""
        stats = self.stats
        rcv_nxt = tw.rcv_nxt
        seq = unwrap(seq_wire, rcv_nxt)
        ts_recent = tw.ts_recent
        if ts_recent >= 0 and tsval >= 0 and not flags & TCP_RST and seq_lt(tsval, ts_recent):
            stats.drop(TcpDrop.PAWS)  # RFC 7323 5.3: an old duplicate
            self._time_wait_respond(tw, now)
            return
        seg_len = length + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
        rcv_wnd = tw.rcv_wnd
        if seg_len == 0:
            acceptable = (seq == rcv_nxt) if rcv_wnd == 0 else (rcv_nxt <= seq < rcv_nxt + rcv_wnd)
        else:
            acceptable = rcv_wnd > 0 and (
                rcv_nxt <= seq < rcv_nxt + rcv_wnd or rcv_nxt <= seq + seg_len - 1 < rcv_nxt + rcv_wnd
            )
        if not acceptable:
            if flags & TCP_RST:
                stats.drop(TcpDrop.RST_OUT_OF_WINDOW)
                return
            if flags & TCP_FIN:
                self._time_wait_restart(tw, now)  # the peer lost our last ACK: send it again
            stats.duplicate_segments += 1
            self._time_wait_respond(tw, now)
            return
        if ts_recent >= 0 and tsval >= 0 and seq <= rcv_nxt:
            tw.ts_recent = tsval  # RFC 7323 4.3 (our last ACK was at RCV.NXT)
        if flags & TCP_RST:
            if seq != rcv_nxt:
                self._time_wait_challenge(tw, now)
                return
            stats.resets_received += 1
            self._time_wait_close(tw)
            return
        if flags & TCP_SYN:
            self._time_wait_challenge(tw, now)
            return
        if not flags & TCP_ACK:
            stats.drop(TcpDrop.NO_ACK)
            return
        snd_nxt = tw.snd_nxt
        ack = unwrap(ack_wire, snd_nxt)
        if ack > snd_nxt:
            self._time_wait_respond(tw, now)
            stats.drop(TcpDrop.ACK_TOO_NEW)
            return
        if ack < snd_nxt - max(tw.max_sndwnd, 1):
            self._time_wait_challenge(tw, now)
            return
        if flags & TCP_FIN:
            self._time_wait_restart(tw, now)
            self._time_wait_respond(tw, now)

    # -- user calls -------------------------------------------------------------------------
    def connect(
        self,
        remote_ip: int,
        remote_port: int,
        now: float,
        local_port: int = 0,
        *,
        send_buffer: int = 0,
        receive_buffer: int = 0,
    ) -> TcpConnection:
        """Active open: a connection in SYN_SENT with its SYN sent."""
        if not 0 < remote_port <= 0xFFFF:
            raise OSError(errno.EINVAL, "Invalid argument: port")
        if remote_ip == 0 or remote_ip >= 0xE0000000 or remote_ip == self.core.ip_layer.broadcast:
            raise OSError(errno.ENETUNREACH if remote_ip else errno.EINVAL, "not a unicast destination")
        self.core.ip_layer.route(remote_ip)
        if len(self.connections) >= self.config.max_connections:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable (connection table full)")
        if local_port == 0:
            local_port = self.port_selector(remote_ip, remote_port)
        else:
            key = (local_port, remote_ip, remote_port)
            if key in self.connections or key in self.time_wait:
                raise OSError(errno.EADDRINUSE, "Address already in use")
        iss = self.isn_source(local_port, remote_ip, remote_port, now) & _MASK
        conn = TcpConnection(
            self,
            local_port,
            remote_ip,
            remote_port,
            iss,
            send_buffer=send_buffer,
            receive_buffer=receive_buffer,
        )
        self._attach(conn)
        conn.open_active(now)
        return conn

    def connect6(
        self,
        remote_ip: int,
        remote_port: int,
        now: float,
        local_port: int = 0,
        *,
        local_ip: int = 0,
        send_buffer: int = 0,
        receive_buffer: int = 0,
    ) -> TcpConnection6:
        """Active open to an IPv6 peer (``remote_ip`` a plain 128-bit address) from ``local_ip``
        (0: the source address RFC 6724 picks): a connection in SYN_SENT with its SYN sent.
        A v4-mapped address is the caller's to turn into an IPv4 ``connect``."""
        ip6 = self.core.ip6
        if ip6 is None:
            raise OSError(errno.ENETUNREACH, "Network is unreachable (no IPv6 address on this stack)")
        if not 0 < remote_port <= 0xFFFF:
            raise OSError(errno.EINVAL, "Invalid argument: port")
        if not 0 < remote_ip < IP6_KEY or remote_ip >> 120 == 0xFF or remote_ip >> 32 == 0xFFFF:
            raise OSError(errno.ENETUNREACH if remote_ip else errno.EINVAL, "not a unicast IPv6 destination")
        ip6.route(remote_ip, now)
        if not local_ip:
            local_ip = ip6.select_source(remote_ip)
        elif not ip6.usable(local_ip):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        if len(self.connections) >= self.config.max_connections:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable (connection table full)")
        remote = key6(remote_ip, local_ip)
        if local_port == 0:
            local_port = self.port_selector(remote, remote_port)
        else:
            key = (local_port, remote, remote_port)
            if key in self.connections or key in self.time_wait:
                raise OSError(errno.EADDRINUSE, "Address already in use")
        iss = self.isn_source(local_port, remote, remote_port, now) & _MASK
        conn = TcpConnection6(
            self,
            local_port,
            remote,
            remote_port,
            iss,
            local_ip6=local_ip,
            send_buffer=send_buffer,
            receive_buffer=receive_buffer,
        )
        self._attach(conn)
        conn.open_active(now)
        return conn

    def listen(self, port: int, backlog: int = 128) -> TcpListener:
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, "Invalid argument: port")
        if port in self.listeners:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        backlog = min(max(backlog, 1), self.config.max_backlog)
        listener = self.listeners[port] = TcpListener(self, port, backlog)
        return listener

    def listen6(self, port: int, backlog: int = 128, v6only: bool = False) -> TcpListener:
        """Listen for IPv6 (an AF_INET6 socket) and, unless ``v6only``, IPv4 too (dual-stack,
        Linux's default): a port IPv4 listens on already is in use then, as in the kernel."""
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, "Invalid argument: port")
        if port in self.listeners6 or (not v6only and port in self.listeners):
            raise OSError(errno.EADDRINUSE, "Address already in use")
        backlog = min(max(backlog, 1), self.config.max_backlog)
        listener = self.listeners6[port] = TcpListener(self, port, backlog)
        listener.ipv6 = True
        listener.ipv4 = not v6only
        if not v6only:
            self.listeners[port] = listener
        return listener

    # -- input ------------------------------------------------------------------------------
    def tcp_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        """A TCP segment arrived in ``buf[start:end]`` (FreeBSD ``tcp_input``)."""
        stats = self.stats
        stats.segments_received += 1
        try:
            sport, dport, seq, ack, flags, window, _urgent, header_len = parse_tcp_header(
                buf, start, end, src, dst, self.core.verify_checksums
            )
        except WireError as exc:
            stats.drop(exc.reason)
            return
        if dst != self.core.ip:
            stats.drop(TcpDrop.NOT_UNICAST)  # TCP never answers broadcasts
            return
        if (flags & TCP_SYN and flags & (TCP_FIN | TCP_RST)) or not flags & (TCP_SYN | TCP_ACK | TCP_RST):
            stats.drop(TcpDrop.BAD_FLAGS)  # SYN+FIN, SYN+RST, or no SYN/ACK/RST at all
            return
        if sport == 0 or dport == 0:
            stats.drop(TcpDrop.BAD_PORT)
            return
        # Options: the common aligned timestamp layout without building an object (as Linux's
        # tcp_parse_aligned_timestamp); anything else through the full parser.
        options: TcpOptions | None = None
        tsval = tsecr = -1
        opt_start = start + TCP_HEADER_LEN
        opt_len = header_len - TCP_HEADER_LEN
        if opt_len == 12 and buf[opt_start : opt_start + 4] == _TS_ALIGNED:
            tsval, tsecr = _U32X2.unpack_from(buf, opt_start + 4)
        elif opt_len:
            options = linux_syn_options(buf, opt_start) if opt_len == 20 else None
            if options is None:
                try:
                    options = parse_tcp_options(buf, opt_start, start + header_len)
                except WireError as exc:
                    stats.drop(exc.reason)
                    return
            if options.timestamps is not None:
                tsval, tsecr = options.timestamps
        data_start = start + header_len
        conn = self.connections.get((dport, src, sport))
        if conn is not None:
            conn.segment_arrives(buf, data_start, end, seq, ack, flags, window, options, tsval, tsecr, now)
            return
        if self.time_wait:
            tw = self.time_wait.get((dport, src, sport))
            if tw is not None:
                if flags & TCP_SYN and not flags & TCP_ACK and dport in self.listeners:
                    # RFC 6191 / BSD: a new SYN above the old connection's sequence space (or
                    # with a newer timestamp) may reuse the pair at once.
                    newer_ts = tsval >= 0 and tw.ts_recent >= 0 and seq_lt(tw.ts_recent, tsval)
                    higher_seq = seq_lt(tw.rcv_nxt, seq)
                    if newer_ts or (tsval < 0 and higher_seq):
                        self._time_wait_close(tw)
                        self._listen_input(
                            self.listeners[dport], buf, data_start, end, src, sport, dport, seq, ack,
                            flags, window, options, tsval, tsecr, now,
                        )  # fmt: skip
                        return
                self._time_wait_input(tw, end - data_start, seq, ack, flags, tsval, now)
                return
        listener = self.listeners.get(dport)
        if listener is not None:
            self._listen_input(
                listener,
                buf,
                data_start,
                end,
                src,
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                options,
                tsval,
                tsecr,
                now,
            )
            return
        stats.drop(TcpDrop.NO_SOCKET)
        if not flags & TCP_RST:
            self.send_reset(src, sport, dport, ack, seq + (end - data_start) + (1 if flags & TCP_SYN else 0)
                            + (1 if flags & TCP_FIN else 0), bool(flags & TCP_ACK), now)  # fmt: skip

    def tcp6_input(
        self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
    ) -> None:
        """A TCP segment arrived over IPv6 in ``buf[start:end]`` (FreeBSD ``tcp6_input``, which
        checks what is IPv6's and hands the segment to ``tcp_input``'s own code): the checksum
        over the IPv6 pseudo-header (RFC 8200 8.1), a unicast address of ours, then the steps of
        :meth:`tcp_input` keyed by both addresses (:func:`._tcp6.key6`).  They are written out
        again rather than shared: sharing them would cost every IPv4 segment a call."""
        stats = self.stats
        stats.segments_received += 1
        try:
            sport, dport, seq, ack, flags, window, _urgent, header_len = parse_tcp_header(
                buf, start, end, 0, 0, False
            )
        except WireError as exc:
            stats.drop(exc.reason)
            return
        length = end - start
        if (
            self.core.verify_checksums
            and sum16(buf, start, length, pseudo_header_sum6(src, dst, IPPROTO_TCP, length)) != 0xFFFF
        ):
            stats.drop(TcpDrop.BAD_CHECKSUM)
            return
        ip6 = self.core.ip6
        if ip6 is None or dst not in ip6.addresses:
            stats.drop(TcpDrop.NOT_UNICAST)  # a multicast group: TCP never answers those
            return
        if (flags & TCP_SYN and flags & (TCP_FIN | TCP_RST)) or not flags & (TCP_SYN | TCP_ACK | TCP_RST):
            stats.drop(TcpDrop.BAD_FLAGS)
            return
        if sport == 0 or dport == 0:
            stats.drop(TcpDrop.BAD_PORT)
            return
        options: TcpOptions | None = None
        tsval = tsecr = -1
        opt_start = start + TCP_HEADER_LEN
        opt_len = header_len - TCP_HEADER_LEN
        if opt_len == 12 and buf[opt_start : opt_start + 4] == _TS_ALIGNED:
            tsval, tsecr = _U32X2.unpack_from(buf, opt_start + 4)
        elif opt_len:
            options = linux_syn_options(buf, opt_start) if opt_len == 20 else None
            if options is None:
                try:
                    options = parse_tcp_options(buf, opt_start, start + header_len)
                except WireError as exc:
                    stats.drop(exc.reason)
                    return
            if options.timestamps is not None:
                tsval, tsecr = options.timestamps
        data_start = start + header_len
        remote = src | IP6_KEY | dst << LOCAL6_SHIFT  # key6(src, dst)
        key = (dport, remote, sport)
        conn = self.connections.get(key)
        if conn is not None:
            snd_una = conn.snd_una
            if not (
                options is None
                and flags & ~TCP_PSH == TCP_ACK
                and conn.__class__ is TcpConnection6
                and self.core.fast_path
                and predicted_input(conn, buf, data_start, end, seq, ack, flags, window, tsval, tsecr, now)
            ):
                conn.segment_arrives(
                    buf, data_start, end, seq, ack, flags, window, options, tsval, tsecr, now
                )
            if conn.snd_una > snd_una:
                ip6.nd6.nud_hint(src, now)  # forward progress: the neighbour is reachable (ND6_HINT)
            return
        if self.time_wait:
            tw = self.time_wait.get(key)
            if tw is not None:
                if flags & TCP_SYN and not flags & TCP_ACK and dport in self.listeners6:
                    newer_ts = tsval >= 0 and tw.ts_recent >= 0 and seq_lt(tw.ts_recent, tsval)
                    if newer_ts or (tsval < 0 and seq_lt(tw.rcv_nxt, seq)):  # RFC 6191, as tcp_input
                        self._time_wait_close(tw)
                        self._listen_input(
                            self.listeners6[dport], buf, data_start, end, remote, sport, dport, seq, ack,
                            flags, window, options, tsval, tsecr, now, dst,
                        )  # fmt: skip
                        return
                self._time_wait_input(tw, end - data_start, seq, ack, flags, tsval, now)
                return
        listener = self.listeners6.get(dport)
        if listener is not None:
            self._listen_input(
                listener, buf, data_start, end, remote, sport, dport, seq, ack, flags, window, options,
                tsval, tsecr, now, dst,
            )  # fmt: skip
            return
        stats.drop(TcpDrop.NO_SOCKET)
        if not flags & TCP_RST:
            seg_end = seq + (end - data_start) + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
            self.send_reset(remote, sport, dport, ack, seg_end, bool(flags & TCP_ACK), now, dst)

    def shed_syns(self, frames: list[bytes], now: float) -> list[bytes]:
        """A burst read while the port was backlogged (it came back full: more frames wait) and
        the SYN queue of a listener overflowed in the last ``FLOOD_HOLD`` seconds, i.e. a flood
        outruns us: keep the first ``syncookie_burst_budget`` SYNs to such a listener and drop
        the rest before any layer parses them, counted ``syn_shed``.  The runtime calls this
        only then (``now - cookies_at < FLOOD_HOLD``), so it costs nothing otherwise.

        Why: the flood and the established flows share the port's one receive queue, and what
        the queue cannot hold the kernel drops, theirs included.  A SYN answered with a cookie
        costs the layers' parsing, a SYN-ACK built and written, often a RST read back; a shed one
        a few byte compares.  In the soak's full-size flood (benchmarks/RESULTS.md) the frames
        the stack takes from the TAP per CPU-second doubled, and the kernel's drops on it fell
        from 57 % to 4-33 %.  A real client retries a shed SYN (after 1 s, then backing off), as
        it would one the queue dropped.  The check reads an untagged IPv4 frame without IP
        options: a TCP segment whose flags are exactly SYN (one with ECN's setup flags passes),
        to a listening port; anything else passes through untouched, parsed and checked as before."""
        budget = self.config.syncookie_burst_budget
        listeners = self.listeners
        kept: list[bytes] = []
        keep = kept.append
        answered = shed = 0
        for frame in frames:
            if (
                len(frame) >= 54
                and frame[47] == 0x02  # the TCP flags: SYN alone
                and frame[23] == 6
                and frame[14] == 0x45
                and frame[12:14] == b"\x08\x00"
            ):
                listener = listeners.get(frame[36] << 8 | frame[37])
                if listener is not None and now - listener.cookies_at < FLOOD_HOLD:
                    if answered >= budget:
                        shed += 1
                        continue
                    answered += 1
            keep(frame)
        if shed:
            stats = self.stats
            stats.drop(TcpDrop.SYN_SHED)  # registers the reason the first time
            stats.dropped[TcpDrop.SYN_SHED] += shed - 1
        return kept

    def syn_input(self, frame: bytes, record: tuple[int, ...], now: float) -> bool:
        """A connection request the burst's classifier found sound (``_fastpath``: an IPv4
        frame to our address from a sound source, unfragmented, its checksums valid, a SYN alone
        with nonzero ports) and no connection holds: to the listener's input, its options
        parsed as :meth:`tcp_input` parses them, as ``tcp_input`` would have handed it on
        after repeating the classifier's checks.  A pair in TIME_WAIT is judged as
        ``tcp_input`` judges it (RFC 6191's reuse, else the record's answer): a server that
        closes first holds its clients' pairs there, and a client's ports come round again
        within 2MSL under load, so most of its SYNs meet one.  ``False`` (nothing done) when no
        one listens on the port: ``tcp_input`` decides that."""
        _kind, src, sport, dport, seq, ack, flags, window, _tsval, _tsecr, data_start, end = record
        listener = self.listeners.get(dport)
        if listener is None:
            return False
        tw = self.time_wait.get((dport, src, sport)) if self.time_wait else None
        options: TcpOptions | None = None
        tsval = tsecr = -1
        opt_start = 34 + TCP_HEADER_LEN  # an IPv4 header without options, then TCP's
        opt_len = data_start - opt_start
        if opt_len == 12 and frame[opt_start : opt_start + 4] == _TS_ALIGNED:
            tsval, tsecr = _U32X2.unpack_from(frame, opt_start + 4)
        elif opt_len:
            options = linux_syn_options(frame, opt_start) if opt_len == 20 else None
            if options is None:
                try:
                    options = parse_tcp_options(frame, opt_start, data_start)
                except WireError as exc:
                    self.stats.drop(exc.reason)
                    return True
            if options.timestamps is not None:
                tsval, tsecr = options.timestamps
        if tw is not None:
            # As tcp_input: RFC 6191 / BSD, a new SYN above the old connection's sequence space
            # (or with a newer timestamp) reuses the pair at once; any other is the record's.
            newer_ts = tsval >= 0 and tw.ts_recent >= 0 and seq_lt(tw.ts_recent, tsval)
            if not (newer_ts or (tsval < 0 and seq_lt(tw.rcv_nxt, seq))):
                self._time_wait_input(tw, end - data_start, seq, ack, flags, tsval, now)
                return True
            self._time_wait_close(tw)
        self._listen_input(
            listener, frame, data_start, end, src, sport, dport, seq, ack, flags, window, options, tsval,
            tsecr, now,
        )  # fmt: skip
        return True

    def _listen_input(
        self,
        listener: TcpListener,
        buf: bytes,
        data_start: int,
        end: int,
        src: int,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: TcpOptions | None,
        tsval: int,
        tsecr: int,
        now: float,
        local6: int = 0,
    ) -> None:
        """RFC 9293 3.10.7.2 (LISTEN), with a bounded SYN queue and SYN cookies beyond it.
        ``local6``: our address a segment that came over IPv6 is for (0 for IPv4)."""
        stats = self.stats
        if flags & TCP_RST:
            stats.drop(TcpDrop.RST_TO_LISTENER)
            return
        if flags & TCP_ACK:
            if not flags & TCP_SYN and self.config.syncookies:
                cookie = self.cookies.check(
                    local6 or self.core.ip, dport, src, sport, (seq - 1) & _MASK, (ack - 1) & _MASK, now
                )
                if cookie is not None:
                    stats.syncookies_valid += 1
                    self._cookie_established(
                        listener, cookie, buf, data_start, end, src, sport, dport, seq, ack, flags, window,
                        tsval, tsecr, now, local6,
                    )  # fmt: skip
                    return
                stats.syncookies_failed += 1
            self.send_reset(src, sport, dport, ack, 0, True, now, local6)
            return
        if not flags & TCP_SYN:
            stats.drop(TcpDrop.NO_SYN_TO_LISTENER)
            return
        if len(listener.accept_queue) >= listener.backlog:
            stats.drop(TcpDrop.LISTEN_QUEUE_OVERFLOW)  # as Linux: let the client retry its SYN
            return
        if (
            len(listener.embryonic) >= self.config.syn_queue_limit
            or len(self.connections) >= self.config.max_connections
        ):
            if self.config.syncookies:
                listener.cookies_at = self.cookies_at = now  # flooded: see shed_syns
                self._send_cookie_syn_ack(listener, src, sport, dport, seq, options, tsval, now, local6)
            else:
                stats.drop(TcpDrop.SYN_QUEUE_FULL)
            return
        if now - listener.cookies_at < FLOOD_HOLD:
            # Its SYN queue overflowed a moment ago: stay stateless until the flood has been
            # gone for FLOOD_HOLD seconds.  A flood from addresses that answer our SYN-ACKs with
            # RSTs empties the queue as fast as it fills it, and each entry it made would cost a
            # whole connection (built, answered, reset, freed) where a cookie costs a SYN-ACK.
            self._send_cookie_syn_ack(listener, src, sport, dport, seq, options, tsval, now, local6)
            return
        iss = self.isn_source(dport, src, sport, now) & _MASK
        conn = self._passive_connection(listener, src, sport, iss, seq, options, tsval, now, local6)
        conn.rcv_adv = conn.rcv_nxt
        conn.snd_wnd = conn.max_sndwnd = window
        conn.snd_wl1 = seq
        conn.snd_wl2 = iss
        conn.tcp_output(now)

    def _passive_connection(
        self,
        listener: TcpListener,
        src: int,
        sport: int,
        iss: int,
        irs: int,
        options: TcpOptions | None,
        tsval: int,
        now: float,
        local6: int = 0,
    ) -> TcpConnection:
        """A connection in SYN_RECEIVED for ``listener``, from a SYN (or a SYN cookie's ACK):
        the listener's buffer sizes, the negotiated options, counted and in the SYN queue."""
        if local6:
            conn: TcpConnection = TcpConnection6(
                self, listener.port, src, sport, iss, local_ip6=local6,
                send_buffer=listener.send_buffer, receive_buffer=listener.receive_buffer,
            )  # fmt: skip
        else:
            conn = TcpConnection(
                self,
                listener.port,
                src,
                sport,
                iss,
                send_buffer=listener.send_buffer,
                receive_buffer=listener.receive_buffer,
                passive=True,  # its congestion control is made with the MSS the SYN gives, below
            )
        conn.listener = listener
        conn.state = SYN_RECEIVED
        conn.irs = irs
        conn.rcv_nxt = irs + 1
        conn.last_activity = now
        conn._take_syn_options(options, tsval, from_syn_ack=False)
        listener.embryonic.add(conn)
        self._attach(conn)
        self.stats.passive_opens += 1
        return conn

    def _send_cookie_syn_ack(
        self,
        listener: TcpListener,
        src: int,
        sport: int,
        dport: int,
        seq: int,
        options: TcpOptions | None,
        tsval: int,
        now: float,
        local6: int = 0,
    ) -> None:
        """A stateless SYN-ACK whose ISN encodes the options (RFC 4987 3.6)."""
        config = self.config
        peer_mss = options.mss if options is not None and options.mss else config.default_mss
        peer_ws = options.window_scale if options is not None and config.window_scaling else None
        sack = bool(options is not None and options.sack_permitted and config.sack)
        our_mss = self.core.mtu - (TcpConnection6.IP_TCP_HEADERS if local6 else TcpConnection.IP_TCP_HEADERS)
        cookie_options = CookieOptions(mss=min(peer_mss, our_mss), window_scale=peer_ws, sack_permitted=sack)
        iss = self.cookies.make(local6 or self.core.ip, dport, src, sport, seq, cookie_options, now)
        our_ws = window_shift_for(config.receive_buffer) if peer_ws is not None else None
        timestamps = None
        if tsval >= 0 and config.timestamps:
            offset = self.timestamp_offset(dport, src, sport)
            timestamps = ((int(now * 1000) + offset) & _MASK, tsval)
        syn_options = TcpOptions(mss=our_mss, window_scale=our_ws, sack_permitted=sack, timestamps=timestamps)
        window = min(listener.receive_buffer or config.receive_buffer, 0xFFFF)
        self._send_bare(
            src, sport, dport, iss, (seq + 1) & _MASK, TCP_SYN | TCP_ACK, window, syn_options, now, local6
        )
        self.stats.syncookies_sent += 1

    def _cookie_established(
        self,
        listener: TcpListener,
        cookie: CookieOptions,
        buf: bytes,
        data_start: int,
        end: int,
        src: int,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        tsval: int,
        tsecr: int,
        now: float,
        local6: int = 0,
    ) -> None:
        """The ACK of a cookie SYN-ACK: build the connection the SYN queue could not hold."""
        if len(listener.accept_queue) >= listener.backlog:
            self.stats.drop(TcpDrop.LISTEN_QUEUE_OVERFLOW)
            return
        iss = (ack - 1) & _MASK
        syn_options = TcpOptions(
            mss=cookie.mss,
            window_scale=cookie.window_scale,
            sack_permitted=cookie.sack_permitted,
            timestamps=(tsval, tsecr) if tsval >= 0 else None,
        )
        conn = self._passive_connection(
            listener, src, sport, iss, (seq - 1) & _MASK, syn_options, tsval, now, local6
        )
        # what the cookie SYN-ACK offered (_send_cookie_syn_ack)
        conn.rcv_adv = conn.rcv_nxt + min(listener.receive_buffer or self.config.receive_buffer, 0xFFFF)
        conn.snd_una = iss
        conn.snd_max = conn.snd_nxt = iss + 1
        conn.snd_wl1 = conn.irs
        # Now the ACK itself completes the handshake through the ordinary path.
        conn.segment_arrives(buf, data_start, end, seq, ack, flags, window, None, tsval, tsecr, now)

    # -- output helpers -----------------------------------------------------------------------
    def send_reset(
        self,
        dst: int,
        dport: int,
        sport: int,
        seg_ack: int,
        seg_end: int,
        had_ack: bool,
        now: float,
        src: int = 0,
    ) -> None:
        """RST for a segment that belongs to no connection (RFC 9293 3.10.7.1), rate limited."""
        config = self.config
        self._rst_tokens = min(
            config.reset_rate_limit, self._rst_tokens + max(now - self._rst_at, 0.0) * config.reset_rate_limit
        )
        self._rst_at = now
        if self._rst_tokens < 1.0:
            self.stats.drop(TcpDrop.RESET_RATE_LIMITED)
            return
        self._rst_tokens -= 1.0
        if had_ack:
            self._send_bare(dst, dport, sport, seg_ack, 0, TCP_RST, 0, None, now, src)
        else:
            self._send_bare(dst, dport, sport, 0, seg_end & _MASK, TCP_RST | TCP_ACK, 0, None, now, src)
        self.stats.resets_sent += 1

    def challenge_ack_allowed(self, now: float) -> bool:
        """RFC 5961 7: a global budget of challenge ACKs (100 a second, as Linux 4.7+ with jitter off)."""
        self._challenge_tokens = min(
            100.0, self._challenge_tokens + max(now - self._challenge_at, 0.0) * 100.0
        )
        self._challenge_at = now
        if self._challenge_tokens < 1.0:
            return False
        self._challenge_tokens -= 1.0
        return True

    def _send_bare(
        self,
        dst: int,
        dport: int,
        sport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: TcpOptions | None,
        now: float,
        src: int = 0,
    ) -> None:
        """A segment of no connection (RST, a SYN cookie's SYN-ACK); ``src``: our IPv6 address
        to send it from (0: the one ``ip6_output`` picks; unused for IPv4)."""
        option_bytes = options.to_bytes() if options is not None else b""
        header_len = TCP_HEADER_LEN + len(option_bytes)
        packet = bytearray(FRAME_HEADROOM + header_len)
        TCP_HEADER.pack_into(
            packet,
            FRAME_HEADROOM,
            sport,
            dport,
            seq & _MASK,
            ack & _MASK,
            (header_len >> 2) << 4,
            flags,
            window,
            0,
            0,
        )
        packet[FRAME_HEADROOM + TCP_HEADER_LEN :] = option_bytes
        if dst > _MASK:
            src = src or dst >> LOCAL6_SHIFT  # (a connection's key holds our address: key6)
            tcp6_checksum_and_send(self.core, self.stats, packet, header_len, dst & _ADDRESS6, now, src=src)
        else:
            tcp_checksum_and_send(self.core, self.stats, packet, header_len, dst, now)

    def host_unreachable(self, ip: int) -> None:
        """ARP gave up on ``ip`` (or on the gateway, for every off-link peer): a connection still
        opening fails at once with EHOSTUNREACH, as Linux reports it; an established one keeps it
        as a soft error, reported if it then times out (RFC 1122 4.2.3.9)."""
        reached_through = self.core.reached_through
        for conn in list(self.connections.values()):
            if conn.remote_ip <= _MASK and reached_through(ip, conn.remote_ip):  # (IPv4 peers: ARP)
                if conn.state == SYN_SENT:
                    conn._drop(errno.EHOSTUNREACH, counted=True)
                else:
                    conn.soft_error = errno.EHOSTUNREACH

    # -- ICMP ---------------------------------------------------------------------------------
    def tcp_ctlinput(
        self,
        local_port: int,
        remote_ip: int,
        remote_port: int,
        error: int,
        mtu: int,
        quoted_seq: int,
        now: float,
    ) -> bool:
        """An ICMP error about a segment we sent; checked against the connection's window
        (RFC 5927 4.1) so a blind attacker cannot use it."""
        conn = self.connections.get((local_port, remote_ip, remote_port))
        if conn is None or conn.state == CLOSED:
            return False
        if conn.state != ESTABLISHED and conn.state == LISTEN:
            return False
        seq = unwrap(quoted_seq, conn.snd_una)
        if not conn.snd_una <= seq < max(conn.snd_max, conn.snd_una + 1):
            self.stats.drop(TcpDrop.ICMP_OUT_OF_WINDOW)
            return False
        conn.icmp_error(error, mtu, now)
        return True
