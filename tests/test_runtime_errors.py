"""What the poll loop does with an exception from the stack (dispatch/_runtime.py).

In production it counts it (``internal_errors``), logs it and goes on: one bad frame must not
stop a server.  In strict mode, which this suite turns on for itself (``TRIO_YASTACK_STRICT=1``
in conftest.py), it re-raises it, so the test that made the stack raise fails.

The stack has no known bug to trigger, so one is planted: the core's ``ether_input`` is wrapped
to raise on frames of the IEEE's local experimental EtherType 0x88B5 (which nothing else sends),
and the other end of the wire sends one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from trio_yastack import Stack, open_stack
from trio_yastack.dispatch import STRICT_ENV, PollLoop
from trio_yastack.nic import MemoryPort, memory_wire
from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore
from trio_yastack.stack.wire import MacAddress

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
EXPERIMENTAL_ETHERTYPE = b"\x88\xb5"


class PlantedBug(Exception):
    """The stack bug this module plants."""


def plant_bug(stack: Stack) -> None:
    """Make ``stack``'s ``ether_input`` raise on a frame of EtherType 0x88B5 (the poll loop
    looks ``core.ether_input`` up once per burst, so an instance attribute is what it calls)."""
    original: Callable[[bytes, float], None] = stack.core.ether_input

    def ether_input(frame: bytes, now: float) -> None:
        if frame[12:14] == EXPERIMENTAL_ETHERTYPE:
            raise PlantedBug("a bug in the stack")
        original(frame, now)

    stack.core.ether_input = ether_input  # type: ignore[method-assign]


def bad_frame(stack: Stack) -> bytes:
    return bytes(stack.mac) + bytes(MacAddress("02:00:00:00:00:99")) + EXPERIMENTAL_ETHERTYPE + bytes(46)


@asynccontextmanager
async def stack_with_planted_bug() -> AsyncIterator[tuple[Stack, Stack, MemoryPort]]:
    """Stack A (with the planted bug), stack B, and B's end of the wire to send from."""
    a_port, b_port = memory_wire()
    async with (
        open_stack(a_port, ip=f"{A_IP}/24", seed=1) as a,
        open_stack(b_port, ip=f"{B_IP}/24", seed=2) as b,
    ):
        plant_bug(a)
        yield a, b, b_port


def test_the_suite_runs_strict_and_so_do_its_subprocesses() -> None:
    """conftest.py sets the variable in the environment: a poll loop made here is strict, and so
    is one in a program the tests start."""
    assert os.environ.get(STRICT_ENV) == "1"
    code = "from trio_yastack.dispatch import strict_from_environment as s; print(s())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "True"


async def test_strict_run_fails_with_the_stack_exception(autojump_clock: trio.testing.MockClock) -> None:
    """Strict: the exception ends the poll loop and comes out of ``open_stack`` unwrapped,
    cancelling the application that was waiting inside it."""
    reached_the_end = False
    with pytest.raises(PlantedBug):
        async with stack_with_planted_bug() as (a, _b, b_port):
            b_port.tx_burst(0, [bad_frame(a)])
            await trio.sleep(10)  # cancelled by the failing poll loop long before
            reached_the_end = True
    assert not reached_the_end


async def test_non_strict_run_counts_logs_and_goes_on(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Production (the variable unset): the exception is counted and logged with its traceback,
    and the core goes on: the stack still answers a ping afterwards."""
    monkeypatch.delenv(STRICT_ENV)
    caplog.set_level(logging.ERROR, logger="trio_yastack.runtime")
    async with stack_with_planted_bug() as (a, b, b_port):
        assert not a._loop.strict
        b_port.tx_burst(0, [bad_frame(a), bad_frame(a)])
        async with b.ping_socket() as pinger:
            reply = await pinger.ping(A_IP, 1, b"still there?", timeout=1.0)
        assert reply.source == A_IP
        assert a.runtime_statistics()["internal_errors"] == 2
    errors = [r for r in caplog.records if r.name == "trio_yastack.runtime"]
    assert len(errors) == 2
    assert "internal error in ether_input" in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is PlantedBug


def test_explicit_flag_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PollLoop(strict=...)`` wins over ``TRIO_YASTACK_STRICT``; only ``"1"`` turns it on."""
    port, _peer = memory_wire()
    core = StackCore(StackConfig(InterfaceConfig(MacAddress("02:00:00:00:00:01"), IPv4Address(A_IP))))
    assert PollLoop(core, port).strict  # conftest's environment
    assert not PollLoop(core, port, strict=False).strict
    monkeypatch.setenv(STRICT_ENV, "0")
    assert not PollLoop(core, port).strict
    assert PollLoop(core, port, strict=True).strict
