"""TLS through the proxy (termination with SNI-chosen certificates and ALPN; origination with SNI and
verification) and the ``tcp_proxy`` filter (half-close, idle timeout), on the in-process simulator:
proxy on stack A, backends and clients on stack B, under trio's MockClock."""

from __future__ import annotations

import hashlib
import random
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from proxy_helpers import (
    A_IP,
    B_IP,
    PROXY_PORT,
    BackendApp,
    Client,
    bootstrap,
    cluster,
    connect,
    downstream_tls,
    hcm,
    http_bootstrap,
    raw_server,
    read_to_eof,
    route,
    running_proxy,
    start_backend,
    tcp_listener,
    upstream_tls,
)
from socket_helpers import two_stacks

from trio_yastack.l7.config import TLS_INSPECTOR_TYPE
from trio_yastack.tls.certs import CertificateAuthority, make_ca

LIMIT = 300


def write_leaf(ca: CertificateAuthority, directory: Path, *hosts: str) -> tuple[str, str]:
    chain, key = ca.issue(list(hosts)).write(directory)
    return str(chain), str(key)


def write_ca(ca: CertificateAuthority, path: Path) -> str:
    path.write_bytes(ca.cert_pem)
    return str(path)


def client_context(ca: CertificateAuthority, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


async def tls_connect(b: Any, context: ssl.SSLContext, name: str) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(await connect(b), context, server_hostname=name)
    await stream.do_handshake()
    return stream


def san(stream: trio.SSLStream[Any]) -> tuple[str, ...]:
    cert = stream.getpeercert()
    assert cert is not None
    return tuple(value for kind, value in cert["subjectAltName"] if kind == "DNS")


# --- termination -----------------------------------------------------------------------------


def tls_bootstrap(tmp_path: Path, ca: CertificateAuthority) -> Any:
    a_cert, a_key = write_leaf(ca, tmp_path, "a.example")
    b_cert, b_key = write_leaf(ca, tmp_path, "b.example")
    w_cert, w_key = write_leaf(ca, tmp_path, "*.wild.example")

    def chain(names: list[str], cert: str, key: str, alpn: list[str], body: str | None) -> dict[str, Any]:
        routes = [route(direct={"status": 200, "body": {"inline_string": body}})] if body else [route()]
        return {
            "filter_chain_match": {"server_names": names},
            "transport_socket": downstream_tls(cert, key, alpn=alpn),
            "filters": [hcm(routes, stat_prefix=names[0].replace("*", "star"))],
        }

    listener = {
        "name": "https",
        "address": {"socket_address": {"address": A_IP, "port_value": PROXY_PORT}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR_TYPE},
            }
        ],
        "filter_chains": [
            chain(["a.example"], a_cert, a_key, ["h2", "http/1.1"], None),
            chain(["b.example"], b_cert, b_key, ["http/1.1"], "b chain"),
            chain(["*.wild.example"], w_cert, w_key, ["http/1.1"], "wild chain"),
        ],
    }
    return bootstrap([listener], [cluster("app", [8081])])


