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

Each class says which fields it reads and Envoy's default for each absent one.  Durations are
protobuf's JSON form (``"5s"``, ``"0.25s"``, ``"1.5s"``), read into float seconds.  A document is read
the way Envoy reads it, by Envoy's own schema (:mod:`trio_yastack.l7.envoy`, from ``xds-protos``):
lowerCamelCase names as well as snake_case ones, integers written as strings (``port_value: "80"``),
durations as ``{seconds, nanos}``, enum names in any case.  Beyond those spellings values are typed as
protobuf's JSON mapping types them (``name: 5`` is an error, not coerced), and ``null`` means "absent"
as it does for protobuf.  Errors name the canonical (snake_case) path.

Where this package is stricter than Envoy, it says so: a cluster must have endpoints, a retry policy
must name its ``retry_on`` conditions, a filter chain holds exactly one (terminal) filter,
``http_filters`` hold each filter once and end with the router, and ``require_client_certificate``
needs a ``trusted_ca``.  These catch configs that Envoy accepts but that cannot do anything useful
with the filters this proxy has.

The modules follow Envoy's API, so a field is found where Envoy's docs put it: ``_listener``
(listeners, filter chains, ``tcp_proxy``), ``_hcm`` (the HTTP connection manager, access logs, local
replies), ``_route`` and ``_route_match`` (route tables), ``_http_filters`` and ``_auth_filters`` (the
HTTP filters' configs), ``_cluster`` (clusters and endpoints), ``_tls`` (TLS contexts and SDS secrets),
``_core`` (addresses, headers, matchers, protocol options), ``_bootstrap`` (the bootstrap and the
loader's entry points), on top of ``_reader`` (problems and the field reader every area uses) and
``_names`` (extension names and type URLs).  Everything public is re-exported here.
"""

from __future__ import annotations

from trio_yastack.tls.config import CommonTlsContext as CommonTlsContext
from trio_yastack.tls.config import DataSource as DataSource
from trio_yastack.tls.config import DownstreamTlsContext as DownstreamTlsContext
from trio_yastack.tls.config import SubjectAltNameMatcher as SubjectAltNameMatcher
from trio_yastack.tls.config import TlsCertificate as TlsCertificate
from trio_yastack.tls.config import TlsParams as TlsParams
from trio_yastack.tls.config import UpstreamTlsContext as UpstreamTlsContext

from ._auth_filters import ExtAuthz as ExtAuthz
from ._auth_filters import ExtAuthzBufferSettings as ExtAuthzBufferSettings
from ._auth_filters import ExtAuthzPerRoute as ExtAuthzPerRoute
from ._auth_filters import JwksAsyncFetch as JwksAsyncFetch
from ._auth_filters import JwksRetryPolicy as JwksRetryPolicy
from ._auth_filters import JwtAuthentication as JwtAuthentication
from ._auth_filters import JwtPerRoute as JwtPerRoute
from ._auth_filters import JwtProvider as JwtProvider
from ._auth_filters import JwtRemoteJwks as JwtRemoteJwks
from ._auth_filters import JwtRequirement as JwtRequirement
from ._auth_filters import JwtRule as JwtRule
from ._auth_filters import MetadataMatcher as MetadataMatcher
from ._auth_filters import Rbac as Rbac
from ._auth_filters import RbacHeaderMatcher as RbacHeaderMatcher
from ._auth_filters import RbacKind as RbacKind
from ._auth_filters import RbacMatcher as RbacMatcher
from ._auth_filters import RbacPolicy as RbacPolicy
from ._auth_filters import RbacRules as RbacRules
from ._auth_filters import ValueMatcher as ValueMatcher
from ._bootstrap import Admin as Admin
from ._bootstrap import Bootstrap as Bootstrap
from ._bootstrap import load_config as load_config
from ._bootstrap import load_config_file as load_config_file
from ._bootstrap import load_config_or_report as load_config_or_report
from ._bootstrap import parse_bootstrap as parse_bootstrap
from ._cluster import CircuitBreakerThresholds as CircuitBreakerThresholds
from ._cluster import Cluster as Cluster
from ._cluster import ClusterLoadAssignment as ClusterLoadAssignment
from ._cluster import HealthCheck as HealthCheck
from ._cluster import LbEndpoint as LbEndpoint
from ._cluster import LocalityLbEndpoints as LocalityLbEndpoints
from ._cluster import OutlierDetection as OutlierDetection
from ._core import FractionalPercent as FractionalPercent
from ._core import HeaderValueOption as HeaderValueOption
from ._core import Http2Options as Http2Options
from ._core import SocketAddress as SocketAddress
from ._core import StringMatcher as StringMatcher
from ._hcm import AccessLog as AccessLog
from ._hcm import HttpConnectionManager as HttpConnectionManager
from ._http_filters import COMPRESSIBLE_TYPES as COMPRESSIBLE_TYPES
from ._http_filters import Compressor as Compressor
from ._http_filters import CompressorPerRoute as CompressorPerRoute
from ._http_filters import Cors as Cors
from ._http_filters import CorsPolicy as CorsPolicy
from ._http_filters import FaultAbort as FaultAbort
from ._http_filters import FaultDelay as FaultDelay
from ._http_filters import FaultRateLimit as FaultRateLimit
from ._http_filters import GrpcWeb as GrpcWeb
from ._http_filters import HttpCache as HttpCache
from ._http_filters import HttpFault as HttpFault
from ._http_filters import HttpFilter as HttpFilter
from ._http_filters import HttpFilterConfig as HttpFilterConfig
from ._http_filters import LocalRateLimit as LocalRateLimit
from ._http_filters import Lua as Lua
from ._http_filters import LuaPerRoute as LuaPerRoute
from ._http_filters import PerRouteConfig as PerRouteConfig
from ._http_filters import RouterFilter as RouterFilter
from ._http_filters import TokenBucket as TokenBucket
from ._listener import FilterChain as FilterChain
from ._listener import Listener as Listener
from ._listener import TcpProxy as TcpProxy
from ._names import APPEND_ACTIONS as APPEND_ACTIONS
from ._names import CACHE_NAME as CACHE_NAME
from ._names import CACHE_TYPE as CACHE_TYPE
from ._names import CLUSTER_TYPES as CLUSTER_TYPES
from ._names import CODEC_TYPES as CODEC_TYPES
from ._names import COMPRESSOR_NAME as COMPRESSOR_NAME
from ._names import COMPRESSOR_PER_ROUTE_TYPE as COMPRESSOR_PER_ROUTE_TYPE
from ._names import COMPRESSOR_TYPE as COMPRESSOR_TYPE
from ._names import CORS_NAME as CORS_NAME
from ._names import CORS_POLICY_TYPE as CORS_POLICY_TYPE
from ._names import CORS_TYPE as CORS_TYPE
from ._names import DNS_LOOKUP_FAMILIES as DNS_LOOKUP_FAMILIES
from ._names import DOWNSTREAM_TLS_TYPE as DOWNSTREAM_TLS_TYPE
from ._names import EXT_AUTHZ_NAME as EXT_AUTHZ_NAME
from ._names import EXT_AUTHZ_PER_ROUTE_TYPE as EXT_AUTHZ_PER_ROUTE_TYPE
from ._names import EXT_AUTHZ_TYPE as EXT_AUTHZ_TYPE
from ._names import FAULT_NAME as FAULT_NAME
from ._names import FAULT_TYPE as FAULT_TYPE
from ._names import FILE_LOG_NAME as FILE_LOG_NAME
from ._names import FILE_LOG_TYPE as FILE_LOG_TYPE
from ._names import GRPC_WEB_NAME as GRPC_WEB_NAME
from ._names import GRPC_WEB_TYPE as GRPC_WEB_TYPE
from ._names import GZIP_COMPRESSOR_TYPE as GZIP_COMPRESSOR_TYPE
from ._names import HCM_NAME as HCM_NAME
from ._names import HCM_TYPE as HCM_TYPE
from ._names import HTTP_FILTER_TYPES as HTTP_FILTER_TYPES
from ._names import HTTP_PROTOCOL_OPTIONS_NAME as HTTP_PROTOCOL_OPTIONS_NAME
from ._names import HTTP_PROTOCOL_OPTIONS_TYPE as HTTP_PROTOCOL_OPTIONS_TYPE
from ._names import JWT_AUTHN_NAME as JWT_AUTHN_NAME
from ._names import JWT_AUTHN_PER_ROUTE_TYPE as JWT_AUTHN_PER_ROUTE_TYPE
from ._names import JWT_AUTHN_TYPE as JWT_AUTHN_TYPE
from ._names import LB_POLICIES as LB_POLICIES
from ._names import LOCAL_RATELIMIT_NAME as LOCAL_RATELIMIT_NAME
from ._names import LOCAL_RATELIMIT_TYPE as LOCAL_RATELIMIT_TYPE
from ._names import LUA_NAME as LUA_NAME
from ._names import LUA_PER_ROUTE_TYPE as LUA_PER_ROUTE_TYPE
from ._names import LUA_TYPE as LUA_TYPE
from ._names import PER_ROUTE_TYPES as PER_ROUTE_TYPES
from ._names import RBAC_NAME as RBAC_NAME
from ._names import RBAC_PER_ROUTE_TYPE as RBAC_PER_ROUTE_TYPE
from ._names import RBAC_TYPE as RBAC_TYPE
from ._names import RETRY_ON as RETRY_ON
from ._names import ROUTER_NAME as ROUTER_NAME
from ._names import ROUTER_TYPE as ROUTER_TYPE
from ._names import SIMPLE_CACHE_TYPE as SIMPLE_CACHE_TYPE
from ._names import STDOUT_LOG_NAME as STDOUT_LOG_NAME
from ._names import STDOUT_LOG_TYPE as STDOUT_LOG_TYPE
from ._names import TCP_PROXY_NAME as TCP_PROXY_NAME
from ._names import TCP_PROXY_TYPE as TCP_PROXY_TYPE
from ._names import TLS_INSPECTOR_NAME as TLS_INSPECTOR_NAME
from ._names import TLS_INSPECTOR_TYPE as TLS_INSPECTOR_TYPE
from ._names import TLS_NAME as TLS_NAME
from ._names import UPSTREAM_TLS_TYPE as UPSTREAM_TLS_TYPE
from ._names import AppendAction as AppendAction
from ._names import ClusterType as ClusterType
from ._names import CodecType as CodecType
from ._names import DnsLookupFamily as DnsLookupFamily
from ._names import LbPolicy as LbPolicy
from ._names import RuntimeValue as RuntimeValue
from ._ratelimit import LocalDescriptor as LocalDescriptor
from ._ratelimit import RateLimitAction as RateLimitAction
from ._ratelimit import RateLimitPolicy as RateLimitPolicy
from ._reader import ConfigError as ConfigError
from ._reader import Problem as Problem
from ._reader import format_problems as format_problems
from ._reader import parse_duration as parse_duration
from ._route import DirectResponse as DirectResponse
from ._route import RetryPolicy as RetryPolicy
from ._route import Route as Route
from ._route import RouteAction as RouteAction
from ._route import RouteConfiguration as RouteConfiguration
from ._route import VirtualHost as VirtualHost
from ._route import WeightedCluster as WeightedCluster
from ._route_match import HeaderMatcher as HeaderMatcher
from ._route_match import RouteMatch as RouteMatch
from ._tls import SECRET_TYPE as SECRET_TYPE
from ._tls import Secret as Secret
from ._tls import normalize_secret as normalize_secret

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
    "ExtAuthzBufferSettings",
    "ExtAuthzPerRoute",
    "FaultAbort",
    "FaultDelay",
    "FaultRateLimit",
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
    "JwksAsyncFetch",
    "JwksRetryPolicy",
    "JwtAuthentication",
    "JwtPerRoute",
    "JwtProvider",
    "JwtRemoteJwks",
    "JwtRequirement",
    "JwtRule",
    "LbEndpoint",
    "Listener",
    "LocalDescriptor",
    "LocalRateLimit",
    "LocalityLbEndpoints",
    "Lua",
    "LuaPerRoute",
    "MetadataMatcher",
    "OutlierDetection",
    "PerRouteConfig",
    "Problem",
    "RateLimitAction",
    "RateLimitPolicy",
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
    "ValueMatcher",
    "VirtualHost",
    "WeightedCluster",
    "format_problems",
    "load_config",
    "load_config_file",
    "load_config_or_report",
    "parse_bootstrap",
    "parse_duration",
]
