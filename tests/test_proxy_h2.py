"""HTTP/2 to clients (h2c prior knowledge) on the in-process simulator, under trio's MockClock.

The proxy listens on stack A, the hypercorn backends (HTTP/1.1) and an ``h2``-library client live on
stack B, as in ``test_proxy_http``.  Each stream must meet the same router as an HTTP/1.1 request;
flow control must hold the proxy's buffering to the windows both ways; a client's RST_STREAM must
cancel its request; a drain must send GOAWAY and let the streams in flight finish.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import h11
import pytest
import trio
import trio.testing
from proxy_helpers import (
    BackendApp,
    bootstrap,
    cluster,
    connect,
    hcm,
    http_bootstrap,
    http_listener,
    pattern_sha256,
    running_proxy,
    start_backend,
    wait_until,
)
from socket_helpers import two_stacks
from test_proxy_http import file_log
from test_proxy_http1 import _lean, _log_lines

from trio_yastack import Stack
from trio_yastack.l7.config import (
    HTTP_PROTOCOL_OPTIONS_TYPE,
    Bootstrap,
    ConfigError,
    Http2Options,
    HttpConnectionManager,
)
from trio_yastack.l7.h2_downstream import PREFACE, StreamBridge, request_headers_problem, whole_response
from trio_yastack.l7.proxy import Proxy

LIMIT = 60.0


@dataclass
class _Stream:
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        assert self.headers is not None
        return int(dict(self.headers)[b":status"])


class H2Client:
    """A small HTTP/2 client over a trio stream; ``auto_ack`` False leaves received DATA
    unacknowledged (a reader that stopped reading) until :meth:`ack_all`."""

    def __init__(self, stream: trio.abc.Stream, *, auto_ack: bool = True, window: int = 65535) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.auto_ack = auto_ack
        self.streams: dict[int, _Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.changed = trio.Event()
        self.unacked: dict[int, int] = {}
        self.lock = trio.Lock()

    async def flush(self) -> None:
        async with self.lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.conn.initiate_connection()
        await self.flush()
        task_status.started()
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    self._handle(event)
                await self.flush()
                self._wake()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed = True
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _handle(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.ResponseReceived):
            self.streams[sid].headers = event.headers
        elif isinstance(event, h2.events.DataReceived):
            self.streams[sid].body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            else:
                self.unacked[sid] = self.unacked.get(sid, 0) + event.flow_controlled_length
        elif isinstance(event, h2.events.TrailersReceived):
            self.streams[sid].trailers = event.headers
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[sid].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams[sid].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            if event.error_code == h2.errors.ErrorCodes.NO_ERROR:
                # h2 closes its state machine on any GOAWAY, so it would refuse the responses a
                # graceful GOAWAY lets finish (curl's nghttp2 takes them): reopen it, as a test client
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    async def ack_all(self) -> None:
        self.auto_ack = True
        for sid, n in self.unacked.items():
            self.conn.acknowledge_received_data(n, sid)
        self.unacked.clear()
        await self.flush()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        streaming: bool = False,
    ) -> int:
        """A new stream's request; ``streaming``: its body follows by :meth:`send_body`."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = _Stream()
        head = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "proxy.test")]
        self.conn.send_headers(sid, [*head, *(headers or [])], end_stream=body is None and not streaming)
        await self.flush()
        if body is not None:
            await self.send_body(sid, body)
        return sid

    async def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        view = memoryview(body)
        while view:
            window = self.conn.local_flow_control_window(sid)
            if window == 0:
                await self.changed.wait()
                continue
            n = min(window, self.conn.max_outbound_frame_size, len(view))
            self.conn.send_data(sid, bytes(view[:n]))
            view = view[n:]
            await self.flush()
        if end:
            self.conn.end_stream(sid)
            await self.flush()

    async def wait(self, sid: int) -> _Stream:
        stream = self.streams[sid]
        while not (stream.ended or stream.reset is not None or self.closed):
            await self.changed.wait()
        return stream


async def _client(nursery: trio.Nursery, b: Stack, *, auto_ack: bool = True) -> H2Client:
    """An :class:`H2Client` connected from stack ``b`` to the proxy, running in ``nursery`` (also
    used by test_proxy_filters_rbac)."""
    client = H2Client(await connect(b), auto_ack=auto_ack)
    await nursery.start(client.run)
    return client


class H2Run(NamedTuple):
    proxy: Proxy
    client: H2Client
    nursery: trio.Nursery


