"""The response side of the HTTP filters in Envoy's order: the reverse of the order configured.

Envoy runs decoder filters in the order of ``http_filters`` and encoder filters the other way, so
each response filter sees what the filters configured after it (nearer the router) made of the
response.  With ``[compressor, lua, router]`` a Lua ``envoy_on_response`` sees the plain body and
no ``content-encoding``, and the compressor compresses what Lua leaves; with
``[lua, compressor, router]`` the compressor runs first and Lua sees the gzipped body and its
``content-encoding: gzip``.  CORS's response headers likewise: a Lua filter configured before
``cors`` sees ``access-control-allow-origin``, one configured after it does not (the client gets
it either way).  Each order through the proxy (Envoy YAML, the simulator, a real backend), both
with a script that only reads the head (the body streams) and with one that holds the body
(``body()``: the head waits, the filters before it in the config see it afterwards).
"""

from __future__ import annotations

import gzip
import json
import textwrap
from typing import Any

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, Response, connect
from test_proxy_http import setup

from trio_yastack.l7.config import HCM_TYPE, load_config

pytest.importorskip("lupa")

ORIGIN = "https://a.example"
#: what the scripts report of the response they see, in headers of their own
REPORT = """
  h:headers():add("x-lua-encoding", tostring(h:headers():get("content-encoding")))
  h:headers():add("x-lua-cors", tostring(h:headers():get("access-control-allow-origin")))
"""
HEAD_ONLY = "function envoy_on_response(h)" + REPORT + "end"
HOLDS_BODY = (
    "function envoy_on_response(h)\n"
    "  local first = h:body():getBytes(0, 2)\n"
    '  h:headers():add("x-lua-gzip-magic", tostring(first == "\\31\\139"))' + REPORT + "end"
)

SIMPLE_CACHE = "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
FILTERS = {
    "compressor": """
          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: text_optimized
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip""",
    "lua": """
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
{head_only}""",
    "cors": """
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors""",
    "fault": """
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {header_abort: {}, percentage: {numerator: 100}}""",
    "grpc_web": """
          - name: envoy.filters.http.grpc_web
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb""",
    "cache": """
          - name: envoy.filters.http.cache
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig
              typed_config:
                "@type": {simple}""",
    "cache_vary": """
          - name: envoy.filters.http.cache
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig
              typed_config:
                "@type": {simple}
              allowed_vary_headers: [{exact: accept-encoding}]""",
}


