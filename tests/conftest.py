"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trio_yastack.nic.netns import NetworkNamespace


@pytest.fixture
def netns() -> Iterator[NetworkNamespace]:
    """A private network namespace, deleted after the test with every process started in it
    (use with ``tap_helpers.requires_netns``)."""
    with NetworkNamespace() as namespace:
        yield namespace


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the bulk interop tests measured (reported, never asserted)."""
    import sys

    module = sys.modules.get("test_tap_bulk")
    lines = getattr(module, "REPORT", [])
    if lines:
        terminalreporter.section("TAP bulk transfers (1 GiB each)")
        for line in lines:
            terminalreporter.write_line(line)
