"""Real frames captured from the Linux kernel, as commented hex, for the tier-1 wire tests.

Where: captured 2026-11-24 on Linux 6.18.44-fc-v595 (x86_64), with a Python AF_PACKET socket
(``socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL))``, run through ``ip netns exec``) keeping only
PACKET_OUTGOING frames on the sending end of a veth pair joining two private network namespaces:
``yas-wirecap-a`` (veth ``yas0``, MAC 02:18:00:00:00:01, 198.18.0.1/24, "the kernel side") and
``yas-wirecap-b`` (veth ``yas1``, MAC 02:18:00:00:00:02, 198.18.0.2/24).  IPv6 was disabled in
both namespaces, and TX checksum offload, TSO/GSO and VLAN offloads were turned off with
``ethtool -K`` so every checksum in these frames is complete (each one was checked against an
independent checksum before being kept, and the tests check them again).  The receiving side
saw byte-identical frames.  veth does not pad frames to the 60-byte Ethernet minimum, so short
frames (ARP) are 42 bytes here.  No FCS: AF_PACKET hands frames over without it.

The VLAN frames: this kernel is built without CONFIG_VLAN_8021Q (no vlan interfaces), so a
six-instruction tc egress eBPF program on ``yas0`` (clsact, ``bpf_skb_vlan_push``) tagged the
kernel's own ARP requests, with the veth's tx-vlan (and S-tag) offloads off so that the tags are
written into the frame bytes by the kernel's software VLAN insertion before the AF_PACKET tap.

Each vector is split one line per layer (Ethernet header, IP header, transport header, payload).
At the end: the two hosts' addresses, and an independent checksum oracle that shares no code
with :mod:`trio_yastack.stack.wire._checksum`.
"""

from __future__ import annotations

from ipaddress import IPv4Address

# ARP request (broadcast), 198.18.0.1 asks who has 198.18.0.2; sent by `ping -c 1`.
ARP_REQUEST = bytes.fromhex(
    "ffffffffffff0218000000010806"  # Ethernet
    "0001080006040001021800000001c6120001000000000000c6120002"  # ARP
)

# The ARP reply from 198.18.0.2 (02:18:00:00:00:02) to 198.18.0.1.
ARP_REPLY = bytes.fromhex(
    "0218000000010218000000020806"  # Ethernet
    "0001080006040002021800000002c6120002021800000001c6120001"  # ARP
)

# `ping -c 1 -p 7961737461636b 198.18.0.2`: echo request, id 0x0e32, seq 1, 56 data bytes
# (a 16-byte timeval, then the pattern "yastack" repeated).  DF set, ident 0x4c8b.
ICMP_ECHO_REQUEST = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "450000544c8b4000400161f6c6120001c6120002"  # IPv4
    "080072450e320001"  # ICMP
    "bb02066b0000000056a2000000000000737461636b7961737461636b7961737461636b7961737461636b796173746163"
    "6b7961737461636b"
)

# The echo reply from 198.18.0.2: no DF, ident 0xb117, the same id/seq/data.
ICMP_ECHO_REPLY = bytes.fromhex(
    "0218000000010218000000020800"  # Ethernet
    "45000054b117000040013d6ac6120002c6120001"  # IPv4
    "00007a450e320001"  # ICMP
    "bb02066b0000000056a2000000000000737461636b7961737461636b7961737461636b7961737461636b796173746163"
    "6b7961737461636b"
)

# UDP 198.18.0.1:40000 -> 198.18.0.2:9999, payload b"trio_yastack wire vector\n" (25 bytes).
UDP_DATAGRAM = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "45000035591340004011557dc6120001c6120002"  # IPv4
    "9c40270f0021f742"  # UDP
    "7472696f5f7961737461636b207769726520766563746f720a"  # payload
)

# A 3000-byte UDP payload (bytes(i & 0xFF for i in range(3000))), 40000 -> 9999, fragmented
# by the kernel at MTU 1500: ident 0x5945, first fragment (MF, offset 0) carries the UDP
# header, whose checksum covers the whole 3008-byte datagram.
UDP_FRAGMENT_0 = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "450005dc5945200040116fa4c6120001c6120002"  # IPv4
    "9c40270f0bc08108"  # UDP
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
    "303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f"
    "909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f"
    "505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f"
    "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
    "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
    "303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f"
    "909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f"
    "505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f"
    "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
)

# Second fragment: MF, offset 1480 (0x00b9 * 8), 1480 bytes of the datagram.
UDP_FRAGMENT_1 = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "450005dc594520b940116eebc6120001c6120002"  # IPv4
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f"
    "505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f"
    "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
    "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
    "303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f"
    "909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f"
    "505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f"
    "707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
    "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
    "303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f8081828384858687"
)

# Last fragment: no MF, offset 2960 (0x0172 * 8), the final 48 bytes.
UDP_FRAGMENT_2 = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "4500004459450172401193cac6120001c6120002"  # IPv4
    "88898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7"
)

# UDP 198.18.0.1:40000 -> 198.18.0.2:9 (nobody listens), payload b"nobody listens here\n".
UDP_TO_CLOSED_PORT = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "45000030594a40004011554bc6120001c6120002"  # IPv4
    "9c400009001c4a4f"  # UDP
    "6e6f626f6479206c697374656e7320686572650a"  # payload
)

