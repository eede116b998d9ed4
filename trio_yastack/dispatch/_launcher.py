"""The launcher: one process per core, each with its own trio runtime and stack.

Python's GIL allows one running interpreter thread per process, so cores mean processes.  The
parent opens the port (a multi-queue TAP gives a queue per core; a single queue is read by core
0 for everyone), makes the rings between every pair of cores (shared memory, inherited by
fork), forks one worker per core, and then only supervises:

- each worker is pinned to its CPU where the machine allows, ignores SIGINT (the parent turns
  Ctrl-C into one SIGTERM per worker) and runs ``worker(layout)``;
- SIGINT and SIGTERM to the parent go to every worker, which shut down gracefully;
- a worker that dies (a signal, or a non-zero status) is reported with its core and PID, and the
  whole server is stopped: nothing is restarted silently.  ``WorkerFailed`` says what happened;
- each worker's return value comes back to the parent through a pipe (pickled).

Fork happens before any trio run in the parent (forking a running trio is unsafe).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trio_yastack.nic import Port

from ._percore import CoreLayout
from ._ring import SpscRing
from ._rss import DEFAULT_RSS_KEY, Reta

__all__ = ["WorkerFailed", "launch", "make_layouts"]

#: how long workers get to stop after SIGTERM before they are killed (above hypercorn's
#: graceful timeout defaults)
_GRACE_SECONDS = 30.0


class WorkerFailed(RuntimeError):
    """A worker process died; the server was stopped."""


@dataclass(frozen=True, slots=True)
class _Worker:
    core: int
    pid: int
    results: int  # read end of its result pipe


def make_layouts(
    cores: int, *, multi_queue: bool, ring_capacity: int = 1 << 22, key: bytes = DEFAULT_RSS_KEY
) -> list[CoreLayout]:
    """Every core's layout, with a ring for every ordered pair of cores."""
    reta = Reta(cores)
    rings = {(i, j): SpscRing.create(ring_capacity) for i in range(cores) for j in range(cores) if i != j}
    return [
        CoreLayout(
            core_id=k,
            cores=cores,
            rx_queue=k if multi_queue else (0 if k == 0 else None),
            tx_queue=k if multi_queue else 0,
            rings_out={j: rings[(k, j)] for j in range(cores) if j != k},
            rings_in=[rings[(j, k)] for j in range(cores) if j != k],
            reta=reta,
            key=key,
            software_rss=not multi_queue,
        )
        for k in range(cores)
    ]


def _child(worker: Callable[[CoreLayout], Any], layout: CoreLayout, port: Port, results: int) -> None:
    """The body of a worker process: never returns."""
    status = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent sends SIGTERM instead
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        cpus = sorted(os.sched_getaffinity(0))
        with contextlib.suppress(OSError):  # pinning is a preference, not a requirement
            os.sched_setaffinity(0, {cpus[layout.core_id % len(cpus)]})
        keep = getattr(port, "keep_only_queue", None)
        if keep is not None and layout.rx_queue is not None and not layout.software_rss:
            keep(layout.rx_queue)
        value = worker(layout)
        payload = pickle.dumps(("ok", value))
    except BaseException as exc:  # report anything, then exit non-zero
        traceback.print_exc()
        payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
        status = 1
    try:
        with os.fdopen(results, "wb") as pipe:
            pipe.write(payload)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def launch(
    worker: Callable[[CoreLayout], Any],
    *,
    port: Port,
    cores: int,
    layouts: list[CoreLayout] | None = None,
) -> list[Any]:
    """Run ``worker(layout)`` in one process per core; return their values by core.

    ``port`` is open in this process; each worker uses it through its layout's queues.  Raises
    :class:`WorkerFailed` when a worker died or raised (the others are stopped first).
    """
    if cores < 2:
        raise ValueError("launch() is for two or more cores")
    multi_queue = port.capabilities.rx_queues >= cores
    layouts = layouts or make_layouts(cores, multi_queue=multi_queue)
    workers: dict[int, _Worker] = {}
    for layout in layouts:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _child(worker, layout, port, write_end)
        os.close(write_end)
        workers[pid] = _Worker(layout.core_id, pid, read_end)
    port.close()  # the workers hold the queues now; a device goes when the last of them exits
    return _supervise(workers)


def _supervise(workers: dict[int, _Worker]) -> list[Any]:
    stopping = False
    failures: list[str] = []
    values: dict[int, Any] = {}
    alive = dict(workers)

    def stop_all() -> None:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def kill_all(signum: int, _frame: Any) -> None:
        # The grace period is over: whoever is still running is killed (and reported).
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def begin_stopping() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            stop_all()
            signal.signal(signal.SIGALRM, kill_all)
            signal.alarm(int(_GRACE_SECONDS))  # shutting down is bounded

    def on_signal(signum: int, _frame: Any) -> None:
        begin_stopping()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    try:
        while alive:
            if failures:
                begin_stopping()
            pid, status = os.wait()
            worker = alive.pop(pid, None)
            if worker is None:
                continue
            with os.fdopen(worker.results, "rb") as pipe:
                raw = pipe.read()
            outcome = pickle.loads(raw) if raw else ("error", "no result")
            if os.WIFSIGNALED(status):
                name = signal.Signals(os.WTERMSIG(status)).name
                failures.append(f"worker for core {worker.core} (pid {pid}) was killed by {name}")
            elif os.WEXITSTATUS(status) != 0 or outcome[0] != "ok":
                failures.append(
                    f"worker for core {worker.core} (pid {pid}) exited with status "
                    f"{os.WEXITSTATUS(status)}: {outcome[1]}"
                )
            else:
                values[worker.core] = outcome[1]
    finally:
        signal.alarm(0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failures:
        raise WorkerFailed("; ".join(failures) + "; the server was stopped")
    return [values[core] for core in sorted(values)]
