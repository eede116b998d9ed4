"""The established-connection fast path (``stack/tcp/_fastpath.py``, ``native/tcp_fast.c``) is
the same TCP as the Python path.

1. The C classifier and its Python twin agree on every field, for arbitrary frames (hypothesis).
2. The classifier takes exactly the segments header prediction may take, and declines the rest.
3. A connection fed the same stream of segments (hypothesis) with the fast path on and off sends
   the same frames and ends in the same state, counters included.
4. Tier-3 simulations (lossy, duplicating, reordering, corrupting wires; SACK; zero windows;
   half-close; sequence numbers across 2**32) put the same frames on the wire, in the same order
   at the same simulated times, and deliver the same bytes, with the fast path on and off.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from helpers import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, SUBNET_BROADCAST, build_ipv4_frame, check_accounting
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from tcp_helpers import (
    OUR_PORT,
    PEER_PORT,
    T0,
    build_tcp_frame,
    open_passive,
    seq_add,
    tcp_bytes,
    tcp_core,
    tcp_segments,
)
from tcp_sim_helpers import (
    DropPort,
    connected_pair,
    connection,
    exchange,
    make_payload,
    receive_all,
    send_all_then_eof,
    two_stacks,
)

from trio_yastack import Stack
from trio_yastack.nic.tap import complete_checksum
from trio_yastack.stack import ChecksumVerified, OffloadPacket, StackCore
from trio_yastack.stack._offload import ChecksumVerifiedPacket
from trio_yastack.stack.tcp import _fastpath, _output
from trio_yastack.stack.tcp._conn import TcpConnection
from trio_yastack.stack.tcp._fastpath import (
    CANDIDATE,
    DECLINE,
    NATIVE_FASTPATH,
    native_classify_burst,
    py_classify_burst,
    py_classify_frame,
)
from trio_yastack.stack.tcp._layer import TcpLayer
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TcpOptions

MAC = bytes(OUR_MAC)
IP = int(OUR_IP)
BROADCAST = int(SUBNET_BROADCAST)
needs_native = pytest.mark.skipif(not NATIVE_FASTPATH, reason="the C fast path was not built")


def segment(flags: int = TCP_ACK, payload: bytes = b"", *, ts: bool = True, **fields: Any) -> bytes:
    """A segment from the peer to us on the test connection's ports."""
    options = TcpOptions(timestamps=(1000, 2000)) if ts else None
    return build_tcp_frame(
        PEER_PORT, OUR_PORT, fields.pop("seq", 0x1000), fields.pop("ack", 0x2000), flags,
        options=options, payload=payload, **fields,
    )  # fmt: skip


# -- 1 and 2: the classifier ----------------------------------------------------------------------


def test_a_predictable_segment_is_a_candidate_with_its_fields() -> None:
    frame = segment(TCP_ACK | TCP_PSH, b"hello", seq=0xFFFF_FFFE, ack=7, window=513)
    record = py_classify_frame(frame, True, MAC, IP, BROADCAST)
    assert record == (
        CANDIDATE, int(PEER_IP), PEER_PORT, OUR_PORT, 0xFFFF_FFFE, 7, TCP_ACK | TCP_PSH, 513,
        1000, 2000, 14 + 20 + 32, len(frame),
    )  # fmt: skip
    bare = py_classify_frame(segment(ts=False), True, MAC, IP, BROADCAST)
    assert bare[0] == CANDIDATE and bare[8:] == (-1, -1, 54, 54)


@pytest.mark.parametrize("flags", [TCP_ACK | TCP_FIN, TCP_ACK | TCP_PSH | TCP_FIN])
@pytest.mark.parametrize("payload", [b"", b"last bytes"])
def test_a_fin_with_its_ack_is_a_candidate(flags: int, payload: bytes) -> None:
    """A connection's FIN (with its ACK, maybe data) is a candidate with its flags, for
    ``fast_input`` to hand to the connection's general path; without options too."""
    frame = segment(flags, payload, seq=0x1234, ack=0x5678, window=999)
    record = py_classify_frame(frame, True, MAC, IP, BROADCAST)
    assert record == (
        CANDIDATE, int(PEER_IP), PEER_PORT, OUR_PORT, 0x1234, 0x5678, flags, 999,
        1000, 2000, 14 + 20 + 32, len(frame),
    )  # fmt: skip
    assert py_classify_frame(segment(flags, ts=False), True, MAC, IP, BROADCAST)[0] == CANDIDATE
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst([frame], MAC, IP, BROADCAST, True) == [record]


