"""TCP builders and matchers for the stack tests, on top of ``helpers.py``.

A TCP test drives one :class:`StackCore` with hand-made frames and reads back what it sends::

    core = tcp_core(delayed_ack=0.2)              # a seeded core that knows the peer's MAC
    conn, peer = open_active(core)                # our SYN, the peer's SYN-ACK, our ACK
    [ack] = peer.send(ACK, b"x" * 100, now=T0 + 1)
    check_tcp(ack, flags=ACK, ack=peer.snd_nxt)

:class:`Peer` is the remote end, scripted by the test: it keeps its own 32-bit sequence numbers
(its ISN is just below 2**32 so every connection crosses the wrap), echoes our timestamps and
follows our in-order data, but never decides anything by itself -- each segment it sends is one
the test asked for.  ``check_tcp`` is the matcher in the style of ``check_ipv4``: it names the
field that differs and returns the parsed :class:`TcpRepr`.

Sequence arithmetic in tests uses :func:`seq_add` (modulo 2**32): the values compared are
always the 32-bit wire values.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from helpers import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, build_ipv4_frame, check_ipv4, make_core

from trio_yastack.stack import StackCore, TcpConfig, TcpConnection, TcpLayer, TcpListener
from trio_yastack.stack.wire import IPPROTO_TCP, TcpOptions, TcpRepr
from trio_yastack.stack.wire._checksum import pseudo_header_sum, sum16
from trio_yastack.stack.wire.tcp import (
    TCP_ACK,
    TCP_FIN,
    TCP_HEADER,
    TCP_HEADER_LEN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)

__all__ = [
    "ACK",
    "FIN",
    "OUR_ISS",
    "OUR_PORT",
    "PEER_ISN",
    "PEER_PORT",
    "PEER_TS0",
    "PSH",
    "RST",
    "SYN",
    "T0",
    "Peer",
    "build_tcp_frame",
    "check_tcp",
    "fix_iss",
    "flag_names",
    "open_active",
    "open_passive",
    "seq_add",
    "tcp_bytes",
    "tcp_core",
    "tcp_drops",
    "tcp_segments",
]

FIN, SYN, RST, PSH, ACK = TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK

OUR_PORT = 8080
PEER_PORT = 40000
#: our initial sequence number (see :func:`fix_iss`): 255 bytes of data reach the wrap
OUR_ISS = 0xFFFF_FF00
#: the peer's: its 16th byte of data is numbered 0
PEER_ISN = 0xFFFF_FFF0
#: the peer's timestamp clock starts just below 2**32 too (RFC 7323 PAWS compares modulo 2**32)
PEER_TS0 = 0xFFFF_FFF0
#: where the tests' clock starts: an arbitrary origin like trio's real clock (not 0)
T0 = 100.0

_MASK = 0xFFFF_FFFF
_FLAG_NAMES = ((TCP_SYN, "SYN"), (TCP_FIN, "FIN"), (TCP_RST, "RST"), (TCP_PSH, "PSH"), (TCP_ACK, "ACK"))


def seq_add(seq: int, n: int) -> int:
    """``seq + n`` modulo 2**32."""
    return (seq + n) & _MASK


def flag_names(flags: int) -> str:
    """``SYN|ACK`` for a flags byte (for messages)."""
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    other = flags & ~(TCP_SYN | TCP_FIN | TCP_RST | TCP_PSH | TCP_ACK) & 0xFF
    if other:
        names.append(hex(other))
    return "|".join(names) or "none"


# -- a stack instance ----------------------------------------------------------------------------


def tcp_core(*, seed: int = 0, mtu: int = 1500, now: float = T0, **tcp: Any) -> StackCore:
    """A seeded :class:`StackCore` whose ``TcpConfig`` has the fields ``tcp``, with the peer's MAC
    already in the ARP cache (learned at ``now``) so that segments go straight out."""
    core = make_core(seed=seed, mtu=mtu, tcp=TcpConfig(**tcp))
    core.arp._learn(int(PEER_IP), bytes(PEER_MAC), now)
    return core


def fix_iss(monkeypatch: Any, iss: int = OUR_ISS) -> None:
    """Make every connection's ISN ``iss``.  ``TcpLayer`` has ``__slots__``, so the method is
    patched on the class (``monkeypatch`` undoes it after the test)."""
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: iss)


def tcp_drops(core: StackCore) -> dict[str, int]:
    """TCP's drop counters that are not zero."""
    return {reason: value for reason, value in core.statistics().tcp.dropped.items() if value}


