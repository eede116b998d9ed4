"""TCP segments (RFC 9293) and their options: MSS, window scale and timestamps (RFC 7323),
SACK-permitted and SACK blocks (RFC 2018), NOP and EOL; unknown options are skipped.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------------------------------+-------------------------------+
    |          Source Port          |       Destination Port        |  0
    +-------------------------------+-------------------------------+
    |                        Sequence Number                        |  4
    |                    Acknowledgment Number                      |  8
    +-------+-------+---------------+-------------------------------+
    |  Data |       |C|E|U|A|P|R|S|F|                               |
    | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             | 12
    +-------+-------+---------------+-------------------------------+
    |           Checksum            |         Urgent Pointer        | 16
    +-------------------------------+-------------------------------+
    |                    Options (data offset > 5)                  | 20
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from ._checksum import pseudo_header_sum, sum16, sum16_bytes
from ._errors import BadChecksum, Malformed, Truncated, WireReason

__all__ = [
    "TCP_ACK",
    "TCP_CWR",
    "TCP_ECE",
    "TCP_FIN",
    "TCP_HEADER",
    "TCP_HEADER_LEN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "TCP_URG",
    "TcpOptions",
    "TcpRepr",
    "parse_tcp_header",
    "parse_tcp_options",
]

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80
TCP_HEADER_LEN = 20
TCP_HEADER = struct.Struct("!HHIIBBHHH")
_IPPROTO_TCP = 6

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8
_U16 = struct.Struct("!H")
_U32X2 = struct.Struct("!II")
_MAX_SACK_BLOCKS = 4


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """The options this stack understands; ``None``/empty means absent.

    ``window_scale`` is the raw shift count as received (RFC 7323 2.3: a receiver uses 14 for
    anything larger; that clamp is the connection's business, not the parser's).
    """

    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None  # (TSval, TSecr)

    @property
    def buffer_len(self) -> int:
        length = 4 if self.mss is not None else 0
        if self.timestamps is not None:
            length += 12  # (SACK-permitted or NOP NOP) + timestamps
        elif self.sack_permitted:
            length += 4  # NOP NOP + SACK-permitted
        length += 4 if self.window_scale is not None else 0
        length += 4 + 8 * len(self.sack_blocks) if self.sack_blocks else 0
        return length

    def emit_into(self, buf: bytearray | memoryview, offset: int) -> int:
        """Write the options in the order and padding Linux uses; return the end offset.

        MSS; SACK-permitted + timestamps (or NOP NOP + the one present); NOP + window scale;
        NOP NOP + SACK blocks.  The result is always a multiple of 4 bytes.
        """
        if len(self.sack_blocks) > _MAX_SACK_BLOCKS:
            raise ValueError("at most 4 SACK blocks fit in the option space")
        pos = offset
        if self.mss is not None:
            buf[pos : pos + 2] = b"\x02\x04"
            _U16.pack_into(buf, pos + 2, self.mss)
            pos += 4
        if self.timestamps is not None:
            buf[pos : pos + 4] = b"\x04\x02\x08\x0a" if self.sack_permitted else b"\x01\x01\x08\x0a"
            _U32X2.pack_into(buf, pos + 4, *self.timestamps)
            pos += 12
        elif self.sack_permitted:
            buf[pos : pos + 4] = b"\x01\x01\x04\x02"
            pos += 4
        if self.window_scale is not None:
            buf[pos : pos + 4] = bytes((OPT_NOP, OPT_WSCALE, 3, self.window_scale))
            pos += 4
        if self.sack_blocks:
            buf[pos : pos + 4] = bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(self.sack_blocks)))
            pos += 4
            for left, right in self.sack_blocks:
                _U32X2.pack_into(buf, pos, left, right)
                pos += 8
        return pos

    def to_bytes(self) -> bytes:
        buf = bytearray(self.buffer_len)
        self.emit_into(buf, 0)
        return bytes(buf)


NO_OPTIONS = TcpOptions()


def parse_tcp_options(buf: bytes, offset: int, end: int) -> TcpOptions:
    """Parse the option bytes ``buf[offset:end]``.  Raises :class:`Malformed` on a bad length."""
    if offset == end:
        return NO_OPTIONS
    mss = window_scale = timestamps = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    pos = offset
    while pos < end:
        kind = buf[pos]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            raise Malformed(WireReason.BAD_OPTION, f"option {kind} has no length byte")
        length = buf[pos + 1]
        if length < 2 or pos + length > end:
            raise Malformed(WireReason.BAD_OPTION, f"option {kind} with length {length}")
        if kind == OPT_MSS:
            if length != 4:
                raise Malformed(WireReason.BAD_OPTION, f"MSS option length {length}")
            mss = _U16.unpack_from(buf, pos + 2)[0]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise Malformed(WireReason.BAD_OPTION, f"window scale option length {length}")
            window_scale = buf[pos + 2]
        elif kind == OPT_SACK_PERMITTED:
            if length != 2:
                raise Malformed(WireReason.BAD_OPTION, f"SACK-permitted option length {length}")
            sack_permitted = True
        elif kind == OPT_SACK:
            if (length - 2) % 8 or not 1 <= (length - 2) // 8 <= _MAX_SACK_BLOCKS:
                raise Malformed(WireReason.BAD_OPTION, f"SACK option length {length}")
            sack_blocks = tuple(_U32X2.unpack_from(buf, p) for p in range(pos + 2, pos + length, 8))
        elif kind == OPT_TIMESTAMPS:
            if length != 10:
                raise Malformed(WireReason.BAD_OPTION, f"timestamps option length {length}")
            timestamps = _U32X2.unpack_from(buf, pos + 2)
        pos += length  # unknown kinds are skipped by their length
    return TcpOptions(mss, window_scale, sack_permitted, sack_blocks, timestamps)


def parse_tcp_header(
    buf: bytes, offset: int, end: int, src: int, dst: int, verify_checksum: bool = True
) -> tuple[int, int, int, int, int, int, int, int]:
    """Validate the segment in ``buf[offset:end]``; return its fixed fields.

    Returns ``(src_port, dst_port, seq, ack, flags, window, urgent, header_len)``; options are
    at ``offset+20 .. offset+header_len`` for :func:`parse_tcp_options`.  Raises
    :class:`Truncated`, :class:`Malformed` or :class:`BadChecksum`.
    """
    if end - offset < TCP_HEADER_LEN:
        raise Truncated(WireReason.TOO_SHORT, f"{end - offset} bytes is less than a TCP header")
    sport, dport, seq, ack, data_offset, flags, window, _csum, urgent = TCP_HEADER.unpack_from(buf, offset)
    header_len = (data_offset >> 4) << 2
    if header_len < TCP_HEADER_LEN or header_len > end - offset:
        raise Malformed(WireReason.BAD_HEADER_LENGTH, f"data offset {header_len} with {end - offset} bytes")
    if verify_checksum:
        # the pseudo-header sum inline (pseudo_header_sum): this runs for every segment
        initial = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + _IPPROTO_TCP + end - offset
        if type(buf) is bytes:
            total = sum16_bytes(buf, len(buf), offset, end - offset, initial)
        else:
            total = sum16(buf, offset, end - offset, initial)
        if total != 0xFFFF:
            raise BadChecksum(WireReason.BAD_CHECKSUM, "TCP checksum")
    return sport, dport, seq, ack, flags, window, urgent, header_len


@dataclass(frozen=True, slots=True)
class TcpRepr:
    """A TCP segment: header fields, the options understood, and the payload."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: TcpOptions = field(default=NO_OPTIONS)
    payload: bytes = b""
    urgent: int = 0

    @property
    def header_len(self) -> int:
        return TCP_HEADER_LEN + self.options.buffer_len

    @property
    def buffer_len(self) -> int:
        return self.header_len + len(self.payload)

    @classmethod
    def parse(
        cls,
        buf: bytes,
        src: IPv4Address,
        dst: IPv4Address,
        offset: int = 0,
        end: int | None = None,
        verify_checksum: bool = True,
    ) -> TcpRepr:
        end = len(buf) if end is None else end
        sport, dport, seq, ack, flags, window, urgent, header_len = parse_tcp_header(
            buf, offset, end, int(src), int(dst), verify_checksum
        )
        options = parse_tcp_options(buf, offset + TCP_HEADER_LEN, offset + header_len)
        payload = bytes(buf[offset + header_len : end])
        return cls(sport, dport, seq, ack, flags, window, options, payload, urgent)

    def emit_into(
        self, buf: bytearray | memoryview, src: IPv4Address, dst: IPv4Address, offset: int = 0
    ) -> int:
        header_len = self.header_len
        if header_len > 60:
            raise ValueError(f"options make a {header_len}-byte header; 60 is the most TCP allows")
        TCP_HEADER.pack_into(
            buf, offset, self.src_port, self.dst_port, self.seq, self.ack, (header_len >> 2) << 4,
            self.flags, self.window, 0, self.urgent,
        )  # fmt: skip
        self.options.emit_into(buf, offset + TCP_HEADER_LEN)
        end = offset + header_len + len(self.payload)
        buf[offset + header_len : end] = self.payload
        length = end - offset
        checksum = ~sum16(buf, offset, length, pseudo_header_sum(int(src), int(dst), _IPPROTO_TCP, length))
        _U16.pack_into(buf, offset + 16, checksum & 0xFFFF)
        return end

    def to_bytes(self, src: IPv4Address, dst: IPv4Address) -> bytes:
        buf = bytearray(self.buffer_len)
        self.emit_into(buf, src, dst)
        return bytes(buf)
