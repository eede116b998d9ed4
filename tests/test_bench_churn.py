"""The churn benchmark's per-round bookkeeping (benchmarks/bench_asgi_churn.py) and the table
run_all.py makes of it: the figures that say what set a round's rate must be right, since the
rate itself on a shared machine is not the server's alone."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_asgi_churn  # type: ignore[import-not-found]  # benchmarks/ is put on sys.path just above
import run_all  # type: ignore[import-not-found]  # the same


def test_delta_keeps_only_what_moved() -> None:
    before = {"TcpExtListenOverflows": 3, "TcpActiveOpens": 10, "drop.syn_shed": 0}
    after = {"TcpExtListenOverflows": 3, "TcpActiveOpens": 25, "drop.syn_shed": 2, "TcpExtTW": 4}
    assert bench_asgi_churn.delta(after, before) == {"TcpActiveOpens": 15, "drop.syn_shed": 2, "TcpExtTW": 4}


def test_schedstat_counts_this_process_cpu_time_and_keeps_exited_threads() -> None:
    seen: dict[str, tuple[int, int]] = {}
    cpu_before, _ = bench_asgi_churn.schedstat([os.getpid()], seen)
    end = time.process_time() + 0.05  # bounded: 50 ms of this thread's CPU
    while time.process_time() < end:
        pass
    cpu_after, wait_after = bench_asgi_churn.schedstat([os.getpid()], seen)
    assert cpu_after - cpu_before >= 0.04
    assert wait_after >= 0
    # a thread read once and gone since still counts (wrk's worker exits before wrk does)
    seen["0/gone"] = (5 * 10**9, 10**9)
    cpu_kept, wait_kept = bench_asgi_churn.schedstat([], seen)
    assert cpu_kept >= cpu_after + 5 and wait_kept >= 1


def test_cpu_busy_reads_every_cpu() -> None:
    times = bench_asgi_churn.cpu_busy()
    assert set(times) >= set(os.sched_getaffinity(0))
    assert all(0 <= busy <= total for busy, total in times.values())


def _round(rate: float, wait: float, wrk_wait: float, syn: int, errors: int) -> dict[str, Any]:
    return {
        "requests_per_s": rate,
        "elapsed_s": 10.0,
        "wrk_wait_s": wrk_wait * 10.0,
        "wrk_errors": {"connect": errors, "read": 0, "write": 0, "timeout": 0},
        "kernel_counters": {"load_side": {"TcpExtTCPSynRetrans": syn}},
        "load_average": 3.0,
    }


def _case(rounds: list[dict[str, Any]], waits: list[float]) -> dict[str, Any]:
    own = [run["requests_per_s"] / (1 - wait) for run, wait in zip(rounds, waits, strict=True)]
    return {
        "rounds": rounds,
        "requests_per_s": [run["requests_per_s"] for run in rounds],
        "rounds_spread": 0.5,
        "cpu_us_per_request": [50.0, 50.0, 51.0],
        "rounds_spread_by_cpu": 0.02,
        "server_wait_share": waits,
        "requests_per_s_own_cpu": own,
        "rounds_spread_own_cpu": (max(own) - min(own)) / max(own),
        "rss_bytes": {"after_round_1": 2**20, "after_round_3": 2**20},
        "close_wait": {"load_side": 0, "server_side": 0},
        "kernel_counters": {"load_side": {}, "server_side": {"TcpExtListenOverflows": 7}},
        "stack_states": {},
        "meets_bars": {
            "rounds_within_10_percent": False,
            "rss_within_20_percent": True,
            "no_close_wait": True,
        },
    }


def test_churn_table_names_each_rounds_waits_and_the_rate_on_its_own_cpu() -> None:
    rounds = [_round(1000, 0.5, 0.1, 0, 0), _round(2000, 0.0, 0.2, 4, 1), _round(1500, 0.25, 0.3, 0, 2)]
    document = {
        "date": "d",
        "machine": "m",
        "load": "l",
        "cases": {"ours_kernel": _case(rounds, [0.5, 0.0, 0.25])},
    }
    table = "\n".join(run_all.churn_section({"bench_asgi_churn.py": document}))
    row = next(
        line for line in table.splitlines() if line.startswith(f"| {run_all.ASGI_LABELS['ours_kernel']}")
    )
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "1000 / 2000 / 1500"
    assert cells[4] == "50% / 10%, 0% / 20%, 25% / 30%"
    assert cells[5] == "2000 / 2000 / 2000 (0%)"
    assert cells[6] == "0 / 0, 4 / 1, 0 / 2"
    assert cells[10] == "7"  # the server namespace's accept-queue overflows


def test_churn_table_of_a_run_before_the_waits_were_measured() -> None:
    case = _case([_round(1000, 0, 0, 0, 0)] * 3, [0.0, 0.0, 0.0])
    for key in ("server_wait_share", "requests_per_s_own_cpu", "rounds_spread_own_cpu"):
        del case[key]
    document = {"date": "d", "machine": "m", "load": "l", "cases": {"ours_stack": case}}
    row = run_all.churn_section({"bench_asgi_churn.py": document})[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[4:7] == ["-", "-", "-"]


def test_stack_overflows_summed_from_its_drop_reasons() -> None:
    case = {
        "kernel_counters": {"load_side": {}},
        "rounds": [
            {"stack_counters": {"drop.listen_queue_overflow": 2, "drop.rst_to_listener": 50}},
            {"stack_counters": {"drop.syn_queue_full": 1, "drop.syn_shed": 3}},
            {"stack_counters": {}},
        ],
    }
    assert run_all._overflows(case) == "6"
