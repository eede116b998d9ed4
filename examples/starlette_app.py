"""A Starlette app, written as Starlette's documentation would write it, served unmodified over
the user-space stack: ``yastack serve examples/starlette_app.py:app`` (add ``--server hypercorn``
for hypercorn's trio worker instead of ours).  It needs ``pip install starlette
python-multipart`` (the test extra, ``pip install -e '.[test]'``, has them).

It has the routes of ``examples/fastapi_app.py`` (its docstring lists them) except the JSON body
validation, which is FastAPI's; ``/items/{item_id:int}`` with a non-integer is a 404 here (a
route convertor), not a 422.  The middleware is a pure ASGI one (``x-middleware: starlette``),
next to Starlette's ``GZipMiddleware``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

_BLOCK = bytes(range(256)) * 256  # 64 KiB, a whole number of the pattern's periods
MAX_STREAM = 1 << 30
#: how long a background task waits to be released (a bound, not a pace)
JOB_TIMEOUT = 60.0


class Jobs:
    """Background jobs by name: each waits to be released, then is done."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.started: dict[str, anyio.Event] = {}
        self.release: dict[str, anyio.Event] = {}
        self.finished: dict[str, anyio.Event] = {}

    def queue(self, name: str) -> None:
        self.state[name] = "queued"
        self.started[name] = anyio.Event()
        self.release[name] = anyio.Event()
        self.finished[name] = anyio.Event()

    async def run(self, name: str) -> None:
        """The background task: runs after the response was sent."""
        self.state[name] = "waiting"
        self.started[name].set()
        try:
            with anyio.fail_after(JOB_TIMEOUT):
                await self.release[name].wait()
            self.state[name] = "done"
        except TimeoutError:
            self.state[name] = "timed out"
        finally:
            self.finished[name].set()


