"""The established-connection fast path: one pass over a whole ``rx_burst`` before the layers.

FreeBSD's header prediction sits at the top of ``tcp_do_segment``, after ``ether_input``,
``ip_input`` and ``tcp_input`` have each parsed and checked their header in turn.  Here the
frames of one burst are first classified together, in one call into C (``native/tcp_fast.c``,
``yas_tcp_fast_classify``) or its pure-Python twin :func:`py_classify_frame`: a frame that header
prediction may take -- an unfragmented IPv4 datagram without options, to our address, carrying a
TCP segment with ACK (and maybe PSH; over IPv4 maybe FIN) and no other flag, no options or the aligned
timestamp option, with valid checksums -- comes back as a *candidate* with its TCP fields; any other frame
*declines* and goes through ``ether_input`` as before.  A UDP datagram ``udp_input`` would take
without a question (same IPv4 checks; a UDP length that fits, a destination port, a valid checksum
or none) comes back as a ``UDP`` record: ``StackCore.ether_input_burst`` queues it on its socket
with ``UdpLayer.udp_fast_input``, the burst's datagrams all in the same one crossing into C.  An
IPv6 frame with no extension header, carrying TCP to one of our usable addresses (the classifier is
handed them, ``StackCore.fast_addresses6``) from a source that is none of ours nor multicast,
loopback or unspecified, with a hop limit and the checksum over the IPv6 pseudo-header valid, and
the same TCP header terms, is a ``CANDIDATE6``, its record naming which usable address of ours it is
for (the index): ``StackCore.ether_input_burst`` keys it by both addresses (``_tcp6.key6``: the
frame's source, ``IP6_KEY``, that address of ours from ``StackCore.fast_keys6``) and hands it to
``_tcp6.predicted_input`` (the prediction ``tcp6_input`` runs).  A UDP datagram over IPv6 on the same
IPv6 terms, with a UDP length that fits the payload, a destination port and a nonzero checksum
(mandatory over IPv6), valid or vouched for by the port, is a ``UDP6`` record, queued by
``UdpLayer.udp6_fast_input`` (ip6_input gives no ND hint for UDP, so neither does the fast path).
Its source is looked up in a :class:`SourceTable6` (the
UDP layer's): the record's ``seq`` is the source's slot and ``src`` the slot + 1 when the table holds
it there, so a known peer's 128-bit source costs a list index, not a conversion per datagram.
Every other IPv6 frame declines and takes the Python path
(``ip6_input`` -> ``tcp6_input`` / ``udp6_input`` / ...).

:func:`fast_input` then takes a candidate for its connection (the 4-tuple demultiplexes it) when
the connection is ESTABLISHED, untraced and carries no loss-recovery state (no SACK scoreboard,
not in recovery, no RTO backoff, no F-RTO episode), and either the connection's own header prediction
(``_input.header_prediction``, the same code the Python path runs) accepts it or
:func:`ack_and_data_input` does: in-order data carrying a new ACK and window updates, handled by
the general path's own functions once the checks they would make are known to pass.  The ACK-advance
bookkeeping (RTT, congestion control, what loss recovery adds) is the Python path's
``_ack_advances``, so the two paths cannot diverge there.  Whatever declines at any step runs
the whole Python path, in the burst's order, so the Python layers stay the reference.  A candidate
for a connection that is not ESTABLISHED (the ACK completing a passive open, ACKs while closing),
and a FIN whatever the state, goes to the general path's ``segment_arrives`` straight from here: the
layers above it would only have repeated the classifier's checks.  A FIN for no connection (one in
TIME_WAIT, say) takes the Python path as any candidate without a connection does.

``TRIO_YASTACK_NO_FASTPATH=1`` (or ``StackCore.fast_path = False``) turns the fast path off.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Sequence
from typing import Any, Protocol

from .._native import native_extension, sum16
from .._offload import VOUCHED, ChecksumVerifiedPacket
from ..wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN
from ._buffers import NO_REASSEMBLY, NO_SACKS
from ._conn import TcpConnection
from ._input import _ack_all
from ._states import CLOSING, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, LAST_ACK, SYN_RECEIVED

__all__ = [
    "CANDIDATE",
    "CANDIDATE6",
    "DECLINE",
    "FAST_PATH_DEFAULT",
    "MAX_IP6",
    "NATIVE_FASTPATH",
    "RECORD",
    "SRC6_SLOTS",
    "UDP",
    "UDP6",
    "Record",
    "SourceTable6",
    "ack_and_data_input",
    "classify_burst",
    "fast_input",
    "native_classify_burst",
    "py_classify_burst",
    "py_classify_frame",
    "py_classify_frame6",
    "py_classify_udp",
    "py_classify_udp6",
    "src6_slot",
]

#: the record ``yas_tcp_fast_classify`` writes per frame (``struct yas_tcp_seg``, 48 bytes):
#: kind, src, sport, dport, seq, ack, flags, window, tsval, tsecr, data_start, end
RECORD = struct.Struct("=IIHHIIHHqqII")
Record = tuple[int, int, int, int, int, int, int, int, int, int, int, int]
DECLINE = 0
CANDIDATE = 1
#: a UDP datagram for ``UdpLayer.udp_fast_input`` (fields: src, sport, dport, payload start, end)
UDP = 2
#: a TCP segment over IPv6 (fields as ``CANDIDATE``'s; the source in the frame's bytes 22..37,
#: ``src`` the index of the destination among the usable addresses: ``StackCore.fast_keys6``)
CANDIDATE6 = 3
#: a UDP datagram over IPv6 for ``UdpLayer.udp6_fast_input`` (as ``UDP``'s, the source in the
#: frame's bytes 22..37; ``seq`` its slot in the :class:`SourceTable6`, ``src`` slot + 1 when there)
UDP6 = 4
#: the slots of a :class:`SourceTable6` (``YAS_FAST_SRC6_SLOTS``)
SRC6_BITS = 12
SRC6_SLOTS = 1 << SRC6_BITS
#: the most IPv6 addresses the classifier compares with (``YAS_FAST_MAX_IP6``)
MAX_IP6 = 64
_MASK = 0xFFFFFFFF
#: bit 31 of a frame length handed to C: the port verified this frame's checksums
VERIFIED = 0x80000000
#: a burst whose first or last frame is this long (a TSO frame) goes to C one frame at a time
#: (module-level so a test can force either way)
ONE_BY_ONE = 16384
#: what ``_tcp_fields`` may take besides ACK(|PSH) (the C ``YAS_FAST_MORE_*``): over IPv4 only
_MORE_FIN = 0x01  # a FIN with its ACK (the flag's own bit)
_MORE_SYN = 0x02  # a SYN alone, with any options
_DECLINED: Record = (DECLINE, 0, 0, 0, 0, 0, 0, 0, -1, -1, 0, 0)
_IPV4_FIXED = struct.Struct("!BBHHHBBHII")
_TCP_FIXED = struct.Struct("!HHIIBBH")
_TS = struct.Struct("!II")
_UDP_FIXED = struct.Struct("!HHHH")
_IPV6_FIXED = struct.Struct("!BxxxHBB")
_TS_ALIGNED = b"\x01\x01\x08\x0a"
_ZERO15 = bytes(15)
#: whether the fast path is on for a new StackCore (the environment can turn it off)
FAST_PATH_DEFAULT = os.environ.get("TRIO_YASTACK_NO_FASTPATH") != "1"

Buffer = bytes | bytearray | memoryview
_native = native_extension()


class SourceTable6:
    """The IPv6 sources of UDP datagrams the classifier has seen, as the socket queue keeps them.

    A direct-mapped table of :data:`SRC6_SLOTS` addresses (``addresses``, 16 bytes a slot, slot
    :func:`src6_slot`) that the classifier compares a ``UDP6`` record's source with, and beside it
    each slot's 128-bit integer (``ints[slot + 1]``): turning a source into an integer
    (``int.from_bytes``, or a dict lookup) cost IPv6 most of its gap to IPv4 per datagram.  An
    empty slot holds ``::``, which the classifier never takes as a source.

    A slot's bytes and integer change together, and only between bursts (:meth:`install`):
    the records of a burst were classified against the table as it was before the burst.
    """

    __slots__ = ("addresses", "handle", "ints", "pending")

    def __init__(self) -> None:
        self.addresses = bytearray(16 * SRC6_SLOTS)
        #: what the C classifier is handed: the same memory, exported once (not once per burst);
        #: a cffi CData, or the bytearray itself without the C part
        self.handle: Any = self.addresses if _native is None else _native[0].from_buffer(self.addresses)
        self.ints: list[int] = [0] * (SRC6_SLOTS + 1)
        #: ``(slot, address, source)`` of datagrams a burst took from sources not in the table,
        #: installed at the burst's end (bounded by the caller)
        self.pending: list[tuple[int, Buffer, int]] = []

    def install(self) -> None:
        """Put the pending sources in their slots (a later one replaces an earlier one)."""
        addresses, ints = self.addresses, self.ints
        for slot, address, src in self.pending:
            addresses[16 * slot : 16 * slot + 16] = address
            ints[slot + 1] = src
        self.pending.clear()


def src6_slot(address: Buffer) -> int:
    """Twin of the C ``src6_slot``: the table slot of the 16-byte ``address`` (its four words
    folded, then Fibonacci hashing to the top :data:`SRC6_BITS` bits)."""
    w0, w1, w2, w3 = _WORDS4.unpack_from(address)
    return int(((w0 ^ w1 ^ w2 ^ w3) * 0x9E3779B1 & _MASK) >> (32 - SRC6_BITS))


_WORDS4 = struct.Struct("!IIII")
#: the table handed to the classifier when the caller has none (every source a miss)
_NO_SOURCES = SourceTable6()


def py_classify_frame(
    frame: Buffer,
    verify: bool,
    mac: bytes,
    ip: int,
    broadcast: int,
    ip6: bytes = b"",
    ip6_usable: int = 0,
    src6: SourceTable6 = _NO_SOURCES,
) -> Record:
    """Twin of the C ``classify``: the record of one frame (see the module docstring).  ``ip6``
    is our IPv6 addresses, 16 bytes each, the ``ip6_usable`` usable ones (past DAD) first;
    ``src6`` the table of UDP6 sources."""
    n = len(frame)
    if n < 42 or frame[0:6] != mac:
        return _DECLINED
    if frame[12] == 0x86 and frame[13] == 0xDD:
        if n >= 62 and ip6_usable:
            return py_classify_frame6(frame, verify, ip6, ip6_usable, src6)
        return _DECLINED
    if frame[12] != 0x08 or frame[13] != 0x00:
        return _DECLINED
    vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = _IPV4_FIXED.unpack_from(frame, 14)
    if vihl != 0x45 or total < 28 or 14 + total > n or frag & 0x3FFF or ttl == 0 or proto not in (6, 17):
        return _DECLINED
    if proto == 6 and total < 40:
        return _DECLINED
    if dst != ip or src in (ip, broadcast) or src >= 0xE0000000 or src >> 24 == 127:
        return _DECLINED
    if verify and sum16(frame, 14, 20, 0) != 0xFFFF:
        return _DECLINED
    if proto == 17:
        return py_classify_udp(frame, verify, total, src, dst)
    tcp_len = total - 20
    initial = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6 + tcp_len
    fields = _tcp_fields(frame, verify, 34, tcp_len, 34, initial, _MORE_FIN | _MORE_SYN)
    if fields is None:
        return _DECLINED
    return (CANDIDATE, src, *fields)


def py_classify_frame6(
    frame: Buffer, verify: bool, ip6: bytes, ip6_usable: int, src6: SourceTable6 = _NO_SOURCES
) -> Record:
    """Twin of the C ``classify6``: what ``ip6_input`` -> ``tcp6_input`` / ``udp6_input`` take
    without a question (an IPv6 frame of at least 62 bytes to our MAC)."""
    version, tcp_len, nxt, hop_limit = _IPV6_FIXED.unpack_from(frame, 14)
    if version >> 4 != 6 or nxt not in (6, 17) or hop_limit == 0:
        return _DECLINED
    if nxt == 6 and (tcp_len < 20 or 54 + tcp_len > len(frame)):
        return _DECLINED
    src = bytes(frame[22:38])
    if src[0] == 0xFF or (src[:15] == _ZERO15 and src[15] <= 1):
        return _DECLINED  # multicast, :: or ::1
    dst = bytes(frame[38:54])
    usable = [ip6[i : i + 16] for i in range(0, 16 * ip6_usable, 16)]
    ours = [ip6[i : i + 16] for i in range(0, len(ip6), 16)]
    if dst not in usable or src in ours:
        return _DECLINED
    if nxt == 17:
        return py_classify_udp6(frame, verify, tcp_len, src6)
    # the pseudo-header (RFC 8200 8.1): the addresses summed in place with the segment
    fields = _tcp_fields(frame, verify, 54, tcp_len, 22, 6 + tcp_len, 0)
    if fields is None:
        return _DECLINED
    return (CANDIDATE6, usable.index(dst), *fields)  # which usable address of ours: the key holds it


def _tcp_fields(
    frame: Buffer, verify: bool, at: int, tcp_len: int, sum_at: int, initial: int, more: int
) -> tuple[int, int, int, int, int, int, int, int, int, int] | None:
    """Twin of the C ``tcp_fields``: the record's fields after ``src`` for the segment at
    ``frame[at:at + tcp_len]``, its checksum summed from ``frame[sum_at]`` with ``initial``;
    ``more`` what else may be a candidate (:data:`_MORE_FIN`: a FIN with its ACK;
    :data:`_MORE_SYN`: a SYN alone with any options, left to the caller, tsval and tsecr -1);
    ``None`` to decline."""
    sport, dport, seq, ack, offset_byte, flags, window = _TCP_FIXED.unpack_from(frame, at)
    thl = (offset_byte >> 4) << 2
    syn = flags == TCP_SYN and more & _MORE_SYN
    if (
        thl < 20
        or thl > tcp_len
        or (not syn and flags & ~(0x08 | more & _MORE_FIN) != 0x10)
        or offset_byte & 0x0F
        or not sport
        or not dport
    ):
        return None
    tsval = tsecr = -1
    if syn:
        pass  # any options: parsed by the caller, as tcp_input would
    elif thl == 32:
        if frame[at + 20 : at + 24] != _TS_ALIGNED:
            return None
        tsval, tsecr = _TS.unpack_from(frame, at + 24)
    elif thl != 20:
        return None
    if verify and sum16(frame, sum_at, at + tcp_len - sum_at, initial) != 0xFFFF:
        return None
    return (sport, dport, seq, ack, flags, window, tsval, tsecr, at + thl, at + tcp_len)


def py_classify_udp(frame: Buffer, verify: bool, total: int, src: int, dst: int) -> Record:
    """Twin of the C ``classify_udp``: a datagram ``udp_input`` would take without a question
    (a length that fits what IP carried, a destination port, a valid checksum or none) is a
    ``UDP`` record ``(UDP, src, sport, dport, 0, 0, 0, 0, -1, -1, 42, payload end)``."""
    if total < 28:
        return _DECLINED
    sport, dport, length, checksum = _UDP_FIXED.unpack_from(frame, 34)
    if length < 8 or length > total - 20 or not dport:
        return _DECLINED
    if verify and checksum:
        initial = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 17 + length
        if sum16(frame, 34, length, initial) != 0xFFFF:
            return _DECLINED
    return (UDP, src, sport, dport, 0, 0, 0, 0, -1, -1, 42, 34 + length)


def py_classify_udp6(
    frame: Buffer, verify: bool, payload_len: int, src6: SourceTable6 = _NO_SOURCES
) -> Record:
    """Twin of the C ``classify_udp6``: a datagram ``udp6_input`` would take without a question
    (a UDP length that fits the IPv6 payload, a destination port, a nonzero checksum, valid over
    the pseudo-header) is ``(UDP6, hit, sport, dport, slot, 0, 0, 0, -1, -1, 62, payload end)``:
    ``slot`` the source's in ``src6``, ``hit`` slot + 1 when ``src6`` holds the source there, else 0."""
    if payload_len < 8 or 54 + payload_len > len(frame):
        return _DECLINED
    sport, dport, length, checksum = _UDP_FIXED.unpack_from(frame, 54)
    if length < 8 or length > payload_len or not dport or not checksum:
        return _DECLINED
    # the pseudo-header (RFC 8200 8.1): the addresses summed in place, then length and next header
    if verify and sum16(frame, 22, 32 + length, 17 + length) != 0xFFFF:
        return _DECLINED
    source = frame[22:38]
    slot = src6_slot(source)
    hit = slot + 1 if src6.addresses[16 * slot : 16 * slot + 16] == source else 0
    return (UDP6, hit, sport, dport, slot, 0, 0, 0, -1, -1, 62, 54 + length)


