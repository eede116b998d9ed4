"""Loss detection by time (RACK-TLP, RFC 8985) over a log of what was sent (Linux's ``tcp_rack.c``).

:class:`SentLog` is Linux's retransmission queue without the bytes (the send buffer holds them):
one entry per segment (or TSO segment) sent, ``[start, end)`` with the time it was last
transmitted and three flags, split at the edges of SACK blocks and of retransmissions so that a
flag always holds for a whole entry:

- ``SACKED``: the receiver holds it (RFC 2018);
- ``LOST``: marked lost, by RACK (``RACKED`` too) or by RFC 6675's ``IsLost`` rule by bytes;
- ``RETRANS``: a copy sent again is in flight.

From it, per RFC 8985 section 6: ``RACK.xmit_ts``/``RACK.end_seq``/``RACK.rtt`` of the most
recently *sent* segment that was delivered, and every segment sent before it that is not delivered
``RACK.rtt + RACK.reo_wnd`` after its own transmission is lost -- including a retransmission,
which RFC 6675's ``HighRxt`` could never see lost again.  The pipe (RFC 6675 SetPipe, as
Linux's ``packets_out - sacked_out - lost_out + retrans_out``) and the next segment to retransmit
(NextSeg) come from the same flags.

The connection's functions for loss detection, recovery with PRR (RFC 6937) and the tail loss
probe (RFC 8985 section 7) follow the class; they are methods of
:class:`~trio_yastack.stack.tcp._conn.TcpConnection`, bound in its class body.  PRR paces the
recovery of a peer without SACK too (the ``reno_*`` functions, called from ``_input.py``), with
the delivered data estimated from duplicate ACKs, as Linux does.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._conn import TcpConnection

__all__ = ["LOST", "RACKED", "RETRANS", "SACKED", "SentLog"]

SACKED = 1
LOST = 2
RETRANS = 4
RACKED = 8  # marked lost by RACK (for the counters), not by the duplicate-threshold rule

#: seconds a minimum RTT sample is kept (Linux's net.ipv4.tcp_min_rtt_wlen default)
MIN_RTT_WINDOW = 10.0

#: RFC 8985 6.2 step 4: recoveries a grown reordering window outlives without a D-SACK
REO_WND_PERSIST = 16

#: RFC 8985 7.2's WCDelAckT: the longest a receiver may delay the ACK of a lone segment (its
#: default, 200 ms: Linux adds its tcp_rto_min, 200 ms, and FreeBSD delays 100 ms, Linux 40 ms)
WC_DEL_ACK_T = 0.2
#: the PTO's allowance with more than one segment in flight (Linux's TCP_TIMEOUT_MIN: 2 jiffies),
#: also the shortest PTO: Linux's tcp_schedule_loss_probe has no other floor since its 10 ms one
#: went (on a TAP's 0.2 ms path that floor was 50 round trips of stall per tail loss, issue 19)
PTO_SLACK = 0.002

#: the retransmission timer's uses, as Linux's icsk_pending (one timer, one deadline): the RTO,
#: the probe timeout, RACK's reordering timer, and the probe timeout of a lone segment (with
#: the peer's delayed ACK in it), which more data sent behind that segment makes too long
REXMT_RTO, REXMT_TLP, REXMT_REO, REXMT_TLP_LONE = 0, 1, 2, 3


class SentLog:
    """What was sent and not yet cumulatively acknowledged, entry by entry, with RACK's state.

    Bounded: entries lie in ``[snd_una, snd_max)``, which the send buffer bounds, and beyond
    ``MAX_ENTRIES`` new data extends the newest entry instead of starting one (coarser timing
    for the tail, never a wrong flag).
    """

    __slots__ = (
        "_ends",
        "_flags",
        "_starts",
        "_times",
        "dsack_round",
        "end_seq",
        "min_rtt",
        "min_rtt_expiry",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "reordering_seen",
        "rtt",
        "tlp_end",
        "tlp_retrans",
        "tlp_seq",
        "xmit_ts",
    )

    MAX_ENTRIES = 8192

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._times: list[float] = []
        self._flags: list[int] = []
        self.xmit_ts = -1.0  # RACK.xmit_ts: when the most recently sent delivered segment was sent
        self.end_seq = 0  # RACK.end_seq
        self.rtt = 0.0  # RACK.rtt: that segment's round trip
        self.min_rtt = 0.0  # the smallest RTT of the last MIN_RTT_WINDOW seconds (0.0: none yet)
        self.min_rtt_expiry = 0.0  # when that sample leaves the window
        self.reordering_seen = False  # RACK.reord
        # RFC 8985 6.2 step 4: the reordering window grows by a quarter of min RTT per round
        # trip with a D-SACK, and falls back after 16 recoveries without one.
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = REO_WND_PERSIST
        self.dsack_round = -1  # RACK.dsack_round: SND.NXT when the multiplier last grew (-1: none)
        self.tlp_end = -1  # TLP.end_seq: one probe at a time (-1: none outstanding)
        self.tlp_retrans = False  # TLP.is_retrans: the probe sent old data again (RFC 8985 7.4)
        self.tlp_seq = 0  # where that retransmitted probe began (to tell its D-SACK)

    def __len__(self) -> int:
        return len(self._starts)

    def entries(self) -> list[tuple[int, int, float, int]]:
        """``(start, end, xmit time, flags)`` of every entry, for tests and the journey."""
        return list(zip(self._starts, self._ends, self._times, self._flags, strict=True))

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self._times.clear()
        self._flags.clear()
        self.tlp_end = -1
        self.tlp_retrans = False

    # -- sending -----------------------------------------------------------------------------
    def sent(self, start: int, end: int, now: float) -> None:
        """``[start, end)`` left now: new data appends an entry, old data is a retransmission."""
        ends = self._ends
        if not ends or start >= ends[-1]:
            if len(ends) >= self.MAX_ENTRIES and not self._flags[-1]:
                ends[-1] = end
                self._times[-1] = now
                return
            self._starts.append(start)
            ends.append(end)
            self._times.append(now)
            self._flags.append(0)
            return
        top = ends[-1]
        self._retransmitted(start, end if end < top else top, now)
        if end > top:
            self.sent(top, end, now)

    def _split(self, seq: int) -> int:
        """Make ``seq`` the start of an entry (when it falls inside one); its index, or the
        index where such an entry would be."""
        starts = self._starts
        index = bisect_right(starts, seq) - 1
        if index < 0:
            return 0
        if starts[index] == seq:
            return index
        if seq >= self._ends[index]:
            return index + 1
        ends = self._ends
        starts.insert(index + 1, seq)
        ends.insert(index + 1, ends[index])
        ends[index] = seq
        self._times.insert(index + 1, self._times[index])
        self._flags.insert(index + 1, self._flags[index])
        return index + 1

    def _retransmitted(self, start: int, end: int, now: float) -> None:
        first = self._split(start)
        last = self._split(end)
        times, flags = self._times, self._flags
        for index in range(first, last):
            times[index] = now
            flags[index] = (flags[index] & ~RACKED) | RETRANS

    # -- delivery (RFC 8985 6.2 steps 1-3) -------------------------------------------------------
    def _delivered(self, index: int, now: float, tsecr_time: float) -> None:
        """RACK's update for the entry at ``index``, just cumulatively ACKed or SACKed."""
        sent_at = self._times[index]
        end = self._ends[index]
        rtt = now - sent_at
        if self._flags[index] & RETRANS:
            # Step 2: the ACK may be for the original; believe the retransmission only when the
            # echoed timestamp is not older than it, or the RTT is not shorter than any seen.
            if (tsecr_time >= 0.0 and tsecr_time < sent_at - 0.001) or rtt < self.min_rtt:
                return
        elif end < self.end_seq and sent_at <= self.xmit_ts:
            self.reordering_seen = True  # never retransmitted, delivered after a later one (6.2 step 3)
        if rtt >= 0.0 and (rtt <= self.min_rtt or self.min_rtt == 0.0 or now > self.min_rtt_expiry):
            # A windowed minimum (Linux keeps min RTT over 10 s, tcp_min_rtt_wlen): a path whose
            # RTT rose -- a route change, a standing queue -- gets a reordering window from what
            # it is now, not from the best it ever was.  Simpler than Linux's minmax: when the
            # minimum ages out, the next sample starts the window again, and lower ones follow.
            self.min_rtt = rtt
            self.min_rtt_expiry = now + MIN_RTT_WINDOW
        if sent_at > self.xmit_ts or (sent_at == self.xmit_ts and end > self.end_seq):
            self.xmit_ts = sent_at
            self.end_seq = end
            self.rtt = rtt

    def acked(self, ack: int, now: float, tsecr_time: float) -> bool:
        """The cumulative ACK reached ``ack``: RACK's update for every entry it completes, and
        those entries forgotten (the common case of every ACK: one or two entries).

        True when it ends a probe episode with a real loss (RFC 8985 7.4.2, Linux's
        tcp_process_tlp_ack): the probe resent old data and an ACK beyond it came with no
        D-SACK (:meth:`tlp_dsack`) nor a duplicate ACK saying both copies arrived -- so the
        probe repaired a loss, which calls for a congestion response.  An ACK that reaches
        the probe's end exactly is not enough: the D-SACK for the probe may still follow."""
        ends = self._ends
        gone = 0
        count = len(ends)
        flags = self._flags
        while gone < count and ends[gone] <= ack:
            if not flags[gone] & SACKED:
                self._delivered(gone, now, tsecr_time)
            gone += 1
        if gone:
            del self._starts[:gone], ends[:gone], self._times[:gone], flags[:gone]
        if ends and self._starts[0] < ack:
            self._starts[0] = ack
        tlp_end = self.tlp_end
        if 0 <= tlp_end <= ack:
            if not self.tlp_retrans:
                self.tlp_end = -1  # a probe that was no retransmission (in recovery) was delivered
            elif ack > tlp_end:
                self.tlp_end = -1
                self.tlp_retrans = False
                return True
        return False

    def acked_all(self, now: float, tsecr_time: float) -> None:
        """:meth:`acked` for the ACK of everything sent (SND.MAX) with no probe outstanding
        (``tlp_end < 0``: the caller, ``_input._ack_all``, checked): RACK's update for every
        entry not SACKed, in order, and the log emptied -- the same state ``acked`` leaves then
        (it would return False), without its scan's bounds, slices and probe tests."""
        flags = self._flags
        if len(flags) == 1:  # a response's one segment: no loop
            if not flags[0] & SACKED:
                self._delivered(0, now, tsecr_time)
        else:
            for index, flag in enumerate(flags):
                if not flag & SACKED:
                    self._delivered(index, now, tsecr_time)
        self._starts.clear()
        self._ends.clear()
        self._times.clear()
        flags.clear()

    def dsack(self, blocks: list[tuple[int, int]], snd_una: int, snd_nxt: int) -> bool:
        """An ACK's SACK ``blocks``: is the first a D-SACK (RFC 2883: below the cumulative ACK, or
        inside the second block), a report that something arrived twice?  ``snd_una`` is that
        ACK's cumulative ACK where it advances SND.UNA (the caller's).  If so:

        - RFC 8985 6.2 step 4: a retransmission was spurious, the path may reorder more than
          the window allowed: the multiplier grows, once per round trip (``dsack_round``),
          within the SRTT cap of :func:`_reo_wnd`;
        - RFC 8985 7.4.2: if it covers what a retransmitted probe sent, the original arrived
          too -- no loss, the probe episode ends."""
        left, right = blocks[0]
        if not (right <= snd_una or (len(blocks) > 1 and blocks[1][0] <= left and right <= blocks[1][1])):
            return False
        if self.dsack_round < 0 or snd_una >= self.dsack_round:
            self.dsack_round = snd_nxt
            if self.reo_wnd_mult < 256:
                self.reo_wnd_mult += 1
            self.reo_wnd_persist = REO_WND_PERSIST
        if self.tlp_retrans and left < self.tlp_end and right > self.tlp_seq:
            self.tlp_end = -1
            self.tlp_retrans = False
        return True

    def recovery_ended(self) -> None:
        """RFC 8985 6.2 step 4: after ``REO_WND_PERSIST`` recoveries without a D-SACK the
        reordering window falls back to a quarter of min RTT."""
        self.reo_wnd_persist -= 1
        if self.reo_wnd_persist <= 0:
            self.reo_wnd_mult = 1
            self.reo_wnd_persist = REO_WND_PERSIST

    def sacked(self, blocks: list[tuple[int, int]], now: float) -> int:
        """Mark the entries the SACK ``blocks`` cover; returns the bytes newly SACKed.

        No echoed timestamp is asked of a SACKed retransmission (RFC 8985 6.2 step 2 is left to
        its RTT test, as Linux's tcp_rack_advance does): an ACK for data out of order echoes
        TS.Recent, the timestamp of the last segment that arrived in order (RFC 7323 4.3),
        which is older than any retransmission it SACKs.  Asking it made a SACKed tail loss
        probe or retransmission invisible to RACK, so what was sent before it and lost stayed
        unmarked until the RTO (issue 19, the soak's bad path)."""
        if not self._starts:
            return 0
        low, high = self._starts[0], self._ends[-1]
        new = 0
        flags = self._flags
        for left, right in blocks:
            left = left if left > low else low
            right = right if right < high else high
            if left >= right:
                continue
            first = self._split(left)
            last = self._split(right)
            for index in range(first, last):
                if not flags[index] & SACKED:
                    self._delivered(index, now, -1.0)
                    flags[index] = SACKED
                    new += self._ends[index] - self._starts[index]
        return new

    def timeout_mark_lost(self) -> None:
        """An RTO (Linux's tcp_timeout_mark_lost): every segment not SACKed is lost, and none is
        retransmitted; what the receiver SACKed stays SACKed, so that going back N does not send
        it again (:meth:`unsacked_from`) -- unless the first segment is SACKed, the sign of a
        receiver that reneged (RFC 2018 section 8), when no SACK is trusted."""
        flags = self._flags
        reneged = bool(flags) and bool(flags[0] & SACKED)
        for index in range(len(flags)):
            if reneged or not flags[index] & SACKED:
                flags[index] = LOST
        self.tlp_end = -1
        self.tlp_retrans = False

    def unsacked_from(self, seq: int) -> tuple[int, int]:
        """Going back N from ``seq``: ``(where the next bytes not SACKed begin, where the SACKed
        entry after them begins)``, the second -1 when none follows."""
        starts, ends, flags = self._starts, self._ends, self._flags
        index = bisect_right(starts, seq) - 1
        if index < 0:
            index = 0
        count = len(flags)
        while index < count and (ends[index] <= seq or flags[index] & SACKED):
            if flags[index] & SACKED and ends[index] > seq:
                seq = ends[index]
            index += 1
        while index < count:
            if flags[index] & SACKED:
                return seq, starts[index]
            index += 1
        return seq, -1

    def undo_lost(self) -> None:
        """F-RTO found the timeout spurious: what it marked lost was not (RFC 5682 3, undo)."""
        flags = self._flags
        for index in range(len(flags)):
            flags[index] &= ~(LOST | RACKED)

    # -- loss detection ------------------------------------------------------------------------
    def detect_lost(self, now: float, reo_wnd: float) -> tuple[float, int, int]:
        """RFC 8985 6.2 step 5: mark lost every segment sent before RACK.xmit_ts (ties broken by
        end_seq) that is ``RACK.rtt + reo_wnd`` old.  Returns ``(timeout, lost_bytes,
        lost_retransmissions)``: the wait until the next one may be lost (0.0: none waits)."""
        xmit_ts = self.xmit_ts
        if xmit_ts < 0.0:
            return 0.0, 0, 0
        end_seq = self.end_seq
        wait = self.rtt + reo_wnd
        timeout = 0.0
        lost = lost_rexmit = 0
        starts, ends, times, flags = self._starts, self._ends, self._times, self._flags
        for index in range(len(flags)):
            flag = flags[index]
            if flag & SACKED or flag & (LOST | RETRANS) == LOST:
                continue
            sent_at = times[index]
            if sent_at > xmit_ts or (sent_at == xmit_ts and ends[index] >= end_seq):
                continue
            remaining = sent_at + wait - now
            if remaining <= 0.0:
                if flag & RETRANS:
                    lost_rexmit += 1
                flags[index] = LOST | RACKED
                lost += ends[index] - starts[index]
            elif remaining > timeout:
                timeout = remaining
        return timeout, lost, lost_rexmit

    def mark_lost_by_sack(self, sacked_above: list[int], mss: int, dupthresh: int = 3) -> int:
        """RFC 6675 IsLost by bytes, TSO-aware: an entry is lost when more than
        ``(dupthresh - 1) * mss`` bytes above it are SACKed (however few ACKs or ranges carried
        them).  ``sacked_above`` is filled by :meth:`sacked_after`.  Returns the bytes marked."""
        threshold = (dupthresh - 1) * mss
        marked = 0
        flags = self._flags
        for index in range(len(flags)):
            if sacked_above[index] <= threshold:
                break  # it only gets smaller going up
            if not flags[index] & (SACKED | LOST | RETRANS):
                flags[index] = LOST
                marked += self._ends[index] - self._starts[index]
        return marked

    def sacked_after(self) -> list[int]:
        """For each entry, the SACKed bytes above it (one pass from the top)."""
        out = [0] * len(self._flags)
        total = 0
        starts, ends, flags = self._starts, self._ends, self._flags
        for index in range(len(flags) - 1, -1, -1):
            out[index] = total
            if flags[index] & SACKED:
                total += ends[index] - starts[index]
        return out

    def pipe(self) -> int:
        """RFC 6675 SetPipe from the flags: bytes not SACKED and not LOST count once, a
        retransmitted copy in flight once more (Linux's ``tcp_packets_in_flight``, in bytes)."""
        total = 0
        starts, ends, flags = self._starts, self._ends, self._flags
        for index in range(len(flags)):
            flag = flags[index]
            if flag & SACKED:
                continue
            size = ends[index] - starts[index]
            if not flag & LOST:
                total += size
            if flag & RETRANS:
                total += size
        return total

    def has_lost(self) -> bool:
        """Some entry is marked lost and waits for its retransmission."""
        return self.next_lost(0) >= 0

    def next_lost(self, index: int) -> int:
        """RFC 6675 NextSeg rule 1 from the flags: the index of the first entry at or after
        ``index`` marked lost and not yet retransmitted; -1 when there is none."""
        flags = self._flags
        for i in range(index, len(flags)):
            if flags[i] & (LOST | RETRANS | SACKED) == LOST:
                return i
        return -1

    def newest_in_flight(self) -> int:
        """The index of the entry sent most recently among those still in flight (neither
        SACKed nor marked lost and waiting); -1 when there is none.  What a probe in recovery
        sends again (RFC 8985 7.3's "most recently sent segment")."""
        best = -1
        newest = -1.0
        times, flags = self._times, self._flags
        for index in range(len(flags)):
            flag = flags[index]
            if flag & SACKED or flag & (LOST | RETRANS) == LOST:
                continue
            if times[index] >= newest:
                newest = times[index]
                best = index
        return best

    def span(self, index: int) -> tuple[int, int, int]:
        """``(start, end, flags)`` of the entry at ``index``."""
        return self._starts[index], self._ends[index], self._flags[index]


