"""The AF_XDP poll-mode driver: ``af_xdp:IFACE[,queue=Q,...]``, XDP sockets on a NIC's queues.

An XDP program on the interface redirects every frame that arrives on the chosen queues into an
XDP socket (XSK), before the kernel's network stack sees it; frames we send go straight to the
driver.  Each queue has its own socket and UMEM (the frames, shared with the kernel) and four
rings: fill (free frames we give the kernel to receive into), rx (received frames), tx (frames to
send) and completion (sent frames that are ours again).  The rings are driven from C
(``native/af_xdp.c``, through libxdp's static inline helpers, built by cffi in API mode against
``pkg-config libxdp libbpf``), one crossing per burst:

- ``rx_burst``: one C call takes up to ``max_n`` descriptors off the rx ring, copies the frames
  into a buffer this object owns, gives their UMEM frames back to the fill ring and releases the
  descriptors; Python then cuts the buffer into ``bytes``.  No system call, unless the fill ring
  says the kernel needs a wake-up (``XDP_USE_NEED_WAKEUP``).
- ``tx_burst``: one C call reaps the completion ring, copies the frames into free UMEM frames,
  submits them, and calls ``sendto`` only if the tx ring asks for it (in copy mode it always
  does: the kernel transmits from the ``sendto``, at most 32 frames per call, so the C repeats
  it, bounded, until the ring is taken).
- ``wait_rx``: the socket's readiness through trio (``poll`` says readable when the rx ring has
  descriptors), or a checkpoint with ``busy_poll``.

The XDP program is libxdp's default (``xsk_def_xdp_prog.o`` from Debian's ``libxdp1``): it
redirects a queue's frames to the socket in its ``xsks_map`` and passes the other queues' frames
to the kernel.  Without a BPF filesystem (``/sys/fs/bpf``) libxdp cannot use its dispatcher and
loads the program alone, which is enough here.  Modes (``mode=``): ``zerocopy`` (driver XDP,
``XDP_ZEROCOPY``: the NIC DMAs into the UMEM; only drivers that implement it), ``copy`` (generic
XDP, ``XDP_FLAGS_SKB_MODE`` and ``XDP_COPY``: works on every interface, veth included), ``auto``
(zero-copy, else driver XDP in copy mode, else generic XDP).  On veth, ``auto`` ends up in driver
XDP with copy (veth has native XDP but no zero-copy); the kernel at the other end of the veth
needs no XDP program of its own for this (checked on Linux 6.18: both ``copy`` and ``auto``
receive and send with no program on the peer).

Requirements and limits:

- Root, or CAP_NET_RAW (the socket), CAP_NET_ADMIN and CAP_BPF (the XDP program; CAP_SYS_ADMIN
  before Linux 5.8); libxdp and libbpf (Debian: ``libxdp-dev libbpf-dev`` to build the shim,
  ``libxdp1`` at run time, which ships the default program).
- On a veth, the kernel's end must have transmit checksum offload off (``ethtool -K PEER tx
  off``): with it, the kernel leaves its TCP checksums partial (a veth peer would never check
  them) and XDP hands the frames over as they are, so the stack drops them as bad.  Across a real
  wire checksums are complete.
- The interface must not carry an IPv4 address on the kernel side: the stack owns its address,
  and the kernel still sees every frame of the queues that are not redirected (and ARP from its
  own side), so a kernel address there answers for, or conflicts with, the stack.  The port
  refuses an interface with an address unless ``allow_kernel_address=yes``.
- Only the chosen queues bypass the kernel: a NIC spreads flows over all its queues with RSS, so
  the port refuses to take fewer queues than the interface has: run a core per queue, give the
  interface fewer queues (``ethtool -L``), or pass ``partial=yes`` and steer the flows to the
  port's queues yourself (``ethtool -N``).
- No offloads: the stack computes checksums itself (in C) and segments to the MTU.
- Several cores: the parent opens one socket per queue and forks; the sockets, their rings and
  the UMEM (``MAP_SHARED``) survive the fork, and each worker keeps its own queue
  (:meth:`AfXdpPort.keep_only_queue`).  Closing the port in a process that forked since (the
  launcher's parent) only drops that process's hold on the sockets (``yas_xsk_forget``), so the
  workers keep receiving.  Workers exit without libxdp's teardown, so after a multi-core run the
  default program stays attached to the interface (``ip link`` shows ``xdp``); the next port
  finds it and uses it (checked), and ``ip link set IFACE xdp off`` (``xdpgeneric off`` after
  ``mode=copy``) removes it.  libxdp's teardown speaks netlink by ifindex, so it runs in the
  network namespace the socket was opened in, whichever the closing thread is in.

The Python twin of the ring arithmetic and of the three burst functions is
:mod:`trio_yastack.nic._af_xdp_ring`; opening the socket has no twin (system calls only).
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import socket
import struct
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import trio

from trio_yastack.stack._native import tcp4_segment
from trio_yastack.stack._offload import OffloadPacket
from trio_yastack.stack.wire import MacAddress

from ._port import Port, PortCapabilities, PortCounters, PortStatistics
from ._spec import parse_port_spec
from .tap import complete_checksum

__all__ = ["AfXdpError", "AfXdpOptions", "AfXdpPort", "open_af_xdp_port", "parse_af_xdp_spec"]

_MODES = {"auto": 0, "copy": 1, "zerocopy": 2}
_SIOCGIFADDR = 0x8915
_SIOCGIFMTU = 0x8921
_SIOCGIFHWADDR = 0x8927
_SIOCETHTOOL = 0x8946
_ETHTOOL_GCHANNELS = 0x3C
_ETHER_LEN = 14
#: the kernel keeps XDP_PACKET_HEADROOM (256 bytes) in front of a received frame in its UMEM frame
_XDP_HEADROOM = 256
_INSTALL = "apt-get install libxdp-dev libbpf-dev pkg-config, then reinstall trio_yastack (scripts/setup.sh)"


def _load_extension() -> tuple[Any, Any] | None:
    """The shim's ``(ffi, lib)``, or None when it was not built (no libxdp at install time)."""
    try:
        from ._af_xdp_cffi import ffi, lib  # type: ignore[import-not-found]  # optional, built by cffi
    except ImportError:
        return None
    return ffi, lib


