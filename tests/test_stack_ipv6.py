"""Tier 2 for IPv6 in the sans-IO core: Neighbor Discovery (answers byte-exact to the kernel's
captured solicitation, the RFC 4861 states, the bounded hold queue, DAD, router advertisements),
ICMPv6 echo and errors (Packet Too Big lowering the path MTU, never below 1280; time exceeded for
a reassembly that never completes; parameter problem for an unknown next header), reassembly with
RFC 5722's overlap rule, UDP over IPv6 both ways, and hostile frames (counted drops, no exception).

Two cores joined by :func:`exchange` play the kernel and us where a conversation is needed; the
kernel's own frames (``vectors_ipv6.py``) open the ones it can."""

from __future__ import annotations

import errno
import random
import struct
from ipaddress import IPv4Address, IPv6Address, IPv6Interface

import pytest
import vectors_ipv6 as v
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_yastack.stack import ArpConfig, InterfaceConfig, Ip6Config, StackConfig, StackCore, UdpPcb
from trio_yastack.stack._drops import Icmp6Drop, Ip6Drop
from trio_yastack.stack._nd6 import DELAY, INCOMPLETE, PROBE, REACHABLE
from trio_yastack.stack.wire import MacAddress
from trio_yastack.stack.wire.ethernet import EthernetRepr
from trio_yastack.stack.wire.icmpv6 import (
    ICMP6_PARAM_PROB,
    ICMP6_TIME_EXCEEDED,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_ROUTER_ADVERT,
    Icmpv6Repr,
)
from trio_yastack.stack.wire.ipv6 import (
    IPPROTO_FRAGMENT,
    IPPROTO_ICMPV6,
    Ipv6FragmentRepr,
    Ipv6Repr,
    link_local_from_mac,
    multicast_mac,
    parse_ipv6_header,
    solicited_node,
)
from trio_yastack.stack.wire.udp import UDP_HEADER, parse_udp6_header

ETH = 14
A, B = int(v.HOST_A), int(v.HOST_B)
A_MAC, B_MAC = v.HOST_A_MAC, v.HOST_B_MAC
ETHERTYPE_IPV6 = 0x86DD


def core6(
    address: str = "2001:2::2/64",
    mac: bytes = B_MAC,
    *,
    dad: int = 0,
    ipv4: str = "198.18.0.2",
    seed: int = 0,
    mtu: int = 1500,
    **ip6: object,
) -> StackCore:
    """A core with one static IPv6 address (DAD off unless ``dad``) beside an IPv4 one."""
    interface = InterfaceConfig(
        mac=MacAddress(mac),
        address=IPv4Address(ipv4),
        mtu=mtu,
        addresses6=(IPv6Interface(address),) if address else (),
    )
    ip6.setdefault("router_solicitations", 0)  # (a test of its own below)
    ip6.setdefault("mld", False)  # (MLD reports: tests of their own in test_mld_ipv6.py)
    ip6_config = Ip6Config(dad_transmits=dad, **ip6)  # type: ignore[arg-type]  # a test's keywords, unchecked
    config = StackConfig(interface=interface, arp=ArpConfig(gratuitous_at_start=False), ip6=ip6_config)
    return StackCore(config, rng=random.Random(seed))


def frame6(
    src_mac: bytes,
    dst_mac: bytes,
    src: int,
    dst: int,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
) -> bytes:
    header = Ipv6Repr(IPv6Address(src), IPv6Address(dst), next_header, len(payload), hop_limit)
    return EthernetRepr(MacAddress(dst_mac), MacAddress(src_mac), ETHERTYPE_IPV6).to_bytes(
        header.to_bytes(payload)
    )


def icmp6_frame(
    src_mac: bytes, dst_mac: bytes, src: int, dst: int, icmp: Icmpv6Repr, *, hop_limit: int = 64
) -> bytes:
    body = icmp.to_bytes(IPv6Address(src), IPv6Address(dst))
    return frame6(src_mac, dst_mac, src, dst, IPPROTO_ICMPV6, body, hop_limit=hop_limit)


def icmp6_of(frame: bytes | bytearray) -> tuple[Ipv6Repr, Icmpv6Repr]:
    """The IPv6 header and ICMPv6 message of a frame we sent (checksum verified)."""
    frame = bytes(frame)
    assert frame[12:14] == b"\x86\xdd"
    header = Ipv6Repr.parse(frame, ETH)
    assert header.next_header == IPPROTO_ICMPV6
    return header, Icmpv6Repr.parse(frame, header.src, header.dst, ETH + 40)


def exchange(left: StackCore, right: StackCore, now: float, rounds: int = 20) -> int:
    """Carry the two cores' frames to each other until both are quiet (bounded); return how many."""
    moved = 0
    for _ in range(rounds):
        out_left, out_right = left.take_outbox(), right.take_outbox()
        if not out_left and not out_right:
            return moved
        for frame in out_left:
            right.ether_input(bytes(frame), now)
        for frame in out_right:
            left.ether_input(bytes(frame), now)
        moved += len(out_left) + len(out_right)
    raise AssertionError("the cores kept talking")


def pair() -> tuple[StackCore, StackCore]:
    """The kernel's side (A, 2001:2::1) and ours (B, 2001:2::2), DAD off, started."""
    kernel = core6("2001:2::1/64", A_MAC, ipv4="198.18.0.1", seed=1)
    ours = core6()
    kernel.start(0.0)
    ours.start(0.0)
    assert kernel.ip6 is not None
    endpoint = kernel.ip6.icmp6.echo_open(1)
    kernel.ip6.icmp6.send_echo_request(endpoint, B, 1, b"hello", 0.0)  # both learn the other's MAC
    exchange(kernel, ours, 0.0)
    assert len(endpoint.replies) == 1
    return kernel, ours


