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
}


def config(order: list[str]) -> str:
    chain = "".join(FILTERS[name] for name in order).replace(
        "{head_only}", textwrap.indent(HEAD_ONLY, " " * 18)
    )
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
