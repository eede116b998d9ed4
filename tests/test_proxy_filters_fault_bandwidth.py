"""``envoy.filters.http.fault``'s ``response_rate_limit`` through the proxy: the response body of a
picked request leaves at the configured KiB/s (or the rate ``x-envoy-fault-throughput-response``
asks), as Envoy's stream rate limiter paces it: a second's worth at once, then 1/16 of it every
62.5 ms.  Times are read from trio's MockClock, so the pace is exact and the test quick."""

from __future__ import annotations

import hashlib
from typing import Any

import trio
import trio.testing
import yaml
from proxy_helpers import pattern_sha256
from test_proxy_config import HCM_PATH, minimal, paths_of
from test_proxy_filters import filters, many, proxied, route

from trio_yastack.l7.config import FaultRateLimit, FractionalPercent, HttpConnectionManager, load_config
from trio_yastack.l7.filters import limits_response_rate

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FAULT = "envoy.filters.http.fault"


def fault(text: str) -> dict[str, Any]:
    out: dict[str, Any] = yaml.safe_load(text)
    return out


FIXED = fault(
    f"""
    name: envoy.filters.http.fault
    typed_config:
      "@type": {FAULT_TYPE}
      response_rate_limit:
        fixed_limit: {{limit_kbps: 4}}
        percentage: {{numerator: 100}}
    """
)
HEADER = fault(
    f"""
    name: envoy.filters.http.fault
    typed_config:
      "@type": {FAULT_TYPE}
      max_active_faults: 1
      response_rate_limit:
        header_limit: {{}}
        percentage: {{numerator: 100}}
    """
)

SIZE = 20 * 1024  # five seconds' worth at 4 KiB/s: one at once, four paced


async def timed(b: Any, target: str, headers: list[tuple[str, str]] | None = None) -> tuple[float, Any]:
    start = trio.current_time()
    (r,) = await many(b, 1, target, headers)
    return trio.current_time() - start, r


async def test_fixed_limit_paces_the_body(autojump_clock: trio.testing.MockClock) -> None:
    """4 KiB/s on a 20 KiB body: the first 4 KiB at once, the other 16 in 4 s (Envoy's pace); the
    body arrives whole; the head is not held; ``response_rl_injected`` counts it and the active
    fault ends with the response."""
    async with proxied(filters(FIXED)) as (b, proxy, _app):
        took, r = await timed(b, f"/stream?bytes={SIZE}")
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == pattern_sha256(SIZE)
        assert 3.9 <= took <= 4.1, took
        # a body within the bucket is not delayed at all
        took, r = await timed(b, "/stream?bytes=4096")
        assert took < 0.1 and len(r.body) == 4096
        assert proxy.stats.value("http.ingress.fault.response_rl_injected") == 2
        assert proxy.stats.value("http.ingress.fault.active_faults") == 0


async def test_percentage_and_runtime_pick_requests(autojump_clock: trio.testing.MockClock) -> None:
    """``percentage`` 0 picks no request: the same body goes at once."""
    none = fault(yaml.safe_dump(FIXED).replace("numerator: 100", "numerator: 0"))
    async with proxied(filters(none)) as (b, proxy, _app):
        took, r = await timed(b, f"/stream?bytes={SIZE}")
        assert took < 0.1 and len(r.body) == SIZE
        assert proxy.stats.value("http.ingress.fault.response_rl_injected") == 0


async def test_header_limit_reads_the_request(autojump_clock: trio.testing.MockClock) -> None:
    """``header_limit``: ``x-envoy-fault-throughput-response: 2`` paces at 2 KiB/s (20 KiB: 9 s);
    without the header, or with one that is not a positive number, no limit."""
    async with proxied(filters(HEADER)) as (b, proxy, _app):
        took, r = await timed(b, f"/stream?bytes={SIZE}", [("x-envoy-fault-throughput-response", "2")])
        assert 8.9 <= took <= 9.1 and len(r.body) == SIZE, took
        for headers in (
            [],
            [("x-envoy-fault-throughput-response", "0")],
            [("x-envoy-fault-throughput-response", "x")],
        ):
            took, r = await timed(b, f"/stream?bytes={SIZE}", headers)
            assert took < 0.1 and len(r.body) == SIZE, headers
        assert proxy.stats.value("http.ingress.fault.response_rl_injected") == 1


async def test_max_active_faults_counts_paced_responses(autojump_clock: trio.testing.MockClock) -> None:
    """A paced response is an active fault until it ends: with ``max_active_faults: 1`` a second
    request while the first is paced overflows (and goes unpaced)."""
    slow = [("x-envoy-fault-throughput-response", "1")]
    async with proxied(filters(HEADER)) as (b, proxy, _app):
        times: dict[str, float] = {}

        async def one(name: str) -> None:
            times[name], _ = await timed(b, f"/stream?bytes={SIZE}", slow)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "first")
            await trio.sleep(0.5)
            nursery.start_soon(one, "second")
        assert times["first"] > 18 and times["second"] < 0.1, times
        assert proxy.stats.value("http.ingress.fault.faults_overflow") == 1
        assert proxy.stats.value("http.ingress.fault.active_faults") == 0