def py_classify_burst(
    frames: Sequence[Buffer],
    mac: bytes,
    ip: int,
    broadcast: int,
    verify: bool,
    ip6: bytes = b"",
    ip6_usable: int = 0,
    src6: SourceTable6 = _NO_SOURCES,
) -> list[Record]:
    """The records of a burst (twin of :func:`native_classify_burst`): a frame the port marked
    vouched for (:class:`ChecksumVerified` or :class:`ChecksumVerifiedPacket`) is not verified again."""
    _check_ip6(ip6, ip6_usable)
    records = []
    for frame in frames:
        check = verify and frame.__class__ not in VOUCHED
        records.append(py_classify_frame(frame, check, mac, ip, broadcast, ip6, ip6_usable, src6))
    return records


def _check_ip6(ip6: bytes, ip6_usable: int) -> None:
    """The C classifier's argument checks on the IPv6 addresses, as a clear error."""
    if len(ip6) % 16 or len(ip6) // 16 > MAX_IP6 or not 0 <= ip6_usable <= len(ip6) // 16:
        raise ValueError(f"bad IPv6 addresses for the classifier ({len(ip6)} bytes, {ip6_usable} usable)")


class Classify(Protocol):
    """A burst classifier: ``(frames, mac, ip, broadcast, verify, ip6=b"", ip6_usable=0, src6)``."""

    def __call__(
        self,
        frames: Sequence[Buffer],
        mac: bytes,
        ip: int,
        broadcast: int,
        verify: bool,
        ip6: bytes = b"",
        ip6_usable: int = 0,
        src6: SourceTable6 = _NO_SOURCES,
        /,
    ) -> list[Record]: ...


