"""The active side of a short connection (connect, SYN_SENT -> ESTABLISHED, the peer closing
first -> CLOSE_WAIT -> LAST_ACK, or both closing at once -> CLOSING -> TIME_WAIT) costs the
client less without changing a frame or a counter: each shortcut is held to the path it skips,
side by side (``bench_memory_wire.py``'s connections case is this cycle, both ends ours)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from socket_helpers import B_IP, two_stacks


async def test_a_connect_that_parked_returns_without_another_scheduler_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``connect`` parks until the handshake completes and returns in the step that wakes it,
    as trio's own connect returns after its ``wait_writable``: two steps of the connecting task
    (the SYN out and the park, then the return).  Was: a third, a ``checkpoint()`` after the
    wake-up (a task step and a scheduler pass more for every connection)."""
    async with two_stacks() as (a, b):
        listener = b.socket()
        await listener.bind((B_IP, 6101))
        listener.listen(4)
        client = a.socket()
        steps = 0
        done = trio.Event()

        class Steps(trio.abc.Instrument):
            def before_task_step(self, task: trio.lowlevel.Task) -> None:
                nonlocal steps
                if task.name.endswith("<locals>.connect"):
                    steps += 1

        async def connect() -> None:
            await client.connect((B_IP, 6101))
            done.set()

        instrument = Steps()
        with trio.fail_after(60):
            trio.lowlevel.add_instrument(instrument)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connect)
                    await done.wait()
            finally:
                trio.lowlevel.remove_instrument(instrument)
            assert steps == 2
            assert client.getpeername() == (B_IP, 6101)
            accepted, _ = await listener.accept()
        # still a checkpoint: a connect in a cancelled scope raises before it sends anything
        late = a.socket()
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await late.connect((B_IP, 6101))
        for sock in (client, accepted, listener, late):
            sock.close()
