"""``envoy.filters.http.local_ratelimit``'s descriptors through the proxy: the route's and virtual
host's ``rate_limits`` actions build a request's descriptors, each descriptor the filter names takes
from its own token bucket, and the answers are Envoy's (429, ``x-envoy-ratelimited: true``,
``local_rate_limited``).  Configs are Envoy YAML (the descriptors example of Envoy's filter
documentation, adapted); bad ones are refused naming their YAML path."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
import yaml
from proxy_helpers import BackendApp, cluster, http_bootstrap
from socket_helpers import B_IP
from test_proxy_config import HCM_PATH, VHOST_PATH, minimal, paths_of
from test_proxy_filters import filters, many, proxied, route
from test_proxy_http import setup

from trio_yastack.l7.config import LocalDescriptor, LocalRateLimit, TokenBucket

RL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
RATELIMIT = "envoy.filters.http.local_ratelimit"

# Envoy's documented example, with smaller buckets: the filter's default bucket is generous, the
# descriptors are the limits that bite
FILTER = f"""
name: envoy.filters.http.local_ratelimit
typed_config:
  "@type": {RL_TYPE}
  stat_prefix: http_local_rate_limiter
  token_bucket: {{max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s}}
  filter_enabled:
    runtime_key: local_rate_limit_enabled
    default_value: {{numerator: 100, denominator: HUNDRED}}
  filter_enforced:
    runtime_key: local_rate_limit_enforced
    default_value: {{numerator: 100, denominator: HUNDRED}}
  response_headers_to_add:
  - append_action: OVERWRITE_IF_EXISTS_OR_ADD
    header: {{key: x-local-rate-limit, value: "true"}}
  descriptors:
  - entries:
    - {{key: client_id, value: foo}}
    - {{key: path, value: /foo/bar}}
    token_bucket: {{max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}}
  - entries:
    - {{key: client_id, value: foo}}
    - {{key: path, value: /foo/bar2}}
    token_bucket: {{max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s}}
"""

ROUTE_LIMITS = """
- actions:
  - request_headers: {header_name: x-client-id, descriptor_key: client_id}
  - request_headers: {header_name: ":path", descriptor_key: path}
"""


def rl_filter(text: str = FILTER, **changes: Any) -> dict[str, Any]:
    f: dict[str, Any] = yaml.safe_load(text)
    f["typed_config"].update(changes)
    return f


def limited_route(prefix: str = "/", limits: str = ROUTE_LIMITS) -> dict[str, Any]:
    return route(prefix, rate_limits=yaml.safe_load(limits))


FOO = [("x-client-id", "foo")]


async def test_descriptors_from_request_headers(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy's example: ``x-client-id: foo`` on ``/foo/bar`` matches the first descriptor (2
    tokens), on ``/foo/bar2`` the second (3); another client or path matches none and takes only
    from the filter's bucket; a request without the header builds no descriptor at all."""
    async with proxied(filters(rl_filter()), routes=[limited_route()]) as (b, proxy, app):
        bar = await many(b, 3, "/foo/bar", FOO)
        assert [r.status for r in bar] == [200, 200, 429]
        refused = bar[2]
        assert refused.body == b"local_rate_limited\n"
        assert refused.header("x-envoy-ratelimited") == "true"
        assert refused.header("x-local-rate-limit") == "true"
        assert [r.status for r in await many(b, 4, "/foo/bar2", FOO)] == [200, 200, 200, 429]
        assert [r.status for r in await many(b, 4, "/foo/bar", [("x-client-id", "bar")])] == [200] * 4
        assert [r.status for r in await many(b, 4, "/foo/bar")] == [200] * 4
        assert len(app.seen) == 2 + 3 + 4 + 4
        prefix = "http_local_rate_limiter.http_local_rate_limit."
        assert proxy.stats.value(prefix + "rate_limited") == 2
        assert proxy.stats.value(prefix + "enforced") == 2
        assert proxy.stats.value(prefix + "ok") == 13
        await trio.sleep(60)  # one fill: the descriptor's bucket is full again
        assert [r.status for r in await many(b, 3, "/foo/bar", FOO)] == [200, 200, 429]


