"""anyio's trio backend over the stack, through anyio's own API (it sits under Starlette,
FastAPI and httpx): connect, listen, UDP, name lookups and ``SocketAttribute`` extras.

Two stacks on a memory wire under MockClock: A (198.18.0.2, the default) and B (198.18.0.1)."""

from __future__ import annotations

import errno
import socket

import anyio
import pytest
import trio
from anyio.abc import SocketAttribute
from socket_helpers import A_IP, B_IP, two_stacks

from trio_yastack.socket_api import StackSocket, create_tcp_listener, use_stack


async def test_connect_tcp_and_socket_attributes(autojump_clock: trio.testing.MockClock) -> None:
    """``anyio.connect_tcp`` by name (the stack's hosts table) reaches a listener on the other
    stack; every SocketAttribute anyio offers answers (was AttributeError: '_sock')."""
    async with two_stacks(hosts={"server.test": B_IP}) as (_a, b):
        listener = b.tcp_listen(8080)
        async with anyio.create_task_group() as group:
            accepted: list[trio.SocketStream] = []

            async def accept() -> None:
                accepted.append(await listener.accept())

            group.start_soon(accept)
            stream = await anyio.connect_tcp("server.test", 8080)
        async with stream:
            await stream.send(b"ping")
            assert await accepted[0].receive_some() == b"ping"
            await accepted[0].send_all(b"pong")
            assert await stream.receive() == b"pong"
            assert stream.extra(SocketAttribute.family) == socket.AF_INET
            local = stream.extra(SocketAttribute.local_address)
            assert local[0] == A_IP and stream.extra(SocketAttribute.local_port) == local[1]
            assert stream.extra(SocketAttribute.remote_address) == (B_IP, 8080)
            assert stream.extra(SocketAttribute.remote_port) == 8080
            assert isinstance(stream.extra(SocketAttribute.raw_socket), StackSocket)
        await accepted[0].aclose()
        await listener.aclose()


async def test_listener_on_the_stack(autojump_clock: trio.testing.MockClock) -> None:
    """``create_tcp_listener(local_host=<the stack's address>)`` (ours, anyio's signature)
    listens on the stack and serves anyio streams; a client of stack A reaches it."""
    async with two_stacks() as (_a, b):
        with use_stack(b):
            listener = await create_tcp_listener(local_host=B_IP)
        port = listener.extra(SocketAttribute.local_port)
        assert listener.extra(SocketAttribute.local_address) == (B_IP, port)

        async def echo(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                assert stream.extra(SocketAttribute.remote_address)[0] == A_IP
                await stream.send(await stream.receive())

        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, echo)
            async with await anyio.connect_tcp(B_IP, port) as client:
                await client.send(b"hello anyio")
                assert await client.receive() == b"hello anyio"
            group.cancel_scope.cancel()


async def test_anyio_own_listener_is_the_kernel_s() -> None:
    """What the README says does not work: anyio's own ``create_tcp_listener`` makes a kernel
    socket before trio sees it, so the stack's address is not the kernel's to bind."""
    async with two_stacks():
        with pytest.raises(OSError) as raised:
            await anyio.create_tcp_listener(local_host=A_IP, local_port=0)
        assert raised.value.errno == errno.EADDRNOTAVAIL


async def test_udp(autojump_clock: trio.testing.MockClock) -> None:
    """anyio's UDP sockets, connected and not, over the stacks (and to the stack's own address)."""
    async with two_stacks() as (_a, b):
        with use_stack(b):
            server = await anyio.create_udp_socket(family=socket.AF_INET, local_host=B_IP, local_port=5353)
        async with server, await anyio.create_connected_udp_socket(B_IP, 5353) as client:
            assert isinstance(client.extra(SocketAttribute.raw_socket), StackSocket)
            await client.send(b"query")
            data, (host, port) = await server.receive()
            assert data == b"query" and host == A_IP
            assert port == client.extra(SocketAttribute.local_port)
            await server.sendto(b"answer", host, port)
            assert await client.receive() == b"answer"
            with use_stack(b):  # B to its own address: the IP layer's loopback queue
                async with await anyio.create_connected_udp_socket(B_IP, 5353) as own:
                    await own.send(b"self")
                    assert (await server.receive())[0] == b"self"
