"""The TAP poll-mode driver (trio_yastack/nic/tap.py) against the real Linux kernel.

Every test that touches a device makes its own network namespace (the ``netns`` fixture) and runs
the TAP inside it, kernel side 198.18.0.1/24 and our side 198.18.0.2/24, so nothing reaches another
network.  Frames are built and read by hand (no stack) unless a test says otherwise: what the port
writes must reach the kernel whole, what the kernel sends must come back whole, with the
virtio-net header on (``offloads``) and off.  Every wait is on descriptor readiness under
``trio.fail_after``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers import ZERO_MAC, build_arp_frame, build_icmp_frame, check_arp, check_icmp, check_ipv4
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from tap_helpers import KERNEL_ADDRESS, STACK_ADDRESS, requires_netns
from tcp_helpers import build_tcp_frame

from trio_yastack import open_port, open_stack
from trio_yastack.dispatch import STRICT_ENV
from trio_yastack.nic import PortWrapper
from trio_yastack.nic.netns import NetworkNamespace, tap_in_netns
from trio_yastack.nic.tap import (
    TapError,
    TapOptions,
    TapPort,
    _default_mac,
    complete_checksum,
    parse_tap_spec,
)
from trio_yastack.stack import ChecksumVerified, OffloadPacket
from trio_yastack.stack.wire import ARP_REPLY, ARP_REQUEST, ArpRepr, IcmpRepr
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_SYN

NOBODY = 65534
WAIT = 5.0  # seconds any single wait for the kernel may take

# -- helpers -------------------------------------------------------------------------------------


def link(ns: NetworkNamespace, name: str) -> dict[str, Any] | None:
    """``ip -j -d link show NAME`` in the namespace, or ``None`` when there is no such device."""
    shown = ns.run(["ip", "-j", "-d", "link", "show", name])
    if shown.returncode != 0:
        return None
    [info] = json.loads(shown.stdout)
    return info  # type: ignore[no-any-return]


def ipv4_addresses(ns: NetworkNamespace, name: str) -> list[str]:
    """The device's IPv4 addresses as ``a.b.c.d/len``."""
    shown = ns.run(["ip", "-j", "-4", "addr", "show", "dev", name], check=True)
    return [
        f"{a['local']}/{a['prefixlen']}" for entry in json.loads(shown.stdout) for a in entry["addr_info"]
    ]


def ns_sh(ns: NetworkNamespace, *args: str) -> None:
    """An ``ip`` command (or another admin command) in the namespace that must succeed."""
    done = ns.run(list(args))
    assert done.returncode == 0, f"{args}: {done.stderr}"


def arp_request(port: TapPort, target: str = KERNEL_ADDRESS) -> bytes:
    """Who has ``target``? from our side of the port."""
    return build_arp_frame(ARP_REQUEST, port.capabilities.mac, STACK_ADDRESS, ZERO_MAC, target)


def is_arp(frame: bytes, operation: int) -> ArpRepr | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    arp = ArpRepr.parse(frame, 14)
    return arp if arp.operation == operation else None


def is_kernel_arp_reply(frame: bytes) -> bool:
    arp = is_arp(frame, ARP_REPLY)
    return arp is not None and str(arp.sender_ip) == KERNEL_ADDRESS and str(arp.target_ip) == STACK_ADDRESS


async def wait_any_rx(port: TapPort, queues: Sequence[int]) -> None:
    """Return once one of ``queues`` may have frames."""
    if len(queues) == 1:
        await port.wait_rx(queues[0])
        return

    async with trio.open_nursery() as nursery:

        async def wake(queue: int) -> None:
            await port.wait_rx(queue)
            nursery.cancel_scope.cancel()

        for queue in queues:
            nursery.start_soon(wake, queue)


async def receive_until(
    port: TapPort, match: Callable[[bytes], bool], *, queues: Sequence[int] = (0,), timeout: float = WAIT
) -> tuple[bytes, int, list[bytes]]:
    """Read ``queues`` until a frame ``match``es; ARP requests for our address are answered on the
    way (the kernel asks before it replies to us).  Returns the frame, its queue, and every frame
    read."""
    seen: list[bytes] = []
    mac = port.capabilities.mac
    with trio.fail_after(timeout):
        while True:
            for queue in queues:
                for frame in port.rx_burst(queue, 64):
                    seen.append(frame)
                    request = is_arp(frame, ARP_REQUEST)
                    if request is not None and str(request.target_ip) == STACK_ADDRESS:
                        reply = build_arp_frame(
                            ARP_REPLY, mac, STACK_ADDRESS, request.sender_mac, request.sender_ip
                        )
                        assert port.tx_burst(queue, [reply]) == 1
                    if match(frame):
                        return frame, queue, seen
            await wait_any_rx(port, queues)


