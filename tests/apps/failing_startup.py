"""A FastAPI app whose lifespan startup fails (as one does when its database is unreachable):
the server must report the failure and serve nothing (uvicorn's and hypercorn's behaviour)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    raise RuntimeError("database unreachable at startup")
    yield  # unreachable: makes this an async generator, as FastAPI's lifespan must be


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root() -> dict[str, str]:
    return {"served": "never"}
