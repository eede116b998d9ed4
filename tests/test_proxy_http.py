"""The HTTP proxy end to end: clients, the proxy and hypercorn backends in one trio run.

Most tests run on the in-process simulator (``socket_helpers.two_stacks`` under trio's MockClock,
the ``autojump_clock`` fixture): the proxy listens on stack A (198.18.0.2:10000), the backends
and the clients live on stack B (198.18.0.1), so timeouts, health check intervals and ejection
times are simulated seconds.  The admin endpoint's HTTP test uses kernel sockets on 127.0.0.1 in
real time.  What a backend saw comes from :class:`proxy_helpers.BackendApp`; what the proxy
decided, from its counters (``proxy.stats``), named as Envoy names them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import socket as stdlib_socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import h11
import hypercorn.trio
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from proxy_helpers import (
    B_IP,
    BackendApp,
    Client,
    Response,
    bootstrap,
    cluster,
    connect,
    hcm,
    http_bootstrap,
    http_listener,
    pattern_sha256,
    raw_server,
    read_response,
    read_to_eof,
    route,
    running_backend,
    running_proxy,
    start_backend,
    wait_until,
)
from socket_helpers import two_stacks
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from trio_yastack import Stack
from trio_yastack.l7.admin import AdminServer
from trio_yastack.l7.config import Bootstrap
from trio_yastack.l7.http_proxy import ProxyLimits
from trio_yastack.l7.network import Network
from trio_yastack.l7.proxy import Proxy

#: simulated seconds any one test may take before it counts as hung
LIMIT = 300
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
HC = {"timeout": "0.5s", "interval": "1s", "unhealthy_threshold": 3, "healthy_threshold": 2}


def health_check(**overrides: Any) -> list[dict[str, Any]]:
    return [HC | {"http_health_check": {"path": "/healthz"}} | overrides]


@asynccontextmanager
async def setup(
    config: Bootstrap,
    *apps: tuple[BackendApp, int],
    limits: ProxyLimits | None = None,
    hosts: dict[str, str] | None = None,
    **backend_config: Any,
) -> AsyncIterator[tuple[Stack, Stack, Proxy]]:
    """Two stacks, a backend per ``(app, port)`` on B, the proxy on A: ``(a, b, proxy)``
    (``hosts``: names stack A's resolver knows)."""
    async with two_stacks(hosts=hosts) as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, port, **backend_config) for app, port in apps]
        async with running_proxy(config, a, limits=limits) as proxy:
            with trio.fail_after(LIMIT):
                yield a, b, proxy
        for backend in backends:
            backend.stop()


async def get(b: Stack, target: str, headers: list[tuple[str, str]] | None = None, **kw: Any) -> Response:
    """One request on a fresh connection."""
    client = Client(await connect(b))
    try:
        return await client.request("GET", target, headers or [], **kw)
    finally:
        await client.aclose()


def seen_headers(response: Response) -> dict[str, list[str]]:
    """The request headers the backend reported (the default JSON answer)."""
    out: dict[str, list[str]] = {}
    for key, value in response.json()["headers"]:
        out.setdefault(key, []).append(value)
    return out


# --- what crosses the proxy ------------------------------------------------------------------


