"""TCP: Linux's handshake and data segments re-emitted byte for byte, option parsing and its refusals."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from vectors import (
    KERNEL_IP,
    PEER_IP,
    TCP_ACK,
    TCP_DATA,
    TCP_FIN_ACK,
    TCP_SYN,
    TCP_SYN_ACK,
    TCP_SYN_ACK_NO_TIMESTAMPS,
    TCP_SYN_NO_TIMESTAMPS,
    pseudo_header,
    rfc1071_sum,
)

from trio_yastack.stack.wire import (
    IPPROTO_TCP,
    BadChecksum,
    EthernetRepr,
    Ipv4Repr,
    Malformed,
    TcpOptions,
    TcpRepr,
    Truncated,
    WireError,
)
from trio_yastack.stack.wire.tcp import TCP_ACK as FLAG_ACK
from trio_yastack.stack.wire.tcp import TCP_FIN, TCP_PSH, parse_tcp_header, parse_tcp_options
from trio_yastack.stack.wire.tcp import TCP_SYN as FLAG_SYN

ALL_TCP = [
    TCP_SYN,
    TCP_SYN_ACK,
    TCP_ACK,
    TCP_DATA,
    TCP_FIN_ACK,
    TCP_SYN_NO_TIMESTAMPS,
    TCP_SYN_ACK_NO_TIMESTAMPS,
]
IDS = ["syn", "syn-ack", "ack", "data", "fin", "syn-no-ts", "syn-ack-no-ts"]
TOP = 2**32 - 1


def addresses(frame: bytes) -> tuple[IPv4Address, IPv4Address]:
    """Source and destination of a captured frame, read from its IPv4 header."""
    ip = Ipv4Repr.parse(frame, 14)
    return ip.src, ip.dst


def segment(frame: bytes) -> bytes:
    """The TCP segment in a captured frame (Ethernet 14 + IPv4 20 bytes in front)."""
    return frame[34:]


def refill_checksum(seg: bytearray, src: IPv4Address = KERNEL_IP, dst: IPv4Address = PEER_IP) -> bytes:
    """Recompute the TCP checksum with the independent oracle."""
    seg[16:18] = b"\x00\x00"
    checksum = ~rfc1071_sum(pseudo_header(src, dst, IPPROTO_TCP, len(seg)) + bytes(seg)) & 0xFFFF
    struct.pack_into("!H", seg, 16, checksum)
    return bytes(seg)


def options_of(raw: bytes) -> TcpOptions:
    """parse_tcp_options over the whole of ``raw``."""
    return parse_tcp_options(raw, 0, len(raw))


# --- deconstruct ---------------------------------------------------------------------------


def test_parse_syn_header_and_options() -> None:
    """Linux's SYN: fixed fields, a 40-byte header, and MSS, SACK-permitted, timestamps, window scale."""
    src, dst = addresses(TCP_SYN)
    fields = parse_tcp_header(TCP_SYN, 34, len(TCP_SYN), int(src), int(dst))
    assert fields == (40001, 8080, 0x359119F1, 0, FLAG_SYN, 64240, 0, 40)
    options = parse_tcp_options(TCP_SYN, 54, 74)
    assert options == TcpOptions(mss=1460, window_scale=10, sack_permitted=True, timestamps=(0xE4ABA08F, 0))


def test_repr_of_the_handshake_and_data() -> None:
    """SYN-ACK, ACK and the data segment parse to the values the capture shows."""
    syn_ack = TcpRepr.parse(TCP_SYN_ACK, PEER_IP, KERNEL_IP, 34)
    assert (syn_ack.src_port, syn_ack.dst_port) == (8080, 40001)
    assert (syn_ack.seq, syn_ack.ack, syn_ack.flags, syn_ack.window) == (0x55E1F911, 0x359119F2, 0x12, 65160)
    assert syn_ack.options.timestamps == (0x8D5A1916, 0xE4ABA08F)  # TSecr echoes the SYN's TSval
    ack = TcpRepr.parse(TCP_ACK, KERNEL_IP, PEER_IP, 34)
    assert (ack.seq, ack.ack, ack.flags, ack.window) == (0x359119F2, 0x55E1F912, FLAG_ACK, 63)
    assert ack.options == TcpOptions(timestamps=(0xE4ABA08F, 0x8D5A1916))
    assert ack.payload == b""
    data = TcpRepr.parse(TCP_DATA, KERNEL_IP, PEER_IP, 34)
    assert data.flags == FLAG_ACK | TCP_PSH
    assert data.payload == b"hello from 198.18.0.1\n"
    assert data.header_len == 32 and data.buffer_len == 54
    fin = TcpRepr.parse(TCP_FIN_ACK, KERNEL_IP, PEER_IP, 34)
    assert fin.flags == FLAG_ACK | TCP_FIN
    assert fin.seq == data.seq + len(data.payload)  # the FIN follows the data in sequence space


