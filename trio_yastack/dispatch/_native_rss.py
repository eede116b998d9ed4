"""The Toeplitz hash of receive-side scaling: C (``native/rss.c``) and its pure-Python twin.

``toeplitz`` is the native one when the dispatcher's extension is built (see ``_native``) and
the twin otherwise; ``tests/test_rss.py`` holds both to Microsoft's published vectors and to
each other.  ``toeplitz_tables`` is the twin's precomputation, which ``_rss.flow_core_tables``
also indexes directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ._native import extension

__all__ = ["native_toeplitz", "py_toeplitz", "toeplitz", "toeplitz_tables"]

Buffer = bytes | bytearray | memoryview


@functools.lru_cache(maxsize=16)
def toeplitz_tables(key: bytes) -> tuple[tuple[int, ...], ...]:
    """Per input byte position ``i`` (as many as ``key`` can hash: ``len(key) - 4``), a table of
    the 256 values that byte can XOR into the hash.

    Why: the Toeplitz hash is linear over XOR, so the contribution of a byte depends only on its
    value and its position, and a 12-byte flow hashes in 12 lookups instead of 96 bit tests.
    The tables for one key are built once (about 9 000 ints for the 40-byte key) and cached,
    so the per-packet cost of the twin is a dozen subscripts.
    """
    nbits = len(key) * 8
    key_value = int.from_bytes(key, "big")
    tables = []
    for position in range(len(key) - 4):
        # windows[b]: the 32 key bits from input bit 8*position + b (b = 0 is the byte's MSB)
        windows = [(key_value >> (nbits - 32 - 8 * position - b)) & 0xFFFFFFFF for b in range(8)]
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value
            table[value] = table[value ^ low] ^ windows[8 - low.bit_length()]
        tables.append(tuple(table))
    return tuple(tables)


def py_toeplitz(key: bytes, data: Buffer) -> int:
    """Twin of the C ``yas_toeplitz``: the Microsoft RSS Toeplitz hash of ``data`` with ``key``
    (for each set input bit, MSB first, XOR in the 32 key bits starting at that bit).

    ``ValueError`` when the key is shorter than ``len(data) + 4`` bytes: the last input bit
    needs key bits up to ``8 * len(data) + 30``.
    """
    if len(key) < len(data) + 4:
        raise ValueError("the Toeplitz key needs at least len(data) + 4 bytes")
    result = 0
    for table, byte in zip(toeplitz_tables(bytes(key)), data, strict=False):
        result ^= table[byte]
    return result


native_toeplitz: Callable[[bytes, Buffer], int] | None = None
if extension is not None:
    _from_buffer = extension[0].from_buffer
    _c_toeplitz = extension[1].yas_toeplitz

    def _native_toeplitz(key: bytes, data: Buffer) -> int:
        """The C ``yas_toeplitz``; ``bytes`` pass without a copy, other buffers by
        ``from_buffer``.  The key length is checked here because 0 is also a valid hash."""
        if len(key) < len(data) + 4:
            raise ValueError("the Toeplitz key needs at least len(data) + 4 bytes")
        try:
            # the common case, bytes, with no check first: cffi refuses other buffers (TypeError)
            return _c_toeplitz(key, len(key), data, len(data))  # type: ignore[arg-type]
        except TypeError:  # not bytes: a bytearray or memoryview goes by from_buffer
            key_c = key if isinstance(key, bytes) else _from_buffer(key)
            data_c = data if isinstance(data, bytes) else _from_buffer(data)
            return _c_toeplitz(key_c, len(key), data_c, len(data))

    native_toeplitz = _native_toeplitz

#: the chosen Toeplitz hash: ``(key, data) -> int``
toeplitz: Callable[[bytes, Buffer], int] = native_toeplitz or py_toeplitz
