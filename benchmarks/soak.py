"""The reliability soak (issue 22): the stack against the Linux kernel as its peer, under faults and load.

Every case runs in network namespaces it makes (198.18.0.0/15 only), every load is bounded in count
and in time, and only the processes started here are ended (by PID).  Each case gives one row:
what was offered, what was held, what was lost (must be nothing), the kernel's figure beside ours
where there is one.

- ``bulk``: a seeded bad path (nic/_faults.py, :data:`~trio_yastack.nic.SOAK_FAULTS`: 5 % loss, 1 %
  duplication, 5 % reordering, 0.1 % corruption, 20 ms ± 10 ms, each direction) between the stack
  and the TAP; ``NBYTES`` each way at once between the stack and the kernel's TCP, checked by
  SHA-256; the stack's retransmission and recovery counters beside the kernel's (``ss -ti``,
  ``TCP_INFO``, ``nstat``).  netem is used too where the kernel has it (this one does not: the row
  says so).
- ``synflood``: SYNs written on the TAP's kernel side (AF_PACKET, ``soak_clients.py synflood``) while
  ``LEGIT`` legitimate requests are made; the server (our lean ASGI server, in this process, so
  ``tracemalloc`` can say where memory goes) answers at least 99 %, its memory bounded, the SYN
  cookie counters shown.
- ``churn``: mixed keep-alive and ``Connection: close`` wrk load against ``yastack serve`` and against
  ``yastack proxy`` in intervals; the last interval's rate against the first's, RSS per interval
  (plotted: ``benchmarks/results/soak_rss.png``), and once the load stops the connections left in
  CLOSE_WAIT, FIN_WAIT_1/2, CLOSING or LAST_ACK on either side; TIME_WAIT entries and what one costs
  against the kernel's (``tw_sock_TCP`` in ``/proc/slabinfo``).
- ``idle``: 10 000 idle connections and 500 slowloris clients against serve and proxy while wrk runs
  (its rate against an unloaded run).
- ``hostile``: malformed Ethernet/ARP/IP/TCP/UDP/ICMP frames from the kernel side at a bounded rate
  while wrk runs: internal errors 0, every frame a counted drop or answered, wrk without errors.
- ``worker``: one worker of ``yastack serve --cores 2`` killed (SIGKILL) under load, and a stuck app
  handler: what is reported.

    python benchmarks/soak.py [--quick] [--cases bulk,synflood,...] [--bulk-bytes N] [--bulk-limit S]
                              [--minutes M] [--syn-budget N] [--output PATH]

``--quick`` is the CI's size (about a minute in all); ``make soak`` runs the full one (minutes).
Results: ``benchmarks/results/soak.json`` (and ``soak_quick.json``), the plot, and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import load_average, machine, parse_wrk, rss_bytes, stop_process, tail, wait_until  # noqa: E402

from trio_yastack import open_stack  # noqa: E402
from trio_yastack.nic import SOAK_FAULTS, FaultOptions, FaultPort  # noqa: E402
from trio_yastack.nic.kernel_peer import pattern_block  # noqa: E402
from trio_yastack.nic.netns import (  # noqa: E402
    KERNEL_ADDRESS,
    STACK_ADDRESS,
    NetworkNamespace,
    netns_unavailable_reason,
    tap_in_netns,
)

RESULTS = HERE / "results"
CLIENTS = str(HERE / "soak_clients.py")
APP = str(HERE / "soak_app.py") + ":app"
PORT = 8000
PROXY_PORT = 10000
BACKEND_PORT = 8001
BODY = "Hello, world!"
#: the TCP states that must be empty once the load stopped and the timers expired
LINGERING = ("CLOSE_WAIT", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK")
KERNEL_LINGERING = ("close-wait", "fin-wait-1", "fin-wait-2", "closing", "last-ack")
MiB = 1 << 20


class SoakFailure(RuntimeError):
    """A case that could not be measured (a server did not come up, a tool failed)."""


def log(message: str) -> None:
    print(f"# {datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


# -- the kernel side -------------------------------------------------------------------------------
def netem_available(namespace: NetworkNamespace) -> tuple[bool, str]:
    """Whether ``tc qdisc ... netem`` works here (on the namespace's loopback), and why not."""
    done = namespace.run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], timeout=10)
    if done.returncode == 0:
        namespace.run(["tc", "qdisc", "del", "dev", "lo", "root"], timeout=10)
        return True, "sch_netem present"
    return False, f"no sch_netem: tc answered {done.stderr.strip()!r}"


def nstat(namespace: NetworkNamespace, keys: tuple[str, ...]) -> dict[str, int]:
    done = namespace.run(["nstat", "-asz", "--json"], timeout=30)
    if done.returncode:
        return {}
    document = json.loads(done.stdout)
    counters = document.get("kernel", document)
    return {key: int(counters.get(key, 0)) for key in keys}


def kernel_states(namespace: NetworkNamespace) -> dict[str, int]:
    """The kernel's TCP sockets in ``namespace`` by state (``ss -Htan``)."""
    done = namespace.run(["ss", "-Htan"], timeout=30, check=True)
    states: dict[str, int] = {}
    for line in done.stdout.splitlines():
        if line.strip():
            state = line.split()[0].lower()
            states[state] = states.get(state, 0) + 1
    return states


def kernel_link_tx(namespace: NetworkNamespace, device: str = "yas0") -> dict[str, int]:
    """The kernel's transmit counters of ``device`` (``ip -s -j link``): on a TAP's kernel side,
    what it handed to the stack and what it dropped because the stack's queue was full."""
    done = namespace.run(["ip", "-s", "-j", "link", "show", device], timeout=10)
    if done.returncode:
        return {}
    tx = json.loads(done.stdout)[0].get("stats64", {}).get("tx", {})
    return {key: int(tx.get(key, 0)) for key in ("packets", "dropped")}