async def test_forwarding_headers_and_hop_by_hop_removal(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        client = Client(await connect(b))
        response = await client.request(
            "GET",
            "/headers?x=1",
            [
                ("connection", "keep-alive, X-Secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("proxy-authorization", "Basic eA=="),
                ("te", "trailers"),
                ("trailer", "x-checksum"),
                ("upgrade", "h2c"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "https"),  # the proxy says what it saw
                ("via", "1.0 fred"),
                ("x-request-id", "abc-123"),
                ("user-agent", "test/1"),
            ],
        )
        assert response.status == 200
        document = response.json()
        assert document["path"] == "/headers?x=1"
        seen = seen_headers(response)
        for name in (
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "upgrade",
        ):
            assert name not in seen, name
        assert seen["host"] == ["proxy.test"]
        assert seen["x-forwarded-for"] == ["10.0.0.1, 198.18.0.1"]
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["via"] == ["1.0 fred, 1.1 trio_yastack"]
        assert seen["x-request-id"] == ["abc-123"]
        assert seen["user-agent"] == ["test/1"]
        assert re.fullmatch(r"\d+", response.header("x-envoy-upstream-service-time") or "")
        # without one, each request gets its own UUID4 request id
        ids = []
        for _ in range(2):
            response = await client.request("GET", "/headers")
            seen = seen_headers(response)
            assert seen["x-forwarded-for"] == ["198.18.0.1"]
            assert seen["via"] == ["1.1 trio_yastack"]
            (request_id,) = seen["x-request-id"]
            assert UUID4.fullmatch(request_id)
            ids.append(request_id)
        assert ids[0] != ids[1]
        await client.aclose()
        assert proxy.stats.value("http.ingress.downstream_rq_2xx") == 3
        assert proxy.stats.value("cluster.app.upstream_rq_200") == 3


async def raw_http_backend(responses: list[bytes], stream: trio.SocketStream) -> None:
    """Answer each request (no body) with the next of ``responses``; close after the last."""
    buffer = b""
    for answer in responses:
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
        buffer = buffer.partition(b"\r\n\r\n")[2]
        await stream.send_all(answer)


async def test_response_hop_by_hop_removal_and_close_delimited_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Backend-Secret\r\n"
        b"X-Backend-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Kept: yes\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Second: 1\r\n\r\nread until the upstream closes",  # no framing: to EOF
    ]
    config = http_bootstrap([cluster("app", [8081])])
    async with (
        two_stacks() as (a, b),
        raw_server(b, 8081, partial(raw_http_backend, responses)),
        running_proxy(config, a) as proxy,
    ):
        with trio.fail_after(LIMIT):
            client = Client(await connect(b))
            first = await client.request("GET", "/one")
            assert (first.status, first.body, first.header("x-kept")) == (200, b"ok", "yes")
            for name in ("connection", "x-backend-secret", "keep-alive", "proxy-authenticate"):
                assert first.header(name) is None, name
            second = await client.request("GET", "/two")
            assert (second.status, second.body) == (200, b"read until the upstream closes")
            assert second.header("transfer-encoding") == "chunked"  # re-framed for the client
            await client.aclose()
            assert proxy.stats.value("cluster.app.upstream_cx_total") == 1


async def test_response_carries_via(autojump_clock: trio.testing.MockClock) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: http_proxy.py _upstream_request (~line 521) appends via to requests only;
    # _relay_response (~line 786) never adds one to responses, although RFC 9110 7.6.3 says a
    # proxy MUST send Via in each message it forwards (and Envoy's `via` option does both).
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        response = await get(b, "/x")
        assert response.status == 200
        assert response.header("via") is not None and "1.1 trio_yastack" in response.header("via")


async def test_routing_rewrites_and_header_options(autojump_clock: trio.testing.MockClock) -> None:
    app, canary = BackendApp("app"), BackendApp("canary")
    vhosts = [
        {
            "name": "api",
            "domains": ["api.example"],
            "routes": [
                route(path="/exact", direct={"status": 200, "body": {"inline_string": "exact\n"}}),
                route(
                    "/v1/",
                    "canary",
                    headers=[{"name": "x-canary", "string_match": {"exact": "1"}}],
                    prefix_rewrite="/",
                    host_rewrite_literal="canary.internal",
                    extra={
                        "request_headers_to_add": [
                            {
                                "header": {"key": "x-route", "value": "canary"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            },
                            {"header": {"key": "x-added", "value": "1"}},
                        ],
                        "request_headers_to_remove": ["x-debug"],
                    },
                ),
                route("/v1/", "app"),
            ],
        },
        {
            "name": "wild",
            "domains": ["*.example"],
            "routes": [route(direct={"status": 200, "body": {"inline_string": "wild"}})],
        },
        {
            "name": "any",
            "domains": ["*"],
            "routes": [route(direct={"status": 200, "body": {"inline_string": "any"}})],
        },
    ]
    config = http_bootstrap([cluster("app", [8081]), cluster("canary", [8082])], virtual_hosts=vhosts)
    async with setup(config, (app, 8081), (canary, 8082)) as (_, b, proxy):
        client = Client(await connect(b))

        async def ask(target: str, host: str, headers: list[tuple[str, str]] | None = None) -> Response:
            return await client.request("GET", target, headers or [], host=host)

        assert (await ask("/exact", "api.example")).body == b"exact\n"
        assert (await ask("/exact?q=1", "API.Example")).body == b"exact\n"
        response = await ask(
            "/v1/users?id=7", "api.example", [("x-canary", "1"), ("x-debug", "yes"), ("x-route", "client")]
        )
        assert response.json()["backend"] == "canary"
        assert response.json()["path"] == "/users?id=7"
        seen = seen_headers(response)
        assert seen["host"] == ["canary.internal"]
        assert seen["x-envoy-original-path"] == ["/v1/users?id=7"]
        assert seen["x-route"] == ["canary"]
        assert seen["x-added"] == ["1"]
        assert "x-debug" not in seen
        response = await ask("/v1/users", "api.example", [("x-canary", "2"), ("x-debug", "yes")])
        assert response.json()["backend"] == "app"
        assert response.json()["path"] == "/v1/users"
        seen = seen_headers(response)
        assert seen["host"] == ["api.example"] and seen["x-debug"] == ["yes"]
        assert "x-envoy-original-path" not in seen and "x-added" not in seen
        # a virtual host's miss is a 404: no falling back to other virtual hosts
        response = await get(b, "/other", host="api.example")
        assert response.status == 404
        assert (await ask("/", "www.example")).body == b"wild"
        assert (await ask("/", "www.example:8080")).body == b"any"
        await client.aclose()
        assert proxy.stats.value("http.ingress.no_route") == 1
        assert proxy.stats.value("http.ingress.rq_direct_response") == 4
        assert proxy.stats.value("http.ingress.downstream_rq_4xx") == 1
        assert [s.path for s in canary.seen] == ["/users?id=7"]


@pytest.mark.parametrize("case", ["no-route-404", "route-timeout-504", "connect-failure-502"])
async def test_local_reply_after_a_first_response_on_the_connection(
    autojump_clock: trio.testing.MockClock, case: str
) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: _Downstream.response_started (http_proxy.py ~line 107) is set by the first response
    # (~lines 403, 461, 792) and never reset for the next request on a keep-alive connection, so
    # _serve_one's `if ds.response_started: return False  # too late to answer` (~line 369)
    # drops every later local reply (404, 408, 413, 502, 503, 504): the client sees the
    # connection close with no response.
    app = BackendApp("one")
    routes = [route("/ok"), route("/slow", timeout="1s"), route("/dead", "dead")]
    config = http_bootstrap([cluster("app", [8081]), cluster("dead", [8089])], routes)
    async with setup(config, (app, 8081)) as (_, b, _proxy):
        client = Client(await connect(b))
        assert (await client.request("GET", "/ok")).status == 200
        target, status = {
            "no-route-404": ("/nowhere", 404),
            "route-timeout-504": ("/slow?delay=5", 504),
            "connect-failure-502": ("/dead", 502),
        }[case]
        assert (await client.request("GET", target)).status == status
        await client.aclose()


async def test_direct_response_head_and_body_drained(autojump_clock: trio.testing.MockClock) -> None:
    routes = [route(direct={"status": 418, "body": {"inline_string": "short and stout"}})]
    async with setup(http_bootstrap([cluster("app", [8081])], routes)) as (_, b, _proxy):
        client = Client(await connect(b))
        head = await client.request("HEAD", "/teapot")
        assert (head.status, head.body, head.header("content-length")) == (418, b"", "15")
        posted = await client.request("POST", "/teapot", body=b"x" * 100_000)  # read and dropped
        assert (posted.status, posted.body) == (418, b"short and stout")
        again = await client.request("GET", "/teapot")  # the same connection still works
        assert again.body == b"short and stout"
        await client.aclose()


async def test_head_through_the_proxy_keeps_framing(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        client = Client(await connect(b))
        head = await client.request("HEAD", "/stream?bytes=1000")
        assert (head.status, head.body, head.header("content-length")) == (200, b"", "1000")
        response = await client.request("GET", "/stream?bytes=1000")
        assert response.body == b"".join([bytes(range(256)) * 4])[:1000]
        await client.aclose()


async def test_keep_alive_reuses_upstream_connections(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        for _ in range(3):
            client = Client(await connect(b))
            for i in range(10):
                assert (await client.request("GET", f"/r{i}")).status == 200
            await client.aclose()
        assert len(app.seen) == 30
        assert proxy.stats.value("cluster.app.upstream_cx_total") == 1
        assert proxy.stats.value("http.ingress.downstream_cx_total") == 3


async def test_pipelined_requests_answered_in_order(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        stream = await connect(b)
        await stream.send_all(
            b"GET /first HTTP/1.1\r\nHost: p\r\n\r\n"
            b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /third HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
        conn = h11.Connection(h11.CLIENT)  # parses the three responses as if it had sent the requests
        bodies: list[bytes] = []
        body = b""
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "p")]))
        conn.send(h11.EndOfMessage())
        while len(bodies) < 3:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                body = b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                bodies.append(body)
                if len(bodies) < 3:
                    conn.start_next_cycle()
                    conn.send(h11.Request(method="GET", target="/", headers=[("host", "p")]))
                    conn.send(h11.EndOfMessage())
        assert json.loads(bodies[0])["path"] == "/first"
        assert json.loads(bodies[1])["sha256"] == hashlib.sha256(b"hello").hexdigest()
        assert json.loads(bodies[2])["path"] == "/third"
        assert await read_to_eof(stream) == b""  # "connection: close" honoured
        await stream.aclose()


async def test_http10_client(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        stream = await connect(b)
        await stream.send_all(b"GET /old HTTP/1.0\r\nHost: p\r\n\r\n")
        raw = await read_to_eof(stream)  # HTTP/1.0 without keep-alive: the proxy closes after
        await stream.aclose()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body)["path"] == "/old"
        assert app.seen[0].header("via") == "1.1 trio_yastack"


async def test_http10_request_without_host_is_answered(autojump_clock: trio.testing.MockClock) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: Host is optional in HTTP/1.0; _upstream_request (http_proxy.py ~line 528) builds an
    # h11.Request with no Host for it, h11 raises LocalProtocolError("Missing mandatory Host"),
    # nothing catches it, and ListenerRuntime._handle's catch-all drops the connection with a
    # traceback (downstream_cx_handler_error).  Envoy answers (426 by default, or forwards).
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        await stream.send_all(b"GET /old HTTP/1.0\r\n\r\n")
        raw = await read_to_eof(stream)
        await stream.aclose()
        assert proxy.stats.value("listener.198.18.0.2_10000.downstream_cx_handler_error") == 0
        assert raw.startswith(b"HTTP/1.1 ")


async def test_absolute_form_target(autojump_clock: trio.testing.MockClock) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: RFC 9112 3.2.2: a server MUST accept the absolute-form ("GET http://host/path"), and
    # its host replaces the Host header; Router.route (router.py ~line 141) matches the prefix
    # against the whole target, so "/" never matches and the request is a 404 (Envoy's HTTP/1
    # codec turns it into :path "/path" and :authority "host").
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        stream = await connect(b)
        await stream.send_all(b"GET http://proxy.test/abs?q=1 HTTP/1.1\r\nHost: ignored.test\r\n\r\n")
        response = await read_response(stream)
        await stream.aclose()
        assert response is not None and response.status == 200
        assert response.json()["path"] == "/abs?q=1"
        assert seen_headers(response)["host"] == ["proxy.test"]


async def test_stale_pooled_connection_is_replaced_transparently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The backend closes idle keep-alive connections after 0.5 s, before the pool watches them
    (1 s): a request that lands on such a connection is sent again on a fresh one."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with setup(config, (app, 8081), keep_alive_timeout=0.5) as (_, b, proxy):
        client = Client(await connect(b))
        for _ in range(5):
            assert (await client.request("GET", "/")).status == 200
            await trio.sleep(0.7)
        await client.aclose()
        assert len(app.seen) == 5
        assert proxy.stats.value("cluster.app.upstream_cx_destroy_remote_with_active_rq") >= 1
        assert proxy.stats.value("http.ingress.downstream_rq_5xx") == 0


async def test_strict_dns_cluster(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("named")
    clusters = [cluster("app", [8081], address="backend.test", type="STRICT_DNS")]
    async with setup(http_bootstrap(clusters), (app, 8081), hosts={"backend.test": B_IP}) as (_, b, proxy):
        host = proxy.clusters["app"].hosts[0]
        assert (host.address, host.port, host.hostname) == (B_IP, 8081, "backend.test")
        assert (await get(b, "/")).json()["backend"] == "named"
        assert "app::198.18.0.1:8081::hostname::backend.test" in proxy.clusters.render_clusters().splitlines()


async def test_many_concurrent_clients(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    app.delay = 0.5
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        results: list[int] = []

        async def one_client(i: int) -> None:
            client = Client(await connect(b))
            for j in range(3):
                response = await client.request("GET", f"/c{i}/{j}")
                assert response.json()["path"] == f"/c{i}/{j}"
                results.append(response.status)
            await client.aclose()

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one_client, i)
        assert results == [200] * 120
        assert app.max_in_flight == 40  # really concurrent
        assert proxy.stats.value("cluster.app.upstream_cx_total") == 40  # then reused, not remade
        assert proxy.stats.value("cluster.app.upstream_rq_total") == 120


# --- failures and what the client gets -------------------------------------------------------

RETRY_ALL = {"retry_on": "connect-failure,reset,5xx", "num_retries": 3}


async def test_retries_hide_a_killed_backend(autojump_clock: trio.testing.MockClock) -> None:
    one, two = BackendApp("one"), BackendApp("two")
    config = http_bootstrap([cluster("app", [8081, 8082])], [route(retry_policy=RETRY_ALL)])
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend_one = await start_backend(nursery, one, b, 8081)
        backend_two = await start_backend(nursery, two, b, 8082)
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                for _ in range(4):  # both hosts get pooled connections
                    assert (await client.request("GET", "/")).status == 200
                assert {
                    r.json()["backend"] for r in [await client.request("GET", "/") for _ in range(2)]
                } == {
                    "one",
                    "two",
                }
                await backend_two.stop_and_wait()
                statuses = Counter()
                for _ in range(20):
                    response = await client.request("GET", "/")
                    statuses[(response.status, response.json()["backend"])] += 1
                await client.aclose()
                assert statuses == {(200, "one"): 20}
                assert proxy.stats.value("cluster.app.upstream_rq_retry") > 0
                assert proxy.stats.value("http.ingress.downstream_rq_5xx") == 0
        backend_one.stop()


async def test_retry_on_5xx_and_the_last_answer_relayed(autojump_clock: trio.testing.MockClock) -> None:
    bad, good, worse = BackendApp("bad"), BackendApp("good"), BackendApp("worse")
    bad.force_status = worse.force_status = 503
    routes = [
        route("/mixed", "mixed", retry_policy={"retry_on": "5xx", "num_retries": 2}),
        route("/all-bad", "allbad", retry_policy={"retry_on": "gateway-error", "num_retries": 1}),
    ]
    config = http_bootstrap([cluster("mixed", [8081, 8082]), cluster("allbad", [8083])], routes)
    async with setup(config, (bad, 8081), (good, 8082), (worse, 8083)) as (_, b, proxy):
        for _ in range(6):
            response = await get(b, "/mixed")
            assert (response.status, response.json()["backend"]) == (200, "good")
        # each request that met "bad" was retried (on "good"), and only those
        assert proxy.stats.value("cluster.mixed.upstream_rq_retry") == len(bad.seen) >= 1
        assert proxy.stats.value("cluster.mixed.upstream_rq_retry_success") == len(bad.seen)
        assert len(good.seen) == 6
        response = await get(b, "/all-bad")
        assert (response.status, response.body) == (503, b"worse 503")  # the upstream's own answer
        assert len(worse.seen) == 2
        assert proxy.stats.value("cluster.allbad.upstream_rq_retry") == 1


async def test_retry_circuit_breaker(autojump_clock: trio.testing.MockClock) -> None:
    bad, good = BackendApp("bad"), BackendApp("good")
    bad.force_status = 503
    breakers = {"thresholds": [{"max_retries": 0}]}
    config = http_bootstrap(
        [cluster("app", [8082, 8081], circuit_breakers=breakers)], [route(retry_policy={"retry_on": "5xx"})]
    )
    async with setup(config, (bad, 8081), (good, 8082)) as (_, b, proxy):
        response = await get(b, "/")  # round robin: "bad" first
        assert (response.status, response.body) == (503, b"bad 503")  # no retry allowed
        assert proxy.stats.value("cluster.app.upstream_rq_retry_overflow") == 1
        assert proxy.stats.value("cluster.app.upstream_rq_retry") == 0
        assert good.seen == []


async def reset_after_request(stream: trio.SocketStream) -> None:
    """Read a request head, then drop the connection without a response."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return
        buffer += data


async def test_upstream_reset_before_response_is_502(autojump_clock: trio.testing.MockClock) -> None:
    config = http_bootstrap([cluster("app", [8081])])
    async with (
        two_stacks() as (a, b),
        raw_server(b, 8081, reset_after_request),
        running_proxy(config, a) as proxy,
    ):
        with trio.fail_after(LIMIT):
            response = await get(b, "/")
            assert response.status == 502
            assert b"reset" in response.body
            assert proxy.stats.value("cluster.app.upstream_rq_rx_reset") == 1
            assert proxy.stats.value("http.ingress.downstream_rq_5xx") == 1


async def test_retry_replays_the_request_body_after_a_reset(autojump_clock: trio.testing.MockClock) -> None:
    good = BackendApp("good")
    config = http_bootstrap([cluster("app", [8081, 8082])], [route(retry_policy={"retry_on": "reset"})])
    body = bytes(random.Random(3).randbytes(20_000))
    async with (
        two_stacks() as (a, b),
        raw_server(b, 8082, reset_after_request),
        trio.open_nursery() as nursery,
    ):
        backend = await start_backend(nursery, good, b, 8081)
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                for _ in range(2):  # one of the two goes to the resetting host first
                    client = Client(await connect(b))
                    response = await client.request("POST", "/upload", body=body)
                    await client.aclose()
                    assert response.status == 200
                    assert response.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
                assert 1 <= proxy.stats.value("cluster.app.upstream_rq_retry") <= 2
                assert len(good.seen) == 2
        backend.stop()


async def test_connect_refused_is_502(autojump_clock: trio.testing.MockClock) -> None:
    config = http_bootstrap([cluster("app", [8089])])  # nothing listens there
    async with setup(config) as (_, b, proxy):
        response = await get(b, "/")
        assert response.status == 502
        assert b"connection failure" in response.body
        assert proxy.stats.value("cluster.app.upstream_cx_connect_fail") == 1


async def test_connect_timeout_is_502(autojump_clock: trio.testing.MockClock) -> None:
    config = http_bootstrap([cluster("app", [8080], address="198.18.0.99")])  # no such host
    async with setup(config) as (_, b, proxy):
        started = trio.current_time()
        response = await get(b, "/")
        assert response.status == 502
        assert trio.current_time() - started <= 1.5  # connect_timeout 1s
        assert proxy.stats.value("cluster.app.upstream_cx_connect_fail") == 1


async def test_route_timeout_is_504(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], [route(timeout="1s")])
    async with setup(config, (app, 8081)) as (_, b, proxy):
        client = Client(await connect(b))
        started = trio.current_time()
        response = await client.request("GET", "/slow?delay=5")
        assert (response.status, response.body) == (504, b"upstream request timeout\n")
        assert 1.0 <= trio.current_time() - started < 1.2
        assert proxy.stats.value("cluster.app.upstream_rq_timeout") == 1
        assert (await client.request("GET", "/")).status == 200  # the client connection lives on
        await client.aclose()


async def test_route_timeout_during_the_response_body_resets_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], [route(timeout="1s")])
    async with setup(config, (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        await stream.send_all(b"GET /stream?bytes=300000&interval=0.5 HTTP/1.1\r\nHost: p\r\n\r\n")
        started = trio.current_time()
        received = await read_to_eof(stream)  # too late for a 504: the stream is cut
        await stream.aclose()
        assert received.startswith(b"HTTP/1.1 200 ")
        assert len(received) < 300_000
        assert 1.0 <= trio.current_time() - started < 1.1
        assert proxy.stats.value("cluster.app.upstream_rq_timeout") == 1


async def test_request_timeout_covers_a_slow_body(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], request_timeout="2s")
    async with setup(config, (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        started = trio.current_time()
        await stream.send_all(b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\nhalf")
        response = await read_response(stream)
        await stream.aclose()
        assert response is not None and response.status == 408
        assert 2.0 <= trio.current_time() - started < 2.1
        assert app.uploads_completed == 0
        assert proxy.stats.value("http.ingress.downstream_rq_timeout") == 1


async def test_per_try_timeout_retries_then_succeeds(autojump_clock: trio.testing.MockClock) -> None:
    slow, fast = BackendApp("slow"), BackendApp("fast")
    slow.delay = 3.0
    policy = {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.5s"}
    config = http_bootstrap([cluster("app", [8081, 8082])], [route(timeout="5s", retry_policy=policy)])
    async with setup(config, (slow, 8081), (fast, 8082)) as (_, b, proxy):
        for _ in range(4):
            started = trio.current_time()
            response = await get(b, "/")
            assert (response.status, response.json()["backend"]) == (200, "fast")
            assert trio.current_time() - started < 1.0  # one per-try timeout and a back-off at most
        assert proxy.stats.value("cluster.app.upstream_rq_per_try_timeout") == len(slow.seen) >= 1
        assert proxy.stats.value("cluster.app.upstream_rq_retry") == len(slow.seen)
        assert len(fast.seen) == 4


async def test_stream_idle_timeout_after_the_response_started(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], [route(timeout="0s")], stream_idle_timeout="1s")
    async with setup(config, (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        await stream.send_all(b"GET /stream?bytes=200000&interval=3 HTTP/1.1\r\nHost: p\r\n\r\n")
        started = trio.current_time()
        received = await read_to_eof(stream)  # the proxy resets the stream
        assert received.startswith(b"HTTP/1.1 200 ")
        assert len(received) < 200_000
        assert trio.current_time() - started < 2.0
        assert proxy.stats.value("http.ingress.downstream_rq_idle_timeout") == 1


async def test_stream_idle_timeout_before_the_response_is_408(autojump_clock: trio.testing.MockClock) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: the module docstring (and Envoy) say stream_idle_timeout ends a request with 408 when
    # no response has started; http_proxy.py _attempt (~line 695-700) files the idle deadline
    # under attempt.failure = "timeout", so _failure_reply makes it a 504 "upstream request
    # timeout" counted as cluster upstream_rq_timeout, not downstream_rq_idle_timeout.
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], [route(timeout="0s")], stream_idle_timeout="1s")
    async with setup(config, (app, 8081)) as (_, b, proxy):
        response = await get(b, "/slow?delay=5")
        assert response.status == 408
        assert proxy.stats.value("http.ingress.downstream_rq_idle_timeout") == 1


async def test_connection_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], common_http_protocol_options={"idle_timeout": "2s"})
    async with setup(config, (app, 8081)) as (_, b, proxy):
        client = Client(await connect(b))
        assert (await client.request("GET", "/")).status == 200
        finished = trio.current_time()
        assert await read_to_eof(client.stream) == b""
        assert 2.0 <= trio.current_time() - finished < 2.1
        assert proxy.stats.value("http.ingress.downstream_cx_idle_timeout") == 1
        await client.aclose()


async def test_slowloris_gets_408_while_others_are_served(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], request_timeout="2s")
    async with setup(config, (app, 8081)) as (_, b, proxy):
        slow = await connect(b)
        replies: list[tuple[float, Response | None]] = []
        replied = trio.Event()

        async def slowloris() -> None:
            """A header block dripped a byte every 0.3 s, until the proxy answers."""
            await slow.send_all(b"GET / HTTP/1.1\r\nHost: p\r\n")
            for byte in b"X-Drip: " + b"x" * 200:
                if replied.is_set():
                    return
                try:
                    await slow.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(0.3)  # off the 2 s timeout's beat: no byte in flight at the close

        async def read_reply() -> None:
            response = await read_response(slow)
            replies.append((trio.current_time(), response))
            replied.set()

        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            nursery.start_soon(slowloris)
            nursery.start_soon(read_reply)
            client = Client(await connect(b))
            for _ in range(10):  # another client is served meanwhile
                assert (await client.request("GET", "/")).status == 200
                await trio.sleep(0.15)
            assert not replied.is_set()
            await client.aclose()
            with trio.fail_after(5):
                await replied.wait()
        ((answered, response),) = replies
        assert 2.0 <= answered - started <= 2.6
        assert response is not None and response.status == 408
        assert response.header("connection") == "close"
        assert proxy.stats.value("http.ingress.downstream_rq_timeout") == 1
        await slow.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
    ],
    ids=["cl-te", "te-cl"],
)
async def test_smuggling_refused(autojump_clock: trio.testing.MockClock, raw: bytes) -> None:
    """Content-Length with Transfer-Encoding: 400, the connection closed, nothing forwarded."""
    status = 400
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        await stream.send_all(
            b"POST /first HTTP/1.1\r\nHost: p\r\n" + raw + b"GET /smuggled HTTP/1.1\r\nHost: p\r\n\r\n"
        )
        response = await read_response(stream)
        assert response is not None and response.status == status
        assert response.header("connection") == "close"
        assert await read_to_eof(stream) == b""
        await stream.aclose()
        assert (await get(b, "/after")).status == 200
        assert [s.path for s in app.seen] == ["/after"]  # neither /first nor /smuggled
        assert proxy.stats.value("http.ingress.downstream_cx_protocol_error") == 1


async def test_large_header_block_under_the_limit_is_forwarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with setup(config, (app, 8081), h11_max_incomplete_size=1 << 20) as (_, b, _proxy):
        big = await get(b, "/", [("x-big", "b" * 50_000)])  # under 60 KiB
        assert big.status == 200 and seen_headers(big)["x-big"] == ["b" * 50_000]


BAD_REQUESTS = {
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "no-colon": (b"GET / HTTP/1.1\r\nHost: p\r\nNoColonHere\r\n\r\n", 400),
    "cl-cl": (b"POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 6\r\nContent-Length: 7\r\n\r\n", 400),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    "headers-200k": (b"GET / HTTP/1.1\r\nHost: p\r\nX-Huge: " + b"h" * 200_000 + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_requests_are_answered(autojump_clock: trio.testing.MockClock, case: str) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: after h11 raises RemoteProtocolError, its their_state is ERROR (our_state can still
    # send, as h11's docs show), but _local_reply (http_proxy.py ~line 398-399) returns without
    # sending when their_state is ERROR, so every request h11 rejects (malformed, conflicting
    # Content-Length, unsupported Transfer-Encoding, oversized head) is closed with no status.
    raw, status = BAD_REQUESTS[case]
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(raw + b"GET /smuggled HTTP/1.1\r\nHost: p\r\n\r\n")
        try:
            response = await read_response(stream)
        except trio.BrokenResourceError:
            response = None
        await stream.aclose()
        assert app.seen == []  # refused either way: nothing reaches the backend
        assert proxy.stats.value("http.ingress.downstream_cx_protocol_error") == 1
        assert response is not None and response.status == status
        assert response.header("connection") == "close"


async def test_header_block_over_60k_is_431(autojump_clock: trio.testing.MockClock) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: the 60 KiB bound is h11's max_incomplete_event_size (http_proxy.py ~line 104), which
    # h11 checks only while the head is still incomplete; a head that completes in the read that
    # crosses the bound (up to ~60 KiB + one 64 KiB read) is accepted and forwarded.  (And a
    # larger one, refused by h11, gets no 431: see test_bad_requests_are_answered.)
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with setup(config, (app, 8081), h11_max_incomplete_size=1 << 20) as (_, b, _proxy):
        stream = await connect(b)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: p\r\nX-Huge: " + b"h" * 70_000 + b"\r\n\r\n")
        response = await read_response(stream)
        await stream.aclose()
        assert app.seen == []
        assert response is not None and response.status == 431


async def test_body_over_the_limit_is_413(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with setup(config, (app, 8081), limits=ProxyLimits(max_request_body=10_000)) as (_, b, proxy):
        # declared: refused before a byte of it is read, nothing reaches the backend
        stream = await connect(b)
        await stream.send_all(b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 10001\r\n\r\n")
        response = await read_response(stream)
        assert response is not None and response.status == 413
        assert response.header("connection") == "close"
        await stream.aclose()
        assert app.seen == []
        # chunked: refused once the streamed total passes the limit (the client then stops
        # sending: see test_refusal_survives_a_client_still_sending for one that does not)
        client = Client(await connect(b))
        await client.start("POST", "/upload", [("transfer-encoding", "chunked")])
        for _ in range(6):
            await client.send(h11.Data(data=b"c" * 2000))
        response = await client.read_response()
        assert response.status == 413
        await client.aclose()
        assert app.uploads_completed == 0
        # exactly the limit passes
        client = Client(await connect(b))
        await client.start("POST", "/upload", [("transfer-encoding", "chunked")])
        for _ in range(5):
            await client.send(h11.Data(data=b"c" * 2000))
        await client.send(h11.EndOfMessage())
        response = await client.read_response()
        assert response.json()["bytes"] == 10_000
        await client.aclose()
        assert proxy.stats.value("http.ingress.downstream_rq_too_large") == 2


async def test_refusal_survives_a_client_still_sending(autojump_clock: trio.testing.MockClock) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: after a local reply that closes the connection (413 here; 408, 400 alike) the proxy
    # closes at once (aclose_forcefully: http_proxy.py serve_connection ~line 311, proxy.py
    # ListenerRuntime._handle ~line 206) with the client's unread body in its receive buffer, so
    # its stack answers with a RST that can erase the response before the client reads it.
    # RFC 9112 9.6 asks servers to close in stages (half-close, drain reads, then close), as
    # Envoy's delayed_close_timeout does.  Ten clients, trio's random scheduling: some lose it.
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with setup(config, (app, 8081), limits=ProxyLimits(max_request_body=10_000)) as (_, b, _proxy):
        statuses = []
        for _ in range(10):
            stream = await connect(b)
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 200000\r\n\r\n")
                await stream.send_all(b"x" * 200_000)
            try:
                response = await read_response(stream)
                statuses.append(response.status if response is not None else None)
            except (trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
                statuses.append(type(exc).__name__)
            await stream.aclose()
        assert statuses == [413] * 10


async def test_malformed_chunked_body_is_400(autojump_clock: trio.testing.MockClock) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: the h11.RemoteProtocolError raised by the downstream parser while the body streams
    # (_RequestBody.read_more -> _Downstream.next_event) is not caught in _upload (http_proxy.py
    # ~line 762-768 catch only _LocalReply/_DownstreamGone/LocalProtocolError); it escapes the
    # uploads nursery as an ExceptionGroup and ends in ListenerRuntime._handle's catch-all
    # (downstream_cx_handler_error, a traceback on stderr) with no response to the client.
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        )
        response = await read_response(stream)
        assert response is not None and response.status == 400
        assert proxy.stats.value("listener.198.18.0.2_10000.downstream_cx_handler_error") == 0


async def test_no_healthy_host_is_503(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("sick")
    app.healthy = False
    config = http_bootstrap([cluster("app", [8081], health_checks=health_check())])
    async with setup(config, (app, 8081)) as (_, b, proxy):
        response = await get(b, "/")
        assert (response.status, response.body) == (503, b"no healthy upstream\n")
        assert proxy.stats.value("cluster.app.upstream_cx_none_healthy") == 1
        assert app.seen == []
        app.healthy = True
        await wait_until(lambda: proxy.clusters["app"].hosts[0].available, timeout=5)
        assert (await get(b, "/")).status == 200


@pytest.mark.parametrize("case", ["no-healthy-host", "pending-overflow"])
async def test_local_reply_for_a_request_with_a_body(
    autojump_clock: trio.testing.MockClock, case: str
) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: for a request with a body, _route_to_cluster runs _try_once inside
    # `async with trio.open_nursery() as uploads` (http_proxy.py ~line 564).  trio's strict
    # exception groups wrap the _LocalReply that _attempt raises (503 "no healthy upstream",
    # ~line 658; 503 overflow, ~line 686) in an ExceptionGroup, which `except _LocalReply` in
    # _serve_one (~line 361) does not catch: the connection is dropped (handler error) with no
    # response, where a GET gets its 503.
    app = BackendApp("one")
    if case == "no-healthy-host":
        app.healthy = False
        clusters = [cluster("app", [8081], health_checks=health_check())]
    else:
        app.delay = 3.0
        breakers = {"thresholds": [{"max_connections": 1, "max_pending_requests": 0}]}
        clusters = [cluster("app", [8081], circuit_breakers=breakers)]
    async with setup(http_bootstrap(clusters), (app, 8081)) as (_, b, _proxy), trio.open_nursery() as nursery:
        if case == "pending-overflow":
            nursery.start_soon(get, b, "/occupy")
            await wait_until(lambda: app.in_flight == 1)
        client = Client(await connect(b))
        response = await client.request("POST", "/upload", body=b"hello")
        assert response.status == 503
        await client.aclose()


async def test_circuit_breaker_max_requests(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    breakers = {"thresholds": [{"max_requests": 1}]}
    config = http_bootstrap([cluster("app", [8081], circuit_breakers=breakers)])
    async with setup(config, (app, 8081)) as (_, b, proxy):
        async with trio.open_nursery() as nursery:
            results: list[Response] = []

            async def slow() -> None:
                results.append(await get(b, "/slow?delay=2"))

            nursery.start_soon(slow)
            await wait_until(lambda: app.in_flight == 1)
            response = await get(b, "/")
            assert response.status == 503 and b"overflow" in response.body
            assert proxy.stats.value("cluster.app.upstream_rq_pending_overflow") == 1
        assert results[0].status == 200
        assert (await get(b, "/")).status == 200  # the breaker closes again


async def test_circuit_breaker_max_pending_requests(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    breakers = {"thresholds": [{"max_connections": 1, "max_pending_requests": 1}]}
    config = http_bootstrap([cluster("app", [8081], circuit_breakers=breakers)])
    async with setup(config, (app, 8081)) as (_, b, proxy):
        results: dict[str, Response] = {}

        async def ask(name: str, target: str) -> None:
            results[name] = await get(b, target)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "first", "/slow?delay=2")
            await wait_until(lambda: app.in_flight == 1)
            nursery.start_soon(ask, "pending", "/queued")
            await wait_until(lambda: proxy.stats.value("cluster.app.upstream_rq_pending_active") == 1)
            await ask("third", "/refused")
            assert results["third"].status == 503
            assert proxy.stats.value("cluster.app.upstream_rq_pending_overflow") == 1
            assert "pending" not in results
        assert results["first"].status == 200
        assert results["pending"].status == 200 and results["pending"].json()["path"] == "/queued"
        assert app.max_in_flight == 1
        assert proxy.stats.value("cluster.app.upstream_cx_total") == 1
        assert proxy.stats.value("cluster.app.upstream_cx_overflow") >= 2


# --- health checks and outlier detection -----------------------------------------------------


async def test_health_checks_eject_and_return_hosts(autojump_clock: trio.testing.MockClock) -> None:
    one, two = BackendApp("one"), BackendApp("two")
    config = http_bootstrap([cluster("app", [8081, 8082], health_checks=health_check())])
    async with setup(config, (one, 8081), (two, 8082)) as (_, b, proxy):
        app = proxy.clusters["app"]
        host_two = app.hosts[1]
        assert all(h.available for h in app.hosts)  # the first check passed before listening
        assert {(await get(b, "/")).json()["backend"] for _ in range(2)} == {"one", "two"}
        two.healthy = False
        flipped = trio.current_time()
        await wait_until(lambda: not host_two.available)
        elapsed = trio.current_time() - flipped
        # three failed checks, one per interval (1 s), each within its timeout (0.5 s)
        assert 2.0 < elapsed <= 3 * 1.0 + 0.5, elapsed
        assert (
            "app::198.18.0.1:8082::health_flags::/failed_active_hc"
            in proxy.clusters.render_clusters().splitlines()
        )
        assert proxy.stats.value("cluster.app.membership_healthy") == 1
        assert proxy.stats.value("cluster.app.health_check.failure") >= 3
        for _ in range(6):
            assert (await get(b, "/")).json()["backend"] == "one"
        two.healthy = True
        flipped = trio.current_time()
        await wait_until(lambda: host_two.available)
        elapsed = trio.current_time() - flipped
        assert 1.0 < elapsed <= 2 * 1.0 + 0.5, elapsed  # two successes
        assert "app::198.18.0.1:8082::health_flags::healthy" in proxy.clusters.render_clusters().splitlines()
        assert {(await get(b, "/")).json()["backend"] for _ in range(2)} == {"one", "two"}


async def test_outlier_detection_ejects_after_consecutive_5xx(autojump_clock: trio.testing.MockClock) -> None:
    bad, good = BackendApp("bad"), BackendApp("good")
    bad.force_status = 500
    outlier = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "5s", "max_ejection_percent": 50}
    config = http_bootstrap([cluster("app", [8081, 8082], outlier_detection=outlier)])
    async with setup(config, (bad, 8081), (good, 8082)) as (_, b, proxy):
        host_bad = proxy.clusters["app"].hosts[0]
        statuses = [(await get(b, "/")).status for _ in range(6)]
        assert sorted(statuses) == [200, 200, 200, 500, 500, 500]  # round robin until the third 5xx
        assert not host_bad.available
        assert host_bad.health_flags == "/failed_outlier_check"
        assert proxy.stats.value("cluster.app.outlier_detection.ejections_enforced_total") == 1
        assert proxy.stats.value("cluster.app.outlier_detection.ejections_active") == 1
        ejected = trio.current_time()
        for _ in range(6):
            assert (await get(b, "/")).status == 200
        assert len(bad.seen) == 3
        bad.force_status = None
        await wait_until(lambda: host_bad.available)
        assert 5.0 <= trio.current_time() - ejected <= 5.0 + 1.0 + 0.1  # base time, then the next sweep
        assert proxy.stats.value("cluster.app.outlier_detection.ejections_active") == 0
        assert {(await get(b, "/")).json()["backend"] for _ in range(2)} == {"bad", "good"}


# --- load balancing --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH"])
async def test_lb_policies_reach_every_host(autojump_clock: trio.testing.MockClock, policy: str) -> None:
    apps = [BackendApp(name) for name in ("a", "b", "c")]
    config = http_bootstrap([cluster("app", [8081, 8082, 8083], lb_policy=policy)])
    async with setup(config, *[(app, 8081 + i) for i, app in enumerate(apps)]) as (_, b, _proxy):
        client = Client(await connect(b))
        names = [(await client.request("GET", "/")).json()["backend"] for _ in range(30)]
        await client.aclose()
        assert set(names) == {"a", "b", "c"}
        if policy == "ROUND_ROBIN":
            assert all(len(set(names[i : i + 3])) == 3 for i in range(len(names) - 2)), names


async def test_least_request_avoids_the_busy_host(autojump_clock: trio.testing.MockClock) -> None:
    busy, idle = BackendApp("busy"), BackendApp("idle")
    busy.delay = 10.0
    config = http_bootstrap([cluster("app", [8081, 8082], lb_policy="LEAST_REQUEST")])
    async with setup(config, (busy, 8081), (idle, 8082)) as (_, b, _proxy), trio.open_nursery() as nursery:
        for _ in range(10):  # a long request may land on either host: send them until "busy" has one
            done = trio.Event()

            async def long_request(done: trio.Event = done) -> None:
                await get(b, "/long")
                done.set()

            nursery.start_soon(long_request)
            await wait_until(lambda done=done: busy.in_flight == 1 or done.is_set())
            if busy.in_flight:
                break
        assert busy.in_flight == 1
        client = Client(await connect(b))
        names = [(await client.request("GET", "/")).json()["backend"] for _ in range(8)]
        await client.aclose()
        assert set(names) == {"idle"}
        nursery.cancel_scope.cancel()


async def test_weighted_clusters_split_by_weight(autojump_clock: trio.testing.MockClock) -> None:
    heavy, light = BackendApp("heavy"), BackendApp("light")
    weighted = {"clusters": [{"name": "heavy", "weight": 80}, {"name": "light", "weight": 20}]}
    config = http_bootstrap(
        [cluster("heavy", [8081]), cluster("light", [8082])],
        [route(cluster=None, weighted_clusters=weighted)],
    )
    async with setup(config, (heavy, 8081), (light, 8082)) as (_, b, proxy):
        client = Client(await connect(b))
        names = Counter([(await client.request("GET", "/")).json()["backend"] for _ in range(200)])
        await client.aclose()
        assert names["heavy"] + names["light"] == 200
        assert 140 <= names["heavy"] <= 180, names  # 80 % of 200, within +-4 standard deviations
        assert proxy.stats.value("cluster.light.upstream_rq_total") == names["light"]


# --- bodies ----------------------------------------------------------------------------------

TEN_MB = 10 * 1024 * 1024


async def test_download_10mb_streamed_with_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        client = Client(await connect(b))
        await client.start("GET", f"/stream?bytes={TEN_MB}")
        await client.send(h11.EndOfMessage())
        event = await client.next_event()
        assert isinstance(event, h11.Response) and event.status_code == 200
        assert dict(event.headers)[b"content-length"] == str(TEN_MB).encode()
        await trio.sleep(5)  # the client reads nothing for 5 s: the backend must be held back
        assert app.streamed < TEN_MB // 2, app.streamed
        digest, total = hashlib.sha256(), 0
        while True:
            event = await client.next_event()
            if isinstance(event, h11.EndOfMessage):
                break
            assert isinstance(event, h11.Data)
            digest.update(event.data)
            total += len(event.data)
        assert total == TEN_MB and digest.hexdigest() == pattern_sha256(TEN_MB)
        await client.aclose()


async def test_upload_10mb_streamed_with_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        client = Client(await connect(b))
        await client.start("POST", "/upload?hold=5", [("content-length", str(TEN_MB))])
        sent = [0]
        digest = hashlib.sha256()
        rng = random.Random(5)

        async def upload() -> None:
            while sent[0] < TEN_MB:
                piece = rng.randbytes(min(65536, TEN_MB - sent[0]))
                digest.update(piece)
                await client.send(h11.Data(data=piece))
                sent[0] += len(piece)
            await client.send(h11.EndOfMessage())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            await trio.sleep(4)  # the backend has not read yet: the proxy must not take it all
            assert sent[0] < TEN_MB // 2, sent[0]
            response = await client.read_response()
        assert response.status == 200
        assert response.json() == {"bytes": TEN_MB, "sha256": digest.hexdigest()}
        assert app.upload_pieces > 1
        await client.aclose()


async def test_client_gone_mid_download_frees_both_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        client = Client(await connect(b))
        await client.start("GET", f"/stream?bytes={TEN_MB}")
        await client.send(h11.EndOfMessage())
        assert isinstance(await client.next_event(), h11.Response)
        assert isinstance(await client.next_event(), h11.Data)
        await client.aclose()  # gone mid-body
        await wait_until(lambda: proxy.stats.value("http.ingress.downstream_cx_active") == 0, timeout=10)
        await wait_until(lambda: proxy.stats.value("cluster.app.upstream_cx_active") == 0, timeout=10)
        assert proxy.stats.value("http.ingress.downstream_rq_active") == 0
        assert proxy.stats.value("cluster.app.upstream_rq_active") == 0
        assert (await get(b, "/")).status == 200  # and the proxy carries on


async def test_early_response_while_the_client_uploads(autojump_clock: trio.testing.MockClock) -> None:
    """An upstream may answer before it read the body: the client gets that answer."""
    app = BackendApp("one")
    app.force_status = 403  # answers without reading the body
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        client = Client(await connect(b))
        await client.start("POST", "/upload", [("content-length", str(TEN_MB))])

        async def upload() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                for _ in range(TEN_MB // 65536):
                    await client.send(h11.Data(data=b"u" * 65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            response = await client.read_response()
            nursery.cancel_scope.cancel()
        assert (response.status, response.body) == (403, b"one 403")
        await client.aclose()
        await wait_until(lambda: proxy.stats.value("cluster.app.upstream_cx_active") == 0, timeout=10)
        assert (await get(b, "/")).status == 403


async def test_chunked_request_body_forwarded(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        client = Client(await connect(b))
        await client.start("POST", "/upload", [("transfer-encoding", "chunked")])
        rng = random.Random(7)
        pieces = [rng.randbytes(rng.randrange(1, 30_000)) for _ in range(12)]
        for piece in pieces:
            await client.send(h11.Data(data=piece))
            await trio.sleep(0.01)
        await client.send(h11.EndOfMessage())
        response = await client.read_response()
        whole = b"".join(pieces)
        assert response.json() == {"bytes": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
        assert app.seen[-1].header("transfer-encoding") == "chunked"
        assert app.seen[-1].header("content-length") is None
        # an echo: the body streams back while it is still being sent
        await client.start("POST", "/echo", [("transfer-encoding", "chunked")])
        await client.send(h11.Data(data=b"ping"))
        event = await client.next_event()
        assert isinstance(event, h11.Response) and event.status_code == 200
        event = await client.next_event()
        assert isinstance(event, h11.Data) and event.data == b"ping"  # before the request ended
        await client.send(h11.EndOfMessage())
        rest = await client.next_event()
        assert isinstance(rest, h11.EndOfMessage)
        await client.aclose()


async def test_expect_100_continue(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, _proxy):
        client = Client(await connect(b))
        body = b"z" * 50_000
        await client.start(
            "POST", "/upload", [("content-length", str(len(body))), ("expect", "100-continue")]
        )
        with trio.fail_after(5):
            event = await client.next_event()  # nothing of the body sent yet
        assert isinstance(event, h11.InformationalResponse) and event.status_code == 100
        await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())
        response = await client.read_response()
        assert response.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert app.seen[-1].header("expect") is None  # answered here, per hop
        await client.aclose()


# --- upgrades --------------------------------------------------------------------------------


async def test_websocket_refused_where_no_upgrade_configs_allows_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Envoy refuses an upgrade that no ``upgrade_configs`` allows with 403 (and counts it); a route's
    ``upgrade_configs`` overrides the connection manager's.  The connection stays usable."""
    app = BackendApp("one")
    routes = [route("/off", upgrade_configs=[{"upgrade_type": "websocket", "enabled": False}]), route("/")]
    handshake = [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13"),
                 ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]  # fmt: skip
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        client = Client(await connect(b))
        assert (await client.request("GET", "/ws", handshake)).status == 403
        assert (await client.request("GET", "/plain")).status == 200
        await client.aclose()
        assert proxy.stats.value("http.ingress.downstream_rq_ws_on_non_ws_route") == 1
        assert [s.path for s in app.seen] == ["/plain"]
    config = http_bootstrap([cluster("app", [8081])], routes, upgrade_configs=[{"upgrade_type": "WebSocket"}])
    async with setup(config, (app, 8081)) as (_, b, proxy):
        client = Client(await connect(b))
        assert (await client.request("GET", "/off/ws", handshake)).status == 403
        await client.aclose()
        assert proxy.stats.value("http.ingress.downstream_rq_ws_on_non_ws_route") == 1


async def test_websocket_echo_through_the_proxy(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], upgrade_configs=[{"upgrade_type": "websocket"}])
    async with setup(config, (app, 8081)) as (_, b, proxy):
        stream = await connect(b)
        ws = WSConnection(ConnectionType.CLIENT)
        events: list[Any] = []

        async def next_ws_event() -> Any:
            while not events:
                data = await stream.receive_some(65536)
                ws.receive_data(data or None)
                events.extend(ws.events())
            return events.pop(0)

        await stream.send_all(ws.send(Request(host="proxy.test", target="/ws")))
        assert isinstance(await next_ws_event(), AcceptConnection)
        await stream.send_all(ws.send(TextMessage(data="hello")))
        reply = await next_ws_event()
        assert isinstance(reply, TextMessage) and reply.data == "echo:hello"
        payload = bytes(range(256)) * 400
        await stream.send_all(ws.send(BytesMessage(data=payload)))
        received = b""
        while len(received) < len(payload):
            message = await next_ws_event()
            assert isinstance(message, BytesMessage)
            received += message.data
        assert received == payload
        await stream.send_all(ws.send(CloseConnection(code=1000)))
        assert isinstance(await next_ws_event(), CloseConnection)
        await stream.aclose()
        assert proxy.stats.value("http.ingress.downstream_cx_upgrades_total") == 1
        assert app.seen == []  # not an HTTP request to the app


# --- draining --------------------------------------------------------------------------------


async def test_drain_finishes_in_flight_requests_with_connection_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with two_stacks() as (a, b), running_backend(app, b, 8081):
        proxy = Proxy(config, network=Network(a), rng=random.Random(1))
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(proxy.run, drain_time=10.0))
                idle = Client(await connect(b))
                assert (await idle.request("GET", "/")).status == 200
                slow = Client(await connect(b))
                results: list[Response] = []

                async def slow_request() -> None:
                    results.append(await slow.request("GET", "/slow?delay=3"))

                nursery.start_soon(slow_request)
                # the slow request itself at the backend (in_flight alone may still count the idle
                # connection's request, whose handler ends after its response went out: a drain
                # begun then closes the slow connection before its request arrives, and the proxy
                # resets the request that follows its FIN, as any server does)
                await wait_until(lambda: app.in_flight == 1 and app.seen[-1].path == "/slow?delay=3")
                proxy.shutdown()
                await wait_until(lambda: proxy.state.draining)
                assert proxy.stats.value("server.state") == 1  # DRAINING
                # the idle keep-alive connection is closed at once
                with trio.fail_after(0.5):
                    assert await read_to_eof(idle.stream) == b""
                # new connections are refused
                with pytest.raises(OSError):
                    await connect(b)
                assert results == []
            # run() returned once the slow request was done
            (response,) = results
            assert response.status == 200 and response.body == b"one slow"
            assert response.header("connection") == "close"
            assert await read_to_eof(slow.stream) == b""
            await idle.aclose()
            await slow.aclose()


async def test_drain_time_bounds_the_drain(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], [route(timeout="0s")])
    async with two_stacks() as (a, b), running_backend(app, b, 8081):
        proxy = Proxy(config, network=Network(a), rng=random.Random(1))
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(proxy.run, drain_time=1.0))
                stream = await connect(b)
                await stream.send_all(b"GET /slow?delay=30 HTTP/1.1\r\nHost: p\r\n\r\n")
                await wait_until(lambda: app.in_flight == 1)
                proxy.shutdown()
                started = trio.current_time()
                assert await read_to_eof(stream) == b""  # cut off, unanswered, once drain_time passed
                assert 1.0 <= trio.current_time() - started <= 1.1
                await stream.aclose()
            assert trio.current_time() - started <= 1.1  # and run() returned with it


