"""ARP (RFC 826) in the sans-IO core: replies, the merge rules, conflicts, gratuitous ARP,
resolution with retries and its bounds, expiry and refresh.  Hand-made frames, fake ``now``."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address

from helpers import (
    BROADCAST_MAC,
    OTHER_IP,
    OTHER_MAC,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    ZERO_MAC,
    build_arp_frame,
    build_ethernet_frame,
    check_arp,
    check_ipv4,
    check_udp,
    learn_peer,
    make_core,
)

from trio_yastack.stack import ArpConfig, StackCore, UdpPcb
from trio_yastack.stack.wire import ARP_REPLY, ARP_REQUEST, ETHERTYPE_ARP, MacAddress

NEW_MAC = MacAddress("02:00:00:00:00:99")


def cached(core: StackCore, ip: IPv4Address, now: float = 0.0) -> bytes | None:
    return core.arp.lookup(int(ip), now)


def udp_sender(core: StackCore, port: int = 4000) -> UdpPcb:
    pcb = UdpPcb()
    core.udp.bind(pcb, 0, port)
    return pcb


def send(core: StackCore, pcb: UdpPcb, payload: bytes, dst: IPv4Address = PEER_IP, now: float = 0.0) -> None:
    core.udp.udp_output(pcb, payload, int(dst), 7, now)


def is_ipv4(frame: bytes) -> bool:
    return frame[12:14] == b"\x08\x00"


def arp_stats(core: StackCore):  # type: ignore[no-untyped-def]
    return core.statistics().arp


# -- replies and announcements -----------------------------------------------------------------


def test_gratuitous_arp_at_start_exact_frame() -> None:
    """start() broadcasts one request for our own address, target MAC zero, byte for byte."""
    core = make_core()
    core.start(0.0)
    assert core.take_outbox() == [
        bytes.fromhex(
            "ffffffffffff0200000000020806"  # Ethernet: broadcast, from us, ARP
            "0001080006040001"  # Ethernet/IPv4, request
            "020000000002c6120002"  # sender: us, 198.18.0.2
            "000000000000c6120002"  # target: unknown MAC, our own address
        )
    ]
    assert arp_stats(core).requests_sent == 1


def test_no_gratuitous_arp_when_disabled() -> None:
    """gratuitous_at_start=False: start() sends nothing."""
    core = make_core(arp=ArpConfig(gratuitous_at_start=False))
    core.start(0.0)
    assert core.outbox == []


def test_request_for_us_gets_exact_reply_and_teaches_the_sender() -> None:
    """A request for our address is answered with one unicast reply, byte for byte, and the
    requester is learned (RFC 826: the target adds the sender)."""
    core = make_core()
    core.ether_input(build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP), 0.0)
    assert core.take_outbox() == [
        bytes.fromhex(
            "0200000000010200000000020806"  # Ethernet: to the requester, from us, ARP
            "0001080006040002"  # Ethernet/IPv4, reply
            "020000000002c6120002"  # sender: us, 198.18.0.2
            "020000000001c6120001"  # target: the requester, 198.18.0.1
        )
    ]
    stats = arp_stats(core)
    assert (stats.received, stats.requests_received, stats.replies_sent) == (1, 1, 1)
    assert stats.entries_learned == 1
    assert cached(core, PEER_IP) == PEER_MAC


def test_padded_request_is_answered() -> None:
    """Ethernet padding after the 28 ARP bytes (60-byte minimum frames) is ignored."""
    core = make_core()
    frame = build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP) + bytes(18)
    core.ether_input(frame, 0.0)
    (reply,) = core.take_outbox()
    check_arp(reply, operation=ARP_REPLY, target_mac=PEER_MAC, target_ip=PEER_IP)


def test_request_for_another_address_is_neither_answered_nor_learned() -> None:
    """Who-has for someone else: no reply, and an unknown sender is not added (RFC 826 merge)."""
    core = make_core()
    core.ether_input(build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OTHER_IP), 0.0)
    assert core.outbox == []
    assert cached(core, PEER_IP) is None
    stats = arp_stats(core)
    assert (stats.requests_received, stats.replies_sent, stats.entries_learned) == (1, 0, 0)
    assert core.arp.cache == {}


def test_request_not_for_us_updates_a_cached_sender() -> None:
    """Merge: a sender already in the cache is updated by any ARP packet, even one for another host."""
    core = make_core()
    learn_peer(core)
    core.ether_input(build_arp_frame(ARP_REQUEST, NEW_MAC, PEER_IP, ZERO_MAC, OTHER_IP), 10.0)
    assert core.outbox == []
    assert cached(core, PEER_IP, 10.0) == NEW_MAC
    assert arp_stats(core).entries_learned == 1  # an update, not a new entry


def test_gratuitous_arp_from_cached_host_updates_it() -> None:
    """A neighbour announcing a new MAC (gratuitous request, spa == tpa) replaces our entry."""
    core = make_core()
    learn_peer(core)
    core.ether_input(build_arp_frame(ARP_REQUEST, NEW_MAC, PEER_IP, ZERO_MAC, PEER_IP), 5.0)
    assert cached(core, PEER_IP, 5.0) == NEW_MAC
    assert core.outbox == []


def test_gratuitous_arp_from_unknown_host_is_not_learned() -> None:
    """An announcement from a host we never talked to does not fill the cache."""
    core = make_core()
    core.ether_input(build_arp_frame(ARP_REQUEST, OTHER_MAC, OTHER_IP, ZERO_MAC, OTHER_IP), 0.0)
    assert cached(core, OTHER_IP) is None


def test_reply_for_us_is_learned_reply_for_others_is_not() -> None:
    """A reply whose target is us adds the sender; one for another host from a stranger does not."""
    core = make_core()
    stranger = build_arp_frame(ARP_REPLY, OTHER_MAC, OTHER_IP, PEER_MAC, PEER_IP, eth_dst=BROADCAST_MAC)
    core.ether_input(stranger, 0.0)
    assert cached(core, OTHER_IP) is None
    core.ether_input(build_arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), 0.0)
    assert cached(core, PEER_IP) == PEER_MAC
    assert core.outbox == []  # replies are never answered
    assert arp_stats(core).replies_received == 2


def test_address_conflict_is_counted_and_never_learned() -> None:
    """Someone else claiming our address (announcement, request or reply) is counted as a
    conflict; our address never enters the cache and nothing is answered."""
    core = make_core()
    frames = [
        build_arp_frame(ARP_REQUEST, OTHER_MAC, OUR_IP, ZERO_MAC, OUR_IP),
        build_arp_frame(ARP_REQUEST, OTHER_MAC, OUR_IP, ZERO_MAC, PEER_IP),
        build_arp_frame(ARP_REPLY, OTHER_MAC, OUR_IP, OUR_MAC, OUR_IP),
    ]
    for frame in frames:
        core.ether_input(frame, 0.0)
    stats = arp_stats(core)
    assert stats.dropped["address_conflict"] == 3
    assert cached(core, OUR_IP) is None
    assert core.outbox == []


def test_own_frames_and_group_sender_macs_are_dropped() -> None:
    """Our own request looped back, and a sender MAC with the group bit, are counted and ignored."""
    core = make_core()
    core.ether_input(build_arp_frame(ARP_REQUEST, OUR_MAC, OUR_IP, ZERO_MAC, PEER_IP), 0.0)
    group = MacAddress("03:00:00:00:00:01")
    core.ether_input(build_arp_frame(ARP_REQUEST, group, PEER_IP, ZERO_MAC, OUR_IP, eth_src=PEER_MAC), 0.0)
    dropped = arp_stats(core).dropped
    assert (dropped["own_frame"], dropped["bad_sender_mac"]) == (1, 1)
    assert cached(core, PEER_IP) is None
    assert core.outbox == []


def test_probe_from_unconfigured_host_is_not_learned() -> None:
    """An RFC 5227 probe (sender address 0.0.0.0) for our address never creates an entry for 0."""
    core = make_core()
    core.ether_input(build_arp_frame(ARP_REQUEST, PEER_MAC, "0.0.0.0", ZERO_MAC, OUR_IP), 0.0)
    assert 0 not in core.arp.cache


def test_malformed_arp_counted_by_reason() -> None:
    """Truncated, non-Ethernet/IPv4 and unknown-operation ARP packets land in arp.dropped."""
    core = make_core()
    good = build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP)
    core.ether_input(good[:41], 0.0)
    core.ether_input(good[:14] + b"\x00\x06" + good[16:], 0.0)  # hardware type 6 (IEEE 802)
    core.ether_input(good[:20] + b"\x00\x09" + good[22:], 0.0)  # operation 9
    assert dict(arp_stats(core).dropped) == {"too_short": 1, "bad_format": 1, "bad_operation": 1}
    assert core.statistics().ether.received == 3
    assert core.outbox == [] and core.arp.cache == {}


def test_frame_for_another_mac_is_dropped_before_arp() -> None:
    """A unicast frame to another station's MAC never reaches arp_input."""
    core = make_core()
    arp = build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP)[14:]
    core.ether_input(build_ethernet_frame(PEER_MAC, OTHER_MAC, ETHERTYPE_ARP, arp), 0.0)
    assert core.statistics().ether.dropped["not_for_us"] == 1
    assert arp_stats(core).received == 0