# 198.18.0.2's answer to UDP_TO_CLOSED_PORT: ICMP type 3 code 3, TOS 0xc0, quoting the
# whole offending datagram (IP header + UDP header + payload).
ICMP_PORT_UNREACHABLE = bytes.fromhex(
    "0218000000010218000000020800"  # Ethernet
    "45c0004cb179000040013c50c6120002c6120001"  # IPv4
    "0303895200000000"  # ICMP
    "45000030594a40004011554bc6120001c61200029c400009001c4a4f6e6f626f6479206c697374656e7320686572650a"
)

# TCP SYN 198.18.0.1:40001 -> 198.18.0.2:8080 (socket.create_connection): seq 0x359119f1,
# window 64240, options MSS 1460, SACK-permitted, timestamps, NOP, window scale 10.
TCP_SYN = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "4500003c0b3640004006a35ec6120001c6120002"  # IPv4
    "9c411f90359119f100000000a002faf030550000020405b40402080ae4aba08f000000000103030a"  # TCP
)

# The SYN-ACK: ident 0 (Linux sends ident 0 on DF SYN-ACKs), seq 0x55e1f911, ack 0x359119f2,
# window 65160, the same option layout with TSecr echoing the SYN's TSval.
TCP_SYN_ACK = bytes.fromhex(
    "0218000000010218000000020800"  # Ethernet
    "4500003c000040004006ae94c6120002c6120001"  # IPv4
    "1f909c4155e1f911359119f2a012fe8837480000020405b40402080a8d5a1916e4aba08f0103030a"  # TCP
)

# The third segment of the handshake: ACK, window 63 (<< 10), NOP NOP timestamps.
TCP_ACK = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "450000340b3740004006a365c6120001c6120002"  # IPv4
    "9c411f90359119f255e1f9128010003f646100000101080ae4aba08f8d5a1916"  # TCP
)

# A data segment (PSH|ACK) with timestamps, payload b"hello from 198.18.0.1\n" (22 bytes).
TCP_DATA = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "4500004a0b3840004006a34ec6120001c6120002"  # IPv4
    "9c411f90359119f255e1f9128018003f297000000101080ae4aba08f8d5a1916"  # TCP
    "68656c6c6f2066726f6d203139382e31382e302e310a"  # payload
)

# 198.18.0.1's FIN|ACK closing the connection.
TCP_FIN_ACK = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "450000340b3b40004006a361c6120001c6120002"  # IPv4
    "9c411f9035911a0855e1f9298011003f636a00000101080ae4aba1588d5a1916"  # TCP
)

# ARP request for 198.18.0.2 carrying one 802.1Q tag (TPID 0x8100, VID 100, PCP 0).
VLAN_ARP_REQUEST = bytes.fromhex(
    "ffffffffffff021800000001810000640806"  # Ethernet, 1 tag
    "0001080006040001021800000001c6120001000000000000c6120002"  # ARP
)

# ARP request for 198.18.0.2 carrying two tags: 802.1ad outer (TPID 0x88a8, VID 200) and
# 802.1Q inner (TPID 0x8100, VID 100).
QINQ_ARP_REQUEST = bytes.fromhex(
    "ffffffffffff02180000000188a800c8810000640806"  # Ethernet, 2 tags
    "0001080006040001021800000001c6120001000000000000c6120002"  # ARP
)

# A second run with net.ipv4.tcp_timestamps=0 in yas-wirecap-a: the SYN to 198.18.0.2:8080
# from port 40002 then carries MSS 1460, NOP NOP SACK-permitted, NOP window scale 10.
TCP_SYN_NO_TIMESTAMPS = bytes.fromhex(
    "0218000000020218000000010800"  # Ethernet
    "450000341320400040069b7cc6120001c6120002"  # IPv4
    "9c421f905031dc46000000008002faf0ffaa0000020405b4010104020103030a"  # TCP
)

# 198.18.0.2's SYN-ACK to it, with the same option layout (no timestamps offered).
TCP_SYN_ACK_NO_TIMESTAMPS = bytes.fromhex(
    "0218000000010218000000020800"  # Ethernet
    "45000034000040004006ae9cc6120002c6120001"  # IPv4
    "1f909c42ec27ec0b5031dc478012faf027660000020405b4010104020103030a"  # TCP
)


KERNEL_MAC = bytes.fromhex("021800000001")  # yas0, in yas-wirecap-a
PEER_MAC = bytes.fromhex("021800000002")  # yas1, in yas-wirecap-b
KERNEL_IP = IPv4Address("198.18.0.1")
PEER_IP = IPv4Address("198.18.0.2")


def rfc1071_sum(data: bytes) -> int:
    """The folded one's-complement sum of ``data``'s 16-bit words, the slow way (RFC 1071 4.1).

    A correct checksum makes the sum over the covered bytes (field included) 0xFFFF.
    """
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header(src: IPv4Address, dst: IPv4Address, protocol: int, length: int) -> bytes:
    """The IPv4 pseudo-header that TCP and UDP checksums cover (RFC 9293 3.1, RFC 768)."""
    return src.packed + dst.packed + bytes((0, protocol)) + length.to_bytes(2, "big")