# -- builders ----------------------------------------------------------------------------------


def tcp_bytes(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    window: int = 0xFFFF,
    options: TcpOptions | bytes | None = None,
    payload: bytes = b"",
    urgent: int = 0,
    src_ip: Any = PEER_IP,
    dst_ip: Any = OUR_IP,
    checksum: int | None = None,
) -> bytes:
    """A TCP header (``options`` as a :class:`TcpOptions` or raw bytes, zero-padded to 4) and
    payload with a correct checksum, or the given ``checksum``."""
    option_bytes = options.to_bytes() if isinstance(options, TcpOptions) else bytes(options or b"")
    option_bytes += bytes(-len(option_bytes) % 4)
    header_len = TCP_HEADER_LEN + len(option_bytes)
    if header_len > 60:
        raise ValueError(f"{len(option_bytes)} option bytes do not fit a TCP header")
    segment = bytearray(header_len + len(payload))
    TCP_HEADER.pack_into(
        segment, 0, sport, dport, seq & _MASK, ack & _MASK, (header_len >> 2) << 4, flags, window, 0, urgent
    )
    segment[TCP_HEADER_LEN:header_len] = option_bytes
    segment[header_len:] = payload
    if checksum is None:
        pseudo = pseudo_header_sum(int(_addr(src_ip)), int(_addr(dst_ip)), IPPROTO_TCP, len(segment))
        checksum = ~sum16(segment, 0, len(segment), pseudo) & 0xFFFF
    segment[16:18] = checksum.to_bytes(2, "big")
    return bytes(segment)


def _addr(value: Any) -> IPv4Address:
    return value if isinstance(value, IPv4Address) else IPv4Address(value)


def build_tcp_frame(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    window: int = 0xFFFF,
    options: TcpOptions | bytes | None = None,
    payload: bytes = b"",
    src_ip: Any = PEER_IP,
    dst_ip: Any = OUR_IP,
    src_mac: Any = PEER_MAC,
    dst_mac: Any = OUR_MAC,
    checksum: int | None = None,
    **ip: Any,
) -> bytes:
    """A TCP segment in IPv4 in Ethernet, from the peer to us by default; ``ip`` goes to
    :func:`build_ipv4_frame`."""
    segment = tcp_bytes(
        sport, dport, seq, ack, flags, window=window, options=options, payload=payload,
        src_ip=src_ip, dst_ip=dst_ip, checksum=checksum,
    )  # fmt: skip
    return build_ipv4_frame(src_mac, dst_mac, src_ip, dst_ip, IPPROTO_TCP, segment, **ip)


# -- matchers ----------------------------------------------------------------------------------


def tcp_segments(frames: list[bytes], *, dst: Any = PEER_IP) -> list[TcpRepr]:
    """Every frame as a TCP segment from us to ``dst`` with valid IPv4 and TCP checksums."""
    segments = []
    for frame in frames:
        ip = check_ipv4(frame, eth_src=OUR_MAC, src=OUR_IP, dst=dst, protocol=IPPROTO_TCP)
        start = 14 + ip.header_len
        segments.append(TcpRepr.parse(frame, ip.src, ip.dst, start, start + ip.payload_len))
    return segments


def _expect(what: str, actual: Any, expected: Any) -> None:
    if expected is not None and actual != expected:
        raise AssertionError(f"{what}: got {actual!r}, expected {expected!r}")


