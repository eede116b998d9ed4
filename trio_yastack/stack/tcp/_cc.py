"""TCP congestion control, pluggable: NewReno (RFC 5681, RFC 6582, RFC 3465) and CUBIC (RFC 9438).

Sans-IO like the rest of the stack: the connection reports what happened, with ``now`` in seconds,
and reads ``cwnd`` and ``ssthresh`` back.  Every window quantity is in BYTES (RFC 5681 counts
bytes); CUBIC's equations are written in segments in RFC 9438 and are scaled by the MSS here.

Who does what.  The connection owns loss detection and recovery: it decides when fast retransmit
starts (three duplicate ACKs, or SACK per RFC 6675), sets ``cwnd`` during recovery itself (PRR,
RFC 6937, with or without SACK: pipe + what PRR lets out), and ends recovery.  This module owns how much the
window shrinks on a loss and how it grows afterwards.  The calls, all cheap and allocation-free:

- ``on_ack(acked, now, rtt, in_flight)``: an ACK acknowledged ``acked`` > 0 new DATA bytes (not
  the SYN or FIN) outside fast recovery.  ``in_flight`` is snd_max - snd_una before this ACK (RFC
  5681 FlightSize); ``rtt`` the latest RTT sample or srtt in seconds, or None (the last is kept).
- ``on_congestion_event(now, in_flight)``: once per recovery episode, when fast retransmit
  starts, BEFORE the connection sets ``cwnd`` for the recovery (PRR).
- ``on_recovery_exit(now)``: the full ACK that ends that recovery.  Not after an RTO, which
  itself ends fast recovery (RFC 6582 section 3.2, step 4).
- ``on_rto(now, in_flight)``: every retransmission timeout; repeated ones for the same segment
  (no new data ACKed in between) are recognised and keep ``ssthresh``.
- ``on_idle_restart(now, rto, idle)``: when new data is sent while nothing was in flight, with
  ``idle`` the time since the last send.  The module applies the RFC 5681 section 4.1 restart
  window only when ``idle > rto``; call it for shorter idles too, CUBIC takes them out of its t.
- ``set_mss(mss)``: the MSS was negotiated, or the path MTU changed.

Invariants the connection may rely on: ``cwnd`` is an int >= 1 MSS, and ``ssthresh`` is an int
>= 2 MSS (it starts "infinite", :data:`INFINITE_SSTHRESH`).  The connection may write ``cwnd``
while in recovery (PRR); it must keep it >= 1 MSS.
"""

from __future__ import annotations

import math

__all__ = [
    "CONGESTION_CONTROLS",
    "CUBIC_ALPHA",
    "CUBIC_BETA",
    "CUBIC_C",
    "INFINITE_SSTHRESH",
    "CongestionControl",
    "Cubic",
    "NewReno",
    "initial_window",
    "make_congestion_control",
]

#: The initial ssthresh, "arbitrarily high" (RFC 5681 section 3.1): larger than any window the
#: 30-bit window scale can offer, so slow start runs until the first loss.
INFINITE_SSTHRESH = 2**31 - 1

#: RFC 9438 section 5: the CUBIC constant C, in segments per second cubed.
CUBIC_C = 0.4
#: RFC 9438 section 4.6: multiplicative decrease factor (ssthresh = 0.7 * FlightSize); applied in
#: integer arithmetic as ``* 7 // 10`` so that 100 segments give exactly 70.
CUBIC_BETA = 0.7
#: RFC 9438 section 4.3: the additive increase of the Reno-friendly estimate, 3(1-beta)/(1+beta),
#: which makes CUBIC's average window equal Reno's at the same loss rate.
CUBIC_ALPHA = 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)


def initial_window(mss: int) -> int:
    """RFC 6928 section 2: IW = min(10*MSS, max(2*MSS, 14600)) bytes."""
    return min(10 * mss, max(2 * mss, 14600))