@asynccontextmanager
async def h2_proxy(config: Bootstrap, app: BackendApp, *, auto_ack: bool = True) -> AsyncIterator[H2Run]:
    """The set-up every end-to-end test here shares: two stacks, ``app`` on stack B port 8081, the
    proxy on stack A with ``config``, and an :class:`H2Client` (prior knowledge) connected from B,
    all under :data:`LIMIT`.  The backend is stopped once the proxy is down."""
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8081)
        async with running_proxy(config, a) as proxy:
            with trio.fail_after(LIMIT):
                yield H2Run(proxy, await _client(nursery, b, auto_ack=auto_ack), nursery)
        backend.stop()


async def test_h2c_streams_go_through_the_router(autojump_clock: trio.testing.MockClock) -> None:
    """Prior knowledge: several streams at once on one connection, each routed and proxied as an
    HTTP/1.1 request would be (forwarding headers, cookies joined), bodies both ways."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app) as (proxy, client, _):
        cookies = [("cookie", "a=1"), ("cookie", "b=2")]
        gets = [await client.request("GET", f"/json?n={i}", headers=cookies) for i in range(5)]
        upload = bytes(range(256)) * 1024  # 256 KiB, several windows' worth
        post = await client.request("POST", "/upload", body=upload)
        for sid in gets:
            got = await client.wait(sid)
            assert got.status == 200 and got.reset is None
            doc = json.loads(got.body)
            headers = dict(doc["headers"])
            assert doc["method"] == "GET" and doc["path"].startswith("/json?n=")
            assert headers["host"] == "proxy.test"
            assert headers["cookie"] == "a=1; b=2"
            assert headers["x-forwarded-proto"] == "http"
            assert "x-request-id" in headers
        got = await client.wait(post)
        assert got.status == 200
        assert json.loads(got.body) == {
            "bytes": len(upload),
            "sha256": hashlib.sha256(upload).hexdigest(),
        }
        stats = proxy.stats
        assert stats.value("http.ingress.downstream_cx_http2_total") == 1
        assert stats.value("http.ingress.downstream_rq_total") == 6
        assert stats.value("http.ingress.downstream_rq_2xx") == 6
        await client.stream.aclose()


async def test_h2_settings_from_http2_protocol_options(autojump_clock: trio.testing.MockClock) -> None:
    """``max_concurrent_streams`` and ``initial_stream_window_size`` are what the proxy's SETTINGS
    say; a client that opens a stream beyond the limit broke the protocol: the ``h2`` library
    answers GOAWAY with PROTOCOL_ERROR (RFC 9113 5.1.2 allows it; nghttp2 refuses the stream alone)."""
    options = {"max_concurrent_streams": 2, "initial_stream_window_size": 70000}
    config = bootstrap(
        [http_listener(hcm(http2_protocol_options=options, codec_type="HTTP2"))], [cluster("app", [8081])]
    )
    app = BackendApp("one")
    app.delay = 5.0
    async with h2_proxy(config, app) as (_, client, _):
        await wait_until(lambda: client.conn.remote_settings.max_concurrent_streams == 2)
        assert client.conn.remote_settings.initial_window_size == 70000
        # h2 itself keeps a client within the limit; speak past it by hand for the third
        sids = [await client.request("GET", f"/{i}") for i in range(2)]
        settings = client.conn.remote_settings
        settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([10])
        await client.request("GET", "/third")
        await wait_until(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert client.goaway.last_stream_id == sids[-1]
        await wait_until(lambda: client.closed)
        assert all(client.streams[sid].headers is None for sid in sids)


async def test_h2_response_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    """A client that stops reading: the proxy sends no more than the client's window, and stops
    reading the upstream, so the backend is held back too; reading again, every byte arrives."""
    nbytes = 8 * 1024 * 1024
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app, auto_ack=False) as (_, client, _):
        sid = await client.request("GET", f"/stream?bytes={nbytes}")
        await trio.sleep(5.0)  # simulated: every buffer on the way has filled by now
        assert len(client.streams[sid].body) <= 65535
        assert 0 < app.streamed < nbytes // 2, app.streamed  # socket buffers, not the whole body
        await client.ack_all()
        got = await client.wait(sid)
        assert got.status == 200 and len(got.body) == nbytes
        assert hashlib.sha256(got.body).hexdigest() == pattern_sha256(nbytes)
        await client.stream.aclose()


async def test_h2_request_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    """An upstream that does not read yet: the proxy acknowledges request DATA only as the upstream
    takes it, so the client's window runs out rather than the proxy buffering the body."""
    nbytes = 8 * 1024 * 1024
    upload = bytes(range(256)) * (nbytes // 256)
    app = BackendApp("one")
    options = {"initial_stream_window_size": 65535, "initial_connection_window_size": 65535}
    config = http_bootstrap([cluster("app", [8081])], http2_protocol_options=options)
    async with h2_proxy(config, app) as (_, client, nursery):
        sid = await client.request("POST", "/upload?hold=5", streaming=True)
        sender = trio.CancelScope()
        sent_before_hold_ends: list[int] = []

        async def send() -> None:
            with sender:
                await client.send_body(sid, upload)

        nursery.start_soon(send)
        await trio.sleep(4.0)  # the backend holds for 5 s: the upload stalls on windows
        sent_before_hold_ends.append(client.conn.outbound_flow_control_window)
        assert client.conn.local_flow_control_window(sid) == 0
        got = await client.wait(sid)
        assert got.status == 200
        assert json.loads(got.body) == {"bytes": nbytes, "sha256": hashlib.sha256(upload).hexdigest()}
        await client.stream.aclose()


async def test_h2_rst_stream_cancels_the_request(autojump_clock: trio.testing.MockClock) -> None:
    """RST_STREAM from the client abandons its upstream request (counted as a downstream reset);
    the connection and its other streams carry on."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app) as (proxy, client, _):
        slow = await client.request("GET", "/slow?delay=30")
        await wait_until(lambda: app.in_flight == 1)
        client.conn.reset_stream(slow, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        # the upstream request is abandoned: its connection closed (hypercorn's handler
        # sleeps on regardless, so the backend's own count cannot tell)
        await wait_until(lambda: proxy.stats.value("cluster.app.upstream_cx_active") == 0, timeout=5.0)
        assert proxy.stats.value("http.ingress.downstream_rq_active") == 0
        assert proxy.stats.value("http.ingress.downstream_rq_rx_reset") == 1
        other = await client.request("GET", "/json")
        assert (await client.wait(other)).status == 200
        assert client.streams[slow].headers is None
        await client.stream.aclose()


async def test_h2_goaway_on_drain(autojump_clock: trio.testing.MockClock) -> None:
    """A drain sends GOAWAY (NO_ERROR, naming the last stream taken); the stream in flight still
    gets its whole response, then the proxy closes the connection."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app) as (proxy, client, _):
        sid = await client.request("GET", "/slow?delay=2")
        await wait_until(lambda: app.in_flight == 1)
        proxy.state.start_drain()
        await wait_until(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert client.goaway.last_stream_id == sid
        got = await client.wait(sid)
        assert got.status == 200 and got.body == b"one slow"
        await wait_until(lambda: client.closed)


async def test_h2_preface_only_with_auto_or_http2(autojump_clock: trio.testing.MockClock) -> None:
    """``codec_type: HTTP1`` does not speak HTTP/2: the preface is a bad HTTP/1.1 request."""
    config = bootstrap([http_listener(hcm(codec_type="HTTP1"))], [cluster("app", [8081])])
    async with two_stacks() as (a, b), running_proxy(config, a):
        with trio.fail_after(LIMIT):
            stream = await connect(b)
            await stream.send_all(PREFACE)
            reply = await stream.receive_some(65536)
            assert reply.startswith(b"HTTP/1.1 4"), reply
            await stream.aclose()


# --- HTTP/2 to the upstream too (hypercorn speaks h2c by prior knowledge) ---------------------


def _h2_cluster() -> dict[str, object]:
    return cluster("app", [8081], http2_protocol_options={"initial_stream_window_size": 65535})


async def test_h2_upstream_multiplexes_one_connection(autojump_clock: trio.testing.MockClock) -> None:
    """Requests at once share one upstream connection, one stream each; bodies pass both ways."""
    app = BackendApp("one")
    config = http_bootstrap([_h2_cluster()])
    async with h2_proxy(config, app) as (proxy, client, _):
        slow = [await client.request("GET", "/slow?delay=1") for _ in range(5)]
        upload = bytes(range(256)) * 2048  # 512 KiB, several upstream windows
        post = await client.request("POST", "/upload", body=upload)
        for sid in slow:
            got = await client.wait(sid)
            assert (got.status, bytes(got.body)) == (200, b"one slow")
        got = await client.wait(post)
        assert json.loads(got.body) == {
            "bytes": len(upload),
            "sha256": hashlib.sha256(upload).hexdigest(),
        }
        assert app.max_in_flight >= 5  # at once, not one after another
        assert proxy.stats.value("cluster.app.upstream_cx_total") == 1
        assert proxy.stats.value("cluster.app.upstream_rq_200") == 6
        headers = dict(app.seen[0].headers)
        assert headers["host"] == "proxy.test" and "x-forwarded-for" in headers
        await client.stream.aclose()


async def test_h2_upstream_backpressure_and_cancel(autojump_clock: trio.testing.MockClock) -> None:
    """A client that stops reading holds the upstream stream back (its window is not reopened);
    resetting the client's stream resets the upstream stream, and the shared connection stays."""
    nbytes = 8 * 1024 * 1024
    app = BackendApp("one")
    config = http_bootstrap([_h2_cluster()])
    async with h2_proxy(config, app, auto_ack=False) as (proxy, client, _):
        sid = await client.request("GET", f"/stream?bytes={nbytes}")
        await trio.sleep(5.0)
        assert len(client.streams[sid].body) <= 65535
        # hypercorn buffers what its app sends, so the proxy's own intake is the oracle: what
        # came in is what the client took (its window), one chunk in the relay waiting for
        # the client's window, and the upstream stream's window: 3 x 64 KiB, not 8 MiB
        [h2conn] = proxy.clusters.clusters["app"].hosts[0].h2_connections
        assert 65535 <= h2conn.bytes_received <= 4 * 65536, h2conn.bytes_received
        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        await wait_until(lambda: proxy.stats.value("cluster.app.upstream_rq_active") == 0, timeout=5.0)
        assert proxy.stats.value("http.ingress.downstream_rq_rx_reset") == 1
        assert proxy.stats.value("cluster.app.upstream_cx_active") == 1  # shared: it stays
        await client.ack_all()
        other = await client.request("GET", "/json")
        assert (await client.wait(other)).status == 200
        assert proxy.stats.value("cluster.app.upstream_cx_total") == 1
        await client.stream.aclose()


# --- config -------------------------------------------------------------------------------------


def _problems(listener_extra: dict[str, object], cluster_extra: dict[str, object]) -> list[tuple[str, str]]:
    try:
        bootstrap([http_listener(hcm(**listener_extra))], [cluster("app", [8081], **cluster_extra)])
    except ConfigError as exc:
        return [(p.path, p.message) for p in exc.problems]
    return []


def test_http2_options_config() -> None:
    """Defaults (1 MiB windows, HTTP/1.1 upstream), what is read, and what is refused by path."""
    plain = http_bootstrap([cluster("app", [8081])])
    hcm_config = plain.listeners[0].filter_chains[0].filter
    assert isinstance(hcm_config, HttpConnectionManager)
    assert hcm_config.http2 == Http2Options(2**31 - 1, 1024 * 1024, 1024 * 1024)
    assert plain.clusters[0].http2 is None
    options = {"max_concurrent_streams": 7, "initial_stream_window_size": 70000}
    typed = {
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                "explicit_http_config": {"http2_protocol_options": options},
            }
        }
    }
    loaded = bootstrap([http_listener(hcm())], [cluster("app", [8081], **typed)])
    assert loaded.clusters[0].http2 == Http2Options(7, 70000, 1024 * 1024)
    assert " connect_timeout 1s http2\n" in loaded.summary(), loaded.summary()  # check-config says so
    http1 = {
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    }
    assert bootstrap([http_listener(hcm())], [cluster("app", [8081], **http1)]).clusters[0].http2 is None

    hcm_path = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http2_protocol_options"
    [(path, message)] = _problems({"http2_protocol_options": {"initial_stream_window_size": 100}}, {})
    assert path == f"{hcm_path}.initial_stream_window_size", path
    [(path, message)] = _problems({"http2_protocol_options": {"hpack_table_size": 100}}, {})
    assert path == f"{hcm_path}.hpack_table_size" and "unsupported field" in message
    both = {**typed, "http2_protocol_options": {}}
    [(path, message)] = _problems({}, both)
    assert path == "static_resources.clusters[0].http2_protocol_options", path


