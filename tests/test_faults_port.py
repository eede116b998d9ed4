"""The fault-injecting port wrapper (nic/_faults.py) under trio's MockClock: each fault does what it
says, in both directions, bounded and counted, repeatable for a seed; its spec words; and a TCP
transfer between two stacks through it at the soak's setting, intact by SHA-256."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_yastack import open_stack
from trio_yastack._open_stack import open_port
from trio_yastack.nic import (
    SOAK_FAULTS,
    FaultOptions,
    FaultPort,
    FaultStatistics,
    MemoryPort,
    PcapWriter,
    Port,
    PortCapabilities,
    PortStatistics,
    memory_wire,
    parse_faults,
    split_fault_spec,
)
from trio_yastack.stack import ChecksumVerified, OffloadPacket
from trio_yastack.stack.wire import MacAddress

FRAME_LEN = 60


def frame(number: int) -> bytes:
    """A numbered 60-byte frame (the number in its first 4 bytes)."""
    return number.to_bytes(4, "big") + bytes(FRAME_LEN - 4)


def numbers(frames: Sequence[bytes]) -> list[int]:
    return [int.from_bytes(f[:4], "big") for f in frames]


def faulty_pair(options: FaultOptions) -> tuple[FaultPort, MemoryPort]:
    """A clean memory wire with one end behind ``options``: (the wrapped end, the other end)."""
    a, b = memory_wire()
    return FaultPort(a, options), b


async def drain(
    port: FaultPort | MemoryPort, *, until: float, step: float = 0.001
) -> list[tuple[float, bytes]]:
    """Everything ``port`` receives until trio time ``until``, with its arrival time."""
    got: list[tuple[float, bytes]] = []
    while trio.current_time() < until:
        for f in port.rx_burst(0, 64):
            got.append((trio.current_time(), f))
        with trio.move_on_at(min(until, trio.current_time() + step)):
            await port.wait_rx(0)
    return got


@asynccontextmanager
async def polled(port: FaultPort) -> AsyncIterator[None]:
    """``port`` driven as the poll loop drives it (idle ``wait_rx``, then ``rx_burst``), so its
    delayed transmissions leave on time."""
    async with trio.open_nursery() as nursery:

        async def loop() -> None:
            while True:
                await port.wait_rx(0)
                port.rx_burst(0, 64)

        nursery.start_soon(loop)
        yield
        nursery.cancel_scope.cancel()


def accounted(stats: FaultStatistics) -> bool:
    """Every frame offered is lost, dropped, delivered or still held (a copy adds one)."""
    return stats.offered + stats.duplicated == stats.lost + stats.queue_drops + stats.delivered + stats.held


async def test_without_faults_frames_pass_at_once_in_order(autojump_clock: trio.testing.MockClock) -> None:
    ours, peer = faulty_pair(FaultOptions())
    assert ours.tx_burst(0, [frame(i) for i in range(50)]) == 50
    assert numbers(peer.rx_burst(0, 64)) == list(range(50))
    peer.tx_burst(0, [frame(i) for i in range(50, 60)])
    assert numbers(ours.rx_burst(0, 64)) == list(range(50, 60))
    stats = ours.fault_statistics()
    assert stats["tx"] == FaultStatistics(offered=50, delivered=50)
    assert stats["rx"] == FaultStatistics(offered=10, delivered=10)


@pytest.mark.parametrize("direction", ["tx", "rx"])
async def test_loss_and_duplication_at_their_rates_and_counted(
    direction: str, autojump_clock: trio.testing.MockClock
) -> None:
    ours, peer = faulty_pair(FaultOptions(loss=0.1, duplicate=0.05, seed=3))
    sender, receiver = (ours, peer) if direction == "tx" else (peer, ours)
    got: list[int] = []
    for start in range(0, 4000, 32):
        sender.tx_burst(0, [frame(i) for i in range(start, start + 32)])
        got += numbers(receiver.rx_burst(0, 64))
    stats = ours.fault_statistics()[direction]
    assert stats.offered == 4000
    assert 300 < stats.lost < 500 and 120 < stats.duplicated < 280
    assert len(got) == 4000 - stats.lost + stats.duplicated == stats.delivered
    assert len(set(got)) == 4000 - stats.lost
    assert got == sorted(got)  # neither fault reorders
    assert accounted(stats)


async def test_delay_with_jitter_keeps_order_within_its_bounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, peer = faulty_pair(FaultOptions(delay=0.020, jitter=0.010, seed=1))
    start = trio.current_time()
    async with polled(ours), trio.open_nursery() as nursery:

        async def send() -> None:
            for i in range(200):
                ours.tx_burst(0, [frame(i)])
                await trio.sleep(0.0005)

        nursery.start_soon(send)
        got = await drain(peer, until=start + 0.2)
    assert numbers([f for _, f in got]) == list(range(200))  # jitter alone does not reorder
    sent_at = [start + 0.0005 * i for i in range(200)]
    delays = [at - sent for (at, _), sent in zip(got, sent_at, strict=True)]
    assert min(delays) >= 0.010 - 1e-9
    assert max(delays) <= 0.030 + 0.002  # the jitter's bound, plus the drain's step
    assert max(delays) - min(delays) > 0.010  # the jitter is there
    assert ours.fault_statistics()["tx"].held == 0


async def test_received_frames_delayed_and_the_wait_wakes_for_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, peer = faulty_pair(FaultOptions(delay=0.5))
    peer.tx_burst(0, [frame(1)])
    start = trio.current_time()
    assert ours.rx_burst(0, 8) == []  # taken from the inner port, held for 0.5 s
    assert ours.fault_statistics()["rx"].held == 1
    await ours.wait_rx(0)  # nothing more comes from the inner port: the wrapper's own release wakes it
    assert trio.current_time() - start == pytest.approx(0.5)
    assert numbers(ours.rx_burst(0, 8)) == [1]


async def test_delayed_transmit_leaves_on_the_idle_wait(autojump_clock: trio.testing.MockClock) -> None:
    """A delayed frame must leave even if the stack sends nothing more: the poll loop's idle
    ``wait_rx`` wakes at its time and hands it to the inner port."""
    ours, peer = faulty_pair(FaultOptions(delay=0.3))
    ours.tx_burst(0, [frame(7)])
    assert peer.rx_burst(0, 8) == []
    with trio.move_on_after(5):
        await ours.wait_rx(0)
    assert numbers(peer.rx_burst(0, 8)) == [7]


async def test_reordering_lets_later_frames_overtake(autojump_clock: trio.testing.MockClock) -> None:
    ours, peer = faulty_pair(FaultOptions(reorder=0.1, reorder_gap=0.005, seed=5))
    start = trio.current_time()
    async with polled(ours):
        for i in range(500):
            ours.tx_burst(0, [frame(i)])
            await trio.sleep(0.001)
        got = numbers([f for _, f in await drain(peer, until=start + 0.6)])
    stats = ours.fault_statistics()["tx"]
    assert sorted(got) == list(range(500))  # nothing lost or doubled
    assert 25 < stats.reordered < 80
    overtaken = sum(1 for x, y in itertools.pairwise(got) if x > y)
    assert 0 < overtaken <= stats.reordered


async def test_corruption_flips_one_bit_and_stays_detectable(autojump_clock: trio.testing.MockClock) -> None:
    ours, peer = faulty_pair(FaultOptions(corrupt=1.0, seed=2))
    # received, vouched for by the inner port: handed up as plain bytes, so the stack verifies it
    original = bytes(range(60))
    peer.tx_burst(0, [original])
    inner_rx = ours.inner.rx_burst

    def vouching_rx_burst(queue: int, max_n: int) -> list[bytes]:
        return [ChecksumVerified(f) for f in inner_rx(queue, max_n)]

    ours.inner.rx_burst = vouching_rx_burst  # type: ignore[method-assign]  # the inner port made one that vouches
    (damaged,) = ours.rx_burst(0, 8)
    assert damaged.__class__ is bytes
    assert bin(int.from_bytes(damaged, "big") ^ int.from_bytes(original, "big")).count("1") == 1
    # sent with a partial checksum: the flip lands in the IPv4 header, gso_size kept
    packet = OffloadPacket(100, gso_size=1448)
    packet[:] = bytes(range(100))
    ours.tx_burst(0, [packet])  # type: ignore[list-item]  # the stack's bytearray frames (poll loop note)
    (sent,) = peer.rx_burst(0, 8)
    diff = [i for i in range(100) if sent[i] != packet[i]]
    assert len(diff) == 1 and 14 <= diff[0] < 34
    assert ours.fault_statistics()["tx"].corrupted == ours.fault_statistics()["rx"].corrupted == 1


async def test_held_frames_are_bounded_and_the_excess_counted(autojump_clock: trio.testing.MockClock) -> None:
    ours, peer = faulty_pair(FaultOptions(delay=0.1, queue_limit=10))
    assert ours.tx_burst(0, [frame(i) for i in range(100)]) == 100
    stats = ours.fault_statistics()["tx"]
    assert (stats.held, stats.queue_drops) == (10, 90)
    await trio.sleep(0.2)
    ours.rx_burst(0, 1)  # any call releases what is due
    assert numbers(peer.rx_burst(0, 64)) == list(range(10))
    assert accounted(ours.fault_statistics()["tx"])


async def test_the_same_seed_does_the_same_harm(autojump_clock: trio.testing.MockClock) -> None:
    outcomes = []
    for _ in range(2):
        ours, peer = faulty_pair(replace(SOAK_FAULTS, seed=11))
        start = trio.current_time()
        async with polled(ours):
            for i in range(300):
                ours.tx_burst(0, [frame(i)])
                await trio.sleep(0.001)
            outcomes.append(numbers([f for _, f in await drain(peer, until=start + 0.5)]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] != list(range(300))


def test_spec_words() -> None:
    assert parse_faults("soak") == SOAK_FAULTS
    assert parse_faults("soak/seed:7") == replace(SOAK_FAULTS, seed=7)
    assert parse_faults("loss:0.05/dup:0.01/delay:0.02/jitter:0.01/limit:64") == FaultOptions(
        loss=0.05, duplicate=0.01, delay=0.02, jitter=0.01, queue_limit=64
    )
    assert split_fault_spec("tap:yas0,mtu=9000,faults=loss:0.1,queues=2") == (
        "tap:yas0,mtu=9000,queues=2",
        FaultOptions(loss=0.1),
    )
    assert split_fault_spec("tap:yas0,mtu=9000") == ("tap:yas0,mtu=9000", None)
    for bad, says in (
        ("lost:0.1", "'lost:0.1' is not key:value"),
        ("loss:lots", "bad value 'lots' for loss"),
        ("loss:1.5", "loss must be a probability"),
        ("delay:0.01/jitter:0.02", "jitter (0.02) must not exceed delay"),
        ("limit:0", "queue_limit must be >= 1"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_faults(bad)


def test_open_port_wraps_any_spec(tmp_path: Path) -> None:
    capture = tmp_path / "one.pcap"
    writer = PcapWriter(capture)
    writer.write(frame(1), 0.0)
    writer.close()
    port = open_port(f"pcap:{capture},faults=loss:0.5/seed:1")
    assert isinstance(port, FaultPort) and port.options == FaultOptions(loss=0.5, seed=1)
    port.close()


async def test_tcp_through_the_soak_path_is_intact(autojump_clock: trio.testing.MockClock) -> None:
    """Two stacks, one behind the soak's bad path in both directions (so each segment meets it
    once), 256 KiB each way: the bytes arrive intact and the stacks recovered what the path took."""
    a_port, b_port = memory_wire()
    faulty = FaultPort(a_port, replace(SOAK_FAULTS, seed=22))
    size = 256 * 1024
    payload = bytes((i * 7 + i // 251) & 0xFF for i in range(size))
    digests: dict[str, str] = {}
    async with (
        open_stack(faulty, ip="198.18.0.1/24", seed=1) as a,
        open_stack(b_port, ip="198.18.0.2/24", seed=2) as b,
    ):
        listener = b.tcp_listen(5000)

        async def pump(stream: trio.SocketStream, name: str) -> None:
            async def send() -> None:
                for offset in range(0, size, 16384):
                    await stream.send_all(payload[offset : offset + 16384])
                await stream.send_eof()

            digest = hashlib.sha256()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while data := await stream.receive_some(65536):
                    digest.update(data)
            digests[name] = digest.hexdigest()

        async def server() -> None:
            stream = await listener.accept()
            await pump(stream, "b")
            await stream.aclose()

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server)
                stream = await a.tcp_connect("198.18.0.2", 5000)
                await pump(stream, "a")
                await stream.aclose()
        stats = faulty.fault_statistics()
        tcp_a = a.statistics().tcp
    want = hashlib.sha256(payload).hexdigest()
    assert digests == {"a": want, "b": want}
    assert stats["tx"].lost > 0 and stats["rx"].lost > 0
    assert stats["tx"].reordered > 0 and stats["rx"].reordered > 0
    assert accounted(stats["tx"]) and accounted(stats["rx"])
    assert tcp_a.retransmitted_segments > 0  # what the path lost, A sent again


def test_yastack_serve_refuses_a_bad_fault_spec_before_opening_anything() -> None:
    """``--nic tap:yas0,faults=...`` is checked with the other options: a mistyped word is one
    clear line naming it, and no device is made."""
    from trio_yastack._cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "examples/hello.py:app", "--nic", "tap:yas0,faults=lost:0.1", "--no-control"])
    assert str(info.value).startswith("yastack serve: faults 'lost:0.1': 'lost:0.1' is not key:value")


class TwoQueuePort(Port):
    """A two-queue port that records what it was handed and takes at most ``room`` frames a call
    (as a full DPDK ring does), to see the wrapper keep and retry the rest."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.sent: list[list[bytes]] = [[], []]
        self.inbox: list[list[bytes]] = [[], []]

    @property
    def capabilities(self) -> PortCapabilities:
        return PortCapabilities(mac=MacAddress("02:00:00:00:00:01"), rx_queues=2, tx_queues=2)

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        frames, self.inbox[queue] = self.inbox[queue][:max_n], self.inbox[queue][max_n:]
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        taken = list(frames[: self.room])
        self.sent[queue] += taken
        return len(taken)

    async def wait_rx(self, queue: int) -> None:
        await trio.sleep_forever()

    def statistics(self) -> PortStatistics:
        return PortStatistics()


async def test_each_queue_has_its_own_path_and_refused_frames_are_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = TwoQueuePort(room=3)
    port = FaultPort(inner, FaultOptions(delay=0.1))
    port.tx_burst(1, [frame(i) for i in range(5)])
    assert inner.sent == [[], []]
    with trio.move_on_after(1):
        await port.wait_rx(1)  # queue 1's idle wait wakes at its frames' time and hands them on
    assert numbers(inner.sent[1]) == [0, 1, 2]  # the inner port took 3; 2 wait in the backlog
    with trio.move_on_after(1):
        await port.wait_rx(1)  # a backlog makes the wait return at once, and retries it
    assert numbers(inner.sent[1]) == [0, 1, 2, 3, 4] and inner.sent[0] == []
    stats = port.fault_statistics()["tx"]
    assert (stats.offered, stats.delivered, stats.held) == (5, 5, 0)
