"""``envoy.filters.http.rbac`` against Envoy's documented behaviour: ALLOW and DENY policies over
principals (remote_ip, direct_remote_ip, header, authenticated over mTLS, and/or/not) and
permissions (header with pseudo-headers, url_path, destination_port), ``shadow_rules`` only counted,
403 ``RBAC: access denied`` for a denied request, and the per-route ``RBACPerRoute`` override (an
empty one turns the filter off on that route).

Configs are written as Envoy's docs write them (YAML, loaded by the real loader).  Everything runs on
the in-process simulator under trio's MockClock: the proxy on stack A (198.18.0.2:10000), the
hypercorn backend and the clients on stack B (198.18.0.1).
"""

from __future__ import annotations

import ssl
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect, running_proxy, start_backend
from socket_helpers import two_stacks

from trio_yastack.l7.config import HCM_TYPE, ConfigError, load_config
from trio_yastack.l7.proxy import Proxy
from trio_yastack.tls.certs import make_ca

LIMIT = 300

HEAD = """
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
""".replace("HCM_TYPE", HCM_TYPE)

ROUTES = """
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/public"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
              - match: {prefix: "/strict"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac:
                      rules:
                        action: DENY
                        policies:
                          "from-the-lab":
                            permissions: [{any: true}]
                            principals: [{direct_remote_ip: {address_prefix: 198.18.0.0, prefix_len: 24}}]
              - match: {prefix: "/"}
                route: {cluster: app}
"""

FILTERS = """
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "admin-reads-from-the-lab":
                    permissions:
                    - and_rules:
                        rules:
                        - header: {name: ":method", string_match: {exact: GET}}
                        - url_path: {path: {prefix: /admin}}
                    principals:
                    - and_ids:
                        ids:
                        - remote_ip: {address_prefix: 198.18.0.0, prefix_len: 24}
                        - not_id: {header: {name: x-banned, present_match: true}}
                  "users-read":
                    permissions:
                    - url_path: {path: {prefix: /read}}
                    - destination_port: 8443
                    principals:
                    - header: {name: x-user, safe_regex_match: {regex: "[a-z]+"}}
              shadow_rules:
                action: DENY
                policies:
                  "no-deletes":
                    permissions: [{header: {name: ":method", exact_match: DELETE}}]
                    principals: [{any: true}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


async def test_rbac_allow_policies_shadow_rules_and_per_route_overrides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Envoy's RBAC filter: a request passes when one policy's permission and principal both match;
    any other is answered 403 ``RBAC: access denied`` without reaching the backend (flag ``RBAC``).
    The shadow DENY policy only counts (a DELETE still passes); ``RBACPerRoute`` without ``rbac``
    switches the filter off on its route, and one with ``rbac`` replaces the rules there."""
    config = load_config(HEAD + ROUTES + FILTERS)
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                expect = [
                    ("GET", "/admin/users", [], 200),
                    ("POST", "/admin/users", [], 403),  # the method is not GET
                    ("GET", "/admin/users", [("x-banned", "1")], 403),  # not_id
                    ("GET", "/read/1", [("x-user", "alice")], 200),
                    ("GET", "/read/1", [("x-user", "Alice7")], 403),  # the regex must match whole
                    ("GET", "/read/1", [], 403),  # a missing header matches no string matcher
                    ("DELETE", "/read/1", [("x-user", "bob")], 200),  # shadow DENY: counted only
                    ("GET", "/readme?x=/admin", [("x-user", "bob")], 200),  # url_path: no query
                    ("GET", "/other", [("x-user", "bob")], 403),  # no permission (port 10000)
                    ("POST", "/public/form", [], 200),  # RBACPerRoute without rbac: off
                    ("GET", "/strict/admin", [], 403),  # the route's DENY policy: 198.18.0.1
                ]
                for method, target, headers, status in expect:
                    r = await client.request(method, target, headers)
                    assert r.status == status, (method, target, headers, r.status, r.body)
                    if status == 403:
                        assert r.body == b"RBAC: access denied\n"  # the proxy ends local replies so
                        assert r.header("content-type") == "text/plain"
                await client.aclose()
                passed = [(s.method, s.path) for s in app.seen]
                assert passed == [
                    ("GET", "/admin/users"),
                    ("GET", "/read/1"),
                    ("DELETE", "/read/1"),
                    ("GET", "/readme?x=/admin"),
                    ("POST", "/public/form"),
                ]
                stats = proxy.stats
                assert stats.value("http.ingress.rbac.allowed") == 4
                assert stats.value("http.ingress.rbac.denied") == 6
                # the shadow rules ran wherever the filter's own config did (not on /public,
                # not on /strict, whose per-route config has no shadow rules)
                assert stats.value("http.ingress.rbac.shadow_denied") == 1
                assert stats.value("http.ingress.rbac.shadow_allowed") == 8
                assert stats.value("http.ingress.downstream_rq_4xx") == 6
        backend.stop()


