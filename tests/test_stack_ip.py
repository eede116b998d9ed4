"""IPv4 in the sans-IO core: ip_input's refusals (each counted by reason), what it accepts,
ip_output's routing and fragmentation, and reassembly with its bounds and timeout."""

from __future__ import annotations

import errno
import random
from ipaddress import IPv4Address

import pytest
from helpers import (
    BROADCAST_MAC,
    OTHER_IP,
    OTHER_MAC,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    SUBNET_BROADCAST,
    build_arp_frame,
    build_ipv4_frame,
    build_udp_frame,
    check_arp,
    check_icmp,
    check_ipv4,
    check_udp,
    ip_fragments,
    learn_peer,
    make_core,
    set_ip_field,
    udp_datagram,
)

from trio_yastack.stack import IpConfig, StackCore, UdpPcb
from trio_yastack.stack.wire import ARP_REPLY, ARP_REQUEST, IPPROTO_TCP, IPPROTO_UDP, Ipv4Repr
from trio_yastack.stack.wire.icmp import ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMP_UNREACH_PROTOCOL

FRAME_HEADROOM = 14 + 20
PORT = 7


def bound_core(**kwargs) -> tuple[StackCore, UdpPcb]:  # type: ignore[no-untyped-def]
    """A core with a UDP socket on port 7 (any address) and the peer's MAC learned."""
    core = make_core(**kwargs)
    pcb = UdpPcb()
    core.udp.bind(pcb, 0, PORT)
    learn_peer(core)
    return core, pcb


def udp_to_us(payload: bytes = b"hello", **kwargs) -> bytes:  # type: ignore[no-untyped-def]
    return build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 5000, PORT, payload, **kwargs)


def received(pcb: UdpPcb) -> list[bytes]:
    return [bytes(payload) for payload, _ in pcb.queue]


def fragments_to_us(payload: bytes, ident: int = 0x1234, **kwargs) -> list[bytes]:  # type: ignore[no-untyped-def]
    datagram = udp_datagram(PEER_IP, OUR_IP, 5000, PORT, payload)
    return ip_fragments(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, datagram, ident=ident, **kwargs)


PAYLOAD_60K = bytes(random.Random(60_000).getrandbits(8) for _ in range(60_000))


# -- ip_input refusals ---------------------------------------------------------------------------

_GOOD = udp_to_us()

REFUSED = {
    "truncated header": (_GOOD[: 14 + 19], "too_short"),
    "version 6": (set_ip_field(_GOOD, 0, "!B", 0x65), "bad_version"),
    "IHL 4": (set_ip_field(_GOOD, 0, "!B", 0x44), "bad_header_length"),
    "IHL beyond the frame": (set_ip_field(_GOOD, 0, "!B", 0x4F), "bad_header_length"),
    "total length > frame": (set_ip_field(_GOOD, 2, "!H", len(_GOOD) - 14 + 1), "bad_length"),
    "total length < header": (set_ip_field(_GOOD, 2, "!H", 19), "bad_length"),
    "bad checksum": (set_ip_field(_GOOD, 10, "!H", 0x1234, fix_checksum=False), "bad_checksum"),
    "TTL 0": (udp_to_us(ttl=0), "bad_ttl"),
    "another host": (build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OTHER_IP, 5000, PORT, b"x"), "not_for_us"),
    "multicast": (build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, "224.0.0.1", 5000, PORT, b"x"), "not_for_us"),
    "source is us": (build_udp_frame(PEER_MAC, OUR_MAC, OUR_IP, OUR_IP, 5000, PORT, b"x"), "bad_source"),
    "source is subnet broadcast": (
        build_udp_frame(PEER_MAC, OUR_MAC, SUBNET_BROADCAST, OUR_IP, 5000, PORT, b"x"),
        "bad_source",
    ),
    "source is limited broadcast": (
        build_udp_frame(PEER_MAC, OUR_MAC, "255.255.255.255", OUR_IP, 5000, PORT, b"x"),
        "bad_source",
    ),
    "source is multicast": (
        build_udp_frame(PEER_MAC, OUR_MAC, "224.0.0.5", OUR_IP, 5000, PORT, b"x"),
        "bad_source",
    ),
    "source is class E": (
        build_udp_frame(PEER_MAC, OUR_MAC, "240.0.0.1", OUR_IP, 5000, PORT, b"x"),
        "bad_source",
    ),
    "source is loopback": (
        build_udp_frame(PEER_MAC, OUR_MAC, "127.0.0.1", OUR_IP, 5000, PORT, b"x"),
        "bad_source",
    ),
}


