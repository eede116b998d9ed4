"""What a journey is: the layers its hops name, the journeys a trace can follow, one frame's
record of its way through a core, and how that record reads (a tree of hops, a frame in one line,
a frame's headers at a breakpoint).

Plain data and pure functions: the tracer (``_tracer``) makes these, the control channel sends
them as JSON (``Journey.as_dict``), and its clients print them (``format_journey``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, NamedTuple

from trio_yastack.stack.wire import describe_frame

from ._filter import PROTO_TCP, PacketFilter, PacketInfo, packet_info

__all__ = [
    "ALL_LAYERS",
    "BREAK_SETS",
    "JOURNEYS",
    "CaptureSubscription",
    "Hop",
    "Journey",
    "JourneyPreset",
    "TcpSegment",
    "TraceSubscription",
    "format_journey",
    "frame_summary",
    "parse_headers",
]

IN_LAYERS = (
    "rx_burst", "dispatch", "ring_enqueue", "ring_dequeue", "ether_input", "arp_input", "ip_input",
    "icmp_input", "udp_input", "tcp_input", "sbappend", "accept", "recv",
)  # fmt: skip
OUT_LAYERS = ("send", "tcp_output", "ip_output", "arpresolve", "ether_output", "tx_burst")
TLS_LAYERS = ("tls_handshake", "tls_read", "tls_write")
#: every layer a trace point or a breakpoint may name (``app`` is where a journey ends)
ALL_LAYERS = (*IN_LAYERS, *OUT_LAYERS, *TLS_LAYERS, "app")


@dataclass(frozen=True, slots=True)
class JourneyPreset:
    """Which journeys a trace follows: a direction (or both) and whether only TLS ones."""

    name: str
    directions: frozenset[str]
    tls_only: bool = False


#: the three journeys of YAStack's gdb macros (a packet in, a packet out, a packet with TLS)
JOURNEYS = {
    "in": JourneyPreset("in", frozenset({"in"})),
    "out": JourneyPreset("out", frozenset({"out"})),
    "tls": JourneyPreset("tls", frozenset({"in", "out"}), tls_only=True),
    "all": JourneyPreset("all", frozenset({"in", "out"})),
}
#: what ``--journey NAME --break`` stops at: the macros' whole breakpoint set
BREAK_SETS = {
    "in": frozenset(IN_LAYERS),
    "out": frozenset(OUT_LAYERS),
    "tls": frozenset({*TLS_LAYERS, "tcp_input", "tcp_output"}),
    "all": frozenset(ALL_LAYERS) - {"app"},
}


# -- journeys ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Hop:
    """A layer a journey reached: when (``time.perf_counter``), on which core, what happened."""

    layer: str
    at: float
    core: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "at": self.at, "core": self.core, "note": self.note}


@dataclass(slots=True, eq=False)
class Journey:
    """One frame's way through one core (and, by ``key``, its continuation on another)."""

    ident: str
    direction: str
    core: int
    info: PacketInfo
    hops: list[Hop] = field(default_factory=list)
    summary: str = ""
    key: str = ""  # CRC-32 of the frame: the same on the core that sent it through a ring
    breakable: bool = False
    tls: bool = False
    waiting: int = 0  # reasons it is not over: bytes unread, a connection not yet accepted
    end: str = ""
    frame: bytes | bytearray | None = None  # while the journey runs (for breakpoints)

    def id_text(self) -> str:
        return f"{self.ident} [{self.key}]" if self.key else self.ident

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "direction": self.direction,
            "core": self.core,
            "summary": self.summary,
            "key": self.key,
            "tls": self.tls,
            "end": self.end,
            "hops": [hop.as_dict() for hop in self.hops],
        }


def format_journey(journey: dict[str, Any]) -> str:
    """A journey (``Journey.as_dict()``) as an indented tree: one hop a line, each under the
    one before, with its time since the first hop, the core it ran on and what it did."""
    hops = journey["hops"]
    cores = sorted({hop["core"] for hop in hops})
    where = f"core {cores[0]}" if len(cores) == 1 else "cores " + ",".join(map(str, cores))
    lines = [f"journey {journey['id']} {journey['direction']} ({where}): {journey['summary']}"]
    start = hops[0]["at"] if hops else 0.0
    for depth, hop in enumerate(hops):
        elapsed = (hop["at"] - start) * 1e6
        label = ("  " * depth + ("└─ " if depth else "") + hop["layer"]).ljust(30)
        note = f"  {hop['note']}" if hop["note"] else ""
        lines.append(f"  {label} {elapsed:+10.1f} us  core {hop['core']}{note}")
    if journey.get("end"):
        lines.append(f"  ({journey['end']})")
    return "\n".join(lines)


