"""Tier 2 for TCP over IPv6: the same TCP code for both families (``stack/tcp/_tcp6.py``).

Two cores joined by ``exchange`` (test_stack_ipv6.py's) play the kernel (2001:2::1) and us
(2001:2::2): the handshake with its options and MSS from MTU - 60, data both ways through the
software segmentation of TSO segments, FIN and TIME_WAIT, RST for a closed port, a listener's
families (IPv4 only, dual-stack, IPV6_V6ONLY), SYN cookies and ISNs over the IPv6 address,
ICMPv6 errors (Packet Too Big lowering the MSS, never below 1280; port unreachable), and every
frame checked as IPv6 with a valid TCP checksum over the IPv6 pseudo-header."""

from __future__ import annotations

import errno
import hashlib
import itertools
import socket
import struct
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

import pytest
from test_stack_ipv6 import A_MAC, B_MAC, ETH, A, B, core6, exchange, frame6, icmp6_frame, pair

from trio_yastack.dispatch._percore import CoreLayout, flow_owner
from trio_yastack.dispatch._rss import Reta
from trio_yastack.nic.tap import VNET_HDR, _offload_header, complete_checksum
from trio_yastack.stack import (
    ChecksumVerified,
    OffloadPacket,
    StackCore,
    TcpConnection6,
    TcpState,
    key6,
)
from trio_yastack.stack._native import sum16, tcp6_segment
from trio_yastack.stack.tcp import TcpConnection, TcpListener, _layer, _tcp6
from trio_yastack.stack.tcp._tcp6 import predicted_input
from trio_yastack.stack.wire.icmpv6 import Icmpv6Repr
from trio_yastack.stack.wire.ipv4 import IPPROTO_TCP
from trio_yastack.stack.wire.ipv6 import Ipv6Repr, pseudo_header_sum6
from trio_yastack.stack.wire.tcp import TCP_ACK, TCP_RST, TCP_SYN, TcpRepr

A4, B4 = 0xC6120001, 0xC6120002  # 198.18.0.1, 198.18.0.2


def tcp6_of(frame: bytes | bytearray) -> tuple[Ipv6Repr, TcpRepr]:
    """The IPv6 header and TCP segment of a frame (its checksum verified over the IPv6 pseudo-header)."""
    frame = bytes(frame)
    assert frame[12:14] == b"\x86\xdd"
    header = Ipv6Repr.parse(frame, ETH)
    assert header.next_header == IPPROTO_TCP
    body = frame[ETH + 40 : ETH + 40 + header.payload_len]
    assert (
        sum16(
            body, 0, len(body), pseudo_header_sum6(int(header.src), int(header.dst), IPPROTO_TCP, len(body))
        )
        == 0xFFFF
    )
    segment = TcpRepr.parse(body, IPv4Address(0), IPv4Address(0), verify_checksum=False)
    return header, segment


def run(left: StackCore, right: StackCore, now: float, steps: int = 200) -> float:
    """Exchange frames and fire timers for ``steps`` rounds of 10 ms; return the time reached."""
    for _ in range(steps):
        exchange(left, right, now, rounds=200)
        left.run_timers(now)
        right.run_timers(now)
        now += 0.01
    return now


def connected(
    kernel: StackCore, ours: StackCore, port: int = 80
) -> tuple[TcpConnection, TcpConnection, TcpListener]:
    listener = ours.tcp.listen6(port)
    client = kernel.tcp.connect6(B, port, 0.0)
    exchange(kernel, ours, 0.0)
    server = listener.accept()
    assert server is not None
    return client, server, listener


def test_handshake_over_ipv6_negotiates_options_and_mss_from_mtu_less_60() -> None:
    kernel, ours = pair()
    listener = ours.tcp.listen6(80)
    client = kernel.tcp.connect6(B, 80, 0.0)
    (syn,) = kernel.take_outbox()
    header, segment = tcp6_of(syn)
    assert (int(header.src), int(header.dst)) == (A, B)
    assert segment.flags == TCP_SYN and segment.options.mss == 1500 - 60
    assert segment.options.timestamps is not None and segment.options.sack_permitted
    ours.ether_input(bytes(syn), 0.0)
    (syn_ack,) = ours.take_outbox()
    header, segment = tcp6_of(syn_ack)
    assert (int(header.src), int(header.dst)) == (B, A) and segment.options.mss == 1440
    kernel.ether_input(bytes(syn_ack), 0.0)
    exchange(kernel, ours, 0.0)
    server = listener.accept()
    assert isinstance(server, TcpConnection6) and isinstance(client, TcpConnection6)
    assert server.state == client.state == TcpState.ESTABLISHED
    assert (server.remote_ip, server.local_ip6, server.remote_port) == (key6(A, B), B, client.local_port)
    assert (client.remote_ip, client.local_ip6) == (key6(B, A), A)
    assert server.mss == client.mss == 1440 - 12  # less the timestamp option
    assert ours.tcp.connections[(80, key6(A, B), client.local_port)] is server
    assert "2001:2::1" in repr(server)