def ip6_drops(core: StackCore) -> dict[str, int]:
    assert core.ip6 is not None
    out: dict[str, int] = {}
    for layer in (core.ip6.stats, core.ip6.icmp6.stats, core.ip6.nd6.stats, core.stats_udp, core.stats_ether):
        for reason, count in layer.dropped.items():
            out[f"{layer.layer}.{reason}"] = count
    return out


def check_ether_accounting(core: StackCore) -> None:
    """Every frame ``ether_input`` took is a counted drop or went to ARP, IPv4 or IPv6; and every
    packet ``ip6_input`` took (from the wire or looped back) is a header drop, a fragment, or was
    handed to a protocol (UDP, ICMPv6) or refused as an unknown one; every ICMPv6 message is a
    parse drop or one of its kinds."""
    s = core.statistics()
    ip6 = core.ip6
    ip6_received = ip6.stats.received if ip6 is not None else 0
    in_drops = sum(n for reason, n in s.ether.dropped.items() if reason not in ("outbox_full", "tx_refused"))
    assert (
        s.ether.received == in_drops + s.arp.received + s.ip.received + ip6_received
    )  # (nothing looped back)
    if ip6 is None:
        return
    st = ip6.stats
    header = sum(n for reason, n in st.dropped.items() if reason in Ip6Drop.HEADER)
    refused = st.dropped.get(Ip6Drop.UNKNOWN_PROTOCOL, 0) + st.dropped.get(Ip6Drop.NO_NEXT_HEADER, 0)
    assert st.received == header + st.fragments_received + st.delivered + refused - st.reassembled, st
    icmp = ip6.icmp6.stats
    parse = sum(icmp.dropped.get(reason, 0) for reason in Icmp6Drop.PARSE)
    kinds = icmp.nd_received + icmp.echo_requests_received + icmp.echo_replies_received + icmp.errors_received
    assert icmp.received == parse + kinds + icmp.dropped.get(Icmp6Drop.UNKNOWN_TYPE, 0), icmp
    udp4 = s.ip.delivered - s.icmp.received - s.tcp.segments_received  # (no TCP over IPv6 here)
    assert st.delivered == icmp.received + s.udp.received - udp4, st


# -- behaviour without IPv6 is unchanged -----------------------------------------------------------


def test_without_an_ipv6_address_ipv6_frames_stay_unknown() -> None:
    core = core6(address="")
    assert core.ip6 is None
    core.ether_input(v.ECHO_REQUEST, 0.0)
    core.ether_input(v.NEIGHBOR_SOLICIT, 0.0)  # to a multicast MAC: not for us at all
    assert dict(core.statistics().ether.dropped) == {"unknown_ethertype": 1, "not_for_us": 1}
    assert core.take_outbox() == []


# -- Neighbor Discovery --------------------------------------------------------------------------


def test_the_kernels_solicitation_is_answered_byte_exact() -> None:
    """The kernel's NS for 2001:2::2 (to our solicited-node MAC) gets the very NA the kernel sent."""
    core = core6()
    core.ether_input(v.NEIGHBOR_SOLICIT, 0.0)
    (na,) = core.take_outbox()
    assert bytes(na) == v.NEIGHBOR_ADVERT
    assert core.ip6 is not None
    entry = core.ip6.nd6.cache[A]
    # 7.2.3: learned STALE from the SLLA (not confirmed); sending the NA then moved it to DELAY (7.3.3)
    assert (entry.mac, entry.state) == (A_MAC, DELAY)
    check_ether_accounting(core)


def test_the_kernels_echo_request_waits_for_resolution_then_is_answered() -> None:
    core = core6()
    core.ether_input(v.ECHO_REQUEST, 0.0)
    (ns,) = core.take_outbox()  # the reply is held while we ask for A
    header, icmp = icmp6_of(ns)
    assert (header.src, header.dst, header.hop_limit) == (v.HOST_B, IPv6Address("ff02::1:ff00:1"), 255)
    assert ns[:6] == multicast_mac(solicited_node(A))
    assert (icmp.type, icmp.data[:16]) == (ND_NEIGHBOR_SOLICIT, v.HOST_A.packed)
    assert icmp.data[16:] == b"\x01\x01" + B_MAC  # our source link-layer address
    advert = Icmpv6Repr.neighbor_advert(v.HOST_A, A_MAC, solicited=True, override=True)
    core.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, advert, hop_limit=255), 0.1)
    (reply,) = core.take_outbox()
    assert reply[:12] == A_MAC + B_MAC
    # the kernel's own reply differs only in the flow label it picked
    assert reply[ETH + 4 :] == v.ECHO_REPLY[ETH + 4 :]
    assert core.ip6 is not None and core.ip6.nd6.cache[A].state == REACHABLE
    assert core.ip6.icmp6.stats.echo_replies_sent == 1
    check_ether_accounting(core)


