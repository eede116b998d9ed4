"""``envoy.filters.http.jwt_authn``'s provider restrictions and filter options, as Envoy's API
documents them: ``subjects`` (the ``sub`` claim must match), ``require_expiration`` (an ``exp`` is
required), ``max_lifetime`` (and the remaining lifetime must be below it), each failing as 401 ``Jwt
verification fails``; a rule's ``requirement_name``; ``stat_prefix`` (counters under
``jwt_authn.<stat_prefix>``); ``strip_failure_response`` (the status alone).  And the config mistakes
these fields can carry, each named by its path.

On the in-process simulator under trio's MockClock: the proxy on stack A (198.18.0.2:10000), the
backend and the clients on stack B (198.18.0.1).  Tokens are signed here with PyJWT.
"""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, Response, connect, running_proxy, start_backend
from socket_helpers import two_stacks
from test_proxy_filters_jwt import LOCAL_JWKS, token

from trio_yastack.l7.config import HCM_TYPE, ConfigError, load_config

LIMIT = 60

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
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              stat_prefix: edge.
              providers:
                workload:
                  issuer: https://issuer.example
                  local_jwks: {inline_string: 'LOCAL_JWKS'}
                  subjects: {prefix: "spiffe://example.org/"}
                  max_lifetime: 3600s
                expiring:
                  issuer: https://issuer.example
                  local_jwks: {inline_string: 'LOCAL_JWKS'}
                  require_expiration: true
              rules:
              - match: {prefix: /workload}
                requires: {provider_name: workload}
              - match: {prefix: /expiring}
                requirement_name: needs-exp
              requirement_map:
                needs-exp: {provider_name: expiring}
          - name: envoy.filters.http.router
""".replace("HCM_TYPE", HCM_TYPE).replace("LOCAL_JWKS", LOCAL_JWKS)

SPIFFE = "spiffe://example.org/web"


async def test_jwt_subjects_expiration_and_lifetime(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))

                async def get(path: str, jwt: str) -> Response:
                    return await client.request("GET", path, [("authorization", f"Bearer {jwt}")])

                def fails(r: Response) -> bool:
                    return r.status == 401 and r.body == b"Jwt verification fails\n"

                now = int(time.time())
                assert (await get("/workload", token(sub=SPIFFE))).status == 200
                assert fails(await get("/workload", token(sub="alice")))  # subject not allowed
                assert fails(await get("/workload", token(sub=None)))  # no subject at all
                assert fails(await get("/workload", token(sub=SPIFFE, exp=now + 7200)))  # lives too long
                assert fails(await get("/workload", token(sub=SPIFFE, exp=None)))  # no exp with max_lifetime
                r = await get("/workload", token(sub=SPIFFE, exp=now - 3600))
                assert r.status == 401 and r.body == b"Jwt is expired\n"  # the time check comes first

                assert (await get("/expiring", token(exp=now + 7200))).status == 200  # no limit here
                r = await get("/expiring", token(exp=None))
                assert fails(r) and r.header("www-authenticate") == (
                    'Bearer realm="http://proxy.test/expiring", error="invalid_token"'
                )
                r = await client.request("GET", "/expiring")  # the rule's requirement_name applies
                assert r.status == 401 and r.body == b"Jwt is missing\n"
                assert (await client.request("GET", "/other")).status == 200  # no rule matches
                await client.aclose()
                assert proxy.stats.value("http.ingress.jwt_authn.edge.allowed") == 2
                assert proxy.stats.value("http.ingress.jwt_authn.edge.denied") == 7
                assert [s.path for s in app.seen] == ["/workload", "/expiring", "/other"]
        backend.stop()


async def test_jwt_strip_failure_response(autojump_clock: trio.testing.MockClock) -> None:
    config = CONFIG.replace(
        "              stat_prefix: edge.\n", "              strip_failure_response: true\n"
    )
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(config), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request(
                    "GET", "/workload", [("authorization", f"Bearer {token(sub='alice')}")]
                )
                assert r.status == 401 and r.body == b"" and r.header("www-authenticate") is None
                r = await client.request("GET", "/expiring")
                assert r.status == 401 and r.body == b"" and r.header("www-authenticate") is None
                await client.aclose()
                assert proxy.stats.value("http.ingress.jwt_authn.denied") == 2
        backend.stop()


def test_jwt_lifetime_config_mistakes_named_by_path() -> None:
    """A rule naming a requirement the map lacks, a rule with both ``requires`` and
    ``requirement_name``, a negative ``max_lifetime``, and the fields outside the subset
    (``filter_state_rules``: there is no filter state here) are errors at their paths."""
    bad = (
        CONFIG.replace("requirement_name: needs-exp", "requirement_name: nothing")
        .replace("max_lifetime: 3600s", "max_lifetime: -5s")
        .replace(
            "              stat_prefix: edge.\n",
            "              stat_prefix: edge.\n              filter_state_rules: {name: x}\n",
        )
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    text = str(e.value)
    base = (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
    )
    assert f"{base}.rules[1].requirement_name: 'nothing' is not in requirement_map (needs-exp)" in text
    assert f"{base}.providers.workload.max_lifetime: '-5s' must not be negative" in text
    assert f"{base}.filter_state_rules: unsupported field" in text
    rule = "                requires: {provider_name: workload}\n"
    with pytest.raises(ConfigError) as e:
        load_config(CONFIG.replace(rule, rule + "                requirement_name: needs-exp\n"))
    assert f"{base}.rules[0].requirement_name: only one of requires, requirement_name may be set" in str(
        e.value
    )


@pytest.mark.parametrize("clear", [True, False])
async def test_jwt_clear_route_cache(autojump_clock: trio.testing.MockClock, clear: bool) -> None:
    """A provider's ``clear_route_cache``: the header ``claim_to_headers`` added (the token's
    ``sub``) chooses the route again, here one matching on it; without it the route stays."""
    config = CONFIG.replace(
        "              routes:\n",
        """              routes:
              - match: {prefix: "/", headers: [{name: x-jwt-sub, string_match: {exact: "spiffe://example.org/web"}}]}
                direct_response: {status: 200, body: {inline_string: "the web workload's route"}}
""",
        1,
    ).replace(
        "                  max_lifetime: 3600s\n",
        "                  max_lifetime: 3600s\n"
        "                  claim_to_headers: [{header_name: x-jwt-sub, claim_name: sub}]\n"
        + ("                  clear_route_cache: true\n" if clear else ""),
    )
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(config), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request(
                    "GET", "/workload", [("authorization", f"Bearer {token(sub=SPIFFE)}")]
                )
                if clear:
                    assert r.body == b"the web workload's route" and app.seen == []
                else:
                    assert r.status == 200 and app.seen[-1].header("x-jwt-sub") == SPIFFE
                await client.aclose()
        backend.stop()
