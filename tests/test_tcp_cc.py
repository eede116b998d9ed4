"""TCP congestion control (trio_yastack.stack.tcp._cc), sans-IO: NewReno and CUBIC driven by a
simulated ACK clock with a fixed RTT and compared with the RFCs' formulas.

The ACK clock: each round trip, the window sent at the start of the round is acknowledged in
pieces spread evenly over the RTT, by a sender that keeps its window full (``in_flight = cwnd``).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_yastack.stack.tcp._cc import (
    CONGESTION_CONTROLS,
    CUBIC_ALPHA,
    CUBIC_BETA,
    CUBIC_C,
    INFINITE_SSTHRESH,
    CongestionControl,
    Cubic,
    NewReno,
    initial_window,
    make_congestion_control,
)

MSS = 1460
BOTH = pytest.mark.parametrize("cls", [NewReno, Cubic], ids=["newreno", "cubic"])


def ack_round(
    cc: CongestionControl, now: float, rtt: float, *, ack: int = MSS, in_flight: int | None = None
) -> float:
    """One RTT of ACK clocking: the window in flight at the start of the round comes back as
    ``ack``-byte ACKs spread over the RTT.  ``in_flight`` None means the sender is window-limited.
    Returns the time at the end of the round."""
    n = max(1, cc.cwnd // ack)
    for i in range(n):
        cc.on_ack(ack, now + rtt * (i + 1) / n, rtt, cc.cwnd if in_flight is None else in_flight)
    return now + rtt


def after_loss(cls: type[CongestionControl], w_max_segments: int, now: float = 0.0) -> CongestionControl:
    """A controller that just lost at ``w_max_segments`` full segments in flight and has left
    recovery at ``now``: congestion avoidance begins."""
    cc = cls(MSS)
    cc.cwnd = w_max_segments * MSS
    cc.on_congestion_event(now, w_max_segments * MSS)
    cc.on_recovery_exit(now)
    return cc


def w_cubic_segments(t: float, k: float, w_max_segments: float) -> float:
    """RFC 9438 Figure 1, in segments."""
    return CUBIC_C * (t - k) ** 3 + w_max_segments


# --- initial window, construction, registry ---------------------------------------------------


@pytest.mark.parametrize(("mss", "expected"), [(536, 5360), (1460, 14600), (8960, 17920)])
def test_initial_window_rfc6928(mss: int, expected: int) -> None:
    """min(10*MSS, max(2*MSS, 14600)): ten small segments, ten 1460-byte ones, two jumbo ones."""
    assert initial_window(mss) == expected
    for cls in (NewReno, Cubic):
        cc = cls(mss)
        assert (cc.cwnd, cc.ssthresh) == (expected, INFINITE_SSTHRESH)


def test_explicit_initial_window_and_bad_arguments() -> None:
    """An explicit IW (1 MSS after a lost SYN, RFC 5681 3.1) is used, also as the restart window;
    a window below one MSS or a non-positive MSS is the caller's error."""
    cc = NewReno(MSS, initial_window=MSS)
    assert cc.cwnd == MSS
    for _ in range(3):
        cc.on_ack(MSS, 0.1, 0.1, cc.cwnd)
    assert cc.cwnd == 4 * MSS
    cc.on_idle_restart(5.0, rto=1.0, idle=2.0)
    assert cc.cwnd == MSS
    with pytest.raises(ValueError, match="at least one MSS"):
        NewReno(MSS, initial_window=MSS - 1)
    with pytest.raises(ValueError, match="positive"):
        Cubic(0)
    with pytest.raises(ValueError, match="positive"):
        NewReno(MSS).set_mss(-1)