def test_neighbour_states_reachable_stale_delay_probe_and_gone() -> None:
    kernel = core6("2001:2::1/64", A_MAC, ipv4="198.18.0.1", seed=1)
    ours = core6()
    assert ours.ip6 is not None
    nd6 = ours.ip6.nd6
    endpoint = ours.ip6.icmp6.echo_open(7)
    ours.ip6.icmp6.send_echo_request(endpoint, A, 1, b"x", 0.0)
    exchange(kernel, ours, 0.0)
    assert nd6.cache[A].state == REACHABLE and len(endpoint.replies) == 1
    reachable = ours.config.ip6.reachable_time
    ours.ip6.icmp6.send_echo_request(endpoint, A, 2, b"x", reachable + 1)  # goes, and asks for a check
    assert nd6.cache[A].state == DELAY
    kernel.take_outbox()
    ours.take_outbox()  # the kernel says nothing more
    ours.run_timers(reachable + 7)
    assert nd6.cache[A].state == PROBE
    (probe,) = ours.take_outbox()
    header, icmp = icmp6_of(probe)
    assert (header.dst, icmp.type, probe[:6]) == (v.HOST_A, ND_NEIGHBOR_SOLICIT, A_MAC)  # unicast probe
    for step in range(1, 4):
        ours.run_timers(reachable + 7 + step)
    assert A not in nd6.cache  # 7.3.3: no answer to MAX_UNICAST_SOLICIT probes


def test_a_probe_answered_makes_the_entry_reachable_again() -> None:
    kernel, ours = pair()
    assert ours.ip6 is not None
    endpoint = ours.ip6.icmp6.echo_open(7)
    ours.ip6.icmp6.send_echo_request(endpoint, A, 1, b"x", 0.0)
    exchange(kernel, ours, 0.0)
    ours.ip6.icmp6.send_echo_request(endpoint, A, 2, b"x", 100.0)
    ours.run_timers(106.0)  # DELAY -> PROBE: a unicast NS
    exchange(kernel, ours, 106.0)  # the kernel answers it (solicited NA)
    assert ours.ip6.nd6.cache[A].state == REACHABLE


def test_hold_queue_is_bounded_and_an_unanswered_neighbour_is_given_up() -> None:
    core = core6()
    core.start(0.0)
    assert core.ip6 is not None
    pcb = UdpPcb(v6=True)
    core.udp.bind(pcb, 0, 5000)
    for i in range(20):
        core.udp.udp6_output(pcb, bytes([i]), A, 9, 0.0)
    nd6 = core.ip6.nd6
    assert nd6.cache[A].state == INCOMPLETE and len(nd6.cache[A].held) == 16
    assert nd6.stats.dropped["hold_queue_full"] == 4
    for t in (1.0, 2.0, 3.0):
        core.run_timers(t)
    solicits = [icmp6_of(f)[1].type for f in core.take_outbox()]
    assert solicits == [ND_NEIGHBOR_SOLICIT] * 3  # MAX_MULTICAST_SOLICIT
    assert A not in nd6.cache and nd6.stats.dropped["unresolved"] == 16 and nd6.stats.resolution_failures == 1


def test_advertisement_without_override_does_not_move_a_known_mac() -> None:
    kernel, ours = pair()
    assert ours.ip6 is not None
    endpoint = ours.ip6.icmp6.echo_open(7)
    ours.ip6.icmp6.send_echo_request(endpoint, A, 1, b"x", 0.0)
    exchange(kernel, ours, 0.0)
    other = bytes.fromhex("021800000009")
    spoof = Icmpv6Repr.neighbor_advert(v.HOST_A, other, solicited=False, override=False)
    ours.ether_input(icmp6_frame(other, B_MAC, A, B, spoof, hop_limit=255), 1.0)
    entry = ours.ip6.nd6.cache[A]
    assert entry.mac == A_MAC and entry.state != REACHABLE
    override = Icmpv6Repr.neighbor_advert(v.HOST_A, other, solicited=False, override=True)
    ours.ether_input(icmp6_frame(other, B_MAC, A, B, override, hop_limit=255), 1.0)
    assert ours.ip6.nd6.cache[A].mac == other


@pytest.mark.parametrize("hop_limit", [64, 254])
def test_nd_from_beyond_a_router_is_dropped(hop_limit: int) -> None:
    core = core6()
    frame = bytearray(v.NEIGHBOR_SOLICIT)
    frame[ETH + 7] = hop_limit  # (the checksum does not cover the hop limit)
    core.ether_input(bytes(frame), 0.0)
    assert core.take_outbox() == []
    assert ip6_drops(core) == {"nd6.bad_hop_limit": 1}


def test_a_solicitation_for_another_address_is_not_answered() -> None:
    core = core6("2001:2::3/64")
    assert core.ip6 is not None
    core.ip6.join(solicited_node(B))  # receive the group, but 2001:2::2 is not ours
    core.ether_input(v.NEIGHBOR_SOLICIT, 0.0)
    assert core.take_outbox() == [] and ip6_drops(core) == {"nd6.bad_target": 1}


# -- DAD -----------------------------------------------------------------------------------------


def test_dad_probes_our_addresses_then_makes_them_usable() -> None:
    core = core6(dad=1)
    assert core.ip6 is not None
    link_local = link_local_from_mac(B_MAC)
    assert set(core.ip6.addresses) == {link_local, B} and all(
        a.tentative for a in core.ip6.addresses.values()
    )
    core.start(0.0)
    probes = [icmp6_of(bytes(f)) for f in core.take_outbox() if f[12:14] == b"\x86\xdd"]
    assert {(int(h.src), int(h.dst), i.data) for h, i in probes} == {
        (0, solicited_node(link_local), link_local.to_bytes(16, "big")),
        (0, solicited_node(B), v.HOST_B.packed),
    }  # from ::, to the solicited-node group, no source link-layer option
    core.ether_input(v.ECHO_REQUEST, 0.5)
    assert ip6_drops(core) == {"ip6.tentative": 1}
    core.run_timers(1.0)
    assert not any(a.tentative for a in core.ip6.addresses.values())
    assert core.ip6.nd6.stats.dad_succeeded == 2
    check_ether_accounting(core)


