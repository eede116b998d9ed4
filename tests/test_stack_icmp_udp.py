"""ICMP and UDP in the sans-IO core: echo, errors out (RFC 1122 3.2.2 rules and the rate limit),
errors in (to connected sockets), and UDP sockets: bind, queues, checksums, broadcast, loopback."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address

import pytest
import vectors
from helpers import (
    BROADCAST_MAC,
    OTHER_IP,
    OTHER_MAC,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    SUBNET_BROADCAST,
    build_icmp_frame,
    build_ipv4_frame,
    build_udp_frame,
    check_icmp,
    check_ipv4,
    check_udp,
    drops,
    ip_fragments,
    learn_peer,
    make_core,
    udp_datagram,
)

from trio_yastack.stack import IcmpConfig, StackCore, UdpConfig, UdpPcb
from trio_yastack.stack.wire import IPPROTO_ICMP, IPPROTO_UDP, IcmpRepr
from trio_yastack.stack.wire.icmp import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REPLY,
    ICMP_REDIRECT,
    ICMP_TIME_EXCEEDED,
    ICMP_UNREACH_PORT,
)

PORT = 7


def peer_core(**kwargs) -> StackCore:  # type: ignore[no-untyped-def]
    """Our core with the peer's MAC already learned."""
    core = make_core(**kwargs)
    learn_peer(core)
    return core


def bound(core: StackCore, port: int = PORT, ip: IPv4Address | int = 0) -> UdpPcb:
    pcb = UdpPcb()
    core.udp.bind(pcb, int(ip), port)
    return pcb


def to_closed_port(payload: bytes = b"nobody listens here\n", dport: int = 9, **kwargs) -> bytes:  # type: ignore[no-untyped-def]
    return build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 40000, dport, payload, **kwargs)


def echo_request(ident: int = 0x0E32, seq: int = 1, data: bytes = b"ping", **kwargs) -> bytes:  # type: ignore[no-untyped-def]
    return build_icmp_frame(
        PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IcmpRepr.echo_request(ident, seq, data), **kwargs
    )


# -- echo ------------------------------------------------------------------------------------


def test_echo_reply_matches_the_linux_kernel_byte_for_byte() -> None:
    """Our reply to the kernel's captured ping is the very frame Linux sent back, once our IP
    ident counter stands where Linux's did (the ident is the only free choice)."""
    core = make_core(ip=vectors.PEER_IP, mac=vectors.PEER_MAC)
    learn_peer(core, vectors.KERNEL_IP, vectors.KERNEL_MAC)
    core.ip_layer.ident = 0xB117 - 1  # ip_output uses the next value
    core.ether_input(vectors.ICMP_ECHO_REQUEST, 0.0)
    assert core.take_outbox() == [vectors.ICMP_ECHO_REPLY]
    icmp = core.statistics().icmp
    assert (icmp.received, icmp.echo_requests_received, icmp.echo_replies_sent) == (1, 1, 1)


def test_echo_reply_exact_frame() -> None:
    """The reply swaps the addresses, keeps ident, seq and data, TTL 64, no DF, the next IP ident."""
    core = peer_core(seed=3)
    ident = (core.ip_layer.ident + 1) & 0xFFFF
    data = bytes(range(57))  # odd length: the checksum pads
    core.ether_input(echo_request(0xBEEF, 0xFFFF, data, ttl=3, dont_fragment=True), 1.0)
    expected = build_icmp_frame(
        OUR_MAC, PEER_MAC, OUR_IP, PEER_IP, IcmpRepr.echo_reply(0xBEEF, 0xFFFF, data), ttl=64, ident=ident
    )
    assert core.take_outbox() == [expected]


def test_fragmented_echo_request_gets_fragmented_reply() -> None:
    """A 4000-byte ping arrives in fragments; the reply carries the same data, fragmented."""
    core = peer_core()
    data = bytes(i % 251 for i in range(4000))
    message = IcmpRepr.echo_request(1, 2, data).to_bytes()
    for frame in ip_fragments(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_ICMP, message, ident=5):
        core.ether_input(frame, 0.0)
    frames = core.take_outbox()
    assert len(frames) == 3
    for frame in frames:
        check_ipv4(frame, dst=PEER_IP, protocol=IPPROTO_ICMP)
    reply = b"".join(frame[34:] for frame in frames)
    assert IcmpRepr.parse(reply) == IcmpRepr.echo_reply(1, 2, data)