async def test_h2_bad_input_is_a_counted_error(autojump_clock: trio.testing.MockClock) -> None:
    """A stream whose head is valid HTTP/2 but no HTTP/1.1 request (a method with a space) is reset
    and the connection serves on; a broken frame ends the connection with GOAWAY; both counted."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app) as (proxy, client, _):
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        bad = await client.request("BAD METHOD", "/json")
        assert (await client.wait(bad)).reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
        good = await client.request("GET", "/json")
        assert (await client.wait(good)).status == 200
        assert proxy.stats.value("http.ingress.downstream_cx_protocol_error") == 1
        # SETTINGS with a 5-byte payload (RFC 9113 6.5: a multiple of 6, else FRAME_SIZE_ERROR)
        await client.stream.send_all(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)
        await wait_until(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
        await wait_until(lambda: client.closed)
        await wait_until(lambda: proxy.stats.value("http.ingress.downstream_cx_protocol_error") == 2)
        assert app.seen and all(seen.method == "GET" for seen in app.seen)


async def test_h2_idle_timeout_sends_goaway(autojump_clock: trio.testing.MockClock) -> None:
    """``idle_timeout`` counts from the last stream's end: then GOAWAY (NO_ERROR) and a close."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])], common_http_protocol_options={"idle_timeout": "10s"})
    async with h2_proxy(config, app) as (proxy, client, _):
        sid = await client.request("GET", "/slow?delay=12")  # longer than idle_timeout
        assert (await client.wait(sid)).status == 200
        finished = trio.current_time()
        assert client.goaway is None  # a stream in flight is not idleness
        await wait_until(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert 10.0 <= trio.current_time() - finished <= 10.5
        await wait_until(lambda: client.closed)
        assert proxy.stats.value("http.ingress.downstream_cx_idle_timeout") == 1


def _h2_accepts(headers: list[tuple[bytes, bytes]], trailers: bool) -> bool:
    """h2's own inbound validation (what the proxy turned off for :func:`request_headers_problem`)."""
    flags = h2.utilities.HeaderValidationFlags(
        is_client=False, is_trailer=trailers, is_response_header=False, is_push_promise=False
    )
    try:
        list(h2.utilities.validate_headers(headers, flags))
    except h2.exceptions.ProtocolError:
        return False
    return True


def test_request_header_checks_agree_with_h2s() -> None:
    """The proxy's one-pass header checks give h2's verdict on every block: hand-picked bad cases
    (each rule of RFC 9113 8.2/8.3 once) and 5000 seeded random blocks built from valid and invalid
    names, values and orders."""
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.test")]
    cases: list[tuple[list[tuple[bytes, bytes]], bool]] = [
        (base, False),
        ([*base, (b"Upper", b"x")], False),
        ([*base, (b"sp ace", b"x")], False),
        ([*base, (b"co:lon", b"x")], False),
        ([*base, (b"", b"x")], False),
        ([*base, (b"x", b"a\r\nb")], False),
        ([*base, (b"x", b"a\x00")], False),
        ([*base, (b"x", b" a")], False),
        ([*base, (b"x", b"a\t")], False),
        ([*base, (b"x", b"")], False),
        ([*base, (b"x", b"\xff\x80 ok")], False),
        ([*base, (b"te", b"trailers")], False),
        ([*base, (b"te", b"TRAILERS")], False),
        ([*base, (b"te", b"gzip")], False),
        ([*base, (b"connection", b"close")], False),
        ([*base, (b"transfer-encoding", b"chunked")], False),
        ([*base, (b":method", b"GET")], False),
        ([*base, (b"x", b"1"), (b":foo", b"1")], False),
        ([(b"x", b"1"), *base], False),
        ([*base, (b":status", b"200")], False),
        (base[1:], False),
        ([base[0], base[2], base[3]], False),
        ([base[0], base[1], (b":path", b""), base[3]], False),
        ([*base, (b"host", b"a.test")], False),
        ([*base, (b"host", b"b.test")], False),
        ([*base[:3], (b"host", b"a.test"), (b"host", b"a.test")], False),
        (base[:3], False),
        ([(b":method", b"CONNECT"), (b":authority", b"a.test:443")], False),
        ([(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")], False),
        ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), *base[1:]], False),
        ([*base, (b":protocol", b"websocket")], False),
        ([(b"grpc-status", b"0")], True),
        ([(b":status", b"200")], True),
        ([(b"Bad", b"0")], True),
        ([], True),
    ]
    rng = random.Random(20)
    names = [b":method", b":scheme", b":path", b":authority", b":status", b":x", b"host", b"te", b"x-a",
             b"cookie", b"connection", b"X-Up", b"a:b", b"", b"\x7f", b"\xc3\xa9", b"::"]  # fmt: skip
    values = [b"GET", b"CONNECT", b"http", b"/", b"", b"a.test", b"trailers", b"gzip", b" x", b"x\t",
              b"a\nb", b"\x00", b"\xff", b"ok ok"]  # fmt: skip
    for _ in range(5000):
        block = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(0, 7))]
        if rng.random() < 0.5:
            block = base + block
        cases.append((block, rng.random() < 0.2))
    for block, trailers in cases:
        ours = request_headers_problem(block, trailers)
        assert (ours is None) == _h2_accepts(block, trailers), (block, trailers, ours)


