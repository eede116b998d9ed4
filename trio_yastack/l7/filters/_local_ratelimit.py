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

Descriptors, as Envoy builds and matches them: the route's ``rate_limits`` of the filter's
``stage`` (an entry with a ``disable_key`` is skipped, as Envoy's local filter does), and the
virtual host's per ``vh_rate_limits`` (OVERRIDE: only when the route has none; INCLUDE; IGNORE), or
the filter's own ``rate_limits`` when it has some, each make one descriptor from their actions in
order (``request_headers``, ``query_parameters``, ``remote_address`` and ``masked_remote_address``:
the peer's address, as RBAC's ``remote_ip`` reads it; ``generic_key``, ``header_value_match``).
Each descriptor equal to one of the filter's ``descriptors`` takes a token from that descriptor's
bucket, the slowest-filling first, and the first empty one refuses the request (a descriptor equal
to none is tried against the wildcard ``descriptors``, those with an empty ``value``, in order: the
first that matches gives it a bucket of its own, kept in that wildcard's least-recently-used table
of ``max_dynamic_descriptors``, Envoy's ``DynamicDescriptor``; one evicted starts full again); then
the filter's ``token_bucket`` (when it has one) is taken from too when no descriptor matched or
``always_consume_default_token_bucket`` (Envoy's default) is set.  The ``x-ratelimit-*`` headers
describe the bucket that refused, else the slowest-filling matched one, else the filter's.
Matching costs nothing to a filter without ``descriptors``.

A refused gRPC request is answered as any gRPC local reply is (:mod:`..local_reply`): HTTP 200,
``grpc-status`` UNAVAILABLE (14, Envoy's mapping of 429), or RESOURCE_EXHAUSTED (8) with
``rate_limited_as_resource_exhausted``.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ..config import (
    LocalDescriptor,
    LocalRateLimit,
    PerRouteConfig,
    RateLimitAction,
    RateLimitPolicy,
    RouteAction,
    RuntimeValue,
    TokenBucket,
)
from ..router import apply_header_options, get_header, header_matches
from ..stats import Stats
from ._connection import connection_info

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["LocalRateLimitFilter", "TokenBucketState", "request_descriptors"]

Descriptor = tuple[tuple[str, str], ...]
#: gRPC's RESOURCE_EXHAUSTED: ``rate_limited_as_resource_exhausted``'s status for a gRPC request
GRPC_RESOURCE_EXHAUSTED = 8


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


def _header(request: RequestView, name: str) -> str | None:
    """A header's value (its values joined by ``,``), or a pseudo-header's."""
    if name[0] == ":":
        if name == ":path":
            return request.path
        if name == ":method":
            return request.method
        if name == ":scheme":
            return str(getattr(request.downstream, "scheme", "") or "") or None
        name = "host"  # :authority
    raw = get_header(request.headers, name.encode())
    return raw.decode("latin-1") if raw is not None else None


def _query_value(target: str, name: str) -> str | None:
    """The first value of query parameter ``name`` in ``target``, percent-decoded as Envoy decodes
    it (``+`` stays ``+``); None when absent."""
    _, mark, query = target.partition("?")
    if not mark:
        return None
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if unquote(key) == name:
            return unquote(value)
    return None


def _entry(action: RateLimitAction, request: RequestView) -> tuple[str, str] | bool | None:
    """The entry ``action`` appends: None drops the descriptor, False appends nothing."""
    kind = action.kind
    if kind == "generic_key":
        return action.key, action.value
    if kind == "request_headers":
        value = _header(request, action.header_name)
        if value is None:
            return False if action.skip_if_absent else None
        return action.key, value
    if kind == "remote_address" or kind == "masked_remote_address":
        remote = connection_info(request.downstream, request.connection_state).remote
        if remote is None:
            return None
        if kind == "remote_address":
            return action.key, str(remote)
        prefix = action.v4_prefix if remote.version == 4 else action.v6_prefix
        return action.key, str(ipaddress.ip_network(f"{remote}/{prefix}", strict=False))
    if kind == "query_parameters":
        value = _query_value(request.path, action.header_name)
        if value is None:
            return False if action.skip_if_absent else None
        return action.key, value
    # header_value_match
    matched = all(header_matches(m, request.headers) for m in action.headers)
    return (action.key, action.value) if matched == action.expect_match else None


def _descriptor(policy: RateLimitPolicy, request: RequestView) -> Descriptor | None:
    entries: list[tuple[str, str]] = []
    for action in policy.actions:
        entry = _entry(action, request)
        if entry is None:
            return None
        if entry is not False:
            entries.append(entry)  # type: ignore[arg-type]  # not None, not False: an entry
    return tuple(entries) if entries else None


def request_descriptors(config: LocalRateLimit, request: RequestView) -> list[Descriptor]:
    """The descriptors ``config`` builds for ``request`` (see the module's docstring)."""
    if config.rate_limits:
        policies: tuple[RateLimitPolicy, ...] = config.rate_limits
    else:
        route, vhost = request.route, request.vhost
        if route is None or not isinstance(route.action, RouteAction):
            return []  # no route, or a direct response: Envoy builds none
        policies = route.action.rate_limits
        vh_option = config.vh_rate_limits
        if vhost is not None and (vh_option == "INCLUDE" or (vh_option == "OVERRIDE" and not policies)):
            policies = policies + vhost.rate_limits
        policies = tuple(p for p in policies if p.stage == config.stage and not p.disable_key)
    out: list[Descriptor] = []
    for policy in policies:
        found = _descriptor(policy, request)
        if found is not None:
            out.append(found)
    return out


def _fill_rate(descriptor: LocalDescriptor) -> float:
    bucket = descriptor.token_bucket
    return bucket.tokens_per_fill / bucket.fill_interval


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
        self.buckets: dict[int, object] = {}
        # each config's descriptors by their entries, and its wildcard descriptors in order (built
        # on first use; bounded as above)
        self.tables: dict[int, tuple[dict[Descriptor, LocalDescriptor], tuple[LocalDescriptor, ...]]] = {}
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
        if config.token_bucket is None and not config.descriptors:
            return
        if not sample(config.filter_enabled, self.runtime, self.rng):
            return
        scope = self.stats.scope(config.stat_prefix, "http_local_rate_limit")
        scope.inc("enabled")
        buckets = request.connection_state if config.per_connection else self.buckets
        t = now()
        if config.descriptors:
            allowed, bucket = self._consume_descriptors(config, request, buckets, t)
        else:
            allowed, bucket = self._consume(buckets, id(config), config.token_bucket, t)  # type: ignore[arg-type]  # checked above: no descriptors, so a bucket
        if config.x_ratelimit_headers and bucket is not None:
            limits = [
                (b"x-ratelimit-limit", str(bucket.config.max_tokens).encode()),
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
        if config.rate_limited_as_resource_exhausted:
            outcome.grpc_status = GRPC_RESOURCE_EXHAUSTED  # (a gRPC request's reply only)
        outcome.reply_headers.append((b"x-envoy-ratelimited", b"true"))
        outcome.reply_headers.extend(
            (h.key.encode("latin-1"), h.value.encode("latin-1")) for h in config.response_headers_to_add
        )

    @staticmethod
    def _consume(
        buckets: dict[int, object], key: int, config: TokenBucket, t: float
    ) -> tuple[bool, TokenBucketState]:
        bucket = buckets.get(key)
        if not isinstance(bucket, TokenBucketState):
            bucket = buckets[key] = TokenBucketState(config, t)
        return bucket.consume(t), bucket

    @staticmethod
    def _consume_dynamic(
        buckets: dict[int, object], descriptor: LocalDescriptor, entries: Descriptor, size: int, t: float
    ) -> tuple[bool, TokenBucketState]:
        """A token from the bucket of ``entries`` (a request descriptor) under the wildcard
        ``descriptor``: its table keeps the ``size`` most recently used (Envoy's LRU)."""
        table = buckets.get(id(descriptor))
        if not isinstance(table, OrderedDict):
            table = buckets[id(descriptor)] = OrderedDict()
        bucket = table.get(entries)
        if bucket is None:
            bucket = table[entries] = TokenBucketState(descriptor.token_bucket, t)
            if len(table) > size:
                table.popitem(last=False)
        else:
            table.move_to_end(entries)
        return bucket.consume(t), bucket

    def _consume_descriptors(
        self, config: LocalRateLimit, request: RequestView, buckets: dict[int, object], t: float
    ) -> tuple[bool, TokenBucketState | None]:
        """Envoy's order: the matched descriptors' buckets, slowest-filling first, until one is
        empty; then the filter's own bucket (see the module's docstring).  Returns whether the
        request may pass and the bucket its ``x-ratelimit-*`` headers describe."""
        tables = self.tables.get(id(config))
        if tables is None:
            static = {d.entries: d for d in config.descriptors if not d.wildcard}
            wildcards = tuple(d for d in config.descriptors if d.wildcard)
            tables = self.tables[id(config)] = (static, wildcards)
        table, wildcards = tables
        matched: list[tuple[LocalDescriptor, Descriptor]] = []
        for d in request_descriptors(config, request):
            found = table.get(d)
            if found is None:
                found = next((w for w in wildcards if w.matches(d)), None)
            if found is not None:
                matched.append((found, d))
        if len(matched) > 1:
            matched.sort(key=lambda m: _fill_rate(m[0]))  # (stable: equal rates keep the request's order)
        first: TokenBucketState | None = None
        for descriptor, entries in matched:
            if descriptor.wildcard:
                allowed, bucket = self._consume_dynamic(
                    buckets, descriptor, entries, config.max_dynamic_descriptors, t
                )
            else:
                allowed, bucket = self._consume(buckets, id(descriptor), descriptor.token_bucket, t)
            if not allowed:
                return False, bucket
            first = first or bucket
        if config.token_bucket is not None and (not matched or config.always_consume_default):
            allowed, bucket = self._consume(buckets, id(config), config.token_bucket, t)
            return allowed, first or bucket
        return True, first