def test_repr_of_syn_without_timestamps() -> None:
    """With tcp_timestamps=0 Linux sends NOP NOP SACK-permitted: 12 bytes of options, no timestamps."""
    syn = TcpRepr.parse(TCP_SYN_NO_TIMESTAMPS, KERNEL_IP, PEER_IP, 34)
    assert syn.options == TcpOptions(mss=1460, window_scale=10, sack_permitted=True)
    assert syn.header_len == 32
    syn_ack = TcpRepr.parse(TCP_SYN_ACK_NO_TIMESTAMPS, PEER_IP, KERNEL_IP, 34)
    assert syn_ack.options == syn.options and syn_ack.ack == syn.seq + 1


# --- construct -----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ALL_TCP, ids=IDS)
def test_emit_into_prefilled_buffer_matches_capture(frame: bytes) -> None:
    """Every captured segment re-emits exactly: options in Linux's order, checksum, payload, nothing more."""
    src, dst = addresses(frame)
    tcp = TcpRepr.parse(frame, src, dst, 34)
    seg = segment(frame)
    buf = bytearray(b"\xa5" * (len(seg) + 10))
    assert tcp.emit_into(buf, src, dst, 5) == 5 + len(seg)
    assert buf[5 : 5 + len(seg)] == seg
    assert buf[:5] == b"\xa5" * 5 and buf[5 + len(seg) :] == b"\xa5" * 5


@pytest.mark.parametrize(
    "frame", [TCP_SYN, TCP_SYN_ACK, TCP_ACK, TCP_SYN_NO_TIMESTAMPS], ids=IDS[:3] + IDS[5:6]
)
def test_options_emit_in_linux_order(frame: bytes) -> None:
    """TcpOptions.to_bytes gives the option bytes Linux wrote, and buffer_len their length."""
    tcp = TcpRepr.parse(frame, *addresses(frame), 34)
    raw = frame[54 : 34 + tcp.header_len]
    assert tcp.options.to_bytes() == raw
    assert tcp.options.buffer_len == len(raw)


def test_build_syn_from_scratch() -> None:
    """A SYN built from values (not parsed) equals Linux's, checksum 0x3055 included."""
    syn = TcpRepr(
        40001,
        8080,
        seq=0x359119F1,
        ack=0,
        flags=FLAG_SYN,
        window=64240,
        options=TcpOptions(mss=1460, window_scale=10, sack_permitted=True, timestamps=(0xE4ABA08F, 0)),
    )
    assert syn.to_bytes(KERNEL_IP, PEER_IP) == segment(TCP_SYN)


def test_build_whole_data_frame() -> None:
    """Ethernet + IPv4 (DF, ident 0x0b38) + TCP data segment built in one buffer equal the capture."""
    tcp = TcpRepr(
        40001,
        8080,
        0x359119F2,
        0x55E1F912,
        FLAG_ACK | TCP_PSH,
        63,
        TcpOptions(timestamps=(0xE4ABA08F, 0x8D5A1916)),
        b"hello from 198.18.0.1\n",
    )
    ip = Ipv4Repr(KERNEL_IP, PEER_IP, IPPROTO_TCP, tcp.buffer_len, ident=0x0B38, dont_fragment=True)
    eth, _ = EthernetRepr.parse(TCP_DATA)
    buf = bytearray(b"\xa5" * len(TCP_DATA))
    assert tcp.emit_into(buf, ip.src, ip.dst, ip.emit_into(buf, eth.emit_into(buf))) == len(TCP_DATA)
    assert bytes(buf) == TCP_DATA


