"""AF_INET6 sockets over the stack: :class:`StackSocket6`, what the socket factory hands out
for ``trio.socket.socket(AF_INET6, SOCK_STREAM | SOCK_DGRAM)`` when the stack has an IPv6 address.

It is a :class:`StackSocket` whose addresses are IPv6 ones, as the kernel gives them:
``(host, port, flowinfo, scope_id)``.  Everything else (buffers, queues, MSG_PEEK, SO_ERROR from
ICMPv6 errors, wake-ups, close) is the AF_INET socket's own code.

Stream sockets are dual-stack unless ``IPV6_V6ONLY`` is set, as on Linux
(``net.ipv6.bindv6only=0``): one listening on ``::`` also accepts IPv4 clients, seen as
``::ffff:a.b.c.d``, and one connecting to a v4-mapped address opens an IPv4 connection; with
``IPV6_V6ONLY`` 1 (set before ``bind``, as trio.open_tcp_listeners does), IPv4 clients are
refused and an AF_INET socket may listen on the same port.  Their connections are the TCP
layer's (``tcp.listen6``, ``tcp.connect6``): the same TCP code for both families.

Datagram sockets have an IPv6 protocol control block (``UdpPcb(v6=True)``: its own port table,
so a port may be bound once per family) and are IPv6-only, as FreeBSD's default
(``net.inet6.ip6.v6only=1``): setting ``IPV6_V6ONLY`` to 0 is refused with a clear error rather
than silently ignored, and a v4-mapped destination is unreachable, as Linux says for a v6-only
socket.  The loopback address ``::1`` goes to the kernel at ``bind``/``connect``/``sendto``, as
127.0.0.0/8 does (YAStack's HOST path).
"""

from __future__ import annotations

import errno
import socket as _stdlib_socket
from functools import lru_cache
from ipaddress import IPv6Address
from typing import Any

import trio

from trio_yastack.stack import IP6_KEY, TcpConnection, TcpConnection6, UdpPcb
from trio_yastack.stack.tcp import TcpListener
from trio_yastack.stack.wire.ipv6 import is_link_local

from ._socket import _SEND_FLAGS, SOCK_DGRAM, SOCK_STREAM, StackSocket, _loopback, _oserror, _run_stacks
from ._stack import SocketStack

__all__ = ["StackSocket6"]

AF_INET6 = _stdlib_socket.AF_INET6
_IPPROTO_IPV6 = _stdlib_socket.IPPROTO_IPV6
_V6ONLY = (_IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY)
_LOOPBACK6 = 1  # ::1
_V4MAPPED = 0xFFFF << 32  # ::ffff:0.0.0.0
_ADDRESS6 = IP6_KEY - 1  # the peer's address in the TCP layer's key (key6)
_V4 = 0xFFFFFFFF


@lru_cache(maxsize=1024)
def _parse6(host: str) -> int:
    """A numeric IPv6 host as an integer (``ValueError`` if it is none).  Cached, bounded: a
    datagram server's peers repeat, and parsing an IPv6 address costs more than sending it."""
    return int(IPv6Address(host))  # (a "%scope" suffix is accepted: one interface)


@lru_cache(maxsize=1024)
def _format6(ip: int) -> str:
    """An IPv6 address as the kernel prints it (RFC 5952; a v4-mapped one as ``::ffff:a.b.c.d``,
    which ``ipaddress`` before Python 3.13 does not).  Cached, bounded, as :func:`_parse6`."""
    return _stdlib_socket.inet_ntop(AF_INET6, ip.to_bytes(16, "big"))


