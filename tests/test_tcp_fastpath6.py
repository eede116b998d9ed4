"""The established-connection fast path over IPv6 (``CANDIDATE6`` of ``stack/tcp/_fastpath.py`` and
``native/tcp_fast.c``) is the same TCP as ``ip6_input`` -> ``tcp6_input``.

1. The C classifier and its Python twin agree on every field of arbitrary IPv6 (and IPv4) frames,
   for any set of our addresses (hypothesis).
2. The classifier takes exactly the IPv6 segments ``tcp6_input``'s prediction may take: no extension
   header, to a usable address of ours, a sane source, a hop limit, a valid checksum over the IPv6
   pseudo-header (or one the port vouched for), ACK/PSH with no options or the aligned timestamp.
3. A connection over IPv6 fed the same stream of segments (hypothesis) with the fast path on and
   off sends the same frames and ends in the same state, the counters of every layer included;
   the ND reachability hint is given as ``tcp6_input`` gives it.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from tcp_helpers import tcp_bytes
from test_stack_ipv6 import A_MAC, B_MAC, A, B, check_ether_accounting, core6, exchange, frame6, pair
from test_tcp_fastpath import Step, steps
from test_tcp_fastpath import frames as frames4

from trio_yastack.stack import ChecksumVerified, StackCore
from trio_yastack.stack._native import sum16
from trio_yastack.stack._nd6 import REACHABLE, STALE
from trio_yastack.stack.tcp._fastpath import (
    CANDIDATE6,
    DECLINE,
    MAX_IP6,
    NATIVE_FASTPATH,
    native_classify_burst,
    py_classify_burst,
    py_classify_frame,
)
from trio_yastack.stack.wire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from trio_yastack.stack.wire.ipv6 import pseudo_header_sum6
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TcpOptions

MAC = bytes(B_MAC)
IP = 0xC6120002  # 198.18.0.2 (the cores' IPv4 address beside B)
BROADCAST = 0xC61200FF
LINK_LOCAL = 0xFE80 << 112 | 0x1234
TENTATIVE = B + 7
#: our addresses as the classifier is handed them: the usable ones (B, a link-local) first
OURS = B.to_bytes(16, "big") + LINK_LOCAL.to_bytes(16, "big") + TENTATIVE.to_bytes(16, "big")
USABLE = 2
SPORT, DPORT = 40000, 80
needs_native = pytest.mark.skipif(not NATIVE_FASTPATH, reason="the C fast path was not built")


def segment6(
    flags: int = TCP_ACK,
    payload: bytes = b"",
    *,
    ts: bool = True,
    src: int = A,
    dst: int = B,
    seq: int = 0x1000,
    ack: int = 0x2000,
    window: int = 0xFFFF,
    options: TcpOptions | bytes | None = None,
    sport: int = SPORT,
    dport: int = DPORT,
    checksum: int | None = None,
    next_header: int = IPPROTO_TCP,
    dst_mac: bytes = B_MAC,
    hop_limit: int = 64,
) -> bytes:
    """A TCP segment over IPv6 from the peer (A) to us (B), its checksum over the IPv6 pseudo-header."""
    if options is None and ts:
        options = TcpOptions(timestamps=(1000, 2000))
    body = bytearray(tcp_bytes(sport, dport, seq, ack, flags, window=window, options=options, payload=payload,
                               checksum=0))  # fmt: skip
    if checksum is None:
        checksum = ~sum16(body, 0, len(body), pseudo_header_sum6(src, dst, IPPROTO_TCP, len(body))) & 0xFFFF
    body[16:18] = checksum.to_bytes(2, "big")
    return frame6(A_MAC, dst_mac, src, dst, next_header, bytes(body), hop_limit=hop_limit)


def classify(frame: bytes, verify: bool = True, ours: bytes = OURS, usable: int = USABLE) -> Any:
    """The Python twin's record, checked against the C one when it is built."""
    record = py_classify_frame(frame, verify, MAC, IP, BROADCAST, ours, usable)
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert native_classify_burst([frame], MAC, IP, BROADCAST, verify, ours, usable) == [record]
    return record


