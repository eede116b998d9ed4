"""The lean ACK of a keep-alive request (``_input._ack_all``) against the general functions.

``ack_and_data_input`` hands the ACK of a segment to ``_ack_all`` first: when everything in flight
is acknowledged and no probe is outstanding it does ``_process_ack``'s and ``_ack_advances``'s work
itself, else it declines and they run.  Here one connection is driven twice through the same
hypothesis-drawn stream of requests, responses, partial and duplicate ACKs, window changes,
timestamps and timer firings -- once as the stack runs, once with ``_ack_all`` declining everything
-- and every burst must leave the same frames, connection fields (congestion control and RACK's
state included), sent log, timers and counters.  The stream's ``target`` steers hypothesis to
streams the lean function takes; a fixed keep-alive exchange shows it takes every request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import check_accounting
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from tcp_helpers import (
    OUR_PORT,
    PEER_PORT,
    T0,
    build_tcp_frame,
    open_passive,
    seq_add,
    tcp_core,
    tcp_segments,
)
from test_tcp_fastpath import connection_state

from trio_yastack.stack import StackCore
from trio_yastack.stack.tcp import _fastpath, _input
from trio_yastack.stack.tcp._layer import TcpLayer
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_PSH, TcpOptions

_MASK = 0xFFFF_FFFF

#: a step: (what, size, window, clock step in ms, timestamp echo: 0 none, 1 ours, 2 an old one)
Step = tuple[str, int, int, int, int]
KINDS = ("request", "request", "request", "partial", "pure", "dup", "respond", "respond", "wait")


@st.composite
def scripts(draw: st.DrawFn) -> tuple[dict[str, Any], list[Step]]:
    config = {
        "congestion_control": draw(st.sampled_from(["cubic", "newreno"])),
        "rack": draw(st.booleans()),
        "sack": draw(st.sampled_from([True, True, False])),
    }
    step = st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 4000),
        st.sampled_from([0xFFFF, 0xFFFF, 0x8000, 0]),
        st.sampled_from([0, 1, 30, 250, 1200]),
        st.sampled_from([1, 1, 1, 0, 2]),
    )
    return config, draw(st.lists(step, min_size=1, max_size=24))


class _Run:
    """One connection, its peer's sequence state, and what each step left."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> None:
        monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_FF00)
        self.core: StackCore = tcp_core(seed=7, **config)
        self.core.autocork = True  # as under the runtime: sends go out at the end of the turn
        _listener, self.conn, peer = open_passive(self.core, isn=0xFFFF_FFF0)  # ISNs just below 2**32
        self.conn.nodelay = True  # trio's SocketStream sets TCP_NODELAY
        self.conn.waiter = object()  # a task is parked on it: wake-ups are marked
        self.seq, self.ack = peer.snd_nxt, peer.rcv_nxt
        self.sent = 0  # how much of ours the peer has seen (it acknowledges up to it)
        self.ts_echo = 0
        self.ts = 1000
        self.now = T0 + 1.0
        self.record: list[Any] = []

    def step(self, what: str, size: int, window: int, ms: int, echo: int) -> None:
        core, conn = self.core, self.conn
        self.now += ms / 1000
        self.ts += 1 + ms
        if what == "wait":
            core.run_timers(self.now)  # a TLP or RTO may fire: the next ACK meets a probe outstanding
        elif what == "respond":
            conn.receive(1 << 20, self.now)
            conn.send(bytes(size % 3000 + 1), self.now)
        else:
            in_flight = (conn.snd_max - self.ack) & _MASK
            if what == "partial":
                self.ack = seq_add(self.ack, min(size % 1500 + 1, in_flight))
            elif what in ("request", "pure"):
                self.ack = seq_add(self.ack, in_flight)  # all of it
            payload = bytes(size % 200 + 1) if what in ("request", "partial") else b""
            tsecr = (0, self.ts_echo, (self.ts_echo - 700_000) & _MASK)[echo]
            frame = build_tcp_frame(
                PEER_PORT, OUR_PORT, self.seq, self.ack, TCP_ACK | (TCP_PSH if payload else 0),
                payload=payload, window=window, options=TcpOptions(timestamps=(self.ts & _MASK, tsecr)),
            )  # fmt: skip
            self.seq = seq_add(self.seq, len(payload))
            core.begin_burst()
            core.ether_input_burst([frame], self.now)
            core.end_burst(self.now)
            core.run_timers(self.now)
        core.run_pending_output(self.now)
        frames = [bytes(f) for f in core.take_outbox()]
        for segment in tcp_segments(frames):
            if segment.options.timestamps is not None:
                self.ts_echo = segment.options.timestamps[0]
        rack = conn.rack.entries() if conn.rack is not None else None
        self.record.append(
            (
                frames,
                connection_state(conn),
                rack,
                [type(owner).__name__ for owner in core.take_ready()],
                core.next_deadline(),
                core.statistics(),
            )
        )