def test_make_congestion_control() -> None:
    """Names map to classes with that ``name``; an unknown name is a ValueError naming the choices."""
    assert set(CONGESTION_CONTROLS) == {"newreno", "cubic"}
    for name, cls in CONGESTION_CONTROLS.items():
        cc = make_congestion_control(name, 536)
        assert type(cc) is cls
        assert (cc.name, cc.mss, cc.cwnd) == (name, 536, 5360)
    with pytest.raises(ValueError, match="bbr") as info:
        make_congestion_control("bbr", MSS)
    assert "cubic" in str(info.value) and "newreno" in str(info.value)


@BOTH
def test_slotted_no_instance_dict(cls: type[CongestionControl]) -> None:
    """on_ack is on the hot path: the state lives in __slots__, no per-instance dict."""
    cc = cls(MSS)
    assert not hasattr(cc, "__dict__")
    with pytest.raises(AttributeError):
        cc.typo_cwnd = 1  # type: ignore[attr-defined]


# --- slow start ---------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("ack", [MSS, 2 * MSS], ids=["every-segment", "delayed-ack"])
def test_slow_start_doubles_per_rtt(cls: type[CongestionControl], ack: int) -> None:
    """With byte counting, cwnd doubles every RTT whether each segment or every second one is
    ACKed (RFC 3465: delayed ACKs do not halve the slow-start rate)."""
    cc = cls(MSS)
    now = 0.0
    for rounds in range(1, 5):
        now = ack_round(cc, now, 0.1, ack=ack)
        assert cc.cwnd == 14600 * 2**rounds


@BOTH
def test_slow_start_increase_capped_at_two_mss_per_ack(cls: type[CongestionControl]) -> None:
    """A stretch ACK of 4 MSS grows cwnd by L = 2 MSS only (RFC 3465 2.2); a small one by its size."""
    cc = cls(MSS)
    cc.on_ack(4 * MSS, 0.1, 0.1, cc.cwnd)
    assert cc.cwnd == 14600 + 2 * MSS
    cc.on_ack(100, 0.1, 0.1, cc.cwnd)
    assert cc.cwnd == 14600 + 2 * MSS + 100
    # Stretch ACKs of 4 MSS throughout: 1.5x per RTT, not 2x.
    cc = cls(MSS)
    ack_round(cc, 0.0, 0.1, ack=4 * MSS)
    assert cc.cwnd < 1.6 * 14600


@BOTH
def test_slow_start_stops_at_ssthresh(cls: type[CongestionControl]) -> None:
    """Slow start ends exactly at ssthresh; bytes beyond it count as congestion avoidance, where
    growth is slow (one MSS per RTT or less)."""
    cc = cls(MSS)
    cc.on_rto(0.0, 40 * MSS)
    ssthresh = cc.ssthresh
    now = 0.0
    while cc.cwnd < ssthresh:
        before = cc.cwnd
        now = ack_round(cc, now, 0.1)
        assert cc.cwnd <= 2 * before
    assert ssthresh <= cc.cwnd <= ssthresh + 2 * MSS
    start = cc.cwnd
    for _ in range(3):
        now = ack_round(cc, now, 0.1)
    assert cc.cwnd - start <= 3 * MSS + 1


@BOTH
def test_slow_start_after_rto_uses_one_mss_limit(cls: type[CongestionControl]) -> None:
    """RFC 3465 2.3: in the slow start that follows an RTO, L = 1*SMSS, since the ACK of the
    retransmission may cover a whole window; once ssthresh is reached L is 2*SMSS again."""
    cc = cls(MSS)
    cc.on_rto(0.0, 20 * MSS)
    assert cc.cwnd == MSS
    cc.on_ack(10 * MSS, 1.0, 0.1, 20 * MSS)
    assert cc.cwnd == 2 * MSS
    cc.on_ack(2 * MSS, 1.1, 0.1, cc.cwnd)
    assert cc.cwnd == 3 * MSS
    # Reaching ssthresh (here 2 MSS) ends that slow start: the capped increase left over goes to
    # congestion avoidance, the uncounted bytes of a stretch ACK do not.
    cc.on_ack(MSS, 1.2, 0.1, cc.cwnd)
    cc.on_rto(3.0, 2 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 2 * MSS)
    cc.on_ack(20 * MSS, 3.1, 0.1, cc.cwnd)
    assert cc.cwnd == 2 * MSS
    cc.on_ack(2 * MSS, 3.2, 0.1, cc.cwnd)  # now congestion avoidance, with L = 2 MSS again
    assert cc.cwnd <= 3 * MSS
    fresh = cls(MSS)
    fresh.on_congestion_event(0.0, 40 * MSS)
    fresh.ssthresh = INFINITE_SSTHRESH  # back in slow start without an RTO: L = 2 MSS
    before = fresh.cwnd
    fresh.on_ack(4 * MSS, 0.1, 0.1, fresh.cwnd)
    assert fresh.cwnd == before + 2 * MSS


