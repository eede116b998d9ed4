"""One TCP connection (FreeBSD's ``tcpcb``): the RFC 9293 state machine, sans-IO.

It is fed segments (``segment_arrives``, called from ``tcp_input``), user calls (``send``,
``receive``, ``shutdown``, ``close``, ``abort``) and time (``on_timer``), and it writes
segments through ``tcp_output`` -> ``ip_output``.  Sequence numbers are absolute integers inside
(see ``_seq.py``); 32-bit values exist only on the wire.

What it implements: all eleven states with simultaneous open and close; MSS, window scaling,
timestamps with PAWS (RFC 7323), SACK (RFC 2018) and SACK-based loss recovery (RFC 6675);
RFC 6298 retransmission timer with Karn's rule and back-off; fast retransmit/fast recovery with
NewReno (RFC 5681, RFC 6582); pluggable congestion control; delayed ACKs; Nagle; sender and
receiver silly-window avoidance; zero-window probing; keepalive; user timeout; RFC 5961 challenge
ACKs; TIME_WAIT.
"""

from __future__ import annotations

import errno
import math
import struct
from enum import IntEnum
from typing import TYPE_CHECKING

from ._ip import FRAME_HEADROOM
from ._offload import OffloadPacket
from ._seq import unwrap
from ._tcp_buffers import ReassemblyQueue, ReceiveBuffer, SackScoreboard, SendBuffer
from ._tcp_cc import make_congestion_control
from .wire._checksum import sum16
from .wire.ipv4 import IPPROTO_TCP
from .wire.tcp import TCP_ACK, TCP_FIN, TCP_HEADER, TCP_HEADER_LEN, TCP_PSH, TCP_RST, TCP_SYN, TcpOptions

if TYPE_CHECKING:
    from ._core import StackCore
    from ._stats import TcpStats
    from ._tcp import TcpLayer, TcpListener

__all__ = ["TcpConnection", "TcpState"]

_MASK = 0xFFFFFFFF
_TS_OPTION = struct.Struct("!III")  # NOP NOP kind=8 len=10, TSval, TSecr
_U32X2 = struct.Struct("!II")
_ACK_WITH_TIMESTAMPS = struct.Struct("!HHIIBBHHHIII")  # a TCP header and NOP NOP TS in one
_MAX_WINDOW_SHIFT = 14


def tcp_checksum_and_send(
    core: StackCore, stats: TcpStats, packet: bytearray, tcp_len: int, dst: int, now: float
) -> int:
    """Fill in the checksum of the TCP segment at ``FRAME_HEADROOM`` and hand it to
    ``ip_output``; returns 0, or the errno of a routing failure (counted as ``output_error``)."""
    local_ip = core.ip
    pseudo = (local_ip >> 16) + (local_ip & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + IPPROTO_TCP + tcp_len
    if packet.__class__ is OffloadPacket:
        # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented, and
        # the port completes it (for a TSO segment, per segment, adjusting the length as
        # Linux's tcp_gso_segment does; software GSO computes each segment's whole).
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        field = (pseudo & 0xFFFF) + (pseudo >> 16)
        gso_size = packet.gso_size  # type: ignore[attr-defined]
        if gso_size:  # count the segments the wire will carry, as Linux counts OutSegs
            payload = tcp_len - ((packet[FRAME_HEADROOM + 12] >> 4) << 2)
            stats.segments_sent += (payload + gso_size - 1) // gso_size - 1
    else:
        field = ~sum16(packet, FRAME_HEADROOM, tcp_len, pseudo) & 0xFFFF
    packet[FRAME_HEADROOM + 16] = field >> 8
    packet[FRAME_HEADROOM + 17] = field & 0xFF
    stats.segments_sent += 1
    try:
        core.ip_layer.ip_output(packet, IPPROTO_TCP, dst, now)
    except OSError as exc:
        stats.drop("output_error")
        return exc.errno or errno.EHOSTUNREACH
    return 0


class TcpState(IntEnum):
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    CLOSE_WAIT = 5
    FIN_WAIT_1 = 6
    CLOSING = 7
    LAST_ACK = 8
    FIN_WAIT_2 = 9
    TIME_WAIT = 10


CLOSED, LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT = range(6)
FIN_WAIT_1, CLOSING, LAST_ACK, FIN_WAIT_2, TIME_WAIT = range(6, 11)
_SYNCHRONIZED = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK, FIN_WAIT_2, TIME_WAIT})
_RECEIVES_DATA = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})
_SENDS_DATA = frozenset({ESTABLISHED, CLOSE_WAIT})


def window_shift_for(buffer: int) -> int:
    """The smallest shift that lets a 16-bit window field cover ``buffer`` bytes (at most 14)."""
    shift = 0
    while shift < _MAX_WINDOW_SHIFT and (0xFFFF << shift) < buffer:
        shift += 1
    return shift


