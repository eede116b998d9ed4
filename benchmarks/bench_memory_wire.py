"""The stack alone: two stacks on a ``memory_wire`` in one process, against the kernel's loopback.

Both sides run the same trio code in one ``trio.run`` on one core (``trio.serve_tcp`` and
``trio.open_tcp_stream``): ours with both stacks open on the two ends of a fault-free
``memory_wire`` (MTU 1500), the peer on kernel sockets over 127.0.0.1.  Measured:

- one bulk connection: MB/s of payload, MB per CPU-second of the process (``mb_per_cpu_s``: what
  a core of its own would move; steadier than wall time on a shared machine), and (ours) TCP
  segments per second on the wire, in two rows: ``ours_bulk``, 1500-byte frames each carrying
  its own checksums, and ``ours_offloads_bulk``, the wire given what the kernel's loopback or a
  virtio-net pair has (``memory_wire(offloads=True)``: checksum offload both ways, TSO frames of
  up to 64 KiB that cross whole).  The kernel's loopback runs with a 64 KiB MTU and no
  checksums, so the offload row is the fair comparison, and the one issue 18's bar (625 MB/s)
  reads; ``ratio_bulk`` stays the 1500-byte row's, ``ratio_bulk_offloads`` is the offload row's;
- connections per second: connect, one request byte, one reply byte, close, one after another
  (and the process's CPU time per connection, which other load on the machine disturbs less).

Frames per second through ``ether_input`` to a UDP socket are ``bench_udp_input.py``'s.  Rounds
alternate ours and the kernel; medians, min-max and ratios are printed and written as JSON.

    python benchmarks/bench_memory_wire.py [--megabytes N] [--connections N] [--rounds R] [--quick]
    python benchmarks/bench_memory_wire.py --offloads-only [--megabytes N] [--rounds R]
    python benchmarks/bench_memory_wire.py --sender-round [--rounds R]

``--sender-round`` is the bulk sender's own share, sans-IO and steady: µs per 65 160-byte TSO
segment, the write out and its ACK in (``run_sender_round``: means of the fastest 95 % of rounds).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _common import machine, spread

from trio_yastack import open_stack, use_stack
from trio_yastack.nic import memory_wire

RESULTS = Path(__file__).parent / "results"
CHUNK = bytes(1 << 16)


async def _one_byte_echo(stream: trio.SocketStream) -> None:
    data = await stream.receive_some(1)
    if data:
        await stream.send_all(data)
    await stream.aclose()


async def _bulk(host: str, port: int, nbytes: int, cpu: list[float]) -> float:
    stream = await trio.open_tcp_stream(host, port)
    started = time.perf_counter()
    cpu_started = time.process_time()
    sent = 0
    while sent < nbytes:
        await stream.send_all(CHUNK)
        sent += len(CHUNK)
    await stream.send_eof()
    await stream.receive_some(1)  # the server closes after reading everything
    elapsed = time.perf_counter() - started
    cpu.append(time.process_time() - cpu_started)
    await stream.aclose()
    return elapsed


async def _bulk_sink_until_eof(stream: trio.SocketStream) -> None:
    async for _ in stream:
        pass
    await stream.aclose()


async def _connections(host: str, port: int, count: int, cpu: list[float]) -> float:
    started = time.perf_counter()
    cpu_started = time.process_time()
    for _ in range(count):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"x")
        await stream.receive_some(1)
        await stream.aclose()
    cpu.append(time.process_time() - cpu_started)
    return time.perf_counter() - started


async def _with_servers(
    host: str, body: Callable[[str], Awaitable[float]], server_stack: Any = None
) -> float:
    async with trio.open_nursery() as nursery:
        if server_stack is not None:
            with use_stack(server_stack):
                await nursery.start(trio.serve_tcp, _bulk_sink_until_eof, 5001)
                await nursery.start(trio.serve_tcp, _one_byte_echo, 5002)
        else:
            await nursery.start(partial_serve(_bulk_sink_until_eof, 5001, host))
            await nursery.start(partial_serve(_one_byte_echo, 5002, host))
        result = await body(host)
        nursery.cancel_scope.cancel()
    return result


def partial_serve(handler: Any, port: int, host: str) -> Any:
    async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_tcp(handler, port, host=host, task_status=task_status)

    return serve


def run_case(ours: bool, what: str, amount: int, offloads: bool = False) -> dict[str, float]:
    async def main() -> dict[str, float]:
        async with AsyncExitStack() as stack:
            server_stack = None
            host = "127.0.0.1"
            if ours:
                client_port, server_port = memory_wire(mtu=1500, offloads=offloads)
                client = await stack.enter_async_context(open_stack(client_port, ip="198.18.0.2/24"))
                server_stack = await stack.enter_async_context(open_stack(server_port, ip="198.18.0.1/24"))
                host = "198.18.0.1"
            if what == "bulk":
                cpu_bulk: list[float] = []
                elapsed = await _with_servers(host, lambda h: _bulk(h, 5001, amount, cpu_bulk), server_stack)
                # MB per CPU-second of this process (both stacks, or both ends' system calls): what a
                # core of its own would move, and steadier than wall time when other load shares the CPU
                result = {"mb_per_s": amount / elapsed / 1e6, "mb_per_cpu_s": amount / cpu_bulk[0] / 1e6}
                if ours:
                    result["segments_per_s"] = client.statistics().tcp.counters["segments_sent"] / elapsed
                return result
            cpu: list[float] = []
            elapsed = await _with_servers(host, lambda h: _connections(h, 5002, amount, cpu), server_stack)
            # CPU time of this process per connection (user + system: both stacks, or the kernel's
            # work done in our system calls), less sensitive than wall time to other load
            return {"connections_per_s": amount / elapsed, "cpu_us_per_connection": cpu[0] / amount * 1e6}

    return trio.run(main)


def run_sender_round(in_flight: int, rounds: int = 3000) -> dict[str, float]:
    """Sans-IO, one stack: the bulk sender's cost per TSO segment, microseconds (means of the
    fastest 95 % of rounds).  A round is
    the application's 65 160-byte write out as one TSO frame (``send`` -> ``run_pending_output``)
    and a pure ACK in (``ether_input_burst`` -> ``end_burst``), the peer acknowledging all but the
    last ``in_flight`` frames (3: a full 256 KiB send buffer, as over the TAP)."""
    import statistics
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tcp_helpers import T0, open_active, seq_add
    from test_offload import offload_core, parse_out

    from trio_yastack.stack.wire.tcp import TCP_ACK

    core = offload_core(tx_offload=True, tso=65535, gso=True)
    core.autocork = True  # as under the runtime: the write goes out at the end of the turn
    conn, peer = open_active(core, mss=1460, ts=True)
    conn.nodelay = True
    data, now = bytes(65_160), T0 + 1
    sent: list[float] = []
    acked: list[float] = []
    edges: list[int] = []

    def deliver(frames: list[bytes]) -> None:  # the peer takes in-order data and the timestamp
        for frame in frames:
            segment = parse_out(frame)
            if segment.options.timestamps is not None:
                peer.ts_recent = segment.options.timestamps[0]
            if segment.payload and segment.seq == peer.rcv_nxt:
                peer.rcv_nxt = seq_add(peer.rcv_nxt, len(segment.payload))

    for i in range(rounds):
        started = time.perf_counter()
        conn.send(data, now)
        core.run_pending_output(now)
        out = core.take_outbox()
        middle = time.perf_counter()
        deliver(out)
        edges.append(peer.rcv_nxt)
        received, peer.rcv_nxt = peer.rcv_nxt, edges[max(len(edges) - 1 - in_flight, 0)]
        ack = peer.frame(TCP_ACK, b"", now=now + 0.0001)
        peer.rcv_nxt = received
        before_ack = time.perf_counter()
        core.begin_burst()
        core.ether_input_burst([ack], now + 0.0001)
        core.end_burst(now + 0.0001)
        more = core.take_outbox()
        ended = time.perf_counter()
        deliver(more)
        if i >= 300:  # past slow start: one TSO segment per write, none sent on the ACK
            if len(out) != 1 or more:
                raise RuntimeError(f"round {i}: {len(out)} + {len(more)} frames, not one TSO segment")
            sent.append(middle - started)
            acked.append(ended - before_ack)
        now += 0.0002

    # Means, not medians: the CPU per byte is the mean, and what some rounds only pay (the byte
    # queue's compaction, one ACK in three with four segments in flight) a median leaves out.
    # Trimmed of the slowest 5 % of rounds: on a shared machine those are the ones a preemption
    # fell into (one 10 ms preemption in 2 700 rounds is 3.7 µs on a plain mean).
    def trimmed(values: list[float]) -> float:
        return statistics.fmean(sorted(values)[: len(values) * 95 // 100]) * 1e6

    rounds_us = [a + b for a, b in zip(sent, acked, strict=True)]
    return {
        "send_us": trimmed(sent),
        "ack_us": trimmed(acked),
        "round_us": trimmed(rounds_us),
        "round_median_us": statistics.median(rounds_us) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round (CI smoke)")
    parser.add_argument(
        "--offloads-only",
        action="store_true",
        help="only the offload bulk row (ours): for side-by-side runs of two trees; writes no JSON",
    )
    parser.add_argument(
        "--sender-round",
        action="store_true",
        help="only the sans-IO bulk sender round (µs per TSO segment, 0 and 3 left in flight); no JSON",
    )
    args = parser.parse_args()
    if args.sender_round:
        for _ in range(args.rounds):
            rows = {f"in_flight_{n}": run_sender_round(n) for n in (0, 3)}
            print(json.dumps({k: {m: round(v, 2) for m, v in r.items()} for k, r in rows.items()}))
        return
    megabytes, connections, rounds = (
        (8, 100, 1) if args.quick else (args.megabytes, args.connections, args.rounds)
    )
    runs: dict[str, list[dict[str, float]]] = {}
    if args.offloads_only:
        for _ in range(rounds):
            runs.setdefault("ours_offloads_bulk", []).append(
                run_case(True, "bulk", megabytes * 1_000_000, offloads=True)
            )
        cases = {name: {key: spread([r[key] for r in rs]) for key in rs[0]} for name, rs in runs.items()}
        print(json.dumps({"megabytes": megabytes, "rounds": rounds, "cases": cases}, indent=2))
        return
    for _ in range(rounds):
        for ours in (True, False):
            side = "ours" if ours else "kernel"
            runs.setdefault(f"{side}_bulk", []).append(run_case(ours, "bulk", megabytes * 1_000_000))
            if ours:
                runs.setdefault("ours_offloads_bulk", []).append(
                    run_case(ours, "bulk", megabytes * 1_000_000, offloads=True)
                )
            runs.setdefault(f"{side}_connections", []).append(run_case(ours, "connections", connections))
    cases = {name: {key: spread([r[key] for r in rs]) for key in rs[0]} for name, rs in runs.items()}
    result: dict[str, Any] = {
        "benchmark": "memory_wire",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "megabytes": megabytes,
        "connections": connections,
        "rounds": rounds,
        "cases": cases,
        "ratio_bulk": cases["ours_bulk"]["mb_per_s"]["median"] / cases["kernel_bulk"]["mb_per_s"]["median"],
        "ratio_bulk_offloads": cases["ours_offloads_bulk"]["mb_per_s"]["median"]
        / cases["kernel_bulk"]["mb_per_s"]["median"],
        "ratio_connections": cases["ours_connections"]["connections_per_s"]["median"]
        / cases["kernel_connections"]["connections_per_s"]["median"],
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "memory_wire.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
