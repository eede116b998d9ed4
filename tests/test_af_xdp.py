"""The AF_XDP port: its spec, the C ring code against its Python twin, and the stack over XDP
sockets on a veth whose far end is the Linux kernel.

Topology of the kernel tests: two private namespaces joined by a veth with two queues each way;
``veth0`` in the stack's namespace carries no address (the XDP sockets take its frames), ``veth1``
in the kernel's namespace has 198.18.0.1/24 and its transmit checksum offload off (else the
kernel's TCP checksums stay partial over a veth, and the stack rightly drops them); the stack is
198.18.0.2/24.  Every wait is on a real
event and bounded by ``trio.fail_after`` or a subprocess timeout.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
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
from tcp_helpers import build_tcp_frame

from trio_yastack import Stack, open_port, open_stack
from trio_yastack.nic import af_xdp
from trio_yastack.nic._af_xdp_ring import XDP_DESC, PyXsk, XskRing, xsk_reap, xsk_rx_burst, xsk_tx_burst
from trio_yastack.nic.af_xdp import AfXdpError, AfXdpOptions, AfXdpPort, parse_af_xdp_spec
from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.stack import OffloadPacket
from trio_yastack.stack._native import sum16
from trio_yastack.stack.wire.tcp import TCP_ACK

requires_shim = pytest.mark.skipif(
    not af_xdp.NATIVE, reason="the AF_XDP shim is not built (libxdp-dev missing)"
)
MIB = 1 << 20


# -- the spec ------------------------------------------------------------------------------------
def test_parse_spec_defaults_and_options() -> None:
    assert parse_af_xdp_spec("af_xdp:eth1") == AfXdpOptions(iface="eth1")
    options = parse_af_xdp_spec(
        "af_xdp:eth1,queue=2,queues=3,frames=8192,frame_size=2048,mode=copy,busy-poll=on"
    )
    assert (options.queue, options.queues, options.frames, options.frame_size) == (2, 3, 8192, 2048)
    assert options.mode == "copy" and options.busy_poll is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("af_xdp:", "needs an interface"),
        ("af_xdp:eth1,mode=fast", "mode must be auto, copy or zerocopy"),
        ("af_xdp:eth1,frames=many", "bad value 'many' for frames"),
        ("af_xdp:eth1,colour=blue", "not key=value with a key among"),
    ],
)
def test_parse_spec_errors_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_af_xdp_spec(spec)


# -- the C ring code and its Python twin, over rings in ordinary memory --------------------------
#: one ring's layout as the kernel maps it (XDP_MMAP_OFFSETS): producer, consumer, flags, entries
_PRODUCER, _CONSUMER, _FLAGS, _ENTRIES = 0, 64, 128, 192


@dataclass
class _Rings:
    """Four rings and a UMEM in Python memory, with both drivers over a copy each: ``c`` (a
    ``struct yas_xsk`` with ``fd == -1``, so nothing is ever kicked) and ``py`` (the twin)."""

    size: int
    nframes: int
    frame_size: int
    mem: bytearray
    umem: bytearray

    def ring_at(self, index: int) -> int:
        return index * (_ENTRIES + self.size * XDP_DESC.size)

    def word(self, ring: int, field: int) -> memoryview:
        at = self.ring_at(ring) + field
        return memoryview(self.mem)[at : at + 4].cast("I")


RING_NAMES = ("fill", "comp", "rx", "tx")


def _make_rings(size: int, nframes: int, frame_size: int, start: int) -> _Rings:
    rings = _Rings(
        size,
        nframes,
        frame_size,
        bytearray(4 * (_ENTRIES + size * XDP_DESC.size)),
        bytearray(nframes * frame_size),
    )
    for ring in range(4):
        rings.word(ring, _PRODUCER)[0] = start
        rings.word(ring, _CONSUMER)[0] = start
    return rings


def _py_driver(rings: _Rings) -> PyXsk:
    def ring(index: int, producer_side: bool) -> XskRing:
        at = rings.ring_at(index)
        view = memoryview(rings.mem)
        prod = rings.word(index, _PRODUCER)
        cons = rings.word(index, _CONSUMER)
        entries = view[at + _ENTRIES : at + _ENTRIES + rings.size * XDP_DESC.size]
        cached_cons = (cons[0] + rings.size) & 0xFFFFFFFF if producer_side else cons[0]
        return XskRing(prod, cons, rings.word(index, _FLAGS), entries, rings.size, prod[0], cached_cons)

    return PyXsk(
        ring(0, True),
        ring(1, False),
        ring(2, False),
        ring(3, True),
        memoryview(rings.umem),
        rings.frame_size,
        rings.nframes,
    )


def _c_driver(rings: _Rings) -> tuple[Any, list[Any]]:
    ffi, _ = af_xdp._extension  # type: ignore[misc]  # (requires_shim: built)
    base = ffi.from_buffer(rings.mem)
    umem = ffi.from_buffer(rings.umem)
    x = ffi.new("struct yas_xsk *")
    for index, name in enumerate(RING_NAMES):
        ring = getattr(x, name)
        at = ffi.cast("char *", base) + rings.ring_at(index)
        ring.producer = ffi.cast("uint32_t *", at + _PRODUCER)
        ring.consumer = ffi.cast("uint32_t *", at + _CONSUMER)
        ring.flags = ffi.cast("uint32_t *", at + _FLAGS)
        ring.ring = ffi.cast("void *", at + _ENTRIES)
        ring.size = rings.size
        ring.mask = rings.size - 1
        ring.cached_prod = ring.producer[0]
        ring.cached_cons = (
            (ring.consumer[0] + rings.size) & 0xFFFFFFFF if name in ("fill", "tx") else ring.consumer[0]
        )
    free = ffi.new("uint64_t[]", rings.nframes)
    x.umem_area = ffi.cast("char *", umem)
    x.umem_len = len(rings.umem)
    x.frame_size = rings.frame_size
    x.nframes = rings.nframes
    x.rx_frames = rings.nframes // 2
    x.fd = -1
    x.free_frames = free
    return x, [base, umem, free]


def _kernel_receive(rings: _Rings, frames: list[bytes]) -> int:
    """The kernel's side of receiving: take frames from the fill ring, write each at XDP's
    256-byte headroom into its UMEM frame, post the descriptors on the rx ring."""
    fill_prod, fill_cons = rings.word(0, _PRODUCER), rings.word(0, _CONSUMER)
    rx_prod, rx_cons = rings.word(2, _PRODUCER), rings.word(2, _CONSUMER)
    fill_at, rx_at = rings.ring_at(0) + _ENTRIES, rings.ring_at(2) + _ENTRIES
    done = 0
    for frame in frames:
        if fill_prod[0] == fill_cons[0] or (rx_prod[0] - rx_cons[0]) & 0xFFFFFFFF == rings.size:
            break
        slot = fill_cons[0] & (rings.size - 1)
        (addr,) = memoryview(rings.mem)[fill_at + slot * 8 : fill_at + slot * 8 + 8].cast("Q")
        fill_cons[0] = (fill_cons[0] + 1) & 0xFFFFFFFF
        rings.umem[addr + 256 : addr + 256 + len(frame)] = frame
        XDP_DESC.pack_into(
            rings.mem, rx_at + (rx_prod[0] & (rings.size - 1)) * XDP_DESC.size, addr + 256, len(frame), 0
        )
        rx_prod[0] = (rx_prod[0] + 1) & 0xFFFFFFFF
        done += 1
    return done


def _kernel_transmit(rings: _Rings, max_n: int) -> list[bytes]:
    """The kernel's side of sending: take up to ``max_n`` tx descriptors, post their frames on
    the completion ring; returns what was sent."""
    tx_prod, tx_cons = rings.word(3, _PRODUCER), rings.word(3, _CONSUMER)
    cq_prod = rings.word(1, _PRODUCER)
    tx_at, cq_at = rings.ring_at(3) + _ENTRIES, rings.ring_at(1) + _ENTRIES
    sent: list[bytes] = []
    while tx_cons[0] != tx_prod[0] and len(sent) < max_n:
        addr, length, _ = XDP_DESC.unpack_from(
            rings.mem, tx_at + (tx_cons[0] & (rings.size - 1)) * XDP_DESC.size
        )
        sent.append(bytes(rings.umem[addr : addr + length]))
        tx_cons[0] = (tx_cons[0] + 1) & 0xFFFFFFFF
        slot = cq_prod[0] & (rings.size - 1)
        memoryview(rings.mem)[cq_at + slot * 8 : cq_at + slot * 8 + 8].cast("Q")[0] = addr
        cq_prod[0] = (cq_prod[0] + 1) & 0xFFFFFFFF
    return sent


def _prime(rings: _Rings) -> None:
    """What ``yas_xsk_open`` does: every receive frame into the fill ring."""
    at = rings.ring_at(0) + _ENTRIES
    producer = rings.word(0, _PRODUCER)
    for i in range(rings.nframes // 2):
        slot = (producer[0] + i) & (rings.size - 1)
        memoryview(rings.mem)[at + slot * 8 : at + slot * 8 + 8].cast("Q")[0] = i * rings.frame_size
    producer[0] = (producer[0] + rings.nframes // 2) & 0xFFFFFFFF


@requires_shim
@pytest.mark.parametrize("start", [0, 0xFFFFFFF0], ids=["indices-from-0", "indices-wrap-2**32"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_ring_code_and_python_twin_agree(start: int, seed: int) -> None:
    """The same random traffic (the kernel's side played by the test, frames of random sizes,
    bursts of random sizes, full rings, too-long frames, indices crossing 2**32) through the C
    and the twin, each over its own copy of the rings: after every step both copies hold the
    same bytes and both drivers the same indices, free frames and results."""
    _, lib = af_xdp._extension  # type: ignore[misc]
    ffi = af_xdp._extension[0]  # type: ignore[index]
    size, nframes, frame_size = 8, 16, 2048
    c_rings, py_rings = (
        _make_rings(size, nframes, frame_size, start),
        _make_rings(size, nframes, frame_size, start),
    )
    _prime(c_rings)
    _prime(py_rings)
    x, keep = _c_driver(c_rings)
    twin = _py_driver(py_rings)
    # the transmit frames start on the free stack, lowest on top, in both
    for i in range(nframes - nframes // 2):
        x.free_frames[i] = (nframes - 1 - i) * frame_size
    x.n_free = nframes - nframes // 2
    twin.free_frames = [(nframes - 1 - i) * frame_size for i in range(nframes - nframes // 2)]
    rng = random.Random(seed)
    out_c, out_py = bytearray(4 * frame_size), bytearray(4 * frame_size)
    out_c_buf = ffi.from_buffer(out_c)
    lens_c = ffi.new("uint32_t[]", 16)
    received = sent = 0
    for step in range(400):
        action = rng.randrange(4)
        if action == 0:
            frames = [rng.randbytes(rng.randrange(14, 1600)) for _ in range(rng.randrange(1, 6))]
            assert _kernel_receive(c_rings, frames) == _kernel_receive(py_rings, frames)
        elif action == 1:
            max_n = rng.randrange(0, 6)
            n_c = lib.yas_xsk_rx_burst(x, out_c_buf, len(out_c), lens_c, max_n)
            lens_py: list[int] = []
            n_py = xsk_rx_burst(twin, out_py, lens_py, max_n)
            assert n_c == n_py, step
            assert list(ffi.unpack(lens_c, n_c)) == lens_py[:n_py]
            assert out_c[: sum(lens_py[:n_py])] == out_py[: sum(lens_py[:n_py])]
            received += n_c
        elif action == 2:
            frames = [rng.randbytes(rng.choice([60, 1514, 1600, 2100])) for _ in range(rng.randrange(1, 8))]
            lens = [len(frame) for frame in frames]
            blob = b"".join(frames)
            taken_c = lib.yas_xsk_tx_burst(x, blob, len(blob), lens, len(frames), 1518)
            taken_py = xsk_tx_burst(twin, blob, lens, 1518)
            assert taken_c == taken_py, step
            assert x.tx_too_long == twin.tx_too_long
        else:
            max_n = rng.randrange(0, 5)
            out = _kernel_transmit(c_rings, max_n)
            assert out == _kernel_transmit(py_rings, max_n)
            sent += len(out)
            if rng.randrange(3) == 0:
                assert lib.yas_xsk_reap(x) == xsk_reap(twin)
        assert c_rings.mem == py_rings.mem, step
        assert c_rings.umem == py_rings.umem, step
        for name in RING_NAMES:
            c_ring, py_ring = getattr(x, name), getattr(twin, name)
            assert (c_ring.cached_prod, c_ring.cached_cons) == (py_ring.cached_prod, py_ring.cached_cons), (
                step,
                name,
            )
        assert list(ffi.unpack(x.free_frames, x.n_free)) == twin.free_frames, step
    assert received > 20 and sent > 20  # the walk did go round the rings
    assert x.tx_too_long > 0
    del keep


def test_twin_refuses_a_ring_that_lies() -> None:
    """A descriptor pointing outside the UMEM is reported, and nothing is released."""
    rings = _make_rings(8, 16, 2048, 0)
    _prime(rings)
    twin = _py_driver(rings)
    XDP_DESC.pack_into(rings.mem, rings.ring_at(2) + _ENTRIES, 16 * 2048, 100, 0)
    rings.word(2, _PRODUCER)[0] = 1
    assert xsk_rx_burst(twin, bytearray(4096), [], 4) == -2
    assert rings.word(2, _CONSUMER)[0] == 0


# -- the kernel at the far end of a veth --------------------------------------------------------
@dataclass
class Veth:
    stack_ns: NetworkNamespace  # veth0: no address, the XDP sockets
    kernel_ns: NetworkNamespace  # veth1: 198.18.0.1/24


def make_veth(count: int) -> Iterator[Veth]:
    with NetworkNamespace("yasx") as stack_ns, NetworkNamespace("yask") as kernel_ns:
        queues = ["numtxqueues", str(count), "numrxqueues", str(count)]
        stack_ns.run(
            ["ip", "link", "add", "veth0", *queues, "type", "veth", "peer", "name", "veth1", *queues,
             "netns", kernel_ns.name],
            check=True,
        )  # fmt: skip
        kernel_ns.run(["ip", "addr", "add", f"{KERNEL_ADDRESS}/24", "dev", "veth1"], check=True)
        # With transmit checksum offload the kernel leaves its TCP checksums partial on a veth
        # (the peer would never check them); XDP hands the frames over as they are.
        kernel_ns.run(["ethtool", "-K", "veth1", "tx", "off"], check=True)
        stack_ns.run(["ip", "link", "set", "veth0", "up"], check=True)
        kernel_ns.run(["ip", "link", "set", "veth1", "up"], check=True)
        yield Veth(stack_ns, kernel_ns)


@pytest.fixture
def veth() -> Iterator[Veth]:
    """A veth with one queue each way (one core: the port takes every queue)."""
    yield from make_veth(1)


@pytest.fixture
def veth2() -> Iterator[Veth]:
    """A veth with two queues each way (two cores, or a port told it takes part)."""
    yield from make_veth(2)


def open_xdp(veth: Veth, spec: str = "af_xdp:veth0") -> AfXdpPort:
    with veth.stack_ns.entered():
        port = open_port(spec)
    assert isinstance(port, AfXdpPort)
    return port


@asynccontextmanager
async def stack_on_xdp(veth: Veth, spec: str = "af_xdp:veth0") -> AsyncIterator[tuple[Stack, AfXdpPort]]:
    port = open_xdp(veth, spec)
    try:
        async with open_stack(port, ip=f"{STACK_ADDRESS}/24") as stack:
            yield stack, port
    finally:
        port.close()


async def in_thread(function: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True)


@requires_netns
@requires_shim
@pytest.mark.parametrize("mode", ["copy", "auto"])
async def test_arp_and_ping_both_ways(veth: Veth, mode: str) -> None:
    """The kernel pings the stack (100 of 100 answered, and it resolved the stack's MAC, the
    interface's own, by ARP), then the stack pings the kernel (ARP learned the kernel's MAC);
    ``copy`` is generic XDP, ``auto`` on veth driver XDP in copy mode, neither with a program on
    the peer."""
    async with stack_on_xdp(veth, f"af_xdp:veth0,mode={mode}") as (stack, port):
        assert port.attach == ("generic" if mode == "copy" else "driver") and not port.zerocopy
        with trio.fail_after(30):
            result = await in_thread(
                veth.kernel_ns.run, ["ping", "-n", "-q", "-c", "100", "-i", "0.01", "-w", "20", STACK_ADDRESS]
            )
        assert "100 packets transmitted, 100 received, 0% packet loss" in result.stdout, result.stdout
        neigh = json.loads(
            veth.kernel_ns.run(["ip", "-j", "neigh", "show", STACK_ADDRESS, "dev", "veth1"]).stdout
        )
        assert [entry["lladdr"] for entry in neigh] == [str(stack.mac)]
        assert stack.statistics().icmp.echo_replies_sent == 100
        async with stack.ping_socket() as pinger:
            with trio.fail_after(10):
                reply = await pinger.ping(KERNEL_ADDRESS, 1, b"over-xdp", timeout=5)
        assert reply.source == KERNEL_ADDRESS and reply.data == b"over-xdp"
        kernel_mac = veth.kernel_ns.run(["cat", "/sys/class/net/veth1/address"]).stdout.strip()
        learned = stack.core.arp.cache[int(IPv4Address(KERNEL_ADDRESS))][0]
        assert ":".join(f"{octet:02x}" for octet in learned) == kernel_mac
        stats = port.statistics()
        assert stats.ipackets >= 101 and stats.opackets >= 101 and stats.imissed == 0 and stats.oerrors == 0


@requires_netns
@requires_shim
async def test_100_mib_each_way_sha256(veth: Veth) -> None:
    """100 MiB from the kernel to the stack and 100 MiB back, each checked by SHA-256 at both ends."""
    async with stack_on_xdp(veth) as (stack, port):
        listener = trio.socket.socket()
        await listener.bind((STACK_ADDRESS, 5001))
        listener.listen(1)
        sender = kernel_peer(veth.kernel_ns, "--timeout", 120, "send", STACK_ADDRESS, 5001, 100 * MIB)
        with trio.fail_after(120):
            conn, _ = await listener.accept()
            received, digest = await receive_hashed(conn, 100 * MIB)
            conn.close()
            result = await trio.to_thread.run_sync(peer_result, sender)
        listener.close()
        assert received == 100 * MIB and digest == result["sha256"]

        receiver = kernel_peer(veth.kernel_ns, "--timeout", 120, "recv", 5002)
        with trio.fail_after(120):
            assert receiver.stdout is not None
            await trio.to_thread.run_sync(receiver.stdout.readline)  # {"listening": ...}
            sock = trio.socket.socket()
            await sock.connect((KERNEL_ADDRESS, 5002))
            digest = await send_pattern(sock, 100 * MIB)
            sock.close()
            result = await trio.to_thread.run_sync(peer_result, receiver)
        assert result["bytes"] == 100 * MIB and result["sha256"] == digest
        stats = port.statistics()
        assert stats.oerrors == 0 and stats.ierrors == 0
        assert "bad_checksum" not in stack.statistics().tcp.dropped


@requires_netns
@requires_shim
async def test_check_half_closeable_stream_over_xdp(veth: Veth) -> None:
    """trio's own HalfCloseableStream conformance test, between a stack stream and a kernel
    socket stream at the far end of the veth."""
    async with stack_on_xdp(veth) as (stack, _port):
        ports = iter(range(7000, 7100))

        async def stream_maker() -> tuple[trio.SocketStream, trio.SocketStream]:
            port = next(ports)
            listener = stack.tcp_listen(port)
            with veth.kernel_ns.entered():
                raw = socket.socket()
            kernel = trio.socket.from_stdlib_socket(raw)
            await kernel.connect((STACK_ADDRESS, port))
            server = await listener.accept()
            await listener.aclose()
            return server, trio.SocketStream(kernel)

        with trio.fail_after(120):
            await trio.testing.check_half_closeable_stream(stream_maker, None)


@requires_netns
@requires_shim
def test_curl_to_yastack_serve(veth: Veth) -> None:
    """``yastack serve --nic af_xdp:veth0``: curl from the kernel's side gets the app's answer."""
    program = NamespaceProgram(
        veth.stack_ns,
        [sys.executable, "-m", "trio_yastack", "serve", "examples/hello.py:app", "--nic", "af_xdp:veth0",
         "--ip", f"{STACK_ADDRESS}/24", "--bind", "8000", "--no-control"],
    )  # fmt: skip
    program.wait_for_line("Running on http://198.18.0.2:8000")
    result = veth.kernel_ns.run(
        ["curl", "-sS", "--max-time", "10", f"http://{STACK_ADDRESS}:8000/"], timeout=30
    )
    assert result.returncode == 0, result.stderr + program.output
    assert result.stdout == "Hello, world!"


@requires_netns
@requires_shim
def test_two_cores_spread_flows_over_two_queues(veth2: Veth) -> None:
    """``yastack serve --cores 2 --nic af_xdp:veth0``: one XDP socket per queue, one queue per
    core; 40 curls (the kernel's veth spreads their flows over its two transmit queues, so over
    our two receive queues) all answered, and both cores accepted connections."""
    veth = veth2
    program = NamespaceProgram(
        veth.stack_ns,
        [sys.executable, "-m", "trio_yastack", "serve", "examples/hello.py:app", "--nic", "af_xdp:veth0",
         "--ip", f"{STACK_ADDRESS}/24", "--cores", "2", "--bind", "8000", "--no-control"],
    )  # fmt: skip
    program.wait_for_lines("# try: curl")
    program.wait_for_count("Running on http://198.18.0.2:8000", 2)
    loop = f"for i in $(seq 40); do curl -sS --max-time 10 http://{STACK_ADDRESS}:8000/ || exit 1; echo; done"
    result = veth.kernel_ns.run(["sh", "-c", loop], timeout=120)
    assert result.returncode == 0, result.stderr + program.output
    assert result.stdout.splitlines() == ["Hello, world!"] * 40
    program.send_signal(signal.SIGTERM, b"trio_yastack")
    assert program.wait(60) == 0, program.output
    [line] = program.wait_for_lines("# per core: ", timeout=1)
    per_core = json.loads(line.removeprefix("# per core: "))
    accepted = [core["accepted"] for core in per_core]
    assert sum(accepted) == 40 and all(count > 0 for count in accepted), per_core


def _tcp_checksum_ok(frame: bytes) -> bool:
    """Whether a TCP/IPv4 frame's TCP checksum is complete and right (pseudo-header included)."""
    ihl = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    segment = frame[14 + ihl : 14 + total]
    pseudo = frame[26:34] + bytes([0, 6]) + len(segment).to_bytes(2, "big")
    return sum16(pseudo + segment, 0, len(pseudo) + len(segment), 0) == 0xFFFF


def _partial(frame: bytes, gso_size: int = 0) -> OffloadPacket:
    """``frame`` as the stack leaves a segment for a port that offloads: the TCP checksum field
    holding the folded pseudo-header sum (CHECKSUM_PARTIAL)."""
    packet = OffloadPacket(len(frame), gso_size)
    packet[:] = frame
    ihl = (frame[14] & 0x0F) * 4
    tcp_length = int.from_bytes(frame[16:18], "big") - ihl
    pseudo = frame[26:34] + bytes([0, 6]) + tcp_length.to_bytes(2, "big")
    packet[14 + ihl + 16 : 14 + ihl + 18] = sum16(pseudo, 0, 12, 0).to_bytes(2, "big")
    return packet


@requires_netns
@requires_shim
def test_tx_burst_finishes_offload_packets_and_counts_what_it_cannot_send(veth: Veth) -> None:
    """The port offers no offloads, yet an OffloadPacket handed to it goes out finished, as the
    kernel would finish it: its checksum completed, or (with ``gso_size``) cut into segments with
    theirs; a frame longer than the MTU and an OffloadPacket that is not TCP/IPv4 are counted
    in ``oerrors`` and accepted.  The kernel's end sees exactly the four good TCP frames."""
    with veth.kernel_ns.entered():
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with tap, open_xdp(veth) as port:
        tap.bind(("veth1", 0))
        tap.settimeout(5)
        mac = port.capabilities.mac
        one = build_tcp_frame(40001, 5001, 7, 1, TCP_ACK, payload=b"o" * 200, src_ip=STACK_ADDRESS,
                              dst_ip=KERNEL_ADDRESS, src_mac=mac)  # fmt: skip
        big = build_tcp_frame(40001, 5001, 1000, 1, TCP_ACK, payload=b"g" * 2500, src_ip=STACK_ADDRESS,
                              dst_ip=KERNEL_ADDRESS, src_mac=mac)  # fmt: skip
        arp = OffloadPacket(60)
        arp[12:14] = b"\x08\x06"
        too_long = bytes(port.capabilities.max_frame_len + 1)
        frames = [_partial(one), arp, too_long, _partial(big, 1000)]
        assert port.tx_burst(0, frames) == 4  # type: ignore[arg-type]  # OffloadPackets are bytearrays
        stats = port.statistics()
        assert (stats.opackets, stats.oerrors) == (4, 2)
        seen = []
        for _ in range(200):
            frame = tap.recv(4096)
            if len(frame) > 54 and frame[6:12] == bytes(mac) and frame[23] == 6:
                seen.append(frame)
                if len(seen) == 4:
                    break
        assert [len(frame) - 54 for frame in seen] == [200, 1000, 1000, 500]
        assert all(_tcp_checksum_ok(frame) for frame in seen)
        assert [int.from_bytes(frame[38:42], "big") for frame in seen] == [7, 1000, 2000, 3000]


