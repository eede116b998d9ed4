"""TCP over two stacks in one process, against the kernel's TCP over loopback in the same run.

Ours: two ``StackCore`` instances joined by a direct pump (each one's outbox is the other's
input, no trio, no wire faults), one bulk connection: full-size data segments per second through
``tcp_input`` (MTU 1500) and Gbit/s of payload (MTU 1500 and 65535), both ends on this one core.
Memory: bytes of Python heap per idle established connection, 10 000 connections (tracemalloc).
The peer: the Linux kernel's TCP over 127.0.0.1, driven from Python with 64 KiB sendall/recv in one
thread pair.  Rounds alternate A B A B; medians and ratios are printed and written as JSON.

    python benchmarks/bench_tcp.py [--megabytes N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import statistics
import threading
import time
import tracemalloc
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore, TcpConfig, _native
from trio_yastack.stack.wire import MacAddress

RESULTS = Path(__file__).parent / "results"
A_IP, B_IP = IPv4Address("198.18.0.2"), IPv4Address("198.18.0.1")
A_MAC, B_MAC = MacAddress("02:00:00:00:00:02"), MacAddress("02:00:00:00:00:01")


def make_pair(mtu: int, buffer: int) -> tuple[StackCore, StackCore]:
    tcp = TcpConfig(send_buffer=buffer, receive_buffer=buffer, delayed_ack=0.04)
    a = StackCore(StackConfig(InterfaceConfig(A_MAC, A_IP, mtu=mtu), tcp=tcp), rng=random.Random(1))
    b = StackCore(StackConfig(InterfaceConfig(B_MAC, B_IP, mtu=mtu), tcp=tcp), rng=random.Random(2))
    a.arp._learn(int(B_IP), bytes(B_MAC), 0.0)
    b.arp._learn(int(A_IP), bytes(A_MAC), 0.0)
    return a, b


def pump(a: StackCore, b: StackCore, now: float) -> int:
    moved = 0
    for source, target in ((a, b), (b, a)):
        frames = source.take_outbox()
        moved += len(frames)
        for frame in frames:
            target.ether_input(frame, now)
    a.run_timers(now)
    b.run_timers(now)
    return moved


def run_ours(megabytes: int, mtu: int) -> dict[str, float]:
    a, b = make_pair(mtu, 4 * 1024 * 1024)
    listener = b.tcp.listen(80)
    client = a.tcp.connect(int(B_IP), 80, 0.0)
    now = 0.0
    while listener.accept_queue == type(listener.accept_queue)():
        pump(a, b, now)
    server = listener.accept()
    assert server is not None
    chunk = bytes(range(256)) * 256
    total = megabytes * 1024 * 1024
    sent = received = 0
    start = time.perf_counter()
    segments_before = b.stats_tcp.segments_received
    deadline = start + 120.0
    while received < total and time.perf_counter() < deadline:
        while sent < total:
            taken = client.send(chunk[: min(len(chunk), total - sent)], now)
            if not taken:
                break
            sent += taken
        pump(a, b, now)
        while (data := server.receive(1 << 20, now)) and data:
            received += len(data)
        now += 0.0001  # simulated time moves on so delayed ACK timers fire
    elapsed = time.perf_counter() - start
    if received != total:
        raise AssertionError(f"received {received} of {total}")
    segments = b.stats_tcp.segments_received - segments_before
    return {"gbit_per_s": total * 8 / elapsed / 1e9, "segments_per_s": segments / elapsed}


def run_receiver_only(megabytes: int, mtu: int) -> float:
    """Full-size segments per second through the receiver's input path alone (``ether_input`` ->
    ``ip_input`` -> ``tcp_input`` -> receive buffer, ACK generation included).

    A first run records every frame the sender emits, batch by batch; a second run, seeded the
    same so every ISN, port and timestamp repeats, feeds those frames to a fresh receiver and
    times only its input calls.
    """
    batches: list[tuple[float, list[bytes]]] = []
    for replay in (False, True):
        a, b = make_pair(mtu, 4 * 1024 * 1024)
        listener = b.tcp.listen(80)
        client = a.tcp.connect(int(B_IP), 80, 0.0)
        server = None
        chunk = bytes(range(256)) * 256
        total = megabytes * 1024 * 1024
        sent = received = 0
        now = 0.0
        elapsed = 0.0
        segments = 0
        batch_index = 0
        while received < total and batch_index < 10_000_000:
            if not replay:
                while sent < total:
                    taken = client.send(chunk[: min(len(chunk), total - sent)], now)
                    if not taken:
                        break
                    sent += taken
                frames = a.take_outbox()
                batches.append((now, frames))
            else:
                if batch_index >= len(batches):
                    break
                now, frames = batches[batch_index]
            batch_index += 1
            ether_input = b.ether_input
            start = time.perf_counter()
            for frame in frames:
                ether_input(frame, now)
            b.run_timers(now)
            elapsed += time.perf_counter() - start
            segments += len(frames)
            for frame in b.take_outbox():
                a.ether_input(frame, now)
            a.run_timers(now)
            if server is None:
                server = listener.accept()
            while server is not None and (data := server.receive(1 << 20, now)):
                received += len(data)
            now += 0.0001
        if received != total:
            raise AssertionError(f"received {received} of {total} (replay={replay})")
    return segments / elapsed


def run_kernel(megabytes: int) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    total = megabytes * 1024 * 1024
    received = 0

    def sink() -> None:
        nonlocal received
        conn, _ = server.accept()
        with conn:
            while received < total:
                data = conn.recv(65536)
                if not data:
                    break
                received += len(data)

    thread = threading.Thread(target=sink)
    thread.start()
    client = socket.create_connection(server.getsockname())
    chunk = bytes(65536)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        client.sendall(chunk)
        sent += len(chunk)
    thread.join(timeout=60)
    elapsed = time.perf_counter() - start
    client.close()
    server.close()
    return total * 8 / elapsed / 1e9


def idle_connection_bytes(count: int) -> float:
    a, b = make_pair(1500, 256 * 1024)
    listener = b.tcp.listen(80, backlog=1024)
    accepted = []
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    now = 0.0
    for _ in range(count):
        a.tcp.connect(int(B_IP), 80, now)
        pump(a, b, now)
        while (conn := listener.accept()) is not None:
            accepted.append(conn)  # the application holds each accepted connection, idle
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    established = sum(1 for c in a.tcp.connections.values() if c.state == 4)
    if established != count:
        raise AssertionError(f"{established} of {count} connections established")
    return (after - before) / (2 * count)  # both ends' connection objects were allocated


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round (CI smoke)")
    args = parser.parse_args()
    megabytes, rounds, connections = (
        (4, 1, 200) if args.quick else (args.megabytes, args.rounds, args.connections)
    )
    ours_1500, ours_64k, kernel, receiver = [], [], [], []
    for _ in range(rounds):
        receiver.append(run_receiver_only(megabytes, 1500))
        ours_1500.append(run_ours(megabytes, 1500))
        kernel.append(run_kernel(megabytes))
        ours_64k.append(run_ours(megabytes, 65535))
    per_connection = idle_connection_bytes(connections)
    kernel_median = statistics.median(kernel)
    result = {
        "benchmark": "tcp",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "native_checksum": _native.NATIVE,
        "megabytes": megabytes,
        "ours_mtu1500_receiver_segments_per_s": statistics.median(receiver),
        "ours_mtu1500_end_to_end_segments_per_s": statistics.median(r["segments_per_s"] for r in ours_1500),
        "ours_mtu1500_gbit_per_s": statistics.median(r["gbit_per_s"] for r in ours_1500),
        "ours_mtu65535_gbit_per_s": statistics.median(r["gbit_per_s"] for r in ours_64k),
        "kernel_loopback_gbit_per_s": kernel_median,
        "ratio_mtu65535_to_kernel": statistics.median(r["gbit_per_s"] for r in ours_64k) / kernel_median,
        "idle_connection_bytes": per_connection,
        "idle_connections": connections,
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "tcp.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
