"""Cluster features Envoy's configs lean on, against Envoy's documented behaviour: endpoint
``load_balancing_weight``, priorities with failover, locality weights, panic mode, MAGLEV,
LOGICAL_DNS, an endpoint's ``hostname`` and ``health_check_config``, ``no_traffic_interval``.

On the simulator (proxy on stack A, backends and clients on stack B) under trio's MockClock, as in
test_proxy_http.py; which backend answered comes from its JSON (``backend``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio
import trio.testing
from proxy_helpers import B_IP, BackendApp, Client, cluster, connect, http_bootstrap, route, wait_until
from test_proxy_http import health_check, setup

from trio_yastack import Stack


def endpoint(port: int, weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint": {"address": {"socket_address": {"address": B_IP, "port_value": port}}, **extra},
        "load_balancing_weight": weight,
    }


def weighted_cluster(localities: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": "app",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "app", "endpoints": localities},
        **extra,
    }


async def served(b: Stack, n: int) -> Counter[str]:
    client = Client(await connect(b))
    counts: Counter[str] = Counter()
    for _ in range(n):
        r = await client.request("GET", "/")
        counts[r.json()["backend"] if r.status == 200 else str(r.status)] += 1
    await client.aclose()
    return counts


async def test_endpoint_weights_round_robin(autojump_clock: trio.testing.MockClock) -> None:
    """ROUND_ROBIN with ``load_balancing_weight`` 3 and 1: exactly 3 of every 4 requests to the first."""
    apps = [(BackendApp("heavy"), 8081), (BackendApp("light"), 8082)]
    c = weighted_cluster([{"lb_endpoints": [endpoint(8081, 3), endpoint(8082, 1)]}])
    async with setup(http_bootstrap([c]), *apps) as (_, b, _proxy):
        assert await served(b, 40) == Counter({"heavy": 30, "light": 10})


async def test_priority_failover_and_panic(autojump_clock: trio.testing.MockClock) -> None:
    """Priority 0 takes everything while healthy; when its host fails health checks, priority 1
    takes over; with every host down and ``healthy_panic_threshold`` set, Envoy's panic mode sends
    requests to all hosts anyway (here: to the sick primary, which answers)."""
    primary, backup = BackendApp("primary"), BackendApp("backup")
    c = weighted_cluster(
        [{"lb_endpoints": [endpoint(8081)]}, {"priority": 1, "lb_endpoints": [endpoint(8082)]}],
        health_checks=health_check(unhealthy_threshold=1, healthy_threshold=1),
        common_lb_config={"healthy_panic_threshold": {"value": 50}},
    )
    async with setup(http_bootstrap([c]), (primary, 8081), (backup, 8082)) as (_, b, proxy):
        assert await served(b, 10) == Counter({"primary": 10})
        primary.healthy = False
        await trio.sleep(3)
        assert await served(b, 10) == Counter({"backup": 10})
        backup.healthy = False
        await trio.sleep(3)
        counts = await served(b, 10)
        assert sum(counts.values()) == 10 and set(counts) <= {"primary", "backup"}
        assert proxy.stats.value("cluster.app.lb_healthy_panic") == 10


async def test_locality_weights(autojump_clock: trio.testing.MockClock) -> None:
    """``locality_weighted_lb_config``: localities weighted 4 and 1 share traffic about 4:1."""
    apps = [(BackendApp("west"), 8081), (BackendApp("east"), 8082)]
    c = weighted_cluster(
        [
            {"locality": {"region": "us-west"}, "load_balancing_weight": 4, "lb_endpoints": [endpoint(8081)]},
            {"locality": {"region": "us-east"}, "load_balancing_weight": 1, "lb_endpoints": [endpoint(8082)]},
        ],
        lb_policy="RANDOM",
        common_lb_config={"locality_weighted_lb_config": {}},
    )
    async with setup(http_bootstrap([c]), *apps) as (_, b, _proxy):
        counts = await served(b, 500)
    assert 330 <= counts["west"] <= 470  # binomial(500, 0.8): mean 400, sd 9


async def test_maglev_spreads_by_weight_and_stays_put(autojump_clock: trio.testing.MockClock) -> None:
    """MAGLEV: the table gives each host slots in proportion to its weight, and a host leaving moves
    only its own slots (consistent hashing)."""
    apps = [(BackendApp(f"b{i}"), 8081 + i) for i in range(3)]
    c = weighted_cluster(
        [{"lb_endpoints": [endpoint(8081, 2), endpoint(8082), endpoint(8083)]}],
        lb_policy="MAGLEV",
        maglev_lb_config={"table_size": 1009},
    )
    async with setup(http_bootstrap([c]), *apps) as (_, b, proxy):
        runtime = proxy.clusters["app"]
        hosts = list(runtime.hosts)
        before = [runtime._maglev_pick(hosts, key) for key in range(1009)]
        shares = Counter(h.port for h in before)
        assert abs(shares[8081] - 1009 / 2) < 20 and abs(shares[8082] - shares[8083]) < 20
        after = [runtime._maglev_pick(hosts[:2], key) for key in range(1009)]
        moved = sum(1 for x, y in zip(before, after, strict=True) if x is not y and x.port != 8083)
        assert moved < 1009 * 0.1  # Maglev's minimal disruption: few slots of the others move
        assert set((await served(b, 30)).keys()) <= {"b0", "b1", "b2"}


async def test_logical_dns_uses_the_first_address(autojump_clock: trio.testing.MockClock) -> None:
    apps = [(BackendApp("first"), 8081)]
    c = weighted_cluster(
        [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "svc.test", "port_value": 8081}}}}
                ]
            }
        ],
        type="LOGICAL_DNS",
    )
    async with setup(http_bootstrap([c]), *apps, hosts={"svc.test": B_IP}) as (_, b, proxy):
        assert [str(h) for h in proxy.clusters["app"].hosts] == [f"{B_IP}:8081"]
        assert await served(b, 2) == Counter({"first": 2})


async def test_health_check_port_hostname_and_no_traffic_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``health_check_config`` sends checks to another port; ``no_traffic_interval``
    spaces checks until the cluster's first request, ``interval`` after it; the endpoint's
    ``hostname`` is shown in /clusters."""
    app, checker = BackendApp("app"), BackendApp("checker")
    c = weighted_cluster(
        [
            {
                "lb_endpoints": [
                    endpoint(8081, hostname="app.internal", health_check_config={"port_value": 9090})
                ]
            }
        ],
        health_checks=health_check(no_traffic_interval="10s"),
    )
    async with setup(http_bootstrap([c]), (app, 8081), (checker, 9090)) as (_, b, proxy):
        assert app.health_checks == 0 and checker.health_checks == 1  # the warm-up check
        await trio.sleep(25)
        assert checker.health_checks == 3  # every 10 s while idle
        assert await served(b, 1) == Counter({"app": 1})
        await trio.sleep(10.5)  # the 10 s wait in progress ends (at 30 s), then one check a second
        assert 8 <= checker.health_checks <= 10
        assert "app::198.18.0.1:8081::hostname::app.internal" in proxy.clusters.render_clusters().splitlines()


