"""The example ASGI app the README's main job serves over the user-space stack.

Plain ASGI (no framework), so what runs is the server (ours, or hypercorn's trio worker with
``--server hypercorn``) and the stack and nothing else; ``examples/fastapi_app.py`` and
``examples/starlette_app.py`` are the same kind of service written with frameworks:

- ``GET /``: ``Hello, world!`` (13 bytes, the benchmarks' hello world)
- ``GET /json``: a JSON document about the request (who asked, over which HTTP version)
- ``GET /stream?bytes=N&chunk=C&interval=S``: ``N`` bytes (default 1 MiB) of a fixed pattern
  (:func:`pattern`) streamed in ``C``-byte chunks, ``S`` seconds apart
- ``POST /upload``: reads the body as it streams in; answers its length and SHA-256 in JSON
- ``/ws``: WebSocket echo, text and bytes
- ``GET /healthz``: ``ok`` (what the proxy examples' health checks ask for)
- ``GET /headers``: the request's path, query and headers as JSON (to see what a proxy forwarded)

Serve it: ``yastack serve examples/hello.py:app --nic tap:yas0`` (or with hypercorn on kernel
sockets: ``hypercorn examples/hello.py:app``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import trio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_BLOCK = bytes(range(256)) * 256  # 64 KiB
MAX_STREAM = 1 << 34  # 16 GiB: a bound on what one request may ask for


def pattern(nbytes: int, chunk: int = len(_BLOCK)) -> Iterator[bytes]:
    """The bytes ``/stream`` sends: 0, 1, ..., 255 over and over, cut into ``chunk``-byte pieces
    (so a client can check what it got: ``sha256(b"".join(pattern(n)))``)."""
    chunk = max(1, min(chunk, len(_BLOCK)))
    sent = 0
    while sent < nbytes:
        size = min(chunk, nbytes - sent)
        offset = sent % 256
        piece = (_BLOCK[offset:] + _BLOCK[:offset])[:size] if offset else _BLOCK[:size]
        yield piece
        sent += size


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, document: dict[str, Any], status: int = 200) -> None:
    await _respond(send, status, json.dumps(document).encode() + b"\n", b"application/json")


def _query(scope: Scope) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(scope.get("query_string", b"").decode()).items()}


async def _stream(scope: Scope, send: Send) -> None:
    query = _query(scope)
    try:
        nbytes = int(query.get("bytes", 1 << 20))
        chunk = int(query.get("chunk", 1 << 16))
        interval = float(query.get("interval", 0))
    except ValueError:
        await _json(send, {"error": "bytes, chunk and interval must be numbers"}, 400)
        return
    if not (0 <= nbytes <= MAX_STREAM and chunk > 0 and 0 <= interval <= 60):
        await _json(send, {"error": f"bytes in [0, {MAX_STREAM}], chunk > 0, interval in [0, 60]"}, 400)
        return
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(nbytes).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for piece in pattern(nbytes, chunk):
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        if interval:
            await trio.sleep(interval)  # the app's own pacing (a slow response), not synchronisation
    await send({"type": "http.response.body", "body": b""})


async def _upload(receive: Receive, send: Send) -> None:
    digest = hashlib.sha256()
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        digest.update(body)
        received += len(body)
        if not message.get("more_body", False):
            break
    await _json(send, {"bytes": received, "sha256": digest.hexdigest()})


async def _websocket(receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


#: the route ``yastack serve`` suggests in its ``# try: curl`` line
YASTACK_TRY_PATH = "/json"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application."""
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope.get("path", "/")
    if kind == "websocket":
        if path == "/ws":
            await _websocket(receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})
        return
    method = scope.get("method", "GET")
    if path == "/" and method in ("GET", "HEAD"):
        await _respond(send, 200, b"Hello, world!", b"text/plain")
    elif path == "/json" and method == "GET":
        client = scope.get("client") or ("", 0)
        server = scope.get("server") or ("", 0)
        await _json(
            send,
            {
                "message": "hello from trio_yastack",
                "http_version": scope.get("http_version"),
                "scheme": scope.get("scheme"),
                "client": f"{client[0]}:{client[1]}",
                "server": f"{server[0]}:{server[1]}",
            },
        )
    elif path == "/healthz" and method in ("GET", "HEAD"):
        await _respond(send, 200, b"ok\n", b"text/plain")
    elif path == "/headers" and method == "GET":
        server = scope.get("server") or ("", 0)
        await _json(
            send,
            {
                "path": path,
                "query": scope.get("query_string", b"").decode("latin-1"),
                "server": f"{server[0]}:{server[1]}",
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope.get("headers", [])],
            },
        )
    elif path == "/stream" and method == "GET":
        await _stream(scope, send)
    elif path == "/upload" and method in ("POST", "PUT"):
        await _upload(receive, send)
    else:
        await _json(send, {"error": "not found", "path": path}, 404)
