"""``yastack serve`` collects less once it is up (``_cli._collect_less``): start-up objects frozen,
a generous young-generation threshold, and reference cycles still freed (bounded)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from trio_yastack._cli import SERVE_GC_THRESHOLD, _collect_less


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_start_up_objects_are_frozen_and_the_threshold_raised(restored_gc: None) -> None:
    before = gc.get_freeze_count()
    _collect_less()
    assert gc.get_threshold() == SERVE_GC_THRESHOLD
    assert gc.get_freeze_count() > before  # what was alive at start-up is no longer walked


def test_a_cycle_made_after_start_up_is_still_freed_by_young_collections(restored_gc: None) -> None:
    _collect_less()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    assert alive() is not None  # only the cyclic collector frees it
    # More net container allocations than the young threshold: at least one young collection ran
    keep: list[list[int]] = [[] for _ in range(SERVE_GC_THRESHOLD[0] + 1000)]
    assert alive() is None
    del keep
