"""The AF_PACKET port: its ring walk (C against its Python twin), and the stack on a veth through it.

Ring-walk tests need nothing but the extension.  Interop tests each make two namespaces joined by
a veth pair: the stack's side ``veth0`` (no address: the port refuses one) in ``stack_ns``, the
kernel at ``veth1`` 198.18.0.1/24 in ``kernel_ns``; the stack is 198.18.0.2/24 with veth0's MAC.
Every wait is on a real event and bounded (``trio.fail_after``, process timeouts).
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
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

from trio_yastack import Stack, open_port, open_stack
from trio_yastack.nic import af_packet
from trio_yastack.nic.af_packet import (
    TP_STATUS_CSUMNOTREADY,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    AfPacketError,
    AfPacketOptions,
    AfPacketPort,
    RxCursor,
    native_rx_walk,
    native_rx_walk_v2,
    parse_af_packet_spec,
    py_rx_walk,
    py_rx_walk_v2,
)
from trio_yastack.nic.netns import NetworkNamespace

REPO = Path(__file__).resolve().parent.parent
needs_native = pytest.mark.skipif(not af_packet.NATIVE, reason="the AF_PACKET extension is not built")
#: a small ring for tests: 8 blocks of 64 KiB (frames up to 64 KiB - headers kept whole)
SMALL = "block_size=131072,blocks=8,frame_size=66048"


# -- the spec -------------------------------------------------------------------------------------
def test_spec_parses_every_option_and_names_the_known_ones() -> None:
    options = parse_af_packet_spec(
        "af_packet:veth0,queues=2,block_size=65536,blocks=4,frame_size=2048,fanout=7,qdisc_bypass=off"
    )
    assert options == AfPacketOptions(
        name="veth0", queues=2, block_size=65536, blocks=4, frame_size=2048, fanout=7, qdisc_bypass=False
    )
    assert parse_af_packet_spec("af_packet:eth1,fanout=none").fanout is None
    with pytest.raises(ValueError, match="block_size, block_timeout, blocks, fanout"):
        parse_af_packet_spec("af_packet:eth0,colour=blue")
    with pytest.raises(ValueError, match="bad value 'x' for blocks"):
        parse_af_packet_spec("af_packet:eth0,blocks=x")
    with pytest.raises(ValueError, match="needs an interface name"):
        parse_af_packet_spec("af_packet:")
    with pytest.raises(ValueError, match="block_size 1000 must be a positive multiple"):
        AfPacketPort(AfPacketOptions(name="lo", block_size=1000))
    with pytest.raises(ValueError, match=r"version is 2 .* or 3"):
        parse_af_packet_spec("af_packet:eth0,version=4")


def test_yastack_serve_reports_a_bad_spec_in_one_line() -> None:
    """A mistyped option is one line from ``yastack serve``, before anything is opened."""
    done = subprocess.run(
        [sys.executable, "-m", "trio_yastack", "serve", "examples/hello.py:app", "--nic",
         "af_packet:veth0,frame_size=100"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "yastack serve: af_packet:veth0: frame_size 100 must be a multiple of 16, 128..block_size"
    ]


# -- the ring walk: C and its Python twin ----------------------------------------------------------
Frame = tuple[bytes, int, int, int]  # wire bytes as the kernel stores them, tp_status, vlan tci, tpid


def make_ring(block_size: int, blocks: list[list[Frame] | None]) -> bytearray:
    """TPACKET_V3 ring memory as the kernel lays it out (packet_mmap.rst): each block a
    ``tpacket_block_desc`` and its frames, each a ``tpacket3_hdr`` at a 16-byte aligned offset with
    the frame ``tp_mac`` bytes in; ``None`` is a block the kernel still owns (left zeroed)."""
    ring = bytearray(b"\xa5" * (block_size * len(blocks)))
    for index, frames in enumerate(blocks):
        base = index * block_size
        if frames is None:
            ring[base : base + 48] = bytes(48)  # TP_STATUS_KERNEL, no frames
            continue
        offset = 48
        for number, (data, status, tci, tpid) in enumerate(frames):
            mac = 66 + number % 3 * 2  # the kernel's tp_mac varies with its reserve and alignment
            next_offset = (mac + len(data) + 15) & ~15 if number < len(frames) - 1 else 0
            struct.pack_into("=IIIIIIHHIIHH8x", ring, base + offset, next_offset, 1, 2, len(data),
                             len(data), status | TP_STATUS_USER, mac, mac + 14, 0, tci, tpid, 0)  # fmt: skip
            ring[base + offset + mac : base + offset + mac + len(data)] = data
            offset += next_offset
        struct.pack_into("=IIIIII", ring, base, 3, 0, TP_STATUS_USER, len(frames), 48, offset)
    return ring


def walk_both(ring: bytearray, block_size: int, bursts: list[tuple[int, int]]) -> list[Any]:
    """The same bursts (max_n, out_len) with each walk on its own copy of ``ring``; asserts they
    agree on frames, statuses, cursors and the ring memory they leave, and returns the frames."""
    c_ring, py_ring = bytearray(ring), bytearray(ring)
    c_cursor, py_cursor = RxCursor(), RxCursor()
    count = len(ring) // block_size
    seen = []
    for max_n, out_len in bursts:
        c_result = native_rx_walk(c_ring, block_size, count, c_cursor, max_n, out_len)
        py_result = py_rx_walk(py_ring, block_size, count, py_cursor, max_n, out_len)
        assert c_result == py_result
        assert c_cursor.as_tuple() == py_cursor.as_tuple()
        assert c_ring == py_ring
        seen.append(c_result)
    return seen


@needs_native
def test_walk_twins_agree_on_a_made_ring_across_blocks_vlan_and_limits() -> None:
    """Three handed-over blocks and one the kernel still fills: bursts cut by ``max_n`` and by the
    output buffer stop mid-block and resume there; a stripped VLAN tag is put back (802.1Q, or the
    TPID the kernel reports); finished blocks go back to the kernel; the owned block stops the walk."""
    rng = random.Random(17)
    frames = [
        [(rng.randbytes(rng.randrange(60, 1514)), TP_STATUS_CSUMNOTREADY * (i % 2), 0, 0) for i in range(n)]
        for n in (5, 1, 7)
    ]
    frames[1] = [(rng.randbytes(100), TP_STATUS_VLAN_VALID, 0x2005, 0)]
    frames[2][3] = (rng.randbytes(200), TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID, 7, 0x88A8)
    block_size = 16384
    ring = make_ring(block_size, [*frames, None])
    seen = walk_both(ring, block_size, [(3, 1 << 16), (4, 1 << 16), (64, 1600), (64, 1 << 16), (64, 1 << 16)])
    got = [frame for burst in seen for frame in burst[0]]
    flat = [frame for block in frames for frame in block]
    assert len(got) == 13 and [len(burst[0]) for burst in seen] == [3, 4, 1, 5, 0]
    assert got[5] == flat[5][0][:12] + b"\x81\x00\x20\x05" + flat[5][0][12:]
    assert got[9] == flat[9][0][:12] + b"\x88\xa8\x00\x07" + flat[9][0][12:]
    assert [g for i, g in enumerate(got) if i not in (5, 9)] == [
        f[0] for i, f in enumerate(flat) if i not in (5, 9)
    ]


@needs_native
def test_walk_twins_give_up_a_block_whose_header_points_outside_it() -> None:
    """A frame header whose ``tp_mac`` + ``tp_snaplen`` runs past the block is not read: the block
    is given back and counted in ``bad_blocks``; the next block's frames still come."""
    block_size = 4096
    ring = make_ring(block_size, [[(bytes(64), 0, 0, 0)], [(b"\x01" * 64, 0, 0, 0)]])
    struct.pack_into("=I", ring, 48 + 12, 5000)  # block 0's first frame: snaplen beyond the block
    [(frames, statuses)] = walk_both(ring, block_size, [(8, 1 << 16)])
    assert frames == [b"\x01" * 64] and statuses == [TP_STATUS_USER]


