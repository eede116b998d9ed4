"""Ethernet II and VLAN tags: deconstruct real kernel frames, re-emit them byte for byte, refuse bad ones."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from vectors import (
    ARP_REQUEST,
    KERNEL_MAC,
    PEER_MAC,
    QINQ_ARP_REQUEST,
    TCP_SYN,
    TCP_SYN_ACK,
    UDP_DATAGRAM,
    VLAN_ARP_REQUEST,
)

from trio_yastack.stack.wire import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EthernetRepr,
    MacAddress,
    Malformed,
    Truncated,
    VlanTag,
    WireError,
    ip4,
    ip4_int,
)
from trio_yastack.stack.wire.ethernet import ETHERTYPE_QINQ, ETHERTYPE_VLAN, parse_ethernet_header


def prefilled(n: int) -> bytearray:
    """A buffer of ``n`` bytes of 0xa5, so bytes an emitter forgets to write show up."""
    return bytearray(b"\xa5" * n)


# --- deconstruct ---------------------------------------------------------------------------


def test_parse_header_of_broadcast_arp_request() -> None:
    """The fast parser returns the fields of a real untagged frame, tci -1, payload at 14."""
    dst, src, ethertype, tci, offset = parse_ethernet_header(ARP_REQUEST)
    assert dst == b"\xff" * 6
    assert src == KERNEL_MAC
    assert ethertype == ETHERTYPE_ARP
    assert tci == -1
    assert offset == 14


def test_repr_of_unicast_ipv4_frame() -> None:
    """EthernetRepr.parse gives MacAddress fields, no VLAN, and the payload offset."""
    eth, offset = EthernetRepr.parse(TCP_SYN_ACK)
    assert eth == EthernetRepr(MacAddress(KERNEL_MAC), MacAddress(PEER_MAC), ETHERTYPE_IPV4)
    assert isinstance(eth.dst, MacAddress) and isinstance(eth.src, MacAddress)
    assert str(eth.src) == "02:18:00:00:00:02"
    assert eth.vlan is None
    assert offset == eth.header_len == eth.buffer_len == 14
    assert TCP_SYN_ACK[offset] == 0x45  # an IPv4 header starts there


def test_broadcast_and_multicast_flags() -> None:
    """The broadcast frame's destination is broadcast (and multicast); a unicast one is neither."""
    eth, _ = EthernetRepr.parse(ARP_REQUEST)
    assert eth.dst == BROADCAST_MAC and eth.dst.is_broadcast and eth.dst.is_multicast
    eth, _ = EthernetRepr.parse(TCP_SYN)
    assert not eth.dst.is_broadcast and not eth.dst.is_multicast
    assert MacAddress("01:00:5e:00:00:01").is_multicast


# --- construct -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame", [ARP_REQUEST, TCP_SYN, TCP_SYN_ACK, UDP_DATAGRAM, VLAN_ARP_REQUEST], ids=lambda f: f[:18].hex()
)
def test_emit_into_prefilled_buffer_matches_capture(frame: bytes) -> None:
    """Emitting the parsed header writes exactly the captured header bytes and nothing past them."""
    eth, offset = EthernetRepr.parse(frame)
    buf = prefilled(offset + 8)
    assert eth.emit_into(buf) == offset
    assert buf[:offset] == frame[:offset]
    assert buf[offset:] == b"\xa5" * 8


def test_emit_at_an_offset_leaves_the_rest_alone() -> None:
    """emit_into honours ``offset`` and returns the payload offset relative to the buffer."""
    eth, _ = EthernetRepr.parse(VLAN_ARP_REQUEST)
    buf = prefilled(4 + 18 + 4)
    assert eth.emit_into(buf, 4) == 22
    assert buf[:4] == b"\xa5" * 4 and buf[22:] == b"\xa5" * 4
    assert buf[4:22] == VLAN_ARP_REQUEST[:18]


@pytest.mark.parametrize("frame", [ARP_REQUEST, TCP_SYN, VLAN_ARP_REQUEST], ids=["arp", "tcp", "vlan"])
def test_round_trip_whole_frame(frame: bytes) -> None:
    """parse then to_bytes(payload) rebuilds the captured frame."""
    eth, offset = EthernetRepr.parse(frame)
    assert eth.to_bytes(frame[offset:]) == frame
    assert EthernetRepr.parse(eth.to_bytes())[0] == eth


# --- VLAN tags -----------------------------------------------------------------------------


def test_one_802_1q_tag() -> None:
    """A real 802.1Q-tagged frame: the TCI is read after the TPID, the inner type is ARP."""
    dst, src, ethertype, tci, offset = parse_ethernet_header(VLAN_ARP_REQUEST)
    assert (dst, src) == (b"\xff" * 6, KERNEL_MAC)
    assert ethertype == ETHERTYPE_ARP
    assert tci == 100
    assert offset == 18
    eth, offset = EthernetRepr.parse(VLAN_ARP_REQUEST)
    assert eth.vlan == VlanTag(vid=100, pcp=0, dei=False)
    assert eth.ethertype == ETHERTYPE_ARP
    assert eth.header_len == offset == 18
    assert VLAN_ARP_REQUEST[offset:] == ARP_REQUEST[14:]  # the same ARP request underneath


def test_qinq_gives_the_inner_tag_and_the_repr_refuses_it() -> None:
    """802.1ad outer + 802.1Q inner: the fast parser reports the inner TCI; the Repr has no form for it."""
    _, _, ethertype, tci, offset = parse_ethernet_header(QINQ_ARP_REQUEST)
    assert QINQ_ARP_REQUEST[12:14] == ETHERTYPE_QINQ.to_bytes(2, "big")
    assert (ethertype, tci, offset) == (ETHERTYPE_ARP, 100, 22)
    with pytest.raises(Malformed) as info:
        EthernetRepr.parse(QINQ_ARP_REQUEST)
    assert info.value.reason == "too_many_tags"


