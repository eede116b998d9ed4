"""``jwt_authn``'s remote JWKS as Envoy fetches it: ``retry_policy`` (more attempts on its
``retry_on`` conditions, after a back-off, within the ``http_uri`` timeout) and ``async_fetch``
(fetched by the proxy before its listeners open, unless ``fast_listener``; refreshed every
``cache_duration``, again ``failed_refetch_duration`` after a failure; requests never fetch and
keep the last keys).  The proxy, the backend and the identity provider run on the simulator under
trio's MockClock, as in test_proxy_filters_jwt.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, Response, connect, running_proxy, start_backend
from socket_helpers import two_stacks
from test_proxy_filters_jwt import CONFIG, REMOTE_JWKS, partner_token

from trio_yastack.l7.config import ConfigError, JwksRetryPolicy, load_config
from trio_yastack.l7.proxy import Proxy

LIMIT = 300
REMOTE = """                    cache_duration: 60s
"""


class FlakyJwks(BackendApp):
    """A JWKS endpoint answering the statuses of ``plan`` first (then 200), each after ``delay``
    seconds (BackendApp's), counting its answers and when they left."""

    def __init__(self, plan: list[int] | None = None, delay: float = 0.0) -> None:
        super().__init__("idp")
        self.plan = list(plan or [])
        self.delay = delay
        self.times: list[float] = []

    async def _http(
        self, path: str, query: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        self.times.append(trio.current_time())
        status = self.plan.pop(0) if self.plan else 200
        body = json.dumps(REMOTE_JWKS).encode() if status == 200 else b"busy"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def config_with(remote_extra: str) -> str:
    """test_proxy_filters_jwt's config, the partner's ``remote_jwks`` given ``remote_extra``."""
    assert REMOTE in CONFIG
    return CONFIG.replace(REMOTE, REMOTE + remote_extra)


@asynccontextmanager
async def running(text: str, idp: FlakyJwks | None) -> AsyncIterator[tuple[Any, Proxy, float]]:
    """The proxy (on A) with the backend and ``idp`` (None: nothing on the JWKS port) on B; and
    the time the proxy's listeners opened."""
    config = load_config(text)
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080)]
        if idp is not None:
            backends.append(await start_backend(nursery, idp, b, 8090))
        start = trio.current_time()
        async with running_proxy(config, a) as proxy:
            opened = trio.current_time() - start
            with trio.fail_after(LIMIT):
                yield b, proxy, opened
        for backend in backends:
            backend.stop()


async def named(b: Any) -> Response:
    client = Client(await connect(b))
    try:
        return await client.request("GET", "/named", [("x-partner-token", f"Token {partner_token()}")])
    finally:
        await client.aclose()


def counts(proxy: Proxy) -> tuple[int, int]:
    s = proxy.stats
    return s.value("http.ingress.jwt_authn.jwks_fetch_success"), s.value(
        "http.ingress.jwt_authn.jwks_fetch_failed"
    )


RETRY = """                    retry_policy:
                      retry_back_off: {base_interval: 0.1s, max_interval: 0.2s}
                      num_retries: 3
"""


async def test_retry_policy_retries_a_busy_jwks(autojump_clock: trio.testing.MockClock) -> None:
    """503 twice, then the keys: the request waits for the third attempt and passes; one fetch
    counted, a success; the back-offs are below (2**n - 1) x 0.1 s and at most 0.2 s."""
    idp = FlakyJwks([503, 503])
    async with running(config_with(RETRY), idp) as (b, proxy, _):
        r = await named(b)
        assert r.status == 200, r.body
        assert len(idp.times) == 3 and counts(proxy) == (1, 0)
        gaps = [later - earlier for earlier, later in zip(idp.times, idp.times[1:], strict=False)]
        assert gaps[0] < 0.1 + 0.05 and gaps[1] < 0.2 + 0.05, gaps