@pytest.mark.parametrize("dst", [SUBNET_BROADCAST, IPv4Address("255.255.255.255")])
def test_broadcast_echo_is_ignored(dst: IPv4Address) -> None:
    """By default (bmcastecho off) an echo request to a broadcast address gets no reply."""
    core = peer_core()
    frame = build_icmp_frame(PEER_MAC, BROADCAST_MAC, PEER_IP, dst, IcmpRepr.echo_request(1, 1, b"x"))
    core.ether_input(frame, 0.0)
    assert core.outbox == []
    assert core.statistics().icmp.dropped["broadcast_echo"] == 1


def test_broadcast_echo_answered_when_enabled() -> None:
    """With reply_to_broadcast_echo the reply comes from our own address, unicast to the asker."""
    core = peer_core(icmp=IcmpConfig(reply_to_broadcast_echo=True))
    frame = build_icmp_frame(
        PEER_MAC, BROADCAST_MAC, PEER_IP, SUBNET_BROADCAST, IcmpRepr.echo_request(1, 1, b"x")
    )
    core.ether_input(frame, 0.0)
    (reply,) = core.take_outbox()
    check_ipv4(
        reply, eth_dst=PEER_MAC, src=OUR_IP, dst=PEER_IP, icmp=check_icmp(type=ICMP_ECHO_REPLY, data=b"x")
    )


@pytest.mark.parametrize("source", ["203.0.113.5", "0.0.0.0"])
def test_echo_request_without_route_back_does_not_raise(source: str) -> None:
    """An echo request from an address we cannot route to (off-link, no gateway; or 0.0.0.0) is
    dropped and counted; ether_input must never raise because of what it received."""
    core = make_core()
    frame = build_icmp_frame(PEER_MAC, OUR_MAC, source, OUR_IP, IcmpRepr.echo_request(1, 1, b"x"))
    # Regression: the echo reply's ip_output raised ENETUNREACH out of ether_input; it is now a
    # counted drop (no_route, no_route_back).
    core.ether_input(frame, 0.0)
    assert core.outbox == []
    assert drops(core)  # counted under some reason (ip_output counts no_route today)


def test_malformed_icmp_counted() -> None:
    """A truncated ICMP header and a bad ICMP checksum are counted in icmp.dropped, not answered."""
    core = peer_core()
    core.ether_input(build_ipv4_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_ICMP, b"\x08\x00\x00"), 0.0)
    bad = bytearray(IcmpRepr.echo_request(1, 1, b"x").to_bytes())
    bad[2] ^= 0xFF
    core.ether_input(build_ipv4_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_ICMP, bytes(bad)), 0.0)
    assert dict(core.statistics().icmp.dropped) == {"too_short": 1, "bad_checksum": 1}
    assert core.outbox == []


def test_echo_reply_reaches_its_endpoint_only() -> None:
    """Echo replies are queued on the endpoint with their ident (marked ready), others dropped."""
    core = peer_core()
    endpoint = core.icmp.echo_open(0x1234)
    core.ether_input(
        build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IcmpRepr.echo_reply(0x1234, 9, b"d")), 2.5
    )
    core.ether_input(
        build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IcmpRepr.echo_reply(0x9999, 9, b"d")), 2.5
    )
    assert list(endpoint.replies) == [(int(PEER_IP), 9, b"d", 2.5)]
    assert endpoint in core.ready
    assert core.statistics().icmp.dropped["no_echo_endpoint"] == 1


# -- ICMP errors out -------------------------------------------------------------------------------


def test_port_unreachable_matches_the_linux_kernel() -> None:
    """UDP to a closed port: ICMP port unreachable quoting the whole datagram; the ICMP message
    is byte-identical to the one Linux sent (Linux's IP header differs only in TOS 0xc0)."""
    core = make_core(ip=vectors.PEER_IP, mac=vectors.PEER_MAC)
    learn_peer(core, vectors.KERNEL_IP, vectors.KERNEL_MAC)
    core.ether_input(vectors.UDP_TO_CLOSED_PORT, 0.0)
    (error,) = core.take_outbox()
    check_ipv4(
        error, eth_dst=vectors.KERNEL_MAC, src=vectors.PEER_IP, dst=vectors.KERNEL_IP,
        icmp=check_icmp(type=ICMP_DEST_UNREACH, code=ICMP_UNREACH_PORT, data=vectors.UDP_TO_CLOSED_PORT[14:]),
    )  # fmt: skip
    assert error[34:] == vectors.ICMP_PORT_UNREACHABLE[34:]
    stats = core.statistics()
    assert stats.udp.dropped["no_socket"] == 1
    assert stats.icmp.errors_sent == 1


