"""The clients of the control channel: ``yastack stat``, ``top``, ``trace`` and ``capture``.

Each finds a running server's sockets (``DIR/coreN.sock``, opened by ``observe_core``),
asks every core at once, and shows one answer for the server: per-core rows and their totals
(``stat``, ``top``), journeys in the order they finish, the two halves of a journey that crossed
cores through a ring joined again (``trace``), or one pcap file of what every core's port moved
(``capture``).  Everything waits with a bound; Ctrl-C (or ``--count``/``--seconds``) stops a
stream cleanly: the client half-closes, each core sends what it still holds, then ``end``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import re
import signal
import socket as stdlib_socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ._control import control_directory, server_name
from ._filter import FilterError, compile_filter
from ._journey import JOURNEYS, format_journey

__all__ = [
    "ClientError",
    "JourneyJoiner",
    "add_client_commands",
    "find_sockets",
    "format_stat",
    "format_top",
    "open_control",
    "query",
    "query_all",
    "stream_all",
]

MAX_LINE = 1 << 20
CONNECT_TIMEOUT = 5.0
DRAIN_TIMEOUT = 10.0
#: how long the first half of a journey that went through a ring waits for its second half
JOIN_WAIT = 2.0


class ClientError(RuntimeError):
    """The server could not be asked (the message says why)."""


#: a server is found only in the network namespace it runs in (its name carries the namespace's inode)
_WHERE_HINT = (
    "; a server in another network namespace is not looked for: run this there "
    "(ip netns exec NS yastack ...), or give the server's --control DIR"
)


def find_sockets(directory: Path) -> list[Path]:
    """The core sockets in ``directory``, by core number."""
    found = []
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise ClientError(f"no server at {directory}: {exc.strerror or exc}{_WHERE_HINT}") from None
    for entry in entries:
        match = re.fullmatch(r"core(\d+)\.sock", entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    if not found:
        raise ClientError(f"no server at {directory} (no coreN.sock there){_WHERE_HINT}")
    return [path for _, path in sorted(found)]


class _Lines:
    """JSON lines from a stream, each at most ``MAX_LINE`` bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > MAX_LINE and b"\n" not in self.buffer:
                raise ClientError("the server sent a line that is too long")
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        document = json.loads(line)
        if not isinstance(document, dict):
            raise ClientError("the server sent something that is not a JSON object")
        return document


