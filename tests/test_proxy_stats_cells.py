"""Statistics bound once as cells (``Scope.cell``): what the request path adds through a cell is
what /stats, /stats/prometheus and the ``--cores`` merge show, exactly as through ``Scope.inc``."""

from __future__ import annotations

from trio_yastack.l7.stats import Cell, Stats


def _through_calls() -> Stats:
    stats = Stats()
    scope = stats.scope("cluster", "app")
    scope.declare("upstream_rq_total")
    scope.gauge_set("upstream_rq_active", 0)
    for _ in range(3):
        scope.inc("upstream_rq_total")
        scope.gauge_add("upstream_rq_active", 1)
        scope.count(("upstream_rq_2xx", "upstream_rq_200", "upstream_rq_completed"))
    scope.gauge_add("upstream_rq_active", -1)
    return stats


def _through_cells() -> Stats:
    stats = Stats()
    scope = stats.scope("cluster", "app")
    scope.declare("upstream_rq_total")
    scope.gauge_set("upstream_rq_active", 0)
    total = scope.cell("upstream_rq_total")
    active = scope.cell("upstream_rq_active", "gauge")
    status: tuple[Cell, ...] = ()
    for _ in range(3):
        total.value += 1
        active.value += 1
        if not status:  # bound when the status first comes, as the proxy binds them
            names = ("upstream_rq_2xx", "upstream_rq_200", "upstream_rq_completed")
            status = tuple(scope.cell(name) for name in names)
        for cell in status:
            cell.value += 1
    active.value -= 1
    return stats


def test_cells_show_as_the_calls_do_in_every_view() -> None:
    calls, cells = _through_calls(), _through_cells()
    assert cells.flat() == calls.flat()
    assert cells.flat()["cluster.app.upstream_rq_total"] == 3
    assert cells.flat()["cluster.app.upstream_rq_active"] == 2
    assert cells.render_text() == calls.render_text()
    assert cells.render_prometheus() == calls.render_prometheus()
    assert "# TYPE envoy_cluster_upstream_rq_active gauge" in cells.render_prometheus()
    assert cells.snapshot() == calls.snapshot()
    merged = Stats.merged([cells.snapshot(), calls.snapshot()])
    assert merged.value("cluster.app.upstream_rq_total") == 6
    assert merged.value("cluster.app.upstream_rq_200") == 6
    assert merged.value("cluster.app.upstream_rq_active") == 4


def test_a_cell_is_the_scopes_own_value() -> None:
    scope = Stats().scope("http", "ingress")
    scope.inc("downstream_rq_total", 2)
    cell = scope.cell("downstream_rq_total")
    assert cell.value == 2  # the value counted before binding
    cell.value += 1
    scope.inc("downstream_rq_total")
    assert scope.get("downstream_rq_total") == 4 and cell.value == 4
    assert scope.cell("downstream_rq_total") is cell
    assert list(scope.items()) == [("downstream_rq_total", 4, "counter")]
    scope.gauge_add("x_active", 1)
    assert scope.cell("x_active").kind == "gauge"
    fresh = scope.cell("never_moved")  # bound: listed at zero from then on, as a declared counter
    assert fresh.value == 0 and ("never_moved", 0, "counter") in list(scope.items())
