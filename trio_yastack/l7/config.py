"""The proxy's configuration: a documented subset of Envoy's v3 static bootstrap, as typed frozen objects.

Why Envoy's format: operators already know it, its field names are documented, and a config that
loads here should mean the same thing to Envoy (the subset is a subset, not a dialect).  Why a strict
subset: a proxy that silently ignores a field it does not implement (a ``safe_regex`` match, a
``HIGH`` priority circuit breaker) routes traffic differently from what the operator wrote.  So every
field outside the subset is an error naming its YAML path, e.g.::

    static_resources.listeners[0].filter_chains[1].filters[0].typed_config.route_config
        .virtual_hosts[0].routes[2].match.safe_regex: unsupported field 'safe_regex' (...)

and every problem of a document is reported at once (:class:`ConfigError` ``.problems``), so a
``yastack check-config`` run shows everything to fix, not one thing per run.

The subset (Envoy v3 field names)::

    admin: {address: {socket_address: {address, port_value}}, access_log: [AccessLog], access_log_path}
    layered_runtime: {layers[]: {name, static_layer}}
    static_resources:
      secrets[]: name, tls_certificate | validation_context (for *_sds_secret_config(s), which may
        also read an SDS file: sds_config.path_config_source.path)
      listeners[]: name (optional), address.socket_address (protocol TCP), listener_filters[]
        (tls_inspector only),
        filter_chains[]: name, filter_chain_match {server_names[], transport_protocol,
          application_protocols[]}, transport_socket (DownstreamTlsContext: certificates from files or
          inline, validation_context {trusted_ca, match_typed_subject_alt_names}, alpn_protocols,
          tls_params, require_client_certificate),
          filters[]: exactly one of envoy.filters.network.http_connection_manager | tcp_proxy
            http_connection_manager: http_filters[] (cache in memory, compressor with gzip, cors,
              fault, local_ratelimit, then the router), upgrade_configs, local_reply_config,
              route_config with typed_per_filter_config on virtual hosts and routes,
              request_mirror_policies
      clusters[]: name, type (STATIC | STRICT_DNS | LOGICAL_DNS), connect_timeout, lb_policy (ROUND_ROBIN,
        LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV), dns_lookup_family, load_assignment (localities with
        priority and load_balancing_weight; endpoints with load_balancing_weight, hostname,
        health_check_config), common_lb_config {healthy_panic_threshold, locality_weighted_lb_config},
        maglev_lb_config, health_checks[] (http_health_check, no_traffic_interval), outlier_detection,
        circuit_breakers (priority DEFAULT), transport_socket (UpstreamTlsContext)

Each class below says which fields it reads and Envoy's default for each absent one.  Durations are
protobuf's JSON form (``"5s"``, ``"0.25s"``, ``"1.5s"``), read into float seconds.  A document is read
the way Envoy reads it, by Envoy's own schema (:mod:`trio_yastack.l7.envoy`, from ``xds-protos``):
lowerCamelCase names as well as snake_case ones, integers written as strings (``port_value: "80"``),
durations as ``{seconds, nanos}``, enum names in any case.  Beyond those spellings values are typed as
protobuf's JSON mapping types them (``name: 5`` is an error, not coerced), and ``null`` means "absent"
as it does for protobuf.  Errors name the canonical (snake_case) path.

Where this module is stricter than Envoy, it says so: a cluster must have endpoints, a retry policy
must name its ``retry_on`` conditions, a filter chain holds exactly one (terminal) filter,
``http_filters`` hold each filter once and end with the router, and ``require_client_certificate``
needs a ``trusted_ca``.  These catch configs that Envoy accepts but that cannot do anything useful
with the filters this proxy has.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib.util
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import yaml

from trio_yastack.l7.envoy import normalize
from trio_yastack.l7.envoy import normalize_any as envoy_normalize_any
from trio_yastack.l7.local_reply import (
    KNOWN_OPERATORS,
    LOG_OPERATORS,
    OPERATOR_RE,
    FormatString,
    Mapper,
    ReplyFilter,
)
from trio_yastack.tls.config import (
    TLS_VERSIONS,
    CommonTlsContext,
    DataSource,
    DownstreamTlsContext,
    SubjectAltNameMatcher,
    TlsCertificate,
    TlsParams,
    UpstreamTlsContext,
)

__all__ = [
    "AccessLog",
    "Admin",
    "Bootstrap",
    "CircuitBreakerThresholds",
    "Cluster",
    "ClusterLoadAssignment",
    "CommonTlsContext",
    "Compressor",
    "CompressorPerRoute",
    "ConfigError",
    "Cors",
    "CorsPolicy",
    "DataSource",
    "DirectResponse",
    "DownstreamTlsContext",
    "ExtAuthz",
    "ExtAuthzPerRoute",
    "FaultAbort",
    "FaultDelay",
    "FilterChain",
    "FractionalPercent",
    "GrpcWeb",
    "HeaderMatcher",
    "HeaderValueOption",
    "HealthCheck",
    "Http2Options",
    "HttpCache",
    "HttpConnectionManager",
    "HttpFault",
    "HttpFilter",
    "HttpFilterConfig",
    "JwtAuthentication",
    "JwtPerRoute",
    "JwtProvider",
    "JwtRemoteJwks",
    "JwtRequirement",
    "JwtRule",
    "LbEndpoint",
    "Listener",
    "LocalRateLimit",
    "LocalityLbEndpoints",
    "Lua",
    "LuaPerRoute",
    "OutlierDetection",
    "PerRouteConfig",
    "Problem",
    "Rbac",
    "RbacHeaderMatcher",
    "RbacMatcher",
    "RbacPolicy",
    "RbacRules",
    "RetryPolicy",
    "Route",
    "RouteAction",
    "RouteConfiguration",
    "RouteMatch",
    "RouterFilter",
    "RuntimeValue",
    "SocketAddress",
    "StringMatcher",
    "SubjectAltNameMatcher",
    "TcpProxy",
    "TlsCertificate",
    "TlsParams",
    "TokenBucket",
    "UpstreamTlsContext",
    "VirtualHost",
    "WeightedCluster",
    "format_problems",
    "load_config",
    "load_config_file",
    "load_config_or_report",
    "parse_bootstrap",
    "parse_duration",
]

T = TypeVar("T")
D = TypeVar("D")
E = TypeVar("E", bound=str)

# --- the names and type URLs this subset supports (Envoy's own spellings) ---

HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_NAME = "envoy.filters.http.router"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_PROTOCOL_OPTIONS_NAME = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_TYPE = f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS_NAME}"
CORS_NAME = "envoy.filters.http.cors"
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FAULT_NAME = "envoy.filters.http.fault"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LOCAL_RATELIMIT_NAME = "envoy.filters.http.local_ratelimit"
LOCAL_RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
COMPRESSOR_NAME = "envoy.filters.http.compressor"
COMPRESSOR_TYPE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
COMPRESSOR_PER_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
)
GZIP_COMPRESSOR_TYPE = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
CACHE_NAME = "envoy.filters.http.cache"
CACHE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig"
SIMPLE_CACHE_TYPE = (
    "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
)
EXT_AUTHZ_NAME = "envoy.filters.http.ext_authz"
EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
GRPC_WEB_NAME = "envoy.filters.http.grpc_web"
GRPC_WEB_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
JWT_AUTHN_NAME = "envoy.filters.http.jwt_authn"
JWT_AUTHN_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
JWT_AUTHN_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
LUA_NAME = "envoy.filters.http.lua"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
LUA_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
RBAC_NAME = "envoy.filters.http.rbac"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
#: the HTTP filters of the subset, by name and the type of their ``typed_config``
HTTP_FILTER_TYPES = {
    CACHE_NAME: CACHE_TYPE,
    COMPRESSOR_NAME: COMPRESSOR_TYPE,
    CORS_NAME: CORS_TYPE,
    EXT_AUTHZ_NAME: EXT_AUTHZ_TYPE,
    FAULT_NAME: FAULT_TYPE,
    GRPC_WEB_NAME: GRPC_WEB_TYPE,
    JWT_AUTHN_NAME: JWT_AUTHN_TYPE,
    LOCAL_RATELIMIT_NAME: LOCAL_RATELIMIT_TYPE,
    LUA_NAME: LUA_TYPE,
    RBAC_NAME: RBAC_TYPE,
    ROUTER_NAME: ROUTER_TYPE,
}
#: what ``typed_per_filter_config`` may hold for each filter (Envoy's per-route config types)
PER_ROUTE_TYPES = {
    COMPRESSOR_NAME: COMPRESSOR_PER_ROUTE_TYPE,
    CORS_NAME: CORS_POLICY_TYPE,
    EXT_AUTHZ_NAME: EXT_AUTHZ_PER_ROUTE_TYPE,
    FAULT_NAME: FAULT_TYPE,
    JWT_AUTHN_NAME: JWT_AUTHN_PER_ROUTE_TYPE,
    LOCAL_RATELIMIT_NAME: LOCAL_RATELIMIT_TYPE,
    LUA_NAME: LUA_PER_ROUTE_TYPE,
    RBAC_NAME: RBAC_PER_ROUTE_TYPE,
}
TLS_NAME = "envoy.transport_sockets.tls"
DOWNSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
STDOUT_LOG_NAME = "envoy.access_loggers.stdout"
STDOUT_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
FILE_LOG_NAME = "envoy.access_loggers.file"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

RuntimeValue = bool | int | float | str | None
LbPolicy = Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"]
ClusterType = Literal["STATIC", "STRICT_DNS", "LOGICAL_DNS"]
CodecType = Literal["AUTO", "HTTP1", "HTTP2"]
DnsLookupFamily = Literal["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"]
AppendAction = Literal[
    "APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS"
]

LB_POLICIES: tuple[LbPolicy, ...] = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")
CLUSTER_TYPES: tuple[ClusterType, ...] = ("STATIC", "STRICT_DNS", "LOGICAL_DNS")
CODEC_TYPES: tuple[CodecType, ...] = ("AUTO", "HTTP1", "HTTP2")
DNS_LOOKUP_FAMILIES: tuple[DnsLookupFamily, ...] = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx")
APPEND_ACTIONS: tuple[AppendAction, ...] = (
    "APPEND_IF_EXISTS_OR_ADD",
    "ADD_IF_ABSENT",
    "OVERWRITE_IF_EXISTS_OR_ADD",
    "OVERWRITE_IF_EXISTS",
)

#: protobuf's Duration range (google/protobuf/duration.proto): about 10,000 years
_MAX_DURATION_SECONDS = 315_576_000_000
_DURATION_RE = re.compile(r"(-?)(\d+)(?:\.(\d{1,9}))?s")
_UINT32_MAX = 2**32 - 1


# --- problems ---


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (a YAML path such as ``static_resources.clusters[0].name``,
    empty for the document itself) and what.  ``line`` is set only for YAML syntax errors, where no
    path exists yet."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "<document>"
        if self.line is not None:
            where = f"line {self.line}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A document is not a valid config: ``problems`` lists every problem found, in document order
    except that cross-reference checks (unknown clusters, duplicate names) come last.

    One exception for all of them (rather than the first) because fixing a config one error per run
    is slow, and a ``check-config`` that stops early hides problems."""

    def __init__(self, problems: list[Problem], source: str = "<string>") -> None:
        self.problems = problems
        self.source = source
        super().__init__(format_problems(self))


def format_problems(error: ConfigError) -> str:
    """The text ``yastack check-config`` prints on failure: one problem per line, under the source."""
    n = len(error.problems)
    lines = [f"{error.source}: {n} problem{'s' if n != 1 else ''}"]
    lines.extend(f"  {problem}" for problem in error.problems)
    return "\n".join(lines)


# --- the objects ---


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """``socket_address {address, port_value}``.  For listeners, the admin endpoint and STATIC clusters
    ``address`` is an IP literal; for STRICT_DNS clusters it is a host name to resolve."""

    address: str
    port_value: int

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port_value}"
        return f"{self.address}:{self.port_value}"


@dataclass(frozen=True, slots=True)
class AccessLog:
    """An access logger: ``envoy.access_loggers.stdout`` (``kind="stdout"``) or
    ``envoy.access_loggers.file`` with its required ``path`` (``kind="file"``), in Envoy's default
    format or its ``log_format`` (text or JSON, the operators of
    :data:`trio_yastack.l7.access_log.LOG_OPERATORS`)."""

    kind: Literal["stdout", "file"]
    path: str | None = None
    log_format: FormatString | None = None


