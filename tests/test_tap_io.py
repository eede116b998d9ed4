"""The TAP port's burst I/O in C (``native/tap_io.c`` through ``trio_yastack/nic/_tap_io.py``)
against its twin, the Python loops of ``TapPort``.

Two tiers.  On a ``SOCK_SEQPACKET`` socket pair (one message per write, as a TAP descriptor takes
one frame per write) the C path's virtio-net headers are held byte for byte to the twin's
``_offload_header``, and its reads to what was written, in every mode (``loop``: a writev per
frame from C; ``ring``: the burst in one ``io_uring_enter``).  On a real TAP in a private network
namespace, each mode puts the same frames on the kernel's side of the wire (seen by an AF_PACKET
socket there) with the same counters, and reads the same frames the kernel sends.  And the port
works without the extension.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from helpers import build_arp_frame, build_udp_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from tap_helpers import KERNEL_ADDRESS, STACK_ADDRESS, requires_netns
from tcp_helpers import build_tcp_frame

from trio_yastack.nic import _tap_io
from trio_yastack.nic.netns import NetworkNamespace, tap_in_netns
from trio_yastack.nic.tap import _PLAIN_VNET_HDR, VNET_HDR_LEN, TapPort, _offload_header
from trio_yastack.stack import ChecksumVerified, OffloadPacket
from trio_yastack.stack.wire import ARP_REQUEST
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_PSH

BUILT = _tap_io.NATIVE
needs_native = pytest.mark.skipif(not BUILT, reason="the TAP I/O extension is not built")
NATIVE_MODES = [_tap_io.TapIoMode.LOOP, _tap_io.TapIoMode.RING]
MODES = ["python", "loop", "ring"]
WAIT = 5.0  # seconds any single wait for the kernel may take
MAC = "02:79:61:00:00:02"


def tcp_offload(payload_len: int, gso_size: int = 0, *, options: bytes = b"") -> OffloadPacket:
    """A TCP/IPv4 data segment from us to the kernel side, as the stack hands it to a port with
    checksum offload (an OffloadPacket; the checksum field is whatever the builder left)."""
    payload = (bytes(range(256)) * (payload_len // 256 + 1))[:payload_len]
    frame = build_tcp_frame(
        40001, 5001, 1, 1, TCP_ACK | TCP_PSH, payload=payload, options=options, src_ip=STACK_ADDRESS,
        dst_ip=KERNEL_ADDRESS, src_mac=MAC,
    )  # fmt: skip
    packet = OffloadPacket(len(frame), gso_size)
    packet[:] = frame
    return packet


def tcp6_offload(payload_len: int, gso_size: int = 0) -> OffloadPacket:
    """A TCP/IPv6 data segment (no extension header) from us to the kernel side, as the stack
    hands it to a port with TSO6 and checksum offload."""
    tcp = bytearray(20 + payload_len)
    tcp[0:14] = (40001).to_bytes(2, "big") + (5001).to_bytes(2, "big") + bytes(8) + bytes([0x50, TCP_ACK])
    tcp[20:] = (bytes(range(256)) * (payload_len // 256 + 1))[:payload_len]
    ip6 = bytes([0x60, 0, 0, 0]) + len(tcp).to_bytes(2, "big") + bytes([6, 64])
    ip6 += (0x20010002 << 96 | 2).to_bytes(16, "big") + (0x20010002 << 96 | 1).to_bytes(16, "big")
    frame = b"\x02\x00\x00\x00\x00\x01" + bytes.fromhex(MAC.replace(":", "")) + b"\x86\xdd" + ip6 + tcp
    packet = OffloadPacket(len(frame), gso_size)
    packet[:] = frame
    return packet


def udp(payload: bytes) -> bytes:
    """A UDP datagram from us to the kernel side (a complete frame: no offload asked)."""
    return build_udp_frame(MAC, "02:00:00:00:00:01", STACK_ADDRESS, KERNEL_ADDRESS, 5353, 53, payload)


def twin_wire(frame: bytes) -> bytes:
    """What the twin writes for ``frame``: its virtio-net header, then the frame."""
    if isinstance(frame, OffloadPacket):
        header = _offload_header(frame)
        assert header is not None, "the tests offload only TCP frames"
        return header + frame
    return _PLAIN_VNET_HDR + frame


def arp_request() -> bytes:
    return build_arp_frame(ARP_REQUEST, MAC, STACK_ADDRESS, "00:00:00:00:00:00", KERNEL_ADDRESS)


@pytest.fixture
def seqpacket() -> Iterator[tuple[int, socket.socket]]:
    """A non-blocking descriptor that takes and gives one frame per call, and its other end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    with ours, theirs:
        yield ours.fileno(), theirs