def test_sack_permitted_alone_takes_four_bytes() -> None:
    """Regression: SACK-permitted without timestamps is NOP NOP 4 2, so buffer_len is 4, not 12."""
    options = TcpOptions(sack_permitted=True)
    assert options.buffer_len == 4
    assert options.to_bytes() == b"\x01\x01\x04\x02"
    syn = TcpRepr(1, 2, 3, 0, FLAG_SYN, 1000, TcpOptions(mss=536, sack_permitted=True))
    buf = bytearray(b"\xa5" * syn.buffer_len)  # a wrong header length would leave 0xa5 inside the options
    syn.emit_into(buf, KERNEL_IP, PEER_IP)
    assert TcpRepr.parse(bytes(buf), KERNEL_IP, PEER_IP) == syn


@pytest.mark.parametrize(
    "options",
    [
        TcpOptions(),
        TcpOptions(mss=0xFFFF),
        TcpOptions(window_scale=0),
        TcpOptions(timestamps=(TOP, TOP)),
        TcpOptions(sack_blocks=((TOP - 10, 5),)),
        TcpOptions(timestamps=(1, 2), sack_blocks=((1, 2), (3, 4), (5, 6))),
        TcpOptions(mss=1460, sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8))),
        TcpOptions(mss=1, window_scale=14, sack_permitted=True, timestamps=(0, 0)),
    ],
    ids=["none", "mss", "ws0", "ts", "sack1", "ts+sack3", "mss+sack4", "all-syn"],
)
def test_round_trip_options(options: TcpOptions) -> None:
    """Segments with each option combination (and sequence numbers at 2**32-1) parse back equal."""
    tcp = TcpRepr(65535, 1, TOP, TOP, 0xFF, 0xFFFF, options, b"data", urgent=0xFFFF)
    data = tcp.to_bytes(KERNEL_IP, PEER_IP)
    assert len(data) == tcp.buffer_len and (len(data) - 4) % 4 == 0
    assert data[12] >> 4 == tcp.header_len // 4
    assert TcpRepr.parse(data, KERNEL_IP, PEER_IP) == tcp


def test_emit_refuses_options_beyond_40_bytes() -> None:
    """Timestamps plus four SACK blocks need 48 bytes of options: ValueError, not a corrupt header."""
    tcp = TcpRepr(1, 2, 3, 4, FLAG_ACK, 5, TcpOptions(timestamps=(1, 2), sack_blocks=((1, 2),) * 4))
    with pytest.raises(ValueError, match="60"):
        tcp.to_bytes(KERNEL_IP, PEER_IP)


def test_emit_refuses_five_sack_blocks() -> None:
    """More than four SACK blocks cannot be sent: ValueError."""
    with pytest.raises(ValueError, match="4 SACK blocks"):
        TcpOptions(sack_blocks=((1, 2),) * 5).to_bytes()


def test_reserved_bits_are_not_kept() -> None:
    """The four bits after the data offset (reserved, AccECN's AE) are accepted but not represented.

    So a segment with them set cannot re-emit exactly: emit writes them as zero.
    """
    seg = bytearray(segment(TCP_SYN))
    seg[12] |= 0x01
    tcp = TcpRepr.parse(refill_checksum(seg), KERNEL_IP, PEER_IP)
    again = tcp.to_bytes(KERNEL_IP, PEER_IP)
    assert again[12] == seg[12] & 0xF0
    assert again == segment(TCP_SYN)


# --- options: the bad and the odd ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\x02\x00\x05\xb4",  # length 0
        b"\x02\x01\x05\xb4",  # length 1
        b"\x1e\x00",  # unknown kind, length 0
        b"\x1e\x01\x00\x00",  # unknown kind, length 1
        b"\x08\x0a\x00\x00\x00\x01",  # timestamps overrunning the option space
        b"\x01\x01\x1e\x08\x00\x00",  # unknown option overrunning
        b"\x01\x01\x01\x03",  # window scale with no length byte
        b"\x02",  # MSS kind alone
        b"\x02\x03\x05\x01",  # MSS length 3
        b"\x02\x05\x05\xb4\x00\x01\x01\x01",  # MSS length 5
        b"\x03\x04\x07\x00",  # window scale length 4
        b"\x03\x02\x01\x01",  # window scale length 2
        b"\x04\x03\x00\x01",  # SACK-permitted length 3
        b"\x08\x08\x00\x00\x00\x01\x00\x00",  # timestamps length 8
        b"\x05\x02\x01\x01",  # SACK with no block
        b"\x05\x0b" + bytes(9) + b"\x01",  # SACK length not 2 + 8n
        b"\x05\x2a" + bytes(40),  # SACK with five blocks
    ],
)
def test_bad_option_lengths(raw: bytes) -> None:
    """Length 0 or 1, a length past the option space, a wrong fixed length: Malformed("bad_option")."""
    with pytest.raises(Malformed) as info:
        options_of(raw)
    assert info.value.reason == "bad_option"
    assert isinstance(info.value, WireError)


