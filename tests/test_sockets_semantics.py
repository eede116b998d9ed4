"""trio's socket semantics, exactly, on stack sockets: each gap that trio's own test suite
showed over the stack (issue 21), checked on its own here (``test_trio_suite.py`` runs the
suite itself).  Each was reproduced against trio's kernel sockets first.

Two stacks on a memory wire under MockClock: A (198.18.0.2, the default) and B (198.18.0.1)."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
import trio.testing
from socket_helpers import A_IP, B_IP, FilterPort, socket_pair, tcp_dport, two_stacks

from trio_yastack import Stack
from trio_yastack.socket_api import use_stack


async def test_udp_to_own_address_on_an_idle_stack(autojump_clock: trio.testing.MockClock) -> None:
    """Was a bug (fixed): a datagram to the stack's own address waited in the IP layer's
    loopback queue for an unrelated wake-up of the poll loop (never, on an idle stack): the
    queue now counts in ``next_deadline`` and so in the loop's kick."""
    async with two_stacks() as (a, _b):
        receiver = trio.socket.socket(type=socket.SOCK_DGRAM)
        sender = trio.socket.socket(type=socket.SOCK_DGRAM)
        with receiver, sender:
            await receiver.bind((A_IP, 0))
            start = trio.current_time()
            with trio.fail_after(60):
                await sender.sendto(b"me", receiver.getsockname())
                assert (await receiver.recvfrom(10))[0] == b"me"
            assert trio.current_time() == start  # not one simulated tick waited
        assert not a.core.ip_layer.loopback


async def test_tcp_to_own_address_takes_no_time(autojump_clock: trio.testing.MockClock) -> None:
    """Was a bug (fixed): each exchange over TCP to the stack's own address took about a second
    (the next timer), now none."""
    async with two_stacks():
        listener = trio.socket.socket()
        client = trio.socket.socket()
        with listener, client:
            await listener.bind((A_IP, 0))
            listener.listen(1)
            start = trio.current_time()
            await client.connect(listener.getsockname())
            server, _ = await listener.accept()
            with server:
                for _ in range(10):
                    await client.send(b"ping")
                    assert await server.recv(10) == b"ping"
                    await server.send(b"pong")
                    assert await client.recv(10) == b"pong"
            assert trio.current_time() - start < 0.05  # ten round trips, no timer waited for


async def test_msg_peek_leaves_the_data(autojump_clock: trio.testing.MockClock) -> None:
    """``recv(n, MSG_PEEK)`` returns the data and leaves it queued (TCP and UDP)."""
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 80)
        with client, server:
            await client.send(b"hello")
            await trio.testing.wait_all_tasks_blocked()
            assert await server.recv(3, socket.MSG_PEEK) == b"hel"
            assert await server.recv(10, socket.MSG_PEEK) == b"hello"
            assert await server.recv(10) == b"hello"
        receiver = trio.socket.socket(type=socket.SOCK_DGRAM)
        with receiver:
            await receiver.bind((A_IP, 0))
            sender = trio.socket.socket(type=socket.SOCK_DGRAM)
            with sender:
                await sender.sendto(b"dgram", receiver.getsockname())
                assert (await receiver.recvfrom(10, socket.MSG_PEEK))[0] == b"dgram"
                assert (await receiver.recvfrom(10))[0] == b"dgram"


async def test_msg_more_corks_udp_and_recvmsg_into(autojump_clock: trio.testing.MockClock) -> None:
    """``sendto`` with MSG_MORE holds the payload until a send without it (one datagram, as
    Linux); ``recvmsg_into`` scatters a datagram over buffers; unknown flags are EOPNOTSUPP."""
    async with two_stacks():
        a = trio.socket.socket(type=socket.SOCK_DGRAM)
        b = trio.socket.socket(type=socket.SOCK_DGRAM)
        with a, b:
            await b.bind((A_IP, 0))
            await a.sendto(b"xxx", socket.MSG_MORE, b.getsockname())
            await a.sendto(b"yyy", b.getsockname())
            assert (await b.recvfrom(10))[0] == b"xxxyyy"
            await a.sendto(b"xyzw", b.getsockname())
            first, second = bytearray(2), bytearray(3)
            nbytes, ancdata, flags, address = await b.recvmsg_into([first, second])
            assert (nbytes, ancdata, flags, address) == (4, [], 0, (A_IP, a.getsockname()[1]))
            assert (first, second) == (b"xy", b"zw\0")
            with pytest.raises(OSError) as raised:
                await a.sendto(b"x", socket.MSG_OOB, b.getsockname())
            assert raised.value.errno == errno.EOPNOTSUPP


async def test_setsockopt_four_arguments() -> None:
    """trio's form: ``(level, name, None, optlen)``; a value with an optlen, or neither, is a
    TypeError with trio's words."""
    async with two_stacks():
        with trio.socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, None, 0)
            with pytest.raises(TypeError, match="invalid value for argument 'value'"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, False, 5)  # type: ignore[call-overload]  # the misuse under test
            with pytest.raises(TypeError, match="invalid value for argument 'value'"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, None)  # type: ignore[call-overload]  # the misuse under test


