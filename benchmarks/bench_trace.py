"""What the journey-of-a-packet trace points cost: hello-world req/s with tracing off, without
trace points at all, and with tracing on.

hypercorn serves ``examples/hello.py`` on one stack; a client on another stack, on the two ends
of a fault-free ``memory_wire`` in one process and one ``trio.run``, sends keep-alive GETs on a
few connections at once.  Three builds of the server's core, alternated round by round:

- ``no_trace_points``: the poll loop as it was before tracing existed (it reads the core's
  ``ether_input`` once per run instead of once per burst, the one trace point compiled into
  the hot path) and no control channel;
- ``tracing_off``: what ``yastack serve`` runs: its control channel open, and tracing turned on
  and off again before measuring (so every swapped class has been put back);
- ``tracing_on``: every journey followed and formatted as text (then dropped).

Reported: medians and ratios to ``no_trace_points`` (tracing_off should be 1.0 within noise).

    python benchmarks/bench_trace.py [--requests N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _common import machine, spread

import trio_yastack._open_stack as open_stack_module
from trio_yastack import open_stack
from trio_yastack.dispatch import PollLoop
from trio_yastack.nic import memory_wire

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 4
VARIANTS = ("no_trace_points", "tracing_off", "tracing_on")


class PollLoopWithoutTracePoints(PollLoop):
    """``PollLoop.run`` as it was before the trace points: ``ether_input`` read once per run."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        core, port, queue, burst, stats = self.core, self.port, self.queue, self.burst, self.stats
        ether_input = core.ether_input
        core.autocork = True
        core.start(trio.current_time())
        self.flush()
        task_status.started()
        layout = self.layout
        while True:
            frames = port.rx_burst(queue, burst) if queue is not None else []
            now = trio.current_time()
            if layout is not None:
                frames = self._dispatch(frames, now)
            if frames:
                stats.bursts += 1
                stats.frames_in += len(frames)
                core.begin_burst()
                for frame in frames:
                    try:
                        ether_input(frame, now)
                    except Exception as exc:
                        self._internal_error("ether_input", exc)
                try:
                    core.end_burst(now)
                except Exception as exc:
                    self._internal_error("end_burst", exc)
            try:
                core.run_timers(now)
                core.run_pending_output(now)
            except Exception as exc:
                self._internal_error("run_timers", exc)
            self.wake_ready()
            self.flush()
            if frames:
                await trio.lowlevel.checkpoint()
                continue
            deadline = core.next_deadline()
            if deadline is not None and deadline <= now:
                await trio.lowlevel.checkpoint()
                continue
            stats.idle_waits += 1
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._idle_scope = scope
                await port.wait_rx(queue)  # type: ignore[arg-type]  # no layout here: an int
            self._idle_scope = None


def load_app() -> Any:
    spec = importlib.util.spec_from_file_location("hello_example", ROOT / "examples" / "hello.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


async def _client(stack: Any, requests: int) -> None:
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    stream = await stack.tcp_connect("198.18.0.1", 8000)
    for _ in range(requests):
        await stream.send_all(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            body += await stream.receive_some(65536)
    await stream.aclose()


def run_case(variant: str, requests: int) -> float:
    """Requests per second of one variant."""
    from trio_yastack.journey import TraceSubscription, format_journey, observe_core
    from trio_yastack.l7 import serve_asgi
    from trio_yastack.l7.asgi import Config

    app = load_app()
    original = open_stack_module.PollLoop
    if variant == "no_trace_points":
        # the class open_stack instantiates, swapped for this variant only (restored below)
        open_stack_module.PollLoop = PollLoopWithoutTracePoints  # type: ignore[misc]

    async def main() -> float:
        config = Config()
        config.bind = ["0.0.0.0:8000"]
        config.errorlog = None
        config.accesslog = None
        config.loglevel = "WARNING"
        client_port, server_port = memory_wire(mtu=1500)
        with tempfile.TemporaryDirectory() as control:
            async with AsyncExitStack() as exits:
                client = await exits.enter_async_context(open_stack(client_port, ip="198.18.0.2/24"))
                server = await exits.enter_async_context(open_stack(server_port, ip="198.18.0.1/24"))
                if variant != "no_trace_points":
                    args = argparse.Namespace(control=control, no_control=False, trace=None, journey=None)
                    observer = await exits.enter_async_context(observe_core(args, server, None))
                    sink: Callable[[Any], None] = lambda journey: format_journey(journey.as_dict()) and None  # noqa: E731
                    subscription = TraceSubscription(sink)
                    observer.tracer.subscribe(subscription)
                    if variant == "tracing_off":
                        observer.tracer.unsubscribe(subscription)
                        assert not observer.tracer.tracing
                nursery = await exits.enter_async_context(trio.open_nursery())
                stop = trio.Event()
                await nursery.start(lambda task_status: serve_asgi(
                    app, config, stack=server, shutdown_trigger=stop.wait, task_status=task_status
                ))  # fmt: skip
                started = time.perf_counter()
                async with trio.open_nursery() as clients:
                    for _ in range(CONNECTIONS):
                        clients.start_soon(_client, client, requests // CONNECTIONS)
                elapsed = time.perf_counter() - started
                stop.set()
                return (requests // CONNECTIONS * CONNECTIONS) / elapsed

    try:
        return trio.run(main)
    finally:
        open_stack_module.PollLoop = original  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="few requests, 2 rounds (CI smoke)")
    args = parser.parse_args()
    requests, rounds = (200, 2) if args.quick else (args.requests, args.rounds)
    runs: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_number in range(rounds):
        order = VARIANTS if round_number % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            runs[variant].append(run_case(variant, requests))
    cases = {variant: {"requests_per_s": spread(values)} for variant, values in runs.items()}
    base = cases["no_trace_points"]["requests_per_s"]["median"]
    result: dict[str, Any] = {
        "benchmark": "trace",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "requests": requests,
        "connections": CONNECTIONS,
        "rounds": rounds,
        "cases": cases,
        "ratio_tracing_off": cases["tracing_off"]["requests_per_s"]["median"] / base,
        "ratio_tracing_on": cases["tracing_on"]["requests_per_s"]["median"] / base,
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "trace.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