native_classify_burst: Classify | None = None
if _native is not None and hasattr(_native[1], "yas_tcp_fast_classify"):
    _ffi, _lib = _native
    _c_classify = _lib.yas_tcp_fast_classify
    _from_buffer = _ffi.from_buffer
    _iter_unpack = RECORD.iter_unpack
    _RECORD_SIZE = RECORD.size
    _U32 = struct.Struct("=I")  # one frame's length, as the C side reads it (native uint32_t)
    _SRC6_BYTES = 16 * SRC6_SLOTS

    def _native_classify_burst(
        frames: Sequence[Buffer],
        mac: bytes,
        ip: int,
        broadcast: int,
        verify: bool,
        ip6: bytes = b"",
        ip6_usable: int = 0,
        src6: SourceTable6 = _NO_SOURCES,
    ) -> list[Record]:
        """The C ``yas_tcp_fast_classify`` over the whole burst: one join, one call, one unpack.
        A burst of one frame (a short connection's SYN, its FIN; a request on a quiet port) is
        handed over as it is, its length packed directly: no list, array or join for it."""
        n = len(frames)
        joined: Any  # bytes, or a cffi view of a ChecksumVerifiedPacket (C reads either)
        if n == 1:
            joined = frames[0]
            length = len(joined)
            cls = joined.__class__
            if cls in VOUCHED:
                raw_lens = _U32.pack(length | VERIFIED if verify else length)
                if cls is ChecksumVerifiedPacket:
                    joined = _from_buffer(joined)  # the memory wire's bytearray, read in place
            else:
                raw_lens = _U32.pack(length)
                if joined.__class__ is not bytes:
                    joined = bytes(joined)  # a bytearray or memoryview: C takes bytes, as join made
        else:
            if verify:
                lens = array("I", [len(f) | VERIFIED if f.__class__ in VOUCHED else len(f) for f in frames])
            else:
                lens = array("I", map(len, frames))
            if n and (len(frames[0]) >= ONE_BY_ONE or len(frames[-1]) >= ONE_BY_ONE):
                # TSO frames (a bulk receiver's burst: all of them large, so its ends tell): one
                # C call each, since the join's copy of 64 KB frames into a buffer past malloc's
                # mmap threshold costs more than the crossings it saves.
                return _classify_one_by_one(
                    frames, lens, mac, ip, broadcast, ip6, ip6_usable, src6, verify
                )  # fmt: skip
            joined = b"".join(frames)
            length = len(joined)
            raw_lens = lens.tobytes()
        out = bytearray(n * _RECORD_SIZE)
        made = _c_classify(
            joined,
            length,
            raw_lens,
            len(raw_lens),
            n,
            mac,
            ip,
            broadcast,
            ip6,
            len(ip6),
            ip6_usable,
            src6.handle,
            _SRC6_BYTES,
            verify,
            _from_buffer(out),
            len(out),
        )
        if made != n:
            _check_ip6(ip6, ip6_usable)
            raise ValueError(f"yas_tcp_fast_classify failed ({made})")
        return list(_iter_unpack(out))

    def _classify_one_by_one(
        frames: Sequence[Buffer],
        lens: array[int],
        mac: bytes,
        ip: int,
        broadcast: int,
        ip6: bytes,
        ip6_usable: int,
        src6: SourceTable6,
        verify: bool,
    ) -> list[Record]:
        """A burst of large frames, each handed to C as a burst of one is (the memory wire's
        marked bytearray by pointer), the records written into one buffer: the same records as
        the joined call, without the join's copy."""
        n = len(frames)
        out = bytearray(n * _RECORD_SIZE)
        at: Any = _from_buffer(out)  # a char[]: each record's place is at + offset (a char *)
        handle = src6.handle
        for index, frame in enumerate(frames):
            cls = frame.__class__
            if cls is ChecksumVerifiedPacket:
                buf: Any = _from_buffer(frame)
            elif cls is bytes or cls in VOUCHED:
                buf = frame
            else:
                buf = bytes(frame)  # a bytearray or memoryview: C takes bytes, as join made
            raw_len = _U32.pack(lens[index])
            made = _c_classify(
                buf, len(frame), raw_len, 4, 1, mac, ip, broadcast, ip6, len(ip6), ip6_usable, handle,
                _SRC6_BYTES, verify, at + index * _RECORD_SIZE, _RECORD_SIZE,
            )  # fmt: skip
            if made != 1:
                _check_ip6(ip6, ip6_usable)
                raise ValueError(f"yas_tcp_fast_classify failed ({made})")
        return list(_iter_unpack(out))

    native_classify_burst = _native_classify_burst

