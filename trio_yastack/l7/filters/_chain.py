"""Runs a connection manager's HTTP filters on one request, in the order configured.

Why a chain object per connection manager rather than filter objects per request: the filters here
decide from the request head (``fault`` may wait, ``jwt_authn`` and ``ext_authz`` may call a
cluster) and, for the few that need it, from the request body read before the router
(:class:`RequestBody`: Lua's ``body()``, ext_authz's ``with_request_body``), so one ``decode`` call
per request with the route already chosen is all they need, and a connection manager with only the
router pays one attribute test per request (``HttpConnectionManagerRuntime.filters`` is None then).
What a filter does past the head goes through :class:`FilterOutcome`: headers to add to the
response, a local reply or an answer of its own (``cached``), a transform of the response
(``encoders``: gRPC-Web, Lua's ``envoy_on_response``, the compressor, the cache's keeping; run by
:class:`EncoderChain` in the reverse of the configured order, as Envoy runs encoder filters) or of
the request body (``request_decoder``: gRPC-Web text), the route to be chosen again
(``clear_route``); the request's headers are changed in place, and its dynamic metadata
(``RequestView.metadata``) is written by one filter and read by another (``jwt_authn`` and
``ext_authz`` write it, ``rbac`` and Lua read it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..config import (
    CACHE_NAME,
    COMPRESSOR_NAME,
    CORS_NAME,
    EXT_AUTHZ_NAME,
    FAULT_NAME,
    GRPC_WEB_NAME,
    JWT_AUTHN_NAME,
    LOCAL_RATELIMIT_NAME,
    LUA_NAME,
    RBAC_NAME,
    FractionalPercent,
    HttpFilter,
    PerRouteConfig,
    Route,
    RuntimeValue,
    VirtualHost,
)
from ..stats import Scope, Stats
from ._cache import CacheFilter
from ._compressor import CompressorFilter, CompressorResponse
from ._cors import CorsFilter
from ._ext_authz import ExtAuthzFilter
from ._fault import FaultFilter, ResponseRateLimiter
from ._grpc_web import GrpcWebFilter
from ._jwt_authn import JwtAuthnFilter
from ._local_ratelimit import LocalRateLimitFilter
from ._rbac import RbacFilter

if TYPE_CHECKING:
    from ._lua import LuaFilter  # imported when a lua filter is configured: lupa is the "lua" extra

__all__ = [
    "EncoderChain",
    "FilterOutcome",
    "HttpFilterChain",
    "RequestBody",
    "RequestDecoder",
    "RequestView",
    "ResponseEncoder",
    "ResponseHeaders",
    "encode_whole",
    "sample",
]

Headers = list[tuple[bytes, bytes]]


class ResponseEncoder(Protocol):
    """A filter's transform of one response on its way to the client (gRPC-Web's): its head, each
    piece of its body, and its end (bytes to add to the body, and the trailers left to send)."""

    def encode_headers(self, status: int, headers: Headers) -> Headers: ...

    def encode_data(self, data: bytes) -> bytes: ...

    def encode_end(self, trailers: Headers) -> tuple[bytes, Headers]: ...


class RequestBody(Protocol):
    """The request body as the connection manager reads it (``http_proxy._RequestBody``), for the
    filters that read it before the router does (Lua's ``body()``, ext_authz's ``with_request_body``):
    ``read_more`` takes the next piece from the client (b"" at the end; too large a body raises the
    connection manager's 413), ``kept`` holds what was read while ``hold`` is set (the router uploads
    it first), ``complete`` says the client's body has ended, ``trailers`` are its trailers then.
    See :mod:`._body`."""

    kept: list[bytes]
    complete: bool
    hold: bool
    trailers: list[tuple[bytes, bytes]]
    replayable: bool
    framing: str
    decoder: RequestDecoder | None

    async def read_more(self) -> bytes: ...


class RequestDecoder(Protocol):
    """A filter's transform of one request body on its way upstream: each piece, then b"" once at
    the end; ``ValueError`` for a body it cannot read (the client gets a 400)."""

    def decode(self, data: bytes) -> bytes: ...


class ResponseHeaders:
    """The response headers a filter adds (CORS's, local_ratelimit's ``x-ratelimit-*``), as an
    encoder at the filter's place when the chain has encoders (gRPC-Web, Lua, the compressor):
    each replaces the upstream's header of its name (Envoy's ``setReference``)."""

    __slots__ = ("headers",)

    def __init__(self, headers: Headers) -> None:
        self.headers = headers

    def encode_headers(self, status: int, headers: Headers) -> Headers:
        names = {name for name, _ in self.headers}
        return [h for h in headers if h[0].lower() not in names] + self.headers

    def encode_data(self, data: bytes) -> bytes:
        return data

    def encode_end(self, trailers: Headers) -> tuple[bytes, Headers]:
        return b"", trailers


class EncoderChain:
    """One response through the filters' encoders in Envoy's order: the reverse of the order
    configured (the filter nearest the router first), each seeing what the ones after it in the
    config made of the head, the body and the trailers.  An encoder that holds the head
    (``holding`` set after ``encode_headers``: Lua's ``body()``) stops the head there, as Envoy's
    ``StopIteration``: the encoders before it in the config see the head only once it lets go (at
    the end of the body, or past its limit) and the body's bytes only from then on; what it keeps
    leaves then, through them.

    :meth:`headers` returns the head to send, or None while it is held; :meth:`data` the bytes to
    send for a piece of the body, with :attr:`released` set to the head when it is let go during
    the body (to be sent first); :meth:`end` the head if it was held to the end (to be framed anew:
    the body's length is known then), the body's last bytes, and the trailers left."""

    __slots__ = ("encoders", "held_at", "held_headers", "released", "status")

    def __init__(
        self, encoders: list[ResponseEncoder], upstream_headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        self.encoders = encoders[::-1]
        for encoder in encoders:
            if isinstance(encoder, CompressorResponse):
                encoder.upstream_headers = upstream_headers  # (its framing decides too)
        self.status = 0
        self.held_at = -1  # the encoder holding the head (-1: none)
        self.held_headers: Headers = []
        self.released: Headers | None = None

    def headers(self, status: int, headers: Headers) -> Headers | None:
        self.status = status
        return self._headers_from(0, headers)

    def _headers_from(self, start: int, headers: Headers) -> Headers | None:
        encoders = self.encoders
        for i in range(start, len(encoders)):
            encoder = encoders[i]
            headers = encoder.encode_headers(self.status, headers)
            if getattr(encoder, "holding", False):
                self.held_at, self.held_headers = i, headers
                return None
        self.held_at = -1
        return headers

    def data(self, data: bytes) -> bytes:
        for i, encoder in enumerate(self.encoders):
            data = encoder.encode_data(data)
            if i == self.held_at:
                if getattr(encoder, "holding", False):
                    return b""  # kept by the encoder holding the head
                head = self._headers_from(i + 1, self.held_headers)  # let go: the head goes on
                if head is not None:
                    self.released = head
            if not data:
                return b""
        return data

    def end(self, trailers: Headers) -> tuple[Headers | None, bytes, Headers]:
        held = self.held_at >= 0
        head: Headers | None = None
        tail = b""
        for i, encoder in enumerate(self.encoders):
            if tail:
                tail = encoder.encode_data(tail)
            more, trailers = encoder.encode_end(trailers)
            tail += more
            if i == self.held_at:  # it let go at the end: the head goes on past it
                head = self._headers_from(i + 1, self.held_headers)
        return (head if held else None), tail, trailers


def encode_whole(
    encoders: list[ResponseEncoder], status: int, headers: Headers, body: bytes
) -> tuple[Headers, bytes, Headers]:
    """A whole response the proxy makes itself (a local reply, a cache hit, a direct response)
    through ``encoders`` (:class:`EncoderChain`): its head, body and trailers as they leave.  The
    head still carries the length of the body as it was: the caller frames it anew."""
    chain = EncoderChain(encoders, headers)
    head = chain.headers(status, headers)
    data = chain.data(body) if body else b""
    if chain.released is not None:
        head = chain.released
    last, tail, trailers = chain.end([])
    if last is not None:
        head = last
    assert head is not None  # let go at the end at the latest
    return head, data + tail, trailers


@dataclass(slots=True)
class RequestView:
    """What the filters see of a request: its head, the route chosen (None: no route), the
    connection's own filter state (for per-connection token buckets), and the connection manager's
    connection object (``remote``, ``scheme``, ``stream``: read through
    :func:`~._connection.connection_info` by the filters that need the peer, such as RBAC).

    ``headers`` is the list the router forwards from: a filter that adds or removes a request header
    (``jwt_authn``, ``ext_authz``) changes it in place."""

    method: str
    path: str
    headers: Headers
    vhost: VirtualHost | None
    route: Route | None
    connection_state: dict[int, object]
    downstream: object = None
    #: the request body, for the filters that read it (None: no such filter in the chain)
    body: RequestBody | None = None
    #: chooses ``vhost`` and ``route`` again from the request's (changed) headers: Envoy's
    #: ``clearRouteCache``, called by the chain when a filter asks (``FilterOutcome.clear_route``)
    reroute: Callable[[RequestView], None] | None = None
    #: the request's dynamic metadata, by namespace (``envoy.filters.http.jwt_authn``: what a
    #: verified token wrote), made by the first filter that writes some
    metadata: dict[str, dict[str, Any]] | None = None

    def per_filter_config(self, name: str) -> PerRouteConfig | None:
        """The most specific ``typed_per_filter_config`` for filter ``name``: route, then virtual host."""
        if self.route is not None:
            found = self.route.per_filter_config(name)
            if found is not None:
                return found
        return self.vhost.per_filter_config(name) if self.vhost is not None else None


@dataclass(slots=True)
class FilterOutcome:
    """What the filters decided: a local reply (``status`` set) or go on to the router; headers to add
    to the response either way, and response flags for the access log (``FI``, ``DI``, ``RL``)."""

    status: int | None = None
    body: str = ""
    reply_headers: Headers = field(default_factory=list)
    response_headers: Headers = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    #: a cache hit to answer with: (status, headers, body)
    cached: tuple[int, Headers, bytes] | None = None
    #: ``cached`` is a local reply in Envoy's sense (ext_authz's denial, sent with sendLocalReply):
    #: a gRPC request gets it gRPC-formatted (Lua's ``respond()`` and cache hits go as they are)
    cached_is_local_reply: bool = False
    #: transforms of the response, in the order configured (:class:`EncoderChain` runs them in
    #: reverse): gRPC-Web's, Lua's ``envoy_on_response``, the compressor's, the cache's keeping
    encoders: list[ResponseEncoder] = field(default_factory=list)
    #: ``response_headers`` are among ``encoders`` too, each filter's at its place
    #: (:class:`ResponseHeaders`): the relay applies them there, not before the encoders
    headers_placed: bool = False
    #: a transform of the request body (gRPC-Web text's base64)
    request_decoder: RequestDecoder | None = None
    #: a filter changed what routing reads (headers) and asks for the route again, as Envoy's
    #: filters clear the route cache: the filters after it see the new route, and so does the router
    clear_route: bool = False
    #: paces the response body (the fault filter's ``response_rate_limit``)
    response_limiter: ResponseRateLimiter | None = None
    #: the ``grpc-status`` of the local reply when the request is gRPC (None: mapped from
    #: ``status`` as Envoy's ``httpToGrpcStatus``): local_ratelimit's RESOURCE_EXHAUSTED
    grpc_status: int | None = None


def sample(percent: FractionalPercent, runtime: Callable[[str], RuntimeValue], rng: random.Random) -> bool:
    """Whether this request is picked by ``percent``, as Envoy draws: a uniform integer in
    ``[0, denominator)`` below the numerator.  A ``runtime_key`` set to a number in the runtime
    replaces the percentage with that many percent (Envoy's ``featureEnabled``)."""
    numerator, denominator = percent.numerator, percent.denominator
    if percent.runtime_key is not None:
        value = runtime(percent.runtime_key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numerator, denominator = min(100, max(0, int(value))), 100
    if numerator >= denominator:
        return True
    if numerator <= 0:
        return False
    return rng.randrange(denominator) < numerator


if TYPE_CHECKING:  # annotations only: LuaFilter's module is imported on demand
    Filter = (
        CacheFilter
        | CompressorFilter
        | CorsFilter
        | ExtAuthzFilter
        | FaultFilter
        | GrpcWebFilter
        | JwtAuthnFilter
        | LocalRateLimitFilter
        | LuaFilter
        | RbacFilter
    )
#: the filters that run in the chain (the router is the connection manager's own)
CHAIN_FILTERS = frozenset(
    {
        CACHE_NAME,
        COMPRESSOR_NAME,
        CORS_NAME,
        EXT_AUTHZ_NAME,
        FAULT_NAME,
        GRPC_WEB_NAME,
        JWT_AUTHN_NAME,
        LOCAL_RATELIMIT_NAME,
        LUA_NAME,
        RBAC_NAME,
    }
)


def _reply_gets_response_headers(outcome: FilterOutcome) -> None:
    """A local reply passes the response side of the filters before the one that made it (Envoy's
    encoder filters): the response headers they add (CORS's ``access-control-allow-origin``) go on
    it too, replacing its own of the same name.  (The answering filter's own, local_ratelimit's
    ``x-ratelimit-*``, are among its reply headers already.)"""
    reply = outcome.reply_headers
    earlier = [h for h in outcome.response_headers if h not in reply]
    if earlier:
        names = {name for name, _ in earlier}
        outcome.reply_headers = [h for h in reply if h[0] not in names] + earlier


#: the filters whose encoders transform a response (its head, body or trailers)
_ENCODING_FILTERS = frozenset({CACHE_NAME, COMPRESSOR_NAME, GRPC_WEB_NAME, LUA_NAME})


def _decode_read_body(body: RequestBody, outcome: FilterOutcome) -> bool:
    """A filter's request-body transform (gRPC-Web text) set while a filter reads the body before
    the router: what is read from now on is transformed as it is read (the body reader's own
    ``decoder``), and what an earlier filter already read is transformed now, so the router uploads
    the transformed body either way.  False (and a 400) for a body the transform cannot read."""
    decoder = outcome.request_decoder
    if body.decoder is decoder:
        return True
    body.decoder = decoder
    try:
        body.kept[:] = [decoder.decode(chunk) for chunk in body.kept] if decoder is not None else body.kept
        if body.complete and decoder is not None:
            decoder.decode(b"")
    except ValueError:
        outcome.status, outcome.body = 400, "bad request body"
        return False
    return True


class HttpFilterChain:
    """The decoding side of one ``http_connection_manager``'s filters (the router excluded)."""

    def __init__(
        self,
        filters: tuple[HttpFilter, ...],
        stats: Stats,
        scope: Scope,
        runtime: Callable[[str], RuntimeValue],
        rng: random.Random,
        clusters: object = None,
    ) -> None:
        """``clusters``: the proxy's cluster manager (``clusters[name]``), for the filters that call
        a cluster themselves (``jwt_authn``'s remote JWKS, ``ext_authz``)."""
        self.filters: list[tuple[HttpFilter, Filter]] = []
        for f in filters:
            kind = f.type_name  # (the canonical name, whatever the filter is called)
            if kind == CACHE_NAME:
                self.filters.append((f, CacheFilter(f.config, scope, runtime, rng)))  # type: ignore[arg-type]  # the config's type follows its name
            elif kind == COMPRESSOR_NAME:
                self.filters.append((f, CompressorFilter(f.config, scope, runtime, rng)))  # type: ignore[arg-type]  # the config's type follows its name
            elif kind == CORS_NAME:
                self.filters.append((f, CorsFilter(scope, runtime, rng, f.name)))
            elif kind == FAULT_NAME:
                self.filters.append((f, FaultFilter(f.config, scope, runtime, rng)))  # type: ignore[arg-type]  # the config's type follows its name
            elif kind == LOCAL_RATELIMIT_NAME:
                self.filters.append((f, LocalRateLimitFilter(f.config, stats, runtime, rng)))  # type: ignore[arg-type]  # the config's type follows its name
            elif kind == EXT_AUTHZ_NAME:
                self.filters.append((f, ExtAuthzFilter(f.config, scope, runtime, rng, clusters)))  # type: ignore[arg-type]  # the config's type follows its name
            elif kind == GRPC_WEB_NAME:
                self.filters.append((f, GrpcWebFilter(scope)))
            elif kind == JWT_AUTHN_NAME:
                self.filters.append((f, JwtAuthnFilter(f.config, scope, clusters, rng)))  # type: ignore[arg-type]  # the config's type follows its name
            elif kind == LUA_NAME:
                from ._lua import LuaFilter

                self.filters.append((f, LuaFilter(f.config, scope, clusters)))  # type: ignore[arg-type]  # the config's type follows its name
            elif kind == RBAC_NAME:
                self.filters.append((f, RbacFilter(f.config, scope)))  # type: ignore[arg-type]  # the config's type follows its name
        #: whether a filter may read the request body before the router (Lua, whose scripts may
        #: call ``body()``; ext_authz, whose ``with_request_body`` may be set here or on a route):
        #: then the connection manager hands the filters a :class:`RequestBody`
        self.reads_body = any(getattr(runtime, "reads_body", False) for _, runtime in self.filters)
        #: whether a filter may transform the response (gRPC-Web, Lua, the compressor): then the
        #: response headers other filters add are placed among the encoders, each at its filter's place
        self.encodes = any(f.type_name in _ENCODING_FILTERS for f, _ in self.filters)

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the filters' background tasks in the proxy's ``nursery`` (``jwt_authn``'s
        ``async_fetch``), before the listeners open; returns when those that must finish first
        (a JWKS fetch without ``fast_listener``) have."""
        for _, runtime in self.filters:
            if isinstance(runtime, JwtAuthnFilter):
                await runtime.start(nursery)

    @staticmethod
    def needed(filters: tuple[HttpFilter, ...]) -> bool:
        """False when the router is the only filter: then no chain is built at all."""
        return any(f.type_name in CHAIN_FILTERS for f in filters)

    async def decode(self, request: RequestView, now: Callable[[], float]) -> FilterOutcome:
        """Run each filter on ``request`` in order until one answers it locally."""
        outcome = FilterOutcome()
        placed: list[ResponseEncoder] | None = [] if self.encodes else None
        for config, runtime in self.filters:
            override = request.per_filter_config(config.name)
            if config.disabled and override is None:
                continue  # Envoy: a disabled filter runs only where a route or host configures it
            if placed is not None:
                n_encoders, n_headers = len(outcome.encoders), len(outcome.response_headers)
            await runtime.decode(request, override, outcome, now)
            if outcome.status is not None or outcome.cached is not None:
                if outcome.status is not None and outcome.response_headers:
                    _reply_gets_response_headers(outcome)
                break
            if placed is not None:
                if len(outcome.response_headers) > n_headers:
                    placed.append(ResponseHeaders(outcome.response_headers[n_headers:]))
                placed += outcome.encoders[n_encoders:]
            body = request.body  # (None unless a filter of the chain reads the body)
            if (
                body is not None
                and outcome.request_decoder is not None
                and not _decode_read_body(body, outcome)
            ):
                break
            if outcome.clear_route:
                outcome.clear_route = False
                if request.reroute is not None:
                    request.reroute(request)
        else:
            if placed is not None and outcome.encoders and outcome.response_headers:
                outcome.encoders, outcome.headers_placed = placed, True
        return outcome
