"""trio sockets over the user-space stack (issue 4): ``open_stack`` installs trio's socket factory
and hostname resolver, so ``trio.SocketStream``, ``serve_tcp``, ``open_tcp_stream``, TLS and UDP
run unmodified over two stacks joined by a ``memory_wire``.

Stack A (198.18.0.2) is opened first and is every task's default; ``use_stack(b)`` puts a task
(and the tasks it starts) on stack B (198.18.0.1).  Every test runs under trio's MockClock
(``autojump_clock``): timeouts are simulated seconds; the only waiting for the wire is
``wait_all_tasks_blocked`` (the wire has no latency, so every frame is handled before all tasks
block).  No test sends traffic through the kernel.
"""

from __future__ import annotations

import errno
import socket as stdlib_socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Address
from itertools import count
from pathlib import Path

import pytest
import trio
import trio.testing
from socket_helpers import (
    A_IP,
    B_IP,
    FilterPort,
    clog,
    make_tls_material,
    read_to_eof,
    socket_pair,
    stream_pair,
    tcp_dport,
    two_stacks,
)

import trio_yastack
from trio_yastack import Stack, open_stack, use_stack
from trio_yastack.nic import memory_wire
from trio_yastack.socket_api import StackSocket

AF_INET, AF_INET6 = stdlib_socket.AF_INET, stdlib_socket.AF_INET6
SOCK_STREAM, SOCK_DGRAM = stdlib_socket.SOCK_STREAM, stdlib_socket.SOCK_DGRAM
SOL_SOCKET, IPPROTO_TCP = stdlib_socket.SOL_SOCKET, stdlib_socket.IPPROTO_TCP

#: simulated seconds any one test may take before it counts as hung (free under autojump; each
#: clogged pair waits out 121 s of quiet twice, and check_half_closeable_stream makes many)
LIMIT = 36000


def errors_in(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (groups, ``__cause__``): ``open_tcp_stream`` raises a
    bare ``OSError`` caused by a group holding each attempt's error."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def errnos_in(exc: BaseException) -> set[int]:
    return {e.errno for e in errors_in(exc) if isinstance(e, OSError) and e.errno is not None}


async def echo_handler(stream: trio.abc.Stream) -> None:
    """Echo everything back; answer the client's EOF with ours."""
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    finally:
        await stream.aclose()


async def echo_request(stream: trio.abc.HalfCloseableStream, payload: bytes) -> bytes:
    """Send ``payload`` and EOF, return everything the peer sends back up to its EOF."""
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        nursery.start_soon(send)
        reply = await read_to_eof(stream)
    await stream.aclose()
    return reply


# -- 1. trio's own conformance check for half-closeable streams -------------------------------


def makers(
    a: Stack, b: Stack, first_port: int
) -> tuple[
    Callable[[], Awaitable[tuple[trio.SocketStream, trio.SocketStream]]],
    Callable[[], Awaitable[tuple[trio.SocketStream, trio.SocketStream]]],
]:
    """``stream_maker`` (what ``Stack.tcp_connect`` and ``Stack.tcp_listen``'s ``accept`` return,
    default buffers) and ``clogged_stream_maker`` (sockets with 4 KiB SO_SNDBUF/SO_RCVBUF set
    before connecting, both directions filled until nothing more is accepted) for
    check_half_closeable_stream: both are trio's SocketStream over a StackSocket."""
    ports = count(first_port)

    async def stream_maker() -> tuple[trio.SocketStream, trio.SocketStream]:
        port = next(ports)
        listener = b.tcp_listen(port)
        client = await a.tcp_connect(B_IP, port)
        server = await listener.accept()
        await listener.aclose()
        return client, server

    async def clogged_stream_maker() -> tuple[trio.SocketStream, trio.SocketStream]:
        left, right = await stream_pair(a, b, next(ports), buffer=4096)
        assert await clog(left) > 0
        assert await clog(right) > 0
        return left, right

    return stream_maker, clogged_stream_maker


@pytest.mark.parametrize("loss", [0.0, 0.05], ids=["clean", "loss5"])
async def test_check_half_closeable_stream(autojump_clock: trio.testing.MockClock, loss: float) -> None:
    async with two_stacks(seed=11, loss=loss) as (a, b):
        stream_maker, clogged_stream_maker = makers(a, b, 20000)
        with trio.fail_after(LIMIT):
            await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)
        if loss:
            assert a.statistics().tcp.retransmitted_segments + b.statistics().tcp.retransmitted_segments > 0


