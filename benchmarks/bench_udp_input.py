"""UDP datagrams per second from ``ether_input`` to a socket's queue, on one core.

Ours: pre-built Ethernet/IPv4/UDP frames (64-byte payloads, valid checksums) fed in bursts of 32
to a ``StackCore``, the socket queue drained after each burst as an application would: through
``ether_input_burst`` as the poll loop does (the burst classified in one crossing into C, each
datagram the classifier found sound queued by ``UdpLayer.udp_fast_input``: the row the issue's
bar reads), and, for comparison, frame by frame through ``ether_input`` (the Python layers).
Each row also gives datagrams per second of the process's CPU time, which other load on the
machine disturbs less than wall time.
The peer, measured in the same run: the Linux kernel's UDP over loopback (127.0.0.1), driven
from Python the cheapest way (``sendto`` and ``recv`` on non-blocking sockets, 32 at a time) —
the path a Python application on kernel sockets pays per datagram.

Rounds alternate A B A B; the medians and their ratio are printed and written as JSON.

    python benchmarks/bench_udp_input.py [--datagrams N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore, UdpPcb, _native
from trio_yastack.stack.tcp import _fastpath
from trio_yastack.stack.wire import EthernetRepr, Ipv4Repr, MacAddress, UdpRepr

BURST = 32
PAYLOAD = bytes(range(64))
RESULTS = Path(__file__).parent / "results"


def make_frames(count: int) -> tuple[StackCore, UdpPcb, list[bytes]]:
    ours, theirs = IPv4Address("198.18.0.2"), IPv4Address("198.18.0.1")
    mac, peer_mac = MacAddress("02:00:00:00:00:02"), MacAddress("02:00:00:00:00:01")
    core = StackCore(StackConfig(InterfaceConfig(mac, ours)), rng=random.Random(1))
    pcb = UdpPcb()
    core.udp.bind(pcb, 0, 9000)
    frames = []
    for index in range(count):
        udp = UdpRepr(40000 + index % 1000, 9000, PAYLOAD).to_bytes(theirs, ours)
        ip = Ipv4Repr(theirs, ours, 17, len(udp), ident=index & 0xFFFF).to_bytes(udp)
        frames.append(EthernetRepr(mac, peer_mac, 0x0800).to_bytes(ip))
    return core, pcb, frames


def drive(
    core: StackCore, pcb: UdpPcb, frames: list[bytes], *, burst_input: bool = True
) -> tuple[float, float]:
    """Feed ``frames`` in bursts of :data:`BURST`, the socket queue drained after each as an application
    would: through ``ether_input_burst`` (the poll loop's call) or frame by frame through ``ether_input``.
    Datagrams per second of wall time and of CPU time.  ``bench_udp_input6.py`` drives its IPv4 and
    IPv6 rows with this same loop, so the two benchmarks cannot measure different things."""
    count = len(frames)
    ether_input = core.ether_input
    ether_input_burst = core.ether_input_burst
    queue = pcb.queue
    start = time.perf_counter()
    cpu_start = time.process_time()
    now = 0.0
    for base in range(0, count, BURST):
        if burst_input:
            ether_input_burst(frames[base : base + BURST], now)
        else:
            for frame in frames[base : base + BURST]:
                ether_input(frame, now)
        queue.clear()
        pcb.queued_bytes = 0
        core.ready.clear()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    delivered = core.stats_udp.delivered
    if delivered != count:
        raise AssertionError(f"only {delivered} of {count} datagrams delivered")
    if burst_input and _fastpath.FAST_PATH_DEFAULT and core.fast_path_datagrams != count:
        raise AssertionError(f"the fast path took {core.fast_path_datagrams} of {count} datagrams")
    return count / elapsed, count / cpu


def run_ours(count: int, burst_input: bool = True) -> tuple[float, float]:
    """Datagrams per second of wall time and of CPU time."""
    return drive(*make_frames(count), burst_input=burst_input)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_kernel(count: int) -> float:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = receiver.getsockname()
    received = 0
    start = time.perf_counter()
    deadline = start + 30.0  # bounded in time as well as count
    for _base in range(0, count, BURST):
        for _ in range(BURST):
            sender.sendto(PAYLOAD, address)
        for _ in range(BURST):
            try:
                receiver.recv(2048)
            except BlockingIOError:
                break
            received += 1
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    sender.close()
    receiver.close()
    return received / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few thousand datagrams, 2 rounds (CI smoke)")
    args = parser.parse_args()
    count, rounds = (5_000, 2) if args.quick else (args.datagrams, args.rounds)
    ours: list[tuple[float, float]] = []
    per_frame: list[tuple[float, float]] = []
    kernel: list[float] = []
    for _ in range(rounds):
        ours.append(run_ours(count))
        per_frame.append(run_ours(count, burst_input=False))
        kernel.append(run_kernel(count))

    result = {
        "benchmark": "udp_input",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "load_average": os.getloadavg()[0],
        "native_checksum": _native.NATIVE,
        "native_classifier": _fastpath.NATIVE_FASTPATH,
        "datagrams_per_round": count,
        "ours_datagrams_per_s": spread([wall for wall, _cpu in ours]),
        "ours_datagrams_per_cpu_s": spread([cpu for _wall, cpu in ours]),
        "ours_per_frame_datagrams_per_s": spread([wall for wall, _cpu in per_frame]),
        "ours_per_frame_datagrams_per_cpu_s": spread([cpu for _wall, cpu in per_frame]),
        "kernel_loopback_datagrams_per_s": spread(kernel),
        "ratio_ours_to_kernel": statistics.median(w for w, _ in ours) / statistics.median(kernel),
        "ratio_burst_to_per_frame": statistics.median(w for w, _ in ours)
        / statistics.median(w for w, _ in per_frame),
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "udp_input.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
