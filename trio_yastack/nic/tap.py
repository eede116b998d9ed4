"""The TAP poll-mode driver: the Linux kernel as the peer on the other end of the wire.

A TAP device is a virtual Ethernet NIC whose wire is a file descriptor: what the kernel
transmits on it we read, what we write the kernel receives.  gVisor, passt and smoltcp meet the
kernel this way, and so does ``nic="tap:NAME"`` here.

- Burst I/O on non-blocking descriptors: ``rx_burst`` reads until the burst is full or the
  queue is empty, ``tx_burst`` writes a burst, each in one crossing into C (``_tap_io``: a TAP
  takes one frame per system call, so C loops over them; the Python loops here are its twin,
  and the path without the extension or with ``TRIO_YASTACK_TAP_IO=python``); an idle runtime
  sleeps in :meth:`TapPort.wait_rx` on the descriptor's readiness through trio, or spins when
  ``busy_poll`` is on.
- Offloads through the virtio-net header (``IFF_VNET_HDR``, ``TUNSETOFFLOAD``): the kernel hands
  us TCP super-frames of up to 64 KB (GSO) whose checksums it vouches for, and takes TCP segments
  of up to 64 KB with a partial checksum, which it segments itself (TSO).  This is how a Python
  stack moves gigabits: one Python pass per 64 KB instead of per 1.5 KB.
- One descriptor per queue with ``IFF_MULTI_QUEUE``: the kernel spreads flows over the queues,
  one per core.
- A persistent TAP that an administrator made for a user (``ip tuntap add dev NAME mode tap
  user NAME``) is attached to without CAP_NET_ADMIN, as long as nothing about the device needs
  changing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import trio

from trio_yastack.stack._offload import ChecksumVerified, OffloadPacket
from trio_yastack.stack.wire import MacAddress
from trio_yastack.stack.wire._checksum import sum16

from ._port import Port, PortCapabilities, PortCounters, PortStatistics
from ._spec import parse_port_spec
from ._tap_io import TapBurstIO, TapIoMode, chosen_io_mode

__all__ = ["TapError", "TapOptions", "TapPort", "open_tap_port", "parse_tap_spec"]

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
# <linux/sockios.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFADDR = 0x8915
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFTXQLEN = 0x8942
SIOCSIFTXQLEN = 0x8943
IFF_UP = 0x1
IFF_RUNNING = 0x40
# <linux/virtio_net.h>
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
#: struct virtio_net_hdr (legacy, native byte order): flags, gso_type, hdr_len, gso_size,
#: csum_start, csum_offset
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
_PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)  # no offload asked for this frame
_IFREQ_FLAGS = struct.Struct("16sH22x")
_IFREQ_INT = struct.Struct("16si20x")
_ETHER_LEN = 14
_MAX_GSO_FRAME = 65535 + _ETHER_LEN + 4  # an IPv4 datagram of the largest size, plus a VLAN tag
#: bursts shorter than this are written by the Python loop: the crossing into C costs about as much
#: as the Python loop's per-frame work on one or two frames (measured: benchmarks/RESULTS.md)
_NATIVE_TX_MIN = 3


class TapError(OSError):
    """The TAP device could not be opened or set up; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class TapOptions:
    """How to open a TAP port; every field is also a ``tap:NAME,key=value`` spec option.

    ``offloads``: the virtio-net header with checksum offload and TSO both ways.
    ``kernel_address``: the address the kernel side gets (``None``: leave the device's addresses
    alone).  ``txqueuelen``: the kernel's queue towards us, our receive ring (the default 1000
    drops under bursts; raised only when lower).  ``busy_poll``: spin on ``rx_burst`` instead of
    sleeping on readiness.  ``persist``: keep the device when the port closes.
    ``disable_ipv6``: turn the kernel side's IPv6 off (its router solicitations and neighbour
    discovery are noise to an IPv4-only stack); ``open_stack`` and ``yastack serve`` open a
    ``tap:`` spec with it off when the stack has an IPv6 address, unless the spec names it.
    """

    name: str = "yas0"
    queues: int = 1
    multi_queue: bool = False  # IFF_MULTI_QUEUE even with one queue here (implied by queues > 1)
    offloads: bool = True
    mtu: int = 1500
    mac: str | None = None
    kernel_address: str | None = "198.18.0.1/24"
    txqueuelen: int = 10000
    busy_poll: bool = False
    persist: bool = False
    max_burst: int = 64
    disable_ipv6: bool = True


