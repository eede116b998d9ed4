"""Envoy's HTTP connection manager and router filter, with h11 (HTTP/1.1) at its core and a fast
path on httptools for the common request.

The fast path (:mod:`._http1`, like FreeBSD's header prediction): an HTTP/1.1 request that came
whole in one read (its head, and its body if ``Content-Length`` frames one), on a connection
manager whose HTTP filters only answer from the head or add response headers (``cors``, ``fault``,
``local_ratelimit``), is parsed by llhttp, its upstream head (and body) written as bytes,
the upstream's response parsed by llhttp and written to the client as the bytes h11 would write;
h11 never sees it.  Everything else (chunked or longer bodies, 100-continue, upgrades, pipelining,
HTTP/1.0, ``HEAD``, malformed requests, the ``cache`` and ``compressor`` filters) takes h11 as
before.  Routing, timers, retries, failures, stats and access logs are the same code for both.
Of the fast path's requests, the bodyless ones on a connection manager without ``local_reply_config``,
to a cluster by a route without retries, mirrors or header options, go through one lean function
(:meth:`HttpConnectionManagerRuntime._proxy_plain`) instead of the general request objects.

HTTP/2 on either side goes through the same code: a client's HTTP/2 stream is served as a
one-request HTTP/1.1 connection (:mod:`.h2_downstream`, chosen by ALPN ``h2``, ``codec_type`` HTTP2,
or AUTO and the client's preface), and a request to an HTTP/2 cluster is written as HTTP/1.1 to a
stream of the host's shared connection (:mod:`.h2_upstream`); trailers (gRPC's ``grpc-status``)
pass wherever the client's framing can carry them.

One downstream connection is served by :meth:`HttpConnectionManagerRuntime.serve_connection`:
requests are read one at a time (HTTP/1.1 keep-alive; pipelined requests wait their turn), routed
(:mod:`.router`), and proxied to an upstream connection from the cluster's pool (:mod:`.upstream`)
by the router's per-request state, :class:`_RouterRequest`, one :class:`_UpstreamRequest` per
attempt (Envoy's router filter and its ``UpstreamRequest``).

What a request meets on the way, in order:

- **Refusals.** A malformed request is 400, a header block over 60 KiB (Envoy's
  ``max_request_headers_kb`` default) 431, a ``Transfer-Encoding`` other than chunked 501, and a
  request with both ``Content-Length`` and ``Transfer-Encoding`` 400: that is how request smuggling
  starts (RFC 9112 6.3 lets a proxy reject it, and Envoy does).  A declared or streamed body over
  ``max_request_body`` is 413.  Each of these closes the connection, since the framing of what
  follows cannot be trusted.
- **Timeouts.** ``request_timeout`` bounds receiving the whole request (408), ``stream_idle_timeout``
  any quiet period of a request in either direction (408 before the response started, a reset
  after), ``idle_timeout`` a connection with no request; the route's ``timeout`` runs from the end of
  the request to the end of the response (504), ``per_try_timeout`` bounds each attempt's wait for
  response headers.
- **HTTP filters** (:mod:`.filters`), once the route is chosen, in the order configured:
  ``local_ratelimit`` and ``fault`` may answer locally (429, the fault's status) or delay,
  ``cors`` answers preflights and marks responses, ``cache`` answers from memory and keeps
  cacheable responses, ``compressor`` gzips the response body.  Their response side runs in the
  reverse order, as Envoy's encoder filters (:class:`.filters.EncoderChain`), and the answers made
  here pass the response side of the filters whose request side ran.  The proxy's own replies go
  through ``local_reply_config`` (:mod:`.local_reply`), and to a gRPC request as gRPC's
  trailers-only answer.
- **Routing.** No virtual host or route: 404.  ``direct_response`` answers locally.
- **Headers.** Hop-by-hop headers are removed both ways; ``x-forwarded-for`` gets the client's
  address appended, ``x-forwarded-proto`` is set to the downstream scheme, ``x-request-id`` is kept or
  made (UUID4), ``via: 1.1 trio_yastack`` is appended; ``prefix_rewrite`` (the original path goes in
  ``x-envoy-original-path``), ``host_rewrite_literal`` and the route's header options apply.
- **Upstream.** 503 when no host is healthy or a circuit breaker is open, 502 when the connection
  fails or is reset before a response (the issue's rule; Envoy itself answers 503 there), 504 on
  timeout.  Retries follow ``retry_policy`` with Envoy's jittered back-off (25 ms base, 250 ms cap);
  a request body is kept for replay up to :data:`RETRY_BUFFER` bytes, and a request with more is
  not retried (Envoy's buffer-limit rule) — bodies are otherwise streamed, never held whole.
- **Bodies** stream both ways with backpressure: each chunk is written before the next is read,
  and the request body is sent while the response is being read (an upstream may answer early).
- **Upgrade** (WebSocket): an upgrade that ``upgrade_configs`` (the route's, else the connection
  manager's) allows goes to the upstream, and on 101 the two connections are spliced byte for byte
  until both sides close; any other is refused with 403, as Envoy refuses it.
- **Mirrors** (``request_mirror_policies``): a copy of the request goes to each mirror cluster once
  it is done, fire and forget (:meth:`HttpConnectionManagerRuntime._mirror`).
- **Draining** (SIGTERM or ``POST /healthcheck/fail`` on the admin endpoint): responses carry
  ``connection: close``, so keep-alive clients move on; an HTTP/2 client gets GOAWAY.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h11
import trio

from trio_yastack._trio_helpers import lingering_close, unwrap_single_exception

from ._heads import request_head, response_head
from ._http1 import (
    PlainRequest,
    PlainResponse,
    RequestParser,
    ResponseReader,
    chunk,
    last_chunk,
    request_head_bytes,
    response_head_bytes,
)
from ._kernel_io import RawIO, RawSocket, receive_now, send_now
from ._stack_io import stream_io
from .access_log import AccessLogger, AccessRecord
from .config import (
    CORS_NAME,
    FAULT_NAME,
    LOCAL_RATELIMIT_NAME,
    ROUTER_NAME,
    DirectResponse,
    HttpConnectionManager,
    RetryPolicy,
    Route,
    RouteAction,
    RuntimeValue,
    VirtualHost,
)
from .filters import (
    EncoderChain,
    HttpFilterChain,
    RequestView,
    ResponseHeaders,
    encode_whole,
    limits_response_rate,
    sample,
)
from .h2_downstream import PREFACE, H2Downstream, StreamBridge
from .local_reply import LocalReplyContext, grpc_reply_headers, is_grpc_request, rewrite
from .router import (
    HOP_BY_HOP,
    Router,
    any_path_route,
    apply_header_options,
    get_header,
    rewrite_path,
    strip_hop_by_hop,
)
from .stats import Cell, Scope, Stats
from .upstream import ClusterManager, ClusterRuntime, ConnectFailure, Overflow, UpstreamConnection

if TYPE_CHECKING:
    from .filters import FilterOutcome, RequestDecoder, ResponseRateLimiter
    from .proxy import ProxyState

__all__ = ["MAX_REQUEST_HEADERS", "RETRY_BUFFER", "HttpConnectionManagerRuntime", "ProxyLimits", "RequestIds"]

_PLAIN_FILTERS = frozenset((ROUTER_NAME, CORS_NAME, FAULT_NAME, LOCAL_RATELIMIT_NAME))  # see plain_ok
MAX_REQUEST_HEADERS = 60 * 1024  # Envoy's max_request_headers_kb default
RETRY_BUFFER = 64 * 1024  # request body kept for replay on retry (and for a mirror)
MAX_SHADOWS = 256  # request mirrors in flight per connection manager; more are skipped (counted)
RECEIVE_SIZE = 65536
#: request parsers an HTTP/2 connection keeps for its streams (serve_stream): a bound
H2_PARSERS = 16
RETRY_BASE = 0.025  # Envoy's retry back-off base_interval default
RETRY_MAX = 0.25  # and its default max_interval (10 x base)
VIA = b"1.1 trio_yastack"
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
SERVER = b"trio_yastack"
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_EOM = h11.EndOfMessage()  # frozen: one for every message without trailers, none built per request


def _no_runtime(key: str) -> RuntimeValue:
    """The runtime of a connection manager built without a bootstrap (tests): no key is set."""
    return None


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """Bounds that Envoy's static subset has no field for (``yastack proxy`` options)."""

    max_request_body: int = 100 * 1024 * 1024  # 413 beyond this (declared or streamed)
    max_downstream_connections: int = 10_000  # per listener; beyond it new connections wait in the backlog


class _LocalReply(Exception):
    """Answer the request locally with ``status`` (and close the connection if ``close``)."""

    def __init__(self, status: int, body: str, flags: str, *, close: bool = False) -> None:
        super().__init__(body)
        self.status, self.body, self.flags, self.close = status, body, flags, close


class _DownstreamGone(Exception):
    """The client went away (or timed out) mid-request: no reply is possible."""

    def __init__(self, flags: str) -> None:
        super().__init__(flags)
        self.flags = flags


