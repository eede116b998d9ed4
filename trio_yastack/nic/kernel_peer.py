"""The kernel side of interop tests and benchmarks: plain kernel sockets, run in a namespace.

``python -m trio_yastack.nic.kernel_peer MODE ...`` inside a private namespace (see
:mod:`trio_yastack.nic.netns`) moves deterministic data with the Linux stack and prints one
JSON line: bytes, SHA-256, seconds, and what the kernel's ``TCP_INFO`` says about the
connection (retransmissions, negotiated options).  Modes:

- ``send HOST PORT NBYTES``: connect, send, half-close, wait for the peer's FIN.
- ``recv PORT``: accept one connection, read to the end, close.
- ``serve PORT NBYTES``: accept one connection, send, close.
- ``echo-clients HOST PORT CONNECTIONS NBYTES``: that many concurrent connections, each sending
  ``NBYTES`` and reading them back, every stream checked by SHA-256.

Every loop is bounded by its byte count and by ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

__all__ = ["pattern_block", "tcp_info"]

_CHUNK = 1 << 20
_TCPI_OPT_TIMESTAMPS, _TCPI_OPT_SACK, _TCPI_OPT_WSCALE = 1, 2, 4


def pattern_block(index: int, size: int = _CHUNK) -> bytes:
    """Block ``index`` of the test stream: distinct per block, cheap to make, so a stream that
    lost, doubled or reordered blocks hashes differently."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def tcp_info(sock: socket.socket) -> dict[str, int | bool]:
    """The kernel's view of a connection (``struct tcp_info``, the fields tests look at)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    options = raw[5]
    wscale = raw[6]
    return {
        "retransmits_total": struct.unpack_from("I", raw, 100)[0],
        "timestamps": bool(options & _TCPI_OPT_TIMESTAMPS),
        "sack": bool(options & _TCPI_OPT_SACK),
        "window_scaling": bool(options & _TCPI_OPT_WSCALE),
        "snd_wscale": wscale & 0x0F,
        "rcv_wscale": wscale >> 4,
        "snd_mss": struct.unpack_from("I", raw, 16)[0],
        "rtt_us": struct.unpack_from("I", raw, 68)[0],
    }


def _send_stream(sock: socket.socket, nbytes: int, deadline: float) -> str:
    digest = hashlib.sha256()
    sent = index = 0
    while sent < nbytes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sent {sent} of {nbytes} bytes before the time limit")
        block = pattern_block(index)[: nbytes - sent]
        sock.sendall(block)
        digest.update(block)
        sent += len(block)
        index += 1
    return digest.hexdigest()


def _receive_stream(sock: socket.socket, deadline: float, limit: int = 1 << 40) -> tuple[int, str]:
    digest = hashlib.sha256()
    received = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    sock.settimeout(max(deadline - time.monotonic(), 0.1))
    while received <= limit:
        count = sock.recv_into(buffer)
        if not count:
            break
        digest.update(view[:count])
        received += count
    return received, digest.hexdigest()


def _accept_one(port: int, timeout: float, host: str = "0.0.0.0") -> socket.socket:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(8)
    listener.settimeout(timeout)
    print(json.dumps({"listening": port}), flush=True)
    conn, _ = listener.accept()
    listener.close()
    conn.settimeout(timeout)
    return conn


@dataclass(slots=True)
class _EchoState:
    """One echo connection: what it sends, what it got back so far, and the digest it expects."""

    sock: socket.socket
    out: memoryview
    want: str
    sent: int = 0
    got: int = 0
    hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    done: bool = False


def _echo_clients(host: str, port: int, connections: int, nbytes: int, deadline: float) -> dict[str, object]:
    """Each connection sends its own stream and checks that the echo hashes the same."""
    selector = selectors.DefaultSelector()
    states = []
    for number in range(connections):
        sock = socket.create_connection((host, port), timeout=10)
        sock.setblocking(False)
        payload = b"".join(pattern_block(number * 1000 + i) for i in range(nbytes // _CHUNK + 1))[:nbytes]
        state = _EchoState(sock, memoryview(payload), hashlib.sha256(payload).hexdigest())
        states.append(state)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, state)
    remaining = connections
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{remaining} of {connections} echo connections unfinished")
        for key, events in selector.select(timeout=1.0):
            echo: _EchoState = key.data
            sock = echo.sock
            if events & selectors.EVENT_WRITE and echo.sent < nbytes:
                with contextlib.suppress(BlockingIOError):
                    echo.sent += sock.send(echo.out[echo.sent : echo.sent + 262144])
                if echo.sent == nbytes:
                    sock.shutdown(socket.SHUT_WR)
                    selector.modify(sock, selectors.EVENT_READ, echo)
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(sock)
                    sock.close()
                    echo.done = True
                    remaining -= 1
                    continue
                echo.hash.update(data)
                echo.got += len(data)
    mismatched = [i for i, s in enumerate(states) if s.got != nbytes or s.hash.hexdigest() != s.want]
    return {"connections": connections, "bytes_each": nbytes, "mismatched": mismatched}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernel_peer", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--bind", default="0.0.0.0", help="the address recv/serve listen on (IPv6: '::')")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("send")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("nbytes", type=int)
    p = sub.add_parser("recv")
    p.add_argument("port", type=int)
    p = sub.add_parser("serve")
    p.add_argument("port", type=int)
    p.add_argument("nbytes", type=int)
    p = sub.add_parser("echo-clients")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("connections", type=int)
    p.add_argument("nbytes", type=int)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    result: dict[str, object] = {"mode": args.mode}
    if args.mode == "send":
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
        started = time.monotonic()
        result["sha256"] = _send_stream(sock, args.nbytes, deadline)
        result["bytes"] = args.nbytes
        sock.shutdown(socket.SHUT_WR)
        result["peer_bytes"], _ = _receive_stream(sock, deadline)  # until the peer's FIN
        result["seconds"] = time.monotonic() - started
        result["tcp_info"] = tcp_info(sock)
        sock.close()
    elif args.mode == "recv":
        conn = _accept_one(args.port, args.timeout, args.bind)
        started = time.monotonic()
        result["bytes"], result["sha256"] = _receive_stream(conn, deadline)
        result["seconds"] = time.monotonic() - started
        result["tcp_info"] = tcp_info(conn)
        conn.close()
    elif args.mode == "serve":
        conn = _accept_one(args.port, args.timeout, args.bind)
        started = time.monotonic()
        result["sha256"] = _send_stream(conn, args.nbytes, deadline)
        result["bytes"] = args.nbytes
        conn.shutdown(socket.SHUT_WR)
        result["peer_bytes"], _ = _receive_stream(conn, deadline)
        result["seconds"] = time.monotonic() - started
        result["tcp_info"] = tcp_info(conn)
        conn.close()
    else:
        result.update(_echo_clients(args.host, args.port, args.connections, args.nbytes, deadline))
        result["seconds"] = time.monotonic() - started
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