def tw_sock_bytes() -> int | None:
    """The kernel's slab object size of one TIME_WAIT socket (``tw_sock_TCP``), or None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/slabinfo").read_text().splitlines():
            if line.startswith("tw_sock_TCP "):
                return int(line.split()[3])
    return None


def clients(namespace: NetworkNamespace, *args: object, **popen: Any) -> subprocess.Popen[str]:
    """``soak_clients.py ARGS`` on the kernel side (stdout piped: one JSON line at the end)."""
    return namespace.popen(
        [sys.executable, CLIENTS, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def result_of(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise SoakFailure(f"{process.args!r} ran past {timeout} s: {err[-500:]}") from None
    if process.returncode:
        raise SoakFailure(f"{process.args!r} failed ({process.returncode}): {err[-1000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- 1. bulk under faults --------------------------------------------------------------------------
STACK_COUNTERS = (
    "retransmitted_segments",
    "retransmitted_bytes",
    "rto_timeouts",
    "fast_retransmits",
    "sack_recovery_episodes",
    "recovery_episodes",
    "rack_retransmits",
    "rto_retransmits",
    "tlp_probes",
    "tlp_retransmits",
    "tlp_loss_recoveries",
    "recovery_probes",
    "lost_retransmits",
    "spurious_rto_undos",
    "duplicate_acks",
    "out_of_order_segments",
    "duplicate_segments",
)
KERNEL_COUNTERS = (
    "TcpRetransSegs",
    "TcpExtTCPLostRetransmit",
    "TcpExtTCPFastRetrans",
    "TcpExtTCPSlowStartRetrans",
    "TcpExtTCPTimeouts",
    "TcpExtTCPSackRecovery",
    "TcpExtTCPLossProbes",
    "TcpExtTCPOFOQueue",
    "TcpExtTCPDSACKRecv",
    "TcpExtTCPDSACKOldSent",
    "TcpInCsumErrors",
    "IpExtInCsumErrors",
    "IpInHdrErrors",
)


class PatternCheck:
    """Checks a received stream against the test pattern as it arrives (``pattern_block``), so a
    run cut short by its time limit still says how many bytes came through intact, not only
    whether the whole stream's SHA-256 matched."""

    def __init__(self) -> None:
        self.verified = 0  # bytes that matched the pattern, from the start of the stream
        self.mismatch_at: int | None = None  # the offset of the first byte that did not
        self._block = pattern_block(0)
        self._index = 0
        self._offset = 0  # within self._block

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view and self.mismatch_at is None:
            take = min(len(view), len(self._block) - self._offset)
            want = self._block[self._offset : self._offset + take]
            if view[:take] != want:
                self.mismatch_at = self.verified + next(i for i in range(take) if view[i] != want[i])
                return
            self.verified += take
            self._offset += take
            view = view[take:]
            if self._offset == len(self._block):
                self._index += 1
                self._block, self._offset = pattern_block(self._index), 0


