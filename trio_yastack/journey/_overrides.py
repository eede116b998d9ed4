"""The check that keeps class-swapping tracing honest.

Tracing puts a subclass in place of a traced object's class (``_tracer``), or its own methods in
place of ``trio.SSLStream``'s (``_tls``); each traced method copies the name and the signature of
the method it wraps.  Should the stack rename one (or change its parameters), the traced method
would wrap nothing, or be called wrongly, and a journey would silently lose a hop.  So tracing
refuses to start when a traced method does not match the method it wraps, and a test walks every
traced class against the classes it is installed on.

The check runs when a traced class is made (once per class and tracer, never per packet).
"""

from __future__ import annotations

import inspect

__all__ = ["TraceInstallError", "check_overrides", "override_problems"]


class TraceInstallError(RuntimeError):
    """A traced method no longer matches the method it wraps (the message says which): tracing
    would skip a hop or break the stack, so it does not start."""


def _shape(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    # what decides how a call binds: names, kinds and defaults (not the annotations' text)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def override_problems(cls: type, traced: type, *, annotations: bool = True) -> list[str]:
    """What in ``traced`` does not match ``cls``: each method ``traced`` defines must exist on
    ``cls`` with the same signature (with ``annotations``, to the annotations' text)."""
    problems = []
    for name, method in vars(traced).items():
        if name.startswith("__") or not inspect.isfunction(method):
            continue
        original = getattr(cls, name, None)
        where = f"{cls.__module__}.{cls.__qualname__}.{name}"
        if original is None or not callable(original):
            problems.append(f"{traced.__qualname__}.{name} wraps {where}, which does not exist")
            continue
        try:
            wanted = inspect.signature(original)
        except (TypeError, ValueError):
            problems.append(f"{where} has no signature to compare")
            continue
        have = inspect.signature(method)
        same = have == wanted if annotations else _shape(have) == _shape(wanted)
        if not same:
            problems.append(f"{traced.__qualname__}.{name}{have} does not match {where}{wanted}")
    return problems


def check_overrides(cls: type, traced: type) -> None:
    """Raise :class:`TraceInstallError` unless ``traced``'s methods can stand in for ``cls``'s."""
    problems = override_problems(cls, traced, annotations=False)
    if problems:
        raise TraceInstallError("tracing cannot start: " + "; ".join(problems))