def test_port_unreachable_quote_is_capped() -> None:
    """The quote is the IP header plus at most quote_len bytes of the datagram."""
    core = peer_core(icmp=IcmpConfig(quote_len=100))
    frame = to_closed_port(bytes(1000))
    core.ether_input(frame, 0.0)
    (error,) = core.take_outbox()
    check_ipv4(
        error, icmp=check_icmp(type=ICMP_DEST_UNREACH, code=ICMP_UNREACH_PORT, data=frame[14 : 14 + 120])
    )


def test_icmp_errors_are_rate_limited_by_a_token_bucket() -> None:
    """error_burst errors at once, then error_rate_limit per second of ``now``; the rest counted."""
    core = peer_core(icmp=IcmpConfig(error_burst=4, error_rate_limit=8.0))

    def burst(n: int, now: float) -> int:
        for _ in range(n):
            core.ether_input(to_closed_port(), now)
        return len(core.take_outbox())

    assert burst(6, 10.0) == 4
    assert core.statistics().icmp.errors_rate_limited == 2
    assert burst(3, 10.25) == 2  # 0.25 s at 8/s: two tokens
    assert burst(1, 10.25) == 0
    assert burst(6, 100.0) == 4  # refilled, but never beyond the burst
    stats = core.statistics()
    assert (stats.icmp.errors_sent, stats.icmp.errors_rate_limited) == (10, 6)
    assert stats.udp.dropped["no_socket"] == 16


def test_default_rate_limit_allows_a_burst_of_50() -> None:
    """With the defaults (50 deep), 60 datagrams at one instant give 50 errors."""
    core = peer_core()
    for _ in range(60):
        core.ether_input(to_closed_port(), 5.0)
    assert len(core.take_outbox()) == 50
    assert core.statistics().icmp.errors_rate_limited == 10


@pytest.mark.parametrize("dst", [SUBNET_BROADCAST, IPv4Address("255.255.255.255")])
def test_no_port_unreachable_for_broadcast(dst: IPv4Address) -> None:
    """A broadcast UDP datagram nobody listens to is dropped silently (counted, no ICMP)."""
    core = peer_core()
    core.ether_input(build_udp_frame(PEER_MAC, BROADCAST_MAC, PEER_IP, dst, 40000, 9, b"x"), 0.0)
    assert core.outbox == []
    assert core.statistics().udp.dropped["no_socket"] == 1


def test_no_error_to_unspecified_source() -> None:
    """No ICMP error is sent to a datagram from 0.0.0.0 (not a unicast source)."""
    core = peer_core()
    core.ether_input(build_udp_frame(PEER_MAC, OUR_MAC, "0.0.0.0", OUR_IP, 68, 9, b"x"), 0.0)
    assert core.outbox == []
    assert core.statistics().udp.dropped["no_socket"] == 1


def test_no_error_about_non_initial_fragment() -> None:
    """icmp_error() refuses to report on a fragment with a non-zero offset."""
    core = peer_core()
    frame = build_ipv4_frame(
        PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, bytes(16), ident=3, fragment_offset=1480
    )
    core.icmp.icmp_error(ICMP_DEST_UNREACH, ICMP_UNREACH_PORT, frame, 14, 0.0)
    assert core.outbox == []
    initial = build_ipv4_frame(
        PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, bytes(16), ident=3, more_fragments=True
    )
    core.icmp.icmp_error(ICMP_DEST_UNREACH, ICMP_UNREACH_PORT, initial, 14, 0.0)
    assert len(core.take_outbox()) == 1  # the control: the first fragment may be reported


def test_no_error_about_an_icmp_error() -> None:
    """A fragmented ICMP error that times out in reassembly gets no time exceeded; a fragmented
    echo request that times out does."""
    core = peer_core()
    quote = to_closed_port(bytes(3000))[14:]
    error = IcmpRepr(ICMP_DEST_UNREACH, ICMP_UNREACH_PORT, 0, quote).to_bytes()
    echo = IcmpRepr.echo_request(1, 1, bytes(3000)).to_bytes()
    for ident, message in ((1, error), (2, echo)):
        first = ip_fragments(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_ICMP, message, ident=ident)[0]
        core.ether_input(first, 0.0)
    core.run_timers(30.0)
    assert core.statistics().ip.dropped["reassembly_timeout"] == 2
    (sent,) = core.take_outbox()
    check_ipv4(sent, icmp=check_icmp(type=ICMP_TIME_EXCEEDED, code=1))
    assert IcmpRepr.parse(sent, 34).data[20:28] == echo[:8]  # about the echo request