async def test_tcp_connect_and_listen_are_trio_streams_over_stack_sockets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One implementation of trio's stream semantics: ``tcp_connect`` and ``tcp_listen`` give
    trio's own ``SocketStream``/``SocketListener`` over ``StackSocket``s of the stack they were
    called on (not the task's default), and ``socket.connection`` is the stack's connection."""
    async with two_stacks() as (a, b):
        listener = b.tcp_listen(7000)
        assert isinstance(listener, trio.SocketListener) and isinstance(listener.socket, StackSocket)
        client = await a.tcp_connect(B_IP, 7000)
        server = await listener.accept()
        for stream, stack in ((client, a), (server, b)):
            assert isinstance(stream, trio.SocketStream) and isinstance(stream.socket, StackSocket)
            conn = stream.socket.connection
            assert conn is not None and conn in stack.core.tcp.connections.values()
        assert client.socket.getpeername() == (B_IP, 7000) == server.socket.getsockname()
        with pytest.RaisesGroup(trio.BusyResourceError):
            async with trio.open_nursery() as nursery:  # two receivers: trio's contract, as for
                nursery.start_soon(server.receive_some)  # a kernel socket (the first one waits
                nursery.start_soon(server.receive_some)  # on, cancelled by the nursery)
        await listener.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()
        await client.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some()


async def test_tcp_connect_failure_leaves_nothing_behind(autojump_clock: trio.testing.MockClock) -> None:
    """A refused ``tcp_connect`` raises the kernel's OSError and closes its socket: no
    connection and no bound port stay in the stack."""
    async with two_stacks() as (a, _b):
        with pytest.raises(OSError) as info:
            await a.tcp_connect(B_IP, 9, local_port=40000)
        assert info.value.errno == errno.ECONNREFUSED
        assert a.core.tcp.connections == {} and not a.core.tcp.bound_ports


async def test_clogged_pair_really_blocks(autojump_clock: trio.testing.MockClock) -> None:
    """The clogged maker's premise: with 4 KiB buffers a few KiB fill the pipe, and a blocked
    ``send_all`` completes only once the peer reads."""
    async with two_stacks() as (a, b):
        left, right = await stream_pair(a, b, 20500, buffer=4096)
        sent = await clog(left)
        assert 4096 <= sent <= 64 * 1024  # both buffers (and no more than a kernel would hold) filled
        done = trio.Event()

        async def blocked_send() -> None:
            await left.send_all(b"tail")
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_send)
            with trio.move_on_after(30):
                await done.wait()
            assert not done.is_set()  # 30 simulated seconds and the peer has not read: still blocked
            received = 0
            while received < sent + 4:
                received += len(await right.receive_some(65536))
        assert done.is_set() and received == sent + 4
        await left.aclose()
        await right.aclose()


# -- 2. unmodified trio programs ----------------------------------------------------------------


async def test_serve_tcp_and_open_tcp_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        with use_stack(b):
            listeners = await nursery.start(trio.serve_tcp, echo_handler, 7)
        assert listeners and all(isinstance(lst.socket, StackSocket) for lst in listeners)
        assert {lst.socket.getsockname()[1] for lst in listeners} == {7}
        with use_stack(a), trio.fail_after(60):
            stream = await trio.open_tcp_stream(B_IP, 7)
            assert isinstance(stream.socket, StackSocket)
            assert stream.socket.getpeername() == (B_IP, 7)
            assert stream.socket.getsockname()[0] == A_IP
            payload = bytes(range(256)) * 400  # 100 KiB: dozens of segments each way
            assert await echo_request(stream, payload) == payload
        assert b.statistics().tcp.passive_opens >= 1 and a.statistics().tcp.active_opens >= 1
        assert b.statistics().tcp.bytes_received >= len(payload)
        nursery.cancel_scope.cancel()


async def test_default_stack_is_the_first_opened(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        assert trio_yastack.current_stack() is a
        sock = trio.socket.socket()
        try:
            assert isinstance(sock, StackSocket)
            assert sock.family == AF_INET and sock.type == SOCK_STREAM
        finally:
            sock.close()
        seen: list[Stack] = []

        async def child() -> None:
            seen.append(trio_yastack.current_stack())

        with use_stack(b):
            assert trio_yastack.current_stack() is b
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)  # a child started under use_stack(b) is on B too
        assert trio_yastack.current_stack() is a
        assert seen == [b]


async def test_tls_over_tcp(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    ca_pem, cert_pem, key_pem = make_tls_material(["server.test"], [B_IP])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_context = ssl.create_default_context(cadata=ca_pem.decode())

    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        with use_stack(b):
            tcp_listeners = await trio.open_tcp_listeners(443)
            assert all(isinstance(lst.socket, StackSocket) for lst in tcp_listeners)
            ssl_listeners = [trio.SSLListener(lst, server_context) for lst in tcp_listeners]
            await nursery.start(trio.serve_listeners, echo_handler, ssl_listeners)
        with use_stack(a), trio.fail_after(60):
            stream = await trio.open_ssl_over_tcp_stream(B_IP, 443, ssl_context=client_context)
            assert isinstance(stream.transport_stream, trio.SocketStream)
            assert isinstance(stream.transport_stream.socket, StackSocket)
            await stream.do_handshake()
            assert stream.version() in ("TLSv1.2", "TLSv1.3")
            payload = b"secret over the user-space stack " * 1000
            await stream.send_all(payload)
            echoed = b""
            while len(echoed) < len(payload):
                echoed += await stream.receive_some(65536)
            assert echoed == payload
            await stream.aclose()
        nursery.cancel_scope.cancel()

    # The same CA does not vouch for another name: verification really happens.
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        with use_stack(b):
            ssl_listeners = [
                trio.SSLListener(lst, server_context) for lst in await trio.open_tcp_listeners(443)
            ]
            await nursery.start(trio.serve_listeners, echo_handler, ssl_listeners)
        with use_stack(a), trio.fail_after(60):
            tcp = await trio.open_tcp_stream(B_IP, 443)
            wrong = trio.SSLStream(tcp, client_context, server_hostname="other.test")
            with pytest.raises(trio.BrokenResourceError) as info:
                await wrong.do_handshake()
            assert any(isinstance(e, ssl.SSLCertVerificationError) for e in errors_in(info.value))
            await trio.aclose_forcefully(wrong)
        nursery.cancel_scope.cancel()


async def test_udp_request_response(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        with use_stack(b):
            server = trio.socket.socket(AF_INET, SOCK_DGRAM)
        with use_stack(a):
            client = trio.socket.socket(AF_INET, SOCK_DGRAM)
        assert isinstance(server, StackSocket) and isinstance(client, StackSocket)
        assert server.type == SOCK_DGRAM and server.family == AF_INET
        with server, client, trio.fail_after(60):
            await server.bind(("0.0.0.0", 9000))
            assert server.getsockname() == ("0.0.0.0", 9000)

            async def serve() -> None:
                for _ in range(3):
                    data, address = await server.recvfrom(2048)
                    await server.sendto(data.upper(), address)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                for word in (b"ping", b"pong", b"x" * 1400):
                    assert await client.sendto(word, (B_IP, 9000)) == len(word)
                    data, address = await client.recvfrom(2048)
                    assert data == word.upper()
                    assert address == (B_IP, 9000)
            client_port = client.getsockname()[1]
            assert client_port != 0  # sendto bound it to an ephemeral port
        assert a.statistics().udp.sent >= 3 and b.statistics().udp.delivered >= 3


async def test_udp_recv_into_and_truncation(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        server, client = b.socket(AF_INET, SOCK_DGRAM), a.socket(AF_INET, SOCK_DGRAM)
        with server, client, trio.fail_after(60):
            await server.bind((B_IP, 9001))
            await client.connect((B_IP, 9001))
            assert client.getpeername() == (B_IP, 9001)
            await client.send(b"0123456789")
            buffer = bytearray(4)
            n, address = await server.recvfrom_into(buffer)
            assert (n, bytes(buffer)) == (4, b"0123")  # a datagram's excess is discarded, as the kernel does
            assert address == (A_IP, client.getsockname()[1])
            await client.send(b"next")
            assert await server.recv(100) == b"next"  # the truncated tail did not linger
            assert client.getsockname() == address


async def test_resolver_uses_hosts_table(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        two_stacks(hosts={"server.test": B_IP, "Other.Test.": "198.18.0.77"}) as (a, b),
        trio.open_nursery() as nursery,
    ):
        with use_stack(b):
            await nursery.start(trio.serve_tcp, echo_handler, 7)
        with trio.fail_after(60):
            infos = await trio.socket.getaddrinfo("server.test", 7, type=SOCK_STREAM)
            assert infos and {info[4] for info in infos} == {(B_IP, 7)}
            assert {info[0] for info in infos} == {AF_INET}
            # names are case-insensitive and a trailing dot is the same name
            other = await trio.socket.getaddrinfo("other.test", 80, type=SOCK_STREAM)
            assert {info[4] for info in other} == {("198.18.0.77", 80)}
            # numeric hosts need no table
            numeric = await trio.socket.getaddrinfo("198.18.0.9", 80, type=SOCK_STREAM)
            assert {info[4] for info in numeric} == {("198.18.0.9", 80)}
            with pytest.raises(stdlib_socket.gaierror):
                await trio.socket.getaddrinfo("nowhere.test", 7)
            with use_stack(a):
                stream = await trio.open_tcp_stream("server.test", 7)
                assert stream.socket.getpeername() == (B_IP, 7)
                assert await echo_request(stream, b"hello by name") == b"hello by name"
                with pytest.raises(OSError) as info:
                    await trio.open_tcp_stream("nowhere.test", 7)
                assert any(isinstance(e, stdlib_socket.gaierror) for e in errors_in(info.value))
        nursery.cancel_scope.cancel()


# -- 3. many connections through one listener ------------------------------------------------


async def test_thousand_concurrent_connections(autojump_clock: trio.testing.MockClock) -> None:
    n = 1000
    replies: dict[int, bytes] = {}
    local_ports: set[int] = set()
    async with two_stacks() as (a, b), trio.open_nursery() as server_nursery:
        with use_stack(b):
            listeners = await server_nursery.start(trio.serve_tcp, echo_handler, 8080)
        assert len(listeners) == 1

        async def client(i: int) -> None:
            stream = await trio.open_tcp_stream(B_IP, 8080)
            local_ports.add(stream.socket.getsockname()[1])
            replies[i] = await echo_request(stream, f"message {i} ".encode() * (1 + i % 7))

        with use_stack(a), trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(client, i)
        assert len(replies) == n
        for i in range(n):
            assert replies[i] == f"message {i} ".encode() * (1 + i % 7)
        assert len(local_ports) == n
        assert b.statistics().tcp.connections_accepted == n
        assert a.statistics().tcp.connections_dropped == 0
        server_nursery.cancel_scope.cancel()


# -- 4. the listen backlog, and closing a listener with connections waiting ----------------


async def test_listen_backlog_drops_syn_until_accept(autojump_clock: trio.testing.MockClock) -> None:
    """As Linux (tcp_conn_request): a SYN to a listener whose accept queue is full is dropped,
    not refused; the client's SYN retransmissions (1 s, then 2 s, 4 s ... apart) get in once
    accept() made room, and with no room the connect fails with ETIMEDOUT after the retries."""
    backlog = 2
    async with two_stacks() as (a, b):
        listener = b.socket()
        await listener.bind((B_IP, 6000))
        listener.listen(backlog)
        connected_at: dict[int, float] = {}
        failed: dict[int, tuple[float, BaseException]] = {}
        clients: list[trio.socket.SocketType] = []

        async def connect(i: int) -> None:
            sock = a.socket()
            clients.append(sock)
            try:
                await sock.connect((B_IP, 6000))
            except OSError as exc:
                failed[i] = (trio.current_time(), exc)
            else:
                connected_at[i] = trio.current_time()

        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                t0 = trio.current_time()
                # Connect one at a time until one is held back (the queue is full).
                i = 0
                while True:
                    nursery.start_soon(connect, i)
                    await trio.testing.wait_all_tasks_blocked()
                    if i not in connected_at:
                        break
                    i += 1
                    assert i <= backlog + 1, "the listener queued more than backlog + 1 connections"
                queued, held = i, i
                assert backlog <= queued <= backlog + 1  # Linux queues backlog + 1
                assert not failed  # dropped, not refused
                assert all(at == t0 for at in connected_at.values())

                # The held client's SYNs at t0 and t0+1 were dropped; accept() at t0+2 makes room
                # and its retransmission at t0+3 gets in.
                await trio.sleep_until(t0 + 2)
                assert held not in connected_at and not failed
                first, _ = await listener.accept()
                await trio.testing.wait_all_tasks_blocked()
                assert held not in connected_at
                await trio.sleep_until(t0 + 3)
                await trio.testing.wait_all_tasks_blocked()
                assert connected_at.get(held) == pytest.approx(t0 + 3)

                # The queue is full again: a new client is held, and with nobody accepting it
                # gives up after its six retransmissions (Linux: 1+2+4+8+16+32 s, then 64 s: 127 s;
                # an RTO capped at 60 s makes it 123 s).
                t1 = trio.current_time()
                nursery.start_soon(connect, held + 1)
            assert held + 1 not in connected_at
            when, exc = failed[held + 1]
            assert isinstance(exc, TimeoutError) and exc.errno == errno.ETIMEDOUT
            assert 120 <= when - t1 <= 128
        first.close()
        listener.close()
        for sock in clients:
            sock.close()


async def test_closing_listener_resets_unaccepted_connections(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        listener = b.socket()
        await listener.bind((B_IP, 6001))
        listener.listen(8)
        clients = [a.socket() for _ in range(3)]
        with trio.fail_after(60):
            for sock in clients:
                await sock.connect((B_IP, 6001))  # established: the handshake needs no accept()
            accepted, address = await listener.accept()
            assert address == clients[0].getsockname()
            listener.close()
            assert listener.fileno() == -1
            await trio.testing.wait_all_tasks_blocked()
            # The two connections still in the accept queue were reset ...
            with pytest.raises(ConnectionResetError) as info:
                await clients[1].recv(100)
            assert info.value.errno == errno.ECONNRESET
            stream = trio.SocketStream(clients[2])
            with pytest.raises(trio.BrokenResourceError) as broken:
                await stream.receive_some(100)
            assert errno.ECONNRESET in errnos_in(broken.value)
            # ... while the accepted one lives on.
            await clients[0].send(b"still here")
            assert await accepted.recv(100) == b"still here"
            await accepted.send(b"yes")
            assert await clients[0].recv(100) == b"yes"
            # A new connect to the closed port is refused.
            late = a.socket()
            with pytest.raises(ConnectionRefusedError):
                await late.connect((B_IP, 6001))
            late.close()
        accepted.close()
        for sock in clients:
            sock.close()


async def test_accept_nowait_drains_the_queue_without_waiting(autojump_clock: trio.testing.MockClock) -> None:
    """``accept_nowait`` is a non-blocking ``accept``: the queued connections in order, each with
    its peer's address, then EAGAIN (``BlockingIOError``) without a scheduler pass;
    ``wait_acceptable`` returns once a connection is queued, and closing the socket wakes it
    (``accept_nowait`` then says EBADF).  A socket that is not listening says EINVAL."""
    async with two_stacks() as (a, b):
        listener = b.socket()
        await listener.bind((B_IP, 6003))
        with pytest.raises(OSError) as info:
            listener.accept_nowait()
        assert info.value.errno == errno.EINVAL
        listener.listen(8)
        with pytest.raises(BlockingIOError) as blocking:
            listener.accept_nowait()
        assert blocking.value.errno == errno.EAGAIN
        clients = [a.socket() for _ in range(3)]
        accepted: list[StackSocket] = []
        with trio.fail_after(60):
            for sock in clients:
                await sock.connect((B_IP, 6003))
            await listener.wait_acceptable()  # something queued: returns (after a checkpoint)
            for sock in clients:
                conn, address = listener.accept_nowait()
                accepted.append(conn)
                assert address == sock.getsockname() == conn.getpeername()
                assert conn.getsockname() == (B_IP, 6003)
            with pytest.raises(BlockingIOError):
                listener.accept_nowait()
            await clients[1].send(b"second")
            assert await accepted[1].recv(100) == b"second"

            async def close_soon() -> None:
                await trio.testing.wait_all_tasks_blocked()
                listener.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_soon)
                await listener.wait_acceptable()  # parked until the close
            with pytest.raises(OSError) as closed:
                listener.accept_nowait()
            assert closed.value.errno == errno.EBADF
        for sock in (*accepted, *clients):
            sock.close()


async def test_send_nowait_takes_what_fits_without_a_scheduler_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``send_nowait`` is a non-blocking ``send``: what the send buffer takes, EAGAIN
    (``BlockingIOError``) when it takes nothing, and no scheduler pass (no other task runs
    during it); EPIPE after ``shutdown(SHUT_WR)``, ENOTCONN on an unconnected socket, EBADF once
    closed.  The bytes arrive in order with what ``send`` wrote."""
    async with two_stacks() as (a, b):
        with pytest.raises(OSError) as unconnected:
            a.socket().send_nowait(b"x")
        assert unconnected.value.errno == errno.ENOTCONN
        client, server = await socket_pair(a, b, 6004, buffer=4096)
        assert isinstance(client, StackSocket)
        ran: list[str] = []

        async def other() -> None:
            ran.append("other")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                assert client.send_nowait(b"first,") == 6
                assert client.send_nowait(memoryview(b"second")) == 6
                assert client.send_nowait(b"") == 0
                assert ran == []  # no checkpoint: the other task has not run
            taken = 12
            with pytest.raises(BlockingIOError) as full:
                while True:  # the peer does not read: the send buffer fills (bounded by its size)
                    taken += client.send_nowait(b"y" * 1000)
                    assert taken <= 4096 + 12
            assert full.value.errno == errno.EAGAIN
            client.shutdown(stdlib_socket.SHUT_WR)
            with pytest.raises(OSError) as shut:
                client.send_nowait(b"z")
            assert shut.value.errno == errno.EPIPE
            received = await read_to_eof(trio.SocketStream(server))
        assert received == b"first,second" + b"y" * (taken - 12)
        client.close()
        with pytest.raises(OSError) as closed:
            client.send_nowait(b"z")
        assert closed.value.errno == errno.EBADF
        server.close()


async def test_recv_nowait_takes_what_is_there_without_a_scheduler_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``recv_nowait`` is a non-blocking ``recv``: EAGAIN (``BlockingIOError``) before data,
    the bytes at hand (up to ``bufsize``) without a scheduler pass, ``b""`` at the end of the
    stream; ENOTCONN on an unconnected socket, EBADF once closed."""
    async with two_stacks() as (a, b):
        with pytest.raises(OSError) as unconnected:
            a.socket().recv_nowait(10)
        assert unconnected.value.errno == errno.ENOTCONN
        client, server = await socket_pair(a, b, 6006)
        assert isinstance(server, StackSocket)
        with trio.fail_after(60):
            with pytest.raises(BlockingIOError) as nothing:
                server.recv_nowait(10)
            assert nothing.value.errno == errno.EAGAIN
            await client.send(b"hello, world")
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_no_checkpoints():
                assert server.recv_nowait(5) == b"hello"
                assert server.recv_nowait(100) == b", world"
            with pytest.raises(ValueError):
                server.recv_nowait(-1)
            client.shutdown(stdlib_socket.SHUT_WR)
            await trio.testing.wait_all_tasks_blocked()
            assert server.recv_nowait(10) == b""
        server.close()
        with pytest.raises(OSError) as closed:
            server.recv_nowait(10)
        assert closed.value.errno == errno.EBADF
        client.close()


async def test_recv_that_waited_returns_without_another_scheduler_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``recv`` parked until data came returns in the step that wakes it, as trio's own recv
    (its park was the call's scheduler pass); one that finds data at once still makes one pass.
    Was: a second pass after every wake-up (one per keep-alive request)."""
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 6005)
        got: list[bytes] = []
        steps = 0
        receiver: trio.lowlevel.Task | None = None

        class Steps(trio.abc.Instrument):
            def before_task_step(self, task: trio.lowlevel.Task) -> None:
                nonlocal steps
                if task is receiver:
                    steps += 1

        async def receive() -> None:
            nonlocal receiver
            receiver = trio.lowlevel.current_task()
            got.append(await server.recv(100))
            await trio.sleep_forever()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()  # parked in recv
                instrument = Steps()
                trio.lowlevel.add_instrument(instrument)
                try:
                    await client.send(b"hello")
                    while not got:
                        await trio.testing.wait_all_tasks_blocked()
                finally:
                    trio.lowlevel.remove_instrument(instrument)
                assert got == [b"hello"]
                assert steps == 1  # woken, returned, parked again: one step
                nursery.cancel_scope.cancel()
            await client.send(b"again")
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_checkpoints():  # data at hand: still a checkpoint
                assert await server.recv(100) == b"again"
        client.close()
        server.close()