# -- the connection's side (methods of TcpConnection) ----------------------------------------------
def _reo_wnd(self: TcpConnection) -> float:
    """RFC 8985 6.2 step 4: no reordering window in recovery, or once DupThresh segments were
    SACKed, while no reordering was seen; otherwise a quarter of the minimum RTT times the
    D-SACK multiplier (:meth:`SentLog.dsack`), at most SRTT."""
    rack = self.rack
    assert rack is not None  # only called on connections that have one
    if not rack.reordering_seen and (self.in_recovery or self.scoreboard.sacked_bytes >= 3 * self.mss):
        return 0.0
    wnd = rack.min_rtt / 4 * rack.reo_wnd_mult
    return wnd if wnd < self.srtt or not self.srtt else self.srtt


def _detect_loss(self: TcpConnection, delivered: int, now: float) -> None:
    """After an ACK with SACK information, or in recovery, or when the reordering timer fires:
    mark losses by time (RACK) and by SACKed bytes (RFC 6675), start recovery when there are
    some, and set how much PRR lets out.  The caller sends (``tcp_output``) afterwards."""
    rack = self.rack
    assert rack is not None
    timeout, _lost, lost_rexmit = rack.detect_lost(now, self._reo_wnd())
    if lost_rexmit:
        self.stats.lost_retransmits += lost_rexmit
    if self.scoreboard.sacked_bytes > 2 * self.mss:
        rack.mark_lost_by_sack(rack.sacked_after(), self.mss)
    if not self.in_recovery and rack.has_lost():
        if self.snd_una >= self.recover:
            self._enter_recovery(now)
        elif not self.frto:  # F-RTO (RFC 5682 2.2-2.3) decides first whether the timeout was real
            _resend_lost_after_timeout(self, now)
    if self.in_recovery:
        self._prr_update(delivered)
    if timeout and self.snd_max > self.snd_una:
        # RFC 8985 6.3: the reordering timer, in place of the RTO until it fires.
        deadline = now + timeout
        if deadline < self.t_rexmt or not self.t_rexmt or self.rexmt_mode in (REXMT_TLP, REXMT_TLP_LONE):
            self.t_rexmt = deadline
            self.rexmt_mode = REXMT_REO
            self._arm()


