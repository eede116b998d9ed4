"""``envoy.filters.http.cors``: answers CORS preflights and marks responses to allowed origins.

Envoy's behaviour (source/extensions/filters/http/cors/cors_filter.cc): the policies are the
route's, then the virtual host's ``CorsPolicy``; each attribute comes from the first policy that sets
it, and the first policy present decides whether the filter is enabled.  A request whose ``Origin``
an ``allow_origin_string_match`` matcher accepts (or whose matchers accept ``*``) is a CORS request:

- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here with 200 and
  ``access-control-allow-origin`` (the origin, echoed), ``-allow-credentials`` (when set),
  ``-allow-methods``, ``-allow-headers`` and ``-max-age``;
- any other request goes on, and its response gets ``access-control-allow-origin``,
  ``-allow-credentials`` and ``-expose-headers``.

Where ``filter_enabled`` does not pick a request, ``shadow_enabled`` may: its origin is then
checked and counted (``cors.origin_valid``/``origin_invalid``) and nothing else is done.

A request from an origin not allowed goes on untouched (a preflight too: Envoy's default
``forward_not_matching_preflights``; set false, such a preflight is answered here, without
``access-control-allow-origin``), so the browser, not the proxy, refuses it.  ``allow_methods`` or
``allow_headers`` of ``*`` echo what the preflight asks for; ``allow_private_network_access``
answers a preflight's ``Access-Control-Request-Private-Network: true``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import CORS_NAME, CorsPolicy, FractionalPercent, PerRouteConfig, RuntimeValue
from ..stats import Scope

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["CorsFilter"]

_ENABLED = FractionalPercent(100, 100)


def _get(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class CorsFilter:
    def __init__(
        self, scope: Scope, runtime: Callable[[str], RuntimeValue], rng: random.Random, name: str = CORS_NAME
    ) -> None:
        """``name``: the filter's configured name, which routes' ``typed_per_filter_config`` use."""
        self.name = name
        self.scope = scope
        self.runtime = runtime
        self.rng = rng
        scope.declare("cors.origin_valid", "cors.origin_invalid")

    async def decode(
        self, request: RequestView, override: PerRouteConfig | None, outcome: FilterOutcome, now: object
    ) -> None:
        from ._chain import sample  # the chain imports this module

        policies = [
            p
            for p in (
                request.route.per_filter_config(self.name) if request.route else None,
                request.vhost.per_filter_config(self.name) if request.vhost else None,
            )
            if isinstance(p, CorsPolicy)
        ]
        if not policies:
            return
        enabled = sample(policies[0].filter_enabled or _ENABLED, self.runtime, self.rng)
        if not enabled:
            shadow = policies[0].shadow_enabled
            if shadow is None or not sample(shadow, self.runtime, self.rng):
                return
        origin = _get(request.headers, b"origin")
        if not origin:
            return
        matchers = next((p.allow_origin for p in policies if p.allow_origin), ())
        text = origin.decode("latin-1")
        allowed = any(m.matches(text) or m.matches("*") for m in matchers)
        self.scope.inc("cors.origin_valid" if allowed else "cors.origin_invalid")
        if not enabled:
            return  # shadow_enabled: the origin is checked and counted, nothing enforced

        def first(attribute: str) -> str | bool | None:
            for p in policies:
                value = getattr(p, attribute)
                if value is not None:
                    return value
            return None

        requested = _get(request.headers, b"access-control-request-method")
        preflight = request.method == "OPTIONS" and bool(requested)
        if not allowed and (not preflight or first("forward_not_matching_preflights") is not False):
            return  # goes on untouched (a preflight too, by Envoy's default)
        credentials = first("allow_credentials") is True
        headers = [(b"access-control-allow-origin", origin)] if allowed else []
        if credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if preflight:
            asked = {
                "allow_methods": requested,
                "allow_headers": _get(request.headers, b"access-control-request-headers"),
            }
            for attribute, name in (
                ("allow_methods", b"access-control-allow-methods"),
                ("allow_headers", b"access-control-allow-headers"),
                ("max_age", b"access-control-max-age"),
            ):
                value = first(attribute)
                if value == "*" and attribute in asked:  # Envoy: "*" echoes what the preflight asks
                    echoed = asked[attribute]
                    if echoed:
                        headers.append((name, echoed))
                elif value:
                    headers.append((name, str(value).encode("latin-1")))
            private = _get(request.headers, b"access-control-request-private-network")
            if first("allow_private_network_access") is True and private == b"true":
                headers.append((b"access-control-allow-private-network", b"true"))
            outcome.status = 200
            outcome.reply_headers.extend(headers)
            return
        expose = first("expose_headers")
        if expose:
            headers.append((b"access-control-expose-headers", str(expose).encode("latin-1")))
        outcome.response_headers.extend(headers)