async def test_default_bucket_consumed_unless_told_not_to(autojump_clock: trio.testing.MockClock) -> None:
    """``always_consume_default_token_bucket`` (Envoy's default true): a request whose descriptor
    matched takes from the filter's bucket too, so the filter's bucket refuses others once spent;
    false: only requests that matched no descriptor take from it."""
    small_default = {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "60s"}
    async with proxied(filters(rl_filter(token_bucket=small_default)), routes=[limited_route()]) as (
        b,
        _,
        _app,
    ):
        assert [r.status for r in await many(b, 2, "/foo/bar2", FOO)] == [200, 200]
        assert [r.status for r in await many(b, 1, "/other")] == [429]  # the default bucket is empty
    async with proxied(
        filters(rl_filter(token_bucket=small_default, always_consume_default_token_bucket=False)),
        routes=[limited_route()],
    ) as (b, _, _app):
        assert [r.status for r in await many(b, 3, "/foo/bar2", FOO)] == [200, 200, 200]
        assert [r.status for r in await many(b, 3, "/other")] == [200, 200, 429]


async def test_actions_generic_key_header_value_match_remote_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each action's entry, as Envoy makes it: ``generic_key`` (key ``generic_key`` unless named),
    ``header_value_match`` (an entry only when the headers match as ``expect_match`` says; else no
    descriptor), ``remote_address`` (the client's address), ``skip_if_absent`` (the entry is left
    out, the descriptor kept)."""
    limits = """
    - actions:
      - generic_key: {descriptor_value: api}
      - header_value_match:
          descriptor_value: not-internal
          expect_match: false
          headers: [{name: x-internal, exact_match: "yes"}]
    - actions:
      - remote_address: {}
      - request_headers: {header_name: x-tenant, descriptor_key: tenant, skip_if_absent: true}
    """
    text = f"""
    name: envoy.filters.http.local_ratelimit
    typed_config:
      "@type": {RL_TYPE}
      stat_prefix: rl
      filter_enabled: {{default_value: {{numerator: 100}}}}
      filter_enforced: {{default_value: {{numerator: 100}}}}
      descriptors:
      - entries: [{{key: generic_key, value: api}}, {{key: header_match, value: not-internal}}]
        token_bucket: {{max_tokens: 2, fill_interval: 60s}}
      - entries: [{{key: remote_address, value: "{B_IP}"}}]
        token_bucket: {{max_tokens: 4, fill_interval: 60s}}
    """
    async with proxied(filters(rl_filter(text)), routes=[limited_route("/", limits)]) as (b, _, _app):
        # external requests: the first descriptor (2 tokens) refuses the third
        assert [r.status for r in await many(b, 3, "/")] == [200, 200, 429]
        # internal ones build no first descriptor; the client's address has 4 - 2 = 2 left (the
        # third external request stopped at the first descriptor, the slower or equal one)
        internal = [("x-internal", "yes")]
        assert [r.status for r in await many(b, 3, "/", internal)] == [200, 200, 429]
        # with x-tenant the second descriptor has an entry more and matches nothing: no limit
        assert [r.status for r in await many(b, 3, "/", [*internal, ("x-tenant", "t")])] == [200] * 3


async def test_vh_rate_limits_override_include_ignore(autojump_clock: trio.testing.MockClock) -> None:
    """The virtual host's ``rate_limits`` count on a route without its own (OVERRIDE, Envoy's
    default), on every route with INCLUDE, on none with IGNORE."""
    vh_limits = yaml.safe_load("[{actions: [{generic_key: {descriptor_value: vh}}]}]")
    text = f"""
    name: envoy.filters.http.local_ratelimit
    typed_config:
      "@type": {RL_TYPE}
      stat_prefix: rl
      filter_enabled: {{default_value: {{numerator: 100}}}}
      filter_enforced: {{default_value: {{numerator: 100}}}}
      descriptors:
      - entries: [{{key: generic_key, value: vh}}]
        token_bucket: {{max_tokens: 1, fill_interval: 60s}}
    """
    own = "[{actions: [{generic_key: {descriptor_value: own}}]}]"
    routes = [limited_route("/own", own), route("/")]
    expected = {
        "OVERRIDE": ([200, 200], [200, 429]),
        "INCLUDE": ([200, 429], [429, 429]),
        "IGNORE": ([200, 200], [200, 200]),
    }
    for option, (on_own, on_plain) in expected.items():
        f = rl_filter(text, vh_rate_limits=option)
        async with proxied(filters(f), routes=routes, rate_limits=vh_limits) as (b, _, _app):
            assert [r.status for r in await many(b, 2, "/own")] == on_own, option
            assert [r.status for r in await many(b, 2, "/plain")] == on_plain, option


async def test_stage_and_disable_key_select_route_limits(autojump_clock: trio.testing.MockClock) -> None:
    """Only the route's ``rate_limits`` of the filter's ``stage`` count, and Envoy's local filter
    skips those with a ``disable_key``; the filter's own ``rate_limits`` replace the route's."""
    text = f"""
    name: envoy.filters.http.local_ratelimit
    typed_config:
      "@type": {RL_TYPE}
      stat_prefix: rl
      stage: 1
      filter_enabled: {{default_value: {{numerator: 100}}}}
      filter_enforced: {{default_value: {{numerator: 100}}}}
      descriptors:
      - entries: [{{key: generic_key, value: a}}]
        token_bucket: {{max_tokens: 1, fill_interval: 60s}}
    """
    limits = """
    - {actions: [{generic_key: {descriptor_value: a}}]}
    - {stage: 1, disable_key: kill, actions: [{generic_key: {descriptor_value: a}}]}
    """
    async with proxied(filters(rl_filter(text)), routes=[limited_route("/", limits)]) as (b, _, _app):
        assert [r.status for r in await many(b, 2)] == [200, 200]  # stage 0, and a disable_key
    staged = limits.replace("disable_key: kill, ", "")
    async with proxied(filters(rl_filter(text)), routes=[limited_route("/", staged)]) as (b, _, _app):
        assert [r.status for r in await many(b, 2)] == [200, 429]
    own = rl_filter(text, rate_limits=[{"actions": [{"generic_key": {"descriptor_value": "a"}}]}])
    async with proxied(filters(own), routes=[route("/")]) as (b, _, _app):
        assert [r.status for r in await many(b, 2)] == [200, 429]


async def test_route_override_with_descriptors_and_x_ratelimit_headers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A route's own LocalRateLimit with descriptors (Envoy's per-route example), and the
    ``x-ratelimit-*`` headers: they describe the descriptor's bucket when one matched."""
    per_route = yaml.safe_load(
        f"""
        "@type": {RL_TYPE}
        stat_prefix: per_route
        enable_x_ratelimit_headers: DRAFT_VERSION_03
        token_bucket: {{max_tokens: 10, tokens_per_fill: 10, fill_interval: 60s}}
        filter_enabled: {{default_value: {{numerator: 100}}}}
        filter_enforced: {{default_value: {{numerator: 100}}}}
        descriptors:
        - entries: [{{key: client_id, value: foo}}, {{key: path, value: /limited}}]
          token_bucket: {{max_tokens: 2, tokens_per_fill: 2, fill_interval: 30s}}
        """
    )
    r = limited_route("/limited") | {"typed_per_filter_config": {RATELIMIT: per_route}}
    disabled = rl_filter(FILTER)
    disabled["typed_config"]["filter_enabled"] = {"default_value": {"numerator": 0}}
    async with proxied(filters(disabled), routes=[r, route("/")]) as (b, _, _app):
        got = await many(b, 3, "/limited", FOO)
        other = await many(b, 1, "/limited", [("x-client-id", "zed")])
    heads = [(x.status, x.header("x-ratelimit-limit"), x.header("x-ratelimit-remaining")) for x in got]
    assert heads == [(200, "2", "1"), (200, "2", "0"), (429, "2", "0")]
    assert got[0].header("x-ratelimit-reset") == "30"
    # no descriptor matched: the route's own bucket (10; the two requests the descriptor let
    # through took from it too, Envoy's always_consume_default_token_bucket)
    (o,) = other
    assert (o.status, o.header("x-ratelimit-limit"), o.header("x-ratelimit-remaining")) == (200, "10", "7")


