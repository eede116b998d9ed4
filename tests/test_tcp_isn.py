"""RFC 6528 initial sequence numbers: a 4-microsecond clock plus a keyed hash of the 4-tuple."""

from __future__ import annotations

from helpers import PEER_IP, make_core


def test_isn_follows_a_four_microsecond_clock() -> None:
    layer = make_core(seed=5).tcp
    first = layer.initial_sequence_number(1000, int(PEER_IP), 80, 0.0)
    assert layer.initial_sequence_number(1000, int(PEER_IP), 80, 1.0) == (first + 250_000) & 0xFFFFFFFF
    assert layer.initial_sequence_number(1000, int(PEER_IP), 80, 0.0) == first


def test_isn_separates_connections_and_stacks() -> None:
    layer = make_core(seed=5).tcp
    first = layer.initial_sequence_number(1000, int(PEER_IP), 80, 0.0)
    assert layer.initial_sequence_number(1001, int(PEER_IP), 80, 0.0) != first
    assert layer.initial_sequence_number(1000, int(PEER_IP), 81, 0.0) != first
    # another stack instance has another secret (a seeded one here, for repeatability)
    assert make_core(seed=6).tcp.initial_sequence_number(1000, int(PEER_IP), 80, 0.0) != first
    assert make_core(seed=5).tcp.initial_sequence_number(1000, int(PEER_IP), 80, 0.0) == first


def test_connect_uses_the_isn_source() -> None:
    core = make_core(seed=5)
    core.tcp.isn_source = lambda local_port, remote_ip, remote_port, now: 0x1_FFFF_FFF0  # masked to 32 bits
    assert core.tcp.connect(int(PEER_IP), 80, 0.0).iss == 0xFFFFFFF0
