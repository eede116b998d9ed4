"""Counters per layer, like ``netstat -s``: received, delivered, sent, and dropped by reason.

Each layer owns a mutable counter object (plain attributes: an increment is one attribute
store on the hot path) and ``dropped``, a dict from reason to count, whose keys are the reasons
registered for the layer in ``_drops.py`` (the ``reason`` of a
:class:`~trio_yastack.stack.wire.WireError` among them).
``snapshot()`` copies them into frozen values for ``statistics()``.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

from ._drops import ArpDrop, EtherDrop, IcmpDrop, IpDrop, TcpDrop, UdpDrop, registered

__all__ = [
    "ArpStats",
    "EtherStats",
    "IcmpStats",
    "IpStats",
    "LayerStatistics",
    "StackStatistics",
    "TcpStats",
    "UdpStats",
]


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """A frozen snapshot of one layer's counters; ``dropped`` maps reason -> count."""

    layer: str
    counters: MappingProxyType[str, int]
    dropped: MappingProxyType[str, int]

    def __getattr__(self, name: str) -> int:
        try:
            return self.counters[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def format(self) -> str:
        lines = [f"{self.layer}:"]
        lines += [f"\t{value} {name.replace('_', ' ')}" for name, value in self.counters.items()]
        lines += [
            f"\t{value} dropped: {reason.replace('_', ' ')}" for reason, value in sorted(self.dropped.items())
        ]
        return "\n".join(lines)


class _Counters:
    """Base for the mutable per-layer counters: ``layer`` names the layer, ``reasons`` is its
    drop registry (``_drops.py``)."""

    __slots__ = ()
    layer: ClassVar[str] = ""
    reasons: ClassVar[frozenset[str]] = frozenset()
    dropped: dict[str, int]
    #: set by @dataclass on every subclass; declared so that ``fields(self)`` type-checks here
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def drop(self, reason: str) -> None:
        """Count one frame dropped for ``reason``, one of the layer's registered reasons.

        A repeated reason costs one dict update; the first of each is checked against the
        registry, so a reason nobody registered raises instead of starting a new counter.
        """
        dropped = self.dropped
        try:
            dropped[reason] += 1
        except KeyError:
            if reason not in self.reasons:
                raise ValueError(f"{reason!r} is not a registered {self.layer} drop reason") from None
            dropped[reason] = 1

    def snapshot(self) -> LayerStatistics:
        counters = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dropped"}
        return LayerStatistics(self.layer, MappingProxyType(counters), MappingProxyType(dict(self.dropped)))


@dataclass(slots=True)
class EtherStats(_Counters):
    layer: ClassVar[str] = "ether"
    reasons: ClassVar[frozenset[str]] = registered(EtherDrop)
    received: int = 0
    sent: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ArpStats(_Counters):
    layer: ClassVar[str] = "arp"
    reasons: ClassVar[frozenset[str]] = registered(ArpDrop)
    received: int = 0
    requests_received: int = 0
    replies_received: int = 0
    requests_sent: int = 0
    replies_sent: int = 0
    entries_learned: int = 0
    held: int = 0  # packets queued waiting for resolution
    resolution_failures: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _IpCounters(_Counters):
    """IP's counter table, the same for IPv4 (:class:`IpStats`) and IPv6 (``Ip6Stats``): one list of
    fields, so the two ``netstat -s`` sections cannot drift apart.  The fields are slots of this
    base; a subclass only names its layer and drop registry (same attribute cost on the hot path)."""

    received: int = 0
    delivered: int = 0
    sent: int = 0
    fragments_received: int = 0
    reassembled: int = 0
    fragmented: int = 0  # datagrams fragmented on output
    fragments_created: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class IpStats(_IpCounters):
    layer: ClassVar[str] = "ip"
    reasons: ClassVar[frozenset[str]] = registered(IpDrop)


@dataclass(slots=True)
class _IcmpCounters(_Counters):
    """ICMP's counter table shared by ICMPv4 (:class:`IcmpStats`) and ICMPv6 (``Icmp6Stats``, which
    adds its own after these)."""

    received: int = 0
    echo_requests_received: int = 0
    echo_replies_sent: int = 0
    echo_requests_sent: int = 0
    echo_replies_received: int = 0
    errors_received: int = 0
    errors_delivered: int = 0
    errors_sent: int = 0
    errors_rate_limited: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class IcmpStats(_IcmpCounters):
    layer: ClassVar[str] = "icmp"
    reasons: ClassVar[frozenset[str]] = registered(IcmpDrop)


@dataclass(slots=True)
class UdpStats(_Counters):
    layer: ClassVar[str] = "udp"
    reasons: ClassVar[frozenset[str]] = registered(UdpDrop)
    received: int = 0
    delivered: int = 0
    sent: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class TcpStats(_Counters):
    layer: ClassVar[str] = "tcp"
    reasons: ClassVar[frozenset[str]] = registered(TcpDrop)
    segments_received: int = 0
    segments_sent: int = 0
    bytes_received: int = 0  # in-order payload delivered to receive buffers
    bytes_sent: int = 0  # payload in segments sent, retransmissions included
    retransmitted_segments: int = 0
    retransmitted_bytes: int = 0
    rto_timeouts: int = 0
    fast_retransmits: int = 0
    sack_recovery_episodes: int = 0
    recovery_episodes: int = 0  # fast recoveries begun by SACK (RACK or RFC 6675) or dup ACKs
    rack_retransmits: int = 0  # segments sent again because RACK found them lost by time
    tlp_probes: int = 0  # tail loss probes sent (RFC 8985 7)
    tlp_retransmits: int = 0  # ... of which were the last segment sent again
    tlp_loss_recoveries: int = 0  # probes that repaired a real loss: cwnd reduced (RFC 8985 7.4)
    recovery_probes: int = 0  # probes in recovery: the newest retransmission's last segment again
    rto_retransmits: int = 0  # segments sent again because of a retransmission timeout
    lost_retransmits: int = 0  # retransmissions RACK found lost in their turn
    spurious_rto_undos: int = 0  # timeouts F-RTO (RFC 5682) found spurious and undid
    duplicate_acks: int = 0
    out_of_order_segments: int = 0
    duplicate_segments: int = 0
    challenge_acks_sent: int = 0
    resets_sent: int = 0
    resets_received: int = 0
    active_opens: int = 0
    passive_opens: int = 0
    connections_established: int = 0
    connections_accepted: int = 0
    connections_dropped: int = 0  # aborted by timeout or reset
    connections_closed: int = 0
    syncookies_sent: int = 0
    syncookies_valid: int = 0
    syncookies_failed: int = 0
    window_probes: int = 0
    keepalive_probes: int = 0
    delayed_acks: int = 0
    time_wait_recycled: int = 0
    autocorked: int = 0  # short tails held behind a frame in the outbox or for a waiting writer (autocorking)
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StackStatistics:
    """A snapshot of every layer's counters of one stack instance."""

    ether: LayerStatistics
    arp: LayerStatistics
    ip: LayerStatistics
    icmp: LayerStatistics
    udp: LayerStatistics
    tcp: LayerStatistics

    def format(self) -> str:
        """The counters as ``netstat -s`` prints them."""
        return "\n".join(
            layer.format() for layer in (self.ether, self.arp, self.ip, self.icmp, self.udp, self.tcp)
        )

    def as_dict(self) -> dict[str, dict[str, dict[str, int]]]:
        """Plain dictionaries (JSON, pickling between processes)."""
        return {
            layer.layer: {"counters": dict(layer.counters), "dropped": dict(layer.dropped)}
            for layer in (self.ether, self.arp, self.ip, self.icmp, self.udp, self.tcp)
        }

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, dict[str, int]]]) -> StackStatistics:
        """The inverse of :meth:`as_dict`."""
        return cls(
            *(
                LayerStatistics(
                    name,
                    MappingProxyType(dict(data[name]["counters"])),
                    MappingProxyType(dict(data[name]["dropped"])),
                )
                for name in ("ether", "arp", "ip", "icmp", "udp", "tcp")
            )
        )

    @classmethod
    def merged(cls, per_core: list[StackStatistics]) -> StackStatistics:
        """The sum of several cores' statistics: the whole server's counters."""
        if not per_core:
            raise ValueError("no statistics to merge")
        layers = []
        for name in ("ether", "arp", "ip", "icmp", "udp", "tcp"):
            counters: dict[str, int] = {}
            dropped: dict[str, int] = {}
            for stats in per_core:
                layer = getattr(stats, name)
                for key, value in layer.counters.items():
                    counters[key] = counters.get(key, 0) + value
                for key, value in layer.dropped.items():
                    dropped[key] = dropped.get(key, 0) + value
            label = getattr(per_core[0], name).layer
            layers.append(LayerStatistics(label, MappingProxyType(counters), MappingProxyType(dropped)))
        return cls(*layers)