def bulk(
    nbytes: int,
    faults: FaultOptions,
    time_limit: float,
    *,
    netem_too: bool = True,
    progress_every: float = 60.0,
) -> dict[str, Any]:
    """``nbytes`` each way at once through the faulty TAP, both directions checked by SHA-256;
    where the kernel has netem (and ``netem_too``), netem on the TAP's kernel side as well.

    A run that reaches ``time_limit`` still gives a row: the bytes each side moved and verified
    so far (the kernel's ACKs for ours, the pattern check for the kernel's), marked ``timed_out``;
    a progress line goes to stderr every ``progress_every`` seconds."""
    with NetworkNamespace("yass") as namespace, tap_in_netns(namespace) as tap:
        netem, why = netem_available(namespace)
        if netem and netem_too:
            netem_args = ["tc", "qdisc", "add", "dev", "yas0", "root", "netem", "loss", "1%", "delay", "5ms"]
            namespace.run(netem_args, check=True)
            why += "; netem loss 1% delay 5ms on yas0's kernel side as well"
        port = FaultPort(tap, faults)
        before = nstat(namespace, KERNEL_COUNTERS)
        # the kernel's peers outlive our limit by a margin: we end them (by PID) if we give up first
        peer_limit = str(time_limit + 120)
        peer = [sys.executable, "-m", "trio_yastack.nic.kernel_peer", "--timeout", peer_limit]
        receiver = namespace.popen([*peer, "recv", "5001"], stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None
        if "listening" not in receiver.stdout.readline():
            raise SoakFailure("the kernel's receiver did not start")
        ss_lines: list[str] = []
        ss_last: list[str] = []  # the latest progress sample (the kernel's bytes_acked/received)
        outcome: dict[str, Any] = {"timed_out": False}
        check = PatternCheck()
        progress: dict[str, Any] = {"stack_to_kernel_acked": 0, "kernel_to_stack_received": 0}
        sender: subprocess.Popen[str] | None = None

        async def main() -> None:
            nonlocal sender
            async with open_stack(port, ip=f"{STACK_ADDRESS}/24", seed=22) as stack:
                listener = stack.tcp_listen(5002)
                sender = namespace.popen(
                    [*peer, "send", STACK_ADDRESS, "5002", str(nbytes)], stdout=subprocess.PIPE, text=True
                )
                started = trio.current_time()
                sending: list[Any] = []

                async def send_to_kernel() -> None:
                    stream = await stack.tcp_connect(KERNEL_ADDRESS, 5001)
                    sending.append(stream)
                    digest = hashlib.sha256()
                    sent = index = 0
                    while sent < nbytes:
                        block = pattern_block(index)[: nbytes - sent]
                        await stream.send_all(block)
                        digest.update(block)
                        sent += len(block)
                        index += 1
                    await stream.send_eof()
                    while await stream.receive_some(65536):
                        pass
                    await stream.aclose()
                    progress["stack_to_kernel_acked"] = nbytes
                    outcome["stack_to_kernel_sha256_sent"] = digest.hexdigest()
                    outcome["stack_to_kernel_seconds"] = trio.current_time() - started

                async def receive_from_kernel() -> None:
                    stream = await listener.accept()
                    digest = hashlib.sha256()
                    got = 0
                    while data := await stream.receive_some(1 << 18):
                        digest.update(data)
                        check.update(data)
                        got += len(data)
                        progress["kernel_to_stack_received"] = got
                    await stream.aclose()
                    outcome["kernel_to_stack_bytes"] = got
                    outcome["kernel_to_stack_sha256_received"] = digest.hexdigest()
                    outcome["kernel_to_stack_seconds"] = trio.current_time() - started

                def acked() -> int:
                    # what the kernel has acknowledged of our stream: it holds those bytes in order
                    conn = sending[0].socket.connection if sending else None
                    if conn is None:
                        return int(progress["stack_to_kernel_acked"])
                    return max(0, min(nbytes, conn.snd_una - conn.iss - 1))

                async def sample_ss() -> None:
                    await trio.sleep(min(5.0, time_limit / 4))
                    done = await trio.to_thread.run_sync(
                        lambda: namespace.run(["ss", "-tin", "state", "established"], timeout=30)
                    )
                    ss_lines.append(done.stdout)

                async def report_progress() -> None:
                    while True:
                        await trio.sleep(progress_every)
                        if "stack_to_kernel_seconds" not in outcome:
                            progress["stack_to_kernel_acked"] = acked()
                        elapsed = trio.current_time() - started
                        done = await trio.to_thread.run_sync(
                            lambda: namespace.run(["ss", "-tin", "state", "established"], timeout=30)
                        )
                        ss_last[:] = done.stdout.strip().splitlines()[:6]
                        up, down = progress["stack_to_kernel_acked"], progress["kernel_to_stack_received"]
                        log(
                            f"bulk: {elapsed:.0f} s: stack -> kernel {up / MiB:.1f} MiB acked,"
                            f" kernel -> stack {down / MiB:.1f} MiB received"
                            f" ({check.verified / MiB:.1f} verified) of {nbytes / MiB:.0f} MiB each"
                        )

                async with trio.open_nursery() as outer:
                    outer.start_soon(report_progress)
                    try:
                        with trio.fail_after(time_limit):
                            async with trio.open_nursery() as nursery:
                                nursery.start_soon(send_to_kernel)
                                nursery.start_soon(receive_from_kernel)
                                nursery.start_soon(sample_ss)
                    except trio.TooSlowError:
                        outcome["timed_out"] = True
                        progress["stack_to_kernel_acked"] = acked()
                    outer.cancel_scope.cancel()
                outcome["elapsed_s"] = trio.current_time() - started
                if not outcome["timed_out"]:
                    sent_result = await trio.to_thread.run_sync(lambda: sender.communicate(timeout=60)[0])
                    outcome["peer_send"] = json.loads(sent_result.strip().splitlines()[-1])
                outcome["stack"] = dict(stack.statistics().tcp.counters)
                outcome["stack_drops"] = {
                    layer: dict(getattr(stack.statistics(), layer).dropped)
                    for layer in ("ether", "ip", "tcp")
                }
                outcome["internal_errors"] = stack.runtime_statistics().get("internal_errors", 0)

        try:
            trio.run(main)
        finally:
            if outcome["timed_out"] or sys.exc_info()[0] is not None:
                for process in (receiver, sender):  # ours, ended by PID
                    if process is not None and process.poll() is None:
                        process.kill()
        out, _ = receiver.communicate(timeout=60)
        lines = out.strip().splitlines()
        peer_recv = json.loads(lines[-1]) if lines and not outcome["timed_out"] else {}
        after = nstat(namespace, KERNEL_COUNTERS)
    faults_done = {k: vars_of(v) for k, v in port.fault_statistics().items()}
    timed_out = bool(outcome["timed_out"])
    intact_up = (
        not timed_out
        and peer_recv.get("sha256") == outcome["stack_to_kernel_sha256_sent"]
        and peer_recv.get("bytes") == nbytes
    )
    intact_down = (
        not timed_out
        and outcome["kernel_to_stack_sha256_received"] == outcome["peer_send"]["sha256"]
        and outcome["kernel_to_stack_bytes"] == nbytes
    )
    stack = outcome["stack"]
    up_s = outcome.get("stack_to_kernel_seconds", outcome["elapsed_s"])
    down_s = outcome.get("kernel_to_stack_seconds", outcome["elapsed_s"])
    up_bytes = nbytes if "stack_to_kernel_seconds" in outcome else progress["stack_to_kernel_acked"]
    down_bytes = check.verified
    if timed_out:  # nothing lost so far unless the part that came through was not the pattern
        lost = 0 if check.mismatch_at is None else progress["kernel_to_stack_received"] - check.mismatch_at
    else:
        lost = (0 if intact_up else nbytes) + (0 if intact_down else nbytes)
    return {
        "case": "bulk",
        "offered": f"{nbytes / MiB:.0f} MiB each way at once, faults {fault_words(faults)}",
        "held": {
            "stack_to_kernel_intact": intact_up,
            "kernel_to_stack_intact": intact_down,
            "stack_to_kernel_mbit_s": round(up_bytes * 8 / up_s / 1e6, 2),
            "kernel_to_stack_mbit_s": round(down_bytes * 8 / down_s / 1e6, 2),
        },
        # a run cut short: how far each way got, and that what came through was intact
        "timed_out": timed_out,
        "time_limit_s": time_limit,
        "progress": {
            "stack_to_kernel_acked_by_kernel": up_bytes,
            "kernel_to_stack_received": progress["kernel_to_stack_received"],
            "kernel_to_stack_verified_by_pattern": check.verified,
            "kernel_to_stack_first_mismatch_at": check.mismatch_at,
        },
        "lost": lost,
        "ours": {key: stack.get(key, 0) for key in STACK_COUNTERS}
        | {"internal_errors": outcome["internal_errors"]},
        "ours_drops": outcome["stack_drops"],
        "peer": {
            "tcp_info_send": outcome.get("peer_send", {}).get("tcp_info"),
            "tcp_info_recv": peer_recv.get("tcp_info"),
            "nstat_delta": {key: after.get(key, 0) - before.get(key, 0) for key in KERNEL_COUNTERS},
            "ss_ti": ss_lines[0].strip().splitlines()[:6] if ss_lines else [],
            "ss_ti_last_progress": ss_last,
        },
        "path": faults_done,
        "netem": why,
        "netem_used": netem and netem_too,
        "ok": intact_up and intact_down and outcome["internal_errors"] == 0,
    }


def own_rss() -> int:
    """This process's resident memory alone (``rss_bytes`` would add the kernel-side clients,
    which are its children)."""
    found = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def vars_of(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def fault_words(options: FaultOptions) -> str:
    return (
        f"loss {options.loss:.1%}, dup {options.duplicate:.1%}, reorder {options.reorder:.1%}, "
        f"corrupt {options.corrupt:.1%}, delay {options.delay * 1e3:.0f}±{options.jitter * 1e3:.0f} ms"
    )


# -- 2. SYN flood ------------------------------------------------------------------------------------
def synflood(
    flood: int, seconds: float, legit: int, *, trace_memory: bool, syn_budget: int | None = None
) -> dict[str, Any]:
    """Our lean server on the stack in this process; the flood and the legitimate clients on the
    kernel side at once.  ``trace_memory``: tracemalloc in this process, its top growth reported.
    ``syn_budget``: the stack's ``syncookie_burst_budget`` (None: its default; a huge one turns
    the shedding of SYNs off, for a side-by-side run)."""
    from trio_yastack.l7.asgi import ServerConfig, serve_asgi
    from trio_yastack.stack import TcpConfig
    from trio_yastack.stack.tcp import TcpState

    sys.path.insert(0, str(HERE))
    from soak_app import app  # the same app yastack serve runs in the other cases

    samples: list[tuple[float, int]] = []
    outcome: dict[str, Any] = {}
    tcp_config = {} if syn_budget is None else {"tcp": TcpConfig(syncookie_burst_budget=syn_budget)}
    with NetworkNamespace("yass") as namespace, tap_in_netns(namespace) as tap:

        async def main() -> None:
            async with (
                open_stack(tap, ip=f"{STACK_ADDRESS}/24", seed=22, **tcp_config) as stack,
                trio.open_nursery() as nursery,
            ):
                await nursery.start(
                    lambda task_status: serve_asgi(
                        app, ServerConfig(bind=(f"0.0.0.0:{PORT}",)), stack=stack, task_status=task_status
                    )
                )
                warm = await trio.to_thread.run_sync(
                    lambda: namespace.run(["curl", "-sS", "-m", "5", f"http://{STACK_ADDRESS}:{PORT}/"])
                )
                if warm.stdout != BODY:
                    raise SoakFailure(f"the server did not answer: {warm.stderr}")
                mac = str(stack.mac)
                gc.collect()
                if trace_memory:
                    tracemalloc.start(1)  # one frame: deep tracebacks slow the server several-fold
                base_snapshot = tracemalloc.take_snapshot() if trace_memory else None
                rss_before = own_rss()
                before = dict(stack.statistics().tcp.counters)
                runtime_before = stack.runtime_statistics()
                cpu_before = resource.getrusage(resource.RUSAGE_SELF)
                link_before = await trio.to_thread.run_sync(lambda: kernel_link_tx(namespace))
                flooder = clients(namespace, "synflood", "yas0", mac, STACK_ADDRESS, PORT, flood, seconds)
                await trio.sleep(0.3)  # the flood first, then the legitimate clients into it
                legit_clients = clients(namespace, "get", STACK_ADDRESS, PORT, legit, 50, "--timeout", 15)
                start = trio.current_time()

                async def sample() -> None:
                    while True:
                        samples.append((trio.current_time() - start, own_rss()))
                        await trio.sleep(0.5)

                nursery.start_soon(sample)
                outcome["flood"] = await trio.to_thread.run_sync(lambda: result_of(flooder, seconds + 60))
                outcome["legit"] = await trio.to_thread.run_sync(lambda: result_of(legit_clients, 300))
                outcome["rss_before"] = rss_before
                outcome["rss_peak"] = max(r for _, r in samples)
                if trace_memory and base_snapshot is not None:
                    diffs = tracemalloc.take_snapshot().compare_to(base_snapshot, "lineno")
                    outcome["traced_growth"] = sum(stat.size_diff for stat in diffs)
                    top = diffs[:8]
                    outcome["tracemalloc_top"] = [
                        f"{stat.size_diff / 1e6:+.2f} MB {stat.count_diff:+d} blocks "
                        f"{stat.traceback[0].filename.split('site-packages/')[-1].split('/work/')[-1]}"
                        f":{stat.traceback[0].lineno}"
                        for stat in top
                    ]
                    outcome["traced_peak"] = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                after = dict(stack.statistics().tcp.counters)
                link_after = await trio.to_thread.run_sync(lambda: kernel_link_tx(namespace))
                # the TAP's kernel side: what it handed to us and what it dropped (its queue full)
                outcome["kernel_tap_tx"] = {
                    k: link_after.get(k, 0) - link_before.get(k, 0) for k in link_after
                }
                runtime_after = stack.runtime_statistics()
                cpu_after = resource.getrusage(resource.RUSAGE_SELF)
                # the CPU this process (the stack and the server) had: frames per CPU-second is
                # the stack's efficiency, which the machine's load does not blur
                outcome["cpu_s"] = (cpu_after.ru_utime - cpu_before.ru_utime) + (
                    cpu_after.ru_stime - cpu_before.ru_stime
                )
                outcome["runtime"] = {
                    k: runtime_after[k] - runtime_before.get(k, 0)
                    for k in ("bursts", "frames_in", "frames_out")
                }
                outcome["tcp"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                outcome["tcp_drops"] = dict(stack.statistics().tcp.dropped)
                outcome["states"] = {}
                for conn in stack.core.tcp.connections.values():
                    name = TcpState(conn.state).name
                    outcome["states"][name] = outcome["states"].get(name, 0) + 1
                outcome["internal_errors"] = stack.runtime_statistics().get("internal_errors", 0)
                nursery.cancel_scope.cancel()

        trio.run(main)
    flood_result, legit_result, tcp = outcome["flood"], outcome["legit"], outcome["tcp"]
    ok_share = legit_result["ok"] / legit_result["offered"]
    return {
        "case": "synflood",
        "offered": f"{flood_result['sent']} SYNs in {flood_result['seconds']} s ({flood_result['rate']}/s) "
        f"+ {legit_result['offered']} legitimate GETs (50 at a time)",
        "held": {
            "legit_ok": legit_result["ok"],
            "legit_ok_share": round(ok_share, 4),
            "legit_seconds": legit_result["seconds"],
            "rss_mb_before_peak": [
                round(outcome["rss_before"] / MiB, 1),
                round(outcome["rss_peak"] / MiB, 1),
            ],
        },
        "lost": legit_result["offered"] - legit_result["ok"],
        "lost_detail": legit_result["failed"],
        "ours": {
            k: tcp.get(k, 0)
            for k in (
                "syncookies_sent",
                "syncookies_valid",
                "syncookies_failed",
                "passive_opens",
                "resets_received",
                "resets_sent",
                "connections_accepted",
            )
        }
        | {"syn_shed": outcome["tcp_drops"].get("syn_shed", 0), "syncookie_burst_budget": syn_budget}
        | {"internal_errors": outcome["internal_errors"], "states_after": outcome["states"]},
        "ours_drops": outcome["tcp_drops"],
        "runtime": outcome["runtime"]
        | {
            "cpu_s": round(outcome["cpu_s"], 2),
            # every frame the port gave us, the SYNs shed before the layers included
            "frames_taken_per_cpu_s": round(
                outcome["kernel_tap_tx"].get("packets", 0) / max(outcome["cpu_s"], 1e-3)
            ),
        },
        "kernel_tap_tx": outcome["kernel_tap_tx"],
        "tracemalloc_top": outcome.get("tracemalloc_top", []),
        "traced_peak_mb": round(outcome.get("traced_peak", 0) / MiB, 1),
        # what the run left traced, over the connections it left (nearly all in TIME_WAIT)
        "traced_bytes_per_connection_left": round(
            outcome["traced_growth"] / max(1, sum(outcome["states"].values()))
        )
        if "traced_growth" in outcome
        else None,
        "rss_curve": samples,
        "ok": ok_share >= 0.99 and outcome["internal_errors"] == 0,
    }


# -- servers under load (yastack serve / yastack proxy in a namespace) -------------------------------
class Server:
    """``yastack serve`` (or ``yastack proxy`` in front of a kernel-socket backend) on TAP yas0 in a
    namespace of its own, with its control channel; ended by PID at the end."""

    def __init__(self, namespace: NetworkNamespace, tmp: Path, kind: str, cores: int = 1) -> None:
        self.namespace, self.tmp, self.kind = namespace, tmp, kind
        self.control = tmp / "control"
        self.control.mkdir(exist_ok=True)
        self.log = tmp / f"{kind}.log"
        self.backend: subprocess.Popen[bytes] | None = None
        if kind == "serve":
            argv = [
                sys.executable,
                "-m",
                "trio_yastack",
                "serve",
                APP,
                "--nic",
                "tap:yas0",
                "--bind",
                str(PORT),
                "--cores",
                str(cores),
                "--control",
                str(self.control),
                "--graceful-timeout",
                "2",
            ]
            self.url = f"http://{STACK_ADDRESS}:{PORT}/"
        else:
            from bench_proxy import ours_config

            config = ours_config(STACK_ADDRESS, KERNEL_ADDRESS)
            listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
            listener["port_value"] = PROXY_PORT
            cluster = config["static_resources"]["clusters"][0]
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"
            ]["port_value"] = BACKEND_PORT
            (tmp / "proxy.json").write_text(json.dumps(config))
            with (tmp / "backend.log").open("wb") as out:
                self.backend = namespace.popen(
                    [
                        sys.executable,
                        "-m",
                        "trio_yastack",
                        "serve",
                        APP,
                        "--kernel",
                        "--bind",
                        # any address: 198.18.0.1 exists only once the proxy has made the TAP
                        f"0.0.0.0:{BACKEND_PORT}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            argv = [
                sys.executable,
                "-m",
                "trio_yastack",
                "proxy",
                "-c",
                str(tmp / "proxy.json"),
                "--nic",
                "tap:yas0",
                "--ip",
                f"{STACK_ADDRESS}/24",
                "--drain-time",
                "1",
                "--control",
                str(self.control),
            ]
            self.url = f"http://{STACK_ADDRESS}:{PROXY_PORT}/"
        with self.log.open("wb") as out:
            self.process = namespace.popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        if not wait_until(
            lambda: self.process.poll() is not None or self.get() == BODY, timeout=90, interval=0.5
        ):
            raise SoakFailure(f"{kind} did not come up:\n{tail(self.log)}")
        if self.process.poll() is not None:
            raise SoakFailure(f"{kind} exited {self.process.returncode}:\n{tail(self.log)}")

    def get(self, path: str = "") -> str:
        done = self.namespace.run(["curl", "-sS", "-m", "3", self.url + path], timeout=15)
        return done.stdout if done.returncode == 0 else ""

    def stat(self) -> list[dict[str, Any]]:
        """Every core's ``yastack stat --json`` snapshot."""
        done = self.namespace.run(
            [sys.executable, "-m", "trio_yastack", "stat", "--json", "--control", str(self.control)],
            timeout=60,
        )
        if done.returncode:
            raise SoakFailure(f"yastack stat failed: {done.stderr.strip()[-500:]}")
        return list(json.loads(done.stdout)["cores"])

    def states(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for core in self.stat():
            for name, count in core["tcp"]["states"].items():
                states[name] = states.get(name, 0) + count
        return states

    def wrk(
        self, seconds: float, connections: int, *, close: bool = False, threads: int = 1
    ) -> subprocess.Popen[str]:
        args = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
            self.url,
        ]
        if close:
            args[1:1] = ["-H", "Connection: close"]
        return self.namespace.popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> int:
        code = stop_process(self.process)
        if self.backend is not None:
            stop_process(self.backend)
        return code


def wrk_result(process: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    out, _ = process.communicate(timeout=timeout)
    try:
        return parse_wrk(out)
    except ValueError as exc:
        raise SoakFailure(str(exc)) from None


@contextlib.contextmanager
def server_in_namespace(kind: str, cores: int = 1) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="soak.") as tmp, NetworkNamespace("yass") as namespace:
        for knob in ("net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000"):
            namespace.run(["sysctl", "-q", "-w", knob], check=True)
        server = Server(namespace, Path(tmp), kind, cores)
        try:
            yield server
        finally:
            code = server.stop()
            log(f"{kind} stopped ({code})")


def summed(cores: list[dict[str, Any]], layer: str, part: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for core in cores:
        for key, value in core["stack"][layer][part].items():
            total[key] = total.get(key, 0) + value
    return total


# -- 3. churn ------------------------------------------------------------------------------------------
def churn(kind: str, minutes: float, interval: float, settle: float) -> dict[str, Any]:
    """Mixed keep-alive and Connection: close wrk load in ``interval``-second steps."""
    steps = max(2, round(minutes * 60 / interval))
    rates: list[float] = []
    errors = 0
    rss: list[tuple[float, int]] = []
    with server_in_namespace(kind) as server:
        start = time.monotonic()
        rss.append((0.0, rss_bytes(server.process.pid)))
        for _ in range(steps):
            keep = server.wrk(interval, 25)
            close = server.wrk(interval, 25, close=True)
            runs = [wrk_result(keep, interval + 60), wrk_result(close, interval + 60)]
            rates.append(sum(r["requests_per_s"] for r in runs))
            errors += sum(int(r["socket_errors"] + r["non_2xx"]) for r in runs)
            rss.append((time.monotonic() - start, rss_bytes(server.process.pid)))
            if server.process.poll() is not None:
                raise SoakFailure(f"{kind} died under load:\n{tail(server.log)}")
        load_end = server.states()
        rss_end = rss_bytes(server.process.pid)
        left: dict[str, Any] = {}

        def settled() -> bool:
            states = server.states()
            kernel = kernel_states(server.namespace)
            left["stack"] = {s: states.get(s, 0) for s in LINGERING if states.get(s, 0)}
            left["kernel"] = {s: kernel.get(s, 0) for s in KERNEL_LINGERING if kernel.get(s, 0)}
            left["stack_time_wait"] = states.get("TIME_WAIT", 0)
            return not left["stack"] and not left["kernel"]

        wait_until(settled, timeout=settle, interval=1.0)
        time_wait_at_end = load_end.get("TIME_WAIT", 0)
        per_entry = None
        if settle >= 65 and time_wait_at_end > 1000:  # the stack's TIME_WAIT is 2MSL = 60 s: all gone now
            gone = time_wait_at_end - left["stack_time_wait"]
            per_entry = round((rss_end - rss_bytes(server.process.pid)) / gone) if gone else None
    # the first minute's mean rate against the last minute's (one step each when the run is shorter)
    window = max(1, min(len(rates) // 2, round(60 / interval)))
    first, last = sum(rates[:window]) / window, sum(rates[-window:]) / window
    return {
        "case": f"churn_{kind}",
        "offered": f"{steps} x {interval:.0f} s of wrk -c25 keep-alive + wrk -c25 Connection: close",
        "held": {
            "req_s_first_last_minute": [round(first), round(last)],
            "last_vs_first": round(last / first, 3) if first else 0.0,
            "rss_mb_start_end_max": [
                round(rss[0][1] / MiB, 1),
                round(rss[-1][1] / MiB, 1),
                round(max(r for _, r in rss) / MiB, 1),
            ],
        },
        "lost": errors,
        "lingering_after_settle": left,
        "settle_s": settle,
        "time_wait": {
            "stack_entries_at_load_end": time_wait_at_end,
            "stack_bytes_per_entry_rss": per_entry,
            # an upper bound: all the RSS the load added, over the TIME_WAIT entries it left
            "stack_rss_growth_per_entry_upper": round((rss_end - rss[0][1]) / time_wait_at_end)
            if time_wait_at_end
            else None,
            "kernel_tw_sock_bytes": tw_sock_bytes(),
        },
        "rates": [round(r) for r in rates],
        "rss_curve": rss,
        "ok": errors == 0 and not left["stack"] and not left["kernel"] and (last >= 0.9 * first),
    }


# -- 4. idle and slow clients --------------------------------------------------------------------------
def idle(kind: str, idle_count: int, slow_count: int, seconds: float) -> dict[str, Any]:
    with server_in_namespace(kind) as server:
        unloaded = wrk_result(server.wrk(seconds, 20), seconds + 60)
        port = server.url.rsplit(":", 1)[1].strip("/")
        hold_s = max(seconds + 4, 16)  # long enough to see the server's 10 s request-head timeout
        holders = [
            clients(server.namespace, "idle", STACK_ADDRESS, port, idle_count, hold_s),
            clients(server.namespace, "slowloris", STACK_ADDRESS, port, slow_count, hold_s),
        ]
        peak_states: dict[str, int] = {}

        def holders_in() -> bool:  # most of them connected (before the server's 10 s timeouts)
            peak_states.update(server.states())
            return peak_states.get("ESTABLISHED", 0) >= 0.9 * (idle_count + slow_count)

        wait_until(holders_in, timeout=8, interval=0.5)
        loaded = wrk_result(server.wrk(seconds, 20), seconds + 60)
        held = [result_of(p, seconds + 120) for p in holders]
        rss = rss_bytes(server.process.pid)
    ratio = loaded["requests_per_s"] / unloaded["requests_per_s"] if unloaded["requests_per_s"] else 0.0
    errors = int(loaded["socket_errors"] + loaded["non_2xx"])
    return {
        "case": f"idle_{kind}",
        "offered": f"{idle_count} idle + {slow_count} slowloris connections, wrk -c20 {seconds:.0f} s",
        "held": {
            "wrk_req_s_unloaded_loaded": [round(unloaded["requests_per_s"]), round(loaded["requests_per_s"])],
            "ratio": round(ratio, 3),
            "established_at_peak": peak_states.get("ESTABLISHED", 0),
            "rss_mb": round(rss / MiB, 1),
        },
        "lost": errors,
        "idle_clients": held[0],
        "slowloris_clients": held[1],
        "ok": errors == 0 and loaded["requests"] > 0,
    }


# -- 5. hostile frames -----------------------------------------------------------------------------------
def hostile(count: int, rate: float) -> dict[str, Any]:
    seconds = count / rate
    with server_in_namespace("serve") as server:
        neigh = server.namespace.run(["ip", "neigh", "show", STACK_ADDRESS, "dev", "yas0"], timeout=10).stdout
        found = re.search(r"lladdr ([0-9a-f:]{17})", neigh)
        if not found:
            raise SoakFailure(f"no ARP entry for the stack: {neigh!r}")
        before = server.stat()
        load = server.wrk(seconds + 2, 20)
        time.sleep(1)  # the load first, then the hostile frames into it (the scenario, not a wait)
        sent = result_of(
            clients(server.namespace, "hostile", "yas0", found.group(1), STACK_ADDRESS, PORT, count, rate),
            seconds + 60,
        )
        run = wrk_result(load, seconds + 60)  # ends 1-2 s after the last hostile frame
        after = server.stat()
        alive = server.process.poll() is None and server.get() == BODY
    drops: dict[str, int] = {}
    for layer in ("ether", "arp", "ip", "icmp", "udp", "tcp"):
        b, a = summed(before, layer, "dropped"), summed(after, layer, "dropped")
        for key in a:
            if a[key] - b.get(key, 0):
                drops[f"{layer}.{key}"] = a[key] - b.get(key, 0)
    answers = {}
    for layer, key in (
        ("icmp", "echo_replies_sent"),
        ("icmp", "sent"),
        ("tcp", "resets_sent"),
        ("udp", "sent"),
    ):
        b, a = summed(before, layer, "counters"), summed(after, layer, "counters")
        if key in a:
            answers[f"{layer}.{key}"] = a[key] - b.get(key, 0)
    internal = sum(core["runtime"]["internal_errors"] for core in after)
    errors = int(run["socket_errors"] + run["non_2xx"])
    accounted = (
        sum(drops.values()) + answers.get("icmp.echo_replies_sent", 0) + answers.get("tcp.resets_sent", 0)
    )
    return {
        "case": "hostile",
        "offered": f"{sent['sent']} malformed frames of {sent['kinds']} kinds at {rate:.0f}/s, "
        "wrk -c20 meanwhile",
        "held": {
            "wrk_req_s": round(run["requests_per_s"]),
            "server_alive": alive,
            "internal_errors": internal,
        },
        "lost": errors,
        "accounted": {"sent": sent["sent"], "drops_plus_answers": accounted},
        "drops": drops,
        "answers": answers,
        "by_kind": sent["by_kind"],
        "ok": internal == 0 and errors == 0 and alive and accounted >= sent["sent"],
    }


# -- 6. a worker killed, a stuck handler -------------------------------------------------------------------
def worker(seconds: float) -> dict[str, Any]:
    """SIGKILL to one worker of ``yastack serve --cores 2`` while wrk runs."""
    with server_in_namespace("serve", cores=2) as server:
        load = server.wrk(seconds, 20)
        time.sleep(seconds / 3)
        tasks = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        victim = int(tasks[-1]) if tasks else None
        if victim is not None:
            os.kill(victim, signal.SIGKILL)  # a worker we started (a child of our server process)
        run = wrk_result(load, seconds + 60)
        exited = wait_until(lambda: server.process.poll() is not None, timeout=20)
        report = tail(server.log, 15)
    failed = int(run["socket_errors"] + run["non_2xx"])
    reported = "killed by SIGKILL" in report
    return {
        "case": "worker_killed",
        "offered": f"yastack serve --cores 2 under wrk -c20 {seconds:.0f} s; SIGKILL to worker PID {victim}",
        "held": {
            "wrk_requests": run["requests"],
            "server_exited": exited,
            "server_status": server.process.returncode,
        },
        "lost": 0 if reported else failed,
        "failed_and_reported": failed,
        "server_report": [line for line in report.splitlines() if "killed" in line or "stopp" in line][-3:],
        "ok": exited and server.process.returncode not in (0, None) and reported,
    }


def stuck(seconds: float) -> dict[str, Any]:
    """A request to a handler that never answers, then a graceful shutdown (SIGINT, 2 s grace)."""
    with server_in_namespace("serve") as server:
        request = server.namespace.popen(
            [
                "curl",
                "-sS",
                "-m",
                str(seconds + 10),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                server.url + "stuck",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(seconds)
        answered_meanwhile = server.get() == BODY  # the stuck handler holds no one else up
        started = time.monotonic()
        code = server.stop()
        stop_seconds = time.monotonic() - started
        out, err = request.communicate(timeout=seconds + 30)
        report = tail(server.log, 20)
    lines = report.splitlines()
    mentions = [
        line for line in lines if "/stuck" in line or "cancel" in line.lower() or "timeout" in line.lower()
    ]
    return {
        "case": "stuck_handler",
        "offered": f"GET /stuck (never answers), held {seconds:.0f} s, then SIGINT (graceful timeout 2 s)",
        "held": {
            "others_answered_meanwhile": answered_meanwhile,
            "server_status": code,
            "stop_seconds": round(stop_seconds, 1),
            "client_saw": f"{out.strip()} {err.strip()[-120:]}",
        },
        "lost": 0 if mentions else 1,  # the request cut short without a word in the server's log
        "server_report": mentions[-3:] or ["(nothing in the server's log names the request it cancelled)"],
        "server_log_tail": lines[-4:],
        # a clear report: the log names the request the shutdown cut short (the client got no answer)
        "ok": answered_meanwhile and stop_seconds < 10 and bool(mentions),
    }


# -- running and reporting ---------------------------------------------------------------------------------
def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib  # type: ignore[import-not-found]  # the bench extra; absent: no plot

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]  # the same
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    for row in rows:
        curve = row.get("rss_curve")
        if curve:
            ax.plot([t for t, _ in curve], [r / MiB for _, r in curve], marker=".", label=row["case"])
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS, MiB")
    ax.set_title("trio_yastack soak: resident memory under churn and SYN flood")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


CASES = (
    "bulk",
    "synflood",
    "synflood_traced",
    "hostile",
    "churn_serve",
    "churn_proxy",
    "idle_serve",
    "idle_proxy",
    "worker",
    "stuck",
)


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "bulk_bytes": 2 * MiB,
            "bulk_limit": 240,
            "flood": 300_000,
            "flood_s": 6,
            "legit": 1000,
            "minutes": 0.5,
            "interval": 5,
            "settle": 20,
            "idle": 2000,
            "slow": 200,
            "idle_s": 8,
            "hostile": 2000,
            "hostile_rate": 500,
            "worker_s": 6,
            "stuck_s": 3,
        }
    return {
        "bulk_bytes": 1024 * MiB,
        "bulk_limit": 3600,
        "flood": 1_500_000,
        "flood_s": 20,
        "legit": 1000,
        "minutes": 10,
        "interval": 30,
        "settle": 70,
        "idle": 10000,
        "slow": 500,
        "idle_s": 20,
        "hostile": 20000,
        "hostile_rate": 1000,
        "worker_s": 10,
        "stuck_s": 5,
    }


def run_case(name: str, size: dict[str, Any], faults: FaultOptions) -> dict[str, Any]:
    if name == "bulk":
        return bulk(size["bulk_bytes"], faults, size["bulk_limit"])
    if name == "synflood":
        return synflood(
            size["flood"],
            size["flood_s"],
            size["legit"],
            trace_memory=False,
            syn_budget=size.get("syn_budget"),
        )
    if name == "synflood_traced":  # the same with tracemalloc on: where memory goes (slower server)
        row = synflood(size["flood"], size["flood_s"], size["legit"], trace_memory=True)
        row["case"] = name
        row["ok"] = row["ours"]["internal_errors"] == 0  # a diagnostic: the untraced row holds the bar
        return row
    if name == "hostile":
        return hostile(size["hostile"], size["hostile_rate"])
    if name.startswith("churn_"):
        return churn(name.split("_")[1], size["minutes"], size["interval"], size["settle"])
    if name.startswith("idle_"):
        return idle(name.split("_")[1], size["idle"], size["slow"], size["idle_s"])
    if name == "worker":
        return worker(size["worker_s"])
    if name == "stuck":
        return stuck(size["stuck_s"])
    raise ValueError(f"unknown case {name!r}: one of {', '.join(CASES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the CI's sizes (about a minute or two)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--bulk-bytes", type=int, help="bytes each way in the bulk case")
    parser.add_argument("--bulk-limit", type=float, help="the bulk case's time limit, seconds")
    parser.add_argument("--minutes", type=float, help="the churn's length")
    parser.add_argument(
        "--syn-budget",
        type=int,
        help="the stack's syncookie_burst_budget in the synflood case (1000000: no SYN shedding)",
    )
    parser.add_argument("--seed", type=int, default=22, help="the fault path's seed")
    parser.add_argument(
        "--output", type=Path, help="where the JSON goes (default benchmarks/results/soak*.json)"
    )
    args = parser.parse_args(argv)
    reason = netns_unavailable_reason()
    if reason:
        print(f"soak: needs network namespaces: {reason}", file=sys.stderr)
        return 2
    for program in ("wrk", "curl", "ss", "nstat", "tc"):
        if shutil.which(program) is None:
            print(f"soak: {program} is missing (scripts/programs.txt; setup.sh --bench)", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    size = sizes(args.quick)
    if args.bulk_bytes:
        size["bulk_bytes"] = args.bulk_bytes
    if args.bulk_limit:
        size["bulk_limit"] = args.bulk_limit
    if args.minutes:
        size["minutes"] = args.minutes
    if args.syn_budget is not None:
        size["syn_budget"] = args.syn_budget
    faults = replace(SOAK_FAULTS, seed=args.seed)
    rows: list[dict[str, Any]] = []
    for name in args.cases.split(","):
        load_before = load_average()
        log(f"{name}: load average {load_before}")
        started = time.monotonic()
        try:
            row = run_case(name, size, faults)
        except SoakFailure as exc:
            row = {"case": name, "error": str(exc), "ok": False}
        row["wall_s"] = round(time.monotonic() - started, 1)
        row["load_average_before"] = load_before
        row["load_average_after"] = load_average()
        log(f"{name}: {'ok' if row['ok'] else 'NOT OK'} in {row['wall_s']} s")
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": "soak",
        "quick": args.quick,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sizes": size,
        "faults": fault_words(faults),
        "rows": rows,
    }
    output = args.output or RESULTS / ("soak_quick.json" if args.quick else "soak.json")
    output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if plot(rows, RESULTS / ("soak_rss_quick.png" if args.quick else "soak_rss.png")):
        log("plot written")
    print(f"{'case':16} {'ok':5} {'lost':>6}  held")
    for row in rows:
        held = row.get("held", row.get("error"))
        print(f"{row['case']:16} {row['ok']!s:5} {row.get('lost', '-')!s:>6}  {held}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
