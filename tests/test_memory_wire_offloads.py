"""``memory_wire(offloads=True)``: the wire made what loopback or a virtio-net pair is.

Its ports offer checksum offload both ways and TSO; a TSO frame crosses the wire whole and
arrives :class:`ChecksumVerified`, so a bulk transfer moves 64 KiB frames and no side computes
or verifies a checksum.  Checked: the capabilities, the frames that cross (sizes, marks), that a
transfer delivers the same bytes (SHA-256) in far fewer frames than over the 1500-byte wire,
and that a frame the wire corrupts arrives unmarked, so the receiver verifies and drops it.
Everything runs under trio's MockClock.
"""

from __future__ import annotations

import trio
from tcp_sim_helpers import (
    checksum_drops,
    connected_pair,
    make_payload,
    receive_all,
    send_all_then_eof,
    sha256,
    two_stacks,
)

from trio_yastack.nic import memory_wire
from trio_yastack.stack import ChecksumVerified, OffloadPacket

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
    assert all(f.__class__ is ChecksumVerified for f in frames)
    assert frames[0] == big
    assert a.statistics().oerrors == 0
    # beyond the TSO limit, or a plain frame beyond the MTU: not sent, counted
    assert a.tx_burst(0, [OffloadPacket(0xFFFF + 19), bytes(1519)]) == 2  # type: ignore[list-item]
    assert a.statistics().oerrors == 2
    # without offloads a frame above the MTU is an error whatever its type
    c, _ = memory_wire()
    c.tx_burst(0, [OffloadPacket(2000)])  # type: ignore[list-item]
    assert c.statistics().oerrors == 1


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
