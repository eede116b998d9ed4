"""The DPDK port (``dpdk:DEVARGS``) against the Linux kernel over a veth pair.

Two namespaces per test: the stack's (``veth0``, no address: the kernel must not answer for the
stack) and the kernel's (``veth1``, 198.18.0.1/24, its offloads off so that what it sends carries
complete checksums and fits the MTU, as frames from a real wire do: DPDK 22.11's
``net_af_packet`` and ``net_af_xdp`` hand up frames exactly as the interface has them).  Both
PMDs are tried: ``net_af_packet`` (a TPACKET_V2 ring) and ``net_af_xdp`` (an XDP socket, copy
mode on veth).  The pytest process opens DPDK ports itself (its EAL starts once and each port is
a hot-plugged device); the multi-core and privilege tests run programs of their own.

The first tests need no namespace: the spec, the EAL's arguments, and the twins of what is ours
in the shim (the receive buffer cut into frames, and the transmit path's frames: checksums
completed and TSO frames segmented, in C and in Python).
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import assert_no_reset_but_for_stale_segments
from tap_helpers import (
    KERNEL_ADDRESS,
    STACK_ADDRESS,
    NamespaceProgram,
    kernel_peer,
    peer_result,
    receive_hashed,
    requires_netns,
    send_pattern,
)

from trio_yastack import open_port, open_stack
from trio_yastack.nic import dpdk
from trio_yastack.nic.dpdk import (
    DpdkError,
    DpdkPort,
    eal_arguments,
    native_tx_prepare,
    parse_dpdk_spec,
    py_tx_prepare,
    unpack_burst,
)
from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.stack import OffloadPacket
from trio_yastack.stack._native import py_sum16

REPO = Path(__file__).resolve().parent.parent
requires_shim = pytest.mark.skipif(
    dpdk.dpdk_unavailable_reason() is not None, reason=str(dpdk.dpdk_unavailable_reason())
)
DRIVERS = ["net_af_packet", "net_af_xdp"]

MIB100 = 100 * 1024 * 1024
PORT = 5001


# -- no namespace: the spec, the EAL arguments, the twins ----------------------------------------
def test_spec_parses_vdevs_and_pci_addresses() -> None:
    spec = parse_dpdk_spec("dpdk:net_af_xdp0,iface=veth0,start_queue=1")
    assert (spec.name, spec.driver, spec.is_pci) == ("net_af_xdp0", "net_af_xdp", False)
    assert spec.get("iface") == "veth0" and spec.get("start_queue") == "1" and spec.get("nope") is None
    moved = spec.with_args(start_queue=3, queue_count=1)
    assert moved.devargs == "net_af_xdp0,iface=veth0,start_queue=3,queue_count=1"
    assert parse_dpdk_spec("dpdk:eth_af_packet1,iface=eth0").driver == "net_af_packet"
    pci = parse_dpdk_spec("dpdk:0000:03:00.0")
    assert pci.is_pci and pci.driver == "pci" and pci.name == "0000:03:00.0"
    with pytest.raises(ValueError, match="neither a vdev name"):
        parse_dpdk_spec("dpdk:veth0")
    with pytest.raises(ValueError, match="is not key=value"):
        parse_dpdk_spec("dpdk:net_af_packet0,iface")


def test_eal_arguments_defaults_give_way_to_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YASTACK_EAL_ARGS", raising=False)
    vdev = eal_arguments(parse_dpdk_spec("dpdk:net_af_packet0,iface=veth0"))
    assert {"--no-huge", "--no-shconf", "--no-pci", "--no-telemetry"} <= set(vdev)
    assert vdev[vdev.index("-m") + 1] == "128"
    assert any(arg.startswith("--lcores=0@(") for arg in vdev)
    pci = eal_arguments(parse_dpdk_spec("dpdk:0000:03:00.0"))
    assert "--no-huge" not in pci and "--no-pci" not in pci and pci[pci.index("-a") + 1] == "0000:03:00.0"
    monkeypatch.setenv("YASTACK_EAL_ARGS", "--socket-mem 512 -l 3 --log-level=debug")
    mine = eal_arguments(parse_dpdk_spec("dpdk:net_af_packet0,iface=veth0"), ["--no-pci"])
    assert "--no-huge" not in mine and not any(a.startswith("--lcores") for a in mine)
    assert mine.count("--no-pci") == 1 and "--log-level=notice" not in mine
    assert mine[-5:] == ["--socket-mem", "512", "-l", "3", "--log-level=debug", "--no-pci"][-5:]


def test_unpack_burst_cuts_the_buffer_at_the_lengths() -> None:
    frames = [bytes([i]) * (60 + i * 7) for i in range(20)]
    buffer = b"".join(frames) + b"\xa5" * 100  # what follows the last frame is never read
    assert unpack_burst(buffer, [len(f) for f in frames]) == frames
    assert unpack_burst(buffer, []) == []


def _tcp_frame(payload: int, rng: random.Random, *, partial: bool, gso: int = 0) -> bytes | bytearray:
    """An Ethernet + IPv4 + TCP frame (timestamps option) whose TCP checksum field holds the
    folded pseudo-header sum, as the stack leaves it in an OffloadPacket."""
    data = rng.randbytes(payload)
    tcp_len = 32 + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, rng.randrange(65536), 0x4000, 64, 6, 0,
        socket.inet_aton(STACK_ADDRESS), socket.inet_aton(KERNEL_ADDRESS),
    )  # fmt: skip
    ip = ip[:10] + (~py_sum16(ip, 0, 20, 0) & 0xFFFF).to_bytes(2, "big") + ip[12:]
    pseudo = py_sum16(ip, 12, 8, 6 + tcp_len)
    tcp = struct.pack("!HHIIBBHHH", 5001, 40000, rng.randrange(1 << 32), rng.randrange(1 << 32), 0x80, 0x18,
                      65535, pseudo, 0) + b"\x01\x01\x08\x0a" + rng.randbytes(8)  # fmt: skip
    frame = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + tcp + data
    if not partial:
        return frame
    packet = OffloadPacket(len(frame), gso)
    packet[:] = frame
    return packet


def _tcp_checksum_ok(frame: bytes) -> bool:
    ihl = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    pseudo = py_sum16(frame, 26, 8, 6 + total - ihl)
    return py_sum16(frame, 14 + ihl, total - ihl, pseudo) == 0xFFFF


@requires_shim
def test_tx_prepare_native_and_twin_agree() -> None:
    """The shim's transmit path (``yas_dpdk_tx_prepare``, the C that ``tx_burst`` runs) and its
    Python twin build the same frames from the same bursts: finished frames as they are,
    checksums completed, TSO frames segmented, too-long and non-TCP offload frames dropped;
    every TCP frame that comes out has a valid checksum and fits the MTU."""
    rng = random.Random(17)
    for _ in range(40):
        burst: list[bytes | bytearray] = []
        for _ in range(rng.randrange(1, 12)):
            kind = rng.randrange(5)
            if kind == 0:
                burst.append(rng.randbytes(rng.randrange(60, 1519)))  # finished, not TCP: as is
            elif kind == 1:
                burst.append(_tcp_frame(rng.randrange(0, 1448), rng, partial=True))
            elif kind == 2:
                burst.append(_tcp_frame(rng.randrange(1449, 64000), rng, partial=True, gso=1448))
            elif kind == 3:
                burst.append(rng.randbytes(rng.randrange(1519, 3000)))  # too long: dropped
            else:
                bad = OffloadPacket(100)  # an offload frame that is not TCP/IPv4: dropped
                bad[:] = rng.randbytes(100)
                burst.append(bad)
        native = native_tx_prepare(burst, 1518)
        twin = py_tx_prepare(burst, 1518)
        assert native == twin
        for frame in native:
            assert len(frame) <= 1518
            if frame[12:14] == b"\x08\x00" and frame[23] == 6 and len(frame) >= 54:
                assert _tcp_checksum_ok(frame)


def test_a_missing_shim_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dpdk, "_extension", None)
    with pytest.raises(DpdkError, match="libdpdk-dev") as caught:
        open_port("dpdk:net_af_packet0,iface=veth0")
    assert "librte-net-af-xdp23" in str(caught.value)


# -- the wire: veth0 (the stack's, 2 queues, no address) and veth1 (the kernel's) ----------------
def make_wire(left: NetworkNamespace, right: NetworkNamespace, queues_each: int = 1) -> None:
    queues = ["numtxqueues", str(queues_each), "numrxqueues", str(queues_each)]
    left.run(["ip", "link", "add", "veth0", *queues, "type", "veth", "peer", "name", "veth1", *queues,
              "netns", right.name], check=True)  # fmt: skip
    right.run(["ip", "addr", "add", f"{KERNEL_ADDRESS}/24", "dev", "veth1"], check=True)
    right.run(["ethtool", "-K", "veth1", "tx", "off", "tso", "off", "gso", "off"], check=True)
    left.run(["ip", "link", "set", "veth0", "up"], check=True)
    right.run(["ip", "link", "set", "veth1", "up"], check=True)


@pytest.fixture(scope="module")
def bpffs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private bpffs for libxdp (``LIBXDP_BPFFS``, inherited by the programs the tests start),
    so net_af_xdp can put a socket on each queue of an interface.  One for the whole module:
    libxdp remembers the directory it first found for the rest of the process."""
    path = tmp_path_factory.mktemp("bpffs")
    subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIBXDP_BPFFS", str(path))
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def wire(bpffs: Path) -> Iterator[tuple[NetworkNamespace, NetworkNamespace]]:
    """The two namespaces joined by veth0/veth1, one queue each way (with the module's bpffs for
    libxdp)."""
    with NetworkNamespace("yasd") as left, NetworkNamespace("yasd") as right:
        make_wire(left, right)
        yield left, right


