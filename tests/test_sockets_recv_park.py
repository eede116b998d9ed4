"""``StackSocket.recv`` on an open connection with nothing to read parks without asking the
connection (``TcpConnection.receive``), and every other case still gets the connection's answer.

A keep-alive server reads again right after each response and finds nothing: that read's call
of ``receive`` (and the buffer's Python-level ``__len__``) was on every request's path.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing
from socket_helpers import socket_pair, two_stacks

from trio_yastack.stack import TcpConnection


@pytest.fixture
def receive_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes | None]:
    """What each ``TcpConnection.receive`` call returned, in order."""
    calls: list[bytes | None] = []
    original = TcpConnection.receive

    def counted(self: TcpConnection, max_bytes: int, now: float) -> bytes | None:
        result = original(self, max_bytes, now)
        calls.append(result)
        return result

    monkeypatch.setattr(TcpConnection, "receive", counted)
    return calls


async def test_an_empty_open_connection_parks_without_receive(
    autojump_clock: trio.testing.MockClock, receive_calls: list[bytes | None]
) -> None:
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 80)
        with client, server:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await server.recv(100))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                assert got == [] and receive_calls == []  # parked, the connection not asked
                await client.send(b"request")
            assert got == [b"request"]
            assert receive_calls == [b"request"]  # the woken read took the data through receive

            # Cancelled while parked: trio's semantics, and the socket takes a next read.
            with trio.move_on_after(1) as scope:
                await server.recv(100)
            assert scope.cancelled_caught
            await client.send(b"again")
            assert await server.recv(100) == b"again"

            # A read of 0 bytes on an empty connection is receive's answer (b""), not a park.
            assert await server.recv(0) == b""
            assert receive_calls[-1] == b""

            # The peer's FIN (CLOSE_WAIT): the end of the stream, from receive.
            client.shutdown(trio.socket.SHUT_WR)
            await trio.testing.wait_all_tasks_blocked()
            assert await server.recv(100) == b""
            assert receive_calls[-1] == b""


async def test_an_error_on_an_empty_connection_is_raised(
    autojump_clock: trio.testing.MockClock, receive_calls: list[bytes | None]
) -> None:
    """A connection that holds an error while its state still reads ESTABLISHED (set here by
    hand: the stack moves it to CLOSED with it) raises that error, as ``receive`` does."""
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 81)
        with client, server:
            conn: Any = server._conn  # type: ignore[attr-defined]  # StackSocket's connection
            conn.error = errno.ECONNRESET
            with trio.fail_after(5), pytest.raises(OSError) as raised:  # not a park
                await server.recv(100)
            assert raised.value.errno == errno.ECONNRESET
            conn.error = 0


async def test_a_cancelled_read_parks_nothing_and_takes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The park is the read's checkpoint: a read whose scope is already cancelled raises
    Cancelled whether or not data is there, leaves no task parked, and takes nothing."""
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 82)
        with client, server:
            sock: Any = server
            with trio.CancelScope() as scope:
                scope.cancel()
                await server.recv(100)  # empty: parks, aborted at once
            assert scope.cancelled_caught
            assert len(sock._waiter) == 0 and sock._receiver is None
            await client.send(b"kept")
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await server.recv(100)  # data there: not taken
            assert scope.cancelled_caught
            with trio.testing.assert_checkpoints():
                assert await server.recv(100) == b"kept"
            with trio.testing.assert_checkpoints(), trio.move_on_after(1):
                await server.recv(100)  # empty: the park is the checkpoint


async def test_a_second_reader_is_busy(autojump_clock: trio.testing.MockClock) -> None:
    """A read while another task is parked reading the same socket is BusyResourceError, as
    on a kernel socket; the parked reader still gets the data."""
    async with two_stacks() as (a, b):
        client, server = await socket_pair(a, b, 83)
        with client, server:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await server.recv(100))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await server.recv(100)
                await client.send(b"first")
            assert got == [b"first"]
