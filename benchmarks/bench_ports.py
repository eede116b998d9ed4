"""The NIC ports against each other and against kernel sockets (issue 17's speed rows).

One file for every port: each port kind contributes a *rig* (a function below, ``tap_rigs``,
``af_packet_rigs``, ...), which makes the namespaces and says the spec string that opens the port
in them.  Every rig is measured the same way:

- ``frames``: frames/s drained into ``ether_input``.  A kernel-side sender queues ``--frames``
  UDP frames (64 bytes and 1514 bytes on the wire, to the stack's MAC and an address that is not
  the stack's, so ``ip_input`` drops them after its checks) while nobody reads; then the port's
  queue is drained with ``rx_burst`` + ``ether_input`` and timed.  What is measured is the port's
  receive path plus the first two layers, not the sender's speed.
- ``responder``: the 25-line trio HTTP responder below (keep-alive, 13-byte body) over the
  stack on the port, under ``wrk -t1 -c50`` from the kernel side; the peer is the same program on
  kernel sockets over a veth pair between two namespaces.  The ``tap6`` rig runs it over IPv6
  (wrk to ``[2001:2::2]``, the stack with both families; this row only), beside ``tap``'s IPv4.
- ``bulk``: TCP Gbit/s, kernel -> stack and stack -> kernel (``kernel_peer`` on the kernel side),
  against kernel -> kernel over the same kind of veth (``bench_tap.run_veth``).
- ``idle``: the CPU (percent of one core) of a stack idling on the port for ``--seconds``: what
  polling costs the ports that cannot sleep on a descriptor (DPDK's PMDs here).

Rounds alternate the rigs (A B C ... A B C ...) so load from elsewhere on the machine spreads
over all of them; medians with min-max are printed and written as JSON.  Numbers taken while
other work loads the machine are noisy: compare ratios taken in the same run.

    python benchmarks/bench_ports.py [--rigs tap,af_packet] [--rounds R] [--seconds S]
                                     [--megabytes N] [--frames N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import trio
from _common import machine, parse_wrk, spread
from bench_tap import busy_seconds, finish, peer, run_veth

from trio_yastack import open_port, open_stack
from trio_yastack.nic import Port
from trio_yastack.nic.kernel_peer import pattern_block
from trio_yastack.nic.netns import NetworkNamespace, netns_unavailable_reason, veth_pair
from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results"
STACK_IP = "198.18.0.2"
KERNEL_IP = "198.18.0.1"
STACK6, KERNEL6 = "2001:2::2", "2001:2::1"
NOT_OURS = "198.18.0.99"  # the frames benchmark's destination: on-link, never the stack's
HTTP_PORT = 8080
BULK_PORT = 5201


@dataclass(frozen=True)
class Rig:
    """Where a port lives for a benchmark: ``spec`` opens it inside ``stack_ns``; the kernel's
    end of the wire is ``kernel_if`` in ``kernel_ns``, addressed ``KERNEL_IP/24`` (the same
    namespace for a TAP)."""

    spec: str
    stack_ns: NetworkNamespace
    kernel_ns: NetworkNamespace
    kernel_if: str
    #: how many frames the port's receive queue holds, where that is fewer than ``--frames``
    #: (DPDK's PMD rings: 512 for net_af_packet, 1024 for net_af_xdp): the frames row queues no
    #: more than this, or the rest would be dropped before the drain starts
    rx_queue_frames: int | None = None
    #: the responder over IPv6 (the only row such a rig has)
    ipv6: bool = False

    def open(self) -> Port:
        with self.stack_ns.entered():
            return open_port(self.spec)


RigFactory = Callable[[], contextlib.AbstractContextManager[Rig]]


# -- the rigs: one function per port kind ---------------------------------------------------------
def tap_rigs() -> dict[str, RigFactory]:
    """The baseline: a TAP (virtio-net offloads on), the kernel on the device's other side."""

    @contextlib.contextmanager
    def tap() -> Iterator[Rig]:
        with NetworkNamespace("yasp") as namespace:
            yield Rig("tap:yas0", namespace, namespace, "yas0")

    @contextlib.contextmanager
    def tap6() -> Iterator[Rig]:
        with NetworkNamespace("yasp") as namespace:
            for knob in ("all", "default"):
                for setting in ("disable_ipv6=0", "accept_dad=0", "router_solicitations=0"):
                    namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.{setting}"], check=True)
            yield Rig("tap:yas0", namespace, namespace, "yas0", ipv6=True)

    return {"tap": tap, "tap6": tap6}


