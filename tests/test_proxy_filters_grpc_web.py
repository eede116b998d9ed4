"""``envoy.filters.http.grpc_web`` with ``cors``, as Envoy's gRPC-Web example configures them: a
browser-style gRPC-Web client (HTTP/1.1, by hand, as grpc-web's JS client frames it) through the
proxy to a real gRPC server (``grpcio``) over HTTP/2.  Binary (``application/grpc-web+proto``) and
text (``application/grpc-web-text``: base64 both ways) calls, the trailers read from the body's
trailer frame, a failing call's status, the CORS preflight for gRPC-Web's headers, and a plain
HTTP/1.1 request passing the filter untouched.  Kernel sockets on 127.0.0.1 with the real clock
(grpcio runs its own threads).
"""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import h11
import pytest
import trio
from proxy_helpers import Client, Response, running_proxy

from trio_yastack.l7.config import HCM_TYPE, load_config
from trio_yastack.l7.filters._grpc_web import GrpcWebResponse, TextRequestDecoder, trailer_frame

SERVICE = "trio_yastack.test.Echo"
LIMIT = 30.0


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
    raise AssertionError("abort raises")


def _items(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield f"item {i}".encode()


@pytest.fixture
def grpc_server() -> Iterator[int]:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Items": grpc.unary_stream_rpc_method_handler(_items),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ALLOW_HEADERS = (
    "keep-alive,user-agent,cache-control,content-type,content-transfer-encoding,custom-header-1,"
    "x-accept-content-transfer-encoding,x-accept-response-streaming,x-user-agent,x-grpc-web,grpc-timeout"
)


def config(proxy_port: int, grpc_port: int) -> str:
    """Envoy's grpc-web example (examples/grpc-web/envoy.yaml), addresses changed."""
    return f"""
static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address: {{address: 127.0.0.1, port_value: {proxy_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          codec_type: auto
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: local_service
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: echo_service
                  timeout: 0s
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match:
                  - prefix: "*"
                  allow_methods: GET, PUT, DELETE, POST, OPTIONS
                  allow_headers: ALLOW_HEADERS
                  max_age: "1728000"
                  expose_headers: custom-header-1,grpc-status,grpc-message
          http_filters:
          - name: envoy.filters.http.grpc_web
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo_service
    connect_timeout: 0.25s
    type: logical_dns
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    lb_policy: round_robin
    load_assignment:
      cluster_name: echo_service
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {grpc_port}}}
""".replace("ALLOW_HEADERS", ALLOW_HEADERS)


def frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """A gRPC-Web response body: its messages, and the trailers of its trailer frame."""
    messages, trailers = [], {}
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        payload, body = body[5 : 5 + length], body[5 + length :]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


ORIGIN = ("origin", "https://app.example")


async def call(client: Client, method: str, message: bytes, *, text: bool = False) -> Response:
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    body = frame(message)
    agent = ("x-user-agent", "grpc-web-javascript/0.1")
    headers = [("content-type", content_type), ("x-grpc-web", "1"), agent, ORIGIN]
    return await client.request(
        "POST", f"/{SERVICE}/{method}", headers, body=base64.b64encode(body) if text else body
    )


async def test_grpc_web_binary_and_text_calls_with_cors(grpc_server: int) -> None:
    port = _free_port()
    async with running_proxy(load_config(config(port, grpc_server)), None):
        with trio.fail_after(LIMIT):
            client = Client(await trio.open_tcp_stream("127.0.0.1", port))
            asked = ("access-control-request-headers", "content-type,x-grpc-web,x-user-agent")
            preflight = [ORIGIN, ("access-control-request-method", "POST"), asked]
            r = await client.request("OPTIONS", f"/{SERVICE}/Unary", preflight)
            assert r.status == 200 and "x-grpc-web" in (r.header("access-control-allow-headers") or "")
            assert r.header("access-control-allow-origin") == "https://app.example"

            r = await call(client, "Unary", b"hello")
            assert r.status == 200, r.body
            assert r.header("content-type") == "application/grpc-web+proto"
            assert r.header("access-control-expose-headers") == "custom-header-1,grpc-status,grpc-message"
            messages, trailers = frames(r.body)
            assert messages == [b"echo:hello"] and trailers["grpc-status"] == "0"

            r = await call(client, "Items", b"3")
            messages, trailers = frames(r.body)
            assert messages == [b"item 0", b"item 1", b"item 2"] and trailers["grpc-status"] == "0"

            r = await call(client, "Unary", b"in text", text=True)
            assert r.status == 200 and r.header("content-type") == "application/grpc-web-text+proto"
            decoder = TextRequestDecoder()  # the client's view: padded base64 strings, one after another
            messages, trailers = frames(decoder.decode(r.body) + decoder.decode(b""))
            assert messages == [b"echo:in text"] and trailers["grpc-status"] == "0"

            r = await call(client, "Fail", b"x")
            # a trailers-only answer: the status in the headers (or, had it come as trailers, in the
            # body's trailer frame)
            status = r.header("grpc-status") or frames(r.body)[1].get("grpc-status")
            message = r.header("grpc-message") or frames(r.body)[1].get("grpc-message")
            assert status == "5" and message == "no such thing: x"
            await client.aclose()


