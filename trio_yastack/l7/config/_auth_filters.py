"""The HTTP filters that decide whether a request may pass: ``rbac``, ``jwt_authn`` and ``ext_authz``."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from trio_yastack.tls.config import DataSource

from ._core import (
    FractionalPercent,
    StringMatcher,
    _header_name,
    _header_value,
    _regex,
    _runtime_fractional_percent,
    _string_matcher,
)
from ._names import RBAC_TYPE
from ._reader import (
    _TYPED_CONFIG_FIELDS,
    _bool,
    _duration_ge0,
    _duration_gt0,
    _enum,
    _Fields,
    _join,
    _kind,
    _list,
    _named_map,
    _nonempty_str,
    _only_field,
    _Reader,
    _Skip,
    _str,
    _uint,
    _uint32,
)
from ._route_match import RouteMatch, _route_match
from ._tls import _data_source

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
    "requested_server_name",
    "metadata",
]


@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """``type.matcher.v3.ValueMatcher`` over a ``google.protobuf.Value`` (JSON here): ``kind`` names
    the pattern: "null", "double" (``number`` exact, or ``number_range`` ``[start, end)``),
    "string" (``string``), "bool" (``flag``), "present" (``flag``), "list" (``children[0]``
    matches an element) or "or" (any of ``children``)."""

    kind: Literal["null", "double", "string", "bool", "present", "list", "or"]
    string: StringMatcher | None = None
    number: float | None = None
    number_range: tuple[float, float] | None = None
    flag: bool = False
    children: tuple[ValueMatcher, ...] = ()


@dataclass(frozen=True, slots=True)
class MetadataMatcher:
    """``type.matcher.v3.MetadataMatcher``: the request's dynamic metadata of ``filter`` (a
    namespace such as ``envoy.filters.http.jwt_authn``) at ``path`` (keys), matched by ``value``;
    ``invert`` negates."""

    filter: str
    path: tuple[str, ...]
    value: ValueMatcher
    invert: bool = False


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
    metadata: MetadataMatcher | None = None


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


#: the ``retry_on`` conditions a JWKS fetch's ``retry_policy`` may name, and Envoy's default
JWKS_RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx")
JWKS_DEFAULT_RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset")


@dataclass(frozen=True, slots=True)
class JwksRetryPolicy:
    """``remote_jwks.retry_policy`` (``core.v3.RetryPolicy``): ``num_retries`` (default 1) more
    fetches on the ``retry_on`` conditions (Envoy's default for JWKS: 5xx, gateway-error,
    connect-failure, reset), each after a jittered exponential back-off from ``base_interval``
    (default 1 s) up to ``max_interval`` (default 10 x base); all within the ``http_uri`` timeout."""

    num_retries: int = 1
    retry_on: tuple[str, ...] = JWKS_DEFAULT_RETRY_ON
    base_interval: float = 1.0
    max_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class JwksAsyncFetch:
    """``remote_jwks.async_fetch``: the JWKS fetched before the listeners open (``fast_listener``:
    without waiting for it) and again as ``cache_duration`` runs out; after a failed fetch, again
    after ``failed_refetch_duration`` (default 1 s)."""

    fast_listener: bool = False
    failed_refetch_duration: float = 1.0


@dataclass(frozen=True, slots=True)
class JwtRemoteJwks:
    """``remote_jwks``: the JWKS fetched with a GET of ``uri`` from ``cluster`` (within ``timeout``),
    kept for ``cache_duration`` (Envoy's default 10 minutes); ``retry_policy`` (none by default);
    ``async_fetch`` (None: fetched when a request needs it, the request waiting)."""

    uri: str
    cluster: str
    timeout: float = 1.0
    cache_duration: float = 600.0
    retry_policy: JwksRetryPolicy | None = None
    async_fetch: JwksAsyncFetch | None = None


@dataclass(frozen=True, slots=True)
class JwtProvider:
    """``providers.<name>`` (``JwtProvider``).  Where the token is looked for: ``from_headers``
    (name, value prefix), ``from_params``, ``from_cookies``; none given: ``Authorization: Bearer``
    and the ``access_token`` query parameter, as Envoy.  ``forward`` keeps the token's header on the
    request (Envoy removes it by default); ``forward_payload_header`` adds the payload (base64url,
    unpadded unless ``pad_forward_payload_header``); ``claim_to_headers`` copies claims into
    headers.  ``clock_skew_seconds``: Envoy's default 60.  ``subjects``: the ``sub`` claim must
    match (absent: any); ``require_expiration``: an ``exp`` claim is required; ``max_lifetime``: it
    is required and the token's remaining lifetime (``exp`` - now) must be below this (seconds);
    ``clear_route_cache``: a request that ``claim_to_headers`` added a header to is routed again."""

    name: str
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    subjects: StringMatcher | None = None
    require_expiration: bool = False
    max_lifetime: float | None = None
    clear_route_cache: bool = False
    #: dynamic metadata (namespace ``envoy.filters.http.jwt_authn``) a verified token writes: its
    #: payload under ``payload_in_metadata``, its header under ``header_in_metadata``; the claims
    #: ``normalize_payload_in_metadata.space_delimited_claims`` names split into lists
    payload_in_metadata: str = ""
    header_in_metadata: str = ""
    space_delimited_claims: tuple[str, ...] = ()
    #: a failed verification's ``{code, message}`` (jwt_verify_lib's) under this key
    failed_status_in_metadata: str = ""
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
    request decides what it needs (``requires``, or the ``requirement_map`` entry its
    ``requirement_name`` names, read into ``requires``; neither: nothing)."""

    match: RouteMatch
    requires: JwtRequirement | None = None


@dataclass(frozen=True, slots=True)
class JwtAuthentication:
    """``envoy.filters.http.jwt_authn``: providers by name, rules tried in order, named requirements
    for ``PerRouteConfig.requirement_name``; ``bypass_cors_preflight`` lets CORS preflights through;
    ``strip_failure_response``: a failure is answered with its status only (no body, no
    ``WWW-Authenticate``); ``stat_prefix``: counters under ``jwt_authn.<stat_prefix>``."""

    providers: tuple[JwtProvider, ...] = ()
    rules: tuple[JwtRule, ...] = ()
    requirement_map: tuple[tuple[str, JwtRequirement], ...] = ()
    bypass_cors_preflight: bool = False
    strip_failure_response: bool = False
    stat_prefix: str = ""


@dataclass(frozen=True, slots=True)
class JwtPerRoute:
    """``jwt_authn``'s ``PerRouteConfig``: ``disabled``, or the ``requirement_name`` of the
    filter's ``requirement_map`` that this route needs (in place of the rules)."""

    disabled: bool = False
    requirement_name: str | None = None


@dataclass(frozen=True, slots=True)
class ExtAuthzBufferSettings:
    """``BufferSettings`` (``with_request_body``): the request body is read before the check and
    sent with it.  A body larger than ``max_request_bytes`` gets 413 without a check, unless
    ``allow_partial_message``: then its first ``max_request_bytes`` are sent (with
    ``x-envoy-auth-partial-body: true``).  ``pack_as_bytes``: the gRPC check carries it as
    ``raw_body`` instead of the UTF-8 ``body``."""

    max_request_bytes: int
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


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
    client gets ``status_on_error`` (Envoy's default 403).  ``clear_route_cache``: an allowed
    request whose headers the service changed has its route chosen again.  ``disallowed_headers``:
    never sent to the service (over ``allowed_headers``); ``include_tls_session``: the gRPC check
    carries the SNI the TLS inspector read."""

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
    with_request_body: ExtAuthzBufferSettings | None = None
    clear_route_cache: bool = False
    #: ``deny_at_disable`` (default value, runtime key): a request ``filter_enabled`` leaves out is
    #: denied with ``status_on_error`` (not on a route that disables the filter)
    deny_at_disable: tuple[bool, str | None] | None = None
    disallowed_headers: tuple[StringMatcher, ...] = ()
    include_tls_session: bool = False
    #: the HTTP service's answer headers kept as dynamic metadata (``envoy.filters.http.ext_authz``)
    dynamic_metadata_from_headers: tuple[StringMatcher, ...] = ()
    #: namespaces of the request's dynamic metadata sent with the gRPC check (``metadata_context``)
    metadata_context_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExtAuthzPerRoute:
    """``ExtAuthzPerRoute``: ``disabled``, or ``check_settings``: ``context_extensions`` sent with
    the gRPC check of this route's requests, ``disable_request_body_buffering`` (the filter's
    ``with_request_body`` off here) or ``with_request_body`` (in place of the filter's)."""

    disabled: bool = False
    context_extensions: tuple[tuple[str, str], ...] = ()
    disable_request_body_buffering: bool = False
    with_request_body: ExtAuthzBufferSettings | None = None


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


_path_matcher = _only_field("path", _string_matcher)


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
    "metadata": "metadata",
    "sourced_metadata": "metadata",
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
    "requested_server_name": "requested_server_name",
    "metadata": "metadata",
    "sourced_metadata": "metadata",
    "uri_template": "url_path",
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
        elif kind == "url_path" and which == "uri_template":
            out = RbacMatcher(kind, string=f.req(which, _uri_template))
        elif kind == "url_path":
            out = RbacMatcher(kind, string=f.req(which, _path_matcher))
        elif kind == "requested_server_name":
            out = RbacMatcher(kind, string=f.req(which, _string_matcher))
        elif kind == "metadata":
            parse = _metadata_matcher if which == "metadata" else _sourced_metadata
            out = RbacMatcher(kind, metadata=f.req(which, parse))
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


URI_TEMPLATE_TYPE = "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
#: the characters of a path segment (RFC 3986's pchar without '/'), as Envoy's template matcher has them
_SEGMENT = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]"
_VARIABLE = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")
#: Envoy's bound on the variables of one template
MAX_TEMPLATE_VARIABLES = 5


def _uri_template(r: _Reader, v: object, path: str) -> StringMatcher:
    """``uri_template``: an ``envoy.path.match.uri_template.uri_template_matcher`` extension whose
    ``path_template`` (``/videos/{file}``, ``/api/*/items/**``) the path without its query must
    match, read into the regular expression it stands for."""
    f = _Fields(r, v, path, ("name", "typed_config"))
    f.opt("name", _str, "")
    tc = f.req("typed_config", lambda r, v, p: _Fields(r, v, p, ("@type", "path_template")))
    f.done()
    url = tc.opt("@type", _str, None)
    if url != URI_TEMPLATE_TYPE:
        tc.problem("@type", f'{url!r}: uri_template takes "@type": {URI_TEMPLATE_TYPE}')
    template = tc.req("path_template", _nonempty_str)
    tc.done()
    try:
        return StringMatcher("safe_regex", _template_regex(template))
    except ValueError as exc:
        r.fail(_join(_join(path, "typed_config"), "path_template"), str(exc))


def _template_regex(template: str) -> str:
    """Envoy's path template as a regular expression: ``*`` one segment (or the rest of one, as in
    ``*.m4s``), ``**`` any number of segments (the last operator only), ``{name}``/``{name=*}``
    one segment, ``{name=a/*}`` a pattern of segments, ``{name=**}`` any number; ``ValueError``
    for a template Envoy refuses."""
    if not template.startswith("/") or len(template) > 256:
        raise ValueError(f"{template!r}: a path template starts with '/' (and has at most 256 characters)")

    def operators(text: str, out: list[str], seen_any: list[bool]) -> None:
        i = 0
        while i < len(text):
            if text.startswith("**", i):
                if seen_any[0]:
                    raise ValueError(f"{template!r}: '**' may appear once, as the last operator")
                seen_any[0] = True
                out.append(f"(?:{_SEGMENT}|/)*")
                i += 2
            elif text[i] == "*":
                if seen_any[0]:
                    raise ValueError(f"{template!r}: '**' must be the last operator")
                out.append(f"{_SEGMENT}+")
                i += 1
            elif text[i] == "/" or re.fullmatch(_SEGMENT, text[i]):
                out.append(re.escape(text[i]))
                i += 1
            else:
                raise ValueError(f"{template!r}: {text[i]!r} cannot appear in a path template")

    out: list[str] = []
    seen_any = [False]
    names: set[str] = set()
    rest = template
    while rest:
        start = rest.find("{")
        if start < 0:
            operators(rest, out, seen_any)
            break
        operators(rest[:start], out, seen_any)
        end = rest.find("}", start)
        if end < 0:
            raise ValueError(f"{template!r}: an unclosed '{{'")
        name, _, pattern = rest[start + 1 : end].partition("=")
        if not _VARIABLE.fullmatch(name) or name in names:
            raise ValueError(f"{template!r}: {name!r} is not a variable name (or is used twice)")
        names.add(name)
        if len(names) > MAX_TEMPLATE_VARIABLES:
            raise ValueError(f"{template!r}: more than {MAX_TEMPLATE_VARIABLES} variables")
        inner: list[str] = []
        operators(pattern or "*", inner, seen_any)
        out.append("(" + "".join(inner) + ")")
        rest = rest[end + 1 :]
    return "".join(out)


def _value_matcher(r: _Reader, v: object, path: str) -> ValueMatcher:
    names = (
        "null_match",
        "double_match",
        "string_match",
        "bool_match",
        "present_match",
        "list_match",
        "or_match",
    )
    f = _Fields(r, v, path, names)
    which = f.exactly_one(*names)
    out = ValueMatcher("null")
    if which == "null_match":
        _Fields(r, f.values[which], _join(path, which), ()).done()
    elif which == "double_match":

        def double(r: _Reader, v: object, path: str) -> ValueMatcher:
            df = _Fields(r, v, path, ("range", "exact"))
            kind = df.exactly_one("range", "exact")
            matcher = ValueMatcher("double")
            if kind == "exact":
                matcher = ValueMatcher("double", number=df.req("exact", _number))
            elif kind == "range":

                def double_range(r: _Reader, v: object, path: str) -> tuple[float, float]:
                    rf = _Fields(r, v, path, ("start", "end"))
                    start, end = rf.opt("start", _number, 0.0), rf.opt("end", _number, 0.0)
                    rf.done()
                    return start, end

                matcher = ValueMatcher("double", number_range=df.req("range", double_range))
            df.done()
            return matcher

        out = f.req(which, double)
    elif which == "string_match":
        out = ValueMatcher("string", string=f.req(which, _string_matcher))
    elif which in ("bool_match", "present_match"):
        out = ValueMatcher("bool" if which == "bool_match" else "present", flag=f.req(which, _bool))
    elif which == "list_match":
        out = ValueMatcher("list", children=(f.req(which, _only_field("one_of", _value_matcher)),))
    elif which == "or_match":
        matchers = _only_field("value_matchers", _list(_value_matcher, min_items=2))
        out = ValueMatcher("or", children=f.req(which, matchers))
    f.done()
    return out


def _number(r: _Reader, v: object, path: str) -> float:
    """A protobuf ``double`` (proto3 JSON also allows a numeric string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        r.fail(path, f"expected a number, got {_kind(v)}")
    try:
        return float(v)
    except ValueError:
        r.fail(path, f"{v!r} is not a number")


def _metadata_matcher(r: _Reader, v: object, path: str) -> MetadataMatcher:
    f = _Fields(r, v, path, ("filter", "path", "value", "invert"))
    matcher = MetadataMatcher(
        f.req("filter", _nonempty_str),
        f.req("path", _list(_only_field("key", _nonempty_str), min_items=1)),
        f.req("value", _value_matcher),
        f.opt("invert", _bool, False),
    )
    f.done()
    return matcher


def _sourced_metadata(r: _Reader, v: object, path: str) -> MetadataMatcher:
    """``SourcedMetadata``: the request's dynamic metadata only (``ROUTE``: routes carry no
    metadata here)."""
    f = _Fields(r, v, path, ("metadata_matcher", "metadata_source"))
    f.opt("metadata_source", _enum(("DYNAMIC",)), "DYNAMIC")
    matcher = f.req("metadata_matcher", _metadata_matcher)
    f.done()
    return matcher


def _rbac_permission(r: _Reader, v: object, path: str) -> RbacMatcher:
    return _rbac_matcher(r, v, path, principal=False)


def _rbac_principal(r: _Reader, v: object, path: str) -> RbacMatcher:
    return _rbac_matcher(r, v, path, principal=True)


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


def _jwks_retry_on(r: _Reader, v: object, path: str) -> tuple[str, ...]:
    text = _str(r, v, path)
    if not text:
        return JWKS_DEFAULT_RETRY_ON  # Envoy: empty means the default
    conditions = tuple(c.strip() for c in text.split(","))
    bad = [c for c in conditions if c not in JWKS_RETRY_ON]
    if bad:
        r.fail(
            path, f"unsupported retry_on {', '.join(map(repr, bad))} (supported: {', '.join(JWKS_RETRY_ON)})"
        )
    return conditions


def _backoff(r: _Reader, v: object, path: str) -> tuple[float, float]:
    f = _Fields(r, v, path, ("base_interval", "max_interval"))
    base = f.req("base_interval", _duration_gt0)
    top = f.opt("max_interval", _duration_gt0, None)
    if base is not None and top is not None and top < base:
        f.problem("max_interval", "must not be below base_interval")
    f.done()
    return base, top if top is not None else 10 * base


def _jwks_retry_policy(r: _Reader, v: object, path: str) -> JwksRetryPolicy:
    f = _Fields(r, v, path, ("retry_back_off", "num_retries", "retry_on"))
    base, top = f.opt("retry_back_off", _backoff, None) or (1.0, 10.0)
    policy = JwksRetryPolicy(
        num_retries=f.opt("num_retries", _uint32, 1),
        retry_on=f.opt("retry_on", _jwks_retry_on, JWKS_DEFAULT_RETRY_ON),
        base_interval=base,
        max_interval=top,
    )
    f.done()
    return policy


def _jwks_async_fetch(r: _Reader, v: object, path: str) -> JwksAsyncFetch:
    f = _Fields(r, v, path, ("fast_listener", "failed_refetch_duration"))
    fetch = JwksAsyncFetch(
        fast_listener=f.opt("fast_listener", _bool, False),
        failed_refetch_duration=f.opt("failed_refetch_duration", _duration_gt0, 1.0),
    )
    f.done()
    return fetch


def _jwt_remote_jwks(r: _Reader, v: object, path: str) -> JwtRemoteJwks:
    f = _Fields(r, v, path, ("http_uri", "cache_duration", "retry_policy", "async_fetch"))
    cache = f.opt("cache_duration", _duration_gt0, 600.0)
    uri = f.req("http_uri", _http_uri)
    retry = f.opt("retry_policy", _jwks_retry_policy, None)
    fetch = f.opt("async_fetch", _jwks_async_fetch, None)
    f.done()
    return JwtRemoteJwks(uri[0], uri[1], uri[2], cache, retry, fetch)


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


def _normalize_payload(r: _Reader, v: object, path: str) -> tuple[str, ...]:
    f = _Fields(r, v, path, ("space_delimited_claims",))
    claims = f.opt("space_delimited_claims", _list(_nonempty_str), ())
    f.done()
    return claims


def _jwt_provider(r: _Reader, v: object, path: str, name: str) -> JwtProvider:
    fields = (
        "issuer", "audiences", "local_jwks", "remote_jwks", "forward", "from_headers", "from_params",
        "from_cookies", "forward_payload_header", "pad_forward_payload_header", "clock_skew_seconds",
        "claim_to_headers", "jwt_cache_config", "subjects", "require_expiration", "max_lifetime",
        "clear_route_cache", "payload_in_metadata", "header_in_metadata", "normalize_payload_in_metadata",
        "failed_status_in_metadata",
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
        subjects=f.opt("subjects", _string_matcher, None),
        require_expiration=f.opt("require_expiration", _bool, False),
        max_lifetime=f.opt("max_lifetime", _duration_ge0, None),
        clear_route_cache=f.opt("clear_route_cache", _bool, False),
        payload_in_metadata=f.opt("payload_in_metadata", _str, ""),
        header_in_metadata=f.opt("header_in_metadata", _str, ""),
        space_delimited_claims=f.opt("normalize_payload_in_metadata", _normalize_payload, ()),
        failed_status_in_metadata=f.opt("failed_status_in_metadata", _str, ""),
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
        requirement_list = _only_field("requirements", _list(_jwt_requirement, min_items=2))
        kind: Literal["any", "all"] = "any" if which == "requires_any" else "all"
        out = JwtRequirement(kind, requirements=f.req(which, requirement_list))
    elif which in ("allow_missing", "allow_missing_or_failed"):
        _Fields(r, f.values[which], _join(path, which), ()).done()  # google.protobuf.Empty
        out = JwtRequirement(which)  # type: ignore[arg-type]  # one of the two kinds, by the test above
    f.done()
    return out


def _jwt_rule(r: _Reader, v: object, path: str) -> tuple[RouteMatch, JwtRequirement | str | None]:
    """A ``RequirementRule``: its match and ``requires``, or the ``requirement_name`` (resolved by
    :func:`_jwt_authn` once the ``requirement_map`` is read)."""
    f = _Fields(r, v, path, ("match", "requires", "requirement_name"))
    match = f.req("match", _route_match)
    requires: JwtRequirement | str | None = None
    if f.has("requires") and f.has("requirement_name"):
        f.problem(
            "requirement_name", "only one of requires, requirement_name may be set (also found 'requires')"
        )
    elif f.has("requirement_name"):
        requires = f.req("requirement_name", _nonempty_str)
    else:
        requires = f.opt("requires", _jwt_requirement, None)
    f.done()
    return match, requires


def _jwt_authn(r: _Reader, tc: _Fields) -> JwtAuthentication:
    requirement_map = tc.opt(
        "requirement_map", _named_map(lambda r, v, p, name: (name, _jwt_requirement(r, v, p))), ()
    )
    named = dict(requirement_map or ())
    rules: list[JwtRule] = []
    for i, (match, requires) in enumerate(tc.opt("rules", _list(_jwt_rule), ()) or ()):
        if isinstance(requires, str):
            if requires not in named:
                known = ", ".join(sorted(named)) or "none"
                tc.problem(
                    f"rules[{i}].requirement_name", f"{requires!r} is not in requirement_map ({known})"
                )
            rules.append(JwtRule(match, named.get(requires)))
        else:
            rules.append(JwtRule(match, requires))
    config = JwtAuthentication(
        providers=tc.opt("providers", _named_map(_jwt_provider), ()),
        rules=tuple(rules),
        requirement_map=requirement_map,
        bypass_cors_preflight=tc.opt("bypass_cors_preflight", _bool, False),
        strip_failure_response=tc.opt("strip_failure_response", _bool, False),
        stat_prefix=tc.opt("stat_prefix", _str, ""),
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


def _ext_authz_check_settings(r: _Reader, v: object, path: str) -> ExtAuthzPerRoute:
    f = _Fields(r, v, path, ("context_extensions", "disable_request_body_buffering", "with_request_body"))
    raw = f.opt("context_extensions", _string_map, {})
    disable = f.opt("disable_request_body_buffering", _bool, False)
    settings = f.opt("with_request_body", _ext_authz_buffer_settings, None)
    if disable and settings is not None:
        f.problem(
            "with_request_body", "only one of disable_request_body_buffering and with_request_body may be set"
        )
    f.done()
    return ExtAuthzPerRoute(
        context_extensions=tuple(raw.items()),
        disable_request_body_buffering=disable,
        with_request_body=settings,
    )


def _ext_authz_buffer_settings(r: _Reader, v: object, path: str) -> ExtAuthzBufferSettings:
    f = _Fields(r, v, path, ("max_request_bytes", "allow_partial_message", "pack_as_bytes"))
    size = f.req("max_request_bytes", _uint(1, 2**32 - 1))  # Envoy's validation: gt 0
    settings = ExtAuthzBufferSettings(
        size,
        allow_partial_message=f.opt("allow_partial_message", _bool, False),
        pack_as_bytes=f.opt("pack_as_bytes", _bool, False),
    )
    f.done()
    return settings


def _string_map(r: _Reader, v: object, path: str) -> dict[str, str]:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping of strings, got {_kind(v)}")
    out = {}
    for key, value in v.items():
        out[str(key)] = _str(r, value, _join(path, str(key)))
    return out


#: a ``ListStringMatcher``: ``patterns``, any of which may match
_list_string_matcher = _only_field("patterns", _list(_string_matcher, min_items=1))


def _runtime_flag(r: _Reader, v: object, path: str) -> tuple[bool, str | None]:
    """A ``RuntimeFeatureFlag``: ``default_value`` (required) and an optional ``runtime_key``."""
    f = _Fields(r, v, path, ("default_value", "runtime_key"))
    value = f.req("default_value", _bool)
    key = f.opt("runtime_key", _str, None)
    f.done()
    return value, key or None


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
    response = f.opt("authorization_response", _ext_authz_response, ((), (), None, (), ()))
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
        dynamic_metadata_from_headers=response[4],
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
) -> tuple[_Patterns, _Patterns, _Patterns | None, _Patterns, _Patterns]:
    names = (
        "allowed_upstream_headers",
        "allowed_upstream_headers_to_append",
        "allowed_client_headers",
        "allowed_client_headers_on_success",
        "dynamic_metadata_from_headers",
    )
    f = _Fields(r, v, path, names)
    out = (
        f.opt(names[0], _list_string_matcher, ()),
        f.opt(names[1], _list_string_matcher, ()),
        f.opt(names[2], _list_string_matcher, None),
        f.opt(names[3], _list_string_matcher, ()),
        f.opt(names[4], _list_string_matcher, ()),
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
    allowed = tc.opt("allowed_headers", _list_string_matcher, None)
    rest = {
        "failure_mode_allow": tc.opt("failure_mode_allow", _bool, False),
        "failure_mode_allow_header_add": tc.opt("failure_mode_allow_header_add", _bool, False),
        "status_on_error": tc.opt("status_on_error", _http_status, 403),
        "filter_enabled": tc.opt("filter_enabled", _runtime_fractional_percent, None),
        "stat_prefix": tc.opt("stat_prefix", _str, ""),
        "include_peer_certificate": tc.opt("include_peer_certificate", _bool, False),
        "with_request_body": tc.opt("with_request_body", _ext_authz_buffer_settings, None),
        "clear_route_cache": tc.opt("clear_route_cache", _bool, False),
        "deny_at_disable": tc.opt("deny_at_disable", _runtime_flag, None),
        "disallowed_headers": tc.opt("disallowed_headers", _list_string_matcher, ()),
        "include_tls_session": tc.opt("include_tls_session", _bool, False),
        "metadata_context_namespaces": tc.opt("metadata_context_namespaces", _list(_nonempty_str), ()),
    }
    if config is None or version is None or tc.failed:
        return ExtAuthz("http")  # tc.done() raises
    allowed = allowed if allowed is not None else config.allowed_headers
    return replace(config, allowed_headers=allowed, **rest)  # type: ignore[arg-type]  # each value read by its field's parser above
