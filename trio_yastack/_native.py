"""The native (C, cffi) functions and their pure-Python twins.

Each native function in ``native/`` has a twin here with the same signature and result; the
package uses the native one when the cffi extension was built and imports, and the twin
otherwise (set ``TRIO_YASTACK_NO_NATIVE=1`` to force the twins).  ``tests/test_native.py``
proves they agree.  Callers import the chosen names (``sum16``) and never check which one
they got.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["NATIVE", "native_sum16", "py_sum16", "py_sum16_bytes", "sum16", "sum16_bytes"]

Buffer = bytes | bytearray | memoryview


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


native_sum16: Callable[[Buffer, int, int, int], int] | None = None
if not os.environ.get("TRIO_YASTACK_NO_NATIVE"):
    try:
        from trio_yastack._native_cffi import ffi as _ffi
        from trio_yastack._native_cffi import lib as _lib
    except ImportError:  # the optional build did not happen or failed: use the twins
        pass
    else:
        _c_sum16 = _lib.yas_sum16
        _from_buffer = _ffi.from_buffer
        _OUT_OF_RANGE = _lib.YAS_SUM16_OUT_OF_RANGE

        def native_sum16(buf: Buffer, offset: int, length: int, initial: int) -> int:
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


def py_sum16_bytes(buf: bytes, buflen: int, offset: int, length: int, initial: int) -> int:
    """Twin of the raw C ``yas_sum16`` for ``bytes``: a range outside the buffer gives the
    out-of-range value (0xFFFFFFFF, never a valid sum) instead of raising."""
    if offset < 0 or length < 0 or offset + length > buflen:
        return 0xFFFFFFFF
    return py_sum16(buf, offset, length, initial)


NATIVE = native_sum16 is not None
sum16: Callable[[Buffer, int, int, int], int] = native_sum16 or py_sum16
#: the raw sum over ``bytes`` for the per-packet verification paths: ``(buf, len(buf), offset,
#: length, initial)``, 0xFFFFFFFF when the range is outside the buffer; no wrapper call on top
sum16_bytes: Callable[[bytes, int, int, int, int], int] = _c_sum16 if NATIVE else py_sum16_bytes  # type: ignore[name-defined]
