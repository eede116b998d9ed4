"""UDP's batched input over IPv6: the burst classifier's ``UDP6`` records and
``UdpLayer.udp6_fast_input``.

The classifier (C ``classify_udp6`` in ``native/tcp_fast.c``, Python ``py_classify_udp6``) marks a
datagram ``ip6_input`` -> ``udp6_input`` would take without a question; ``ether_input_burst``
queues it on its socket without the per-frame layers.  Proved here:

- the C and Python classifiers agree on every field of IPv6 UDP frames bent at random, for any set
  of our addresses (hypothesis), and what must decline does (a zero checksum too: mandatory over
  IPv6, refused even unverified);
- a ``UDP6`` record carries its source's slot in the UDP layer's ``SourceTable6`` and says when
  the table holds the source there (both classifiers, any table), and the source each queued
  datagram carries stays its own through hits, misses, peers sharing a slot, datagrams no socket
  takes and burst boundaries (a slot changes only between bursts), the table's pending list bounded;
- a burst fed with the fast path on and off leaves the same thing everywhere: each socket's queue
  (payloads, sources, order), every counter of every layer, IPv6's included (drops by reason: no
  socket, bad checksum, full queue by datagrams and by bytes), the ready set and the frames sent
  (ICMPv6 port unreachable).  ``ip6_input`` gives no ND hint for UDP, so there is none to compare.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st
from test_stack_ipv6 import A_MAC, B_MAC, A, B, check_ether_accounting, core6, frame6
from test_tcp_fastpath6 import BROADCAST, IP, LINK_LOCAL, MAC, OURS, TENTATIVE, USABLE, segment6

from trio_yastack.stack import ChecksumVerified, StackCore, UdpPcb
from trio_yastack.stack import _core as _core_module
from trio_yastack.stack._native import sum16
from trio_yastack.stack.tcp._fastpath import (
    CANDIDATE6,
    DECLINE,
    NATIVE_FASTPATH,
    SRC6_SLOTS,
    UDP6,
    SourceTable6,
    native_classify_burst,
    py_classify_burst,
    py_classify_frame,
    src6_slot,
)
from trio_yastack.stack.wire.ipv4 import IPPROTO_UDP
from trio_yastack.stack.wire.ipv6 import pseudo_header_sum6
from trio_yastack.stack.wire.udp import UDP_HEADER

needs_native = pytest.mark.skipif(not NATIVE_FASTPATH, reason="the C fast path was not built")


def datagram6(
    sport: int = 4000,
    dport: int = 9000,
    payload: bytes = b"hello",
    *,
    src: int = A,
    dst: int = B,
    checksum: int | None = None,
    length: int | None = None,
    hop_limit: int = 64,
    dst_mac: bytes = B_MAC,
) -> bytes:
    """A UDP datagram over IPv6 from the peer (A) to us (B), its checksum over the pseudo-header
    unless given; ``length`` overrides the UDP length field (after the checksum is computed)."""
    body = bytearray(8 + len(payload))
    UDP_HEADER.pack_into(body, 0, sport, dport, len(body), 0)
    body[8:] = payload
    if checksum is None:
        sum_ = sum16(body, 0, len(body), pseudo_header_sum6(src, dst, IPPROTO_UDP, len(body)))
        checksum = (~sum_ & 0xFFFF) or 0xFFFF
    body[6:8] = checksum.to_bytes(2, "big")
    if length is not None:
        body[4:6] = length.to_bytes(2, "big")
    return frame6(A_MAC, dst_mac, src, dst, IPPROTO_UDP, bytes(body), hop_limit=hop_limit)


C_PEER = A + (1 << 32)  # another peer (A + 1 is B: ours)
#: a third peer whose source shares C_PEER's slot in the table of sources
COLLIDER = next(
    C_PEER + (i << 40)
    for i in range(1, 1 << 20)
    if src6_slot((C_PEER + (i << 40)).to_bytes(16, "big")) == src6_slot(C_PEER.to_bytes(16, "big"))
)


def table_of(sources: list[int]) -> SourceTable6:
    """A table of sources holding ``sources`` (a later one replaces an earlier one in its slot)."""
    table = SourceTable6()
    table.pending.extend(
        (src6_slot(src.to_bytes(16, "big")), src.to_bytes(16, "big"), src) for src in sources
    )
    table.install()
    return table


def classify(frame: bytes, verify: bool = True, ours: bytes = OURS, usable: int = USABLE) -> Any:
    """The Python twin's record, checked against the C one when it is built."""
    record = py_classify_frame(frame, verify, MAC, IP, BROADCAST, ours, usable)
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst([frame], MAC, IP, BROADCAST, verify, ours, usable) == [record]
    return record


