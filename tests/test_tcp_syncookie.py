"""SYN cookies (RFC 4987 section 3.6): what a cookie carries through the handshake, what it is
bound to, how long it lives, and how hard it is to forge.

Every test uses fixed secrets and explicit ``now`` values; the hypothesis tests that could in
principle hit a 2**-22 MAC collision are derandomized, so a pass is reproducible.
"""

from __future__ import annotations

import ast
import math
import random
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_yastack.stack.tcp import _syncookie as _tcp_syncookie
from trio_yastack.stack.tcp._syncookie import COUNTER_PERIOD, MSS_TABLE, CookieOptions, SynCookies

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
LOCAL_IP = int(IPv4Address("192.0.2.1"))
REMOTE_IP = int(IPv4Address("198.51.100.7"))
LOCAL_PORT = 80
REMOTE_PORT = 49152
CLIENT_ISN = 0x1234_5678
NOW = 10_000.0  # tick 156 of the counter, 16 s into it
OPTIONS = CookieOptions(mss=1460, window_scale=7, sack_permitted=True)
MOD = 2**32
MAC_BITS = 22
TIME_BITS = 2

ADDRESS = st.integers(0, MOD - 1)
PORT = st.integers(0, 65535)
SEQ = st.integers(0, MOD - 1)
WINDOW_SCALE = st.one_of(st.none(), st.integers(0, 14))
TABLE_OPTIONS = st.builds(
    CookieOptions, mss=st.sampled_from(MSS_TABLE), window_scale=WINDOW_SCALE, sack_permitted=st.booleans()
)
NOW_ST = st.floats(0.0, 1e9, allow_nan=False)


def make(
    cookies: SynCookies, options: CookieOptions = OPTIONS, now: float = NOW, isn: int = CLIENT_ISN
) -> int:
    return cookies.make(LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, isn, options, now)


def check(cookies: SynCookies, cookie: int, now: float = NOW, isn: int = CLIENT_ISN) -> CookieOptions | None:
    return cookies.check(LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, isn, cookie, now)


def poisson_bound(expected: float, tail: float = 1e-9) -> int:
    """The smallest k with P(X > k) < tail for X ~ Poisson(expected): more false accepts than
    this would mean the MAC is weaker than its width."""
    term = cdf = math.exp(-expected)
    k = 0
    while 1.0 - cdf >= tail:
        k += 1
        term *= expected / k
        cdf += term
    return k


# --- round trip: the options survive the handshake -------------------------------------------------


def test_mss_table_is_eight_ascending_values() -> None:
    assert MSS_TABLE == (216, 536, 1200, 1360, 1400, 1440, 1460, 8960)
    assert list(MSS_TABLE) == sorted(set(MSS_TABLE))


@pytest.mark.parametrize("mss", MSS_TABLE)
def test_round_trip_every_mss(mss: int) -> None:
    cookies = SynCookies(SECRET)
    options = CookieOptions(mss=mss, window_scale=7, sack_permitted=True)
    assert check(cookies, make(cookies, options)) == options


@pytest.mark.parametrize("window_scale", [None, *range(15)])
def test_round_trip_every_window_scale(window_scale: int | None) -> None:
    cookies = SynCookies(SECRET)
    options = CookieOptions(mss=1460, window_scale=window_scale, sack_permitted=False)
    assert check(cookies, make(cookies, options)) == options


@pytest.mark.parametrize("sack", [False, True])
def test_round_trip_sack(sack: bool) -> None:
    cookies = SynCookies(SECRET)
    options = CookieOptions(mss=536, window_scale=None, sack_permitted=sack)
    assert check(cookies, make(cookies, options)) == options


def test_round_trip_every_option_combination() -> None:
    cookies = SynCookies(SECRET)
    seen = set()
    for mss in MSS_TABLE:
        for window_scale in [None, *range(15)]:
            for sack in (False, True):
                options = CookieOptions(mss, window_scale, sack)
                cookie = make(cookies, options)
                assert check(cookies, cookie) == options
                seen.add(cookie)
    assert len(seen) == 8 * 16 * 2  # the options are in the cookie, so no two cookies coincide