_extension = _load_extension()
#: whether the AF_XDP shim was built (it needs libxdp and libbpf when installing)
NATIVE = _extension is not None


class AfXdpError(OSError):
    """The XDP socket could not be opened; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class AfXdpOptions:
    """How to open an AF_XDP port; every field but ``iface`` is an ``af_xdp:IFACE,key=value`` option.

    ``queue``: the interface's first queue used (port queue ``i`` is device queue ``queue + i``).
    ``queues``: how many.  ``frames``: UMEM frames per queue (a power of two; half receive, half
    transmit, and each ring holds half).  ``frame_size``: 2048 or 4096 bytes.  ``mode``: ``auto``,
    ``copy`` or ``zerocopy``.  ``mac``: the stack's MAC (default: the interface's).
    ``allow_kernel_address``: accept an interface that carries a kernel-side IPv4 address.
    ``partial``: accept taking fewer queues than the interface has (the rest goes to the kernel).
    """

    iface: str
    queue: int = 0
    queues: int = 1
    frames: int = 4096
    frame_size: int = 4096
    mode: str = "auto"
    max_burst: int = 64
    busy_poll: bool = False
    mac: str | None = None
    allow_kernel_address: bool = False
    partial: bool = False


def parse_af_xdp_spec(spec: str) -> AfXdpOptions:
    """``af_xdp:IFACE[,key=value...]`` as :class:`AfXdpOptions`, e.g.
    ``af_xdp:eth1,queue=2,frames=8192,mode=copy``."""
    options = parse_port_spec(
        spec,
        "af_xdp",
        AfXdpOptions,
        head="iface",
        missing="an AF_XDP spec needs an interface, as in af_xdp:eth1",
    )
    if options.mode not in _MODES:
        raise ValueError(f"nic {spec!r}: mode must be auto, copy or zerocopy, not {options.mode!r}")
    return options


#: every open port in this process, so that a fork marks them (see ``AfXdpPort.close``)
_OPEN_PORTS: weakref.WeakSet[AfXdpPort] = weakref.WeakSet()


def _after_fork_in_parent() -> None:
    for port in list(_OPEN_PORTS):
        port._forked = True


os.register_at_fork(after_in_parent=_after_fork_in_parent)


class _Queue:
    """One queue's socket (``struct yas_xsk *``) and the buffers of its bursts."""

    __slots__ = ("counters", "fd", "out", "out_c", "out_len", "room", "rx_lens", "tx_lens", "view", "x")

    def __init__(self, ffi: Any, x: Any, frame_size: int, room: int) -> None:
        self.x = x
        self.fd: int = x.fd
        self.counters = PortCounters()
        self.room = 0
        self.out = bytearray()
        self.view = memoryview(self.out)
        self.out_c: Any = None
        self.out_len = 0
        self.rx_lens: Any = None
        self.tx_lens: Any = None
        self.grow(ffi, room, frame_size)

    def grow(self, ffi: Any, room: int, frame_size: int) -> None:
        """Buffers for bursts of ``room`` frames: every frame fits a UMEM frame, so a burst fits."""
        self.view.release()
        self.out = bytearray(room * frame_size)
        self.view = memoryview(self.out)
        self.out_c = ffi.from_buffer(self.out)
        self.out_len = len(self.out)
        self.rx_lens = ffi.new("uint32_t[]", room)
        self.tx_lens = ffi.new("uint32_t[]", room)
        self.room = room


