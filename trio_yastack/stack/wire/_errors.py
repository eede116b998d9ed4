"""The one error family raised by every parser in :mod:`trio_yastack.stack.wire`.

A parser either returns a representation or raises a :class:`WireError`; anything else is a bug.
Each error carries a short ``reason`` that the stack uses as the name of the drop counter, so a
malformed frame is always "dropped and counted by reason".
"""

from __future__ import annotations

__all__ = ["BadChecksum", "Malformed", "Truncated", "Unsupported", "WireError"]


class WireError(ValueError):
    """Bytes that are not a valid instance of the format being parsed (the peer's fault)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        #: a counter-friendly name for why the bytes were refused, e.g. ``"bad_checksum"``
        self.reason = reason


class Truncated(WireError):
    """Fewer bytes than the header or a length field promises."""


class Malformed(WireError):
    """A field holds a value the format forbids (bad version, header length, option length...)."""


class BadChecksum(WireError):
    """The checksum does not verify."""


class Unsupported(WireError):
    """Well-formed, but a variant this stack does not speak (another hardware type, say)."""
