"""The DPDK port: ``dpdk:DEVARGS``, DPDK's own ``rte_eth_rx_burst``/``rte_eth_tx_burst`` under the stack.

``DEVARGS`` is what DPDK's ``--vdev`` or ``-a`` takes: ``dpdk:net_af_packet0,iface=veth0``,
``dpdk:net_af_xdp0,iface=veth0`` (the kernel's interface through a DPDK poll-mode driver), or
``dpdk:0000:03:00.0`` (a PCI NIC bound to ``vfio-pci``, with hugepages: documented, not tested
here).  Further EAL arguments come from ``YASTACK_EAL_ARGS`` (shell words) or ``eal_args=``.

How it runs:

- **The EAL, once per process, lazily.**  ``rte_eal_init`` runs at the first port opened in a
  process and stays up: each port is a hot-plugged device (``rte_dev_probe`` /
  ``rte_eal_hotplug_remove``), so a process may open and close ports many times (DPDK cannot
  initialise its EAL twice; ``rte_eal_cleanup`` runs at exit).  Its defaults, each left out when
  the user's EAL arguments set the same thing: ``--no-huge -m 128`` (no hugepages; a PCI NIC
  uses EAL's hugepage default), ``--no-shconf`` and ``--file-prefix=yastack<PID>`` (no shared
  files: every process is its own primary), ``--no-pci`` for a vdev or ``-a ADDR`` for a NIC,
  ``--no-telemetry``, ``--log-level=notice``, and ``--lcores=0@(CPUS)`` with the CPUs the process
  may already run on, so ``rte_eal_init``, which pins the calling thread, changes nothing (the
  launcher pinned each worker already).  The calling thread is then EAL lcore 0, so the mempool's
  per-lcore cache serves it (a non-EAL thread, ``rte_lcore_id() == LCORE_ID_ANY``, bypasses it).
- **One crossing into C per burst** (``native/dpdk_shim.c``): receive takes up to a burst of
  mbufs, copies their data into one Python-owned buffer with the lengths, and frees them; the
  frames are then cut out of it (:func:`unpack_burst`).  Transmit joins the burst into one
  buffer, and the shim allocates and fills the mbufs and calls ``rte_eth_tx_burst``.  The
  vdevs here offer no checksum offload or TSO, so the shim does both in software, in C, for
  every PMD: the port advertises ``tx_checksum_offload`` and ``tso`` and the stack builds one
  64 KB segment per pass (``native/gso.c`` cuts it).  Received frames are verified by the stack.
- **Waiting for frames** (:meth:`DpdkPort.wait_rx`): DPDK gives no file descriptor to wait on in
  poll mode, and neither ``net_af_packet`` nor ``net_af_xdp`` implements Rx interrupts in 22.11
  (``rte_eth_dev_rx_intr_ctl_q`` answers ``-ENOTSUP``).  So an idle port polls: a burst is
  tried at each trio checkpoint for ``spin_us`` after the last frame (the runtime's other tasks
  still run), then every ``idle_sleep`` seconds (``trio.sleep``; trio's epoll wait has a
  millisecond's grain, so an idle port adds up to ~1 ms of latency to the first frame).  A burst
  found while waiting is kept for the next :meth:`rx_burst`.  Measured here (a loaded 2-core
  machine, ``benchmarks/bench_ports.py``'s ``idle`` rows): an idle stack on a DPDK port costs
  ~7 % of a core (a TAP's: ~0), the price of having no descriptor to sleep on; ``DpdkPort``'s
  ``spin_us`` and ``idle_sleep`` trade it against the first frame's latency.
- **Several cores** (one process per core, ``--cores N``): the EAL cannot survive ``fork``, so
  the parent only describes the port (MAC and MTU read from the interface, no EAL) and every
  worker opens its own EAL and device on first use.  ``net_af_xdp`` gives each worker its own
  queue (``start_queue=K,queue_count=1``): flows spread over the interface's queues as the
  kernel steers them (this needs a bpffs for libxdp: see :func:`xdp_sharing_unavailable_reason`;
  refused up front without one).  ``net_af_packet`` cannot: its ``PACKET_FANOUT``
  group is derived from ``getpid()``, so the workers' sockets would each see every frame; it
  offers one queue, read by core 0 (software RSS to the others), and every worker transmits
  through its own instance (the others' receive rings fill and the kernel drops their copies).
  A PCI NIC serves one process.  On one core, ``net_af_xdp`` reads only the queues it is given
  (``start_queue``/``queue_count``): a multi-queue interface without ``queue_count`` is refused
  (the kernel would steer some flows to a queue nobody reads).
- **The interface's kernel side**: the interface given to ``iface=`` must not carry an IPv4
  address (the kernel would answer ARP and TCP for an address the stack also uses): opening
  refuses it unless ``allow_kernel_address=True``.  The kernel still sees every frame of the
  interface with ``net_af_packet``; with ``net_af_xdp`` only the queues the XDP program
  redirects bypass it.  DPDK 22.11's ``net_af_packet`` and ``net_af_xdp`` hand up frames as the
  interface has them: turn off the offloads of whatever sends to it so frames carry complete
  checksums and fit the MTU (on a veth, ``ethtool -K PEER tx off tso off gso off`` on the peer;
  on a NIC, ``ethtool -K IFACE gro off lro off``).  DPDK 22.11's ``net_af_xdp`` leaves its XDP
  socket bound when the device closes: a process opens each interface queue with it once (again
  is refused with ``EBUSY``; another process may), and a second XDP socket on one interface needs
  a bpffs (:func:`xdp_sharing_unavailable_reason`).

No Python twin is possible for DPDK's functions (``rte_eal_init``, ``rte_eth_rx_burst``,
``rte_eth_tx_burst``, ...).  What is ours has one: :func:`unpack_burst` (the receive buffer cut
into frames) and :func:`py_tx_prepare` (the frames the transmit path builds from a burst: joined,
checksums completed, TSO frames segmented), which ``tests/test_dpdk.py`` holds to the shim's
``yas_dpdk_tx_prepare`` (the same C the transmit path runs).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shlex
import socket
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import trio

from trio_yastack.stack._native import py_tcp4_segment
from trio_yastack.stack._offload import OffloadPacket
from trio_yastack.stack.wire import MacAddress

from ._port import Port, PortCapabilities, PortStatistics
from .tap import complete_checksum

if TYPE_CHECKING:
    from ._dpdk_cffi import _FFI, _Lib

__all__ = [
    "DpdkError",
    "DpdkPort",
    "DpdkSpec",
    "dpdk_unavailable_reason",
    "open_dpdk_port",
    "parse_dpdk_spec",
    "py_tx_prepare",
    "unpack_burst",
    "xdp_sharing_unavailable_reason",
]

#: meta of a frame for the shim's transmit path (``YAS_TX_PARTIAL_CSUM | gso_size``)
TX_PARTIAL_CSUM = 0x10000
_PCI = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_MAX_RX_FRAME = 9216  # room per frame in the receive buffer (a jumbo frame in chained mbufs)
_SIOCGIFADDR = 0x8915
_SIOCGIFHWADDR = 0x8927
_SIOCGIFMTU = 0x8921
_SIOCETHTOOL = 0x8946
_ETHTOOL_GCHANNELS = 0x3C
_IFREQ_INT = struct.Struct("16si20x")
_INSTALL = "apt-get install libdpdk-dev librte-net-af-packet23 librte-net-af-xdp23 librte-mempool-ring23"


class DpdkError(OSError):
    """DPDK could not open or run the port; the message says what to do about it."""


def _load() -> tuple[_FFI, _Lib] | None:
    try:
        from ._dpdk_cffi import ffi, lib
    except ImportError:
        return None
    return ffi, lib


_extension = _load()


def dpdk_unavailable_reason() -> str | None:
    """Why a DPDK port cannot be opened here (the shim was not built), or None."""
    if _extension is None:
        return (
            "the DPDK shim (trio_yastack.nic._dpdk_cffi) is not built: install DPDK's development "
            f"files and the PMDs ({_INSTALL}), then reinstall the package (scripts/setup.sh)"
        )
    return None


def xdp_sharing_unavailable_reason() -> str | None:
    """Why ``net_af_xdp`` cannot put XDP sockets on two queues of one interface here, or None.

    DPDK 22.11's ``net_af_xdp`` loads its XDP program through libxdp.  A second socket on another
    queue of the same interface finds the first one's program (and its socket map) only through
    libxdp's state in a bpffs (``/sys/fs/bpf``, or the directory ``LIBXDP_BPFFS`` names, shared
    by the processes); without one it fails (``libxdp: No bpffs found``; ``xsk_configure():
    Failed to create xsk socket``).  libxdp's multi-program dispatcher is not needed: where the
    kernel refuses it (here: ``freplace`` programs not permitted) libxdp falls back to one
    program, which serves every queue."""
    bpffs = os.environ.get("LIBXDP_BPFFS", "/sys/fs/bpf")
    try:
        with open("/proc/self/mounts") as mounts:
            mounted = any(line.split()[1:3] == [bpffs, "bpf"] for line in mounts)
    except OSError:
        mounted = False
    if not mounted:
        return (
            f"a second XDP socket on one interface needs libxdp's state in a bpffs, and {bpffs} is none "
            "(mount -t bpf bpf /sys/fs/bpf, or mount one elsewhere and set LIBXDP_BPFFS=DIR for every "
            "process): without it each interface takes one net_af_xdp queue"
        )
    return None


# -- the spec -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DpdkSpec:
    """``dpdk:DEVARGS`` taken apart: the device ``name`` (``net_af_xdp0``, ``0000:03:00.0``), its
    ``key=value`` arguments in order, and whether it is a PCI address."""

    devargs: str
    name: str
    args: tuple[tuple[str, str], ...]
    is_pci: bool

    @property
    def driver(self) -> str:
        """The vdev's driver (``net_af_xdp``, ``net_af_packet``; ``eth_af_packet`` is DPDK's
        alias), or ``"pci"``."""
        if self.is_pci:
            return "pci"
        driver = self.name.rstrip("0123456789")
        return "net_af_packet" if driver == "eth_af_packet" else driver

    def get(self, key: str) -> str | None:
        for name, value in self.args:
            if name == key:
                return value
        return None

    def with_args(self, **changes: int | str) -> DpdkSpec:
        """The same device with some arguments replaced or added."""
        args = [(k, str(changes.pop(k))) if k in changes else (k, v) for k, v in self.args]
        args += [(k, str(v)) for k, v in changes.items()]
        devargs = ",".join([self.name, *(f"{k}={v}" for k, v in args)])
        return DpdkSpec(devargs, self.name, tuple(args), self.is_pci)


def parse_dpdk_spec(spec: str) -> DpdkSpec:
    """``dpdk:DEVARGS`` (or DEVARGS alone) as a :class:`DpdkSpec`."""
    devargs = spec.removeprefix("dpdk:")
    name, *pairs = devargs.split(",")
    if not name:
        raise ValueError(f"nic {spec!r}: a DPDK spec needs a device, as in dpdk:net_af_packet0,iface=veth0")
    is_pci = bool(_PCI.match(name))
    if not is_pci and not name.startswith(("net_", "eth_")):
        raise ValueError(
            f"nic {spec!r}: {name!r} is neither a vdev name (net_af_packet0, net_af_xdp0, ...) "
            "nor a PCI address (0000:03:00.0)"
        )
    args: list[tuple[str, str]] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"nic {spec!r}: {pair!r} is not key=value")
        args.append((key, value))
    return DpdkSpec(devargs, name, tuple(args), is_pci)


# -- the EAL, once per process --------------------------------------------------------------------
_eal_pid: int | None = None
_eal_args: list[str] = []

#: our EAL defaults, each group left out when the user's arguments name one of its options
_DEFAULT_GROUPS: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (frozenset({"--no-shconf", "--in-memory"}), ("--no-shconf",)),
    (frozenset({"--file-prefix"}), ("--file-prefix=yastack{pid}",)),
    (frozenset({"--no-telemetry", "--telemetry"}), ("--no-telemetry",)),
    (frozenset({"--log-level"}), ("--log-level=notice",)),
    (frozenset({"--lcores", "-l", "-c"}), ("--lcores=0@({cpus})",)),
)
_MEMORY = frozenset({"--no-huge", "-m", "--socket-mem", "--huge-dir", "--in-memory", "--legacy-mem"})
_BUS = frozenset({"--no-pci", "-a", "--allow", "-b", "--block"})


def _option_names(args: Sequence[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in args if arg.startswith("-")}


def eal_arguments(spec: DpdkSpec, extra: Sequence[str] = ()) -> list[str]:
    """The ``rte_eal_init`` arguments for a process whose first port is ``spec``: our defaults
    (see the module's docstring) minus what ``YASTACK_EAL_ARGS`` and ``extra`` set, then theirs."""
    user = [*shlex.split(os.environ.get("YASTACK_EAL_ARGS", "")), *extra]
    named = _option_names(user)
    cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    args = ["trio_yastack"]
    for names, group in _DEFAULT_GROUPS:
        if not names & named:
            args += [word.format(pid=os.getpid(), cpus=cpus) for word in group]
    if not _MEMORY & named and not spec.is_pci:
        args += ["--no-huge", "-m", "128"]
    if not _BUS & named:
        args += ["-a", spec.name] if spec.is_pci else ["--no-pci"]
    return args + user


def _lib() -> tuple[_FFI, _Lib]:
    if _extension is None:
        raise DpdkError(errno.ENOSYS, dpdk_unavailable_reason())
    return _extension


def _init_eal(spec: DpdkSpec, extra: Sequence[str]) -> None:
    """``rte_eal_init`` in this process unless it ran already (and never in a forked copy of a
    process whose EAL is up: DPDK does not survive fork)."""
    global _eal_pid, _eal_args
    ffi, lib = _lib()
    if _eal_pid == os.getpid():
        return
    if _eal_pid is not None:
        raise DpdkError(
            errno.EBUSY,
            f"DPDK's EAL was started in process {_eal_pid}, of which this process is a fork: DPDK does "
            "not survive fork (open DPDK ports only after forking, as the per-core launcher does)",
        )
    args = eal_arguments(spec, extra)
    keep = [ffi.new("char[]", arg.encode()) for arg in args]
    argv = ffi.new("char *[]", keep)
    result = lib.yas_dpdk_eal_init(len(keep), argv)
    if result < 0:
        message = ffi.string(lib.yas_dpdk_strerror(-result)).decode()
        raise DpdkError(
            -result,
            f"rte_eal_init({' '.join(args[1:])}) failed: {message} (EAL's own messages above say more; "
            "EAL starts once per process and cannot be retried)",
        )
    _eal_pid, _eal_args = os.getpid(), args
    atexit.register(_cleanup_eal)


def _cleanup_eal() -> None:
    if _eal_pid == os.getpid() and _extension is not None:
        for port in list(_open_ports):
            port.close()
        _extension[1].yas_dpdk_eal_cleanup()


_open_ports: set[DpdkPort] = set()
#: (network namespace, interface, queue) of every net_af_xdp queue this process opened
_xdp_queues_used: set[tuple[int, str, int]] = set()


# -- checks that give clear errors before DPDK's own ---------------------------------------------
def _interface_checks(spec: DpdkSpec, allow_kernel_address: bool) -> None:
    iface = spec.get("iface")
    if iface is None:
        return
    try:
        socket.if_nametoindex(iface)
    except OSError:
        raise DpdkError(
            errno.ENODEV,
            f"nic dpdk:{spec.devargs}: there is no interface {iface!r} in this network namespace",
        ) from None
    if not allow_kernel_address:
        address = _kernel_address(iface)
        if address is not None:
            raise DpdkError(
                errno.EADDRINUSE,
                f"nic dpdk:{spec.devargs}: {iface} carries {address} on the kernel side; the kernel "
                "would answer ARP and TCP alongside the stack on it.  Give the stack an interface "
                f"without an IPv4 address (ip addr flush dev {iface})",
            )
    family, kind = {
        "net_af_packet": (socket.AF_PACKET, socket.SOCK_RAW),
        "net_af_xdp": (44, socket.SOCK_RAW),
    }.get(spec.driver, (None, None))
    if family is not None and kind is not None:
        try:
            socket.socket(family, kind, 0).close()
        except PermissionError:
            raise DpdkError(
                errno.EPERM,
                f"nic dpdk:{spec.devargs}: {spec.driver} needs CAP_NET_RAW"
                f"{' and CAP_NET_ADMIN, CAP_BPF (to load its XDP program)' if family == 44 else ''}: run as "
                "root or grant the capabilities to the interpreter",
            ) from None
        except OSError:
            pass  # an unsupported family shows up as DPDK's own error, with its messages


def _kernel_address(iface: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock, _SIOCGIFADDR, struct.pack("16s16x", iface.encode()))
        except OSError:
            return None  # EADDRNOTAVAIL: no IPv4 address
    return socket.inet_ntoa(answer[20:24])


def _interface_queues(iface: str) -> int:
    """How many receive queues ``iface`` has (``ETHTOOL_GCHANNELS``: rx or combined channels), 1
    when the driver does not say."""
    channels = ctypes.create_string_buffer(struct.pack("9I", _ETHTOOL_GCHANNELS, *([0] * 8)))
    request = struct.pack("16sP16x", iface.encode(), ctypes.addressof(channels))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, _SIOCETHTOOL, request)
        except OSError:
            return 1
    values: tuple[int, ...] = struct.unpack_from("9I", channels.raw)
    return max(values[5], values[8], 1)  # rx_count, combined_count


