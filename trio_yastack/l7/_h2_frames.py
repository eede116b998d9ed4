"""A whole response's frames, framed here with h2's state kept as h2 keeps it (RFC 9113 6.1, 6.2, 6.10).

Why: the predicted response (a head and a body that fits one DATA frame and the client's windows)
went through ``h2``'s ``send_headers`` and ``send_data``: per response a HEADERS and a DATA frame
object with flag sets, two stream state-machine passes each through h2's generic wrappers, the
connection's state machine, an enum made per call, ``hyperframe``'s serialisation -- ~15 % of the
proxy's CPU for an h2 request in the profile, for two fixed 9-byte frame headers.

:func:`whole_response_frames` writes those bytes itself and moves ``h2``'s state exactly as those
two calls would: the stream's state machine through ``SEND_HEADERS``, ``SEND_DATA`` (with a body)
and ``SEND_END_STREAM`` (so it closes, and h2 counts it closed), both outbound windows less the
body, the header block from h2's own encoder (the same compression context, in order).  The
connection's ``SEND_HEADERS``/``SEND_DATA`` are no-ops in ``SERVER_OPEN``, the only state it takes.
Anything else (the stream not half-closed by the client, a head sent already, a body past one
frame or past a window) returns None, and the caller uses h2's calls as before.
``tests/test_h2_frames.py`` holds the bytes and the state after to h2's own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import h2.connection
from h2.connection import ConnectionState
from h2.stream import StreamInputs, StreamState

__all__ = ["whole_response_frames"]

_FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_SEND_HEADERS, _SEND_DATA, _SEND_END_STREAM = (
    StreamInputs.SEND_HEADERS,
    StreamInputs.SEND_DATA,
    StreamInputs.SEND_END_STREAM,
)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return _FRAME_HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def whole_response_frames(
    conn: h2.connection.H2Connection, stream_id: int, head: Sequence[tuple[bytes, bytes]], body: bytes
) -> bytes | None:
    """HEADERS (and CONTINUATION past the peer's frame size) with ``head``, then the body's one
    DATA frame with END_STREAM (without a body, END_STREAM on the HEADERS), h2's state moved as
    ``send_headers`` + ``send_data(end_stream=True)`` move it; the caller writes the bytes after
    whatever h2 had queued before.  None where those calls would do more than that (module
    docstring): nothing is changed then."""
    stream = conn.streams.get(stream_id)
    if stream is None or conn.state_machine.state is not _SERVER_OPEN:
        return None
    machine = stream.state_machine
    size = len(body)
    limit = conn.max_outbound_frame_size
    if (
        machine.state is not _HALF_CLOSED_REMOTE
        or machine.headers_sent
        or size > limit
        or size > stream.outbound_flow_control_window
        or size > conn.outbound_flow_control_window
    ):
        return None
    machine.process_input(_SEND_HEADERS)
    block = conn.encoder.encode(head)
    stream.request_method = None  # (as send_headers records it from a response's head)
    end = 0 if size else _END_STREAM
    if len(block) <= limit:
        frames = [_frame(_HEADERS, _END_HEADERS | end, stream_id, block)]
    else:
        frames = [_frame(_HEADERS, end, stream_id, block[:limit])]
        for start in range(limit, len(block), limit):
            flags = _END_HEADERS if start + limit >= len(block) else 0
            frames.append(_frame(_CONTINUATION, flags, stream_id, block[start : start + limit]))
    if size:
        machine.process_input(_SEND_DATA)
        frames.append(_frame(_DATA, _END_STREAM, stream_id, body))
        stream.outbound_flow_control_window -= size
        conn.outbound_flow_control_window -= size
    machine.process_input(_SEND_END_STREAM)
    return b"".join(frames)
