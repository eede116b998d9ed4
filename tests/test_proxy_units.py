"""The proxy's pure parts, without I/O: routing, header rules, statistics, the access log line, the
admin endpoint's answers, and the TLS inspector's ClientHello parser (on real ClientHellos made by
OpenSSL through ``ssl.MemoryBIO``, and fuzzed)."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_helpers import (
    bootstrap,
    cluster,
    hcm,
    http_bootstrap,
    http_listener,
    route,
)

from trio_yastack.l7.access_log import AccessRecord, format_record
from trio_yastack.l7.admin import AdminServer
from trio_yastack.l7.config import HCM_TYPE, ConfigError, HeaderValueOption, RouteConfiguration
from trio_yastack.l7.proxy import Proxy
from trio_yastack.l7.router import (
    HOP_BY_HOP,
    Router,
    apply_header_options,
    get_header,
    rewrite_path,
    strip_hop_by_hop,
)
from trio_yastack.l7.stats import Stats
from trio_yastack.tls.client_hello import (
    ClientHelloInfo,
    NotClientHello,
    PrefixedStream,
    parse_client_hello,
    peek_client_hello,
)

# --- routing ---------------------------------------------------------------------------------


def route_config(virtual_hosts: list[dict[str, Any]]) -> RouteConfiguration:
    config = http_bootstrap([cluster("app", [8080])], virtual_hosts=virtual_hosts)
    return config.listeners[0].filter_chains[0].filter.route_config  # type: ignore[union-attr]


def vhost(name: str, *domains: str, routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "domains": list(domains), "routes": routes or [route(direct={"status": 200})]}


DOMAINS_ROUTER = Router(
    route_config(
        [
            vhost("exact", "api.example.com"),
            vhost("exact_port", "api.example.com:8443"),
            vhost("suffix_short", "*.com"),
            vhost("suffix_long", "*.example.com"),
            vhost("suffix_dash", "*-bar.example.com"),
            vhost("prefix_short", "api.*"),
            vhost("prefix_long", "api.example.*"),
            vhost("any", "*"),
        ]
    )
)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("api.example.com", "exact"),  # exact beats every wildcard
        ("API.Example.COM", "exact"),  # domains compare case-insensitively
        ("api.example.com:8443", "exact_port"),  # the port is part of the domain as written
        ("www.example.com", "suffix_long"),  # the longest suffix wildcard wins
        ("foo-bar.example.com", "suffix_dash"),  # ... and "*-bar.example.com" is longer still
        ("-bar.example.com", "suffix_long"),  # a wildcard never matches the empty string
        ("a.b.example.com", "suffix_long"),  # a suffix wildcard spans several labels
        ("other.com", "suffix_short"),
        ("api.example.org", "prefix_long"),  # suffix wildcards first, then the longest prefix
        ("api.other.org", "prefix_short"),
        ("www.example.com:8080", "any"),  # "*.example.com" does not match with a port appended
        ("api.example.org:8080", "prefix_long"),  # a prefix wildcard does
        ("localhost", "any"),
        ("", "any"),
    ],
)
def test_virtual_host_search_order(authority: str, expected: str) -> None:
    found = DOMAINS_ROUTER.virtual_host(authority)
    assert found is not None and found.name == expected


def test_no_virtual_host_without_a_catch_all() -> None:
    router = Router(route_config([vhost("only", "only.example")]))
    assert router.virtual_host("other.example") is None
    assert router.virtual_host("only.example:80") is None


def test_equal_length_wildcards_keep_config_order() -> None:
    router = Router(route_config([vhost("first", "*.aa.example"), vhost("second", "*.bb.example")]))
    assert router.virtual_host("x.aa.example").name == "first"  # type: ignore[union-attr]
    assert router.virtual_host("x.bb.example").name == "second"  # type: ignore[union-attr]


def _routes_router() -> tuple[Router, Any]:
    def direct(status: int) -> dict[str, Any]:
        return {"status": status}

    routes = [
        route(path="/exact", direct=direct(201)),
        route("/api/", headers=[{"name": "x-canary", "exact_match": "1"}], direct=direct(202)),
        route("/api/", headers=[{"name": "x-tier", "string_match": {"prefix": "gold"}}], direct=direct(203)),
        route(
            "/api/",
            headers=[{"name": "x-env", "string_match": {"exact": "PROD", "ignore_case": True}}],
            direct=direct(204),
        ),
        route("/api/", headers=[{"name": "x-debug", "present_match": True}], direct=direct(205)),
        route("/api/", headers=[{"name": "x-user"}], direct=direct(206)),  # no specifier: present
        route("/api/", headers=[{"name": "x-anon", "present_match": False}], direct=direct(207)),
        route("/api/", direct=direct(208)),
        route("/", direct=direct(209)),
    ]
    config = route_config([vhost("all", "*", routes=routes)])
    router = Router(config)
    return router, config.virtual_hosts[0]


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        ("/exact", [], 201),
        ("/exact?x=1", [], 201),  # path ignores the query
        ("/exact/", [], 209),  # ... but nothing else
        ("/EXACT", [], 209),  # and is case-sensitive
        ("/api/x", [(b"x-canary", b"1")], 202),
        ("/api/x", [(b"x-canary", b"2"), (b"x-anon", b"1")], 208),  # exact fails; x-anon present fails 207
        ("/api/x", [(b"x-canary", b"1"), (b"x-canary", b"1"), (b"x-anon", b"")], 208),  # seen as "1,1"
        ("/api/x", [(b"x-tier", b"golden")], 203),
        ("/api/x", [(b"x-tier", b"silver-gold")], 207),
        ("/api/x", [(b"x-env", b"prod")], 204),
        ("/api/x", [(b"x-debug", b"")], 205),  # present, even when empty
        ("/api/x", [(b"x-user", b"u")], 206),
        ("/api/x", [], 207),  # x-anon absent
        ("/api", [], 209),  # the prefix is "/api/"
        ("/apix", [], 209),
        ("/api/?q", [(b"x-anon", b"")], 208),
    ],
)
def test_first_matching_route_wins(target: str, headers: list[tuple[bytes, bytes]], status: int) -> None:
    router, vh = _routes_router()
    found = router.route(vh, target, headers)
    assert found is not None
    assert found.action.status == status  # type: ignore[union-attr]


def test_no_route_matches() -> None:
    config = route_config([vhost("all", "*", routes=[route("/only/", direct={"status": 200})])])
    router = Router(config)
    assert router.route(config.virtual_hosts[0], "/other", []) is None


@pytest.mark.parametrize(
    ("match", "rewrite", "target", "expected"),
    [
        ({"prefix": "/api/"}, "/", "/api/users?id=7", "/users?id=7"),
        ({"prefix": "/api"}, "/v2", "/api/users", "/v2/users"),
        ({"prefix": "/api"}, "/", "/api/users", "//users"),  # Envoy's documented result
        ({"prefix": "/"}, "/base/", "/x", "/base/x"),
        ({"path": "/old"}, "/new", "/old?q=1", "/new?q=1"),  # a path match keeps the query
        ({"path": "/old"}, "/new", "/old", "/new"),
    ],
)
def test_prefix_rewrite(match: dict[str, str], rewrite: str, target: str, expected: str) -> None:
    routes = [
        {"match": match, "route": {"cluster": "app", "prefix_rewrite": rewrite}},
    ]
    config = route_config([vhost("all", "*", routes=routes)])
    the_route = config.virtual_hosts[0].routes[0]
    assert rewrite_path(target, the_route, rewrite) == expected


# --- headers ---------------------------------------------------------------------------------


def test_hop_by_hop_headers_are_removed() -> None:
    headers = [
        (b"host", b"h"),
        (b"connection", b"keep-alive, X-Secret ,  x-other"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authenticate", b"Basic"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"x-secret", b"1"),
        (b"x-other", b"2"),
        (b"x-kept", b"3"),
        (b"x-kept", b"4"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"h"), (b"x-kept", b"3"), (b"x-kept", b"4")]
    assert {name for name, _ in headers} >= HOP_BY_HOP


def test_connection_named_headers_in_several_connection_fields() -> None:
    headers = [
        (b"connection", b"X-A"),
        (b"connection", b"x-b"),
        (b"x-a", b"1"),
        (b"x-b", b"2"),
        (b"x-c", b"3"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-c", b"3")]


def test_upgrade_kept_for_a_websocket_handshake() -> None:
    headers = [
        (b"host", b"h"),
        (b"connection", b"Upgrade, keep-alive"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"k"),
        (b"keep-alive", b"5"),
    ]
    out = strip_hop_by_hop(headers, keep_upgrade=True)
    assert out == [
        (b"host", b"h"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"k"),
        (b"connection", b"upgrade"),
    ]


def test_get_header_joins_values() -> None:
    headers = [(b"a", b"1"), (b"b", b"x"), (b"a", b"2")]
    assert get_header(headers, b"a") == b"1,2"
    assert get_header(headers, b"b") == b"x"
    assert get_header(headers, b"c") is None


@pytest.mark.parametrize(
    ("action", "present_result", "absent_result"),
    [
        ("APPEND_IF_EXISTS_OR_ADD", [(b"x-a", b"old"), (b"x-a", b"new")], [(b"x-a", b"new")]),
        ("ADD_IF_ABSENT", [(b"x-a", b"old")], [(b"x-a", b"new")]),
        ("OVERWRITE_IF_EXISTS_OR_ADD", [(b"x-a", b"new")], [(b"x-a", b"new")]),
        ("OVERWRITE_IF_EXISTS", [(b"x-a", b"new")], []),
    ],
)
def test_header_append_actions(
    action: str, present_result: list[tuple[bytes, bytes]], absent_result: list[tuple[bytes, bytes]]
) -> None:
    option = HeaderValueOption("X-A", "new", action)  # type: ignore[arg-type]
    assert apply_header_options([(b"host", b"h"), (b"x-a", b"old")], [option], []) == [
        (b"host", b"h"),
        *present_result,
    ]
    assert apply_header_options([(b"host", b"h")], [option], []) == [(b"host", b"h"), *absent_result]


def test_headers_removed_before_added() -> None:
    headers = [(b"x-debug", b"1"), (b"x-route", b"client"), (b"keep", b"k")]
    out = apply_header_options(
        headers,
        [HeaderValueOption("x-route", "proxy", "APPEND_IF_EXISTS_OR_ADD")],
        ["X-Debug", "x-route"],
    )
    assert out == [(b"keep", b"k"), (b"x-route", b"proxy")]


# --- statistics ------------------------------------------------------------------------------


def sample_stats() -> Stats:
    stats = Stats()
    app = stats.scope("cluster", "app")
    app.declare("upstream_rq_retry")
    app.inc("upstream_rq_total", 3)
    app.inc("upstream_rq_200", 2)
    app.inc("upstream_rq_2xx", 2)
    app.gauge_set("upstream_cx_active", 1)
    app.inc("health_check.attempt")
    other = stats.scope("cluster", 'we"ird')
    other.inc("upstream_rq_total")
    http = stats.scope("http", "ingress")
    http.inc("downstream_rq_total", 5)
    stats.scope("listener", "0.0.0.0_10000").inc("downstream_cx_total", 4)
    stats.scope("tcp", "db").inc("downstream_cx_total")
    stats.scope("server").gauge_set("state", 0)
    return stats


def test_stats_text_is_sorted_name_colon_value() -> None:
    text = sample_stats().render_text()
    lines = text.splitlines()
    assert lines == sorted(lines)
    assert "cluster.app.upstream_rq_retry: 0" in lines  # declared counters are listed at zero
    assert "cluster.app.upstream_rq_total: 3" in lines
    assert "cluster.app.health_check.attempt: 1" in lines
    assert "http.ingress.downstream_rq_total: 5" in lines
    assert "listener.0.0.0.0_10000.downstream_cx_total: 4" in lines
    assert "tcp.db.downstream_cx_total: 1" in lines
    assert "server.state: 0" in lines
    assert all(re.fullmatch(r"[\w.\"-]+: -?\d+", line) for line in lines)
    filtered = sample_stats().render_text("upstream_rq_total").splitlines()
    assert filtered == ["cluster.app.upstream_rq_total: 3", 'cluster.we"ird.upstream_rq_total: 1']


def test_stats_value_by_full_name() -> None:
    stats = sample_stats()
    assert stats.value("cluster.app.upstream_rq_total") == 3
    assert stats.value("cluster.app.upstream_cx_active") == 1
    assert stats.value("listener.0.0.0.0_10000.downstream_cx_total") == 4
    assert stats.value("cluster.app.never_touched") == 0
    assert stats.flat()["http.ingress.downstream_rq_total"] == 5


def test_prometheus_names_tags_and_types() -> None:
    text = sample_stats().render_prometheus()
    lines = text.splitlines()
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in lines
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="app"} 3' in lines
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="we\\"ird"} 1' in lines  # escaped
    assert "# TYPE envoy_cluster_upstream_cx_active gauge" in lines
    assert 'envoy_cluster_health_check_attempt{envoy_cluster_name="app"} 1' in lines
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"} 5' in lines
    assert 'envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_10000"} 4' in lines
    assert 'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="db"} 1' in lines
    assert "envoy_server_state 0" in lines
    # one TYPE line per family, before its samples; every sample line is well formed
    types = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    family = None
    for line in lines:
        if line.startswith("# TYPE "):
            family = line.split()[2]
            continue
        label = r'[a-z_]+="(?:[^"\\]|\\.)*"'
        assert re.fullmatch(rf"[a-zA-Z_][a-zA-Z0-9_]*(\{{{label}(?:,{label})*\}})? -?\d+", line), line
        assert line.split("{")[0].split(" ")[0] == family


def test_prometheus_response_code_tags_as_envoy() -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: Envoy's default tag extractors turn cluster.app.upstream_rq_2xx into
    # envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",...} and upstream_rq_200 into
    # envoy_cluster_upstream_rq{envoy_response_code="200",...}; stats.py render_prometheus
    # (_TAG_NAMES, ~line 27/117) only extracts the scope name, so Envoy dashboards that query
    # envoy_cluster_upstream_rq_xx find nothing.
    lines = sample_stats().render_prometheus().splitlines()
    assert any(
        line.startswith("envoy_cluster_upstream_rq_xx{")
        and 'envoy_response_code_class="2"' in line
        and 'envoy_cluster_name="app"' in line
        and line.endswith(" 2")
        for line in lines
    )
    assert any(
        line.startswith("envoy_cluster_upstream_rq{") and 'envoy_response_code="200"' in line
        for line in lines
    )


# --- access log ------------------------------------------------------------------------------

#: Envoy's DEFAULT_FORMAT (config/accesslog/v3), one line per request
ENVOY_DEFAULT = re.compile(
    r"\[(?P<start_time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" (?P<response_code>\d+) (?P<response_flags>\S+) '
    r"(?P<bytes_received>\d+) (?P<bytes_sent>\d+) (?P<duration>\d+) (?P<upstream_service_time>\d+|-) "
    r'"(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)"\n'
)


def test_access_log_line_is_envoys_default_format() -> None:
    record = AccessRecord(
        start_time=1_700_000_000.5,  # 2023-11-14T22:13:20.500Z
        method="POST",
        path="/api/x?y=1",
        protocol="HTTP/1.1",
        response_code=201,
        response_flags="-",
        bytes_received=12,
        bytes_sent=345,
        duration_ms=7,
        upstream_service_time="5",
        x_forwarded_for="10.0.0.1,198.18.0.1",
        user_agent="curl/8.0",
        request_id="abc-123",
        authority="api.example",
        upstream_host="198.18.0.1:8081",
    )
    line = format_record(record)
    assert line == (
        '[2023-11-14T22:13:20.500Z] "POST /api/x?y=1 HTTP/1.1" 201 - 12 345 7 5 '
        '"10.0.0.1,198.18.0.1" "curl/8.0" "abc-123" "api.example" "198.18.0.1:8081"\n'
    )
    assert ENVOY_DEFAULT.fullmatch(line)


def test_access_log_absent_values_are_dashes() -> None:
    line = format_record(AccessRecord(start_time=0.0, response_flags="UF", response_code=0))
    assert line == '[1970-01-01T00:00:00.000Z] "- - -" 0 UF 0 0 0 - "-" "-" "-" "-" "-"\n'
    m = ENVOY_DEFAULT.fullmatch(line)
    assert m is not None and m["response_flags"] == "UF"


# --- admin -----------------------------------------------------------------------------------


def admin_server() -> tuple[AdminServer, Proxy, list[str]]:
    hc = [
        {
            "timeout": "1s",
            "interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/healthz"},
        }
    ]
    config = bootstrap(
        [http_listener(hcm([route()]))],
        [
            cluster(
                "app", [8081, 8082], health_checks=hc, circuit_breakers={"thresholds": [{"max_requests": 7}]}
            )
        ],
        admin_port=9901,
    )
    proxy = Proxy(config, warn=lambda line: None)
    calls: list[str] = []
    server = AdminServer(config, proxy.stats, proxy.clusters, proxy.state, lambda: calls.append("shutdown"))
    return server, proxy, calls


def test_admin_index_and_unknown_path() -> None:
    server, _, _ = admin_server()
    status, content_type, body = server.handle("GET", "/")
    assert (status, content_type) == (200, "text/plain")
    for path in (
        b"/stats",
        b"/stats/prometheus",
        b"/clusters",
        b"/ready",
        b"/config_dump",
        b"/healthcheck/fail",
    ):
        assert path in body
    status, _, body = server.handle("GET", "/nope")
    assert status == 404 and b"/stats" in body


def test_admin_stats_forms() -> None:
    server, proxy, _ = admin_server()
    proxy.stats.scope("cluster", "app").inc("upstream_rq_total", 4)
    status, content_type, body = server.handle("GET", "/stats")
    assert (status, content_type) == (200, "text/plain")
    assert "cluster.app.upstream_rq_total: 4" in body.decode().splitlines()
    assert "cluster.app.upstream_rq_retry: 0" in body.decode().splitlines()
    _, _, body = server.handle("GET", "/stats?filter=rq_total")
    filtered = body.decode().splitlines()
    assert {"cluster.app.upstream_rq_total: 4", "http.ingress.downstream_rq_total: 0"} <= set(filtered)
    assert all("rq_total" in line.partition(":")[0] for line in filtered)
    status, content_type, body = server.handle("GET", "/stats?format=json")
    assert (status, content_type) == (200, "application/json")
    stats = {entry["name"]: entry["value"] for entry in json.loads(body)["stats"]}
    assert stats["cluster.app.upstream_rq_total"] == 4
    status, content_type, body = server.handle("GET", "/stats/prometheus")
    assert (status, content_type) == (200, "text/plain; version=0.0.4")
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="app"} 4' in body.decode().splitlines()
    assert server.handle("HEAD", "/stats")[0] == 200


def test_admin_stats_filter_is_a_regex_as_in_envoy() -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: Envoy documents /stats?filter=REGEX (partial regex match); admin.py handle() passes the
    # text to Stats.render_text, which keeps names *containing* it (stats.py ~line 113), so
    # Envoy-style scripts (filter=^cluster\.app\.) get nothing.
    server, proxy, _ = admin_server()
    proxy.stats.scope("cluster", "app").inc("upstream_rq_total", 4)
    _, _, body = server.handle("GET", r"/stats?filter=^cluster\.app\.upstream_rq_total$")
    assert body.decode().splitlines() == ["cluster.app.upstream_rq_total: 4"]


def test_admin_clusters() -> None:
    server, proxy, _ = admin_server()
    status, content_type, body = server.handle("GET", "/clusters")
    assert (status, content_type) == (200, "text/plain")
    lines = body.decode().splitlines()
    assert "app::default_priority::max_requests::7" in lines
    assert "app::default_priority::max_connections::1024" in lines
    # before the first health check every host is failed and pending, as in Envoy
    assert "app::198.18.0.1:8081::health_flags::/failed_active_hc/pending_active_hc" in lines
    assert "app::198.18.0.1:8082::rq_total::0" in lines
    proxy.clusters["app"].hosts[0].failed_active_hc = False
    proxy.clusters["app"].hosts[0].pending_active_hc = False
    assert "app::198.18.0.1:8081::health_flags::healthy" in server.handle("GET", "/clusters")[2].decode()
    status, content_type, body = server.handle("GET", "/clusters?format=json")
    assert (status, content_type) == (200, "application/json")
    (app,) = json.loads(body)["cluster_statuses"]
    assert app["name"] == "app"
    assert [h["address"]["socket_address"]["port_value"] for h in app["host_statuses"]] == [8081, 8082]
    assert [h["health_status"]["failed_active_health_check"] for h in app["host_statuses"]] == [False, True]


def test_admin_ready_follows_the_server_state() -> None:
    server, proxy, _ = admin_server()
    assert server.handle("GET", "/ready") == (503, "text/plain", b"PRE_INITIALIZING\n")
    proxy.state.initialized = True
    assert server.handle("GET", "/ready") == (200, "text/plain", b"LIVE\n")
    proxy.state.shutting_down = True
    assert server.handle("GET", "/ready") == (503, "text/plain", b"DRAINING\n")


def test_admin_healthcheck_fail_and_ok() -> None:
    server, proxy, _ = admin_server()
    proxy.state.initialized = True
    assert server.handle("POST", "/healthcheck/fail")[:2] == (200, "text/plain")
    assert proxy.state.health_check_failed and proxy.state.draining
    assert server.handle("GET", "/ready") == (503, "text/plain", b"DRAINING\n")
    info = json.loads(server.handle("GET", "/server_info")[2])
    assert info["state"] == "DRAINING"
    assert server.handle("POST", "/healthcheck/ok")[0] == 200
    assert not proxy.state.draining
    assert server.handle("GET", "/ready")[0] == 200


@pytest.mark.parametrize("path", ["/healthcheck/fail", "/healthcheck/ok", "/quitquitquit"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_admin_mutating_paths_want_post(path: str, method: str) -> None:
    server, proxy, calls = admin_server()
    proxy.state.initialized = True
    status, _, _ = server.handle(method, path)
    assert status == 405
    assert not proxy.state.health_check_failed and not proxy.state.shutting_down and calls == []


def test_admin_quitquitquit_shuts_down() -> None:
    server, _, calls = admin_server()
    assert server.handle("POST", "/quitquitquit")[0] == 200
    assert calls == ["shutdown"]


def test_admin_read_only_paths_refuse_post() -> None:
    server, _, _ = admin_server()
    for path in ("/stats", "/clusters", "/ready", "/config_dump"):
        assert server.handle("POST", path)[0] == 405


def test_admin_config_dump_and_server_info() -> None:
    server, _, _ = admin_server()
    status, content_type, body = server.handle("GET", "/config_dump")
    assert (status, content_type) == (200, "application/json")
    dump = json.loads(body)
    (config,) = dump["configs"]
    bootstrap_dump = config["bootstrap"]
    assert [c["name"] for c in bootstrap_dump["clusters"]] == ["app"]
    assert bootstrap_dump["clusters"][0]["circuit_breakers"]["max_requests"] == 7
    assert bootstrap_dump["listeners"][0]["address"] == {"address": "198.18.0.2", "port_value": 10000}
    status, content_type, body = server.handle("GET", "/server_info")
    info = json.loads(body)
    assert (
        status == 200 and info["state"] == "PRE_INITIALIZING" and info["version"].startswith("trio_yastack/")
    )


# --- the TLS inspector's ClientHello parser --------------------------------------------------


def client_hello(server_name: str | None, alpn: list[str] | None = None, *, tls13: bool = True) -> bytes:
    """The first flight of a real OpenSSL client: its ClientHello record(s)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if not tls13:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


