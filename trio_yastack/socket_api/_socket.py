"""trio sockets over the stack: a ``trio.socket.SocketType`` for AF_INET stream and datagram
sockets, the socket factory and hostname resolver that ``install_stack`` installs for a trio run
(``open_stack`` calls it), and the choice of stack per task (``use_stack``).

With these installed, ``trio.socket.socket()``, ``trio.open_tcp_stream``, ``trio.serve_tcp``,
``trio.SSLStream`` and everything built on them run over the user-space stack unchanged.  Tasks
park on the stack's objects and the poll loop wakes them once per burst (see ``_waiter.py``);
nothing here polls or makes a system call.

A socket whose ``bind``, ``connect`` or first ``sendto`` names loopback (127.0.0.0/8), or, with
``kernel_unroutable``, a destination the stack cannot route, becomes a kernel socket at that
call (:class:`_KernelSocket`): the factory cannot know the address when the socket is made.
"""

from __future__ import annotations

import errno
import functools
import itertools
import operator
import os
import socket as _stdlib_socket
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, TypeVar

import trio

from trio_yastack.stack import TcpConnection, TcpListener, UdpPcb
from trio_yastack.stack.tcp import TcpState

from ._resolver import StackHostnameResolver
from ._stack import SocketStack
from ._waiter import Waiter

#: the state whose empty receive buffer means "wait" (``TcpConnection.receive``'s None), as a plain int
_ESTABLISHED = int(TcpState.ESTABLISHED)

__all__ = [
    "StackHostnameResolver",
    "StackSocket",
    "StackSocketFactory",
    "current_resolver",
    "current_stack",
    "install_stack",
    "listening_socket",
    "map_loopback_to",
    "use_stack",
]

AF_INET = _stdlib_socket.AF_INET
AF_INET6 = _stdlib_socket.AF_INET6
SOCK_STREAM = _stdlib_socket.SOCK_STREAM
SOCK_DGRAM = _stdlib_socket.SOCK_DGRAM
_TYPE_MASK = ~(getattr(_stdlib_socket, "SOCK_NONBLOCK", 0) | getattr(_stdlib_socket, "SOCK_CLOEXEC", 0))
_SOL_SOCKET = _stdlib_socket.SOL_SOCKET
_IPPROTO_TCP = _stdlib_socket.IPPROTO_TCP
_TCP_KEEPIDLE = getattr(_stdlib_socket, "TCP_KEEPIDLE", 4)
_TCP_KEEPINTVL = getattr(_stdlib_socket, "TCP_KEEPINTVL", 5)
_TCP_KEEPCNT = getattr(_stdlib_socket, "TCP_KEEPCNT", 6)
_TCP_NOTSENT_LOWAT = getattr(_stdlib_socket, "TCP_NOTSENT_LOWAT", 25)
_SO_REUSEPORT = getattr(_stdlib_socket, "SO_REUSEPORT", 15)
_KINDS = {kind.value: kind for kind in (_stdlib_socket.SOCK_STREAM, _stdlib_socket.SOCK_DGRAM)}
_NODELAY = (_IPPROTO_TCP, _stdlib_socket.TCP_NODELAY)
_ACCEPTCONN = (_SOL_SOCKET, _stdlib_socket.SO_ACCEPTCONN)
#: the options a connection holds itself (the rest are read by the socket when it needs them)
_CONNECTION_OPTIONS = frozenset(
    {
        _NODELAY,
        (_SOL_SOCKET, _stdlib_socket.SO_SNDBUF),
        (_SOL_SOCKET, _stdlib_socket.SO_RCVBUF),
        (_SOL_SOCKET, _stdlib_socket.SO_KEEPALIVE),
        (_IPPROTO_TCP, _TCP_KEEPIDLE),
        (_IPPROTO_TCP, _TCP_KEEPINTVL),
        (_IPPROTO_TCP, _TCP_KEEPCNT),
    }
)
_fds = itertools.count(1 << 20)  # descriptor numbers that cannot collide with the kernel's small ones

_S = TypeVar("_S", bound=SocketStack)


@dataclass(slots=True)
class _RunStacks:
    """The stacks installed in one trio run, oldest first (the first is every task's default),
    the factory and resolver the first of them installed, and what those replaced."""

    stacks: list[SocketStack]
    factory: StackSocketFactory
    resolver: StackHostnameResolver
    replaced: tuple[trio.abc.SocketFactory | None, trio.abc.HostnameResolver | None]


#: the stack chosen with use_stack() for the current task (and the tasks it starts)
_current: ContextVar[SocketStack | None] = ContextVar("trio_yastack_current_stack", default=None)
#: this trio run's stacks and the socket factory serving them (None: none installed)
_run_stacks: trio.lowlevel.RunVar[_RunStacks | None] = trio.lowlevel.RunVar(
    "trio_yastack_run_stacks", default=None
)


def current_stack() -> SocketStack:
    """The stack that ``trio.socket.socket()`` uses in this task: the one chosen with
    :func:`use_stack`, else the first stack installed in this trio run."""
    stack = _current.get()
    if stack is not None:
        return stack
    installed = _run_stacks.get()
    if installed is None or not installed.stacks:
        raise RuntimeError(
            "no trio_yastack stack is open in this trio run (use `async with open_stack(...)`)"
        )
    return installed.stacks[0]


def current_resolver() -> StackHostnameResolver:
    """The hostname resolver the stacks of this trio run installed (its ``hosts``,
    ``nameservers``, ``config`` and ``stats``)."""
    installed = _run_stacks.get()
    if installed is None:
        raise RuntimeError("no trio_yastack stack is open in this trio run (use `open_stack`)")
    return installed.resolver


@contextmanager
def use_stack(stack: _S) -> Iterator[_S]:
    """Make ``stack`` the one trio's socket factory uses in this task and the tasks it spawns."""
    token = _current.set(stack)
    try:
        yield stack
    finally:
        _current.reset(token)


@contextmanager
def install_stack(
    stack: SocketStack,
    *,
    hosts: Mapping[str, str | Sequence[str]] | None = None,
    kernel_fallback: bool = False,
    nameservers: list[str] | tuple[str, ...] = (),
    system_resolver: bool = False,
    kernel_unroutable: bool = False,
) -> Iterator[None]:
    """Serve ``stack``'s sockets through trio's own interface for the ``with`` block.

    The first stack of a trio run installs a :class:`StackSocketFactory` and a
    :class:`StackHostnameResolver` (with ``hosts``, ``nameservers`` for DNS over the stack and,
    with ``system_resolver``, the system's resolver last) and becomes every task's default stack;
    a later one adds its ``hosts`` and ``nameservers`` to the same resolver, and may not ask for a
    different ``kernel_fallback``.  ``kernel_unroutable`` hands a destination no stack route
    reaches to a kernel socket (loopback always goes to the kernel).  When the last one leaves,
    trio's previous factory and resolver are put back.  (``open_stack`` does this; call it
    yourself only for a stack of your own making.)
    """
    installed = _run_stacks.get()
    if installed is None:
        factory = StackSocketFactory(kernel_fallback, kernel_unroutable=kernel_unroutable)
        resolver = StackHostnameResolver(hosts, nameservers=nameservers, system_resolver=system_resolver)
        replaced = (
            trio.socket.set_custom_socket_factory(factory),
            trio.socket.set_custom_hostname_resolver(resolver),
        )
        installed = _RunStacks([], factory, resolver, replaced)
        _run_stacks.set(installed)
    else:
        if kernel_fallback != installed.factory.kernel_fallback:
            raise ValueError(
                f"kernel_fallback={kernel_fallback} differs from the {installed.factory.kernel_fallback} "
                "that the first stack of this trio run installed"
            )
        installed.resolver.add_hosts(hosts or {})
        installed.resolver.add_nameservers(nameservers)
        installed.factory.kernel_unroutable |= kernel_unroutable
        installed.resolver.system_resolver |= system_resolver
    installed.stacks.append(stack)
    installed.resolver.ipv6 |= stack.core.ip6 is not None  # AF_UNSPEC lookups ask AAAA too
    try:
        yield
    finally:
        installed.stacks.remove(stack)
        if not installed.stacks:
            trio.socket.set_custom_socket_factory(installed.replaced[0])
            trio.socket.set_custom_hostname_resolver(installed.replaced[1])
            _run_stacks.set(None)


