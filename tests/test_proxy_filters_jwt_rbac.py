"""Authorization on a verified token's claims, as Envoy users write it: ``jwt_authn`` writes the
payload into the request's dynamic metadata (``payload_in_metadata``, with
``normalize_payload_in_metadata`` splitting ``scope`` into a list), and ``rbac`` decides on it with
``metadata`` and ``sourced_metadata`` matchers (``ValueMatcher``: string, list, bool, double
range, present, or).  A request without a token has no metadata, so only ``present_match: false``
style rules see it.

On the in-process simulator under trio's MockClock: the proxy on stack A (198.18.0.2:10000), the
backend and the clients on stack B (198.18.0.1).  Tokens are signed here with PyJWT.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect, running_proxy, start_backend
from socket_helpers import two_stacks
from test_proxy_filters_jwt import LOCAL_JWKS, token

from trio_yastack.l7.config import HCM_TYPE, ConfigError, load_config
from trio_yastack.l7.config._auth_filters import MetadataMatcher, ValueMatcher
from trio_yastack.l7.config._core import StringMatcher
from trio_yastack.l7.filters._rbac import metadata_matches

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
              providers:
                local:
                  issuer: https://issuer.example
                  local_jwks: {inline_string: 'LOCAL_JWKS'}
                  payload_in_metadata: claims
                  header_in_metadata: jwt_header
                  normalize_payload_in_metadata: {space_delimited_claims: [scope]}
              rules:
              - match: {prefix: /}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: local
                    - allow_missing: {}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "writers":
                    permissions:
                    - and_rules:
                        rules:
                        - header: {name: ":method", string_match: {exact: POST}}
                        - metadata:
                            filter: envoy.filters.http.jwt_authn
                            path: [{key: claims}, {key: scope}]
                            value: {list_match: {one_of: {string_match: {exact: write}}}}
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{key: claims}, {key: sub}]
                        value:
                          or_match:
                            value_matchers:
                            - string_match: {exact: alice}
                            - string_match: {prefix: "svc-"}
                  "admins-read-anything":
                    permissions: [{header: {name: ":method", string_match: {exact: GET}}}]
                    principals:
                    - sourced_metadata:
                        metadata_source: DYNAMIC
                        metadata_matcher:
                          filter: envoy.filters.http.jwt_authn
                          path: [{key: claims}, {key: admin}]
                          value: {bool_match: true}
                  "anonymous-public":
                    permissions: [{url_path: {path: {prefix: /public}}}]
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{key: claims}]
                        value: {present_match: true}
                        invert: true
          - name: envoy.filters.http.router
""".replace("HCM_TYPE", HCM_TYPE).replace("LOCAL_JWKS", LOCAL_JWKS)


async def test_rbac_on_jwt_claims_in_dynamic_metadata(autojump_clock: trio.testing.MockClock) -> None:
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(CONFIG), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))

                async def status(method: str, path: str, **claims: object) -> int:
                    headers = [("authorization", f"Bearer {token(**claims)}")] if claims else []
                    return (
                        await client.request(method, path, headers, body=b"x" if method == "POST" else b"")
                    ).status

                assert await status("POST", "/doc", sub="alice", scope="read write") == 200
                assert await status("POST", "/doc", sub="svc-billing", scope="write") == 200
                assert await status("POST", "/doc", sub="alice", scope="read") == 403  # no write scope
                assert await status("POST", "/doc", sub="mallory", scope="write") == 403
                assert await status("GET", "/doc", sub="alice", admin=True) == 200
                assert await status("GET", "/doc", sub="alice", admin="true") == 403  # a string, not a bool
                assert await status("GET", "/doc", sub="alice") == 403
                assert await status("GET", "/public/a") == 200  # no token: no claims in metadata
                assert await status("GET", "/public/a", sub="alice") == 403  # claims present: not anonymous
                await client.aclose()
                assert len(app.seen) == 4
        backend.stop()


def test_metadata_matcher_values() -> None:
    """Envoy's ``ValueMatcher`` on JSON values: numbers in ``[start, end)``, ``null``, a missing
    path (only ``present_match: false`` matches it), ``invert``."""
    meta = {"ns": {"n": 5, "none": None, "deep": {"flag": False}}}

    def m(path: tuple[str, ...], value: ValueMatcher, invert: bool = False) -> bool:
        return metadata_matches(MetadataMatcher("ns", path, value, invert), meta)

    assert m(("n",), ValueMatcher("double", number_range=(5, 6)))
    assert not m(("n",), ValueMatcher("double", number_range=(1, 5)))
    assert m(("n",), ValueMatcher("double", number=5.0))
    assert m(("none",), ValueMatcher("null")) and not m(("n",), ValueMatcher("null"))
    assert m(("deep", "flag"), ValueMatcher("bool", flag=False))
    assert m(("deep", "gone"), ValueMatcher("present", flag=False))
    assert not m(("deep", "gone"), ValueMatcher("string", string=StringMatcher("exact", "")))
    assert m(("deep", "gone"), ValueMatcher("present", flag=True), invert=True)
    assert not metadata_matches(MetadataMatcher("other", ("n",), ValueMatcher("present", flag=True)), meta)


