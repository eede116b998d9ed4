"""``envoy.filters.http.cache`` with an in-memory store (Envoy's ``SimpleHttpCache``).

What is kept (RFC 9111, as Envoy's filter reads it): the response to a GET without
``Authorization``, of a status RFC 9111 calls cacheable by default, with an explicit lifetime
(``s-maxage``, else ``max-age``) and none of ``no-store``, ``private``, ``no-cache``; a response
that ``Vary``s on a header outside ``allowed_vary_headers`` (or on ``*``) is not kept.  A later GET
for the same authority and path (and the same values of the varied headers) is answered from memory
while the entry is fresh, with an ``Age`` header, unless its own ``Cache-Control`` says
``no-cache``, ``no-store`` or ``max-age=0`` (ignored with ``ignore_request_cache_control_header``).
Stale entries are not revalidated: the request goes upstream and its answer replaces the entry.

Bounds: :data:`MAX_ENTRIES` entries per filter (least recently used dropped first) and
:data:`MAX_ENTRY_BYTES` (or ``max_body_bytes``) of body per entry; a larger body is not kept.
Counted as ``http.<stat_prefix>.cache.{hit,miss,insert}``.

At its place in the chain, as in Envoy: the response is kept as the filters configured after the
cache (nearer the router) leave it (:class:`CacheInsert`, an encoder: behind a compressor, the
gzipped response, with its ``Vary: Accept-Encoding``, kept only if ``allowed_vary_headers`` lets
it), and a hit passes through the filters configured before it (before a compressor, compressed
there).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import HttpCache, PerRouteConfig, RuntimeValue
from ..stats import Scope

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["MAX_ENTRIES", "MAX_ENTRY_BYTES", "CacheFilter", "CacheInsert", "CacheStore"]

MAX_ENTRIES = 1024
MAX_ENTRY_BYTES = 1024 * 1024
#: RFC 9111 4.2.2 / RFC 9110 15.1: statuses cacheable by default
CACHEABLE_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
Headers = list[tuple[bytes, bytes]]


def _get(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _directives(value: bytes | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (value or b"").decode("latin-1").split(","):
        key, _, arg = item.strip().partition("=")
        if key:
            out[key.lower()] = arg.strip().strip('"')
    return out


@dataclass(slots=True)
class _Entry:
    status: int
    headers: Headers
    body: bytes
    stored_at: float
    lifetime: float
    initial_age: float
    vary: tuple[tuple[bytes, bytes | None], ...]


class CacheStore:
    """The entries of one cache filter, by (authority, path), least recently used first."""

    def __init__(self, config: HttpCache, scope: Scope) -> None:
        self.config = config
        self.scope = scope
        self.entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.max_body = min(config.max_body_bytes or MAX_ENTRY_BYTES, MAX_ENTRY_BYTES)

    def lookup(
        self, key: tuple[str, str], headers: Sequence[tuple[bytes, bytes]], now: float
    ) -> Headers | None:
        """The stored response's head (with ``Age``) and body if fresh, else None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if any(_get(headers, name) != value for name, value in entry.vary):
            return None
        age = entry.initial_age + (now - entry.stored_at)
        if age >= entry.lifetime:
            return None
        self.entries.move_to_end(key)
        return [*entry.headers, (b"age", str(int(age)).encode())]

    def body(self, key: tuple[str, str]) -> tuple[int, bytes]:
        entry = self.entries[key]
        return entry.status, entry.body

    def storable(
        self,
        status: int,
        request_headers: Sequence[tuple[bytes, bytes]],
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[float, tuple[tuple[bytes, bytes | None], ...]] | None:
        """(lifetime, the vary key) when this response may be kept, else None."""
        if status not in CACHEABLE_STATUSES:
            return None
        cc = _directives(_get(headers, b"cache-control"))
        if {"no-store", "private", "no-cache"} & set(cc):
            return None
        lifetime_text = cc.get("s-maxage") or cc.get("max-age")
        if not lifetime_text or not lifetime_text.isdigit() or int(lifetime_text) == 0:
            return None
        vary: list[tuple[bytes, bytes | None]] = []
        for name in (_get(headers, b"vary") or b"").split(b","):
            name = name.strip().lower()
            if not name:
                continue
            text = name.decode("latin-1")
            if name == b"*" or not any(m.matches(text) for m in self.config.allowed_vary_headers):
                return None
            vary.append((name, _get(request_headers, name)))
        return float(int(lifetime_text[:12])), tuple(vary)

    def insert(
        self, key: tuple[str, str], status: int, headers: Headers, body: bytes, lifetime: float,
        vary: tuple[tuple[bytes, bytes | None], ...], now: float,
    ) -> None:  # fmt: skip
        age_header = _get(headers, b"age")
        initial_age = float(int(age_header)) if age_header is not None and age_header.isdigit() else 0.0
        kept = [(k, v) for k, v in headers if k.lower() not in (b"age", b"content-length", b"connection")]
        self.entries[key] = _Entry(status, kept, body, now, lifetime, initial_age, vary)
        self.entries.move_to_end(key)
        while len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)
        self.scope.inc("cache.insert")