def af_packet_rigs() -> dict[str, RigFactory]:
    """AF_PACKET on ``veth0`` (no address on the kernel's side of it), the kernel at ``veth1``
    in another namespace."""

    @contextlib.contextmanager
    def af_packet(options: str = "", segment_offloads: bool = True) -> Iterator[Rig]:
        with NetworkNamespace("yasp") as left, NetworkNamespace("yasp") as right:
            veth_pair(left, right)
            left.run(["ip", "addr", "flush", "dev", "veth0"], check=True)
            if not segment_offloads:  # the kernel sends MTU-sized frames: they fit small slots
                right.run(["ethtool", "-K", "veth1", "tso", "off", "gso", "off"], check=True)
            yield Rig(f"af_packet:veth0{options}", left, right, "veth1")

    # TPACKET_V2: 2 KiB slots, handed over per frame (no block timer); 64 KB super-frames would
    # not fit such slots, so the kernel side's TSO/GSO is off for this rig.
    v2 = partial(af_packet, ",version=2,frame_size=2048,blocks=16", segment_offloads=False)
    return {"af_packet": af_packet, "af_packet_v2": v2}


def af_xdp_rigs() -> dict[str, RigFactory]:
    """AF_XDP on ``veth0`` (no address on the kernel's side of it, one queue), the kernel at
    ``veth1`` in another namespace with its transmit checksum offload off (else its TCP checksums
    stay partial over a veth, and XDP hands the frames over as they are).  ``af_xdp`` is the
    default mode (on a veth: driver XDP, copy), ``af_xdp_copy`` generic XDP (``mode=copy``).
    16384 UMEM frames of 2 KiB, so the rx ring (half of them) holds the frames benchmark's 8000
    queued frames, as the TAP's 10000-frame queue does."""

    @contextlib.contextmanager
    def af_xdp(options: str = "") -> Iterator[Rig]:
        with NetworkNamespace("yasp") as left, NetworkNamespace("yasp") as right:
            veth_pair(left, right)
            left.run(["ip", "addr", "flush", "dev", "veth0"], check=True)
            right.run(["ethtool", "-K", "veth1", "tx", "off"], check=True)
            yield Rig(f"af_xdp:veth0,frames=16384,frame_size=2048{options}", left, right, "veth1")

    return {"af_xdp": af_xdp, "af_xdp_copy": partial(af_xdp, ",mode=copy")}


#: the receive ring of each DPDK PMD as this shim sets it up (22.11's defaults)
DPDK_RX_QUEUE_FRAMES = {"net_af_packet": 512, "net_af_xdp": 1024}


def dpdk_rigs() -> dict[str, RigFactory]:
    """DPDK's ``net_af_packet`` and ``net_af_xdp`` PMDs on ``veth0`` (no address), the kernel at
    ``veth1`` with its checksum and segmentation offloads off: DPDK 22.11's PMDs hand frames up as
    the interface has them, so they must carry complete checksums and fit the MTU."""

    @contextlib.contextmanager
    def dpdk(driver: str) -> Iterator[Rig]:
        with NetworkNamespace("yasp") as left, NetworkNamespace("yasp") as right:
            veth_pair(left, right)
            left.run(["ip", "addr", "flush", "dev", "veth0"], check=True)
            right.run(["ethtool", "-K", "veth1", "tx", "off", "tso", "off", "gso", "off"], check=True)
            yield Rig(f"dpdk:{driver}0,iface=veth0", left, right, "veth1", DPDK_RX_QUEUE_FRAMES[driver])

    return {"dpdk_af_packet": partial(dpdk, "net_af_packet"), "dpdk_af_xdp": partial(dpdk, "net_af_xdp")}


def all_rigs() -> dict[str, RigFactory]:
    return {**tap_rigs(), **af_packet_rigs(), **af_xdp_rigs(), **dpdk_rigs()}


# -- CPU of an idle port ---------------------------------------------------------------------------
def run_idle(factory: RigFactory, seconds: float) -> dict[str, float]:
    """The CPU an idle stack on the port costs (percent of one core over ``seconds`` with no
    traffic): near 0 for ports that sleep on a descriptor; the price of polling for DPDK's PMDs,
    which offer no Rx interrupts (``nic/dpdk.py``'s ``wait_rx``)."""
    with factory() as rig, rig.open() as port:

        async def main() -> float:
            async with open_stack(port, ip=f"{STACK_IP}/24"):
                await trio.sleep(0.5)  # settle: the stack's start-up frames
                cpu, started = time.process_time(), time.monotonic()
                await trio.sleep(seconds)  # the measured idle period itself
                return (time.process_time() - cpu) / (time.monotonic() - started) * 100

        return {"cpu_percent": trio.run(main)}


# -- frames/s drained into ether_input ------------------------------------------------------------
_SENDER = """
import socket, sys
count, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
payload = bytes(size)
for _ in range(count):
    try:
        s.sendto(payload, (sys.argv[3], 9))
    except OSError:
        pass
"""


