"""``envoy.filters.http.lua`` beyond headers, through the proxy, as Envoy documents it:

- ``body()``: the script waits for the whole request body (Content-Length and chunked, one larger
  than the retry buffer), reads it with ``getBytes`` and replaces it with ``setBytes`` (the backend
  gets the new body and its new Content-Length); an empty body is nil unless ``always_wrap_body``;
  ``bodyChunks()``: the pieces as they arrive;
- ``httpCall()`` to a cluster answers the response's headers and body, a failed call answers 503
  ``upstream failure``, an asynchronous one is made without the script waiting, and a call to an
  unknown cluster or without ``:authority`` fails the script (counted) while the request goes on;
- changed headers choose the route again (``clear_route_cache``); ``filterContext()``;
  ``streamInfo()``, ``connection():ssl()``, ``base64Escape``, timestamps; two Lua filters under
  names of their own.

On the in-process simulator under trio's MockClock: the proxy on stack A (198.18.0.2:10000), the
hypercorn backend and the clients on stack B (198.18.0.1).
"""

from __future__ import annotations

import hashlib
import textwrap

import h11
import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect, running_proxy, start_backend, wait_until
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, ConfigError, load_config

LIMIT = 60

SCRIPT = """
function envoy_on_request(h)
  local headers = h:headers()
  local path = headers:get(":path")
  if path == "/echo" and headers:get("x-rewrite") then
    local body = h:body()
    local text = body:getBytes(0, body:length())
    body:setBytes(string.upper(text) .. "!")
    headers:add("x-new-length", tostring(body:length()))
  elseif path == "/echo" then
    local body = h:body()
    headers:add("x-seen-length", tostring(body:length()))
    headers:add("x-tail", body:getBytes(body:length() - 4, 4))
  elseif path == "/empty" then
    headers:add("x-body", tostring(h:body()))
    headers:add("x-wrapped", tostring(h:body(true):length()))
  elseif path == "/deny" then
    local body = h:body()
    if body ~= nil and body:length() > 4 then h:respond({[":status"] = "413"}, "too long for lua") end
  elseif path == "/call" then
    local reply, reply_body = h:httpCall(
      "side", {[":method"] = "GET", [":path"] = "/status/202", [":authority"] = "side.test",
               ["x-from"] = "lua"}, nil, 1000)
    headers:add("x-call-status", reply[":status"])
    headers:add("x-call-body", reply_body)
  elseif path == "/fail" then
    local reply, reply_body = h:httpCall(
      "down", {[":method"] = "GET", [":path"] = "/", [":authority"] = "down.test"}, "", 500)
    h:respond({[":status"] = reply[":status"], ["x-by"] = "lua"}, reply_body)
  elseif path == "/async" then
    h:httpCall("side", {[":method"] = "POST", [":path"] = "/async-seen", [":authority"] = "side.test"},
               "ping", {asynchronous = true})
    headers:add("x-async", "sent")
  elseif path == "/unknown" then
    h:httpCall("nope", {[":method"] = "GET", [":path"] = "/", [":authority"] = "x"}, nil, 100)
  elseif path == "/noauthority" then
    h:httpCall("side", {[":method"] = "GET", [":path"] = "/"}, nil, 100)
  end
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
  - name: side
    connect_timeout: 1s
    load_assignment:
      cluster_name: side
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.18.0.1, port_value: 8080}}}
  - name: down
    connect_timeout: 1s
    load_assignment:
      cluster_name: down
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.18.0.1, port_value: 9}}}
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
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
SCRIPT
          - name: envoy.filters.http.router
""".replace("HCM_TYPE", HCM_TYPE).replace("SCRIPT\n", textwrap.indent(SCRIPT.strip() + "\n", " " * 18))


async def _chunked(client: Client, target: str, pieces: list[bytes], headers: list[tuple[str, str]]) -> bytes:
    await client.start("POST", target, [*headers, ("transfer-encoding", "chunked")])
    for piece in pieces:
        await client.send(h11.Data(data=piece))
    await client.send(h11.EndOfMessage())
    r = await client.read_response()
    assert r.status == 200
    return r.body