def test_bad_option_in_a_segment_is_refused() -> None:
    """TcpRepr.parse refuses a segment whose options are bad, even with a valid checksum."""
    seg = bytearray(segment(TCP_SYN))
    seg[21] = 0  # MSS length 0
    with pytest.raises(Malformed) as info:
        TcpRepr.parse(refill_checksum(seg), KERNEL_IP, PEER_IP)
    assert info.value.reason == "bad_option"


@pytest.mark.parametrize(
    "unknown",
    [
        b"\x1e\x06\x00\x00\x00\x00",  # MPTCP-like kind 30
        b"\xfe\x04\xf9\x89",  # RFC 6994 experimental kind 254
        b"\x13\x12" + bytes(16),  # TCP MD5 signature
        b"\x22\x02",  # TFO cookie request, length 2
    ],
    ids=["mptcp", "exp", "md5", "tfo"],
)
def test_unknown_options_are_skipped(unknown: bytes) -> None:
    """An unknown kind is skipped by its length and the known options around it still parse."""
    raw = b"\x02\x04\x05\xb4" + unknown + b"\x01\x03\x03\x07"
    raw += b"\x00" * (-len(raw) % 4)
    assert options_of(raw) == TcpOptions(mss=1460, window_scale=7)


@pytest.mark.parametrize("shift", [14, 15, 200, 255])
def test_window_scale_above_14_is_kept_raw(shift: int) -> None:
    """The parser reports the shift as received; clamping to 14 (RFC 7323 2.3) is the connection's job."""
    options = options_of(bytes((1, 3, 3, shift)))
    assert options.window_scale == shift
    assert options.to_bytes() == bytes((1, 3, 3, shift))


def test_end_of_option_list_stops_parsing() -> None:
    """After EOL the rest is padding, even bytes that would be a bad option."""
    assert options_of(b"\x02\x04\x05\xb4\x00\x02\x00\x00") == TcpOptions(mss=1460)
    assert options_of(b"\x00\x00\x00\x00") == TcpOptions()
    assert options_of(b"\x01\x01\x01\x01") == TcpOptions()


def test_sack_blocks_parse() -> None:
    """One to four SACK blocks parse as (left, right) pairs, edges up to 2**32-1."""
    blocks = ((TOP, 0), (1, 2), (0x80000000, 0x80000010), (5, 6))
    for n in range(1, 5):
        raw = b"\x01\x01\x05" + bytes((2 + 8 * n,)) + b"".join(struct.pack("!II", *b) for b in blocks[:n])
        assert options_of(raw).sack_blocks == blocks[:n]


def test_later_duplicate_option_wins() -> None:
    """Two MSS options: the parser keeps the last one (it refuses neither)."""
    assert options_of(b"\x02\x04\x05\xb4\x02\x04\x02\x18").mss == 536


# --- header: truncation and checksums ---------------------------------------------------------


@pytest.mark.parametrize("length", range(20))
def test_truncated_below_a_header(length: int) -> None:
    """Fewer than 20 bytes is Truncated("too_short")."""
    with pytest.raises(Truncated) as info:
        TcpRepr.parse(segment(TCP_SYN)[:length], KERNEL_IP, PEER_IP)
    assert info.value.reason == "too_short"


def test_truncated_inside_the_options() -> None:
    """A SYN cut inside its 40-byte header (data offset past the bytes): Malformed("bad_header_length")."""
    for length in range(20, 40):
        with pytest.raises(Malformed) as info:
            TcpRepr.parse(segment(TCP_SYN)[:length], KERNEL_IP, PEER_IP, verify_checksum=False)
        assert info.value.reason == "bad_header_length"


def test_truncated_inside_the_payload_fails_the_checksum() -> None:
    """TCP has no length field: a data segment cut short is caught by the checksum, at every length."""
    seg = segment(TCP_DATA)
    for length in range(32, len(seg)):
        with pytest.raises(BadChecksum):
            TcpRepr.parse(seg[:length], KERNEL_IP, PEER_IP)


