"""The AF_PACKET poll-mode driver: a TPACKET_V3 receive ring and sendmmsg bursts on an interface.

``nic="af_packet:IFACE[,key=value...]"`` puts the stack on a real (or veth) interface without a
TAP: the kernel copies every frame the interface receives into a memory-mapped ring we read
without a system call, and a burst leaves in one ``sendmmsg``.  What it does, and why:

- **Receive ring, TPACKET_V3** (``Documentation/networking/packet_mmap.rst``): the kernel fills
  *blocks* of variable-length frames and hands a block over when it is full or when its retire
  timer (``block_timeout`` ms) fires; ``rx_burst`` walks handed-over blocks in one crossing into C
  (``native/af_packet.c``'s ``yas_afp_rx_walk``), copying up to ``max_n`` frames out and giving
  finished blocks back, then cuts them into ``bytes``.  :func:`py_rx_walk` is its pure-Python
  twin (used when the extension is not built, or with ``TRIO_YASTACK_NO_NATIVE=1``);
  ``tests/test_af_packet.py`` holds the two to the same frames from the same ring memory.  The
  price of block batching is latency when traffic is sparse: a frame alone in a block waits for
  the retire timer (at least a jiffy: 4 ms at HZ=250), and the kernel wakes the reader only then.
  ``version=2`` uses a TPACKET_V2 ring instead: a ``frame_size`` slot per frame, each handed
  over (and the reader woken) as it is filled, walked the same way (``yas_afp_rx_walk_v2``, twin
  :func:`py_rx_walk_v2`); slots must hold the largest frame the interface hands up (64 KB
  super-frames from a veth peer's TSO or a NIC's GRO), which costs memory.  A VLAN tag the kernel
  took off is put back, so the stack sees frames as they were on the wire.
- **Transmit**: one ``sendmmsg(2)`` per burst (``yas_afp_tx_burst``) on a second socket per
  queue (bound with protocol 0, so it receives nothing), with ``PACKET_QDISC_BYPASS`` (on by
  default, ``qdisc_bypass=off``) so frames go straight to the driver, and ``PACKET_VNET_HDR``
  (``offloads=on``, the default): each frame goes behind a virtio-net header, as on a TAP, so the
  stack leaves TCP checksums partial and hands over 64 KB segments, which the kernel (or a NIC
  with TSO) completes and cuts.  With ``offloads=off`` the stack computes checksums and cuts
  segments itself (software GSO); an :class:`~trio_yastack.stack.OffloadPacket` that reaches the
  port anyway is completed (and cut) here.
- **Several queues, one per core**: ``queues=N`` opens N sockets in one ``PACKET_FANOUT`` group
  (``PACKET_FANOUT_HASH``, with defragmentation), so the kernel spreads flows over them by its
  flow hash; the per-core dispatcher forwards a frame that lands on another core's queue.  The
  group id is unique to the port (``PACKET_FANOUT_FLAG_UNIQUEID``) unless ``fanout=ID`` names one.
- **Which frames**: the stack uses the interface's own MAC (the default ``mac`` of
  ``open_stack``), so no promiscuous mode is needed; ``promisc=on`` turns it on while the port is
  open, for a stack MAC of your choosing (a physical NIC filters other MACs in hardware; a veth
  hands packet sockets every frame anyway).  ``PACKET_IGNORE_OUTGOING`` keeps our own
  transmissions out of the ring.
- **Checksums**: a frame whose checksum the kernel never computed (``TP_STATUS_CSUMNOTREADY``: it
  came from a local sender, such as the kernel at the far end of a veth, and carries only the
  pseudo-header sum) or that the driver verified (``TP_STATUS_CSUM_VALID``) is handed up as
  :class:`~trio_yastack.stack.ChecksumVerified`, as the TAP port does with the virtio-net
  header's ``NEEDS_CSUM``/``DATA_VALID``; every other frame is verified by the stack.
- **The kernel still sees every frame** on the interface (AF_PACKET taps a copy): it must not
  carry the stack's address, or the kernel answers ARP and TCP for it too (resets to our peers).
  The port refuses an interface with an IPv4 address unless ``shared=on`` says the stack uses an
  address the kernel does not have.  Turn IP forwarding off in that namespace too.
- One port per interface per network namespace: a second one is refused as busy (an abstract
  Unix socket named after the interface is the lock; it goes with the process).
- Needs ``CAP_NET_RAW`` (root, or ``setcap cap_net_raw+ep`` on the interpreter).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import socket
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from trio_yastack.stack._native import tcp4_segment
from trio_yastack.stack._offload import ChecksumVerified, OffloadPacket
from trio_yastack.stack.wire import MacAddress

from ._port import Port, PortCapabilities, PortCounters, PortStatistics
from ._spec import parse_port_spec
from .tap import _PLAIN_VNET_HDR, VNET_HDR_LEN, _offload_header, complete_checksum

if TYPE_CHECKING:
    from ._af_packet_cffi import CData

__all__ = [
    "NATIVE",
    "AfPacketError",
    "AfPacketOptions",
    "AfPacketPort",
    "RxCursor",
    "open_af_packet_port",
    "parse_af_packet_spec",
    "py_rx_walk",
    "py_rx_walk_v2",
]

# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_VNET_HDR = 15
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>: SO_SNDBUF above net.core.wmem_max (CAP_NET_ADMIN)
_TX_SNDBUF = 8 << 20
TPACKET_V2 = 1
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
TP_STATUS_CSUM_VALID = 1 << 7
#: the frame's checksums need no verifying (see the module's docstring)
_CSUM_VOUCHED = TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID
_TPACKET_REQ3 = struct.Struct(
    "7I"
)  # block_size, block_nr, frame_size, frame_nr, retire_blk_tov, priv, features
_TPACKET_REQ = struct.Struct("4I")  # block_size, block_nr, frame_size, frame_nr (TPACKET_V2)
_TPACKET_STATS_V3 = struct.Struct("3I")  # tp_packets, tp_drops, tp_freeze_q_cnt (V2's struct: the first two)
_PACKET_MREQ = struct.Struct("iHH8s")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, blk_len, seq_num, ts_first_pkt, ts_last_pkt
_BLOCK_STATUS = struct.Struct("=I")  # at offset 8
_BLOCK_HEAD = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt at offset 8
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac,
# tp_net, hv1 {tp_rxhash, tp_vlan_tci, tp_vlan_tpid, tp_padding}, tp_padding[8]
_FRAME_HEAD = struct.Struct("=I8xI4xIHHxxxxIH")  # next_offset, snaplen, status, mac, net, vlan_tci, tpid
_FRAME_HEAD_LEN = 48
# struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_sec, tp_nsec, tp_vlan_tci,
# tp_vlan_tpid, tp_padding[4]
_FRAME2_HEAD = struct.Struct("=I4xIH6x4xHH")  # status, snaplen, mac, vlan_tci, vlan_tpid
_FRAME2_STATUS = struct.Struct("=I")
# <linux/sockios.h>
SIOCGIFFLAGS = 0x8913
SIOCGIFADDR = 0x8915
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1
_IFREQ_INT = struct.Struct("16si20x")
_IFREQ_FLAGS = struct.Struct("16sH22x")
_VLAN_TPID = 0x8100
_TX_STOP = (errno.EAGAIN, errno.ENOBUFS)  # the device's queue is full: the caller keeps the rest


def _load_extension() -> tuple[Any, Any] | None:
    if os.environ.get("TRIO_YASTACK_NO_NATIVE"):
        return None
    try:
        from ._af_packet_cffi import ffi, lib
    except ImportError:
        return None
    return ffi, lib


_extension = _load_extension()
#: whether the C ring walk and sendmmsg burst are in use (else the Python twin and ``os.write``)
NATIVE = _extension is not None


class AfPacketError(OSError):
    """The AF_PACKET port could not be opened; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class AfPacketOptions:
    """How to open an AF_PACKET port; every field is also an ``af_packet:IFACE,key=value`` option.

    ``block_size`` (a multiple of the page size), ``blocks`` and ``frame_size`` (the largest frame
    kept whole, a multiple of 16; large enough for the 64 KB TCP super-frames a veth peer or GRO
    hands up) shape each queue's receive ring (``block_size * blocks`` bytes of memory each);
    ``block_timeout``: ms before the kernel hands over a block that is not full.  ``version``: 3
    (TPACKET_V3, blocks) or 2 (TPACKET_V2: a ``frame_size`` slot per frame, handed over at once, so
    no block timer to wait for, but more memory per frame).  ``fanout``: the ``PACKET_FANOUT``
    group id (``None``: one unique to this port).  ``offloads``: transmit checksum offload and TSO
    through ``PACKET_VNET_HDR``.  ``shared``: allow an interface with an IPv4 address of its own
    (the stack must use another).
    """

    name: str = "eth0"
    queues: int = 1
    version: int = 3
    block_size: int = 1 << 20
    blocks: int = 16
    frame_size: int = 65536 + 512
    block_timeout: int = 1
    fanout: int | None = None
    qdisc_bypass: bool = True
    offloads: bool = True
    promisc: bool = False
    shared: bool = False
    max_burst: int = 64


