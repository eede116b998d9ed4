"""Tier 4 for TCP over IPv6: the Linux kernel as the peer, through a TAP in a private namespace
with IPv6 enabled there (2001:2::/48 only; the set-up of ``test_tap_ipv6.py``).

- trio's ``open_tcp_stream`` on the stack to a kernel server and back: 100 MiB each way, intact
  by SHA-256 (the kernel reports what it received and the MSS it negotiated);
- a kernel-side tshark capture of the handshake: MSS (MTU - 60), window scale, SACK-permitted
  and timestamps in both SYNs, nothing malformed;
- the kernel's clients to the stack's listeners: a dual-stack one (IPV6_V6ONLY off, Linux's
  default) takes IPv4 and IPv6 clients and shows the IPv4 one v4-mapped; an IPV6_V6ONLY one
  refuses IPv4 (the kernel's connect gets ECONNREFUSED from our RST).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from tap_helpers import requires_netns
from test_tap_ipv6 import KERNEL6, STACK6, TIMEOUT, kernel_run, netns6, stack6

from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.socket_api import StackSocket6

pytestmark = requires_netns
__all__ = ["netns6"]  # (the fixture, used by name)

MIB = 1 << 20

#: the kernel's side of the bulk test: receive ``n`` bytes (hashing them), then send ``n`` bytes
#: of ``random.Random(seed)`` and close; print what it saw as JSON
BULK_PEER = """
import hashlib, json, random, socket, sys
n, seed = int(sys.argv[1]), int(sys.argv[2])
listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("2001:2::1", 9100))
listener.listen(1)
listener.settimeout(60)
print("listening", flush=True)
conn, peer = listener.accept()
conn.settimeout(120)
digest, got = hashlib.sha256(), 0
while got < n:
    data = conn.recv(1 << 20)
    if not data:
        break
    digest.update(data)
    got += len(data)
conn.sendall(random.Random(seed).randbytes(n))
conn.shutdown(socket.SHUT_WR)
mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
conn.recv(1)
conn.close()
print(json.dumps({"bytes": got, "sha256": digest.hexdigest(), "peer": peer[0], "mss": mss}), flush=True)
"""

#: the kernel's clients of the listener tests: connect to each address given, send a line, read
#: the answer (the stack echoes the peer address it saw); "refused" for ECONNREFUSED
CLIENTS = """
import socket, sys
port = int(sys.argv[1])
for host in sys.argv[2:]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(15)
    try:
        sock.connect((host, port))
    except ConnectionRefusedError:
        print("refused", flush=True)
        continue
    sock.sendall(b"hello\\n")
    print(sock.recv(200).decode().strip(), sock.getsockname()[0], sock.getsockname()[1], flush=True)
    sock.close()
