"""PyTCP on a TAP, serving ICMP echo and TCP echo / discard / source: the pure-Python peer for benchmarks.

Why it exists: trio_yastack's benchmarks compare it with the Linux kernel, which says how far a
Python stack is from a C one but not how it stands among Python stacks.  PyTCP
(https://github.com/ccie18643/PyTCP) is the other pure-Python TCP/IP stack that runs on a Linux
TAP, so this program puts it on the same TAP, in the same namespace, at the same address
(198.18.0.2, kernel side 198.18.0.1) that trio_yastack's benchmarks use, and lets the same
kernel-side clients measure both.

Licence and isolation: PyTCP is GPL-3.0.  It is installed only into a separate benchmark venv
(``benchmarks/.pytcp-venv``, made with ``python3 -m venv`` and ``pip install pytcp==2.7.6``,
which brings no other dependency) and only this program, run by that venv's interpreter as its
own process, imports it.  trio_yastack never imports PyTCP and nothing here is imported by
trio_yastack; this file uses nothing but PyTCP and the standard library.

What it serves (PyTCP 2.7.6 API: ``pytcp.TcpIpStack`` and the BSD-like ``pytcp.lib.socket``,
blocking calls, one thread per connection as PyTCP's own example services do; those examples
are not shipped in the wheel, so the services are written here):

- ICMP echo: PyTCP answers pings itself, and ARP requests for its address;
- TCP echo (``--echo-port``, default 7): everything received is sent back until the client
  closes, then the server closes;
- TCP discard (``--discard-port``, default 9): everything received is dropped until the client
  closes, then the server closes (the kernel-to-PyTCP throughput test, e.g. ``kernel_peer send``);
- TCP source (``--source-port``, default 19): the client sends an ASCII byte count ended by a
  newline, the server sends that many bytes (``bytes(range(256))`` repeated) and closes (the
  PyTCP-to-kernel throughput test).

A port of 0 turns a service off.  ``READY`` alone on a line goes to stdout once every service
listens; everything else (PyTCP's own log with ``--log``, a summary at exit) goes to stderr.
SIGTERM or SIGINT stops the stack and exits 0.

How PyTCP is set up, and why:

- the TAP: PyTCP opens ``/dev/net/tun`` and attaches with ``TUNSETIFF`` (``IFF_TAP |
  IFF_NO_PI``) to the named device.  Create it beforehand (``ip tuntap add dev yas0 mode tap``,
  address and ``up`` on the kernel side): for a name that does not exist the kernel would make
  a new TAP, down and without an address, that nothing reaches, so this program exits 2 instead.
  The TAP is single-queue, so it must be free (exit 1 on EBUSY while another stack holds it);
- addresses: static IPv4 (``--ip``, ``--gateway``) with no DHCP.  IPv6 is turned off in PyTCP
  (no link-local DAD, router solicitation or MLD reports at start or on the wire);
- start-up: PyTCP claims an IPv4 address with three ARP probes 1-2 s apart (3-6 s).  Unless
  ``--arp-dad`` is given, the address is taken at once with one ARP announcement instead, so the
  stack is ready in under a second (each of its six threads sleeps 0.1 s as it starts);
- closed sessions: every PyTCP TCP session registers its state machine with the 1 ms stack timer
  for good, so each connection ever made keeps costing CPU on every tick (after a few hundred
  short connections the idle stack is busy and bulk transfers slow down by a third or more).
  Unless ``--keep-closed-sessions`` is given, a session's timer task is dropped once it has
  been open and is CLOSED again, which changes nothing for live connections and keeps results
  independent of how many connections came before;
- speed: PyTCP builds f-string log messages for every packet behind ``__debug__``, so unless
  ``--no-optimize`` is given the program re-executes itself under ``python -O``, where that code
  is compiled out: PyTCP as fast as it goes.  Its console log is off unless ``--log``.

    ip netns exec NS benchmarks/.pytcp-venv/bin/python benchmarks/pytcp_peer.py --tap yas0 \\
        --ip 198.18.0.2/24 [--gateway 198.18.0.1] [--mac 02:00:00:77:77:77] \\
        [--echo-port 7] [--discard-port 9] [--source-port 19]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

_REEXEC_MARK = "PYTCP_PEER_OPTIMIZED"
_MAX_SOURCE_BYTES = 256 << 20
_SOURCE_BLOCK = bytes(range(256)) * 256  # 64 KiB
_STOP_JOIN_SECONDS = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "PyTCP peer for benchmarks").splitlines()[0])
    parser.add_argument("--tap", default="yas0", help="existing TAP device to attach to (default yas0)")
    parser.add_argument("--ip", default="198.18.0.2/24", help="IPv4 address/prefix (default 198.18.0.2/24)")
    parser.add_argument("--gateway", default=None, help="IPv4 default gateway (optional)")
    parser.add_argument("--mac", default="02:00:00:77:77:77", help="MAC address (PyTCP's default)")
    parser.add_argument("--echo-port", type=int, default=7, help="TCP echo port, 0: off (default 7)")
    parser.add_argument("--discard-port", type=int, default=9, help="TCP discard port, 0: off (default 9)")
    parser.add_argument("--source-port", type=int, default=19, help="TCP source port, 0: off (default 19)")
    parser.add_argument(
        "--arp-dad", action="store_true", help="claim the address with PyTCP's ARP probes (3-6 s start-up)"
    )
    parser.add_argument(
        "--keep-closed-sessions", action="store_true", help="keep PyTCP's timer ticking closed sessions"
    )
    parser.add_argument("--log", action="store_true", help="let PyTCP log every packet to stderr (slow)")
    parser.add_argument(
        "--no-optimize", action="store_true", help="do not re-run under python -O (keeps debug logging code)"
    )
    args = parser.parse_args(argv)
    if "/" not in args.ip:
        args.ip += "/24"
    for port in (args.echo_port, args.discard_port, args.source_port):
        if not 0 <= port <= 65535:
            parser.error(f"port out of range: {port}")
    return args


def reexec_optimized(args: argparse.Namespace) -> None:
    """Run again under ``python -O`` so PyTCP's per-packet ``__debug__`` logging is compiled out."""
    if __debug__ and not args.no_optimize and not os.environ.get(_REEXEC_MARK):
        os.environ[_REEXEC_MARK] = "1"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-O", os.path.abspath(__file__), *sys.argv[1:]])


