"""The stack's resolver chain (``socket_api/_resolver.py``): hosts table, DNS over the stack's
own UDP (TTL cache, retries, TCP when truncated), the system's resolver only when allowed.

Two kinds of peer: a DNS server written here with dnspython on a second stack of a memory wire,
under trio's MockClock (TTLs, timeouts and retries in simulated time, every answer chosen), and
the kernel-side ``dnsmasq`` of Debian in a private network namespace, asked through a TAP."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trio
from socket_helpers import B_IP, two_stacks
from tap_helpers import KERNEL_ADDRESS, requires_netns, stack_on_tap

from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.socket_api import ResolverConfig, current_resolver, use_stack

Answer = Callable[[dns.message.Message], dns.message.Message | None]


def a_records(*addresses: str, ttl: int = 60) -> Answer:
    """An answer with ``addresses`` as A records of the question's name."""

    def answer(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        name = query.question[0].name
        response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", "A", list(addresses)))
        return response

    return answer


async def dns_server(stack: object, port: int, answer: Answer, queries: list[str]) -> None:
    """A UDP (and, on the same port, TCP) DNS server on ``stack``: ``answer(query)`` decides
    (``None``: stay silent); every question asked is appended to ``queries``."""
    with use_stack(stack):  # type: ignore[type-var]  # a trio_yastack.Stack, typed loosely here
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = trio.socket.socket()
        await udp.bind((B_IP, port))
        await tcp.bind((B_IP, port))
        tcp.listen(4)

        async def serve_tcp() -> None:
            while True:
                conn, _ = await tcp.accept()
                with conn:
                    stream = trio.SocketStream(conn)
                    head = await stream.receive_some(2)
                    body = await stream.receive_some(struct.unpack("!H", head)[0])
                    query = dns.message.from_wire(body)
                    queries.append(f"tcp {query.question[0].name}")
                    response = answer(query)
                    assert response is not None
                    wire = response.to_wire()
                    await stream.send_all(struct.pack("!H", len(wire)) + wire)

        with udp, tcp:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_tcp)
                while True:
                    data, peer = await udp.recvfrom(4096)
                    query = dns.message.from_wire(data)
                    queries.append(f"udp {query.question[0].name}")
                    response = answer(query)
                    if response is not None:
                        try:
                            wire = response.to_wire(max_size=512)
                        except dns.exception.TooBig:  # RFC 1035 4.2.1: truncated, TC set
                            truncated = dns.message.make_response(query)
                            truncated.flags |= dns.flags.TC
                            wire = truncated.to_wire()
                        await udp.sendto(wire, peer)


async def test_dns_over_the_stack_cached_by_ttl(autojump_clock: trio.testing.MockClock) -> None:
    """A name not in the hosts table is asked of the nameserver over the stack's UDP; the
    answer is cached for its TTL (no second query within it, a new one after it); hosts win."""
    queries: list[str] = []
    async with two_stacks(hosts={"fixed.test": "198.18.0.50"}) as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(dns_server, b, 53, a_records("198.18.0.7", ttl=30), queries)
        await trio.testing.wait_all_tasks_blocked()
        current_resolver().add_nameservers([B_IP])
        found = await trio.socket.getaddrinfo("web.test", 80, type=socket.SOCK_STREAM)
        assert [entry[4] for entry in found] == [("198.18.0.7", 80)]
        assert queries == ["udp web.test."]
        await trio.sleep(29)
        await trio.socket.getaddrinfo("WEB.test.", "http")
        assert queries == ["udp web.test."]  # cached, whatever the case and the trailing dot
        assert current_resolver().stats.cache_hits == 1
        await trio.sleep(2)
        await trio.socket.getaddrinfo("web.test", 80)
        assert queries == ["udp web.test."] * 2  # the TTL ran out
        assert (await trio.socket.getaddrinfo("fixed.test", 80))[0][4] == ("198.18.0.50", 80)
        assert len(queries) == 2
        nursery.cancel_scope.cancel()
    assert a.address != b.address


async def test_truncated_answer_is_asked_again_over_tcp(autojump_clock: trio.testing.MockClock) -> None:
    """An answer too big for 512 bytes comes back truncated (TC): the same query goes over
    TCP, and every address arrives (RFC 7766)."""
    many = [f"198.18.1.{n}" for n in range(1, 61)]
    queries: list[str] = []
    async with two_stacks() as (_a, b), trio.open_nursery() as nursery:
        nursery.start_soon(dns_server, b, 53, a_records(*many), queries)
        await trio.testing.wait_all_tasks_blocked()
        current_resolver().add_nameservers([B_IP])
        found = await trio.socket.getaddrinfo("big.test", 443, type=socket.SOCK_STREAM)
        assert sorted(entry[4][0] for entry in found) == sorted(many)
        assert queries == ["udp big.test.", "tcp big.test."]
        assert current_resolver().stats.tcp_fallbacks == 1
        nursery.cancel_scope.cancel()