async def test_closing_listener_wakes_blocked_accept(autojump_clock: trio.testing.MockClock) -> None:
    """``SocketListener.aclose()`` (or closing the socket) while a task waits in accept():
    the waiting accept raises ClosedResourceError, as trio's kernel sockets do."""
    async with two_stacks() as (_a, b):
        with use_stack(b):
            (listener,) = await trio.open_tcp_listeners(6002, host=B_IP)
        outcome: list[BaseException] = []

        async def accept() -> None:
            try:
                await listener.accept()
            except BaseException as exc:
                outcome.append(exc)
                raise

        with trio.fail_after(60), pytest.raises(BaseExceptionGroup) as group:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept)
                await trio.testing.wait_all_tasks_blocked()
                await listener.aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], trio.ClosedResourceError)
        assert group.group_contains(trio.ClosedResourceError)


# -- 5. errors ---------------------------------------------------------------------------------


async def test_connect_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        with use_stack(a), trio.fail_after(60):
            t0 = trio.current_time()
            with pytest.raises(OSError) as info:
                await trio.open_tcp_stream(B_IP, 9999)
            refused = [e for e in errors_in(info.value) if isinstance(e, ConnectionRefusedError)]
            assert refused and refused[0].errno == errno.ECONNREFUSED
            assert trio.current_time() - t0 < 1  # the RST answers at once: no SYN retries
            sock = trio.socket.socket()
            with pytest.raises(ConnectionRefusedError) as direct:
                await sock.connect((B_IP, 9999))
            assert direct.value.errno == errno.ECONNREFUSED
            assert b.statistics().tcp.resets_sent >= 2
            assert sock.getsockopt(SOL_SOCKET, stdlib_socket.SO_ERROR) == 0
            sock.close()