def config(order: list[str]) -> str:
    chain = "".join(FILTERS[name] for name in order).replace("{simple}", SIMPLE_CACHE)
    chain = chain.replace("{head_only}", textwrap.indent(HEAD_ONLY, " " * 18))
    held = textwrap.indent(HOLDS_BODY, " " * 24)
    return f"""
static_resources:
  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 198.18.0.1, port_value: 8080}}}}}}
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 198.18.0.2, port_value: 10000}}}}
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
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{{exact: "{ORIGIN}"}}]
              routes:
              - match: {{prefix: "/held/"}}
                route: {{cluster: app, prefix_rewrite: "/"}}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
{held}
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:{chain}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


async def _doc(client: Client, path: str) -> tuple[Response, dict[str, object]]:
    """A JSON answer (compressible by the compressor's defaults), asked for with gzip and an Origin."""
    r = await client.request("GET", path, [("accept-encoding", "gzip"), ("origin", ORIGIN)])
    assert r.status == 200
    assert r.header("content-encoding") == "gzip" and r.header("access-control-allow-origin") == ORIGIN
    return r, json.loads(gzip.decompress(r.body))


@pytest.mark.parametrize(
    ("order", "lua_sees_gzip", "lua_sees_cors"),
    [
        (["compressor", "lua", "cors"], False, True),
        (["cors", "compressor", "lua"], False, False),
        (["lua", "compressor", "cors"], True, True),
        (["lua", "cors", "compressor"], True, True),
        (["cors", "lua", "compressor"], True, False),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else str(v),
)
async def test_response_filters_in_reverse_configured_order(
    autojump_clock: trio.testing.MockClock, order: list[str], lua_sees_gzip: bool, lua_sees_cors: bool
) -> None:
    app = BackendApp("app")
    async with setup(load_config(config(order)), (app, 8080)) as (_, b, proxy):
        with trio.fail_after(60):
            client = Client(await connect(b))
            encoding = "gzip" if lua_sees_gzip else "nil"
            cors = ORIGIN if lua_sees_cors else "nil"
            # a script that reads the head: the body streams through
            r, document = await _doc(client, "/doc")
            assert document["path"] == "/doc"
            assert (r.header("x-lua-encoding"), r.header("x-lua-cors")) == (encoding, cors)
            # a script that holds the body: it sees the body as the filters after it leave it,
            # and the filters before it see its head (its headers compressed along) afterwards
            r, document = await _doc(client, "/held/doc")
            assert document["path"] == "/doc"
            assert (r.header("x-lua-encoding"), r.header("x-lua-cors")) == (encoding, cors)
            assert r.header("x-lua-gzip-magic") == str(lua_sees_gzip).lower()
            await client.aclose()
        assert proxy.stats.value("http.ingress.compressor.gzip.compressed") == 2
        assert proxy.stats.value("http.ingress.lua.errors") == 0


class CachingApp(BackendApp):
    """``/c``: a text answer of 200 bytes (compressible) that may be kept 60 s, numbered by the
    requests the backend has seen, so a hit is told from a fetch."""

    async def _http(
        self, path: str, query: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        if path != "/c":
            await super()._http(path, query, scope, receive, send)
            return
        body = f"{self.name} #{len(self.seen)} ".encode().ljust(200, b".")
        headers = [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=60"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    ("order", "hit", "compressions"),
    [
        (["compressor", "cache"], True, 2),  # kept plain, the hit compressed on its way out
        (["cache", "compressor"], False, 2),  # gzipped, Vary: Accept-Encoding is not allowed: not kept
        (["cache_vary", "compressor"], True, 1),  # kept gzipped (Vary allowed): the hit leaves as kept
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else str(v),
)
async def test_cache_at_its_place(
    autojump_clock: trio.testing.MockClock, order: list[str], hit: bool, compressions: int
) -> None:
    """The cache keeps the response as the filters configured after it leave it, and a hit passes
    the filters configured before it; each answer here is gzipped either way."""
    app = CachingApp("app")
    async with setup(load_config(config(order)), (app, 8080)) as (_, b, proxy):
        with trio.fail_after(60):
            client = Client(await connect(b))
            bodies = []
            for _ in range(2):
                r = await client.request("GET", "/c", [("accept-encoding", "gzip")])
                assert r.status == 200 and r.header("vary") == "Accept-Encoding"
                assert r.header("content-encoding") == "gzip"
                bodies.append(gzip.decompress(r.body).split(b" ")[0:2])
            await client.aclose()
        assert bodies[0] == [b"app", b"#1"]
        assert bodies[1] == ([b"app", b"#1"] if hit else [b"app", b"#2"])
        assert proxy.stats.value("http.ingress.cache.hit") == int(hit)
        assert proxy.stats.value("http.ingress.compressor.gzip.compressed") == compressions


@pytest.mark.parametrize("lua_first", [True, False], ids=["lua-fault", "fault-lua"])
async def test_local_replies_pass_the_filters_before(
    autojump_clock: trio.testing.MockClock, lua_first: bool
) -> None:
    """A reply a filter makes passes the response side of the filters configured before it (their
    request side ran), not of those after it; a gRPC-Web request's local reply is gRPC-formatted
    (the grpc_web filter made it gRPC) and then gRPC-Web's, as Envoy's grpc_web filter encodes it."""
    order = ["grpc_web", "lua", "fault"] if lua_first else ["grpc_web", "fault", "lua"]
    app = BackendApp("app")
    async with setup(load_config(config(order)), (app, 8080)) as (_, b, _proxy):
        with trio.fail_after(60):
            client = Client(await connect(b))
            r = await client.request("GET", "/doc", [("x-envoy-fault-abort-request", "503")])
            assert r.status == 503 and r.body == b"fault filter abort\n"
            assert r.header("x-lua-encoding") == ("nil" if lua_first else None)
            grpc_web = [
                ("content-type", "application/grpc-web+proto"),
                ("x-envoy-fault-abort-request", "503"),
            ]
            r = await client.request("POST", "/svc/Call", grpc_web, body=b"\0\0\0\0\0")
            assert r.status == 200 and r.body == b""
            assert r.header("content-type") == "application/grpc-web+proto"
            assert (r.header("grpc-status"), r.header("grpc-message")) == ("14", "fault filter abort")
            assert r.header("x-lua-encoding") == ("nil" if lua_first else None)
            await client.aclose()


CORS_THEN_LIMIT = f"""
static_resources:
  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 198.18.0.1, port_value: 8080}}}}}}
  - name: gone
    connect_timeout: 1s
    load_assignment:
      cluster_name: gone
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 198.18.0.1, port_value: 8099}}}}}}
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 198.18.0.2, port_value: 10000}}}}
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
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{{exact: "{ORIGIN}"}}]
              routes:
              - match: {{prefix: "/gone"}}
                route: {{cluster: gone}}
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: {{max_tokens: 2, tokens_per_fill: 2, fill_interval: 3600s}}
              filter_enabled: {{default_value: {{numerator: 100}}}}
              filter_enforced: {{default_value: {{numerator: 100}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


async def test_cors_headers_on_replies_made_after_it(autojump_clock: trio.testing.MockClock) -> None:
    """With ``[cors, local_ratelimit, router]`` a 429 from the rate limit and the router's own 502
    pass CORS's response side, as Envoy's local replies pass the encoder filters before the one that
    answered: a browser can read them.  (The 502 on a request with a body: the general path.)"""
    app = BackendApp("app")
    async with setup(load_config(CORS_THEN_LIMIT), (app, 8080)) as (_, b, _proxy):
        with trio.fail_after(60):
            client = Client(await connect(b))
            origin = [("origin", ORIGIN)]
            r = await client.request("GET", "/doc", origin)
            assert r.status == 200 and r.header("access-control-allow-origin") == ORIGIN
            r = await client.request("POST", "/gone", origin, body=b"x")
            assert r.status == 502 and r.header("access-control-allow-origin") == ORIGIN
            await client.aclose()  # (the proxy closes it: the body was never read)
            client = Client(await connect(b))
            r = await client.request("GET", "/doc", origin)
            assert r.status == 429 and r.body == b"local_rate_limited\n"
            assert r.header("access-control-allow-origin") == ORIGIN
            assert r.header("x-envoy-ratelimited") == "true"
            await client.aclose()
