"""Names for the stack's sockets: the hostname resolver ``install_stack`` installs for a trio run.

A chain, tried in order: numeric addresses; the static hosts table (``open_stack(hosts=...)``);
DNS over the stack's own UDP to the configured nameservers (``open_stack(nameservers=[...])``,
``yastack serve --dns``), with answers cached by their TTL, each server tried in turn a bounded
number of times, and TCP when an answer comes back truncated (RFC 7766); and, only where the user
allows it (``system_resolver=True``), the system's resolver in a thread.  The DNS message format is
dnspython's, not ours.  Loopback names and addresses (``localhost``, 127.0.0.0/8) are the
kernel's, as loopback sockets are (see ``_socket.py``).

Every table is bounded: the cache holds :attr:`ResolverConfig.cache_size` names (the oldest go
first), at most :attr:`ResolverConfig.max_queries` queries are in flight, and a lookup gives up
after ``attempts`` rounds over the servers of ``timeout`` seconds each.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket as _stdlib_socket
import struct
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import trio

__all__ = ["ResolverConfig", "ResolverStatistics", "StackHostnameResolver"]

AF_INET = _stdlib_socket.AF_INET
SOCK_STREAM = _stdlib_socket.SOCK_STREAM
SOCK_DGRAM = _stdlib_socket.SOCK_DGRAM

#: getaddrinfo()'s entries, as trio's HostnameResolver declares them (this one yields AF_INET only)
_AddrInfo4 = tuple[
    Literal[_stdlib_socket.AddressFamily.AF_INET], _stdlib_socket.SocketKind, int, str, tuple[str, int]
]
_AddrInfo6 = tuple[
    Literal[_stdlib_socket.AddressFamily.AF_INET6],
    _stdlib_socket.SocketKind,
    int,
    str,
    tuple[str, int, int, int] | tuple[int, bytes],
]

_LOCALHOST = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """How hard DNS tries, and how much it keeps."""

    timeout: float = 2.0  #: seconds to wait for one server's answer
    attempts: int = 2  #: rounds over all the servers before giving up
    cache_size: int = 1024  #: names cached (answers and NXDOMAINs), oldest dropped first
    max_ttl: float = 3600.0  #: a cached answer lives at most this long, whatever its TTL says
    negative_ttl: float = 30.0  #: how long "no such name" is remembered (at most; RFC 2308)
    max_queries: int = 32  #: DNS queries in flight at once (more wait their turn)


@dataclass(slots=True)
class ResolverStatistics:
    """What the resolver did (counters only grow)."""

    hosts_hits: int = 0
    cache_hits: int = 0
    queries_sent: int = 0
    answers: int = 0
    timeouts: int = 0
    tcp_fallbacks: int = 0
    bad_answers: int = 0  #: unparsable, from the wrong address, or another query's
    nxdomain: int = 0
    system_lookups: int = 0


def _gaierror(code: int, text: str) -> _stdlib_socket.gaierror:
    return _stdlib_socket.gaierror(code, text)


class StackHostnameResolver(trio.abc.HostnameResolver):
    """Numeric addresses, the hosts table, DNS over the stack, then (if allowed) the system."""

    def __init__(
        self,
        hosts: dict[str, str] | None = None,
        *,
        nameservers: list[str] | tuple[str, ...] = (),
        system_resolver: bool = False,
        config: ResolverConfig | None = None,
    ) -> None:
        self.hosts: dict[str, str] = {}
        self.nameservers: list[tuple[str, int]] = []
        self.system_resolver = system_resolver
        self.config = config or ResolverConfig()
        self.stats = ResolverStatistics()
        self._cache: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._limit = trio.CapacityLimiter(self.config.max_queries)
        self._random = random.SystemRandom()  # query IDs an off-path attacker cannot guess
        self.add_hosts(hosts or {})
        self.add_nameservers(nameservers)

    def add_hosts(self, hosts: dict[str, str]) -> None:
        """Add names (case-insensitive, trailing dot ignored) with their IPv4 addresses."""
        self.hosts.update({name.lower().rstrip("."): str(IPv4Address(ip)) for name, ip in hosts.items()})

    def add_nameservers(self, nameservers: list[str] | tuple[str, ...]) -> None:
        """Add DNS servers: ``"198.18.0.1"`` or ``"198.18.0.1:5353"`` (IPv4, port 53 by default)."""
        for server in nameservers:
            host, _, port = str(server).partition(":")
            entry = (str(IPv4Address(host)), int(port) if port else 53)
            if not 0 < entry[1] <= 0xFFFF:
                raise ValueError(f"nameserver port out of range: {server!r}")
            if entry not in self.nameservers:
                self.nameservers.append(entry)

    # -- getaddrinfo -------------------------------------------------------------------------------
    async def getaddrinfo(
        self,
        host: bytes | str | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[_AddrInfo4 | _AddrInfo6]:
        await trio.lowlevel.checkpoint()
        if family not in (0, AF_INET):
            raise _gaierror(_stdlib_socket.EAI_FAMILY, "the stack serves AF_INET only")
        port_number = self._port(port, type)
        if host is None:
            addresses: tuple[str, ...] = ("0.0.0.0" if flags & _stdlib_socket.AI_PASSIVE else "127.0.0.1",)
        else:
            addresses = await self.resolve(host)
        kinds = [type] if type else [SOCK_STREAM, SOCK_DGRAM]
        return [
            (
                _stdlib_socket.AddressFamily.AF_INET,
                _stdlib_socket.SocketKind(kind),
                proto or (_stdlib_socket.IPPROTO_TCP if kind == SOCK_STREAM else _stdlib_socket.IPPROTO_UDP),
                "",
                (address, port_number),
            )
            for address in addresses
            for kind in kinds
        ]

    @staticmethod
    def _port(port: bytes | str | int | None, type: int) -> int:
        if isinstance(port, bytes):
            port = port.decode("ascii", "replace")
        if isinstance(port, str):
            if port.isdigit():
                port = int(port)
            else:
                try:
                    port = _stdlib_socket.getservbyname(port, "udp" if type == SOCK_DGRAM else "tcp")
                except OSError:
                    raise _gaierror(_stdlib_socket.EAI_SERVICE, f"unknown service {port!r}") from None
        port = port or 0
        if not 0 <= port <= 0xFFFF:
            raise _gaierror(_stdlib_socket.EAI_SERVICE, f"port {port} out of range")
        return port

    async def resolve(self, host: bytes | str) -> tuple[str, ...]:
        """The IPv4 addresses of ``host`` along the chain; ``gaierror(EAI_NONAME)`` when none knows it."""
        if isinstance(host, bytes):
            # trio hands names over IDNA-2008 encoded (A-labels): plain ASCII.  Anything else
            # is no name DNS could hold (IDNA-2003's codec raised UnicodeError here).
            try:
                host = host.decode("ascii")
            except UnicodeDecodeError:
                raise _gaierror(_stdlib_socket.EAI_NONAME, f"{host!r} is not a valid host name") from None
        try:
            return (str(IPv4Address(host)),)
        except ValueError:
            pass
        name = host.lower().rstrip(".")
        found = self.hosts.get(name)
        if found is not None:
            self.stats.hosts_hits += 1
            return (found,)
        if name in _LOCALHOST or name.endswith(".localhost"):
            return ("127.0.0.1",)  # RFC 6761 6.3: loopback, which is the kernel's
        if self.nameservers:
            addresses = await self._dns(name)
            if addresses:
                return addresses
        if self.system_resolver:
            return await self._system(host)
        where = "the stack's hosts table" + (" or DNS" if self.nameservers else "")
        raise _gaierror(_stdlib_socket.EAI_NONAME, f"{host!r} is not in {where}")

    async def _system(self, host: str) -> tuple[str, ...]:
        self.stats.system_lookups += 1
        found = await trio.to_thread.run_sync(
            _stdlib_socket.getaddrinfo, host, None, AF_INET, SOCK_STREAM, 0, 0, abandon_on_cancel=True
        )
        return tuple(dict.fromkeys(str(entry[4][0]) for entry in found))

    # -- DNS ----------------------------------------------------------------------------------------
    async def _dns(self, name: str) -> tuple[str, ...]:
        """A records of ``name``: from the cache, else asked of the nameservers.  An empty tuple
        when the name exists without A records; gaierror for NXDOMAIN and when no server answers."""
        now = trio.current_time()
        cached = self._cache.get(name)
        if cached is not None:
            expires, addresses = cached
            if now < expires:
                self.stats.cache_hits += 1
                if not addresses:
                    raise _gaierror(_stdlib_socket.EAI_NONAME, f"{name!r}: no such name (cached)")
                return addresses
            del self._cache[name]
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise _gaierror(_stdlib_socket.EAI_NONAME, f"{name!r}: {exc}") from None
        async with self._limit:
            addresses, ttl = await self._ask(qname)
        self._remember(name, addresses, ttl)
        if not addresses:
            raise _gaierror(_stdlib_socket.EAI_NODATA, f"{name!r} has no IPv4 address")
        return addresses

    def _remember(self, name: str, addresses: tuple[str, ...], ttl: float) -> None:
        if ttl <= 0:
            return
        self._cache[name] = (trio.current_time() + ttl, addresses)
        self._cache.move_to_end(name)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    async def _ask(self, qname: dns.name.Name) -> tuple[tuple[str, ...], float]:
        """Ask each server in turn, ``attempts`` rounds; ``(addresses, ttl)`` of the first
        usable answer.  NXDOMAIN is cached negatively (empty addresses) and raised."""
        config = self.config
        last_error = "no nameserver answered"
        for _ in range(config.attempts):
            for server in self.nameservers:
                query = dns.message.make_query(qname, dns.rdatatype.A)
                query.id = self._random.randrange(0x10000)
                try:
                    response = await self._exchange(query, server)
                except OSError as exc:
                    last_error = f"{server[0]}:{server[1]}: {exc.strerror or exc}"
                    continue
                if response is None:
                    last_error = f"{server[0]}:{server[1]} did not answer in {config.timeout} s"
                    continue
                rcode = response.rcode()
                if rcode == dns.rcode.NXDOMAIN:
                    self.stats.nxdomain += 1
                    self._remember(qname.to_text(omit_final_dot=True), (), self._negative_ttl(response))
                    raise _gaierror(_stdlib_socket.EAI_NONAME, f"{qname}: no such name")
                if rcode != dns.rcode.NOERROR:
                    last_error = f"{server[0]}:{server[1]} answered {dns.rcode.to_text(rcode)}"
                    continue
                self.stats.answers += 1
                return self._addresses(response)
        raise _gaierror(_stdlib_socket.EAI_AGAIN, f"{qname}: {last_error}")

    def _addresses(self, response: dns.message.Message) -> tuple[tuple[str, ...], float]:
        addresses: list[str] = []
        ttl = self.config.max_ttl
        for rrset in response.answer:  # the CNAME chain a recursive server put before the A records
            ttl = min(ttl, float(rrset.ttl))
            if rrset.rdtype == dns.rdatatype.A:
                addresses.extend(rdata.address for rdata in rrset)
        if not addresses:
            ttl = self._negative_ttl(response)
        return tuple(dict.fromkeys(addresses)), ttl

    def _negative_ttl(self, response: dns.message.Message) -> float:
        """RFC 2308 5: the SOA's minimum (bounded by its TTL), at most ``negative_ttl``."""
        ttl = self.config.negative_ttl
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                ttl = min(ttl, float(rrset.ttl), float(rrset[0].minimum))
        return ttl

    async def _exchange(
        self, query: dns.message.Message, server: tuple[str, int]
    ) -> dns.message.Message | None:
        """One query over UDP (the stack's, through trio's socket factory), then TCP if the
        answer is truncated; ``None`` on a timeout."""
        wire = query.to_wire()
        self.stats.queries_sent += 1
        with trio.move_on_after(self.config.timeout):
            with trio.socket.socket(AF_INET, SOCK_DGRAM) as sock:
                await sock.connect(server)
                await sock.send(wire)
                while True:
                    data = await sock.recv(65535)
                    try:
                        response = dns.message.from_wire(data, ignore_trailing=True)
                    except dns.exception.DNSException:
                        self.stats.bad_answers += 1
                        continue
                    if response.id != query.id or not query.is_response(response):
                        self.stats.bad_answers += 1  # a stale answer, or a forged one
                        continue
                    break
            if response.flags & dns.flags.TC:
                self.stats.tcp_fallbacks += 1
                return await self._exchange_tcp(query, server)
            return response
        self.stats.timeouts += 1
        return None

    async def _exchange_tcp(self, query: dns.message.Message, server: tuple[str, int]) -> dns.message.Message:
        """RFC 1035 4.2.2 / RFC 7766: the same query over TCP, two length bytes before each message."""
        wire = query.to_wire()
        with trio.socket.socket(AF_INET, SOCK_STREAM) as sock:
            await sock.connect(server)
            stream = trio.SocketStream(sock)
            await stream.send_all(struct.pack("!H", len(wire)) + wire)
            head = await _receive_exactly(stream, 2)
            data = await _receive_exactly(stream, struct.unpack("!H", head)[0])
        try:
            response = dns.message.from_wire(data, ignore_trailing=True)
        except dns.exception.DNSException as exc:
            self.stats.bad_answers += 1
            raise OSError(errno.EPROTO, f"bad DNS answer over TCP: {exc}") from None
        if response.id != query.id or not query.is_response(response):
            self.stats.bad_answers += 1
            raise OSError(errno.EPROTO, "a DNS answer over TCP to another query")
        return response

    # -- getnameinfo -------------------------------------------------------------------------------
    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        """As the kernel's: a numeric address in (a name is a gaierror), the hosts table's name
        for it (NI_NAMEREQD: a gaierror when there is none), the port's service name unless
        NI_NUMERICSERV.  Loopback addresses are the system's to name."""
        host, port = sockaddr[0], sockaddr[1]
        try:
            address = IPv4Address(host)
        except ValueError:
            await trio.lowlevel.checkpoint()
            raise _gaierror(_stdlib_socket.EAI_NONAME, f"{host!r} is not a numeric address") from None
        if address.is_loopback:
            return await trio.to_thread.run_sync(
                _stdlib_socket.getnameinfo, (str(address), port), flags, abandon_on_cancel=True
            )
        await trio.lowlevel.checkpoint()
        name = str(address)
        if not flags & _stdlib_socket.NI_NUMERICHOST:
            for known, ip in self.hosts.items():
                if ip == name:
                    name = known
                    break
            else:
                if flags & _stdlib_socket.NI_NAMEREQD:
                    raise _gaierror(_stdlib_socket.EAI_NONAME, f"no name for {name}")
        service = str(port)
        if not flags & _stdlib_socket.NI_NUMERICSERV:
            protocol = "udp" if flags & _stdlib_socket.NI_DGRAM else "tcp"
            with contextlib.suppress(OSError):  # no service name: the number, as the kernel
                service = _stdlib_socket.getservbyport(port, protocol)
        return name, service


async def _receive_exactly(stream: trio.SocketStream, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            raise OSError(errno.ECONNRESET, "the DNS server closed the connection mid-answer")
        data += chunk
    return bytes(data)
