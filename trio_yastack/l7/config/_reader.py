"""Problems and the reader: how a document is walked, every problem recorded with its YAML path.

:class:`_Fields` declares the keys a mapping may hold, so any other key is reported; the scalar
parsers here are shared by every area (``(reader, value, path) -> value``, or a recorded problem and
:class:`_Skip`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ._names import (
    CACHE_TYPE,
    COMPRESSOR_PER_ROUTE_TYPE,
    COMPRESSOR_TYPE,
    CORS_POLICY_TYPE,
    CORS_TYPE,
    DOWNSTREAM_TLS_TYPE,
    EXT_AUTHZ_PER_ROUTE_TYPE,
    EXT_AUTHZ_TYPE,
    FAULT_TYPE,
    FILE_LOG_TYPE,
    GRPC_WEB_TYPE,
    GZIP_COMPRESSOR_TYPE,
    HCM_TYPE,
    JWT_AUTHN_PER_ROUTE_TYPE,
    JWT_AUTHN_TYPE,
    LOCAL_RATELIMIT_TYPE,
    LUA_PER_ROUTE_TYPE,
    LUA_TYPE,
    RBAC_PER_ROUTE_TYPE,
    RBAC_TYPE,
    ROUTER_TYPE,
    STDOUT_LOG_TYPE,
    TCP_PROXY_TYPE,
    TLS_INSPECTOR_TYPE,
    UPSTREAM_TLS_TYPE,
)

if TYPE_CHECKING:
    from ._tls import Secret


T = TypeVar("T")
D = TypeVar("D")
E = TypeVar("E", bound=str)


#: protobuf's Duration range (google/protobuf/duration.proto): about 10,000 years
_MAX_DURATION_SECONDS = 315_576_000_000
_DURATION_RE = re.compile(r"(-?)(\d+)(?:\.(\d{1,9}))?s")
_UINT32_MAX = 2**32 - 1


# --- problems ---


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (a YAML path such as ``static_resources.clusters[0].name``,
    empty for the document itself) and what.  ``line`` is set only for YAML syntax errors, where no
    path exists yet."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "<document>"
        if self.line is not None:
            where = f"line {self.line}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A document is not a valid config: ``problems`` lists every problem found, in document order
    except that cross-reference checks (unknown clusters, duplicate names) come last.

    One exception for all of them (rather than the first) because fixing a config one error per run
    is slow, and a ``check-config`` that stops early hides problems."""

    def __init__(self, problems: list[Problem], source: str = "<string>") -> None:
        self.problems = problems
        self.source = source
        super().__init__(format_problems(self))


def format_problems(error: ConfigError) -> str:
    """The text ``yastack check-config`` prints on failure: one problem per line, under the source."""
    n = len(error.problems)
    lines = [f"{error.source}: {n} problem{'s' if n != 1 else ''}"]
    lines.extend(f"  {problem}" for problem in error.problems)
    return "\n".join(lines)


class _Skip(Exception):
    """Raised after a problem is recorded, so no object is built from a value that failed.

    A field's parent catches it (in :meth:`_Fields.req`), goes on reading its other fields so their
    problems are reported too, then raises it again itself: problems are collected from the whole
    document, yet no half-valid object ever escapes."""


