"""TIME_WAIT as a compact record (FreeBSD's ``tcptw``, ``tcp_twcheck``): what the state does, checked
against the record that replaces the connection once the application has closed it.

A connection that enters TIME_WAIT leaves the connection table; a ``TcpTimeWait`` holds the pair,
the two sequence numbers, the last window, the timestamp state and the deadline.  Each test drives
a connection there with hand-made segments (ISNs just below 2**32, as in ``test_tcp_states``) and
checks the exact segments that come out, the record and the counters.
"""

from __future__ import annotations

import errno
import gc
import tracemalloc

import pytest
import trio
import trio.testing
from helpers import PEER_IP
from tcp_helpers import (
    ACK,
    FIN,
    OUR_ISS,
    OUR_PORT,
    PEER_PORT,
    RST,
    SYN,
    T0,
    Peer,
    check_tcp,
    fix_iss,
    open_active,
    seq_add,
    tcp_core,
    tcp_drops,
)
from tcp_sim_helpers import A_IP, B_IP, connected_pair, two_stacks

from trio_yastack.journey._control import core_snapshot
from trio_yastack.stack import StackCore, TcpConnection, TcpState
from trio_yastack.stack.tcp import TcpTimeWait

S = TcpState
MSL = 5.0
#: our receive window after the handshake: 256 KiB at window scale 3
FULL_WINDOW = (256 * 1024) >> 3


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


def stats(core: StackCore):
    return core.statistics().tcp


def closed_into_time_wait(
    core: StackCore, *, port: int = PEER_PORT, now: float = T0 + 1, **peer_options: object
) -> tuple[TcpConnection, Peer, TcpTimeWait]:
    """An active connection the application closed, then the peer's ACK and FIN: TIME_WAIT,
    held by a record alone."""
    conn = core.tcp.connect(int(PEER_IP), port, T0, local_port=OUR_PORT)
    peer = Peer(core, port=port, **peer_options)  # type: ignore[arg-type]
    peer.receive()
    peer.send(SYN | ACK, now=T0 + 0.05)
    conn.close(now)
    [fin] = peer.receive()
    check_tcp(fin, dport=port, flags=FIN | ACK)
    assert peer.send(ACK, now=now + 0.05) == []
    assert conn.state == S.FIN_WAIT_2
    [ack] = peer.send(FIN | ACK, now=now + 0.1)
    check_tcp(ack, dport=port, flags=ACK, seq=OUR_ISS + 2, ack=peer.snd_nxt)
    key = (OUR_PORT, int(PEER_IP), port)
    assert key not in core.tcp.connections
    tw = core.tcp.time_wait[key]
    assert tw.conn is None  # the application closed it: the record holds nothing of it
    return conn, peer, tw


def test_the_record_replaces_the_connection() -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, tw = closed_into_time_wait(core)
    assert tw.state == S.TIME_WAIT
    assert (tw.local_port, tw.remote_ip, tw.remote_port) == (OUR_PORT, int(PEER_IP), PEER_PORT)
    assert tw.snd_nxt & 0xFFFFFFFF == seq_add(OUR_ISS, 2)
    assert tw.rcv_nxt & 0xFFFFFFFF == peer.snd_nxt
    assert tw.ts_recent == peer.tsval(T0 + 1.1)
    assert tw.expiry == T0 + 1.1 + 2 * MSL
    assert core.tcp.connections == {}
    assert core.tcp.port_use == {OUR_PORT: 1}  # the record keeps the port in use
    assert len(core.timers) == 1  # one entry for all of TIME_WAIT, none of the connection's
    assert core.next_deadline() == tw.expiry


def test_expiry_at_two_msl_ends_it_and_counts_it_closed() -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, tw = closed_into_time_wait(core)
    assert peer.run_timers(tw.expiry - 0.001) == []
    assert core.tcp.time_wait
    assert peer.run_timers(tw.expiry) == []  # expiry sends nothing
    assert core.tcp.time_wait == {} and core.tcp.port_use == {}
    assert stats(core).connections_closed == 1
    assert len(core.timers) == 0 and core.next_deadline() is None


def test_retransmitted_fin_is_acknowledged_again_and_restarts_two_msl() -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, tw = closed_into_time_wait(core)
    first_expiry = tw.expiry
    [ack] = peer.send(FIN | ACK, now=T0 + 4, seq=seq_add(peer.snd_nxt, -1))
    # TS.Recent stays the first FIN's: an unacceptable segment does not move it (RFC 7323 4.3)
    check_tcp(
        ack, flags=ACK, seq=OUR_ISS + 2, ack=peer.snd_nxt, window=FULL_WINDOW, tsecr=peer.tsval(T0 + 1.1)
    )
    assert stats(core).duplicate_segments == 1
    assert tw.expiry == T0 + 4 + 2 * MSL
    assert peer.run_timers(first_expiry) == []
    assert core.tcp.time_wait  # 2MSL counts again from the second FIN
    peer.run_timers(T0 + 4 + 2 * MSL)
    assert core.tcp.time_wait == {}
    assert stats(core).connections_closed == 1


