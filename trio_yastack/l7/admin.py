"""The admin endpoint, with Envoy's paths and output formats.

    GET  /                     this list
    GET  /stats                ``name: value`` lines (``?filter=REGEX`` keeps names it matches,
                               ``?format=json`` gives Envoy's ``{"stats": [{"name", "value"}]}``,
                               ``?core=K`` one core's own with --cores)
    GET  /stats/prometheus     Prometheus text exposition, Envoy's metric names and tags
    GET  /clusters             ``cluster::host:port::stat::value`` lines (``?format=json`` too)
    GET  /ready                200 ``LIVE``, or 503 ``PRE_INITIALIZING`` / ``DRAINING``
    GET  /config_dump          the loaded configuration as JSON (this proxy's typed objects)
    GET  /server_info          version, state, uptime
    POST /healthcheck/fail     fail: /ready answers 503 and every response says ``connection: close``
    POST /healthcheck/ok       undo /healthcheck/fail
    POST /quitquitquit         graceful shutdown

Mutating paths want POST, as Envoy's do (a GET gets 405), so a crawler or a stray browser tab
cannot drain the proxy.  With ``--cores N`` core 0 alone listens and answers for every core:
/stats, /stats/prometheus and /clusters are the cores' merged (counters summed, see
:meth:`.Stats.merged`), /healthcheck/* reach every core, /quitquitquit drains them all.
Where the endpoint listens (kernel or stack) is decided like any listener
(:mod:`.network`); bind it to loopback, as the examples do, unless it must be reached from outside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

import trio_yastack

from ._cores import CorePeers, merge_clusters_json, merge_clusters_text
from .access_log import AccessLogger, AccessRecord
from .config import Bootstrap
from .stats import Stats

if TYPE_CHECKING:
    from .proxy import ProxyState
    from .upstream import ClusterManager

__all__ = ["AdminServer", "CoresView", "core_answer"]

#: what core 0 merges across cores (the others' snapshots are asked for per request)
_MERGED_PATHS = frozenset({"/stats", "/stats/prometheus", "/clusters"})
#: what core 0 passes on to every core after doing it itself
_BROADCAST_PATHS = frozenset({"/healthcheck/fail", "/healthcheck/ok"})


@dataclasses.dataclass(frozen=True)
class CoresView:
    """Every core's statistics and clusters at one moment, merged, for one admin request."""

    stats: Stats
    per_core: dict[int, Stats]
    clusters_text: str
    clusters_json: dict[str, Any]


def core_answer(stats: Stats, clusters: ClusterManager, state: ProxyState) -> Callable[[str], Any]:
    """What a core answers core 0's admin (:func:`._cores.serve_core_link`): its snapshot, or a
    health-check switch done; an unknown command gets an error (never a crash)."""

    def answer(command: str) -> Any:
        if command == "snapshot":
            return {
                "stats": stats.snapshot(),
                "clusters_text": clusters.render_clusters(),
                "clusters_json": clusters.clusters_json(),
            }
        if command in ("healthcheck/fail", "healthcheck/ok"):
            state.health_check_failed = command == "healthcheck/fail"
            return {"ok": True}
        return {"error": f"unknown command {command[:64]!r}"}

    return answer


MAX_ADMIN_REQUEST = 16 * 1024
ADMIN_TIMEOUT = 30.0  # a whole admin request/response; admin clients are scripts, not browsers
MAX_ADMIN_CONNECTIONS = 64