@pytest.mark.parametrize("isn", [0xFFFF_FFFF, 0xFFFF_FFFE, 0xFFFF_FFF0, 0])
def test_handshake_across_the_sequence_wrap(isn: int) -> None:
    """SYN seq=isn; SYN-ACK seq=cookie; ACK seq=isn+1, ack=cookie+1, all modulo 2**32."""
    cookies = SynCookies(SECRET)
    cookie = make(cookies, isn=isn)
    assert 0 <= cookie < MOD
    seq, ack = (isn + 1) % MOD, (cookie + 1) % MOD
    assert check(cookies, (ack - 1) % MOD, isn=(seq - 1) % MOD) == OPTIONS
    assert check(cookies, ack - 1, isn=seq - 1) == OPTIONS  # -1 for seq 0 is taken mod 2**32
    assert check(cookies, cookie, isn=isn + 1) is None  # forgetting to subtract 1 fails


def test_client_isn_and_cookie_are_taken_modulo_2_32() -> None:
    cookies = SynCookies(SECRET)
    cookie = make(cookies, isn=0xFFFF_FFFF)
    assert make(cookies, isn=-1) == cookie
    assert check(cookies, cookie - MOD, isn=-1) == OPTIONS
    assert check(cookies, cookie + MOD, isn=0xFFFF_FFFF + MOD) == OPTIONS


@given(
    local_ip=ADDRESS,
    local_port=PORT,
    remote_ip=ADDRESS,
    remote_port=PORT,
    isn=SEQ,
    options=TABLE_OPTIONS,
    now=NOW_ST,
    delay=st.floats(0.0, 63.999),
)
def test_round_trip_property(
    local_ip: int,
    local_port: int,
    remote_ip: int,
    remote_port: int,
    isn: int,
    options: CookieOptions,
    now: float,
    delay: float,
) -> None:
    """With the default lifetime (two ticks), a cookie checked within one period of being made is
    always accepted, wherever in the period it was made."""
    cookies = SynCookies(SECRET)
    cookie = cookies.make(local_ip, local_port, remote_ip, remote_port, isn, options, now)
    assert 0 <= cookie < MOD
    assert cookies.check(local_ip, local_port, remote_ip, remote_port, isn, cookie, now + delay) == options


# --- what make() does to the options --------------------------------------------------------------


@pytest.mark.parametrize(
    ("mss", "encoded"),
    [
        (0, 216),
        (100, 216),
        (215, 216),
        (216, 216),
        (535, 216),
        (536, 536),
        (1199, 536),
        (1200, 1200),
        (1380, 1360),
        (1459, 1440),
        (1460, 1460),
        (1500, 1460),
        (8959, 1460),
        (8960, 8960),
        (65535, 8960),
    ],
)
def test_mss_rounds_down_to_a_table_entry(mss: int, encoded: int) -> None:
    cookies = SynCookies(SECRET)
    decoded = check(cookies, make(cookies, CookieOptions(mss, 3, False)))
    assert decoded == CookieOptions(encoded, 3, False)


@pytest.mark.parametrize("window_scale", [15, 16, 255])
def test_window_scale_above_14_is_taken_as_14(window_scale: int) -> None:
    """RFC 7323 section 2.3: a shift above 14 is used as 14 (and must not become "no option")."""
    cookies = SynCookies(SECRET)
    decoded = check(cookies, make(cookies, CookieOptions(1460, window_scale, True)))
    assert decoded == CookieOptions(1460, 14, True)


def test_negative_window_scale_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="window_scale"):
        make(SynCookies(SECRET), CookieOptions(1460, -1, True))


