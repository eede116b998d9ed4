"""``open_stack``: run a stack instance on a NIC port inside the current trio run."""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from typing import TYPE_CHECKING, Any

import trio

from trio_yastack.dispatch import PollLoop
from trio_yastack.nic import PcapReplayPort, Port, PortStatistics
from trio_yastack.socket_api import PingSocket, TcpListenerEndpoint, TcpStreamEndpoint, UdpEndpoint
from trio_yastack.socket_api._socket import (
    SOCK_DGRAM,
    SOCK_STREAM,
    StackHostnameResolver,
    StackSocket,
    StackSocketFactory,
    open_stacks,
)
from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore, StackStatistics, UdpPcb
from trio_yastack.stack.wire import MacAddress

if TYPE_CHECKING:
    from trio_yastack.dispatch._percore import CoreLayout

__all__ = ["Stack", "open_port", "open_stack", "run"]


def open_port(spec: str | Port) -> Port:
    """A port object from a spec string.

    ``tap:NAME[,key=value...]`` opens the TAP poll-mode driver (options as
    :class:`~trio_yastack.nic.tap.TapOptions`: ``offloads``, ``mtu``, ``queues``,
    ``kernel_address``, ``txqueuelen``, ``busy_poll``, ``persist``, ``mac``); ``pcap:FILE`` replays a
    capture.  A :class:`Port` passes through.
    """
    if isinstance(spec, Port):
        return spec
    kind, _, arg = spec.partition(":")
    if kind == "pcap" and arg:
        return PcapReplayPort(arg)
    if kind == "tap":
        from trio_yastack.nic.tap import TapPort, parse_tap_spec

        return TapPort(parse_tap_spec(spec))
    raise ValueError(f"unknown nic spec {spec!r}: expected tap:NAME, pcap:FILE or a Port object")


class Stack:
    """A stack instance running on a port in the current trio run (from :func:`open_stack`)."""

    def __init__(self, core: StackCore, port: Port, loop: PollLoop) -> None:
        self.core = core
        self.port = port
        self._loop = loop

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

    def kick(self) -> None:
        """Ask the poll loop to flush what an application call queued."""
        self._loop.kick()

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

    async def tcp_connect(self, host: str, port: int, *, local_port: int = 0) -> TcpStreamEndpoint:
        """Active open; returns once established, or raises ``OSError`` (ECONNREFUSED, ETIMEDOUT...)."""
        conn = self.core.tcp.connect(int(IPv4Address(host)), port, trio.current_time(), local_port)
        stream = TcpStreamEndpoint(self, conn)
        self.kick()
        try:
            await stream.wait_established()
        except BaseException:
            conn.abort(trio.current_time())
            self.kick()
            raise
        return stream

    def socket(self, family: int = socket.AF_INET, type: int = SOCK_STREAM, proto: int = 0) -> StackSocket:
        """A trio socket on this stack, whichever stack the task's factory would pick."""
        if family != socket.AF_INET or type & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC) not in (
            SOCK_STREAM,
            SOCK_DGRAM,
        ):
            raise OSError(errno.EAFNOSUPPORT, "the stack serves AF_INET stream and datagram sockets")
        return StackSocket(self, type, proto)

    def tcp_listen(self, port: int, backlog: int = 128) -> TcpListenerEndpoint:
        """Passive open: a listener whose ``accept()`` yields established streams."""
        return TcpListenerEndpoint(self, self.core.tcp.listen(port, backlog))


#: the factory and resolver the first stack of a trio run installed
_installed_parts: trio.lowlevel.RunVar[tuple[StackSocketFactory, StackHostnameResolver]] = (
    trio.lowlevel.RunVar("trio_yastack_installed")
)


@contextmanager
def _installed(stack: Stack, hosts: dict[str, str] | None, kernel_fallback: bool) -> Iterator[None]:
    """Register ``stack`` in this trio run; the first one installs trio's socket factory and
    resolver, and the last one out restores what was there before."""
    stacks = open_stacks.get(None)
    if stacks is None:
        stacks = []
        open_stacks.set(stacks)
    previous = None
    if not stacks:
        factory, resolver = StackSocketFactory(kernel_fallback), StackHostnameResolver(hosts)
        _installed_parts.set((factory, resolver))
        previous = (
            trio.socket.set_custom_socket_factory(factory),
            trio.socket.set_custom_hostname_resolver(resolver),
        )
    else:
        # One factory and resolver serve the run: a later stack adds its names to the hosts
        # table, and may not ask for a different kernel fallback than the first one set.
        factory, resolver = _installed_parts.get()
        if kernel_fallback != factory.kernel_fallback:
            raise ValueError(
                f"kernel_fallback={kernel_fallback} differs from the {factory.kernel_fallback} that the "
                "first stack of this trio run installed"
            )
        resolver.add_hosts(hosts or {})
    stacks.append(stack)
    try:
        yield
    finally:
        stacks.remove(stack)
        if previous is not None:
            trio.socket.set_custom_socket_factory(previous[0])
            trio.socket.set_custom_hostname_resolver(previous[1])


