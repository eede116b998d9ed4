"""Local replies to gRPC requests, as Envoy's ``Http::Utility::sendLocalReply`` makes them: HTTP 200,
``content-type: application/grpc``, ``grpc-status`` mapped from the HTTP status (Envoy's
``Grpc::Utility::httpToGrpcStatus``: 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, ...) or the
filter's own (local_ratelimit's ``rate_limited_as_resource_exhausted``: RESOURCE_EXHAUSTED), and
``grpc-message`` (the reply's body, percent-encoded), no body ("trailers-only").

A real ``grpcio`` client (h2c to the proxy, kernel sockets on 127.0.0.1, real time: grpcio runs its
own threads; every call has a deadline) reads the status and message; an HTTP/1.1 client reads the
exact head; a request that is not gRPC (gRPC-Web included) keeps the plain HTTP answer.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs
import h11
import pytest
import trio
import trio.testing
from proxy_helpers import (
    BackendApp,
    Client,
    bootstrap,
    cluster,
    connect,
    hcm,
    http_bootstrap,
    http_listener,
    route,
    running_proxy,
    start_backend,
)
from socket_helpers import two_stacks
from test_proxy_filters_ext_authz import HTTP_CONFIG, AuthzApp

from trio_yastack.l7.config import HTTP_PROTOCOL_OPTIONS_TYPE, ROUTER_TYPE, load_config
from trio_yastack.l7.local_reply import http_to_grpc_status, percent_encode

LIMIT = 30.0
RL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
RATELIMIT = "envoy.filters.http.local_ratelimit"


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


@pytest.fixture
def grpc_server() -> Iterator[int]:
    handlers = [
        grpc.method_handlers_generic_handler(name, {"Unary": grpc.unary_unary_rpc_method_handler(_unary)})
        for name in ("test.Exhausted", "test.Unavailable")
    ]
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(handlers)
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


def _one_token(exhausted: bool) -> dict[str, Any]:
    """A per-route local_ratelimit with one token for the whole test (refills after an hour)."""
    config: dict[str, Any] = {
        "@type": RL_TYPE,
        "stat_prefix": "rl",
        "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "3600s"},
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}},
    }
    if exhausted:
        config["rate_limited_as_resource_exhausted"] = True
    return config


def _config(proxy_port: int, grpc_port: int) -> Any:
    protocol = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    routes = [
        route("/test.Exhausted/", extra={"typed_per_filter_config": {RATELIMIT: _one_token(True)}}),
        route("/test.Unavailable/", extra={"typed_per_filter_config": {RATELIMIT: _one_token(False)}}),
        route("/test.Down/", "down"),
        # Envoy's router sends a direct_response with sendLocalReply: gRPC-formatted for gRPC
        route("/test.Direct/", direct={"status": 503, "body": {"inline_string": "down for maintenance"}}),
    ]
    manager = hcm(routes)
    manager["typed_config"]["http_filters"] = [
        {"name": RATELIMIT, "typed_config": {"@type": RL_TYPE, "stat_prefix": "rl"}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ]
    # nothing listens there: the connection fails (502 here, as the issue rules; Envoy says 503)
    down = cluster("down", [_free_port()], address="127.0.0.1", typed_extension_protocol_options=protocol)
    return bootstrap(
        [http_listener(manager, address="127.0.0.1", port=proxy_port)],
        [cluster("app", [grpc_port], address="127.0.0.1", typed_extension_protocol_options=protocol), down],
    )


def _grpc_calls(port: int) -> dict[str, Any]:
    """Each call twice where a bucket of one token refuses the second."""
    out: dict[str, Any] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        for name in ("test.Exhausted", "test.Unavailable", "test.Down", "test.NoRoute", "test.Direct"):
            results: list[Any] = []
            for _ in range(2):
                try:
                    results.append(channel.unary_unary(f"/{name}/Unary")(b"hi", timeout=LIMIT))
                except grpc.RpcError as exc:
                    results.append((exc.code(), exc.details()))
            out[name] = results
    return out


async def _http1(port: int, path: str, content_type: bytes) -> tuple[h11.Response, bytes]:
    """One HTTP/1.1 POST; the response's head and body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        headers = [(b"host", b"proxy.test"), (b"content-type", content_type), (b"content-length", b"2")]
        data = conn.send(h11.Request(method="POST", target=path, headers=headers))
        data += conn.send(h11.Data(data=b"hi")) + conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        response: h11.Response | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, body