# -- errors ----------------------------------------------------------------------------------------
def test_yastack_serve_reports_a_bad_spec_in_one_line() -> None:
    serve = [sys.executable, "-m", "trio_yastack", "serve", "examples/hello.py:app"]
    done = subprocess.run(
        [*serve, "--nic", "af_xdp:eth9,mode=fast"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "yastack serve: nic 'af_xdp:eth9,mode=fast': mode must be auto, copy or zerocopy, not 'fast'"
    ], done.stderr


def test_a_missing_shim_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built without libxdp, the package imports and opening the port says what to install."""
    monkeypatch.setattr(af_xdp, "_extension", None)
    with pytest.raises(AfXdpError, match=re.escape("apt-get install libxdp-dev libbpf-dev")):
        open_port("af_xdp:veth0")


@requires_netns
@requires_shim
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (",frames=1000", "bad frames=1000 or frame_size=4096"),
        (",frame_size=8192", "bad frames=4096 or frame_size=8192"),
        (",frame_size=1024", "MTU 1500 does not fit a 1024-byte UMEM frame"),
    ],
)
def test_bad_umem_geometry_is_refused(veth: Veth, options: str, message: str) -> None:
    with pytest.raises(AfXdpError, match=re.escape(message)):
        open_xdp(veth, f"af_xdp:veth0{options}")


@requires_netns
@requires_shim
def test_missing_interface_is_named(veth: Veth) -> None:
    with pytest.raises(AfXdpError, match="no interface 'nosuch0' in this network namespace"):
        open_xdp(veth, "af_xdp:nosuch0")


@requires_netns
@requires_shim
def test_busy_queue_queue_out_of_range_and_queues_left_out(veth2: Veth) -> None:
    """A second port on a queue that has its XDP socket is refused as busy; a queue the interface
    does not have, or a port that would leave some of the interface's queues to the kernel, is
    refused before anything is bound; the queue is free again once the first port closed."""
    port = open_xdp(veth2, "af_xdp:veth0,partial=yes")
    try:
        with pytest.raises(AfXdpError, match="queue 0 of veth0 is busy") as busy:
            open_xdp(veth2, "af_xdp:veth0,partial=yes")
        assert busy.value.errno == 16  # EBUSY
        with pytest.raises(AfXdpError, match=re.escape("veth0 has 2 receive queue(s) (0..1): queue 2 asked")):
            open_xdp(veth2, "af_xdp:veth0,queue=1,queues=2")
        with pytest.raises(AfXdpError, match="veth0 has 2 receive queues and the port takes 1") as partial:
            open_xdp(veth2, "af_xdp:veth0,queue=1")
        assert "--cores 2" in str(partial.value) and "partial=yes" in str(partial.value)
        other = open_xdp(veth2, "af_xdp:veth0,queue=1,partial=yes")  # the other queue is free
        other.close()
    finally:
        port.close()
    open_xdp(veth2, "af_xdp:veth0,partial=yes").close()


@requires_netns
@requires_shim
def test_zerocopy_where_the_driver_has_none_says_so(veth: Veth) -> None:
    """A veth has native XDP but no zero-copy: ``mode=zerocopy`` is refused with the way out,
    and ``auto`` falls back to copy on the same interface."""
    with pytest.raises(AfXdpError, match="the driver of veth0 offers no zero-copy AF_XDP: use mode=auto"):
        open_xdp(veth, "af_xdp:veth0,mode=zerocopy")
    with open_xdp(veth, "af_xdp:veth0,mode=auto") as port:
        assert (port.attach, port.zerocopy) == ("driver", False)


@requires_netns
@requires_shim
def test_interface_with_a_kernel_address_is_refused(veth: Veth) -> None:
    veth.stack_ns.run(["ip", "addr", "add", "198.18.0.3/24", "dev", "veth0"], check=True)
    with pytest.raises(AfXdpError, match=re.escape("veth0 carries 198.18.0.3 on the kernel side")):
        open_xdp(veth)
    open_xdp(veth, "af_xdp:veth0,allow_kernel_address=yes").close()


_NOBODY = 65534


@requires_netns
@requires_shim
def test_no_privilege_says_which_capabilities(veth: Veth) -> None:
    """As uid 65534 with no capability the socket cannot be made: the error names what is
    needed."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    script = (
        "from trio_yastack.nic.af_xdp import open_af_xdp_port, AfXdpError\n"
        "try:\n    open_af_xdp_port('af_xdp:veth0')\n"
        "except AfXdpError as exc:\n    print(exc.errno, exc.strerror)\n"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).parents[1])}
    drop = ["setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups", "--inh-caps=-all"]
    done = veth.stack_ns.run([*drop, sys.executable, "-c", script], env=env, cwd="/", timeout=60)
    if "No module named" in done.stderr or ("Permission denied" in done.stderr and "python" in done.stderr):
        pytest.skip(f"the venv is not usable by uid {_NOBODY}: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr
    code, _, message = done.stdout.strip().partition(" ")
    assert int(code) in (1, 13), done.stdout  # EPERM or EACCES
    assert "CAP_NET_RAW" in message and "CAP_NET_ADMIN and CAP_BPF" in message, message
