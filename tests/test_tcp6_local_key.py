"""An IPv6 connection is keyed by both its addresses (issue 23): a stack with several IPv6
addresses tells ``[B]:p <-> [A]:q`` from ``[B2]:p <-> [A]:q``, as a kernel does.

The TCP layer's remote key of an IPv6 connection is ``key6(peer, ours)``: the peer's address,
``IP6_KEY``, our address above bit 128.  Two connections that differ only in our address
coexist, each with its own data, on the general path (``tcp6_input``) and on the burst's fast
path (``CANDIDATE6``: the classifier names which address of ours), and trio sockets name
them so; an ICMPv6 error about one reaches that one only; the TIME_WAIT of one
leaves the other alone, and its ACK leaves from the address it was for.
"""

from __future__ import annotations

import errno
import random
from ipaddress import IPv4Address, IPv6Interface
from socket import AF_INET6, SO_REUSEPORT, SOCK_STREAM, SOL_SOCKET

import pytest
import trio
import trio.testing
from test_stack_ipv6 import A_MAC, B_MAC, ETH, A, B, core6, exchange, icmp6_frame
from test_tcp6 import tcp6_of
from test_tcp_fastpath6 import LINK_LOCAL, OURS, USABLE, classify, segment6

from trio_yastack import open_stack
from trio_yastack.journey._control import core_snapshot
from trio_yastack.nic import memory_wire
from trio_yastack.socket_api import use_stack
from trio_yastack.stack import (
    ArpConfig,
    InterfaceConfig,
    Ip6Config,
    StackConfig,
    StackCore,
    TcpConnection6,
    TcpState,
    key6,
)
from trio_yastack.stack.tcp._fastpath import CANDIDATE6
from trio_yastack.stack.tcp._tcp6 import IP6_KEY, format_remote
from trio_yastack.stack.wire import MacAddress
from trio_yastack.stack.wire.icmpv6 import Icmpv6Repr
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_FIN

#: our second global address, beside B (2001:2::2)
B2 = B + 1  # 2001:2::3
PORT, PEER_PORT = 80, 40000


def two_address_core() -> StackCore:
    """Our core with two IPv6 addresses (B and B2) on one interface, DAD off."""
    interface = InterfaceConfig(
        mac=MacAddress(B_MAC),
        address=IPv4Address("198.18.0.2"),
        addresses6=(IPv6Interface("2001:2::2/64"), IPv6Interface("2001:2::3/64")),
    )
    ip6 = Ip6Config(dad_transmits=0, router_solicitations=0, mld=False)
    config = StackConfig(interface=interface, arp=ArpConfig(gratuitous_at_start=False), ip6=ip6)
    return StackCore(config, rng=random.Random(0))


def pair2() -> tuple[StackCore, StackCore]:
    """The kernel's side (A) and ours (B and B2), started."""
    kernel = core6("2001:2::1/64", A_MAC, ipv4="198.18.0.1", seed=1)
    ours = two_address_core()
    kernel.start(0.0)
    ours.start(0.0)
    assert ours.ip6 is not None and {B, B2} <= set(ours.ip6.addresses)
    return kernel, ours


def two_passive(kernel: StackCore, ours: StackCore) -> tuple[list[TcpConnection6], list[TcpConnection6]]:
    """From the same peer port of A to port 80 of B and of B2: (the kernel's, ours), in that order."""
    listener = ours.tcp.listen6(PORT)
    clients = [kernel.tcp.connect6(dst, PORT, 0.0, PEER_PORT) for dst in (B, B2)]
    exchange(kernel, ours, 0.0)
    servers = [listener.accept(), listener.accept()]
    assert all(isinstance(s, TcpConnection6) for s in servers)
    by_local = {s.local_ip6: s for s in servers if isinstance(s, TcpConnection6)}
    assert set(by_local) == {B, B2}
    assert all(isinstance(c, TcpConnection6) for c in clients)
    return clients, [by_local[B], by_local[B2]]