@dataclass(frozen=True, slots=True)
class Admin:
    """``admin``: where the admin endpoint listens, and its access logs (none by default)."""

    address: SocketAddress
    access_log: tuple[AccessLog, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """``match.headers[]``.  ``kind`` says how ``name`` is matched: ``exact`` / ``prefix`` (from
    ``exact_match`` or ``string_match {exact | prefix, ignore_case}``), ``present`` (``present_match:
    true``, and Envoy's meaning of a matcher with no match specifier) or ``absent`` (``present_match:
    false``)."""

    name: str
    kind: Literal["exact", "prefix", "present", "absent"]
    value: str | None = None
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """``match``: exactly one of ``prefix`` / ``path`` (exact path), and header matchers (all must match)."""

    prefix: str | None = None
    path: str | None = None
    headers: tuple[HeaderMatcher, ...] = ()


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


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """``direct_response``: answer ``status`` (100-599) with ``body.inline_string`` (empty when absent)."""

    status: int
    body: str | None = None


@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    """``request_headers_to_add[]``: ``header {key, value}`` and what to do when the header exists.
    ``append_action`` defaults to Envoy's ``APPEND_IF_EXISTS_OR_ADD``; the deprecated ``append: true``
    means the same and ``append: false`` means ``OVERWRITE_IF_EXISTS_OR_ADD``."""

    key: str
    value: str
    append_action: AppendAction = "APPEND_IF_EXISTS_OR_ADD"


@dataclass(frozen=True, slots=True)
class FractionalPercent:
    """A ``FractionalPercent`` (``numerator`` of ``denominator`` 100, 10 000 or 1 000 000), or a
    ``RuntimeFractionalPercent``'s ``default_value`` with its ``runtime_key``.  A request is picked
    when a uniform draw in ``[0, denominator)`` falls below ``numerator``, as Envoy draws."""

    numerator: int = 0
    denominator: int = 100
    runtime_key: str | None = None

    @property
    def always(self) -> bool:
        return self.numerator >= self.denominator

    @property
    def never(self) -> bool:
        return self.numerator == 0


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """A ``StringMatcher``: ``exact`` / ``prefix`` / ``suffix`` / ``contains`` / ``safe_regex`` (the whole
    value must match, as RE2's full match in Envoy), optionally ``ignore_case`` (not for regexes)."""

    kind: Literal["exact", "prefix", "suffix", "contains", "safe_regex"]
    value: str
    ignore_case: bool = False

    def matches(self, text: str) -> bool:
        if self.kind == "safe_regex":
            return re.fullmatch(self.value, text) is not None
        value, text = (self.value.lower(), text.lower()) if self.ignore_case else (self.value, text)
        if self.kind == "exact":
            return text == value
        if self.kind == "prefix":
            return text.startswith(value)
        if self.kind == "suffix":
            return text.endswith(value)
        return value in text


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """``envoy.extensions.filters.http.cors.v3.CorsPolicy`` (in ``typed_per_filter_config`` of a virtual
    host or route).  Each attribute left unset (None) is taken from the less specific policy, as Envoy
    does: route first, then virtual host.  ``filter_enabled`` absent means enabled (Envoy's default);
    ``shadow_enabled`` is accepted and, with no shadow statistics here, does nothing."""

    allow_origin: tuple[StringMatcher, ...] = ()
    allow_methods: str | None = None
    allow_headers: str | None = None
    expose_headers: str | None = None
    max_age: str | None = None
    allow_credentials: bool | None = None
    filter_enabled: FractionalPercent | None = None


@dataclass(frozen=True, slots=True)
class Cors:
    """The ``envoy.filters.http.cors`` filter: nothing to configure; the policies live on virtual hosts
    and routes."""


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """``delay``: a ``fixed_delay``, or ``header_delay`` (the milliseconds of the request's
    ``x-envoy-fault-delay-request``), applied to ``percentage`` of requests (Envoy's default: none)."""

    fixed_delay: float | None
    percentage: FractionalPercent = field(default_factory=FractionalPercent)


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """``abort``: ``http_status`` (200-599), or ``header_abort`` (the status in the request's
    ``x-envoy-fault-abort-request``), for ``percentage`` of requests (Envoy's default: none)."""

    http_status: int | None
    percentage: FractionalPercent = field(default_factory=FractionalPercent)


@dataclass(frozen=True, slots=True)
class HttpFault:
    """``envoy.filters.http.fault`` (and its per-route override, the same type).  Delay first, then
    abort, as Envoy injects them; ``max_active_faults`` bounds faults in flight (unbounded by default);
    ``headers`` must all match for a request to be eligible; runtime keys as in Envoy
    (``fault.http.abort.abort_percent``, ``fault.http.abort.http_status``,
    ``fault.http.delay.fixed_delay_percent``, ``fault.http.delay.fixed_duration_ms``)."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    max_active_faults: int | None = None
    headers: tuple[HeaderMatcher, ...] = ()
    upstream_cluster: str | None = None


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``token_bucket``: starts full with ``max_tokens``; every ``fill_interval`` adds ``tokens_per_fill``
    (default 1) up to ``max_tokens``."""

    max_tokens: int
    fill_interval: float
    tokens_per_fill: int = 1


@dataclass(frozen=True, slots=True)
class LocalRateLimit:
    """``envoy.filters.http.local_ratelimit`` (and its per-route override, the same type, with a bucket
    of its own).  Envoy's defaults: ``filter_enabled`` and ``filter_enforced`` 0% (the filter does
    nothing until both are set), ``status`` 429, one bucket shared by all connections."""

    stat_prefix: str
    token_bucket: TokenBucket | None = None
    filter_enabled: FractionalPercent = field(default_factory=FractionalPercent)
    filter_enforced: FractionalPercent = field(default_factory=FractionalPercent)
    status: int = 429
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    per_connection: bool = False


#: Envoy's default ``content_type`` list of the compressor
COMPRESSIBLE_TYPES = (
    "application/javascript",
    "application/json",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/css",
    "text/html",
    "text/plain",
    "text/xml",
)


@dataclass(frozen=True, slots=True)
class Compressor:
    """``envoy.filters.http.compressor`` with the gzip library (the only one here).  Envoy's defaults:
    responses of at least 30 bytes (``min_content_length``) of the types :data:`COMPRESSIBLE_TYPES`,
    to clients whose ``Accept-Encoding`` takes gzip; a strong ``ETag`` is weakened, or with
    ``disable_on_etag_header`` the response is left alone.  Gzip: ``compression_level`` (zlib's: -1 is
    its default, 6), ``memory_level`` 5, ``window_bits`` 12.  ``enabled`` is the response direction's
    ``RuntimeFeatureFlag`` (``runtime_key`` read from the runtime)."""

    compression_level: int = -1
    memory_level: int = 5
    window_bits: int = 12
    strategy: int = 0
    min_content_length: int = 30
    content_types: tuple[str, ...] = COMPRESSIBLE_TYPES
    disable_on_etag_header: bool = False
    enabled: bool = True
    enabled_runtime_key: str | None = None


@dataclass(frozen=True, slots=True)
class HttpCache:
    """``envoy.filters.http.cache`` with Envoy's in-memory ``SimpleHttpCache``: GET responses with an
    explicit freshness lifetime (``s-maxage`` or ``max-age``) are kept and served from memory while
    fresh.  ``allowed_vary_headers``: the only headers a cached response may ``Vary`` on;
    ``max_body_bytes`` (0: Envoy's "no limit"; here at most 1 MiB per entry);
    ``ignore_request_cache_control_header``."""

    allowed_vary_headers: tuple[StringMatcher, ...] = ()
    max_body_bytes: int = 0
    ignore_request_cache_control_header: bool = False


@dataclass(frozen=True, slots=True)
class CompressorPerRoute:
    """``CompressorPerRoute``: ``disabled`` turns the compressor off on a route or virtual host."""

    disabled: bool


RbacKind = Literal[
    "any",
    "and",
    "or",
    "not",
    "header",
    "url_path",
    "destination_ip",
    "destination_port",
    "destination_port_range",
    "authenticated",
    "remote_ip",
    "direct_remote_ip",
]


@dataclass(frozen=True, slots=True)
class RbacHeaderMatcher:
    """A ``HeaderMatcher`` as RBAC reads it (``config.route.v3.HeaderMatcher``, every match
    specifier): ``string`` matches the header's values joined with ``,`` (Envoy's rule for a header
    given more than once); None with ``present`` set is ``present_match``; ``invert`` is
    ``invert_match``.  Pseudo-headers (``:path``, ``:method``, ``:authority``) can be named."""

    name: str
    string: StringMatcher | None = None
    present: bool = True
    invert: bool = False


@dataclass(frozen=True, slots=True)
class RbacMatcher:
    """One ``Permission`` or ``Principal`` (both are trees of the same shape): ``kind`` names the
    oneof that is set.  ``children``: ``and_rules``/``or_rules``/``and_ids``/``or_ids`` (one child for
    ``not_rule``/``not_id``); ``header``; ``string`` for ``url_path`` (the path without its query),
    ``requested_server_name`` and ``authenticated.principal_name`` (None: any authenticated peer);
    ``network`` for the CIDR kinds; ``ports`` (``[start, end)``) for the port kinds."""

    kind: RbacKind
    children: tuple[RbacMatcher, ...] = ()
    header: RbacHeaderMatcher | None = None
    string: StringMatcher | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ports: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class RbacPolicy:
    """``policies.<name>``: matches when any permission and any principal match."""

    name: str
    permissions: tuple[RbacMatcher, ...]
    principals: tuple[RbacMatcher, ...]


@dataclass(frozen=True, slots=True)
class RbacRules:
    """``config.rbac.v3.RBAC``: ``ALLOW`` lets a request through when a policy matches, ``DENY``
    when none does, ``LOG`` always (Envoy only marks the request for its access log)."""

    action: Literal["ALLOW", "DENY", "LOG"]
    policies: tuple[RbacPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class Rbac:
    """``envoy.filters.http.rbac`` (and, through ``RBACPerRoute``, its per-route replacement: a
    per-route config without ``rbac`` turns the filter off there).  ``rules`` absent: every request
    goes on; ``shadow_rules`` are evaluated and counted (``shadow_allowed``/``shadow_denied``) but
    never enforced; statistics under ``rbac.<rules_stat_prefix>``."""

    rules: RbacRules | None = None
    shadow_rules: RbacRules | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""


@dataclass(frozen=True, slots=True)
class JwtRemoteJwks:
    """``remote_jwks``: the JWKS fetched with a GET of ``uri`` from ``cluster`` (within ``timeout``),
    kept for ``cache_duration`` (Envoy's default 10 minutes)."""

    uri: str
    cluster: str
    timeout: float = 1.0
    cache_duration: float = 600.0


@dataclass(frozen=True, slots=True)
class JwtProvider:
    """``providers.<name>`` (``JwtProvider``).  Where the token is looked for: ``from_headers``
    (name, value prefix), ``from_params``, ``from_cookies``; none given: ``Authorization: Bearer``
    and the ``access_token`` query parameter, as Envoy.  ``forward`` keeps the token's header on the
    request (Envoy removes it by default); ``forward_payload_header`` adds the payload (base64url,
    unpadded unless ``pad_forward_payload_header``); ``claim_to_headers`` copies claims into
    headers.  ``clock_skew_seconds``: Envoy's default 60."""

    name: str
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    local_jwks: DataSource | None = None
    remote_jwks: JwtRemoteJwks | None = None
    forward: bool = False
    from_headers: tuple[tuple[str, str], ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_payload_header: str = ""
    pad_forward_payload_header: bool = False
    clock_skew_seconds: int = 60
    claim_to_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class JwtRequirement:
    """``JwtRequirement``: ``kind`` ``provider`` (``provider_name``, with ``audiences`` replacing the
    provider's for ``provider_and_audiences``), ``any``/``all`` (``requirements``),
    ``allow_missing`` or ``allow_missing_or_failed``."""

    kind: Literal["provider", "any", "all", "allow_missing", "allow_missing_or_failed"]
    provider: str = ""
    audiences: tuple[str, ...] | None = None
    requirements: tuple[JwtRequirement, ...] = ()


@dataclass(frozen=True, slots=True)
class JwtRule:
    """``rules[]``: the first whose ``match`` (a route match: prefix or path, headers) takes the
    request decides what it needs (``requires`` absent: nothing)."""

    match: RouteMatch
    requires: JwtRequirement | None = None


@dataclass(frozen=True, slots=True)
class JwtAuthentication:
    """``envoy.filters.http.jwt_authn``: providers by name, rules tried in order, named requirements
    for ``PerRouteConfig.requirement_name``; ``bypass_cors_preflight`` lets CORS preflights through."""

    providers: tuple[JwtProvider, ...] = ()
    rules: tuple[JwtRule, ...] = ()
    requirement_map: tuple[tuple[str, JwtRequirement], ...] = ()
    bypass_cors_preflight: bool = False


@dataclass(frozen=True, slots=True)
class JwtPerRoute:
    """``jwt_authn``'s ``PerRouteConfig``: ``disabled``, or the ``requirement_name`` of the
    filter's ``requirement_map`` that this route needs (in place of the rules)."""

    disabled: bool = False
    requirement_name: str | None = None


@dataclass(frozen=True, slots=True)
class ExtAuthz:
    """``envoy.filters.http.ext_authz``: asks an authorization service about each request.

    ``kind`` "http": ``http_service`` (``server_uri`` with its cluster and timeout, ``path_prefix``,
    ``authorization_request``/``authorization_response``); "grpc": ``grpc_service`` with
    ``envoy_grpc.cluster_name`` (``target`` None) or ``google_grpc.target_uri`` (``target``), calling
    ``envoy.service.auth.v3.Authorization/Check``.  Header lists are ``StringMatcher`` patterns:
    ``allowed_headers`` (None: Envoy's default set), ``allowed_upstream_headers`` (+ ``_to_append``),
    ``allowed_client_headers`` (None: all of a denial's headers) and
    ``allowed_client_headers_on_success``.  When the service fails (no answer in ``timeout``, a 5xx,
    a gRPC error): ``failure_mode_allow`` lets the request through (with
    ``x-envoy-auth-failure-mode-allowed: true`` when ``failure_mode_allow_header_add``), else the
    client gets ``status_on_error`` (Envoy's default 403)."""

    kind: Literal["http", "grpc"]
    cluster: str = ""
    target: str | None = None
    authority: str | None = None
    uri: str = ""
    timeout: float = 0.2
    path_prefix: str = ""
    allowed_headers: tuple[StringMatcher, ...] | None = None
    headers_to_add: tuple[tuple[str, str], ...] = ()
    allowed_upstream_headers: tuple[StringMatcher, ...] = ()
    allowed_upstream_headers_to_append: tuple[StringMatcher, ...] = ()
    allowed_client_headers: tuple[StringMatcher, ...] | None = None
    allowed_client_headers_on_success: tuple[StringMatcher, ...] = ()
    failure_mode_allow: bool = False
    failure_mode_allow_header_add: bool = False
    status_on_error: int = 403
    filter_enabled: FractionalPercent | None = None
    stat_prefix: str = ""
    include_peer_certificate: bool = False


@dataclass(frozen=True, slots=True)
class ExtAuthzPerRoute:
    """``ExtAuthzPerRoute``: ``disabled``, or ``check_settings.context_extensions`` sent with the
    gRPC check of this route's requests."""

    disabled: bool = False
    context_extensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GrpcWeb:
    """``envoy.filters.http.grpc_web``: gRPC-Web clients to a gRPC upstream (nothing to configure)."""


@dataclass(frozen=True, slots=True)
class Lua:
    """``envoy.filters.http.lua``: ``default_source_code`` (or the deprecated ``inline_code``) runs
    on every request, ``source_codes`` by name for routes that ask for one; ``stat_prefix`` names
    the ``lua.errors`` counter's scope."""

    code: str = ""
    source_codes: tuple[tuple[str, str], ...] = ()
    stat_prefix: str = ""


@dataclass(frozen=True, slots=True)
class LuaPerRoute:
    """``LuaPerRoute``: ``disabled``, a ``name`` of the filter's ``source_codes``, or a
    ``source_code`` of its own."""

    disabled: bool = False
    name: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class RouterFilter:
    """``envoy.filters.http.router``: the terminal filter (nothing to configure in the subset)."""


HttpFilterConfig = (
    Compressor
    | Cors
    | ExtAuthz
    | GrpcWeb
    | HttpCache
    | HttpFault
    | JwtAuthentication
    | LocalRateLimit
    | Lua
    | Rbac
    | RouterFilter
)
PerRouteConfig = (
    CompressorPerRoute
    | CorsPolicy
    | ExtAuthzPerRoute
    | HttpFault
    | JwtPerRoute
    | LocalRateLimit
    | LuaPerRoute
    | Rbac
)


@dataclass(frozen=True, slots=True)
class HttpFilter:
    """``http_filters[]``: a name and its config; ``disabled`` filters run only on routes whose
    ``typed_per_filter_config`` names them (Envoy's meaning)."""

    name: str
    config: HttpFilterConfig
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """``routes[]``: a match and exactly one of ``route`` (:class:`RouteAction`) / ``direct_response``;
    ``typed_per_filter_config`` overrides a filter's config for this route (by filter name)."""

    match: RouteMatch
    action: RouteAction | DirectResponse
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    typed_per_filter_config: tuple[tuple[str, PerRouteConfig], ...] = ()

    def per_filter_config(self, name: str) -> PerRouteConfig | None:
        for key, value in self.typed_per_filter_config:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """``virtual_hosts[]``: a name, the Host/:authority values it serves (``*`` and ``*.suffix`` /
    ``prefix*`` wildcards as in Envoy), and routes tried in order."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...] = ()
    typed_per_filter_config: tuple[tuple[str, PerRouteConfig], ...] = ()

    def per_filter_config(self, name: str) -> PerRouteConfig | None:
        for key, value in self.typed_per_filter_config:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    """``route_config``: the inline route table (RDS is outside the subset)."""

    name: str
    virtual_hosts: tuple[VirtualHost, ...] = ()


@dataclass(frozen=True, slots=True)
class Http2Options:
    """``http2_protocol_options`` of a connection manager (HTTP/2 to clients).

    Envoy's ``max_concurrent_streams`` default (2**31 - 1) is kept; the windows default to 1 MiB,
    Envoy's ``per_connection_buffer_limit_bytes``, rather than its 256 MiB windows: the proxy
    acknowledges request data only as the upstream takes it, so the connection window is the most a
    client can make it hold per connection, and 256 MiB per client is no bound worth the name."""

    max_concurrent_streams: int = 2**31 - 1
    initial_stream_window_size: int = 1024 * 1024
    initial_connection_window_size: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    """The ``envoy.filters.network.http_connection_manager`` filter.

    Envoy's defaults: ``codec_type`` AUTO; ``idle_timeout`` (``common_http_protocol_options``) 1 hour;
    ``request_timeout`` 0 (disabled); ``stream_idle_timeout`` 5 minutes.  ``http_filters`` run in the
    order written and end with the router."""

    stat_prefix: str
    route_config: RouteConfiguration
    codec_type: CodecType = "AUTO"
    access_log: tuple[AccessLog, ...] = ()
    idle_timeout: float = 3600.0
    request_timeout: float = 0.0
    stream_idle_timeout: float = 300.0
    http_filters: tuple[HttpFilter, ...] = (HttpFilter(ROUTER_NAME, RouterFilter()),)
    #: ``upgrade_configs[]`` as (upgrade_type lowercased, enabled): the upgrades (``websocket``) the
    #: proxy passes on; any other upgrade request is refused with 403, as Envoy refuses it
    upgrade_configs: tuple[tuple[str, bool], ...] = ()
    #: ``local_reply_config``: ``mappers`` and ``body_format`` (see :mod:`trio_yastack.l7.local_reply`)
    local_reply_mappers: tuple[Mapper, ...] = ()
    local_reply_format: FormatString | None = None
    #: ``http2_protocol_options`` (used when a connection speaks HTTP/2: ALPN h2 or h2c prior knowledge)
    http2: Http2Options = Http2Options()

    def upgrade_allowed(self, upgrade_type: str, route: RouteAction) -> bool:
        """Envoy's rule: the route's ``upgrade_configs`` entry for the type, else the connection
        manager's (its ``enabled`` defaults to true), else refused."""
        kind = upgrade_type.lower()
        for configs in (route.upgrade_configs, self.upgrade_configs):
            for name, enabled in configs:
                if name == kind:
                    return enabled
        return False


@dataclass(frozen=True, slots=True)
class TcpProxy:
    """The ``envoy.filters.network.tcp_proxy`` filter; ``idle_timeout`` defaults to Envoy's 1 hour."""

    stat_prefix: str
    cluster: str
    idle_timeout: float = 3600.0


@dataclass(frozen=True, slots=True)
class FilterChain:
    """``filter_chains[]``: chosen as Envoy chooses, most specific first at each step: by SNI
    (``filter_chain_match.server_names``; empty matches any name), then ``transport_protocol``
    (``tls`` or ``raw_buffer``, as the TLS inspector saw the connection; None matches both), then
    ``application_protocols`` (any of the client's ALPN offer; empty matches any); then optionally
    terminating TLS and handing the connection to its one filter."""

    filter: HttpConnectionManager | TcpProxy
    server_names: tuple[str, ...] = ()
    transport_socket: DownstreamTlsContext | None = None
    name: str | None = None
    transport_protocol: Literal["tls", "raw_buffer"] | None = None
    application_protocols: tuple[str, ...] = ()

    @property
    def needs_inspector(self) -> bool:
        """Whether choosing this chain needs the ClientHello read first."""
        return bool(self.server_names or self.transport_protocol or self.application_protocols)


@dataclass(frozen=True, slots=True)
class Listener:
    """``listeners[]``: an address and its filter chains; ``name`` is optional as in Envoy (an unnamed
    listener is called by its address, e.g. ``0.0.0.0:10000``).  ``tls_inspector`` records an explicit
    ``envoy.filters.listener.tls_inspector`` listener filter (Envoy adds one itself when SNI is matched)."""

    name: str
    address: SocketAddress
    filter_chains: tuple[FilterChain, ...]
    tls_inspector: bool = False


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


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A whole config: the admin endpoint (none when absent), listeners, clusters and the runtime."""

    admin: Admin | None
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    #: ``layered_runtime``'s static layers merged into Envoy's dotted runtime keys (``a.b.c: 1``),
    #: sorted by key (a tuple keeps the config hashable); read with :meth:`runtime_value`
    runtime: tuple[tuple[str, RuntimeValue], ...] = ()

    def runtime_value(self, key: str, default: RuntimeValue = None) -> RuntimeValue:
        """The runtime's value for ``key`` (``default`` when no layer sets it)."""
        for k, value in self.runtime:
            if k == key:
                return value
        return default

    def cluster(self, name: str) -> Cluster:
        """The cluster called ``name`` (``KeyError`` if none; loading already checked every reference)."""
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def summary(self) -> str:
        """What ``yastack check-config`` prints for a valid config: enough to see at a glance that the
        proxy will listen where, terminate TLS for which names, and send traffic to which endpoints."""
        out: list[str] = []
        if self.admin is not None:
            out.append(f"admin {self.admin.address}")
        out.append(f"listeners ({len(self.listeners)}):")
        for listener in self.listeners:
            out.append(f"  {listener.name} {listener.address}")
            for i, chain in enumerate(listener.filter_chains):
                parts = [f"sni {', '.join(chain.server_names)}" if chain.server_names else "any sni"]
                if chain.transport_protocol:
                    parts.append(f"transport {chain.transport_protocol}")
                if chain.application_protocols:
                    parts.append(f"alpn match {','.join(chain.application_protocols)}")
                if chain.transport_socket is not None:
                    common = chain.transport_socket.common_tls_context
                    alpn = f" alpn {','.join(common.alpn_protocols)}" if common.alpn_protocols else ""
                    parts.append(f"tls ({len(common.tls_certificates)} cert{alpn})")
                parts.append(_describe_filter(chain.filter))
                label = f"chain {i}" + (f" {chain.name}" if chain.name else "")
                out.append(f"    {label}: {'; '.join(parts)}")
        out.append(f"clusters ({len(self.clusters)}):")
        for c in self.clusters:
            tls = ""
            if c.transport_socket is not None:
                sni = c.transport_socket.sni
                tls = " tls" + (f" sni {sni}" if sni else "")
            if c.http2 is not None:
                tls += " http2"
            out.append(
                f"  {c.name} {c.type} {c.lb_policy} connect_timeout {_fmt_seconds(c.connect_timeout)}{tls}"
            )
            out.append(f"    endpoints: {', '.join(str(a) for a in c.load_assignment.addresses)}")
            for hc in c.health_checks:
                out.append(
                    f"    health check: http {hc.path} every {_fmt_seconds(hc.interval)} "
                    f"timeout {_fmt_seconds(hc.timeout)} "
                    f"(unhealthy {hc.unhealthy_threshold}, healthy {hc.healthy_threshold})"
                )
            if c.outlier_detection is not None:
                out.append(f"    outlier detection: {c.outlier_detection.consecutive_5xx} consecutive 5xx")
            cb = c.circuit_breakers
            if cb != CircuitBreakerThresholds():
                out.append(
                    f"    circuit breakers: connections {cb.max_connections}, "
                    f"pending {cb.max_pending_requests}, requests {cb.max_requests}, retries {cb.max_retries}"
                )
        return "\n".join(out)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _describe_filter(f: HttpConnectionManager | TcpProxy) -> str:
    if isinstance(f, TcpProxy):
        return f"tcp_proxy {f.stat_prefix} -> {f.cluster}"
    vhosts = f.route_config.virtual_hosts
    n_routes = sum(len(v.routes) for v in vhosts)
    filters = [x.name.rsplit(".", 1)[-1] for x in f.http_filters if x.name != ROUTER_NAME]
    return (
        f"http_connection_manager {f.stat_prefix} ({f.codec_type}): "
        f"{len(vhosts)} virtual host{'s' if len(vhosts) != 1 else ''}, "
        f"{n_routes} route{'s' if n_routes != 1 else ''}"
        + (f"; filters {', '.join(filters)}" if filters else "")
    )


# --- loading ---


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated in one mapping.

    PyYAML keeps the last of duplicated keys silently, so a second ``routes:`` would quietly replace
    the first; Envoy's loader rejects the document, and so do we."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_config(text: str, *, source: str = "<string>") -> Bootstrap:
    """Parse a YAML (or JSON, a subset of YAML) document; raises :class:`ConfigError` with every problem."""
    return _load(text, source, None)


def load_config_file(path: str | Path, *, check_files: bool = False) -> Bootstrap:
    """Load a config file.  Relative certificate, key and CA file names are taken from the config
    file's directory (so a config and its ``certs/`` work from anywhere; Envoy would take them from
    its working directory) and come back resolved.  With ``check_files`` each must exist; off by
    default because the files may live only on the machine that runs it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("", f"cannot read config file: {exc}")], str(p)) from None
    return _load(text, str(p), p.parent, check_files=check_files)


def load_config_or_report(path: str | Path, *, check_files: bool) -> Bootstrap | None:
    """:func:`load_config_file` for a command: the config, or None after every problem (an unreadable
    file included) is printed to stderr with its YAML path."""
    try:
        return load_config_file(path, check_files=check_files)
    except ConfigError as exc:
        print(format_problems(exc), file=sys.stderr)
        return None


def parse_bootstrap(data: object, *, source: str = "<string>") -> Bootstrap:
    """Validate an already-loaded document (the ``yaml.safe_load`` result); raises :class:`ConfigError`."""
    return _parse(data, source, None)


def _load(text: str, source: str, file_base: Path | None, *, check_files: bool = False) -> Bootstrap:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: as safe as safe_load
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        message = f"YAML syntax error{where}: {exc.problem or exc.context}"
        raise ConfigError([Problem("", message, line)], source) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ConfigError([Problem("", f"YAML error: {exc}")], source) from None
    return _parse(data, source, file_base, check_files=check_files)


def _parse(data: object, source: str, file_base: Path | None, *, check_files: bool = False) -> Bootstrap:
    r = _Reader(file_base, check_files=check_files)
    result: Bootstrap | None = None
    with contextlib.suppress(_Skip):  # its problems are in r.problems
        result = _bootstrap(r, normalize(data), "")
    if r.problems or result is None:
        raise ConfigError(r.problems, source)
    return result


class _Skip(Exception):
    """Raised after a problem is recorded, so no object is built from a value that failed.

    A field's parent catches it (in :meth:`_Fields.req`), goes on reading its other fields so their
    problems are reported too, then raises it again itself: problems are collected from the whole
    document, yet no half-valid object ever escapes."""


class _Reader:
    """Collects problems and what cross-references need checking once the document is read."""

    def __init__(self, file_base: Path | None, *, check_files: bool = False) -> None:
        self.problems: list[Problem] = []
        self.file_base = file_base
        self.check_files = check_files
        self.cluster_refs: list[tuple[str, str]] = []  # (cluster name, path of the reference)
        self.secrets: dict[str, Secret] = {}  # static_resources.secrets, by name

    def fail(self, path: str, message: str) -> NoReturn:
        self.problems.append(Problem(path, message))
        raise _Skip

    def resolve_file(self, filename: str, path: str) -> str:
        """``filename`` taken from the config file's directory when relative (and checked to exist
        when asked)."""
        p = Path(filename)
        if not p.is_absolute() and self.file_base is not None:
            p = self.file_base / p
        if self.check_files and not p.is_file():
            self.problems.append(Problem(path, f"file not found: {p}"))
        return str(p)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Fields:
    """Reads one mapping: the keys it may hold are declared up front, so every other key is reported
    as unsupported (with the supported ones listed) before any field is read."""

    def __init__(self, r: _Reader, value: object, path: str, allowed: Iterable[str]) -> None:
        if not isinstance(value, Mapping):
            r.fail(path, f"expected a mapping, got {_kind(value)}")
        self.r = r
        self.path = path
        self.allowed = tuple(allowed)
        self.values: dict[str, object] = {}
        self.failed = False
        for key, v in value.items():
            if not isinstance(key, str):
                self.failed = True
                r.problems.append(Problem(path, f"keys must be strings, got {_kind(key)} {key!r:.40}"))
            elif key not in self.allowed:
                self.failed = True
                r.problems.append(
                    Problem(
                        _join(path, key),
                        f"unsupported field {key!r} (supported here: {', '.join(self.allowed)})",
                    )
                )
            elif v is not None:  # protobuf JSON: null is the default value, i.e. absent
                self.values[key] = v

    def has(self, key: str) -> bool:
        if key not in self.allowed:
            raise KeyError(key)  # a bug in this module, not in the document
        return key in self.values

    def req(self, key: str, parse: Callable[[_Reader, Any, str], T]) -> T:
        if not self.has(key):
            self.failed = True
            self.r.problems.append(Problem(_join(self.path, key), f"required field {key!r} is missing"))
            return None  # type: ignore[return-value]  # never used: done() raises _Skip
        return self._read(key, parse)

    def opt(self, key: str, parse: Callable[[_Reader, Any, str], T], default: D) -> T | D:
        if not self.has(key):
            return default
        return self._read(key, parse)

    def _read(self, key: str, parse: Callable[[_Reader, Any, str], T]) -> T:
        try:
            return parse(self.r, self.values[key], _join(self.path, key))
        except _Skip:
            self.failed = True
            return None  # type: ignore[return-value]  # never used: done() raises _Skip

    def problem(self, key: str, message: str) -> None:
        self.failed = True
        self.r.problems.append(Problem(_join(self.path, key) if key else self.path, message))

    def exactly_one(self, *keys: str) -> str | None:
        """The one of ``keys`` present (a oneof), recording a problem when none or several are."""
        present = [k for k in keys if self.has(k)]
        if len(present) == 1:
            return present[0]
        if present:
            self.problem(present[1], f"only one of {', '.join(keys)} may be set (also found {present[0]!r})")
        else:
            self.problem("", f"exactly one of {', '.join(keys)} is required")
        return None

    def done(self) -> None:
        if self.failed:
            raise _Skip


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# --- scalar parsers: (reader, value, path) -> value, or record a problem and raise _Skip ---


def _str(r: _Reader, v: object, path: str) -> str:
    if not isinstance(v, str):
        r.fail(path, f"expected a string, got {_kind(v)}")
    return v


def _nonempty_str(r: _Reader, v: object, path: str) -> str:
    s = _str(r, v, path)
    if not s:
        r.fail(path, "must not be empty")
    return s


def _bool(r: _Reader, v: object, path: str) -> bool:
    if not isinstance(v, bool):
        r.fail(path, f"expected true or false, got {_kind(v)}")
    return v


def _uint(lo: int, hi: int) -> Callable[[_Reader, Any, str], int]:
    def parse(r: _Reader, v: object, path: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            r.fail(path, f"expected an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            r.fail(path, f"{v} is out of range {lo}..{hi}")
        return v

    return parse


_uint32 = _uint(0, _UINT32_MAX)
_positive_uint32 = _uint(1, _UINT32_MAX)


def _enum(values: tuple[E, ...]) -> Callable[[_Reader, Any, str], E]:
    def parse(r: _Reader, v: object, path: str) -> E:
        if isinstance(v, str):
            for value in values:
                if v == value:
                    return value  # typed as the Literal the values are declared as
        got = repr(v) if isinstance(v, (str, int, float)) else _kind(v)
        r.fail(path, f"{got} is not one of the supported values: {', '.join(values)}")

    return parse


def parse_duration(text: str) -> float:
    """protobuf's JSON Duration (``"5s"``, ``"0.25s"``, ``"-1.5s"``) in seconds; ``ValueError`` otherwise."""
    m = _DURATION_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a duration: expected seconds with an 's' suffix, like '5s' or '0.25s'"
        )
    sign, whole, frac = m.groups()
    seconds = int(whole) + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than protobuf's maximum duration")
    return -seconds if sign and seconds else seconds


def _duration(min_exclusive: bool = False) -> Callable[[_Reader, Any, str], float]:
    """A non-negative duration (every duration in the subset is; ``connect_timeout``, health check times
    and ``interval`` must moreover be positive, as Envoy's validation rules say)."""

    def parse(r: _Reader, v: object, path: str) -> float:
        if not isinstance(v, str):
            r.fail(path, f"expected a duration string like '5s' or '0.25s', got {_kind(v)}")
        try:
            seconds = parse_duration(v)
        except ValueError as exc:
            r.fail(path, str(exc))
        if seconds < 0:
            r.fail(path, f"{v!r} must not be negative")
        if min_exclusive and seconds == 0:
            r.fail(path, f"{v!r} must be greater than 0s")
        return seconds

    return parse


_duration_ge0 = _duration()
_duration_gt0 = _duration(min_exclusive=True)


def _list(
    item: Callable[[_Reader, Any, str], T], *, min_items: int = 0
) -> Callable[[_Reader, Any, str], tuple[T, ...]]:
    def parse(r: _Reader, v: object, path: str) -> tuple[T, ...]:
        if not isinstance(v, list):
            r.fail(path, f"expected a list, got {_kind(v)}")
        out: list[T] = []
        failed = False
        for i, x in enumerate(v):
            try:
                out.append(item(r, x, f"{path}[{i}]"))
            except _Skip:
                failed = True
        if len(v) < min_items:
            r.fail(path, f"needs at least {min_items} item{'s' if min_items != 1 else ''}")
        if failed:
            raise _Skip
        return tuple(out)

    return parse


def _typed_config(r: _Reader, f: _Fields, name: str, types: Mapping[str, str]) -> _Fields | None:
    """Check an extension's ``name`` and ``typed_config["@type"]`` against ``types`` (name -> type URL)
    and return the typed_config's fields (with ``@type`` already read), or ``None`` after a problem."""
    if name not in types:
        f.problem("name", f"unsupported {name!r} (supported: {', '.join(types)})")
        return None
    tc = f.values.get("typed_config")
    path = _join(f.path, "typed_config")
    if tc is None:
        f.problem("typed_config", f"required field 'typed_config' is missing (with \"@type\": {types[name]})")
        return None
    if not isinstance(tc, Mapping):
        f.problem("typed_config", f"expected a mapping, got {_kind(tc)}")
        return None
    type_url = tc.get("@type")
    if type_url != types[name]:
        got = f"{type_url!r}" if type_url is not None else "missing"
        f.problem("typed_config.@type", f'{got}: {name} needs "@type": {types[name]}')
        return None
    return _Fields(r, {k: v for k, v in tc.items() if k != "@type"}, path, _TYPED_CONFIG_FIELDS[types[name]])


_TYPED_CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    HCM_TYPE: (
        "stat_prefix",
        "codec_type",
        "route_config",
        "http_filters",
        "access_log",
        "common_http_protocol_options",
        "http2_protocol_options",
        "request_timeout",
        "stream_idle_timeout",
        "upgrade_configs",
        "local_reply_config",
    ),
    TCP_PROXY_TYPE: ("stat_prefix", "cluster", "idle_timeout"),
    ROUTER_TYPE: (),
    CORS_TYPE: (),
    COMPRESSOR_TYPE: (
        "response_direction_config",
        "compressor_library",
        "content_length",
        "content_type",
        "disable_on_etag_header",
    ),
    COMPRESSOR_PER_ROUTE_TYPE: ("disabled",),
    CACHE_TYPE: (
        "typed_config",
        "allowed_vary_headers",
        "max_body_bytes",
        "ignore_request_cache_control_header",
    ),
    GZIP_COMPRESSOR_TYPE: (
        "memory_level",
        "compression_level",
        "compression_strategy",
        "window_bits",
        "chunk_size",
    ),
    FAULT_TYPE: ("delay", "abort", "max_active_faults", "headers", "upstream_cluster"),
    LOCAL_RATELIMIT_TYPE: (
        "stat_prefix",
        "token_bucket",
        "filter_enabled",
        "filter_enforced",
        "status",
        "response_headers_to_add",
        "local_rate_limit_per_downstream_connection",
    ),
    EXT_AUTHZ_TYPE: (
        "http_service",
        "grpc_service",
        "transport_api_version",
        "failure_mode_allow",
        "failure_mode_allow_header_add",
        "status_on_error",
        "filter_enabled",
        "stat_prefix",
        "allowed_headers",
        "include_peer_certificate",
        "clear_route_cache",
    ),
    EXT_AUTHZ_PER_ROUTE_TYPE: ("disabled", "check_settings"),
    GRPC_WEB_TYPE: (),
    LUA_TYPE: ("inline_code", "default_source_code", "source_codes", "stat_prefix"),
    LUA_PER_ROUTE_TYPE: ("disabled", "name", "source_code"),
    JWT_AUTHN_TYPE: ("providers", "rules", "requirement_map", "bypass_cors_preflight", "stat_prefix"),
    JWT_AUTHN_PER_ROUTE_TYPE: ("disabled", "requirement_name"),
    RBAC_TYPE: ("rules", "shadow_rules", "rules_stat_prefix", "shadow_rules_stat_prefix"),
    RBAC_PER_ROUTE_TYPE: ("rbac",),
    CORS_POLICY_TYPE: (
        "allow_origin_string_match",
        "allow_methods",
        "allow_headers",
        "expose_headers",
        "max_age",
        "allow_credentials",
        "filter_enabled",
        "shadow_enabled",
    ),
    DOWNSTREAM_TLS_TYPE: ("common_tls_context", "require_client_certificate"),
    UPSTREAM_TLS_TYPE: ("common_tls_context", "sni"),
    TLS_INSPECTOR_TYPE: (),
    STDOUT_LOG_TYPE: ("log_format",),
    FILE_LOG_TYPE: ("path", "log_format", "format", "json_format"),
}


