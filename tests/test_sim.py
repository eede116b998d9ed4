"""Tier 3: two stacks on a simulated wire with seeded faults, under trio's MockClock (the
``autojump_clock`` fixture), so seconds of timeouts cost milliseconds and every run is the same.

Applications here retry as real ones do (a ping or request that times out is sent again, a
bounded number of times); every payload that arrives anywhere is checked against what was sent.
Also: the pcap tee and reader round trip, and replaying a capture into a stack.
"""

from __future__ import annotations

import errno
import hashlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    ZERO_MAC,
    build_arp_frame,
    build_icmp_frame,
    build_udp_frame,
    check_accounting,
    check_arp,
    check_icmp,
    check_ipv4,
)

from trio_yastack import Stack, open_stack
from trio_yastack.nic import MemoryPort, PcapReplayPort, PcapTee, PcapWriter, memory_wire, read_pcap
from trio_yastack.socket_api import PingSocket, UdpEndpoint
from trio_yastack.stack import ArpConfig
from trio_yastack.stack.wire import ARP_REPLY, ARP_REQUEST, IcmpRepr
from trio_yastack.stack.wire.icmp import ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_UNREACH_PORT

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
ECHO_PORT = 7

LOSSY = {"loss": 0.2}
#: every fault at once; ARP entries live 30 s so one poisoned by a corrupted (checksum-less)
#: ARP packet heals within the applications' retry budget
ROUGH = {"loss": 0.05, "latency": 0.003, "duplicate": 0.05, "reorder": 0.05, "corrupt": 0.05}
ROUGH_ARP = ArpConfig(max_age=30.0)


@asynccontextmanager
async def two_stacks(
    seed: int, arp: ArpConfig | None = None, **faults: Any
) -> AsyncIterator[tuple[Stack, Stack]]:
    """Stacks A (198.18.0.1) and B (198.18.0.2) on the two ends of one ``memory_wire``."""
    a_port, b_port = memory_wire(seed=seed, **faults)
    overrides = {"arp": arp} if arp is not None else {}
    async with (
        open_stack(a_port, ip=f"{A_IP}/24", seed=seed + 1, **overrides) as a,
        open_stack(b_port, ip=f"{B_IP}/24", seed=seed + 2, **overrides) as b,
    ):
        yield a, b


async def ping_with_retries(ping: PingSocket, dst: str, seq: int, data: bytes, *, attempts: int = 40) -> int:
    """One answered ping; returns how many requests it took."""
    for attempt in range(1, attempts + 1):
        try:
            reply = await ping.ping(dst, seq, data, timeout=1.0)
        except TimeoutError:
            continue
        assert (reply.source, reply.seq, reply.data) == (dst, seq & 0xFFFF, data)
        return attempt
    raise AssertionError(f"ping {seq} unanswered after {attempts} attempts")


async def udp_echo_server(sock: UdpEndpoint, sent: dict[int, bytes], received: Counter[int]) -> None:
    """Echo every datagram back; each one must be, byte for byte, a request the client sent."""
    while True:
        data, address = await sock.recvfrom()
        seq = int.from_bytes(data[:4], "big")
        assert sent.get(seq) == data, f"server got a damaged or unknown datagram for seq {seq}"
        received[seq] += 1
        await sock.sendto(data, address)


async def udp_request(
    sock: UdpEndpoint,
    server: tuple[str, int],
    seq: int,
    sent: dict[int, bytes],
    *,
    timeout: float,
    attempts: int = 60,
) -> int:
    """Send request ``seq`` until its echo comes back; every reply on the way is checked against
    what was sent (late replies to earlier requests are fine, damaged ones are not)."""
    for attempt in range(1, attempts + 1):
        await sock.sendto(sent[seq], server)
        with trio.move_on_after(timeout):
            while True:
                data, address = await sock.recvfrom()
                assert address == server
                reply_seq = int.from_bytes(data[:4], "big")
                assert sent.get(reply_seq) == data, f"client got a damaged reply for seq {reply_seq}"
                if reply_seq == seq:
                    return attempt
    raise AssertionError(f"request {seq} unanswered after {attempts} attempts")


async def drain() -> None:
    """Let simulated time pass until every frame in flight has landed (the mock clock jumps)."""
    await trio.sleep(1.0)


