"""``envoy.filters.http.jwt_authn`` against Envoy's documented behaviour: providers with an issuer,
audiences, an inline JWKS and a remote JWKS fetched from a cluster and cached for
``cache_duration``; tokens from ``Authorization: Bearer``, a custom header with a prefix and a query
parameter; ``forward``, ``forward_payload_header`` and ``claim_to_headers``; rules with
``provider_name``, ``requires_any``, ``requires_all``, ``allow_missing`` and
``allow_missing_or_failed``; the per-route ``PerRouteConfig``; and Envoy's failure replies (401
``Jwt is missing`` / ``Jwt verification fails`` / ``Jwt is expired`` with ``WWW-Authenticate``, 403
for an audience not allowed).

Tokens are signed with keys made here (``cryptography``) by PyJWT, as an identity provider would.
Everything runs on the in-process simulator under trio's MockClock: the proxy on stack A
(198.18.0.2:10000), the backend, the JWKS server and the clients on stack B (198.18.0.1).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from proxy_helpers import BackendApp, Client, Response, connect, running_proxy, start_backend
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, ConfigError, load_config

LIMIT = 300

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    out: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return out | {"kid": kid, "alg": alg, "use": "sig"}


LOCAL_JWKS = json.dumps({"keys": [jwk(RSA_KEY, "local-1", "RS256")]})
REMOTE_JWKS = {"keys": [jwk(EC_KEY, "remote-1", "ES256")]}


def token(key: Any = RSA_KEY, kid: str = "local-1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "https://issuer.example", "sub": "alice", "aud": "api", "iat": now, "exp": now + 600}
    payload |= claims
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


class JwksApp(BackendApp):
    """An identity provider's JWKS endpoint (``/.well-known/jwks.json``), counting its fetches."""

    def __init__(self) -> None:
        super().__init__("idp")
        self.fetches = 0

    async def _http(
        self, path: str, query: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        self.fetches += 1
        body = json.dumps(REMOTE_JWKS).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
  - name: idp
    connect_timeout: 1s
    load_assignment:
      cluster_name: idp
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 198.18.0.1, port_value: 8090}}}
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
              - match: {prefix: "/open"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    disabled: true
              - match: {prefix: "/named"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    requirement_name: partner-only
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                local:
                  issuer: https://issuer.example
                  audiences: [api, api.example]
                  local_jwks:
                    inline_string: 'LOCAL_JWKS'
                  forward_payload_header: x-jwt-payload
                  claim_to_headers:
                  - {header_name: x-jwt-sub, claim_name: sub}
                  - {header_name: x-jwt-tier, claim_name: plan.tier}
                partner:
                  issuer: https://partner.example
                  remote_jwks:
                    http_uri:
                      uri: http://idp.example/.well-known/jwks.json
                      cluster: idp
                      timeout: 2s
                    cache_duration: 60s
                  from_headers:
                  - {name: x-partner-token, value_prefix: "Token "}
                  from_params: [partner_token]
                  from_cookies: [partner_session]
                  forward: true
              rules:
              - match: {prefix: /public}
              - match: {prefix: /either}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: local
                    - provider_name: partner
              - match: {prefix: /both}
                requires:
                  requires_all:
                    requirements:
                    - provider_name: local
                    - provider_name: partner
              - match: {prefix: /maybe}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: local
                    - allow_missing: {}
              - match: {prefix: /lenient}
                requires: {allow_missing_or_failed: {}}
              - match: {prefix: /aud}
                requires:
                  provider_and_audiences: {provider_name: local, audiences: [other-api]}
              - match: {prefix: /}
                requires: {provider_name: local}
              requirement_map:
                partner-only: {provider_name: partner}
          - name: envoy.filters.http.router
""".replace("HCM_TYPE", HCM_TYPE).replace("LOCAL_JWKS", LOCAL_JWKS)


def partner_token(**claims: Any) -> str:
    return token(EC_KEY, "remote-1", "ES256", iss="https://partner.example", **claims)


def check_denied(r: Response, status: int, body: str, path: str, *, invalid: bool = True) -> None:
    """Envoy's reply: the status, jwt_verify_lib's message, and the Bearer challenge."""
    assert r.status == status, (r.status, r.body)
    assert r.body == body.encode() + b"\n"  # the proxy's local replies end with a newline
    realm = f'Bearer realm="http://proxy.test{path}"'
    assert r.header("www-authenticate") == (realm + ', error="invalid_token"' if invalid else realm)


async def test_jwt_providers_rules_and_envoy_failure_replies(autojump_clock: trio.testing.MockClock) -> None:
    config = load_config(CONFIG)
    app, idp = BackendApp("app"), JwksApp()
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backends = [await start_backend(nursery, app, b, 8080), await start_backend(nursery, idp, b, 8090)]
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))

                async def get(path: str, *headers: tuple[str, str]) -> Response:
                    return await client.request("GET", path, list(headers))

                good = token(plan={"tier": "gold"})
                r = await get("/api", ("authorization", f"Bearer {good}"))
                assert r.status == 200, r.body
                seen = app.seen[-1]
                assert seen.header("authorization") is None  # forward: false takes the token off
                assert seen.header("x-jwt-sub") == "alice" and seen.header("x-jwt-tier") == "gold"
                payload = seen.header("x-jwt-payload")
                assert payload is not None and "=" not in payload
                assert json.loads(base64.urlsafe_b64decode(payload + "==="))["sub"] == "alice"
                # a forged x-jwt-sub from the client is replaced, not passed along beside the claim
                r = await get("/api", ("authorization", f"bearer {good}"), ("x-jwt-sub", "mallory"))
                assert r.status == 200 and app.seen[-1].header("x-jwt-sub") == "alice"

                check_denied(await get("/api"), 401, "Jwt is missing", "/api", invalid=False)
                forged = token(OTHER_KEY)  # same kid, another key
                check_denied(await get("/api", ("authorization", f"Bearer {forged}")), 401,
                             "Jwt verification fails", "/api")  # fmt: skip
                expired = token(exp=int(time.time()) - 3600)
                check_denied(await get("/api?x=1", ("authorization", f"Bearer {expired}")), 401,
                             "Jwt is expired", "/api?x=1")  # fmt: skip
                stranger = token(aud="someone-else")
                check_denied(await get("/api", ("authorization", f"Bearer {stranger}")), 403,
                             "Audiences in Jwt are not allowed", "/api")  # fmt: skip
                bad_form = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
                check_denied(await get("/api", ("authorization", "Bearer abc.def")), 401, bad_form, "/api")
                wrong_iss = token(iss="https://elsewhere.example")
                check_denied(await get("/api", ("authorization", f"Bearer {wrong_iss}")), 401,
                             "Jwt issuer is not configured", "/api")  # fmt: skip
                assert len(app.seen) == 2

                # rules: no requirement, per-route disabled, requires_any over a remote JWKS
                assert (await get("/public/x")).status == 200
                assert (await get("/open/x")).status == 200
                assert idp.fetches == 0
                r = await get("/either", ("x-partner-token", f"Token {partner_token()}"))
                assert r.status == 200 and app.seen[-1].header("x-partner-token") is not None  # forward
                r = await get(f"/either?partner_token={partner_token()}")
                assert r.status == 200
                assert idp.fetches == 1  # cached for cache_duration
                check_denied(await get("/either", ("x-partner-token", f"Token {forged}")), 401,
                             "Jwt issuer is not configured", "/either")  # fmt: skip
                check_denied(await get("/either"), 401, "Jwt is missing", "/either", invalid=False)
                # requires_all needs both tokens
                check_denied(await get("/both", ("authorization", f"Bearer {good}")), 401,
                             "Jwt is missing", "/both", invalid=False)  # fmt: skip
                r = await get("/both", ("authorization", f"Bearer {good}"),
                              ("x-partner-token", f"Token {partner_token()}"))  # fmt: skip
                assert r.status == 200
                # allow_missing: no token passes, a bad one does not; allow_missing_or_failed: both pass
                assert (await get("/maybe")).status == 200
                check_denied(await get("/maybe", ("authorization", f"Bearer {forged}")), 401,
                             "Jwt verification fails", "/maybe")  # fmt: skip
                assert (await get("/lenient", ("authorization", f"Bearer {forged}"))).status == 200
                r = await get("/lenient", ("authorization", f"Bearer {good}"))
                assert r.status == 200 and app.seen[-1].header("x-jwt-sub") == "alice"
                # the per-route requirement_name: the partner provider only
                check_denied(await get("/named", ("authorization", f"Bearer {good}")), 401,
                             "Jwt is missing", "/named", invalid=False)  # fmt: skip
                assert (await get("/named", ("x-partner-token", f"Token {partner_token()}"))).status == 200

                # provider_and_audiences: the rule's audiences replace the provider's
                check_denied(await get("/aud", ("authorization", f"Bearer {good}")), 403,
                             "Audiences in Jwt are not allowed", "/aud")  # fmt: skip
                assert (
                    await get("/aud", ("authorization", f"Bearer {token(aud='other-api')}"))
                ).status == 200
                r = await get("/named", ("cookie", f"theme=dark; partner_session={partner_token()}"))
                assert r.status == 200  # from_cookies

                autojump_clock.jump(61)  # the cached JWKS expires
                assert (await get("/named", ("x-partner-token", f"Token {partner_token()}"))).status == 200
                assert idp.fetches == 2
                await client.aclose()
                stats = proxy.stats
                assert stats.value("http.ingress.jwt_authn.jwks_fetch_success") == 2
                assert stats.value("http.ingress.jwt_authn.denied") == 12
                assert stats.value("http.ingress.jwt_authn.allowed") == 12
        for backend in backends:
            backend.stop()


async def test_jwt_remote_jwks_unreachable_is_a_fetch_failure(autojump_clock: trio.testing.MockClock) -> None:
    """The JWKS cluster does not answer: 401 ``Jwks remote fetch is failed``, counted."""
    config = load_config(CONFIG)
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)  # nothing on 8090
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                r = await client.request("GET", "/named", [("x-partner-token", f"Token {partner_token()}")])
                check_denied(r, 401, "Jwks remote fetch is failed", "/named")
                await client.aclose()
                assert proxy.stats.value("http.ingress.jwt_authn.jwks_fetch_failed") == 1
                assert app.seen == []
        backend.stop()


def test_jwt_config_mistakes_named_by_path() -> None:
    """A rule naming a provider that does not exist, a provider with both or neither JWKS, an
    inline JWKS that is not one, and a JWKS cluster that does not exist: each at its YAML path."""
    bad = (
        CONFIG.replace("requires: {provider_name: local}", "requires: {provider_name: nobody}")
        .replace("cluster: idp\n", "cluster: nowhere\n")
        .replace(LOCAL_JWKS, "not json")
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    text = str(e.value)
    base = (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
    )
    assert f"{base}.rules[6].requires: provider 'nobody' is not in providers (local, partner)" in text
    assert f"{base}.providers.local.local_jwks: not a JWKS" in text
    assert "providers.partner.remote_jwks.http_uri.cluster" in text and "nowhere" in text
    both = CONFIG.replace("                  forward: true\n", "                  forward: true\n"
                          "                  local_jwks: {inline_string: '{\"keys\": []}'}\n")  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_config(both)
    assert "providers.partner.remote_jwks: only one of local_jwks, remote_jwks may be set" in str(e.value)
