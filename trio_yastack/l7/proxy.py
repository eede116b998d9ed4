"""The Envoy-style proxy: listeners, filter chains, clusters and the admin endpoint of one bootstrap,
running in one trio run, over kernel sockets or the user-space stack (:mod:`.network`).

A connection's way through it, as in Envoy: the listener accepts it; when any filter chain names
``server_names`` the TLS inspector reads the ClientHello's SNI (:mod:`trio_yastack.tls.client_hello`)
and the matching chain is chosen (exact name, then the longest ``*.suffix`` wildcard, then a chain
without names); the chain's ``transport_socket`` terminates TLS with its own certificate and ALPN; its
filter — the HTTP connection manager (:mod:`.http_proxy`) or ``tcp_proxy`` (:mod:`.tcp_proxy`) —
takes the stream.  A connection that matches no chain is closed, counted ``no_filter_chain_match``.

HTTP/2 to clients (ALPN ``h2``, h2c prior knowledge) is served by :mod:`.h2_downstream`; a chain's
``alpn_protocols`` other than ``h2`` and ``http/1.1`` are not offered (the proxy says so when it starts).

On several cores (``yastack proxy --cores N``, :mod:`trio_yastack.dispatch._launcher`) each core is a
process running its own :class:`Proxy`: its own listeners (``SO_REUSEPORT`` on kernel sockets, its
own stack on the bypass path), connection pools, health checks and outlier detection, as each Envoy
worker has its own.  Core 0 alone opens the admin endpoint and answers for all (:mod:`._cores`).

Shutdown is Envoy's drain: stop accepting, close idle keep-alive connections, answer in-flight
requests with ``connection: close``, and after ``drain_time`` cancel whatever is still open.
"""

from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import json
import os
import random
import signal
import ssl
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from trio_yastack.dispatch._launcher import worker_ready
from trio_yastack.tls.client_hello import peek_client_hello
from trio_yastack.tls.contexts import (
    SERVED_ALPN,
    TlsSetupError,
    client_context,
    peer_san_matches,
    server_context,
)

from ._cores import CoreLinks, CorePeers, serve_core_link
from .admin import AdminServer, core_answer
from .config import Bootstrap, FilterChain, HttpConnectionManager, Listener, SocketAddress
from .http_proxy import HttpConnectionManagerRuntime, ProxyLimits, RequestIds
from .network import Network, is_loopback
from .stats import Scope, Stats
from .tcp_proxy import TcpProxyRuntime
from .upstream import ClusterManager, ClusterRuntime

__all__ = ["Proxy", "ProxyState", "main_proxy"]

LISTENER_FILTERS_TIMEOUT = (
    15.0  # Envoy's listener_filters_timeout default: the ClientHello must arrive by then
)
TLS_HANDSHAKE_TIMEOUT = 10.0
FLUSH_INTERVAL = 1.0
MAX_LOGGED_ERRORS = 10
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class Cancellable(Protocol):
    """What :attr:`ProxyState.idle_waits` holds: a ``trio.CancelScope``, or anything whose
    ``cancel()`` ends its wait as a scope's would."""

    def cancel(self) -> None: ...


@dataclass
class ProxyState:
    """What the admin endpoint reports and changes, and what every filter consults."""

    config_path: str = ""
    started_wall: float = field(default_factory=time.time)
    initialized: bool = False
    shutting_down: bool = False
    health_check_failed: bool = False
    #: the waits for a next request (or an HTTP/2 connection's next frame) that a drain ends at
    #: once: their cancel scopes, or the connections that wait without one (``_Downstream``)
    idle_waits: set[Cancellable] = field(default_factory=set)
    #: where fire-and-forget work (request mirrors) runs, for the life of the proxy; None before run()
    background: trio.Nursery | None = None

    @property
    def draining(self) -> bool:
        """Responses say ``connection: close`` (shutting down, or health checks failed on purpose)."""
        return self.shutting_down or self.health_check_failed

    @property
    def server_state(self) -> str:
        if not self.initialized:
            return "PRE_INITIALIZING"
        return "DRAINING" if self.draining else "LIVE"

    def start_drain(self) -> None:
        self.shutting_down = True
        for scope in list(self.idle_waits):
            scope.cancel()


Filter = HttpConnectionManagerRuntime | TcpProxyRuntime


@dataclass
class _Chain:
    config: FilterChain
    filter: Filter
    tls_context: ssl.SSLContext | None


