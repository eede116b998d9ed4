"""Where a request's time goes in our ASGI server: py-spy on the server under wrk.

For each side (``_asgi_sides.py``; by default ours over the stack and ours on kernel sockets), the
server is started, warmed with one second of load, and sampled by ``py-spy record --native``
(Python and C frames: httptools' llhttp, our cffi code, libc's system calls) while ``wrk -t1 -c50``
keeps it busy (``examples/hello.py``'s ``GET /``).  Each sample is charged to one
part by its innermost frame that belongs to a known part:

- ``kernel (system calls)``: a libc system call (send/recv on kernel sockets, read/write on the
  TAP), charged first whatever called it;
- ``garbage collector``: CPython's cyclic collector, whoever allocated;
- ``parser (httptools/llhttp)``: httptools' C code;
- ``our server (l7/asgi)``: ``trio_yastack/l7/asgi/`` (and the CLI's request counter, ``_cli.py``);
- ``app``: ``examples/hello.py``;
- ``stack (nic, stack, socket_api, dispatch)``: the rest of ``trio_yastack``, and its C;
- ``trio (socket wrappers)``: ``trio/_socket.py`` and ``trio/_highlevel_socket.py``;
- ``trio (scheduler, cancel scopes, checkpoints)``: the rest of trio (and ``outcome``);
- ``other servers' code`` (hypercorn, h11, uvicorn, uvloop), ``other`` (the interpreter's C,
  the standard library, ``contextlib``);

samples in ``epoll_wait``/``poll`` (nothing to do) are counted apart as ``idle`` and left out of
the percentages.  Reported per side: the parts as percentages of the busy samples, with the
server's CPU time per request measured over the same run to turn them into microseconds, and
the hottest lines of our server code: by self time (samples charged to our code, by our innermost
line) and inclusive (every sample, by our innermost line: what that line led to below it).
Keep-alive and ``Connection: close`` are profiled apart.  py-spy stops the process at every
sample (100 per second), which costs a few percent of the rate: these runs are for proportions,
not rates.

    python benchmarks/bench_asgi_profile.py [--seconds S] [--quick] [--sides a,b] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _asgi_sides import SIDES, VENV_BIN, BenchFailure, Running, running
from _common import cpu_seconds, load_average, machine, pick_cpus

from trio_yastack.nic.netns import netns_unavailable_reason

RESULTS = Path(__file__).parent / "results"
DEFAULT_SIDES = ("ours_stack", "ours_kernel")
RATE = 100  # samples per second

STACK_PART = "stack (nic, stack, socket_api, dispatch)"
IDLE = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6"})
#: (part, how to recognise one of its frames: a regex on "function (file:line)")
PARTS: list[tuple[str, re.Pattern[str]]] = [
    ("garbage collector", re.compile(r"^(gc_collect|collect_with_callback|collect_generations)\w* ")),
    ("parser (httptools/llhttp)",
     re.compile(r"\((httptools/[^)]*|parser\.c:\d+|llhttp\.c:\d+|api\.c:\d+|http\.c:\d+)\)$")),
    (OUR_PART := "our server (l7/asgi)", re.compile(r"[(/]trio_yastack/(l7/asgi/|_cli\.py)[^)]*\)$")),
    ("app", re.compile(r"\(hello\.py:\d+\)$")),
    (STACK_PART,
     re.compile(r"[(/](trio_yastack/(?!l7/|_cli\.py)[^)]*|_native\.c:\d+|[^)]*_cffi[^)]*|native/[^)]*)\)$")),
    ("trio (socket wrappers)", re.compile(r"[(/]trio/(_socket|_highlevel_socket)\.py:\d+\)$")),
    ("trio (scheduler, cancel scopes, checkpoints)", re.compile(r"[(/](trio|outcome)/[^)]*\)$")),
    ("other servers' code", re.compile(r"\((hypercorn|h11|h2|wsproto|uvicorn|uvloop)/[^)]*|loop\.c:\d+\)$")),
]  # fmt: skip
OTHER = "other (interpreter, standard library)"
OUR_CODE = re.compile(r"^(?P<function>.*) \((?:.*/)?(?P<where>trio_yastack/l7/asgi/[^:]+:\d+)\)$")


SYSCALLS = frozenset(
    ["read", "write", "readv", "writev", "send", "sendto", "sendmsg", "recv", "recvfrom", "recvmsg",
     "accept", "accept4", "close", "shutdown", "ioctl", "fcntl", "getsockopt", "setsockopt",
     "getsockname", "getpeername", "epoll_ctl", "socket", "connect", "__libc_write", "__libc_read",
     "__libc_send", "__libc_recv", "__libc_close"]
)  # fmt: skip
SYSCALL_PART = "kernel (system calls)"


def charge(frames: list[str]) -> tuple[str, str] | None:
    """The part one sample goes to and the frame that decided it (None: idle): a system call if
    it is in one, else its innermost frame that belongs to a part (libc's other functions, the
    interpreter's C: the caller's part)."""
    function = frames[-1].split(" (", 1)[0]
    if function in IDLE:
        return None
    if function in SYSCALLS and "(libc" in frames[-1]:
        # which of our layers made the call: the innermost frame of a known part above it
        caller = next((f for f in reversed(frames) if any(p.search(f) for _, p in PARTS)), "?")
        return SYSCALL_PART, f"{function} from {_without_line(caller)}"
    for frame in reversed(frames):
        for part, pattern in PARTS:
            if pattern.search(frame):
                return part, _without_line(frame)
    return OTHER, _without_line(frames[-1])


STACK_LAYER = re.compile(r"trio_yastack/(stack/tcp|[a-z_]+)")


def stack_layer(frame: str) -> str:
    """Which layer of the stack a frame charged to the stack is in (``stack/tcp`` apart)."""
    found = STACK_LAYER.search(frame)
    return found.group(1).removesuffix(".py") if found else "native C"


def _without_line(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def analyse(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) output as parts, percentages and our hottest lines."""
    parts: Counter[str] = Counter()
    within: dict[str, Counter[str]] = {}  # part -> the deciding functions
    ours_self: Counter[str] = Counter()  # samples charged to our code, by our innermost line
    ours_lines: Counter[str] = Counter()  # any sample, by our innermost line (what it led to below)
    ours_total: Counter[str] = Counter()  # our functions anywhere in a sample (inclusive)
    ours_functions: Counter[str] = Counter()  # samples charged to our code, by our innermost function
    idle = busy = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        charged = charge(frames)
        if charged is None:
            idle += count
            continue
        part, frame = charged
        busy += count
        parts[part] += count
        within.setdefault(part, Counter())[frame] += count
        ours = [match for frame in frames if (match := OUR_CODE.match(frame))]
        if ours:
            line = ours[-1]["where"] + f" ({ours[-1]['function']})"
            ours_lines[line] += count
            if part == OUR_PART:
                ours_self[line] += count
                ours_functions[f"{ours[-1]['function']} ({ours[-1]['where'].split(':')[0]})"] += count
            for name in {f"{m['function']} ({m['where'].split(':')[0]})" for m in ours}:
                ours_total[name] += count
    share = {part: count / busy for part, count in parts.most_common()} if busy else {}
    return {
        "samples_busy": busy,
        "samples_idle": idle,
        "parts": share,
        "stack_layers": {
            layer: count / busy for layer, count in _layers(within.get(STACK_PART, Counter())).most_common()
        },
        "top_functions": {
            part: [{"function": name, "share": count / busy} for name, count in counter.most_common(8)]
            for part, counter in within.items()
        },
        "our_hottest_lines": [
            {"where": where, "share": count / busy} for where, count in ours_self.most_common(10)
        ],
        "our_lines_inclusive": [
            {"where": where, "share": count / busy} for where, count in ours_lines.most_common(10)
        ],
        "our_functions_self": [
            {"function": name, "share": count / busy} for name, count in ours_functions.most_common(10)
        ],
        "our_functions_inclusive": [
            {"function": name, "share": count / busy} for name, count in ours_total.most_common(10)
        ],
    }


