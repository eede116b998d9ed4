"""The ASGI lifespan protocol with uvicorn's semantics.

- ``"auto"``: an app that raises before completing start-up is taken as not speaking lifespan
  (logged at debug level) and served anyway; ``lifespan.startup.failed`` still aborts start-up.
- ``"on"``: any failure (an exception or ``lifespan.startup.failed``) aborts start-up:
  :meth:`Lifespan.startup` raises :class:`LifespanFailure` and nothing is served.
- ``"off"``: the app never sees a lifespan scope.

``state`` is the dict the app fills in ``scope["state"]``; every request gets a shallow copy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import trio

__all__ = ["ASGIApp", "Lifespan", "LifespanFailure"]

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]

logger = logging.getLogger("trio_yastack.asgi")


class LifespanFailure(RuntimeError):
    """The app's lifespan start-up failed: the server serves nothing."""


class Lifespan:
    """Runs the app's lifespan scope in a task of its own: :meth:`startup`, then :meth:`shutdown`."""

    def __init__(self, app: ASGIApp, mode: Literal["auto", "on", "off"] = "auto") -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._received = 0
        self._startup_done = trio.Event()
        self._shutdown_requested = trio.Event()
        self._shutdown_done = trio.Event()
        self._failure: str | None = None  # startup.failed's message
        self._shutdown_failure: str | None = None
        self._error: BaseException | None = None  # the app raised
        self._supported = mode != "off"
        self._cancel = trio.CancelScope()

    @property
    def supported(self) -> bool:
        """False once the app showed (in "auto") it does not speak lifespan, or with "off"."""
        return self._supported

    async def startup(self, nursery: trio.Nursery) -> None:
        """Run the app's start-up in ``nursery``; returns once it completed, raises
        :class:`LifespanFailure` when it failed (see the module's rules)."""
        if self.mode == "off":
            return
        nursery.start_soon(self._run)
        await self._startup_done.wait()
        if self._failure is not None:
            self._cancel.cancel()
            raise LifespanFailure(f"ASGI lifespan startup failed: {self._failure}")
        if self._error is not None and self.mode == "on":
            self._cancel.cancel()
            raise LifespanFailure(f"ASGI lifespan startup failed: {self._error!r}") from self._error

    async def shutdown(self) -> None:
        """Ask the app to shut down and wait for it (a failure is logged, not raised)."""
        if not self._supported:
            self._cancel.cancel()
            return
        self._shutdown_requested.set()
        await self._shutdown_done.wait()
        self._cancel.cancel()
        if self._shutdown_failure is not None:
            logger.error("ASGI lifespan shutdown failed: %s", self._shutdown_failure)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        with self._cancel:
            try:
                await self.app(scope, self._receive, self._send)
            except Exception as exc:
                self._error = exc
                if self.mode == "auto" and not self._startup_done.is_set():
                    self._supported = False
                    logger.debug("ASGI 'lifespan' protocol appears unsupported (%r)", exc)
                else:
                    logger.error("Exception in ASGI lifespan", exc_info=exc)
            finally:
                self._startup_done.set()
                self._shutdown_done.set()

    async def _receive(self) -> dict[str, Any]:
        self._received += 1
        if self._received == 1:
            return {"type": "lifespan.startup"}
        if self._received == 2:
            await self._shutdown_requested.wait()
            return {"type": "lifespan.shutdown"}
        await trio.sleep_forever()  # nothing comes after shutdown
        raise AssertionError("unreachable")

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._failure = str(message.get("message", ""))
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._shutdown_failure = str(message.get("message", ""))
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