class ListenerRuntime:
    """One listener: its socket, its filter chains, and the connections it accepted."""

    def __init__(self, config: Listener, chains: list[_Chain], stats: Stats, limits: ProxyLimits) -> None:
        self.config = config
        self.chains = chains
        self.stats: Scope = stats.scope("listener", f"{config.address.address}_{config.address.port_value}")
        self.stats.declare(
            "downstream_cx_total",
            "no_filter_chain_match",
            "downstream_pre_cx_timeout",
            "ssl.connection_error",
            "ssl.handshake",
        )
        self.stats.gauge_set("downstream_cx_active", 0)
        self.inspect_sni = config.tls_inspector or any(c.config.needs_inspector for c in chains)
        # chains grouped by server name (Envoy's first step); the later steps pick within a group
        self._exact: dict[str, list[_Chain]] = {}
        self._wildcard: dict[str, list[_Chain]] = {}
        self._any: list[_Chain] = []
        for chain in chains:
            if not chain.config.server_names:
                self._any.append(chain)
            for name in chain.config.server_names:
                name = name.lower()
                if name.startswith("*."):
                    self._wildcard.setdefault(name[1:], []).append(chain)
                else:
                    self._exact.setdefault(name, []).append(chain)
        self._suffixes = sorted(self._wildcard, key=len, reverse=True)
        self._default = self.match(None)
        self._slots = trio.Semaphore(limits.max_downstream_connections)
        self.active = 0
        self.idle = trio.Event()
        self.idle.set()
        self.socket: trio.SocketListener | None = None

    def match(
        self, server_name: str | None, transport: str = "raw_buffer", alpn: tuple[str, ...] = ()
    ) -> _Chain | None:
        """Envoy's filter chain match: the most specific server name group (exact, then the
        longest wildcard, then chains without server_names), then within it the chains for this
        ``transport`` (else those without one), then those sharing an ALPN protocol with the
        client's offer (else those without application_protocols); None when a step leaves none."""
        group = self._any
        if server_name:
            found = self._exact.get(server_name)
            if found is None:
                suffix = next((s for s in self._suffixes if server_name.endswith(s)), None)
                found = self._wildcard[suffix] if suffix is not None else None
            if found is not None:
                group = found
        group = [c for c in group if c.config.transport_protocol == transport] or [
            c for c in group if c.config.transport_protocol is None
        ]
        offered = set(alpn)
        group = [c for c in group if offered.intersection(c.config.application_protocols)] or [
            c for c in group if not c.config.application_protocols
        ]
        return group[0] if group else None

    async def accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        """Accept until the listener closes; at most ``max_downstream_connections`` at a time (the
        rest wait in the kernel's or the stack's backlog)."""
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                self._slots.release()
                return
            except OSError as exc:
                self._slots.release()
                if exc.errno in _ACCEPT_RETRY_ERRNOS:  # out of descriptors or memory: back off, go on
                    self.stats.inc("downstream_cx_overflow")
                    await trio.sleep(0.1)
                    continue
                raise
            self.active += 1
            self.idle = trio.Event() if self.active == 1 else self.idle
            connections.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.stats.inc("downstream_cx_total")
        self.stats.gauge_add("downstream_cx_active", 1)
        transport: trio.abc.Stream = stream
        try:
            try:
                remote = str(stream.socket.getpeername()[0])
            except OSError:
                return  # reset before we looked
            chain = self._default if len(self.chains) > 1 or self.inspect_sni else self.chains[0]
            if self.inspect_sni:
                with trio.move_on_after(LISTENER_FILTERS_TIMEOUT) as waited:
                    info, transport = await peek_client_hello(stream)
                if waited.cancelled_caught:
                    self.stats.inc("downstream_pre_cx_timeout")
                    return
                if info is None:
                    chain = self.match(None, "raw_buffer")
                else:
                    chain = self.match(info.server_name, "tls", info.alpn_protocols)
            if chain is None:
                self.stats.inc("no_filter_chain_match")
                return
            scheme = "http"
            if chain.tls_context is not None:
                ssl_stream = trio.SSLStream(
                    transport, chain.tls_context, server_side=True, https_compatible=True
                )
                with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT) as waited:
                    await ssl_stream.do_handshake()
                if waited.cancelled_caught:
                    self.stats.inc("ssl.connection_error")
                    return
                tls = chain.config.transport_socket
                if tls is not None and not peer_san_matches(tls.common_tls_context, ssl_stream.getpeercert()):
                    self.stats.inc("ssl.fail_verify_san")  # Envoy's name; the client sees a close
                    return
                self.stats.inc("ssl.handshake")
                transport, scheme = ssl_stream, "https"
            await chain.filter.serve_connection(transport, remote, scheme)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
            if isinstance(transport, trio.SSLStream):
                self.stats.inc("ssl.connection_error")
        except Exception:
            # A bug in a filter costs this connection, never the proxy and its other clients; it
            # is counted and its traceback printed (the first few, so a storm cannot flood stderr).
            self.stats.inc("downstream_cx_handler_error")
            if self.stats.get("downstream_cx_handler_error") <= MAX_LOGGED_ERRORS:
                traceback.print_exc(file=sys.stderr)
        finally:
            self.stats.gauge_add("downstream_cx_active", -1)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(transport)
            self._slots.release()
            self.active -= 1
            if self.active == 0:
                self.idle.set()