# --- NewReno congestion avoidance and reductions ------------------------------------------------


@pytest.mark.parametrize("ack", [MSS, 2 * MSS, 500], ids=["every-segment", "delayed-ack", "small"])
def test_newreno_congestion_avoidance_one_mss_per_rtt(ack: int) -> None:
    """RFC 5681 3.1 with RFC 3465 2.1 byte counting: about one MSS per RTT, whatever the ACK size."""
    cc = after_loss(NewReno, 40)
    assert cc.cwnd == cc.ssthresh == 20 * MSS
    now = 0.0
    for _ in range(10):
        now = ack_round(cc, now, 0.1, ack=ack)
    assert 29 * MSS <= cc.cwnd <= 31 * MSS


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        (30 * MSS, 15 * MSS),
        (10 * MSS, 5 * MSS),
        (5 * MSS + 1, (5 * MSS + 1) // 2),
        (MSS, 2 * MSS),
        (0, 2 * MSS),
    ],
)
def test_newreno_congestion_event_halves_flight_size(in_flight: int, expected: int) -> None:
    """RFC 5681 equation 4: ssthresh = max(FlightSize/2, 2*SMSS) -- from the bytes in flight, not
    from cwnd -- and cwnd = ssthresh."""
    cc = NewReno(MSS)
    cc.cwnd = 40 * MSS
    cc.on_congestion_event(1.0, in_flight)
    assert cc.ssthresh == cc.cwnd == expected


@pytest.mark.parametrize(
    ("in_flight", "expected"), [(100 * MSS, 70 * MSS), (10 * MSS, 7 * MSS), (2 * MSS, 2 * MSS), (0, 2 * MSS)]
)
def test_cubic_congestion_event_multiplies_flight_by_beta(in_flight: int, expected: int) -> None:
    """RFC 9438 4.6: ssthresh = max(0.7 * FlightSize, 2 MSS), exactly (integer arithmetic), and
    cwnd = ssthresh."""
    cc = Cubic(MSS)
    cc.cwnd = 200 * MSS
    cc.on_congestion_event(1.0, in_flight)
    assert cc.ssthresh == cc.cwnd == expected
    assert CUBIC_BETA == 0.7


@pytest.mark.parametrize(("cls", "factor"), [(NewReno, 0.5), (Cubic, 0.7)], ids=["newreno", "cubic"])
def test_congestion_event_never_raises_cwnd(cls: type[CongestionControl], factor: float) -> None:
    """FlightSize above cwnd (data from before an RTO still outstanding) is capped at cwnd: a loss
    signal must not enlarge the window."""
    cc = cls(MSS)
    cc.cwnd = 10 * MSS
    cc.on_congestion_event(1.0, 40 * MSS)
    assert cc.cwnd == cc.ssthresh == int(10 * factor) * MSS


