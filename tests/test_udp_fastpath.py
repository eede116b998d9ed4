"""UDP's batched input: the burst classifier's ``UDP`` records and ``UdpLayer.udp_fast_input``.

The classifier (C ``classify_udp`` in ``native/tcp_fast.c``, Python ``py_classify_udp``) marks a
datagram ``udp_input`` would take without a question; ``ether_input_burst`` queues it on its
socket without the per-frame layers.  Proved here:

- the C and Python classifiers agree on every frame (hypothesis, frames near UDP bent at random),
  and what must decline does;
- a burst fed with the fast path on and off leaves the same thing everywhere: each socket's queue
  (payloads, sources, order), every counter of every layer (drops by reason included: no socket,
  bad checksum, full queue by datagrams and by bytes), the ready set and the frames sent (ICMP
  port unreachable): so the Python layers stay the reference, and nothing vanishes uncounted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from helpers import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    SUBNET_BROADCAST,
    build_udp_frame,
    check_accounting,
    counters,
    make_core,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from tcp_helpers import build_tcp_frame

from trio_yastack.stack import ChecksumVerified, StackCore, UdpConfig, UdpPcb
from trio_yastack.stack.tcp._fastpath import (
    DECLINE,
    NATIVE_FASTPATH,
    UDP,
    native_classify_burst,
    py_classify_burst,
    py_classify_frame,
)

MAC = bytes(OUR_MAC)
IP = int(OUR_IP)
BROADCAST = int(SUBNET_BROADCAST)
needs_native = pytest.mark.skipif(not NATIVE_FASTPATH, reason="the C fast path was not built")


def datagram(
    sport: int = 4000,
    dport: int = 9000,
    payload: bytes = b"hello",
    *,
    src_ip: str | int = int(PEER_IP),
    dst_ip: str | int = IP,
    **ip: Any,
) -> bytes:
    """A UDP datagram from the peer to us; ``ip`` goes to ``build_udp_frame``."""
    return build_udp_frame(PEER_MAC, OUR_MAC, src_ip, dst_ip, sport, dport, payload, **ip)


def test_a_sound_datagram_is_a_udp_record() -> None:
    frame = datagram(payload=b"x" * 30)
    record = py_classify_frame(frame, True, MAC, IP, BROADCAST)
    assert record == (UDP, int(PEER_IP), 4000, 9000, 0, 0, 0, 0, -1, -1, 42, 72)
    assert frame[42:72] == b"x" * 30
    # a zero checksum means none (RFC 768): sound too
    assert py_classify_frame(datagram(checksum=0), True, MAC, IP, BROADCAST)[0] == UDP
    # link padding after the datagram stays outside the payload
    padded = datagram(payload=b"") + bytes(18)
    assert len(padded) == 60 and py_classify_frame(padded, True, MAC, IP, BROADCAST)[10:] == (42, 42)
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst([frame, padded], MAC, IP, BROADCAST, True) == py_classify_burst(
            [frame, padded], MAC, IP, BROADCAST, True
        )


def _bad_udp_length(length: int) -> bytes:
    frame = bytearray(datagram(checksum=0))
    frame[38:40] = length.to_bytes(2, "big")
    return bytes(frame)


@pytest.mark.parametrize(
    "frame",
    [
        datagram(dport=0),
        datagram(checksum=0x1234),
        datagram(dst_ip="198.18.0.3"),
        datagram(dst_ip=str(SUBNET_BROADCAST)),
        datagram(src_ip="127.0.0.1"),
        datagram(src_ip=str(OUR_IP)),
        datagram(more_fragments=True),
        datagram(options=b"\x01\x01\x01\x00"),
        datagram(ttl=0),
        _bad_udp_length(7),
        _bad_udp_length(14),  # longer than what IP carried
    ],
    ids=[
        "port-0",
        "bad-checksum",
        "other-ip",
        "broadcast-ip",
        "loopback-source",
        "our-source",
        "fragment",
        "ip-options",
        "ttl-0",
        "length-short",
        "length-long",
    ],
)
def test_what_udp_input_would_question_declines(frame: bytes) -> None:
    assert py_classify_frame(frame, True, MAC, IP, BROADCAST)[0] == DECLINE
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst([frame], MAC, IP, BROADCAST, True)[0][0] == DECLINE


def test_a_bad_checksum_passes_when_the_port_verified() -> None:
    frame = datagram(checksum=0x1234)
    records = py_classify_burst([ChecksumVerified(frame), frame], MAC, IP, BROADCAST, True)
    assert [r[0] for r in records] == [UDP, DECLINE]


@st.composite
def udp_frames(draw: st.DrawFn) -> bytes:
    """Datagrams near the sound case, then bent: ports, sources, lengths, flipped bytes; some TCP."""
    if draw(st.integers(0, 7)) == 0:
        frame = bytearray(build_tcp_frame(draw(st.integers(0, 0xFFFF)), 80, 1, 2, 0x10))
    else:
        frame = bytearray(
            datagram(
                draw(st.integers(0, 0xFFFF)),
                draw(st.sampled_from([0, 9000, 9001, draw(st.integers(0, 0xFFFF))])),
                draw(st.binary(max_size=64)),
                checksum=draw(st.sampled_from([None, None, 0, 0x1234])),
                src_ip=draw(st.sampled_from([str(PEER_IP), "127.0.0.1", str(SUBNET_BROADCAST), "224.0.0.1"])),
                more_fragments=draw(st.booleans()) and draw(st.booleans()),
            )
        )
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(frame) - 1))
        frame[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del frame[draw(st.integers(0, len(frame))) :]
    if draw(st.booleans()):
        frame += draw(st.binary(max_size=8))
    return bytes(frame)


@needs_native
@given(st.lists(udp_frames(), max_size=8), st.booleans(), st.lists(st.booleans(), max_size=8))
@settings(max_examples=400, deadline=None)
def test_c_and_python_classify_udp_alike(burst: list[bytes], verify: bool, marks: list[bool]) -> None:
    burst = [ChecksumVerified(f) if i < len(marks) and marks[i] else f for i, f in enumerate(burst)]
    assert native_classify_burst is not None
    assert native_classify_burst(burst, MAC, IP, BROADCAST, verify) == py_classify_burst(
        burst, MAC, IP, BROADCAST, verify
    )


# -- the fast path against the Python layers --------------------------------------------------


def _core(fast: bool, queue_datagrams: int, queue_bytes: int) -> tuple[StackCore, list[UdpPcb]]:
    core = make_core(udp=dataclasses.replace(UdpConfig(), receive_queue_datagrams=queue_datagrams,
                                             receive_queue_bytes=queue_bytes))  # fmt: skip
    core.fast_path = fast
    core.start(0.0)
    core.take_outbox()
    open_pcb, connected, bound_to_ip = UdpPcb(), UdpPcb(), UdpPcb()
    core.udp.bind(open_pcb, 0, 9000)
    core.udp.bind(bound_to_ip, IP, 9002)
    core.udp.bind(connected, 0, 9001)
    core.udp.connect(connected, int(PEER_IP), 4000)  # takes datagrams from PEER_IP:4000 only
    return core, [open_pcb, connected, bound_to_ip]


def _state(core: StackCore, pcbs: list[UdpPcb]) -> tuple[object, ...]:
    """Each socket's queue, every counter, the sockets made ready (in order), the frames sent."""
    return (
        [(list(p.queue), p.queued_bytes) for p in pcbs],
        counters(core),
        [pcbs.index(owner) for owner in core.take_ready()],
        [bytes(f) for f in core.take_outbox()],
    )