class Proxy:
    """One bootstrap, live.  ``await proxy.run(...)`` serves until the shutdown trigger, then drains."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        network: Network | None = None,
        limits: ProxyLimits | None = None,
        config_path: str = "",
        rng: random.Random | None = None,
        warn: Callable[[str], None] | None = None,
        core: int | None = None,
        peers: CorePeers | None = None,
        quit: Callable[[], None] | None = None,
    ) -> None:
        """``core``: this process's core with ``--cores N`` (listeners share their kernel ports
        with SO_REUSEPORT; only core 0 opens the admin endpoint, with ``peers``, its links to the
        others); ``quit``: what ``POST /quitquitquit`` does instead of :meth:`shutdown` (drain
        every core)."""
        self.bootstrap = bootstrap
        self.core = core
        self.peers = peers
        self._quit = quit
        self.network = network or Network()
        self.limits = limits or ProxyLimits()
        self.rng = rng or random.Random()
        self.stats = Stats()
        self.state = ProxyState(config_path=config_path)
        self.warnings: list[str] = []
        clusters = []
        for cluster in bootstrap.clusters:
            context = None
            if cluster.transport_socket is not None:
                context = client_context(cluster.transport_socket)
                if cluster.transport_socket.common_tls_context.trusted_ca is None:
                    self.warnings.append(
                        f"cluster {cluster.name}: upstream TLS without validation_context.trusted_ca: "
                        "the upstream's certificate is not verified (as in Envoy)"
                    )
            clusters.append(
                ClusterRuntime(cluster, self.network, self.stats, tls_context=context, rng=self.rng)
            )
        self.clusters = ClusterManager(clusters)
        self.filters: list[Filter] = []
        self.listeners: list[ListenerRuntime] = []
        for listener in bootstrap.listeners:
            chains = []
            for chain in listener.filter_chains:
                tls = None
                if chain.transport_socket is not None:
                    tls = server_context(chain.transport_socket)
                    dropped = [
                        p
                        for p in chain.transport_socket.common_tls_context.alpn_protocols
                        if p not in SERVED_ALPN
                    ]
                    if dropped:
                        self.warnings.append(
                            f"listener {listener.name}: ALPN {', '.join(dropped)} not served "
                            f"(the proxy speaks {' and '.join(SERVED_ALPN)}); offering the others it lists"
                        )
                if isinstance(chain.filter, HttpConnectionManager):
                    runtime: Filter = HttpConnectionManagerRuntime(
                        chain.filter,
                        self.clusters,
                        self.stats,
                        self.state,
                        limits=self.limits,
                        rng=self.rng,
                        runtime=bootstrap.runtime_value,
                        # x-request-id from the system's CSPRNG, unless a (seeded) rng was given
                        request_ids=RequestIds() if rng is None else None,
                    )
                else:
                    runtime = TcpProxyRuntime(chain.filter, self.clusters, self.stats)
                self.filters.append(runtime)
                chains.append(_Chain(chain, runtime, tls))
            self.listeners.append(ListenerRuntime(listener, chains, self.stats, self.limits))
        self.stats.scope("server").gauge_set("state", 2)  # Envoy: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING
        self._stop = trio.Event()
        for line in self.warnings:
            (warn or _stderr)(line)

    def shutdown(self) -> None:
        """Begin the graceful drain (what SIGTERM and ``POST /quitquitquit`` do)."""
        self._stop.set()

    async def run(
        self,
        *,
        shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
        drain_time: float = 5.0,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Warm the clusters, open the admin endpoint and the listeners, serve; ``started`` gets
        one line per listening socket.  Returns after the drain."""
        server = self.stats.scope("server")
        async with trio.open_nursery() as background:
            await background.start(self.clusters.run)
            self.state.background = background
            for runtime in self.filters:  # jwt_authn's async_fetch: the JWKS before the listeners
                if isinstance(runtime, HttpConnectionManagerRuntime) and runtime.filters is not None:
                    await runtime.filters.start(background)
            background.start_soon(self._flush_logs_loop)
            opened: list[tuple[ListenerRuntime, trio.SocketListener]] = []
            admin: AdminServer | None = None
            lines: list[str] = []
            try:
                if self.bootstrap.admin is not None and not self.core:
                    # core 0's alone: no SO_REUSEPORT, so a second proxy cannot share it unnoticed
                    admin_listener = await self._listen("admin", self.bootstrap.admin.address, shared=False)
                    admin = AdminServer(
                        self.bootstrap,
                        self.stats,
                        self.clusters,
                        self.state,
                        self._quit or self.shutdown,
                        peers=self.peers,
                    )
                    background.start_soon(admin.serve, admin_listener)
                    lines.append(f"admin on http://{self._where(self.bootstrap.admin.address)}")
                for listener in self.listeners:
                    sock = await self._listen(listener.config.name, listener.config.address)
                    opened.append((listener, sock))
                    tls = any(c.tls_context is not None for c in listener.chains)
                    kinds = sorted({type(c.filter).__name__ for c in listener.chains})
                    what = "tcp_proxy" if kinds == ["TcpProxyRuntime"] else ("https" if tls else "http")
                    lines.append(
                        f"listener {listener.config.name}: {what}://{self._where(listener.config.address)}"
                    )
            except BaseException:
                for _, sock in opened:
                    await sock.aclose()
                raise
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener, sock in opened:
                        accepting.start_soon(listener.accept_loop, sock, connections)
                    self.state.initialized = True
                    server.gauge_set("state", 0)
                    task_status.started(lines)
                    if shutdown_trigger is not None:
                        accepting.start_soon(_set_when_done, shutdown_trigger, self._stop)
                    await self._stop.wait()
                    # Drain: no new connections, idle keep-alive ones closed, the rest told to close.
                    self.state.start_drain()
                    server.gauge_set("state", 1)
                    for _, sock in opened:
                        await sock.aclose()
                with trio.move_on_after(drain_time):
                    for listener, _ in opened:
                        await listener.idle.wait()
                connections.cancel_scope.cancel()
            for runtime in self.filters:
                runtime.access_log.close()  # flushes, and closes the files it opened
            if admin is not None:
                admin.access_log.close()
            await self.clusters_aclose()
            background.cancel_scope.cancel()

    async def clusters_aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for cluster in self.clusters.clusters.values():
                await cluster.aclose()

    async def _flush_logs_loop(self) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            for runtime in self.filters:
                runtime.flush_logs()

    def _where(self, address: SocketAddress) -> str:
        host = address.address
        shown = host
        if host == "0.0.0.0" and self.network.on_stack(host) and self.network.stack is not None:
            shown = str(self.network.stack.address)
        return f"{shown}:{address.port_value} ({self.network.describe(host)})"

    async def _listen(self, name: str, address: SocketAddress, shared: bool = True) -> trio.SocketListener:
        """``shared``: every core listens on it (SO_REUSEPORT with ``--cores``)."""
        try:
            return await self.network.open_listener(
                address.address, address.port_value, reuse_port=shared and self.core is not None
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"{name} {address.address}:{address.port_value}: {exc.strerror or exc}"
            ) from None