async def test_remote_address_of_another_client_never_matches(autojump_clock: trio.testing.MockClock) -> None:
    """A descriptor naming another client's address never matches this client's requests."""
    text = f"""
    name: envoy.filters.http.local_ratelimit
    typed_config:
      "@type": {RL_TYPE}
      stat_prefix: rl
      filter_enabled: {{default_value: {{numerator: 100}}}}
      filter_enforced: {{default_value: {{numerator: 100}}}}
      descriptors:
      - entries: [{{key: remote_address, value: "198.18.0.99"}}]
        token_bucket: {{max_tokens: 1, fill_interval: 60s}}
    """
    limits = "[{actions: [{remote_address: {}}]}]"
    async with proxied(filters(rl_filter(text)), routes=[limited_route("/", limits)]) as (b, _, _app):
        assert [r.status for r in await many(b, 3)] == [200] * 3


# --- config ---


def _with_filter(doc: dict[str, Any], typed_config: dict[str, Any]) -> None:
    hcm_config = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    entry = {"name": RATELIMIT, "typed_config": {"@type": RL_TYPE, **typed_config}}
    hcm_config["http_filters"].insert(0, entry)


def test_descriptors_config_read() -> None:
    from trio_yastack.l7.config import load_config

    doc = minimal()
    _with_filter(doc, yaml.safe_load(FILTER)["typed_config"] | {"vhRateLimits": "INCLUDE", "stage": 3})
    vhost = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]
    vhost["rate_limits"] = yaml.safe_load(ROUTE_LIMITS)
    b = load_config(yaml.safe_dump(doc))
    h = b.listeners[0].filter_chains[0].filter
    rl = h.http_filters[0].config  # type: ignore[union-attr]  # an HTTP connection manager here
    assert isinstance(rl, LocalRateLimit)
    assert rl.vh_rate_limits == "INCLUDE" and rl.stage == 3 and rl.always_consume_default
    assert [d.entries for d in rl.descriptors] == [
        (("client_id", "foo"), ("path", "/foo/bar")),
        (("client_id", "foo"), ("path", "/foo/bar2")),
    ]
    (policy,) = h.route_config.virtual_hosts[0].rate_limits  # type: ignore[union-attr]  # as above
    assert [(a.kind, a.key, a.header_name) for a in policy.actions] == [
        ("request_headers", "client_id", "x-client-id"),
        ("request_headers", "path", ":path"),
    ]


