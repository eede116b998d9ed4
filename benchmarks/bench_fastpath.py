"""The established-connection fast path (issue 18): the same work with it on and off, side by side.

Rows, each measured with the fast path on and off (``TRIO_YASTACK_NO_FASTPATH=1`` in the
responder's process, ``StackCore.fast_path`` in process), rounds alternating so load from
elsewhere on the machine spreads over both:

- ``responder``: ``bench_ports.py``'s 25-line trio HTTP responder over the stack under
  ``wrk -t1 -c50``, on a TAP and on AF_PACKET (TPACKET_V3, the fastest bypass port for this row in
  ``bench_ports.py``), and the same program on kernel sockets over veth (the bar); requests/s,
  the responder's CPU microseconds per request (start-up and the warm-up request included) and
  the frames it sent per request (1.0: every response carries its request's ACK, no pure ACK);
- ``memory_wire``: one bulk connection between two stacks on a fault-free memory wire, MB/s;
- ``segment``: microseconds of CPU per received in-order data segment, sans-IO, from
  ``ether_input`` to the receive buffer (one ACK per burst included), bursts of 1 and 32;
- ``request``: microseconds of CPU per request/response on one connection, sans-IO: the request
  in (acknowledging the last response), read, the response written and its segment out;
- ``keepalive``: the 25-line responder's loop and a wrk-like client (50 connections, each a
  request, then its response, and again) on two stacks over a memory wire in this process:
  CPU microseconds per request for both sides together, every layer between the trio
  application and the wire (``SocketStream``, the socket layer, both poll loops, both stacks)
  without a kernel or a NIC in the way.  The rows the socket layer's and the poll loop's changes
  show in (issue 18: the keep-alive request/response path).

``--rows`` picks rows; run from a base tree's ``PYTHONPATH`` (same venv, same native build) to
measure it side by side with the same benchmark code.

    python benchmarks/bench_fastpath.py [--rounds R] [--seconds S] [--megabytes N] [--rigs tap,af_packet]
                                        [--rows segment,request,keepalive,memory_wire,responder] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _common import load_average, machine, spread
from bench_ports import _responder_command, _wrk, af_packet_rigs, run_responder_kernel, tap_rigs

from trio_yastack import open_stack, use_stack
from trio_yastack.nic import memory_wire
from trio_yastack.nic.netns import NetworkNamespace, netns_unavailable_reason

RESULTS = Path(__file__).parent / "results"
CHUNK = bytes(1 << 16)


RIGS = {**tap_rigs(), **af_packet_rigs()}


def run_responder_stack(rig_name: str, seconds: int, fast: bool) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("TRIO_YASTACK_NO_FASTPATH", None)
    if not fast:
        env["TRIO_YASTACK_NO_FASTPATH"] = "1"
    with RIGS[rig_name]() as rig:
        server = rig.stack_ns.popen(_responder_command(rig.spec), stdout=subprocess.PIPE, text=True, env=env)
        result = _wrk(rig.kernel_ns, server, seconds)
        result["cpu_us_per_request"] = _cpu_seconds(server.pid) / max(result["requests"], 1) * 1e6
        # Frames the stack sent (the kernel's side of the wire received), start-up, ARP and the
        # warm-up request included: about 1.0 when each response carries its request's ACK, 2.0
        # when a pure ACK leaves before each response.
        received = _link_packets(rig.kernel_ns, rig.kernel_if)["rx"]
        result["frames_out_per_request"] = received / max(result["requests"], 1)
        return result


def _link_packets(namespace: NetworkNamespace, interface: str) -> dict[str, int]:
    """The packets ``interface`` in ``namespace`` has received and sent (``ip -s -j link``)."""
    command = ["ip", "-s", "-j", "link", "show", interface]
    out = namespace.run(command, capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)[0]["stats64"]
    return {"rx": int(stats["rx"]["packets"]), "tx": int(stats["tx"]["packets"])}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the responder (``pid``, or its child when ``pid`` is the
    namespace's ``ip netns exec`` wrapper).  Per request, this is the row that stays readable
    on a loaded machine: requests/s swing with other work, CPU per request much less."""
    if b"bench_ports" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_memory_wire(nbytes: int, fast: bool) -> float:
    """MB/s of one bulk connection between two stacks in this process."""

    async def main() -> float:
        a_port, b_port = memory_wire()
        async with (
            open_stack(a_port, ip="198.18.0.1/24") as a,
            open_stack(b_port, ip="198.18.0.2/24") as b,
        ):
            a.core.fast_path = b.core.fast_path = fast
            with use_stack(b):
                listener = (await trio.open_tcp_listeners(5001, host="198.18.0.2"))[0]
            elapsed = 0.0

            async def sink() -> None:
                nonlocal elapsed
                stream = await listener.accept()
                started = time.perf_counter()
                got = 0
                while chunk := await stream.receive_some(1 << 20):
                    got += len(chunk)
                elapsed = time.perf_counter() - started
                assert got == nbytes

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink)
                with use_stack(a):
                    stream = await trio.open_tcp_stream("198.18.0.2", 5001)
                sent = 0
                while sent < nbytes:
                    await stream.send_all(CHUNK[: nbytes - sent])
                    sent += min(len(CHUNK), nbytes - sent)
                await stream.send_eof()
            await stream.aclose()
            await listener.aclose()
        return nbytes / elapsed / 1e6

    return trio.run(main)


