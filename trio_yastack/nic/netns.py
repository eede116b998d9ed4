"""Private network namespaces for tests and benchmarks that meet the real kernel.

Anything that touches a real interface runs inside a namespace made for it, so no traffic can
reach another network: :class:`NetworkNamespace` makes one with ``ip netns add`` (loopback up,
IPv6 off), lets the calling *thread* step into it (``setns`` is per thread: a TAP opened, or a
kernel socket made, while inside belongs to the namespace for good), runs kernel-side programs
in it, and on close ends only the processes it started, by PID, then deletes the namespace.

Addresses follow RFC 2544's benchmarking range: the kernel side 198.18.0.1/24, the stack
198.18.0.2/24.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "KERNEL_ADDRESS",
    "STACK_ADDRESS",
    "NetworkNamespace",
    "netns_unavailable_reason",
    "tap_in_netns",
    "veth_pair",
]

KERNEL_ADDRESS = "198.18.0.1"
STACK_ADDRESS = "198.18.0.2"
_CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_unavailable_reason() -> str | None:
    """Why this machine cannot make network namespaces for tests, or ``None`` when it can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if os.geteuid() != 0:
        return "creating network namespaces and TAP devices needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    probe = f"yas-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NetworkNamespace:
    """A network namespace of our own, deleted (with the processes we started in it) on close."""

    def __init__(self, prefix: str = "yas") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self._processes: list[subprocess.Popen[Any]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self._fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        self.run(["ip", "link", "set", "lo", "up"], check=True)
        for knob in ("all", "default"):
            self.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.disable_ipv6=1"])
        self._closed = False

    def __enter__(self) -> NetworkNamespace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the calling thread inside the namespace for the ``with`` block (other threads
        stay where they are)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self._fd)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a kernel-side program to completion inside the namespace."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        return subprocess.run(self.command(args), **kwargs)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a kernel-side program inside the namespace; it is ended at :meth:`close`."""
        process = subprocess.Popen(self.command(args), **kwargs)
        self._processes.append(process)
        return process

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        os.close(self._fd)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def veth_pair(
    left: NetworkNamespace,
    right: NetworkNamespace,
    *,
    left_address: str = "198.18.0.2/24",
    right_address: str = "198.18.0.1/24",
    mtu: int = 1500,
) -> None:
    """Join two namespaces with a veth pair (``veth0`` in ``left``, ``veth1`` in ``right``),
    addressed and up: the kernel-to-kernel set-up the benchmarks compare the stack with."""
    left.run(["ip", "link", "add", "veth0", "mtu", str(mtu), "type", "veth", "peer", "name", "veth1",
              "mtu", str(mtu), "netns", right.name], check=True)  # fmt: skip
    left.run(["ip", "addr", "add", left_address, "dev", "veth0"], check=True)
    right.run(["ip", "addr", "add", right_address, "dev", "veth1"], check=True)
    left.run(["ip", "link", "set", "veth0", "up"], check=True)
    right.run(["ip", "link", "set", "veth1", "up"], check=True)


@contextlib.contextmanager
def tap_in_netns(namespace: NetworkNamespace, name: str = "yas0", **options: Any) -> Iterator[Any]:
    """A :class:`~trio_yastack.nic.tap.TapPort` created inside ``namespace`` (kernel side
    198.18.0.1/24 unless ``kernel_address`` says otherwise), closed at the end."""
    from .tap import TapPort

    with namespace.entered():
        port = TapPort(name=name, **options)
    try:
        yield port
    finally:
        port.close()