@pytest.fixture
def wire2(bpffs: Path) -> Iterator[tuple[NetworkNamespace, NetworkNamespace]]:
    """The same with two queues each way: the kernel spreads flows over veth0's two queues."""
    with NetworkNamespace("yasd") as left, NetworkNamespace("yasd") as right:
        make_wire(left, right, queues_each=2)
        yield left, right


def open_in(namespace: NetworkNamespace, spec: str, **options: object) -> DpdkPort:
    with namespace.entered():
        return DpdkPort(spec, **options)  # type: ignore[arg-type]  # the test passes DpdkPort's own options


netns_tests = [requires_shim, requires_netns, pytest.mark.netns]


def _apply(marks: list[pytest.MarkDecorator]):  # type: ignore[no-untyped-def]  # a test decorator
    def decorate(test):  # type: ignore[no-untyped-def]
        for mark in marks:
            test = mark(test)
        return test

    return decorate


in_netns = _apply(netns_tests)


def kernel_mac(namespace: NetworkNamespace) -> str:
    return namespace.run(["cat", "/sys/class/net/veth1/address"], check=True).stdout.strip()


@in_netns
@pytest.mark.parametrize("driver", DRIVERS)
async def test_arp_and_ping_both_ways(wire: tuple[NetworkNamespace, NetworkNamespace], driver: str) -> None:
    """The stack pings the kernel first (ARP resolves veth1's real MAC), then the kernel pings
    the stack 50 times without loss, and its neighbour entry holds the port's MAC (veth0's)."""
    left, right = wire
    with open_in(left, f"dpdk:{driver}0,iface=veth0") as port:
        veth0_mac = left.run(["cat", "/sys/class/net/veth0/address"], check=True).stdout.strip()
        assert str(port.capabilities.mac) == veth0_mac
        async with open_stack(port, ip=f"{STACK_ADDRESS}/24") as stack:
            async with stack.ping_socket() as pinger:
                with trio.fail_after(10):
                    reply = await pinger.ping(KERNEL_ADDRESS, 1, b"dpdk-ping", timeout=5)
            assert reply.source == KERNEL_ADDRESS and reply.data == b"dpdk-ping"
            learned = stack.core.arp.cache[int.from_bytes(socket.inet_aton(KERNEL_ADDRESS), "big")][0]
            assert ":".join(f"{octet:02x}" for octet in learned) == kernel_mac(right)
            with trio.fail_after(60):
                done = await trio.to_thread.run_sync(
                    right.run, ["ping", "-n", "-q", "-c", "50", "-i", "0.01", "-w", "30", STACK_ADDRESS]
                )
            assert done.returncode == 0, done.stdout + done.stderr
            assert " 0% packet loss" in done.stdout
            assert stack.statistics().icmp.echo_replies_sent >= 50
            neigh = json.loads(right.run(["ip", "-j", "neigh", "show", STACK_ADDRESS, "dev", "veth1"]).stdout)
            assert neigh and neigh[0]["lladdr"] == veth0_mac
            stats = port.statistics()
            assert stats.ipackets >= 51 and stats.opackets >= 51 and stats.oerrors == 0