async def _set_when_done(trigger: Callable[[], Awaitable[Any]], event: trio.Event) -> None:
    await trigger()
    event.set()


def _stderr(line: str) -> None:
    print(f"# warning: {line}", file=sys.stderr, flush=True)


# --- yastack proxy ---


def add_proxy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nic",
        default=None,
        help="run listeners and upstreams on the user-space stack on this NIC port (e.g. tap:yas0); "
        "loopback addresses stay on the kernel.  Default: kernel sockets only",
    )
    parser.add_argument("--ip", default="198.18.0.2/24", help="the stack's address/prefix (with --nic)")
    parser.add_argument("--gateway", default=None, help="the stack's default gateway (with --nic)")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME=IPV4",
        help="a name for the stack's resolver (STRICT_DNS clusters on the stack), repeatable",
    )
    parser.add_argument(
        "--drain-time", type=float, default=5.0, help="seconds in-flight requests get on SIGTERM"
    )
    parser.add_argument(
        "--max-request-body",
        type=int,
        default=ProxyLimits().max_request_body,
        help="bytes; larger requests get 413",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=ProxyLimits().max_downstream_connections,
        help="open client connections per listener; more wait in the backlog",
    )
    parser.add_argument(
        "--check-only", action="store_true", help="load everything (config, certificates), then exit"
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=1,
        help="proxies, one process per core (SO_REUSEPORT on kernel sockets; with --nic a stack "
        "per core, a TAP gets a queue each); core 0's admin answers for all",
    )
    from trio_yastack.journey import add_observability_options

    add_observability_options(parser)  # --trace, --journey, --break, --control (with --nic)