def check_wire_consistency(a: Stack, b: Stack) -> None:
    """For each direction: what the receiver took from its port is what the wire delivered, and
    what the sender's stack sent is what its port took; the receiver's stack saw every frame;
    every frame is accounted for in each stack's counters, and no stack raised (the poll loop
    would count it and go on)."""
    for sender, receiver in ((a, b), (b, a)):
        assert isinstance(sender.port, MemoryPort)
        wire = sender.port.wire_statistics()
        out, into = sender.port_statistics(), receiver.port_statistics()
        assert wire.sent == out.opackets
        assert sender.statistics().ether.sent == out.opackets + out.oerrors
        assert into.ipackets == wire.sent - wire.lost + wire.duplicated - wire.queue_drops
        assert receiver.statistics().ether.received == into.ipackets
    for stack in (a, b):
        assert stack.runtime_statistics()["internal_errors"] == 0  # the poll loop swallowed no exception
        check_accounting(stack.core)


def bad_checksums(*stacks: Stack) -> int:
    return sum(
        layer.dropped.get("bad_checksum", 0)
        for stack in stacks
        for layer in (stack.statistics().ip, stack.statistics().udp, stack.statistics().icmp)
    )


# -- pings and UDP over faults -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [100, 101, 102])
@pytest.mark.parametrize(("faults", "arp"), [(LOSSY, None), (ROUGH, ROUGH_ARP)], ids=["loss", "rough"])
async def test_thousand_pings_over_faulty_wire(
    autojump_clock: trio.testing.MockClock, faults, arp, seed
) -> None:  # type: ignore[no-untyped-def]
    """A and B resolve each other by ARP and 1000 pings all get answered (with retries), each
    reply carrying exactly the data sent; the counters show the faults happened and agree with
    each other."""
    rng = random.Random(seed)
    async with two_stacks(seed=seed, arp=arp, **faults) as (a, b):
        ping = a.ping_socket()
        attempts = 0
        for seq in range(1000):
            data = rng.randbytes(rng.randrange(0, 64))
            attempts += await ping_with_retries(ping, B_IP, seq, data)
        assert b.core.arp.lookup(int(a.address), trio.current_time()) == bytes(a.mac)
        assert a.core.arp.lookup(int(b.address), trio.current_time()) == bytes(b.mac)
        await drain()
        check_wire_consistency(a, b)
        wire = a.port.wire_statistics()  # type: ignore[attr-defined]
        assert attempts > 1000  # some pings needed a retry
        assert b.statistics().icmp.echo_replies_sent >= 1000
        assert a.statistics().icmp.echo_replies_received >= 1000
        if faults is LOSSY:
            assert 0.15 < wire.lost / wire.sent < 0.25
        else:
            assert wire.lost and wire.duplicated and wire.reordered and wire.corrupted
            assert bad_checksums(a, b) > 0


@pytest.mark.parametrize("seed", [200, 201, 202])
@pytest.mark.parametrize(("faults", "arp"), [(LOSSY, None), (ROUGH, ROUGH_ARP)], ids=["loss", "rough"])
async def test_thousand_udp_requests_over_faulty_wire(
    autojump_clock: trio.testing.MockClock, faults, arp, seed
) -> None:  # type: ignore[no-untyped-def]
    """1000 UDP request/response exchanges with sequence numbers: every request eventually
    answered, every datagram that arrives at either end is exactly one that was sent
    (corruption is caught by the checksums, never delivered)."""
    rng = random.Random(seed)
    sent = {seq: seq.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 300)) for seq in range(1000)}
    received: Counter[int] = Counter()
    async with two_stacks(seed=seed, arp=arp, **faults) as (a, b), trio.open_nursery() as nursery:
        server = b.udp_socket(ECHO_PORT)
        nursery.start_soon(udp_echo_server, server, sent, received)
        client = a.udp_socket()
        attempts = 0
        for seq in range(1000):
            attempts += await udp_request(client, (B_IP, ECHO_PORT), seq, sent, timeout=0.5)
        await drain()
        nursery.cancel_scope.cancel()
        assert set(received) == set(sent)
        assert attempts > 1000
        check_wire_consistency(a, b)
        stats_b = b.statistics().udp
        assert stats_b.delivered == sum(received.values())
        if faults is LOSSY:
            wire = a.port.wire_statistics()  # type: ignore[attr-defined]
            assert wire.lost > 0
            assert b.port.wire_statistics().lost > 0  # type: ignore[attr-defined]
        else:
            assert bad_checksums(a, b) > 0


# -- errors reaching sockets ---------------------------------------------------------------------------


async def test_connected_socket_hears_port_unreachable(autojump_clock: trio.testing.MockClock) -> None:
    """A connected UDP socket whose peer has no listener gets ECONNREFUSED from recv (the ICMP
    port unreachable came back); an unconnected one sending to the same port hears nothing."""
    async with two_stacks(seed=500) as (a, _b):
        connected = a.udp_socket()
        await connected.connect((B_IP, 9))
        await connected.send(b"anyone?")
        with trio.fail_after(1.0), pytest.raises(ConnectionRefusedError):
            await connected.recv()
        unconnected = a.udp_socket()
        await unconnected.sendto(b"anyone?", (B_IP, 9))
        with trio.move_on_after(1.0) as scope:
            await unconnected.recv()
        assert scope.cancelled_caught
        assert a.statistics().icmp.errors_received == 2
        assert a.statistics().icmp.errors_delivered == 1


