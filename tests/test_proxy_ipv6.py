"""The proxy over IPv6 on the stack (tier 3): listeners on ``[::]`` (dual-stack) and on an IPv6
address, clusters whose endpoints are IPv6 ``socket_address``es, for ``tcp_proxy`` and for HTTP
routing; IPv4 clients reach the ``[::]`` listener too.  Two stacks with an IPv4 and an IPv6
address each on one ``memory_wire``, under a MockClock: the proxy on A, backends and clients on B.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing
from proxy_helpers import (
    BackendApp,
    Client,
    bootstrap,
    cluster,
    hcm,
    http_listener,
    running_backend,
    running_proxy,
    tcp_listener,
)

from trio_yastack import Stack, open_stack
from trio_yastack.l7.network import Network, is_loopback
from trio_yastack.nic import memory_wire
from trio_yastack.stack import Ip6Config

A_IP, B_IP = "198.18.0.2", "198.18.0.1"
A6, B6 = "2001:2::2", "2001:2::1"


@asynccontextmanager
async def two_stacks6() -> AsyncIterator[tuple[Stack, Stack]]:
    a_port, b_port = memory_wire(seed=1, latency=0.0005)
    ip6 = Ip6Config(dad_transmits=0, router_solicitations=0)
    async with (
        open_stack(a_port, ip=[f"{A_IP}/24", f"{A6}/64"], seed=2, ip6=ip6) as a,
        open_stack(b_port, ip=[f"{B_IP}/24", f"{B6}/64"], seed=3, ip6=ip6) as b,
    ):
        yield a, b


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data.upper())


@asynccontextmanager
async def echo_server6(stack: Stack, port: int) -> AsyncIterator[None]:
    """An upper-casing echo server on ``[::]:port`` of ``stack`` (an AF_INET6 socket)."""
    sock = stack.socket(socket.AF_INET6)
    await sock.bind(("::", port))
    sock.listen(16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _echo, [trio.SocketListener(sock)])
        yield
        nursery.cancel_scope.cancel()


async def _connect(stack: Stack, host: str, port: int) -> trio.SocketStream:
    sock = stack.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    await sock.connect((host, port))
    return trio.SocketStream(sock)


def test_loopback_of_both_families_stays_on_the_kernel() -> None:
    assert is_loopback("::1") and is_loopback("127.0.0.1") and not is_loopback(A6)
    network = Network(None)
    assert network.describe(A6) == "kernel"


async def test_tcp_proxy_on_ipv6_any_to_an_ipv6_endpoint_for_both_families(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_stacks6() as (a, b), echo_server6(b, 7000):
        config = bootstrap([tcp_listener("echo", address="::")], [cluster("echo", [7000], address=B6)])
        async with running_proxy(config, a):
            with trio.fail_after(30):
                for host in (A6, A_IP):
                    stream = await _connect(b, host, 10000)
                    await stream.send_all(b"over " + host.encode())
                    assert await stream.receive_some(100) == b"OVER " + host.upper().encode()
                    await stream.aclose()


async def test_http_routing_on_an_ipv6_listener_to_an_ipv6_backend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_stacks6() as (a, b):
        app = BackendApp("six")
        async with running_backend(app, b, 8000, bind=[f"[{B6}]:8000"]):
            config = bootstrap([http_listener(hcm(None), address=A6)], [cluster("app", [8000], address=B6)])
            async with running_proxy(config, a):
                with trio.fail_after(30):
                    stream = await _connect(b, A6, 10000)
                    client = Client(stream)
                    response = await client.request("GET", "/hello")
                    assert response.status == 200 and b'"six"' in response.body
                    await stream.aclose()
