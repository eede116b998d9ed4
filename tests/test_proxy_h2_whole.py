"""An HTTP/2 stream's whole response written by the lean path without a wait
(``StreamBridge.send_whole_now``, called from ``http_proxy._relay_start``).

The bridge frames the manager's whole response (one Content-Length, the body in hand) and queues the
frames for the connection's writer at once, or declines without changing anything -- a HEAD, a
response that is not whole, a body past the client's window, a queue near ``OUTBOUND_BOUND``, a
stream reset, a socket already failed -- and the manager writes it with ``send_all`` as before.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import h11
import pytest
import trio
import trio.testing
from proxy_helpers import cluster, http_bootstrap, raw_server, running_proxy, wait_until
from socket_helpers import two_stacks
from test_proxy_h2 import LIMIT, _client

from trio_yastack.l7 import http_proxy
from trio_yastack.l7.h2_downstream import OUTBOUND_BOUND, StreamBridge

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello"


class _Conn:
    """What the bridge uses of ``H2Downstream`` for a response: h2's state (a server that
    received the client's request), the writer's queue and its wake-up."""

    def __init__(self, window: int = 65535) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.client.initiate_connection()
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.initiate_connection()
        self.outbound: list[bytes] = []
        self.outbound_bytes = 0
        self.write_error: BaseException | None = None
        self.woken = 0

    def request(self, method: str) -> list[tuple[bytes, bytes]]:
        """The client's bodyless request on stream 1, received by the server; its header list."""
        headers = [(":method", method), (":scheme", "http"), (":path", "/"), (":authority", "a.test")]
        self.client.send_headers(1, headers, end_stream=True)
        self.client.receive_data(self.h2.data_to_send())  # (the server's SETTINGS first)
        events = self.h2.receive_data(self.client.data_to_send())
        self.client.receive_data(self.h2.data_to_send())  # (its SETTINGS acknowledged: none pending)
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                return [(bytes(n), bytes(v)) for n, v in event.headers or ()]
        raise AssertionError("no request")

    def queue(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.outbound.append(data)
            self.outbound_bytes += len(data)

    def _wake_writer(self) -> None:
        self.woken += 1

    def acknowledge(self, stream_id: int, n: int, *, open_stream: bool) -> None:
        pass

    def reset_stream(self, stream_id: int, code: object) -> None:
        pass


def _bridge(method: str = "GET", window: int = 65535) -> tuple[_Conn, StreamBridge]:
    conn = _Conn(window)
    bridge = StreamBridge(conn, 1, conn.request(method), True)  # type: ignore[arg-type]  # a stub connection
    assert bridge.take_request()
    return conn, bridge


def test_a_whole_response_is_framed_and_queued() -> None:
    conn, bridge = _bridge()
    assert bridge.send_whole_now(RESPONSE)
    assert bridge.response_ended and bridge.ended_whole and conn.woken == 1
    events = conn.client.receive_data(b"".join(conn.outbound))
    assert conn.outbound_bytes == len(b"".join(conn.outbound))
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert list(response.headers or ()) == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"x-a", b"b"),
    ]
    assert [bytes(e.data or b"") for e in events if isinstance(e, h2.events.DataReceived)] == [b"hello"]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert conn.h2.open_outbound_streams == 0 and conn.h2.open_inbound_streams == 0  # closed both ways


@pytest.mark.parametrize(
    "case",
    ["head", "chunked", "two writes", "window", "queue full", "reset", "socket failed"],
)
def test_declined_without_a_change(case: str) -> None:
    conn, bridge = _bridge(
        method="HEAD" if case == "head" else "GET", window=3 if case == "window" else 65535
    )
    data = RESPONSE
    if case == "chunked":
        data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    elif case == "two writes":
        data = RESPONSE[:-2]  # the body not all there: the rest comes in a later write
    elif case == "queue full":
        conn.outbound_bytes = OUTBOUND_BOUND - 100
    elif case == "reset":
        bridge.reset = True
    elif case == "socket failed":
        conn.write_error = OSError("gone")
    before = (conn.outbound_bytes, len(conn.outbound), conn.h2.local_flow_control_window(1))
    assert not bridge.send_whole_now(data)
    stream = conn.h2.streams[1]
    assert not stream.state_machine.headers_sent and not bridge.response_ended
    after = (conn.outbound_bytes, len(conn.outbound), conn.h2.local_flow_control_window(1))
    assert after == before and conn.woken == 0


