"""Clusters and their endpoints (``cluster.v3``, ``endpoint.v3``): load balancing, health checks,
outlier detection, circuit breakers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from trio_yastack.tls.config import UpstreamTlsContext

from ._core import (
    Http2Options,
    SocketAddress,
    _address,
    _cluster_name,
    _extension_protocol_options,
    _host_value,
    _http2_options,
)
from ._names import CLUSTER_TYPES, DNS_LOOKUP_FAMILIES, LB_POLICIES, ClusterType, DnsLookupFamily, LbPolicy
from ._reader import (
    _duration_gt0,
    _empty_message,
    _enum,
    _Fields,
    _kind,
    _list,
    _nonempty_str,
    _positive_uint32,
    _Reader,
    _str,
    _uint,
    _uint32,
)
from ._tls import _upstream_tls


@dataclass(frozen=True, slots=True)
class LbEndpoint:
    """``lb_endpoints[]``: ``endpoint.address``, its ``load_balancing_weight`` (default 1), the
    endpoint's ``hostname`` (Envoy's: the Host of its health checks, shown in /clusters) and
    ``health_check_config`` (``port_value``, 0: the endpoint's own; ``hostname``)."""

    address: SocketAddress
    load_balancing_weight: int = 1
    hostname: str = ""
    health_check_port: int = 0
    health_check_hostname: str = ""


@dataclass(frozen=True, slots=True)
class LocalityLbEndpoints:
    """``endpoints[]``: one locality's endpoints, its ``priority`` (0 is tried first; Envoy's
    overprovisioning factor 1.4 spills traffic to the next priority as hosts fail) and its
    ``load_balancing_weight`` (used with ``common_lb_config.locality_weighted_lb_config``)."""

    lb_endpoints: tuple[LbEndpoint, ...]
    locality: str = ""  # region/zone/sub_zone, for /clusters
    load_balancing_weight: int = 1
    priority: int = 0


@dataclass(frozen=True, slots=True)
class ClusterLoadAssignment:
    """``load_assignment``: ``endpoints[]`` (localities) of ``lb_endpoints[]``."""

    cluster_name: str
    endpoints: tuple[LocalityLbEndpoints, ...]

    @property
    def addresses(self) -> tuple[SocketAddress, ...]:
        """Every endpoint address, localities flattened."""
        return tuple(e.address for locality in self.endpoints for e in locality.lb_endpoints)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """``health_checks[]`` with an ``http_health_check {path}``.  Envoy requires ``timeout``, ``interval``,
    ``unhealthy_threshold`` and ``healthy_threshold``, so there are no defaults."""

    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    path: str
    #: between checks of a cluster that has had no request yet (Envoy: 60 s); None: ``interval``
    no_traffic_interval: float | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """``outlier_detection`` with Envoy's defaults: eject after 5 consecutive 5xx, sweep every 10 s,
    eject for 30 s (times the ejection count), never more than 10% of hosts."""

    consecutive_5xx: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class CircuitBreakerThresholds:
    """``circuit_breakers.thresholds[]`` for priority DEFAULT, with Envoy's defaults 1024/1024/1024/3."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass(frozen=True, slots=True)
class Cluster:
    """``clusters[]``.  Envoy's defaults: ``type`` STATIC, ``connect_timeout`` 5 s, ``lb_policy``
    ROUND_ROBIN, ``dns_lookup_family`` AUTO, circuit breakers :class:`CircuitBreakerThresholds` ()."""

    name: str
    load_assignment: ClusterLoadAssignment
    type: ClusterType = "STATIC"
    connect_timeout: float = 5.0
    lb_policy: LbPolicy = "ROUND_ROBIN"
    dns_lookup_family: DnsLookupFamily = "AUTO"
    health_checks: tuple[HealthCheck, ...] = ()
    outlier_detection: OutlierDetection | None = None
    circuit_breakers: CircuitBreakerThresholds = field(default_factory=CircuitBreakerThresholds)
    transport_socket: UpstreamTlsContext | None = None
    #: ``common_lb_config.healthy_panic_threshold`` (percent): below it, route to every host (Envoy's
    #: panic mode); None when not set, where this proxy fails fast instead (see l7/upstream.py)
    healthy_panic_threshold: float | None = None
    #: ``common_lb_config.locality_weighted_lb_config``: pick a locality by its weight first
    locality_weighted: bool = False
    #: ``maglev_lb_config.table_size`` (a prime; Envoy's default 65537)
    maglev_table_size: int = 65537
    #: HTTP/2 to the hosts (``typed_extension_protocol_options`` HttpProtocolOptions
    #: ``explicit_http_config.http2_protocol_options``, or the deprecated cluster-level field); None: HTTP/1.1
    http2: Http2Options | None = None


def _health_check_config(r: _Reader, v: object, path: str) -> tuple[int, str]:
    f = _Fields(r, v, path, ("port_value", "hostname"))
    port = f.opt("port_value", _uint(0, 65535), 0)
    hostname = f.opt("hostname", _host_value, "")
    f.done()
    return port, hostname


def _lb_endpoint(dns: bool) -> Callable[[_Reader, Any, str], LbEndpoint]:
    address = _address(dns=dns, min_port=1)

    def endpoint(r: _Reader, v: object, path: str) -> LbEndpoint:
        f = _Fields(r, v, path, ("address", "hostname", "health_check_config"))
        a = f.req("address", address)
        hostname = f.opt("hostname", _host_value, "")
        hc = f.opt("health_check_config", _health_check_config, (0, ""))
        f.done()
        return LbEndpoint(a, 1, hostname, *hc)

    def parse(r: _Reader, v: object, path: str) -> LbEndpoint:
        f = _Fields(r, v, path, ("endpoint", "load_balancing_weight"))
        e = f.req("endpoint", endpoint)
        weight = f.opt("load_balancing_weight", _positive_uint32, 1)
        f.done()
        return replace(e, load_balancing_weight=weight)

    return parse


def _locality_name(r: _Reader, v: object, path: str) -> str:
    f = _Fields(r, v, path, ("region", "zone", "sub_zone"))
    parts = [f.opt(k, _str, "") for k in ("region", "zone", "sub_zone")]
    f.done()
    return "/".join(parts)


def _load_assignment(dns: bool) -> Callable[[_Reader, Any, str], ClusterLoadAssignment]:
    def locality(r: _Reader, v: object, path: str) -> LocalityLbEndpoints:
        f = _Fields(r, v, path, ("lb_endpoints", "locality", "load_balancing_weight", "priority"))
        eps = f.req("lb_endpoints", _list(_lb_endpoint(dns), min_items=1))
        out = LocalityLbEndpoints(
            eps,
            locality=f.opt("locality", _locality_name, ""),
            load_balancing_weight=f.opt("load_balancing_weight", _positive_uint32, 1),
            priority=f.opt("priority", _uint(0, 127), 0),
        )
        f.done()
        return out

    def parse(r: _Reader, v: object, path: str) -> ClusterLoadAssignment:
        f = _Fields(r, v, path, ("cluster_name", "endpoints"))
        name = f.req("cluster_name", _nonempty_str)
        endpoints = f.req("endpoints", _list(locality, min_items=1))
        if endpoints is not None:
            # Envoy: priorities must be contiguous from 0
            levels = sorted({e.priority for e in endpoints})
            if levels != list(range(len(levels))):
                f.problem("endpoints", f"priorities {levels} are not contiguous from 0 (Envoy rejects gaps)")
        f.done()
        return ClusterLoadAssignment(name, endpoints)

    return parse


def _http_health_check(r: _Reader, v: object, path: str) -> str:
    f = _Fields(r, v, path, ("path",))
    p = f.req("path", _nonempty_str)
    if p is not None and not p.startswith("/"):
        f.problem("path", f"{p!r} must start with '/'")
    f.done()
    return p


def _health_check(r: _Reader, v: object, path: str) -> HealthCheck:
    f = _Fields(
        r,
        v,
        path,
        (
            "timeout",
            "interval",
            "unhealthy_threshold",
            "healthy_threshold",
            "http_health_check",
            "no_traffic_interval",
        ),
    )
    hc = HealthCheck(
        timeout=f.req("timeout", _duration_gt0),
        interval=f.req("interval", _duration_gt0),
        unhealthy_threshold=f.req("unhealthy_threshold", _uint32),
        healthy_threshold=f.req("healthy_threshold", _uint32),
        path=f.req("http_health_check", _http_health_check),
        no_traffic_interval=f.opt("no_traffic_interval", _duration_gt0, None),
    )
    f.done()
    return hc


def _outlier_detection(r: _Reader, v: object, path: str) -> OutlierDetection:
    f = _Fields(r, v, path, ("consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent"))
    od = OutlierDetection(
        consecutive_5xx=f.opt("consecutive_5xx", _uint32, 5),
        interval=f.opt("interval", _duration_gt0, 10.0),
        base_ejection_time=f.opt("base_ejection_time", _duration_gt0, 30.0),
        max_ejection_percent=f.opt("max_ejection_percent", _uint(0, 100), 10),
    )
    f.done()
    return od


def _thresholds(r: _Reader, v: object, path: str) -> CircuitBreakerThresholds:
    f = _Fields(
        r, v, path, ("priority", "max_connections", "max_pending_requests", "max_requests", "max_retries")
    )
    if f.has("priority") and f.values["priority"] != "DEFAULT":
        f.problem("priority", f"{f.values['priority']!r} is not supported: only priority DEFAULT")
    t = CircuitBreakerThresholds(
        max_connections=f.opt("max_connections", _uint32, 1024),
        max_pending_requests=f.opt("max_pending_requests", _uint32, 1024),
        max_requests=f.opt("max_requests", _uint32, 1024),
        max_retries=f.opt("max_retries", _uint32, 3),
    )
    f.done()
    return t


def _circuit_breakers(r: _Reader, v: object, path: str) -> CircuitBreakerThresholds:
    f = _Fields(r, v, path, ("thresholds",))
    thresholds = f.opt("thresholds", _list(_thresholds), ())
    if thresholds is not None and len(thresholds) > 1:
        f.problem("thresholds[1]", "only one thresholds entry (priority DEFAULT) is supported")
    f.done()
    return thresholds[0] if thresholds else CircuitBreakerThresholds()


def _cluster(r: _Reader, v: object, path: str) -> Cluster:
    f = _Fields(
        r,
        v,
        path,
        (
            "name",
            "type",
            "connect_timeout",
            "lb_policy",
            "dns_lookup_family",
            "load_assignment",
            "health_checks",
            "outlier_detection",
            "circuit_breakers",
            "transport_socket",
            "common_lb_config",
            "maglev_lb_config",
            "typed_extension_protocol_options",
            "http2_protocol_options",
        ),
    )
    name = f.req("name", _cluster_name)
    ctype: ClusterType = f.opt("type", _enum(CLUSTER_TYPES), "STATIC")
    dns = ctype in ("STRICT_DNS", "LOGICAL_DNS")
    if f.has("dns_lookup_family") and not dns:
        f.problem("dns_lookup_family", "only STRICT_DNS and LOGICAL_DNS clusters resolve names")
    panic, locality_weighted = f.opt("common_lb_config", _common_lb_config, (None, False)) or (None, False)
    maglev_size = f.opt("maglev_lb_config", _maglev_lb_config, 65537)
    c = Cluster(
        name=name,
        type=ctype,
        connect_timeout=f.opt("connect_timeout", _duration_gt0, 5.0),
        lb_policy=f.opt("lb_policy", _enum(LB_POLICIES), "ROUND_ROBIN"),
        dns_lookup_family=f.opt("dns_lookup_family", _enum(DNS_LOOKUP_FAMILIES), "AUTO"),
        load_assignment=f.req("load_assignment", _load_assignment(dns)),
        health_checks=f.opt("health_checks", _list(_health_check), ()),
        outlier_detection=f.opt("outlier_detection", _outlier_detection, None),
        circuit_breakers=f.opt("circuit_breakers", _circuit_breakers, CircuitBreakerThresholds()),
        transport_socket=f.opt("transport_socket", _upstream_tls, None),
        healthy_panic_threshold=panic,
        locality_weighted=locality_weighted,
        maglev_table_size=maglev_size,
    )
    if f.has("typed_extension_protocol_options") and f.has("http2_protocol_options"):
        f.problem(
            "http2_protocol_options", "set in typed_extension_protocol_options already (one of the two)"
        )
    http2 = f.opt("typed_extension_protocol_options", _extension_protocol_options, None)
    http2 = f.opt("http2_protocol_options", _http2_options, http2)  # deprecated, still accepted by Envoy
    if http2 is not None:
        c = replace(c, http2=http2)
    if ctype == "LOGICAL_DNS" and c.load_assignment is not None:
        eps = c.load_assignment.endpoints
        if len(eps) != 1 or len(eps[0].lb_endpoints) != 1:
            f.problem(
                "load_assignment", "a LOGICAL_DNS cluster takes exactly one endpoint (as Envoy requires)"
            )
    if f.has("maglev_lb_config") and c.lb_policy != "MAGLEV":
        f.problem("maglev_lb_config", "only for lb_policy MAGLEV")
    f.done()
    return c


def _percent_value(r: _Reader, v: object, path: str) -> float:
    """A ``type.v3.Percent`` ``{value}`` in 0..100."""
    f = _Fields(r, v, path, ("value",))
    value = f.req("value", _number)
    if value is not None and not 0 <= value <= 100:
        f.problem("value", f"{value} is out of range 0..100")
    f.done()
    return float(value)


def _number(r: _Reader, v: object, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        r.fail(path, f"expected a number, got {_kind(v)}")
    return float(v)


def _common_lb_config(r: _Reader, v: object, path: str) -> tuple[float | None, bool]:
    f = _Fields(r, v, path, ("healthy_panic_threshold", "locality_weighted_lb_config"))
    panic = f.opt("healthy_panic_threshold", _percent_value, None)
    weighted = f.has("locality_weighted_lb_config")
    if weighted:
        f.req("locality_weighted_lb_config", _empty_message)
    f.done()
    return panic, weighted


def _maglev_lb_config(r: _Reader, v: object, path: str) -> int:
    f = _Fields(r, v, path, ("table_size",))
    size = f.opt("table_size", _uint(2, 5_000_011), 65537)
    if size is not None and (size < 2 or any(size % d == 0 for d in range(2, int(size**0.5) + 1))):
        f.problem("table_size", f"{size} is not a prime (Envoy requires one)")
    f.done()
    return size