class _Downstream:
    """One client connection: the stream, its h11 server state, and byte counts; ``plain`` when
    the current request took the fast path (:mod:`._http1`: h11 never saw it, and stays idle)."""

    __slots__ = (
        "_h11",
        "bytes_received",
        "bytes_sent",
        "filter_state",
        "forwarded_lines",
        "initial",
        "io",
        "now",
        "parser",
        "plain",
        "proto_line",
        "protocol",
        "raw",
        "remote",
        "remote_bytes",
        "request_headers",
        "response_started",
        "scheme",
        "send_whole",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, remote: str, scheme: str) -> None:
        self.stream = stream
        # set: I/O straight on it (a kernel socket's or the stack's), waits by ``io``
        # (:mod:`._kernel_io` or :mod:`._stack_io`)
        self.raw: RawSocket | None
        self.io: RawIO
        self.raw, self.io = stream_io(stream)
        self.filter_state: dict[int, object] = {}  # per-connection filter state (token buckets)
        self.request_headers: list[tuple[bytes, bytes]] = []  # kept only for local_reply_config
        self.remote = remote
        self.scheme = scheme
        # the upstream heads' lines that depend only on the connection, made once (_lean_head)
        self.remote_bytes = remote.encode()
        self.proto_line = b"\r\nx-forwarded-proto: " + scheme.encode() + b"\r\n"
        self.forwarded_lines = b"x-forwarded-for: " + self.remote_bytes + self.proto_line
        self._h11: h11.Connection | None = None  # made at first use (:attr:`h11`)
        self.bytes_received = 0
        self.bytes_sent = 0
        self.response_started = False
        self.protocol: str | None = None  # "HTTP/2" for a stream of an HTTP/2 connection
        self.parser: RequestParser | None = None  # the fast path's, made at its first use
        self.plain = False
        self.initial = b""  # the first bytes read by the protocol sniffing, not yet parsed
        # trio.current_time() for this run's clock, bound once: one call where trio's is three
        # (current_time -> the runner's -> the clock's), and the lean path reads it ~4 times per request
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        # an HTTP/2 stream's whole response written without a wait (StreamBridge.send_whole_now)
        self.send_whole: Callable[[bytes], bool] | None = None

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.bytes_sent += len(data)
            await self.write(data)

    def cancel(self) -> None:
        """A drain: end the wait for the next request (``io.wait_readable`` on ``raw``) now, as
        cancelling its scope would (``ProxyState.idle_waits``)."""
        if self.raw is not None:
            self.io.expire(self.raw)

    async def send_pending(self, pending: list[bytes]) -> None:
        """Write what h11 produced for several events in one send, and empty ``pending``."""
        data = b"".join(pending)
        pending.clear()
        if data:
            self.bytes_sent += len(data)
            await self.write(data)

    async def write(self, data: bytes) -> None:
        if self.raw is not None:
            await self.io.send_all(self.raw, data)
        else:
            await self.stream.send_all(data)

    async def receive(self) -> bytes | bytearray:
        if self.raw is not None:
            return await self.io.receive_some(self.raw, RECEIVE_SIZE)
        return await self.stream.receive_some(RECEIVE_SIZE)

    async def next_event(self, deadline: float) -> h11.Event | None:
        """The next event from the client, or None if ``deadline`` passed first."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # h11.PAUSED: only after their message ends
            with trio.move_on_at(deadline):
                data = await self.receive()
                self.bytes_received += len(data)
                self.h11.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too
                continue
            return None

    @property
    def h11(self) -> h11.Connection:
        """The connection's h11 server state, made when first asked for: a request the fast path
        takes never needs it (an HTTP/2 stream's mostly, its one request; ~1.5 us each).  (Last
        in the class: the annotations above it name the module ``h11``.)"""
        conn = self._h11
        if conn is None:
            conn = self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEADERS)
        return conn


class _RequestBody:
    """The request body, read from the client as the upstream takes it, kept for a retry while it
    fits in :data:`RETRY_BUFFER`."""

    def __init__(
        self, ds: _Downstream, headers: list[tuple[bytes, bytes]], limits: ProxyLimits, timing: _Timing,
        plain_body: bytes = b"", trailers: bool = False,
    ) -> None:  # fmt: skip
        """``plain_body``: the whole body of a request of the fast path (read with its head);
        ``trailers``: an HTTP/1.1 client's trailers are kept (``enable_trailers``; an HTTP/2
        client's always are, as Envoy's codecs do)."""
        self.ds = ds
        self.keep_trailers = trailers or ds.protocol == "HTTP/2"
        self.limits = limits
        self.timing = timing
        self.kept: list[bytes] = []
        self.kept_bytes = 0
        self.total = 0
        self.replayable = True
        self.complete = False
        self.expect_continue = ds.h11.they_are_waiting_for_100_continue
        self.decoder: RequestDecoder | None = None  # a filter's transform of the body (gRPC-Web text)
        self.hold = False  # a filter reads the body before the router: keep all of it for the upload
        self.framing = "length"
        self.empty = True
        self.trailers: list[tuple[bytes, bytes]] = []  # the client's, once the body is complete
        if ds.plain:
            self.complete = True  # the fast path's request came whole
            if plain_body:  # kept as any body is: for a retry (it fits RETRY_BUFFER) or a mirror
                self.empty = False
                self.kept.append(plain_body)
                self.kept_bytes = self.total = len(plain_body)
                self.replayable = self.kept_bytes <= RETRY_BUFFER
            return
        # ``headers``: the request's, as a list (iterating h11's Headers is several times slower)
        self.framing = "chunked" if get_header(headers, b"transfer-encoding") else "length"
        length = get_header(headers, b"content-length")
        self.empty = self.framing == "length" and (length is None or int(length) == 0)
        if self.empty:
            # h11 has the (zero-length) body's end ready without more bytes: take it now, so the
            # connection is ready for the next request when the response is done.
            self.complete = isinstance(ds.h11.next_event(), h11.EndOfMessage)

    async def read_more(self) -> bytes:
        """The next chunk from the client (b"" once the body is complete), kept for replay while
        the kept part fits in :data:`RETRY_BUFFER`."""
        if self.expect_continue:
            self.expect_continue = False
            await self.ds.send(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            event = await self.ds.next_event(self.timing.downstream_deadline())
        except h11.RemoteProtocolError:
            raise _LocalReply(400, "bad request body", "DPE", close=True) from None
        if event is None:
            raise _DownstreamGone(self.timing.timeout_flag())
        if isinstance(event, h11.Data):
            self.total += len(event.data)
            if self.total > self.limits.max_request_body:
                raise _LocalReply(413, "payload too large", "-", close=True)
            data = bytes(event.data) if self.decoder is None else self._decode(event.data)
            if self.replayable:
                self.kept_bytes += len(data)
                if self.kept_bytes <= RETRY_BUFFER:
                    self.kept.append(data)
                elif self.hold:  # kept for the upload (read by a filter), too large to replay
                    self.kept.append(data)
                    self.replayable = False
                else:
                    self.replayable = False
                    self.kept.clear()
            elif self.hold:
                self.kept.append(data)
            return data
        if isinstance(event, h11.EndOfMessage):
            if self.decoder is not None:
                self._decode(b"")
            if event.headers and self.keep_trailers:
                self.trailers = list(event.headers)
            self.complete = True
            self.timing.request_complete()
            return b""
        raise _DownstreamGone("DC")  # ConnectionClosed mid-body

    def finish_unsent(self) -> bool:
        """After a response that ended before this body was read to its end (the upstream
        answered early, or reset its stream once it had answered, as HTTP/2 allows: RFC 9113
        8.1): the rest of the body, when the client has sent it all already (h11 holds it), read
        and dropped, so that the connection can carry the next request.  False when more is still
        to come: the connection must close then, as Envoy closes an HTTP/1.1 connection whose
        response ends before its request.  How far the body had been read when the response ended
        depends on how the upload task and the response were scheduled; what the client sent
        does not, and that decides."""
        if self.complete:
            return True
        h11_conn = self.ds.h11
        while True:
            try:
                event = h11_conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.Data):
                self.total += len(event.data)
                if self.total > self.limits.max_request_body:
                    return False
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                return True
            else:  # NEED_DATA (the rest is on its way), ConnectionClosed
                return False

    def _decode(self, data: bytes | bytearray) -> bytes:
        assert self.decoder is not None
        try:
            return self.decoder.decode(bytes(data))
        except ValueError:
            raise _LocalReply(400, "bad request body", "DPE", close=True) from None


class _Timing:
    """The timers of one request (see the module docstring), as deadlines for trio cancel scopes."""

    def __init__(self, config: HttpConnectionManager, started: float) -> None:
        self.stream_idle = config.stream_idle_timeout or float("inf")
        self.request_deadline = started + config.request_timeout if config.request_timeout else float("inf")
        self.route_timeout = 0.0
        self.route_deadline = float("inf")
        self.request_done = False
        self._scopes: list[trio.CancelScope] = []  # upstream waits to tighten when the route timer starts

    def downstream_deadline(self) -> float:
        deadline = trio.current_time() + self.stream_idle
        return deadline if self.request_done else min(deadline, self.request_deadline)

    def timeout_flag(self) -> str:
        if not self.request_done and trio.current_time() >= self.request_deadline:
            return "RT"  # request_timeout (Envoy logs it as a downstream timeout)
        return "SI"

    def request_complete(self) -> None:
        """The whole request has been read: the route timeout starts now (Envoy's rule)."""
        self.request_done = True
        if self.route_timeout:
            self.route_deadline = trio.current_time() + self.route_timeout
            for scope in self._scopes:
                scope.deadline = min(scope.deadline, self.route_deadline)

    def watch(self, scope: trio.CancelScope) -> None:
        self._scopes.append(scope)

    def unwatch(self, scope: trio.CancelScope) -> None:
        self._scopes.remove(scope)


class HttpConnectionManagerRuntime:
    """One ``http_connection_manager`` filter, live: serves downstream connections."""

    def __init__(
        self,
        config: HttpConnectionManager,
        clusters: ClusterManager,
        stats: Stats,
        state: ProxyState,
        *,
        limits: ProxyLimits | None = None,
        rng: random.Random | None = None,
        runtime: Callable[[str], RuntimeValue] | None = None,
        request_ids: RequestIds | None = None,
    ) -> None:
        """``request_ids``: where ``x-request-id`` values come from; by default the system's
        CSPRNG, or ``rng``'s bits when one is given (a seeded test's)."""
        self.config = config
        self.router = Router(config.route_config)
        self.clusters = clusters
        self.state = state
        self.limits = limits or ProxyLimits()
        self.rng = rng or random.Random()
        self.request_ids = request_ids or RequestIds(os.urandom if rng is None else rng.randbytes)
        self.stats: Scope = stats.scope("http", config.stat_prefix)
        self.stats.declare(
            "downstream_cx_total",
            "downstream_cx_http1_total",
            "downstream_cx_http2_total",
            "downstream_rq_total",
            "downstream_rq_completed",
            "downstream_rq_1xx",
            "downstream_rq_2xx",
            "downstream_rq_3xx",
            "downstream_rq_4xx",
            "downstream_rq_5xx",
            "downstream_cx_protocol_error",
            "downstream_rq_timeout",
            "downstream_rq_idle_timeout",
            "downstream_cx_idle_timeout",
            "downstream_rq_too_large",
            "downstream_rq_rx_reset",
            "downstream_cx_drain_close",
            "downstream_cx_upgrades_total",
            "no_route",
            "rq_direct_response",
            "downstream_rq_ws_on_non_ws_route",
        )
        self.stats.gauge_set("downstream_cx_active", 0)
        self.stats.gauge_set("downstream_rq_active", 0)
        # What every request moves, bound once (``cell.value += 1``: no call or dict update per
        # request); a response status's counters when it first comes (:meth:`status_cells`)
        self._rq_total = self.stats.cell("downstream_rq_total")
        self._rq_active = self.stats.cell("downstream_rq_active", "gauge")
        self.rq_by_status: dict[int, tuple[Cell, ...]] = {}
        self.access_log = AccessLogger(config.access_log)
        self.runtime = runtime or _no_runtime
        self.local_reply = bool(config.local_reply_mappers or config.local_reply_format)
        self._logged = self.access_log.enabled  # (fixed with the config: read once, not per request)
        self._wall_clock = self._logged or self.local_reply  # who reads a record's start_time
        self._shadows = 0  # request mirrors in flight
        # HTTP filters before the router; None when the router is alone (one test per request)
        self.filters: HttpFilterChain | None = None
        if HttpFilterChain.needed(config.http_filters):
            self.filters = HttpFilterChain(
                config.http_filters, stats, self.stats, runtime or _no_runtime, self.rng, clusters
            )
        # The HTTP/1.1 fast path (:mod:`._http1`) takes requests whose filters decide from the
        # request head and at most add response headers (cors, fault, local_ratelimit); a filter
        # that keeps or rewrites a response body (cache, compressor) — or one this list does not
        # know — sends every request through h11 and the general relay.
        self.plain_ok = all(f.type_name in _PLAIN_FILTERS for f in config.http_filters)
        self.plain_ok = self.plain_ok and not limits_response_rate(config)  # a fault paces bodies
        # The lean path (:meth:`_proxy_plain`) for the fast path's bodyless requests when nothing
        # configured needs the general objects: plain filters only, no ``local_reply_config``.
        self.lean_ok = self.plain_ok and not self.local_reply
        # Host value -> (virtual host, the route every origin-form path takes there, if one does)
        self._routes: dict[bytes, tuple[VirtualHost | None, Route | None]] = {}

    # --- connections ---

    async def serve_connection(self, stream: trio.abc.Stream, remote: str, scheme: str) -> None:
        """Serve one client connection until it closes, idles out, or the proxy drains.

        HTTP/2 when TLS negotiated ``h2``, when ``codec_type`` is HTTP2, or (AUTO) when the client
        opens with HTTP/2's preface (h2c prior knowledge); HTTP/1.1 otherwise."""
        ds = _Downstream(stream, remote, scheme)
        self.stats.inc("downstream_cx_total")
        self.stats.gauge_add("downstream_cx_active", 1)
        try:
            codec = self.config.codec_type
            if isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() == "h2":
                codec = "HTTP2"
            if codec != "HTTP1":
                initial = await self._sniff(ds, codec == "HTTP2")
                if initial is None:
                    return  # closed, idle or drained before a byte
                if initial:
                    await self._serve_h2(ds, initial)
                    return
            self.stats.inc("downstream_cx_http1_total")
            while True:
                keep_going = await self._serve_one(ds)
                if ds.plain:  # the fast path's request: h11 stayed idle
                    if not keep_going:
                        break
                    continue
                if not keep_going or ds.h11.our_state is not h11.DONE or ds.h11.their_state is not h11.DONE:
                    if keep_going and ds.h11.our_state is h11.DONE and ds.h11.their_state is h11.SEND_BODY:
                        # Answered (a local reply) before the request's body was read: closing now,
                        # with that body unread, would reset the connection and could destroy the
                        # answer in the client's receive buffer.
                        await _linger(ds)
                    break
                ds.h11.start_next_cycle()
        except _NETWORK_ERRORS:
            pass
        finally:
            self.stats.gauge_add("downstream_cx_active", -1)
            self.stats.inc("downstream_cx_rx_bytes_total", ds.bytes_received)
            self.stats.inc("downstream_cx_tx_bytes_total", ds.bytes_sent)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _sniff(self, ds: _Downstream, h2_only: bool) -> bytes | None:
        """The connection's first bytes if they are HTTP/2's preface (or ``h2_only``); b"" for
        HTTP/1.1, what was read given to h11 (the first request's idle wait, read here); None when
        nothing came (closed, idle timeout, drain)."""
        buf = b""
        deadline = trio.current_time() + (self.config.idle_timeout or float("inf"))
        while len(buf) < len(PREFACE) and PREFACE.startswith(buf) and not self.state.shutting_down:
            with trio.move_on_at(deadline) as wait:
                self.state.idle_waits.add(wait)
                try:
                    data = await ds.receive()
                finally:
                    self.state.idle_waits.discard(wait)
            if wait.cancelled_caught or not data:
                if wait.cancelled_caught and not buf and not self.state.shutting_down:
                    self.stats.inc("downstream_cx_idle_timeout")
                break
            ds.bytes_received += len(data)
            buf += data
        if not buf:
            return None
        if h2_only or buf.startswith(PREFACE):
            return buf
        ds.initial = buf  # parsed by the first request's _serve_one
        return b""

    async def _serve_h2(self, ds: _Downstream, initial: bytes) -> None:
        self.stats.inc("downstream_cx_http2_total")
        conn = H2Downstream(ds.stream, self, self.config.http2, self.state, self.config.idle_timeout)
        try:
            await conn.serve(ds.remote, ds.scheme, initial)
        finally:
            ds.bytes_received += conn.bytes_received
            ds.bytes_sent += conn.bytes_sent
            if conn.goaway_sent and self.state.draining:
                self.stats.inc("downstream_cx_drain_close")

    def protocol_error(self) -> None:
        self.stats.inc("downstream_cx_protocol_error")

    def idle_timed_out(self) -> None:
        self.stats.inc("downstream_cx_idle_timeout")

    async def serve_stream(self, stream: StreamBridge, remote: str, scheme: str) -> None:
        """One HTTP/2 stream: its request served as any other (:mod:`.h2_downstream`)."""
        ds = _Downstream(stream, remote, scheme)
        ds.protocol = "HTTP/2"
        ds.send_whole = stream.send_whole_now
        if not self.state.shutting_down:  # (else _serve_one declines the request, as before)
            ds.initial = stream.take_request()  # a whole bodyless request: read with no wait
            ds.bytes_received = len(ds.initial)
        # the fast path's request parsers of the connection's streams, reused: each held by one
        # stream at a time, and given back only after a whole request's parse (ds.plain: the
        # parser at a message's boundary, as a keep-alive connection reuses its own)
        parsers = stream.conn.parsers
        if parsers:
            ds.parser = parsers.pop()
        try:
            await self._serve_one(ds)
        except _NETWORK_ERRORS:
            pass
        finally:
            if ds.plain and ds.parser is not None and len(parsers) < H2_PARSERS:
                parsers.append(ds.parser)
            if stream.reset_by_client and not stream.response_ended:
                self.stats.inc("downstream_rq_rx_reset")
            if not stream.ended_whole:  # (else nothing to close: no shielded scope for it)
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _serve_one(self, ds: _Downstream) -> bool:
        """One request on ``ds``; False when the connection must close afterwards."""
        # Between requests only the connection's idle timeout applies; once the request's first
        # bytes arrive, its request and stream-idle timers do.
        # After a fast-path request h11 is as that request found it: idle, nothing buffered (the
        # fast path takes a request only then), so it need not be asked (``trailing_data`` copies
        # h11's buffer).
        was_plain = ds.plain
        ds.plain = False
        data: bytes | bytearray | None = ds.initial
        if data:
            ds.initial = b""
        elif was_plain or (not ds.h11.trailing_data[0] and ds.h11.their_state is h11.IDLE):
            if self.state.shutting_down:
                return False
            # The next request is often there already (a keep-alive client sends it as soon as it
            # has the response): then no wait, and no cancel scope for one.
            data = None
            if ds.raw is not None:
                data = ds.io.receive_now(ds.raw, RECEIVE_SIZE)
            if data is not None:
                ds.bytes_received += len(data)
                if not data:
                    return False
        if data is None and ds.raw is not None:
            # Found empty just now: the wait first, its idle deadline kept by the io module's
            # timer (no cancel scope); a drain ends it (_Downstream.cancel) as it cancels the scopes.
            idle = self.config.idle_timeout
            self.state.idle_waits.add(ds)
            deadline = ds.now() + idle if idle else _INF
            wait_readable = ds.io.wait_readable
            try:
                # receive_until's loop, with its wait straight on _kernel_io's reader (one
                # coroutine level fewer to resume), or on the stack socket's waiter
                while True:
                    if not await wait_readable(ds.raw, deadline):
                        break
                    data = receive_now(ds.raw, RECEIVE_SIZE)
                    if data is not None:  # (None: a stale ready mark; the edge is waited for)
                        break
            finally:
                self.state.idle_waits.discard(ds)
            if data is None:
                if not self.state.shutting_down:
                    self.stats.inc("downstream_cx_idle_timeout")
                return False
            ds.bytes_received += len(data)
            if not data:
                return False
        elif data is None:
            idle_deadline = trio.current_time() + (self.config.idle_timeout or float("inf"))
            with trio.move_on_at(idle_deadline) as wait:
                self.state.idle_waits.add(wait)  # a drain cancels it: idle connections close at once
                try:
                    data = await ds.receive()
                finally:
                    self.state.idle_waits.discard(wait)
                ds.bytes_received += len(data)
                if not data:
                    return False
            if wait.cancelled_caught:
                if not self.state.shutting_down:
                    self.stats.inc("downstream_cx_idle_timeout")
                return False
        request: h11.Request | PlainRequest | None = None
        if data:
            # the predicted case (:mod:`._http1`); an HTTP/2 stream's too: its bridge writes the
            # request as h11 would, and parses the response the fast path writes as h11 would
            if self.plain_ok:
                parser = ds.parser or RequestParser()
                request = parser.parse(data)
                ds.parser = parser if request is not None else None  # after None: state unknown
            if request is None:
                ds.h11.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too
            else:
                ds.plain = True
        ds.response_started = False
        started = ds.now()
        # the lean path (_proxy_plain) needs no _Timing: made when the general path takes the request
        lean = (
            self.lean_ok
            and isinstance(request, PlainRequest)
            and not request.body
            and data is not None
            and len(data) <= _LEAN_MAX_READ
        )
        timing = None if lean else _Timing(self.config, started)
        # the wall clock only for those who read it (the access log's start time, a local reply's
        # format); the record itself is the request's notes (status, flags), kept either way
        record = AccessRecord(time.time() if self._wall_clock else 0.0)
        try:
            if request is None:
                assert timing is not None
                try:
                    event = await ds.next_event(timing.downstream_deadline())
                except h11.RemoteProtocolError as exc:
                    self.stats.inc("downstream_cx_protocol_error")
                    hint = exc.error_status_hint
                    status = hint if hint in (400, 413, 414, 431, 501) else 400
                    raise _LocalReply(
                        status, _PROTOCOL_ERROR_BODY.get(status, "bad request"), "DPE", close=True
                    ) from None
                if event is None:
                    if ds.bytes_received:  # a partial request timed out
                        self.stats.inc("downstream_rq_timeout")
                        raise _LocalReply(408, "request timeout", "DT", close=True)
                    return False
                if isinstance(event, h11.ConnectionClosed):
                    return False
                assert isinstance(event, h11.Request)
                request = event
            self._rq_total.value += 1
            self._rq_active.value += 1
            try:
                if lean:
                    assert isinstance(request, PlainRequest)
                    keep = await self._proxy_plain(ds, request, record, started)
                    if keep is not None:
                        return keep
                    timing = _Timing(self.config, started)  # not the lean path's case after all
                assert timing is not None
                return await self._proxy_request(ds, request, timing, record)
            finally:
                self._rq_active.value -= 1
        except _LocalReply as reply:
            record.response_flags = reply.flags
            if reply.status == 413:
                self.stats.inc("downstream_rq_too_large")
            if reply.status == 408 and reply.flags in ("SI", "RT"):
                self.stats.inc(
                    "downstream_rq_idle_timeout" if reply.flags == "SI" else "downstream_rq_timeout"
                )
            if ds.response_started:
                return False  # too late to answer: the client sees the connection close
            await self._local_reply(ds, reply.status, reply.body, close=reply.close, record=record)
            if reply.close:
                await _linger(ds)
            return not reply.close
        except _DownstreamGone as gone:
            record.response_flags = gone.flags
            self.stats.inc("downstream_rq_rx_reset")
            if gone.flags in ("SI", "RT") and not ds.response_started:
                self.stats.inc(
                    "downstream_rq_idle_timeout" if gone.flags == "SI" else "downstream_rq_timeout"
                )
                with trio.move_on_after(1.0):  # best effort: the client may be gone
                    await self._local_reply(ds, 408, "request timeout", close=True, record=record)
            return False
        finally:
            if self._wall_clock and (record.response_code or record.method):
                record.duration_ms = int((ds.now() - started) * 1000)
                self.access_log.log(record)

    async def _local_reply(
        self, ds: _Downstream, status: int, body: str, *, close: bool, record: AccessRecord,
        headers: list[tuple[bytes, bytes]] | None = None, grpc_status: int | None = None,
        exact: bool = False,
    ) -> None:  # fmt: skip
        """An answer made here (Envoy's "local reply"), counted like any response, rewritten by
        ``local_reply_config`` when there is one; to a gRPC request, gRPC's trailers-only answer
        (:func:`.local_reply.grpc_reply_headers`; ``grpc_status``: a filter's own status for it).
        ``exact``: ``body`` is a service's (ext_authz's denial), sent as it is unless a mapper or a
        format changes it, and its ``content-type`` in ``headers`` kept unless the body changed
        (Envoy's ``Utility::sendLocalReply``)."""
        grpc = record.request_headers is not None and is_grpc_request(record.request_headers)
        if exact and headers:  # the service's framing: this reply is framed here
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        if self.local_reply:
            ctx = LocalReplyContext(
                status, body, record.response_flags, record.protocol or "-", record.start_time,
                ds.request_headers, record.method or "", record.path or "", record.authority or "",
            )  # fmt: skip
            config = self.config
            status, payload, content_type, added = rewrite(
                config.local_reply_mappers, config.local_reply_format, ctx, newline=not exact
            )
            headers = [*(headers or ()), *added]
            typed: str | None = content_type
            if exact and any(k.lower() == b"content-type" for k, _ in headers):
                if payload == body.encode("utf-8", "replace"):
                    typed = None  # the service's content type stays: its body is unchanged
                else:  # changed: the content type is the format's (Envoy keeps one a mapper added)
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            if grpc:
                message = payload.decode("utf-8", "replace")
                if payload == (ctx.body + "\n").encode() or content_type == "application/json":
                    message = message[:-1] if message.endswith("\n") else message  # (our newline, JSON's)
                await self._grpc_reply(ds, status, message, close, record, headers, grpc_status)
                return
            await self._reply(
                ds, status, payload, close=close, record=record, headers=headers, content_type=typed
            )
            return
        if grpc:
            await self._grpc_reply(ds, status, body, close, record, headers or [], grpc_status)
            return
        payload = (body + "\n").encode() if body else b""
        await self._reply(ds, status, payload, close=close, record=record, headers=headers)

    async def _grpc_reply(
        self, ds: _Downstream, status: int, message: str, close: bool, record: AccessRecord,
        headers: list[tuple[bytes, bytes]], grpc_status: int | None,
    ) -> None:  # fmt: skip
        """A local reply to a gRPC request: HTTP 200 and the status in its head, no body."""
        head = grpc_reply_headers(status, message, headers, grpc_status, record.method == "HEAD")
        await self._reply(ds, 200, b"", close=close, record=record, headers=head)

    async def _reply(
        self, ds: _Downstream, status: int, payload: bytes, *, close: bool, record: AccessRecord,
        headers: Sequence[tuple[bytes, bytes]] | None = None, content_type: str | None = "text/plain",
    ) -> None:  # fmt: skip
        """A response made here (a local reply, or a ``direct_response`` with its body exactly),
        in one write; ``headers``: what the HTTP filters add (``content_type`` None: one of them
        is the content type)."""
        if not ds.plain and ds.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # (their_state ERROR is fine: h11 lets a server answer a request it refused)
        head_headers = [(b"content-length", str(len(payload)).encode())]
        if payload and content_type is not None:
            head_headers.append((b"content-type", content_type.encode("latin-1")))
        if headers:
            head_headers.extend(headers)
        headers = head_headers
        if close or self.state.draining:
            headers.append((b"connection", b"close"))
        self._count_response(status)
        record.response_code = status
        ds.response_started = True
        if ds.plain:  # the bytes h11 would write (:mod:`._http1`)
            if record.encoders:  # (response headers only here: the fast path's filters change no body)
                headers, payload, _ = _encode_whole(record, status, headers, payload)
            head = response_head_bytes(status, _reason(status), headers, chunked=False)
            await ds.send_pending([head, payload])
            record.bytes_sent += len(payload)
            return
        await self._send_whole(ds, status, headers, payload, record)

    async def _send_whole(
        self, ds: _Downstream, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
        record: AccessRecord,
    ) -> None:  # fmt: skip
        """A whole response made here, through the HTTP filters' encoders if the request has any
        (:func:`_encode_whole`), in one write."""
        trailers: list[tuple[bytes, bytes]] = []
        if record.encoders:
            headers, body, trailers = _encode_whole(record, status, headers, body)
        head = h11.Response(status_code=status, headers=headers, reason=_reason(status))
        pending = [ds.h11.send(head)]
        if body and record.method != "HEAD":
            pending.append(ds.h11.send(h11.Data(data=body)))
        eom = _EOM
        if trailers and _trailers_fit(ds, record.method, status, head.headers):
            eom = h11.EndOfMessage(headers=trailers)
        pending.append(ds.h11.send(eom))
        await ds.send_pending(pending)
        record.bytes_sent += len(body) if record.method != "HEAD" else 0

    async def _serve_cached(
        self, ds: _Downstream, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
        extra: Sequence[tuple[bytes, bytes]], record: AccessRecord,
    ) -> None:  # fmt: skip
        """A cache filter hit (or a filter's own answer: Lua's ``respond()``, ext_authz's denial):
        the stored response (with its ``Age``), through the encoders of the filters before the one
        that answered, in one write."""
        head = [*headers, *extra, (b"content-length", str(len(body)).encode())]
        if self.state.draining:
            head.append((b"connection", b"close"))
        self._count_response(status)
        record.response_code = status
        ds.response_started = True
        await self._send_whole(ds, status, head, body, record)

    def _count_response(self, status: int) -> None:
        for cell in self.status_cells(status):
            cell.value += 1

    def status_cells(self, status: int) -> tuple[Cell, ...]:
        """The counters a response with ``status`` moves (``downstream_rq_2xx``,
        ``downstream_rq_completed``), bound the first time it comes (listed from then on, as
        :meth:`.Scope.count` would list them; at most 900: llhttp's statuses are three digits)."""
        cells = self.rq_by_status.get(status)
        if cells is None:
            stats = self.stats
            cells = self.rq_by_status[status] = (
                stats.cell(f"downstream_rq_{status // 100}xx"),
                stats.cell("downstream_rq_completed"),
            )
        return cells

    # --- one request ---

    async def _proxy_plain(
        self, ds: _Downstream, request: PlainRequest, record: AccessRecord, started: float
    ) -> bool | None:
        """The predicted request in one function (FreeBSD's header prediction, carried to the end):
        a bodyless request of the fast path (:mod:`._http1`, its head under :data:`_LEAN_MAX_READ`),
        on a connection manager with only the fast path's plain HTTP filters (cors, fault,
        local_ratelimit) and no ``local_reply_config``, routed to a
        cluster by a route without retries, mirrors or header options.  The same answers, timers,
        stats and access-log lines as :meth:`_proxy_request` with :class:`_RouterRequest` and
        :class:`_UpstreamRequest` (``tests/test_proxy_http1.py`` compares the two), without their
        objects: the route kept per ``Host`` value where the config makes it path-independent
        (:func:`.router.any_path_route`), the upstream head made in one pass and joined once
        (:func:`_lean_head`), counters bound once as cells (per status when it first comes), the
        access record filled only when an access log is configured, and on a pooled connection
        the upstream's wait in this function, its deadline kept by the io module's timer (no
        cancel scope, no coroutine level of its own to resume).

        None, before anything is sent or counted, when the request is not this case: the general
        path takes it.  The proxy's own answers (503, 502, 504 ...) are raised as there.
        ``started``: when the request was taken (:meth:`_serve_one`'s clock read), the start of
        its route and stream-idle timers unless a filter awaited something since."""
        cache = self._routes
        entry = cache.get(request.host)
        if entry is None:
            vhost = self.router.virtual_host(request.host.decode("latin-1"))
            entry = (vhost, any_path_route(vhost) if vhost is not None else None)
            if len(cache) >= _ROUTE_CACHE_SIZE:
                cache.clear()  # bounded: many Host values (a scan) cost a lookup each, as before
            cache[request.host] = entry
        vhost, route = entry
        if vhost is None:
            return None  # 404: the general path answers
        if route is None:
            route = self.router.route(vhost, request.target.decode("latin-1"), request.headers)
            if route is None:
                return None
        action = route.action
        if (
            type(action) is not RouteAction
            or action.retry_policy is not None
            or action.request_mirror_policies
            or route.request_headers_to_add
            or route.request_headers_to_remove
        ):
            return None
        logged = self._logged
        if logged:
            record.method = request.method.decode("latin-1")
            record.path = request.target.decode("latin-1")
            record.authority = request.host.decode("latin-1") or None
            record.protocol = ds.protocol or "HTTP/1.1"
            record.user_agent = _text(get_header(request.headers, b"user-agent"))
        flags: Sequence[str] = ()
        response_headers: Sequence[tuple[bytes, bytes]] = ()
        filtered: FilterOutcome | None = None
        if self.filters is not None:
            # The plain filters (cors, fault, local_ratelimit: see plain_ok) decide from the head,
            # as in _proxy_request: a local answer, a delay, response headers; never a cached
            # response or a request-body decoder (those filters keep the general path).
            view = RequestView(
                request.method.decode("latin-1"), request.target.decode("latin-1"), request.headers, vhost,
                route, ds.filter_state, ds,
            )  # fmt: skip
            outcome = await self.filters.decode(view, trio.current_time)
            flags = outcome.flags
            if outcome.status is not None:
                _reply_encoders(record, outcome)
                record.response_flags = ",".join(flags) or "-"
                await self._local_reply(
                    ds,
                    outcome.status,
                    outcome.body,
                    close=False,
                    record=record,
                    headers=outcome.reply_headers,
                )
                return True
            response_headers = outcome.response_headers
            filtered = outcome
        # The request to the route's cluster and the response relayed, in this function (not a
        # coroutine of its own: each level is a frame resumed on every wake-up of the request).
        try:
            cluster = _pick_cluster(self, action)
            head, xff, request_id = _lean_head(request, route, action, ds, self.request_ids)
            if logged:
                record.x_forwarded_for = xff.decode("latin-1")
                record.request_id = request_id.decode("latin-1")
            # nothing awaited since the request was taken, unless a filter ran: the same moment,
            # without a clock read of its own
            now = started if filtered is None else ds.now()
            route_deadline = now + action.timeout if action.timeout else _INF
            stream_idle = self.config.stream_idle_timeout or _INF
            try:
                cluster.start_request()
            except Overflow:
                raise _LocalReply(503, _OVERFLOW_BODY, "UO") from None
            try:
                host = cluster.choose_host()
                if host is None:
                    cluster.stats.inc("upstream_cx_none_healthy")
                    raise _LocalReply(503, "no healthy upstream", "UH")
                if logged:
                    record.upstream_host = str(host)
                attempt_started = now  # (nothing awaited since: the same moment, to the microsecond)
                host.active_requests += 1
                cluster.rq_total.value += 1
                conn: UpstreamConnection | None = None
                response: PlainResponse | None = None
                failure: str | None = None
                try:
                    # The route timer and stream-idle for the whole wait (as _UpstreamRequest)
                    deadline = min(route_deadline, attempt_started + stream_idle)
                    # The common case: a pooled kernel or stack connection ready now, the request
                    # sent at once, and the response's wait the only one, its deadline kept by the
                    # io module's timer (no cancel scope), in line.  Else, or to retry on a
                    # fresh connection, the general way.
                    fresh = False
                    conn = cluster.idle_connection(host)
                    if conn is not None:
                        raw = conn.raw
                        assert raw is not None  # (idle_connection's are over a kernel or stack socket)
                        try:
                            reader = _plain_start(conn)
                            sent = send_now(raw, head)
                            if sent < len(head):  # the socket buffer is full: the rest as it drains
                                timely = await _send_rest_until(conn, head[sent:], deadline)
                            else:
                                timely = True
                            # The answer cannot be there yet: the wait first (on _kernel_io's
                            # reader or the stack socket's waiter), then the reads; a read may
                            # leave more behind (edge-triggered: no new edge for it), read first.
                            wait_readable = conn.io.wait_readable
                            while timely and response is None:
                                if not await wait_readable(raw, deadline):
                                    break
                                received = receive_now(raw, RECEIVE_SIZE)
                                while received is not None:
                                    conn.received += len(received)
                                    if not received:
                                        raise trio.BrokenResourceError("upstream closed before a response")
                                    reader.feed(received)
                                    response = reader.head
                                    if response is not None:
                                        break
                                    received = receive_now(raw, RECEIVE_SIZE)
                        except (*_NETWORK_ERRORS, h11.ProtocolError):
                            if not (conn.requests > 1 and conn.received == conn.received_before):
                                failure = "reset"
                            else:  # the pooled connection was closed under us: once more on a fresh one
                                cluster.stats.inc("upstream_cx_destroy_remote_with_active_rq")
                                await conn.aclose()
                                conn, fresh = None, True
                        else:
                            if response is None:
                                failure = "timeout" if trio.current_time() >= route_deadline else "idle"
                    if conn is None:
                        with trio.CancelScope(deadline=deadline) as scope:
                            try:
                                conn = await cluster.acquire(host, fresh=fresh)
                                try:
                                    response = await _send_plain(conn, head)
                                except (*_NETWORK_ERRORS, h11.ProtocolError):
                                    if not (conn.requests > 1 and conn.received == conn.received_before):
                                        raise
                                    # The pooled connection was closed under us: once more on a fresh one.
                                    cluster.stats.inc("upstream_cx_destroy_remote_with_active_rq")
                                    await conn.aclose()
                                    conn = await cluster.acquire(host, fresh=True)
                                    response = await _send_plain(conn, head)
                            except Overflow:
                                raise _LocalReply(503, _OVERFLOW_BODY, "UO") from None
                            except ConnectFailure:
                                failure = "connect"
                            except (*_NETWORK_ERRORS, h11.ProtocolError):
                                failure = "reset"
                        if scope.cancelled_caught and response is None and failure is None:
                            failure = "timeout" if trio.current_time() >= route_deadline else "idle"
                    if failure is not None:
                        cluster.record_outcome(host, None)
                        if conn is not None:
                            await conn.aclose()
                    else:
                        assert response is not None
                        cluster.record_outcome(host, response.status_code)
                except trio.Cancelled:
                    if conn is not None:
                        await conn.aclose()  # shielded
                    raise
                finally:
                    host.active_requests -= 1
                if failure is not None:
                    if failure in ("timeout", "per_try_timeout"):
                        cluster.stats.inc("upstream_rq_timeout")
                    elif failure == "reset":
                        cluster.stats.inc("upstream_rq_rx_reset")
                    raise _failure_reply(failure, 0)
                assert conn is not None and response is not None
                # _relay_plain's steps called here: a response written whole at once (the common
                # case) costs no coroutine of its own
                relayed = conn.reader
                assert relayed is not None
                try:
                    try:
                        answered = ds.now()  # the service time's end, and the pool's idle_since
                        pending, chunked, close = _relay_start(
                            self, ds, cluster, relayed, response, record, attempt_started, answered,
                            response_headers,
                        )  # fmt: skip
                    except (*_NETWORK_ERRORS, h11.ProtocolError):
                        return await _relay_broken(record, conn)
                    if not pending and relayed.done and record.response_flags == "-":
                        cluster.release(conn, answered)  # (_relay_done's lines)
                        if close:
                            self.stats.inc("downstream_cx_drain_close")
                        return not close
                    return await _relay_rest(
                        self, ds, cluster, conn, relayed, record, pending, chunked, close, route_deadline,
                        stream_idle,
                    )  # fmt: skip
                except trio.Cancelled:
                    await conn.aclose()  # shielded
                    raise
            finally:
                cluster.end_request()
        except _LocalReply:
            # the router's own answer (502, 503, 504) passes the filters' response side, as on the
            # general path (CORS's headers); set up here, so a relayed response costs nothing more
            if filtered is not None:
                _reply_encoders(record, filtered)
            raise
        finally:
            if flags:  # a delay injected: listed before the router's own flags, if any
                router_flags = record.response_flags
                record.response_flags = ",".join(flags) + ("" if router_flags == "-" else f",{router_flags}")

    async def _proxy_request(
        self, ds: _Downstream, request: h11.Request | PlainRequest, timing: _Timing, record: AccessRecord
    ) -> bool:
        headers = list(request.headers)  # once: iterating h11's Headers is slow
        if _head_size(request, headers) > MAX_REQUEST_HEADERS:
            # h11 bounds a head only while it is incomplete; one that completes within a read
            # can be larger, so the bound is checked on the parsed head too.
            raise _LocalReply(431, _PROTOCOL_ERROR_BODY[431], "DPE", close=True)
        if request.target[:1] != b"/" and request.target != b"*" and isinstance(request, h11.Request):
            request = _origin_form(request)  # RFC 9112 3.2.2: absolute-form; its host is the authority
            headers = list(request.headers)
        if self.local_reply:
            ds.request_headers = headers
        record.request_headers = headers  # (read by a local reply: is the request gRPC?)
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        authority = (get_header(headers, b"host") or b"").decode("latin-1")
        record.method, record.path, record.authority = method, target, authority or None
        record.protocol = ds.protocol or f"HTTP/{request.http_version.decode()}"
        record.user_agent = _text(get_header(headers, b"user-agent"))

        if not isinstance(request, PlainRequest) or request.body:  # (no Transfer-Encoding on the fast path)
            if (
                get_header(headers, b"transfer-encoding") is not None
                and get_header(headers, b"content-length") is not None
            ):
                self.stats.inc("downstream_cx_protocol_error")
                refused = "both content-length and transfer-encoding: refused"
                raise _LocalReply(400, refused, "DPE", close=True)
            length = get_header(headers, b"content-length")
            if length is not None and int(length) > self.limits.max_request_body:
                raise _LocalReply(413, "payload too large", "-", close=True)

        vhost = self.router.virtual_host(authority)
        route = self.router.route(vhost, target, headers) if vhost is not None else None
        extra: Sequence[tuple[bytes, bytes]] = ()  # no allocation when there are no filters
        flags: Sequence[str] = ()
        outcome = None
        filter_body = None
        if self.filters is not None:
            if self.filters.reads_body:  # lua's body(), ext_authz's with_request_body: read here, kept
                plain_body = request.body if isinstance(request, PlainRequest) else b""
                filter_body = _RequestBody(
                    ds, headers, self.limits, timing, plain_body, self.config.enable_trailers
                )
            view = RequestView(
                method, target, headers, vhost, route, ds.filter_state, ds, filter_body, self._route_again
            )
            outcome = await self.filters.decode(view, trio.current_time)
            _reply_encoders(record, outcome)
            vhost, route = view.vhost, view.route  # a filter may have asked for the route again
            flags, extra = outcome.flags, outcome.response_headers
            if outcome.status is not None:
                record.response_flags = ",".join(flags) or "-"
                await self._drain_request_body(ds, timing)
                await self._local_reply(
                    ds,
                    outcome.status,
                    outcome.body,
                    close=False,
                    record=record,
                    headers=outcome.reply_headers,
                    grpc_status=outcome.grpc_status,
                )
                return True
            if outcome.cached is not None:  # a cache hit, or a filter's own answer (ext_authz, lua)
                record.response_flags = ",".join(flags) or "-"
                await self._drain_request_body(ds, timing)
                if outcome.cached_is_local_reply and (self.local_reply or is_grpc_request(headers)):
                    # ext_authz's denial: a local reply in Envoy (sendLocalReply), so mapped by
                    # local_reply_config and gRPC-formatted for gRPC; its body kept exactly
                    status, head, denial = outcome.cached
                    await self._local_reply(
                        ds, status, denial.decode("utf-8", "replace"), close=False, record=record,
                        headers=[*head, *extra], exact=True,
                    )  # fmt: skip
                    return True
                await self._serve_cached(ds, *outcome.cached, extra, record)
                return True
        try:
            if route is None:
                self.stats.inc("no_route")
                raise _LocalReply(404, "", "NR")
            if isinstance(route.action, DirectResponse):
                self.stats.inc("rq_direct_response")
                body = route.action.body or ""
                await self._drain_request_body(ds, timing)
                if self.local_reply or is_grpc_request(headers):
                    # Envoy's router sends it with sendLocalReply: rewritten by local_reply_config
                    # (its body %LOCAL_REPLY_BODY%, exactly) and gRPC-formatted for gRPC
                    await self._local_reply(
                        ds, route.action.status, body, close=False, record=record, headers=list(extra),
                        exact=True,
                    )  # fmt: skip
                    return True
                await self._reply(
                    ds, route.action.status, body.encode(), close=False, record=record, headers=extra
                )
                return True
            return await self._route_to_cluster(
                ds, request, headers, route, route.action, timing, record, extra, outcome, filter_body
            )
        finally:
            if flags:  # a delay injected: listed before the router's own flags, if any
                router_flags = record.response_flags
                record.response_flags = ",".join(flags) + ("" if router_flags == "-" else f",{router_flags}")

    def _route_again(self, view: RequestView) -> None:
        """The virtual host and route chosen again from the request's headers, which a filter
        changed (Envoy's ``clearRouteCache``: Lua's default, ``clear_route_cache`` elsewhere)."""
        authority = (get_header(view.headers, b"host") or b"").decode("latin-1")
        view.vhost = self.router.virtual_host(authority)
        view.route = (
            self.router.route(view.vhost, view.path, view.headers) if view.vhost is not None else None
        )

    async def _drain_request_body(self, ds: _Downstream, timing: _Timing) -> None:
        """Read (and drop) a request body we answer without an upstream, so the connection can be
        reused; bounded by the body limit and the request timers."""
        total = 0
        while ds.h11.their_state is h11.SEND_BODY:
            if ds.h11.they_are_waiting_for_100_continue:
                return  # never told to send it: h11 closes the connection after our response
            event = await ds.next_event(timing.downstream_deadline())
            if event is None:
                raise _DownstreamGone(timing.timeout_flag())
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > self.limits.max_request_body:
                    raise _LocalReply(413, "payload too large", "-", close=True)

    async def _route_to_cluster(
        self, ds: _Downstream, request: h11.Request | PlainRequest, headers: list[tuple[bytes, bytes]],
        route: Route, action: RouteAction, timing: _Timing, record: AccessRecord,
        response_headers: Sequence[tuple[bytes, bytes]], outcome: FilterOutcome | None,
        body: _RequestBody | None = None,
    ) -> bool:  # fmt: skip
        """Hand the request to the router (:class:`_RouterRequest`) within the cluster's
        ``max_requests``; True keeps the client connection.  ``body``: the request body as the
        filters read it (its kept part is uploaded first)."""
        rq = _RouterRequest(self, ds, request, headers, route, action, timing, record, body)
        rq.response_headers = response_headers
        rq.filters = outcome
        if outcome is not None and outcome.request_decoder is not None:
            rq.body.decoder = outcome.request_decoder  # a filter's hook (gRPC-Web text)
        cluster = rq.cluster
        timing.route_timeout = action.timeout
        if rq.body.complete:
            timing.request_complete()
        try:
            cluster.start_request()
        except Overflow:
            raise _LocalReply(503, _OVERFLOW_BODY, "UO") from None
        try:
            return await rq.run()
        finally:
            record.bytes_received = rq.body.total
            cluster.end_request()
            if action.request_mirror_policies:
                self._mirror(rq, action)

    def _mirror(self, rq: _RouterRequest, action: RouteAction) -> None:
        """``request_mirror_policies``: the request (head as the router sent it, ``Host`` with
        Envoy's ``-shadow`` suffix, and its body) to each mirror cluster its fraction picks, fire and
        forget.  Sent once the request is done (Envoy sends it alongside), and only when the body
        was kept whole (up to :data:`RETRY_BUFFER`); otherwise counted ``shadow_skipped``."""
        nursery = self.state.background
        for name, fraction in action.request_mirror_policies:
            if fraction is not None and not sample(fraction, self.runtime, self.rng):
                continue
            body = rq.body
            if nursery is None or not (body.complete and body.replayable) or self._shadows >= MAX_SHADOWS:
                self.stats.inc("shadow_skipped")
                continue
            headers = [
                (k, v + b"-shadow" if k == b"host" else v)
                for k, v in rq.upstream_headers  # Envoy's suffix
            ]
            head = h11.Request(method=rq.method, target=rq.target, headers=headers)
            self._shadows += 1
            nursery.start_soon(self._shadow, self.clusters[name], head, b"".join(body.kept), action.timeout)

    async def _shadow(self, cluster: ClusterRuntime, head: h11.Request, body: bytes, timeout: float) -> None:
        """One mirrored request; its response is read and dropped, its failures only counted."""
        conn: UpstreamConnection | None = None
        try:
            with trio.move_on_after(timeout or 15.0):
                host = cluster.choose_host()
                if host is None:
                    return
                cluster.start_request()
                try:
                    conn = await cluster.acquire(host)
                    framing = (b"content-length", b"transfer-encoding")
                    headers = [(k, v) for k, v in head.headers if k not in framing]
                    headers.append((b"content-length", str(len(body)).encode()))
                    await conn.send(h11.Request(method=head.method, target=head.target, headers=headers))
                    if body:
                        await conn.send(h11.Data(data=body))
                    await conn.send(_EOM)
                    while not isinstance(await conn.next_event(), (h11.EndOfMessage, h11.ConnectionClosed)):
                        pass
                    self.stats.inc("shadow_sent")
                    if conn.reusable:
                        cluster.release(conn)
                        conn = None
                finally:
                    cluster.end_request()
        except (*_NETWORK_ERRORS, h11.ProtocolError, ConnectFailure, Overflow):
            self.stats.inc("shadow_failed")
        finally:
            self._shadows -= 1
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await conn.aclose()

    def flush_logs(self) -> None:
        self.access_log.flush()


class _RouterRequest:
    """The router's state for one request to a cluster (Envoy's router filter, one per request):
    what every attempt shares (the client's connection, the cluster, the upstream head, the body,
    the timers, the access-log record) and the retry budget.  :meth:`run` makes the attempts, one
    :class:`_UpstreamRequest` each."""

    __slots__ = (
        "body",
        "cluster",
        "ds",
        "filters",
        "hcm",
        "head",
        "head_bytes",
        "method",
        "policy",
        "record",
        "response_headers",
        "retries_left",
        "retry_count",
        "target",
        "timing",
        "upstream_headers",
    )

    def __init__(
        self, hcm: HttpConnectionManagerRuntime, ds: _Downstream, request: h11.Request | PlainRequest,
        headers: list[tuple[bytes, bytes]], route: Route, action: RouteAction, timing: _Timing,
        record: AccessRecord, body: _RequestBody | None = None,
    ) -> None:  # fmt: skip
        self.hcm = hcm
        self.ds = ds
        self.timing = timing
        self.record = record
        self.cluster = _pick_cluster(hcm, action)
        if body is None:
            plain_body = request.body if isinstance(request, PlainRequest) else b""
            body = _RequestBody(ds, headers, hcm.limits, timing, plain_body, hcm.config.enable_trailers)
        elif not ds.plain:  # read by the filters, which may have changed its framing (gRPC-Web text)
            body.framing = "chunked" if get_header(headers, b"transfer-encoding") else "length"
        self.body = body
        self.method = request.method
        self.target = b""
        self.upstream_headers: list[tuple[bytes, bytes]] = []
        # The head as h11's event (the general path), or as bytes with the whole body (the fast path)
        self.head: h11.Request | None = None
        self.head_bytes: bytes | None = None
        self._upstream_head(request, headers, route, action)
        self.policy: RetryPolicy | None = action.retry_policy
        self.retries_left = self.policy.num_retries if self.policy is not None else 0
        self.retry_count = 0
        self.response_headers: Sequence[tuple[bytes, bytes]] = ()  # the HTTP filters' (CORS)
        self.filters: FilterOutcome | None = None  # what the HTTP filters decided (the compressor)

    def _upstream_head(
        self, request: h11.Request | PlainRequest, headers: list[tuple[bytes, bytes]], route: Route,
        action: RouteAction,
    ) -> None:  # fmt: skip
        """The request head the upstream gets (see the module docstring's **Headers**) in ``target``
        and ``upstream_headers``, and as ``head`` or ``head_bytes``; fills in the access-log
        record's ``x_forwarded_for`` and ``request_id``."""
        if self.ds.plain and not (route.request_headers_to_add or route.request_headers_to_remove):
            self._plain_upstream_head(request, headers, route, action)
            return
        upgrade_value = get_header(headers, b"upgrade")
        connection_tokens = (get_header(headers, b"connection") or b"").lower()
        upgrade = upgrade_value is not None and b"upgrade" in connection_tokens
        if (
            upgrade_value is not None
            and upgrade
            and not self.hcm.config.upgrade_allowed(upgrade_value.decode("latin-1"), action)
        ):
            # Envoy: an upgrade that no upgrade_configs allows is refused with 403 (UpgradeFailed)
            self.hcm.stats.inc("downstream_rq_ws_on_non_ws_route")
            raise _LocalReply(403, "", "-")
        target = request.target.decode("latin-1")
        out = strip_hop_by_hop(headers, keep_upgrade=upgrade)
        out = [(k, v) for k, v in out if k != b"expect"]  # 100-continue is answered here, per hop
        if action.prefix_rewrite is not None:
            rewritten = rewrite_path(target, route, action.prefix_rewrite)
            if rewritten != target:
                out.append((b"x-envoy-original-path", request.target))
                target = rewritten
        if action.host_rewrite_literal is not None:
            out = [(k, v) for k, v in out if k != b"host"]
            out.insert(0, (b"host", action.host_rewrite_literal.encode()))
        elif get_header(out, b"host") is None:  # an HTTP/1.0 request may have none: name the cluster
            out.insert(0, (b"host", self.cluster.name.encode()))
        out = apply_header_options(out, route.request_headers_to_add, route.request_headers_to_remove)
        xff = get_header(out, b"x-forwarded-for")
        remote = self.ds.remote.encode()
        out = [(k, v) for k, v in out if k not in (b"x-forwarded-for", b"x-forwarded-proto")]
        out.append((b"x-forwarded-for", xff + b", " + remote if xff else remote))
        out.append((b"x-forwarded-proto", self.ds.scheme.encode()))
        request_id = get_header(out, b"x-request-id")
        if request_id is None:
            request_id = self.hcm.request_ids.next()
            out.append((b"x-request-id", request_id))
        out = _with_via(out)
        if self.body.framing == "chunked":
            out.append((b"transfer-encoding", b"chunked"))
        self.record.x_forwarded_for = _text(get_header(out, b"x-forwarded-for"))
        self.record.request_id = request_id.decode("latin-1")
        self.target = target.encode("latin-1")
        self.upstream_headers = out
        if self.ds.plain:  # the head and the body in one write (the fast path's request came whole)
            self.head_bytes = request_head_bytes(request.method, self.target, out) + b"".join(self.body.kept)
        else:
            self.head = request_head(request.method, self.target, out, b"1.1")

    def _plain_upstream_head(
        self, request: h11.Request | PlainRequest, headers: list[tuple[bytes, bytes]], route: Route,
        action: RouteAction,
    ) -> None:  # fmt: skip
        """:meth:`_upstream_head` in one pass over the headers, for a request of the fast path (no
        upgrade, ``Expect``, ``Transfer-Encoding`` or ``Connection`` other than keep-alive; one
        ``Host``) on a route without header options: the same head (``tests/test_proxy_http1.py``
        compares the two paths' upstream heads)."""
        out: list[tuple[bytes, bytes]] = []
        xff = via = request_id = None
        for item in headers:
            name = item[0]
            if name in _PLAIN_SKIP:  # hop-by-hop, or replaced below
                if name == b"x-forwarded-for":
                    xff = item[1] if xff is None else xff + b"," + item[1]
                elif name == b"via":
                    via = item[1] if via is None else via + b"," + item[1]
                continue
            if name == b"x-request-id":
                request_id = item[1] if request_id is None else request_id + b"," + item[1]
            out.append(item)
        target = request.target
        if action.prefix_rewrite is not None:
            text = target.decode("latin-1")
            rewritten = rewrite_path(text, route, action.prefix_rewrite)
            if rewritten != text:
                out.append((b"x-envoy-original-path", target))
                target = rewritten.encode("latin-1")
        if action.host_rewrite_literal is not None:
            out = [(k, v) for k, v in out if k != b"host"]
            out.insert(0, (b"host", action.host_rewrite_literal.encode()))
        remote = self.ds.remote.encode()
        xff = xff + b", " + remote if xff else remote
        out.append((b"x-forwarded-for", xff))
        out.append((b"x-forwarded-proto", self.ds.scheme.encode()))
        if request_id is None:
            request_id = self.hcm.request_ids.next()
            out.append((b"x-request-id", request_id))
        out.append((b"via", via + b", " + VIA if via else VIA))
        self.record.x_forwarded_for = xff.decode("latin-1")
        self.record.request_id = request_id.decode("latin-1")
        self.target = target
        self.upstream_headers = out
        self.head_bytes = request_head_bytes(request.method, target, out) + b"".join(self.body.kept)

    async def run(self) -> bool:
        """The first attempt and the retries the policy allows; True keeps the client connection."""
        cluster, body = self.cluster, self.body
        while True:
            if body.complete and (not body.kept or self.head is None):  # nothing to upload: no task
                attempt = _UpstreamRequest(self, None)
                await attempt.run()
            else:
                with unwrap_single_exception():
                    async with trio.open_nursery() as uploads:
                        attempt = _UpstreamRequest(self, uploads)
                        await attempt.run()
            if attempt.downstream_error is not None:
                if attempt.conn is not None:
                    await attempt.conn.aclose()
                raise attempt.downstream_error
            if attempt.local_reply is not None:
                raise attempt.local_reply
            if not attempt.retry:
                return attempt.keep and (body.complete or body.finish_unsent())
            try:
                self.retries_left -= 1
                self.retry_count += 1
                cluster.stats.inc("upstream_rq_retry")
                if attempt.conn is not None:
                    await attempt.conn.aclose()
                backoff = self.hcm.rng.uniform(0, min(RETRY_MAX, RETRY_BASE * 2 ** (self.retry_count - 1)))
                if trio.current_time() + backoff >= self.timing.route_deadline:
                    cluster.stats.inc("upstream_rq_timeout")
                    raise _LocalReply(504, "upstream request timeout", "UT,URX")
                await trio.sleep(backoff)
            finally:
                cluster.end_retry()


class _UpstreamRequest:
    """One attempt at the upstream (Envoy's ``UpstreamRequest``): the connection it got, the
    response head or the failure it met, and what the router does next (``retry``, answer with
    ``local_reply``, or nothing more: the response was relayed, and ``keep`` says whether the
    client connection stays open).  The client's own failures (gone, too large, too slow) are
    kept apart, in ``downstream_error``."""

    __slots__ = (
        "conn",
        "downstream_error",
        "failure",
        "keep",
        "local_reply",
        "per_try_deadline",
        "relay_scope",
        "response",
        "retry",
        "rq",
        "started",
        "uploading",
        "uploads",
    )

    def __init__(self, rq: _RouterRequest, uploads: trio.Nursery | None) -> None:
        self.rq = rq
        self.uploads = uploads  # where the body upload runs (None: no body to send)
        self.started = trio.current_time()
        self.per_try_deadline = float("inf")
        self.conn: UpstreamConnection | None = None
        self.response: h11.Response | h11.InformationalResponse | PlainResponse | None = None
        self.failure: str | None = None  # "connect", "reset", "per_try_timeout", "timeout", "idle"
        self.downstream_error: _LocalReply | _DownstreamGone | None = None
        self.uploading = False
        self.relay_scope: trio.CancelScope | None = None
        self.retry = False
        self.local_reply: _LocalReply | None = None
        self.keep = False

    async def run(self) -> None:
        """This attempt and what follows from it (``retry``, ``local_reply`` or ``keep``); a
        response worth relaying is relayed here, while its body upload (in ``uploads``) may still
        be running.  Cancelled (the client reset its HTTP/2 stream, or ``drain_time`` ran out),
        it closes its connection: an exchange cut midway leaves it unusable."""
        rq = self.rq
        try:
            await self._start()
            if self.downstream_error is not None:
                self._stop_upload()
                return
            retry = self._should_retry() and rq.retries_left > 0 and rq.body.replayable
            if retry and rq.cluster.try_start_retry():
                self._stop_upload()
                self.retry = True
                return
            if self.failure is not None:
                self._stop_upload()
                self._count_failure(self.failure)
                self.local_reply = _failure_reply(self.failure, rq.retry_count)
                return
            if rq.retry_count and self.response is not None and self.response.status_code < 500:
                rq.cluster.stats.inc("upstream_rq_retry_success")
            if rq.head is None:
                self.keep = await self._relay_plain()
            else:
                self.keep = await self._relay_response()
        except trio.Cancelled:
            if self.conn is not None:
                await self.conn.aclose()  # shielded
            raise

    def _stop_upload(self) -> None:
        if self.uploads is not None:
            self.uploads.cancel_scope.cancel()

    def _should_retry(self) -> bool:
        """Envoy's ``retry_on`` conditions for this attempt's outcome."""
        policy = self.rq.policy
        if policy is None:
            return False
        on = policy.retry_on
        failure = self.failure
        if failure == "timeout":
            return False  # the route's global timeout ends the request
        if failure == "connect":
            return bool({"connect-failure", "5xx", "gateway-error"} & set(on))
        if failure == "reset":
            return bool({"reset", "5xx", "gateway-error"} & set(on))
        if failure == "per_try_timeout":
            return bool({"5xx", "gateway-error"} & set(on))
        status = self.response.status_code if self.response is not None else 0
        return (
            (status >= 500 and "5xx" in on)
            or (status in (502, 503, 504) and "gateway-error" in on)
            or (status == 409 and "retriable-4xx" in on)
        )

    def _count_failure(self, failure: str) -> None:
        stats = self.rq.cluster.stats
        if failure in ("timeout", "per_try_timeout"):
            stats.inc("upstream_rq_timeout")
        elif failure == "reset":
            stats.inc("upstream_rq_rx_reset")

    async def _start(self) -> None:
        """A host, a connection, the request head sent, its body streaming in ``uploads`` (which
        outlives this call: an upstream may answer before it has read the whole body), and the
        response head awaited.  Upstream failures are kept in ``failure``; the client's own in
        ``downstream_error``."""
        rq = self.rq
        cluster, timing, policy = rq.cluster, rq.timing, rq.policy
        host = cluster.choose_host()
        if host is None:
            cluster.stats.inc("upstream_cx_none_healthy")
            self.downstream_error = _LocalReply(503, "no healthy upstream", "UH")
            return
        rq.record.upstream_host = str(host)
        per_try = policy.per_try_timeout if policy is not None and policy.per_try_timeout else None
        per_try_deadline = self.started + per_try if per_try else float("inf")
        host.active_requests += 1
        cluster.stats.inc("upstream_rq_total")
        try:
            self.per_try_deadline = per_try_deadline
            # One scope for the whole wait: the route and per-try timers, and stream-idle (which
            # the upload pushes back as it makes progress).
            idle_deadline = trio.current_time() + timing.stream_idle
            with trio.CancelScope(
                deadline=min(timing.route_deadline, per_try_deadline, idle_deadline)
            ) as scope:
                timing.watch(scope)
                try:
                    self.conn = await cluster.acquire(host)
                    try:
                        await self._send_and_wait(scope)
                    except (*_NETWORK_ERRORS, h11.ProtocolError):
                        if not self._stale():
                            raise
                        # The pooled connection was closed under us: once more on a fresh one.
                        cluster.stats.inc("upstream_cx_destroy_remote_with_active_rq")
                        await self.conn.aclose()
                        self.conn = await cluster.acquire(host, fresh=True)
                        await self._send_and_wait(scope)
                except Overflow:
                    self.downstream_error = _LocalReply(503, _OVERFLOW_BODY, "UO")
                except ConnectFailure:
                    self.failure = "connect"
                except (*_NETWORK_ERRORS, h11.ProtocolError):
                    self.failure = "reset"
                finally:
                    timing.unwatch(scope)
            if self.downstream_error is not None:
                return
            if scope.cancelled_caught and self.response is None and self.failure is None:
                now = trio.current_time()
                if now >= per_try_deadline and per_try_deadline < timing.route_deadline:
                    self.failure = "per_try_timeout"
                    cluster.stats.inc("upstream_rq_per_try_timeout")
                elif now >= timing.route_deadline:
                    self.failure = "timeout"
                else:
                    self.failure = "idle"  # stream_idle_timeout: nothing moved either way
            if self.failure is not None:
                cluster.record_outcome(host, None)
                if self.conn is not None:
                    await self.conn.aclose()
                    self.conn = None
            else:
                assert self.response is not None
                cluster.record_outcome(host, self.response.status_code)
        finally:
            host.active_requests -= 1

    def _stale(self) -> bool:
        """Did the request fail only because its reused connection was already closed?  (Reused,
        no response byte of this request received, and no body, so sending again is safe.)"""
        conn = self.conn
        assert conn is not None
        return (
            conn.requests > 1
            and conn.received == conn.received_before
            and self.uploads is None
            and not self.rq.body.kept  # (the fast path's request with a body: not sent twice)
        )

    async def _send_and_wait(self, scope: trio.CancelScope) -> None:
        """The head sent on ``conn`` (with its end when there is no body, else the body's upload
        started in ``uploads``) and the response head awaited; 1xx other than 101 are dropped."""
        conn = self.conn
        assert conn is not None
        head, body = self.rq.head, self.rq.body
        if head is None:  # the fast path (:mod:`._http1`): no body, the response parsed by llhttp
            assert self.rq.head_bytes is not None
            self.response = await _send_plain(conn, self.rq.head_bytes)
            return
        conn.requests += 1
        conn.received_before = conn.received
        if body.complete and not body.kept:
            await conn.write(conn.h11.send(head) + conn.h11.send(_EOM))
        else:
            await conn.send(head)
            self.uploading = True
            assert self.uploads is not None
            self.uploads.start_soon(self._upload, scope)
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue  # 100 Continue, 103 Early Hints: not relayed
            if isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("upstream closed before a response")
            if not isinstance(event, (h11.Response, h11.InformationalResponse)):
                raise h11.RemoteProtocolError(f"upstream sent {type(event).__name__} before a response")
            self.response = event
            return

    async def _upload(self, scope: trio.CancelScope) -> None:
        """Stream the request body to the upstream (replaying what is kept, then reading on)."""
        conn = self.conn
        assert conn is not None
        body = self.rq.body
        try:
            for chunk in list(body.kept):
                await conn.send(h11.Data(data=chunk))
            while not body.complete:
                chunk = await body.read_more()
                if chunk:
                    await conn.send(h11.Data(data=chunk))
                    if self.response is None:  # progress: push the wait's stream-idle deadline back
                        idle_deadline = trio.current_time() + body.timing.stream_idle
                        scope.deadline = min(body.timing.route_deadline, self.per_try_deadline, idle_deadline)
            eom = _EOM
            if body.trailers and body.framing == "chunked" and self.rq.cluster.config.http2 is not None:
                # HTTP/2 clusters get the request's trailers (Envoy's HTTP/1 codec sends them only
                # with enable_trailers, not read here: HTTP/1.1 upstreams get none, as before)
                eom = h11.EndOfMessage(headers=body.trailers)
            await conn.send(eom)
        except (_LocalReply, _DownstreamGone) as exc:
            self.downstream_error = exc
            scope.cancel()
            if self.relay_scope is not None:
                self.relay_scope.cancel()
        except (*_NETWORK_ERRORS, h11.LocalProtocolError):
            pass  # the upstream stopped reading: its response (or its reset) says why
        finally:
            self.uploading = False

    async def _relay_response(self) -> bool:
        """The response, head then body, to the client; True if the client connection stays open."""
        rq = self.rq
        hcm, ds, cluster, timing, record = rq.hcm, rq.ds, rq.cluster, rq.timing, rq.record
        conn, response = self.conn, self.response
        assert conn is not None and response is not None
        status = response.status_code
        cluster.stats.inc(f"upstream_rq_{status // 100}xx")
        cluster.stats.inc(f"upstream_rq_{status}")
        cluster.stats.inc("upstream_rq_completed")
        service_ms = int((trio.current_time() - self.started) * 1000)
        record.upstream_service_time = str(service_ms)
        record.response_code = status
        headers = strip_hop_by_hop(response.headers, keep_upgrade=status == 101)
        headers.append((b"x-envoy-upstream-service-time", str(service_ms).encode()))
        headers = _with_via(headers)  # RFC 9110 7.6.3: a proxy adds Via to responses too
        outcome = rq.filters
        # The filters' encoders (gRPC-Web, Lua's envoy_on_response, the compressor), in reverse
        # configured order as Envoy runs them; the response headers filters add (CORS) apply at
        # their filter's place among them, or first when there are none.
        chain = EncoderChain(outcome.encoders, response.headers) if outcome and outcome.encoders else None
        if rq.response_headers and not (chain is not None and outcome is not None and outcome.headers_placed):
            names = {name for name, _ in rq.response_headers}  # replacing the upstream's (setReference)
            headers = [h for h in headers if h[0].lower() not in names]
            headers.extend(rq.response_headers)
        held = False  # the head held by an encoder until it lets go (Lua's body())
        if chain is not None:
            encoded = chain.headers(status, headers)
            held = encoded is None
            headers = chain.held_headers if encoded is None else encoded
            if status == 101:  # an upgrade: the encoders see its head only
                held, chain = False, None
        limiter = outcome.response_limiter if outcome is not None else None
        close = hcm.state.draining
        if close and status != 101:
            headers.append((b"connection", b"close"))
        hcm._count_response(status)
        ds.response_started = True
        try:
            if status == 101:
                hcm.stats.inc("downstream_cx_upgrades_total")
                await ds.send(
                    h11.InformationalResponse(status_code=101, headers=headers, reason=_reason(status))
                )
                await self._splice(conn)
                return False
            # Writes are gathered: the head and whatever body the upstream's bytes already hold
            # leave in one send (a small response is one write), and a large body in chunks of
            # RECEIVE_SIZE, each written before more is read (backpressure).
            head = response_head(status, headers, _reason(status))
            pending = [ds.h11.send(head)] if not held else []
            pending_bytes = 0
            with trio.CancelScope(
                deadline=min(timing.route_deadline, trio.current_time() + timing.stream_idle)
            ) as scope:
                self.relay_scope = scope
                timing.watch(scope)
                try:
                    while True:
                        event = conn.h11.next_event()
                        if event is h11.NEED_DATA:
                            if pending:
                                await ds.send_pending(pending)
                                pending_bytes = 0
                            data = await conn.receive()
                            conn.h11.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too
                            scope.deadline = min(
                                timing.route_deadline, trio.current_time() + timing.stream_idle
                            )
                        elif isinstance(event, h11.Data):
                            data = event.data if chain is None else chain.data(event.data)
                            if chain is not None and chain.released is not None:
                                held = False  # the filter let go of the head (its limit): it goes first
                                head = response_head(status, chain.released, _reason(status))
                                chain.released = None
                                pending.append(ds.h11.send(head))
                            if data and limiter is not None:  # the fault filter's bandwidth limit
                                data = await _paced(ds, limiter, pending, record, data, scope, timing)
                            if data:
                                record.bytes_sent += len(data)
                                pending_bytes += len(data)
                                pending.append(ds.h11.send(h11.Data(data=data)))
                            if pending_bytes >= RECEIVE_SIZE:
                                await ds.send_pending(pending)
                                pending_bytes = 0
                        elif isinstance(event, h11.EndOfMessage):
                            trailers: Sequence[tuple[bytes, bytes]] = event.headers
                            if chain is not None:
                                last, end, trailers = chain.end(list(event.headers))
                                if last is not None:  # held to the end: the head, framed anew
                                    head = _release_held(ds, status, last, end, record, trailers, pending)
                                elif end:
                                    record.bytes_sent += len(end)
                                    pending.append(ds.h11.send(h11.Data(data=end)))
                            eom = _EOM
                            if trailers and _trailers_fit(ds, record.method, status, head.headers):
                                eom = h11.EndOfMessage(headers=strip_hop_by_hop(trailers))  # grpc-status
                            pending.append(ds.h11.send(eom))
                            await ds.send_pending(pending)
                            break
                        else:
                            raise h11.RemoteProtocolError(f"upstream sent {type(event).__name__} in a body")
                finally:
                    timing.unwatch(scope)
                    self.relay_scope = None
            if self.downstream_error is not None:
                raise self.downstream_error
            if scope.cancelled_caught:
                if trio.current_time() >= timing.route_deadline:
                    record.response_flags = "UT"
                    cluster.stats.inc("upstream_rq_timeout")
                else:
                    record.response_flags = "SI"
                    hcm.stats.inc("downstream_rq_idle_timeout")
            if record.response_flags != "-" or ds.h11.our_state not in (h11.DONE, h11.MUST_CLOSE):
                await conn.aclose()
                return False
            client_closes = ds.h11.our_state is h11.MUST_CLOSE  # it asked, or HTTP/1.0
        except (*_NETWORK_ERRORS, h11.ProtocolError):
            # Either side broke mid-body: the client sees a truncated response and a close.
            if record.response_flags == "-":
                record.response_flags = "UC"
            await conn.aclose()
            return False
        if self.uploading:
            # The upstream answered before taking the whole body: stop sending it.  The upstream
            # connection is not reusable (h11 says so).  The client connection stays open if the
            # rest of its body is here already (:meth:`_RequestBody.finish_unsent`, once the
            # upload task is gone); the close is shielded, as the upload's cancellation would
            # otherwise end this task too before it says so.
            self._stop_upload()
            with trio.CancelScope(shield=True):
                await conn.aclose()
            return not (close or client_closes)
        cluster.release(conn)
        if close:
            hcm.stats.inc("downstream_cx_drain_close")
        return not (close or client_closes)

    async def _relay_plain(self) -> bool:
        """:meth:`_relay_response` for the fast path (:mod:`._http1`): :func:`_relay_plain`, which
        the lean path (:meth:`HttpConnectionManagerRuntime._proxy_plain`) shares."""
        rq = self.rq
        assert self.conn is not None and isinstance(self.response, PlainResponse)
        return await _relay_plain(
            rq.hcm, rq.ds, rq.cluster, self.conn, self.response, rq.record, self.started,
            rq.timing.route_deadline, rq.timing.stream_idle, rq.response_headers,
        )  # fmt: skip

    async def _splice(self, conn: UpstreamConnection) -> None:
        """Byte for byte both ways after a 101, until either side closes (or stream-idle passes)."""
        ds, record = self.rq.ds, self.rq.record
        down_early, _ = ds.h11.trailing_data
        up_early, _ = conn.h11.trailing_data
        idle = self.rq.timing.stream_idle

        async def pump(source: trio.abc.Stream, sink: trio.abc.Stream, early: bytes, to_client: bool) -> None:
            try:
                if early:
                    await sink.send_all(early)
                while True:
                    with trio.move_on_after(idle) as quiet:
                        data = await source.receive_some(RECEIVE_SIZE)
                    if quiet.cancelled_caught or not data:
                        break
                    if to_client:
                        ds.bytes_sent += len(data)
                        record.bytes_sent += len(data)
                    else:
                        ds.bytes_received += len(data)
                    await sink.send_all(data)
            except _NETWORK_ERRORS:
                pass
            finally:
                nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, ds.stream, conn.stream, bytes(down_early), False)
                nursery.start_soon(pump, conn.stream, ds.stream, bytes(up_early), True)
        finally:
            await conn.aclose()


