"""What every benchmark script reports the same way: the spread of a measurement over rounds, the
machine it ran on, and what wrk printed."""

from __future__ import annotations

import os
import platform
import re
import statistics
from collections.abc import Iterable

__all__ = ["machine", "parse_wrk", "spread"]


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, minimum and maximum of one measurement over the rounds."""
    samples = list(values)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"


def parse_wrk(out: str) -> dict[str, float]:
    """``wrk --latency``'s report as numbers: requests, req/s, p50/p99 in ms, socket errors, non-2xx."""
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def percentile(name: str) -> float:
        value, unit = re.search(rf"\s{name}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {
        "requests": requests,
        "requests_per_s": rate,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }
