"""Every benchmark in one run: ours and the peer side by side, a Markdown table and PNG plots.

    python benchmarks/run_all.py            # full mode: minutes; writes benchmarks/RESULTS.md,
                                            # benchmarks/results/*.json and benchmarks/results/*.png
    python benchmarks/run_all.py --quick    # seconds per scenario: proves they all still run
                                            # (CI); numbers are printed, not judged, not written

Each scenario is its own script (run alone for details); each alternates ours and the peer for
at least 3 rounds in full mode and reports medians, min-max and the ratio ours/peer:

1. ``bench_asgi.py``: our ASGI server and the example app under wrk, over the stack and on kernel
   sockets, vs hypercorn's trio worker and uvicorn (httptools + uvloop) on kernel sockets;
   ``bench_asgi_churn.py``: three rounds of ``Connection: close`` at 200 connections (rate, RSS,
   CLOSE_WAIT); ``bench_asgi_profile.py``: py-spy on our server, where a request's time goes
2. ``bench_tap.py``: bulk TCP through a TAP (offloads on/off) vs kernel-to-kernel over veth
3. ``bench_memory_wire.py``, ``bench_tcp.py``, ``bench_udp_input.py``: the stack alone in one
   process vs the kernel's loopback
4. ``bench_pytcp.py``: PyTCP, the pure-Python peer, on the same TAP-in-namespace set-up
5. ``bench_memory.py``: memory per idle established connection vs the kernel's
6. ``bench_trace.py``: what the journey-of-a-packet trace points cost, off and on, against a
   build without them
7. ``bench_loss.py``: bulk TCP over 0.5-3 % loss (nftables on the TAP's kernel side), the stack as
   sender against the kernel as sender with the same congestion control
8. ``bench_proxy.py``: ``yastack proxy`` in front of an nginx backend under wrk, over kernel sockets
   and over the stack, vs nginx proxying the same backend
9. ``bench_fastpath.py`` (the established-connection fast path on and off, the responder against
   the kernel), ``bench_time_wait.py`` (bytes per TIME_WAIT record against the kernel's),
   ``bench_udp_input6.py`` (UDP input over IPv6 against IPv4): their figures have sections of their
   own in RESULTS.md, not rows in its table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: the JSON file each scenario writes in full mode (what ``--table-only`` reads back)
RESULT_FILES = {
    "bench_asgi.py": "asgi.json",
    "bench_asgi_churn.py": "asgi_churn.json",
    "bench_asgi_profile.py": "asgi_profile.json",
    "bench_tap.py": "tap_mtu1500.json",
    "bench_memory_wire.py": "memory_wire.json",
    "bench_tcp.py": "tcp.json",
    "bench_udp_input.py": "udp_input.json",
    "bench_pytcp.py": "pytcp.json",
    "bench_memory.py": "memory.json",
    "bench_proxy.py": "proxy.json",
    "bench_trace.py": "trace.json",
    "bench_loss.py": "loss.json",
    "bench_fastpath.py": "fastpath.json",
    "bench_time_wait.py": "time_wait.json",
    "bench_udp_input6.py": "udp_input6.json",
}

SCENARIOS: list[tuple[str, list[str]]] = [
    ("bench_asgi.py", []),
    ("bench_asgi_churn.py", []),
    ("bench_asgi_profile.py", []),
    ("bench_tap.py", []),
    ("bench_memory_wire.py", []),
    ("bench_tcp.py", []),
    ("bench_udp_input.py", []),
    ("bench_pytcp.py", []),
    ("bench_memory.py", []),
    ("bench_proxy.py", []),
    ("bench_trace.py", []),
    ("bench_loss.py", []),
    # no rows in the table: each has its own section in RESULTS.md (run here so that CI proves they run)
    ("bench_fastpath.py", []),
    ("bench_time_wait.py", []),
    ("bench_udp_input6.py", []),
]


def run_scenario(script: str, extra: list[str], quick: bool) -> dict[str, Any]:
    """Run one benchmark script; return the JSON document it printed first."""
    command = [sys.executable, str(HERE / script), *extra, *(["--quick"] if quick else [])]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(
            f"{script} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    start = done.stdout.index("{")
    document, _ = json.JSONDecoder().raw_decode(done.stdout[start:])
    document["_seconds"] = round(time.monotonic() - started, 1)
    return document


def _median(case: dict[str, Any], key: str) -> float:
    return case[key]["median"]


ASGI_MODES = (
    ("keepalive", "keep-alive, 1 core"),
    ("close", "Connection: close, 1 core"),
    ("keepalive_2cores", "keep-alive, 2 cores"),
    ("close_2cores", "Connection: close, 2 cores"),
)
#: the issue's ratios, in the table's order: (ours, peer, target or None for "report it")
ASGI_RATIOS = (
    ("ours_kernel", "hypercorn_kernel", 10.0),
    ("ours_kernel", "uvicorn_kernel", 0.5),
    ("ours_stack", "hypercorn_kernel", 6.0),
    ("ours_stack", "uvicorn_kernel", None),
    ("hypercorn_stack", "hypercorn_kernel", None),
)
PEER_NAMES = {"hypercorn_kernel": "hypercorn (kernel)", "uvicorn_kernel": "uvicorn (kernel)"}
ASGI_LABELS = {
    "ours_stack": "ours over the stack (TAP)",
    "ours_kernel": "ours on kernel sockets",
    "hypercorn_kernel": "hypercorn's trio worker, kernel sockets",
    "uvicorn_kernel": "uvicorn (httptools + uvloop), kernel sockets",
    "hypercorn_stack": "hypercorn's trio worker over the stack (TAP)",
}


def _served(case: dict[str, Any]) -> str:
    """req/s (p99 ms, CPU us/req) of one server's case."""
    return (
        f"{_median(case, 'requests_per_s'):.0f} ({_median(case, 'p99_ms'):.1f}, "
        f"{_median(case, 'cpu_us_per_request'):.0f})"
    )