def test_dad_conflict_gives_the_address_up() -> None:
    core = core6(dad=1)
    core.start(0.0)
    core.take_outbox()
    claim = Icmpv6Repr.neighbor_advert(v.HOST_B, A_MAC, solicited=False, override=True)
    core.ether_input(
        icmp6_frame(A_MAC, multicast_mac(0xFF02 << 112 | 1), A, 0xFF02 << 112 | 1, claim, hop_limit=255), 0.5
    )
    core.run_timers(1.0)
    assert core.ip6 is not None and B not in core.ip6.addresses
    assert not core.ip6.addresses[link_local_from_mac(B_MAC)].tentative
    assert ip6_drops(core) == {"nd6.dad_failed": 1}


def test_a_dad_probe_from_another_node_for_our_tentative_address_fails_ours() -> None:
    core = core6(dad=1)
    core.start(0.0)
    core.take_outbox()
    probe = Icmpv6Repr.neighbor_solicit(v.HOST_B)
    group = solicited_node(B)
    core.ether_input(icmp6_frame(A_MAC, multicast_mac(group), 0, group, probe, hop_limit=255), 0.2)
    assert core.ip6 is not None and B not in core.ip6.addresses


def test_our_own_dad_probe_looped_back_is_no_conflict() -> None:
    core = core6(dad=1)
    core.start(0.0)
    for frame in core.take_outbox():
        core.ether_input(bytes(frame), 0.1)  # a switch reflecting our probes
    core.run_timers(1.0)
    assert core.ip6 is not None and core.ip6.usable(B)
    assert ip6_drops(core) == {"nd6.own_frame": 2}


def test_a_dad_probe_for_our_address_in_use_is_defended() -> None:
    core = core6()
    probe = Icmpv6Repr.neighbor_solicit(v.HOST_B)
    group = solicited_node(B)
    core.ether_input(icmp6_frame(A_MAC, multicast_mac(group), 0, group, probe, hop_limit=255), 0.0)
    (na,) = core.take_outbox()
    header, icmp = icmp6_of(na)
    assert (int(header.dst), icmp.type, icmp.rest) == (0xFF02 << 112 | 1, ND_NEIGHBOR_ADVERT, 0x20000000)


# -- router advertisements -----------------------------------------------------------------------


def router_advert(*, lifetime: int = 1800, prefix: str = "2001:2:0:1::", mtu: int = 1400) -> Icmpv6Repr:
    options = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + IPv6Address(prefix).packed
    options += struct.pack("!BBHI", 5, 1, 0, mtu) + b"\x01\x01" + A_MAC
    return Icmpv6Repr(ND_ROUTER_ADVERT, 0, (64 << 24) | lifetime, struct.pack("!II", 0, 0) + options)


def test_router_advertisement_gives_a_default_router_a_prefix_an_address_and_the_mtu() -> None:
    core = core6(dad=1)
    core.start(0.0)
    core.run_timers(1.0)
    core.take_outbox()
    router = link_local_from_mac(A_MAC)
    ra = icmp6_frame(
        A_MAC, multicast_mac(0xFF02 << 112 | 1), router, 0xFF02 << 112 | 1, router_advert(), hop_limit=255
    )
    core.ether_input(ra, 2.0)
    ip6 = core.ip6
    assert ip6 is not None
    assert (ip6.default_router, ip6.link_mtu) == (router, 1400)
    slaac = int(IPv6Address("2001:2:0:1::")) | (link_local_from_mac(B_MAC) & (2**64 - 1))
    assert ip6.addresses[slaac].tentative
    (dad,) = core.take_outbox()
    assert icmp6_of(dad)[1].data == slaac.to_bytes(16, "big")
    core.run_timers(3.0)
    assert ip6.usable(slaac)
    far = int(IPv6Address("2001:2:ff::7"))
    assert ip6.route(far, 3.0) == router and ip6.select_source(far) in (B, slaac)
    assert ip6.route(slaac ^ 1, 3.0) == slaac ^ 1  # on-link
    withdraw = router_advert(lifetime=0)
    core.ether_input(icmp6_frame(A_MAC, B_MAC, router, B, withdraw, hop_limit=255), 4.0)
    with pytest.raises(OSError) as caught:
        ip6.route(far, 4.0)
    assert caught.value.errno == errno.ENETUNREACH
    check_ether_accounting(core)


def test_router_advertisement_from_a_global_source_is_refused() -> None:
    core = core6()
    core.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, router_advert(), hop_limit=255), 0.0)
    assert core.ip6 is not None and core.ip6.default_router == 0
    assert ip6_drops(core) == {"nd6.not_from_router": 1}


# -- fragments -----------------------------------------------------------------------------------


def test_the_kernels_fragmented_echo_is_reassembled_and_answered_in_fragments() -> None:
    kernel, ours = pair()
    ours.ether_input(v.FRAGMENT_2, 0.0)  # out of order
    ours.ether_input(v.FRAGMENT_1, 0.0)
    replies = ours.take_outbox()
    assert ours.ip6 is not None and ours.ip6.stats.reassembled == 1
    assert [len(f) for f in replies] == [1510, 222]  # the kernel's own cut at MTU 1500
    for frame in replies:
        assert parse_ipv6_header(bytes(frame), ETH)[3] == IPPROTO_FRAGMENT
        kernel.ether_input(bytes(frame), 0.0)
    assert kernel.ip6 is not None and kernel.ip6.stats.reassembled == 1
    assert kernel.ip6.icmp6.stats.echo_replies_received == 2  # pair()'s, and this one
    check_ether_accounting(ours)


