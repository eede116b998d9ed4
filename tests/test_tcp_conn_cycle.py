"""A short connection's cycle (SYN, the handshake's ACK with a request, the response and our
FIN, the peer's FIN+ACK, TIME_WAIT) costs the stack less without changing a frame or a counter:
each shortcut here is held to the general path it skips, side by side."""

from __future__ import annotations

import math
from typing import Any

import pytest
from helpers import PEER_IP, check_accounting
from tcp_helpers import OUR_PORT, PEER_PORT, T0, Peer, open_passive, seq_add, tcp_core
from test_tcp_fastpath import _fields, connection_state

from trio_yastack.stack import StackCore
from trio_yastack.stack.tcp import _conn
from trio_yastack.stack.tcp._buffers import NO_REASSEMBLY, NO_SACKS
from trio_yastack.stack.tcp._cc import NewReno
from trio_yastack.stack.tcp._conn import TcpConnection
from trio_yastack.stack.tcp._layer import TcpLayer
from trio_yastack.stack.tcp._states import ESTABLISHED
from trio_yastack.stack.tcp._timers import DELACK_PENDING_LIMIT
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TcpOptions

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


def _burst(
    core: StackCore, peer: Peer, flags: int, payload: bytes = b"", *, now: float, **fields: Any
) -> list[Any]:
    """``peer.send`` as the runtime delivers it: the segment in a burst of its own (the fast
    path's classifier sees it), the output at the burst's end; what the core sent back."""
    frame = peer.frame(flags, payload, now=now, **fields)
    if fields.get("seq") is None:
        peer.snd_nxt = seq_add(
            peer.snd_nxt, len(payload) + (1 if flags & TCP_FIN else 0) + (1 if flags & TCP_SYN else 0)
        )
    core.begin_burst()
    core.ether_input_burst([frame], now)
    core.end_burst(now)
    return peer.receive()


def _cycle(monkeypatch: pytest.MonkeyPatch, fast: bool) -> tuple[StackCore, list[Any]]:
    """One connection served as the runtime serves it (bursts, autocorking), curl-like peer:
    what left after each step, the connection's fields after the handshake's burst, counters."""
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_FFF0)
    core = tcp_core(seed=5)
    core.fast_path = fast
    core.autocork = True
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core, isn=0xFFFF_FF00)
    seen: list[Any] = [_burst(core, peer, TCP_SYN, now=T0)]
    now = T0 + 0.01
    ack = peer.frame(TCP_ACK, now=now)
    get = peer.frame(TCP_ACK | TCP_PSH, REQUEST, now=now)
    peer.snd_nxt = seq_add(peer.snd_nxt, len(REQUEST))
    core.begin_burst()
    core.ether_input_burst([ack, get], now)
    core.end_burst(now)
    conn = listener.accept()
    assert conn is not None
    seen.append(connection_state(conn))
    assert conn.receive(65536, now) == REQUEST
    conn.send(RESPONSE, now)
    conn.close(now)
    core.run_pending_output(now)
    out = [bytes(f) for f in core.take_outbox()]
    seen.append(out)
    peer.core.outbox = [*out]
    peer.receive()
    now += 0.01
    seen.append(_burst(core, peer, TCP_ACK | TCP_FIN, now=now))
    seen.append((len(core.tcp.time_wait), core.statistics()))
    return core, seen


