"""One TCP connection (FreeBSD's ``tcpcb``): the RFC 9293 state machine, sans-IO.

It is fed segments (``segment_arrives``, called from ``tcp_input``), user calls (``send``,
``receive``, ``shutdown``, ``close``, ``abort``) and time (``on_timer``), and it writes
segments through ``tcp_output`` -> ``ip_output``.  Sequence numbers are absolute integers inside
(see ``_seq.py``); 32-bit values exist only on the wire.

Its code is split as FreeBSD splits its TCP: this module holds the control block and the user
calls (``tcp_usrreq.c``, ``tcp_subr.c``); :mod:`._input` the arrival of segments (``tcp_input.c``,
header prediction first), :mod:`._output` their sending (``tcp_output.c``), :mod:`._timers` the
five timers (``tcp_timer.c``).  Those modules define functions of the connection (``self`` is the
connection, as in a method) and the class binds them as its methods in one table at its end, so
a method call costs what it did when they were all written in the class, and the type checker
sees one class.

What it implements: all eleven states with simultaneous open and close; MSS, window scaling,
timestamps with PAWS (RFC 7323), SACK (RFC 2018); loss detection by time (RACK-TLP, RFC 8985)
and by SACKed bytes (RFC 6675), recovery paced by PRR (RFC 6937); RFC 6298 retransmission timer
with Karn's rule and back-off, F-RTO (RFC 5682) undoing spurious timeouts; fast retransmit/fast
recovery with NewReno (RFC 5681, RFC 6582) for peers without SACK; pluggable congestion control;
delayed ACKs; Nagle; sender and receiver silly-window avoidance; zero-window probing; keepalive;
user timeout; RFC 5961 challenge ACKs; TIME_WAIT.
"""

from __future__ import annotations

import errno
import math
from types import FunctionType
from typing import TYPE_CHECKING

from ..wire.tcp import TCP_ACK, TCP_RST
from . import _input, _output, _rack, _timers
from ._buffers import NO_REASSEMBLY, NO_SACKS, ReceiveBuffer, SendBuffer
from ._cc import make_congestion_control
from ._output import window_shift_for
from ._rack import REXMT_RTO, SentLog
from ._states import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    RECEIVES_DATA,
    SENDS_DATA,
    SYN_RECEIVED,
    SYN_SENT,
    SYNCHRONIZED,
    TIME_WAIT,
    TcpState,
)

if TYPE_CHECKING:
    from .._timers import Timer
    from ._layer import TcpLayer, TcpListener

__all__ = ["TcpConnection"]

#: The congestion control of a connection made for a passive open, between its construction and
#: the SYN's options a moment later (``_take_syn_options`` -> ``set_mss``), which make its own with
#: the negotiated MSS: one congestion control made per connection, not one made and set up again.
#: Shared, never used for sending and never changed.
_CC_AT_SYN = make_congestion_control("newreno", 536)