def test_data_both_ways_and_fin_then_time_wait_over_ipv6() -> None:
    kernel, ours = pair()
    client, server, _ = connected(kernel, ours)
    data = hashlib.sha256(b"seed").digest() * 20_000  # 640 KB: TSO segments cut in software
    sent = received = 0
    back = bytearray()
    now = 0.01
    for _ in range(2000):
        if sent < len(data):
            sent += client.send(data[sent : sent + 65536], now)
        chunk = server.receive(1 << 20, now)
        if chunk:
            back += chunk
            received += len(chunk)
        exchange(kernel, ours, now, rounds=200)
        now += 0.001
        if received == len(data):
            break
    assert bytes(back) == data
    for frame in [*kernel.take_outbox(), *ours.take_outbox()]:
        tcp6_of(frame)
    server.send(data[::-1][:100_000], now)
    reply = bytearray()
    for _ in range(500):
        exchange(kernel, ours, now, rounds=200)
        chunk = client.receive(1 << 20, now)
        if chunk:
            reply += chunk
        if len(reply) == 100_000:
            break
        now += 0.001
    assert bytes(reply) == data[::-1][:100_000]
    client.close(now)
    exchange(kernel, ours, now)
    assert server.state == TcpState.CLOSE_WAIT and server.receive(10, now) == b""
    server.close(now)
    exchange(kernel, ours, now)
    assert server.state == TcpState.CLOSED
    assert client.state == TcpState.TIME_WAIT
    (record,) = kernel.tcp.time_wait.values()
    assert record.key == (client.local_port, key6(B, A), 80) and "[2001:2::2]" in repr(record)
    kernel.run_timers(now + 2 * kernel.config.tcp.msl + 1)
    assert not kernel.tcp.time_wait and kernel.stats_tcp.connections_closed == 1
    assert ours.stats_tcp.dropped == {} and kernel.stats_tcp.dropped == {}


def test_segments_over_ipv6_never_exceed_the_mtu() -> None:
    kernel, ours = pair()
    client, _server, _ = connected(kernel, ours)
    client.send(b"x" * 60_000, 0.01)
    frames = kernel.take_outbox()
    assert len(frames) > 1
    seqs = []
    for frame in frames:
        _header, segment = tcp6_of(frame)
        assert len(frame) - ETH <= 1500 and len(segment.payload) <= client.mss
        seqs.append((segment.seq, len(segment.payload)))
    for (seq, length), (next_seq, _) in itertools.pairwise(seqs):
        assert (seq + length) & 0xFFFFFFFF == next_seq  # contiguous: cut from one TSO segment


def test_rst_for_a_closed_port_refuses_the_connect() -> None:
    kernel, ours = pair()
    client = kernel.tcp.connect6(B, 81, 0.0)
    exchange(kernel, ours, 0.0)
    assert client.state == TcpState.CLOSED and client.error == errno.ECONNREFUSED
    assert ours.stats_tcp.resets_sent == 1 and ours.stats_tcp.dropped == {"no_socket": 1}


def test_a_reset_ends_an_established_connection_over_ipv6() -> None:
    kernel, ours = pair()
    client, server, _ = connected(kernel, ours)
    client.abort(0.1)
    (rst,) = kernel.take_outbox()
    assert tcp6_of(rst)[1].flags & TCP_RST
    ours.ether_input(bytes(rst), 0.1)
    assert server.state == TcpState.CLOSED and server.error == errno.ECONNRESET