async def kernel_mac(port: TapPort, queue: int = 0) -> bytes:
    """ARP for the kernel side; its MAC."""
    assert port.tx_burst(queue, [arp_request(port)]) == 1
    reply, _, _ = await receive_until(port, is_kernel_arp_reply, queues=range(port.capabilities.rx_queues))
    return bytes(ArpRepr.parse(reply, 14).sender_mac)


def tcp_checksum_ok(frame: bytes) -> bool:
    """Whether the frame's TCP checksum field is complete and right (scapy recomputes it)."""
    packet = Ether(bytes(frame))
    rebuilt = packet.copy()
    del rebuilt[TCP].chksum
    return packet[TCP].chksum == Ether(bytes(rebuilt))[TCP].chksum


# -- parse_tap_spec and open_port (no device) --------------------------------------------------


def test_parse_tap_spec_name_alone_gives_the_defaults() -> None:
    """A bare name (with or without ``tap:``) is TapOptions with only the name changed."""
    assert parse_tap_spec("tap:yas7") == TapOptions(name="yas7")
    assert parse_tap_spec("yas8") == TapOptions(name="yas8")
    assert TapOptions().kernel_address == "198.18.0.1/24" and TapOptions().txqueuelen == 10000


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("on", True), ("off", False), ("yes", True), ("no", False), ("1", True), ("0", False),
        ("true", True), ("ON", True), ("No", False), ("Off", False),
        ("false", False), ("FALSE", False),  # Was a bug (fixed): "false" was missing
    ],
)  # fmt: skip
def test_parse_tap_spec_bool_words(word: str, value: bool) -> None:
    """Every bool field takes on/off, yes/no, 1/0 and true/false, in any case."""
    spec = f"tap:t0,offloads={word},busy_poll={word},persist={word},disable_ipv6={word}"
    options = parse_tap_spec(spec)
    assert (options.offloads, options.busy_poll, options.persist, options.disable_ipv6) == (value,) * 4


def test_parse_tap_spec_ints_strings_and_none() -> None:
    """Ints are parsed, strings kept, ``none`` (or empty) is None, and dashes stand for underscores."""
    options = parse_tap_spec(
        "tap:t1,queues=4,mtu=9000,txqueuelen=500,max-burst=16,mac=02:00:00:00:00:09,"
        "kernel_address=10.9.8.7/16,busy-poll=yes"
    )
    assert options == TapOptions(
        name="t1", queues=4, mtu=9000, txqueuelen=500, max_burst=16, mac="02:00:00:00:00:09",
        kernel_address="10.9.8.7/16", busy_poll=True,
    )  # fmt: skip
    assert parse_tap_spec("tap:t1,kernel_address=none").kernel_address is None
    assert parse_tap_spec("tap:t1,kernel_address=None").kernel_address is None
    assert parse_tap_spec("tap:t1,kernel_address=").kernel_address is None
    assert parse_tap_spec("tap:t1,mac=none").mac is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tap:", "needs a device name"),
        ("tap:,mtu=1500", "needs a device name"),
        ("tap:t1,bogus=1", "'bogus=1' is not key=value with a key among"),
        ("tap:t1,mtu", "'mtu' is not key=value"),
        ("tap:t1,name=other", "'name=other' is not key=value"),
        ("tap:t1,mtu=big", "bad value 'big' for mtu"),
        ("tap:t1,queues=1.5", "bad value '1.5' for queues"),
        ("tap:t1,offloads=maybe", "bad value 'maybe' for offloads"),
    ],
)
def test_parse_tap_spec_errors_say_what_is_wrong(spec: str, message: str) -> None:
    """A bad spec is a ValueError naming the spec and what is wrong with it (the known keys for an
    unknown one)."""
    with pytest.raises(ValueError) as info:
        parse_tap_spec(spec)
    assert message in str(info.value)
    assert repr(spec) in str(info.value)
    if "among" in message:
        for key in ("offloads", "mtu", "queues", "kernel_address", "txqueuelen", "persist"):
            assert key in str(info.value)


def test_open_port_refuses_unknown_specs() -> None:
    """``open_port`` knows tap: and pcap:; anything else is a ValueError naming the spec."""
    with pytest.raises(ValueError, match="unknown nic spec 'bogus:x'"):
        open_port("bogus:x")
    with pytest.raises(ValueError, match="needs a device name"):
        open_port("tap:")


@requires_netns
def test_bad_options_are_refused_before_any_device_is_made(netns: NetworkNamespace) -> None:
    """Out-of-range MTU, no queue, a name too long, or options given twice: ValueError/TypeError,
    and no device appears."""
    with netns.entered():
        for bad in ({"mtu": 67}, {"mtu": 65522}, {"queues": 0}, {"name": "x" * 16}, {"name": ""}):
            with pytest.raises(ValueError):
                TapPort(**{"name": "yasbad0", **bad})
        with pytest.raises(TypeError):
            TapPort(TapOptions(name="yasbad0"), mtu=1500)
    assert link(netns, "yasbad0") is None