async def test_lua_body_read_and_replaced(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("POST", "/echo", [("x-rewrite", "1")], body=b"hello")
                assert r.status == 200 and r.body == b"HELLO!"
                assert app.seen[-1].header("content-length") == "6"
                assert app.seen[-1].header("x-new-length") == "6"

                body = await _chunked(client, "/echo", [b"ab", b"cd", b"ef"], [("x-rewrite", "1")])
                assert body == b"ABCDEF!"
                assert app.seen[-1].header("transfer-encoding") == "chunked"

                # larger than the retry buffer (64 KiB): read whole by the script, forwarded whole
                big = bytes(range(256)) * 1024  # 256 KiB
                body = await _chunked(
                    client, "/echo", [big[i : i + 10_000] for i in range(0, len(big), 10_000)], []
                )
                assert hashlib.sha256(body).hexdigest() == hashlib.sha256(big).hexdigest()
                assert app.seen[-1].header("x-seen-length") == str(len(big))
                assert app.seen[-1].header("x-tail").encode("latin-1") == big[-4:]

                r = await client.request("GET", "/empty")
                assert r.status == 200
                assert app.seen[-1].header("x-body") == "nil" and app.seen[-1].header("x-wrapped") == "0"

                seen = len(app.seen)
                r = await client.request("POST", "/deny", body=b"12345")
                assert r.status == 413 and r.body == b"too long for lua" and len(app.seen) == seen
                r = await client.request("POST", "/deny", body=b"1234")  # the connection goes on
                assert r.status == 200 and app.seen[-1].path == "/deny"
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 0
        backend.stop()


async def test_lua_http_call(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("GET", "/call")
                assert r.status == 200
                call, seen = app.seen[-2], app.seen[-1]
                assert call.path == "/status/202" and call.header("x-from") == "lua"
                assert call.header("host") == "side.test"
                assert seen.path == "/call"
                assert seen.header("x-call-status") == "202" and seen.header("x-call-body") == "app 202"

                r = await client.request("GET", "/fail")
                assert r.status == 503 and r.body == b"upstream failure" and r.header("x-by") == "lua"

                r = await client.request("GET", "/async")
                assert r.status == 200  # the script did not wait for its call
                assert next(s for s in app.seen if s.path == "/async").header("x-async") == "sent"
                await wait_until(lambda: any(s.path == "/async-seen" for s in app.seen))
                assert next(s for s in app.seen if s.path == "/async-seen").method == "POST"

                for path in ("/unknown", "/noauthority"):
                    r = await client.request("GET", path)
                    assert r.status == 200 and app.seen[-1].path == path  # the script failed; on it goes
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 2
        backend.stop()


ROUTE_SCRIPT = """
function envoy_on_request(h)
  local headers = h:headers()
  local path = headers:get(":path")
  if path == "/beta" then headers:replace("x-route", "beta") end
  if path == "/host" then headers:replace(":authority", "admin.test") end
  if path == "/path" then headers:replace(":path", "/elsewhere") end
  if path == "/asked" then headers:replace("x-route", "beta"); h:clearRouteCache() end
end
"""

ROUTE_CONFIG = CONFIG.replace(
    """              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
""",
    """              routes:
              - match: {prefix: "/", headers: [{name: x-route, string_match: {exact: beta}}]}
                direct_response: {status: 200, body: {inline_string: "beta route"}}
              - match: {prefix: "/"}
                route: {cluster: app}
            - name: admin
              domains: ["admin.test"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "admin host"}}
""",
).replace(
    textwrap.indent(SCRIPT.strip() + "\n", " " * 18), textwrap.indent(ROUTE_SCRIPT.strip() + "\n", " " * 18)
)


@pytest.mark.parametrize("clear", [True, False])
async def test_lua_changed_headers_choose_the_route_again(
    autojump_clock: trio.testing.MockClock, clear: bool
) -> None:
    """Envoy's Lua filter clears the route cache when a script changes the request's headers
    (``clear_route_cache``, default true): the route is chosen again from them, here a header match
    and a virtual host by ``:authority`` (written as the Host header).  With ``clear_route_cache:
    false`` the route chosen before the script stays.  ``:path`` cannot be written here: the script
    fails (counted) and the request goes on."""
    config = ROUTE_CONFIG
    if not clear:
        config = config.replace(
            "              default_source_code:\n",
            "              clear_route_cache: false\n              default_source_code:\n",
        )
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(config), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("GET", "/beta")
                if clear:
                    assert r.body == b"beta route" and app.seen == []
                else:
                    assert app.seen[-1].path == "/beta" and app.seen[-1].header("x-route") == "beta"
                r = await client.request("GET", "/host")
                if clear:
                    assert r.body == b"admin host"
                else:
                    assert app.seen[-1].path == "/host" and app.seen[-1].header("host") == "admin.test"
                r = await client.request("GET", "/asked")  # clearRouteCache(): chosen again either way
                assert r.body == b"beta route"
                r = await client.request("GET", "/path")
                assert r.status == 200 and app.seen[-1].path == "/path"
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 1
        backend.stop()


CONTEXT_SCRIPT = """
function envoy_on_request(h)
  local context = h:filterContext()
  h:headers():add("x-greeting", tostring(context["greeting"]))
  if context["limits"] ~= nil then
    h:headers():add("x-second-limit", tostring(context["limits"][2]))
    h:headers():add("x-nested", tostring(context["nested"]["enabled"]))
  end
end
"""

CONTEXT_CONFIG = CONFIG.replace(
    """              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
""",
    """              routes:
              - match: {prefix: "/configured"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    filter_context: {greeting: hello, limits: [10, 20], nested: {enabled: true}}
              - match: {prefix: "/"}
                route: {cluster: app}
""",
).replace(
    textwrap.indent(SCRIPT.strip() + "\n", " " * 18), textwrap.indent(CONTEXT_SCRIPT.strip() + "\n", " " * 18)
)


async def test_lua_filter_context(autojump_clock: trio.testing.MockClock) -> None:
    """``LuaPerRoute.filter_context`` alone: the filter's own script runs and reads it with
    ``filterContext()`` (nested tables, arrays from 1); a route without one reads an empty table."""
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONTEXT_CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                assert (await client.request("GET", "/configured")).status == 200
                seen = app.seen[-1]
                assert seen.header("x-greeting") == "hello" and seen.header("x-second-limit") == "20"
                assert seen.header("x-nested") == "true"
                assert (await client.request("GET", "/plain")).status == 200
                assert app.seen[-1].header("x-greeting") == "nil"
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 0
        backend.stop()


def test_lua_per_route_mistakes_named_by_path() -> None:
    """Envoy's validation of ``LuaPerRoute``: ``disabled`` must be true, one override at most, a
    ``filter_context`` must be a mapping."""
    base = "filter_context: {greeting: hello, limits: [10, 20], nested: {enabled: true}}"
    for replacement, message in (
        ("disabled: false", "disabled: must be true"),
        (
            "name: a\n                    source_code: {inline_string: 'x = 1'}",
            "source_code: only one of disabled, name, source_code",
        ),
        ("filter_context: [1, 2]", "filter_context: expected a mapping"),
    ):
        with pytest.raises(ConfigError) as e:
            load_config(CONTEXT_CONFIG.replace(base, replacement))
        assert f"routes[0].typed_per_filter_config.envoy.filters.http.lua.{message}" in str(e.value)


INFO_SCRIPT = """
function envoy_on_request(h)
  local info, headers = h:streamInfo(), h:headers()
  headers:add("x-protocol", info:protocol())
  headers:add("x-remote", info:downstreamRemoteAddress())
  headers:add("x-local", info:downstreamLocalAddress())
  headers:add("x-sni", "[" .. info:requestedServerName() .. "]")
  headers:add("x-tls", tostring(h:connection():ssl() ~= nil))
  headers:add("x-b64", h:base64Escape("hi\\0there"))
  headers:add("x-ms", tostring(math.type(h:timestamp())))
  headers:add("x-us-digits", tostring(#h:timestampString(EnvoyTimestampResolution.MICROSECOND)))
end
function envoy_on_response(h)
  h:headers():add("x-response-protocol", h:streamInfo():protocol())
end
"""


async def test_lua_stream_info_and_helpers(autojump_clock: trio.testing.MockClock) -> None:
    """``streamInfo()`` (protocol, the peer's and our address, the SNI: none here), ``connection():
    ssl()`` (nil: plain HTTP), ``base64Escape``, ``timestamp``/``timestampString``, on both sides."""
    config = CONFIG.replace(
        textwrap.indent(SCRIPT.strip() + "\n", " " * 18),
        textwrap.indent(INFO_SCRIPT.strip() + "\n", " " * 18),
    )
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(config), a) as proxy:
            with trio.fail_after(LIMIT):
                stream = await connect(b)
                client_port = stream.socket.getsockname()[1]
                client = Client(stream)
                r = await client.request("GET", "/info")
                assert r.status == 200 and r.header("x-response-protocol") == "HTTP/1.1"
                seen = app.seen[-1]
                assert seen.header("x-protocol") == "HTTP/1.1"
                assert seen.header("x-remote") == f"198.18.0.1:{client_port}"
                assert seen.header("x-local") == "198.18.0.2:10000"
                assert seen.header("x-sni") == "[]" and seen.header("x-tls") == "false"
                assert seen.header("x-b64") == "aGkAdGhlcmU="
                assert seen.header("x-ms") == "integer" and seen.header("x-us-digits") == "16"
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 0
        backend.stop()


async def test_lua_connection_ssl_reads_the_peer_certificate() -> None:
    """``connection():ssl()`` on a TLS connection: the client certificate's SANs and subject as
    the other filters read them (here from a ConnectionInfo already looked up for the connection),
    and the SNI the TLS inspector read."""
    from trio_yastack.l7.config import Lua
    from trio_yastack.l7.filters._chain import FilterOutcome, RequestView
    from trio_yastack.l7.filters._connection import _KEY, ConnectionInfo
    from trio_yastack.l7.filters._lua import LuaFilter
    from trio_yastack.l7.stats import Stats

    script = """
    function envoy_on_request(h)
      local ssl, headers = h:connection():ssl(), h:headers()
      headers:add("x-presented", tostring(ssl:peerCertificatePresented()))
      headers:add("x-uri", table.concat(ssl:uriSanPeerCertificate(), ","))
      headers:add("x-dns", table.concat(ssl:dnsSansPeerCertificate(), ","))
      headers:add("x-subject", ssl:subjectPeerCertificate())
      headers:add("x-sni", h:streamInfo():requestedServerName())
    end
    """
    cert = {
        "subject": ((("organizationName", "Example"),), (("commonName", "client"),)),
        "subjectAltName": (("URI", "spiffe://example.org/web"), ("DNS", "a.example"), ("DNS", "b.example")),
    }
    info = ConnectionInfo(tls=True, peer_cert=cert, server_name="api.example")
    lua = LuaFilter(Lua(script), Stats().scope("http", "ingress"))
    headers: list[tuple[bytes, bytes]] = []
    view = RequestView("GET", "/", headers, None, None, {_KEY: info})
    await lua.decode(view, None, FilterOutcome(), trio.current_time)
    assert dict(headers) == {
        b"x-presented": b"true",
        b"x-uri": b"spiffe://example.org/web",
        b"x-dns": b"a.example,b.example",
        b"x-subject": b"CN=client,O=Example",
        b"x-sni": b"api.example",
    }


TWO_LUA = """
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
              - match: {prefix: "/quiet"}
                route: {cluster: app}
                typed_per_filter_config:
                  second-script:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    disabled: true
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: first-script
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h) h:headers():add("x-order", "first") end
          - name: second-script
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h) h:headers():add("x-order", "second") end
          - name: the-router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
""".replace("HCM_TYPE", HCM_TYPE)


async def test_filters_named_freely_by_their_type(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy lets ``typed_config``'s ``@type`` decide what a filter is: two Lua filters under names
    of their own run in order, a route's ``typed_per_filter_config`` reaches one by its name, and
    a router may be named anything too."""
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(TWO_LUA), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                await client.request("GET", "/loud")
                assert app.seen[-1].header("x-order") == "first,second"
                await client.request("GET", "/quiet")
                assert app.seen[-1].header("x-order") == "first"
                await client.aclose()
        backend.stop()
    with pytest.raises(ConfigError) as e:
        load_config(TWO_LUA.replace("v3.Lua\n", "v3.Nope\n", 1))
    assert "http_filters[0].name: unsupported 'first-script'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(TWO_LUA.replace("name: second-script", "name: first-script"))
    assert "http_filters[1].name: first-script is configured twice" in str(e.value)


CHUNKS_SCRIPT = """
function envoy_on_request(h)
  local count, total = 0, 0
  for chunk in h:bodyChunks() do
    count, total = count + 1, total + chunk:length()
    if h:headers():get("x-upper") then chunk:setBytes(string.upper(chunk:getBytes(0, chunk:length()))) end
  end
  h:headers():add("x-chunks", tostring(count))
  h:headers():add("x-total", tostring(total))
end
"""


async def test_lua_body_chunks(autojump_clock: trio.testing.MockClock) -> None:
    """``bodyChunks()``: the script sees the body piece by piece as the client sends it, each piece
    forwarded (changed when the script set its bytes, the Content-Length following)."""
    config = CONFIG.replace(
        textwrap.indent(SCRIPT.strip() + "\n", " " * 18),
        textwrap.indent(CHUNKS_SCRIPT.strip() + "\n", " " * 18),
    )
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(config), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                body = await _chunked(client, "/echo", [b"abc", b"defg", b"hi"], [])
                assert body == b"abcdefghi" and int(app.seen[-1].header("x-chunks")) >= 1
                assert app.seen[-1].header("x-total") == "9"
                r = await client.request("POST", "/echo", [("x-upper", "1")], body=b"hello there")
                assert r.body == b"HELLO THERE" and app.seen[-1].header("content-length") == "11"
                r = await client.request("GET", "/echo")
                assert r.status == 200 and app.seen[-1].header("x-chunks") == "0"
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 0
        backend.stop()
