"""One line per frame, tcpdump-style, for tracing and the demo: parsed with the same Reprs the
tests check, so what it prints is what is on the wire."""

from __future__ import annotations

from ._errors import WireError
from .arp import ARP_REQUEST, ArpRepr
from .ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetRepr
from .icmp import ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED, IcmpRepr
from .ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Repr
from .tcp import TcpRepr
from .udp import UdpRepr

__all__ = ["describe_frame"]

_TCP_FLAGS = "FSRPAUEC"


def _tcp_flags(flags: int) -> str:
    return "".join(letter for bit, letter in enumerate(_TCP_FLAGS) if flags & (1 << bit)) or "."


def describe_frame(frame: bytes) -> str:
    """A one-line summary of an Ethernet frame; malformed parts are named, never raised."""
    try:
        eth, offset = EthernetRepr.parse(frame)
    except WireError as exc:
        return f"malformed ethernet ({exc})"
    vlan = f"vlan {eth.vlan.vid} " if eth.vlan else ""
    if eth.ethertype == ETHERTYPE_ARP:
        try:
            arp = ArpRepr.parse(frame, offset)
        except WireError as exc:
            return f"{vlan}ARP malformed ({exc})"
        if arp.operation == ARP_REQUEST:
            if arp.sender_ip == arp.target_ip:
                return f"{vlan}ARP announce {arp.sender_ip} is-at {arp.sender_mac}"
            return f"{vlan}ARP who-has {arp.target_ip} tell {arp.sender_ip}"
        return f"{vlan}ARP reply {arp.sender_ip} is-at {arp.sender_mac}"
    if eth.ethertype != ETHERTYPE_IPV4:
        return f"{vlan}{eth.src} > {eth.dst} ethertype {eth.ethertype:#06x}, {len(frame)} bytes"
    try:
        ip = Ipv4Repr.parse(frame, offset)
    except WireError as exc:
        return f"{vlan}IP malformed ({exc})"
    start = offset + ip.header_len
    end = offset + ip.total_len
    if ip.more_fragments or ip.fragment_offset:
        more = "+" if ip.more_fragments else ""
        return (
            f"{vlan}IP {ip.src} > {ip.dst}: frag id {ip.ident} offset {ip.fragment_offset}{more}, "
            f"proto {ip.protocol}, length {ip.payload_len}"
        )
    head = f"{vlan}IP {ip.src}"
    try:
        if ip.protocol == IPPROTO_UDP:
            udp = UdpRepr.parse(frame, ip.src, ip.dst, start, end)
            return f"{head}.{udp.src_port} > {ip.dst}.{udp.dst_port}: UDP, length {len(udp.payload)}"
        if ip.protocol == IPPROTO_TCP:
            tcp = TcpRepr.parse(frame, ip.src, ip.dst, start, end)
            return (
                f"{head}.{tcp.src_port} > {ip.dst}.{tcp.dst_port}: Flags [{_tcp_flags(tcp.flags)}], "
                f"seq {tcp.seq}, ack {tcp.ack}, win {tcp.window}, length {len(tcp.payload)}"
            )
        if ip.protocol == IPPROTO_ICMP:
            icmp = IcmpRepr.parse(frame, start, end)
            if icmp.type in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
                kind = "request" if icmp.type == ICMP_ECHO_REQUEST else "reply"
                detail = f"id {icmp.ident}, seq {icmp.seq}, length {len(icmp.data)}"
                return f"{head} > {ip.dst}: ICMP echo {kind}, {detail}"
            if icmp.type == ICMP_DEST_UNREACH:
                return f"{head} > {ip.dst}: ICMP unreachable code {icmp.code}, length {len(icmp.data)}"
            if icmp.type == ICMP_TIME_EXCEEDED:
                return f"{head} > {ip.dst}: ICMP time exceeded code {icmp.code}"
            return f"{head} > {ip.dst}: ICMP type {icmp.type} code {icmp.code}"
    except WireError as exc:
        return f"{head} > {ip.dst}: proto {ip.protocol} malformed ({exc})"
    return f"{head} > {ip.dst}: proto {ip.protocol}, length {ip.payload_len}"
