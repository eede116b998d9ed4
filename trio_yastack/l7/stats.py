"""The proxy's statistics, named as Envoy names them.

Why Envoy's names: operators already have dashboards and alerts on ``cluster.<name>.upstream_rq_5xx``
and ``http.<stat_prefix>.downstream_rq_total``; a proxy that speaks Envoy's configuration should
also answer in Envoy's counters.  Each statistic lives in a *scope* (``http.ingress_http``,
``cluster.app``, ``tcp.db``, ``listener.0.0.0.0_10000``, ``server``) whose variable part becomes a
Prometheus label, as Envoy's default tag extraction does::

    cluster.app.upstream_rq_retry: 3
    envoy_cluster_upstream_rq_retry{envoy_cluster_name="app"} 3

Counters only go up; gauges (``*_active``, ``membership_*``, ``health_check.healthy``) go both ways.
Everything runs in one trio run, so plain ints are enough (no locks).  With ``--cores N`` each core
keeps its own :class:`Stats` (one process each) and the admin endpoint shows
:meth:`Stats.merged` of every core's :meth:`Stats.snapshot`, as Envoy sums its workers' counters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Literal

__all__ = ["Cell", "Scope", "Stats", "StatsSnapshot"]

StatKind = Literal["counter", "gauge"]

#: one statistic as plain data (it crosses a process boundary): kind, name, stat, value, stat kind
SnapshotRow = tuple[str, str, str, int, StatKind]
StatsSnapshot = list[SnapshotRow]

#: gauges that are a level of the same thing on every core (not a count of things each core has):
#: merged to the worst core's value instead of summed.  ``server.state`` takes the highest (0 LIVE,
#: 1 DRAINING, 2 PRE_INITIALIZING: any core not live shows); the health levels the lowest (each
#: core health-checks on its own, as Envoy's workers do; a host is healthy where all cores agree).
_MAX_LEVELS = frozenset({("server", "state")})
_MIN_LEVELS = frozenset({"membership_total", "membership_healthy", "health_check.healthy"})

#: scope kind -> the Prometheus label Envoy's tag extraction gives its variable part
_TAG_NAMES = {
    "cluster": "envoy_cluster_name",
    "http": "envoy_http_conn_manager_prefix",
    "tcp": "envoy_tcp_prefix",
    "listener": "envoy_listener_address",
}
_PROMETHEUS_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
# Envoy's response-code tag extractors: upstream_rq_2xx -> upstream_rq_xx{envoy_response_code_class="2"},
# upstream_rq_200 -> upstream_rq{envoy_response_code="200"} (and the same for downstream_rq_*).
_CODE_CLASS = re.compile(r"(.*_rq)_([1-5])xx")
_CODE = re.compile(r"(.*_rq)_([1-5]\d\d)")


class Cell:
    """One statistic's value, bound once by a caller on the request path (``cell.value += 1``:
    an attribute's add instead of :meth:`Scope.inc`'s call and dict updates).  The scope lists
    the same cell, so /stats, /stats/prometheus and the ``--cores`` merge read what was added."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: StatKind, value: int = 0) -> None:
        self.kind: StatKind = kind
        self.value = value


