"""``envoy.filters.http.ext_authz`` against Envoy's documented behaviour, with a real authorization
service on each side of it:

- the HTTP service (a hypercorn app on the simulator, under trio's MockClock): what the check carries
  (method, ``path_prefix`` + path, Host, Authorization, ``allowed_headers``, ``headers_to_add``, no
  body), what an OK adds upstream (``allowed_upstream_headers``) and to the response
  (``allowed_client_headers_on_success``), a denial relayed as the service wrote it, errors (a 5xx,
  a timeout, no service) answered ``status_on_error`` or let through with ``failure_mode_allow``,
  and the per-route ``disabled``;
- the gRPC service (``envoy.service.auth.v3.Authorization/Check`` served by ``grpcio`` on
  127.0.0.1, the proxy on kernel sockets with the real clock: grpcio's deadline is wall-clock time):
  the ``CheckRequest``'s attributes and ``context_extensions``, ``ok_response`` headers,
  ``denied_response``, and the service gone.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs
import hypercorn.trio
import pytest
import trio
import trio.testing
from envoy.service.auth.v3 import external_auth_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from hypercorn.config import Config
from proxy_helpers import BackendApp, Client, Response, connect, running_proxy, start_backend
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, ConfigError, load_config

LIMIT = 60

HTTP_CONFIG = """
static_resources:
  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.18.0.1, port_value: 8080}}}
  - name: authz
    connect_timeout: 1s
    load_assignment:
      cluster_name: authz
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.18.0.1, port_value: 8091}}}
  listeners:
  - name: ingress
    address: {socket_address: {address: 198.18.0.2, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": HCM_TYPE
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/health"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    disabled: true
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              status_on_error: {code: ServiceUnavailable}
              http_service:
                server_uri: {uri: "http://authz.internal", cluster: authz, timeout: 1s}
                path_prefix: /check
                authorization_request:
                  allowed_headers:
                    patterns: [{exact: x-tenant}]
                  headers_to_add:
                  - {key: x-checked-by, value: edge}
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{exact: x-auth-user}]
                  allowed_client_headers_on_success:
                    patterns: [{prefix: x-client-}]
          - name: envoy.filters.http.router
""".replace("HCM_TYPE", HCM_TYPE)


class AuthzApp(BackendApp):
    """The HTTP authorization service: ``Bearer good`` is allowed, ``Bearer boom`` gets a 503,
    ``Bearer slow`` an answer after 5 s; anything else a 401 with its own headers and JSON body."""

    def __init__(self) -> None:
        super().__init__("authz")

    async def _http(
        self, path: str, query: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"")
        if token == b"Bearer slow":
            await trio.sleep(5)
        if token == b"Bearer good":
            status, body = 200, b""
            extra = [(b"x-auth-user", b"alice"), (b"x-auth-internal", b"no"), (b"x-client-note", b"hi")]
        elif token == b"Bearer boom":
            status, body, extra = 503, b"down", []
        else:
            status, body = 401, b'{"error": "who are you"}'
            extra = [(b"www-authenticate", b'Basic realm="edge"'), (b"content-type", b"application/json"),
                     (b"x-denied-by", b"authz")]  # fmt: skip
        head = [*extra, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})


async def test_ext_authz_http_service(autojump_clock: trio.testing.MockClock) -> None:
    app, authz = BackendApp("app"), AuthzApp()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, authz, b, 8091)]
        async with running_proxy(load_config(HTTP_CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))

                async def post(path: str, *headers: tuple[str, str]) -> Response:
                    return await client.request("POST", path, list(headers), body=b"payload")

                r = await post("/orders?id=7", ("authorization", "Bearer good"), ("x-tenant", "t1"),
                               ("x-other", "o"), ("x-auth-user", "mallory"))  # fmt: skip
                assert r.status == 200 and r.header("x-client-note") == "hi"
                check = authz.seen[-1]
                assert (check.method, check.path) == ("POST", "/check/orders?id=7")
                assert check.header("authorization") == "Bearer good" and check.header("x-tenant") == "t1"
                assert check.header("x-other") is None and check.header("content-length") == "0"
                assert check.header("host") == "proxy.test" and check.header("x-checked-by") == "edge"
                upstream = app.seen[-1]
                assert upstream.header("x-auth-user") == "alice"  # replaced, not appended
                assert upstream.header("x-auth-internal") is None
                assert r.json()["method"] == "POST"

                r = await post("/orders", ("authorization", "Bearer bad"))
                assert r.status == 401 and r.body == b'{"error": "who are you"}'
                assert r.header("www-authenticate") == 'Basic realm="edge"'
                assert r.header("content-type") == "application/json" and r.header("x-denied-by") == "authz"
                r = await post("/orders", ("authorization", "Bearer boom"))  # a 5xx: an error
                assert r.status == 503 and r.body == b""
                r = await post("/orders", ("authorization", "Bearer slow"))  # no answer within 1 s
                assert r.status == 503
                seen = len(authz.seen)
                r = await post("/health")
                assert r.status == 200 and len(authz.seen) == seen  # disabled on this route
                assert len(app.seen) == 2
                await client.aclose()
                stats = proxy.stats
                assert stats.value("http.ingress.ext_authz.ok") == 1
                assert stats.value("http.ingress.ext_authz.denied") == 1
                assert stats.value("http.ingress.ext_authz.error") == 2
        for backend in backends:
            backend.stop()


async def test_ext_authz_failure_mode_allow(autojump_clock: trio.testing.MockClock) -> None:
    """No authorization service at all: with ``failure_mode_allow`` the request goes on, marked
    ``x-envoy-auth-failure-mode-allowed: true``; without it the client gets ``status_on_error``."""
    config = HTTP_CONFIG.replace(
        "              transport_api_version: V3\n",
        "              failure_mode_allow: true\n              failure_mode_allow_header_add: true\n",
    )
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)  # nothing on 8091
        async with running_proxy(load_config(config), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("GET", "/x", [("authorization", "Bearer good")])
                assert r.status == 200
                assert app.seen[-1].header("x-envoy-auth-failure-mode-allowed") == "true"
                await client.aclose()
                assert proxy.stats.value("http.ingress.ext_authz.failure_mode_allowed") == 1
        async with running_proxy(load_config(HTTP_CONFIG), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                assert (await client.request("GET", "/x", [("authorization", "Bearer good")])).status == 503
                await client.aclose()
        backend.stop()


# --- gRPC ---


async def kernel_backend(nursery: trio.Nursery, app: BackendApp, port: int) -> trio.Event:
    """hypercorn serving ``app`` on 127.0.0.1:``port`` (kernel sockets) until the event is set."""
    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.graceful_timeout = 1.0
    cfg.accesslog = cfg.errorlog = None
    stop = trio.Event()
    await nursery.start(partial(hypercorn.trio.serve, app, cfg, shutdown_trigger=stop.wait))  # type: ignore[arg-type]  # hypercorn types its trigger loosely
    return stop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Authorization:
    """``envoy.service.auth.v3.Authorization``: allows a request with ``x-user`` (adding headers
    upstream and to the response), denies any other with 403 and its own body."""

    def __init__(self) -> None:
        self.checks: list[Any] = []

    def check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.checks.append(request)
        http = request.attributes.request.http
        response = external_auth_pb2.CheckResponse()
        if "x-user" in http.headers:
            response.status.code = 0
            ok = response.ok_response
            h = ok.headers.add()
            h.header.key, h.header.value = "x-user-id", "id-" + http.headers["x-user"]
            ok.headers_to_remove.append("x-drop-me")
            added = ok.response_headers_to_add.add()
            added.header.key, added.header.value = "x-authz", "ok"
        else:
            response.status.code = 7  # PERMISSION_DENIED
            denied = response.denied_response
            denied.status.code = 403
            denied.body = "no user"
            h = denied.headers.add()
            h.header.key, h.header.value = "x-why", "no-user"
        return response


@contextmanager
def grpc_authz() -> Iterator[tuple[int, Authorization]]:
    service = Authorization()
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.auth.v3.Authorization",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                service.check,
                request_deserializer=external_auth_pb2.CheckRequest.FromString,
                response_serializer=external_auth_pb2.CheckResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, service
    finally:
        server.stop(grace=None)


def grpc_config(proxy_port: int, app_port: int, authz_port: int) -> str:
    return f"""
static_resources:
  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app_port}}}}}}}
  - name: ext-authz
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: ext-authz
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {authz_port}}}}}}}
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {proxy_port}}}}}
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
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: {{route: main}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              grpc_service:
                envoy_grpc: {{cluster_name: ext-authz}}
                timeout: 2s
              stat_prefix: grpc
          - name: envoy.filters.http.router
"""


async def test_ext_authz_grpc_service() -> None:
    app = BackendApp("app")
    proxy_port, app_port = _free_port(), _free_port()
    with grpc_authz() as (authz_port, service):
        async with trio.open_nursery() as nursery:
            stop = await kernel_backend(nursery, app, app_port)
            config = load_config(grpc_config(proxy_port, app_port, authz_port))
            async with running_proxy(config, None) as proxy:
                with trio.fail_after(LIMIT):
                    stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
                    client = Client(stream)
                    r = await client.request("GET", "/things?x=1", [("x-user", "bob"), ("x-drop-me", "1")])
                    assert r.status == 200, r.body
                    assert r.header("x-authz") == "ok"
                    upstream = app.seen[-1]
                    assert upstream.header("x-user-id") == "id-bob" and upstream.header("x-drop-me") is None
                    check = service.checks[-1]
                    http = check.attributes.request.http
                    assert (http.method, http.path, http.host) == ("GET", "/things?x=1", "proxy.test")
                    assert http.headers[":path"] == "/things?x=1" and http.headers["x-user"] == "bob"
                    assert check.attributes.source.address.socket_address.address == "127.0.0.1"
                    assert check.attributes.destination.address.socket_address.port_value == proxy_port
                    assert dict(check.attributes.context_extensions) == {"route": "main"}

                    r = await client.request("GET", "/things")
                    assert r.status == 403 and r.body == b"no user" and r.header("x-why") == "no-user"
                    assert len(app.seen) == 1
                    await client.aclose()
                    assert proxy.stats.value("http.ingress.ext_authz.grpc.ok") == 1
                    assert proxy.stats.value("http.ingress.ext_authz.grpc.denied") == 1
            stop.set()


async def test_ext_authz_grpc_service_gone() -> None:
    """Nothing listens where the gRPC service should be: the default ``status_on_error`` (403)."""
    app = BackendApp("app")
    proxy_port, app_port, authz_port = _free_port(), _free_port(), _free_port()
    async with trio.open_nursery() as nursery:
        stop = await kernel_backend(nursery, app, app_port)
        async with running_proxy(load_config(grpc_config(proxy_port, app_port, authz_port)), None) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await trio.open_tcp_stream("127.0.0.1", proxy_port))
                r = await client.request("GET", "/", [("x-user", "bob")])
                assert r.status == 403 and r.body == b"" and app.seen == []
                await client.aclose()
                assert proxy.stats.value("http.ingress.ext_authz.grpc.error") == 1
        stop.set()


def test_ext_authz_config_mistakes_named_by_path() -> None:
    bad = HTTP_CONFIG.replace("cluster: authz, timeout: 1s", "cluster: nowhere").replace(
        "status_on_error: {code: ServiceUnavailable}",
        "status_on_error: {code: Teapot}\n              with_request_body: {}",
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    text = str(e.value)
    hcm = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
    base = f"{hcm}.http_filters[0].typed_config"
    assert f"{base}.http_service.server_uri.timeout: required field 'timeout' is missing" in text
    assert f"{base}.status_on_error.code: 'Teapot' is not one of Envoy's StatusCode names" in text
    missing = "required field 'max_request_bytes' is missing"
    assert f"{base}.with_request_body.max_request_bytes: {missing}" in text
    assert f"{base}.http_service.server_uri.cluster: unknown cluster 'nowhere'" in text


@pytest.mark.parametrize("clear", [True, False])
async def test_ext_authz_clear_route_cache(autojump_clock: trio.testing.MockClock, clear: bool) -> None:
    """``clear_route_cache: true``: the headers an allowed check set (``x-auth-user: alice``, over the
    client's own) choose the route again, here one that matches on that header; without it the
    route chosen before the check stays."""
    alice_route = """              routes:
              - match: {prefix: "/", headers: [{name: x-auth-user, string_match: {exact: alice}}]}
                direct_response: {status: 200, body: {inline_string: "alice's route"}}
"""
    config = HTTP_CONFIG.replace("              routes:\n", alice_route, 1)
    if clear:
        config = config.replace(
            "transport_api_version: V3\n",
            "transport_api_version: V3\n              clear_route_cache: true\n",
        )
    app, authz = BackendApp("app"), AuthzApp()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, authz, b, 8091)]
        async with running_proxy(load_config(config), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                headers = [("authorization", "Bearer good"), ("x-auth-user", "mallory")]
                r = await client.request("GET", "/orders", headers)
                if clear:
                    assert r.status == 200 and r.body == b"alice's route" and app.seen == []
                else:
                    assert r.status == 200 and app.seen[-1].header("x-auth-user") == "alice"
                await client.aclose()
        for backend in backends:
            backend.stop()


async def test_ext_authz_disallowed_headers_and_deny_at_disable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``disallowed_headers`` wins over ``allowed_headers`` (x-tenant is no longer sent); with
    ``filter_enabled`` at 0% no check is made, and ``deny_at_disable`` then answers
    ``status_on_error`` (503 here) except on the route that disables the filter."""
    config = HTTP_CONFIG.replace(
        "              transport_api_version: V3\n",
        "              transport_api_version: V3\n"
        "              disallowed_headers: {patterns: [{exact: x-tenant}]}\n",
    )
    app, authz = BackendApp("app"), AuthzApp()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, authz, b, 8091)]
        async with running_proxy(load_config(config), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("GET", "/x", [("authorization", "Bearer good"), ("x-tenant", "t1")])
                assert r.status == 200 and authz.seen[-1].header("x-tenant") is None
                assert app.seen[-1].header("x-tenant") == "t1"  # still forwarded upstream
                await client.aclose()
        off = config.replace(
            "              transport_api_version: V3\n",
            "              transport_api_version: V3\n"
            "              filter_enabled: {default_value: {numerator: 0}}\n"
            "              deny_at_disable: {default_value: true}\n",
        )
        checks = len(authz.seen)
        async with running_proxy(load_config(off), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("GET", "/x", [("authorization", "Bearer good")])
                assert r.status == 503 and len(authz.seen) == checks
                r = await client.request("GET", "/health", [("authorization", "Bearer good")])
                assert r.status == 200  # disabled on this route: not denied
                await client.aclose()
                assert proxy.stats.value("http.ingress.ext_authz.disabled") == 1
        for backend in backends:
            backend.stop()


async def test_ext_authz_grpc_disallowed_headers() -> None:
    """``disallowed_headers`` also keeps a header out of the gRPC check (all are sent by default)."""
    app = BackendApp("app")
    proxy_port, app_port = _free_port(), _free_port()
    with grpc_authz() as (authz_port, service):
        async with trio.open_nursery() as nursery:
            stop = await kernel_backend(nursery, app, app_port)
            config = grpc_config(proxy_port, app_port, authz_port).replace(
                "              stat_prefix: grpc\n",
                "              stat_prefix: grpc\n"
                "              disallowed_headers: {patterns: [{exact: x-secret}]}\n",
            )
            async with running_proxy(load_config(config), None):
                with trio.fail_after(LIMIT):
                    client = Client(await trio.open_tcp_stream("127.0.0.1", proxy_port))
                    r = await client.request(
                        "GET", "/", [("x-user", "bob"), ("x-secret", "s"), ("x-other", "o")]
                    )
                    assert r.status == 200
                    headers = service.checks[-1].attributes.request.http.headers
                    assert "x-secret" not in headers and headers["x-other"] == "o"
                    await client.aclose()
            stop.set()


@pytest.mark.parametrize(
    ("include", "tls", "sni"), [(True, True, "api.example"), (False, True, ""), (True, False, "")]
)
def test_ext_authz_grpc_check_include_tls_session(include: bool, tls: bool, sni: str) -> None:
    """``include_tls_session``: the gRPC check's ``tls_session.sni`` is the SNI the TLS inspector
    read, on a TLS connection only, and only when asked for."""
    import random

    from trio_yastack.l7.config import ExtAuthz
    from trio_yastack.l7.filters._chain import RequestView
    from trio_yastack.l7.filters._connection import _KEY, ConnectionInfo
    from trio_yastack.l7.filters._ext_authz import ExtAuthzFilter
    from trio_yastack.l7.stats import Stats

    config = ExtAuthz("grpc", cluster="authz", include_tls_session=include)
    f = ExtAuthzFilter(config, Stats().scope("http", "ingress"), lambda key: None, random.Random(0))
    state: dict[int, object] = {_KEY: ConnectionInfo(tls=tls, server_name="api.example")}
    view = RequestView("GET", "/", [(b"host", b"api.example")], None, None, state)
    check = f._check_request(view, (), external_auth_pb2)
    assert check.attributes.tls_session.sni == sni


RBAC_ON_AUTHZ_METADATA = """          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "alice-only":
                    permissions: [{any: true}]
                    principals:
                    - metadata:
                        filter: envoy.filters.http.ext_authz
                        path: [{key: x-auth-user}]
                        value: {string_match: {exact: alice}}
          - name: envoy.filters.http.router
"""


async def test_ext_authz_http_dynamic_metadata_from_headers(autojump_clock: trio.testing.MockClock) -> None:
    """``dynamic_metadata_from_headers``: the allowed answer's ``x-auth-user`` becomes dynamic
    metadata under ``envoy.filters.http.ext_authz``, which RBAC after it matches."""
    config = HTTP_CONFIG.replace(
        "                  allowed_upstream_headers:\n",
        "                  dynamic_metadata_from_headers:\n"
        "                    patterns: [{exact: x-auth-user}]\n"
        "                  allowed_upstream_headers:\n",
    ).replace("          - name: envoy.filters.http.router\n", RBAC_ON_AUTHZ_METADATA)
    app, authz = BackendApp("app"), AuthzApp()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, authz, b, 8091)]
        async with running_proxy(load_config(config), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                assert (await client.request("GET", "/x", [("authorization", "Bearer good")])).status == 200
                no_metadata = config.replace(
                    "patterns: [{exact: x-auth-user}]", "patterns: [{exact: x-none}]"
                )
                await client.aclose()
        async with running_proxy(load_config(no_metadata), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("GET", "/x", [("authorization", "Bearer good")])
                assert r.status == 403 and r.body == b"RBAC: access denied\n"
                await client.aclose()
        for backend in backends:
            backend.stop()


class MetadataAuthorization(Authorization):
    """Allows as :class:`Authorization` does, and answers dynamic metadata naming the user and
    echoing the metadata context the check carried."""

    def check(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = super().check(request, context)
        if response.status.code == 0:
            response.dynamic_metadata.update({"user": request.attributes.request.http.headers["x-user"]})
        return response


async def test_ext_authz_grpc_metadata_context_and_dynamic_metadata() -> None:
    """``metadata_context_namespaces``: the request's dynamic metadata (written by a Lua script
    before the check) goes with the gRPC check; the answer's ``dynamic_metadata`` is written under
    ``envoy.filters.http.ext_authz``, which RBAC after the check matches (bob passes, carol not)."""
    service = MetadataAuthorization()
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.auth.v3.Authorization",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                service.check,
                request_deserializer=external_auth_pb2.CheckRequest.FromString,
                response_serializer=external_auth_pb2.CheckResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    authz_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    before = """          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h)
                    h:streamInfo():dynamicMetadata():set("acme", "tenant", "t1")
                  end
"""
    after = """          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "bob":
                    permissions: [{any: true}]
                    principals:
                    - metadata:
                        filter: envoy.filters.http.ext_authz
                        path: [{key: user}]
                        value: {string_match: {exact: bob}}
"""
    try:
        app = BackendApp("app")
        proxy_port, app_port = _free_port(), _free_port()
        async with trio.open_nursery() as nursery:
            stop = await kernel_backend(nursery, app, app_port)
            config = (
                grpc_config(proxy_port, app_port, authz_port)
                .replace(
                    "              stat_prefix: grpc\n",
                    "              stat_prefix: grpc\n              metadata_context_namespaces: [acme]\n",
                )
                .replace(
                    "          - name: envoy.filters.http.ext_authz\n",
                    before + "          - name: envoy.filters.http.ext_authz\n",
                )
                .replace(
                    "          - name: envoy.filters.http.router\n",
                    after + "          - name: envoy.filters.http.router\n",
                )
            )
            async with running_proxy(load_config(config), None):
                with trio.fail_after(LIMIT):
                    client = Client(await trio.open_tcp_stream("127.0.0.1", proxy_port))
                    r = await client.request("GET", "/", [("x-user", "bob")])
                    assert r.status == 200
                    sent = service.checks[-1].attributes.metadata_context.filter_metadata["acme"]
                    assert dict(sent) == {"tenant": "t1"}
                    assert app.seen[-1].path == "/"
                    r = await client.request("GET", "/", [("x-user", "carol")])  # allowed by the service
                    assert r.status == 403 and len(app.seen) == 1  # not by RBAC on its metadata
                    await client.aclose()
            stop.set()
    finally:
        server.stop(grace=None)