def test_an_ipv4_listener_refuses_ipv6_and_a_v6only_one_refuses_ipv4() -> None:
    kernel, ours = pair()
    listener = ours.tcp.listen(80)  # an AF_INET socket's: IPv4 only
    client6 = kernel.tcp.connect6(B, 80, 0.0)
    exchange(kernel, ours, 0.0)
    assert client6.error == errno.ECONNREFUSED and listener.accept() is None
    with pytest.raises(OSError) as info:
        ours.tcp.listen6(80)  # dual-stack: IPv4's port is taken
    assert info.value.errno == errno.EADDRINUSE
    only6 = ours.tcp.listen6(80, v6only=True)  # beside it, as trio.open_tcp_listeners makes them
    assert (only6.ipv4, only6.ipv6, listener.ipv4, listener.ipv6) == (False, True, True, False)
    client4 = kernel.tcp.connect(B4, 80, 0.1)
    client6 = kernel.tcp.connect6(B, 80, 0.1)
    exchange(kernel, ours, 0.1)
    assert client4.state == client6.state == TcpState.ESTABLISHED
    from4, from6 = listener.accept(), only6.accept()
    assert type(from4) is TcpConnection and type(from6) is TcpConnection6
    assert listener.accept() is None and only6.accept() is None
    listener.close(0.2)
    only6.close(0.2)
    assert not ours.tcp.listeners and not ours.tcp.listeners6
    client4 = kernel.tcp.connect(B4, 80, 0.3)
    exchange(kernel, ours, 0.3)
    assert client4.error == errno.ECONNREFUSED


def test_a_dual_stack_listener_accepts_both_families() -> None:
    kernel, ours = pair()
    listener = ours.tcp.listen6(80)
    assert ours.tcp.listeners[80] is ours.tcp.listeners6[80] is listener
    with pytest.raises(OSError) as info:
        ours.tcp.listen(80)
    assert info.value.errno == errno.EADDRINUSE
    client4 = kernel.tcp.connect(B4, 80, 0.2)
    client6 = kernel.tcp.connect6(B, 80, 0.2)
    exchange(kernel, ours, 0.2)
    first, second = listener.accept(), listener.accept()
    assert first is not None and second is not None
    assert {type(first), type(second)} == {TcpConnection, TcpConnection6}
    assert {first.remote_ip, second.remote_ip} == {A4, key6(A, B)}
    assert client4.state == client6.state == TcpState.ESTABLISHED


def test_the_same_port_and_peer_port_apart_by_family() -> None:
    kernel, ours = pair()
    listener = ours.tcp.listen6(80)
    c4 = kernel.tcp.connect(B4, 80, 0.0, local_port=40000)
    c6 = kernel.tcp.connect6(B, 80, 0.0, local_port=40000)
    exchange(kernel, ours, 0.0)
    assert c4.state == c6.state == TcpState.ESTABLISHED
    assert {(80, A4, 40000), (80, key6(A, B), 40000)} <= set(ours.tcp.connections)
    c6.send(b"six", 0.1)
    c4.send(b"four", 0.1)
    exchange(kernel, ours, 0.1)
    got = {conn.remote_ip: conn.receive(10, 0.1) for conn in (listener.accept(), listener.accept()) if conn}
    assert got == {A4: b"four", key6(A, B): b"six"}


def test_syn_cookies_over_ipv6_hash_the_address() -> None:
    kernel = core6("2001:2::1/64", A_MAC, ipv4="198.18.0.1", seed=1)
    ours = core6()
    ours.tcp.config = replace(ours.tcp.config, syn_queue_limit=0)
    kernel.start(0.0)
    ours.start(0.0)
    assert kernel.ip6 is not None
    endpoint = kernel.ip6.icmp6.echo_open(1)
    kernel.ip6.icmp6.send_echo_request(endpoint, B, 1, b"hello", 0.0)
    exchange(kernel, ours, 0.0)
    listener = ours.tcp.listen6(80)
    client = kernel.tcp.connect6(B, 80, 0.0)
    exchange(kernel, ours, 0.0)
    assert ours.stats_tcp.syncookies_sent == 1 and ours.stats_tcp.syncookies_valid == 1
    server = listener.accept()
    assert isinstance(server, TcpConnection6) and server.local_ip6 == B
    assert client.state == server.state == TcpState.ESTABLISHED
    cookies = ours.tcp.cookies
    options = cookies.check(B, 80, key6(A, B), client.local_port, client.iss, server.iss, 0.0)
    assert options is not None and options.mss <= 1440
    # the same numbers for another IPv6 peer fail: the cookie covers the whole address
    assert cookies.check(B, 80, key6(A + 1, B), client.local_port, client.iss, server.iss, 0.0) is None


