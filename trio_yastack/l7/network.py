"""Where the proxy's sockets come from: the kernel, or the user-space stack.

The proxy only sees ``trio.SocketListener`` and ``trio.SocketStream``; this module decides, per
address, whose sockets those are.  Without a stack everything is a kernel socket.  With one (``yastack
proxy --nic ...``), every address is the stack's except loopback (127.0.0.0/8, ::1), which the stack has
no interface for: an admin endpoint on 127.0.0.1, or a backend on the proxy host's loopback, stays on
the kernel, as YAStack keeps a HOST socket provider beside the bypass one.  An IPv6 address gets an
AF_INET6 socket (on ``::``, a dual-stack listener: IPv4 clients too).
"""

from __future__ import annotations

import errno
import ipaddress
import socket as stdlib_socket
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from trio_yastack._open_stack import Stack

__all__ = ["Network", "is_loopback"]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _family(host: str) -> stdlib_socket.AddressFamily:
    return stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET


class Network:
    """Listeners and connections on the kernel or on ``stack`` (see the module docstring)."""

    def __init__(self, stack: Stack | None = None) -> None:
        self.stack = stack

    def on_stack(self, host: str) -> bool:
        return self.stack is not None and not is_loopback(host)

    def describe(self, host: str) -> str:
        return "user-space stack" if self.on_stack(host) else "kernel"

    def _socket(self, host: str) -> trio.socket.SocketType:
        if self.on_stack(host):
            assert self.stack is not None
            return self.stack.socket(_family(host))
        # Not trio.socket.socket(): with a stack open, trio's factory would hand out stack sockets.
        return trio.socket.from_stdlib_socket(stdlib_socket.socket(_family(host), stdlib_socket.SOCK_STREAM))

    async def open_listener(
        self, host: str, port: int, backlog: int = 1024, *, reuse_port: bool = False
    ) -> trio.SocketListener:
        """A listening socket on ``host:port`` (``0.0.0.0`` on the stack means the stack's addresses);
        ``reuse_port``: SO_REUSEPORT, so each core's process listens on the same kernel port."""
        sock = self._socket(host)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            await sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return trio.SocketListener(sock)

    async def connect(self, host: str, port: int) -> trio.SocketStream:
        """A connected stream to ``host:port`` (an IP address; names are resolved before this)."""
        sock = self._socket(host)
        try:
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def resolve(self, name: str, port: int) -> list[str]:
        """IPv4 addresses of ``name`` (STRICT_DNS clusters): numeric names (IPv6 ones too) as they
        are; other names through the stack's resolver (its hosts table) when the stack carries the
        traffic, else the kernel's resolver."""
        try:
            return [str(ipaddress.ip_address(name))]
        except ValueError:
            pass
        if self.stack is not None and not is_loopback(name):
            infos = await trio.socket.getaddrinfo(name, port, trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        else:
            infos = await trio.to_thread.run_sync(
                lambda: stdlib_socket.getaddrinfo(
                    name, port, stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM
                )
            )
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise OSError(errno.ENOENT, f"{name}: no IPv4 address")
        return addresses
