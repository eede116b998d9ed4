"""The HTTP filters against Envoy's documented behaviour: CORS preflights and response headers, fault
delays and aborts over many requests, local rate limiting with a token bucket, each with its
``typed_per_filter_config`` overrides.

Everything runs on the in-process simulator under trio's MockClock (``autojump_clock``), as in
test_proxy_http.py: the proxy on stack A, the hypercorn backend and the clients on stack B, so a fault
delay of 2 s or a token bucket's fill interval are simulated seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from proxy_helpers import (
    BackendApp,
    Client,
    Response,
    cluster,
    connect,
    http_bootstrap,
    pattern_sha256,
    route,
)
from test_proxy_http import setup

from trio_yastack import Stack
from trio_yastack.l7.config import ROUTER_TYPE
from trio_yastack.l7.proxy import Proxy

CORS = "envoy.filters.http.cors"
FAULT = "envoy.filters.http.fault"
RATELIMIT = "envoy.filters.http.local_ratelimit"
TYPES = {
    CORS: "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
    FAULT: "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    RATELIMIT: "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
}
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
PERCENT_100 = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def http_filter(name: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": TYPES[name], **config}}


def filters(*chain: dict[str, Any]) -> list[dict[str, Any]]:
    return [*chain, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]


@asynccontextmanager
async def proxied(
    http_filters: list[dict[str, Any]], *, routes: list[dict[str, Any]] | None = None, **vhost: Any
) -> AsyncIterator[tuple[Stack, Proxy, BackendApp]]:
    app = BackendApp("app")
    vhosts = [{"name": "all", "domains": ["*"], "routes": routes or [route()], **vhost}]
    config = http_bootstrap([cluster("app", [8080])], virtual_hosts=vhosts, http_filters=http_filters)
    async with setup(config, (app, 8080)) as (_, b, proxy):
        yield b, proxy, app


async def many(
    b: Stack, n: int, target: str = "/", headers: list[tuple[str, str]] | None = None
) -> list[Response]:
    """``n`` requests in a row on one connection."""
    client = Client(await connect(b))
    try:
        return [await client.request("GET", target, headers or []) for _ in range(n)]
    finally:
        await client.aclose()


# --- cors ---

POLICY = {
    "@type": CORS_POLICY,
    "allow_origin_string_match": [{"safe_regex": {"regex": r"https://.*\.example"}}],
    "allow_methods": "GET, PUT",
    "allow_headers": "x-custom",
    "expose_headers": "x-reply",
    "max_age": "600",
    "allow_credentials": True,
}


async def test_cors_preflight_answered_and_simple_requests_marked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Envoy's CORS filter: a preflight from an allowed origin is answered by the proxy (200 and the
    policy's headers; the backend never sees it); a simple request from it reaches the backend and its
    response carries allow-origin (the origin echoed), allow-credentials and expose-headers; an origin
    not allowed gets no CORS headers, and its preflight goes to the backend."""
    routes = [
        route("/closed", extra={"typed_per_filter_config": {CORS: {"@type": CORS_POLICY, "filter_enabled": {
            "default_value": {"numerator": 0}}}}}),
        route("/"),
    ]  # fmt: skip
    async with proxied(filters(http_filter(CORS)), routes=routes, typed_per_filter_config={CORS: POLICY}) as (
        b,
        proxy,
        app,
    ):
        origin = ("origin", "https://app.example")
        preflight = [origin, ("access-control-request-method", "PUT")]
        client = Client(await connect(b))
        r = await client.request("OPTIONS", "/things", preflight)
        assert r.status == 200 and r.body == b""
        assert r.header("access-control-allow-origin") == "https://app.example"
        assert r.header("access-control-allow-methods") == "GET, PUT"
        assert r.header("access-control-allow-headers") == "x-custom"
        assert r.header("access-control-max-age") == "600"
        assert r.header("access-control-allow-credentials") == "true"
        assert app.seen == []

        r = await client.request("GET", "/things", [origin])
        assert r.status == 200 and r.json()["path"] == "/things"
        assert r.header("access-control-allow-origin") == "https://app.example"
        assert r.header("access-control-expose-headers") == "x-reply"
        assert r.header("access-control-allow-credentials") == "true"
        assert r.header("access-control-allow-methods") is None  # preflight only

        evil = ("origin", "https://evil.test")
        r = await client.request("GET", "/things", [evil])
        assert r.status == 200 and r.header("access-control-allow-origin") is None
        r = await client.request("OPTIONS", "/things", [evil, ("access-control-request-method", "PUT")])
        assert r.header("access-control-allow-origin") is None
        assert [s.method for s in app.seen] == ["GET", "GET", "OPTIONS"]  # forwarded, not answered

        r = await client.request("OPTIONS", "/closed", preflight)  # filter_enabled 0% on this route
        assert r.header("access-control-allow-origin") is None and app.seen[-1].path == "/closed"
        await client.aclose()
        assert proxy.stats.value("http.ingress.cors.origin_valid") == 2
        assert proxy.stats.value("http.ingress.cors.origin_invalid") == 2


