"""``yastack proxy --cores N``: one proxy process per core, one admin endpoint answering for all.

Unit tests first (no processes): how statistics and ``/clusters`` merge, and core 0's link to the
other cores over a socketpair.  Then the command itself in a private network namespace, with
hypercorn serving ``examples/hello.py`` as the backend and curl as the client: over kernel sockets
(``SO_REUSEPORT``: the kernel spreads connections over the cores' listeners) and over the stack (a
TAP with a queue per core), each time checking that both cores served, that the admin's merged
totals are the sum of the cores' own (``/stats?core=K``), and that SIGTERM drains every core.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing
from proxy_example_helpers import (
    EXAMPLES,
    Program,
    ProxyProcess,
    admin,
    curl_status,
    hello_backend,
    poll,
    stats,
)
from tap_helpers import KERNEL_ADDRESS, STACK_ADDRESS, requires_netns

from trio_yastack.l7._cores import (
    CoreLinks,
    CorePeers,
    merge_clusters_json,
    merge_clusters_text,
    serve_core_link,
)
from trio_yastack.l7.stats import Stats
from trio_yastack.nic.netns import NetworkNamespace

REQUESTS = 40

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
KERNEL_CONFIG = f"""\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 0.5s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8080}}}}}}
"""


# -- merging, without processes -------------------------------------------------------------------
def core_stats(requests: int, active: int, healthy: int, state: int) -> Stats:
    stats = Stats()
    http = stats.scope("http", "ingress_http")
    http.inc("downstream_rq_total", requests)
    http.gauge_set("downstream_rq_active", active)
    cluster = stats.scope("cluster", "app")
    cluster.gauge_set("membership_healthy", healthy)
    cluster.gauge_set("membership_total", 2)
    stats.scope("server").gauge_set("state", state)
    return stats


def test_merged_stats_sum_counters_and_counting_gauges_and_keep_the_worst_level() -> None:
    """Counters and ``*_active`` gauges add up across cores; ``membership_healthy`` is the lowest
    core's (each core health-checks on its own) and ``server.state`` the highest (any core still
    draining or initializing shows); the kinds survive, so Prometheus types stay right."""
    merged = Stats.merged(
        [
            core_stats(7, 1, 2, 0).snapshot(),
            core_stats(5, 2, 1, 1).snapshot(),
            core_stats(0, 0, 2, 0).snapshot(),
        ]
    )
    assert merged.value("http.ingress_http.downstream_rq_total") == 12
    assert merged.value("http.ingress_http.downstream_rq_active") == 3
    assert merged.value("cluster.app.membership_healthy") == 1
    assert merged.value("cluster.app.membership_total") == 2
    assert merged.value("server.state") == 1
    prometheus = merged.render_prometheus()
    assert "# TYPE envoy_http_downstream_rq_total counter" in prometheus
    assert "# TYPE envoy_cluster_membership_healthy gauge" in prometheus
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 12' in prometheus


def test_merged_stats_survive_json_as_a_core_sends_them() -> None:
    """A snapshot crosses the link as JSON (tuples become lists): merging it gives the same."""
    snapshot = core_stats(3, 0, 2, 0).snapshot()
    again = Stats.merged([json.loads(json.dumps(snapshot)), snapshot])
    assert again.value("http.ingress_http.downstream_rq_total") == 6


def test_merged_clusters_text_sums_host_counts_and_unions_health_flags() -> None:
    core0 = (
        "app::default_priority::max_connections::1024\n"
        "app::127.0.0.1:8080::cx_active::1\napp::127.0.0.1:8080::rq_total::4\n"
        "app::127.0.0.1:8080::health_flags::healthy\n"
    )
    core1 = (
        "app::default_priority::max_connections::1024\n"
        "app::127.0.0.1:8080::cx_active::2\napp::127.0.0.1:8080::rq_total::6\n"
        "app::127.0.0.1:8080::health_flags::/failed_outlier_check\n"
    )
    assert merge_clusters_text([core0, core1]) == (
        "app::default_priority::max_connections::1024\n"
        "app::127.0.0.1:8080::cx_active::3\napp::127.0.0.1:8080::rq_total::10\n"
        "app::127.0.0.1:8080::health_flags::/failed_outlier_check\n"
    )
    assert merge_clusters_text([core0, core0]).count("health_flags::healthy") == 1


def test_merged_clusters_json_sums_stats_and_ors_failures() -> None:
    def document(rq: int, ejected: bool) -> dict[str, object]:
        host = {
            "health_status": {
                "failed_active_health_check": False,
                "failed_outlier_check": ejected,
                "pending_active_hc": False,
                "eds_health_status": "UNHEALTHY" if ejected else "HEALTHY",
            },
            "stats": [{"name": "rq_total", "value": rq}],
        }
        return {"cluster_statuses": [{"name": "app", "host_statuses": [host]}]}

    first = document(4, False)
    merged = merge_clusters_json([first, document(6, True)])
    [host] = merged["cluster_statuses"][0]["host_statuses"]
    assert host["stats"] == [{"name": "rq_total", "value": 10}]
    assert host["health_status"]["failed_outlier_check"] is True
    assert host["health_status"]["eds_health_status"] == "UNHEALTHY"
    assert first == document(4, False), "the first core's document must not be changed"


def test_core_links_give_each_core_its_own_ends() -> None:
    links = CoreLinks(3)
    try:
        assert sorted(links.take(0)) == [1, 2]
    finally:
        links.close()
    links = CoreLinks(3)
    try:
        assert sorted(links.take(2)) == [0]
    finally:
        links.close()


async def test_core_link_answers_commands_and_a_silent_core_is_left_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Core 0 asks two cores at once over socketpairs: core 1 answers (its snapshot, then a
    health-check switch it applies); core 2 never answers, so after the timeout it is left out
    and not asked again (its late reply would answer the wrong request)."""
    one_zero, one_peer = socket.socketpair()
    two_zero, two_peer = socket.socketpair()
    seen: list[str] = []

    def answer(command: str) -> object:
        seen.append(command)
        return {"stats": core_stats(5, 0, 2, 0).snapshot()} if command == "snapshot" else {"ok": True}

    peers = CorePeers({1: one_zero, 2: two_zero})
    assert peers.cores == 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_core_link, one_peer, answer)
        answers = await peers.ask("snapshot")
        assert sorted(answers) == [1]
        assert Stats.merged([answers[1]["stats"]]).value("http.ingress_http.downstream_rq_total") == 5
        assert peers.unreachable == {2}
        assert await peers.ask("healthcheck/fail") == {1: {"ok": True}}
        assert seen == ["snapshot", "healthcheck/fail"]
        await peers.aclose()  # core 1's link sees EOF and its task ends
    two_peer.close()