# -- 1 and 2: the classifier ----------------------------------------------------------------------


def test_a_predictable_ipv6_segment_is_a_candidate6_with_its_fields() -> None:
    frame = segment6(TCP_ACK | TCP_PSH, b"hello", seq=0xFFFF_FFFE, ack=7, window=513)
    assert classify(frame) == (
        CANDIDATE6, 0, SPORT, DPORT, 0xFFFF_FFFE, 7, TCP_ACK | TCP_PSH, 513, 1000, 2000, 14 + 40 + 32,
        len(frame),
    )  # fmt: skip
    bare = classify(segment6(ts=False) + b"\x00\x00")  # (link padding past the payload length)
    assert bare[0] == CANDIDATE6 and bare[8:] == (-1, -1, 74, 74)
    assert classify(segment6(dst=LINK_LOCAL))[0] == CANDIDATE6  # to our other usable address


def _with_extension_header() -> bytes:
    """A destination options header (8 bytes of PadN) before the same segment."""
    frame = bytearray(segment6())
    body = frame[54:]
    options = bytes([IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0])
    return frame6(A_MAC, B_MAC, A, B, 60, options + bytes(body))


@pytest.mark.parametrize(
    "frame",
    [
        segment6(TCP_SYN | TCP_ACK),
        segment6(TCP_ACK | TCP_FIN),
        segment6(TCP_RST | TCP_ACK),
        segment6(TCP_ACK | 0x20),  # URG
        segment6(TCP_PSH),  # no ACK
        segment6(options=TcpOptions(sack_blocks=((5, 9),))),
        segment6(options=b"\x08\x0a" + bytes(8) + b"\x01\x01"),
        segment6(sport=0),
        segment6(checksum=0x1234),
        segment6(dst_mac=b"\xff" * 6),
        segment6(dst=B + 1),  # not ours
        segment6(dst=TENTATIVE),  # ours, but under DAD
        segment6(src=B),  # from our own address
        segment6(src=TENTATIVE),  # from our tentative address (ip6_input: a bad source)
        segment6(src=0xFF02 << 112 | 1),  # multicast
        segment6(src=1),  # ::1
        segment6(src=0),  # ::
        segment6(hop_limit=0),
        _with_extension_header(),
        segment6(next_header=IPPROTO_UDP),
        segment6(TCP_ACK, b"x" * 20)[:-1],  # the payload length beyond the frame
        frame6(A_MAC, B_MAC, A, B, IPPROTO_TCP, bytes(19)),  # shorter than a TCP header
    ],
    ids=[
        "syn", "fin", "rst", "urg", "no-ack", "sack", "ts-unaligned", "port-0", "bad-checksum",
        "broadcast-mac", "other-ip", "tentative-ip", "our-source", "tentative-source", "multicast-source",
        "loopback-source", "unspecified-source", "hop-limit-0", "extension-header", "udp", "truncated",
        "short-tcp",
    ],
)  # fmt: skip
def test_every_other_ipv6_frame_declines(frame: bytes) -> None:
    assert classify(frame)[0] == DECLINE


def test_without_usable_addresses_every_ipv6_frame_declines() -> None:
    """A core whose addresses are all under DAD (or that has more than the classifier takes)."""
    assert classify(segment6(), ours=OURS, usable=0)[0] == DECLINE
    assert classify(segment6(), ours=b"", usable=0)[0] == DECLINE


def test_a_bad_checksum_passes_when_not_verified() -> None:
    frame = segment6(checksum=0x1234)
    assert classify(frame, verify=False)[0] == CANDIDATE6
    records = py_classify_burst([ChecksumVerified(frame), frame], MAC, IP, BROADCAST, True, OURS, USABLE)
    assert [r[0] for r in records] == [CANDIDATE6, DECLINE]
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        assert records == native_classify_burst(
            [ChecksumVerified(frame), frame], MAC, IP, BROADCAST, True, OURS, USABLE
        )


