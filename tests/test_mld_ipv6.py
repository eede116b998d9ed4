"""MLDv2 listener reports (RFC 3810) for our solicited-node groups, so that a switch snooping MLD
forwards the neighbour solicitations for our addresses: the report a starting core sends (before
DAD's first solicitation, from the unspecified address while the link-local one is tentative,
repeated once), the one for a SLAAC address, the answer to a router's query, and the Linux
kernel's own report read off a TAP in a private namespace as the reference for the format
(hop-by-hop Router Alert, hop limit 1, ff02::16, CHANGE_TO_EXCLUDE_MODE records without sources).
"""

from __future__ import annotations

import random
import select
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Interface

from tap_helpers import requires_netns
from test_stack_ipv6 import A_MAC, icmp6_frame, router_advert  # the IPv6 stack tests' frame builders

from trio_yastack.nic.netns import NetworkNamespace, tap_in_netns
from trio_yastack.stack import ArpConfig, InterfaceConfig, Ip6Config, StackConfig, StackCore
from trio_yastack.stack._nd6 import (
    MLD_CHANGE_TO_EXCLUDE,
    MLD_HOP_BY_HOP,
    MLD_LISTENER_QUERY,
    MLD_LISTENER_REPORT_V2,
    MLD_MODE_IS_EXCLUDE,
)
from trio_yastack.stack.wire import MacAddress
from trio_yastack.stack.wire.icmpv6 import icmp6_checksum
from trio_yastack.stack.wire.ipv6 import link_local_from_mac, multicast_mac, solicited_node

OUR_MAC = bytes.fromhex("02000000000b")
GLOBAL = IPv6Address("2001:2::2")
ALL_MLDV2_ROUTERS = IPv6Address("ff02::16")


@dataclass(frozen=True)
class MldReport:
    """An MLDv2 report as read off the wire, every field a test compares."""

    dst_mac: bytes
    src: IPv6Address
    dst: IPv6Address
    hop_limit: int
    hop_by_hop: bytes
    checksum_ok: bool
    records: list[tuple[int, int, int, IPv6Address]]  # (type, aux length, sources, group)


def parse_mld_report(frame: bytes) -> MldReport | None:
    """The MLDv2 report in an Ethernet frame (IPv6, hop-by-hop, then ICMPv6 143), else ``None``."""
    if len(frame) < 14 + 40 + 8 + 8 or frame[12:14] != b"\x86\xdd" or frame[14 + 6] != 0:
        return None
    hbh_len = (frame[14 + 40 + 1] + 1) * 8
    icmp_at = 14 + 40 + hbh_len
    if frame[14 + 40] != 58 or len(frame) < icmp_at + 8 or frame[icmp_at] != MLD_LISTENER_REPORT_V2:
        return None
    src, dst = int.from_bytes(frame[22:38], "big"), int.from_bytes(frame[38:54], "big")
    payload_len = struct.unpack_from("!H", frame, 18)[0]
    icmp_len = payload_len - hbh_len
    zeroed = bytearray(frame[icmp_at : icmp_at + icmp_len])
    checksum = struct.unpack_from("!H", zeroed, 2)[0]
    zeroed[2:4] = b"\0\0"
    count = struct.unpack_from("!H", frame, icmp_at + 6)[0]
    records, at = [], icmp_at + 8
    for _ in range(count):
        kind, aux, sources = struct.unpack_from("!BBH", frame, at)
        records.append((kind, aux, sources, IPv6Address(frame[at + 4 : at + 20])))
        at += 20 + 16 * sources + 4 * aux
    return MldReport(
        dst_mac=frame[0:6],
        src=IPv6Address(src),
        dst=IPv6Address(dst),
        hop_limit=frame[14 + 7],
        hop_by_hop=frame[14 + 40 : icmp_at],
        checksum_ok=icmp6_checksum(zeroed, 0, icmp_len, src, dst) == checksum,
        records=records,
    )