async def test_connect_times_out_when_syns_are_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """B answers ARP but a firewall in front of it drops everything to TCP port 81: the SYN
    goes unanswered and connect fails with ETIMEDOUT after tcp_syn_retries (6) retries."""
    firewall: list[FilterPort] = []

    def wrap_b(port: trio_yastack.nic.Port) -> FilterPort:
        firewall.append(FilterPort(port, lambda frame: tcp_dport(frame) == 81))
        return firewall[0]

    async with two_stacks(wrap_b=wrap_b) as (a, _b):
        sock = a.socket()
        with trio.fail_after(LIMIT):
            t0 = trio.current_time()
            with pytest.raises(TimeoutError) as info:
                await sock.connect((B_IP, 81))
            assert info.value.errno == errno.ETIMEDOUT
            assert 120 <= trio.current_time() - t0 <= 128  # Linux: 127 s; with a 60 s RTO cap: 123 s
        assert firewall[0].dropped == 7  # the SYN and its six retransmissions
        sock.close()
        with use_stack(a), trio.fail_after(LIMIT), pytest.raises(OSError) as through_trio:
            await trio.open_tcp_stream(B_IP, 81)
        assert errno.ETIMEDOUT in errnos_in(through_trio.value)


async def test_peer_closing_with_unread_data_resets(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        client, server = await stream_pair(a, b, 7001)
        with trio.fail_after(60):
            await client.send_all(b"never read")
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()  # unread data: RST instead of FIN (RFC 2525 2.17, as Linux)
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.receive_some(100)
            assert errno.ECONNRESET in errnos_in(info.value)
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"more")
        await client.aclose()


