"""TCP over IPv6 through a port without TSO6 (AF_PACKET on a veth), against the Linux kernel.

Every port but the TAP leaves IPv6's TSO segments to the stack: ``_tcp6`` finishes each from the
connection's template and ``native/gso.c``'s ``yas_tcp6_segment`` (or its twin) cuts it into
MTU-sized frames with their own checksums.  The kernel at the far end of the veth is the judge of
those checksums: a bad one is a dropped segment, which the transfer's SHA-256 and the kernel's
retransmission-free counters would show.  Namespaces as in test_af_packet.py, with IPv6 on:
kernel ``veth1`` 2001:2::1/64, the stack 2001:2::2/64 (DAD off on both sides)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio
from tap_helpers import kernel_peer, peer_result, receive_hashed, requires_netns, send_pattern

from trio_yastack import open_port, open_stack
from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.stack import Ip6Config, _native
from trio_yastack.stack.tcp import _tcp6

KERNEL6, STACK6 = "2001:2::1", "2001:2::2"
MIB32 = 32 << 20


def _ipv6_on(namespace: NetworkNamespace) -> None:
    for knob in ("all", "default"):
        for setting in ("disable_ipv6=0", "accept_dad=0", "router_solicitations=0"):
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.{setting}"], check=True)


@pytest.fixture
def veth6() -> Iterator[tuple[NetworkNamespace, NetworkNamespace]]:
    """(stack_ns with veth0 unaddressed, kernel_ns with veth1 2001:2::1/64), IPv6 on in both."""
    with NetworkNamespace("yasafp6") as stack_ns, NetworkNamespace("yasafp6") as kernel_ns:
        _ipv6_on(stack_ns)
        _ipv6_on(kernel_ns)
        stack_ns.run(["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
                      "netns", kernel_ns.name], check=True)  # fmt: skip
        kernel_ns.run(["ip", "-6", "addr", "add", f"{KERNEL6}/64", "dev", "veth1", "nodad"], check=True)
        stack_ns.run(["ip", "link", "set", "veth0", "up"], check=True)
        kernel_ns.run(["ip", "link", "set", "veth1", "up"], check=True)
        yield stack_ns, kernel_ns


@requires_netns
@pytest.mark.parametrize("segmenter", ["native", "twin"])
async def test_ipv6_bulk_cut_in_software_reaches_the_kernel_intact(
    veth6: tuple[NetworkNamespace, NetworkNamespace], segmenter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 MiB stack -> kernel and 32 MiB kernel -> stack over IPv6 through AF_PACKET (offloads
    on: TSO for IPv4 only), each stream's SHA-256 the same at both ends; our frames at most
    1514 bytes, our TSO segments cut by the chosen segmenter, and the kernel counting no
    checksum error in what it took (``TcpInCsumErrors``)."""
    if segmenter == "twin":
        monkeypatch.setattr(_tcp6, "tcp6_segment", _native.py_tcp6_segment)
    elif _native.native_tcp6_segment is None:
        pytest.skip("native part not built on this machine")
    cut = [0]
    chosen = _tcp6.tcp6_segment

    def counting(frame: bytearray, mss: int) -> list[bytes]:
        cut[0] += 1
        return chosen(frame, mss)

    monkeypatch.setattr(_tcp6, "tcp6_segment", counting)
    stack_ns, kernel_ns = veth6
    with stack_ns.entered():
        port = open_port("af_packet:veth0,offloads=on")
    with port:
        assert port.capabilities.tso and not port.capabilities.tso6
        ip6 = Ip6Config(dad_transmits=0, router_solicitations=0)
        async with open_stack(port, ip=["198.18.0.2/24", f"{STACK6}/64"], ip6=ip6) as stack:
            with trio.fail_after(240):
                receiver = kernel_peer(kernel_ns, "--timeout", "200", "--bind", "::", "recv", 5002)
                assert receiver.stdout is not None
                assert json.loads(await trio.to_thread.run_sync(receiver.stdout.readline)) == {
                    "listening": 5002
                }
                sock = trio.socket.socket(trio.socket.AF_INET6)
                await sock.connect((KERNEL6, 5002))
                digest = await send_pattern(sock, MIB32)
                sock.close()
                result = await trio.to_thread.run_sync(peer_result, receiver, 200)
                assert result["bytes"] == MIB32 and result["sha256"] == digest

                listener = trio.socket.socket(trio.socket.AF_INET6)
                await listener.bind(("::", 5001))
                listener.listen(1)
                sender = kernel_peer(kernel_ns, "--timeout", "200", "send", STACK6, 5001, MIB32)
                conn, _ = await listener.accept()
                received, got = await receive_hashed(conn, MIB32)
                conn.close()
                listener.close()
                result = await trio.to_thread.run_sync(peer_result, sender, 200)
                assert received == MIB32 and got == result["sha256"]
            stats = stack.port_statistics()
            assert stats.oerrors == 0 and stats.obytes / stats.opackets <= 1514
            assert cut[0] > 100  # the bulk left as TSO segments cut by the segmenter
            assert stack.statistics().tcp.dropped == {}
    counters = kernel_ns.run(["nstat", "-az", "TcpInSegs", "TcpInCsumErrors"], check=True).stdout.split()
    assert int(counters[counters.index("TcpInSegs") + 1]) > MIB32 // 1428  # (nstat read this namespace)
    assert int(counters[counters.index("TcpInCsumErrors") + 1]) == 0
