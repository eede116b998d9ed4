"""Bulk TCP over a lossy path: the stack as sender against the Linux kernel as sender (issue 19).

One TAP in a private namespace (kernel side 198.18.0.1, the stack 198.18.0.2), the same loss each
way: what the stack sends is dropped by the kernel itself, an ``nftables`` table of family
``netdev`` on the TAP's kernel side with ``numgen random mod 1000 < N drop`` on its ingress hook;
what the kernel sends is dropped as it reaches the stack (:class:`RxLoss`, a seeded port wrapper).
Not nft's egress hook for that direction: a frame dropped there fails the kernel's own transmit
(NET_XMIT_DROP), so its TCP keeps the segment and sends it again as if nothing was lost -- the
kernel sender would never see a loss (its ``total_retrans`` stays at 0-2 at "3 %").  Per loss
rate and offload setting:

- the stack sends to a kernel receiver, with our CUBIC and our NewReno (the receiver only counts
  the bytes, as ours does the other way: until 2026-12-06 afternoon it hashed them, which held
  the stack's rows to about what SHA-256 runs at here);
- the kernel sends to a stack receiver with the same congestion control set per socket
  (``TCP_CONGESTION``: cubic, reno), and BBR for reference;

and prints Mbit/s, the ratio stack ÷ kernel for the same congestion control, and retransmission
timeouts per thousand segments lost (ours from the stack's counters, the kernel's from
``nstat``'s TcpExtTCPTimeouts in the namespace; segments lost = bytes dropped on that direction
/ 1448).  Never asserted; the machine is shared, so the load average is printed.

    python benchmarks/bench_loss.py [--megabytes N] [--rounds R] [--quick] [--loss 0.5 ...] [--offloads on]

With ``PYTHONPATH=/path/to/other/checkout`` the stack side runs another version's code (the
"before" figures of RESULTS.md were taken so) -- but not from a venv with this checkout installed
editable (``scripts/setup.sh``'s): setuptools' editable finder answers before ``PYTHONPATH`` does
(check ``trio_yastack.__file__``); use that checkout's own venv, or drop the finder from
``sys.meta_path`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _common import load_average, machine

from trio_yastack import open_stack
from trio_yastack.nic import Port, PortWrapper
from trio_yastack.nic.kernel_peer import pattern_block
from trio_yastack.nic.netns import NetworkNamespace, tap_in_netns
from trio_yastack.stack import TcpConfig

RESULTS = Path(__file__).parent / "results"
PORT = 5301
MSS = 1448
TABLE = "yas_loss"
#: the stack's counters reported per run (``get``: a version without them reports 0)
STACK_COUNTERS = (
    "retransmitted_segments",
    "recovery_episodes",
    "rack_retransmits",
    "tlp_probes",
    "recovery_probes",
    "tlp_loss_recoveries",
    "lost_retransmits",
    "spurious_rto_undos",
)

#: the kernel's sender: connect, TCP_CONGESTION, send the pattern, print what TCP_INFO says
KERNEL_SENDER = r"""
import json, socket, struct, sys, time
from trio_yastack.nic import Port, PortWrapper
from trio_yastack.nic.kernel_peer import pattern_block
host, port, nbytes, cc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
s.connect((host, port))
started = time.monotonic(); sent = index = 0
while sent < nbytes:
    block = pattern_block(index)[: nbytes - sent]; index += 1
    s.sendall(block); sent += len(block)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
print(json.dumps({"bytes": sent, "seconds": time.monotonic() - started,
                  "lost": struct.unpack_from("I", raw, 32)[0],
                  "total_retrans": struct.unpack_from("I", raw, 100)[0]}))
"""


#: the kernel's receiver: accept one connection and count what arrives, as the stack's receiver
#: in :func:`kernel_sends` does -- not ``kernel_peer recv``, which hashes every byte (SHA-256,
#: 350-700 MB/s here: about the rate measured, on one of the two cores the sender needs)
KERNEL_RECEIVER = r"""
import json, socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(1)
listener.settimeout(300)
print(json.dumps({"listening": int(sys.argv[1])}), flush=True)
conn, _ = listener.accept()
conn.settimeout(300)
buffer = bytearray(1 << 20)
received = 0
while count := conn.recv_into(buffer):
    received += count