def fragments_of(payload: bytes, cuts: list[tuple[int, int, bool]], ident: int = 99) -> list[bytes]:
    out = []
    for start, end, more in cuts:
        body = Ipv6FragmentRepr(IPPROTO_ICMPV6, start, more, ident).to_bytes() + payload[start:end]
        out.append(frame6(A_MAC, B_MAC, A, B, IPPROTO_FRAGMENT, body))
    return out


def test_overlapping_fragments_drop_the_datagram() -> None:
    """RFC 5722: an overlap discards the whole datagram, whatever arrives after it."""
    _kernel, ours = pair()
    echo = Icmpv6Repr.echo_request(1, 1, bytes(range(200))).to_bytes(v.HOST_A, v.HOST_B)
    for frame in fragments_of(echo, [(0, 64, True), (56, 120, True), (120, 208, False)]):
        ours.ether_input(frame, 0.0)
    assert ours.take_outbox() == []
    assert ip6_drops(ours) == {"ip6.overlapping_fragment": 1}  # and the third starts a datagram of its own
    assert ours.ip6 is not None and len(ours.ip6.reassembler) == 1
    check_ether_accounting(ours)


def test_reassembly_timeout_sends_time_exceeded() -> None:
    _kernel, ours = pair()
    echo = Icmpv6Repr.echo_request(1, 1, bytes(range(200))).to_bytes(v.HOST_A, v.HOST_B)
    ours.ether_input(fragments_of(echo, [(0, 64, True)])[0], 0.0)
    ours.run_timers(31.0)
    (error,) = [f for f in ours.take_outbox() if icmp6_of(f)[1].type == ICMP6_TIME_EXCEEDED]
    header, icmp = icmp6_of(error)
    assert (header.dst, icmp.type, icmp.code) == (v.HOST_A, ICMP6_TIME_EXCEEDED, 1)
    assert icmp.data[:40] == frame6(A_MAC, B_MAC, A, B, 44, b"\0" * 72)[ETH : ETH + 40]
    assert ip6_drops(ours) == {"ip6.reassembly_timeout": 1}
    check_ether_accounting(ours)


# -- errors --------------------------------------------------------------------------------------


def test_packet_too_big_lowers_the_path_mtu_but_never_below_1280() -> None:
    _kernel, ours = pair()
    assert ours.ip6 is not None
    pcb = UdpPcb(v6=True)
    ours.udp.bind(pcb, 0, 5000)
    ours.udp.udp6_output(pcb, b"a" * 1400, A, 9, 0.0)
    (sent,) = ours.take_outbox()
    quote = bytes(sent[ETH : ETH + 1232])
    ptb = Icmpv6Repr.packet_too_big(1300, quote)
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, ptb), 0.1)
    assert ours.ip6.path_mtu(A, 0.1) == 1300
    ours.udp.udp6_output(pcb, b"a" * 1400, A, 9, 0.2)
    assert [len(f) - ETH for f in ours.take_outbox()] == [1296, 208]  # 40 + 8 + 1248, then 40 + 8 + 160
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, Icmpv6Repr.packet_too_big(600, quote)), 0.3)
    assert ours.ip6.path_mtu(A, 0.3) == 1280
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, Icmpv6Repr.packet_too_big(9000, quote)), 0.3)
    assert ours.ip6.path_mtu(A, 0.3) == 1280  # never raised by a message
    assert ours.ip6.path_mtu(A, 700.0) == 1500  # RFC 8201 5.3: tried again after 10 minutes
    assert ours.ip6.icmp6.stats.packet_too_big_received == 3
    check_ether_accounting(ours)


def test_packet_too_big_about_someone_elses_packet_is_ignored() -> None:
    _kernel, ours = pair()
    quote = frame6(A_MAC, B_MAC, A, int(IPv6Address("2001:2::9")), 17, b"\0" * 8)[ETH:]
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, Icmpv6Repr.packet_too_big(1280, quote)), 0.0)
    assert ours.ip6 is not None and ours.ip6.pmtu == {}
    assert ip6_drops(ours) == {"icmp6.bad_quote": 1}


def test_unknown_next_header_gets_a_parameter_problem() -> None:
    """SCTP is not spoken: the peer hears so at once (RFC 8200 4, code 1, pointer 6)."""
    _kernel, ours = pair()
    ours.ether_input(frame6(A_MAC, B_MAC, A, B, 132, b"\0" * 20), 0.0)
    (error,) = ours.take_outbox()
    _header, icmp = icmp6_of(error)
    assert (icmp.type, icmp.code, icmp.rest) == (ICMP6_PARAM_PROB, 1, 6)
    assert ip6_drops(ours) == {"ip6.unknown_protocol": 1}
    check_ether_accounting(ours)


def test_multicast_echo_is_not_answered() -> None:
    _kernel, ours = pair()
    all_nodes = 0xFF02 << 112 | 1
    ours.ether_input(
        icmp6_frame(A_MAC, multicast_mac(all_nodes), A, all_nodes, Icmpv6Repr.echo_request(1, 1)), 0.0
    )
    assert ours.take_outbox() == [] and ip6_drops(ours) == {"icmp6.multicast_echo": 1}
    check_ether_accounting(ours)


# -- UDP over IPv6 -------------------------------------------------------------------------------


def test_the_kernels_udp_datagram_is_delivered() -> None:
    _kernel, ours = pair()
    pcb = UdpPcb(v6=True)
    ours.udp.bind(pcb, B, 9999)
    ours.ether_input(v.UDP_DATAGRAM, 0.0)
    assert pcb.take() == (b"trio_yastack wire vector\n", (A, 40000))


