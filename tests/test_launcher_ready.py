"""The launcher's readiness barrier (``launch(..., ready=)`` and ``worker_ready``), no network.

Was a bug (fixed): with ``yastack serve --cores 2`` core 0 printed ``# try: curl ...`` as soon as
its own listeners were up, so a request sent at once could reach core 1 before it listened and be
refused (tests/test_journey_netns.py's two-core test failed once this way).  Now each worker says
when it serves and the parent prints only once every worker has.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trio_yastack.dispatch._launcher import WorkerFailed, launch, worker_ready


class _NoPort:
    """What launch() asks of a port: its queue count, and close() (the workers hold nothing)."""

    capabilities = SimpleNamespace(rx_queues=2)

    def close(self) -> None:
        pass


def test_ready_is_called_only_once_every_worker_is_ready(tmp_path: Path) -> None:
    """Core 1 takes longer to come up (it is late on purpose, as a slow core is): ``ready`` runs
    in the parent only after both workers made their "listening" mark, with each announcement."""
    seen: list[tuple[list[str], list[str]]] = []

    def worker(layout: Any) -> int:
        if layout.core_id == 1:
            time.sleep(0.3)  # the slow core's start-up, not synchronisation: the barrier must wait
        (tmp_path / f"listening-{layout.core_id}").touch()
        assert worker_ready(f"core {layout.core_id} serves")
        return int(layout.core_id)

    def ready(announcements: list[str]) -> None:
        seen.append((announcements, sorted(os.listdir(tmp_path))))

    values = launch(worker, port=_NoPort(), cores=2, ready=ready)  # type: ignore[arg-type]  # a stand-in port
    assert values == [0, 1]
    assert seen == [(["core 0 serves", "core 1 serves"], ["listening-0", "listening-1"])]


def test_ready_is_not_called_when_a_worker_fails_first() -> None:
    called: list[list[str]] = []

    def worker(layout: Any) -> None:
        if layout.core_id == 1:
            raise RuntimeError("no listener on core 1")
        worker_ready("core 0 serves")

    with pytest.raises(WorkerFailed, match="core 1"):
        launch(worker, port=_NoPort(), cores=2, ready=called.append)  # type: ignore[arg-type]  # a stand-in port
    assert called == []


def test_worker_ready_outside_a_launch_does_nothing() -> None:
    assert worker_ready("alone") is False