def asgi_rows(asgi: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """bench_asgi.py's cases as the issue's ratios, one row per ratio and mode."""
    cases = asgi["cases"]
    out: list[tuple[str, str, str, float]] = []
    for mode, label in ASGI_MODES:
        for ours, peer, target in ASGI_RATIOS:
            mine, theirs = cases.get(f"{ours}_{mode}"), cases.get(f"{peer}_{mode}")
            if mine is None or theirs is None:
                continue
            goal = f", target >= {target:g}" if target else ""
            out.append((
                f"ASGI hello world, wrk -t1 -c50, {label}, {ASGI_LABELS[ours]} vs {PEER_NAMES[peer]}{goal}: "
                "req/s (p99 ms, CPU us/req)",
                _served(mine),
                f"{ASGI_LABELS[peer]}: {_served(theirs)}",
                _median(mine, "requests_per_s") / _median(theirs, "requests_per_s"),
            ))  # fmt: skip
    return out


def _churned(case: dict[str, Any]) -> str:
    rates = " / ".join(f"{rate:.0f}" for rate in case["requests_per_s"])
    rss = case["rss_bytes"]
    left = case["close_wait"]
    return (
        f"{rates} (RSS {rss['after_round_1'] / 2**20:.0f} -> {rss['after_round_3'] / 2**20:.0f} MiB, "
        f"CLOSE_WAIT {left['load_side']}/{left['server_side']})"
    )


def churn_rows(churn: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """bench_asgi_churn.py: ours (stack, kernel) against hypercorn on kernel sockets, third rounds."""
    cases = churn["cases"]
    peer = cases.get("hypercorn_kernel")
    out: list[tuple[str, str, str, float]] = []
    for ours in ("ours_stack", "ours_kernel"):
        if ours not in cases or peer is None:
            continue
        out.append((
            f"ASGI churn, 3 x 10 s wrk -c200 Connection: close, {ASGI_LABELS[ours]} vs hypercorn (kernel): "
            "req/s per round "
            "(RSS after 1st -> 3rd, CLOSE_WAIT load/server side); ratio of 3rd rounds",
            _churned(cases[ours]),
            f"{ASGI_LABELS['hypercorn_kernel']}: {_churned(peer)}",
            cases[ours]["requests_per_s"][-1] / peer["requests_per_s"][-1],
        ))  # fmt: skip
    return out


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, float]]:
    """``(scenario, ours, peer, ratio)`` table rows from the scenarios' JSON."""
    out: list[tuple[str, str, str, float]] = []
    if "bench_asgi.py" in results:
        out.extend(asgi_rows(results["bench_asgi.py"]))
    if "bench_asgi_churn.py" in results:
        out.extend(churn_rows(results["bench_asgi_churn.py"]))
    if "bench_tap.py" in results:
        tap = results["bench_tap.py"]
        veth = tap["cases"]["kernel_to_kernel_veth"]
        iperf = tap.get("iperf3_veth_gbit_per_s")
        peer = f"kernel -> kernel over veth: {_median(veth, 'gbit_per_s'):.2f}" + (
            f" (iperf3 {iperf:.1f})" if iperf else ""
        )
        for name, label in (
            ("kernel_to_stack_offloads_on", "kernel -> stack, offloads on"),
            ("stack_to_kernel_offloads_on", "stack -> kernel, offloads on"),
            ("kernel_to_stack_offloads_off", "kernel -> stack, offloads off"),
            ("stack_to_kernel_offloads_off", "stack -> kernel, offloads off"),
        ):
            case = tap["cases"][name]
            out.append((
                f"bulk TCP through a TAP, {label}: Gbit/s (CPU s/GB)",
                f"{_median(case, 'gbit_per_s'):.2f} ({_median(case, 'cpu_s_per_gb'):.2f})",
                f"{peer} ({_median(veth, 'cpu_s_per_gb'):.2f})",
                case["ratio_to_veth"],
            ))  # fmt: skip
    if "bench_memory_wire.py" in results:
        mw = results["bench_memory_wire.py"]["cases"]
        out.append((
            "two stacks on a memory_wire, one bulk connection: MB/s (segments/s)",
            f"{_median(mw['ours_bulk'], 'mb_per_s'):.0f} ({_median(mw['ours_bulk'], 'segments_per_s'):.0f})",
            f"kernel loopback, same trio code: {_median(mw['kernel_bulk'], 'mb_per_s'):.0f}",
            _median(mw["ours_bulk"], "mb_per_s") / _median(mw["kernel_bulk"], "mb_per_s"),
        ))  # fmt: skip
        if "ours_offloads_bulk" in mw:  # the row issue 18's bar reads (loopback's TSO and no checksums)
            off = mw["ours_offloads_bulk"]
            out.append((
                "two stacks on a memory_wire(offloads=True), one bulk connection (TSO, checksum offload): "
                "MB/s (segments/s)",
                f"{_median(off, 'mb_per_s'):.0f} ({_median(off, 'segments_per_s'):.0f})",
                f"kernel loopback, same trio code: {_median(mw['kernel_bulk'], 'mb_per_s'):.0f}",
                _median(off, "mb_per_s") / _median(mw["kernel_bulk"], "mb_per_s"),
            ))  # fmt: skip
        out.append((
            "two stacks on a memory_wire: connections/s (connect, 1 byte each way, close)",
            f"{_median(mw['ours_connections'], 'connections_per_s'):.0f}",
            f"kernel loopback: {_median(mw['kernel_connections'], 'connections_per_s'):.0f}",
            _median(mw["ours_connections"], "connections_per_s")
            / _median(mw["kernel_connections"], "connections_per_s"),
        ))  # fmt: skip
    if "bench_tcp.py" in results:
        tcp = results["bench_tcp.py"]
        out.append((
            "TCP bulk, two sans-IO stacks in one process, MTU 1500 / 65535: Gbit/s",
            f"{tcp['ours_mtu1500_gbit_per_s']:.2f} / {tcp['ours_mtu65535_gbit_per_s']:.2f}",
            f"kernel loopback: {tcp['kernel_loopback_gbit_per_s']:.1f}",
            tcp["ratio_mtu65535_to_kernel"],
        ))  # fmt: skip
    if "bench_udp_input.py" in results:
        udp = results["bench_udp_input.py"]
        ours_rate = udp["ours_datagrams_per_s"]["median"]
        kernel_rate = udp["kernel_loopback_datagrams_per_s"]["median"]
        out.append((
            "UDP datagrams/s, ether_input_burst to a socket queue (bursts of 32)",
            f"{ours_rate:.0f}",
            f"kernel UDP loopback from Python: {kernel_rate:.0f}",
            ours_rate / kernel_rate,
        ))  # fmt: skip
    if "bench_pytcp.py" in results:
        py = results["bench_pytcp.py"]
        for key, label in (("ping_per_s", "ping flood: replies/s"), ("echo_mbit_per_s", "TCP echo: Mbit/s")):
            out.append((
                f"same TAP-in-namespace set-up, {label}",
                f"{py['ours'][key]['median']:.1f}",
                f"PyTCP {py.get('pytcp_version', '')}: {py['pytcp'][key]['median']:.1f}",
                py["ours"][key]["median"] / py["pytcp"][key]["median"],
            ))  # fmt: skip
    if "bench_memory.py" in results:
        mem = results["bench_memory.py"]
        out.append((
            f"bytes per idle established TCP endpoint ({mem['connections']} connections)",
            f"{mem['ours']['bytes_per_endpoint']:.0f}",
            f"kernel (slab + buffers + process): {mem['kernel']['bytes_per_endpoint']:.0f}",
            mem["ratio"],
        ))  # fmt: skip
    if "bench_trace.py" in results:
        trace = results["bench_trace.py"]
        off, on = trace["cases"]["tracing_off"], trace["cases"]["tracing_on"]
        base = trace["cases"]["no_trace_points"]
        out.append((
            "hello world over a memory_wire, tracing compiled in but off: req/s",
            f"{_median(off, 'requests_per_s'):.0f}",
            f"the same without trace points: {_median(base, 'requests_per_s'):.0f}",
            trace["ratio_tracing_off"],
        ))  # fmt: skip
        out.append((
            "hello world over a memory_wire, tracing on (every journey traced and formatted): req/s",
            f"{_median(on, 'requests_per_s'):.0f}",
            f"the same without trace points: {_median(base, 'requests_per_s'):.0f}",
            trace["ratio_tracing_on"],
        ))  # fmt: skip
    if "bench_proxy.py" in results:
        proxy = results["bench_proxy.py"]
        nginx = proxy["cases"]["nginx_proxy"]
        for mode, label in (("kernel", "kernel sockets"), ("bypass", "over the stack (TAP)")):
            ours = proxy["cases"][f"ours_{mode}"]
            out.append((
                f"HTTP reverse proxy, nginx backend, wrk -t1 -c50 keep-alive, 1 core, {label}: "
                "req/s (p99 ms, CPU us/req)",
                f"{_median(ours, 'requests_per_s'):.0f} ({_median(ours, 'p99_ms'):.1f}, "
                f"{_median(ours, 'cpu_us_per_request'):.0f})",
                f"{proxy.get('nginx', 'nginx')} proxy_pass, keep-alive pool, 1 worker, kernel sockets: "
                f"{_median(nginx, 'requests_per_s'):.0f} ({_median(nginx, 'p99_ms'):.1f}, "
                f"{_median(nginx, 'cpu_us_per_request'):.0f})",
                proxy[f"ratio_{mode}"],
            ))  # fmt: skip
    if "bench_loss.py" in results:
        loss = results["bench_loss.py"]
        for key, ratio in loss.get("ratios", {}).items():
            percent, offloads, ours = key.split()
            theirs = "reno" if ours == "newreno" else ours
            mine = loss["results"][f"{percent} {offloads} stack {ours}"]
            kernel = loss["results"][f"{percent} {offloads} kernel {theirs}"]
            out.append((
                f"bulk TCP over {percent} loss each way, {offloads}, stack sends ({ours}): "
                "Mbit/s (timeouts per 1000 lost)",
                f"{mine['mbit_per_s']:.0f} ({mine['timeouts_per_1000_lost']:.0f})",
                f"kernel sends ({theirs}): {kernel['mbit_per_s']:.0f} "
                f"({kernel['timeouts_per_1000_lost']:.0f})",
                ratio,
            ))  # fmt: skip
    return out


