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
