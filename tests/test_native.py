"""The native checksum and its pure-Python twin agree, and the package works without C."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_yastack import _native

needs_native = pytest.mark.skipif(not _native.NATIVE, reason="native part not built on this machine")


def test_native_part_is_built_in_ci() -> None:
    """CI installs with gcc present, so the C build must have happened there."""
    if os.environ.get("CI") == "true":
        assert _native.NATIVE, "the cffi build failed in CI"


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
        "import trio_yastack._native as n; assert not n.NATIVE and n.sum16 is n.py_sum16;"
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
