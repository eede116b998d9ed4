"""Mutual TLS on a filter chain, as Envoy's double-proxy example configures it: the server certificate
and the CA given inline (``inline_string``), ``require_client_certificate``, and
``match_typed_subject_alt_names`` on the client's certificate; and ``tls_params``.  On the simulator
(proxy on stack A, clients and backend on stack B) under trio's MockClock."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from proxy_helpers import (
    BackendApp,
    Client,
    bootstrap,
    cluster,
    connect,
    hcm,
    http_listener,
    running_proxy,
    start_backend,
)
from socket_helpers import two_stacks

from trio_yastack.l7.config import DOWNSTREAM_TLS_TYPE, ConfigError, load_config
from trio_yastack.tls.certs import CertificateAuthority, make_ca

LIMIT = 300
LISTENER = "listener.198.18.0.2_10000"


def mtls_listener(ca: CertificateAuthority, **tls_extra: Any) -> dict[str, Any]:
    server = ca.issue(["proxy.example"])
    common: dict[str, Any] = {
        "tls_certificates": [
            {
                "certificate_chain": {"inline_string": server.chain_pem.decode()},
                "private_key": {"inline_string": server.key_pem.decode()},
            }
        ],
        "validation_context": {
            "trusted_ca": {"inline_string": ca.cert_pem.decode()},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": "client.example"}},
                {"san_type": "DNS", "matcher": {"suffix": ".trusted.example"}},
            ],
        },
    } | tls_extra.pop("common", {})
    listener = http_listener(hcm())
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS_TYPE,
            "require_client_certificate": True,
            "common_tls_context": common,
            **tls_extra,
        },
    }
    return listener


def client_context(ca: CertificateAuthority, tmp_path: Path, host: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if host is not None:
        chain, key = ca.issue([host]).write(tmp_path / host, overwrite=True)
        context.load_cert_chain(str(chain), str(key))
    return context


async def attempt(b: Any, context: ssl.SSLContext) -> int | None:
    """One GET over TLS: its status, or None when the proxy refused the connection."""
    stream = trio.SSLStream(await connect(b), context, server_hostname="proxy.example")
    try:
        await stream.do_handshake()
        client = Client(stream, host="proxy.example")
        return (await client.request("GET", "/")).status
    except (trio.BrokenResourceError, ssl.SSLError):
        return None
    finally:
        await trio.aclose_forcefully(stream)


async def test_mtls_client_certificate_accepted_and_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ca, other_ca = make_ca("mtls test CA"), make_ca("someone else's CA")
    for d in ("client.example", "svc.trusted.example", "stranger.example", "none"):
        (tmp_path / d).mkdir()
    app = BackendApp("app")
    config = bootstrap([mtls_listener(ca)], [cluster("app", [8080])])
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8080)
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                assert await attempt(b, client_context(ca, tmp_path, "client.example")) == 200
                assert await attempt(b, client_context(ca, tmp_path, "svc.trusted.example")) == 200
                assert await attempt(b, client_context(ca, tmp_path, None)) is None  # no certificate
                assert await attempt(b, client_context(other_ca, tmp_path, "client.example")) is None
                assert await attempt(b, client_context(ca, tmp_path, "stranger.example")) is None  # SAN
                assert len(app.seen) == 2
                assert proxy.stats.value(f"{LISTENER}.ssl.handshake") == 2
                assert proxy.stats.value(f"{LISTENER}.ssl.fail_verify_san") == 1
        backend.stop()


async def test_tls_params_bound_the_protocol_version(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """``tls_params`` with TLS 1.2 at most: a TLS 1.3-capable client gets TLS 1.2; one that insists
    on TLS 1.3 is refused."""
    ca = make_ca("tls params CA")
    (tmp_path / "client.example").mkdir()
    params = {
        "tls_params": {
            "tls_maximum_protocol_version": "TLSv1_2",
            "cipher_suites": ["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]"],
        }
    }
    config = bootstrap([mtls_listener(ca, common=params)], [cluster("app", [8080])])
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, BackendApp("app"), b, 8080)
        async with running_proxy(config, a):
            with trio.fail_after(LIMIT):
                context = client_context(ca, tmp_path, "client.example")
                stream = trio.SSLStream(await connect(b), context, server_hostname="proxy.example")
                await stream.do_handshake()
                assert stream.version() == "TLSv1.2"
                assert stream.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
                await trio.aclose_forcefully(stream)
                context.minimum_version = ssl.TLSVersion.TLSv1_3
                assert await attempt(b, context) is None
        backend.stop()


def test_mtls_config_mistakes_named_by_path() -> None:
    ca = make_ca("config CA")
    listener = mtls_listener(ca)
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    del tls["common_tls_context"]["validation_context"]
    tls["common_tls_context"]["tls_certificates"][0]["private_key"] = {"inline_bytes": "not base64!"}
    tls["common_tls_context"]["tls_params"] = {
        "tls_minimum_protocol_version": "TLSv1_3",
        "tls_maximum_protocol_version": "TLSv1_2",
        "ecdh_curves": ["X25519"],
    }
    doc = {"static_resources": {"listeners": [listener], "clusters": [cluster("app", [8080])]}}
    with pytest.raises(ConfigError) as info:
        load_config(json.dumps(doc))
    base = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config"
    assert [p.path for p in info.value.problems] == [
        f"{base}.common_tls_context.tls_certificates[0].private_key.inline_bytes",
        f"{base}.common_tls_context.tls_params.ecdh_curves",
        f"{base}.common_tls_context.tls_params.tls_maximum_protocol_version",
    ]
    # the rest valid: requiring client certificates without a CA to verify them with is an error
    # (stricter than Envoy, which would refuse every client)
    tls["common_tls_context"]["tls_certificates"] = mtls_listener(ca)["filter_chains"][0]["transport_socket"][
        "typed_config"
    ]["common_tls_context"]["tls_certificates"]
    del tls["common_tls_context"]["tls_params"]
    with pytest.raises(ConfigError) as info:
        load_config(json.dumps(doc))
    assert [p.path for p in info.value.problems] == [f"{base}.require_client_certificate"]


def test_sds_secrets_from_a_file_and_static_secrets(tmp_path: Path) -> None:
    """``tls_certificate_sds_secret_configs`` read from an SDS file (a DiscoveryResponse with Secret
    resources, camelCase as Envoy allows) and ``validation_context_sds_secret_config`` from
    ``static_resources.secrets``; the contexts load; unknown names and unreadable files are errors
    at their paths."""
    from trio_yastack.tls.contexts import server_context

    ca = make_ca("sds CA")
    chain, key = ca.issue(["proxy.example"]).write(tmp_path)
    (tmp_path / "sds.yaml").write_text(json.dumps({"resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "server_cert",
        "tlsCertificate": {"certificateChain": {"filename": str(chain)},
                           "privateKey": {"filename": str(key)}},
    }]}))  # fmt: skip
    listener = mtls_listener(ca)
    common = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    del common["tls_certificates"], common["validation_context"]
    common["tls_certificate_sds_secret_configs"] = [
        {"name": "server_cert", "sds_config": {"path_config_source": {"path": str(tmp_path / "sds.yaml")}}}
    ]
    common["validation_context_sds_secret_config"] = {"name": "client_ca"}
    doc = {
        "static_resources": {
            "secrets": [{"name": "client_ca",
                         "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}}],
            "listeners": [listener],
            "clusters": [cluster("app", [8080])],
        }
    }  # fmt: skip
    config = load_config(json.dumps(doc))
    tls = config.listeners[0].filter_chains[0].transport_socket
    assert tls is not None and tls.common_tls_context.tls_certificates[0].certificate_chain.filename == str(
        chain
    )
    assert server_context(tls).verify_mode == ssl.CERT_REQUIRED
    common["tls_certificate_sds_secret_configs"][0]["name"] = "other"
    common["validation_context_sds_secret_config"] = {"name": "nope"}
    doc["static_resources"]["listeners"] = [listener]
    with pytest.raises(ConfigError) as info:
        load_config(json.dumps(doc))
    base = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context"
    assert [p.path for p in info.value.problems] == [
        f"{base}.tls_certificate_sds_secret_configs[0].name",
        f"{base}.validation_context_sds_secret_config.name",
    ]
