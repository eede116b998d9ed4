"""A plain ASGI app whose responses leave the server the choices ASGI leaves it (framing, HEAD,
``Expect: 100-continue``), for ``tests/test_asgi_apps.py``: what the server then does is what is
tested, so the app itself does each thing the simplest way.

- ``/`` (GET or HEAD): ``Hello, world!`` with its Content-Length; the body is sent for HEAD too
  (apps do: the server must drop it)
- ``/no-length``: one body message, no Content-Length given
- ``/streamed``: three body messages (``more_body``), no Content-Length given
- ``/echo`` (POST): the request body's length and SHA-256 as ``LENGTH SHA256``
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
TEXT = [(b"content-type", b"text/plain")]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http", scope["type"]
    path = scope["path"]
    if path == "/":
        headers = [*TEXT, (b"content-length", b"13")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"Hello, world!"})
    elif path == "/no-length":
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"no length given"})
    elif path == "/streamed":
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        for piece in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/echo":
        digest, size, more = hashlib.sha256(), 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = f"{size} {digest.hexdigest()}".encode()
        headers = [*TEXT, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