def test_icmp_error_about_icmp_error_refused_directly() -> None:
    """icmp_error() never reports on a datagram carrying an ICMP error, nor an unknown ICMP type."""
    core = peer_core()
    for icmp in (
        IcmpRepr(ICMP_DEST_UNREACH, 3, 0, bytes(28)),
        IcmpRepr(ICMP_REDIRECT, 0, 0, bytes(28)),
        IcmpRepr(42, 0),
    ):
        frame = build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, icmp)
        core.icmp.icmp_error(ICMP_DEST_UNREACH, 2, frame, 14, 0.0)
    assert core.outbox == []


# -- ICMP errors in --------------------------------------------------------------------------------


def error_about(
    sport: int, dport: int, icmp_type: int = ICMP_DEST_UNREACH, code: int = ICMP_UNREACH_PORT
) -> bytes:
    """An ICMP error from the peer quoting a UDP datagram we sent from ``sport`` to its ``dport``."""
    quoted = build_udp_frame(OUR_MAC, PEER_MAC, OUR_IP, PEER_IP, sport, dport, b"request")[14:]
    return build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IcmpRepr(icmp_type, code, 0, quoted))


def test_port_unreachable_sets_econnrefused_on_connected_socket() -> None:
    """An incoming port unreachable for a connected socket's peer sets ECONNREFUSED and marks it ready."""
    core = peer_core()
    pcb = bound(core, 4000)
    core.udp.connect(pcb, int(PEER_IP), 9)
    core.ether_input(error_about(4000, 9), 0.0)
    assert pcb.so_error == errno.ECONNREFUSED
    assert pcb in core.ready
    assert core.statistics().icmp.errors_delivered == 1
    assert pcb.take_error() == errno.ECONNREFUSED and pcb.so_error == 0


def test_port_unreachable_ignored_by_unconnected_or_other_sockets() -> None:
    """An unconnected socket, or one connected to another port, hears nothing (as BSD)."""
    core = peer_core()
    unconnected = bound(core, 4000)
    other = bound(core, 4001)
    core.udp.connect(other, int(PEER_IP), 10)
    core.ether_input(error_about(4000, 9), 0.0)
    core.ether_input(error_about(4001, 9), 0.0)
    assert unconnected.so_error == 0 and other.so_error == 0
    assert not core.ready
    assert core.statistics().icmp.dropped["error_no_socket"] == 2


@pytest.mark.parametrize(
    ("icmp_type", "code", "error"),
    [
        (ICMP_DEST_UNREACH, 0, errno.ENETUNREACH),
        (ICMP_DEST_UNREACH, 1, errno.EHOSTUNREACH),
        (ICMP_DEST_UNREACH, 2, errno.ECONNREFUSED),
        (ICMP_DEST_UNREACH, 4, errno.EMSGSIZE),
        (ICMP_TIME_EXCEEDED, 0, errno.EHOSTUNREACH),
    ],
)
def test_icmp_error_errno_mapping(icmp_type: int, code: int, error: int) -> None:
    """Each ICMP error reaches a connected socket as the errno BSD's inetctlerrmap gives."""
    core = peer_core()
    pcb = bound(core, 4000)
    core.udp.connect(pcb, int(PEER_IP), 9)
    core.ether_input(error_about(4000, 9, icmp_type, code), 0.0)
    assert pcb.so_error == error


def test_redirects_and_bad_quotes_are_dropped() -> None:
    """Redirects are ignored; a quote too short or about someone else's datagram is refused."""
    core = peer_core()
    pcb = bound(core, 4000)
    core.udp.connect(pcb, int(PEER_IP), 9)
    core.ether_input(error_about(4000, 9, ICMP_REDIRECT, 1), 0.0)
    short = IcmpRepr(ICMP_DEST_UNREACH, 3, 0, error_about(4000, 9)[42 : 42 + 27])
    core.ether_input(build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, short), 0.0)
    foreign = build_udp_frame(OTHER_MAC, PEER_MAC, OTHER_IP, PEER_IP, 4000, 9, b"not ours")[14:]
    core.ether_input(build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IcmpRepr(3, 3, 0, foreign)), 0.0)
    assert pcb.so_error == 0
    assert dict(core.statistics().icmp.dropped) == {"ignored_type": 1, "bad_quote": 2}