def parse_af_packet_spec(spec: str) -> AfPacketOptions:
    """``af_packet:IFACE[,key=value...]`` as :class:`AfPacketOptions`, e.g.
    ``af_packet:veth0,queues=2,blocks=32,qdisc_bypass=off``."""
    options = parse_port_spec(
        spec, "af_packet", AfPacketOptions, head="name",
        missing="an AF_PACKET spec needs an interface name, as in af_packet:eth0",
    )  # fmt: skip
    AfPacketPort.check_options(options)
    return options


# -- the ring walk's Python twin -------------------------------------------------------------------
class RxCursor:
    """Where a ring walk stands (``struct yas_afp_cursor``): the block it reads, the frames left in
    it, the offset of the next one, and how many blocks were given up as malformed."""

    __slots__ = ("bad_blocks", "block", "left", "offset")

    def __init__(self, block: int = 0, left: int = 0, offset: int = 0, bad_blocks: int = 0) -> None:
        self.block, self.left, self.offset, self.bad_blocks = block, left, offset, bad_blocks

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.block, self.left, self.offset, self.bad_blocks


def py_rx_walk(
    ring: Any, block_size: int, block_count: int, cursor: RxCursor, max_n: int, out_len: int
) -> tuple[list[bytes], list[int]]:
    """Up to ``max_n`` frames (at most ``out_len`` bytes in all) from the handed-over blocks of a
    TPACKET_V3 ring, and their ``tp_status``; each block walked to its end goes back to the kernel.

    The twin of ``yas_afp_rx_walk`` (``native/af_packet.c``), step for step: ``ring`` is any
    writable buffer (the mmap, or a copy of it in tests)."""
    frames: list[bytes] = []
    statuses: list[int] = []
    used = 0
    while len(frames) < max_n:
        base = cursor.block * block_size
        if cursor.left == 0:
            block_status, num_pkts, first = _BLOCK_HEAD.unpack_from(ring, base + 8)
            if not block_status & TP_STATUS_USER:
                break
            cursor.left, cursor.offset = num_pkts, first
            if num_pkts == 0:
                _BLOCK_STATUS.pack_into(ring, base + 8, TP_STATUS_KERNEL)
                cursor.block = (cursor.block + 1) % block_count
                continue
        offset = cursor.offset
        bad = offset + _FRAME_HEAD_LEN > block_size
        if not bad:
            next_offset, snap, status, mac, _net, tci, tpid = _FRAME_HEAD.unpack_from(ring, base + offset)
            bad = offset + mac + snap > block_size or snap < 12
        if bad:
            cursor.bad_blocks += 1
            cursor.left = 0
            _BLOCK_STATUS.pack_into(ring, base + 8, TP_STATUS_KERNEL)
            cursor.block = (cursor.block + 1) % block_count
            continue
        start = base + offset + mac
        tagged = status & TP_STATUS_VLAN_VALID
        need = snap + (4 if tagged else 0)
        if used + need > out_len:
            break
        if tagged:
            if not (status & TP_STATUS_VLAN_TPID_VALID and tpid):
                tpid = _VLAN_TPID
            frame = bytes(ring[start : start + 12]) + struct.pack("!HH", tpid, tci & 0xFFFF)
            frame += bytes(ring[start + 12 : start + snap])
        else:
            frame = bytes(ring[start : start + snap])
        frames.append(frame)
        statuses.append(status)
        used += need
        cursor.offset = offset + next_offset
        cursor.left -= 1
        if cursor.left == 0:
            _BLOCK_STATUS.pack_into(ring, base + 8, TP_STATUS_KERNEL)
            cursor.block = (cursor.block + 1) % block_count
    return frames, statuses


