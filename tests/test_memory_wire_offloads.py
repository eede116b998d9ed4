"""``memory_wire(offloads=True)``: the wire made what loopback or a virtio-net pair is.

Its ports offer checksum offload both ways and TSO; a TSO frame crosses the wire whole and
arrives marked (the sender's ``OffloadPacket`` itself, re-classed ``ChecksumVerifiedPacket``: no
copy; other frames a ``ChecksumVerified`` copy), so a bulk transfer moves 64 KiB frames and no side
computes or verifies a checksum.  Checked: the capabilities, the frames that cross (sizes, marks), that a
transfer delivers the same bytes (SHA-256) in far fewer frames than over the 1500-byte wire,
and that a frame the wire corrupts arrives unmarked, so the receiver verifies and drops it.
Everything runs under trio's MockClock.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
from tcp_helpers import T0, open_active
from tcp_sim_helpers import (
    checksum_drops,
    connected_pair,
    make_payload,
    receive_all,
    send_all_then_eof,
    sha256,
    two_stacks,
)
from test_offload import offload_core, push

from trio_yastack.nic import memory_wire
from trio_yastack.stack import ChecksumVerified, OffloadPacket, TcpConnection
from trio_yastack.stack._offload import VOUCHED, ChecksumVerifiedPacket

SIZE = 1_000_000


def test_offload_capabilities_and_the_default_unchanged() -> None:
    plain, _ = memory_wire()
    caps = plain.capabilities
    assert (caps.rx_checksum_offload, caps.tx_checksum_offload, caps.tso, caps.max_tso_size) == (
        False,
        False,
        False,
        0,
    )
    offloaded, _ = memory_wire(offloads=True)
    caps = offloaded.capabilities
    assert (caps.rx_checksum_offload, caps.tx_checksum_offload, caps.tso, caps.max_tso_size) == (
        True,
        True,
        True,
        0xFFFF,
    )
    assert caps.mtu == 1500  # the MTU stays what was asked: TSO frames are the exception


async def test_a_tso_frame_crosses_whole_and_marked(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_wire(offloads=True)
    big = OffloadPacket(40_000, gso_size=1448)
    big[0:6] = b"\x02\x00\x00\x00\x00\x02"
    assert a.tx_burst(0, [big, bytes(60)]) == 2  # type: ignore[list-item]  # OffloadPacket is a bytearray
    frames = b.rx_burst(0, 8)
    assert [len(f) for f in frames] == [40_000, 60]
    assert [f.__class__ for f in frames] == [ChecksumVerifiedPacket, ChecksumVerified]
    assert all(f.__class__ in VOUCHED for f in frames)
    assert frames[0] is big and big.gso_size == 1448  # the sender's buffer itself, not a copy
    assert frames[1] == bytes(60)
    assert a.statistics().oerrors == 0
    # beyond the TSO limit, or a plain frame beyond the MTU: not sent, counted
    assert a.tx_burst(0, [OffloadPacket(0xFFFF + 19), bytes(1519)]) == 2  # type: ignore[list-item]
    assert a.statistics().oerrors == 2
    # without offloads a frame above the MTU is an error whatever its type
    c, _ = memory_wire()
    c.tx_burst(0, [OffloadPacket(2000)])  # type: ignore[list-item]
    assert c.statistics().oerrors == 1


async def test_faults_on_the_offload_wire_keep_the_marks_honest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With faults, a duplicated TSO frame arrives twice as the same marked buffer (nobody writes
    a received frame), and a corrupted one arrives as an unmarked copy: the receiver verifies it."""
    a, b = memory_wire(offloads=True, duplicate=1.0, seed=1)
    big = OffloadPacket(3000, gso_size=1448)
    a.tx_burst(0, [big])  # type: ignore[list-item]  # OffloadPacket is a bytearray
    frames = b.rx_burst(0, 8)
    assert len(frames) == 2 and frames[0] is big and frames[1] is big
    marked: Any = big  # (typed as what it was sent as)
    assert marked.__class__ is ChecksumVerifiedPacket
    c, d = memory_wire(offloads=True, corrupt=1.0, seed=1)
    sent = OffloadPacket(3000, gso_size=1448)
    c.tx_burst(0, [sent])  # type: ignore[list-item]
    (damaged,) = d.rx_burst(0, 8)
    assert damaged.__class__ is bytes and damaged != bytes(sent) and len(damaged) == len(sent)


async def _transfer(offloads: bool, corrupt: float = 0.0) -> tuple[str, int, int]:
    data = make_payload(7, SIZE)
    async with two_stacks(3, offloads=offloads, corrupt=corrupt) as (a, b):
        client, server, _listener = await connected_pair(a, b)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all_then_eof, client, data)
            got = await receive_all(server)
        frames = a.port.statistics().opackets
        return sha256(got) if got == data else "differs", frames, checksum_drops(a, b)


async def test_bulk_over_the_offload_wire_moves_tso_frames(autojump_clock: trio.testing.MockClock) -> None:
    digest, frames_offloaded, drops = await _transfer(True)
    assert digest == sha256(make_payload(7, SIZE))
    assert drops == 0
    digest_plain, frames_plain, _ = await _transfer(False)
    assert digest_plain == digest
    # 1 MB in ~1448-byte segments needs ~690 data frames; in 64 KiB frames a few dozen
    assert frames_plain > 600
    assert frames_offloaded < frames_plain // 4


async def test_corrupted_frames_arrive_unmarked_and_are_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    digest, _frames, drops = await _transfer(True, corrupt=0.05)
    assert digest == sha256(make_payload(7, SIZE))
    assert drops > 0


@pytest.mark.parametrize("tx_offload", [True, False])
def test_tso_segments_built_whole_are_the_general_paths_frames(
    tx_offload: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_send_data_segment`` now builds TSO segments too (header packed once, payload copied
    once through a view): the same frames, byte for byte and type and gso_size, as the general
    ``_send_segment`` built before, over the same exchange (the whole flight and the ACKs)."""

    def run(general: bool) -> list[tuple[str, int, bytes]]:
        core = offload_core(tx_offload=tx_offload, tso=65535 if tx_offload else 0)
        conn, peer = open_active(core)
        if general:
            monkeypatch.setattr(TcpConnection, "_send_data_segment", _general_send_data_segment)
        frames, now = push(core, conn, peer, random.Random(1).randbytes(250_000), T0 + 1)
        more, _ = push(core, conn, peer, random.Random(2).randbytes(200_000), now + 0.001)
        monkeypatch.undo()
        return [(f.__class__.__name__, getattr(f, "gso_size", 0), bytes(f)) for f in frames + more]

    fast, general = run(False), run(True)
    assert fast == general
    assert any(gso for _kind, gso, _frame in fast) == tx_offload


def _general_send_data_segment(self: TcpConnection, seq: int, length: int, flags: int, now: float) -> None:
    """What ``_send_data`` did for every segment over one MSS before: the general path."""
    self._send_segment(seq, flags, self.sndbuf.peek(seq, length), now)
