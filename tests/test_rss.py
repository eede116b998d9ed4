"""The Toeplitz hash (C and twin) against the published RSS vectors, and the redirection table."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_yastack.dispatch import _native_rss, _rss
from trio_yastack.dispatch._native import NATIVE
from trio_yastack.dispatch._rss import (
    DEFAULT_RSS_KEY,
    Reta,
    flow_core,
    rss_input_ipv4,
    rss_input_ipv4_ports,
    toeplitz_hash,
)

needs_native = pytest.mark.skipif(not NATIVE, reason="native part not built on this machine")

# Microsoft's "Verifying the RSS Hash Calculation" suite for IPv4 (also in Intel's 82599 datasheet,
# 7.1.2.8.3, and DPDK's app/test/test_thash.c), with the key DEFAULT_RSS_KEY:
# (destination, destination port, source, source port, hash "IPv4 only", hash "IPv4 with TCP").
# The hash input is source address, destination address, source port, destination port.
MICROSOFT_IPV4_VECTORS = [
    ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323E8FC2, 0x51CCC178),
    ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xD718262A, 0xC626B0EA),
    ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xD2D0A5DE, 0x5C2B394A),
    ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x82989176, 0xAFC7327F),
    ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5D1809C5, 0x10E828A2),
]


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _implementations() -> list[object]:
    return [
        pytest.param(_native_rss.py_toeplitz, id="py"),
        pytest.param(
            _native_rss.native_toeplitz,
            id="native",
            marks=pytest.mark.skipif(not NATIVE, reason="native part not built"),
        ),
    ]


def test_default_key_is_the_microsoft_key() -> None:
    assert len(DEFAULT_RSS_KEY) == 40
    assert DEFAULT_RSS_KEY[:8] == bytes.fromhex("6d5a56da255b0ec2")
    assert DEFAULT_RSS_KEY[-4:] == bytes.fromhex("beac01fa")


@pytest.mark.parametrize("toeplitz", _implementations())
@pytest.mark.parametrize(("dst", "dport", "src", "sport", "ipv4_only", "with_tcp"), MICROSOFT_IPV4_VECTORS)
def test_microsoft_verification_vectors(
    toeplitz: object, dst: str, dport: int, src: str, sport: int, ipv4_only: int, with_tcp: int
) -> None:
    assert callable(toeplitz)
    assert toeplitz(DEFAULT_RSS_KEY, rss_input_ipv4(_ip(src), _ip(dst))) == ipv4_only
    assert toeplitz(DEFAULT_RSS_KEY, rss_input_ipv4_ports(_ip(src), _ip(dst), sport, dport)) == with_tcp
    # other buffer types hash the same bytes
    data = bytearray(rss_input_ipv4_ports(_ip(src), _ip(dst), sport, dport))
    assert toeplitz(bytearray(DEFAULT_RSS_KEY), memoryview(data)) == with_tcp


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "ipv4_only", "with_tcp"), MICROSOFT_IPV4_VECTORS)
def test_chosen_hash_and_flow_core_agree_with_the_vectors(
    dst: str, dport: int, src: str, sport: int, ipv4_only: int, with_tcp: int
) -> None:
    assert toeplitz_hash(DEFAULT_RSS_KEY, rss_input_ipv4(_ip(src), _ip(dst))) == ipv4_only
    reta = Reta(cores=3)
    assert flow_core(reta, DEFAULT_RSS_KEY, _ip(src), _ip(dst), sport, dport) == reta.core_of(with_tcp)
    assert reta.core_of(with_tcp) == (with_tcp & 127) % 3
    identity = Reta(cores=128)  # entries[i] == i: the core is the hash's low 7 bits
    assert flow_core(identity, DEFAULT_RSS_KEY, _ip(src), _ip(dst), sport, dport) == with_tcp & 127
    assert (
        _rss.flow_core_tables(identity, DEFAULT_RSS_KEY, _ip(src), _ip(dst), sport, dport) == with_tcp & 127
    )


def test_rss_inputs_are_network_order_tuples() -> None:
    assert rss_input_ipv4(0x01020304, 0x0A0B0C0D) == bytes.fromhex("010203040a0b0c0d")
    assert rss_input_ipv4_ports(0x01020304, 0x0A0B0C0D, 0x1234, 80) == bytes.fromhex(
        "010203040a0b0c0d12340050"
    )
    with pytest.raises(ValueError):
        rss_input_ipv4(1 << 32, 0)
    with pytest.raises(ValueError):
        rss_input_ipv4_ports(0, 0, 65536, 0)


@pytest.mark.parametrize("toeplitz", _implementations())
def test_key_too_short_is_value_error(toeplitz: object) -> None:
    assert callable(toeplitz)
    with pytest.raises(ValueError, match="len\\(data\\) \\+ 4"):
        toeplitz(bytes(15), bytes(12))
    with pytest.raises(ValueError):
        toeplitz(b"abc", b"")
    assert toeplitz(bytes(16), bytes(12)) == 0
    assert toeplitz(b"\xff\xff\xff\xff", b"") == 0


def _bitwise_toeplitz(key: bytes, data: bytes) -> int:
    """The definition, word for word: for each set bit, XOR in the key's 32 bits from there."""
    key_value, nbits = int.from_bytes(key, "big"), 8 * len(key)
    result = 0
    for bit in range(8 * len(data)):
        if data[bit // 8] & (0x80 >> (bit % 8)):
            result ^= (key_value >> (nbits - 32 - bit)) & 0xFFFFFFFF
    return result


@settings(max_examples=300)
@given(data=st.data(), key=st.binary(min_size=4, max_size=64))
def test_twin_is_the_definition(data: st.DataObject, key: bytes) -> None:
    message = data.draw(st.binary(max_size=len(key) - 4))
    assert _native_rss.py_toeplitz(key, message) == _bitwise_toeplitz(key, message)


@needs_native
@settings(max_examples=500)
@given(data=st.data(), key=st.binary(min_size=4, max_size=80))
def test_native_toeplitz_equals_twin(data: st.DataObject, key: bytes) -> None:
    message = data.draw(st.binary(max_size=len(key) - 4))
    assert _native_rss.native_toeplitz is not None
    assert _native_rss.native_toeplitz(key, message) == _native_rss.py_toeplitz(key, message)


# -- the redirection table ---------------------------------------------------------------------------


def test_reta_default_spreads_round_robin() -> None:
    reta = Reta(4)
    assert (reta.cores, reta.size) == (4, 128)
    assert reta.entries == [i % 4 for i in range(128)]
    assert [reta.entries.count(core) for core in range(4)] == [32] * 4
    assert Reta(3, size=8).entries == [0, 1, 2, 0, 1, 2, 0, 1]
    assert Reta(1).entries == [0] * 128


def test_reta_indexes_with_the_low_bits_of_the_hash() -> None:
    """Like the 82599 (seven LSBs for 128 entries) and DPDK: ``entries[hash & (size - 1)]``."""
    reta = Reta(4)
    custom = [(i * 7) % 4 for i in range(128)]
    reta.entries = custom
    for hash_value in (0, 1, 127, 128, 129, 0x51CCC178, 0xFFFFFFFF, 0xFFFFFF80):
        assert reta.core_of(hash_value) == custom[hash_value & 0x7F]
    assert reta.core_of(0x51CCC178) == custom[0x78]
    small = Reta(2, size=4)
    small.entries = [1, 1, 0, 1]
    assert [small.core_of(h) for h in (0, 1, 2, 3, 4, 6, 0xFFFFFFFE)] == [1, 1, 0, 1, 1, 0, 0]


def test_reta_entries_are_validated_and_copied() -> None:
    reta = Reta(2, size=8)
    with pytest.raises(ValueError, match="8 entries"):
        reta.entries = [0] * 7
    with pytest.raises(ValueError, match="not a core"):
        reta.entries = [0, 1, 2, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="not a core"):
        reta.entries = [0, 1, -1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="not a core"):
        reta.entries = [0, 1, 1.0, 0, 1, 0, 1, 0]  # type: ignore[list-item]
    assert reta.entries == [0, 1] * 4  # a refused table changes nothing
    reta.entries[0] = 1  # a copy: the table itself is unchanged
    assert reta.core_of(0) == 0


@pytest.mark.parametrize(("cores", "size"), [(0, 128), (3, 100), (129, 128), (2, 0)])
def test_reta_shape_is_validated(cores: int, size: int) -> None:
    with pytest.raises(ValueError):
        Reta(cores, size)


@settings(max_examples=300)
@given(
    src=st.integers(0, 0xFFFFFFFF),
    dst=st.integers(0, 0xFFFFFFFF),
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    cores=st.integers(1, 8),
    key=st.sampled_from([DEFAULT_RSS_KEY, bytes(range(40)), bytes(16)]),
)
def test_flow_core_is_reta_of_the_hash(
    src: int, dst: int, sport: int, dport: int, cores: int, key: bytes
) -> None:
    """The fast path and the long way give the same core, for every 4-tuple and key."""
    reta = Reta(cores)
    expected = reta.core_of(_native_rss.py_toeplitz(key, rss_input_ipv4_ports(src, dst, sport, dport)))
    assert flow_core(reta, key, src, dst, sport, dport) == expected
    assert _rss.flow_core_tables(reta, key, src, dst, sport, dport) == expected
    if NATIVE:
        assert _rss.flow_core_c(reta, key, src, dst, sport, dport) == expected


def test_flow_core_twin_path_without_native() -> None:
    """Without the native part, ``flow_core`` is the table lookups from the integers."""
    import os
    import subprocess
    import sys

    code = (
        "import trio_yastack.dispatch._native_rss as n;"
        "assert n.native_toeplitz is None and n.toeplitz is n.py_toeplitz;"
        "from trio_yastack.dispatch._rss import Reta, flow_core, flow_core_tables, DEFAULT_RSS_KEY as K;"
        "assert flow_core is flow_core_tables;"
        "r = Reta(128); r.entries = list(range(128));"
        "assert flow_core(r, K, 0x420995BB, 0xA18E6450, 2794, 1766) == 0x51CCC178 & 127;"
        "assert flow_core(r, K, 0x261BCD1E, 0xD18EA306, 48228, 2217) == 0xAFC7327F & 127;"
        "print('ok')"
    )
    env = dict(os.environ, TRIO_YASTACK_NO_NATIVE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_flow_core_spreads_flows_evenly() -> None:
    """Many client ports to one server spread over the cores about evenly (the point of RSS)."""
    reta = Reta(4)
    counts = [0] * 4
    for sport in range(10000, 14000):
        counts[flow_core(reta, DEFAULT_RSS_KEY, 0xC0A80002, 0xC0A80001, sport, 80)] += 1
    assert all(800 <= count <= 1200 for count in counts), counts