async def _one_write_backend(stream: trio.SocketStream) -> None:
    """A keep-alive HTTP/1.1 backend that answers each request head with :data:`BACKEND_RESPONSE`
    in one write (so the proxy's reader has it whole at once), a HEAD's without its body."""
    buffered = b""
    while True:
        while b"\r\n\r\n" not in buffered:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffered += data
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        if head.startswith(b"HEAD "):
            await stream.send_all(BACKEND_RESPONSE[: BACKEND_RESPONSE.index(b"\r\n\r\n") + 4])
        else:
            await stream.send_all(BACKEND_RESPONSE)


BACKEND_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"


async def test_h2_lean_responses_written_without_send_all(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Through the proxy: a whole response is written by ``send_whole_now`` (no ``send_all`` on
    the bridge); a HEAD is declined and written by ``send_all``; every answer is whole."""
    taken: list[bool] = []
    sends: list[int] = []
    whole, send_all = StreamBridge.send_whole_now, StreamBridge.send_all

    def counting_whole(self: StreamBridge, data: bytes) -> bool:
        taken.append(whole(self, data))
        return taken[-1]

    async def counting_send_all(self: StreamBridge, data: bytes | bytearray | memoryview) -> None:
        sends.append(len(data))
        await send_all(self, data)

    monkeypatch.setattr(StreamBridge, "send_whole_now", counting_whole)
    monkeypatch.setattr(StreamBridge, "send_all", counting_send_all)
    config = http_bootstrap([cluster("app", [8081])])
    async with (
        two_stacks() as (a, b),
        trio.open_nursery() as nursery,
        raw_server(b, 8081, _one_write_backend),
        running_proxy(config, a) as proxy,
    ):
        with trio.fail_after(LIMIT):
            client = await _client(nursery, b)
            for _ in range(3):
                got = await client.wait(await client.request("GET", "/"))
                assert got.status == 200 and got.ended and bytes(got.body) == b"hello"
                assert (b"content-length", b"5") in (got.headers or ())
            assert taken == [True] * 3 and sends == [], (taken, sends)
            got = await client.wait(await client.request("HEAD", "/"))
            assert got.status == 200 and got.ended and not got.body
            assert True not in taken[3:] and sends  # (declined, or never offered: send_all's)
            await client.stream.aclose()
            await wait_until(lambda: proxy.stats.value("http.ingress.downstream_cx_active") == 0)
            assert proxy.stats.value("http.ingress.downstream_rq_2xx") == 4


async def test_h2_streams_reuse_parsers_and_skip_h11(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The streams of one connection reuse the fast path's request parsers (one at a time each; a
    parse that declines drops its parser), and a request the fast path takes never makes the
    manager's h11 state for its stream."""
    made: list[int] = []
    h11_asked: list[int] = []
    init = http_proxy.RequestParser.__init__
    make_h11 = http_proxy._Downstream.__dict__["h11"].fget  # (the property's own function)

    def counting_init(self: http_proxy.RequestParser) -> None:
        made.append(1)
        init(self)

    def counting_h11(self: http_proxy._Downstream) -> h11.Connection:
        h11_asked.append(1)
        made_h11: h11.Connection = make_h11(self)
        return made_h11

    monkeypatch.setattr(http_proxy.RequestParser, "__init__", counting_init)
    monkeypatch.setattr(http_proxy._Downstream, "h11", property(counting_h11))
    config = http_bootstrap([cluster("app", [8081])])
    async with (
        two_stacks() as (a, b),
        trio.open_nursery() as nursery,
        raw_server(b, 8081, _one_write_backend),
        running_proxy(config, a),
    ):
        with trio.fail_after(LIMIT):
            client = await _client(nursery, b)
            for _ in range(4):
                got = await client.wait(await client.request("GET", "/"))
                assert got.status == 200 and bytes(got.body) == b"hello"
            assert made == [1] and h11_asked == []  # one parser for the four; no h11
            # a request the fast path's parse declines (a HEAD: its response's framing needs h11)
            got = await client.wait(await client.request("HEAD", "/"))
            assert got.status == 200 and h11_asked
            got = await client.wait(await client.request("GET", "/"))
            assert got.status == 200 and bytes(got.body) == b"hello"
            assert made == [1, 1]  # the declining parse's parser dropped, a new one made
            await client.stream.aclose()
