"""Tier 4 for IPv6: the Linux kernel as the peer, through a TAP in a private namespace with IPv6
enabled there (2001:2::/48 and link-local addresses only): ``ping -6`` both ways (fragmented too),
Neighbor Discovery both ways with DAD on our side, UDP both ways with port unreachable, and a
Packet Too Big from the kernel routing towards a 1280-byte link, which lowers our path MTU;
trio's own AF_INET6 datagram sockets on the stack both ways with the kernel's socket module;
dnsmasq answering the resolver's AAAA queries.

The kernel side is 2001:2::1/64 on ``yas0`` (added ``nodad``; ``accept_dad=0`` and no router
solicitations, so its link-local address is usable at once); the stack is 2001:2::2/64 beside
198.18.0.2/24.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from ipaddress import IPv6Address

import pytest
import trio
from tap_helpers import requires_netns

from trio_yastack import Stack, open_stack
from trio_yastack.nic.netns import NetworkNamespace, tap_in_netns
from trio_yastack.socket_api import ResolverConfig, StackSocket6, current_resolver
from trio_yastack.socket_api._waiter import Waiter
from trio_yastack.stack import Ip6Config, UdpPcb

pytestmark = requires_netns

KERNEL6 = IPv6Address("2001:2::1")
STACK6 = IPv6Address("2001:2::2")
FAR_NET_KERNEL = "2001:2:0:1::1/64"
FAR_HOST = IPv6Address("2001:2:0:1::2")
TIMEOUT = 20.0


@pytest.fixture
def netns6() -> Iterator[NetworkNamespace]:
    with NetworkNamespace() as namespace:
        for knob in ("all", "default"):
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.disable_ipv6=0"], check=True)
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.accept_dad=0"], check=True)
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.router_solicitations=0"], check=True)
        yield namespace


@asynccontextmanager
async def stack6(namespace: NetworkNamespace, *, dad: int = 0, **ip6: object) -> AsyncIterator[Stack]:
    with tap_in_netns(namespace, disable_ipv6=False) as port:
        namespace.run(["ip", "-6", "addr", "add", f"{KERNEL6}/64", "dev", "yas0", "nodad"], check=True)
        config = Ip6Config(dad_transmits=dad, **ip6)  # type: ignore[arg-type]
        async with open_stack(port, ip=["198.18.0.2/24", f"{STACK6}/64"], ip6=config) as stack:
            yield stack


async def kernel_run(
    namespace: NetworkNamespace, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """A kernel-side command to completion, in a thread while the stack keeps running."""
    return await trio.to_thread.run_sync(lambda: namespace.run(list(args), timeout=timeout))


async def wait_until(condition: object, what: str, waiter: Waiter | None = None) -> None:
    """Wait (bounded) for ``condition()``: on ``waiter`` when the stack wakes one, else re-checking
    every 20 ms (the address state has no waiter of its own)."""
    with trio.fail_after(TIMEOUT):
        while not condition():  # type: ignore[operator]
            if waiter is not None:
                await waiter.wait()
            else:
                await trio.sleep(0.02)
    assert condition(), what  # type: ignore[operator]


async def test_dad_then_the_kernel_pings_us_and_both_learn_the_other(netns6: NetworkNamespace) -> None:
    async with stack6(netns6, dad=1) as stack:
        ip6 = stack.core.ip6
        assert ip6 is not None and ip6.addresses[int(STACK6)].tentative
        await wait_until(lambda: ip6.usable(int(STACK6)), "DAD never finished")
        assert ip6.nd6.stats.dad_succeeded == 2  # the link-local address and 2001:2::2
        done = await kernel_run(netns6, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "3", str(STACK6))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "3 received" in done.stdout
        neigh = await kernel_run(netns6, "ip", "-6", "neigh", "show", str(STACK6), "dev", "yas0")
        assert str(stack.mac) in neigh.stdout, neigh.stdout  # the kernel learned our MAC from our NA
        assert ip6.nd6.lookup(int(KERNEL6)) is not None  # and we the kernel's, from its NS
        assert ip6.icmp6.stats.echo_replies_sent == 3


async def test_fragmented_pings_both_ways(netns6: NetworkNamespace) -> None:
    async with stack6(netns6) as stack:
        done = await kernel_run(
            netns6, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "3", "-s", "3000", str(STACK6)
        )
        assert done.returncode == 0 and "2 received" in done.stdout, done.stdout + done.stderr
        ip6 = stack.core.ip6
        assert ip6 is not None
        assert ip6.stats.reassembled == 2 and ip6.stats.fragmented == 2
        endpoint = ip6.icmp6.echo_open()
        waiter = endpoint.waiter = Waiter()
        payload = bytes(range(256)) * 12
        ip6.icmp6.send_echo_request(endpoint, int(KERNEL6), 1, payload, trio.current_time())
        stack.kick()
        await wait_until(lambda: endpoint.replies, "no reply to a 3072-byte echo", waiter)
        src, seq, data, _at = endpoint.replies.popleft()
        assert (src, seq, data) == (int(KERNEL6), 1, payload)
        assert ip6.stats.reassembled == 3


async def test_we_ping_the_kernels_link_local_address(netns6: NetworkNamespace) -> None:
    async with stack6(netns6) as stack:
        shown = await kernel_run(netns6, "ip", "-6", "-o", "addr", "show", "dev", "yas0", "scope", "link")
        link_local = IPv6Address(shown.stdout.split("inet6 ")[1].split("/")[0])
        ip6 = stack.core.ip6
        assert ip6 is not None
        endpoint = ip6.icmp6.echo_open()
        waiter = endpoint.waiter = Waiter()
        ip6.icmp6.send_echo_request(endpoint, int(link_local), 7, b"link-local", trio.current_time())
        stack.kick()
        await wait_until(lambda: endpoint.replies, "no reply from the kernel's link-local address", waiter)
        assert endpoint.replies[0][:3] == (int(link_local), 7, b"link-local")


UDP_PEER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("2001:2::1", 9000))
s.settimeout(15)
data, peer = s.recvfrom(65535)
s.sendto(data.upper(), peer)
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect(("2001:2::2", 9))
c.send(b"anyone?")
try:
    c.recv(100)
    print("no error")
except ConnectionRefusedError:
    print("refused", len(data))
"""