def _resend_lost_after_timeout(self: TcpConnection, now: float) -> None:
    """After an RTO, while the connection goes back N from SND.UNA in slow start (SND.UNA
    below ``recover``, no recovery: RFC 6582's rule, one response per window): what RACK marks
    lost below SND.NXT -- a retransmission lost in its turn -- is where going back N never
    returns, and it waited for the next, backed-off RTO (issue 19: 400 ms, then 800 ms, on
    the soak's bad path).  Send it again now, within ``cwnd - pipe``, as Linux's loss state
    retransmits every segment marked lost; what lies above SND.NXT is going back N's."""
    rack = self.rack
    assert rack is not None  # called from _detect_loss only
    mss = self.mss
    snd_nxt = self.snd_nxt
    room = self.cc.cwnd - rack.pipe()
    index = rack.next_lost(0)
    while index >= 0 and room >= mss:
        start, end, flags = rack.span(index)
        if start >= snd_nxt:
            break
        length = (end if end < snd_nxt else snd_nxt) - start
        self._retransmit(start, now, length)
        if flags & RACKED:
            self.stats.rack_retransmits += 1
        room -= length
        index = rack.next_lost(index + 1)


def _enter_recovery(self: TcpConnection, now: float) -> None:
    """Fast recovery begins (RFC 6675 5, RFC 6937 for its sending): one congestion response."""
    self.in_recovery = True
    self.recover = self.snd_max
    self.high_rxt = self.snd_una
    in_flight = self.snd_max - self.snd_una
    # The window the loss reduces is cwnd, as Linux's tcp_init_cwnd_reduction (ssthresh from
    # snd_cwnd): FlightSize (RFC 5681) is no measure here, since a burst of ACKs is taken in
    # before anything is sent, so at the first SACK the flight is only the tail behind the hole.
    # cwnd cannot be stale: it grows only while at least half of it is in use (_cc.py).
    cwnd = self.cc.cwnd
    self.cc.on_congestion_event(now, cwnd if cwnd > in_flight else in_flight)
    stats = self.stats
    stats.fast_retransmits += 1
    stats.sack_recovery_episodes += 1
    stats.recovery_episodes += 1
    self.prr_delivered = 0
    self.prr_out = 0
    self.recover_fs = in_flight if in_flight > 0 else 1
    rack = self.rack
    if rack is not None:
        rack.tlp_end = -1  # this recovery is the congestion response: none for the probe too
        rack.tlp_retrans = False


