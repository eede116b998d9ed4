"""Helpers for the lean ASGI server's tests (``test_asgi_http11.py``, ``test_asgi_server.py``).

- :class:`RawClient`: raw bytes to a server and responses parsed back by hand (status line,
  headers, body by ``content-length``, ``chunked`` or EOF), so a test sees exactly what was
  written, including what a well-behaved client library would hide (framing, pipelining).
- :func:`memory_connection`: an :class:`~trio_yastack.l7.asgi.HttpConnection` on one end of
  trio's memory stream pair (where the stack adds nothing), the client on the other.
- :func:`running_server`: ``serve_asgi`` in a nursery until the ``async with`` ends (stopped by
  its shutdown trigger, never by name).
- small ASGI apps: :func:`hello_app`, :func:`echo_app`, :func:`scope_app`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from trio_yastack.l7.asgi import HttpConnection, ServerConfig, serve_asgi

__all__ = [
    "RawClient",
    "Response",
    "build_request",
    "echo_app",
    "hello_app",
    "memory_connection",
    "running_server",
    "scope_app",
]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False
    raw_head: bytes = b""
    trailer_ok: bool = True

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawClient:
    """One client connection: ``send`` raw bytes, ``response()`` parses the next response."""

    stream: trio.abc.Stream
    buffer: bytearray = field(default_factory=bytearray)
    eof: bool = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def _until(self, marker: bytes) -> bytes:
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                out = bytes(self.buffer[: index + len(marker)])
                del self.buffer[: index + len(marker)]
                return out
            if not await self._fill():
                raise EOFError(f"EOF before {marker!r}; have {bytes(self.buffer)!r}")

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self._fill():
                raise EOFError(f"EOF after {len(self.buffer)} of {n} bytes")
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def response(self, *, head: bool = False) -> Response:
        """The next response (``head``: it answers a HEAD request, so it has no body)."""
        raw = await self._until(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        response = Response(status, headers, b"", raw_head=raw)
        if head or status in (204, 304) or status < 200:
            return response
        length = response.header("content-length")
        if response.header("transfer-encoding") == "chunked":
            response.chunked = True
            body = bytearray()
            while True:
                size = int((await self._until(b"\r\n")).strip(), 16)
                if size == 0:
                    response.trailer_ok = await self._until(b"\r\n") == b"\r\n"
                    break
                body += await self._exactly(size)
                await self._exactly(2)
            response.body = bytes(body)
        elif length is not None:
            response.body = await self._exactly(int(length))
        else:
            while await self._fill():
                pass
            response.body = bytes(self.buffer)
            self.buffer.clear()
        return response

    async def request(
        self, method: str = "GET", path: str = "/", body: bytes = b"", **headers: str
    ) -> Response:
        """Send one request (``content-length`` set for a body) and read its response."""
        await self.send(build_request(method, path, body, **headers))
        return await self.response(head=method == "HEAD")

    async def wait_closed(self) -> bytes:
        """Read until EOF; what arrived meanwhile."""
        while await self._fill():
            pass
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


def build_request(method: str = "GET", path: str = "/", body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test"]
    if body and "content_length" not in headers and "transfer_encoding" not in headers:
        lines.append(f"content-length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def memory_connection(
    app: Any, config: ServerConfig | None = None, **kwargs: Any
) -> AsyncIterator[tuple[RawClient, HttpConnection, trio.Event]]:
    """An ``HttpConnection`` serving ``app`` on one end of a memory stream pair; yields the client,
    the connection and an event set when the connection's ``run`` returned."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    connection = HttpConnection(
        server_stream,
        app,
        config or ServerConfig(),
        client=("198.18.0.1", 40000),
        server=("198.18.0.2", 8000),
        **kwargs,
    )
    done = trio.Event()

    async def run() -> None:
        try:
            await connection.run()
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield RawClient(client_stream), connection, done
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_server(
    app: Any, config: ServerConfig | None = None, **kwargs: Any
) -> AsyncIterator[list[str]]:
    """``serve_asgi(app, config, **kwargs)`` running until the block ends; yields its URLs."""
    stop = trio.Event()
    finished = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_asgi(
                app, config or ServerConfig(), shutdown_trigger=stop.wait, task_status=task_status, **kwargs
            )
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve)
        try:
            yield urls
        finally:
            stop.set()
            with trio.fail_after(60):
                await finished.wait()


# -- small apps --------------------------------------------------------------------------------------
async def hello_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """``Hello, world!`` for any request (lifespan: not supported, it raises, as many apps do)."""
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The request body back, with the ``http.request`` messages' sizes in ``x-chunks``."""
    assert scope["type"] == "http"
    body = bytearray()
    sizes = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message["body"]
        sizes.append(str(len(message["body"])))
        if not message["more_body"]:
            break
    headers = [(b"x-chunks", ",".join(sizes).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": bytes(body)})


async def scope_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The scope as JSON (bytes as latin-1 text)."""
    assert scope["type"] == "http"

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    body = json.dumps(plain(scope)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})