def read_messages(sock: socket.socket) -> list[bytes]:
    """Every message waiting on ``sock`` (non-blocking)."""
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            return out


# -- the C path against the twin on a socket pair ---------------------------------------------
@needs_native
@pytest.mark.parametrize("mode", NATIVE_MODES)
def test_tx_writes_each_frame_behind_the_twins_header(seqpacket: tuple[int, socket.socket],
                                                      mode: _tap_io.TapIoMode) -> None:  # fmt: skip
    """A mixed burst (plain frames, partial-checksum segments with and without TSO, options that
    lengthen the TCP header) leaves as one message per frame: the twin's virtio-net header, then
    the frame, in order; the counters say what was written."""
    fd, theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=True, max_frame_len=1514, frame_size=2048, max_burst=8, mode=mode)
    frames: list[Any] = [  # bytes and OffloadPackets (bytearrays), as the poll loop hands them
        arp_request(), tcp_offload(100), tcp_offload(3000, 1448), tcp_offload(10, options=bytes(12)),
        udp(b"q" * 40), tcp_offload(1460),
    ]  # fmt: skip
    assert io.tx(frames) == (6, 6, sum(map(len, frames)), 0)
    assert read_messages(theirs) == [twin_wire(f) for f in frames]
    io.close()


@needs_native
@pytest.mark.parametrize("mode", NATIVE_MODES)
def test_tx_writes_tcp6_segments_behind_the_twins_header(seqpacket: tuple[int, socket.socket],
                                                         mode: _tap_io.TapIoMode) -> None:  # fmt: skip
    """TCP/IPv6 segments with a partial checksum, with and without TSO6 (``GSO_TCPV6``), leave
    behind the twin's header: none is refused (the C path once took only TCP/IPv4, and every
    IPv6 TSO segment was lost)."""
    fd, theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=True, max_frame_len=1514, frame_size=2048, max_burst=8, mode=mode)
    frames: list[Any] = [tcp6_offload(100), tcp6_offload(3000, 1440), arp_request(), tcp6_offload(1440)]
    assert io.tx(frames) == (4, 4, sum(map(len, frames)), 0)
    assert read_messages(theirs) == [twin_wire(f) for f in frames]
    header = _offload_header(frames[1])
    assert header is not None and header[1] == 4  # VIRTIO_NET_HDR_GSO_TCPV6
    io.close()


@needs_native
@pytest.mark.parametrize("mode", NATIVE_MODES)
def test_tx_refuses_what_the_twin_refuses_and_sends_the_rest(seqpacket: tuple[int, socket.socket],
                                                             mode: _tap_io.TapIoMode) -> None:  # fmt: skip
    """Over the MTU without TSO, or a partial checksum on a frame that is not TCP/IPv4: counted
    as refused, taken, not written; the frames around them still go, in order."""
    fd, theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=True, max_frame_len=1514, frame_size=2048, max_burst=8, mode=mode)
    not_tcp = OffloadPacket(42)
    not_tcp[:] = arp_request()
    good = [arp_request(), tcp_offload(200)]
    frames = [good[0], bytes(1515), not_tcp, good[1]]
    assert io.tx(frames) == (4, 2, 42 + len(good[1]), 2)  # type: ignore[arg-type]  # an OffloadPacket in a bytes burst
    assert [m[VNET_HDR_LEN:] for m in read_messages(theirs)] == [bytes(f) for f in good]
    io.close()