@pytest.mark.parametrize(
    "options",
    [
        None,
        b"",
        TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamps=(9, 0)),
        b"\x08\x0a\0\0",
    ],
    ids=["timestamps", "none", "linux-syn", "malformed"],
)
def test_a_syn_alone_is_a_candidate_its_options_left_to_the_caller(
    options: TcpOptions | bytes | None,
) -> None:
    """A connection request (SYN, no other flag) is a candidate whatever its options (the
    listener's input parses them, malformed ones too, as tcp_input does): tsval and tsecr -1,
    the data after the options.  With ECN's flags (ECE, CWR) it declines."""
    if options is None:
        frame = segment(TCP_SYN, seq=0xABCD, ack=0, window=64240)
    else:
        frame = build_tcp_frame(PEER_PORT, OUR_PORT, 0xABCD, 0, TCP_SYN, window=64240, options=options)
    thl = (frame[46] >> 4) * 4
    record = py_classify_frame(frame, True, MAC, IP, BROADCAST)
    assert record == (
        CANDIDATE,
        int(PEER_IP),
        PEER_PORT,
        OUR_PORT,
        0xABCD,
        0,
        TCP_SYN,
        64240,
        -1,
        -1,
        34 + thl,
        len(frame),
    )
    ecn = segment(TCP_SYN | 0xC0)
    assert py_classify_frame(ecn, True, MAC, IP, BROADCAST)[0] == DECLINE
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst([frame, ecn], MAC, IP, BROADCAST, True) == [
            record,
            py_classify_frame(ecn, True, MAC, IP, BROADCAST),
        ]


@pytest.mark.parametrize(
    "frame",
    [
        segment(TCP_SYN | TCP_ACK),
        segment(TCP_FIN),  # FIN without ACK
        segment(TCP_SYN | TCP_ACK | TCP_FIN),
        segment(TCP_RST | TCP_ACK | TCP_FIN),
        segment(TCP_RST | TCP_ACK),
        segment(TCP_ACK | 0x20),  # URG
        segment(TCP_ACK | 0x40),  # ECE
        segment(TCP_PSH),  # no ACK
        build_tcp_frame(PEER_PORT, OUR_PORT, 1, 2, TCP_ACK, options=TcpOptions(sack_blocks=((5, 9),))),
        build_tcp_frame(PEER_PORT, OUR_PORT, 1, 2, TCP_ACK, options=b"\x08\x0a" + bytes(8) + b"\x01\x01"),
        build_tcp_frame(0, OUR_PORT, 1, 2, TCP_ACK),
        segment(checksum=0x1234),  # bad TCP checksum
        segment(dst_mac="ff:ff:ff:ff:ff:ff"),
        segment(dst_ip="198.18.0.3"),
        segment(src_ip=str(OUR_IP)),
        segment(src_ip=str(SUBNET_BROADCAST)),
        segment(src_ip="127.0.0.1"),
        segment(more_fragments=True),
        build_ipv4_frame(
            PEER_MAC,
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            6,
            tcp_bytes(PEER_PORT, OUR_PORT, 1, 2, TCP_ACK),
            options=b"\x01\x01\x01\x00",
        ),
        segment(ttl=0),
    ],
    ids=[
        "syn",
        "fin-no-ack",
        "syn-fin",
        "rst-fin",
        "rst",
        "urg",
        "ece",
        "no-ack",
        "sack",
        "ts-unaligned",
        "port-0",
        "bad-checksum",
        "broadcast-mac",
        "other-ip",
        "our-source",
        "broadcast-source",
        "loopback-source",
        "fragment",
        "ip-options",
        "ttl-0",
    ],
)
def test_everything_else_declines(frame: bytes) -> None:
    assert py_classify_frame(frame, True, MAC, IP, BROADCAST)[0] == DECLINE
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst([frame], MAC, IP, BROADCAST, True)[0][0] == DECLINE


def test_a_bad_checksum_passes_when_not_verified() -> None:
    """A port that verified checksums (``ChecksumVerified``) or a stack that does not check
    them: the classifier does not either, as ip_input and tcp_input would not."""
    frame = segment(checksum=0x1234)
    assert py_classify_frame(frame, False, MAC, IP, BROADCAST)[0] == CANDIDATE
    records = py_classify_burst([ChecksumVerified(frame), frame], MAC, IP, BROADCAST, True)
    assert [r[0] for r in records] == [CANDIDATE, DECLINE]
    if NATIVE_FASTPATH:  # a burst of one frame takes its own way into C: the mark still counts
        assert native_classify_burst is not None
        bursts: list[list[Any]] = [[ChecksumVerified(frame)], [frame], [ChecksumVerified(frame), frame]]
        bursts += [[bytearray(frame)], [memoryview(frame)]]
        # the memory wire's mark on the sender's bytearray (read by C in place when alone), and
        # an OffloadPacket that nobody marked: verified like any plain frame
        bursts += [[ChecksumVerifiedPacket(frame)], [ChecksumVerifiedPacket(frame), frame]]
        bursts += [[_offload_packet(frame)], [frame, _offload_packet(frame)]]
        for burst in bursts:
            for verify in (True, False):
                assert native_classify_burst(burst, MAC, IP, BROADCAST, verify) == py_classify_burst(
                    burst, MAC, IP, BROADCAST, verify
                )
        assert native_classify_burst([frame], MAC, IP, BROADCAST, True)[0][0] == DECLINE
        assert native_classify_burst([ChecksumVerified(frame)], MAC, IP, BROADCAST, True)[0][0] == CANDIDATE
        assert (
            native_classify_burst([ChecksumVerifiedPacket(frame)], MAC, IP, BROADCAST, True)[0][0]
            == CANDIDATE
        )
        assert native_classify_burst([_offload_packet(frame)], MAC, IP, BROADCAST, True)[0][0] == DECLINE
    marked = py_classify_burst(
        [ChecksumVerifiedPacket(frame), _offload_packet(frame)], MAC, IP, BROADCAST, True
    )
    assert [r[0] for r in marked] == [CANDIDATE, DECLINE]


