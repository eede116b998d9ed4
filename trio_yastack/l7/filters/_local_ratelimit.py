"""``envoy.filters.http.local_ratelimit``: a token bucket per filter (and per route override, and per
connection with ``local_rate_limit_per_downstream_connection``) in front of the router.

Envoy's behaviour: a request counts when ``filter_enabled`` picks it (``enabled``); it takes a token
(``ok``) or finds none (``rate_limited``), and is refused only when ``filter_enforced`` picks it too
(``enforced``): ``status`` (429) with the body ``local_rate_limited``, ``x-envoy-ratelimited: true``
and ``response_headers_to_add``.  With ``enable_x_ratelimit_headers: DRAFT_VERSION_03`` every
response the bucket counted carries ``x-ratelimit-limit`` (``max_tokens``), ``x-ratelimit-remaining``
(the tokens left) and ``x-ratelimit-reset`` (seconds to the next fill), taken when the request
counted (Envoy reads the bucket again as the response starts).  A request refused by the bucket
but let through by ``filter_enforced`` gets ``request_headers_to_add_when_not_enforced``.
Statistics are named as Envoy names them:
``<stat_prefix>.http_local_rate_limit.{enabled,enforced,rate_limited,ok}``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import LocalRateLimit, PerRouteConfig, RuntimeValue, TokenBucket
from ..router import apply_header_options
from ..stats import Stats

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["LocalRateLimitFilter", "TokenBucketState"]


class TokenBucketState:
    """Envoy's token bucket: full at first; each whole ``fill_interval`` since the last fill adds
    ``tokens_per_fill``, up to ``max_tokens``.  Time is passed in (seconds, any monotonic clock)."""

    __slots__ = ("config", "last_fill", "tokens")

    def __init__(self, config: TokenBucket, now: float) -> None:
        self.config = config
        self.tokens = config.max_tokens
        self.last_fill = now

    def consume(self, now: float) -> bool:
        """Take one token if there is one."""
        c = self.config
        fills = int((now - self.last_fill) / c.fill_interval)
        if fills > 0:
            self.tokens = min(c.max_tokens, self.tokens + fills * c.tokens_per_fill)
            self.last_fill += fills * c.fill_interval
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False

    def reset_seconds(self, now: float) -> int:
        """Whole seconds (rounded up) until the next fill: ``x-ratelimit-reset``."""
        left = self.config.fill_interval - (now - self.last_fill)
        return max(0, math.ceil(left))


class LocalRateLimitFilter:
    def __init__(
        self,
        config: LocalRateLimit,
        stats: Stats,
        runtime: Callable[[str], RuntimeValue],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.stats = stats
        self.runtime = runtime
        self.rng = rng
        # one bucket per config (the filter's and each route override's), keyed by identity: the
        # configs live as long as the connection manager, so this is bounded by the config's size
        self.buckets: dict[int, TokenBucketState] = {}
        self._scope(config)

    def _scope(self, config: LocalRateLimit) -> object:
        scope = self.stats.scope(config.stat_prefix, "http_local_rate_limit")
        scope.declare("enabled", "enforced", "rate_limited", "ok")
        return scope

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: Callable[[], float],
    ) -> None:
        from ._chain import sample  # the chain imports this module

        config = override if isinstance(override, LocalRateLimit) else self.config
        if config.token_bucket is None or not sample(config.filter_enabled, self.runtime, self.rng):
            return
        scope = self.stats.scope(config.stat_prefix, "http_local_rate_limit")
        scope.inc("enabled")
        buckets = request.connection_state if config.per_connection else self.buckets
        bucket = buckets.get(id(config))
        t = now()
        if not isinstance(bucket, TokenBucketState):
            bucket = buckets[id(config)] = TokenBucketState(config.token_bucket, t)
        allowed = bucket.consume(t)
        if config.x_ratelimit_headers:
            limits = [
                (b"x-ratelimit-limit", str(config.token_bucket.max_tokens).encode()),
                (b"x-ratelimit-remaining", str(bucket.tokens).encode()),
                (b"x-ratelimit-reset", str(bucket.reset_seconds(t)).encode()),
            ]
            outcome.response_headers.extend(limits)  # on the response, allowed or refused
            outcome.reply_headers.extend(limits)
        if allowed:
            scope.inc("ok")
            return
        scope.inc("rate_limited")
        if not sample(config.filter_enforced, self.runtime, self.rng):
            if config.request_headers_to_add_when_not_enforced:  # Envoy: marks the request it let by
                request.headers[:] = apply_header_options(
                    request.headers, config.request_headers_to_add_when_not_enforced, ()
                )
            return
        scope.inc("enforced")
        outcome.status = config.status
        outcome.body = "local_rate_limited"
        outcome.flags.append("RL")
        outcome.reply_headers.append((b"x-envoy-ratelimited", b"true"))
        outcome.reply_headers.extend(
            (h.key.encode("latin-1"), h.value.encode("latin-1")) for h in config.response_headers_to_add
        )
