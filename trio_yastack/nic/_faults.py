"""A seeded fault-injecting port wrapper: a bad path around any port, in both directions.

This machine's kernel has no ``sch_netem``, so the faults sit where they cannot be missed: between
the stack and its port.  :class:`FaultPort` wraps a TAP, a bypass port or a memory-wire end and
does to the frames the stack sends (``tx``) and to the frames it receives (``rx``) what a bad path
does: loses, duplicates, reorders, corrupts and delays them (a fixed delay plus a uniform jitter),
each with its own seeded random source, so a run is repeatable for a seed and the kernel's TCP on
the other side of a TAP sees its own segments and ours mishandled as on a real lossy link.

Time is trio's clock: a delayed frame waits in a bounded heap per queue and direction, and is
released by the next ``rx_burst``/``tx_burst`` at or after its time; ``wait_rx`` wakes at the
earliest release, so under ``MockClock(autojump_threshold=0)`` a test with seconds of delay takes
milliseconds.  A frame that finds its heap full is a counted tail drop (``queue_drops``), never an
unbounded queue.

Corruption flips one bit, and stays detectable as it is on a wire: a received frame the inner port
vouched for (:class:`~trio_yastack.stack.ChecksumVerified`) goes up as plain bytes, so the stack
verifies it; a frame to send whose transport checksum the port completes
(:class:`~trio_yastack.stack.OffloadPacket`) has the bit flipped in its IPv4 header, which the
receiver always verifies (a flip under a checksum the port computes afterwards would be invisible,
which no real wire does).

Jitter alone does not reorder (a frame is never released before the one sent before it, as netem
with a rate); reordering is its own probability: the frame picked is held back ``reorder_gap``
seconds behind its release time, and the frames after it overtake it.

A delayed frame to send leaves from the next call on its queue, or from the idle ``wait_rx`` of
that queue; a core that transmits on a queue it never reads (software RSS: ``tap:NAME,queues=1``
under several cores) has no such wait, so its delayed frames leave with its next transmission:
use a queue per core with delay.

In a port spec, ``,faults=...`` after any port's own options wraps that port:
``tap:yas0,faults=loss:0.05/dup:0.01/reorder:0.05/corrupt:0.001/delay:0.02/jitter:0.01/seed:1``,
or ``faults=soak`` for the soak's setting (:data:`SOAK_FAULTS`).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import trio

from trio_yastack.stack._offload import OffloadPacket

from ._port import Port, PortWrapper

__all__ = ["SOAK_FAULTS", "FaultOptions", "FaultPort", "FaultStatistics", "parse_faults", "split_fault_spec"]

_ETHER_LEN = 14
_IPV4_MIN_HEADER = 20


@dataclass(frozen=True, slots=True)
class FaultOptions:
    """What the path does to each frame, per direction (the same settings both ways).

    ``loss``, ``duplicate``, ``reorder`` and ``corrupt`` are per-frame probabilities; ``delay``
    is one-way, in seconds, ``jitter`` a uniform spread of ± that many seconds around it;
    ``reorder_gap`` how far a reordered frame is held back; ``queue_limit`` the frames each
    queue and direction may hold delayed (beyond it: tail drop); ``seed`` makes it repeatable.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_gap: float = 0.005
    queue_limit: int = 4096
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"faults: {name} must be a probability in [0, 1], not {value}")
        for name in ("delay", "jitter", "reorder_gap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"faults: {name} must be a finite number of seconds >= 0, not {value}")
        if self.jitter > self.delay:
            raise ValueError(f"faults: jitter ({self.jitter}) must not exceed delay ({self.delay})")
        if self.queue_limit < 1:
            raise ValueError(f"faults: queue_limit must be >= 1, not {self.queue_limit}")

    @property
    def holds_frames(self) -> bool:
        """Whether frames may wait in the wrapper (delay or reordering), or all pass at once."""
        return self.delay > 0 or self.reorder > 0


#: the soak's bad path (issue 22): 5 % loss, 1 % duplication, 5 % reordering, 0.1 % corruption,
#: 20 ms ± 10 ms one-way delay, each direction
SOAK_FAULTS = FaultOptions(loss=0.05, duplicate=0.01, reorder=0.05, corrupt=0.001, delay=0.020, jitter=0.010)

_SPEC_NAMES = {"dup": "duplicate", "corruption": "corrupt", "gap": "reorder_gap", "limit": "queue_limit"}


def parse_faults(text: str) -> FaultOptions:
    """``loss:0.05/dup:0.01/...`` (or ``soak``, optionally followed by overrides such as
    ``soak/seed:7``) as :class:`FaultOptions`; a bad word is a ``ValueError`` naming it."""
    options = FaultOptions()
    known = {f.name for f in fields(FaultOptions)}
    for word in filter(None, text.split("/")):
        if word == "soak":
            options = replace(SOAK_FAULTS, seed=options.seed)
            continue
        key, sep, raw = word.partition(":")
        key = _SPEC_NAMES.get(key, key)
        if not sep or key not in known:
            names = ", ".join(sorted(known | set(_SPEC_NAMES)))
            raise ValueError(f"faults {text!r}: {word!r} is not key:value with a key among {names}, or soak")
        try:
            value: Any = int(raw, 0) if key in ("seed", "queue_limit") else float(raw)
        except ValueError:
            raise ValueError(f"faults {text!r}: bad value {raw!r} for {key}") from None
        options = replace(options, **{key: value})
    return options


def split_fault_spec(spec: str) -> tuple[str, FaultOptions | None]:
    """A port spec with its ``,faults=...`` pair taken out: (the inner port's spec, the faults or
    None).  The pair may stand anywhere after the port's name."""
    head, *pairs = spec.split(",")
    faults: FaultOptions | None = None
    kept = [head]
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if sep and key.strip() == "faults":
            faults = parse_faults(raw)
        else:
            kept.append(pair)
    return ",".join(kept), faults


@dataclass(frozen=True, slots=True)
class FaultStatistics:
    """What the path did to one direction's frames (summed over the queues)."""

    offered: int = 0  # frames handed to the path
    delivered: int = 0  # frames (copies included) handed on
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    queue_drops: int = 0  # tail drops: the delayed frames' heap was full
    held: int = 0  # frames waiting in the path now


class _Path:
    """One direction of one queue: the faults applied and the frames waiting for their time."""

    __slots__ = (
        "corrupted", "delivered", "duplicated", "heap", "last_release", "lost", "offered", "options",
        "queue_drops", "reordered", "rng", "seq", "tx",
    )  # fmt: skip

    def __init__(self, options: FaultOptions, rng: random.Random, *, tx: bool) -> None:
        self.options, self.rng, self.tx = options, rng, tx
        self.heap: list[tuple[float, int, bytes]] = []  # (release time, arrival order, frame)
        self.seq = 0
        self.last_release = -math.inf
        self.offered = self.delivered = self.lost = self.duplicated = 0
        self.reordered = self.corrupted = self.queue_drops = 0

    def carry(self, frames: Sequence[bytes], now: float, out: list[bytes]) -> None:
        """Apply the faults to ``frames``: those that pass at once go to ``out``, the delayed ones
        to the heap."""
        options, rng = self.options, self.rng
        loss, duplicate, corrupt, reorder = options.loss, options.duplicate, options.corrupt, options.reorder
        holds = options.holds_frames
        for frame in frames:
            self.offered += 1
            if loss and rng.random() < loss:
                self.lost += 1
                continue
            copies = 1
            if duplicate and rng.random() < duplicate:
                self.duplicated += 1
                copies = 2
            for _ in range(copies):
                copy = frame
                if corrupt and rng.random() < corrupt and frame:
                    copy = self._corrupt(frame)
                if not holds:
                    out.append(copy)
                    continue
                release = now + options.delay
                if options.jitter:
                    release += rng.uniform(-options.jitter, options.jitter)
                if reorder and rng.random() < reorder:
                    self.reordered += 1
                    release = max(release, self.last_release) + options.reorder_gap
                else:
                    release = self.last_release = max(release, self.last_release)
                if len(self.heap) >= options.queue_limit:
                    self.queue_drops += 1
                    continue
                self.seq += 1
                heapq.heappush(self.heap, (release, self.seq, copy))

    def _corrupt(self, frame: bytes) -> bytes:
        """``frame`` with one bit flipped where the receiver's check will see it (module doc)."""
        self.corrupted += 1
        rng = self.rng
        packet: Any = frame  # Port.tx_burst says bytes; the stack hands bytearrays (poll loop)
        if self.tx and packet.__class__ is OffloadPacket and len(packet) >= _ETHER_LEN + _IPV4_MIN_HEADER:
            damaged = OffloadPacket(len(packet), packet.gso_size)
            damaged[:] = packet
            damaged[_ETHER_LEN + rng.randrange(_IPV4_MIN_HEADER)] ^= 1 << rng.randrange(8)
            return damaged  # type: ignore[return-value]  # a bytearray, which every port writes as bytes
        raw = bytearray(frame)
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)  # a received frame loses its ChecksumVerified mark: the stack verifies it

    def release(self, now: float, limit: int, out: list[bytes]) -> None:
        """Move up to ``limit`` frames whose time has come from the heap to ``out``."""
        heap = self.heap
        while heap and heap[0][0] <= now and limit > 0:
            out.append(heapq.heappop(heap)[2])
            limit -= 1

    def next_release(self) -> float:
        return self.heap[0][0] if self.heap else math.inf