async def test_grpc_local_replies(grpc_server: int) -> None:
    port = _free_port()
    async with running_proxy(_config(port, grpc_server), None) as proxy:
        with trio.fail_after(LIMIT * 2):
            got = await trio.to_thread.run_sync(_grpc_calls, port)
            assert got["test.Exhausted"] == [
                b"echo:hi",
                (grpc.StatusCode.RESOURCE_EXHAUSTED, "local_rate_limited"),
            ]
            assert got["test.Unavailable"] == [
                b"echo:hi",
                (grpc.StatusCode.UNAVAILABLE, "local_rate_limited"),
            ]
            failed = (
                "upstream connect error or disconnect/reset before headers. reset reason: "
                + "connection failure"
            )
            assert got["test.Down"] == [(grpc.StatusCode.UNAVAILABLE, failed)] * 2
            # no route: an empty body, so no grpc-message
            assert got["test.NoRoute"] == [(grpc.StatusCode.UNIMPLEMENTED, "")] * 2
            # a direct_response: its status mapped (503: UNAVAILABLE), its body the message
            assert got["test.Direct"] == [(grpc.StatusCode.UNAVAILABLE, "down for maintenance")] * 2
            assert proxy.stats.value("http.ingress.rq_direct_response") == 2
            # gRPC errors are HTTP 200 answers, as in Envoy
            assert proxy.stats.value("http.ingress.downstream_rq_2xx") == 10
            assert proxy.stats.value("http.ingress.downstream_rq_4xx") == 0
            assert proxy.stats.value("http.ingress.downstream_rq_5xx") == 0

            # the exact head over HTTP/1.1: trailers-only, grpc-status, the body as grpc-message
            response, body = await _http1(port, "/test.Exhausted/Unary", b"application/grpc+proto")
            assert response.status_code == 200 and body == b""
            assert sorted(response.headers) == sorted(
                [
                    (b"content-length", b"0"),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-message", b"local_rate_limited"),
                    (b"grpc-status", b"8"),
                    (b"x-envoy-ratelimited", b"true"),
                ]
            )
            # not gRPC (gRPC-Web is not): the plain HTTP answer
            for content_type in (b"application/grpc-web", b"text/plain"):
                response, body = await _http1(port, "/test.Unavailable/Unary", content_type)
                assert response.status_code == 429 and body == b"local_rate_limited\n"
                assert (b"grpc-status", b"14") not in response.headers
            # the direct response's exact head; to any other request its status and body as configured
            response, body = await _http1(port, "/test.Direct/Unary", b"application/grpc")
            assert response.status_code == 200 and body == b""
            assert sorted(response.headers) == [
                (b"content-length", b"0"),
                (b"content-type", b"application/grpc"),
                (b"grpc-message", b"down for maintenance"),
                (b"grpc-status", b"14"),
            ]
            response, body = await _http1(port, "/test.Direct/Unary", b"application/grpc-web")
            assert (response.status_code, body) == (503, b"down for maintenance")
            assert (b"grpc-status", b"14") not in response.headers


def test_grpc_status_mapping_and_message_encoding() -> None:
    # Envoy's Grpc::Utility::httpToGrpcStatus
    assert [http_to_grpc_status(s) for s in (400, 401, 403, 404, 429, 502, 503, 504, 500, 408)] == [
        13, 16, 7, 12, 14, 14, 14, 14, 2, 2,
    ]  # fmt: skip
    # Envoy's PercentEncoding::encode: below 0x20, from 0x7E up, and "%"
    assert percent_encode("no healthy upstream") == b"no healthy upstream"
    assert percent_encode("100% ~ ok\n") == b"100%25 %7E ok%0A"
    assert percent_encode("h\u00e9") == b"h%C3%A9"