def _drive(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], script: list[Step], lean: Callable[..., bool]
) -> tuple[_Run, int]:
    taken = 0

    def counting(*args: Any) -> bool:
        nonlocal taken
        result = lean(*args)
        taken += result
        return result

    monkeypatch.setattr(_fastpath, "_ack_all", counting)
    run = _Run(monkeypatch, config)
    for step in script:
        run.step(*step)
    monkeypatch.undo()
    return run, taken


@given(scripts())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_lean_ack_leaves_what_the_general_path_leaves(
    monkeypatch: pytest.MonkeyPatch, drawn: tuple[dict[str, Any], list[Step]]
) -> None:
    config, script = drawn
    lean, taken = _drive(monkeypatch, config, script, _input._ack_all)
    general, none = _drive(monkeypatch, config, script, lambda *args: False)
    assert none == 0
    for index, (got, want) in enumerate(zip(lean.record, general.record, strict=True)):
        assert got == want, f"step {index}: {script[index]}"
    check_accounting(lean.core)
    target(taken)  # streams the lean function takes


def test_a_keep_alive_exchange_takes_the_lean_ack_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request acknowledging the whole last response goes through ``_ack_all``; the
    general path leaves the same frames and state (so the test above can tell a difference)."""
    script: list[Step] = [("respond", 85, 0xFFFF, 1, 1)]
    script += [("request", 40, 0xFFFF, 1, 1), ("respond", 85, 0xFFFF, 0, 1)] * 20
    config = {"congestion_control": "cubic", "rack": True, "sack": True}
    lean, taken = _drive(monkeypatch, config, script, _input._ack_all)
    general, _ = _drive(monkeypatch, config, script, lambda *args: False)
    assert taken == 20
    assert lean.record == general.record
    assert lean.conn.snd_una == lean.conn.snd_max - 86 and lean.conn.rack is not None
    assert [len(frames) for frames, *_ in lean.record] == [1] + [0, 1] * 20  # one frame per response


def test_the_lean_ack_declines_a_partial_ack_and_an_outstanding_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two of the ACKs it must leave to the general functions: one that leaves data in flight,
    and one that meets a loss probe outstanding (RACK's TLP fired before it)."""
    config = {"congestion_control": "cubic", "rack": True, "sack": True}
    partial: list[Step] = [("respond", 2999, 0xFFFF, 1, 1), ("partial", 99, 0xFFFF, 1, 1)]
    _run, taken = _drive(monkeypatch, config, partial, _input._ack_all)
    assert taken == 0
    probe: list[Step] = [
        ("respond", 85, 0xFFFF, 1, 1),
        ("wait", 0, 0xFFFF, 1200, 1),
        ("request", 40, 0xFFFF, 1, 1),
    ]
    run, taken = _drive(monkeypatch, config, probe, _input._ack_all)
    assert run.record[1][1]["rack"]["tlp_end"] >= 0  # the probe went
    assert run.conn.snd_una == run.conn.snd_max  # all acknowledged, by the general functions
    assert taken == 0


def test_a_pure_ack_moving_the_window_takes_the_lean_ack_and_wakes_the_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pure ACK of the whole response that also changes the window (not header prediction's):
    the lean function takes it, and the writer parked on the connection is woken (room in the
    send buffer), as ``_ack_advances`` wakes it."""
    config = {"congestion_control": "newreno", "rack": True, "sack": True}
    script: list[Step] = [("respond", 85, 0xFFFF, 1, 1), ("pure", 0, 0x8000, 1, 1)]
    lean, taken = _drive(monkeypatch, config, script, _input._ack_all)
    general, _ = _drive(monkeypatch, config, script, lambda *args: False)
    assert taken == 1
    assert lean.record == general.record
    assert lean.record[1][3] == ["TcpConnection"]  # woken by the ACK alone
    assert lean.conn.snd_una == lean.conn.snd_max and lean.conn.t_rexmt == 0.0