class CacheInsert:
    """The cache's part of one response it may keep (an encoder of :class:`~._chain.FilterOutcome`,
    run at the filter's place): the head and body as they pass, kept at the end if storable and
    within the store's bound per entry."""

    __slots__ = ("headers", "keep", "kept", "kept_bytes", "key", "now", "request_headers", "status", "store")

    def __init__(
        self, store: CacheStore, key: tuple[str, str], request_headers: Headers, now: Callable[[], float]
    ) -> None:
        self.store = store
        self.key = key
        self.request_headers = request_headers
        self.now = now
        self.keep: tuple[float, tuple[tuple[bytes, bytes | None], ...]] | None = None
        self.status = 0
        self.headers: Headers = []
        self.kept: list[bytes] = []
        self.kept_bytes = 0

    def encode_headers(self, status: int, headers: Headers) -> Headers:
        self.keep = self.store.storable(status, self.request_headers, headers)
        if self.keep is not None:
            self.status, self.headers = status, list(headers)
        return headers

    def encode_data(self, data: bytes) -> bytes:
        if self.keep is not None and data:
            self.kept_bytes += len(data)
            if self.kept_bytes <= self.store.max_body:
                self.kept.append(bytes(data))
            else:  # too large to keep
                self.keep = None
                self.kept.clear()
        return data

    def encode_end(self, trailers: Headers) -> tuple[bytes, Headers]:
        keep, self.keep = self.keep, None
        if keep is not None:
            body = b"".join(self.kept)
            self.kept.clear()
            self.store.insert(self.key, self.status, self.headers, body, keep[0], keep[1], self.now())
        return b"", trailers


class CacheFilter:
    def __init__(
        self, config: HttpCache, scope: Scope, runtime: Callable[[str], RuntimeValue], rng: random.Random
    ) -> None:
        self.store = CacheStore(config, scope)
        self.scope = scope
        scope.declare("cache.hit", "cache.miss", "cache.insert")

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: Callable[[], float],
    ) -> None:
        if request.method != "GET" or _get(request.headers, b"authorization") is not None:
            return
        key = ((_get(request.headers, b"host") or b"").decode("latin-1").lower(), request.path)
        cc = _directives(_get(request.headers, b"cache-control"))
        refresh = not self.store.config.ignore_request_cache_control_header and (
            "no-cache" in cc or "no-store" in cc or cc.get("max-age") == "0"
        )
        if not refresh:
            head = self.store.lookup(key, request.headers, now())
            if head is not None:
                self.scope.inc("cache.hit")
                outcome.cached = (self.store.body(key)[0], head, self.store.body(key)[1])
                return
        self.scope.inc("cache.miss")
        if "no-store" not in cc:
            outcome.encoders.append(CacheInsert(self.store, key, list(request.headers), now))