def _offload_packet(frame: bytes) -> OffloadPacket:
    packet = OffloadPacket(len(frame))
    packet[:] = frame
    return packet


#: a frame as a port hands it up: plain, ``ChecksumVerified`` (a copy), or the memory wire's
#: ``ChecksumVerifiedPacket`` (the sender's bytearray re-classed)
_MARKS: tuple[Any, ...] = (bytes, ChecksumVerified, ChecksumVerifiedPacket)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Frames near the predicted case, then bent: random fields, options, lengths, flipped bytes."""
    flags = draw(
        st.sampled_from(
            [
                TCP_ACK,
                TCP_ACK | TCP_PSH,
                TCP_ACK | TCP_FIN,
                TCP_ACK | TCP_PSH | TCP_FIN,
                TCP_SYN,
                TCP_SYN | 0xC0,  # with ECN's ECE and CWR
                draw(st.integers(0, 255)),
            ]
        )
    )
    options: bytes | TcpOptions | None = draw(
        st.sampled_from(
            [
                None,
                TcpOptions(timestamps=(1, 2)),
                b"\x01\x01\x08\x0a" + bytes(8),
                b"\x02\x04\x05\xb4",
                TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamps=(1, 0)),  # a SYN's
            ]
        )
    )
    frame = bytearray(
        build_tcp_frame(
            draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF_FFFF)),
            draw(st.integers(0, 0xFFFF_FFFF)), flags, window=draw(st.integers(0, 0xFFFF)), options=options,
            payload=draw(st.binary(max_size=64)),
            src_ip=draw(st.sampled_from([str(PEER_IP), "127.0.0.1", str(SUBNET_BROADCAST), "224.0.0.1"])),
        )
    )  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(frame) - 1))
        frame[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del frame[draw(st.integers(0, len(frame))) :]
    if draw(st.booleans()):
        frame += draw(st.binary(max_size=8))  # link padding
    return bytes(frame)


@needs_native
@given(st.lists(frames(), max_size=8), st.booleans(), st.lists(st.integers(0, 2), max_size=8))
@settings(max_examples=400, deadline=None)
def test_c_and_python_classify_alike(burst: list[bytes], verify: bool, marks: list[int]) -> None:
    burst = [_MARKS[marks[i]](f) if i < len(marks) else f for i, f in enumerate(burst)]
    assert native_classify_burst is not None
    assert native_classify_burst(burst, MAC, IP, BROADCAST, verify) == py_classify_burst(
        burst, MAC, IP, BROADCAST, verify
    )


@needs_native
def test_c_classifies_a_real_burst_like_the_twin() -> None:
    """Frames the stack itself sends, classified from the other end (MACs and IPs swapped)."""
    core = tcp_core()
    _listener, conn, _peer = open_passive(core)
    conn.send(make_payload(1, 20_000), T0 + 1)
    sent = core.take_outbox()
    assert len(sent) > 3
    args = (bytes(PEER_MAC), int(PEER_IP), BROADCAST, True)
    assert native_classify_burst is not None
    records = native_classify_burst(sent, *args)
    assert records == py_classify_burst(sent, *args)
    assert all(r[0] == CANDIDATE for r in records)
    assert [r[4] for r in records] == [seq_add(records[0][4], i * conn.mss) for i in range(len(records))]


@needs_native
@pytest.mark.parametrize("one_by_one", [0, 1 << 30])
@given(st.lists(frames(), max_size=8), st.booleans(), st.lists(st.integers(0, 2), max_size=8))
@settings(max_examples=150, deadline=None)
def test_c_frame_by_frame_classifies_as_the_joined_burst(
    one_by_one: int, burst: list[bytes], verify: bool, marks: list[int]
) -> None:
    """A burst whose ends are large goes to C one frame at a time (no join): forced either way
    for every burst, the records are the twin's, marks and all."""
    marked: list[Any] = [_MARKS[marks[i]](f) if i < len(marks) else f for i, f in enumerate(burst)]
    if verify:  # a bytearray nobody marked: copied to bytes either way (and some bursts stay empty)
        marked.append(bytearray(b"\x00" * 14))
    assert native_classify_burst is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_fastpath, "ONE_BY_ONE", one_by_one)
        got = native_classify_burst(marked, MAC, IP, BROADCAST, verify)
    assert got == py_classify_burst(marked, MAC, IP, BROADCAST, verify)


