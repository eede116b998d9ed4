"""The active side of a short connection (connect, SYN_SENT -> ESTABLISHED, the peer closing
first -> CLOSE_WAIT -> LAST_ACK, or both closing at once -> CLOSING -> TIME_WAIT) costs the
client less without changing a frame or a counter: each shortcut is held to the path it skips,
side by side (``bench_memory_wire.py``'s connections case is this cycle, both ends ours)."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address
from typing import Any

import pytest
import trio
import trio.testing
from helpers import check_accounting
from socket_helpers import B_IP, two_stacks
from tcp_helpers import T0, Peer, open_active, seq_add, tcp_core
from test_tcp_fastpath import connection_state

from trio_yastack.socket_api import _socket
from trio_yastack.stack import StackCore
from trio_yastack.stack.tcp._conn import TcpConnection
from trio_yastack.stack.tcp._layer import TcpLayer
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TcpOptions


async def test_a_connect_that_parked_returns_without_another_scheduler_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``connect`` parks until the handshake completes and returns in the step that wakes it,
    as trio's own connect returns after its ``wait_writable``: two steps of the connecting task
    (the SYN out and the park, then the return).  Was: a third, a ``checkpoint()`` after the
    wake-up (a task step and a scheduler pass more for every connection)."""
    async with two_stacks() as (a, b):
        listener = b.socket()
        await listener.bind((B_IP, 6101))
        listener.listen(4)
        client = a.socket()
        steps = 0
        done = trio.Event()

        class Steps(trio.abc.Instrument):
            def before_task_step(self, task: trio.lowlevel.Task) -> None:
                nonlocal steps
                if task.name.endswith("<locals>.connect"):
                    steps += 1

        async def connect() -> None:
            await client.connect((B_IP, 6101))
            done.set()

        instrument = Steps()
        with trio.fail_after(60):
            trio.lowlevel.add_instrument(instrument)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connect)
                    await done.wait()
            finally:
                trio.lowlevel.remove_instrument(instrument)
            assert steps == 2
            assert client.getpeername() == (B_IP, 6101)
            accepted, _ = await listener.accept()
        # still a checkpoint: a connect in a cancelled scope raises before it sends anything
        late = a.socket()
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await late.connect((B_IP, 6101))
        assert a.statistics().tcp.active_opens == 1  # the cancelled connect sent no SYN
        for sock in (client, accepted, listener, late):
            sock.close()


# -- the last segment in of the passive closer (LAST_ACK) and of a simultaneous close (CLOSING) --


def _burst(
    core: StackCore, peer: Peer, flags: int, payload: bytes = b"", *, now: float, **fields: Any
) -> Any:
    """``peer.send`` as the runtime delivers it: the segment in a burst of its own (the fast
    path's classifier sees it), the output at the burst's end; what the core sent back."""
    frame = peer.frame(flags, payload, now=now, **fields)
    if fields.get("seq") is None:
        peer.snd_nxt = seq_add(peer.snd_nxt, len(payload) + (1 if flags & TCP_FIN else 0))
    core.begin_burst()
    core.ether_input_burst([frame], now)
    core.end_burst(now)
    return peer.receive()


def _old_ts(peer: Peer, now: float) -> TcpOptions:
    """Timestamps a second older than the peer's last: PAWS rejects the segment."""
    return TcpOptions(timestamps=((peer.tsval(now) - 2000) & 0xFFFF_FFFF, peer.ts_recent))


_FIN_ACK = TCP_ACK | TCP_FIN
#: the peer's ISN in the active opens here (its SYN-ACK's sequence number)
PEER_ISN_ACTIVE = 0xFFFF_FFF0
#: name: (who closes first: "peer" (we are the client of a ``Connection: close`` server: LAST_ACK)
#: or "both" (our FIN and the peer's cross: CLOSING)), then the peer's segments after our FIN,
#: each (flags, what it acknowledges: "all" or "data" (not our FIN), how: "" / "old-ts" /
#: "again" (the peer's FIN sent again), whether ``final_ack`` takes it)
_FINAL_CASES: dict[str, tuple[str, list[tuple[int, str, str, bool]]]] = {
    "last-ack": ("peer", [(TCP_ACK, "all", "", True)]),
    "last-ack-with-psh": ("peer", [(TCP_ACK | TCP_PSH, "all", "", True)]),
    "last-ack-data-acked-first": ("peer", [(TCP_ACK, "data", "", False), (TCP_ACK, "all", "", True)]),
    "last-ack-old-timestamp": ("peer", [(TCP_ACK, "all", "old-ts", False), (TCP_ACK, "all", "", True)]),
    "last-ack-fin-again": ("peer", [(_FIN_ACK, "all", "again", False), (TCP_ACK, "all", "", True)]),
    "closing": ("both", [(TCP_ACK, "all", "", True)]),
    "closing-old-timestamp": ("both", [(TCP_ACK, "all", "old-ts", False), (TCP_ACK, "all", "", True)]),
}