def test_the_handshakes_ack_and_request_skip_the_layers_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ACK completing a passive open is a fast-path candidate whose connection is not yet
    ESTABLISHED: ``fast_input`` hands it to ``segment_arrives`` itself (ip_input and tcp_input's
    checks were the classifier's), and the request behind it in the burst is then predicted;
    the peer's FIN+ACK at the end is a candidate handed to ``segment_arrives`` the same way, and
    the SYN at the start one handed to the listener (``TcpLayer.syn_input``).
    Same frames, connection fields and counters as the Python path."""
    on_core, on = _cycle(monkeypatch, True)
    off_core, off = _cycle(monkeypatch, False)
    assert on == off
    assert len(on[3]) == 1 and on[3][0].flags == TCP_ACK  # the FIN acknowledged
    assert on[4][0] == 1  # the pair in TIME_WAIT
    assert len(on[0]) == 1 and on[0][0].flags == TCP_SYN | TCP_ACK
    assert on[0][0].options.mss and on[0][0].options.sack_permitted and on[0][0].options.timestamps
    assert on_core.fast_path_segments == 4 and off_core.fast_path_segments == 0
    check_accounting(on_core)
    check_accounting(off_core)


def test_the_out_of_order_queue_and_scoreboard_are_made_when_first_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection starts with the shared empty queue and scoreboard; the first segment above
    RCV.NXT and the first SACK block give it its own, and the shared ones stay empty (another
    connection never sees this one's blocks)."""
    core = tcp_core(seed=7)
    listener, conn, peer = open_passive(core)
    second = Peer(core, port=PEER_PORT + 1)
    second.send(TCP_SYN, now=T0)
    second.send(TCP_ACK, now=T0 + 0.05)
    other = listener.accept()
    assert other is not None and other.remote_port == PEER_PORT + 1
    assert conn.reasm is NO_REASSEMBLY and conn.scoreboard is NO_SACKS
    # out of order: 100 bytes one segment ahead
    peer.send(TCP_ACK, b"y" * 100, now=T0 + 1, seq=seq_add(peer.snd_nxt, 100))
    assert conn.reasm is not NO_REASSEMBLY and len(conn.reasm) == 100
    assert conn.reasm.limit == conn.rcvbuf.limit
    assert other.reasm is NO_REASSEMBLY and len(NO_REASSEMBLY) == 0
    peer.send(TCP_ACK, b"x" * 100, now=T0 + 1.01)  # fills the hole: both delivered
    assert conn.receive(1000, T0 + 1.01) == b"x" * 100 + b"y" * 100
    peer.snd_nxt = seq_add(peer.snd_nxt, 100)  # past the segment it sent ahead
    # SACK: segments out, the peer reports only the last one received
    conn.send(bytes(4 * 1000), T0 + 2)
    segments = peer.receive()
    assert len(segments) >= 2 and conn.scoreboard is NO_SACKS
    last = segments[-1]  # acknowledged nothing of it, the last segment SACKed
    block = ((last.seq, seq_add(last.seq, len(last.payload))),)
    peer.send(TCP_ACK, now=T0 + 2.05, ack=segments[0].seq, sack_blocks=block)
    assert conn.scoreboard is not NO_SACKS and conn.scoreboard.sacked_bytes == len(last.payload)
    assert other.scoreboard is NO_SACKS and len(NO_SACKS) == 0 and NO_SACKS.sacked_bytes == 0
    check_accounting(core)


@pytest.mark.parametrize("name", ["cubic", "newreno"])
@pytest.mark.parametrize("timestamps", [True, False])
def test_a_passive_opens_congestion_control_is_made_once_with_the_syns_mss(
    name: str, timestamps: bool
) -> None:
    """``passive=True`` leaves the congestion control to ``set_mss`` (the SYN's MSS): the same
    state as one made with the default MSS and set up again, and the shared placeholder untouched."""
    core = tcp_core(seed=9, congestion_control=name)
    syn = TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamps=(5, 0) if timestamps else None)
    made = []
    for passive in (True, False):
        conn = TcpConnection(core.tcp, OUR_PORT, int(PEER_IP), PEER_PORT, 1000, passive=passive)
        conn._take_syn_options(syn, 5 if timestamps else -1, from_syn_ack=False)
        assert type(conn.cc).name == name and conn.cc is not _conn._CC_AT_SYN
        made.append(connection_state(conn))
    assert made[0] == made[1]
    assert _fields(_conn._CC_AT_SYN) == _fields(NewReno(536))