def test_two_connections_apart_only_by_our_address_coexist_with_their_own_data() -> None:
    kernel, ours = pair2()
    (c1, c2), (s1, s2) = two_passive(kernel, ours)
    assert (s1.remote_ip, s2.remote_ip) == (key6(A, B), key6(A, B2))
    assert s1.local_port == s2.local_port == PORT and s1.remote_port == s2.remote_port == PEER_PORT
    assert s1.remote_ip & ((1 << 128) - 1) == s2.remote_ip & ((1 << 128) - 1) == A
    assert ours.tcp.connections[(PORT, key6(A, B), PEER_PORT)] is s1
    assert ours.tcp.connections[(PORT, key6(A, B2), PEER_PORT)] is s2
    assert format_remote(s1.remote_ip) == format_remote(s2.remote_ip) == "[2001:2::1]"
    assert c1.state == c2.state == s1.state == s2.state == TcpState.ESTABLISHED
    c1.send(b"to B", 0.1)
    c2.send(b"to B2", 0.1)
    s1.send(b"from B", 0.1)
    s2.send(b"from B2", 0.1)
    for frame in ours.outbox:  # each answers from its own address
        header, segment = tcp6_of(frame)
        assert int(header.src) == {b"from B": B, b"from B2": B2}[segment.payload]
    exchange(kernel, ours, 0.1)
    assert (s1.receive(100, 0.1), s2.receive(100, 0.1)) == (b"to B", b"to B2")
    assert (c1.receive(100, 0.1), c2.receive(100, 0.1)) == (b"from B", b"from B2")
    assert ours.stats_tcp.dropped == {} and kernel.stats_tcp.dropped == {}


def test_the_bursts_fast_path_keys_a_segment_by_both_addresses() -> None:
    kernel, ours = pair2()
    (c1, c2), (s1, s2) = two_passive(kernel, ours)
    size = 2 * c1.mss  # two full segments each (none held back by Nagle)
    c1.send(b"1" * size, 0.1)
    c2.send(b"2" * size, 0.1)
    frames = [bytes(f) for f in kernel.take_outbox()]
    assert len(frames) == 4
    assert {int(tcp6_of(f)[0].dst) for f in frames} == {B, B2}
    taken = ours.fast_path_segments
    ours.begin_burst()
    ours.ether_input_burst(frames, 0.2)
    ours.end_burst(0.2)
    assert ours.fast_path_segments - taken == 4  # all four by the classifier's CANDIDATE6
    assert (s1.receive(5000, 0.2), s2.receive(5000, 0.2)) == (b"1" * size, b"2" * size)
    assert ours.stats_tcp.dropped == {}


def test_a_candidate6_record_names_which_usable_address_of_ours_it_is_for() -> None:
    """The classifier (C and its twin, ``classify`` checks they agree) puts the index of the
    destination among the usable addresses in the record; ``ether_input_burst`` keys by it."""
    assert USABLE == 2 and OURS[16:32] == LINK_LOCAL.to_bytes(16, "big")
    for index, dst in enumerate((B, LINK_LOCAL)):
        record = classify(segment6(dst=dst))
        assert (record[0], record[1]) == (CANDIDATE6, index)


def test_the_cores_keys_of_its_usable_addresses_follow_the_classifiers_order() -> None:
    _kernel, ours = pair2()
    assert ours.ip6 is not None
    usable = [
        int.from_bytes(ours.fast_addresses6[i : i + 16], "big") for i in range(0, 16 * ours.fast_usable6, 16)
    ]
    assert B in usable and B2 in usable
    assert ours.fast_keys6 == tuple(a << 129 | IP6_KEY for a in usable)