def _final(monkeypatch: pytest.MonkeyPatch, case: str, fast: bool) -> tuple[StackCore, list[Any]]:
    """An active open near the 2**32 wrap, a request out; the peer's reply and FIN (then our
    close: LAST_ACK), or our close first crossing the peer's FIN (CLOSING); then the case's
    segments, each in a burst of its own: what left after each, the connection's fields,
    TIME_WAIT, the next deadline and the counters."""
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_FFF8)
    core = tcp_core(seed=37)
    core.fast_path = fast
    core.autocork = True
    conn, peer = open_active(core, isn=0xFFFF_FFF0)
    now = T0 + 1
    conn.send(b"x", now)
    core.run_pending_output(now)
    seen: list[Any] = [peer.receive()]
    closes_first, steps = _FINAL_CASES[case]
    if closes_first == "peer":
        seen.append(_burst(core, peer, _FIN_ACK | TCP_PSH, b"y", now=now))
        seen.append(conn.receive(10, now))
        conn.close(now)
    else:
        conn.close(now)
        core.run_pending_output(now)
        seen.append(peer.receive())  # our FIN; the peer's FIN crosses it, acknowledging the request
        seen.append(_burst(core, peer, _FIN_ACK, b"", now=now, ack=seq_add(peer.rcv_nxt, -1)))
    core.run_pending_output(now)
    seen.append(peer.receive())
    seen.append((conn.state, connection_state(conn)))
    for flags, acks, how, _lean in steps:
        now += 0.01
        fields: dict[str, Any] = {"ack": seq_add(peer.rcv_nxt, -1) if acks == "data" else peer.rcv_nxt}
        if how == "old-ts":  # dropped: the peer sends the same sequence number again
            fields["options"], fields["seq"] = _old_ts(peer, now), peer.snd_nxt
        elif how == "again":
            fields["seq"] = seq_add(peer.snd_nxt, -1)
        seen.append(_burst(core, peer, flags, now=now, **fields))
        seen.append((conn.state, connection_state(conn), len(core.tcp.time_wait)))
    seen.append((core.next_deadline(), core.statistics()))
    return core, seen


