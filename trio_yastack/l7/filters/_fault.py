"""``envoy.filters.http.fault``: delays and aborts injected into a share of requests.

Envoy's behaviour: the route's (then the virtual host's) ``HTTPFault`` replaces the filter's; a
request is eligible when every ``headers`` matcher matches, the route goes to ``upstream_cluster``
(when set) and fewer than ``max_active_faults`` faults are in flight.  The delay comes first
(``fixed_delay``, or the milliseconds of ``x-envoy-fault-delay-request`` with ``header_delay``), then
the abort (``http_status``, or the status in ``x-envoy-fault-abort-request`` with ``header_abort``),
each for its own ``percentage`` of requests, answered with the body ``fault filter abort`` (with
``grpc_status``: a gRPC answer, 200 and ``grpc-status``/``grpc-message: fault filter abort`` in its
headers, no body).  The runtime keys Envoy reads override the config:
``fault.http.delay.fixed_delay_percent``, ``fault.http.delay.fixed_duration_ms``,
``fault.http.abort.abort_percent``, ``fault.http.abort.http_status``,
``fault.http.abort.grpc_status``.  Statistics (``http.<stat_prefix>.fault.*``): ``delays_injected``,
``aborts_injected``, ``faults_overflow``, and the gauge ``active_faults``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from ..config import FractionalPercent, HttpFault, PerRouteConfig, RouteAction, RuntimeValue
from ..router import header_matches
from ..stats import Scope

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["FaultFilter"]

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
        scope.declare("fault.delays_injected", "fault.aborts_injected", "fault.faults_overflow")
        scope.gauge_set("fault.active_faults", 0)

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
        if config.delay is None and config.abort is None:
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
                percent = self._percent(delay.percentage, "fault.http.delay.fixed_delay_percent")
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
                    # Envoy: a gRPC answer with the status in its headers (trailers-only), no body
                    self.scope.inc("fault.aborts_injected")
                    outcome.status, outcome.body = 200, ""
                    outcome.reply_headers += [
                        (b"content-type", b"application/grpc"),
                        (b"grpc-status", str(grpc_status).encode()),
                        (b"grpc-message", b"fault filter abort"),
                    ]
                    outcome.flags.append("FI")
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
                percent = self._percent(abort.percentage, "fault.http.abort.abort_percent")
                if status is not None and sample(percent, self.runtime, self.rng):
                    self.scope.inc("fault.aborts_injected")
                    outcome.status = status
                    outcome.body = "fault filter abort"
                    outcome.flags.append("FI")
        finally:
            self.active -= 1
            self.scope.gauge_add("fault.active_faults", -1)