@needs_native
@pytest.mark.parametrize("mode", NATIVE_MODES)
def test_tx_without_vnet_writes_bare_frames_and_refuses_tso(seqpacket: tuple[int, socket.socket],
                                                            mode: _tap_io.TapIoMode) -> None:  # fmt: skip
    """Without the virtio-net header frames go as they are, and a TSO frame cannot be sent."""
    fd, theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=False, max_frame_len=1514, frame_size=2048, max_burst=8, mode=mode)
    frames = [arp_request(), tcp_offload(3000, 1448), arp_request() + b"x"]
    assert io.tx(frames) == (3, 2, 42 + 43, 1)  # type: ignore[arg-type]  # an OffloadPacket in a bytes burst
    assert read_messages(theirs) == [frames[0], frames[2]]
    io.close()


@needs_native
@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 1400), st.integers(0, 1448), st.booleans()), max_size=20),
    mode=st.sampled_from(NATIVE_MODES),
)
def test_tx_headers_equal_the_twins_for_any_burst(
    sizes: list[tuple[int, int, bool]], mode: _tap_io.TapIoMode
) -> None:
    """Any burst of segments (payload size, gso_size, offloaded or not): the same bytes as the twin
    would write, one message per frame."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        ours.setblocking(False)
        theirs.setblocking(False)
        io = _tap_io.TapBurstIO(ours.fileno(), vnet=True, max_frame_len=1514, frame_size=2048, max_burst=8,
                                mode=mode)  # fmt: skip
        frames: list[Any] = [
            tcp_offload(n, g) if partial else bytes(tcp_offload(n)) for n, g, partial in sizes
        ]
        assert io.tx(frames)[:2] == (len(frames), len(frames))
        assert read_messages(theirs) == [twin_wire(f) for f in frames]
        io.close()


@needs_native
@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(
        st.tuples(st.sampled_from([0, 60, 1448, 9000, 40000, 65160]), st.booleans()), min_size=1, max_size=12
    ),
    mode=st.sampled_from(NATIVE_MODES),
)
def test_tx_by_pointers_writes_what_the_joined_burst_writes(
    sizes: list[tuple[int, bool]], mode: _tap_io.TapIoMode
) -> None:
    """A burst with a large frame goes to C as one pointer per frame (``yas_tap_tx_frames``), not
    joined: the same messages, counters and refusals as the joined path and the twin, whichever
    path the burst takes (the threshold forced both ways)."""
    frames: list[Any] = []
    for n, partial in sizes:
        frame = tcp_offload(n, 1448 if n > 1448 else 0)
        frames.append(frame if partial or n > 1448 else bytes(frame))
    results = []
    for threshold in (0, 1 << 30):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            ours.setblocking(False)
            theirs.setblocking(False)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            io = _tap_io.TapBurstIO(ours.fileno(), vnet=True, max_frame_len=1514, frame_size=2048,
                                    max_burst=8, mode=mode)  # fmt: skip
            saved = _tap_io._POINTERS_MIN
            _tap_io._POINTERS_MIN = threshold
            try:
                counts = io.tx(frames)
            finally:
                _tap_io._POINTERS_MIN = saved
            results.append((counts, read_messages(theirs)))
            io.close()
    assert results[0] == results[1]
    counts, messages = results[0]
    assert counts == (len(frames), len(frames), sum(map(len, frames)), 0)
    assert messages == [twin_wire(f) for f in frames]


@needs_native
def test_a_burst_of_pointers_longer_than_the_ring_goes_in_chunks(
    seqpacket: tuple[int, socket.socket],
) -> None:
    """300 large frames by pointer (more than the 256 a chunk holds): what was taken arrived, in
    order, in both native modes; a full queue leaves the rest to the caller."""
    fd, theirs = seqpacket
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    for mode in NATIVE_MODES:
        io = _tap_io.TapBurstIO(fd, vnet=False, max_frame_len=70000, frame_size=2048, max_burst=8, mode=mode)
        frames = [i.to_bytes(4, "big") + bytes(9000) for i in range(300)]
        taken, written, nbytes, refused = io.tx(frames)
        got = read_messages(theirs)
        assert taken == written == len(got) and nbytes == 9004 * taken and refused == 0
        assert got == frames[:taken]
        io.close()


@needs_native
def test_a_burst_longer_than_the_ring_goes_in_several_submissions(
    seqpacket: tuple[int, socket.socket],
) -> None:
    """600 frames (more than the ring's 256 entries) all leave, in order."""
    fd, theirs = seqpacket
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    io = _tap_io.TapBurstIO(fd, vnet=True, max_frame_len=1514, frame_size=2048, max_burst=8,
                            mode=_tap_io.TapIoMode.RING)  # fmt: skip
    frames = [i.to_bytes(4, "big") + bytes(60) for i in range(600)]
    taken, written, _, _ = io.tx(frames)
    got = read_messages(theirs)
    assert taken == written == len(got)  # the pair's queue may fill first: what was taken arrived
    assert [m[VNET_HDR_LEN:] for m in got] == frames[:taken]
    assert taken > 256
    io.close()


@needs_native
def test_a_full_queue_leaves_the_rest_to_the_caller(seqpacket: tuple[int, socket.socket]) -> None:
    """When the descriptor says EAGAIN the burst stops there: ``taken`` counts what went, the
    caller keeps the rest (DPDK's tx_burst semantics), in every mode."""
    fd, theirs = seqpacket
    os.set_blocking(fd, False)
    for mode in NATIVE_MODES:
        io = _tap_io.TapBurstIO(fd, vnet=False, max_frame_len=70000, frame_size=2048, max_burst=8, mode=mode)
        frames = [bytes(60000)] * 64
        taken, written, nbytes, refused = io.tx(frames)
        assert 0 < taken < 64 and written == taken and nbytes == 60000 * taken and refused == 0
        assert len(read_messages(theirs)) == taken
        io.close()


@needs_native
def test_io_uring_refused_falls_back_to_the_loop(seqpacket: tuple[int, socket.socket]) -> None:
    """Where the kernel refuses an io_uring (io_uring_disabled, seccomp) the first burst finds
    out, and every burst goes by the C loop instead: the frames still leave."""
    fd, theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=True, max_frame_len=1514, frame_size=2048, max_burst=8,
                            mode=_tap_io.TapIoMode.RING)  # fmt: skip
    real = io._lib

    class Refusing:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def yas_tap_ring_open(fd: int, out: Any) -> int:
            return -errno.EPERM

    io._lib = Refusing()
    assert io.tx([arp_request()] * 3)[:2] == (3, 3)
    assert io.mode is _tap_io.TapIoMode.LOOP
    assert len(read_messages(theirs)) == 3
    io.close()