class AdminServer:
    """Serves the admin paths for one proxy."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        stats: Stats,
        clusters: ClusterManager,
        state: ProxyState,
        shutdown: Callable[[], None],
        peers: CorePeers | None = None,
    ) -> None:
        """``peers``: with ``--cores N``, core 0's links to the other cores (see the module)."""
        self.bootstrap = bootstrap
        self.peers = peers
        self.stats = stats
        self.clusters = clusters
        self.state = state
        self.shutdown = shutdown
        self.access_log = AccessLogger(bootstrap.admin.access_log if bootstrap.admin is not None else ())
        self._slots = trio.Semaphore(MAX_ADMIN_CONNECTIONS)

    async def serve(self, listener: trio.SocketListener) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await self._slots.acquire()
                try:
                    stream = await listener.accept()
                except BaseException:
                    self._slots.release()
                    raise
                nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_ADMIN_REQUEST)
        try:
            with trio.move_on_after(ADMIN_TIMEOUT):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, h11.Request):
                        status, content_type, body = await self.handle_request(
                            event.method.decode(), event.target.decode()
                        )
                        await self._respond(stream, conn, event, status, content_type, body)
                        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                            break
                        conn.start_next_cycle()
                        continue
                    if isinstance(event, h11.ConnectionClosed):
                        break
        except h11.RemoteProtocolError:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = b"bad request\n"
                headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
                quiet = (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError)
                with contextlib.suppress(*quiet):
                    await stream.send_all(conn.send(h11.Response(status_code=400, headers=headers)) + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.LocalProtocolError):
            pass
        finally:
            self._slots.release()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _respond(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, status: int,
        content_type: str, body: bytes,
    ) -> None:  # fmt: skip
        # Read (and drop) any request body first, so the connection can carry the next request.
        while conn.their_state is h11.SEND_BODY:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("cache-control", "no-cache, max-age=0"),
            ("x-content-type-options", "nosniff"),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        self.access_log.log(
            AccessRecord(
                start_time=time.time(),
                method=request.method.decode(),
                path=request.target.decode(),
                protocol="HTTP/1.1",
                response_code=status,
                bytes_sent=len(body),
            )
        )

    async def handle_request(self, method: str, target: str) -> tuple[int, str, bytes]:
        """:meth:`handle`, with the other cores asked first where the answer covers them all."""
        if self.peers is None:
            return self.handle(method, target)
        path = urlsplit(target).path
        if path in _MERGED_PATHS and method in ("GET", "HEAD"):
            return self.handle(method, target, await self.collect())
        result = self.handle(method, target)
        if path in _BROADCAST_PATHS and result[0] == 200:
            await self.peers.ask(path.removeprefix("/"))
        return result

    async def collect(self) -> CoresView:
        """Every core's snapshot (core 0's own taken after the others answered), merged."""
        assert self.peers is not None
        answers = await self.peers.ask("snapshot")
        answers[0] = core_answer(self.stats, self.clusters, self.state)("snapshot")
        cores = sorted(answers)
        per_core = {core: Stats.merged([answers[core]["stats"]]) for core in cores}
        merged = Stats.merged([answers[core]["stats"] for core in [0, *[c for c in cores if c != 0]]])
        merged.scope("server").gauge_set("admin_cores_unreachable", len(self.peers.unreachable))
        return CoresView(
            stats=merged,
            per_core=per_core,
            clusters_text=merge_clusters_text([answers[core]["clusters_text"] for core in cores]),
            clusters_json=merge_clusters_json([answers[core]["clusters_json"] for core in cores]),
        )

    def handle(self, method: str, target: str, view: CoresView | None = None) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for one admin request (no I/O: testable directly);
        ``view``: every core's statistics and clusters, merged (else this core's own)."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        mutating = {"/healthcheck/fail", "/healthcheck/ok", "/quitquitquit"}
        if path in mutating:
            if method != "POST":
                return 405, "text/plain", b"This endpoint only supports POST\n"
            if path == "/healthcheck/fail":
                self.state.health_check_failed = True
            elif path == "/healthcheck/ok":
                self.state.health_check_failed = False
            else:
                self.shutdown()
            return 200, "text/plain", b"OK\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/":
            return 200, "text/plain", (__doc__ or "").split("\n\n")[1].encode() + b"\n"
        all_stats = view.stats if view is not None else self.stats
        if path == "/stats":
            all_stats, problem = self._core_stats(query.get("core"), all_stats, view)
            if problem is not None:
                return 400, "text/plain", problem.encode()
            if query.get("format") == "json":
                stats = [{"name": name, "value": value} for name, value in all_stats.flat().items()]
                return 200, "application/json", _json({"stats": stats})
            pattern = None
            if query.get("filter"):
                try:
                    pattern = re.compile(query["filter"])
                except re.error as exc:
                    return 400, "text/plain", f"filter: not a regular expression: {exc}\n".encode()
            return 200, "text/plain", all_stats.render_text(pattern).encode()
        if path == "/stats/prometheus":
            return 200, "text/plain; version=0.0.4", all_stats.render_prometheus().encode()
        if path == "/clusters":
            if query.get("format") == "json":
                document = view.clusters_json if view is not None else self.clusters.clusters_json()
                return 200, "application/json", _json(document)
            text = view.clusters_text if view is not None else self.clusters.render_clusters()
            return 200, "text/plain", text.encode()
        if path == "/ready":
            state = self.state.server_state
            return (200 if state == "LIVE" else 503), "text/plain", f"{state}\n".encode()
        if path == "/config_dump":
            dump = {
                "configs": [
                    {
                        "@type": "trio_yastack.Bootstrap",
                        "bootstrap": _plain(dataclasses.asdict(self.bootstrap)),
                    }
                ]
            }
            return 200, "application/json", _json(dump)
        if path == "/server_info":
            info = {
                "version": f"trio_yastack/{trio_yastack.__version__}",
                "state": self.state.server_state,
                "uptime_current_epoch": f"{int(time.time() - self.state.started_wall)}s",
                "command_line_options": {"config_path": self.state.config_path},
            }
            return 200, "application/json", _json(info)
        return (
            404,
            "text/plain",
            b"invalid path. admin commands are:\n" + (__doc__ or "").split("\n\n")[1].encode(),
        )

    def _core_stats(
        self, core: str | None, merged: Stats, view: CoresView | None
    ) -> tuple[Stats, str | None]:
        """``/stats?core=K``: core K's own statistics (ours, not Envoy's: it has no processes)."""
        if core is None:
            return merged, None
        per_core = view.per_core if view is not None else {0: self.stats}
        if not core.isdigit() or int(core) not in per_core:
            return merged, f"core: one of {', '.join(map(str, sorted(per_core)))}\n"
        return per_core[int(core)], None


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _plain(value: Any) -> Any:
    """``asdict`` output made JSON-safe (tuples as lists, infinities as strings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    return value
