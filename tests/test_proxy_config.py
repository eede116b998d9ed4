"""The proxy config loader: the examples load, defaults are Envoy's, and every mistake is reported at
its exact YAML path, all of them at once, without any exception other than ConfigError."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_yastack.l7.config import (
    DOWNSTREAM_TLS_TYPE,
    HCM_TYPE,
    ROUTER_TYPE,
    TCP_PROXY_TYPE,
    Bootstrap,
    CircuitBreakerThresholds,
    ConfigError,
    CorsPolicy,
    DirectResponse,
    FaultAbort,
    FaultDelay,
    FractionalPercent,
    HttpConnectionManager,
    HttpFault,
    LocalRateLimit,
    OutlierDetection,
    Problem,
    RouteAction,
    TcpProxy,
    TokenBucket,
    format_problems,
    load_config,
    load_config_file,
    parse_bootstrap,
    parse_duration,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "proxy"

HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
VHOST_PATH = f"{HCM_PATH}.route_config.virtual_hosts[0]"
ROUTE0 = f"{VHOST_PATH}.routes[0]"
CLUSTER0 = "static_resources.clusters[0]"


def minimal() -> dict[str, Any]:
    """A valid document as plain data, for tests to break one piece of."""
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM_TYPE,
                                        "stat_prefix": "ingress_http",
                                        "route_config": {
                                            "name": "local",
                                            "virtual_hosts": [
                                                {
                                                    "name": "vh",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "backend"},
                                                        }
                                                    ],
                                                }
                                            ],
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER_TYPE},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "backend",
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": "127.0.0.1", "port_value": 8080}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }


def hcm(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def route0(doc: dict[str, Any]) -> dict[str, Any]:
    return hcm(doc)["route_config"]["virtual_hosts"][0]["routes"][0]


def cluster0(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["static_resources"]["clusters"][0]


def problems_of(doc: object) -> list[Problem]:
    """Load ``doc`` through YAML text (as a user would) and return its problems."""
    with pytest.raises(ConfigError) as info:
        load_config(yaml.safe_dump(doc, sort_keys=False))
    assert info.value.problems, "a ConfigError always carries at least one problem"
    return info.value.problems


def paths_of(doc: object) -> list[str]:
    return [p.path for p in problems_of(doc)]


def only_problem(doc: object) -> Problem:
    problems = problems_of(doc)
    assert len(problems) == 1, problems
    return problems[0]


# --- the examples ---


@pytest.mark.parametrize(
    ("name", "mentions"),
    [
        (
            "reverse_proxy.yaml",
            ["admin 127.0.0.1:9901", "ingress 0.0.0.0:10000", "backend STATIC", "127.0.0.1:8080"],
        ),
        ("tls_sni.yaml", ["sni a.example", "sni b.example", "tls (1 cert alpn h2,http/1.1)", "a_backend"]),
        (
            "round_robin.yaml",
            ["127.0.0.1:8081, 127.0.0.1:8082", "health check: http /healthz", "3 consecutive"],
        ),
        ("tcp_proxy.yaml", ["tcp_proxy postgres_tcp -> postgres", "LEAST_REQUEST", "127.0.0.1:5432"]),
        ("bypass_stack.yaml", ["198.18.0.2:80", "198.18.0.1:8080"]),
        ("edge_filters.yaml", ["filters local_ratelimit, cors, cache, compressor", "127.0.0.1:8080"]),
        ("auth_filters.yaml", ["filters rbac, jwt_authn, ext_authz", "127.0.0.1:8082"]),
        ("grpc_web.yaml", ["filters grpc_web, cors", "LOGICAL_DNS", "http2"]),
    ],
)
def test_example_loads_and_summary_mentions_its_pieces(name: str, mentions: list[str]) -> None:
    summary = load_config_file(EXAMPLES / name).summary()
    for text in mentions:
        assert text in summary, (text, summary)


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == {
        "reverse_proxy.yaml",
        "tls_sni.yaml",
        "round_robin.yaml",
        "tcp_proxy.yaml",
        "bypass_stack.yaml",
        "edge_filters.yaml",
        "auth_filters.yaml",
        "grpc_web.yaml",
    }


def test_examples_use_only_test_addresses() -> None:
    allowed = {"127.0.0.1", "0.0.0.0"}
    for path in EXAMPLES.glob("*.yaml"):
        b = load_config_file(path)
        addresses = [listener.address.address for listener in b.listeners]
        addresses += [a.address for c in b.clusters for a in c.load_assignment.addresses]
        addresses += [b.admin.address.address] if b.admin else []
        for a in addresses:
            assert a in allowed or a.startswith("198.18.0."), (path.name, a)


def test_reverse_proxy_facts() -> None:
    b = load_config_file(EXAMPLES / "reverse_proxy.yaml")
    assert isinstance(b, Bootstrap)
    (listener,) = b.listeners
    f = listener.filter_chains[0].filter
    assert isinstance(f, HttpConnectionManager)
    route = f.route_config.virtual_hosts[0].routes[0]
    assert route.match.prefix == "/" and route.match.path is None
    assert route.action == RouteAction(cluster="backend")
    assert f.access_log[0].kind == "stdout"
    assert b.cluster("backend").connect_timeout == 0.25


def test_round_robin_facts() -> None:
    b = load_config_file(EXAMPLES / "round_robin.yaml")
    f = b.listeners[0].filter_chains[0].filter
    assert isinstance(f, HttpConnectionManager)
    assert (f.codec_type, f.idle_timeout, f.request_timeout, f.stream_idle_timeout) == (
        "HTTP1",
        60.0,
        30.0,
        10.0,
    )
    api, default = f.route_config.virtual_hosts[0].routes
    assert isinstance(api.action, RouteAction)
    assert api.action.timeout == 2.5
    assert api.action.prefix_rewrite == "/" and api.action.host_rewrite_literal == "app.internal"
    retry = api.action.retry_policy
    assert retry is not None
    assert (retry.retry_on, retry.num_retries, retry.per_try_timeout) == (
        ("5xx", "connect-failure", "reset"),
        2,
        0.5,
    )
    (h,) = api.match.headers
    assert (h.name, h.kind, h.value) == ("x-canary", "exact", "1")
    assert api.request_headers_to_add[0].append_action == "OVERWRITE_IF_EXISTS_OR_ADD"
    assert api.request_headers_to_remove == ("x-debug",)
    # retry_policy present without num_retries: Envoy's default 1; no timeout: Envoy's 15 s
    assert isinstance(default.action, RouteAction)
    assert default.action.retry_policy is not None and default.action.retry_policy.num_retries == 1
    assert default.action.timeout == 15.0
    c = b.cluster("app")
    assert c.health_checks[0].interval == 2.0 and c.health_checks[0].timeout == 1.0
    assert c.outlier_detection == OutlierDetection(consecutive_5xx=3, interval=1.0, base_ejection_time=5.0)
    assert c.circuit_breakers == CircuitBreakerThresholds(100, 50, 200, 5)


def test_tls_sni_facts() -> None:
    b = load_config_file(EXAMPLES / "tls_sni.yaml")
    (listener,) = b.listeners
    assert listener.tls_inspector
    a, bchain = listener.filter_chains
    assert a.server_names == ("a.example",) and bchain.server_names == ("b.example",)
    assert a.transport_socket is not None
    cert = a.transport_socket.common_tls_context.tls_certificates[0]
    # relative names come back resolved against the config file's directory
    assert (cert.certificate_chain.filename, cert.private_key.filename) == (
        str(EXAMPLES / "certs/a.example.pem"),
        str(EXAMPLES / "certs/a.example.key"),
    )
    assert isinstance(bchain.filter, HttpConnectionManager)
    health = bchain.filter.route_config.virtual_hosts[0].routes[0]
    assert health.match.path == "/healthz"
    assert health.action == DirectResponse(200, "ok\n")


def test_tcp_proxy_facts() -> None:
    b = load_config_file(EXAMPLES / "tcp_proxy.yaml")
    f = b.listeners[0].filter_chains[0].filter
    assert f == TcpProxy("postgres_tcp", "postgres", 300.0)


def test_check_files_resolves_relative_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(EXAMPLES / "tls_sni.yaml", tmp_path / "tls_sni.yaml")
    load_config_file(tmp_path / "tls_sni.yaml")  # not asked: files need not exist
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "tls_sni.yaml", check_files=True)
    chain = "static_resources.listeners[0].filter_chains[{}].transport_socket.typed_config.common_tls_context"
    assert [p.path for p in info.value.problems] == [
        f"{chain.format(0)}.tls_certificates[0].certificate_chain.filename",
        f"{chain.format(0)}.tls_certificates[0].private_key.filename",
        f"{chain.format(1)}.tls_certificates[0].certificate_chain.filename",
        f"{chain.format(1)}.tls_certificates[0].private_key.filename",
    ]
    assert "certs/a.example.pem" in info.value.problems[0].message
    (tmp_path / "certs").mkdir()
    for n in ("a", "b"):
        for ext in ("pem", "key"):
            (tmp_path / "certs" / f"{n}.example.{ext}").write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the config's directory counts, not the working directory
    b = load_config_file(tmp_path / "tls_sni.yaml", check_files=True)
    assert len(b.listeners[0].filter_chains) == 2


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "nope.yaml")


# --- round-trip facts ---


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0.0), ("0.25s", 0.25), ("5s", 5.0), ("1.5s", 1.5), ("0.000000001s", 1e-9), ("3600s", 3600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["5", "5 s", "5ms", "1m", ".5s", "1.s", "1.0000000001s", "s", "", "1e3s", "+1s"]
)
def test_bad_duration_strings(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_are_envoys() -> None:
    b = parse_bootstrap(minimal())
    assert b.admin is None
    c = b.clusters[0]
    assert (c.type, c.connect_timeout, c.lb_policy, c.dns_lookup_family) == (
        "STATIC",
        5.0,
        "ROUND_ROBIN",
        "AUTO",
    )
    assert c.circuit_breakers == CircuitBreakerThresholds(1024, 1024, 1024, 3)
    assert c.health_checks == () and c.outlier_detection is None and c.transport_socket is None
    f = b.listeners[0].filter_chains[0].filter
    assert isinstance(f, HttpConnectionManager)
    assert (f.codec_type, f.idle_timeout, f.request_timeout, f.stream_idle_timeout) == (
        "AUTO",
        3600.0,
        0.0,
        300.0,
    )
    action = f.route_config.virtual_hosts[0].routes[0].action
    assert isinstance(action, RouteAction)
    assert action.timeout == 15.0 and action.retry_policy is None
    assert OutlierDetection() == OutlierDetection(5, 10.0, 30.0, 10)


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH"])
def test_lb_policies(policy: str) -> None:
    doc = minimal()
    cluster0(doc)["lb_policy"] = policy
    assert parse_bootstrap(doc).clusters[0].lb_policy == policy


def test_strict_dns_accepts_host_names_static_does_not() -> None:
    doc = minimal()
    sa = cluster0(doc)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    sa["socket_address"]["address"] = "backend.internal"
    assert only_problem(doc).path == (
        f"{CLUSTER0}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
    )
    cluster0(doc)["type"] = "STRICT_DNS"
    cluster0(doc)["dns_lookup_family"] = "V4_ONLY"
    c = parse_bootstrap(doc).clusters[0]
    assert c.type == "STRICT_DNS" and c.load_assignment.addresses[0].address == "backend.internal"


def test_json_is_accepted() -> None:
    b = load_config(json.dumps(minimal()), source="x.json")
    assert b.clusters[0].name == "backend"


def test_null_means_absent_as_in_protobuf_json() -> None:
    doc = minimal()
    cluster0(doc)["lb_policy"] = None
    assert parse_bootstrap(doc).clusters[0].lb_policy == "ROUND_ROBIN"


def test_header_matchers_and_append() -> None:
    doc = minimal()
    route0(doc)["match"]["headers"] = [
        {"name": "a", "exact_match": "1"},
        {"name": "b", "string_match": {"prefix": "x", "ignore_case": True}},
        {"name": "c", "present_match": True},
        {"name": "d", "present_match": False},
        {"name": "e"},
    ]
    route0(doc)["request_headers_to_add"] = [
        {"header": {"key": "x", "value": "1"}, "append": False},
        {"header": {"key": "y", "value": "2"}, "append": True},
        {"header": {"key": "z", "value": "3"}},
    ]
    route = parse_bootstrap(doc).listeners[0].filter_chains[0].filter.route_config.virtual_hosts[0].routes[0]  # type: ignore[union-attr]
    assert [(h.kind, h.value, h.ignore_case) for h in route.match.headers] == [
        ("exact", "1", False),
        ("prefix", "x", True),
        ("present", None, False),
        ("absent", None, False),
        ("present", None, False),
    ]
    assert [h.append_action for h in route.request_headers_to_add] == [
        "OVERWRITE_IF_EXISTS_OR_ADD",
        "APPEND_IF_EXISTS_OR_ADD",
        "APPEND_IF_EXISTS_OR_ADD",
    ]


def test_weighted_clusters() -> None:
    doc = minimal()
    route0(doc)["route"] = {"weighted_clusters": {"clusters": [{"name": "backend", "weight": 3}]}}
    action = (
        parse_bootstrap(doc)
        .listeners[0]
        .filter_chains[0]
        .filter.route_config.virtual_hosts[0]
        .routes[0]
        .action
    )  # type: ignore[union-attr]
    assert isinstance(action, RouteAction)
    assert action.cluster is None and action.weighted_clusters[0].weight == 3


def test_objects_are_frozen() -> None:
    b = parse_bootstrap(minimal())
    with pytest.raises(AttributeError):
        b.clusters[0].name = "x"  # type: ignore[misc]


# --- each kind of error, at its exact path ---


def test_unknown_field_at_the_top() -> None:
    doc = minimal()
    doc["node"] = {"id": "x"}
    p = only_problem(doc)
    assert p.path == "node" and "unsupported field 'node'" in p.message and "static_resources" in p.message


def test_unknown_field_in_a_cluster() -> None:
    doc = minimal()
    cluster0(doc)["dns_refresh_rate"] = "5s"
    assert only_problem(doc).path == f"{CLUSTER0}.dns_refresh_rate"


def test_unknown_field_deep_in_a_route_match() -> None:
    doc = minimal()
    routes = hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    routes += [
        {"match": {"prefix": "/a"}, "route": {"cluster": "backend"}},
        {"match": {"safe_regex": {"regex": ".*"}}, "route": {"cluster": "backend"}},
    ]
    problems = problems_of(doc)
    path = (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
        ".virtual_hosts[0].routes[2].match"
    )
    assert [p.path for p in problems] == [f"{path}.safe_regex", path]
    assert "unsupported field 'safe_regex'" in problems[0].message
    assert "exactly one of prefix, path" in problems[1].message


def test_unknown_field_in_typed_config() -> None:
    doc = minimal()
    hcm(doc)["use_remote_address"] = True
    assert only_problem(doc).path == f"{HCM_PATH}.use_remote_address"


def test_unsupported_network_filter_name() -> None:
    doc = minimal()
    doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["name"] = (
        "envoy.filters.network.echo"
    )
    p = only_problem(doc)
    assert p.path == "static_resources.listeners[0].filter_chains[0].filters[0].name"
    assert "unsupported 'envoy.filters.network.echo'" in p.message


def test_wrong_type_url() -> None:
    doc = minimal()
    hcm(doc)["@type"] = TCP_PROXY_TYPE
    p = only_problem(doc)
    assert p.path == f"{HCM_PATH}.@type"
    assert HCM_TYPE in p.message


def test_unsupported_http_filter() -> None:
    doc = minimal()
    hcm(doc)["http_filters"].insert(0, {"name": "envoy.filters.http.wasm", "typed_config": {"@type": "x"}})
    assert paths_of(doc) == [f"{HCM_PATH}.http_filters[0].name"]
    hcm(doc)["http_filters"][0] = {"name": "envoy.filters.http.cors", "typed_config": {"@type": "x"}}
    assert paths_of(doc) == [f"{HCM_PATH}.http_filters[0].typed_config.@type"]


FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
RL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"


def test_http_filters_in_order_with_per_route_overrides() -> None:
    text = f"""
    static_resources:
      listeners:
      - address: {{socket_address: {{address: 0.0.0.0, port_value: 10000}}}}
        filter_chains:
        - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": {HCM_TYPE}
              stat_prefix: ingress
              route_config:
                virtual_hosts:
                - name: all
                  domains: ["*"]
                  typed_per_filter_config:
                    envoy.filters.http.cors:
                      "@type": {CORS_POLICY_TYPE}
                      allow_origin_string_match:
                      - {{safe_regex: {{regex: '.*\\.example'}}}}
                      - {{exact: a.test}}
                      allow_methods: GET, PUT
                      allowCredentials: true
                      filter_enabled: {{default_value: {{numerator: 100}}, runtime_key: cors.on}}
                  routes:
                  - match: {{prefix: /slow}}
                    route: {{cluster: backend}}
                    typed_per_filter_config:
                      envoy.filters.http.fault:
                        "@type": {FAULT_TYPE}
                        delay: {{fixed_delay: 2s, percentage: {{numerator: 50, denominator: TEN_THOUSAND}}}}
                  - match: {{prefix: /}}
                    route: {{cluster: backend}}
              http_filters:
              - name: envoy.filters.http.cors
                typed_config: {{"@type": {CORS_TYPE}}}
              - name: envoy.filters.http.fault
                typed_config:
                  "@type": {FAULT_TYPE}
                  abort: {{http_status: 503, percentage: {{numerator: 10}}}}
                  max_active_faults: 100
              - name: envoy.filters.http.local_ratelimit
                typed_config:
                  "@type": {RL_TYPE}
                  stat_prefix: http_local_rate_limiter
                  token_bucket: {{max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s}}
                  filter_enabled: {{default_value: {{numerator: 100, denominator: HUNDRED}}}}
                  filter_enforced: {{default_value: {{numerator: 100, denominator: HUNDRED}}}}
                  response_headers_to_add: [{{header: {{key: x-local-rate-limit, value: "true"}}}}]
              - name: envoy.filters.http.router
      clusters:
      - name: backend
        load_assignment:
          cluster_name: backend
          endpoints:
          - lb_endpoints:
            - {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 80}}}}}}}}
    """
    b = load_config(text)
    h = b.listeners[0].filter_chains[0].filter
    assert isinstance(h, HttpConnectionManager)
    assert [x.name.rsplit(".", 1)[1] for x in h.http_filters] == [
        "cors",
        "fault",
        "local_ratelimit",
        "router",
    ]
    fault = h.http_filters[1].config
    assert isinstance(fault, HttpFault) and fault.abort == FaultAbort(503, FractionalPercent(10, 100))
    assert fault.max_active_faults == 100 and fault.delay is None
    rl = h.http_filters[2].config
    assert isinstance(rl, LocalRateLimit)
    assert rl.token_bucket == TokenBucket(10, 1.0, 10) and rl.filter_enforced.always and rl.status == 429
    vhost = h.route_config.virtual_hosts[0]
    cors = vhost.per_filter_config("envoy.filters.http.cors")
    assert (
        isinstance(cors, CorsPolicy) and cors.allow_credentials is True and cors.allow_methods == "GET, PUT"
    )
    assert [m.matches("www.example") for m in cors.allow_origin] == [True, False]
    assert cors.filter_enabled == FractionalPercent(100, 100, "cors.on")
    slow = vhost.routes[0].per_filter_config("envoy.filters.http.fault")
    assert isinstance(slow, HttpFault) and slow.delay == FaultDelay(2.0, FractionalPercent(50, 10_000))
    assert vhost.routes[1].per_filter_config("envoy.filters.http.fault") is None


def test_http_filter_mistakes_are_named_by_path() -> None:
    doc = minimal()
    filters = hcm(doc)["http_filters"]
    filters.append({"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE}})
    assert paths_of(doc) == [f"{HCM_PATH}.http_filters"]  # the router must come last
    filters.reverse()
    filters[0]["typed_config"]["abort"] = {"http_status": 99, "percentage": {"denominator": "BILLION"}}
    filters[0]["typed_config"]["downstream_nodes"] = ["a"]
    assert paths_of(doc) == [
        f"{HCM_PATH}.http_filters[0].typed_config.downstream_nodes",
        f"{HCM_PATH}.http_filters[0].typed_config.abort.http_status",
        f"{HCM_PATH}.http_filters[0].typed_config.abort.percentage.denominator",
    ]
    doc = minimal()
    vhost = hcm(doc)["route_config"]["virtual_hosts"][0]
    vhost["typed_per_filter_config"] = {
        "envoy.filters.http.wasm": {},
        "envoy.filters.http.cors": {
            "@type": CORS_POLICY_TYPE,
            "allow_origin_string_match": [{"safe_regex": {"regex": "("}}],
        },
        "envoy.filters.http.local_ratelimit": {"@type": CORS_POLICY_TYPE},
    }
    assert paths_of(doc) == [
        f"{VHOST_PATH}.typed_per_filter_config.envoy.filters.http.wasm",
        f"{VHOST_PATH}.typed_per_filter_config.envoy.filters.http.cors.allow_origin_string_match[0].safe_regex.regex",
        f"{VHOST_PATH}.typed_per_filter_config.envoy.filters.http.local_ratelimit.@type",
    ]


def test_router_without_typed_config() -> None:
    """Envoy finds the router by its name alone; any other filter without typed_config is an error."""
    doc = minimal()
    del hcm(doc)["http_filters"][0]["typed_config"]
    parse_bootstrap(doc)
    hcm(doc)["http_filters"][0]["name"] = "envoy.filters.http.wasm"
    assert paths_of(doc) == [f"{HCM_PATH}.http_filters[0].name"]


def test_downstream_tls_type_checked() -> None:
    doc = minimal()
    chain = doc["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {},
        },
    }
    p = only_problem(doc)
    assert p.path == "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.@type"
    chain["transport_socket"]["typed_config"]["@type"] = DOWNSTREAM_TLS_TYPE
    p = only_problem(doc)
    assert p.path.endswith("transport_socket.typed_config.common_tls_context.tls_certificates")


@pytest.mark.parametrize(
    ("field", "value"),
    [("lb_policy", "CLUSTER_PROVIDED"), ("lb_policy", "round_robin_"), ("type", "EDS"), ("lb_policy", 99)],
)
def test_bad_enum(field: str, value: object) -> None:
    doc = minimal()
    cluster0(doc)[field] = value
    p = only_problem(doc)
    assert p.path == f"{CLUSTER0}.{field}"
    assert "not one of the supported values" in p.message


def test_bad_codec_type() -> None:
    doc = minimal()
    hcm(doc)["codec_type"] = "HTTP3"
    assert paths_of(doc) == [f"{HCM_PATH}.codec_type"]


@pytest.mark.parametrize("value", ["5", "5ms", "-1s", "0s", 5, "fast"])
def test_bad_connect_timeout(value: object) -> None:
    doc = minimal()
    cluster0(doc)["connect_timeout"] = value
    assert only_problem(doc).path == f"{CLUSTER0}.connect_timeout"


def test_bad_route_timeout_and_retry() -> None:
    doc = minimal()
    route0(doc)["route"]["timeout"] = "1 s"
    route0(doc)["route"]["retry_policy"] = {"retry_on": "5xx,refused-stream", "per_try_timeout": "1h"}
    assert paths_of(doc) == [
        f"{ROUTE0}.route.timeout",
        f"{ROUTE0}.route.retry_policy.retry_on",
        f"{ROUTE0}.route.retry_policy.per_try_timeout",
    ]


def test_missing_required_fields() -> None:
    doc = minimal()
    del cluster0(doc)["load_assignment"]
    del hcm(doc)["stat_prefix"]
    problems = problems_of(doc)
    assert [p.path for p in problems] == [f"{HCM_PATH}.stat_prefix", f"{CLUSTER0}.load_assignment"]
    assert all("required field" in p.message for p in problems)


def test_unnamed_listener_is_called_by_its_address() -> None:
    """Envoy makes a listener's name optional (16 of Envoy's 23 example configs leave it out)."""
    doc = minimal()
    del doc["static_resources"]["listeners"][0]["name"]
    assert parse_bootstrap(doc).listeners[0].name == "0.0.0.0:10000"
    doc["static_resources"]["listeners"][0]["name"] = ""
    assert paths_of(doc) == ["static_resources.listeners[0].name"]


def test_socket_address_protocol_tcp_only() -> None:
    doc = minimal()
    sa = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    sa["protocol"] = "tcp"  # enum names in any case, as Envoy reads them
    parse_bootstrap(doc)
    sa["protocol"] = "UDP"
    p = only_problem(doc)
    assert (
        p.path == "static_resources.listeners[0].address.socket_address.protocol" and "only TCP" in p.message
    )


def test_admin_access_log_path_and_layered_runtime() -> None:
    """Two things Envoy's examples carry: the deprecated ``admin.access_log_path`` (a file logger) and
    a ``layered_runtime`` static layer (dotted keys, later layers win); other layer kinds are errors."""
    doc = minimal()
    doc["admin"] = {
        "access_log_path": "/dev/null",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}},
    }
    doc["layered_runtime"] = {
        "layers": [
            {"name": "a", "static_layer": {"overload": {"global_downstream_max_connections": 50000}, "x": 1}},
            {"name": "b", "static_layer": {"x": 2}},
        ]
    }
    b = parse_bootstrap(doc)
    assert b.admin is not None and [(a.kind, a.path) for a in b.admin.access_log] == [("file", "/dev/null")]
    assert b.runtime_value("overload.global_downstream_max_connections") == 50000
    assert b.runtime_value("x") == 2 and b.runtime_value("y", 7) == 7
    doc["layered_runtime"]["layers"][1] = {"name": "disk", "disk_layer": {"symlink_root": "/srv"}}
    assert paths_of(doc) == ["layered_runtime.layers[1].disk_layer", "layered_runtime.layers[1].static_layer"]


def test_route_to_unknown_cluster() -> None:
    doc = minimal()
    route0(doc)["route"]["cluster"] = "nowhere"
    p = only_problem(doc)
    assert p.path == f"{ROUTE0}.route.cluster"
    assert "unknown cluster 'nowhere'" in p.message


def test_weighted_and_tcp_proxy_references_checked() -> None:
    doc = minimal()
    route0(doc)["route"] = {
        "weighted_clusters": {"clusters": [{"name": "backend", "weight": 1}, {"name": "x", "weight": 1}]}
    }
    doc["static_resources"]["listeners"].append(
        {
            "name": "tcp",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10001}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "t", "cluster": "y"},
                        }
                    ]
                }
            ],
        }
    )
    assert paths_of(doc) == [
        f"{ROUTE0}.route.weighted_clusters.clusters[1].name",
        "static_resources.listeners[1].filter_chains[0].filters[0].typed_config.cluster",
    ]


def test_a_broken_cluster_is_not_also_unknown() -> None:
    doc = minimal()
    cluster0(doc)["connect_timeout"] = "soon"
    assert paths_of(doc) == [f"{CLUSTER0}.connect_timeout"]


def test_duplicate_names() -> None:
    doc = minimal()
    doc["static_resources"]["clusters"].append(copy.deepcopy(cluster0(doc)))
    listener = copy.deepcopy(doc["static_resources"]["listeners"][0])
    listener["address"]["socket_address"]["port_value"] = 10001
    doc["static_resources"]["listeners"].append(listener)
    problems = problems_of(doc)
    assert [p.path for p in problems] == [
        "static_resources.listeners[1].name",
        "static_resources.clusters[1].name",
    ]
    assert "duplicate name 'ingress' (also listeners[0])" in problems[0].message


def test_duplicate_listener_address() -> None:
    doc = minimal()
    listener = copy.deepcopy(doc["static_resources"]["listeners"][0])
    listener["name"] = "other"
    doc["static_resources"]["listeners"].append(listener)
    assert paths_of(doc) == ["static_resources.listeners[1].address"]


def test_duplicate_domains_and_filter_chain_matches() -> None:
    doc = minimal()
    chains = doc["static_resources"]["listeners"][0]["filter_chains"]
    chains.append(copy.deepcopy(chains[0]))
    assert paths_of(doc) == ["static_resources.listeners[0].filter_chains[1]"]
    chains[1]["filter_chain_match"] = {"server_names": ["b.example"]}
    parse_bootstrap(doc)
    hcm(doc)["route_config"]["virtual_hosts"].append({"name": "vh2", "domains": ["a.example", "*"]})
    assert paths_of(doc) == [f"{HCM_PATH}.route_config.virtual_hosts[1].domains[1]"]


@pytest.mark.parametrize("port", [65536, -1, 2**40, "eighty", "80.5", "", True])
def test_port_out_of_range_or_wrong_type(port: object) -> None:
    doc = minimal()
    doc["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    assert paths_of(doc) == ["static_resources.listeners[0].address.socket_address.port_value"]


def test_endpoint_port_zero() -> None:
    doc = minimal()
    sa = cluster0(doc)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    sa["socket_address"]["port_value"] = 0
    p = only_problem(doc)
    assert p.path.endswith("endpoint.address.socket_address.port_value") and "1..65535" in p.message


def test_both_prefix_and_path() -> None:
    doc = minimal()
    route0(doc)["match"] = {"prefix": "/", "path": "/x"}
    p = only_problem(doc)
    assert p.path == f"{ROUTE0}.match.path"
    assert "only one of prefix, path" in p.message


def test_neither_route_nor_direct_response() -> None:
    doc = minimal()
    del route0(doc)["route"]
    p = only_problem(doc)
    assert p.path == ROUTE0 and "exactly one of route, direct_response" in p.message


def test_both_route_and_direct_response() -> None:
    doc = minimal()
    route0(doc)["direct_response"] = {"status": 204}
    assert paths_of(doc) == [f"{ROUTE0}.direct_response"]


@pytest.mark.parametrize("weight", [0, -3, "one", None])
def test_weighted_cluster_weight_not_positive(weight: object) -> None:
    doc = minimal()
    route0(doc)["route"] = {"weighted_clusters": {"clusters": [{"name": "backend", "weight": weight}]}}
    assert paths_of(doc) == [f"{ROUTE0}.route.weighted_clusters.clusters[0].weight"]


def test_direct_response_status_range() -> None:
    doc = minimal()
    route0(doc).pop("route")
    route0(doc)["direct_response"] = {"status": 600}
    assert paths_of(doc) == [f"{ROUTE0}.direct_response.status"]


def test_circuit_breaker_priority_high_unsupported() -> None:
    doc = minimal()
    cluster0(doc)["circuit_breakers"] = {"thresholds": [{"priority": "HIGH", "max_connections": 1}]}
    assert paths_of(doc) == [f"{CLUSTER0}.circuit_breakers.thresholds[0].priority"]


def test_wrong_container_types() -> None:
    doc = minimal()
    doc["static_resources"]["clusters"] = {"backend": {}}
    hcm(doc)["route_config"]["virtual_hosts"][0]["domains"] = "*"
    assert paths_of(doc) == [
        f"{VHOST_PATH}.domains",
        "static_resources.clusters",
    ]


def test_several_problems_are_all_reported() -> None:
    doc = minimal()
    doc["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 70000
    hcm(doc)["stat_prefix"] = 7
    route0(doc)["route"]["cluster"] = "missing"
    cluster0(doc)["lb_policy"] = "FASTEST"
    cluster0(doc)["connect_timeout"] = "2"
    error: ConfigError
    with pytest.raises(ConfigError) as info:
        load_config(yaml.safe_dump(doc), source="bad.yaml")
    error = info.value
    assert [p.path for p in error.problems] == [
        "static_resources.listeners[0].address.socket_address.port_value",
        f"{HCM_PATH}.stat_prefix",
        f"{CLUSTER0}.connect_timeout",
        f"{CLUSTER0}.lb_policy",
        f"{ROUTE0}.route.cluster",
    ]
    text = format_problems(error)
    assert text.splitlines()[0] == "bad.yaml: 5 problems"
    assert "  static_resources.clusters[0].lb_policy: 'FASTEST' is not one of" in text
    assert str(error) == text


def test_yaml_syntax_error_has_a_line_number() -> None:
    text = "static_resources:\n  clusters:\n  - name: a\n   bad: [\n"
    with pytest.raises(ConfigError) as info:
        load_config(text, source="broken.yaml")
    (p,) = info.value.problems
    assert p.line is not None and p.line >= 3
    assert f"line {p.line}" in format_problems(info.value)


def test_duplicate_yaml_key_is_an_error() -> None:
    text = "static_resources: {}\nstatic_resources: {}\n"
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert info.value.problems[0].line == 2
    assert "duplicate key" in info.value.problems[0].message


@pytest.mark.parametrize("text", ["", "# nothing\n", "[]", "42", "just text"])
def test_not_a_mapping(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert info.value.problems[0].path == ""


@pytest.mark.parametrize(
    "text",
    [
        "static_resources: {clusters: [{name: a, connect_timeout: " + "9" * 5000 + "s}]}",
        "admin: {address: {socket_address: {address: 127.0.0.1, port_value: " + "9" * 5000 + "}}}",
        "[" * 5000 + "]" * 5000,
        "a: !!binary aGVsbG8=\n",
        "static_resources: {listeners: !!set {a, b}}\n",
        "static_resources: {clusters: [{name: 2020-01-01}]}\n",
        "? [a, b]\n: c\n",
    ],
)
def test_odd_yaml_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(text)


def test_empty_mapping_is_an_empty_config() -> None:
    b = load_config("{}")
    assert b.listeners == () and b.clusters == ()


# --- fuzz: nothing but ConfigError, ever ---

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["0s", "1.5s", "ROUND_ROBIN", "STATIC", "backend", "/", "*", "127.0.0.1", HCM_TYPE]),
)
keys = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        [
            "name",
            "address",
            "socket_address",
            "port_value",
            "typed_config",
            "@type",
            "routes",
            "match",
            "route",
        ]
    ),
)
structures = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=30,
)


def _expect_only_config_error(data: object) -> None:
    try:
        parse_bootstrap(data)
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(p.path, str) and p.message for p in exc.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures)
def test_fuzz_random_documents(data: object) -> None:
    _expect_only_config_error(data)
    _expect_only_config_error({"static_resources": data})
    _expect_only_config_error({"static_resources": {"listeners": data, "clusters": data}})


def _subtrees(node: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _subtrees(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _subtrees(v, (*path, i))
    return out


ENVOY_EXAMPLES = Path(__file__).resolve().parent / "envoy_examples"


SIMPLE_CACHE = "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"


def _filters_doc() -> dict[str, Any]:
    """minimal() with every HTTP filter, per-route overrides, mTLS and upgrade_configs: the fuzz's
    way into their parsers."""
    doc = minimal()
    h = hcm(doc)
    h["upgrade_configs"] = [{"upgrade_type": "websocket", "enabled": True}]
    h["http_filters"][:0] = [
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS_TYPE}},
        {
            "name": "envoy.filters.http.fault",
            "typed_config": {
                "@type": FAULT_TYPE,
                "abort": {"http_status": 503, "percentage": {"numerator": 10}},
                "delay": {"fixed_delay": "1s"},
                "headers": [{"name": "x-a", "present_match": True}],
            },
        },
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": RL_TYPE,
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 1, "fill_interval": "1s"},
                "filter_enabled": {"default_value": {"numerator": 100}},
            },
        },
        {
            "name": "envoy.filters.http.compressor",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
                "response_direction_config": {"common_config": {"enabled": {"default_value": True}}},
                "compressor_library": {
                    "name": "gz",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
                        "compression_level": "BEST_SPEED",
                    },
                },
            },
        },
    ]
    h["http_filters"].insert(0, {
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
            "typed_config": {"@type": SIMPLE_CACHE},
            "allowed_vary_headers": [{"exact": "accept-language"}],
        },
    })  # fmt: skip
    h["local_reply_config"] = {
        "mappers": [{
            "filter": {"or_filter": {"filters": [
                {"status_code_filter": {"comparison": {
                    "op": "GE", "value": {"default_value": 500, "runtime_key": "k"}}}},
                {"header_filter": {"header": {"name": "x-debug", "present_match": True}}},
            ]}},
            "status_code": 502,
            "body": {"inline_string": "oops"},
        }],
        "body_format": {"json_format": {"code": "%RESPONSE_CODE%", "body": "%LOCAL_REPLY_BODY%"}},
    }  # fmt: skip
    h["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = {
        "envoy.filters.http.cors": {
            "@type": CORS_POLICY_TYPE,
            "allow_origin_string_match": [{"safe_regex": {"regex": ".*"}}],
            "filter_enabled": {"default_value": {"numerator": 100}, "runtime_key": "k"},
        }
    }
    return doc


_EXAMPLE_DOCS = [yaml.safe_load((EXAMPLES / n).read_text()) for n in ("round_robin.yaml", "tls_sni.yaml")] + [
    yaml.safe_load((ENVOY_EXAMPLES / n).read_text())
    for n in ("cors-backend.yaml", "double-proxy-backend.yaml")
]
_EXAMPLE_SITES = [(doc, site) for doc in _EXAMPLE_DOCS for site in _subtrees(doc) if site]


def _late_sites() -> list[tuple[Any, tuple[object, ...]]]:
    doc = _filters_doc()  # built after the module's constants it uses
    return [(doc, site) for site in _subtrees(doc) if site]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_EXAMPLE_SITES + _late_sites()), structures, st.booleans())
def test_fuzz_mutated_examples(
    site: tuple[Any, tuple[object, ...]], replacement: object, delete: bool
) -> None:
    """Replace (or delete) one subtree of a real config: the fuzz reaches every parser, not just the top."""
    doc, path = site
    mutated = copy.deepcopy(doc)
    parent = mutated
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    _expect_only_config_error(mutated)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text(text: str) -> None:
    try:
        load_config(text)
    except ConfigError as exc:
        assert exc.problems


def test_header_names_values_and_rewrites_are_checked_so_no_config_can_write_a_malformed_header() -> None:
    text = (EXAMPLES / "round_robin.yaml").read_text()
    bad = (
        text.replace(
            'key: x-canary-route, value: "yes"', 'key: "x-canary route", value: "a\\r\\nInjected: 1"'
        )
        .replace("host_rewrite_literal: app.internal", 'host_rewrite_literal: "app internal"')
        .replace("prefix_rewrite: /", 'prefix_rewrite: "/ x"')
        .replace("request_headers_to_remove: [x-debug]", 'request_headers_to_remove: ["x debug"]')
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    messages = {p.path.rsplit(".", 1)[-1]: p.message for p in caught.value.problems}
    assert "not a valid HTTP header name" in messages["key"]
    assert "no CR, LF" in messages["value"]
    assert "not a valid host" in messages["host_rewrite_literal"]
    assert "not a valid request path" in messages["prefix_rewrite"]
    assert any("request_headers_to_remove" in p.path for p in caught.value.problems)


def test_a_cluster_name_must_be_a_valid_header_value() -> None:
    # A cluster's name is the Host of its health checks and of an HTTP/1.0 request forwarded to it
    # without one, and the proxy writes request heads without h11 re-checking them (l7/_heads.py).
    doc = minimal()
    cluster0(doc)["name"] = "backend\r\nInjected: 1"
    route0(doc)["route"]["cluster"] = "backend\r\nInjected: 1"
    problem = only_problem(doc)
    assert problem.path == "static_resources.clusters[0].name"
    assert "no CR, LF" in problem.message
    ok = minimal()
    cluster0(ok)["name"] = route0(ok)["route"]["cluster"] = "backend v2 (canary)"
    assert load_config(yaml.safe_dump(ok)).clusters[0].name == "backend v2 (canary)"


# --- Envoy's spellings (proto3 JSON, read by Envoy's own schema from xds-protos) ---


def test_enum_names_any_case_and_numbers_as_envoy_reads_them() -> None:
    """Envoy parses enum names case-insensitively, and proto3 JSON takes an enum's number."""
    doc = minimal()
    cluster0(doc)["lb_policy"] = "round_robin"
    cluster0(doc)["type"] = "Static"
    assert parse_bootstrap(doc).clusters[0].lb_policy == "ROUND_ROBIN"
    cluster0(doc)["lb_policy"] = 1  # LEAST_REQUEST in envoy.config.cluster.v3.Cluster.LbPolicy
    assert parse_bootstrap(doc).clusters[0].lb_policy == "LEAST_REQUEST"


