"""Helpers for the tier-3 TCP tests (``test_tcp_sim.py``): two stacks on a ``memory_wire``, stream
senders and receivers that hash what they move, and a port wrapper that drops chosen frames.

Everything here runs under trio's ``MockClock`` (the tests request ``autojump_clock``), so the
only waiting is simulated time.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from trio_yastack import Stack, open_stack
from trio_yastack.nic import Port, PortWrapper, memory_wire
from trio_yastack.socket_api import StackSocket
from trio_yastack.stack import ArpConfig, TcpConfig, TcpConnection
from trio_yastack.stack.wire.ethernet import ETHERTYPE_IPV4
from trio_yastack.stack.wire.ipv4 import IPPROTO_TCP
from trio_yastack.stack.wire.tcp import TCP_HEADER

__all__ = [
    "A_IP",
    "B_IP",
    "CHUNK",
    "DropPort",
    "Segment",
    "abort",
    "check_no_internal_errors",
    "checksum_drops",
    "connected_pair",
    "connection",
    "drop_nth_data_segment",
    "exchange",
    "make_payload",
    "receive_all",
    "send_all_then_eof",
    "sha256",
    "tcp_segment",
    "tcp_stats",
    "two_stacks",
]

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
#: what the applications hand to ``send_all`` / ask of ``receive_some`` at a time
CHUNK = 64 * 1024


def make_payload(seed: int, size: int) -> bytes:
    """``size`` repeatable pseudo-random bytes: a stream where any misplaced byte changes the hash."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def two_stacks(
    seed: int,
    *,
    tcp: TcpConfig | None = None,
    arp: ArpConfig | None = None,
    wrap_a: Callable[[Port], Port] | None = None,
    wrap_b: Callable[[Port], Port] | None = None,
    **faults: Any,
) -> AsyncIterator[tuple[Stack, Stack]]:
    """Stacks A (198.18.0.1) and B (198.18.0.2) on the two ends of one ``memory_wire(**faults)``,
    both with the same ``TcpConfig`` (and ``ArpConfig``) when given; ``wrap_a``/``wrap_b`` may put
    a wrapper port (a :class:`DropPort`) between a stack and its end of the wire."""
    a_port, b_port = memory_wire(seed=seed, **faults)
    overrides: dict[str, Any] = {}
    if tcp is not None:
        overrides["tcp"] = tcp
    if arp is not None:
        overrides["arp"] = arp
    a_nic = wrap_a(a_port) if wrap_a is not None else a_port
    b_nic = wrap_b(b_port) if wrap_b is not None else b_port
    async with (
        open_stack(a_nic, ip=f"{A_IP}/24", seed=seed + 1, **overrides) as a,
        open_stack(b_nic, ip=f"{B_IP}/24", seed=seed + 2, **overrides) as b,
    ):
        yield a, b


async def connected_pair(
    a: Stack, b: Stack, port: int = 5001, *, backlog: int = 128
) -> tuple[trio.SocketStream, trio.SocketStream, trio.SocketListener]:
    """A connects to a listener of B: ``(A's stream, B's accepted stream, the listener)``."""
    listener = b.tcp_listen(port, backlog)
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept_one() -> None:
            accepted.append(await listener.accept())

        nursery.start_soon(accept_one)
        client = await a.tcp_connect(B_IP, port)
    return client, accepted[0], listener


def connection(stream: trio.SocketStream) -> TcpConnection:
    """The stack's TCP connection under ``stream`` (``StackSocket.connection``), to look at."""
    sock = stream.socket
    assert isinstance(sock, StackSocket) and sock.connection is not None
    return sock.connection