def core_with_mld(*, dad: int, retrans_timer: float = 1.0) -> StackCore:
    interface = InterfaceConfig(
        mac=MacAddress(OUR_MAC),
        address=IPv4Address("198.18.0.2"),
        addresses6=(IPv6Interface(f"{GLOBAL}/64"),),
    )
    config = StackConfig(
        interface=interface,
        arp=ArpConfig(gratuitous_at_start=False),
        ip6=Ip6Config(dad_transmits=dad, router_solicitations=0, retrans_timer=retrans_timer),
    )
    return StackCore(config, rng=random.Random(0))


def reports_in(frames: list[bytearray | bytes]) -> list[MldReport]:
    return [report for frame in frames if (report := parse_mld_report(bytes(frame))) is not None]


def test_a_starting_core_reports_its_solicited_node_groups_before_dad_then_again() -> None:
    core = core_with_mld(dad=1, retrans_timer=0.5)  # DAD done at 0.5 s, the repeat at 1 s
    core.start(0.0)
    frames = core.take_outbox()
    assert parse_mld_report(bytes(frames[0])) is not None  # first: joined before DAD's solicitation
    (report,) = reports_in(frames)
    link_local = link_local_from_mac(OUR_MAC)
    groups = sorted(IPv6Address(solicited_node(a)) for a in {int(GLOBAL), link_local})
    assert report.dst_mac == bytes.fromhex("333300000016")
    assert (report.src, report.dst, report.hop_limit) == (IPv6Address(0), ALL_MLDV2_ROUTERS, 1)
    assert report.hop_by_hop == MLD_HOP_BY_HOP and report.checksum_ok
    assert report.records == [(MLD_CHANGE_TO_EXCLUDE, 0, 0, group) for group in groups]
    assert len(frames) == 1 + 2  # and the DAD probes of the two addresses
    core.run_timers(0.5)
    assert reports_in(core.take_outbox()) == []
    core.run_timers(1.0)  # DAD done: the repeat comes from the link-local address
    (again,) = reports_in(core.take_outbox())
    assert again.src == IPv6Address(link_local) and again.records == report.records and again.checksum_ok
    assert core.ip6 is not None and core.ip6.nd6.stats.snapshot().counters["mld_reports_sent"] == 2


def test_a_slaac_address_is_reported_when_it_comes() -> None:
    core = core_with_mld(dad=0)
    core.start(0.0)
    core.run_timers(1.0)
    core.take_outbox()
    assert core.ip6 is not None
    router = link_local_from_mac(A_MAC)
    all_nodes = 0xFF02 << 112 | 1
    ra = icmp6_frame(A_MAC, multicast_mac(all_nodes), router, all_nodes, router_advert(), hop_limit=255)
    core.ether_input(ra, 2.0)
    reports = reports_in(core.take_outbox())
    assert len(reports) == 1 and len(reports[0].records) == 1
    group = reports[0].records[0][3]
    slaac = [a for a in core.ip6.addresses if a >> 64 != 0xFE80_0000_0000_0000 and a != int(GLOBAL)]
    assert [group] == [IPv6Address(solicited_node(a)) for a in slaac]


def test_no_report_when_mld_is_off() -> None:
    interface = InterfaceConfig(mac=MacAddress(OUR_MAC), address=IPv4Address("198.18.0.2"))
    config = StackConfig(
        interface=interface,
        arp=ArpConfig(gratuitous_at_start=False),
        ip6=Ip6Config(enabled=True, dad_transmits=0, router_solicitations=0, mld=False),
    )
    core = StackCore(config, rng=random.Random(0))
    core.start(0.0)
    core.run_timers(5.0)
    assert reports_in(core.take_outbox()) == []