@requires_netns
def test_open_port_tap_spec_opens_a_tap_port(netns: NetworkNamespace) -> None:
    """``open_port("tap:t1,offloads=off")`` is a TapPort with the spec's options and no offloads."""
    with netns.entered():
        port = open_port("tap:t1,offloads=off,mtu=2000")
    try:
        assert isinstance(port, TapPort)
        assert port.options == TapOptions(name="t1", offloads=False, mtu=2000)
        caps = port.capabilities
        assert (caps.tx_checksum_offload, caps.rx_checksum_offload, caps.tso, caps.max_tso_size) == (
            False, False, False, 0,
        )  # fmt: skip
        assert caps.mtu == 2000 and caps.max_frame_len == 2018
        info = link(netns, "t1")
        assert info is not None and info["linkinfo"]["info_data"]["vnet_hdr"] is False
    finally:
        port.close()


# -- the device the port makes -----------------------------------------------------------------


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
def test_opening_creates_the_device_up_and_configured(netns: NetworkNamespace, offloads: bool) -> None:
    """The device exists in the namespace as a TAP, UP, with the MTU asked for, a queue of at least
    ``txqueuelen``, the kernel address, vnet_hdr iff offloads; the capabilities say the same."""
    with tap_in_netns(netns, "yas0", offloads=offloads, mtu=4000) as port:
        info = link(netns, "yas0")
        assert info is not None
        assert "UP" in info["flags"], info["flags"]
        assert info["mtu"] == 4000
        assert info["txqlen"] >= 10000
        data = info["linkinfo"]["info_data"]
        assert info["linkinfo"]["info_kind"] == "tun" and data["type"] == "tap"
        assert data["pi"] is False and data["vnet_hdr"] is offloads and data["multi_queue"] is False
        assert data["persist"] is False
        assert ipv4_addresses(netns, "yas0") == ["198.18.0.1/24"]
        caps = port.capabilities
        assert caps.mtu == 4000 and caps.max_frame_len == 4018
        assert caps.rx_queues == caps.tx_queues == 1 and caps.max_burst == 64
        assert (caps.rx_checksum_offload, caps.tx_checksum_offload, caps.tso) == (offloads,) * 3
        assert caps.max_tso_size == (65535 if offloads else 0)
        # our MAC: locally administered unicast, the same for the same name, not the kernel's
        assert caps.mac[0] & 0x03 == 0x02
        assert caps.mac != bytes.fromhex(info["address"].replace(":", ""))
        assert port.name == "yas0"


@requires_netns
def test_the_same_name_gives_the_same_mac_and_mac_overrides(netns: NetworkNamespace) -> None:
    """The default MAC is derived from the name (repeatable); ``mac=`` replaces it."""
    with tap_in_netns(netns, "yasm0", kernel_address=None) as port:
        first = port.capabilities.mac
    with tap_in_netns(netns, "yasm0", kernel_address=None) as port:
        assert port.capabilities.mac == first
    with tap_in_netns(netns, "yasm1", kernel_address=None) as port:
        assert port.capabilities.mac != first
    with tap_in_netns(netns, "yasm0", kernel_address=None, mac="02:12:34:56:78:9a") as port:
        assert str(port.capabilities.mac) == "02:12:34:56:78:9a"


@requires_netns
def test_txqueuelen_is_raised_never_lowered(netns: NetworkNamespace) -> None:
    """A larger ``txqueuelen`` is set; a smaller one than the device's leaves it alone."""
    with tap_in_netns(netns, "yasq0", txqueuelen=20000):
        assert link(netns, "yasq0")["txqlen"] == 20000  # type: ignore[index]
    ns_sh(netns, "ip", "tuntap", "add", "dev", "yasq1", "mode", "tap")
    before = link(netns, "yasq1")["txqlen"]  # type: ignore[index]
    assert before > 10
    with tap_in_netns(netns, "yasq1", txqueuelen=10, offloads=False):
        assert link(netns, "yasq1")["txqlen"] == before  # type: ignore[index]


@requires_netns
def test_kernel_address_none_leaves_no_ipv4_address(netns: NetworkNamespace) -> None:
    """``kernel_address=None``: the device is up but has no IPv4 address."""
    with tap_in_netns(netns, "yas0", kernel_address=None):
        info = link(netns, "yas0")
        assert info is not None and "UP" in info["flags"]
        assert ipv4_addresses(netns, "yas0") == []