class _Reader:
    """Collects problems and what cross-references need checking once the document is read."""

    def __init__(self, file_base: Path | None, *, check_files: bool = False) -> None:
        self.problems: list[Problem] = []
        self.file_base = file_base
        self.check_files = check_files
        self.cluster_refs: list[tuple[str, str]] = []  # (cluster name, path of the reference)
        self.secrets: dict[str, Secret] = {}  # static_resources.secrets, by name

    def fail(self, path: str, message: str) -> NoReturn:
        self.problems.append(Problem(path, message))
        raise _Skip

    def resolve_file(self, filename: str, path: str) -> str:
        """``filename`` taken from the config file's directory when relative (and checked to exist
        when asked)."""
        p = Path(filename)
        if not p.is_absolute() and self.file_base is not None:
            p = self.file_base / p
        if self.check_files and not p.is_file():
            self.problems.append(Problem(path, f"file not found: {p}"))
        return str(p)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Fields:
    """Reads one mapping: the keys it may hold are declared up front, so every other key is reported
    as unsupported (with the supported ones listed) before any field is read."""

    def __init__(self, r: _Reader, value: object, path: str, allowed: Iterable[str]) -> None:
        if not isinstance(value, Mapping):
            r.fail(path, f"expected a mapping, got {_kind(value)}")
        self.r = r
        self.path = path
        self.allowed = tuple(allowed)
        self.values: dict[str, object] = {}
        self.failed = False
        for key, v in value.items():
            if not isinstance(key, str):
                self.failed = True
                r.problems.append(Problem(path, f"keys must be strings, got {_kind(key)} {key!r:.40}"))
            elif key not in self.allowed:
                self.failed = True
                r.problems.append(
                    Problem(
                        _join(path, key),
                        f"unsupported field {key!r} (supported here: {', '.join(self.allowed)})",
                    )
                )
            elif v is not None:  # protobuf JSON: null is the default value, i.e. absent
                self.values[key] = v

    def has(self, key: str) -> bool:
        if key not in self.allowed:
            raise KeyError(key)  # a bug in this module, not in the document
        return key in self.values

    def req(self, key: str, parse: Callable[[_Reader, Any, str], T]) -> T:
        if not self.has(key):
            self.failed = True
            self.r.problems.append(Problem(_join(self.path, key), f"required field {key!r} is missing"))
            return None  # type: ignore[return-value]  # never used: done() raises _Skip
        return self._read(key, parse)

    def opt(self, key: str, parse: Callable[[_Reader, Any, str], T], default: D) -> T | D:
        if not self.has(key):
            return default
        return self._read(key, parse)

    def _read(self, key: str, parse: Callable[[_Reader, Any, str], T]) -> T:
        try:
            return parse(self.r, self.values[key], _join(self.path, key))
        except _Skip:
            self.failed = True
            return None  # type: ignore[return-value]  # never used: done() raises _Skip

    def problem(self, key: str, message: str) -> None:
        self.failed = True
        self.r.problems.append(Problem(_join(self.path, key) if key else self.path, message))

    def exactly_one(self, *keys: str) -> str | None:
        """The one of ``keys`` present (a oneof), recording a problem when none or several are."""
        present = [k for k in keys if self.has(k)]
        if len(present) == 1:
            return present[0]
        if present:
            self.problem(present[1], f"only one of {', '.join(keys)} may be set (also found {present[0]!r})")
        else:
            self.problem("", f"exactly one of {', '.join(keys)} is required")
        return None

    def done(self) -> None:
        if self.failed:
            raise _Skip


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# --- scalar parsers: (reader, value, path) -> value, or record a problem and raise _Skip ---


def _str(r: _Reader, v: object, path: str) -> str:
    if not isinstance(v, str):
        r.fail(path, f"expected a string, got {_kind(v)}")
    return v


def _nonempty_str(r: _Reader, v: object, path: str) -> str:
    s = _str(r, v, path)
    if not s:
        r.fail(path, "must not be empty")
    return s


def _bool(r: _Reader, v: object, path: str) -> bool:
    if not isinstance(v, bool):
        r.fail(path, f"expected true or false, got {_kind(v)}")
    return v


