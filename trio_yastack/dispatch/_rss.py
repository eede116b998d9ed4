"""Software receive-side scaling: the Toeplitz hash and the redirection table (RETA).

A NIC with RSS hashes each packet's flow with the Toeplitz function and a secret key, takes
the low bits of the hash as an index into its redirection table, and delivers the packet to
the queue (the core) that entry names; every packet of a flow lands on the same core, which
is what lets each core run its own stack with nothing shared.  When the port cannot do it (a
single TAP queue), the dispatching core does the same here, so a flow goes to the core a
hardware NIC with the same key and table would have picked.

The hash input is the flow as the packet *arrives*: source address, destination address,
source port, destination port, each in network byte order (the Microsoft "RSS hashing
functions" definition; for IPv4 without ports, the two addresses only).  On the receive side
the source is the remote peer.  IPv6 is the same with 16-byte addresses: 36 bytes with the
ports, exactly what the 40-byte key can hash (the last input bit needs key bits up to 8 * 36 + 31).
"""

from __future__ import annotations

import struct

from ._native import NATIVE
from ._native_rss import toeplitz, toeplitz_tables

__all__ = [
    "DEFAULT_RSS_KEY",
    "Reta",
    "flow_core",
    "flow_core_c",
    "flow_core_tables",
    "rss_input_ipv4",
    "rss_input_ipv4_ports",
    "rss_input_ipv6",
    "rss_input_ipv6_ports",
    "toeplitz_hash",
]

#: The 40-byte key of Microsoft's RSS verification suite, which Intel's datasheets and DPDK's
#: tests also use: the published hash values are computed with it.
DEFAULT_RSS_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)

_IPV4 = struct.Struct("!II")
_IPV4_PORTS = struct.Struct("!IIHH")
_IPV6 = struct.Struct("!QQQQ")
_IPV6_PORTS = struct.Struct("!QQQQHH")
_MASK64 = 2**64 - 1


def toeplitz_hash(key: bytes, data: bytes) -> int:
    """The Toeplitz hash of ``data`` with ``key`` (C when built, else the pure-Python twin);
    ``ValueError`` when the key is shorter than ``len(data) + 4`` bytes."""
    return toeplitz(key, data)


def rss_input_ipv4(src: int, dst: int) -> bytes:
    """The 8-byte hash input of an IPv4 packet without ports: source then destination address,
    network byte order."""
    try:
        return _IPV4.pack(src, dst)
    except struct.error as exc:
        raise ValueError(f"not an IPv4 address pair: {exc}") from None


def rss_input_ipv4_ports(src: int, dst: int, sport: int, dport: int) -> bytes:
    """The 12-byte hash input of a TCP or UDP packet over IPv4: source address, destination
    address, source port, destination port, network byte order."""
    try:
        return _IPV4_PORTS.pack(src, dst, sport, dport)
    except struct.error as exc:
        raise ValueError(f"not an IPv4 4-tuple: {exc}") from None


def rss_input_ipv6(src: int, dst: int) -> bytes:
    """The 32-byte hash input of an IPv6 packet without ports (or a fragment): source then
    destination address, network byte order."""
    if not (0 <= src < 2**128 and 0 <= dst < 2**128):
        raise ValueError("not an IPv6 address pair")
    return _IPV6.pack(src >> 64, src & _MASK64, dst >> 64, dst & _MASK64)


def rss_input_ipv6_ports(src: int, dst: int, sport: int, dport: int) -> bytes:
    """The 36-byte hash input of a TCP or UDP packet over IPv6: source address, destination
    address, source port, destination port, network byte order."""
    if not (0 <= src < 2**128 and 0 <= dst < 2**128):
        raise ValueError("not an IPv6 4-tuple")
    try:
        return _IPV6_PORTS.pack(src >> 64, src & _MASK64, dst >> 64, dst & _MASK64, sport, dport)
    except struct.error as exc:
        raise ValueError(f"not an IPv6 4-tuple: {exc}") from None