REAL_HELLO = client_hello("a.example", ["h2", "http/1.1"])


@pytest.mark.parametrize("tls13", [True, False], ids=["tls13", "tls12"])
def test_real_client_hello(tls13: bool) -> None:
    data = client_hello("www.Example.COM", ["h2", "http/1.1"], tls13=tls13)
    assert data[0] == 22  # a handshake record
    assert parse_client_hello(data) == ClientHelloInfo("www.example.com", ("h2", "http/1.1"))
    # trailing bytes (the next record) change nothing
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x01x") == ClientHelloInfo(
        "www.example.com", ("h2", "http/1.1")
    )


def test_client_hello_without_sni_or_alpn() -> None:
    assert parse_client_hello(client_hello(None)) == ClientHelloInfo(None, ())
    # Python never sends an IP address as SNI
    assert parse_client_hello(client_hello("198.18.0.2", ["http/1.1"])) == ClientHelloInfo(
        None, ("http/1.1",)
    )


def test_every_prefix_of_a_client_hello_needs_more() -> None:
    for n in range(len(REAL_HELLO)):
        assert parse_client_hello(REAL_HELLO[:n]) is None, n


def test_client_hello_split_over_records() -> None:
    """A ClientHello may be fragmented over several handshake records (RFC 8446 5.1)."""
    body = REAL_HELLO[5:]
    for cut in (1, 3, 4, 40, len(body) - 1):
        first, second = body[:cut], body[cut:]
        data = (
            b"\x16\x03\x01"
            + len(first).to_bytes(2, "big")
            + first
            + b"\x16\x03\x01"
            + len(second).to_bytes(2, "big")
            + second
        )
        assert parse_client_hello(data) == ClientHelloInfo("a.example", ("h2", "http/1.1")), cut
        assert parse_client_hello(data[:-1]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x17\x03\x03\x00\x05hello",  # application data
        b"\x16\x02\x00\x00\x05hello",  # SSL 2 version byte
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x48\x01" + b"\x00" * 5,  # a record longer than TLS allows
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(NotClientHello):
        parse_client_hello(data)


def test_non_ascii_server_name_refused() -> None:
    body = REAL_HELLO
    index = body.index(b"a.example")
    with pytest.raises(NotClientHello):
        parse_client_hello(body[:index] + b"\xe4" + body[index + 1 :])


def _check_parse(data: bytes) -> None:
    try:
        result = parse_client_hello(data)
    except NotClientHello:
        return
    assert result is None or isinstance(result, ClientHelloInfo)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _check_parse(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 0xFFFF))