async def test_udp_both_ways_and_port_unreachable(netns6: NetworkNamespace) -> None:
    async with stack6(netns6) as stack:
        peer = netns6.popen([sys.executable, "-c", UDP_PEER], stdout=subprocess.PIPE, text=True)
        pcb = UdpPcb(v6=True)
        stack.core.udp.bind(pcb, 0, 0)
        waiter = pcb.waiter = Waiter()
        message = b"hello over ipv6 " * 200  # 3200 bytes: fragmented both ways
        with trio.fail_after(TIMEOUT):
            while not pcb.queue:  # the peer may not be bound yet: ask again until it answers
                stack.core.udp.udp6_output(pcb, message, int(KERNEL6), 9000, trio.current_time())
                stack.kick()
                with trio.move_on_after(0.5):
                    await waiter.wait()
        data, (src, sport) = pcb.take()  # type: ignore[misc]
        assert (data, src, sport) == (message.upper(), int(KERNEL6), 9000)
        out, _ = await trio.to_thread.run_sync(lambda: peer.communicate(timeout=30))
        assert out.split() == ["refused", str(len(message))]
        assert stack.core.statistics().udp.dropped["no_socket"] >= 1


RECEIVER = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("2001:2:0:1::2", 9000))
s.settimeout(15)
print("ready", flush=True)
data, peer = s.recvfrom(65535)
print(len(data), peer[0], flush=True)
"""


async def test_packet_too_big_from_a_router_lowers_our_path_mtu(netns6: NetworkNamespace) -> None:
    """The kernel routes 2001:2:0:1::/64 onto a veth of MTU 1280 towards a second namespace: our
    1400-byte datagram is refused with a Packet Too Big, and the next one goes in fragments."""
    with NetworkNamespace() as far:
        far.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0"], check=True)
        far.run(["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=0"], check=True)
        far.run(["sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0"], check=True)
        netns6.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"], check=True)
        netns6.run(["ip", "link", "add", "yasr0", "mtu", "1280", "type", "veth", "peer", "name", "yasr1",
                    "mtu", "1280", "netns", far.name], check=True)  # fmt: skip
        netns6.run(["ip", "-6", "addr", "add", FAR_NET_KERNEL, "dev", "yasr0", "nodad"], check=True)
        netns6.run(["ip", "link", "set", "yasr0", "up"], check=True)
        far.run(["ip", "-6", "addr", "add", f"{FAR_HOST}/64", "dev", "yasr1", "nodad"], check=True)
        far.run(["ip", "link", "set", "yasr1", "up"], check=True)
        far.run(["ip", "-6", "route", "add", "default", "via", "2001:2:0:1::1"], check=True)
        receiver = far.popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        async with stack6(netns6, gateway=KERNEL6) as stack:
            ip6 = stack.core.ip6
            assert ip6 is not None
            pcb = UdpPcb(v6=True)
            stack.core.udp.bind(pcb, 0, 0)
            with trio.fail_after(TIMEOUT):
                while ip6.path_mtu(int(FAR_HOST), trio.current_time()) == 1500:
                    stack.core.udp.udp6_output(pcb, b"x" * 1400, int(FAR_HOST), 9000, trio.current_time())
                    stack.kick()
                    await trio.sleep(0.1)  # the PTB comes back within a poll or two (bounded above)
            assert ip6.path_mtu(int(FAR_HOST), trio.current_time()) == 1280
            stack.core.udp.udp6_output(
                pcb, b"x" * 1400, int(FAR_HOST), 9000, trio.current_time()
            )  # in fragments
            stack.kick()
            assert ip6.icmp6.stats.packet_too_big_received >= 1
            out, _ = await trio.to_thread.run_sync(lambda: receiver.communicate(timeout=30))
            assert out.split()[0] == "1400", out


SOCKET_PEER = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("2001:2::1", 9001))
s.settimeout(15)
print("ready", flush=True)
data, peer = s.recvfrom(65535)
s.sendto(data.upper(), peer)
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
c.bind(("2001:2::1", 9003))
c.sendto(b"from the kernel", ("2001:2::2", 9002))
print(peer[0], peer[1], len(data), flush=True)
"""