DENY_FILTERS = """
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: "edge."
              rules:
                action: DENY
                policies:
                  "no-admin-from-outside":
                    permissions:
                    - or_rules:
                        rules:
                        - url_path: {path: {prefix: /admin}}
                        - header: {name: ":authority", string_match: {prefix: "admin.", ignore_case: true}}
                    principals:
                    - not_id: {remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}
          - name: envoy.filters.http.router
"""


async def test_rbac_deny_policy_with_or_rules_and_a_stat_prefix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A DENY policy refuses what it matches and lets everything else through; ``:authority`` is
    the request's Host; counters carry ``rules_stat_prefix``."""
    config = load_config(HEAD + ROUTES.replace("/public", "/unused") + DENY_FILTERS)
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                assert (await client.request("GET", "/admin")).status == 403
                assert (await client.request("GET", "/x")).status == 200
                client.host = "Admin.example"
                assert (await client.request("GET", "/x")).status == 403
                await client.aclose()
                assert proxy.stats.value("http.ingress.rbac.edge.denied") == 2
                assert proxy.stats.value("http.ingress.rbac.edge.allowed") == 1
        backend.stop()


def _mtls_config(ca_pem: str, cert_pem: str, key_pem: str) -> str:
    indent = " " * 20
    tls = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: false
          common_tls_context:
            tls_certificates:
            - certificate_chain:
                inline_string: |
{textwrap.indent(cert_pem, indent)}
              private_key:
                inline_string: |
{textwrap.indent(key_pem, indent)}
            validation_context:
              trusted_ca:
                inline_string: |
{textwrap.indent(ca_pem, indent)}
"""
    filters = """
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "service-a":
                    permissions: [{any: true}]
                    principals: [{authenticated: {principal_name: {exact: "client.example"}}}]
          - name: envoy.filters.http.router
"""
    routes = """
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
"""
    return HEAD + routes + filters + tls


async def test_rbac_authenticated_principal_over_mtls(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """``authenticated.principal_name`` matches the client certificate's SAN (a DNS name here, no
    URI SAN): the certificate for client.example passes, one for other.example and a TLS client
    without a certificate get 403."""
    ca = make_ca("rbac test CA")
    server = ca.issue(["proxy.example"])
    pems = (ca.cert_pem.decode(), server.chain_pem.decode(), server.key_pem.decode())
    config = load_config(_mtls_config(*pems))
    app = BackendApp("app")

    def context(host: str | None) -> ssl.SSLContext:
        c = ssl.create_default_context(cadata=ca.cert_pem.decode())
        if host is not None:
            (tmp_path / host).mkdir()
            chain, key = ca.issue([host]).write(tmp_path / host)
            c.load_cert_chain(str(chain), str(key))
        return c

    async def status(c: ssl.SSLContext) -> int:
        stream = trio.SSLStream(await connect(b), c, server_hostname="proxy.example")
        try:
            await stream.do_handshake()
            return (await Client(stream, host="proxy.example").request("GET", "/")).status
        finally:
            await trio.aclose_forcefully(stream)

    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                assert await status(context("client.example")) == 200
                assert await status(context("other.example")) == 403
                assert await status(context(None)) == 403
                assert len(app.seen) == 1
                assert isinstance(proxy, Proxy)
        backend.stop()


def test_rbac_config_mistakes_named_by_path() -> None:
    """What the subset does not implement (CEL conditions, the matcher API, filter state) is
    an error at its YAML path, as is a policy without principals; the rest of the document is still
    read, so every problem is listed at once."""
    users = "                    principals:\n                    - header: {name: x-user"
    bad = FILTERS.replace(users, "                    condition: {}\n" + users)
    bad = bad.replace("principals: [{any: true}]", "principals: [{filter_state: {}}]")
    bad = bad.replace("              shadow_rules:", "              matcher: {}\n              shadow_rules:")
    with pytest.raises(ConfigError) as e:
        load_config(HEAD + ROUTES + bad)
    text = str(e.value)
    hcm = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
    base = f"{hcm}.http_filters[0].typed_config"
    assert f"{base}.rules.policies.users-read.condition: unsupported field 'condition'" in text
    assert f"{base}.matcher: unsupported field 'matcher'" in text
    assert f"{base}.shadow_rules.policies.no-deletes.principals[0].filter_state: unsupported field" in text
    with pytest.raises(ConfigError) as e:
        load_config(HEAD + ROUTES + FILTERS.replace("                    principals: [{any: true}]\n", ""))
    assert "policies.no-deletes.principals: required field 'principals' is missing" in str(e.value)


PORT_FILTERS = """
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "this-listener-from-b":
                    permissions: [{destination_port: PORT}]
                    principals: [{direct_remote_ip: {address_prefix: 198.18.0.1, prefix_len: 32}}]
          - name: envoy.filters.http.router
