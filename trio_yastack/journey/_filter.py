"""A BPF-like packet filter for tracing and capture: ``host``, ``net``, ``port``, protocols and
TCP flags, with ``and``/``or``/``not`` and parentheses, as tcpdump spells them.

Filters run only while a trace or a capture is on, against a :class:`PacketInfo` (the few header
fields they can name), so they are compiled to plain closures once and never touch the
untraced path.  The grammar::

    expr      := term (("or" | "||") term)*
    term      := factor (["and" | "&&"] factor)*     (``tcp port 80``: "and" may be left out)
    factor    := ("not" | "!") factor | "(" expr ")" | primitive
    primitive := [src | dst] host ADDRESS | [src | dst] net ADDRESS/PREFIX | [src | dst] port N
               | tcp | udp | icmp | arp | ip | ip6 | icmp6
               | syn | fin | rst | psh | ack | urg       (a TCP segment with that flag set;
                                                         tcpdump's tcp-syn & co are accepted too)

A filter is untrusted text (it arrives over the control channel too): it is bounded in length
and depth, and every problem is a :class:`FilterError` naming it, never another exception.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address

__all__ = ["FilterError", "PacketFilter", "PacketInfo", "compile_filter", "packet_info"]

MAX_FILTER_LENGTH = 1000
_MAX_DEPTH = 50

PROTO_TCP, PROTO_UDP, PROTO_ICMP = 6, 17, 1
PROTO_ICMPV6 = 58
#: ``PacketInfo.proto`` of an ARP frame (not an IP protocol number)
PROTO_ARP = -1

_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "push": 0x08, "ack": 0x10, "urg": 0x20}
_PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "arp": PROTO_ARP}
_ADDRESSES = struct.Struct("!II")
_PORTS = struct.Struct("!HH")


class FilterError(ValueError):
    """A filter expression that cannot be compiled (the message says where)."""


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What a filter can test.  ``flags`` is ``None`` when no segment exists yet (a ``send``
    before ``tcp_output`` built one): flag tests then match, so a journey is followed from
    its start and judged again on the frame it produces."""

    proto: int | None = None  # IP protocol number, PROTO_ARP, or None (not IPv4/ARP, or junk)
    src: int = 0
    dst: int = 0
    sport: int = 0
    dport: int = 0
    flags: int | None = None
    length: int = 0
    ip6: bool = False  # an IPv6 packet (``src``/``dst`` are then 128-bit)


def packet_info(frame: bytes | bytearray | memoryview) -> PacketInfo:
    """The filterable fields of an Ethernet frame; a frame too short or strange for a field
    simply lacks it (this never raises: it reads untrusted bytes)."""
    n = len(frame)
    if n < 14:
        return PacketInfo(length=n)
    offset = 14
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype in (0x8100, 0x88A8) and n >= 18:
        ethertype = (frame[16] << 8) | frame[17]
        offset = 18
    if ethertype == 0x0806:
        if n >= offset + 28:
            spa, tpa = frame[offset + 14 : offset + 18], frame[offset + 24 : offset + 28]
            return PacketInfo(PROTO_ARP, int.from_bytes(spa, "big"), int.from_bytes(tpa, "big"), length=n)
        return PacketInfo(PROTO_ARP, length=n)
    if ethertype == 0x86DD:
        return _packet_info6(frame, offset, n)
    if ethertype != 0x0800 or n < offset + 20 or frame[offset] >> 4 != 4:
        return PacketInfo(length=n)
    ihl = (frame[offset] & 0x0F) << 2
    proto = frame[offset + 9]
    src, dst = _ADDRESSES.unpack_from(frame, offset + 12)
    l4 = offset + ihl
    first_fragment = not ((frame[offset + 6] << 8 | frame[offset + 7]) & 0x1FFF)
    sport = dport = 0
    flags: int | None = None
    if proto in (PROTO_TCP, PROTO_UDP) and first_fragment and ihl >= 20 and n >= l4 + 4:
        sport, dport = _PORTS.unpack_from(frame, l4)
        if proto == PROTO_TCP and n >= l4 + 14:
            flags = frame[l4 + 13]
    return PacketInfo(proto, src, dst, sport, dport, flags, n)


def _packet_info6(frame: bytes | bytearray | memoryview, offset: int, n: int) -> PacketInfo:
    """IPv6's fields: the fixed header's next header is the protocol (an extension header's
    number when one follows: filters see the chain's first header), ports and TCP flags when
    TCP or UDP follows at once."""
    if n < offset + 40 or frame[offset] >> 4 != 6:
        return PacketInfo(length=n)
    proto = frame[offset + 6]
    src = int.from_bytes(frame[offset + 8 : offset + 24], "big")
    dst = int.from_bytes(frame[offset + 24 : offset + 40], "big")
    l4 = offset + 40
    sport = dport = 0
    flags: int | None = None
    if proto in (PROTO_TCP, PROTO_UDP) and n >= l4 + 4:
        sport, dport = _PORTS.unpack_from(frame, l4)
        if proto == PROTO_TCP and n >= l4 + 14:
            flags = frame[l4 + 13]
    return PacketInfo(proto, src, dst, sport, dport, flags, n, ip6=True)


Predicate = Callable[[PacketInfo], bool]