def py_rx_walk_v2(
    ring: Any, block_size: int, frame_size: int, frame_count: int, cursor: RxCursor, max_n: int, out_len: int
) -> tuple[list[bytes], list[int]]:
    """The TPACKET_V2 walk: up to ``max_n`` frames from the slots handed over (``tp_status``),
    each slot given back as soon as it is read; ``cursor.block`` is the next slot.  The twin of
    ``yas_afp_rx_walk_v2`` (``native/af_packet.c``)."""
    frames: list[bytes] = []
    statuses: list[int] = []
    used = 0
    per_block = block_size // frame_size
    while len(frames) < max_n:
        slot = cursor.block
        at = slot // per_block * block_size + slot % per_block * frame_size
        status, snap, mac, tci, tpid = _FRAME2_HEAD.unpack_from(ring, at)
        if not status & TP_STATUS_USER:
            break
        if mac + snap > frame_size or snap < 12:
            cursor.bad_blocks += 1
        else:
            tagged = status & TP_STATUS_VLAN_VALID
            need = snap + (4 if tagged else 0)
            if used + need > out_len:
                break
            start = at + mac
            if tagged:
                if not (status & TP_STATUS_VLAN_TPID_VALID and tpid):
                    tpid = _VLAN_TPID
                frame = bytes(ring[start : start + 12]) + struct.pack("!HH", tpid, tci)
                frame += bytes(ring[start + 12 : start + snap])
            else:
                frame = bytes(ring[start : start + snap])
            frames.append(frame)
            statuses.append(status)
            used += need
        _FRAME2_STATUS.pack_into(ring, at, TP_STATUS_KERNEL)
        cursor.block = (slot + 1) % frame_count
    return frames, statuses