def run_frames(factory: RigFactory, frame_len: int, count: int) -> dict[str, float]:
    """Queue ``count`` frames of ``frame_len`` bytes at the port (at most what its receive queue
    holds), then time draining them."""
    with factory() as rig, rig.open() as port:
        if rig.rx_queue_frames is not None:
            count = min(count, rig.rx_queue_frames)
        mac = port.capabilities.mac
        core = StackCore(
            StackConfig(interface=InterfaceConfig(mac=mac, address=IPv4Address(STACK_IP), prefix_len=24))
        )
        rig.kernel_ns.run(["ip", "neigh", "replace", NOT_OURS, "lladdr", str(mac), "dev", rig.kernel_if],
                          check=True)  # fmt: skip
        payload = frame_len - 14 - 20 - 8
        rig.kernel_ns.run([sys.executable, "-c", _SENDER, str(count), str(payload), NOT_OURS], check=True)
        ether_input, rx_burst = core.ether_input, port.rx_burst
        drained = 0
        started = last = time.perf_counter()
        idle_until = started + 0.5
        while drained < count:
            frames = rx_burst(0, 64)
            now = time.perf_counter()
            if not frames:
                if now > idle_until:
                    break
                continue
            for frame in frames:
                ether_input(frame, 0.0)
            drained += len(frames)
            last = now
            idle_until = now + 0.5
            core.outbox.clear()
        elapsed = last - started
        if drained < count // 2:
            raise RuntimeError(f"{rig.spec}: only {drained} of {count} frames arrived")
        return {"frames_per_s": drained / elapsed if elapsed else 0.0, "drained": drained}


# -- the 25-line trio responder -------------------------------------------------------------------
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!"


async def respond(stream: trio.SocketStream) -> None:
    """Keep-alive HTTP/1.1: one fixed response per request head, until the client closes."""
    pending = b""
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return  # wrk resets its connections at the end
            if not data:
                return
            pending += data
            answers = pending.count(b"\r\n\r\n")
            if answers:
                pending = pending[pending.rindex(b"\r\n\r\n") + 4 :]
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(RESPONSE * answers)


async def serve_responder(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_tcp, respond, HTTP_PORT)
        print("ready", flush=True)
        task_status.started()


def serve(spec: str | None, ipv6: bool = False) -> None:
    """The responder process: on the stack over ``spec``, or on kernel sockets (``None``); with
    ``ipv6`` the stack has 2001:2::2/64 beside its IPv4 address (trio.serve_tcp listens on both)."""
    if spec is None:
        trio.run(serve_responder)
    elif ipv6:
        import trio_yastack
        from trio_yastack.stack import Ip6Config

        ip6 = Ip6Config(dad_transmits=0, router_solicitations=0)
        trio_yastack.run(serve_responder, nic=spec, ip=[f"{STACK_IP}/24", f"{STACK6}/64"], ip6=ip6)
    else:
        import trio_yastack

        trio_yastack.run(serve_responder, nic=spec, ip=f"{STACK_IP}/24")


def _wrk(
    kernel_ns: NetworkNamespace, server: subprocess.Popen[str], seconds: int, ipv6: bool = False
) -> dict[str, float]:
    assert server.stdout is not None
    line = server.stdout.readline()
    if "ready" not in line:
        raise RuntimeError(f"the responder did not start: {line!r}")
    url = f"http://{STACK_IP}:{HTTP_PORT}/"
    if ipv6:  # the TAP exists now (the responder made it): the kernel's IPv6 address on it
        kernel_ns.run(["ip", "-6", "addr", "add", f"{KERNEL6}/64", "dev", "yas0", "nodad"], check=True)
        url = f"http://[{STACK6}]:{HTTP_PORT}/"
    for _ in range(50):  # the first request also waits for ARP: bounded retries
        if kernel_ns.run(["curl", "-sS", "-m", "2", url]).returncode == 0:
            break
    done = kernel_ns.run(["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", url], timeout=seconds + 60)
    if done.returncode:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def _responder_command(spec: str | None, ipv6: bool = False) -> list[str]:
    return [sys.executable, str(HERE), "--serve", spec or "kernel", *(["--serve6"] if ipv6 else [])]


def run_responder(factory: RigFactory, seconds: int) -> dict[str, float]:
    with factory() as rig:
        server = rig.stack_ns.popen(_responder_command(rig.spec, rig.ipv6), stdout=subprocess.PIPE, text=True)
        return _wrk(rig.kernel_ns, server, seconds, rig.ipv6)


def run_responder_kernel(seconds: int) -> dict[str, float]:
    with NetworkNamespace("yasp") as left, NetworkNamespace("yasp") as right:
        veth_pair(left, right)
        server = left.popen(_responder_command(None), stdout=subprocess.PIPE, text=True)
        return _wrk(right, server, seconds)