def _peer_closes_first(fast: bool) -> tuple[StackCore, list[Any]]:
    """The peer's FIN reaches an ESTABLISHED connection (with the request's last bytes, then
    alone after data), we answer and close (LAST_ACK), the peer's last ACK; then the peer's FIN
    again (a retransmission to a pair no longer in the table): what left after each burst."""
    core = tcp_core(seed=11)
    core.fast_path = fast
    core.autocork = True
    _listener, conn, peer = open_passive(core)
    now = T0 + 1
    seen: list[Any] = [_burst(core, peer, TCP_ACK | TCP_PSH | TCP_FIN, b"the last bytes", now=now)]
    seen.append((conn.state, conn.receive(100, now), conn.receive(100, now)))
    conn.send(b"bye", now)
    conn.close(now)
    core.run_pending_output(now)
    seen.append(peer.receive())
    now += 0.01
    seen.append(_burst(core, peer, TCP_ACK, now=now))
    seen.append(conn.state)
    peer.snd_nxt = seq_add(peer.snd_nxt, -1)
    seen.append(_burst(core, peer, TCP_ACK | TCP_FIN, now=now + 0.01))  # answered by a RST or nothing
    seen.append(core.statistics())
    return core, seen


def test_a_fin_on_an_established_connection_skips_the_layers_with_the_same_result() -> None:
    """A FIN (with data) on an ESTABLISHED connection is a candidate ``fast_input`` hands to
    ``segment_arrives``; one for a pair gone from the table takes the Python path.  Same frames
    and counters as the Python path throughout."""
    on_core, on = _peer_closes_first(True)
    off_core, off = _peer_closes_first(False)
    assert on == off
    assert on[1][1] == b"the last bytes" and on[1][2] == b""  # the data, then the end of stream
    assert on_core.fast_path_segments == 2 and off_core.fast_path_segments == 0
    check_accounting(on_core)
    check_accounting(off_core)


_SYN_CASES = {
    # name: (the listener's port, the SYN's options or None for the peer's own, how many SYNs)
    "linux-options": (OUR_PORT, None, 1),
    "mss-only": (OUR_PORT, TcpOptions(mss=1200), 1),
    "timestamps-only": (OUR_PORT, TcpOptions(timestamps=(77, 0)), 1),
    "no-options": (OUR_PORT, b"", 1),
    "bad-options": (OUR_PORT, b"\x08\x0a\x00\x00", 1),  # a timestamp option cut short
    "no-listener": (OUR_PORT + 1, None, 1),
    "again-in-syn-received": (OUR_PORT, None, 2),
}


def _syns(case: str, fast: bool) -> tuple[StackCore, list[Any]]:
    """SYNs in bursts of their own: what the core sent back, the counters."""
    port, options, count = _SYN_CASES[case]
    core = tcp_core(seed=13)
    core.fast_path = fast
    core.tcp.listen(port)
    peer = Peer(core)
    seen: list[Any] = []
    for i in range(count):
        seen.append(_burst(core, peer, TCP_SYN, now=T0 + i, options=options, seq=peer.isn))
    seen.append([connection_state(conn) for conn in core.tcp.connections.values()])
    seen.append(core.statistics())
    return core, seen


@pytest.mark.parametrize("case", list(_SYN_CASES))
def test_a_syn_to_a_listener_skips_the_layers_with_the_same_result(case: str) -> None:
    """A SYN alone is a candidate: for no connection, ``syn_input`` parses its options as
    tcp_input does and hands it to the listener; no listener, and a SYN for a known pair, take
    the Python path.  Same frames, connections and counters as the Python path."""
    on_core, on = _syns(case, True)
    off_core, off = _syns(case, False)
    assert on == off
    taken = {"no-listener": 0, "again-in-syn-received": 1}.get(case, 1)
    assert on_core.fast_path_segments == taken and off_core.fast_path_segments == 0
    if case == "no-listener":
        assert on[0][0].flags & TCP_RST
    elif case == "bad-options":
        assert on[0] == [] and not on_core.tcp.connections
    else:
        assert all(out[0].flags == TCP_SYN | TCP_ACK for out in on[:-2])  # the second, sent again
    check_accounting(on_core)
    check_accounting(off_core)