def test_fuzz_a_handshake_record_of_random_bytes(body: bytes, declared: int) -> None:
    """A well-formed record and handshake header around random bytes reaches the inner parser."""
    hello = b"\x01" + len(body).to_bytes(3, "big") + body
    _check_parse(b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello)
    _check_parse(
        b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + b"\x01" + declared.to_bytes(3, "big") + body
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(REAL_HELLO) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated_real_client_hello(edits: list[tuple[int, int]]) -> None:
    data = bytearray(REAL_HELLO)
    for index, value in edits:
        data[index] = value
    _check_parse(bytes(data))


async def test_peek_client_hello_replays_what_it_read() -> None:
    left, right = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await left.send_all(REAL_HELLO[:30])
        await left.send_all(REAL_HELLO[30:] + b"after")
        info, stream = await peek_client_hello(right)
        assert info == ClientHelloInfo("a.example", ("h2", "http/1.1"))
        assert isinstance(stream, PrefixedStream)
        replayed = b""
        while len(replayed) < len(REAL_HELLO) + 5:
            replayed += await stream.receive_some(100)
        assert replayed == REAL_HELLO + b"after"
        await left.send_all(b"more")
        assert await stream.receive_some(100) == b"more"
        await stream.send_all(b"back")
        assert await left.receive_some(100) == b"back"


async def test_peek_non_tls_bytes() -> None:
    left, right = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await left.send_all(b"GET / HTTP/1.1\r\n")
        info, stream = await peek_client_hello(right)
        assert info is None
        assert await stream.receive_some() == b"GET / HTTP/1.1\r\n"
        # a peer that closes mid-hello: no info, and what it sent is still there
        left2, right2 = trio.testing.memory_stream_pair()
        await left2.send_all(REAL_HELLO[:10])
        await left2.aclose()
        info, stream = await peek_client_hello(right2)
        assert info is None
        assert await stream.receive_some(5) == REAL_HELLO[:5]
        assert await stream.receive_some(100) == REAL_HELLO[5:10]


def test_access_log_formats_text_and_json(tmp_path: Path) -> None:
    """``log_format`` as Envoy writes it: a text format with operators, or one JSON object a line in
    which a value that is one operator keeps its type (numbers stay numbers)."""
    from trio_yastack.l7.access_log import AccessLogger
    from trio_yastack.l7.config import load_config

    file_log = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
    json_format = {
        "status": "%RESPONSE_CODE%",
        "method": "%REQ(:METHOD)%",
        "line": "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "ua": "%REQ(USER-AGENT)%",
    }
    text_source = {"inline_string": "%RESPONSE_CODE% %DURATION%ms"}
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": file_log, "path": str(tmp_path / "json.log"),
                             "log_format": {"json_format": json_format}},
        },
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": file_log, "path": str(tmp_path / "text.log"),
                             "log_format": {"text_format_source": text_source}},
        },
    ]  # fmt: skip
    manager = {
        "@type": HCM_TYPE,
        "stat_prefix": "x",
        "route_config": {},
        "http_filters": [{"name": "envoy.filters.http.router"}],
        "access_log": access_log,
    }
    listener = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
    doc = {"static_resources": {"listeners": [listener]}}
    config = load_config(json.dumps(doc))
    logs = config.listeners[0].filter_chains[0].filter.access_log  # type: ignore[union-attr]  # an HCM
    logger = AccessLogger(logs)
    logger.log(AccessRecord(start_time=0.0, method="GET", path="/a", response_code=201, duration_ms=7))
    logger.close()
    assert json.loads((tmp_path / "json.log").read_text()) == {
        "status": 201, "method": "GET", "line": "GET /a", "ua": None,
    }  # fmt: skip
    assert (tmp_path / "text.log").read_text() == "201 7ms\n"
    doc_text = json.dumps(doc).replace("%DURATION%", "%UPSTREAM_CLUSTER%")
    with pytest.raises(ConfigError) as info:
        load_config(doc_text)
    assert info.value.problems[0].path.endswith("access_log[1].typed_config.log_format.text_format_source")
