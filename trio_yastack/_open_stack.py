"""``open_stack``: run a stack instance on a NIC port inside the current trio run.

The front end that joins the layers: a port (``nic``), the poll loop (``dispatch``), the sans-IO
core (``stack``) and trio's socket interface over it (``socket_api``, which sees a ``Stack``
only as the :class:`~trio_yastack.socket_api.SocketStack` it needs).
"""

from __future__ import annotations

import errno
import importlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from typing import Any

import trio

from trio_yastack import socket_api
from trio_yastack._trio_helpers import unwrap_single_exception
from trio_yastack.dispatch import CoreLayout, PollLoop, launch
from trio_yastack.nic import FaultPort, Port, PortStatistics, split_fault_spec
from trio_yastack.socket_api import (
    PingSocket,
    StackSocket,
    StackSocket6,
    UdpEndpoint,
    install_stack,
    listening_socket,
)
from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore, StackStatistics, UdpPcb
from trio_yastack.stack.wire import MacAddress

__all__ = ["Stack", "current_stack", "open_multicore_port", "open_port", "open_stack", "run"]


#: spec kind -> ``"module:function"`` of the function that opens that kind of port from its spec
#: string, ``opener(spec, queues=None)``: ``queues`` is ``None`` for one core, or the number of
#: workers of :func:`open_multicore_port` (one queue per core).  Modules are imported only when
#: their kind is asked for, so a port whose native part is missing costs nothing until used.
PORT_OPENERS: dict[str, str] = {
    "tap": "trio_yastack.nic.tap:open_tap_port",
    "pcap": "trio_yastack.nic._pcap:open_pcap_port",
    "af_packet": "trio_yastack.nic.af_packet:open_af_packet_port",
    "af_xdp": "trio_yastack.nic.af_xdp:open_af_xdp_port",
    "dpdk": "trio_yastack.nic.dpdk:open_dpdk_port",
}


def open_port(spec: str | Port, *, queues: int | None = None) -> Port:
    """A port object from a spec string (a :class:`Port` passes through).

    ``tap:NAME[,key=value...]`` opens the TAP poll-mode driver (options as
    :class:`~trio_yastack.nic.tap.TapOptions`: ``offloads``, ``mtu``, ``queues``,
    ``kernel_address``, ``txqueuelen``, ``busy_poll``, ``persist``, ``mac``); ``pcap:FILE`` replays a
    capture; ``,faults=...`` after any spec's options puts the port behind a seeded bad path
    (:class:`~trio_yastack.nic.FaultPort`).  The kinds are :data:`PORT_OPENERS`'s keys.
    """
    if isinstance(spec, Port):
        return spec
    spec, faults = split_fault_spec(spec)  # ",faults=..." wraps any kind (nic/_faults.py)
    if faults is not None:
        return FaultPort(open_port(spec, queues=queues), faults)
    kind, sep, _ = spec.partition(":")
    target = PORT_OPENERS.get(kind) if sep else None
    if target is None:
        kinds = ", ".join(f"{name}:..." for name in PORT_OPENERS)
        raise ValueError(f"unknown nic spec {spec!r}: expected one of {kinds}, or a Port object")
    module_name, _, function = target.partition(":")
    opener: Callable[..., Port] = getattr(importlib.import_module(module_name), function)
    return opener(spec, queues=queues)