WILDCARD_FILTER = f"""
name: envoy.filters.http.local_ratelimit
typed_config:
  "@type": {RL_TYPE}
  stat_prefix: per_client
  token_bucket: {{max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s}}
  filter_enabled: {{default_value: {{numerator: 100}}, runtime_key: e}}
  filter_enforced: {{default_value: {{numerator: 100}}, runtime_key: f}}
  max_dynamic_descriptors: 2
  descriptors:
  - entries: [{{key: client_id, value: vip}}]
    token_bucket: {{max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s}}
  - entries: [{{key: client_id}}]
    token_bucket: {{max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}}
"""


async def test_wildcard_descriptor_a_bucket_per_value(autojump_clock: trio.testing.MockClock) -> None:
    """Envoy's dynamic descriptors: an entry without a value matches any client id, and each id gets
    a bucket of its own (2 tokens); an exact descriptor (``vip``) is matched before the wildcard;
    the wildcard keeps ``max_dynamic_descriptors`` (2) buckets, so the least recently used one is
    dropped for a third id and starts full when that id comes back."""
    limits = "- actions: [{request_headers: {header_name: x-client-id, descriptor_key: client_id}}]"
    config = filters(yaml.safe_load(WILDCARD_FILTER))
    async with proxied(config, routes=[limited_route(limits=limits)]) as (b, proxy, _app):

        def client(name: str) -> list[tuple[str, str]]:
            return [("x-client-id", name)]

        assert [r.status for r in await many(b, 3, "/", client("a"))] == [200, 200, 429]
        assert [r.status for r in await many(b, 3, "/", client("b"))] == [200, 200, 429]
        assert [r.status for r in await many(b, 1, "/", client("b"))] == [429]  # b's bucket is kept
        assert [r.status for r in await many(b, 5, "/", client("vip"))] == [200] * 4 + [429]
        # a third id: a's bucket (least recently used) is dropped, b's kept
        assert [r.status for r in await many(b, 1, "/", client("c"))] == [200]
        assert [r.status for r in await many(b, 1, "/", client("b"))] == [429]
        assert [r.status for r in await many(b, 2, "/", client("a"))] == [200, 200]  # a full bucket again
        assert proxy.stats.value("per_client.http_local_rate_limit.rate_limited") == 5


