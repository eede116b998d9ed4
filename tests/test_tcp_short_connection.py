"""A short connection's timers: each connection keeps one live entry in the core's timer heap.

``_arm`` pushes a new entry when a deadline moves earlier (the response's retransmission timer,
after the SYN-ACK's one second); the entry it supersedes is cancelled then, not left to fire as
a no-op a second later holding the connection.  Timing is unchanged: the timers still fire at
their deadlines (``test_tcp_timers.py``), and a superseded entry never did anything.
"""

from __future__ import annotations

import hashlib
import struct

from helpers import PEER_IP
from tcp_helpers import ACK, FIN, OUR_PORT, PEER_PORT, PSH, SYN, T0, Peer, check_tcp, tcp_core

from trio_yastack.stack import key6
from trio_yastack.stack.tcp._output import window_shift_for

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nHello, world!"


def test_a_closed_connection_leaves_no_live_entry_in_the_timer_heap() -> None:
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core)
    [synack] = peer.send(SYN, now=T0)  # its retransmission timer: T0 + 1 s
    check_tcp(synack, flags=SYN | ACK)
    timers = core.timers
    assert len(timers) == 1
    assert peer.send(ACK | PSH, GET, now=T0 + 0.01) == []
    conn = listener.accept()
    assert conn is not None and conn.receive(1000, T0 + 0.01) == GET
    conn.send(RESPONSE, T0 + 0.01)  # the response's timer, earlier: it supersedes the SYN-ACK's
    assert conn.t_rexmt < T0 + 1
    assert len(timers) == 1  # one live entry per connection
    conn.close(T0 + 0.01)
    peer.receive()
    [last] = peer.send(ACK | FIN, now=T0 + 0.02)
    check_tcp(last, flags=ACK)
    assert core.tcp.time_wait and not core.tcp.connections
    assert len(timers) == 1  # only the TIME_WAIT records' one entry
    # and nothing in the heap holds the connection any more
    held = [entry for entry in timers._heap if getattr(entry[2].callback, "__self__", None) is conn]
    assert all(entry[2].cancelled for entry in held)
    # the stale entries go when the heap is rebuilt or reaches them; nothing fires for them
    assert core.run_timers(T0 + 1.5) == 0 and core.take_outbox() == []
    assert (OUR_PORT, int(PEER_IP), PEER_PORT) in core.tcp.time_wait


def test_many_short_connections_keep_the_heap_small() -> None:
    """Cancelled entries are purged in bulk: the heap stays bounded by the live timers, not by
    a second's worth of connections' SYN-ACK entries."""
    core = tcp_core()
    listener = core.tcp.listen(OUR_PORT, 1024)
    now = T0
    for i in range(500):
        peer = Peer(core, port=20000 + i)
        peer.send(SYN, now=now)
        peer.send(ACK | PSH, GET, now=now)
        conn = listener.accept()
        assert conn is not None
        conn.receive(1000, now)
        conn.send(RESPONSE, now)
        conn.close(now)
        peer.receive()
        peer.send(ACK | FIN, now=now)
        core.run_timers(now)
        now += 0.001  # 500 connections within half a second: their SYN-ACK entries not yet due
    assert len(core.tcp.time_wait) == 500 and not core.tcp.connections
    assert len(core.timers) == 1
    assert len(core.timers._heap) <= 2 * 64 + 2  # was 500: one stale entry per connection


def test_the_pair_hash_from_a_copied_keyed_hash_is_the_keyed_hash_of_the_pair() -> None:
    """``_pair_hash`` hashes a copy of a BLAKE2s object keyed once per layer: the same 64 bits
    as keying a new one per connection (IPv4 and IPv6 pairs), and a new pair is hashed anew."""
    layer = tcp_core(seed=9).tcp
    key = layer._isn_key
    peer6 = key6(0x2001_0002 << 96 | 1, 0x2001_0002 << 96 | 2)
    for pair, data in [
        ((80, 0xC612_0001, 40000), struct.pack("!HIH", 80, 0xC612_0001, 40000)),
        ((443, peer6, 50000), struct.pack("!H33sH", 443, peer6.to_bytes(33, "big"), 50000)),
    ]:
        expected = int.from_bytes(hashlib.blake2s(data, key=key, digest_size=8).digest(), "big")
        assert layer._pair_hash(*pair) == expected
    assert layer._pair_hash(80, 0xC612_0001, 40001) != layer._pair_hash(80, 0xC612_0001, 40000)


def test_the_window_shift_offered_is_remembered_per_buffer_size() -> None:
    assert [window_shift_for(n) for n in (0xFFFF, 0x10000, 0x1FFFE, 0x1FFFF, 1 << 30)] == [0, 1, 1, 2, 14]
    assert window_shift_for(256 * 1024) == 3
