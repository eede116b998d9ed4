"""The Internet checksum (RFC 1071) and the IPv4 pseudo-header sum (RFC 9293 3.1, RFC 768).

The summing itself is :func:`trio_yastack.stack._native.sum16`: C when the stack's native part
is built, a pure-Python twin otherwise.
"""

from __future__ import annotations

from .._native import sum16, sum16_bytes

__all__ = ["internet_checksum", "pseudo_header_sum", "sum16", "sum16_bytes"]


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The checksum field value for ``data`` (whose own checksum field must be zero)."""
    return ~sum16(data, 0, len(data), initial) & 0xFFFF


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    """The partial sum of the IPv4 pseudo-header (addresses as 32-bit integers), unfolded."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + protocol + length