async def test_without_retry_policy_one_attempt(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy's default: no retries; the 503 fails the request (401 ``Jwks remote fetch is failed``)."""
    idp = FlakyJwks([503])
    async with running(config_with(""), idp) as (b, proxy, _):
        r = await named(b)
        assert (r.status, r.body) == (401, b"Jwks remote fetch is failed\n")
        assert len(idp.times) == 1 and counts(proxy) == (0, 1)
        assert (await named(b)).status == 200  # the next request fetches again


async def test_retry_on_and_the_timeout_bound_the_attempts(autojump_clock: trio.testing.MockClock) -> None:
    """``retry_on: connect-failure`` does not retry a 503; the ``http_uri`` timeout (2 s) bounds
    every attempt and back-off together."""
    only_connect = RETRY + "                      retry_on: connect-failure\n"
    idp = FlakyJwks([503, 503])
    async with running(config_with(only_connect), idp) as (b, proxy, _):
        assert (await named(b)).status == 401
        assert len(idp.times) == 1 and counts(proxy) == (0, 1)
    slow = FlakyJwks([503] * 10, delay=0.8)
    async with running(config_with(RETRY), slow) as (b, proxy, _):
        start = trio.current_time()
        assert (await named(b)).status == 401
        assert trio.current_time() - start < 2.1 and len(slow.times) <= 3
        assert counts(proxy) == (0, 1)


ASYNC = """                    async_fetch: {failed_refetch_duration: 5s}
"""


async def test_async_fetch_before_the_listeners_and_refreshed(autojump_clock: trio.testing.MockClock) -> None:
    """The proxy fetches the JWKS before its listeners open (the fetch takes 1.5 s here, so they
    open after it); requests use those keys without fetching; every ``cache_duration`` (60 s) the
    keys are fetched again; a failed refetch keeps the old keys (requests still pass) and is tried
    again after ``failed_refetch_duration`` (5 s)."""
    idp = FlakyJwks(delay=1.5)
    async with running(config_with(ASYNC), idp) as (b, proxy, opened):
        assert opened >= 1.5 and len(idp.times) == 1
        first = await named(b)
        assert first.status == 200, counts(proxy)
        assert [(await named(b)).status for _ in range(2)] == [200, 200]
        assert len(idp.times) == 1 and counts(proxy) == (1, 0)
        idp.plan = [503]
        await trio.sleep(60 + 1.5 + 0.5)  # the refresh, 60 s after the first fetch ended: it fails
        assert len(idp.times) == 2 and counts(proxy) == (1, 1)
        assert (await named(b)).status == 200  # the old keys
        await trio.sleep(5 + 1.5)  # tried again 5 s after: keys
        assert len(idp.times) == 3 and counts(proxy) == (2, 1)


async def test_async_fetch_failed_then_requests_fail_without_fetching(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No JWKS server: the first fetch fails (the listeners open anyway, Envoy's rule); requests
    get 401 ``Jwks remote fetch is failed`` and do not fetch; ``fast_listener`` opens the
    listeners before the first fetch ends."""
    async with running(config_with(ASYNC), None) as (b, proxy, _):
        r = await named(b)
        assert (r.status, r.body) == (401, b"Jwks remote fetch is failed\n")
        assert counts(proxy) == (0, 1)  # the proxy's own fetch, not the request's
    fast = ASYNC.replace("{", "{fast_listener: true, ")
    idp = FlakyJwks(delay=1.5)
    async with running(config_with(fast), idp) as (b, proxy, opened):
        assert opened < 1.5
        await trio.sleep(2)
        assert (await named(b)).status == 200 and len(idp.times) == 1


def test_retry_policy_config() -> None:
    config = load_config(config_with(RETRY))
    hcm = config.listeners[0].filter_chains[0].filter
    jwt_config = hcm.http_filters[0].config  # type: ignore[union-attr]  # an HTTP connection manager
    (remote,) = [p.remote_jwks for p in jwt_config.providers if p.remote_jwks is not None]  # type: ignore[union-attr]  # the jwt_authn config
    assert remote.retry_policy == JwksRetryPolicy(
        3, ("5xx", "gateway-error", "connect-failure", "reset"), 0.1, 0.2
    )


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("                    retry_policy: {retry_on: \"5xx,bogus\"}\n", "retry_policy.retry_on"),
        ("                    retry_policy: {retry_back_off: {max_interval: 1s}}\n",
         "retry_policy.retry_back_off.base_interval"),
        ("                    retry_policy: {retry_back_off: {base_interval: 2s, max_interval: 1s}}\n",
         "retry_policy.retry_back_off.max_interval"),
        ("                    retry_policy: {retry_priority: {name: x}}\n", "retry_policy.retry_priority"),
        ("                    async_fetch: {fast_listener: 1}\n", "async_fetch.fast_listener"),
    ],
)  # fmt: skip
def test_remote_jwks_mistakes_named_by_path(extra: str, path: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(config_with(extra))
    assert f"providers.partner.remote_jwks.{path}" in str(e.value)
