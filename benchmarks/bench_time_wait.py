"""Memory per TIME_WAIT entry: ours (a ``TcpTimeWait`` record, its key and its table slot) against the
kernel's (the ``tw_sock_TCP`` slab object, from ``/proc/slabinfo`` when it can be read).

Two sans-IO stacks in one process make ``--connections`` short connections (connect, one byte each
way, the server closes first, so the server holds TIME_WAIT), each end's output handed to the other
at once.  Then the clock moves on 19 s, within 2*MSL, so what other timers held is gone and only
TIME_WAIT is left.  Ours: the growth of the Python heap (tracemalloc) over what was there before,
per TIME_WAIT entry left, so everything the entries keep alive counts.

    python benchmarks/bench_time_wait.py [--connections N] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tracemalloc
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from _common import machine

from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore, TcpConfig
from trio_yastack.stack.wire import MacAddress

RESULTS = Path(__file__).parent / "results"
CLIENT_IP, SERVER_IP = "198.18.0.2", "198.18.0.1"
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"


def _core(ip: str, mac: str, seed: int) -> StackCore:
    config = StackConfig(
        interface=InterfaceConfig(mac=MacAddress(mac), address=IPv4Address(ip), prefix_len=24),
        tcp=TcpConfig(ephemeral_first=10000, ephemeral_last=60000, time_wait_limit=1 << 20),
    )
    core = StackCore(config, rng=random.Random(seed))
    core.autocork = True  # as under the runtime: output leaves at the end of each turn
    return core


def _pump(a: StackCore, b: StackCore, now: float) -> None:
    for _ in range(100):
        a.run_pending_output(now)
        b.run_pending_output(now)
        frames_a, frames_b = a.take_outbox(), b.take_outbox()
        if not frames_a and not frames_b:
            return
        for frame in frames_a:
            b.ether_input(bytes(frame), now)
        for frame in frames_b:
            a.ether_input(bytes(frame), now)


def measure(count: int) -> dict[str, Any]:
    client = _core(CLIENT_IP, CLIENT_MAC, 1)
    server = _core(SERVER_IP, SERVER_MAC, 2)
    server_ip, client_ip = int(IPv4Address(SERVER_IP)), int(IPv4Address(CLIENT_IP))
    client.arp._learn(server_ip, bytes(MacAddress(SERVER_MAC)), 0.0)
    server.arp._learn(client_ip, bytes(MacAddress(CLIENT_MAC)), 0.0)
    listener = server.tcp.listen(80, 1024)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    now = 1.0
    for _ in range(count):
        now += 0.0001
        conn = client.tcp.connect(server_ip, 80, now)
        _pump(client, server, now)
        accepted = listener.accept()
        assert accepted is not None
        conn.send(b"x", now)
        _pump(client, server, now)
        accepted.receive(1, now)
        accepted.send(b"y", now)
        accepted.close(now)
        _pump(client, server, now)
        conn.receive(1, now)
        conn.close(now)
        _pump(client, server, now)
    client.run_timers(now + 19.0)
    server.run_timers(now + 19.0)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    entries = len(server.tcp.time_wait)
    return {"time_wait_entries": entries, "bytes_per_entry": grown / entries}


def kernel_tw_sock_size() -> int | None:
    """The object size of the kernel's tw_sock_TCP slab, if /proc/slabinfo can be read."""
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "tw_sock_TCP":
                return int(fields[3])
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="500 connections (CI smoke)")
    args = parser.parse_args()
    ours = measure(500 if args.quick else args.connections)
    kernel = kernel_tw_sock_size()
    result = {
        "benchmark": "time_wait",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "ours": ours,
        "kernel_tw_sock_TCP_bytes": kernel,
        "ratio": ours["bytes_per_entry"] / kernel if kernel else None,
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "time_wait.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