class PacketFilter:
    """A compiled filter: ``match(info)``; ``text`` is the expression it came from."""

    __slots__ = ("_predicate", "text")

    def __init__(self, text: str, predicate: Predicate) -> None:
        self.text = text
        self._predicate = predicate

    def match(self, info: PacketInfo) -> bool:
        return self._predicate(info)

    def match_frame(self, frame: bytes | bytearray | memoryview) -> bool:
        return self._predicate(packet_info(frame))

    def __repr__(self) -> str:
        return f"PacketFilter({self.text!r})"


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    word = ""
    i = 0
    while i < len(text):
        ch = text[i]
        pair = text[i : i + 2]
        if pair in ("&&", "||"):
            if word:
                out.append(word)
                word = ""
            out.append(pair)
            i += 2
            continue
        if ch in "()!":
            if word:
                out.append(word)
                word = ""
            out.append(ch)
        elif ch.isspace():
            if word:
                out.append(word)
                word = ""
        else:
            word += ch
        i += 1
    if word:
        out.append(word)
    return [token.lower() for token in out]


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, what: str) -> str:
        token = self.peek()
        if token is None:
            raise FilterError(f"expected {what} at the end of the filter")
        self.at += 1
        return token

    def expression(self) -> Predicate:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise FilterError("filter nested too deeply")
        left = self.term()
        while self.peek() in ("or", "||"):
            self.at += 1
            right = self.term()
            left = (lambda a, b: lambda p: a(p) or b(p))(left, right)
        self.depth -= 1
        return left

    def term(self) -> Predicate:
        left = self.factor()
        while self.peek() is not None and self.peek() not in ("or", "||", ")"):
            # "and", or nothing: "tcp port 80" is tcpdump's "tcp and port 80"
            if self.peek() in ("and", "&&"):
                self.at += 1
            right = self.factor()
            left = (lambda a, b: lambda p: a(p) and b(p))(left, right)
        return left

    def factor(self) -> Predicate:
        token = self.take("a primitive")
        if token in ("not", "!"):
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise FilterError("filter nested too deeply")
            inner = self.factor()
            self.depth -= 1
            return lambda p: not inner(p)
        if token == "(":
            inner = self.expression()
            if self.take("')'") != ")":
                raise FilterError(f"expected ')' at token {self.at}")
            return inner
        return self.primitive(token)

    def primitive(self, token: str) -> Predicate:
        direction = None
        if token in ("src", "dst"):
            direction = token
            token = self.take("host, net or port after " + direction)
        if token == "host":
            return _host(_address(self.take("an address after host")), direction)
        if token == "net":
            return _net(_network(self.take("a network after net")), direction)
        if token == "port":
            return _port(_port_number(self.take("a port number after port")), direction)
        if direction is not None:
            raise FilterError(f"expected host, net or port after {direction}, not {token!r}")
        if token in _PROTOCOLS:
            proto = _PROTOCOLS[token]
            if proto == PROTO_ICMP:
                return lambda p: p.proto == PROTO_ICMP and not p.ip6  # (protocol 1 inside IPv6 is not ICMP)
            return lambda p: p.proto == proto
        if token == "ip":
            return lambda p: p.proto is not None and p.proto != PROTO_ARP and not p.ip6
        if token == "ip6":
            return lambda p: p.ip6
        if token == "icmp6":
            return lambda p: p.ip6 and p.proto == PROTO_ICMPV6
        flag_name = token.removeprefix("tcp-")
        if flag_name in _FLAGS:
            bit = _FLAGS[flag_name]
            return lambda p: p.proto == PROTO_TCP and (p.flags is None or bool(p.flags & bit))
        raise FilterError(f"unknown primitive {token!r}")


def _address(text: str) -> tuple[int, bool]:
    """An address and whether it is IPv6."""
    try:
        address = ip_address(text)
    except ValueError:
        raise FilterError(f"not an IPv4 or IPv6 address: {text!r}") from None
    return int(address), isinstance(address, IPv6Address)


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        return IPv6Network(text, strict=False) if ":" in text else IPv4Network(text, strict=False)
    except ValueError:
        raise FilterError(f"not an IPv4 or IPv6 network: {text!r}") from None


def _port_number(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 0xFFFF:
        raise FilterError(f"not a port number: {text!r}")
    return int(text)


def _host(host: tuple[int, bool], direction: str | None) -> Predicate:
    address, v6 = host
    if direction == "src":
        return lambda p: p.proto is not None and p.ip6 == v6 and p.src == address
    if direction == "dst":
        return lambda p: p.proto is not None and p.ip6 == v6 and p.dst == address
    return lambda p: p.proto is not None and p.ip6 == v6 and (p.src == address or p.dst == address)


def _net(network: IPv4Network | IPv6Network, direction: str | None) -> Predicate:
    mask, base = int(network.netmask), int(network.network_address)
    v6 = isinstance(network, IPv6Network)
    if direction == "src":
        return lambda p: p.proto is not None and p.ip6 == v6 and p.src & mask == base
    if direction == "dst":
        return lambda p: p.proto is not None and p.ip6 == v6 and p.dst & mask == base
    return lambda p: p.proto is not None and p.ip6 == v6 and (p.src & mask == base or p.dst & mask == base)


def _port(port: int, direction: str | None) -> Predicate:
    def has_ports(p: PacketInfo) -> bool:
        return p.proto == PROTO_TCP or p.proto == PROTO_UDP

    if direction == "src":
        return lambda p: has_ports(p) and p.sport == port
    if direction == "dst":
        return lambda p: has_ports(p) and p.dport == port
    return lambda p: has_ports(p) and (p.sport == port or p.dport == port)


def compile_filter(text: str | None) -> PacketFilter | None:
    """The compiled filter for ``text``; ``None`` for an empty one (everything matches)."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"a filter of at most {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    parser = _Parser(tokens)
    predicate = parser.expression()
    if parser.peek() is not None:
        raise FilterError(f"unexpected {parser.peek()!r} after a complete filter")
    return PacketFilter(text.strip(), predicate)
