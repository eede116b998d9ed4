"""Each core's control channel, and what ``serve`` (and ``proxy``) add for tracing and stats.

A running server answers ``yastack stat``/``top``/``trace``/``capture`` through one Unix socket
per core, ``DIR/coreN.sock`` (what F-Stack's ff_top, ff_netstat, ff_arp and ff_ifconfig reach
through its shared-memory message ring).  Local only, by design: a Unix socket with mode 0600 in
a directory with mode 0700 (``$XDG_RUNTIME_DIR/yastack/NAME``, else ``/run/yastack/NAME`` for root,
else ``$TMPDIR/yastack-UID/NAME``; ``--control DIR`` picks another), never a network port.

The protocol is one JSON request line, then JSON lines back:

- ``{"cmd": "ping"}``: the core's number and its process id;
- ``{"cmd": "stat"}``: one snapshot of the core (port and queue counters, the poll loop's,
  dispatch and rings, TCP connections by state, listeners, the ARP table, every layer's
  counters, the application's counters);
- ``{"cmd": "trace", "filter": "tcp port 80", "journey": "in"}``: journeys, one a line, until
  the client half-closes (then an ``{"end": ...}`` line) or goes;
- ``{"cmd": "capture", "filter": "...", "snaplen": N}``: frames as the port moves them, base64,
  likewise.

A request is bounded (one line of at most 64 KiB, read within 10 s), so are the clients (8 at a
time per core) and what waits for a slow one (journeys and frames beyond a bounded queue are
dropped and counted, never waited for: the core never blocks on a client).  A bad request gets an
``{"error": ...}`` line; nothing a client sends can stop the core.  So does a trace the tracer
refuses to start (``TraceInstallError``: a traced method no longer matches the stack's).

The integration point for programs that open stacks per core, such as ``yastack serve`` and
``yastack proxy``: :func:`add_observability_options` adds the options to a parser, and
:func:`observe_core` is entered in each core's trio run right after ``open_stack``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import socket as stdlib_socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from ipaddress import IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trio_yastack._trio_helpers import lingering_close
from trio_yastack.dispatch import strict_from_environment
from trio_yastack.stack import StackCore, TcpState

from ._filter import FilterError, PacketFilter, compile_filter
from ._journey import (
    ALL_LAYERS,
    BREAK_SETS,
    JOURNEYS,
    CaptureSubscription,
    Journey,
    JourneyPreset,
    TraceSubscription,
    format_journey,
)
from ._overrides import TraceInstallError
from ._tracer import CoreTracer

if TYPE_CHECKING:
    from trio_yastack._open_stack import Stack
    from trio_yastack.dispatch._percore import CoreLayout

__all__ = [
    "ControlError",
    "CoreObserver",
    "add_observability_options",
    "check_observability_options",
    "control_directory",
    "core_snapshot",
    "observe_core",
    "server_name",
]

log = logging.getLogger("trio_yastack.control")

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CLIENTS = 8
MAX_QUEUED = 4096
MAX_LISTED_CONNECTIONS = 256
MAX_LISTED_ARP = 256


class ControlError(RuntimeError):
    """The control channel cannot be set up (the message says why)."""


# -- where the sockets live ---------------------------------------------------------------------
def server_name(nic: object) -> str:
    """A server's name in the run directory: its TAP's name, else ``default``, then the inode
    of its network namespace (``/proc/self/ns/net``): a TAP's name is only unique within its
    namespace, so ``ip netns exec NS yastack stat`` finds the server of NS and never another's.

    The inode is always part of the name.  It was once left out for the machine's own
    namespace, told by comparing with ``/proc/1/ns/net``; reading that fails with EACCES in
    containers even as root, and the failure was taken for "no namespace", so every server of
    ``tap:yas0`` in any namespace used the same name (issue 21).  Client and server compute the
    same name in the same namespace; only without ``/proc`` (no namespace to tell) is the name
    the TAP's alone."""
    name = "default"
    if isinstance(nic, str) and nic.startswith("tap:"):
        tap = nic[4:].split(",", 1)[0]
        if tap and all(ch.isalnum() or ch in "-_." for ch in tap) and not tap.startswith("."):
            name = tap
    return name + _namespace_suffix()