class AfXdpPort(Port):
    """XDP sockets on ``options.queues`` queues of an interface, one per port queue.

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, options: AfXdpOptions) -> None:
        if _extension is None:
            raise AfXdpError(errno.ENOSYS, f"the AF_XDP shim was not built (libxdp missing): {_INSTALL}")
        self._ffi, self._lib = _extension
        if options.mode not in _MODES:
            raise ValueError(f"mode must be auto, copy or zerocopy, not {options.mode!r}")
        if options.queues < 1 or options.queue < 0:
            raise ValueError("an AF_XDP port needs queue >= 0 and queues >= 1")
        self.options = options
        self.name = options.iface
        self._queues: list[_Queue | None] = []
        self._owner = os.getpid()
        self._forked = False
        self._closed = False
        mtu = self._check_interface(options)
        self.zerocopy = False
        self.attach = ""
        try:
            for index in range(options.queues):
                self._queues.append(self._open_queue(options.queue + index))
        except BaseException:
            self.close()
            raise
        _OPEN_PORTS.add(self)
        first = self._queues[0]
        if first is not None:
            self.zerocopy = bool(first.x.zerocopy)
            self.attach = "driver" if first.x.attach == self._lib.YAS_XSK_ATTACH_DRV else "generic"
        mac = MacAddress(options.mac) if options.mac else _interface_mac(options.iface)
        self._capabilities = PortCapabilities(
            mac=mac, mtu=mtu, rx_queues=options.queues, tx_queues=options.queues, max_burst=options.max_burst
        )
        self._max_len = self._capabilities.max_frame_len

    # -- set-up --------------------------------------------------------------------------------
    @staticmethod
    def _check_interface(options: AfXdpOptions) -> int:
        """The interface's MTU, after checking what can be checked before binding: it exists, has
        the queues, carries no kernel address, and its frames fit a UMEM frame."""
        iface = options.iface
        try:
            socket.if_nametoindex(iface)
        except OSError:
            raise AfXdpError(
                errno.ENODEV, f"no interface {iface!r} in this network namespace (ip link show)"
            ) from None
        name = iface.encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            rx_queues = _rx_queue_count(sock, name)
            last = options.queue + options.queues - 1
            if rx_queues and last >= rx_queues:
                raise AfXdpError(
                    errno.EINVAL,
                    f"{iface} has {rx_queues} receive queue(s) (0..{rx_queues - 1}): queue {last} asked "
                    "for (ethtool -L adds channels; a veth gets them at creation: numrxqueues/numtxqueues)",
                )
            if rx_queues > options.queues and not options.partial:
                raise AfXdpError(
                    errno.EINVAL,
                    f"{iface} has {rx_queues} receive queues and the port takes {options.queues} "
                    f"(from {options.queue}): the flows the NIC hashes to the others would reach the "
                    f"kernel, not the stack; run one core per queue (--cores {rx_queues}), or give the "
                    f"interface fewer queues (ethtool -L {iface} combined {options.queues}, or rx/tx "
                    f"{options.queues} on a veth), or pass partial=yes when you steer the flows yourself "
                    "(ethtool -N)",
                )
            mtu: int = struct.unpack_from(
                "i", fcntl.ioctl(sock, _SIOCGIFMTU, struct.pack("16s16x", name)), 16
            )[0]
            try:
                current = fcntl.ioctl(sock, _SIOCGIFADDR, struct.pack("16s16x", name))
            except OSError:
                current = None  # EADDRNOTAVAIL: no IPv4 address, as it should be
        if current is not None and not options.allow_kernel_address:
            address = socket.inet_ntoa(current[20:24])
            raise AfXdpError(
                errno.EADDRINUSE,
                f"{iface} carries {address} on the kernel side: an AF_XDP port's interface must not carry "
                "the stack's address (the kernel still answers ARP and gets the frames of the other "
                f"queues); remove it (ip addr flush dev {iface}) or pass allow_kernel_address=yes if the "
                "stack uses another address",
            )
        if mtu + _ETHER_LEN + 4 > options.frame_size - _XDP_HEADROOM:
            raise AfXdpError(
                errno.EMSGSIZE,
                f"{iface}'s MTU {mtu} does not fit a {options.frame_size}-byte UMEM frame (less "
                f"{_XDP_HEADROOM} bytes of XDP headroom): lower the MTU or use frame_size=4096",
            )
        return mtu

    def _open_queue(self, device_queue: int, busy_for: float = 2.0) -> _Queue:
        """The XDP socket of one device queue.  EBUSY is retried for ``busy_for`` seconds
        (bounded): a queue's previous socket releases its UMEM in deferred kernel work after its
        close (and RCU), so a port reopened at once finds the queue busy for a moment (0.2 s measured
        on an idle machine here; longer under load).  A truly busy queue costs that wait."""
        ffi, lib = self._ffi, self._lib
        options = self.options
        out = ffi.new("struct yas_xsk **")
        why = ffi.new("char[]", 256)
        deadline = time.monotonic() + busy_for
        while True:
            code = lib.yas_xsk_open(
                options.iface.encode(), device_queue, options.frames, options.frame_size,
                _MODES[options.mode], out, why, 256,
            )  # fmt: skip
            if code != -errno.EBUSY or time.monotonic() >= deadline:
                break
            time.sleep(0.01)  # a kernel release we cannot wait on otherwise, bounded by busy_for
        if code < 0:
            raise _open_error(-code, ffi.string(why).decode(errors="replace"), options, device_queue)
        return _Queue(ffi, out[0], options.frame_size, max(options.max_burst, 64))

    # -- the port ------------------------------------------------------------------------------
    @property
    def capabilities(self) -> PortCapabilities:
        return self._capabilities

    def fileno(self, queue: int = 0) -> int:
        q = self._queues[queue]
        return -1 if q is None else q.fd

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        q = self._queues[queue]
        if q is None:
            return []  # another process's queue (or a closed port)
        if max_n > q.room:
            q.grow(self._ffi, max_n, self.options.frame_size)
        n = self._lib.yas_xsk_rx_burst(q.x, q.out_c, q.out_len, q.rx_lens, max_n)
        if n <= 0:
            if n < 0:
                raise AfXdpError(errno.EIO, f"{self.name} queue {queue}: the rx or fill ring is corrupt")
            return []
        view = q.view
        frames: list[bytes] = []
        append = frames.append
        off = 0
        for length in self._ffi.unpack(q.rx_lens, n):
            end = off + length
            append(view[off:end].tobytes())
            off = end
        counters = q.counters
        counters.ipackets += n
        counters.ibytes += off
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        q = self._queues[queue]
        n = len(frames)
        if q is None or n == 0:
            return 0
        if OffloadPacket in map(type, frames):  # (never from a stack: the port offers no offloads)
            return self._tx_offloaded(queue, frames)
        if n > q.room:
            q.grow(self._ffi, n, self.options.frame_size)
        lens = [len(frame) for frame in frames]
        q.tx_lens[0:n] = lens
        blob = b"".join(frames)
        x = q.x
        too_long = x.tx_too_long
        taken = self._lib.yas_xsk_tx_burst(x, blob, len(blob), q.tx_lens, n, self._max_len)
        if taken < 0:
            raise AfXdpError(errno.EIO, f"{self.name} queue {queue}: the tx or completion ring is corrupt")
        counters = q.counters
        bad = x.tx_too_long - too_long
        if bad:
            limit = min(self._max_len, self.options.frame_size)
            counters.oerrors += bad
            counters.obytes += sum(length for length in lens[:taken] if length <= limit)
        else:
            counters.obytes += sum(lens[:taken]) if taken < n else len(blob)
        counters.opackets += taken - bad
        return int(taken)

    def _tx_offloaded(self, queue: int, frames: Sequence[bytes]) -> int:
        """``tx_burst`` of frames among which some are :class:`OffloadPacket`, one at a time (a
        rare path: the port offers no offloads, so a stack never makes them).  A TCP/IPv4 one is
        finished here as the kernel would: checksum completed, or cut into ``gso_size`` segments
        with theirs (``tcp4_segment``); any other is counted in ``oerrors`` and accepted."""
        counters = self._queues_counters(queue)
        taken = 0
        for frame in frames:
            ready: list[bytes] = [frame]
            gso_size: int | None = getattr(frame, "gso_size", None)  # an OffloadPacket's alone
            if gso_size is not None:
                try:
                    if gso_size:
                        ready = tcp4_segment(frame, gso_size)
                    elif _is_tcp4(frame):
                        ready = [complete_checksum(frame)]
                    else:
                        raise ValueError("not a TCP/IPv4 frame")
                except ValueError:
                    counters.oerrors += 1
                    taken += 1
                    continue
            if self.tx_burst(queue, ready) < len(ready):
                break  # no room (a partly sent GSO segment is retransmitted by TCP anyway)
            taken += 1
        return taken

    def _queues_counters(self, queue: int) -> PortCounters:
        q = self._queues[queue]
        return q.counters if q is not None else PortCounters()

    async def wait_rx(self, queue: int) -> None:
        q = self._queues[queue]
        if self.options.busy_poll or q is None:
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.wait_readable(q.fd)

    def statistics(self, queue: int | None = None) -> PortStatistics:
        """The port's counters (one queue's, or those of every queue this process holds), with
        the kernel's XDP_STATISTICS: frames it dropped for want of room in the rx ring or of
        frames in the fill ring count as ``imissed``, invalid descriptors as ``ierrors`` and
        ``oerrors``."""
        chosen = self._queues if queue is None else [self._queues[queue]]
        total = PortCounters()
        kernel = self._ffi.new("uint64_t[6]")
        for q in chosen:
            if q is None:
                continue
            for name in PortCounters.__slots__:
                setattr(total, name, getattr(total, name) + getattr(q.counters, name))
            if self._lib.yas_xsk_kernel_stats(q.x, kernel) == 0:
                rx_dropped, rx_invalid, tx_invalid, rx_ring_full, fill_empty, _ = kernel
                total.imissed += rx_dropped + rx_ring_full + fill_empty
                total.ierrors += rx_invalid
                total.oerrors += tx_invalid
        return total.snapshot()

    def keep_only_queue(self, queue: int) -> None:
        """In a forked worker: let go of every queue's socket but ``queue``'s, without tearing
        them down (their own workers use them), and own ``queue``'s from now on."""
        for index, q in enumerate(self._queues):
            if index != queue and q is not None:
                self._lib.yas_xsk_forget(q.x)
                self._queues[index] = None
        self._owner = os.getpid()
        self._forked = False

    def close(self) -> None:
        """Close the sockets.  In the process that opened them (and has not forked since) this
        removes them from the XSK map and lets libxdp detach its program; anywhere else it only
        drops this process's hold (``yas_xsk_forget``), so forked workers go on."""
        if self._closed:
            return
        self._closed = True
        _OPEN_PORTS.discard(self)
        teardown = os.getpid() == self._owner and not self._forked
        for index, q in enumerate(self._queues):
            if q is None:
                continue
            self._queues[index] = None
            with contextlib.suppress(RuntimeError):  # outside a trio run nobody can be waiting
                trio.lowlevel.notify_closing(q.fd)
            q.view.release()
            if teardown:
                self._lib.yas_xsk_close(q.x)
            else:
                self._lib.yas_xsk_forget(q.x)


