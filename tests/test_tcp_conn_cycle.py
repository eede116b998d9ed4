"""A short connection's cycle (SYN, the handshake's ACK with a request, the response and our
FIN, the peer's FIN+ACK, TIME_WAIT) costs the stack less without changing a frame or a counter:
each shortcut here is held to the general path it skips, side by side."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import check_accounting
from tcp_helpers import OUR_PORT, T0, Peer, seq_add, tcp_core
from test_tcp_fastpath import connection_state

from trio_yastack.stack import StackCore
from trio_yastack.stack.tcp._layer import TcpLayer
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


def _cycle(monkeypatch: pytest.MonkeyPatch, fast: bool) -> tuple[StackCore, list[Any]]:
    """One connection served as the runtime serves it (bursts, autocorking), curl-like peer:
    what left after each step, the connection's fields after the handshake's burst, counters."""
    monkeypatch.setattr(TcpLayer, "initial_sequence_number", lambda self, *args: 0xFFFF_FFF0)
    core = tcp_core(seed=5)
    core.fast_path = fast
    core.autocork = True
    listener = core.tcp.listen(OUR_PORT)
    peer = Peer(core, isn=0xFFFF_FF00)
    seen: list[Any] = [peer.send(TCP_SYN, now=T0)]
    now = T0 + 0.01
    ack = peer.frame(TCP_ACK, now=now)
    get = peer.frame(TCP_ACK | TCP_PSH, REQUEST, now=now)
    peer.snd_nxt = seq_add(peer.snd_nxt, len(REQUEST))
    core.begin_burst()
    core.ether_input_burst([ack, get], now)
    core.end_burst(now)
    conn = listener.accept()
    assert conn is not None
    seen.append(connection_state(conn))
    assert conn.receive(65536, now) == REQUEST
    conn.send(RESPONSE, now)
    conn.close(now)
    core.run_pending_output(now)
    out = [bytes(f) for f in core.take_outbox()]
    seen.append(out)
    peer.core.outbox = [*out]
    peer.receive()
    now += 0.01
    seen.append(peer.send(TCP_ACK | TCP_FIN, now=now))
    seen.append((len(core.tcp.time_wait), core.statistics()))
    return core, seen


def test_the_handshakes_ack_and_request_skip_the_layers_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ACK completing a passive open is a fast-path candidate whose connection is not yet
    ESTABLISHED: ``fast_input`` hands it to ``segment_arrives`` itself (ip_input and tcp_input's
    checks were the classifier's), and the request behind it in the burst is then predicted.
    Same frames, connection fields and counters as the Python path."""
    on_core, on = _cycle(monkeypatch, True)
    off_core, off = _cycle(monkeypatch, False)
    assert on == off
    assert on[4][0] == 1  # the pair in TIME_WAIT
    assert on_core.fast_path_segments == 2 and off_core.fast_path_segments == 0
    check_accounting(on_core)
    check_accounting(off_core)
