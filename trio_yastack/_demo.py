"""``yastack demo``: two stacks on a virtual wire ping each other and exchange UDP, printing
every frame that passes (tcpdump-style) and the counters at the end.

What it shows is the whole lower half of the stack at work: ARP resolution, ICMP echo, UDP with
application-level retries on a lossy wire, a 60 000-byte datagram fragmented and reassembled,
and an ICMP port unreachable turned into ECONNREFUSED on a connected socket.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable

import trio

from trio_yastack import Stack, open_stack
from trio_yastack.nic import PcapTee, Port, TracePort, memory_wire
from trio_yastack.socket_api import UdpEndpoint

__all__ = ["run_demo"]

STACK_IP = "198.18.0.2"
PEER_IP = "198.18.0.1"
ECHO_PORT = 7
CLOSED_PORT = 9


async def _udp_echo_server(
    stack: Stack, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with stack.udp_socket(ECHO_PORT) as server:
        task_status.started()
        while True:
            data, address = await server.recvfrom()
            await server.sendto(data, address)


async def _udp_exchange(endpoint: UdpEndpoint, payload: bytes, *, timeout: float, tries: int) -> bytes:
    for _ in range(tries):
        await endpoint.sendto(payload, (PEER_IP, ECHO_PORT))
        with trio.move_on_after(timeout):
            while True:
                data, _ = await endpoint.recvfrom()
                if data == payload:
                    return data
    raise TimeoutError(f"no echo after {tries} tries")


async def run_demo(
    *,
    pings: int = 3,
    datagrams: int = 3,
    loss: float = 0.0,
    seed: int = 1,
    latency: float = 0.0005,
    pcap: str | None = None,
    emit: Callable[[str], None] = print,
    trace: bool = True,
) -> dict[str, int]:
    """Run the demo in the current trio run; return a summary of what got through."""
    port_a, port_b = memory_wire(loss=loss, latency=latency, seed=seed)
    port: Port = port_a
    if pcap:
        port = PcapTee(port, pcap)
    if trace:
        port = TracePort(port, emit, label="stack")
    summary = {"pings_sent": 0, "pings_answered": 0, "datagrams_echoed": 0, "fragmented_echoed": 0}
    async with (
        open_stack(port, ip=f"{STACK_IP}/24", seed=seed) as stack,
        open_stack(port_b, ip=f"{PEER_IP}/24", seed=seed + 1) as peer,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(_udp_echo_server, peer)
        emit(
            f"# stack {STACK_IP} ({stack.mac}) and peer {PEER_IP} ({peer.mac}) on a memory wire, loss {loss}"
        )
        async with stack.ping_socket() as pinger:
            for seq in range(pings):
                for _attempt in range(10):
                    summary["pings_sent"] += 1
                    try:
                        reply = await pinger.ping(PEER_IP, seq, b"yastack!" * 7, timeout=1.0)
                    except TimeoutError:
                        continue
                    summary["pings_answered"] += 1
                    emit(f"# ping seq {seq}: reply from {reply.source}, rtt {reply.rtt * 1000:.3f} ms")
                    break
        async with stack.udp_socket() as client:
            for index in range(datagrams):
                payload = f"datagram {index} over the bypass stack".encode()
                await _udp_exchange(client, payload, timeout=0.5, tries=20)
                summary["datagrams_echoed"] += 1
            emit(f"# {datagrams} UDP datagrams echoed by {PEER_IP}:{ECHO_PORT}")
            big = bytes(range(256)) * 234 + b"end"  # 59 907 bytes: 41 fragments each way
            try:
                echoed = await _udp_exchange(client, big, timeout=2.0, tries=5)
            except TimeoutError:
                # Every one of 82 fragments must arrive: at loss p that happens with (1-p)**82.
                emit(
                    f"# the {len(big)}-byte datagram never came back whole in 5 tries: each way all 41 "
                    f"fragments must arrive, probability {(1 - loss) ** 82:.2g} per try at loss {loss}"
                )
            else:
                summary["fragmented_echoed"] = 1
                digest = hashlib.sha256(echoed).hexdigest()[:16]
                emit(
                    f"# a {len(big)}-byte datagram went out in fragments, came back whole: sha256 {digest}.."
                )
        async with stack.udp_socket() as refused:
            await refused.connect((PEER_IP, CLOSED_PORT))
            for _ in range(20):
                await refused.send(b"anyone?")
                try:
                    with trio.fail_after(1.0):
                        await refused.recv()
                except trio.TooSlowError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ECONNREFUSED:
                        emit(f"# UDP to closed port {CLOSED_PORT}: ICMP port unreachable -> ECONNREFUSED")
                        summary["refused"] = 1
                        break
                    raise
        nursery.cancel_scope.cancel()
        emit("# counters of the stack (netstat -s style):")
        emit(stack.statistics().format())
        emit(f"# port: {stack.port_statistics()}")
    return summary