async def test_failing_calls_checkpoint_first() -> None:
    """A failing ``accept``/``send``/``recv`` on a closed socket checkpoints before raising."""
    async with two_stacks():
        sock = trio.socket.socket()
        sock.close()
        for call in (sock.accept(), sock.send(b"x"), sock.recv(1)):
            with trio.testing.assert_checkpoints(), pytest.raises(OSError):
                await call


async def test_names_and_string_ports_resolve(autojump_clock: trio.testing.MockClock) -> None:
    """``bind``/``connect``/``sendto`` with a host name resolve through the run's resolver; a
    string port is a service; a malformed address is ValueError, as trio's."""
    async with two_stacks(hosts={"a.test": A_IP}):
        listener = trio.socket.socket()
        client = trio.socket.socket()
        with listener, client:
            await listener.bind(("a.test", "8080"))
            assert listener.getsockname() == (A_IP, 8080)
            listener.listen(1)
            await client.connect(("a.test", 8080))
            assert client.getpeername() == (A_IP, 8080)
            with pytest.raises(ValueError, match="address should be a"):
                await client.connect("a.test:80")
        udp = trio.socket.socket(type=socket.SOCK_DGRAM)
        with udp:
            await udp.bind(("", 0))
            assert await udp.sendto(b"x", ("a.test", udp.getsockname()[1])) == 1
            assert (await udp.recvfrom(1))[0] == b"x"
            with pytest.raises(socket.gaierror):
                await udp.sendto(b"x", ("unknown.test", 9))


async def test_connect_errors_and_cancellation(autojump_clock: trio.testing.MockClock) -> None:
    """A refused connect says ``Error connecting to (host, port): ...`` as trio's; a cancelled
    connect closes the socket, as trio's (a connect cannot be taken back)."""

    def drop_syn(frame: bytes) -> bool:
        return tcp_dport(frame) == 81

    async with two_stacks(wrap_b=lambda port: FilterPort(port, drop_syn)):
        sock = trio.socket.socket()
        with sock, pytest.raises(ConnectionRefusedError, match=r"Error connecting to \('198.18.0.1', 82\)"):
            await sock.connect((B_IP, 82))
        sock = trio.socket.socket()
        with trio.move_on_after(5):
            await sock.connect((B_IP, 81))
        assert sock.fileno() == -1


async def test_second_bind_before_listen_is_eaddrinuse() -> None:
    """A TCP port bound by a socket that has not listened yet is taken (the kernel's EADDRINUSE)."""
    async with two_stacks():
        first, second = trio.socket.socket(), trio.socket.socket()
        with first, second:
            await first.bind((A_IP, 7000))
            with pytest.raises(OSError) as raised:
                await second.bind((A_IP, 7000))
            assert raised.value.errno == errno.EADDRINUSE


async def test_getnameinfo_and_idna() -> None:
    """``getnameinfo`` refuses a name (gaierror) and names ports by service unless
    NI_NUMERICSERV; an IDNA-2008 name unknown to the stack is gaierror, not UnicodeError."""
    async with two_stacks(hosts={"a.test": A_IP}):
        with pytest.raises(socket.gaierror):
            await trio.socket.getnameinfo(("a.test", 80), 0)
        assert await trio.socket.getnameinfo((A_IP, 80), 0) == ("a.test", "http")
        numeric = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        assert await trio.socket.getnameinfo((A_IP, 80), numeric) == (A_IP, "80")
        with pytest.raises(socket.gaierror):
            await trio.socket.getnameinfo((B_IP, 80), socket.NI_NAMEREQD)
        with pytest.raises(socket.gaierror):
            await trio.socket.getaddrinfo("fa\u00df.de", 80)  # IDNA 2008: xn--fa-hia.de


async def test_bind_to_another_stacks_address_moves_the_socket() -> None:
    """The factory makes a socket on the task's default stack before any address is known; a
    bind to another stack's address puts it on that stack."""
    async with two_stacks() as (_a, b):
        sock = trio.socket.socket()
        with sock:
            await sock.bind((B_IP, 0))
            assert sock.getsockname()[0] == B_IP
            sock.listen(1)
            assert sock.getsockname()[1] in b.core.tcp.listeners
        with use_stack(b):
            assert isinstance(b, Stack)


async def test_what_wait_all_tasks_blocked_promises(autojump_clock: trio.testing.MockClock) -> None:
    """As the README says: on a zero-latency wire, once all tasks are blocked every frame sent
    has been handled (the data is in the peer's receive buffer); the stack's timers (here the
    delayed ACK, which the sender's snd_una waits for) are not waited for."""
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 90)
        with client, server:
            await client.send(b"z" * 100)
            await trio.testing.wait_all_tasks_blocked()
            assert server.is_readable()
            conn = client.connection  # type: ignore[attr-defined]  # a StackSocket's
            unacked = conn.snd_nxt - conn.snd_una
            assert unacked == 100  # all tasks blocked, yet the ACK is still delayed: not settled
            await trio.sleep(1)  # simulated: the delayed ACK's timer fires
            assert conn.snd_nxt - conn.snd_una == 0
