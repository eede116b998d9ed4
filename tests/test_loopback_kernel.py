"""Loopback is the kernel's (YAStack's HOST path): a stack socket whose bind or destination is
127.0.0.0/8 becomes a kernel socket at that call, with the kernel's addresses, options and
errors; with ``kernel_unroutable=True`` so does a destination the stack has no route to.

Was a bug (fixed): ``connect(("127.0.0.1", 9000))`` from an app behind ``yastack serve``
raised ENETUNREACH from the stack's route, so a handler calling a local database failed (issue 21).
The kernel's loopback of the test's own namespace serves as the local service; the unroutable
case runs in a namespace the test makes."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
from socket_helpers import A_IP, two_stacks
from tap_helpers import requires_netns

from trio_yastack import open_stack
from trio_yastack.nic import memory_wire
from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.socket_api import StackSocket


def kernel_listener() -> tuple[socket.socket, int]:
    """A kernel TCP listener on 127.0.0.1 (the local service), and its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    return listener, listener.getsockname()[1]


async def test_connect_to_loopback_reaches_the_kernel() -> None:
    """trio code over the stack reaches a kernel service on 127.0.0.1: ``open_tcp_stream``
    and a plain ``trio.socket`` both; addresses are the kernel's, the stack sees no segment."""
    raw, port = kernel_listener()
    async with two_stacks() as (a, _b):
        with raw:
            service = trio.socket.from_stdlib_socket(raw)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                accepted, peer = await service.accept()
                with accepted:
                    assert isinstance(stream.socket, StackSocket)  # the same object the app holds
                    assert stream.socket.getsockname() == peer and peer[0] == "127.0.0.1"
                    assert stream.socket.getpeername() == ("127.0.0.1", port)
                    assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                    await stream.send_all(b"GET")
                    assert await accepted.recv(10) == b"GET"
                    await accepted.send(b"OK")
                    assert await stream.receive_some() == b"OK"
        assert a.core.stats_tcp.active_opens == 0  # not one SYN from the stack


async def test_kernel_errors_are_the_kernel_s() -> None:
    """Nothing listening on a loopback port: the kernel's ECONNREFUSED, in trio's words."""
    raw, port = kernel_listener()
    raw.close()  # the port is free now
    async with two_stacks():
        sock = trio.socket.socket()
        with sock, pytest.raises(OSError) as raised:
            await sock.connect(("127.0.0.1", port))
        assert raised.value.errno == errno.ECONNREFUSED


async def test_bind_to_loopback_listens_on_the_kernel() -> None:
    """A stack socket bound to 127.0.0.1 listens on the kernel's loopback: a kernel client
    (another process's, here a stdlib socket) connects to it."""
    async with two_stacks():
        listener = trio.socket.socket()
        with listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # replayed on the kernel's
            await listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            host, port = listener.getsockname()
            assert host == "127.0.0.1"
            assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
            client = trio.socket.from_stdlib_socket(socket.socket())
            with client:
                await client.connect((host, port))
                accepted, _ = await listener.accept()
                with accepted:
                    await client.send(b"x")
                    assert await accepted.recv(1) == b"x"


async def test_udp_to_loopback() -> None:
    """A UDP stack socket's first sendto to loopback makes it the kernel's; the reply comes back."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    async with two_stacks():
        with raw:
            service = trio.socket.from_stdlib_socket(raw)
            client = trio.socket.socket(type=socket.SOCK_DGRAM)
            with client:
                await client.sendto(b"q", raw.getsockname())
                data, address = await service.recvfrom(10)
                assert data == b"q" and address[1] == client.getsockname()[1]  # the kernel's 0.0.0.0:port
                await service.sendto(b"a", address)
                assert await client.recvfrom(10) == (b"a", raw.getsockname())


async def test_unroutable_stays_unreachable_without_kernel_unroutable() -> None:
    """No route on the stack (no gateway, off-link) and no ``kernel_unroutable``: ENETUNREACH as
    before, the socket stays the stack's."""
    async with two_stacks():
        sock = trio.socket.socket()
        with sock, pytest.raises(OSError) as raised:
            await sock.connect(("198.19.7.1", 80))
        assert raised.value.errno == errno.ENETUNREACH
        assert type(sock) is StackSocket


@requires_netns
async def test_unroutable_goes_to_the_kernel_with_kernel_unroutable(netns: NetworkNamespace) -> None:
    """With ``kernel_unroutable=True`` a destination the stack cannot route goes to the kernel,
    which can (here: an address on the namespace's loopback device)."""
    netns.run(["ip", "addr", "add", "198.19.7.1/32", "dev", "lo"], check=True)
    with netns.entered():
        raw = socket.socket()
        raw.bind(("198.19.7.1", 0))
    raw.listen(1)
    raw.setblocking(False)
    port_a, _port_b = memory_wire()
    with raw:
        async with open_stack(port_a, ip=f"{A_IP}/24", kernel_unroutable=True):
            service = trio.socket.from_stdlib_socket(raw)
            sock = trio.socket.socket()
            with sock:
                with netns.entered():  # the kernel socket is made in the namespace, as a server's would be
                    await sock.connect(("198.19.7.1", raw.getsockname()[1]))
                accepted, peer = await service.accept()
                with accepted:
                    assert sock.getsockname() == peer and peer[0] == "198.19.7.1"