#: name: (the new SYN's options: the peer's own with timestamps, or none; how far its sequence
#: number is from the old connection's; its timestamp's step back (ms) from the peer's clock),
#: whether it reuses the pair (RFC 6191)
_TIME_WAIT_SYN_CASES: dict[str, tuple[bool, int, int, bool]] = {
    "newer-timestamp": (True, 100_000, 0, True),
    "newer-timestamp-lower-seq": (True, -100_000, 0, True),
    "older-timestamp": (True, 100_000, 5_000, False),
    "no-timestamps-higher-seq": (False, 100_000, 0, True),
    "no-timestamps-lower-seq": (False, -100_000, 0, False),
}


@pytest.mark.parametrize("case", list(_TIME_WAIT_SYN_CASES))
def test_a_syn_to_a_pair_in_time_wait_skips_the_layers_with_the_same_result(case: str) -> None:
    """A new SYN to a pair in TIME_WAIT (a server that closes first, its clients' ports coming
    round again) is judged by ``syn_input`` as tcp_input judges it: RFC 6191's reuse (a newer
    timestamp, or without timestamps a higher sequence number) closes the record and opens a
    connection, anything else gets the record's answer.  Same frames, tables and counters."""
    with_ts, seq_step, ts_back, reused = _TIME_WAIT_SYN_CASES[case]
    results = []
    for fast in (True, False):
        core = tcp_core(seed=17)
        core.fast_path = fast
        _listener, conn, peer = open_passive(core)
        conn.close(T0 + 1)
        peer.receive()
        peer.send(TCP_ACK | TCP_FIN, now=T0 + 1.01)
        assert len(core.tcp.time_wait) == 1
        now = T0 + 2
        peer.snd_nxt = seq_add(peer.snd_nxt, seq_step)
        options: TcpOptions | bytes = b""
        if with_ts:
            options = TcpOptions(
                mss=1460,
                window_scale=7,
                sack_permitted=True,
                timestamps=(peer.tsval(now - ts_back / 1000), 0),
            )
        out = _burst(core, peer, TCP_SYN, now=now, options=options)
        results.append((out, len(core.tcp.time_wait), len(core.tcp.connections), core.statistics()))
        assert core.fast_path_segments == (1 if fast else 0)
        check_accounting(core)
    assert results[0] == results[1]
    if reused:
        assert results[0][0][0].flags == TCP_SYN | TCP_ACK and results[0][1:3] == (0, 1)  # the pair reused
    else:
        assert results[0][1:3] == (1, 0) and all(not seg.flags & TCP_SYN for seg in results[0][0])


def test_a_delayed_ack_set_in_a_burst_makes_no_timer_entry_when_the_reply_carries_it() -> None:
    """A request in a burst sets the delayed ACK's deadline but leaves its heap entry pending
    (``delack_pending``); the response in the same turn carries the ACK, and nothing is armed."""
    core = tcp_core(seed=19)
    core.autocork = True
    _listener, conn, peer = open_passive(core)
    now = T0 + 2
    core.run_timers(now)  # the SYN-ACK's retransmission entry (due at T0 + 1) out of the way
    assert conn._timer_at > now + core.config.tcp.delayed_ack  # so the ACK would need its own entry
    entries, timer = len(core.timers), conn._timer
    assert _burst(core, peer, TCP_ACK | TCP_PSH, REQUEST, now=now) == []  # no ACK yet: delayed
    delack = conn.t_delack
    assert delack == now + core.config.tcp.delayed_ack
    assert core.delack_pending == [conn] and len(core.timers) == entries and conn._timer is timer
    assert conn.receive(1000, now) == REQUEST
    conn.send(RESPONSE, now)
    core.run_pending_output(now)
    [reply] = peer.receive()
    assert reply.payload == RESPONSE and conn.t_delack == 0.0
    core.next_deadline()  # the poll loop's look before it sleeps
    assert core.delack_pending == []
    assert [entry for entry in core.timers._heap if entry[0] == delack] == []  # never armed
    check_accounting(core)


