"""TCP sequence numbers: 32 bits on the wire, unbounded integers inside the stack.

A connection converts each 32-bit sequence or acknowledgment number it receives into an
absolute integer next to a reference it already holds (``rcv_nxt`` for sequence numbers,
``snd_una`` for acknowledgments), and masks to 32 bits only when it writes a segment.  Between
those two points every comparison is a plain integer comparison, so the wrap at 2**32 is
handled in exactly one place (:func:`unwrap`) instead of in every ``SEQ_LT`` — the class of bug
that breaks stacks whose connections cross 2**32.  :class:`SeqNum` is the modular type for
code and tests that work with wire values directly, with FreeBSD's ``SEQ_LT`` semantics.
"""

from __future__ import annotations

__all__ = ["MOD", "SeqNum", "seq_lt", "unwrap"]

MOD = 1 << 32
_HALF = 1 << 31
_MASK = MOD - 1


def unwrap(wire: int, reference: int) -> int:
    """The absolute number closest to ``reference`` whose low 32 bits are ``wire``.

    Valid while the true value is within 2**31 of the reference, which TCP's windows (at most
    2**30 bytes, RFC 7323) guarantee for any segment worth looking at.
    """
    return reference + ((wire - reference + _HALF) & _MASK) - _HALF


def seq_lt(a: int, b: int) -> bool:
    """``a`` before ``b`` modulo 2**32 (FreeBSD's ``SEQ_LT``), for 32-bit values such as TSval."""
    return 0 < ((b - a) & _MASK) < _HALF


class SeqNum(int):
    """A 32-bit sequence number whose order is modulo 2**32 (``SeqNum(5) > SeqNum(2**32 - 5)``)."""

    __slots__ = ()

    def __new__(cls, value: int) -> SeqNum:
        return super().__new__(cls, value & _MASK)

    def __add__(self, other: int) -> SeqNum:
        return SeqNum(int(self) + int(other))

    __radd__ = __add__

    def __sub__(self, other: int) -> SeqNum | int:  # type: ignore[override]
        """``SeqNum - int`` is a SeqNum; ``SeqNum - SeqNum`` is the signed distance."""
        if isinstance(other, SeqNum):
            return ((int(self) - int(other) + _HALF) & _MASK) - _HALF
        return SeqNum(int(self) - int(other))

    def __lt__(self, other: int) -> bool:  # type: ignore[override]
        return 0 < ((int(other) - int(self)) & _MASK) < _HALF

    def __le__(self, other: int) -> bool:  # type: ignore[override]
        return int(self) == int(other) & _MASK or self < other

    def __gt__(self, other: int) -> bool:  # type: ignore[override]
        return not self <= other

    def __ge__(self, other: int) -> bool:  # type: ignore[override]
        return not self < other

    def __repr__(self) -> str:
        return f"SeqNum({int(self)})"