@pytest.mark.parametrize("now", [0.0, 63.9, 64.0, 200.0, NOW])
def test_cookie_fields_are_where_the_diagram_puts_them(now: float) -> None:
    cookies = SynCookies(SECRET)
    for options, mss_index, ws_field in [
        (CookieOptions(216, None, False), 0, 15),
        (CookieOptions(1460, 7, True), 6, 7),
        (CookieOptions(8960, 14, True), 7, 14),
        (CookieOptions(536, 0, False), 1, 0),
    ]:
        cookie = make(cookies, options, now)
        assert cookie & 1 == options.sack_permitted
        assert (cookie >> 1) & 0b111 == mss_index
        assert (cookie >> 4) & 0b1111 == ws_field
        assert (cookie >> 8) & 0b11 == int(now // COUNTER_PERIOD) % 4
        # bits 31..10 are the MAC: under another secret they change, the low ten bits do not
        other = make(SynCookies(OTHER_SECRET), options, now)
        assert other & 0x3FF == cookie & 0x3FF
        assert other >> 10 != cookie >> 10


# --- what a cookie is bound to ----------------------------------------------------------------------

ARGUMENTS = ("local_ip", "local_port", "remote_ip", "remote_port", "client_isn")


@pytest.mark.parametrize("field", ARGUMENTS)
@pytest.mark.parametrize("change", [lambda v: v + 1, lambda v: v - 1, lambda v: v ^ 0x8000])
def test_rejected_when_any_part_of_the_connection_differs(field: str, change) -> None:  # type: ignore[no-untyped-def]
    cookies = SynCookies(SECRET)
    genuine = dict(
        local_ip=LOCAL_IP,
        local_port=LOCAL_PORT,
        remote_ip=REMOTE_IP,
        remote_port=REMOTE_PORT,
        client_isn=CLIENT_ISN,
    )
    cookie = cookies.make(**genuine, options=OPTIONS, now=NOW)
    assert cookies.check(**genuine, cookie=cookie, now=NOW) == OPTIONS
    other = dict(genuine, **{field: change(genuine[field])})
    assert cookies.check(**other, cookie=cookie, now=NOW) is None


def test_rejected_for_the_reverse_direction() -> None:
    """Local and remote are not interchangeable in the MAC."""
    cookies = SynCookies(SECRET)
    cookie = make(cookies)
    assert cookies.check(REMOTE_IP, REMOTE_PORT, LOCAL_IP, LOCAL_PORT, CLIENT_ISN, cookie, NOW) is None


def test_rejected_under_a_swap_of_addresses_alone_or_ports_alone() -> None:
    cookies = SynCookies(SECRET)
    cookie = make(cookies)
    assert cookies.check(REMOTE_IP, LOCAL_PORT, LOCAL_IP, REMOTE_PORT, CLIENT_ISN, cookie, NOW) is None
    assert cookies.check(LOCAL_IP, REMOTE_PORT, REMOTE_IP, LOCAL_PORT, CLIENT_ISN, cookie, NOW) is None


@pytest.mark.parametrize("bit", range(32))
def test_every_single_bit_flip_is_rejected(bit: int) -> None:
    """Flipping an option bit must not hand the caller other options, nor a time bit another age."""
    cookies = SynCookies(SECRET)
    cookie = make(cookies)
    assert check(cookies, cookie ^ (1 << bit)) is None


@settings(derandomize=True, max_examples=300)
@given(
    local_ip=ADDRESS,
    local_port=PORT,
    remote_ip=ADDRESS,
    remote_port=PORT,
    isn=SEQ,
    options=TABLE_OPTIONS,
    now=NOW_ST,
    delay=st.floats(0.0, 63.999),
    bit=st.integers(0, 31),
)
def test_single_bit_flip_is_rejected_property(
    local_ip: int,
    local_port: int,
    remote_ip: int,
    remote_port: int,
    isn: int,
    options: CookieOptions,
    now: float,
    delay: float,
    bit: int,
) -> None:
    cookies = SynCookies(SECRET)
    cookie = cookies.make(local_ip, local_port, remote_ip, remote_port, isn, options, now)
    flipped = cookie ^ (1 << bit)
    assert cookies.check(local_ip, local_port, remote_ip, remote_port, isn, flipped, now + delay) is None


def test_rejected_when_forged_with_another_secret() -> None:
    ours, theirs = SynCookies(SECRET), SynCookies(OTHER_SECRET)
    rng = random.Random(4987)
    accepted = 0
    n = 5000
    for _ in range(n):
        tuple_ = (
            rng.getrandbits(32),
            rng.getrandbits(16),
            rng.getrandbits(32),
            rng.getrandbits(16),
            rng.getrandbits(32),
        )
        forged = theirs.make(*tuple_, OPTIONS, NOW)
        assert ours.check(*tuple_, ours.make(*tuple_, OPTIONS, NOW), NOW) == OPTIONS
        accepted += ours.check(*tuple_, forged, NOW) is not None
    # the low ten bits match by construction, so each forgery passes with probability 2**-22
    assert accepted <= poisson_bound(n / 2**MAC_BITS)
    assert accepted == 0  # and with this seed, none does


def test_same_secret_same_cookie_so_cores_can_share_it() -> None:
    """Deterministic: a second instance (another core) with the secret accepts the first's cookie."""
    a, b = SynCookies(SECRET), SynCookies(bytearray(SECRET))
    assert make(a) == make(b)
    assert check(b, make(a)) == OPTIONS


# --- how long a cookie lives ------------------------------------------------------------------------

LIFETIMES = [64.0, 100.0, 128.0, 200.0, 256.0, 319.0]
OFFSETS_IN_PERIOD = [0.0, 0.001, 31.5, 63.999]


@pytest.mark.parametrize("lifetime", LIFETIMES)
@pytest.mark.parametrize("offset", OFFSETS_IN_PERIOD)
def test_rejected_once_older_than_lifetime(lifetime: float, offset: float) -> None:
    cookies = SynCookies(SECRET, lifetime=lifetime)
    made = 640.0 + offset
    cookie = make(cookies, now=made)
    assert check(cookies, cookie, now=made) == OPTIONS
    for age in (lifetime, lifetime + 0.001, lifetime + COUNTER_PERIOD, 1000.0, 86400.0):
        assert check(cookies, cookie, now=made + age) is None, age


@pytest.mark.parametrize("ticks", range(4, 13))
def test_rejected_when_the_time_field_wraps_around_to_the_same_value(ticks: int) -> None:
    """Four or more ticks later the 2-bit T field reads as a young cookie again; the full counter
    in the MAC rejects it."""
    cookies = SynCookies(SECRET, lifetime=256.0)  # accepts ages of 0..3 ticks
    made = 640.0
    cookie = make(cookies, now=made)
    assert check(cookies, cookie, now=made + 3 * COUNTER_PERIOD) == OPTIONS
    assert check(cookies, cookie, now=made + ticks * COUNTER_PERIOD) is None


def test_accepted_across_one_counter_boundary() -> None:
    cookies = SynCookies(SECRET)  # lifetime 128 s: two ticks
    made = 3 * COUNTER_PERIOD - 0.5  # tick 2, just before tick 3
    cookie = make(cookies, now=made)
    assert check(cookies, cookie, now=3 * COUNTER_PERIOD) == OPTIONS  # tick 3: one tick old
    assert check(cookies, cookie, now=4 * COUNTER_PERIOD - 0.001) == OPTIONS
    # As in Linux, the counter's age decides: two ticks is too old, though only 64.5 s have passed.
    assert check(cookies, cookie, now=4 * COUNTER_PERIOD) is None


def test_accepted_across_the_wrap_of_the_time_field() -> None:
    """Tick 3 (T = 0b11) to tick 4 (T = 0b00)."""
    cookies = SynCookies(SECRET)
    cookie = make(cookies, now=4 * COUNTER_PERIOD - 0.5)
    assert (cookie >> 8) & 0b11 == 0b11
    assert check(cookies, cookie, now=4 * COUNTER_PERIOD + 0.5) == OPTIONS


@pytest.mark.parametrize("ticks_ahead", [1, 2, 3, 4, 5])
def test_rejected_when_from_the_future(ticks_ahead: int) -> None:
    cookies = SynCookies(SECRET, lifetime=256.0)
    cookie = make(cookies, now=NOW + ticks_ahead * COUNTER_PERIOD)
    assert check(cookies, cookie, now=NOW) is None


@settings(derandomize=True, max_examples=500)
@given(made=NOW_ST, age=st.floats(0.0, 2000.0), lifetime=st.floats(64.0, 319.99))
def test_lifetime_bounds_property(made: float, age: float, lifetime: float) -> None:
    """Never accepted at or beyond ``lifetime``; always accepted for ``lifetime`` rounded down to
    whole ticks, less one tick (a cookie made just before a tick loses up to a tick)."""
    cookies = SynCookies(SECRET, lifetime=lifetime)
    now = made + age
    accepted = check(cookies, make(cookies, now=made), now=now) is not None
    if now - made >= lifetime:  # the float sum can round: compare what check() saw
        assert not accepted
    if now - made < (lifetime // COUNTER_PERIOD - 1) * COUNTER_PERIOD:
        assert accepted


# --- forgery -----------------------------------------------------------------------------------------


def test_random_cookies_for_one_connection_almost_never_validate() -> None:
    """A blind attacker who knows the 4-tuple and the client ISN guesses the cookie: it must pass
    the T field (an age under lifetime: 2 of 4 values with the default) and the 22-bit MAC."""
    cookies = SynCookies(SECRET)
    rng = random.Random(1996)
    n = 100_000
    expected = n * (2 / 2**TIME_BITS) / 2**MAC_BITS  # about 0.012
    bound = poisson_bound(expected)
    assert expected < 0.02 and bound <= 3
    accepted = sum(check(cookies, rng.getrandbits(32)) is not None for _ in range(n))
    assert accepted <= bound


def test_random_macs_over_genuine_low_bits_almost_never_validate() -> None:
    """Sharper: keep the low ten bits of a genuine cookie (valid age, real options) and guess only
    the MAC, as an attacker who saw the client's SYN would."""
    cookies = SynCookies(SECRET)
    genuine = make(cookies)
    rng = random.Random(4987)
    n = 100_000
    expected = n / 2**MAC_BITS  # about 0.024
    bound = poisson_bound(expected)
    assert bound <= 4  # a MAC of 16 bits would expect 1.5 and exceed it about one run in 50
    accepted = 0
    for _ in range(n):
        guess = (rng.getrandbits(MAC_BITS) << 10) | (genuine & 0x3FF)
        if guess != genuine:
            accepted += check(cookies, guess) is not None
    assert accepted <= bound


# --- construction, and the sans-IO rule ---------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 8, 15, 33, 64])
def test_secret_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="secret"):
        SynCookies(bytes(length))


@pytest.mark.parametrize("length", [16, 24, 32])
def test_secret_of_16_to_32_bytes_is_taken(length: int) -> None:
    cookies = SynCookies(bytes(range(length)))
    assert check(cookies, make(cookies)) == OPTIONS


@pytest.mark.parametrize("secret", ["a" * 32, 32, None])
def test_secret_must_be_bytes(secret: object) -> None:
    """``bytes(32)`` would be 32 zero bytes: an int must not be mistaken for a key."""
    with pytest.raises(TypeError):
        SynCookies(secret)  # type: ignore[arg-type]


@pytest.mark.parametrize("lifetime", [0.0, -1.0, 63.9, 320.0, 1e9, math.nan, math.inf])
def test_lifetime_out_of_range_is_refused(lifetime: float) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        SynCookies(SECRET, lifetime=lifetime)


def test_module_imports_no_io() -> None:
    """The stack is sans-IO (STYLE.md section 1): no clock, no sockets, no global randomness."""
    tree = ast.parse(Path(_tcp_syncookie.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"trio", "time", "socket", "random", "os", "secrets"}), imported
    assert imported <= {"__future__", "hashlib", "struct", "bisect", "dataclasses"}
