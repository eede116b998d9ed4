"""The stack against the real Linux kernel, through a TAP device in a private network namespace.

Each test makes its own namespace (the ``netns`` fixture) with the kernel side at 198.18.0.1/24
on TAP ``yas0`` and the stack at 198.18.0.2/24; no traffic goes anywhere else.  Kernel-side work
(ping, curl, tshark, http.server, plain blocking sockets) runs in worker threads or subprocesses
so the stack's poll loop keeps running meanwhile.  Every wait is on a real event (a process
printing a line or exiting, a socket accepting or receiving) and bounded by ``trio.fail_after``;
every loop is bounded in count.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import trio
from tap_helpers import (
    KERNEL_ADDRESS,
    STACK_ADDRESS,
    kernel_peer,
    peer_result,
    requires_netns,
    stack_on_tap,
)

from trio_yastack.nic.netns import NetworkNamespace

pytestmark = [requires_netns, pytest.mark.netns]

T = TypeVar("T")

OFFLOADS = pytest.mark.parametrize("offloads", [True, False], ids=["offloads-on", "offloads-off"])
HTTP_PORT = 8080
SMALL_BODY = b"hello from the user-space stack\n"
BIG_BODY = random.Random(20240601).randbytes(5_000_000)
LINGER_ZERO = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}: close() resets


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run blocking kernel-side work in a worker thread; the stack keeps running meanwhile (and a
    cancelled wait abandons the thread: its process or socket is ended at teardown)."""
    return await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True)


def wait_for_line(stream: IO[str], marker: str, max_lines: int = 100) -> str:
    """Read ``stream`` until a line containing ``marker`` (blocking; at most ``max_lines`` lines)."""
    seen = []
    for _ in range(max_lines):
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"{marker!r} never printed; got {seen!r}")


async def http_responder(stream: trio.SocketStream) -> None:
    """A minimal HTTP/1.1 server: ``/big`` is BIG_BODY, anything else SMALL_BODY; then close."""
    request = b""
    for _ in range(100):
        if b"\r\n\r\n" in request:
            break
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        request += chunk
    path = request.split(b" ", 2)[1]
    body = BIG_BODY if path == b"/big" else SMALL_BODY
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    await stream.send_all(head + body)
    await stream.aclose()


async def echo_handler(stream: trio.SocketStream) -> None:
    """Echo everything until the peer's FIN, then close."""
    async with stream:
        for _ in range(1_000_000):
            data = await stream.receive_some(262144)
            if not data:
                return
            await stream.send_all(data)


async def recv_until_eof(sock: Any, max_calls: int = 100_000) -> bytes:
    """Everything a stack socket receives until the peer's FIN."""
    chunks = []
    for _ in range(max_calls):
        data = await sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
    raise AssertionError("no end of stream")


async def send_all(sock: Any, data: bytes, max_calls: int = 100_000) -> None:
    """Send all of ``data`` on a stack socket (``send`` may take part of it)."""
    view = memoryview(data)
    for _ in range(max_calls):
        if not view:
            return
        view = view[await sock.send(view) :]
    raise AssertionError(f"{len(view)} bytes never sent")


async def stack_listener(port: int) -> Any:
    """A listening TCP socket on the stack (``trio.socket.socket()`` is the stack's while open)."""
    listener = trio.socket.socket()
    await listener.bind(("0.0.0.0", port))
    listener.listen(8)
    return listener


def kernel_connect(netns: NetworkNamespace, port: int) -> socket.socket:
    """A blocking kernel socket in the namespace, connected to the stack (10 s timeouts)."""
    with netns.entered():
        return socket.create_connection((STACK_ADDRESS, port), timeout=10)


def kernel_mac(netns: NetworkNamespace) -> str:
    return netns.run(["cat", "/sys/class/net/yas0/address"], check=True).stdout.strip()