"""


async def test_rbac_sees_the_connection_of_an_http2_stream(autojump_clock: trio.testing.MockClock) -> None:
    """Over h2c the principal and permission read the connection under the stream (the peer's
    address and the listener's port), as for HTTP/1.1."""
    from test_proxy_h2 import _client

    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        for port, status in ((10000, 200), (10001, 403)):
            config = load_config(HEAD + ROUTES + PORT_FILTERS.replace("PORT", str(port)))
            async with running_proxy(config, a) as proxy:
                with trio.fail_after(LIMIT):
                    client = await _client(nursery, b)
                    sid = await client.request("GET", "/admin")
                    assert (await client.wait(sid)).status == status
                    assert proxy.stats.value("http.ingress.downstream_cx_http2_total") == 1
                    await client.stream.aclose()
        assert len(app.seen) == 1
        backend.stop()


SNI_FILTERS = """
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "only-the-api-name":
                    permissions: [{requested_server_name: {suffix: ".api.example"}}]
                    principals: [{any: true}]
          - name: envoy.filters.http.router
"""


@pytest.mark.parametrize("inspector", [True, False])
async def test_rbac_requested_server_name(autojump_clock: trio.testing.MockClock, inspector: bool) -> None:
    """``requested_server_name`` matches the SNI the listener's TLS inspector read: a client asking
    for v1.api.example passes, one asking for www.example or sending no SNI gets 403.  Without the
    inspector Envoy treats the SNI as absent (""), so even v1.api.example is refused."""
    ca = make_ca("rbac sni CA")
    server = ca.issue(["v1.api.example", "www.example"])
    pems = (ca.cert_pem.decode(), server.chain_pem.decode(), server.key_pem.decode())
    mtls = _mtls_config(*pems)  # the same TLS listener, RBAC on the SNI instead of the client certificate
    head, tls = mtls[: mtls.index("          http_filters:")], mtls[mtls.index("      transport_socket:") :]
    config_text = head + SNI_FILTERS.lstrip("\n") + tls
    if inspector:
        config_text = config_text.replace(
            "    filter_chains:\n",
            "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n    filter_chains:\n",
        )
    config = load_config(config_text)
    assert config.listeners[0].tls_inspector is inspector
    app = BackendApp("app")
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())

    async def status(name: str | None) -> int:
        c = context
        if name is None:
            c = ssl.create_default_context(cadata=ca.cert_pem.decode())
            c.check_hostname = False  # no SNI sent
        stream = trio.SSLStream(await connect(b), c, server_hostname=name)
        try:
            await stream.do_handshake()
            return (await Client(stream, host=name or "proxy").request("GET", "/")).status
        finally:
            await trio.aclose_forcefully(stream)

    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(config, a):
            with trio.fail_after(LIMIT):
                assert await status("v1.api.example") == (200 if inspector else 403)
                assert await status("www.example") == 403
                assert await status(None) == 403
                assert len(app.seen) == (1 if inspector else 0)
        backend.stop()


TEMPLATE_FILTERS = """
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "segments":
                    permissions:
                    - uri_template:
                        name: envoy.path.match.uri_template.uri_template_matcher
                        typed_config:
                          "@type": TEMPLATE_TYPE
                          path_template: "TEMPLATE"
                    principals: [{any: true}]
          - name: envoy.filters.http.router
""".replace(
    "TEMPLATE_TYPE", "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
)


async def test_rbac_uri_template_permission(autojump_clock: trio.testing.MockClock) -> None:
    """``uri_template``: the path without its query must match Envoy's path template (``*`` one
    segment or the rest of one, ``{name}`` one segment, ``**`` any number, last)."""
    config = load_config(HEAD + TEMPLATE_FILTERS.replace("TEMPLATE", "/videos/{id}/*.m4s"))
    app = BackendApp("app")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(config, a):
            with trio.fail_after(LIMIT):
                client = Client(await connect(b))
                for path, status in (
                    ("/videos/42/part1.m4s", 200),
                    ("/videos/42/part1.m4s?t=3", 200),
                    ("/videos/42/x/part1.m4s", 403),
                    ("/videos/42/part1.mp4", 403),
                    ("/videos//part1.m4s", 403),
                ):
                    assert (await client.request("GET", path)).status == status, path
                await client.aclose()
        backend.stop()
    with pytest.raises(ConfigError) as e:
        load_config(HEAD + TEMPLATE_FILTERS.replace('"TEMPLATE"', '"/a/**/*"'))
    assert "uri_template.typed_config.path_template: '/a/**/*': '**' must be the last operator" in str(
        e.value
    )