# -- yastack proxy --cores 2, in a namespace ------------------------------------------------------
def requests_on_new_connections(namespace: NetworkNamespace, url: str) -> None:
    """REQUESTS separate curls (a new connection each, so new 4-tuples to spread)."""
    loop = f"for i in $(seq {REQUESTS}); do curl -sS --max-time 10 {url} || exit 1; echo; done"
    result = namespace.run(["sh", "-c", loop], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello, world!"] * REQUESTS


def core_stats_of(namespace: NetworkNamespace, core: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in admin(namespace, f"/stats?core={core}").splitlines():
        name, _, value = line.rpartition(": ")
        out[name] = int(value)
    return out


def check_admin_totals(namespace: NetworkNamespace, listener_stat: str) -> None:
    """The admin's merged counters are the sum of the two cores' own, both cores served, and the
    Prometheus and /clusters views carry the same totals."""
    merged = stats(namespace)
    cores = [core_stats_of(namespace, 0), core_stats_of(namespace, 1)]
    for name in (
        "http.ingress_http.downstream_rq_total",
        "http.ingress_http.downstream_rq_2xx",
        listener_stat,
    ):
        assert merged[name] == REQUESTS, (name, merged)
        assert [c[name] for c in cores] != [0, REQUESTS] and [c[name] for c in cores] != [REQUESTS, 0]
        assert sum(c[name] for c in cores) == merged[name], (name, cores)
    assert merged["cluster.app.upstream_rq_total"] == REQUESTS
    assert merged["server.state"] == 0 and merged["server.admin_cores_unreachable"] == 0
    prometheus = admin(namespace, "/stats/prometheus")
    assert (
        f'envoy_http_downstream_rq_total{{envoy_http_conn_manager_prefix="ingress_http"}} {REQUESTS}\n'
        in (prometheus)
    )
    rq_total = [
        int(line.rpartition("::")[2])
        for line in admin(namespace, "/clusters").splitlines()
        if "::rq_total::" in line
    ]
    assert sum(rq_total) == REQUESTS, rq_total
    status, body = curl_status(namespace, "http://127.0.0.1:9901/stats?core=2")
    assert (status, body) == (400, "core: one of 0, 1\n")


def drain_both(proxy: ProxyProcess) -> list[dict[str, int]]:
    """SIGTERM to the launcher: both cores drain (each says so), it exits 0 and prints per-core totals."""
    proxy.send_signal(signal.SIGTERM, b"trio_yastack")
    code = proxy.wait(60)
    assert code == 0, proxy.output
    for core in (0, 1):
        assert proxy.count_lines(f"# core {core}: SIGTERM: draining") == 1, proxy.output
        assert proxy.count_lines(f"# core {core}: drained") == 1, proxy.output
    [line] = proxy.wait_for_lines("# per core: ", timeout=1)
    per_core: list[dict[str, int]] = json.loads(line.removeprefix("# per core: "))
    assert [c["core"] for c in per_core] == [0, 1], per_core
    assert "# drained; exiting" in proxy.output
    return per_core


@requires_netns
@pytest.mark.netns
def test_proxy_two_cores_over_kernel_sockets(netns: NetworkNamespace, tmp_path: Path) -> None:
    """Kernel sockets: both cores listen on 127.0.0.1:10000 with SO_REUSEPORT; 40 connections
    are spread over both, every one answered; admin totals = the sum of the cores; drain."""
    config = tmp_path / "proxy.yaml"
    config.write_text(KERNEL_CONFIG)
    backend = hello_backend(netns, "127.0.0.1", 8080)
    proxy = ProxyProcess.start(netns, config, "--cores", "2")
    try:
        assert proxy.count_lines("# proxy ready") == 1 and "on 2 cores" in proxy.output, proxy.output
        assert proxy.count_lines("# admin on http://127.0.0.1:9901 (kernel)") == 1, proxy.output
        requests_on_new_connections(netns, "http://127.0.0.1:10000/")
        check_admin_totals(netns, "listener.127.0.0.1_10000.downstream_cx_total")
        per_core = drain_both(proxy)
        served = [c["downstream_rq_total"] for c in per_core]
        assert sum(served) == REQUESTS and all(n > 0 for n in served), per_core
    finally:
        proxy.stop(signal.SIGKILL)
        backend.stop()


@requires_netns
@pytest.mark.netns
@pytest.mark.parametrize("nic", ["tap:yas0", "tap:yas0,queues=1"], ids=["multi_queue", "software_rss"])
def test_proxy_two_cores_over_the_stack(netns: NetworkNamespace, tmp_path: Path, nic: str) -> None:
    """The bypass path: a TAP with a queue per core (or one queue that core 0 reads and
    dispatches by the Toeplitz hash), a stack per core; the 40 connections are spread over the
    cores, each core proxies its own to 198.18.0.1:8080 over its own stack;
    admin (core 0, kernel loopback) totals = the sum of the cores, and each core's own counters
    are what ``yastack stat`` reads from that core's control socket; drain."""
    control = tmp_path / "ctl"
    proxy = ProxyProcess.start(
        netns,
        EXAMPLES / "bypass_stack.yaml",
        *("--nic", nic, "--ip", f"{STACK_ADDRESS}/24", "--cores", "2", "--control", str(control)),
    )
    backend = None
    try:
        assert f"# listener bypass_ingress: http://{STACK_ADDRESS}:80 (user-space stack)" in proxy.output
        backend = hello_backend(netns, KERNEL_ADDRESS, 8080)
        requests_on_new_connections(netns, f"http://{STACK_ADDRESS}:80/")
        merged = stats(netns)
        cores = [core_stats_of(netns, 0), core_stats_of(netns, 1)]
        for name in (
            "http.bypass_http.downstream_rq_total",
            f"listener.{STACK_ADDRESS}_80.downstream_cx_total",
        ):
            assert merged[name] == REQUESTS, (name, merged)
            assert all(c[name] > 0 for c in cores), (name, cores)
            assert sum(c[name] for c in cores) == REQUESTS, (name, cores)
        assert merged["cluster.upstream.upstream_rq_total"] == REQUESTS
        result = subprocess.run(
            [sys.executable, "-m", "trio_yastack", "stat", "--control", str(control), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        observed = json.loads(result.stdout)["cores"]
        assert [core["core"] for core in observed] == [0, 1]
        name = "http.bypass_http.downstream_rq_total"
        assert [core["app"]["proxy"][name] for core in observed] == [c[name] for c in cores]
        accepted = [core["stack"]["tcp"]["counters"]["connections_accepted"] for core in observed]
        assert accepted == [c[f"listener.{STACK_ADDRESS}_80.downstream_cx_total"] for c in cores], accepted
        per_core = drain_both(proxy)
        assert sum(c["downstream_rq_total"] for c in per_core) == REQUESTS, per_core
    finally:
        proxy.stop(signal.SIGKILL)
        if backend is not None:
            backend.stop()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


@requires_netns
@pytest.mark.netns
def test_proxy_two_cores_stops_when_a_worker_is_killed(netns: NetworkNamespace, tmp_path: Path) -> None:
    """SIGKILL to one core's process: the launcher names the core and PID, drains the other
    core and exits 1 (nothing restarted silently), as ``yastack serve --cores`` does."""
    config = tmp_path / "proxy.yaml"
    config.write_text(KERNEL_CONFIG)
    proxy = ProxyProcess.start(netns, config, "--cores", "2")
    try:
        workers = children(proxy.process.pid)
        assert len(workers) == 2, workers
        for pid in workers:  # our own program's workers, checked before signalling
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"trio_yastack" in argv and b"proxy" in argv, argv
        victim, survivor = workers
        os.kill(victim, signal.SIGKILL)
        code = proxy.wait(45)
        assert code == 1, proxy.output
        named = re.search(rf"worker for core ([01]) \(pid {victim}\) was killed by SIGKILL", proxy.output)
        assert named is not None, proxy.output
        other = 1 - int(named.group(1))
        assert proxy.count_lines(f"# core {other}: SIGTERM: draining") == 1, proxy.output
        assert not Path(f"/proc/{survivor}").exists(), "the other worker outlived the launcher"
        assert "# per core:" not in proxy.output
    finally:
        proxy.stop(signal.SIGKILL)


def test_proxy_rejects_zero_cores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--cores 0`` is one clear line and exit 1, before anything is opened."""
    config = tmp_path / "proxy.yaml"
    config.write_text(KERNEL_CONFIG)
    from trio_yastack._cli import main

    assert main(["proxy", "-c", str(config), "--cores", "0"]) == 1
    assert "--cores >= 1" in capsys.readouterr().err


def trio_backend(namespace: NetworkNamespace) -> Program:
    """hello.py under hypercorn's trio worker on 127.0.0.1:8080: its ``/stream?interval=`` paces
    with ``trio.sleep`` (under hello_backend's default asyncio worker the stream stops after its
    first chunk)."""
    backend = Program(
        namespace,
        [sys.executable, "-m", "hypercorn", "examples.hello:app", "--bind", "127.0.0.1:8080",
         "--worker-class", "trio", "--workers", "0", "--error-logfile", "-", "--log-level", "info"],
    )  # fmt: skip
    try:
        backend.wait_for_line("Running on http://127.0.0.1:8080")
    except BaseException:
        backend.stop(signal.SIGKILL)
        raise
    return backend


@requires_netns
@pytest.mark.netns
def test_proxy_two_cores_drain_finishes_requests_in_flight_on_both(
    netns: NetworkNamespace, tmp_path: Path
) -> None:
    """16 slow responses in flight (8 s each), spread over both cores; SIGTERM: every core drains
    (stops accepting, lets its requests finish), every response arrives whole, exit 0."""
    config = tmp_path / "proxy.yaml"
    config.write_text(KERNEL_CONFIG)
    backend = trio_backend(netns)
    proxy = ProxyProcess.start(netns, config, "--cores", "2", "--drain-time", "20")
    clients = None
    try:
        url = "http://127.0.0.1:10000/stream?bytes=16000&chunk=1000&interval=0.5"
        report = "-w '%{http_code} %{size_download}\\n'"
        script = f"for i in $(seq 16); do curl -sS --max-time 30 -o /dev/null {report} '{url}' & done; wait"
        clients = netns.popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        active = "http.ingress_http.downstream_rq_active"
        poll(lambda: stats(netns)[active] == 16, "16 requests in flight", 15, 0.05)
        actives = [core_stats_of(netns, core)[active] for core in (0, 1)]
        assert all(n > 0 for n in actives) and sum(actives) == 16, actives
        per_core = drain_both(proxy)
        out, err = clients.communicate(timeout=30)
        assert out.splitlines() == ["200 16000"] * 16, (out, err)
        assert [c["downstream_rq_total"] for c in per_core] == actives, per_core
    finally:
        if clients is not None and clients.poll() is None:
            clients.kill()
            clients.wait()
        proxy.stop(signal.SIGKILL)
        backend.stop()


@requires_netns
@pytest.mark.netns
def test_proxy_two_cores_admin_health_check_and_quit_reach_every_core(
    netns: NetworkNamespace, tmp_path: Path
) -> None:
    """``POST /healthcheck/fail`` on core 0's admin: responses from both cores say
    ``connection: close``; ``/healthcheck/ok`` undoes it on both; ``POST /quitquitquit`` drains
    every core and the proxy exits 0."""
    config = tmp_path / "proxy.yaml"
    config.write_text(KERNEL_CONFIG)
    backend = hello_backend(netns, "127.0.0.1", 8080)
    proxy = ProxyProcess.start(netns, config, "--cores", "2")
    try:

        def closes_per_core() -> list[int]:
            """``connection: close`` answers by core, over REQUESTS new connections."""
            before = [core_stats_of(netns, core)["http.ingress_http.downstream_rq_total"] for core in (0, 1)]
            curl = "curl -sS -i --max-time 10 http://127.0.0.1:10000/"
            loop = f"for i in $(seq {REQUESTS}); do {curl} || exit 1; done"
            result = netns.run(["sh", "-c", loop], timeout=120)
            assert result.returncode == 0, result.stderr
            after = [core_stats_of(netns, core)["http.ingress_http.downstream_rq_total"] for core in (0, 1)]
            served = [a - b for a, b in zip(after, before, strict=True)]
            assert all(n > 0 for n in served), served
            return [result.stdout.lower().count("connection: close"), sum(served)]

        assert admin(netns, "/healthcheck/fail", method="POST") == "OK\n"
        assert closes_per_core() == [REQUESTS, REQUESTS]  # every answer, from either core
        assert admin(netns, "/healthcheck/ok", method="POST") == "OK\n"
        assert closes_per_core() == [0, REQUESTS]
        assert admin(netns, "/quitquitquit", method="POST") == "OK\n"
        assert proxy.wait(60) == 0, proxy.output
        for core in (0, 1):
            assert proxy.count_lines(f"# core {core}: SIGTERM: draining") == 1, proxy.output
        assert "# drained; exiting" in proxy.output
    finally:
        proxy.stop(signal.SIGKILL)
        backend.stop()


def test_proxy_cores_on_the_stack_want_the_admin_on_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --nic and several cores only core 0 listens for the admin, and its stack sees only
    the flows the RSS hash gives it: an admin address on the stack is refused up front."""
    config = tmp_path / "proxy.yaml"
    config.write_text(
        KERNEL_CONFIG.replace("address: 127.0.0.1, port_value: 9901", "address: 0.0.0.0, port_value: 9901")
    )
    from trio_yastack._cli import main

    assert main(["proxy", "-c", str(config), "--cores", "2", "--nic", "tap:yas0", "--check-only"]) == 1
    assert "the admin endpoint must be on the kernel's loopback (it is 0.0.0.0)" in capsys.readouterr().err
    assert main(["proxy", "-c", str(config), "--cores", "2", "--check-only"]) == 0  # kernel sockets: fine


HEALTH_CHECKED = KERNEL_CONFIG.replace(
    "        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}\n",
    "        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}\n"
    "        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8081}}}\n"
    "    health_checks:\n"
    "    - {timeout: 0.5s, interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1,\n"
    "       http_health_check: {path: /healthz}}\n",
)


@requires_netns
@pytest.mark.netns
def test_proxy_two_cores_health_check_on_every_core(netns: NetworkNamespace, tmp_path: Path) -> None:
    """Two endpoints, one of them down: each core health-checks on its own (as each Envoy worker
    would see its own pools), both find 8081 failing; the merged /clusters shows it failed and
    8080 healthy, the attempts add up, and every request (on either core) goes to 8080."""
    assert HEALTH_CHECKED != KERNEL_CONFIG
    config = tmp_path / "proxy.yaml"
    config.write_text(HEALTH_CHECKED)
    backend = hello_backend(netns, "127.0.0.1", 8080)
    proxy = ProxyProcess.start(netns, config, "--cores", "2")
    try:

        def both_cores_failed_8081() -> bool:
            cores = [core_stats_of(netns, core) for core in (0, 1)]
            return all(c["cluster.app.health_check.failure"] > 0 for c in cores)

        poll(both_cores_failed_8081, "a failed check of 127.0.0.1:8081 on each core", 20)
        hosts = {
            line.split("::")[1]: line.rpartition("::")[2]
            for line in admin(netns, "/clusters").splitlines()
            if "::health_flags::" in line
        }
        assert hosts == {"127.0.0.1:8080": "healthy", "127.0.0.1:8081": "/failed_active_hc"}, hosts
        cores = [core_stats_of(netns, core) for core in (0, 1)]
        merged = stats(netns)  # read after the cores': counters only grow, so at least their sum
        assert merged["cluster.app.membership_healthy"] == 1 and merged["cluster.app.membership_total"] == 2
        attempts = "cluster.app.health_check.attempt"
        assert merged[attempts] >= sum(c[attempts] for c in cores) > max(c[attempts] for c in cores), cores
        requests_on_new_connections(netns, "http://127.0.0.1:10000/")
    finally:
        proxy.stop()
        backend.stop()
