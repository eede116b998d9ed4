"""A virtual wire between two ports, with seeded faults, driven by trio's clock.

Nothing runs in the background: a frame handed to ``tx_burst`` is given its arrival time
(now + serialisation at ``rate_bps`` behind the frames already on the wire + ``latency``) and
put in the other port's queue, and ``rx_burst`` hands over the frames whose arrival time has
come.  Under ``trio.testing.MockClock(autojump_threshold=0)`` a test with seconds of simulated
latency and timeouts therefore runs in milliseconds and is exactly repeatable for a seed.

``offloads=True`` makes the wire what a virtio-net pair or the kernel's loopback is: ports with
checksum offload both ways and TSO.  A TSO frame (an ``OffloadPacket`` up to 64 KiB) crosses the
wire whole, as a GSO packet crosses a veth or loopback unsegmented, and arrives
:class:`~trio_yastack.stack.ChecksumVerified` with its partial checksum (the virtio-net header's
``NEEDS_CSUM``: the frame never left the machine); every uncorrupted frame arrives marked, so the
receiving stack verifies nothing, as over loopback.  An ``OffloadPacket`` (every TCP segment the
stack sends with offloads: a new bytearray per segment, never touched by the sender once in the
outbox) is marked without a copy, re-classed in place as
:class:`~trio_yastack.stack._offload.ChecksumVerifiedPacket` (as a veth hands the same skb to the
peer); any other frame (bytes: ARP, UDP, ICMP) is copied into a ``ChecksumVerified``.  A frame
the wire corrupted arrives unmarked and is verified (and dropped): a NIC with receive checksum
offload would flag it bad.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, enable_ki_protection, reschedule
from trio.lowlevel import wait_task_rescheduled as _wait_task_rescheduled

from trio_yastack.stack._offload import ChecksumVerified, ChecksumVerifiedPacket, OffloadPacket
from trio_yastack.stack.wire import MacAddress

from ._port import Port, PortCapabilities, PortCounters, PortStatistics

__all__ = ["MemoryPort", "WireStatistics", "memory_wire"]

#: how much later than its own arrival time a frame picked for reordering arrives
REORDER_DELAY = 0.001


@dataclass(frozen=True, slots=True)
class WireStatistics:
    """What the wire did to the frames one port sent."""

    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    queue_drops: int = 0  # tail drops at the receiving port's queue (``queue_limit``)


def _vouched(frame: bytes) -> bytes:
    """``frame`` marked "checksums vouched for": an ``OffloadPacket`` re-classed in place (no copy;
    the wire owns it now), anything else copied into a ``ChecksumVerified``."""
    packet: Any = frame  # Port.tx_burst says bytes; the stack hands OffloadPackets (poll loop)
    cls = packet.__class__
    if cls is OffloadPacket:
        packet.__class__ = ChecksumVerifiedPacket  # same layout; still the bytearray the sender built
        return packet  # type: ignore[no-any-return]  # a bytearray, which the receiving stack reads as bytes
    if cls is ChecksumVerifiedPacket:  # the second copy of a frame the wire duplicated
        return packet  # type: ignore[no-any-return]  # as above
    return ChecksumVerified(frame)


class _Direction:
    """One direction of the wire: the faults applied and the receiving port's queue."""

    __slots__ = (
        "busy_until",
        "corrupt",
        "corrupted",
        "duplicate",
        "duplicated",
        "fifo",
        "latency",
        "loss",
        "lost",
        "offloads",
        "plain",
        "queue",
        "queue_drops",
        "queue_limit",
        "rate_bps",
        "receiver",
        "reorder",
        "reordered",
        "rng",
        "sent",
        "seq",
    )  # fmt: skip

    def __init__(
        self,
        *,
        loss: float,
        duplicate: float,
        reorder: float,
        corrupt: float,
        latency: float,
        rate_bps: float | None,
        queue_limit: int,
        rng: random.Random,
        offloads: bool = False,
    ) -> None:
        self.loss, self.duplicate, self.reorder, self.corrupt = loss, duplicate, reorder, corrupt
        self.offloads = offloads
        #: a fault-free wire without latency or rate limit: ``carry``'s short way
        self.plain = not (loss or duplicate or reorder or corrupt or latency or rate_bps)
        self.latency, self.rate_bps, self.queue_limit, self.rng = latency, rate_bps, queue_limit, rng
        self.queue: list[tuple[float, int, bytes]] = []  # heap of (arrival time, seq, frame)
        #: a plain wire's queue instead: every frame is due at once, so arrival order is all
        #: there is to keep (a heap of equal times ordered by seq, without the tuples and pops)
        self.fifo: deque[bytes] = deque()
        self.seq = 0
        self.busy_until = 0.0
        self.sent = self.lost = self.duplicated = self.reordered = self.corrupted = self.queue_drops = 0
        self.receiver: MemoryPort | None = None

    def carry(self, frame: bytes, now: float) -> None:
        """Put one frame on the wire (the sender wakes the receiver once per burst)."""
        self.sent += 1
        if self.plain:  # no fault, latency or rate: the frame arrives now, as it is
            fifo = self.fifo
            if len(fifo) >= self.queue_limit:
                self.queue_drops += 1
                assert self.receiver is not None
                self.receiver._counters.imissed += 1
                return
            fifo.append(_vouched(frame) if self.offloads else frame)
            return
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.lost += 1
            return
        copies = 1
        if self.duplicate and rng.random() < self.duplicate:
            self.duplicated += 1
            copies = 2
        for _ in range(copies):
            arrival = now
            if self.rate_bps:
                start = max(now, self.busy_until)
                self.busy_until = start + len(frame) * 8 / self.rate_bps
                arrival = self.busy_until
            arrival += self.latency
            copy = frame
            if self.offloads:
                # The receiving port vouches for the checksums (the wire is memory); a TSO frame
                # stays whole and keeps its partial checksum, as over loopback.
                copy = _vouched(frame)
            if self.corrupt and rng.random() < self.corrupt and frame:
                self.corrupted += 1
                damaged = bytearray(frame)
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
                copy = bytes(damaged)
            if self.reorder and rng.random() < self.reorder:
                self.reordered += 1
                arrival += REORDER_DELAY
            if len(self.queue) >= self.queue_limit:
                self.queue_drops += 1
                assert self.receiver is not None
                self.receiver._counters.imissed += 1
                continue
            self.seq += 1
            heapq.heappush(self.queue, (arrival, self.seq, copy))

    def statistics(self) -> WireStatistics:
        return WireStatistics(
            self.sent, self.lost, self.duplicated, self.reordered, self.corrupted, self.queue_drops
        )