def main_proxy(args: argparse.Namespace) -> int:
    """``yastack proxy -c CONFIG``: exit 0 after a graceful drain, 1 on a bad config or set-up error."""
    from trio_yastack.l7.config import load_config_or_report

    bootstrap = load_config_or_report(args.config, check_files=True)
    if bootstrap is None:
        return 1
    if args.drain_time < 0 or args.max_request_body < 0 or args.max_connections < 1 or args.cores < 1:
        print(
            "yastack proxy: --drain-time and --max-request-body must be >= 0, --max-connections and "
            "--cores >= 1",
            file=sys.stderr,
        )
        return 1
    limits = ProxyLimits(
        max_request_body=args.max_request_body, max_downstream_connections=args.max_connections
    )
    from trio_yastack.journey import check_observability_options

    problem = check_observability_options(args)
    if problem is None and args.nic is None and (args.trace is not None or args.break_layers is not None):
        problem = "--trace and --break follow packets through the user-space stack: they need --nic"
    if problem is None and args.cores > 1 and args.break_layers is not None:
        problem = "--break needs one core (every core's debugger would read the same terminal)"
    if problem is not None:
        print(f"yastack proxy: {problem}", file=sys.stderr)
        return 1
    hosts: dict[str, str] = {}
    for entry in args.host:
        name, sep, address = entry.partition("=")
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            sep = ""
        if not sep or not name:
            print(f"yastack proxy: --host {entry!r}: expected NAME=IPV4", file=sys.stderr)
            return 1
        hosts[name] = address
    try:
        Proxy(bootstrap, limits=limits, warn=lambda line: None)  # certificates and keys load, or we stop here
    except TlsSetupError as exc:
        print(f"yastack proxy: {exc}", file=sys.stderr)
        return 1
    admin_address = bootstrap.admin.address.address if bootstrap.admin is not None else None
    if (
        args.cores > 1
        and args.nic is not None
        and admin_address is not None
        and not is_loopback(admin_address)
    ):
        # Each core's stack accepts only the flows the RSS hash gives it, and only core 0 listens
        # for the admin: a connection hashed to another core would be refused.
        print(
            f"yastack proxy: with --cores {args.cores} and --nic the admin endpoint must be on the "
            f"kernel's loopback (it is {admin_address}): only core 0 serves it",
            file=sys.stderr,
        )
        return 1
    if args.check_only:
        print(bootstrap.summary())
        return 0

    worker_mode = args.cores > 1
    links = CoreLinks(args.cores) if worker_mode else None

    async def serve(network: Network, observer: Any = None, layout: Any = None) -> dict[str, Any]:
        core = layout.core_id if layout is not None else None
        mine = links.take(core) if links is not None and core is not None else {}
        peers = CorePeers(mine) if core == 0 and mine else None
        proxy = Proxy(
            bootstrap,
            network=network,
            limits=limits,
            config_path=args.config,
            core=core,
            peers=peers,
            quit=_drain_every_core if worker_mode else None,
            warn=(lambda line: None) if core else None,  # core 0 speaks for all (the same config)
        )
        if observer is not None:  # the proxy's own counters in yastack stat / top
            observer.add_counters("proxy", proxy.stats.flat)
        where = f"core {core}: " if core is not None else ""
        # A worker of several leaves SIGINT to the launcher, which sends it SIGTERM.
        signals_wanted = (signal.SIGTERM,) if worker_mode else (signal.SIGINT, signal.SIGTERM)
        with trio.open_signal_receiver(*signals_wanted) as signals:

            async def shutdown_trigger() -> None:
                async for signum in signals:
                    # one write per line: the cores share the launcher's stdout
                    print(f"# {where}{signal.Signals(signum).name}: draining\n", end="", flush=True)
                    return

            async with trio.open_nursery() as links_nursery:
                if core:  # core k answers core 0's admin until the drain is over
                    links_nursery.start_soon(
                        serve_core_link, mine[0], core_answer(proxy.stats, proxy.clusters, proxy.state)
                    )
                async with trio.open_nursery() as nursery:
                    lines = await nursery.start(
                        lambda task_status: proxy.run(
                            shutdown_trigger=shutdown_trigger,
                            drain_time=args.drain_time,
                            task_status=task_status,
                        )
                    )
                    text = "".join(f"# {line}\n" for line in lines) + f"# proxy ready ({args.config})"
                    if layout is None:
                        print(text, flush=True)
                    else:  # the launcher prints core 0's lines once every core listens
                        worker_ready(f"{text} on {args.cores} cores" if core == 0 else "")
                links_nursery.cancel_scope.cancel()
            if peers is not None:
                await peers.aclose()
        print(f"# {where}drained\n" if worker_mode else "# drained; exiting\n", end="", flush=True)
        return {"core": core or 0, "stats": proxy.stats.flat()}

    async def main(layout: Any = None, port: Any = None) -> dict[str, Any]:
        if args.nic is None:
            return await serve(Network(), None, layout)
        from trio_yastack._open_stack import open_stack
        from trio_yastack.journey import observe_core

        async with (
            open_stack(
                port if port is not None else args.nic,
                ip=args.ip,
                gateway=args.gateway,
                kernel_fallback=True,
                hosts=hosts,
                layout=layout,
            ) as stack,
            observe_core(args, stack, layout) as observer,
        ):
            return await serve(Network(stack), observer, layout)

    # A proxy allocates a few dozen short-lived objects per request; with CPython's default
    # threshold (700) the young generation is collected every few requests.  Start-up objects go
    # to the permanent generation (gc.freeze) and young collections run 30x less often: measured
    # about +10 % req/s and a lower p99 (benchmarks/bench_proxy.py).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    try:
        if not worker_mode:
            trio.run(main)
            return 0
        assert links is not None
        try:
            return _run_on_cores(args, main, links)
        finally:
            links.close()
    except OSError as exc:
        print(f"yastack proxy: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _run_on_cores(
    args: argparse.Namespace, main: Callable[..., Awaitable[dict[str, Any]]], links: CoreLinks
) -> int:
    """``--cores N``: one process per core (:func:`~trio_yastack.dispatch._launcher.launch`),
    ``# proxy ready`` once every core listens, each core's totals at the end; a worker that died
    stops the others and is reported (exit 1), as ``yastack serve`` does."""
    from trio_yastack.dispatch._launcher import WorkerFailed, launch, make_layouts

    def announce(announcements: list[str]) -> None:
        print(announcements[0], flush=True)  # core 0's, after every core's listeners are up

    if args.nic is not None:
        from trio_yastack._open_stack import open_multicore_port

        port = open_multicore_port(args.nic, args.cores)
        layouts = None
    else:  # kernel sockets only: no port; small rings (nothing crosses them)
        port = None
        layouts = make_layouts(args.cores, multi_queue=True, ring_capacity=1 << 12)
    try:
        results = launch(
            lambda layout: trio.run(main, layout, port),
            port=port,
            cores=args.cores,
            layouts=layouts,
            ready=announce,
        )
    except WorkerFailed as exc:
        print(f"yastack proxy: {exc}", file=sys.stderr, flush=True)
        return 1
    totals = [
        {
            "core": result["core"],
            "downstream_cx_total": sum(
                v
                for k, v in result["stats"].items()
                if k.startswith("listener.") and k.endswith(".downstream_cx_total")
            ),
            "downstream_rq_total": sum(
                v
                for k, v in result["stats"].items()
                if k.startswith("http.") and k.endswith(".downstream_rq_total")
            ),
        }
        for result in results
    ]
    print("# per core: " + json.dumps(totals), flush=True)
    print("# drained; exiting", flush=True)
    return 0


def _drain_every_core() -> None:
    """``POST /quitquitquit`` on core 0 with ``--cores N``: SIGTERM to the launcher, which sends
    one to every core (each drains as on a SIGTERM of its own)."""
    os.kill(os.getppid(), signal.SIGTERM)