def _is_tcp4(frame: bytes | bytearray) -> bool:
    return len(frame) >= _ETHER_LEN + 40 and frame[12:14] == b"\x08\x00" and frame[_ETHER_LEN + 9] == 6


def _interface_mac(iface: str) -> MacAddress:
    """The interface's hardware address (by ioctl: /sys shows the namespace it was mounted in)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock, _SIOCGIFHWADDR, struct.pack("16s16x", iface.encode()))
    return MacAddress(answer[18:24])


def _rx_queue_count(sock: socket.socket, name: bytes) -> int:
    """The interface's receive queues (``ETHTOOL_GCHANNELS``: rx plus combined channels), 0 when
    the driver does not say (the bind then reports a queue out of range)."""
    channels = array.array("I", [_ETHTOOL_GCHANNELS] + [0] * 8)
    address, _ = channels.buffer_info()
    try:
        fcntl.ioctl(sock, _SIOCETHTOOL, struct.pack("16sP8x", name, address))
    except OSError:
        return 0
    _, _, _, _, _, rx_count, _, _, combined = channels
    return rx_count + combined


def _open_error(code: int, why: str, options: AfXdpOptions, queue: int) -> AfXdpError:
    """The error for a failed ``yas_xsk_open``, saying what to do."""
    iface = options.iface
    if code in (errno.EPERM, errno.EACCES):
        hint = (
            "an XDP socket needs CAP_NET_RAW, its XDP program CAP_NET_ADMIN and CAP_BPF "
            "(CAP_SYS_ADMIN before Linux 5.8): run as root or grant them (setcap "
            "cap_net_raw,cap_net_admin,cap_bpf+ep on the interpreter)"
        )
    elif code == errno.EBUSY:
        hint = (
            f"queue {queue} of {iface} is busy: another XDP socket is bound to it, or another XDP "
            f"program is attached to {iface} (xdp-loader status {iface}; ip link set {iface} xdp off)"
        )
    elif code in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT) and options.mode == "zerocopy":
        hint = f"the driver of {iface} offers no zero-copy AF_XDP: use mode=auto or mode=copy"
    elif code == errno.ENODEV:
        hint = f"no interface {iface!r} (or it went away)"
    elif code == errno.EINVAL:
        hint = f"bad frames={options.frames} or frame_size={options.frame_size}, or queue {queue}"
    elif code == errno.ENOMEM or code == errno.ENOBUFS:
        hint = "not enough locked memory for the UMEM: lower frames= or raise RLIMIT_MEMLOCK (ulimit -l)"
    else:
        hint = os.strerror(code)
    return AfXdpError(code, f"af_xdp:{iface} queue {queue}: {why}: {hint}")


def open_af_xdp_port(spec: str, *, queues: int | None = None) -> AfXdpPort:
    """``open_port``'s opener for ``af_xdp:IFACE[,key=value...]``: with ``queues`` (several
    cores) one queue per core from ``queue=`` on, unless the spec says ``queues=`` itself."""
    options = parse_af_xdp_spec(spec)
    if queues is not None and ",queues=" not in spec:
        options = replace(options, queues=queues)
    return AfXdpPort(options)