def _extension(
    r: _Reader, v: object, path: str, types: Mapping[str, str], extra: tuple[str, ...] = (),
    *, types_by_url: bool = False,
) -> tuple[str, _Fields, _Fields]:  # fmt: skip
    """An ``{name, typed_config}`` extension: returns (name, its fields, typed_config's fields).
    The caller reads the typed_config fields then calls ``done()`` on both.  With ``types_by_url``
    the name is free (a label, as a compressor library's is) and ``@type`` alone must be one of
    ``types``' values."""
    f = _Fields(r, v, path, ("name", "typed_config", *extra))
    name = f.req("name", _str)
    if types_by_url and name is not None:
        tc_value = f.values.get("typed_config")
        url = tc_value.get("@type") if isinstance(tc_value, Mapping) else None
        label = next((k for k, u in types.items() if u == url), None)
        types = {name: types[label] if label is not None else next(iter(types.values()))}
    tc = _typed_config(r, f, name, types) if name is not None else None
    if tc is None:
        f.done()
        raise _Skip  # name missing: done() raised already
    return name, f, tc


# --- structure parsers ---


def _socket_address(*, dns: bool = False, min_port: int = 0) -> Callable[[_Reader, Any, str], SocketAddress]:
    def parse(r: _Reader, v: object, path: str) -> SocketAddress:
        f = _Fields(r, v, path, ("protocol", "address", "port_value"))
        if f.has("protocol") and f.values["protocol"] != "TCP":
            f.problem("protocol", f"{f.values['protocol']!r} is not supported: only TCP (Envoy's default)")
        address = f.req("address", _nonempty_str)
        port = f.req("port_value", _uint(min_port, 65535))
        if address is not None and not dns:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                f.problem(
                    "address", f"{address!r} is not an IP address (only STRICT_DNS clusters resolve names)"
                )
        f.done()
        return SocketAddress(address, port)

    return parse