#: a response head's framing, made anew when a filter changed the body
_FRAMING = (b"content-length", b"transfer-encoding")


def _encode_whole(
    record: AccessRecord, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[list[tuple[bytes, bytes]], bytes, list[tuple[bytes, bytes]]]:
    """A whole response made here through the request's encoders (``record.encoders``:
    :func:`.filters.encode_whole`), framed anew: ``Content-Length`` unless trailers follow."""
    assert record.encoders is not None
    headers, body, trailers = encode_whole(record.encoders, status, headers, body)
    if status not in (204, 304) and record.method != "HEAD":
        headers = [h for h in headers if h[0].lower() not in _FRAMING]
        if not trailers:  # (trailers: chunked, where the client's framing can carry them)
            headers.append((b"content-length", str(len(body)).encode()))
    return headers, body, trailers


def _release_held(
    ds: _Downstream, status: int, headers: list[tuple[bytes, bytes]], body: bytes, record: AccessRecord,
    trailers: Sequence[tuple[bytes, bytes]], pending: list[bytes],
) -> h11.Response:  # fmt: skip
    """A response whose head a filter held for its whole body (Lua's ``body()``): its head framed
    anew (``Content-Length`` unless trailers follow) and its whole body added to ``pending``."""
    bodyless = status in (204, 304) or record.method == "HEAD"
    if not bodyless:
        headers = [h for h in headers if h[0].lower() not in (b"content-length", b"transfer-encoding")]
        if not trailers:
            headers.append((b"content-length", str(len(body)).encode()))
    head = response_head(status, headers, _reason(status))
    pending.append(ds.h11.send(head))
    if body and not bodyless:
        record.bytes_sent += len(body)
        pending.append(ds.h11.send(h11.Data(data=body)))
    return head


async def _paced(
    ds: _Downstream, limiter: ResponseRateLimiter, pending: list[bytes], record: AccessRecord, data: bytes,
    scope: trio.CancelScope, timing: _Timing,
) -> bytes:  # fmt: skip
    """Write ``data`` as fast as ``limiter`` (the fault filter's) lets it, what is pending first;
    the last piece is returned, for the caller to write with what follows.  The time the limiter
    holds the body back is the proxy's own, not the upstream's: the route's timeout is moved on
    by it (Envoy's stops once the upstream's response is in, which the limiter buffers)."""
    while True:
        n, wait = limiter.take(len(data), trio.current_time())
        if n >= len(data):
            return data
        if n:
            record.bytes_sent += n
            pending.append(ds.h11.send(h11.Data(data=data[:n])))
            await ds.send_pending(pending)
            data = data[n:]
        else:
            timing.route_deadline += wait
            scope.deadline = min(timing.route_deadline, trio.current_time() + wait + timing.stream_idle)
            await trio.sleep(wait)


async def _relay_plain(
    hcm: HttpConnectionManagerRuntime, ds: _Downstream, cluster: ClusterRuntime, conn: UpstreamConnection,
    response: PlainResponse, record: AccessRecord, attempt_started: float, route_deadline: float,
    stream_idle: float, response_headers: Sequence[tuple[bytes, bytes]],
) -> bool:  # fmt: skip
    """The fast path's relay (:mod:`._http1`), for the general request objects and the lean path
    alike: the response parsed by llhttp and written as h11 would write it, no cache or compressor
    filter in the way (the other filters' ``response_headers`` are applied as
    :meth:`_UpstreamRequest._relay_response` applies them: keep the two in step), and never a 101
    (the request asked for no upgrade; llhttp refuses one).  True keeps the client connection.

    The fast path's request came whole, so its route deadline is final before the attempt starts:
    the relay's scope needs no tightening (no :meth:`_Timing.watch`).  In three steps, which the
    lean path calls itself so that a response written whole at once costs no coroutine:
    :func:`_relay_start` (counted, the head, what is there sent), :func:`_relay_rest` (the rest,
    under its timers), :func:`_relay_done` (the connection pooled)."""
    reader = conn.reader
    assert reader is not None
    try:
        pending, chunked, close = _relay_start(
            hcm, ds, cluster, reader, response, record, attempt_started, ds.now(), response_headers
        )
    except (*_NETWORK_ERRORS, h11.ProtocolError):
        return await _relay_broken(record, conn)
    if not pending and reader.done and record.response_flags == "-":
        return _relay_done(hcm, cluster, conn, close)
    return await _relay_rest(
        hcm, ds, cluster, conn, reader, record, pending, chunked, close, route_deadline, stream_idle
    )


async def _relay_rest(
    hcm: HttpConnectionManagerRuntime, ds: _Downstream, cluster: ClusterRuntime, conn: UpstreamConnection,
    reader: ResponseReader, record: AccessRecord, pending: list[bytes], chunked: bool, close: bool,
    route_deadline: float, stream_idle: float,
) -> bool:  # fmt: skip
    """:func:`_relay_plain`'s second step: ``pending`` written and the rest of the body relayed as
    it comes, under the route timer and stream-idle (one cancel scope), then the connection
    pooled or closed."""
    try:
        if pending or not reader.done:
            with trio.CancelScope(deadline=min(route_deadline, trio.current_time() + stream_idle)) as scope:
                while True:
                    await ds.send_pending(pending)
                    if reader.done:
                        break
                    received = await conn.receive()
                    if not received:
                        if not reader.eof():
                            raise trio.BrokenResourceError("upstream closed in a response body")
                    else:
                        reader.feed(received)
                    _take_body(reader, record, pending, chunked)
                    scope.deadline = min(route_deadline, trio.current_time() + stream_idle)
            if scope.cancelled_caught:
                if trio.current_time() >= route_deadline:
                    record.response_flags = "UT"
                    cluster.stats.inc("upstream_rq_timeout")
                else:
                    record.response_flags = "SI"
                    hcm.stats.inc("downstream_rq_idle_timeout")
        if record.response_flags != "-" or not reader.done:
            await conn.aclose()
            return False
    except (*_NETWORK_ERRORS, h11.ProtocolError):
        return await _relay_broken(record, conn)
    return _relay_done(hcm, cluster, conn, close)


async def _relay_broken(record: AccessRecord, conn: UpstreamConnection) -> bool:
    """Either side broke mid-response: the client sees a truncated response and a close."""
    if record.response_flags == "-":
        record.response_flags = "UC"
    await conn.aclose()
    return False


def _relay_done(
    hcm: HttpConnectionManagerRuntime, cluster: ClusterRuntime, conn: UpstreamConnection, close: bool
) -> bool:
    """:func:`_relay_plain`'s last step, the response out whole: the upstream connection pooled;
    True keeps the client connection."""
    cluster.release(conn)
    if close:
        hcm.stats.inc("downstream_cx_drain_close")
    return not close


def _relay_start(
    hcm: HttpConnectionManagerRuntime, ds: _Downstream, cluster: ClusterRuntime, reader: ResponseReader,
    response: PlainResponse, record: AccessRecord, attempt_started: float, now: float,
    response_headers: Sequence[tuple[bytes, bytes]],
) -> tuple[list[bytes], bool, bool]:  # fmt: skip
    """:func:`_relay_plain`'s first step, which never waits: the response counted, its head made,
    the body read so far taken, and when the whole response is in hand (a small one comes with its
    head) written at once if the kernel takes it, as it mostly does (on an HTTP/2 stream, if the
    bridge frames it: ``StreamBridge.send_whole_now``).  Returns what is left to send,
    whether the body goes chunked, and whether the client connection closes after it.  ``now``:
    the clock read when the response's head was in hand (the caller's, which the lean path uses
    again for the pool)."""
    status = response.status_code
    for cell in cluster.rq_by_status.get(status) or cluster.status_cells(status):
        cell.value += 1
    service = str(int((now - attempt_started) * 1000))
    record.upstream_service_time = service
    record.response_code = status
    close = hcm.state.draining
    head, chunked = _relay_head(status, response.headers, service, response_headers, close)
    for cell in hcm.rq_by_status.get(status) or hcm.status_cells(status):
        cell.value += 1
    ds.response_started = True
    pending = [head]
    _take_body(reader, record, pending, chunked)
    if reader.done:
        if ds.raw is not None:
            data = b"".join(pending)
            pending.clear()
            sent = send_now(ds.raw, data)
            ds.bytes_sent += sent
            if sent < len(data):
                pending.append(data[sent:])
        elif ds.send_whole is not None:  # an HTTP/2 stream's: framed now if it can be
            data = b"".join(pending)
            if ds.send_whole(data):
                pending.clear()
                ds.bytes_sent += len(data)
    return pending, chunked, close


def _take_body(reader: ResponseReader, record: AccessRecord, pending: list[bytes], chunked: bool) -> None:
    """:func:`_relay_plain`'s step: the body parsed so far into ``pending`` (and its end, once
    there), counted in ``record``; a module function, not a closure, so that the relay's own
    variables stay plain locals."""
    for data in reader.take_body():
        record.bytes_sent += len(data)
        pending.append(chunk(data) if chunked else data)
    if reader.done and chunked:  # trailers (grpc-status) fit a chunked body
        pending.append(last_chunk(strip_hop_by_hop(reader.trailers)))


def _relay_head(
    status: int, upstream: Sequence[tuple[bytes, bytes]], service: str,
    response_headers: Sequence[tuple[bytes, bytes]], close: bool,
) -> tuple[bytes, bool]:  # fmt: skip
    """:func:`_relay_plain`'s response head to the client, from the upstream's ``status`` and
    headers (``upstream``): what h11 would write for the headers :meth:`_UpstreamRequest._relay_response`
    makes, with ``x-envoy-upstream-service-time: service``, the filters' ``response_headers`` and
    ``connection: close`` if ``close``.  Returns the head and whether the body goes chunked."""
    # One pass for what _relay_response does in several (strip_hop_by_hop, the service time,
    # _with_via): hop-by-hop fields dropped, Via collected and written last with this proxy, and
    # the head's lines made as the fields are read (response_head_bytes's, without a list of
    # pairs in between).  A Connection that names other fields to drop, or response headers
    # from the filters, take the list of pairs (_relayed_headers) and response_head_bytes.
    lines = [b""]  # the status line, filled in below
    via = named = None
    length = False
    for name, value in upstream:
        if name in _PLAIN_RESPONSE_SKIP:
            if name == b"via":
                via = value if via is None else via + b"," + value
            elif name == b"connection" and value not in _PLAIN_CONNECTION_VALUES:
                tokens = {token.strip().lower() for token in value.split(b",")}
                named = tokens if named is None else named | tokens
            continue
        if name == b"content-length":
            length = True
        lines.append(name + b": " + value + b"\r\n")
    if (named is not None and named - _CONNECTION_TOKENS) or response_headers:
        headers, length = _relayed_headers(upstream, named, via, service, response_headers, close)
        chunked = status not in (204, 304) and not length
        head = response_head_bytes(status, _reason(status), headers, chunked=chunked)
    else:
        # h11's framing of what it sends: the length when there is one, else chunked (the client
        # speaks HTTP/1.1), none for 204 and 304
        chunked = status not in (204, 304) and not length
        lines[0] = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
        lines.append(
            b"x-envoy-upstream-service-time: " + service.encode()
            + b"\r\nvia: " + (via + b", " + VIA if via else VIA)  # RFC 9110 7.6.3
            + (b"\r\nconnection: close\r\n" if close else b"\r\n")
            + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
        )  # fmt: skip
        head = b"".join(lines)
    return head, chunked


def _relayed_headers(
    upstream: Sequence[tuple[bytes, bytes]], named: set[bytes] | None, via: bytes | None, service: str,
    response_headers: Sequence[tuple[bytes, bytes]], close: bool,
) -> tuple[list[tuple[bytes, bytes]], bool]:  # fmt: skip
    """:func:`_relay_plain`'s response headers as a list of pairs, for the uncommon cases: a
    ``Connection`` that names fields to drop (``named``), the filters' ``response_headers``
    (replacing the upstream's own, as Envoy's setReference).  ``via``: the upstream's Via values,
    joined.  Returns the headers and whether they hold a ``Content-Length``."""
    if named is not None and named - _CONNECTION_TOKENS:  # it names fields to drop too
        drop = _PLAIN_RESPONSE_SKIP | named
        if b"via" in named:
            via = None
    else:
        drop = _PLAIN_RESPONSE_SKIP
    headers = [item for item in upstream if item[0] not in drop]
    headers.append((b"x-envoy-upstream-service-time", service.encode()))
    headers.append((b"via", via + b", " + VIA if via else VIA))  # RFC 9110 7.6.3
    if response_headers:  # set by the filters, replacing the upstream's own (Envoy's setReference)
        names = {name for name, _ in response_headers}
        headers = [h for h in headers if h[0].lower() not in names]
        headers.extend(response_headers)
    if close:
        headers.append((b"connection", b"close"))
    return headers, any(h[0] == b"content-length" for h in headers)


async def _send_plain(conn: UpstreamConnection, data: bytes) -> PlainResponse:
    """The fast path's request (head and body, ``data``) sent on ``conn`` and its response head
    awaited, parsed by llhttp (1xx dropped)."""
    reader = _plain_start(conn)
    # The head mostly fits the socket buffer: written without a scheduler pass (send_all's),
    # since the response's wait that follows is one.
    sent = send_now(conn.raw, data) if conn.raw is not None else 0
    if sent < len(data):
        await conn.write(data[sent:])
    received = await conn.receive(later=True)  # (the answer cannot be there yet)
    while True:
        if not received:
            raise trio.BrokenResourceError("upstream closed before a response")
        reader.feed(received)
        if reader.head is not None:
            return reader.head
        received = await conn.receive()


def _plain_start(conn: UpstreamConnection) -> ResponseReader:
    """A fast-path request's bookkeeping on ``conn`` before it is sent: counted (for the retry's
    test of a pooled connection closed under us), its response reader ready, h11 left idle."""
    conn.requests += 1
    conn.received_before = conn.received
    reader = conn.reader
    if reader is None:
        reader = conn.reader = ResponseReader()
    else:
        reader.start()
    conn.plain = True
    return reader


async def _send_rest_until(conn: UpstreamConnection, data: bytes, deadline: float) -> bool:
    """The rest of a request head the socket buffer did not take at once, written as it drains;
    False when ``deadline`` passes first."""
    with trio.CancelScope(deadline=deadline) as scope:
        await conn.write(data)
    return not scope.cancelled_caught


def _pick_cluster(hcm: HttpConnectionManagerRuntime, action: RouteAction) -> ClusterRuntime:
    """The route's cluster, or one of its ``weighted_clusters`` chosen by weight."""
    clusters = hcm.clusters
    if action.cluster is not None:
        return clusters[action.cluster]
    total = sum(w.weight for w in action.weighted_clusters)
    point = hcm.rng.randrange(total) if total else 0
    for weighted in action.weighted_clusters:
        if point < weighted.weight:
            return clusters[weighted.name]
        point -= weighted.weight
    return clusters[action.weighted_clusters[-1].name]


def _lean_head(
    request: PlainRequest, route: Route, action: RouteAction, ds: _Downstream, request_ids: RequestIds
) -> tuple[bytes, bytes, bytes]:
    """:meth:`_RouterRequest._plain_upstream_head` and :func:`request_head_bytes` in one pass:
    the upstream head's lines made as the headers are read, ``Host`` first, and joined once.
    Returns the head, ``x-forwarded-for`` and ``x-request-id`` (for the access record)."""
    lines = [b"", b""]  # the request line and the Host line, filled in below
    host = b""
    xff = via = request_id = None
    for name, value in request.headers:
        if name in _PLAIN_SKIP:  # hop-by-hop, or replaced below
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
            elif name == b"via":
                via = value if via is None else via + b"," + value
            continue
        if name == b"host":
            host = value
            continue
        if name == b"x-request-id":
            request_id = value if request_id is None else request_id + b"," + value
        lines.append(name + b": " + value + b"\r\n")
    target = request.target
    if action.prefix_rewrite is not None:
        text = target.decode("latin-1")
        rewritten = rewrite_path(text, route, action.prefix_rewrite)
        if rewritten != text:
            lines.append(b"x-envoy-original-path: " + target + b"\r\n")
            target = rewritten.encode("latin-1")
    if action.host_rewrite_literal is not None:
        host = action.host_rewrite_literal.encode()
    lines[0] = request.method + b" " + target + b" HTTP/1.1\r\n"
    lines[1] = b"host: " + host + b"\r\n"
    remote = ds.remote_bytes
    if xff:
        xff = xff + b", " + remote
        lines.append(b"x-forwarded-for: " + xff + ds.proto_line)
    else:
        xff = remote
        lines.append(ds.forwarded_lines)
    if request_id is None:
        request_id = request_ids.next()
        lines.append(b"x-request-id: " + request_id + b"\r\n")
    lines.append(b"via: " + (via + b", " + VIA if via else VIA) + b"\r\n\r\n")
    return b"".join(lines), xff, request_id


# Request headers the fast path's upstream head drops (hop-by-hop) or writes anew
_PLAIN_SKIP = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"via"}
# Response headers the fast path drops (hop-by-hop) or writes anew (Via), and the Connection
# tokens that name no field to drop beyond those
_PLAIN_RESPONSE_SKIP = HOP_BY_HOP | {b"via"}
_CONNECTION_TOKENS = HOP_BY_HOP | {b"close"}
_PLAIN_CONNECTION_VALUES = frozenset((b"keep-alive", b"Keep-Alive", b"close", b"Close"))  # name nothing more
_LEAN_MAX_READ = 16 * 1024  # a head under this is under MAX_REQUEST_HEADERS as _head_size counts it
_ROUTE_CACHE_SIZE = 1024  # Host values whose route the lean path keeps
_INF = float("inf")
_OVERFLOW_BODY = "upstream connect error or disconnect/reset before headers. reset reason: overflow"