class TcpConnection:
    """A TCP connection of one stack instance.  Create through ``TcpLayer.connect`` or a listener."""

    __slots__ = (
        "_timer",
        "_timer_at",
        "ack_now",
        "cc",
        "config",
        "core",
        "dupacks",
        "error",
        "fin_seq",
        "frto",
        "frto_cwnd",
        "frto_high",
        "frto_ssthresh",
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
        "prr_delivered",
        "prr_out",
        "rack",
        "rcv_adv",
        "rcv_fin",
        "rcv_nxt",
        "rcv_scale",
        "rcvbuf",
        "reasm",
        "recover",
        "recover_fs",
        "remote_ip",
        "remote_port",
        "rexmt_mode",
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
        "tx_gen",
        "user_closed",
        "waiter",
    )  # fmt: skip

    #: bytes of IP and TCP headers a segment carries (the MSS is the MTU less these), and the
    #: lowest path MTU an ICMP error may set (RFC 1191 with Linux's min_pmtu 552); the IPv6
    #: connection (``_tcp6.TcpConnection6``) has its own
    IP_TCP_HEADERS = 40
    MIN_PMTU = 552

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
        passive: bool = False,
    ) -> None:
        """``send_buffer``/``receive_buffer`` (SO_SNDBUF/SO_RCVBUF) default to the stack's config;
        they are given here, before the SYN, because the window a SYN offers is a promise.
        ``passive``: the caller takes the peer's SYN options at once (``_take_syn_options``), whose
        MSS the congestion control is then made with (``set_mss``)."""
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
        self.mss = min(config.default_mss, layer.core.mtu - self.IP_TCP_HEADERS)
        self.cc = _CC_AT_SYN if passive else make_congestion_control(config.congestion_control, self.mss)
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
        # Made when first needed (_data_arrives, _process_ack): most connections never need them.
        self.reasm = NO_REASSEMBLY
        self.scoreboard = NO_SACKS
        # RACK-TLP's log of what was sent (_rack.py): made when SACK is agreed and config.rack
        self.rack: SentLog | None = None
        self.rexmt_mode = REXMT_RTO  # what the REXMT deadline is for: RTO, TLP or RACK's reordering
        self.prr_delivered = self.prr_out = 0  # RFC 6937's counters during a recovery
        self.recover_fs = 1  # RFC 6937 RecoverFS: the flight when recovery began
        self.frto = 0  # RFC 5682: 0 off, 1 after the timeout's retransmission, 2 after new data
        self.frto_cwnd = self.frto_ssthresh = 0  # the window before the timeout, for the undo
        self.frto_high = iss  # SND.MAX when the timeout fired ("recover" of RFC 5682)
        self.fin_seq = -1  # our FIN's sequence number once the user shut down writing
        self.rcv_fin = -1  # the peer's FIN sequence number when it arrived out of order
        self.shut_rd = False  # the peer's FIN has been taken in (end of the byte stream)
        self.shut_wr = False
        self.user_closed = False
        self.segs_unacked = 0
        self.ack_now = False
        self.t_rexmt = self.t_persist = self.t_keep = self.t_2msl = self.t_delack = 0.0
        self._timer_at = math.inf
        self._timer: Timer | None = None  # the newest entry in the timer heap (_timers._arm)
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
        #: the core's ``tx_gen`` when this connection last queued a data segment (autocorking)
        self.tx_gen = -1
        self.waiter: object = None
        self.listener: TcpListener | None = None

    def __repr__(self) -> str:
        from ipaddress import IPv4Address

        return (
            f"<TcpConnection {self.local_port} <-> {IPv4Address(self.remote_ip)}:{self.remote_port} "
            f"{TcpState(self.state).name}>"
        )

    # -- user calls (tcp_usrreq.c) -------------------------------------------------------------
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
        if self.shut_wr or (self.state not in SENDS_DATA and self.state not in (SYN_SENT, SYN_RECEIVED)):
            raise OSError(errno.EPIPE, "Broken pipe")
        taken = self.sndbuf.append(data)
        if taken and self.state in SENDS_DATA:
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
        (RFC 9293 3.8.6.2.2 on the receiver's side, FreeBSD's tcp_output "window update").

        Under a runtime (``autocork``) the update is only marked: the poll loop sends it at
        the end of the turn, so an application that reads a full window in several calls
        sends one window update with the final window, not one per call."""
        if self.state not in RECEIVES_DATA:
            return
        advertised = self.rcv_adv - self.rcv_nxt
        opened = self._receive_window() - advertised
        if opened >= 2 * self.mss or opened >= self.rcvbuf.limit // 2 or (free_before == 0 and opened > 0):
            self.ack_now = True
            if self.core.autocork:
                self.core.output_pending[self] = None
            else:
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
            if self.state == TIME_WAIT:
                self.layer.time_wait_released(self)  # its TIME_WAIT record lets go of it
            return
        if len(self.rcvbuf) or (self.state in RECEIVES_DATA and len(self.reasm)):
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
        return self.sndbuf.free() > 0 or bool(self.error) or self.state not in SENDS_DATA

    @property
    def established(self) -> bool:
        return self.state in SYNCHRONIZED or (self.state == CLOSED and not self.error)

    # -- the path MSS ---------------------------------------------------------------------------
    def set_mss(self, mss: int) -> None:
        """The payload of a full segment: the path MSS less the timestamp option when used."""
        self.mss = max(mss - (12 if self.ts_on else 0), 32)
        if self.cc is _CC_AT_SYN:  # a passive open's first MSS: its congestion control, made for it
            self.cc = make_congestion_control(self.config.congestion_control, self.mss)
        else:
            self.cc.set_mss(self.mss)

    # -- ICMP (tcp_ctlinput) ------------------------------------------------------------------
    def icmp_error(self, error: int, mtu: int, now: float) -> None:
        """A soft error (RFC 1122 4.2.3.9): remembered, reported if the connection then times
        out.  Fragmentation needed lowers the MSS (RFC 1191) and resends the flight at once."""
        if mtu:
            # RFC 1191 with Linux's floor (min_pmtu 552; IPv6's 1280), so a forged tiny MTU
            # cannot shred us.
            path_mss = max(mtu, self.MIN_PMTU) - self.IP_TCP_HEADERS
            if path_mss < self.mss + (12 if self.ts_on else 0):
                self.set_mss(path_mss)
                if self.state in SYNCHRONIZED and self.snd_max > self.snd_una:
                    # FreeBSD's tcp_mtudisc: every segment in flight was as big as the one quoted
                    # and is lost with it, so send the whole flight again at the new size now,
                    # not only the first (the rest would wait for SACK recovery, or for a
                    # timeout with a peer without SACK).  It was within the windows when it
                    # left; bounded per ICMP message, recovery resends what is beyond.
                    seq, step = self.snd_una, self._data_mss()
                    for _ in range(64):
                        if seq >= self.snd_max:
                            break
                        self._retransmit(seq, now)
                        seq += step
            return
        if self.state == SYN_SENT and error == errno.ECONNREFUSED:
            self._drop(error, counted=True)  # as Linux: a hard error while connecting
            return
        self.soft_error = error

    # -- teardown (tcp_subr.c: tcp_drop, tcp_close) ---------------------------------------------
    def _drop(self, error: int, *, counted: bool = False) -> None:
        """Move to CLOSED, release buffers and timers, tell the owner.

        Every connection ends here, once, and is counted here: one that was established
        (a synchronized state) as ``connections_dropped`` when ``counted`` (a reset, a timeout,
        an abort) and as ``connections_closed`` otherwise (LAST_ACK acknowledged, TIME_WAIT
        expired, recycled or taken over by a new SYN, FIN_WAIT_2 timed out); one still opening
        only when ``counted``.  So ``connections_established`` equals closed + dropped-after-
        established + those still in a synchronized state.
        """
        if self.state == CLOSED:
            return
        was = self.state
        self.state = CLOSED
        if error:
            self.error = error
        if was in SYNCHRONIZED:
            if counted:
                self.stats.connections_dropped += 1
            else:
                self.stats.connections_closed += 1
        elif counted:
            self.stats.connections_dropped += 1
        self.t_rexmt = self.t_persist = self.t_keep = self.t_2msl = self.t_delack = 0.0
        self._timer_at = math.inf
        timer = self._timer
        if timer is not None:
            # Cancelled, the heap entry no longer keeps this connection alive to its deadline
            # (the heap purges cancelled entries once they are half of it).
            self._timer = None
            self.core.timers.cancel(timer)
        self.reasm.clear()
        self.scoreboard.clear()
        if self.rack is not None:
            self.rack.clear()
        self.layer.detach(self, was)
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None:
            self.core.mark_ready(self)
        elif self.listener is not None:
            self.core.mark_ready(self.listener)

    # -- the methods defined in _input, _output and _timers ---------------------------------------
    # -- input (tcp_input.c): header prediction, then RFC 9293 3.10.7 check by check -------------
    segment_arrives = _input.segment_arrives
    header_prediction = _input.header_prediction
    handshake_ack = _input.handshake_ack
    closing_ack = _input.closing_ack
    final_ack = _input.final_ack
    _check_sequence_number = _input._check_sequence_number
    _check_rst_bit = _input._check_rst_bit
    _check_syn_bit = _input._check_syn_bit
    _check_ack_field = _input._check_ack_field
    _process_segment_text = _input._process_segment_text
    _check_fin_bit = _input._check_fin_bit
    _syn_sent_arrives = _input._syn_sent_arrives
    _take_syn_options = _input._take_syn_options
    _established = _input._established
    _process_ack = _input._process_ack
    _ack_advances = _input._ack_advances
    _rtt_sample = _input._rtt_sample
    _on_duplicate_ack = _input._on_duplicate_ack
    # -- loss detection and recovery (tcp_rack.c, tcp_recovery.c) ---------------------------------
    _reo_wnd = _rack._reo_wnd
    _detect_loss = _rack._detect_loss
    _enter_recovery = _rack._enter_recovery
    _prr_update = _rack._prr_update
    _arm_rexmt = _rack._arm_rexmt
    _arm_rexmt_rto = _rack._arm_rexmt_rto
    _tlp_timeout = _rack._tlp_timeout
    _recovery_probe = _rack._recovery_probe
    _tlp_loss = _rack._tlp_loss
    _reo_timeout = _rack._reo_timeout
    _data_arrives = _input._data_arrives
    _fin_arrives = _input._fin_arrives
    _enter_time_wait = _input._enter_time_wait
    _output_after_input = _input._output_after_input
    # -- output (tcp_output.c) --------------------------------------------------------------------
    tcp_output = _output.tcp_output
    _output_predicted = _output._output_predicted
    _output_fin_predicted = _output._output_fin_predicted
    _send_data = _output._send_data
    _retransmit = _output._retransmit
    _send_syn = _output._send_syn
    _send_syn_packed = _output._send_syn_packed
    _receive_window = _output._receive_window
    _data_mss = _output._data_mss
    _send_segment = _output._send_segment
    _acknowledged = _output._acknowledged
    _send_bare_ack = _output._send_bare_ack
    _send_data_segment = _output._send_data_segment
    _checksum_and_send = _output._checksum_and_send
    _ack_now = _output._ack_now
    _challenge_ack = _output._challenge_ack
    # -- timers (tcp_timer.c) ---------------------------------------------------------------------
    _arm = _timers._arm
    _arm_delack = _timers._arm_delack
    on_timer = _timers.on_timer
    _rexmt_timeout = _timers._rexmt_timeout
    _frto_ack = _timers._frto_ack
    _frto_dupack = _timers._frto_dupack
    _persist_interval = _timers._persist_interval
    _persist_timeout = _timers._persist_timeout
    _user_timeout_expired = _timers._user_timeout_expired
    set_keepalive = _timers.set_keepalive
    _arm_keepalive = _timers._arm_keepalive
    _keepalive_timeout = _timers._keepalive_timeout
    _arm_2msl = _timers._arm_2msl


# The functions bound above annotate ``self`` for the type checker; a method written in a class
# leaves it bare.  Drop that annotation at run time so that the bound ones look like any other
# method to introspection: the journey's tracing holds each traced override (tcp_output) to the
# signature of the method it wraps, annotations included.
for _function in vars(TcpConnection).values():
    if isinstance(_function, FunctionType) and _function.__module__ != __name__:
        _function.__annotations__.pop("self", None)
del _function
