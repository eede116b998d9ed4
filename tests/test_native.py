"""The stack's native functions (checksum, GSO) and their pure-Python twins agree, and the package
works without C.  (The dispatcher's, Toeplitz and rings, are held to their twins in test_rss.py
and test_ring.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_yastack.dispatch import _native as _dispatch_native
from trio_yastack.stack import _native

needs_native = pytest.mark.skipif(not _native.NATIVE, reason="native part not built on this machine")


def test_native_part_is_built_in_ci() -> None:
    """CI installs with gcc present, so both extensions (the stack's, the dispatcher's) must have
    been built there."""
    if os.environ.get("CI") == "true":
        assert _native.NATIVE, "the stack's cffi build failed in CI"
        assert _dispatch_native.NATIVE, "the dispatcher's cffi build failed in CI"


@needs_native
@settings(max_examples=500)
@given(
    data=st.binary(max_size=3000),
    start=st.integers(0, 40),
    cut=st.integers(0, 40),
    initial=st.integers(0, 0xFFFFF),
)
def test_native_sum16_equals_twin(data: bytes, start: int, cut: int, initial: int) -> None:
    start = min(start, len(data))
    length = max(0, len(data) - start - cut)
    assert _native.native_sum16 is not None
    expected = _native.py_sum16(data, start, length, initial)
    assert _native.native_sum16(data, start, length, initial) == expected
    assert _native.native_sum16(bytearray(data), start, length, initial) == expected
    assert _native.native_sum16(memoryview(data), start, length, initial) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"\x00\x00", 0),
        (b"\xff\xff", 0xFFFF),
        (b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7", 0xDDF2),  # RFC 1071 section 3 example: sum 0xddf2
        (b"\x01", 0x0100),  # an odd byte is the high half of a word
        (b"\xff\xff\x00\x01", 0x0001),  # end-around carry
    ],
)
def test_sum16_known_values(data: bytes, expected: int) -> None:
    assert _native.py_sum16(data, 0, len(data), 0) == expected
    if _native.native_sum16 is not None:
        assert _native.native_sum16(data, 0, len(data), 0) == expected


@pytest.mark.parametrize("impl", ["py", "native"])
@pytest.mark.parametrize(("offset", "length"), [(0, 11), (5, 6), (11, 1), (-1, 2), (2, -1)])
def test_out_of_range_is_value_error_not_a_read(impl: str, offset: int, length: int) -> None:
    function = _native.py_sum16 if impl == "py" else _native.native_sum16
    if function is None:
        pytest.skip("native part not built")
    with pytest.raises(ValueError, match="outside the buffer"):
        function(b"0123456789", offset, length, 0)


def test_package_works_without_native_part() -> None:
    """With the native part disabled the twins are used and frames still verify."""
    code = (
        "import trio_yastack.stack._native as n; assert not n.NATIVE and n.sum16 is n.py_sum16;"
        "assert n.sum16_bytes is n.py_sum16_bytes and n.tcp4_segment is n.py_tcp4_segment;"
        "from trio_yastack.stack.wire import internet_checksum as c;"
        # the IPv4 header example whose checksum is 0xB1E6 (RFC 1071's arithmetic, worked by hand)
        "h = bytes.fromhex('4500003c1c4640004006') + bytes(2) + bytes.fromhex('ac100a63ac100a0c');"
        "assert c(h) == 0xB1E6;"
        "print('ok')"
    )
    env = dict(os.environ, TRIO_YASTACK_NO_NATIVE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@settings(max_examples=300)
@given(data=st.binary(max_size=2000), offset=st.integers(0, 2100), length=st.integers(0, 2100))
def test_sum16_bytes_equals_twin_including_out_of_range(data: bytes, offset: int, length: int) -> None:
    """The raw per-packet entry point: same sums, and 0xFFFFFFFF (never a valid sum) for a range
    outside the buffer, from C and from the twin alike."""
    expected = _native.py_sum16_bytes(data, len(data), offset, length, 7)
    if offset + length > len(data):
        assert expected == 0xFFFFFFFF
    else:
        assert expected == _native.py_sum16(data, offset, length, 7)
    assert _native.sum16_bytes(data, len(data), offset, length, 7) == expected


# -- software GSO ------------------------------------------------------------------------------------


def _tcp_frame(payload: bytes, *, flags: str, ip_id: int, seq: int, options: bool) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    tcp_options = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))] if options else []
    return bytes(
        Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02")
        / IP(src="198.18.0.2", dst="198.18.0.1", id=ip_id)
        / TCP(sport=40000, dport=80, seq=seq, ack=5, flags=flags, options=tcp_options)
        / payload
    )


@needs_native
@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=9000),
    mss=st.integers(1, 3000),
    flags=st.sampled_from(["A", "PA", "FPA", "CA", "CPA", "FA"]),
    ip_id=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFFFFFF),
    options=st.booleans(),
)
def test_native_tcp4_segment_equals_twin(
    payload: bytes, mss: int, flags: str, ip_id: int, seq: int, options: bool
) -> None:
    """The C segmenter and its twin cut any TCP/IPv4 frame into the same bytes."""
    frame = _tcp_frame(payload, flags=flags, ip_id=ip_id, seq=seq, options=options)
    assert _native.native_tcp4_segment is not None
    expected = _native.py_tcp4_segment(frame, mss)
    assert _native.native_tcp4_segment(frame, mss) == expected
    assert _native.native_tcp4_segment(bytearray(frame), mss) == expected


@pytest.mark.parametrize("impl", ["py", "native"])
def test_tcp4_segment_is_what_a_kernel_would_put_on_the_wire(impl: str) -> None:
    """scapy as the oracle: every segment's IPv4 and TCP checksums are right, lengths, ids (+1),
    sequence numbers (+mss, wrapping) and flags (FIN/PSH last, CWR first) as Linux's GSO sets
    them, and the payloads join up to the original."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    segment = _native.py_tcp4_segment if impl == "py" else _native.native_tcp4_segment
    if segment is None:
        pytest.skip("native part not built on this machine")
    payload = bytes(range(256)) * 20  # 5120 bytes: 4 segments of 1448 and a tail
    frame = _tcp_frame(payload, flags="CFPA", ip_id=0xFFFE, seq=0xFFFFFF00, options=True)
    pieces = [Ether(piece) for piece in segment(frame, 1448)]
    assert len(pieces) == 4
    joined = b""
    for index, piece in enumerate(pieces):
        ip, tcp = piece[IP], piece[TCP]
        checksums = (ip.chksum, tcp.chksum)
        del ip.chksum, tcp.chksum
        rebuilt = Ether(bytes(piece))
        assert (rebuilt[IP].chksum, rebuilt[TCP].chksum) == checksums
        assert ip.id == (0xFFFE + index) & 0xFFFF
        assert tcp.seq == (0xFFFFFF00 + 1448 * index) & 0xFFFFFFFF
        last, first = index == len(pieces) - 1, index == 0
        assert bool(tcp.flags & 0x01) == last and bool(tcp.flags & 0x08) == last  # FIN, PSH
        assert bool(tcp.flags & 0x80) == first  # CWR
        assert tcp.options == [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]
        joined += bytes(tcp.payload)
        assert ip.len == 20 + 32 + len(bytes(tcp.payload))
    assert joined == payload


@pytest.mark.parametrize("impl", ["py", "native"])
@pytest.mark.parametrize(
    "bad", [b"", b"\x00" * 60, bytes(12) + b"\x08\x06" + bytes(46)], ids=["empty", "zeros", "arp"]
)
def test_tcp4_segment_refuses_what_is_not_tcp_ipv4(impl: str, bad: bytes) -> None:
    segment = _native.py_tcp4_segment if impl == "py" else _native.native_tcp4_segment
    if segment is None:
        pytest.skip("native part not built on this machine")
    with pytest.raises(ValueError):
        segment(bad, 1448)
