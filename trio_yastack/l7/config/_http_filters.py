"""The HTTP filters' configs (``cors``, ``fault``, ``local_ratelimit``, ``compressor``, ``cache``,
``grpc_web``, ``lua``, the router; the authorization filters come from :mod:`._auth_filters`), and
the ``http_filters[]`` / ``typed_per_filter_config`` entries that name them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._auth_filters import (
    ExtAuthz,
    ExtAuthzPerRoute,
    JwtAuthentication,
    JwtPerRoute,
    Rbac,
    _ext_authz,
    _ext_authz_check_settings,
    _jwt_authn,
    _rbac,
    _rbac_message,
)
from ._core import (
    FractionalPercent,
    HeaderValueOption,
    StringMatcher,
    _field_value,
    _fractional_percent,
    _header_value_option,
    _http_status_code,
    _runtime_fractional_percent,
    _string_matcher,
)
from ._names import (
    CACHE_NAME,
    COMPRESSOR_NAME,
    CORS_NAME,
    EXT_AUTHZ_NAME,
    FAULT_NAME,
    GRPC_WEB_NAME,
    GZIP_COMPRESSOR_TYPE,
    HTTP_FILTER_TYPES,
    JWT_AUTHN_NAME,
    LOCAL_RATELIMIT_NAME,
    LUA_NAME,
    PER_ROUTE_TYPES,
    RBAC_NAME,
    ROUTER_NAME,
    SIMPLE_CACHE_TYPE,
)
from ._ratelimit import (
    LocalDescriptor,
    RateLimitPolicy,
    TokenBucket,
    _local_descriptor,
    _rate_limit,
    _token_bucket,
)
from ._reader import (
    _TYPED_CONFIG_FIELDS,
    Problem,
    _bool,
    _duration_gt0,
    _empty_message,
    _enum,
    _extension,
    _Fields,
    _join,
    _kind,
    _list,
    _named_map,
    _nonempty_str,
    _only_field,
    _positive_uint32,
    _Reader,
    _Skip,
    _str,
    _uint,
    _uint32,
)
from ._route_match import HeaderMatcher, _header_matcher
from ._tls import _data_source


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """``envoy.extensions.filters.http.cors.v3.CorsPolicy`` (in ``typed_per_filter_config`` of a virtual
    host or route).  Each attribute left unset (None) is taken from the less specific policy, as Envoy
    does: route first, then virtual host.  ``filter_enabled`` absent means enabled (Envoy's default);
    ``shadow_enabled``: where the filter is not enabled, the requests it picks have their origin
    checked and counted (``cors.origin_valid``/``origin_invalid``), nothing else."""

    allow_origin: tuple[StringMatcher, ...] = ()
    allow_methods: str | None = None
    allow_headers: str | None = None
    expose_headers: str | None = None
    max_age: str | None = None
    allow_credentials: bool | None = None
    filter_enabled: FractionalPercent | None = None
    shadow_enabled: FractionalPercent | None = None
    allow_private_network_access: bool | None = None
    #: None: Envoy's default, true (a preflight from an origin not allowed goes upstream)
    forward_not_matching_preflights: bool | None = None


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
    """``abort``: ``http_status`` (200-599), ``grpc_status`` (a gRPC answer: 200 with that
    ``grpc-status``), or ``header_abort`` (the status in the request's
    ``x-envoy-fault-abort-request``), for ``percentage`` of requests (Envoy's default: none)."""

    http_status: int | None
    percentage: FractionalPercent = field(default_factory=FractionalPercent)
    grpc_status: int | None = None


@dataclass(frozen=True, slots=True)
class FaultRateLimit:
    """``response_rate_limit``: the response body sent at ``limit_kbps`` KiB/s (``fixed_limit``), or
    at the rate in the request's ``x-envoy-fault-throughput-response`` (``header_limit``: None here),
    for ``percentage`` of requests (Envoy's default: none)."""

    limit_kbps: int | None
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
    response_rate_limit: FaultRateLimit | None = None


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
    #: ``enable_x_ratelimit_headers: DRAFT_VERSION_03``: ``x-ratelimit-limit``/``-remaining``/``-reset``
    x_ratelimit_headers: bool = False
    #: added to a request the bucket refused but ``filter_enforced`` let through
    request_headers_to_add_when_not_enforced: tuple[HeaderValueOption, ...] = ()
    #: ``descriptors[]``: a bucket per descriptor the route's ``rate_limits`` (of this ``stage``)
    #: build for a request; ``vh_rate_limits`` says whether the virtual host's count too
    descriptors: tuple[LocalDescriptor, ...] = ()
    stage: int = 0
    vh_rate_limits: str = "OVERRIDE"
    #: ``always_consume_default_token_bucket`` (Envoy's default true): False takes from
    #: ``token_bucket`` only when no descriptor matched
    always_consume_default: bool = True
    #: the filter's own ``rate_limits`` (when set, the route's and virtual host's are not read)
    rate_limits: tuple[RateLimitPolicy, ...] = ()
    #: ``rate_limited_as_resource_exhausted``: a refused gRPC request's local reply carries
    #: ``grpc-status`` RESOURCE_EXHAUSTED (8) in place of UNAVAILABLE (14), mapped from 429
    rate_limited_as_resource_exhausted: bool = False
    #: ``max_dynamic_descriptors`` (Envoy's default 20): the buckets a wildcard descriptor keeps,
    #: one per distinct request descriptor, the least recently used dropped beyond it
    max_dynamic_descriptors: int = 20


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
    #: ``remove_accept_encoding_header``: the request goes upstream without ``Accept-Encoding``
    remove_accept_encoding: bool = False


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
    """``CompressorPerRoute``: ``disabled`` turns the compressor off on a route or virtual host;
    ``overrides.response_direction_config.remove_accept_encoding_header`` (None: the filter's)."""

    disabled: bool = False
    remove_accept_encoding: bool | None = None


@dataclass(frozen=True, slots=True)
class GrpcWeb:
    """``envoy.filters.http.grpc_web``: gRPC-Web clients to a gRPC upstream (nothing to configure)."""


@dataclass(frozen=True, slots=True)
class Lua:
    """``envoy.filters.http.lua``: ``default_source_code`` (or the deprecated ``inline_code``) runs
    on every request, ``source_codes`` by name for routes that ask for one; ``stat_prefix`` names
    the ``lua.errors`` counter's scope; ``clear_route_cache`` (Envoy's default true): a script that
    changed the request's headers has the route chosen again."""

    code: str = ""
    source_codes: tuple[tuple[str, str], ...] = ()
    stat_prefix: str = ""
    clear_route_cache: bool = True


@dataclass(frozen=True, slots=True)
class LuaPerRoute:
    """``LuaPerRoute``: ``disabled``, a ``name`` of the filter's ``source_codes``, a
    ``source_code`` of its own, or none of them (the filter's script); ``filter_context``: the
    ``Struct`` a script reads with ``filterContext()``, as JSON text."""

    disabled: bool = False
    name: str | None = None
    code: str | None = None
    filter_context: str | None = None


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
    ``typed_per_filter_config`` names them (Envoy's meaning).  ``name`` is the name configured
    (routes' ``typed_per_filter_config`` use it); ``kind``, when the name is not the filter's
    canonical one (Envoy lets ``typed_config``'s ``@type`` decide, so a chain can hold two Lua
    filters), is that canonical name."""

    name: str
    config: HttpFilterConfig
    disabled: bool = False
    kind: str = ""

    @property
    def type_name(self) -> str:
        """The filter's canonical name (``envoy.filters.http.lua``), whatever it is called."""
        return self.kind or self.name


def _canonical_name(v: object, types: Mapping[str, str]) -> tuple[object, str | None]:
    """An extension named other than canonically (``name: lua-before``) whose ``typed_config``'s
    ``@type`` is one of ``types``: the entry with the canonical name, and the name given."""
    if not isinstance(v, Mapping) or not isinstance(v.get("name"), str) or v["name"] in types:
        return v, None
    tc = v.get("typed_config")
    url = tc.get("@type") if isinstance(tc, Mapping) else None
    kind = next((k for k, u in types.items() if u == url), None)
    if kind is None:
        return v, None
    return {**v, "name": kind}, str(v["name"])


def _http_filter(r: _Reader, v: object, path: str) -> HttpFilter:
    v, custom = _canonical_name(v, HTTP_FILTER_TYPES)
    if custom is not None:
        return replace(_http_filter(r, v, path), name=custom, kind=str(v["name"]))  # type: ignore[index]  # a mapping, as _canonical_name found
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
        kind = name
        if isinstance(name, str) and name not in PER_ROUTE_TYPES and isinstance(config, Mapping):
            # a filter configured under a name of its own: its per-route type says which it is
            kind = next((k for k, url in PER_ROUTE_TYPES.items() if url == config.get("@type")), name)
        if not isinstance(name, str) or kind not in PER_ROUTE_TYPES:
            r.problems.append(
                Problem(item_path, f"unsupported filter {name!r} (supported: {', '.join(PER_ROUTE_TYPES)})")
            )
            failed = True
            continue
        try:
            out.append((name, _per_filter_config(r, kind, config, item_path)))
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
        if tc.exactly_one("disabled", "overrides") == "overrides":
            config = CompressorPerRoute(remove_accept_encoding=tc.req("overrides", _compressor_overrides))
        else:
            config = CompressorPerRoute(disabled=tc.req("disabled", _true) or False)
    elif name == FAULT_NAME:
        config = _fault(r, tc)
    elif name == RBAC_NAME:
        config = tc.opt("rbac", _rbac_message, Rbac())
    elif name == EXT_AUTHZ_NAME:
        which = tc.exactly_one("disabled", "check_settings")
        if which == "disabled":
            config = ExtAuthzPerRoute(disabled=tc.req("disabled", _bool))
        else:
            config = tc.req("check_settings", _ext_authz_check_settings)
    elif name == LUA_NAME:
        overrides = [k for k in ("disabled", "name", "source_code") if tc.has(k)]
        context = tc.opt("filter_context", _struct_json, None)
        if len(overrides) > 1:
            tc.problem(
                overrides[1],
                f"only one of disabled, name, source_code may be set (also found {overrides[0]!r})",
            )
        if "disabled" in overrides:
            config = LuaPerRoute(disabled=tc.req("disabled", _true))
        elif "name" in overrides:
            config = LuaPerRoute(name=tc.req("name", _nonempty_str), filter_context=context)
        elif "source_code" in overrides:
            config = LuaPerRoute(code=tc.req("source_code", _lua_source), filter_context=context)
        else:  # the filter's own script, with this route's filter_context
            config = LuaPerRoute(filter_context=context)
    elif name == JWT_AUTHN_NAME:
        which = tc.exactly_one("disabled", "requirement_name")
        if which == "disabled":
            config = JwtPerRoute(disabled=tc.req("disabled", _true))
        else:
            config = JwtPerRoute(requirement_name=tc.req("requirement_name", _nonempty_str))
    else:
        if not tc.has("token_bucket"):  # Envoy rejects a per-route config without its own bucket
            tc.problem("token_bucket", "required in typed_per_filter_config (the route's own bucket)")
        config = _local_ratelimit(r, tc)
    tc.done()
    return config


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
        shadow_enabled=tc.opt("shadow_enabled", _runtime_fractional_percent, None),
        allow_private_network_access=tc.opt("allow_private_network_access", _bool, None),
        forward_not_matching_preflights=tc.opt("forward_not_matching_preflights", _bool, None),
    )
    return policy


def _true(r: _Reader, v: object, path: str) -> bool:
    """A ``bool`` Envoy's validation holds to ``const: true`` (``disabled`` of a per-route config)."""
    if _bool(r, v, path) is not True:
        r.fail(path, "must be true (Envoy's validation); leave it out instead")
    return True


def _struct_json(r: _Reader, v: object, path: str) -> str:
    """A ``google.protobuf.Struct``: any mapping, kept as its JSON text."""
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")
    try:
        return json.dumps(v, sort_keys=True)
    except (TypeError, ValueError) as exc:
        r.fail(path, f"not a JSON value: {exc}")


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
    return Lua(
        code or "", codes or (), tc.opt("stat_prefix", _str, ""), tc.opt("clear_route_cache", _bool, True)
    )


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
    f = _Fields(r, v, path, ("common_config", "disable_on_etag_header", "remove_accept_encoding_header"))
    out = f.opt("common_config", _compressor_common, {}) or {}
    if f.has("disable_on_etag_header"):
        out = out | {"disable_on_etag_header": f.req("disable_on_etag_header", _bool)}
    if f.has("remove_accept_encoding_header"):
        out = out | {"remove_accept_encoding": f.req("remove_accept_encoding_header", _bool)}
    f.done()
    return out


def _compressor_overrides(r: _Reader, v: object, path: str) -> bool | None:
    """``CompressorOverrides``: only ``response_direction_config.remove_accept_encoding_header``."""
    f = _Fields(r, v, path, ("response_direction_config",))
    response = f.opt("response_direction_config", _only_field("remove_accept_encoding_header", _bool), None)
    f.done()
    return response


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
    if tc.has("remove_accept_encoding_header"):
        settings["remove_accept_encoding"] = tc.req("remove_accept_encoding_header", _bool)
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
    f = _Fields(r, v, path, ("http_status", "grpc_status", "header_abort", "percentage"))
    which = f.exactly_one("http_status", "grpc_status", "header_abort")
    status = f.req("http_status", _uint(200, 599)) if which == "http_status" else None
    grpc_status = f.req("grpc_status", _uint32) if which == "grpc_status" else None
    if which == "header_abort":
        f.req("header_abort", _empty_message)
    abort = FaultAbort(status, f.opt("percentage", _fractional_percent, FractionalPercent()), grpc_status)
    f.done()
    return abort


def _fault_rate_limit(r: _Reader, v: object, path: str) -> FaultRateLimit:
    f = _Fields(r, v, path, ("fixed_limit", "header_limit", "percentage"))
    which = f.exactly_one("fixed_limit", "header_limit")
    kbps = (
        f.req("fixed_limit", _only_field("limit_kbps", _uint(1, 2**53))) if which == "fixed_limit" else None
    )
    if which == "header_limit":
        f.req("header_limit", _empty_message)
    limit = FaultRateLimit(kbps, f.opt("percentage", _fractional_percent, FractionalPercent()))
    f.done()
    return limit


def _fault(r: _Reader, tc: _Fields) -> HttpFault:
    return HttpFault(
        delay=tc.opt("delay", _fault_delay, None),
        abort=tc.opt("abort", _fault_abort, None),
        max_active_faults=tc.opt("max_active_faults", _uint32, None),
        headers=tc.opt("headers", _list(_header_matcher), ()),
        upstream_cluster=tc.opt("upstream_cluster", _nonempty_str, None),
        response_rate_limit=tc.opt("response_rate_limit", _fault_rate_limit, None),
    )


def _filter_rate_limits(r: _Reader, v: object, path: str) -> tuple[RateLimitPolicy, ...]:
    """The filter's own ``rate_limits``: Envoy reads neither ``stage`` nor ``disable_key`` there."""
    policies = _list(_rate_limit)(r, v, path)
    for i, p in enumerate(policies):
        if p.stage or p.disable_key:
            r.fail(f"{path}[{i}]", "stage and disable_key are not read in the filter's rate_limits")
    return policies


def _local_ratelimit(r: _Reader, tc: _Fields) -> LocalRateLimit:
    return LocalRateLimit(
        stat_prefix=tc.req("stat_prefix", _nonempty_str),
        token_bucket=tc.opt("token_bucket", _token_bucket, None),
        filter_enabled=tc.opt("filter_enabled", _runtime_fractional_percent, FractionalPercent()),
        filter_enforced=tc.opt("filter_enforced", _runtime_fractional_percent, FractionalPercent()),
        status=tc.opt("status", _http_status_code, 429),
        response_headers_to_add=tc.opt("response_headers_to_add", _list(_header_value_option), ()),
        per_connection=tc.opt("local_rate_limit_per_downstream_connection", _bool, False),
        x_ratelimit_headers=tc.opt("enable_x_ratelimit_headers", _enum(("OFF", "DRAFT_VERSION_03")), "OFF")
        == "DRAFT_VERSION_03",
        request_headers_to_add_when_not_enforced=tc.opt(
            "request_headers_to_add_when_not_enforced", _list(_header_value_option), ()
        ),
        descriptors=tc.opt("descriptors", _list(_local_descriptor), ()),
        stage=tc.opt("stage", _uint(0, 10), 0),
        vh_rate_limits=tc.opt("vh_rate_limits", _enum(("OVERRIDE", "INCLUDE", "IGNORE")), "OVERRIDE"),
        always_consume_default=tc.opt("always_consume_default_token_bucket", _bool, True),
        rate_limits=tc.opt("rate_limits", _filter_rate_limits, ()),
        rate_limited_as_resource_exhausted=tc.opt("rate_limited_as_resource_exhausted", _bool, False),
        max_dynamic_descriptors=tc.opt("max_dynamic_descriptors", _positive_uint32, 20),
    )