@in_netns
@pytest.mark.parametrize("driver", DRIVERS)
async def test_100_mib_each_way(wire: tuple[NetworkNamespace, NetworkNamespace], driver: str) -> None:
    """100 MiB kernel -> stack, then 100 MiB stack -> kernel (the stack's 64 KB TSO frames cut by
    the shim in C), each checked by SHA-256 at both ends."""
    left, right = wire
    with open_in(left, f"dpdk:{driver}0,iface=veth0") as port:
        async with open_stack(port, ip=f"{STACK_ADDRESS}/24") as stack:
            listener = trio.socket.socket()
            listener.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
            await listener.bind((STACK_ADDRESS, PORT))
            listener.listen(1)
            sender = kernel_peer(right, "--timeout", 200, "send", STACK_ADDRESS, PORT, MIB100)
            with trio.fail_after(200):
                conn, _ = await listener.accept()
                started = time.monotonic()
                received, digest = await receive_hashed(conn, MIB100)
                inbound = time.monotonic() - started
                conn.close()
                result = await trio.to_thread.run_sync(peer_result, sender)
            listener.close()
            assert received == MIB100 and digest == result["sha256"]

            receiver = kernel_peer(right, "--timeout", 200, "recv", PORT)
            with trio.fail_after(200):
                assert receiver.stdout is not None
                await trio.to_thread.run_sync(receiver.stdout.readline)  # {"listening": ...}
                sock = trio.socket.socket()
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4 << 20)
                await sock.connect((KERNEL_ADDRESS, PORT))
                started = time.monotonic()
                sent_digest = await send_pattern(sock, MIB100)
                outbound = time.monotonic() - started
                sock.close()
                result = await trio.to_thread.run_sync(peer_result, receiver)
            assert result["bytes"] == MIB100 and result["sha256"] == sent_digest
            assert stack.statistics().tcp.segments_sent > MIB100 // 1448  # counted as the wire carries them
            print(f"dpdk {driver}: in {MIB100 * 8 / inbound / 1e9:.2f} Gbit/s, out "
                  f"{MIB100 * 8 / outbound / 1e9:.2f} Gbit/s, port {port.statistics()}")  # fmt: skip