# -- bulk TCP -------------------------------------------------------------------------------------
def run_bulk(factory: RigFactory, direction: str, nbytes: int) -> dict[str, float]:
    """One transfer between the kernel and a stack on the rig's port; the stack side times it."""
    with factory() as rig, rig.open() as port:

        async def main() -> dict[str, float]:
            async with open_stack(port, ip=f"{STACK_IP}/24"):
                sock = trio.socket.socket()
                if direction == "in":
                    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
                    await sock.bind(("0.0.0.0", BULK_PORT))
                    sock.listen(1)
                    process = peer(rig.kernel_ns, "send", STACK_IP, BULK_PORT, nbytes)
                    conn, _ = await sock.accept()
                    busy, started = busy_seconds(), time.monotonic()
                    received = 0
                    while chunk := await conn.recv(1 << 20):
                        received += len(chunk)
                    elapsed, busy = time.monotonic() - started, busy_seconds() - busy
                    conn.close()
                else:
                    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4 << 20)
                    process = peer(rig.kernel_ns, "recv", BULK_PORT)
                    await trio.to_thread.run_sync(process.stdout.readline)  # type: ignore[union-attr]  # piped by peer()
                    await sock.connect((KERNEL_IP, BULK_PORT))
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
                return {"gbit_per_s": nbytes * 8 / elapsed / 1e9, "cpu_s_per_gb": busy / (nbytes / 1e9)}

        return trio.run(main)


# -- the run --------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rigs", default=None, help="comma-separated rig names (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="wrk's duration per round")
    parser.add_argument("--megabytes", type=int, default=256, help="bulk transfer size")
    parser.add_argument("--frames", type=int, default=8000, help="frames queued per frames/s round")
    parser.add_argument("--only", default="frames,responder,bulk,idle", help="which measurements")
    parser.add_argument("--quick", action="store_true", help="short runs, 1 round (smoke)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the responder process itself
    parser.add_argument("--serve6", action="store_true", help=argparse.SUPPRESS)  # ... over IPv6 too
    args = parser.parse_args()
    if args.serve:
        serve(None if args.serve == "kernel" else args.serve, args.serve6)
        return
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"bench_ports: cannot make network namespaces here: {reason}")
    rigs = all_rigs()
    chosen = args.rigs.split(",") if args.rigs else list(rigs)
    unknown = set(chosen) - set(rigs)
    if unknown:
        sys.exit(f"bench_ports: unknown rigs {sorted(unknown)}; known: {sorted(rigs)}")
    rounds, seconds, megabytes = (1, 3, 32) if args.quick else (args.rounds, args.seconds, args.megabytes)
    nbytes = megabytes * 1_000_000
    only = set(args.only.split(","))
    cases: dict[str, Callable[[], dict[str, float]]] = {}
    for name in chosen:
        factory = rigs[name]
        if name == "tap6":  # the IPv6 rig: the responder row only
            if "responder" in only:
                cases[f"{name} responder"] = partial(run_responder, factory, seconds)
            continue
        if "frames" in only:
            for length in (64, 1514):
                cases[f"{name} frames {length}B"] = partial(run_frames, factory, length, args.frames)
        if "responder" in only:
            cases[f"{name} responder"] = partial(run_responder, factory, seconds)
        if "bulk" in only:
            for direction in ("in", "out"):
                cases[f"{name} bulk {direction}"] = partial(run_bulk, factory, direction, nbytes)
        if "idle" in only:
            cases[f"{name} idle"] = partial(run_idle, factory, seconds)
    if "responder" in only:
        cases["kernel responder (veth)"] = lambda: run_responder_kernel(seconds)
    if "bulk" in only:
        cases["kernel bulk (veth)"] = lambda: run_veth(nbytes, 1500)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            try:
                samples[name].append(case())
            except Exception as exc:  # one broken rig must not lose the others' figures
                print(f"bench_ports: {name}: {exc!r}", file=sys.stderr)
    headline = {
        "frames": "frames_per_s", "responder": "requests_per_s", "bulk": "gbit_per_s", "idle": "cpu_percent",
    }  # fmt: skip
    table: dict[str, Any] = {}
    for name, runs in samples.items():
        if runs:
            key = next(value for word, value in headline.items() if f" {word}" in name)
            table[name] = {"metric": key, **spread(run[key] for run in runs), "runs": runs}
    result = {
        "benchmark": "ports",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "kernel": platform.release(),
        "rounds": rounds,
        "wrk": f"wrk -t1 -c50 -d{seconds}s --latency, keep-alive",
        "bulk_megabytes": megabytes,
        "frames_per_round": args.frames,
        "cases": table,
    }
    print(f"\n{'case':34} {'metric':16} {'median':>12} {'min-max':>24}")
    for name, row in table.items():
        print(f"{name:34} {row['metric']:16} {row['median']:12.2f} {row['min']:11.2f}-{row['max']:<11.2f}")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ports.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