def test_retransmitted_fin_without_timestamps() -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, _tw = closed_into_time_wait(core, ts=False)
    [ack] = peer.send(FIN | ACK, now=T0 + 2, seq=seq_add(peer.snd_nxt, -1))
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 2, ack=peer.snd_nxt, has_timestamps=False)


def test_reset_at_rcv_nxt_ends_it() -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, _tw = closed_into_time_wait(core)
    assert peer.send(RST, now=T0 + 2, ack=0) == []
    assert core.tcp.time_wait == {} and core.tcp.port_use == {}
    assert stats(core).resets_received == 1
    assert stats(core).connections_closed == 1
    assert len(core.timers) == 0  # the expiry entry went with the last record


@pytest.mark.parametrize("offset", [1, 1000])
def test_reset_in_the_window_gets_a_challenge_ack(offset: int) -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, _tw = closed_into_time_wait(core)
    [ack] = peer.send(RST, now=T0 + 2, seq=seq_add(peer.snd_nxt, offset), ack=0)
    check_tcp(ack, flags=ACK, seq=OUR_ISS + 2, ack=peer.snd_nxt)  # RFC 5961 3.2
    assert stats(core).challenge_acks_sent == 1
    assert core.tcp.time_wait


def test_reset_outside_the_window_is_dropped() -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, _tw = closed_into_time_wait(core)
    assert peer.send(RST, now=T0 + 2, seq=seq_add(peer.snd_nxt, -1), ack=0) == []
    assert tcp_drops(core) == {"rst_out_of_window": 1}
    assert core.tcp.time_wait


def test_an_old_timestamp_is_dropped_by_paws_and_acknowledged() -> None:
    core = tcp_core(msl=MSL)
    _conn, peer, _tw = closed_into_time_wait(core)
    old = peer.frame(ACK, now=T0, options=None)  # a timestamp from before the FIN
    core.ether_input(old, T0 + 2)
    [ack] = peer.receive()
    check_tcp(ack, flags=ACK, ack=peer.snd_nxt)
    assert tcp_drops(core) == {"paws": 1}


def test_a_syn_above_the_old_sequence_space_takes_the_pair_over() -> None:
    core = tcp_core(msl=MSL)
    listener = core.tcp.listen(OUR_PORT)
    # passive this time: the pair's local port is the listener's
    peer = Peer(core, ts=False)
    peer.send(SYN, now=T0)
    peer.send(ACK, now=T0 + 0.05)
    conn = listener.accept()
    assert conn is not None
    conn.close(T0 + 1)
    peer.receive()
    peer.send(ACK, now=T0 + 1.05)
    peer.send(FIN | ACK, now=T0 + 1.1)
    [tw] = core.tcp.time_wait.values()
    old_syn = Peer(core, isn=seq_add(peer.snd_nxt, -5000), ts=False)
    [ack] = old_syn.send(SYN, now=T0 + 2)
    check_tcp(ack, flags=ACK, ack=peer.snd_nxt)  # an old SYN: our ACK, the record stays
    assert core.tcp.time_wait == {tw.key: tw}
    new_isn = seq_add(peer.snd_nxt, 100_000)
    [synack] = Peer(core, isn=new_isn, ts=False).send(SYN, now=T0 + 3)
    check_tcp(synack, flags=SYN | ACK, ack=seq_add(new_isn, 1))
    assert core.tcp.time_wait == {}
    [new] = core.tcp.connections.values()
    assert new.state == S.SYN_RECEIVED
    assert stats(core).connections_closed == 1
    assert core.tcp.port_use == {OUR_PORT: 1}


def test_the_bound_recycles_the_oldest_and_counts_it() -> None:
    core = tcp_core(msl=MSL, time_wait_limit=2)
    keys = []
    for port in (40001, 40002, 40003):
        _conn, _peer, tw = closed_into_time_wait(core, port=port)
        keys.append(tw.key)
    assert list(core.tcp.time_wait) == keys[1:]
    assert stats(core).time_wait_recycled == 1
    assert stats(core).connections_closed == 1
    core.run_timers(T0 + 100)
    assert core.tcp.time_wait == {} and stats(core).connections_closed == 3


def test_a_full_table_recycles_in_expiry_order_through_removals_and_restarts() -> None:
    """Every new record at the bound ends the oldest, whatever left the table before it: records
    taken out of the middle (reset), and one whose 2MSL restarted (it moves to the end).  The
    table is an OrderedDict so that finding the oldest does not walk past what earlier removals
    at its front left behind."""
    core = tcp_core(msl=MSL, time_wait_limit=4)
    expected: list[tuple[int, int, int]] = []
    recycled = 0
    for i, port in enumerate(range(40001, 40041)):
        _conn, peer, tw = closed_into_time_wait(core, port=port, now=T0 + 1 + i * 0.01)
        expected.append(tw.key)
        if len(expected) > 4:
            expected.pop(0)
            recycled += 1
        if i % 7 == 3:  # a reset at RCV.NXT ends the newest at once: the table's end
            assert peer.send(RST, now=T0 + 1.2 + i * 0.01, seq=peer.snd_nxt) == []
            expected.remove(tw.key)
        elif i % 5 == 1 and len(expected) > 1:  # the oldest's FIN again: 2MSL restarts, to the end
            oldest = core.tcp.time_wait[expected[0]]
            old_peer = Peer(core, port=oldest.key[2])
            old_peer.snd_nxt = oldest.rcv_nxt
            [ack] = old_peer.send(
                FIN | ACK, now=T0 + 1.2 + i * 0.01, seq=seq_add(oldest.rcv_nxt, -1), ack=oldest.snd_nxt
            )
            check_tcp(ack, dport=oldest.key[2], flags=ACK)
            expected.append(expected.pop(0))
        assert list(core.tcp.time_wait) == expected
        assert stats(core).time_wait_recycled == recycled