@pytest.mark.parametrize("case", list(_FINAL_CASES))
def test_the_peers_ack_of_our_fin_after_its_own_taken_lean_as_the_general_path_takes_it(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """``final_ack`` (fast path on) takes the peer's ACK of our FIN in LAST_ACK (-> CLOSED)
    and CLOSING (-> TIME_WAIT) in a few lines; whatever it declines (an ACK short of our FIN,
    an old timestamp, the peer's FIN again) goes on to ``segment_arrives``.  Same frames,
    fields, TIME_WAIT record, next deadline and counters as the general path, step by step."""
    calls: list[bool] = []
    lean = TcpConnection.final_ack

    def wrapper(self: TcpConnection, *args: Any) -> bool:
        took = bool(lean(self, *args))
        calls.append(took)
        return took

    monkeypatch.setattr(TcpConnection, "final_ack", wrapper)
    on_core, on = _final(monkeypatch, case, True)
    taken = [took for took in calls if took]
    del calls[:]
    off_core, off = _final(monkeypatch, case, False)
    assert on == off
    assert calls == []  # nothing lean with the fast path off
    closes_first, steps = _FINAL_CASES[case]
    assert len(taken) == sum(1 for *_rest, took in steps if took)
    assert on[-2][0] == (0 if closes_first == "peer" else 10)  # CLOSED, or TIME_WAIT
    assert on[-2][2] == (0 if closes_first == "peer" else 1)
    check_accounting(on_core)
    check_accounting(off_core)


def test_a_numeric_peer_address_is_parsed_once_with_ipaddress_s_rules() -> None:
    """``_ipv4`` (every connect and ``sendto``) reads a text address through a bounded cache of
    ``ipaddress``'s parse: the same numbers, the same errors for what ``IPv4Address`` refuses
    (not cached), other host types as before."""
    _socket._ip_number.cache_clear()
    assert _socket._ipv4(("198.18.0.1", 80)) == (int(IPv4Address("198.18.0.1")), 80)
    assert _socket._ipv4(("198.18.0.1", 81)) == (int(IPv4Address("198.18.0.1")), 81)
    assert _socket._ip_number.cache_info().hits == 1
    assert _socket._ipv4((0xC6120001, 80)) == (0xC6120001, 80)  # an int, as IPv4Address takes it
    assert _socket._ipv4(("", 5)) == (0, 5)
    for bad in ("198.18.0", "01.2.3.4", "example.com", "::1"):
        with pytest.raises(OSError) as refused:
            _socket._ipv4((bad, 80))
        assert refused.value.errno == errno.EINVAL
    assert _socket._ip_number.cache_info().currsize == 1  # errors are not remembered
    assert _socket._ip_number.cache_info().maxsize == 4096
    with pytest.raises(ValueError):
        _socket._ipv4("198.18.0.1")
    with pytest.raises(OverflowError):
        _socket._ipv4(("198.18.0.1", 70000))


def _crossing_fins(one_burst: bool, fast: bool) -> tuple[StackCore, list[Any]]:
    """We close; the peer's FIN crosses ours (acknowledging up to it, not beyond: CLOSING),
    then the peer's ACK of our FIN, in one burst or two: what left after each burst, our
    state, the TIME_WAIT table, the counters."""
    core = tcp_core(seed=41)
    core.fast_path = fast
    core.autocork = True
    conn, peer = open_active(core, isn=0xFFFF_FFF0)
    now = T0 + 1
    conn.close(now)
    core.run_pending_output(now)
    [fin] = peer.receive()
    assert fin.flags == TCP_ACK | TCP_FIN
    peer_fin = peer.frame(_FIN_ACK, now=now, ack=seq_add(peer.rcv_nxt, -1))
    peer.snd_nxt = seq_add(peer.snd_nxt, 1)
    ack = peer.frame(TCP_ACK, now=now)
    seen: list[Any] = []
    for burst in [[peer_fin, ack]] if one_burst else [[peer_fin], [ack]]:
        core.begin_burst()
        core.ether_input_burst(burst, now)
        core.end_burst(now)
        seen.append([(seg.flags, seg.seq, seg.ack) for seg in peer.receive()])
    seen.append((conn.state, len(core.tcp.time_wait), core.statistics()))
    core.run_timers(now + 1.0)  # (a retransmission timer left behind would fire here)
    seen.append(peer.receive())
    return core, seen


@pytest.mark.parametrize("one_burst", [True, False])
def test_a_crossing_fin_is_acknowledged_when_the_ack_of_ours_follows_in_the_same_burst(
    one_burst: bool,
) -> None:
    """Was a bug (fixed): the peer's FIN crossing ours puts us in CLOSING with an ACK owed,
    which the burst sends at its end; when the peer's ACK of our FIN came in the same burst,
    it took us to TIME_WAIT "without an answer" and the owed ACK never left: the peer sat in
    CLOSING and retransmitted its FIN after its RTO (on the memory wire's connections case,
    both ends ours, one connection in ten: ~440 RTOs and retransmissions per 2 000
    connections, as wt-mwconn18 found).  Now the owed ACK leaves as TIME_WAIT
    begins; in two bursts there is still exactly one ACK.  Fast path on and off alike."""
    on_core, on = _crossing_fins(one_burst, True)
    off_core, off = _crossing_fins(one_burst, False)
    assert on == off
    peer_fin_end = seq_add(PEER_ISN_ACTIVE, 2)  # its SYN and its FIN
    acks = [segment for burst in on[:-2] for segment in burst]
    assert len(acks) == 1 and acks[0][0] == TCP_ACK and acks[0][2] == peer_fin_end
    assert on[-2][:2] == (10, 1)  # TIME_WAIT, its record
    assert on[-1] == []  # nothing left to retransmit
    check_accounting(on_core)
    check_accounting(off_core)
