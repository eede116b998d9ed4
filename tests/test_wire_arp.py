"""ARP for IPv4 over Ethernet: real kernel request and reply, byte-exact emit, refused variants."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from vectors import (
    ARP_REPLY,
    ARP_REQUEST,
    KERNEL_IP,
    KERNEL_MAC,
    PEER_IP,
    PEER_MAC,
    QINQ_ARP_REQUEST,
    VLAN_ARP_REQUEST,
)

from trio_yastack.stack.wire import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ArpRepr,
    EthernetRepr,
    MacAddress,
    Truncated,
    Unsupported,
    WireError,
)
from trio_yastack.stack.wire.arp import ARP_LEN, parse_arp
from trio_yastack.stack.wire.arp import ARP_REPLY as OP_REPLY
from trio_yastack.stack.wire.arp import ARP_REQUEST as OP_REQUEST

ZERO_MAC = MacAddress(bytes(6))


# --- deconstruct ---------------------------------------------------------------------------


def test_parse_request_fields() -> None:
    """The kernel's request: who has 198.18.0.2, tell 198.18.0.1, target MAC all zero."""
    assert parse_arp(ARP_REQUEST, 14) == (OP_REQUEST, KERNEL_MAC, int(KERNEL_IP), bytes(6), int(PEER_IP))


def test_repr_of_request_and_reply() -> None:
    """ArpRepr.parse gives typed addresses for the captured request and reply."""
    assert ArpRepr.parse(ARP_REQUEST, 14) == ArpRepr(
        OP_REQUEST, MacAddress(KERNEL_MAC), KERNEL_IP, ZERO_MAC, PEER_IP
    )
    reply = ArpRepr.parse(ARP_REPLY, 14)
    assert reply == ArpRepr(OP_REPLY, MacAddress(PEER_MAC), PEER_IP, MacAddress(KERNEL_MAC), KERNEL_IP)
    assert isinstance(reply.sender_mac, MacAddress) and isinstance(reply.sender_ip, IPv4Address)


@pytest.mark.parametrize(
    ("frame", "offset"), [(VLAN_ARP_REQUEST, 18), (QINQ_ARP_REQUEST, 22)], ids=["vlan", "qinq"]
)
def test_tagged_requests_carry_the_same_arp(frame: bytes, offset: int) -> None:
    """Behind one or two VLAN tags sits the same request, at the offset the Ethernet parser gives."""
    assert ArpRepr.parse(frame, offset) == ArpRepr.parse(ARP_REQUEST, 14)


def test_ethernet_padding_allowed() -> None:
    """A request padded to the 60-byte minimum (as a NIC would) parses the same."""
    padded = ARP_REQUEST + bytes(60 - len(ARP_REQUEST))
    assert len(padded) == 60
    assert ArpRepr.parse(padded, 14) == ArpRepr.parse(ARP_REQUEST, 14)


# --- construct -----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [ARP_REQUEST, ARP_REPLY], ids=["request", "reply"])
def test_emit_whole_frame_into_prefilled_buffer(frame: bytes) -> None:
    """Ethernet header + ARP emitted into a 0xa5 buffer reproduce the captured frame exactly."""
    eth, offset = EthernetRepr.parse(frame)
    arp = ArpRepr.parse(frame, offset)
    buf = bytearray(b"\xa5" * (len(frame) + 4))
    end = arp.emit_into(buf, eth.emit_into(buf))
    assert end == len(frame) == 14 + ARP_LEN
    assert buf[:end] == frame
    assert buf[end:] == b"\xa5" * 4


def test_build_request_from_scratch() -> None:
    """A request built from addresses (not parsed) equals what Linux sent."""
    eth = EthernetRepr(BROADCAST_MAC, MacAddress("02:18:00:00:00:01"), ETHERTYPE_ARP)
    arp = ArpRepr(OP_REQUEST, MacAddress("02:18:00:00:00:01"), KERNEL_IP, ZERO_MAC, PEER_IP)
    assert eth.to_bytes(arp.to_bytes()) == ARP_REQUEST


def test_round_trip() -> None:
    """to_bytes then parse gives the same representation; buffer_len is 28."""
    arp = ArpRepr(OP_REPLY, MacAddress("aa:bb:cc:dd:ee:ff"), IPv4Address("198.18.0.2"), ZERO_MAC, KERNEL_IP)
    data = arp.to_bytes()
    assert len(data) == arp.buffer_len == 28
    assert ArpRepr.parse(data) == arp


# --- bad packets ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(ARP_LEN))
def test_truncated_at_every_length(length: int) -> None:
    """Anything shorter than 28 bytes after the offset is Truncated("too_short")."""
    for parse in (parse_arp, ArpRepr.parse):
        with pytest.raises(Truncated) as info:
            parse(ARP_REQUEST[: 14 + length], 14)
        assert info.value.reason == "too_short"


def with_field(fmt: str, offset: int, value: int) -> bytes:
    """ARP_REQUEST's ARP part with one field overwritten."""
    buf = bytearray(ARP_REQUEST[14:])
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@pytest.mark.parametrize(
    ("field", "data"),
    [
        ("htype 6 (IEEE 802)", with_field("!H", 0, 6)),
        ("htype 0", with_field("!H", 0, 0)),
        ("ptype IPv6", with_field("!H", 2, 0x86DD)),
        ("ptype 0", with_field("!H", 2, 0)),
        ("hlen 8", with_field("!B", 4, 8)),
        ("plen 16", with_field("!B", 5, 16)),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_other_hardware_or_protocol_unsupported(field: str, data: bytes) -> None:
    """Another hardware type, protocol type or address length is Unsupported("bad_format")."""
    for parse in (parse_arp, ArpRepr.parse):
        with pytest.raises(Unsupported) as info:
            parse(data)
        assert info.value.reason == "bad_format", field
        assert isinstance(info.value, WireError)


@pytest.mark.parametrize("operation", [0, 3, 4, 8, 0xFFFF])
def test_other_operations_unsupported(operation: int) -> None:
    """RARP (3, 4), InARP (8) and nonsense operations are Unsupported("bad_operation")."""
    with pytest.raises(Unsupported) as info:
        ArpRepr.parse(with_field("!H", 6, operation))
    assert info.value.reason == "bad_operation"
