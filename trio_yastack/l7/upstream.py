"""Clusters at run time: endpoints, their health, load balancing, connection pools, circuit breakers.

What each piece does, and where it follows Envoy (and where not):

- **Hosts** come from ``load_assignment``; a STRICT_DNS cluster resolves each endpoint's name at
  start and every :data:`DNS_REFRESH_SECONDS` (Envoy's ``dns_refresh_rate`` default), keeping what
  it had if a lookup fails.
- **Active health checks** (``http_health_check``): every ``interval`` a fresh connection sends
  ``GET path`` with ``Host: <cluster name>`` and ``user-agent: Envoy/HC``; a 200 within ``timeout`` is a
  success.  As in Envoy a host starts unhealthy and its first success makes it healthy; after that
  ``unhealthy_threshold`` failures in a row eject it and ``healthy_threshold`` successes bring it
  back.  The cluster is ready (listeners open) once every host has had its first check.  A
  ``no_traffic_interval`` spaces checks until the cluster's first request, as in Envoy; unlike Envoy
  (60 s by default) there is none unless configured: checks run every ``interval``.  An endpoint's
  ``health_check_config`` sends them to its ``port_value`` with its ``hostname`` as Host.
- **Outlier detection** (passive): ``consecutive_5xx`` responses in a row (connect failures,
  resets and timeouts count, as in Envoy's default) eject a host for ``base_ejection_time`` times
  the number of times it has been ejected; it returns at the next ``interval`` sweep after that.  At
  most ``max_ejection_percent`` of hosts are ejected, but always at least one may be.
- **Load balancing** over the available hosts (healthy and not ejected): ROUND_ROBIN, LEAST_REQUEST
  (the better of two random choices, Envoy's default ``choice_count``), RANDOM, RING_HASH (a ketama
  ring of :data:`RING_SIZE` points) and MAGLEV (a Maglev table); with no ``hash_policy`` in the
  subset the request hash is random, as in Envoy.  Endpoint weights, priorities (Envoy's
  overprovisioning factor 1.4) and locality weights are honoured (:meth:`ClusterRuntime._choose_weighted`).
  With no available host the request gets 503: Envoy's panic mode (routing to all hosts when under
  50 % are healthy, its default) applies only where ``healthy_panic_threshold`` is configured, so an
  all-unhealthy cluster otherwise fails fast.
- **LOGICAL_DNS** resolves its one endpoint like STRICT_DNS and keeps the first address.
- **HTTP/2 clusters** (``http2_protocol_options``): one connection per host shared by all its
  requests, a stream each (:mod:`.h2_upstream`); another when the host's stream limit is reached.
- **Connection pools**, one per host: HTTP/1.1 keep-alive connections, reused most-recent-first.
  A connection idle for a second is watched; if the upstream closes it (or sends anything
  unasked) it leaves the pool at once.  A request without a body that fails on a reused
  connection before any response byte is sent again on a fresh one (the upstream closed it
  between our last look and our write), as HTTP clients do.
- **Circuit breakers** (priority DEFAULT): ``max_connections`` per cluster (beyond it a request
  waits for a connection, counted ``upstream_cx_overflow``), ``max_pending_requests`` waiting (beyond
  it 503, ``upstream_rq_pending_overflow``), ``max_requests`` outstanding (503, the same counter),
  ``max_retries`` concurrent retries (beyond it the retry is not made, ``upstream_rq_retry_overflow``).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from trio_yastack.tls.contexts import peer_san_matches

from ._http1 import ResponseReader
from ._kernel_io import RawIO, RawSocket
from ._stack_io import stream_io
from .config import Cluster, HealthCheck, LbEndpoint, LocalityLbEndpoints, OutlierDetection
from .h2_upstream import H2Upstream
from .network import Network
from .stats import Cell, Scope, Stats

__all__ = [
    "DNS_REFRESH_SECONDS",
    "ClusterManager",
    "ClusterRuntime",
    "ConnectFailure",
    "Host",
    "Overflow",
    "UpstreamConnection",
]

DNS_REFRESH_SECONDS = 5.0
RING_SIZE = 1024  # Envoy's minimum_ring_size default
MAX_IDLE_PER_HOST = 1024  # bound on pooled idle connections of one host (max_connections bounds it too)
RECEIVE_SIZE = 65536
IDLE_WATCH_AFTER = 1.0  # seconds in the pool before a connection is watched for the upstream closing it
HEALTH_CHECK_MAX_RESPONSE = 64 * 1024  # a health check reads at most this much of a response


class ConnectFailure(Exception):
    """The upstream connection could not be made (refused, unreachable, timed out, TLS failed)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Overflow(Exception):
    """A circuit breaker refused the request (``max_pending_requests`` or ``max_requests``)."""