def markdown(results: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cpus, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- command: {command}",
        "- every row: ours and the peer measured alternately in the same run, medians of the rounds "
        "(min-max in `benchmarks/results/*.json`); ratio = ours / peer, higher is better for us "
        "except memory, where lower is better",
        "",
        "| scenario | ours | peer | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for scenario, ours, peer, ratio in rows(results):
        lines.append(f"| {scenario} | {ours} | {peer} | {ratio:.2f} |")
    lines.append("")
    for heading, section in (
        (ASGI_HEADING, asgi_section),
        (CHURN_HEADING, churn_section),
        (PROFILE_HEADING, profile_section),
    ):
        body = section(results)
        if body:
            lines += [heading, "", *body, ""]
    return "\n".join(lines)


ASGI_HEADING = "## ASGI servers side by side (bench_asgi.py)"
CHURN_HEADING = "## ASGI servers under connection churn (bench_asgi_churn.py)"
PROFILE_HEADING = "## Where a request's time goes in our ASGI server (bench_asgi_profile.py, py-spy)"
GENERATED_HEADINGS = (ASGI_HEADING, CHURN_HEADING, PROFILE_HEADING)


def _run_line(document: dict[str, Any]) -> str:
    """When, with what load, pinned how: the line under a section's heading."""
    pinning = f"; {document['pinning']}" if document.get("pinning") else ""
    return f"{document['date']}, {document['machine']}; {document['load']}{pinning}"


def asgi_section(results: dict[str, dict[str, Any]]) -> list[str]:
    """Every case of bench_asgi.py with its spread and the load average it ran under."""
    asgi = results.get("bench_asgi.py")
    if asgi is None or "sides" not in asgi:
        return []
    lines = [
        f"{_run_line(asgi)}; {asgi['rounds']} rounds, the sides' order rotated each round. "
        "Load average: the highest 1-minute load average seen before a run of that case (this "
        "machine's 2 CPUs are shared: above ~1, others were busy and the figure is noisy).",
        "",
        "| case | req/s median (min-max) | p50 ms | p99 ms | CPU us/req | load avg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, case in asgi["cases"].items():
        rate = case["requests_per_s"]
        lines.append(
            f"| {name} | {rate['median']:.0f} ({rate['min']:.0f}-{rate['max']:.0f}) | "
            f"{_median(case, 'p50_ms'):.2f} | {_median(case, 'p99_ms'):.2f} | "
            f"{_median(case, 'cpu_us_per_request'):.0f} | {case['load_average']['max']:.2f} |"
        )
    lines += [
        "",
        "| ratio | by req/s (medians) | by CPU per request (peer's / ours) | target |",
        "| --- | --- | --- | --- |",
    ]
    for key, value in asgi["ratios"].items():
        target = f">= {value['target']:g}" if value["target"] else "report"
        cpu = f"{value['cpu_ratio']:.2f}" if "cpu_ratio" in value else "-"
        lines.append(f"| {key} | {value['ratio']:.2f} | {cpu} | {target} |")
    return lines


def churn_section(results: dict[str, dict[str, Any]]) -> list[str]:
    churn = results.get("bench_asgi_churn.py")
    if churn is None:
        return []
    lines = [
        f"{_run_line(churn)}. Bars (issue 16): rounds within 10 %, RSS after the 3rd within 20 % of "
        "after the 1st, no CLOSE_WAIT left on either side.",
        "",
        "Wait for a CPU: the share of each round the server (and wrk) was ready to run while other work "
        "held its CPU (`/proc/PID/schedstat`); req/s on its own CPU: the round's rate over the rest of the "
        "round (it does not undo wrk's waits, which leave the server idle). SYN retransmits and wrk's "
        "socket errors: the load's side, per round.",
        "",
        "| server | req/s round 1 / 2 / 3 | spread | CPU us per connection round 1 / 2 / 3 (spread) | "
        "wait for a CPU per round: server / wrk | req/s on its own CPU round 1 / 2 / 3 (spread) | "
        "SYN retransmits / wrk errors per round | "
        "RSS MiB after 1st / 3rd | CLOSE_WAIT load / server | "
        "stack's TIME_WAIT after 1st / 3rd | accept-queue overflows | bars met | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, case in churn["cases"].items():
        rss = case["rss_bytes"]
        missed = [key for key, ok in case["meets_bars"].items() if not ok]
        cpu = case.get("cpu_us_per_request")  # (runs before it was measured have none)
        cpu_text = (
            f"{' / '.join(f'{c:.0f}' for c in cpu)} ({case['rounds_spread_by_cpu']:.0%})" if cpu else "-"
        )
        lines.append(
            f"| {ASGI_LABELS.get(name, name)} | {' / '.join(f'{r:.0f}' for r in case['requests_per_s'])} | "
            f"{case['rounds_spread']:.0%} | {cpu_text} | {_waits(case)} | "
            f"{rss['after_round_1'] / 2**20:.1f} / "
            f"{rss['after_round_3'] / 2**20:.1f} | "
            f"{case['close_wait']['load_side']} / {case['close_wait']['server_side']} | "
            f"{_time_wait(case)} | {_overflows(case)} | "
            f"{'all' if not missed else 'missed: ' + ', '.join(missed)} | "
            f"{max(run['load_average'] for run in case['rounds']):.2f} |"
        )
    return lines


def _overflows(case: dict[str, Any]) -> str:
    """The server namespace's accept-queue overflows (SYNs dropped: the client retries after 1 s);
    over the stack, the stack's own listen-queue and SYN-queue drops in the three rounds."""
    server = case.get("kernel_counters", {}).get("server_side")
    if server:
        return str(server.get("TcpExtListenOverflows", 0))
    rounds = [run["stack_counters"] for run in case["rounds"] if "stack_counters" in run]
    if not rounds:
        return "-"
    reasons = ("drop.listen_queue_overflow", "drop.syn_queue_full", "drop.syn_shed")
    return str(sum(counters.get(reason, 0) for counters in rounds for reason in reasons))


def _waits(case: dict[str, Any]) -> str:
    """The churn columns that say what set a round's rate: the server's wait for its CPU, its rate
    over the time it had it, the load side's SYN retransmits and wrk's socket errors (runs from
    before these were measured: dashes)."""
    if "server_wait_share" not in case:
        return "- | - | -"
    own = case["requests_per_s_own_cpu"]
    load = [
        f"{run['kernel_counters']['load_side'].get('TcpExtTCPSynRetrans', 0)} / "
        f"{sum(run['wrk_errors'].values())}"
        for run in case["rounds"]
    ]
    waits = [
        f"{share:.0%} / {run['wrk_wait_s'] / run['elapsed_s']:.0%}"
        for share, run in zip(case["server_wait_share"], case["rounds"], strict=True)
    ]
    return (
        f"{', '.join(waits)} | "
        f"{' / '.join(f'{rate:.0f}' for rate in own)} ({case['rounds_spread_own_cpu']:.0%}) | "
        f"{', '.join(load)}"
    )


def _time_wait(case: dict[str, Any]) -> str:
    states = case.get("stack_states") or {}
    if not states:
        return "-"
    return " / ".join(str(states[key].get("TIME_WAIT", 0)) for key in ("after_round_1", "after_round_3"))


def profile_section(results: dict[str, dict[str, Any]]) -> list[str]:
    profile = results.get("bench_asgi_profile.py")
    if profile is None:
        return []
    lines = [
        f"{_run_line(profile)}. Each sample is charged to the innermost frame that belongs to a part "
        "(a system call first); CPU us per request measured over the same run (py-spy's pauses "
        "included, so a little higher than in the table above).",
        "",
    ]
    for name, case in profile["cases"].items():
        side, _, mode = name.rpartition("_")
        label = f"{ASGI_LABELS.get(side, side)}, {'Connection: close' if mode == 'close' else 'keep-alive'}"
        lines += [
            f"{label}: {case['cpu_us_per_request']:.1f} CPU us per request at "
            f"{case['requests_per_s_while_sampled']:.0f} req/s, {case['samples_busy']} samples, "
            f"load average {case['load_average']:.2f}",
            "",
            "| part | share | us per request |",
            "| --- | --- | --- |",
        ]
        for part, share in case["parts"].items():
            lines.append(f"| {part} | {share:.1%} | {case['us_per_request'][part]:.1f} |")
        if case.get("stack_layers"):
            layers = ", ".join(f"{layer} {share:.1%}" for layer, share in case["stack_layers"].items())
            lines += ["", f"The stack's share by layer: {layers}."]
        for part in ("trio (scheduler, cancel scopes, checkpoints)", "kernel (system calls)"):
            top = case.get("top_functions", {}).get(part, [])[:4]
            if top:
                named = ", ".join(f"`{entry['function']}` {entry['share']:.1%}" for entry in top)
                lines += ["", f"Most of {part}: {named}."]
        lines += ["", "| our hottest lines: self time | share | inclusive (what the line led to) | share |"]
        lines.append("| --- | --- | --- | --- |")
        for own, below in zip(case["our_hottest_lines"][:5], case["our_lines_inclusive"][:5], strict=False):
            lines.append(
                f"| `{own['where']}` | {own['share']:.1%} | `{below['where']}` | {below['share']:.1%} |"
            )
        lines.append("")
    return lines[:-1]


def kept_sections(path: Path) -> str:
    """The hand-written sections (``## ...``) of an existing RESULTS.md that no run generates:
    a rebuild of the table keeps them."""
    if not path.exists():
        return ""
    kept: list[str] = []
    keeping = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keeping = line.strip() not in GENERATED_HEADINGS
        if keeping:
            kept.append(line)
    return "\n".join(kept).strip() + "\n" if kept else ""


def plot(results: dict[str, dict[str, Any]]) -> list[Path]:
    """One bar chart of every ratio (log scale), written next to the JSON files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rows(results)
    figure, axes = plt.subplots(figsize=(10, 0.45 * len(table) + 1.5))
    labels = [scenario.rsplit(": ", 1)[0] for scenario, *_ in table]
    ratios = [ratio for *_, ratio in table]
    better = [
        (r <= 1) if scenario.startswith("bytes per") else (r >= 1)
        for (scenario, *_), r in zip(table, ratios, strict=True)
    ]
    axes.barh(range(len(table)), ratios, color=["tab:green" if b else "tab:orange" for b in better])
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.set_yticks(range(len(table)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("ours / peer (log scale; 1 = parity; green: ours better or equal)")
    axes.set_title("trio_yastack against its peers, same machine, same run")
    figure.tight_layout()
    path = RESULTS / "ratios.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds per scenario; nothing written")
    parser.add_argument(
        "--only",
        action="append",
        help="run only these scripts (repeatable; the others' rows from their JSON)",
    )
    parser.add_argument(
        "--table-only", action="store_true", help="no runs: the table and plot from benchmarks/results/*.json"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for script, extra in SCENARIOS:
        if args.only and script not in args.only:
            continue
        if args.table_only:
            continue  # read back below
        print(f"# {script}{' --quick' if args.quick else ''} ...", flush=True)
        try:
            results[script] = run_scenario(script, extra, args.quick)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            print(f"#   FAILED: {exc}", flush=True)
            failed.append(script)
            continue
        print(f"#   done in {results[script]['_seconds']} s", flush=True)
    command = "`make bench-quick`" if args.quick else "`make bench` (runs `python benchmarks/run_all.py`)"
    if not args.quick:
        # A partial run keeps the other scenarios' rows: read back from their last full run.
        for script, _ in SCENARIOS:
            path = RESULTS / RESULT_FILES[script]
            if script not in results and path.exists():
                results[script] = json.loads(path.read_text())
    if args.only or args.table_only or failed:
        # Some rows come from earlier runs: say so, rather than dating them all now.
        command += "; this table was put together from `benchmarks/results/*.json` of several runs"
    table = markdown(results, command)
    print(table)
    if not args.quick:
        kept = kept_sections(HERE / "RESULTS.md")
        (HERE / "RESULTS.md").write_text(table + ("\n" + kept if kept else ""))
        for path in plot(results):
            print(f"# plot: {path}")
    if failed:
        sys.exit(f"run_all: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
