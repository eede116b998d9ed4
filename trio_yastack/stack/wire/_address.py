"""Link and network addresses as they travel in frames.

A MAC address is ``bytes`` of length 6 (a subclass, so it compares equal to a slice of a frame
for free); IPv4 addresses are ``ipaddress.IPv4Address`` in representations and plain 32-bit
integers inside the stack, where comparing and hashing must cost nothing.
"""

from __future__ import annotations

from ipaddress import IPv4Address

__all__ = ["BROADCAST_MAC", "MacAddress", "ip4", "ip4_int"]


class MacAddress(bytes):
    """Six bytes, printed as ``02:00:00:00:00:01``."""

    __slots__ = ()

    def __new__(cls, value: bytes | bytearray | str) -> MacAddress:
        if isinstance(value, str):
            parts = value.replace("-", ":").split(":")
            if len(parts) != 6:
                raise ValueError(f"not a MAC address: {value!r}")
            try:
                value = bytes(int(part, 16) for part in parts)
            except ValueError:
                raise ValueError(f"not a MAC address: {value!r}") from None
        if len(value) != 6:
            raise ValueError(f"a MAC address is 6 bytes, not {len(value)}")
        return super().__new__(cls, value)

    def __str__(self) -> str:
        return ":".join(f"{octet:02x}" for octet in self)

    def __repr__(self) -> str:
        return f"MacAddress('{self}')"

    @property
    def is_broadcast(self) -> bool:
        return self == BROADCAST_MAC

    @property
    def is_multicast(self) -> bool:
        """Group bit set (broadcast included)."""
        return bool(self[0] & 1)


BROADCAST_MAC = MacAddress(b"\xff" * 6)


def ip4(value: IPv4Address | str | int) -> IPv4Address:
    """Any spelling of an IPv4 address as an ``IPv4Address``."""
    return value if isinstance(value, IPv4Address) else IPv4Address(value)


def ip4_int(value: IPv4Address | str | int) -> int:
    """Any spelling of an IPv4 address as a 32-bit integer (the stack's internal form)."""
    return value if isinstance(value, int) else int(IPv4Address(value))