class UpstreamConnection:
    """One HTTP/1.1 connection to a host: a trio stream with an h11 client state machine, and the
    fast path's response parser (``reader``, :mod:`._http1`); ``plain`` while the current request
    is the fast path's (h11 then stays idle)."""

    __slots__ = (
        "closed",
        "h11",
        "host",
        "idle_since",
        "io",
        "plain",
        "raw",
        "reader",
        "received",
        "received_before",
        "requests",
        "stream",
        "watch_done",
        "watch_scope",
    )

    def __init__(self, stream: trio.abc.Stream, host: Host) -> None:
        self.stream = stream
        # set: I/O straight on it (a kernel socket's or the stack's), waits by ``io``
        # (:mod:`._kernel_io` or :mod:`._stack_io`)
        self.raw: RawSocket | None
        self.io: RawIO
        self.raw, self.io = stream_io(stream)
        self.host = host
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.reader: ResponseReader | None = None
        self.plain = False
        self.watch_scope: trio.CancelScope | None = None
        self.watch_done = _DONE
        self.requests = 0  # how many requests this connection has carried (0: fresh)
        self.received = 0  # bytes received over its life
        self.received_before = 0  # ... when the current request was sent
        self.idle_since = 0.0
        self.closed = False

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.write(data)

    async def write(self, data: bytes) -> None:
        if self.raw is not None:
            await self.io.send_all(self.raw, data)
        else:
            await self.stream.send_all(data)

    async def receive(self, *, later: bool = False) -> bytes | bytearray:
        """One read of up to :data:`RECEIVE_SIZE` (b"" at EOF), counted in ``received``; ``later``:
        nothing can be there yet (a request just sent), so wait before reading (:func:`receive_later`)."""
        data: bytes | bytearray
        if self.raw is not None:
            if later:
                data = await self.io.receive_later(self.raw, RECEIVE_SIZE)
            else:
                data = await self.io.receive_some(self.raw, RECEIVE_SIZE)
        else:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        self.received += len(data)
        return data

    async def next_event(self) -> h11.Event:
        """The next h11 event from the upstream; EOF becomes h11's ConnectionClosed or an error."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # h11.PAUSED: only after their message ends
            data = await self.receive()
            self.h11.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too

    @property
    def reusable(self) -> bool:
        if self.plain:
            return self.reader is not None and self.reader.reusable
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.host.cluster.connection_closed(self)
        if self.raw is not None:  # a reader in another task gets ClosedResourceError, as from trio
            self.io.notify_closing(self.raw)
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await trio.aclose_forcefully(self.stream)


class _H2StreamConnection(UpstreamConnection):
    """A request's stream of a shared HTTP/2 connection (:mod:`.h2_upstream`): never pooled
    itself, and closing it ends the stream, not the connection."""

    __slots__ = ()

    @property
    def reusable(self) -> bool:
        return False

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.stream.aclose()


@dataclass(eq=False)
class Host:
    """One endpoint of a cluster, with its health and its pool."""

    cluster: ClusterRuntime
    address: str  # IPv4 address
    port: int
    hostname: str = ""  # the name a STRICT_DNS endpoint was resolved from
    endpoint: LbEndpoint | None = None  # its lb_endpoints[] entry (weight, health check port and host)
    locality: LocalityLbEndpoints | None = None  # its endpoints[] entry (priority, locality weight)
    current_weight: int = 0  # smooth weighted round robin's running weight
    failed_active_hc: bool = False
    pending_active_hc: bool = False
    hc_successes: int = 0  # consecutive
    hc_failures: int = 0  # consecutive
    consecutive_5xx: int = 0
    ejected_until: float | None = None
    times_ejected: int = 0
    active_requests: int = 0
    cx_active: int = 0
    h2_connections: list[H2Upstream] = field(default_factory=list)  # an HTTP/2 cluster's, shared
    h2_connecting: trio.Event | None = None  # set when the connect under way ends
    rq_total: int = 0
    rq_success: int = 0
    rq_error: int = 0
    idle: list[UpstreamConnection] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return not self.failed_active_hc and self.ejected_until is None

    @property
    def health_flags(self) -> str:
        """Envoy's ``/clusters`` health_flags: ``healthy`` or the reasons it is not."""
        flags = []
        if self.failed_active_hc:
            flags.append("/failed_active_hc")
        if self.pending_active_hc:
            flags.append("/pending_active_hc")
        if self.ejected_until is not None:
            flags.append("/failed_outlier_check")
        return "".join(flags) or "healthy"

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def weight(self) -> int:
        return self.endpoint.load_balancing_weight if self.endpoint is not None else 1

    @property
    def priority(self) -> int:
        return self.locality.priority if self.locality is not None else 0