async def test_route_override_limits_one_route(autojump_clock: trio.testing.MockClock) -> None:
    """A route's own HTTPFault with a ``response_rate_limit`` paces that route only."""
    per_route = FIXED["typed_config"]
    paced = route(
        headers=[{"name": "x-paced", "exact_match": "yes"}],
        extra={"typed_per_filter_config": {FAULT: per_route}},
    )
    routes = [paced, route("/")]
    nothing = {"name": FAULT, "typed_config": {"@type": FAULT_TYPE}}
    async with proxied(filters(nothing), routes=routes) as (b, _proxy, _app):
        took, r = await timed(b, f"/stream?bytes={SIZE}", [("x-paced", "yes")])
        assert 3.9 <= took <= 4.1 and len(r.body) == SIZE, took
        took, _ = await timed(b, f"/stream?bytes={SIZE}")
        assert took < 0.1


def test_config_read_and_mistakes() -> None:
    doc = minimal()
    hcm_config = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm_config["http_filters"].insert(0, FIXED)
    config = load_config(yaml.safe_dump(doc)).listeners[0].filter_chains[0].filter
    assert isinstance(config, HttpConnectionManager) and limits_response_rate(config)
    fault_config = config.http_filters[0].config
    assert fault_config.response_rate_limit == FaultRateLimit(4, FractionalPercent(100, 100))  # type: ignore[union-attr]  # the fault's config
    bad: list[tuple[dict[str, Any], str]] = [
        ({"fixed_limit": {"limit_kbps": 0}}, "response_rate_limit.fixed_limit.limit_kbps"),
        ({"fixed_limit": {"limit_kbps": 1}, "header_limit": {}}, "response_rate_limit.header_limit"),
        ({"percentage": {"numerator": 5}}, "response_rate_limit"),
        ({"header_limit": {"x": 1}}, "response_rate_limit.header_limit.x"),
    ]
    for limit, path in bad:
        doc = minimal()
        hcm_config = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm_config["http_filters"].insert(
            0, {"name": FAULT, "typed_config": {"@type": FAULT_TYPE, "response_rate_limit": limit}}
        )
        assert paths_of(doc) == [f"{HCM_PATH}.http_filters[0].typed_config.{path}"], limit


async def test_percentage_headers_lower_header_faults(autojump_clock: trio.testing.MockClock) -> None:
    """A header-controlled fault's ``x-envoy-fault-*-percentage`` sets its percentage, capped by the
    configured one: 0 turns the abort (and the bandwidth limit) off, 100 keeps the configured
    100 %, and with 0 % configured no header turns it on."""
    aborts = fault(
        f"""
        name: envoy.filters.http.fault
        typed_config:
          "@type": {FAULT_TYPE}
          abort: {{header_abort: {{}}, percentage: {{numerator: 100}}}}
        """
    )
    abort = [("x-envoy-fault-abort-request", "503")]
    async with proxied(filters(aborts)) as (b, _proxy, _app):
        off = [*abort, ("x-envoy-fault-abort-request-percentage", "0")]
        on = [*abort, ("x-envoy-fault-abort-request-percentage", "100")]
        assert [r.status for r in await many(b, 3, "/", off)] == [200] * 3
        assert [r.status for r in await many(b, 3, "/", on)] == [503] * 3
    aborts["typed_config"]["abort"]["percentage"] = {"numerator": 0}
    async with proxied(filters(aborts)) as (b, _proxy, _app):
        on = [*abort, ("x-envoy-fault-abort-request-percentage", "100")]
        assert [r.status for r in await many(b, 3, "/", on)] == [200] * 3
    async with proxied(filters(HEADER)) as (b, _proxy, _app):
        slow = [
            ("x-envoy-fault-throughput-response", "2"),
            ("x-envoy-fault-throughput-response-percentage", "0"),
        ]
        took, r = await timed(b, f"/stream?bytes={SIZE}", slow)
        assert took < 0.1 and len(r.body) == SIZE


async def test_header_abort_takes_a_grpc_status_header(autojump_clock: trio.testing.MockClock) -> None:
    """``header_abort`` without ``x-envoy-fault-abort-request`` reads
    ``x-envoy-fault-abort-grpc-request``: a gRPC answer (200, ``grpc-status``, no body); the HTTP
    header wins when both are there."""
    aborts = fault(
        f"""
        name: envoy.filters.http.fault
        typed_config:
          "@type": {FAULT_TYPE}
          abort: {{header_abort: {{}}, percentage: {{numerator: 100}}}}
        """
    )
    async with proxied(filters(aborts)) as (b, _proxy, _app):
        (r,) = await many(b, 1, "/", [("x-envoy-fault-abort-grpc-request", "14")])
        assert (r.status, r.header("grpc-status"), r.header("content-type")) == (
            200,
            "14",
            "application/grpc",
        )
        assert r.header("grpc-message") == "fault filter abort"
        both = [("x-envoy-fault-abort-grpc-request", "14"), ("x-envoy-fault-abort-request", "502")]
        (r,) = await many(b, 1, "/", both)
        assert r.status == 502 and r.header("grpc-status") is None
