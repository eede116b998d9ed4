"""``envoy.filters.http.rbac``: allows or denies a request by who sent it (principals) and what it
asks for (permissions), before the router.

Envoy's behaviour (source/extensions/filters/http/rbac/rbac_filter.cc and filters/common/rbac/):
the route's ``RBACPerRoute``, else the virtual host's, else the filter's own config decides; its
``shadow_rules`` are evaluated first and only counted (``rbac.shadow_allowed``/``shadow_denied``),
then its ``rules``: a policy matches when one of its permissions and one of its principals match;
``ALLOW`` lets the request through when a policy matches, ``DENY`` when none does, ``LOG`` always.
A denied request gets 403 with the body ``RBAC: access denied`` (response flag ``RBAC``); the
counters are ``<stat_prefix>.rbac.<rules_stat_prefix>allowed``/``denied``.

``metadata`` (and ``sourced_metadata`` from the dynamic source) match the request's dynamic metadata,
which ``jwt_authn`` writes with ``payload_in_metadata``/``header_in_metadata``, so RBAC can decide
on a verified token's claims as in Envoy.

Headers are matched as Envoy matches them: a header given several times is its values joined with
``,``, and the pseudo-headers ``:method``, ``:path``, ``:authority`` and ``:scheme`` can be named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..config import (
    MetadataMatcher,
    PerRouteConfig,
    Rbac,
    RbacHeaderMatcher,
    RbacMatcher,
    RbacRules,
    ValueMatcher,
)
from ..stats import Scope
from ._connection import ConnectionInfo, connection_info

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["RbacFilter", "metadata_matches", "rbac_allows"]

Headers = Sequence[tuple[bytes, bytes]]
#: how deep an and/or/not tree may be evaluated (the config reader bounds the document; this keeps a
#: pathological tree from costing a request more than a bounded amount of work)
_MAX_DEPTH = 32


def _header_value(headers: Headers, name: bytes) -> str | None:
    values = [v for k, v in headers if k == name]
    return b",".join(values).decode("latin-1") if values else None


def _header_matches(m: RbacHeaderMatcher, headers: Headers) -> bool:
    """Envoy's ``HeaderUtility::matchHeaders``: a header that is absent matches only
    ``present_match: false`` (or ``present_match: true`` inverted); otherwise the specifier's
    answer, inverted by ``invert_match``."""
    value = _header_value(headers, m.name.encode("latin-1"))
    if value is None:
        return m.string is None and (m.present if m.invert else not m.present)
    result = m.present if m.string is None else m.string.matches(value)
    return result != m.invert


class _Request:
    """One request as the matchers read it: headers with the pseudo-headers, the path without its
    query, and the connection (looked up only if a matcher asks)."""

    __slots__ = ("_conn", "_view", "headers", "metadata", "path")

    def __init__(self, view: RequestView) -> None:
        self._view = view
        self._conn: ConnectionInfo | None = None
        self.metadata = view.metadata or {}
        self.path = view.path.partition("?")[0].partition("#")[0]
        host = next((v for k, v in view.headers if k == b"host"), b"")
        self.headers: list[tuple[bytes, bytes]] = [
            (b":method", view.method.encode("latin-1")),
            (b":path", view.path.encode("latin-1")),
            (b":authority", host),
            (b":scheme", str(getattr(view.downstream, "scheme", "http")).encode("latin-1")),
            *view.headers,
        ]

    @property
    def conn(self) -> ConnectionInfo:
        if self._conn is None:
            self._conn = connection_info(self._view.downstream, self._view.connection_state)
        return self._conn


_MISSING = object()


def _value_matches(m: ValueMatcher, value: object, depth: int = 0) -> bool:
    """Envoy's ``ValueMatcher`` on a JSON value (``_MISSING``: no value at the path)."""
    kind = m.kind
    if kind == "present":
        return m.flag == (value is not _MISSING)
    if kind == "null":
        return value is None
    if kind == "string":
        return isinstance(value, str) and m.string is not None and m.string.matches(value)
    if kind == "bool":
        return isinstance(value, bool) and value == m.flag
    if kind == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if m.number_range is not None:
            return m.number_range[0] <= value < m.number_range[1]
        return value == m.number
    if depth > _MAX_DEPTH:
        return False
    if kind == "list":
        return isinstance(value, list) and any(_value_matches(m.children[0], v, depth + 1) for v in value)
    return any(_value_matches(c, value, depth + 1) for c in m.children)  # "or"


