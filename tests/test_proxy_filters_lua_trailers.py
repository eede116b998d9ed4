"""``envoy.filters.http.lua``'s ``trailers()`` in ``envoy_on_request``, as Envoy documents it: the
script waits for the end of the request and gets its trailers (nil when there are none), here after
the body is read whole (the backend still gets all of it); what the script learns from them can go
upstream in the request's headers.  An HTTP/1.1 client's trailers reach the filters only with the
connection manager's ``http_protocol_options.enable_trailers``, as Envoy's HTTP/1 codec drops them
otherwise.  Chunked HTTP/1.1 requests with trailers, on the simulator under trio's MockClock, as
test_proxy_filters_lua.py.
"""

from __future__ import annotations

import textwrap

import h2.config
import h2.connection
import h2.events
import h11
import pytest
import trio
import trio.testing
from proxy_helpers import (
    BackendApp,
    Client,
    connect,
    pattern,
    pattern_sha256,
    raw_server,
    running_proxy,
    start_backend,
)
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, HTTP_PROTOCOL_OPTIONS_TYPE, ConfigError, load_config

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
  - name: h2app
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": {HTTP_PROTOCOL_OPTIONS_TYPE}
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: h2app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 198.18.0.1, port_value: 8081}}}}}}
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
          http_protocol_options: {{enable_trailers: ENABLED}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/h2/"}}
                route: {{cluster: h2app}}
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


async def h2_backend(stream: trio.SocketStream, trailers: list[list[tuple[str, str]]]) -> None:
    """An HTTP/2 server (the ``h2`` library) that notes each request's trailers and answers 200."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    while data := await stream.receive_some(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.TrailersReceived):
                trailers.append([(str(k), str(v)) for k, v in event.headers])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "2")])
                conn.send_data(event.stream_id, b"ok", end_stream=True)
        await stream.send_all(conn.data_to_send())


async def test_request_trailers(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG.replace("ENABLED", "true")), a) as proxy:
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

                # to an HTTP/2 cluster the trailers go on, as the script left them
                received: list[list[tuple[str, str]]] = []
                async with raw_server(b, 8081, lambda stream: h2_backend(stream, received)):
                    await client.start("POST", "/h2/call", [("transfer-encoding", "chunked")])
                    await client.send(h11.Data(data=b"hello"))
                    await client.send(h11.EndOfMessage(headers=[("x-checksum", "abc123")]))
                    r = await client.read_response()
                    assert r.status == 200 and r.body == b"ok"
                assert received == [[("x-checksum", "abc123"), ("x-lua", "seen")]]
                await client.aclose()
        assert proxy.stats.value("http.ingress.lua.errors") == 0
        backend.stop()


async def test_request_trailers_dropped_without_enable_trailers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG.replace("ENABLED", "false")), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                await client.start("POST", "/upload", [("transfer-encoding", "chunked")])
                await client.send(h11.Data(data=b"hello"))
                await client.send(h11.EndOfMessage(headers=[("x-checksum", "abc123")]))
                r = await client.read_response()
                assert r.status == 200 and r.json()["bytes"] == 5
                assert app.seen[-1].header("x-trailers") == "nil"
                await client.aclose()
        backend.stop()


def test_http_protocol_options_fields() -> None:
    """Of the connection manager's ``http_protocol_options``, ``enable_trailers`` is read; any other
    field is an error naming its path."""
    with pytest.raises(ConfigError, match=r"http_protocol_options\.accept_http_10"):
        load_config(CONFIG.replace("enable_trailers: ENABLED", "accept_http_10: true"))
