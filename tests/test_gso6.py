"""Software GSO for TCP/IPv6 (``native/gso.c``'s ``yas_tcp6_segment`` and its twin
``_native.py_tcp6_segment``): the two cut any TCP/IPv6 frame into the same bytes, which are what
Linux's ``tcp6_gso_segment`` puts on the wire (scapy as the oracle), and both refuse what is not
TCP over IPv6 without an extension header.  (IPv4's segmenter is held to its twin in
test_native.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_yastack.stack import _native

needs_native = pytest.mark.skipif(not _native.NATIVE, reason="native part not built on this machine")
TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]


def _tcp6_frame(payload: bytes, *, flags: str, seq: int, options: bool, flow: int = 0) -> bytes:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    return bytes(
        Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02")
        / IPv6(src="2001:2::2", dst="2001:2::1", fl=flow, hlim=64)
        / TCP(sport=40000, dport=80, seq=seq, ack=5, flags=flags, options=TIMESTAMPS if options else [])
        / payload
    )


@needs_native
@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=9000),
    mss=st.integers(1, 3000),
    flags=st.sampled_from(["A", "PA", "FPA", "CA", "CPA", "FA"]),
    seq=st.integers(0, 0xFFFFFFFF),
    options=st.booleans(),
    flow=st.integers(0, 0xFFFFF),
)
def test_native_tcp6_segment_equals_twin(
    payload: bytes, mss: int, flags: str, seq: int, options: bool, flow: int
) -> None:
    """The C segmenter and its twin cut any TCP/IPv6 frame into the same bytes."""
    frame = _tcp6_frame(payload, flags=flags, seq=seq, options=options, flow=flow)
    assert _native.native_tcp6_segment is not None
    expected = _native.py_tcp6_segment(frame, mss)
    assert _native.native_tcp6_segment(frame, mss) == expected
    assert _native.native_tcp6_segment(bytearray(frame), mss) == expected
    assert _native.tcp6_segment is _native.native_tcp6_segment  # (the chosen one, when built)


@pytest.mark.parametrize("impl", ["py", "native"])
def test_tcp6_segment_is_what_a_kernel_would_put_on_the_wire(impl: str) -> None:
    """scapy as the oracle: every segment's TCP checksum over the IPv6 pseudo-header is right,
    its payload length, sequence number (+mss, wrapping) and flags (FIN/PSH last, CWR first) as
    Linux's GSO sets them, the rest of the IPv6 header (flow label, hop limit) kept, and the
    payloads join up to the original."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    segment = _native.py_tcp6_segment if impl == "py" else _native.native_tcp6_segment
    if segment is None:
        pytest.skip("native part not built on this machine")
    payload = bytes(range(256)) * 20  # 5120 bytes: 3 segments of 1428 and a tail
    frame = _tcp6_frame(payload, flags="CFPA", seq=0xFFFFFF00, options=True, flow=0x12345)
    pieces = [Ether(piece) for piece in segment(frame, 1428)]
    assert len(pieces) == 4
    joined = b""
    for index, piece in enumerate(pieces):
        ip, tcp = piece[IPv6], piece[TCP]
        checksum = tcp.chksum
        del tcp.chksum
        assert Ether(bytes(piece))[TCP].chksum == checksum
        assert (ip.fl, ip.hlim, ip.nh) == (0x12345, 64, 6)
        assert tcp.seq == (0xFFFFFF00 + 1428 * index) & 0xFFFFFFFF
        last, first = index == len(pieces) - 1, index == 0
        assert bool(tcp.flags & 0x01) == last and bool(tcp.flags & 0x08) == last  # FIN, PSH
        assert bool(tcp.flags & 0x80) == first  # CWR
        assert tcp.options == TIMESTAMPS
        joined += bytes(tcp.payload)
        assert ip.plen == 32 + len(bytes(tcp.payload))
        assert len(bytes(piece)) == 14 + 40 + ip.plen
    assert joined == payload


@pytest.mark.parametrize("impl", ["py", "native"])
@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00" * 80,
        bytes(12) + b"\x08\x00" + bytes(66),  # IPv4's ethertype
        bytes(12) + b"\x86\xdd" + b"\x60" + bytes(5) + b"\x00" + bytes(73),  # a hop-by-hop header first
        bytes(12) + b"\x86\xdd" + b"\x60\x00\x00\x00\xff\xff\x06" + bytes(73),  # payload beyond the frame
    ],
    ids=["empty", "zeros", "ipv4", "extension-header", "truncated"],
)
def test_tcp6_segment_refuses_what_is_not_tcp_ipv6(impl: str, bad: bytes) -> None:
    segment = _native.py_tcp6_segment if impl == "py" else _native.native_tcp6_segment
    if segment is None:
        pytest.skip("native part not built on this machine")
    with pytest.raises(ValueError):
        segment(bad, 1428)


def test_without_the_native_part_the_twin_segments() -> None:
    """With the native part disabled ``tcp6_segment`` is the twin, and it still cuts a frame."""
    code = (
        "import trio_yastack.stack._native as n; assert not n.NATIVE and n.native_tcp6_segment is None;"
        "assert n.tcp6_segment is n.py_tcp6_segment;"
        "from trio_yastack.stack.tcp import _tcp6; assert _tcp6.tcp6_segment is n.py_tcp6_segment;"
        "print('ok')"
    )
    env = dict(os.environ, TRIO_YASTACK_NO_NATIVE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
