"""UDP datagrams per second from ``ether_input`` to a socket's queue over IPv6, beside IPv4's, on
one core: the issue's "IPv6 within 10 % of IPv4" row for UDP input.

The same shape as ``bench_udp_input.py`` (pre-built frames, 64-byte payloads, valid checksums,
bursts of 32, the queue drained after each burst); the IPv4 frames are that benchmark's own, the
IPv6 ones the same datagrams over 2001:2::1 -> 2001:2::2 to a core with both addresses.  Two rows per
family: the poll loop's ``ether_input_burst`` (the C classifier's ``UDP`` / ``UDP6`` records, queued by
``udp_fast_input`` / ``udp6_fast_input``) and frame by frame through ``ether_input``.  Rounds
alternate the four; the medians (datagrams per second of wall time and CPU microseconds per
datagram) and the IPv6/IPv4 ratios are printed (and written as JSON unless --quick).

All those datagrams come from one peer.  ``--peers N`` (N > 1) adds two burst rows whose
consecutive datagrams come from N peers in turn (198.18.1.0 + i, 2001:2::1:0 + i): the IPv6 ones
look their sources up in the UDP layer's table of sources (``SourceTable6``, direct-mapped, 4096
slots), where peers that share a slot miss.

    python benchmarks/bench_udp_input6.py [--datagrams N] [--rounds R] [--peers N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Interface
from pathlib import Path

from bench_udp_input import PAYLOAD, drive, make_frames, spread

from trio_yastack.stack import InterfaceConfig, Ip6Config, StackConfig, StackCore, UdpPcb, _native
from trio_yastack.stack.tcp import _fastpath
from trio_yastack.stack.wire import EthernetRepr, Ipv4Repr, MacAddress, UdpRepr
from trio_yastack.stack.wire.ipv6 import Ipv6Repr
from trio_yastack.stack.wire.udp import UDP_HEADER

RESULTS = Path(__file__).parent / "results"


def make_frames4_peers(count: int, peers: int) -> tuple[StackCore, UdpPcb, list[bytes]]:
    """``bench_udp_input.make_frames``'s datagrams, datagram i from peer 198.18.1.0 + i % peers."""
    core, pcb, _frames = make_frames(0)
    ours = IPv4Address("198.18.0.2")
    mac, peer_mac = MacAddress("02:00:00:00:00:02"), MacAddress("02:00:00:00:00:01")
    frames = []
    for index in range(count):
        theirs = IPv4Address("198.18.1.0") + index % peers
        udp = UdpRepr(40000 + index % 1000, 9000, PAYLOAD).to_bytes(theirs, ours)
        ip = Ipv4Repr(theirs, ours, 17, len(udp), ident=index & 0xFFFF).to_bytes(udp)
        frames.append(EthernetRepr(mac, peer_mac, 0x0800).to_bytes(ip))
    return core, pcb, frames


def make_frames6(count: int, peers: int = 1) -> tuple[StackCore, UdpPcb, list[bytes]]:
    """The IPv6 datagrams: from 2001:2::1, or datagram i from 2001:2::1:0 + i % peers."""
    ours = IPv6Address("2001:2::2")
    mac, peer_mac = MacAddress("02:00:00:00:00:02"), MacAddress("02:00:00:00:00:01")
    interface = InterfaceConfig(mac, IPv4Address("198.18.0.2"), addresses6=(IPv6Interface(f"{ours}/64"),))
    core = StackCore(StackConfig(interface, ip6=Ip6Config(dad_transmits=0)), rng=random.Random(1))
    pcb = UdpPcb(v6=True)
    core.udp.bind(pcb, 0, 9000)
    frames = []
    for index in range(count):
        theirs = IPv6Address("2001:2::1") if peers == 1 else IPv6Address("2001:2::1:0") + index % peers
        udp = bytearray(8 + len(PAYLOAD))
        UDP_HEADER.pack_into(udp, 0, 40000 + index % 1000, 9000, len(udp), 0)
        udp[8:] = PAYLOAD
        checksum = _v6_udp_checksum(udp, int(theirs), int(ours))
        udp[6:8] = checksum.to_bytes(2, "big")
        ip = Ipv6Repr(theirs, ours, 17, len(udp)).to_bytes(bytes(udp))
        frames.append(EthernetRepr(mac, peer_mac, 0x86DD).to_bytes(ip))
    return core, pcb, frames


def _v6_udp_checksum(udp: bytearray, src: int, dst: int) -> int:
    from trio_yastack.stack.wire._checksum import sum16
    from trio_yastack.stack.wire.ipv6 import pseudo_header_sum6

    return (~sum16(udp, 0, len(udp), pseudo_header_sum6(src, dst, 17, len(udp))) & 0xFFFF) or 0xFFFF


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", type=int, default=1, help="N > 1: burst rows from N peers in turn too")
    parser.add_argument("--quick", action="store_true", help="a few thousand datagrams, 2 rounds (CI smoke)")
    args = parser.parse_args()
    count, rounds = (5_000, 2) if args.quick else (args.datagrams, args.rounds)
    peers = max(1, args.peers)
    runs: dict[str, list[tuple[float, float]]] = {
        "v4_burst": [],
        "v6_burst": [],
        "v4_frame": [],
        "v6_frame": [],
    }
    if peers > 1:
        runs.update(v4_burst_peers=[], v6_burst_peers=[])
    for _ in range(rounds):
        runs["v4_burst"].append(drive(*make_frames(count), burst_input=True))
        runs["v6_burst"].append(drive(*make_frames6(count), burst_input=True))
        runs["v4_frame"].append(drive(*make_frames(count), burst_input=False))
        runs["v6_frame"].append(drive(*make_frames6(count), burst_input=False))
        if peers > 1:
            runs["v4_burst_peers"].append(drive(*make_frames4_peers(count, peers), burst_input=True))
            runs["v6_burst_peers"].append(drive(*make_frames6(count, peers), burst_input=True))
    cpu_us = {name: statistics.median(1e6 / cpu for _wall, cpu in values) for name, values in runs.items()}
    result = {
        "benchmark": "udp_input6",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "native_checksum": _native.NATIVE,
        "datagrams_per_round": count,
        "peers": peers,
        "fast_path": _fastpath.FAST_PATH_DEFAULT,
        "native_classifier": _fastpath.NATIVE_FASTPATH,
        "load_1min": os.getloadavg()[0],
        **{
            f"{name}_datagrams_per_s": spread([wall for wall, _cpu in values])
            for name, values in runs.items()
        },
        **{f"{name}_cpu_us_per_datagram": round(us, 3) for name, us in cpu_us.items()},
        # CPU per datagram, IPv6 over IPv4: the bar is 1.10
        "ratio_ipv6_to_ipv4_burst": cpu_us["v6_burst"] / cpu_us["v4_burst"],
        "ratio_ipv6_to_ipv4_frame": cpu_us["v6_frame"] / cpu_us["v4_frame"],
    }
    if peers > 1:
        result["ratio_ipv6_to_ipv4_burst_peers"] = cpu_us["v6_burst_peers"] / cpu_us["v4_burst_peers"]
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "udp_input6.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