def test_rbac_metadata_config_mistakes() -> None:
    """A metadata matcher without a path, a ValueMatcher with two patterns, an ``or_match`` of one,
    and route metadata (routes carry none here) are errors at their paths."""
    bad = (
        CONFIG.replace("path: [{key: claims}, {key: sub}]", "path: []")
        .replace("value: {bool_match: true}", "value: {bool_match: true, present_match: true}")
        .replace("metadata_source: DYNAMIC", "metadata_source: ROUTE")
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    text = str(e.value)
    assert "policies.writers.principals[0].metadata.path: needs at least 1 item" in text
    assert "sourced_metadata.metadata_source: 'ROUTE' is not one of" in text
    assert "metadata_matcher.value.present_match: only one of null_match" in text


LUA_AND_RBAC = """          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h)
                    local meta = h:streamInfo():dynamicMetadata()
                    local jwt = meta:get("envoy.filters.http.jwt_authn")
                    if jwt ~= nil then h:headers():add("x-sub", jwt["claims"]["sub"]) end
                    if h:headers():get("x-gold") then meta:set("acme.tier", "tier", "gold") end
                    meta:set("acme.tier", "scopes", {"a", "b"})
                  end
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "gold":
                    permissions:
                    - metadata:
                        filter: acme.tier
                        path: [{key: scopes}]
                        value: {list_match: {one_of: {string_match: {exact: b}}}}
                    principals:
                    - metadata:
                        filter: acme.tier
                        path: [{key: tier}]
                        value: {string_match: {exact: gold}}
          - name: envoy.filters.http.router
"""


async def test_lua_dynamic_metadata_read_and_written(autojump_clock: trio.testing.MockClock) -> None:
    """Lua's ``streamInfo():dynamicMetadata()``: it reads what ``jwt_authn`` wrote (the claims) and
    writes its own namespace, which RBAC then matches (a string, and a table as a list)."""
    head = CONFIG[: CONFIG.index("          - name: envoy.filters.http.rbac")]
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(head + LUA_AND_RBAC), a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                auth = ("authorization", f"Bearer {token(sub='alice')}")
                assert (await client.request("GET", "/", [auth, ("x-gold", "1")])).status == 200
                assert app.seen[-1].header("x-sub") == "alice"
                assert (await client.request("GET", "/", [auth])).status == 403
                assert (
                    await client.request("GET", "/", [("x-gold", "1")])
                ).status == 200  # no token: no x-sub
                assert app.seen[-1].header("x-sub") is None
                await client.aclose()
                assert proxy.stats.value("http.ingress.lua.errors") == 0
        backend.stop()


async def test_jwt_failed_status_in_metadata(autojump_clock: trio.testing.MockClock) -> None:
    """``failed_status_in_metadata``: with ``allow_missing_or_failed`` a bad token passes
    jwt_authn, its failure (jwt_verify_lib's status number and message) in the metadata, where an
    RBAC DENY policy finds an expired token's code (3) and refuses it."""
    import time

    head = (
        CONFIG[: CONFIG.index("          - name: envoy.filters.http.rbac")]
        .replace(
            "                  payload_in_metadata: claims\n",
            "                  payload_in_metadata: claims\n"
            "                  failed_status_in_metadata: failure\n",
        )
        .replace("allow_missing: {}", "allow_missing_or_failed: {}")
    )
    deny_expired = """          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  "expired-tokens":
                    permissions: [{any: true}]
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{key: failure}, {key: code}]
                        value: {double_match: {exact: 3}}
          - name: envoy.filters.http.router
"""
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(load_config(head + deny_expired), a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))

                async def status(jwt: str) -> int:
                    return (await client.request("GET", "/", [("authorization", f"Bearer {jwt}")])).status

                assert await status(token(sub="alice")) == 200
                assert await status(token(sub="alice", exp=int(time.time()) - 3600)) == 403
                assert await status(token(sub="alice", iss="https://elsewhere")) == 200  # another failure
                assert await status("not-a-token") == 200
                await client.aclose()
        backend.stop()