class Stack:
    """A stack instance running on a port in the current trio run (from :func:`open_stack`).

    To the socket layer it is a :class:`~trio_yastack.socket_api.SocketStack`: its ``core``,
    ``address`` and ``kick()``."""

    #: Ask the poll loop to flush what an application call queued: the loop's own ``kick``,
    #: bound, not wrapped in a method of ours (sockets call it on every send and read)
    kick: Callable[[], None]

    def __init__(self, core: StackCore, port: Port, loop: PollLoop) -> None:
        self.core = core
        self.port = port
        self._loop = loop
        self.kick = loop.kick

    @property
    def address(self) -> IPv4Address:
        return self.core.config.interface.address

    @property
    def mac(self) -> MacAddress:
        return self.core.config.interface.mac

    @property
    def layout(self) -> CoreLayout | None:
        """This stack's place among several cores (its id, queues, rings and dispatch
        counters), or ``None`` when it runs alone."""
        return self._loop.layout

    def statistics(self) -> StackStatistics:
        return self.core.statistics()

    def port_statistics(self) -> PortStatistics:
        return self.port.statistics()

    def runtime_statistics(self) -> dict[str, int]:
        return self._loop.stats.snapshot()

    def udp_socket(self, port: int = 0, host: str = "0.0.0.0") -> UdpEndpoint:
        """A UDP endpoint bound to ``host:port`` (port 0: an ephemeral port)."""
        pcb = UdpPcb()
        self.core.udp.bind(pcb, int(IPv4Address(host)), port)
        return UdpEndpoint(self, pcb)

    def ping_socket(self, ident: int | None = None) -> PingSocket:
        return PingSocket(self, self.core.icmp.echo_open(ident))

    async def tcp_connect(self, host: str, port: int, *, local_port: int = 0) -> trio.SocketStream:
        """Active open to a numeric ``host``: trio's own ``SocketStream`` over a
        :class:`~trio_yastack.socket_api.StackSocket` on this stack (whatever the task's current
        stack is), once established; raises ``OSError`` as the kernel would
        (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH...).  ``stream.socket.connection`` is the
        stack's ``TcpConnection``, to look at."""
        sock = self.socket()
        try:
            if local_port:
                await sock.bind(("", local_port))
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    def tcp_listen(self, port: int, backlog: int = 128) -> trio.SocketListener:
        """Passive open on ``port`` (0: an ephemeral one): trio's own ``SocketListener``, whose
        ``accept()`` yields ``SocketStream``s.  Plain and immediate (nothing to wait for), unlike
        ``trio.open_tcp_listeners``, which does the same through the socket factory."""
        return trio.SocketListener(listening_socket(self, port, backlog))

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> StackSocket:
        """A trio socket on this stack, whatever stack the task's socket factory would pick
        (AF_INET6 ones when the stack has an IPv6 address)."""
        kind = type & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        if (
            family == socket.AF_INET6
            and kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
            and self.core.ip6 is not None
        ):
            return StackSocket6(self, type, proto)
        if family != socket.AF_INET or kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            raise OSError(
                errno.EAFNOSUPPORT,
                "the stack serves AF_INET stream and datagram sockets, and AF_INET6 ones "
                "when it has an IPv6 address",
            )
        return StackSocket(self, type, proto)


def current_stack() -> Stack:
    """The stack that ``trio.socket.socket()`` uses in this task: the one chosen with
    ``use_stack``, else the first stack opened in this trio run."""
    stack = socket_api.current_stack()
    if not isinstance(stack, Stack):
        raise RuntimeError(f"the current stack {stack!r} was installed without open_stack")
    return stack