def run_segment(burst: int, fast: bool, bursts: int = 300) -> float:
    """Best microseconds per segment over ``bursts`` bursts of in-order 100-byte data segments."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tcp_helpers import OUR_PORT, PEER_PORT, T0, build_tcp_frame, open_passive, seq_add, tcp_core

    from trio_yastack.stack.wire.tcp import TCP_ACK, TcpOptions

    core = tcp_core(seed=3, receive_buffer=1 << 30)
    core.fast_path = fast
    _listener, conn, peer = open_passive(core)
    seq, best, now = peer.snd_nxt, float("inf"), T0 + 1
    for b in range(bursts):
        frames = [
            build_tcp_frame(PEER_PORT, OUR_PORT, seq_add(seq, i * 100), peer.rcv_nxt, TCP_ACK,
                            payload=bytes(100), options=TcpOptions(timestamps=(1000 + b, 0)))
            for i in range(burst)
        ]  # fmt: skip
        seq = seq_add(seq, burst * 100)
        started = time.perf_counter()
        core.begin_burst()
        core.ether_input_burst(frames, now)
        core.end_burst(now)
        best = min(best, time.perf_counter() - started)
        core.take_outbox()
        conn.receive(1 << 30, now)
        now += 0.001
    return best / burst * 1e6


def run_request(fast: bool, requests: int = 3000) -> float:
    """Best microseconds of CPU per request/response, sans-IO: the request (which acknowledges
    the previous response) in through ``ether_input_burst``, the application's read and its
    response's write, the response segment out (``run_pending_output``, as the poll loop's turn)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tcp_helpers import OUR_PORT, PEER_PORT, T0, build_tcp_frame, open_passive, seq_add, tcp_core

    from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_PSH, TcpOptions

    core = tcp_core(seed=3)
    core.fast_path = fast
    core.autocork = True  # as under the runtime: sends go out at the end of the turn
    _listener, conn, peer = open_passive(core)
    conn.nodelay = True  # trio's SocketStream sets TCP_NODELAY
    request, response = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(85)
    seq, ack, best, now = peer.snd_nxt, peer.rcv_nxt, float("inf"), T0 + 1
    for i in range(requests):
        frame = build_tcp_frame(PEER_PORT, OUR_PORT, seq, ack, TCP_ACK | TCP_PSH, payload=request,
                                options=TcpOptions(timestamps=(1000 + i, conn.ts_offset)))  # fmt: skip
        started = time.perf_counter()
        core.begin_burst()
        core.ether_input_burst([frame], now)
        core.end_burst(now)
        conn.receive(65536, now)
        conn.send(response, now)
        core.run_pending_output(now)
        outbox = core.take_outbox()
        best = min(best, time.perf_counter() - started)
        assert len(outbox) == 1  # the response, carrying the request's ACK
        seq, ack, now = seq_add(seq, len(request)), seq_add(ack, len(response)), now + 0.0001
    return best * 1e6


KEEPALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: 198.18.0.2:8080\r\n\r\n"


def run_keepalive(fast: bool, connections: int = 50, requests: int = 100) -> float:
    """CPU microseconds per request of ``bench_ports.respond`` (the 25-line responder) on one
    stack and ``connections`` clients on another, over a memory wire in this process: each
    client writes a request, reads the whole response, and again, ``requests`` times."""
    from bench_ports import RESPONSE, respond

    async def main() -> float:
        a_port, b_port = memory_wire()
        async with (
            open_stack(a_port, ip="198.18.0.1/24") as a,
            open_stack(b_port, ip="198.18.0.2/24") as b,
        ):
            a.core.fast_path = b.core.fast_path = fast
            listener = b.tcp_listen(8080)
            streams = [await a.tcp_connect("198.18.0.2", 8080) for _ in range(connections)]
            async with trio.open_nursery() as servers:
                for _ in streams:
                    servers.start_soon(respond, await listener.accept())

                async def client(stream: trio.SocketStream) -> None:
                    for _ in range(requests):
                        await stream.send_all(KEEPALIVE_REQUEST)
                        got = 0
                        while got < len(RESPONSE):
                            chunk = await stream.receive_some(65536)
                            assert chunk, "the responder closed"
                            got += len(chunk)

                started = time.process_time()
                async with trio.open_nursery() as clients:
                    for stream in streams:
                        clients.start_soon(client, stream)
                busy = time.process_time() - started
                for stream in streams:
                    await stream.aclose()
            await listener.aclose()
        return busy / (connections * requests) * 1e6

    return trio.run(main)


ROWS = ("segment", "request", "keepalive", "memory_wire", "responder")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--rigs", default="tap,af_packet", help="ports for the responder rows")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="one short round")
    args = parser.parse_args()
    wanted = set(args.rows.split(","))
    if wanted - set(ROWS):
        parser.error(f"unknown rows {sorted(wanted - set(ROWS))}: choose from {', '.join(ROWS)}")
    if args.quick:
        args.rounds, args.seconds, args.megabytes = 1, 3, 20
    rows: dict[str, list[float]] = {}
    why_not = netns_unavailable_reason()
    for _ in range(args.rounds):
        for fast in (True, False):
            name = "on" if fast else "off"
            for size in (1, 32) if "segment" in wanted else ():
                rows.setdefault(f"segment_us_burst{size}_{name}", []).append(run_segment(size, fast))
            if "request" in wanted:
                rows.setdefault(f"request_us_{name}", []).append(run_request(fast))
            if "keepalive" in wanted:
                rows.setdefault(f"keepalive_us_{name}", []).append(run_keepalive(fast))
            if "memory_wire" in wanted:
                rows.setdefault(f"memory_wire_MBps_{name}", []).append(
                    run_memory_wire(args.megabytes << 20, fast)
                )
            for rig in args.rigs.split(",") if why_not is None and "responder" in wanted else []:
                got = run_responder_stack(rig, args.seconds, fast)
                rows.setdefault(f"responder_{rig}_rps_{name}", []).append(got["requests_per_s"])
                rows.setdefault(f"responder_{rig}_cpu_us_per_request_{name}", []).append(
                    got["cpu_us_per_request"]
                )
                rows.setdefault(f"responder_{rig}_frames_out_per_request_{name}", []).append(
                    got["frames_out_per_request"]
                )
        if why_not is None and "responder" in wanted:
            rows.setdefault("responder_kernel_rps", []).append(
                run_responder_kernel(args.seconds)["requests_per_s"]
            )
    result: dict[str, Any] = {name: spread(values) for name, values in rows.items()}
    if why_not is None and "responder" in wanted and "tap" in args.rigs.split(","):
        kernel = result["responder_kernel_rps"]["median"]
        for name in ("on", "off"):
            result[f"responder_tap_{name}_over_kernel"] = (
                result[f"responder_tap_rps_{name}"]["median"] / kernel
            )
    result["machine"] = machine()
    result["load_average"] = load_average()
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result, indent=2))  # first on stdout: run_all.py reads it
    if not args.quick and wanted == set(ROWS):  # a quick or partial run's figures are not kept
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fastpath.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