@st.composite
def bursts(draw: st.DrawFn) -> list[bytes]:
    sound = st.builds(
        datagram,
        st.sampled_from([4000, 4001]),
        st.sampled_from([9000, 9001, 9002, 9003]),  # 9003: no socket
        st.binary(max_size=300),
        checksum=st.sampled_from([None, None, None, 0]),
    )
    return draw(st.lists(st.one_of(sound, sound, sound, udp_frames()), max_size=40))


@given(st.lists(bursts(), min_size=1, max_size=4), st.integers(1, 12), st.sampled_from([64, 600, 212_992]))
@settings(max_examples=200, deadline=None)
def test_fast_and_python_paths_leave_the_same_state(
    burst_list: list[list[bytes]], queue_datagrams: int, queue_bytes: int
) -> None:
    """Queues (full ones included: small limits by count and by bytes), every counter, the
    ready set and the ICMP errors sent, after each burst; the application drains one socket
    between bursts so that a queue fills, empties and fills again."""
    fast, fast_pcbs = _core(True, queue_datagrams, queue_bytes)
    slow, slow_pcbs = _core(False, queue_datagrams, queue_bytes)
    for now, burst in enumerate(burst_list):
        fast.ether_input_burst(list(burst), float(now))
        slow.ether_input_burst(list(burst), float(now))
        fast_state, slow_state = _state(fast, fast_pcbs), _state(slow, slow_pcbs)
        assert fast_state == slow_state
        check_accounting(fast)
        while fast_pcbs[0].take() is not None:
            pass
        while slow_pcbs[0].take() is not None:
            pass
    assert slow.fast_path_datagrams == 0


def test_the_fast_path_takes_sound_datagrams_and_counts_full_queues() -> None:
    """The counters a reader would check: taken datagrams count at every layer, a full queue's
    drop is counted as udp_input counts it, and a datagram no socket takes goes the Python way
    (a counted drop and an ICMP port unreachable)."""
    core, (pcb, connected, _ip) = _core(True, 2, 212_992)
    burst = [datagram(payload=bytes([i])) for i in range(3)] + [datagram(dport=9003)]
    burst.append(datagram(sport=4001, dport=9001))  # not the connected peer's port
    core.ether_input_burst(burst, 0.0)
    assert [payload for payload, _source in pcb.queue] == [b"\x00", b"\x01"]
    assert pcb.queue[0][1] == (int(PEER_IP), 4000)
    assert not connected.queue
    assert core.fast_path_datagrams == 3
    c = counters(core)
    assert (c["ether.received"], c["ip.received"], c["ip.delivered"], c["udp.received"]) == (5, 5, 5, 5)
    assert c["udp.delivered"] == 2
    assert c["udp.dropped.socket_buffer_full"] == 1
    assert c["udp.dropped.no_socket"] == 2
    outbox = core.take_outbox()  # the port unreachables wait for ARP to resolve the peer
    assert [bytes(f[12:14]) for f in outbox] == [b"\x08\x06"]
    assert list(core.take_ready()) == [pcb]
    check_accounting(core)
