"""Autocorking (Linux's ``tcp_autocorking``): tcp_output holds the rest of the send queue, less than
a full frame, while a frame of the same connection still waits in the outbox, and the poll loop
sends it a turn or two later, before it sleeps; the application's next write, made while the loop
turns, joins it in a full frame.

Tier 2 drives one ``StackCore`` by hand (``cork_tails`` on, the outbox taken as the runtime's flush
takes it); tier 3 runs two stacks with their poll loops on a ``memory_wire`` under the MockClock.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from tcp_helpers import T0, open_passive, tcp_core, tcp_segments
from tcp_sim_helpers import (
    DropPort,
    check_no_internal_errors,
    connected_pair,
    connection,
    make_payload,
    receive_all,
    send_all_then_eof,
    sha256,
    tcp_segment,
    two_stacks,
)

from trio_yastack.dispatch import AUTOCORK_ENV
from trio_yastack.stack import StackCore
from trio_yastack.stack.wire.tcp import TCP_FIN

MSS = 1448  # 1500 - 40 - 12 (timestamps)


def corking_connection(*, nodelay: bool = True, cork: bool = True) -> tuple[StackCore, Any]:
    core = tcp_core(seed=3)
    core.cork_tails = cork
    _listener, conn, _peer = open_passive(core)
    conn.nodelay = nodelay
    core.take_outbox()
    return core, conn


def taken(core: StackCore) -> list[bytes]:
    """The outbox, taken as the runtime's flush takes it (a new ``tx_gen``)."""
    return [bytes(frame) for frame in core.take_outbox()]


def lengths(core: StackCore) -> list[int]:
    """The payload lengths of the frames in the outbox (taken, as the runtime's flush does);
    without TSO a large segment leaves cut into MSS-sized frames (GSO)."""
    return [len(s.payload) for s in tcp_segments(taken(core))]


def test_a_single_small_write_goes_at_once() -> None:
    core, conn = corking_connection()
    conn.send(b"x" * 100, T0 + 1)
    assert lengths(core) == [100]
    assert not core.corked and core.statistics().tcp.counters["autocorked"] == 0


def test_a_tail_behind_our_frame_waits_for_the_release() -> None:
    core, conn = corking_connection()
    conn.send(b"a" * 3000, T0 + 1)  # one frame (a TSO segment of 2 MSS and a rest)
    conn.send(b"b" * 100, T0 + 1)  # the same turn: our frame is still in the outbox
    assert conn in core.corked and core.statistics().tcp.counters["autocorked"] == 1
    assert lengths(core) == [MSS, MSS, 104]
    assert conn.snd_nxt == conn.snd_una + 3000
    core.release_corked(T0 + 1)  # the poll loop, before it sleeps
    assert not core.corked
    [tail] = tcp_segments(taken(core))
    assert tail.payload == b"b" * 100
    assert conn.snd_nxt == conn.sndbuf.end


def test_without_cork_tails_the_tail_goes_at_once() -> None:
    core, conn = corking_connection(cork=False)
    conn.send(b"a" * 3000, T0 + 1)
    conn.send(b"b" * 100, T0 + 1)
    assert lengths(core) == [MSS, MSS, 104, 100]
    assert not core.corked


def test_a_write_that_joins_the_tail_makes_it_part_of_a_full_frame() -> None:
    core, conn = corking_connection()
    conn.send(b"a" * 3000, T0 + 1)
    conn.send(b"b" * 100, T0 + 1)  # held
    core.take_outbox()
    conn.send(b"c" * 5000, T0 + 1.001)  # the application's next write, before the release
    segments = tcp_segments(taken(core))
    assert [len(s.payload) for s in segments] == [MSS, MSS, MSS, 5100 - 3 * MSS]  # one GSO segment
    assert b"".join(s.payload for s in segments) == b"b" * 100 + b"c" * 5000
    core.release_corked(T0 + 1.001)
    assert core.take_outbox() == []  # nothing left to release


def test_a_64k_write_sends_a_full_tso_frame_and_holds_its_rest() -> None:
    """The case of RESULTS.md: a 64 KiB write is 45 MSS (65 160 bytes, the most an IPv4 TSO
    frame holds) and 376 bytes."""
    core, conn = corking_connection()
    conn.cc.cwnd = conn.snd_wnd = 1 << 20
    conn.send(bytes(1 << 16), T0 + 1)
    assert lengths(core) == [MSS] * 45  # one segment of 45 MSS, cut by GSO
    assert conn in core.corked
    conn.send(bytes(1 << 16), T0 + 1.001)
    assert lengths(core) == [MSS] * 45  # 376 + 64 KiB: 45 MSS again, and a rest held
    core.release_corked(T0 + 1.001)
    assert lengths(core) == [2 * (1 << 16) - 90 * MSS]