async def test_trio_ipv6_datagram_sockets_both_ways_with_the_kernel(netns6: NetworkNamespace) -> None:
    """trio's own API (``trio.socket.socket(AF_INET6, SOCK_DGRAM)``) on the stack, the kernel's
    socket module on the other end: each sends first once, addresses are the kernel's 4-tuples."""
    async with stack6(netns6) as stack:
        server = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        client = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        assert isinstance(server, StackSocket6) and isinstance(client, StackSocket6)
        peer = netns6.popen([sys.executable, "-c", SOCKET_PEER], stdout=subprocess.PIPE, text=True)
        try:
            with server, client, trio.fail_after(TIMEOUT):
                await server.bind(("::", 9002))
                assert peer.stdout is not None
                assert (await trio.to_thread.run_sync(peer.stdout.readline)).strip() == "ready"
                message = b"over trio's ipv6 socket " * 100  # 2500 bytes: fragmented both ways
                await client.sendto(message, (str(KERNEL6), 9001))
                data, address = await client.recvfrom(65535)
                assert (data, address) == (message.upper(), (str(KERNEL6), 9001, 0, 0))
                data, address = await server.recvfrom(65535)
                assert (data, address) == (b"from the kernel", (str(KERNEL6), 9003, 0, 0))
                out, _ = await trio.to_thread.run_sync(lambda: peer.communicate(timeout=30))
                # the kernel saw our source address and the port sendto bound
                assert out.split() == [str(STACK6), str(client.getsockname()[1]), str(len(message))]
        finally:
            if peer.poll() is None:
                peer.kill()
                peer.wait()
        assert stack.core.ip6 is not None and stack.core.ip6.stats.reassembled >= 1


async def test_dnsmasq_answers_aaaa_to_the_resolver(netns6: NetworkNamespace) -> None:
    """The kernel-side dnsmasq (asked over the stack's IPv4) answers AAAA: AF_INET6 gets the IPv6
    address, AF_UNSPEC both in RFC 6724's order (global IPv6 first), and a name without AAAA
    records is EAI_NODATA for AF_INET6 but still resolves for AF_UNSPEC."""
    async with stack6(netns6):
        server = netns6.popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file=",
                "--listen-address=198.18.0.1",
                "--bind-dynamic",
                "--host-record=web.test,198.18.0.7,2001:2::7",
                "--host-record=v4.test,198.18.0.8",
                "--local=/test/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            resolver = current_resolver()
            resolver.config = ResolverConfig(timeout=1.0, attempts=10)  # dnsmasq may still be starting
            resolver.add_nameservers(["198.18.0.1"])
            found = await trio.socket.getaddrinfo("web.test", 80, socket.AF_INET6, socket.SOCK_DGRAM)
            assert server.poll() is None
            assert [entry[4] for entry in found] == [("2001:2::7", 80, 0, 0)]
            found = await trio.socket.getaddrinfo("web.test", 80, type=socket.SOCK_DGRAM)
            assert [entry[4][0] for entry in found] == ["2001:2::7", "198.18.0.7"]
            found = await trio.socket.getaddrinfo("v4.test", 80, type=socket.SOCK_DGRAM)
            assert [entry[4] for entry in found] == [("198.18.0.8", 80)]
            with pytest.raises(socket.gaierror) as raised:
                await trio.socket.getaddrinfo("v4.test", 80, socket.AF_INET6)
            assert raised.value.errno == socket.EAI_NODATA
            with pytest.raises(socket.gaierror) as raised:
                await trio.socket.getaddrinfo("missing.test", 80, socket.AF_INET6)
            assert raised.value.errno == socket.EAI_NONAME
        finally:
            server.terminate()
            server.wait(timeout=10)
