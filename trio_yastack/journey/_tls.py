"""The TLS hops of a packet's journey: ``tls_handshake``, ``tls_read``, ``tls_write``.

TLS runs above the stack in ``trio.SSLStream`` (hypercorn's and the proxy's), which calls the
socket's ``recv``/``send`` inside its own ``do_handshake``/``receive_some``/``send_all``.
While a tracer is on, those three methods of ``trio.SSLStream`` are replaced by the ones of
:class:`_SslStreamTrace`, which say which TLS call the current task is in (a context variable,
per trio task); the stack's trace points read it, so a record's bytes show ``recv`` then
``tls_read`` then ``app``, and a response shows ``tls_write`` then ``send``.  Nothing is
replaced while no tracer is on: :func:`install` and :func:`uninstall` are counted, the first
tracer in a process installs and the last one out puts trio's methods back.

``trio_yastack.tls`` knows nothing of this: the trace points live here, above it, and reach it
only through ``trio.SSLStream``, the class it hands its streams to.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import trio

from ._journey import Journey
from ._overrides import check_overrides

__all__ = ["TlsOp", "TlsTracer", "current_tls_op", "install", "installed", "uninstall"]


class TlsTracer(Protocol):
    """What a TLS call tells the tracer whose journeys it consumed, when it returns."""

    def tls_done(self, op: TlsOp, note: str) -> None: ...


@dataclass(slots=True, eq=False)
class TlsOp:
    """A TLS call in progress in this task: what its reads consumed and when it began."""

    kind: str  # tls_handshake | tls_read | tls_write
    started: float
    journeys: list[tuple[TlsTracer, Journey]] = field(default_factory=list)


#: the TLS call the current task is in (a trio task has its own context)
current_tls_op: contextvars.ContextVar[TlsOp | None] = contextvars.ContextVar("yastack_tls_op", default=None)

_tracers: list[TlsTracer] = []
#: trio's own methods while ours are installed, by name
_originals: dict[str, Callable[..., Awaitable[Any]]] = {}


def _enter(kind: str) -> tuple[TlsOp, contextvars.Token[TlsOp | None]] | None:
    """Begin a TLS call; ``None`` when the task is already in one (a write inside a handshake:
    the outer call is the hop)."""
    if current_tls_op.get() is not None:
        return None
    op = TlsOp(kind, time.perf_counter())
    return op, current_tls_op.set(op)


def _exit(entered: tuple[TlsOp, contextvars.Token[TlsOp | None]], note: str) -> None:
    op, token = entered
    current_tls_op.reset(token)
    for tracer in {tracer for tracer, _ in op.journeys}:
        tracer.tls_done(op, note)


class _SslStreamTrace:
    """The traced ``trio.SSLStream`` methods, put on that class while installed (so ``self`` is
    an ``SSLStream``; trio's class is final, so this cannot say so by subclassing it).  Same
    names and signatures as trio's: ``install`` refuses, and a test fails, when trio's change."""

    async def do_handshake(self) -> None:
        entered = _enter("tls_handshake")
        if entered is None:
            await _originals["do_handshake"](self)
            return
        note = "failed"
        try:
            await _originals["do_handshake"](self)
            stream = cast("trio.SSLStream[trio.abc.Stream]", self)
            note = f"{stream.version() or 'TLS'} done, ALPN {stream.selected_alpn_protocol() or '-'}"
        except BaseException as exc:
            note = f"failed: {type(exc).__name__}"
            raise
        finally:
            _exit(entered, note)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        entered = _enter("tls_read")
        data: bytes | bytearray
        if entered is None:
            data = await _originals["receive_some"](self, max_bytes)
            return data
        note = "failed"
        try:
            data = await _originals["receive_some"](self, max_bytes)
            note = f"{len(data)} bytes of plaintext from a TLS record"
            return data
        except BaseException as exc:
            note = f"failed: {type(exc).__name__}"
            raise
        finally:
            _exit(entered, note)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        entered = _enter("tls_write")
        if entered is None:
            await _originals["send_all"](self, data)
            return
        note = ""
        try:
            await _originals["send_all"](self, data)
        except BaseException as exc:
            note = f"failed: {type(exc).__name__}"
            raise
        finally:
            _exit(entered, note)


#: the methods :func:`install` replaces, with the hop each one is
TRACED_METHODS = {"do_handshake": "tls_handshake", "receive_some": "tls_read", "send_all": "tls_write"}


def installed() -> bool:
    return bool(_originals)


def install(tracer: TlsTracer) -> None:
    """Put the traced methods on ``trio.SSLStream`` for ``tracer`` (the first tracer in a
    process does).  Raises ``TraceInstallError`` (and changes nothing) when trio's methods no
    longer have the names and signatures ours copy."""
    if tracer in _tracers:
        return
    if not _originals:
        check_overrides(trio.SSLStream, _SslStreamTrace)
        for name in TRACED_METHODS:
            _originals[name] = getattr(trio.SSLStream, name)
            setattr(trio.SSLStream, name, vars(_SslStreamTrace)[name])
    _tracers.append(tracer)


def uninstall(tracer: TlsTracer) -> None:
    """Undo :func:`install` for ``tracer``; the last one out puts trio's methods back."""
    if tracer in _tracers:
        _tracers.remove(tracer)
    if _tracers or not _originals:
        return
    for name, original in _originals.items():
        setattr(trio.SSLStream, name, original)
    _originals.clear()