def test_nagle_decides_first() -> None:
    """Without TCP_NODELAY a short tail behind data in flight waits for the ACK (RFC 896), as
    before: autocorking does not hold it and the release does not send it."""
    core, conn = corking_connection(nodelay=False)
    conn.send(b"a" * 3000, T0 + 1)
    conn.send(b"b" * 100, T0 + 1)
    assert not core.corked and core.statistics().tcp.counters["autocorked"] == 0
    assert lengths(core) == [MSS, MSS]  # Nagle holds the 104 bytes after them too
    core.release_corked(T0 + 1)
    assert core.take_outbox() == []
    assert conn.snd_nxt == conn.snd_una + 2 * MSS


def test_a_fin_is_never_held() -> None:
    core, conn = corking_connection()
    conn.send(b"a" * 3000, T0 + 1)
    conn.send(b"b" * 100, T0 + 1)
    conn.shutdown(T0 + 1)  # the FIN follows the tail: both go now
    segments = tcp_segments(taken(core))
    assert [len(s.payload) for s in segments] == [MSS, MSS, 104, 100]
    assert segments[-1].flags & TCP_FIN


def test_release_before_a_generation_keeps_the_newer_tails() -> None:
    core, conn = corking_connection()
    conn.send(b"a" * 3000, T0 + 1)
    conn.send(b"b" * 100, T0 + 1)
    gen = core.corked[conn]
    core.release_corked(T0 + 1, gen)  # held in generation gen: not before it
    assert conn in core.corked
    core.take_outbox()
    core.release_corked(T0 + 1, gen + 1)
    assert not core.corked
    assert lengths(core) == [100]


# -- tier 3: the poll loops ------------------------------------------------------------------------


def data_lengths(port: DropPort) -> list[int]:
    segments = [tcp_segment(bytes(frame)) for _time, frame in port.sent]
    return [s.payload_len for s in segments if s is not None and s.payload_len]


async def bulk(seed: int) -> tuple[str, str, list[int], int]:
    """8 MiB (and 100 bytes) from A to B in 64 KiB writes over a TSO wire: (sent hash, received
    hash, A's data frame lengths, A's autocorked count)."""
    recorder: list[DropPort] = []

    def wrap(port: Any) -> Any:
        recorder.append(DropPort(port, lambda frame: False, record=True))
        return recorder[0]

    payload = make_payload(seed, (8 << 20) + 100)
    async with two_stacks(seed, wrap_a=wrap, offloads=True) as (a, b):
        client, server, listener = await connected_pair(a, b)
        received: list[bytes] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def sink() -> None:
                    received.append(await receive_all(server))

                nursery.start_soon(sink)
                await send_all_then_eof(client, payload)
        check_no_internal_errors(a, b)
        corked = a.statistics().tcp.counters["autocorked"]
        await client.aclose()
        await server.aclose()
        await listener.aclose()
    return sha256(payload), sha256(received[0]), data_lengths(recorder[0]), corked


async def test_bulk_over_the_loops_sends_fewer_short_frames(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes arrive with autocorking on and off; on, A sends fewer data frames, and
    fewer of them shorter than a full TSO frame (the 376-byte rests of 64 KiB writes)."""
    results = {}
    for cork in ("0", "1"):
        monkeypatch.setenv(AUTOCORK_ENV, cork)
        results[cork] = await bulk(seed=5)
    for sent, got, _lengths, _corked in results.values():
        assert sent == got
    off, on = results["0"][2], results["1"][2]
    assert results["0"][3] == 0 and results["1"][3] > 0
    short_off = sum(1 for n in off if n < MSS)
    short_on = sum(1 for n in on if n < MSS)
    assert short_on < short_off / 2, (short_on, short_off)
    assert len(on) < len(off)


async def test_a_held_tail_waits_for_no_timer(autojump_clock: trio.testing.MockClock) -> None:
    """A 64 KiB write and nothing after it: its 376-byte rest is held behind the TSO frame and
    released by A's poll loop before it sleeps -- not by B's ACK (dropped here) nor by a timer:
    B has all of it without simulated time passing."""
    acks_lost = [False]
    ports: list[DropPort] = []

    def wrap_b(port: Any) -> Any:
        ports.append(DropPort(port, lambda frame: acks_lost[0]))
        return ports[0]

    async with two_stacks(7, offloads=True, wrap_b=wrap_b) as (a, b):
        client, server, listener = await connected_pair(a, b)
        conn = connection(client)

        async def transfer(size: int) -> None:
            await client.send_all(bytes(size))
            got = 0
            while got < size:
                got += len(await server.receive_some(1 << 17))

        with trio.fail_after(10):
            await transfer(1 << 19)  # B's scaled window known: it holds more than 64 KiB
        assert conn.snd_wnd > 1 << 17
        conn.cc.cwnd = 1 << 20  # and so does cwnd (the sender's own choice, as after slow start)
        corked, start = a.statistics().tcp.counters["autocorked"], trio.current_time()
        acks_lost[0] = True  # from now on only A's loop can send the tail
        with trio.fail_after(1):
            await transfer(1 << 16)
        assert trio.current_time() == start
        assert a.statistics().tcp.counters["autocorked"] == corked + 1
        assert not a.core.corked
        assert ports[0].dropped  # B's ACKs were lost indeed
        acks_lost[0] = False
        check_no_internal_errors(a, b)
        await client.aclose()
        await server.aclose()
        await listener.aclose()