# -- UDP sockets -----------------------------------------------------------------------------------


def test_bind_errors() -> None:
    """EADDRINUSE for a taken port, EADDRNOTAVAIL for an address that is not ours, EINVAL for a
    second bind, EBADF once closed; closing frees the port."""
    core = make_core()
    first = bound(core, 5000)
    with pytest.raises(OSError) as info:
        bound(core, 5000)
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as info:
        bound(core, 5001, OTHER_IP)
    assert info.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as info:
        core.udp.bind(first, 0, 5002)
    assert info.value.errno == errno.EINVAL
    core.udp.close(first)
    with pytest.raises(OSError) as info:
        core.udp.bind(first, 0, 5003)
    assert info.value.errno == errno.EBADF
    assert bound(core, 5000, OUR_IP).local_port == 5000


def test_ephemeral_ports_in_range_and_deterministic_for_a_seed() -> None:
    """Port 0 picks distinct ports in [ephemeral_first, ephemeral_last], the same ones for the
    same seed, others for another seed."""

    def ports(seed: int) -> list[int]:
        core = make_core(seed=seed)
        return [bound(core, 0).local_port for _ in range(50)]

    first = ports(7)
    assert first == ports(7)
    assert first != ports(8)
    assert len(set(first)) == 50
    assert all(49152 <= port <= 65535 for port in first)


def test_ephemeral_range_exhaustion() -> None:
    """A three-port range gives exactly those three ports, then EADDRINUSE; explicit binds count."""
    core = make_core(udp=UdpConfig(ephemeral_first=50000, ephemeral_last=50003))
    bound(core, 50002)
    assert sorted(bound(core, 0).local_port for _ in range(3)) == [50000, 50001, 50003]
    with pytest.raises(OSError) as info:
        bound(core, 0)
    assert info.value.errno == errno.EADDRINUSE


def test_udp_output_exact_frame() -> None:
    """udp_output builds the datagram the Reprs would: ports, length, a valid non-zero checksum."""
    core = peer_core(seed=11)
    pcb = bound(core, 4000)
    ident = (core.ip_layer.ident + 1) & 0xFFFF
    assert core.udp.udp_output(pcb, b"payload", int(PEER_IP), 9, 0.0) == 7
    expected = build_udp_frame(OUR_MAC, PEER_MAC, OUR_IP, PEER_IP, 4000, 9, b"payload", ident=ident)
    assert core.take_outbox() == [expected]


def test_queue_bounded_by_datagrams() -> None:
    """Beyond receive_queue_datagrams the socket drops (socket_buffer_full); reading makes room."""
    core = peer_core(udp=UdpConfig(receive_queue_datagrams=3))
    pcb = bound(core)
    for i in range(5):
        core.ether_input(build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 5000, PORT, b"%d" % i), 0.0)
    assert [d for d, _ in pcb.queue] == [b"0", b"1", b"2"]
    assert core.statistics().udp.dropped["socket_buffer_full"] == 2
    assert pcb.take() == (b"0", (int(PEER_IP), 5000))
    core.ether_input(build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 5000, PORT, b"5"), 0.0)
    assert [d for d, _ in pcb.queue] == [b"1", b"2", b"5"]
    assert core.outbox == []  # a full socket is not an unreachable port


def test_queue_bounded_by_bytes() -> None:
    """Beyond receive_queue_bytes of payload the socket drops; empty datagrams still fit."""
    core = peer_core(udp=UdpConfig(receive_queue_bytes=100))
    pcb = bound(core)
    for payload in (bytes(60), bytes(41), bytes(40), b""):
        core.ether_input(build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 5000, PORT, payload), 0.0)
    assert [len(d) for d, _ in pcb.queue] == [60, 40, 0]
    assert pcb.queued_bytes == 100
    assert core.statistics().udp.dropped["socket_buffer_full"] == 1
    pcb.take()
    assert pcb.queued_bytes == 40