@pytest.mark.parametrize("via", ["next_deadline", "run_timers"])
def test_a_delayed_ack_left_pending_fires_when_it_would_have(via: str) -> None:
    """Unanswered, the pending delayed ACK gets its entry before the heap is read for a sleep
    (``next_deadline``), or when ``run_timers`` reaches its deadline (until then it stays
    pending), and fires at the deadline it had: the same ACK at the same time as a segment
    taken outside a burst, whose entry is made at once."""
    sent = []
    for in_burst in (True, False):
        core = tcp_core(seed=23)
        _listener, conn, peer = open_passive(core)
        now = T0 + 2
        core.run_timers(now)  # the SYN-ACK's retransmission entry (due at T0 + 1) out of the way
        assert conn._timer_at > now + core.config.tcp.delayed_ack  # so the ACK needs its own entry
        if in_burst:
            assert _burst(core, peer, TCP_ACK | TCP_PSH, b"x" * 100, now=now) == []
            assert core.delack_pending == [conn]
            if via == "next_deadline":
                assert core.next_deadline() == conn.t_delack
                assert core.delack_pending == [] and conn._timer is not None
                assert conn._timer.deadline == conn.t_delack  # its entry made
            else:
                core.run_timers(now)
                core.run_timers(conn.t_delack - 1e-6)
                assert core.delack_pending == [conn]  # not due yet: still waiting for a reply
        else:
            assert peer.send(TCP_ACK | TCP_PSH, b"x" * 100, now=now) == []
        deadline = conn.t_delack
        assert deadline == now + core.config.tcp.delayed_ack
        core.run_timers(deadline - 1e-6)
        assert peer.receive() == []
        core.run_timers(deadline)
        assert core.delack_pending == []
        sent.append((deadline, peer.receive(), core.statistics()))
    assert sent[0] == sent[1]
    assert len(sent[0][1]) == 1 and sent[0][1][0].flags == TCP_ACK and sent[0][2].tcp.delayed_acks == 1


class _Waiting:
    """Another connection's delayed ACK waiting in ``StackCore.delack_pending`` (what
    ``arm_delayed_acks`` reads of it)."""

    def __init__(self, deadline: float) -> None:
        self.t_delack = deadline
        self.state = ESTABLISHED
        self._timer_at = math.inf

    def _arm(self) -> None:
        pass


def test_the_pending_delayed_acks_are_bounded() -> None:
    """Past ``DELACK_PENDING_LIMIT`` waiting connections, a delayed ACK's entry is made at once."""
    core = tcp_core(seed=29)
    _listener, conn, peer = open_passive(core)
    now = T0 + 2
    core.run_timers(now)
    # as if that many other connections waited, each with its ACK due with this one's
    deadline = now + core.config.tcp.delayed_ack
    core.delack_pending = [_Waiting(deadline) for _ in range(DELACK_PENDING_LIMIT)]
    assert _burst(core, peer, TCP_ACK | TCP_PSH, b"x" * 100, now=now) == []
    assert len(core.delack_pending) == DELACK_PENDING_LIMIT
    assert conn._timer is not None and conn._timer.deadline == conn.t_delack
    core.run_timers(conn.t_delack)
    assert [s.flags for s in peer.receive()] == [TCP_ACK] and core.delack_pending == []


