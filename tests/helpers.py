"""Builders and matchers for the stack tests (tiers 2 and 3).

Builders make whole Ethernet frames with the wire Reprs (``build_udp_frame``, ``build_arp_frame``,
``ip_fragments``...).  Matchers check frames the stack emits, composed as gVisor's ``checker``
package does::

    check_ipv4(frame, src=OUR_IP, ttl=64, udp=check_udp(dport=7, payload=b"hi"))

Each matcher raises ``AssertionError`` naming the field that differs and returns the parsed Repr
so a test can look further.  ``make_core`` builds a :class:`StackCore` with a seeded RNG, and
``check_accounting`` is the counters-as-oracle check: every received frame is accounted for at
every layer it reached.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from trio_yastack.stack import (
    ArpDrop,
    EtherDrop,
    IcmpDrop,
    InterfaceConfig,
    IpConfig,
    IpDrop,
    StackConfig,
    StackCore,
)
from trio_yastack.stack.wire import (
    ARP_REQUEST,
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    ArpRepr,
    EthernetRepr,
    IcmpRepr,
    Ipv4Repr,
    MacAddress,
    UdpRepr,
    internet_checksum,
)

__all__ = [
    "BROADCAST_MAC",
    "OTHER_IP",
    "OTHER_MAC",
    "OUR_IP",
    "OUR_MAC",
    "PEER_IP",
    "PEER_MAC",
    "SUBNET_BROADCAST",
    "ZERO_MAC",
    "build_arp_frame",
    "build_ethernet_frame",
    "build_icmp_frame",
    "build_ipv4_frame",
    "build_udp_frame",
    "check_accounting",
    "check_arp",
    "check_ethernet",
    "check_icmp",
    "check_ipv4",
    "check_udp",
    "counters",
    "drops",
    "ip_fragments",
    "learn_peer",
    "make_core",
    "set_ip_field",
    "udp_datagram",
]

Addr = IPv4Address | str | int
Mac = MacAddress | bytes | str

OUR_MAC = MacAddress("02:00:00:00:00:02")
OUR_IP = IPv4Address("198.18.0.2")
PEER_MAC = MacAddress("02:00:00:00:00:01")
PEER_IP = IPv4Address("198.18.0.1")
OTHER_MAC = MacAddress("02:00:00:00:00:03")
OTHER_IP = IPv4Address("198.18.0.3")
SUBNET_BROADCAST = IPv4Address("198.18.0.255")
ZERO_MAC = MacAddress(bytes(6))


def _ip(value: Addr) -> IPv4Address:
    return value if isinstance(value, IPv4Address) else IPv4Address(value)


def _mac(value: Mac) -> MacAddress:
    return value if isinstance(value, MacAddress) else MacAddress(value)


# -- a stack instance --------------------------------------------------------------------------


def make_core(
    ip: Addr = OUR_IP,
    mac: Mac = OUR_MAC,
    *,
    seed: int = 0,
    prefix_len: int = 24,
    gateway: Addr | None = None,
    mtu: int = 1500,
    ip_config: IpConfig | None = None,
    **sections: Any,
) -> StackCore:
    """A :class:`StackCore` with a ``random.Random(seed)``; ``sections`` are the other StackConfig
    fields (``arp=ArpConfig(...)``, ``verify_checksums=False``...), and ``ip_config`` its ``ip``
    (``ip`` is our address here).  ``start()`` is not called."""
    if ip_config is not None:
        sections["ip"] = ip_config
    interface = InterfaceConfig(
        mac=_mac(mac),
        address=_ip(ip),
        prefix_len=prefix_len,
        gateway=_ip(gateway) if gateway is not None else None,
        mtu=mtu,
    )
    return StackCore(StackConfig(interface=interface, **sections), rng=random.Random(seed))


def learn_peer(core: StackCore, ip: Addr = PEER_IP, mac: Mac = PEER_MAC, now: float = 0.0) -> None:
    """Teach ``core`` the peer's MAC the way a real peer does (it ARPs for us first); the ARP
    reply this causes is taken out of the outbox."""
    core.ether_input(build_arp_frame(ARP_REQUEST, mac, ip, ZERO_MAC, core.config.interface.address), now)
    assert core.arp.lookup(int(_ip(ip)), now) == bytes(_mac(mac)), "the peer was not learned"
    core.take_outbox()


def counters(core: StackCore) -> dict[str, int]:
    """Every counter of every layer, flattened: ``"ip.received"``, ``"udp.dropped.no_socket"``."""
    flat: dict[str, int] = {}
    stats = core.statistics()
    for layer in (stats.ether, stats.arp, stats.ip, stats.icmp, stats.udp):
        for name, value in layer.counters.items():
            flat[f"{layer.layer}.{name}"] = value
        for reason, value in layer.dropped.items():
            flat[f"{layer.layer}.dropped.{reason}"] = value
    return flat


def drops(core: StackCore) -> dict[str, int]:
    """The drop counters only, as ``"layer.reason" -> count`` (zero counts omitted)."""
    return {
        name.replace(".dropped.", "."): value
        for name, value in counters(core).items()
        if ".dropped." in name and value
    }


# -- builders ----------------------------------------------------------------------------------


def build_ethernet_frame(
    src_mac: Mac, dst_mac: Mac, ethertype: int, payload: bytes, *, pad_to: int = 0
) -> bytes:
    """An Ethernet II frame; ``pad_to`` appends zero bytes up to that length (link padding)."""
    frame = EthernetRepr(_mac(dst_mac), _mac(src_mac), ethertype).to_bytes(payload)
    return frame + bytes(max(0, pad_to - len(frame)))


def build_arp_frame(
    operation: int,
    sender_mac: Mac,
    sender_ip: Addr,
    target_mac: Mac,
    target_ip: Addr,
    *,
    eth_src: Mac | None = None,
    eth_dst: Mac | None = None,
) -> bytes:
    """An ARP frame; the Ethernet destination is broadcast for a request, the target for a reply."""
    arp = ArpRepr(operation, _mac(sender_mac), _ip(sender_ip), _mac(target_mac), _ip(target_ip))
    if eth_dst is None:
        eth_dst = BROADCAST_MAC if operation == ARP_REQUEST else target_mac
    return build_ethernet_frame(eth_src or sender_mac, eth_dst, ETHERTYPE_ARP, arp.to_bytes())


def build_ipv4_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src_ip: Addr,
    dst_ip: Addr,
    protocol: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    tos: int = 0,
    options: bytes = b"",
    padding: bytes = b"",
) -> bytes:
    """An IPv4 datagram in an Ethernet frame (``padding`` goes after the datagram, as link padding)."""
    ip = Ipv4Repr(
        src=_ip(src_ip),
        dst=_ip(dst_ip),
        protocol=protocol,
        payload_len=len(payload),
        ttl=ttl,
        ident=ident,
        dont_fragment=dont_fragment,
        more_fragments=more_fragments,
        fragment_offset=fragment_offset,
        tos=tos,
        options=options,
    )
    return build_ethernet_frame(src_mac, dst_mac, ETHERTYPE_IPV4, ip.to_bytes(payload) + padding)


def udp_datagram(
    src_ip: Addr, dst_ip: Addr, sport: int, dport: int, payload: bytes, *, checksum: int | None = None
) -> bytes:
    """A UDP header and payload; ``checksum`` overrides the computed field (0: no checksum)."""
    datagram = bytearray(UdpRepr(sport, dport, payload).to_bytes(_ip(src_ip), _ip(dst_ip)))
    if checksum is not None:
        struct.pack_into("!H", datagram, 6, checksum)
    return bytes(datagram)


def build_udp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src_ip: Addr,
    dst_ip: Addr,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    checksum: int | None = None,
    **ip: Any,
) -> bytes:
    """A UDP datagram in IPv4 in Ethernet; ``ip`` goes to :func:`build_ipv4_frame`."""
    datagram = udp_datagram(src_ip, dst_ip, sport, dport, payload, checksum=checksum)
    return build_ipv4_frame(src_mac, dst_mac, src_ip, dst_ip, IPPROTO_UDP, datagram, **ip)


def build_icmp_frame(
    src_mac: Mac, dst_mac: Mac, src_ip: Addr, dst_ip: Addr, icmp: IcmpRepr, **ip: Any
) -> bytes:
    """An ICMP message (checksum computed) in IPv4 in Ethernet."""
    return build_ipv4_frame(src_mac, dst_mac, src_ip, dst_ip, IPPROTO_ICMP, icmp.to_bytes(), **ip)


def ip_fragments(
    src_mac: Mac,
    dst_mac: Mac,
    src_ip: Addr,
    dst_ip: Addr,
    protocol: int,
    payload: bytes,
    *,
    ident: int,
    fragment_size: int = 1480,
    **ip: Any,
) -> list[bytes]:
    """``payload`` (a transport datagram) cut into IPv4 fragment frames of ``fragment_size``
    bytes (a multiple of 8) each, in order."""
    assert fragment_size % 8 == 0
    frames = []
    for start in range(0, len(payload), fragment_size):
        piece = payload[start : start + fragment_size]
        more = start + fragment_size < len(payload)
        frames.append(
            build_ipv4_frame(
                src_mac,
                dst_mac,
                src_ip,
                dst_ip,
                protocol,
                piece,
                ident=ident,
                more_fragments=more,
                fragment_offset=start,
                **ip,
            )
        )
    return frames


def set_ip_field(frame: bytes, offset: int, fmt: str, value: int, *, fix_checksum: bool = True) -> bytes:
    """``frame`` (untagged) with an IPv4 header field at ``offset`` (from the IP header) overwritten
    by ``struct`` format ``fmt``; the header checksum is redone unless ``fix_checksum`` is false."""
    buf = bytearray(frame)
    struct.pack_into(fmt, buf, 14 + offset, value)
    if fix_checksum:
        header_len = max(20, min((buf[14] & 0x0F) * 4, len(buf) - 14))
        struct.pack_into("!H", buf, 14 + 10, 0)
        struct.pack_into("!H", buf, 14 + 10, internet_checksum(bytes(buf[14 : 14 + header_len])))
    return bytes(buf)


# -- matchers ----------------------------------------------------------------------------------

#: a transport matcher: called with (frame, payload start, payload end, the IPv4 header)
TransportCheck = Callable[[bytes, int, int, Ipv4Repr], Any]


def _expect(what: str, actual: Any, expected: Any) -> None:
    if expected is not None and actual != expected:
        raise AssertionError(f"{what}: got {actual!r}, expected {expected!r}")


def check_ethernet(
    frame: bytes, *, src: Mac | None = None, dst: Mac | None = None, ethertype: int | None = None
) -> tuple[EthernetRepr, int]:
    """Parse the Ethernet header, check the given fields; return it and the payload offset."""
    eth, offset = EthernetRepr.parse(frame)
    _expect("ethernet src", eth.src, None if src is None else _mac(src))
    _expect("ethernet dst", eth.dst, None if dst is None else _mac(dst))
    _expect("ethertype", eth.ethertype, ethertype)
    return eth, offset


def check_arp(
    frame: bytes,
    *,
    operation: int | None = None,
    sender_mac: Mac | None = None,
    sender_ip: Addr | None = None,
    target_mac: Mac | None = None,
    target_ip: Addr | None = None,
    eth_src: Mac | None = None,
    eth_dst: Mac | None = None,
) -> ArpRepr:
    """An ARP frame with the given fields (and exactly 42 bytes: we never pad)."""
    _eth, offset = check_ethernet(frame, src=eth_src, dst=eth_dst, ethertype=ETHERTYPE_ARP)
    _expect("frame length", len(frame), offset + ArpRepr.buffer_len)
    arp = ArpRepr.parse(frame, offset)
    _expect("arp operation", arp.operation, operation)
    _expect("arp sender mac", arp.sender_mac, None if sender_mac is None else _mac(sender_mac))
    _expect("arp sender ip", arp.sender_ip, None if sender_ip is None else _ip(sender_ip))
    _expect("arp target mac", arp.target_mac, None if target_mac is None else _mac(target_mac))
    _expect("arp target ip", arp.target_ip, None if target_ip is None else _ip(target_ip))
    return arp


def check_ipv4(
    frame: bytes,
    *,
    eth_src: Mac | None = None,
    eth_dst: Mac | None = None,
    src: Addr | None = None,
    dst: Addr | None = None,
    protocol: int | None = None,
    ttl: int | None = None,
    ident: int | None = None,
    tos: int | None = None,
    dont_fragment: bool | None = None,
    more_fragments: bool | None = None,
    fragment_offset: int | None = None,
    payload_len: int | None = None,
    udp: TransportCheck | None = None,
    icmp: TransportCheck | None = None,
) -> Ipv4Repr:
    """An IPv4 frame (valid header checksum, no bytes after the datagram) with the given fields;
    ``udp``/``icmp`` matchers are applied to the payload (which implies the protocol)."""
    _eth, offset = check_ethernet(frame, src=eth_src, dst=eth_dst, ethertype=ETHERTYPE_IPV4)
    ip = Ipv4Repr.parse(frame, offset)
    _expect("frame length", len(frame), offset + ip.total_len)
    _expect("ip src", ip.src, None if src is None else _ip(src))
    _expect("ip dst", ip.dst, None if dst is None else _ip(dst))
    _expect("ip protocol", ip.protocol, protocol)
    _expect("ip ttl", ip.ttl, ttl)
    _expect("ip ident", ip.ident, ident)
    _expect("ip tos", ip.tos, tos)
    _expect("ip DF", ip.dont_fragment, dont_fragment)
    _expect("ip MF", ip.more_fragments, more_fragments)
    _expect("ip fragment offset", ip.fragment_offset, fragment_offset)
    _expect("ip payload length", ip.payload_len, payload_len)
    start, end = offset + ip.header_len, offset + ip.total_len
    if udp is not None:
        _expect("ip protocol", ip.protocol, IPPROTO_UDP)
        udp(frame, start, end, ip)
    if icmp is not None:
        _expect("ip protocol", ip.protocol, IPPROTO_ICMP)
        icmp(frame, start, end, ip)
    return ip


def check_udp(
    *, sport: int | None = None, dport: int | None = None, payload: bytes | None = None
) -> TransportCheck:
    """A UDP datagram with a valid (non-zero) checksum and the given fields."""

    def check(frame: bytes, start: int, end: int, ip: Ipv4Repr) -> UdpRepr:
        udp = UdpRepr.parse(frame, ip.src, ip.dst, start, end)
        if frame[start + 6 : start + 8] == b"\x00\x00":
            raise AssertionError("udp checksum: the stack sent none")
        _expect("udp length", int.from_bytes(frame[start + 4 : start + 6], "big"), end - start)
        _expect("udp sport", udp.src_port, sport)
        _expect("udp dport", udp.dst_port, dport)
        _expect("udp payload", udp.payload, payload)
        return udp

    return check


def check_icmp(
    *,
    type: int | None = None,  # the RFC's field name
    code: int | None = None,
    rest: int | None = None,
    ident: int | None = None,
    seq: int | None = None,
    data: bytes | None = None,
) -> TransportCheck:
    """An ICMP message with a valid checksum and the given fields (``data``: after the 8-byte header)."""

    def check(frame: bytes, start: int, end: int, ip: Ipv4Repr) -> IcmpRepr:
        icmp = IcmpRepr.parse(frame, start, end)
        _expect("icmp type", icmp.type, type)
        _expect("icmp code", icmp.code, code)
        _expect("icmp rest of header", icmp.rest, rest)
        _expect("icmp ident", icmp.ident, ident)
        _expect("icmp seq", icmp.seq, seq)
        _expect("icmp data", icmp.data, data)
        return icmp

    return check


# -- the accounting oracle ---------------------------------------------------------------------

#: drop reasons that are about sending, not about a received frame (from the stack's registries)
ETHER_OUTPUT_REASONS = EtherDrop.OUTPUT
ARP_OUTPUT_REASONS = ArpDrop.OUTPUT
#: ip_input's own refusals (before reassembly or demultiplexing)
IP_HEADER_REASONS = IpDrop.HEADER
ICMP_PARSE_REASONS = IcmpDrop.PARSE
ICMP_ERROR_INPUT_REASONS = IcmpDrop.ERROR_INPUT


def check_accounting(core: StackCore) -> None:
    """Every frame received is accounted for at every layer it reached: received == dropped by
    an input reason + handed on (or consumed), so nothing vanishes uncounted.  (For frames from
    the wire: a datagram looped back to our own address enters ip_input without ether_input.)"""
    s = core.statistics()
    ether_in_drops = sum(v for k, v in s.ether.dropped.items() if k not in ETHER_OUTPUT_REASONS)
    assert s.ether.received == ether_in_drops + s.arp.received + s.ip.received, s.format()
    arp_in_drops = sum(v for k, v in s.arp.dropped.items() if k not in ARP_OUTPUT_REASONS)
    assert s.arp.received == arp_in_drops + s.arp.requests_received + s.arp.replies_received, s.format()
    ip_header_drops = sum(v for k, v in s.ip.dropped.items() if k in IP_HEADER_REASONS)
    unknown = s.ip.dropped.get(IpDrop.UNKNOWN_PROTOCOL, 0)
    demultiplexed = s.ip.delivered + unknown  # datagrams (whole or reassembled) handed to a protocol
    assert s.ip.received == ip_header_drops + s.ip.fragments_received + demultiplexed - s.ip.reassembled, (
        s.format()
    )
    assert s.ip.delivered == s.udp.received + s.icmp.received + s.tcp.segments_received, s.format()
    assert s.udp.received == s.udp.dropped_total + s.udp.delivered, s.format()
    icmp_parse_drops = sum(s.icmp.dropped.get(k, 0) for k in ICMP_PARSE_REASONS)
    assert s.icmp.received == (
        icmp_parse_drops
        + s.icmp.echo_requests_received
        + s.icmp.echo_replies_received
        + s.icmp.errors_received
        + s.icmp.dropped.get(IcmpDrop.UNKNOWN_TYPE, 0)
    ), s.format()
    assert (
        s.icmp.echo_requests_received
        == s.icmp.dropped.get(IcmpDrop.BROADCAST_ECHO, 0) + s.icmp.echo_replies_sent
    )
    error_drops = sum(s.icmp.dropped.get(k, 0) for k in ICMP_ERROR_INPUT_REASONS)
    assert s.icmp.errors_received == error_drops + s.icmp.errors_delivered, s.format()


def assert_no_reset_but_for_stale_segments(
    tcp: dict[str, Any], dropped: dict[str, int] | None = None
) -> None:
    """A core's TCP counters show no reset except the listener's answers (some of them
    rate-limited) to segments of connections already gone: an ACK that matched no connection, no
    syncache entry and no cookie, which RFC 9293 3.10.7.2 resets, as Linux and FreeBSD do.

    They come from the tail loss probe (RFC 8985 7.2: PTO = 2 SRTT + 2 ms, as Linux): a peer in
    request/response ("pingpong") mode delays its ACK by tens of milliseconds, a probe goes before
    it, and the peer's answer to the probe arrives after the connection closed (issue 19: the
    spurious probes are a known cost, counted in ``tlp_probes``).  Data stays intact (the callers
    check it); a segment of a live connection routed to the wrong core would be a reset without a
    cookie failure behind it, or a ``no_socket`` drop, and fails here."""
    assert tcp["resets_sent"] <= tcp.get("syncookies_failed", 0), (tcp, dropped)  # fewer: some rate-limited
