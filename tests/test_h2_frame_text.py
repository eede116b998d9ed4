"""h2's text of each received frame (for its trace log) made only when a logger formats it.

``h2_downstream._defer_frame_text`` shadows ``repr`` in ``h2.connection``'s globals; these tests
fail if h2 changes where it calls ``repr`` (a new version), if the shadow is not in effect, or if a
configured logger no longer gets the frame's text.
"""

from __future__ import annotations

import inspect
import io
import re

import h2.config
import h2.connection
import h2.events
import h2.frame_buffer
import hyperframe.frame
import pytest

from trio_yastack.l7 import h2_downstream


def _client_bytes() -> bytes:
    """A client's preface, SETTINGS, a request's HEADERS and a WINDOW_UPDATE."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1, [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")], end_stream=True
    )
    client.increment_flow_control_window(1000)
    return client.data_to_send()


def test_h2_calls_repr_once_for_the_received_frame() -> None:
    # the shadow is only right while h2's one repr call is the trace of a received frame
    source = inspect.getsource(h2.connection)
    assert len(re.findall(r"\brepr\(", source)) == 1
    assert 'logger.trace("Received frame: %s", repr(frame))' in inspect.getsource(
        h2.connection.H2Connection._receive_frame
    )
    assert h2.connection.repr is h2_downstream._FrameText  # type: ignore[attr-defined]  # the shadow


def test_no_frame_text_without_a_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = hyperframe.frame.Frame.__repr__

    def counting(self: hyperframe.frame.Frame) -> str:
        calls.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(hyperframe.frame.Frame, "__repr__", counting)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    events = server.receive_data(_client_bytes())
    assert any(isinstance(e, h2.events.RequestReceived) for e in events)
    assert calls == []  # (without the shadow: one per frame received)


def test_a_logger_still_gets_each_frames_text() -> None:
    out = io.StringIO()
    logger = h2.config.OutputLogger(out, trace_level=True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, logger=logger))
    server.initiate_connection()
    data = _client_bytes()
    server.receive_data(data)
    got = [line for line in out.getvalue().splitlines() if line.startswith("h2 (trace): Received frame: ")]
    # the same frames parsed on their own, and their repr as h2 would have logged it
    buffer = h2.frame_buffer.FrameBuffer(server=True)
    buffer.max_frame_size = 16384
    buffer.add_data(data)
    want = [f"h2 (trace): Received frame: {frame!r}" for frame in buffer]
    assert len(want) == 3  # SETTINGS, HEADERS, WINDOW_UPDATE
    assert got == want