# -- 1. ICMP and ARP ------------------------------------------------------------------------------
@OFFLOADS
async def test_kernel_pings_stack(netns: NetworkNamespace, offloads: bool) -> None:
    """``ping -c 100 -i 0.01`` from the kernel: all 100 answered; the kernel resolved the stack by
    ARP (the stack answered its request) and its neighbour table holds the stack's MAC."""
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        with trio.fail_after(30):
            result = await in_thread(
                netns.run, ["ping", "-n", "-q", "-c", "100", "-i", "0.01", "-w", "20", STACK_ADDRESS]
            )
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"100 packets transmitted, 100 received, 0% packet loss", result.stdout), (
            result.stdout
        )
        icmp = stack.statistics().icmp
        assert icmp.echo_requests_received == 100
        assert icmp.echo_replies_sent == 100
        arp = stack.statistics().arp
        assert arp.requests_received >= 1
        assert arp.replies_sent >= 1
        neigh = json.loads(netns.run(["ip", "-j", "neigh", "show", STACK_ADDRESS, "dev", "yas0"]).stdout)
        assert len(neigh) == 1, neigh
        assert neigh[0]["lladdr"] == str(stack.mac)
        assert not {"FAILED", "INCOMPLETE"} & set(neigh[0].get("state", [])), neigh


@OFFLOADS
async def test_stack_pings_kernel_first(netns: NetworkNamespace, offloads: bool) -> None:
    """A fresh stack pings the kernel before anything else: it resolves 198.18.0.1 by ARP (request
    sent, reply received, the kernel's real MAC learned), the held echo request goes out and the
    kernel's reply comes back; the kernel then pings the stack with no loss."""
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        before = stack.statistics().arp
        assert before.entries_learned == 0
        async with stack.ping_socket() as pinger:
            with trio.fail_after(10):
                reply = await pinger.ping(KERNEL_ADDRESS, 1, b"yastack-ping", timeout=5)
                second = await pinger.ping(KERNEL_ADDRESS, 2, b"again", timeout=5)
        assert reply.source == KERNEL_ADDRESS and reply.seq == 1 and reply.data == b"yastack-ping"
        assert second.seq == 2 and second.data == b"again"
        arp = stack.statistics().arp
        assert arp.requests_sent > before.requests_sent
        assert arp.replies_received >= 1
        assert arp.entries_learned >= 1
        assert arp.resolution_failures == 0
        learned = stack.core.arp.cache[int(IPv4Address(KERNEL_ADDRESS))][0]
        assert ":".join(f"{octet:02x}" for octet in learned) == kernel_mac(netns)
        assert stack.statistics().icmp.echo_replies_received == 2

        with trio.fail_after(30):
            result = await in_thread(
                netns.run, ["ping", "-n", "-q", "-c", "100", "-i", "0.01", "-w", "20", STACK_ADDRESS]
            )
        assert "100 packets transmitted, 100 received, 0% packet loss" in result.stdout, result.stdout
        neigh = json.loads(netns.run(["ip", "-j", "neigh", "show", STACK_ADDRESS, "dev", "yas0"]).stdout)
        assert [entry["lladdr"] for entry in neigh] == [str(stack.mac)]


@OFFLOADS
async def test_fragmented_pings_both_ways(netns: NetworkNamespace, offloads: bool) -> None:
    """Echo requests bigger than the MTU, up to the largest IPv4 datagram: the stack reassembles
    the kernel's fragments and fragments its replies so the kernel reassembles them; and the
    kernel does the same for the stack's big requests (payload returned byte for byte)."""
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        with trio.fail_after(30):
            for size in (1472, 4000, 65507):  # the last fills a 65535-byte datagram
                result = await in_thread(
                    netns.run,
                    ["ping", "-n", "-q", "-c", "3", "-i", "0.05", "-w", "10", "-s", str(size), STACK_ADDRESS],
                )
                assert "3 packets transmitted, 3 received, 0% packet loss" in result.stdout, (
                    size,
                    result.stdout,
                )
            async with stack.ping_socket() as pinger:
                for seq, size in enumerate((1472, 4000, 30000), start=1):
                    data = random.Random(size).randbytes(size)
                    reply = await pinger.ping(KERNEL_ADDRESS, seq, data, timeout=5)
                    assert reply.data == data, size
        ip = stack.statistics().ip
        assert ip.reassembled >= 6 and ip.fragmented >= 6, ip
        assert not ip.dropped, ip.dropped