# -- resolution ----------------------------------------------------------------------------------


def test_resolution_retries_every_interval_then_fails() -> None:
    """An unresolved next hop is asked for at once and then every request_interval, max_requests
    times; then resolution fails: counted, every held packet dropped as unresolved, the
    connected socket told EHOSTUNREACH, and no timer left."""
    core = make_core(arp=ArpConfig(request_interval=1.0, max_requests=3))
    pcb = udp_sender(core)
    core.udp.connect(pcb, int(PEER_IP), 7)
    core.udp.udp_output(pcb, b"one", 0, 0, 10.0)
    core.udp.udp_output(pcb, b"two", 0, 0, 10.2)
    (request,) = core.take_outbox()
    check_arp(
        request, operation=ARP_REQUEST, eth_dst=BROADCAST_MAC, eth_src=OUR_MAC,
        sender_mac=OUR_MAC, sender_ip=OUR_IP, target_mac=ZERO_MAC, target_ip=PEER_IP,
    )  # fmt: skip
    assert core.next_deadline() == 11.0
    core.run_timers(10.99)
    assert core.outbox == []
    for now in (11.0, 12.0):
        core.run_timers(now)
        (request,) = core.take_outbox()
        check_arp(request, operation=ARP_REQUEST, target_ip=PEER_IP)
        assert core.next_deadline() == now + 1.0
    assert arp_stats(core).requests_sent == 3
    assert pcb.so_error == 0
    core.run_timers(13.0)
    assert core.outbox == []  # no fourth request
    stats = arp_stats(core)
    assert (stats.requests_sent, stats.resolution_failures, stats.held) == (3, 1, 2)
    assert stats.dropped["unresolved"] == 2
    assert pcb.so_error == errno.EHOSTUNREACH
    assert pcb in core.ready
    assert core.next_deadline() is None
    assert core.arp.pending == {}


