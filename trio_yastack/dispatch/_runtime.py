"""The per-core runtime: one poll loop that runs a stack instance on one port queue.

Each turn: one bounded ``rx_burst``, the burst through ``ether_input_burst`` (the established-
connection fast path, ``ether_input`` for each frame it declines; the transports'
output deferred to the end of the burst: one ACK for many segments), the due timers, one
wake-up per socket that changed, one ``tx_burst``.  When a turn received nothing and no timer
is due, the loop sleeps in ``port.wait_rx`` with the stack's next deadline around it; an
application that queues frames (a send) ``kick``s it awake.

An exception from the stack is a bug.  In production it is counted (``internal_errors``) and
logged (the first ten), and the core goes on: one bad frame must not stop a server.  In strict
mode (``strict=True``, or ``TRIO_YASTACK_STRICT=1`` in the environment, which the test suite
sets for itself and for the servers it starts) it is counted, logged and re-raised, so it ends
the poll loop and, through ``open_stack``'s nursery, the application: no test passes while the
stack raised.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

import trio

from trio_yastack.nic import Port
from trio_yastack.stack import ChecksumVerified, StackCore
from trio_yastack.stack._offload import VOUCHED
from trio_yastack.stack.tcp import FLOOD_HOLD

if TYPE_CHECKING:
    from ._percore import CoreLayout

__all__ = ["AUTOCORK_ENV", "STRICT_ENV", "PollLoop", "RuntimeStatistics", "strict_from_environment"]

log = logging.getLogger("trio_yastack.runtime")

#: the environment variable that makes every poll loop of the process strict (``"1"``)
STRICT_ENV = "TRIO_YASTACK_STRICT"
#: ``"0"`` turns autocorking off for every poll loop of the process (a benchmark's baseline)
AUTOCORK_ENV = "TRIO_YASTACK_AUTOCORK"


def strict_from_environment() -> bool:
    """Whether ``TRIO_YASTACK_STRICT=1``: stack exceptions are re-raised, not only counted."""
    return os.environ.get(STRICT_ENV) == "1"


class RuntimeStatistics:
    """Counters of the poll loop itself (mutable; ``snapshot()`` copies them)."""

    __slots__ = (
        "bursts",
        "frames_in",
        "frames_out",
        "idle_waits",
        "internal_errors",
        "tx_refused",
        "wakeups",
    )

    def __init__(self) -> None:
        self.bursts = self.frames_in = self.frames_out = self.idle_waits = 0
        self.internal_errors = self.tx_refused = self.wakeups = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class PollLoop:
    """Runs ``core`` on ``port`` queue ``queue`` inside the current trio run."""

    def __init__(
        self,
        core: StackCore,
        port: Port,
        *,
        queue: int = 0,
        burst: int | None = None,
        layout: CoreLayout | None = None,
        strict: bool | None = None,
    ) -> None:
        self.core = core
        self.port = port
        self.layout = layout
        #: the queue this loop reads (None: only the rings of other cores) and the one it writes
        self.queue: int | None = queue if layout is None else layout.rx_queue
        self.tx_queue = queue if layout is None else layout.tx_queue
        if layout is not None:
            layout.install(core)
        self.burst = burst or port.capabilities.max_burst
        self.stats = RuntimeStatistics()
        self._idle_scope: trio.CancelScope | None = None
        self._logged_errors = 0
        #: re-raise stack exceptions after counting them (None: ``TRIO_YASTACK_STRICT``)
        self.strict = strict_from_environment() if strict is None else strict
        #: autocorking: tcp_output holds a sub-MSS tail behind a frame of its connection still in
        #: the outbox (``TRIO_YASTACK_AUTOCORK=0`` turns it off, for a side-by-side measurement)
        self.cork_tails = os.environ.get(AUTOCORK_ENV, "1") != "0"
        #: ``core.tx_gen`` at the end of the last two turns: a tail held before the older one
        #: has waited two turns, and so two checkpoints in which every task the turn that held
        #: it woke has run (trio may run a woken task after the loop's next turn, not before the
        #: one after)
        self._cork_marks = (0, 0)

    def kick(self) -> None:
        """An application call may have queued frames or output, made sockets ready, or set a
        timer: wake the sleeping loop if there is work for it, or only bring its wake-up time
        forward for an earlier timer.  A call that changed nothing (a read that opened no
        window worth announcing) costs the loop no turn, and so no system call."""
        scope = self._idle_scope
        if scope is None:
            return  # not asleep: the next turn sees everything
        core = self.core
        if core.outbox or core.output_pending or core.ready or core.corked:
            # A deadline in the past wakes the loop on the scheduler's next pass, as cancel()
            # does, without what cancel() costs in trio >= 0.30: the repr() of the calling task
            # for the Cancelled's reason (2.6 % of a bulk transfer's CPU, called per send).
            scope.deadline = -math.inf
            return
        deadline = core.next_deadline()
        if deadline is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        core, port, queue, burst, stats = self.core, self.port, self.queue, self.burst, self.stats
        tcp = core.tcp
        core.autocork = True  # application sends are sent by this loop's turns
        core.cork_tails = self.cork_tails
        core.start(trio.current_time())
        self.flush()
        task_status.started()
        layout = self.layout
        woke_last = False  # whether the previous turn woke tasks
        while True:
            frames = port.rx_burst(queue, burst) if queue is not None else []
            now = trio.current_time()
            if len(frames) >= burst and now - tcp.cookies_at < FLOOD_HOLD:
                # the port is backlogged (more frames wait) and a listener is flooded: drop
                # the SYNs beyond the burst's budget before any layer parses them
                frames = tcp.shed_syns(frames, now)
            if layout is not None:
                frames = self._dispatch(frames, now)
            if frames:
                stats.bursts += 1
                stats.frames_in += len(frames)
                core.begin_burst()
                # One call per burst: the fast path classifies the whole burst at once (one
                # crossing into C) and hands what it declines to ether_input, frame by frame, in
                # order; a bug in the stack is counted per frame (and raised if strict).  A tracer
                # that starts swaps the core's class, which turns the fast path off for its frames.
                try:
                    core.ether_input_burst(frames, now, self._ether_input_error)
                except Exception as exc:
                    if self.strict:
                        raise  # counted and logged by _ether_input_error already
                    self._internal_error("ether_input_burst", exc)
                try:
                    core.end_burst(now)
                except Exception as exc:
                    self._internal_error("end_burst", exc)
            try:
                core.run_timers(now)
                core.run_pending_output(now)  # what the applications sent since the last turn
            except Exception as exc:
                self._internal_error("run_timers", exc)
            woke = self.wake_ready()
            self.flush()
            if core.corked and self._release_corked():
                await trio.lowlevel.checkpoint()  # tails are held: turn again, never sleep on them
                woke_last = woke
                continue
            if frames or woke or woke_last:
                # Tasks this turn or the one before woke may not have run yet (trio runs a
                # batch in either order, the loop's next turn maybe first): turn again rather
                # than sleep, so their sends (a keep-alive request's response) find the loop
                # awake, not a sleep that each send's kick must end -- a scope cancelled, an
                # epoll registration made and withdrawn, a turn more.
                await trio.lowlevel.checkpoint()
                woke_last = woke
                continue
            woke_last = False
            deadline = core.next_deadline()
            if deadline is not None and deadline <= now:
                await trio.lowlevel.checkpoint()
                continue
            stats.idle_waits += 1
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._idle_scope = scope
                if layout is None:
                    # without a layout, queue is the int given to __init__ (None only with one)
                    await port.wait_rx(queue)  # type: ignore[arg-type]
                else:
                    await self._wait_port_or_rings(layout)
            self._idle_scope = None

    def _release_corked(self) -> bool:
        """End of a turn with tails held (autocorking): send those held two turns ago, which
        no write of their application joined; True while tails are still held, so that the
        loop turns again instead of sleeping on them.  Linux releases a held tail when the
        device queue drains (a TX completion); a poll loop's queue is its turn, and its
        application writes between turns: one turn to run in (two for trio's batch order)
        is what a write needs to join the tail in a full segment."""
        core = self.core
        newer, older = self._cork_marks
        try:
            core.release_corked(trio.current_time(), older)
        except Exception as exc:
            self._internal_error("release_corked", exc)
        self.flush()
        self._cork_marks = (core.tx_gen, newer)
        return bool(core.corked)

    def _dispatch(self, frames: list[bytes], now: float) -> list[bytes]:
        """Sort a burst by flow owner: ours are returned with what the other cores' rings
        brought; the rest go to their owners' rings; ARP is ours and a copy for every core."""
        from ._percore import ALL_CORES, COPY_FLAG, VERIFIED_FLAG, flow_owner  # only with several cores

        layout = self.layout
        assert layout is not None
        stats = layout.stats
        mine: list[bytes] = []
        if frames:
            me = layout.core_id
            key, entries, mask = layout.key, layout.reta.entries, layout.reta.size - 1  # a copy per burst
            outgoing: dict[int, list[bytes]] = {}
            copies_sent = False
            for frame in frames:
                owner = flow_owner(frame, key, entries, mask)
                if owner == me:
                    mine.append(frame)
                elif owner == ALL_CORES:
                    mine.append(frame)
                    for ring in layout.rings_out.values():
                        stats.copied += 1
                        if not ring.enqueue(frame, COPY_FLAG):
                            stats.ring_drops += 1
                        copies_sent = True
                else:
                    outgoing.setdefault(owner, []).append(frame)
            stats.local += len(mine)
            if copies_sent:  # a sleeping core must wake for them too (its ARP cache learns)
                for ring in layout.rings_out.values():
                    ring.ring_doorbell_if_sleeping()
            for owner, batch in outgoing.items():
                if layout.software_rss:
                    stats.dispatched += len(batch)
                else:
                    stats.redirected += len(batch)
                ring = layout.rings_out[owner]
                for frame in batch:  # the port's checksum mark travels as a flag
                    if not ring.enqueue(frame, VERIFIED_FLAG if frame.__class__ in VOUCHED else 0):
                        stats.ring_drops += 1
                ring.ring_doorbell_if_sleeping()
        burst = self.burst
        for ring in layout.rings_in:
            for frame, flags in ring.dequeue_burst(burst):
                stats.from_rings += 1
                if flags & COPY_FLAG:
                    try:
                        self.core.learn_from_copy(frame, now)
                    except Exception as exc:
                        self._internal_error("learn_from_copy", exc)
                else:
                    mine.append(ChecksumVerified(frame) if flags & VERIFIED_FLAG else frame)
        return mine

    async def _wait_port_or_rings(self, layout: CoreLayout) -> None:
        """Sleep until the port queue or a ring from another core has frames (each ring's
        doorbell is rung only while its consumer says it sleeps)."""
        if not all(ring.prepare_sleep() for ring in layout.rings_in):
            for ring in layout.rings_in:
                ring.woke()
            await trio.lowlevel.checkpoint()
            return
        try:
            async with trio.open_nursery() as nursery:

                async def first(wait: Any, *args: Any) -> None:
                    await wait(*args)
                    nursery.cancel_scope.deadline = -math.inf  # cancel(), without its repr()

                if self.queue is not None:
                    nursery.start_soon(first, self.port.wait_rx, self.queue)
                for ring in layout.rings_in:
                    nursery.start_soon(first, trio.lowlevel.wait_readable, ring.doorbell_fd)
        finally:
            for ring in layout.rings_in:
                ring.woke()

    def wake_ready(self) -> bool:
        """Wake, once each, the tasks waiting on objects that changed in this turn; True when a
        task was parked on one (the loop then turns again before it sleeps)."""
        if not self.core.ready:
            return False
        stats = self.stats
        woke = False
        for owner in self.core.take_ready():
            waiter: Any = owner.waiter
            if waiter is not None:
                stats.wakeups += 1
                if waiter.wake():  # a Waiter says whether a task was parked there
                    woke = True
        return woke

    def flush(self) -> None:
        """Hand the stack's outbox to the port in one ``tx_burst``; frames it refuses are dropped
        and counted, as a DPDK application frees the mbufs ``rte_eth_tx_burst`` did not take."""
        core = self.core
        if core.output_pending:
            core.run_pending_output(trio.current_time())
        if not core.outbox:
            # a new generation all the same (take_outbox's): what the turn sent went elsewhere
            # (to our own address, queued for the next turn), and a tail held behind it ages
            core.tx_gen += 1
            return
        frames = core.take_outbox()
        # The stack builds frames in bytearrays, which every port writes as it writes bytes;
        # Port.tx_burst (nic/) is annotated Sequence[bytes] only (the ports and the memory wire pass
        # frames on as bytes), and mypy no longer promotes bytearray to bytes.
        accepted = self.port.tx_burst(self.tx_queue, frames)  # type: ignore[arg-type]
        self.stats.frames_out += accepted
        if accepted < len(frames):
            self.stats.tx_refused += len(frames) - accepted
            for _ in range(len(frames) - accepted):
                core.stats_ether.drop("tx_refused")

    def _ether_input_error(self, exc: Exception) -> None:
        self._internal_error("ether_input", exc)

    def _internal_error(self, where: str, exc: Exception) -> None:
        """Count and log ``exc``, a stack bug caught in ``where``; re-raise it when strict."""
        self.stats.internal_errors += 1
        if self.strict:
            log.exception("internal error in %s (strict: raised)", where, exc_info=exc)
            raise exc
        if self._logged_errors < 10:
            self._logged_errors += 1
            log.exception("internal error in %s (counted; the core goes on)", where, exc_info=exc)
