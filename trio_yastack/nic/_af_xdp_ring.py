"""The pure-Python twin of ``native/af_xdp.c``'s ring work: the AF_XDP ring arithmetic of
libxdp's inline helpers (``xsk_ring_prod__reserve``, ``xsk_ring_cons__peek``, ...) and the port's
three burst functions built on it (``xsk_rx_burst``, ``xsk_tx_burst``, ``xsk_reap``).

Same names as the C minus ``yas_``, same fields as ``struct yas_xsk``, same results: a
differential test (``tests/test_af_xdp.py``) runs both over the same rings laid out in ordinary
memory as the kernel lays them out, and compares every byte and every index.  What has no twin:
creating the socket, registering the UMEM and loading the XDP program (``yas_xsk_open``: system
calls through libxdp, nothing to compute), and the kicks (``sendto``/``recvfrom`` when a ring
has ``XDP_RING_NEED_WAKEUP`` set), which the twin, like the C on rings with ``fd == -1``, never
makes.

The ring layout (``linux/if_xdp.h``, ``XDP_MMAP_OFFSETS``): a ``u32`` producer index, a ``u32``
consumer index and a ``u32`` flags word, each at its own offset, then the entries: ``u64``
frame addresses for the fill and completion rings, ``struct xdp_desc {u64 addr; u32 len; u32
options}`` for rx and tx.  Indices increase forever modulo 2**32; an entry is ``index & mask``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "XDP_DESC",
    "XDP_RING_NEED_WAKEUP",
    "XSK_BAD_ARGS",
    "XSK_CORRUPT",
    "PyXsk",
    "XskRing",
    "xsk_reap",
    "xsk_rx_burst",
    "xsk_tx_burst",
]

XDP_RING_NEED_WAKEUP = 1
#: struct xdp_desc: addr, len, options
XDP_DESC = struct.Struct("=QII")
XSK_BAD_ARGS = -1
XSK_CORRUPT = -2
_U32 = 0xFFFFFFFF
_U64 = struct.Struct("=Q")


@dataclass(slots=True)
class XskRing:
    """One ring (``struct xsk_ring_prod`` / ``xsk_ring_cons``): the cached indices and views of
    the shared producer, consumer and flags words and of the entries."""

    producer: memoryview  # u32[1]
    consumer: memoryview  # u32[1]
    flags: memoryview  # u32[1]
    ring: memoryview  # the entries, as bytes
    size: int
    cached_prod: int = 0
    cached_cons: int = 0

    @property
    def mask(self) -> int:
        return self.size - 1

    # -- the producer's side (fill, tx) --------------------------------------------------------
    def prod_nb_free(self, nb: int) -> int:
        """``xsk_prod_nb_free``: free entries, refreshing the cached consumer only when the cache
        shows fewer than ``nb`` (``cached_cons`` runs ``size`` ahead of the real consumer)."""
        free = (self.cached_cons - self.cached_prod) & _U32
        if free >= nb:
            return free
        self.cached_cons = (self.consumer[0] + self.size) & _U32
        return (self.cached_cons - self.cached_prod) & _U32

    def reserve(self, nb: int) -> int | None:
        """``xsk_ring_prod__reserve``: the first index of ``nb`` entries, or None (all or nothing)."""
        if self.prod_nb_free(nb) < nb:
            return None
        idx = self.cached_prod
        self.cached_prod = (self.cached_prod + nb) & _U32
        return idx

    def submit(self, nb: int) -> None:
        """``xsk_ring_prod__submit``: publish ``nb`` entries."""
        self.producer[0] = (self.producer[0] + nb) & _U32

    def needs_wakeup(self) -> bool:
        return bool(self.flags[0] & XDP_RING_NEED_WAKEUP)

    # -- the consumer's side (rx, completion) --------------------------------------------------
    def cons_nb_avail(self, nb: int) -> int:
        """``xsk_cons_nb_avail``: entries ready, at most ``nb``; the cached producer is read again
        only when the cache shows none."""
        entries = (self.cached_prod - self.cached_cons) & _U32
        if entries == 0:
            self.cached_prod = self.producer[0]
            entries = (self.cached_prod - self.cached_cons) & _U32
        return nb if entries > nb else entries

    def peek(self, nb: int) -> tuple[int, int]:
        """``xsk_ring_cons__peek``: ``(entries, first index)``."""
        entries = self.cons_nb_avail(nb)
        idx = self.cached_cons
        if entries:
            self.cached_cons = (self.cached_cons + entries) & _U32
        return entries, idx

    def cancel(self, nb: int) -> None:
        self.cached_cons = (self.cached_cons - nb) & _U32

    def release(self, nb: int) -> None:
        self.consumer[0] = (self.consumer[0] + nb) & _U32

    # -- entries ---------------------------------------------------------------------------------
    def addr(self, idx: int) -> int:
        return int(_U64.unpack_from(self.ring, (idx & self.mask) * 8)[0])

    def set_addr(self, idx: int, addr: int) -> None:
        _U64.pack_into(self.ring, (idx & self.mask) * 8, addr)

    def desc(self, idx: int) -> tuple[int, int, int]:
        addr, length, options = XDP_DESC.unpack_from(self.ring, (idx & self.mask) * XDP_DESC.size)
        return addr, length, options

    def set_desc(self, idx: int, addr: int, length: int) -> None:
        XDP_DESC.pack_into(self.ring, (idx & self.mask) * XDP_DESC.size, addr, length, 0)


@dataclass(slots=True)
class PyXsk:
    """``struct yas_xsk`` as far as the bursts use it (no socket: the twin never kicks)."""

    fill: XskRing
    comp: XskRing
    rx: XskRing
    tx: XskRing
    umem: memoryview
    frame_size: int
    nframes: int
    free_frames: list[int] = field(default_factory=list)
    tx_too_long: int = 0

    @property
    def rx_frames(self) -> int:
        return self.nframes // 2

    def frame_base(self, addr: int) -> int:
        return addr & ~(self.frame_size - 1)


def xsk_rx_burst(x: PyXsk, out: bytearray, lens: list[int], max_n: int) -> int:
    """Twin of ``yas_xsk_rx_burst``: copy up to ``max_n`` received frames into ``out`` back to
    back (their lengths into ``lens``), give their frames back to the fill ring, release them
    from the rx ring.  Returns how many, or ``XSK_CORRUPT``."""
    if max_n <= 0:
        return 0
    n, idx_rx = x.rx.peek(max_n)
    if n == 0:
        return 0
    umem_len = len(x.umem)
    off = 0
    taken = 0
    while taken < n:
        addr, length, _ = x.rx.desc(idx_rx + taken)
        addr = (addr & ((1 << 48) - 1)) + (addr >> 48)  # xsk_umem__add_offset_to_addr
        if addr >= umem_len or length > umem_len - addr or length > x.frame_size:
            x.rx.cancel(n)
            return XSK_CORRUPT
        if length > len(out) - off:
            break
        out[off : off + length] = x.umem[addr : addr + length]
        if taken < len(lens):
            lens[taken] = length
        else:
            lens.append(length)
        off += length
        taken += 1
    if taken < n:
        x.rx.cancel(n - taken)
        n = taken
    idx_fill = x.fill.reserve(n)
    if idx_fill is None:
        x.rx.cancel(n)
        return XSK_CORRUPT
    for i in range(n):
        x.fill.set_addr(idx_fill + i, x.frame_base(x.rx.desc(idx_rx + i)[0]))
    x.fill.submit(n)
    x.rx.release(n)
    return n


def xsk_reap(x: PyXsk) -> int:
    """Twin of ``yas_xsk_reap``: every completed transmit frame back on the free stack."""
    n, idx = x.comp.peek(x.comp.size)
    if n > (x.nframes - x.rx_frames) - len(x.free_frames):
        x.comp.cancel(n)
        return XSK_CORRUPT
    for i in range(n):
        x.free_frames.append(x.frame_base(x.comp.addr(idx + i)))
    if n:
        x.comp.release(n)
    return n


def xsk_tx_burst(x: PyXsk, frames: bytes, lens: list[int], max_len: int) -> int:
    """Twin of ``yas_xsk_tx_burst``: reap, then copy the frames (``frames`` back to back, their
    lengths in ``lens``) into free UMEM frames and submit them to the tx ring.  A frame longer
    than ``max_len`` or a UMEM frame is skipped and counted (``tx_too_long``) but accepted.
    Returns how many of the first frames were accepted, or an ``XSK_*`` error."""
    n = len(lens)
    if n == 0:
        return 0
    if sum(lens) > len(frames):
        return XSK_BAD_ARGS
    if xsk_reap(x) < 0:
        return XSK_CORRUPT
    room = x.tx.prod_nb_free(n)
    slots = min(n, room, len(x.free_frames))
    idx = 0
    if slots:
        reserved = x.tx.reserve(slots)
        if reserved is None:  # room >= slots: never, unless the ring lies
            return XSK_CORRUPT
        idx = reserved
    used = off = taken = 0
    while taken < n:
        length = lens[taken]
        if length > max_len or length > x.frame_size:
            x.tx_too_long += 1
            off += length
            taken += 1
            continue
        if used == slots:
            break
        addr = x.free_frames.pop()
        x.umem[addr : addr + length] = frames[off : off + length]
        x.tx.set_desc(idx + used, addr, length)
        used += 1
        off += length
        taken += 1
    x.tx.cached_prod = (x.tx.cached_prod - (slots - used)) & _U32
    if used:
        x.tx.submit(used)
    return taken