@pytest.mark.parametrize("data_offset", [0, 1, 4])
def test_data_offset_too_small(data_offset: int) -> None:
    """A data offset below 5 words is Malformed("bad_header_length")."""
    seg = bytearray(segment(TCP_ACK))
    seg[12] = data_offset << 4
    with pytest.raises(Malformed) as info:
        TcpRepr.parse(refill_checksum(seg), KERNEL_IP, PEER_IP)
    assert info.value.reason == "bad_header_length"


def test_data_offset_too_large() -> None:
    """Data offset 15 (60 bytes) on a 32-byte segment is Malformed("bad_header_length")."""
    seg = bytearray(segment(TCP_ACK))
    seg[12] = 0xF0
    with pytest.raises(Malformed) as info:
        parse_tcp_header(refill_checksum(seg), 0, len(seg), int(KERNEL_IP), int(PEER_IP))
    assert info.value.reason == "bad_header_length"


@pytest.mark.parametrize("frame", ALL_TCP, ids=IDS)
def test_bad_checksum(frame: bytes) -> None:
    """A flipped checksum bit is BadChecksum("bad_checksum"); with verify_checksum=False it parses."""
    src, dst = addresses(frame)
    seg = bytearray(segment(frame))
    seg[17] ^= 0x80
    with pytest.raises(BadChecksum) as info:
        TcpRepr.parse(bytes(seg), src, dst)
    assert info.value.reason == "bad_checksum"
    assert TcpRepr.parse(bytes(seg), src, dst, verify_checksum=False) == TcpRepr.parse(frame, src, dst, 34)


@pytest.mark.parametrize("frame", ALL_TCP, ids=IDS)
def test_captured_checksums_verify_independently(frame: bytes) -> None:
    """Each vector's checksum verifies with the RFC 1071 oracle over the pseudo-header (offload was off)."""
    src, dst = addresses(frame)
    seg = segment(frame)
    assert rfc1071_sum(pseudo_header(src, dst, IPPROTO_TCP, len(seg)) + seg) == 0xFFFF


def test_wrong_pseudo_header_fails() -> None:
    """The checksum covers the addresses: the same segment from another address fails."""
    with pytest.raises(BadChecksum):
        TcpRepr.parse(segment(TCP_SYN), IPv4Address("198.18.0.3"), PEER_IP)


def test_scapy_reads_emitted_syn() -> None:
    """An independent parser (scapy) reads our SYN's fields and options and agrees on the checksum."""
    scapy_all = pytest.importorskip("scapy.all")
    syn = TcpRepr(
        40001,
        8080,
        TOP,
        0,
        FLAG_SYN,
        64240,
        TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamps=(123, 0)),
    )
    ip = Ipv4Repr(KERNEL_IP, PEER_IP, IPPROTO_TCP, syn.buffer_len, ident=1, dont_fragment=True)
    data = ip.to_bytes(syn.to_bytes(ip.src, ip.dst))
    tcp = scapy_all.IP(data)[scapy_all.TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.flags, tcp.window, tcp.dataofs) == (
        40001,
        8080,
        TOP,
        "S",
        64240,
        10,
    )
    assert tcp.options == [
        ("MSS", 1460),
        ("SAckOK", b""),
        ("Timestamp", (123, 0)),
        ("NOP", None),
        ("WScale", 7),
    ]
    rebuilt = scapy_all.IP(data)
    del rebuilt[scapy_all.TCP].chksum
    assert bytes(rebuilt) == data


def test_scapy_reads_emitted_sack_blocks() -> None:
    """scapy reads the SACK blocks we emit (NOP NOP SACK, after the timestamps)."""
    scapy_all = pytest.importorskip("scapy.all")
    ack = TcpRepr(1, 2, 3, 4, FLAG_ACK, 5, TcpOptions(timestamps=(7, 8), sack_blocks=((10, 20), (30, 40))))
    tcp = scapy_all.TCP(ack.to_bytes(KERNEL_IP, PEER_IP))
    nop = ("NOP", None)
    assert tcp.options == [nop, nop, ("Timestamp", (7, 8)), nop, nop, ("SAck", (10, 20, 30, 40))]