class CongestionControl:
    """What NewReno and CUBIC share: slow start with appropriate byte counting, the application-
    limited rule, the loss window after an RTO and the restart window after idle.

    Subclasses provide the congestion-avoidance increase (``_avoid``), the ssthresh after a loss
    (``_loss_ssthresh``) and the reaction to fast retransmit and to the end of recovery.
    """

    __slots__ = (
        "_abc_limit",
        "_bytes_acked",
        "_explicit_iw",
        "_pristine",
        "_rto_pending",
        "_rtt",
        "cwnd",
        "mss",
        "ssthresh",
    )

    name: str = "base"

    def __init__(self, mss: int, *, initial_window: int | None = None) -> None:
        if mss <= 0:
            raise ValueError(f"mss must be positive, not {mss}")
        if initial_window is not None and initial_window < mss:
            raise ValueError(f"initial_window ({initial_window}) must be at least one MSS ({mss})")
        self.mss = mss
        # 0 means "RFC 6928 for the current MSS"; an explicit value (say 1 MSS after a lost SYN,
        # RFC 5681 section 3.1) is kept across set_mss.
        self._explicit_iw = initial_window or 0
        # _initial_window(), written out: made once per connection (a passive open's, once the
        # SYN's MSS is known), where two calls were a third of the constructor
        iw = initial_window or min(10 * mss, max(2 * mss, 14600))
        self.cwnd = iw if iw > mss else mss
        self.ssthresh = INFINITE_SSTHRESH
        # RFC 3465 section 2.2: L = 2*SMSS per ACK in slow start; 1*SMSS in the slow start that
        # follows an RTO (section 2.3), since one ACK may then cover a whole window.
        self._abc_limit = 2 * mss
        self._bytes_acked = 0  # RFC 3465 section 2.1 congestion-avoidance byte counter (NewReno)
        self._rtt = 0.0  # last RTT sample seen, seconds; 0.0 = none yet
        self._rto_pending = False  # an RTO happened and no new data has been ACKed since
        self._pristine = True  # nothing happened yet: set_mss recomputes the initial window

    def _initial_window(self) -> int:
        iw = self._explicit_iw or initial_window(self.mss)
        return iw if iw > self.mss else self.mss

    def __repr__(self) -> str:
        return f"<{type(self).__name__} cwnd={self.cwnd} ssthresh={self.ssthresh} mss={self.mss}>"

    def set_mss(self, mss: int) -> None:
        """The MSS changed (negotiated from the SYN's option, or PMTU discovery).

        Before any event the initial window is recomputed for the new MSS (a connection is created
        with a default MSS before the SYN exchange).  Later, ``cwnd`` and ``ssthresh`` keep their
        value in bytes, which is what the path was seen to carry, clamped to at least 1 and 2 new
        MSS so the invariants hold.
        """
        if mss <= 0:
            raise ValueError(f"mss must be positive, not {mss}")
        after_rto = self._abc_limit < 2 * self.mss  # in the slow start that follows an RTO
        self.mss = mss
        self._abc_limit = mss if after_rto else 2 * mss
        if self._pristine:
            self.cwnd = self._initial_window()
        elif self.cwnd < mss:
            self.cwnd = mss
        if self.ssthresh < 2 * mss:
            self.ssthresh = 2 * mss

    def on_ack(self, acked: int, now: float, rtt: float | None, in_flight: int) -> None:
        """``acked`` new data bytes were acknowledged outside loss recovery.

        Below ssthresh, slow start with appropriate byte counting (RFC 5681 section 3.1, RFC 3465):
        cwnd grows by the bytes acknowledged but at most L per ACK, so delayed ACKs do not slow
        the doubling per RTT and a stretch ACK does not cause a burst.  At or above ssthresh,
        congestion avoidance (the subclass).  The part of the increase that slow start could not
        use when it reached ssthresh counts towards congestion avoidance.

        Application-limited rule (in the spirit of RFC 7661, and RFC 9438 section 5.8): cwnd only
        grows when ``in_flight >= cwnd / 2``.  A sender that uses less than half its window has not
        shown the network can carry more, so growing cwnd would only build up a window that is
        later released as a line-rate burst.
        """
        if rtt is not None and rtt > 0.0:  # also rejects NaN
            self._rtt = rtt
        self._rto_pending = False
        self._pristine = False
        cwnd = self.cwnd
        if acked <= 0 or in_flight + in_flight < cwnd:
            self._app_limited(now)
            return
        ssthresh = self.ssthresh
        if cwnd < ssthresh:
            limit = self._abc_limit
            increase = acked if acked < limit else limit
            if cwnd + increase < ssthresh:
                self.cwnd = cwnd + increase
                return
            # Slow start ends here: what the increase had left beyond ssthresh feeds congestion
            # avoidance (bytes above the limit L stay uncounted), and the post-RTO limit of
            # 1 MSS (RFC 3465 section 2.3) no longer applies.
            self.cwnd = ssthresh
            self._abc_limit = 2 * self.mss
            acked = increase - (ssthresh - cwnd)
            if acked <= 0:
                return
        self._avoid(acked, now)

    def _app_limited(self, now: float) -> None:
        """An ACK that does not grow cwnd because the sender is application-limited."""

    def _avoid(self, acked: int, now: float) -> None:
        """Congestion avoidance: grow cwnd for ``acked`` bytes (cwnd >= ssthresh here)."""
        raise NotImplementedError

    def _loss_ssthresh(self, in_flight: int) -> int:
        """The ssthresh after a loss, before the 2*MSS floor."""
        raise NotImplementedError

    def _after_loss(self) -> None:
        """Reset the growth state common to every loss signal."""
        self._pristine = False
        self._bytes_acked = 0
        self._abc_limit = 2 * self.mss

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        """Loss detected by duplicate ACKs or SACK: fast retransmit and recovery begin."""
        raise NotImplementedError

    def on_recovery_exit(self, now: float) -> None:
        """Fast recovery ended with a full ACK: cwnd = ssthresh (RFC 6582 section 3.2 step 3,
        option 2; RFC 6937 section 3), whatever the connection set it to during recovery."""
        if self.ssthresh < INFINITE_SSTHRESH:  # without a prior congestion event there is nothing to do
            self.cwnd = self.ssthresh
        self._bytes_acked = 0

    def on_rto(self, now: float, in_flight: int) -> None:
        """Retransmission timeout: ssthresh from FlightSize (RFC 5681 equation 4 for NewReno,
        RFC 9438 section 4.8 for CUBIC), cwnd = the loss window of 1 MSS (RFC 5681 section 3.1).

        When the segment that timed out had already been retransmitted by the timer (no new data
        ACKed since the previous RTO), ssthresh is held constant, as RFC 5681 section 3.1 requires:
        FlightSize then no longer tells anything about the network.
        """
        if not self._rto_pending:
            ssthresh = self._loss_ssthresh(in_flight)
            floor = 2 * self.mss
            self.ssthresh = ssthresh if ssthresh > floor else floor
        self._after_loss()
        self._rto_pending = True
        self._abc_limit = self.mss  # RFC 3465 section 2.3: L = 1*SMSS in slow start after an RTO
        self.cwnd = self.mss

    def undo(self, prior_cwnd: int, prior_ssthresh: int) -> None:
        """A reduction proved spurious (F-RTO, RFC 5682 3): back to the window before it, as
        Linux's tcp_undo_cwnd_reduction (never lower than now)."""
        if self.cwnd < prior_cwnd:
            self.cwnd = prior_cwnd
        if self.ssthresh < prior_ssthresh:
            self.ssthresh = prior_ssthresh
        self._rto_pending = False
        self._abc_limit = 2 * self.mss

    def on_idle_restart(self, now: float, rto: float, idle: float) -> None:
        """Sending resumes after ``idle`` seconds with nothing in flight.

        RFC 5681 section 4.1: after an idle period longer than the RTO, the ACK clock is lost and
        cwnd is limited to the restart window RW = min(IW, cwnd).  ssthresh is first raised to
        3/4 of the old cwnd (RFC 2861, as Linux and FreeBSD do) so that slow start climbs
        back quickly to near where the connection was, instead of crawling linearly from IW.
        """
        if idle <= rto:
            return
        restart = self._initial_window()
        cwnd = self.cwnd
        if cwnd > restart:
            self._pristine = False
            three_quarters = cwnd * 3 // 4
            if self.ssthresh < three_quarters:
                self.ssthresh = three_quarters
            self.cwnd = restart
            self._bytes_acked = 0

    def snapshot(self) -> dict[str, float | int]:
        """The state, for statistics and tests (not for the hot path: it builds a dict)."""
        return {"cwnd": self.cwnd, "ssthresh": self.ssthresh, "mss": self.mss, "rtt": self._rtt}