conn.close()
print(json.dumps({"bytes": received}))
"""


class RxLoss(PortWrapper):
    """Loses ``per_mille``/1000 of the frames the kernel sent, as they arrive (seeded)."""

    def __init__(self, inner: Port, per_mille: int, seed: int = 19) -> None:
        super().__init__(inner)
        self.per_mille = per_mille
        self.rng = random.Random(seed)
        self.dropped_bytes = 0

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        kept = []
        for frame in self.inner.rx_burst(queue, max_n):
            if self.rng.randrange(1000) < self.per_mille:
                self.dropped_bytes += len(frame) - 66  # payload, roughly: less Ethernet/IP/TCP+TS
            else:
                kept.append(frame)
        return kept


def nft(namespace: NetworkNamespace, *args: str, check: bool = True) -> str:
    return namespace.run(["nft", *args], check=check, capture_output=True, text=True).stdout


def add_loss(namespace: NetworkNamespace, per_mille: int) -> None:
    """nft drops ``per_mille``/1000 of what the stack sends (the TAP's kernel-side ingress)."""
    nft(namespace, "add", "table", "netdev", TABLE)
    for hook in ("ingress",):
        nft(namespace, "add", "chain", "netdev", TABLE, hook,
            f"{{ type filter hook {hook} device yas0 priority 0 ; }}")  # fmt: skip
        nft(namespace, "add", "rule", "netdev", TABLE, hook, "numgen", "random", "mod", "1000", "<",
            str(per_mille), "counter", "drop")  # fmt: skip


def dropped_bytes(namespace: NetworkNamespace) -> dict[str, int]:
    """Bytes nft dropped per hook (ingress: the stack's frames)."""
    out: dict[str, int] = {}
    hook = ""
    for line in nft(namespace, "list", "table", "netdev", TABLE).splitlines():
        words = line.split()
        if "chain" in words:
            hook = words[1]
        if "bytes" in words:
            out[hook] = int(words[words.index("bytes") + 1])
    return out


def kernel_timeouts(namespace: NetworkNamespace) -> int:
    out = namespace.run(["nstat", "-az", "TcpExtTCPTimeouts"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("TcpExtTCPTimeouts"):
            return int(line.split()[1])
    return 0


def stack_sends(per_mille: int, offloads: bool, nbytes: int, cc: str) -> dict[str, Any]:
    """Our sender (``cc``) to a kernel receiver over the lossy TAP."""
    with NetworkNamespace("yasl") as namespace, tap_in_netns(namespace, offloads=offloads) as port:
        add_loss(namespace, per_mille)
        receiver = namespace.popen(
            [sys.executable, "-c", KERNEL_RECEIVER, str(PORT)], stdout=subprocess.PIPE, text=True
        )

        lossy = RxLoss(port, per_mille)

        async def main() -> dict[str, Any]:
            async with open_stack(lossy, ip="198.18.0.2/24", tcp=TcpConfig(congestion_control=cc)) as stack:
                assert receiver.stdout is not None
                await trio.to_thread.run_sync(receiver.stdout.readline)
                sock = trio.socket.socket()
                await sock.connect(("198.18.0.1", PORT))
                started = time.monotonic()
                cpu_started = time.process_time()
                sent = index = 0
                while sent < nbytes:
                    view = memoryview(pattern_block(index))[: nbytes - sent]
                    index += 1
                    sent += len(view)
                    while view:
                        view = view[await sock.send(view) :]
                sock.shutdown(trio.socket.SHUT_WR)
                while await sock.recv(65536):
                    pass
                elapsed = time.monotonic() - started
                cpu = time.process_time() - cpu_started
                sock.close()
                statistics = stack.statistics()
                tcp = statistics.tcp.counters
                frames = statistics.ether.counters["sent"]  # TSO frames count once (what writev took)
                out, _ = await trio.to_thread.run_sync(lambda: receiver.communicate(timeout=300))
                result = json.loads(out.strip().splitlines()[-1])
                if result["bytes"] != nbytes:
                    raise RuntimeError(f"the kernel received {result['bytes']} of {nbytes} bytes")
                lost = dropped_bytes(namespace).get("ingress", 0) / MSS
                return {
                    "mbit_per_s": nbytes * 8 / elapsed / 1e6,
                    # our process's CPU (user + system) per GB sent: steadier than the rate on a
                    # shared machine, where the rate also says how much CPU the others left us
                    "cpu_s_per_gb": cpu / (nbytes / 1e9),
                    # frames we sent (data, retransmissions, ACKs) per MB: each costs a frame's
                    # whole path on both sides, so fewer, larger TSO frames are less CPU per GB
                    "frames_per_mb": frames / (nbytes / 1e6),
                    "timeouts": tcp["rto_timeouts"],
                    "lost_segments": round(lost, 1),
                    "timeouts_per_1000_lost": 1000 * tcp["rto_timeouts"] / max(lost, 1),
                    "counters": {name: tcp.get(name, 0) for name in STACK_COUNTERS},
                }

        return trio.run(main)


def kernel_sends(per_mille: int, offloads: bool, nbytes: int, cc: str) -> dict[str, Any]:
    """The kernel's sender (``TCP_CONGESTION`` = ``cc``) to a stack receiver over the lossy TAP."""
    with NetworkNamespace("yasl") as namespace, tap_in_netns(namespace, offloads=offloads) as port:
        add_loss(namespace, per_mille)

        lossy = RxLoss(port, per_mille)

        async def main() -> dict[str, Any]:
            async with open_stack(lossy, ip="198.18.0.2/24"):
                listener = trio.socket.socket()
                listener.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
                await listener.bind(("0.0.0.0", PORT))
                listener.listen(1)
                sender = namespace.popen(
                    [sys.executable, "-c", KERNEL_SENDER, "198.18.0.2", str(PORT), str(nbytes), cc],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                conn, _ = await listener.accept()
                received = 0
                while chunk := await conn.recv(1 << 20):
                    received += len(chunk)
                conn.close()
                out, _ = await trio.to_thread.run_sync(lambda: sender.communicate(timeout=300))
                result = json.loads(out.strip().splitlines()[-1])
                if received != nbytes:
                    raise RuntimeError(f"the stack received {received} of {nbytes} bytes")
                timeouts = kernel_timeouts(namespace)
                lost = lossy.dropped_bytes / MSS
                return {
                    "mbit_per_s": nbytes * 8 / result["seconds"] / 1e6,
                    "timeouts": timeouts,
                    "lost_segments": round(lost, 1),
                    "timeouts_per_1000_lost": 1000 * timeouts / max(lost, 1),
                    "counters": {"total_retrans": result["total_retrans"]},
                }

        return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 MB, one round")
    parser.add_argument("--loss", type=float, nargs="*", default=[0.5, 1.0, 3.0], help="percent")
    parser.add_argument("--kernel", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--offloads", choices=["both", "on", "off"], default="both", help="which offload setting(s) to run"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "loss.json")
    args = parser.parse_args()
    nbytes = (4 if args.quick else args.megabytes) << 20
    rounds = 1 if args.quick else args.rounds
    available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    cases: list[tuple[str, str]] = [("stack", "cubic"), ("stack", "newreno")]
    if args.kernel:
        cases += [("kernel", cc) for cc in ("cubic", "reno", "bbr") if cc in available]
    results: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    loads = [load_average()]
    for percent in args.loss:
        for offloads in {"both": (True, False), "on": (True,), "off": (False,)}[args.offloads]:
            for side, cc in cases:
                key = f"{percent}% offloads-{'on' if offloads else 'off'} {side} {cc}"
                runs = []
                for _ in range(rounds):
                    run = stack_sends if side == "stack" else kernel_sends
                    runs.append(run(round(percent * 10), offloads, nbytes, cc))
                best = {
                    "mbit_per_s": statistics.median(r["mbit_per_s"] for r in runs),
                    "timeouts_per_1000_lost": statistics.median(r["timeouts_per_1000_lost"] for r in runs),
                    "runs": runs,
                }
                results[key] = best
                print(
                    f"{key:40s} {best['mbit_per_s']:8.1f} Mbit/s  timeouts/1000 lost "
                    f"{best['timeouts_per_1000_lost']:6.1f}  {runs[-1]['counters']}",
                    file=sys.stderr,
                    flush=True,
                )
                loads.append(load_average())
            if args.kernel:
                on = "on" if offloads else "off"
                for ours, theirs in (("cubic", "cubic"), ("newreno", "reno")):
                    a = results[f"{percent}% offloads-{on} stack {ours}"]["mbit_per_s"]
                    b = results[f"{percent}% offloads-{on} kernel {theirs}"]["mbit_per_s"]
                    ratios[f"{percent}% offloads-{on} {ours}"] = a / b
                    print(f"  ratio stack {ours} / kernel {theirs}: {a / b:.3f}", file=sys.stderr)
    document = {
        "benchmark": "bench_loss.py",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": loads,
        "bytes": nbytes,
        "rounds": rounds,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "results": results,
        "ratios": ratios,
    }
    print(json.dumps(document, indent=2))  # first on stdout: what run_all.py reads
    if not args.quick:
        args.output.parent.mkdir(exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"load average (1 min) over the run: {loads}", file=sys.stderr)


if __name__ == "__main__":
    main()