def test_a_sound_ipv6_datagram_is_a_udp6_record() -> None:
    frame = datagram6(payload=b"x" * 30)
    slot = src6_slot(A.to_bytes(16, "big"))
    assert classify(frame) == (UDP6, 0, 4000, 9000, slot, 0, 0, 0, -1, -1, 62, 92)
    assert frame[62:92] == b"x" * 30
    padded = datagram6(payload=b"") + bytes(4)  # link padding stays outside the payload
    assert classify(padded)[0] == UDP6 and classify(padded)[10:] == (62, 62)
    assert classify(datagram6(dst=LINK_LOCAL))[0] == UDP6  # to our other usable address
    # a UDP length shorter than the IPv6 payload: the payload ends where UDP says
    short = datagram6(payload=b"abcdef", length=10, checksum=0xFFFF)
    assert classify(short, verify=False)[10:] == (62, 64)


@pytest.mark.parametrize(
    "frame",
    [
        datagram6(dport=0),
        datagram6(checksum=0x1234),
        datagram6(checksum=0),  # mandatory over IPv6 (RFC 8200 8.1)
        datagram6(dst=B + 1),  # not ours
        datagram6(dst=TENTATIVE),  # ours, but under DAD
        datagram6(dst=0xFF02 << 112 | 1),  # a group: ip6_input's business
        datagram6(src=B),
        datagram6(src=TENTATIVE),
        datagram6(src=0xFF02 << 112 | 1),
        datagram6(src=1),
        datagram6(src=0),
        datagram6(hop_limit=0),
        datagram6(dst_mac=b"\xff" * 6),
        datagram6(length=7),
        datagram6(length=14),  # longer than the IPv6 payload
        datagram6(payload=b"x" * 20)[:-1],  # the payload length beyond the frame
        frame6(A_MAC, B_MAC, A, B, IPPROTO_UDP, bytes(7)),  # shorter than a UDP header
        frame6(A_MAC, B_MAC, A, B, 60, bytes([IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]) + datagram6()[54:]),
    ],
    ids=[
        "port-0", "bad-checksum", "zero-checksum", "other-address", "tentative", "multicast-dst",
        "our-source", "tentative-source", "multicast-source", "loopback-source", "unspecified-source",
        "hop-limit-0", "other-mac", "length-short", "length-long", "truncated", "runt", "extension-header",
    ],
)  # fmt: skip
def test_what_udp6_input_would_question_declines(frame: bytes) -> None:
    assert classify(frame)[0] == DECLINE


def test_a_bad_checksum_passes_when_the_port_verified_or_not_verified() -> None:
    frame = datagram6(checksum=0x1234)
    records = py_classify_burst([ChecksumVerified(frame), frame], MAC, IP, BROADCAST, True, OURS, USABLE)
    assert [r[0] for r in records] == [UDP6, DECLINE]
    assert classify(frame, verify=False)[0] == UDP6
    assert classify(datagram6(checksum=0), verify=False)[0] == DECLINE  # refused unverified too


def test_without_usable_addresses_ipv6_udp_declines() -> None:
    assert classify(datagram6(), ours=OURS, usable=0)[0] == DECLINE