def test_bad_udp_checksum_dropped_zero_checksum_accepted() -> None:
    """A wrong checksum is dropped (and no ICMP error goes out); 0 means none and is accepted."""
    core = peer_core()
    pcb = bound(core)
    good = int.from_bytes(udp_datagram(PEER_IP, OUR_IP, 5000, PORT, b"check")[6:8], "big")

    def datagram(payload: bytes, dport: int = PORT, checksum: int | None = None) -> bytes:
        return build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 5000, dport, payload, checksum=checksum)

    core.ether_input(datagram(b"check", checksum=good ^ 0x0100), 0.0)
    core.ether_input(datagram(b"closed", dport=9, checksum=1), 0.0)
    assert not pcb.queue
    assert core.outbox == []  # not even a port unreachable for the closed port
    assert core.statistics().udp.dropped["bad_checksum"] == 2
    core.ether_input(datagram(b"check", checksum=good), 0.0)
    core.ether_input(datagram(b"none", checksum=0), 0.0)
    assert [d for d, _ in pcb.queue] == [b"check", b"none"]


def test_checksums_not_verified_with_rx_offload() -> None:
    """verify_checksums=False (the port verified them): a wrong UDP checksum is not looked at."""
    core = peer_core(verify_checksums=False)
    pcb = bound(core)
    core.ether_input(
        build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 5000, PORT, b"trust", checksum=1), 0.0
    )
    assert [d for d, _ in pcb.queue] == [b"trust"]


def test_udp_length_field_must_fit() -> None:
    """A UDP length beyond what IP carried is bad_length; one shorter than IP's trims the payload."""
    core = peer_core()
    pcb = bound(core)
    long = bytearray(udp_datagram(PEER_IP, OUR_IP, 5000, PORT, b"abcdef", checksum=0))
    long[4:6] = (len(long) + 1).to_bytes(2, "big")
    core.ether_input(build_ipv4_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, bytes(long)), 0.0)
    assert core.statistics().udp.dropped["bad_length"] == 1
    short = bytearray(long)
    short[4:6] = (8 + 3).to_bytes(2, "big")
    core.ether_input(build_ipv4_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, bytes(short)), 0.0)
    assert [d for d, _ in pcb.queue] == [b"abc"]


@pytest.mark.parametrize("dst", [SUBNET_BROADCAST, IPv4Address("255.255.255.255")])
def test_broadcast_needs_so_broadcast(dst: IPv4Address) -> None:
    """Sending to a broadcast address is EACCES without SO_BROADCAST; with it the frame goes to
    the broadcast MAC without ARP."""
    core = make_core()
    pcb = bound(core, 4000)
    with pytest.raises(OSError) as info:
        core.udp.udp_output(pcb, b"all", int(dst), 9, 0.0)
    assert info.value.errno == errno.EACCES
    assert core.outbox == []
    pcb.broadcast = True
    core.udp.udp_output(pcb, b"all", int(dst), 9, 0.0)
    (frame,) = core.take_outbox()
    check_ipv4(
        frame, eth_dst=BROADCAST_MAC, src=OUR_IP, dst=dst, udp=check_udp(sport=4000, dport=9, payload=b"all")
    )


def test_connected_socket_send_and_filter() -> None:
    """A connected socket sends to its peer by default and only hears from that peer."""
    core = peer_core()
    pcb = bound(core, 4000)
    core.udp.connect(pcb, int(PEER_IP), 9)
    core.udp.udp_output(pcb, b"to peer", 0, 0, 0.0)
    (frame,) = core.take_outbox()
    check_ipv4(frame, dst=PEER_IP, udp=check_udp(sport=4000, dport=9, payload=b"to peer"))
    with pytest.raises(OSError) as info:
        core.udp.udp_output(pcb, b"x", int(OTHER_IP), 9, 0.0)
    assert info.value.errno == errno.EISCONN
    core.ether_input(build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 10, 4000, b"wrong port"), 0.0)
    core.ether_input(build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 9, 4000, b"right"), 0.0)
    assert [d for d, _ in pcb.queue] == [b"right"]


def test_loopback_to_our_own_address() -> None:
    """A datagram to our own address is not put on the wire; the next run_timers delivers it,
    with our address as its source."""
    core = make_core()
    receiver = bound(core, PORT)
    sender = bound(core, 4000)
    core.udp.udp_output(sender, b"to myself", int(OUR_IP), PORT, 1.0)
    assert core.outbox == []
    assert not receiver.queue
    core.run_timers(1.0)
    # Regression: looped-back datagrams (source = our address) were dropped as "bad_source"; only
    # datagrams arriving from the wire with our address as source are martians.
    assert drops(core) == {}
    assert list(receiver.queue) == [(b"to myself", (int(OUR_IP), 4000))]
    assert receiver in core.ready