def test_udp_both_ways_and_port_unreachable_to_a_connected_socket() -> None:
    kernel, ours = pair()
    server, client = UdpPcb(v6=True), UdpPcb(v6=True)
    ours.udp.bind(server, 0, 7)
    kernel.udp.connect(client, B, 7)
    assert client.local_ip == A and client.local_port >= 49152
    big = bytes(range(256)) * 12  # 3072 bytes: fragmented both ways
    kernel.udp.udp6_output(client, big, 0, 0, 0.0)
    exchange(kernel, ours, 0.0)
    payload, (src, sport) = server.take()  # type: ignore[misc]
    assert (payload, src, sport) == (big, A, client.local_port)
    ours.udp.udp6_output(server, payload[::-1], src, sport, 0.1)
    exchange(kernel, ours, 0.1)
    assert client.take() == (big[::-1], (B, 7))
    ours.udp.close(server)
    kernel.udp.udp6_output(client, b"anyone?", 0, 0, 0.2)
    exchange(kernel, ours, 0.2)
    assert client.take_error() == errno.ECONNREFUSED
    assert ip6_drops(ours) == {"udp.no_socket": 1}
    assert ours.ip6 is not None and ours.ip6.icmp6.stats.errors_sent == 1
    ip6_stats, icmp6_stats, nd6_stats = ours.ip6.statistics()
    assert (ip6_stats.layer, icmp6_stats.layer, nd6_stats.layer) == ("ip6", "icmp6", "nd6")
    assert icmp6_stats.errors_sent == 1 and ip6_stats.delivered == ours.ip6.stats.delivered
    check_ether_accounting(ours)
    check_ether_accounting(kernel)


def test_ipv4_and_ipv6_sockets_share_a_port_number_apart() -> None:
    core = core6()
    v4, v6 = UdpPcb(), UdpPcb(v6=True)
    core.udp.bind(v4, 0, 53)
    core.udp.bind(v6, 0, 53)
    with pytest.raises(OSError) as caught:
        core.udp.bind(UdpPcb(v6=True), 0, 53)
    assert caught.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError):
        core.udp.bind(UdpPcb(v6=True), int(IPv6Address("2001:2::77")), 54)  # not ours


def test_udp_checksum_zero_over_ipv6_is_dropped() -> None:
    _kernel, ours = pair()
    pcb = UdpPcb(v6=True)
    ours.udp.bind(pcb, 0, 9999)
    frame = bytearray(v.UDP_DATAGRAM)
    UDP_HEADER.pack_into(frame, ETH + 40, 40000, 9999, 33, 0)
    ours.ether_input(bytes(frame), 0.0)
    assert pcb.take() is None and ip6_drops(ours) == {"udp.bad_checksum": 1}


def test_the_source_we_send_from_verifies() -> None:
    _kernel, ours = pair()
    pcb = UdpPcb(v6=True)
    ours.udp.bind(pcb, 0, 5000)
    ours.udp.udp6_output(pcb, b"hello", A, 9, 0.0)
    (frame,) = ours.take_outbox()
    assert parse_udp6_header(bytes(frame), ETH + 40, len(frame), B, A) == (5000, 9, ETH + 40 + 13)


# -- hostile wire --------------------------------------------------------------------------------

SEEDS = [
    v.NEIGHBOR_SOLICIT,
    v.NEIGHBOR_ADVERT,
    v.ECHO_REQUEST,
    v.FRAGMENT_2,
    v.UDP_DATAGRAM,
    v.FRAGMENT_1[:300],
]


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        frame[draw(st.integers(ETH, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame[: draw(st.integers(ETH, len(frame)))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile(), min_size=1, max_size=8))
def test_hostile_frames_are_counted_never_raised(frames: list[bytes]) -> None:
    core = core6()
    pcb = UdpPcb(v6=True)
    core.udp.bind(pcb, 0, 9999)
    for i, frame in enumerate(frames):
        core.ether_input(frame, i * 0.1)
        core.run_timers(i * 0.1)
    core.run_timers(100.0)
    check_ether_accounting(core)


# -- per core: Toeplitz over IPv6, ND to every core ------------------------------------------------

#: Microsoft's "Verifying the RSS hash calculation" IPv6 suite (the key is DEFAULT_RSS_KEY):
#: destination, destination port, source, source port, hash of the addresses, hash with TCP ports
MICROSOFT_IPV6_VECTORS = [
    ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x2CC18CD5, 0x40207D3D),
    ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0x0F0C461C, 0xDDE51BBF),
    ("fe80::200:f8ff:fe21:67cf", 38024, "3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, 0x4B61E985, 0x02D1FEEF),
]


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "addresses", "ports"), MICROSOFT_IPV6_VECTORS)
def test_toeplitz_over_ipv6_matches_microsofts_vectors_in_c_and_python(
    dst: str, dport: int, src: str, sport: int, addresses: int, ports: int
) -> None:
    from trio_yastack.dispatch._native_rss import native_toeplitz, py_toeplitz
    from trio_yastack.dispatch._rss import DEFAULT_RSS_KEY, rss_input_ipv6, rss_input_ipv6_ports

    s, d = int(IPv6Address(src)), int(IPv6Address(dst))
    hashes = [py_toeplitz] + ([native_toeplitz] if native_toeplitz is not None else [])
    for toeplitz in hashes:
        assert toeplitz(DEFAULT_RSS_KEY, rss_input_ipv6(s, d)) == addresses
        assert toeplitz(DEFAULT_RSS_KEY, rss_input_ipv6_ports(s, d, sport, dport)) == ports


def test_rss_inputs_for_ipv6_refuse_what_is_not_a_tuple() -> None:
    from trio_yastack.dispatch._rss import rss_input_ipv6, rss_input_ipv6_ports

    with pytest.raises(ValueError):
        rss_input_ipv6(2**128, 0)
    with pytest.raises(ValueError):
        rss_input_ipv6_ports(1, 2, 70000, 1)