class Scope:
    """One scope's statistics: ``scope.inc("upstream_rq_total")``,
    ``scope.gauge_add("upstream_cx_active", 1)``; on a hot path ``scope.cell(stat)`` once, then
    ``cell.value += 1``."""

    __slots__ = ("_cells", "kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind  # "cluster", "http", "tcp", "listener", "server"
        self.name = name  # the cluster name, stat_prefix, listener address ("" for server)
        self._cells: dict[str, Cell] = {}

    @property
    def prefix(self) -> str:
        """``cluster.app.``, ``http.ingress_http.``, ``server.``: what /stats prints before each name."""
        return f"{self.kind}.{self.name}." if self.name else f"{self.kind}."

    def cell(self, stat: str, kind: StatKind = "counter") -> Cell:
        """``stat``'s cell, made at zero if new (listed from then on, as :meth:`declare` lists a
        counter): bound once by a caller that moves it per request.  ``kind`` applies to a new
        cell; a gauge's cell is made as :meth:`gauge_set` would make it."""
        found = self._cells.get(stat)
        if found is None:
            found = self._cells[stat] = Cell(kind)
        return found

    def inc(self, stat: str, by: int = 1) -> None:
        """Add to a counter (made at zero on first use)."""
        found = self._cells.get(stat)
        if found is None:
            found = self._cells[stat] = Cell("counter")
        found.value += by

    def count(self, stats: tuple[str, ...]) -> None:
        """Add one to each counter of ``stats`` (one call for the several counters a request
        moves)."""
        cells = self._cells
        for stat in stats:
            found = cells.get(stat)
            if found is None:
                found = cells[stat] = Cell("counter")
            found.value += 1

    def gauge_add(self, stat: str, delta: int) -> None:
        """Move a gauge up or down."""
        found = self._cells.get(stat)
        if found is None:
            found = self._cells[stat] = Cell("gauge")
        found.value += delta
        found.kind = "gauge"

    def gauge_set(self, stat: str, value: int) -> None:
        found = self._cells.get(stat)
        if found is None:
            found = self._cells[stat] = Cell("gauge")
        found.value = value
        found.kind = "gauge"

    def declare(self, *counters: str) -> None:
        """Counters that exist at zero from the start, so /stats lists them before anything happens
        (as Envoy lists ``upstream_rq_retry: 0``), and a dashboard query finds them."""
        cells = self._cells
        for stat in counters:
            if stat not in cells:
                cells[stat] = Cell("counter")

    def get(self, stat: str) -> int:
        found = self._cells.get(stat)
        return 0 if found is None else found.value

    def items(self) -> Iterator[tuple[str, int, StatKind]]:
        for stat, found in self._cells.items():
            yield stat, found.value, found.kind


class Stats:
    """Every scope of one proxy; the admin endpoint renders it."""

    def __init__(self) -> None:
        self._scopes: dict[tuple[str, str], Scope] = {}

    def scope(self, kind: str, name: str = "") -> Scope:
        key = (kind, name)
        found = self._scopes.get(key)
        if found is None:
            found = self._scopes[key] = Scope(kind, name)
        return found

    def snapshot(self) -> StatsSnapshot:
        """Every statistic as plain rows (picklable, JSON-able): what a core sends core 0."""
        return [
            (s.kind, s.name, stat, value, kind)
            for s in self._scopes.values()
            for stat, value, kind in s.items()
        ]

    @classmethod
    def merged(cls, snapshots: Iterable[StatsSnapshot]) -> Stats:
        """The cores' statistics as one: counters and counting gauges (``*_active``) summed;
        level gauges (``server.state``, ``membership_healthy``...) the worst core's (see
        ``_MAX_LEVELS``).  The first snapshot's order is kept, so /stats reads as one core's."""
        out = cls()
        seen: set[tuple[str, str, str]] = set()
        for rows in snapshots:
            for kind, name, stat, value, stat_kind in rows:
                found = out.scope(kind, name).cell(stat, stat_kind)
                key = (kind, name, stat)
                if key not in seen:
                    seen.add(key)
                    found.value = value
                elif (kind, stat) in _MAX_LEVELS:
                    found.value = max(found.value, value)
                elif stat in _MIN_LEVELS:
                    found.value = min(found.value, value)
                else:
                    found.value += value
                found.kind = stat_kind
        return out

    def value(self, full_name: str) -> int:
        """A statistic by its full /stats name (``cluster.app.upstream_rq_total``); 0 if never touched."""
        for scope in self._scopes.values():
            prefix = scope.prefix
            if full_name.startswith(prefix):
                found = scope._cells.get(full_name[len(prefix) :])
                if found is not None:
                    return found.value
        return 0

    def flat(self) -> dict[str, int]:
        """``{"cluster.app.upstream_rq_total": 5, ...}`` sorted by name (what /stats prints)."""
        out = {f"{s.prefix}{stat}": value for s in self._scopes.values() for stat, value, _ in s.items()}
        return dict(sorted(out.items()))

    def render_text(self, pattern: str | re.Pattern[str] | None = None) -> str:
        """Envoy's ``/stats`` text form: ``name: value`` per line; with ``pattern`` (``?filter=``, a
        regular expression as in Envoy) only names it matches somewhere."""
        if isinstance(pattern, str):
            pattern = re.compile(pattern)
        lines = [
            f"{name}: {value}" for name, value in self.flat().items() if not pattern or pattern.search(name)
        ]
        return "\n".join(lines) + "\n"

    def render_prometheus(self) -> str:
        """Envoy's ``/stats/prometheus``: ``envoy_<kind>_<stat>{<tag>="<name>"} value`` with one
        ``# TYPE`` line per metric family."""
        families: dict[str, tuple[StatKind, list[str]]] = {}
        for scope in self._scopes.values():
            tag = _TAG_NAMES.get(scope.kind)
            scope_labels = [f'{tag}="{_escape_label(scope.name)}"'] if tag and scope.name else []
            for stat, value, kind in scope.items():
                labels = list(scope_labels)
                if m := _CODE_CLASS.fullmatch(stat):
                    stat = f"{m[1]}_xx"
                    labels.insert(0, f'envoy_response_code_class="{m[2]}"')
                elif m := _CODE.fullmatch(stat):
                    stat = m[1]
                    labels.insert(0, f'envoy_response_code="{m[2]}"')
                metric = _PROMETHEUS_UNSAFE.sub("_", f"envoy_{scope.kind}_{stat}")
                entry = families.setdefault(metric, (kind, []))
                label_text = "{" + ",".join(labels) + "}" if labels else ""
                entry[1].append(f"{metric}{label_text} {value}")
        out: list[str] = []
        for metric in sorted(families):
            kind, samples = families[metric]
            out.append(f"# TYPE {metric} {kind}")
            out.extend(sorted(samples))
        return "\n".join(out) + "\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
