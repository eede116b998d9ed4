"""The extension names and type URLs of the supported subset, and its enum values (Envoy's own spellings).

One table every area reads, so a name is spelled once."""

from __future__ import annotations

from typing import Literal

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