def native_rx_walk(
    ring: Any, block_size: int, block_count: int, cursor: RxCursor, max_n: int, out_len: int
) -> tuple[list[bytes], list[int]]:
    """``yas_afp_rx_walk`` with :func:`py_rx_walk`'s interface (for the differential test; the port
    calls the C directly with buffers it keeps)."""
    return _native_walk("yas_afp_rx_walk", ring, (block_size, block_count), cursor, max_n, out_len)


def native_rx_walk_v2(
    ring: Any, block_size: int, frame_size: int, frame_count: int, cursor: RxCursor, max_n: int, out_len: int
) -> tuple[list[bytes], list[int]]:
    """``yas_afp_rx_walk_v2`` with :func:`py_rx_walk_v2`'s interface (for the differential test)."""
    geometry = (block_size, frame_size, frame_count)
    return _native_walk("yas_afp_rx_walk_v2", ring, geometry, cursor, max_n, out_len)


def _native_walk(
    function: str, ring: Any, geometry: tuple[int, ...], cursor: RxCursor, max_n: int, out_len: int
) -> tuple[list[bytes], list[int]]:
    if _extension is None:
        raise RuntimeError("the AF_PACKET extension (trio_yastack.nic._af_packet_cffi) is not built")
    ffi, lib = _extension
    c_cursor = ffi.new("struct yas_afp_cursor *", cursor.as_tuple())
    out = ffi.new("char[]", max(out_len, 1))
    lens = ffi.new("uint32_t[]", max(max_n, 1))
    status = ffi.new("uint32_t[]", max(max_n, 1))
    n = getattr(lib, function)(ffi.from_buffer(ring), *geometry, c_cursor, max_n, out, out_len, lens, status)
    if n < 0:
        raise ValueError("bad ring geometry")
    cursor.block, cursor.left, cursor.offset = c_cursor.block, c_cursor.left, c_cursor.offset
    cursor.bad_blocks = c_cursor.bad_blocks
    buffer = ffi.buffer(out)
    frames: list[bytes] = []
    at = 0
    for length in ffi.unpack(lens, n):
        frames.append(buffer[at : at + length])
        at += length
    return frames, ffi.unpack(status, n)