def listening_socket(stack: SocketStack, port: int, backlog: int = 128) -> StackSocket:
    """A TCP socket on ``stack`` bound to ``port`` (0: an ephemeral one) of every address and
    listening, made without waiting: binding on a user-space stack is a table entry, so no
    checkpoint is needed (``bind`` is async only because trio's ``SocketType`` says so).
    ``trio.SocketListener(listening_socket(...))`` is ``Stack.tcp_listen``."""
    sock = StackSocket(stack, SOCK_STREAM)
    try:
        sock._bind_now(("", port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _oserror(code: int, detail: str = "") -> OSError:
    """``OSError`` as the kernel would raise it (the errno's own text), with an optional detail."""
    return OSError(code, os.strerror(code) + (f" ({detail})" if detail else ""))


def _ipv4(address: Any, *, what: str = "address") -> tuple[int, int]:
    """``(ip, port)`` from a Python AF_INET sockaddr with a numeric host (``_resolve`` has
    turned names into numbers first)."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise ValueError(f"{what} should be a (host, port) tuple")  # trio's words and class
    host, port = address
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise OverflowError("port must be 0-65535.")
    if host in ("", None):
        return 0, port
    try:
        return (_ip_number(host) if host.__class__ is str else int(IPv4Address(host))), port
    except ValueError:
        raise _oserror(errno.EINVAL, f"not a numeric IPv4 address: {host!r}; resolve names first") from None


@functools.lru_cache(maxsize=4096)
def _ip_number(host: str) -> int:
    """``int(IPv4Address(host))``, remembered (a ValueError is not): every connect and
    ``sendto`` names its peer as text, a client names the same few again and again, and the
    ``ipaddress`` parse costs more than the rest of the address check.  The same in every trio
    run, so one bounded table for the process keeps no per-run state (as :func:`_ip_text`)."""
    return int(IPv4Address(host))


@functools.lru_cache(maxsize=4096)
def _ip_text(ip: int) -> str:
    """``str(IPv4Address(ip))``, remembered: an accept reports its peer's address as text, and a
    server under churn sees the same few clients again and again (formatting an address costs
    more than the rest of the accepted socket).  The text of an integer, the same in every trio
    run, so one bounded table for the process keeps no per-run state."""
    return str(IPv4Address(ip))


def _is_loopback(ip: int) -> bool:
    """127.0.0.0/8: the kernel's, never the stack's (YAStack's HOST path)."""
    return ip >> 24 == 127


#: flags ``send``/``sendto`` accept: MSG_MORE (UDP: corks the datagram, TCP: a hint), and the
#: ones that change nothing for a socket that never blocks a thread or raises SIGPIPE
_SEND_FLAGS = (
    getattr(_stdlib_socket, "MSG_MORE", 0)
    | getattr(_stdlib_socket, "MSG_DONTWAIT", 0)
    | getattr(_stdlib_socket, "MSG_NOSIGNAL", 0)
)
_MSG_MORE = getattr(_stdlib_socket, "MSG_MORE", 0)
#: a plain int: ``flags & MSG_PEEK`` with the enum member runs ``Flag.__and__`` and makes a
#: ``MsgFlag`` on every ``recv`` (1 % of a keep-alive responder's CPU)
_MSG_PEEK = int(_stdlib_socket.MSG_PEEK)
_RECV_FLAGS = _MSG_PEEK | getattr(_stdlib_socket, "MSG_DONTWAIT", 0)
_MAX_UDP_PAYLOAD = 65507  # an IPv4 datagram's payload at most (a corked one is bounded by it)


class _Loopback:
    """Where 127.0.0.0/8 goes in this trio run: the kernel (the default), or, for suites
    written against loopback (trio's own tests), a stack's own address (see
    :func:`map_loopback_to`)."""

    __slots__ = ("stack",)

    def __init__(self, stack: SocketStack | None) -> None:
        self.stack = stack


_loopback: trio.lowlevel.RunVar[_Loopback] = trio.lowlevel.RunVar(
    "trio_yastack_loopback", default=_Loopback(None)
)


@contextmanager
def map_loopback_to(stack: SocketStack) -> Iterator[None]:
    """Within the block, 127.0.0.0/8 on a stack socket means ``stack``'s address instead of the
    kernel's loopback: a socket bound to it moves to ``stack``, and a connect or sendto to it
    goes to ``stack``'s address.  For running code that assumes loopback (trio's own socket
    tests, ``tests/test_trio_suite.py``) over the stacks, not for production use."""
    previous = _loopback.get()
    _loopback.set(_Loopback(stack))
    try:
        yield
    finally:
        _loopback.set(previous)


def _clock_now() -> Callable[[], float]:
    """The current run's ``clock.current_time``: what ``trio.current_time()`` calls, through
    two wrappers less (a socket made outside a run falls back to ``trio.current_time``)."""
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:
        return trio.current_time


class StackSocket(trio.socket.SocketType):
    """An AF_INET socket on a trio_yastack stack (TCP for SOCK_STREAM, UDP for SOCK_DGRAM)."""

    def __init__(
        self,
        stack: SocketStack,
        type_: int,
        proto: int = 0,
        *,
        conn: TcpConnection | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        """``conn``: an accepted connection; ``now``: the run's clock when the caller has it
        (an accepting socket hands its own down: same run, and no lookup per connection)."""
        super().__init__()
        self._stack = stack
        #: the poll loop's doorbell, called after each send and read (bound once, not looked up)
        self._kick = stack.kick
        #: trio.current_time() without its two wrappers (the run's clock, bound once): each
        #: send and read passes the time to the stack
        self._now = now or _clock_now()
        self._type = type_ & _TYPE_MASK
        if self._type not in (SOCK_STREAM, SOCK_DGRAM):
            raise _oserror(errno.EPROTONOSUPPORT, "only SOCK_STREAM and SOCK_DGRAM")
        self._proto = proto or (
            _stdlib_socket.IPPROTO_TCP if self._type == SOCK_STREAM else _stdlib_socket.IPPROTO_UDP
        )
        self._fd = next(_fds)
        self._waiter = Waiter()
        self._conn: TcpConnection | None = conn
        self._listener: TcpListener | None = None
        self._pcb: UdpPcb | None = None
        self._bound: tuple[int, int] | None = None
        self._shut_wr = False
        self._shut_rd = False
        self._options: dict[tuple[int, int], int] = {}
        self._raw_options: dict[tuple[int, int], bytes] = {}  # struct-valued options, as given
        self._error_reported = False  # the connection's error was raised once (SO_ERROR reads it once)
        self._receiver: object = None  # the task parked to receive (or accept), if any
        self._sender: object = None  # the task parked to send, if any
        self._inheritable = False
        self._corked = bytearray()  # UDP: payload sent with MSG_MORE, not yet a datagram
        self._kernel: trio.socket.SocketType | None = None  # set by _to_kernel (see _KernelSocket)
        if conn is not None:
            conn.waiter = self._waiter
            self._bound = (stack.core.ip, conn.local_port)
        if self._type == SOCK_DGRAM:
            self._pcb = UdpPcb()
            self._pcb.waiter = self._waiter

    # -- identity -------------------------------------------------------------------------------
    @property
    def family(self) -> _stdlib_socket.AddressFamily:
        return _stdlib_socket.AF_INET

    @property
    def type(self) -> _stdlib_socket.SocketKind:
        return _KINDS[self._type]  # read by every trio.SocketStream/SocketListener made on it

    @property
    def proto(self) -> int:
        return self._proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self._shut_wr

    def fileno(self) -> int:
        return self._fd

    @property
    def _sock(self) -> StackSocket:
        """What libraries that reach for trio's private ``_sock`` (the stdlib socket inside a
        trio socket) get: this socket itself, which answers ``family``, ``type``,
        ``getsockname()``, ``getpeername()``, ``fileno()`` and the options as that would.
        anyio's trio backend reads it for every ``SocketAttribute`` (issue 21); its
        ``raw_socket`` attribute is therefore this object, not a ``socket.socket``."""
        return self

    @property
    def connection(self) -> TcpConnection | None:
        """The stack's TCP connection behind this socket (``None`` for UDP and listening
        sockets, and before ``connect``): its state, sequence numbers, buffers and counters, as
        ``ss -ti`` shows a kernel socket's.  For tests, tools and benchmarks to read; calling its
        methods would bypass the socket and the wake-ups of the tasks parked on it."""
        return self._conn

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else ("listening" if self._listener else "open")
        return f"<trio_yastack socket {self.type.name} {state} on {self._stack.address}>"

    def _check_open(self) -> None:
        if self._fd < 0:
            raise _oserror(errno.EBADF)

    # -- addresses ------------------------------------------------------------------------------
    def getsockname(self) -> tuple[str, int]:
        self._check_open()
        if self._pcb is not None:
            return str(IPv4Address(self._pcb.local_ip)), self._pcb.local_port
        if self._conn is not None:  # the stack's one address (core.ip is int(stack.address))
            return _ip_text(self._stack.core.ip), self._conn.local_port
        if self._listener is not None:
            ip = self._bound[0] if self._bound else 0
            return str(IPv4Address(ip)), self._listener.port
        ip, port = self._bound or (0, 0)
        return str(IPv4Address(ip)), port

    def getpeername(self) -> tuple[str, int]:
        self._check_open()
        if self._pcb is not None and self._pcb.remote_port:
            return str(IPv4Address(self._pcb.remote_ip)), self._pcb.remote_port
        if self._conn is not None and self._conn.established:
            return _ip_text(self._conn.remote_ip), self._conn.remote_port
        raise _oserror(errno.ENOTCONN)

    async def _resolve(self, address: Any, *, local: bool) -> tuple[str, int]:
        """A numeric ``(host, port)`` for ``address``, as trio's ``_resolve_address_nocp``:
        a malformed address is a ValueError, a name or a string port goes through this run's
        resolver (``trio.socket.getaddrinfo``), a numeric one returns at once (no checkpoint:
        every ``sendto`` passes here)."""
        if not isinstance(address, tuple) or len(address) != 2:
            raise ValueError("address should be a (host, port) tuple")
        host, port = address
        if isinstance(port, int) and isinstance(host, str):
            try:
                _stdlib_socket.inet_pton(AF_INET, host)
            except OSError:
                pass
            else:
                return host, port
        if host == "":
            host = None
        elif host == "<broadcast>":
            host = "255.255.255.255"
        flags = _stdlib_socket.AI_PASSIVE if local else 0
        found = await trio.socket.getaddrinfo(host, port, AF_INET, self._type, self._proto, flags)
        normed = found[0][-1]
        return str(normed[0]), int(normed[1])

    @staticmethod
    def _sockaddr(ip: int, port: int) -> Any:
        """The Python sockaddr of a datagram's source: ``(host, port)`` for AF_INET."""
        return str(IPv4Address(ip)), port

    def _map_loopback(self, ip: int, *, local: bool, port: int = 0) -> int | None:
        """The address a loopback ``ip`` stands for when :func:`map_loopback_to` is in force;
        ``None``: the kernel's.  A local one also moves this still unused socket to that stack.
        A destination is the stack of this run that has something on ``port`` (a listener for
        TCP, a bound socket for UDP), the mapped stack first: as on loopback, where every
        address of the host reaches every listener."""
        mapped = _loopback.get().stack
        if mapped is None:
            return None
        if local:
            if mapped is not self._stack and self._unused():
                self._move_to(mapped)
            return mapped.core.ip
        installed = _run_stacks.get()
        for stack in [mapped, *(installed.stacks if installed is not None else ())]:
            core = stack.core
            if port in (core.tcp.listeners if self._type == SOCK_STREAM else core.udp.pcbs):
                return int(core.ip)
        return int(mapped.core.ip)

    def _home(self, ip: int) -> None:
        """Bind to another stack's address moves a still unused socket to that stack (the
        factory made it on the task's default stack, before the address was known)."""
        if ip in (0, self._stack.core.ip) or not self._unused():
            return
        installed = _run_stacks.get()
        for stack in installed.stacks if installed is not None else ():
            if stack.core.ip == ip:
                self._move_to(stack)
                return

    def _move_to(self, stack: SocketStack) -> None:
        """Re-home a socket nothing has been done with yet (bind decides where it lives)."""
        if self._pcb is not None:
            self._stack.core.udp.close(self._pcb)
            self._pcb = UdpPcb()
            self._pcb.waiter = self._waiter
        self._stack = stack
        self._kick = stack.kick

    def _routes(self, ip: int) -> bool:
        """Whether the stack can send to ``ip`` (on-link, our own, broadcast, or via a gateway)."""
        core = self._stack.core
        layer = core.ip_layer
        return bool(ip == core.ip or ip & layer.netmask == layer.network or ip == 0xFFFFFFFF or core.gateway)

    def _unused(self) -> bool:
        """Not yet bound, connected or listening on the stack: it may still become the kernel's."""
        return (
            self._bound is None
            and self._conn is None
            and self._listener is None
            and (self._pcb is None or not self._pcb.local_port)
        )

    def _to_kernel(self) -> trio.socket.SocketType:
        """Make this socket a kernel socket from now on (loopback, or a destination the stack
        has no route to under ``kernel_unroutable``): the options set so far are set on it, and
        every call from here goes to it (the class becomes :class:`_KernelSocket`), so
        ``getsockname``, options and errors are the kernel's own."""
        kernel = trio.socket.from_stdlib_socket(_stdlib_socket.socket(self.family, self._type, self._proto))
        try:
            for (level, name), value in self._options.items():
                raw = self._raw_options.get((level, name))
                kernel.setsockopt(level, name, raw if raw is not None else value)
        except BaseException:
            kernel.close()
            raise
        if self._pcb is not None:
            self._stack.core.udp.close(self._pcb)
            self._pcb = None
        self._kernel = kernel
        self.__class__ = _KernelSocket
        return kernel

    def _kernel_for(self, ip: int, *, local: bool) -> bool:
        """Whether an address decides this still unused socket for the kernel: loopback
        (unless mapped to a stack), or, for a destination, no route on the stack while the
        run's factory has ``kernel_unroutable``."""
        if not self._unused():
            return False
        if _is_loopback(ip):
            return True
        if local or ip == 0:
            return False
        installed = _run_stacks.get()
        return installed is not None and installed.factory.kernel_unroutable and not self._routes(ip)

    async def bind(self, address: Any) -> None:
        address = await self._resolve(address, local=True)
        ip = int(IPv4Address(address[0]))
        if _is_loopback(ip):
            mapped = self._map_loopback(ip, local=True)
            if mapped is not None:
                address = (str(IPv4Address(mapped)), address[1])
            elif self._kernel_for(ip, local=True):
                await self._to_kernel().bind(address)
                return
        else:
            self._home(ip)
        await trio.lowlevel.checkpoint()
        self._bind_now(address)

    def _bind_now(self, address: Any) -> None:
        self._check_open()
        ip, port = _ipv4(address)
        core = self._stack.core
        if ip not in (0, core.ip):
            raise _oserror(errno.EADDRNOTAVAIL, str(IPv4Address(ip)))
        if self._bound is not None or (self._pcb is not None and self._pcb.local_port):
            raise _oserror(errno.EINVAL, "already bound")
        if self._pcb is not None:
            core.udp.bind(self._pcb, ip, port)
            return
        if port and (port in core.tcp.listeners or port in core.tcp.bound_ports) and not self._reuse_port:
            raise _oserror(errno.EADDRINUSE)  # listening, or bound by a socket yet to listen
        if port == 0:
            port = core.tcp.port_selector(0, 0)  # the kernel assigns the port at bind
        core.tcp.bound_ports.add(port)
        self._bound = (ip, port)

    @property
    def _reuse_port(self) -> bool:
        return bool(self._options.get((_SOL_SOCKET, _SO_REUSEPORT)))

    # -- TCP ------------------------------------------------------------------------------------
    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        if self._type != SOCK_STREAM:
            raise _oserror(errno.EOPNOTSUPP)
        if self._conn is not None:
            raise _oserror(errno.EINVAL, "connected")
        if self._listener is not None:
            self._listener.backlog = max(1, min(backlog, self._stack.core.config.tcp.max_backlog))
            return
        core = self._stack.core
        ip, port = self._bound or (0, 0)
        if port == 0:
            port = core.tcp.port_selector(0, 0)
        core.tcp.bound_ports.discard(port)
        shared = self._listener_table().get(port)
        if shared is not None and self._reuse_port and shared.reuse_port:
            shared.sockets += 1  # SO_REUSEPORT: the sockets share one accept queue
            self._listener = shared
            # ... and its waiter: the poll loop wakes only the listener's (the first socket's),
            # so an accept parked on a waiter of its own never woke for a connection queued
            # while it waited (nor after the first socket closed).  A listening socket parks
            # on nothing else; a close wakes the others' accepts too, which re-check and park.
            if isinstance(shared.waiter, Waiter):  # (the first socket's, set below)
                self._waiter = shared.waiter
            self._bound = (ip, port)
            return
        self._listener = self._new_listener(port, max(backlog, 1))
        self._listener.reuse_port = self._reuse_port
        self._listener.waiter = self._waiter
        self._listener.send_buffer = self._buffer(True)
        self._listener.receive_buffer = self._buffer(False)
        self._bound = (ip, port)

    def _listener_table(self) -> dict[int, TcpListener]:
        """The TCP layer's listeners of this socket's family (see ``StackSocket6``)."""
        return self._stack.core.tcp.listeners

    def _new_listener(self, port: int, backlog: int) -> TcpListener:
        return self._stack.core.tcp.listen(port, backlog)

    async def accept(self) -> tuple[StackSocket, tuple[str, int]]:
        await trio.lowlevel.checkpoint_if_cancelled()
        listener = self._listener
        if self._fd < 0 or listener is None:
            await trio.lowlevel.cancel_shielded_checkpoint()  # trio checkpoints before it raises
            self._check_open()
            raise _oserror(errno.EINVAL, "not listening")
        while True:
            conn = listener.accept()
            if conn is not None:
                accepted = self._accepted(conn)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return accepted
            await self._wait()
            self._check_open()  # closed while we waited: EBADF (trio: ClosedResourceError)

    def stream_defaults(self) -> None:
        """What ``trio.SocketStream``'s constructor sets on its socket, set at once: TCP_NODELAY
        on and a 16 KiB TCP_NOTSENT_LOWAT, as ``setsockopt`` would store them.  For a server
        that wraps each accepted connection in a stream (the ASGI server's accept loop), where
        the two ``setsockopt`` calls under trio's ``suppress`` blocks were most of the ~1.5 us
        a stream cost a short connection."""
        self._check_open()
        options = self._options
        options[_NODELAY] = 1
        options[(_IPPROTO_TCP, _TCP_NOTSENT_LOWAT)] = 1 << 14
        conn = self._conn
        if conn is not None:
            conn.nodelay = True

    def accept_nowait(self) -> tuple[StackSocket, tuple[str, int]]:
        """``accept()`` without waiting and without a scheduler pass: the oldest connection of
        the accept queue, or ``BlockingIOError`` (EAGAIN) when it is empty, as a non-blocking
        kernel socket's ``accept``.  A server drains the queue with it per wake-up
        (``wait_acceptable`` between batches), so a burst of new connections costs one pass
        of the scheduler, not one each.  Like ``accept``, it raises ``OSError`` (EINVAL) on a
        socket that is not listening and EBADF on a closed one."""
        listener = self._listener
        if self._fd < 0 or listener is None:
            self._check_open()
            raise _oserror(errno.EINVAL, "not listening")
        conn = listener.accept()
        if conn is None:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return self._accepted(conn)

    async def wait_acceptable(self) -> None:
        """Wait until ``accept_nowait`` has a connection to return (or the socket is closed;
        then ``accept_nowait`` raises).  A checkpoint, as trio's ``wait_readable``: it always
        yields to the scheduler.  Like ``accept``, it parks on a listener the stack closed
        under the socket until the socket is closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        listener = self._listener
        if self._fd < 0 or listener is None or listener.accept_queue:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._wait()

    def _accepted(self, conn: TcpConnection) -> tuple[StackSocket, tuple[str, int]]:
        """The socket for a connection taken off the accept queue, and its peer's address."""
        sock = StackSocket(self._stack, SOCK_STREAM, self._proto, conn=conn, now=self._now)
        if self._options:
            sock._inherit(self._options)
        return sock, (_ip_text(conn.remote_ip), conn.remote_port)

    def _inherit(self, options: dict[tuple[int, int], int]) -> None:
        """An accepted socket takes the listening socket's options, as in the kernel: copied
        at once (they were checked when set on the listener), and the connection's own
        applied once (not once per option through ``setsockopt``)."""
        own = self._options
        own.update(options)
        own.pop(_ACCEPTCONN, None)
        if not _CONNECTION_OPTIONS.isdisjoint(own):
            self._apply_connection_options()

    async def connect(self, address: Any) -> None:
        # As trio: a connect cannot be taken back, so a cancelled one (or one whose address
        # does not resolve) closes the socket rather than leave it half-open.
        try:
            address = await self._resolve(address, local=False)
            ip, port = _ipv4(address)
            if _is_loopback(ip):
                mapped = self._map_loopback(ip, local=False, port=port)
                if mapped is not None:
                    ip = mapped
            if self._kernel_for(ip, local=False):
                await self._to_kernel().connect(address)
                return
            await self._connect(ip, port, address)
        except trio.Cancelled:
            self.close()
            raise

    async def _connect(self, ip: int, port: int, address: tuple[str, int]) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        core = self._stack.core
        if self._pcb is not None:
            core.udp.connect(self._pcb, ip, port)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        if self._conn is not None:
            raise _oserror(errno.EISCONN)
        if self._listener is not None:
            raise _oserror(errno.EINVAL, "listening")
        if ip == 0:
            ip = core.ip  # as the kernel: 0.0.0.0 means this host
        local_port = self._bound[1] if self._bound else 0
        core.tcp.bound_ports.discard(local_port)
        conn = self._tcp_connect(ip, port, local_port)
        conn.waiter = self._waiter
        self._conn = conn
        self._apply_connection_options()
        self._kick()
        waited = False
        try:
            while not conn.established:
                if conn.error or conn.state == 0:
                    error = conn.error or errno.ECONNREFUSED
                    self._error_reported = True
                    raise OSError(error, f"Error connecting to {address!r}: {os.strerror(error)}")
                await self._wait(sending=True)
                waited = True
        except BaseException:
            if conn.state != 0:
                conn.abort(trio.current_time())
                self._kick()
            raise
        if not waited:
            # One scheduler pass per connect, as trio's: a connect that parked had its pass
            # there (trio's returns right after its wait_writable); a second one was a task
            # step and a scheduler pass more for every connection
            await trio.lowlevel.checkpoint()

    def _tcp_connect(self, ip: int, port: int, local_port: int) -> TcpConnection:
        """The TCP layer's active open for this socket's family (see ``StackSocket6``)."""
        return self._stack.core.tcp.connect(
            ip,
            port,
            trio.current_time(),
            local_port,
            send_buffer=self._buffer(True),
            receive_buffer=self._buffer(False),
        )

    async def send(self, data: Any, flags: int = 0) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self._conn
        if conn is None or flags or self._fd < 0 or self._shut_wr:  # one test for the common case
            try:
                self._check_open()
                if flags:
                    self._check_flags(flags, _SEND_FLAGS)
                if self._pcb is None:
                    conn = self._stream_conn()
                    if self._shut_wr:
                        raise _oserror(errno.EPIPE)
            except OSError:
                await trio.lowlevel.cancel_shielded_checkpoint()  # trio checkpoints before it raises
                raise
            if self._pcb is not None:
                return await self._udp_send(data, None, flags)
        assert conn is not None
        kind = data.__class__
        if kind is memoryview and data.ndim == 1:
            size = data.nbytes  # what trio's send_all passes: a slice of a view of its data
        elif kind is bytes or kind is bytearray:
            size = len(data)
        else:
            with memoryview(data) as view:  # any other buffer object (array, mmap, a 0-d view, ...)
                return await self._send_stream(conn, view)
        if size:
            # The common case in line (one coroutine frame less per send): the send buffer
            # copies from what the application passed, so no view of our own is made and
            # released; the poll loop sends it at its next turn (kick wakes it if it sleeps).
            taken = conn.send(data, self._now())  # raises ECONNRESET & co with the kernel's errno
            if taken:
                self._kick()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return taken
        return await self._send_stream(conn, data)  # nothing to send, or no room: wait for it

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """``send()`` on a connected TCP socket without waiting and without a scheduler pass:
        the bytes the send buffer takes now, or ``BlockingIOError`` (EAGAIN) when it takes
        none, as a non-blocking kernel socket's ``send``; errors as ``send`` raises them.

        A server that closes right after its last write calls this, then ``shutdown(SHUT_WR)``,
        then checkpoints: the runtime sends the data at its next turn, so the FIN leaves in
        the data's segment (as Linux's FIN rides on the last queued segment) instead of a
        segment of its own after ``send``'s scheduler pass let the data leave alone."""
        conn = self._conn
        if conn is None or self._fd < 0 or self._shut_wr:
            self._check_open()
            conn = self._stream_conn()  # ENOTCONN: not a connected TCP socket
            raise _oserror(errno.EPIPE)
        if not (data.nbytes if data.__class__ is memoryview else len(data)):
            return 0
        taken = conn.send(data, self._now())  # raises ECONNRESET & co with the kernel's errno
        if not taken:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        self._kick()
        return taken

    async def _send_stream(self, conn: TcpConnection, data: bytes | bytearray | memoryview) -> int:
        if not (data.nbytes if data.__class__ is memoryview else len(data)):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return 0
        while True:
            taken = conn.send(data, self._now())  # raises ECONNRESET & co with the kernel's errno
            if taken:
                self._kick()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return taken
            await self._wait(sending=True)
            self._check_open()

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        bufsize = operator.index(bufsize)  # a float is a TypeError, as for a kernel socket
        conn = self._conn
        waited = False
        if (
            conn is not None
            and not flags
            and bufsize > 0
            and self._fd >= 0
            and not self._shut_rd
            and self._receiver is None
            and (rcvbuf := conn.rcvbuf)._head == len(rcvbuf._buf)
            and conn.state == _ESTABLISHED
            and not conn.error
            and not conn.shut_rd
        ):
            # Nothing to read on an open connection (what conn.receive would answer with None),
            # a keep-alive server's read after each response: park at once.  The park is this
            # call's checkpoint -- a task already cancelled is aborted there, as
            # checkpoint_if_cancelled would have raised, and nothing was taken -- so the
            # scheduler is not asked twice.
            await self._wait()
            waited = True
            self._check_open()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if conn is None or flags or self._fd < 0 or bufsize < 0:  # one test for the common case
            try:
                self._check_open()
                if flags:
                    self._check_flags(flags, _RECV_FLAGS)
                if self._pcb is None:
                    if bufsize < 0:
                        raise ValueError("negative buffersize in recv")
                    conn = self._stream_conn()
            except OSError:
                await trio.lowlevel.cancel_shielded_checkpoint()  # trio checkpoints before it raises
                raise
            if self._pcb is not None:
                return (await self._udp_receive(bufsize, flags))[0]
        assert conn is not None
        peek = flags & _MSG_PEEK
        while True:
            if self._shut_rd:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            rcvbuf = conn.rcvbuf
            if peek:  # MSG_PEEK: a copy, the data stays queued (empty: as a read that takes nothing)
                data = rcvbuf.peek(bufsize) if rcvbuf else conn.receive(bufsize, self._now())
            elif (
                rcvbuf._head == len(rcvbuf._buf)
                and conn.state == _ESTABLISHED
                and not conn.error
                and not conn.shut_rd
                and bufsize
            ):
                # Nothing there on an open connection: what conn.receive answers (None: wait),
                # without its call and the buffer's Python-level __len__ -- a keep-alive
                # server's every read after its response ends here and parks.
                data = None
            else:
                data = conn.receive(bufsize, self._now())  # what is there (empty: takes nothing)
            if data is not None:
                self._kick()
                if not waited:
                    # One scheduler pass per call, as trio's recv: a call that parked had its
                    # pass there (trio's _nonblocking_helper returns right after its wait too)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            await self._wait()
            waited = True
            self._check_open()

    def recv_nowait(self, bufsize: int) -> bytes:
        """``recv()`` on a connected TCP socket without waiting and without a scheduler pass:
        the bytes at hand (up to ``bufsize``), ``b""`` at the end of the stream, or
        ``BlockingIOError`` (EAGAIN) when nothing has arrived yet, as a non-blocking kernel
        socket's ``recv``; errors as ``recv`` raises them.  A server's task that has just
        started (its start was its scheduler pass) reads its connection's first bytes with it."""
        bufsize = operator.index(bufsize)
        conn = self._conn
        if conn is None or self._fd < 0 or bufsize < 0:
            self._check_open()
            if bufsize < 0:
                raise ValueError("negative buffersize in recv")
            conn = self._stream_conn()  # ENOTCONN: not a connected TCP socket
        if self._shut_rd:
            return b""
        data = conn.receive(bufsize, self._now())
        if data is None:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        self._kick()
        return data

    async def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        with memoryview(buffer) as view:
            data = await self.recv(nbytes or view.nbytes, flags)
            view[: len(data)] = data
            return len(data)

    def shutdown(self, flag: int) -> None:
        self._check_open()
        if self._conn is None and self._pcb is None:
            raise _oserror(errno.ENOTCONN)
        if flag in (_stdlib_socket.SHUT_WR, _stdlib_socket.SHUT_RDWR):
            self._shut_wr = True
            if self._conn is not None:
                self._conn.shutdown(self._now())  # the run's clock, bound at creation
                self._kick()
        if flag in (_stdlib_socket.SHUT_RD, _stdlib_socket.SHUT_RDWR):
            self._shut_rd = True
            self._waiter.wake()

    def _stream_conn(self) -> TcpConnection:
        if self._conn is None:
            raise _oserror(errno.ENOTCONN)
        return self._conn

    def _check_flags(self, flags: int, allowed: int) -> None:
        flags = operator.index(flags)
        if flags & ~allowed:
            raise _oserror(errno.EOPNOTSUPP, f"flags {flags:#x}")

    # -- UDP ------------------------------------------------------------------------------------
    async def sendto(self, data: Any, *args: Any) -> int:
        """``sendto(data, address)`` or ``sendto(data, flags, address)``, as the kernel's."""
        if len(args) not in (1, 2):
            raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")
        flags = args[0] if len(args) == 2 else 0
        address = await self._resolve(args[-1], local=False)
        ip, port = _ipv4(address)
        if _is_loopback(ip):
            mapped = self._map_loopback(ip, local=False, port=port)
            if mapped is not None:
                ip = mapped
        if self._pcb is not None and self._kernel_for(ip, local=False):
            return await self._to_kernel().sendto(data, flags, address)
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._check_open()
            if flags:
                self._check_flags(flags, _SEND_FLAGS)
            if self._pcb is None:
                if self._conn is not None:
                    raise _oserror(errno.EISCONN)
                raise _oserror(errno.ENOTCONN)
        except OSError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        return await self._udp_send(data, (ip, port), flags)

    async def _udp_send(self, data: Any, address: tuple[int, int] | None, flags: int = 0) -> int:
        """One datagram; with MSG_MORE the payload is held (corked, as Linux's UDP_CORK) and the
        next send without it sends everything held as one datagram."""
        assert self._pcb is not None
        ip, port = address if address is not None else (0, 0)
        with memoryview(data) as view:
            if self._corked or flags & _MSG_MORE:
                if len(self._corked) + view.nbytes > _MAX_UDP_PAYLOAD:
                    self._corked.clear()
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    raise _oserror(errno.EMSGSIZE)
                self._corked += view
                if flags & _MSG_MORE:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return view.nbytes
                payload, self._corked = bytes(self._corked), bytearray()
                size = view.nbytes
            else:
                payload, size = bytes(view), -1
        udp = self._stack.core.udp
        output = udp.udp6_output if self._pcb.v6 else udp.udp_output
        try:
            sent = output(self._pcb, payload, ip, port, trio.current_time())
        except OSError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        self._kick()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return sent if size < 0 else size

    async def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._pcb is None:
            data = await self.recv(bufsize, flags)
            return data, self.getpeername()
        try:
            self._check_open()
            if flags:
                self._check_flags(flags, _RECV_FLAGS)
        except OSError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        return await self._udp_receive(bufsize, flags)

    async def recvfrom_into(
        self, buffer: Any, nbytes: int = 0, flags: int = 0
    ) -> tuple[int, tuple[str, int]]:
        with memoryview(buffer) as view:
            data, address = await self.recvfrom(nbytes or view.nbytes, flags)
            view[: len(data)] = data
            return len(data), address

    async def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        """Gather ``buffers`` into one send (no ancillary data: the stack has none to carry)."""
        if ancdata:
            raise _oserror(errno.EOPNOTSUPP, "ancillary data")
        data = b"".join(bytes(buffer) for buffer in buffers)
        if address is not None:
            return await self.sendto(data, flags, address)
        return await self.send(data, flags)

    async def recvmsg(
        self, bufsize: int, ancbufsize: int = 0, flags: int = 0
    ) -> tuple[bytes, list[Any], int, tuple[str, int] | None]:
        """``(data, [], flags, address)``; MSG_TRUNC is set when a datagram did not fit."""
        if self._pcb is None:
            data = await self.recv(bufsize, flags)
            return data, [], 0, None
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._check_open()
            if flags:
                self._check_flags(flags, _RECV_FLAGS)
        except OSError:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        pcb = self._pcb
        while True:
            item = pcb.queue[0] if flags & _MSG_PEEK and pcb.queue else pcb.take()
            if item is not None:
                payload, (src, sport) = item
                truncated = _stdlib_socket.MSG_TRUNC if len(payload) > bufsize else 0
                await trio.lowlevel.cancel_shielded_checkpoint()
                return payload[:bufsize], [], truncated, self._sockaddr(src, sport)
            if pcb.so_error:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise _oserror(pcb.take_error())
            await self._wait()
            self._check_open()

    async def recvmsg_into(
        self, buffers: Any, ancbufsize: int = 0, flags: int = 0
    ) -> tuple[int, list[Any], int, tuple[str, int] | None]:
        """``recvmsg`` scattered into ``buffers`` in order: ``(nbytes, [], flags, address)``."""
        views = [memoryview(buffer).cast("B") for buffer in buffers]
        try:
            room = sum(view.nbytes for view in views)
            data, ancdata, msg_flags, address = await self.recvmsg(room, ancbufsize, flags)
            offset = 0
            for view in views:
                piece = data[offset : offset + view.nbytes]
                view[: len(piece)] = piece
                offset += len(piece)
            return len(data), ancdata, msg_flags, address
        finally:
            for view in views:
                view.release()

    async def _udp_receive(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        pcb = self._pcb
        assert pcb is not None
        peek = flags & _MSG_PEEK
        while True:
            item = pcb.queue[0] if peek and pcb.queue else pcb.take()
            if item is not None:
                data, (src, sport) = item
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data[:bufsize], self._sockaddr(src, sport)
            if pcb.so_error:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise _oserror(pcb.take_error())
            await self._wait()
            self._check_open()

    # -- options ----------------------------------------------------------------------------------
    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        # trio's four-argument form: a value, or None with an optlen (both or neither: TypeError)
        if optlen is None:
            if value is None:
                raise TypeError("invalid value for argument 'value', must not be None when specifying optlen")
        elif value is not None:
            raise TypeError(
                f"invalid value for argument 'value': {value!r}, must be None when specifying optlen"
            )
        else:
            value = bytes(operator.index(optlen))  # setsockopt(level, name, NULL, optlen): zeros
        self._check_open()
        if not isinstance(value, int):
            raw = bytes(value)
            self._raw_options[(level, optname)] = raw
            value = int.from_bytes(raw[:4] or b"\0", "little")
        key = (level, optname)
        self._options[key] = int(value)
        conn = self._conn
        if conn is not None:
            if key == _NODELAY:
                conn.nodelay = bool(value)  # the option every trio.SocketStream sets: no more
            elif key in _CONNECTION_OPTIONS:
                self._apply_connection_options()
        if self._listener is not None:
            self._listener.send_buffer = self._buffer(True)
            self._listener.receive_buffer = self._buffer(False)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        if (level, optname) == (_SOL_SOCKET, _stdlib_socket.SO_ACCEPTCONN):
            value = int(self._listener is not None)
        elif (level, optname) == (_SOL_SOCKET, _stdlib_socket.SO_ERROR):
            value = self._take_error()
        elif (level, optname) == (_SOL_SOCKET, _stdlib_socket.SO_TYPE):
            value = self._type
        elif (level, optname) == (_SOL_SOCKET, _stdlib_socket.SO_SNDBUF):
            value = self._conn.sndbuf.limit if self._conn else self._options.get(
                (level, optname), self._stack.core.config.tcp.send_buffer
            )  # fmt: skip
        elif (level, optname) == (_SOL_SOCKET, _stdlib_socket.SO_RCVBUF):
            value = self._conn.rcvbuf.limit if self._conn else self._options.get(
                (level, optname), self._stack.core.config.tcp.receive_buffer
            )  # fmt: skip
        elif (level, optname) == (_IPPROTO_TCP, _stdlib_socket.TCP_NODELAY):
            value = int(self._conn.nodelay) if self._conn else self._options.get((level, optname), 0)
        else:
            value = self._options.get((level, optname), 0)
        if buflen is not None:
            raw = self._raw_options.get((level, optname))
            if raw is not None:
                return raw[:buflen]
            return value.to_bytes(max(buflen, 4), "little")[:buflen]
        return value

    def _buffer(self, send: bool) -> int:
        """SO_SNDBUF or SO_RCVBUF as set on this socket (0: the stack's default), at least 1 KiB."""
        value = self._options.get(
            (_SOL_SOCKET, _stdlib_socket.SO_SNDBUF if send else _stdlib_socket.SO_RCVBUF), 0
        )
        return max(value, 1024) if value else 0

    def _take_error(self) -> int:
        if self._pcb is not None:
            return self._pcb.take_error()
        conn = self._conn
        if conn is not None:
            if conn.error and not self._error_reported:
                self._error_reported = True
                return conn.error
            error, conn.soft_error = conn.soft_error, 0
            return error
        return 0

    def _apply_connection_options(self) -> None:
        conn = self._conn
        if conn is None:
            return
        options = self._options
        now = trio.current_time()
        if (_IPPROTO_TCP, _stdlib_socket.TCP_NODELAY) in options:
            conn.nodelay = bool(options[(_IPPROTO_TCP, _stdlib_socket.TCP_NODELAY)])
        if self._buffer(True):
            conn.sndbuf.limit = self._buffer(True)
        if self._buffer(False):
            # Lowering it never takes back window already offered (the connection never shrinks
            # its window), so the peer's data in flight still fits.
            conn.rcvbuf.limit = self._buffer(False)
        for name, attribute in (
            (_TCP_KEEPIDLE, "keep_idle"),
            (_TCP_KEEPINTVL, "keep_interval"),
            (_TCP_KEEPCNT, "keep_count"),
        ):
            if (_IPPROTO_TCP, name) in options:
                value = options[(_IPPROTO_TCP, name)]
                if value < 1:
                    raise _oserror(errno.EINVAL, "keepalive settings must be at least 1")
                setattr(conn, attribute, value)
                if conn.keepalive:
                    conn.set_keepalive(True, now)  # re-arm with the new idle time
        if (_SOL_SOCKET, _stdlib_socket.SO_KEEPALIVE) in options:
            enabled = bool(options[(_SOL_SOCKET, _stdlib_socket.SO_KEEPALIVE)])
            if enabled != conn.keepalive:
                conn.set_keepalive(enabled, now)

    # -- readiness and closing ------------------------------------------------------------------
    @trio.lowlevel.enable_ki_protection  # the park: a KeyboardInterrupt must not strand the task
    async def _wait(self, sending: bool = False) -> None:
        """Park until the poll loop reports a change.  As with trio's kernel sockets, a second
        task waiting in the same direction is a ``trio.BusyResourceError``."""
        task = trio.lowlevel.current_task()
        if sending:
            if self._sender is not None and self._sender is not task:
                raise trio.BusyResourceError("another task is already sending on this socket")
            self._sender = task
        else:
            if self._receiver is not None and self._receiver is not task:
                raise trio.BusyResourceError("another task is already receiving on this socket")
            self._receiver = task
        try:
            await trio.lowlevel.wait_task_rescheduled(self._waiter.park(task))  # Waiter.wait, in line
        finally:
            if sending:
                self._sender = None
            else:
                self._receiver = None

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        while self._conn is not None and not self._writable():
            await self._wait(sending=True)
            self._check_open()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _writable(self) -> bool:
        """Room to send, and with TCP_NOTSENT_LOWAT fewer unsent bytes queued than that."""
        conn = self._conn
        if conn is None or not conn.writable:
            return conn is None
        lowat = self._options.get((_IPPROTO_TCP, _TCP_NOTSENT_LOWAT), 0)
        return not lowat or conn.sndbuf.end - conn.snd_nxt < lowat or bool(conn.error)

    def is_readable(self) -> bool:
        self._check_open()
        if self._listener is not None:
            return bool(self._listener.accept_queue) or self._listener.closed
        if self._pcb is not None:
            return bool(self._pcb.queue) or bool(self._pcb.so_error)
        if self._conn is not None:
            return self._conn.readable or self._shut_rd
        return False

    def close(self) -> None:
        if self._fd < 0:
            return
        self._fd = -1
        now = self._now()  # the run's clock (trio.current_time() without its two wrappers)
        if self._conn is not None:
            if self._linger_zero():
                self._conn.abort(now)  # SO_LINGER {on, 0}: reset, as the kernel does
            else:
                self._conn.close(now)
            self._conn.waiter = None
        if self._listener is not None:
            self._listener.sockets -= 1
            if self._listener.sockets <= 0:
                self._listener.close(now)
        elif self._bound is not None and self._conn is None:
            self._stack.core.tcp.bound_ports.discard(self._bound[1])
        if self._pcb is not None:
            self._stack.core.udp.close(self._pcb)
        self._kick()
        self._waiter.wake()  # tasks parked on this socket see EBADF (trio: ClosedResourceError)

    def _linger_zero(self) -> bool:
        """SO_LINGER with l_onoff set and l_linger 0: close() resets the connection."""
        raw = self._raw_options.get((_SOL_SOCKET, _stdlib_socket.SO_LINGER))
        if raw is None or len(raw) < 8:
            return False
        onoff, seconds = struct.unpack("ii", raw[:8])  # struct linger {int l_onoff; int l_linger;}
        return bool(onoff) and seconds == 0

    def detach(self) -> int:
        """As the kernel's: the socket is closed to us and its number returned.  A user-space
        socket's number is no kernel descriptor, so nothing else can take it over: detaching
        closes it (a connection gets its FIN, as at ``close``)."""
        fd = self._fd
        self.close()
        return fd

    def dup(self) -> StackSocket:
        raise _oserror(errno.EOPNOTSUPP, "a user-space socket cannot be duplicated")

    def get_inheritable(self) -> bool:
        return self._inheritable

    def set_inheritable(self, inheritable: bool) -> None:
        """Kept and reported; no child process can inherit a user-space socket either way."""
        self._check_open()
        self._inheritable = bool(inheritable)

    def __enter__(self) -> StackSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _KernelSocket(StackSocket):
    """A :class:`StackSocket` that a loopback address (or, with ``kernel_unroutable``, a
    destination the stack cannot route) handed to the kernel at ``bind``/``connect``/``sendto``
    (YAStack's HOST path): every call goes to the kernel socket in ``_kernel``, so addresses,
    options and errors are the kernel's.  It is the same object the application holds (its
    class changes, which costs the stack's sockets no test on their own paths)."""

    _kernel: trio.socket.SocketType

    @property
    def _sock(self) -> Any:  # the kernel's own socket.socket, for anyio (see StackSocket._sock)
        return getattr(self._kernel, "_sock", self._kernel)

    @property
    def connection(self) -> TcpConnection | None:
        return None

    def __repr__(self) -> str:
        return f"<trio_yastack socket handed to the kernel: {self._kernel!r}>"

    def fileno(self) -> int:
        return self._kernel.fileno()

    def getsockname(self) -> Any:
        return self._kernel.getsockname()

    def getpeername(self) -> Any:
        return self._kernel.getpeername()

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self._kernel.did_shutdown_SHUT_WR

    async def bind(self, address: Any) -> None:
        await self._kernel.bind(address)

    def listen(self, backlog: int = 128) -> None:
        self._kernel.listen(backlog)

    async def accept(self) -> tuple[Any, Any]:
        return await self._kernel.accept()

    async def connect(self, address: Any) -> None:
        await self._kernel.connect(address)

    async def send(self, data: Any, flags: int = 0) -> int:
        return await self._kernel.send(data, flags)

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return await self._kernel.recv(bufsize, flags)

    async def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return await self._kernel.recv_into(buffer, nbytes, flags)

    async def sendto(self, data: Any, *args: Any) -> int:
        return await self._kernel.sendto(data, *args)

    async def recvfrom(self, bufsize: int, flags: int = 0) -> Any:
        return await self._kernel.recvfrom(bufsize, flags)

    async def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Any:
        return await self._kernel.recvfrom_into(buffer, nbytes, flags)

    async def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        return await self._kernel.sendmsg(buffers, ancdata, flags, address)

    async def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:
        return await self._kernel.recvmsg(bufsize, ancbufsize, flags)

    async def recvmsg_into(self, buffers: Any, ancbufsize: int = 0, flags: int = 0) -> Any:
        return await self._kernel.recvmsg_into(buffers, ancbufsize, flags)

    def shutdown(self, flag: int) -> None:
        self._kernel.shutdown(flag)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if optlen is None:
            self._kernel.setsockopt(level, optname, value)
        else:
            self._kernel.setsockopt(level, optname, value, optlen)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        if buflen is None:
            return self._kernel.getsockopt(level, optname)
        return self._kernel.getsockopt(level, optname, buflen)

    async def wait_writable(self) -> None:
        await self._kernel.wait_writable()

    def is_readable(self) -> bool:
        return self._kernel.is_readable()

    def close(self) -> None:
        self._fd = -1
        self._kernel.close()

    def detach(self) -> int:
        return self._kernel.detach()


class StackSocketFactory(trio.abc.SocketFactory):
    """What ``trio.socket.socket()`` calls while a stack is open: AF_INET stream and datagram
    sockets on the current stack, AF_INET6 ones when it has IPv6 (``StackSocket6``); others
    raise EAFNOSUPPORT, or with ``kernel_fallback`` are the kernel's own (e.g. an admin port, as
    YAStack's HOST provider)."""

    def __init__(self, kernel_fallback: bool = False, *, kernel_unroutable: bool = False) -> None:
        self.kernel_fallback = kernel_fallback
        #: a destination no route of the stack reaches goes to a kernel socket (at connect/sendto)
        self.kernel_unroutable = kernel_unroutable

    def socket(
        self, family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0
    ) -> trio.socket.SocketType:
        kind = type & _TYPE_MASK
        if family == AF_INET and kind in (SOCK_STREAM, SOCK_DGRAM):
            return StackSocket(current_stack(), type, proto)
        if family == AF_INET6 and kind in (SOCK_STREAM, SOCK_DGRAM):
            stack = current_stack()
            if stack.core.ip6 is not None:
                from ._socket6 import StackSocket6  # (here: _socket6 builds on this module)

                return StackSocket6(stack, type, proto)
        if self.kernel_fallback:
            return trio.socket.from_stdlib_socket(_stdlib_socket.socket(family, type, proto))
        if family == AF_INET6 and kind in (SOCK_STREAM, SOCK_DGRAM):
            raise _oserror(
                errno.EAFNOSUPPORT,
                "AF_INET6 sockets need an IPv6 address on the stack: "
                "open_stack(ip=['198.18.0.2/24', '2001:2::2/64'])",
            )
        raise _oserror(
            errno.EAFNOSUPPORT,
            f"family {family}, type {type}: the user-space stack serves AF_INET stream and datagram sockets; "
            "open_stack(kernel_fallback=True) hands other sockets to the kernel",
        )