def test_failure_spares_unconnected_and_other_sockets() -> None:
    """Only a socket connected to the unresolvable address hears EHOSTUNREACH."""
    core = make_core(arp=ArpConfig(max_requests=1))
    unconnected = udp_sender(core, 4000)
    elsewhere = udp_sender(core, 4001)
    core.udp.connect(elsewhere, int(OTHER_IP), 7)
    send(core, unconnected, b"x")
    core.run_timers(1.0)
    assert arp_stats(core).resolution_failures == 1
    assert unconnected.so_error == 0 and elsewhere.so_error == 0


def test_resolution_starts_afresh_after_failure() -> None:
    """After a failure the next packet to that address starts a new round of requests."""
    core = make_core(arp=ArpConfig(max_requests=1))
    pcb = udp_sender(core)
    send(core, pcb, b"x", now=0.0)
    core.run_timers(1.0)
    core.take_outbox()
    send(core, pcb, b"y", now=2.0)
    (request,) = core.take_outbox()
    check_arp(request, operation=ARP_REQUEST, target_ip=PEER_IP)
    assert arp_stats(core).requests_sent == 2


def test_held_packets_flushed_in_order_when_reply_arrives() -> None:
    """The reply releases every held packet, in the order sent, to the MAC it taught; the
    retry timer is cancelled."""
    core = make_core()
    pcb = udp_sender(core)
    payloads = [b"first", b"second", b"third"]
    for i, payload in enumerate(payloads):
        send(core, pcb, payload, now=i * 0.1)
    core.take_outbox()  # the ARP request
    core.ether_input(build_arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), 0.5)
    frames = core.take_outbox()
    assert len(frames) == 3
    for frame, payload in zip(frames, payloads, strict=True):
        check_ipv4(
            frame, eth_dst=PEER_MAC, eth_src=OUR_MAC, src=OUR_IP, dst=PEER_IP, udp=check_udp(payload=payload)
        )
    assert core.next_deadline() is None
    assert core.arp.pending == {}
    assert arp_stats(core).held == 3
    send(core, pcb, b"fourth", now=0.6)  # now straight out
    (frame,) = core.take_outbox()
    check_ipv4(frame, eth_dst=PEER_MAC, udp=check_udp(payload=b"fourth"))


def test_reply_not_addressed_to_us_still_resolves_a_pending_address() -> None:
    """A pending address is learned from any ARP packet it sends (a reply to someone else too)."""
    core = make_core()
    pcb = udp_sender(core)
    send(core, pcb, b"x")
    core.take_outbox()
    core.ether_input(
        build_arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OTHER_MAC, OTHER_IP, eth_dst=BROADCAST_MAC), 0.1
    )
    (frame,) = core.take_outbox()
    check_ipv4(frame, eth_dst=PEER_MAC, udp=check_udp(payload=b"x"))


