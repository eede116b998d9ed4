"""``envoy.filters.http.lua``'s ``trailers()`` in ``envoy_on_request``, as Envoy documents it: the
script waits for the end of the request and gets its trailers (nil when there are none), here after
the body is read whole (the backend still gets all of it); what the script learns from them can go
upstream in the request's headers.  A chunked HTTP/1.1 request with trailers, on the simulator
under trio's MockClock, as test_proxy_filters_lua.py.
"""

from __future__ import annotations

import textwrap

import h11
import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect, pattern, pattern_sha256, running_proxy, start_backend
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, load_config

pytest.importorskip("lupa")

LIMIT = 60
SCRIPT = """
function envoy_on_request(h)
  local t = h:trailers()
  if t == nil then
    h:headers():add("x-trailers", "nil")
  else
    h:headers():add("x-trailers", t:get("x-checksum") .. "," .. tostring(t:getNumValues("x-checksum")))
    t:add("x-lua", "seen")
    h:headers():add("x-body-after", tostring(h:body():length()))
  end
end
"""

CONFIG = f"""
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
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
{textwrap.indent(SCRIPT.strip(), " " * 18)}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


async def test_request_trailers(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                # a chunked upload of 200 000 bytes with a trailer: the script sees the trailer,
                # and the body, read whole for it, reaches the backend whole
                size = 200_000
                await client.start("POST", "/upload", [("transfer-encoding", "chunked")])
                for piece in pattern(size):
                    await client.send(h11.Data(data=piece))
                await client.send(h11.EndOfMessage(headers=[("x-checksum", "abc123")]))
                r = await client.read_response()
                assert r.status == 200 and r.json() == {"bytes": size, "sha256": pattern_sha256(size)}
                seen = app.seen[-1]
                assert seen.header("x-trailers") == "abc123,1"
                assert seen.header("x-body-after") == str(size)

                # no trailers: nil (a Content-Length body, and a chunked one without any)
                r = await client.request("POST", "/upload", body=b"hello")
                assert r.status == 200 and r.json()["bytes"] == 5
                assert app.seen[-1].header("x-trailers") == "nil"
                await client.start("POST", "/upload", [("transfer-encoding", "chunked")])
                await client.send(h11.Data(data=b"hello"))
                await client.send(h11.EndOfMessage())
                r = await client.read_response()
                assert r.status == 200 and app.seen[-1].header("x-trailers") == "nil"
                await client.aclose()
        assert proxy.stats.value("http.ingress.lua.errors") == 0
        backend.stop()