@pytest.mark.parametrize(("frame", "reason"), list(REFUSED.values()), ids=list(REFUSED))
def test_ip_input_drops_by_reason(frame: bytes, reason: str) -> None:
    """Each refusal is counted under its own reason in ip.dropped, and nothing is delivered or sent."""
    core, pcb = bound_core()
    core.ether_input(frame, 0.0)
    ip = core.statistics().ip
    assert dict(ip.dropped) == {reason: 1}
    assert (ip.received, ip.delivered) == (1, 0)
    assert core.statistics().udp.received == 0
    assert not pcb.queue
    assert core.outbox == []


def test_the_unmodified_frame_is_delivered() -> None:
    """The control for the refusals above: the frame they are made from reaches the socket."""
    core, pcb = bound_core()
    core.ether_input(_GOOD, 0.0)
    assert received(pcb) == [b"hello"]
    assert pcb.queue[0][1] == (int(PEER_IP), 5000)
    ip = core.statistics().ip
    assert (ip.received, ip.delivered, ip.dropped_total) == (1, 1, 0)


def test_ttl_one_is_accepted() -> None:
    """RFC 1122 3.2.1.7: a host does not discard a datagram because its TTL is below 2."""
    core, pcb = bound_core()
    core.ether_input(udp_to_us(b"ttl1", ttl=1), 0.0)
    assert received(pcb) == [b"ttl1"]


def test_ethernet_padding_after_total_length_is_ignored() -> None:
    """Bytes after the IP total length (link padding to 60 bytes, or junk) are not payload."""
    core, pcb = bound_core()
    core.ether_input(udp_to_us(b"a", padding=bytes(60 - 43)), 0.0)
    core.ether_input(udp_to_us(b"bc", padding=b"\xaa" * 100), 0.0)
    assert received(pcb) == [b"a", b"bc"]
    assert core.statistics().udp.dropped_total == 0


@pytest.mark.parametrize("dst", [SUBNET_BROADCAST, IPv4Address("255.255.255.255")])
def test_broadcasts_are_accepted(dst: IPv4Address) -> None:
    """Datagrams to the subnet or limited broadcast reach a socket bound to the wildcard address."""
    core, pcb = bound_core()
    core.ether_input(build_udp_frame(PEER_MAC, BROADCAST_MAC, PEER_IP, dst, 5000, PORT, b"all"), 0.0)
    assert received(pcb) == [b"all"]
    assert core.outbox == []


@pytest.mark.parametrize(
    "options",
    [b"\x01\x01\x01\x00", b"\x07\x07\x04\x00\x00\x00\x00\x00", b"\x01" * 40],
    ids=["nop-eol", "record-route", "40-bytes"],
)
def test_ipv4_options_are_skipped(options: bytes) -> None:
    """A header with options (IHL > 5) is accepted and its payload starts after them."""
    core, pcb = bound_core()
    core.ether_input(udp_to_us(b"with options", options=options), 0.0)
    assert received(pcb) == [b"with options"]