def check_tcp(
    segment: TcpRepr | bytes,
    *,
    sport: int | None = OUR_PORT,
    dport: int | None = PEER_PORT,
    flags: int | None = None,
    seq: int | None = None,
    ack: int | None = None,
    window: int | None = None,
    payload: bytes | None = None,
    payload_len: int | None = None,
    options: TcpOptions | None = None,
    mss: int | None = None,
    window_scale: int | None = None,
    sack_permitted: bool | None = None,
    sack_blocks: tuple[tuple[int, int], ...] | None = None,
    has_timestamps: bool | None = None,
    tsecr: int | None = None,
) -> TcpRepr:
    """A segment (parsed, or a frame) with the given fields; ``flags`` is compared exactly."""
    if isinstance(segment, bytes | bytearray):
        [segment] = tcp_segments([bytes(segment)])
    _expect("tcp sport", segment.src_port, sport)
    _expect("tcp dport", segment.dst_port, dport)
    if flags is not None and segment.flags != flags:
        raise AssertionError(f"tcp flags: got {flag_names(segment.flags)}, expected {flag_names(flags)}")
    _expect("tcp seq", hex(segment.seq), None if seq is None else hex(seq & _MASK))
    _expect("tcp ack", hex(segment.ack), None if ack is None else hex(ack & _MASK))
    _expect("tcp window", segment.window, window)
    _expect("tcp payload", segment.payload, payload)
    _expect("tcp payload length", len(segment.payload), payload_len)
    _expect("tcp options", segment.options, options)
    opts = segment.options
    _expect("tcp mss option", opts.mss, mss)
    _expect("tcp window scale option", opts.window_scale, window_scale)
    _expect("tcp sack-permitted option", opts.sack_permitted, sack_permitted)
    if sack_blocks is not None:
        _expect("tcp sack blocks", opts.sack_blocks, tuple((a & _MASK, b & _MASK) for a, b in sack_blocks))
    _expect("tcp timestamps present", opts.timestamps is not None, has_timestamps)
    if tsecr is not None:
        _expect("tcp timestamps", opts.timestamps is not None, True)
        _expect("tcp tsecr", opts.timestamps[1], tsecr)  # type: ignore[index]
    return segment


# -- the remote end ----------------------------------------------------------------------------