def test_flow_owner_hashes_ipv6_flows_and_sends_nd_to_every_core() -> None:
    from trio_yastack.dispatch._native_rss import toeplitz
    from trio_yastack.dispatch._percore import ALL_CORES, flow_owner
    from trio_yastack.dispatch._rss import DEFAULT_RSS_KEY, rss_input_ipv6, rss_input_ipv6_ports

    entries = list(range(128))  # the identity table: the owner is the hash's low 7 bits
    assert flow_owner(v.NEIGHBOR_SOLICIT, DEFAULT_RSS_KEY, entries, 127) == ALL_CORES
    assert flow_owner(v.NEIGHBOR_ADVERT, DEFAULT_RSS_KEY, entries, 127) == ALL_CORES
    udp = toeplitz(DEFAULT_RSS_KEY, rss_input_ipv6_ports(A, B, 40000, 9999))
    assert flow_owner(v.UDP_DATAGRAM, DEFAULT_RSS_KEY, entries, 127) == udp & 127
    pair_hash = toeplitz(DEFAULT_RSS_KEY, rss_input_ipv6(A, B))
    assert flow_owner(v.ECHO_REQUEST, DEFAULT_RSS_KEY, entries, 127) == pair_hash & 127
    assert flow_owner(v.FRAGMENT_2, DEFAULT_RSS_KEY, entries, 127) == pair_hash & 127  # fragments: the pair


def test_a_copy_of_the_kernels_solicitation_teaches_another_core_without_an_answer() -> None:
    core = core6()
    core.learn_from_copy(v.NEIGHBOR_SOLICIT, 0.0)
    assert core.take_outbox() == []
    assert core.ip6 is not None and core.ip6.nd6.lookup(A) == A_MAC


# -- the journey ------------------------------------------------------------------------------------


async def test_ipv6_journeys_name_ip6_nd6_and_icmp6(autojump_clock: object) -> None:
    """A traced stack pinged over IPv6 on a memory wire: the request's journey goes ether_input ->
    ip6_input -> icmp6_input, the client's solicitation's ends in nd6_input, and the reply's
    journey out starts at ip6_output and passes nd6_resolve."""
    import trio

    from trio_yastack import open_stack
    from trio_yastack.journey import CoreTracer, Journey, TraceSubscription
    from trio_yastack.nic import memory_wire
    from trio_yastack.socket_api._waiter import Waiter

    port_a, port_b = memory_wire(latency=0.001)
    journeys: list[Journey] = []
    no_dad = Ip6Config(dad_transmits=0)
    async with (
        open_stack(port_a, ip=["198.18.0.2/24", "2001:2::2/64"], seed=1, ip6=no_dad) as server,
        open_stack(port_b, ip=["198.18.0.1/24", "2001:2::1/64"], seed=2, ip6=no_dad) as client,
    ):
        tracer = CoreTracer(server.core, server.port, server._loop)
        tracer.subscribe(TraceSubscription(journeys.append))
        try:
            ip6 = client.core.ip6
            assert ip6 is not None
            endpoint = ip6.icmp6.echo_open()
            waiter = endpoint.waiter = Waiter()
            ip6.icmp6.send_echo_request(endpoint, B, 1, b"journey", trio.current_time())
            client.kick()
            with trio.fail_after(5):
                while not endpoint.replies:
                    await waiter.wait()
        finally:
            tracer.close()
    paths = [[hop.layer for hop in journey.hops] for journey in journeys]
    assert ["rx_burst", "ether_input", "ip6_input", "icmp6_input", "nd6_input"] in paths  # the client's NS
    assert ["rx_burst", "ether_input", "ip6_input", "icmp6_input"] in paths  # the echo request
    assert any(path[:2] == ["ip6_output", "nd6_resolve"] and path[-1] == "tx_burst" for path in paths), paths


@pytest.mark.parametrize(
    ("text", "frame", "expected"),
    [
        ("ip6", v.ECHO_REQUEST, True),
        ("ip", v.ECHO_REQUEST, False),
        ("icmp6", v.NEIGHBOR_SOLICIT, True),
        ("icmp", v.NEIGHBOR_SOLICIT, False),
        ("udp and port 9999", v.UDP_DATAGRAM, True),
        ("host 2001:2::1", v.UDP_DATAGRAM, True),
        ("dst host 2001:2::1", v.UDP_DATAGRAM, False),
        ("net 2001:2::/48", v.ECHO_REPLY, True),
        ("net 2001:3::/48", v.ECHO_REPLY, False),
        ("host 0.0.0.1", v.ECHO_REQUEST, False),  # 2001:2::1's low bits are not 0.0.0.1
        ("ip6 and not icmp6", v.FRAGMENT_2, True),  # the first header is the fragment header
    ],
)
def test_journey_filters_for_ipv6(text: str, frame: bytes, expected: bool) -> None:
    from trio_yastack.journey import compile_filter

    packet_filter = compile_filter(text)
    assert packet_filter is not None and packet_filter.match_frame(frame) is expected


def test_journey_summaries_of_ipv6_frames_never_raise() -> None:
    """Was a bug (fixed before it shipped): once ``packet_info`` read IPv6, a TCP segment over IPv6
    reached the IPv4-only summary and ``IPv4Address`` refused its 128-bit source."""
    from trio_yastack.journey._journey import frame_summary, parse_headers

    syn = frame6(A_MAC, B_MAC, A, B, 6, bytes.fromhex("9c40005000000001000000005002faf000000000"))
    for frame in (syn, v.ECHO_REQUEST, v.FRAGMENT_2, v.UDP_DATAGRAM, syn[:60]):
        assert isinstance(frame_summary(frame), str)
        assert parse_headers(frame)["length"] == len(frame)


