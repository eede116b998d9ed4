"""Memory per idle established TCP connection, ours against the kernel's, 10 000 connections.

Ours: one process opens two stacks on a ``memory_wire`` and makes N connections between them
with trio sockets (``trio.open_tcp_stream`` on one, ``accept`` on the other), then holds them
idle; the figure is the growth of the process's resident set (``/proc/self/statm``) per endpoint
(2N endpoints: both ends are ours).

The kernel: kernel sockets over loopback inside a private network namespace (the accepting
ends in this process, the connecting ends in a forked child); the figure is, per endpoint, the
kernel's own memory for them — the growth of all
slab caches (``/proc/slabinfo``: socket, inode, file, dentry, epoll objects) plus the TCP buffer
pages ``/proc/net/sockstat`` counts for that namespace — plus both processes' resident
growth (their Python socket objects).  Slab figures are machine-wide, so this is approximate: other
activity during the run adds noise.

    python benchmarks/bench_memory.py [--connections N] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _common import machine

from trio_yastack import open_stack, use_stack
from trio_yastack.nic import memory_wire
from trio_yastack.nic.netns import NetworkNamespace, netns_unavailable_reason

RESULTS = Path(__file__).parent / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def slab_bytes() -> int:
    total = 0
    for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
        fields = line.split()
        total += int(fields[1]) * int(fields[3])  # active objects x object size
    return total


def sockstat_tcp_bytes() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * PAGE
    return 0


async def _hold(count: int, host: str, server_stack: Any) -> tuple[list[Any], list[Any]]:
    """``count`` established connections; returns both ends' streams (kept alive, idle)."""
    if server_stack is not None:
        with use_stack(server_stack):
            listener_sock = trio.socket.socket()
    else:
        listener_sock = trio.socket.socket()
    listener_sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    await listener_sock.bind((host, 5003))
    listener_sock.listen(4096)
    listener = trio.SocketListener(listener_sock)
    clients, servers = [], []
    for _ in range(count):
        clients.append(await trio.open_tcp_stream(host, 5003))
        servers.append(await listener.accept())
    await listener.aclose()
    return clients, servers


def run_ours(count: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        client_port, server_port = memory_wire(mtu=1500, queue_limit=65536)
        async with (
            open_stack(client_port, ip="198.18.0.2/24"),
            open_stack(server_port, ip="198.18.0.1/24") as server_stack,
        ):
            await _hold(8, "198.18.0.1", server_stack)  # warm up imports and caches
            gc.collect()
            before = resident_bytes()
            clients, servers = await _hold(count, "198.18.0.1", server_stack)
            gc.collect()
            grown = resident_bytes() - before
            assert len(clients) == len(servers) == count
            return {"bytes_per_endpoint": grown / (2 * count)}

    return trio.run(main)


def run_kernel(count: int) -> dict[str, float]:
    """Kernel sockets over loopback: the accepting ends here, the connecting ends in a forked
    child (each process then needs only one descriptor per connection)."""
    with NetworkNamespace("yasb") as namespace, namespace.entered():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 5003))
        listener.listen(4096)
        gc.collect()
        before = resident_bytes(), slab_bytes(), sockstat_tcp_bytes()
        report_read, report_write = os.pipe()
        hold_read, hold_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the connecting side: connect, say how much it grew, hold until told
            status = 0
            try:
                os.close(report_read)
                os.close(hold_write)
                start = resident_bytes()
                clients = [socket.create_connection(("127.0.0.1", 5003)) for _ in range(count)]
                os.write(report_write, str(resident_bytes() - start).encode())
                os.close(report_write)
                os.read(hold_read, 1)  # returns at EOF, when the parent has measured
                del clients
            except BaseException:
                status = 1
            os._exit(status)
        os.close(report_write)
        os.close(hold_read)
        try:
            servers = [listener.accept()[0] for _ in range(count)]
            client_growth = int(os.read(report_read, 64) or b"0")
            gc.collect()
            after = resident_bytes(), slab_bytes(), sockstat_tcp_bytes()
        finally:
            os.close(hold_write)
            os.close(report_read)
            os.waitpid(pid, 0)
        process, slabs, buffers = (a - b for a, b in zip(after, before, strict=True))
        process += client_growth
        for sock in servers:
            sock.close()
        listener.close()
        return {
            "bytes_per_endpoint": (process + slabs + buffers) / (2 * count),
            "kernel_bytes_per_endpoint": (slabs + buffers) / (2 * count),
            "process_bytes_per_endpoint": process / (2 * count),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="500 connections (CI smoke)")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"bench_memory: cannot make network namespaces here: {reason}")
    count = 500 if args.quick else args.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 1024  # one kernel socket per connection in each process, and room
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise the hard limit
        except (ValueError, OSError):
            sys.exit(f"bench_memory: {count} connections need {wanted} descriptors; the limit is {hard}")
    elif soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    ours = run_ours(count)
    kernel = run_kernel(count)
    result = {
        "benchmark": "memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "connections": count,
        "ours": ours,
        "kernel": kernel,
        "ratio": ours["bytes_per_endpoint"] / kernel["bytes_per_endpoint"],
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