def _prr_update(self: TcpConnection, delivered: int) -> None:
    """RFC 6937 section 3 with the SSRB bound: cwnd becomes pipe + sndcnt, so what
    ``tcp_output`` sends in recovery follows what the receiver reports delivered.  The pipe is
    the sent log's with SACK (RACK), :func:`reno_pipe` without."""
    rack = self.rack
    self.prr_delivered += delivered
    pipe = rack.pipe() if rack is not None else reno_pipe(self)
    cc = self.cc
    ssthresh = cc.ssthresh
    if pipe > ssthresh:
        sndcnt = (self.prr_delivered * ssthresh + self.recover_fs - 1) // self.recover_fs - self.prr_out
    else:
        limit = max(self.prr_delivered - self.prr_out, delivered) + self.mss
        sndcnt = min(ssthresh - pipe, limit)
    if sndcnt < self.mss and not self.prr_out:
        sndcnt = self.mss  # the fast retransmit itself always goes (as Linux's tcp_cwnd_reduction)
    cc.cwnd = pipe + (sndcnt if sndcnt > 0 else 0)


# -- PRR without SACK (Linux paces every fast recovery with PRR: tcp_cwnd_reduction) -------------
#
# Without SACK nothing says which segments the receiver holds, only how many: each duplicate ACK
# is one more segment that left the network (RFC 6937 section 3: DeliveredData "estimated from
# the duplicate ACKs").  ``dupacks`` is that count during recovery, as Linux's ``sacked_out`` for
# a Reno connection (tcp_add_reno_sack); a partial ACK takes back the ones it covers, all but the
# hole it filled (tcp_remove_reno_sacks), and it never exceeds the segments in flight less the one
# hole (tcp_limit_reno_sacked).  What is retransmitted stays RFC 6582's: the first unacknowledged
# segment, at the third duplicate ACK and on each partial ACK; cwnd is never inflated.


