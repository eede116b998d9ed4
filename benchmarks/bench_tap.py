"""Bulk TCP between the Linux kernel and the stack through a TAP, against kernel-to-kernel over veth.

Every case runs in namespaces made for it (198.18.0.1 kernel side, 198.18.0.2 the other end) and
moves the same bytes with the same kernel-side program (``trio_yastack.nic.kernel_peer``):

- ours, kernel -> stack and stack -> kernel, with offloads on (virtio-net header: GSO frames in,
  TSO frames out) and off (plain 1514-byte frames); and the offloads-on pair over IPv6
  (2001:2::1 kernel side, 2001:2::2 the stack), in the same rounds, beside the IPv4 rows;
- the peer: kernel -> kernel over a veth pair between two namespaces (``kernel_peer`` on both
  ends; ``iperf3`` too when it is installed, for reference).

Rounds alternate the cases (A B C ... A B C ...); medians, min-max and ratios to the veth
figure are printed and written as JSON.  Throughput is payload bits per second at the receiver;
CPU is the whole machine's busy time per GB moved (``/proc/stat``), which counts the kernel's
softirq work as fairly as our Python.

    python benchmarks/bench_tap.py [--megabytes N] [--rounds R] [--mtu M] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _common import machine, spread

from trio_yastack import open_stack
from trio_yastack.nic.kernel_peer import pattern_block
from trio_yastack.nic.netns import NetworkNamespace, netns_unavailable_reason, tap_in_netns, veth_pair
from trio_yastack.stack import Ip6Config, _native

RESULTS = Path(__file__).parent / "results"
PORT = 5201


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / ticks


KERNEL6, STACK6 = "2001:2::1", "2001:2::2"


def peer(namespace: NetworkNamespace, *args: object, bind: str = "0.0.0.0") -> subprocess.Popen[str]:
    return namespace.popen(
        [
            sys.executable,
            "-m",
            "trio_yastack.nic.kernel_peer",
            "--timeout",
            "120",
            "--bind",
            bind,
            *map(str, args),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=180)
    if process.returncode:
        raise RuntimeError(f"kernel peer failed: {out}")
    return json.loads(out.strip().splitlines()[-1])


def _ipv6_on(namespace: NetworkNamespace) -> None:
    """IPv6 in the namespace with its addresses usable at once (no DAD, no router solicitation)."""
    for knob in ("all", "default"):
        for setting in ("disable_ipv6=0", "accept_dad=0", "router_solicitations=0"):
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.{setting}"], check=True)


def run_ours(direction: str, offloads: bool, nbytes: int, mtu: int, ipv6: bool = False) -> dict[str, float]:
    """One transfer between the kernel and a stack on a TAP; the stack side drives and times."""
    with NetworkNamespace("yasb") as namespace:
        if ipv6:
            _ipv6_on(namespace)
        with tap_in_netns(namespace, offloads=offloads, mtu=mtu, disable_ipv6=not ipv6) as port:
            if ipv6:
                namespace.run(
                    ["ip", "-6", "addr", "add", f"{KERNEL6}/64", "dev", "yas0", "nodad"], check=True
                )
            return trio.run(_ours, namespace, port, direction, nbytes, ipv6)


async def _ours(
    namespace: NetworkNamespace, port: Any, direction: str, nbytes: int, ipv6: bool
) -> dict[str, float]:
    ip: list[str] = ["198.18.0.2/24", f"{STACK6}/64"] if ipv6 else ["198.18.0.2/24"]
    family = trio.socket.AF_INET6 if ipv6 else trio.socket.AF_INET
    options: dict[str, Any] = {"ip6": Ip6Config(dad_transmits=0, router_solicitations=0)} if ipv6 else {}
    async with open_stack(port, ip=ip, **options):
        sock = trio.socket.socket(family)
        if direction == "in":
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
            await sock.bind(("::" if ipv6 else "0.0.0.0", PORT))
            sock.listen(1)
            process = peer(namespace, "send", STACK6 if ipv6 else "198.18.0.2", PORT, nbytes)
            conn, _ = await sock.accept()
            busy, started = busy_seconds(), time.monotonic()
            received = 0
            while chunk := await conn.recv(1 << 20):
                received += len(chunk)
            elapsed, busy = time.monotonic() - started, busy_seconds() - busy
            conn.close()
        else:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4 << 20)
            process = peer(namespace, "recv", PORT, bind="::" if ipv6 else "0.0.0.0")
            await trio.to_thread.run_sync(process.stdout.readline)  # type: ignore[union-attr]
            await sock.connect((KERNEL6 if ipv6 else "198.18.0.1", PORT))
            block = pattern_block(0)
            busy, started = busy_seconds(), time.monotonic()
            sent = 0
            while sent < nbytes:
                view = memoryview(block)[: nbytes - sent]
                while view:
                    view = view[await sock.send(view) :]
                sent += len(block[: nbytes - sent])
            sock.shutdown(trio.socket.SHUT_WR)
            while await sock.recv(65536):
                pass
            elapsed, busy = time.monotonic() - started, busy_seconds() - busy
            received = sent
        sock.close()
        result = await trio.to_thread.run_sync(finish, process)
        if result["bytes"] != nbytes or received != nbytes:
            raise RuntimeError(f"moved {received} of {nbytes} bytes: {result}")
        return {
            "gbit_per_s": nbytes * 8 / elapsed / 1e9,
            "cpu_s_per_gb": busy / (nbytes / 1e9),
            "kernel_retransmits": result["tcp_info"]["retransmits_total"],
        }


def run_veth(nbytes: int, mtu: int) -> dict[str, float]:
    """The same transfer kernel -> kernel over a veth pair joining two namespaces."""
    with NetworkNamespace("yasb") as left, NetworkNamespace("yasb") as right:
        veth_pair(left, right, mtu=mtu)
        receiver = peer(right, "recv", PORT)
        assert receiver.stdout is not None
        receiver.stdout.readline()
        busy = busy_seconds()
        sender = peer(left, "send", "198.18.0.1", PORT, nbytes)
        sent = finish(sender)
        received = finish(receiver)
        busy = busy_seconds() - busy
        if received["bytes"] != nbytes:
            raise RuntimeError(f"veth moved {received['bytes']} of {nbytes} bytes")
        return {
            "gbit_per_s": nbytes * 8 / received["seconds"] / 1e9,
            "cpu_s_per_gb": busy / (nbytes / 1e9),
            "kernel_retransmits": sent["tcp_info"]["retransmits_total"],
        }


def run_iperf3(seconds: int, mtu: int) -> float | None:
    """iperf3 over the same veth set-up, for reference (None when iperf3 is not installed)."""
    if subprocess.run(["sh", "-c", "command -v iperf3"], capture_output=True).returncode:
        return None
    with NetworkNamespace("yasb") as left, NetworkNamespace("yasb") as right:
        veth_pair(left, right, mtu=mtu)
        right.popen(["iperf3", "-s", "-1", "-B", "198.18.0.1"], stdout=subprocess.DEVNULL)
        for _ in range(50):  # the server needs a moment to listen: bounded retries
            done = left.run(["iperf3", "-c", "198.18.0.1", "-t", str(seconds), "-J"], timeout=seconds + 30)
            report = json.loads(done.stdout or "{}")
            if done.returncode == 0 and "sum_received" in report.get("end", {}):
                return report["end"]["sum_received"]["bits_per_second"] / 1e9
            time.sleep(0.1)  # a benchmark's retry pause, not a test's synchronisation
        return None


def summary(samples: list[dict[str, float]], key: str) -> dict[str, float]:
    return spread(run[key] for run in samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="small transfers, 1 round (CI smoke)")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"bench_tap: cannot make network namespaces here: {reason}")
    megabytes, rounds = (32, 1) if args.quick else (args.megabytes, args.rounds)
    nbytes = megabytes * 1_000_000
    cases = {
        "kernel_to_stack_offloads_on": lambda: run_ours("in", True, nbytes, args.mtu),
        "stack_to_kernel_offloads_on": lambda: run_ours("out", True, nbytes, args.mtu),
        "kernel_to_stack_offloads_off": lambda: run_ours("in", False, nbytes, args.mtu),
        "stack_to_kernel_offloads_off": lambda: run_ours("out", False, nbytes, args.mtu),
        "kernel_to_stack_ipv6_offloads_on": lambda: run_ours("in", True, nbytes, args.mtu, ipv6=True),
        "stack_to_kernel_ipv6_offloads_on": lambda: run_ours("out", True, nbytes, args.mtu, ipv6=True),
        "kernel_to_kernel_veth": lambda: run_veth(nbytes, args.mtu),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            samples[name].append(case())
    veth = statistics.median(s["gbit_per_s"] for s in samples["kernel_to_kernel_veth"])
    result: dict[str, Any] = {
        "benchmark": "tap",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "kernel": platform.release(),
        "native_checksum": _native.NATIVE,
        "megabytes": megabytes,
        "rounds": rounds,
        "mtu": args.mtu,
        "cases": {
            name: {
                "gbit_per_s": summary(runs, "gbit_per_s"),
                "cpu_s_per_gb": summary(runs, "cpu_s_per_gb"),
                "kernel_retransmits": [r["kernel_retransmits"] for r in runs],
                "ratio_to_veth": statistics.median(r["gbit_per_s"] for r in runs) / veth,
            }
            for name, runs in samples.items()
        },
        "iperf3_veth_gbit_per_s": None if args.quick else run_iperf3(5, args.mtu),
    }
    print(json.dumps(result, indent=2))
    print(f"\n{'case':32} {'Gbit/s (median, min-max)':>28} {'CPU s/GB':>9} {'vs veth':>8}")
    for name, case in result["cases"].items():
        g = case["gbit_per_s"]
        print(f"{name:32} {g['median']:10.2f} ({g['min']:.2f}-{g['max']:.2f}) {'':6}"
              f"{case['cpu_s_per_gb']['median']:9.2f} {case['ratio_to_veth']:8.2f}")  # fmt: skip
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"tap_mtu{args.mtu}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
