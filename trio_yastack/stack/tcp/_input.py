"""TCP input for one connection (FreeBSD's ``tcp_input.c``, from ``tcp_do_segment`` down).

``TcpLayer.tcp_input`` validates a segment and finds its connection; :func:`segment_arrives`
takes it from there, in two steps:

1. **Header prediction** (Van Jacobson's, at the top of FreeBSD's ``tcp_do_segment``): the two
   segments an established connection receives most -- the next in-order data segment that
   acknowledges nothing new, and a pure ACK for outstanding data -- are recognised by one test
   each and handled in a few lines.  This block is the whole of the fast path a native twin
   would replace; everything it does not take falls through, unchanged, to step 2.
2. **The general path**, RFC 9293 3.10.7 in its order: SYN-SENT (3.10.7.3), then for the other
   states the eight checks of 3.10.7.4, each in a function named for what it checks:
   :func:`_check_sequence_number`, :func:`_check_rst_bit`, :func:`_check_syn_bit`,
   :func:`_check_ack_field`, :func:`_process_segment_text`, :func:`_check_fin_bit`.  The third
   (security) and the sixth (URG) have nothing to do here, as the comments in place say.

Sequence numbers arrive as 32-bit wire values and are unwrapped once (``_seq.unwrap``) next to
RCV.NXT or SND.UNA; from there on every comparison is a plain integer comparison.

Each function here is a method of :class:`~trio_yastack.stack.tcp._conn.TcpConnection`, bound in
its class body (``self`` is the connection).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from .._drops import TcpDrop
from .._seq import seq_lt, unwrap
from ..wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TcpOptions
from ._buffers import NO_REASSEMBLY, NO_SACKS, ReassemblyQueue, SackScoreboard, SendBuffer
from ._output import MAX_WINDOW_SHIFT, window_shift_for
from ._rack import SentLog, reno_duplicate_ack, reno_enter_recovery, reno_partial_ack
from ._states import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    RECEIVES_DATA,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
)

if TYPE_CHECKING:
    from ._conn import TcpConnection

__all__ = ["closing_ack", "final_ack", "handshake_ack", "header_prediction", "segment_arrives"]

_MASK = 0xFFFFFFFF


def segment_arrives(
    self: TcpConnection,
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
    """Process one segment for this connection (RFC 9293 3.10.7): ``buf[data_start:end]`` is
    its payload, ``seq_wire``/``ack_wire`` its 32-bit numbers, ``options`` the parsed options
    when they are more than the aligned timestamp option, ``tsval`` -1 without timestamps."""
    state = self.state
    self.last_activity = now
    self.keep_probes = 0
    # -- 1. Header prediction (the fast path, shared with the per-burst one in _fastpath.py) --
    if (
        state == ESTABLISHED
        and options is None
        and self.header_prediction(buf, data_start, end, seq_wire, ack_wire, flags, window, tsval, tsecr, now)
    ):
        return
    length = end - data_start
    # -- 2. The general path (RFC 9293 3.10.7) -----------------------------------------------
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
    if not self._check_sequence_number(seq, length, flags, tsval, now):  # first
        return
    if flags & TCP_RST:  # second
        self._check_rst_bit(seq, state, now)
        return
    # Third, security and compartment: IPv4 security options (RFC 1108) are not implemented,
    # as in the mainstream stacks; there is nothing to compare.
    if flags & TCP_SYN:  # fourth
        self._check_syn_bit(now)
        return
    if not self._check_ack_field(seq, ack_wire, flags, window, options, tsecr, length, now):  # fifth
        return
    # Sixth, the URG bit: urgent data is not supported (RFC 6093 advises new applications
    # against it); the urgent pointer is ignored and the bytes are ordinary data.
    if length and not self._process_segment_text(buf, data_start, end, seq, now):  # seventh
        return
    if flags & TCP_FIN:  # eighth
        self._check_fin_bit(seq + length, now)
    if self.ack_now and len(self.reasm):
        # RFC 5681 4.2: an immediate duplicate ACK for each out-of-order segment, not one for
        # the whole burst: a sender without SACK counts them to find the loss (three), and with
        # SACK each one reports the blocks as they grow.
        self.tcp_output(now)
    else:
        self._output_after_input(now)


def header_prediction(
    self: TcpConnection,
    buf: bytes,
    data_start: int,
    end: int,
    seq_wire: int,
    ack_wire: int,
    flags: int,
    window: int,
    tsval: int,
    tsecr: int,
    now: float,
) -> bool:
    """Van Jacobson's header prediction for a segment without options beyond the aligned
    timestamp: take the next in-order data segment or a pure ACK for outstanding data and say
    ``True``, or change nothing and say ``False`` (the general path runs).  Called by
    :func:`segment_arrives` and by the per-burst fast path (``_fastpath.fast_input``): one
    implementation, so the two cannot diverge; a pure ACK goes through ``_ack_advances``, the
    one ACK-advance bookkeeping of both paths."""
    length = end - data_start
    # The next in-order data segment of an established connection that acknowledges nothing
    # new and changes nothing else.  (``seq_lt(tsval, ts_recent)`` is written out inline
    # here and below, PAWS without a call on the path every bulk segment takes.)
    if (
        self.state == ESTABLISHED
        and flags & ~TCP_PSH == TCP_ACK
        and length
        and seq_wire == self.rcv_nxt & _MASK
        and ack_wire == self.snd_una & _MASK
        and self.snd_nxt == self.snd_max
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
        self.rcvbuf._extend_from(buf, data_start, end)  # fits: checked against free() above
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
            self._arm_delack(now)
        if self.waiter is not None:  # _wake(), inline: a reader may be parked on us
            self.core.ready[self] = None
        return True
    # The other half: a pure ACK for outstanding data, in sequence, with the window
    # unchanged, outside recovery (what a bulk sender receives most).
    if (
        self.state == ESTABLISHED
        and flags == TCP_ACK
        and not length
        and seq_wire == self.rcv_nxt & _MASK
        and (window << self.snd_scale) == self.snd_wnd
        and not self.in_recovery
        and 0 < ((ack_wire - self.snd_una) & _MASK) <= self.snd_max - self.snd_una
        and (not self.ts_on or (tsval >= 0 and not 0 < ((self.ts_recent - tsval) & _MASK) < 0x80000000))
    ):
        seq = self.rcv_nxt
        ack = self.snd_una + ((ack_wire - self.snd_una) & _MASK)  # unwrap(), inline: ack is ahead
        if self.ts_on and seq <= self.last_ack_sent:
            self.ts_recent = tsval
            self.ts_recent_valid = True
        self.snd_wl1, self.snd_wl2 = seq, ack
        self._ack_advances(ack, tsecr, now)
        self._output_after_input(now)
        return True
    return False


def handshake_ack(
    self: TcpConnection,
    seq_wire: int,
    ack_wire: int,
    flags: int,
    window: int,
    tsval: int,
    tsecr: int,
    now: float,
) -> bool:
    """The ACK that completes a passive open (every connection's second segment), without data,
    taken in a few lines; ``False`` (nothing changed) leaves it to :func:`segment_arrives`.

    For a SYN-RECEIVED connection, a segment at RCV.NXT, its timestamp in order (PAWS passes),
    acknowledging our SYN (SND.UNA < SEG.ACK =< SND.MAX), RFC 9293 3.10.7.4's checks reduce to
    exactly these steps of the general path, in its order: the first check's TS.Recent update,
    the fifth's move to ESTABLISHED with the send window, then ``_process_ack``'s only work
    (the window it would update was just set; ``_ack_advances``), and the output.  Anything
    else -- a RST, a SYN, data, a FIN, an old timestamp, a persist timer -- declines.  Called by
    the per-burst fast path (``_fastpath.fast_input``); ``tests/test_tcp_conn_cycle.py`` holds
    it to the general path (fast path off)."""
    seq = self.rcv_nxt
    snd_una = self.snd_una
    acked = (ack_wire - snd_una) & _MASK  # an ACK below SND.UNA wraps to a huge value: declined
    if (
        flags & ~TCP_PSH != TCP_ACK
        or seq_wire != seq & _MASK
        or not 0 < acked <= self.snd_max - snd_una
        or self.t_persist
    ):
        return False
    if self.ts_on:
        if tsval < 0 or 0 < ((self.ts_recent - tsval) & _MASK) < 0x80000000:
            return False  # no timestamp, or PAWS would reject it: the general path decides
        if seq <= self.last_ack_sent:  # RFC 7323 4.3, as _check_sequence_number does
            self.ts_recent = tsval
            self.ts_recent_valid = True
    self.last_activity = now
    self.keep_probes = 0
    ack = snd_una + acked
    self._established(now)
    window_bytes = window << self.snd_scale
    self.snd_wnd = window_bytes
    if window_bytes > self.max_sndwnd:
        self.max_sndwnd = window_bytes
    self.snd_wl1, self.snd_wl2 = seq, ack
    self._ack_advances(ack, tsecr, now)
    if self.ack_now and len(self.reasm):
        self.tcp_output(now)
    else:
        self._output_after_input(now)
    return True


def closing_ack(
    self: TcpConnection,
    seq_wire: int,
    ack_wire: int,
    flags: int,
    window: int,
    tsval: int,
    tsecr: int,
    now: float,
) -> bool:
    """The peer's answer to our FIN, without data, taken in a few lines: in FIN-WAIT-1 the ACK
    of everything we sent, FIN included (-> FIN-WAIT-2), with or without the peer's own FIN;
    in FIN-WAIT-2 the peer's FIN (either -> TIME-WAIT).  A ``Connection: close`` server's last
    segment in.  ``False`` (nothing changed) leaves anything else to :func:`segment_arrives`.

    With the segment at RCV.NXT (a FIN only inside an open window), its timestamp in order and
    SEG.ACK = SND.MAX beyond our FIN, RFC 9293 3.10.7.4's checks reduce to: the first check's
    TS.Recent update, ``_process_ack`` (the fifth), the FIN-WAIT-1 -> FIN-WAIT-2 step, and the
    eighth check's ``_fin_arrives``.  With the FIN in the same segment, the FIN-WAIT-2 timer the
    step would arm is not: ``_fin_arrives`` takes the connection into TIME-WAIT at once, whose
    record clears it (the general path arms it and cancels it there)."""
    seq = self.rcv_nxt
    fin = flags & TCP_FIN
    state = self.state
    if (
        flags & ~(TCP_PSH | TCP_FIN) != TCP_ACK
        or seq_wire != seq & _MASK
        or ack_wire != self.snd_max & _MASK
        or self.fin_seq < 0
        or self.snd_max <= self.fin_seq
        or (fin and (self.shut_rd or self.rcv_adv <= seq))
        or (state == FIN_WAIT_2 and not fin)
    ):
        return False
    if self.ts_on:
        if tsval < 0 or 0 < ((self.ts_recent - tsval) & _MASK) < 0x80000000:
            return False  # no timestamp, or PAWS would reject it: the general path decides
        if seq <= self.last_ack_sent:  # RFC 7323 4.3, as _check_sequence_number does
            self.ts_recent = tsval
            self.ts_recent_valid = True
    self.last_activity = now
    self.keep_probes = 0
    self._process_ack(self.snd_max, seq, window, None, tsecr, not fin, now)
    if self.state == CLOSED:
        return True
    if state == FIN_WAIT_1:
        self.state = FIN_WAIT_2
        if not fin:
            if self.user_closed and self.config.fin_wait_2_timeout:
                # Nobody can read any more: do not wait for the peer's FIN for ever (tcp_fin_timeout).
                self.t_2msl = now + self.config.fin_wait_2_timeout
                self._arm()
            self._wake()
    if fin:
        # FIN-WAIT-2 -> TIME-WAIT, our ACK sent: the output the general path then asks for
        # (tcp_output in TIME-WAIT) sends nothing
        self._fin_arrives(now)
        return True
    if self.ack_now and len(self.reasm):
        self.tcp_output(now)
    else:
        self._output_after_input(now)
    return True


def final_ack(
    self: TcpConnection,
    seq_wire: int,
    ack_wire: int,
    flags: int,
    window: int,
    tsval: int,
    tsecr: int,
    now: float,
) -> bool:
    """The peer's ACK of our FIN after its own FIN, without data, taken in a few lines: in
    LAST-ACK (the peer closed first, as a ``Connection: close`` server does to its client) the
    connection is closed, in CLOSING (both closed at once) it goes to TIME-WAIT.  The client's
    twin of :func:`closing_ack`; ``False`` (nothing changed) leaves anything else (data, a FIN
    again, an ACK short of our FIN, an old timestamp) to :func:`segment_arrives`.

    With the segment at RCV.NXT (no SYN, FIN or data: in the window whatever its size), its
    timestamp in order and SEG.ACK = SND.MAX beyond our FIN, RFC 9293 3.10.7.4's checks reduce
    to the first check's TS.Recent update and the fifth's ``_process_ack`` and its closing
    step; what the general path would do after them for a segment that closes nothing
    (``_process_ack`` left SND.UNA short of our FIN) is done here too."""
    seq = self.rcv_nxt
    if (
        flags & ~TCP_PSH != TCP_ACK
        or seq_wire != seq & _MASK
        or ack_wire != self.snd_max & _MASK
        or self.fin_seq < 0
        or self.snd_max <= self.fin_seq
    ):
        return False
    if self.ts_on:
        if tsval < 0 or 0 < ((self.ts_recent - tsval) & _MASK) < 0x80000000:
            return False  # no timestamp, or PAWS would reject it: the general path decides
        if seq <= self.last_ack_sent:  # RFC 7323 4.3, as _check_sequence_number does
            self.ts_recent = tsval
            self.ts_recent_valid = True
    self.last_activity = now
    self.keep_probes = 0
    self._process_ack(self.snd_max, seq, window, None, tsecr, True, now)
    state = self.state
    if state == CLOSED:
        return True
    if self.snd_una > self.fin_seq:
        if state == CLOSING:
            self._enter_time_wait(now, send_ack=self.ack_now)  # as _check_ack_field: only an ACK owed
            return True
        if state == LAST_ACK:
            self._drop(0)  # counted as closed there
            return True
    if self.ack_now and len(self.reasm):
        self.tcp_output(now)
    else:
        self._output_after_input(now)
    return True


def _check_sequence_number(
    self: TcpConnection, seq: int, length: int, flags: int, tsval: int, now: float
) -> bool:
    """RFC 9293 3.10.7.4, first check: is the segment acceptable?  Preceded by PAWS and
    followed by the TS.Recent update, as RFC 7323 5.3 amends it.  An unacceptable segment is
    answered with an ACK (unless it is a RST) and ends processing (``False``)."""
    # RFC 7323 5.3 PAWS: an old timestamp marks an old duplicate.
    if (
        self.ts_on
        and tsval >= 0
        and self.ts_recent_valid
        and not flags & TCP_RST
        and seq_lt(tsval, self.ts_recent)
    ):
        self.stats.drop(TcpDrop.PAWS)
        self._ack_now(now)
        return False
    seg_len = length
    if flags & TCP_SYN:
        seg_len += 1
    if flags & TCP_FIN:
        seg_len += 1
    rcv_nxt = self.rcv_nxt
    rcv_wnd = max(self.rcv_adv - rcv_nxt, 0)
    if seg_len == 0:
        acceptable = (seq == rcv_nxt) if rcv_wnd == 0 else (rcv_nxt <= seq < rcv_nxt + rcv_wnd)
    else:
        acceptable = rcv_wnd > 0 and (
            rcv_nxt <= seq < rcv_nxt + rcv_wnd or rcv_nxt <= seq + seg_len - 1 < rcv_nxt + rcv_wnd
        )
    if not acceptable:  # (TIME_WAIT's retransmitted FIN: TcpLayer._time_wait_input)
        if not flags & TCP_RST:
            self.stats.duplicate_segments += 1
            if length and self.sack_on and seq + length <= rcv_nxt:
                # RFC 2883: a duplicate's range leads the SACK option (a D-SACK), so that the
                # sender can tell a retransmission -- a tail loss probe above all -- was not
                # needed (RFC 8985 7.4): without it, a spurious probe from a sender that then
                # hears an ACK beyond it counts as a repaired loss and halves its window.
                self.ack_now = True
                self._send_segment(self.snd_nxt, TCP_ACK, b"", now, dsack=(seq, seq + length))
            else:
                self._ack_now(now)
        else:
            self.stats.drop(TcpDrop.RST_OUT_OF_WINDOW)
        return False
    # RFC 7323 4.3: remember the timestamp of the segment that covers the last ACK we sent.
    if self.ts_on and tsval >= 0 and seq <= self.last_ack_sent:
        self.ts_recent = tsval
        self.ts_recent_valid = True
    return True


def _check_rst_bit(self: TcpConnection, seq: int, state: int, now: float) -> None:
    """RFC 9293 3.10.7.4, second check, with RFC 5961 3.2: only a RST exactly at RCV.NXT
    resets the connection; any other in-window RST gets a challenge ACK."""
    if seq != self.rcv_nxt:
        self._challenge_ack(now)
        return
    self.stats.resets_received += 1
    if state == SYN_RECEIVED and self.listener is not None:
        self._drop(0)  # a passive open goes back to LISTEN: just forget the embryo
    elif state in (CLOSING, LAST_ACK, TIME_WAIT):
        self._drop(0)
    else:
        self._drop(errno.ECONNREFUSED if state == SYN_RECEIVED else errno.ECONNRESET, counted=True)


def _check_syn_bit(self: TcpConnection, now: float) -> None:
    """RFC 9293 3.10.7.4, fourth check, as RFC 5961 4.2 replaces it: a SYN in a synchronized
    state (or a SYN-RECEIVED one, other than the peer's SYN again) gets a challenge ACK, never
    a reset, so a blind attacker cannot tear the connection down."""
    self._challenge_ack(now)


def _check_ack_field(
    self: TcpConnection,
    seq: int,
    ack_wire: int,
    flags: int,
    window: int,
    options: TcpOptions | None,
    tsecr: int,
    length: int,
    now: float,
) -> bool:
    """RFC 9293 3.10.7.4, fifth check: the ACK field completes a passive open (SYN-RECEIVED),
    moves SND.UNA and the send window (with RFC 5961 5.2's bounds), and drives the closing
    states; ``False`` when the segment needs no further processing."""
    if not flags & TCP_ACK:
        self.stats.drop(TcpDrop.NO_ACK)
        return False
    ack = unwrap(ack_wire, self.snd_una)
    if self.state == SYN_RECEIVED:
        if not self.snd_una < ack <= self.snd_max:
            self.layer.send_reset(self.remote_ip, self.remote_port, self.local_port, ack_wire, 0, True, now)
            return False
        self._established(now)
        self.snd_wnd = window << self.snd_scale
        self.max_sndwnd = max(self.max_sndwnd, self.snd_wnd)
        self.snd_wl1, self.snd_wl2 = seq, ack
    # RFC 5961 5.2: an ACK for data never sent, or too old, gets an ACK / challenge.
    if ack > self.snd_max:
        self._ack_now(now)
        self.stats.drop(TcpDrop.ACK_TOO_NEW)
        return False
    if ack < self.snd_una - max(self.max_sndwnd, 1):
        self._challenge_ack(now)
        return False
    self._process_ack(ack, seq, window, options, tsecr, not length and not flags & TCP_FIN, now)
    state = self.state
    if state == CLOSED:
        return False
    if state == FIN_WAIT_1 and self.fin_seq >= 0 and self.snd_una > self.fin_seq:
        self.state = FIN_WAIT_2
        if self.user_closed and self.config.fin_wait_2_timeout:
            # Nobody can read any more: do not wait for the peer's FIN for ever (tcp_fin_timeout).
            self.t_2msl = now + self.config.fin_wait_2_timeout
            self._arm()
        self._wake()
    elif state == CLOSING and self.snd_una > self.fin_seq:
        # An ACK of our FIN needs no answer; but the ACK this burst owes the peer's FIN (it
        # arrived in an earlier segment of the same burst: its ACK waits for the burst's end,
        # which TIME_WAIT would never send) leaves now, or the peer retransmits its FIN
        self._enter_time_wait(now, send_ack=self.ack_now)
        return False
    elif state == LAST_ACK and self.snd_una > self.fin_seq:
        self._drop(0)  # counted as closed there
        return False
    return True


def _process_segment_text(
    self: TcpConnection, buf: bytes, start: int, end: int, seq: int, now: float
) -> bool:
    """RFC 9293 3.10.7.4, seventh step: the segment's text goes to the receive buffer in the
    states that receive data.  New data for a connection the application has closed cannot
    be delivered: reset (RFC 9293 3.10.4, Linux's TCPAbortOnData) and stop (``False``)."""
    if self.user_closed and seq + (end - start) > self.rcv_nxt:
        self.stats.drop(TcpDrop.DATA_AFTER_CLOSE)
        self._send_segment(self.snd_max, TCP_RST | TCP_ACK, b"", now)
        self.stats.resets_sent += 1
        self._drop(errno.ECONNRESET, counted=True)
        return False
    if self.state in RECEIVES_DATA:
        self._data_arrives(buf, start, end, seq, now)
    else:
        self.stats.drop(TcpDrop.DATA_AFTER_FIN)
    return True


def _check_fin_bit(self: TcpConnection, fin: int, now: float) -> None:
    """RFC 9293 3.10.7.4, eighth check: a FIN at RCV.NXT ends the peer's stream now; one
    beyond it (data missing before it) is remembered and taken when the gap fills."""
    if fin == self.rcv_nxt and not self.shut_rd:
        self._fin_arrives(now)
    elif fin > self.rcv_nxt:
        self.rcv_fin = fin  # out of order: taken when the data before it arrives
        self.ack_now = True


def _output_after_input(self: TcpConnection, now: float) -> None:
    """Send what an arriving segment made due: at the end of the burst it came in (once for
    all of the burst's segments), or at once outside a burst."""
    if self.core.in_burst:
        self.core.output_pending[self] = None
    else:
        self.tcp_output(now)


def _syn_sent_arrives(
    self: TcpConnection,
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
            self.layer.send_reset(self.remote_ip, self.remote_port, self.local_port, ack_wire, 0, True, now)
        self.stats.drop(TcpDrop.BAD_ACK_IN_SYN_SENT)
        return
    if flags & TCP_RST:
        if flags & TCP_ACK:
            self.stats.resets_received += 1
            self._drop(errno.ECONNREFUSED, counted=True)
        else:
            self.stats.drop(TcpDrop.RST_WITHOUT_ACK_IN_SYN_SENT)
        return
    if not flags & TCP_SYN:
        self.stats.drop(TcpDrop.NO_SYN_IN_SYN_SENT)
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


def _take_syn_options(
    self: TcpConnection, options: TcpOptions | None, tsval: int, *, from_syn_ack: bool
) -> None:
    """Negotiate the RFC 7323 / RFC 2018 options from the peer's SYN."""
    config = self.config
    peer_mss = config.default_mss
    if options is not None:
        if options.mss:
            peer_mss = options.mss
        if options.window_scale is not None and config.window_scaling:
            self.snd_scale = min(options.window_scale, MAX_WINDOW_SHIFT)
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
    self.set_mss(min(self.peer_mss, self.core.mtu - self.IP_TCP_HEADERS))
    # RACK-TLP needs SACK (RFC 8985 2): without it the duplicate-ACK threshold decides.
    self.rack = SentLog() if self.sack_on and config.rack else None


def _established(self: TcpConnection, now: float) -> None:
    self.state = ESTABLISHED
    self.stats.connections_established += 1
    self.rxtshift = 0
    self.t_rexmt = 0.0
    if self.listener is not None:
        self.listener.connection_established(self)
    self._arm_keepalive(now)
    self._wake()


def _process_ack(
    self: TcpConnection,
    ack: int,
    seq: int,
    window: int,
    options: TcpOptions | None,
    tsecr: int,
    pure: bool,
    now: float,
) -> None:
    """Fifth step of RFC 9293 3.10.7.4 for a synchronized connection: window, RTT, loss recovery.

    With SACK and RACK (the default), every ACK that carries SACK blocks, and every ACK during
    recovery, runs loss detection (:func:`._rack._detect_loss`): by time and by SACKed bytes,
    whatever the ACK's window or whether it also advanced SND.UNA -- a TSO sender hears few
    duplicate ACKs, but their blocks cover many segments.  Without SACK the duplicate-ACK
    threshold decides (:func:`_on_duplicate_ack`)."""
    snd_una = self.snd_una
    rack = self.rack
    newly_sacked = 0
    has_sack = self.sack_on and options is not None and bool(options.sack_blocks)
    if has_sack:
        assert options is not None  # has_sack says so
        blocks = [(unwrap(left, snd_una), unwrap(right, snd_una)) for left, right in options.sack_blocks]
        scoreboard = self.scoreboard
        if scoreboard is NO_SACKS:  # the first SACK blocks: a scoreboard of its own (_conn.py)
            scoreboard = self.scoreboard = SackScoreboard()
        newly_sacked = scoreboard.update(blocks, snd_una, self.snd_max)
        if rack is not None:
            # RFC 8985 6.2 step 4, 7.4.2.  A D-SACK lies below the cumulative ACK of the ACK that
            # carries it (RFC 2883), not below SND.UNA before it: a duplicate probe's D-SACK
            # comes on the ACK of the flight whose ACKs were lost, and went unseen (a spurious
            # congestion response for the probe, 7.4).
            rack.dsack(blocks, ack if ack > snd_una else snd_una, self.snd_nxt)
            rack.sacked(blocks, now)
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
    duplicate = False
    if ack > snd_una:
        self._ack_advances(ack, tsecr, now)
    elif pure and not window_changed:
        if rack is not None and rack.tlp_end == ack and not newly_sacked:
            # RFC 8985 7.4.2 (Linux's tcp_process_tlp_ack): the retransmitted probe's own ACK
            # acknowledges nothing new -- the original had arrived, the probe was a duplicate.
            rack.tlp_end = -1
            rack.tlp_retrans = False
        if self.snd_max > snd_una:
            # ack == snd_una: a duplicate ACK in RFC 5681's sense
            duplicate = True
            self.stats.duplicate_acks += 1
            self.dupacks += 1
            if self.frto:
                self._frto_dupack(now)
            if rack is None:
                self._on_duplicate_ack(now)
                return
    if rack is not None and (has_sack or self.in_recovery) and self.state != CLOSED:
        self._detect_loss(ack - snd_una + newly_sacked if ack > snd_una else newly_sacked, now)
        if duplicate and not self.in_recovery:
            # RFC 3042 limited transmit: new data on the first duplicate ACKs.
            self.tcp_output(now, limited_transmit=True)


def _ack_advances(self: TcpConnection, ack: int, tsecr: int, now: float) -> None:
    """New data acknowledged: RTT sample, congestion control, recovery, buffers, timers.

    Every per-ACK update of the common case (a cumulative ACK, no SACK, no loss) is here and
    only here -- RACK's delivery update and the TLP/RTO timer among them -- so that a fast path
    calling this function stays the same TCP as the general path."""
    acked = ack - self.snd_una
    syn_acked = self.snd_una == self.iss
    # RTT: timestamps give a sample per ACK (RFC 7323 4.1); otherwise the timed segment (Karn).
    rtt = None
    tsecr_time = -1.0
    if self.ts_on and tsecr > 0:
        ms = ((int(now * 1000) + self.ts_offset - tsecr) & _MASK) / 1000.0
        if ms < 600.0:
            rtt = ms
            tsecr_time = now - ms
    elif self.rtt_seq >= 0 and ack > self.rtt_seq:
        rtt = now - self.rtt_time
        self.rtt_seq = -1
    if rtt is not None:
        self._rtt_sample(rtt)
    elif syn_acked and self.rxtshift and not self.srtt:
        self.rto = min(3.0, self.config.rto_max)  # RFC 6298 5.7: a SYN was lost, no RTT known
    self.rxtshift = 0
    in_flight = self.snd_max - self.snd_una
    old_una = self.snd_una
    self.snd_una = ack
    if self.snd_nxt < ack:
        self.snd_nxt = ack
    if self.sack_on:
        self.scoreboard.advance(ack)
        rack = self.rack
        # RFC 8985 6.2: RACK's delivery update, which may end a probe episode with a real loss (7.4)
        if rack is not None and rack.acked(ack, now, tsecr_time):
            self._tlp_loss(now)
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
            if self.rack is not None:
                self.rack.recovery_ended()  # RFC 8985 6.2 step 4
        else:
            # Partial ACK (RFC 6582 3.2 / RFC 6675): retransmit the next hole at once.
            if not self.sack_on:
                reno_partial_ack(self, acked, now)
    else:
        self.dupacks = 0
        self.cc.on_ack(max(data_acked, 0), now, rtt if rtt is not None else (self.srtt or None), in_flight)
    if self.frto:
        self._frto_ack(old_una, now)
    if self.snd_una >= self.snd_max:
        self.t_rexmt = 0.0
    else:
        self._arm_rexmt(now)  # the TLP's PTO outside recovery with RACK, else the RTO
    self._wake()  # room in the send buffer


def _ack_all(conn: TcpConnection, ack: int, seq: int, window: int, tsecr: int, now: float) -> bool:
    """``_process_ack`` for the ACK a keep-alive request carries: all that was in flight
    acknowledged (SEG.ACK = SND.MAX > SND.UNA) with no loss probe outstanding, on a connection
    the callers of ``_fastpath.ack_and_data_input`` found ESTABLISHED (so the SYN is acknowledged
    and no FIN sent), outside recovery, without RTO backoff, F-RTO or SACKed ranges, for a
    segment without SACK blocks.

    Then ``_process_ack`` and ``_ack_advances`` reduce to these steps, done here in their order
    with the same results: the window update; the RTT sample and RTO (``_rtt_sample``, written
    out); SND.UNA and SND.NXT to SND.MAX; RACK's delivery update for every entry, the log then
    empty (``SentLog.acked_all``; the scoreboard is empty, so advancing it is nothing); the send
    buffer freed; ``cc.on_ack`` with the bytes acknowledged and the flight; the retransmission
    timer stopped (nothing in flight: no TLP nor RTO to arm); the writer woken.  No loss
    detection follows (no SACK, no recovery), nor a duplicate ACK's work.  It saves the general
    functions' tests of the cases excluded and four calls per request.

    False, having changed nothing, for any other ACK: the general functions decide.
    ``tests/test_tcp_lean_ack.py`` holds the two to the same fields, counters, timers and frames."""
    snd_una = conn.snd_una
    rack = conn.rack
    if ack != conn.snd_max or ack <= snd_una or (rack is not None and rack.tlp_end >= 0):
        return False
    # RFC 9293's window update (SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK))
    window_bytes = window << conn.snd_scale
    wl1 = conn.snd_wl1
    if wl1 < seq or (wl1 == seq and conn.snd_wl2 <= ack):
        conn.snd_wnd = window_bytes
        conn.snd_wl1 = seq
        conn.snd_wl2 = ack
        if window_bytes > conn.max_sndwnd:
            conn.max_sndwnd = window_bytes
        if window_bytes and conn.t_persist:
            conn.t_persist = 0.0
            conn.persist_shift = 0  # (SND.NXT, raised to SND.UNA there, goes to SND.MAX below)
    # _ack_advances: the RTT sample (RFC 7323 4.1, or Karn's timed segment) ...
    rtt = None
    tsecr_time = -1.0
    if conn.ts_on and tsecr > 0:
        ms = ((int(now * 1000) + conn.ts_offset - tsecr) & _MASK) / 1000.0
        if ms < 600.0:
            rtt = ms
            tsecr_time = now - ms
    elif conn.rtt_seq >= 0 and ack > conn.rtt_seq:
        rtt = now - conn.rtt_time
        conn.rtt_seq = -1
    srtt = conn.srtt
    if rtt is not None:  # _rtt_sample (RFC 6298 2), written out
        sample = rtt if rtt > 0.0 else 0.0
        if srtt == 0.0:
            conn.srtt = srtt = sample
            conn.rttvar = rttvar = sample / 2
        else:
            conn.rttvar = rttvar = 0.75 * conn.rttvar + 0.25 * abs(srtt - sample)
            conn.srtt = srtt = 0.875 * srtt + 0.125 * sample
        # min(max(srtt + max(0.001, 4 * rttvar), rto_min), rto_max) without three builtin calls
        rto = 4 * rttvar
        rto = srtt + (rto if rto > 0.001 else 0.001)
        config = conn.config
        if rto < config.rto_min:
            rto = config.rto_min
        conn.rto = rto if rto < config.rto_max else config.rto_max
    # ... everything acknowledged ...
    conn.snd_una = conn.snd_nxt = ack
    if rack is not None:
        rack.acked_all(now, tsecr_time)  # RFC 8985 6.2
    conn.sndbuf.acknowledge(ack)
    # ... congestion control (outside recovery), the timer, the writer.
    conn.dupacks = 0
    acked = ack - snd_una
    conn.cc.on_ack(acked, now, rtt if rtt is not None else (srtt or None), acked)
    conn.t_rexmt = 0.0
    if conn.waiter is not None:  # _wake(), in line: room in the send buffer
        conn.core.ready[conn] = None
    elif conn.listener is not None:
        conn.core.ready[conn.listener] = None
    return True


def _rtt_sample(self: TcpConnection, rtt: float) -> None:
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


def _on_duplicate_ack(self: TcpConnection, now: float) -> None:
    """Without RACK: fast retransmit on the third duplicate ACK, or when SACK shows loss by
    bytes (RFC 5681, RFC 6675).  Without SACK the recovery is RFC 6582's, paced by PRR (RFC
    6937) instead of its window inflation (``_rack.reno_*``)."""
    if self.in_recovery:
        if not self.sack_on:
            reno_duplicate_ack(self)  # PRR: a segment left the network
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
    self.stats.recovery_episodes += 1
    if self.sack_on:
        self.stats.sack_recovery_episodes += 1
        self._retransmit(self.snd_una, now)
    else:
        reno_enter_recovery(self, in_flight, now)  # the fast retransmit, and PRR from here
    self.tcp_output(now)


def _data_arrives(self: TcpConnection, buf: bytes, start: int, end: int, seq: int, now: float) -> None:
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
            stats.drop(TcpDrop.RECEIVE_WINDOW_FULL)
            self.ack_now = True
            return
        self.rcvbuf.append(buf[start : start + length])
        self.rcv_nxt = rcv_nxt = seq + length
        stats.bytes_received += length
        if len(self.reasm):
            more = self.reasm.pop_in_order(rcv_nxt)
            if len(more) > self.rcvbuf.free():  # cannot happen while the window rules hold
                stats.drop(TcpDrop.REASSEMBLY_OVERFLOW)
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
            self._arm_delack(now)
        self._wake()
    else:
        stats.out_of_order_segments += 1
        if self.reasm is NO_REASSEMBLY:  # the first segment out of order: a queue of its own (_conn.py)
            self.reasm = ReassemblyQueue(self.rcvbuf.limit)
        stored = self.reasm.insert(seq, memoryview(buf)[start:end], rcv_nxt, window_end)
        if not stored:
            # Nothing new: a duplicate of what is held, or refused by the queue's bounds.
            full = len(self.reasm) + end - start > self.reasm.limit
            stats.drop(TcpDrop.OUT_OF_ORDER_QUEUE_FULL if full else TcpDrop.OUT_OF_ORDER_DUPLICATE)
        self.ack_now = True  # at once, not at the end of the burst (segment_arrives)


def _fin_arrives(self: TcpConnection, now: float) -> None:
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


def _enter_time_wait(self: TcpConnection, now: float, *, send_ack: bool = True) -> None:
    """Our last ACK leaves, then a compact record (``TcpLayer.entered_time_wait``, FreeBSD's
    ``tcp_twstart``) takes the pair over for 2MSL and answers its segments; this object keeps
    only what its application may still read."""
    self.state = TIME_WAIT
    if send_ack:
        if self.reasm is NO_REASSEMBLY or not len(self.reasm):
            # what _send_segment makes of a bare ACK with nothing held out of order, directly
            # (a Connection: close server's last segment out)
            self._send_bare_ack(self.snd_max, now)
        else:
            self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
    if not self.user_closed:
        # Only an application that still holds the socket can look (SO_SNDBUF reads 0 then); the
        # buffer itself is empty, our FIN being acknowledged.
        self.sndbuf = SendBuffer(0, self.snd_una)
    self.layer.entered_time_wait(self, now)
    self._wake()
