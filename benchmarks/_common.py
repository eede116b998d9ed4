"""What every benchmark script reports the same way: the spread of a measurement over rounds, and
the machine it ran on."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Iterable

__all__ = ["machine", "spread"]


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, minimum and maximum of one measurement over the rounds."""
    samples = list(values)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
