"""The one error family raised by every parser in :mod:`trio_yastack.stack.wire`.

A parser either returns a representation or raises a :class:`WireError`; anything else is a bug.
Each error carries a short ``reason`` that the stack uses as the name of the drop counter, so a
malformed frame is always "dropped and counted by reason".  The reasons are registered in
:class:`WireReason`; each layer's drop registry (``stack/_drops.py``) names those its parsers give.
"""

from __future__ import annotations

from typing import Final

__all__ = ["WIRE_REASONS", "BadChecksum", "Malformed", "Truncated", "Unsupported", "WireError", "WireReason"]


class WireReason:
    """Every ``reason`` a parser may give (a :class:`WireError` with another one is refused)."""

    TOO_SHORT: Final = "too_short"
    TOO_MANY_TAGS: Final = "too_many_tags"
    NOT_ETHERNET_II: Final = "not_ethernet_ii"
    BAD_FORMAT: Final = "bad_format"
    BAD_OPERATION: Final = "bad_operation"
    BAD_VERSION: Final = "bad_version"
    BAD_HEADER_LENGTH: Final = "bad_header_length"
    BAD_LENGTH: Final = "bad_length"
    BAD_CHECKSUM: Final = "bad_checksum"
    BAD_OPTION: Final = "bad_option"
    BAD_PORT: Final = "bad_port"
    #: IPv6 (RFC 8200): a chain of extension headers longer than the stack walks
    TOO_MANY_HEADERS: Final = "too_many_headers"
    #: IPv6: a routing header with segments left (this host does not route; type 0 is RFC 5095's)
    BAD_ROUTING_HEADER: Final = "bad_routing_header"


#: the registry: every reason :class:`WireReason` names
WIRE_REASONS: Final = frozenset(
    value for name, value in vars(WireReason).items() if name.isupper() and isinstance(value, str)
)


class WireError(ValueError):
    """Bytes that are not a valid instance of the format being parsed (the peer's fault)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in WIRE_REASONS:  # a bug in a parser, not the peer's fault
            raise ValueError(f"{reason!r} is not a registered WireReason")
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