@BOTH
def test_recovery_exit_deflates_to_ssthresh(cls: type[CongestionControl]) -> None:
    """The connection writes cwnd during fast recovery (PRR, RFC 6937: pipe + what it lets out,
    which may be above ssthresh); the full ACK sets it to ssthresh.  Without a congestion event
    first, recovery exit changes nothing."""
    cc = cls(MSS)
    cc.cwnd = 40 * MSS
    cc.on_congestion_event(1.0, 40 * MSS)
    ssthresh = cc.ssthresh
    cc.cwnd += 8 * MSS  # what the connection's recovery left it at, above ssthresh
    cc.on_recovery_exit(1.5)
    assert cc.cwnd == ssthresh
    fresh = cls(MSS)
    fresh.on_recovery_exit(0.0)
    assert (fresh.cwnd, fresh.ssthresh) == (14600, INFINITE_SSTHRESH)


@pytest.mark.parametrize(("cls", "factor"), [(NewReno, 0.5), (Cubic, 0.7)], ids=["newreno", "cubic"])
def test_rto_loss_window_and_ssthresh(cls: type[CongestionControl], factor: float) -> None:
    """RTO: cwnd = 1 MSS (loss window) and ssthresh = max(factor * FlightSize, 2 MSS).  A second
    timeout of the same segment (no new ACK in between) keeps ssthresh (RFC 5681 3.1); after new
    data is ACKed, a later RTO computes it afresh."""
    cc = cls(MSS)
    cc.cwnd = 50 * MSS
    cc.on_rto(1.0, 40 * MSS)
    assert cc.cwnd == MSS
    assert cc.ssthresh == int(40 * factor) * MSS
    cc.on_rto(3.0, 4 * MSS)  # backed-off timer fires again: FlightSize says nothing new
    assert (cc.cwnd, cc.ssthresh) == (MSS, int(40 * factor) * MSS)
    cc.on_ack(MSS, 3.2, 0.2, 40 * MSS)
    assert cc.cwnd == 2 * MSS
    cc.on_rto(5.0, 10 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (MSS, int(10 * factor) * MSS)
    cc.on_ack(MSS, 5.2, 0.2, MSS)
    cc.on_rto(7.0, MSS)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 2 * MSS)


# --- CUBIC --------------------------------------------------------------------------------------


def test_cubic_k_and_epoch_after_congestion_event() -> None:
    """W_max = cwnd at the loss, cwnd_epoch = 0.7 of it, K = cbrt((W_max - cwnd_epoch)/C) seconds
    (RFC 9438 4.2, segments), epoch starting when recovery ends."""
    cc = Cubic(MSS)
    cc.cwnd = 100 * MSS
    cc.on_congestion_event(2.0, 100 * MSS)
    state = cc.snapshot()
    assert state["w_max"] == 100 * MSS
    assert state["cwnd_prior"] == 100 * MSS
    assert state["in_epoch"] == 0
    cc.on_recovery_exit(2.5)
    state = cc.snapshot()
    assert state["in_epoch"] == 1 and state["epoch_start"] == 2.5
    assert state["cwnd_epoch"] == cc.cwnd == 70 * MSS
    assert state["k"] == pytest.approx(math.cbrt((100 - 70) / 0.4), rel=1e-12)
    assert state["k"] == pytest.approx(4.2172, abs=1e-4)
    assert state["w_est"] == 70 * MSS
    assert state["alpha"] == pytest.approx(CUBIC_ALPHA) == pytest.approx(3 * 0.3 / 1.7)


def test_cubic_follows_w_cubic_and_returns_to_w_max_at_k() -> None:
    """Under ACK clocking with a 100 ms RTT, cwnd tracks W_cubic(t) = C(t-K)^3 + W_max within 2 %
    all the way, is back at W_max (within 1 %) at t = K, and stays in the CUBIC region (W_est, Reno's
    estimate, is far below)."""
    cc = after_loss(Cubic, 100)
    k = cc.snapshot()["k"]
    now, rtt = 0.0, 0.1
    while now < k + 1.0:
        expected = w_cubic_segments(now, k, 100)
        assert cc.cwnd / MSS == pytest.approx(expected, rel=0.02), now
        if abs(now - k) < rtt / 2:
            assert cc.cwnd / MSS == pytest.approx(100, rel=0.01)
        if 1.0 < now < k:
            assert cc.snapshot()["reno_friendly"] == 0
            assert cc.cwnd > cc.snapshot()["w_est"] + 5 * MSS
        now = ack_round(cc, now, rtt)
    assert cc.cwnd > 100 * MSS  # past K it probes beyond W_max