@needs_native
@pytest.mark.parametrize("mark", [bytes, ChecksumVerified, ChecksumVerifiedPacket])
def test_a_burst_of_tso_frames_goes_to_c_one_by_one(mark: Any) -> None:
    """The memory wire's bulk case: two 64 KB TSO frames (above ``ONE_BY_ONE``) classified
    without the join, each record the twin's and the joined call's."""
    sizes = (60_000, 0, 65_000)  # a pure ACK between two TSO frames (GRO-sized, checksums right)
    sent = [
        mark(segment(TCP_ACK, make_payload(1, size), seq=0x1000 + 70_000 * i)) for i, size in enumerate(sizes)
    ]
    assert min(len(sent[0]), len(sent[-1])) >= _fastpath.ONE_BY_ONE
    args = (MAC, IP, BROADCAST, True)
    assert native_classify_burst is not None
    calls: list[int] = []
    real = _fastpath._c_classify

    def counted(*a: Any) -> int:
        calls.append(a[4])  # frames per call
        return int(real(*a))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_fastpath, "_c_classify", counted)
        records = native_classify_burst(sent, *args)
    assert calls == [1] * len(sent)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_fastpath, "ONE_BY_ONE", 1 << 30)
        assert native_classify_burst(sent, *args) == records
    assert records == py_classify_burst(sent, *args)
    assert [r[0] for r in records] == [CANDIDATE] * 3
    assert [r[4] for r in records] == [0x1000, 0x1000 + 70_000, 0x1000 + 140_000]  # each frame's own seq


@needs_native
def test_c_refuses_lengths_beyond_its_buffers() -> None:
    """The C side reads and writes only within the lengths it is given: a frame length past the
    frames, a lengths array or an output too short for ``n`` are refused, nothing written."""
    from trio_yastack.stack._native_cffi import ffi, lib

    frame = segment()
    lens = len(frame).to_bytes(4, sys.byteorder)  # one native uint32_t
    sources = bytes(16 * lib.YAS_FAST_SRC6_SLOTS)  # an empty table of UDP6 sources

    def call(frames: bytes, lens: bytes, out: bytearray) -> int:
        return lib.yas_tcp_fast_classify(
            frames, len(frames), lens, len(lens), 1, MAC, IP, BROADCAST, b"", 0, 0, sources, len(sources),
            True, ffi.from_buffer(out), len(out),
        )  # fmt: skip

    assert call(frame, lens, bytearray(48)) == 1
    for frames, lens_bytes, out in ((frame[:-1], lens, bytearray(48)), (frame, lens[:3], bytearray(48)),
                                    (frame, lens, bytearray(47))):  # fmt: skip
        assert call(frames, lens_bytes, out) == lib.YAS_FAST_BAD_ARGS
        assert not any(out)


# -- 3: one connection, a stream of segments, fast path on and off ---------------------------------

#: a connection's references to shared or external objects (compared elsewhere, or not state)
_SKIP_SLOTS = {"_timer", "config", "core", "layer", "listener", "stats", "waiter"}
_BUFFERS = {"rcvbuf", "reasm", "sndbuf", "scoreboard"}


def _fields(obj: Any) -> dict[str, Any]:
    """The plain values in ``obj``'s slots (numbers, strings, None)."""
    names = [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())]
    values = {name: getattr(obj, name, None) for name in names}
    return {name: v for name, v in values.items() if v is None or isinstance(v, int | float | str | bytes)}


def connection_state(conn: Any) -> dict[str, Any]:
    """Every plain field of a connection, of the objects it owns (congestion control, loss
    recovery's state), and its buffers' contents."""
    state: dict[str, Any] = {}
    for name in type(conn).__slots__:
        if name in _SKIP_SLOTS or name in _BUFFERS:
            continue
        value = getattr(conn, name)
        state[name] = value if value is None or isinstance(value, int | float | str) else _fields(value)
    state["rcvbuf"] = conn.rcvbuf._copy(0, len(conn.rcvbuf))
    state["reasm"] = len(conn.reasm)
    state["sndbuf"] = (len(conn.sndbuf), conn.sndbuf.end)
    state["scoreboard"] = len(conn.scoreboard)
    return state


Step = tuple[str, int, int, int]  # (what, size, window, timestamp step)
DATA_KINDS = ("data", "data-ack", "dup", "future", "old-ts")


@st.composite
def steps(draw: st.DrawFn) -> list[list[Step]]:
    """Bursts of peer segments: in-order data, duplicates, out-of-order data, ACKs of our data,
    window changes, old timestamps, a FIN; and application reads and sends between bursts."""
    kinds = [
        "data",
        "data",
        "data-ack",
        "ack",
        "ack",
        "dup",
        "future",
        "window",
        "old-ts",
        "read",
        "send",
        "fin",
    ]
    step = st.tuples(
        st.sampled_from(kinds), st.integers(0, 3000), st.integers(0, 0xFFFF), st.integers(-2, 50)
    )
    return draw(st.lists(st.lists(step, min_size=1, max_size=6), min_size=1, max_size=12))