def reno_pipe(self: TcpConnection) -> int:
    """RFC 6937's pipe without SACK: the flight less one MSS per duplicate ACK counted (the lost
    head, once retransmitted, is in flight again, as Linux's ``lost_out`` and ``retrans_out``)."""
    pipe = self.snd_max - self.snd_una - self.dupacks * self.mss
    return pipe if pipe > 0 else 0


def _reno_limit_dupacks(self: TcpConnection) -> bool:
    """Keep the duplicate ACKs counted to the segments in flight less one, the hole (Linux's
    tcp_limit_reno_sacked: more come when the peer duplicates ACKs, or the network does).  True
    when the count had to be cut."""
    most = (self.snd_max - self.snd_una - 1) // self.mss
    if self.dupacks > most:
        self.dupacks = most if most > 0 else 0
        return True
    return False


def reno_enter_recovery(self: TcpConnection, in_flight: int, now: float) -> None:
    """The third duplicate ACK without SACK, after ``on_congestion_event`` (cwnd = ssthresh):
    PRR's counters start, the head goes again (RFC 6582 3.2 step 2: the fast retransmit, which
    PRR always lets out), and this ACK's segment counts as delivered."""
    self.prr_delivered = 0
    self.prr_out = 0
    self.recover_fs = in_flight if in_flight > 0 else 1
    _reno_limit_dupacks(self)
    self._retransmit(self.snd_una, now)
    self.prr_out += min(self.mss, in_flight)
    self._prr_update(self.mss)