# -- 2. curl against a trio.serve_tcp server on the stack -----------------------------------------
@OFFLOADS
async def test_curl_from_kernel_to_stack_http_server(
    netns: NetworkNamespace, offloads: bool, tmp_path: Path
) -> None:
    """curl on the kernel side fetches from ``trio.serve_tcp`` on the stack: a small body byte for
    byte, and a 5 MB body with the right SHA-256; no TCP drops on the stack."""
    out = tmp_path / "big.bin"
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port), trio.open_nursery() as nursery:
        await nursery.start(trio.serve_tcp, http_responder, HTTP_PORT)
        with trio.fail_after(30):
            small = await in_thread(
                netns.run, ["curl", "-sS", "-m", "10", f"http://{STACK_ADDRESS}:{HTTP_PORT}/small"]
            )
            big = await in_thread(
                netns.run,
                ["curl", "-sS", "-m", "20", "-o", str(out), f"http://{STACK_ADDRESS}:{HTTP_PORT}/big"],
            )
        nursery.cancel_scope.cancel()
    assert small.returncode == 0, small.stderr
    assert small.stdout == SMALL_BODY.decode()
    assert big.returncode == 0, big.stderr
    assert out.stat().st_size == len(BIG_BODY)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(BIG_BODY).hexdigest()
    tcp = stack.statistics().tcp
    assert tcp.connections_accepted == 2
    assert tcp.bytes_sent >= len(BIG_BODY) + len(SMALL_BODY)
    assert not tcp.dropped, tcp.dropped


# -- 3. the stack as a client of a kernel-side HTTP server ----------------------------------------
@OFFLOADS
async def test_stack_client_fetches_from_kernel_http_server(
    netns: NetworkNamespace, offloads: bool, tmp_path: Path
) -> None:
    """``trio.open_tcp_stream`` over the stack downloads a 1 MB file from ``python -m http.server``
    on the kernel side; the body's SHA-256 matches the file."""
    blob = random.Random(7).randbytes(1 << 20)
    (tmp_path / "blob.bin").write_bytes(blob)
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        server = netns.popen(
            [sys.executable, "-u", "-m", "http.server", "8000", "--bind", KERNEL_ADDRESS,
             "--directory", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        with trio.fail_after(30):
            await in_thread(wait_for_line, server.stdout, "Serving HTTP on")
            stream = await trio.open_tcp_stream(KERNEL_ADDRESS, 8000)
            async with stream:
                await stream.send_all(b"GET /blob.bin HTTP/1.0\r\nHost: 198.18.0.1\r\n\r\n")
                response = bytearray()
                for _ in range(100_000):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    response += chunk
        head, _, body = bytes(response).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), head
        assert f"Content-Length: {len(blob)}".encode() in head
        assert len(body) == len(blob)
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(blob).hexdigest()
        tcp = stack.statistics().tcp
        assert tcp.active_opens == 1 and tcp.connections_established == 1
        assert tcp.bytes_received == len(response)


# -- 4. many concurrent kernel connections ------------------------------------------------------
@OFFLOADS
async def test_200_concurrent_kernel_connections_echo_1mb(netns: NetworkNamespace, offloads: bool) -> None:
    """200 concurrent kernel connections each send 1 MB to an echo server on the stack and read it
    back: every stream comes back intact (length and SHA-256)."""
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port), trio.open_nursery() as nursery:
        await nursery.start(trio.serve_tcp, echo_handler, 7007)
        peer = kernel_peer(netns, "--timeout", "60", "echo-clients", STACK_ADDRESS, 7007, 200, 1_000_000)
        with trio.fail_after(90):
            result = await in_thread(peer_result, peer, 80)
        nursery.cancel_scope.cancel()
    assert result["connections"] == 200
    assert result["mismatched"] == []
    tcp = stack.statistics().tcp
    assert tcp.connections_accepted == 200
    assert tcp.bytes_received == 200 * 1_000_000
    assert tcp.bytes_sent >= 200 * 1_000_000  # (counts retransmissions too)


