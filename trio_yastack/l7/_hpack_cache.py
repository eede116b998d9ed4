"""HPACK for the proxy's HTTP/2 downstream, with what repeats computed once (RFC 7541).

Why: in the profile of an h2 request through the proxy, ``hpack``'s encoder was ~9 % of the CPU
(a Python search of the static and dynamic tables per header, Huffman coding per value) and its
decoder ~4 %, for header blocks that are the same request after request: a client such as h2load or
a browser sends the same request head as one byte per field once its dynamic table holds them,
and the proxy's responses differ only in a ``date`` once a second or a ``content-length``.

- :class:`StaticEncoder` never inserts into the dynamic table: each field is the static table's
  index, or a literal *without indexing* (a *never indexed* one for credentials) naming the static
  table's entry where it has the name, so a field's bytes depend on the field alone and are cached
  per field (bounded).  Any such block is valid HPACK; the client's table is simply never used by
  us.  A pending table size change (the client's ``SETTINGS_HEADER_TABLE_SIZE``) is signalled as
  ``hpack`` does, by letting its encoder write that block.
- :class:`CachingDecoder` remembers what a block of *indexed fields only* (one byte each: no field
  changes the dynamic table) decoded to, while the table has not changed since: any other block
  may insert into or resize the table, so decoding one empties the memory first.  A block it has
  not seen, or any other block, is decoded by ``hpack`` itself, with its checks.

Both are drop-in for ``h2``'s ``H2Connection.encoder``/``decoder`` (``hpack``'s classes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.hpack import DEFAULT_MAX_HEADER_LIST_SIZE
from hpack.table import HeaderTable

__all__ = ["CachingDecoder", "StaticEncoder"]

#: fields kept per encoder, blocks per decoder: past this the memory starts again (a bound)
FIELD_CACHE = 512
BLOCK_CACHE = 64
_MAX_FIELD = 4096  # a longer field (a large cookie) is encoded each time, never kept

_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FULL.setdefault((_name, _value), _i)
    _STATIC_NAME.setdefault(_name, _i)

# every byte of a block of one-byte indexed fields: 0x80 (index 0) is an error hpack reports, and
# 0xff starts a multi-byte index (both decoded by hpack each time)
_ONE_BYTE_INDEXED = bytes(range(0x81, 0xFF))


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``flags`` in the first byte's high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = [flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


class StaticEncoder(hpack.Encoder):
    """An HPACK encoder that uses the static table only, its fields' bytes cached (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[tuple[bytes, bytes], bytes] = {}

    def field(self, name: bytes, value: bytes, sensitive: bool) -> bytes:
        """One field's representation (RFC 7541 6.1, 6.2.2, 6.2.3), the static table only."""
        if not sensitive and (index := _STATIC_FULL.get((name, value))) is not None:
            return _integer(index, 7, 0x80)
        flags = 0x10 if sensitive else 0x00  # never indexed / without indexing
        index = _STATIC_NAME.get(name, 0)
        out = _integer(index, 4, flags)
        if not index:
            out += self._string(name)
        return out + self._string(value)

    def _string(self, data: bytes) -> bytes:
        """RFC 7541 5.2: Huffman-coded where that is shorter."""
        coded = self.huffman_coder.encode(data)
        if len(coded) < len(data):
            return _integer(len(coded), 7, 0x80) + coded
        return _integer(len(data), 7, 0x00) + data

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """The header block of ``headers`` (``h2`` gives a list of byte tuples, a
        ``NeverIndexedHeaderTuple`` for a field that must stay out of any table)."""
        if self.header_table.resized or isinstance(headers, dict):
            # the size change is written first, as hpack writes it (the block may then use the
            # dynamic table, which this encoder never reads: still valid)
            return super().encode(headers, huffman)
        fields = self._fields
        out: list[bytes] = []
        for header in headers:
            if header.__class__ is tuple:  # (a HeaderTuple compares equal to a plain one: not cached)
                data = fields.get(header)
                if data is None:
                    data = self.field(header[0], header[1], False)
                    if len(data) <= _MAX_FIELD:
                        if len(fields) >= FIELD_CACHE:
                            fields.clear()
                        fields[header] = data
            else:
                sensitive = not header.indexable if isinstance(header, hpack.HeaderTuple) else False
                if len(header) > 2:
                    sensitive = bool(header[2])
                name, value = header[0], header[1]
                if not isinstance(name, bytes) or not isinstance(value, bytes):
                    return super().encode(headers, huffman)  # (str fields: hpack converts them)
                data = self.field(name, value, sensitive)
            out.append(data)
        return b"".join(out)


class CachingDecoder(hpack.Decoder):
    """An HPACK decoder that remembers blocks of one-byte indexed fields (module docstring)."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        super().__init__(max_header_list_size)
        self._blocks: dict[bytes, list[Any]] = {}
        self._limit = max_header_list_size  # the list size the remembered blocks were checked at

    def decode(self, data: bytes, raw: bool = False) -> Iterable[Any]:
        blocks = self._blocks
        if not raw or self.max_header_list_size != self._limit:
            blocks.clear()
            self._limit = self.max_header_list_size
            if not raw:
                return super().decode(data, raw)
        key = data if data.__class__ is bytes else bytes(data)
        headers = blocks.get(key)
        if headers is not None:
            self._assert_valid_table_size()  # (as hpack checks after each block)
            return list(headers)
        if key.translate(None, _ONE_BYTE_INDEXED):
            blocks.clear()  # this block may change the dynamic table: what is kept may be stale
            return super().decode(key, raw)
        decoded = list(super().decode(key, raw))
        if len(blocks) >= BLOCK_CACHE:
            blocks.clear()
        blocks[key] = decoded
        return list(decoded)