async def _linger(ds: _Downstream) -> None:
    """Close after an error reply without losing it (:func:`lingering_close`), bounded by
    :data:`LINGER_BYTES` and :data:`LINGER_SECONDS`."""
    with trio.move_on_after(LINGER_SECONDS), contextlib.suppress(*_NETWORK_ERRORS):
        await lingering_close(ds.stream, max_bytes=LINGER_BYTES, receive_size=RECEIVE_SIZE)


def _trailers_fit(
    ds: _Downstream, method: str | None, status: int, headers: Sequence[tuple[bytes, bytes]]
) -> bool:
    """Whether the response to the client can carry trailers: chunked (HTTP/1.1, no Content-Length,
    a body allowed) or an HTTP/2 stream (whose bridge speaks HTTP/1.1 chunked to us)."""
    return (
        ds.h11.their_http_version == b"1.1"
        and method != "HEAD"
        and status not in (204, 304)
        and get_header(headers, b"content-length") is None
    )


def _head_size(request: h11.Request | PlainRequest, headers: list[tuple[bytes, bytes]]) -> int:
    """The size of a request head as it came in (request line and header lines); ``headers``:
    ``request.headers`` as a list."""
    size = len(request.method) + len(request.target) + 12
    for name, value in headers:
        size += len(name) + len(value) + 4
    return size