def test_isn_and_timestamp_offsets_hash_the_whole_ipv6_address() -> None:
    _kernel, ours = pair()
    tcp = ours.tcp
    one = tcp.initial_sequence_number(80, key6(A, B), 40000, 0.0)
    other = tcp.initial_sequence_number(80, key6(A ^ (1 << 100), B), 40000, 0.0)
    ours_other = tcp.initial_sequence_number(80, key6(A, B ^ (1 << 100)), 40000, 0.0)  # RFC 6528: both
    v4 = tcp.initial_sequence_number(80, A & 0xFFFFFFFF, 40000, 0.0)
    assert len({one, other, ours_other, v4}) == 4
    assert tcp.timestamp_offset(80, key6(A, B), 40000) != tcp.timestamp_offset(80, A & 0xFFFFFFFF, 40000)


def test_packet_too_big_lowers_the_mss_and_resends_the_flight_never_below_1280() -> None:
    kernel, ours = pair()
    client, server, _ = connected(kernel, ours)
    server.send(b"y" * 8000, 0.01)
    flight = ours.take_outbox()
    assert max(len(f) - ETH for f in flight) == 1500
    quote = bytes(flight[0][ETH : ETH + 1232])
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, Icmpv6Repr.packet_too_big(1400, quote)), 0.02)
    assert server.mss == 1400 - 60 - 12
    assert ours.ip6 is not None and ours.ip6.path_mtu(A, 0.02) == 1400
    resent = ours.take_outbox()
    assert resent and max(len(f) - ETH for f in resent) <= 1400
    for frame in resent:
        tcp6_of(frame)
    ours.ether_input(icmp6_frame(A_MAC, B_MAC, A, B, Icmpv6Repr.packet_too_big(576, quote)), 0.03)
    assert server.mss == 1280 - 60 - 12  # the floor is IPv6's minimum MTU
    assert ours.ip6.icmp6.stats.errors_delivered == 2
    exchange(kernel, ours, 0.03)
    assert client.receive(1 << 16, 0.04) == b"y" * 8000


def test_port_unreachable_in_syn_sent_refuses_the_connect() -> None:
    kernel, _ours = pair()
    client = kernel.tcp.connect6(B, 80, 0.0)
    (syn,) = kernel.take_outbox()
    quote = bytes(syn[ETH:])
    unreachable = Icmpv6Repr(1, 4, 0, quote)  # destination unreachable, port unreachable
    kernel.ether_input(icmp6_frame(B_MAC, A_MAC, B, A, unreachable), 0.01)
    assert client.state == TcpState.CLOSED and client.error == errno.ECONNREFUSED
    # one whose sequence number is outside the window is not believed (RFC 5927 4.1)
    client = kernel.tcp.connect6(B, 80, 0.1)
    (syn,) = kernel.take_outbox()
    forged = bytearray(syn[ETH:])
    forged[40 + 4 : 40 + 8] = ((int.from_bytes(forged[44:48], "big") + 99999) & 0xFFFFFFFF).to_bytes(4, "big")
    kernel.ether_input(icmp6_frame(B_MAC, A_MAC, B, A, Icmpv6Repr(1, 4, 0, bytes(forged))), 0.11)
    assert client.state == TcpState.SYN_SENT
    assert kernel.stats_tcp.dropped == {"icmp_out_of_window": 1}


def test_connect6_refuses_what_is_not_a_unicast_ipv6_peer() -> None:
    kernel, _ours = pair()
    for bad, code in (
        (0, errno.EINVAL),
        (0xFF02 << 112 | 1, errno.ENETUNREACH),
        (0xFFFF_C612_0002, errno.ENETUNREACH),
    ):
        with pytest.raises(OSError) as info:
            kernel.tcp.connect6(bad, 80, 0.0)
        assert info.value.errno == code
    with pytest.raises(OSError) as info:
        kernel.tcp.connect6(0x2001_0DB8 << 96 | 1, 80, 0.0)  # off-link, no router
    assert info.value.errno == errno.ENETUNREACH
    with pytest.raises(OSError) as info:
        kernel.tcp.connect6(B, 80, 0.0, local_ip=0x2001_0002 << 96 | 9)  # not ours
    assert info.value.errno == errno.EADDRNOTAVAIL


