"""The TAP port's burst I/O (issue 18, ``nic/_tap_io.py``): the Python loops against the C loop and
io_uring, side by side in one run.

Modes (``TRIO_YASTACK_TAP_IO``): ``python`` (one ``os.writev``/``os.read`` per frame from Python,
the twin), ``loop`` (the burst in one crossing into C, one ``writev``/``read`` per frame there, the
default) and ``ring`` (the transmit burst in one ``io_uring_enter``).  Rows, rounds alternating the
modes so load from elsewhere on the machine spreads over all of them:

- ``tx``: CPU microseconds per frame of ``tx_burst`` on a TAP, bursts of 1, 4, 16 and 64 TCP
  segments of 100 bytes with a partial checksum (OffloadPacket, as the stack hands them over),
  to a MAC the kernel drops at once: the crossing itself, not the kernel's TCP;
- ``rx``: CPU microseconds per frame of ``rx_burst(q, 64)`` draining 8000 UDP frames the kernel
  queued;
- ``responder``: ``bench_ports.py``'s 25-line trio responder over the TAP under ``wrk -t1 -c50``:
  requests/s and the responder's CPU microseconds per request, and the same program on kernel
  sockets over veth (the bar), once per round;
- ``bulk``: one TCP transfer kernel -> stack and stack -> kernel over the TAP, Gbit/s.

    python benchmarks/bench_tap_io.py [--rounds R] [--seconds S] [--megabytes N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import load_average, machine, spread
from bench_fastpath import _cpu_seconds
from bench_ports import _responder_command, _wrk, run_bulk, run_responder_kernel, tap_rigs

from trio_yastack.nic import _tap_io
from trio_yastack.nic.netns import NetworkNamespace, netns_unavailable_reason, tap_in_netns
from trio_yastack.stack import OffloadPacket

RESULTS = Path(__file__).parent / "results"
MODES = ["python", "loop", "ring"] if _tap_io.NATIVE else ["python"]
OTHER_MAC = bytes.fromhex("02aabbccddee")  # not the kernel side's: dropped as soon as it arrives


def _segment() -> OffloadPacket:
    """A 100-byte TCP/IPv4 segment with a partial checksum, to a MAC nobody has."""
    raw = (
        OTHER_MAC + bytes.fromhex("027961000002") + b"\x08\x00"
        + bytes.fromhex("4500008c00004000400600 00c6120002c6120001".replace(" ", ""))
        + bytes.fromhex("9c401389000000010000000150180200") + bytes(4) + bytes(100)
    )  # fmt: skip
    packet = OffloadPacket(len(raw))
    packet[:] = raw
    return packet


def run_tx(mode: str, burst: int, bursts: int = 3000) -> float:
    """CPU microseconds per frame through ``tx_burst`` in ``mode``."""
    os.environ["TRIO_YASTACK_TAP_IO"] = mode
    with NetworkNamespace("ybio") as namespace, tap_in_netns(namespace, "yas0") as port:
        frames = [_segment()] * burst
        tx = port.tx_burst
        started = time.process_time()
        for _ in range(bursts):
            tx(0, frames)
        elapsed = time.process_time() - started
        if port.statistics().opackets != burst * bursts:
            raise RuntimeError(f"{mode}: {port.statistics()}")
        return elapsed / (burst * bursts) * 1e6


def run_rx(mode: str, count: int = 8000) -> float:
    """CPU microseconds per frame of ``rx_burst(0, 64)`` draining ``count`` queued UDP frames."""
    os.environ["TRIO_YASTACK_TAP_IO"] = mode
    with NetworkNamespace("ybio") as namespace, tap_in_netns(namespace, "yas0") as port:
        namespace.run(["ip", "neigh", "replace", "198.18.0.99", "lladdr", str(port.capabilities.mac),
                       "dev", "yas0"], check=True)  # fmt: skip
        with namespace.entered():
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            for _ in range(count):
                sender.sendto(bytes(50), ("198.18.0.99", 9))
        got, started = 0, time.process_time()
        while frames := port.rx_burst(0, 64):
            got += len(frames)
        elapsed = time.process_time() - started
        if got < count // 2:
            raise RuntimeError(f"{mode}: only {got} of {count} frames arrived")
        return elapsed / got * 1e6


def run_responder(mode: str, seconds: int) -> dict[str, float]:
    env = dict(os.environ, TRIO_YASTACK_TAP_IO=mode)
    with tap_rigs()["tap"]() as rig:
        server = rig.stack_ns.popen(_responder_command(rig.spec), stdout=subprocess.PIPE, text=True, env=env)
        result = _wrk(rig.kernel_ns, server, seconds)
        result["cpu_us_per_request"] = _cpu_seconds(server.pid) / max(result["requests"], 1) * 1e6
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--only", default="tx,rx,responder,bulk", help="which rows")
    parser.add_argument("--quick", action="store_true", help="one short round")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.megabytes = 1, 3, 20
    why_not = netns_unavailable_reason()
    if why_not is not None:
        sys.exit(f"bench_tap_io: cannot make network namespaces here: {why_not}")
    only = set(args.only.split(","))
    rows: dict[str, list[float]] = {}
    load: list[float] = []
    for _ in range(args.rounds):
        load.append(load_average())
        for mode in MODES:
            if "tx" in only:
                for burst in (1, 4, 16, 64):
                    rows.setdefault(f"tx_us_per_frame_burst{burst}_{mode}", []).append(run_tx(mode, burst))
            if "rx" in only:
                rows.setdefault(f"rx_us_per_frame_{mode}", []).append(run_rx(mode))
            if "responder" in only:
                got = run_responder(mode, args.seconds)
                rows.setdefault(f"responder_rps_{mode}", []).append(got["requests_per_s"])
                rows.setdefault(f"responder_cpu_us_per_request_{mode}", []).append(got["cpu_us_per_request"])
            if "bulk" in only:
                os.environ["TRIO_YASTACK_TAP_IO"] = mode
                for direction in ("in", "out"):
                    bulk = run_bulk(tap_rigs()["tap"], direction, args.megabytes * 1_000_000)
                    rows.setdefault(f"bulk_{direction}_gbit_per_s_{mode}", []).append(bulk["gbit_per_s"])
        if "responder" in only:
            rows.setdefault("responder_rps_kernel", []).append(
                run_responder_kernel(args.seconds)["requests_per_s"]
            )
    # each row's runs kept in round order: a mode's round k ran next to the other modes' round k
    result: dict[str, Any] = {name: {**spread(values), "runs": values} for name, values in rows.items()}
    if "responder" in only:
        kernel = result["responder_rps_kernel"]["median"]
        for mode in MODES:
            result[f"responder_{mode}_over_kernel"] = result[f"responder_rps_{mode}"]["median"] / kernel
    result["machine"] = machine()
    result["load_average"] = spread(load)
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "tap_io.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