def test_three_tags_refused() -> None:
    """A third tag is refused by both parsers as too_many_tags."""
    three = QINQ_ARP_REQUEST[:20] + bytes.fromhex("81000007") + QINQ_ARP_REQUEST[20:]
    for parse in (parse_ethernet_header, EthernetRepr.parse):
        with pytest.raises(Malformed) as info:
            parse(three)
        assert info.value.reason == "too_many_tags"


@pytest.mark.parametrize(
    ("tci", "tag"),
    [
        (0x0064, VlanTag(vid=100)),
        (0xE064, VlanTag(vid=100, pcp=7)),
        (0x1FFF, VlanTag(vid=4095, dei=True)),
        (0xB001, VlanTag(vid=1, pcp=5, dei=True)),
        (0x0000, VlanTag(vid=0)),
    ],
)
def test_vlan_tci_fields(tci: int, tag: VlanTag) -> None:
    """PCP is the top 3 bits, DEI the next, VID the low 12; from_tci and .tci are inverses."""
    assert VlanTag.from_tci(tci) == tag
    assert tag.tci == tci


def test_tagged_repr_emits_pcp_and_dei() -> None:
    """A tag with priority and DEI re-emits its TCI and parses back equal."""
    eth = EthernetRepr(
        MacAddress(PEER_MAC), MacAddress(KERNEL_MAC), ETHERTYPE_IPV4, VlanTag(42, pcp=6, dei=True)
    )
    frame = eth.to_bytes(b"payload")
    assert frame[12:18] == bytes.fromhex("8100d02a0800")
    assert EthernetRepr.parse(frame) == (eth, 18)


# --- bad frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(14))
def test_truncated_untagged(length: int) -> None:
    """Fewer than 14 bytes is Truncated("too_short") from both parsers."""
    for parse in (parse_ethernet_header, EthernetRepr.parse):
        with pytest.raises(Truncated) as info:
            parse(ARP_REQUEST[:length])
        assert info.value.reason == "too_short"


@pytest.mark.parametrize(
    ("frame", "lengths"),
    [(VLAN_ARP_REQUEST, range(14, 18)), (QINQ_ARP_REQUEST, range(14, 22))],
    ids=["802.1q", "qinq"],
)
def test_truncated_inside_a_tag(frame: bytes, lengths: range) -> None:
    """A frame cut inside a VLAN tag (or before the inner type) is Truncated("too_short")."""
    for length in lengths:
        with pytest.raises(Truncated) as info:
            parse_ethernet_header(frame[:length])
        assert info.value.reason == "too_short"


def test_header_only_frames_parse() -> None:
    """Exactly a header (no payload) is a valid frame, tagged or not."""
    assert parse_ethernet_header(ARP_REQUEST[:14])[4] == 14
    assert parse_ethernet_header(VLAN_ARP_REQUEST[:18])[4] == 18
    assert parse_ethernet_header(QINQ_ARP_REQUEST[:22])[4] == 22


@pytest.mark.parametrize("length_field", [0, 46, 1500, 0x05FF])
def test_802_3_length_field_refused(length_field: int) -> None:
    """A type field below 0x0600 is an 802.3 length, not an Ethernet II type: Malformed("not_ethernet_ii")."""
    llc = ARP_REQUEST[:12] + length_field.to_bytes(2, "big") + bytes.fromhex("424203000000") + bytes(40)
    for parse in (parse_ethernet_header, EthernetRepr.parse):
        with pytest.raises(Malformed) as info:
            parse(llc)
        assert info.value.reason == "not_ethernet_ii"
        assert isinstance(info.value, WireError)


def test_802_3_length_field_inside_a_tag_refused() -> None:
    """The check applies to the type after the tags, too."""
    frame = VLAN_ARP_REQUEST[:16] + b"\x00\x2e" + VLAN_ARP_REQUEST[18:]
    with pytest.raises(Malformed) as info:
        parse_ethernet_header(frame)
    assert info.value.reason == "not_ethernet_ii"


def test_lowest_ethertype_accepted() -> None:
    """0x0600 is the first Ethernet II type value."""
    frame = ARP_REQUEST[:12] + b"\x06\x00"
    assert parse_ethernet_header(frame)[2] == 0x0600


def test_tag_constants() -> None:
    """The TPIDs the parser recognises are 0x8100 and 0x88a8."""
    assert (ETHERTYPE_VLAN, ETHERTYPE_QINQ) == (0x8100, 0x88A8)


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["02:18:00:00:00:01", "02-18-00-00-00-01", "2:18:0:0:0:1"])
def test_mac_address_spellings(spelling: str) -> None:
    """A MacAddress is its six bytes, whichever way it was written, and prints canonically."""
    mac = MacAddress(spelling)
    assert mac == KERNEL_MAC
    assert str(mac) == "02:18:00:00:00:01"
    assert repr(mac) == "MacAddress('02:18:00:00:00:01')"


@pytest.mark.parametrize("bad", ["02:18:00:00:00", "02:18:00:00:00:01:02", "02:18:00:00:00:zz", b"\x00" * 5])
def test_bad_mac_address(bad: str | bytes) -> None:
    """Five or seven parts, non-hex parts and wrong byte counts are ValueError."""
    with pytest.raises(ValueError):
        MacAddress(bad)


def test_ip4_spellings() -> None:
    """ip4 and ip4_int accept an IPv4Address, a string or an int, and agree."""
    for spelling in ("198.18.0.1", IPv4Address("198.18.0.1"), 0xC6120001):
        assert ip4(spelling) == IPv4Address("198.18.0.1")
        assert ip4_int(spelling) == 0xC6120001