def parse_tap_spec(spec: str) -> TapOptions:
    """``tap:NAME[,key=value...]`` (or without ``tap:``) as :class:`TapOptions`.

    For example ``tap:yas0,offloads=off,mtu=9000,queues=2,kernel_address=none``.
    """
    return parse_port_spec(
        spec, "tap", TapOptions, head="name", missing="a TAP spec needs a device name, as in tap:yas0"
    )


def _default_mac(name: str) -> MacAddress:
    """A locally administered unicast MAC derived from the device name, so captures and ARP
    caches stay the same from run to run."""
    digest = hashlib.sha256(b"trio_yastack tap " + name.encode()).digest()
    return MacAddress(bytes((0x02, 0x79, 0x61)) + digest[:3])


def _ifreq_name(name: str) -> bytes:
    encoded = name.encode()
    if not 0 < len(encoded) < 16:
        raise ValueError(f"interface name {name!r} must be 1 to 15 bytes")
    return encoded


class TapPort(Port):
    """A TAP device as a NIC port: one non-blocking descriptor per queue.

    Use as a context manager or call :meth:`close`; a device this port created goes away with
    it unless ``persist`` is set.
    """

    def __init__(self, options: TapOptions | None = None, **overrides: object) -> None:
        if options is None:
            options = TapOptions(**overrides)  # type: ignore[arg-type]  # the dataclass checks the names
        elif overrides:
            raise TypeError("pass TapOptions or keyword options, not both")
        if options.queues < 1:
            raise ValueError("a TAP port needs at least one queue")
        if not 68 <= options.mtu <= 65521:
            raise ValueError(f"MTU {options.mtu} outside 68..65521")
        self.options = options
        self.name = options.name
        self._fds: list[int] = []
        self._closed = False
        self.vnet = options.offloads
        self._counters = [PortCounters() for _ in range(options.queues)]
        self._rx_size = (_MAX_GSO_FRAME + VNET_HDR_LEN) if self.vnet else options.mtu + _ETHER_LEN + 4
        #: per queue, the burst I/O in C (``_tap_io``), or None: the Python loops below (the twin)
        self._burst_io: list[TapBurstIO | None] = []
        name = _ifreq_name(options.name)
        try:
            self._open_queues(name)
            self._configure_device(name)
        except BaseException:
            self.close()
            raise
        mac = MacAddress(options.mac) if options.mac else _default_mac(options.name)
        self._capabilities = PortCapabilities(
            mac=mac,
            mtu=options.mtu,
            rx_queues=options.queues,
            tx_queues=options.queues,
            max_burst=options.max_burst,
            rx_checksum_offload=self.vnet,
            tx_checksum_offload=self.vnet,
            tso=self.vnet,
            tso6=self.vnet,
            max_tso_size=0xFFFF if self.vnet else 0,
        )
        mode = chosen_io_mode()
        if mode is not TapIoMode.PYTHON:
            self._burst_io = [
                TapBurstIO(fd, vnet=self.vnet, max_frame_len=self._capabilities.max_frame_len,
                           frame_size=self._rx_size, max_burst=options.max_burst, mode=mode)
                for fd in self._fds
            ]  # fmt: skip
        else:
            self._burst_io = [None] * options.queues

    @property
    def io_mode(self) -> TapIoMode:
        """How bursts cross into the kernel (``TRIO_YASTACK_TAP_IO``; see ``nic/_tap_io.py``)."""
        io = self._burst_io[0] if self._burst_io else None
        return TapIoMode.PYTHON if io is None else io.mode

    # -- set-up --------------------------------------------------------------------------------
    def _open_queues(self, name: bytes) -> None:
        options = self.options
        flags = IFF_TAP | IFF_NO_PI
        if self.vnet:
            flags |= IFF_VNET_HDR
        if options.queues > 1 or options.multi_queue:
            flags |= IFF_MULTI_QUEUE
        for _ in range(options.queues):
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                raise TapError(
                    errno.ENOENT,
                    "/dev/net/tun is missing: load the tun module (modprobe tun) or create the node "
                    "(mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun)",
                ) from None
            except PermissionError:
                raise TapError(
                    errno.EACCES, "no permission to open /dev/net/tun (it is usually mode 0666: check it)"
                ) from None
            self._fds.append(fd)
            if len(self._fds) == 1:
                features = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4))[0]
                missing = flags & ~features & (IFF_VNET_HDR | IFF_MULTI_QUEUE)
                if missing:
                    raise TapError(
                        errno.EOPNOTSUPP,
                        f"this kernel's TUN driver lacks {'IFF_VNET_HDR' if missing & IFF_VNET_HDR else ''}"
                        f"{' IFF_MULTI_QUEUE' if missing & IFF_MULTI_QUEUE else ''}: open with "
                        "offloads=off and queues=1",
                    )
            try:
                fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(name, flags))
            except PermissionError:
                raise TapError(
                    errno.EPERM,
                    f"cannot create or attach TAP {name.decode()!r}: creating one needs CAP_NET_ADMIN "
                    "(run as root or grant the capability: setcap cap_net_admin+ep on the interpreter); "
                    "without it, ask an administrator for a persistent TAP you own: "
                    f"ip tuntap add dev {name.decode()} mode tap user $USER"
                    f"{' multi_queue' if options.queues > 1 or options.multi_queue else ''}"
                    f"{' vnet_hdr' if self.vnet else ''}",
                ) from None
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise TapError(
                        errno.EINVAL,
                        f"TAP {name.decode()!r} exists with other flags (a TUN device, or multi-queue "
                        "differing from what was asked): recreate it or change the options",
                    ) from None
                if exc.errno == errno.EBUSY:
                    raise TapError(
                        errno.EBUSY, f"TAP {name.decode()!r} is already attached to another process"
                    ) from None
                raise
            if self.vnet:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        if self.options.persist:
            fcntl.ioctl(self._fds[0], TUNSETPERSIST, 1)

    def _configure_device(self, name: bytes) -> None:
        """Bring the device up with our MTU, queue length and kernel-side address, changing only
        what differs, so an unprivileged user can attach to a device made ready for them."""
        options = self.options
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        what = "configuring"
        try:
            mtu = _IFREQ_INT.unpack(fcntl.ioctl(sock, SIOCGIFMTU, _IFREQ_INT.pack(name, 0)))[1]
            if mtu != options.mtu:
                what = f"setting the MTU to {options.mtu}"
                fcntl.ioctl(sock, SIOCSIFMTU, _IFREQ_INT.pack(name, options.mtu))
            qlen = _IFREQ_INT.unpack(fcntl.ioctl(sock, SIOCGIFTXQLEN, _IFREQ_INT.pack(name, 0)))[1]
            if qlen < options.txqueuelen:
                what = f"setting txqueuelen to {options.txqueuelen}"
                fcntl.ioctl(sock, SIOCSIFTXQLEN, _IFREQ_INT.pack(name, options.txqueuelen))
            if options.disable_ipv6:
                self._disable_ipv6(name.decode())
            if options.kernel_address is not None:
                self._set_kernel_address(sock, name, options.kernel_address)
            flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name, 0)))[1]
            if not flags & IFF_UP:
                what = "bringing the device up"
                fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(name, flags | IFF_UP))
            self._wait_running(sock, name)
        except PermissionError:
            raise TapError(
                errno.EPERM,
                f"{what} on TAP {name.decode()!r} needs CAP_NET_ADMIN: run as root, or have an "
                f"administrator prepare the device (ip link set {name.decode()} mtu {options.mtu} "
                f"txqueuelen {options.txqueuelen} up) and pass kernel_address=none",
            ) from None
        finally:
            sock.close()

    @staticmethod
    def _wait_running(sock: socket.socket, name: bytes, limit: float = 2.0) -> None:
        """Wait (bounded) until the kernel reports the device running: attaching to a device that
        is already up turns its carrier on through the kernel's link watch, which activates the
        transmit queue a moment later; until then the kernel drops what it would send us (the
        first ARP reply, say)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name, 0)))[1]
            if flags & IFF_RUNNING:
                return
            time.sleep(0.005)  # polling a kernel state from a synchronous constructor, bounded

    @staticmethod
    def _set_kernel_address(sock: socket.socket, name: bytes, address: str) -> None:
        interface = ipaddress.IPv4Interface(address)
        try:
            current = fcntl.ioctl(sock, SIOCGIFADDR, struct.pack("16s16x", name))
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
        else:
            if socket.inet_ntoa(current[20:24]) == str(interface.ip):
                return  # already there (a persistent device, or a port reopened)
        sockaddr = struct.pack("16sH2s4s8x", name, socket.AF_INET, b"", interface.ip.packed)
        fcntl.ioctl(sock, SIOCSIFADDR, sockaddr)
        netmask = struct.pack("16sH2s4s8x", name, socket.AF_INET, b"", interface.netmask.packed)
        fcntl.ioctl(sock, SIOCSIFNETMASK, netmask)

    @staticmethod
    def _disable_ipv6(name: str) -> None:
        """No IPv6 on the device: router solicitations and neighbour discovery would be noise on
        a wire the stack does not speak IPv6 on.  Best effort: without IPv6 there is no file."""
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as knob:
                knob.write("1")
        except OSError:
            pass

    # -- the port ------------------------------------------------------------------------------
    @property
    def capabilities(self) -> PortCapabilities:
        return self._capabilities

    def fileno(self, queue: int = 0) -> int:
        return self._fds[queue]

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        io = self._burst_io[queue]
        if io is not None:
            # One crossing into C for the burst (its reads stop at the first EAGAIN).
            try:
                got, nbytes, errors = io.rx(max_n)
            except OSError as exc:
                if exc.errno == errno.EBADF and self._closed:
                    return []
                raise
            if got or errors:
                counters = self._counters[queue]
                counters.ipackets += len(got)
                counters.ibytes += nbytes
                counters.ierrors += errors
            return got
        fd = self._fds[queue]
        size = self._rx_size
        read = os.read
        frames: list[bytes] = []
        append = frames.append
        nbytes = 0
        try:
            if not self.vnet:
                while len(frames) < max_n:
                    frame = read(fd, size)
                    nbytes += len(frame)
                    append(frame)
            else:
                counters = self._counters[queue]
                while len(frames) < max_n:
                    data = read(fd, size)
                    if len(data) <= VNET_HDR_LEN:
                        counters.ierrors += 1
                        continue
                    if data[0] & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID):
                        # The kernel vouches for the checksums (NEEDS_CSUM: it never computed
                        # them, the frame never left the machine; only the pseudo-header sum is
                        # in the field, so it must not be verified).
                        frame = ChecksumVerified(memoryview(data)[VNET_HDR_LEN:])
                    else:
                        frame = data[VNET_HDR_LEN:]
                    nbytes += len(frame)
                    append(frame)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EBADF and self._closed:
                return frames
            raise
        if frames:
            counters = self._counters[queue]
            counters.ipackets += len(frames)
            counters.ibytes += nbytes
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        counters = self._counters[queue]
        io = self._burst_io[queue]
        if io is not None and len(frames) >= _NATIVE_TX_MIN:
            # One crossing into C for the burst: C builds the virtio-net headers and writes.
            if not self.vnet:  # no header to ask the kernel with: checksums are finished here
                frames = [
                    complete_checksum(frame)
                    if frame.__class__ is OffloadPacket and not frame.gso_size  # type: ignore[comparison-overlap]  # an OffloadPacket in a bytes burst
                    else frame
                    for frame in frames
                ]
            taken, written, nbytes, refused = io.tx(frames)
            counters.opackets += written
            counters.obytes += nbytes
            counters.oerrors += refused
            return taken
        fd = self._fds[queue]
        limit = self._capabilities.max_frame_len
        vnet = self.vnet
        writev = os.writev
        sent = written = nbytes = 0
        for frame in frames:
            try:
                # An OffloadPacket is a bytearray: Port.tx_burst says bytes (see the poll loop's note).
                if frame.__class__ is OffloadPacket:  # type: ignore[comparison-overlap]
                    if not vnet:
                        # No virtio-net header to ask the kernel with: finish the checksum here;
                        # a TSO frame cannot be sent at all.
                        if frame.gso_size or len(frame) > limit:
                            raise OSError(errno.EMSGSIZE, "TSO frame on a port without offloads")
                        os.write(fd, complete_checksum(frame))
                    else:
                        header = _offload_header(frame)
                        if header is None:
                            raise OSError(errno.EINVAL, "not a TCP/IPv4 frame")
                        writev(fd, (header, frame))
                elif len(frame) > limit:
                    raise OSError(errno.EMSGSIZE, "frame longer than the MTU")
                elif vnet:
                    writev(fd, (_PLAIN_VNET_HDR, frame))
                else:
                    os.write(fd, frame)
            except BlockingIOError:
                break  # the caller keeps the rest (DPDK semantics)
            except OSError:
                counters.oerrors += 1  # refused by the kernel or by us: dropped, and counted
            else:
                written += 1
                nbytes += len(frame)
            sent += 1
        counters.opackets += written
        counters.obytes += nbytes
        return sent

    async def wait_rx(self, queue: int) -> None:
        if self.options.busy_poll:
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.wait_readable(self._fds[queue])

    def statistics(self, queue: int | None = None) -> PortStatistics:
        """The port's counters (one queue's, or all queues' summed)."""
        chosen = self._counters if queue is None else [self._counters[queue]]
        total = PortCounters()
        for counters in chosen:
            for field in PortCounters.__slots__:
                setattr(total, field, getattr(total, field) + getattr(counters, field))
        return total.snapshot()

    def keep_only_queue(self, queue: int) -> None:
        """Close every queue's descriptor but ``queue``'s (a worker process of a multi-queue
        device keeps its own, so a queue lives exactly as long as the core that reads it)."""
        for index, fd in enumerate(self._fds):
            if index != queue and fd >= 0:
                os.close(fd)
                self._fds[index] = -1
                self._burst_io[index] = None
        io = self._burst_io[queue] if queue < len(self._burst_io) else None
        if io is not None:
            io.forget_ring()  # a forked worker opens its own at its first burst

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for io in self._burst_io:
            if io is not None:
                io.close()
        self._burst_io = []
        for fd in self._fds:
            if fd < 0:
                continue
            # (outside a trio run nobody can be waiting on it)
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(fd)
            os.close(fd)
        self._fds = []