@needs_native
def test_a_forked_worker_opens_its_own_ring(seqpacket: tuple[int, socket.socket]) -> None:
    """The ring is opened at the first burst, and ``forget_ring`` (what ``keep_only_queue`` calls
    in a worker forked after the port opened) drops it so the next burst opens another: two
    processes never share one ring's memory."""
    fd, theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=False, max_frame_len=1514, frame_size=2048, max_burst=8,
                            mode=_tap_io.TapIoMode.RING)  # fmt: skip
    assert io._ring is None  # nothing opened before the first burst
    assert io.tx([arp_request()] * 3)[:2] == (3, 3)
    first = io._ring
    assert first is not None and first != io._ffi.NULL
    io.forget_ring()
    assert io._ring is None
    assert io.tx([arp_request()] * 3)[:2] == (3, 3)
    assert io._ring is not None and io.mode is _tap_io.TapIoMode.RING
    assert len(read_messages(theirs)) == 6
    io.close()


@needs_native
@pytest.mark.parametrize("vnet", [True, False])
def test_rx_reads_a_frame_per_message_and_marks_what_the_header_vouches_for(
    seqpacket: tuple[int, socket.socket], vnet: bool
) -> None:
    """Frames come back whole, a ChecksumVerified where the header has NEEDS_CSUM or DATA_VALID;
    a message of no more than a header is counted as an error and skipped; ``max_n`` bounds the
    burst, and an empty queue gives nothing."""
    fd, theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=vnet, max_frame_len=1514, frame_size=2048, max_burst=4)
    payloads = [b"a" * 60, b"b" * 1514, b"c" * 61, b"d" * 62, b"e" * 63]
    flags = [0, 1, 2, 0, 3]
    for payload, flag in zip(payloads, flags, strict=True):
        theirs.send((bytes([flag]) + bytes(VNET_HDR_LEN - 1) if vnet else b"") + payload)
        if vnet and flag == 2:
            theirs.send(bytes(VNET_HDR_LEN))  # a header alone
    frames, nbytes, errors = io.rx(64)  # bounded by max_burst
    assert [bytes(f) for f in frames] == payloads[:4] and nbytes == sum(map(len, payloads[:4]))
    assert errors == (1 if vnet else 0)
    want_types = [ChecksumVerified if vnet and flag else bytes for flag in flags[:4]]
    assert [type(f) for f in frames] == want_types
    assert [bytes(f) for f in io.rx(2)[0]] == payloads[4:]
    assert io.rx(2) == ([], 0, 0)
    io.close()