def _address(*, dns: bool = False, min_port: int = 0) -> Callable[[_Reader, Any, str], SocketAddress]:
    """``address: {socket_address: ...}`` (pipes and internal addresses are outside the subset)."""
    inner = _socket_address(dns=dns, min_port=min_port)

    def parse(r: _Reader, v: object, path: str) -> SocketAddress:
        f = _Fields(r, v, path, ("socket_address",))
        sa = f.req("socket_address", inner)
        f.done()
        return sa

    return parse


def _access_log(r: _Reader, v: object, path: str) -> AccessLog:
    types = {STDOUT_LOG_NAME: STDOUT_LOG_TYPE, FILE_LOG_NAME: FILE_LOG_TYPE}
    name, f, tc = _extension(r, v, path, types)
    log_path = tc.req("path", _nonempty_str) if name == FILE_LOG_NAME else None
    fmt = tc.opt("log_format", _log_format, None)
    if name == FILE_LOG_NAME:  # the deprecated spellings Envoy still reads
        if tc.has("format"):
            fmt = FormatString(text=tc.req("format", _log_format_text))
        if tc.has("json_format"):
            fmt = FormatString(json=tc.req("json_format", _log_json_format))
    tc.done()
    f.done()
    return AccessLog("file" if name == FILE_LOG_NAME else "stdout", log_path, fmt)


def _log_operators_ok(r: _Reader, text: str, path: str) -> None:
    for m in OPERATOR_RE.finditer(text):
        op = m.group(1) + (f"({m.group(2)})" if m.group(2) is not None else "")
        if op.upper() not in LOG_OPERATORS:
            r.fail(
                path, f"unsupported command operator %{op}% (supported: {', '.join(sorted(LOG_OPERATORS))})"
            )


def _log_format_text(r: _Reader, v: object, path: str) -> str:
    text = _str(r, v, path)
    _log_operators_ok(r, text, path)
    return text


def _log_json_format(r: _Reader, v: object, path: str) -> str:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")
    for key, value in v.items():
        if isinstance(value, str):
            _log_operators_ok(r, value, _join(path, str(key)))
        elif not isinstance(value, (int, float, bool)) and value is not None:
            r.fail(_join(path, str(key)), "nested values are outside the subset: strings with operators only")
    return json.dumps(v)


def _log_format(r: _Reader, v: object, path: str) -> FormatString:
    """An access log's ``log_format``: ``text_format``, ``text_format_source`` (inline) or
    ``json_format`` (flat), with the access log's operators."""
    f = _Fields(r, v, path, ("text_format", "text_format_source", "json_format"))
    which = f.exactly_one("text_format", "text_format_source", "json_format")
    out = FormatString()
    if which == "text_format":
        out = FormatString(text=f.req("text_format", _log_format_text))
    elif which == "text_format_source":
        source = f.req("text_format_source", _inline_data)
        if source is not None:
            out = FormatString(text=_log_format_text(r, source, _join(path, "text_format_source")))
    elif which == "json_format":
        out = FormatString(json=f.req("json_format", _log_json_format))
    f.done()
    return out


def _admin(r: _Reader, v: object, path: str) -> Admin:
    f = _Fields(r, v, path, ("address", "access_log", "access_log_path"))
    address = f.req("address", _address())
    logs = f.opt("access_log", _list(_access_log), ())
    # deprecated in Envoy v3 but still accepted: a file logger at that path
    log_path = f.opt("access_log_path", _nonempty_str, None)
    if log_path is not None:
        logs = (*logs, AccessLog("file", log_path))
    f.done()
    return Admin(address, logs)


def _data_source(r: _Reader, v: object, path: str) -> DataSource:
    """A ``DataSource``: ``filename``, ``inline_string`` or ``inline_bytes`` (base64, as proto3 JSON
    writes bytes); ``environment_variable`` is outside the subset."""
    f = _Fields(r, v, path, ("filename", "inline_string", "inline_bytes"))
    which = f.exactly_one("filename", "inline_string", "inline_bytes")
    source = DataSource()
    if which == "filename":
        filename = f.req("filename", _nonempty_str)
        if filename is not None:
            source = DataSource(filename=r.resolve_file(filename, _join(path, "filename")))
    elif which == "inline_string":
        text = f.req("inline_string", _nonempty_str)
        source = DataSource(inline=text.encode("utf-8") if text is not None else b"")
    elif which == "inline_bytes":
        source = DataSource(inline=f.req("inline_bytes", _base64))
    f.done()
    return source


def _base64(r: _Reader, v: object, path: str) -> bytes:
    text = _nonempty_str(r, v, path)
    try:
        # proto3 JSON accepts the standard and the URL-safe alphabets, padded or not
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        r.fail(path, "not valid base64")


def _tls_certificate(r: _Reader, v: object, path: str) -> TlsCertificate:
    f = _Fields(r, v, path, ("certificate_chain", "private_key"))
    chain = f.req("certificate_chain", _data_source)
    key = f.req("private_key", _data_source)
    f.done()
    return TlsCertificate(chain, key)


def _validation_context(
    r: _Reader, v: object, path: str
) -> tuple[DataSource, tuple[SubjectAltNameMatcher, ...]]:
    f = _Fields(r, v, path, ("trusted_ca", "match_typed_subject_alt_names"))
    ca = f.req("trusted_ca", _data_source)
    sans = f.opt("match_typed_subject_alt_names", _list(_san_matcher), ())
    f.done()
    return ca, sans


_SAN_TYPES = ("DNS", "URI", "EMAIL", "IP_ADDRESS")


def _san_matcher(r: _Reader, v: object, path: str) -> SubjectAltNameMatcher:
    f = _Fields(r, v, path, ("san_type", "matcher"))
    san_type = f.req("san_type", _enum(_SAN_TYPES))
    matcher = f.req("matcher", _string_matcher)
    f.done()  # raises if either failed, before matcher is used
    return SubjectAltNameMatcher(san_type, matcher.kind, matcher.value, matcher.ignore_case)  # type: ignore[arg-type]  # _enum returned one of _SAN_TYPES


def _tls_params(r: _Reader, v: object, path: str) -> TlsParams:
    f = _Fields(r, v, path, ("tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites"))
    params = TlsParams(
        tls_minimum_protocol_version=f.opt("tls_minimum_protocol_version", _enum(TLS_VERSIONS), "TLS_AUTO"),
        tls_maximum_protocol_version=f.opt("tls_maximum_protocol_version", _enum(TLS_VERSIONS), "TLS_AUTO"),
        cipher_suites=f.opt("cipher_suites", _list(_nonempty_str), ()),
    )
    lo, hi = params.tls_minimum_protocol_version, params.tls_maximum_protocol_version
    if "TLS_AUTO" not in (lo, hi) and TLS_VERSIONS.index(lo) > TLS_VERSIONS.index(hi):
        f.problem("tls_maximum_protocol_version", f"{hi} is below tls_minimum_protocol_version {lo}")
    f.done()
    return params


def _common_tls_context(*, downstream: bool) -> Callable[[_Reader, Any, str], CommonTlsContext]:
    def parse(r: _Reader, v: object, path: str) -> CommonTlsContext:
        f = _Fields(
            r,
            v,
            path,
            (
                "tls_certificates",
                "tls_certificate_sds_secret_configs",
                "validation_context",
                "validation_context_sds_secret_config",
                "alpn_protocols",
                "tls_params",
            ),
        )
        certs = f.opt("tls_certificates", _list(_tls_certificate, min_items=1 if downstream else 0), ())
        sds_certs = f.opt("tls_certificate_sds_secret_configs", _list(_sds_certificate), ())
        certs = (*(certs or ()), *(sds_certs or ()))
        if downstream and not certs and not f.failed:
            f.problem(
                "tls_certificates",
                "required field 'tls_certificates' (or tls_certificate_sds_secret_configs) is missing: "
                "TLS termination needs a certificate",
            )
        if f.has("validation_context") and f.has("validation_context_sds_secret_config"):
            f.problem(
                "validation_context_sds_secret_config", "only one of validation_context and it may be set"
            )
        validation = f.opt("validation_context", _validation_context, (None, ()))
        if f.has("validation_context_sds_secret_config"):
            validation = f.req("validation_context_sds_secret_config", _sds_validation)
        ca, sans = validation or (None, ())  # None: failed, f.done() raises
        alpn = f.opt("alpn_protocols", _list(_nonempty_str), ())
        params = f.opt("tls_params", _tls_params, TlsParams())
        f.done()
        return CommonTlsContext(certs, ca, alpn, sans, params)

    return parse


@dataclass(frozen=True, slots=True)
class Secret:
    """A ``Secret`` (``static_resources.secrets[]`` or an SDS file's resource): a ``tls_certificate``
    or a ``validation_context``."""

    name: str
    tls_certificate: TlsCertificate | None = None
    validation_context: tuple[DataSource, tuple[SubjectAltNameMatcher, ...]] | None = None


SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _secret(r: _Reader, v: object, path: str) -> Secret:
    f = _Fields(r, v, path, ("@type", "name", "tls_certificate", "validation_context"))
    if f.has("@type") and f.values["@type"] != SECRET_TYPE:
        f.problem("@type", f"{f.values['@type']!r}: an SDS resource here is a {SECRET_TYPE}")
    name = f.req("name", _nonempty_str)
    which = f.exactly_one("tls_certificate", "validation_context")
    cert = f.req("tls_certificate", _tls_certificate) if which == "tls_certificate" else None
    validation = f.req("validation_context", _validation_context) if which == "validation_context" else None
    f.done()
    return Secret(name, cert, validation)