def _layers(functions: Counter[str]) -> Counter[str]:
    layers: Counter[str] = Counter()
    for frame, count in functions.items():
        layers[stack_layer(frame)] += count
    return layers


def profile(server: Running, seconds: int, tmp: Path, close: bool) -> dict[str, Any]:
    """py-spy on the server (and its children) for ``seconds`` while wrk runs a second longer."""
    output = tmp / f"{server.side.name}_{'close' if close else 'keepalive'}.raw"
    py_spy = shutil.which("py-spy", path=VENV_BIN) or "py-spy"
    server.wrk(1)  # warm, not sampled
    load = load_average()
    before = cpu_seconds(server.process.pid)
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(server.process.pid), "--subprocesses", "--native",
         "--rate", str(RATE), "--duration", str(seconds), "--format", "raw", "--output", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        load_run = server.wrk(seconds + 1, close=close)
        said, _ = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode or not output.exists():
        raise BenchFailure(f"{server.side.name}: py-spy failed ({spy.returncode}): {said[-1000:]}")
    used = cpu_seconds(server.process.pid) - before
    result = analyse(output.read_text())
    result["raw"] = output.name
    result["requests_per_s_while_sampled"] = load_run["requests_per_s"]
    result["cpu_us_per_request"] = used / max(load_run["requests"], 1) * 1e6
    result["load_average"] = load
    result["us_per_request"] = {
        part: share * result["cpu_us_per_request"] for part, share in result["parts"].items()
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--modes", default="keepalive,close", help="keepalive, close or both")
    parser.add_argument("--quick", action="store_true", help="2-second samples (CI smoke)")
    parser.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"of {', '.join(SIDES)}")
    parser.add_argument("--keep", type=Path, default=None, help="copy py-spy's raw output into DIR")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason or not shutil.which("wrk") or not shutil.which("py-spy", path=VENV_BIN):
        sys.exit(f"bench_asgi_profile: needs network namespaces, wrk and py-spy (pip install -e '.[bench]'): "
                 f"{reason or 'wrk or py-spy is missing'}")  # fmt: skip
    seconds = 2 if args.quick else args.seconds
    cpus = pick_cpus() if shutil.which("taskset") else None
    cases: dict[str, Any] = {}
    failures: list[str] = []
    for name in args.sides.split(","):
        with tempfile.TemporaryDirectory(prefix="bench_asgi_profile.") as tmp:
            try:
                with running(SIDES[name], 1, Path(tmp), cpus) as server:
                    for mode in args.modes.split(","):
                        cases[f"{name}_{mode}"] = profile(server, seconds, Path(tmp), close=mode == "close")
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    for raw in Path(tmp).glob("*.raw"):
                        shutil.copy(raw, args.keep / raw.name)
            except BenchFailure as exc:
                failures.append(str(exc))
                print(f"# FAILED: {exc}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "benchmark": "asgi_profile",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": f"wrk -t1 -c50 GET /, py-spy record --native --rate {RATE} for {seconds} s",
        "sides": {name: SIDES[name].label for name in args.sides.split(",")},
        "cases": cases,
        "failures": failures,
    }
    print(json.dumps(result, indent=2))
    for name, case in cases.items():
        print(f"\n{name}: {case['cpu_us_per_request']:.1f} CPU us/request, "
              f"{case['samples_busy']} busy samples ({case['samples_idle']} idle)")  # fmt: skip
        for part, share in case["parts"].items():
            print(f"  {part:42} {share:6.1%} {case['us_per_request'][part]:7.1f} us")
        for hot in case["our_hottest_lines"][:5]:
            print(f"  hot (self): {hot['share']:6.1%} {hot['where']}")
        for hot in case["our_lines_inclusive"][:5]:
            print(f"  hot (inclusive): {hot['share']:6.1%} {hot['where']}")
    if not args.quick and not failures:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "asgi_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    if failures:
        sys.exit(f"bench_asgi_profile: {len(failures)} side(s) failed")


if __name__ == "__main__":
    main()