#: whether the classifier in use is the C one
NATIVE_FASTPATH = native_classify_burst is not None
#: the chosen classifier: ``(frames, mac, ip, broadcast, verify, ip6, ip6_usable) -> [Record]``
classify_burst: Classify = native_classify_burst or py_classify_burst


#: the states whose answer to our FIN ``closing_ack`` predicts (a ``Connection: close`` server's)
_CLOSING_PREDICTED = (FIN_WAIT_1, FIN_WAIT_2)
#: the states whose last segment in, the peer's ACK of our FIN after its own, ``final_ack``
#: predicts (a client of a ``Connection: close`` server, or both ends closing at once)
_FINAL_PREDICTED = (LAST_ACK, CLOSING)


def fast_input(conn: TcpConnection, frame: bytes, record: Record, now: float) -> bool:
    """Take a candidate segment for ``conn``; ``False`` (nothing changed) when the Python path
    must run instead.

    Declines a connection being traced (its class was swapped) and an ESTABLISHED one with
    loss-recovery state: the general path (and loss recovery's own code) is the reference there,
    and only the common case is worth predicting.  Then header prediction proper (the
    connection's own, shared with the Python path), then :func:`ack_and_data_input`.

    A connection in any other state, and a FIN in any state, goes on from here: the ACK that
    completes a passive open (every connection's second segment) to ``handshake_ack``, the
    peer's ACK and FIN after ours (a ``Connection: close`` server's last segments in) to
    ``closing_ack``, the peer's ACK of our FIN after its own (its client's last segment in,
    LAST_ACK or CLOSING) to ``final_ack``, each the general path's steps for that one case;
    whatever they decline (and data, other ACKs while closing, a FIN on an ESTABLISHED
    connection) to the general path,
    ``segment_arrives``: the classifier made every check ``ip_input`` and
    ``tcp_input`` make before they hand a segment of a known connection to it (IPv4 to our
    address from a sound source, unfragmented, checksums, ports, ACK (maybe with FIN) without
    SYN/RST, options none or the aligned timestamps, so no ``TcpOptions``), so those layers'
    parsing again was the only difference (~5 us a segment).
    """
    if conn.__class__ is not TcpConnection:
        return False
    _kind, _src, _sport, _dport, seq, ack, flags, window, tsval, tsecr, start, end = record
    state = conn.state
    if state != ESTABLISHED or flags & TCP_FIN:
        if flags & TCP_SYN:
            return False  # a SYN for a known pair: its options are tcp_input's to parse
        if start != end or not (
            (state == SYN_RECEIVED and conn.handshake_ack(seq, ack, flags, window, tsval, tsecr, now))
            or (state in _CLOSING_PREDICTED and conn.closing_ack(seq, ack, flags, window, tsval, tsecr, now))
            or (state in _FINAL_PREDICTED and conn.final_ack(seq, ack, flags, window, tsval, tsecr, now))
        ):
            conn.segment_arrives(frame, start, end, seq, ack, flags, window, None, tsval, tsecr, now)
        return True
    # (a connection that never saw a SACK block or an out-of-order segment holds the shared empty
    # NO_SACKS / NO_REASSEMBLY: an identity test instead of a Python-level __len__ per segment)
    if (
        conn.in_recovery
        or conn.rxtshift
        or conn.frto
        or (conn.scoreboard is not NO_SACKS and len(conn.scoreboard))
    ):
        return False
    conn.last_activity = now  # as segment_arrives does first (the slow path would repeat it)
    conn.keep_probes = 0
    # Data that acknowledges new data (a keep-alive request carrying the ACK of the last
    # response) is never header prediction's: its data case wants SEG.ACK = SND.UNA and its ACK
    # case no data, so it would only decline it, a call of eleven arguments per request.
    if (end == start or ack == conn.snd_una & _MASK) and conn.header_prediction(
        frame, start, end, seq, ack, flags, window, tsval, tsecr, now
    ):
        return True
    return ack_and_data_input(conn, frame, start, end, seq, ack, flags, window, tsval, tsecr, now)