def _origin_form(request: h11.Request) -> h11.Request:
    """An absolute-form request (``GET http://host/path``) in origin form, its host as ``Host``
    (RFC 9112 3.2.2: the target's authority replaces any Host header)."""
    parts = urlsplit(request.target)
    if not parts.netloc:
        return request
    target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
    headers = [(b"host", parts.netloc)] + [(k, v) for k, v in request.headers if k != b"host"]
    return request_head(request.method, target, headers, request.http_version)


def _reply_encoders(record: AccessRecord, outcome: FilterOutcome) -> None:
    """What a reply made here passes through: the encoders of the filters that ran, in Envoy's
    order, or the response headers they add (CORS's, on the router's own 502, 503, 504 too)."""
    if outcome.encoders:
        record.encoders = outcome.encoders
    elif outcome.response_headers:
        record.encoders = [ResponseHeaders(outcome.response_headers)]


def _failure_reply(failure: str, retries: int) -> _LocalReply:
    if failure == "idle":
        return _LocalReply(408, "stream timeout", "SI")
    if failure == "connect":
        return _LocalReply(
            502,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            "UF" if not retries else "UF,URX",
        )
    if failure == "reset":
        return _LocalReply(
            502,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            "UC" if not retries else "UC,URX",
        )
    return _LocalReply(504, "upstream request timeout", "UT" if not retries else "UT,URX")


