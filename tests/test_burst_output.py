"""Per-burst output: inside ``begin_burst``..``end_burst`` a connection sends once, at the end.

The poll loop brackets every ``rx_burst`` this way, so many in-order data segments of one burst
cost one ACK (what GRO gives Linux) and many ACKs one pass of ``tcp_output``.  Outside a burst
(direct ``ether_input`` calls) every segment is answered at once, as before.
"""

from __future__ import annotations

import itertools

from tcp_helpers import T0, check_tcp, open_active, open_passive, seq_add, tcp_core

from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_PSH


def test_data_segments_of_one_burst_get_one_ack() -> None:
    """Ten full segments in one burst: nothing is sent until the burst ends, then one ACK for
    all of them; the same ten outside a burst get an ACK for every second segment."""
    core = tcp_core()
    _listener, conn, peer = open_passive(core)
    now = T0 + 1
    core.begin_burst()
    for _ in range(10):
        frame = peer.frame(TCP_ACK, b"x" * 1448, now=now)
        peer.snd_nxt = seq_add(peer.snd_nxt, 1448)
        core.ether_input(frame, now)
    assert core.outbox == []  # held until the burst is in
    core.end_burst(now)
    [ack] = peer.receive()
    check_tcp(ack, flags=TCP_ACK, ack=peer.snd_nxt)
    assert len(conn.rcvbuf) == 14480

    acks = []
    for _ in range(10):
        acks += peer.send(TCP_ACK, b"y" * 1448, now=now)
    assert len(acks) == 5 and acks[-1].ack == peer.snd_nxt


def test_acks_of_one_burst_cost_one_output_pass() -> None:
    """Acknowledgements arriving in one burst release new data once, at the burst's end, and as
    much of it as the opened window allows; the segments are the same ones per-ACK output
    would have sent."""
    sender = tcp_core()
    conn, peer = open_active(sender, window=0xFFFF, wscale=7)
    now = T0 + 1
    conn.send(b"z" * 100_000, now)
    first = peer.receive()
    assert first and all(len(s.payload) <= 1448 for s in first)
    in_flight_end = peer.rcv_nxt
    sender.begin_burst()
    for seg in first[:6]:
        frame = peer.frame(TCP_ACK, now=now, ack=seq_add(seg.seq, len(seg.payload)))
        sender.ether_input(frame, now)
        assert sender.outbox == []
    sender.end_burst(now)
    released = peer.receive()
    assert released, "the ACKs opened the congestion window: new data must follow"
    assert released[0].seq == in_flight_end
    for before, after in itertools.pairwise(released):
        assert after.seq == seq_add(before.seq, len(before.payload))
    assert all(s.flags & ~TCP_PSH == TCP_ACK for s in released)


def test_end_burst_without_pending_output_sends_nothing() -> None:
    """A burst that changed no connection sends nothing at its end."""
    core = tcp_core()
    open_passive(core)
    core.begin_burst()
    core.end_burst(T0 + 1)
    assert core.outbox == [] and not core.in_burst