def _ipv6(address: Any) -> tuple[int, int]:
    """``(ip, port)`` from a Python AF_INET6 sockaddr ``(host, port[, flowinfo[, scope_id]])``
    with a numeric host, checked as the kernel's socket module checks it."""
    if not isinstance(address, tuple) or not 2 <= len(address) <= 4:
        raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])")
    host, port = address[0], address[1]
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise OverflowError("port must be 0-65535.")
    if len(address) > 2 and not (isinstance(address[2], int) and 0 <= address[2] <= 0xFFFFF):
        raise OverflowError("flowinfo must be 0-1048575.")
    if host in ("", None):
        return 0, port
    try:
        return _parse6(host), port
    except (ValueError, TypeError):
        raise _oserror(errno.EINVAL, f"not a numeric IPv6 address: {host!r}; resolve names first") from None


class StackSocket6(StackSocket):
    """An AF_INET6 UDP socket on a trio_yastack stack (see the module's docstring)."""

    def __init__(
        self, stack: SocketStack, type_: int, proto: int = 0, *, conn: TcpConnection | None = None
    ) -> None:
        super().__init__(stack, type_, proto, conn=conn)
        if self._type == SOCK_DGRAM:
            self._pcb = UdpPcb(v6=True)
            self._pcb.waiter = self._waiter
            self._options[_V6ONLY] = 1
        else:
            self._options[_V6ONLY] = 0  # dual-stack, Linux's default
        if conn is not None:
            self._bound = (self._local6(conn), conn.local_port)

    @property
    def family(self) -> _stdlib_socket.AddressFamily:
        return AF_INET6

    # -- addresses ------------------------------------------------------------------------------
    @staticmethod
    def _sockaddr(ip: int, port: int) -> Any:
        """The kernel's AF_INET6 sockaddr: ``(host, port, flowinfo, scope_id)``."""
        return _format6(ip), port, 0, 0

    def _local6(self, conn: TcpConnection) -> int:
        """Our address of a connection as this socket shows it (an IPv4 one v4-mapped)."""
        if isinstance(conn, TcpConnection6):
            return conn.local_ip6
        return _V4MAPPED | self._stack.core.ip

    @staticmethod
    def _remote6(conn: TcpConnection) -> int:
        """The peer's address of a connection (the low 128 bits of the TCP layer's key, or an
        IPv4 one v4-mapped)."""
        remote = conn.remote_ip
        return remote & _ADDRESS6 if remote & IP6_KEY else _V4MAPPED | remote

    def getsockname(self) -> Any:
        self._check_open()
        if self._pcb is not None:
            return self._sockaddr(self._pcb.local_ip, self._pcb.local_port)
        if self._conn is not None:
            return self._sockaddr(self._local6(self._conn), self._conn.local_port)
        ip, port = self._bound or (0, 0)
        return self._sockaddr(ip, self._listener.port if self._listener is not None else port)

    def getpeername(self) -> Any:
        self._check_open()
        if self._pcb is not None:
            if not self._pcb.remote_port:
                raise _oserror(errno.ENOTCONN)
            return self._sockaddr(self._pcb.remote_ip, self._pcb.remote_port)
        if self._conn is not None and self._conn.established:
            return self._sockaddr(self._remote6(self._conn), self._conn.remote_port)
        raise _oserror(errno.ENOTCONN)

    async def _address(self, address: Any, *, local: bool) -> tuple[int, int]:
        """``(ip, port)`` for an AF_INET6 sockaddr: a numeric host at once (no checkpoint: every
        ``sendto`` passes here), a name through this run's resolver (AF_INET6 answers)."""
        if isinstance(address, tuple) and 2 <= len(address) <= 4:
            host = address[0]
            if isinstance(host, str) and host and not _numeric6(host):  # (cached: no second parse)
                flags = _stdlib_socket.AI_PASSIVE if local else 0
                found = await trio.socket.getaddrinfo(host, address[1], AF_INET6, self._type, 0, flags)
                address = (found[0][-1][0], *address[1:])
        ip, port = _ipv6(address)
        if ip == _LOOPBACK6:
            mapped = self._map_loopback6(local=local, port=port)
            if mapped:
                return mapped, port
        return ip, port

    def _map_loopback6(self, *, local: bool, port: int) -> int:
        """``::1`` under :func:`map_loopback_to`, as 127.0.0.0/8 there: the mapped stack's IPv6
        address (a local one moves this still unused socket to that stack); for a destination,
        the stack of this run with something on ``port``, the mapped one first.  0: the kernel's."""
        mapped = _loopback.get().stack
        if mapped is None:
            return 0
        if local:
            if mapped is not self._stack and self._unused():
                self._move_to(mapped)
            return _global6(mapped)
        installed = _run_stacks.get()
        for stack in [mapped, *(installed.stacks if installed is not None else ())]:
            core = stack.core
            if port in (core.tcp.listeners6 if self._type == SOCK_STREAM else core.udp.pcbs6):
                return _global6(stack)
        return _global6(mapped)

    def _move_to(self, stack: SocketStack) -> None:
        super()._move_to(stack)
        if self._pcb is not None:  # (the base made an IPv4 one)
            self._pcb = UdpPcb(v6=True)
            self._pcb.waiter = self._waiter

    def _kernel_for6(self, ip: int, *, local: bool) -> bool:
        """Whether an address hands this still unused socket to the kernel: ``::1``, or a
        destination the stack cannot route while the run's factory has ``kernel_unroutable``."""
        if not self._unused():
            return False
        if ip == _LOOPBACK6:
            return True
        if ip >> 32 == 0xFFFF and self._pcb is None:
            return self._kernel_for(ip & _V4, local=local)  # a dual-stack socket's IPv4 peer
        if local or ip == 0:
            return False
        installed = _run_stacks.get()
        return installed is not None and installed.factory.kernel_unroutable and not self._routes6(ip)

    def _routes6(self, ip: int) -> bool:
        """Whether the stack can send to ``ip``: ours, on-link, or through a default router."""
        ip6 = self._stack.core.ip6
        if ip6 is None:
            return False
        now = trio.current_time()
        return (
            ip in ip6.addresses
            or ip6.on_link(ip, now)
            or bool(ip6.default_router and now < ip6.router_expires)
        )

    def _check_v4mapped(self, ip: int) -> None:
        if ip >> 32 == 0xFFFF:
            raise _oserror(errno.ENETUNREACH, "a v4-mapped address on an IPV6_V6ONLY socket")

    async def bind(self, address: Any) -> None:
        ip, port = await self._address(address, local=True)
        if self._kernel_for6(ip, local=True):
            await self._to_kernel().bind(address)
            return
        await trio.lowlevel.checkpoint()
        self._bind6(ip, port)

    def _bind_now(self, address: Any) -> None:
        self._bind6(*_ipv6(address))

    def _bind6(self, ip: int, port: int) -> None:
        self._check_open()
        if self._pcb is None:
            self._bind_stream6(ip, port)
            return
        if self._pcb.local_port:
            raise _oserror(errno.EINVAL, "already bound")
        if ip >> 32 == 0xFFFF:
            raise _oserror(errno.EADDRNOTAVAIL, "a v4-mapped address on an IPV6_V6ONLY socket")
        self._stack.core.udp.bind(self._pcb, ip, port)

    def _bind_stream6(self, ip: int, port: int) -> None:
        """``bind`` of a stream socket: ``::`` or one of our IPv6 addresses (the port is the
        TCP layer's, as an AF_INET socket's; taken if a listener of a family this socket
        would serve has it)."""
        core = self._stack.core
        tcp = core.tcp
        ip6 = core.ip6
        if ip and not (ip6 is not None and ip in ip6.addresses):
            raise _oserror(errno.EADDRNOTAVAIL, _format6(ip))
        if self._bound is not None:
            raise _oserror(errno.EINVAL, "already bound")
        v6only = bool(self._options.get(_V6ONLY))
        taken = port in tcp.listeners6 or (not v6only and port in tcp.listeners) or port in tcp.bound_ports
        if port and taken and not self._reuse_port:
            raise _oserror(errno.EADDRINUSE)
        if port == 0:
            port = tcp.port_selector(0, 0)
        tcp.bound_ports.add(port)
        self._bound = (ip, port)

    def _listener_table(self) -> dict[int, TcpListener]:
        return self._stack.core.tcp.listeners6

    def _new_listener(self, port: int, backlog: int) -> TcpListener:
        return self._stack.core.tcp.listen6(port, backlog, bool(self._options.get(_V6ONLY)))

    def _accepted(self, conn: TcpConnection) -> tuple[StackSocket, Any]:
        sock = StackSocket6(self._stack, SOCK_STREAM, self._proto, conn=conn)
        if self._options:
            sock._inherit(self._options)
        return sock, self._sockaddr(self._remote6(conn), conn.remote_port)

    def _tcp_connect(self, ip: int, port: int, local_port: int) -> TcpConnection:
        """An IPv6 connection (``tcp.connect6``), or an IPv4 one for a v4-mapped address."""
        tcp = self._stack.core.tcp
        now = trio.current_time()
        sndbuf, rcvbuf = self._buffer(True), self._buffer(False)
        if ip <= _V4 or ip >> 32 == 0xFFFF:
            return tcp.connect(ip & _V4, port, now, local_port, send_buffer=sndbuf, receive_buffer=rcvbuf)
        local = self._bound[0] if self._bound is not None else 0
        return tcp.connect6(
            ip, port, now, local_port, local_ip=local, send_buffer=sndbuf, receive_buffer=rcvbuf
        )

    async def connect(self, address: Any) -> None:
        try:
            ip, port = await self._address(address, local=False)
            if self._kernel_for6(ip, local=False):
                await self._to_kernel().connect(address)
                return
            if self._pcb is not None or self._options.get(_V6ONLY):
                self._check_v4mapped(ip)
            await self._connect(ip, port, address)
        except trio.Cancelled:
            self.close()  # as trio: a connect cancelled leaves no half-made socket
            raise

    async def sendto(self, data: Any, *args: Any) -> int:
        """``sendto(data, address)`` or ``sendto(data, flags, address)``, as the kernel's."""
        if len(args) not in (1, 2):
            raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")
        flags = args[0] if len(args) == 2 else 0
        ip, port = await self._address(args[-1], local=False)
        if self._kernel_for6(ip, local=False):
            return await self._to_kernel().sendto(data, flags, args[-1])
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._check_open()
            if flags:
                self._check_flags(flags, _SEND_FLAGS)
            self._check_v4mapped(ip)
            if port == 0:
                raise _oserror(errno.EINVAL, "port 0")  # (0 means "the connected peer" below)
        except OSError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        return await self._udp_send(data, (ip, port), flags)

    # -- options ----------------------------------------------------------------------------------
    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if (level, optname) == _V6ONLY and value is not None and self._pcb is None:
            self._check_open()
            if self._bound is not None or self._conn is not None:
                raise _oserror(errno.EINVAL, "IPV6_V6ONLY is set before bind")  # as Linux
        elif (level, optname) == _V6ONLY and value is not None:
            self._check_open()
            on = int.from_bytes(bytes(value)[:4] or b"\0", "little") if not isinstance(value, int) else value
            if not on:
                raise _oserror(
                    errno.EOPNOTSUPP,
                    "IPV6_V6ONLY 0: the stack's IPv6 sockets are IPv6-only (FreeBSD's default); "
                    "open an AF_INET socket for IPv4",
                )
        super().setsockopt(level, optname, value, optlen)


def _global6(stack: SocketStack) -> int:
    """A usable non-link-local IPv6 address of ``stack`` (0 if it has none)."""
    ip6 = stack.core.ip6
    if ip6 is None:
        return 0
    return next((a for a, ours in ip6.addresses.items() if not ours.tentative and not is_link_local(a)), 0)


def _numeric6(host: str) -> bool:
    try:
        _parse6(host)
    except ValueError:
        return False
    return True
