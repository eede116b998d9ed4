"""Routing, as Envoy's router does it: virtual host by ``Host``, then the first route that matches.

Virtual host selection follows Envoy's order: an exact domain, then the longest suffix wildcard
(``*.example.com``), then the longest prefix wildcard (``example.*``), then ``*``.  Domains are
compared case-insensitively and with the port as written (``a.example:10443`` is its own domain, as
in Envoy without ``strip_matching_host_port``).  Within the virtual host the routes are tried in
order; a route matches when its path condition (``prefix`` on the whole ``:path``, ``path`` on the
path without the query) and every header matcher hold.

The header helpers here are the proxy's rules for what crosses it: hop-by-hop headers (RFC 9110
7.6.1, plus those the ``Connection`` header names) never do; Envoy's ``request_headers_to_add`` /
``_remove`` are applied with their ``append_action``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .config import HeaderMatcher, HeaderValueOption, Route, RouteConfiguration, VirtualHost

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "Router",
    "any_path_route",
    "apply_header_options",
    "get_header",
    "header_matches",
    "rewrite_path",
    "strip_hop_by_hop",
]

Headers = list[tuple[bytes, bytes]]  # lower-case names, as h11 gives them

#: RFC 9110 7.6.1's connection-specific fields, and the ones proxies have always treated so
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def get_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The values of ``name`` joined with ``,`` (as HTTP allows for lists, and Envoy's matchers see
    them), or None when absent."""
    values = [value for key, value in headers if key == name]
    return b",".join(values) if values else None


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], *, keep_upgrade: bool = False) -> Headers:
    """``headers`` without hop-by-hop fields.  ``keep_upgrade`` keeps ``Upgrade`` and re-adds
    ``Connection: upgrade`` (a WebSocket handshake must reach the upstream)."""
    headers = list(headers)
    named: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    drop = HOP_BY_HOP | named
    out = [(k, v) for k, v in headers if k not in drop or (keep_upgrade and k == b"upgrade")]
    if keep_upgrade:
        out.append((b"connection", b"upgrade"))
    return out


def apply_header_options(
    headers: Headers, to_add: Sequence[HeaderValueOption], to_remove: Sequence[str]
) -> Headers:
    """Envoy's ``request_headers_to_remove`` then ``request_headers_to_add`` (with ``append_action``)."""
    if to_remove:
        removed = {name.lower().encode() for name in to_remove}
        headers = [(k, v) for k, v in headers if k not in removed]
    for option in to_add:
        key, value = option.key.lower().encode(), option.value.encode()
        present = any(k == key for k, _ in headers)
        action = option.append_action
        if action == "APPEND_IF_EXISTS_OR_ADD" or (action == "ADD_IF_ABSENT" and not present):
            headers.append((key, value))
        elif action == "OVERWRITE_IF_EXISTS_OR_ADD" or (action == "OVERWRITE_IF_EXISTS" and present):
            headers = [(k, v) for k, v in headers if k != key]
            headers.append((key, value))
    return headers


def rewrite_path(target: str, route: Route, prefix_rewrite: str) -> str:
    """``prefix_rewrite`` applied as Envoy does: the matched prefix (or, for a ``path`` match, the
    whole path, keeping the query) is replaced."""
    match = route.match
    if match.prefix is not None:
        return prefix_rewrite + target[len(match.prefix) :]
    _path, sep, query = target.partition("?")
    return prefix_rewrite + sep + query


class Router:
    """One ``route_config``, indexed for the lookups each request makes."""

    def __init__(self, config: RouteConfiguration) -> None:
        self.config = config
        self._exact: dict[str, VirtualHost] = {}
        self._suffix: list[tuple[str, VirtualHost]] = []  # "*.example.com" -> ".example.com"
        self._prefix: list[tuple[str, VirtualHost]] = []  # "example.*" -> "example."
        self._any: VirtualHost | None = None
        for vhost in config.virtual_hosts:
            for domain in vhost.domains:
                domain = domain.lower()
                if domain == "*":
                    self._any = self._any or vhost
                elif domain.startswith("*"):
                    self._suffix.append((domain[1:], vhost))
                elif domain.endswith("*"):
                    self._prefix.append((domain[:-1], vhost))
                else:
                    self._exact.setdefault(domain, vhost)
        # Longest wildcard first; a stable sort keeps config order among equals (Envoy's tie-break).
        self._suffix.sort(key=lambda item: -len(item[0]))
        self._prefix.sort(key=lambda item: -len(item[0]))

    def virtual_host(self, authority: str) -> VirtualHost | None:
        host = authority.lower()
        found = self._exact.get(host)
        if found is not None:
            return found
        for suffix, vhost in self._suffix:
            if host.endswith(suffix) and len(host) > len(suffix):  # the wildcard matches one char or more
                return vhost
        for prefix, vhost in self._prefix:
            if host.startswith(prefix) and len(host) > len(prefix):
                return vhost
        return self._any

    def route(self, vhost: VirtualHost, target: str, headers: Sequence[tuple[bytes, bytes]]) -> Route | None:
        """The first route of ``vhost`` matching the request target (``:path``) and headers."""
        for route in vhost.routes:
            match = route.match
            if match.prefix is not None and not target.startswith(match.prefix):
                continue
            if match.path is not None and target.partition("?")[0] != match.path:
                continue
            if all(header_matches(m, headers) for m in match.headers):
                return route
        return None


def any_path_route(vhost: VirtualHost) -> Route | None:
    """The route :meth:`Router.route` answers for every origin-form target (one starting with
    ``/``) and any headers, when the first route of ``vhost`` matches all of them (prefix ``/`` or
    empty, no header matcher): then the answer depends on the virtual host alone, and the proxy's
    lean path keeps it per ``Host`` value.  None when the answer depends on the path or headers."""
    if not vhost.routes:
        return None
    first = vhost.routes[0]
    match = first.match
    if match.prefix in ("", "/") and match.path is None and not match.headers:
        return first
    return None


def header_matches(matcher: HeaderMatcher, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether one ``match.headers[]`` matcher accepts the request's headers (the fault filter's
    ``headers`` too)."""
    raw = get_header(headers, matcher.name.lower().encode())
    if matcher.kind == "present":
        return raw is not None
    if matcher.kind == "absent":
        return raw is None
    if raw is None or matcher.value is None:
        return False
    value, expected = raw.decode("latin-1"), matcher.value
    if matcher.ignore_case:
        value, expected = value.lower(), expected.lower()
    return value == expected if matcher.kind == "exact" else value.startswith(expected)
