"""A SYN flood must not crowd established flows out of the port (issue 22).

Under the soak's full-size flood (75 000 SYN/s on a TAP), the flood and the legitimate flows share
the port's one receive queue, and what the queue cannot hold the kernel drops, theirs included:
legitimate requests were lost until the server gave up on them.  Two things let the stack drain
the queue faster than the flood fills it: a listener whose SYN queue overflowed stays stateless
(cookies) for ``FLOOD_HOLD`` seconds, and while the port is backlogged (the burst came back full),
the SYNs to such a listener beyond ``syncookie_burst_budget`` per burst are dropped before any
layer parses them, counted ``syn_shed``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import OUR_MAC, PEER_IP, PEER_MAC, make_core
from tcp_helpers import T0, build_tcp_frame, tcp_core, tcp_drops

from trio_yastack.dispatch import PollLoop
from trio_yastack.nic import memory_wire
from trio_yastack.stack import StackCore, TcpConfig
from trio_yastack.stack.tcp import FLOOD_HOLD
from trio_yastack.stack.wire import TcpOptions
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_RST, TCP_SYN

PORT = 80


def syn(sport: int, dport: int = PORT) -> bytes:
    return build_tcp_frame(sport, dport, sport * 1000, 0, TCP_SYN, options=TcpOptions(mss=1460))


def flooded(core: StackCore, now: float = T0) -> None:
    """Overflow the listener's SYN queue (``syn_queue_limit=2``): the third SYN gets a cookie."""
    for sport in (1001, 1002, 1003):
        core.ether_input(syn(sport), now)
    core.take_outbox()


def test_an_overflowing_syn_queue_marks_the_listener_flooded() -> None:
    core = tcp_core(syn_queue_limit=2)
    listener = core.tcp.listen(PORT)
    flooded(core)
    assert len(listener.embryonic) == 2
    assert core.statistics().tcp.syncookies_sent == 1
    assert listener.cookies_at == core.tcp.cookies_at == T0


def test_shed_syns_keeps_the_budget_and_counts_the_rest() -> None:
    core = tcp_core(syn_queue_limit=2, syncookie_burst_budget=3)
    core.tcp.listen(PORT)
    core.tcp.listen(81)  # a listener that was never flooded
    flooded(core)
    flood = [syn(2000 + i) for i in range(10)]
    others = [
        build_tcp_frame(3000, PORT, 1, 1, TCP_ACK),  # not a SYN
        build_tcp_frame(3001, PORT, 1, 1, TCP_SYN | TCP_ACK),  # not a SYN alone
        syn(3002, dport=81),  # its listener is not flooded
        syn(3003, dport=82),  # no listener: tcp_input answers it as before
    ]
    burst = flood[:5] + others + flood[5:]
    kept = core.tcp.shed_syns(burst, T0 + FLOOD_HOLD / 2)
    assert kept == flood[:3] + others
    assert tcp_drops(core) == {"syn_shed": 7}
    # nothing parsed them: no layer counted them received
    assert core.statistics().ether.received == 3


def test_no_shedding_once_the_flood_is_over() -> None:
    core = tcp_core(syn_queue_limit=2, syncookie_burst_budget=1)
    core.tcp.listen(PORT)
    flooded(core)
    burst = [syn(2000 + i) for i in range(5)]
    assert core.tcp.shed_syns(burst, T0 + FLOOD_HOLD) == burst
    assert "syn_shed" not in tcp_drops(core)


def test_a_flooded_listener_stays_stateless_for_flood_hold() -> None:
    """Was the soak's finding: a flood whose source answers our SYN-ACKs with RSTs emptied the
    SYN queue as fast as it filled it, so 86 000 of its SYNs each cost a whole connection."""
    core = tcp_core(syn_queue_limit=2)
    listener = core.tcp.listen(PORT)
    flooded(core)
    for sport in (1001, 1002):  # the flood's source resets the half-open connections
        core.ether_input(build_tcp_frame(sport, PORT, sport * 1000 + 1, 0, TCP_RST), T0 + 0.1)
    assert not listener.embryonic
    stats = core.statistics().tcp
    core.ether_input(syn(4000), T0 + FLOOD_HOLD - 0.1)
    assert not listener.embryonic  # a cookie, no state
    assert core.statistics().tcp.syncookies_sent == stats.syncookies_sent + 1
    core.ether_input(syn(4001), T0 + FLOOD_HOLD + 0.1)
    assert len(listener.embryonic) == 1  # the flood is over: the SYN queue again
    assert core.statistics().tcp.syncookies_sent == stats.syncookies_sent + 1


async def test_the_poll_loop_sheds_only_while_the_port_is_backlogged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bursts of 8 with a budget of 2: the two full bursts keep 2 SYNs each, the last one (not
    full: nothing waits behind it) keeps all four."""
    port, peer = memory_wire(macs=(str(OUR_MAC), str(PEER_MAC)), max_burst=8)
    core = make_core(tcp=TcpConfig(syn_queue_limit=2, syncookie_burst_budget=2))
    core.arp._learn(int(PEER_IP), bytes(PEER_MAC), 0.0)
    core.tcp.listen(PORT)
    flooded(core, trio.current_time())
    cookies = core.statistics().tcp.syncookies_sent
    peer.tx_burst(0, [syn(5000 + i) for i in range(20)])
    async with trio.open_nursery() as nursery:
        await nursery.start(PollLoop(core, port, burst=8).run)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert tcp_drops(core) == {"syn_shed": 12}
    assert core.statistics().tcp.syncookies_sent == cookies + 8
    syn_acks = [f for f in peer.rx_burst(0, 64) if len(f) >= 54 and f[47] == TCP_SYN | TCP_ACK]
    assert len(syn_acks) == 8


@pytest.mark.parametrize("budget", [0, 1])
def test_a_budget_of_zero_sheds_every_syn_to_a_flooded_listener(budget: int) -> None:
    core = tcp_core(syn_queue_limit=2, syncookie_burst_budget=budget)
    core.tcp.listen(PORT)
    flooded(core)
    burst = [syn(6000 + i) for i in range(4)]
    assert core.tcp.shed_syns(burst, T0) == burst[:budget]
    assert tcp_drops(core) == {"syn_shed": 4 - budget}