def make_ring_v2(block_size: int, frame_size: int, slots: list[Frame | None]) -> bytearray:
    """TPACKET_V2 ring memory: ``block_size // frame_size`` slots per block, each a
    ``tpacket2_hdr`` and its frame at ``tp_mac``; ``None`` is a slot the kernel still owns."""
    per_block = block_size // frame_size
    ring = bytearray(b"\xa5" * (block_size * -(-len(slots) // per_block)))
    for slot, frame in enumerate(slots):
        at = slot // per_block * block_size + slot % per_block * frame_size
        if frame is None:
            ring[at : at + 4] = bytes(4)  # TP_STATUS_KERNEL
            continue
        data, status, tci, tpid = frame
        mac = 34 + slot % 3 * 16
        header = (status | TP_STATUS_USER, len(data), len(data), mac, mac + 14, 1, 2, tci, tpid)
        struct.pack_into("=IIIHHIIHH4x", ring, at, *header)
        ring[at + mac : at + mac + len(data)] = data
    return ring


@needs_native
def test_walk_v2_twins_agree_on_a_made_ring() -> None:
    """TPACKET_V2 slots across two blocks: bursts cut by ``max_n`` and by the output buffer resume
    at the right slot, VLAN tags go back in, an oversized slot header is skipped and counted, and
    the slot the kernel still owns stops the walk; both twins leave the same ring and cursor."""
    rng = random.Random(29)
    block_size, frame_size = 8192, 2048
    slots: list[Frame | None] = [(rng.randbytes(rng.randrange(60, 1500)), 0, 0, 0) for _ in range(6)]
    vlan_frame = rng.randbytes(90)
    slots[2] = (vlan_frame, TP_STATUS_VLAN_VALID | TP_STATUS_CSUMNOTREADY, 0x0123, 0)
    slots += [None, (bytes(64), 0, 0, 0)]  # slot 6 still the kernel's: slot 7 must wait
    ring = make_ring_v2(block_size, frame_size, slots)
    struct.pack_into("=I", ring, 4 * frame_size + 8, 4000)  # slot 4 (block 1): snaplen beyond its slot
    c_ring, py_ring = bytearray(ring), bytearray(ring)
    c_cursor, py_cursor = RxCursor(), RxCursor()
    got = []
    for max_n, out_len in [(2, 1 << 16), (8, 100), (8, 1 << 16), (8, 1 << 16)]:
        c_result = native_rx_walk_v2(c_ring, block_size, frame_size, 8, c_cursor, max_n, out_len)
        py_result = py_rx_walk_v2(py_ring, block_size, frame_size, 8, py_cursor, max_n, out_len)
        assert c_result == py_result and c_cursor.as_tuple() == py_cursor.as_tuple() and c_ring == py_ring
        got.append(c_result[0])
    assert [len(burst) for burst in got] == [2, 1, 2, 0]
    assert got[1][0] == vlan_frame[:12] + b"\x81\x00\x01\x23" + vlan_frame[12:]
    assert c_cursor.block == 6 and c_cursor.bad_blocks == 1


# -- the real thing: namespaces and a veth ---------------------------------------------------------
@pytest.fixture
def veth() -> Iterator[tuple[NetworkNamespace, NetworkNamespace]]:
    """(stack_ns with veth0 unaddressed, kernel_ns with veth1 198.18.0.1/24), two queues each."""
    with NetworkNamespace("yasafp") as stack_ns, NetworkNamespace("yasafp") as kernel_ns:
        queues = ["numtxqueues", "2", "numrxqueues", "2"]
        stack_ns.run(["ip", "link", "add", "veth0", *queues, "type", "veth", "peer", "name", "veth1", *queues,
                      "netns", kernel_ns.name], check=True)  # fmt: skip
        kernel_ns.run(["ip", "addr", "add", f"{KERNEL_ADDRESS}/24", "dev", "veth1"], check=True)
        stack_ns.run(["ip", "link", "set", "veth0", "up"], check=True)
        kernel_ns.run(["ip", "link", "set", "veth1", "up"], check=True)
        yield stack_ns, kernel_ns


def open_in(namespace: NetworkNamespace, spec: str) -> Any:
    with namespace.entered():
        return open_port(spec)


@asynccontextmanager
async def stack_on_veth(
    stack_ns: NetworkNamespace, spec: str = f"af_packet:veth0,{SMALL}"
) -> AsyncIterator[Stack]:
    with open_in(stack_ns, spec) as port:
        async with open_stack(port, ip=f"{STACK_ADDRESS}/24") as stack:
            yield stack


async def in_thread(function: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True)


@requires_netns
@needs_native
async def test_walk_twins_agree_on_real_ring_memory(veth: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    """Frames the kernel put in a real ring (pings from the far end, partial checksums from a
    local sender included): a snapshot of the mapped ring, walked by each twin, gives the same."""
    stack_ns, kernel_ns = veth
    with open_in(stack_ns, f"af_packet:veth0,{SMALL},block_timeout=1") as port:
        done = await in_thread(kernel_ns.run, ["ping", "-c", "3", "-i", "0.01", "-W", "0.1", "198.18.0.9"])
        assert "3 packets transmitted" in done.stdout
        queue = port._queues[0]
        with trio.fail_after(5):
            await port.wait_rx(0)  # a block handed over
        snapshot = bytearray(queue.ring[:])
        [(frames, _)] = walk_both(snapshot, port.options.block_size, [(64, 1 << 20)])
        assert frames and all(frame[12:14] == b"\x08\x06" for frame in frames)  # ARP requests for .9
    with open_in(stack_ns, "af_packet:veth0,version=2,block_size=65536,blocks=2,frame_size=2048") as port:
        await in_thread(kernel_ns.run, ["ping", "-c", "2", "-i", "0.01", "-W", "0.1", "198.18.0.8"])
        with trio.fail_after(5):
            await port.wait_rx(0)  # a slot handed over
        snapshot = bytearray(port._queues[0].ring[:])
        c_ring, py_ring, c_cursor, py_cursor = (
            bytearray(snapshot),
            bytearray(snapshot),
            RxCursor(),
            RxCursor(),
        )
        c_result = native_rx_walk_v2(c_ring, 65536, 2048, 64, c_cursor, 64, 1 << 20)
        assert c_result == py_rx_walk_v2(py_ring, 65536, 2048, 64, py_cursor, 64, 1 << 20)
        assert c_ring == py_ring and c_result[0] and all(f[12:14] == b"\x08\x06" for f in c_result[0])


@requires_netns
@needs_native
@pytest.mark.parametrize("offloads", [True, False], ids=["offloads-on", "offloads-off"])
def test_tx_burst_twins_send_the_same_frames(
    veth: tuple[NetworkNamespace, NetworkNamespace], offloads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One burst through ``yas_afp_tx_burst`` (sendmmsg) and the same through its twin (``os.write``
    per frame): the kernel's end of the veth receives the same frames, in order, byte for byte; a
    frame longer than the MTU is refused by the kernel, counted in ``oerrors`` and accepted (DPDK
    semantics), and the frames after it still go."""
    stack_ns, kernel_ns = veth
    rng = random.Random(5)
    with kernel_ns.entered():
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))  # local experimental
    tap.bind(("veth1", 0x88B5))
    tap.settimeout(5)
    with tap, open_in(stack_ns, f"af_packet:veth0,{SMALL},offloads={'on' if offloads else 'off'}") as port:
        head = b"\xff" * 6 + bytes(port.capabilities.mac) + b"\x88\xb5"
        frames = [head + rng.randbytes(size) for size in (46, 1500, 200, 1600, 64)]  # 1600: too long
        sent = []
        for walk in ("native", "twin"):
            if walk == "twin":
                monkeypatch.setattr(af_packet, "_extension", None)
            assert port.tx_burst(0, frames) == len(frames)
            sent.append([tap.recv(4096) for _ in range(4)])
        stats = port.statistics()
    expected = [frame for frame in frames if len(frame) <= 1514]
    assert sent == [expected, expected]
    assert (stats.opackets, stats.oerrors, stats.obytes) == (8, 2, 2 * sum(map(len, expected)))


@requires_netns
@pytest.mark.parametrize("walk", ["native", "twin"])
@pytest.mark.parametrize("version", [3, 2], ids=["tpacket-v3", "tpacket-v2"])
async def test_arp_and_ping_both_ways(
    veth: tuple[NetworkNamespace, NetworkNamespace], walk: str, version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel pings the stack (its ARP request answered with veth0's MAC) and the stack pings
    the kernel (its own ARP request answered); the port counts what moved.  ``twin``: the port
    runs on the Python ring walk and ``os.write``, as without the extension."""
    if walk == "twin":
        monkeypatch.setattr(af_packet, "_extension", None)
    elif not af_packet.NATIVE:
        pytest.skip("the AF_PACKET extension is not built")
    stack_ns, kernel_ns = veth
    async with stack_on_veth(stack_ns, f"af_packet:veth0,{SMALL},version={version}") as stack:
        with trio.fail_after(20):
            done = await in_thread(
                kernel_ns.run, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "5", STACK_ADDRESS]
            )
            assert done.returncode == 0, done.stdout
            pinger = stack.ping_socket()
            reply = await pinger.ping(KERNEL_ADDRESS, 1, b"yastack", timeout=5)
            assert (reply.source, reply.seq, reply.data) == (KERNEL_ADDRESS, 1, b"yastack")
        neighbours = kernel_ns.run(["ip", "neigh", "show", STACK_ADDRESS]).stdout
        assert str(stack.mac).lower() in neighbours.lower()
        stats = stack.port_statistics()
        assert stats.ipackets >= 4 and stats.opackets >= 4 and stats.oerrors == 0
        assert stack.statistics().icmp.echo_replies_sent == 3


@requires_netns
async def test_promisc_for_a_mac_of_our_own(veth: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    """``promisc=on`` puts veth0 in promiscuous mode while the port is open (membership of the
    socket: the kernel drops it when the socket closes), and a stack with a MAC of its own answers
    the kernel's ping.  (A veth hands every frame to packet sockets anyway; a physical NIC filters
    by MAC in hardware unless promiscuous.)"""
    stack_ns, kernel_ns = veth

    def promiscuous() -> bool:  # the device's promiscuity count (the PROMISC flag shows only ip's own)
        return " promiscuity 1 " in stack_ns.run(["ip", "-d", "link", "show", "veth0"]).stdout

    with open_in(stack_ns, f"af_packet:veth0,{SMALL},promisc=on") as port:
        assert promiscuous()
        async with open_stack(port, ip=f"{STACK_ADDRESS}/24", mac="02:79:61:00:00:42"):
            done = await in_thread(kernel_ns.run, ["ping", "-n", "-c", "1", "-W", "5", STACK_ADDRESS])
    assert done.returncode == 0, done.stdout
    assert "02:79:61:00:00:42" in kernel_ns.run(["ip", "neigh", "show", STACK_ADDRESS]).stdout
    assert not promiscuous()


@requires_netns
def test_yastack_serve_answers_curl(veth: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    """``yastack serve examples/hello.py:app --nic af_packet:veth0`` answers a kernel-side curl."""
    stack_ns, kernel_ns = veth
    program = NamespaceProgram(
        stack_ns,
        [sys.executable, "-m", "trio_yastack", "serve", "examples/hello.py:app", "--nic", "af_packet:veth0",
         "--bind", "8000"],
    )  # fmt: skip
    try:
        program.wait_for_line("Running on http://198.18.0.2:8000")
        done = kernel_ns.run(["curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}:8000/"])
        assert done.returncode == 0, done.stderr
        assert done.stdout == "Hello, world!"
    finally:
        program.process.terminate()
        program.process.wait(30)


MIB100 = 100 << 20


@requires_netns
@pytest.mark.parametrize("offloads", [True, False], ids=["offloads-on", "offloads-off"])
async def test_100_mib_each_way_by_sha256(
    veth: tuple[NetworkNamespace, NetworkNamespace], offloads: bool
) -> None:
    """100 MiB kernel -> stack and 100 MiB stack -> kernel, each stream's SHA-256 the same at both
    ends (the kernel's super-frames over the veth arrive whole in the ring).  With offloads the
    stack hands the port 64 KB TSO segments behind virtio-net headers; without, MTU-sized frames."""
    stack_ns, kernel_ns = veth
    async with stack_on_veth(stack_ns, f"af_packet:veth0,offloads={'on' if offloads else 'off'}") as stack:
        with trio.fail_after(240):
            listener = trio.socket.socket()
            await listener.bind(("0.0.0.0", 5001))
            listener.listen(1)
            sender = kernel_peer(kernel_ns, "--timeout", "200", "send", STACK_ADDRESS, 5001, MIB100)
            conn, _ = await listener.accept()
            received, digest = await receive_hashed(conn, MIB100)
            conn.close()
            listener.close()
            result = await in_thread(peer_result, sender, 200)
            assert received == MIB100 and digest == result["sha256"]

            receiver = kernel_peer(kernel_ns, "--timeout", "200", "recv", 5002)
            assert receiver.stdout is not None
            assert json.loads(await in_thread(receiver.stdout.readline)) == {"listening": 5002}
            sock = trio.socket.socket()
            await sock.connect((KERNEL_ADDRESS, 5002))
            digest = await send_pattern(sock, MIB100)
            sock.close()
            result = await in_thread(peer_result, receiver, 200)
            assert result["bytes"] == MIB100 and result["sha256"] == digest
        stats = stack.port_statistics()
        assert stats.oerrors == 0
        mean_frame = stats.obytes / stats.opackets
        assert mean_frame > 8000 if offloads else mean_frame <= 1514, stats


@requires_netns
async def test_check_half_closeable_stream(veth: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    """trio's conformance test for half-closeable streams: the stack's SocketStream on one end (over
    the AF_PACKET port), the kernel's on the other."""
    stack_ns, kernel_ns = veth
    ports = iter(range(6000, 7000))
    async with stack_on_veth(stack_ns) as stack:

        async def stream_maker() -> tuple[trio.SocketStream, trio.SocketStream]:
            port = next(ports)
            with kernel_ns.entered():
                raw = socket.socket()
            raw.bind((KERNEL_ADDRESS, port))
            raw.listen(1)
            listener = trio.socket.from_stdlib_socket(raw)
            client = await stack.tcp_connect(KERNEL_ADDRESS, port)
            server, _ = await listener.accept()
            listener.close()
            return client, trio.SocketStream(server)

        with trio.fail_after(120):
            await trio.testing.check_half_closeable_stream(stream_maker, None)


@requires_netns
def test_two_cores_spread_flows_over_two_fanout_queues(
    veth: tuple[NetworkNamespace, NetworkNamespace],
) -> None:
    """``yastack serve --nic af_packet:veth0 --cores 2``: two fanout sockets, one per worker; 50
    curls with distinct source ports all answered, and both cores accepted some."""
    stack_ns, kernel_ns = veth
    program = NamespaceProgram(
        stack_ns,
        [sys.executable, "-m", "trio_yastack", "serve", "examples/hello.py:app", "--nic", "af_packet:veth0",
         "--cores", "2", "--bind", "8000"],
    )  # fmt: skip
    try:
        program.wait_for_count("Running on http://198.18.0.2:8000", 2)  # both workers listen
        loop = "for i in $(seq 50); do curl -sS --max-time 10 http://198.18.0.2:8000/ || exit 1; echo; done"
        done = kernel_ns.run(["sh", "-c", loop], timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["Hello, world!"] * 50
    finally:
        program.process.send_signal(2)
    assert program.process.wait(60) == 0, program.output
    [line] = [ln for ln in program.output.splitlines() if ln.startswith("# per core: ")]
    accepted = [core["accepted"] for core in json.loads(line.removeprefix("# per core: "))]
    assert sum(accepted) == 50 and all(count > 0 for count in accepted), accepted


_UDP_FLOWS = """
import socket
for port in range(40000, 40040):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("198.18.0.1", port))
        s.sendto(b"flow", ("198.18.0.2", 9))
"""


@requires_netns
def test_fanout_spreads_flows_over_both_queues(veth: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    """``queues=2``: two sockets in one PACKET_FANOUT_HASH group; 40 UDP flows from the kernel all
    arrive, exactly once, and both queues get some of them."""
    stack_ns, kernel_ns = veth
    with open_in(stack_ns, f"af_packet:veth0,{SMALL},queues=2") as port:
        assert port.capabilities.rx_queues == 2
        mac = str(port.capabilities.mac)
        kernel_ns.run(["ip", "neigh", "replace", STACK_ADDRESS, "lladdr", mac, "dev", "veth1"], check=True)
        kernel_ns.run([sys.executable, "-c", _UDP_FLOWS], check=True)
        poller = select.poll()
        for queue in (0, 1):
            poller.register(port.fileno(queue), select.POLLIN)
        per_queue = [0, 0]
        for _ in range(100):  # each poll waits for a block to be handed over (bounded: 100 x 1 s)
            if sum(per_queue) >= 40:
                break
            poller.poll(1000)
            for queue in (0, 1):
                per_queue[queue] += sum(1 for f in port.rx_burst(queue, 64) if f[23] == 17)  # UDP
        assert sum(per_queue) == 40 and all(per_queue), per_queue
        assert [port.statistics(q).ipackets for q in (0, 1)] == per_queue


@requires_netns
@pytest.mark.parametrize("version", [3, 2], ids=["tpacket-v3", "tpacket-v2"])
def test_ring_overflow_is_counted_in_imissed(
    veth: tuple[NetworkNamespace, NetworkNamespace], version: int
) -> None:
    """A tiny ring (2 blocks of 4 KiB) nobody reads while 200 frames come: what did not fit is
    counted by the kernel (PACKET_STATISTICS) and shows as ``imissed``; taken + missed = sent."""
    stack_ns, kernel_ns = veth
    with open_in(
        stack_ns, f"af_packet:veth0,block_size=4096,blocks=2,frame_size=2048,version={version}"
    ) as port:
        mac = str(port.capabilities.mac)
        kernel_ns.run(["ip", "neigh", "replace", STACK_ADDRESS, "lladdr", mac, "dev", "veth1"], check=True)
        script = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        script += "for _ in range(200): s.sendto(bytes(200), ('198.18.0.2', 9))\n"
        kernel_ns.run([sys.executable, "-c", script], check=True)
        taken = 0
        poller = select.poll()
        poller.register(port.fileno(0), select.POLLIN)
        for _ in range(20):  # bounded: the blocks retire within a jiffy or two
            if not poller.poll(200):
                break
            taken += len(port.rx_burst(0, 64))
        stats = port.statistics()
        assert 0 < taken < 200 and stats.ipackets == taken
        assert stats.imissed > 0 and taken + stats.imissed == 200, stats


# -- clear errors ---------------------------------------------------------------------------------
@requires_netns
def test_clear_errors_missing_interface_address_busy(veth: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    stack_ns, kernel_ns = veth
    with pytest.raises(AfPacketError, match="no interface 'nosuch0'"):
        open_in(stack_ns, "af_packet:nosuch0")
    with pytest.raises(AfPacketError, match=r"carries 198\.18\.0\.1 .*ip addr flush dev veth1"):
        open_in(kernel_ns, "af_packet:veth1")
    with open_in(stack_ns, f"af_packet:veth0,{SMALL}"), pytest.raises(AfPacketError, match="'veth0' is busy"):
        open_in(stack_ns, f"af_packet:veth0,{SMALL}")
    open_in(stack_ns, f"af_packet:veth0,{SMALL}").close()  # free again once closed


@requires_netns
def test_clear_error_without_cap_net_raw(veth: tuple[NetworkNamespace, NetworkNamespace]) -> None:
    """As uid 65534 with no capabilities, opening the port says it needs CAP_NET_RAW."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    stack_ns, _ = veth
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    script = (
        "from trio_yastack.nic.af_packet import AfPacketPort, AfPacketError\n"
        "try:\n    AfPacketPort(name='veth0')\nexcept AfPacketError as exc:\n    print(exc)\n"
    )
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    done = stack_ns.run([*drop, sys.executable, "-c", script], cwd="/", env=env)
    if "Error" in done.stderr and "AfPacketError" not in done.stderr and not done.stdout:
        pytest.skip(f"the venv is not usable by uid 65534: {done.stderr.strip()[-300:]}")
    assert "needs CAP_NET_RAW" in done.stdout, (done.stdout, done.stderr)