@st.composite
def udp_frames6(draw: st.DrawFn) -> bytes:
    """IPv6 datagrams near the sound case, then bent: ports, addresses, lengths, checksums,
    flipped bytes; some TCP over IPv6."""
    if draw(st.integers(0, 7)) == 0:
        frame = bytearray(segment6(dport=draw(st.integers(0, 3))))
    else:
        addresses = st.sampled_from([A, A, B, LINK_LOCAL, TENTATIVE, 0, 1, 0xFF02 << 112 | 1, B + 1])
        frame = bytearray(
            datagram6(
                draw(st.integers(0, 0xFFFF)),
                draw(st.sampled_from([0, 9000, 9001, draw(st.integers(0, 0xFFFF))])),
                draw(st.binary(max_size=64)),
                src=draw(addresses),
                dst=draw(st.sampled_from([B, B, LINK_LOCAL, TENTATIVE, B + 1])),
                checksum=draw(st.sampled_from([None, None, 0, 0x1234])),
                length=draw(st.sampled_from([None, None, 0, 7, 8, 9, 100])),
                hop_limit=draw(st.sampled_from([0, 1, 64])),
            )
        )
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(frame) - 1))
        frame[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del frame[draw(st.integers(0, len(frame))) :]
    if draw(st.booleans()):
        frame += draw(st.binary(max_size=8))  # link padding
    return bytes(frame)


@needs_native
@given(
    st.lists(udp_frames6(), max_size=8),
    st.booleans(),
    st.lists(st.booleans(), max_size=8),
    st.integers(0, 3),
    st.integers(0, 3),
    st.lists(st.sampled_from([A, C_PEER, COLLIDER, 0, 1 << 127]) | st.integers(0, 2**128 - 1), max_size=4),
)
@settings(max_examples=400, deadline=None)
def test_c_and_python_classify_ipv6_udp_alike(
    burst: list[bytes], verify: bool, marks: list[bool], skip: int, usable: int, known: list[int]
) -> None:
    burst = [ChecksumVerified(f) if i < len(marks) and marks[i] else f for i, f in enumerate(burst)]
    ours = OURS[16 * skip :]
    usable = min(usable, len(ours) // 16)
    args = (MAC, IP, BROADCAST, verify, ours, usable, table_of(known))
    assert native_classify_burst is not None
    records = native_classify_burst(burst, *args)
    assert records == py_classify_burst(burst, *args)
    target(sum(r[0] == UDP6 for r in records))


# -- the fast path against the Python layers --------------------------------------------------


def _core(fast: bool, queue_datagrams: int, queue_bytes: int) -> tuple[StackCore, list[UdpPcb]]:
    core = core6()
    core.udp.config = dataclasses.replace(
        core.udp.config, receive_queue_datagrams=queue_datagrams, receive_queue_bytes=queue_bytes
    )
    core.fast_path = fast
    core.start(0.0)
    core.take_outbox()
    assert core.fast_usable6 >= 1
    open_pcb, connected, bound_to_ip = UdpPcb(v6=True), UdpPcb(v6=True), UdpPcb(v6=True)
    core.udp.bind(open_pcb, 0, 9000)
    core.udp.bind(bound_to_ip, B, 9002)
    core.udp.bind(connected, 0, 9001)
    core.udp.connect(connected, A, 4000)  # takes datagrams from A:4000 only
    return core, [open_pcb, connected, bound_to_ip]


def _state(core: StackCore, pcbs: list[UdpPcb]) -> tuple[object, ...]:
    """Each socket's queue, every counter (IPv6's too), the sockets made ready (in order), the
    frames sent."""
    assert core.ip6 is not None
    return (
        [(list(p.queue), p.queued_bytes) for p in pcbs],
        core.statistics(),
        core.ip6.statistics(),
        [pcbs.index(owner) for owner in core.take_ready()],
        [bytes(f) for f in core.take_outbox()],
    )


@st.composite
def bursts(draw: st.DrawFn) -> list[bytes]:
    sound = st.builds(
        datagram6,
        st.sampled_from([4000, 4001]),
        st.sampled_from([9000, 9001, 9002, 9003]),  # 9003: no socket
        st.binary(max_size=300),
        src=st.sampled_from([A, A, A + 1, C_PEER, COLLIDER]),
        dst=st.sampled_from([B, B, LINK_LOCAL]),  # LINK_LOCAL: not this core's (a drop)
        checksum=st.sampled_from([None, None, None, 0x1234]),
    )
    return draw(st.lists(st.one_of(sound, sound, sound, udp_frames6()), max_size=40))


FAST_TAKEN: list[int] = []


@given(st.lists(bursts(), min_size=1, max_size=4), st.integers(1, 12), st.sampled_from([64, 600, 212_992]))
@settings(max_examples=200, deadline=None)
def test_fast_and_python_paths_leave_the_same_state(
    burst_list: list[list[bytes]], queue_datagrams: int, queue_bytes: int
) -> None:
    """Queues (full ones included: small limits by count and by bytes), every counter, the
    ready set and the ICMPv6 errors sent, after each burst; the application drains one socket
    between bursts so that a queue fills, empties and fills again."""
    fast, fast_pcbs = _core(True, queue_datagrams, queue_bytes)
    slow, slow_pcbs = _core(False, queue_datagrams, queue_bytes)
    for now, burst in enumerate(burst_list):
        fast.ether_input_burst(list(burst), float(now))
        slow.ether_input_burst(list(burst), float(now))
        assert _state(fast, fast_pcbs) == _state(slow, slow_pcbs)
        check_ether_accounting(fast)
        while fast_pcbs[0].take() is not None:
            pass
        while slow_pcbs[0].take() is not None:
            pass
    assert slow.fast_path_datagrams == 0
    FAST_TAKEN.append(fast.fast_path_datagrams)


def test_the_differential_test_exercised_the_fast_path() -> None:
    if not FAST_TAKEN:
        pytest.skip("the differential test did not run first")
    assert max(FAST_TAKEN) > 0


@pytest.mark.parametrize("twin", [False, True], ids=["chosen", "python-twin"])
def test_the_fast_path_takes_sound_datagrams_and_counts_full_queues(
    twin: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counters a reader would check: taken datagrams count at every layer, a full queue's
    drop is counted as udp6_input counts it, and a datagram no socket takes goes the Python way
    (a counted drop and an ICMPv6 port unreachable).  With the Python twin too (the package
    when the C part did not build)."""
    if twin:
        monkeypatch.setattr(_core_module, "classify_burst", py_classify_burst)
    core, (pcb, connected, _bound) = _core(True, 2, 212_992)
    burst = [datagram6(payload=bytes([i])) for i in range(3)] + [datagram6(dport=9003)]
    burst.append(datagram6(sport=4001, dport=9001))  # not the connected peer's port
    core.ether_input_burst(burst, 0.0)
    assert [payload for payload, _source in pcb.queue] == [b"\x00", b"\x01"]
    assert pcb.queue[0][1] == (A, 4000)
    assert not connected.queue
    assert core.fast_path_datagrams == 3
    assert core.ip6 is not None
    s, s6 = core.statistics(), core.ip6.statistics()[0]
    assert s.ether.received == 5
    assert (s6.counters["received"], s6.counters["delivered"]) == (5, 5)
    assert (s.udp.counters["received"], s.udp.counters["delivered"]) == (5, 2)
    assert s.udp.dropped["socket_buffer_full"] == 1 and s.udp.dropped["no_socket"] == 2
    assert len(core.take_outbox()) >= 1  # the port unreachables (or ND for the peer first)
    assert list(core.take_ready()) == [pcb]
    check_ether_accounting(core)


@needs_native
def test_the_record_kinds_are_cs() -> None:
    from trio_yastack.stack._native_cffi import lib

    assert (lib.YAS_FAST_UDP6, lib.YAS_FAST_UDP, lib.YAS_FAST_SRC6_SLOTS) == (UDP6, 2, SRC6_SLOTS)


def test_a_udp6_record_carries_its_source_slot_and_whether_the_table_holds_it() -> None:
    """``seq`` is the source's slot; ``src`` the slot + 1 when the table holds that very source
    there (a peer sharing the slot is a miss), in both classifiers."""
    table = table_of([A, C_PEER])
    burst = [datagram6(src=A), datagram6(src=C_PEER), datagram6(src=COLLIDER), segment6(src=A)]
    slots = [src6_slot(src.to_bytes(16, "big")) for src in (A, C_PEER, COLLIDER)]
    assert slots[1] == slots[2]
    args = (MAC, IP, BROADCAST, True, OURS, USABLE, table)
    records = py_classify_burst(burst, *args)
    assert [(r[0], r[1], r[4]) for r in records[:3]] == [
        (UDP6, slots[0] + 1, slots[0]),
        (UDP6, slots[1] + 1, slots[1]),
        (UDP6, 0, slots[2]),
    ]
    assert records[3][0] == CANDIDATE6 and records[3][1] == 0  # TCP's records are not looked up
    assert table.ints[slots[0] + 1] == A and table.ints[slots[1] + 1] == C_PEER
    assert [r[1] for r in py_classify_burst(burst, MAC, IP, BROADCAST, True, OURS, USABLE)][:3] == [0, 0, 0]
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst(burst, *args) == records


@pytest.mark.parametrize("twin", [False, True], ids=["chosen", "python-twin"])
def test_each_datagram_keeps_its_own_source(twin: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through hits, misses, two peers sharing a slot within one burst (the slot changes only at
    the burst's end: a hit classified before must still read the old source) and datagrams no
    socket takes (never installed)."""
    if twin:
        monkeypatch.setattr(_core_module, "classify_burst", py_classify_burst)
    core, (pcb, _connected, _bound) = _core(True, 100, 10**6)
    bursts = [
        [datagram6(src=A), datagram6(src=C_PEER), datagram6(src=C_PEER)],  # misses, then installed
        [datagram6(src=COLLIDER), datagram6(src=C_PEER), datagram6(src=A)],  # a miss, then hits
        [datagram6(src=C_PEER), datagram6(src=COLLIDER)],  # a miss, then a hit on the slot it takes back
        [datagram6(src=A, dport=9003), datagram6(src=A)],
    ]
    for burst in bursts:
        core.ether_input_burst(burst, 0.0)
    assert [source for _payload, (source, _port) in pcb.queue] == [
        A, C_PEER, C_PEER, COLLIDER, C_PEER, A, C_PEER, COLLIDER, A,
    ]  # fmt: skip
    assert core.fast_path_datagrams == 9
    slot = src6_slot(C_PEER.to_bytes(16, "big"))
    assert core.udp.src6.ints[slot + 1] == C_PEER and not core.udp.src6.pending


def test_the_table_of_sources_stays_bounded_and_right(monkeypatch: pytest.MonkeyPatch) -> None:
    """More peers than slots, and more new peers in a burst than the pending list holds: every
    datagram still carries its own source."""
    from trio_yastack.stack._udp import SRC6_PENDING_LIMIT

    pending_seen: list[int] = []
    install = SourceTable6.install

    def counting_install(table: SourceTable6) -> None:
        pending_seen.append(len(table.pending))
        install(table)

    monkeypatch.setattr(SourceTable6, "install", counting_install)
    core, (pcb, _connected, _bound) = _core(True, 10_000, 10**8)
    sources = [C_PEER + i for i in range(SRC6_SLOTS + 200)]
    burst_size = SRC6_PENDING_LIMIT + 16
    for at in range(0, len(sources), burst_size):
        core.ether_input_burst([datagram6(src=src) for src in sources[at : at + burst_size]], 0.0)
        assert not core.udp.src6.pending
    core.ether_input_burst([datagram6(src=src) for src in sources[-50:]], 0.0)  # some hits now
    assert core.fast_path_datagrams == len(sources) + 50
    assert [source for _payload, (source, _port) in pcb.queue] == sources + sources[-50:]
    assert len(core.udp.src6.ints) == SRC6_SLOTS + 1 and len(core.udp.src6.addresses) == 16 * SRC6_SLOTS
    assert max(pending_seen) == SRC6_PENDING_LIMIT  # a full burst of new peers: the bound, not more


@needs_native
def test_c_refuses_a_table_of_sources_of_another_size() -> None:
    import sys

    from trio_yastack.stack._native_cffi import ffi, lib

    frame = datagram6()
    lens = len(frame).to_bytes(4, sys.byteorder)

    def call(sources: bytes) -> tuple[int, bytearray]:
        out = bytearray(48)
        made = lib.yas_tcp_fast_classify(
            frame, len(frame), lens, len(lens), 1, MAC, IP, BROADCAST, OURS, len(OURS), USABLE, sources,
            len(sources), True, ffi.from_buffer(out), len(out),
        )  # fmt: skip
        return made, out

    made, out = call(bytes(16 * SRC6_SLOTS))
    assert made == 1 and out[0] == UDP6
    for sources in (b"", bytes(16 * SRC6_SLOTS - 1), bytes(16 * SRC6_SLOTS + 16)):
        made, out = call(sources)
        assert made == lib.YAS_FAST_BAD_ARGS and not any(out)


def test_a_burst_cut_short_by_an_exception_leaves_the_sources_right(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception out of a burst (no ``on_error``) skips its end, where new sources are
    installed: they wait for the next burst's end, and every datagram keeps its own source."""
    core, (pcb, _connected, _bound) = _core(True, 100, 10**6)
    python_path = core.ether_input

    def failing(frame: bytes, now: float) -> None:
        if frame[54:56] == (7).to_bytes(2, "big"):  # the marked frame's source port
            raise RuntimeError("a stack bug")
        python_path(frame, now)

    monkeypatch.setattr(core, "ether_input", failing)
    with pytest.raises(RuntimeError):
        core.ether_input_burst([datagram6(src=C_PEER), datagram6(7, checksum=0x1234)], 0.0)
    assert core.udp.src6.pending  # not installed: the burst did not end
    core.ether_input_burst([datagram6(src=COLLIDER), datagram6(src=C_PEER)], 1.0)  # both misses
    core.ether_input_burst([datagram6(src=C_PEER), datagram6(src=A)], 2.0)
    assert [source for _payload, (source, _port) in pcb.queue] == [C_PEER, COLLIDER, C_PEER, C_PEER, A]
    slot = src6_slot(C_PEER.to_bytes(16, "big"))
    assert core.udp.src6.ints[slot + 1] == C_PEER and not core.udp.src6.pending