def test_cubic_concave_then_convex() -> None:
    """Growth per RTT shrinks towards the plateau at W_max (concave), is smallest around K, then
    increases again beyond it (convex)."""
    cc = after_loss(Cubic, 200)
    k = cc.snapshot()["k"]
    now, rtt = 0.0, 0.1
    samples: list[tuple[float, int]] = []
    while now < k + 2.0:
        samples.append((now, cc.cwnd))
        now = ack_round(cc, now, rtt)

    def growth(t0: float, t1: float) -> int:
        inside = [w for t, w in samples if t0 <= t < t1]
        return inside[-1] - inside[0]

    early, before_k = growth(0.0, 1.0), growth(k - 1.0, k)
    after_k, later = growth(k, k + 1.0), growth(k + 1.0, k + 2.0)
    assert early > 5 * before_k > 0
    assert later > 5 * after_k >= 0
    increments = [b[1] - a[1] for a, b in itertools.pairwise(samples)]
    i_min = increments.index(min(increments))
    assert abs(samples[i_min][0] - k) < 0.5
    assert all(d >= 0 for d in increments)


def test_cubic_target_clamped_to_one_and_a_half_cwnd() -> None:
    """RFC 9438 4.2: the target is at most 1.5 cwnd, so even with the curve far ahead (first ACK
    20 s after the epoch began, a window-limited sender) one RTT grows cwnd by at most half."""
    cc = after_loss(Cubic, 100)
    ack_round(cc, 20.0, 0.1)
    assert 1.45 * 70 * MSS <= cc.cwnd <= 1.5 * 70 * MSS + 1


def test_cubic_reno_friendly_region_at_small_rtt() -> None:
    """RFC 9438 4.3: with a 10 ms RTT and W_max = 20 segments, the cubic curve (K about 2.5 s,
    250 RTTs) would be slower than Reno, so cwnd follows W_est: +alpha_cubic segments per RTT,
    then +1 per RTT once W_est passes cwnd_prior."""
    cc = after_loss(Cubic, 20)
    state = cc.snapshot()
    k = state["k"]
    assert cc.cwnd == 14 * MSS and k == pytest.approx(math.cbrt(6 / 0.4))
    now, rtt = 0.0, 0.01
    for _ in range(10):
        now = ack_round(cc, now, rtt)
    assert cc.snapshot()["reno_friendly"] == 1
    assert cc.cwnd / MSS == pytest.approx(14 + 10 * CUBIC_ALPHA, abs=0.5)
    assert cc.cwnd / MSS > w_cubic_segments(now + rtt, k, 20) + 3
    while cc.snapshot()["w_est"] < 20 * MSS:
        now = ack_round(cc, now, rtt)
    assert cc.snapshot()["alpha"] == 1.0
    start = cc.cwnd
    for _ in range(10):
        now = ack_round(cc, now, rtt)
    assert 9 * MSS <= cc.cwnd - start <= 11 * MSS
    assert cc.cwnd / MSS > w_cubic_segments(now, k, 20)


def test_cubic_fast_convergence() -> None:
    """RFC 9438 4.7: a loss below the previous W_max sets W_max = cwnd * (1 + beta)/2; a loss at or
    above it sets W_max = cwnd."""
    cc = after_loss(Cubic, 100)
    now = 0.0
    while cc.cwnd < 80 * MSS:
        now = ack_round(cc, now, 0.1)
    at_loss = cc.cwnd
    cc.on_congestion_event(now, at_loss)
    assert cc.snapshot()["w_max"] == pytest.approx(at_loss * 0.85)
    assert cc.snapshot()["cwnd_prior"] == at_loss
    assert cc.cwnd == at_loss * 7 // 10
    cc.on_recovery_exit(now)
    assert cc.snapshot()["k"] == pytest.approx(math.cbrt((0.85 * at_loss - cc.cwnd) / MSS / 0.4))
    # Above the (lowered) W_max now: no further lowering.
    cc.cwnd = 90 * MSS
    cc.on_congestion_event(now + 1, 90 * MSS)
    assert cc.snapshot()["w_max"] == 90 * MSS