async def test_silent_server_is_retried_then_the_next_one_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that never answers costs one timeout per round; the next server answers; a
    name nobody knows is NXDOMAIN (gaierror EAI_NONAME), remembered for the negative TTL."""
    silent: list[str] = []
    answering: list[str] = []
    async with two_stacks() as (_a, b), trio.open_nursery() as nursery:

        def nx_or_address(query: dns.message.Message) -> dns.message.Message | None:
            if str(query.question[0].name) == "nope.test.":
                response = dns.message.make_response(query)
                response.set_rcode(dns.rcode.NXDOMAIN)
                return response
            return a_records("198.18.0.8")(query)

        nursery.start_soon(dns_server, b, 5300, lambda query: None, silent)
        nursery.start_soon(dns_server, b, 53, nx_or_address, answering)
        await trio.testing.wait_all_tasks_blocked()
        resolver = current_resolver()
        resolver.config = ResolverConfig(timeout=1.0, attempts=2)
        resolver.add_nameservers([f"{B_IP}:5300", B_IP])
        start = trio.current_time()
        found = await trio.socket.getaddrinfo("svc.test", 80)
        assert found[0][4] == ("198.18.0.8", 80)
        assert trio.current_time() - start == pytest.approx(1.0)  # one timeout, then the answer
        assert silent == ["udp svc.test."] and answering == ["udp svc.test."]
        assert resolver.stats.timeouts == 1
        with pytest.raises(socket.gaierror) as raised:
            await trio.socket.getaddrinfo("nope.test", 80)
        assert raised.value.errno == socket.EAI_NONAME
        with pytest.raises(socket.gaierror):
            await trio.socket.getaddrinfo("nope.test", 80)
        assert answering.count("udp nope.test.") == 1  # the second came from the negative cache
        nursery.cancel_scope.cancel()


async def test_no_server_answers_is_eai_again(autojump_clock: trio.testing.MockClock) -> None:
    """Every server silent for every attempt: gaierror EAI_AGAIN after attempts x timeout,
    never a hang, and nothing cached."""
    silent: list[str] = []
    async with two_stacks() as (_a, b), trio.open_nursery() as nursery:
        nursery.start_soon(dns_server, b, 53, lambda query: None, silent)
        await trio.testing.wait_all_tasks_blocked()
        resolver = current_resolver()
        resolver.config = ResolverConfig(timeout=0.5, attempts=3)
        resolver.add_nameservers([B_IP])
        start = trio.current_time()
        with pytest.raises(socket.gaierror) as raised:
            await trio.socket.getaddrinfo("gone.test", 80)
        assert raised.value.errno == socket.EAI_AGAIN
        assert trio.current_time() - start == pytest.approx(1.5)
        assert silent == ["udp gone.test."] * 3
        nursery.cancel_scope.cancel()


async def test_names_without_nameservers_and_the_system_resolver_only_when_allowed() -> None:
    """No nameservers: a name outside the hosts table is EAI_NONAME, not a DNS query, and
    never the system's resolver unless the user allowed it; localhost is loopback."""
    async with two_stacks():
        with pytest.raises(socket.gaierror) as raised:
            await trio.socket.getaddrinfo("example.invalid", 80)
        assert raised.value.errno == socket.EAI_NONAME
        assert current_resolver().stats.system_lookups == 0
        assert (await trio.socket.getaddrinfo("localhost", 80))[0][4] == ("127.0.0.1", 80)
        current_resolver().system_resolver = True
        with pytest.raises(socket.gaierror):  # the system does not know it either
            await trio.socket.getaddrinfo("example.invalid", 80)
        assert current_resolver().stats.system_lookups == 1


@requires_netns
async def test_dnsmasq_in_the_namespace(netns: NetworkNamespace) -> None:
    """The kernel-side dnsmasq answers the stack through the TAP: a host record, a name with
    more addresses than fit in 512 bytes (truncated over UDP, whole over TCP), NXDOMAIN."""
    many = [f"198.18.2.{n}" for n in range(1, 51)]
    async with stack_on_tap(netns, nameservers=[KERNEL_ADDRESS]):
        server = netns.popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file=",
                f"--listen-address={KERNEL_ADDRESS}",
                "--bind-dynamic",
                "--host-record=web.test,198.18.0.7",
                *(f"--host-record=big.test,{ip}" for ip in many),
                "--local=/test/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        resolver = current_resolver()
        resolver.config = ResolverConfig(timeout=1.0, attempts=10)  # dnsmasq may still be starting
        found = await trio.socket.getaddrinfo("web.test", 80, type=socket.SOCK_STREAM)
        assert server.poll() is None
        assert [entry[4] for entry in found] == [("198.18.0.7", 80)]
        found = await trio.socket.getaddrinfo("big.test", 80, type=socket.SOCK_STREAM)
        assert sorted(entry[4][0] for entry in found) == sorted(many)
        assert resolver.stats.tcp_fallbacks == 1
        with pytest.raises(socket.gaierror) as raised:
            await trio.socket.getaddrinfo("missing.test", 80)
        assert raised.value.errno == socket.EAI_NONAME