def make_connection(monkeypatch: pytest.MonkeyPatch, fast: bool) -> tuple[StackCore, Any, Any]:
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_F000)
    core = tcp_core(seed=3)
    core.fast_path = fast
    _listener, conn, peer = open_passive(core, isn=0xFFFF_F800)
    conn.send(make_payload(2, 30_000), T0 + 0.1)
    core.take_outbox()
    return core, conn, peer


@given(steps())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_stream_of_segments_gives_the_same_output_and_state(
    monkeypatch: pytest.MonkeyPatch, script: list[list[Step]]
) -> None:
    ends = [make_connection(monkeypatch, fast) for fast in (True, False)]
    (core, conn, peer), (core_off, conn_off, _peer_off) = ends
    seq = peer.snd_nxt  # the peer's next byte; it acknowledges what it has seen of ours
    ack = peer.rcv_nxt
    ts = 5000
    now = T0 + 0.2
    for burst in script:
        built: list[bytes] = []
        for what, size, window, ts_step in burst:
            ts = (ts + ts_step) & 0xFFFF_FFFF
            options = TcpOptions(timestamps=((ts - 100000 if what == "old-ts" else ts) & 0xFFFF_FFFF, 0))
            payload = make_payload(size, size % 1500) if what in DATA_KINDS else b""
            fields: dict[str, Any] = {"window": 0xFFFF if what != "window" else window, "options": options}
            if what in ("ack", "data-ack"):
                ack = seq_add(ack, min(size, (conn.snd_max - ack) & 0xFFFF_FFFF))
            if what == "read":
                for c in (conn, conn_off):
                    c.receive(size + 1, now)
                continue
            if what == "send":
                for c in (conn, conn_off):
                    c.send(make_payload(size, size), now)
                continue
            flags = TCP_ACK | (TCP_PSH if size & 1 else 0) | (TCP_FIN if what == "fin" else 0)
            at = {"dup": seq_add(seq, -len(payload)), "future": seq_add(seq, 1000)}.get(what, seq)
            built.append(build_tcp_frame(PEER_PORT, OUR_PORT, at, ack, flags, payload=payload, **fields))
            if what in ("data", "data-ack", "old-ts", "fin"):
                seq = seq_add(seq, len(payload) + (1 if what == "fin" else 0))
        now += 0.01
        outs = []
        for c in (core, core_off):
            c.begin_burst()
            c.ether_input_burst(built, now)
            c.end_burst(now)
            c.run_timers(now)
            c.run_pending_output(now)
            outs.append([bytes(f) for f in c.take_outbox()])
        assert outs[0] == outs[1]
        assert connection_state(conn) == connection_state(conn_off)
    assert core.statistics() == core_off.statistics()
    target(core.fast_path_segments)  # steer the search towards streams the fast path takes
    check_accounting(core)
    assert core.fast_path_segments <= core.stats_tcp.segments_received
    assert core_off.fast_path_segments == 0


def test_the_stream_test_exercises_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-order data is taken by the fast path (and counted at every layer it skipped)."""
    core, conn, peer = make_connection(monkeypatch, True)
    frames = [
        build_tcp_frame(PEER_PORT, OUR_PORT, seq_add(peer.snd_nxt, i * 100), peer.rcv_nxt, TCP_ACK,
                        payload=bytes(100), options=TcpOptions(timestamps=(6000 + i, 0)))
        for i in range(4)
    ]  # fmt: skip
    core.begin_burst()
    core.ether_input_burst(frames, T0 + 1)
    core.end_burst(T0 + 1)
    assert core.fast_path_segments == 4
    assert len(conn.rcvbuf) == 400
    assert len(core.take_outbox()) == 1  # one ACK for the burst
    check_accounting(core)


def test_a_request_carrying_a_new_ack_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request/response case header prediction leaves out: data that also acknowledges our
    last response.  Taken by ``ack_and_data_input``, with the same result as the general path."""
    ends = []
    for fast in (True, False):
        core, conn, peer = make_connection(monkeypatch, fast)
        frame = build_tcp_frame(
            PEER_PORT, OUR_PORT, peer.snd_nxt, seq_add(peer.rcv_nxt, 1448), TCP_ACK | TCP_PSH,
            payload=b"GET / HTTP/1.1\r\n\r\n", options=TcpOptions(timestamps=(6000, 0)),
        )  # fmt: skip
        core.begin_burst()
        core.ether_input_burst([frame], T0 + 1)
        core.end_burst(T0 + 1)
        ends.append((core.fast_path_segments, [bytes(f) for f in core.take_outbox()], connection_state(conn)))
    assert ends[0][0] == 1 and ends[1][0] == 0
    assert ends[0][1] == ends[1][1] and ends[0][1]  # new data went out (the window moved)
    assert ends[0][2] == ends[1][2]
    assert ends[0][2]["rcvbuf"] == b"GET / HTTP/1.1\r\n\r\n"