def test_unknown_protocol_gets_protocol_unreachable() -> None:
    """A datagram for a protocol we do not speak is counted and answered with ICMP destination
    unreachable, code 2, quoting the whole (short) datagram."""
    core, _pcb = bound_core()
    frame = build_ipv4_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 132, b"sctp? no." * 3, ident=77)
    core.ether_input(frame, 1.0)
    (error,) = core.take_outbox()
    check_ipv4(
        error, eth_dst=PEER_MAC, eth_src=OUR_MAC, src=OUR_IP, dst=PEER_IP, ttl=64,
        icmp=check_icmp(type=ICMP_DEST_UNREACH, code=ICMP_UNREACH_PROTOCOL, rest=0, data=frame[14:]),
    )  # fmt: skip
    stats = core.statistics()
    assert stats.ip.dropped["unknown_protocol"] == 1
    assert stats.ip.delivered == 0
    assert stats.icmp.errors_sent == 1


def test_unknown_protocol_broadcast_gets_no_error_and_tcp_is_delivered() -> None:
    """No protocol unreachable for a broadcast datagram; TCP goes to the TCP layer, which drops a
    malformed segment there (counted) without answering it."""
    core, _pcb = bound_core()
    core.ether_input(build_ipv4_frame(PEER_MAC, BROADCAST_MAC, PEER_IP, SUBNET_BROADCAST, 132, b"x" * 8), 0.0)
    core.ether_input(build_ipv4_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_TCP, bytes(20)), 0.0)
    assert core.outbox == []
    stats = core.statistics()
    assert stats.ip.dropped["unknown_protocol"] == 1
    assert stats.tcp.segments_received == 1
    assert stats.tcp.dropped_total == 1


# -- ip_output: routes ---------------------------------------------------------------------------


def test_on_link_destination_is_resolved_directly() -> None:
    """A destination on our subnet is its own next hop: ARP asks for it."""
    core = make_core(gateway="198.18.0.254")
    pcb = UdpPcb()
    core.udp.udp_output(pcb, b"x", int(OTHER_IP), 9, 0.0)
    (request,) = core.take_outbox()
    check_arp(request, operation=ARP_REQUEST, target_ip=OTHER_IP)


def test_off_link_destination_goes_through_the_gateway() -> None:
    """Off-subnet traffic is sent to the gateway's MAC (resolved by ARP) with the final IP dst."""
    gateway = IPv4Address("198.18.0.254")
    gateway_mac = OTHER_MAC
    core = make_core(gateway=gateway)
    pcb = UdpPcb()
    core.udp.udp_output(pcb, b"far", int(IPv4Address("203.0.113.9")), 9, 0.0)
    (request,) = core.take_outbox()
    check_arp(request, operation=ARP_REQUEST, eth_dst=BROADCAST_MAC, target_ip=gateway)
    core.ether_input(build_arp_frame(ARP_REPLY, gateway_mac, gateway, OUR_MAC, OUR_IP), 0.1)
    (frame,) = core.take_outbox()
    check_ipv4(
        frame, eth_dst=gateway_mac, src=OUR_IP, dst="203.0.113.9", udp=check_udp(dport=9, payload=b"far")
    )
    assert core.arp.lookup(int(IPv4Address("203.0.113.9")), 0.1) is None  # only the gateway is cached


def test_no_route_without_gateway() -> None:
    """Off-subnet with no gateway: ENETUNREACH, counted as no_route, nothing sent."""
    core = make_core()
    pcb = UdpPcb()
    with pytest.raises(OSError) as info:
        core.udp.udp_output(pcb, b"x", int(IPv4Address("203.0.113.9")), 9, 0.0)
    assert info.value.errno == errno.ENETUNREACH
    assert core.statistics().ip.dropped["no_route"] == 1
    assert core.outbox == []
    with pytest.raises(OSError) as info:
        core.udp.connect(pcb, int(IPv4Address("203.0.113.9")), 9)
    assert info.value.errno == errno.ENETUNREACH