_FLAG_LETTERS = "FSRPAUEC"


def _flags(flags: int) -> str:
    return "".join(letter for bit, letter in enumerate(_FLAG_LETTERS) if flags & (1 << bit)) or "."


def frame_summary(frame: bytes | bytearray | memoryview) -> str:
    """One line for a frame.  TCP is read here without checking its checksum (an outgoing
    frame whose checksum the port completes is not wrong); the rest is ``describe_frame``'s."""
    info = packet_info(frame)
    if info.proto == PROTO_TCP and info.flags is not None and not info.ip6:
        offset = 14 if (frame[12] << 8 | frame[13]) == 0x0800 else 18
        l4 = offset + ((frame[offset] & 0x0F) << 2)
        total = int.from_bytes(frame[offset + 2 : offset + 4], "big")
        seq = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
        ack = int.from_bytes(frame[l4 + 8 : l4 + 12], "big")
        payload = offset + total - l4 - ((frame[l4 + 12] >> 4) << 2) if len(frame) >= l4 + 20 else 0
        return (
            f"IP {IPv4Address(info.src)}.{info.sport} > {IPv4Address(info.dst)}.{info.dport}: "
            f"Flags [{_flags(info.flags)}], seq {seq}, ack {ack}, length {max(payload, 0)}"
        )
    return describe_frame(bytes(frame))


def parse_headers(frame: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The headers of a frame as plain fields (what a breakpoint shows); never raises."""
    out: dict[str, Any] = {"length": len(frame)}
    try:
        data = bytes(frame)
        out["ether"] = {
            "dst": data[0:6].hex(":"),
            "src": data[6:12].hex(":"),
            "type": hex(data[12] << 8 | data[13]),
        }
        info = packet_info(data)
        if info.proto is None or info.proto < 0 or info.ip6:
            return out  # (IPv6's headers are not spelled out here yet)
        offset = 14 if (data[12] << 8 | data[13]) == 0x0800 else 18
        ihl = (data[offset] & 0x0F) << 2
        out["ip"] = {
            "src": str(IPv4Address(info.src)),
            "dst": str(IPv4Address(info.dst)),
            "proto": info.proto,
            "ttl": data[offset + 8],
            "id": int.from_bytes(data[offset + 4 : offset + 6], "big"),
            "total_len": int.from_bytes(data[offset + 2 : offset + 4], "big"),
        }
        l4 = offset + ihl
        if info.proto == PROTO_TCP and info.flags is not None and len(data) >= l4 + 20:
            segment = TcpSegment.from_frame(data, l4, offset)
            out["tcp"] = segment._asdict()
        elif info.sport or info.dport:
            out["udp"] = {"sport": info.sport, "dport": info.dport}
    except (IndexError, ValueError):
        out["malformed"] = True
    return out


class TcpSegment(NamedTuple):
    """The fields of a TCP segment, readable at a ``tcp_input`` breakpoint."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: str
    window: int
    header_len: int
    payload_len: int
    payload: bytes  # its first 256 bytes

    @classmethod
    def from_frame(
        cls, data: bytes | bytearray, l4: int, ip_offset: int = -1, end: int | None = None
    ) -> TcpSegment:
        header_len = (data[l4 + 12] >> 4) << 2
        if end is None:
            end = ip_offset + int.from_bytes(data[ip_offset + 2 : ip_offset + 4], "big")
        payload_len = max(end - l4 - header_len, 0)
        return cls(
            int.from_bytes(data[l4 : l4 + 2], "big"),
            int.from_bytes(data[l4 + 2 : l4 + 4], "big"),
            int.from_bytes(data[l4 + 4 : l4 + 8], "big"),
            int.from_bytes(data[l4 + 8 : l4 + 12], "big"),
            _flags(data[l4 + 13]),
            int.from_bytes(data[l4 + 14 : l4 + 16], "big"),
            header_len,
            payload_len,
            bytes(data[l4 + header_len : min(end, l4 + header_len + 256)]),
        )


# -- subscriptions ----------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class TraceSubscription:
    """Someone who wants journeys: a filter, a preset, and where finished journeys go."""

    sink: Callable[[Journey], None]
    filter: PacketFilter | None = None
    preset: JourneyPreset = JOURNEYS["all"]

    def wants(self, info: PacketInfo, direction: str) -> bool:
        return direction in self.preset.directions and (self.filter is None or self.filter.match(info))


@dataclass(slots=True, eq=False)
class CaptureSubscription:
    """Someone who wants frames as the port moves them: ``sink(timestamp, direction, frame)``."""

    sink: Callable[[float, str, bytes], None]
    filter: PacketFilter | None = None