@pytest.mark.parametrize("core_id", [0, 1])
def test_rss_aware_ipv6_connects_pick_ports_whose_replies_come_home(core_id: int) -> None:
    """With a core's layout installed, an IPv6 active open picks an ephemeral port whose reply
    (the peer's SYN-ACK, hashed by ``flow_owner`` over the 36-byte IPv6 4-tuple) comes to it."""
    kernel, ours = pair()
    layout = CoreLayout(core_id, 2, 0, 0, {}, [], Reta(2))
    layout.install(ours)
    listener = kernel.tcp.listen6(8000)
    owners = set()
    for _ in range(20):
        client = ours.tcp.connect6(A, 8000, 0.0)
        (syn,) = ours.take_outbox()
        kernel.ether_input(bytes(syn), 0.0)
        (syn_ack,) = kernel.take_outbox()
        owners.add(flow_owner(bytes(syn_ack), layout.key, layout.reta.entries, 127))
        assert layout.owns_reply6(B, client.local_port, client.remote_ip, 8000)
        client.abort(0.0)
        ours.take_outbox()
    assert owners == {core_id} and listener.embryonic


def test_a_port_that_segments_ipv6_gets_one_tso_frame_the_kernel_can_complete() -> None:
    """With ``tso6`` (a TAP with its virtio-net header), a 60 KB send leaves as one IPv6
    ``OffloadPacket`` with ``gso_size`` = the MSS and the pseudo-header sum in the checksum field;
    the TAP's virtio-net header names it TCPV6 with the checksum at 54 + 16, and completing it as
    the kernel would gives a valid checksum over the IPv6 pseudo-header."""
    kernel, ours = pair()
    ours.tso6 = True  # (what open_stack sets from the port's capabilities)
    ours.tso_max_size = ours.gso_max_size = 0xFFFF
    ours.tx_checksum_offload = True
    client, server, _ = connected(kernel, ours)
    server.send(b"z" * 60_000, 0.01)
    frames = ours.take_outbox()
    big = [f for f in frames if isinstance(f, OffloadPacket) and f.gso_size]
    assert big and all(f.gso_size == server.mss for f in big)
    frame = big[0]
    assert len(frame) - ETH > 1500 and frame[12:14] == b"\x86\xdd"
    header = _offload_header(frame)
    assert header is not None
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(header)
    assert (flags, gso_type, gso_size, csum_start, csum_offset) == (1, 4, server.mss, 54, 16)
    assert hdr_len == 54 + 32  # TCP header with timestamps
    tcp6_of(complete_checksum(frame))
    # the kernel's side: the frames, completed as the TAP's kernel completes them, carry it all
    got = bytearray()
    for _ in range(50):
        for f in frames:
            kernel.ether_input(
                ChecksumVerified(complete_checksum(f) if isinstance(f, OffloadPacket) else f), 0.02
            )
        for f in kernel.take_outbox():
            ours.ether_input(bytes(f), 0.02)
        got += client.receive(1 << 20, 0.02) or b""
        frames = ours.take_outbox()
        if len(got) == 60_000:
            break
    assert bytes(got) == b"z" * 60_000


def _bulk6(
    tso6: bool, predicted: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[bytes], list[int], dict[str, int], int]:
    """200 KB from us to the kernel's side over IPv6, our port segmenting TCP/IPv6 (``tso6``) or
    not, with the frame template of ``TcpConnection6`` (``predicted``: without ``tso6``, its TSO
    segments cut by ``tcp6_segment``, C) or every segment through ``ip6_output`` (cut in Python
    first): every frame we sent (TSO frames completed as the TAP's kernel would), their
    ``gso_size`` marks, our counters, and how many frame buffers TCP made for them."""
    made = [0]
    original = OffloadPacket.__init__

    def counting(self: OffloadPacket, size: int, gso_size: int = 0) -> None:
        made[0] += 1
        original(self, size, gso_size)

    monkeypatch.setattr(OffloadPacket, "__init__", counting)
    cut = [0]

    def segmenting(frame: bytearray, mss: int) -> list[bytes]:
        cut[0] += 1
        return tcp6_segment(frame, mss)

    monkeypatch.setattr(_tcp6, "tcp6_segment", segmenting)
    if not predicted:
        monkeypatch.setattr(TcpConnection6, "_link_header6", lambda *args: None)
    kernel, ours = pair()
    if tso6:
        ours.tso6 = True  # (what open_stack sets from the port's capabilities)
        ours.tso_max_size = ours.gso_max_size = 0xFFFF
        ours.tx_checksum_offload = True
    client, server, _ = connected(kernel, ours)
    data = bytes(range(256)) * 800
    sent: list[bytes] = []
    marks: list[int] = []
    got = bytearray()
    now = 0.01
    made[0] = 0
    server.send(data, now)
    for _ in range(200):
        frames = ours.take_outbox()
        for frame in frames:
            marks.append(frame.gso_size if isinstance(frame, OffloadPacket) else -1)
            completed = complete_checksum(frame) if isinstance(frame, OffloadPacket) else bytes(frame)
            tcp6_of(completed)  # valid over the IPv6 pseudo-header
            sent.append(completed)
            kernel.ether_input(ChecksumVerified(completed), now)
        for frame in kernel.take_outbox():
            ours.ether_input(bytes(frame), now)
        got += client.receive(1 << 20, now) or b""
        if len(got) == len(data) and not frames:
            break
        kernel.run_timers(now)
        ours.run_timers(now)
        now += 0.01
    assert bytes(got) == data
    assert ours.ip6 is not None
    stats = ours.statistics().tcp
    counters = {
        "segments_sent": stats.segments_sent,
        "bytes_sent": stats.bytes_sent,
        "ip6_sent": ours.ip6.stats.sent,
        "ether_sent": ours.stats_ether.sent,
    }
    assert (cut[0] > 0) == (predicted and not tso6)  # software GSO in C from the template only
    return sent, marks, counters, made[0]