def test_a_pair_in_time_wait_is_not_reused_by_connect() -> None:
    core = tcp_core(msl=MSL, ephemeral_first=OUR_PORT, ephemeral_last=OUR_PORT + 1)
    closed_into_time_wait(core)
    with pytest.raises(OSError) as info:
        core.tcp.connect(int(PEER_IP), PEER_PORT, T0 + 2, local_port=OUR_PORT)
    assert info.value.errno == errno.EADDRINUSE
    for _ in range(8):  # the ephemeral choice starts at random: never the pair in TIME_WAIT
        assert core.tcp._ephemeral_port(int(PEER_IP), PEER_PORT) == OUR_PORT + 1


def test_an_icmp_error_for_a_pair_in_time_wait_is_ignored() -> None:
    core = tcp_core(msl=MSL)
    closed_into_time_wait(core)
    error = errno.EHOSTUNREACH
    assert not core.tcp.tcp_ctlinput(OUR_PORT, int(PEER_IP), PEER_PORT, error, 0, OUR_ISS + 1, T0 + 2)
    assert core.tcp.time_wait


def test_a_connection_the_application_still_holds_reads_closed_at_the_end() -> None:
    """shutdown() without close(): the record keeps the object, which reads TIME_WAIT and then
    CLOSED as before; close() in TIME_WAIT lets the record drop it."""
    core = tcp_core(msl=MSL)
    conn, peer = open_active(core)
    conn.shutdown(T0 + 1)
    peer.receive()
    peer.send(ACK, now=T0 + 1.05)
    peer.send(FIN | ACK, now=T0 + 1.1)
    [tw] = core.tcp.time_wait.values()
    assert tw.conn is conn and conn.state == S.TIME_WAIT
    conn.close(T0 + 2)
    assert tw.conn is None
    core.run_timers(tw.expiry)
    assert core.tcp.time_wait == {} and stats(core).connections_closed == 1


def test_aborting_a_held_connection_in_time_wait_ends_its_record() -> None:
    """abort() on the object the application still holds: counted dropped once, the record and
    its port go, nothing is sent (no RST from TIME_WAIT, as before)."""
    core = tcp_core(msl=MSL)
    conn, peer = open_active(core)
    conn.shutdown(T0 + 1)
    peer.receive()
    peer.send(ACK, now=T0 + 1.05)
    peer.send(FIN | ACK, now=T0 + 1.1)
    assert core.tcp.time_wait
    conn.abort(T0 + 2)
    assert conn.state == S.CLOSED
    assert core.tcp.time_wait == {} and core.tcp.port_use == {}
    assert stats(core).connections_dropped == 1 and stats(core).connections_closed == 0
    assert peer.receive() == []
    assert len(core.timers) == 0


def test_a_record_is_a_small_fraction_of_a_connection() -> None:
    """The point of the record: bytes per TIME_WAIT entry (the record, its key and the table
    slot), measured with tracemalloc, against the connection object it replaces."""
    count = 200
    core = tcp_core(msl=MSL, time_wait_limit=count)
    conns = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            conns.append(closed_into_time_wait(core, port=20000 + index)[0])
        with_conns = tracemalloc.get_traced_memory()[0]
        conns.clear()
        gc.collect()
        only_records = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_record = (only_records - before) / count
    per_connection = (with_conns - before) / count
    assert len(core.tcp.time_wait) == count
    print(f"bytes per TIME_WAIT: record {per_record:.0f}, connection {per_connection:.0f}")
    assert per_record < 600, per_record
    assert per_connection > 4 * per_record, (per_connection, per_record)


async def test_yastack_stat_lists_the_records(autojump_clock: trio.testing.MockClock) -> None:
    """``yastack stat`` (core_snapshot) counts and lists TIME_WAIT records as it listed the
    connections they replace."""
    async with two_stacks(41) as (a, b):
        client, server, _listener = await connected_pair(a, b)
        await server.aclose()  # B closes first: B holds TIME_WAIT
        assert await client.receive_some() == b""
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert len(b.core.tcp.time_wait) == 1 and not b.core.tcp.connections
        snapshot = core_snapshot(b, None, {})
        tcp = snapshot["tcp"]
        assert tcp["states"] == {"TIME_WAIT": 1}
        assert tcp["connection_count"] == 1
        [listed] = tcp["connections"]
        assert listed["state"] == "TIME_WAIT" and listed["remote"].startswith(f"{A_IP}:")
        assert listed["local"] == f"{B_IP}:5001"