@asynccontextmanager
async def open_stack(
    nic: Port | str,
    *,
    ip: str | IPv4Address | IPv4Interface,
    prefix_len: int | None = None,
    gateway: str | IPv4Address | None = None,
    mac: str | MacAddress | None = None,
    mtu: int | None = None,
    burst: int | None = None,
    seed: int | None = None,
    config: StackConfig | None = None,
    hosts: dict[str, str] | None = None,
    kernel_fallback: bool = False,
    offloads: bool = True,
    layout: CoreLayout | None = None,
    **config_overrides: Any,
) -> AsyncIterator[Stack]:
    """Run the stack on ``nic`` for the duration of the ``async with`` block.

    ``ip`` may carry its prefix (``"198.18.0.2/24"``; default /24).  ``mac`` and ``mtu`` default to
    the port's.  ``seed`` makes every random choice of the stack repeatable.  ``config`` (a
    :class:`~trio_yastack.stack.StackConfig`) replaces the defaults; keyword overrides such as
    ``arp=ArpConfig(...)`` or ``tcp=TcpConfig(...)`` replace single sections of it.

    The first stack opened in a trio run installs trio's socket factory and hostname resolver
    for that run (``hosts`` maps names to addresses for the resolver; ``kernel_fallback`` hands
    sockets the stack does not serve, such as AF_INET6, to the kernel instead of refusing them)
    and becomes every task's default stack; ``use_stack`` picks another.  Both are removed when
    the last stack of the run closes.

    ``layout`` (from the per-core launcher) makes this stack one core of several: which port
    queues it uses, its rings to the other cores, and the flows it owns.

    ``offloads`` lets the stack use the port's transmit checksum offload and TSO (a
    ``tap:`` port's virtio-net header); received frames the port vouches for are never
    re-verified either way.  A port opened from a spec string is closed at the end.
    """
    port = open_port(nic)
    try:
        async with _open_stack_on(
            port, ip, prefix_len, gateway, mac, mtu, burst, seed, config, hosts, kernel_fallback,
            offloads, layout, config_overrides,
        ) as stack:  # fmt: skip
            yield stack
    finally:
        if port is not nic:
            port.close()  # we opened it from a spec string


@asynccontextmanager
async def _open_stack_on(
    port: Port,
    ip: str | IPv4Address | IPv4Interface,
    prefix_len: int | None,
    gateway: str | IPv4Address | None,
    mac: str | MacAddress | None,
    mtu: int | None,
    burst: int | None,
    seed: int | None,
    config: StackConfig | None,
    hosts: dict[str, str] | None,
    kernel_fallback: bool,
    offloads: bool,
    layout: CoreLayout | None,
    config_overrides: dict[str, Any],
) -> AsyncIterator[Stack]:
    caps = port.capabilities
    interface_ip = IPv4Interface(ip if prefix_len is None else f"{IPv4Interface(ip).ip}/{prefix_len}")
    if "/" not in str(ip) and prefix_len is None and not isinstance(ip, IPv4Interface):
        interface_ip = IPv4Interface(f"{interface_ip.ip}/24")
    interface = InterfaceConfig(
        mac=MacAddress(mac) if mac is not None else caps.mac,
        address=interface_ip.ip,
        prefix_len=interface_ip.network.prefixlen,
        gateway=IPv4Address(gateway) if gateway is not None else None,
        mtu=mtu if mtu is not None else caps.mtu,
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
    )
    if config_overrides:
        config = replace(config, **config_overrides)
    core = StackCore(config, rng=random.Random(seed) if seed is not None else None)
    loop = PollLoop(core, port, burst=burst, layout=layout)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            stack = Stack(core, port, loop)
            with _installed(stack, hosts, kernel_fallback):
                try:
                    yield stack
                finally:
                    loop.flush()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The poll loop never raises, so a lone exception is the caller's own: give it back
        # unwrapped, as if no nursery were here.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def run(
    main: Callable[..., Awaitable[Any]],
    *args: Any,
    nic: Port | str,
    ip: str | IPv4Address | IPv4Interface,
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
    from trio_yastack.dispatch._launcher import launch

    port = open_multicore_port(nic, cores)
    return launch(lambda layout: trio.run(inside_stack, layout, clock=clock), port=port, cores=cores)


def open_multicore_port(nic: Port | str, cores: int) -> Port:
    """The port for ``cores`` workers: a ``tap:`` spec gets a queue per core (``queues=1`` in
    the spec asks for software RSS instead); a Port object is used as it is."""
    if isinstance(nic, str) and nic.startswith("tap:"):
        from dataclasses import replace as _replace

        from trio_yastack.nic.tap import TapPort, parse_tap_spec

        options = parse_tap_spec(nic)
        queues = options.queues if ",queues=" in nic else cores
        return TapPort(_replace(options, queues=queues, multi_queue=True))
    return open_port(nic)