def test_our_active_opens_from_two_addresses_share_a_local_and_a_peer_port() -> None:
    kernel, ours = pair2()
    listener = kernel.tcp.listen6(PORT)
    first = ours.tcp.connect6(A, PORT, 0.0, PEER_PORT, local_ip=B)
    second = ours.tcp.connect6(A, PORT, 0.0, PEER_PORT, local_ip=B2)  # was EADDRINUSE
    with pytest.raises(OSError) as info:
        ours.tcp.connect6(A, PORT, 0.0, PEER_PORT, local_ip=B2)
    assert info.value.errno == errno.EADDRINUSE
    exchange(kernel, ours, 0.0)
    assert first.state == second.state == TcpState.ESTABLISHED
    accepted = [listener.accept(), listener.accept()]
    peers = {c.remote_ip & ((1 << 128) - 1): c for c in accepted if c is not None}
    assert set(peers) == {B, B2}
    first.send(b"one", 0.1)
    second.send(b"two", 0.1)
    exchange(kernel, ours, 0.1)
    assert (peers[B].receive(10, 0.1), peers[B2].receive(10, 0.1)) == (b"one", b"two")


def test_packet_too_big_about_one_lowers_only_that_ones_mss() -> None:
    kernel, ours = pair2()
    _clients, (s1, s2) = two_passive(kernel, ours)
    assert s1.mss == s2.mss == 1500 - 60 - 12
    s2.send(b"y" * 4000, 0.01)
    flight = ours.take_outbox()
    quote = bytes(flight[0][ETH : ETH + 1232])
    assert int.from_bytes(quote[8:24], "big") == B2  # the quoted packet left from B2
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B2, Icmpv6Repr.packet_too_big(1400, quote)), 0.02)
    assert s2.mss == 1400 - 60 - 12
    assert s1.mss == 1500 - 60 - 12  # the connection from B is another one
    assert ours.ip6 is not None and ours.ip6.icmp6.stats.errors_delivered == 1
    assert ours.stats_tcp.dropped == {}


def test_an_icmpv6_error_quoting_the_wrong_address_of_ours_reaches_no_connection() -> None:
    """A quote whose source is B while the connection's (port, peer, port) lives on B2 only:
    not that connection's segment, so it is not told (RFC 5927's checks start from the 4-tuple)."""
    kernel, ours = pair2()
    listener = ours.tcp.listen6(PORT)
    client = kernel.tcp.connect6(B2, PORT, 0.0, PEER_PORT)
    exchange(kernel, ours, 0.0)
    server = listener.accept()
    assert isinstance(server, TcpConnection6) and server.local_ip6 == B2
    server.send(b"z" * 3000, 0.01)
    quote = bytearray(ours.take_outbox()[0][ETH : ETH + 1232])
    quote[8:24] = B.to_bytes(16, "big")  # as if it had left from B
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, Icmpv6Repr(1, 4, 0, bytes(quote))), 0.02)
    assert server.state == TcpState.ESTABLISHED and server.error == 0
    assert ours.ip6 is not None and ours.ip6.icmp6.stats.dropped == {"error_no_socket": 1}
    assert client.state == TcpState.ESTABLISHED


def test_the_time_wait_of_one_leaves_the_other_and_answers_from_its_own_address() -> None:
    kernel, ours = pair2()
    listener = kernel.tcp.listen6(PORT)
    first = ours.tcp.connect6(A, PORT, 0.0, PEER_PORT, local_ip=B)
    second = ours.tcp.connect6(A, PORT, 0.0, PEER_PORT, local_ip=B2)
    exchange(kernel, ours, 0.0)
    peers = {c.remote_ip & ((1 << 128) - 1): c for c in (listener.accept(), listener.accept()) if c}
    first.close(0.1)  # we close first: ours goes to TIME_WAIT
    exchange(kernel, ours, 0.1)
    peers[B].close(0.1)
    (fin,) = (bytes(f) for f in kernel.take_outbox())
    assert tcp6_of(fin)[1].flags & TCP_FIN
    ours.ether_input(fin, 0.1)
    exchange(kernel, ours, 0.1)
    assert first.state == TcpState.TIME_WAIT and peers[B].state == TcpState.CLOSED
    (record,) = ours.tcp.time_wait.values()
    assert record.key == (PEER_PORT, key6(A, B), PORT)
    with pytest.raises(OSError) as info:
        ours.tcp.connect6(A, PORT, 0.1, PEER_PORT, local_ip=B)
    assert info.value.errno == errno.EADDRINUSE
    # the other one goes on, both ways
    assert second.state == TcpState.ESTABLISHED
    second.send(b"still here", 0.2)
    peers[B2].send(b"and here", 0.2)
    exchange(kernel, ours, 0.2)
    assert peers[B2].receive(100, 0.2) == b"still here" and second.receive(100, 0.2) == b"and here"
    # the FIN again: the record's ACK leaves from B, the address it is for
    ours.ether_input(fin, 0.3)
    (ack,) = ours.take_outbox()
    header, segment = tcp6_of(ack)
    assert (int(header.src), int(header.dst)) == (B, A) and segment.flags == TCP_ACK
    assert second.state == TcpState.ESTABLISHED and len(ours.tcp.time_wait) == 1
    assert ours.stats_tcp.dropped == {}


