"""The filters that shape a response body, with an HTTP/2 client (prior knowledge): the fault
filter's ``response_rate_limit`` paces the stream's DATA, and Lua's ``body()`` in
``envoy_on_response`` holds the stream's HEADERS until the body is in (both go through the
connection manager's general relay, which writes each stream's response)."""

from __future__ import annotations

import hashlib

import trio
import trio.testing
from proxy_helpers import BackendApp, cluster, http_bootstrap, pattern_sha256
from test_proxy_filters_fault_bandwidth import FIXED, SIZE
from test_proxy_h2 import h2_proxy

from trio_yastack.l7.config import ROUTER_TYPE

ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
LUA = {
    "name": "envoy.filters.http.lua",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {
            "inline_string": 'function envoy_on_response(h) h:headers():add("x-size", h:body():length()) end'
        },
    },
}


async def test_fault_paces_an_h2_stream(autojump_clock: trio.testing.MockClock) -> None:
    config = http_bootstrap([cluster("app", [8081])], http_filters=[FIXED, ROUTER])
    async with h2_proxy(config, BackendApp("app")) as (_proxy, client, _):
        start = trio.current_time()
        got = await client.wait(await client.request("GET", f"/stream?bytes={SIZE}"))
        took = trio.current_time() - start
        assert got.status == 200 and hashlib.sha256(got.body).hexdigest() == pattern_sha256(SIZE)
        assert 3.9 <= took <= 4.1, took


async def test_lua_response_body_on_an_h2_stream(autojump_clock: trio.testing.MockClock) -> None:
    config = http_bootstrap([cluster("app", [8081])], http_filters=[LUA, ROUTER])
    async with h2_proxy(config, BackendApp("app")) as (_proxy, client, _):
        got = await client.wait(await client.request("GET", "/stream?bytes=100000"))
        assert got.status == 200 and len(got.body) == 100_000
        assert got.headers is not None and dict(got.headers)[b"x-size"] == b"100000"
