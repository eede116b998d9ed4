"""Names for the stack's sockets: the hostname resolver ``install_stack`` installs for a trio run.

A chain, tried in order: numeric addresses; the static hosts table (``open_stack(hosts=...)``);
DNS over the stack's own UDP to the configured nameservers (``open_stack(nameservers=[...])``,
``yastack serve --dns``), with answers cached by their TTL, each server tried in turn a bounded
number of times, and TCP when an answer comes back truncated (RFC 7766); and, only where the user
allows it (``system_resolver=True``), the system's resolver in a thread.  The DNS message format is
dnspython's, not ours.  Loopback names and addresses (``localhost``, 127.0.0.0/8) are the
kernel's, as loopback sockets are (see ``_socket.py``).

IPv6: the hosts table holds IPv6 addresses too (a name may have one of each family), DNS asks
AAAA for ``AF_INET6``, and for ``AF_UNSPEC`` once a stack of the run has IPv6 (``ipv6``; before
that AF_UNSPEC asks A only, as it always did).  Answers of both families are ordered by RFC 6724's
default policy table, as the system's getaddrinfo orders them (rule 1: IPv6 last when no stack of
the run has it; rule 6: higher precedence first): global IPv6 such as 2001:2::/48 (precedence 40)
before IPv4 (35), before 6to4 (30) and Teredo's 2001::/32 (5).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
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
AF_INET6 = _stdlib_socket.AF_INET6
SOCK_STREAM = _stdlib_socket.SOCK_STREAM
SOCK_DGRAM = _stdlib_socket.SOCK_DGRAM

#: getaddrinfo()'s entries, as trio's HostnameResolver declares them
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

#: RFC 6724 2.1's default policy table (glibc's, without /etc/gai.conf): prefix -> precedence,
#: longest first so the first match is the longest
_PRECEDENCE = sorted(
    (
        (IPv6Network("::1/128"), 50),
        (IPv6Network("::/0"), 40),
        (IPv6Network("::ffff:0:0/96"), 35),  # IPv4, as a v4-mapped address
        (IPv6Network("2002::/16"), 30),
        (IPv6Network("2001::/32"), 5),  # Teredo (2001:0::/32 only: 2001:2::/48 is outside it)
        (IPv6Network("fc00::/7"), 3),
        (IPv6Network("::/96"), 1),
        (IPv6Network("fec0::/10"), 1),
        (IPv6Network("3ffe::/16"), 1),
    ),
    key=lambda entry: -entry[0].prefixlen,
)


def _precedence(family: int, address: str) -> int:
    """RFC 6724's precedence of a destination address (IPv4 as ``::ffff:a.b.c.d``)."""
    if family == AF_INET:
        return 35
    ip = IPv6Address(address.partition("%")[0])
    return next(precedence for network, precedence in _PRECEDENCE if ip in network)


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


def _version(rdtype: dns.rdatatype.RdataType) -> str:
    return "IPv6" if rdtype == dns.rdatatype.AAAA else "IPv4"


def _gaierror(code: int, text: str) -> _stdlib_socket.gaierror:
    return _stdlib_socket.gaierror(code, text)