def test_cubic_after_rto_starts_with_k_zero_at_the_new_window() -> None:
    """RFC 9438 4.8: after an RTO, the first congestion-avoidance stage has K = 0 and W_max = the
    cwnd at its start, so it grows convexly from there rather than aiming at the old W_max."""
    cc = after_loss(Cubic, 100)
    cc.on_rto(1.0, 60 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 42 * MSS)
    now = 1.0
    while cc.snapshot()["in_epoch"] == 0:
        now += 0.01
        cc.on_ack(MSS, now, 0.1, cc.cwnd)
    state = cc.snapshot()
    assert state["k"] == 0.0 and state["epoch_start"] == now
    assert state["w_max"] == state["cwnd_epoch"] == 42 * MSS
    assert state["w_est"] == pytest.approx(42 * MSS, abs=MSS)  # W_est = cwnd_epoch, plus this ACK
    for _ in range(20):
        now = ack_round(cc, now, 0.1)
    assert cc.cwnd > 42 * MSS


def test_cubic_rtt_none_reuses_the_last_sample() -> None:
    """``rtt=None`` on an ACK means "no new sample": the last one is used for W_cubic(t + RTT).
    Without any sample the RTT counts as 0, and the concave growth lags one RTT behind."""
    with_rtt, reused, never = after_loss(Cubic, 100), after_loss(Cubic, 100), after_loss(Cubic, 100)
    reused.on_ack(MSS, 0.001, 0.2, reused.cwnd)
    with_rtt.on_ack(MSS, 0.001, 0.2, with_rtt.cwnd)
    never.on_ack(MSS, 0.001, None, never.cwnd)
    for i in range(1, 500):
        now = 0.001 + i * 0.002
        with_rtt.on_ack(MSS, now, 0.2, with_rtt.cwnd)
        reused.on_ack(MSS, now, None, reused.cwnd)
        never.on_ack(MSS, now, None, never.cwnd)
    assert reused.cwnd == with_rtt.cwnd
    assert reused.snapshot()["rtt"] == 0.2 and never.snapshot()["rtt"] == 0.0
    assert never.cwnd < with_rtt.cwnd - MSS


# --- application-limited senders and idle ------------------------------------------------------