class TagResponses:
    """A pure ASGI middleware: adds ``x-middleware: starlette`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-middleware"] = "starlette"
            await send(message)

        await self.app(scope, receive, tagged)


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


async def root(request: Request) -> JSONResponse:
    return JSONResponse({"framework": "starlette"})


async def read_item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"], "q": request.query_params.get("q")})


async def read_file(request: Request) -> JSONResponse:
    path = request.path_params["file_path"]
    return JSONResponse({"path": path, "raw_path": request.scope["raw_path"].decode("latin-1")})


class PatternStream(StreamingResponse):
    """``nbytes`` of 0, 1, ..., 255 over and over, in ``chunk``-byte pieces (at most 64 KiB), no
    Content-Length; how it ended goes to ``streams`` as soon as the response is over (whole, or
    cut off: the server raised from ``send`` or said ``http.disconnect``)."""

    def __init__(self, nbytes: int, chunk: int, streams: Streams) -> None:
        self.whole = False
        self.streams = streams
        super().__init__(self._pattern(nbytes, chunk), media_type="application/octet-stream")

    async def _pattern(self, nbytes: int, chunk: int) -> AsyncIterator[bytes]:
        chunk = max(256, min(chunk - chunk % 256, len(_BLOCK)))
        for offset in range(0, nbytes, chunk):
            yield _BLOCK[: min(chunk, nbytes - offset)]
        self.whole = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.streams.record(self.whole)


async def stream(request: Request) -> StreamingResponse:
    nbytes = request.path_params["nbytes"]
    if not 0 <= nbytes <= MAX_STREAM:
        nbytes = 0
    chunk = _int(request.query_params.get("chunk"), len(_BLOCK))
    return PatternStream(nbytes, chunk, request.state.streams)


async def streams(request: Request) -> JSONResponse:
    counts: Streams = request.state.streams
    ended = request.query_params.get("ended")
    if ended is not None:
        with anyio.fail_after(JOB_TIMEOUT):
            await counts.wait_beyond(_int(ended, 0))
    return JSONResponse({"finished": counts.finished, "aborted": counts.aborted})


async def error(request: Request) -> JSONResponse:
    raise RuntimeError("boom on purpose")


async def state(request: Request) -> JSONResponse:
    return JSONResponse({"greeting": request.state.greeting})


async def queue_job(request: Request) -> JSONResponse:
    jobs: Jobs = request.state.jobs
    name = request.path_params["name"]
    jobs.queue(name)
    return JSONResponse({"queued": name}, status_code=202, background=BackgroundTask(jobs.run, name))


async def release_job(request: Request) -> JSONResponse:
    jobs: Jobs = request.state.jobs
    name = request.path_params["name"]
    jobs.release[name].set()
    return JSONResponse({"released": name})


async def job(request: Request) -> JSONResponse:
    jobs: Jobs = request.state.jobs
    name = request.path_params["name"]
    wait = request.query_params.get("wait")
    if wait in ("started", "finished"):
        with anyio.fail_after(JOB_TIMEOUT):
            await (jobs.started if wait == "started" else jobs.finished)[name].wait()
    return JSONResponse({"name": name, "state": jobs.state[name]})


async def upload(request: Request) -> JSONResponse:
    async with request.form() as form:
        file = form["file"]
        assert isinstance(file, UploadFile)  # the form's own type: a bug here, not bad input
        digest = hashlib.sha256()
        size = 0
        while block := await file.read(1 << 16):
            digest.update(block)
            size += len(block)
        return JSONResponse(
            {"name": form["name"], "filename": file.filename, "bytes": size, "sha256": digest.hexdigest()}
        )


async def numbers(request: Request) -> JSONResponse:
    n = _int(request.query_params.get("n"), 1000)
    return JSONResponse(list(range(max(0, min(n, 1_000_000)))))


async def echo(websocket: WebSocket) -> None:
    offered = websocket.scope.get("subprotocols", [])
    chosen = next((p for p in ("chat.v2", "chat.v1") if p in offered), None)
    await websocket.accept(subprotocol=chosen)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            await websocket.send_bytes(message.get("bytes") or b"")
        elif text.startswith("close "):
            await websocket.close(code=int(text.split()[1]), reason="bye")
            return
        elif text == "state":
            await websocket.send_text(websocket.state.greeting)
        else:
            await websocket.send_text(text)


class Streams:
    """How the streamed responses ended: whole, or cut off because the client went away (the
    server raised from ``send`` or said ``http.disconnect``: the app stops producing)."""

    def __init__(self) -> None:
        self.finished = 0
        self.aborted = 0
        self.changed = anyio.Event()

    def record(self, whole: bool) -> None:
        if whole:
            self.finished += 1
        else:
            self.aborted += 1
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_beyond(self, ended: int) -> None:
        """Until more than ``ended`` streams have ended (bounded by the caller)."""
        while self.finished + self.aborted <= ended:
            await self.changed.wait()


async def denied(websocket: WebSocket) -> None:
    """Refuses the upgrade with an HTTP response of its own (the denial response extension)."""
    await websocket.send_denial_response(JSONResponse({"denied": "no token"}, status_code=401))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    """The state every request sees (``request.state``): set once, at startup."""
    yield {"greeting": "set by the lifespan at startup", "jobs": Jobs(), "streams": Streams()}


app = Starlette(
    routes=[
        Route("/", root),
        Route("/items/{item_id:int}", read_item),
        Route("/files/{file_path:path}", read_file),
        Route("/stream/{nbytes:int}", stream),
        Route("/streams", streams),
        Route("/error", error),
        Route("/state", state),
        Route("/jobs/{name}", queue_job, methods=["POST"]),
        Route("/jobs/{name}/release", release_job, methods=["POST"]),
        Route("/jobs/{name}", job, methods=["GET"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/numbers", numbers),
        WebSocketRoute("/ws", echo),
        WebSocketRoute("/ws-denied", denied),
    ],
    middleware=[Middleware(TagResponses), Middleware(GZipMiddleware, minimum_size=500)],
    lifespan=lifespan,
)
