"""``envoy.filters.http.fault``: delays and aborts injected into a share of requests.

Envoy's behaviour: the route's (then the virtual host's) ``HTTPFault`` replaces the filter's; a
request is eligible when every ``headers`` matcher matches, the route goes to ``upstream_cluster``
(when set) and fewer than ``max_active_faults`` faults are in flight.  The delay comes first
(``fixed_delay``, or the milliseconds of ``x-envoy-fault-delay-request`` with ``header_delay``), then
the abort (``http_status``, or the status in ``x-envoy-fault-abort-request`` with ``header_abort``,
else the gRPC status in ``x-envoy-fault-abort-grpc-request``),
each for its own ``percentage`` of requests, answered with the body ``fault filter abort`` (with
``grpc_status``: a gRPC answer, 200 and ``grpc-status``/``grpc-message: fault filter abort`` in its
headers, no body).  The runtime keys Envoy reads override the config:
``fault.http.delay.fixed_delay_percent``, ``fault.http.delay.fixed_duration_ms``,
``fault.http.abort.abort_percent``, ``fault.http.abort.http_status``,
``fault.http.abort.grpc_status``.  A header-controlled fault's percentage may be lowered by the
request's ``x-envoy-fault-delay-request-percentage``, ``x-envoy-fault-abort-request-percentage`` or
``x-envoy-fault-throughput-response-percentage`` (capped by the configured one).  Statistics
(``http.<stat_prefix>.fault.*``): ``delays_injected``, ``aborts_injected``,
``response_rl_injected``, ``faults_overflow``, and the gauge ``active_faults``.

``response_rate_limit`` (Envoy's bandwidth fault): the response body of the requests it picks
(``percentage``, runtime ``fault.http.rate_limit.response_percent``) leaves at ``limit_kbps`` KiB/s,
or at the rate the request's ``x-envoy-fault-throughput-response`` asks with ``header_limit`` (a
positive integer; none: no limit).  As Envoy's ``StreamRateLimiter`` does, a second is cut into 16
slices of ``limit_kbps * 1024 / 16`` bytes, a bucket of 16 slices starts full (so up to a second's
worth leaves at once) and refills at 16 slices a second; the head is not delayed, the trailers and
the end wait for the body.  It is chosen with the delay and abort, before them, and counts as an
active fault until the response ends.  The connection manager paces the body with
:attr:`FilterOutcome.response_limiter` (:class:`ResponseRateLimiter`), and sends every request
through its general relay when a ``fault`` config anywhere in it has a ``response_rate_limit``
(:func:`limits_response_rate`).
"""

from __future__ import annotations

import math
import random
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from ..config import (
    FAULT_NAME,
    FractionalPercent,
    HttpConnectionManager,
    HttpFault,
    PerRouteConfig,
    RouteAction,
    RuntimeValue,
)
from ..router import header_matches
from ..stats import Scope

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["FaultFilter", "ResponseRateLimiter", "limits_response_rate"]

DELAY_PERCENT_HEADER = b"x-envoy-fault-delay-request-percentage"
ABORT_PERCENT_HEADER = b"x-envoy-fault-abort-request-percentage"
THROUGHPUT_PERCENT_HEADER = b"x-envoy-fault-throughput-response-percentage"
#: Envoy's StreamRateLimiter: a second is cut into this many slices
SLICES_PER_SECOND = 16
#: the highest rate a header may ask for, KiB/s (Envoy bounds nothing; this keeps the slice
#: arithmetic in plain integers)
MAX_HEADER_KBPS = 1 << 40


