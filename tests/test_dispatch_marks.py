"""Software RSS keeps a frame's "checksums vouched for" mark across the ring to its core.

``PollLoop._dispatch`` hands a frame owned by another core to that core's ring with
``VERIFIED_FLAG`` when the port marked it, as ``ChecksumVerified`` (a copy) or as the memory
wire's ``ChecksumVerifiedPacket`` (the sender's buffer, re-classed), and without it otherwise:
a plain bytearray or an ``OffloadPacket`` nobody marked is verified by the core that takes it.
The loop and its layout are stand-ins with the attributes ``_dispatch`` reads.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from trio_yastack.dispatch._percore import VERIFIED_FLAG
from trio_yastack.dispatch._runtime import PollLoop
from trio_yastack.stack import ChecksumVerified, OffloadPacket
from trio_yastack.stack._offload import ChecksumVerifiedPacket


class _Ring:
    def __init__(self) -> None:
        self.records: list[tuple[Any, int]] = []

    def enqueue(self, frame: Any, flags: int) -> bool:
        self.records.append((frame, flags))
        return True

    def ring_doorbell_if_sleeping(self) -> None:
        pass


def _tcp_frame() -> bytes:
    ether = bytes(6) + bytes(6) + b"\x08\x00"
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]) + bytes([198, 18, 0, 1, 198, 18, 0, 2])
    tcp = (5001).to_bytes(2, "big") + (40000).to_bytes(2, "big") + bytes(16)
    return ether + ip + tcp


def _as(cls: Any, frame: bytes) -> Any:
    packet = OffloadPacket(len(frame))
    packet[:] = frame
    if cls is not OffloadPacket:
        packet.__class__ = cls
    return packet


def test_the_mark_crosses_the_ring_as_a_flag() -> None:
    ring = _Ring()
    stats = SimpleNamespace(copied=0, ring_drops=0, local=0, dispatched=0, redirected=0, from_rings=0)
    layout = SimpleNamespace(
        core_id=0, key=bytes(range(40)), reta=SimpleNamespace(entries=[1] * 128, size=128),
        rings_out={1: ring}, rings_in=[], software_rss=True, stats=stats,
    )  # fmt: skip
    loop: Any = SimpleNamespace(layout=layout, burst=32, core=None)
    frame = _tcp_frame()
    burst = [
        frame,
        ChecksumVerified(frame),
        _as(ChecksumVerifiedPacket, frame),
        _as(OffloadPacket, frame),
        bytearray(frame),
    ]
    mine = PollLoop._dispatch(loop, burst, 0.0)
    assert mine == [] and stats.dispatched == 5
    assert [flags for _frame, flags in ring.records] == [0, VERIFIED_FLAG, VERIFIED_FLAG, 0, 0]
    assert all(sent is given for (sent, _flags), given in zip(ring.records, burst, strict=True))
