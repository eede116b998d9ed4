"""hypercorn serving the example app over the stack (TAP) against hypercorn on kernel sockets (veth).

The same ASGI app (``examples/hello.py``, ``GET /``: a 13-byte ``Hello, world!``), the same
hypercorn, the same single-process trio worker, the same load generator (``wrk -t1 -c50``):

- ours: ``yastack serve`` on TAP ``yas0`` in a private namespace, wrk on the kernel side of it;
- the peer: ``hypercorn --worker-class trio`` on kernel sockets, in one namespace joined by a
  veth pair to another where wrk runs.

Keep-alive and ``Connection: close`` are both measured, on one core and on two (ours: ``--cores
2``, a multi-queue TAP and one process per core; the peer: ``hypercorn --workers 2``); rounds
alternate ours and the peer.
Reported: requests/s, p50/p99 latency (wrk --latency), and the server's CPU time per request
(from ``/proc/PID/stat``), as medians with min-max and the ratio ours/peer.

    python benchmarks/bench_asgi.py [--seconds S] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import machine, parse_wrk, spread

from trio_yastack.nic.netns import NetworkNamespace, netns_unavailable_reason, veth_pair

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
APP = str(ROOT / "examples" / "hello.py") + ":app"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants alive now, in seconds (hypercorn's
    command runs its worker in a child process)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return total


def wait_for_line(process: subprocess.Popen[str], marker: str, limit: int = 200) -> None:
    assert process.stdout is not None
    for _ in range(limit):
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited before printing {marker!r}")
        if marker in line:
            return
    raise RuntimeError(f"no {marker!r} in the server's first {limit} lines")


def run_wrk(namespace: NetworkNamespace, url: str, seconds: int, close: bool) -> dict[str, float]:
    args = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", url]
    if close:
        args[1:1] = ["-H", "Connection: close"]
    out = namespace.run(args, timeout=seconds + 60).stdout
    return parse_wrk(out)


def run_ours(seconds: int, close: bool, cores: int = 1) -> dict[str, float]:
    with NetworkNamespace("yasb") as namespace:
        server = namespace.popen(
            [sys.executable, "-m", "trio_yastack", "serve", APP, "--nic", "tap:yas0", "--bind", "8000",
             "--cores", str(cores)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        wait_for_line(server, "# try:")
        namespace.run(["curl", "-sS", "-m", "5", "http://198.18.0.2:8000/"], check=True)  # warm ARP
        before = cpu_seconds(server.pid)
        result = run_wrk(namespace, "http://198.18.0.2:8000/", seconds, close)
        result["cpu_us_per_request"] = (cpu_seconds(server.pid) - before) / result["requests"] * 1e6
        return result


def run_kernel(seconds: int, close: bool, cores: int = 1) -> dict[str, float]:
    with NetworkNamespace("yasb") as client, NetworkNamespace("yasb") as serving:
        veth_pair(client, serving, left_address="198.18.0.1/24", right_address="198.18.0.2/24")
        hypercorn = shutil.which("hypercorn", path=str(Path(sys.executable).parent)) or "hypercorn"
        server = serving.popen(
            [hypercorn, "--worker-class", "trio", "--workers", str(cores), "--bind", "198.18.0.2:8000", APP],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        wait_for_line(server, "Running on")
        client.run(["curl", "-sS", "-m", "5", "http://198.18.0.2:8000/"], check=True)
        before = cpu_seconds(server.pid)
        result = run_wrk(client, "http://198.18.0.2:8000/", seconds, close)
        result["cpu_us_per_request"] = (cpu_seconds(server.pid) - before) / result["requests"] * 1e6
        return result


def summary(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    return spread(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2-second runs, 1 round (CI smoke)")
    parser.add_argument("--one-core", action="store_true", help="skip the 2-core cases")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason or not shutil.which("wrk"):
        sys.exit(f"bench_asgi: needs network namespaces and wrk: {reason or 'wrk is missing'}")
    seconds, rounds = (2, 1) if args.quick else (args.seconds, args.rounds)
    cases: dict[str, list[dict[str, float]]] = {}
    core_counts = (1, 2) if (os.cpu_count() or 1) >= 2 and not args.one_core else (1,)
    for _ in range(rounds):
        for cores in core_counts:
            suffix = "" if cores == 1 else f"_{cores}cores"
            for close in (False, True):
                mode = ("close" if close else "keepalive") + suffix
                cases.setdefault(f"ours_{mode}", []).append(run_ours(seconds, close, cores))
                cases.setdefault(f"kernel_{mode}", []).append(run_kernel(seconds, close, cores))
    result: dict[str, Any] = {
        "benchmark": "asgi",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": f"wrk -t1 -c50 -d{seconds}s GET / (13-byte body)",
        "rounds": rounds,
        "cases": {name: {key: summary(runs, key) for key in runs[0]} for name, runs in cases.items()},
    }
    for name in result["cases"]:
        if name.startswith("ours_"):
            mode = name.removeprefix("ours_")
            ours = result["cases"][name]["requests_per_s"]["median"]
            kernel = result["cases"][f"kernel_{mode}"]["requests_per_s"]["median"]
            result[f"ratio_{mode}"] = ours / kernel
            if mode.endswith("_2cores"):
                one = result["cases"][f"ours_{mode.removesuffix('_2cores')}"]["requests_per_s"]["median"]
                result[f"scaling_{mode}"] = ours / one  # 2 cores against 1, ours
    print(json.dumps(result, indent=2))
    print(f"\n{'case':18} {'req/s (median, min-max)':>28} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}")
    for name, case in result["cases"].items():
        r = case["requests_per_s"]
        print(f"{name:18} {r['median']:10.0f} ({r['min']:.0f}-{r['max']:.0f}) {'':4}"
              f"{case['p50_ms']['median']:8.2f} {case['p99_ms']['median']:8.2f} "
              f"{case['cpu_us_per_request']['median']:11.0f}")  # fmt: skip
    for key, value in result.items():
        if key.startswith(("ratio_", "scaling_")):
            print(f"{key}: {value:.2f}")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "asgi.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