@in_netns
@pytest.mark.parametrize("driver", DRIVERS)
async def test_half_closeable_stream_conformance(
    wire: tuple[NetworkNamespace, NetworkNamespace], driver: str
) -> None:
    """trio's own ``check_half_closeable_stream``: a stack stream whose other end is a kernel
    socket across the DPDK port (accepted by a kernel listener in the other namespace).  The
    clogged pairs have 4 KiB buffers both sides, filled both ways until nothing more goes."""
    left, right = wire
    listeners = []
    for buffer in (None, 4096):
        with right.entered():
            kernel_listener = socket.socket()
        if buffer:
            kernel_listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            kernel_listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        kernel_listener.bind((KERNEL_ADDRESS, 0))
        kernel_listener.listen(16)
        listeners.append(trio.socket.from_stdlib_socket(kernel_listener))
    with open_in(left, f"dpdk:{driver}0,iface=veth0") as port:
        async with open_stack(port, ip=f"{STACK_ADDRESS}/24") as stack:

            async def pair(buffer: int | None = None) -> tuple[trio.SocketStream, trio.SocketStream]:
                listener = listeners[buffer is not None]
                ours = stack.socket()
                if buffer:
                    ours.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, buffer)
                    ours.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, buffer)
                async with trio.open_nursery() as nursery:
                    accepted: list[trio.socket.SocketType] = []

                    async def accept() -> None:
                        accepted.append((await listener.accept())[0])

                    nursery.start_soon(accept)
                    await ours.connect(listener.getsockname())
                return trio.SocketStream(ours), trio.SocketStream(accepted[0])

            async def clog(stream: trio.SocketStream) -> int:
                """Send until a second passes with nothing accepted (a clean veth: no loss to
                wait out), so the sender's buffer and the peer's window are both full."""
                total = 0
                while True:
                    sent = 0
                    with trio.move_on_after(1.0):
                        sent = await stream.socket.send(b"c" * 4096)
                    if not sent:
                        return total
                    total += sent
                    assert total < 16 << 20, "the stream never clogged"

            async def clogged() -> tuple[trio.SocketStream, trio.SocketStream]:
                ours, theirs = await pair(4096)
                assert await clog(ours) > 0
                assert await clog(theirs) > 0
                return ours, theirs

            with trio.fail_after(180):
                await trio.testing.check_half_closeable_stream(pair, clogged)
    for listener in listeners:
        listener.close()


