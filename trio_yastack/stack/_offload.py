"""Per-frame offload marks: what a DPDK mbuf says in ``ol_flags``, said here by a frame's type.

A port with receive checksum offload hands up :class:`ChecksumVerified` frames when its
hardware (for a TAP, the kernel, through the virtio-net header) vouches for their checksums;
the stack skips verifying those and verifies every other frame.  On the way out, when the port
offers transmit checksum offload, TCP builds its data segments as :class:`OffloadPacket`: the
checksum field holds only the pseudo-header sum (Linux's ``CHECKSUM_PARTIAL``) and the port
completes it; with TSO, ``gso_size`` > 0 marks a segment larger than the MTU that the port cuts
into ``gso_size``-byte segments (Linux's GSO, DPDK's ``RTE_MBUF_F_TX_TCP_SEG``).

Types rather than side tables keep the hot path to one ``type(frame) is ...`` test (one
``type(frame) in VOUCHED`` for the two received kinds), and a frame that goes through a wrapper
port (a pcap tee, a tracer) keeps its marks.

A port that hands up a frame held in memory it owns (the memory wire: the sending stack's
:class:`OffloadPacket`, which the sender never touches again once handed to ``tx_burst``) marks it
without a copy: it turns the packet into a :class:`ChecksumVerifiedPacket` by assigning its
``__class__`` (same layout), where wrapping it as :class:`ChecksumVerified` would copy 64 KiB.
"""

from __future__ import annotations

__all__ = ["VOUCHED", "ChecksumVerified", "ChecksumVerifiedPacket", "OffloadPacket"]

_bytearray_init = bytearray.__init__


class ChecksumVerified(bytes):
    """A received frame whose IPv4 and transport checksums the port has vouched for."""

    __slots__ = ()


class OffloadPacket(bytearray):
    """A frame to transmit whose transport checksum the port completes (its field holds the
    folded pseudo-header sum) and, when ``gso_size`` > 0, which the port segments (TSO) into
    segments carrying ``gso_size`` payload bytes each."""

    __slots__ = ("gso_size",)

    def __init__(self, size: int, gso_size: int = 0) -> None:
        # bytearray's own __init__ called directly: ``super()`` builds a proxy object per call,
        # a third of the cost of making one of these, and TCP makes one per data segment
        _bytearray_init(self, size)
        self.gso_size = gso_size


class ChecksumVerifiedPacket(bytearray):
    """A received frame whose checksums the port vouched for, kept in the buffer the sender built
    it in: an :class:`OffloadPacket` re-classed in place by a port that owns it from then on (the
    memory wire).  Same slots as :class:`OffloadPacket`, so ``packet.__class__ = ...`` is allowed;
    not a subclass of it, so no transmit path takes a received frame for one of its own to
    complete.  A real port never makes one: its frames are ``bytes`` or :class:`ChecksumVerified`."""

    __slots__ = ("gso_size",)


#: the types of a received frame whose checksums the port vouched for (``frame.__class__ in VOUCHED``)
VOUCHED: frozenset[type] = frozenset((ChecksumVerified, ChecksumVerifiedPacket))