class NewReno(CongestionControl):
    """RFC 5681 congestion control with the RFC 6582 (NewReno) recovery around it.

    Congestion avoidance uses appropriate byte counting (RFC 3465 section 2.1, allowed by RFC 5681
    section 3.1): bytes acknowledged are summed and cwnd grows by one MSS each time the sum reaches
    cwnd, so the increase is one MSS per RTT whatever the ACK pattern (delayed or stretch ACKs),
    in integers only.
    """

    __slots__ = ()
    name = "newreno"

    def _avoid(self, acked: int, now: float) -> None:
        counted = self._bytes_acked + acked
        cwnd = self.cwnd
        if counted >= cwnd:
            counted -= cwnd
            self.cwnd = cwnd + self.mss
        self._bytes_acked = counted

    def _loss_ssthresh(self, in_flight: int) -> int:
        return in_flight // 2

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        """RFC 5681 equation 4: ssthresh = max(FlightSize / 2, 2*SMSS), and cwnd = ssthresh (the
        connection then paces the recovery with PRR, RFC 6937, against its pipe).

        FlightSize rather than cwnd, as the RFC insists, so an application-limited sender is not
        left with a window it never used.  But never more than cwnd: a loss must not raise the
        window, and FlightSize exceeds cwnd only while data sent before an earlier reduction (an
        RTO) is still outstanding.
        """
        ssthresh = (in_flight if in_flight < self.cwnd else self.cwnd) // 2
        floor = 2 * self.mss
        self.ssthresh = ssthresh = ssthresh if ssthresh > floor else floor
        self.cwnd = ssthresh
        self._after_loss()
        self._rto_pending = False