# -- 5. half-close, resets, refusal -------------------------------------------------------------
@OFFLOADS
async def test_stack_half_close_seen_by_kernel(netns: NetworkNamespace, offloads: bool) -> None:
    """The stack sends data then ``shutdown(SHUT_WR)``: the kernel reads all the data then EOF, and
    can still send afterwards (half-open); the stack receives that, then the kernel's FIN."""
    payload = random.Random(3).randbytes(300_000)

    def kernel_side() -> tuple[bytes, bytes]:
        with kernel_connect(netns, 7100) as sock:
            chunks = []
            for _ in range(10_000):
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
            sock.sendall(b"written after the stack's FIN")
            sock.shutdown(socket.SHUT_WR)
            after = sock.recv(100)  # the stack closes: EOF again, no reset
            return b"".join(chunks), after

    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        listener = await stack_listener(7100)
        outcome: dict[str, tuple[bytes, bytes]] = {}

        async def run_kernel_side() -> None:
            outcome["kernel"] = await in_thread(kernel_side)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_kernel_side)
                conn, _ = await listener.accept()
                await send_all(conn, payload)
                conn.shutdown(socket.SHUT_WR)
                received = await recv_until_eof(conn)
                conn.close()
        listener.close()
        assert stack.statistics().tcp.resets_sent == 0
    kernel_data, after = outcome["kernel"]
    assert len(kernel_data) == len(payload) and kernel_data == payload
    assert after == b""
    assert received == b"written after the stack's FIN"


@OFFLOADS
@pytest.mark.parametrize(
    ("port", "sent", "read", "linger"),
    [(7200, b"!", 1, True), (7250, b"0123456789", 5, False)],
    ids=["so-linger-zero", "unread-data"],
)
async def test_stack_reset_seen_by_kernel(
    netns: NetworkNamespace, offloads: bool, port: int, sent: bytes, read: int, linger: bool
) -> None:
    """close() on the stack sends RST, and the kernel's blocked ``recv`` raises
    ConnectionResetError (ECONNRESET), not EOF: after SO_LINGER {1, 0}, or with received data
    still unread (as Linux does, RFC 1122 4.2.2.13: data was lost).  The kernel sends first, so
    its connect() has returned before the reset (a reset before that would fail connect), and the
    stack reads part of it, so the data is not just the FIN's."""

    def kernel_side() -> BaseException | bytes:
        with kernel_connect(netns, port) as sock:
            sock.sendall(sent)  # one segment
            try:
                return sock.recv(100)
            except OSError as exc:
                return exc

    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        listener = await stack_listener(port)
        outcome: dict[str, BaseException | bytes] = {}

        async def run_kernel_side() -> None:
            outcome["kernel"] = await in_thread(kernel_side)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_kernel_side)
                conn, _ = await listener.accept()
                assert await conn.recv(read) == sent[:read]
                if linger:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                conn.close()
        listener.close()
        assert stack.statistics().tcp.resets_sent >= 1
    assert isinstance(outcome["kernel"], ConnectionResetError), outcome["kernel"]


