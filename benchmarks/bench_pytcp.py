"""The Python peer: PyTCP against trio_yastack on the same TAP-in-namespace set-up.

Both stacks take 198.18.0.2 on TAP ``yas0`` in a private namespace whose kernel side is
198.18.0.1/24, and the same kernel-side clients measure them:

- ping flood: ``ping -f -c N 198.18.0.2`` (replies per second, all must come back);
- TCP echo: ``kernel_peer echo-clients 198.18.0.2 7 1 NBYTES`` (Mbit/s each way, verified by
  SHA-256).

Ours runs in this process (the stack answers pings itself; a ``trio.serve_tcp`` echo handler);
PyTCP runs as its own process, ``benchmarks/pytcp_peer.py``, under the interpreter of a separate
venv, ``benchmarks/.pytcp-venv`` (made here with ``pip install pytcp==2.7.6`` on first use: PyTCP
is GPL-3 and never imported by trio_yastack).  Rounds alternate ours and PyTCP.

    python benchmarks/bench_pytcp.py [--pings N] [--echo-bytes N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _common import machine, spread

from trio_yastack import open_stack
from trio_yastack.nic.netns import NetworkNamespace, netns_unavailable_reason, tap_in_netns

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PYTCP_VENV = HERE / ".pytcp-venv"
PYTCP_VERSION = "2.7.6"


def pytcp_python() -> Path:
    """The bench venv's interpreter, with PyTCP installed (made on first use)."""
    python = PYTCP_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PYTCP_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import pytcp"], capture_output=True)
    if probe.returncode:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"pytcp=={PYTCP_VERSION}"],
            check=True,
        )  # fmt: skip
    return python


def ping_flood(namespace: NetworkNamespace, count: int) -> float:
    out = namespace.run(["ping", "-f", "-q", "-c", str(count), "198.18.0.2"], timeout=120).stdout
    sent, received, millis = (
        int(x)
        for x in re.search(r"(\d+) packets transmitted, (\d+) received.*time (\d+)ms", out).groups()  # type: ignore[union-attr]
    )
    if received != sent:
        raise RuntimeError(f"ping flood lost replies: {out}")
    return received / (max(millis, 1) / 1000)


def echo(namespace: NetworkNamespace, nbytes: int) -> float:
    done = namespace.run(
        [sys.executable, "-m", "trio_yastack.nic.kernel_peer", "--timeout", "120", "echo-clients",
         "198.18.0.2", "7", "1", str(nbytes)],
        timeout=180,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["mismatched"]:
        raise RuntimeError(f"echo came back wrong: {result}")
    return nbytes * 8 / result["seconds"] / 1e6


async def _echo_handler(stream: trio.SocketStream) -> None:
    async for chunk in stream:
        await stream.send_all(chunk)


def run_ours(pings: int, nbytes: int) -> dict[str, float]:
    with NetworkNamespace("yasb") as namespace, tap_in_netns(namespace) as port:

        async def main() -> dict[str, float]:
            async with open_stack(port, ip="198.18.0.2/24"), trio.open_nursery() as nursery:
                await nursery.start(trio.serve_tcp, _echo_handler, 7)
                rate = await trio.to_thread.run_sync(ping_flood, namespace, pings)
                throughput = await trio.to_thread.run_sync(echo, namespace, nbytes)
                nursery.cancel_scope.cancel()
            return {"ping_per_s": rate, "echo_mbit_per_s": throughput}

        return trio.run(main)


def run_pytcp(python: Path, pings: int, nbytes: int) -> dict[str, float]:
    with NetworkNamespace("yasb") as namespace:
        for command in (
            ["ip", "tuntap", "add", "dev", "yas0", "mode", "tap"],
            ["ip", "addr", "add", "198.18.0.1/24", "dev", "yas0"],
            ["ip", "link", "set", "yas0", "up"],
        ):
            namespace.run(command, check=True)
        peer = namespace.popen(
            [str(python), str(HERE / "pytcp_peer.py"), "--tap", "yas0", "--ip", "198.18.0.2/24"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert peer.stdout is not None
        if peer.stdout.readline().strip() != "READY":
            raise RuntimeError("PyTCP did not start")
        return {"ping_per_s": ping_flood(namespace, pings), "echo_mbit_per_s": echo(namespace, nbytes)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pings", type=int, default=5000)
    parser.add_argument("--echo-bytes", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small counts, 1 round (CI smoke)")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"bench_pytcp: cannot make network namespaces here: {reason}")
    pings, nbytes, rounds = (500, 200_000, 1) if args.quick else (args.pings, args.echo_bytes, args.rounds)
    python = pytcp_python()
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "pytcp": []}
    for _ in range(rounds):
        runs["ours"].append(run_ours(pings, nbytes))
        runs["pytcp"].append(run_pytcp(python, pings, nbytes))
    summary: dict[str, Any] = {
        side: {key: spread(r[key] for r in rs) for key in rs[0]} for side, rs in runs.items()
    }
    result = {
        "benchmark": "pytcp",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "pytcp_version": PYTCP_VERSION,
        "pings": pings,
        "echo_bytes": nbytes,
        "rounds": rounds,
        **summary,
        "ratio_ping": summary["ours"]["ping_per_s"]["median"] / summary["pytcp"]["ping_per_s"]["median"],
        "ratio_echo": summary["ours"]["echo_mbit_per_s"]["median"]
        / summary["pytcp"]["echo_mbit_per_s"]["median"],
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "pytcp.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