def reno_duplicate_ack(self: TcpConnection) -> None:
    """A duplicate ACK in recovery without SACK (already counted in ``dupacks``): one more
    segment delivered, unless the count is at its bound (then nothing is known to have left)."""
    if not _reno_limit_dupacks(self):
        self._prr_update(self.mss)


def reno_partial_ack(self: TcpConnection, acked: int, now: float) -> None:
    """A partial ACK in recovery without SACK (SND.UNA already moved by ``acked`` bytes): of
    the segments it covers, all but the hole were counted by duplicate ACKs and are taken back
    from ``dupacks``; what is left is this ACK's DeliveredData (Linux's tcp_remove_reno_sacks).
    RFC 6582 3.2 step 3: the next unacknowledged segment, presumed lost, goes at once."""
    mss = self.mss
    counted = (acked + mss - 1) // mss - 1
    if counted > self.dupacks:
        counted = self.dupacks
    self.dupacks -= counted
    _reno_limit_dupacks(self)
    self._retransmit(self.snd_una, now)
    flight = self.snd_max - self.snd_una
    self.prr_out += mss if mss < flight else flight
    self._prr_update(acked - counted * mss)


def _arm_rexmt(self: TcpConnection, now: float) -> None:
    """Restart the retransmission timer for what is in flight: on a RACK connection the probe
    timeout (RFC 8985 7.2) while no probe is outstanding, the RTO otherwise.

    The PTO as Linux's ``tcp_schedule_loss_probe`` computes it: 2 SRTT, plus the worst-case
    delayed ACK (``WC_DEL_ACK_T``) when one segment is in flight -- a request/response peer
    answers a lone segment only when its delayed-ACK timer fires, and a probe before that is
    spurious (it cost one probe for every two request/response connections, whose duplicate
    answers then met closed connections) -- or 2 ms (``PTO_SLACK``) when more are; and never
    later than the RTO would fire.  So a probe always goes before the RTO, in its place when the
    RTO is the earlier: a lone segment, a FIN alone, a flight whose ACKs a 40 +- 20 ms path
    delays (issue 19: there a PTO that came out above the RTO left the RTO armed, with its
    200 ms minimum, its backoff and cwnd cut to one segment, for what a probe repairs).

    A lone segment's PTO is marked (``REXMT_TLP_LONE``) so that sending more behind it arms
    the PTO again, as Linux schedules the probe after every transmission (RFC 8985 7.2): a bulk
    sender whose peer acknowledged all but the last segment of a flight armed 200 ms for it,
    sent a window more, and waited those 200 ms when that window's tail was lost (traced over
    the TAP at 1 %, issue 19: it happened on 10-14 % of the ACKs of five runs).

    In recovery too, unlike RFC 8985 7.2: there a retransmission that is lost with nothing
    sent after it (PRR let out only it, the rest of a lost TSO frame waits) leaves RACK nothing
    delivered later to tell by, and only the RTO -- 200 ms at least, cwnd to one segment --
    would repair it.  The probe (:func:`_recovery_probe`) asks in two SRTT instead."""
    rack = self.rack
    if rack is not None and self.srtt and rack.tlp_end < 0:
        if self.snd_max - self.snd_una <= self.mss:
            pto = 2 * self.srtt + WC_DEL_ACK_T
            mode = REXMT_TLP_LONE
        else:
            pto = 2 * self.srtt + PTO_SLACK
            mode = REXMT_TLP
        rto = self.rto
        self.t_rexmt = now + (pto if pto < rto else rto)
        self.rexmt_mode = mode
        self._arm()
        return
    self.t_rexmt = now + self.rto
    self.rexmt_mode = REXMT_RTO
    self._arm()


