"""Our ASGI server against hypercorn's trio worker and uvicorn, over the stack and on kernel sockets.

The same ASGI app (``examples/hello.py``, ``GET /``: a 13-byte ``Hello, world!``) and the same
load (``wrk -t1 -c50 --latency``) against four servers (``_asgi_sides.py`` says how each starts):

- ``ours_stack``: ``yastack serve --server yastack`` over the stack (TAP): the main job;
- ``ours_kernel``: the same server on kernel sockets (veth): the server alone;
- ``hypercorn_kernel``: hypercorn's trio worker on kernel sockets (what ``yastack serve`` ran before);
- ``uvicorn_kernel``: uvicorn with httptools + uvloop on kernel sockets (what Python users pick);
- ``hypercorn_stack``: ``yastack serve --server hypercorn`` over the stack (the main job before).

Keep-alive and ``Connection: close``, one core (the server pinned to one CPU, wrk to the other).
Two cores (``--two-cores``): the server on both CPUs, unpinned, and wrk pinned to the second, so
wrk shares a CPU with the server (a 2-CPU machine has none to spare); off by default, and its
rows say what two cores give a server when the load generator takes part of one
(``yastack serve --kernel`` serves on one core only: ours on kernel sockets has no 2-core case).
``BENCH_ASGI_BASELINE=DIR`` adds another checkout's server (``base_stack``, ``base_kernel``) for
before/after figures in the same run.
Every round starts each server afresh and runs the sides one after another, the order rotated
each round, so a busy moment of the shared machine does not fall on one side only; each run
records the load average before it.  Reported: requests/s, p50/p99 latency, the server's CPU
time per request (``/proc/PID/stat``, its process tree), medians with min-max over the rounds,
and the issue's ratios with their targets, by req/s and by CPU per request (the peer's over
ours: the steadier of the two when the machine is shared).

    python benchmarks/bench_asgi.py [--seconds S] [--rounds R] [--quick] [--sides a,b] [--two-cores]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _asgi_sides import DEFAULT_SIDES, SIDES, BenchFailure, Running, running
from _common import cpu_seconds, load_average, machine, pick_cpus, spread

from trio_yastack.nic.netns import netns_unavailable_reason

__all__ = ["RATIOS", "cpu_seconds", "main"]  # cpu_seconds: bench_proxy.py imports it from here

RESULTS = Path(__file__).parent / "results"

#: (numerator side, denominator side, the issue's target or None for "report it")
RATIOS: list[tuple[str, str, float | None]] = [
    ("ours_kernel", "hypercorn_kernel", 10.0),
    ("ours_kernel", "uvicorn_kernel", 0.5),
    ("ours_stack", "hypercorn_kernel", 6.0),
    ("ours_stack", "uvicorn_kernel", None),
    ("ours_stack", "ours_kernel", None),
    ("hypercorn_stack", "hypercorn_kernel", None),
    # before/after, with BENCH_ASGI_BASELINE=DIR (_asgi_sides.py): this checkout over that one
    ("ours_kernel", "base_kernel", None),
    ("ours_stack", "base_stack", None),
]


def measure(server: Running, seconds: int, close: bool) -> dict[str, float]:
    """One wrk run: its figures, the server's CPU per request and the load average before it."""
    load = load_average()
    before = cpu_seconds(server.process.pid)
    result = server.wrk(seconds, close=close)
    used = cpu_seconds(server.process.pid) - before
    result["cpu_us_per_request"] = used / max(result["requests"], 1) * 1e6
    result["load_average"] = load
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1-second runs, 1 round (CI smoke)")
    parser.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"of {', '.join(SIDES)}")
    parser.add_argument("--two-cores", action="store_true", help="also 2-core cases (needs a CPU for wrk)")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason or not shutil.which("wrk"):
        sys.exit(f"bench_asgi: needs network namespaces and wrk: {reason or 'wrk is missing'}")
    sides = [SIDES[name] for name in args.sides.split(",")]
    seconds, rounds = (1, 1) if args.quick else (args.seconds, args.rounds)
    cpus = pick_cpus() if shutil.which("taskset") else None
    core_counts = (1, 2) if args.two_cores else (1,)
    cases: dict[str, list[dict[str, float]]] = {}
    failures: list[str] = []
    for index in range(rounds):
        order = sides[index % len(sides) :] + sides[: index % len(sides)]
        for cores in core_counts:
            suffix = "" if cores == 1 else f"_{cores}cores"
            for side in order:
                if side.max_cores is not None and cores > side.max_cores:
                    continue  # (said in the side's definition)
                with tempfile.TemporaryDirectory(prefix="bench_asgi.") as tmp:
                    try:
                        with running(side, cores, Path(tmp), cpus) as server:
                            server.wrk(1)  # not counted: the first connections, caches, ARP
                            for close in (False, True):
                                mode = ("close" if close else "keepalive") + suffix
                                run = measure(server, seconds, close)
                                cases.setdefault(f"{side.name}_{mode}", []).append(run)
                                rate, load = run["requests_per_s"], run["load_average"]
                                note = (
                                    f"# round {index + 1} {side.name}_{mode}: {rate:.0f} req/s, load {load}"
                                )
                                print(note, file=sys.stderr, flush=True)
                    except BenchFailure as exc:
                        failures.append(str(exc))
                        print(f"# FAILED: {exc}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "benchmark": "asgi",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": f"wrk -t1 -c50 -d{seconds}s --latency GET / (13-byte body), examples/hello.py",
        "pinning": f"server on CPU {cpus[0]}, wrk on CPU {cpus[1]}" if cpus else "none",
        "rounds": rounds,
        "sides": {side.name: side.label for side in sides},
        "cases": {
            name: {key: spread(run[key] for run in runs) for key in runs[0]} for name, runs in cases.items()
        },
        "failures": failures,
        "ratios": {},
    }
    for mode in sorted({name.split("_", 2)[2] for name in cases}):
        for top, bottom, target in RATIOS:
            a, b = cases.get(f"{top}_{mode}"), cases.get(f"{bottom}_{mode}")
            if a and b:
                ours = result["cases"][f"{top}_{mode}"]["requests_per_s"]["median"]
                peer = result["cases"][f"{bottom}_{mode}"]["requests_per_s"]["median"]
                # CPU per request (peer / ours) moves less than req/s when the machine is shared
                cpu = (
                    result["cases"][f"{bottom}_{mode}"]["cpu_us_per_request"]["median"]
                    / result["cases"][f"{top}_{mode}"]["cpu_us_per_request"]["median"]
                )
                result["ratios"][f"{top}/{bottom}_{mode}"] = {
                    "ratio": ours / peer,
                    "cpu_ratio": cpu,
                    "target": target,
                }
    print(json.dumps(result, indent=2))
    heading = f"{'req/s (median, min-max)':>28} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'load':>6}"
    print(f"\n{'case':30} {heading}")
    for name, case in result["cases"].items():
        r = case["requests_per_s"]
        print(f"{name:30} {r['median']:10.0f} ({r['min']:.0f}-{r['max']:.0f}) {'':4}"
              f"{case['p50_ms']['median']:8.2f} {case['p99_ms']['median']:8.2f} "
              f"{case['cpu_us_per_request']['median']:11.0f} {case['load_average']['max']:6.2f}")  # fmt: skip
    for key, value in result["ratios"].items():
        goal = f" (target >= {value['target']:g})" if value["target"] else ""
        print(f"{key}: {value['ratio']:.2f}{goal}; by CPU per request {value['cpu_ratio']:.2f}")
    if not args.quick and not failures:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "asgi.json").write_text(json.dumps(result, indent=2) + "\n")
    if failures:
        sys.exit(f"bench_asgi: {len(failures)} run(s) failed")


if __name__ == "__main__":
    main()
