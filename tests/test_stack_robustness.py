"""Robustness of the sans-IO core: arbitrary and mutated frames never raise and are always
counted (layer by layer), what the stack emits in answer is always well formed, and its tables
stay bounded under floods.  Also: importing ``trio_yastack.stack`` loads no trio, ``socket``,
``time``, ``threading`` or other I/O module, nor any layer above the stack.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from helpers import (
    BROADCAST_MAC,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    SUBNET_BROADCAST,
    ZERO_MAC,
    build_arp_frame,
    build_icmp_frame,
    build_ipv4_frame,
    build_udp_frame,
    check_accounting,
    counters,
    ip_fragments,
    learn_peer,
    make_core,
    udp_datagram,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_yastack.stack
from trio_yastack.stack import ArpConfig, IpConfig, StackCore, UdpPcb
from trio_yastack.stack.wire import (
    ARP_REPLY,
    ARP_REQUEST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    ArpRepr,
    EthernetRepr,
    IcmpRepr,
    Ipv4Repr,
    MacAddress,
    UdpRepr,
)

GATEWAY = IPv4Address("198.18.0.254")


def check_emitted(frames: list[bytes], mtu: int = 1500) -> None:
    """Whatever the stack sends in answer to garbage is a well-formed frame from us."""
    for frame in frames:
        eth, offset = EthernetRepr.parse(frame)
        assert eth.src == OUR_MAC and eth.vlan is None
        if eth.ethertype == ETHERTYPE_ARP:
            arp = ArpRepr.parse(frame, offset)
            assert len(frame) == 42 and arp.sender_mac == OUR_MAC and arp.sender_ip == OUR_IP
            continue
        assert eth.ethertype == ETHERTYPE_IPV4
        ip = Ipv4Repr.parse(frame, offset)  # checks the header checksum
        assert ip.src == OUR_IP and ip.ttl == 64 and ip.total_len <= mtu
        assert len(frame) == offset + ip.total_len
        start, end = offset + ip.header_len, offset + ip.total_len
        if ip.more_fragments or ip.fragment_offset:
            continue
        if ip.protocol == IPPROTO_UDP:
            UdpRepr.parse(frame, ip.src, ip.dst, start, end)
        else:
            assert ip.protocol == IPPROTO_ICMP
            IcmpRepr.parse(frame, start, end)


def fuzz_core(verify_checksums: bool = True) -> StackCore:
    """A core with something to find: the peer learned, an open, a connected and an echo endpoint.

    It has a gateway: without one, an echo request from an off-link source makes ether_input
    raise (the bug test_stack_icmp_udp.py::test_echo_request_without_route_back_does_not_raise
    shows); with it every reply has a route, so this fuzzing looks for other faults.
    """
    core = make_core(
        gateway=GATEWAY,
        verify_checksums=verify_checksums,
        arp=ArpConfig(cache_limit=32, pending_limit=8, hold_limit=4),
        ip_config=IpConfig(reassembly_max_datagrams=8, reassembly_memory_limit=32 * 1024),
    )
    learn_peer(core)
    open_pcb = UdpPcb()
    core.udp.bind(open_pcb, 0, 7)
    connected = UdpPcb()
    core.udp.bind(connected, 0, 4000)
    core.udp.connect(connected, int(PEER_IP), 9)
    core.icmp.echo_open(0x0E32)
    core.take_outbox()
    return core


# -- frames to start from --------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    to_us = {"src_mac": PEER_MAC, "dst_mac": OUR_MAC, "src_ip": PEER_IP, "dst_ip": OUR_IP}
    quoted = build_udp_frame(OUR_MAC, PEER_MAC, OUR_IP, PEER_IP, 4000, 9, b"request")[14:]
    udp = udp_datagram(PEER_IP, OUR_IP, 5000, 7, bytes(range(256)) * 12)
    untagged = build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 5000, 7, b"tagged")
    tagged = untagged[:12] + b"\x81\x00\x00\x00" + untagged[12:]  # 802.1Q, priority 0, VLAN 0
    return [
        build_udp_frame(**to_us, sport=5000, dport=7, payload=b"hello"),
        build_udp_frame(**to_us, sport=5000, dport=9, payload=b"closed port"),
        build_udp_frame(**to_us, sport=9, dport=4000, payload=b"connected"),
        build_udp_frame(PEER_MAC, BROADCAST_MAC, PEER_IP, SUBNET_BROADCAST, 5000, 7, b"broadcast"),
        build_udp_frame(**to_us, sport=5000, dport=7, payload=b"opts", options=b"\x07\x07\x04" + bytes(5)),
        build_icmp_frame(**to_us, icmp=IcmpRepr.echo_request(1, 1, b"ping" * 4)),
        build_icmp_frame(**to_us, icmp=IcmpRepr.echo_reply(0x0E32, 7, b"pong")),
        build_icmp_frame(**to_us, icmp=IcmpRepr(3, 3, 0, quoted)),
        build_ipv4_frame(**to_us, protocol=132, payload=b"unknown protocol"),
        build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP),
        build_arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP),
        build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, PEER_IP),
        tagged,
        *ip_fragments(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IPPROTO_UDP, udp, ident=77),
    ]


SEEDS = _seeds()


INTERESTING_ADDRESSES = st.sampled_from(
    [
        IPv4Address(a)
        for a in (
            "0.0.0.0",
            "198.18.0.1",
            "198.18.0.2",
            "198.18.0.3",
            "198.18.0.255",
            "255.255.255.255",
            "203.0.113.9",
            "127.0.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.1.1",
        )
    ]
) | st.integers(0, 2**32 - 1).map(IPv4Address)


@st.composite
def mutated_frame(draw: st.DrawFn) -> bytes:
    """A valid frame with 1-4 mutations: truncation, bit flips, random bytes anywhere, random
    IPv4 header bytes or addresses (with the header checksum fixed so the change gets past it),
    appended junk."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not frame:
            break
        kind = draw(st.sampled_from(["truncate", "flip", "byte", "ip_field", "ip_address", "append"]))
        if kind == "truncate":
            del frame[draw(st.integers(0, len(frame) - 1)) :]
        elif kind == "flip":
            frame[draw(st.integers(0, len(frame) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
        elif kind in ("ip_field", "ip_address") and len(frame) >= 34 and frame[12:14] == b"\x08\x00":
            if kind == "ip_field":
                frame[14 + draw(st.integers(0, 19))] = draw(st.integers(0, 255))
            else:
                where = 14 + draw(st.sampled_from([12, 16]))  # source or destination
                frame[where : where + 4] = draw(INTERESTING_ADDRESSES).packed
            header_len = max(20, min((frame[14] & 0x0F) * 4, len(frame) - 14)) & ~1
            frame[24:26] = b"\x00\x00"
            total = sum(int.from_bytes(frame[i : i + 2], "big") for i in range(14, 14 + header_len, 2))
            while total >> 16:
                total = (total & 0xFFFF) + (total >> 16)
            frame[24:26] = (~total & 0xFFFF).to_bytes(2, "big")
        elif kind == "append":
            frame += draw(st.binary(min_size=1, max_size=64))
    return bytes(frame)


def addressed_junk() -> st.SearchStrategy[bytes]:
    """Random payloads behind a header that gets past the Ethernet checks."""
    return st.builds(
        lambda dst, src, ethertype, payload: dst + src + ethertype + payload,
        st.sampled_from([bytes(OUR_MAC), bytes(BROADCAST_MAC)]),
        st.binary(min_size=6, max_size=6),
        st.sampled_from([b"\x08\x00", b"\x08\x06", b"\x81\x00", b"\x88\xa8", b"\x86\xdd", b"\x00\x2e"]),
        st.one_of(st.binary(max_size=120), st.binary(max_size=40).map(lambda b: b"\x45" + b)),
    )


ANY_FRAME = st.one_of(st.binary(max_size=200), addressed_junk(), mutated_frame())
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(frames=st.lists(ANY_FRAME, min_size=1, max_size=6), verify=st.booleans())
def test_any_frame_never_raises_and_is_counted(frames: list[bytes], verify: bool) -> None:
    """ether_input takes arbitrary and mutated frames without raising; each one is counted
    (ether.received + 1) and accounted for at every layer; what goes out in answer is well
    formed; so is what the timers send when the held fragments time out."""
    core = fuzz_core(verify_checksums=verify)
    for i, frame in enumerate(frames):
        before = core.statistics().ether.received
        core.ether_input(frame, float(i))
        assert core.statistics().ether.received == before + 1
        check_accounting(core)
    check_emitted(core.take_outbox())
    core.run_timers(1000.0)
    check_accounting(core)
    check_emitted(core.take_outbox())
    assert len(core.ip_layer.reassembler) == 0


@FUZZ
@given(frame=mutated_frame())
def test_a_malformed_frame_lands_in_a_drop_counter_or_is_handled(frame: bytes) -> None:
    """One mutated frame either changes some counter beyond ether.received (a drop reason, or
    the handling of a frame that stayed valid): no frame is silently ignored."""
    core = fuzz_core()
    before = counters(core)
    core.ether_input(frame, 0.0)
    after = counters(core)
    assert after["ether.received"] == before["ether.received"] + 1
    before["ether.received"] += 1
    assert after != before, f"frame {frame.hex()} left no trace"


# -- bounded tables --------------------------------------------------------------------------------

fragment_spec = st.tuples(
    st.integers(1, 254),  # source host on our subnet (2 is us: a martian, also fine)
    st.integers(0, 65535) | st.integers(0, 3),  # ident: random, or a few that collide
    st.integers(0, 400) | st.integers(0, 8191),  # offset in 8-byte units
    st.integers(1, 185),  # length in 8-byte units (up to 1480 bytes)
    st.booleans(),  # more fragments
    st.floats(0.0, 3.0),  # time until this one arrives
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(fragment_spec, min_size=1, max_size=300))
def test_reassembly_stays_bounded_under_fragment_flood(
    specs: list[tuple[int, int, int, int, bool, float]],
) -> None:
    """A flood of fragments with random sources, idents, offsets and lengths never holds more than
    reassembly_max_datagrams datagrams or reassembly_memory_limit bytes; the timer heap stays
    within twice its live timers (+64); everything is gone after the timeout."""
    limit_datagrams, limit_bytes = 8, 16 * 1024
    core = make_core(
        gateway=GATEWAY,
        ip_config=IpConfig(reassembly_max_datagrams=limit_datagrams, reassembly_memory_limit=limit_bytes),
    )
    reassembler = core.ip_layer.reassembler
    now = 0.0
    for host, ident, offset, length, more, dt in specs:
        now += dt
        frame = build_ipv4_frame(
            PEER_MAC, OUR_MAC, f"198.18.0.{host}", OUR_IP, IPPROTO_UDP, bytes(8 * length),
            ident=ident, more_fragments=more, fragment_offset=8 * offset,
        )  # fmt: skip
        core.ether_input(frame, now)
        core.run_timers(now)
        core.take_outbox()
        assert len(reassembler) <= limit_datagrams
        assert 0 <= reassembler.bytes_held <= limit_bytes
        assert len(core.timers) <= limit_datagrams + core.config.arp.pending_limit
        assert len(core.timers._heap) <= 2 * len(core.timers) + 65  # the lazy-cancellation bound
        check_accounting(core)
    core.run_timers(now + 30.0)
    assert len(reassembler) == 0 and reassembler.bytes_held == 0


arp_event = st.one_of(
    st.tuples(st.just("request"), st.integers(1, 254), st.integers(0, 255), st.booleans()),
    st.tuples(st.just("reply"), st.integers(1, 254), st.integers(0, 255), st.booleans()),
    st.tuples(st.just("send"), st.integers(1, 254), st.just(0), st.just(False)),
    st.tuples(st.just("wait"), st.integers(0, 4), st.just(0), st.just(False)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(arp_event, min_size=1, max_size=300))
def test_arp_tables_stay_bounded_under_flood(events: list[tuple[str, int, int, bool]]) -> None:
    """ARP requests and replies from random addresses, mixed with sends to random neighbours and
    the passing of time, never grow the cache beyond cache_limit, the addresses being resolved
    beyond pending_limit, or any hold queue beyond hold_limit."""
    arp = ArpConfig(cache_limit=16, pending_limit=4, hold_limit=3, max_age=10.0, refresh_before=5.0)
    core = make_core(arp=arp)
    pcb = UdpPcb()
    core.udp.bind(pcb, 0, 4000)
    now = 0.0
    for kind, host, mac_byte, for_us in events:
        ip = IPv4Address(f"198.18.0.{host}")
        mac = MacAddress(bytes([2, 0, 0, 0, 7, mac_byte]))
        target = OUR_IP if for_us else IPv4Address("198.18.0.200")
        if kind == "request":
            core.ether_input(build_arp_frame(ARP_REQUEST, mac, ip, ZERO_MAC, target), now)
        elif kind == "reply":
            core.ether_input(build_arp_frame(ARP_REPLY, mac, ip, OUR_MAC, target, eth_dst=BROADCAST_MAC), now)
        elif kind == "send" and ip != OUR_IP:
            core.udp.udp_output(pcb, b"x", int(ip), 9, now)
        else:
            now += host
        core.run_timers(now)
        core.take_outbox()
        assert len(core.arp.cache) <= arp.cache_limit
        assert len(core.arp.pending) <= arp.pending_limit
        assert all(len(p.held) <= arp.hold_limit for p in core.arp.pending.values())
        assert len(core.timers) <= arp.pending_limit
        assert int(OUR_IP) not in core.arp.cache
        check_accounting(core)
    # The refresh set is not checked here: see test_refresh_marks_do_not_outlive_evicted_entries.


def test_refresh_marks_do_not_outlive_evicted_entries() -> None:
    """An entry evicted from the cache (cache_limit) leaves no refresh mark behind, so the
    refresh set stays within the cache."""
    core = make_core(arp=ArpConfig(cache_limit=2, max_age=60.0, refresh_before=5.0))
    pcb = UdpPcb()
    core.udp.bind(pcb, 0, 4000)
    for i in range(10):
        ip, mac, now = IPv4Address(f"198.18.0.{10 + i}"), MacAddress(f"02:00:00:00:01:{i:02x}"), 100.0 * i
        learn_peer(core, ip, mac, now=now)
        core.udp.udp_output(pcb, b"x", int(ip), 9, now + 56.0)  # in the refresh window: marked
        core.take_outbox()
    assert len(core.arp.cache) == 2
    # Regression: evicting an entry left its refresh mark behind, so ``refreshing`` grew without
    # bound under cache churn (10 marks for a 2-entry cache).
    assert core.arp.refreshing <= set(core.arp.cache)


# -- the stack is pure ----------------------------------------------------------------------------

STACK_DIR = Path(trio_yastack.stack.__file__).parent
#: what the sans-IO stack must never load: I/O, clocks, threads and the async frameworks (the
#: runtime above it brings those); ``outcome`` and ``sniffio`` are trio's own dependencies
IO_MODULES = ("trio", "time", "socket", "threading", "asyncio", "select", "selectors", "outcome", "sniffio")

# Run in a fresh interpreter: drops the I/O modules the interpreter itself has loaded (``time``
# is imported at start-up, so a plain ``'time' in sys.modules`` could never fail), imports the
# modules named in argv[2:] and prints, as JSON, every module those imports loaded.
_LOADED_BY_IMPORT = """
import importlib, json, sys
dropped = set(sys.argv[1].split(","))
for name in [name for name in sys.modules if name.partition(".")[0] in dropped]:
    del sys.modules[name]
before = set(sys.modules)
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _stack_modules() -> list[str]:
    """Every module under trio_yastack/stack/, by its dotted name, the two packages first."""
    names = []
    for path in sorted(STACK_DIR.rglob("*.py")):
        parts = path.relative_to(STACK_DIR).with_suffix("").parts
        names.append(".".join(("trio_yastack.stack", *parts[: -1 if parts[-1] == "__init__" else None])))
    return ["trio_yastack.stack", "trio_yastack.stack.wire", *sorted(set(names) - {"trio_yastack.stack"})]


@pytest.mark.parametrize("native", [True, False], ids=["native", "twins"])
def test_importing_the_stack_loads_no_io_and_nothing_above_it(native: bool) -> None:
    """What ``import trio_yastack.stack`` (and ``.wire``, and every module under stack/) really
    loads, in a fresh interpreter, with the C extension and with the twins: no trio, ``time``,
    ``socket``, ``threading``, asyncio, ``select``/``selectors``, outcome or sniffio, and no
    trio_yastack module outside the stack but the package itself (layers point down only).

    Was a bug (fixed): the native twins were one module mixing checksums with the rings'
    ``threading.Lock``, so importing the stack loaded ``threading`` (and with it ``time``)
    while a source-text check said it did not."""
    modules = _stack_modules()
    assert len(modules) >= 10
    env = {key: value for key, value in os.environ.items() if key != "TRIO_YASTACK_NO_NATIVE"}
    if not native:
        env["TRIO_YASTACK_NO_NATIVE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", _LOADED_BY_IMPORT, ",".join(IO_MODULES), *modules],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert set(modules) <= set(loaded)  # the imports happened here, not before the snapshot
    assert [name for name in loaded if name.partition(".")[0] in IO_MODULES] == []
    ours = [name for name in loaded if name.partition(".")[0] == "trio_yastack"]
    above = [
        name for name in ours if name != "trio_yastack" and not f"{name}.".startswith("trio_yastack.stack.")
    ]
    assert above == []


def test_stack_source_has_no_io_import_even_inside_functions() -> None:
    """No module under trio_yastack/stack/ has an import line for any of ``IO_MODULES``, at any
    indentation.  This adds what the import test cannot see: an import inside a function body,
    which runs only when the function is called."""
    names = "|".join(IO_MODULES)
    forbidden = re.compile(rf"^\s*(?:import|from)\s+({names})\b", re.M)
    sources = sorted(STACK_DIR.rglob("*.py"))
    assert len(sources) >= 10
    offenders = {str(p.relative_to(STACK_DIR)): forbidden.findall(p.read_text()) for p in sources}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_priority_tagged_frames_accepted_other_vlans_dropped() -> None:
    """An 802.1Q tag with VLAN 0 (priority only) is accepted; any other VLAN is counted and dropped."""
    tagged = SEEDS[12]
    eth, offset = EthernetRepr.parse(tagged)
    assert eth.vlan is not None and eth.vlan.vid == 0 and offset == 18
    assert (eth.dst, eth.ethertype) == (OUR_MAC, ETHERTYPE_IPV4)
    core = fuzz_core()
    core.ether_input(tagged, 0.0)
    assert core.statistics().udp.delivered == 1
    core.ether_input(tagged[:14] + b"\x00\x05" + tagged[16:], 0.0)
    assert core.statistics().ether.dropped["unknown_vlan"] == 1
    assert core.statistics().udp.delivered == 1