async def test_request_mirror_policies(autojump_clock: trio.testing.MockClock) -> None:
    """``request_mirror_policies``: each request also goes to the mirror cluster, ``Host`` with
    Envoy's ``-shadow`` suffix and the same body; the client gets the primary's answer only; a
    ``runtime_fraction`` of 0 mirrors nothing."""
    app, mirror = BackendApp("app"), BackendApp("mirror")
    routes = [
        route(
            "/never",
            request_mirror_policies=[
                {"cluster": "mirror", "runtime_fraction": {"default_value": {"numerator": 0}}}
            ],
        ),
        route("/", request_mirror_policies=[{"cluster": "mirror"}]),
    ]
    config = http_bootstrap([cluster("app", [8081]), cluster("mirror", [8082])], routes)
    async with setup(config, (app, 8081), (mirror, 8082)) as (_, b, proxy):
        client = Client(await connect(b))
        r = await client.request("GET", "/one")
        assert r.json()["backend"] == "app"
        r = await client.request("POST", "/upload", body=b"x" * 1000)
        assert r.status == 200 and r.json()["bytes"] == 1000
        await client.request("GET", "/never")
        await client.aclose()
        # The shadow's own answer is counted after the mirror saw its request: wait for both.
        await wait_until(
            lambda: (
                len(mirror.seen) == 2
                and mirror.uploads_completed == 1
                and proxy.stats.value("http.ingress.shadow_sent") == 2
            ),
            timeout=5,
        )
        assert [(s.method, s.path, s.header("host")) for s in mirror.seen] == [
            ("GET", "/one", "proxy.test-shadow"),
            ("POST", "/upload", "proxy.test-shadow"),
        ]
        assert [s.path for s in app.seen] == ["/one", "/upload", "/never"]
        assert proxy.stats.value("http.ingress.shadow_sent") == 2
