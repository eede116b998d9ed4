"""A FastAPI app, written as FastAPI's own tutorial would write it, served unmodified over the
user-space stack: ``yastack serve examples/fastapi_app.py:app`` (add ``--server hypercorn`` for
hypercorn's trio worker instead of ours).  It needs ``pip install fastapi python-multipart``
(the test extra, ``pip install -e '.[test]'``, has them).

It has the same routes as ``examples/starlette_app.py`` (so one set of tests checks both), plus
what only FastAPI does (body validation with pydantic: a bad body is a 422 with FastAPI's
``detail`` list):

- ``GET /``: ``{"framework": "fastapi"}``
- ``GET /items/{item_id}?q=``: a path parameter (an int: ``/items/abc`` is a 422) and a query one
- ``POST /items``: a JSON body validated against ``Item`` (201 with the item and its total)
- ``GET /files/{path}``: a ``path`` parameter, percent-decoded (``raw_path`` as received)
- ``GET /stream/{nbytes}?chunk=``: a ``StreamingResponse`` of ``nbytes`` of the same pattern as
  ``examples/hello.py``'s ``/stream`` (0..255 over and over), no Content-Length
- ``GET /streams?ended=N``: how many streams finished whole and how many were cut off by the
  client going away (once more than ``N`` have ended)
- ``GET /error``: raises ``RuntimeError("boom on purpose")`` (what a server does with an app's
  exception: the framework answers 500 and re-raises, the server logs it and goes on)
- ``GET /state``: what the lifespan put in the state at startup
- ``POST /jobs/{name}``: 202 at once; a background task then waits for
  ``POST /jobs/{name}/release`` and finishes; ``GET /jobs/{name}?wait=started|finished`` says
  how it goes once it has started or finished (so a client can see that the response arrived
  while the task was still running)
- ``POST /upload``: a multipart form (``name``, ``file``): the file's name, size and SHA-256
- ``GET /numbers?n=``: a JSON list of ``n`` numbers (big enough to be gzipped when asked)
- ``/ws``: WebSocket echo with a subprotocol (``chat.v2`` preferred to ``chat.v1``); the text
  ``close CODE`` closes with that code and reason ``bye``, ``state`` answers the lifespan state
- ``/ws-denied``: refuses the upgrade with a 401 and a JSON body (the ASGI denial response)

Every response carries ``x-middleware: fastapi`` (an ``@app.middleware("http")``), and responses
over 500 bytes are gzipped for clients that accept it (``GZipMiddleware``).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import BackgroundTasks, FastAPI, File, Form, Request, Response, UploadFile, WebSocket
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The state every request sees (``request.state``): set once, at startup."""
    yield {"greeting": "set by the lifespan at startup", "jobs": Jobs(), "streams": Streams()}


app = FastAPI(lifespan=lifespan)
app.add_middleware(GZipMiddleware, minimum_size=500)


@app.middleware("http")
async def tag_responses(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["x-middleware"] = "fastapi"
    return response


class Item(BaseModel):
    name: str
    price: float
    quantity: int = 1


@app.get("/")
async def root() -> dict[str, str]:
    return {"framework": "fastapi"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
    return {"item_id": item_id, "q": q}


@app.post("/items", status_code=201)
async def create_item(item: Item) -> dict[str, Any]:
    return {"item": item.model_dump(), "total": item.price * item.quantity}


@app.get("/files/{file_path:path}")
async def read_file(file_path: str, request: Request) -> dict[str, str]:
    return {"path": file_path, "raw_path": request.scope["raw_path"].decode("latin-1")}


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


@app.get("/stream/{nbytes}")
async def stream(nbytes: int, request: Request, chunk: int = len(_BLOCK)) -> StreamingResponse:
    if not 0 <= nbytes <= MAX_STREAM:
        nbytes = 0
    return PatternStream(nbytes, chunk, request.state.streams)


@app.get("/streams")
async def streams(request: Request, ended: int | None = None) -> dict[str, int]:
    counts: Streams = request.state.streams
    if ended is not None:
        with anyio.fail_after(JOB_TIMEOUT):
            await counts.wait_beyond(ended)
    return {"finished": counts.finished, "aborted": counts.aborted}


@app.get("/error")
async def error() -> None:
    raise RuntimeError("boom on purpose")


@app.get("/state")
async def state(request: Request) -> dict[str, str]:
    return {"greeting": request.state.greeting}


@app.post("/jobs/{name}", status_code=202)
async def queue_job(name: str, request: Request, background: BackgroundTasks) -> dict[str, str]:
    jobs: Jobs = request.state.jobs
    jobs.queue(name)
    background.add_task(jobs.run, name)
    return {"queued": name}


@app.post("/jobs/{name}/release")
async def release_job(name: str, request: Request) -> dict[str, str]:
    jobs: Jobs = request.state.jobs
    jobs.release[name].set()
    return {"released": name}


@app.get("/jobs/{name}")
async def job(
    name: str, request: Request, wait: Literal["started", "finished"] | None = None
) -> dict[str, str]:
    jobs: Jobs = request.state.jobs
    if wait is not None:
        with anyio.fail_after(JOB_TIMEOUT):
            await (jobs.started if wait == "started" else jobs.finished)[name].wait()
    return {"name": name, "state": jobs.state[name]}


@app.post("/upload")
async def upload(name: Annotated[str, Form()], file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    while block := await file.read(1 << 16):
        digest.update(block)
        size += len(block)
    return {"name": name, "filename": file.filename, "bytes": size, "sha256": digest.hexdigest()}


@app.get("/numbers")
async def numbers(n: int = 1000) -> list[int]:
    return list(range(max(0, min(n, 1_000_000))))


@app.websocket("/ws-denied")
async def denied(websocket: WebSocket) -> None:
    """Refuses the upgrade with an HTTP response of its own (the denial response extension)."""
    await websocket.send_denial_response(JSONResponse({"denied": "no token"}, status_code=401))


@app.websocket("/ws")
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
