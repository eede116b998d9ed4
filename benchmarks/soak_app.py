"""The soak's ASGI app: ``GET /`` answers "Hello, world!" (as examples/hello.py); ``GET /stuck``
never answers (a handler that hangs, to see what the server reports about it)."""

from __future__ import annotations

from typing import Any

import trio

BODY = b"Hello, world!"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stuck":
        await trio.sleep_forever()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": BODY})
