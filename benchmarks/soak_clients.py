"""The kernel side of the reliability soak (soak.py): clients and attackers that run inside the soak's
network namespace, each bounded in count and in time, each printing one JSON line.

    python soak_clients.py get HOST PORT COUNT CONCURRENCY      legitimate GET /, Connection: close
    python soak_clients.py synflood IFACE DST_MAC DST_IP DPORT COUNT SECONDS
    python soak_clients.py hostile IFACE DST_MAC DST_IP DPORT COUNT RATE
    python soak_clients.py idle HOST PORT COUNT SECONDS          connections that never send a byte
    python soak_clients.py slowloris HOST PORT COUNT SECONDS     a header byte per second each

Frames are written on the TAP's kernel side with an AF_PACKET socket (the kernel's own IP stack is
not in the way: the frames are exactly the bytes built here).  Every address is in 198.18.0.0/15.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import selectors
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SRC_IP = "198.18.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, ident: int = 0, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + payload


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int, options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, offset << 4, flags, 64240, 0, 0) + options
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 6, len(header))
    check = _checksum(pseudo + header)
    return header[:16] + struct.pack("!H", check) + header[18:]


def _packet_socket(iface: str) -> tuple[socket.socket, bytes]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return sock, sock.getsockname()[4]


def synflood(iface: str, dst_mac: str, dst_ip: str, dport: int, count: int, seconds: float) -> dict[str, Any]:
    """``count`` SYNs from 198.18.0.1, source ports 1024-32767 (below the kernel's ephemeral range,
    so a legitimate client's 4-tuple is never one of the flood's) and sequence numbers varying, paced
    evenly over ``seconds`` (``count / seconds`` per second, as far as one process can write them)."""
    sock, own_mac = _packet_socket(iface)
    src, dst = socket.inet_aton(SRC_IP), socket.inet_aton(dst_ip)
    ether = _mac(dst_mac) + own_mac + b"\x08\x00"
    mss = b"\x02\x04\x05\xb4"
    rng = random.Random(22)
    frames = [
        ether
        + _ipv4(src, dst, 6, _tcp(src, dst, 1024 + i % 31744, dport, rng.getrandbits(32), 0x02, mss), ident=i)
        for i in range(min(count, 31744))
    ]
    sent = errors = 0
    start = time.monotonic()
    deadline = start + seconds
    send = sock.send
    rate = count / seconds
    batch = 256
    while sent < count and time.monotonic() < deadline + 1:
        for frame in frames[sent % len(frames) : sent % len(frames) + min(batch, count - sent)]:
            try:
                send(frame)
                sent += 1
            except OSError:  # ENOBUFS: the TAP's queue is full; the frame is not sent
                errors += 1
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - start
    return {"sent": sent, "send_errors": errors, "seconds": round(elapsed, 3), "rate": round(sent / elapsed)}


def _hostile_frames(dst_mac: str, own_mac: bytes, dst_ip: str, dport: int) -> dict[str, list[bytes]]:
    """Malformed frames by kind, each kind a few variants: what a hostile or broken peer sends."""
    dmac = _mac(dst_mac)
    src, dst = socket.inet_aton(SRC_IP), socket.inet_aton(dst_ip)
    ether = dmac + own_mac + b"\x08\x00"
    syn = _tcp(src, dst, 40000, dport, 1, 0x02)
    good_ip = _ipv4(src, dst, 6, syn)
    udp = struct.pack("!HHHH", 40000, 9, 8 + 4, 0) + b"abcd"
    icmp_echo = b"\x08\x00" + b"\x00\x00" + b"\x00\x01\x00\x01" + b"x" * 8
    icmp_echo = icmp_echo[:2] + struct.pack("!H", _checksum(icmp_echo)) + icmp_echo[4:]
    kinds: dict[str, list[bytes]] = {
        "ether_runt": [dmac[:3], dmac + own_mac, dmac + own_mac + b"\x08"],
        "ether_unknown_type": [dmac + own_mac + b"\x88\xb5" + b"\0" * 46],
        "ether_vlan_truncated": [dmac + own_mac + b"\x81\x00\x00"],
        "arp_truncated": [dmac + own_mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06"],
        "arp_bad_lengths": [dmac + own_mac + b"\x08\x06" + b"\x00\x01\x08\x00\x07\x05\x00\x01" + b"\0" * 20],
        "ip_truncated": [ether + good_ip[:12]],
        "ip_bad_version": [ether + bytes([0x65]) + good_ip[1:]],
        "ip_bad_ihl": [ether + bytes([0x43]) + good_ip[1:], ether + bytes([0x4F]) + good_ip[1:]],
        "ip_bad_checksum": [ether + good_ip[:10] + b"\x12\x34" + good_ip[12:]],
        "ip_total_length_too_big": [
            ether + _fix_ip(good_ip[:2] + struct.pack("!H", 1500) + good_ip[4:]),
        ],
        "ip_total_length_too_small": [ether + _fix_ip(good_ip[:2] + struct.pack("!H", 19) + good_ip[4:])],
        "ip_fragment_garbage": [
            ether + _fix_ip(good_ip[:6] + struct.pack("!H", 0x2000 | 8191) + good_ip[8:]),
            ether + _fix_ip(good_ip[:6] + struct.pack("!H", 0x0001) + good_ip[8:]),
        ],
        "ip_bad_options": [ether + _ipv4_opts(src, dst, b"\x44\x00\x00\x00")],
        "ip_unknown_protocol": [ether + _ipv4(src, dst, 253, b"hello")],
        "ip_not_for_us": [ether + _ipv4(src, socket.inet_aton("198.18.0.77"), 6, syn)],
        "ip_broadcast_source": [ether + _ipv4(socket.inet_aton("255.255.255.255"), dst, 6, syn)],
        "tcp_truncated": [ether + _ipv4(src, dst, 6, syn[:10])],
        "tcp_bad_offset": [
            ether + _ipv4(src, dst, 6, syn[:12] + bytes([0x20]) + syn[13:]),
            ether + _ipv4(src, dst, 6, syn[:12] + bytes([0xF0]) + syn[13:]),
        ],
        "tcp_bad_checksum": [ether + _ipv4(src, dst, 6, syn[:16] + b"\xde\xad" + syn[18:])],
        "tcp_bad_options": [
            ether + _ipv4(src, dst, 6, _tcp(src, dst, 40001, dport, 1, 0x02, b"\x02\x00\x00\x00")),
            ether + _ipv4(src, dst, 6, _tcp(src, dst, 40002, dport, 1, 0x02, b"\x03\x09\x01\x00")),
            ether + _ipv4(src, dst, 6, _tcp(src, dst, 40003, dport, 1, 0x02, b"\x08\x0b" + b"\0" * 10)),
        ],
        "tcp_flags_nonsense": [
            ether + _ipv4(src, dst, 6, _tcp(src, dst, 40004, dport, 1, 0x3F)),
            ether + _ipv4(src, dst, 6, _tcp(src, dst, 40005, dport, 1, 0x03)),
            ether + _ipv4(src, dst, 6, _tcp(src, dst, 40006, dport, 1, 0x00)),
        ],
        "tcp_to_closed_port": [ether + _ipv4(src, dst, 6, _tcp(src, dst, 40007, 9, 1, 0x02))],
        "tcp_stray_ack": [ether + _ipv4(src, dst, 6, _tcp(src, dst, 40008, dport, 12345, 0x10))],
        "udp_truncated": [ether + _ipv4(src, dst, 17, udp[:5])],
        "udp_bad_length": [ether + _ipv4(src, dst, 17, udp[:4] + struct.pack("!H", 400) + udp[6:])],
        "udp_bad_checksum": [ether + _ipv4(src, dst, 17, udp[:6] + b"\x01\x02" + udp[8:])],
        "udp_to_closed_port": [ether + _ipv4(src, dst, 17, udp)],
        "icmp_truncated": [ether + _ipv4(src, dst, 1, b"\x08")],
        "icmp_bad_checksum": [ether + _ipv4(src, dst, 1, icmp_echo[:2] + b"\x00\x01" + icmp_echo[4:])],
        "icmp_unknown_type": [ether + _ipv4(src, dst, 1, _icmp(b"\xc8\x07\x00\x00abcd"))],
        "icmp_unreachable_garbage_quote": [
            ether + _ipv4(src, dst, 1, _icmp(b"\x03\x03\x00\x00\x00\x00\x00\x00\x45\x00"))
        ],
        "icmp_echo": [ether + _ipv4(src, dst, 1, icmp_echo)],
    }
    rng = random.Random(7)
    kinds["random_bytes"] = [
        ether + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(8)
    ]
    kinds["random_after_ip"] = [
        ether + _ipv4(src, dst, proto, bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60))))
        for proto in (1, 6, 17)
        for _ in range(4)
    ]
    return kinds


def _fix_ip(header_and_rest: bytes) -> bytes:
    ihl = (header_and_rest[0] & 0x0F) * 4
    head = header_and_rest[:10] + b"\0\0" + header_and_rest[12:ihl]
    return head[:10] + struct.pack("!H", _checksum(head)) + head[12:] + header_and_rest[ihl:]


def _ipv4_opts(src: bytes, dst: bytes, options: bytes) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl, 0, 0, 64, 253, 0, src, dst) + options
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:]


def _icmp(message: bytes) -> bytes:
    return message[:2] + struct.pack("!H", _checksum(message[:2] + b"\0\0" + message[4:])) + message[4:]


def hostile(iface: str, dst_mac: str, dst_ip: str, dport: int, count: int, rate: float) -> dict[str, Any]:
    """``count`` malformed frames, the kinds in turn, at most ``rate`` per second."""
    sock, own_mac = _packet_socket(iface)
    kinds = _hostile_frames(dst_mac, own_mac, dst_ip, dport)
    order = [(kind, frame) for kind, frames in kinds.items() for frame in frames]
    by_kind: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    for index in range(count):
        kind, frame = order[index % len(order)]
        try:
            sock.send(frame)
            by_kind[kind] += 1
        except OSError as exc:  # the kernel refuses a runt on some drivers: counted, not sent
            by_kind[f"refused:{kind}:{exc.errno}"] += 1
        pause = start + (index + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    sent = sum(v for k, v in by_kind.items() if not k.startswith("refused:"))
    return {
        "sent": sent,
        "kinds": len(kinds),
        "by_kind": dict(by_kind),
        "seconds": round(time.monotonic() - start, 3),
    }


def _one_get(host: str, port: int, timeout: float) -> str:
    """One request on a connection of its own: ``ok``, or what failed, prefixed ``connect:``
    when the handshake did not complete (all SYNs unanswered within ``timeout``)."""
    phase = "connect:"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            phase = ""
            sock.sendall(REQUEST)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
                if len(reply) > 1 << 20:
                    break
    except OSError as exc:
        return phase + (f"{type(exc).__name__}:{exc.errno}" if exc.errno else type(exc).__name__)
    return "ok" if reply.startswith(b"HTTP/1.1 200") else f"status:{reply[:12]!r}"


def get(host: str, port: int, count: int, concurrency: int, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = collections.Counter(pool.map(lambda _: _one_get(host, port, timeout), range(count)))
    return {
        "offered": count,
        "ok": outcomes.pop("ok", 0),
        "failed": dict(outcomes),
        "seconds": round(time.monotonic() - start, 3),
    }


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


def hold(host: str, port: int, count: int, seconds: float, *, slow: bool) -> dict[str, Any]:
    """``count`` connections held ``seconds``: idle (no byte) or slowloris (one header byte a
    second, never finishing the head).  Reports how many the server closed, and when."""
    _raise_fd_limit(count + 100)
    selector = selectors.DefaultSelector()
    opened = failed = 0
    socks: list[socket.socket] = []
    start = time.monotonic()
    deadline = start + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect_ex((host, port))
        except OSError:
            failed += 1
            sock.close()
            continue
        socks.append(sock)
        selector.register(sock, selectors.EVENT_WRITE)
    connected: set[int] = set()
    closed_at: list[float] = []
    answered: collections.Counter[str] = collections.Counter()
    head = b"GET / HTTP/1.1\r\nHost: soak\r\nX-a: " + b"b" * 10000
    sent = collections.Counter[int]()
    next_byte = time.monotonic()
    while time.monotonic() < deadline and selector.get_map():
        for key, events in selector.select(timeout=0.2):
            sock = key.fileobj  # type: ignore[assignment]
            assert isinstance(sock, socket.socket)
            if events & selectors.EVENT_WRITE and sock.fileno() not in connected:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    failed += 1
                    selector.unregister(sock)
                    continue
                connected.add(sock.fileno())
                selector.modify(sock, selectors.EVENT_READ)
                continue
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    answered[data[:12].decode(errors="replace")] += 1
                    continue
                closed_at.append(time.monotonic() - start)
                selector.unregister(sock)
        if slow and time.monotonic() >= next_byte:
            next_byte += 1.0
            for sock in socks:
                fd = sock.fileno()
                if fd in connected and fd >= 0 and sent[fd] < len(head):
                    try:
                        sock.send(head[sent[fd] : sent[fd] + 1])
                        sent[fd] += 1
                    except OSError:
                        pass
    opened = len(connected)
    for sock in socks:
        sock.close()
    return {
        "offered": count,
        "connected": opened,
        "failed": failed,
        "closed_by_server": len(closed_at),
        "first_close_s": round(min(closed_at), 2) if closed_at else None,
        "answers": dict(answered),
        "seconds": round(time.monotonic() - start, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("get")
    for name, kind in (("host", str), ("port", int), ("count", int), ("concurrency", int)):
        p.add_argument(name, type=kind)
    p.add_argument("--timeout", type=float, default=10.0)
    for mode in ("synflood", "hostile"):
        p = sub.add_parser(mode)
        for name, kind in (("iface", str), ("dst_mac", str), ("dst_ip", str), ("dport", int), ("count", int)):
            p.add_argument(name, type=kind)
        p.add_argument("seconds_or_rate", type=float)
    for mode in ("idle", "slowloris"):
        p = sub.add_parser(mode)
        p.add_argument("host")
        for name in ("port", "count"):
            p.add_argument(name, type=int)
        p.add_argument("seconds", type=float)
    args = parser.parse_args()
    result: dict[str, Any]
    if args.mode == "get":
        result = get(args.host, args.port, args.count, args.concurrency, args.timeout)
    elif args.mode == "synflood":
        result = synflood(args.iface, args.dst_mac, args.dst_ip, args.dport, args.count, args.seconds_or_rate)
    elif args.mode == "hostile":
        result = hostile(args.iface, args.dst_mac, args.dst_ip, args.dport, args.count, args.seconds_or_rate)
    else:
        result = hold(args.host, args.port, args.count, args.seconds, slow=args.mode == "slowloris")
    result["mode"] = args.mode
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
