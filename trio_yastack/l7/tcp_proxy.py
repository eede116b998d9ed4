"""Envoy's ``tcp_proxy`` network filter: each downstream connection is joined to a new upstream one.

The host comes from the cluster's load balancer (only available hosts); ``max_connections`` bounds
the cluster's upstream connections (beyond it the downstream connection is closed, counted
``upstream_cx_overflow``, as Envoy does).  Bytes are copied both ways with backpressure; a half-close
(EOF) on one side is passed on to the other where the stream can do it (TCP, not TLS), and the
connection ends when both directions are done or when nothing moved for ``idle_timeout``.
"""

from __future__ import annotations

import time

import trio

from .access_log import AccessLogger, AccessRecord
from .config import TcpProxy
from .stats import Scope, Stats
from .upstream import ClusterManager, ConnectFailure

__all__ = ["TcpProxyRuntime"]

RECEIVE_SIZE = 65536
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class TcpProxyRuntime:
    """One ``tcp_proxy`` filter, live."""

    def __init__(self, config: TcpProxy, clusters: ClusterManager, stats: Stats) -> None:
        self.config = config
        self.cluster = clusters[config.cluster]
        self.stats: Scope = stats.scope("tcp", config.stat_prefix)
        self.stats.declare(
            "downstream_cx_total",
            "downstream_cx_no_route",
            "downstream_cx_rx_bytes_total",
            "downstream_cx_tx_bytes_total",
            "idle_timeout",
            "upstream_flush_total",
        )
        self.access_log = AccessLogger(())

    async def serve_connection(self, stream: trio.abc.Stream, remote: str, scheme: str) -> None:
        del scheme
        cluster = self.cluster
        record = AccessRecord(start_time=time.time())
        started = trio.current_time()
        self.stats.inc("downstream_cx_total")
        self.stats.gauge_add("downstream_cx_active", 1)
        upstream: trio.abc.Stream | None = None
        host = cluster.choose_host()
        try:
            if host is None:
                self.stats.inc("downstream_cx_no_route")
                cluster.stats.inc("upstream_cx_none_healthy")
                record.response_flags = "UH"
                return
            record.upstream_host = str(host)
            try:
                upstream = await cluster.open_tunnel(host)
            except ConnectFailure:
                record.response_flags = "UF"
                cluster.record_outcome(host, None)
                return
            if upstream is None:
                record.response_flags = "UO"
                return
            cluster.record_outcome(host, 200)
            await self._splice(stream, upstream, record)
        finally:
            self.stats.gauge_add("downstream_cx_active", -1)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
                if upstream is not None and host is not None:
                    await trio.aclose_forcefully(upstream)
                    cluster.tunnel_closed(host)
            record.duration_ms = int((trio.current_time() - started) * 1000)
            self.access_log.log(record)

    async def _splice(
        self, downstream: trio.abc.Stream, upstream: trio.abc.Stream, record: AccessRecord
    ) -> None:
        idle = self.config.idle_timeout or float("inf")
        last_activity = [trio.current_time()]
        open_directions = [2]

        async def pump(source: trio.abc.Stream, sink: trio.abc.Stream, to_client: bool) -> None:
            try:
                while True:
                    data = await source.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    last_activity[0] = trio.current_time()
                    if to_client:
                        record.bytes_sent += len(data)
                        self.stats.inc("downstream_cx_tx_bytes_total", len(data))
                    else:
                        record.bytes_received += len(data)
                        self.stats.inc("downstream_cx_rx_bytes_total", len(data))
                    await sink.send_all(data)
                    last_activity[0] = trio.current_time()
                # EOF: half-close the other side if it can (a TLS stream cannot), else end both.
                if isinstance(sink, trio.abc.HalfCloseableStream):
                    await sink.send_eof()
                    open_directions[0] -= 1
                    if open_directions[0] > 0:
                        return
            except _NETWORK_ERRORS:
                pass
            nursery.cancel_scope.cancel()

        async def watchdog() -> None:
            while True:
                deadline = last_activity[0] + idle
                if trio.current_time() >= deadline:
                    self.stats.inc("idle_timeout")
                    record.response_flags = "IT"
                    nursery.cancel_scope.cancel()
                    return
                await trio.sleep_until(deadline)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, downstream, upstream, False)
            nursery.start_soon(pump, upstream, downstream, True)
            if idle != float("inf"):
                nursery.start_soon(watchdog)
            else:
                nursery.start_soon(trio.sleep_forever)
            # the two pumps end the nursery between them (both EOF, or an error)

    def flush_logs(self) -> None:
        self.access_log.flush()
