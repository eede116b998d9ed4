"""Helpers for the trio socket tests (``test_sockets.py``): two stacks on one ``memory_wire`` in
the same trio run, connected ``StackSocket``/``SocketStream`` pairs, a port wrapper that drops
chosen incoming frames (a firewall, or a host that vanishes), and a throw-away CA for TLS.

Everything runs under trio's ``MockClock`` (the tests request ``autojump_clock``): timeouts are
simulated time, and ``wait_all_tasks_blocked`` is the only way a test waits for the wire to go
quiet (with a zero-latency wire every frame is handled before all tasks block).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from socket import SO_RCVBUF, SO_SNDBUF, SOL_SOCKET
from typing import Any

import trio

from trio_yastack import Stack, open_stack
from trio_yastack.nic import Port, PortWrapper, memory_wire
from trio_yastack.stack import Ip6Config
from trio_yastack.stack.wire.ethernet import ETHERTYPE_IPV4
from trio_yastack.stack.wire.ipv4 import IPPROTO_TCP
from trio_yastack.tls.certs import make_ca

__all__ = [
    "A_IP",
    "B_IP",
    "FilterPort",
    "clog",
    "make_tls_material",
    "read_to_eof",
    "socket_pair",
    "stream_pair",
    "tcp_dport",
    "two_stacks",
]

#: stack A (the clients; opened first, so it is every task's default) and stack B (the servers)
A_IP, B_IP = "198.18.0.2", "198.18.0.1"


def tcp_dport(frame: bytes) -> int | None:
    """The TCP destination port of an Ethernet/IPv4/TCP frame; ``None`` for anything else."""
    if len(frame) < 38 or int.from_bytes(frame[12:14], "big") != ETHERTYPE_IPV4 or frame[23] != IPPROTO_TCP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    return int.from_bytes(frame[14 + ihl + 2 : 14 + ihl + 4], "big")


class FilterPort(PortWrapper):
    """Drops the received frames ``drop(frame)`` picks before the stack sees them (ARP and the
    rest pass): a firewall that silently drops, or, with ``drop_all()``, a host that vanished."""

    def __init__(self, inner: Port, drop: Callable[[bytes], bool] | None = None) -> None:
        super().__init__(inner)
        self.drop: Callable[[bytes], bool] = drop or (lambda frame: False)
        self.dropped = 0

    def drop_all(self) -> None:
        self.drop = lambda frame: True

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        kept = []
        for frame in self.inner.rx_burst(queue, max_n):
            if self.drop(frame):
                self.dropped += 1
            else:
                kept.append(frame)
        return kept


@asynccontextmanager
async def two_stacks(
    seed: int = 1,
    *,
    hosts: dict[str, str] | None = None,
    wrap_a: Callable[[Port], Port] | None = None,
    wrap_b: Callable[[Port], Port] | None = None,
    options: dict[str, Any] | None = None,
    ip6: bool = False,
    **faults: Any,
) -> AsyncIterator[tuple[Stack, Stack]]:
    """Stacks A (198.18.0.2, opened first: the default stack and the one given ``hosts``) and B
    (198.18.0.1) on the two ends of one ``memory_wire(seed=seed, **faults)``, in this trio run;
    with ``ip6``, A has 2001:2::2/64 and B 2001:2::1/64 too (usable at once: no DAD)."""
    a_port, b_port = memory_wire(seed=seed, **faults)
    a_nic = wrap_a(a_port) if wrap_a is not None else a_port
    b_nic = wrap_b(b_port) if wrap_b is not None else b_port
    extra = options or {}
    a_ip: str | list[str] = f"{A_IP}/24"
    b_ip: str | list[str] = f"{B_IP}/24"
    if ip6:
        a_ip, b_ip = [f"{A_IP}/24", "2001:2::2/64"], [f"{B_IP}/24", "2001:2::1/64"]
        extra = {"ip6": Ip6Config(dad_transmits=0, router_solicitations=0), **extra}
    async with (
        open_stack(a_nic, ip=a_ip, seed=seed + 1, hosts=hosts, **extra) as a,
        open_stack(b_nic, ip=b_ip, seed=seed + 2, **extra) as b,
    ):
        yield a, b


async def socket_pair(
    a: Stack, b: Stack, port: int, *, buffer: int | None = None
) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A socket on A connected to a listener on B: ``(A's socket, B's accepted socket)``.

    With ``buffer``, SO_SNDBUF and SO_RCVBUF are set to it on both the listening socket (the
    accepted one inherits them) and the connecting socket, before listen/connect."""
    listener = b.socket()
    client = a.socket()
    try:
        for sock in (listener, client):
            if buffer is not None:
                sock.setsockopt(SOL_SOCKET, SO_SNDBUF, buffer)
                sock.setsockopt(SOL_SOCKET, SO_RCVBUF, buffer)
        await listener.bind((B_IP, port))
        listener.listen(1)
        accepted: list[trio.socket.SocketType] = []

        async def accept_one() -> None:
            accepted.append((await listener.accept())[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_one)
            await client.connect((B_IP, port))
    except BaseException:
        client.close()
        raise
    finally:
        listener.close()
    return client, accepted[0]


async def stream_pair(
    a: Stack, b: Stack, port: int, *, buffer: int | None = None
) -> tuple[trio.SocketStream, trio.SocketStream]:
    client, server = await socket_pair(a, b, port, buffer=buffer)
    return trio.SocketStream(client), trio.SocketStream(server)


async def clog(stream: trio.SocketStream, quiet: float = 121.0) -> int:
    """Send on ``stream`` until ``quiet`` simulated seconds pass with nothing accepted: the
    sender's buffer and the peer's receive window are then both full.  Returns the bytes sent.

    ``quiet`` outlasts two maximal retransmission timeouts (RTO max 60 s): on a lossy wire a lost
    segment is resent and acknowledged within it, so what stays blocked afterwards is blocked by
    the full window alone, not by a retransmission yet to happen that would free buffer space
    later (with 10 s, a long backoff could pass for a clogged pipe and unclog under the test)."""
    total = 0
    chunk = b"c" * 4096
    while True:
        sent = 0
        with trio.move_on_after(quiet):
            sent = await stream.socket.send(chunk)
        if not sent:
            return total
        total += sent
        assert total < 16 * 1024 * 1024, "the stream never clogged: are SO_SNDBUF/SO_RCVBUF honoured?"


async def read_to_eof(stream: trio.abc.ReceiveStream, chunk: int = 65536) -> bytes:
    parts = []
    while data := await stream.receive_some(chunk):
        parts.append(data)
    return b"".join(parts)


def make_tls_material(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> tuple[bytes, bytes, bytes]:
    """A fresh CA and a server certificate it signed for the names and addresses given:
    ``(CA certificate PEM, server certificate PEM, server key PEM)`` (``trio_yastack.tls.certs``,
    whose own tests check the certificates against strict X.509 verification)."""
    ca = make_ca("trio_yastack test CA")
    leaf = ca.issue([*dns_names, *ip_addresses])
    return ca.cert_pem, leaf.cert_pem, leaf.key_pem