@requires_netns
def test_ipv6_is_disabled_on_the_device(netns: NetworkNamespace) -> None:
    """The port turns IPv6 off on its device (even where new devices get it on), unless
    ``disable_ipv6=False``."""
    knob = "/proc/sys/net/ipv6/conf/{}/disable_ipv6"
    # The namespace turned IPv6 off for new devices; turn that default back on so the port's own
    # setting is what the test sees.
    ns_sh(netns, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=0")
    with tap_in_netns(netns, "yas6a"):
        assert netns.run(["cat", knob.format("yas6a")], check=True).stdout.strip() == "1"
    with tap_in_netns(netns, "yas6b", disable_ipv6=False, kernel_address=None):
        assert netns.run(["cat", knob.format("yas6b")], check=True).stdout.strip() == "0"


@requires_netns
def test_close_removes_a_device_it_made(netns: NetworkNamespace) -> None:
    """Without ``persist`` the device goes away with the port; close() twice is harmless."""
    with tap_in_netns(netns, "yas0") as port:
        assert link(netns, "yas0") is not None
    port.close()
    assert link(netns, "yas0") is None


@requires_netns
def test_persist_keeps_the_device_and_it_can_be_reopened(netns: NetworkNamespace) -> None:
    """``persist=True`` leaves the device (marked persistent, still configured) after close, and a
    second port attaches to it."""
    with tap_in_netns(netns, "yasp0", persist=True):
        pass
    try:
        info = link(netns, "yasp0")
        assert info is not None and info["linkinfo"]["info_data"]["persist"] is True
        assert ipv4_addresses(netns, "yasp0") == ["198.18.0.1/24"]
        with tap_in_netns(netns, "yasp0") as port:
            assert port.capabilities.tso
            assert ipv4_addresses(netns, "yasp0") == ["198.18.0.1/24"]  # not added twice
        assert link(netns, "yasp0") is not None
    finally:
        netns.run(["ip", "link", "del", "yasp0"])
    assert link(netns, "yasp0") is None


# -- frames both ways ------------------------------------------------------------------------


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_arp_round_trip_and_counters(netns: NetworkNamespace, offloads: bool) -> None:
    """An ARP request we write reaches the kernel whole (it answers), the reply comes back whole
    and addressed to our MAC (no virtio header left in it), and the counters count both."""
    with tap_in_netns(netns, "yas0", offloads=offloads) as port:
        request = arp_request(port)
        assert port.tx_burst(0, [request]) == 1
        reply, _, seen = await receive_until(port, is_kernel_arp_reply)
        device_mac = link(netns, "yas0")["address"]  # type: ignore[index]
        check_arp(
            reply, operation=ARP_REPLY, sender_mac=device_mac, sender_ip=KERNEL_ADDRESS,
            target_mac=port.capabilities.mac, target_ip=STACK_ADDRESS, eth_dst=port.capabilities.mac,
        )  # fmt: skip
        assert type(reply) is bytes  # nothing to vouch for in an ARP frame
        stats = port.statistics()
        assert (stats.opackets, stats.obytes) == (1, len(request))
        assert (stats.ipackets, stats.ibytes) == (len(seen), sum(map(len, seen)))
        assert (stats.ierrors, stats.oerrors, stats.imissed) == (0, 0, 0)
        assert port.statistics(0) == stats


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_icmp_echo_gets_a_reply(netns: NetworkNamespace, offloads: bool) -> None:
    """An ICMP echo request we build reaches the kernel, whose echo reply comes back parseable:
    as plain bytes it has valid IPv4 and ICMP checksums; if the kernel vouched for it, it is a
    ChecksumVerified (which only an offload port hands up)."""
    with tap_in_netns(netns, "yas0", offloads=offloads) as port:
        peer_mac = await kernel_mac(port)
        data = bytes(range(56))
        echo = IcmpRepr.echo_request(0x1234, 7, data)
        request = build_icmp_frame(port.capabilities.mac, peer_mac, STACK_ADDRESS, KERNEL_ADDRESS, echo)
        assert port.tx_burst(0, [request]) == 1

        def is_reply(frame: bytes) -> bool:
            return frame[12:14] == b"\x08\x00" and frame[23] == 1 and frame[34] == 0

        reply, _, _ = await receive_until(port, is_reply)
        assert type(reply) in ((bytes, ChecksumVerified) if offloads else (bytes,))
        if type(reply) is bytes:  # checked in full, checksums included
            check_ipv4(
                reply, eth_src=peer_mac, eth_dst=port.capabilities.mac, src=KERNEL_ADDRESS,
                dst=STACK_ADDRESS, icmp=check_icmp(type=0, code=0, ident=0x1234, seq=7, data=data),
            )  # fmt: skip
        else:
            parsed = Ether(bytes(reply))
            assert parsed[IP].src == KERNEL_ADDRESS and parsed[IP].dst == STACK_ADDRESS
            assert bytes(parsed[IP].payload)[8:] == data


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_kernel_tcp_segments_are_marked_when_the_kernel_vouches(
    netns: NetworkNamespace, offloads: bool
) -> None:
    """The kernel's SYN-ACK to our SYN: with offloads it leaves the checksum to the "NIC"
    (NEEDS_CSUM) or vouches for it, and the port hands it up as ChecksumVerified whose checksum is
    either already right or right once completed from the pseudo-header sum (the same convention
    as ours); without offloads it is plain bytes with a full valid checksum."""
    with tap_in_netns(netns, "yas0", offloads=offloads) as port:
        with netns.entered():
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener:
            listener.bind((KERNEL_ADDRESS, 5001))
            listener.listen(1)
            peer_mac = await kernel_mac(port)
            syn = build_tcp_frame(
                40001, 5001, 1000, 0, TCP_SYN, window=0xFFFF, options=b"\x02\x04\x05\xb4",
                src_ip=STACK_ADDRESS, dst_ip=KERNEL_ADDRESS, src_mac=port.capabilities.mac, dst_mac=peer_mac,
            )  # fmt: skip
            assert port.tx_burst(0, [syn]) == 1

            def is_synack(frame: bytes) -> bool:
                return frame[12:14] == b"\x08\x00" and frame[23] == 6 and frame[47] == TCP_SYN | TCP_ACK

            synack, _, _ = await receive_until(port, is_synack)
        parsed = Ether(bytes(synack))
        assert parsed[TCP].sport == 5001 and parsed[TCP].dport == 40001 and parsed[TCP].ack == 1001
        if offloads:
            assert type(synack) is ChecksumVerified
            assert tcp_checksum_ok(synack) != tcp_checksum_ok(complete_checksum(synack))
        else:
            assert type(synack) is bytes
            assert tcp_checksum_ok(synack)


@requires_netns
async def test_multi_queue_port(netns: NetworkNamespace) -> None:
    """``queues=2``: two queues and two descriptors on one multi-queue device; a frame written on
    queue 1 reaches the kernel (its reply is read from one of the queues) and is counted on queue 1."""
    with tap_in_netns(netns, "yasmq0", queues=2) as port:
        caps = port.capabilities
        assert caps.rx_queues == caps.tx_queues == 2
        assert port.fileno(0) != port.fileno(1)
        info = link(netns, "yasmq0")
        assert info is not None
        assert info["linkinfo"]["info_data"]["multi_queue"] is True
        assert info["linkinfo"]["info_data"]["numqueues"] == 2
        request = arp_request(port)
        assert port.tx_burst(1, [request]) == 1
        reply, queue, _ = await receive_until(port, is_kernel_arp_reply, queues=(0, 1))
        check_arp(reply, operation=ARP_REPLY, target_mac=caps.mac, eth_dst=caps.mac)
        assert port.statistics(1).opackets == 1 and port.statistics(0).opackets == 0
        assert port.statistics(queue).ipackets >= 1
        total = port.statistics()
        assert (
            total.opackets == 1
            and total.ipackets == port.statistics(0).ipackets + port.statistics(1).ipackets
        )


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_oversize_frames_are_counted_as_oerrors_and_accepted(
    netns: NetworkNamespace, offloads: bool
) -> None:
    """A plain frame longer than ``max_frame_len`` is not sent: it counts in oerrors and as accepted
    (tx_burst returns len(frames)), and the frames around it still go."""
    with tap_in_netns(netns, "yas0", offloads=offloads) as port:
        limit = port.capabilities.max_frame_len
        big = arp_request(port) + bytes(limit + 1 - 42)
        assert len(big) == limit + 1
        frames = [big, arp_request(port), big]
        assert port.tx_burst(0, frames) == 3
        stats = port.statistics()
        assert (stats.oerrors, stats.opackets, stats.obytes) == (2, 1, 42)
        await receive_until(port, is_kernel_arp_reply)  # the good one went through


@requires_netns
async def test_an_offload_packet_that_is_not_tcp_ipv4_is_refused(netns: NetworkNamespace) -> None:
    """An OffloadPacket the port cannot describe in a virtio header (here an ARP frame) is
    counted in oerrors and accepted, not written."""
    with tap_in_netns(netns, "yas0", offloads=True) as port:
        frame = arp_request(port)
        packet = OffloadPacket(len(frame))
        packet[:] = frame
        assert port.tx_burst(0, [packet]) == 1
        stats = port.statistics()
        assert (stats.oerrors, stats.opackets) == (1, 0)


# Was a bug (fixed): tx_burst wrote any OffloadPacket with a virtio header, even on a port opened
# without IFF_VNET_HDR (offloads=off), and never checked its length.
@requires_netns
def test_a_tso_frame_on_a_port_without_offloads_is_refused(netns: NetworkNamespace) -> None:
    """Port.tx_burst: a frame longer than max_frame_len that is not a TSO frame the port takes is
    not sent but counted in oerrors.  A port opened with offloads=off takes no TSO frames, so a
    3 KB OffloadPacket with gso_size 1448 is refused and counted, and the kernel receives nothing."""
    with tap_in_netns(netns, "yas0", offloads=False) as port:
        frame = build_tcp_frame(
            40001, 5001, 1, 1, TCP_ACK, payload=b"t" * 3000, src_ip=STACK_ADDRESS, dst_ip=KERNEL_ADDRESS,
            src_mac=port.capabilities.mac,
        )  # fmt: skip
        packet = OffloadPacket(len(frame), 1448)
        packet[:] = frame
        assert port.tx_burst(0, [packet]) == 1
        stats = port.statistics()
        assert (stats.oerrors, stats.opackets, stats.obytes) == (1, 0, 0)
        shown = netns.run(["ip", "-j", "-s", "link", "show", "yas0"], check=True)
        assert json.loads(shown.stdout)[0]["stats64"]["rx"]["packets"] == 0


async def _wait_kernel_sent(ns: NetworkNamespace, name: str, count: int) -> None:
    """Until the kernel has handed ``count`` frames to the device for us, bounded.  (The device's
    own tx counter moves only when we read; the root qdisc counts what it passed to the driver.)"""
    with trio.fail_after(WAIT):
        while True:
            shown = ns.run(["tc", "-s", "-j", "qdisc", "show", "dev", name], check=True)
            if sum(qdisc["packets"] for qdisc in json.loads(shown.stdout) if qdisc.get("root")) >= count:
                return
            await trio.sleep(0.01)  # polling a condition, bounded by fail_after


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_rx_burst_never_returns_more_than_max_n(netns: NetworkNamespace, offloads: bool) -> None:
    """With five replies queued, ``rx_burst(q, 2)`` returns 2, 2, 1 then nothing; ``max_n=0``
    reads nothing."""
    with tap_in_netns(netns, "yas0", offloads=offloads) as port:
        assert port.tx_burst(0, [arp_request(port)] * 5) == 5
        await _wait_kernel_sent(netns, "yas0", 5)
        assert port.rx_burst(0, 0) == []
        sizes = [len(port.rx_burst(0, 2)) for _ in range(4)]
        assert sizes == [2, 2, 1, 0]
        assert port.statistics().ipackets == 5


@requires_netns
async def test_busy_poll_wait_rx_returns_at_once(netns: NetworkNamespace) -> None:
    """With ``busy_poll`` ``wait_rx`` is only a checkpoint (the runtime spins on rx_burst)."""
    with tap_in_netns(netns, "yas0", busy_poll=True, kernel_address=None) as port:
        with trio.fail_after(WAIT):
            for _ in range(100):
                await port.wait_rx(0)
        assert port.rx_burst(0, 8) == []


@requires_netns
async def test_close_wakes_a_task_waiting_in_wait_rx(netns: NetworkNamespace) -> None:
    """close() while a task sleeps in wait_rx: the task gets trio.ClosedResourceError instead of
    hanging (trio.lowlevel.notify_closing)."""
    # No kernel address and no IPv6: the kernel has nothing to send, so only close() can wake it.
    with tap_in_netns(netns, "yas0", kernel_address=None) as port:
        outcome: list[str] = []

        async def waiter() -> None:
            try:
                await port.wait_rx(0)
            except trio.ClosedResourceError:
                outcome.append("closed")
            else:
                outcome.append("woke without close")

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == []
                port.close()
        assert outcome == ["closed"]


# -- errors ------------------------------------------------------------------------------------


@requires_netns
def test_attaching_to_a_tun_device_is_einval(netns: NetworkNamespace) -> None:
    """A TUN device of the name asked for: TapError EINVAL saying the flags differ."""
    ns_sh(netns, "ip", "tuntap", "add", "dev", "yastun0", "mode", "tun")
    with netns.entered(), pytest.raises(TapError) as info:
        TapPort(name="yastun0", offloads=False)
    assert info.value.errno == 22
    assert "exists with other flags" in str(info.value) and "a TUN device" in str(info.value)
    assert link(netns, "yastun0")["linkinfo"]["info_data"]["type"] == "tun"  # type: ignore[index]


@requires_netns
def test_multi_queue_mismatch_is_einval(netns: NetworkNamespace) -> None:
    """A multi-queue device opened with one queue (or the reverse): TapError EINVAL."""
    ns_sh(netns, "ip", "tuntap", "add", "dev", "yasmq1", "mode", "tap", "multi_queue", "vnet_hdr")
    ns_sh(netns, "ip", "tuntap", "add", "dev", "yassq1", "mode", "tap", "vnet_hdr")
    with netns.entered():
        with pytest.raises(TapError) as info:
            TapPort(name="yasmq1", queues=1)
        assert info.value.errno == 22 and "multi-queue" in str(info.value)
        with pytest.raises(TapError) as info:
            TapPort(name="yassq1", queues=2)
        assert info.value.errno == 22


@requires_netns
async def test_a_second_port_on_the_same_device_is_ebusy(netns: NetworkNamespace) -> None:
    """A single-queue device already attached: TapError EBUSY, and the first port still works."""
    with tap_in_netns(netns, "yas0") as port:
        with netns.entered(), pytest.raises(TapError) as info:
            TapPort(name="yas0")
        assert info.value.errno == 16 and "already attached" in str(info.value)
        assert port.tx_burst(0, [arp_request(port)]) == 1
        await receive_until(port, is_kernel_arp_reply)


_NOBODY_SCRIPT = textwrap.dedent(
    """
    import json, select, sys
    from trio_yastack.nic.tap import TapError, TapPort
    name, offloads = sys.argv[1], sys.argv[2] == "1"
    out = {}
    with open("/proc/self/status") as status:
        out["cap_eff"] = next(line.split()[1] for line in status if line.startswith("CapEff:"))
    port = TapPort(name=name, offloads=offloads, kernel_address="198.18.0.1/24")
    request = bytes.fromhex(sys.argv[3])
    out["sent"] = port.tx_burst(0, [request])
    frames = []
    for _ in range(50):
        if not select.select([port.fileno()], [], [], 0.2)[0]:
            # The kernel may drop a reply while it is still activating the device's queue
            # right after we attached: ask again, as ARP itself retries.
            out["sent"] += port.tx_burst(0, [request])
            continue
        frames += port.rx_burst(0, 8)
        if any(f[12:14] == b"\\x08\\x06" and f[20:22] == b"\\x00\\x02" for f in frames):
            break
    out["replies"] = [f.hex() for f in frames if f[12:14] == b"\\x08\\x06"]
    port.close()
    for key, kwargs in (("mtu", {"name": name, "mtu": 1400}), ("new", {"name": "yasnew0"})):
        try:
            TapPort(offloads=offloads, **kwargs).close()
            out[key] = None
        except TapError as exc:
            out[key] = [exc.errno, str(exc)]
    print(json.dumps(out))
    """
)


def _run_as_nobody(
    ns: NetworkNamespace, tmp_path: Path, args: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c _NOBODY_SCRIPT ARGS`` as uid/gid 65534 in the namespace.

    /dev/net/tun may be 0600 here (it usually is 0666): a private mount namespace gets a 0666
    node for the same device bound over it, on a tmpfs that goes away with the process, so
    nothing outside changes."""
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is missing")
    python = sys.executable
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(Path(__file__).parents[1]),
        STRICT_ENV: os.environ.get(STRICT_ENV, ""),  # conftest's strict mode, for this server too
    }
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    readable = subprocess.run(
        [*drop, python, "-c", "import trio_yastack.nic.tap"],
        capture_output=True, text=True, cwd="/", env=env, timeout=60,
    )  # fmt: skip
    if readable.returncode != 0:
        pytest.skip(f"the venv is not usable by uid {NOBODY}: {readable.stderr.strip()[-300:]}")
    mnt = tmp_path / "devtun"
    mnt.mkdir()
    shell = (
        '{ mount -t tmpfs -o mode=0755 none "$1" && mknod -m 0666 "$1/tun" c 10 200 '
        '&& mount --bind "$1/tun" /dev/net/tun; } || exit 77; shift; exec "$@"'
    )
    done = ns.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh", str(mnt),
         *drop, python, "-c", _NOBODY_SCRIPT, *args],
        env=env, cwd="/", timeout=60,
    )  # fmt: skip
    if done.returncode == 77:
        pytest.skip(f"cannot give uid {NOBODY} a /dev/net/tun in a private mount namespace: {done.stderr}")
    return done


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
def test_unprivileged_user_attaches_to_a_tap_made_for_them(
    netns: NetworkNamespace, tmp_path: Path, offloads: bool
) -> None:
    """A persistent TAP an administrator made for uid 65534 (``ip tuntap add ... user 65534``),
    already up with the MTU, queue length and address: that user opens a TapPort on it without
    CAP_NET_ADMIN and frames flow; asking for a change (another MTU) or a new device is a TapError
    EPERM that says CAP_NET_ADMIN and what the administrator should run."""
    mode = ["vnet_hdr"] if offloads else []
    ns_sh(netns, "ip", "tuntap", "add", "dev", "yasu0", "mode", "tap", "user", str(NOBODY), *mode)
    ns_sh(netns, "ip", "link", "set", "yasu0", "mtu", "1500", "txqueuelen", "10000", "up")
    ns_sh(netns, "ip", "addr", "add", "198.18.0.1/24", "dev", "yasu0")
    request = build_arp_frame(ARP_REQUEST, _default_mac("yasu0"), STACK_ADDRESS, ZERO_MAC, KERNEL_ADDRESS)
    done = _run_as_nobody(netns, tmp_path, ["yasu0", "1" if offloads else "0", request.hex()])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert int(out["cap_eff"], 16) == 0  # no capability at all, CAP_NET_ADMIN included
    assert out["sent"] >= 1
    assert any(is_kernel_arp_reply(bytes.fromhex(frame)) for frame in out["replies"]), out
    errno_, message = out["mtu"]
    assert errno_ == 1 and "setting the MTU to 1400" in message and "CAP_NET_ADMIN" in message
    assert "ip link set yasu0 mtu 1400" in message
    errno_, message = out["new"]
    assert errno_ == 1 and "CAP_NET_ADMIN" in message and "ip tuntap add dev yasnew0 mode tap user" in message
    assert ("vnet_hdr" in message) is offloads
    # The device is as the administrator left it, and no new one appeared.
    info = link(netns, "yasu0")
    assert info is not None and info["mtu"] == 1500 and info["linkinfo"]["info_data"]["persist"] is True
    assert link(netns, "yasnew0") is None


# -- a stack on the port: TSO and GSO with the kernel --------------------------------------------


class Recorder(PortWrapper):
    """Notes the frames that pass: lengths and offload marks both ways."""

    def __init__(self, inner: TapPort) -> None:
        super().__init__(inner)
        self.tx_max = self.rx_max = 0
        self.tx_gso = self.tx_offload = self.rx_verified = 0

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        for frame in frames:
            self.tx_max = max(self.tx_max, len(frame))
            if type(frame) is OffloadPacket:
                self.tx_offload += 1
                self.tx_gso += bool(frame.gso_size)
        return self.inner.tx_burst(queue, frames)

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        frames = self.inner.rx_burst(queue, max_n)
        for frame in frames:
            self.rx_max = max(self.rx_max, len(frame))
            self.rx_verified += type(frame) is ChecksumVerified
        return frames


@requires_netns
@pytest.mark.parametrize("offloads", [True, False])
async def test_stack_tcp_transfer_with_the_kernel(netns: NetworkNamespace, offloads: bool) -> None:
    """A stack on the TAP moves 1 MB each way with a kernel socket, byte-exact.  With offloads the
    stack sends TSO super-frames (OffloadPacket with gso_size, longer than the MTU) that the kernel
    segments and checksums correctly, and takes the kernel's GSO super-frames as ChecksumVerified;
    without, every frame fits the MTU and carries its own checksum."""
    up = hashlib.sha256(b"up").digest() * (1 << 15)  # 1 MB
    down = hashlib.sha256(b"down").digest() * (1 << 15)
    with tap_in_netns(netns, "yas0", offloads=offloads) as port:
        recorder = Recorder(port)
        with netns.entered():
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.bind((KERNEL_ADDRESS, 5201))
        raw.listen(1)
        listener = trio.socket.from_stdlib_socket(raw)
        async with open_stack(recorder, ip=f"{STACK_ADDRESS}/24", seed=1) as stack:
            assert stack.core.config.tx_checksum_offload is offloads
            assert stack.core.config.tso_max_size == (65535 if offloads else 0)
            got: dict[str, bytes] = {}
            with trio.fail_after(30):
                accepted: list[Any] = []
                async with trio.open_nursery() as nursery:

                    async def accept() -> None:
                        accepted.append((await listener.accept())[0])

                    nursery.start_soon(accept)
                    stream = await stack.tcp_connect(KERNEL_ADDRESS, 5201)
                kernel = accepted[0]

                async def stack_send() -> None:
                    await stream.send_all(up)
                    await stream.send_eof()

                async def stack_receive() -> None:
                    parts = []
                    while data := await stream.receive_some(65536):
                        parts.append(data)
                    got["stack"] = b"".join(parts)

                async def kernel_send() -> None:
                    view = memoryview(down)
                    while view:
                        view = view[await kernel.send(view) :]
                    kernel.shutdown(socket.SHUT_WR)

                async def kernel_receive() -> None:
                    parts = []
                    while data := await kernel.recv(65536):
                        parts.append(data)
                    got["kernel"] = b"".join(parts)

                async with trio.open_nursery() as nursery:
                    for task in (stack_send, stack_receive, kernel_send, kernel_receive):
                        nursery.start_soon(task)
                await stream.aclose()
                kernel.close()
            listener.close()
    assert hashlib.sha256(got["kernel"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["stack"]).digest() == hashlib.sha256(down).digest()
    if offloads:
        assert recorder.tx_gso > 0 and recorder.tx_max > 1514
        assert recorder.rx_verified > 0 and recorder.rx_max > 1514
    else:
        assert recorder.tx_offload == 0 and recorder.tx_max <= 1514
        assert recorder.rx_verified == 0 and recorder.rx_max <= 1514