async def test_trio_sockets_tell_two_connections_apart_by_our_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Tier 3: the server's stack has two IPv6 addresses and listens on ``[::]``; one client
    port (two sockets sharing it by SO_REUSEPORT) connects to each.  The accepted sockets' names
    differ in our address only, their peers are the same, and each carries its own data."""
    a_port, b_port = memory_wire(seed=3, latency=0.001)
    ip6 = Ip6Config(dad_transmits=0, router_solicitations=0)
    client6, first6, second6 = "2001:2::1", "2001:2::2", "2001:2::3"
    async with (
        open_stack(a_port, ip=["198.18.0.1/24", f"{client6}/64"], seed=4, ip6=ip6) as a,
        open_stack(b_port, ip=["198.18.0.2/24", f"{first6}/64", f"{second6}/64"], seed=5, ip6=ip6) as b,
        trio.open_nursery() as nursery,
    ):
        with use_stack(b):
            listener = trio.socket.socket(AF_INET6, SOCK_STREAM)
            await listener.bind(("::", 8080))
            listener.listen(8)
        got: dict[tuple[object, ...], bytes] = {}
        names: list[tuple[tuple[object, ...], tuple[object, ...]]] = []

        async def handle(sock: trio.socket.SocketType) -> None:
            names.append((sock.getsockname(), sock.getpeername()))
            data = await sock.recv(100)
            got[sock.getsockname()] = data
            await sock.send(data.upper())
            sock.close()

        async def serve() -> None:
            for _ in range(2):
                sock, _peer = await listener.accept()
                nursery.start_soon(handle, sock)

        nursery.start_soon(serve)
        with trio.fail_after(30), use_stack(a):
            clients = []
            for server in (first6, second6):
                sock = trio.socket.socket(AF_INET6, SOCK_STREAM)
                sock.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1)
                await sock.bind((client6, 40000))
                await sock.connect((server, 8080))
                assert sock.getsockname() == (client6, 40000, 0, 0)
                assert sock.getpeername() == (server, 8080, 0, 0)
                clients.append(sock)
            for sock, text in zip(clients, (b"to first", b"to second"), strict=True):
                await sock.send(text)
            replies = [await sock.recv(100) for sock in clients]
            # yastack stat's view of the server's core: both ends of each, ours apart
            listed = core_snapshot(b, None, {})["tcp"]["connections"]
            ends = sorted((c["local"], c["remote"]) for c in listed)
            assert ends == [
                (f"[{first6}]:8080", f"[{client6}]:40000"),
                (f"[{second6}]:8080", f"[{client6}]:40000"),
            ]
        assert replies == [b"TO FIRST", b"TO SECOND"]
        assert got == {(first6, 8080, 0, 0): b"to first", (second6, 8080, 0, 0): b"to second"}
        assert sorted(names) == [
            ((first6, 8080, 0, 0), (client6, 40000, 0, 0)),
            ((second6, 8080, 0, 0), (client6, 40000, 0, 0)),
        ]
        for sock in clients:
            sock.close()
        listener.close()