async def open_control(path: Path) -> trio.SocketStream:
    """A stream to a core's socket.  The socket is the kernel's even inside a trio run where a
    stack installed trio's socket factory (which serves AF_INET only)."""
    sock = trio.socket.from_stdlib_socket(
        stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    )
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await sock.connect(str(path))
    except (OSError, trio.TooSlowError) as exc:
        sock.close()
        raise ClientError(f"cannot reach {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return trio.SocketStream(sock)


_open = open_control


async def query(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request, one answer."""
    stream = await _open(path)
    async with stream:
        with trio.fail_after(timeout):
            await stream.send_all(json.dumps(request).encode() + b"\n")
            answer = await _Lines(stream).next()
    if answer is None:
        raise ClientError(f"{path} closed without answering")
    if "error" in answer:
        raise ClientError(f"{path}: {answer['error']}")
    return answer


async def query_all(directory: Path, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The same request to every core; the answers by core."""
    paths = find_sockets(directory)
    answers: list[dict[str, Any] | None] = [None] * len(paths)

    async def ask(index: int, path: Path) -> None:
        answers[index] = await query(path, request)

    async with trio.open_nursery() as nursery:
        for index, path in enumerate(paths):
            nursery.start_soon(ask, index, path)
    return [answer for answer in answers if answer is not None]


async def stream_all(
    directory: Path,
    request: dict[str, Any],
    on_item: Callable[[dict[str, Any]], bool],
    *,
    seconds: float | None = None,
    ready: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Stream ``request`` from every core, calling ``on_item`` with each line (it returns True
    to stop: enough); stop after ``seconds`` or on SIGINT/SIGTERM too.  Returns the cores'
    ``end`` lines."""
    paths = find_sockets(directory)
    streams = [await _open(path) for path in paths]
    ends: list[dict[str, Any]] = []
    stop = trio.Event()
    try:
        for stream in streams:
            await stream.send_all(json.dumps(request).encode() + b"\n")
        readers = [_Lines(stream) for stream in streams]
        for path, reader in zip(paths, readers, strict=True):
            with trio.fail_after(CONNECT_TIMEOUT):
                first = await reader.next()
            if first is None or "error" in first:
                raise ClientError(f"{path}: {first['error'] if first else 'closed without answering'}")
        if ready is not None:
            ready(len(streams))

        async def read(reader: _Lines) -> None:
            while True:
                item = await reader.next()
                if item is None:
                    return
                if "end" in item:
                    ends.append(item)
                    return
                if on_item(item):
                    stop.set()

        async def stopper() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                with trio.move_on_after(math.inf if seconds is None else seconds):
                    async with trio.open_nursery() as inner:

                        async def on_signal() -> None:
                            async for _ in signals:
                                stop.set()
                                return

                        inner.start_soon(on_signal)
                        await stop.wait()
                        inner.cancel_scope.cancel()
            for stream in streams:  # "stop, and send me what you still hold"
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopper)
            with trio.CancelScope() as drain:

                async def bound_the_drain() -> None:
                    await stop.wait()
                    drain.deadline = trio.current_time() + DRAIN_TIMEOUT

                nursery.start_soon(bound_the_drain)
                async with trio.open_nursery() as readers_nursery:
                    for reader in readers:
                        readers_nursery.start_soon(read, reader)
            nursery.cancel_scope.cancel()  # every core said end (or went, or the drain timed out)
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    return ends


# -- stat and top -------------------------------------------------------------------------------
def _total(snapshots: list[dict[str, Any]], pick: Callable[[dict[str, Any]], int]) -> int:
    return sum(pick(snapshot) for snapshot in snapshots)


def format_stat(snapshots: list[dict[str, Any]]) -> str:
    """``ff_ifconfig`` + ``ff_netstat`` + ``ff_arp`` + per-core counters, in one page."""
    lines: list[str] = []
    first = snapshots[0]
    iface = first["interface"]
    lines.append(
        f"{iface['name']}: {iface['address']} ether {iface['mac']} mtu {iface['mtu']}"
        + (f" gateway {iface['gateway']}" if iface.get("gateway") else "")
        + f", {len(snapshots)} core(s)"
    )
    lines.append("")
    lines.append(
        f"{'core':>4} {'pid':>7} {'rxq':>3} {'rx pkts':>10} {'rx bytes':>12} {'tx pkts':>10} "
        f"{'tx bytes':>12} {'ring drops':>10} {'estab':>6} {'conns':>6} {'retrans':>7} {'requests':>8}"
    )
    for snap in snapshots:
        port = snap["port"]
        lines.append(
            f"{snap['core']:>4} {snap['pid']:>7} {_q(port['rx_queue']):>3} {port['ipackets']:>10} "
            f"{port['ibytes']:>12} {port['opackets']:>10} {port['obytes']:>12} {_ring_drops(snap):>10} "
            f"{snap['tcp']['states'].get('ESTABLISHED', 0):>6} {snap['tcp']['connection_count']:>6} "
            f"{snap['tcp']['retransmits']:>7} {_requests(snap):>8}"
        )
    if len(snapshots) > 1:
        lines.append(
            f"{'all':>4} {'':>7} {'':>3} {_total(snapshots, lambda s: s['port']['ipackets']):>10} "
            f"{_total(snapshots, lambda s: s['port']['ibytes']):>12} "
            f"{_total(snapshots, lambda s: s['port']['opackets']):>10} "
            f"{_total(snapshots, lambda s: s['port']['obytes']):>12} "
            f"{_total(snapshots, _ring_drops):>10} "
            f"{_total(snapshots, lambda s: s['tcp']['states'].get('ESTABLISHED', 0)):>6} "
            f"{_total(snapshots, lambda s: s['tcp']['connection_count']):>6} "
            f"{_total(snapshots, lambda s: s['tcp']['retransmits']):>7} "
            f"{_total(snapshots, _requests_int):>8}"
        )
    rings = [
        (snap["core"], ring) for snap in snapshots for ring in snap["rings"] if ring["from"] == snap["core"]
    ]
    if rings:
        lines.append("")
        lines.append("rings (from -> to: occupancy/capacity bytes, enqueued, dropped)")
        for _core, ring in rings:
            lines.append(
                f"  {ring['from']} -> {ring['to']}: {ring['occupancy_bytes']}/{ring['capacity']}, "
                f"{ring.get('enqueued', 0)}, {ring.get('dropped', 0)}"
            )
    dispatch = [(snap["core"], snap["dispatch"]) for snap in snapshots if snap.get("dispatch")]
    if dispatch:
        lines.append("")
        lines.append(
            "dispatch (per core): "
            + "; ".join(f"core {c}: " + ", ".join(f"{k} {v}" for k, v in d.items()) for c, d in dispatch)
        )
    lines.append("")
    lines.append("TCP connections by state: " + _states(snapshots))
    lines.append("TCP loss recovery: " + _recovery(snapshots))
    listeners = [(snap["core"], listener) for snap in snapshots for listener in snap["tcp"]["listeners"]]
    lines.append("listeners:")
    for core, listener in listeners:
        lines.append(
            f"  core {core} *:{listener['port']} accept queue {listener['accept_queue']}/"
            f"{listener['backlog']}, SYN queue {listener['syn_queue']}"
        )
    lines.append("connections (netstat):")
    for snap in snapshots:
        for conn in snap["tcp"]["connections"]:
            lines.append(
                f"  core {snap['core']} {conn['local']:<21} {conn['remote']:<21} {conn['state']:<12} "
                f"sendq {conn['send_queue']} recvq {conn['receive_queue']} srtt {conn['srtt_ms']} ms"
            )
    lines.extend(_ip6_lines(snapshots))
    lines.append("ARP table:")
    seen = set()
    for snap in snapshots:
        for entry in snap["arp"]:
            if (entry["ip"], entry["mac"]) not in seen:
                seen.add((entry["ip"], entry["mac"]))
                expires = f"expires in {entry['expires_in']} s"
                lines.append(f"  {entry['ip']:<15} {entry['mac']}  {expires} (core {snap['core']})")
    return "\n".join(lines)


def _ip6_lines(snapshots: list[dict[str, Any]]) -> list[str]:
    """IPv6 in ``yastack stat``: our addresses, the neighbour cache (size per core and its
    entries), and the ip6/icmp6/nd6 counters summed over the cores with drops by reason (as
    ``netstat -s -6``).  Nothing when the stack has no IPv6 (or answers without it: an older one)."""
    with_ip6 = [snap for snap in snapshots if snap.get("ip6")]
    if not with_ip6:
        return []
    lines = ["IPv6: " + ", ".join(with_ip6[0]["ip6"]["addresses"])]
    sizes = ", ".join(f"core {snap['core']}: {snap['ip6']['nd_cache']}" for snap in with_ip6)
    lines.append(f"  neighbour cache: {sizes}")
    seen = set()
    for snap in with_ip6:
        for entry in snap["ip6"]["neighbours"]:
            if (entry["ip"], entry["mac"]) not in seen:
                seen.add((entry["ip"], entry["mac"]))
                lines.append(f"    {entry['ip']:<39} {entry['mac'] or '(incomplete)':<17} {entry['state']}")
    for layer in ("ip6", "icmp6", "nd6"):
        counters: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for snap in with_ip6:
            found = snap["ip6"]["layers"].get(layer, {})
            for name, value in found.get("counters", {}).items():
                counters[name] = counters.get(name, 0) + value
            for name, value in found.get("dropped", {}).items():
                dropped[name] = dropped.get(name, 0) + value
        shown = ", ".join(f"{name} {value}" for name, value in counters.items() if value) or "nothing"
        lines.append(f"  {layer}: {shown}")
        if any(dropped.values()):
            lines.append(
                f"  {layer} dropped: "
                + ", ".join(f"{name} {value}" for name, value in dropped.items() if value)
            )
    return lines


def _ring_drops(snapshot: dict[str, Any]) -> int:
    """Frames this core's outgoing rings refused."""
    return sum(ring.get("dropped", 0) for ring in snapshot["rings"] if ring["from"] == snapshot["core"])


def _q(value: int | None) -> str:
    return "-" if value is None else str(value)


def _requests_int(snapshot: dict[str, Any]) -> int:
    counted = _requests_counted(snapshot)
    return counted or 0


def _requests(snapshot: dict[str, Any]) -> str:
    return _q(_requests_counted(snapshot))


def _requests_counted(snapshot: dict[str, Any]) -> int | None:
    """Requests this core served: ``yastack serve`` counts them under ``http``, the proxy as
    Envoy does (``http.<stat_prefix>.downstream_rq_total``, one per HTTP connection manager);
    ``None`` when the server counts none (a ``tcp_proxy`` only, or no application counters)."""
    app = snapshot.get("app", {})
    http = app.get("http")
    if isinstance(http, dict):
        return int(http.get("requests", 0))
    proxy = app.get("proxy")
    if isinstance(proxy, dict):
        totals = [
            value
            for name, value in proxy.items()
            if name.startswith("http.") and name.endswith(".downstream_rq_total") and isinstance(value, int)
        ]
        if totals:
            return sum(totals)
    return None


#: the loss-recovery counters ``stat`` sums over the cores (issue 19), with their labels
RECOVERY_COUNTERS = (
    ("recovery_episodes", "recovery episodes"),
    ("rack_retransmits", "RACK retransmissions"),
    ("tlp_probes", "tail loss probes"),
    ("recovery_probes", "probes in recovery"),
    ("rto_timeouts", "timeouts"),
    ("rto_retransmits", "RTO retransmissions"),
    ("lost_retransmits", "lost retransmissions"),
    ("spurious_rto_undos", "spurious timeouts undone"),
)


def _recovery(snapshots: list[dict[str, Any]]) -> str:
    """How the cores' TCP recovered from loss: episodes and retransmissions by what triggered them."""
    totals = dict.fromkeys((name for name, _ in RECOVERY_COUNTERS), 0)
    for snap in snapshots:
        counters = snap.get("stack", {}).get("tcp", {}).get("counters", {})
        for name in totals:
            totals[name] += int(counters.get(name, 0))
    return ", ".join(f"{totals[name]} {label}" for name, label in RECOVERY_COUNTERS)


def _states(snapshots: list[dict[str, Any]]) -> str:
    states: dict[str, int] = {}
    for snap in snapshots:
        for name, count in snap["tcp"]["states"].items():
            states[name] = states.get(name, 0) + count
    return ", ".join(f"{name} {count}" for name, count in sorted(states.items())) or "none"


def format_top(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> str:
    """Rates between two rounds of snapshots: per core and in all."""
    before = {snap["core"]: snap for snap in previous}
    lines = [
        time.strftime("%H:%M:%S") + f"  {len(current)} core(s)   TCP: {_states(current)}",
        f"{'core':>4} {'rx pps':>9} {'rx Mbit/s':>10} {'tx pps':>9} {'tx Mbit/s':>10} {'ring occ':>9} "
        f"{'ring drops':>10} {'retrans/s':>9} {'req/s':>8}",
    ]
    totals = [0.0] * 7
    for snap in current:
        old = before.get(snap["core"])
        if old is None:
            continue
        elapsed = max(snap["time"] - old["time"], 1e-6)

        def rate(
            pick: Callable[[dict[str, Any]], float],
            snap: dict[str, Any] = snap,
            old: dict[str, Any] = old,
            elapsed: float = elapsed,
        ) -> float:
            return (pick(snap) - pick(old)) / elapsed

        values = [
            rate(lambda s: s["port"]["ipackets"]),
            rate(lambda s: s["port"]["ibytes"]) * 8 / 1e6,
            rate(lambda s: s["port"]["opackets"]),
            rate(lambda s: s["port"]["obytes"]) * 8 / 1e6,
            float(sum(r["occupancy_bytes"] for r in snap["rings"] if r["to"] == snap["core"])),
            float(sum(r.get("dropped", 0) for r in snap["rings"] if r["from"] == snap["core"])),
            rate(lambda s: s["tcp"]["retransmits"]),
        ]
        requests = rate(_requests_int)
        for index, value in enumerate(values):
            totals[index] += value
        lines.append(
            f"{snap['core']:>4} {values[0]:>9.0f} {values[1]:>10.2f} {values[2]:>9.0f} {values[3]:>10.2f} "
            f"{values[4]:>9.0f} {values[5]:>10.0f} {values[6]:>9.1f} {requests:>8.1f}"
        )
    return "\n".join(lines)


def _directory(args: argparse.Namespace) -> Path:
    return control_directory(server_name(f"tap:{args.name}"), args.control)


def _stat(args: argparse.Namespace) -> int:
    try:
        snapshots = trio.run(query_all, _directory(args), {"cmd": "stat"})
    except ClientError as exc:
        print(f"yastack stat: {exc}", file=sys.stderr)
        return 1
    text = json.dumps({"cores": snapshots}, indent=1) if args.json else format_stat(snapshots)
    return _print_to_pipe(text)


def _print_to_pipe(text: str) -> int:
    """Print ``text``; a reader that went away (``yastack stat | head``) ends the command
    quietly, as ``cat`` does, instead of a ``BrokenPipeError`` traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _quiet_stdout()
    return 0


def _quiet_stdout() -> None:
    """Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _top(args: argparse.Namespace) -> int:
    directory = _directory(args)

    async def main() -> None:
        previous = await query_all(directory, {"cmd": "stat"})
        for iteration in range(args.iterations if args.iterations > 0 else sys.maxsize):
            await trio.sleep(args.interval)  # the sampling period itself, not a synchronisation
            current = await query_all(directory, {"cmd": "stat"})
            text = format_top(previous, current)
            if args.json:
                print(json.dumps({"iteration": iteration, "cores": current}), flush=True)
            else:
                print(("\x1b[H\x1b[2J" if sys.stdout.isatty() else "") + text + "\n", flush=True)
            previous = current

    try:
        trio.run(main)
    except ClientError as exc:
        print(f"yastack top: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `yastack top | head`: the reader went away, as for stat
        _quiet_stdout()
    return 0


class JourneyJoiner:
    """Prints journeys; holds the first half of one that left through a ring until its second
    half (the same frame, ``ring_dequeue`` on the other core) arrives, then prints them as one."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.held: dict[str, tuple[float, dict[str, Any]]] = {}
        self.printed = 0

    def add(self, journey: dict[str, Any]) -> None:
        now = time.monotonic()
        for key, (since, held) in list(self.held.items()):
            if now - since > JOIN_WAIT:
                del self.held[key]
                self._out(held)
        hops = journey.get("hops") or []
        key = journey.get("key") or ""
        if hops and hops[-1]["layer"] == "ring_enqueue" and key and len(self.held) < 1000:
            self.held[key] = (now, journey)
            return
        if hops and hops[0]["layer"] == "ring_dequeue" and key in self.held:
            _, first = self.held.pop(key)
            journey = {**first, "id": f"{first['id']}+{journey['id']}", "end": journey.get("end", ""),
                       "hops": first["hops"] + hops}  # fmt: skip
        self._out(journey)

    def flush(self) -> None:
        for _, held in self.held.values():
            self._out(held)
        self.held.clear()

    def _out(self, journey: dict[str, Any]) -> None:
        self.printed += 1
        self.emit(journey)


def _trace(args: argparse.Namespace) -> int:
    try:
        compile_filter(args.filter)
    except FilterError as exc:
        print(f"yastack trace: {exc}", file=sys.stderr)
        return 2

    def emit(journey: dict[str, Any]) -> None:
        print(json.dumps(journey) if args.json else format_journey(journey), flush=True)

    joiner = JourneyJoiner(emit)

    def on_item(item: dict[str, Any]) -> bool:
        journey = item.get("journey")
        if isinstance(journey, dict):
            joiner.add(journey)
        return bool(args.count) and joiner.printed >= args.count

    def ready(cores: int) -> None:
        print(
            f"# tracing {args.journey} journeys on {cores} core(s), filter {args.filter or '(all)'}",
            flush=True,
        )

    request = {"cmd": "trace", "filter": args.filter, "journey": args.journey}
    try:
        ends = trio.run(
            lambda: stream_all(_directory(args), request, on_item, seconds=args.seconds, ready=ready)
        )
    except ClientError as exc:
        print(f"yastack trace: {exc}", file=sys.stderr)
        return 1
    joiner.flush()
    dropped = sum(end.get("dropped", 0) for end in ends)
    print(
        f"# {joiner.printed} journeys"
        + (f", {dropped} dropped (the client was too slow)" if dropped else ""),
        flush=True,
    )
    return 0


def _capture(args: argparse.Namespace) -> int:
    from trio_yastack.nic import PcapWriter

    try:
        compile_filter(args.filter)
    except FilterError as exc:
        print(f"yastack capture: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output)
    writers: dict[int, PcapWriter] = {}
    counts = [0]

    def writer_for(core: int) -> PcapWriter:
        key = core if args.per_core else -1
        if key not in writers:
            path = (
                output.with_name(f"{output.stem}.core{core}{output.suffix or '.pcap'}")
                if args.per_core
                else output
            )
            writers[key] = PcapWriter(path, snaplen=args.snaplen)
        return writers[key]

    def on_item(item: dict[str, Any]) -> bool:
        frame = item.get("frame")
        if not isinstance(frame, str):
            return False
        data = base64.b64decode(frame)
        writer = writer_for(int(item.get("core", 0)))
        writer.write_record(data, float(item.get("t", 0.0)), int(item.get("len", len(data))))
        counts[0] += 1
        return bool(args.count) and counts[0] >= args.count

    def ready(cores: int) -> None:
        print(f"# capturing on {cores} core(s) to {output}, filter {args.filter or '(all)'}", flush=True)

    request = {"cmd": "capture", "filter": args.filter, "snaplen": args.snaplen}
    try:
        if not args.per_core:
            writer_for(0)  # the file exists (empty) even if nothing comes
        ends = trio.run(
            lambda: stream_all(_directory(args), request, on_item, seconds=args.seconds, ready=ready)
        )
    except ClientError as exc:
        print(f"yastack capture: {exc}", file=sys.stderr)
        return 1
    finally:
        for writer in writers.values():
            writer.close()
    dropped = sum(end.get("dropped", 0) for end in ends)
    print(
        f"# {counts[0]} frames" + (f", {dropped} dropped (the client was too slow)" if dropped else ""),
        flush=True,
    )
    return 0


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``stat``, ``top``, ``trace`` and ``capture`` for ``yastack``."""

    def where(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--control", default=None, metavar="DIR", help="the server's control directory")
        parser.add_argument(
            "--name",
            default="yas0",
            help="the server's name when --control is not given: its TAP (default yas0)",
        )

    stat = commands.add_parser("stat", help="a running server's per-core counters, connections, ARP table")
    where(stat)
    stat.add_argument("--json", action="store_true", help="the snapshots as JSON")
    stat.set_defaults(handler=_stat)
    top = commands.add_parser("top", help="a running server's per-core rates, refreshed (ff_top)")
    where(top)
    top.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    top.add_argument("--iterations", type=int, default=0, help="stop after N samples (0: until Ctrl-C)")
    top.add_argument("--json", action="store_true", help="each sample as a JSON line")
    top.set_defaults(handler=_top)
    trace = commands.add_parser(
        "trace", help="follow packets through a running server, layer by layer (the journey of a packet)"
    )
    where(trace)
    trace.add_argument(
        "filter", nargs="?", default=None, help="BPF-like: host, net, port, tcp, syn... (quote it)"
    )
    trace.add_argument("--journey", choices=sorted(JOURNEYS), default="all", help="in, out, tls or all")
    trace.add_argument("--count", type=int, default=0, help="stop after N journeys")
    trace.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    trace.add_argument("--json", action="store_true", help="journeys as JSON lines")
    trace.set_defaults(handler=_trace)
    capture = commands.add_parser("capture", help="write what a running server's ports move to a pcap file")
    where(capture)
    capture.add_argument("-o", "--output", required=True, help="the pcap file (tcpdump/tshark/Wireshark)")
    capture.add_argument("filter", nargs="?", default=None, help="BPF-like filter (quote it)")
    capture.add_argument("--per-core", action="store_true", help="one file per core: FILE.coreN.pcap")
    capture.add_argument("--count", type=int, default=0, help="stop after N frames")
    capture.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    capture.add_argument("--snaplen", type=int, default=262144, help="bytes kept of each frame")
    capture.set_defaults(handler=_capture)