async def test_connected_socket_hears_arp_failure(autojump_clock: trio.testing.MockClock) -> None:
    """A socket connected to an address nobody answers ARP for gets EHOSTUNREACH once resolution
    gives up: max_requests requests, one per request_interval (5 s with the defaults)."""
    async with two_stacks(seed=501) as (a, _b):
        sock = a.udp_socket()
        await sock.connect(("198.18.0.77", 9))
        start = trio.current_time()
        await sock.send(b"hello?")
        with trio.fail_after(10.0), pytest.raises(OSError) as info:
            await sock.recv()
        assert info.value.errno == errno.EHOSTUNREACH
        assert trio.current_time() - start == pytest.approx(5.0)
        assert a.statistics().arp.resolution_failures == 1


# -- big datagrams ---------------------------------------------------------------------------------


async def test_60000_byte_datagram_crosses_fragmented(autojump_clock: trio.testing.MockClock) -> None:
    """Without loss, a 60 000-byte datagram goes out in 41 fragments and arrives whole and exact.
    (A ping first: sent before ARP resolves, all but the newest hold_limit=16 fragments would be
    dropped from the ARP hold queue, as in FreeBSD.)"""
    payload = random.Random(60).randbytes(60_000)
    async with two_stacks(seed=300) as (a, b):
        await a.ping_socket().ping(B_IP, 1, timeout=1.0)
        receiver = b.udp_socket(ECHO_PORT)
        sender = a.udp_socket()
        await sender.sendto(payload, (B_IP, ECHO_PORT))
        with trio.fail_after(1.0):
            data, address = await receiver.recvfrom()
        assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
        assert address == (A_IP, sender.getsockname()[1])
        assert a.statistics().ip.fragments_created == 41
        assert b.statistics().ip.fragments_received == 41
        assert b.statistics().ip.reassembled == 1


async def test_60000_byte_datagrams_with_loss_and_retries(autojump_clock: trio.testing.MockClock) -> None:
    """With 2 % loss each 60 000-byte datagram (41 fragments, all needed) gets through with some
    retries; the receiver answers with the SHA-256 of what it reassembled.  (At 20 % loss a
    datagram survives once in ~10 000 tries: far beyond any retry budget.)"""
    rng = random.Random(61)
    payloads = {seq: seq.to_bytes(4, "big") + rng.randbytes(60_000 - 4) for seq in range(5)}
    async with two_stacks(seed=400, loss=0.02) as (a, b), trio.open_nursery() as nursery:

        async def digest_server(sock: UdpEndpoint) -> None:
            while True:
                data, address = await sock.recvfrom()
                seq = int.from_bytes(data[:4], "big")
                assert payloads[seq] == data
                await sock.sendto(seq.to_bytes(4, "big") + hashlib.sha256(data).digest(), address)

        nursery.start_soon(digest_server, b.udp_socket(ECHO_PORT))
        client = a.udp_socket()
        attempts = 0
        for seq, payload in payloads.items():
            for attempt in range(1, 31):
                await client.sendto(payload, (B_IP, ECHO_PORT))
                with trio.move_on_after(1.0):
                    while True:
                        reply = await client.recv()
                        if int.from_bytes(reply[:4], "big") == seq:
                            break
                    assert reply[4:] == hashlib.sha256(payload).digest()
                    attempts += attempt
                    break
            else:
                raise AssertionError(f"datagram {seq} never got through")
        nursery.cancel_scope.cancel()
        assert attempts > len(payloads)  # the loss did bite
        assert a.port.wire_statistics().lost > 0  # type: ignore[attr-defined]
        assert b.statistics().ip.reassembled >= len(payloads)
        assert b.core.ip_layer.reassembler.bytes_held <= b.core.config.ip.reassembly_memory_limit


# -- pcap ----------------------------------------------------------------------------------------------