def _with_via(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with this proxy appended to ``Via`` (RFC 9110 7.6.3), the received values first,
    joined into one field last."""
    via = get_header(headers, b"via")
    out = [(k, v) for k, v in headers if k != b"via"]
    out.append((b"via", via + b", " + VIA if via else VIA))
    return out


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


_PROTOCOL_ERROR_BODY = {
    400: "bad request",
    413: "payload too large",
    414: "uri too long",
    431: "request header fields too large",
    501: "not implemented",
}


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# a response's status line, as response_head_bytes writes it with _reason's phrase (a status
# without one: "HTTP/1.1 599 \r\n", the empty phrase): one lookup instead of a formatting
_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, phrase) for status, phrase in _REASONS.items()}


def _reason(status: int) -> bytes:
    """The standard reason phrase (Envoy's HTTP/1 codec writes these whatever the upstream sent);
    from a table: ``HTTPStatus(status)`` costs about a microsecond, and every response needs one."""
    return _REASONS.get(status, b"")


class RequestIds:
    """``x-request-id`` values as Envoy makes them: a UUID version 4 in its text form (RFC 9562:
    122 random bits, the version nibble 4 and the variant bits 10), the bits from ``randbytes``
    -- ``os.urandom`` by default, the system's CSPRNG, as Envoy's ``RAND_bytes``; a seeded
    generator's ``randbytes`` in tests -- drawn and written :data:`_IDS_PER_BLOCK` at a time: the
    version and variant bits set over the whole block as one integer, one hex conversion (~0.57
    us an id, all told, against ~0.78 for ``random``'s 128 bits set and formatted one at a time,
    and the quality of Envoy's bits instead of a Mersenne Twister's)."""

    __slots__ = ("_ids", "_randbytes")

    def __init__(self, randbytes: Callable[[int], bytes] = os.urandom) -> None:
        self._randbytes = randbytes
        self._ids: Iterator[bytes] = iter(())

    def next(self) -> bytes:
        for made in self._ids:
            return made
        bits = int.from_bytes(self._randbytes(16 * _IDS_PER_BLOCK)) & _UUID4_MASK | _UUID4_SET
        h = binascii.hexlify(bits.to_bytes(16 * _IDS_PER_BLOCK))
        ids = [  # 8-4-4-4-12 hex digits
            b"-".join((h[i : i + 8], h[i + 8 : i + 12], h[i + 12 : i + 16], h[i + 16 : i + 20],
                       h[i + 20 : i + 32]))
            for i in range(0, 32 * _IDS_PER_BLOCK, 32)
        ]  # fmt: skip
        self._ids = iter(ids)
        return next(self._ids)


_IDS_PER_BLOCK = 256  # 4 KiB of random bits per draw
# per 16 bytes: the version's nibble (byte 6's high half) and the variant's two bits (byte 8's top)
_UUID4_MASK = int.from_bytes(bytes.fromhex("ffffffffffff0fff3fffffffffffffff") * _IDS_PER_BLOCK)
_UUID4_SET = int.from_bytes(bytes.fromhex("00000000000040008000000000000000") * _IDS_PER_BLOCK)