def test_dont_fragment_too_big_is_emsgsize() -> None:
    """With DF a datagram larger than the MTU is refused (EMSGSIZE); one that fits carries DF."""
    core, _pcb = bound_core()
    with pytest.raises(OSError) as info:
        core.ip_layer.ip_output(
            bytearray(FRAME_HEADROOM + 1481), IPPROTO_UDP, int(PEER_IP), 0.0, dont_fragment=True
        )
    assert info.value.errno == errno.EMSGSIZE
    assert core.statistics().ip.dropped["cannot_fragment"] == 1
    assert core.outbox == []
    core.ip_layer.ip_output(
        bytearray(FRAME_HEADROOM + 1480), IPPROTO_UDP, int(PEER_IP), 0.0, dont_fragment=True
    )
    (frame,) = core.take_outbox()
    check_ipv4(frame, dont_fragment=True, more_fragments=False, payload_len=1480)


def test_datagram_beyond_ipv4_limit_is_emsgsize() -> None:
    """A datagram over 65535 bytes is refused, at the UDP layer and at ip_output."""
    core, pcb = bound_core()
    with pytest.raises(OSError) as info:
        core.udp.udp_output(pcb, bytes(65508), int(PEER_IP), 9, 0.0)
    assert info.value.errno == errno.EMSGSIZE
    with pytest.raises(OSError) as info:
        core.ip_layer.ip_output(bytearray(14 + 65536), IPPROTO_UDP, int(PEER_IP), 0.0)
    assert info.value.errno == errno.EMSGSIZE
    assert core.outbox == []


def test_largest_udp_payload_is_sent() -> None:
    """65507 bytes (65535 - 20 - 8) is the largest UDP payload, and it goes out fragmented."""
    core, pcb = bound_core()
    core.udp.udp_output(pcb, bytes(65507), int(PEER_IP), 9, 0.0)
    frames = core.take_outbox()
    assert sum(check_ipv4(f).payload_len for f in frames) == 65515


# -- fragmentation and reassembly ---------------------------------------------------------------