@st.composite
def frames6(draw: st.DrawFn) -> bytes:
    """IPv6 frames near the predicted case, then bent: random fields, options, addresses,
    lengths, flipped bytes."""
    flags = draw(st.sampled_from([TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_FIN, draw(st.integers(0, 255))]))
    options: bytes | TcpOptions | None = draw(
        st.sampled_from(
            [None, TcpOptions(timestamps=(1, 2)), b"\x01\x01\x08\x0a" + bytes(8), b"\x02\x04\x05\xb4"]
        )
    )
    addresses = st.sampled_from([A, B, LINK_LOCAL, TENTATIVE, 0, 1, 0xFF02 << 112 | 1, B + 1])
    frame = bytearray(
        segment6(
            flags, draw(st.binary(max_size=64)), ts=False, options=options, src=draw(addresses),
            dst=draw(addresses), seq=draw(st.integers(0, 0xFFFF_FFFF)), ack=draw(st.integers(0, 0xFFFF_FFFF)),
            window=draw(st.integers(0, 0xFFFF)), sport=draw(st.integers(0, 3)), dport=draw(st.integers(0, 3)),
            hop_limit=draw(st.sampled_from([0, 1, 255])),
        )
    )  # fmt: skip
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
    st.lists(st.one_of(frames6(), frames4()), max_size=8),
    st.booleans(),
    st.lists(st.booleans(), max_size=8),
    st.integers(0, 3),
    st.integers(0, 3),
)
@settings(max_examples=400, deadline=None)
def test_c_and_python_classify_ipv6_alike(
    burst: list[bytes], verify: bool, marks: list[bool], skip: int, usable: int
) -> None:
    burst = [ChecksumVerified(f) if i < len(marks) and marks[i] else f for i, f in enumerate(burst)]
    ours = OURS[16 * skip :]  # some of our addresses, some of them usable
    usable = min(usable, len(ours) // 16)
    # the IPv4 frames of test_tcp_fastpath are from its peer to its address: ours too here
    args = (MAC, IP, BROADCAST, verify, ours, usable)
    assert native_classify_burst is not None
    records = native_classify_burst(burst, *args)
    assert records == py_classify_burst(burst, *args)
    target(sum(r[0] == CANDIDATE6 for r in records))


@pytest.mark.parametrize("ours, usable", [(bytes(15), 0), (OURS, 4), (bytes(16 * (MAX_IP6 + 1)), 0)])
def test_bad_address_arguments_are_a_clear_error(ours: bytes, usable: int) -> None:
    with pytest.raises(ValueError, match="IPv6 addresses"):
        py_classify_burst([segment6()], MAC, IP, BROADCAST, True, ours, usable)
    if NATIVE_FASTPATH:
        assert native_classify_burst is not None
        with pytest.raises(ValueError, match="IPv6 addresses"):
            native_classify_burst([segment6()], MAC, IP, BROADCAST, True, ours, usable)


@needs_native
def test_c_refuses_address_lengths_beyond_its_limits() -> None:
    from trio_yastack.stack._native_cffi import ffi, lib

    frame = segment6()
    lens = len(frame).to_bytes(4, sys.byteorder)
    SOURCES = bytes(16 * lib.YAS_FAST_SRC6_SLOTS)  # an empty table of UDP6 sources

    def call(ours: bytes, usable: int, out: bytearray) -> int:
        return lib.yas_tcp_fast_classify(
            frame, len(frame), lens, len(lens), 1, MAC, IP, BROADCAST, ours, len(ours), usable, SOURCES,
            len(SOURCES), True, ffi.from_buffer(out), len(out),
        )  # fmt: skip

    out = bytearray(48)
    assert call(OURS, USABLE, out) == 1 and out[0] == CANDIDATE6
    for ours, usable in ((OURS[:-1], 1), (OURS, 4), (bytes(16 * (MAX_IP6 + 1)), 1)):
        out = bytearray(48)
        assert call(ours, usable, out) == lib.YAS_FAST_BAD_ARGS
        assert not any(out)


def test_the_core_hands_the_classifier_its_usable_addresses_as_dad_passes() -> None:
    core = core6(dad=1)
    assert core.ip6 is not None
    assert core.fast_usable6 == 0 and len(core.fast_addresses6) == 32  # both tentative
    core.start(0.0)
    now = 0.0
    for _ in range(100):
        now += 0.1
        core.run_timers(now)
        core.take_outbox()
        if core.fast_usable6 == 2:
            break
    assert core.fast_usable6 == 2
    assert set(core.fast_addresses6[i : i + 16] for i in (0, 16)) == {
        a.to_bytes(16, "big") for a in core.ip6.addresses
    }


# -- 3: one connection over IPv6, a stream of segments, fast path on and off -----------------------

_SKIP_SLOTS = {"_timer", "config", "core", "layer", "listener", "stats", "waiter"}
_BUFFERS = {"rcvbuf", "reasm", "sndbuf", "scoreboard"}


def connection_state(conn: Any) -> dict[str, Any]:
    """Every plain field of a connection (its class's slots and its bases'), of the objects it
    owns, and its buffers' contents."""
    state: dict[str, Any] = {}
    for cls in type(conn).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name in _SKIP_SLOTS or name in _BUFFERS:
                continue
            value = getattr(conn, name)
            if value is None or isinstance(value, int | float | str | bytes):
                state[name] = value
            else:
                slots = [n for c in type(value).__mro__ for n in getattr(c, "__slots__", ())]
                state[name] = {
                    n: v
                    for n in slots
                    if (v := getattr(value, n, None)) is None or isinstance(v, int | float | str | bytes)
                }
    state["rcvbuf"] = conn.rcvbuf._copy(0, len(conn.rcvbuf))
    state["reasm"] = len(conn.reasm)
    state["sndbuf"] = (len(conn.sndbuf), conn.sndbuf.end)
    state["scoreboard"] = len(conn.scoreboard)
    return state


def statistics(core: StackCore) -> tuple[Any, ...]:
    assert core.ip6 is not None
    return core.statistics(), core.ip6.statistics()


def make_connection(fast: bool) -> tuple[StackCore, Any, Any]:
    """Our core (B) with an established connection from the peer (A, the other core), 30 kB of
    ours queued and sent; the peer's core is only the source of the stream's numbers."""
    kernel, ours = pair()
    ours.fast_path = fast
    listener = ours.tcp.listen6(DPORT)
    peer = kernel.tcp.connect6(B, DPORT, 0.0)
    exchange(kernel, ours, 0.0)
    conn = listener.accept()
    assert conn is not None
    conn.send(bytes(range(256)) * 120, 0.1)
    ours.take_outbox()
    return ours, conn, peer


#: how many segments the fast path took in each example of the stream test (read by the next test)
TAKEN: list[int] = []
DATA_KINDS = ("data", "data-ack", "dup", "future", "old-ts")


@given(steps())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_ipv6_stream_gives_the_same_output_state_and_counters(script: list[list[Step]]) -> None:
    (core, conn, peer), (core_off, conn_off, _peer_off) = make_connection(True), make_connection(False)
    assert connection_state(conn) == connection_state(conn_off)
    seq, ack = peer.snd_nxt, peer.rcv_nxt
    ts = conn.ts_recent  # the peer's clock, as its handshake told it
    now = 0.2
    for burst in script:
        built: list[bytes] = []
        for what, size, window, ts_step in burst:
            ts = (ts + ts_step) & 0xFFFF_FFFF
            options = TcpOptions(timestamps=((ts - 100000 if what == "old-ts" else ts) & 0xFFFF_FFFF, 0))
            payload = bytes([size & 0xFF]) * size if what in DATA_KINDS else b""
            if what in ("ack", "data-ack"):
                ack = (ack + min(size, (conn.snd_max - ack) & 0xFFFF_FFFF)) & 0xFFFF_FFFF
            if what == "read":
                for c in (conn, conn_off):
                    c.receive(size + 1, now)
                continue
            if what == "send":
                for c in (conn, conn_off):
                    c.send(bytes(size), now)
                continue
            flags = TCP_ACK | (TCP_PSH if size & 1 else 0) | (TCP_FIN if what == "fin" else 0)
            at = {"dup": seq - len(payload), "future": seq + 1000}.get(what, seq) & 0xFFFF_FFFF
            built.append(
                segment6(flags, payload, seq=at, ack=ack, window=0xFFFF if what != "window" else window,
                         options=options, sport=peer.local_port)
            )  # fmt: skip
            if what in ("data", "data-ack", "old-ts", "fin"):
                seq = (seq + len(payload) + (1 if what == "fin" else 0)) & 0xFFFF_FFFF
        now += 0.01
        outs = []
        for c in (core, core_off):
            c.begin_burst()
            c.ether_input_burst(built, now)
            c.end_burst(now)
            c.run_timers(now)
            c.run_pending_output(now)
            outs.append([bytes(f) for f in c.take_outbox()])
        assert outs[0] == outs[1]
        assert connection_state(conn) == connection_state(conn_off)
    assert statistics(core) == statistics(core_off)
    target(core.fast_path_segments)
    TAKEN.append(core.fast_path_segments)
    check_ether_accounting(core)
    assert core_off.fast_path_segments == 0


def test_the_stream_test_exercised_the_ipv6_fast_path() -> None:
    if not TAKEN:
        pytest.skip("the stream test did not run first")
    assert max(TAKEN) > 0 and sum(TAKEN) > len(TAKEN)


def test_in_order_ipv6_data_takes_the_fast_path_counted_at_every_layer() -> None:
    ends = []
    for fast in (True, False):
        core, conn, peer = make_connection(fast)
        frames = [
            segment6(TCP_ACK, bytes(100), seq=(peer.snd_nxt + 100 * i) & 0xFFFF_FFFF, ack=peer.rcv_nxt,
                     options=TcpOptions(timestamps=(conn.ts_recent + 1 + i, 0)), sport=peer.local_port)
            for i in range(4)
        ]  # fmt: skip
        core.begin_burst()
        core.ether_input_burst(frames, 1.0)
        core.end_burst(1.0)
        ends.append((core.fast_path_segments, [bytes(f) for f in core.take_outbox()], statistics(core)))
        assert len(conn.rcvbuf) == 400
        check_ether_accounting(core)
    assert ends[0][0] == 4 and ends[1][0] == 0
    assert ends[0][1] == ends[1][1] and len(ends[0][1]) == 1  # one ACK for the burst
    assert ends[0][2] == ends[1][2]


@pytest.mark.parametrize("fast", [True, False])
def test_an_ack_of_new_data_gives_the_nd_hint_on_either_path(fast: bool) -> None:
    """``tcp6_input`` confirms the peer reachable when its segment acknowledges new data
    (``nd6_nud_hint``); the fast path does the same, and a duplicate ACK confirms nothing."""
    core, conn, peer = make_connection(fast)
    assert core.ip6 is not None
    entry = core.ip6.nd6.cache[A]
    entry.state = STALE
    ts = conn.ts_recent
    duplicate = segment6(TCP_ACK, seq=peer.snd_nxt, ack=conn.snd_una,
                         options=TcpOptions(timestamps=(ts, 0)), sport=peer.local_port)  # fmt: skip
    core.ether_input_burst([duplicate], 1.0)
    assert entry.state == STALE
    new_ack = segment6(TCP_ACK, seq=peer.snd_nxt, ack=(conn.snd_una + 1000) & 0xFFFF_FFFF,
                       options=TcpOptions(timestamps=(ts + 1, 0)), sport=peer.local_port)  # fmt: skip
    before = core.fast_path_segments
    core.ether_input_burst([new_ack], 1.0)
    assert core.fast_path_segments == before + (1 if fast else 0)
    assert entry.state == REACHABLE and entry.reachable_until > 1.0