def _interface_mac_mtu(iface: str) -> tuple[MacAddress, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        hw = fcntl.ioctl(sock, _SIOCGIFHWADDR, struct.pack("16s16x", iface.encode()))
        mtu = _IFREQ_INT.unpack(fcntl.ioctl(sock, _SIOCGIFMTU, _IFREQ_INT.pack(iface.encode(), 0)))[1]
    return MacAddress(hw[18:24]), mtu


@contextlib.contextmanager
def _attach_lock(netns: int, iface: str, timeout: float = 30.0) -> Iterator[None]:
    """One process at a time opens a DPDK port on ``iface`` in this network namespace.

    Why: with ``--cores N`` every worker opens its own queue of the same interface at the same
    moment, and two ``net_af_xdp`` opens racing to attach libxdp's program to one interface make
    the second fail (``Error attaching XDP program ... Device or resource busy``); one after the
    other, the second finds the program attached and shares it.  An flock on a file named after
    the namespace and the interface, taken with a bound (the open itself takes well under a second).
    """
    path = os.path.join(tempfile.gettempdir(), f"yastack-dpdk-{netns}-{iface or 'pci'}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DpdkError(
                        errno.EBUSY, f"another process kept {path} locked for {timeout:.0f} s"
                    ) from None
                time.sleep(0.01)  # another worker is opening its queue: wait for it, bounded
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _netns_inode() -> int:
    """The calling thread's network namespace (``setns`` is per thread)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class _QueueLock:
    """An advisory lock on (network namespace, interface, queue), so a second stack on the same
    receive queue is refused with a clear error instead of splitting or duplicating its frames
    (two ``net_af_packet`` instances would each see every frame)."""

    def __init__(self, iface: str, queue: str) -> None:
        netns = _netns_inode()
        directory = "/run/lock" if os.access("/run/lock", os.W_OK) else tempfile.gettempdir()
        self.path = os.path.join(directory, f"trio_yastack-dpdk-{netns}-{iface}-{queue}.lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DpdkError(
                errno.EBUSY,
                f"{iface} queue {queue} is busy: another trio_yastack DPDK port reads it (lock {self.path})",
            ) from None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- the burst buffers, and their Python twins ---------------------------------------------------
def unpack_burst(buffer: Any, lens: Sequence[int]) -> list[bytes]:
    """The frames of a receive burst: ``buffer`` holds them back to back, ``lens`` their lengths
    (what ``yas_dpdk_rx_burst`` leaves).  ``buffer`` is anything sliceable to bytes (cffi's
    buffer of the C memory, or bytes in a test)."""
    frames: list[bytes] = []
    append = frames.append
    at = 0
    for length in lens:
        end = at + length
        append(buffer[at:end])
        at = end
    return frames


def tx_meta(frame: bytes | bytearray) -> int:
    """A frame's meta for the shim's transmit path: 0, or ``TX_PARTIAL_CSUM | gso_size``."""
    if type(frame) is OffloadPacket:
        return TX_PARTIAL_CSUM | frame.gso_size
    return 0


def py_tx_prepare(frames: Sequence[bytes | bytearray], max_frame_len: int) -> list[bytes]:
    """Twin of the shim's ``yas_dpdk_tx_prepare``: the frames the transmit path puts into mbufs.
    Finished frames go as they are; an :class:`OffloadPacket` gets its TCP checksum completed,
    and one with a ``gso_size`` longer than ``max_frame_len`` is segmented; too long, or an
    offload frame that is not TCP/IPv4, is dropped."""
    out: list[bytes] = []
    for frame in frames:
        meta = tx_meta(frame)
        gso = meta & 0xFFFF
        if meta and gso and len(frame) > max_frame_len:
            try:
                segments = py_tcp4_segment(frame, gso)
            except ValueError:
                continue
            if len(segments[0]) > max_frame_len:
                continue
            out += segments
        elif len(frame) > max_frame_len:
            continue
        elif meta:
            if not _is_tcp4(frame):
                continue
            out.append(complete_checksum(frame))
        else:
            out.append(bytes(frame))
    return out


def _is_tcp4(frame: bytes | bytearray) -> bool:
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4 or frame[23] != 6:
        return False
    ihl = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    return ihl >= 20 and 14 + total <= len(frame) and total >= ihl + 20


def native_tx_prepare(frames: Sequence[bytes | bytearray], max_frame_len: int) -> list[bytes]:
    """The shim's ``yas_dpdk_tx_prepare`` (no DPDK needed): what its transmit path would send."""
    ffi, lib = _lib()
    joined = b"".join(frames)
    lens = ffi.new("uint32_t[]", [len(f) for f in frames] or [0])
    meta = ffi.new("uint32_t[]", [tx_meta(f) for f in frames] or [0])
    room = 2 * len(joined) + 64 * 1024
    out = ffi.new("char[]", room)
    outlens = ffi.new("uint32_t[]", 4096)
    made = lib.yas_dpdk_tx_prepare(
        joined, len(joined), lens, meta, len(frames), max_frame_len, out, room, outlens, 4096
    )
    if made < 0:
        raise DpdkError(-made, "yas_dpdk_tx_prepare failed")
    return unpack_burst(ffi.buffer(out, room), [outlens[i] for i in range(made)])


# -- the port -------------------------------------------------------------------------------------
class DpdkPort(Port):
    """A DPDK ethdev port (one rx and one tx queue in this process) behind the :class:`Port` API.

    ``cores=None`` opens the device now; ``cores=N`` (the per-core launcher) only describes it,
    and each worker opens its own EAL and device at its first use (``keep_only_queue`` picks the
    worker's queue first, for ``net_af_xdp``).
    """

    def __init__(
        self,
        spec: str | DpdkSpec,
        *,
        cores: int | None = None,
        eal_args: Sequence[str] = (),
        max_burst: int = 64,
        nb_desc: int = 1024,
        nb_mbufs: int = 8191,
        spin_us: float = 200.0,
        idle_sleep: float = 0.001,
        allow_kernel_address: bool = False,
    ) -> None:
        self.spec = spec if isinstance(spec, DpdkSpec) else parse_dpdk_spec(spec)
        self.name = f"dpdk:{self.spec.name}"
        self.eal_args = tuple(eal_args)
        self.max_burst = max_burst
        self.nb_desc = nb_desc
        self.nb_mbufs = nb_mbufs
        self.spin = spin_us / 1e6
        self.idle_sleep = idle_sleep
        self.allow_kernel_address = allow_kernel_address
        self._cores = cores
        self._queue_base = 0  # the interface queue this process serves (net_af_xdp per core)
        self._port_id = -1
        self._pid: int | None = None
        self._closed = False
        self._receiving = False
        self._locks: list[_QueueLock] = []
        self._xdp_queues: list[int] = []  # the interface queues of this process's net_af_xdp device
        self._rx_queue = 0
        self._stash: list[bytes] = []
        self._last_rx = 0.0
        iface = self.spec.get("iface")
        if cores is not None and cores > 1:
            if self.spec.driver not in ("net_af_xdp", "net_af_packet"):
                raise DpdkError(
                    errno.EOPNOTSUPP,
                    f"nic dpdk:{self.spec.devargs}: several cores need one DPDK instance per process; "
                    "only net_af_xdp (a queue per core) and net_af_packet (core 0 receives) allow that",
                )
            if iface is None:
                raise DpdkError(errno.EINVAL, f"nic dpdk:{self.spec.devargs}: iface= is missing")
            if self.spec.driver == "net_af_xdp" and int(self.spec.get("queue_count") or 1) != 1:
                raise DpdkError(
                    errno.EINVAL, "with several cores, each worker takes one queue: no queue_count"
                )
            _lib()
            _interface_checks(self.spec, allow_kernel_address)
            mac, mtu = _interface_mac_mtu(iface)
            queues = cores if self.spec.driver == "net_af_xdp" else 1
            self._capabilities = self._make_capabilities(mac, mtu, queues)
        else:
            self._open_here(receiving=True)

    def _make_capabilities(self, mac: MacAddress, mtu: int, queues: int) -> PortCapabilities:
        return PortCapabilities(
            mac=mac,
            mtu=mtu,
            rx_queues=queues,
            tx_queues=queues,
            max_burst=self.max_burst,
            tx_checksum_offload=True,  # completed in software by the shim (see the module docstring)
            tso=True,
            max_tso_size=0xFFFF,
        )

    # -- opening, in the process that uses it ------------------------------------------------------
    def _device_spec(self) -> DpdkSpec:
        """The devargs this process opens, and which interface queues its device takes
        (``self._xdp_queues``): with several cores, ``net_af_xdp`` takes the worker's queue; with
        one, the spec's ``queue_count`` (all polled in turn) or, when the interface has a single
        queue, that one: a multi-queue interface without ``queue_count`` is refused, since flows
        the kernel steers to a queue nobody reads would be lost.  The other drivers see every
        frame whatever its queue."""
        spec = self.spec
        self._xdp_queues = []
        if spec.driver != "net_af_xdp":
            return spec
        start = int(spec.get("start_queue") or 0)
        if self._cores is not None and self._cores > 1:
            spec = spec.with_args(start_queue=start + self._queue_base, queue_count=1)
            self._xdp_queues = [start + self._queue_base]
            return spec
        count = spec.get("queue_count")
        if count is None:
            queues = _interface_queues(spec.get("iface") or "") - start
            if queues > 1:
                raise DpdkError(
                    errno.EOPNOTSUPP,
                    f"nic dpdk:{spec.devargs}: {spec.get('iface')} has {queues} receive queues from {start} "
                    "on and the kernel spreads flows over them, but one net_af_xdp device reads the queues "
                    "it was given only: run one core per queue (--cores N), give the interface one queue "
                    f"(ethtool -L {spec.get('iface')} rx 1, or combined 1), or say queue_count=N (DPDK "
                    "22.11 allows no more than the interface's combined channels: not on a veth) or "
                    "queue_count=1 to accept losing the flows of the other queues",
                )
            count = "1"
        self._xdp_queues = list(range(start, start + int(count)))
        return spec

    def _open_here(self, *, receiving: bool) -> None:
        if self._closed:
            raise DpdkError(errno.EBADF, f"{self.name} is closed")
        if self._pid is not None:
            if self._pid != os.getpid():
                raise DpdkError(
                    errno.EBUSY,
                    f"{self.name} was opened in process {self._pid}; DPDK does not survive fork",
                )
            if receiving and not self._receiving:
                self._take_rx_lock()
            return
        ffi, lib = _lib()
        _interface_checks(self.spec, self.allow_kernel_address)
        spec = self._device_spec()
        if receiving:
            self._take_rx_lock()
        netns, iface = _netns_inode(), spec.get("iface") or ""
        used = [queue for queue in self._xdp_queues if (netns, iface, queue) in _xdp_queues_used]
        if used:
            self._release_lock()
            raise DpdkError(
                errno.EBUSY,
                f"nic dpdk:{spec.devargs}: this process opened queue {used[0]} of {iface} with net_af_xdp "
                "before; DPDK 22.11 leaves that XDP socket bound after the device closes, so the queue "
                "can be opened again only by another process",
            )
        queues = len(self._xdp_queues) or 1
        try:
            _init_eal(spec, self.eal_args)
            info = ffi.new("struct yas_dpdk_info *")
            with _attach_lock(netns, iface):
                result = lib.yas_dpdk_open(
                    spec.devargs.encode(),
                    spec.name.encode(),
                    int(spec.is_pci),
                    self.nb_mbufs,
                    self.nb_desc,
                    queues,
                    info,
                )
            if result < 0:
                raise DpdkError(-result, self._open_error(spec, -result))
        except BaseException:
            self._release_lock()
            raise
        _xdp_queues_used.update((netns, iface, queue) for queue in self._xdp_queues)
        self._rx_queue = lib.YAS_ALL_QUEUES if queues > 1 else 0
        self._port_id = info.port_id
        self._pid = os.getpid()
        self.driver = ffi.string(info.driver).decode()
        mac = MacAddress(bytes(ffi.buffer(info.mac, 6)))
        if self._cores is None or self._cores == 1:
            self._capabilities = self._make_capabilities(mac, info.mtu, 1)
        self._rx_buf = ffi.new("char[]", self.max_burst * _MAX_RX_FRAME)
        self._rx_view = ffi.buffer(self._rx_buf)
        self._rx_buflen = len(self._rx_view)
        self._rx_lens = ffi.new("uint32_t[]", self.max_burst)
        self._rx_lens_view = memoryview(ffi.buffer(self._rx_lens)).cast("I")
        self._c_rx = lib.yas_dpdk_rx_burst
        self._c_tx = lib.yas_dpdk_tx_burst
        self._new = ffi.new
        _open_ports.add(self)

    def _open_error(self, spec: DpdkSpec, code: int) -> str:
        ffi, lib = _lib()
        text = f"opening dpdk:{spec.devargs} failed: {ffi.string(lib.yas_dpdk_strerror(code)).decode()}"
        if code == errno.EBUSY:
            return text + " (this process has that device open already)"
        if spec.driver == "net_af_xdp":
            return text + (
                f" (DPDK's messages above say more; for net_af_xdp: are queues {self._xdp_queues} of "
                f"{spec.get('iface')} taken by another XDP socket or program, does the interface have "
                "them (veth: numrxqueues), and for several queues of one interface, is there a bpffs "
                "for libxdp (/sys/fs/bpf or LIBXDP_BPFFS)?)"
            )
        return text + " (DPDK's messages above say more)"

    def _take_rx_lock(self) -> None:
        iface = self.spec.get("iface")
        if iface is not None and not self._locks:
            labels = [f"q{queue}" for queue in self._xdp_queues] or ["all"]
            try:
                for label in labels:
                    self._locks.append(_QueueLock(iface, label))
            except BaseException:
                self._release_lock()
                raise
        self._receiving = True

    def _release_lock(self) -> None:
        for lock in self._locks:
            lock.release()
        self._locks = []
        self._receiving = False

    def keep_only_queue(self, queue: int) -> None:
        """Called by the launcher in a worker after fork: this process serves ``queue`` (its
        device is opened now, on that queue, with this process's own EAL)."""
        self._queue_base = queue
        self._open_here(receiving=True)

    # -- the port --------------------------------------------------------------------------------
    @property
    def capabilities(self) -> PortCapabilities:
        return self._capabilities

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        if self._stash:
            frames, self._stash = self._stash, []
            return frames
        if not self._receiving:
            self._open_here(receiving=True)
        n = self._c_rx(
            self._port_id,
            self._rx_queue,
            self._rx_buf,
            self._rx_buflen,
            self._rx_lens,
            min(max_n, self.max_burst),
        )
        if n <= 0:
            if n < 0:
                raise DpdkError(-n, f"{self.name}: rx burst failed")
            return []
        return unpack_burst(self._rx_view, self._rx_lens_view[:n].tolist())

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        if not frames:
            return 0
        if self._pid is None:
            self._open_here(receiving=False)
        new = self._new
        lens = [len(frame) for frame in frames]
        # The stack hands bytearrays and OffloadPackets (see the poll loop's note on Port.tx_burst).
        items = cast("Sequence[bytes | OffloadPacket]", frames)
        meta = [TX_PARTIAL_CSUM | frame.gso_size if type(frame) is OffloadPacket else 0 for frame in items]
        joined = b"".join(frames)
        accepted: int = self._c_tx(
            self._port_id,
            0,
            joined,
            len(joined),
            new("uint32_t[]", lens),
            new("uint32_t[]", meta),
            len(frames),
            self._capabilities.max_frame_len,
        )
        if accepted < 0:
            raise DpdkError(-accepted, f"{self.name}: tx burst failed")
        return accepted

    async def wait_rx(self, queue: int) -> None:
        """Poll until a burst arrives (kept for the next :meth:`rx_burst`): at every checkpoint
        for ``spin_us`` after the last frame, then every ``idle_sleep`` (see the module docstring:
        these PMDs have no Rx interrupts).  Cancelled by the runtime's deadline like any wait."""
        if not self._receiving:
            self._open_here(receiving=True)
        clock = time.perf_counter
        while True:
            frames = self.rx_burst(queue, self.max_burst)
            if frames:
                self._stash = frames
                self._last_rx = clock()
                return
            if clock() - self._last_rx < self.spin:
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(self.idle_sleep)

    def statistics(self) -> PortStatistics:
        """``rte_eth_stats_get`` of this process's device, plus the frames the shim dropped
        itself (too long: ``oerrors``, ``ierrors``); zeros before the device is opened here."""
        if self._pid != os.getpid() or self._port_id < 0:
            return PortStatistics()
        ffi, lib = _lib()
        stats = ffi.new("struct yas_dpdk_stats *")
        result = lib.yas_dpdk_stats_get(self._port_id, stats)
        if result < 0:
            raise DpdkError(-result, f"{self.name}: rte_eth_stats_get failed")
        return PortStatistics(
            stats.ipackets,
            stats.opackets,
            stats.ibytes,
            stats.obytes,
            stats.imissed,
            stats.ierrors,
            stats.oerrors,
        )

    def close(self) -> None:
        """Stop and close the device and unplug it (``rte_eth_dev_stop``/``close``, hot-unplug);
        the EAL stays up for the next port of this process and is cleaned up at exit."""
        if self._closed:
            return
        self._closed = True
        if self._pid == os.getpid() and self._port_id >= 0:
            _, lib = _lib()
            lib.yas_dpdk_close(self._port_id, self.spec.name.encode(), int(self.spec.is_pci))
            self._port_id = -1
        _open_ports.discard(self)
        self._release_lock()
        self._stash = []


def open_dpdk_port(spec: str, *, queues: int | None = None) -> DpdkPort:
    """``open_port``'s opener for ``dpdk:DEVARGS``: opened now for one core; with ``queues``
    (several cores) described now and opened by each worker after fork."""
    return DpdkPort(spec, cores=queues)