def test_a_request_acknowledging_the_whole_response_leaves_its_ack_to_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keep-alive request that acknowledges all of the last response, nothing unsent: no pass
    of tcp_output at the burst's end (it would send nothing: the ACK is delayed, nothing is
    queued), header prediction not asked (its cases exclude data with a new ACK), the payload in
    the buffer and the reader woken; the response carries the request's ACK, one frame.  The
    general path puts the same frames on the wire and leaves the same state."""
    ends = []
    for fast in (True, False):
        monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_FF00)
        core = tcp_core(seed=3)
        core.fast_path = fast
        _listener, conn, peer = open_passive(core, isn=0xFFFF_FFF0)  # both ISNs just below 2**32
        conn.send(b"HTTP/1.1 200 OK\r\n\r\n", T0 + 0.1)  # the last response, sent whole
        core.take_outbox()
        conn.waiter = object()  # a reader is parked
        request = build_tcp_frame(
            PEER_PORT, OUR_PORT, peer.snd_nxt, seq_add(peer.rcv_nxt, 19), TCP_ACK | TCP_PSH,
            payload=b"GET / HTTP/1.1\r\n\r\n", options=TcpOptions(timestamps=(6000, 0)),
        )  # fmt: skip
        if fast:
            monkeypatch.setattr(TcpConnection, "header_prediction", None)  # a call would raise
        core.begin_burst()
        core.ether_input_burst([request], T0 + 1)
        pending = dict(core.output_pending)
        core.end_burst(T0 + 1)
        monkeypatch.undo()
        quiet = [bytes(f) for f in core.take_outbox()]
        assert conn in core.ready
        assert conn.receive(100, T0 + 1.001) == b"GET / HTTP/1.1\r\n\r\n"
        conn.send(b"HTTP/1.1 200 OK\r\n\r\n", T0 + 1.001)
        ends.append((core.fast_path_segments, pending, quiet, [bytes(f) for f in core.take_outbox()], conn))
    (taken, pending, quiet, response, conn), (taken_off, _pending, quiet_off, response_off, conn_off) = ends
    assert (taken, taken_off) == (1, 0)
    assert pending == {} and quiet == quiet_off == []
    assert response == response_off and len(response) == 1
    assert connection_state(conn) == connection_state(conn_off)
    assert conn.rcv_nxt - conn.irs == 1 + 18 and conn.snd_max - conn.snd_una == 19  # the response in flight


def test_a_request_beyond_the_buffers_room_goes_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """SO_RCVBUF shrunk below what was advertised: a request that fits the window but not the
    buffer's room is not the fast path's (it checks the room itself, in line); the general path
    takes what fits, the same way with the fast path on and off."""
    ends = []
    for fast in (True, False):
        core, conn, peer = make_connection(monkeypatch, fast)
        conn.rcvbuf.limit = 10  # the room left: 10 bytes, the window advertised much more
        request = build_tcp_frame(
            PEER_PORT, OUR_PORT, peer.snd_nxt, seq_add(peer.rcv_nxt, 1448), TCP_ACK | TCP_PSH,
            payload=b"GET / HTTP/1.1\r\n\r\n", options=TcpOptions(timestamps=(6000, 0)),
        )  # fmt: skip
        core.begin_burst()
        core.ether_input_burst([request], T0 + 1)
        core.end_burst(T0 + 1)
        ends.append((core.fast_path_segments, [bytes(f) for f in core.take_outbox()], connection_state(conn)))
    assert ends[0][0] == ends[1][0] == 0
    assert ends[0][1] == ends[1][1]
    assert ends[0][2] == ends[1][2]
    assert ends[0][2]["rcvbuf"] == b"GET / HTTP"  # what fitted


# -- 4: tier-3 simulations, fast path on and off ---------------------------------------------------

FAULTY = {"loss": 0.05, "duplicate": 0.02, "reorder": 0.05, "latency": 0.01}
Scenario = Callable[[Stack, Stack], Awaitable[list[bytes]]]


async def bulk_both_ways(a: Stack, b: Stack) -> list[bytes]:
    client, server, _listener = await connected_pair(a, b)
    got = await exchange(client, server, make_payload(1, 400_000), make_payload(2, 300_000))
    await client.aclose()
    await server.aclose()
    return list(got)


async def half_close(a: Stack, b: Stack) -> list[bytes]:
    client, server, _listener = await connected_pair(a, b)
    await send_all_then_eof(client, make_payload(3, 50_000))
    request = await receive_all(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all_then_eof, server, make_payload(4, 200_000))
        response = await receive_all(client)
    await client.aclose()
    await server.aclose()
    return [request, response]


async def zero_window(a: Stack, b: Stack) -> list[bytes]:
    client, server, _listener = await connected_pair(a, b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all_then_eof, client, make_payload(5, 1_500_000))
        await trio.sleep(20.0)  # B does not read: the window closes, A probes it
        assert connection(client).snd_wnd < connection(client).mss
        received = await receive_all(server)
    await server.aclose()
    return [received]


async def run_recorded(
    seed: int, faults: dict[str, float], scenario: Scenario, fast: bool, tcp: Any = None
) -> Any:
    """The scenario on two stacks with the fast path ``fast``: what each side sent (simulated time
    and frame, in order), what the applications received, the final counters."""
    ports: list[DropPort] = []

    def record(port: Any) -> DropPort:
        ports.append(DropPort(port, lambda frame: False, record=True))
        return ports[-1]

    extra = {"tcp": tcp} if tcp is not None else {}
    async with two_stacks(seed, wrap_a=record, wrap_b=record, **faults, **extra) as (a, b):
        a.core.fast_path = b.core.fast_path = fast
        with trio.fail_after(3600):
            received = await scenario(a, b)
        taken = a.core.fast_path_segments + b.core.fast_path_segments
        stats = (a.core.statistics(), b.core.statistics())
    return [p.sent for p in ports], received, stats, taken


def simulate(seed: int, faults: dict[str, float], scenario: Scenario, fast: bool, tcp: Any = None) -> Any:
    import trio._core._run as trio_run  # trio shuffles runnable tasks: seed it so runs repeat

    trio_run._r.seed(seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(run_recorded, seed, faults, scenario, fast, tcp, clock=clock)


@pytest.mark.parametrize(
    ("scenario", "faults"),
    [
        (bulk_both_ways, {}),
        (bulk_both_ways, FAULTY),
        (bulk_both_ways, {**FAULTY, "corrupt": 0.01}),
        (half_close, FAULTY),
        (zero_window, {"latency": 0.005}),
    ],
    ids=["clean", "faulty", "corrupting", "half-close", "zero-window"],
)
def test_simulations_put_the_same_frames_on_the_wire(
    monkeypatch: pytest.MonkeyPatch, scenario: Scenario, faults: dict[str, float]
) -> None:
    """ISNs just below 2**32 (both ends cross the wrap), SACK on (the default): the fast path on
    and off send the same frames at the same simulated times, deliver the same bytes and end
    with the same counters; and the fast path took segments."""
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_F000)
    on = simulate(11, faults, scenario, True)
    off = simulate(11, faults, scenario, False)
    assert on[1] == off[1]
    assert on[2] == off[2]
    assert [len(frames) for frames in on[0]] == [len(frames) for frames in off[0]]
    assert on[0] == off[0]
    assert on[3] > 0 and off[3] == 0


@pytest.mark.parametrize("case", ["ack-due", "idle-restart-due", "fin-queued", "data-queued", "in-recovery"])
def test_a_due_ack_alone_sends_what_the_general_loop_sends(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A receiver's due ACK with nothing of ours to send skips ``tcp_output``'s general loop
    (it never asks for the MSS, ``_data_mss``); a FIN or data queued, or recovery, take the
    loop.  Either way: the same frames, state and counters as with the fast path off."""
    mss_asked: list[bool] = []
    original = TcpConnection._data_mss

    def asked(self: TcpConnection) -> int:
        mss_asked.append(True)
        return original(self)

    monkeypatch.setattr(TcpConnection, "_data_mss", asked)
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_FFF0)
    ends = []
    for fast in (True, False):
        core = tcp_core(seed=3)
        core.fast_path = fast
        _listener, conn, _peer = open_passive(core, isn=0xFFFF_F800)
        now = T0 + 1
        if case == "idle-restart-due":
            conn.send(make_payload(0, 3 * conn.mss), now)
            conn.snd_una = conn.snd_max  # all acknowledged long ago: cwnd restarts (RFC 5681 4.1)
            conn.sndbuf.acknowledge(conn.snd_una)
            conn.cc.cwnd = 40 * conn.mss
            now += 10 * conn.rto
        elif case == "fin-queued":
            conn.close(now)
        elif case == "data-queued":
            conn.sndbuf.append(b"x" * 10)
        elif case == "in-recovery":
            conn.in_recovery = True
        core.take_outbox()
        mss_asked.clear()
        conn.ack_now = True
        conn.tcp_output(now)
        ends.append((mss_asked[:], [bytes(f) for f in core.take_outbox()], connection_state(conn)))
    assert ends[0][1] == ends[1][1] and ends[0][1]  # an ACK (at least) left
    assert ends[0][2] == ends[1][2]
    assert ends[1][0]  # the general loop asks for the MSS
    if case == "data-queued":  # send prediction's (no MSS asked either): the data went, not a bare ACK
        assert ends[0][1][-1].endswith(b"x" * 10)
    else:
        assert (not ends[0][0]) is (case in ("ack-due", "idle-restart-due"))
    if case == "idle-restart-due":
        assert ends[0][2]["cc"]["cwnd"] < 40 * conn.mss  # the restart happened on both ways