@pytest.mark.parametrize("step", [1e-6, 0.001])
def test_answered_delayed_acks_are_forgotten(step: float) -> None:
    """Keep-alive requests each answered in their turn: every one leaves an answered entry,
    which ``run_timers`` passes over only once the earliest deadline it knew of is reached (with
    requests ``step`` apart: after the delayed ACK's delay, or when the list fills first), so the
    list stays bounded, and no delayed ACK or timer entry is made for them."""
    core = tcp_core(seed=31)
    core.autocork = True
    _listener, conn, peer = open_passive(core)
    now = T0 + 2
    core.run_timers(now)
    delay = core.config.tcp.delayed_ack
    sizes = []
    for i in range(DELACK_PENDING_LIMIT + 10):
        now += step
        assert _burst(core, peer, TCP_ACK | TCP_PSH, REQUEST, now=now) == []
        assert conn.receive(1000, now) == REQUEST
        conn.send(RESPONSE, now)
        core.run_pending_output(now)
        core.run_timers(now)
        [reply] = peer.receive()
        assert reply.payload == RESPONSE and conn.t_delack == 0.0, i
        sizes.append(len(core.delack_pending))
    per_pass = DELACK_PENDING_LIMIT if step * DELACK_PENDING_LIMIT < delay else round(delay / step)
    assert abs(max(sizes) - per_pass) <= 1 and sizes[: per_pass - 1] == list(range(1, per_pass))
    assert core.stats_tcp.delayed_acks == 0
    core.next_deadline()
    assert core.delack_pending == [] and core.delack_next == float("inf")
    check_accounting(core)


def _old_ts(peer: Peer, now: float) -> TcpOptions:
    """Timestamps a second older than the peer's last: PAWS rejects the segment."""
    return TcpOptions(timestamps=((peer.tsval(now) - 2000) & 0xFFFF_FFFF, peer.ts_recent))


#: name: the peer's handshake ACK (its flags, the payload, fields of the frame), which lean
#: function takes it (or None: the general path)
_HANDSHAKE_CASES: dict[str, tuple[int, bytes, str, str | None]] = {
    "pure-ack": (TCP_ACK, b"", "", "handshake_ack"),
    "ack-with-psh": (TCP_ACK | TCP_PSH, b"", "", "handshake_ack"),
    "ack-with-data": (TCP_ACK | TCP_PSH, REQUEST, "", None),
    "old-timestamp": (TCP_ACK, b"", "old-ts", None),
    "acks-nothing": (TCP_ACK, b"", "ack-iss", None),  # SEG.ACK = ISS: a RST
    "acks-too-much": (TCP_ACK, b"", "ack-beyond", None),  # beyond SND.MAX: a RST
    "next-segment": (TCP_ACK, b"", "seq-ahead", None),  # in the window, not at RCV.NXT
}

#: name: the peer's segments after our response and FIN, each (flags, what it acknowledges:
#: "all" or "data" (not our FIN), old timestamp?); the lean function each one is for (or None)
_FIN_ACK = TCP_ACK | TCP_FIN
_CLOSING_CASES: dict[str, list[tuple[int, str, bool, str | None]]] = {
    "fin-ack": [(_FIN_ACK, "all", False, "closing_ack")],
    "ack-then-fin": [(TCP_ACK, "all", False, "closing_ack"), (_FIN_ACK, "all", False, "closing_ack")],
    "data-acked-then-fin-ack": [(TCP_ACK, "data", False, None), (_FIN_ACK, "all", False, "closing_ack")],
    "fin-before-our-fin-acked": [(_FIN_ACK, "data", False, None), (TCP_ACK, "all", False, None)],
    "old-timestamp": [(_FIN_ACK, "all", True, None), (_FIN_ACK, "all", False, "closing_ack")],
    "ack-then-old-fin": [(TCP_ACK, "all", False, "closing_ack"), (_FIN_ACK, "all", True, None)],
}


