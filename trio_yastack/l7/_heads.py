"""HTTP/1.1 heads for h11, built from parts already validated, without h11 validating them again.

h11's public event constructors turn every part into bytes and match each header name and value
against the RFC's grammar: right for bytes nobody has checked, wasted on the heads the proxy sends,
whose parts h11's own parser checked on the way in (the client's request, the upstream's
response), the config loader checked at start (``request_headers_to_add``,
``host_rewrite_literal``, ``prefix_rewrite``, cluster names), or the proxy made itself
(``x-forwarded-*``, ``x-request-id``, ``via``, ``x-envoy-upstream-service-time``).  Skipping that
halves the cost of building a head (about 4 µs of 8 for a request or response of six headers,
measured here), and the proxy builds two or three per request.

h11 skips it for the events its own parser makes, through the keyword ``_parsed=True`` of
``h11.Request`` and ``h11.Response``: an h11 internal, not its API.  These two functions are the one
place in trio_yastack that uses it, so a change in h11 shows here and in
``tests/test_proxy_heads.py`` (which holds them to what the public constructors make of the same
parts, and checks that they really skip the validation) rather than anywhere in the proxy.  h11 is
pinned below its next minor version in ``pyproject.toml`` (``h11>=0.14,<0.17``) for this reason:
raise the pin only with that test passing.

What h11 still does with ``_parsed=True``: it lowercases header names (keeping the raw casing for
the wire), checks ``Content-Length`` and ``Transfer-Encoding``, the ``Host`` rule of RFC 9112 3.2,
and the method and target against its grammar.  What it no longer does: turn ``str`` into bytes
(so every part must already be ``bytes``) and match header names and values.
"""

from __future__ import annotations

import h11

__all__ = ["request_head", "response_head"]


def request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], http_version: bytes
) -> h11.Request:
    """``h11.Request(...)`` for parts that are bytes and already valid (see the module docstring)."""
    return h11.Request(method=method, target=target, headers=headers, http_version=http_version, _parsed=True)


def response_head(status_code: int, headers: list[tuple[bytes, bytes]], reason: bytes) -> h11.Response:
    """``h11.Response(...)`` for parts that are bytes (``status_code`` an int) and already valid."""
    return h11.Response(status_code=status_code, headers=headers, reason=reason, _parsed=True)