def test_fast_path_is_on_unless_switched_off() -> None:
    assert _fastpath.FAST_PATH_DEFAULT is (__import__("os").environ.get("TRIO_YASTACK_NO_FASTPATH") != "1")
    assert tcp_core().fast_path is _fastpath.FAST_PATH_DEFAULT


def test_a_traced_core_takes_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core whose class was swapped (a tracer) never takes the fast path: every frame passes
    its ether_input."""
    core, conn, peer = make_connection(monkeypatch, True)
    seen: list[bytes] = []

    class Traced(StackCore):
        def ether_input(self, frame: bytes, now: float) -> None:
            seen.append(frame)
            super().ether_input(frame, now)

    core.__class__ = Traced
    frame = build_tcp_frame(PEER_PORT, OUR_PORT, peer.snd_nxt, peer.rcv_nxt, TCP_ACK, payload=b"x" * 10,
                            options=TcpOptions(timestamps=(7000, 0)))  # fmt: skip
    core.ether_input_burst([frame], T0 + 1)
    assert seen == [frame] and core.fast_path_segments == 0 and len(conn.rcvbuf) == 10


# -- 5: send prediction (tcp_output's common case), on and off --------------------------------------

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _arrange(case: str, conn: Any, now: float) -> bytes:
    """Put the connection in ``case``'s situation; return what the application then sends."""
    if case in ("nagle", "nodelay-in-flight"):
        conn.nodelay = case == "nodelay-in-flight"
        conn.send(RESPONSE, now)  # one response in flight, not yet acknowledged
    if case == "small-window":
        conn.snd_wnd = len(RESPONSE) - 1
    if case == "idle":
        conn.send(RESPONSE, now)
        conn.snd_una = conn.snd_max  # acknowledged (as its ACK would), then a long silence
        conn.sndbuf.acknowledge(conn.snd_una)
    return {"more-than-mss": make_payload(7, 1449)}.get(case, RESPONSE)


