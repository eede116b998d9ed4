"""AF_INET6 datagram sockets over the stack through trio's own API (``trio.socket.socket``):
two dual-stack stacks on one ``memory_wire`` under a MockClock, addresses from 2001:2::/48.

What is checked: the kernel's AF_INET6 sockaddrs (4-tuples from ``getsockname``,
``getpeername``, ``recvfrom``, ``recvmsg``), request/response and connected sockets (a
fragmented datagram too), a port bound once per family, ICMPv6 port unreachable as
ECONNREFUSED on a connected socket, IPV6_V6ONLY (on, 0 refused, v4-mapped unreachable), ``::1``
handed to the kernel, the factory's clear EAFNOSUPPORT for a stack without IPv6 (AF_INET6
stream sockets: ``test_sockets_tcp6.py``); and names: the hosts table and DNS (a server on
stack B) answering AAAA for AF_INET6 and AF_UNSPEC, in RFC 6724's default order.  The kernel
as the peer: ``test_tap_ipv6.py``.
"""

from __future__ import annotations

import errno
import socket as stdlib_socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from socket import AF_INET, AF_INET6, IPPROTO_IPV6, IPV6_V6ONLY, MSG_PEEK, SOCK_DGRAM, SOCK_STREAM

import dns.message
import dns.rdatatype
import dns.rrset
import pytest
import trio
import trio.testing

from trio_yastack import Stack, open_stack
from trio_yastack.nic import memory_wire
from trio_yastack.socket_api import StackSocket, StackSocket6, current_resolver, use_stack
from trio_yastack.stack import Ip6Config

A_IP, B_IP = "198.18.0.2", "198.18.0.1"
A6, B6 = "2001:2::2", "2001:2::1"


@asynccontextmanager
async def two_stacks6(seed: int = 1) -> AsyncIterator[tuple[Stack, Stack]]:
    """Stacks A (the default stack of the run) and B, each with an IPv4 and an IPv6 address."""
    a_port, b_port = memory_wire(seed=seed)
    ip6 = Ip6Config(dad_transmits=0, router_solicitations=0)
    async with (
        open_stack(a_port, ip=[f"{A_IP}/24", f"{A6}/64"], seed=seed + 1, ip6=ip6) as a,
        open_stack(b_port, ip=[f"{B_IP}/24", f"{B6}/64"], seed=seed + 2, ip6=ip6) as b,
    ):
        yield a, b


def sockets6(a: Stack, b: Stack) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """``(client on A, server on B)``, both made by trio's factory."""
    with use_stack(a):
        client = trio.socket.socket(AF_INET6, SOCK_DGRAM)
    with use_stack(b):
        server = trio.socket.socket(AF_INET6, SOCK_DGRAM)
    return client, server


