"""IPv4 TSO segments through the predicted frame path (``_output._frame_predicted``).

A bulk sender's segments are TSO segments (an ``OffloadPacket`` with ``gso_size``) whenever
``tcp_output`` may build more than one MSS at a time: with the port's TSO, or with software GSO
(the default) on a port without it.  Frame prediction takes such a segment only when the port
segments it itself, and must then leave exactly what the layered path (``tcp_checksum_and_send``
-> ``ip_output`` -> ``_to_link`` -> ``ether_output``) leaves: the same bytes, type and
``gso_size``, the same IP identification, the same counters.  Without TSO the segment is the
layered path's, which cuts it in software (``tcp4_segment``) into frames that fit the MTU with
their full checksums.

Each case runs the same exchange twice on a sans-IO core (``tcp_helpers``), fast path on and
off, and compares everything that left.  Was a bug (fixed): with a peer's MSS small enough that
a two-MSS segment fits the MTU, frame prediction sent it whole, with only its pseudo-header sum
as checksum, to ports without TSO, and counted it as one TCP segment
(``test_a_tso_segment_within_the_mtu_is_cut_for_a_port_without_tso``).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_helpers import ACK, T0, fix_iss, open_active, seq_add
from tcp_sim_helpers import (
    checksum_drops,
    connected_pair,
    make_payload,
    receive_all,
    send_all_then_eof,
    sha256,
    two_stacks,
)
from test_offload import offload_core, parse_out, payload_len, push, scapy_tcp_checksum_ok

from trio_yastack.nic.tap import complete_checksum
from trio_yastack.stack import OffloadPacket, StackCore, StackStatistics, _core
from trio_yastack.stack._native import py_tcp4_segment
from trio_yastack.stack.tcp import _output

#: (checksum offload, tso_max_size, software GSO): what the port offers
PORTS = {
    "tso-64k": (True, 65535, True),  # a TAP with its virtio-net header, the offload memory wire
    "tso-16k": (True, 16000, True),
    "csum-only-gso": (True, 0, True),  # checksum offload, no TSO: software GSO cuts
    "plain-gso": (False, 0, True),  # no offloads (the 1500-byte memory wire): software GSO cuts
    "plain-no-gso": (False, 0, False),  # one MSS per segment from tcp_output
}

Outcome = tuple[list[tuple[str, int, bytes]], StackStatistics, int]


@pytest.fixture(autouse=True)
def _fixed_iss(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_iss(monkeypatch)


class LayeredCalls:
    """Counts the TSO segments (``gso_size`` > 0) that took the layered path, by wrapping
    ``_output.tcp_checksum_and_send`` (looked up as a module global at each call)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tso = 0
        original = _output.tcp_checksum_and_send

        def counting(core: StackCore, stats: Any, packet: bytearray, *args: Any) -> int:
            if packet.__class__ is OffloadPacket and packet.gso_size:
                self.tso += 1
            return original(core, stats, packet, *args)

        monkeypatch.setattr(_output, "tcp_checksum_and_send", counting)


#: how the peer makes our segments: timestamps (``_send_data_segment`` -> ``_frame_predicted``);
#: none (``_send_segment`` -> ``_headers_predicted``); out-of-order data of its own held by us, so
#: that every segment carries a SACK block (``_send_segment`` too, gso_size the MSS less the block)
PEERS = ["timestamps", "no-timestamps", "sack-held"]


def exchange(
    port: str, fast: bool, writes: list[int], peer_mss: int, seed: int = 1, peer_kind: str = "timestamps"
) -> Outcome:
    """Open a connection on a core with ``port``'s offloads, fast path ``fast``, to a peer that
    offers ``peer_mss`` (and makes segments as ``peer_kind`` says); send ``writes`` (sizes) one
    after the other, each flight acknowledged (``push`` checks the peer got every byte); return
    every frame sent (type, gso_size, bytes), the counters and the IP layer's next identification."""
    tx_offload, tso, gso = PORTS[port]
    core = offload_core(tx_offload=tx_offload, tso=tso, gso=gso)
    core.fast_path = fast
    conn, peer = open_active(core, mss=peer_mss, ts=peer_kind != "no-timestamps")
    rng = random.Random(seed)
    now = T0 + 1
    if peer_kind == "sack-held":  # 100 bytes 1 000 bytes ahead: held, SACKed from now on
        core.ether_input(peer.frame(ACK, b"z" * 100, now=now, seq=seq_add(peer.snd_nxt, 1000)), now)
        core.take_outbox()
    frames: list[Any] = []
    for size in writes:
        sent, now = push(core, conn, peer, rng.randbytes(size), now + 0.001)
        frames += sent
    kept = [(f.__class__.__name__, getattr(f, "gso_size", 0), bytes(f)) for f in frames]
    return kept, core.statistics(), core.ip_layer.ident