async def test_h2_client_goaway_with_streams_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    """A client's GOAWAY (h2load's at the end of its run) while a response is held by its window:
    h2's state machine is closed then, and the stream in flight is cancelled quietly (counted as a
    downstream reset): no handler error, every stream and the connection accounted for.  (Under
    h2load a stream's close met h2's closed state machine and raised out of ``aclose``.)"""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app, auto_ack=False) as (proxy, client, _):
        small = [await client.request("GET", "/json") for _ in range(5)]
        for sid in small:
            assert (await client.wait(sid)).status == 200
        big = await client.request("GET", "/stream?bytes=1000000")  # held by the client's windows
        await wait_until(lambda: len(client.streams[big].body) >= 65535 - 5 * 242)
        client.conn.close_connection()
        await client.flush()
        await wait_until(lambda: client.closed)
        await wait_until(lambda: proxy.stats.value("http.ingress.downstream_cx_active") == 0)
        assert proxy.stats.value("downstream_cx_handler_error") == 0
        assert proxy.stats.value("http.ingress.downstream_rq_active") == 0
        assert proxy.stats.value("http.ingress.downstream_rq_rx_reset") == 1


async def test_h2_response_cut_short_is_reset(autojump_clock: trio.testing.MockClock) -> None:
    """Was a bug (fixed): a response whose relay was cut short (here the route's timeout, while its
    body waited for the connection's window, held by a client that stopped reading) was ended with
    END_STREAM by the stream's close, as if complete, the body h11 had handed over never sent (the
    client's h2 saw 0 of the 242 bytes its content-length promised: a connection error).  Now it
    is reset (RST_STREAM INTERNAL_ERROR)."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app, auto_ack=False) as (_, client, _):
        big = await client.request("GET", "/stream?bytes=1000000")
        await wait_until(lambda: len(client.streams[big].body) == 65535)  # the connection's window
        small = await client.request("GET", "/json")
        got = await client.wait(small)  # the route's timeout (15 s, simulated) ends it
        assert got.reset == h2.errors.ErrorCodes.INTERNAL_ERROR and not got.ended
        assert got.status == 200 and not got.body  # its head went out, its body could not
        assert not client.closed
        await client.stream.aclose()


async def test_h2_streams_take_the_lean_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A bodyless HTTP/2 request takes the HTTP/1.1 fast path's lean function (its bridge writes
    the request as h11 would, and parses what the lean path writes as h11 would): the same
    answers, statistics and access-log lines (protocol ``HTTP/2``) as the general path gives it;
    a request with a body still takes the general path."""
    runs = []
    for lean_on in (True, False):
        taken = _lean(lean_on, monkeypatch)
        log = tmp_path / f"lean-{lean_on}.log"
        app = BackendApp("one")
        config = http_bootstrap([cluster("app", [8081])], access_log=[file_log(log)])
        async with h2_proxy(config, app) as (proxy, client, _):
            answers: list[object] = []
            for path in ("/json", "/status/404", "/stream?bytes=100000"):
                got = await client.wait(await client.request("GET", path))
                head = [
                    (n, v)
                    for n, v in got.headers or ()
                    if n not in (b"date", b"x-envoy-upstream-service-time")
                ]
                answers.append((head, bytes(got.body), got.ended))
            posted = await client.wait(await client.request("POST", "/json", body=b"x" * 1000))
            answers.append((posted.status, bytes(posted.body)))
            await client.stream.aclose()
            await wait_until(lambda: proxy.stats.value("http.ingress.downstream_cx_active") == 0)
            stats = sorted(row for row in proxy.stats.snapshot() if "bytes" not in row[2])
        if lean_on:
            assert taken == [True, True, True]  # the three GETs; the POST never offered
        runs.append((answers, stats, _log_lines(log)))
    assert runs[0] == runs[1]
    lines = runs[0][2]
    assert len(lines) == 4 and all(' HTTP/2" ' in line for line in lines), lines