def _namespace_suffix() -> str:
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return ""  # no /proc: no namespaces to tell apart
    return f".netns-{ours}"


def control_directory(name: str = "yas0", explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding a server's control sockets (``coreN.sock``)."""
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "yastack" / name
    if os.geteuid() == 0:
        return Path("/run/yastack") / name
    return Path(tempfile.gettempdir()) / f"yastack-{os.getuid()}" / name


def _private_directory(path: Path) -> None:
    """Make ``path`` (mode 0700, ours); refuse one that someone else owns or others may write."""
    for directory in (path.parent, path):
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(
                f"cannot make the control directory {directory}: {exc.strerror or exc}"
            ) from None
    status = path.stat()
    if status.st_uid != os.geteuid():
        raise ControlError(f"the control directory {path} belongs to uid {status.st_uid}, not us")
    if status.st_mode & 0o077:
        os.chmod(path, 0o700)


def _socket_is_live(path: Path) -> bool:
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_control_socket(path: Path) -> stdlib_socket.socket:
    """A listening Unix socket at ``path`` with mode 0600 (a stale one is replaced, a live one
    is an error: another server answers there)."""
    _private_directory(path.parent)
    if path.exists() or path.is_symlink():
        if _socket_is_live(path):
            raise ControlError(f"another server answers at {path} (give this one --control DIR)")
        path.unlink()
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    previous = os.umask(0o177)  # created 0600: no window in which others could connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot bind {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    sock.listen(MAX_CLIENTS)
    sock.setblocking(False)
    return sock


# -- what a core reports ------------------------------------------------------------------------
def _ip(value: int) -> str:
    return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def _ends(core: StackCore, local_port: int, remote_ip: int, remote_port: int) -> dict[str, str]:
    """A connection's two ends as text: an IPv6 key of the TCP layer holds both addresses
    (``key6``: the peer's in the low 128 bits, ours above bit 128), an IPv4 one the peer's."""
    if remote_ip > 0xFFFFFFFF:
        ours, peer = IPv6Address(remote_ip >> 129), IPv6Address(remote_ip & ((1 << 128) - 1))
        return {"local": f"[{ours}]:{local_port}", "remote": f"[{peer}]:{remote_port}"}
    return {"local": f"{_ip(core.ip)}:{local_port}", "remote": f"{_ip(remote_ip)}:{remote_port}"}


def _ip6_snapshot(core: StackCore) -> dict[str, Any] | None:
    """IPv6's part of a snapshot (``None``: no IPv6 on this core): our addresses, the neighbour
    cache's size and first entries, and the ip6/icmp6/nd6 counters with drops by reason."""
    ip6 = core.ip6
    if ip6 is None:
        return None
    return {
        "addresses": [
            f"{IPv6Address(address)}/{ours.prefix_len}" + (" tentative" if ours.tentative else "")
            for address, ours in ip6.addresses.items()
        ],
        "nd_cache": len(ip6.nd6.cache),
        "neighbours": [
            {"ip": str(IPv6Address(ip)), "mac": entry.mac.hex(":"), "state": entry.state}
            for ip, entry in list(ip6.nd6.cache.items())[:MAX_LISTED_ARP]
        ],
        "layers": {
            layer.layer: {"counters": dict(layer.counters), "dropped": dict(layer.dropped)}
            for layer in ip6.statistics()
        },
    }


def core_snapshot(
    stack: Stack, layout: CoreLayout | None, extra: dict[str, Callable[[], Any]]
) -> dict[str, Any]:
    """Everything ``yastack stat`` shows about one core, as plain data."""
    core = stack.core
    loop = stack._loop
    now = trio.current_time()
    tcp = core.tcp
    states: dict[str, int] = {}
    connections: list[dict[str, Any]] = []
    for conn in tcp.connections.values():
        name = TcpState(conn.state).name
        states[name] = states.get(name, 0) + 1
        if len(connections) < MAX_LISTED_CONNECTIONS:
            connections.append({
                **_ends(core, conn.local_port, conn.remote_ip, conn.remote_port),
                "state": name,
                "send_queue": len(conn.sndbuf),
                "receive_queue": len(conn.rcvbuf),
                "srtt_ms": round(conn.srtt * 1000, 3),
                "rto_ms": round(conn.rto * 1000, 3),
                "cwnd": getattr(conn.cc, "cwnd", 0),
            })  # fmt: skip
    if tcp.time_wait:  # compact records (TcpTimeWait): nothing queued, no congestion state left
        states["TIME_WAIT"] = states.get("TIME_WAIT", 0) + len(tcp.time_wait)
        for local_port, remote_ip, remote_port in tcp.time_wait:
            if len(connections) >= MAX_LISTED_CONNECTIONS:
                break
            connections.append({
                **_ends(core, local_port, remote_ip, remote_port),
                "state": "TIME_WAIT",
                "send_queue": 0,
                "receive_queue": 0,
                "srtt_ms": 0.0,
                "rto_ms": 0.0,
                "cwnd": 0,
            })  # fmt: skip
    tcp_counters = core.stats_tcp
    retransmits = tcp_counters.retransmitted_segments
    # a dual-stack listener is in both of the TCP layer's tables (listed once), an IPv6-only one
    # in listeners6 alone
    by_id = {id(li): (port, li) for table in (tcp.listeners, tcp.listeners6) for port, li in table.items()}
    listeners = [
        {
            "port": port,
            "accept_queue": len(listener.accept_queue),
            "syn_queue": len(listener.embryonic),
            "backlog": listener.backlog,
        }
        for port, listener in sorted(by_id.values(), key=lambda entry: entry[0])
    ]
    arp = [
        {"ip": _ip(ip), "mac": mac.hex(":"), "expires_in": round(expires - now, 1)}
        for ip, (mac, expires) in list(core.arp.cache.items())[:MAX_LISTED_ARP]
    ]
    port_stats = stack.port.statistics()
    rings = []
    if layout is not None:
        for peer, ring in sorted(layout.rings_out.items()):
            s = ring.statistics()
            rings.append({"from": layout.core_id, "to": peer, "occupancy_bytes": s.occupancy_bytes,
                          "capacity": s.capacity, "enqueued": s.enqueued, "dropped": s.dropped})  # fmt: skip
        for index, ring in enumerate(layout.rings_in):
            peer = index if index < layout.core_id else index + 1
            s = ring.statistics()
            rings.append({"from": peer, "to": layout.core_id, "occupancy_bytes": s.occupancy_bytes,
                          "capacity": s.capacity, "dequeued": s.dequeued, "dropped": s.dropped})  # fmt: skip
    iface = core.config.interface
    app: dict[str, Any] = {}
    for name, provider in extra.items():
        try:
            app[name] = provider()
        except Exception as exc:  # a provider's bug is reported, not raised into the core
            if strict_from_environment():  # under the test suite: a bug fails the run
                raise
            app[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "core": layout.core_id if layout is not None else 0,
        "cores": layout.cores if layout is not None else 1,
        "pid": os.getpid(),
        "time": time.time(),
        "interface": {
            "name": stack.port.name,
            "mac": str(iface.mac),
            "address": f"{iface.address}/{iface.prefix_len}",
            "mtu": iface.mtu,
            "gateway": str(iface.gateway) if iface.gateway is not None else None,
        },
        "port": {
            "rx_queue": loop.queue,
            "tx_queue": loop.tx_queue,
            "ipackets": port_stats.ipackets,
            "opackets": port_stats.opackets,
            "ibytes": port_stats.ibytes,
            "obytes": port_stats.obytes,
            "imissed": port_stats.imissed,
            "ierrors": port_stats.ierrors,
            "oerrors": port_stats.oerrors,
        },
        "runtime": loop.stats.snapshot(),
        "dispatch": layout.stats.snapshot() if layout is not None else None,
        "rings": rings,
        "tcp": {
            "states": states,
            "connections": connections,
            "connection_count": len(tcp.connections) + len(tcp.time_wait),
            "listeners": listeners,
            "retransmits": retransmits,
        },
        "arp": arp,
        "ip6": _ip6_snapshot(core),
        "stack": stack.statistics().as_dict(),
        "app": app,
    }


# -- the server ---------------------------------------------------------------------------------
class CoreObserver:
    """One core's tracer and control channel (what :func:`observe_core` yields).

    ``add_counters(name, provider)`` adds the application's own counters to ``stat`` (the
    provider returns plain data and runs in the core's trio run, so it must be quick)."""

    def __init__(self, stack: Stack, layout: CoreLayout | None, tracer: CoreTracer) -> None:
        self.stack = stack
        self.layout = layout
        self.tracer = tracer
        self.core_id = layout.core_id if layout is not None else 0
        self.counters: dict[str, Callable[[], Any]] = {}
        self.socket_path: Path | None = None
        self.clients = 0
        self.bad_requests = 0

    def add_counters(self, name: str, provider: Callable[[], Any]) -> None:
        self.counters[name] = provider

    def snapshot(self) -> dict[str, Any]:
        snapshot = core_snapshot(self.stack, self.layout, self.counters)
        snapshot["trace"] = self.tracer.statistics()
        snapshot["control"] = {"clients": self.clients, "bad_requests": self.bad_requests}
        return snapshot

    async def serve(
        self, listener: trio.socket.SocketType, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept clients until cancelled (each in its own task, at most ``MAX_CLIENTS``)."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                stream = trio.SocketStream(conn)
                if self.clients >= MAX_CLIENTS:
                    nursery.start_soon(self._refuse, stream)
                    continue
                self.clients += 1
                nursery.start_soon(self._client, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(_line({"error": f"busy: {MAX_CLIENTS} clients already"}))
            await _linger(stream)
        await trio.aclose_forcefully(stream)

    async def _client(self, stream: trio.SocketStream) -> None:
        try:
            request = await self._read_request(stream)
            if request is not None:
                await self._handle(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went: nothing to tell it
        except Exception:  # a bug here must not stop the core: counted and logged
            self.bad_requests += 1
            log.exception("control request failed")
            if strict_from_environment():  # under the test suite: a bug fails the run
                raise
        finally:
            self.clients -= 1
            await trio.aclose_forcefully(stream)

    async def _read_request(self, stream: trio.SocketStream) -> dict[str, Any] | None:
        buffer = bytearray()
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\n" not in buffer:
                chunk = await stream.receive_some(MAX_REQUEST)
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > MAX_REQUEST:
                    await self._bad(stream, f"a request is one line of at most {MAX_REQUEST} bytes")
                    return None
        if b"\n" not in buffer and not buffer:
            return None
        line = bytes(buffer).split(b"\n", 1)[0]
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            await self._bad(stream, "a request is one JSON object on one line")
            return None
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            await self._bad(stream, 'a request is a JSON object with a "cmd" string')
            return None
        return request

    async def _bad(self, stream: trio.SocketStream, message: str) -> None:
        self.bad_requests += 1
        await stream.send_all(_line({"error": message}))
        with trio.move_on_after(1):
            await _linger(stream)

    async def _handle(self, stream: trio.SocketStream, request: dict[str, Any]) -> None:
        command = request["cmd"]
        if command == "ping":
            await stream.send_all(_line({"ok": True, "core": self.core_id, "pid": os.getpid()}))
        elif command == "stat":
            await stream.send_all(_line(self.snapshot()))
        elif command in ("trace", "capture"):
            try:
                packet_filter = compile_filter(_text(request.get("filter")))
                if command == "trace":
                    preset = JOURNEYS[_text(request.get("journey")) or "all"]
                snaplen = _bounded_int(request.get("snaplen", 262144), 64, 262144)
            except (FilterError, KeyError, ValueError, TypeError) as exc:
                await self._bad(stream, f"bad {command} request: {exc}")
                return
            try:
                if command == "trace":
                    await self._stream_trace(stream, packet_filter, preset)
                else:
                    await self._stream_capture(stream, packet_filter, snaplen)
            except TraceInstallError as exc:
                log.error("%s", exc)  # raised before anything was streamed; not the client's fault
                await stream.send_all(_line({"error": str(exc)}))
                with trio.move_on_after(1):
                    await _linger(stream)
        else:
            await self._bad(stream, f"unknown cmd {command!r} (ping, stat, trace, capture)")

    async def _stream(
        self,
        stream: trio.SocketStream,
        channel: tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]],
        stop: Callable[[], None],
        encode: Callable[[Any], dict[str, Any]],
        dropped: Callable[[], int],
    ) -> None:
        """Send what the channel brings until the client half-closes (then ``stop`` the source,
        send what is queued and an ``end`` line) or goes away."""
        send, receive = channel
        await stream.send_all(_line({"ok": True, "core": self.core_id}))

        async def watch_client() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while await stream.receive_some(1024):
                    pass  # a client says nothing more; EOF means "stop and send me the rest"
            stop()
            send.close()

        sent = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client)
            async for item in receive:
                await stream.send_all(_line(encode(item)))
                sent += 1
            await stream.send_all(
                _line({"end": True, "core": self.core_id, "sent": sent, "dropped": dropped()})
            )

    async def _stream_trace(
        self, stream: trio.SocketStream, packet_filter: PacketFilter | None, preset: JourneyPreset
    ) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any]](MAX_QUEUED)
        lost = [0]

        def sink(journey: Journey) -> None:
            try:
                send.send_nowait(journey.as_dict())
            except trio.WouldBlock:
                lost[0] += 1

        subscription = TraceSubscription(sink, packet_filter, preset)
        self.tracer.subscribe(subscription)
        try:
            await self._stream(
                stream,
                (send, receive),
                lambda: self.tracer.unsubscribe(subscription),
                lambda item: {"journey": item},
                lambda: lost[0],
            )
        finally:
            self.tracer.unsubscribe(subscription)

    async def _stream_capture(
        self, stream: trio.SocketStream, packet_filter: PacketFilter | None, snaplen: int
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[float, str, bytes]](MAX_QUEUED)
        lost = [0]

        def sink(stamp: float, direction: str, frame: bytes) -> None:
            try:
                send.send_nowait((stamp, direction, frame))
            except trio.WouldBlock:
                lost[0] += 1

        def encode(item: tuple[float, str, bytes]) -> dict[str, Any]:
            stamp, direction, frame = item
            return {
                "t": stamp,
                "dir": direction,
                "len": len(frame),
                "frame": base64.b64encode(frame[:snaplen]).decode("ascii"),
            }

        capture = CaptureSubscription(sink, packet_filter)
        self.tracer.add_capture(capture)
        try:
            await self._stream(
                stream, (send, receive), lambda: self.tracer.remove_capture(capture), encode, lambda: lost[0]
            )
        finally:
            self.tracer.remove_capture(capture)