@OFFLOADS
@pytest.mark.parametrize("api", ["socket", "stream"])
async def test_kernel_abort_resets_stack(netns: NetworkNamespace, offloads: bool, api: str) -> None:
    """The kernel closes with SO_LINGER {1, 0} (RST): the stack's pending receive fails with
    ConnectionResetError (trio.socket) or BrokenResourceError caused by it (trio.SocketStream)."""

    def kernel_side() -> bytes:
        with kernel_connect(netns, 7300) as sock:
            sock.sendall(b"hello")
            ready = sock.recv(5)  # the stack has read "hello" and is about to wait in recv
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            return ready

    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        listener = await stack_listener(7300)
        outcome: dict[str, bytes] = {}

        async def run_kernel_side() -> None:
            outcome["kernel"] = await in_thread(kernel_side)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_kernel_side)
                conn, _ = await listener.accept()
                got = b""
                for _ in range(10):
                    if len(got) >= 5:
                        break
                    got += await conn.recv(5 - len(got))
                assert got == b"hello"
                await conn.send(b"ready")
                if api == "socket":
                    with pytest.raises(ConnectionResetError):
                        await conn.recv(100)
                else:
                    stream = trio.SocketStream(conn)
                    with pytest.raises(trio.BrokenResourceError) as caught:
                        await stream.receive_some(100)
                    assert isinstance(caught.value.__cause__, ConnectionResetError)
                conn.close()
        listener.close()
        assert stack.statistics().tcp.resets_received >= 1
    assert outcome["kernel"] == b"ready"


@OFFLOADS
async def test_stack_connect_to_closed_kernel_port_refused(netns: NetworkNamespace, offloads: bool) -> None:
    """Connecting from the stack to a kernel port with no listener: the kernel answers RST and
    ``connect`` raises ConnectionRefusedError; ``trio.open_tcp_stream`` fails with OSError."""
    async with stack_on_tap(netns, offloads=offloads) as (stack, _port):
        with trio.fail_after(15):
            sock = trio.socket.socket()
            with sock, pytest.raises(ConnectionRefusedError):
                await sock.connect((KERNEL_ADDRESS, 9))
            with pytest.raises(OSError):
                await trio.open_tcp_stream(KERNEL_ADDRESS, 9)
        assert stack.statistics().tcp.resets_received >= 2