class Reta:
    """A redirection table: ``size`` entries, each naming one of ``cores`` cores.

    A packet goes to ``entries[hash & (size - 1)]``: like a NIC (Intel's 82599 indexes its
    128-entry table with the seven least significant bits of the hash) and DPDK
    (``rte_eth_dev_rss_reta_update``: the low bits of the hash index the RETA), so the size is
    a power of two.  The default spreads the entries round-robin, ``i % cores``, as Linux's
    ``ethtool_rxfh_indir_default`` does; assigning ``entries`` installs any other table (to
    weight cores, or drain one), checked here because a bad entry would send packets to a core
    that does not exist.
    """

    __slots__ = ("_cores", "_entries", "_mask", "_size")

    def __init__(self, cores: int, size: int = 128) -> None:
        if size < 1 or size & (size - 1):
            raise ValueError(f"the RETA size must be a power of two, not {size}")
        if not 1 <= cores <= size:
            raise ValueError(f"{cores} cores for a RETA of {size} entries: want 1 to {size}")
        self._cores = cores
        self._size = size
        self._mask = size - 1
        self._entries = [i % cores for i in range(size)]

    @property
    def cores(self) -> int:
        return self._cores

    @property
    def size(self) -> int:
        return self._size

    @property
    def entries(self) -> list[int]:
        """A copy of the table (assign a whole new list to change it)."""
        return list(self._entries)

    @entries.setter
    def entries(self, entries: list[int]) -> None:
        table = list(entries)
        if len(table) != self._size:
            raise ValueError(f"a RETA of {self._size} entries, not {len(table)}")
        for entry in table:
            if type(entry) is not int or not 0 <= entry < self._cores:
                raise ValueError(f"RETA entry {entry!r} is not a core in 0..{self._cores - 1}")
        self._entries = table

    def core_of(self, hash_value: int) -> int:
        """The core for a packet whose RSS hash is ``hash_value`` (its low bits index the table)."""
        return self._entries[hash_value & self._mask]

    def __repr__(self) -> str:
        return f"Reta(cores={self._cores}, size={self._size})"


def flow_core_c(reta: Reta, key: bytes, src: int, dst: int, sport: int, dport: int) -> int:
    """``flow_core`` with the native part: one ``struct.pack`` and the C hash (about 1.7 times
    as fast as the table lookups below: some 0.35 against 0.6 µs per call, measured here)."""
    return reta._entries[toeplitz(key, _IPV4_PORTS.pack(src, dst, sport, dport)) & reta._mask]


def flow_core_tables(reta: Reta, key: bytes, src: int, dst: int, sport: int, dport: int) -> int:
    """``flow_core`` in pure Python: the twin's per-byte tables indexed straight from the
    integers, with no bytes built at all (the hash is linear over XOR: one lookup per byte)."""
    t = toeplitz_tables(key)
    if len(t) < 12:
        raise ValueError("the Toeplitz key needs at least 16 bytes for a 4-tuple")
    hash_value = (
        t[0][src >> 24] ^ t[1][(src >> 16) & 0xFF] ^ t[2][(src >> 8) & 0xFF] ^ t[3][src & 0xFF]
        ^ t[4][dst >> 24] ^ t[5][(dst >> 16) & 0xFF] ^ t[6][(dst >> 8) & 0xFF] ^ t[7][dst & 0xFF]
        ^ t[8][sport >> 8] ^ t[9][sport & 0xFF] ^ t[10][dport >> 8] ^ t[11][dport & 0xFF]
    )  # fmt: skip
    return reta._entries[hash_value & reta._mask]


#: ``flow_core(reta, key, src, dst, sport, dport) -> core``: the core that owns the TCP/UDP flow
#: of a packet arriving from ``src:sport`` to ``dst:dport`` (``src`` is the remote peer), i.e.
#: ``reta.core_of(toeplitz_hash(key, rss_input_ipv4_ports(src, dst, sport, dport)))`` without
#: the helper calls: the per-packet path of the dispatching core.
flow_core = flow_core_c if NATIVE else flow_core_tables