async def test_ext_authz_denial_to_a_grpc_request(autojump_clock: trio.testing.MockClock) -> None:
    """ext_authz's denial is a local reply in Envoy (``sendLocalReply``): to a gRPC request it goes
    gRPC-formatted, the service's status mapped (401: UNAUTHENTICATED), its body the message, its
    headers kept; to any other request as the service wrote it."""
    app, authz = BackendApp("app"), AuthzApp()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, authz, b, 8091)]
        async with running_proxy(load_config(HTTP_CONFIG), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                grpc_request = [("authorization", "Bearer bad"), ("content-type", "application/grpc")]
                r = await client.request("POST", "/svc/Call", grpc_request, body=b"\0\0\0\0\0")
                assert r.status == 200 and r.body == b""
                names = [k for k, _ in r.headers]
                assert names.count(b"content-type") == 1 and names.count(b"content-length") == 1
                assert (r.header("content-type"), r.header("content-length")) == ("application/grpc", "0")
                assert (r.header("grpc-status"), r.header("grpc-message")) == (
                    "16",
                    '{"error": "who are you"}',
                )
                # the service's own headers (its date and server too, as without gRPC)
                assert (
                    r.header("www-authenticate") == 'Basic realm="edge"'
                    and r.header("x-denied-by") == "authz"
                )
                r = await client.request("POST", "/svc/Call", [("authorization", "Bearer bad")], body=b"x")
                assert r.status == 401 and r.body == b'{"error": "who are you"}'
                await client.aclose()
        for backend in backends:
            backend.stop()


async def test_grpc_local_reply_over_h2_has_no_content_length(autojump_clock: trio.testing.MockClock) -> None:
    """On HTTP/2 a gRPC local reply is one HEADERS frame ending the stream, without
    ``content-length`` (Envoy's trailers-only answer has none; END_STREAM frames the empty body),
    for a direct response and for no route alike; a bodyless answer that is not gRPC keeps its
    ``content-length: 0``."""
    from test_proxy_h2 import h2_proxy  # (its H2 client; imported here: that module imports much)

    routes = [route("/svc.Maint/", direct={"status": 503, "body": {"inline_string": "maintenance"}})]
    grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")]
    async with h2_proxy(http_bootstrap([cluster("app", [8081])], routes), BackendApp("app")) as run:
        client = run.client
        maint = await client.request("POST", "/svc.Maint/Call", body=b"\0\0\0\0\0", headers=grpc_headers)
        lost = await client.request("POST", "/nowhere/Call", body=b"\0\0\0\0\0", headers=grpc_headers)
        plain = await client.request("GET", "/nowhere")
        got = await client.wait(maint)
        assert got.ended and got.body == b"" and got.trailers is None and got.headers is not None
        assert sorted(k for k, _ in got.headers if k not in (b"date", b"server")) == [
            b":status", b"content-type", b"grpc-message", b"grpc-status",
        ]  # fmt: skip
        fields = dict(got.headers)
        assert (fields[b":status"], fields[b"grpc-status"], fields[b"grpc-message"]) == (
            b"200", b"14", b"maintenance",
        )  # fmt: skip
        got = await client.wait(lost)
        assert got.ended and got.body == b"" and got.headers is not None
        fields = dict(got.headers)
        assert b"content-length" not in fields and fields[b"grpc-status"] == b"12"
        got = await client.wait(plain)
        assert got.status == 404 and dict(got.headers or [])[b"content-length"] == b"0"
        await client.stream.aclose()


_MAPPED_AUTHZ = HTTP_CONFIG.replace(
    "          stat_prefix: ingress\n",
    """          stat_prefix: ingress
          local_reply_config:
            mappers:
            - filter:
                header_filter: {header: {name: x-tenant, string_match: {exact: mapped}}}
              status_code: 403
              body: {inline_string: "not for you"}
              headers_to_add:
              - header: {key: x-mapped, value: "1"}
""",
    1,
)


async def test_local_reply_config_maps_ext_authz_denials(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy applies ``local_reply_config`` to every local reply, ext_authz's denial included: a
    mapper that matches sets its status, body and headers (the service's headers kept, its JSON
    content type replaced: the body is not the service's now); one that does not match leaves the
    service's answer exactly as it was; to a gRPC request the mapped status is
    the one gRPC's status comes from (403: PERMISSION_DENIED)."""
    app, authz = BackendApp("app"), AuthzApp()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, authz, b, 8091)]
        async with running_proxy(load_config(_MAPPED_AUTHZ), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                bad = ("authorization", "Bearer bad")
                r = await client.request("POST", "/svc", [bad, ("x-tenant", "mapped")], body=b"x")
                assert (r.status, r.body) == (403, b"not for you")  # (as Envoy: no newline added)
                assert r.header("x-mapped") == "1" and r.header("x-denied-by") == "authz"
                assert [v for k, v in r.headers if k == b"content-type"] == [b"text/plain"]
                r = await client.request("POST", "/svc", [bad, ("x-tenant", "other")], body=b"x")
                assert (r.status, r.body) == (401, b'{"error": "who are you"}')
                assert r.header("x-mapped") is None
                assert [v for k, v in r.headers if k == b"content-type"] == [b"application/json"]
                grpc_request = [bad, ("x-tenant", "mapped"), ("content-type", "application/grpc")]
                r = await client.request("POST", "/svc/Call", grpc_request, body=b"\0\0\0\0\0")
                assert (r.status, r.body) == (200, b"")
                assert (r.header("grpc-status"), r.header("grpc-message")) == ("7", "not for you")
                assert r.header("x-mapped") == "1" and r.header("content-type") == "application/grpc"
                assert proxy.stats.value("http.ingress.ext_authz.denied") == 3
                await client.aclose()
        for backend in backends:
            backend.stop()