@asynccontextmanager
async def open_stack(
    nic: Port | str,
    *,
    ip: str | IPv4Address | IPv4Interface | Sequence[str | IPv4Address | IPv4Interface | IPv6Interface],
    prefix_len: int | None = None,
    gateway: str | IPv4Address | None = None,
    mac: str | MacAddress | None = None,
    mtu: int | None = None,
    burst: int | None = None,
    seed: int | None = None,
    config: StackConfig | None = None,
    hosts: Mapping[str, str | Sequence[str]] | None = None,
    kernel_fallback: bool = False,
    offloads: bool = True,
    layout: CoreLayout | None = None,
    nameservers: list[str] | tuple[str, ...] = (),
    system_resolver: bool = False,
    kernel_unroutable: bool = False,
    **config_overrides: Any,
) -> AsyncIterator[Stack]:
    """Run the stack on ``nic`` for the duration of the ``async with`` block.

    ``ip`` may carry its prefix (``"198.18.0.2/24"``; default /24); a list adds IPv6 addresses
    (``["198.18.0.2/24", "2001:2::2/64"]``; default /64), which turns IPv6 on (one IPv4 address is
    still needed: an IPv6-only stack is for a later session).  ``mac`` and ``mtu`` default to
    the port's.  ``seed`` makes every random choice of the stack repeatable.  ``config`` (a
    :class:`~trio_yastack.stack.StackConfig`) replaces the defaults; keyword overrides such as
    ``arp=ArpConfig(...)`` or ``tcp=TcpConfig(...)`` replace single sections of it.

    The first stack opened in a trio run installs trio's socket factory and hostname resolver
    for that run (``hosts`` maps names to addresses for the resolver; ``kernel_fallback`` hands
    sockets the stack does not serve, such as AF_INET6, to the kernel instead of refusing them)
    and becomes every task's default stack; ``use_stack`` picks another.  Both are removed when
    the last stack of the run closes.  ``nameservers`` (``"IP"`` or ``"IP:PORT"``) are asked
    over the stack's own UDP for names the hosts table lacks; ``system_resolver`` lets the
    system's resolver answer last (see ``socket_api/_resolver.py``).  Loopback destinations and
    binds always go to kernel sockets; ``kernel_unroutable`` sends destinations the stack has no
    route to there too.

    ``layout`` (from the per-core launcher) makes this stack one core of several: which port
    queues it uses, its rings to the other cores, and the flows it owns.

    ``offloads`` lets the stack use the port's transmit checksum offload and TSO (a
    ``tap:`` port's virtio-net header); received frames the port vouches for are never
    re-verified either way.  A port opened from a spec string is closed at the end.
    """
    port = open_port(with_ipv6_on_tap(nic, ip))
    try:
        async with _open_stack_on(
            port, ip, prefix_len, gateway, mac, mtu, burst, seed, config, hosts, kernel_fallback,
            offloads, layout, config_overrides, (tuple(nameservers), system_resolver, kernel_unroutable),
        ) as stack:  # fmt: skip
            yield stack
    finally:
        if port is not nic:
            port.close()  # we opened it from a spec string


def with_ipv6_on_tap(
    nic: Port | str,
    ip: str | IPv4Address | IPv4Interface | Sequence[str | IPv4Address | IPv4Interface | IPv6Interface],
) -> Port | str:
    """A TAP spec for a stack with an IPv6 address gets ``disable_ipv6=off`` (unless the spec says
    otherwise): the kernel side of the TAP keeps its IPv6, so it can answer our neighbour
    discovery (``TapOptions.disable_ipv6`` is on for the IPv4-only stacks, where the kernel's
    IPv6 would be noise).  Other specs and port objects pass through."""
    if not isinstance(nic, str) or not _split_addresses(ip)[1]:
        return nic
    kind, sep, _ = nic.partition(":")
    if (sep and kind != "tap") or "disable_ipv6=" in nic:
        return nic
    head, comma, rest = nic.partition(",")
    return f"{head},disable_ipv6=off{comma}{rest}"


def _split_addresses(
    ip: str | IPv4Address | IPv4Interface | Sequence[str | IPv4Address | IPv4Interface | IPv6Interface],
) -> tuple[str | IPv4Address | IPv4Interface, tuple[IPv6Interface, ...]]:
    """``open_stack``'s ``ip``: the one IPv4 address, and the IPv6 ones (default prefix /64)."""
    items = [ip] if isinstance(ip, str | IPv4Address | IPv4Interface) else list(ip)
    v4 = [item for item in items if ":" not in str(item)]
    v6 = tuple(
        IPv6Interface(str(item) if "/" in str(item) else f"{item}/64") for item in items if ":" in str(item)
    )
    if len(v4) != 1:
        raise ValueError(f"open_stack needs exactly one IPv4 address, not {len(v4)} (in {ip!r})")
    if isinstance(v4[0], IPv6Interface):  # (never: filtered above; keeps the type checker sure)
        raise ValueError(f"not an IPv4 address: {v4[0]}")
    return v4[0], v6