class Peer:
    """The other end of one connection, scripted by the test.

    ``snd_nxt`` is the sequence number of the peer's next segment and ``rcv_nxt`` what it
    acknowledges; both are 32-bit.  :meth:`send` builds a segment from them (any field can be
    overridden), feeds it to the core and returns what the core sent back; sequence space is
    consumed only when ``seq`` is not given.  :meth:`receive` takes the core's outbox: a segment
    starting at ``rcv_nxt`` moves it on (a simple in-order receiver), our TSval is remembered
    to be echoed.  With ``ts`` the peer's segments carry timestamps from a clock in ms that
    starts at ``ts0`` at ``T0``.
    """

    def __init__(
        self,
        core: StackCore,
        *,
        port: int = PEER_PORT,
        our_port: int = OUR_PORT,
        isn: int = PEER_ISN,
        mss: int | None = 1460,
        wscale: int | None = 7,
        sack: bool = True,
        ts: bool = True,
        ts0: int = PEER_TS0,
        window: int = 0xFFFF,
    ) -> None:
        self.core = core
        self.port = port
        self.our_port = our_port
        self.isn = isn & _MASK
        self.snd_nxt = self.isn
        self.rcv_nxt = 0
        self.mss = mss
        self.wscale = wscale
        self.sack = sack
        self.ts = ts
        self.ts0 = ts0
        self.ts_recent = 0
        self.window = window
        self.received: list[TcpRepr] = []

    def tsval(self, now: float) -> int:
        return (self.ts0 + round((now - T0) * 1000)) & _MASK

    def syn_options(self, now: float) -> TcpOptions:
        """What a Linux peer's SYN (or SYN-ACK) carries."""
        return TcpOptions(
            mss=self.mss,
            window_scale=self.wscale,
            sack_permitted=self.sack,
            timestamps=(self.tsval(now), self.ts_recent) if self.ts else None,
        )

    def options(self, now: float, sack_blocks: tuple[tuple[int, int], ...] = ()) -> TcpOptions:
        """The options of a segment after the handshake: timestamps, and SACK blocks if given."""
        return TcpOptions(
            timestamps=(self.tsval(now), self.ts_recent) if self.ts else None,
            sack_blocks=tuple((a & _MASK, b & _MASK) for a, b in sack_blocks),
        )

    def frame(
        self,
        flags: int,
        payload: bytes = b"",
        *,
        now: float,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        options: TcpOptions | bytes | None = None,
        sack_blocks: tuple[tuple[int, int], ...] = (),
        checksum: int | None = None,
        sport: int | None = None,
        dport: int | None = None,
    ) -> bytes:
        """The frame :meth:`send` would feed (nothing is consumed)."""
        if options is None:
            if flags & TCP_SYN:
                options = self.syn_options(now)
            elif flags & TCP_RST:
                options = TcpOptions()
            else:
                options = self.options(now, sack_blocks)
        return build_tcp_frame(
            self.port if sport is None else sport,
            self.our_port if dport is None else dport,
            self.snd_nxt if seq is None else seq,
            (self.rcv_nxt if flags & TCP_ACK else 0) if ack is None else ack,
            flags,
            window=self.window if window is None else window,
            options=options,
            payload=payload,
            checksum=checksum,
        )

    def send(self, flags: int = TCP_ACK, payload: bytes = b"", *, now: float, **fields: Any) -> list[TcpRepr]:
        """Feed one segment to the core at ``now``; return the segments the core sent."""
        frame = self.frame(flags, payload, now=now, **fields)
        if fields.get("seq") is None:
            self.snd_nxt = seq_add(
                self.snd_nxt, len(payload) + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
            )
        self.core.ether_input(frame, now)
        return self.receive()

    def receive(self) -> list[TcpRepr]:
        """The segments in the core's outbox (all must be TCP to us)."""
        segments = tcp_segments(self.core.take_outbox())
        for seg in segments:
            if seg.options.timestamps is not None:
                self.ts_recent = seg.options.timestamps[0]
            if seg.flags & TCP_SYN:
                self.rcv_nxt = seq_add(seg.seq, 1 + len(seg.payload))
            elif seg.seq == self.rcv_nxt and not seg.flags & TCP_RST:
                self.rcv_nxt = seq_add(self.rcv_nxt, len(seg.payload) + (1 if seg.flags & TCP_FIN else 0))
        self.received += segments
        return segments

    def run_timers(self, now: float) -> list[TcpRepr]:
        """Fire the core's timers due at ``now``; return the segments they sent."""
        self.core.run_timers(now)
        return self.receive()


def open_active(
    core: StackCore, now: float = T0, *, rtt: float = 0.05, synack_window: int = 0xFFFF, **peer: Any
) -> tuple[TcpConnection, Peer]:
    """``connect`` from ``OUR_PORT``, the peer's SYN-ACK ``rtt`` later, our ACK: an ESTABLISHED
    connection with the outbox empty.  ``peer`` goes to :class:`Peer`."""
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, now, local_port=OUR_PORT)
    p = Peer(core, **peer)
    [syn] = p.receive()
    assert syn.flags == TCP_SYN, flag_names(syn.flags)
    [ack] = p.send(TCP_SYN | TCP_ACK, now=now + rtt, window=synack_window)
    check_tcp(ack, flags=TCP_ACK, seq=seq_add(syn.seq, 1), ack=p.snd_nxt)
    assert conn.state == 4, conn  # ESTABLISHED
    return conn, p


def open_passive(
    core: StackCore, now: float = T0, *, rtt: float = 0.05, backlog: int = 128, **peer: Any
) -> tuple[TcpListener, TcpConnection, Peer]:
    """``listen`` on ``OUR_PORT``, the peer's SYN, our SYN-ACK, its ACK and ``accept``."""
    listener = core.tcp.listen(OUR_PORT, backlog)
    p = Peer(core, **peer)
    [synack] = p.send(TCP_SYN, now=now)
    assert synack.flags == TCP_SYN | TCP_ACK, flag_names(synack.flags)
    assert p.send(TCP_ACK, now=now + rtt) == []
    conn = listener.accept()
    assert conn is not None and conn.state == 4, conn
    return listener, conn, p