class MemoryPort(Port):
    """One end of a :func:`memory_wire`: a single-queue port."""

    def __init__(self, name: str, capabilities: PortCapabilities) -> None:
        self.name = name
        self._capabilities = capabilities
        #: the longest frame tx_burst takes, and the longest TSO frame (capabilities are frozen:
        #: worked out once, not per burst)
        self._limit = capabilities.max_frame_len
        self._tso_limit = capabilities.max_tso_size + 18 if capabilities.tso else self._limit
        self._counters = PortCounters()
        #: the tasks parked in ``wait_rx`` (the poll loop), in the order they parked: a list
        #: handed to ``reschedule``, not a ``ParkingLot`` (as the sockets' ``Waiter``: the lot's
        #: ordered dict, count arithmetic and coroutine frame per park cost ~1 us a cycle, and
        #: the wire parks and wakes each side's loop several times per short connection)
        self._rx_parked: list[Task] = []
        self._outgoing: _Direction | None = None  # frames this port sends
        self._incoming: _Direction | None = None  # frames this port receives
        self._closed = False

    @property
    def capabilities(self) -> PortCapabilities:
        return self._capabilities

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        if queue != 0:
            raise ValueError(f"{self.name} has one receive queue, not {queue + 1}")
        incoming = self._incoming
        assert incoming is not None
        if incoming.plain:  # frames arrive as they are sent: all of them are due (no clock read)
            fifo = incoming.fifo
            if not fifo or self._closed:
                return []
            if len(fifo) <= max_n:
                frames = list(fifo)
                fifo.clear()
            else:
                frames = [fifo.popleft() for _ in range(max_n)]
            counters = self._counters
            counters.ipackets += len(frames)
            counters.ibytes += sum(map(len, frames))
            return frames
        pending = incoming.queue
        if not pending or self._closed:
            return []
        now = trio.current_time()
        frames = []
        counters = self._counters
        while pending and pending[0][0] <= now and len(frames) < max_n:
            frame = heapq.heappop(pending)[2]
            frames.append(frame)
            counters.ibytes += len(frame)
        counters.ipackets += len(frames)
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        if queue != 0:
            raise ValueError(f"{self.name} has one transmit queue, not {queue + 1}")
        assert self._outgoing is not None
        if self._closed:
            return 0
        outgoing = self._outgoing
        now = 0.0 if outgoing.plain else trio.current_time()  # a plain wire's frames are due at once
        limit = self._limit
        counters = self._counters
        carry = outgoing.carry
        tso_limit = self._tso_limit
        for frame in frames:
            if len(frame) > limit and not (
                frame.__class__ is OffloadPacket  # type: ignore[comparison-overlap]  # bytearray in a bytes list
                and len(frame) <= tso_limit
            ):
                counters.oerrors += 1
                continue
            counters.opackets += 1
            counters.obytes += len(frame)
            carry(frame, now)
        receiver = outgoing.receiver
        if frames and receiver is not None and receiver._rx_parked:  # (nobody parked: one test)
            receiver._wake_rx()
        return len(frames)

    @enable_ki_protection  # a KeyboardInterrupt must not leave a task half-woken
    def _wake_rx(self) -> None:
        """Wake every task parked in ``wait_rx`` now, in the order they parked (``unpark_all``)."""
        parked, self._rx_parked = self._rx_parked, []
        for task in parked:
            reschedule(task)

    @enable_ki_protection  # between the append and the park, a KeyboardInterrupt would strand it
    async def _park_rx(self) -> None:
        """Park until the peer's next ``tx_burst`` (or a cancellation, which takes the task off
        the list: a woken task is never aborted, so an aborted one is still in the current list)."""
        task = current_task()
        self._rx_parked.append(task)

        def abort(_: RaiseCancelT) -> Abort:
            self._rx_parked.remove(task)
            return Abort.SUCCEEDED

        await _wait_task_rescheduled(abort)

    async def wait_rx(self, queue: int) -> None:
        incoming = self._incoming
        assert incoming is not None
        if incoming.plain:
            if incoming.fifo:
                await trio.lowlevel.checkpoint()  # due at once (as move_on_at(0.0) would say)
            else:
                await self._park_rx()
            return
        pending = incoming.queue
        if pending:
            with trio.move_on_at(pending[0][0]):
                await self._park_rx()
            await trio.lowlevel.checkpoint()
        else:
            await self._park_rx()

    def statistics(self) -> PortStatistics:
        return self._counters.snapshot()

    def wire_statistics(self) -> WireStatistics:
        """What the wire did to the frames this port sent."""
        assert self._outgoing is not None
        return self._outgoing.statistics()

    def close(self) -> None:
        self._closed = True