@pytest.mark.parametrize("peer_kind", PEERS)
@pytest.mark.parametrize("peer_mss", [1460, 1000, 536])
@pytest.mark.parametrize("port", list(PORTS))
def test_tso_segments_predicted_are_the_layered_paths_frames(
    monkeypatch: pytest.MonkeyPatch, port: str, peer_mss: int, peer_kind: str
) -> None:
    """The same bulk exchange (a 250 KB and a 200 KB write, then short ones) with the fast path
    on and off: the same frames byte for byte (type and gso_size too), counters and IP
    identification.  With TSO the fast path sends every TSO segment by frame prediction
    (``_frame_predicted``, or ``_headers_predicted`` for a segment with SACK blocks or without
    timestamps), the layered path none; without it every frame fits the MTU with a complete
    checksum."""
    writes = [250_000, 200_000, 3_000, 1_000]
    calls = LayeredCalls(monkeypatch)
    on = exchange(port, True, writes, peer_mss, peer_kind=peer_kind)
    layered_on = calls.tso
    off = exchange(port, False, writes, peer_mss, peer_kind=peer_kind)
    assert on == off
    frames, stats, _ident = on
    tso_frames = [frame for _kind, gso_size, frame in frames if gso_size]
    if PORTS[port][1]:
        assert len(tso_frames) >= 5
        assert layered_on == 0 and calls.tso >= len(tso_frames)  # all of them predicted with the fast path on
        assert max(len(frame) for frame in tso_frames) > 1514
    else:
        assert not tso_frames
        for _kind, _gso, frame in frames:
            assert len(frame) <= 1514
        assert all(scapy_tcp_checksum_ok(frame) for kind, _gso, frame in frames if kind == "bytes")
    # every piece the wire carries is a TCP segment counted once (Linux's OutSegs)
    pieces = sum(-(-payload_len(frame) // gso_size) if gso_size else 1 for _kind, gso_size, frame in frames)
    # and the SYN and the handshake's ACK (and the duplicate ACK for the held data)
    assert stats.tcp.counters["segments_sent"] == pieces + 2 + (peer_kind == "sack-held")
    if peer_kind == "sack-held":
        for kind, _gso, frame in frames:
            whole = complete_checksum(bytearray(frame)) if kind == "OffloadPacket" else frame
            assert parse_out(whole).options.sack_blocks


def test_a_tso_segment_within_the_mtu_is_cut_for_a_port_without_tso() -> None:
    """Was a bug (fixed): a peer MSS of 536 makes a two-MSS segment (1 048 bytes, 1 114 on the
    wire) fit a 1500-byte MTU, and frame prediction sent it whole, as an ``OffloadPacket`` with
    ``gso_size`` and only the pseudo-header sum in its checksum, to a port that neither segments
    nor completes checksums.  Now the layered path cuts it: two frames with full checksums, two
    TCP segments counted; a port with TSO still gets it whole, predicted."""
    for tso, expected in (
        (0, [("bytes", 0, 590), ("bytes", 0, 590)]),
        (65535, [("OffloadPacket", 524, 1114)]),
    ):
        core = offload_core(tx_offload=bool(tso), tso=tso)
        conn, _peer = open_active(core, mss=536)
        segments_before = core.statistics().tcp.counters["segments_sent"]
        assert conn.send(b"x" * 1048, T0 + 1) == 1048
        out = core.take_outbox()
        assert [(f.__class__.__name__, getattr(f, "gso_size", 0), len(f)) for f in out] == expected
        assert core.statistics().tcp.counters["segments_sent"] - segments_before == 2
        for frame in out:
            whole = complete_checksum(frame) if isinstance(frame, OffloadPacket) else bytes(frame)
            pieces = py_tcp4_segment(whole, 524) if isinstance(frame, OffloadPacket) else [whole]
            assert all(scapy_tcp_checksum_ok(piece) for piece in pieces)


def test_a_predicted_tso_segment_is_cut_by_the_port_into_valid_segments_numbered_from_its_ident() -> None:
    """What the port makes of a predicted TSO segment (``tcp4_segment``'s twin stands for it):
    MSS-sized pieces with full checksums (scapy's opinion), consecutive sequence numbers and IP
    identifications counting up from the segment's own, DF set; the next segment's
    identification is the next one ``ip_output`` gives out."""
    core = offload_core(tx_offload=True, tso=65535)
    conn, peer = open_active(core)
    frames, _now = push(core, conn, peer, random.Random(5).randbytes(120_000), T0 + 1)
    tso_frames = [f for f in frames if isinstance(f, OffloadPacket) and f.gso_size]
    assert tso_frames
    idents = [int.from_bytes(f[18:20], "big") for f in frames]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(idents))  # one per datagram
    for frame in tso_frames:
        segment = parse_out(frame)
        pieces = py_tcp4_segment(frame, frame.gso_size)
        assert len(pieces) == -(-payload_len(frame) // frame.gso_size)
        for i, piece in enumerate(pieces):
            assert len(piece) <= 1514 and scapy_tcp_checksum_ok(piece)
            assert int.from_bytes(piece[18:20], "big") == (int.from_bytes(frame[18:20], "big") + i) & 0xFFFF
            assert piece[20] & 0x40  # DF
            assert int.from_bytes(piece[38:42], "big") == (segment.seq + i * frame.gso_size) & 0xFFFF_FFFF


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    port=st.sampled_from(list(PORTS)),
    peer_mss=st.integers(min_value=300, max_value=1460),
    writes=st.lists(st.integers(min_value=1, max_value=90_000), min_size=1, max_size=4),
    peer_kind=st.sampled_from(PEERS),
)
def test_any_bulk_exchange_leaves_the_same_frames_on_and_off(
    port: str, peer_mss: int, writes: list[int], peer_kind: str
) -> None:
    """Writes of any size to a peer with any MSS, on any port: the fast path on and off send
    the same frames, counters and IP identifications."""
    on = exchange(port, True, writes, peer_mss, seed=2, peer_kind=peer_kind)
    assert on == exchange(port, False, writes, peer_mss, seed=2, peer_kind=peer_kind)


@pytest.mark.parametrize("corrupt", [0.0, 0.03], ids=["clean", "lossy"])
async def test_over_the_offload_wire_tso_frames_leave_by_prediction(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock, corrupt: float
) -> None:
    """Two stacks on ``memory_wire(offloads=True)`` (a TAP's or virtio's offloads), 1 MB one way,
    the wire clean or corrupting frames (each a loss: retransmissions are TSO segments too): the
    receiver gets every byte; with the fast path on no TSO segment took the layered path, with it
    off every one did, and the same bytes arrived."""
    data = make_payload(11, 1_000_000)
    layered: list[int] = []
    for fast in (True, False):
        monkeypatch.setattr(_core, "FAST_PATH_DEFAULT", fast)
        calls = LayeredCalls(monkeypatch)
        async with two_stacks(5, offloads=True, corrupt=corrupt) as (a, b):
            client, server, _listener = await connected_pair(a, b)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all_then_eof, client, data)
                got = await receive_all(server)
            assert sha256(got) == sha256(data)
            assert a.port.statistics().opackets < 400  # TSO frames: ~690 segments' worth of data
            if corrupt:
                assert checksum_drops(a, b) > 0
                assert a.statistics().tcp.counters["retransmitted_segments"] > 0
        layered.append(calls.tso)
        monkeypatch.undo()
    assert layered[0] == 0 and layered[1] > 0, layered