# -- the port ------------------------------------------------------------------------------------
class _Queue:
    """One socket of the fanout group, its mapped ring and its walk's state."""

    __slots__ = ("c_cursor", "c_walk", "counters", "cursor", "dropped", "fd", "lens", "out", "out_buffer",
                 "out_view", "py_walk", "ring", "ring_ptr", "sock", "status", "tx_fd", "tx_sock")  # fmt: skip

    def __init__(self, sock: socket.socket, ring: mmap.mmap, out_len: int, options: AfPacketOptions) -> None:
        max_burst = options.max_burst
        self.sock = sock
        self.tx_sock: socket.socket | None = None
        self.tx_fd = -1
        self.fd = sock.fileno()
        self.ring = ring
        self.counters = PortCounters()
        self.dropped = 0  # PACKET_STATISTICS's drops so far (the kernel resets them when read)
        self.cursor = RxCursor()
        if _extension is not None:
            ffi = _extension[0]
            self.ring_ptr: CData | None = ffi.from_buffer(ring)
            self.c_cursor: CData | None = ffi.new("struct yas_afp_cursor *")
            self.out: CData | None = ffi.new("char[]", out_len)
            self.out_buffer: Any = ffi.buffer(self.out)
            self.out_view = memoryview(self.out_buffer)
            self.lens: CData | None = ffi.new("uint32_t[]", max_burst)
            self.status: CData | None = ffi.new("uint32_t[]", max_burst)
        else:
            self.ring_ptr = self.c_cursor = self.out = self.lens = self.status = None
        # The walk with the ring's geometry bound: rx_burst passes only the burst's arguments.
        frames = options.block_size // options.frame_size * options.blocks
        if options.version == 2:
            geometry: tuple[int, ...] = (options.block_size, options.frame_size, frames)
            self.py_walk: Callable[[RxCursor, int, int], tuple[list[bytes], list[int]]] = partial(
                py_rx_walk_v2, ring, options.block_size, options.frame_size, frames
            )
        else:
            geometry = (options.block_size, options.blocks)
            self.py_walk = partial(py_rx_walk, ring, options.block_size, options.blocks)
        self.c_walk: Any = None
        if _extension is not None:
            lib = _extension[1]
            function = lib.yas_afp_rx_walk_v2 if options.version == 2 else lib.yas_afp_rx_walk
            self.c_walk = partial(function, self.ring_ptr, *geometry, self.c_cursor)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # (outside a trio run nobody can be waiting on it)
            trio.lowlevel.notify_closing(self.fd)
        if self.ring_ptr is not None and _extension is not None:
            self.c_walk = None
            _extension[0].release(self.ring_ptr)  # the mmap's buffer export, so it can close
            self.ring_ptr = None
            self.out_view.release()
        with contextlib.suppress(BufferError):  # a caller's view still maps it: the kernel frees it at exit
            self.ring.close()
        self.sock.close()
        if self.tx_sock is not None:
            self.tx_sock.close()


def _ifreq_name(name: str) -> bytes:
    encoded = name.encode()
    if not 0 < len(encoded) < 16:
        raise ValueError(f"interface name {name!r} must be 1 to 15 bytes")
    return encoded


