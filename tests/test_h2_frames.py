"""A whole response framed by l7/_h2_frames.py: the bytes, and h2's state after, as h2's calls make them."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.stream import StreamState

from trio_yastack.l7._h2_frames import whole_response_frames
from trio_yastack.l7.h2_downstream import server_connection

HEAD = [
    (b":status", b"200"),
    (b"server", b"nginx"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"6"),
]


def _server() -> h2.connection.H2Connection:
    """A server as H2Downstream configures h2 (its checks off, our HPACK), its preface sent."""
    conn = server_connection()
    conn.initiate_connection()
    return conn


def _pair(
    end_request: bool = True, window: int = 65535
) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection, h2.connection.H2Connection]:
    """A client and two servers that have read the same bytes from it: stream 1 asked for."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    client.initiate_connection()
    request = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"x")]
    client.send_headers(1, request, end_stream=end_request)
    data = client.data_to_send()
    a, b = _server(), _server()
    for server in (a, b):
        server.receive_data(data)
        client.receive_data(server.data_to_send())  # (its SETTINGS and ack)
    client.data_to_send()
    for server in (a, b):
        server.receive_data(client.data_to_send())
        server.data_to_send()
    return client, a, b


def _by_h2(conn: h2.connection.H2Connection, head: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    if body:
        conn.send_headers(1, head)
        conn.send_data(1, body, end_stream=True)
    else:
        conn.send_headers(1, head, end_stream=True)
    return conn.data_to_send()


def _state(conn: h2.connection.H2Connection) -> tuple[object, ...]:
    stream = conn.streams[1]
    machine = stream.state_machine
    return (
        machine.state,
        machine.headers_sent,
        machine.trailers_sent,
        machine.stream_closed_by,
        stream.outbound_flow_control_window,
        conn.outbound_flow_control_window,
        stream.request_method,
        conn.open_inbound_streams,
    )


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (HEAD, b"hello\n"),
        (HEAD[:2], b""),  # a bodyless answer: END_STREAM on the HEADERS
        ([*HEAD[:3], (b"content-length", b"16384")], b"x" * 16384),  # the largest frame allowed
        ([*HEAD, (b"x-big", b"v" * 40000)], b"hello\n"),  # a head past one frame: CONTINUATION
        ([*HEAD, (b"x-big", b"v" * 40000)], b""),
    ],
)
def test_frames_and_state_as_h2s(head: list[tuple[bytes, bytes]], body: bytes) -> None:
    client, ours, theirs = _pair()
    expected = _by_h2(theirs, head, body)
    assert ours.data_to_send() == b""
    got = whole_response_frames(ours, 1, head, body)
    assert got == expected
    state = _state(ours)
    assert state == _state(theirs)
    assert state[0] is StreamState.CLOSED
    assert 1 not in ours.streams  # (counted closed, and so forgotten, as h2's)
    # and the client takes them: the response, its body, the stream's end
    events = client.receive_data(got)
    kinds = [type(event) for event in events]
    assert h2.events.ResponseReceived in kinds and h2.events.StreamEnded in kinds
    received = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert received == body


def _unchanged(conn: h2.connection.H2Connection, head: list[tuple[bytes, bytes]], body: bytes) -> None:
    before = _state(conn)
    assert whole_response_frames(conn, 1, head, body) is None
    assert _state(conn) == before
    assert conn.data_to_send() == b""


def test_past_one_frame_or_a_window_is_left_to_h2() -> None:
    _, ours, _ = _pair()
    _unchanged(ours, HEAD, b"x" * 16385)  # past the peer's frame size
    _, ours, _ = _pair(window=100)
    _unchanged(ours, HEAD, b"x" * 101)  # past the stream's window
    assert whole_response_frames(ours, 1, HEAD, b"x" * 100) is not None  # within it


def test_a_stream_not_half_closed_by_the_client_is_left_to_h2() -> None:
    _, ours, _ = _pair(end_request=False)  # the request's body still to come
    _unchanged(ours, HEAD, b"hello\n")
    _, ours, _ = _pair()
    ours.send_headers(1, HEAD)  # a head already sent (an informational one, or the general path's)
    ours.data_to_send()
    _unchanged(ours, HEAD, b"hello\n")
    _, ours, _ = _pair()
    ours.reset_stream(1)
    ours.data_to_send()
    assert whole_response_frames(ours, 1, HEAD, b"hello\n") is None
    assert whole_response_frames(ours, 3, HEAD, b"hello\n") is None  # no such stream
    _, ours, _ = _pair()
    ours.close_connection()  # (its GOAWAY)
    ours.data_to_send()
    _unchanged(ours, HEAD, b"hello\n")
