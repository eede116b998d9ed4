"""TCP's timers (FreeBSD's ``tcp_timer.c``): REXMT, PERSIST, KEEP, 2MSL and DELACK.

Each connection keeps its five deadlines as plain floats (0.0: not set) and at most one live entry
in the core's timer heap, at the earliest of them (:func:`_arm`); when that entry fires,
:func:`on_timer` runs every timer that is due.  No clock is read here: ``now`` is given.
REXMT serves three purposes, as Linux's one retransmission timer does (``rexmt_mode``): the RTO,
the tail loss probe and RACK's reordering timer (:mod:`._rack`); an RTO is followed by F-RTO
(RFC 5682, :func:`_frto_ack`).

Each function here is a method of :class:`~trio_yastack.stack.tcp._conn.TcpConnection`, bound in
its class body (``self`` is the connection).
"""

from __future__ import annotations

import errno
import math
from typing import TYPE_CHECKING

from .._drops import TcpDrop
from ..wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH
from ._rack import REXMT_REO, REXMT_RTO
from ._states import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    SENDS_DATA,
    SYN_RECEIVED,
    SYN_SENT,
    SYNCHRONIZED,
    TIME_WAIT,
)

if TYPE_CHECKING:
    from .._core import StackCore
    from ._conn import TcpConnection

__all__ = ["arm_delayed_acks", "on_timer", "set_keepalive"]


def _arm(self: TcpConnection) -> None:
    """Keep one entry in the stack's timer heap at this connection's earliest deadline.

    Moving a deadline later costs nothing (the entry fires early and re-arms); moving it
    earlier pushes one more entry and cancels the one it supersedes.  That keeps per-segment
    timer work O(1) on the hot path.
    The newest entry is kept (``_timer``) so that ``_drop`` can cancel it: a connection that
    ends early (a TIME_WAIT taken over by a new SYN, or recycled) is then not held in memory
    by the heap until its 2MSL deadline.
    """
    deadline = math.inf
    for t in (self.t_rexmt, self.t_persist, self.t_keep, self.t_2msl, self.t_delack):
        if t and t < deadline:
            deadline = t
    if deadline < self._timer_at:
        self._timer_at = deadline
        timers = self.core.timers
        superseded = self._timer
        if superseded is not None:
            # The later entry would only have found itself superseded (on_timer returns), and
            # held the connection in the heap until then: a short connection's SYN-ACK entry
            # kept it a second past its end.  Cancelled, the heap purges it in bulk.
            timers.cancel(superseded)
        self._timer = timers.schedule(deadline, self.on_timer)


#: the most connections whose delayed ACK entry waits (``StackCore.delack_pending``, answered
#: ones included until a pass forgets them); a full list is passed over, and beyond that an
#: entry is made at once
DELACK_PENDING_LIMIT = 1024


def _arm_delack(self: TcpConnection, now: float) -> None:
    """Set the delayed ACK's deadline (FreeBSD's ``TF_DELACK``).  Inside a burst its heap entry
    waits (``StackCore.delack_pending``, :func:`arm_delayed_acks`): a request is most often
    answered in the same or the next turn, its response carrying the ACK and clearing the
    deadline, and the entry (an object, a push, a cancellation or a pop later) would have been
    made for nothing.  The deadline itself is set now, so the ACK is due when it would have been."""
    deadline = self.t_delack = now + self.config.delayed_ack
    core = self.core
    if core.in_burst:
        if len(core.delack_pending) >= DELACK_PENDING_LIMIT:
            arm_delayed_acks(core, now)  # forget the answered ones (one pass per ~LIMIT requests)
        if len(core.delack_pending) < DELACK_PENDING_LIMIT:
            core.delack_pending.append(self)
            if deadline < core.delack_next:
                core.delack_next = deadline
            return
    if deadline < self._timer_at:
        self._arm()


def arm_delayed_acks(core: StackCore, now: float | None = None) -> None:
    """The delayed ACKs bursts left pending: forget those whose deadline was cleared (a segment
    carried the ACK) and make the heap entry of the others -- all of them before the heap is
    read for a sleep (``StackCore.next_deadline``, ``now`` None), those due by ``now`` before it
    is run (``StackCore.run_timers``, when ``delack_next`` says one is due) or when the list is
    full; the rest keep waiting, ``delack_next`` the earliest of their deadlines.  An ACK so fires
    exactly when it would have with its entry made at once, and a turn of the poll loop looks at
    the list only when one is due."""
    waiting = []
    earliest = math.inf
    # Each connection once: one that set its delayed ACK again after a response cleared it is
    # in the list as often, and kept whole a full list stayed full, so that every later
    # _arm_delack made this pass over all of it (half the CPU of bench_fastpath's request row).
    for conn in dict.fromkeys(core.delack_pending):
        deadline = conn.t_delack
        if not deadline or conn.state == CLOSED:
            continue
        if now is None or deadline <= now:
            if deadline < conn._timer_at:
                conn._arm()
        else:
            waiting.append(conn)
            if deadline < earliest:
                earliest = deadline
    core.delack_pending = waiting
    core.delack_next = earliest


def on_timer(self: TcpConnection, now: float) -> None:
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
            self._drop(0)  # counted as closed there
            return
        if self.state == FIN_WAIT_2:
            self.stats.drop(TcpDrop.FIN_WAIT_2_TIMEOUT)
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