class TcpConnection:
    """A TCP connection of one stack instance.  Create through ``TcpLayer.connect`` or a listener."""

    __slots__ = (
        "_timer_at",
        "ack_now",
        "cc",
        "config",
        "core",
        "dupacks",
        "error",
        "fin_seq",
        "high_rxt",
        "in_recovery",
        "irs",
        "iss",
        "keep_count",
        "keep_idle",
        "keep_interval",
        "keep_probes",
        "keepalive",
        "last_ack_sent",
        "last_activity",
        "last_send",
        "layer",
        "listener",
        "local_port",
        "max_sndwnd",
        "mss",
        "nodelay",
        "peer_mss",
        "persist_shift",
        "rcv_adv",
        "rcv_fin",
        "rcv_nxt",
        "rcv_scale",
        "rcvbuf",
        "reasm",
        "recover",
        "remote_ip",
        "remote_port",
        "rto",
        "rtt_seq",
        "rtt_time",
        "rttvar",
        "rxtshift",
        "sack_on",
        "scoreboard",
        "segs_unacked",
        "shut_rd",
        "shut_wr",
        "snd_max",
        "snd_nxt",
        "snd_scale",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "sndbuf",
        "soft_error",
        "srtt",
        "state",
        "stats",
        "t_2msl",
        "t_delack",
        "t_keep",
        "t_persist",
        "t_rexmt",
        "ts_offset",
        "ts_on",
        "ts_recent",
        "ts_recent_valid",
        "user_closed",
        "waiter",
    )  # fmt: skip

    def __init__(
        self,
        layer: TcpLayer,
        local_port: int,
        remote_ip: int,
        remote_port: int,
        iss: int,
        *,
        send_buffer: int = 0,
        receive_buffer: int = 0,
    ) -> None:
        """``send_buffer``/``receive_buffer`` (SO_SNDBUF/SO_RCVBUF) default to the stack's config;
        they are given here, before the SYN, because the window a SYN offers is a promise."""
        self.layer = layer
        self.core = layer.core
        config = self.config = layer.config
        self.stats = layer.stats
        self.local_port, self.remote_ip, self.remote_port = local_port, remote_ip, remote_port
        self.state = CLOSED
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.max_sndwnd = 0
        self.irs = self.rcv_nxt = self.rcv_adv = 0
        self.snd_scale = self.rcv_scale = 0
        self.ts_on = self.sack_on = False
        self.ts_recent = 0
        self.ts_recent_valid = False
        self.ts_offset = layer.timestamp_offset(local_port, remote_ip, remote_port)
        self.last_ack_sent = 0
        self.peer_mss = config.default_mss
        self.mss = min(config.default_mss, layer.core.mtu - 40)
        self.cc = make_congestion_control(config.congestion_control, self.mss)
        self.srtt = 0.0
        self.rttvar = 0.0
        self.rto = config.rto_initial
        self.rxtshift = 0
        self.rtt_seq = -1  # the segment being timed when timestamps are off (Karn)
        self.rtt_time = 0.0
        self.dupacks = 0
        self.in_recovery = False
        self.recover = iss
        self.high_rxt = iss
        self.sndbuf = SendBuffer(send_buffer or config.send_buffer, iss + 1)
        self.rcvbuf = ReceiveBuffer(receive_buffer or config.receive_buffer)
        self.reasm = ReassemblyQueue(receive_buffer or config.receive_buffer)
        self.scoreboard = SackScoreboard()
        self.fin_seq = -1  # our FIN's sequence number once the user shut down writing
        self.rcv_fin = -1  # the peer's FIN sequence number when it arrived out of order
        self.shut_rd = False  # the peer's FIN has been taken in (end of the byte stream)
        self.shut_wr = False
        self.user_closed = False
        self.segs_unacked = 0
        self.ack_now = False
        self.t_rexmt = self.t_persist = self.t_keep = self.t_2msl = self.t_delack = 0.0
        self._timer_at = math.inf
        self.persist_shift = 0
        self.keep_probes = 0
        self.keepalive = False
        # TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT, per connection as in the kernel
        self.keep_idle = config.keepalive_idle
        self.keep_interval = config.keepalive_interval
        self.keep_count = config.keepalive_count
        self.nodelay = config.nodelay
        self.error = 0
        self.soft_error = 0  # the last ICMP or routing error, reported if we time out
        self.last_activity = 0.0
        self.last_send = 0.0
        self.waiter: object = None
        self.listener: TcpListener | None = None

    def __repr__(self) -> str:
        from ipaddress import IPv4Address

        return (
            f"<TcpConnection {self.local_port} <-> {IPv4Address(self.remote_ip)}:{self.remote_port} "
            f"{TcpState(self.state).name}>"
        )

    # -- user calls ---------------------------------------------------------------------------
    def open_active(self, now: float) -> None:
        """Send our SYN (RFC 9293 3.10.1, OPEN call in active mode)."""
        self.state = SYN_SENT
        self.rcv_scale = window_shift_for(self.config.receive_buffer) if self.config.window_scaling else 0
        self.last_activity = now
        self.stats.active_opens += 1
        self.tcp_output(now)

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue what fits of ``data``; returns how many bytes were taken (0: the buffer is full)."""
        if self.error:
            raise OSError(self.error, errno.errorcode.get(self.error, ""))
        if self.shut_wr or (self.state not in _SENDS_DATA and self.state not in (SYN_SENT, SYN_RECEIVED)):
            raise OSError(errno.EPIPE, "Broken pipe")
        taken = self.sndbuf.append(data)
        if taken and self.state in _SENDS_DATA:
            if self.core.autocork:
                # The runtime sends at its next turn, after the application's other writes of
                # this scheduling round: a response's headers and body leave as one segment
                # (Linux's tcp_autocorking, without its wait for a TX completion).
                self.core.output_pending[self] = None
            else:
                self.tcp_output(now)
        return taken

    def receive(self, max_bytes: int, now: float) -> bytes | None:
        """Up to ``max_bytes`` in-order bytes; ``b""`` at the end of the stream; ``None`` when
        nothing is there yet.  Raises the connection's error once the data before it is read."""
        if self.rcvbuf and max_bytes > 0:
            before = self.rcvbuf.free()
            data = self.rcvbuf.read(max_bytes)
            self._window_update(before, now)
            return data
        if self.error:
            raise OSError(self.error, errno.errorcode.get(self.error, ""))
        if self.shut_rd or self.state in (CLOSED, TIME_WAIT, CLOSING, LAST_ACK, CLOSE_WAIT):
            return b""
        if max_bytes <= 0:
            return b""
        return None

    def _window_update(self, free_before: int, now: float) -> None:
        """Tell the peer when reading opened the window by two segments or half the buffer
        (RFC 9293 3.8.6.2.2 on the receiver's side, FreeBSD's tcp_output "window update")."""
        if self.state not in _RECEIVES_DATA:
            return
        advertised = self.rcv_adv - self.rcv_nxt
        opened = self._receive_window() - advertised
        if opened >= 2 * self.mss or opened >= self.rcvbuf.limit // 2 or (free_before == 0 and opened > 0):
            self.ack_now = True
            self.tcp_output(now)

    def shutdown(self, now: float) -> None:
        """No more data from us: a FIN follows what is queued (CLOSE in RFC 9293 terms)."""
        if self.shut_wr:
            return
        self.shut_wr = True
        if self.state == SYN_SENT:
            self._drop(0)
            return
        self.fin_seq = self.sndbuf.end
        if self.state in (ESTABLISHED, SYN_RECEIVED):
            self.state = FIN_WAIT_1
        elif self.state == CLOSE_WAIT:
            self.state = LAST_ACK
        self.tcp_output(now)

    def close(self, now: float) -> None:
        """The application is done with the connection.  Unread data means it cannot be
        delivered: reset the peer (RFC 2525 2.17) instead of a FIN it would take as success."""
        self.user_closed = True
        if self.state in (CLOSED, TIME_WAIT):
            return
        if len(self.rcvbuf) or (self.state in _RECEIVES_DATA and len(self.reasm)):
            self.abort(now)
            return
        self.shutdown(now)

    def abort(self, now: float) -> None:
        """Reset the connection (RFC 9293 3.10.5, ABORT)."""
        if self.state in (SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self._send_segment(self.snd_nxt, TCP_RST | TCP_ACK, b"", now)
            self.stats.resets_sent += 1
        self._drop(errno.ECONNABORTED if not self.error else self.error, counted=True)

    # -- properties the socket layer reads ----------------------------------------------------
    @property
    def readable(self) -> bool:
        return bool(len(self.rcvbuf)) or self.shut_rd or bool(self.error) or self.state == CLOSED

    @property
    def writable(self) -> bool:
        return self.sndbuf.free() > 0 or bool(self.error) or self.state not in _SENDS_DATA

    @property
    def established(self) -> bool:
        return self.state in _SYNCHRONIZED or (self.state == CLOSED and not self.error)

    # -- segment arrival (RFC 9293 3.10.7) ----------------------------------------------------
    def segment_arrives(
        self,
        buf: bytes,
        data_start: int,
        end: int,
        seq_wire: int,
        ack_wire: int,
        flags: int,
        window: int,
        options: TcpOptions | None,
        tsval: int,
        tsecr: int,
        now: float,
    ) -> None:
        """Process one segment for this connection.  ``tsval`` is -1 without a timestamp option."""
        state = self.state
        self.last_activity = now
        self.keep_probes = 0
        # Header prediction (FreeBSD tcp_input, Van Jacobson): the next in-order data segment of
        # an established connection that acknowledges nothing new and changes nothing else.
        length = end - data_start
        if (
            state == ESTABLISHED
            and flags & ~TCP_PSH == TCP_ACK
            and length
            and seq_wire == self.rcv_nxt & _MASK
            and ack_wire == self.snd_una & _MASK
            and self.snd_nxt == self.snd_max
            and options is None
            and (window << self.snd_scale) == self.snd_wnd
            and not self.in_recovery
            and not len(self.reasm)
            and length <= self.rcv_adv - self.rcv_nxt
            and length <= self.rcvbuf.free()
            and (not self.ts_on or (tsval >= 0 and not 0 < ((self.ts_recent - tsval) & _MASK) < 0x80000000))
        ):
            if self.ts_on:
                self.ts_recent = tsval
                self.ts_recent_valid = True
            self.rcvbuf._extend(buf[data_start:end])  # fits: checked against free() above
            self.rcv_nxt += length
            stats = self.stats
            stats.bytes_received += length
            self.segs_unacked += 1
            if self.segs_unacked >= 2 or not self.config.delayed_ack:
                if self.core.in_burst:
                    self.ack_now = True  # one ACK at the end of the burst covers them all
                    self.core.output_pending[self] = None
                else:
                    self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
            elif not self.t_delack:
                deadline = self.t_delack = now + self.config.delayed_ack
                if deadline < self._timer_at:  # _arm() for the one timer that changed
                    self._timer_at = deadline
                    self.core.timers.schedule(deadline, self.on_timer)
            if self.waiter is not None:  # _wake(), inline: a reader may be parked on us
                self.core.ready[self] = None
            return
        # The other half of header prediction: a pure ACK for outstanding data, in sequence,
        # with the window unchanged, outside recovery (what a bulk sender receives most).
        if (
            state == ESTABLISHED
            and flags == TCP_ACK
            and not length
            and options is None
            and seq_wire == self.rcv_nxt & _MASK
            and (window << self.snd_scale) == self.snd_wnd
            and not self.in_recovery
            and 0 < ((ack_wire - self.snd_una) & _MASK) <= self.snd_max - self.snd_una
            and (not self.ts_on or (tsval >= 0 and not 0 < ((self.ts_recent - tsval) & _MASK) < 0x80000000))
        ):
            seq = self.rcv_nxt
            ack = self.snd_una + ((ack_wire - self.snd_una) & _MASK)
            if self.ts_on and seq <= self.last_ack_sent:
                self.ts_recent = tsval
                self.ts_recent_valid = True
            self.snd_wl1, self.snd_wl2 = seq, ack
            self._ack_advances(ack, tsecr, now)
            self._output_after_input(now)
            return
        if state == SYN_SENT:
            self._syn_sent_arrives(
                buf, data_start, end, seq_wire, ack_wire, flags, window, options, tsval, tsecr, now
            )
            return
        seq = unwrap(seq_wire, self.rcv_nxt)
        if state == SYN_RECEIVED and flags & TCP_SYN and seq == self.irs:
            if not flags & TCP_ACK:
                self.snd_nxt = self.iss  # the peer did not get our SYN-ACK: send it again now
                self.tcp_output(now)
                return
            # Simultaneous open (RFC 9293 figure 8): the peer's SYN-ACK repeats the SYN we have;
            # trim the SYN (as BSD does) and take the rest, whose ACK completes the handshake.
            flags &= ~TCP_SYN
            seq += 1
        seg_len = end - data_start
        if flags & TCP_SYN:
            seg_len += 1
        if flags & TCP_FIN:
            seg_len += 1
        # RFC 7323 5.3 PAWS: an old timestamp marks an old duplicate.
        if (
            self.ts_on
            and tsval >= 0
            and self.ts_recent_valid
            and not flags & TCP_RST
            and 0 < ((self.ts_recent - tsval) & _MASK) < 0x80000000
        ):
            self.stats.drop("paws")
            self._ack_now(now)
            return
        # Sequence acceptability (RFC 9293 3.10.7.4, first check).
        rcv_wnd = max(self.rcv_adv - self.rcv_nxt, 0)
        rcv_nxt = self.rcv_nxt
        if seg_len == 0:
            acceptable = (seq == rcv_nxt) if rcv_wnd == 0 else (rcv_nxt <= seq < rcv_nxt + rcv_wnd)
        else:
            acceptable = rcv_wnd > 0 and (
                rcv_nxt <= seq < rcv_nxt + rcv_wnd or rcv_nxt <= seq + seg_len - 1 < rcv_nxt + rcv_wnd
            )
        if not acceptable:
            if state == TIME_WAIT and flags & TCP_FIN and not flags & TCP_RST:
                self._arm_2msl(now)  # the peer lost our last ACK: send it again
            if not flags & TCP_RST:
                self.stats.duplicate_segments += 1
                self._ack_now(now)
            else:
                self.stats.drop("rst_out_of_window")
            return
        # RFC 7323 4.3: remember the timestamp of the segment that covers the last ACK we sent.
        if self.ts_on and tsval >= 0 and seq <= self.last_ack_sent:
            self.ts_recent = tsval
            self.ts_recent_valid = True
        # Second: RST (RFC 5961 3.2 -- only an exact match resets; others get a challenge ACK).
        if flags & TCP_RST:
            if seq != rcv_nxt:
                self._challenge_ack(now)
                return
            self.stats.resets_received += 1
            if state == SYN_RECEIVED and self.listener is not None:
                self._drop(0)  # a passive open goes back to LISTEN: just forget the embryo
            elif state in (CLOSING, LAST_ACK, TIME_WAIT):
                self._drop(0)
            else:
                self._drop(errno.ECONNREFUSED if state == SYN_RECEIVED else errno.ECONNRESET, counted=True)
            return
        # Fourth: a SYN in a synchronized state (RFC 5961 4.2): challenge ACK.
        if flags & TCP_SYN:
            self._challenge_ack(now)
            return
        # Fifth: the ACK field.
        if not flags & TCP_ACK:
            self.stats.drop("no_ack")
            return
        ack = unwrap(ack_wire, self.snd_una)
        if state == SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_max:
                self.layer.send_reset(
                    self.remote_ip, self.remote_port, self.local_port, ack_wire, 0, True, now
                )
                return
            self._established(now)
            self.snd_wnd = window << self.snd_scale
            self.max_sndwnd = max(self.max_sndwnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seq, ack
            state = self.state
        # RFC 5961 5.2: an ACK for data never sent, or too old, gets an ACK / challenge.
        if ack > self.snd_max:
            self._ack_now(now)
            self.stats.drop("ack_too_new")
            return
        if ack < self.snd_una - max(self.max_sndwnd, 1):
            self._challenge_ack(now)
            return
        self._process_ack(ack, seq, window, options, tsecr, data_start == end and not flags & TCP_FIN, now)
        if self.state == CLOSED:
            return
        state = self.state
        if state == FIN_WAIT_1 and self.fin_seq >= 0 and self.snd_una > self.fin_seq:
            self.state = state = FIN_WAIT_2
            if self.user_closed and self.config.fin_wait_2_timeout:
                # Nobody can read any more: do not wait for the peer's FIN for ever (tcp_fin_timeout).
                self.t_2msl = now + self.config.fin_wait_2_timeout
                self._arm()
            self._wake()
        elif state == CLOSING and self.snd_una > self.fin_seq:
            self._enter_time_wait(now, send_ack=False)  # an ACK of our FIN needs no answer
            return
        elif state == LAST_ACK and self.snd_una > self.fin_seq:
            self._drop(0)
            self.stats.connections_closed += 1
            return
        elif state == TIME_WAIT:
            if flags & TCP_FIN:
                self._arm_2msl(now)
                self._ack_now(now)
            return
        # Seventh: segment text.  New data for a connection the application has closed cannot
        # be delivered: reset (RFC 9293 3.10.4, Linux's TCPAbortOnData).
        if end > data_start and self.user_closed and seq + (end - data_start) > self.rcv_nxt:
            self.stats.drop("data_after_close")
            self._send_segment(self.snd_max, TCP_RST | TCP_ACK, b"", now)
            self.stats.resets_sent += 1
            self._drop(errno.ECONNRESET, counted=True)
            return
        if end > data_start and state in _RECEIVES_DATA:
            self._data_arrives(buf, data_start, end, seq, now)
        elif end > data_start:
            self.stats.drop("data_after_fin")
        # Eighth: FIN.
        if flags & TCP_FIN:
            fin = seq + (end - data_start)
            if fin == self.rcv_nxt and not self.shut_rd:
                self._fin_arrives(now)
            elif fin > self.rcv_nxt:
                self.rcv_fin = fin  # out of order: taken when the data before it arrives
                self.ack_now = True
        self._output_after_input(now)

    def _output_after_input(self, now: float) -> None:
        """Send what an arriving segment made due: at the end of the burst it came in (once for
        all of the burst's segments), or at once outside a burst."""
        if self.core.in_burst:
            self.core.output_pending[self] = None
        else:
            self.tcp_output(now)

    def _syn_sent_arrives(
        self,
        buf: bytes,
        data_start: int,
        end: int,
        seq_wire: int,
        ack_wire: int,
        flags: int,
        window: int,
        options: TcpOptions | None,
        tsval: int,
        tsecr: int,
        now: float,
    ) -> None:
        ack = unwrap(ack_wire, self.snd_una)
        if flags & TCP_ACK and not self.iss < ack <= self.snd_max:
            if not flags & TCP_RST:
                self.layer.send_reset(
                    self.remote_ip, self.remote_port, self.local_port, ack_wire, 0, True, now
                )
            self.stats.drop("bad_ack_in_syn_sent")
            return
        if flags & TCP_RST:
            if flags & TCP_ACK:
                self.stats.resets_received += 1
                self._drop(errno.ECONNREFUSED, counted=True)
            else:
                self.stats.drop("rst_without_ack_in_syn_sent")
            return
        if not flags & TCP_SYN:
            self.stats.drop("no_syn_in_syn_sent")
            return
        self.irs = seq_wire
        self.rcv_nxt = seq_wire + 1
        self.rcv_adv = self.rcv_nxt
        self._take_syn_options(options, tsval, from_syn_ack=bool(flags & TCP_ACK))
        self.snd_wnd = window  # never scaled in a SYN (RFC 7323 2.2)
        self.max_sndwnd = window
        self.snd_wl1 = self.rcv_nxt - 1
        if flags & TCP_ACK:
            self.snd_wl2 = ack
            self._ack_advances(ack, tsecr, now)
            self._established(now)
            self._ack_now(now)
            if end > data_start:
                self._data_arrives(buf, data_start, end, self.rcv_nxt, now)
            self.tcp_output(now)
        else:
            # Simultaneous open: we both sent SYNs.  Ours is re-sent with an ACK.
            self.state = SYN_RECEIVED
            self.snd_nxt = self.snd_una
            self.tcp_output(now)

    def _take_syn_options(self, options: TcpOptions | None, tsval: int, *, from_syn_ack: bool) -> None:
        """Negotiate the RFC 7323 / RFC 2018 options from the peer's SYN."""
        config = self.config
        peer_mss = config.default_mss
        if options is not None:
            if options.mss:
                peer_mss = options.mss
            if options.window_scale is not None and config.window_scaling:
                self.snd_scale = min(options.window_scale, _MAX_WINDOW_SHIFT)
                if not from_syn_ack:
                    self.rcv_scale = window_shift_for(config.receive_buffer)
            else:
                self.snd_scale = self.rcv_scale = 0
            self.sack_on = options.sack_permitted and config.sack
            self.ts_on = options.timestamps is not None and config.timestamps
        else:
            self.snd_scale = self.rcv_scale = 0
            self.sack_on = self.ts_on = False
        if self.ts_on:
            self.ts_recent = tsval
            self.ts_recent_valid = True
        self.peer_mss = max(peer_mss, 64)
        self.set_mss(min(self.peer_mss, self.core.mtu - 40))

    def _data_mss(self) -> int:
        """Payload bytes per segment now: the MSS less the SACK option our segments carry while
        out-of-order data is held (options count against the MSS, RFC 9293 3.7.1)."""
        if not (self.sack_on and len(self.reasm)):
            return self.mss
        blocks = len(self.reasm.sack_blocks(3 if self.ts_on else 4))
        return self.mss - (4 + 8 * blocks if blocks else 0)

    def set_mss(self, mss: int) -> None:
        """The payload of a full segment: the path MSS less the timestamp option when used."""
        self.mss = max(mss - (12 if self.ts_on else 0), 32)
        self.cc.set_mss(self.mss)

    def _established(self, now: float) -> None:
        self.state = ESTABLISHED
        self.stats.connections_established += 1
        self.rxtshift = 0
        self.t_rexmt = 0.0
        if self.listener is not None:
            self.listener.connection_established(self)
        self._arm_keepalive(now)
        self._wake()

    def _process_ack(
        self, ack: int, seq: int, window: int, options: TcpOptions | None, tsecr: int, pure: bool, now: float
    ) -> None:
        """Fifth step of RFC 9293 3.10.7.4 for a synchronized connection: window, RTT, loss recovery."""
        snd_una = self.snd_una
        if self.sack_on and options is not None and options.sack_blocks:
            blocks = [(unwrap(left, snd_una), unwrap(right, snd_una)) for left, right in options.sack_blocks]
            self.scoreboard.update(blocks, snd_una, self.snd_max)
        window_bytes = window << self.snd_scale
        # Window update (RFC 9293: SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK)).
        window_changed = False
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            window_changed = window_bytes != self.snd_wnd
            self.snd_wnd = window_bytes
            self.snd_wl1, self.snd_wl2 = seq, ack
            if window_bytes > self.max_sndwnd:
                self.max_sndwnd = window_bytes
            if window_bytes and self.t_persist:
                self.t_persist = 0.0
                self.persist_shift = 0
                self.snd_nxt = max(self.snd_nxt, self.snd_una)
        if ack > snd_una:
            self._ack_advances(ack, tsecr, now)
            return
        # ack == snd_una: a duplicate ACK in RFC 5681's sense?
        if pure and not window_changed and self.snd_max > snd_una:
            self.stats.duplicate_acks += 1
            self.dupacks += 1
            self._on_duplicate_ack(now)

    def _ack_advances(self, ack: int, tsecr: int, now: float) -> None:
        """New data acknowledged: RTT sample, congestion control, recovery, buffers, timers."""
        acked = ack - self.snd_una
        syn_acked = self.snd_una == self.iss
        # RTT: timestamps give a sample per ACK (RFC 7323 4.1); otherwise the timed segment (Karn).
        rtt = None
        if self.ts_on and tsecr > 0:
            ms = ((int(now * 1000) + self.ts_offset - tsecr) & _MASK) / 1000.0
            if ms < 600.0:
                rtt = ms
        elif self.rtt_seq >= 0 and ack > self.rtt_seq:
            rtt = now - self.rtt_time
            self.rtt_seq = -1
        if rtt is not None:
            self._rtt_sample(rtt)
        elif syn_acked and self.rxtshift and not self.srtt:
            self.rto = min(3.0, self.config.rto_max)  # RFC 6298 5.7: a SYN was lost, no RTT known
        self.rxtshift = 0
        in_flight = self.snd_max - self.snd_una
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        if self.sack_on:
            self.scoreboard.advance(ack)
        data_acked = acked - (1 if syn_acked else 0)
        if self.fin_seq >= 0 and ack > self.fin_seq:
            data_acked -= 1
        if data_acked > 0:
            self.sndbuf.acknowledge(min(ack, self.sndbuf.end))
        # Loss recovery bookkeeping.
        if self.in_recovery:
            if ack >= self.recover:
                self.in_recovery = False
                self.dupacks = 0
                self.cc.on_recovery_exit(now)
            else:
                # Partial ACK (RFC 6582 3.2 / RFC 6675): retransmit the next hole at once.
                if not self.sack_on:
                    self.cc.cwnd = max(self.cc.cwnd - acked + self.mss, self.mss)
                    self._retransmit(self.snd_una, now)
        else:
            self.dupacks = 0
            self.cc.on_ack(
                max(data_acked, 0), now, rtt if rtt is not None else (self.srtt or None), in_flight
            )
        if self.snd_una >= self.snd_max:
            self.t_rexmt = 0.0
        else:
            self.t_rexmt = now + self.rto
            self._arm()
        self._wake()  # room in the send buffer

    def _rtt_sample(self, rtt: float) -> None:
        """RFC 6298 section 2."""
        rtt = max(rtt, 0.0)
        if self.srtt == 0.0:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        config = self.config
        self.rto = min(max(self.srtt + max(0.001, 4 * self.rttvar), config.rto_min), config.rto_max)

    def _on_duplicate_ack(self, now: float) -> None:
        """Fast retransmit on the third duplicate ACK or when SACK shows loss (RFC 5681, 6675)."""
        if self.in_recovery:
            if not self.sack_on:
                self.cc.cwnd += self.mss  # NewReno inflation: a segment left the network
            self.tcp_output(now)
            return
        lost = self.dupacks >= 3 or (self.sack_on and self.scoreboard.is_lost(self.snd_una, self.mss))
        if not lost:
            # RFC 3042 limited transmit: new data on the first two duplicate ACKs.
            self.tcp_output(now, limited_transmit=True)
            return
        if self.snd_una < self.recover:
            return  # RFC 6582, RFC 6675 5.1: no new recovery for losses of the previous window
        self.in_recovery = True
        self.recover = self.snd_max
        self.high_rxt = self.snd_una
        in_flight = self.snd_max - self.snd_una
        self.cc.on_congestion_event(now, in_flight)
        self.stats.fast_retransmits += 1
        if self.sack_on:
            self.stats.sack_recovery_episodes += 1
        else:
            self.cc.cwnd = self.cc.ssthresh + 3 * self.mss
        self._retransmit(self.snd_una, now)
        self.tcp_output(now)

    def _data_arrives(self, buf: bytes, start: int, end: int, seq: int, now: float) -> None:
        """In-window text: append in order, queue out of order (RFC 9293 seventh step)."""
        stats = self.stats
        rcv_nxt = self.rcv_nxt
        if seq < rcv_nxt:  # trim what we already have
            start += rcv_nxt - seq
            seq = rcv_nxt
            if start >= end:
                return
        window_end = self.rcv_adv if self.rcv_adv > rcv_nxt else rcv_nxt
        if seq == rcv_nxt:
            length = min(end - start, self.rcvbuf.free(), window_end - seq if window_end > seq else 0)
            if length <= 0:
                stats.drop("receive_window_full")
                self.ack_now = True
                return
            self.rcvbuf.append(buf[start : start + length])
            self.rcv_nxt = rcv_nxt = seq + length
            stats.bytes_received += length
            if len(self.reasm):
                more = self.reasm.pop_in_order(rcv_nxt)
                if len(more) > self.rcvbuf.free():  # cannot happen while the window rules hold
                    stats.drop("reassembly_overflow")
                    more = more[: self.rcvbuf.free()]
                if more:
                    self.rcvbuf.append(more)
                    self.rcv_nxt = rcv_nxt = rcv_nxt + len(more)
                    stats.bytes_received += len(more)
                self.ack_now = True  # RFC 5681 4.2: ACK at once when a hole is (partly) filled
            if 0 <= self.rcv_fin == rcv_nxt:
                self._fin_arrives(now)
            self.segs_unacked += 1
            if self.segs_unacked >= 2 or not self.config.delayed_ack:
                self.ack_now = True
            elif not self.ack_now and not self.t_delack:
                self.t_delack = now + self.config.delayed_ack
                self._arm()
            self._wake()
        else:
            stats.out_of_order_segments += 1
            stored = self.reasm.insert(seq, memoryview(buf)[start:end], rcv_nxt, window_end)
            if not stored:
                # Nothing new: a duplicate of what is held, or refused by the queue's bounds.
                full = len(self.reasm) + end - start > self.reasm.limit
                stats.drop("out_of_order_queue_full" if full else "out_of_order_duplicate")
            self.ack_now = True  # a duplicate ACK with SACK blocks tells the sender at once

    def _fin_arrives(self, now: float) -> None:
        self.rcv_nxt += 1
        self.rcv_fin = -1
        self.shut_rd = True
        self.ack_now = True
        state = self.state
        if state in (SYN_RECEIVED, ESTABLISHED):
            self.state = CLOSE_WAIT
        elif state == FIN_WAIT_1:
            if self.fin_seq >= 0 and self.snd_una > self.fin_seq:
                self._enter_time_wait(now)
            else:
                self.state = CLOSING
        elif state == FIN_WAIT_2:
            self._enter_time_wait(now)
        self._wake()

    def _enter_time_wait(self, now: float, *, send_ack: bool = True) -> None:
        self.state = TIME_WAIT
        self.t_rexmt = self.t_persist = self.t_keep = self.t_delack = 0.0
        self.sndbuf = SendBuffer(0, self.snd_una)
        self.reasm.clear()
        self._arm_2msl(now)
        self.layer.entered_time_wait(self)
        if send_ack:
            self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
        self._wake()

    def _arm_2msl(self, now: float) -> None:
        self.t_2msl = now + 2 * self.config.msl
        self._arm()

    # -- output (FreeBSD tcp_output) ----------------------------------------------------------
    def tcp_output(self, now: float, *, limited_transmit: bool = False) -> None:
        """Send what the windows allow: new data, a FIN, a SYN, or an ACK that is due."""
        state = self.state
        if state in (CLOSED, TIME_WAIT):
            return
        if state in (SYN_SENT, SYN_RECEIVED):
            if self.snd_nxt == self.iss:
                self._send_syn(now)
            elif self.ack_now:
                self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
            return
        sndbuf = self.sndbuf
        if (
            not self.ack_now
            and not self.in_recovery
            and self.snd_nxt >= sndbuf.end
            and (self.fin_seq < 0 or self.snd_nxt > self.fin_seq)
        ):
            return  # the common case on a receiver: nothing to send and no ACK due
        mss = self._data_mss()
        # With TSO one frame carries as many whole segments as the port takes (less room for
        # the IPv4 and TCP headers with every option); the port cuts it into ``mss`` pieces.
        gso_max = self.core.gso_max_size
        burst = mss * max((gso_max - 100) // mss, 1) if gso_max else mss
        cc = self.cc
        if self.last_send and now - self.last_send > self.rto and self.snd_max == self.snd_una:
            cc.on_idle_restart(now, self.rto, now - self.last_send)
        sent_any = False
        data_end = sndbuf.end  # sending never changes it
        sack_recovery = self.in_recovery and self.sack_on
        for _ in range(64):  # bounded work per call; the next ACK or the poll loop continues
            # RFC 6675: during SACK recovery, retransmit lost holes first, within cwnd - pipe.
            if sack_recovery:
                pipe = self.scoreboard.pipe(self.snd_una, self.snd_max, self.high_rxt, mss)
                if cc.cwnd - pipe < mss:
                    break
                hole = self.scoreboard.next_seg(self.snd_una, self.snd_max, self.high_rxt, mss)
                if hole is not None:
                    self._retransmit(hole[0], now, hole[1] - hole[0])
                    sent_any = True
                    continue
                flight = pipe
            else:
                flight = self.snd_nxt - self.snd_una
            window = min(self.snd_wnd, cc.cwnd)
            if limited_transmit:
                if sent_any:
                    break  # RFC 3042: one new segment per duplicate ACK
                window = min(self.snd_wnd, cc.cwnd + 2 * mss)
            available = data_end - self.snd_nxt
            room = window - flight if not sack_recovery else cc.cwnd - flight
            room = min(room, self.snd_una + self.snd_wnd - self.snd_nxt)
            length = min(available, burst, room) if room > 0 else 0
            if length > mss and length % mss:
                # A large (TSO/GSO) segment carries whole segments; its short tail goes too only
                # where Nagle would let it: with TCP_NODELAY or a FIN after it (Linux's
                # tcp_mss_split_point), otherwise it waits like any short segment.
                fin_after = self.fin_seq >= 0 and self.snd_nxt + length == self.fin_seq
                if length < available or not (self.nodelay or fin_after):
                    length -= length % mss
            fin_due = self.fin_seq >= 0 and self.snd_nxt + max(length, 0) == self.fin_seq
            # Nagle (RFC 896) and sender-side SWS avoidance (RFC 9293 3.8.6.2.1).
            if 0 < length < mss and not fin_due:
                if available > length:
                    # Window-limited: wait unless the sliver is half the largest window seen.
                    length = length if length >= self.max_sndwnd // 2 else 0
                elif not self.nodelay and self.snd_nxt > self.snd_una:
                    length = 0
            if length > 0:
                flags = TCP_ACK | (TCP_PSH if self.snd_nxt + length == data_end else 0)
                if fin_due and self.snd_nxt + length == self.fin_seq:
                    flags |= TCP_FIN
                self._send_data(self.snd_nxt, length, flags, now)
                sent_any = True
                continue
            if (
                fin_due
                and self.snd_nxt == self.fin_seq
                and (self.snd_max <= self.fin_seq or self.snd_nxt < self.snd_max)
            ):
                self._send_data(self.snd_nxt, 0, TCP_ACK | TCP_FIN, now)
                sent_any = True
                continue
            break
        if self.ack_now and not sent_any:
            self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
        # Data waiting, nothing in flight and no timer: a zero window, or a window too small for
        # silly-window avoidance to send into.  The persist timer probes the first and forces a
        # segment into the second (FreeBSD tcp_setpersist; RFC 9293 3.8.6.2.1's override timeout).
        if (
            self.snd_max == self.snd_una
            and sndbuf.end > self.snd_nxt
            and not (self.t_persist or self.t_rexmt)
        ):
            self.persist_shift = 0
            self.t_persist = now + self._persist_interval()
            self._arm()

    def _send_data(self, seq: int, length: int, flags: int, now: float) -> None:
        retransmission = seq < self.snd_max
        if length and self.ts_on and not len(self.reasm) and flags & TCP_ACK and length <= self.mss:
            self._send_data_segment(seq, length, flags, now)
        else:
            self._send_segment(seq, flags, self.sndbuf.peek(seq, length) if length else b"", now)
        end = seq + length + (1 if flags & TCP_FIN else 0)
        stats = self.stats
        stats.bytes_sent += length
        if retransmission:
            stats.retransmitted_segments += 1
            stats.retransmitted_bytes += length
        elif not self.ts_on and self.rtt_seq < 0:
            self.rtt_seq, self.rtt_time = seq, now  # time this segment (Karn: never a retransmission)
        if end > self.snd_nxt:
            self.snd_nxt = end
        if end > self.snd_max:
            self.snd_max = end
        if not self.t_rexmt:
            self.t_rexmt = now + self.rto
            self._arm()
        self.last_send = now

    def _retransmit(self, seq: int, now: float, length: int | None = None) -> None:
        """Send one segment again starting at ``seq`` (fast retransmit, SACK hole, partial ACK)."""
        if seq >= self.snd_max:
            return
        if self.rtt_seq >= 0 and seq <= self.rtt_seq:
            self.rtt_seq = -1  # Karn: the timed segment is being retransmitted
        limit = self.snd_max - seq
        data_end = self.sndbuf.end
        mss = self._data_mss()
        length = min(mss if length is None else length, mss, limit, max(data_end - seq, 0))
        flags = TCP_ACK
        if self.fin_seq >= 0 and seq + length == self.fin_seq and self.snd_max > self.fin_seq:
            flags |= TCP_FIN
        if length <= 0 and not flags & TCP_FIN:
            return
        saved_nxt = self.snd_nxt
        self._send_data(seq, length, flags, now)
        self.snd_nxt = max(saved_nxt, self.snd_nxt)
        self.high_rxt = max(self.high_rxt, seq + length)

    def _send_syn(self, now: float) -> None:
        config = self.config
        ts = (int(now * 1000) + self.ts_offset) & _MASK
        active = self.state == SYN_SENT
        # Active: offer everything configured.  Passive: answer only what the peer offered.
        offer_scale = config.window_scaling and (active or bool(self.snd_scale or self.rcv_scale))
        offer_timestamps = config.timestamps if active else self.ts_on
        options = TcpOptions(
            mss=self.core.mtu - 40,
            window_scale=self.rcv_scale if offer_scale else None,
            sack_permitted=config.sack if active else self.sack_on,
            timestamps=(ts, 0 if active else self.ts_recent) if offer_timestamps else None,
        )
        flags = TCP_SYN | (0 if active else TCP_ACK)
        self._send_segment(self.iss, flags, b"", now, syn_options=options)
        if self.snd_nxt == self.iss:
            self.snd_nxt = self.iss + 1
        self.snd_max = max(self.snd_max, self.iss + 1)
        if not self.t_rexmt:
            self.t_rexmt = now + self.rto
            self._arm()

    def _receive_window(self) -> int:
        """The window to advertise: free buffer space less what the out-of-order queue holds,
        never less than what was already promised (RFC 9293 3.8.6.2.2: no shrinking)."""
        rcvbuf = self.rcvbuf
        limit = rcvbuf.limit
        free = limit - len(rcvbuf) - len(self.reasm)
        if free < self.mss and free < limit >> 1:
            free = 0  # receiver SWS avoidance: do not advertise a sliver
        promised = self.rcv_adv - self.rcv_nxt
        if promised > free:
            free = promised
        most = 0xFFFF << self.rcv_scale
        return free if free < most else most

    def _send_segment(
        self, seq: int, flags: int, payload: bytes, now: float, syn_options: TcpOptions | None = None
    ) -> None:
        """Build and send one segment (the bottom of tcp_output: header, options, checksum)."""
        if not payload and seq == self.snd_nxt and not flags & (TCP_SYN | TCP_FIN | TCP_RST):
            # A bare ACK carries the next unsent octet, not a rewound SND.NXT during
            # retransmission: the peer already holds data below SND.MAX and would find an
            # older sequence number unacceptable and ignore the ACK in it (FreeBSD does this).
            seq = self.snd_max
            if flags == TCP_ACK and not len(self.reasm):
                self._send_bare_ack(seq, now)
                return
        rcv_nxt = self.rcv_nxt
        if flags & TCP_SYN:
            wire_window = min(self._receive_window(), 0xFFFF)
            if flags & TCP_ACK:
                self._acknowledged(rcv_nxt, wire_window, 0)
        else:
            wire_window = self._receive_window() >> self.rcv_scale
            if flags & TCP_ACK:
                self._acknowledged(rcv_nxt, wire_window, self.rcv_scale)
        timestamps = self.ts_on and not flags & TCP_RST and syn_options is None
        options = syn_options.to_bytes() if syn_options is not None else b""
        # A payload longer than one segment is a TSO segment: every piece the port cuts from it
        # carries ``gso_size`` bytes and a copy of these headers.
        gso_size = self._data_mss() if len(payload) > self.mss else 0
        if self.sack_on and flags & TCP_ACK and not flags & (TCP_SYN | TCP_RST) and len(self.reasm):
            # As many blocks as fit beside the payload in one MSS (the MSS already counts the
            # timestamp option), so a segment carrying SACK never exceeds the path MTU.
            seg_len = gso_size or len(payload)
            room = (self.mss - seg_len - 4) // 8 if payload else 4
            blocks = self.reasm.sack_blocks(min(3 if self.ts_on else 4, room)) if room > 0 else []
            if blocks:
                options = bytes((1, 1, 5, 2 + 8 * len(blocks))) + b"".join(
                    _U32X2.pack(left & _MASK, right & _MASK) for left, right in blocks
                )
        header_len = TCP_HEADER_LEN + len(options) + (12 if timestamps else 0)
        tcp_len = header_len + len(payload)
        if payload and (gso_size or self.core.tx_checksum_offload):
            packet: bytearray = OffloadPacket(FRAME_HEADROOM + tcp_len, gso_size)
        else:
            packet = bytearray(FRAME_HEADROOM + tcp_len)
        ack_field = rcv_nxt & _MASK if flags & TCP_ACK else 0
        TCP_HEADER.pack_into(
            packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, ack_field,
            (header_len >> 2) << 4, flags, wire_window, 0, 0,
        )  # fmt: skip
        option_at = FRAME_HEADROOM + TCP_HEADER_LEN
        if timestamps:  # NOP NOP TS first, as Linux lays them out
            _TS_OPTION.pack_into(
                packet,
                option_at,
                0x0101080A,
                (int(now * 1000) + self.ts_offset) & _MASK,
                self.ts_recent & _MASK,
            )
            option_at += 12
        if options:
            packet[option_at : FRAME_HEADROOM + header_len] = options
        if payload:
            packet[FRAME_HEADROOM + header_len :] = payload
        self._checksum_and_send(packet, tcp_len, now)

    def _acknowledged(self, rcv_nxt: int, wire_window: int, scale: int) -> None:
        """Bookkeeping for a segment that carries our ACK: the window edge it promises, the
        ACK point for timestamps, and no delayed ACK owed any more."""
        edge = rcv_nxt + (wire_window << scale)
        if edge > self.rcv_adv:
            self.rcv_adv = edge
        self.last_ack_sent = rcv_nxt
        self.ack_now = False
        self.segs_unacked = 0
        self.t_delack = 0.0

    def _send_bare_ack(self, seq: int, now: float) -> None:
        """The segment a bulk receiver sends most: an ACK with timestamps and nothing else,
        packed in one go (Linux keeps tcp_send_ack apart from its general transmit path too)."""
        rcv_nxt = self.rcv_nxt
        scale = self.rcv_scale
        wire_window = self._receive_window() >> scale
        self._acknowledged(rcv_nxt, wire_window, scale)
        if self.ts_on:
            tcp_len = 32
            packet = bytearray(FRAME_HEADROOM + 32)
            _ACK_WITH_TIMESTAMPS.pack_into(
                packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, rcv_nxt & _MASK,
                0x80, TCP_ACK, wire_window, 0, 0, 0x0101080A, (int(now * 1000) + self.ts_offset) & _MASK,
                self.ts_recent & _MASK,
            )  # fmt: skip
        else:
            tcp_len = 20
            packet = bytearray(FRAME_HEADROOM + 20)
            TCP_HEADER.pack_into(
                packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, rcv_nxt & _MASK,
                0x50, TCP_ACK, wire_window, 0, 0,
            )  # fmt: skip
        self._checksum_and_send(packet, tcp_len, now)

    def _send_data_segment(self, seq: int, length: int, flags: int, now: float) -> None:
        """The segment a bulk sender sends most: one MSS or less of data with timestamps and no
        other option, its header packed in one go and its payload copied once, straight from
        the send buffer into the frame (what ``_send_segment`` does, without the general cases)."""
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
        headers = FRAME_HEADROOM + 32
        packet = OffloadPacket(headers) if self.core.tx_checksum_offload else bytearray(headers)
        self.sndbuf.append_to(packet, seq, length)
        _ACK_WITH_TIMESTAMPS.pack_into(
            packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, rcv_nxt & _MASK,
            0x80, flags, wire_window, 0, 0, 0x0101080A, (int(now * 1000) + self.ts_offset) & _MASK,
            self.ts_recent & _MASK,
        )  # fmt: skip
        self._checksum_and_send(packet, tcp_len, now)

    def _checksum_and_send(self, packet: bytearray, tcp_len: int, now: float) -> None:
        error = tcp_checksum_and_send(self.core, self.stats, packet, tcp_len, self.remote_ip, now)
        if error:
            self.soft_error = error

    def _ack_now(self, now: float) -> None:
        self.ack_now = True
        self._send_segment(self.snd_nxt, TCP_ACK, b"", now)

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 3.2/4.2: answer a suspicious RST or SYN with an ACK (rate limited per layer)."""
        if self.layer.challenge_ack_allowed(now):
            self.stats.challenge_acks_sent += 1
            self._ack_now(now)
        else:
            self.stats.drop("challenge_ack_rate_limited")

    # -- timers (REXMT, PERSIST, KEEP, 2MSL, DELACK) ------------------------------------------
    def _arm(self) -> None:
        """Keep one entry in the stack's timer heap at this connection's earliest deadline.

        Moving a deadline later costs nothing (the entry fires early and re-arms); moving it
        earlier pushes one more entry.  That keeps per-segment timer work O(1) on the hot path.
        """
        deadline = math.inf
        for t in (self.t_rexmt, self.t_persist, self.t_keep, self.t_2msl, self.t_delack):
            if t and t < deadline:
                deadline = t
        if deadline < self._timer_at:
            self._timer_at = deadline
            self.core.timers.schedule(deadline, self.on_timer)

    def on_timer(self, now: float) -> None:
        """A timer entry of this connection fired: run every one of its timers that is due."""
        if now < self._timer_at or self.state == CLOSED:
            return  # superseded by an earlier entry that already ran, or closed
        self._timer_at = math.inf
        if self.t_delack and self.t_delack <= now:
            self.t_delack = 0.0
            self.stats.delayed_acks += 1
            self._ack_now(now)
        if self.t_2msl and self.t_2msl <= now:
            self.t_2msl = 0.0
            if self.state == TIME_WAIT:
                self._drop(0)
                self.stats.connections_closed += 1
                return
            if self.state == FIN_WAIT_2:
                self.stats.drop("fin_wait_2_timeout")
                self._drop(0)
                return
        if self.t_rexmt and self.t_rexmt <= now:
            self.t_rexmt = 0.0
            self._rexmt_timeout(now)
            if self.state == CLOSED:
                return
        if self.t_persist and self.t_persist <= now:
            self.t_persist = 0.0
            self._persist_timeout(now)
        if self.t_keep and self.t_keep <= now:
            self.t_keep = 0.0
            self._keepalive_timeout(now)
            if self.state == CLOSED:
                return
        if self.state != CLOSED:
            self._arm()

    def _rexmt_timeout(self, now: float) -> None:
        """RFC 6298 5.4-5.7: back off, retransmit the earliest unacknowledged segment."""
        config = self.config
        self.rxtshift += 1
        limit = config.syn_retries if self.state == SYN_SENT else (
            config.synack_retries if self.state == SYN_RECEIVED else config.data_retries
        )  # fmt: skip
        if self.rxtshift > limit or self._user_timeout_expired(now):
            self._drop(self.soft_error or errno.ETIMEDOUT, counted=True)
            return
        self.stats.rto_timeouts += 1
        self.rto = min(self.rto * 2, config.rto_max)
        self.rtt_seq = -1  # Karn
        if self.state in (SYN_SENT, SYN_RECEIVED):
            self.snd_nxt = self.iss
            self._send_syn(now)
            return
        in_flight = self.snd_max - self.snd_una
        self.cc.on_rto(now, in_flight)
        self.in_recovery = False
        self.dupacks = 0
        self.recover = self.snd_max
        if self.sack_on:
            self.scoreboard.clear()  # RFC 6675 5.1: the receiver may have reneged
        self.snd_nxt = self.snd_una
        self.t_rexmt = now + self.rto
        self._retransmit(self.snd_una, now)
        self.t_rexmt = now + self.rto

    def _persist_interval(self) -> float:
        base = self.srtt + 4 * self.rttvar if self.srtt else self.config.rto_initial
        return min(max(base * (1 << self.persist_shift), 0.2), self.config.rto_max)

    def _persist_timeout(self, now: float) -> None:
        """Zero-window probe: a segment one below SND.UNA makes the peer re-announce its window
        (how Linux probes; it never puts data beyond a closed window).  With a small open window
        the held sliver is sent instead.  Unanswered probes give up after ``data_retries``."""
        if self.state not in _SENDS_DATA and self.state not in (FIN_WAIT_1, CLOSING, LAST_ACK):
            return
        if self._user_timeout_expired(now) or self.keep_probes > self.config.data_retries:
            self._drop(self.soft_error or errno.ETIMEDOUT, counted=True)
            return
        room = self.snd_una + self.snd_wnd - self.snd_nxt
        if room > 0 and self.sndbuf.end > self.snd_nxt:
            length = min(room, self.mss, self.sndbuf.end - self.snd_nxt)
            flags = TCP_ACK | TCP_PSH
            if self.fin_seq >= 0 and self.snd_nxt + length == self.fin_seq:
                flags |= TCP_FIN
            self._send_data(self.snd_nxt, length, flags, now)
            self.persist_shift = 0
            return
        self.keep_probes += 1
        self.stats.window_probes += 1
        self._send_segment(self.snd_una - 1, TCP_ACK, b"", now)
        self.persist_shift = min(self.persist_shift + 1, 12)
        self.t_persist = now + self._persist_interval()

    def _user_timeout_expired(self, now: float) -> bool:
        timeout = self.config.user_timeout
        waiting = self.snd_max > self.snd_una or self.sndbuf.end > self.snd_una
        return bool(timeout) and waiting and now - self.last_activity >= timeout

    def set_keepalive(self, enabled: bool, now: float) -> None:
        self.keepalive = enabled
        self._arm_keepalive(now)

    def _arm_keepalive(self, now: float) -> None:
        if self.keepalive and self.state in _SYNCHRONIZED:
            self.t_keep = now + self.keep_idle
            self._arm()
        else:
            self.t_keep = 0.0

    def _keepalive_timeout(self, now: float) -> None:
        if not self.keepalive or self.state not in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2):
            return
        idle = now - self.last_activity
        if idle < self.keep_idle:
            self.t_keep = self.last_activity + self.keep_idle
            return
        if self.keep_probes >= self.keep_count:
            self._drop(errno.ETIMEDOUT, counted=True)
            return
        self.keep_probes += 1
        self.stats.keepalive_probes += 1
        self._send_segment(self.snd_una - 1, TCP_ACK, b"", now)
        self.t_keep = now + self.keep_interval

    # -- ICMP (tcp_ctlinput) ------------------------------------------------------------------
    def icmp_error(self, error: int, mtu: int, now: float) -> None:
        """A soft error (RFC 1122 4.2.3.9): remembered, reported if the connection then times
        out.  Fragmentation needed lowers the MSS (RFC 1191) and resends at once."""
        if mtu:
            # RFC 1191 with Linux's floor (min_pmtu 552), so a forged tiny MTU cannot shred us.
            path_mss = max(mtu, 552) - 40
            if path_mss < self.mss + (12 if self.ts_on else 0):
                self.set_mss(path_mss)
                if self.state in _SYNCHRONIZED and self.snd_max > self.snd_una:
                    self._retransmit(self.snd_una, now)  # the segment that was too big, now smaller
            return
        if self.state == SYN_SENT and error == errno.ECONNREFUSED:
            self._drop(error, counted=True)  # as Linux: a hard error while connecting
            return
        self.soft_error = error

    # -- teardown -------------------------------------------------------------------------------
    def _drop(self, error: int, *, counted: bool = False) -> None:
        """Move to CLOSED, release buffers and timers, tell the owner."""
        if self.state == CLOSED:
            return
        was = self.state
        self.state = CLOSED
        if error:
            self.error = error
        if counted and was in _SYNCHRONIZED | {SYN_RECEIVED, SYN_SENT}:
            self.stats.connections_dropped += 1
        self.t_rexmt = self.t_persist = self.t_keep = self.t_2msl = self.t_delack = 0.0
        self.reasm.clear()
        self.scoreboard.clear()
        self.layer.detach(self, was)
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None:
            self.core.mark_ready(self)
        elif self.listener is not None:
            self.core.mark_ready(self.listener)