async def call_in_one_write(client: Client, message: bytes) -> Response:
    """A binary gRPC-Web call, head and body in one write: the whole request is at the proxy at
    once (:func:`call` writes them apart, and the body may be still on its way)."""
    body = frame(message)
    headers = [
        ("host", client.host), ("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"),
        ORIGIN, ("content-length", str(len(body))),
    ]  # fmt: skip
    head = client.h11.send(h11.Request(method="POST", target=f"/{SERVICE}/Unary", headers=headers))
    rest = (client.h11.send(h11.Data(data=body)) or b"") + (client.h11.send(h11.EndOfMessage()) or b"")
    await client.stream.send_all((head or b"") + rest)
    return await client.read_response()


async def _early_answering_h2_server(
    listener: trio.SocketListener, open_window: bool, requests: list[int], task_status: trio.TaskStatus[None]
) -> None:
    """An HTTP/2 gRPC upstream that answers each request as soon as its HEADERS arrive, then
    resets the stream with NO_ERROR, asking the client to stop sending the rest (RFC 9113 8.1:
    a server may answer before the request ends, as grpcio does once it has the request's
    message).  Its streams' initial window is 0, so the proxy can send no DATA: the proxy's
    upload of the body is still under way when the whole response is in (or finds the stream
    reset, if it starts after the reset came).  ``open_window``: a connection-level WINDOW_UPDATE
    follows the reset, waking a waiting upload to find its stream reset as the response is
    relayed (the flaky runs' case: grpcio's reset came before the proxy's END_STREAM)."""
    task_status.started()
    stream = await listener.accept()
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2.connection.H2Connection(config=config)
    conn.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
    )
    conn.initiate_connection()
    async with stream:
        await stream.send_all(conn.data_to_send())
        while data := await stream.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    sid = event.stream_id
                    requests.append(sid)
                    conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                    conn.send_data(sid, frame(b"early %d" % sid))
                    conn.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"")], end_stream=True)
                    conn.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)
                    if open_window:
                        conn.increment_flow_control_window(65536)
                elif isinstance(event, h2.events.DataReceived):  # (the first stream's, sent before
                    # the proxy had the server's SETTINGS)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            await stream.send_all(conn.data_to_send())


@pytest.mark.parametrize("open_window", [False, True], ids=["upload-blocked", "upload-finds-reset"])
async def test_keep_alive_after_an_upstream_answers_before_the_request_ends(open_window: bool) -> None:
    """The cause of this file's flaky first test: grpcio answered the streaming call (Items) once
    it had the request's message, and reset the stream (NO_ERROR) before the proxy had read the
    client's end of body and sent END_STREAM.  The proxy then closed the client connection,
    though the client had sent its whole request, and the next call on it got no answer.
    Here an upstream forces that order on every call; each call on the one kept-alive client
    connection is answered, and the proxy accepted that connection once."""
    port = _free_port()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    requests: list[int] = []
    async with trio.open_nursery() as nursery:
        upstream_port = listeners[0].socket.getsockname()[1]
        await nursery.start(_early_answering_h2_server, listeners[0], open_window, requests)
        async with running_proxy(load_config(config(port, upstream_port)), None) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await trio.open_tcp_stream("127.0.0.1", port))
                for n in range(4):
                    r = await call_in_one_write(client, b"message %d" % n)
                    assert r.status == 200 and r.header("content-type") == "application/grpc-web+proto"
                    messages, trailers = frames(r.body)
                    assert messages == [b"early %d" % requests[-1]] and trailers["grpc-status"] == "0"
                assert len(requests) == 4
                assert proxy.stats.value("http.ingress_http.downstream_cx_total") == 1
                await client.aclose()
        nursery.cancel_scope.cancel()