class FaultPort(PortWrapper):
    """``inner`` behind a bad path: every queue's received and sent frames go through seeded faults.

    The inner port's own counters are its own (``statistics()``); what the path did is
    :meth:`fault_statistics`.  Closing the wrapper closes the inner port and drops what waits.
    """

    def __init__(self, inner: Port, options: FaultOptions) -> None:
        super().__init__(inner)
        self.options = options
        master = random.Random(options.seed)
        caps = inner.capabilities
        # one seeded source per queue and direction: a queue's faults do not depend on the others'
        self._rx = [
            _Path(options, random.Random(master.getrandbits(64)), tx=False) for _ in range(caps.rx_queues)
        ]
        self._tx = [
            _Path(options, random.Random(master.getrandbits(64)), tx=True) for _ in range(caps.tx_queues)
        ]
        self._tx_backlog: list[list[bytes]] = [[] for _ in range(caps.tx_queues)]
        # the cancel scope of each queue's idle wait_rx: a frame sent meanwhile (by another task)
        # that is due earlier moves its deadline, so it leaves on time
        self._waits: dict[int, trio.CancelScope] = {}

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        path = self._rx[queue]
        now = trio.current_time()
        self._flush_tx(queue, now)
        out: list[bytes] = []
        if path.heap:
            path.release(now, max_n, out)
        if len(out) < max_n:
            fresh = self.inner.rx_burst(queue, max_n - len(out))
            if fresh:
                path.carry(fresh, now, out)
                if path.heap and len(out) < max_n:
                    path.release(now, max_n - len(out), out)
        path.delivered += len(out)
        return out

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        now = trio.current_time()
        path = self._tx[queue]
        due: list[bytes] = []
        path.carry(frames, now, due)
        backlog = self._tx_backlog[queue]
        if due:
            backlog.extend(due)
        self._flush_tx(queue, now)
        scope = self._waits.get(queue)
        if scope is not None and path.heap and path.heap[0][0] < scope.deadline:
            scope.deadline = path.heap[0][0]
        return len(frames)  # the path took them all: what it loses or drops is its own count

    def _flush_tx(self, queue: int, now: float) -> None:
        """Hand the inner port the frames whose time has come (a refused remainder waits, bounded
        by the queue limit, for the next call)."""
        if queue >= len(self._tx):
            return
        path, backlog = self._tx[queue], self._tx_backlog[queue]
        if path.heap:
            path.release(now, path.options.queue_limit, backlog)
        if not backlog:
            return
        accepted = self.inner.tx_burst(queue, backlog)
        path.delivered += accepted
        del backlog[:accepted]
        excess = len(backlog) - path.options.queue_limit
        if excess > 0:
            path.queue_drops += excess
            del backlog[:excess]

    async def wait_rx(self, queue: int) -> None:
        now = trio.current_time()
        tx = self._tx[queue] if queue < len(self._tx) else None
        wake = min(self._rx[queue].next_release(), tx.next_release() if tx else math.inf)
        if tx is not None and self._tx_backlog[queue]:
            wake = now  # the inner port refused frames: retry them on the next turn
        if wake <= now:
            self._flush_tx(queue, now)
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_at(wake) as scope:
            self._waits[queue] = scope
            try:
                await self.inner.wait_rx(queue)
            finally:
                del self._waits[queue]
        self._flush_tx(queue, trio.current_time())

    def fault_statistics(self) -> dict[str, FaultStatistics]:
        """``{"rx": ..., "tx": ...}``: what the path did to received and to sent frames."""
        return {"rx": self._summed(self._rx), "tx": self._summed(self._tx)}

    @staticmethod
    def _summed(paths: list[_Path]) -> FaultStatistics:
        return FaultStatistics(
            offered=sum(p.offered for p in paths),
            delivered=sum(p.delivered for p in paths),
            lost=sum(p.lost for p in paths),
            duplicated=sum(p.duplicated for p in paths),
            reordered=sum(p.reordered for p in paths),
            corrupted=sum(p.corrupted for p in paths),
            queue_drops=sum(p.queue_drops for p in paths),
            held=sum(len(p.heap) for p in paths),
        )

    def close(self) -> None:
        for path in (*self._rx, *self._tx):
            path.heap.clear()
        for backlog in self._tx_backlog:
            backlog.clear()
        super().close()