@BOTH
@pytest.mark.parametrize("phase", ["slow-start", "congestion-avoidance"])
def test_application_limited_sender_does_not_grow_cwnd(cls: type[CongestionControl], phase: str) -> None:
    """A sender using under half its window (in_flight < cwnd/2) gets no growth however many ACKs
    arrive; at half its window it grows again."""
    cc = cls(MSS) if phase == "slow-start" else after_loss(cls, 40)
    start = cc.cwnd
    now = 0.0
    for _ in range(2000):
        now += 0.01
        cc.on_ack(MSS, now, 0.05, 2 * MSS)
        cc.on_ack(MSS, now, 0.05, start // 2 - 1)
    assert cc.cwnd == start
    for _ in range(50):
        now = ack_round(cc, now, 0.05, in_flight=start // 2)
    assert cc.cwnd > start


def test_cubic_excludes_application_limited_time_from_t() -> None:
    """RFC 9438 5.8: 20 s of application-limited ACKs (far past K = 4.2 s) are not counted in t, so
    the first cwnd-limited round grows as it would have just after the loss, not by the 1.5x cap."""
    paused = after_loss(Cubic, 100)
    now = 0.0
    for _ in range(200):
        now += 0.1
        paused.on_ack(MSS, now, 0.1, 10 * MSS)
    ack_round(paused, now, 0.1)
    fresh = after_loss(Cubic, 100)
    ack_round(fresh, 0.0, 0.1)
    assert paused.cwnd == pytest.approx(fresh.cwnd, abs=MSS)
    assert paused.cwnd < 75 * MSS


@BOTH
def test_idle_restart_window(cls: type[CongestionControl]) -> None:
    """RFC 5681 4.1: idle longer than the RTO limits cwnd to the restart window min(IW, cwnd);
    shorter idle, or a cwnd already below IW, is untouched.  ssthresh is raised to 3/4 of the old
    cwnd (RFC 2861) so slow start climbs back."""
    cc = cls(MSS)
    now = 0.0
    for _ in range(3):
        now = ack_round(cc, now, 0.1)
    big = cc.cwnd
    assert big == 80 * MSS
    cc.on_idle_restart(now + 0.9, rto=1.0, idle=0.9)
    assert cc.cwnd == big
    cc.on_idle_restart(now + 1.5, rto=1.0, idle=1.5)
    assert cc.cwnd == 14600
    assert cc.ssthresh == INFINITE_SSTHRESH  # still in the first slow start: nothing to raise
    cc = after_loss(cls, 40)
    ssthresh = cc.ssthresh
    cc.on_idle_restart(10.0, rto=1.0, idle=9.0)
    assert (cc.cwnd, cc.ssthresh) == (14600, ssthresh)  # 3/4 of cwnd = ssthresh is lower: kept
    cc = after_loss(cls, 40)
    now = 0.0
    while 3 * cc.cwnd // 4 <= cc.ssthresh:
        now = ack_round(cc, now, 0.1)
    big = cc.cwnd
    cc.on_idle_restart(now + 9.0, rto=1.0, idle=9.0)
    assert (cc.cwnd, cc.ssthresh) == (14600, big * 3 // 4)
    small = cls(MSS)
    small.on_rto(0.0, 20 * MSS)
    small.on_idle_restart(10.0, rto=1.0, idle=9.0)
    assert small.cwnd == MSS
    cc = after_loss(cls, 40)  # and once slow start has climbed back, congestion avoidance resumes
    ssthresh = cc.ssthresh
    cc.on_idle_restart(10.0, rto=1.0, idle=9.0)
    now = 10.0
    while cc.cwnd < ssthresh:
        now = ack_round(cc, now, 0.1)
    assert ssthresh <= cc.cwnd <= ssthresh + 2 * MSS
    now = ack_round(cc, now, 0.1)
    assert cc.cwnd <= ssthresh + 3 * MSS


def test_cubic_idle_time_not_counted_in_t() -> None:
    """A short idle (no restart window) moves the CUBIC epoch forward by the idle time; a long one
    that cuts cwnd ends the epoch, and the next one aims at the old W_max again."""
    cc = after_loss(Cubic, 100, now=5.0)
    cc.on_idle_restart(6.0, rto=1.0, idle=0.5)
    assert cc.snapshot()["epoch_start"] == 5.5
    assert cc.cwnd == 70 * MSS
    cc.on_idle_restart(20.0, rto=1.0, idle=10.0)
    assert cc.cwnd == 14600 and cc.snapshot()["in_epoch"] == 0
    now = 20.0
    while cc.snapshot()["in_epoch"] == 0:
        now = ack_round(cc, now, 0.1)
    state = cc.snapshot()
    assert state["w_max"] == 100 * MSS and state["k"] > 0


# --- MSS changes -------------------------------------------------------------------------------


@BOTH
def test_set_mss(cls: type[CongestionControl]) -> None:
    """Before anything happened, the initial window is recomputed for the negotiated MSS; later the
    byte values are kept, clamped to >= 1 MSS (cwnd) and >= 2 MSS (ssthresh)."""
    cc = cls(536)
    assert cc.cwnd == 5360
    cc.set_mss(MSS)
    assert (cc.mss, cc.cwnd) == (MSS, 14600)
    cc.on_ack(MSS, 0.1, 0.1, cc.cwnd)
    cc.set_mss(1200)
    assert cc.cwnd == 14600 + MSS
    cc.on_rto(1.0, 2 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (1200, 2 * 1200)
    cc.set_mss(8960)
    assert (cc.cwnd, cc.ssthresh) == (8960, 2 * 8960)
    cc.on_ack(4 * 8960, 1.5, 0.1, cc.cwnd)  # still the post-RTO slow start: L = 1 new MSS
    assert cc.cwnd == 2 * 8960


# --- properties --------------------------------------------------------------------------------

EVENT = st.one_of(
    st.tuples(
        st.just("ack"),
        st.integers(1, 20 * MSS),
        st.one_of(st.none(), st.floats(1e-5, 3.0)),
        st.floats(0.0, 2.0),
    ),
    st.tuples(st.just("loss"), st.floats(0.0, 2.0)),
    st.tuples(st.just("exit")),
    st.tuples(st.just("rto"), st.floats(0.0, 2.0)),
    st.tuples(st.just("idle"), st.floats(0.2, 3.0), st.floats(0.0, 10.0)),
    st.tuples(st.just("mss"), st.sampled_from([536, 1200, 1460, 8960])),
    st.tuples(st.just("ack-burst"), st.integers(1, 300), st.floats(0.001, 0.5)),
)


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(CONGESTION_CONTROLS)),
    events=st.lists(st.tuples(st.floats(0.0, 5.0), EVENT), max_size=60),
)
def test_any_event_sequence_keeps_invariants(name: str, events: list[tuple[float, tuple]]) -> None:  # type: ignore[type-arg]
    """Whatever happens: cwnd is an int >= 1 MSS, ssthresh an int >= 2 MSS, the state is finite.
    An ACK never lowers cwnd and never raises it for an application-limited sender; a run of ACKs
    raises it by no more than the bytes they acknowledge (+ 2 MSS of rounding and carried-over
    byte counts); a loss never raises it."""
    cc = make_congestion_control(name, MSS)
    now = 0.0
    run_start, run_acked = cc.cwnd, 0
    for dt, event in events:
        now += dt
        kind = event[0]
        before = cc.cwnd
        if kind in ("ack", "ack-burst"):
            if kind == "ack":
                _, acked, rtt, fill = event
                in_flight = int(before * fill)
                cc.on_ack(acked, now, rtt, in_flight)
                run_acked += acked
                assert cc.cwnd >= before
                if 2 * in_flight < before:
                    assert cc.cwnd == before
            else:  # many window-limited ACKs: exercises long growth phases
                _, count, rtt = event
                for _ in range(count):
                    now += rtt / 10
                    previous = cc.cwnd
                    cc.on_ack(MSS, now, rtt, previous)
                    assert cc.cwnd >= previous
                run_acked += count * MSS
            assert cc.cwnd - run_start <= run_acked + 2 * cc.mss
        else:
            run_start, run_acked = before, 0
        if kind == "loss":
            cc.on_congestion_event(now, int(before * event[1]))
            assert cc.cwnd <= max(before, 2 * cc.mss)
        elif kind == "exit":
            cc.on_recovery_exit(now)
            run_start = cc.cwnd
        elif kind == "rto":
            cc.on_rto(now, int(before * event[1]))
            assert cc.cwnd == cc.mss
        elif kind == "idle":
            _, rto, idle = event
            cc.on_idle_restart(now, rto, idle)
            assert cc.cwnd <= before
        elif kind == "mss":
            cc.set_mss(event[1])
            run_start = cc.cwnd
        assert isinstance(cc.cwnd, int) and isinstance(cc.ssthresh, int)
        assert cc.cwnd >= cc.mss
        assert 2 * cc.mss <= cc.ssthresh <= INFINITE_SSTHRESH
        assert all(math.isfinite(value) for value in cc.snapshot().values())
