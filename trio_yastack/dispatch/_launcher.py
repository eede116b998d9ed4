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
- each worker's return value comes back to the parent through a pipe (pickled);
- with ``ready=``, a readiness barrier: each worker calls :func:`worker_ready` once it serves
  (its listeners are up) and the parent calls ``ready`` with what they announced only when every
  worker has, so a line like ``# try: curl ...`` is never printed while a core still refuses.

Fork happens before any trio run in the parent (forking a running trio is unsafe).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
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

__all__ = ["WorkerFailed", "launch", "make_layouts", "worker_ready"]

#: how long workers get to stop after SIGTERM before they are killed (above hypercorn's
#: graceful timeout defaults)
_GRACE_SECONDS = 30.0


#: in a worker launched with ``ready=``: the write end of its readiness pipe (set after the fork,
#: once per process, and closed by worker_ready)
_ready_fd: int | None = None


def worker_ready(announcement: str = "") -> bool:
    """Tell the launcher this worker serves (call it once its listeners are up).

    ``announcement`` reaches the parent's ``ready`` callback with the other workers' once every
    worker has called this.  Returns False (and does nothing) outside a worker launched with
    ``ready=``, so the same code runs on one core too."""
    global _ready_fd
    fd, _ready_fd = _ready_fd, None
    if fd is None:
        return False
    try:
        os.write(fd, announcement.encode() + b"\0")
    finally:
        os.close(fd)
    return True


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


def _child(
    worker: Callable[[CoreLayout], Any],
    layout: CoreLayout,
    port: Port | None,
    results: int,
    ready: int | None,
) -> None:
    """The body of a worker process: never returns."""
    global _ready_fd
    _ready_fd = ready
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
    port: Port | None,
    cores: int,
    layouts: list[CoreLayout] | None = None,
    ready: Callable[[list[str]], None] | None = None,
) -> list[Any]:
    """Run ``worker(layout)`` in one process per core; return their values by core.

    ``port`` is open in this process; each worker uses it through its layout's queues (None: the
    workers use kernel sockets only, as ``yastack proxy --cores N`` without ``--nic``).  Raises
    :class:`WorkerFailed` when a worker died or raised (the others are stopped first).
    ``ready``: called in this process, once, with every worker's :func:`worker_ready`
    announcement (by core) when all of them have called it; not at all if one ends before.
    """
    if cores < 2:
        raise ValueError("launch() is for two or more cores")
    multi_queue = port is None or port.capabilities.rx_queues >= cores
    layouts = layouts or make_layouts(cores, multi_queue=multi_queue)
    workers: dict[int, _Worker] = {}
    readiness: dict[int, int] = {}  # core -> read end of its readiness pipe
    for layout in layouts:
        read_end, write_end = os.pipe()
        ready_read, ready_write = os.pipe() if ready is not None else (None, None)
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            for fd in [ready_read, *readiness.values()]:
                if fd is not None:
                    os.close(fd)  # the parent's read ends: not the worker's to hold
            _child(worker, layout, port, write_end, ready_write)
        os.close(write_end)
        if ready_read is not None and ready_write is not None:
            os.close(ready_write)
            readiness[layout.core_id] = ready_read
        workers[pid] = _Worker(layout.core_id, pid, read_end)
    if port is not None:
        port.close()  # the workers hold the queues now; a device goes when the last of them exits
    return _supervise(workers, readiness, ready)


def _wait_ready(readiness: dict[int, int], ready: Callable[[list[str]], None]) -> None:
    """The barrier: read every worker's announcement (up to its NUL); call ``ready`` when all
    came.  A worker that ends first (EOF) ends the wait without a call: _supervise reports it."""
    received = {core: b"" for core in readiness}
    complete: dict[int, str] = {}
    by_fd = {fd: core for core, fd in readiness.items()}
    try:
        while by_fd:
            readable, _, _ = select.select(list(by_fd), [], [])
            for fd in readable:
                core = by_fd[fd]
                chunk = os.read(fd, 4096)
                received[core] += chunk
                if not chunk or b"\0" in received[core]:
                    del by_fd[fd]
                    if chunk:
                        complete[core] = received[core].split(b"\0", 1)[0].decode(errors="replace")
        if len(complete) == len(readiness):
            ready([complete[core] for core in sorted(complete)])
    finally:
        for fd in readiness.values():
            os.close(fd)


def _supervise(
    workers: dict[int, _Worker], readiness: dict[int, int], ready: Callable[[list[str]], None] | None
) -> list[Any]:
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
        if ready is not None:
            _wait_ready(readiness, ready)  # a signal meanwhile stops the workers: their EOFs end it
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