async def test_cors_shadow_enabled_counts_only(autojump_clock: trio.testing.MockClock) -> None:
    """``shadow_enabled`` on a route where ``filter_enabled`` is 0%: Envoy checks and counts the
    origin (``origin_valid``/``origin_invalid``) but answers nothing and adds no header; without it,
    such a route counts nothing either."""
    off = {"default_value": {"numerator": 0}}
    shadow = {CORS: POLICY | {"filter_enabled": off, "shadow_enabled": {"default_value": {"numerator": 100}}}}
    routes = [
        route("/shadow", extra={"typed_per_filter_config": shadow}),
        route("/", extra={"typed_per_filter_config": {CORS: POLICY | {"filter_enabled": off}}}),
    ]
    async with proxied(filters(http_filter(CORS)), routes=routes) as (b, proxy, app):
        client = Client(await connect(b))
        preflight = [("origin", "https://app.example"), ("access-control-request-method", "PUT")]
        r = await client.request("OPTIONS", "/shadow", preflight)
        assert r.header("access-control-allow-origin") is None and app.seen[-1].path == "/shadow"
        r = await client.request("GET", "/shadow", [("origin", "https://evil.test")])
        assert r.header("access-control-allow-origin") is None
        r = await client.request("GET", "/plain", [("origin", "https://app.example")])
        assert r.header("access-control-allow-origin") is None
        await client.aclose()
        assert len(app.seen) == 3
        assert proxy.stats.value("http.ingress.cors.origin_valid") == 1
        assert proxy.stats.value("http.ingress.cors.origin_invalid") == 1