@in_netns
@pytest.mark.parametrize("driver", DRIVERS)
def test_curl_to_yastack_serve(wire: tuple[NetworkNamespace, NetworkNamespace], driver: str) -> None:
    """``yastack serve examples/hello.py:app --nic dpdk:...``: curl from the kernel's side."""
    left, right = wire
    program = NamespaceProgram(
        left,
        [sys.executable, "-m", "trio_yastack", "serve", "examples/hello.py:app", "--nic",
         f"dpdk:{driver}0,iface=veth0", "--bind", "8000"],
    )  # fmt: skip
    try:
        program.wait_for_line("Running on http://198.18.0.2:8000", timeout=60)
        loop = "for i in $(seq 20); do curl -sS --max-time 10 http://198.18.0.2:8000/ || exit 1; echo; done"
        result = right.run(["sh", "-c", loop], timeout=240)
        assert result.returncode == 0, result.stderr + program.output
        assert result.stdout.splitlines() == ["Hello, world!"] * 20
    finally:
        if program.process.poll() is None:
            program.send_signal(signal.SIGTERM, b"trio_yastack")
        program.wait(60)


@in_netns
@pytest.mark.parametrize("driver", DRIVERS)
def test_two_cores_share_the_flows(wire2: tuple[NetworkNamespace, NetworkNamespace], driver: str) -> None:
    """``trio_yastack.run(cores=2)`` on a DPDK port (each worker its own EAL, opened after fork):
    200 concurrent kernel connections echo intact and both cores accept some.  ``net_af_xdp``
    gives each worker a queue of veth0 (each reads its own: nothing dispatched); with
    ``net_af_packet`` core 0 reads every frame and dispatches core 1's flows (software RSS)."""
    left, right = wire2
    program = NamespaceProgram(
        left,
        [sys.executable, str(REPO / "tests" / "percore_programs.py"), "echo", f"dpdk:{driver}0,iface=veth0"],
    )
    try:
        program.wait_for_lines("READY 0", "READY 1", timeout=60)
        peer = kernel_peer(right, "--timeout", "60", "echo-clients", STACK_ADDRESS, 7, 200, 4096)
        result = peer_result(peer, timeout=90)
        assert result["connections"] == 200 and result["mismatched"] == []
    finally:
        if program.process.poll() is None:
            program.send_signal(signal.SIGTERM, b"percore_programs.py")
    assert program.wait(60) == 0, program.output
    [line] = [line for line in program.output.splitlines() if line.startswith("RESULT ")]
    results = json.loads(line.removeprefix("RESULT "))
    accepted = [r["tcp"]["connections_accepted"] for r in results]
    assert sum(accepted) == 200 and all(count > 0 for count in accepted), accepted
    for r in results:
        assert_no_reset_but_for_stale_segments(r["tcp"])
    if driver == "net_af_xdp":
        assert all(r["dispatch"]["dispatched"] == 0 and r["dispatch"]["local"] > 0 for r in results), results
    else:
        assert results[0]["dispatch"]["dispatched"] > 0 and results[1]["dispatch"]["local"] == 0, results
    print(f"dpdk {driver} two cores: accepted {accepted}, dispatch {[r['dispatch'] for r in results]}")