def _offload_header(packet: OffloadPacket) -> bytes | None:
    """The virtio-net header for a TCP/IPv4 or TCP/IPv6 frame (no extension header: the stack
    sends none) whose checksum the kernel completes (CHECKSUM_PARTIAL at the TCP checksum
    field) and, with ``gso_size``, segments."""
    if len(packet) >= _ETHER_LEN + 60 and packet[12:14] == b"\x86\xdd" and packet[_ETHER_LEN + 6] == 6:
        tcp_at, gso_type = _ETHER_LEN + 40, VIRTIO_NET_HDR_GSO_TCPV6
    elif len(packet) < _ETHER_LEN + 40 or packet[12:14] != b"\x08\x00" or packet[_ETHER_LEN + 9] != 6:
        return None  # not TCP: nothing else is offloaded
    else:
        tcp_at, gso_type = _ETHER_LEN + ((packet[_ETHER_LEN] & 0x0F) << 2), VIRTIO_NET_HDR_GSO_TCPV4
    header_len = tcp_at + ((packet[tcp_at + 12] >> 4) << 2)
    gso_size = packet.gso_size
    return VNET_HDR.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type if gso_size else VIRTIO_NET_HDR_GSO_NONE,
        header_len,
        gso_size,
        tcp_at,
        16,
    )