class ClusterRuntime:
    """One configured cluster, live."""

    def __init__(
        self,
        config: Cluster,
        network: Network,
        stats: Stats,
        *,
        tls_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.network = network
        self.tls_context = tls_context
        if tls_context is not None and config.http2 is not None:
            tls_context.set_alpn_protocols(["h2"])  # this cluster's own context: HTTP/2 over TLS
        self.tls_sni = config.transport_socket.sni if config.transport_socket is not None else None
        self.rng = rng or random.Random()
        self.stats: Scope = stats.scope("cluster", config.name)
        self.stats.declare(
            "upstream_cx_total",
            "upstream_cx_connect_fail",
            "upstream_cx_connect_timeout",
            "upstream_cx_overflow",
            "upstream_rq_total",
            "upstream_rq_completed",
            "upstream_rq_retry",
            "upstream_rq_retry_success",
            "upstream_rq_retry_overflow",
            "upstream_rq_timeout",
            "upstream_rq_per_try_timeout",
            "upstream_rq_pending_overflow",
            "upstream_rq_pending_total",
            "upstream_cx_destroy_remote",
        )
        for gauge in ("upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active"):
            self.stats.gauge_set(gauge, 0)
        # What every request moves, bound once (``cell.value += 1``, no dict update per request);
        # a response status's counters are bound when it first comes (:meth:`status_cells`).
        self.rq_total: Cell = self.stats.cell("upstream_rq_total")
        self._rq_active_cell: Cell = self.stats.cell("upstream_rq_active", "gauge")
        self.rq_by_status: dict[int, tuple[Cell, ...]] = {}
        self._now: Callable[[], float] = trio.current_time  # (run() binds its clock's own)
        if config.health_checks:
            self.stats.declare(
                "health_check.attempt",
                "health_check.success",
                "health_check.failure",
                "health_check.network_failure",
            )
        if config.outlier_detection is not None:
            self.stats.declare(
                "outlier_detection.ejections_enforced_total",
                "outlier_detection.ejections_detected_consecutive_5xx",
                "outlier_detection.ejections_overflow",
            )
            self.stats.gauge_set("outlier_detection.ejections_active", 0)
        self.hosts: list[Host] = []
        self.breakers = config.circuit_breakers
        self._cx_active = 0
        self._rq_active = 0
        self._pending = 0
        self._retries_active = 0
        self._capacity = trio.lowlevel.ParkingLot()  # requests waiting for a connection slot
        self._rr_index = 0
        self._ring: tuple[list[int], list[Host]] | None = None
        self._maglev: tuple[tuple[int, ...], list[Host]] | None = None  # (ids of its hosts, table)
        self._plain = True  # one priority, equal weights, no locality weighting: the fast choice
        self.had_traffic = False  # no_traffic_interval applies until the first request
        self._nursery: trio.Nursery | None = None
        if config.type == "STATIC":
            self._set_hosts(
                [
                    (e.address.address, e.address.port_value, "", e, locality)
                    for locality in config.load_assignment.endpoints
                    for e in locality.lb_endpoints
                ]
            )

    # --- membership ---

    def _set_hosts(
        self, endpoints: list[tuple[str, int, str, LbEndpoint | None, LocalityLbEndpoints | None]]
    ) -> None:
        """Replace the host set, keeping the state of hosts that stay (a DNS refresh that returns
        the same addresses changes nothing)."""
        old = {(h.address, h.port): h for h in self.hosts}
        hosts = []
        for address, port, hostname, endpoint, locality in endpoints:
            host = old.pop((address, port), None)
            if host is None:
                host = Host(self, address, port, hostname, endpoint, locality)
                if self.config.health_checks:
                    host.failed_active_hc = host.pending_active_hc = True
            hosts.append(host)
        self._plain = (
            len({h.priority for h in hosts}) <= 1
            and len({h.weight for h in hosts}) <= 1
            and not self.config.locality_weighted
            and self.config.healthy_panic_threshold is None
        )
        self._maglev = None
        for gone in old.values():
            for conn in list(gone.idle):
                self._close_soon(conn)
        self.hosts = hosts
        self._ring = None
        self._update_membership()

    def _update_membership(self) -> None:
        self.stats.gauge_set("membership_total", len(self.hosts))
        self.stats.gauge_set("membership_healthy", sum(1 for h in self.hosts if h.available))
        if self.config.health_checks:
            self.stats.gauge_set("health_check.healthy", sum(1 for h in self.hosts if not h.failed_active_hc))

    # --- background work: DNS, health checks, outlier sweeps ---

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resolve, health-check and sweep until cancelled; ``started`` once the cluster is warm
        (resolved, and every host has had its first health check, each bounded by its timeout)."""
        self._now = trio.lowlevel.current_clock().current_time  # this run's clock, one call (release's)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.config.type in ("STRICT_DNS", "LOGICAL_DNS"):
                await self._resolve()
                nursery.start_soon(self._dns_loop)
            if self.config.health_checks:
                await self._health_check_round(self.config.health_checks[0])
                nursery.start_soon(self._health_check_loop, self.config.health_checks[0])
            if self.config.outlier_detection is not None:
                nursery.start_soon(self._outlier_sweep_loop, self.config.outlier_detection)
            nursery.start_soon(self._idle_watch_loop)
            task_status.started()
            await trio.sleep_forever()

    async def _resolve(self) -> None:
        endpoints: list[tuple[str, int, str, LbEndpoint | None, LocalityLbEndpoints | None]] = []
        for locality in self.config.load_assignment.endpoints:
            for endpoint in locality.lb_endpoints:
                name, port = endpoint.address.address, endpoint.address.port_value
                try:
                    with trio.fail_after(self.config.connect_timeout + 5.0):
                        addresses = await self.network.resolve(name, port)
                except (OSError, trio.TooSlowError):
                    self.stats.inc("update_failure")
                    endpoints.extend(  # keep what the last good answer gave
                        (h.address, h.port, h.hostname, h.endpoint, h.locality)
                        for h in self.hosts
                        if h.hostname == name
                    )
                    continue
                if self.config.type == "LOGICAL_DNS":
                    addresses = addresses[:1]  # Envoy: the first address of the latest answer
                endpoints.extend((address, port, name, endpoint, locality) for address in addresses)
        self.stats.inc("update_attempt")
        self._set_hosts(endpoints)

    async def _dns_loop(self) -> None:
        while True:
            await trio.sleep(DNS_REFRESH_SECONDS)
            await self._resolve()

    async def _health_check_loop(self, check: HealthCheck) -> None:
        while True:
            idle = check.no_traffic_interval is not None and not self.had_traffic
            await trio.sleep(check.no_traffic_interval if idle else check.interval)  # type: ignore[arg-type]  # idle implies it is set
            await self._health_check_round(check)

    async def _health_check_round(self, check: HealthCheck) -> None:
        async with trio.open_nursery() as nursery:
            for host in list(self.hosts):
                nursery.start_soon(self._health_check_host, check, host)

    async def _health_check_host(self, check: HealthCheck, host: Host) -> None:
        self.stats.inc("health_check.attempt")
        ok, network_failure = False, True
        with trio.move_on_after(check.timeout):
            endpoint = host.endpoint
            hc_port = endpoint.health_check_port if endpoint is not None else 0
            try:
                stream = await self._open_stream(host, hc_port or None)
            except ConnectFailure:
                stream = None
            if stream is not None:
                # Envoy's Host for a check: the endpoint's health check hostname, its hostname, or
                # the cluster's name
                host_header = (endpoint.health_check_hostname or endpoint.hostname) if endpoint else ""
                try:
                    ok = await _health_check_request(stream, check.path, host_header or self.name)
                    network_failure = False
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                    pass
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
        if ok:
            self.stats.inc("health_check.success")
            host.hc_failures = 0
            host.hc_successes += 1
            if host.failed_active_hc and (
                host.pending_active_hc or host.hc_successes >= check.healthy_threshold
            ):
                host.failed_active_hc = False
        else:
            self.stats.inc("health_check.failure")
            if network_failure:
                self.stats.inc("health_check.network_failure")
            host.hc_successes = 0
            host.hc_failures += 1
            if not host.failed_active_hc and host.hc_failures >= check.unhealthy_threshold:
                host.failed_active_hc = True
                for conn in list(host.idle):  # Envoy closes a failed host's idle connections
                    self._close_soon(conn)
        host.pending_active_hc = False
        self._update_membership()

    async def _outlier_sweep_loop(self, config: OutlierDetection) -> None:
        while True:
            await trio.sleep(config.interval)
            now = trio.current_time()
            for host in self.hosts:
                if host.ejected_until is not None and host.ejected_until <= now:
                    host.ejected_until = None
                    host.consecutive_5xx = 0
                    self.stats.gauge_add("outlier_detection.ejections_active", -1)
            self._update_membership()

    # --- outcomes, for outlier detection and /clusters ---

    def record_outcome(self, host: Host, status: int | None) -> None:
        """A request to ``host`` ended with ``status`` (None: no response — connect failure, reset
        or timeout, which outlier detection counts as a 5xx)."""
        host.rq_total += 1
        failed = status is None or status >= 500
        if failed:
            host.rq_error += 1
        else:
            host.rq_success += 1
        detection = self.config.outlier_detection
        if detection is None:
            return
        if not failed:
            host.consecutive_5xx = 0
            return
        host.consecutive_5xx += 1
        if host.consecutive_5xx >= detection.consecutive_5xx and host.ejected_until is None:
            self.stats.inc("outlier_detection.ejections_detected_consecutive_5xx")
            ejected = sum(1 for h in self.hosts if h.ejected_until is not None)
            allowed = max(1, len(self.hosts) * detection.max_ejection_percent // 100)
            if ejected >= allowed:
                self.stats.inc("outlier_detection.ejections_overflow")
                return
            host.times_ejected += 1
            host.ejected_until = trio.current_time() + detection.base_ejection_time * host.times_ejected
            self.stats.inc("outlier_detection.ejections_enforced_total")
            self.stats.inc("outlier_detection.ejections_enforced_consecutive_5xx")
            self.stats.gauge_add("outlier_detection.ejections_active", 1)
            self._update_membership()

    # --- load balancing ---

    def choose_host(self) -> Host | None:
        """A host for the next request, by ``lb_policy`` over the available hosts; None if none is."""
        self.had_traffic = True
        if not self._plain:
            return self._choose_weighted()
        hosts = self.hosts
        if len(hosts) == 1:  # one host (every policy picks it when it is available): no list built
            host = hosts[0]
            return host if not host.failed_active_hc and host.ejected_until is None else None
        available = [h for h in hosts if h.available]
        if not available:
            return None
        policy = self.config.lb_policy
        if len(available) == 1:
            return available[0]
        if policy == "ROUND_ROBIN":
            self._rr_index += 1
            return available[self._rr_index % len(available)]
        if policy == "LEAST_REQUEST":
            first, second = self.rng.sample(available, 2)
            return first if first.active_requests <= second.active_requests else second
        if policy == "RANDOM":
            return self.rng.choice(available)
        if policy == "MAGLEV":
            return self._maglev_pick(available, self.rng.getrandbits(64))
        return self._ring_pick(self.rng.getrandbits(64))

    def _choose_weighted(self) -> Host | None:
        """The general case, as Envoy's load balancers do it: a priority level by its health (with
        the overprovisioning factor 1.4, so a level at 71 % healthy still takes all its traffic),
        panic mode under ``healthy_panic_threshold``, a locality by weight times health (with
        ``locality_weighted_lb_config``), then a host by ``lb_policy`` and endpoint weights."""
        hosts = self.hosts
        if not hosts:
            return None
        levels = sorted({h.priority for h in hosts})
        candidates = hosts
        if len(levels) > 1:
            healths = []
            for level in levels:
                members = [h for h in hosts if h.priority == level]
                healths.append(min(100.0, 140.0 * sum(h.available for h in members) / len(members)))
            total = sum(healths)
            loads, remaining = [], 100.0
            for health in healths:
                share = min(remaining, health) if total >= 100 else (health * 100 / total if total else 0.0)
                loads.append(share)
                remaining -= share
            point, chosen = self.rng.uniform(0, 100), levels[0] if not total else levels[-1]
            for level, load in zip(levels, loads, strict=True):
                if point < load:
                    chosen = level
                    break
                point -= load
            candidates = [h for h in hosts if h.priority == chosen]
        available = [h for h in candidates if h.available]
        threshold = self.config.healthy_panic_threshold
        if threshold is not None and len(available) * 100 < threshold * len(candidates):
            self.stats.inc("lb_healthy_panic")
            available = candidates  # Envoy's panic: every host, healthy or not
        if not available:
            return None
        if self.config.locality_weighted:
            by_locality: dict[int, list[Host]] = {}
            for h in available:
                by_locality.setdefault(id(h.locality), []).append(h)
            groups = list(by_locality.values())
            weights = []
            for group in groups:
                locality = group[0].locality
                size = sum(1 for h in candidates if h.locality is locality)
                weight = locality.load_balancing_weight if locality is not None else 1
                weights.append(weight * min(1.0, 1.4 * len(group) / size))
            available = self.rng.choices(groups, weights)[0]
        if len(available) == 1:
            return available[0]
        policy = self.config.lb_policy
        if (
            policy == "ROUND_ROBIN"
        ):  # smooth weighted round robin (nginx's; Envoy's EDF gives the same shares)
            total_weight = 0
            best = available[0]
            for h in available:
                h.current_weight += h.weight
                total_weight += h.weight
                if h.current_weight > best.current_weight:
                    best = h
            best.current_weight -= total_weight
            return best
        if policy == "LEAST_REQUEST":
            first, second = self.rng.choices(available, [h.weight for h in available], k=2)
            return first if first.active_requests <= second.active_requests else second
        if policy == "MAGLEV":
            return self._maglev_pick(available, self.rng.getrandbits(64))
        if policy == "RING_HASH":
            return self._ring_pick(self.rng.getrandbits(64))
        return self.rng.choices(available, [h.weight for h in available])[0]

    def _maglev_pick(self, available: list[Host], key: int) -> Host:
        """Maglev (Eisenbud et al., NSDI 2016), as Envoy builds it: a table of ``table_size`` slots
        filled by each host's permutation (offset and skip from its address), hosts taking turns
        in proportion to their weights; rebuilt when the set of available hosts changes."""
        ids = tuple(id(h) for h in available)
        if self._maglev is None or self._maglev[0] != ids:
            size = self.config.maglev_table_size
            n = len(available)
            offsets, skips = [], []
            for h in available:
                digest = hashlib.blake2b(str(h).encode(), digest_size=16).digest()
                offsets.append(int.from_bytes(digest[:8], "big") % size)
                skips.append(int.from_bytes(digest[8:], "big") % (size - 1) + 1)
            weights = [h.weight for h in available]
            top = max(weights)
            table: list[Host | None] = [None] * size
            nexts, credit, filled = [0] * n, [0] * n, 0
            while filled < size:
                for i in range(n):
                    credit[i] += weights[i]
                    if credit[i] < top:
                        continue
                    credit[i] -= top
                    slot = (offsets[i] + nexts[i] * skips[i]) % size
                    while table[slot] is not None:
                        nexts[i] += 1
                        slot = (offsets[i] + nexts[i] * skips[i]) % size
                    table[slot] = available[i]
                    nexts[i] += 1
                    filled += 1
                    if filled == size:
                        break
            self._maglev = (ids, [h for h in table if h is not None])
        return self._maglev[1][key % len(self._maglev[1])]

    def _ring_pick(self, key: int) -> Host | None:
        if self._ring is None:
            points: list[tuple[int, Host]] = []
            per_host = max(1, RING_SIZE // max(1, len(self.hosts)))
            for host in self.hosts:
                for i in range(per_host):
                    digest = hashlib.blake2b(f"{host}_{i}".encode(), digest_size=8).digest()
                    points.append((int.from_bytes(digest, "big"), host))
            points.sort(key=lambda p: p[0])
            self._ring = ([p[0] for p in points], [p[1] for p in points])
        hashes, owners = self._ring
        start = bisect.bisect_left(hashes, key)
        for i in range(len(owners)):  # walk on past unavailable hosts, as Envoy's ring does
            host = owners[(start + i) % len(owners)]
            if host.available:
                return host
        return None

    # --- circuit breakers ---

    def start_request(self) -> None:
        """Count a request in (``max_requests``); ``Overflow`` if the breaker is open."""
        if self._rq_active >= self.breakers.max_requests:
            self.stats.inc("upstream_rq_pending_overflow")
            raise Overflow("max_requests")
        self._rq_active += 1
        self._rq_active_cell.value += 1

    def end_request(self) -> None:
        self._rq_active -= 1
        self._rq_active_cell.value -= 1

    def status_cells(self, status: int) -> tuple[Cell, ...]:
        """The counters a response with ``status`` moves (``upstream_rq_2xx``, ``upstream_rq_200``,
        ``upstream_rq_completed``), bound the first time it comes (listed from then on, as
        :meth:`.Scope.count` would list them; at most 900: llhttp's statuses are three digits)."""
        cells = self.rq_by_status.get(status)
        if cells is None:
            stats = self.stats
            cells = self.rq_by_status[status] = (
                stats.cell(f"upstream_rq_{status // 100}xx"),
                stats.cell(f"upstream_rq_{status}"),
                stats.cell("upstream_rq_completed"),
            )
        return cells

    def try_start_retry(self) -> bool:
        if self._retries_active >= self.breakers.max_retries:
            self.stats.inc("upstream_rq_retry_overflow")
            return False
        self._retries_active += 1
        return True

    def end_retry(self) -> None:
        self._retries_active -= 1

    # --- the pool ---

    def idle_connection(self, host: Host) -> UpstreamConnection | None:
        """:meth:`acquire`'s common case without its coroutine: ``host``'s newest pooled HTTP/1.1
        connection over a kernel or stack socket, when one is there and no watcher reads it (else
        None: the caller acquires)."""
        idle = host.idle
        while idle and self.config.http2 is None:
            conn = idle[-1]
            if conn.watch_scope is not None or conn.raw is None:
                return None  # acquire() waits for the watcher; a TLS stream: not this case
            idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self, host: Host, *, fresh: bool = False) -> UpstreamConnection:
        """A connection to ``host``: an idle pooled one (unless ``fresh``), or a new one within
        ``max_connections`` (waiting as a pending request, within ``max_pending_requests``, when at
        the limit).  For an HTTP/2 cluster, a new stream of the host's shared connection."""
        if self.config.http2 is not None:
            return await self._acquire_h2(host)
        while True:
            while host.idle and not fresh:
                conn = host.idle.pop()
                if conn.watch_scope is not None:
                    # The watcher is inside a receive: it must be out of it before we read.
                    conn.watch_scope.cancel()
                    await conn.watch_done.wait()
                if not conn.closed:
                    return conn
            if self._cx_active < self.breakers.max_connections:
                return await self._connect(host)
            self.stats.inc("upstream_cx_overflow")
            if self._pending >= self.breakers.max_pending_requests:
                self.stats.inc("upstream_rq_pending_overflow")
                raise Overflow("max_pending_requests")
            self._pending += 1
            self.stats.inc("upstream_rq_pending_total")
            self.stats.gauge_add("upstream_rq_pending_active", 1)
            try:
                await self._capacity.park()
            finally:
                self._pending -= 1
                self.stats.gauge_add("upstream_rq_pending_active", -1)

    async def _acquire_h2(self, host: Host) -> UpstreamConnection:
        """A stream on one of ``host``'s HTTP/2 connections with room, else on a new one (within
        ``max_connections``: beyond it the request overflows)."""
        while True:
            for h2conn in host.h2_connections:
                if h2conn.can_open():
                    return _H2StreamConnection(h2conn.open_stream(), host)
            if host.h2_connecting is None:
                break
            await host.h2_connecting.wait()  # one connect at a time: its streams are for everyone
        options = self.config.http2
        assert options is not None and self._nursery is not None
        if self._cx_active >= self.breakers.max_connections:
            self.stats.inc("upstream_cx_overflow")
            raise Overflow("max_connections")
        self._cx_opened(host)
        connecting = host.h2_connecting = trio.Event()
        try:
            stream = await self._open_stream(host)
            h2conn = H2Upstream(stream, options, tls=self.tls_context is not None)
            await h2conn.start()
        except BaseException:
            self.tunnel_closed(host)
            raise
        finally:
            host.h2_connecting = None
            connecting.set()
        host.h2_connections.append(h2conn)
        self._nursery.start_soon(self._run_h2, host, h2conn)
        return _H2StreamConnection(h2conn.open_stream(), host)

    async def _run_h2(self, host: Host, h2conn: H2Upstream) -> None:
        try:
            await h2conn.run()
        finally:
            host.h2_connections.remove(h2conn)
            self.tunnel_closed(host)

    async def _connect(self, host: Host) -> UpstreamConnection:
        self._cx_opened(host)
        conn = UpstreamConnection(_PENDING_STREAM, host)
        try:
            conn.stream = await self._open_stream(host)
            conn.raw, conn.io = stream_io(conn.stream)
        except BaseException:
            conn.closed = True
            self.connection_closed(conn)
            raise
        return conn

    async def open_tunnel(self, host: Host) -> trio.abc.Stream | None:
        """A connection for ``tcp_proxy`` (not pooled); None when ``max_connections`` is reached.
        The caller calls :meth:`tunnel_closed` when it is done with it."""
        if self._cx_active >= self.breakers.max_connections:
            self.stats.inc("upstream_cx_overflow")
            return None
        self._cx_opened(host)
        try:
            return await self._open_stream(host)
        except BaseException:
            self.tunnel_closed(host)
            raise

    def tunnel_closed(self, host: Host) -> None:
        self._cx_active -= 1
        host.cx_active -= 1
        self.stats.gauge_add("upstream_cx_active", -1)
        self._capacity.unpark()

    def _cx_opened(self, host: Host) -> None:
        self._cx_active += 1
        host.cx_active += 1
        self.stats.inc("upstream_cx_total")
        self.stats.gauge_add("upstream_cx_active", 1)

    async def _open_stream(self, host: Host, port: int | None = None) -> trio.abc.Stream:
        """A connected (and, for a TLS cluster, handshaken) stream within ``connect_timeout``
        (to ``port`` instead of the host's: a health check's ``port_value``)."""
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self.config.connect_timeout):
                stream = await self.network.connect(host.address, port or host.port)
                if self.tls_context is not None:
                    ssl_stream = trio.SSLStream(stream, self.tls_context, server_hostname=self.tls_sni)
                    stream = ssl_stream
                    await ssl_stream.do_handshake()
                    tls = self.config.transport_socket
                    if tls is not None and not peer_san_matches(
                        tls.common_tls_context, ssl_stream.getpeercert()
                    ):
                        self.stats.inc("ssl.fail_verify_san")
                        raise OSError(f"{host}: certificate matches no match_typed_subject_alt_names")
                return stream
        except trio.TooSlowError:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            self.stats.inc("upstream_cx_connect_timeout")
            self.stats.inc("upstream_cx_connect_fail")
            raise ConnectFailure(f"connect to {host} timed out", timeout=True) from None
        except (OSError, trio.BrokenResourceError) as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            self.stats.inc("upstream_cx_connect_fail")
            raise ConnectFailure(f"connect to {host}: {exc}") from None

    def connection_closed(self, conn: UpstreamConnection) -> None:
        """Bookkeeping when a pooled connection ends (``UpstreamConnection.aclose`` calls it)."""
        if conn in conn.host.idle:
            conn.host.idle.remove(conn)
        self.tunnel_closed(conn.host)

    def release(self, conn: UpstreamConnection, now: float | None = None) -> None:
        """Return ``conn`` after a request: pooled when h11 says it can carry another, else closed.
        ``now``: the run clock's time if the caller has just read it (the pool's ``idle_since``)."""
        if conn.closed:
            return
        host = conn.host
        if conn.reusable and host in self.hosts and not host.failed_active_hc and self._nursery is not None:
            if conn.plain:
                conn.plain = False  # h11 stayed idle: ready as it is
            else:
                conn.h11.start_next_cycle()
            if len(host.idle) < MAX_IDLE_PER_HOST:
                conn.idle_since = self._now() if now is None else now
                host.idle.append(conn)
                if self._pending:  # a request waits for a connection (unpark() costs even with none)
                    self._capacity.unpark()
                return
        self._close_soon(conn)

    def _close_soon(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if self._nursery is not None:
            self._nursery.start_soon(conn.aclose)
        else:  # not running: account for it now; the stream is garbage
            conn.closed = True
            self.connection_closed(conn)

    async def _idle_watch_loop(self) -> None:
        """Put a watcher on every connection idle in the pool for :data:`IDLE_WATCH_AFTER`.

        A busy connection goes back out within milliseconds, and watching it (a task started and
        cancelled per request) would cost more than the request's own I/O; an upstream that closes
        an idle connection does so after its keep-alive timeout (seconds), by which time it is
        watched.  The rare close in between is caught when the request on it fails before any
        response byte: a request without a body is then sent once more on a fresh connection."""
        assert self._nursery is not None
        while True:
            await trio.sleep(IDLE_WATCH_AFTER / 2)
            watched_before = trio.current_time() - IDLE_WATCH_AFTER
            for host in self.hosts:
                for conn in host.idle:
                    if conn.watch_scope is None and conn.idle_since <= watched_before:
                        conn.watch_scope = trio.CancelScope()
                        conn.watch_done = trio.Event()
                        self._nursery.start_soon(self._watch_idle, conn, conn.watch_scope)

    async def _watch_idle(self, conn: UpstreamConnection, scope: trio.CancelScope) -> None:
        """While ``conn`` sits in the pool: if the upstream closes it (or sends anything, which an
        idle HTTP/1.1 connection must not), drop it from the pool.  ``acquire`` cancels ``scope``
        and waits for ``conn.watch_done`` before it uses the connection."""
        try:
            with scope:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await conn.stream.receive_some(1)
                self.stats.inc("upstream_cx_destroy_remote")
                if conn in conn.host.idle:
                    conn.host.idle.remove(conn)
                await conn.aclose()
        finally:
            conn.watch_scope = None
            conn.watch_done.set()

    async def aclose(self) -> None:
        for host in self.hosts:
            for conn in list(host.idle):
                await conn.aclose()


class _NoStream(trio.abc.Stream):
    """Placeholder stream of a connection still connecting (never used for I/O)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise trio.ClosedResourceError("not connected")

    async def wait_send_all_might_not_block(self) -> None:
        raise trio.ClosedResourceError("not connected")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise trio.ClosedResourceError("not connected")

    async def aclose(self) -> None:
        return None


_PENDING_STREAM = _NoStream()
_DONE = trio.Event()
_DONE.set()


async def _health_check_request(stream: trio.abc.Stream, path: str, host_header: str) -> bool:
    """One ``GET path``; True for a 200 (Envoy's default expected status range is [200, 201))."""
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=path,
        headers=[("host", host_header), ("user-agent", "Envoy/HC"), ("connection", "close")],
    )
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            received += len(data)
            if received > HEALTH_CHECK_MAX_RESPONSE:
                return False
            conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too
            continue
        if isinstance(event, h11.Response):
            return event.status_code == 200
        if isinstance(event, h11.ConnectionClosed):
            return False


class ClusterManager:
    """Every cluster of a config, by name, and their background work."""

    def __init__(
        self,
        clusters: list[ClusterRuntime],
    ) -> None:
        self.clusters = {c.name: c for c in clusters}

    def __getitem__(self, name: str) -> ClusterRuntime:
        return self.clusters[name]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every cluster; ``started`` when all are warm."""
        async with trio.open_nursery() as nursery:
            for cluster in self.clusters.values():
                await nursery.start(cluster.run)
            task_status.started()

    def render_clusters(self) -> str:
        """Envoy's ``/clusters`` text: ``cluster::host:port::stat::value`` lines."""
        lines: list[str] = []
        for cluster in self.clusters.values():
            cb = cluster.breakers
            lines.append(f"{cluster.name}::default_priority::max_connections::{cb.max_connections}")
            lines.append(f"{cluster.name}::default_priority::max_pending_requests::{cb.max_pending_requests}")
            lines.append(f"{cluster.name}::default_priority::max_requests::{cb.max_requests}")
            lines.append(f"{cluster.name}::default_priority::max_retries::{cb.max_retries}")
            for host in cluster.hosts:
                prefix = f"{cluster.name}::{host}"
                hostname = (host.endpoint.hostname if host.endpoint is not None else "") or host.hostname
                if hostname:  # Envoy's: the endpoint's hostname (here also a DNS endpoint's name)
                    lines.append(f"{prefix}::hostname::{hostname}")
                lines.append(f"{prefix}::cx_active::{host.cx_active}")
                lines.append(f"{prefix}::rq_active::{host.active_requests}")
                lines.append(f"{prefix}::rq_success::{host.rq_success}")
                lines.append(f"{prefix}::rq_error::{host.rq_error}")
                lines.append(f"{prefix}::rq_total::{host.rq_total}")
                lines.append(f"{prefix}::health_flags::{host.health_flags}")
        return "\n".join(lines) + "\n"

    def clusters_json(self) -> dict[str, object]:
        """``/clusters?format=json``, shaped like Envoy's (cluster_statuses / host_statuses)."""
        statuses = []
        for cluster in self.clusters.values():
            hosts = []
            for host in cluster.hosts:
                hosts.append(
                    {
                        "address": {"socket_address": {"address": host.address, "port_value": host.port}},
                        "hostname": host.hostname,
                        "health_status": {
                            "failed_active_health_check": host.failed_active_hc,
                            "failed_outlier_check": host.ejected_until is not None,
                            "pending_active_hc": host.pending_active_hc,
                            "eds_health_status": "HEALTHY" if host.available else "UNHEALTHY",
                        },
                        "stats": [
                            {"name": "cx_active", "value": host.cx_active},
                            {"name": "rq_active", "value": host.active_requests},
                            {"name": "rq_success", "value": host.rq_success},
                            {"name": "rq_error", "value": host.rq_error},
                            {"name": "rq_total", "value": host.rq_total},
                        ],
                    }
                )
            statuses.append({"name": cluster.name, "host_statuses": hosts})
        return {"cluster_statuses": statuses}
