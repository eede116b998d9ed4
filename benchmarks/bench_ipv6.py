"""IPv6 beside IPv4 (issue 23): the same rows over each family, alternating in one run.

- ``bulk in``/``bulk out``: ``bench_tap.py``'s transfer through a TAP with offloads on (IPv6 with
  TSO6 both ways), kernel -> stack and stack -> kernel: Gbit/s and the stack process's own CPU
  seconds per GB (the column that stays readable on a loaded machine);
- ``responder``: ``bench_ports.py``'s 25-line trio responder under ``wrk -t1 -c50`` (rigs ``tap``
  and ``tap6``): requests/s and the responder's CPU microseconds per request.

Medians of the rounds, the IPv6/IPv4 ratios and every run are printed as JSON (no results file:
the rows belong to ``bench_tap.py``'s and ``bench_ports.py``'s own results).

    python benchmarks/bench_ipv6.py [--megabytes N] [--rounds R] [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import bench_ports
import bench_tap
from _common import load_average
from bench_fastpath import _cpu_seconds

from trio_yastack.nic.netns import netns_unavailable_reason


def bulk(direction: str, ipv6: bool, nbytes: int) -> dict[str, float]:
    cpu = time.process_time()
    result = bench_tap.run_ours(direction, True, nbytes, 1500, ipv6=ipv6)
    return {
        "gbit_per_s": result["gbit_per_s"],
        "stack_cpu_s_per_gb": (time.process_time() - cpu) / (nbytes / 1e9),
    }


def responder(rig_name: str, seconds: int) -> dict[str, float]:
    with bench_ports.tap_rigs()[rig_name]() as rig:
        command = bench_ports._responder_command(rig.spec, rig.ipv6)
        server = rig.stack_ns.popen(command, stdout=subprocess.PIPE, text=True)
        result = bench_ports._wrk(rig.kernel_ns, server, seconds, rig.ipv6)
        result["cpu_us_per_request"] = _cpu_seconds(server.pid) / max(result["requests"], 1) * 1e6
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8, help="wrk's duration per round")
    parser.add_argument("--quick", action="store_true", help="small, short, one round (smoke)")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"bench_ipv6: cannot make network namespaces here: {reason}")
    megabytes, rounds, seconds = (32, 1, 3) if args.quick else (args.megabytes, args.rounds, args.seconds)
    nbytes = megabytes * 1_000_000
    cases: dict[str, Callable[[], dict[str, float]]] = {
        "bulk in v4": lambda: bulk("in", False, nbytes),
        "bulk in v6": lambda: bulk("in", True, nbytes),
        "bulk out v4": lambda: bulk("out", False, nbytes),
        "bulk out v6": lambda: bulk("out", True, nbytes),
        "responder v4": lambda: responder("tap", seconds),
        "responder v6": lambda: responder("tap6", seconds),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    loads: list[float] = []
    for _ in range(rounds):
        for name, case in cases.items():
            loads.append(load_average())
            samples[name].append(case())
    result: dict[str, object] = {
        "rounds": rounds,
        "megabytes": megabytes,
        "wrk_seconds": seconds,
        "load_average": [min(loads), max(loads)],
    }
    metrics = {
        "bulk in": ("gbit_per_s", "stack_cpu_s_per_gb"),
        "bulk out": ("gbit_per_s", "stack_cpu_s_per_gb"),
    }
    metrics["responder"] = ("requests_per_s", "cpu_us_per_request")
    for kind, names in metrics.items():
        for metric in names:
            v4 = [run[metric] for run in samples[f"{kind} v4"]]
            v6 = [run[metric] for run in samples[f"{kind} v6"]]
            result[f"{kind} {metric}"] = {
                "v4": statistics.median(v4),
                "v6": statistics.median(v6),
                "v6/v4": statistics.median(v6) / statistics.median(v4),
                "v4 runs": v4,
                "v6 runs": v6,
            }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
