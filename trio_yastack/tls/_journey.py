"""The TLS hops of a packet's journey: ``tls_handshake``, ``tls_read``, ``tls_write``.

TLS runs above the stack in ``trio.SSLStream`` (hypercorn's and the proxy's), which calls the
socket's ``recv``/``send`` inside its own ``do_handshake``/``receive_some``/``send_all``.
While a tracer is on, those three methods are wrapped to say which TLS call the current task is
in (a context variable, per trio task); the stack's trace points read it, so a record's bytes
show ``recv`` then ``tls_read`` then ``app``, and a response shows ``tls_write`` then ``send``.
Nothing is wrapped while no tracer is on: ``install`` and ``uninstall`` are counted.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from trio_yastack._journey import TlsOp, current_tls_op

if TYPE_CHECKING:
    from trio_yastack._journey import CoreTracer

__all__ = ["install", "installed", "uninstall"]

_METHODS = {"do_handshake": "tls_handshake", "receive_some": "tls_read", "send_all": "tls_write"}
_tracers: list[CoreTracer] = []
_originals: dict[str, Any] = {}


def installed() -> bool:
    return bool(_originals)


def _wrap(name: str, kind: str, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def traced(self: trio.SSLStream[Any], *args: Any, **kwargs: Any) -> Any:
        if current_tls_op.get() is not None:  # nested (a write inside a handshake): the outer call
            return await original(self, *args, **kwargs)
        op = TlsOp(kind, _perf())
        token = current_tls_op.set(op)
        result: Any = None
        note = ""
        try:
            result = await original(self, *args, **kwargs)
            if kind == "tls_read":
                note = f"{len(result)} bytes of plaintext from a TLS record"
            elif kind == "tls_handshake":
                version = self.version() if hasattr(self, "version") else None
                alpn = self.selected_alpn_protocol() if hasattr(self, "selected_alpn_protocol") else None
                note = f"{version or 'TLS'} done, ALPN {alpn or '-'}"
            return result
        except BaseException as exc:
            note = f"failed: {type(exc).__name__}"
            raise
        finally:
            current_tls_op.reset(token)
            for tracer in {tracer for tracer, _ in op.journeys}:
                tracer.tls_done(op, note)

    return traced


def _perf() -> float:
    import time

    return time.perf_counter()


def install(tracer: CoreTracer) -> None:
    """Wrap ``trio.SSLStream``'s calls for ``tracer`` (the first tracer in a process wraps)."""
    if tracer in _tracers:
        return
    _tracers.append(tracer)
    if _originals:
        return
    for name, kind in _METHODS.items():
        original = getattr(trio.SSLStream, name)
        _originals[name] = original
        setattr(trio.SSLStream, name, _wrap(name, kind, original))


def uninstall(tracer: CoreTracer) -> None:
    """Undo :func:`install` for ``tracer``; the last one out puts the methods back."""
    if tracer in _tracers:
        _tracers.remove(tracer)
    if _tracers or not _originals:
        return
    for name, original in _originals.items():
        setattr(trio.SSLStream, name, original)
    _originals.clear()