async def test_healthcheck_fail_closes_connections(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        admin = AdminServer(proxy.bootstrap, proxy.stats, proxy.clusters, proxy.state, proxy.shutdown)
        assert admin.handle("GET", "/ready") == (200, "text/plain", b"LIVE\n")
        client = Client(await connect(b))
        assert (await client.request("GET", "/")).header("connection") is None
        assert admin.handle("POST", "/healthcheck/fail")[0] == 200
        response = await client.request("GET", "/")
        assert response.status == 200 and response.header("connection") == "close"
        assert await read_to_eof(client.stream) == b""
        await client.aclose()
        assert admin.handle("GET", "/ready")[0] == 503
        local = await get(b, "/", host="x")  # still served, each on its own connection
        assert local.status == 200 and local.header("connection") == "close"
        assert admin.handle("POST", "/healthcheck/ok")[0] == 200
        client = Client(await connect(b))
        assert (await client.request("GET", "/")).header("connection") is None
        assert (await client.request("GET", "/")).status == 200
        await client.aclose()


@pytest.mark.parametrize("case", ["healthcheck-fail", "client-connection-close"])
async def test_closing_client_connections_keep_upstream_connections_pooled(
    autojump_clock: trio.testing.MockClock, case: str
) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: when a response to the client says "connection: close" (the client asked for it, or
    # the proxy drains / /healthcheck/fail), h11's our_state ends MUST_CLOSE, not DONE;
    # _relay_response (http_proxy.py ~line 848) takes that for an unfinished response: it closes
    # the healthy, reusable upstream connection and returns before cluster.release() and the
    # downstream_cx_drain_close counter (~line 865-867).  So every HTTP/1.0 or "Connection:
    # close" client, and every request under /healthcheck/fail, costs a new upstream connection.
    app = BackendApp("one")
    async with setup(http_bootstrap([cluster("app", [8081])]), (app, 8081)) as (_, b, proxy):
        headers: list[tuple[str, str]] = []
        if case == "healthcheck-fail":
            admin = AdminServer(proxy.bootstrap, proxy.stats, proxy.clusters, proxy.state, proxy.shutdown)
            assert admin.handle("POST", "/healthcheck/fail")[0] == 200
        else:
            headers = [("connection", "close")]
        for _ in range(5):
            response = await get(b, "/", headers)
            assert response.status == 200 and response.header("connection") == "close"
        assert proxy.stats.value("cluster.app.upstream_cx_total") == 1
        if case == "healthcheck-fail":
            assert proxy.stats.value("http.ingress.downstream_cx_drain_close") == 5


async def test_max_downstream_connections_queue_in_the_backlog(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    limits = ProxyLimits(max_downstream_connections=1)
    async with setup(config, (app, 8081), limits=limits) as (_, b, proxy):
        first = Client(await connect(b))
        assert (await first.request("GET", "/")).status == 200
        second = Client(await connect(b))  # accepted by the stack, not yet by the proxy
        results: list[Response] = []
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                results.append(await second.request("GET", "/second"))

            nursery.start_soon(ask)
            await trio.sleep(5)
            assert results == [] and len(app.seen) == 1
            await first.aclose()
        assert results[0].status == 200
        assert proxy.stats.value("listener.198.18.0.2_10000.downstream_cx_total") == 2
        await second.aclose()


# --- access log ------------------------------------------------------------------------------

ENVOY_DEFAULT = re.compile(
    r"\[(?P<start_time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" (?P<response_code>\d+) (?P<response_flags>\S+) '
    r"(?P<bytes_received>\d+) (?P<bytes_sent>\d+) (?P<duration>\d+) (?P<upstream_service_time>\d+|-) "
    r'"(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)"'
)


def file_log(path: Path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
        },
    }


async def test_access_log_lines(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    app = BackendApp("one")
    log = tmp_path / "access.log"
    routes = [route("/api/", prefix_rewrite="/"), route("/")]
    config = bootstrap([http_listener(hcm(routes, access_log=[file_log(log)]))], [cluster("app", [8081])])
    async with setup(config, (app, 8081)) as (_, b, _proxy):
        response = await get(
            b, "/api/x?y=1", [("user-agent", "agent/1"), ("x-request-id", "rid-1")], host="h.test"
        )
        assert response.status == 200
        missing = await get(b, "/status/404", host="h.test")
        assert missing.status == 404
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    first = ENVOY_DEFAULT.fullmatch(lines[0])
    assert first is not None, lines[0]
    assert first["method"] == "GET" and first["path"] == "/api/x?y=1"  # the original path
    assert first["protocol"] == "HTTP/1.1" and first["response_code"] == "200"
    assert first["response_flags"] == "-"
    assert int(first["bytes_sent"]) == len(response.body)
    assert first["x_forwarded_for"] == "198.18.0.1"
    assert first["user_agent"] == "agent/1" and first["request_id"] == "rid-1"
    assert first["authority"] == "h.test" and first["upstream_host"] == f"{B_IP}:8081"
    assert first["upstream_service_time"] == response.header("x-envoy-upstream-service-time")
    second = ENVOY_DEFAULT.fullmatch(lines[1])
    assert second is not None and second["response_code"] == "404" and second["user_agent"] == "-"


async def test_access_log_counts_bytes_received(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # Regression test for a bug found in review (since fixed).
    # Was: Envoy's %BYTES_RECEIVED% is the request body size; http_proxy.py never adds to
    # record.bytes_received (only `record.bytes_received = record.bytes_received or 0`, ~line 384),
    # so every POST is logged as having received 0 bytes.
    app = BackendApp("one")
    log = tmp_path / "access.log"
    config = bootstrap([http_listener(hcm([route()], access_log=[file_log(log)]))], [cluster("app", [8081])])
    async with setup(config, (app, 8081)) as (_, b, _proxy):
        client = Client(await connect(b))
        assert (await client.request("POST", "/upload", body=b"x" * 1234)).status == 200
        await client.aclose()
    (line,) = log.read_text().splitlines()
    m = ENVOY_DEFAULT.fullmatch(line)
    assert m is not None and m["bytes_received"] == "1234"


# --- the admin endpoint over HTTP (kernel sockets, real time) ---------------------------------


def free_port() -> int:
    with stdlib_socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_admin_endpoint_over_http() -> None:
    app = BackendApp("kernel")
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = cfg.errorlog = None
    cfg.graceful_timeout = 1.0
    stop_backend = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(
                partial(hypercorn.trio.serve, app, cfg, shutdown_trigger=stop_backend.wait)
            )
            backend_port = int(url.rsplit(":", 1)[1])
            listen_port, admin_port = free_port(), free_port()
            config = bootstrap(
                [http_listener(hcm([route()]), address="127.0.0.1", port=listen_port)],
                [cluster("app", [backend_port], address="127.0.0.1")],
                admin_port=admin_port,
            )
            async with running_proxy(config, None) as proxy:

                async def admin(method: str, path: str) -> Response:
                    client = Client(await trio.open_tcp_stream("127.0.0.1", admin_port))
                    try:
                        return await client.request(method, path, host="127.0.0.1")
                    finally:
                        await client.aclose()

                client = Client(await trio.open_tcp_stream("127.0.0.1", listen_port))
                assert (await client.request("GET", "/")).json()["backend"] == "kernel"
                stats = (await admin("GET", "/stats")).body.decode().splitlines()
                assert "cluster.app.upstream_rq_200: 1" in stats
                assert "http.ingress.downstream_rq_2xx: 1" in stats
                assert f"listener.127.0.0.1_{listen_port}.downstream_cx_total: 1" in stats
                prometheus = await admin("GET", "/stats/prometheus")
                assert prometheus.header("content-type") == "text/plain; version=0.0.4"
                assert (
                    'envoy_cluster_upstream_rq_total{envoy_cluster_name="app"} 1' in prometheus.body.decode()
                )
                clusters = (await admin("GET", "/clusters")).body.decode().splitlines()
                assert f"app::127.0.0.1:{backend_port}::rq_success::1" in clusters
                assert f"app::127.0.0.1:{backend_port}::health_flags::healthy" in clusters
                assert json.loads((await admin("GET", "/config_dump")).body)["configs"]
                ready = await admin("GET", "/ready")
                assert (ready.status, ready.body) == (200, b"LIVE\n")
                assert (await admin("GET", "/healthcheck/fail")).status == 405
                assert not proxy.state.health_check_failed
                assert (await admin("POST", "/healthcheck/fail")).status == 200
                assert (await admin("GET", "/ready")).status == 503
                response = await client.request("GET", "/")
                assert response.header("connection") == "close"
                await client.aclose()
                assert (await admin("POST", "/healthcheck/ok")).status == 200
                assert (await admin("GET", "/ready")).status == 200
                assert (await admin("GET", "/nope")).status == 404
                # POST /quitquitquit drains the proxy: running_proxy's exit then finds it done
                assert (await admin("POST", "/quitquitquit")).status == 200
                await wait_until(lambda: proxy.state.shutting_down, timeout=5)
            stop_backend.set()