def test_integers_as_strings_and_floats_as_proto3_json_allows() -> None:
    doc = minimal()
    doc["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = "10080"
    route0(doc)["route"] = {"weighted_clusters": {"clusters": [{"name": "backend", "weight": "3"}]}}
    b = parse_bootstrap(doc)
    assert b.listeners[0].address.port_value == 10080
    action = b.listeners[0].filter_chains[0].filter.route_config.virtual_hosts[0].routes[0].action  # type: ignore[union-attr]  # an HCM by minimal()
    assert isinstance(action, RouteAction) and action.weighted_clusters[0].weight == 3


def test_camel_case_names_and_duration_messages() -> None:
    """proto3 JSON names (lowerCamelCase) are as good as the proto names, and a Duration may be
    written as its message ``{seconds, nanos}``; errors still name the canonical path."""
    text = """
    staticResources:
      clusters:
      - name: backend
        connectTimeout: {seconds: 2, nanos: 500000000}
        lbPolicy: random
        loadAssignment:
          clusterName: backend
          endpoints:
          - lbEndpoints: [{endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: "8080"}}}}]
        outlierDetection: {consecutive5xx: 7, interval: {seconds: "3"}}
    """
    b = load_config(text)
    c = b.clusters[0]
    assert (c.connect_timeout, c.lb_policy) == (2.5, "RANDOM")
    assert c.load_assignment.addresses[0].port_value == 8080
    assert c.outlier_detection == OutlierDetection(consecutive_5xx=7, interval=3.0)
    with pytest.raises(ConfigError) as info:
        load_config(text.replace("lbPolicy: random", "lbPolicy: random\n        fancyField: 1"))
    assert [p.path for p in info.value.problems] == ["static_resources.clusters[0].fancyField"]


def test_yaml_anchors_and_aliases() -> None:
    """Envoy's YAML loader resolves anchors and aliases; so does ours (PyYAML's)."""
    text = """
    static_resources:
      clusters:
      - name: a
        load_assignment:
          cluster_name: a
          endpoints:
          - lb_endpoints:
            - &ep {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}
      - {name: b, load_assignment: {cluster_name: b, endpoints: [{lb_endpoints: [*ep]}]}}
    """
    b = load_config(text)
    assert b.clusters[0].load_assignment.addresses == b.clusters[1].load_assignment.addresses


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_envoy_bootstraps(path: Path) -> None:
    """Each example is a valid Envoy bootstrap by Envoy's own schema (json_format of xds-protos, with
    the extension types its typed_configs name): the subset is a subset, not a dialect."""
    from google.protobuf import json_format

    from trio_yastack.l7.envoy import envoy_message
    from trio_yastack.l7.envoy._schema import bootstrap_pb2

    data = yaml.safe_load(path.read_text())
    for type_url in _type_urls(data):
        assert envoy_message(type_url) is not None, type_url
    json_format.ParseDict(data, bootstrap_pb2.Bootstrap())


def _type_urls(data: object) -> set[str]:
    if isinstance(data, dict):
        urls = {data["@type"]} if isinstance(data.get("@type"), str) else set()
        return urls.union(*(_type_urls(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(_type_urls(v) for v in data))
    return set()


def test_local_reply_config_mistakes_named_by_path() -> None:
    doc = minimal()
    hcm(doc)["local_reply_config"] = {
        "mappers": [{"filter": {"duration_filter": {}}, "status_code": 99}],
        "body_format": {"text_format": "%UPSTREAM_CLUSTER% said %LOCAL_REPLY_BODY%"},
    }
    assert paths_of(doc) == [
        f"{HCM_PATH}.local_reply_config.mappers[0].filter.duration_filter",
        f"{HCM_PATH}.local_reply_config.mappers[0].filter",
        f"{HCM_PATH}.local_reply_config.mappers[0].status_code",
        f"{HCM_PATH}.local_reply_config.body_format.text_format",
    ]


FILE_CACHE = (
    "type.googleapis.com/envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig"
)


def test_cache_filter_storage_must_be_the_in_memory_one() -> None:
    doc = minimal()
    hcm(doc)["http_filters"].insert(0, {
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
            "typed_config": {"@type": FILE_CACHE},
            "key_creator_params": {},
        },
    })  # fmt: skip
    assert paths_of(doc) == [
        f"{HCM_PATH}.http_filters[0].typed_config.key_creator_params",
        f"{HCM_PATH}.http_filters[0].typed_config.typed_config.@type",
    ]
