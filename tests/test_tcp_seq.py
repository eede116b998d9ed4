"""Sequence space (trio_yastack/stack/_seq.py) and the header prediction that writes it out inline.

``unwrap`` and ``seq_lt`` are tested at the wrap of 2**32.  Header prediction
(``tcp/_input.py``, the top of ``segment_arrives``) spells ``seq_lt`` and ``unwrap`` out inline so
the predicted segments pay no call; the differential tests below hold it to the general path:
the same segment, once with the aligned timestamp option (eligible for prediction) and once with
the same option laid out differently (which always takes the general path), must leave the
connection and the wire in the same state.  ISNs and timestamp clocks start just below 2**32.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from tcp_helpers import ACK, OUR_ISS, PSH, T0, fix_iss, open_active, seq_add, tcp_core, tcp_drops

from trio_yastack.stack import TcpConnection
from trio_yastack.stack._seq import MOD, seq_lt, unwrap

_MASK = MOD - 1
HALF = 1 << 31


@pytest.mark.parametrize(
    ("wire", "reference", "expected"),
    [
        (5, 5, 5),
        (0, 0xFFFF_FFF0, 1 << 32),  # just past the wrap: ahead, in the next lap
        (0xFFFF_FFF0, 1 << 32, 0xFFFF_FFF0),  # just before it: behind, in the previous lap
        (10, (3 << 32) + 0xFFFF_FFFF, (4 << 32) + 10),  # any lap, not only the first
        ((HALF - 1) & _MASK, 0, HALF - 1),  # the farthest ahead
        (HALF, 0, -HALF),  # half way round counts as behind
    ],
)
def test_unwrap_finds_the_nearest_value(wire: int, reference: int, expected: int) -> None:
    assert unwrap(wire, reference) == expected
    assert unwrap(wire, reference) & _MASK == wire


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1, 2, True),
        (2, 1, False),
        (7, 7, False),
        (0xFFFF_FFF0, 5, True),  # across the wrap
        (5, 0xFFFF_FFF0, False),
        (0, HALF - 1, True),
        (0, HALF, False),  # exactly half way: neither before (FreeBSD's SEQ_LT agrees)
        (HALF, 0, False),
    ],
)
def test_seq_lt_is_modulo_2_32(a: int, b: int, expected: bool) -> None:
    assert seq_lt(a, b) is expected


def _timestamps(tsval: int, tsecr: int, *, aligned: bool) -> bytes:
    """The timestamp option, as Linux aligns it (NOP NOP TS: header prediction's layout) or
    with the NOPs after it (the same option, which only the full option parser reads)."""
    ts = b"\x08\x0a" + struct.pack("!II", tsval & _MASK, tsecr & _MASK)
    return b"\x01\x01" + ts if aligned else ts + b"\x01\x01"


def _count_general_path(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count entries into the general path (its first check) of every connection."""
    calls: list[int] = []
    general = TcpConnection._check_sequence_number

    def counted(self: TcpConnection, *args: Any) -> bool:
        calls.append(1)
        return general(self, *args)

    monkeypatch.setattr(TcpConnection, "_check_sequence_number", counted)
    return calls


def _outcome(conn: TcpConnection, segments: list[Any]) -> tuple[Any, ...]:
    return (
        conn.state,
        conn.rcv_nxt,
        conn.snd_una,
        conn.ts_recent,
        len(conn.rcvbuf),
        tcp_drops(conn.core),
        [(s.seq, s.ack, s.flags, s.window, s.payload) for s in segments],
    )


# timestamps the peer's data segment carries, relative to TS.Recent: newer, equal, just older,
# and either side of half the sequence space (where "older" starts, modulo 2**32)
AGES = [1, 0, 0x10, -1, -0x10, HALF - 1, HALF, HALF + 1]


@pytest.mark.parametrize("ts0", [0xFFFF_FFF0, 0x7FFF_FFF8, 3])
@pytest.mark.parametrize("age", AGES)
def test_predicted_data_segment_agrees_with_the_general_path(
    monkeypatch: pytest.MonkeyPatch, ts0: int, age: int
) -> None:
    """An in-order data segment whose TSval is ``age`` ahead of TS.Recent: header prediction
    takes it exactly when PAWS (``seq_lt``) would pass it, and then does what the general path does."""
    general_calls = _count_general_path(monkeypatch)
    outcomes = []
    for aligned in (True, False):
        core = tcp_core(delayed_ack=0)  # an ACK for every segment: the reply shows the outcome
        conn, peer = open_active(core, ts0=ts0)
        now = T0 + 1
        assert peer.send(ACK, now=now) == []  # its first scaled window: SND.WND as prediction wants
        ts_recent = conn.ts_recent
        tsval = (ts_recent + age) & _MASK
        del general_calls[:]
        segments = peer.send(
            ACK | PSH, b"d" * 100, now=now, options=_timestamps(tsval, peer.ts_recent, aligned=aligned)
        )
        predicted = not general_calls
        assert predicted is (aligned and not seq_lt(tsval, ts_recent)), (age, aligned, predicted)
        outcomes.append(_outcome(conn, segments))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("acked", [0, 1, 255, 256, 1000, 1001, HALF])
def test_predicted_pure_ack_agrees_with_the_general_path(monkeypatch: pytest.MonkeyPatch, acked: int) -> None:
    """A pure ACK for ``acked`` of our 1000 bytes in flight, which cross 2**32 after 255: header
    prediction takes it exactly when it acknowledges new data we sent (``unwrap`` inline), and
    then does what the general path does."""
    fix_iss(monkeypatch)
    general_calls = _count_general_path(monkeypatch)
    outcomes = []
    for aligned in (True, False):
        core = tcp_core()
        conn, peer = open_active(core)
        now = T0 + 1
        assert peer.send(ACK, now=now) == []  # its first scaled window: SND.WND as prediction wants
        conn.send(b"s" * 1000, now)
        [data] = peer.receive()
        assert data.seq == seq_add(OUR_ISS, 1) and len(data.payload) == 1000
        del general_calls[:]
        ack = seq_add(OUR_ISS, 1 + acked)
        segments = peer.send(
            ACK,
            now=now + 0.05,
            ack=ack,
            options=_timestamps(peer.tsval(now + 0.05), peer.ts_recent, aligned=aligned),
        )
        predicted = not general_calls
        assert predicted is (aligned and 0 < acked <= 1000), (acked, aligned, predicted)
        outcomes.append(_outcome(conn, segments))
    assert outcomes[0] == outcomes[1]