async def test_pcap_tee_round_trip(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A tee on each end records every frame its port moved; read back, A's capture and B's
    hold the same frames (a lossless wire), A's starts with its gratuitous ARP, holds the ping
    and its reply, and its timestamps follow trio's clock."""
    a_port, b_port = memory_wire(seed=5)
    a_tee = PcapTee(a_port, tmp_path / "a.pcap", clock=trio.current_time)
    b_tee = PcapTee(b_port, tmp_path / "b.pcap", clock=trio.current_time)
    async with open_stack(a_tee, ip=A_IP, seed=1) as a, open_stack(b_tee, ip=B_IP, seed=2):
        await trio.sleep(2.0)  # simulated: the capture's timestamps must move
        reply = await a.ping_socket(ident=0x4242).ping(B_IP, 9, b"through the tee", timeout=1.0)
        assert reply.data == b"through the tee"
        await drain()
        moved = a.port_statistics().ipackets + a.port_statistics().opackets
    a_tee.close()
    b_tee.close()
    a_records = list(read_pcap(tmp_path / "a.pcap"))
    b_records = list(read_pcap(tmp_path / "b.pcap"))
    assert len(a_records) == moved
    assert Counter(r.frame for r in a_records) == Counter(r.frame for r in b_records)
    assert all(r.original_len == len(r.frame) for r in a_records)
    stamps = [r.timestamp for r in a_records]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 2.0
    check_arp(a_records[0].frame, operation=ARP_REQUEST, sender_ip=A_IP, target_ip=A_IP)
    echoes = [r.frame for r in a_records if len(r.frame) > 42 and r.frame[23] == 1]
    check_ipv4(
        echoes[0], src=A_IP, dst=B_IP, icmp=check_icmp(type=8, ident=0x4242, seq=9, data=b"through the tee")
    )
    check_ipv4(
        echoes[1], src=B_IP, dst=A_IP, icmp=check_icmp(type=0, ident=0x4242, seq=9, data=b"through the tee")
    )


async def test_pcap_replay_into_a_stack(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A capture replayed into a stack (``pcap:FILE``): its replies land in ``transmitted`` —
    the gratuitous ARP, the ARP reply, the echo reply and the port unreachable, in that order."""
    capture = tmp_path / "in.pcap"
    to_closed = build_udp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 40000, 9, b"anyone?")
    writer = PcapWriter(capture)
    for i, frame in enumerate(
        [
            build_arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP),
            build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, IcmpRepr.echo_request(7, 1, b"replayed")),
            to_closed,
        ]
    ):
        writer.write(frame, 1000.0 + i)
    writer.close()
    async with open_stack(f"pcap:{capture}", ip=OUR_IP, seed=1) as stack:
        await trio.testing.wait_all_tasks_blocked()
        port = stack.port
        assert isinstance(port, PcapReplayPort)
        assert port.exhausted
    out = list(port.transmitted)
    assert len(out) == 4
    check_arp(out[0], operation=ARP_REQUEST, sender_mac=OUR_MAC, sender_ip=OUR_IP, target_ip=OUR_IP)
    check_arp(out[1], operation=ARP_REPLY, eth_dst=PEER_MAC, target_mac=PEER_MAC, target_ip=PEER_IP)
    check_ipv4(
        out[2],
        eth_dst=PEER_MAC,
        dst=PEER_IP,
        icmp=check_icmp(type=ICMP_ECHO_REPLY, ident=7, data=b"replayed"),
    )
    check_ipv4(
        out[3], eth_dst=PEER_MAC, dst=PEER_IP,
        icmp=check_icmp(type=ICMP_DEST_UNREACH, code=ICMP_UNREACH_PORT, data=to_closed[14:]),
    )  # fmt: skip
    assert port.statistics().ipackets == 3 and port.statistics().opackets == 4


async def test_pcap_replay_paced_follows_capture_spacing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """With paced=True frames captured 5 s apart are taken in 5 s apart on trio's clock (a tee
    with trio's clock records when the stack received them)."""
    capture = tmp_path / "paced.pcap"
    writer = PcapWriter(capture)
    for i, seq in enumerate((1, 2, 3)):
        request = IcmpRepr.echo_request(7, seq, b"paced")
        writer.write(build_icmp_frame(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, request), 50.0 + 5.0 * i)
    writer.close()
    replay = PcapReplayPort(capture, mac=str(OUR_MAC), paced=True)
    tee = PcapTee(replay, tmp_path / "seen.pcap", clock=trio.current_time)
    async with open_stack(tee, ip=OUR_IP, seed=1) as stack:
        await trio.sleep(20.0)  # simulated: the whole capture plays out
        assert stack.statistics().icmp.echo_requests_received == 3
    tee.close()
    seen = [r.timestamp for r in read_pcap(tmp_path / "seen.pcap") if r.frame[23:24] == b"\x01"]
    # the three requests in, and (after ARP resolution fails) no replies out: only requests seen
    assert len(seen) == 3
    assert [round(t - seen[0], 6) for t in seen] == [0.0, 5.0, 10.0]