def _lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record each call of the lean input functions and whether it took the segment."""
    calls: list[tuple[str, bool]] = []
    for name in ("handshake_ack", "closing_ack"):
        lean = getattr(TcpConnection, name)

        def wrapper(self: TcpConnection, *args: Any, _lean: Any = lean, _name: str = name) -> bool:
            took = bool(_lean(self, *args))
            calls.append((_name, took))
            return took

        monkeypatch.setattr(TcpConnection, name, wrapper)
    return calls


def _handshake(case: str, fast: bool) -> tuple[StackCore, list[Any]]:
    """The SYN, then the case's handshake ACK in a burst of its own: what left, the
    connection's fields, the accept queue, the counters."""
    flags, payload, how, _lean = _HANDSHAKE_CASES[case]
    core = tcp_core(seed=23)
    core.fast_path = fast
    core.autocork = True
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core, isn=0xFFFF_FFFA)
    now = T0
    seen: list[Any] = [_burst(core, peer, TCP_SYN, now=now)]
    now += 0.02
    fields: dict[str, Any] = {}
    if how == "old-ts":
        fields["options"] = _old_ts(peer, now)
    elif how == "ack-iss":
        fields["ack"] = seq_add(peer.rcv_nxt, -1)
    elif how == "ack-beyond":
        fields["ack"] = seq_add(peer.rcv_nxt, 1)
    elif how == "seq-ahead":
        fields["seq"] = seq_add(peer.snd_nxt, 10)
    seen.append(_burst(core, peer, flags, payload, now=now, **fields))
    seen.append([connection_state(conn) for conn in core.tcp.connections.values()])
    conn = listener.accept()
    seen.append(None if conn is None else (conn.state, conn.receive(65536, now)))
    seen.append(core.statistics())
    return core, seen