# -- 6. a kernel-side capture of a whole session -------------------------------------------------
def tshark_read(capture: Path, *args: str) -> list[str]:
    """``tshark -r capture ARGS`` (reading a file touches no interface), its output lines."""
    result = subprocess.run(
        ["tshark", "-n", "-r", str(capture), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (scripts/setup.sh)")
@OFFLOADS
async def test_tshark_capture_of_http_session(
    netns: NetworkNamespace, offloads: bool, tmp_path: Path
) -> None:
    """tshark on the kernel's side of the TAP records a session: curl to the stack, then the stack
    connecting to a kernel listener.  Every SYN and SYN-ACK, from either side, carries MSS, window
    scale, timestamps and SACK-permitted (and the kernel's TCP_INFO agrees all three are on);
    nothing is malformed or an expert error; IP checksums are all good, and with offloads off every
    TCP and ICMP checksum in both directions is too (with offloads on, frames may carry partial
    checksums that the receiving side completes, so those are not checked)."""
    capture = tmp_path / "session.pcapng"
    payload = random.Random(11).randbytes(100_000)
    async with stack_on_tap(netns, offloads=offloads) as (_stack, _port):
        # -P -l: a summary line per packet as tshark handles it, so the test can wait for a packet.
        tshark = netns.popen(
            ["tshark", "-n", "-l", "-P", "-i", "yas0", "-w", str(capture)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with trio.fail_after(30):
            await in_thread(wait_for_line, tshark.stderr, "Capture started")  # dumpcap has the device open
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_tcp, http_responder, HTTP_PORT)
                curl = await in_thread(
                    netns.run, ["curl", "-sS", "-m", "10", f"http://{STACK_ADDRESS}:{HTTP_PORT}/"]
                )
                nursery.cancel_scope.cancel()
            peer = kernel_peer(netns, "--timeout", "20", "recv", 5001)
            await in_thread(wait_for_line, peer.stdout, '"listening"')
            sock = trio.socket.socket()
            with sock:
                await sock.connect((KERNEL_ADDRESS, 5001))
                await send_all(sock, payload)
                sock.shutdown(socket.SHUT_WR)
                assert await recv_until_eof(sock) == b""
            received = await in_thread(peer_result, peer, 20)
            # A marker after the session: once tshark shows its reply, everything before is in.
            marker = await in_thread(netns.run, ["ping", "-n", "-c", "1", "-W", "5", STACK_ADDRESS])
            assert marker.returncode == 0, marker.stdout
            await in_thread(wait_for_line, tshark.stdout, "Echo (ping) reply", 1000)
            tshark.send_signal(signal.SIGINT)  # tshark's orderly stop: flush and close the file
            await in_thread(tshark.communicate, None, 20)
    assert curl.returncode == 0 and curl.stdout == SMALL_BODY.decode(), curl.stderr
    assert received["bytes"] == len(payload)
    assert received["sha256"] == hashlib.sha256(payload).hexdigest()
    info = received["tcp_info"]
    assert info["timestamps"] and info["sack"] and info["window_scaling"], info

    fields = ["ip.src", "tcp.flags.ack", "tcp.option_kind", "tcp.options.wscale.shift",
              "tcp.options.timestamp.tsval", "tcp.options.mss_val", "tcp.options.sack_perm"]  # fmt: skip
    command = ["-T", "fields", "-E", "separator=|", "-Y", "tcp.flags.syn == 1"]
    for field in fields:
        command += ["-e", field]
    syns = [line.split("|") for line in tshark_read(capture, *command)]
    by_kind = {(row[0], row[1]): row for row in syns}
    # curl's SYN and the stack's SYN-ACK, then the stack's SYN and the kernel's SYN-ACK
    expected = {(KERNEL_ADDRESS, "0"), (STACK_ADDRESS, "1"), (STACK_ADDRESS, "0"), (KERNEL_ADDRESS, "1")}
    assert len(syns) == 4 and set(by_kind) == expected, syns
    for row in syns:
        _src, _ack, kinds, wscale, tsval, mss, sack_perm = row
        assert {"2", "3", "4", "8"} <= set(kinds.split(",")), row  # MSS, WS, SACK_PERM, TS
        assert wscale.isdigit() and int(tsval) > 0 and int(mss) > 0 and sack_perm, row

    problems = tshark_read(
        capture, "-o", "tcp.check_checksum:FALSE", "-Y", "_ws.malformed || _ws.expert.severity == error"
    )
    assert problems == [], problems
    assert tshark_read(capture, "-Y", "http.response.code == 200", "-T", "fields", "-e", "ip.src") == [
        STACK_ADDRESS
    ]
    # RFC 1191 3: every TCP datagram of the stack carries DF, as the kernel's do
    ours_tcp = f"ip.src == {STACK_ADDRESS} && tcp"
    assert len(tshark_read(capture, "-Y", f"{ours_tcp} && ip.flags.df == 1")) >= 5
    assert tshark_read(capture, "-Y", f"{ours_tcp} && ip.flags.df == 0") == []

    checks = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
    rows = tshark_read(
        capture, *checks, "-Y", "ip", "-T", "fields", "-E", "separator=|",
        "-e", "ip.src", "-e", "ip.checksum.status", "-e", "tcp.checksum.status", "-e", "icmp.checksum.status",
    )  # fmt: skip
    assert len(rows) >= 12, rows  # handshake, request, response, FINs, the marker ping
    good = "1"  # PROTO_CHECKSUM_E_GOOD
    for row in rows:
        _src, ip_status, tcp_status, icmp_status = row.split("|")
        assert ip_status == good, row
        if not offloads:
            assert (tcp_status or icmp_status) == good, row