@asynccontextmanager
async def _open_stack_on(
    port: Port,
    ip: str | IPv4Address | IPv4Interface | Sequence[str | IPv4Address | IPv4Interface | IPv6Interface],
    prefix_len: int | None,
    gateway: str | IPv4Address | None,
    mac: str | MacAddress | None,
    mtu: int | None,
    burst: int | None,
    seed: int | None,
    config: StackConfig | None,
    hosts: Mapping[str, str | Sequence[str]] | None,
    kernel_fallback: bool,
    offloads: bool,
    layout: CoreLayout | None,
    config_overrides: dict[str, Any],
    sockets: tuple[tuple[str, ...], bool, bool] = ((), False, False),
) -> AsyncIterator[Stack]:
    caps = port.capabilities
    ip, addresses6 = _split_addresses(ip)
    interface_ip = IPv4Interface(ip if prefix_len is None else f"{IPv4Interface(ip).ip}/{prefix_len}")
    if "/" not in str(ip) and prefix_len is None and not isinstance(ip, IPv4Interface):
        interface_ip = IPv4Interface(f"{interface_ip.ip}/24")
    interface = InterfaceConfig(
        mac=MacAddress(mac) if mac is not None else caps.mac,
        address=interface_ip.ip,
        prefix_len=interface_ip.network.prefixlen,
        gateway=IPv4Address(gateway) if gateway is not None else None,
        mtu=mtu if mtu is not None else caps.mtu,
        addresses6=addresses6,
    )
    if config is None:
        config = StackConfig(interface=interface)
    # An IPv4 datagram holds at most 65535 bytes, whatever larger size a port would segment.
    tso_size = min(caps.max_tso_size, 0xFFFF)
    tso = tso_size if offloads and caps.tso and tso_size > interface.mtu else 0
    config = replace(
        config,
        interface=interface,
        tx_checksum_offload=offloads and caps.tx_checksum_offload,
        tso_max_size=tso if offloads and caps.tx_checksum_offload else 0,
        tso6=bool(tso) and offloads and caps.tx_checksum_offload and caps.tso6,
    )
    if config_overrides:
        config = replace(config, **config_overrides)
    core = StackCore(config, rng=random.Random(seed) if seed is not None else None)
    loop = PollLoop(core, port, burst=burst, layout=layout)
    # Either the caller's own exception, or (in strict mode only: PollLoop) the poll loop's
    # re-raised stack bug, which cancelled the caller: one exception, given back unwrapped, as if
    # no nursery were here.
    with unwrap_single_exception():
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            stack = Stack(core, port, loop)
            with install_stack(
                stack,
                hosts=hosts,
                kernel_fallback=kernel_fallback,
                nameservers=sockets[0],
                system_resolver=sockets[1],
                kernel_unroutable=sockets[2],
            ):
                try:
                    yield stack
                finally:
                    loop.flush()
                    nursery.cancel_scope.cancel()


def run(
    main: Callable[..., Awaitable[Any]],
    *args: Any,
    nic: Port | str,
    ip: str | IPv4Address | IPv4Interface | Sequence[str | IPv4Address | IPv4Interface | IPv6Interface],
    clock: trio.abc.Clock | None = None,
    cores: int = 1,
    **stack_options: Any,
) -> Any:
    """Like ``trio.run(main, *args)``, with ``main`` running inside ``open_stack(nic, ip=ip, ...)``:
    every trio socket it opens is on the user-space stack.

    ``cores=N`` runs one process per core, each with its own trio run and stack, ``main`` in
    every one of them (share nothing: a listener on each core accepts the flows that hash to it;
    an outgoing connection is made where its replies will arrive); returns the list of their
    return values by core.  ``tap:NAME`` becomes a multi-queue TAP with a queue per core; a
    port object with fewer queues than cores is read by core 0 for all (software RSS).
    """

    async def inside_stack(layout: CoreLayout | None = None) -> Any:
        async with open_stack(nic if layout is None else port, ip=ip, layout=layout, **stack_options):
            return await main(*args)

    if cores == 1:
        return trio.run(inside_stack, clock=clock)
    if cores < 1:
        raise ValueError("cores must be at least 1")
    port = open_multicore_port(with_ipv6_on_tap(nic, ip), cores)
    return launch(lambda layout: trio.run(inside_stack, layout, clock=clock), port=port, cores=cores)


def open_multicore_port(nic: Port | str, cores: int) -> Port:
    """The port for ``cores`` workers: a spec's kind opens it with a queue per core (a TAP spec
    with ``queues=1`` asks for software RSS instead); a Port object is used as it is."""
    return open_port(nic, queues=cores)