def _rexmt_timeout(self: TcpConnection, now: float) -> None:
    """The REXMT deadline passed.  On a RACK connection it may be the tail loss probe's or the
    reordering timer's (one timer, as Linux's icsk_pending); otherwise RFC 6298 5.4-5.7: back
    off, retransmit the earliest unacknowledged segment, and (RFC 5682) wait to see whether the
    timeout was spurious before going back N."""
    mode = self.rexmt_mode
    if mode:
        self.rexmt_mode = REXMT_RTO
        if mode == REXMT_REO:
            self._reo_timeout(now)
        else:
            self._tlp_timeout(now)
        return
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
    cc = self.cc
    # RFC 5682 2.1: F-RTO on the first timeout outside recovery; the window before it is kept
    # for the undo should the timeout prove spurious.
    if config.frto and self.rxtshift == 1 and not self.in_recovery and self.snd_max > self.snd_una + 1:
        self.frto = 1
        self.frto_cwnd, self.frto_ssthresh = cc.cwnd, cc.ssthresh
        self.frto_high = self.snd_max
    else:
        self.frto = 0
    cc.on_rto(now, in_flight)
    self.in_recovery = False
    self.dupacks = 0
    self.recover = self.snd_max
    if self.sack_on:
        self.scoreboard.clear()  # RFC 6675 5.1: the receiver may have reneged
        if self.rack is not None:
            self.rack.timeout_mark_lost()  # SACKed stays SACKed unless it reneged (Linux's choice)
    self.snd_nxt = self.snd_una
    self.t_rexmt = now + self.rto
    self.stats.rto_retransmits += 1
    self._retransmit(self.snd_una, now)
    self.t_rexmt = now + self.rto


def _frto_ack(self: TcpConnection, old_una: int, now: float) -> None:
    """RFC 5682 2.2 and 2.3 on an ACK that advanced SND.UNA after a timeout (``frto`` set).

    First ACK (2.2 b): send up to two new segments instead of going back N.  Second ACK
    (2.3 b): it acknowledges data the timeout did not retransmit -- the originals were not
    lost, the timeout was spurious: undo its window reduction (Linux's tcp_undo_cwnd_reduction).
    An ACK that covers all that was outstanding leaves nothing to tell (conventional recovery)."""
    if self.snd_una >= self.frto_high:
        self.frto = 0
        return
    if self.frto == 1:
        available = self.sndbuf.end - self.snd_max
        room = self.snd_una + self.snd_wnd - self.snd_max
        length = min(available, room, 2 * self.mss)
        if length <= 0 or (self.fin_seq >= 0 and self.snd_max > self.fin_seq):
            self.frto = 0  # nothing new to send: conventional recovery (2.2 b, last case)
            return
        self.frto = 2
        self.snd_nxt = self.snd_max  # no going back N until the next ACK tells (2.3)
        mss = self.mss
        while length > 0:
            piece = length if length < mss else mss
            self._send_data(self.snd_max, piece, TCP_ACK, now)
            length -= piece
        return
    # 2.3 b: the second ACK advanced too.
    self.frto = 0
    cc = self.cc
    cc.undo(self.frto_cwnd, self.frto_ssthresh)
    self.snd_nxt = self.snd_max  # what the timeout would have sent again arrived the first time
    self.recover = self.snd_una
    rack = self.rack
    if rack is not None:
        rack.undo_lost()
    self.stats.spurious_rto_undos += 1


def _frto_dupack(self: TcpConnection, now: float) -> None:
    """RFC 5682 2.2 a / 2.3 a: a duplicate ACK after the timeout: it was a real loss; go on
    with the conventional recovery (going back N from SND.UNA, as the timeout set up)."""
    if self.frto == 2:
        self.snd_nxt = self.snd_una
    self.frto = 0


def _persist_interval(self: TcpConnection) -> float:
    base = self.srtt + 4 * self.rttvar if self.srtt else self.config.rto_initial
    return min(max(base * (1 << self.persist_shift), 0.2), self.config.rto_max)


def _persist_timeout(self: TcpConnection, now: float) -> None:
    """Zero-window probe: a segment one below SND.UNA makes the peer re-announce its window
    (how Linux probes; it never puts data beyond a closed window).  With a small open window
    the held sliver is sent instead.  Unanswered probes give up after ``data_retries``."""
    if self.state not in SENDS_DATA and self.state not in (FIN_WAIT_1, CLOSING, LAST_ACK):
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


def _user_timeout_expired(self: TcpConnection, now: float) -> bool:
    timeout = self.config.user_timeout
    waiting = self.snd_max > self.snd_una or self.sndbuf.end > self.snd_una
    return bool(timeout) and waiting and now - self.last_activity >= timeout


def set_keepalive(self: TcpConnection, enabled: bool, now: float) -> None:
    self.keepalive = enabled
    self._arm_keepalive(now)


def _arm_keepalive(self: TcpConnection, now: float) -> None:
    if self.keepalive and self.state in SYNCHRONIZED:
        self.t_keep = now + self.keep_idle
        self._arm()
    else:
        self.t_keep = 0.0


def _keepalive_timeout(self: TcpConnection, now: float) -> None:
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


def _arm_2msl(self: TcpConnection, now: float) -> None:
    self.t_2msl = now + 2 * self.config.msl
    self._arm()
