"""IPv6 beside IPv4 (issue 23): the same rows over each family, alternating in one run.

- ``bulk in``/``bulk out``: ``bench_tap.py``'s transfer through a TAP with offloads on (IPv6 with
  TSO6 both ways), kernel -> stack and stack -> kernel: Gbit/s and the stack process's own CPU
  seconds per GB (the column that stays readable on a loaded machine); for ``bulk out`` also the
  CPU and the wall time per GB inside the TAP writes (the kernel's receive path runs there);
- ``responder``: ``bench_ports.py``'s 25-line trio responder under ``wrk -t1 -c50`` (rigs ``tap``
  and ``tap6``): requests/s and the responder's CPU microseconds per request;
- ``send``: sans-IO, two cores in this process: our core's CPU seconds per GB as a bulk sender
  (``bulk out`` without the kernel and the machine's load: the peer's ACKs in, the writes into
  the send buffer, the TSO segments out; the peer's core untimed); ``send-gso``: the same with
  our port unable to segment (software GSO: IPv4's cut in ``ether_output``, IPv6's in ``_tcp6``);
- ``request``: sans-IO, two cores in this process (the peer's core builds the requests and takes
  the responses, untimed): microseconds our core spends per request/response -- the request in
  through ``ether_input_burst`` (acknowledging the last response), read, the response written
  and its segment out -- the median of ``--requests``, over IPv4 and IPv6 with the fast path on,
  and IPv6 with it off (``v6 off``, what IPv6 cost before its frames were classified in C).

Medians of the rounds, the IPv6/IPv4 ratios and every run are printed as JSON (no results file:
the rows belong to ``bench_tap.py``'s and ``bench_ports.py``'s own results).

    python benchmarks/bench_ipv6.py [--megabytes N] [--rounds R] [--seconds S] [--requests N]
                                    [--rows bulk,responder,send,send-gso,request] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import bench_ports
import bench_tap
from _common import load_average
from bench_fastpath import _cpu_seconds

from trio_yastack.nic.netns import netns_unavailable_reason
from trio_yastack.nic.tap import TapPort


def bulk(direction: str, ipv6: bool, nbytes: int) -> dict[str, float]:
    """One ``bench_tap.py`` transfer; with the CPU our thread spends inside ``TapPort.tx_burst``
    (the writes into the TAP: the kernel takes each frame in -- ``tun_get_user``, ``ip6_rcv`` or
    ``ip_rcv``, ``tcp_v6_rcv`` or ``tcp_v4_rcv`` -- within that system call) and the wall time
    there, which a loaded machine inflates with preemption (a profiler's wall clock once put
    the IPv6 write at 3x IPv4's; its CPU is the same)."""
    inside = {"cpu": 0.0, "wall": 0.0}
    original = TapPort.tx_burst

    def timed(self: TapPort, queue: int, frames: Sequence[bytes]) -> int:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return original(self, queue, frames)
        finally:
            inside["cpu"] += time.thread_time() - cpu
            inside["wall"] += time.perf_counter() - wall

    TapPort.tx_burst = timed  # type: ignore[method-assign]  # measured for this transfer only
    try:
        cpu = time.process_time()
        result = bench_tap.run_ours(direction, True, nbytes, 1500, ipv6=ipv6)
        cpu = time.process_time() - cpu
    finally:
        TapPort.tx_burst = original  # type: ignore[method-assign]
    gb = nbytes / 1e9
    return {
        "gbit_per_s": result["gbit_per_s"],
        "stack_cpu_s_per_gb": cpu / gb,
        "tap_write_cpu_s_per_gb": inside["cpu"] / gb,
        "tap_write_wall_s_per_gb": inside["wall"] / gb,
    }


def responder(rig_name: str, seconds: int) -> dict[str, float]:
    with bench_ports.tap_rigs()[rig_name]() as rig:
        command = bench_ports._responder_command(rig.spec, rig.ipv6)
        server = rig.stack_ns.popen(command, stdout=subprocess.PIPE, text=True)
        result = bench_ports._wrk(rig.kernel_ns, server, seconds, rig.ipv6)
        result["cpu_us_per_request"] = _cpu_seconds(server.pid) / max(result["requests"], 1) * 1e6
        return result


def request(ipv6: bool, fast: bool, requests: int) -> dict[str, float]:
    """Our core's microseconds per request/response over one family, sans-IO (the ``request`` row)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_stack_ipv6 import B, exchange, pair

    kernel, ours = pair()
    ours.fast_path = fast
    ours.autocork = True  # as under the runtime: sends go out at the end of the turn
    if ipv6:
        listener = ours.tcp.listen6(80)
        client = kernel.tcp.connect6(B, 80, 0.0)
    else:
        listener = ours.tcp.listen(80)
        client = kernel.tcp.connect(ours.ip, 80, 0.0)
    exchange(kernel, ours, 0.0)
    server = listener.accept()
    assert server is not None
    server.nodelay = client.nodelay = True  # trio's SocketStream sets TCP_NODELAY
    body, response = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(85)
    times: list[float] = []
    now = 0.01
    for _ in range(requests):
        client.send(body, now)
        frames = [bytes(f) for f in kernel.take_outbox()]
        started = time.perf_counter()
        ours.begin_burst()
        ours.ether_input_burst(frames, now)
        ours.end_burst(now)
        server.receive(65536, now)
        server.send(response, now)
        ours.run_pending_output(now)
        out = ours.take_outbox()
        times.append(time.perf_counter() - started)
        assert len(out) == 1  # the response, carrying the request's ACK
        kernel.ether_input_burst([bytes(f) for f in out], now)
        client.receive(65536, now)
        now += 0.0001
    return {"us_per_request": statistics.median(times) * 1e6, "fast_path_segments": ours.fast_path_segments}


def send(ipv6: bool, megabytes: int, *, tso: bool = True) -> dict[str, float]:
    """Our core's CPU per GB sent, sans-IO (the ``send`` row): a bulk sender's side of ``bulk
    out`` without the kernel or the machine's load in it -- the peer's ACKs in through
    ``ether_input_burst``, the application's writes into the send buffer, and the TSO segments
    out (a port with TSO both ways, as a TAP with its virtio-net header), timed; the peer's
    core (completing the checksums as the kernel would, acknowledging) untimed.  Without ``tso``
    our port does not segment (the ``send-gso`` row: AF_PACKET's, AF_XDP's or DPDK's case for
    IPv6), so the stack cuts its TSO segments itself (software GSO)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_stack_ipv6 import A, pair

    from trio_yastack.nic.tap import complete_checksum
    from trio_yastack.stack import ChecksumVerified, OffloadPacket

    kernel, ours = pair()
    for core in (kernel, ours) if tso else (kernel,):
        core.tso6 = True  # (what open_stack sets from a TAP's capabilities)
        core.tso_max_size = core.gso_max_size = 0xFFFF
        core.tx_checksum_offload = True
    if ipv6:
        listener = kernel.tcp.listen6(80)
        server = ours.tcp.connect6(A, 80, 0.0)
    else:
        listener = kernel.tcp.listen(80)
        server = ours.tcp.connect(kernel.ip, 80, 0.0)
    now = 0.0
    for _ in range(20):
        kernel.ether_input_burst([bytes(f) for f in ours.take_outbox()], now)
        ours.ether_input_burst([bytes(f) for f in kernel.take_outbox()], now)
    client = listener.accept()
    assert client is not None
    block = bytes(range(256)) * 1024
    total = megabytes * 1_000_000
    sent = received = 0
    acks: list[bytes] = []
    elapsed = cpu = 0.0
    for _ in range(total // 1000 + 10_000):  # bounded: ~45 turns per MB when it works
        if received >= total:
            break
        now += 0.0002
        wall_at, cpu_at = time.perf_counter(), time.thread_time()
        ours.begin_burst()
        ours.ether_input_burst(acks, now)
        ours.end_burst(now)
        while sent < total and (taken := server.send(memoryview(block)[: total - sent], now)):
            sent += taken
        ours.run_pending_output(now)
        out = ours.take_outbox()
        cpu += time.thread_time() - cpu_at
        elapsed += time.perf_counter() - wall_at
        kernel.begin_burst()
        kernel.ether_input_burst(
            [ChecksumVerified(complete_checksum(f) if f.__class__ is OffloadPacket else f) for f in out], now
        )
        kernel.end_burst(now)
        while chunk := client.receive(1 << 22, now):
            received += len(chunk)
        kernel.run_timers(now)
        ours.run_timers(now)
        kernel.run_pending_output(now)
        acks = [bytes(f) for f in kernel.take_outbox()]
    else:
        raise RuntimeError(f"send: {received} of {total} bytes arrived")
    gb = total / 1e9
    return {"cpu_s_per_gb": cpu / gb, "wall_s_per_gb": elapsed / gb, "segments": ours.stats_tcp.segments_sent}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8, help="wrk's duration per round")
    parser.add_argument("--requests", type=int, default=20_000, help="per round of the request row")
    parser.add_argument("--rows", default="bulk,responder,send,send-gso,request", help="which rows to run")
    parser.add_argument("--quick", action="store_true", help="small, short, one round (smoke)")
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    reason = netns_unavailable_reason()
    if reason and rows & {"bulk", "responder"}:
        sys.exit(f"bench_ipv6: cannot make network namespaces here: {reason}")
    megabytes, rounds, seconds = (32, 1, 3) if args.quick else (args.megabytes, args.rounds, args.seconds)
    requests = 2000 if args.quick else args.requests
    nbytes = megabytes * 1_000_000
    cases: dict[str, Callable[[], dict[str, float]]] = {}
    if "bulk" in rows:
        cases["bulk in v4"] = lambda: bulk("in", False, nbytes)
        cases["bulk in v6"] = lambda: bulk("in", True, nbytes)
        cases["bulk out v4"] = lambda: bulk("out", False, nbytes)
        cases["bulk out v6"] = lambda: bulk("out", True, nbytes)
    if "responder" in rows:
        cases["responder v4"] = lambda: responder("tap", seconds)
        cases["responder v6"] = lambda: responder("tap6", seconds)
    if "send" in rows:
        cases["send v4"] = lambda: send(False, megabytes)
        cases["send v6"] = lambda: send(True, megabytes)
    if "send-gso" in rows:
        cases["send-gso v4"] = lambda: send(False, megabytes, tso=False)
        cases["send-gso v6"] = lambda: send(True, megabytes, tso=False)
    if "request" in rows:
        cases["request v4"] = lambda: request(False, True, requests)
        cases["request v6"] = lambda: request(True, True, requests)
        cases["request v6 off"] = lambda: request(True, False, requests)
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
        "bulk out": ("gbit_per_s", "stack_cpu_s_per_gb", "tap_write_cpu_s_per_gb", "tap_write_wall_s_per_gb"),
        "responder": ("requests_per_s", "cpu_us_per_request"),
        "send": ("cpu_s_per_gb", "wall_s_per_gb"),
        "send-gso": ("cpu_s_per_gb", "wall_s_per_gb"),
        "request": ("us_per_request",),
    }
    for kind, names in metrics.items():
        if f"{kind} v4" not in samples:
            continue
        for metric in names:
            v4 = [run[metric] for run in samples[f"{kind} v4"]]
            v6 = [run[metric] for run in samples[f"{kind} v6"]]
            row: dict[str, object] = {
                "v4": statistics.median(v4),
                "v6": statistics.median(v6),
                "v6/v4": statistics.median(v6) / statistics.median(v4),
                "v4 runs": v4,
                "v6 runs": v6,
            }
            if f"{kind} v6 off" in samples:
                row["v6 off"] = statistics.median(run[metric] for run in samples[f"{kind} v6 off"])
            result[f"{kind} {metric}"] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
