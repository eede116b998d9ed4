"""Envoy's ``config.core.v3`` and ``type.matcher.v3`` pieces shared by several areas: socket addresses,
header names and values, fractional percents, string matchers, HTTP/2 protocol options."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._names import APPEND_ACTIONS, HTTP_PROTOCOL_OPTIONS_NAME, HTTP_PROTOCOL_OPTIONS_TYPE, AppendAction
from ._reader import (
    _bool,
    _duration_ge0,
    _empty_options,
    _enum,
    _Fields,
    _join,
    _nonempty_str,
    _only_field,
    _Reader,
    _str,
    _uint,
    _uint32,
)

# --- the objects ---


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """``socket_address {address, port_value}``.  For listeners, the admin endpoint and STATIC clusters
    ``address`` is an IP literal; for STRICT_DNS clusters it is a host name to resolve."""

    address: str
    port_value: int

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port_value}"
        return f"{self.address}:{self.port_value}"


@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    """``request_headers_to_add[]``: ``header {key, value}`` and what to do when the header exists.
    ``append_action`` defaults to Envoy's ``APPEND_IF_EXISTS_OR_ADD``; the deprecated ``append: true``
    means the same and ``append: false`` means ``OVERWRITE_IF_EXISTS_OR_ADD``."""

    key: str
    value: str
    append_action: AppendAction = "APPEND_IF_EXISTS_OR_ADD"


@dataclass(frozen=True, slots=True)
class FractionalPercent:
    """A ``FractionalPercent`` (``numerator`` of ``denominator`` 100, 10 000 or 1 000 000), or a
    ``RuntimeFractionalPercent``'s ``default_value`` with its ``runtime_key``.  A request is picked
    when a uniform draw in ``[0, denominator)`` falls below ``numerator``, as Envoy draws."""

    numerator: int = 0
    denominator: int = 100
    runtime_key: str | None = None

    @property
    def always(self) -> bool:
        return self.numerator >= self.denominator

    @property
    def never(self) -> bool:
        return self.numerator == 0


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """A ``StringMatcher``: ``exact`` / ``prefix`` / ``suffix`` / ``contains`` / ``safe_regex`` (the whole
    value must match, as RE2's full match in Envoy), optionally ``ignore_case`` (not for regexes)."""

    kind: Literal["exact", "prefix", "suffix", "contains", "safe_regex"]
    value: str
    ignore_case: bool = False

    def matches(self, text: str) -> bool:
        if self.kind == "safe_regex":
            return re.fullmatch(self.value, text) is not None
        value, text = (self.value.lower(), text.lower()) if self.ignore_case else (self.value, text)
        if self.kind == "exact":
            return text == value
        if self.kind == "prefix":
            return text.startswith(value)
        if self.kind == "suffix":
            return text.endswith(value)
        return value in text


@dataclass(frozen=True, slots=True)
class Http2Options:
    """``http2_protocol_options`` of a connection manager (HTTP/2 to clients).

    Envoy's ``max_concurrent_streams`` default (2**31 - 1) is kept; the windows default to 1 MiB,
    Envoy's ``per_connection_buffer_limit_bytes``, rather than its 256 MiB windows: the proxy
    acknowledges request data only as the upstream takes it, so the connection window is the most a
    client can make it hold per connection, and 256 MiB per client is no bound worth the name."""

    max_concurrent_streams: int = 2**31 - 1
    initial_stream_window_size: int = 1024 * 1024
    initial_connection_window_size: int = 1024 * 1024


# --- structure parsers ---


def _socket_address(*, dns: bool = False, min_port: int = 0) -> Callable[[_Reader, Any, str], SocketAddress]:
    def parse(r: _Reader, v: object, path: str) -> SocketAddress:
        f = _Fields(r, v, path, ("protocol", "address", "port_value"))
        if f.has("protocol") and f.values["protocol"] != "TCP":
            f.problem("protocol", f"{f.values['protocol']!r} is not supported: only TCP (Envoy's default)")
        address = f.req("address", _nonempty_str)
        port = f.req("port_value", _uint(min_port, 65535))
        if address is not None and not dns:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                f.problem(
                    "address", f"{address!r} is not an IP address (only STRICT_DNS clusters resolve names)"
                )
        f.done()
        return SocketAddress(address, port)

    return parse


def _address(*, dns: bool = False, min_port: int = 0) -> Callable[[_Reader, Any, str], SocketAddress]:
    """``address: {socket_address: ...}`` (pipes and internal addresses are outside the subset)."""
    return _only_field("socket_address", _socket_address(dns=dns, min_port=min_port))


def _cluster_ref(r: _Reader, v: object, path: str) -> str:
    name = _nonempty_str(r, v, path)
    r.cluster_refs.append((name, path))
    return name


#: a ``DataSource`` given inline (``inline_string``) where the proxy needs the text itself
_inline_string = _only_field("inline_string", _str)


def _header_value_option(r: _Reader, v: object, path: str) -> HeaderValueOption:
    f = _Fields(r, v, path, ("header", "append_action", "append"))
    key_value = f.req("header", _header_value)
    action: AppendAction = "APPEND_IF_EXISTS_OR_ADD"
    if f.has("append_action") and f.has("append"):
        f.problem("append", "only one of append_action, append may be set ('append' is deprecated)")
    elif f.has("append"):
        action = "APPEND_IF_EXISTS_OR_ADD" if f.req("append", _bool) else "OVERWRITE_IF_EXISTS_OR_ADD"
    else:
        action = f.opt("append_action", _enum(APPEND_ACTIONS), action)
    f.done()
    return HeaderValueOption(key_value[0], key_value[1], action)


# RFC 9110 5.1 field names are tokens; 5.5 field values exclude CR, LF and NUL (and other controls
# but tab).  Checked here so a config cannot make the proxy write a malformed (or smuggled) header.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_TARGET_RE = re.compile(r"[\x21-\x7e]*")  # a request target: visible ASCII, no spaces


def _header_name(r: _Reader, v: object, path: str) -> str:
    name = _nonempty_str(r, v, path)
    if not _TOKEN_RE.fullmatch(name):
        r.fail(path, f"{name!r} is not a valid HTTP header name (RFC 9110 token characters only)")
    return name


def _field_value(r: _Reader, v: object, path: str) -> str:
    value = _str(r, v, path)
    if not _FIELD_VALUE_RE.fullmatch(value):
        r.fail(path, "not a valid HTTP header value (no CR, LF, NUL or other control characters)")
    return value


def _host_value(r: _Reader, v: object, path: str) -> str:
    value = _nonempty_str(r, v, path)
    if not _TOKEN_RE.fullmatch(value.replace(":", "").replace("[", "").replace("]", "")):
        r.fail(path, f"{value!r} is not a valid host[:port]")
    return value


def _cluster_name(r: _Reader, v: object, path: str) -> str:
    """A cluster's name, which is also a header value: the ``Host`` of its health checks, and of
    a request forwarded to it that had none (HTTP/1.0)."""
    value = _field_value(r, v, path)
    if not value:
        r.fail(path, "must not be empty")
    return value


def _path_value(r: _Reader, v: object, path: str) -> str:
    value = _str(r, v, path)
    if not _TARGET_RE.fullmatch(value):
        r.fail(path, "not a valid request path (visible ASCII characters, no spaces)")
    return value


def _header_value(r: _Reader, v: object, path: str) -> tuple[str, str]:
    f = _Fields(r, v, path, ("key", "value"))
    key = f.req("key", _header_name)
    value = f.opt("value", _field_value, "")
    f.done()
    return key, value


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def _fractional_percent(r: _Reader, v: object, path: str) -> FractionalPercent:
    f = _Fields(r, v, path, ("numerator", "denominator"))
    numerator = f.opt("numerator", _uint32, 0)
    denominator = f.opt("denominator", _enum(tuple(_DENOMINATORS)), "HUNDRED")
    f.done()
    return FractionalPercent(numerator, _DENOMINATORS[denominator])


def _runtime_fractional_percent(r: _Reader, v: object, path: str) -> FractionalPercent:
    f = _Fields(r, v, path, ("default_value", "runtime_key"))
    default = f.req("default_value", _fractional_percent)
    key = f.opt("runtime_key", _str, None)
    f.done()  # raises if default_value failed
    return FractionalPercent(default.numerator, default.denominator, key or None)


def _string_matcher(r: _Reader, v: object, path: str) -> StringMatcher:
    f = _Fields(r, v, path, ("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"))
    which = f.exactly_one("exact", "prefix", "suffix", "contains", "safe_regex")
    value = ""
    if which == "safe_regex":
        value = f.req("safe_regex", _regex)
    elif which is not None:
        value = f.req(which, _str)
    ignore_case = f.opt("ignore_case", _bool, False)
    if ignore_case and which == "safe_regex":
        f.problem("ignore_case", "has no effect on safe_regex (Envoy rejects it too)")
    f.done()
    return StringMatcher(which, value, ignore_case)  # type: ignore[arg-type]  # which is one of the kinds: done() raised otherwise


def _regex(r: _Reader, v: object, path: str) -> str:
    """``safe_regex {regex}`` (RE2 in Envoy; Python's ``re`` here, on the patterns both accept)."""
    f = _Fields(r, v, path, ("regex", "google_re2"))
    pattern = f.req("regex", _str)
    f.done()
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        r.fail(_join(path, "regex"), f"not a valid regular expression: {exc}")
    return pattern


#: an ``HttpStatus {code}``; Envoy's local rate limit takes codes of 400 and above
_http_status_code = _only_field("code", _uint(400, 599))


def _idle_timeout_options(r: _Reader, v: object, path: str) -> float:
    f = _Fields(r, v, path, ("idle_timeout",))
    t = f.opt("idle_timeout", _duration_ge0, 3600.0)
    f.done()
    return t


def _http2_options(r: _Reader, v: object, path: str) -> Http2Options:
    """``http2_protocol_options``: the three settings the HTTP/2 codec applies (others refused)."""
    f = _Fields(
        r, v, path, ("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size")
    )
    d = Http2Options()
    options = Http2Options(
        max_concurrent_streams=f.opt("max_concurrent_streams", _uint(1, 2**31 - 1), d.max_concurrent_streams),
        initial_stream_window_size=f.opt(
            "initial_stream_window_size", _uint(65535, 2**31 - 1), d.initial_stream_window_size
        ),
        initial_connection_window_size=f.opt(
            "initial_connection_window_size", _uint(65535, 2**31 - 1), d.initial_connection_window_size
        ),
    )
    f.done()
    return options


def _extension_protocol_options(r: _Reader, v: object, path: str) -> Http2Options | None:
    """A cluster's ``typed_extension_protocol_options``: only Envoy's ``HttpProtocolOptions``, with
    ``explicit_http_config`` (HTTP/2 when it holds ``http2_protocol_options``)."""
    f = _Fields(r, v, path, (HTTP_PROTOCOL_OPTIONS_NAME,))
    options = f.opt(HTTP_PROTOCOL_OPTIONS_NAME, _http_protocol_options, None)
    f.done()
    return options


def _http_protocol_options(r: _Reader, v: object, path: str) -> Http2Options | None:
    f = _Fields(r, v, path, ("@type", "explicit_http_config"))
    if f.has("@type") and f.values["@type"] != HTTP_PROTOCOL_OPTIONS_TYPE:
        f.problem("@type", f"needs {HTTP_PROTOCOL_OPTIONS_TYPE}")
    options = f.opt("explicit_http_config", _explicit_http_config, None)
    f.done()
    return options


def _explicit_http_config(r: _Reader, v: object, path: str) -> Http2Options | None:
    f = _Fields(r, v, path, ("http_protocol_options", "http2_protocol_options"))
    which = f.exactly_one("http_protocol_options", "http2_protocol_options")
    options = f.req("http2_protocol_options", _http2_options) if which == "http2_protocol_options" else None
    if which == "http_protocol_options":
        f.req("http_protocol_options", _empty_options)
    f.done()
    return options