def _tlp_timeout(self: TcpConnection, now: float) -> None:
    """RFC 8985 7.3: the probe timeout fired with nothing heard.  Send the last segment again,
    so that an ACK with SACK comes back at once and RACK finds the tail's losses without
    waiting for the RTO; then the RTO is armed.

    Not new data, which RFC 8985 7.3 and Linux's tcp_send_loss_probe prefer when the windows
    allow: when it is the flight's ACKs that were lost, not the flight, a receiver holds the
    ACK of one new in-order segment for its delayed-ACK time (Linux: 40 ms; traced over the
    TAP at 1 %, issue 19: the probe's answer 42 ms later, on a 0.2 ms path), but answers a
    duplicate at once (RFC 5681 4.2; Linux's tcp_send_dupack, with a D-SACK).  When the
    flight's tail was lost, the last segment is as out of order as new data would be, and is
    SACKed as fast.  The cost: no new byte rides on the probe, and a probe that repaired a
    real loss is answered with a congestion response (7.4, :func:`_tlp_loss`) -- as the
    recovery that new data's SACK would have started."""
    rack = self.rack
    if rack is None or self.snd_max <= self.snd_una:
        self._arm_rexmt_rto(now)
        return
    if self.in_recovery:
        self._recovery_probe(now)
        return
    stats = self.stats
    stats.tlp_probes += 1
    end = self.snd_max - (1 if 0 <= self.fin_seq < self.snd_max else 0)  # the FIN follows the data
    start = end - self.mss
    start = start if start > self.snd_una else self.snd_una
    stats.tlp_retransmits += 1
    self._retransmit(start, now)
    rack.tlp_retrans = True  # RFC 8985 7.4.1: TLP.is_retrans, for the loss it may reveal
    rack.tlp_seq = start
    rack.tlp_end = self.snd_max
    self._arm_rexmt_rto(now)


