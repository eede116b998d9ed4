"""Rate limit descriptors: the ``rate_limits[]`` of routes and virtual hosts (``config.route.v3.RateLimit``),
whose actions build a request's descriptors, and the local rate limit filter's ``descriptors[]``
(``LocalRateLimitDescriptor``), a token bucket for each descriptor it names.

Actions supported (Envoy's meaning, each appends one ``(key, value)`` entry; an action that cannot
append one drops the whole descriptor): ``request_headers`` (``skip_if_absent``: drop only the
entry), ``query_parameters`` (the same), ``remote_address``, ``masked_remote_address``,
``generic_key``, ``header_value_match``.  The others (``destination_cluster``, ``source_cluster``,
``metadata``, ``query_parameter_value_match``, extensions), the
``RateLimit`` fields the local rate limit filter does not read (``limit``, ``hits_addend``,
``apply_on_stream_done``) and ``shadow_mode`` stay errors naming their YAML path.  A descriptor entry
with an empty ``value`` is a wildcard (Envoy's dynamic descriptors: a bucket per value seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._core import _header_name
from ._reader import (
    _bool,
    _duration_gt0,
    _Fields,
    _list,
    _nonempty_str,
    _positive_uint32,
    _Reader,
    _Skip,
    _str,
    _uint,
)
from ._route_match import HeaderMatcher, _header_matcher

#: the request's pseudo-headers an action may name (``:path`` is Envoy's own example); the others
#: are taken from the request's headers
PSEUDO_HEADERS = (":path", ":method", ":authority", ":scheme")

ActionKind = Literal[
    "request_headers",
    "query_parameters",
    "remote_address",
    "masked_remote_address",
    "generic_key",
    "header_value_match",
]


@dataclass(frozen=True, slots=True)
class RateLimitAction:
    """One ``actions[]`` entry.  ``key``: the descriptor key it appends (``remote_address``,
    ``generic_key`` and ``header_match`` by default, as Envoy names them); ``value``: the fixed value
    (``generic_key``, ``header_value_match``); ``header_name`` (lowercased) and ``skip_if_absent``
    for ``request_headers``; ``headers`` and ``expect_match`` (default true) for
    ``header_value_match``; ``header_name`` is the query parameter's name for ``query_parameters``;
    ``v4_prefix``/``v6_prefix``: ``masked_remote_address``'s mask lengths (default 32 and 128)."""

    kind: ActionKind
    key: str
    value: str = ""
    header_name: str = ""
    skip_if_absent: bool = False
    headers: tuple[HeaderMatcher, ...] = ()
    expect_match: bool = True
    v4_prefix: int = 32
    v6_prefix: int = 128


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """One ``rate_limits[]`` entry: its ``actions`` in order, the filter ``stage`` it belongs to
    (default 0) and ``disable_key`` (Envoy's local rate limit filter skips an entry that sets one)."""

    actions: tuple[RateLimitAction, ...]
    stage: int = 0
    disable_key: str = ""


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``token_bucket``: starts full with ``max_tokens``; every ``fill_interval`` adds ``tokens_per_fill``
    (default 1) up to ``max_tokens``."""

    max_tokens: int
    fill_interval: float
    tokens_per_fill: int = 1


@dataclass(frozen=True, slots=True)
class LocalDescriptor:
    """``descriptors[]``: the ``entries`` a request's descriptor must equal (same keys and values, in
    order: Envoy matches verbatim) and the ``token_bucket`` it then takes a token from.  An entry
    with an empty ``value`` is a wildcard (Envoy's dynamic descriptors): it matches any value of
    its key, and each distinct request descriptor it matches gets a bucket of its own."""

    entries: tuple[tuple[str, str], ...]
    token_bucket: TokenBucket

    @property
    def wildcard(self) -> bool:
        """Whether an entry matches any value (a bucket per request descriptor)."""
        return any(not value for _, value in self.entries)

    def matches(self, descriptor: tuple[tuple[str, str], ...]) -> bool:
        """Envoy's ``matchDescriptorEntries``: as many entries, the same keys in order, and the
        same values where this descriptor's value is not a wildcard."""
        if len(descriptor) != len(self.entries):
            return False
        return all(
            key == want_key and (not want or value == want)
            for (key, value), (want_key, want) in zip(descriptor, self.entries, strict=True)
        )


def _action_header_name(r: _Reader, v: object, path: str) -> str:
    """A header to read: a header name, or one of the request's pseudo-headers (:data:`PSEUDO_HEADERS`)."""
    if isinstance(v, str) and v.startswith(":"):
        if v.lower() not in PSEUDO_HEADERS:
            r.fail(path, f"{v!r}: the pseudo-headers here are {', '.join(PSEUDO_HEADERS)}")
        return v.lower()
    return _header_name(r, v, path).lower()


def _request_headers(r: _Reader, v: object, path: str) -> RateLimitAction:
    f = _Fields(r, v, path, ("header_name", "descriptor_key", "skip_if_absent"))
    name = f.req("header_name", _action_header_name)
    key = f.req("descriptor_key", _nonempty_str)
    skip = f.opt("skip_if_absent", _bool, False)
    f.done()
    return RateLimitAction("request_headers", key, header_name=name, skip_if_absent=skip)


def _query_parameters(r: _Reader, v: object, path: str) -> RateLimitAction:
    f = _Fields(r, v, path, ("query_parameter_name", "descriptor_key", "skip_if_absent"))
    name = f.req("query_parameter_name", _nonempty_str)
    key = f.req("descriptor_key", _nonempty_str)
    skip = f.opt("skip_if_absent", _bool, False)
    f.done()
    return RateLimitAction("query_parameters", key, header_name=name, skip_if_absent=skip)


def _masked_remote_address(r: _Reader, v: object, path: str) -> RateLimitAction:
    f = _Fields(r, v, path, ("v4_prefix_mask_len", "v6_prefix_mask_len"))
    v4 = f.opt("v4_prefix_mask_len", _uint(0, 32), 32)
    v6 = f.opt("v6_prefix_mask_len", _uint(0, 128), 128)
    f.done()
    return RateLimitAction("masked_remote_address", "masked_remote_address", v4_prefix=v4, v6_prefix=v6)


def _generic_key(r: _Reader, v: object, path: str) -> RateLimitAction:
    f = _Fields(r, v, path, ("descriptor_value", "descriptor_key"))
    value = f.req("descriptor_value", _nonempty_str)
    key = f.opt("descriptor_key", _str, "") or "generic_key"
    f.done()
    return RateLimitAction("generic_key", key, value)


def _header_value_match(r: _Reader, v: object, path: str) -> RateLimitAction:
    f = _Fields(r, v, path, ("descriptor_value", "descriptor_key", "expect_match", "headers"))
    value = f.req("descriptor_value", _nonempty_str)
    key = f.opt("descriptor_key", _str, "") or "header_match"
    expect = f.opt("expect_match", _bool, True)
    headers = f.req("headers", _list(_header_matcher, min_items=1))
    f.done()
    return RateLimitAction("header_value_match", key, value, headers=headers, expect_match=expect)


def _remote_address(r: _Reader, v: object, path: str) -> RateLimitAction:
    f = _Fields(r, v, path, ())
    f.done()
    return RateLimitAction("remote_address", "remote_address")


_ACTIONS = {
    "request_headers": _request_headers,
    "query_parameters": _query_parameters,
    "remote_address": _remote_address,
    "masked_remote_address": _masked_remote_address,
    "generic_key": _generic_key,
    "header_value_match": _header_value_match,
}


def _action(r: _Reader, v: object, path: str) -> RateLimitAction:
    f = _Fields(r, v, path, tuple(_ACTIONS))
    # an action not supported here is reported once, as such (not also as "none given")
    which = f.exactly_one(*_ACTIONS) if not f.failed else None
    action = f.req(which, _ACTIONS[which]) if which is not None else None
    f.done()
    if action is None:  # unreachable: exactly_one marked f failed, so done() raised
        raise _Skip
    return action


def _rate_limit(r: _Reader, v: object, path: str) -> RateLimitPolicy:
    """``rate_limits[]`` of a route, a virtual host or the local rate limit filter."""
    f = _Fields(r, v, path, ("stage", "disable_key", "actions"))
    stage = f.opt("stage", _uint(0, 10), 0)
    disable_key = f.opt("disable_key", _str, "")
    actions = f.req("actions", _list(_action, min_items=1))
    f.done()
    return RateLimitPolicy(actions, stage, disable_key)


def _descriptor_entry(r: _Reader, v: object, path: str) -> tuple[str, str]:
    f = _Fields(r, v, path, ("key", "value"))
    key = f.req("key", _nonempty_str)
    value = f.opt("value", _str, "")  # empty: a wildcard (a bucket per value seen)
    f.done()
    return key, value


def _token_bucket(r: _Reader, v: object, path: str) -> TokenBucket:
    f = _Fields(r, v, path, ("max_tokens", "tokens_per_fill", "fill_interval"))
    bucket = TokenBucket(
        max_tokens=f.req("max_tokens", _positive_uint32),
        fill_interval=f.req("fill_interval", _duration_gt0),
        tokens_per_fill=f.opt("tokens_per_fill", _positive_uint32, 1),
    )
    f.done()
    return bucket


def _local_descriptor(r: _Reader, v: object, path: str) -> LocalDescriptor:
    f = _Fields(r, v, path, ("entries", "token_bucket", "shadow_mode"))
    entries = f.req("entries", _list(_descriptor_entry, min_items=1))
    bucket = f.req("token_bucket", _token_bucket)
    if f.opt("shadow_mode", _bool, False):
        f.problem("shadow_mode", "not supported here (leave it out or false)")
    f.done()
    return LocalDescriptor(entries, bucket)
