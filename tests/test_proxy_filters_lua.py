"""``envoy.filters.http.lua`` (through ``lupa``) against Envoy's documented behaviour: a script's
``envoy_on_request`` reading and changing the request's headers (``get``, ``replace``, ``add``,
``remove``, ``pairs``), answering with ``respond()``, logging with ``logInfo``; its
``envoy_on_response`` changing the response's headers; globals kept from request to request;
``LuaPerRoute`` (``disabled``, a named ``source_codes`` entry, its own ``source_code``); and a
script that fails, or runs without end, stopped and counted while the request goes on.

On the in-process simulator under trio's MockClock: the proxy on stack A (198.18.0.2:10000), the
hypercorn backend and the clients on stack B (198.18.0.1).
"""

from __future__ import annotations

import logging
import textwrap

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect, running_proxy, start_backend
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, ConfigError, load_config

LIMIT = 60

SCRIPT = """
count = 0
function envoy_on_request(request_handle)
  count = count + 1
  local headers = request_handle:headers()
  if headers:get("x-block") ~= nil then
    request_handle:respond({[":status"] = "403", ["x-blocked-by"] = "lua"}, "blocked by script")
  end
  headers:add("x-request-count", tostring(count))
  headers:replace("x-path-seen", headers:get(":path"))
  headers:remove("x-secret")
  local names = {}
  for name, _ in pairs(headers) do
    if string.sub(name, 1, 6) == "x-tag-" then names[#names + 1] = name end
  end
  table.sort(names)
  headers:add("x-tags", table.concat(names, ","))
  request_handle:logInfo("saw " .. headers:get(":method") .. " " .. headers:get(":path"))
end
function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  headers:add("x-lua-status", headers:get(":status"))
  headers:remove("x-powered-by")
  headers:replace("x-count", tostring(count))
end
"""

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
              - match: {prefix: "/off"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    disabled: true
              - match: {prefix: "/named"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: stamp.lua
              - match: {prefix: "/own"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
                        function envoy_on_request(h) h:headers():add("x-own", "yes") end
              - match: {prefix: "/broken"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
                        function envoy_on_request(h) h:headers():add("x-before", "1"); error("oops") end
              - match: {prefix: "/forever"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
                        function envoy_on_request(h) while true do end end
              - match: {prefix: "/body"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
                        function envoy_on_request(h) h:metadata() end
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
SCRIPT
              source_codes:
                stamp.lua:
                  inline_string: |
                    function envoy_on_request(h) h:headers():add("x-stamp", "named") end
          - name: envoy.filters.http.router
""".replace("HCM_TYPE", HCM_TYPE).replace("SCRIPT\n", textwrap.indent(SCRIPT.strip() + "\n", " " * 18))


async def test_lua_request_and_response_scripts(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_yastack.l7.lua")
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request(
                    "GET",
                    "/a?b=1",
                    [("x-secret", "s"), ("x-tag-b", "1"), ("x-tag-a", "2"), ("x-path-seen", "x")],
                )
                assert r.status == 200
                seen = app.seen[-1]
                assert seen.header("x-request-count") == "1" and seen.header("x-path-seen") == "/a?b=1"
                assert seen.header("x-secret") is None and seen.header("x-tags") == "x-tag-a,x-tag-b"
                assert r.header("x-lua-status") == "200" and r.header("x-count") == "1"
                assert "script log: saw GET /a?b=1" in caplog.text

                r = await client.request("POST", "/a", [("x-block", "1")], body=b"ignored")
                assert r.status == 403 and r.body == b"blocked by script"
                assert r.header("x-blocked-by") == "lua" and len(app.seen) == 1

                r = await client.request("GET", "/again")
                assert app.seen[-1].header("x-request-count") == "3"  # the script's globals persist

                await client.request("GET", "/off")
                assert app.seen[-1].header("x-request-count") is None
                await client.request("GET", "/named")
                assert app.seen[-1].header("x-stamp") == "named"
                assert app.seen[-1].header("x-request-count") is None
                await client.request("GET", "/own")
                assert app.seen[-1].header("x-own") == "yes"

                for path in ("/broken", "/forever", "/body"):
                    r = await client.request("GET", path)
                    assert r.status == 200 and app.seen[-1].path == path  # the request goes on
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 3
                assert "instruction limit" in caplog.text and "metadata" in caplog.text
        backend.stop()


def test_lua_config_mistakes_named_by_path() -> None:
    """A script that does not compile is a config problem at its path, as Envoy reports it."""
    bad = CONFIG.replace('h:headers():add("x-own", "yes") end', 'h:headers():add("x-own", "yes")')
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    text = str(e.value)
    assert "routes[2].typed_per_filter_config.envoy.filters.http.lua.source_code: Lua:" in text
    assert "'end' expected" in text
