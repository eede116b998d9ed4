"""IPv6's counters (``ip6``, ``icmp6``, ``nd6``), kept beside IPv4's until ``StackStatistics``
grows the IPv6 layers (``core.ip6.statistics()`` snapshots them meanwhile; UDP over IPv6 counts
in the UDP layer's own counters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ._drops import Icmp6Drop, Ip6Drop, Nd6Drop, registered
from ._stats import _Counters, _IcmpCounters, _IpCounters

__all__ = ["Icmp6Stats", "Ip6Stats", "Nd6Stats"]


@dataclass(slots=True)
class Ip6Stats(_IpCounters):
    layer: ClassVar[str] = "ip6"
    reasons: ClassVar[frozenset[str]] = registered(Ip6Drop)


@dataclass(slots=True)
class Icmp6Stats(_IcmpCounters):
    """ICMP's counters and ICMPv6's own (after ``dropped`` in the fields, in the same order in
    :meth:`snapshot`, which leaves ``dropped`` out of the counters)."""

    layer: ClassVar[str] = "icmp6"
    reasons: ClassVar[frozenset[str]] = registered(Icmp6Drop)
    packet_too_big_received: int = 0
    nd_received: int = 0  # handed to nd6_input


@dataclass(slots=True)
class Nd6Stats(_Counters):
    layer: ClassVar[str] = "nd6"
    reasons: ClassVar[frozenset[str]] = registered(Nd6Drop)
    received: int = 0
    solicitations_received: int = 0
    advertisements_received: int = 0
    router_advertisements_received: int = 0
    solicitations_sent: int = 0
    advertisements_sent: int = 0
    router_solicitations_sent: int = 0
    entries_learned: int = 0
    held: int = 0  # packets queued waiting for resolution
    resolution_failures: int = 0
    dad_started: int = 0
    dad_succeeded: int = 0
    mld_reports_sent: int = 0  # MLDv2 listener reports (RFC 3810) for our groups
    mld_queries_received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