async def test_tls_termination_picks_the_certificate_by_sni(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ca = make_ca("proxy test CA")
    app = BackendApp("one")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8081)
        async with running_proxy(tls_bootstrap(tmp_path, ca), a) as proxy:
            with trio.fail_after(LIMIT):
                # ALPN: chain a lists h2 and http/1.1, both served (h2: test_proxy_h2_kernel)
                assert not any("not served" in line for line in proxy.warnings)
                stream = await tls_connect(b, client_context(ca, ["h2", "http/1.1"]), "a.example")
                assert stream.selected_alpn_protocol() == "h2"
                await stream.aclose()
                stream = await tls_connect(b, client_context(ca, ["http/1.1"]), "a.example")
                assert san(stream) == ("a.example",)
                assert stream.selected_alpn_protocol() == "http/1.1"
                client = Client(stream, host="a.example")
                response = await client.request("GET", "/secure")
                assert response.status == 200
                headers = dict(response.json()["headers"])
                assert headers["x-forwarded-proto"] == "https"
                assert headers["x-forwarded-for"] == B_IP
                await client.aclose()

                stream = await tls_connect(b, client_context(ca, ["h2"]), "b.example")
                assert san(stream) == ("b.example",)
                assert stream.selected_alpn_protocol() is None  # h2 only: no common protocol
                client = Client(stream, host="b.example")
                assert (await client.request("GET", "/")).body == b"b chain"
                await client.aclose()

                stream = await tls_connect(b, client_context(ca), "deep.wild.example")
                assert san(stream) == ("*.wild.example",)
                client = Client(stream, host="deep.wild.example")
                assert (await client.request("GET", "/")).body == b"wild chain"
                await client.aclose()

                # a name no chain serves (and no default chain): closed before any handshake
                with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                    await tls_connect(b, client_context(ca), "c.example")
                with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                    await tls_connect(b, client_context(ca), "wild.example")  # "*." needs a label
                listener = "listener.198.18.0.2_10000"
                assert proxy.stats.value(f"{listener}.no_filter_chain_match") == 2
                assert proxy.stats.value(f"{listener}.ssl.handshake") == 4
                assert proxy.stats.value("http.a.example.downstream_rq_2xx") == 1
        backend.stop()


async def test_plaintext_to_a_tls_only_listener_is_closed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ca = make_ca("proxy test CA")
    async with two_stacks() as (a, b), running_proxy(tls_bootstrap(tmp_path, ca), a) as proxy:
        with trio.fail_after(LIMIT):
            stream = await connect(b)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
            assert await read_to_eof(stream) == b""
            await stream.aclose()
            assert proxy.stats.value("listener.198.18.0.2_10000.no_filter_chain_match") == 1


