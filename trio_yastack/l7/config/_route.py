"""``route.v3``: route tables (virtual hosts, routes and their actions)."""

from __future__ import annotations

from dataclasses import dataclass

from ._core import (
    FractionalPercent,
    HeaderValueOption,
    _cluster_ref,
    _header_name,
    _header_value_option,
    _host_value,
    _inline_string,
    _path_value,
    _runtime_fractional_percent,
)
from ._http_filters import PerRouteConfig, _per_filter_configs
from ._names import RETRY_ON
from ._ratelimit import RateLimitPolicy, _rate_limit
from ._reader import (
    _UINT32_MAX,
    _bool,
    _duration_ge0,
    _Fields,
    _join,
    _list,
    _nonempty_str,
    _Reader,
    _Skip,
    _str,
    _uint,
    _uint32,
)
from ._route_match import RouteMatch, _route_match


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    """``weighted_clusters.clusters[]``: an upstream cluster and its (positive) weight."""

    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retry_policy``: ``retry_on`` conditions (required here; Envoy would accept none and never retry),
    ``num_retries`` (Envoy's default 1) and ``per_try_timeout`` (``None``: the route's timeout)."""

    retry_on: tuple[str, ...]
    num_retries: int = 1
    per_try_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RouteAction:
    """``route``: exactly one of ``cluster`` / ``weighted_clusters``; ``timeout`` defaults to Envoy's 15 s
    (0 disables it); rewrites apply only when set."""

    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    prefix_rewrite: str | None = None
    host_rewrite_literal: str | None = None
    timeout: float = 15.0
    retry_policy: RetryPolicy | None = None
    #: ``upgrade_configs[]`` as (upgrade_type lowercased, enabled): overrides the connection manager's
    upgrade_configs: tuple[tuple[str, bool], ...] = ()
    #: ``request_mirror_policies[]``: (cluster, ``runtime_fraction``; None: every request)
    request_mirror_policies: tuple[tuple[str, FractionalPercent | None], ...] = ()
    #: ``rate_limits[]``: the descriptors the local rate limit filter builds for this route
    rate_limits: tuple[RateLimitPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """``direct_response``: answer ``status`` (100-599) with ``body.inline_string`` (empty when absent)."""

    status: int
    body: str | None = None


class _PerFilterConfigs:
    """``typed_per_filter_config`` lookup, shared by :class:`Route` and :class:`VirtualHost`.

    A base with empty ``__slots__`` (not a helper function) so the per-request lookup costs what it
    did when each class had its own copy: one method call, no extra frame."""

    __slots__ = ()
    typed_per_filter_config: tuple[tuple[str, PerRouteConfig], ...]

    def per_filter_config(self, name: str) -> PerRouteConfig | None:
        for key, value in self.typed_per_filter_config:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Route(_PerFilterConfigs):
    """``routes[]``: a match and exactly one of ``route`` (:class:`RouteAction`) / ``direct_response``;
    ``typed_per_filter_config`` overrides a filter's config for this route (by filter name)."""

    match: RouteMatch
    action: RouteAction | DirectResponse
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    typed_per_filter_config: tuple[tuple[str, PerRouteConfig], ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualHost(_PerFilterConfigs):
    """``virtual_hosts[]``: a name, the Host/:authority values it serves (``*`` and ``*.suffix`` /
    ``prefix*`` wildcards as in Envoy), and routes tried in order."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...] = ()
    typed_per_filter_config: tuple[tuple[str, PerRouteConfig], ...] = ()
    #: ``rate_limits[]``: the local rate limit filter's descriptors for every route here
    #: (with the route's own per the filter's ``vh_rate_limits``)
    rate_limits: tuple[RateLimitPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    """``route_config``: the inline route table (RDS is outside the subset)."""

    name: str
    virtual_hosts: tuple[VirtualHost, ...] = ()


def _retry_on(r: _Reader, v: object, path: str) -> tuple[str, ...]:
    text = _str(r, v, path)
    conditions = tuple(c.strip() for c in text.split(","))
    bad = [c for c in conditions if c not in RETRY_ON]
    if bad:
        r.fail(
            path, f"unsupported retry_on {', '.join(repr(c) for c in bad)} (supported: {', '.join(RETRY_ON)})"
        )
    return conditions


def _retry_policy(r: _Reader, v: object, path: str) -> RetryPolicy:
    f = _Fields(r, v, path, ("retry_on", "num_retries", "per_try_timeout"))
    retry_on = f.req("retry_on", _retry_on)
    num_retries = f.opt("num_retries", _uint32, 1)
    per_try = f.opt("per_try_timeout", _duration_ge0, None)
    f.done()
    return RetryPolicy(retry_on, num_retries, per_try)


def _weighted_cluster(r: _Reader, v: object, path: str) -> WeightedCluster:
    f = _Fields(r, v, path, ("name", "weight"))
    name = f.req("name", _nonempty_str)
    weight = f.req("weight", _uint(1, _UINT32_MAX))
    f.done()
    r.cluster_refs.append((name, _join(path, "name")))
    return WeightedCluster(name, weight)


def _weighted_clusters(r: _Reader, v: object, path: str) -> tuple[WeightedCluster, ...]:
    f = _Fields(r, v, path, ("clusters",))
    clusters = f.req("clusters", _list(_weighted_cluster, min_items=1))
    f.done()
    return clusters


def _upgrade_config(r: _Reader, v: object, path: str) -> tuple[str, bool]:
    """``upgrade_configs[]``: ``upgrade_type`` (case-insensitive, as Envoy matches it) and ``enabled``
    (default true); upgrade ``filters`` and ``connect_config`` are outside the subset."""
    f = _Fields(r, v, path, ("upgrade_type", "enabled"))
    kind = f.req("upgrade_type", _header_name)
    enabled = f.opt("enabled", _bool, True)
    f.done()  # raises if upgrade_type failed
    return kind.lower(), enabled


def _route_action(r: _Reader, v: object, path: str) -> RouteAction:
    f = _Fields(
        r,
        v,
        path,
        (
            "cluster",
            "weighted_clusters",
            "prefix_rewrite",
            "host_rewrite_literal",
            "timeout",
            "retry_policy",
            "upgrade_configs",
            "request_mirror_policies",
            "rate_limits",
        ),
    )
    which = f.exactly_one("cluster", "weighted_clusters")
    cluster = f.req("cluster", _cluster_ref) if which == "cluster" else None
    weighted = f.req("weighted_clusters", _weighted_clusters) if which == "weighted_clusters" else ()
    action = RouteAction(
        cluster=cluster,
        weighted_clusters=weighted,
        prefix_rewrite=f.opt("prefix_rewrite", _path_value, None),
        host_rewrite_literal=f.opt("host_rewrite_literal", _host_value, None),
        timeout=f.opt("timeout", _duration_ge0, 15.0),
        retry_policy=f.opt("retry_policy", _retry_policy, None),
        upgrade_configs=f.opt("upgrade_configs", _list(_upgrade_config), ()),
        request_mirror_policies=f.opt("request_mirror_policies", _list(_mirror_policy), ()),
        rate_limits=f.opt("rate_limits", _list(_rate_limit), ()),
    )
    f.done()
    return action


def _mirror_policy(r: _Reader, v: object, path: str) -> tuple[str, FractionalPercent | None]:
    """``request_mirror_policies[]``: ``cluster`` and ``runtime_fraction`` (every request when absent);
    ``trace_sampled`` is accepted (no tracing here)."""
    f = _Fields(r, v, path, ("cluster", "runtime_fraction", "trace_sampled"))
    cluster = f.req("cluster", _cluster_ref)
    fraction = f.opt("runtime_fraction", _runtime_fractional_percent, None)
    f.opt("trace_sampled", _bool, None)
    f.done()
    return cluster, fraction


def _direct_response(r: _Reader, v: object, path: str) -> DirectResponse:
    f = _Fields(r, v, path, ("status", "body"))
    status = f.req("status", _uint(100, 599))
    body = f.opt("body", _inline_string, None)
    f.done()
    return DirectResponse(status, body)


def _route(r: _Reader, v: object, path: str) -> Route:
    f = _Fields(
        r,
        v,
        path,
        (
            "match",
            "route",
            "direct_response",
            "request_headers_to_add",
            "request_headers_to_remove",
            "typed_per_filter_config",
        ),
    )
    match = f.req("match", _route_match)
    which = f.exactly_one("route", "direct_response")
    action: RouteAction | DirectResponse | None = None
    if which == "route":
        action = f.req("route", _route_action)
    elif which == "direct_response":
        action = f.req("direct_response", _direct_response)
    to_add = f.opt("request_headers_to_add", _list(_header_value_option), ())
    to_remove = f.opt("request_headers_to_remove", _list(_header_name), ())
    per_filter = f.opt("typed_per_filter_config", _per_filter_configs, ())
    f.done()
    if action is None:  # unreachable: no action means f failed, so done() raised
        raise _Skip
    return Route(match, action, to_add, to_remove, per_filter)


def _virtual_host(r: _Reader, v: object, path: str) -> VirtualHost:
    f = _Fields(r, v, path, ("name", "domains", "routes", "typed_per_filter_config", "rate_limits"))
    name = f.req("name", _nonempty_str)
    domains = f.req("domains", _list(_nonempty_str, min_items=1))
    routes = f.opt("routes", _list(_route), ())
    per_filter = f.opt("typed_per_filter_config", _per_filter_configs, ())
    rate_limits = f.opt("rate_limits", _list(_rate_limit), ())
    f.done()
    return VirtualHost(name, domains, routes, per_filter, rate_limits)


def _route_config(r: _Reader, v: object, path: str) -> RouteConfiguration:
    f = _Fields(r, v, path, ("name", "virtual_hosts"))
    name = f.opt("name", _str, "")
    vhosts = f.opt("virtual_hosts", _list(_virtual_host), ())
    if vhosts:
        seen_names: dict[str, int] = {}
        seen_domains: dict[str, int] = {}
        for i, vh in enumerate(vhosts):
            if vh.name in seen_names:
                f.problem(
                    f"virtual_hosts[{i}].name",
                    f"duplicate virtual host name {vh.name!r} (also virtual_hosts[{seen_names[vh.name]}])",
                )
            seen_names.setdefault(vh.name, i)
            for j, d in enumerate(vh.domains):
                key = d.lower()
                if key in seen_domains:
                    f.problem(
                        f"virtual_hosts[{i}].domains[{j}]",
                        f"domain {d!r} is already served by virtual_hosts[{seen_domains[key]}]",
                    )
                seen_domains.setdefault(key, i)
    f.done()
    return RouteConfiguration(name, vhosts)
