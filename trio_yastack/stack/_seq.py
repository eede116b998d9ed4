"""TCP sequence numbers: 32 bits on the wire, unbounded integers inside the stack.

A connection converts each 32-bit sequence or acknowledgment number it receives into an
absolute integer next to a reference it already holds (``rcv_nxt`` for sequence numbers,
``snd_una`` for acknowledgments), and masks to 32 bits only when it writes a segment.  Between
those two points every comparison is a plain integer comparison, so the wrap at 2**32 is
handled in exactly one place (:func:`unwrap`) instead of in every ``SEQ_LT`` -- the class of bug
that breaks stacks whose connections cross 2**32.  :func:`seq_lt` is FreeBSD's ``SEQ_LT`` for
the few 32-bit values that are compared as they come off the wire (timestamps, a new SYN's
sequence number against an old connection's).

The header prediction in ``tcp/_input.py`` writes ``seq_lt`` and ``unwrap`` out inline, so that
the segments a bulk transfer is made of pay no call; a test holds those lines to these functions.
"""

from __future__ import annotations

__all__ = ["MOD", "seq_lt", "unwrap"]

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