@pytest.mark.parametrize("mtu", [576, 1500, 9000])
def test_fragmentation_of_60000_bytes(mtu: int) -> None:
    """Every fragment: same ident, offset a multiple of 8 and contiguous, MF on all but the last,
    no DF, at most MTU bytes, a valid header; together they are exactly the UDP datagram."""
    core = make_core(mtu=mtu)
    learn_peer(core)
    pcb = UdpPcb()
    core.udp.bind(pcb, 0, 4000)
    core.udp.udp_output(pcb, PAYLOAD_60K, int(PEER_IP), 9, 0.0)
    frames = core.take_outbox()
    chunk = (mtu - 20) & ~7
    assert len(frames) == -(-60_008 // chunk)
    idents = set()
    expected_offset = 0
    pieces = []
    for i, frame in enumerate(frames):
        last = i == len(frames) - 1
        ip = check_ipv4(
            frame, eth_dst=PEER_MAC, src=OUR_IP, dst=PEER_IP, protocol=IPPROTO_UDP, ttl=64,
            dont_fragment=False, more_fragments=not last, fragment_offset=expected_offset,
        )  # fmt: skip
        assert ip.fragment_offset % 8 == 0
        assert ip.total_len <= mtu
        if not last:
            assert ip.payload_len == chunk
        idents.add(ip.ident)
        pieces.append(frame[34:])
        expected_offset += ip.payload_len
    assert len(idents) == 1
    assert b"".join(pieces) == udp_datagram(OUR_IP, PEER_IP, 4000, 9, PAYLOAD_60K)
    ip_stats = core.statistics().ip
    assert (ip_stats.sent, ip_stats.fragmented, ip_stats.fragments_created) == (1, 1, len(frames))


def test_consecutive_datagrams_get_different_idents() -> None:
    """Two fragmented datagrams never share an ident (their fragments must not mix)."""
    core, pcb = bound_core()
    core.udp.udp_output(pcb, bytes(3000), int(PEER_IP), 9, 0.0)
    core.udp.udp_output(pcb, bytes(3000), int(PEER_IP), 9, 0.0)
    idents = [check_ipv4(f).ident for f in core.take_outbox()]
    assert len(set(idents[:3])) == 1 and len(set(idents[3:])) == 1 and idents[0] != idents[3]


def sent_fragments(payload: bytes) -> list[bytes]:
    """The frames another core (the peer) emits for ``payload`` to our port 7."""
    sender = make_core(ip=PEER_IP, mac=PEER_MAC, seed=1)
    learn_peer(sender, OUR_IP, OUR_MAC)
    pcb = UdpPcb()
    sender.udp.bind(pcb, 0, 5000)
    sender.udp.udp_output(pcb, payload, int(OUR_IP), PORT, 0.0)
    return sender.take_outbox()


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled 1", "shuffled 2", "shuffled 3"])
def test_reassembly_of_60000_bytes(order: str) -> None:
    """The peer's 41 fragments, in any order, reassemble into exactly the datagram sent; the
    reassembly table and its timer are empty afterwards."""
    frames = sent_fragments(PAYLOAD_60K)
    assert len(frames) == 41
    if order == "reversed":
        frames.reverse()
    elif order.startswith("shuffled"):
        random.Random(int(order[-1])).shuffle(frames)
    core, pcb = bound_core()
    for i, frame in enumerate(frames):
        assert not pcb.queue, "delivered before the last fragment"
        core.ether_input(frame, i * 0.001)
    assert received(pcb) == [PAYLOAD_60K]
    ip = core.statistics().ip
    assert (ip.fragments_received, ip.reassembled, ip.delivered, ip.dropped_total) == (41, 1, 1, 0)
    assert len(core.ip_layer.reassembler) == 0
    assert core.ip_layer.reassembler.bytes_held == 0
    assert core.next_deadline() is None


def test_exact_duplicate_fragments_do_not_kill_the_datagram() -> None:
    """A fragment received twice is dropped as duplicate_fragment and the datagram still completes."""
    frames = fragments_to_us(bytes(range(256)) * 20)
    core, pcb = bound_core()
    for frame in [frames[0], frames[1], frames[0], frames[1], *frames[2:]]:
        core.ether_input(frame, 0.0)
    assert received(pcb) == [bytes(range(256)) * 20]
    ip = core.statistics().ip
    assert dict(ip.dropped) == {"duplicate_fragment": 2}
    assert ip.reassembled == 1


def test_overlapping_fragment_discards_the_datagram() -> None:
    """A fragment that partly overlaps a held one discards the whole datagram (counted once),
    and the rest of its fragments can no longer complete it."""
    payload = bytes(range(256)) * 20
    frames = fragments_to_us(payload)
    datagram = udp_datagram(PEER_IP, OUR_IP, 5000, PORT, payload)
    overlap = build_ipv4_frame(
        PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, datagram[8:24],
        ident=0x1234, more_fragments=True, fragment_offset=8,
    )  # fmt: skip
    core, pcb = bound_core()
    core.ether_input(frames[0], 0.0)
    core.ether_input(overlap, 0.0)
    assert core.statistics().ip.dropped["overlapping_fragment"] == 1
    assert len(core.ip_layer.reassembler) == 0
    assert core.ip_layer.reassembler.bytes_held == 0
    assert core.next_deadline() is None  # its reassembly timer went with it
    for frame in frames[1:]:
        core.ether_input(frame, 0.0)
    assert not pcb.queue
    assert core.statistics().ip.reassembled == 0


def test_reassembly_timeout_sends_time_exceeded() -> None:
    """30 s after its first fragment an incomplete datagram is dropped (reassembly_timeout) and,
    as its offset-0 fragment was held, ICMP time exceeded code 1 quotes that fragment's header
    and first 8 bytes."""
    frames = fragments_to_us(bytes(4000))
    core, pcb = bound_core()
    core.ether_input(frames[0], 100.0)
    core.ether_input(frames[1], 110.0)
    assert core.next_deadline() == 130.0
    core.run_timers(129.99)
    assert core.outbox == [] and len(core.ip_layer.reassembler) == 1
    core.run_timers(130.0)
    assert core.statistics().ip.dropped["reassembly_timeout"] == 1
    assert len(core.ip_layer.reassembler) == 0 and core.ip_layer.reassembler.bytes_held == 0
    (error,) = core.take_outbox()
    check_ipv4(
        error, eth_dst=PEER_MAC, src=OUR_IP, dst=PEER_IP,
        icmp=check_icmp(type=ICMP_TIME_EXCEEDED, code=1, rest=0, data=frames[0][14 : 14 + 28]),
    )  # fmt: skip
    core.ether_input(frames[2], 131.0)  # the straggler starts a new (hopeless) datagram
    assert not pcb.queue


def test_reassembly_timeout_without_first_fragment_sends_nothing() -> None:
    """Without the offset-0 fragment there is nothing to quote: counted, no ICMP."""
    frames = fragments_to_us(bytes(4000))
    core, _pcb = bound_core()
    core.ether_input(frames[1], 0.0)
    core.run_timers(30.0)
    assert core.statistics().ip.dropped["reassembly_timeout"] == 1
    assert core.outbox == []


def test_reassembly_timeout_of_broadcast_datagram_sends_nothing() -> None:
    """No time exceeded about a datagram that was sent to a broadcast address."""
    datagram = udp_datagram(PEER_IP, SUBNET_BROADCAST, 5000, PORT, bytes(4000))
    frames = ip_fragments(PEER_MAC, BROADCAST_MAC, PEER_IP, SUBNET_BROADCAST, IPPROTO_UDP, datagram, ident=9)
    core, _pcb = bound_core()
    core.ether_input(frames[0], 0.0)
    core.run_timers(30.0)
    assert core.statistics().ip.dropped["reassembly_timeout"] == 1
    assert core.outbox == []


def test_reassembly_memory_limit_evicts_oldest() -> None:
    """Beyond reassembly_memory_limit bytes held, the oldest datagrams are discarded (counted)."""
    core, pcb = bound_core(ip_config=IpConfig(reassembly_memory_limit=4000))
    datagrams = {ident: fragments_to_us(bytes([ident]) * 2000, ident=ident) for ident in (1, 2, 3)}
    for ident in (1, 2, 3):
        core.ether_input(datagrams[ident][0], 0.0)  # 1480 bytes each
        assert core.ip_layer.reassembler.bytes_held <= 4000
    assert core.statistics().ip.dropped["reassembly_memory"] == 1
    assert len(core.ip_layer.reassembler) == 2
    core.ether_input(datagrams[1][1], 0.0)  # datagram 1 was evicted: cannot complete
    core.ether_input(datagrams[3][1], 0.0)
    assert received(pcb) == [bytes([3]) * 2000]


def test_reassembly_first_fragment_larger_than_memory_limit_is_refused() -> None:
    """A single fragment that alone exceeds the memory limit is dropped without evicting anything."""
    core, _pcb = bound_core(ip_config=IpConfig(reassembly_memory_limit=1000))
    core.ether_input(fragments_to_us(bytes(3000))[0], 0.0)
    assert core.statistics().ip.dropped["reassembly_memory"] == 1
    assert len(core.ip_layer.reassembler) == 0


def test_reassembly_datagram_count_limit_evicts_oldest() -> None:
    """Beyond reassembly_max_datagrams the oldest datagram in progress is evicted (counted)."""
    core, pcb = bound_core(ip_config=IpConfig(reassembly_max_datagrams=2))
    datagrams = {ident: fragments_to_us(bytes([ident]) * 2000, ident=ident) for ident in (1, 2, 3)}
    for ident in (1, 2, 3):
        core.ether_input(datagrams[ident][0], 0.0)
    assert len(core.ip_layer.reassembler) == 2
    assert core.statistics().ip.dropped["reassembly_evicted"] == 1
    for ident in (2, 3, 1):  # datagram 1 was evicted: its second half is held alone
        core.ether_input(datagrams[ident][1], 0.0)
    assert received(pcb) == [bytes([2]) * 2000, bytes([3]) * 2000]
    assert len(core.ip_layer.reassembler) == 1


def test_reassembly_fragment_count_limit() -> None:
    """A datagram needing more than reassembly_max_fragments pieces is discarded."""
    core, pcb = bound_core(ip_config=IpConfig(reassembly_max_fragments=4))
    frames = fragments_to_us(bytes(800), fragment_size=160)  # 6 fragments
    for frame in frames:
        core.ether_input(frame, 0.0)
    assert core.statistics().ip.dropped["too_many_fragments"] == 1
    assert not pcb.queue


def fragment_at(offset: int, length: int, more: bool, ident: int = 5) -> bytes:
    return build_ipv4_frame(
        PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, bytes(length),
        ident=ident, more_fragments=more, fragment_offset=offset,
    )  # fmt: skip


def test_fragments_beyond_65535_bytes_are_dropped() -> None:
    """A fragment whose end would make the datagram longer than 65535 bytes is dropped; one that
    ends exactly at the limit is held."""
    core, _pcb = bound_core()
    core.ether_input(fragment_at(65528, 8, more=False), 0.0)  # the largest offset the field allows
    core.ether_input(fragment_at(64000, 1520, more=False, ident=6), 0.0)  # 20 + 65520 > 65535
    assert core.statistics().ip.dropped["fragment_too_large"] == 2
    assert len(core.ip_layer.reassembler) == 0
    core.ether_input(fragment_at(64000, 1515, more=False, ident=7), 0.0)  # 20 + 65515 == 65535
    assert len(core.ip_layer.reassembler) == 1
    assert core.statistics().ip.dropped_total == 2


def test_bad_fragments_are_dropped() -> None:
    """A non-last fragment whose length is not a multiple of 8, an empty fragment, and a second
    'last' fragment that disagrees on the total length are refused as bad_fragment."""
    core, _pcb = bound_core()
    core.ether_input(fragment_at(0, 12, more=True, ident=1), 0.0)
    core.ether_input(fragment_at(8, 0, more=True, ident=2), 0.0)
    core.ether_input(fragment_at(16, 8, more=False, ident=3), 0.0)
    core.ether_input(fragment_at(32, 8, more=False, ident=3), 0.0)
    assert core.statistics().ip.dropped["bad_fragment"] == 3
    assert len(core.ip_layer.reassembler) == 0


def test_fragment_keys_separate_sources_and_protocols() -> None:
    """Fragments with the same ident from different sources do not mix."""
    core, pcb = bound_core()
    learn_peer(core, OTHER_IP, OTHER_MAC)
    mine = fragments_to_us(b"A" * 3000, ident=42)
    datagram = udp_datagram(OTHER_IP, OUR_IP, 5000, PORT, b"B" * 3000)
    theirs = ip_fragments(OTHER_MAC, OUR_MAC, OTHER_IP, OUR_IP, IPPROTO_UDP, datagram, ident=42)
    for a, b in zip(mine, theirs, strict=True):
        core.ether_input(a, 0.0)
        core.ether_input(b, 0.0)
    assert sorted(received(pcb)) == [b"A" * 3000, b"B" * 3000]


def test_reassembled_datagram_with_first_fragment_options() -> None:
    """Options in the fragments' headers do not end up in the reassembled payload."""
    core, pcb = bound_core()
    for frame in fragments_to_us(b"opt" * 1000, options=b"\x01\x01\x01\x00", fragment_size=1472):
        assert len(Ipv4Repr.parse(frame, 14).options) == 4
        core.ether_input(frame, 0.0)
    assert received(pcb) == [b"opt" * 1000]