def _uint(lo: int, hi: int) -> Callable[[_Reader, Any, str], int]:
    def parse(r: _Reader, v: object, path: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            r.fail(path, f"expected an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            r.fail(path, f"{v} is out of range {lo}..{hi}")
        return v

    return parse


_uint32 = _uint(0, _UINT32_MAX)
_positive_uint32 = _uint(1, _UINT32_MAX)


def _enum(values: tuple[E, ...]) -> Callable[[_Reader, Any, str], E]:
    def parse(r: _Reader, v: object, path: str) -> E:
        if isinstance(v, str):
            for value in values:
                if v == value:
                    return value  # typed as the Literal the values are declared as
        got = repr(v) if isinstance(v, (str, int, float)) else _kind(v)
        r.fail(path, f"{got} is not one of the supported values: {', '.join(values)}")

    return parse


def parse_duration(text: str) -> float:
    """protobuf's JSON Duration (``"5s"``, ``"0.25s"``, ``"-1.5s"``) in seconds; ``ValueError`` otherwise."""
    m = _DURATION_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a duration: expected seconds with an 's' suffix, like '5s' or '0.25s'"
        )
    sign, whole, frac = m.groups()
    seconds = int(whole) + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than protobuf's maximum duration")
    return -seconds if sign and seconds else seconds


def _duration(min_exclusive: bool = False) -> Callable[[_Reader, Any, str], float]:
    """A non-negative duration (every duration in the subset is; ``connect_timeout``, health check times
    and ``interval`` must moreover be positive, as Envoy's validation rules say)."""

    def parse(r: _Reader, v: object, path: str) -> float:
        if not isinstance(v, str):
            r.fail(path, f"expected a duration string like '5s' or '0.25s', got {_kind(v)}")
        try:
            seconds = parse_duration(v)
        except ValueError as exc:
            r.fail(path, str(exc))
        if seconds < 0:
            r.fail(path, f"{v!r} must not be negative")
        if min_exclusive and seconds == 0:
            r.fail(path, f"{v!r} must be greater than 0s")
        return seconds

    return parse


_duration_ge0 = _duration()
_duration_gt0 = _duration(min_exclusive=True)


def _list(
    item: Callable[[_Reader, Any, str], T], *, min_items: int = 0
) -> Callable[[_Reader, Any, str], tuple[T, ...]]:
    def parse(r: _Reader, v: object, path: str) -> tuple[T, ...]:
        if not isinstance(v, list):
            r.fail(path, f"expected a list, got {_kind(v)}")
        out: list[T] = []
        failed = False
        for i, x in enumerate(v):
            try:
                out.append(item(r, x, f"{path}[{i}]"))
            except _Skip:
                failed = True
        if len(v) < min_items:
            r.fail(path, f"needs at least {min_items} item{'s' if min_items != 1 else ''}")
        if failed:
            raise _Skip
        return tuple(out)

    return parse


def _typed_config(r: _Reader, f: _Fields, name: str, types: Mapping[str, str]) -> _Fields | None:
    """Check an extension's ``name`` and ``typed_config["@type"]`` against ``types`` (name -> type URL)
    and return the typed_config's fields (with ``@type`` already read), or ``None`` after a problem."""
    if name not in types:
        f.problem("name", f"unsupported {name!r} (supported: {', '.join(types)})")
        return None
    tc = f.values.get("typed_config")
    path = _join(f.path, "typed_config")
    if tc is None:
        f.problem("typed_config", f"required field 'typed_config' is missing (with \"@type\": {types[name]})")
        return None
    if not isinstance(tc, Mapping):
        f.problem("typed_config", f"expected a mapping, got {_kind(tc)}")
        return None
    type_url = tc.get("@type")
    if type_url != types[name]:
        got = f"{type_url!r}" if type_url is not None else "missing"
        f.problem("typed_config.@type", f'{got}: {name} needs "@type": {types[name]}')
        return None
    return _Fields(r, {k: v for k, v in tc.items() if k != "@type"}, path, _TYPED_CONFIG_FIELDS[types[name]])


_TYPED_CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    HCM_TYPE: (
        "stat_prefix",
        "codec_type",
        "route_config",
        "http_filters",
        "access_log",
        "common_http_protocol_options",
        "http_protocol_options",
        "http2_protocol_options",
        "request_timeout",
        "stream_idle_timeout",
        "upgrade_configs",
        "local_reply_config",
    ),
    TCP_PROXY_TYPE: ("stat_prefix", "cluster", "idle_timeout"),
    ROUTER_TYPE: (),
    CORS_TYPE: (),
    COMPRESSOR_TYPE: (
        "response_direction_config",
        "compressor_library",
        "content_length",
        "content_type",
        "disable_on_etag_header",
        "remove_accept_encoding_header",
    ),
    COMPRESSOR_PER_ROUTE_TYPE: ("disabled", "overrides"),
    CACHE_TYPE: (
        "typed_config",
        "allowed_vary_headers",
        "max_body_bytes",
        "ignore_request_cache_control_header",
    ),
    GZIP_COMPRESSOR_TYPE: (
        "memory_level",
        "compression_level",
        "compression_strategy",
        "window_bits",
        "chunk_size",
    ),
    FAULT_TYPE: ("delay", "abort", "max_active_faults", "headers", "upstream_cluster", "response_rate_limit"),
    LOCAL_RATELIMIT_TYPE: (
        "stat_prefix",
        "token_bucket",
        "filter_enabled",
        "filter_enforced",
        "status",
        "response_headers_to_add",
        "local_rate_limit_per_downstream_connection",
        "enable_x_ratelimit_headers",
        "request_headers_to_add_when_not_enforced",
        "descriptors",
        "stage",
        "vh_rate_limits",
        "always_consume_default_token_bucket",
        "rate_limits",
        "rate_limited_as_resource_exhausted",
        "max_dynamic_descriptors",
    ),
    EXT_AUTHZ_TYPE: (
        "http_service",
        "grpc_service",
        "transport_api_version",
        "failure_mode_allow",
        "failure_mode_allow_header_add",
        "status_on_error",
        "filter_enabled",
        "stat_prefix",
        "allowed_headers",
        "include_peer_certificate",
        "clear_route_cache",
        "with_request_body",
        "deny_at_disable",
        "disallowed_headers",
        "include_tls_session",
        "metadata_context_namespaces",
    ),
    EXT_AUTHZ_PER_ROUTE_TYPE: ("disabled", "check_settings"),
    GRPC_WEB_TYPE: (),
    LUA_TYPE: ("inline_code", "default_source_code", "source_codes", "stat_prefix", "clear_route_cache"),
    LUA_PER_ROUTE_TYPE: ("disabled", "name", "source_code", "filter_context"),
    JWT_AUTHN_TYPE: (
        "providers",
        "rules",
        "requirement_map",
        "bypass_cors_preflight",
        "stat_prefix",
        "strip_failure_response",
    ),
    JWT_AUTHN_PER_ROUTE_TYPE: ("disabled", "requirement_name"),
    RBAC_TYPE: ("rules", "shadow_rules", "rules_stat_prefix", "shadow_rules_stat_prefix"),
    RBAC_PER_ROUTE_TYPE: ("rbac",),
    CORS_POLICY_TYPE: (
        "allow_origin_string_match",
        "allow_methods",
        "allow_headers",
        "expose_headers",
        "max_age",
        "allow_credentials",
        "filter_enabled",
        "shadow_enabled",
        "allow_private_network_access",
        "forward_not_matching_preflights",
    ),
    DOWNSTREAM_TLS_TYPE: ("common_tls_context", "require_client_certificate"),
    UPSTREAM_TLS_TYPE: ("common_tls_context", "sni"),
    TLS_INSPECTOR_TYPE: (),
    STDOUT_LOG_TYPE: ("log_format",),
    FILE_LOG_TYPE: ("path", "log_format", "format", "json_format"),
}


