"""SYN cookies: a listener that keeps no state for a half-open connection (RFC 4987 section 3.6).

When the SYN queue is full, ``tcp_input`` answers a SYN with a SYN-ACK whose initial sequence
number *is* the state: a keyed MAC of the connection's identity and of a coarse time counter,
plus the few SYN options worth keeping.  The ACK that completes the handshake acknowledges
``cookie + 1``; if :meth:`SynCookies.check` recognises ``ack - 1`` as a cookie it made, the
connection is created from what the cookie carries, as if the SYN had been queued all along.

RFC 4987 section 3.6 names the price.  Only what fits in 32 bits survives: the MSS is rounded
down to one of eight values, the window scale and SACK-permitted survive as bits, everything
else the SYN said (timestamps, the exact MSS) is lost.  The listener cannot retransmit a SYN-ACK
it does not remember, and a client whose third segment is lost is not heard from again unless
it sends data.  The caller should therefore use cookies only while the SYN queue overflows, as
Linux and FreeBSD do.

How the two kernels fit options in, and what this module takes from each:

* FreeBSD (``tcp_syncache.c``, ``syncookie_generate``) puts them in the clear next to a 24-bit
  truncated MAC: a 3-bit MSS index into a table of common MSS values (rounded down), a 3-bit
  index into a table of window scales, a SACK bit and an odd/even bit choosing one of two
  rotating secrets.  We keep its layout and its MSS table (its 1452 traded for a jumbo 8960),
  but give the window scale 4 bits so that 0..14 and "no option" all survive exactly, and
  replace the odd/even secret with a time counter inside the MAC.
* Linux (``net/ipv4/syncookies.c``) keeps an 8-bit counter of minutes in the ISN, hides a 2-bit
  MSS index under a 24-bit hash, and moves window scale, SACK and ECN into the low bits of the
  timestamp it sends, so they survive only when the client uses timestamps.  We take its time
  counter (``tcp_cookie_time`` ticks every 60 s; ours every 64 s) inside the MAC and its
  acceptance rule (a counter fewer than ``MAX_SYNCOOKIE_AGE`` = 2 ticks old, our default), and
  carry the options in the ISN so that they survive without timestamps, at the price of 2 MAC
  bits.

The cookie, bits numbered from the least significant (the ISN is sent big-endian, so the MAC
leads on the wire)::

     31                                             10  9   8 7     4 3   1   0
    +-------------------------------------------------+-------+-------+-----+---+
    |                  MAC (22 bits)                  |   T   |  WS   | MSS | S |
    +-------------------------------------------------+-------+-------+-----+---+

    bits 31..10  MAC   the top 22 bits of BLAKE2s(key=secret) over local address, local port,
                       remote address, remote port, client ISN, the *full* time counter and
                       bits 7..0 below; any change to any of them fails the check
    bits  9..8   T     the time counter (floor(now / 64 s)) mod 4: it tells check() which full
                       counter to recompute the MAC with
    bits  7..4   WS    the client's window scale shift, 0..14; 15 = the SYN had no WS option
    bits  3..1   MSS   index into MSS_TABLE of the largest entry <= the client's MSS
    bit   0      S     the SYN carried SACK-permitted

A forger who does not know the secret passes the MAC with probability 2**-22 per guess (FreeBSD's
comment works the same arithmetic for its 24 bits): blind, it needs about 2.9 million ACKs for
an even chance of one spoofed connection.  The option and time bits are in the clear; they tell
the client only what it sent itself, and roughly what time it is.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["COUNTER_PERIOD", "MSS_TABLE", "CookieOptions", "SynCookies", "mss_index"]

#: The MSS a cookie can carry, ascending.  FreeBSD's table (common MSS values from "An Analysis of
#: TCP Maximum Segment Sizes", Alcock and Nelson, 2011) with its 1452 (PPPoE) traded for a jumbo
#: 8960 (9000 - 40).  A client's MSS is rounded down to an entry, so we never send more than it
#: asked for (except below 216, see :func:`mss_index`).
MSS_TABLE: tuple[int, ...] = (216, 536, 1200, 1360, 1400, 1440, 1460, 8960)

#: Seconds per tick of the time counter (Linux's ``tcp_cookie_time`` ticks every 60 s).
COUNTER_PERIOD = 64.0

_MASK32 = 0xFFFF_FFFF
_MAX_WINDOW_SCALE = 14  # RFC 7323 section 2.3: a larger shift is used as 14

# Field positions, under the diagram in the module docstring.
_SACK_BIT = 0x1
_MSS_SHIFT, _MSS_MASK = 1, 0x7
_WS_SHIFT, _WS_MASK, _WS_NONE = 4, 0xF, 0xF
_OPTION_MASK = 0xFF  # bits 7..0: S, MSS, WS
_TIME_SHIFT, _TIME_BITS = 8, 2
_TIME_MASK = (1 << _TIME_BITS) - 1
_MAC_SHIFT, _MAC_BITS = 10, 22
_DIGEST_BITS = 32

# What the MAC covers: local address, local port, remote address, remote port, client ISN, full
# time counter (signed: ``now`` comes from the caller's clock, whatever its origin), option bits.
_MAC_INPUT = struct.Struct("!IHIHIqB")
#: the same over IPv6 addresses (17 bytes each; 33 for the remote one: the TCP layer's key, key6)
_MAC_INPUT6 = struct.Struct("!17sH33sHIqB")


@dataclass(frozen=True, slots=True)
class CookieOptions:
    """The SYN options a cookie carries: what ``tcp_input`` needs to build the connection."""

    mss: int
    #: The client's shift count (0..14), or None when the SYN had no window scale option (then
    #: RFC 7323 section 2.2 says neither side scales).
    window_scale: int | None
    sack_permitted: bool


class SynCookies:
    """Makes and checks SYN cookies under one secret.  Sans-IO: the caller passes ``now`` (seconds
    of a monotonic clock; the same clock for make and check) and the secret, so that a test is
    deterministic and a stack can share a secret across its cores (a cookie made by one core is
    then accepted by whichever core the ACK is steered to).

    A cookie is accepted while its time counter is less than ``lifetime // 64`` ticks old, as in
    Linux: never at or after ``lifetime`` seconds, but as early as ``lifetime // 64 * 64 - 64`` seconds
    when it was made just before a tick (64 to 128 s for the default 128).  A new secret
    invalidates every cookie in flight, so keep one instance for the life of the listener.
    """

    __slots__ = ("_mac", "_max_age", "lifetime")

    def __init__(self, secret: bytes, *, lifetime: float = 128.0) -> None:
        if not isinstance(secret, bytes | bytearray | memoryview):
            raise TypeError(f"secret must be bytes, not {type(secret).__name__}")
        key = bytes(secret)
        if not 16 <= len(key) <= 32:
            raise ValueError(f"secret must be 16 to 32 bytes (a BLAKE2s key), got {len(key)}")
        # At least one tick of the counter, and no more ticks than the T field tells apart (four);
        # written so that NaN fails too.
        if not COUNTER_PERIOD <= lifetime < COUNTER_PERIOD * (_TIME_MASK + 2):
            raise ValueError(
                f"lifetime must be at least {COUNTER_PERIOD:g} s and below "
                f"{COUNTER_PERIOD * (_TIME_MASK + 2):g} s, got {lifetime!r}"
            )
        max_age = int(lifetime // COUNTER_PERIOD)  # ticks of age accepted: 0 .. max_age - 1
        self.lifetime = float(lifetime)
        self._max_age = max_age
        # Keyed once; each make/check copies the keyed state (cheaper than keying again) and runs
        # one BLAKE2s compression over the 25-byte input.  The personalisation keeps these digests
        # apart from any other use of the same secret.
        self._mac = hashlib.blake2s(key=key, digest_size=_DIGEST_BITS // 8, person=b"yasyncck")

    def make(
        self,
        local_ip: int,
        local_port: int,
        remote_ip: int,
        remote_port: int,
        client_isn: int,
        options: CookieOptions,
        now: float,
    ) -> int:
        """Our ISN for the SYN-ACK answering a SYN with sequence number ``client_isn``.

        The MSS is rounded down to an entry of :data:`MSS_TABLE` (to the smallest if below it),
        and a window scale above 14 is taken as 14 (RFC 7323 section 2.3); the connection must
        then be built from what :meth:`check` returns, not from the SYN.
        """
        option_bits = _encode_options(options)
        counter = int(now // COUNTER_PERIOD)
        mac = self._digest(local_ip, local_port, remote_ip, remote_port, client_isn, counter, option_bits)
        return (mac << _MAC_SHIFT) | ((counter & _TIME_MASK) << _TIME_SHIFT) | option_bits

    def check(
        self,
        local_ip: int,
        local_port: int,
        remote_ip: int,
        remote_port: int,
        client_isn: int,
        cookie: int,
        now: float,
    ) -> CookieOptions | None:
        """The options of the SYN that ``cookie`` answered, or None if we did not make it (for
        this 4-tuple and ISN, under this secret) or its counter is too old.

        The completing ACK carries ``seq = client_isn + 1`` and ``ack = cookie + 1``: pass
        ``seq - 1`` and ``ack - 1``.  Both are taken modulo 2**32, so ``-1`` for a sequence
        number of 0 works as well as ``0xFFFFFFFF``.
        """
        cookie &= _MASK32
        now_counter = int(now // COUNTER_PERIOD)
        # The most recent counter, not after now, whose low bits are T.  A cookie from a later
        # counter (a clock that went back) decodes to an older one, and its MAC fails.
        age = (now_counter - (cookie >> _TIME_SHIFT)) & _TIME_MASK
        if age >= self._max_age:
            return None
        option_bits = cookie & _OPTION_MASK
        mac = self._digest(
            local_ip, local_port, remote_ip, remote_port, client_isn, now_counter - age, option_bits
        )
        # Both sides are ints below 2**30, one CPython digit, so != takes the same time whichever
        # bits differ: no timing oracle for the MAC.
        if mac != cookie >> _MAC_SHIFT:
            return None
        ws = (option_bits >> _WS_SHIFT) & _WS_MASK
        return CookieOptions(
            mss=MSS_TABLE[(option_bits >> _MSS_SHIFT) & _MSS_MASK],
            window_scale=None if ws == _WS_NONE else ws,
            sack_permitted=bool(option_bits & _SACK_BIT),
        )

    def _digest(
        self,
        local_ip: int,
        local_port: int,
        remote_ip: int,
        remote_port: int,
        client_isn: int,
        counter: int,
        option_bits: int,
    ) -> int:
        """The top 22 bits of the keyed BLAKE2s over the connection's identity and the cookie's
        other fields.  An address beyond 32 bits is an IPv6 one (the remote one up to 257 bits:
        the TCP layer's key, ``key6``), hashed whole; a port beyond 16 bits raises struct.error."""
        h = self._mac.copy()
        if local_ip > _MASK32 or remote_ip > _MASK32:
            local, remote = local_ip.to_bytes(17, "big"), remote_ip.to_bytes(33, "big")
            data = _MAC_INPUT6.pack(
                local, local_port, remote, remote_port, client_isn & _MASK32, counter, option_bits
            )
        else:
            data = _MAC_INPUT.pack(
                local_ip, local_port, remote_ip, remote_port, client_isn & _MASK32, counter, option_bits
            )
        h.update(data)
        return int.from_bytes(h.digest(), "big") >> (_DIGEST_BITS - _MAC_BITS)


def mss_index(mss: int) -> int:
    """Index of the largest :data:`MSS_TABLE` entry <= ``mss``, or 0 below them all: like FreeBSD,
    a client asking for less than 216 bytes gets 216 (every IPv4 host must reassemble 576-byte
    datagrams, RFC 1122 section 3.3.2, which is why RFC 9293 section 3.7.1 defaults the MSS to 536)."""
    return max(bisect_right(MSS_TABLE, mss) - 1, 0)


def _encode_options(options: CookieOptions) -> int:
    """Bits 7..0 of the cookie for ``options``."""
    ws = options.window_scale
    if ws is None:
        ws_bits = _WS_NONE
    elif ws >= 0:
        ws_bits = min(ws, _MAX_WINDOW_SCALE)
    else:
        raise ValueError(f"window_scale must be a shift count >= 0 or None, got {ws}")
    return (ws_bits << _WS_SHIFT) | (mss_index(options.mss) << _MSS_SHIFT) | int(options.sack_permitted)