async def _linger(stream: trio.SocketStream) -> None:
    """Close after answering without losing the answer (:func:`lingering_close`): a Unix socket
    closed with unread data resets its peer.  The callers bound the time."""
    await lingering_close(stream, max_bytes=16 * MAX_REQUEST, receive_size=MAX_REQUEST)


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("expected a string")


def _bounded_int(value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return max(low, min(high, value))


# -- the integration point: serve and proxy -----------------------------------------------------
def add_observability_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--trace``, ``--journey``, ``--trace-json``, ``--break``, ``--control`` and
    ``--no-control`` to a command that runs stacks (``serve``; ``proxy``)."""
    group = parser.add_argument_group("journey of a packet (trace, breakpoints) and the control channel")
    group.add_argument(
        "--trace",
        nargs="?",
        const="",
        default=None,
        metavar="FILTER",
        help="print the journey of every packet matching FILTER (BPF-like: host, net, port, tcp, "
        "udp, icmp, arp, syn/fin/rst/ack/psh, and/or/not), layer by layer; no FILTER: every packet",
    )
    group.add_argument(
        "--journey",
        choices=sorted(JOURNEYS),
        default=None,
        help="which journeys: in, out, tls (the three of YAStack's gdb macros), or all (default)",
    )
    group.add_argument("--trace-json", action="store_true", help="journeys as JSON lines, not trees")
    group.add_argument(
        "--break",
        dest="break_layers",
        nargs="?",
        const="journey",
        default=None,
        metavar="LAYER[,LAYER...]",
        help="stop in the debugger (breakpoint(): pdb unless PYTHONBREAKPOINT says otherwise) when a "
        "packet matching --trace's FILTER reaches one of these layers; alone, every layer of --journey",
    )
    group.add_argument(
        "--control",
        default=None,
        metavar="DIR",
        help="the directory for this server's control sockets (DIR/coreN.sock, mode 0600) that "
        "yastack stat/top/trace/capture use (default: $XDG_RUNTIME_DIR/yastack/NAME or /run/yastack/NAME)",
    )
    group.add_argument("--no-control", action="store_true", help="no control channel")


def check_observability_options(args: argparse.Namespace) -> str | None:
    """The first problem with the options (for a one-line error before anything is opened)."""
    try:
        compile_filter(getattr(args, "trace", None))
    except FilterError as exc:
        return f"--trace: {exc}"
    try:
        break_layers(args)
    except ValueError as exc:
        return f"--break: {exc}"
    return None


def break_layers(args: argparse.Namespace) -> frozenset[str]:
    """The layers ``--break`` names (``--break`` alone: the whole set of ``--journey``)."""
    spec = getattr(args, "break_layers", None)
    if spec is None:
        return frozenset()
    if spec == "journey":
        return BREAK_SETS[getattr(args, "journey", None) or "all"]
    layers = frozenset(layer.strip() for layer in spec.split(",") if layer.strip())
    unknown = layers - set(ALL_LAYERS)
    if unknown or not layers:
        raise ValueError(
            f"unknown layer(s) {', '.join(sorted(unknown)) or '(none)'}; known: {', '.join(ALL_LAYERS)}"
        )
    return layers


def _print_journey(as_json: bool, core_id: int) -> Callable[[Journey], None]:
    def sink(journey: Journey) -> None:
        document = journey.as_dict()
        text = json.dumps(document) if as_json else format_journey(document)
        print(text, flush=True)

    return sink


@asynccontextmanager
async def observe_core(
    args: argparse.Namespace, stack: Stack, layout: CoreLayout | None
) -> AsyncIterator[CoreObserver]:
    """Inside one core's trio run, after ``open_stack``: turn on ``--trace``/``--break`` for
    this core and serve its control socket (unless ``--no-control``), until the block ends.

    ``args`` is what :func:`add_observability_options`'s options parsed into (missing ones
    count as not given, and ``args.nic`` names the default control directory)."""
    core_id = layout.core_id if layout is not None else 0
    tracer = CoreTracer(stack.core, stack.port, stack._loop, core_id=core_id, layout=layout)
    observer = CoreObserver(stack, layout, tracer)
    trace_filter = compile_filter(getattr(args, "trace", None))
    preset = JOURNEYS[getattr(args, "journey", None) or "all"]
    layers = break_layers(args)
    if getattr(args, "trace", None) is not None or getattr(args, "journey", None) is not None:
        tracer.subscribe(
            TraceSubscription(
                _print_journey(getattr(args, "trace_json", False), core_id), trace_filter, preset
            )
        )
    if layers:
        tracer.set_breaks(layers, trace_filter)
    listener = None
    if not getattr(args, "no_control", False):
        explicit = getattr(args, "control", None)
        directory = control_directory(server_name(getattr(args, "nic", None)), explicit)
        path = directory / f"core{core_id}.sock"
        try:
            listener = trio.socket.from_stdlib_socket(bind_control_socket(path))
        except ControlError as exc:
            if explicit:
                raise
            print(f"# core {core_id}: no control channel: {exc}", file=sys.stderr, flush=True)
        else:
            observer.socket_path = path
            if core_id == 0:
                print(f"# control: yastack stat --control {directory}", flush=True)
    try:
        async with trio.open_nursery() as nursery:
            if listener is not None:
                await nursery.start(observer.serve, listener)
            try:
                yield observer
            finally:
                nursery.cancel_scope.cancel()
    finally:
        tracer.close()
        if listener is not None:
            listener.close()
            bound = observer.socket_path
            if bound is not None:
                with contextlib.suppress(OSError):
                    bound.unlink()
                with contextlib.suppress(OSError):
                    bound.parent.rmdir()  # the last core out removes the directory