def memory_wire(
    *,
    loss: float = 0.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    corrupt: float = 0.0,
    latency: float = 0.0,
    rate_bps: float | None = None,
    queue_limit: int = 4096,
    seed: int | None = None,
    mtu: int = 1500,
    macs: tuple[str, str] = ("02:00:00:00:00:01", "02:00:00:00:00:02"),
    max_burst: int = 32,
    offloads: bool = False,
) -> tuple[MemoryPort, MemoryPort]:
    """Two ports joined by a virtual wire; each fault applies to each direction separately.

    ``loss``, ``duplicate``, ``reorder`` and ``corrupt`` are per-frame probabilities;
    ``corrupt`` flips one bit.  ``latency`` is one-way, in seconds; ``rate_bps`` limits each
    direction's bit rate (frames queue behind each other); ``queue_limit`` bounds the frames
    in flight plus waiting at each receiver (beyond it, tail drop counted as ``imissed``).
    ``seed`` makes the faults repeatable.  ``offloads``: both ports offer checksum offload both
    ways and TSO up to 64 KiB (see the module docstring); off, every frame must fit the MTU and
    carries its own checksums, as today.
    """
    for name, probability in (
        ("loss", loss),
        ("duplicate", duplicate),
        ("reorder", reorder),
        ("corrupt", corrupt),
    ):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], not {probability}")
    if latency < 0 or (rate_bps is not None and rate_bps <= 0) or queue_limit < 1:
        raise ValueError("latency must be >= 0, rate_bps > 0 and queue_limit >= 1")
    master = random.Random(seed)
    ports = []
    for index, mac in enumerate(macs):
        caps = PortCapabilities(
            mac=MacAddress(mac),
            mtu=mtu,
            max_burst=max_burst,
            rx_checksum_offload=offloads,
            tx_checksum_offload=offloads,
            tso=offloads,
            max_tso_size=0xFFFF if offloads else 0,
        )
        ports.append(MemoryPort(f"mem{index}", caps))
    a, b = ports
    directions = []
    for sender, receiver in ((a, b), (b, a)):
        direction = _Direction(
            loss=loss, duplicate=duplicate, reorder=reorder, corrupt=corrupt, latency=latency,
            rate_bps=rate_bps, queue_limit=queue_limit, rng=random.Random(master.getrandbits(64)),
            offloads=offloads,
        )  # fmt: skip
        direction.receiver = receiver
        sender._outgoing = direction
        receiver._incoming = direction
        directions.append(direction)
    return a, b
