"""IPv6 frames captured from the Linux kernel, as commented hex, for the IPv6 wire and stack tests.

Where: captured 2026-12-06 on Linux 6.18.44 (x86_64), with a Python AF_PACKET socket
(``socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL))``, run through ``ip netns exec``) keeping only
PACKET_OUTGOING IPv6 frames on each end of a veth pair joining two private network namespaces:
``yas6cap-a`` (veth ``yas0``, MAC 02:18:00:00:00:01, 2001:2::1/64) and ``yas6cap-b`` (veth
``yas1``, MAC 02:18:00:00:00:02, 2001:2::2/64), both added ``nodad`` with ``accept_dad=0`` and
``router_solicitations=0`` (no DAD or RS noise), TX checksum offload, TSO and GSO off with
``ethtool -K`` so every checksum is complete.  Traffic: ``ping -6 -c 1 -p 7961737461636b
2001:2::2`` (with the neighbour solicitation and advertisement it caused), ``ping -6 -c 1 -s 1600
2001:2::2`` (fragmented both ways: A's fragments are kept), and one UDP datagram
2001:2::1:40000 -> 2001:2::2:9999 sent with a Python socket.
"""

from __future__ import annotations

from ipaddress import IPv6Address

HOST_A_MAC = bytes.fromhex("021800000001")
HOST_B_MAC = bytes.fromhex("021800000002")
HOST_A = IPv6Address("2001:2::1")
HOST_B = IPv6Address("2001:2::2")

# The kernel of A asks for B's MAC: NS to B's solicited-node group ff02::1:ff00:2, hop limit 255,
# with a source link-layer address option.
NEIGHBOR_SOLICIT = bytes.fromhex(
    "3333ff00000202180000000186dd"  # Ethernet (to 33:33:ff:00:00:02)
    "6000000000203aff20010002000000000000000000000001ff0200000000000000000001ff000002"  # IPv6
    "8700377b00000000"  # ICMPv6 NS
    "20010002000000000000000000000002"  # target 2001:2::2
    "0101021800000001"  # source link-layer address option
)

# B's answer: NA, flags S|O, with a target link-layer address option.
NEIGHBOR_ADVERT = bytes.fromhex(
    "02180000000102180000000286dd"  # Ethernet
    "6000000000203aff2001000200000000000000000000000220010002000000000000000000000001"  # IPv6
    "8800b37b60000000"  # ICMPv6 NA (flags 0x60000000)
    "20010002000000000000000000000002"  # target 2001:2::2
    "0201021800000002"  # target link-layer address option
)

# Echo request, id 0x539a, seq 1, 56 data bytes (a 16-byte timeval, then "yastack" repeated), hop
# limit 64, flow label 0x9c51f.
ECHO_REQUEST = bytes.fromhex(
    "02180000000202180000000186dd"  # Ethernet
    "6009c51f00403a402001000200000000000000000000000120010002000000000000000000000002"  # IPv6
    "80000990539a0001"  # ICMPv6 echo request
    "8ae6146b00000000d7870c0000000000737461636b7961737461636b7961737461636b7961737461636b796173746163"
    "6b7961737461636b"  # data
)

# B's echo reply: the same id, seq and data.
ECHO_REPLY = bytes.fromhex(
    "02180000000102180000000286dd"  # Ethernet
    "6004dac800403a402001000200000000000000000000000220010002000000000000000000000001"  # IPv6
    "81000890539a0001"  # ICMPv6 echo reply
    "8ae6146b00000000d7870c0000000000737461636b7961737461636b7961737461636b7961737461636b796173746163"
    "6b7961737461636b"  # data
)

#: ``ping -s 1600``'s data after its 16-byte timeval: bytes 0x10, 0x11, ... (modulo 256)
PING_PATTERN_1600 = bytes((i + 0x10) & 0xFF for i in range(1600 - 16))

# A's 1648-byte echo request (id 0x539f), fragmented by the kernel: the first fragment (1448 bytes of
# payload, M set, identification 0x466c9258) ...
FRAGMENT_1 = (
    bytes.fromhex(
        "02180000000202180000000186dd"  # Ethernet
        "6009c51f05b02c402001000200000000000000000000000120010002000000000000000000000002"  # IPv6, next 44
        "3a000001466c9258"  # fragment header: next 58, offset 0, M
        "80006987539f00018ae6146b00000000a3b80c0000000000"  # ICMPv6 echo request header, timeval
    )
    + PING_PATTERN_1600[: 1448 - 24]
)

# ... and the last (offset 1448, 160 bytes).
FRAGMENT_2 = (
    bytes.fromhex(
        "02180000000202180000000186dd"  # Ethernet
        "6009c51f00a82c402001000200000000000000000000000120010002000000000000000000000002"  # IPv6
        "3a0005a8466c9258"  # fragment header: next 58, offset 1448, last
    )
    + PING_PATTERN_1600[1448 - 24 :]
)

# UDP 2001:2::1:40000 -> 2001:2::2:9999, payload b"trio_yastack wire vector\n" (25 bytes).
UDP_DATAGRAM = bytes.fromhex(
    "02180000000202180000000186dd"  # Ethernet
    "6003b9cd002111402001000200000000000000000000000120010002000000000000000000000002"  # IPv6
    "9c40270f00214362"  # UDP
    "7472696f5f7961737461636b207769726520766563746f720a"  # payload
)