class Cubic(CongestionControl):
    """CUBIC, RFC 9438.

    After a loss at window W_max, the window follows W_cubic(t) = C*(t - K)^3 + W_max, with t the
    time since the congestion-avoidance stage (the "epoch") began and K the time the curve takes to
    climb back to W_max: concave up to the plateau at W_max, where the last loss happened, then
    convex to probe beyond it.  Because the curve depends on time rather than on ACKs, flows with
    different RTTs grow at the same pace.  Where Reno would be faster (short RTT, small window),
    CUBIC follows Reno's window estimate instead (the Reno-friendly region, section 4.3).

    Units: windows in bytes, so C is scaled to C*MSS bytes per second cubed and K =
    cbrt((W_max - cwnd_epoch) / (C*MSS)) is the same number of seconds as the RFC's segment form.
    cwnd stays an int; the fractional part of the per-ACK increase is carried in a float.
    """

    __slots__ = (
        "_alpha",
        "_c_mss",
        "_cwnd_epoch",
        "_cwnd_frac",
        "_cwnd_prior",
        "_epoch_start",
        "_in_epoch",
        "_k",
        "_last_ack",
        "_reno_friendly",
        "_w_est",
        "_w_max",
    )

    name = "cubic"

    def __init__(self, mss: int, *, initial_window: int | None = None) -> None:
        CongestionControl.__init__(self, mss, initial_window=initial_window)  # (no super() lookup)
        self._c_mss = CUBIC_C * mss  # C in bytes per second cubed
        self._w_max = 0.0  # bytes; 0 = no loss yet: set from cwnd when the epoch starts, K = 0
        self._cwnd_prior = 0  # cwnd at the last reduction (RFC 9438 section 4.6)
        self._in_epoch = False
        self._epoch_start = 0.0
        self._last_ack = 0.0  # time of the previous ACK, to exclude app-limited time from t
        self._k = 0.0
        self._cwnd_epoch = 0
        self._w_est = 0.0
        self._alpha = CUBIC_ALPHA
        self._cwnd_frac = 0.0
        self._reno_friendly = False

    def set_mss(self, mss: int) -> None:
        super().set_mss(mss)
        self._c_mss = CUBIC_C * mss

    def _loss_ssthresh(self, in_flight: int) -> int:
        return in_flight * 7 // 10  # CUBIC_BETA

    def _start_epoch(self, now: float) -> None:
        """A congestion-avoidance stage begins (RFC 9438 section 4.2): t counts from here.

        With no W_max above the current window (no loss yet, or the first stage after an RTO,
        section 4.8) the curve starts at its inflection point: W_max = cwnd and K = 0.
        """
        cwnd = self.cwnd
        self._in_epoch = True
        self._epoch_start = now
        self._last_ack = now
        self._cwnd_epoch = cwnd
        self._cwnd_frac = 0.0
        self._w_est = float(cwnd)  # section 4.3: W_est starts at cwnd_epoch
        if self._w_max <= cwnd:
            self._w_max = float(cwnd)
            self._k = 0.0
        else:
            self._k = math.cbrt((self._w_max - cwnd) / self._c_mss)
        # section 4.3: alpha_cubic until W_est reaches cwnd_prior, then Reno's 1.
        self._alpha = 1.0 if cwnd >= self._cwnd_prior else CUBIC_ALPHA

    def _app_limited(self, now: float) -> None:
        # RFC 9438 section 5.8: t must not include time the flow was application-limited, or the
        # first cwnd-limited ACK after it would find the curve far ahead and jump.  The time since
        # the previous ACK is taken as application-limited and the epoch is moved forward by it.
        if self._in_epoch:
            self._epoch_start += now - self._last_ack
        self._last_ack = now

    def _avoid(self, acked: int, now: float) -> None:
        """RFC 9438 sections 4.2 to 4.5, per ACK, with ``acked`` bytes in place of one segment."""
        if not self._in_epoch:
            self._start_epoch(now)  # slow start reached ssthresh: a new stage begins
        self._last_ack = now
        cwnd = self.cwnd
        w_max = self._w_max
        c_mss = self._c_mss
        t = now - self._epoch_start
        # Section 4.3: Reno's window estimate, W_est += alpha * segments_acked / cwnd (in segments).
        w_est = self._w_est + self._alpha * self.mss * acked / cwnd
        self._w_est = w_est
        if w_est >= self._cwnd_prior:
            self._alpha = 1.0
        d = t - self._k
        w = cwnd + self._cwnd_frac
        if c_mss * d * d * d + w_max < w_est:
            # Reno-friendly region: cwnd = W_est.  Never lowered on an ACK, should the cubic
            # growth earlier in this stage have carried cwnd above the estimate.
            self._reno_friendly = True
            if w_est > w:
                w = w_est
        else:
            # Sections 4.4 (concave) and 4.5 (convex): aim at W_cubic one RTT ahead, clamped to
            # [cwnd, 1.5*cwnd] (section 4.2), and close (target - cwnd)/cwnd MSS per MSS acked.
            # d*d*d rather than d**3: an absurd t overflows to inf, which the clamp absorbs,
            # instead of raising OverflowError.
            self._reno_friendly = False
            d += self._rtt
            target = c_mss * d * d * d + w_max
            cap = 1.5 * cwnd
            if target > cap:
                target = cap
            if target > cwnd:
                w += (target - cwnd) * acked / cwnd
        new = int(w)
        self.cwnd = new
        self._cwnd_frac = w - new

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        """RFC 9438 section 4.6 and 4.7.

        Fast convergence (4.7): a loss below the previous W_max means the flow's share is shrinking
        (a new flow arrived), so W_max is lowered further to cwnd * (1 + beta) / 2 and the plateau
        comes earlier, releasing bandwidth.  Otherwise W_max is the cwnd at the loss.  Then
        ssthresh = max(beta * FlightSize, 2*MSS) and cwnd = ssthresh, with FlightSize capped at
        cwnd as for NewReno.  The new epoch starts in :meth:`on_recovery_exit`.
        """
        cwnd = self.cwnd
        self._cwnd_prior = cwnd
        if cwnd < self._w_max:
            self._w_max = cwnd * (1.0 + CUBIC_BETA) / 2.0
        else:
            self._w_max = float(cwnd)
        ssthresh = (in_flight if in_flight < cwnd else cwnd) * 7 // 10
        floor = 2 * self.mss
        self.ssthresh = ssthresh = ssthresh if ssthresh > floor else floor
        self.cwnd = ssthresh
        self._in_epoch = False
        self._cwnd_frac = 0.0
        self._after_loss()
        self._rto_pending = False

    def on_recovery_exit(self, now: float) -> None:
        """Recovery ended: cwnd = ssthresh and a new epoch begins now (RFC 9438 section 4.2), with
        K = cbrt((W_max - cwnd_epoch) / C)."""
        if self.ssthresh >= INFINITE_SSTHRESH:
            return
        self.cwnd = self.ssthresh
        self._start_epoch(now)

    def on_rto(self, now: float, in_flight: int) -> None:
        """RFC 9438 section 4.8: ssthresh = max(beta * FlightSize, 2*MSS) and cwnd = 1 MSS as for
        Reno; the first congestion-avoidance stage afterwards starts with K = 0 and W_max = cwnd
        at its beginning (``_start_epoch``), and W_est from that cwnd."""
        if not self._rto_pending:
            self._cwnd_prior = self.cwnd
        super().on_rto(now, in_flight)
        self._w_max = 0.0
        self._in_epoch = False
        self._cwnd_frac = 0.0

    def undo(self, prior_cwnd: int, prior_ssthresh: int) -> None:
        """As the base class, and the curve restarts from the restored window at its next ACK."""
        super().undo(prior_cwnd, prior_ssthresh)
        self._in_epoch = False
        self._cwnd_frac = 0.0

    def on_idle_restart(self, now: float, rto: float, idle: float) -> None:
        """RFC 5681 section 4.1 restart window; and RFC 9438 section 5.8: the idle time is not
        part of t.  If the restart window cut cwnd, the epoch ends and a new one starts when slow
        start reaches ssthresh again (W_max is kept, so the curve heads back to it)."""
        before = self.cwnd
        super().on_idle_restart(now, rto, idle)
        if self._in_epoch:
            if self.cwnd < before:
                self._in_epoch = False
                self._cwnd_frac = 0.0
            elif idle > 0.0:
                shifted = self._epoch_start + idle
                self._epoch_start = shifted if shifted < now else now
        self._last_ack = now

    def snapshot(self) -> dict[str, float | int]:
        state = super().snapshot()
        state.update(
            w_max=self._w_max,
            k=self._k,
            w_est=self._w_est,
            alpha=self._alpha,
            cwnd_epoch=self._cwnd_epoch,
            cwnd_prior=self._cwnd_prior,
            in_epoch=int(self._in_epoch),
            epoch_start=self._epoch_start,
            reno_friendly=int(self._reno_friendly),
        )
        return state


CONGESTION_CONTROLS: dict[str, type[CongestionControl]] = {"newreno": NewReno, "cubic": Cubic}


def make_congestion_control(name: str, mss: int) -> CongestionControl:
    """The congestion control called ``name`` (a key of :data:`CONGESTION_CONTROLS`) for ``mss``."""
    try:
        cls = CONGESTION_CONTROLS[name]
    except KeyError:
        choices = ", ".join(sorted(CONGESTION_CONTROLS))
        raise ValueError(f"unknown congestion control {name!r}; choose one of: {choices}") from None
    return cls(mss)