def metadata_matches(m: MetadataMatcher, metadata: Mapping[str, Mapping[str, Any]]) -> bool:
    """Envoy's ``MetadataMatcher``: the value at ``filter`` then ``path`` in the request's dynamic
    metadata, matched by ``value``, inverted by ``invert``."""
    value: object = metadata.get(m.filter, _MISSING)
    for key in m.path:
        value = value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING
    return _value_matches(m.value, value) != m.invert


def _matches(m: RbacMatcher, rq: _Request, depth: int = 0) -> bool:
    kind = m.kind
    if kind == "any":
        return True
    if depth > _MAX_DEPTH:
        return False
    if kind == "and":
        return all(_matches(c, rq, depth + 1) for c in m.children)
    if kind == "or":
        return any(_matches(c, rq, depth + 1) for c in m.children)
    if kind == "not":
        return not _matches(m.children[0], rq, depth + 1)
    if kind == "header":
        return m.header is not None and _header_matches(m.header, rq.headers)
    if kind == "url_path":
        return m.string is not None and m.string.matches(rq.path)
    if kind == "metadata":
        return m.metadata is not None and metadata_matches(m.metadata, rq.metadata)
    conn = rq.conn
    if kind == "authenticated":
        # Envoy's AuthenticatedMatcher: a TLS connection; with principal_name, a URI SAN, else a DNS
        # SAN, else the subject must match
        if not conn.tls:
            return False
        if m.string is None:
            return True
        sans = conn.uri_sans() or conn.dns_sans()
        if sans:
            return any(m.string.matches(s) for s in sans)
        return m.string.matches(conn.subject())
    if kind == "requested_server_name":
        # Envoy: the SNI the TLS inspector read ("" when there was none, or no inspector ran)
        return m.string is not None and m.string.matches(conn.server_name or "")
    if kind in ("destination_port", "destination_port_range"):
        return conn.local_port is not None and m.ports[0] <= conn.local_port < m.ports[1]
    address = conn.local if kind == "destination_ip" else conn.remote
    return address is not None and m.network is not None and address in m.network


def rbac_allows(rules: RbacRules, view: RequestView) -> tuple[bool, str | None]:
    """Whether ``rules`` let the request through, and the policy that matched (None: none did)."""
    rq = _Request(view)
    matched = next(
        (
            p.name
            for p in rules.policies
            if any(_matches(x, rq) for x in p.permissions) and any(_matches(x, rq) for x in p.principals)
        ),
        None,
    )
    if rules.action == "ALLOW":
        return matched is not None, matched
    if rules.action == "DENY":
        return matched is None, matched
    return True, matched  # LOG


class RbacFilter:
    def __init__(self, config: Rbac, scope: Scope) -> None:
        self.config = config
        self.scope = scope
        self._declare(config)

    def _declare(self, config: Rbac) -> None:
        if config.rules is not None:
            prefix = f"rbac.{config.rules_stat_prefix}"
            self.scope.declare(f"{prefix}allowed", f"{prefix}denied")
        if config.shadow_rules is not None:
            prefix = f"rbac.{config.shadow_rules_stat_prefix}"
            self.scope.declare(f"{prefix}shadow_allowed", f"{prefix}shadow_denied")

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: Callable[[], float],
    ) -> None:
        config = override if isinstance(override, Rbac) else self.config
        if config.shadow_rules is not None:
            allowed, _ = rbac_allows(config.shadow_rules, request)
            which = "shadow_allowed" if allowed else "shadow_denied"
            self.scope.inc(f"rbac.{config.shadow_rules_stat_prefix}{which}")
        if config.rules is None:
            return
        allowed, _ = rbac_allows(config.rules, request)
        if allowed:
            self.scope.inc(f"rbac.{config.rules_stat_prefix}allowed")
            return
        self.scope.inc(f"rbac.{config.rules_stat_prefix}denied")
        outcome.status = 403
        outcome.body = "RBAC: access denied"
        outcome.flags.append("RBAC")