async def test_silent_client_on_a_tls_listener_times_out(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The TLS inspector waits 15 s (Envoy's listener_filters_timeout) for a ClientHello."""
    ca = make_ca("proxy test CA")
    async with two_stacks() as (a, b), running_proxy(tls_bootstrap(tmp_path, ca), a) as proxy:
        with trio.fail_after(LIMIT):
            stream = await connect(b)
            started = trio.current_time()
            assert await read_to_eof(stream) == b""
            assert 15.0 <= trio.current_time() - started <= 15.1
            await stream.aclose()
            assert proxy.stats.value("listener.198.18.0.2_10000.downstream_pre_cx_timeout") == 1


# --- origination -----------------------------------------------------------------------------


async def test_upstream_tls_verified_with_sni(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    ca, other_ca = make_ca("backend CA"), make_ca("someone else")
    cert, key = write_leaf(ca, tmp_path, "backend.test")
    ca_file, other_ca_file = write_ca(ca, tmp_path / "ca.pem"), write_ca(other_ca, tmp_path / "other.pem")
    routes = [
        route("/good", "good"),
        route("/wrong-ca", "wrong_ca"),
        route("/wrong-name", "wrong_name"),
        route("/unverified", "unverified"),
    ]
    clusters = [
        cluster("good", [8443], transport_socket=upstream_tls(sni="backend.test", trusted_ca=ca_file)),
        cluster(
            "wrong_ca", [8443], transport_socket=upstream_tls(sni="backend.test", trusted_ca=other_ca_file)
        ),
        cluster("wrong_name", [8443], transport_socket=upstream_tls(sni="other.test", trusted_ca=ca_file)),
        cluster("unverified", [8443], transport_socket=upstream_tls()),
    ]
    app = BackendApp("tls")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8443, certfile=cert, keyfile=key)
        async with running_proxy(http_bootstrap(clusters, routes), a) as proxy:
            with trio.fail_after(LIMIT):
                assert any("unverified" in line and "not verified" in line for line in proxy.warnings)
                client = Client(await connect(b))
                for _ in range(3):
                    response = await client.request("GET", "/good")
                    assert (response.status, response.json()["backend"]) == (200, "tls")
                assert proxy.stats.value("cluster.good.upstream_cx_total") == 1  # kept alive over TLS
                response = await client.request("GET", "/unverified")
                assert response.status == 200
                await client.aclose()
                for target, name in (("/wrong-ca", "wrong_ca"), ("/wrong-name", "wrong_name")):
                    client = Client(await connect(b))
                    response = await client.request("GET", target)
                    await client.aclose()
                    assert response.status == 502, target
                    assert proxy.stats.value(f"cluster.{name}.upstream_cx_connect_fail") == 1
                assert len(app.seen) == 4
        backend.stop()


async def test_upstream_tls_sends_sni_and_offers_http11(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ca = make_ca("backend CA")
    leaf = ca.issue(["backend.test"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    chain, key = leaf.write(tmp_path)
    server.load_cert_chain(chain, key)
    server.set_alpn_protocols(["h2", "http/1.1"])
    names: list[str | None] = []
    server.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    protocols: list[str | None] = []

    async def tls_backend(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server, server_side=True)
        await tls.do_handshake()
        protocols.append(tls.selected_alpn_protocol())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += await tls.receive_some(65536)
        await tls.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nyes")
        await tls.aclose()

    clusters = [
        cluster(
            "app",
            [8443],
            transport_socket=upstream_tls(sni="backend.test", trusted_ca=write_ca(ca, tmp_path / "ca.pem")),
        )
    ]
    async with (
        two_stacks() as (a, b),
        raw_server(b, 8443, tls_backend),
        running_proxy(http_bootstrap(clusters), a),
    ):
        with trio.fail_after(LIMIT):
            client = Client(await connect(b))
            response = await client.request("GET", "/")
            await client.aclose()
            assert (response.status, response.body) == (200, b"yes")
            assert names == ["backend.test"]
            assert protocols == ["http/1.1"]


# --- tcp_proxy -------------------------------------------------------------------------------


async def digest_after_eof(stream: trio.SocketStream) -> None:
    """Read to EOF, then answer with the SHA-256 of all of it (the reply needs a half-closed
    connection: the client's side is shut, ours still open)."""
    data = await read_to_eof(stream)
    await stream.send_all(hashlib.sha256(data).hexdigest().encode() + b" " + str(len(data)).encode())
    await stream.send_eof()


async def test_tcp_proxy_passes_a_half_close_on(autojump_clock: trio.testing.MockClock) -> None:
    config = bootstrap([tcp_listener("db")], [cluster("db", [5432])])
    payload = random.Random(9).randbytes(1_000_000)
    async with (
        two_stacks() as (a, b),
        raw_server(b, 5432, digest_after_eof),
        running_proxy(config, a) as proxy,
    ):
        with trio.fail_after(LIMIT):
            stream = await connect(b)
            await stream.send_all(payload)
            await stream.send_eof()  # the reply can only come after the server saw this
            reply = await read_to_eof(stream)
            await stream.aclose()
            assert reply == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}".encode()
            await trio.testing.wait_all_tasks_blocked()
            assert proxy.stats.value("tcp.tcp.downstream_cx_total") == 1
            assert proxy.stats.value("tcp.tcp.downstream_cx_rx_bytes_total") == len(payload)
            assert proxy.stats.value("tcp.tcp.downstream_cx_tx_bytes_total") == len(reply)


async def test_tcp_proxy_server_side_half_close(autojump_clock: trio.testing.MockClock) -> None:
    received: list[bytes] = []

    async def greet_then_listen(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello, then EOF")
        await stream.send_eof()
        received.append(await read_to_eof(stream))

    config = bootstrap([tcp_listener("db")], [cluster("db", [5432])])
    async with two_stacks() as (a, b), raw_server(b, 5432, greet_then_listen), running_proxy(config, a):
        with trio.fail_after(LIMIT):
            stream = await connect(b)
            assert await read_to_eof(stream) == b"hello, then EOF"
            await stream.send_all(b"still talking")  # our direction is still open
            await stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
            with trio.fail_after(5):
                while not received:
                    await trio.sleep(0.01)
            assert received == [b"still talking"]


async def echo(stream: trio.SocketStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def test_tcp_proxy_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    config = bootstrap([tcp_listener("db", idle_timeout="2s")], [cluster("db", [5432])])
    async with two_stacks() as (a, b), raw_server(b, 5432, echo), running_proxy(config, a) as proxy:
        with trio.fail_after(LIMIT):
            stream = await connect(b)
            for i in range(5):  # traffic every second keeps it open past the idle timeout
                await stream.send_all(b"ping %d" % i)
                assert await stream.receive_some(100) == b"ping %d" % i
                await trio.sleep(1.0)
            quiet_from = trio.current_time() - 1.0
            assert await read_to_eof(stream) == b""
            assert 2.0 <= trio.current_time() - quiet_from <= 2.1
            await stream.aclose()
            assert proxy.stats.value("tcp.tcp.idle_timeout") == 1


async def test_tcp_proxy_connect_failure_closes_the_client(autojump_clock: trio.testing.MockClock) -> None:
    config = bootstrap([tcp_listener("db")], [cluster("db", [5499])])  # nothing listens there
    async with two_stacks() as (a, b), running_proxy(config, a) as proxy:
        with trio.fail_after(LIMIT):
            stream = await connect(b)
            assert await read_to_eof(stream) == b""
            await stream.aclose()
            assert proxy.stats.value("cluster.db.upstream_cx_connect_fail") == 1


async def test_tcp_proxy_max_connections(autojump_clock: trio.testing.MockClock) -> None:
    breakers = {"thresholds": [{"max_connections": 1}]}
    config = bootstrap([tcp_listener("db")], [cluster("db", [5432], circuit_breakers=breakers)])
    async with two_stacks() as (a, b), raw_server(b, 5432, echo), running_proxy(config, a) as proxy:
        with trio.fail_after(LIMIT):
            first = await connect(b)
            await first.send_all(b"one")
            assert await first.receive_some(10) == b"one"
            second = await connect(b)
            assert await read_to_eof(second) == b""  # over the limit: closed
            assert proxy.stats.value("cluster.db.upstream_cx_overflow") == 1
            await first.send_all(b"still")
            assert await first.receive_some(10) == b"still"
            await first.aclose()
            await second.aclose()


async def test_filter_chain_match_transport_and_application_protocols(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Envoy's chain choice after server names: ``transport_protocol`` (``tls`` when the inspector saw
    a ClientHello, else ``raw_buffer``), then ``application_protocols`` against the client's ALPN
    offer, falling back to the chains that do not set them.  One port serves plaintext HTTP, TLS for
    clients offering ``http/1.1`` and TLS for the rest, each from its own chain."""
    ca = make_ca("transport CA")
    cert, key = write_leaf(ca, tmp_path, "svc.example")

    def chain(body: str, **match: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "filter_chain_match": match,
            "filters": [
                hcm([route(direct={"status": 200, "body": {"inline_string": body}})], stat_prefix=body)
            ],
        }
        if match.get("transport_protocol") == "tls":
            out["transport_socket"] = downstream_tls(cert, key, alpn=["http/1.1"])
        return out

    listener = {
        "address": {"socket_address": {"address": A_IP, "port_value": PROXY_PORT}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}],
        "filter_chains": [
            chain("plain", transport_protocol="raw_buffer"),
            chain("tls-h1", transport_protocol="tls", application_protocols=["http/1.1"]),
            chain("tls-other", transport_protocol="tls"),
        ],
    }
    config = bootstrap([listener], [cluster("app", [8081])])
    async with two_stacks() as (a, b), running_proxy(config, a):
        with trio.fail_after(LIMIT):
            client = Client(await connect(b))
            assert (await client.request("GET", "/")).body == b"plain"
            await client.aclose()
            for offer, expected in (
                (["h2", "http/1.1"], b"tls-h1"),
                (["h2"], b"tls-other"),
                (None, b"tls-other"),
            ):
                stream = await tls_connect(b, client_context(ca, offer), "svc.example")
                client = Client(stream, host="svc.example")
                assert (await client.request("GET", "/")).body == expected, offer
                await client.aclose()