async def test_connection_closes_when_the_answer_comes_before_the_client_sent_its_body() -> None:
    """The other side of that rule: a client that has not sent the rest of its body when the
    response ends gets that response, then the connection closes (what it sent next could not
    be told from a new request)."""
    port = _free_port()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    requests: list[int] = []
    async with trio.open_nursery() as nursery:
        upstream_port = listeners[0].socket.getsockname()[1]
        await nursery.start(_early_answering_h2_server, listeners[0], False, requests)
        async with running_proxy(load_config(config(port, upstream_port)), None) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await trio.open_tcp_stream("127.0.0.1", port))
                r = await call_in_one_write(client, b"whole")  # (opens the upstream connection)
                assert r.status == 200 and frames(r.body)[1]["grpc-status"] == "0"
                body = frame(b"never sent")
                headers = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"), ORIGIN]
                await client.start(
                    "POST", f"/{SERVICE}/Unary", [*headers, ("content-length", str(len(body)))]
                )
                r = await client.read_response()
                assert r.status == 200 and frames(r.body)[0] == [b"early %d" % requests[-1]]
                assert await client.stream.receive_some(1) == b""  # closed by the proxy
                assert len(requests) == 2
                assert proxy.stats.value("http.ingress_http.downstream_cx_total") == 1
                await client.aclose()
        nursery.cancel_scope.cancel()


def test_grpc_web_text_framing_round_trip() -> None:
    """The -text encoder splits the body at any byte, and a client decoding the padded base64
    strings it writes gets the frames back exactly; the decoder refuses what is not base64."""
    encoder = GrpcWebResponse(text=True)
    body = frame(b"a" * 10) + frame(b"bb")
    out = b"".join(encoder.encode_data(body[i : i + 4]) for i in range(0, len(body), 4))
    end, left = encoder.encode_end([(b"grpc-status", b"0"), (b"grpc-message", b"")])
    assert left == []
    decoder = TextRequestDecoder()
    plain = b"".join(decoder.decode(out[i : i + 5]) for i in range(0, len(out), 5)) + decoder.decode(end)
    assert plain == body + trailer_frame([(b"grpc-status", b"0"), (b"grpc-message", b"")])
    assert decoder.decode(b"") == b""
    with pytest.raises(ValueError):
        TextRequestDecoder().decode(b"****")
    bad = TextRequestDecoder()
    bad.decode(b"YWJ")
    with pytest.raises(ValueError):
        bad.decode(b"")  # ends inside a group


LUA_BODY = """          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h) h:headers():add("x-length", h:body():length()) end
"""


@pytest.mark.parametrize("lua_first", [True, False])
async def test_grpc_web_text_with_a_filter_reading_the_body(grpc_server: int, lua_first: bool) -> None:
    """A filter that reads the request body (Lua's ``body()``) before or after ``grpc_web``: the
    body it read is decoded from base64 either way before it goes upstream (read before the filter
    set its decoder: decoded then), so the call succeeds in both orders."""
    port = _free_port()
    text = config(port, grpc_server)
    anchor = (
        "          - name: envoy.filters.http.grpc_web\n"
        if lua_first
        else "          - name: envoy.filters.http.cors\n"
    )
    text = text.replace(anchor, LUA_BODY + anchor)
    async with running_proxy(load_config(text), None) as proxy:
        with trio.fail_after(LIMIT):
            client = Client(await trio.open_tcp_stream("127.0.0.1", port))
            r = await call(client, "Unary", b"in text", text=True)
            assert r.status == 200 and r.header("grpc-status") is None, (r.headers, r.body)
            decoder = TextRequestDecoder()
            messages, trailers = frames(decoder.decode(r.body) + decoder.decode(b""))
            assert messages == [b"echo:in text"] and trailers["grpc-status"] == "0"
            await client.aclose()
            assert proxy.stats.value("http.ingress_http.lua.errors") == 0