class StackHostnameResolver(trio.abc.HostnameResolver):
    """Numeric addresses, the hosts table, DNS over the stack, then (if allowed) the system."""

    def __init__(
        self,
        hosts: Mapping[str, str | Sequence[str]] | None = None,
        *,
        nameservers: list[str] | tuple[str, ...] = (),
        system_resolver: bool = False,
        config: ResolverConfig | None = None,
    ) -> None:
        #: name -> IPv4 address, and name -> IPv6 address (``add_hosts`` fills both)
        self.hosts: dict[str, str] = {}
        self.hosts6: dict[str, str] = {}
        #: a stack of this run has IPv6: AF_UNSPEC lookups ask AAAA too (``install_stack`` sets it)
        self.ipv6 = False
        self.nameservers: list[tuple[str, int]] = []
        self.system_resolver = system_resolver
        self.config = config or ResolverConfig()
        self.stats = ResolverStatistics()
        self._cache: OrderedDict[
            tuple[str, dns.rdatatype.RdataType], tuple[float, tuple[str, ...] | None]
        ] = OrderedDict()
        self._limit = trio.CapacityLimiter(self.config.max_queries)
        self._random = random.SystemRandom()  # query IDs an off-path attacker cannot guess
        self.add_hosts(hosts or {})
        self.add_nameservers(nameservers)

    def add_hosts(self, hosts: Mapping[str, str | Sequence[str]]) -> None:
        """Add names (case-insensitive, trailing dot ignored) with their addresses: one, or a list
        (one IPv4 and one IPv6 address, say: the last of each family wins)."""
        for name, value in hosts.items():
            key = name.lower().rstrip(".")
            for ip in [value] if isinstance(value, (str, IPv4Address, IPv6Address)) else value:
                address = ip_address(ip)
                (self.hosts6 if address.version == 6 else self.hosts)[key] = str(address)

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
        if family not in (0, AF_INET, AF_INET6):
            raise _gaierror(_stdlib_socket.EAI_FAMILY, "the stack serves AF_INET and AF_INET6 only")
        port_number = self._port(port, type)
        found: list[tuple[int, str]]
        if host is None:
            passive = flags & _stdlib_socket.AI_PASSIVE
            if family == AF_INET6:
                found = [(AF_INET6, "::" if passive else "::1")]
            else:
                found = [(AF_INET, "0.0.0.0" if passive else "127.0.0.1")]
        else:
            found = await self._lookup(host, family)
        kinds = [type] if type else [SOCK_STREAM, SOCK_DGRAM]
        entries: list[_AddrInfo4 | _AddrInfo6] = []
        for found_family, address in found:
            for kind in kinds:
                socket_kind = _stdlib_socket.SocketKind(kind)
                protocol = proto or (
                    _stdlib_socket.IPPROTO_TCP if kind == SOCK_STREAM else _stdlib_socket.IPPROTO_UDP
                )
                if found_family == AF_INET6:
                    entries.append(
                        (
                            _stdlib_socket.AddressFamily.AF_INET6,
                            socket_kind,
                            protocol,
                            "",
                            (address, port_number, 0, 0),
                        )
                    )
                else:
                    entries.append(
                        (
                            _stdlib_socket.AddressFamily.AF_INET,
                            socket_kind,
                            protocol,
                            "",
                            (address, port_number),
                        )
                    )
        return entries

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
        return tuple(address for _, address in await self._lookup(host, AF_INET))

    async def _lookup(self, host: bytes | str, family: int) -> list[tuple[int, str]]:
        """``(family, address)`` pairs of ``host`` along the chain for ``family`` (0: both, AAAA
        asked of DNS only when ``ipv6``), in RFC 6724's order; ``gaierror`` when none knows it."""
        if isinstance(host, bytes):
            # trio hands names over IDNA-2008 encoded (A-labels): plain ASCII.  Anything else
            # is no name DNS could hold (IDNA-2003's codec raised UnicodeError here).
            try:
                host = host.decode("ascii")
            except UnicodeDecodeError:
                raise _gaierror(_stdlib_socket.EAI_NONAME, f"{host!r} is not a valid host name") from None
        want4, want6 = family != AF_INET6, family != AF_INET
        try:
            numeric = ip_address(host)  # (an IPv6 one may carry a "%scope")
        except ValueError:
            pass
        else:
            found_family = AF_INET6 if numeric.version == 6 else AF_INET
            if not (want6 if found_family == AF_INET6 else want4):
                raise _gaierror(_stdlib_socket.EAI_ADDRFAMILY, f"{host!r} is not of the family asked for")
            return [(found_family, str(numeric))]
        name = host.lower().rstrip(".")
        known: list[tuple[int, str]] = [
            *([(AF_INET, self.hosts[name])] if want4 and name in self.hosts else []),
            *([(AF_INET6, self.hosts6[name])] if want6 and name in self.hosts6 else []),
        ]
        if known:
            self.stats.hosts_hits += 1
            return self._sorted(known)
        if name in _LOCALHOST or name.endswith(".localhost"):
            # RFC 6761 6.3: loopback, which is the kernel's (AF_UNSPEC: 127.0.0.1, as before)
            return [(AF_INET6, "::1")] if family == AF_INET6 else [(AF_INET, "127.0.0.1")]
        if self.nameservers:
            found = await self._dns_families(name, want4, want6 and (family == AF_INET6 or self.ipv6))
            if found:
                return self._sorted(found)
        if self.system_resolver:
            return self._sorted(await self._system(host, family))
        where = "the stack's hosts table" + (" or DNS" if self.nameservers else "")
        raise _gaierror(_stdlib_socket.EAI_NONAME, f"{host!r} is not in {where}")

    def _sorted(self, found: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """RFC 6724 6's destination order, rules 1 (IPv6 without a stack that has it goes last)
        and 6 (higher precedence first); otherwise as found (the sort is stable)."""
        if len(found) < 2:
            return found
        return sorted(found, key=lambda entry: (entry[0] == AF_INET6 and not self.ipv6, -_precedence(*entry)))

    async def _dns_families(self, name: str, want4: bool, want6: bool) -> list[tuple[int, str]]:
        """A and/or AAAA records of ``name``; the first error when neither family has any."""
        found: list[tuple[int, str]] = []
        error: _stdlib_socket.gaierror | None = None
        wanted: bool
        found_family: int
        for wanted, found_family, rdtype in (
            (want4, AF_INET, dns.rdatatype.A),
            (want6, AF_INET6, dns.rdatatype.AAAA),
        ):
            if not wanted:
                continue
            try:
                found.extend((found_family, address) for address in await self._dns(name, rdtype))
            except _stdlib_socket.gaierror as exc:
                if exc.errno == _stdlib_socket.EAI_NONAME:
                    raise  # no such name: of either family
                error = error or exc
        if not found and error is not None:
            raise error
        return found

    async def _system(self, host: str, family: int) -> list[tuple[int, str]]:
        self.stats.system_lookups += 1
        found = await trio.to_thread.run_sync(
            _stdlib_socket.getaddrinfo, host, None, family, SOCK_STREAM, 0, 0, abandon_on_cancel=True
        )
        return list(dict.fromkeys((int(entry[0]), str(entry[4][0])) for entry in found))

    # -- DNS ----------------------------------------------------------------------------------------
    async def _dns(self, name: str, rdtype: dns.rdatatype.RdataType = dns.rdatatype.A) -> tuple[str, ...]:
        """A (or AAAA) records of ``name``: from the cache, else asked of the nameservers.
        gaierror for NXDOMAIN, a name without such records, and when no server answers."""
        now = trio.current_time()
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            expires, known = cached
            if now < expires:
                self.stats.cache_hits += 1
                if known is None:
                    raise _gaierror(_stdlib_socket.EAI_NONAME, f"{name!r}: no such name (cached)")
                if not known:
                    raise _gaierror(
                        _stdlib_socket.EAI_NODATA, f"{name!r} has no {_version(rdtype)} address (cached)"
                    )
                return known
            del self._cache[key]
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise _gaierror(_stdlib_socket.EAI_NONAME, f"{name!r}: {exc}") from None
        async with self._limit:
            addresses, ttl = await self._ask(qname, rdtype)
        self._remember(key, addresses, ttl)
        if not addresses:
            raise _gaierror(_stdlib_socket.EAI_NODATA, f"{name!r} has no {_version(rdtype)} address")
        return addresses

    def _remember(
        self, key: tuple[str, dns.rdatatype.RdataType], addresses: tuple[str, ...] | None, ttl: float
    ) -> None:
        """Cache an answer: its addresses, ``()`` for a name without records of the type
        (NODATA) or ``None`` for no such name (NXDOMAIN)."""
        if ttl <= 0:
            return
        self._cache[key] = (trio.current_time() + ttl, addresses)
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    async def _ask(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[tuple[str, ...], float]:
        """Ask each server in turn, ``attempts`` rounds; ``(addresses, ttl)`` of the first
        usable answer.  NXDOMAIN is cached negatively (as ``None``) and raised."""
        config = self.config
        last_error = "no nameserver answered"
        for _ in range(config.attempts):
            for server in self.nameservers:
                query = dns.message.make_query(qname, rdtype)
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
                    key = (qname.to_text(omit_final_dot=True), rdtype)
                    self._remember(key, None, self._negative_ttl(response))
                    raise _gaierror(_stdlib_socket.EAI_NONAME, f"{qname}: no such name")
                if rcode != dns.rcode.NOERROR:
                    last_error = f"{server[0]}:{server[1]} answered {dns.rcode.to_text(rcode)}"
                    continue
                self.stats.answers += 1
                return self._addresses(response, rdtype)
        raise _gaierror(_stdlib_socket.EAI_AGAIN, f"{qname}: {last_error}")

    def _addresses(
        self, response: dns.message.Message, rdtype: dns.rdatatype.RdataType
    ) -> tuple[tuple[str, ...], float]:
        addresses: list[str] = []
        ttl = self.config.max_ttl
        for rrset in response.answer:  # the CNAME chain a recursive server put before the records
            ttl = min(ttl, float(rrset.ttl))
            if rrset.rdtype == rdtype:
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
        NI_NUMERICSERV.  Loopback addresses are the system's to name.  IPv6 ones too (the
        ``hosts6`` table names them)."""
        host, port = sockaddr[0], sockaddr[1]
        try:
            address = ip_address(host)
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
            for known, ip in (self.hosts6 if address.version == 6 else self.hosts).items():
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