def test_hold_queue_keeps_the_newest() -> None:
    """Beyond hold_limit packets per address the oldest is dropped and counted."""
    core = make_core(arp=ArpConfig(hold_limit=4))
    pcb = udp_sender(core)
    for i in range(6):
        send(core, pcb, b"p%d" % i)
    core.take_outbox()
    stats = arp_stats(core)
    assert stats.dropped["hold_queue_full"] == 2
    assert stats.held == 6
    core.ether_input(build_arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), 0.1)
    frames = core.take_outbox()
    assert [check_ipv4(f, udp=check_udp()).payload_len - 8 for f in frames] == [2] * 4
    assert [f[-2:] for f in frames] == [b"p2", b"p3", b"p4", b"p5"]


def test_pending_limit_bounds_addresses_being_resolved() -> None:
    """At most pending_limit addresses are resolved at once; a packet for one more is dropped
    and counted, and no request goes out for it."""
    core = make_core(arp=ArpConfig(pending_limit=2))
    pcb = udp_sender(core)
    targets = [IPv4Address("198.18.0.10"), IPv4Address("198.18.0.11"), IPv4Address("198.18.0.12")]
    for target in targets:
        send(core, pcb, b"x", dst=target)
    requests = core.take_outbox()
    assert [check_arp(r).target_ip for r in requests] == targets[:2]
    assert arp_stats(core).dropped["too_many_pending"] == 1
    assert len(core.arp.pending) == 2


def test_cache_limit_evicts_the_least_recently_confirmed() -> None:
    """Beyond cache_limit entries the least recently confirmed goes (counted as cache_evicted);
    re-confirming an entry protects it."""
    core = make_core(arp=ArpConfig(cache_limit=3))
    hosts = [(IPv4Address(f"198.18.0.{10 + i}"), MacAddress(f"02:00:00:00:01:{i:02x}")) for i in range(4)]
    for ip, mac in hosts[:3]:
        learn_peer(core, ip, mac)
    learn_peer(core, *hosts[0], now=1.0)  # confirm .10 again: .11 is now the oldest
    learn_peer(core, *hosts[3], now=2.0)
    assert len(core.arp.cache) == 3
    assert cached(core, hosts[1][0], 2.0) is None
    assert [cached(core, ip, 2.0) for ip, _ in (hosts[0], hosts[2], hosts[3])] == [
        hosts[0][1], hosts[2][1], hosts[3][1],
    ]  # fmt: skip
    assert arp_stats(core).dropped["cache_evicted"] == 1


# -- expiry and refresh ----------------------------------------------------------------------------


def test_entry_expires_after_max_age() -> None:
    """An entry confirmed at t is valid until t + max_age; then a packet starts resolution again."""
    core = make_core(arp=ArpConfig(max_age=60.0, refresh_before=5.0))
    learn_peer(core, now=100.0)
    assert cached(core, PEER_IP, 159.999) == PEER_MAC
    assert cached(core, PEER_IP, 160.0) is None
    pcb = udp_sender(core)
    send(core, pcb, b"late", now=160.0)
    (request,) = core.take_outbox()
    check_arp(request, operation=ARP_REQUEST, eth_dst=BROADCAST_MAC, target_ip=PEER_IP)
    assert int(PEER_IP) in core.arp.pending


def test_entry_in_use_is_refreshed_before_it_expires() -> None:
    """Within refresh_before of expiry a send still goes out at once and one refresh request is
    sent (only one); the answer extends the entry, and the next refresh can happen again."""
    core = make_core(arp=ArpConfig(max_age=60.0, refresh_before=5.0))
    learn_peer(core, now=0.0)
    pcb = udp_sender(core)
    send(core, pcb, b"early", now=54.9)
    (frame,) = core.take_outbox()
    check_ipv4(frame, eth_dst=PEER_MAC)
    send(core, pcb, b"a", now=55.0)
    request, frame = sorted(core.take_outbox(), key=is_ipv4)  # the ARP request, then the datagram
    check_ipv4(frame, eth_dst=PEER_MAC, udp=check_udp(payload=b"a"))
    check_arp(request, operation=ARP_REQUEST, target_ip=PEER_IP)
    send(core, pcb, b"b", now=56.0)
    (frame,) = core.take_outbox()  # no second refresh request
    check_ipv4(frame, eth_dst=PEER_MAC, udp=check_udp(payload=b"b"))
    core.ether_input(build_arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), 57.0)
    assert cached(core, PEER_IP, 116.9) == PEER_MAC  # extended to 57 + 60
    send(core, pcb, b"c", now=112.0)
    request, _frame = sorted(core.take_outbox(), key=is_ipv4)
    check_arp(request, operation=ARP_REQUEST, target_ip=PEER_IP)