@needs_native
def test_rx_error_on_the_first_read_is_raised(seqpacket: tuple[int, socket.socket]) -> None:
    fd, _theirs = seqpacket
    io = _tap_io.TapBurstIO(fd, vnet=False, max_frame_len=1514, frame_size=2048, max_burst=4)
    io.fd = -1
    with pytest.raises(OSError) as raised:
        io.rx(4)
    assert raised.value.errno == errno.EBADF
    io.close()


def test_an_unknown_mode_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_YASTACK_TAP_IO", "uring")
    with pytest.raises(ValueError, match="TRIO_YASTACK_TAP_IO='uring'"):
        _tap_io.chosen_io_mode()


def test_package_works_without_the_extension() -> None:
    """With the native part disabled the TAP port's Python loops are the path."""
    code = (
        "from trio_yastack.nic import _tap_io as t; assert not t.NATIVE;"
        "assert t.chosen_io_mode() is t.TapIoMode.PYTHON;"
        "import trio_yastack.nic.tap; print('ok')"
    )
    env = dict(os.environ, TRIO_YASTACK_NO_NATIVE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- on a real TAP: every mode, the same wire ---------------------------------------------------
def open_mode(netns: NetworkNamespace, mode: str, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Any:
    """``tap_in_netns`` with ``TRIO_YASTACK_TAP_IO=mode`` (the python mode also without the
    extension at all, as on a machine where it did not build)."""
    monkeypatch.setenv("TRIO_YASTACK_TAP_IO", mode)
    if mode != "python" and not BUILT:
        pytest.skip("the TAP I/O extension is not built")
    monkeypatch.setattr(_tap_io, "NATIVE", BUILT and mode != "python")
    return tap_in_netns(netns, "yas0", mac=MAC, **options)


async def capture(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` frames from a non-blocking AF_PACKET socket, waiting on readiness (bounded)."""
    got: list[bytes] = []
    with trio.fail_after(WAIT):
        while len(got) < count:
            await trio.lowlevel.wait_readable(sock)
            got.extend(read_messages(sock))
    return got


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_every_mode_puts_the_same_frames_on_the_wire(
    netns: NetworkNamespace, monkeypatch: pytest.MonkeyPatch, offloads: bool
) -> None:
    """The kernel receives byte-identical frames from a mixed burst in every mode (python, loop,
    ring), and the port's counters agree: partial checksums and a TSO frame with offloads,
    refusals (over the MTU, TSO without offloads) counted and skipped."""
    seen: dict[str, tuple[int, Any, list[bytes]]] = {}
    for mode in MODES:
        with open_mode(netns, mode, monkeypatch, offloads=offloads, kernel_address=None) as port:
            assert port.io_mode.value == mode
            with netns.entered():
                sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            with sniffer:
                sniffer.bind(("yas0", 0))
                sniffer.setblocking(False)
                burst: list[Any] = [
                    arp_request(), tcp_offload(100), tcp_offload(3000, 1448),
                    bytes(port.capabilities.max_frame_len + 1), tcp_offload(1460),
                    udp(b"q" * 40),
                ]  # fmt: skip
                taken = port.tx_burst(0, burst)
                stats = port.statistics()
                frames = await capture(sniffer, stats.opackets)
                seen[mode] = (taken, stats, frames)
    # with offloads all but the oversize frame; without, the TSO frame is refused too
    assert (seen["python"][1].opackets, seen["python"][1].oerrors) == ((5, 1) if offloads else (4, 2))
    assert seen["loop"] == seen["python"]
    assert seen["ring"] == seen["python"]


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_every_mode_reads_the_same_frames(
    netns: NetworkNamespace, monkeypatch: pytest.MonkeyPatch, offloads: bool
) -> None:
    """What the kernel sends (UDP datagrams of several sizes to a neighbour with our MAC) comes
    back the same in every mode: the same bytes (but the kernel side's MAC, the IP ID and header
    checksum, the kernel's to choose), the same types (ChecksumVerified when the kernel vouches),
    the same counters."""
    sizes = [1, 100, 1472, 500, 0, 1000, 64]
    seen: dict[str, tuple[list[tuple[type, bytes]], int]] = {}
    for mode in MODES:
        with open_mode(netns, mode, monkeypatch, offloads=offloads) as port:
            netns.run(["ip", "neigh", "replace", "198.18.0.99", "lladdr", MAC, "dev", "yas0"], check=True)
            with netns.entered():
                sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sender:
                sender.bind((KERNEL_ADDRESS, 40000))  # the same source port (and checksum) each time
                for i, size in enumerate(sizes):
                    sender.sendto(bytes([i]) * size, ("198.18.0.99", 9))
            frames: list[bytes] = []
            with trio.fail_after(WAIT):
                while True:
                    frames.extend(f for f in port.rx_burst(0, 3) if f[12:14] == b"\x08\x00")
                    if len(frames) >= len(sizes):
                        break
                    await port.wait_rx(0)
            # the kernel side's MAC (a new device each time), IP ID and header checksum masked out
            masked = [
                (type(f), bytes(f[:6]) + bytes(f[12:18]) + bytes(f[20:24]) + bytes(f[26:])) for f in frames
            ]
            seen[mode] = (masked, port.statistics().ierrors)
    assert [len(f) + 10 for _, f in seen["python"][0]] == [42 + size for size in sizes]
    assert seen["loop"] == seen["python"]
    assert seen["ring"] == seen["python"]


@requires_netns
async def test_a_stack_talks_to_the_kernel_in_every_mode(
    netns: NetworkNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel pings the stack over a port in each mode (ARP both ways, ICMP echo)."""
    from trio_yastack import open_stack

    for mode in MODES:
        with open_mode(netns, mode, monkeypatch) as port:
            assert isinstance(port, TapPort)
            async with open_stack(port, ip=f"{STACK_ADDRESS}/24"):
                done = await trio.to_thread.run_sync(
                    lambda: netns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", STACK_ADDRESS])
                )
                assert done.returncode == 0, (mode, done.stdout)