async def test_linger_zero_close_resets(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        client, server = await stream_pair(a, b, 7002)
        with trio.fail_after(60):
            await client.send_all(b"hello")
            assert await server.receive_some(100) == b"hello"  # nothing unread on the server
            server.setsockopt(SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
            await server.aclose()
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.receive_some(100)
            assert errno.ECONNRESET in errnos_in(info.value)
        await client.aclose()


async def test_linger_with_timeout_closes_gracefully(autojump_clock: trio.testing.MockClock) -> None:
    """SO_LINGER {on, 5 s} is not SO_LINGER {on, 0}: close() sends a FIN after the data."""
    async with two_stacks() as (a, b):
        client, server = await stream_pair(a, b, 7003)
        with trio.fail_after(60):
            server.setsockopt(SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 5))
            await server.send_all(b"last words")
            await server.aclose()
            assert await read_to_eof(client) == b"last words"
        await client.aclose()


async def test_sending_to_a_closed_peer_is_reset(autojump_clock: trio.testing.MockClock) -> None:
    """The peer closed (nothing unread, so with a FIN); data sent to it after that is answered
    with RST (Linux: tcp_rcv_state_process after RCV_SHUTDOWN), so the sender learns within a
    round trip rather than after tcp_fin_timeout."""
    async with two_stacks() as (a, b):
        client, server = await stream_pair(a, b, 7004)
        with trio.fail_after(60):
            await server.aclose()
            assert await client.receive_some(100) == b""  # the FIN
            t0 = trio.current_time()
            with pytest.raises(trio.BrokenResourceError) as info:
                while True:
                    await client.send_all(b"anyone there?" * 1000)
                    await trio.testing.wait_all_tasks_blocked()
            assert trio.current_time() - t0 < 1
            assert errnos_in(info.value) & {errno.ECONNRESET, errno.EPIPE}
        await client.aclose()


async def test_af_inet6_without_fallback(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, _b):
        for make in (lambda: trio.socket.socket(AF_INET6, SOCK_STREAM), lambda: a.socket(AF_INET6)):
            with pytest.raises(OSError) as info:
                make()
            assert info.value.errno == errno.EAFNOSUPPORT
        # trio's listener helper skips the family it cannot have: IPv4 only, on the stack
        with use_stack(a):
            listeners = await trio.open_tcp_listeners(8443)
        assert [lst.socket.family for lst in listeners] == [AF_INET]
        assert all(isinstance(lst.socket, StackSocket) for lst in listeners)
        for lst in listeners:
            await lst.aclose()


async def test_af_inet6_with_kernel_fallback(autojump_clock: trio.testing.MockClock) -> None:
    """With kernel_fallback=True an AF_INET6 socket is the kernel's (created and closed only);
    AF_INET is still the stack's."""
    port, _other = memory_wire(seed=5)
    async with open_stack(port, ip=A_IP, kernel_fallback=True):
        sock6 = trio.socket.socket(AF_INET6, SOCK_STREAM)
        try:
            assert not isinstance(sock6, StackSocket)
            assert isinstance(sock6, trio.socket.SocketType)
            assert sock6.family == AF_INET6 and sock6.type == SOCK_STREAM
            assert sock6.fileno() >= 0
        finally:
            sock6.close()
        assert sock6.fileno() == -1
        sock4 = trio.socket.socket(AF_INET, SOCK_STREAM)
        assert isinstance(sock4, StackSocket)
        sock4.close()


async def test_fileno_and_calls_after_close(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        stream_sock, accepted = await socket_pair(a, b, 7005)
        listener = b.socket()
        await listener.bind((B_IP, 7006))
        listener.listen(1)
        dgram = a.socket(AF_INET, SOCK_DGRAM)
        fresh = a.socket()
        accepted_stream = trio.SocketStream(accepted)
        for sock in (stream_sock, accepted, listener, dgram, fresh):
            assert sock.fileno() >= 0
            sock.close()
            assert sock.fileno() == -1
            sock.close()  # closing twice is harmless
            assert sock.fileno() == -1
        for call in (stream_sock.getsockname, stream_sock.getpeername):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            await stream_sock.send(b"x")
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            await dgram.sendto(b"x", (B_IP, 9))
        assert info.value.errno == errno.EBADF
        # trio's stream wrapper turns EBADF into ClosedResourceError
        with pytest.raises(trio.ClosedResourceError):
            await accepted_stream.receive_some(1)
        with pytest.raises(trio.ClosedResourceError):
            await accepted_stream.send_all(b"x")


async def test_so_error_reports_a_pending_error_once(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 7007)
        so_error = (SOL_SOCKET, stdlib_socket.SO_ERROR)
        assert client.getsockopt(*so_error) == 0 and server.getsockopt(*so_error) == 0
        server.setsockopt(SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        await trio.testing.wait_all_tasks_blocked()
        assert client.is_readable()  # the reset is an event a select() would report
        assert client.getsockopt(*so_error) == errno.ECONNRESET
        assert client.getsockopt(*so_error) == 0
        client.close()


async def test_so_error_on_udp(autojump_clock: trio.testing.MockClock) -> None:
    """A connected UDP socket hears ICMP port unreachable as ECONNREFUSED, once."""
    async with two_stacks() as (a, _b):
        so_error = (SOL_SOCKET, stdlib_socket.SO_ERROR)
        udp = a.socket(AF_INET, SOCK_DGRAM)
        await udp.connect((B_IP, 9))
        await udp.send(b"anyone?")
        await trio.testing.wait_all_tasks_blocked()
        assert udp.getsockopt(*so_error) == errno.ECONNREFUSED
        assert udp.getsockopt(*so_error) == 0
        udp.close()


async def test_so_acceptconn(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        acceptconn = (SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN)
        listener = b.socket()
        assert listener.getsockopt(*acceptconn) == 0
        with pytest.raises(ValueError, match="listening"):
            trio.SocketListener(listener)  # trio asks SO_ACCEPTCONN
        await listener.bind((B_IP, 7008))
        assert listener.getsockopt(*acceptconn) == 0
        listener.listen(4)
        assert listener.getsockopt(*acceptconn) == 1
        client = a.socket()
        await client.connect((B_IP, 7008))
        accepted, _ = await listener.accept()
        assert client.getsockopt(*acceptconn) == 0
        assert accepted.getsockopt(*acceptconn) == 0
        assert a.socket(AF_INET, SOCK_DGRAM).getsockopt(*acceptconn) == 0
        trio.SocketListener(listener)  # accepted as a listening socket
        for sock in (client, accepted, listener):
            sock.close()


async def test_accepted_socket_inherits_the_listeners_options(autojump_clock: trio.testing.MockClock) -> None:
    """As the kernel: an accepted socket starts with the listening socket's options (not
    SO_ACCEPTCONN), and the ones its connection holds (Nagle, keep-alive and its timings, the
    send buffer) are in force on the connection."""
    keepidle = (stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_KEEPIDLE)
    async with two_stacks() as (a, b):
        listener = b.socket()
        listener.setsockopt(SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        listener.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 0)
        listener.setsockopt(SOL_SOCKET, stdlib_socket.SO_KEEPALIVE, 1)
        listener.setsockopt(*keepidle, 30)
        listener.setsockopt(SOL_SOCKET, stdlib_socket.SO_SNDBUF, 32768)
        await listener.bind((B_IP, 7009))
        listener.listen(4)
        client = a.socket()
        await client.connect((B_IP, 7009))
        accepted, _ = await listener.accept()
        assert accepted.getsockopt(SOL_SOCKET, stdlib_socket.SO_REUSEADDR) == 1
        assert accepted.getsockopt(SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN) == 0
        assert accepted.getsockopt(*keepidle) == 30
        conn = accepted.connection
        assert conn is not None
        assert conn.nodelay is False and conn.keepalive is True and conn.keep_idle == 30
        assert conn.sndbuf.limit == 32768
        plain = b.socket()  # a listener without options: the accepted connection has the defaults
        await plain.bind((B_IP, 7010))
        plain.listen(4)
        other = a.socket()
        await other.connect((B_IP, 7010))
        default, _ = await plain.accept()
        assert default.connection is not None and default.connection.keepalive is False
        assert default.connection.nodelay == b.core.config.tcp.nodelay
        for sock in (client, accepted, listener, other, default, plain):
            sock.close()


async def test_second_listener_on_a_port_is_eaddrinuse(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        with use_stack(b):
            listeners = await trio.open_tcp_listeners(5000)  # SO_REUSEADDR, as trio sets it
            with pytest.raises(OSError) as info:
                await trio.open_tcp_listeners(5000)
            assert info.value.errno == errno.EADDRINUSE
            second = trio.socket.socket()
            second.setsockopt(SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as info:  # Linux fails bind; listen is fine too
                await second.bind(("0.0.0.0", 5000))
                second.listen(5)
            assert info.value.errno == errno.EADDRINUSE
            second.close()
        # The same port on the other stack is another host's port.
        with use_stack(a):
            other = await trio.open_tcp_listeners(5000)
        # Once closed, the port is free again.
        for lst in listeners:
            await lst.aclose()
        with use_stack(b):
            again = await trio.open_tcp_listeners(5000)
        for lst in [*other, *again]:
            await lst.aclose()


async def test_so_reuseport_listeners_share_a_port(autojump_clock: trio.testing.MockClock) -> None:
    """Sockets that all set SO_REUSEPORT may listen on one port (Linux 3.9+) and every connection
    is accepted through them; one without the option is refused the port; the port keeps
    listening until the last of them closes."""
    so_reuseport = (SOL_SOCKET, stdlib_socket.SO_REUSEPORT)
    async with two_stacks() as (a, b):
        listeners = []
        for _ in range(2):
            sock = b.socket()
            sock.setsockopt(*so_reuseport, 1)
            await sock.bind((B_IP, 5001))
            sock.listen(16)
            listeners.append(sock)
        plain = b.socket()
        with pytest.raises(OSError) as info:  # Linux fails bind; listen is fine too
            await plain.bind((B_IP, 5001))
            plain.listen(16)
        assert info.value.errno == errno.EADDRINUSE
        plain.close()
        clients = [a.socket() for _ in range(16)]
        for client in clients:
            await client.connect((B_IP, 5001))
        await trio.testing.wait_all_tasks_blocked()
        accepted = []
        for lst in listeners:
            while lst.is_readable():
                accepted.append((await lst.accept())[1])
        assert sorted(accepted) == sorted(client.getsockname() for client in clients)
        # One of them closes: the other still listens.
        listeners[0].close()
        late = a.socket()
        await late.connect((B_IP, 5001))
        assert (await listeners[1].accept())[1] == late.getsockname()
        listeners[1].close()
        refused = a.socket()
        with pytest.raises(ConnectionRefusedError):
            await refused.connect((B_IP, 5001))
        for sock in [*clients, late, refused]:
            sock.close()

        # A listener that did not set SO_REUSEPORT does not share its port.
        first = b.socket()
        await first.bind((B_IP, 5002))
        first.listen(4)
        second = b.socket()
        second.setsockopt(*so_reuseport, 1)
        with pytest.raises(OSError) as info:
            await second.bind((B_IP, 5002))
            second.listen(4)
        assert info.value.errno == errno.EADDRINUSE
        first.close()
        second.close()


@pytest.mark.parametrize("family", [AF_INET, AF_INET6], ids=["ipv4", "ipv6"])
async def test_so_reuseport_parked_accept_wakes(
    autojump_clock: trio.testing.MockClock, family: stdlib_socket.AddressFamily
) -> None:
    """An accept parked on any socket of an SO_REUSEPORT group wakes for a connection queued
    while it waits, also after another member closed; a member's close ends only its own
    accept.  The group's one listener used to wake only its first socket's waiter: an accept
    parked on another member waited forever on a connection ESTABLISHED in the shared queue
    (test_so_reuseport_listeners_share_a_port hung when its connect returned a step sooner).
    Both families: an AF_INET6 socket listens through the same code."""
    so_reuseport = (SOL_SOCKET, stdlib_socket.SO_REUSEPORT)
    server = (B_IP, 5003) if family == AF_INET else ("2001:2::1", 5003)
    async with two_stacks(ip6=family == AF_INET6) as (a, b):
        listeners = []
        for _ in range(3):
            sock = b.socket(family)
            sock.setsockopt(*so_reuseport, 1)
            await sock.bind(server)
            sock.listen(4)
            listeners.append(sock)
        clients: list[StackSocket] = []
        accepted: list[tuple[object, ...]] = []

        async def accept_one(listener: StackSocket) -> None:
            accepted.append((await listener.accept())[1])

        async def connect_one() -> None:
            client = a.socket(family)
            clients.append(client)
            await client.connect(server)

        # Parked on the second member (not the first, whose waiter the listener had) before
        # the connection arrives: the connection wakes it.
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_one, listeners[1])
                await trio.testing.wait_all_tasks_blocked()
                await connect_one()
        assert accepted == [clients[0].getsockname()]

        # The first member closes while accepts are parked on it and on the third: its own
        # fails (EBADF), the third's keeps waiting and takes the next connection.
        async def accept_closed(listener: StackSocket) -> None:
            with pytest.raises(OSError) as closed:
                await listener.accept()
            assert closed.value.errno == errno.EBADF
            accepted.append(("closed", 0))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_closed, listeners[0])
                nursery.start_soon(accept_one, listeners[2])
                await trio.testing.wait_all_tasks_blocked()
                listeners[0].close()
                await trio.testing.wait_all_tasks_blocked()
                assert accepted[1:] == [("closed", 0)]  # the third's accept is still parked
                await connect_one()
        assert accepted[2:] == [clients[1].getsockname()]

        # After that close, an accept parked on the second member still wakes.
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_one, listeners[1])
                await trio.testing.wait_all_tasks_blocked()
                await connect_one()
        assert accepted[3:] == [clients[2].getsockname()]
        for sock in [*listeners, *clients]:
            sock.close()


async def test_addresses_and_basic_calls(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        sock = a.socket()
        with pytest.raises(OSError) as info:
            sock.getpeername()
        assert info.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as info:
            await sock.recv(10)
        assert info.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as info:
            await sock.bind(("198.18.0.99", 0))  # not an address of this host
        assert info.value.errno == errno.EADDRNOTAVAIL
        sock.close()

        client, server = await socket_pair(a, b, 7009)
        assert client.getpeername() == (B_IP, 7009) and server.getsockname() == (B_IP, 7009)
        assert server.getpeername() == client.getsockname()
        assert client.getsockname()[0] == A_IP
        assert not server.is_readable()
        await client.send(b"abcdef")
        await trio.testing.wait_all_tasks_blocked()
        assert server.is_readable()
        buffer = bytearray(4)
        assert await server.recv_into(buffer) == 4 and buffer == b"abcd"
        assert await server.recv(100) == b"ef"
        await client.wait_writable()  # plenty of room: returns at once
        assert not client.did_shutdown_SHUT_WR
        client.shutdown(stdlib_socket.SHUT_WR)
        assert client.did_shutdown_SHUT_WR
        assert await server.recv(100) == b""
        with pytest.raises(OSError) as info:
            await client.send(b"x")
        assert info.value.errno == errno.EPIPE
        await server.send(b"half-open still carries the other way")
        assert await client.recv(100) == b"half-open still carries the other way"
        for s in (client, server):
            s.close()


async def test_bind_to_port_zero_assigns_a_port(autojump_clock: trio.testing.MockClock) -> None:
    """The kernel picks the port at bind(): getsockname() shows it, two sockets get two ports,
    and listen() keeps the port bound."""
    async with two_stacks() as (a, b):
        for kind in (SOCK_DGRAM, SOCK_STREAM):
            first, second = a.socket(AF_INET, kind), a.socket(AF_INET, kind)
            await first.bind(("0.0.0.0", 0))
            await second.bind(("0.0.0.0", 0))
            port = first.getsockname()[1]
            assert port != 0 and second.getsockname()[1] not in (0, port), kind
            first.close()
            second.close()
        listener = b.socket()
        await listener.bind((B_IP, 0))
        port = listener.getsockname()[1]
        listener.listen(4)
        assert listener.getsockname() == (B_IP, port)
        client = a.socket()
        await client.connect((B_IP, port))
        assert (await listener.accept())[1] == client.getsockname()
        client.close()
        listener.close()


async def test_socket_options(autojump_clock: trio.testing.MockClock) -> None:
    async with two_stacks() as (a, b):
        sock = a.socket()
        sock.setsockopt(IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        assert sock.getsockopt(IPPROTO_TCP, stdlib_socket.TCP_NODELAY)
        sock.setsockopt(IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 0)
        assert not sock.getsockopt(IPPROTO_TCP, stdlib_socket.TCP_NODELAY)
        sock.setsockopt(SOL_SOCKET, stdlib_socket.SO_KEEPALIVE, 1)
        assert sock.getsockopt(SOL_SOCKET, stdlib_socket.SO_KEEPALIVE)
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
            sock.setsockopt(IPPROTO_TCP, getattr(stdlib_socket, name), value)
            assert sock.getsockopt(IPPROTO_TCP, getattr(stdlib_socket, name)) == value
        sock.setsockopt(SOL_SOCKET, stdlib_socket.SO_SNDBUF, 8192)
        sock.setsockopt(SOL_SOCKET, stdlib_socket.SO_RCVBUF, 8192)
        assert sock.getsockopt(SOL_SOCKET, stdlib_socket.SO_SNDBUF) >= 8192  # Linux doubles it
        assert sock.getsockopt(SOL_SOCKET, stdlib_socket.SO_RCVBUF) >= 8192
        assert sock.getsockopt(SOL_SOCKET, stdlib_socket.SO_TYPE) == SOCK_STREAM
        # trio.SocketStream turns on TCP_NODELAY
        client, server = await socket_pair(a, b, 7010)
        stream = trio.SocketStream(client)
        assert stream.getsockopt(IPPROTO_TCP, stdlib_socket.TCP_NODELAY)
        assert isinstance(client, StackSocket) and client.connection is not None and client.connection.nodelay
        for s in (client, server):
            s.close()
        sock.setsockopt(SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 7))
        assert struct.unpack("ii", sock.getsockopt(SOL_SOCKET, stdlib_socket.SO_LINGER, 8)) == (1, 7)
        sock.close()


async def test_keepalive_options_detect_a_vanished_peer(autojump_clock: trio.testing.MockClock) -> None:
    """SO_KEEPALIVE with TCP_KEEPIDLE 10, TCP_KEEPINTVL 2, TCP_KEEPCNT 3: a peer that stopped
    answering is declared dead with ETIMEDOUT after 10 + 3 * 2 = 16 idle seconds (as Linux)."""
    filters: list[FilterPort] = []

    def wrap_b(port: trio_yastack.nic.Port) -> FilterPort:
        filters.append(FilterPort(port))
        return filters[0]

    async with two_stacks(wrap_b=wrap_b) as (a, b):
        client, server = await socket_pair(a, b, 7011)
        client.setsockopt(SOL_SOCKET, stdlib_socket.SO_KEEPALIVE, 1)
        client.setsockopt(IPPROTO_TCP, stdlib_socket.TCP_KEEPIDLE, 10)
        client.setsockopt(IPPROTO_TCP, stdlib_socket.TCP_KEEPINTVL, 2)
        client.setsockopt(IPPROTO_TCP, stdlib_socket.TCP_KEEPCNT, 3)
        await client.send(b"ping")
        assert await server.recv(10) == b"ping"
        await trio.testing.wait_all_tasks_blocked()
        filters[0].drop_all()  # B vanishes
        t0 = trio.current_time()
        with trio.fail_after(10_000), pytest.raises(TimeoutError) as info:
            await client.recv(10)
        assert info.value.errno == errno.ETIMEDOUT
        assert trio.current_time() - t0 == pytest.approx(16, abs=1)
        client.close()
        server.close()


async def test_factory_and_resolver_removed_after_open_stack(autojump_clock: trio.testing.MockClock) -> None:
    before = (trio.socket.set_custom_socket_factory(None), trio.socket.set_custom_hostname_resolver(None))
    assert before == (None, None)
    a_port, b_port = memory_wire(seed=3)
    async with open_stack(a_port, ip=A_IP, hosts={"server.test": B_IP}) as a:
        async with open_stack(b_port, ip=B_IP) as b:
            with use_stack(b):
                on_b = trio.socket.socket()
            assert isinstance(on_b, StackSocket) and on_b.getsockname()[0] in ("0.0.0.0", B_IP)
            on_b.close()
        # B closed; A (still open) keeps the factory and the resolver
        sock = trio.socket.socket()
        assert isinstance(sock, StackSocket)
        sock.close()
        assert trio_yastack.current_stack() is a
        infos = await trio.socket.getaddrinfo("server.test", 7, type=SOCK_STREAM)
        assert {info[4] for info in infos} == {(B_IP, 7)}
    # Both closed: trio's defaults again (a kernel socket, created and closed only).
    kernel = trio.socket.socket(AF_INET, SOCK_STREAM)
    try:
        assert not isinstance(kernel, StackSocket)
        assert kernel.fileno() >= 0
    finally:
        kernel.close()
    after = (trio.socket.set_custom_socket_factory(None), trio.socket.set_custom_hostname_resolver(None))
    assert after == (None, None)
    with pytest.raises(RuntimeError):
        trio_yastack.current_stack()


async def test_open_stack_restores_a_custom_factory(autojump_clock: trio.testing.MockClock) -> None:
    """A factory and resolver the program installed itself are back after open_stack exits."""

    class MyFactory(trio.abc.SocketFactory):
        def socket(
            self, family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0
        ) -> trio.socket.SocketType:
            raise AssertionError("not called")

    class MyResolver(trio.abc.HostnameResolver):
        async def getaddrinfo(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
            raise AssertionError("not called")

        async def getnameinfo(self, *args: object, **kwargs: object) -> tuple[str, str]:  # type: ignore[override]
            raise AssertionError("not called")

    factory, resolver = MyFactory(), MyResolver()
    trio.socket.set_custom_socket_factory(factory)
    trio.socket.set_custom_hostname_resolver(resolver)
    port, _other = memory_wire(seed=4)
    async with open_stack(port, ip=A_IP):
        sock = trio.socket.socket()
        assert isinstance(sock, StackSocket)
        sock.close()
    assert trio.socket.set_custom_socket_factory(None) is factory
    assert trio.socket.set_custom_hostname_resolver(None) is resolver


# -- 6. trio_yastack.run ---------------------------------------------------------------------


def test_run_installs_the_factory() -> None:
    a_port, b_port = memory_wire(seed=9)
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main(greeting: bytes) -> bytes:
        assert trio.lowlevel.current_clock() is clock
        assert trio_yastack.current_stack().address == IPv4Address(A_IP)
        sock = trio.socket.socket()
        assert isinstance(sock, StackSocket)
        sock.close()
        async with open_stack(b_port, ip=B_IP) as b, trio.open_nursery() as nursery:
            with use_stack(b):
                await nursery.start(trio.serve_tcp, echo_handler, 7)
            stream = await trio.open_tcp_stream(B_IP, 7)  # on run()'s stack, the default
            assert stream.socket.getsockname()[0] == A_IP
            reply = await echo_request(stream, greeting)
            nursery.cancel_scope.cancel()
        return reply

    assert (
        trio_yastack.run(main, b"hello from run", nic=a_port, ip=A_IP, seed=1, clock=clock)
        == b"hello from run"
    )


async def test_later_stacks_add_hosts_and_keep_the_kernel_fallback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One factory and resolver serve a trio run: a second stack's ``hosts`` join the table, and a
    different ``kernel_fallback`` is refused with a clear error instead of being ignored."""
    first, second, third = memory_wire(seed=3), memory_wire(seed=4), memory_wire(seed=5)
    async with (
        trio_yastack.open_stack(first[0], ip="198.18.0.2/24", hosts={"one.test": "198.18.0.1"}),
        trio_yastack.open_stack(second[0], ip="198.18.0.3/24", hosts={"two.test": "198.18.0.9"}),
    ):
        infos = await trio.socket.getaddrinfo("two.test", 80, type=stdlib_socket.SOCK_STREAM)
        assert infos[0][4] == ("198.18.0.9", 80)
        assert (await trio.socket.getaddrinfo("one.test", 80, type=stdlib_socket.SOCK_STREAM))[0][4][
            0
        ] == "198.18.0.1"
        with pytest.raises(ValueError, match="kernel_fallback"):
            async with trio_yastack.open_stack(third[0], ip="198.18.0.4/24", kernel_fallback=True):
                pass  # pragma: no cover


async def test_sendmsg_and_recvmsg(autojump_clock: trio.testing.MockClock) -> None:
    """sendmsg gathers buffers; recvmsg returns the sender and sets MSG_TRUNC for a datagram
    larger than the buffer, as the kernel does."""
    port_a, port_b = memory_wire(seed=8)
    async with (
        trio_yastack.open_stack(port_a, ip="198.18.0.2/24") as a,
        trio_yastack.open_stack(port_b, ip="198.18.0.1/24") as b,
    ):
        receiver = b.socket(type=stdlib_socket.SOCK_DGRAM)
        await receiver.bind(("198.18.0.1", 5353))
        sender = a.socket(type=stdlib_socket.SOCK_DGRAM)
        sent = await sender.sendmsg([b"hello, ", memoryview(b"world")], (), 0, ("198.18.0.1", 5353))
        assert sent == 12
        data, ancdata, flags, address = await receiver.recvmsg(5)
        assert (data, ancdata, flags) == (b"hello", [], stdlib_socket.MSG_TRUNC)
        assert address == ("198.18.0.2", sender.getsockname()[1])
        with pytest.raises(OSError) as info:
            await sender.sendmsg([b"x"], [(0, 0, b"")], 0, ("198.18.0.1", 5353))
        assert info.value.errno == errno.EOPNOTSUPP
        sender.close()
        receiver.close()


async def test_a_cancelled_receive_leaves_the_socket_to_the_next_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``receive_some`` parked on a socket and cancelled leaves no trace: the next receiver
    (another task) is not busy-refused and gets the bytes that arrive later, and the wake-up
    those bytes cause reschedules only the task that waits (the socket layer parks tasks on
    its own list, not a ``ParkingLot``: a cancelled task must leave it)."""
    async with two_stacks() as (a, b):
        listener = b.tcp_listen(7001)
        client = await a.tcp_connect(B_IP, 7001)
        server = await listener.accept()
        with trio.move_on_after(5) as scope:
            await server.receive_some(100)
        assert scope.cancelled_caught
        got: list[bytes] = []

        async def receive() -> None:
            got.append(await server.receive_some(100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"after the cancel")
        assert got == [b"after the cancel"]
        await client.aclose()
        await server.aclose()
        await listener.aclose()