def test_wildcard_descriptor_matching() -> None:
    """Envoy's ``matchDescriptorEntries``: the same number of entries, the same keys in order, the
    same values where the configured one is not empty."""
    wildcard = LocalDescriptor((("client", ""), ("path", "/a")), TokenBucket(1, 1.0, 1))
    assert wildcard.wildcard
    assert wildcard.matches((("client", "x"), ("path", "/a")))
    assert not wildcard.matches((("client", "x"), ("path", "/b")))
    assert not wildcard.matches((("path", "/a"), ("client", "x")))
    assert not wildcard.matches((("client", "x"),))
    assert not LocalDescriptor((("client", "x"),), TokenBucket(1, 1.0, 1)).wildcard


BUCKET = {"max_tokens": 1, "fill_interval": "1s"}


@pytest.mark.parametrize(
    ("where", "bad", "path"),
    [
        ("filter", {"descriptors": [{"entries": [{"key": "a", "value": "b"}]}]},
         "descriptors[0].token_bucket"),
        ("filter", {"descriptors": [{"entries": [], "token_bucket": BUCKET}]}, "descriptors[0].entries"),
        ("filter", {"descriptors": [{"entries": [{"key": "a", "value": "b"}], "shadow_mode": True,
                                     "token_bucket": BUCKET}]},
         "descriptors[0].shadow_mode"),
        ("filter", {"stage": 11}, "stage"),
        ("filter", {"vh_rate_limits": "SOMETIMES"}, "vh_rate_limits"),
        ("filter", {"max_dynamic_descriptors": 0}, "max_dynamic_descriptors"),
        ("filter", {"rate_limits": [{"stage": 1, "actions": [{"generic_key": {"descriptor_value": "a"}}]}]},
         "rate_limits[0]"),
        ("vhost", [{"actions": []}], "actions"),
        ("vhost", [{"actions": [{"source_cluster": {}}]}], "actions[0].source_cluster"),
        ("vhost", [{"actions": [{"metadata": {}}]}], "actions[0].metadata"),
        ("vhost", [{"actions": [{"generic_key": {}}]}], "actions[0].generic_key.descriptor_value"),
        ("vhost", [{"actions": [{"request_headers": {"header_name": ":status", "descriptor_key": "s"}}]}],
         "actions[0].request_headers.header_name"),
        ("vhost", [{"limit": {}, "actions": [{"remote_address": {}}]}], "limit"),
        ("vhost", [{"actions": [{"header_value_match": {"descriptor_value": "v", "headers": []}}]}],
         "actions[0].header_value_match.headers"),
    ],
)  # fmt: skip
def test_descriptor_config_mistakes_named_by_path(where: str, bad: Any, path: str) -> None:
    """What is not implemented (shadow mode, other actions, ``limit``) or not valid (Envoy's own
    rules) is refused at its YAML path."""
    doc = minimal()
    _with_filter(
        doc,
        {"stat_prefix": "rl", "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}
        | (bad if where == "filter" else {}),
    )
    if where == "vhost":
        hcm_config = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm_config["route_config"]["virtual_hosts"][0]["rate_limits"] = bad
        assert paths_of(doc) == [f"{VHOST_PATH}.rate_limits[0].{path}"]
    else:
        assert paths_of(doc) == [f"{HCM_PATH}.http_filters[0].typed_config.{path}"]


def test_per_route_config_needs_its_own_bucket() -> None:
    """Envoy rejects a route's LocalRateLimit without a ``token_bucket``."""
    doc = minimal()
    hcm_config = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm_config["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = {
        RATELIMIT: {"@type": RL_TYPE, "stat_prefix": "r"}
    }
    assert paths_of(doc) == [f"{VHOST_PATH}.typed_per_filter_config.{RATELIMIT}.token_bucket"]


async def test_direct_response_route_builds_no_descriptor(autojump_clock: trio.testing.MockClock) -> None:
    """A ``direct_response`` route has no route entry in Envoy: its ``rate_limits`` cannot be set,
    and the virtual host's build no descriptor for it (only the filter's bucket counts)."""
    text = f"""
    name: envoy.filters.http.local_ratelimit
    typed_config:
      "@type": {RL_TYPE}
      stat_prefix: rl
      filter_enabled: {{default_value: {{numerator: 100}}}}
      filter_enforced: {{default_value: {{numerator: 100}}}}
      descriptors:
      - entries: [{{key: generic_key, value: vh}}]
        token_bucket: {{max_tokens: 1, fill_interval: 60s}}
    """
    vh_limits = yaml.safe_load("[{actions: [{generic_key: {descriptor_value: vh}}]}]")
    routes = [route("/direct", direct={"status": 200}), route("/")]
    app_config = http_bootstrap(
        [cluster("app", [8080])],
        virtual_hosts=[{"name": "all", "domains": ["*"], "routes": routes, "rate_limits": vh_limits}],
        http_filters=filters(rl_filter(text)),
    )
    async with setup(app_config, (BackendApp("app"), 8080)) as (_, b, _proxy):
        assert [r.status for r in await many(b, 3, "/direct")] == [200] * 3
        assert [r.status for r in await many(b, 2, "/x")] == [200, 429]


async def test_matched_descriptors_slowest_filling_first(autojump_clock: trio.testing.MockClock) -> None:
    """Two descriptors match one request: Envoy takes from the slower-filling bucket first, so a
    refusal by the faster one still spends the slower one's token (in the request's order it would
    not): after the fast bucket refills, the slow one is empty and refuses."""
    text = f"""
    name: envoy.filters.http.local_ratelimit
    typed_config:
      "@type": {RL_TYPE}
      stat_prefix: rl
      filter_enabled: {{default_value: {{numerator: 100}}}}
      filter_enforced: {{default_value: {{numerator: 100}}}}
      descriptors:
      - entries: [{{key: generic_key, value: fast}}]
        token_bucket: {{max_tokens: 1, tokens_per_fill: 100, fill_interval: 1s}}
      - entries: [{{key: generic_key, value: slow}}]
        token_bucket: {{max_tokens: 3, tokens_per_fill: 1, fill_interval: 60s}}
    """
    limits = """
    - {actions: [{generic_key: {descriptor_value: fast}}]}
    - {actions: [{generic_key: {descriptor_value: slow}}]}
    """
    async with proxied(filters(rl_filter(text)), routes=[limited_route("/", limits)]) as (b, _, _app):
        assert [r.status for r in await many(b, 3)] == [200, 429, 429]
        await trio.sleep(1)
        assert [r.status for r in await many(b, 1)] == [429]


async def test_query_parameters_and_masked_remote_address(autojump_clock: trio.testing.MockClock) -> None:
    """``query_parameters`` takes the parameter's first value, percent-decoded (absent: no
    descriptor, or no entry with ``skip_if_absent``); ``masked_remote_address`` the client's
    network at the mask length (``198.18.0.0/24`` for 198.18.0.1)."""
    text = f"""
    name: envoy.filters.http.local_ratelimit
    typed_config:
      "@type": {RL_TYPE}
      stat_prefix: rl
      filter_enabled: {{default_value: {{numerator: 100}}}}
      filter_enforced: {{default_value: {{numerator: 100}}}}
      descriptors:
      - entries: [{{key: api_key, value: "a b"}}]
        token_bucket: {{max_tokens: 1, fill_interval: 60s}}
      - entries: [{{key: masked_remote_address, value: "198.18.0.0/24"}}]
        token_bucket: {{max_tokens: 3, fill_interval: 60s}}
    """
    limits = """
    - {actions: [{query_parameters: {query_parameter_name: key, descriptor_key: api_key}}]}
    - {actions: [{masked_remote_address: {v4_prefix_mask_len: 24}}]}
    """
    async with proxied(filters(rl_filter(text)), routes=[limited_route("/", limits)]) as (b, _, _app):
        # key=a%20b matches the first descriptor (1 token); the subnet's has 3
        assert [r.status for r in await many(b, 2, "/?x=1&key=a%20b&key=other")] == [200, 429]
        assert [r.status for r in await many(b, 1, "/?key=a+b")] == [200]  # "a+b" is another key
        # the second request stopped at the key's bucket: the subnet's has 3 - 2 = 1 left
        assert [r.status for r in await many(b, 2, "/")] == [200, 429]
    assert B_IP.startswith("198.18.0.")


def test_masked_remote_address_mask_bounds() -> None:
    doc = minimal()
    _with_filter(doc, {"stat_prefix": "rl", "token_bucket": BUCKET})
    hcm_config = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm_config["route_config"]["virtual_hosts"][0]["rate_limits"] = [
        {"actions": [{"masked_remote_address": {"v4_prefix_mask_len": 33}}]}
    ]
    assert paths_of(doc) == [
        f"{VHOST_PATH}.rate_limits[0].actions[0].masked_remote_address.v4_prefix_mask_len"
    ]