async def abort(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a reset, as a kernel socket does with SO_LINGER {on, 0}."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def send_all_then_eof(stream: trio.SocketStream, data: bytes, chunk: int = CHUNK) -> None:
    """Send ``data`` in ``chunk``-byte ``send_all`` calls, then the FIN (``send_eof``)."""
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        await stream.send_all(view[start : start + chunk])
    await stream.send_eof()


async def receive_all(stream: trio.SocketStream, chunk: int = CHUNK) -> bytes:
    """Everything up to the end of the stream."""
    parts = []
    while True:
        data = await stream.receive_some(chunk)
        if not data:
            return b"".join(parts)
        parts.append(data)


async def exchange(
    a_stream: trio.SocketStream, b_stream: trio.SocketStream, a_data: bytes, b_data: bytes
) -> tuple[bytes, bytes]:
    """Both ends send at once (each then its FIN) and read to the end; returns what A received and
    what B received."""
    got: dict[str, bytes] = {}

    async def collect(name: str, stream: trio.SocketStream) -> None:
        got[name] = await receive_all(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all_then_eof, a_stream, a_data)
        nursery.start_soon(send_all_then_eof, b_stream, b_data)
        nursery.start_soon(collect, "a", a_stream)
        nursery.start_soon(collect, "b", b_stream)
    return got["a"], got["b"]


def tcp_stats(stack: Stack) -> Any:
    return stack.statistics().tcp


def checksum_drops(*stacks: Stack) -> int:
    """Frames dropped for a bad checksum in IP, TCP, ICMP or UDP, on all the stacks given."""
    total = 0
    for stack in stacks:
        s = stack.statistics()
        for layer in (s.ip, s.tcp, s.icmp, s.udp):
            total += layer.dropped.get("bad_checksum", 0)
    return total


def check_no_internal_errors(*stacks: Stack) -> None:
    """The poll loop swallowed no exception from the stack (it counts them and goes on)."""
    for stack in stacks:
        assert stack.runtime_statistics()["internal_errors"] == 0


@dataclass(frozen=True, slots=True)
class Segment:
    """The TCP fields of an Ethernet/IPv4/TCP frame that the tests look at."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    header_len: int  # 20 plus the options: 32 with timestamps, more with SACK blocks
    payload_len: int


def tcp_segment(frame: bytes) -> Segment | None:
    """The TCP header of an unfragmented IPv4/TCP frame; ``None`` for anything else."""
    if len(frame) < 34 or int.from_bytes(frame[12:14], "big") != ETHERTYPE_IPV4 or frame[23] != IPPROTO_TCP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if int.from_bytes(frame[20:22], "big") & 0x3FFF:
        return None  # a fragment
    total_len = int.from_bytes(frame[16:18], "big")
    start = 14 + ihl
    if len(frame) < start + 20:
        return None
    sport, dport, seq, ack, offset, flags, _window, _checksum, _urgent = TCP_HEADER.unpack_from(frame, start)
    header_len = (offset >> 4) * 4
    return Segment(sport, dport, seq, ack, flags, header_len, total_len - ihl - header_len)


class DropPort(PortWrapper):
    """Drops the outgoing frames ``drop(frame)`` picks (a loss the test chose) and passes the rest;
    with ``record=True`` it also keeps ``(trio time, frame)`` of every frame the stack sent."""

    def __init__(self, inner: Port, drop: Callable[[bytes], bool], *, record: bool = False) -> None:
        super().__init__(inner)
        self._drop = drop
        self.dropped: list[bytes] = []
        self.record = record
        self.sent: list[tuple[float, bytes]] = []

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        kept = []
        now = trio.current_time()
        for frame in frames:
            if self.record:
                self.sent.append((now, frame))
            if self._drop(frame):
                self.dropped.append(frame)
            else:
                kept.append(frame)
        if kept:
            self.inner.tx_burst(queue, kept)
        return len(frames)  # dropped frames count as sent: they were lost on the wire


def drop_nth_data_segment(n: int) -> Callable[[bytes], bool]:
    """A ``DropPort`` filter that loses the ``n``-th data-carrying TCP segment sent (1-based), once."""
    count = 0

    def drop(frame: bytes) -> bool:
        nonlocal count
        segment = tcp_segment(frame)
        if segment is None or not segment.payload_len:
            return False
        count += 1
        return count == n

    return drop
