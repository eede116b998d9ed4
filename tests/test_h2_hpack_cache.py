"""The proxy's HPACK encoder and decoder (l7/_hpack_cache.py) against hpack's own."""

from __future__ import annotations

import random

import hpack
import pytest

from trio_yastack.l7._hpack_cache import BLOCK_CACHE, FIELD_CACHE, CachingDecoder, StaticEncoder

_NAMES = [
    b":status",
    b"date",
    b"server",
    b"content-type",
    b"content-length",
    b"x-custom",
    b"set-cookie",
    b"via",
]
_VALUES = [b"200", b"404", b"text/plain", b"6", b"", b"nginx", b"a" * 40, b"\xff\x00 odd", b"gzip"]


def _random_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    return [(rng.choice(_NAMES), rng.choice(_VALUES)) for _ in range(rng.randint(0, 8))]


def test_static_encoder_blocks_decode_as_given_and_never_touch_the_dynamic_table() -> None:
    rng = random.Random(20)
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    for _ in range(2000):
        headers = _random_headers(rng)
        block = encoder.encode(headers)
        assert decoder.decode(block, raw=True) == headers
        # again (from the field cache): the same bytes
        assert encoder.encode(headers) == block
    assert len(encoder.header_table.dynamic_entries) == 0
    assert len(decoder.header_table.dynamic_entries) == 0


def test_static_encoder_uses_the_static_table() -> None:
    encoder = StaticEncoder()
    assert encoder.encode([(b":status", b"200")]) == b"\x88"  # static index 8, indexed
    # content-length (static name 28) without indexing: 0x0f 0x0d, then the value
    block = encoder.encode([(b"content-length", b"6")])
    assert block[:2] == b"\x0f\x0d"
    assert hpack.Decoder().decode(block, raw=True) == [(b"content-length", b"6")]


def test_credentials_stay_never_indexed() -> None:
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    secret = hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer x")
    block = encoder.encode([(b":status", b"200"), secret])
    assert block[1] & 0xF0 == 0x10  # never indexed (RFC 7541 6.2.3), static name 23
    decoded = decoder.decode(block, raw=True)
    assert decoded == [(b":status", b"200"), (b"authorization", b"Bearer x")]
    assert isinstance(decoded[1], hpack.NeverIndexedHeaderTuple)
    assert secret not in encoder._fields


def test_a_table_size_change_is_signalled_first() -> None:
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    encoder.header_table_size = 256  # the client's SETTINGS_HEADER_TABLE_SIZE
    block = encoder.encode([(b":status", b"200"), (b"server", b"x")])
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update
    assert decoder.decode(block, raw=True) == [(b":status", b"200"), (b"server", b"x")]
    assert decoder.header_table.maxsize == 256
    # and then static only again, still in step with the decoder
    for _ in range(3):
        assert decoder.decode(encoder.encode([(b"server", b"y")]), raw=True) == [(b"server", b"y")]


def test_field_cache_is_bounded() -> None:
    encoder = StaticEncoder()
    for n in range(FIELD_CACHE * 3):
        encoder.encode([(b"x-n", str(n).encode())])
        assert len(encoder._fields) <= FIELD_CACHE


@pytest.mark.parametrize("table_size", [4096, 128, 0])
def test_caching_decoder_agrees_with_hpacks(table_size: int) -> None:
    """Blocks from hpack's own encoder (dynamic table, evictions with a small table, the same
    requests again as one-byte indexed blocks): the caching decoder gives what hpack's gives."""
    rng = random.Random(table_size)
    encoder, plain, caching = hpack.Encoder(), hpack.Decoder(), CachingDecoder()
    encoder.header_table_size = table_size
    requests = [_random_headers(rng) for _ in range(12)]
    hits = 0
    for _ in range(3000):
        headers = rng.choice(requests) if rng.random() < 0.9 else _random_headers(rng)
        block = encoder.encode(headers)
        hits += block in caching._blocks
        assert list(caching.decode(block, raw=True)) == list(plain.decode(block, raw=True)) == headers
        assert caching.header_table.dynamic_entries == plain.header_table.dynamic_entries
        assert len(caching._blocks) <= BLOCK_CACHE
    if table_size == 4096:
        assert hits > 1000  # the repeated requests did come from the memory (a small table evicts)


def test_caching_decoder_errors_as_hpack() -> None:
    caching = CachingDecoder()
    for bad in (b"\xfe", b"\x80", b"\x82\xff", b"\x3f"):
        with pytest.raises(hpack.HPACKDecodingError):
            caching.decode(bad, raw=True)
        assert bad not in caching._blocks


def test_caching_decoder_checks_the_list_size() -> None:
    encoder = hpack.Encoder()
    big = [(b"x-big", b"v" * 100)]
    caching = CachingDecoder()
    caching.decode(encoder.encode(big), raw=True)  # inserted
    block = encoder.encode(big)  # now one indexed byte
    assert caching.decode(block, raw=True) == big
    caching.max_header_list_size = 50
    with pytest.raises(hpack.OversizedHeaderListError):
        caching.decode(block, raw=True)