def _recovery_probe(self: TcpConnection, now: float) -> None:
    """The probe timeout fired in recovery: two SRTT without an ACK that advanced.  Send the
    last segment of what was sent most recently (a retransmission, as a rule) again, outside
    PRR's budget as a tail loss probe is; its ACK or SACK makes RACK mark what was sent before
    it and is still missing lost (RFC 8985 6.2: a retransmission too), or shows it arrived.
    One probe, then the RTO, until the cumulative ACK passes the probe."""
    rack = self.rack
    assert rack is not None  # only armed on connections that have one
    index = rack.newest_in_flight()
    if index < 0:
        self._arm_rexmt_rto(now)
        return
    start, end, _flags = rack.span(index)
    if 0 <= self.fin_seq < end:
        end = self.fin_seq  # the FIN follows the data
    start = end - self.mss if end - self.mss > start else start
    if start < self.snd_una:
        start = self.snd_una
    self.stats.recovery_probes += 1
    self._retransmit(start, now, end - start if end > start else None)
    rack.tlp_end = end if end > self.snd_una else self.snd_una + 1
    rack.tlp_retrans = False  # in recovery already: no second congestion response
    self._arm_rexmt_rto(now)


def _tlp_loss(self: TcpConnection, now: float) -> None:
    """RFC 8985 7.4.2: a probe that resent old data repaired a real loss (the ACK went beyond
    it and no D-SACK came): the congestion response a fast recovery would have had, entered and
    left at once (Linux's tcp_init_cwnd_reduction, CWR, tcp_end_cwnd_reduction)."""
    cc = self.cc
    in_flight = self.snd_max - self.snd_una
    cwnd = cc.cwnd
    cc.on_congestion_event(now, cwnd if cwnd > in_flight else in_flight)
    cc.on_recovery_exit(now)
    self.stats.tlp_loss_recoveries += 1


def _arm_rexmt_rto(self: TcpConnection, now: float) -> None:
    """Arm the plain RTO (after a probe, or when the reordering timer has nothing left)."""
    if self.snd_max > self.snd_una:
        self.t_rexmt = now + self.rto
        self.rexmt_mode = REXMT_RTO
        self._arm()
    else:
        self.t_rexmt = 0.0


def _reo_timeout(self: TcpConnection, now: float) -> None:
    """RFC 8985 6.3: the reordering window of a segment ran out: detect again, and send."""
    self.t_rexmt = 0.0
    self.rexmt_mode = REXMT_RTO
    self._detect_loss(0, now)
    self.tcp_output(now)
    if not self.t_rexmt and self.snd_max > self.snd_una:
        self._arm_rexmt(now)  # the probe's timeout if none is out (in recovery too), else the RTO