@requires_netns
def test_our_report_has_the_kernels_format() -> None:
    """The kernel's own MLDv2 report for a solicited-node group it joins (an address added to
    its side of the TAP) and ours, field by field."""
    with NetworkNamespace() as namespace:
        for knob in ("all", "default"):
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.disable_ipv6=0"], check=True)
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.router_solicitations=0"], check=True)
        with tap_in_netns(namespace, disable_ipv6=False) as port:
            namespace.run(["ip", "-6", "addr", "add", "2001:2::1/64", "dev", "yas0", "nodad"], check=True)
            wanted = IPv6Address(solicited_node(int(IPv6Address("2001:2::1"))))
            kernel: MldReport | None = None
            deadline = time.monotonic() + 15
            while kernel is None and time.monotonic() < deadline:
                select.select([port.fileno(0)], [], [], 0.5)  # wait (bounded) for the kernel's frames
                for frame in port.rx_burst(0, 64):
                    report = parse_mld_report(frame)
                    if report is not None and any(record[3] == wanted for record in report.records):
                        kernel = report
            assert kernel is not None, "the kernel sent no MLDv2 report for its new address"
    core = core_with_mld(dad=0)
    core.start(0.0)
    (ours,) = reports_in(core.take_outbox())
    assert ours.dst_mac == kernel.dst_mac and ours.dst == kernel.dst == ALL_MLDV2_ROUTERS
    assert ours.hop_limit == kernel.hop_limit == 1
    assert ours.hop_by_hop == kernel.hop_by_hop  # Router Alert (MLD) and PadN, byte for byte
    assert ours.checksum_ok and kernel.checksum_ok
    kernel_record = next(record for record in kernel.records if record[3] == wanted)
    assert kernel_record[:3] == (MLD_CHANGE_TO_EXCLUDE, 0, 0)  # a join: exclude nothing
    assert {record[:3] for record in ours.records} == {kernel_record[:3]}


def mld_query(*, src: int, hop_limit: int = 1, max_response_ms: int = 1000, length: int = 28) -> bytes:
    """A router's general MLDv2 query (RFC 3810 5.1) to ff02::1, hop-by-hop Router Alert first."""
    all_nodes = 0xFF02 << 112 | 1
    icmp = bytearray(length)
    struct.pack_into("!BBHHH", icmp, 0, MLD_LISTENER_QUERY, 0, 0, max_response_ms, 0)  # group :: (general)
    if length >= 28:
        icmp[24:28] = bytes([2, 125, 0, 0])  # QRV 2, QQIC 125 s, no sources
    struct.pack_into("!H", icmp, 2, icmp6_checksum(icmp, 0, len(icmp), src, all_nodes))
    payload = MLD_HOP_BY_HOP + bytes(icmp)
    header = struct.pack("!IHBB", 6 << 28, len(payload), 0, hop_limit)
    ether = multicast_mac(all_nodes) + A_MAC + b"\x86\xdd"
    return ether + header + src.to_bytes(16, "big") + all_nodes.to_bytes(16, "big") + payload


def test_a_query_is_answered_once_within_its_maximum_response_delay() -> None:
    core = core_with_mld(dad=0)
    core.start(0.0)
    core.run_timers(1.0)
    first = reports_in(core.take_outbox())[0]
    router = link_local_from_mac(A_MAC)
    core.ether_input(mld_query(src=router, max_response_ms=1000), 10.0)
    core.ether_input(mld_query(src=router, max_response_ms=1000), 10.1)  # one answer stays pending
    assert reports_in(core.take_outbox()) == []  # not at once: after a random delay
    core.run_timers(11.0)
    (answer,) = reports_in(core.take_outbox())
    assert answer.src == IPv6Address(link_local_from_mac(OUR_MAC)) and answer.checksum_ok
    assert answer.records == [(MLD_MODE_IS_EXCLUDE, 0, 0, record[3]) for record in first.records]
    assert core.ip6 is not None
    assert core.ip6.nd6.stats.snapshot().counters["mld_queries_received"] == 2
    core.ether_input(mld_query(src=router, max_response_ms=1000), 12.0)  # a later query: a new answer
    core.run_timers(13.0)
    assert len(reports_in(core.take_outbox())) == 1


def test_queries_not_from_a_link_local_router_or_mldv1_are_not_answered() -> None:
    core = core_with_mld(dad=0)
    core.start(0.0)
    core.run_timers(1.0)
    core.take_outbox()
    core.ether_input(mld_query(src=int(IPv6Address("2001:2::1"))), 2.0)
    core.ether_input(mld_query(src=link_local_from_mac(A_MAC), hop_limit=2), 2.0)
    core.ether_input(mld_query(src=link_local_from_mac(A_MAC), length=24), 2.0)  # MLDv1's query
    core.run_timers(30.0)
    assert reports_in(core.take_outbox()) == []
    assert core.ip6 is not None
    assert dict(core.ip6.nd6.stats.snapshot().dropped) == {"not_from_router": 2, "ignored": 1}