def ack_and_data_input(
    conn: TcpConnection,
    buf: bytes,
    start: int,
    end: int,
    seq_wire: int,
    ack_wire: int,
    flags: int,
    window: int,
    tsval: int,
    tsecr: int,
    now: float,
) -> bool:
    """The in-order segments header prediction leaves to the general path although they are the
    common case of a request-response exchange: data that also acknowledges new data (a request
    carrying the ACK of the last response), data or a pure ACK that moves the window.

    For a segment at RCV.NXT on an ESTABLISHED connection, with timestamps in order (PAWS
    passes), an acceptable ACK (SND.UNA =< SEG.ACK =< SND.MAX), no SACK blocks, and data that fits
    the window with nothing queued out of order, RFC 9293 3.10.7.4's checks reduce to exactly
    these steps of the general path, in its order: the TS.Recent update of the first check,
    ``_process_ack`` (the fifth: window, then ``_ack_advances``; for the ACK of everything in
    flight, a keep-alive request's, their lean twin ``_input._ack_all``), ``_data_arrives`` (the seventh;
    its in-order case written out here, the checks above having excluded the others), and
    ``_output_after_input`` when ``tcp_output`` would do anything (else it would return at its
    first test).  Anything else, including a duplicate ACK (loss recovery's business), declines
    (``False``, nothing changed).  ``tests/test_tcp_fastpath.py`` holds it to the general path.
    """
    length = end - start
    if flags & ~TCP_PSH != TCP_ACK or seq_wire != conn.rcv_nxt & _MASK:
        return False
    snd_una = conn.snd_una
    acked = (ack_wire - snd_una) & _MASK  # an ACK below SND.UNA wraps to a huge value: declined
    if acked > conn.snd_max - snd_una:
        return False
    if length:
        if (
            (conn.reasm is not NO_REASSEMBLY and len(conn.reasm))
            or conn.rcv_fin >= 0
            or conn.user_closed
            or length > conn.rcv_adv - conn.rcv_nxt
            # rcvbuf.free() in line (its Python-level call and __len__ per request): the room
            # left, which the advertised window is within unless SO_RCVBUF shrank since
            or length > conn.rcvbuf.limit - len(conn.rcvbuf._buf) + conn.rcvbuf._head
        ):
            return False
    elif not acked and window << conn.snd_scale == conn.snd_wnd:
        return False  # a duplicate ACK in RFC 5681's sense
    seq = conn.rcv_nxt
    if conn.ts_on:
        if tsval < 0 or 0 < ((conn.ts_recent - tsval) & _MASK) < 0x80000000:
            return False  # no timestamp, or PAWS would reject it: the general path decides
        if seq <= conn.last_ack_sent:  # RFC 7323 4.3, as _check_sequence_number does
            conn.ts_recent = tsval
            conn.ts_recent_valid = True
    if not (acked and _ack_all(conn, snd_una + acked, seq, window, tsecr, now)):  # all acknowledged: lean
        conn._process_ack(snd_una + acked, seq, window, None, tsecr, not length, now)
    if length and conn.state == ESTABLISHED:
        # _data_arrives for what was checked above (at RCV.NXT, inside the advertised window and
        # the buffer's room, nothing queued out of order, no FIN), in line: one copy of the
        # payload from the frame into the buffer, without the slice, the re-checks and four calls
        # per request that the general function spends on cases this one cannot be.
        conn.rcvbuf._extend_from(buf, start, end)
        conn.rcv_nxt = seq + length
        conn.stats.bytes_received += length
        conn.segs_unacked += 1
        if conn.segs_unacked >= 2 or not conn.config.delayed_ack:
            conn.ack_now = True
        elif not conn.ack_now and not conn.t_delack:
            conn._arm_delack(now)
        if conn.waiter is not None:  # _wake(), in line: a reader may be parked on us
            conn.core.ready[conn] = None
        elif conn.listener is not None:  # not accepted yet: its listener's accept wakes
            conn.core.ready[conn.listener] = None
    elif length:
        conn._data_arrives(buf, start, end, seq, now)  # the ACK changed the state: the general way
    if (
        conn.ack_now
        or conn.in_recovery
        or conn.snd_nxt < conn.sndbuf.end
        or 0 <= conn.fin_seq >= conn.snd_nxt
        or conn.state != ESTABLISHED
    ):
        conn._output_after_input(now)
    # else: tcp_output would return at its first test (no ACK due, nothing unsent, no FIN to
    # send): a request whose ACK waits for the response, which the application is about to
    # write, costs no pass of tcp_output at the burst's end (as header prediction's data case).
    return True
