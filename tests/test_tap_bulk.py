"""1 GiB each way between the Linux kernel and the stack through a TAP, offloads on and off.

Both ends hash what they moved (SHA-256) and the hashes must match; the kernel's own count of
retransmissions (``TCP_INFO``, what ``ss -ti`` shows as ``retrans``) and the throughput are
reported in the test summary, not asserted (speed lives in ``benchmarks/bench_tap.py``).
"""

from __future__ import annotations

import time

import pytest
import trio
from tap_helpers import (
    KERNEL_ADDRESS,
    STACK_ADDRESS,
    kernel_peer,
    peer_result,
    receive_hashed,
    requires_netns,
    send_pattern,
    stack_on_tap,
)

from trio_yastack.nic.netns import NetworkNamespace

pytestmark = requires_netns

GIB = 1 << 30
PORT = 5001
#: throughput lines for the terminal summary (conftest prints them)
REPORT: list[str] = []


@pytest.mark.parametrize("offloads", [True, False], ids=["offloads-on", "offloads-off"])
async def test_one_gib_kernel_to_stack(netns: NetworkNamespace, offloads: bool) -> None:
    """The kernel sends 1 GiB to a stack listener: every byte arrives, in order (same SHA-256)."""
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        listener = trio.socket.socket()
        listener.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
        await listener.bind((STACK_ADDRESS, PORT))
        listener.listen(1)
        sender = kernel_peer(netns, "--timeout", 200, "send", STACK_ADDRESS, PORT, GIB)
        with trio.fail_after(200):
            conn, _ = await listener.accept()
            started = time.monotonic()
            received, digest = await receive_hashed(conn, GIB)
            elapsed = time.monotonic() - started
            conn.close()
            result = await trio.to_thread.run_sync(peer_result, sender)
        listener.close()
        assert received == GIB
        assert digest == result["sha256"]
        assert result["tcp_info"]["window_scaling"] and result["tcp_info"]["sack"]
        REPORT.append(
            f"kernel -> stack, offloads {'on' if offloads else 'off'}: {GIB * 8 / elapsed / 1e9:.2f} Gbit/s "
            f"(with SHA-256 at both ends), kernel retransmits {result['tcp_info']['retransmits_total']}, "
            f"stack drops {dict(stack.statistics().tcp.dropped)}"
        )


@pytest.mark.parametrize("offloads", [True, False], ids=["offloads-on", "offloads-off"])
async def test_one_gib_stack_to_kernel(netns: NetworkNamespace, offloads: bool) -> None:
    """The stack sends 1 GiB to a kernel listener: the kernel hashes the same bytes, and our
    TSO frames (offloads on) were segmented by the kernel into valid segments."""
    async with stack_on_tap(netns, offloads=offloads) as (stack, port):
        receiver = kernel_peer(netns, "--timeout", 200, "recv", PORT)
        with trio.fail_after(200):
            assert receiver.stdout is not None
            await trio.to_thread.run_sync(receiver.stdout.readline)  # {"listening": ...}
            sock = trio.socket.socket()
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4 << 20)
            await sock.connect((KERNEL_ADDRESS, PORT))
            started = time.monotonic()
            digest = await send_pattern(sock, GIB)  # the kernel closes after reading everything
            elapsed = time.monotonic() - started
            sock.close()
            result = await trio.to_thread.run_sync(peer_result, receiver)
        assert result["bytes"] == GIB
        assert result["sha256"] == digest
        if offloads:
            # Frames larger than the MTU left the port: the kernel did the segmenting (TSO).
            assert port.statistics().obytes / port.statistics().opackets > 1514
        REPORT.append(
            f"stack -> kernel, offloads {'on' if offloads else 'off'}: {GIB * 8 / elapsed / 1e9:.2f} Gbit/s "
            f"(with SHA-256 at both ends), kernel retransmits {result['tcp_info']['retransmits_total']}, "
            f"stack retransmitted segments {stack.statistics().tcp.counters['retransmitted_segments']}"
        )
