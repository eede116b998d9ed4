"""IPv4 reassembly (RFC 791 section 3.2, RFC 815 hole accounting, hardened as modern kernels are).

Bounds: datagrams in progress, fragments per datagram, bytes held overall (oldest datagrams are
evicted first), and a timeout.  A fragment that partly overlaps one already held discards the
whole datagram (the defence against overlap attacks that Linux adopted in 2018, and RFC 5722
mandates for IPv6); an exact duplicate, which a lossy network really produces, is just dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._config import IpConfig
from ._drops import IpDrop

if TYPE_CHECKING:
    from ._stats import IpStats
    from ._stats6 import Ip6Stats
    from ._timers import Timer, TimerQueue

__all__ = ["Reassembler"]

MAX_DATAGRAM = 65535
ReassemblyKey = tuple[int, int, int, int]  # (src, dst, protocol, ident)


class _Datagram:
    __slots__ = ("bytes_held", "first_header", "fragments", "timer", "total_len")

    def __init__(self) -> None:
        self.fragments: list[tuple[int, int, bytes]] = []  # (start, end, data), unsorted
        self.total_len = -1  # known once the last fragment (MF clear) arrives
        self.bytes_held = 0
        self.first_header: bytes | None = None  # IP header + 8 bytes of the offset-0 fragment
        self.timer: Timer | None = None


class Reassembler:
    """Holds fragments until a datagram is whole (IPv4's, and IPv6's with ``Ip6Stats``: the
    reasons are the same strings in both registries).  ``on_timeout(now, key, first_header)`` is
    called for datagrams that time out (for ICMP time exceeded, code 1)."""

    __slots__ = ("_bytes_held", "_datagrams", "_on_timeout", "_timers", "config", "header_len", "stats")

    def __init__(
        self,
        config: IpConfig,
        stats: IpStats | Ip6Stats,
        timers: TimerQueue,
        on_timeout: Callable[[float, ReassemblyKey, bytes], None],
        header_len: int = 20,
    ) -> None:
        self.config = config
        #: what the length field counts beyond the reassembled payload: IPv4's total length counts
        #: its 20-byte header; IPv6's payload length counts no fixed header (0)
        self.header_len = header_len
        self.stats = stats
        self._timers = timers
        self._on_timeout = on_timeout
        self._datagrams: dict[ReassemblyKey, _Datagram] = {}
        self._bytes_held = 0

    @property
    def bytes_held(self) -> int:
        return self._bytes_held

    def __len__(self) -> int:
        return len(self._datagrams)

    def add(
        self, key: ReassemblyKey, start: int, data: bytes, more: bool, header: bytes, now: float
    ) -> bytes | None:
        """Take one fragment (``data`` at byte ``start``); return the whole payload when complete."""
        stats = self.stats
        stats.fragments_received += 1
        length = len(data)
        end = start + length
        if length == 0 or (more and length % 8):
            stats.drop(IpDrop.BAD_FRAGMENT)  # every fragment but the last carries a multiple of 8
            return None
        if end + self.header_len > MAX_DATAGRAM:
            stats.drop(IpDrop.FRAGMENT_TOO_LARGE)  # would reassemble beyond 65535 bytes
            return None
        datagram = self._datagrams.get(key)
        if datagram is None:
            if length > self.config.reassembly_memory_limit:
                stats.drop(IpDrop.REASSEMBLY_MEMORY)
                return None
            while len(self._datagrams) >= self.config.reassembly_max_datagrams:
                self._discard(next(iter(self._datagrams)), IpDrop.REASSEMBLY_EVICTED)
            datagram = self._datagrams[key] = _Datagram()
            datagram.timer = self._timers.schedule(now + self.config.reassembly_timeout, self._expire, key)
        for held_start, held_end, _ in datagram.fragments:
            if start < held_end and held_start < end:
                if held_start == start and held_end == end:
                    stats.drop(IpDrop.DUPLICATE_FRAGMENT)
                    return None
                self._discard(key, IpDrop.OVERLAPPING_FRAGMENT)
                return None
        if not more:
            if datagram.total_len >= 0 and datagram.total_len != end:
                self._discard(key, IpDrop.BAD_FRAGMENT)
                return None
            datagram.total_len = end
        if datagram.total_len >= 0 and any(e > datagram.total_len for _, e, _ in datagram.fragments):
            self._discard(key, IpDrop.BAD_FRAGMENT)
            return None
        if datagram.total_len >= 0 and end > datagram.total_len:
            self._discard(key, IpDrop.BAD_FRAGMENT)
            return None
        if len(datagram.fragments) >= self.config.reassembly_max_fragments:
            self._discard(key, IpDrop.TOO_MANY_FRAGMENTS)
            return None
        while self._bytes_held + length > self.config.reassembly_memory_limit and self._datagrams:
            oldest = next(iter(self._datagrams))
            self._discard(oldest, IpDrop.REASSEMBLY_MEMORY)
            if oldest == key:
                return None
        datagram.fragments.append((start, end, data))
        datagram.bytes_held += length
        self._bytes_held += length
        if start == 0:
            datagram.first_header = header
        if datagram.total_len < 0 or datagram.bytes_held != datagram.total_len:
            return None
        # No overlaps are ever held, so held bytes == total length means no holes are left.
        del self._datagrams[key]
        self._bytes_held -= datagram.bytes_held
        self._timers.cancel(datagram.timer)
        datagram.fragments.sort()
        stats.reassembled += 1
        return b"".join(fragment for _, _, fragment in datagram.fragments)

    def _discard(self, key: ReassemblyKey, reason: str) -> None:
        datagram = self._datagrams.pop(key)
        self._bytes_held -= datagram.bytes_held
        self._timers.cancel(datagram.timer)
        self.stats.drop(reason)

    def _expire(self, now: float, key: ReassemblyKey) -> None:
        datagram = self._datagrams.get(key)
        if datagram is None:
            return
        datagram.timer = None
        self._discard(key, IpDrop.REASSEMBLY_TIMEOUT)
        if datagram.first_header is not None:
            self._on_timeout(now, key, datagram.first_header)
