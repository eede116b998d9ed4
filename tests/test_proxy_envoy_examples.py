"""Envoy's own example configs (copies under tests/envoy_examples/, each with the Envoy commit it was
taken from and the addresses changed for the test) load, mean to Envoy's schema what they mean here,
and run: ``yastack proxy`` in a private network namespace with hypercorn backends, curl and a
``websockets`` client on the kernel side, as Envoy's examples are driven by their verify.sh."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from proxy_example_helpers import ProxyProcess, curl, curl_status, hello_backend
from tap_helpers import requires_netns

from trio_yastack.l7.config import ConfigError, load_config_file
from trio_yastack.l7.envoy import envoy_message
from trio_yastack.l7.envoy._schema import bootstrap_pb2
from trio_yastack.nic.netns import NetworkNamespace

ENVOY_EXAMPLES = Path(__file__).resolve().parent / "envoy_examples"
NAMES = sorted(p.name for p in ENVOY_EXAMPLES.glob("*.yaml"))


def _type_urls(data: object) -> set[str]:
    if isinstance(data, dict):
        urls = {data["@type"]} if isinstance(data.get("@type"), str) else set()
        return urls.union(*(_type_urls(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(_type_urls(v) for v in data))
    return set()


@pytest.mark.parametrize("name", NAMES)
def test_envoy_example_loads_and_is_an_envoy_bootstrap(name: str) -> None:
    """Each copy loads here and parses into Envoy's ``Bootstrap`` by Envoy's schema (xds-protos)."""
    path = ENVOY_EXAMPLES / name
    config = load_config_file(path)
    assert config.listeners and config.clusters
    data = yaml.safe_load(path.read_text())
    for type_url in _type_urls(data):
        assert envoy_message(type_url) is not None, type_url
    json_format.ParseDict(data, bootstrap_pb2.Bootstrap())


def admin_stats(namespace: NetworkNamespace, port: int) -> dict[str, int]:
    status, body = curl_status(namespace, f"http://127.0.0.1:{port}/stats")
    assert status == 200, body
    return {k: int(v) for k, _, v in (line.rpartition(": ") for line in body.splitlines()) if k}


@requires_netns
@pytest.mark.netns
def test_front_proxy(netns: NetworkNamespace) -> None:
    """examples/front-proxy: ``/service/1`` and ``/service/2`` go to their own cluster, over HTTP on
    8080 and over TLS on 8443 with the inline certificate; the admin endpoint counts them."""
    backends = [hello_backend(netns, "127.0.0.1", 8000), hello_backend(netns, "127.0.0.2", 8000)]
    proxy = ProxyProcess.start(netns, ENVOY_EXAMPLES / "front-proxy.yaml")
    try:
        for url in ("http://127.0.0.1:8080", "https://127.0.0.1:8443"):
            for service in (1, 2):
                status, body = curl_status(netns, "-k", f"{url}/service/{service}")
                # hello.py knows no /service/N: its own 404 shows the request reached it
                assert (status, json.loads(body)["path"]) == (404, f"/service/{service}"), body
        status, _ = curl_status(netns, "http://127.0.0.1:8080/elsewhere")
        assert status == 404  # no route
        tls = curl(netns, "-k", "-v", "-o", "/dev/null", "https://127.0.0.1:8443/service/1")
        assert "CN=front-envoy" in tls.stderr, tls.stderr
        stats = admin_stats(netns, 8001)
        assert stats["cluster.service1-envoy.upstream_rq_total"] == 3
        assert stats["cluster.service2-envoy.upstream_rq_total"] == 2
        assert stats["http.ingress_http.no_route"] == 1
        assert proxy.drain(signal.SIGTERM) == 0, proxy.output
    finally:
        proxy.stop()
        for backend in backends:
            backend.stop()


@requires_netns
@pytest.mark.netns
def test_cors_backend(netns: NetworkNamespace) -> None:
    """examples/cors/backend (its verify.sh's checks, done with curl): a preflight to ``/cors/open``
    from any origin is answered by the proxy; ``/cors/disabled`` gets no CORS headers;
    ``/cors/restricted`` allows only ``*.envoyproxy.io``."""
    backend = hello_backend(netns, "127.0.0.1", 8080)
    proxy = ProxyProcess.start(netns, ENVOY_EXAMPLES / "cors-backend.yaml")
    try:

        def preflight(path: str, origin: str) -> str:
            result = curl(netns, "-s", "-D", "-", "-o", "/dev/null", "-X", "OPTIONS",
                          "-H", f"Origin: {origin}", "-H", "Access-Control-Request-Method: GET",
                          f"http://127.0.0.1:10000{path}")  # fmt: skip
            assert result.returncode == 0, result.stderr
            return result.stdout.lower()

        head = preflight("/cors/open", "http://example.com")
        assert head.startswith("http/1.1 200"), head
        assert "access-control-allow-origin: http://example.com" in head
        assert "access-control-allow-methods: get" in head
        assert "access-control-allow-origin" not in preflight("/cors/disabled", "http://example.com")
        assert "access-control-allow-origin" not in preflight("/cors/restricted", "http://example.com")
        assert "access-control-allow-origin: https://www.envoyproxy.io" in preflight(
            "/cors/restricted", "https://www.envoyproxy.io"
        )
        simple = curl(netns, "-s", "-D", "-", "-o", "/dev/null", "-H", "Origin: http://example.com",
                      "http://127.0.0.1:10000/cors/open")  # fmt: skip
        assert "access-control-allow-origin: http://example.com" in simple.stdout.lower(), simple.stdout
        assert proxy.drain(signal.SIGTERM) == 0, proxy.output
    finally:
        proxy.stop()
        backend.stop()


WS_CLIENT = """
from websockets.sync.client import connect
with connect("ws://127.0.0.1:10000/ws", open_timeout=10, close_timeout=5) as ws:
    ws.send("hello envoy example")
    print(ws.recv(timeout=10))
"""


@requires_netns
@pytest.mark.netns
def test_websocket(netns: NetworkNamespace) -> None:
    """examples/websocket (envoy-ws.yaml): ``upgrade_configs: websocket`` lets the handshake through;
    a ``websockets`` client's message comes back from the backend's echo."""
    backend = hello_backend(netns, "127.0.0.1", 8080)
    proxy = ProxyProcess.start(netns, ENVOY_EXAMPLES / "websocket-ws.yaml")
    try:
        result = netns.run([sys.executable, "-c", WS_CLIENT], timeout=30)
        assert (result.returncode, result.stdout) == (0, "hello envoy example\n"), result.stderr
        assert proxy.drain(signal.SIGTERM) == 0, proxy.output
    finally:
        proxy.stop()
        backend.stop()


def test_unsupported_parts_of_envoy_examples_are_named_by_path() -> None:
    """Envoy's gzip example as published: its compressor loads (deprecated and current fields alike),
    its decompressor (not implemented) is the one problem, at its YAML path."""
    with pytest.raises(ConfigError) as info:
        load_config_file(ENVOY_EXAMPLES / "unsupported" / "gzip-envoy.yaml")
    assert [str(p) for p in info.value.problems] == [
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[1].name: "
        "unsupported 'envoy.filters.http.decompressor' (supported: envoy.filters.http.cache, "
        "envoy.filters.http.compressor, envoy.filters.http.cors, envoy.filters.http.ext_authz, "
        "envoy.filters.http.fault, envoy.filters.http.grpc_web, envoy.filters.http.jwt_authn, "
        "envoy.filters.http.local_ratelimit, envoy.filters.http.lua, envoy.filters.http.rbac, "
        "envoy.filters.http.router)"
    ]
