"""``envoy.filters.http.lua``'s ``envoy_on_response`` reading the response body and trailers, as
Envoy's documentation shows: ``body()`` holds the response until its whole body is here (the
script's later header changes apply, ``setBytes`` replaces the body and the length follows),
``trailers()`` waits for the end (nil without trailers), ``bodyChunks()`` sees each piece as it
passes, a body over the limit fails the script and leaves as it came.  On the simulator under
trio's MockClock, as test_proxy_filters_lua.py."""

from __future__ import annotations

import hashlib
import logging
import textwrap

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect, pattern_sha256, running_proxy, start_backend
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, load_config
from trio_yastack.l7.filters._lua import MAX_RESPONSE_BODY

LIMIT = 60

# Envoy's example (the response body's size in a header), a body replaced, trailers read
SCRIPTS = {
    "/size": """
        function envoy_on_response(h)
          local size = h:body():length()
          h:headers():add("response-body-size", tostring(size))
        end
    """,
    "/replace": """
        function envoy_on_response(h)
          local body = h:body()
          local n = body:length()
          local second = body:getBytes(0, 2):byte(2)
          body:setBytes("replaced " .. tostring(n) .. " bytes, first " .. tostring(second))
          h:headers():replace("x-length", tostring(n))
        end
    """,
    "/trailers": """
        function envoy_on_response(h)
          h:headers():add("x-head", "before")
          local t = h:trailers()
          h:logInfo("trailers: " .. tostring(t))
          if t ~= nil then error("no trailers expected") end
        end
    """,
    "/chunks": """
        function envoy_on_response(h)
          local n, total = 0, 0
          for chunk in h:bodyChunks() do
            n = n + 1
            total = total + chunk:length()
            if n == 1 then first = chunk:getBytes(0, 3):byte(3) end
          end
          h:logInfo("chunks seen " .. tostring(n > 1) .. ", bytes " .. total .. ", third byte " .. first)
        end
    """,
    "/setchunk": """
        function envoy_on_response(h)
          for chunk in h:bodyChunks() do chunk:setBytes("x") end
        end
    """,
    "/late": """
        function envoy_on_response(h)
          h:trailers()
          h:body()
        end
    """,
}


def config() -> str:
    routes = ""
    for prefix, script in SCRIPTS.items():
        code = textwrap.indent(textwrap.dedent(script).strip(), " " * 24)
        routes += f"""
              - match: {{prefix: "{prefix}"}}
                route: {{cluster: app, prefix_rewrite: "/stream"}}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
{code}
"""
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
              routes:{routes}
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code: {{inline_string: "function envoy_on_request(h) end"}}
          - name: envoy.filters.http.router
"""


async def test_response_body_trailers_and_limits(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_yastack.l7.lua")
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(config()), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                # body(): the whole body (3 pieces of 64 KiB and more), then the header
                size = 200_000
                r = await client.request("GET", f"/size?bytes={size}")
                assert r.status == 200 and r.header("response-body-size") == str(size)
                assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(size)
                assert r.header("content-length") == str(size)

                # setBytes: the body replaced, its length with it; a header set after body()
                r = await client.request("GET", "/replace?bytes=1000")
                assert r.header("x-length") == "1000"
                assert r.body == b"replaced 1000 bytes, first 1"
                assert r.header("content-length") == str(len(r.body))

                # trailers(): nil without trailers; the head and body are not held
                r = await client.request("GET", "/trailers?bytes=3000")
                assert r.status == 200 and len(r.body) == 3000 and r.header("x-head") == "before"

                # body() after trailers(): the body has gone: a script error, the response whole
                r = await client.request("GET", "/late?bytes=3000")
                assert r.status == 200 and len(r.body) == 3000
                assert proxy.stats.value("http.ingress.lua.errors") == 1

                # a body over the limit: the script fails, the response leaves as it came
                big = MAX_RESPONSE_BODY + 100_000
                r = await client.request("GET", f"/size?bytes={big}")
                assert r.status == 200 and r.header("response-body-size") is None
                assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(big)
                assert proxy.stats.value("http.ingress.lua.errors") == 2

                # bodyChunks(): each piece seen as it passes, unchanged; setBytes on one fails
                r = await client.request("GET", f"/chunks?bytes={size}")
                assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == pattern_sha256(size)
                assert f"chunks seen true, bytes {size}, third byte 2" in caplog.text
                r = await client.request("GET", "/setchunk?bytes=5000")
                assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == pattern_sha256(5000)
                assert proxy.stats.value("http.ingress.lua.errors") == 3

                # a HEAD: the held head keeps the upstream's length, no body
                r = await client.request("HEAD", f"/size?bytes={size}")
                assert r.status == 200 and r.body == b""
                await client.aclose()
        backend.stop()
