"""The SYN and SYN-ACK packed in place (``_send_syn_packed``) against the general builder.

``_send_syn`` packs the header and the four options every Linux peer asks for (MSS,
SACK-permitted, timestamps, window scale) in one ``pack_into``; any other set of options still
goes through ``_send_segment`` with a :class:`TcpOptions`.  These tests hold the packed frame to
the general builder's byte for byte -- over IPv4 and IPv6, active and passive, across MTUs,
receive buffers (window shifts 0-14) and timestamps near 2**32 -- and check which path is taken.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import PEER_IP
from tcp_helpers import FIN, OUR_PORT, PEER_PORT, PSH, SYN, T0, Peer, check_tcp, seq_add, tcp_core
from test_stack_ipv6 import A, B, exchange, pair

from trio_yastack.nic.tap import complete_checksum
from trio_yastack.stack import OffloadPacket
from trio_yastack.stack.tcp import TcpConnection, _output
from trio_yastack.stack.tcp._states import SYN_SENT
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_SYN, TcpOptions

BUFFERS = [1024, 0xFFFF, 0x10000, 256 * 1024, 1 << 20, 1 << 30]


def general_syn(conn: TcpConnection, now: float) -> None:
    """The SYN or SYN-ACK as ``_send_syn`` built every one before it was packed in place."""
    config = conn.config
    ts = (int(now * 1000) + conn.ts_offset) & 0xFFFFFFFF
    active = conn.state == SYN_SENT
    offer_scale = config.window_scaling and (active or bool(conn.snd_scale or conn.rcv_scale))
    offer_timestamps = config.timestamps if active else conn.ts_on
    options = TcpOptions(
        mss=conn.core.mtu - conn.IP_TCP_HEADERS,
        window_scale=conn.rcv_scale if offer_scale else None,
        sack_permitted=config.sack if active else conn.sack_on,
        timestamps=(ts, 0 if active else conn.ts_recent) if offer_timestamps else None,
    )
    conn._send_segment(conn.iss, TCP_SYN | (0 if active else TCP_ACK), b"", now, syn_options=options)


def fields(conn: TcpConnection) -> dict[str, Any]:
    return {name: getattr(conn, name) for name in ("rcv_adv", "last_ack_sent", "ack_now", "segs_unacked")}


def both_ways(conn: TcpConnection, now: float) -> tuple[bytes, bytes]:
    """The general frame and the packed one, sent from the same state (IPv4's ident rewound)."""
    core = conn.core
    core.take_outbox()
    ident = core.ip_layer.ident
    before = fields(conn)
    general_syn(conn, now)
    [general] = core.take_outbox()
    after = fields(conn)
    core.ip_layer.ident = ident
    for name, value in before.items():
        setattr(conn, name, value)
    active = conn.state == SYN_SENT
    conn._send_syn_packed(
        TCP_SYN | (0 if active else TCP_ACK), 0 if active else conn.ts_recent,
        (int(now * 1000) + conn.ts_offset) & 0xFFFFFFFF, now,
    )  # fmt: skip
    [packed] = core.take_outbox()
    assert fields(conn) == after
    return bytes(general), bytes(packed)


@pytest.mark.parametrize("mtu", [576, 1500, 9000, 65535])
@pytest.mark.parametrize("buffer", BUFFERS)
@pytest.mark.parametrize("ts0", [0, 0xFFFF_FFF0])
def test_a_passive_syn_ack_packed_in_place_is_the_general_one(mtu: int, buffer: int, ts0: int) -> None:
    core = tcp_core(mtu=mtu, receive_buffer=buffer)
    core.tcp.listen(OUR_PORT)
    peer = Peer(core, ts0=ts0)
    [synack] = peer.send(SYN, now=T0)
    check_tcp(synack, flags=SYN | TCP_ACK)
    conn = core.tcp.connections[(OUR_PORT, int(PEER_IP), PEER_PORT)]
    general, packed = both_ways(conn, T0 + 0.25)
    assert packed == general
    conn.ts_offset = (1 << 32) - int(T0 * 1000) - 100  # our timestamp clock at 2**32 - 100 at T0
    general, packed = both_ways(conn, T0 + 0.25)
    assert packed == general


@pytest.mark.parametrize("mtu", [1500, 65535])
@pytest.mark.parametrize("buffer", BUFFERS)
def test_an_active_syn_packed_in_place_is_the_general_one(mtu: int, buffer: int) -> None:
    core = tcp_core(mtu=mtu, receive_buffer=buffer)
    conn = core.tcp.connect(int(PEER_IP), PEER_PORT, T0, local_port=OUR_PORT)
    general, packed = both_ways(conn, T0 + 1.0)
    assert packed == general


@pytest.mark.parametrize("active", [False, True])
def test_over_ipv6_the_packed_syn_is_the_general_one(active: bool) -> None:
    kernel, ours = pair()
    kernel.tcp.listen6(80)
    if active:
        conn = ours.tcp.connect6(A, 80, 0.0)
    else:
        ours.tcp.listen6(80)
        kernel.tcp.connect6(B, 80, 0.0)
        [syn] = kernel.take_outbox()
        ours.ether_input(bytes(syn), 0.0)
        [conn] = [c for c in ours.tcp.connections.values() if c.local_port == 80]
    general, packed = both_ways(conn, 0.5)
    assert packed == general
    kernel.ether_input(packed, 0.5)  # and the handshake completes on it
    exchange(kernel, ours, 0.5)
    assert conn.state == 4  # ESTABLISHED


@pytest.mark.parametrize(
    ("peer", "packed"),
    [
        ({}, True),  # a Linux peer: MSS, SACK-permitted, timestamps, window scale
        ({"wscale": None}, False),
        ({"sack": False}, False),
        ({"ts": False}, False),
        ({"mss": None, "wscale": None, "sack": False, "ts": False}, False),
    ],
)
def test_the_packed_path_answers_only_a_syn_with_every_option(
    monkeypatch: pytest.MonkeyPatch, peer: dict[str, Any], packed: bool
) -> None:
    calls: list[int] = []
    original = TcpConnection._send_syn_packed

    def spy(conn: TcpConnection, *args: Any) -> None:
        calls.append(1)
        original(conn, *args)

    monkeypatch.setattr(TcpConnection, "_send_syn_packed", spy)
    core = tcp_core()
    core.tcp.listen(OUR_PORT)
    p = Peer(core, **peer)
    [synack] = p.send(SYN, now=T0)
    assert bool(calls) == packed
    options = synack.options
    assert options.mss == 1460
    assert (options.window_scale is not None) == ("wscale" not in peer)
    assert options.sack_permitted == ("sack" not in peer)
    assert (options.timestamps is not None) == ("ts" not in peer)
    # whichever path, the peer's ACK completes the handshake
    assert p.send(TCP_ACK, now=T0 + 0.05) == []
    assert core.tcp.connections[(OUR_PORT, int(PEER_IP), PEER_PORT)].state == 4


# -- every IPv4 segment's frame headers in one step (``_headers_predicted``), on and off ---------

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nHello, world!"


def close_exchange(fast: bool, offload: bool, abort: bool, peer_options: dict[str, Any]) -> tuple[Any, ...]:
    """A ``Connection: close`` request over one core: SYN, SYN-ACK, the request, the response
    and our FIN, the client's FIN and our last ACK (or a reset instead of the FIN); then a
    segment out of order (answered with SACK when agreed).  Returns every frame and counter."""
    core = tcp_core(seed=5)
    core.fast_path = fast
    core.tx_checksum_offload = offload
    raw: list[tuple[str, bytes]] = []  # every frame as it left, offloaded ones as they were
    take = core.take_outbox

    def taking() -> list[bytes | bytearray]:
        frames = take()
        raw.extend((type(frame).__name__, bytes(frame)) for frame in frames)
        return [complete_checksum(f) if isinstance(f, OffloadPacket) else f for f in frames]

    core.take_outbox = taking  # type: ignore[method-assign]  # the peer reads completed frames
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core, **peer_options)
    peer.send(SYN, now=T0)
    peer.send(TCP_ACK | PSH, GET, now=T0 + 0.01)
    conn = listener.accept()
    assert conn is not None
    assert conn.receive(1000, T0 + 0.01) == GET
    conn.send(RESPONSE, T0 + 0.01)
    if abort:
        conn.abort(T0 + 0.01)
    else:
        conn.close(T0 + 0.01)
        peer.receive()
        peer.send(TCP_ACK | FIN, now=T0 + 0.02)
    # a second connection: data out of order, then the hole filled
    other = Peer(core, port=PEER_PORT + 1, **peer_options)
    other.send(SYN, now=T0 + 0.03)
    other.send(TCP_ACK, now=T0 + 0.03)
    other.send(TCP_ACK, b"y" * 100, now=T0 + 0.04, seq=seq_add(other.snd_nxt, 100))
    other.send(TCP_ACK, b"x" * 100, now=T0 + 0.05)
    assert len(raw) == len(peer.received) + len(other.received) >= 6
    return raw, core.statistics()


@pytest.mark.parametrize("offload", [False, True], ids=["checksum", "checksum-offload"])
@pytest.mark.parametrize("abort", [False, True], ids=["fin", "reset"])
@pytest.mark.parametrize(
    "peer_options", [{}, {"ts": False}, {"sack": False, "wscale": None}], ids=["linux", "no-ts", "plain"]
)
def test_frames_with_their_headers_predicted_are_the_general_ones(
    monkeypatch: pytest.MonkeyPatch, offload: bool, abort: bool, peer_options: dict[str, Any]
) -> None:
    taken: list[bool] = []
    original = _output._headers_predicted

    def counting(*args: Any) -> bool:
        taken.append(original(*args))
        return taken[-1]

    monkeypatch.setattr(_output, "_headers_predicted", counting)
    fast = close_exchange(True, offload, abort, peer_options)
    assert any(taken)
    del taken[:]
    slow = close_exchange(False, offload, abort, peer_options)
    assert taken == []
    assert fast == slow