@pytest.mark.parametrize("offload", [False, True], ids=["checksum", "checksum-offload"])
@pytest.mark.parametrize(
    ("case", "predicted", "framed"),
    [
        ("response", True, True),
        ("nodelay-in-flight", True, True),
        ("nagle", False, False),
        ("more-than-mss", False, True),  # one MSS by the general loop, the byte after waits
        ("small-window", False, False),
        ("idle", False, True),
        ("arp-refresh-due", True, False),
    ],
)
def test_send_prediction_sends_what_the_general_loop_sends(
    monkeypatch: pytest.MonkeyPatch, case: str, predicted: bool, framed: bool, offload: bool
) -> None:
    """A response on an established connection with room for it goes out by send prediction
    (``_output_predicted``); Nagle, a segment larger than the MSS, a window without room and an
    idle restart are left to the general loop.  Its frame is built in one step
    (``_frame_predicted``) unless the peer's ARP entry is due for refresh.  Either way: the same
    frames (with valid checksums), state and counters as with the fast path off."""
    taken: list[bool] = []
    original = TcpConnection._output_predicted
    framed_by: list[bool] = []
    original_frame = _output._frame_predicted

    def counting(self: TcpConnection, now: float) -> bool:
        taken.append(original(self, now))
        return taken[-1]

    def counting_frame(*args: Any) -> bool:
        framed_by.append(original_frame(*args))
        return framed_by[-1]

    monkeypatch.setattr(TcpConnection, "_output_predicted", counting)
    monkeypatch.setattr(_output, "_frame_predicted", counting_frame)
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_FFF0)
    ends = []
    for fast in (True, False):
        core = tcp_core(seed=3)
        core.fast_path = fast
        core.tx_checksum_offload = offload
        _listener, conn, _peer = open_passive(core, isn=0xFFFF_F800)
        now = T0 + 1
        data = _arrange(case, conn, now)
        before, framed_before = len(taken), len(framed_by)
        core.take_outbox()
        now += 5.0 if case == "idle" else 0.001
        if case == "arp-refresh-due":
            now = core.arp.cache[int(PEER_IP)][1] - core.arp.config.refresh_before
        conn.send(data, now)
        if fast:
            assert (True in taken[before:]) is predicted, taken
            assert (True in framed_by[framed_before:]) is framed, framed_by
        frames = [
            complete_checksum(f) if isinstance(f, OffloadPacket) else bytes(f) for f in core.take_outbox()
        ]
        ends.append((frames, connection_state(conn), core.statistics()))
    assert ends[0] == ends[1]
    assert ends[0][0] or case in ("nagle", "small-window")  # something went out where it may
    segments = tcp_segments([f for f in ends[0][0] if f[23] == 6])  # checksums verified
    assert any(s.payload for s in segments) or case in ("nagle", "small-window")
