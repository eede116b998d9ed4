"""``envoy.filters.http.ext_authz``'s ``with_request_body`` through the proxy, as Envoy documents it:
the request body read before the check and sent with it (``x-envoy-auth-partial-body: false``), the
whole body still forwarded upstream; a body over ``max_request_bytes`` answered 413 without a check;
with ``allow_partial_message`` its first ``max_request_bytes`` sent (``partial-body: true``); a route's
``check_settings`` turning buffering off or giving its own settings; a chunked body; and the gRPC
service's ``raw_body`` with ``pack_as_bytes``.

The HTTP service on the in-process simulator under trio's MockClock (proxy on stack A, backends on
stack B); the gRPC one with grpcio on 127.0.0.1 and the real clock, as in
``test_proxy_filters_ext_authz.py``.
"""

from __future__ import annotations

from typing import Any

import h11
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect, running_proxy, start_backend
from socket_helpers import two_stacks
from test_proxy_filters_ext_authz import _free_port, grpc_authz, grpc_config, kernel_backend

from trio_yastack.l7.config import HCM_TYPE, load_config

LIMIT = 60

CONFIG = """
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
              - match: {prefix: "/partial"}
                route: {cluster: app, prefix_rewrite: /echo}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      with_request_body: {max_request_bytes: 4, allow_partial_message: true}
              - match: {prefix: "/nobuffer"}
                route: {cluster: app, prefix_rewrite: /echo}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {disable_request_body_buffering: true}
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              with_request_body: {max_request_bytes: 8}
              http_service:
                server_uri: {uri: "http://authz.internal", cluster: authz, timeout: 1s}
          - name: envoy.filters.http.router
""".replace("HCM_TYPE", HCM_TYPE)


class BodyAuthz(BackendApp):
    """An HTTP authorization service that reads the check's body: a body containing ``deny`` is
    refused (403), any other allowed; every check's (path, body, partial-body header) is kept."""

    def __init__(self) -> None:
        super().__init__("authz")
        self.checks: list[tuple[str, bytes, str | None]] = []

    async def _http(
        self, path: str, query: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(parts)
        partial = dict(scope["headers"]).get(b"x-envoy-auth-partial-body")
        self.checks.append((path, body, partial.decode() if partial is not None else None))
        status = 403 if b"deny" in body else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def test_ext_authz_with_request_body(autojump_clock: trio.testing.MockClock) -> None:
    app, authz = BackendApp("app"), BodyAuthz()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, authz, b, 8091)]
        async with running_proxy(load_config(CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("POST", "/echo", body=b"hello")
                assert r.status == 200 and r.body == b"hello"  # the whole body forwarded too
                assert authz.checks[-1] == ("/echo", b"hello", "false")

                r = await client.request("POST", "/echo", body=b"deny")
                assert r.status == 403 and len(app.seen) == 1

                checks = len(authz.checks)
                r = await client.request("POST", "/echo", body=b"0123456789")  # over 8 bytes
                assert r.status == 413 and r.body == b"Payload Too Large\n"
                assert len(authz.checks) == checks and len(app.seen) == 1  # no check, no upstream

                await client.start("POST", "/echo", [("transfer-encoding", "chunked")])
                for piece in (b"ab", b"cd", b"ef"):
                    await client.send(h11.Data(data=piece))
                await client.send(h11.EndOfMessage())
                r = await client.read_response()
                assert r.status == 200 and r.body == b"abcdef"
                assert authz.checks[-1] == ("/echo", b"abcdef", "false")

                r = await client.request("POST", "/partial", body=b"abcdefghij")
                assert r.status == 200 and r.body == b"abcdefghij"
                assert authz.checks[-1] == ("/partial", b"abcd", "true")
                r = await client.request("POST", "/partial", body=b"xxxxdeny")  # what decides is unseen
                assert r.status == 200

                r = await client.request("POST", "/nobuffer", body=b"0123456789deny")
                assert r.status == 200 and r.body == b"0123456789deny"
                assert authz.checks[-1] == ("/nobuffer", b"", None)

                r = await client.request("GET", "/empty")
                assert r.status == 200 and authz.checks[-1] == ("/empty", b"", None)
                await client.aclose()
                assert proxy.stats.value("http.ingress.ext_authz.denied") == 1
        for backend in backends:
            backend.stop()


async def test_ext_authz_grpc_with_request_body() -> None:
    app = BackendApp("app")
    proxy_port, app_port = _free_port(), _free_port()
    with grpc_authz() as (authz_port, service):
        async with trio.open_nursery() as nursery:
            stop = await kernel_backend(nursery, app, app_port)
            config = grpc_config(proxy_port, app_port, authz_port).replace(
                "              stat_prefix: grpc\n",
                "              stat_prefix: grpc\n"
                "              with_request_body: {max_request_bytes: 100, pack_as_bytes: true}\n",
            )
            async with running_proxy(load_config(config), None):
                with trio.fail_after(LIMIT):
                    client = Client(await trio.open_tcp_stream("127.0.0.1", proxy_port))
                    r = await client.request("POST", "/things", [("x-user", "bob")], body=b"\xff\x00raw")
                    assert r.status == 200, r.body
                    http = service.checks[-1].attributes.request.http
                    assert http.raw_body == b"\xff\x00raw" and http.body == ""
                    assert http.headers["x-envoy-auth-partial-body"] == "false"
                    await client.aclose()
            async with running_proxy(load_config(config.replace(", pack_as_bytes: true", "")), None):
                with trio.fail_after(LIMIT):
                    client = Client(await trio.open_tcp_stream("127.0.0.1", proxy_port))
                    r = await client.request("POST", "/things", [("x-user", "bob")], body=b"text body")
                    assert r.status == 200, r.body
                    http = service.checks[-1].attributes.request.http
                    assert http.body == "text body" and http.raw_body == b""
                    await client.aclose()
            stop.set()