def _extension(
    r: _Reader, v: object, path: str, types: Mapping[str, str], extra: tuple[str, ...] = (),
    *, types_by_url: bool = False,
) -> tuple[str, _Fields, _Fields]:  # fmt: skip
    """An ``{name, typed_config}`` extension: returns (name, its fields, typed_config's fields).
    The caller reads the typed_config fields then calls ``done()`` on both.  With ``types_by_url``
    the name is free (a label, as a compressor library's is) and ``@type`` alone must be one of
    ``types``' values."""
    f = _Fields(r, v, path, ("name", "typed_config", *extra))
    name = f.req("name", _str)
    if types_by_url and name is not None:
        tc_value = f.values.get("typed_config")
        url = tc_value.get("@type") if isinstance(tc_value, Mapping) else None
        label = next((k for k, u in types.items() if u == url), None)
        types = {name: types[label] if label is not None else next(iter(types.values()))}
    tc = _typed_config(r, f, name, types) if name is not None else None
    if tc is None:
        f.done()
        raise _Skip  # name missing: done() raised already
    return name, f, tc


def _named_map(
    item: Callable[[_Reader, Any, str, str], T],
) -> Callable[[_Reader, Any, str], tuple[T, ...]]:
    """A protobuf ``map<string, M>``: each value read by ``item(r, value, path, name)``, in the order
    written; every problem of every entry is reported."""

    def parse(r: _Reader, v: object, path: str) -> tuple[T, ...]:
        if not isinstance(v, Mapping):
            r.fail(path, f"expected a mapping of names to values, got {_kind(v)}")
        out: list[T] = []
        failed = False
        for name, value in v.items():
            try:
                out.append(item(r, value, _join(path, str(name)), str(name)))
            except _Skip:
                failed = True
        if failed:
            raise _Skip
        return tuple(out)

    return parse


def _empty_message(r: _Reader, v: object, path: str) -> None:
    f = _Fields(r, v, path, ())
    f.done()


def _only_field(key: str, parse: Callable[[_Reader, Any, str], T]) -> Callable[[_Reader, Any, str], T]:
    """A message with one field, required, read as that field's value: ``{inline_string: ...}``,
    ``{code: 429}``, ``{socket_address: ...}`` (any other key is reported as for every message)."""

    def read(r: _Reader, v: object, path: str) -> T:
        f = _Fields(r, v, path, (key,))
        value = f.req(key, parse)
        f.done()
        return value

    return read


def _empty_options(r: _Reader, v: object, path: str) -> None:
    """``http_protocol_options`` (HTTP/1.1, the default): none of its fields is supported."""
    _Fields(r, v, path, ()).done()