def complete_checksum(packet: bytes | bytearray) -> bytes:
    """A copy of an offloaded frame with its TCP checksum completed (as the kernel would), for
    captures and tests; ``packet`` holds the folded pseudo-header sum in the field."""
    frame = bytearray(packet)
    if frame[12:14] == b"\x86\xdd":  # TCP/IPv6 (no extension header: the stack sends none)
        tcp_at = _ETHER_LEN + 40
        end = tcp_at + int.from_bytes(frame[_ETHER_LEN + 4 : _ETHER_LEN + 6], "big")
    else:
        tcp_at = _ETHER_LEN + ((frame[_ETHER_LEN] & 0x0F) << 2)
        end = _ETHER_LEN + int.from_bytes(frame[_ETHER_LEN + 2 : _ETHER_LEN + 4], "big")
    checksum = ~sum16(frame, tcp_at, end - tcp_at, 0) & 0xFFFF
    frame[tcp_at + 16 : tcp_at + 18] = checksum.to_bytes(2, "big")
    return bytes(frame)


def open_tap_port(spec: str, *, queues: int | None = None) -> TapPort:
    """``open_port``'s opener for ``tap:NAME[,key=value...]``.  With ``queues`` (several cores) the
    TAP gets that many queues (``IFF_MULTI_QUEUE``), unless the spec says ``queues=`` itself
    (``queues=1``: one queue, software RSS)."""
    options = parse_tap_spec(spec)
    if queues is None:
        return TapPort(options)
    chosen = options.queues if ",queues=" in spec else queues
    return TapPort(replace(options, queues=chosen, multi_queue=True))