def _sds_secret(r: _Reader, v: object, path: str) -> Secret:
    """An ``SdsSecretConfig``: ``name``, found in ``sds_config``'s file (``path_config_source.path``
    or the deprecated ``path``; read once, at load: Envoy would also watch it) or, without
    ``sds_config``, among ``static_resources.secrets``."""
    f = _Fields(r, v, path, ("name", "sds_config"))
    name = f.req("name", _nonempty_str)
    source = f.opt("sds_config", _sds_path, None)
    f.done()
    if source is None:
        found = r.secrets.get(name)
        if found is None:
            r.fail(
                _join(path, "name"),
                f"unknown secret {name!r} (not in static_resources.secrets, no sds_config)",
            )
        return found
    file_path, where = source
    try:
        document = yaml.safe_load(Path(file_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as exc:
        r.fail(where, f"cannot read the SDS file {file_path}: {exc}")
    resources = document.get("resources") if isinstance(document, Mapping) else None
    if not isinstance(resources, list):
        r.fail(where, f"{file_path}: expected a mapping with a 'resources' list (a DiscoveryResponse)")
    for i, resource in enumerate(resources):
        if isinstance(resource, Mapping) and resource.get("name") == name:
            return _secret(r, normalize_secret(resource), f"{file_path}:resources[{i}]")
    r.fail(_join(path, "name"), f"secret {name!r} is not among the resources of {file_path}")


def normalize_secret(resource: Mapping[str, Any]) -> object:
    """An SDS file's resource read the way Envoy reads it (its own schema: camelCase and all)."""
    return envoy_normalize_any(dict(resource))


def _sds_path(r: _Reader, v: object, path: str) -> tuple[str, str]:
    f = _Fields(r, v, path, ("path_config_source", "path", "resource_api_version"))
    which = f.exactly_one("path_config_source", "path")
    file_path = ""
    where = _join(path, which or "path")
    if which == "path":
        file_path = f.req("path", _nonempty_str)
    elif which == "path_config_source":
        inner = _Fields(r, f.values["path_config_source"], where, ("path",))
        file_path = inner.req("path", _nonempty_str)
        inner.done()
        where = _join(where, "path")
    f.opt("resource_api_version", _enum(("AUTO", "V3")), "AUTO")
    f.done()
    return r.resolve_file(file_path, where), where


def _sds_certificate(r: _Reader, v: object, path: str) -> TlsCertificate:
    secret = _sds_secret(r, v, path)
    if secret.tls_certificate is None:
        r.fail(path, f"secret {secret.name!r} is not a tls_certificate")
    return secret.tls_certificate


def _sds_validation(r: _Reader, v: object, path: str) -> tuple[DataSource, tuple[SubjectAltNameMatcher, ...]]:
    secret = _sds_secret(r, v, path)
    if secret.validation_context is None:
        r.fail(path, f"secret {secret.name!r} is not a validation_context")
    return secret.validation_context


def _downstream_tls(r: _Reader, v: object, path: str) -> DownstreamTlsContext:
    _, f, tc = _extension(r, v, path, {TLS_NAME: DOWNSTREAM_TLS_TYPE})
    common = tc.req("common_tls_context", _common_tls_context(downstream=True))
    require = tc.opt("require_client_certificate", _bool, False)
    if require and common is not None and common.trusted_ca is None:
        # stricter than Envoy, which would accept it and then refuse every client
        tc.problem(
            "require_client_certificate",
            "needs common_tls_context.validation_context.trusted_ca to verify client certificates with",
        )
    tc.done()
    f.done()
    return DownstreamTlsContext(common, require)


def _upstream_tls(r: _Reader, v: object, path: str) -> UpstreamTlsContext:
    _, f, tc = _extension(r, v, path, {TLS_NAME: UPSTREAM_TLS_TYPE})
    common = tc.opt("common_tls_context", _common_tls_context(downstream=False), CommonTlsContext())
    sni = tc.opt("sni", _nonempty_str, None)
    tc.done()
    f.done()
    return UpstreamTlsContext(common, sni)


def _string_match(r: _Reader, v: object, path: str) -> tuple[Literal["exact", "prefix"], str, bool]:
    f = _Fields(r, v, path, ("exact", "prefix", "ignore_case"))
    which = f.exactly_one("exact", "prefix")
    value = f.req(which, _str) if which is not None else ""
    ignore_case = f.opt("ignore_case", _bool, False)
    f.done()
    return ("exact" if which == "exact" else "prefix"), value, ignore_case


def _header_matcher(r: _Reader, v: object, path: str) -> HeaderMatcher:
    f = _Fields(r, v, path, ("name", "exact_match", "string_match", "present_match"))
    name = f.req("name", _header_name)
    specifiers = [k for k in ("exact_match", "string_match", "present_match") if f.has(k)]
    m: HeaderMatcher | None = None
    if len(specifiers) > 1:
        f.problem(
            specifiers[1],
            f"only one of exact_match, string_match, present_match may be set (also found {specifiers[0]!r})",
        )
    elif not specifiers:
        m = HeaderMatcher(name, "present")
    elif specifiers[0] == "exact_match":
        m = HeaderMatcher(name, "exact", f.req("exact_match", _str))
    elif specifiers[0] == "string_match":
        sm = f.req("string_match", _string_match)
        if sm is not None:
            m = HeaderMatcher(name, sm[0], sm[1], sm[2])
    else:
        m = HeaderMatcher(name, "present" if f.req("present_match", _bool) else "absent")
    f.done()
    if m is None:  # unreachable: every branch that leaves m None marked f failed, so done() raised
        raise _Skip
    return m


def _route_match(r: _Reader, v: object, path: str) -> RouteMatch:
    f = _Fields(r, v, path, ("prefix", "path", "headers"))
    which = f.exactly_one("prefix", "path")
    value = f.req(which, _str) if which is not None else ""
    if which == "path" and value is not None and not value.startswith("/"):
        f.problem("path", f"{value!r} must start with '/'")
    headers = f.opt("headers", _list(_header_matcher), ())
    f.done()
    return RouteMatch(
        prefix=value if which == "prefix" else None, path=value if which == "path" else None, headers=headers
    )


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


def _cluster_ref(r: _Reader, v: object, path: str) -> str:
    name = _nonempty_str(r, v, path)
    r.cluster_refs.append((name, path))
    return name


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


def _inline_string(r: _Reader, v: object, path: str) -> str:
    f = _Fields(r, v, path, ("inline_string",))
    s = f.req("inline_string", _str)
    f.done()
    return s


def _header_value_option(r: _Reader, v: object, path: str) -> HeaderValueOption:
    f = _Fields(r, v, path, ("header", "append_action", "append"))
    key_value = f.req("header", _header_value)
    action: AppendAction = "APPEND_IF_EXISTS_OR_ADD"
    if f.has("append_action") and f.has("append"):
        f.problem("append", "only one of append_action, append may be set ('append' is deprecated)")
    elif f.has("append"):
        action = "APPEND_IF_EXISTS_OR_ADD" if f.req("append", _bool) else "OVERWRITE_IF_EXISTS_OR_ADD"
    else:
        action = f.opt("append_action", _enum(APPEND_ACTIONS), action)
    f.done()
    return HeaderValueOption(key_value[0], key_value[1], action)


# RFC 9110 5.1 field names are tokens; 5.5 field values exclude CR, LF and NUL (and other controls
# but tab).  Checked here so a config cannot make the proxy write a malformed (or smuggled) header.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_TARGET_RE = re.compile(r"[\x21-\x7e]*")  # a request target: visible ASCII, no spaces


def _header_name(r: _Reader, v: object, path: str) -> str:
    name = _nonempty_str(r, v, path)
    if not _TOKEN_RE.fullmatch(name):
        r.fail(path, f"{name!r} is not a valid HTTP header name (RFC 9110 token characters only)")
    return name


def _field_value(r: _Reader, v: object, path: str) -> str:
    value = _str(r, v, path)
    if not _FIELD_VALUE_RE.fullmatch(value):
        r.fail(path, "not a valid HTTP header value (no CR, LF, NUL or other control characters)")
    return value


def _host_value(r: _Reader, v: object, path: str) -> str:
    value = _nonempty_str(r, v, path)
    if not _TOKEN_RE.fullmatch(value.replace(":", "").replace("[", "").replace("]", "")):
        r.fail(path, f"{value!r} is not a valid host[:port]")
    return value


def _cluster_name(r: _Reader, v: object, path: str) -> str:
    """A cluster's name, which is also a header value: the ``Host`` of its health checks, and of
    a request forwarded to it that had none (HTTP/1.0)."""
    value = _nonempty_str(r, v, path)
    if not _FIELD_VALUE_RE.fullmatch(value):
        r.fail(path, "not a valid HTTP header value (no CR, LF, NUL or other control characters)")
    return value


def _path_value(r: _Reader, v: object, path: str) -> str:
    value = _str(r, v, path)
    if not _TARGET_RE.fullmatch(value):
        r.fail(path, "not a valid request path (visible ASCII characters, no spaces)")
    return value


def _header_value(r: _Reader, v: object, path: str) -> tuple[str, str]:
    f = _Fields(r, v, path, ("key", "value"))
    key = f.req("key", _header_name)
    value = f.opt("value", _field_value, "")
    f.done()
    return key, value


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
    f = _Fields(r, v, path, ("name", "domains", "routes", "typed_per_filter_config"))
    name = f.req("name", _nonempty_str)
    domains = f.req("domains", _list(_nonempty_str, min_items=1))
    routes = f.opt("routes", _list(_route), ())
    per_filter = f.opt("typed_per_filter_config", _per_filter_configs, ())
    f.done()
    return VirtualHost(name, domains, routes, per_filter)


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


def _http_filter(r: _Reader, v: object, path: str) -> HttpFilter:
    if isinstance(v, Mapping) and v.get("name") == ROUTER_NAME and v.get("typed_config") is None:
        # Envoy finds the router by its name alone: it has nothing to configure
        f = _Fields(r, v, path, ("name", "typed_config", "disabled"))
        disabled = f.opt("disabled", _bool, False)
        f.done()
        return HttpFilter(ROUTER_NAME, RouterFilter(), disabled)
    name, f, tc = _extension(r, v, path, HTTP_FILTER_TYPES, extra=("disabled",))
    disabled = f.opt("disabled", _bool, False)
    try:
        config = _http_filter_config(r, name, tc)
    finally:
        f.done()
    return HttpFilter(name, config, disabled)


def _http_filter_config(r: _Reader, name: str, tc: _Fields) -> HttpFilterConfig:
    config: HttpFilterConfig
    if name == FAULT_NAME:
        config = _fault(r, tc)
    elif name == COMPRESSOR_NAME:
        config = _compressor(r, tc)
    elif name == CACHE_NAME:
        config = _http_cache(r, tc)
    elif name == LOCAL_RATELIMIT_NAME:
        config = _local_ratelimit(r, tc)
    elif name == RBAC_NAME:
        config = _rbac(r, tc)
    elif name == JWT_AUTHN_NAME:
        config = _jwt_authn(r, tc)
    elif name == EXT_AUTHZ_NAME:
        config = _ext_authz(r, tc)
    elif name == GRPC_WEB_NAME:
        config = GrpcWeb()
    elif name == LUA_NAME:
        config = _lua(r, tc)
    else:
        config = Cors() if name == CORS_NAME else RouterFilter()
    tc.done()
    return config


def _per_filter_configs(r: _Reader, v: object, path: str) -> tuple[tuple[str, PerRouteConfig], ...]:
    """``typed_per_filter_config``: filter name -> an ``Any`` of that filter's per-route type."""
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")
    out: list[tuple[str, PerRouteConfig]] = []
    failed = False
    for name, config in v.items():
        item_path = _join(path, str(name))
        if not isinstance(name, str) or name not in PER_ROUTE_TYPES:
            r.problems.append(
                Problem(item_path, f"unsupported filter {name!r} (supported: {', '.join(PER_ROUTE_TYPES)})")
            )
            failed = True
            continue
        try:
            out.append((name, _per_filter_config(r, name, config, item_path)))
        except _Skip:
            failed = True
    if failed:
        raise _Skip
    return tuple(out)


def _per_filter_config(r: _Reader, name: str, v: object, path: str) -> PerRouteConfig:
    type_url = PER_ROUTE_TYPES[name]
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")
    if v.get("@type") != type_url:
        got = v.get("@type")
        r.fail(_join(path, "@type"), f'{got!r}: {name} takes "@type": {type_url} here')
    tc = _Fields(r, {k: x for k, x in v.items() if k != "@type"}, path, _TYPED_CONFIG_FIELDS[type_url])
    config: PerRouteConfig
    if name == CORS_NAME:
        config = _cors_policy(r, tc)
    elif name == COMPRESSOR_NAME:
        disabled = tc.req("disabled", _bool)
        config = CompressorPerRoute(disabled if disabled is not None else False)
    elif name == FAULT_NAME:
        config = _fault(r, tc)
    elif name == RBAC_NAME:
        config = tc.opt("rbac", _rbac_message, Rbac())
    elif name == EXT_AUTHZ_NAME:
        which = tc.exactly_one("disabled", "check_settings")
        if which == "disabled":
            config = ExtAuthzPerRoute(disabled=tc.req("disabled", _bool))
        else:
            config = ExtAuthzPerRoute(context_extensions=tc.req("check_settings", _ext_authz_check_settings))
    elif name == LUA_NAME:
        which = tc.exactly_one("disabled", "name", "source_code")
        if which == "disabled":
            config = LuaPerRoute(disabled=tc.req("disabled", _bool))
        elif which == "name":
            config = LuaPerRoute(name=tc.req("name", _nonempty_str))
        else:
            config = LuaPerRoute(code=tc.req("source_code", _lua_source))
    elif name == JWT_AUTHN_NAME:
        which = tc.exactly_one("disabled", "requirement_name")
        if which == "disabled":
            config = JwtPerRoute(disabled=tc.req("disabled", _bool))
        else:
            config = JwtPerRoute(requirement_name=tc.req("requirement_name", _nonempty_str))
    else:
        config = _local_ratelimit(r, tc)
    tc.done()
    return config


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def _fractional_percent(r: _Reader, v: object, path: str) -> FractionalPercent:
    f = _Fields(r, v, path, ("numerator", "denominator"))
    numerator = f.opt("numerator", _uint32, 0)
    denominator = f.opt("denominator", _enum(tuple(_DENOMINATORS)), "HUNDRED")
    f.done()
    return FractionalPercent(numerator, _DENOMINATORS[denominator])


def _runtime_fractional_percent(r: _Reader, v: object, path: str) -> FractionalPercent:
    f = _Fields(r, v, path, ("default_value", "runtime_key"))
    default = f.req("default_value", _fractional_percent)
    key = f.opt("runtime_key", _str, None)
    f.done()  # raises if default_value failed
    return FractionalPercent(default.numerator, default.denominator, key or None)


def _string_matcher(r: _Reader, v: object, path: str) -> StringMatcher:
    f = _Fields(r, v, path, ("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"))
    which = f.exactly_one("exact", "prefix", "suffix", "contains", "safe_regex")
    value = ""
    if which == "safe_regex":
        value = f.req("safe_regex", _regex)
    elif which is not None:
        value = f.req(which, _str)
    ignore_case = f.opt("ignore_case", _bool, False)
    if ignore_case and which == "safe_regex":
        f.problem("ignore_case", "has no effect on safe_regex (Envoy rejects it too)")
    f.done()
    return StringMatcher(which, value, ignore_case)  # type: ignore[arg-type]  # which is one of the kinds: done() raised otherwise


def _regex(r: _Reader, v: object, path: str) -> str:
    """``safe_regex {regex}`` (RE2 in Envoy; Python's ``re`` here, on the patterns both accept)."""
    f = _Fields(r, v, path, ("regex", "google_re2"))
    pattern = f.req("regex", _str)
    f.done()
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        r.fail(_join(path, "regex"), f"not a valid regular expression: {exc}")
    return pattern


def _cors_policy(r: _Reader, tc: _Fields) -> CorsPolicy:
    def header_list(r: _Reader, v: object, path: str) -> str:
        return _field_value(r, v, path)

    policy = CorsPolicy(
        allow_origin=tc.opt("allow_origin_string_match", _list(_string_matcher), ()),
        allow_methods=tc.opt("allow_methods", header_list, None) or None,
        allow_headers=tc.opt("allow_headers", header_list, None) or None,
        expose_headers=tc.opt("expose_headers", header_list, None) or None,
        max_age=tc.opt("max_age", header_list, None) or None,
        allow_credentials=tc.opt("allow_credentials", _bool, None),
        filter_enabled=tc.opt("filter_enabled", _runtime_fractional_percent, None),
    )
    tc.opt("shadow_enabled", _runtime_fractional_percent, None)
    return policy


def _rbac_message(r: _Reader, v: object, path: str) -> Rbac:
    """An ``extensions.filters.http.rbac.v3.RBAC`` message (the filter's config, or ``rbac`` of a
    per-route config); ``matcher``/``shadow_matcher`` (the matcher API) are outside the subset."""
    tc = _Fields(r, v, path, _TYPED_CONFIG_FIELDS[RBAC_TYPE])
    config = _rbac(r, tc)
    tc.done()
    return config


def _rbac(r: _Reader, tc: _Fields) -> Rbac:
    return Rbac(
        rules=tc.opt("rules", _rbac_rules, None),
        shadow_rules=tc.opt("shadow_rules", _rbac_rules, None),
        rules_stat_prefix=tc.opt("rules_stat_prefix", _str, ""),
        shadow_rules_stat_prefix=tc.opt("shadow_rules_stat_prefix", _str, ""),
    )


def _rbac_rules(r: _Reader, v: object, path: str) -> RbacRules:
    f = _Fields(r, v, path, ("action", "policies"))
    action: Literal["ALLOW", "DENY", "LOG"] = f.opt("action", _enum(("ALLOW", "DENY", "LOG")), "ALLOW")
    policies: list[RbacPolicy] = []
    raw = f.values.get("policies", {})
    if not isinstance(raw, Mapping):
        f.problem("policies", f"expected a mapping of policy names to policies, got {_kind(raw)}")
        raw = {}
    for name, policy in sorted(raw.items(), key=lambda item: str(item[0])):  # Envoy: a std::map
        policy_path = _join(_join(path, "policies"), str(name))
        try:
            pf = _Fields(r, policy, policy_path, ("permissions", "principals"))
            permissions = pf.req("permissions", _list(_rbac_permission, min_items=1))
            principals = pf.req("principals", _list(_rbac_principal, min_items=1))
            pf.done()
            policies.append(RbacPolicy(str(name), permissions, principals))
        except _Skip:
            f.failed = True
    f.done()
    return RbacRules(action, tuple(policies))


def _cidr(r: _Reader, v: object, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A ``CidrRange``: ``address_prefix`` and ``prefix_len`` (absent: 0, as protobuf's default);
    host bits set are cleared, as Envoy does."""
    f = _Fields(r, v, path, ("address_prefix", "prefix_len"))
    address = f.req("address_prefix", _nonempty_str)
    length = f.opt("prefix_len", _uint(0, 128), 0)
    f.done()
    try:
        return ipaddress.ip_network(f"{address}/{length}", strict=False)
    except ValueError as exc:
        r.fail(path, f"not a CIDR range: {exc}")


def _path_matcher(r: _Reader, v: object, path: str) -> StringMatcher:
    f = _Fields(r, v, path, ("path",))
    matcher = f.req("path", _string_matcher)
    f.done()
    return matcher


_RBAC_HEADER_SPECIFIERS = (
    "exact_match",
    "prefix_match",
    "suffix_match",
    "contains_match",
    "safe_regex_match",
    "present_match",
    "string_match",
)


def _rbac_header(r: _Reader, v: object, path: str) -> RbacHeaderMatcher:
    f = _Fields(r, v, path, ("name", *_RBAC_HEADER_SPECIFIERS, "invert_match"))
    name = f.req("name", _nonempty_str)
    invert = f.opt("invert_match", _bool, False)
    present = [k for k in _RBAC_HEADER_SPECIFIERS if f.has(k)]
    m = RbacHeaderMatcher(name.lower() if name else "", None, True, invert)
    if len(present) > 1:
        f.problem(present[1], f"only one match specifier may be set (also found {present[0]!r})")
    elif present == ["present_match"]:
        m = replace(m, present=f.req("present_match", _bool))
    elif present == ["string_match"]:
        m = replace(m, string=f.req("string_match", _string_matcher))
    elif present == ["safe_regex_match"]:
        m = replace(m, string=StringMatcher("safe_regex", f.req("safe_regex_match", _regex)))
    elif present:
        kind = present[0].removesuffix("_match")
        m = replace(m, string=StringMatcher(kind, f.req(present[0], _str)))  # type: ignore[arg-type]  # one of the StringMatcher kinds, by the list above
    f.done()
    return m


#: the rules of a ``Principal`` and a ``Permission`` (field -> kind); ``source_ip``: Envoy's deprecated
#: name of ``direct_remote_ip``
_RBAC_PRINCIPALS: dict[str, RbacKind] = {
    "and_ids": "and",
    "or_ids": "or",
    "not_id": "not",
    "any": "any",
    "header": "header",
    "url_path": "url_path",
    "authenticated": "authenticated",
    "remote_ip": "remote_ip",
    "direct_remote_ip": "direct_remote_ip",
    "source_ip": "direct_remote_ip",
}
_RBAC_PERMISSIONS: dict[str, RbacKind] = {
    "and_rules": "and",
    "or_rules": "or",
    "not_rule": "not",
    "any": "any",
    "header": "header",
    "url_path": "url_path",
    "destination_ip": "destination_ip",
    "destination_port": "destination_port",
    "destination_port_range": "destination_port_range",
}


def _rbac_matcher(r: _Reader, v: object, path: str, *, principal: bool) -> RbacMatcher:
    """A ``Permission`` (``principal`` False) or a ``Principal``: exactly one rule, read by kind."""
    names = _RBAC_PRINCIPALS if principal else _RBAC_PERMISSIONS
    item = _rbac_principal if principal else _rbac_permission
    f = _Fields(r, v, path, tuple(names))
    which = f.exactly_one(*names)
    out = RbacMatcher("any")
    if which is not None:
        kind = names[which]
        if kind in ("and", "or"):
            key = "ids" if principal else "rules"

            def rule_set(r: _Reader, v: object, path: str) -> tuple[RbacMatcher, ...]:
                sf = _Fields(r, v, path, (key,))
                rules = sf.req(key, _list(item, min_items=1))
                sf.done()
                return rules

            out = RbacMatcher(kind, children=f.req(which, rule_set))
        elif kind == "not":
            out = RbacMatcher(kind, children=(f.req(which, item),))
        elif kind == "any":
            if f.req(which, _bool) is False:
                f.problem(which, "must be true (Envoy's validation: any: true or another rule)")
        elif kind == "header":
            out = RbacMatcher(kind, header=f.req(which, _rbac_header))
        elif kind == "url_path":
            out = RbacMatcher(kind, string=f.req(which, _path_matcher))
        elif kind == "authenticated":

            def authenticated(r: _Reader, v: object, path: str) -> StringMatcher | None:
                af = _Fields(r, v, path, ("principal_name",))
                name = af.opt("principal_name", _string_matcher, None)
                af.done()
                return name

            out = RbacMatcher(kind, string=f.req(which, authenticated))
        elif kind == "destination_port":
            port = f.req(which, _uint(0, 65535))
            out = RbacMatcher(kind, ports=(port, port + 1) if port is not None else (0, 0))
        elif kind == "destination_port_range":

            def port_range(r: _Reader, v: object, path: str) -> tuple[int, int]:
                pf = _Fields(r, v, path, ("start", "end"))
                start, end = pf.opt("start", _uint(0, 65536), 0), pf.opt("end", _uint(0, 65536), 0)
                pf.done()
                return start, end

            out = RbacMatcher(kind, ports=f.req(which, port_range))
        else:
            out = RbacMatcher(kind, network=f.req(which, _cidr))
    f.done()
    return out


def _rbac_permission(r: _Reader, v: object, path: str) -> RbacMatcher:
    return _rbac_matcher(r, v, path, principal=False)


def _rbac_principal(r: _Reader, v: object, path: str) -> RbacMatcher:
    return _rbac_matcher(r, v, path, principal=True)


def _named_map(
    item: Callable[[_Reader, Any, str, str], T],
) -> Callable[[_Reader, Any, str], tuple[T, ...]]:
    """A protobuf ``map<string, M>``: each value read by ``item(r, value, path, name)``, in the order
    written; every problem of every entry is reported."""

    def parse(r: _Reader, v: object, path: str) -> tuple[T, ...]:
        if not isinstance(v, Mapping):
            r.fail(path, f"expected a mapping of names to values, got {_kind(v)}")
        out: list[T] = []
        failed = False
        for name, value in v.items():
            try:
                out.append(item(r, value, _join(path, str(name)), str(name)))
            except _Skip:
                failed = True
        if failed:
            raise _Skip
        return tuple(out)

    return parse


def _jwt_header(r: _Reader, v: object, path: str) -> tuple[str, str]:
    f = _Fields(r, v, path, ("name", "value_prefix"))
    name = f.req("name", _header_name)
    prefix = f.opt("value_prefix", _str, "")
    f.done()
    return name.lower(), prefix


def _jwt_claim_to_header(r: _Reader, v: object, path: str) -> tuple[str, str]:
    f = _Fields(r, v, path, ("header_name", "claim_name"))
    header = f.req("header_name", _header_name)
    claim = f.req("claim_name", _nonempty_str)
    f.done()
    return header.lower(), claim


def _jwt_remote_jwks(r: _Reader, v: object, path: str) -> JwtRemoteJwks:
    f = _Fields(r, v, path, ("http_uri", "cache_duration"))
    cache = f.opt("cache_duration", _duration_gt0, 600.0)
    uri = f.req("http_uri", _http_uri)
    f.done()
    return JwtRemoteJwks(uri[0], uri[1], uri[2], cache)


def _http_uri(r: _Reader, v: object, path: str) -> tuple[str, str, float]:
    """An ``HttpUri``: ``uri`` (http or https, with a path), ``cluster`` (must exist) and
    ``timeout`` (required by Envoy's validation)."""
    f = _Fields(r, v, path, ("uri", "cluster", "timeout"))
    uri = f.req("uri", _nonempty_str)
    cluster = f.req("cluster", _nonempty_str)
    timeout = f.req("timeout", _duration_gt0)
    if uri is not None and not re.match(r"https?://[^/]+", uri):
        f.problem("uri", f"{uri!r} is not an http:// or https:// URI")
    if cluster is not None:
        r.cluster_refs.append((cluster, _join(path, "cluster")))
    f.done()
    return uri, cluster, timeout


def _jwt_cache_config(r: _Reader, v: object, path: str) -> None:
    """Envoy's cache of verified tokens: accepted and not needed (a verification here is cheap
    enough, and the JWKS, the costly part, is cached)."""
    f = _Fields(r, v, path, ("jwt_cache_size", "jwt_max_token_size"))
    f.opt("jwt_cache_size", _uint32, 0)
    f.opt("jwt_max_token_size", _uint32, 0)
    f.done()


def _jwt_provider(r: _Reader, v: object, path: str, name: str) -> JwtProvider:
    fields = (
        "issuer", "audiences", "local_jwks", "remote_jwks", "forward", "from_headers", "from_params",
        "from_cookies", "forward_payload_header", "pad_forward_payload_header", "clock_skew_seconds",
        "claim_to_headers", "jwt_cache_config",
    )  # fmt: skip
    f = _Fields(r, v, path, fields)
    f.exactly_one("local_jwks", "remote_jwks")
    f.opt(
        "jwt_cache_config", lambda r, v, p: _Fields(r, v, p, ("jwt_cache_size", "jwt_max_token_size")), None
    )
    provider = JwtProvider(
        name,
        issuer=f.opt("issuer", _str, ""),
        audiences=f.opt("audiences", _list(_str), ()),
        local_jwks=f.opt("local_jwks", _data_source, None),
        remote_jwks=f.opt("remote_jwks", _jwt_remote_jwks, None),
        forward=f.opt("forward", _bool, False),
        from_headers=f.opt("from_headers", _list(_jwt_header), ()),
        from_params=f.opt("from_params", _list(_nonempty_str), ()),
        from_cookies=f.opt("from_cookies", _list(_nonempty_str), ()),
        forward_payload_header=f.opt("forward_payload_header", _header_name, "").lower(),
        pad_forward_payload_header=f.opt("pad_forward_payload_header", _bool, False),
        clock_skew_seconds=f.opt("clock_skew_seconds", _uint32, 60),
        claim_to_headers=f.opt("claim_to_headers", _list(_jwt_claim_to_header), ()),
    )
    f.done()
    if provider.local_jwks is not None and provider.local_jwks.inline is not None:
        try:
            keys = json.loads(provider.local_jwks.inline)
        except ValueError:
            keys = None
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            r.fail(_join(path, "local_jwks"), 'not a JWKS: expected a JSON object with a "keys" list')
    return provider


_JWT_REQUIREMENT_FIELDS = (
    "provider_name",
    "provider_and_audiences",
    "requires_any",
    "requires_all",
    "allow_missing",
    "allow_missing_or_failed",
)


def _jwt_requirement(r: _Reader, v: object, path: str) -> JwtRequirement:
    f = _Fields(r, v, path, _JWT_REQUIREMENT_FIELDS)
    which = f.exactly_one(*_JWT_REQUIREMENT_FIELDS)
    out = JwtRequirement("allow_missing_or_failed")
    if which == "provider_name":
        out = JwtRequirement("provider", provider=f.req(which, _nonempty_str))
    elif which == "provider_and_audiences":

        def provider_and_audiences(r: _Reader, v: object, path: str) -> JwtRequirement:
            pf = _Fields(r, v, path, ("provider_name", "audiences"))
            name = pf.req("provider_name", _nonempty_str)
            audiences = pf.opt("audiences", _list(_str), ())
            pf.done()
            return JwtRequirement("provider", provider=name, audiences=audiences)

        out = f.req(which, provider_and_audiences)
    elif which in ("requires_any", "requires_all"):

        def requirement_list(r: _Reader, v: object, path: str) -> tuple[JwtRequirement, ...]:
            lf = _Fields(r, v, path, ("requirements",))
            items = lf.req("requirements", _list(_jwt_requirement, min_items=2))
            lf.done()
            return items

        kind: Literal["any", "all"] = "any" if which == "requires_any" else "all"
        out = JwtRequirement(kind, requirements=f.req(which, requirement_list))
    elif which in ("allow_missing", "allow_missing_or_failed"):
        _Fields(r, f.values[which], _join(path, which), ()).done()  # google.protobuf.Empty
        out = JwtRequirement(which)  # type: ignore[arg-type]  # one of the two kinds, by the test above
    f.done()
    return out


def _jwt_rule(r: _Reader, v: object, path: str) -> JwtRule:
    f = _Fields(r, v, path, ("match", "requires"))
    rule = JwtRule(f.req("match", _route_match), f.opt("requires", _jwt_requirement, None))
    f.done()
    return rule


def _jwt_authn(r: _Reader, tc: _Fields) -> JwtAuthentication:
    tc.opt("stat_prefix", _str, "")
    config = JwtAuthentication(
        providers=tc.opt("providers", _named_map(_jwt_provider), ()),
        rules=tc.opt("rules", _list(_jwt_rule), ()),
        requirement_map=tc.opt(
            "requirement_map", _named_map(lambda r, v, p, name: (name, _jwt_requirement(r, v, p))), ()
        ),
        bypass_cors_preflight=tc.opt("bypass_cors_preflight", _bool, False),
    )
    raw = tc.values.get("providers")
    names = {str(k) for k in raw} if isinstance(raw, Mapping) else set()  # a failed one still counts

    def check(req: JwtRequirement, path: str) -> None:
        if req.kind == "provider" and req.provider not in names:
            tc.problem(path, f"provider {req.provider!r} is not in providers ({', '.join(sorted(names))})")
        for i, child in enumerate(req.requirements):
            check(child, f"{path}.requirements[{i}]")

    for i, rule in enumerate(config.rules or ()):  # None: the rules failed (tc.done() raises)
        if rule.requires is not None:
            check(rule.requires, f"rules[{i}].requires")
    for name, req in config.requirement_map or ():
        check(req, f"requirement_map.{name}")
    return config


def _ext_authz_check_settings(r: _Reader, v: object, path: str) -> tuple[tuple[str, str], ...]:
    f = _Fields(r, v, path, ("context_extensions",))
    raw = f.opt("context_extensions", _string_map, {})
    f.done()
    return tuple(raw.items())


def _string_map(r: _Reader, v: object, path: str) -> dict[str, str]:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping of strings, got {_kind(v)}")
    out = {}
    for key, value in v.items():
        out[str(key)] = _str(r, value, _join(path, str(key)))
    return out


def _list_string_matcher(r: _Reader, v: object, path: str) -> tuple[StringMatcher, ...]:
    """A ``ListStringMatcher``: ``patterns``, any of which may match."""
    f = _Fields(r, v, path, ("patterns",))
    patterns = f.req("patterns", _list(_string_matcher, min_items=1))
    f.done()
    return patterns


def _http_status(r: _Reader, v: object, path: str) -> int:
    """An ``HttpStatus``: ``code``, a ``StatusCode`` name (``Forbidden``) or its number."""
    from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs

    f = _Fields(r, v, path, ("code",))
    code = f.req("code", _str_or_int)
    f.done()
    values = http_status_pb2.StatusCode.DESCRIPTOR.values
    for value in values:
        if code in (value.name, value.number) and value.number >= 200:
            return int(value.number)
    r.fail(_join(path, "code"), f"{code!r} is not one of Envoy's StatusCode names (Forbidden, ...)")


def _str_or_int(r: _Reader, v: object, path: str) -> str | int:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        r.fail(path, f"expected a name or a number, got {_kind(v)}")
    return v


def _ext_authz_http_service(r: _Reader, v: object, path: str) -> ExtAuthz:
    f = _Fields(r, v, path, ("server_uri", "path_prefix", "authorization_request", "authorization_response"))
    uri = f.req("server_uri", _http_uri)
    prefix = f.opt("path_prefix", _str, "")
    if prefix and not prefix.startswith("/"):
        f.problem("path_prefix", f"{prefix!r} must start with '/'")
    request = f.opt("authorization_request", _ext_authz_request, (None, ()))
    response = f.opt("authorization_response", _ext_authz_response, ((), (), None, ()))
    f.done()
    return ExtAuthz(
        "http",
        cluster=uri[1],
        uri=uri[0],
        timeout=uri[2],
        path_prefix=prefix,
        allowed_headers=request[0],
        headers_to_add=request[1],
        allowed_upstream_headers=response[0],
        allowed_upstream_headers_to_append=response[1],
        allowed_client_headers=response[2],
        allowed_client_headers_on_success=response[3],
    )


def _ext_authz_request(
    r: _Reader, v: object, path: str
) -> tuple[tuple[StringMatcher, ...] | None, tuple[tuple[str, str], ...]]:
    f = _Fields(r, v, path, ("allowed_headers", "headers_to_add"))
    allowed = f.opt("allowed_headers", _list_string_matcher, None)
    to_add = f.opt("headers_to_add", _list(_header_value), ())
    f.done()
    return allowed, to_add


_Patterns = tuple[StringMatcher, ...]


def _ext_authz_response(
    r: _Reader, v: object, path: str
) -> tuple[_Patterns, _Patterns, _Patterns | None, _Patterns]:
    names = (
        "allowed_upstream_headers",
        "allowed_upstream_headers_to_append",
        "allowed_client_headers",
        "allowed_client_headers_on_success",
    )
    f = _Fields(r, v, path, names)
    out = (
        f.opt(names[0], _list_string_matcher, ()),
        f.opt(names[1], _list_string_matcher, ()),
        f.opt(names[2], _list_string_matcher, None),
        f.opt(names[3], _list_string_matcher, ()),
    )
    f.done()
    return out


def _ext_authz_grpc_service(r: _Reader, v: object, path: str) -> ExtAuthz:
    f = _Fields(r, v, path, ("envoy_grpc", "google_grpc", "timeout"))
    which = f.exactly_one("envoy_grpc", "google_grpc")
    timeout = f.opt("timeout", _duration_gt0, 0.2)
    config = ExtAuthz("grpc", timeout=timeout)
    if which == "envoy_grpc":

        def envoy_grpc(r: _Reader, v: object, path: str) -> ExtAuthz:
            ef = _Fields(r, v, path, ("cluster_name", "authority"))
            cluster = ef.req("cluster_name", _nonempty_str)
            authority = ef.opt("authority", _str, None)
            if cluster is not None:
                r.cluster_refs.append((cluster, _join(path, "cluster_name")))
            ef.done()
            return replace(config, cluster=cluster, authority=authority or None)

        config = f.req(which, envoy_grpc)
    elif which == "google_grpc":

        def google_grpc(r: _Reader, v: object, path: str) -> ExtAuthz:
            gf = _Fields(r, v, path, ("target_uri", "stat_prefix"))
            target = gf.req("target_uri", _nonempty_str)
            gf.req("stat_prefix", _str)  # required by Envoy's validation
            gf.done()
            return replace(config, target=target)

        config = f.req(which, google_grpc)
    f.done()
    if importlib.util.find_spec("grpc") is None:  # grpcio: this filter's gRPC client (the "grpc" extra)
        r.fail(path, "needs grpcio (pip install 'trio_yastack[grpc]')")
    return config


def _ext_authz(r: _Reader, tc: _Fields) -> ExtAuthz:
    which = tc.exactly_one("http_service", "grpc_service")
    config = ExtAuthz("http")
    if which == "http_service":
        config = tc.req(which, _ext_authz_http_service)
    elif which == "grpc_service":
        config = tc.req(which, _ext_authz_grpc_service)
    version = tc.opt("transport_api_version", _enum(("V3",)), "V3")
    tc.opt("clear_route_cache", _bool, False)  # the route is chosen before the filters here
    allowed = tc.opt("allowed_headers", _list_string_matcher, None)
    rest = {
        "failure_mode_allow": tc.opt("failure_mode_allow", _bool, False),
        "failure_mode_allow_header_add": tc.opt("failure_mode_allow_header_add", _bool, False),
        "status_on_error": tc.opt("status_on_error", _http_status, 403),
        "filter_enabled": tc.opt("filter_enabled", _runtime_fractional_percent, None),
        "stat_prefix": tc.opt("stat_prefix", _str, ""),
        "include_peer_certificate": tc.opt("include_peer_certificate", _bool, False),
    }
    if config is None or version is None or tc.failed:
        return ExtAuthz("http")  # tc.done() raises
    allowed = allowed if allowed is not None else config.allowed_headers
    return replace(config, allowed_headers=allowed, **rest)  # type: ignore[arg-type]  # each value read by its field's parser above


def _lua_source(r: _Reader, v: object, path: str) -> str:
    """A Lua script's ``DataSource`` (inline or a file read now), compiled here so a syntax error is
    a config problem at its path, as Envoy reports it at load."""
    source = _data_source(r, v, path)
    try:
        code = source.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        r.fail(path, f"cannot read the script: {exc}")
    _lua_compiles(r, code, path)
    return code


def _lua_compiles(r: _Reader, code: str, path: str) -> None:
    try:
        import lupa  # type: ignore[import-untyped]  # lupa ships no type stubs (the "lua" extra)
    except ImportError:
        r.fail(path, "needs lupa (pip install 'trio_yastack[lua]')")
    loaded = lupa.LuaRuntime().globals().load(code)  # load() compiles without running
    if isinstance(loaded, tuple):  # (nil, message)
        r.fail(path, f"Lua: {loaded[-1]}")


def _lua(r: _Reader, tc: _Fields) -> Lua:
    which = [k for k in ("inline_code", "default_source_code") if tc.has(k)]
    if len(which) > 1:
        tc.problem("default_source_code", "only one of inline_code, default_source_code may be set")
    code = ""
    if tc.has("inline_code"):
        code = tc.req("inline_code", _str)
        if code is not None:
            try:
                _lua_compiles(tc.r, code, _join(tc.path, "inline_code"))
            except _Skip:
                tc.failed = True
    elif tc.has("default_source_code"):
        code = tc.req("default_source_code", _lua_source)
    codes = tc.opt("source_codes", _named_map(lambda r, v, p, name: (name, _lua_source(r, v, p))), ())
    return Lua(code or "", codes or (), tc.opt("stat_prefix", _str, ""))


_ZLIB_LEVELS = {"DEFAULT_COMPRESSION": -1, "BEST_SPEED": 1, "BEST_COMPRESSION": 9} | {
    f"COMPRESSION_LEVEL_{n}": n for n in range(1, 10)
}
_ZLIB_STRATEGIES = {"DEFAULT_STRATEGY": 0, "FILTERED": 1, "HUFFMAN_ONLY": 2, "RLE": 3, "FIXED": 4}


def _gzip_library(r: _Reader, v: object, path: str) -> dict[str, Any]:
    _, f, tc = _extension(r, v, path, {"gzip": GZIP_COMPRESSOR_TYPE}, types_by_url=True)
    out = {
        # (.get: a failed enum read is None, and tc.done() below raises before it is used)
        "compression_level": _ZLIB_LEVELS.get(
            tc.opt("compression_level", _enum(tuple(_ZLIB_LEVELS)), "DEFAULT_COMPRESSION"), -1
        ),
        "strategy": _ZLIB_STRATEGIES.get(
            tc.opt("compression_strategy", _enum(tuple(_ZLIB_STRATEGIES)), "DEFAULT_STRATEGY"), 0
        ),
        "memory_level": tc.opt("memory_level", _uint(1, 9), 5),
        "window_bits": tc.opt("window_bits", _uint(9, 15), 12),
    }
    tc.opt("chunk_size", _uint(4096, 65536), 4096)  # zlib's output buffer: Python's zlib sizes its own
    tc.done()
    f.done()
    return out


def _feature_flag(r: _Reader, v: object, path: str) -> tuple[bool, str | None]:
    f = _Fields(r, v, path, ("default_value", "runtime_key"))
    value = f.req("default_value", _bool)
    key = f.opt("runtime_key", _str, None)
    f.done()
    return value, key or None


def _compressor_common(r: _Reader, v: object, path: str) -> dict[str, Any]:
    f = _Fields(r, v, path, ("enabled", "min_content_length", "content_type"))
    out: dict[str, Any] = {}
    if f.has("enabled"):
        out["enabled"], out["enabled_runtime_key"] = f.req("enabled", _feature_flag) or (True, None)
    if f.has("min_content_length"):
        out["min_content_length"] = f.req("min_content_length", _uint32)
    if f.has("content_type"):
        out["content_types"] = tuple(t.lower() for t in f.req("content_type", _list(_nonempty_str)) or ())
    f.done()  # raises if anything above failed, so no placeholder escapes
    return out


def _compressor_response(r: _Reader, v: object, path: str) -> dict[str, Any]:
    f = _Fields(r, v, path, ("common_config", "disable_on_etag_header"))
    out = f.opt("common_config", _compressor_common, {}) or {}
    if f.has("disable_on_etag_header"):
        out = out | {"disable_on_etag_header": f.req("disable_on_etag_header", _bool)}
    f.done()
    return out


def _compressor(r: _Reader, tc: _Fields) -> Compressor:
    library = tc.req("compressor_library", _gzip_library)
    settings: dict[str, Any] = {}
    # the deprecated top-level fields Envoy still reads (response_direction_config wins)
    if tc.has("content_length"):
        settings["min_content_length"] = tc.req("content_length", _uint32)
    if tc.has("content_type"):
        settings["content_types"] = tuple(
            t.lower() for t in tc.req("content_type", _list(_nonempty_str)) or ()
        )
    if tc.has("disable_on_etag_header"):
        settings["disable_on_etag_header"] = tc.req("disable_on_etag_header", _bool)
    settings |= tc.opt("response_direction_config", _compressor_response, {}) or {}
    return Compressor(**((library or {}) | settings))


def _cache_storage(r: _Reader, v: object, path: str) -> None:
    """The cache's storage ``typed_config``: only Envoy's in-memory SimpleHttpCacheConfig."""
    f = _Fields(r, v, path, ("@type",))
    url = f.req("@type", _str)
    if url is not None and url != SIMPLE_CACHE_TYPE:
        f.problem("@type", f"{url!r}: the only cache storage here is {SIMPLE_CACHE_TYPE}")
    f.done()


def _http_cache(r: _Reader, tc: _Fields) -> HttpCache:
    tc.req("typed_config", _cache_storage)
    return HttpCache(
        allowed_vary_headers=tc.opt("allowed_vary_headers", _list(_string_matcher), ()),
        max_body_bytes=tc.opt("max_body_bytes", _uint32, 0),
        ignore_request_cache_control_header=tc.opt("ignore_request_cache_control_header", _bool, False),
    )


def _fault_delay(r: _Reader, v: object, path: str) -> FaultDelay:
    f = _Fields(r, v, path, ("fixed_delay", "header_delay", "percentage"))
    which = f.exactly_one("fixed_delay", "header_delay")
    fixed = f.req("fixed_delay", _duration_gt0) if which == "fixed_delay" else None
    if which == "header_delay":
        f.req("header_delay", _empty_message)
    delay = FaultDelay(fixed, f.opt("percentage", _fractional_percent, FractionalPercent()))
    f.done()
    return delay


def _fault_abort(r: _Reader, v: object, path: str) -> FaultAbort:
    f = _Fields(r, v, path, ("http_status", "header_abort", "percentage"))
    which = f.exactly_one("http_status", "header_abort")
    status = f.req("http_status", _uint(200, 599)) if which == "http_status" else None
    if which == "header_abort":
        f.req("header_abort", _empty_message)
    abort = FaultAbort(status, f.opt("percentage", _fractional_percent, FractionalPercent()))
    f.done()
    return abort


def _empty_message(r: _Reader, v: object, path: str) -> None:
    f = _Fields(r, v, path, ())
    f.done()


def _fault(r: _Reader, tc: _Fields) -> HttpFault:
    return HttpFault(
        delay=tc.opt("delay", _fault_delay, None),
        abort=tc.opt("abort", _fault_abort, None),
        max_active_faults=tc.opt("max_active_faults", _uint32, None),
        headers=tc.opt("headers", _list(_header_matcher), ()),
        upstream_cluster=tc.opt("upstream_cluster", _nonempty_str, None),
    )


def _token_bucket(r: _Reader, v: object, path: str) -> TokenBucket:
    f = _Fields(r, v, path, ("max_tokens", "tokens_per_fill", "fill_interval"))
    bucket = TokenBucket(
        max_tokens=f.req("max_tokens", _positive_uint32),
        fill_interval=f.req("fill_interval", _duration_gt0),
        tokens_per_fill=f.opt("tokens_per_fill", _positive_uint32, 1),
    )
    f.done()
    return bucket


def _local_ratelimit(r: _Reader, tc: _Fields) -> LocalRateLimit:
    return LocalRateLimit(
        stat_prefix=tc.req("stat_prefix", _nonempty_str),
        token_bucket=tc.opt("token_bucket", _token_bucket, None),
        filter_enabled=tc.opt("filter_enabled", _runtime_fractional_percent, FractionalPercent()),
        filter_enforced=tc.opt("filter_enforced", _runtime_fractional_percent, FractionalPercent()),
        status=tc.opt("status", _http_status_code, 429),
        response_headers_to_add=tc.opt("response_headers_to_add", _list(_header_value_option), ()),
        per_connection=tc.opt("local_rate_limit_per_downstream_connection", _bool, False),
    )


def _http_status_code(r: _Reader, v: object, path: str) -> int:
    """An ``HttpStatus {code}``; Envoy's local rate limit takes codes of 400 and above."""
    f = _Fields(r, v, path, ("code",))
    code = f.req("code", _uint(400, 599))
    f.done()
    return code


def _idle_timeout_options(r: _Reader, v: object, path: str) -> float:
    f = _Fields(r, v, path, ("idle_timeout",))
    t = f.opt("idle_timeout", _duration_ge0, 3600.0)
    f.done()
    return t


def _http2_options(r: _Reader, v: object, path: str) -> Http2Options:
    """``http2_protocol_options``: the three settings the HTTP/2 codec applies (others refused)."""
    f = _Fields(
        r, v, path, ("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size")
    )
    d = Http2Options()
    options = Http2Options(
        max_concurrent_streams=f.opt("max_concurrent_streams", _uint(1, 2**31 - 1), d.max_concurrent_streams),
        initial_stream_window_size=f.opt(
            "initial_stream_window_size", _uint(65535, 2**31 - 1), d.initial_stream_window_size
        ),
        initial_connection_window_size=f.opt(
            "initial_connection_window_size", _uint(65535, 2**31 - 1), d.initial_connection_window_size
        ),
    )
    f.done()
    return options


def _extension_protocol_options(r: _Reader, v: object, path: str) -> Http2Options | None:
    """A cluster's ``typed_extension_protocol_options``: only Envoy's ``HttpProtocolOptions``, with
    ``explicit_http_config`` (HTTP/2 when it holds ``http2_protocol_options``)."""
    f = _Fields(r, v, path, (HTTP_PROTOCOL_OPTIONS_NAME,))
    options = f.opt(HTTP_PROTOCOL_OPTIONS_NAME, _http_protocol_options, None)
    f.done()
    return options


def _http_protocol_options(r: _Reader, v: object, path: str) -> Http2Options | None:
    f = _Fields(r, v, path, ("@type", "explicit_http_config"))
    if f.has("@type") and f.values["@type"] != HTTP_PROTOCOL_OPTIONS_TYPE:
        f.problem("@type", f"needs {HTTP_PROTOCOL_OPTIONS_TYPE}")
    options = f.opt("explicit_http_config", _explicit_http_config, None)
    f.done()
    return options


def _explicit_http_config(r: _Reader, v: object, path: str) -> Http2Options | None:
    f = _Fields(r, v, path, ("http_protocol_options", "http2_protocol_options"))
    which = f.exactly_one("http_protocol_options", "http2_protocol_options")
    options = f.req("http2_protocol_options", _http2_options) if which == "http2_protocol_options" else None
    if which == "http_protocol_options":
        f.req("http_protocol_options", _empty_options)
    f.done()
    return options


def _empty_options(r: _Reader, v: object, path: str) -> None:
    """``http_protocol_options`` (HTTP/1.1, the default): none of its fields is supported."""
    _Fields(r, v, path, ()).done()


def _hcm(r: _Reader, f: _Fields) -> HttpConnectionManager:
    stat_prefix = f.req("stat_prefix", _nonempty_str)
    codec: CodecType = f.opt("codec_type", _enum(CODEC_TYPES), "AUTO")
    route_config = f.req("route_config", _route_config)
    filters = f.req("http_filters", _list(_http_filter, min_items=1))
    if filters is not None:
        routers = [i for i, x in enumerate(filters) if x.name == ROUTER_NAME]
        if routers != [len(filters) - 1]:
            f.problem("http_filters", f"must end with {ROUTER_NAME}, once (the terminal filter)")
        elif filters[-1].disabled:
            f.problem(f"http_filters[{len(filters) - 1}].disabled", "the router cannot be disabled")
        seen_filters: set[str] = set()
        for i, x in enumerate(filters):
            if x.name in seen_filters:
                f.problem(f"http_filters[{i}].name", f"{x.name} is configured twice (one of each here)")
            seen_filters.add(x.name)
    hcm = HttpConnectionManager(
        stat_prefix=stat_prefix,
        route_config=route_config,
        codec_type=codec,
        access_log=f.opt("access_log", _list(_access_log), ()),
        idle_timeout=f.opt("common_http_protocol_options", _idle_timeout_options, 3600.0),
        request_timeout=f.opt("request_timeout", _duration_ge0, 0.0),
        stream_idle_timeout=f.opt("stream_idle_timeout", _duration_ge0, 300.0),
        http_filters=filters if filters is not None else (),
        upgrade_configs=f.opt("upgrade_configs", _list(_upgrade_config), ()),
        http2=f.opt("http2_protocol_options", _http2_options, Http2Options()),
    )
    if f.has("local_reply_config"):
        reply = f.req("local_reply_config", _local_reply_config)
        if reply is not None:
            hcm = replace(hcm, local_reply_mappers=reply[0], local_reply_format=reply[1])
    f.done()
    return hcm


def _format_text(r: _Reader, v: object, path: str) -> str:
    text = _str(r, v, path)
    for m in OPERATOR_RE.finditer(text):
        if m.group(1) not in KNOWN_OPERATORS:
            r.fail(
                path, f"unsupported command operator %{m.group(1)}% (supported: {', '.join(KNOWN_OPERATORS)})"
            )
    return text


def _json_format(r: _Reader, v: object, path: str) -> str:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")

    def check(node: object, where: str) -> None:
        if isinstance(node, str):
            _format_text(r, node, where)
        elif isinstance(node, Mapping):
            for k, x in node.items():
                check(x, _join(where, str(k)))
        elif isinstance(node, list):
            for i, x in enumerate(node):
                check(x, f"{where}[{i}]")

    check(v, path)
    try:
        return json.dumps(v)
    except (TypeError, ValueError) as exc:
        r.fail(path, f"not a JSON object: {exc}")


def _format_string(r: _Reader, v: object, path: str) -> FormatString:
    """A ``SubstitutionFormatString``: one of ``text_format``, ``text_format_source`` (inline),
    ``json_format``; and ``content_type``."""
    f = _Fields(r, v, path, ("text_format", "text_format_source", "json_format", "content_type"))
    which = f.exactly_one("text_format", "text_format_source", "json_format")
    text = json_text = None
    if which == "text_format":
        text = f.req("text_format", _format_text)
    elif which == "text_format_source":
        source = f.req("text_format_source", _inline_data)
        text = _format_text(r, source, _join(path, "text_format_source")) if source is not None else None
    elif which == "json_format":
        json_text = f.req("json_format", _json_format)
    content_type = f.opt("content_type", _field_value, None)
    f.done()
    return FormatString(text, json_text, content_type)


def _inline_data(r: _Reader, v: object, path: str) -> str:
    """A ``DataSource`` given inline (``inline_string``) where the proxy needs the text itself."""
    f = _Fields(r, v, path, ("inline_string",))
    text = f.req("inline_string", _str)
    f.done()
    return text


_COMPARISON_OPS = ("EQ", "GE", "LE")


def _status_comparison(r: _Reader, v: object, path: str) -> tuple[str, int]:
    f = _Fields(r, v, path, ("op", "value"))
    op = f.opt("op", _enum(_COMPARISON_OPS), "EQ")
    value = f.req("value", _runtime_uint32)
    f.done()
    return op, value


def _runtime_uint32(r: _Reader, v: object, path: str) -> int:
    f = _Fields(r, v, path, ("default_value", "runtime_key"))
    value = f.req("default_value", _uint32)
    f.req("runtime_key", _str)  # required by Envoy's RuntimeUInt32; static here
    f.done()
    return value


def _reply_filter(r: _Reader, v: object, path: str) -> ReplyFilter:
    kinds = ("status_code_filter", "header_filter", "response_flag_filter", "and_filter", "or_filter")
    f = _Fields(r, v, path, kinds)
    which = f.exactly_one(*kinds)
    out: ReplyFilter | None = None
    if which == "status_code_filter":
        sub = _Fields(r, f.values["status_code_filter"], _join(path, which), ("comparison",))
        comparison = sub.req("comparison", _status_comparison)
        sub.done()
        out = ReplyFilter(which, op=comparison[0], value=comparison[1])
    elif which == "header_filter":
        sub = _Fields(r, f.values["header_filter"], _join(path, which), ("header",))
        matcher = sub.req("header", _header_matcher)
        sub.done()
        out = ReplyFilter(which, header=_header_predicate(matcher))
    elif which == "response_flag_filter":
        sub = _Fields(r, f.values["response_flag_filter"], _join(path, which), ("flags",))
        flags = sub.opt("flags", _list(_nonempty_str), ())
        sub.done()
        out = ReplyFilter(which, flags=flags)
    elif which is not None:
        sub = _Fields(r, f.values[which], _join(path, which), ("filters",))
        children = sub.req("filters", _list(_reply_filter, min_items=2))
        sub.done()
        out = ReplyFilter(which, children=children)
    f.done()
    if out is None:  # unreachable: f failed, so done() raised
        raise _Skip
    return out


def _header_predicate(m: HeaderMatcher) -> Callable[[Sequence[tuple[bytes, bytes]]], bool]:
    """A header matcher as a test on request headers (the router's rule, without importing it)."""
    name = m.name.lower().encode("latin-1")

    def test(headers: Sequence[tuple[bytes, bytes]]) -> bool:
        raw = next((v for k, v in headers if k.lower() == name), None)
        if m.kind in ("present", "absent"):
            return (raw is not None) == (m.kind == "present")
        if raw is None or m.value is None:
            return False
        value, want = raw.decode("latin-1"), m.value
        if m.ignore_case:
            value, want = value.lower(), want.lower()
        return value == want if m.kind == "exact" else value.startswith(want)

    return test


def _mapper(r: _Reader, v: object, path: str) -> Mapper:
    f = _Fields(r, v, path, ("filter", "status_code", "body", "body_format_override", "headers_to_add"))
    mapper = Mapper(
        filter=f.req("filter", _reply_filter),
        status_code=f.opt("status_code", _uint(200, 599), None),
        body=f.opt("body", _inline_data, None),
        headers_to_add=tuple(
            (h.key, h.value) for h in f.opt("headers_to_add", _list(_header_value_option), ()) or ()
        ),
        body_format_override=f.opt("body_format_override", _format_string, None),
    )
    f.done()
    return mapper


def _local_reply_config(r: _Reader, v: object, path: str) -> tuple[tuple[Mapper, ...], FormatString | None]:
    f = _Fields(r, v, path, ("mappers", "body_format"))
    mappers = f.opt("mappers", _list(_mapper), ())
    body_format = f.opt("body_format", _format_string, None)
    f.done()
    return mappers, body_format


def _tcp_proxy(r: _Reader, f: _Fields) -> TcpProxy:
    proxy = TcpProxy(
        stat_prefix=f.req("stat_prefix", _nonempty_str),
        cluster=f.req("cluster", _cluster_ref),
        idle_timeout=f.opt("idle_timeout", _duration_ge0, 3600.0),
    )
    f.done()
    return proxy


def _network_filter(r: _Reader, v: object, path: str) -> HttpConnectionManager | TcpProxy:
    name, f, tc = _extension(r, v, path, {HCM_NAME: HCM_TYPE, TCP_PROXY_NAME: TCP_PROXY_TYPE})
    try:
        result: HttpConnectionManager | TcpProxy = _hcm(r, tc) if name == HCM_NAME else _tcp_proxy(r, tc)
    finally:
        f.done()
    return result


_TRANSPORT_PROTOCOLS: tuple[Literal["tls", "raw_buffer"], ...] = ("tls", "raw_buffer")


def _filter_chain_match(
    r: _Reader, v: object, path: str
) -> tuple[tuple[str, ...], Literal["tls", "raw_buffer"] | None, tuple[str, ...]]:
    f = _Fields(r, v, path, ("server_names", "transport_protocol", "application_protocols"))
    names = f.opt("server_names", _list(_nonempty_str), ())
    transport = f.opt("transport_protocol", _enum(_TRANSPORT_PROTOCOLS), None)
    alpn = f.opt("application_protocols", _list(_nonempty_str), ())
    f.done()
    return tuple(n.lower() for n in names), transport, alpn


def _filter_chain(r: _Reader, v: object, path: str) -> FilterChain:
    f = _Fields(r, v, path, ("name", "filter_chain_match", "transport_socket", "filters"))
    name = f.opt("name", _str, None)
    chain_match = f.opt("filter_chain_match", _filter_chain_match, ((), None, ()))
    server_names, transport, alpn = chain_match or ((), None, ())  # None: failed, f.done() raises
    tls = f.opt("transport_socket", _downstream_tls, None)
    filters = f.req("filters", _list(_network_filter, min_items=1))
    if filters is not None and len(filters) > 1:
        f.problem(
            "filters", "must hold exactly one filter: http_connection_manager and tcp_proxy are both terminal"
        )
    f.done()
    return FilterChain(filters[0], server_names, tls, name, transport, alpn)


def _listener_filter(r: _Reader, v: object, path: str) -> str:
    if isinstance(v, Mapping) and v.get("name") == TLS_INSPECTOR_NAME and v.get("typed_config") is None:
        f = _Fields(r, v, path, ("name", "typed_config"))  # found by name, as Envoy finds it
        f.done()
        return TLS_INSPECTOR_NAME
    name, f, tc = _extension(r, v, path, {TLS_INSPECTOR_NAME: TLS_INSPECTOR_TYPE})
    tc.done()
    f.done()
    return name


def _listener(r: _Reader, v: object, path: str) -> Listener:
    f = _Fields(r, v, path, ("name", "address", "listener_filters", "filter_chains"))
    address = f.req("address", _address())
    # Envoy names an unnamed listener with a generated UUID; its address is as unique here (two
    # listeners on one address are an error) and tells the operator more in logs and stats.
    name = f.opt("name", _nonempty_str, str(address) if address is not None else "")
    listener_filters = f.opt("listener_filters", _list(_listener_filter), ())
    chains = f.req("filter_chains", _list(_filter_chain, min_items=1))
    if chains is not None:
        seen: dict[tuple[object, ...], int] = {}
        for i, chain in enumerate(chains):
            names = tuple(sorted(chain.server_names))
            key = (names, chain.transport_protocol, tuple(sorted(chain.application_protocols)))
            if key in seen:
                parts = [f"server_names {', '.join(names)}"] if names else []
                if chain.transport_protocol:
                    parts.append(f"transport_protocol {chain.transport_protocol}")
                if chain.application_protocols:
                    parts.append(f"application_protocols {', '.join(chain.application_protocols)}")
                match = "; ".join(parts) or "no filter_chain_match"
                f.problem(f"filter_chains[{i}]", f"same match as filter_chains[{seen[key]}] ({match})")
            seen.setdefault(key, i)
    f.done()
    return Listener(name, address, chains, TLS_INSPECTOR_NAME in listener_filters)


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


def _static_resources(r: _Reader, v: object, path: str) -> tuple[tuple[Listener, ...], tuple[Cluster, ...]]:
    f = _Fields(r, v, path, ("listeners", "clusters", "secrets"))
    for secret in f.opt("secrets", _list(_secret), ()) or ():  # first: listeners and clusters refer to them
        r.secrets[secret.name] = secret
    listeners = f.opt("listeners", _list(_listener), ())
    clusters = f.opt("clusters", _list(_cluster), ())
    raw = f.values
    # Cross-references are checked against the raw names so that one broken cluster (a bad port, say)
    # does not also make every route to it "unknown": each mistake is reported once, where it is.
    # A `clusters` that is not even a list was reported already; checking against it would flag
    # every reference.
    raw_clusters = raw.get("clusters", [])
    cluster_names = _raw_names(raw_clusters)
    for name, ref_path in r.cluster_refs if isinstance(raw_clusters, list) else ():
        if name not in cluster_names:
            r.problems.append(
                Problem(ref_path, f"unknown cluster {name!r} (not in static_resources.clusters)")
            )
            f.failed = True
    for key in ("listeners", "clusters"):
        seen: dict[str, int] = {}
        for i, n in _raw_indexed_names(raw.get(key)):
            if n in seen:
                f.problem(f"{key}[{i}].name", f"duplicate name {n!r} (also {key}[{seen[n]}])")
            seen.setdefault(n, i)
    if listeners:
        bound: dict[tuple[str, int], int] = {}
        for i, listener in enumerate(listeners):
            key2 = (str(ipaddress.ip_address(listener.address.address)), listener.address.port_value)
            if key2 in bound and key2[1] != 0:
                f.problem(
                    f"listeners[{i}].address",
                    f"{listener.address} is already used by listeners[{bound[key2]}]",
                )
            bound.setdefault(key2, i)
    f.done()
    return listeners, clusters


def _raw_indexed_names(items: object) -> list[tuple[int, str]]:
    if not isinstance(items, list):
        return []
    return [
        (i, x["name"])
        for i, x in enumerate(items)
        if isinstance(x, Mapping) and isinstance(x.get("name"), str)
    ]


def _raw_names(items: object) -> set[str]:
    return {n for _, n in _raw_indexed_names(items)}


def _bootstrap(r: _Reader, v: object, path: str) -> Bootstrap:
    if v is None:
        r.fail(path, "the document is empty")
    f = _Fields(r, v, path, ("admin", "static_resources", "layered_runtime"))
    admin = f.opt("admin", _admin, None)
    resources = f.opt("static_resources", _static_resources, ((), ()))
    runtime = f.opt("layered_runtime", _layered_runtime, ())
    f.done()
    return Bootstrap(admin, resources[0], resources[1], runtime)


def _layered_runtime(r: _Reader, v: object, path: str) -> tuple[tuple[str, RuntimeValue], ...]:
    f = _Fields(r, v, path, ("layers",))
    layers = f.opt("layers", _list(_runtime_layer), ())
    f.done()
    merged: dict[str, RuntimeValue] = {}
    for layer in layers:  # later layers override earlier ones, as in Envoy
        merged.update(layer)
    return tuple(sorted(merged.items()))


def _runtime_layer(r: _Reader, v: object, path: str) -> dict[str, RuntimeValue]:
    """A ``static_layer`` (disk, admin and RTDS layers are outside the subset): its nested keys
    flattened into Envoy's dotted runtime keys."""
    f = _Fields(r, v, path, ("name", "static_layer"))
    f.req("name", _nonempty_str)
    layer = f.req("static_layer", _runtime_values)
    f.done()
    return layer


def _runtime_values(r: _Reader, v: object, path: str) -> dict[str, RuntimeValue]:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")
    out: dict[str, RuntimeValue] = {}
    stack: list[tuple[str, Mapping[Any, Any], int]] = [("", v, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        for key, value in node.items():
            full = f"{prefix}{key}"
            if isinstance(value, Mapping) and depth < 32:
                stack.append((f"{full}.", value, depth + 1))
            elif isinstance(value, (bool, int, float, str)) or value is None:
                out[full] = value
            else:
                r.fail(
                    _join(path, full),
                    f"expected a runtime value (number, string, boolean), got {_kind(value)}",
                )
    return out