@pytest.mark.parametrize("tso6", [True, False], ids=["tso6", "software-cut"])
def test_bulk_segments_over_ipv6_are_built_in_place_and_frame_as_ip6_output_does(
    tso6: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TcpConnection6._send_data_segment`` builds a bulk segment behind IPv6's headroom: one
    frame buffer per segment, handed to the port as it is (before, each 64 KB TSO segment was
    built behind IPv4's headroom and copied into a second buffer).  Finished from the
    connection's template (and cut by the C segmenter for a port without TSO6) or through
    ``ip6_output`` (cut in Python), the frames are the same, byte for byte, with the same marks
    and counters; TSO frames carry ``gso_size`` = the MSS and complete to valid checksums;
    without ``tso6`` every frame fits the MTU."""
    sent, marks, counters, made = _bulk6(tso6, True, monkeypatch)
    monkeypatch.undo()
    general, general_marks, general_counters, general_made = _bulk6(tso6, False, monkeypatch)
    assert sent == general and marks == general_marks and counters == general_counters
    if tso6:
        assert any(m > 0 for m in marks)
        offloaded = [m for m in marks if m >= 0]  # (a short data segment too: CHECKSUM_PARTIAL)
        assert len(offloaded) == made == general_made  # one buffer per frame sent, no copy
        assert counters["segments_sent"] > counters["ip6_sent"]  # counted as the wire's segments
    else:
        assert made == general_made == 0 and set(marks) == {-1}
        assert all(len(frame) - ETH <= 1500 for frame in sent)


def test_forward_progress_confirms_the_neighbour_and_segments_take_the_predicted_path() -> None:
    """RFC 4861 7.3.1: an ACK of new data from the peer makes its neighbour entry REACHABLE
    without a probe (it was DELAY after our first send to a STALE entry); then our segments are
    written whole from the connection's header template -- the same frames, and the same
    counters, as ``ip6_output`` makes."""
    kernel, ours = pair()
    client, server, _ = connected(kernel, ours)
    assert ours.ip6 is not None
    entry = ours.ip6.nd6.cache[A]
    assert entry.state == "reachable"  # (the handshake's ACK of our SYN was progress already)
    entry.state = "stale"  # as an entry learned from a solicitation, or aged
    server.send(b"a" * 100, 0.1)
    assert entry.state == "delay"  # RFC 4861 7.3.3: sending to a STALE entry
    exchange(kernel, ours, 0.1)
    assert client.receive(1000, 0.1) == b"a" * 100
    kernel.run_timers(0.5)  # the peer's delayed ACK of it
    exchange(kernel, ours, 0.5)
    assert entry.state == "reachable" and entry.timer is None  # no probe will go
    ip6_sent, ether_sent = ours.ip6.stats.sent, ours.stats_ether.sent
    server.send(b"b" * 100, 0.6)
    (predicted,) = ours.take_outbox()
    assert (ours.ip6.stats.sent, ours.stats_ether.sent) == (ip6_sent + 1, ether_sent + 1)
    header, segment = tcp6_of(predicted)
    assert (int(header.src), int(header.dst), header.hop_limit) == (B, A, 64)
    assert segment.payload == b"b" * 100 and predicted[:6] == A_MAC
    entry.state = "stale"  # the general path: the same frame, byte for byte
    server.nodelay = True  # (no waiting for the ACK of "b": Nagle)
    server.send(b"c" * 100, 0.7)
    (general,) = ours.take_outbox()
    assert len(general) == len(predicted) and tcp6_of(general)[1].payload == b"c" * 100
    assert general[:54] == predicted[:54]  # Ethernet + IPv6 headers alike


def _conversation(fast: bool) -> tuple[list[bytes], dict[str, int]]:
    """Requests and responses over IPv6 with both cores' ``fast_path`` as given: every frame we
    sent and our TCP counters."""
    kernel, ours = pair()
    kernel.fast_path = ours.fast_path = fast
    client, server, _ = connected(kernel, ours)
    sent: list[bytes] = []
    now = 0.01
    for i in range(30):
        client.send(b"request %d " % i * (1 + i * 40), now)  # up to ~14 KB: several segments
        for _ in range(20):
            moved = False
            for frame in kernel.take_outbox():
                ours.ether_input(bytes(frame), now)
                moved = True
            got = server.receive(1 << 20, now)
            if got:
                server.send(got.upper(), now)
            for frame in ours.take_outbox():
                sent.append(bytes(frame))
                kernel.ether_input(bytes(frame), now)
                moved = True
            client.receive(1 << 20, now)
            kernel.run_timers(now)
            ours.run_timers(now)
            now += 0.05
            if not moved:
                break
    stats = ours.statistics().tcp
    counters = {name: getattr(stats, name) for name in ("segments_received", "segments_sent", "bytes_sent")}
    return sent, counters


def test_the_predicted_input_over_ipv6_sends_what_the_general_path_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The differential test of ``_tcp6.predicted_input`` (header prediction and
    ``ack_and_data_input`` for IPv6 segments): the same conversation with it on and off sends
    the same frames, byte for byte, and counts the same."""
    taken: list[bool] = []

    def counting(*args: Any) -> bool:
        result = predicted_input(*args)
        taken.append(result)
        return result

    monkeypatch.setattr(_layer, "predicted_input", counting)
    predicted, counted = _conversation(True)
    assert taken.count(True) > 30  # it took most segments
    taken.clear()
    general, counted_general = _conversation(False)
    assert not taken
    assert len(predicted) > 60
    assert predicted == general
    assert counted == counted_general


async def test_tcp_over_ipv6_journeys_pass_tcp_input_and_the_traced_output(autojump_clock: object) -> None:
    """A traced stack serving TCP over IPv6 on a memory wire: a segment's journey goes
    ether_input -> ip6_input -> tcp_input (the shared hop name) -> sbappend, and our segments'
    journeys leave through ip6_output -> nd6_resolve (a traced core takes no predicted path)."""
    import trio

    from trio_yastack import open_stack
    from trio_yastack.journey import CoreTracer, Journey, TraceSubscription
    from trio_yastack.nic import memory_wire
    from trio_yastack.stack import Ip6Config

    port_a, port_b = memory_wire(latency=0.001)
    journeys: list[Journey] = []
    no_dad = Ip6Config(dad_transmits=0, router_solicitations=0)
    async with (
        open_stack(port_a, ip=["198.18.0.2/24", "2001:2::2/64"], seed=1, ip6=no_dad) as server,
        open_stack(port_b, ip=["198.18.0.1/24", "2001:2::1/64"], seed=2, ip6=no_dad) as client,
    ):
        listener = server.socket(socket.AF_INET6)
        await listener.bind(("::", 8000))
        listener.listen()
        tracer = CoreTracer(server.core, server.port, server._loop)
        tracer.subscribe(TraceSubscription(journeys.append))
        try:
            with trio.fail_after(10):
                sock = client.socket(socket.AF_INET6)
                await sock.connect(("2001:2::2", 8000))
                accepted, _ = await listener.accept()
                await sock.send(b"traced over six")
                assert await accepted.recv(100) == b"traced over six"
                await accepted.send(b"and back")
                assert await sock.recv(100) == b"and back"
        finally:
            tracer.close()
            for s in (sock, accepted, listener):
                s.close()
    paths = [[hop.layer for hop in journey.hops] for journey in journeys]
    assert any(path[:4] == ["rx_burst", "ether_input", "ip6_input", "tcp_input"] for path in paths), paths
    assert any("sbappend" in path for path in paths), paths
    assert any(path[:2] == ["ip6_output", "nd6_resolve"] for path in paths), paths
    notes = [hop.note for journey in journeys for hop in journey.hops if hop.layer == "tcp_input"]
    assert any("over IPv6" in note for note in notes), notes


def _syn6(src: int, dst: int, *, checksum_ok: bool = True) -> bytes:
    """A bare SYN from ``src`` to ``dst``:80, its checksum over the IPv6 pseudo-header (or wrong)."""
    segment = bytearray(struct.pack("!HHIIBBHHH", 40000, 80, 1000, 0, 0x50, TCP_SYN, 65535, 0, 0))
    checksum = ~sum16(bytes(segment), 0, 20, pseudo_header_sum6(src, dst, IPPROTO_TCP, 20)) & 0xFFFF
    struct.pack_into("!H", segment, 16, checksum if checksum_ok else checksum ^ 0x0101)
    return frame6(A_MAC, B_MAC, src, dst, IPPROTO_TCP, bytes(segment))


def test_hostile_segments_over_ipv6_are_counted_drops() -> None:
    """A bad checksum over the IPv6 pseudo-header and a SYN to a multicast group we joined (the
    all-nodes group): each a counted drop, never answered; the same SYN well formed is."""
    _kernel, ours = pair()
    ours.tcp.listen6(80)
    ours.ether_input(_syn6(A, B, checksum_ok=False), 0.0)
    all_nodes = 0xFF02 << 112 | 1
    ours.ether_input(_syn6(A, all_nodes), 0.0)
    assert ours.take_outbox() == []
    assert ours.stats_tcp.dropped == {"bad_checksum": 1, "not_unicast": 1}
    ours.ether_input(_syn6(A, B), 0.0)  # the same SYN, well formed: answered
    (syn_ack,) = ours.take_outbox()
    assert tcp6_of(syn_ack)[1].flags == TCP_SYN | TCP_ACK


def test_a_new_connection_starts_within_the_path_mtu_already_known() -> None:
    """RFC 8201 5.2: a Packet Too Big about an earlier connection lowered the path MTU to the
    peer; a new connection's MSS starts there rather than at the link's (nothing resent)."""
    kernel, ours = pair()
    assert ours.ip6 is not None
    ours.ip6.update_pmtu(A, 1400, 0.0)
    _client, server, _ = connected(kernel, ours)
    assert server.mss == 1400 - 60 - 12
    ours.ip6.pmtu.clear()  # (expired, as after 10 minutes)
    _client, other, _ = connected(kernel, ours, port=81)
    assert other.mss == 1500 - 60 - 12


def test_time_wait_answers_a_retransmitted_fin_over_ipv6() -> None:
    """The compact TIME_WAIT record has no connection object to send with: its ACK of a
    retransmitted FIN leaves over IPv6 from the record's keyed address, with a valid checksum."""
    kernel, ours = pair()
    client, server, _ = connected(kernel, ours)
    server.close(0.1)  # we close first: we end in TIME_WAIT
    exchange(kernel, ours, 0.1)
    client.close(0.2)
    (fin,) = kernel.take_outbox()
    ours.ether_input(bytes(fin), 0.2)
    ours.take_outbox()  # our ACK of it
    assert len(ours.tcp.time_wait) == 1 and server.state == TcpState.TIME_WAIT
    ours.ether_input(bytes(fin), 0.3)  # as if our ACK was lost
    (again,) = ours.take_outbox()
    header, segment = tcp6_of(again)
    assert (int(header.src), int(header.dst)) == (B, A) and segment.flags == TCP_ACK
    assert segment.ack == (tcp6_of(fin)[1].seq + 1) & 0xFFFFFFFF


def test_a_syn_on_an_established_ipv6_connection_gets_a_challenge_ack() -> None:
    """RFC 5961 4.2 over IPv6: a SYN for an established pair (a blind attacker's, or a peer that
    restarted) is answered with a challenge ACK at RCV.NXT, the connection left as it was."""
    kernel, ours = pair()
    client, server, _ = connected(kernel, ours)
    in_window = server.rcv_nxt & 0xFFFFFFFF
    syn = bytearray(
        struct.pack("!HHIIBBHHH", client.local_port, 80, in_window, 0, 0x50, TCP_SYN, 65535, 0, 0)
    )
    checksum = ~sum16(bytes(syn), 0, 20, pseudo_header_sum6(A, B, IPPROTO_TCP, 20)) & 0xFFFF
    struct.pack_into("!H", syn, 16, checksum)
    ours.ether_input(frame6(A_MAC, B_MAC, A, B, IPPROTO_TCP, bytes(syn)), 0.1)
    (challenge,) = ours.take_outbox()
    _header, segment = tcp6_of(challenge)
    assert segment.flags == TCP_ACK and segment.ack == server.rcv_nxt & 0xFFFFFFFF
    assert server.state == TcpState.ESTABLISHED and ours.stats_tcp.challenge_acks_sent == 1
