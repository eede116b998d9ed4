"""Shared set-up for tests against the real Linux kernel through a TAP in a private namespace.

Every such test runs in a namespace it makes itself (the ``netns`` fixture, in conftest.py)
with the kernel side at 198.18.0.1/24 and the stack at 198.18.0.2/24; nothing leaves it.  Where the machine
cannot make namespaces the tests are skipped with the reason (CI here can, and runs them).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_yastack import Stack, open_stack
from trio_yastack.nic.kernel_peer import pattern_block
from trio_yastack.nic.netns import (
    KERNEL_ADDRESS,
    STACK_ADDRESS,
    NetworkNamespace,
    netns_unavailable_reason,
    tap_in_netns,
)
from trio_yastack.nic.tap import TapPort

__all__ = [
    "KERNEL_ADDRESS",
    "STACK_ADDRESS",
    "STARTUP_TIMEOUT",
    "NamespaceProgram",
    "kernel_peer",
    "peer_result",
    "receive_hashed",
    "requires_netns",
    "send_pattern",
    "stack_on_tap",
]

_REASON = netns_unavailable_reason()
requires_netns = pytest.mark.skipif(_REASON is not None, reason=f"no private network namespace: {_REASON}")


@asynccontextmanager
async def stack_on_tap(
    namespace: NetworkNamespace, *, offloads: bool = True, mtu: int = 1500, **stack_options: Any
) -> AsyncIterator[tuple[Stack, TapPort]]:
    """A TAP ``yas0`` in ``namespace`` (kernel side 198.18.0.1/24) with a stack at 198.18.0.2/24."""
    with tap_in_netns(namespace, offloads=offloads, mtu=mtu) as port:
        async with open_stack(port, ip=f"{STACK_ADDRESS}/24", **stack_options) as stack:
            yield stack, port


def kernel_peer(namespace: NetworkNamespace, *args: object, **popen: Any) -> subprocess.Popen[str]:
    """Start ``python -m trio_yastack.nic.kernel_peer ARGS`` on the kernel side (stdout piped)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("text", True)
    popen.setdefault("env", {**os.environ, "PYTHONUNBUFFERED": "1"})
    return namespace.popen([sys.executable, "-m", "trio_yastack.nic.kernel_peer", *map(str, args)], **popen)


def peer_result(process: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    """The last JSON line the kernel peer printed (after it exits)."""
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"kernel peer failed ({process.returncode}): {out}"
    return json.loads(out.strip().splitlines()[-1])


async def receive_hashed(sock: trio.socket.SocketType, limit: int) -> tuple[int, str]:
    """Read ``sock`` to EOF: how many bytes came and their SHA-256 (hex).  Bounded: it stops
    reading once more than ``limit`` bytes came, which the caller's byte count then shows."""
    digest = hashlib.sha256()
    received = 0
    while received <= limit and (chunk := await sock.recv(1 << 20)):
        digest.update(chunk)
        received += len(chunk)
    return received, digest.hexdigest()


async def send_pattern(sock: trio.socket.SocketType, nbytes: int) -> str:
    """Send ``nbytes`` of the kernel peer's pattern (``pattern_block``), shut down the sending
    side and read until the peer closes (it does once it has read everything): the SHA-256 (hex)
    of what was sent, for the peer's own to be compared with."""
    digest = hashlib.sha256()
    sent = index = 0
    while sent < nbytes:
        block = pattern_block(index)[: nbytes - sent]
        index += 1
        digest.update(block)
        view = memoryview(block)
        while view:
            view = view[await sock.send(view) :]
        sent += len(block)
    sock.shutdown(trio.socket.SHUT_WR)
    for _ in range(nbytes + 1):  # bounded: at least one byte per turn until EOF
        if not await sock.recv(65536):
            break
    return digest.hexdigest()


REPO = Path(__file__).resolve().parent.parent
#: how long a program in a namespace gets to print what a test waits for
STARTUP_TIMEOUT = 60.0


class NamespaceProgram:
    """A process in a namespace whose merged stdout/stderr a thread drains (a chatty program
    never blocks on a full pipe); tests wait on the lines it prints and on its exit."""

    def __init__(
        self,
        namespace: NetworkNamespace,
        args: list[str],
        *,
        stdin: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.process: subprocess.Popen[str] = namespace.popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env,
        )
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # ends at EOF: the process exited
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def _wait_until(self, done: Callable[[list[str]], Any], what: str, timeout: float) -> Any:
        """``done(lines)`` once it is truthy, waiting up to ``timeout`` s for more lines."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = done(self._lines)
                if result:
                    return result
                if self._eof:
                    raise AssertionError(f"exited without printing {what}:\n{''.join(self._lines)}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{what} not printed in {timeout} s:\n{''.join(self._lines)}")
                self._changed.wait(remaining)

    def wait_for_line(self, marker: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """The first line containing ``marker``."""
        return self._wait_until(
            lambda lines: next((line for line in lines if marker in line), None), repr(marker), timeout
        )

    def wait_for_lines(self, *markers: str, timeout: float = STARTUP_TIMEOUT) -> list[str]:
        """For each marker, the first line that starts with it."""

        def found(lines: list[str]) -> list[str] | None:
            first = [next((line for line in lines if line.startswith(m)), None) for m in markers]
            return [line for line in first if line is not None] if all(first) else None

        return self._wait_until(found, f"all of {markers}", timeout)

    def count_lines(self, marker: str) -> int:
        """How many lines so far contain ``marker``."""
        with self._changed:
            return sum(marker in line for line in self._lines)

    def wait_for_count(self, marker: str, count: int, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until ``count`` lines contain ``marker``."""
        self._wait_until(
            lambda lines: sum(marker in line for line in lines) >= count, f"{count} x {marker!r}", timeout
        )

    def send_signal(self, signum: int, expected: bytes) -> None:
        """``signum`` to the program itself (``ip netns exec`` execs it: the Popen PID is the
        program's), after checking that PID still runs a command line containing ``expected``."""
        assert self.process.poll() is None, self.output
        argv = Path(f"/proc/{self.process.pid}/cmdline").read_bytes().split(b"\0")
        assert any(expected in arg for arg in argv), f"PID {self.process.pid} is {argv!r}"
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit status, waiting up to ``timeout`` s; then the whole output is in."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code
