"""Shared set-up for tests against the real Linux kernel through a TAP in a private namespace.

Every such test runs in a namespace it makes itself (the ``netns`` fixture, in conftest.py)
with the kernel side at 198.18.0.1/24 and the stack at 198.18.0.2/24; nothing leaves it.  Where the machine
cannot make namespaces the tests are skipped with the reason (CI here can, and runs them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from trio_yastack import Stack, open_stack
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
    "kernel_peer",
    "peer_result",
    "requires_netns",
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