async def test_cors_wildcards_private_network_and_unmatched_preflights(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Envoy's CORS details: ``allow_methods``/``allow_headers`` of ``*`` echo what the preflight
    asks; ``allow_private_network_access`` answers ``Access-Control-Request-Private-Network``;
    ``forward_not_matching_preflights: false`` answers a preflight from an origin not allowed here
    (200, no allow-origin) instead of forwarding it."""
    policy = POLICY | {
        "allow_methods": "*",
        "allow_headers": "*",
        "allow_private_network_access": True,
        "forward_not_matching_preflights": False,
    }
    async with proxied(filters(http_filter(CORS)), typed_per_filter_config={CORS: policy}) as (b, _, app):
        client = Client(await connect(b))
        ask = [("access-control-request-method", "PATCH"), ("access-control-request-headers", "x-a, x-b")]
        r = await client.request(
            "OPTIONS",
            "/",
            [("origin", "https://app.example"), *ask, ("access-control-request-private-network", "true")],
        )
        assert r.status == 200 and r.header("access-control-allow-methods") == "PATCH"
        assert r.header("access-control-allow-headers") == "x-a, x-b"
        assert r.header("access-control-allow-private-network") == "true"
        r = await client.request("OPTIONS", "/", [("origin", "https://evil.test"), *ask])
        assert r.status == 200 and r.header("access-control-allow-origin") is None and app.seen == []
        assert r.header("access-control-allow-methods") == "PATCH"  # Envoy sets the rest all the same
        r = await client.request("GET", "/", [("origin", "https://evil.test")])  # not a preflight: goes on
        assert r.status == 200 and len(app.seen) == 1
        await client.aclose()


async def test_cors_without_a_policy_does_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(filters(http_filter(CORS))) as (b, _, app):
        client = Client(await connect(b))
        r = await client.request(
            "OPTIONS", "/", [("origin", "https://a.example"), ("access-control-request-method", "GET")]
        )
        assert r.header("access-control-allow-origin") is None and len(app.seen) == 1
        await client.aclose()


# --- fault ---


async def test_fault_abort_percentage_over_many_requests(autojump_clock: trio.testing.MockClock) -> None:
    """``abort {http_status: 503, percentage: 25%}``: over 400 requests about a quarter are answered
    503 ``fault filter abort`` by the proxy and never reach the backend; the rest pass."""
    fault = http_filter(FAULT, abort={"http_status": 503, "percentage": {"numerator": 25}})
    async with proxied(filters(fault)) as (b, proxy, app):
        responses = await many(b, 400)
    aborted = [r for r in responses if r.status == 503]
    assert all(r.body == b"fault filter abort\n" for r in aborted)
    assert 60 <= len(aborted) <= 140  # binomial(400, 0.25): mean 100, sd 8.7
    assert len(app.seen) == 400 - len(aborted)
    assert proxy.stats.value("http.ingress.fault.aborts_injected") == len(aborted)


async def test_fault_delay_percentage_and_route_override(autojump_clock: trio.testing.MockClock) -> None:
    """``delay {fixed_delay: 2s, percentage: 50%}`` on one route only (its ``typed_per_filter_config``
    replaces the filter's config, which injects nothing): delayed requests take 2 s more, then reach
    the backend; requests on the other route are never delayed."""
    slow = {"@type": TYPES[FAULT], "delay": {"fixed_delay": "2s", "percentage": {"numerator": 50}}}
    routes = [route("/lag", extra={"typed_per_filter_config": {FAULT: slow}}), route("/")]
    async with proxied(filters(http_filter(FAULT)), routes=routes) as (b, proxy, app):
        client = Client(await connect(b))
        durations = []
        for _ in range(100):
            start = trio.current_time()
            r = await client.request("GET", "/lag")
            assert r.status == 200
            durations.append(trio.current_time() - start)
        fast = []
        for _ in range(20):
            start = trio.current_time()
            assert (await client.request("GET", "/fast")).status == 200
            fast.append(trio.current_time() - start)
        await client.aclose()
    base = max(fast)
    assert base < 2.0
    delayed = [d for d in durations if d >= 2.0]
    assert all(d <= base or 2.0 <= d <= base + 2.001 for d in durations), sorted(set(durations))
    assert 30 <= len(delayed) <= 70  # binomial(100, 0.5): mean 50, sd 5
    assert proxy.stats.value("http.ingress.fault.delays_injected") == len(delayed)
    assert len(app.seen) == 120


async def test_fault_header_abort_and_header_matchers(autojump_clock: trio.testing.MockClock) -> None:
    """``header_abort``: the status comes from ``x-envoy-fault-abort-request``; the filter's ``headers``
    limit faults to matching requests."""
    fault = http_filter(
        FAULT,
        abort={"header_abort": {}, "percentage": {"numerator": 100}},
        headers=[{"name": "x-chaos", "present_match": True}],
    )
    async with proxied(filters(fault)) as (b, _, app):
        chaos = [("x-chaos", "1"), ("x-envoy-fault-abort-request", "418")]
        (r,) = await many(b, 1, headers=chaos)
        assert r.status == 418 and app.seen == []
        (r,) = await many(b, 1, headers=chaos[1:])  # no x-chaos: not eligible
        assert r.status == 200 and len(app.seen) == 1


async def test_fault_grpc_abort(autojump_clock: trio.testing.MockClock) -> None:
    """``abort.grpc_status``: a gRPC answer made by the filter: 200, ``content-type:
    application/grpc``, ``grpc-status`` and ``grpc-message: fault filter abort`` in the headers, no
    body; the backend never sees the request."""
    abort = http_filter(FAULT, abort={"grpc_status": 14, "percentage": {"numerator": 100}})
    async with proxied(filters(abort)) as (b, proxy, app):
        (r,) = await many(b, 1)
        assert r.status == 200 and r.body == b"" and r.header("content-type") == "application/grpc"
        assert r.header("grpc-status") == "14" and r.header("grpc-message") == "fault filter abort"
        assert app.seen == [] and proxy.stats.value("http.ingress.fault.aborts_injected") == 1


async def test_fault_max_active_faults(autojump_clock: trio.testing.MockClock) -> None:
    """With ``max_active_faults: 2`` and every request delayed 5 s, two of five concurrent requests are
    delayed; the others overflow and pass at once."""
    fault = http_filter(
        FAULT, delay={"fixed_delay": "5s", "percentage": {"numerator": 100}}, max_active_faults=2
    )
    async with proxied(filters(fault)) as (b, proxy, _):
        durations: list[float] = []

        async def one() -> None:
            start = trio.current_time()
            await many(b, 1)
            durations.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
    assert sorted(d >= 5.0 for d in durations) == [False, False, False, True, True]
    assert proxy.stats.value("http.ingress.fault.faults_overflow") == 3


# --- local_ratelimit ---


def ratelimit(max_tokens: int, fill: str, **extra: Any) -> dict[str, Any]:
    return http_filter(
        RATELIMIT,
        stat_prefix="http_local_rate_limiter",
        token_bucket={"max_tokens": max_tokens, "tokens_per_fill": max_tokens, "fill_interval": fill},
        filter_enabled=PERCENT_100,
        filter_enforced=PERCENT_100,
        **extra,
    )


async def test_local_ratelimit_token_bucket_429s(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy's example: a bucket of 3 filled every 10 s.  The 4th and 5th requests get 429
    ``local_rate_limited`` with ``x-envoy-ratelimited: true`` and the configured header; after one fill
    interval the bucket is full again."""
    rl = ratelimit(
        3, "10s", response_headers_to_add=[{"header": {"key": "x-local-rate-limit", "value": "true"}}]
    )
    async with proxied(filters(rl)) as (b, proxy, app):
        statuses = [r.status for r in await many(b, 5)]
        assert statuses == [200, 200, 200, 429, 429]
        (r,) = await many(b, 1)
        assert r.status == 429 and r.body == b"local_rate_limited\n"
        assert r.header("x-envoy-ratelimited") == "true" and r.header("x-local-rate-limit") == "true"
        await trio.sleep(10)
        assert [r.status for r in await many(b, 4)] == [200, 200, 200, 429]
        assert len(app.seen) == 6
        s = proxy.stats
        prefix = "http_local_rate_limiter.http_local_rate_limit."
        assert [s.value(prefix + k) for k in ("enabled", "ok", "rate_limited", "enforced")] == [10, 6, 4, 4]


async def test_local_ratelimit_not_enforced_and_route_override(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``filter_enforced`` 0% counts ``rate_limited`` but lets requests pass (Envoy's shadow mode); a
    route's own LocalRateLimit has a bucket of its own."""
    shadow = ratelimit(1, "60s")
    shadow["typed_config"]["filter_enforced"] = {"default_value": {"numerator": 0}}
    strict = ratelimit(2, "60s")["typed_config"] | {"stat_prefix": "strict"}
    routes = [route("/strict", extra={"typed_per_filter_config": {RATELIMIT: strict}}), route("/")]
    async with proxied(filters(shadow), routes=routes) as (b, proxy, _):
        assert [r.status for r in await many(b, 3, "/open")] == [200, 200, 200]
        assert [r.status for r in await many(b, 3, "/strict")] == [200, 200, 429]
        assert proxy.stats.value("http_local_rate_limiter.http_local_rate_limit.rate_limited") == 2
        assert proxy.stats.value("http_local_rate_limiter.http_local_rate_limit.enforced") == 0
        assert proxy.stats.value("strict.http_local_rate_limit.enforced") == 1


async def test_local_ratelimit_headers_when_not_enforced(autojump_clock: trio.testing.MockClock) -> None:
    """``request_headers_to_add_when_not_enforced``: a request the bucket refused but
    ``filter_enforced`` (0%) lets through reaches the backend marked; one within the bucket is not."""
    rl = ratelimit(
        1, "60s",
        request_headers_to_add_when_not_enforced=[{"header": {"key": "x-over-limit", "value": "yes"}}],
    )  # fmt: skip
    rl["typed_config"]["filter_enforced"] = {"default_value": {"numerator": 0}}
    async with proxied(filters(rl)) as (b, _, app):
        assert [r.status for r in await many(b, 2)] == [200, 200]
        assert [s.header("x-over-limit") for s in app.seen] == [None, "yes"]


async def test_local_ratelimit_per_connection(autojump_clock: trio.testing.MockClock) -> None:
    rl = ratelimit(2, "60s", local_rate_limit_per_downstream_connection=True)
    async with proxied(filters(rl)) as (b, _, _app):
        assert [r.status for r in await many(b, 3)] == [200, 200, 429]
        assert [r.status for r in await many(b, 3)] == [200, 200, 429]  # a new connection, a new bucket


async def test_local_ratelimit_x_ratelimit_headers(autojump_clock: trio.testing.MockClock) -> None:
    """``enable_x_ratelimit_headers: DRAFT_VERSION_03``: each response says the bucket's size, the
    tokens left and the seconds to the next fill, the 429 too; the option off adds none."""
    rl = ratelimit(2, "10s", enable_x_ratelimit_headers="DRAFT_VERSION_03")
    async with proxied(filters(rl)) as (b, _, _app):
        first, second, refused = await many(b, 3)
        await trio.sleep(4)
        (later,) = await many(b, 1)
    heads = [(r.status, r.header("x-ratelimit-limit"), r.header("x-ratelimit-remaining"),
              r.header("x-ratelimit-reset")) for r in (first, second, refused, later)]  # fmt: skip
    assert heads == [
        (200, "2", "1", "10"),
        (200, "2", "0", "10"),
        (429, "2", "0", "10"),
        (429, "2", "0", "6"),
    ]
    async with proxied(filters(ratelimit(2, "10s"))) as (b, _, _app):
        (r,) = await many(b, 1)
        assert r.status == 200 and r.header("x-ratelimit-limit") is None


async def test_filters_run_in_the_order_configured(autojump_clock: trio.testing.MockClock) -> None:
    """A rate limit before an always-abort fault answers 429 once the bucket is empty (the fault
    never runs); in the other order the fault answers every request and the bucket is never touched."""
    abort = http_filter(FAULT, abort={"http_status": 503, "percentage": {"numerator": 100}})
    async with proxied(filters(ratelimit(1, "60s"), abort)) as (b, _, _app):
        assert [r.status for r in await many(b, 3)] == [503, 429, 429]
    async with proxied(filters(abort, ratelimit(1, "60s"))) as (b, proxy, _app):
        assert [r.status for r in await many(b, 3)] == [503, 503, 503]
        assert proxy.stats.value("http_local_rate_limiter.http_local_rate_limit.enabled") == 0


# --- compressor (gzip) ---

COMPRESSOR = "envoy.filters.http.compressor"
COMPRESSOR_TYPE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"


def compressor(**response_direction: Any) -> dict[str, Any]:
    typed: dict[str, Any] = {
        "@type": COMPRESSOR_TYPE,
        "compressor_library": {
            "name": "text_optimized",
            "typed_config": {"@type": GZIP, "memory_level": 3, "window_bits": 10},
        },
    }
    if response_direction:
        typed["response_direction_config"] = response_direction
    return {"name": COMPRESSOR, "typed_config": typed}


async def test_gzip_by_accept_encoding_and_content_type(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy's compressor with its defaults: a JSON answer (application/json, over 30 bytes) is gzipped
    for a client that accepts gzip (Content-Length gone, Content-Encoding: gzip, Vary), sent as is
    with Vary to one that does not (or refuses it with q=0); a short text answer and an
    application/octet-stream one are never compressed and get no Vary; nor is a HEAD's."""
    routes = [route("/plain", extra={"typed_per_filter_config": {COMPRESSOR: {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute",
        "disabled": True}}}), route("/")]  # fmt: skip
    async with proxied(filters(compressor()), routes=routes) as (b, proxy, _):
        client = Client(await connect(b))
        r = await client.request("GET", "/doc", [("accept-encoding", "br;q=1.0, gzip;q=0.8")])
        assert r.header("content-encoding") == "gzip" and r.header("content-length") is None
        assert r.header("vary") == "Accept-Encoding"
        document = json.loads(gzip.decompress(r.body))
        assert (
            document["path"] == "/doc" and ["accept-encoding", "br;q=1.0, gzip;q=0.8"] in document["headers"]
        )
        for accept in ([], [("accept-encoding", "gzip;q=0, identity")], [("accept-encoding", "deflate")]):
            r = await client.request("GET", "/doc", accept)
            assert r.header("content-encoding") is None and r.header("vary") == "Accept-Encoding"
            assert json.loads(r.body)["path"] == "/doc"
        r = await client.request("GET", "/doc", [("accept-encoding", "*")])
        assert r.header("content-encoding") == "gzip"
        r = await client.request("GET", "/status/200", [("accept-encoding", "gzip")])  # 7 bytes < 30
        assert r.body == b"app 200" and r.header("vary") is None
        r = await client.request("GET", "/stream?bytes=100000", [("accept-encoding", "gzip")])
        assert r.header("content-encoding") is None and len(r.body) == 100000
        r = await client.request("HEAD", "/doc", [("accept-encoding", "gzip")])
        assert r.header("content-encoding") is None and r.header("content-length") is not None
        r = await client.request("GET", "/plain/doc", [("accept-encoding", "gzip")])  # disabled here
        assert r.header("content-encoding") is None and r.header("vary") is None
        await client.aclose()
        s = proxy.stats
        assert s.value("http.ingress.compressor.gzip.compressed") == 2
        assert s.value("http.ingress.compressor.gzip.no_accept_header") == 1
        assert s.value("http.ingress.compressor.gzip.not_compressed") == 6  # not on /plain


async def test_gzip_remove_accept_encoding_header(autojump_clock: trio.testing.MockClock) -> None:
    """``remove_accept_encoding_header``: the backend sees no ``Accept-Encoding`` (so it never
    compresses), the client still gets gzip from the proxy; a route's ``overrides`` turns it off."""
    keep = {"typed_per_filter_config": {COMPRESSOR: {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute",
        "overrides": {"response_direction_config": {"remove_accept_encoding_header": False}}}}}  # fmt: skip
    config = compressor(remove_accept_encoding_header=True)
    async with proxied(filters(config), routes=[route("/keep", extra=keep), route("/")]) as (b, _, _app):
        client = Client(await connect(b))
        r = await client.request("GET", "/doc", [("accept-encoding", "gzip")])
        assert r.header("content-encoding") == "gzip"
        headers = json.loads(gzip.decompress(r.body))["headers"]
        assert not any(name == "accept-encoding" for name, _ in headers)
        r = await client.request("GET", "/keep/doc", [("accept-encoding", "gzip")])
        assert ["accept-encoding", "gzip"] in json.loads(gzip.decompress(r.body))["headers"]
        await client.aclose()


async def test_gzip_configured_types_and_a_large_streamed_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``content_type`` and ``min_content_length`` replace Envoy's defaults; a 1 MiB streamed body
    comes out as one gzip stream that decompresses to the exact bytes; ``disable_on_etag_header``
    is honoured."""
    config = compressor(
        common_config={"min_content_length": 100, "content_type": ["application/octet-stream"]}
    )
    async with proxied(filters(config)) as (b, proxy, _):
        client = Client(await connect(b))
        r = await client.request("GET", "/stream?bytes=1048576", [("accept-encoding", "gzip")])
        assert r.header("content-encoding") == "gzip" and len(r.body) < 1048576
        assert hashlib.sha256(gzip.decompress(r.body)).hexdigest() == pattern_sha256(1048576)
        r = await client.request("GET", "/doc", [("accept-encoding", "gzip")])  # JSON: not listed now
        assert r.header("content-encoding") is None
        await client.aclose()
        assert proxy.stats.value("http.ingress.compressor.gzip.total_uncompressed_bytes") == 1048576


# --- local_reply_config ---


async def test_local_reply_config_mappers_and_json_body(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy's local reply modification: the rate limiter's 429 is mapped (status 503, a body, a
    header); every local reply's body is formatted by ``body_format`` (JSON, %RESPONSE_CODE% a
    number); a ``direct_response`` is one too (Envoy's router sends it with ``sendLocalReply``), its
    body ``%LOCAL_REPLY_BODY%`` exactly; the backend's own answers are untouched."""
    local_reply = {
        "mappers": [
            {
                "filter": {"status_code_filter": {"comparison": {
                    "op": "EQ", "value": {"default_value": 429, "runtime_key": "k"}}}},
                "status_code": 503,
                "body": {"inline_string": "slow down"},
                "headers_to_add": [{"header": {"key": "x-mapped", "value": "1"}}],
            }
        ],
        "body_format": {"json_format": {"code": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%",
                                        "path": "%REQ(:path)%", "ua": "%REQ(USER-AGENT)%"}},
    }  # fmt: skip
    app = BackendApp("app")
    direct = route("/direct", direct={"status": 200, "body": {"inline_string": "as is"}})
    vhosts = [{"name": "all", "domains": ["*"], "routes": [direct, route("/app")]}]
    config = http_bootstrap(
        [cluster("app", [8080])], virtual_hosts=vhosts, http_filters=filters(ratelimit(2, "60s")),
        local_reply_config=local_reply,
    )  # fmt: skip
    async with setup(config, (app, 8080)) as (_, b, _proxy):
        (r,) = await many(b, 1, "/nowhere", [("user-agent", "t/1")])  # (a 404 closes the connection)
        assert r.status == 404 and r.header("content-type") == "application/json"
        assert json.loads(r.body) == {"code": 404, "message": "", "path": "/nowhere", "ua": "t/1"}
        (r,) = await many(b, 1, "/direct")
        assert r.status == 200 and r.header("content-type") == "application/json"
        assert json.loads(r.body) == {"code": 200, "message": "as is", "path": "/direct", "ua": None}
        (r,) = await many(b, 1, "/app/x")  # the bucket (2) is empty now
        assert r.status == 503 and r.header("x-mapped") == "1"
        assert json.loads(r.body)["message"] == "slow down" and json.loads(r.body)["code"] == 503


# --- cache ---

CACHE = "envoy.filters.http.cache"
CACHE_CONFIG = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
    },
    "allowed_vary_headers": [{"exact": "accept-language"}],
}


class CachingApp(BackendApp):
    """``/c?cc=...&vary=...``: answers ``<name> #<n>`` (n: requests seen) with that Cache-Control."""

    async def _http(
        self, path: str, query: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        if path != "/c":
            await super()._http(path, query, scope, receive, send)
            return
        body = f"{self.name} #{len(self.seen)}".encode()
        cache_control = query.get("cc", "max-age=60").encode()
        headers = [(b"content-type", b"text/plain"), (b"cache-control", cache_control),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        if "vary" in query:
            headers.append((b"vary", query["vary"].encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def test_cache_hits_by_cache_control(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy's cache filter: a response with ``max-age=60`` is served from memory (with ``Age``) for 60
    seconds, then fetched again; ``no-cache`` in the request goes upstream; ``no-store``/``private``
    responses and a Vary outside ``allowed_vary_headers`` are never kept; an allowed Vary keys the
    entry by that header's value."""
    app = CachingApp("app")
    config = http_bootstrap(
        [cluster("app", [8080])], http_filters=filters({"name": CACHE, "typed_config": CACHE_CONFIG})
    )
    async with setup(config, (app, 8080)) as (_, b, proxy):
        client = Client(await connect(b))

        async def body(target: str, headers: list[tuple[str, str]] | None = None) -> tuple[str, str | None]:
            r = await client.request("GET", target, headers or [])
            assert r.status == 200
            return r.body.decode(), r.header("age")

        assert await body("/c") == ("app #1", None)
        assert await body("/c") == ("app #1", "0")
        await trio.sleep(30)
        assert await body("/c") == ("app #1", "30")
        assert await body("/c", [("cache-control", "no-cache")]) == ("app #2", None)  # refreshed
        await trio.sleep(61)
        assert await body("/c") == ("app #3", None)  # stale: fetched again
        for cc in ("no-store", "private, max-age=60", "max-age=0"):
            target = f"/c?cc={cc.replace(' ', '')}"
            first, second = await body(target), await body(target)
            assert first[0] != second[0] and second[1] is None, cc
        assert (await body("/c?vary=user-agent"))[0] != (await body("/c?vary=user-agent"))[0]
        fr, en = [("accept-language", "fr")], [("accept-language", "en")]
        french = await body("/c?vary=accept-language", fr)
        assert await body("/c?vary=accept-language", fr) == (french[0], "0")
        assert (await body("/c?vary=accept-language", en))[0] != french[0]
        await client.aclose()
        assert proxy.stats.value("http.ingress.cache.hit") == 3