@pytest.mark.parametrize("case", list(_HANDSHAKE_CASES))
def test_the_handshakes_ack_taken_lean_as_the_general_path_takes_it(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """``handshake_ack`` (fast path on) takes the pure ACK completing a passive open in a few
    lines; whatever it declines goes on to ``segment_arrives``.  Same frames, connection
    fields, accept queue and counters as the general path (fast path off) in every case."""
    calls = _lean_calls(monkeypatch)
    on_core, on = _handshake(case, True)
    lean_calls = list(calls)
    off_core, off = _handshake(case, False)
    assert on == off
    assert len(calls) == len(lean_calls)  # nothing lean with the fast path off
    lean = _HANDSHAKE_CASES[case][3]
    assert ("handshake_ack", True) in lean_calls if lean else ("handshake_ack", True) not in lean_calls
    if lean:
        assert on[3] is not None and on[3][0] == 4  # ESTABLISHED, accepted
    check_accounting(on_core)
    check_accounting(off_core)


def _closing(case: str, fast: bool) -> tuple[StackCore, list[Any]]:
    """An established connection answers a request and closes (response and FIN in one
    segment); the peer's segments of the case, each in a burst of its own: what left after
    each, the connection's fields, TIME_WAIT, the timers, the counters."""
    core = tcp_core(seed=29)
    core.fast_path = fast
    core.autocork = True
    _listener, conn, peer = open_passive(core, isn=0xFFFF_FFF0)
    now = T0 + 1
    assert _burst(core, peer, TCP_ACK | TCP_PSH, REQUEST, now=now) == []
    assert conn.receive(65536, now) == REQUEST
    conn.send(RESPONSE, now)
    conn.close(now)
    core.run_pending_output(now)
    [out] = peer.receive()
    assert out.flags == TCP_ACK | TCP_PSH | TCP_FIN
    seen: list[Any] = []
    for flags, acks, old, _lean in _CLOSING_CASES[case]:
        now += 0.01
        fields: dict[str, Any] = {"ack": seq_add(peer.rcv_nxt, -1) if acks == "data" else peer.rcv_nxt}
        if old:  # dropped: the peer sends the same sequence number again
            fields["options"], fields["seq"] = _old_ts(peer, now), peer.snd_nxt
        seen.append(_burst(core, peer, flags, now=now, **fields))
        seen.append((conn.state, connection_state(conn), len(core.tcp.time_wait)))
    seen.append((core.next_deadline(), core.statistics()))
    return core, seen


@pytest.mark.parametrize("case", list(_CLOSING_CASES))
def test_the_peers_answer_to_our_fin_taken_lean_as_the_general_path_takes_it(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """``closing_ack`` (fast path on) takes the peer's ACK of our FIN and its own FIN in
    FIN-WAIT-1/FIN-WAIT-2 in a few lines; whatever it declines (our FIN not yet acknowledged,
    an old timestamp) goes on to ``segment_arrives``.  Same frames, fields, TIME_WAIT record,
    next deadline and counters as the general path, step by step."""
    calls = _lean_calls(monkeypatch)
    on_core, on = _closing(case, True)
    lean_calls = [call for call in calls if call[0] == "closing_ack"]
    del calls[:]
    off_core, off = _closing(case, False)
    assert on == off
    assert calls == []  # nothing lean with the fast path off
    expected = [lean for *_rest, lean in _CLOSING_CASES[case]]
    assert [took for _name, took in lean_calls if took] == [True] * expected.count("closing_ack")
    if case != "ack-then-old-fin":
        assert on[-2][2] == 1  # the pair in TIME_WAIT at the end
    check_accounting(on_core)
    check_accounting(off_core)


#: name: (bytes sent and acknowledged before, the last write, the peer's window, seconds idle
#: before the close, whether ``_output_fin_predicted`` sends the close's segment)
_FIN_OUTPUT_CASES: dict[str, tuple[int, int, int, float, bool]] = {
    "response-and-fin": (0, 200, 0xFFFF, 0.0, True),
    "fin-alone": (300, 0, 0xFFFF, 0.0, True),
    "fin-alone-data-in-flight": (0, -300, 0xFFFF, 0.0, True),  # 300 bytes sent, not yet acked
    "more-than-one-segment": (0, 3000, 0xFFFF, 0.0, False),
    "window-too-small": (0, 200, 1, 0.0, False),  # 128 bytes of window (scale 7)
    "idle-restart-due": (300, 0, 0xFFFF, 5.0, False),
}


def _fin_output(case: str, fast: bool) -> tuple[StackCore, list[Any]]:
    """An established connection sends what the case says, then closes: the segments that
    left at the close and after the peer's ACK, the connection's fields, the counters."""
    before, last, window, idle, _lean = _FIN_OUTPUT_CASES[case]
    core = tcp_core(seed=31)
    core.fast_path = fast
    core.autocork = True  # as the runtime runs it: the last write is still queued at the close
    _listener, conn, peer = open_passive(core, window=window)
    now = T0 + 1
    seen: list[Any] = []
    if before:
        conn.send(b"a" * before, now)
        core.run_pending_output(now)
        seen.append(peer.receive())
        now += 0.01
        seen.append(_burst(core, peer, TCP_ACK, now=now))
    if last < 0:
        conn.send(b"b" * -last, now)
        core.run_pending_output(now)
        seen.append(peer.receive())
    elif last:
        conn.send(b"c" * last, now)
    now += idle
    conn.close(now)
    core.run_pending_output(now)
    seen.append(peer.receive())
    seen.append(connection_state(conn))
    now += 0.01
    seen.append(_burst(core, peer, TCP_ACK, now=now))
    seen.append((conn.state, connection_state(conn), core.next_deadline(), core.statistics()))
    return core, seen


@pytest.mark.parametrize("case", list(_FIN_OUTPUT_CASES))
def test_a_closing_connections_last_segment_predicted_as_the_general_loop_sends_it(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """``_output_fin_predicted`` (fast path on) sends the last data with the FIN, or the FIN
    alone, without tcp_output's general loop; what it declines (more than a segment, no room in
    the window, an idle restart due) the loop sends.  Same segments, fields and counters."""
    taken: list[bool] = []
    predicted = TcpConnection._output_fin_predicted

    def counting(self: TcpConnection, now: float) -> bool:
        took = predicted(self, now)
        taken.append(took)
        return took

    monkeypatch.setattr(TcpConnection, "_output_fin_predicted", counting)
    on_core, on = _fin_output(case, True)
    on_taken = list(taken)
    off_core, off = _fin_output(case, False)
    assert on == off
    assert len(taken) == len(on_taken)  # not called with the fast path off
    assert on_taken[0] == _FIN_OUTPUT_CASES[case][4]  # the close's own output
    assert any(seg.flags & TCP_FIN for seg in on[-4] + on[-2])  # the FIN left (after the ACK: window)
    check_accounting(on_core)
    check_accounting(off_core)
