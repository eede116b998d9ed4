"""The stack's native (C, cffi) functions and their pure-Python twins: the Internet checksum
(``native/checksum.c``) and software GSO for TCP over IPv4 and IPv6 (``native/gso.c``).

Each native function has a twin here with the same signature and result; the stack uses the
native one when its extension (``trio_yastack.stack._native_cffi``) was built and imports, and
the twin otherwise (set ``TRIO_YASTACK_NO_NATIVE=1`` to force the twins).
``tests/test_native.py`` (and ``tests/test_gso6.py``) prove they agree.  Callers import the
chosen names (``sum16``, ``tcp4_segment``, ``tcp6_segment``) and never check which one they got.

The dispatcher's native part (Toeplitz hash, shared-memory rings) is a separate extension with
its twins in ``trio_yastack.dispatch``, so importing the sans-IO stack loads only this: the
standard library's ``os`` and ``struct`` and, when built, the C of this layer.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._native_cffi import _FFI, _Lib

__all__ = [
    "NATIVE",
    "native_extension",
    "native_sum16",
    "native_sum16_bytes",
    "native_tcp4_segment",
    "native_tcp6_segment",
    "py_sum16",
    "py_sum16_bytes",
    "py_tcp4_segment",
    "py_tcp6_segment",
    "sum16",
    "sum16_bytes",
    "tcp4_segment",
    "tcp6_segment",
]

Buffer = bytes | bytearray | memoryview


def _load_extension() -> tuple[_FFI, _Lib] | None:
    """The built extension, or None when it is missing (the optional build did not happen or
    failed) or ``TRIO_YASTACK_NO_NATIVE`` is set."""
    if os.environ.get("TRIO_YASTACK_NO_NATIVE"):
        return None
    try:
        from ._native_cffi import ffi, lib
    except ImportError:
        return None
    return ffi, lib


_extension = _load_extension()
#: whether the C functions of this layer are in use
NATIVE = _extension is not None


def native_extension() -> tuple[_FFI, _Lib] | None:
    """The loaded extension (None: the twins are in use), for the twins kept beside their
    callers (``stack/tcp/_fastpath.py``)."""
    return _extension


# -- the Internet checksum (native/checksum.c) ----------------------------------------------------
def py_sum16(buf: Buffer, offset: int, length: int, initial: int) -> int:
    """The 16-bit one's-complement sum of ``buf[offset:offset+length]`` plus ``initial``, folded.

    Why this is fast in pure Python: 2**16 is 1 modulo 0xFFFF, so the big-endian integer value
    of the bytes is congruent to the sum of their 16-bit words modulo 0xFFFF, and one
    ``int.from_bytes`` plus one ``%`` replaces a loop over the words.  End-around-carry addition
    yields 0 only when everything added was zero, and 0xFFFF for any other multiple of 0xFFFF.
    """
    if offset < 0 or length < 0 or offset + length > len(buf):
        raise ValueError("checksum range outside the buffer")
    value = int.from_bytes(buf[offset : offset + length], "big")
    if length & 1:
        value <<= 8  # an odd last byte is the high byte of a zero-padded word
    value += initial
    folded = value % 0xFFFF
    if folded == 0 and value:
        return 0xFFFF
    return folded


def py_sum16_bytes(buf: bytes, buflen: int, offset: int, length: int, initial: int) -> int:
    """Twin of the raw C ``yas_sum16`` for ``bytes``: a range outside the buffer gives the
    out-of-range value (0xFFFFFFFF, never a valid sum) instead of raising."""
    if offset < 0 or length < 0 or offset + length > buflen:
        return 0xFFFFFFFF
    return py_sum16(buf, offset, length, initial)


native_sum16: Callable[[Buffer, int, int, int], int] | None = None
native_sum16_bytes: Callable[[bytes, int, int, int, int], int] | None = None
if _extension is not None:
    _ffi, _lib = _extension
    _from_buffer = _ffi.from_buffer
    _c_sum16 = _lib.yas_sum16
    _OUT_OF_RANGE = _lib.YAS_SUM16_OUT_OF_RANGE

    def _native_sum16(buf: Buffer, offset: int, length: int, initial: int) -> int:
        """The C ``yas_sum16``: ``bytes`` pass without a copy, other buffers by ``from_buffer``.

        The C side checks the range against the buffer's length, so a bad offset is a
        ``ValueError`` here and never a read outside the buffer.
        """
        try:
            if type(buf) is bytes:
                result = _c_sum16(buf, len(buf), offset, length, initial)
            else:
                result = _c_sum16(_from_buffer(buf), len(buf), offset, length, initial)
        except OverflowError:  # a negative offset or length does not fit size_t
            raise ValueError("checksum range outside the buffer") from None
        if result == _OUT_OF_RANGE:
            raise ValueError("checksum range outside the buffer")
        return result

    native_sum16 = _native_sum16
    native_sum16_bytes = _c_sum16

#: the chosen checksum sum: ``(buf, offset, length, initial) -> sum``, ``ValueError`` out of range
sum16: Callable[[Buffer, int, int, int], int] = native_sum16 or py_sum16
#: the raw sum over ``bytes`` for the per-packet verification paths: ``(buf, len(buf), offset,
#: length, initial)``, 0xFFFFFFFF when the range is outside the buffer; no wrapper call on top
sum16_bytes: Callable[[bytes, int, int, int, int], int] = native_sum16_bytes or py_sum16_bytes


# -- software GSO: one TCP/IPv4 frame cut into MSS-sized frames (native/gso.c) ------------------
_IP_FIELDS = struct.Struct("!HH")  # total length, identification (at IPv4 offset 2)
_SEQ = struct.Struct("!I")


def _segment_layout(frame: Buffer, mss: int) -> tuple[int, int, int, int]:
    """``(tcp_at, headers, payload, count)`` of a TCP/IPv4 frame to segment; ``ValueError`` when
    it is not one (the same checks as the C side)."""
    if not 0 < mss <= 65535 or len(frame) < 54:
        raise ValueError("not a TCP/IPv4 frame to segment")
    if frame[12] != 8 or frame[13] != 0 or frame[14] >> 4 != 4 or frame[23] != 6:
        raise ValueError("not a TCP/IPv4 frame to segment")
    ihl = (frame[14] & 0x0F) * 4
    ip_total = (frame[16] << 8) | frame[17]
    if ihl < 20 or 14 + ip_total > len(frame) or ip_total < ihl + 20:
        raise ValueError("not a TCP/IPv4 frame to segment")
    tcp_at = 14 + ihl
    thl = (frame[tcp_at + 12] >> 4) * 4
    if thl < 20 or ihl + thl > ip_total:
        raise ValueError("not a TCP/IPv4 frame to segment")
    headers = tcp_at + thl
    payload = 14 + ip_total - headers
    return tcp_at, headers, payload, (payload + mss - 1) // mss if payload else 1


def py_tcp4_segment(frame: Buffer, mss: int) -> list[bytes]:
    """Twin of the C ``yas_tcp4_segment``: ``frame`` (Ethernet + IPv4 + TCP + payload; its TCP
    checksum field is ignored) cut into frames of at most ``mss`` payload bytes, each with its
    own IPv4 length, identification (+i) and checksum, sequence number (+i*mss), FIN/PSH only
    on the last and CWR only on the first, and a full TCP checksum (Linux's tcp4_gso_segment)."""
    tcp_at, headers, payload, count = _segment_layout(frame, mss)
    ihl = tcp_at - 14
    thl = headers - tcp_at
    ident = (frame[18] << 8) | frame[19]
    seq: int = _SEQ.unpack_from(frame, tcp_at + 4)[0]
    flags = frame[tcp_at + 13]
    pseudo = (frame[26] << 8 | frame[27]) + (frame[28] << 8 | frame[29])
    pseudo += (frame[30] << 8 | frame[31]) + (frame[32] << 8 | frame[33]) + 6
    segments = []
    for i in range(count):
        take = mss if i + 1 < count else payload - i * mss
        seg = bytearray(frame[:headers])
        seg += frame[headers + i * mss : headers + i * mss + take]
        _IP_FIELDS.pack_into(seg, 16, ihl + thl + take, (ident + i) & 0xFFFF)
        seg[24:26] = b"\0\0"
        seg[24:26] = (~py_sum16(seg, 14, ihl, 0) & 0xFFFF).to_bytes(2, "big")
        _SEQ.pack_into(seg, tcp_at + 4, (seq + i * mss) & 0xFFFFFFFF)
        f = flags
        if i + 1 < count:
            f &= ~0x09
        if i > 0:
            f &= ~0x80
        seg[tcp_at + 13] = f
        seg[tcp_at + 16 : tcp_at + 18] = b"\0\0"
        checksum = ~py_sum16(seg, tcp_at, thl + take, pseudo + thl + take) & 0xFFFF
        seg[tcp_at + 16 : tcp_at + 18] = checksum.to_bytes(2, "big")
        segments.append(bytes(seg))
    return segments


native_tcp4_segment: Callable[[Buffer, int], list[bytes]] | None = None
if _extension is not None:
    _c_segment = _extension[1].yas_tcp4_segment

    def _native_tcp4_segment(frame: Buffer, mss: int) -> list[bytes]:
        """The C ``yas_tcp4_segment``: all segments in one call, then one copy each out of the
        shared output buffer."""
        _tcp_at, headers, payload, count = _segment_layout(frame, mss)
        stride = headers + mss
        out = bytearray((count - 1) * stride + headers + payload - (count - 1) * mss)
        made = _c_segment(_from_buffer(frame), len(frame), mss, _from_buffer(out), len(out))
        if made != count:
            raise ValueError(f"segmenting failed ({made})")
        with memoryview(out) as view:
            last = (count - 1) * stride
            frames = [view[at : at + stride].tobytes() for at in range(0, last, stride)]
            frames.append(view[last:].tobytes())
            return frames

    native_tcp4_segment = _native_tcp4_segment

#: the chosen software GSO: ``(frame, mss) -> [frames]``
tcp4_segment: Callable[[Buffer, int], list[bytes]] = native_tcp4_segment or py_tcp4_segment


# -- software GSO for TCP/IPv6: the same cut (native/gso.c's yas_tcp6_segment) -----------------
_IPV6_PLEN = struct.Struct("!H")  # the payload length (at IPv6 offset 4)


def _segment_layout6(frame: Buffer, mss: int) -> tuple[int, int, int]:
    """``(headers, payload, count)`` of a TCP/IPv6 frame to segment (no extension header: the
    stack sends none); ``ValueError`` when it is not one (the same checks as the C side)."""
    if not 0 < mss <= 65535 or len(frame) < 74:
        raise ValueError("not a TCP/IPv6 frame to segment")
    if frame[12] != 0x86 or frame[13] != 0xDD or frame[14] >> 4 != 6 or frame[20] != 6:
        raise ValueError("not a TCP/IPv6 frame to segment")
    plen = (frame[18] << 8) | frame[19]
    thl = (frame[66] >> 4) * 4
    if 54 + plen > len(frame) or plen < 20 or thl < 20 or thl > plen:
        raise ValueError("not a TCP/IPv6 frame to segment")
    payload = plen - thl
    return 54 + thl, payload, (payload + mss - 1) // mss if payload else 1


def py_tcp6_segment(frame: Buffer, mss: int) -> list[bytes]:
    """Twin of the C ``yas_tcp6_segment``: ``frame`` (Ethernet + IPv6 + TCP + payload; its TCP
    checksum field is ignored) cut into frames of at most ``mss`` payload bytes, each with its
    own IPv6 payload length, sequence number (+i*mss), FIN/PSH only on the last and CWR only on
    the first, and a full TCP checksum over the IPv6 pseudo-header (Linux's tcp6_gso_segment)."""
    headers, payload, count = _segment_layout6(frame, mss)
    thl = headers - 54
    seq: int = _SEQ.unpack_from(frame, 58)[0]
    flags = frame[67]
    pseudo = py_sum16(frame, 22, 32, 6)  # source, destination, next header (folded)
    segments = []
    for i in range(count):
        take = mss if i + 1 < count else payload - i * mss
        seg = bytearray(frame[:headers])
        seg += frame[headers + i * mss : headers + i * mss + take]
        _IPV6_PLEN.pack_into(seg, 18, thl + take)
        _SEQ.pack_into(seg, 58, (seq + i * mss) & 0xFFFFFFFF)
        f = flags
        if i + 1 < count:
            f &= ~0x09
        if i > 0:
            f &= ~0x80
        seg[67] = f
        seg[70:72] = b"\0\0"
        checksum = ~py_sum16(seg, 54, thl + take, pseudo + thl + take) & 0xFFFF
        seg[70:72] = checksum.to_bytes(2, "big")
        segments.append(bytes(seg))
    return segments


native_tcp6_segment: Callable[[Buffer, int], list[bytes]] | None = None
if _extension is not None:
    _c_segment6 = _extension[1].yas_tcp6_segment

    def _native_tcp6_segment(frame: Buffer, mss: int) -> list[bytes]:
        """The C ``yas_tcp6_segment``: all segments in one call, then one copy each out of the
        shared output buffer (as ``_native_tcp4_segment``)."""
        headers, payload, count = _segment_layout6(frame, mss)
        stride = headers + mss
        out = bytearray((count - 1) * stride + headers + payload - (count - 1) * mss)
        made = _c_segment6(_from_buffer(frame), len(frame), mss, _from_buffer(out), len(out))
        if made != count:
            raise ValueError(f"segmenting failed ({made})")
        with memoryview(out) as view:
            last = (count - 1) * stride
            frames = [view[at : at + stride].tobytes() for at in range(0, last, stride)]
            frames.append(view[last:].tobytes())
            return frames

    native_tcp6_segment = _native_tcp6_segment

#: the chosen software GSO for TCP/IPv6: ``(frame, mss) -> [frames]``
tcp6_segment: Callable[[Buffer, int], list[bytes]] = native_tcp6_segment or py_tcp6_segment
