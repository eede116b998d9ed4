"""gRPC through the proxy: a real ``grpcio`` client and server (kernel sockets, 127.0.0.1) with the
proxy between them, HTTP/2 on both legs (h2c prior knowledge from the client; the cluster's
``typed_extension_protocol_options`` ``explicit_http_config.http2_protocol_options`` to the server).

What must hold: a unary call and a server stream arrive whole; a gRPC error (status and message,
carried in trailers) reaches the client as the server set it; the proxy counts each call as an
HTTP/2 request.  Real time (grpcio runs its own threads); every call has a deadline.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs
import pytest
import trio
from proxy_helpers import bootstrap, cluster, hcm, http_listener, running_proxy

from trio_yastack.l7.config import HTTP_PROTOCOL_OPTIONS_TYPE

SERVICE = "trio_yastack.test.Echo"
LIMIT = 30.0


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield f"item {i}".encode() + b"." * 1000  # ~100 kB in all for 100 items


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
    raise AssertionError("abort raises")


@pytest.fixture
def grpc_server() -> Iterator[int]:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
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


def _config(proxy_port: int, grpc_port: int, *, deprecated: bool) -> Any:
    http2: dict[str, Any] = {"max_concurrent_streams": 100}
    if deprecated:
        extra: dict[str, Any] = {"http2_protocol_options": http2}
    else:
        extra = {
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                    "explicit_http_config": {"http2_protocol_options": http2},
                }
            }
        }
    return bootstrap(
        [http_listener(hcm(), address="127.0.0.1", port=proxy_port)],
        [cluster("app", [grpc_port], address="127.0.0.1", **extra)],
    )


def _calls(port: int) -> dict[str, Any]:
    """The three calls, made by a grpcio client (in a worker thread)."""
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")(b"hello", timeout=LIMIT)
        items = list(channel.unary_stream(f"/{SERVICE}/Stream")(b"100", timeout=LIMIT))
        try:
            channel.unary_unary(f"/{SERVICE}/Fail")(b"x", timeout=LIMIT)
            error: tuple[Any, str] | None = None
        except grpc.RpcError as exc:
            error = (exc.code(), exc.details())  # an RpcError is a grpc.Call too
    return {"unary": unary, "items": items, "error": error}


@pytest.mark.parametrize(
    "deprecated", [False, True], ids=["typed_extension_protocol_options", "cluster_level"]
)
async def test_grpc_through_the_proxy(grpc_server: int, deprecated: bool) -> None:
    port = _free_port()
    async with running_proxy(_config(port, grpc_server, deprecated=deprecated), None) as proxy:
        with trio.fail_after(LIMIT * 2):
            got = await trio.to_thread.run_sync(_calls, port)
        assert got["unary"] == b"echo:hello"
        assert [bytes(i).split(b".")[0] for i in got["items"]] == [f"item {i}".encode() for i in range(100)]
        assert got["error"] == (grpc.StatusCode.NOT_FOUND, "no such thing: x")
        assert proxy.stats.value("http.ingress.downstream_cx_http2_total") >= 1
        assert proxy.stats.value("http.ingress.downstream_rq_2xx") == 3  # gRPC errors are HTTP 200
        assert proxy.stats.value("cluster.app.upstream_rq_200") == 3
        assert proxy.stats.value("cluster.app.upstream_cx_total") == 1  # one shared connection
