"""What every benchmark script reports the same way: the spread of a measurement over rounds, the
machine it ran on (and how busy it was), what wrk printed, and what a server process costs (CPU
time, resident memory) read from ``/proc``."""

from __future__ import annotations

import os
import platform
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "cpu_seconds",
    "load_average",
    "machine",
    "parse_wrk",
    "pick_cpus",
    "process_tree",
    "rss_bytes",
    "spread",
    "stop_process",
    "tail",
    "wait_until",
]


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, minimum and maximum of one measurement over the rounds."""
    samples = list(values)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"


def load_average() -> float:
    """The 1-minute load average now: recorded beside each run, because the machine is shared and
    a figure taken while others were busy must say so."""
    return round(os.getloadavg()[0], 2)


def pick_cpus() -> tuple[int, int] | None:
    """(the server's CPU, the load generator's CPU), or None on a machine with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def _required(pattern: str, out: str) -> re.Match[str]:
    found = re.search(pattern, out)
    if found is None:
        raise ValueError(f"wrk printed no {pattern!r}:\n{out[-1000:]}")
    return found


def parse_wrk(out: str) -> dict[str, float]:
    """``wrk --latency``'s report as numbers: requests, req/s, p50/p99 in ms, socket errors, non-2xx
    (a report without the first four is wrk's failure: ValueError, with what it printed)."""
    requests = int(_required(r"(\d+) requests in", out).group(1))
    rate = float(_required(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def percentile(name: str) -> float:
        value, unit = _required(rf"\s{name}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {
        "requests": requests,
        "requests_per_s": rate,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def process_tree(pid: int) -> Iterator[int]:
    """``pid`` and every descendant alive now (hypercorn's and ``yastack serve --cores N``'s
    commands run their workers in child processes)."""
    pending = [pid]
    while pending:
        current = pending.pop()
        yield current
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants alive now, in seconds."""
    total = 0.0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants (VmRSS summed), in bytes."""
    total = 0
    for current in process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except FileNotFoundError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(found.group(1)) * 1024 if found else 0
    return total


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """End a server we started, by its PID: SIGINT (a graceful shutdown), SIGKILL after ``grace``
    seconds; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass (a benchmark's bounded
    wait for a server to come up or settle; tests use events instead)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
