"""Programs for ``test_percore.py``, each run as its own process inside a test's namespace.

The per-core launcher forks one worker per core, which must never happen inside pytest (a
running trio cannot be forked), so every multi-core run is a separate program:
``python tests/percore_programs.py MODE NIC ...``.  Each worker prints ``READY <core>`` once it
is serving (and ``DONE <core>`` when its own work is finished), then waits for SIGTERM (which the
launcher forwards from the parent); the parent prints the per-core return values as one line
``RESULT <json list>``.  ``kernel-echo PORT`` is the kernel-side echo server (plain sockets).

Modes:

- ``echo NIC``: an echo server on port 7 on every core (``trio.serve_tcp``).
- ``connect NIC PORT COUNT CONCURRENCY``: every core makes COUNT connections to
  198.18.0.1:PORT (CONCURRENCY at a time), each sending a message and checking its echo.
- ``arp NIC PORT``: core 0 waits for a line on stdin, then connects to 198.18.0.1:PORT; core 1
  waits until its ARP cache has learned 198.18.0.1 (from core 0's copy), then connects.
- ``core-id NIC``: every core returns its core id at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import trio_yastack

KERNEL_ADDRESS = "198.18.0.1"
STACK_IP = "198.18.0.2/24"
ECHO_PORT = 7


def say(line: str) -> None:
    """Print ``line`` with one ``write`` (the workers share stdout: lines must not interleave)."""
    os.write(1, (line + "\n").encode())


def core_of(stack: trio_yastack.Stack) -> int:
    """This worker's core id."""
    layout = stack.layout
    assert layout is not None, "not running under the per-core launcher"
    return layout.core_id


def report(stack: trio_yastack.Stack, **extra: Any) -> dict[str, Any]:
    """What one core did: TCP and ARP counters and drops, and its dispatcher's counters."""
    stats = stack.statistics()
    layout = stack.layout
    assert layout is not None
    return {
        "core": layout.core_id,
        "tcp": dict(stats.tcp.counters),
        "tcp_dropped": dict(stats.tcp.dropped),
        "arp": dict(stats.arp.counters),
        "dispatch": layout.stats.snapshot(),
        **extra,
    }


async def wait_for_sigterm(signals: Any) -> None:
    """Until the launcher forwards SIGTERM (the receiver was opened before READY)."""
    async for _ in signals:
        return


async def echo_handler(stream: trio.SocketStream) -> None:
    """Echo everything until the peer's FIN, then close (bounded by the chunk count)."""
    async with stream:
        for _ in range(1_000_000):
            data = await stream.receive_some(65536)
            if not data:
                return
            await stream.send_all(data)


async def echo_main() -> dict[str, Any]:
    stack = trio_yastack.current_stack()
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_tcp, echo_handler, ECHO_PORT)
            say(f"READY {core_of(stack)}")
            await wait_for_sigterm(signals)
            # The kernel's clients have their echoes, but the closing exchanges may still be on
            # their way (core 0 dispatching the last ACKs of our FINs to core 1): the counters are
            # read once this core's connections are closed, so that no core reports while another
            # still sends it frames of the load (bounded: a connection left open shows in the drops)
            with trio.move_on_after(10):
                while stack.core.tcp.connections:
                    await trio.sleep(0.01)
            # TCP's counters as the load left them: closing the listener below turns the kernel's
            # late retransmissions (to connections already gone) into "no socket" drops and resets
            # that say nothing about how segments were routed while it listened.
            at_sigterm = report(stack)
            nursery.cancel_scope.cancel()
    final = report(stack)  # the dispatcher's counters once every ring is drained
    return {**final, "tcp": at_sigterm["tcp"], "tcp_dropped": at_sigterm["tcp_dropped"],
            "tcp_final": final["tcp"], "tcp_dropped_final": final["tcp_dropped"]}  # fmt: skip


async def echo_exchange(port: int, payload: bytes) -> tuple[int, bool]:
    """One connection to the kernel's echo server: (our local port, whether the echo matched)."""
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream(KERNEL_ADDRESS, port)
        async with stream:
            local_port = stream.socket.getsockname()[1]
            await stream.send_all(payload)
            await stream.send_eof()
            received = bytearray()
            for _ in range(len(payload) + 1):  # at least one byte per read, then EOF
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
    return local_port, bytes(received) == payload


async def connect_main(port: int, count: int, concurrency: int) -> dict[str, Any]:
    stack = trio_yastack.current_stack()
    core = core_of(stack)
    ports: list[int] = []
    matched = 0
    limiter = trio.Semaphore(concurrency)

    async def one(number: int) -> None:
        nonlocal matched
        async with limiter:
            payload = f"core {core} connection {number};".encode() * 50
            local_port, ok = await echo_exchange(port, payload)
            ports.append(local_port)
            matched += ok

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        say(f"READY {core}")
        async with trio.open_nursery() as nursery:
            for number in range(count):
                nursery.start_soon(one, number)
        say(f"DONE {core}")
        await wait_for_sigterm(signals)  # core 0 may still be dispatching for the others
    return report(stack, matched=matched, ports=ports)


async def arp_main(port: int) -> dict[str, Any]:
    stack = trio_yastack.current_stack()
    core = core_of(stack)
    kernel = int(IPv4Address(KERNEL_ADDRESS))
    known_at_start = kernel in stack.core.arp.cache
    polls = 0
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        say(f"READY {core}")
        if core == 0:
            with trio.fail_after(60):
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            assert line.strip() == "go", line
        else:
            with trio.fail_after(5):  # learning from the copy takes microseconds
                while kernel not in stack.core.arp.cache:  # a real condition, bounded above
                    polls += 1
                    await trio.sleep(0.01)
        _, matched = await echo_exchange(port, f"core {core}".encode())
        say(f"DONE {core}")
        await wait_for_sigterm(signals)
    return report(stack, matched=matched, known_at_start=known_at_start, polls=polls)


async def core_id_main() -> int:
    return core_of(trio_yastack.current_stack())


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        for _ in range(1_000_000):
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def kernel_echo(port: int) -> None:
    """A kernel-socket echo server on ``port`` until SIGTERM; prints ``listening`` when ready."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with _EchoServer(("0.0.0.0", port), _EchoHandler) as server:
        print(f"listening {port}", flush=True)
        server.serve_forever()


def main(argv: list[str]) -> int:
    mode, *args = argv
    if mode == "kernel-echo":
        kernel_echo(int(args[0]))
        return 0
    nic, *rest = args
    modes: dict[str, Any] = {
        "echo": (echo_main,),
        "connect": (connect_main, int(rest[0]), int(rest[1]), int(rest[2])) if mode == "connect" else (),
        "arp": (arp_main, int(rest[0])) if mode == "arp" else (),
        "core-id": (core_id_main,),
    }
    function, *values = modes[mode]
    results = trio_yastack.run(function, *values, nic=nic, ip=STACK_IP, cores=2)
    say("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
