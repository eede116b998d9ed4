"""One window update per turn: an application that reads a full window in several calls makes one
window-update ACK, with the final window, not one per read.

Tier 2 (the frames in the core's outbox are what the wire would carry) with ``autocork`` set as a
runtime sets it, and tier 3 (two stacks on a memory wire, the ACKs counted on the wire).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tcp_helpers import ACK, T0, check_tcp, fix_iss, open_active, tcp_core, tcp_segments
from tcp_sim_helpers import connected_pair, connection, two_stacks

from trio_yastack.stack import StackCore, TcpConnection

#: our receive buffer (256 KiB) in the window field at window scale 3
FULL_WINDOW = (256 * 1024) >> 3
READ = 64 * 1024


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


def full_window(*, autocork: bool) -> tuple[StackCore, TcpConnection]:
    """An established connection whose receive buffer the peer has filled (window closed)."""
    core = tcp_core()
    core.autocork = autocork
    conn, peer = open_active(core)
    now = T0 + 1
    while conn.rcvbuf.free():
        peer.send(ACK, b"d" * min(1448, conn.rcvbuf.free()), now=now)
    peer.receive()
    core.run_pending_output(now)
    core.take_outbox()
    assert conn.rcv_adv == conn.rcv_nxt  # the window is closed
    return core, conn


def test_reads_of_a_full_window_in_one_turn_make_one_window_update() -> None:
    core, conn = full_window(autocork=True)
    for _ in range(4):
        assert len(conn.receive(READ, T0 + 2) or b"") == READ
    assert core.take_outbox() == []  # marked, not sent per read
    core.run_pending_output(T0 + 2)  # the poll loop's turn, before tx_burst
    [update] = tcp_segments([bytes(f) for f in core.take_outbox()])
    check_tcp(update, flags=ACK, window=FULL_WINDOW, payload=b"")
    assert conn.rcv_adv - conn.rcv_nxt == 256 * 1024


def test_without_a_runtime_each_read_still_answers_at_once() -> None:
    """Sans-IO use (no poll loop to flush): unchanged, the update leaves with the read."""
    core, conn = full_window(autocork=False)
    conn.receive(READ, T0 + 2)
    [update] = tcp_segments([bytes(f) for f in core.take_outbox()])
    check_tcp(update, flags=ACK, window=READ >> 3)


async def test_one_window_update_on_the_wire(autojump_clock: trio.testing.MockClock) -> None:
    """Two stacks on a memory wire: the sender fills the receiver's window while nobody reads;
    the reader then takes it in four reads within one turn of the poll loop (no checkpoint in
    between): one segment leaves, the window update."""
    async with two_stacks(31) as (a, b):
        client, server, _listener = await connected_pair(a, b)
        receiver = b.core
        conn = connection(server)
        limit = conn.rcvbuf.limit
        sent = 0
        with trio.move_on_after(5):
            while sent < limit:
                sent += await client.socket.send(b"x" * min(65536, limit - sent))
        await trio.testing.wait_all_tasks_blocked()
        assert len(conn.rcvbuf) == limit  # the window is closed
        acks_before = receiver.stats_tcp.segments_sent
        for _ in range(limit // READ):
            assert len(conn.receive(READ, trio.current_time()) or b"") == READ
        b.kick()  # what the socket layer's recv does after taking data
        await trio.testing.wait_all_tasks_blocked()
        assert receiver.stats_tcp.segments_sent - acks_before == 1