class AfPacketPort(Port):
    """An interface as a NIC port through AF_PACKET sockets: per queue, a receive ring (TPACKET_V3,
    or V2) on a socket of the fanout group, and a transmit socket.

    Use as a context manager or call :meth:`close`.  The port holds the interface exclusively
    among trio_yastack ports of the same network namespace (a second one is refused as busy)."""

    def __init__(self, options: AfPacketOptions | None = None, **overrides: Any) -> None:
        if options is None:
            options = AfPacketOptions(**overrides)
        elif overrides:
            raise TypeError("pass AfPacketOptions or keyword options, not both")
        self.check_options(options)
        self.options = options
        self.name = options.name
        self._queues: list[_Queue] = []
        self._closed = False
        self._lock: socket.socket | None = None
        name = _ifreq_name(options.name)
        try:
            self.ifindex = socket.if_nametoindex(options.name)
        except OSError:
            raise AfPacketError(
                errno.ENODEV, f"no interface {options.name!r} in this network namespace (see: ip link)"
            ) from None
        mac, mtu = self._inspect_interface(name)
        try:
            self._take_lock()
            self._open_queues()
        except BaseException:
            self.close()
            raise
        self._out_len = options.block_size + 4
        self._capabilities = PortCapabilities(
            mac=mac,
            mtu=mtu,
            rx_queues=options.queues,
            tx_queues=options.queues,
            max_burst=options.max_burst,
            tx_checksum_offload=options.offloads,
            tso=options.offloads,
            max_tso_size=0xFFFF if options.offloads else 0,
        )

    # -- set-up --------------------------------------------------------------------------------
    @staticmethod
    def check_options(options: AfPacketOptions) -> None:
        """Raise ``ValueError`` naming every option value the kernel would refuse."""
        page = mmap.PAGESIZE
        problems = []
        if options.queues < 1:
            problems.append("queues must be at least 1")
        if options.block_size < page or options.block_size % page:
            problems.append(f"block_size {options.block_size} must be a positive multiple of {page}")
        if options.frame_size < 128 or options.frame_size % 16 or options.frame_size > options.block_size:
            problems.append(f"frame_size {options.frame_size} must be a multiple of 16, 128..block_size")
        if options.version not in (2, 3):
            problems.append("version is 2 (TPACKET_V2) or 3 (TPACKET_V3)")
        if options.blocks < 1:
            problems.append("blocks must be at least 1")
        if not 0 < options.block_timeout < 60_000:
            problems.append("block_timeout is in milliseconds, 1..59999")
        if options.fanout is not None and not 0 <= options.fanout <= 0xFFFF:
            problems.append("fanout is a group id 0..65535")
        if not 1 <= options.max_burst <= 1024:
            problems.append("max_burst must be 1..1024")
        if problems:
            raise ValueError(f"af_packet:{options.name}: " + "; ".join(problems))

    def _inspect_interface(self, name: bytes) -> tuple[MacAddress, int]:
        """The interface's MAC and MTU; refuses one that is down or carries an IPv4 address."""
        iface = self.options.name
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            hwaddr = fcntl.ioctl(sock, SIOCGIFHWADDR, struct.pack("16s16x", name))
            mac = MacAddress(hwaddr[18:24])
            mtu = _IFREQ_INT.unpack(fcntl.ioctl(sock, SIOCGIFMTU, _IFREQ_INT.pack(name, 0)))[1]
            flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name, 0)))[1]
            try:
                current = fcntl.ioctl(sock, SIOCGIFADDR, struct.pack("16s16x", name))
            except OSError:
                address = None  # EADDRNOTAVAIL: no IPv4 address, as it should be
            else:
                address = socket.inet_ntoa(current[20:24])
        if not flags & IFF_UP:
            raise AfPacketError(errno.ENETDOWN, f"interface {iface!r} is down: ip link set {iface} up")
        if address is not None and not self.options.shared:
            raise AfPacketError(
                errno.EADDRINUSE,
                f"interface {iface!r} carries {address} on the kernel side: the kernel sees every frame "
                "an AF_PACKET port sees and would answer ARP and TCP alongside the stack; remove its "
                f"addresses (ip addr flush dev {iface}) or, if the stack uses another address, pass "
                "shared=on",
            )
        return mac, mtu

    def _take_lock(self) -> None:
        """An abstract Unix socket named after the interface: abstract names live in the network
        namespace, so this is exactly "one port per interface here"; it goes with the process."""
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            lock.bind(f"\0trio_yastack/af_packet/{self.ifindex}")
        except OSError as exc:
            lock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AfPacketError(
                    errno.EBUSY,
                    f"interface {self.options.name!r} is busy: another trio_yastack AF_PACKET port in "
                    "this network namespace holds it (one port per interface; use queues= for cores)",
                ) from None
            raise
        self._lock = lock

    def _open_queues(self) -> None:
        options = self.options
        group: int | None = options.fanout
        for _ in range(options.queues):
            try:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no frames until bound
            except PermissionError:
                raise AfPacketError(
                    errno.EPERM,
                    "opening an AF_PACKET socket needs CAP_NET_RAW: run as root or grant it "
                    "(setcap cap_net_raw+ep on the interpreter)",
                ) from None
            try:
                sock.setblocking(False)
                sock.setsockopt(
                    SOL_PACKET, PACKET_VERSION, TPACKET_V2 if options.version == 2 else TPACKET_V3
                )
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                frames = options.block_size // options.frame_size * options.blocks
                if options.version == 2:
                    request = _TPACKET_REQ.pack(
                        options.block_size, options.blocks, options.frame_size, frames
                    )
                else:
                    request = _TPACKET_REQ3.pack(options.block_size, options.blocks, options.frame_size,
                                                 frames, options.block_timeout, 0, 0)  # fmt: skip
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
                except OSError as exc:
                    raise AfPacketError(
                        exc.errno or errno.EINVAL,
                        f"the kernel refused a TPACKET_V{options.version} ring of {options.blocks} blocks of "
                        f"{options.block_size} bytes ({exc.strerror}): try smaller blocks= or block_size=",
                    ) from None
                ring = mmap.mmap(sock.fileno(), options.block_size * options.blocks,
                                 mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            except BaseException:
                sock.close()
                raise
            queue = _Queue(sock, ring, options.block_size + 4, options)
            self._queues.append(queue)
            sock.bind((options.name, ETH_P_ALL))
            self._open_tx(queue)
            if options.promisc:
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                _PACKET_MREQ.pack(self.ifindex, PACKET_MR_PROMISC, 0, b""))  # fmt: skip
            if options.queues > 1 or options.fanout is not None:
                group = self._join_fanout(sock, group)

    def _open_tx(self, queue: _Queue) -> None:
        """The queue's transmit socket: bound with protocol 0, so it receives nothing; with
        ``offloads``, every frame it sends starts with a virtio-net header (``PACKET_VNET_HDR``),
        through which the kernel (or the NIC) completes checksums and segments TSO frames."""
        options = self.options
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        queue.tx_sock, queue.tx_fd = tx, tx.fileno()
        tx.setblocking(False)
        if options.offloads:
            tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):  # room for a burst of 64 KB segments
            with contextlib.suppress(OSError):
                tx.setsockopt(socket.SOL_SOCKET, option, _TX_SNDBUF)
                break
        tx.bind((options.name, 0))
        if options.qdisc_bypass:
            tx.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)

    def _join_fanout(self, sock: socket.socket, group: int | None) -> int:
        flags = PACKET_FANOUT_FLAG_DEFRAG
        if group is None:
            flags |= PACKET_FANOUT_FLAG_UNIQUEID  # the kernel picks an id nobody uses
        try:
            value = (group or 0) | (PACKET_FANOUT_HASH | flags) << 16
            sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", value))  # above INT_MAX: as bytes
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EALREADY, errno.EBUSY):
                raise AfPacketError(
                    errno.EBUSY,
                    f"fanout group {group} on {self.options.name!r} is busy: another socket holds it "
                    "with other settings (pick another fanout= id, or leave it out for a unique one)",
                ) from None
            raise
        return int(sock.getsockopt(SOL_PACKET, PACKET_FANOUT)) & 0xFFFF

    # -- the port ------------------------------------------------------------------------------
    @property
    def capabilities(self) -> PortCapabilities:
        return self._capabilities

    def fileno(self, queue: int = 0) -> int:
        return self._queues[queue].fd

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        q = self._queues[queue]
        if max_n > self.options.max_burst:
            max_n = self.options.max_burst
        if q.c_walk is None:
            if self._closed:
                return []
            frames, statuses = q.py_walk(q.cursor, max_n, self._out_len)
            nbytes = 0
            for i, status in enumerate(statuses):
                nbytes += len(frames[i])
                if status & _CSUM_VOUCHED:
                    frames[i] = ChecksumVerified(frames[i])
        else:
            ffi = _extension[0]  # type: ignore[index]  # c_walk is set only when the extension loaded
            n = q.c_walk(max_n, q.out, self._out_len, q.lens, q.status)
            if n <= 0:
                return []
            frames = []
            append = frames.append
            buffer, view = q.out_buffer, q.out_view
            at = 0
            for length, status in zip(ffi.unpack(q.lens, n), ffi.unpack(q.status, n), strict=True):
                end = at + length
                append(ChecksumVerified(view[at:end]) if status & _CSUM_VOUCHED else buffer[at:end])
                at = end
            nbytes = at
        if frames:
            counters = q.counters
            counters.ipackets += len(frames)
            counters.ibytes += nbytes
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        q = self._queues[queue]
        if self.options.offloads:
            # Each frame behind its virtio-net header: partial checksums and TSO frames are the
            # kernel's (or the NIC's) to complete and cut.
            plain = _PLAIN_VNET_HDR
            wire = [
                (_offload_header(frame) or plain) + frame
                if frame.__class__ is OffloadPacket  # type: ignore[comparison-overlap]  # a bytearray in a bytes burst
                else plain + frame
                for frame in frames
            ]
            return self._tx(q, wire, VNET_HDR_LEN)
        for frame in frames:
            # An OffloadPacket is a bytearray: Port.tx_burst says bytes (see the poll loop's note).
            if frame.__class__ is OffloadPacket:  # type: ignore[comparison-overlap]  # a bytearray in a bytes burst
                wire, ends = _complete_offloads(frames)
                return bisect_right(ends, self._tx(q, wire))  # the frames whose every piece left
        return self._tx(q, frames)

    def _tx(self, q: _Queue, wire: Sequence[bytes], header: int = 0) -> int:
        """Send ``wire`` in as few sendmmsg calls as it takes; a frame the kernel refuses is dropped
        and counted in ``oerrors`` (it counts as accepted), a full queue stops the burst.
        ``header``: the bytes of virtio-net header in front of each frame (not counted in obytes)."""
        counters = q.counters
        done = 0
        total = len(wire)
        while done < total:
            rest = wire[done:] if done else wire
            if _extension is not None and not self._closed:
                ffi, lib = _extension
                lens = array("I", map(len, rest))
                data = b"".join(rest)
                n = lib.yas_afp_tx_burst(q.tx_fd, data, ffi.from_buffer("uint32_t[]", lens), len(rest))
                error = -n if n < 0 else 0
                n = max(n, 0)
            else:
                n, error = 0, 0
                for frame in rest:
                    try:
                        os.write(q.tx_fd, frame)
                    except OSError as exc:
                        error = exc.errno or errno.EIO
                        break
                    n += 1
            if n:
                counters.opackets += n
                counters.obytes += sum(map(len, rest[:n])) - header * n
                done += n
            if not error:
                if n == 0:
                    break
                continue
            if error in _TX_STOP:
                break
            counters.oerrors += 1  # EMSGSIZE and the like: this frame is dropped, the rest go on
            done += 1
        return done

    async def wait_rx(self, queue: int) -> None:
        await trio.lowlevel.wait_readable(self._queues[queue].fd)

    def statistics(self, queue: int | None = None) -> PortStatistics:
        """The port's counters (one queue's, or all queues' summed); ``imissed`` is what the
        kernel dropped because the ring was full (``PACKET_STATISTICS``)."""
        chosen = self._queues if queue is None else [self._queues[queue]]
        total = PortCounters()
        for q in chosen:
            if q.fd >= 0 and not self._closed:
                with contextlib.suppress(OSError):
                    raw = q.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS_V3.size)
                    q.dropped += struct.unpack_from("=I", raw, 4)[0]  # tp_drops; reading resets the kernel's
            q.counters.imissed = q.dropped
            for field in PortCounters.__slots__:
                setattr(total, field, getattr(total, field) + getattr(q.counters, field))
        return total.snapshot()

    def keep_only_queue(self, queue: int) -> None:
        """Close every queue but ``queue`` (a worker process keeps its own after the fork)."""
        for index, q in enumerate(self._queues):
            if index != queue and q.fd >= 0:
                q.close()
                q.fd = -1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for q in self._queues:
            if q.fd >= 0:
                q.close()
                q.fd = -1
        if self._lock is not None:
            self._lock.close()


def _complete_offloads(frames: Sequence[bytes | bytearray]) -> tuple[list[bytes], list[int]]:
    """The burst as it goes on the wire, with no offload to ask for: each
    :class:`~trio_yastack.stack.OffloadPacket` completed (its checksum) or cut (a TSO segment,
    as the kernel's software GSO would), and after each frame how many wire frames it ends at."""
    wire: list[bytes] = []
    ends: list[int] = []
    for frame in frames:
        if isinstance(frame, OffloadPacket):
            if frame.gso_size:
                wire.extend(tcp4_segment(frame, frame.gso_size))
            else:
                wire.append(complete_checksum(frame))
        else:
            wire.append(bytes(frame))
        ends.append(len(wire))
    return wire, ends


def open_af_packet_port(spec: str, *, queues: int | None = None) -> AfPacketPort:
    """``open_port``'s opener for ``af_packet:IFACE[,key=value...]``.  With ``queues`` (several
    cores) the port gets that many fanout sockets, unless the spec says ``queues=`` itself."""
    options = parse_af_packet_spec(spec)
    if queues is not None and ",queues=" not in spec:
        options = replace(options, queues=queues)
    return AfPacketPort(options)