def _h11_parse(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes] | None:
    """``data`` as the bridge's h11 client parses it after a GET: (status, fields, body) for a
    response that ends in it, None if h11 refuses it or wants more."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    status, fields, body = b"", [], b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status, fields = str(event.status_code).encode(), list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, fields, body
            else:
                return None
    except h11.RemoteProtocolError:
        return None


def test_whole_response_parses_as_h11() -> None:
    """The bridge's predicted response parse gives h11's status, fields and body for every
    response it takes, and leaves to h11 what it should (informational, 204/304, chunked,
    close-framed, partial, folded, bad names or values, a duplicate Content-Length)."""
    head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
    taken = [
        head + b"Content-Length: 6\r\n\r\nhello\n",
        head + b"content-length: 0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nX-A:  spaced \t\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 503 \r\ncontent-length: 2\r\nx-b: \xff obs\r\n\r\nno",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 1\r\n\r\nx",
    ]
    left = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        head + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        head + b"\r\nclose-framed",
        head + b"Content-Length: 6\r\n\r\nhel",
        head + b"Content-Length: 6\r\n",
        head + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        head + b"Bad Name: x\r\nContent-Length: 0\r\n\r\n",
        head + b"X-C: a\x01b\r\nContent-Length: 0\r\n\r\n",
        head + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        head + b"Content-Length: +1\r\n\r\nx",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 20x OK\r\nContent-Length: 0\r\n\r\n",
    ]
    for data in taken:
        whole = whole_response(data)
        assert whole is not None, data
        assert whole == _h11_parse(data), data
    for data in left:
        assert whole_response(data) is None, data


class _NoConn:
    """A StreamBridge's connection, for a bridge made without one: resets only recorded."""

    def __init__(self) -> None:
        self.resets: list[int] = []

    def reset_stream(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        self.resets.append(stream_id)


def test_bodyless_request_written_as_h11_writes_it() -> None:
    """A bodyless request's HTTP/1.1 bytes made without h11 are h11's bytes exactly; what h11
    would refuse or check (a bad method, target, name or value; a Content-Length) is left to h11
    as before (the same LocalProtocolError, or the same reset); and the h11 client made later for
    the response is told the request, so it parses the answer."""
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a?b=c"), (b":authority", b"x.test")]
    direct = [
        base,
        [*base, (b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")],
        [*base, (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-v", b"sp ace\tand tab"), (b"x-e", b"")],
        [(b":method", b"HEAD"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h.test")],
        [*base[:3], (b"x-obs", b"\xff\xfe")],
        [*base, (b"x-c", b"a\x01b")],  # (h11's field-value refuses only NUL and other whitespace)
    ]
    left = [
        ([(b":method", b"BAD METHOD"), *base[1:]], "error"),
        ([base[0], base[1], (b":path", b"/\x7f"), base[3]], "error"),
        ([*base, (b'x"q', b"1")], "error"),
        ([*base, (b"content-length", b"0")], "h11"),
        ([*base, (b"content-length", b"3")], "reset"),
    ]
    for headers in direct:
        bridge = StreamBridge(_NoConn(), 1, headers, True)  # type: ignore[arg-type]  # a stub connection
        assert bridge._h11 is None  # written without h11
        method = dict(headers)[b":method"]
        fields = [(n, v) for n, v in headers if not n.startswith(b":") and n != b"cookie"]
        cookies = [v for n, v in headers if n == b"cookie"]
        if b":authority" in dict(headers):
            fields.insert(0, (b"host", dict(headers)[b":authority"]))
        elif b"host" not in dict(headers):
            fields.insert(0, (b"host", b""))  # (HTTP/1.1 wants one; an empty one, as the bridge)
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))
        reference = h11.Connection(h11.CLIENT)
        expected = reference.send(h11.Request(method=method, target=dict(headers)[b":path"], headers=fields))
        expected += reference.send(h11.EndOfMessage())
        assert bytes(bridge.pending) == expected
        assert bridge.take_request() == expected and bridge.take_request() == b""  # taken whole, once
        bridge.h11.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert isinstance(bridge.h11.next_event(), h11.Response)
    for headers, outcome in left:
        conn = _NoConn()
        if outcome == "error":
            with pytest.raises(h11.LocalProtocolError):
                StreamBridge(conn, 1, headers, True)  # type: ignore[arg-type]  # a stub connection
            continue
        bridge = StreamBridge(conn, 1, headers, True)  # type: ignore[arg-type]  # a stub connection
        assert bridge._h11 is not None and conn.resets == ([1] if outcome == "reset" else [])
    post = [(b":method", b"POST"), *base[1:]]
    streaming = StreamBridge(_NoConn(), 3, post, False)  # type: ignore[arg-type]  # a stub connection
    assert streaming.take_request() == b"" and streaming.pending  # a body to come: read as it comes


def test_a_known_request_is_written_as_the_first() -> None:
    """The same bodyless request again (:attr:`H2Downstream.known_requests`) gives the same bytes
    and the same h11 client for its response as when it was written the first time; a request
    left to h11 or with a body is not remembered."""
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a"), (b":authority", b"x.test")]
    for headers in (
        head,
        [*head, (b"cookie", b"a=1"), (b"cookie", b"b=2")],
        [(b":method", b"HEAD"), *head[1:]],
    ):
        first = StreamBridge(_NoConn(), 1, headers, True)  # type: ignore[arg-type]  # a stub connection
        known = first.known()
        assert known is not None
        again = StreamBridge(_NoConn(), 3, headers, True, known)  # type: ignore[arg-type]  # a stub connection
        assert (again.request_ended, again.head_request) == (True, first.head_request)
        assert again.take_request() == first.take_request() != b""
        again.h11.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert isinstance(again.h11.next_event(), h11.Response)
    assert StreamBridge(_NoConn(), 1, [*head, (b"content-length", b"0")], True).known() is None  # type: ignore[arg-type]  # a stub connection
    assert StreamBridge(_NoConn(), 1, [(b":method", b"POST"), *head[1:]], False).known() is None  # type: ignore[arg-type]  # a stub connection


async def test_h2_repeated_requests_then_a_malformed_one(autojump_clock: trio.testing.MockClock) -> None:
    """The same request again and again on a connection (remembered, and HPACK-indexed by the
    client after the first) reaches the backend as the first did; a malformed block after them
    still ends the connection with GOAWAY PROTOCOL_ERROR (only an identical block skips the checks)."""
    app = BackendApp("one")
    config = http_bootstrap([cluster("app", [8081])])
    async with h2_proxy(config, app) as (proxy, client, _):
        extra = [("user-agent", "h2load"), ("accept", "*/*")]
        for _ in range(3):  # one after the other, then three at once
            got = await client.wait(await client.request("GET", "/json", headers=extra))
            assert got.status == 200
        sids = [await client.request("GET", "/json", headers=extra) for _ in range(3)]
        for sid in sids:
            assert (await client.wait(sid)).status == 200
        seen = [(s.method, s.path, [(k, v) for k, v in s.headers if k != "x-request-id"]) for s in app.seen]
        assert len(seen) == 6 and all(one == seen[0] for one in seen)
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        await client.request("GET", "/json", headers=[*extra, ("X-Upper", "1")])  # uppercase: malformed
        await wait_until(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert proxy.stats.value("http.ingress.downstream_rq_total") == 6


async def test_h2_over_tls_alpn(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """ALPN ``h2`` on a TLS chain: the bridge reads and writes the TLS stream's own methods (no
    socket to read straight), several streams at once and one again."""
    from test_proxy_tcp_tls import client_context, tls_bootstrap, tls_connect

    from trio_yastack.tls.certs import make_ca

    ca = make_ca("proxy h2 test CA")
    app = BackendApp("one")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8081)
        async with running_proxy(tls_bootstrap(tmp_path, ca), a) as proxy:
            with trio.fail_after(LIMIT):
                stream = await tls_connect(b, client_context(ca, ["h2"]), "a.example")
                assert stream.selected_alpn_protocol() == "h2"
                client = H2Client(stream)
                await nursery.start(client.run)
                sids = [await client.request("GET", f"/json?n={i}") for i in range(3)]
                sids.append(await client.request("GET", "/json?n=0"))
                for n, sid in zip((0, 1, 2, 0), sids, strict=True):
                    got = await client.wait(sid)
                    assert got.status == 200 and got.ended
                    doc = json.loads(got.body)
                    assert doc["path"] == f"/json?n={n}"
                    assert dict(doc["headers"])["x-forwarded-proto"] == "https"
                assert proxy.stats.value("http.a.example.downstream_cx_http2_total") == 1
                await client.stream.aclose()
        backend.stop()
