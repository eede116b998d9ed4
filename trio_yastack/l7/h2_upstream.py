"""HTTP/2 to upstream hosts (a cluster with ``http2_protocol_options``): gRPC end to end.

One HTTP/2 connection per host, shared by its requests (streams multiplexed up to the host's
``max_concurrent_streams`` and :data:`MAX_STREAMS`; a new connection when it is full or going
away).  As for clients (:mod:`.h2_downstream`), the router keeps speaking HTTP/1.1 through h11: an
attempt's connection is an :class:`~.upstream.UpstreamConnection` whose stream is a
:class:`UpstreamStream`, which reads the request the router writes with an h11 server
connection and sends it as HEADERS and DATA, and writes the HEADERS, DATA and trailers that come
back as an HTTP/1.1 response (chunked, so that trailers such as ``grpc-status`` pass).

Backpressure both ways: request DATA goes out within the host's windows; response DATA is
acknowledged only as the router reads it, i.e. once the client took the previous chunk.
"""

from __future__ import annotations

import contextlib

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

from trio_yastack._trio_helpers import unwrap_single_exception

from .config import Http2Options

__all__ = ["MAX_STREAMS", "H2Upstream", "UpstreamStream"]

MAX_STREAMS = 1000  # streams at once on one upstream connection, whatever the host allows
RECEIVE_SIZE = 65536
_HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"host")
)
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class UpstreamStream(trio.abc.Stream):
    """One stream of an upstream HTTP/2 connection, as an HTTP/1.1 connection for one request."""

    def __init__(self, conn: H2Upstream) -> None:
        self.conn = conn
        self.stream_id = 0  # given when the request head is sent
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.pending = bytearray()  # response bytes the router has not read yet
        self.unacked = 0
        self.head: h11.Request | None = None
        self.request_ended = False
        self.response_ended = False
        self.reset = False
        self.changed = trio.Event()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # --- the request ---

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.reset or self.conn.closed:
            raise trio.BrokenResourceError("upstream stream reset")
        try:
            self.h11.receive_data(bytes(data))
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    if self.head is not None and not self.stream_id:
                        self._send_head(end_stream=False)
                        await self.conn.flush()
                    return
                if isinstance(event, h11.Request):
                    self.head = event
                elif isinstance(event, h11.Data):
                    if not self.stream_id:
                        self._send_head(end_stream=False)
                    await self.conn.send_data(self, bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    self.request_ended = True
                    if not self.stream_id:
                        self._send_head(end_stream=True)
                    elif event.headers:
                        self.conn.h2.send_headers(self.stream_id, list(event.headers), end_stream=True)
                    else:
                        self.conn.h2.end_stream(self.stream_id)
                    await self.conn.flush()
                    return
        except (h11.RemoteProtocolError, h2.exceptions.ProtocolError) as exc:
            self.reset = True
            raise trio.BrokenResourceError(f"upstream stream: {exc}") from None

    def _send_head(self, *, end_stream: bool) -> None:
        head = self.head
        assert head is not None
        authority = b""
        headers: list[tuple[bytes, bytes]] = []
        grpc = False
        for name, value in head.headers:
            if name == b"host":
                authority = value
            elif name not in _HOP_BY_HOP:
                headers.append((name, value))
                if name == b"content-type" and value.startswith(b"application/grpc"):
                    grpc = True
        if grpc:
            headers.append((b"te", b"trailers"))  # gRPC asks for it; the router drops it as hop-by-hop
        pseudo = [
            (b":method", head.method),
            (b":scheme", self.conn.scheme),
            (b":authority", authority),
            (b":path", head.target),
        ]
        self.stream_id = self.conn.h2.get_next_available_stream_id()
        self.conn.streams[self.stream_id] = self
        self.conn.h2.send_headers(self.stream_id, pseudo + headers, end_stream=end_stream)

    # --- the response ---

    def on_headers(self, headers: list[tuple[bytes, bytes]], *, informational: bool) -> None:
        status = 0
        fields: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif name[:1] != b":":
                fields.append((name, value))
        try:
            if informational:
                self.pending += (
                    self.h11.send(h11.InformationalResponse(status_code=status, headers=fields)) or b""
                )
            else:
                self.pending += self.h11.send(h11.Response(status_code=status, headers=fields)) or b""
        except h11.LocalProtocolError:
            self.on_reset()
        self._wake()

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        self.unacked += flow_controlled
        if data and not self.reset:
            try:
                self.pending += self.h11.send(h11.Data(data=data)) or b""
            except h11.LocalProtocolError:
                self.on_reset()
        self._wake()

    def on_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if self.response_ended or self.reset:
            return
        self.response_ended = True
        try:
            self.pending += self.h11.send(h11.EndOfMessage(headers=trailers or [])) or b""
        except h11.LocalProtocolError:  # trailers on a response framed by its content-length
            self.pending += self.h11.send(h11.EndOfMessage()) or b""
        self._wake()

    def on_reset(self) -> None:
        self.reset = True
        self._wake()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self.pending:
            if self.reset or (self.conn.closed and not self.response_ended):
                raise trio.BrokenResourceError("upstream stream reset")
            if self.response_ended:
                return b""
            await self.changed.wait()
        n = len(self.pending) if max_bytes is None else max_bytes
        data = bytes(self.pending[:n])
        del self.pending[:n]
        if self.unacked and self.stream_id:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.h2.acknowledge_received_data(self.unacked, self.stream_id)
            self.unacked = 0
            with contextlib.suppress(*_NETWORK_ERRORS):
                await self.conn.flush()
        return data

    async def wait_send_all_might_not_block(self) -> None:
        await self.conn.window_changed.wait()

    async def aclose(self) -> None:
        """Done with the request: a stream not finished both ways is reset (CANCEL)."""
        if self.stream_id and not self.reset and not (self.response_ended and self.request_ended):
            self.reset = True
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            with trio.CancelScope(shield=True), contextlib.suppress(*_NETWORK_ERRORS):
                await self.conn.flush()
        self.conn.streams.pop(self.stream_id, None)
        self.conn.released(self)
        await trio.lowlevel.checkpoint()


class H2Upstream:
    """One HTTP/2 connection to a host: a reader task, and streams handed out by :meth:`open_stream`."""

    def __init__(self, transport: trio.abc.Stream, options: Http2Options, *, tls: bool) -> None:
        self.transport = transport
        self.scheme = b"https" if tls else b"http"
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: options.initial_stream_window_size,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        self.connection_window = options.initial_connection_window_size
        self.max_streams = min(options.max_concurrent_streams, MAX_STREAMS)
        self.streams: dict[int, UpstreamStream] = {}
        self.users = 0  # streams handed out and not yet closed (some without a stream id yet)
        self.send_lock = trio.Lock()
        self.window_changed = trio.Event()
        self.closed = False
        self.going_away = False
        self.bytes_received = 0
        self.idle = trio.Event()

    def can_open(self) -> bool:
        limit = min(self.max_streams, self.h2.remote_settings.max_concurrent_streams)
        return not self.closed and not self.going_away and self.users < limit

    def open_stream(self) -> UpstreamStream:
        self.users += 1
        return UpstreamStream(self)

    def released(self, stream: UpstreamStream) -> None:
        self.users -= 1
        if self.users == 0:
            self.idle.set()
            self.idle = trio.Event()

    async def flush(self) -> None:
        async with self.send_lock:
            data = self.h2.data_to_send()
            if data:
                await self.transport.send_all(data)

    async def send_data(self, stream: UpstreamStream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if stream.reset or self.closed:
                raise trio.BrokenResourceError("upstream stream reset")
            window = self.h2.local_flow_control_window(stream.stream_id)
            if window <= 0:
                await self.window_changed.wait()
                continue
            n = min(window, self.h2.max_outbound_frame_size, len(view))
            self.h2.send_data(stream.stream_id, bytes(view[:n]))
            view = view[n:]
            await self.flush()

    async def start(self) -> None:
        self.h2.initiate_connection()
        if self.connection_window > 65535:
            self.h2.increment_flow_control_window(self.connection_window - 65535)
        await self.flush()

    async def run(self) -> None:
        """Read frames until the host closes (or says GOAWAY and its streams are done)."""
        try:
            with unwrap_single_exception():
                while True:
                    data = await self.transport.receive_some(RECEIVE_SIZE)
                    if not data:
                        return
                    self.bytes_received += len(data)
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        with contextlib.suppress(*_NETWORK_ERRORS):
                            await self.flush()
                        return
                    for event in events:
                        self._dispatch(event)
                    await self.flush()
                    if self.going_away and not self.streams:
                        return
        except _NETWORK_ERRORS:
            pass
        finally:
            self.closed = True
            for stream in list(self.streams.values()):
                stream.on_reset()
            self.window_changed.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport)

    def _dispatch(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0) or 0
        stream = self.streams.get(sid)
        if isinstance(event, h2.events.ResponseReceived | h2.events.InformationalResponseReceived):
            if stream is not None:
                headers = [(bytes(n), bytes(v)) for n, v in event.headers or ()]
                stream.on_headers(
                    headers, informational=isinstance(event, h2.events.InformationalResponseReceived)
                )
        elif isinstance(event, h2.events.DataReceived):
            n = event.flow_controlled_length or 0
            if stream is None:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.h2.acknowledge_received_data(n, sid) if n else None
            else:
                stream.on_data(event.data or b"", n)
        elif isinstance(event, h2.events.TrailersReceived):
            if stream is not None:
                stream.on_end([(bytes(n), bytes(v)) for n, v in event.headers or ()])
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream.on_end(None)
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                stream.on_reset()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window_changed.set()
            self.window_changed = trio.Event()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id or 0
            for stream_id, s in list(self.streams.items()):
                if stream_id > last:
                    s.on_reset()  # never processed: the router may retry it