class ResponseRateLimiter:
    """Paces one response body: :meth:`take` says how many bytes of a piece may leave now, or how
    long to wait for the next slice.  Sans-IO (time is passed in) and bounded: it holds no data."""

    __slots__ = ("__weakref__", "last", "slice_bytes", "tokens")

    def __init__(self, limit_kbps: int, now: float) -> None:
        self.slice_bytes = max(1, limit_kbps * 1024 // SLICES_PER_SECOND)
        self.tokens = float(SLICES_PER_SECOND)  # full: Envoy's bucket starts so
        self.last = now

    def take(self, wanted: int, now: float) -> tuple[int, float]:
        """``(bytes, 0.0)``: that many of ``wanted`` (> 0) bytes may be written now, whole slices
        while the bucket has them (the last one may be partly used: Envoy writes what it holds);
        ``(0, seconds)``: none until then."""
        self.tokens = min(float(SLICES_PER_SECOND), self.tokens + (now - self.last) * SLICES_PER_SECOND)
        self.last = now
        if self.tokens < 1:
            return 0, (1 - self.tokens) / SLICES_PER_SECOND
        slices = min(int(self.tokens), math.ceil(wanted / self.slice_bytes))
        self.tokens -= slices
        return min(wanted, slices * self.slice_bytes), 0.0


def limits_response_rate(config: HttpConnectionManager) -> bool:
    """Whether a ``fault`` filter of ``config``, or a route's or virtual host's override of one, has
    a ``response_rate_limit``: then the connection manager must relay bodies where it can pace
    them (its general path)."""
    names = {f.name for f in config.http_filters if f.type_name == FAULT_NAME}
    if not names:
        return False
    found: list[object] = [f.config for f in config.http_filters if f.name in names]
    for vhost in config.route_config.virtual_hosts:
        found += [c for n, c in vhost.typed_per_filter_config if n in names]
        for route in vhost.routes:
            found += [c for n, c in route.typed_per_filter_config if n in names]
    return any(isinstance(c, HttpFault) and c.response_rate_limit is not None for c in found)


#: the longest delay a header may ask for (Envoy bounds nothing; an hour keeps a typo from parking a
#: request for days)
MAX_HEADER_DELAY = 3600.0


def _get(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _runtime_int(runtime: Callable[[str], RuntimeValue], key: str) -> int | None:
    value = runtime(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return None


class FaultFilter:
    def __init__(
        self, config: HttpFault, scope: Scope, runtime: Callable[[str], RuntimeValue], rng: random.Random
    ) -> None:
        self.config = config
        self.scope = scope
        self.runtime = runtime
        self.rng = rng
        self.active = 0
        scope.declare(
            "fault.delays_injected",
            "fault.aborts_injected",
            "fault.faults_overflow",
            "fault.response_rl_injected",
        )
        scope.gauge_set("fault.active_faults", 0)

    @staticmethod
    def _header_percent(percent: FractionalPercent, request: RequestView, name: bytes) -> FractionalPercent:
        """A header-controlled fault's percentage: the request's ``x-envoy-fault-*-percentage``
        (a whole number) as the numerator, capped by the configured one (Envoy's rule)."""
        raw = _get(request.headers, name)
        if raw is None or not raw.isdigit() or len(raw) > 9:
            return percent
        return replace(percent, numerator=min(int(raw), percent.numerator))

    def _percent(self, percent: FractionalPercent, key: str) -> FractionalPercent:
        numerator = _runtime_int(self.runtime, key)
        if numerator is None:
            return percent
        # Envoy's runtime fault percentages are whole percents unless the config's denominator says
        return replace(percent, numerator=numerator * percent.denominator // 100)

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: object,
    ) -> None:
        from ._chain import sample  # the chain imports this module

        config = override if isinstance(override, HttpFault) else self.config
        if config.delay is None and config.abort is None and config.response_rate_limit is None:
            return
        if config.upstream_cluster is not None:
            action = request.route.action if request.route is not None else None
            if not isinstance(action, RouteAction) or action.cluster != config.upstream_cluster:
                return
        if not all(header_matches(m, request.headers) for m in config.headers):
            return
        if config.max_active_faults is not None and self.active >= config.max_active_faults:
            self.scope.inc("fault.faults_overflow")
            return
        if config.response_rate_limit is not None:
            self._limit_response(config, request, outcome)
        self.active += 1
        self.scope.gauge_add("fault.active_faults", 1)
        try:
            delay = config.delay
            if delay is not None:
                seconds: float | None = delay.fixed_delay
                if seconds is None:
                    raw = _get(request.headers, b"x-envoy-fault-delay-request")
                    seconds = int(raw) / 1000 if raw is not None and raw.isdigit() and len(raw) < 10 else None
                    if seconds is not None:
                        seconds = min(seconds, MAX_HEADER_DELAY)
                else:
                    ms = _runtime_int(self.runtime, "fault.http.delay.fixed_duration_ms")
                    seconds = ms / 1000 if ms is not None and ms > 0 else seconds
                percent = delay.percentage
                if delay.fixed_delay is None:
                    percent = self._header_percent(percent, request, DELAY_PERCENT_HEADER)
                percent = self._percent(percent, "fault.http.delay.fixed_delay_percent")
                if seconds and sample(percent, self.runtime, self.rng):
                    self.scope.inc("fault.delays_injected")
                    outcome.flags.append("DI")
                    await trio.sleep(seconds)
            abort = config.abort
            if abort is not None and abort.grpc_status is not None:
                grpc_status: int | None = abort.grpc_status
                runtime_grpc = _runtime_int(self.runtime, "fault.http.abort.grpc_status")
                grpc_status = runtime_grpc if runtime_grpc is not None and runtime_grpc >= 0 else grpc_status
                percent = self._percent(abort.percentage, "fault.http.abort.abort_percent")
                if sample(percent, self.runtime, self.rng):
                    self._grpc_abort(grpc_status, outcome)
            elif abort is not None:
                status = abort.http_status
                if status is None:
                    raw = _get(request.headers, b"x-envoy-fault-abort-request")
                    status = int(raw) if raw is not None and raw.isdigit() and len(raw) == 3 else None
                    if status is not None and not 200 <= status < 600:
                        status = None
                else:
                    runtime_status = _runtime_int(self.runtime, "fault.http.abort.http_status")
                    if runtime_status is not None and 200 <= runtime_status < 600:
                        status = runtime_status
                header_grpc: int | None = None
                if status is None and abort.http_status is None:  # Envoy: else a gRPC status header
                    raw = _get(request.headers, b"x-envoy-fault-abort-grpc-request")
                    header_grpc = int(raw) if raw is not None and raw.isdigit() and len(raw) < 10 else None
                percent = abort.percentage
                if abort.http_status is None:
                    percent = self._header_percent(percent, request, ABORT_PERCENT_HEADER)
                percent = self._percent(percent, "fault.http.abort.abort_percent")
                if (status is not None or header_grpc is not None) and sample(
                    percent, self.runtime, self.rng
                ):
                    if status is None:
                        self._grpc_abort(header_grpc, outcome)
                    else:
                        self.scope.inc("fault.aborts_injected")
                        outcome.status = status
                        outcome.body = "fault filter abort"
                        outcome.flags.append("FI")
        finally:
            self.active -= 1
            self.scope.gauge_add("fault.active_faults", -1)

    def _grpc_abort(self, grpc_status: int | None, outcome: FilterOutcome) -> None:
        """Envoy's gRPC abort: 200 with the status in its headers (trailers-only), no body."""
        self.scope.inc("fault.aborts_injected")
        outcome.status, outcome.body = 200, ""
        outcome.reply_headers += [
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(grpc_status).encode()),
            (b"grpc-message", b"fault filter abort"),
        ]
        outcome.flags.append("FI")

    def _limit_response(self, config: HttpFault, request: RequestView, outcome: FilterOutcome) -> None:
        from ._chain import sample  # the chain imports this module

        limit = config.response_rate_limit
        assert limit is not None  # the caller checked
        kbps = limit.limit_kbps
        if kbps is None:
            raw = _get(request.headers, b"x-envoy-fault-throughput-response")
            kbps = int(raw) if raw is not None and raw.isdigit() and len(raw) < 14 else 0
            if not 0 < kbps <= MAX_HEADER_KBPS:
                return
        percent = limit.percentage
        if limit.limit_kbps is None:
            percent = self._header_percent(percent, request, THROUGHPUT_PERCENT_HEADER)
        percent = self._percent(percent, "fault.http.rate_limit.response_percent")
        if not sample(percent, self.runtime, self.rng):
            return
        self.scope.inc("fault.response_rl_injected")
        limiter = outcome.response_limiter = ResponseRateLimiter(kbps, trio.current_time())
        # an active fault until the response ends: the limiter goes with the request's outcome
        self.active += 1
        self.scope.gauge_add("fault.active_faults", 1)
        weakref.finalize(limiter, self._fault_ended)

    def _fault_ended(self) -> None:
        self.active -= 1
        self.scope.gauge_add("fault.active_faults", -1)
