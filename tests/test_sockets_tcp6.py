"""AF_INET6 stream sockets over the stack through trio's own API: two dual-stack stacks on one
``memory_wire`` under a MockClock (tier 3), addresses from 2001:2::/48.

What is checked: ``trio.open_tcp_listeners`` / ``open_tcp_stream`` over IPv6 with the kernel's
4-tuple sockaddrs from ``getsockname``/``getpeername``/``accept``; a transfer both ways on a
faulty wire checked by SHA-256 and trio's ``check_half_closeable_stream``; dual-stack listeners
(IPV6_V6ONLY off by default, as on Linux: IPv4 clients seen as ``::ffff:a.b.c.d``) and
IPV6_V6ONLY=1 refusing them, beside an AF_INET listener on the same port; connecting to a
v4-mapped address; ECONNREFUSED; errors for bad addresses and for V6ONLY set too late."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from socket import AF_INET, AF_INET6, IPPROTO_IPV6, IPV6_V6ONLY, SOCK_STREAM

import pytest
import trio
import trio.testing

from trio_yastack import Stack, open_stack
from trio_yastack.nic import memory_wire
from trio_yastack.socket_api import StackSocket6, use_stack
from trio_yastack.stack import Ip6Config, TcpConnection, TcpConnection6

A_IP, B_IP = "198.18.0.2", "198.18.0.1"
A6, B6 = "2001:2::2", "2001:2::1"


@asynccontextmanager
async def two_stacks6(seed: int = 1, *, loss: float = 0.0) -> AsyncIterator[tuple[Stack, Stack]]:
    """Stacks A (the default stack of the run, the client's) and B, each with an IPv4 and an
    IPv6 address; ``loss``: a seeded share of frames lost each way."""
    a_port, b_port = memory_wire(seed=seed, loss=loss, latency=0.001)
    ip6 = Ip6Config(dad_transmits=0, router_solicitations=0)
    async with (
        open_stack(a_port, ip=[f"{A_IP}/24", f"{A6}/64"], seed=seed + 1, ip6=ip6) as a,
        open_stack(b_port, ip=[f"{B_IP}/24", f"{B6}/64"], seed=seed + 2, ip6=ip6) as b,
    ):
        yield a, b


async def test_open_tcp_listeners_and_stream_over_ipv6_with_the_kernels_sockaddrs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_stacks6() as (_a, b), trio.open_nursery() as nursery:
        with use_stack(b):
            (listener,) = await trio.open_tcp_listeners(8080, host=B6)
        sock = listener.socket
        assert isinstance(sock, StackSocket6) and (sock.family, sock.type) == (AF_INET6, SOCK_STREAM)
        assert sock.getsockname() == (B6, 8080, 0, 0)
        assert sock.getsockopt(IPPROTO_IPV6, IPV6_V6ONLY) == 1  # as trio sets it
        accepted: list[trio.SocketStream] = []

        async def serve() -> None:
            stream = await listener.accept()
            assert isinstance(stream, trio.SocketStream)
            accepted.append(stream)
            data = await stream.receive_some(100)
            await stream.send_all(data[::-1])

        nursery.start_soon(serve)
        with trio.fail_after(30):
            stream = await trio.open_tcp_stream(B6, 8080)
            assert stream.socket.family == AF_INET6
            local, peer = stream.socket.getsockname(), stream.socket.getpeername()
            assert peer == (B6, 8080, 0, 0) and local[0] == A6 and len(local) == 4
            await stream.send_all(b"hello, six")
            assert await stream.receive_some(100) == b"xis ,olleh"
            (server_side,) = accepted
            assert server_side.socket.getpeername() == local
            assert server_side.socket.getsockname() == (B6, 8080, 0, 0)
            conn = server_side.socket.connection  # type: ignore[attr-defined]  # ours: a StackSocket6
            assert isinstance(conn, TcpConnection6) and conn.mss == 1500 - 60 - 12
            await stream.aclose()
        await listener.aclose()


async def test_a_megabyte_each_way_on_a_lossy_wire_intact_by_sha256(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(32768))  # 1 MiB
    async with two_stacks6(seed=5, loss=0.02) as (_a, b), trio.open_nursery() as nursery:
        with use_stack(b):
            listener = trio.socket.socket(AF_INET6, SOCK_STREAM)
            await listener.bind(("::", 9000))
            listener.listen()

        async def serve() -> None:
            sock, _ = await listener.accept()
            got = bytearray()
            while len(got) < len(data):
                chunk = await sock.recv(65536)
                assert chunk
                got += chunk
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            view = memoryview(data[::-1])
            while view:
                view = view[await sock.send(view) :]
            sock.close()

        nursery.start_soon(serve)
        with trio.fail_after(600):
            stream = await trio.open_tcp_stream(B6, 9000)
            await stream.send_all(data)
            back = bytearray()
            while chunk := await stream.receive_some(65536):
                back += chunk
            assert hashlib.sha256(back).digest() == hashlib.sha256(data[::-1]).digest()
            await stream.aclose()
        listener.close()


async def test_trios_half_closeable_stream_check_over_ipv6(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (_a, b):
        with use_stack(b):
            (listener,) = await trio.open_tcp_listeners(0, host="::")
        port = listener.socket.getsockname()[1]

        async def make_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
            async with trio.open_nursery() as nursery:
                accepted: list[trio.SocketStream] = []

                async def take() -> None:
                    accepted.append(await listener.accept())

                nursery.start_soon(take)
                client = await trio.open_tcp_stream(B6, port)
            return client, accepted[0]

        await trio.testing.check_half_closeable_stream(make_pair, None)
        await listener.aclose()


async def test_a_dual_stack_listener_takes_ipv4_clients_as_v4_mapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_stacks6() as (_a, b):
        with use_stack(b):
            server = trio.socket.socket(AF_INET6, SOCK_STREAM)
        assert server.getsockopt(IPPROTO_IPV6, IPV6_V6ONLY) == 0  # Linux's default
        await server.bind(("::", 7000))
        server.listen()
        with trio.fail_after(30):
            client4 = trio.socket.socket(AF_INET, SOCK_STREAM)
            await client4.connect((B_IP, 7000))
            sock, address = await server.accept()
            assert address == (f"::ffff:{A_IP}", client4.getsockname()[1], 0, 0)
            assert sock.getpeername() == address and sock.getsockname() == (f"::ffff:{B_IP}", 7000, 0, 0)
            assert type(sock.connection) is TcpConnection  # type: ignore[attr-defined]  # an IPv4 connection
            await client4.send(b"four")
            assert await sock.recv(10) == b"four"
            client6 = trio.socket.socket(AF_INET6, SOCK_STREAM)
            await client6.connect((B6, 7000))
            sock6, address6 = await server.accept()
            assert address6 == (A6, client6.getsockname()[1], 0, 0)
            # a v4-mapped destination from an AF_INET6 socket is an IPv4 connection
            mapped = trio.socket.socket(AF_INET6, SOCK_STREAM)
            await mapped.connect((f"::ffff:{B_IP}", 7000))
            assert mapped.getpeername() == (f"::ffff:{B_IP}", 7000, 0, 0)
            assert type(mapped.connection) is TcpConnection  # type: ignore[attr-defined]
            _, address_m = await server.accept()
            assert address_m[0] == f"::ffff:{A_IP}"
        for s in (client4, client6, mapped, sock, sock6, server):
            s.close()


async def test_v6only_refuses_ipv4_and_lets_an_af_inet_listener_share_the_port(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_stacks6() as (_a, b):
        with use_stack(b):
            six = trio.socket.socket(AF_INET6, SOCK_STREAM)
            four = trio.socket.socket(AF_INET, SOCK_STREAM)
        six.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1)
        await six.bind(("::", 7001))
        six.listen()
        with pytest.raises(OSError) as info:
            six.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 0)
        assert info.value.errno == errno.EINVAL  # only before bind, as Linux
        client4 = trio.socket.socket(AF_INET, SOCK_STREAM)
        with trio.fail_after(30), pytest.raises(OSError) as info:
            await client4.connect((B_IP, 7001))
        assert info.value.errno == errno.ECONNREFUSED
        await four.bind(("0.0.0.0", 7001))  # the port is free for IPv4
        four.listen()
        with trio.fail_after(30):
            client4 = trio.socket.socket(AF_INET, SOCK_STREAM)
            await client4.connect((B_IP, 7001))
            client6 = trio.socket.socket(AF_INET6, SOCK_STREAM)
            await client6.connect((B6, 7001))
            _, from4 = await four.accept()
            _, from6 = await six.accept()
        assert from4 == (A_IP, client4.getsockname()[1]) and from6[0] == A6
        mapped = trio.socket.socket(AF_INET6, SOCK_STREAM)
        mapped.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1)
        with pytest.raises(OSError) as info:
            await mapped.connect((f"::ffff:{B_IP}", 7001))
        assert info.value.errno == errno.ENETUNREACH
        dual = trio.socket.socket(AF_INET6, SOCK_STREAM)
        with use_stack(b):
            dual = trio.socket.socket(AF_INET6, SOCK_STREAM)
        with pytest.raises(OSError) as info:
            await dual.bind(("::", 7001))  # dual-stack: IPv4's listener has the port
        assert info.value.errno == errno.EADDRINUSE
        for s in (six, four, client4, client6, mapped, dual):
            s.close()


async def test_refused_and_bad_addresses(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks6() as (_a, _b):
        with trio.fail_after(30):
            sock = trio.socket.socket(AF_INET6, SOCK_STREAM)
            with pytest.raises(OSError) as info:
                await sock.connect((B6, 1))
            assert info.value.errno == errno.ECONNREFUSED
            sock = trio.socket.socket(AF_INET6, SOCK_STREAM)
            with pytest.raises(OSError) as info:
                await sock.bind(("2001:2::99", 80))
            assert info.value.errno == errno.EADDRNOTAVAIL
            sock = trio.socket.socket(AF_INET6, SOCK_STREAM)
            with pytest.raises(OSError) as info:
                await sock.connect(("ff02::1", 80))
            assert info.value.errno == errno.ENETUNREACH