async def test_request_response_with_the_kernels_sockaddrs(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (a, b):
        client, server = sockets6(a, b)
        assert isinstance(client, StackSocket6) and isinstance(server, StackSocket6)
        assert (server.family, server.type) == (AF_INET6, SOCK_DGRAM)
        with server, client, trio.fail_after(60):
            assert server.getsockname() == ("::", 0, 0, 0)
            await server.bind(("::", 9000))
            assert server.getsockname() == ("::", 9000, 0, 0)

            async def serve() -> None:
                for _ in range(3):
                    data, address = await server.recvfrom(65535)
                    await server.sendto(data.upper(), address)  # a 4-tuple, as received

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                for word in (b"ping", b"pong", b"x" * 3000):  # the last one is fragmented
                    assert await client.sendto(word, (B6, 9000)) == len(word)
                    data, address = await client.recvfrom(65535)
                    assert data == word.upper()
                    assert address == (B6, 9000, 0, 0)
            port = client.getsockname()[1]
            assert port != 0 and client.getsockname() == ("::", port, 0, 0)  # sendto bound it
        assert a.statistics().udp.sent == 3 and b.statistics().udp.delivered == 3
        assert b.core.ip6 is not None and b.core.ip6.stats.reassembled >= 1


async def test_connected_sockets_send_recv_and_recvmsg(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (a, b):
        client, server = sockets6(a, b)
        with server, client, trio.fail_after(60):
            await server.bind((B6, 9001, 0, 0))
            await client.connect((B6, 9001))
            assert client.getpeername() == (B6, 9001, 0, 0)
            local = client.getsockname()
            assert local[0] == A6 and local[1] != 0  # a connected socket has a source address
            await client.send(b"0123456789")
            assert await server.recv(4, MSG_PEEK) == b"0123"
            data, ancdata, flags, address = await server.recvmsg(4)
            assert (data, ancdata, address) == (b"0123", [], local)
            assert flags != 0  # MSG_TRUNC: the datagram did not fit
            with pytest.raises(OSError) as info:
                await server.sendto(b"x", (B6, 0))
            assert info.value.errno == errno.EINVAL
            await server.sendto(b"back", local)
            assert await client.recv(100) == b"back"
            buffer = bytearray(8)
            await server.sendto(b"into", local[:2])  # a 2-tuple is an AF_INET6 address too
            assert await client.recvfrom_into(buffer) == (4, (B6, 9001, 0, 0))
            assert bytes(buffer[:4]) == b"into"


async def test_a_port_is_bound_once_per_family(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (_a, b):
        with use_stack(b):
            four = trio.socket.socket(AF_INET, SOCK_DGRAM)
            six = trio.socket.socket(AF_INET6, SOCK_DGRAM)
            again = trio.socket.socket(AF_INET6, SOCK_DGRAM)
        assert type(four) is StackSocket
        with four, six, again:
            await four.bind(("", 53))
            await six.bind(("", 53))
            with pytest.raises(OSError) as info:
                await again.bind((B6, 53))
            assert info.value.errno == errno.EADDRINUSE
            with pytest.raises(OSError) as info:
                await again.bind(("2001:2::99", 0))
            assert info.value.errno == errno.EADDRNOTAVAIL


async def test_port_unreachable_reaches_a_connected_socket(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (a, b):
        client, _server = sockets6(a, b)
        _server.close()
        with client, trio.fail_after(60):
            await client.connect((B6, 4444))
            await client.send(b"anyone?")
            with pytest.raises(ConnectionRefusedError):
                await client.recv(100)
        assert b.statistics().udp.dropped["no_socket"] == 1


async def test_v6only_is_on_and_cannot_be_turned_off(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (a, _b):
        with use_stack(a):
            sock = trio.socket.socket(AF_INET6, SOCK_DGRAM)
        with sock:
            assert sock.getsockopt(IPPROTO_IPV6, IPV6_V6ONLY) == 1
            sock.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1)  # what trio's listeners set
            with pytest.raises(OSError) as info:
                sock.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 0)
            assert info.value.errno == errno.EOPNOTSUPP and "IPv6-only" in str(info.value)
            assert sock.getsockopt(IPPROTO_IPV6, IPV6_V6ONLY) == 1
            with pytest.raises(OSError) as info:
                await sock.sendto(b"x", ("::ffff:198.18.0.1", 9))
            assert info.value.errno == errno.ENETUNREACH
            with pytest.raises(OSError) as info:
                await sock.bind(("::ffff:198.18.0.2", 9))
            assert info.value.errno == errno.EADDRNOTAVAIL


async def test_bad_addresses_are_clear_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (a, _b):
        with use_stack(a):
            sock = trio.socket.socket(AF_INET6, SOCK_DGRAM)
        with sock:
            with pytest.raises(TypeError):
                await sock.sendto(b"x", (B6,))
            with pytest.raises(OverflowError):
                await sock.sendto(b"x", (B6, 70000))
            with pytest.raises(OverflowError):
                await sock.sendto(b"x", (B6, 9, 1 << 20, 0))
            with pytest.raises(OSError):
                await sock.sendto(b"x", ("2001:2::zz", 9))  # not a number: a name that does not resolve
            await sock.sendto(b"x", (f"{B6}%0", 9))  # a scope suffix is accepted (one interface)


async def test_stream_sockets_are_served_and_a_stack_without_ipv6_refuses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_stacks6() as (a, _b):
        with use_stack(a):
            assert isinstance(trio.socket.socket(AF_INET6, SOCK_STREAM), StackSocket6)
        assert isinstance(a.socket(AF_INET6, SOCK_STREAM), StackSocket6)
        assert isinstance(a.socket(AF_INET6, SOCK_DGRAM), StackSocket6)
    port, _ = memory_wire(seed=3)
    async with open_stack(port, ip=f"{A_IP}/24") as v4only:
        assert v4only.core.ip6 is None
        with pytest.raises(OSError) as info:
            trio.socket.socket(AF_INET6, SOCK_DGRAM)
        assert info.value.errno == errno.EAFNOSUPPORT and "IPv6 address" in str(info.value)


async def test_loopback_six_goes_to_the_kernel() -> None:
    """``::1`` is the kernel's, as 127.0.0.0/8 is (a real clock: the kernel answers)."""
    async with two_stacks6() as (a, _b):
        with use_stack(a):
            sock = trio.socket.socket(AF_INET6, SOCK_DGRAM)
        with sock, stdlib_socket.socket(AF_INET6, SOCK_DGRAM) as peer, trio.fail_after(10):
            await sock.bind(("::1", 0))
            address = sock.getsockname()
            assert address[0] == "::1" and address[1] != 0  # the kernel's own answer
            peer.sendto(b"kernel", address[:2])
            data, source = await sock.recvfrom(100)
            assert (data, source[:2]) == (b"kernel", ("::1", peer.getsockname()[1]))
        assert a.statistics().udp.received == 0


# -- names: the hosts table and DNS answer AAAA -----------------------------------------------------
def dns_answer(records: dict[tuple[str, str], list[str]], queries: list[str]) -> Callable[[bytes], bytes]:
    """A DNS server's logic: ``records[(name, "A"|"AAAA")]``, else an empty NOERROR answer;
    each question is appended to ``queries`` as ``"AAAA web.test."``."""

    def answer(data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        question = query.question[0]
        rdtype = dns.rdatatype.to_text(question.rdtype)
        queries.append(f"{rdtype} {question.name}")
        response = dns.message.make_response(query)
        addresses = records.get((question.name.to_text(omit_final_dot=True), rdtype))
        if addresses:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, addresses))
        return response.to_wire()

    return answer


async def serve_dns(stack: Stack, answer: Callable[[bytes], bytes]) -> None:
    with use_stack(stack):
        sock = trio.socket.socket(AF_INET, SOCK_DGRAM)
    with sock:
        await sock.bind((B_IP, 53))
        while True:
            data, peer = await sock.recvfrom(4096)
            await sock.sendto(answer(data), peer)


async def test_the_hosts_table_answers_aaaa_in_rfc6724s_order(autojump_clock: trio.testing.MockClock) -> None:
    hosts = {
        "both.test": ["198.18.0.1", B6],  # global IPv6: precedence 40, before IPv4's 35
        "teredo.test": ("2001:0:5ef5:79fb::1", "198.18.0.1"),  # 2001::/32, Teredo: 5, after IPv4
        "six.test": B6,
    }
    a_port, b_port = memory_wire(seed=1)
    ip6 = Ip6Config(dad_transmits=0, router_solicitations=0)
    async with (
        open_stack(a_port, ip=[f"{A_IP}/24", f"{A6}/64"], seed=2, ip6=ip6, hosts=hosts),
        open_stack(b_port, ip=[f"{B_IP}/24", f"{B6}/64"], seed=3, ip6=ip6) as b,
    ):
        found = await trio.socket.getaddrinfo("both.test", 80, type=SOCK_DGRAM)
        assert [(entry[0], entry[4]) for entry in found] == [
            (AF_INET6, (B6, 80, 0, 0)),
            (AF_INET, ("198.18.0.1", 80)),
        ]
        found = await trio.socket.getaddrinfo("TEREDO.test.", 80, type=SOCK_DGRAM)
        assert [entry[4][0] for entry in found] == ["198.18.0.1", "2001:0:5ef5:79fb::1"]
        found = await trio.socket.getaddrinfo("both.test", "domain", AF_INET6, SOCK_DGRAM)
        assert [(entry[0], entry[4]) for entry in found] == [(AF_INET6, (B6, 53, 0, 0))]
        with pytest.raises(stdlib_socket.gaierror):
            await trio.socket.getaddrinfo("six.test", 80, AF_INET)  # no IPv4 address known
        found = await trio.socket.getaddrinfo("localhost", 80, AF_INET6, SOCK_DGRAM)
        assert found[0][4] == ("::1", 80, 0, 0)
        assert await trio.socket.getnameinfo((B6, 53, 0, 0), 0) == ("both.test", "domain")  # the first name
        assert await trio.socket.getnameinfo(("2001:0002::1", 9), stdlib_socket.NI_NUMERICHOST) == (
            B6,
            "discard",
        )
        with pytest.raises(stdlib_socket.gaierror):
            await trio.socket.getnameinfo(("2001:2::99", 9), stdlib_socket.NI_NAMEREQD)
        # a name in sendto goes through the resolver to the AF_INET6 socket
        with use_stack(b):
            server = trio.socket.socket(AF_INET6, SOCK_DGRAM)
        client = trio.socket.socket(AF_INET6, SOCK_DGRAM)
        with server, client, trio.fail_after(60):
            await server.bind(("", 7000))
            await client.sendto(b"by name", ("six.test", 7000))
            assert (await server.recvfrom(100))[0] == b"by name"


async def test_a_stack_without_ipv6_orders_ipv6_last(autojump_clock: trio.testing.MockClock) -> None:
    port, _ = memory_wire(seed=1)
    async with open_stack(port, ip=f"{A_IP}/24", hosts={"global.test": ["2001:db8::1", "198.18.0.1"]}):
        found = await trio.socket.getaddrinfo("global.test", 80, type=SOCK_DGRAM)
        assert [entry[4][0] for entry in found] == ["198.18.0.1", "2001:db8::1"]  # RFC 6724 rule 1


async def test_dns_asks_aaaa_for_af_inet6_and_af_unspec(autojump_clock: trio.testing.MockClock) -> None:
    queries: list[str] = []
    records = {("web.test", "A"): ["198.18.0.7"], ("web.test", "AAAA"): ["2001:2::7", "2001:db8::7"]}
    records[("v4.test", "A")] = ["198.18.0.8"]
    async with two_stacks6() as (_a, b), trio.open_nursery() as nursery:
        nursery.start_soon(serve_dns, b, dns_answer(records, queries))
        await trio.testing.wait_all_tasks_blocked()
        current_resolver().add_nameservers([B_IP])
        found = await trio.socket.getaddrinfo("web.test", 80, AF_INET6, SOCK_DGRAM)
        # (both of precedence 40: in the answer's order, which dnspython's rrset does not keep)
        assert sorted(entry[4] for entry in found) == [("2001:2::7", 80, 0, 0), ("2001:db8::7", 80, 0, 0)]
        assert queries == ["AAAA web.test."]
        found = await trio.socket.getaddrinfo("web.test", 80, type=SOCK_DGRAM)  # AF_UNSPEC
        addresses = [entry[4][0] for entry in found]
        assert sorted(addresses[:2]) == ["2001:2::7", "2001:db8::7"] and addresses[2] == "198.18.0.7"
        assert queries == ["AAAA web.test.", "A web.test."]  # the AAAA answer came from the cache
        found = await trio.socket.getaddrinfo("v4.test", 80, type=SOCK_DGRAM)
        assert [entry[4] for entry in found] == [("198.18.0.8", 80)]  # no AAAA: IPv4 alone
        found = await trio.socket.getaddrinfo("v4.test", 80, type=SOCK_DGRAM)
        assert [entry[4] for entry in found] == [("198.18.0.8", 80)]  # the cached "no AAAA" is no NXDOMAIN
        with pytest.raises(stdlib_socket.gaierror) as info:
            await trio.socket.getaddrinfo("v4.test", 80, AF_INET6)
        assert info.value.errno == stdlib_socket.EAI_NODATA and "IPv6" in str(info.value)
        nursery.cancel_scope.cancel()