"""


async def _readline(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return await trio.to_thread.run_sync(process.stdout.readline)


async def test_100_mib_each_way_with_the_kernel_intact_by_sha256(netns6: NetworkNamespace) -> None:
    n = 100 * MIB
    out = random.Random(1).randbytes(n)
    expected_back = hashlib.sha256(random.Random(2).randbytes(n)).hexdigest()
    async with stack6(netns6):
        peer = netns6.popen([sys.executable, "-c", BULK_PEER, str(n), "2"], stdout=subprocess.PIPE, text=True)
        try:
            with trio.fail_after(TIMEOUT):
                assert (await _readline(peer)).strip() == "listening"
            with trio.fail_after(600):
                stream = await trio.open_tcp_stream(str(KERNEL6), 9100)
                assert isinstance(stream.socket, StackSocket6)
                assert stream.socket.getpeername() == (str(KERNEL6), 9100, 0, 0)
                view = memoryview(out)
                for start in range(0, n, 4 * MIB):
                    await stream.send_all(view[start : start + 4 * MIB])
                digest, got = hashlib.sha256(), 0
                while chunk := await stream.receive_some(MIB):
                    digest.update(chunk)
                    got += len(chunk)
                await stream.aclose()
                result = json.loads(await _readline(peer))
        finally:
            if peer.poll() is None:
                peer.kill()
            peer.wait(timeout=30)
    assert got == n and digest.hexdigest() == expected_back
    assert result["bytes"] == n and result["sha256"] == hashlib.sha256(out).hexdigest()
    assert result["peer"] == str(STACK6)
    assert result["mss"] == 1500 - 60 - 12  # ours, less the timestamp option


def _tshark_fields(capture: Path, *fields: str) -> list[list[str]]:
    command = [
        "tshark",
        "-n",
        "-r",
        str(capture),
        "-Y",
        "tcp.flags.syn == 1",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (scripts/setup.sh)")
async def test_tshark_sees_the_negotiated_options_over_ipv6(netns6: NetworkNamespace, tmp_path: Path) -> None:
    capture = tmp_path / "tcp6.pcapng"
    async with stack6(netns6):
        tshark = netns6.popen(
            ["tshark", "-n", "-l", "-P", "-i", "yas0", "-w", str(capture)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peer = netns6.popen([sys.executable, "-c", BULK_PEER, "1000", "3"], stdout=subprocess.PIPE, text=True)
        try:
            with trio.fail_after(TIMEOUT):
                assert tshark.stderr is not None
                while "Capture started" not in await trio.to_thread.run_sync(tshark.stderr.readline):
                    pass
                assert (await _readline(peer)).strip() == "listening"
                stream = await trio.open_tcp_stream(str(KERNEL6), 9100)
                await stream.send_all(b"x" * 1000)
                got = 0
                while chunk := await stream.receive_some(MIB):
                    got += len(chunk)
                await stream.aclose()
                assert got == 1000
                json.loads(await _readline(peer))
                # a marker after the session: once tshark shows its reply, everything before is in
                marker = await kernel_run(netns6, "ping", "-6", "-n", "-c", "1", "-W", "5", str(STACK6))
                assert marker.returncode == 0, marker.stdout
                assert tshark.stdout is not None
                for _ in range(1000):
                    line = await trio.to_thread.run_sync(tshark.stdout.readline)
                    if not line or "Echo (ping) reply" in line:
                        break
        finally:
            for process in (tshark, peer):
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            tshark.communicate(timeout=20)
            peer.wait(timeout=20)
    syns = _tshark_fields(
        capture, "ipv6.src", "tcp.flags.ack", "tcp.option_kind", "tcp.options.mss_val",
        "tcp.options.wscale.shift", "tcp.options.sack_perm", "tcp.options.timestamp.tsval",
    )  # fmt: skip
    assert {(row[0], row[1]) for row in syns} == {(str(STACK6), "0"), (str(KERNEL6), "1")}, syns
    for _src, _ack, kinds, mss, wscale, sack_perm, tsval in syns:
        assert {"2", "3", "4", "8"} <= set(kinds.split(",")), kinds  # MSS, WS, SACK_PERM, TS
        assert int(mss) == 1440 and wscale.isdigit() and sack_perm and int(tsval) > 0
    problems = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-o", "tcp.check_checksum:FALSE", "-Y",
         "_ws.malformed || _ws.expert.severity == error"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert problems.stdout == "", problems.stdout


async def _serve_lines(listener: trio.socket.SocketType, count: int) -> None:
    """Answer ``count`` clients with the peer address the stack saw."""
    for _ in range(count):
        sock, address = await listener.accept()
        with sock:
            await sock.recv(100)
            await sock.send(f"{address[0]} {address[1]} {len(address)}\n".encode())


async def test_dual_stack_and_v6only_listeners_with_the_kernels_clients(netns6: NetworkNamespace) -> None:
    async with stack6(netns6):
        dual = trio.socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        await dual.bind(("::", 9300))
        dual.listen()
        only6 = trio.socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await only6.bind(("::", 9301))
        only6.listen()
        with dual, only6, trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve_lines, dual, 2)
                nursery.start_soon(_serve_lines, only6, 1)
                both = await kernel_run(
                    netns6, sys.executable, "-c", CLIENTS, "9300", "198.18.0.2", str(STACK6)
                )
                v6 = await kernel_run(
                    netns6, sys.executable, "-c", CLIENTS, "9301", "198.18.0.2", str(STACK6)
                )
    four, six = both.stdout.splitlines()
    seen, port, size, kernel_ip, kernel_port = four.split()
    assert (seen, port, size, kernel_ip) == ("::ffff:198.18.0.1", kernel_port, "4", "198.18.0.1")
    seen, port, size, kernel_ip, kernel_port = six.split()
    assert (seen, port, size, kernel_ip) == (str(KERNEL6), kernel_port, "4", str(KERNEL6))
    refused, six = v6.stdout.splitlines()
    assert refused == "refused" and six.split()[0] == str(KERNEL6), v6.stdout + v6.stderr