# -- clear errors ----------------------------------------------------------------------------------
@in_netns
def test_a_missing_interface_is_named(wire: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    left, _ = wire
    with pytest.raises(DpdkError, match="no interface 'veth9' in this network namespace"):
        open_in(left, "dpdk:net_af_packet0,iface=veth9")


@in_netns
def test_an_interface_with_a_kernel_address_is_refused(
    wire: tuple[NetworkNamespace, NetworkNamespace],
) -> None:
    left, _ = wire
    left.run(["ip", "addr", "add", f"{STACK_ADDRESS}/24", "dev", "veth0"], check=True)
    with pytest.raises(DpdkError, match=r"veth0 carries 198\.18\.0\.2 on the kernel side"):
        open_in(left, "dpdk:net_af_xdp0,iface=veth0")


@in_netns
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_busy_queue_is_refused(wire2: tuple[NetworkNamespace, NetworkNamespace], driver: str) -> None:
    """A second port on a receive queue that a port reads (another vdev name, so DPDK itself
    would take it) is refused; net_af_xdp's other queue stays free.  Closed, an af_packet port's
    interface is free again; a net_af_xdp queue is not, for this process (DPDK 22.11 leaves its
    XDP socket bound), and says so."""
    left, _ = wire2
    one = ",queue_count=1" if driver == "net_af_xdp" else ""  # veth0 has two queues
    with open_in(left, f"dpdk:{driver}0,iface=veth0{one}"):
        with pytest.raises(DpdkError, match=r"queue \S+ is busy"):
            open_in(left, f"dpdk:{driver}1,iface=veth0{one}")
        if driver == "net_af_xdp":
            with open_in(left, "dpdk:net_af_xdp1,iface=veth0,start_queue=1,queue_count=1") as other:
                assert other.statistics().oerrors == 0
    if driver == "net_af_packet":
        with open_in(left, f"dpdk:{driver}1,iface=veth0"):  # free again once closed
            pass
    else:
        with pytest.raises(DpdkError, match="opened queue 0 of veth0 with net_af_xdp before"):
            open_in(left, f"dpdk:{driver}1,iface=veth0{one}")


@in_netns
def test_one_af_xdp_queue_of_several_is_refused(wire2: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    """One core on a 2-queue interface without queue_count: the kernel would steer some flows to
    the queue nobody reads, so opening refuses and says what to do instead."""
    left, _ = wire2
    with pytest.raises(DpdkError, match="veth0 has 2 receive queues") as caught:
        open_in(left, "dpdk:net_af_xdp0,iface=veth0")
    assert "--cores N" in str(caught.value) and "ethtool -L veth0" in str(caught.value)


_UNPRIVILEGED = """
import sys
from trio_yastack.nic.dpdk import DpdkError, DpdkPort
try:
    DpdkPort(sys.argv[1])
except DpdkError as exc:
    print("ERROR", exc.errno, exc.strerror)
"""


@in_netns
@pytest.mark.parametrize("driver", DRIVERS)
def test_no_privilege_is_explained(wire: tuple[NetworkNamespace, NetworkNamespace], driver: str) -> None:
    left, _ = wire
    done = left.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", _UNPRIVILEGED, f"dpdk:{driver}0,iface=veth0"],
        timeout=60, cwd=REPO,
    )  # fmt: skip
    assert "ERROR 1 " in done.stdout, done.stdout + done.stderr
    assert "needs CAP_NET_RAW" in done.stdout