def test_a_fragment_reaching_beyond_65535_bytes_is_dropped() -> None:
    """IPv6's payload length counts no fixed header: 65535 bytes reassemble, one more does not."""
    _kernel, ours = pair()
    last = fragments_of(b"\0" * 65536, [(65528, 65535, False)], ident=5)[0]
    ours.ether_input(last, 0.0)
    beyond = fragments_of(b"\0" * 65536, [(65528, 65536, False)], ident=6)[0]
    ours.ether_input(beyond, 0.0)
    assert ip6_drops(ours) == {"ip6.fragment_too_large": 1}
    check_ether_accounting(ours)


def test_open_stack_takes_a_list_of_addresses() -> None:
    from trio_yastack._open_stack import _split_addresses

    v4, v6 = _split_addresses(["198.18.0.2/24", "2001:2::2", IPv6Interface("2001:2:0:1::2/80")])
    assert (v4, v6) == ("198.18.0.2/24", (IPv6Interface("2001:2::2/64"), IPv6Interface("2001:2:0:1::2/80")))
    assert _split_addresses("198.18.0.2") == ("198.18.0.2", ())
    for bad in (["2001:2::2/64"], ["198.18.0.2", "198.18.0.3"]):
        with pytest.raises(ValueError, match="exactly one IPv4 address"):
            _split_addresses(bad)
    with pytest.raises(ValueError):
        _split_addresses(["198.18.0.2", "2001:2::zz"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from([0, 43, 44, 60]), max_size=10),
    st.sampled_from([17, 58, 59, 6, 0, 44, 250]),
    st.binary(max_size=48),
    st.integers(0, 3),
)
def test_fuzzed_extension_chains_through_the_stack(
    kinds: list[int], last: int, tail: bytes, twist: int
) -> None:
    """Random chains of hop-by-hop, routing, fragment and destination options headers (each with
    random contents) ahead of a random upper layer, to our address: every one is a counted drop
    or a delivery, never an exception, and the counters add up."""
    core = core6()
    chain = b""
    for i, kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else last
        if kind == 44:
            chain += Ipv6FragmentRepr(nxt, (i * 8 * twist) & 0xFFF8, bool((i + twist) & 1), twist).to_bytes()
        else:
            body = tail[i : i + 6].ljust(6, b"\1")
            chain += bytes((nxt, 0)) + (bytes((0, twist)) + body[2:] if kind == 43 else body)
    chain += tail
    first = kinds[0] if kinds else last
    core.ether_input(frame6(A_MAC, B_MAC, A, B, first, chain), 0.0)
    core.run_timers(60.0)
    check_ether_accounting(core)


def test_router_solicitations_at_start_until_an_advertisement_answers() -> None:
    """RFC 4861 6.3.7: after DAD, up to three solicitations to all-routers, 4 s apart, from the
    link-local address with our MAC; an RA with a router lifetime stops them."""
    core = core6(dad=1, router_solicitations=3)
    core.start(0.0)
    core.take_outbox()  # the DAD probes
    core.run_timers(1.0)
    (rs,) = core.take_outbox()
    header, icmp = icmp6_of(rs)
    link_local = link_local_from_mac(B_MAC)
    assert (int(header.src), int(header.dst), header.hop_limit) == (link_local, 0xFF02 << 112 | 2, 255)
    assert (icmp.type, icmp.data, rs[:6]) == (133, b"\x01\x01" + B_MAC, multicast_mac(0xFF02 << 112 | 2))
    core.run_timers(5.0)
    assert [icmp6_of(f)[1].type for f in core.take_outbox()] == [133]
    router = link_local_from_mac(A_MAC)
    ra = icmp6_frame(A_MAC, B_MAC, router, link_local, router_advert(), hop_limit=255)
    core.ether_input(ra, 6.0)
    core.take_outbox()  # (the SLAAC address's DAD probe)
    core.run_timers(9.0)
    core.run_timers(13.0)
    assert not [f for f in core.take_outbox() if icmp6_of(f)[1].type == 133]
    assert core.ip6 is not None and core.ip6.nd6.stats.router_solicitations_sent == 2
    check_ether_accounting(core)


def test_no_router_solicitation_with_a_static_gateway() -> None:
    core = core6(router_solicitations=3, gateway=IPv6Address("2001:2::1"))
    core.start(0.0)
    core.run_timers(20.0)
    assert core.take_outbox() == []


def test_a_slaac_address_expires_with_its_valid_lifetime_unless_refreshed() -> None:
    core = core6()
    core.start(0.0)
    router = link_local_from_mac(A_MAC)
    all_nodes = 0xFF02 << 112 | 1

    def advertise(now: float) -> None:
        core.ether_input(
            icmp6_frame(A_MAC, multicast_mac(all_nodes), router, all_nodes, router_advert(), hop_limit=255),
            now,
        )

    advertise(0.0)
    ip6 = core.ip6
    assert ip6 is not None
    slaac = int(IPv6Address("2001:2:0:1::")) | (link_local_from_mac(B_MAC) & (2**64 - 1))
    assert ip6.usable(slaac)  # (DAD off here)
    advertise(80000.0)  # refreshed: valid for 86400 s from now
    core.run_timers(86400.0)
    assert ip6.usable(slaac)
    core.run_timers(80000.0 + 86400.0)
    assert slaac not in ip6.addresses and ip6.usable(B)  # the static address stays