class Stats:
    """Connections and bytes per service, for the summary printed at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections: dict[str, int] = {}
        self.bytes_in: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}

    def add(self, service: str, connections: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
        with self._lock:
            self.connections[service] = self.connections.get(service, 0) + connections
            self.bytes_in[service] = self.bytes_in.get(service, 0) + bytes_in
            self.bytes_out[service] = self.bytes_out.get(service, 0) + bytes_out

    def summary(self) -> str:
        with self._lock:
            return ", ".join(
                f"{name}: {count} conn, {self.bytes_in[name]} B in, {self.bytes_out[name]} B out"
                for name, count in sorted(self.connections.items())
            )


STATS = Stats()


def echo_connection(conn: Any) -> None:
    """Send back everything received until the client closes."""
    received = sent = 0
    try:
        while data := conn.recv():
            received += len(data)
            sent += conn.send(data)
    except OSError:  # BrokenPipeError when the session went away under us
        pass
    finally:
        conn.close()
        STATS.add("echo", bytes_in=received, bytes_out=sent)


def discard_connection(conn: Any) -> None:
    """Drop everything received until the client closes."""
    received = 0
    try:
        while data := conn.recv():
            received += len(data)
    except OSError:
        pass
    finally:
        conn.close()
        STATS.add("discard", bytes_in=received)


def source_connection(conn: Any) -> None:
    """Read an ASCII byte count ended by a newline, send that many bytes, close."""
    request = b""
    sent = 0
    try:
        while b"\n" not in request and len(request) < 32:
            if not (data := conn.recv()):
                return
            request += data
        line = request.split(b"\n", 1)[0].strip()
        count = min(int(line), _MAX_SOURCE_BYTES) if line.isdigit() else 0
        while sent < count:
            block = _SOURCE_BLOCK[: count - sent]
            sent += conn.send(block)
    except OSError:
        pass
    finally:
        conn.close()
        STATS.add("source", bytes_in=len(request), bytes_out=sent)


def prune_closed_sessions(pstack: Any) -> None:
    """Drop a TCP session's 1 ms timer task once the session has been open and is CLOSED again.

    PyTCP registers ``TcpSession.tcp_fsm`` with the stack timer forever (the task repeats with no
    end), so closed sessions pile up and every tick calls them all.  The timer's own
    ``stop_condition`` hook is given a test that turns true only after the session has left the
    CLOSED state it is born in and come back to it; from then on its state machine does nothing.
    """
    from pytcp.protocols.tcp.session import FsmState, TcpSession

    timer = pstack.timer
    register_method = timer.register_method

    def register_with_prune(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        session = getattr(method, "__self__", None)
        if isinstance(session, TcpSession) and kwargs.get("stop_condition") is None:
            opened = False

            def finished() -> bool:
                nonlocal opened
                if session.state is FsmState.CLOSED:
                    return opened
                opened = True
                return False

            kwargs["stop_condition"] = finished
        register_method(method, *args, **kwargs)

    timer.register_method = register_with_prune


def serve(psocket: Any, address: str, port: int, name: str, handler: Callable[[Any], None]) -> None:
    """Listen on ``address:port``; a daemon thread accepts and starts a thread per connection."""
    listener = psocket.socket(psocket.AF_INET4, psocket.SOCK_STREAM)
    listener.bind((address, port))
    listener.listen()

    def accept_loop() -> None:
        while True:
            conn, _ = listener.accept()  # blocks without a timeout: the thread is a daemon
            STATS.add(name, connections=1)
            threading.Thread(target=handler, args=(conn,), name=f"{name}-conn", daemon=True).start()

    threading.Thread(target=accept_loop, name=f"{name}-accept", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reexec_optimized(args)

    try:
        socket.if_nametoindex(args.tap)
    except OSError:
        # PyTCP's TUNSETIFF would make a new TAP of that name, down and without an address.
        print(
            f"pytcp_peer: no interface {args.tap!r} in this network namespace; create the TAP first",
            file=sys.stderr,
        )
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # PyTCP logs with print(): keep stdout for READY alone.
    ready_out = sys.stdout
    sys.stdout = sys.stderr

    from pytcp import TcpIpStack, config
    from pytcp.lib import socket as psocket
    from pytcp.lib import stack as pstack

    if not args.log:
        config.LOG_CHANEL = set()

    started = time.monotonic()
    try:
        tcpip = TcpIpStack(
            interface=args.tap, mac_address=args.mac, ip4_address=args.ip, ip4_gateway=args.gateway or None
        )
    except OSError as error:  # EBUSY: another program holds the TAP
        print(f"pytcp_peer: cannot attach to {args.tap!r}: {error}", file=sys.stderr)
        return 1
    # The constructor turns IPv6 (with autoconfiguration) on when no IPv6 address is given.
    config.IP6_SUPPORT = False
    config.IP6_LLA_AUTOCONFIG = False
    config.IP6_GUA_AUTOCONFIG = False
    config.IP4_HOST_DHCP = False

    if not args.arp_dad:
        handler = pstack.packet_handler

        def claim_ip4_without_probes() -> None:
            for host in list(handler.ip4_host_candidate):
                handler.ip4_host_candidate.remove(host)
                handler.ip4_host.append(host)
                handler._send_arp_announcement(host.address)

        handler._create_stack_ip4_addressing = claim_ip4_without_probes

    if not args.keep_closed_sessions:
        prune_closed_sessions(pstack)

    threads_before = set(threading.enumerate())
    try:
        tcpip.start()
        if stop.is_set():
            return 0
        if not pstack.packet_handler.ip4_unicast:
            print(f"pytcp_peer: PyTCP could not claim {args.ip}", file=sys.stderr)
            return 1
        address = str(pstack.packet_handler.ip4_unicast[0])
        services = [
            (args.echo_port, "echo", echo_connection),
            (args.discard_port, "discard", discard_connection),
            (args.source_port, "source", source_connection),
        ]
        for port, name, handler_fn in services:
            if port:
                serve(psocket, address, port, name, handler_fn)
        print(
            f"pytcp_peer: PyTCP on {args.tap} as {args.ip} ({args.mac}), "
            + ", ".join(f"{name} :{port}" for port, name, _ in services if port)
            + f", ready in {time.monotonic() - started:.2f} s",
            file=sys.stderr,
        )
        print("READY", file=ready_out, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        tcpip.stop()
        stack_threads = [t for t in threading.enumerate() if t not in threads_before and not t.daemon]
        deadline = time.monotonic() + _STOP_JOIN_SECONDS
        for thread in stack_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        os.close(tcpip.tap)
        print(f"pytcp_peer: stopped; {STATS.summary() or 'no connections'}", file=sys.stderr, flush=True)
    if any(thread.is_alive() for thread in stack_threads):
        os._exit(0)  # a PyTCP thread did not notice its stop flag: do not hang the benchmark
    return 0


if __name__ == "__main__":
    sys.exit(main())
