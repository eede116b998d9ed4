"""Fixtures shared by the test modules, and the suite's strict mode."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from trio_yastack.dispatch import STRICT_ENV
from trio_yastack.nic.netns import NetworkNamespace

# Strict poll loops (dispatch/_runtime.py): an exception from the stack is re-raised, so it fails
# the test that caused it instead of being counted and logged while the test passes.  In the
# environment, so that the servers and workers the tests start as subprocesses are strict too.
# A test of the production behaviour passes ``PollLoop(strict=False)`` or overrides the variable.
os.environ[STRICT_ENV] = "1"


@pytest.fixture
def netns() -> Iterator[NetworkNamespace]:
    """A private network namespace, deleted after the test with every process started in it
    (use with ``tap_helpers.requires_netns``)."""
    with NetworkNamespace() as namespace:
        yield namespace


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the bulk interop tests measured (reported, never asserted)."""
    import sys

    for name, title in (
        ("test_tap_bulk", "TAP bulk transfers (1 GiB each)"),
        ("test_tcp_recovery_tap", "TAP transfers over loss (nftables on the kernel side)"),
    ):
        lines = getattr(sys.modules.get(name), "REPORT", [])
        if lines:
            terminalreporter.section(title)
            for line in lines:
                terminalreporter.write_line(line)
