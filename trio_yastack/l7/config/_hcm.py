"""The HTTP connection manager (``envoy.filters.network.http_connection_manager``): codec, timeouts,
filters, route table, access logs and the local reply config."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from trio_yastack.l7.local_reply import (
    KNOWN_OPERATORS,
    LOG_OPERATORS,
    OPERATOR_RE,
    FormatString,
    Mapper,
    ReplyFilter,
)

from ._core import (
    Http2Options,
    _field_value,
    _header_value_option,
    _http2_options,
    _idle_timeout_options,
    _inline_string,
)
from ._http_filters import HttpFilter, RouterFilter, _http_filter
from ._names import (
    CODEC_TYPES,
    FILE_LOG_NAME,
    FILE_LOG_TYPE,
    ROUTER_NAME,
    STDOUT_LOG_NAME,
    STDOUT_LOG_TYPE,
    CodecType,
)
from ._reader import (
    _bool,
    _duration_ge0,
    _enum,
    _extension,
    _Fields,
    _join,
    _kind,
    _list,
    _nonempty_str,
    _Reader,
    _Skip,
    _str,
    _uint,
    _uint32,
)
from ._route import RouteAction, RouteConfiguration, _route_config, _upgrade_config
from ._route_match import HeaderMatcher, _header_matcher


@dataclass(frozen=True, slots=True)
class AccessLog:
    """An access logger: ``envoy.access_loggers.stdout`` (``kind="stdout"``) or
    ``envoy.access_loggers.file`` with its required ``path`` (``kind="file"``), in Envoy's default
    format or its ``log_format`` (text or JSON, the operators of
    :data:`trio_yastack.l7.access_log.LOG_OPERATORS`)."""

    kind: Literal["stdout", "file"]
    path: str | None = None
    log_format: FormatString | None = None


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    """The ``envoy.filters.network.http_connection_manager`` filter.

    Envoy's defaults: ``codec_type`` AUTO; ``idle_timeout`` (``common_http_protocol_options``) 1 hour;
    ``request_timeout`` 0 (disabled); ``stream_idle_timeout`` 5 minutes.  ``http_filters`` run in the
    order written and end with the router."""

    stat_prefix: str
    route_config: RouteConfiguration
    codec_type: CodecType = "AUTO"
    access_log: tuple[AccessLog, ...] = ()
    idle_timeout: float = 3600.0
    request_timeout: float = 0.0
    stream_idle_timeout: float = 300.0
    http_filters: tuple[HttpFilter, ...] = (HttpFilter(ROUTER_NAME, RouterFilter()),)
    #: ``upgrade_configs[]`` as (upgrade_type lowercased, enabled): the upgrades (``websocket``) the
    #: proxy passes on; any other upgrade request is refused with 403, as Envoy refuses it
    upgrade_configs: tuple[tuple[str, bool], ...] = ()
    #: ``local_reply_config``: ``mappers`` and ``body_format`` (see :mod:`trio_yastack.l7.local_reply`)
    local_reply_mappers: tuple[Mapper, ...] = ()
    local_reply_format: FormatString | None = None
    #: ``http2_protocol_options`` (used when a connection speaks HTTP/2: ALPN h2 or h2c prior knowledge)
    http2: Http2Options = Http2Options()  # noqa: RUF009  # frozen, so one shared default is safe
    #: ``http_protocol_options.enable_trailers``: an HTTP/1.1 client's request trailers reach the
    #: filters and the router (Envoy's HTTP/1 codec drops them otherwise; HTTP/2's always pass)
    enable_trailers: bool = False

    def upgrade_allowed(self, upgrade_type: str, route: RouteAction) -> bool:
        """Envoy's rule: the route's ``upgrade_configs`` entry for the type, else the connection
        manager's (its ``enabled`` defaults to true), else refused."""
        kind = upgrade_type.lower()
        for configs in (route.upgrade_configs, self.upgrade_configs):
            for name, enabled in configs:
                if name == kind:
                    return enabled
        return False


def _access_log(r: _Reader, v: object, path: str) -> AccessLog:
    types = {STDOUT_LOG_NAME: STDOUT_LOG_TYPE, FILE_LOG_NAME: FILE_LOG_TYPE}
    name, f, tc = _extension(r, v, path, types)
    log_path = tc.req("path", _nonempty_str) if name == FILE_LOG_NAME else None
    fmt = tc.opt("log_format", _log_format, None)
    if name == FILE_LOG_NAME:  # the deprecated spellings Envoy still reads
        if tc.has("format"):
            fmt = FormatString(text=tc.req("format", _log_format_text))
        if tc.has("json_format"):
            fmt = FormatString(json=tc.req("json_format", _log_json_format))
    tc.done()
    f.done()
    return AccessLog("file" if name == FILE_LOG_NAME else "stdout", log_path, fmt)


def _log_operators_ok(r: _Reader, text: str, path: str) -> None:
    for m in OPERATOR_RE.finditer(text):
        op = m.group(1) + (f"({m.group(2)})" if m.group(2) is not None else "")
        if op.upper() not in LOG_OPERATORS:
            r.fail(
                path, f"unsupported command operator %{op}% (supported: {', '.join(sorted(LOG_OPERATORS))})"
            )


def _log_format_text(r: _Reader, v: object, path: str) -> str:
    text = _str(r, v, path)
    _log_operators_ok(r, text, path)
    return text


def _log_json_format(r: _Reader, v: object, path: str) -> str:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")
    for key, value in v.items():
        if isinstance(value, str):
            _log_operators_ok(r, value, _join(path, str(key)))
        elif not isinstance(value, (int, float, bool)) and value is not None:
            r.fail(_join(path, str(key)), "nested values are outside the subset: strings with operators only")
    return json.dumps(v)


def _log_format(r: _Reader, v: object, path: str) -> FormatString:
    """An access log's ``log_format``: ``text_format``, ``text_format_source`` (inline) or
    ``json_format`` (flat), with the access log's operators."""
    f = _Fields(r, v, path, ("text_format", "text_format_source", "json_format"))
    which = f.exactly_one("text_format", "text_format_source", "json_format")
    out = FormatString()
    if which == "text_format":
        out = FormatString(text=f.req("text_format", _log_format_text))
    elif which == "text_format_source":
        source = f.req("text_format_source", _inline_string)
        if source is not None:
            out = FormatString(text=_log_format_text(r, source, _join(path, "text_format_source")))
    elif which == "json_format":
        out = FormatString(json=f.req("json_format", _log_json_format))
    f.done()
    return out


def _http1_options(r: _Reader, v: object, path: str) -> bool:
    """``http_protocol_options`` (HTTP/1.1): ``enable_trailers`` only."""
    f = _Fields(r, v, path, ("enable_trailers",))
    enabled: bool = f.opt("enable_trailers", _bool, False)
    f.done()
    return enabled


def _hcm(r: _Reader, f: _Fields) -> HttpConnectionManager:
    stat_prefix = f.req("stat_prefix", _nonempty_str)
    codec: CodecType = f.opt("codec_type", _enum(CODEC_TYPES), "AUTO")
    route_config = f.req("route_config", _route_config)
    filters = f.req("http_filters", _list(_http_filter, min_items=1))
    if filters is not None:
        routers = [i for i, x in enumerate(filters) if x.type_name == ROUTER_NAME]
        if routers != [len(filters) - 1]:
            f.problem("http_filters", f"must end with {ROUTER_NAME}, once (the terminal filter)")
        elif filters[-1].disabled:
            f.problem(f"http_filters[{len(filters) - 1}].disabled", "the router cannot be disabled")
        seen_filters: set[str] = set()
        for i, x in enumerate(filters):
            if x.name in seen_filters:
                f.problem(f"http_filters[{i}].name", f"{x.name} is configured twice (one of each here)")
            seen_filters.add(x.name)
    hcm = HttpConnectionManager(
        stat_prefix=stat_prefix,
        route_config=route_config,
        codec_type=codec,
        access_log=f.opt("access_log", _list(_access_log), ()),
        idle_timeout=f.opt("common_http_protocol_options", _idle_timeout_options, 3600.0),
        request_timeout=f.opt("request_timeout", _duration_ge0, 0.0),
        stream_idle_timeout=f.opt("stream_idle_timeout", _duration_ge0, 300.0),
        http_filters=filters if filters is not None else (),
        upgrade_configs=f.opt("upgrade_configs", _list(_upgrade_config), ()),
        http2=f.opt("http2_protocol_options", _http2_options, Http2Options()),
        enable_trailers=f.opt("http_protocol_options", _http1_options, False),
    )
    if f.has("local_reply_config"):
        reply = f.req("local_reply_config", _local_reply_config)
        if reply is not None:
            hcm = replace(hcm, local_reply_mappers=reply[0], local_reply_format=reply[1])
    f.done()
    return hcm


def _format_text(r: _Reader, v: object, path: str) -> str:
    text = _str(r, v, path)
    for m in OPERATOR_RE.finditer(text):
        if m.group(1) not in KNOWN_OPERATORS:
            r.fail(
                path, f"unsupported command operator %{m.group(1)}% (supported: {', '.join(KNOWN_OPERATORS)})"
            )
    return text


def _json_format(r: _Reader, v: object, path: str) -> str:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")

    def check(node: object, where: str) -> None:
        if isinstance(node, str):
            _format_text(r, node, where)
        elif isinstance(node, Mapping):
            for k, x in node.items():
                check(x, _join(where, str(k)))
        elif isinstance(node, list):
            for i, x in enumerate(node):
                check(x, f"{where}[{i}]")

    check(v, path)
    try:
        return json.dumps(v)
    except (TypeError, ValueError) as exc:
        r.fail(path, f"not a JSON object: {exc}")


def _format_string(r: _Reader, v: object, path: str) -> FormatString:
    """A ``SubstitutionFormatString``: one of ``text_format``, ``text_format_source`` (inline),
    ``json_format``; and ``content_type``."""
    f = _Fields(r, v, path, ("text_format", "text_format_source", "json_format", "content_type"))
    which = f.exactly_one("text_format", "text_format_source", "json_format")
    text = json_text = None
    if which == "text_format":
        text = f.req("text_format", _format_text)
    elif which == "text_format_source":
        source = f.req("text_format_source", _inline_string)
        text = _format_text(r, source, _join(path, "text_format_source")) if source is not None else None
    elif which == "json_format":
        json_text = f.req("json_format", _json_format)
    content_type = f.opt("content_type", _field_value, None)
    f.done()
    return FormatString(text, json_text, content_type)


_COMPARISON_OPS = ("EQ", "GE", "LE")


def _status_comparison(r: _Reader, v: object, path: str) -> tuple[str, int]:
    f = _Fields(r, v, path, ("op", "value"))
    op = f.opt("op", _enum(_COMPARISON_OPS), "EQ")
    value = f.req("value", _runtime_uint32)
    f.done()
    return op, value


def _runtime_uint32(r: _Reader, v: object, path: str) -> int:
    f = _Fields(r, v, path, ("default_value", "runtime_key"))
    value = f.req("default_value", _uint32)
    f.req("runtime_key", _str)  # required by Envoy's RuntimeUInt32; static here
    f.done()
    return value


def _reply_filter(r: _Reader, v: object, path: str) -> ReplyFilter:
    kinds = ("status_code_filter", "header_filter", "response_flag_filter", "and_filter", "or_filter")
    f = _Fields(r, v, path, kinds)
    which = f.exactly_one(*kinds)
    out: ReplyFilter | None = None
    if which == "status_code_filter":
        sub = _Fields(r, f.values["status_code_filter"], _join(path, which), ("comparison",))
        comparison = sub.req("comparison", _status_comparison)
        sub.done()
        out = ReplyFilter(which, op=comparison[0], value=comparison[1])
    elif which == "header_filter":
        sub = _Fields(r, f.values["header_filter"], _join(path, which), ("header",))
        matcher = sub.req("header", _header_matcher)
        sub.done()
        out = ReplyFilter(which, header=_header_predicate(matcher))
    elif which == "response_flag_filter":
        sub = _Fields(r, f.values["response_flag_filter"], _join(path, which), ("flags",))
        flags = sub.opt("flags", _list(_nonempty_str), ())
        sub.done()
        out = ReplyFilter(which, flags=flags)
    elif which is not None:
        sub = _Fields(r, f.values[which], _join(path, which), ("filters",))
        children = sub.req("filters", _list(_reply_filter, min_items=2))
        sub.done()
        out = ReplyFilter(which, children=children)
    f.done()
    if out is None:  # unreachable: f failed, so done() raised
        raise _Skip
    return out


def _header_predicate(m: HeaderMatcher) -> Callable[[Sequence[tuple[bytes, bytes]]], bool]:
    """A header matcher as a test on request headers (the router's rule, without importing it)."""
    name = m.name.lower().encode("latin-1")

    def test(headers: Sequence[tuple[bytes, bytes]]) -> bool:
        raw = next((v for k, v in headers if k.lower() == name), None)
        if m.kind in ("present", "absent"):
            return (raw is not None) == (m.kind == "present")
        if raw is None or m.value is None:
            return False
        value, want = raw.decode("latin-1"), m.value
        if m.ignore_case:
            value, want = value.lower(), want.lower()
        return value == want if m.kind == "exact" else value.startswith(want)

    return test


def _mapper(r: _Reader, v: object, path: str) -> Mapper:
    f = _Fields(r, v, path, ("filter", "status_code", "body", "body_format_override", "headers_to_add"))
    mapper = Mapper(
        filter=f.req("filter", _reply_filter),
        status_code=f.opt("status_code", _uint(200, 599), None),
        body=f.opt("body", _inline_string, None),
        headers_to_add=tuple(
            (h.key, h.value) for h in f.opt("headers_to_add", _list(_header_value_option), ()) or ()
        ),
        body_format_override=f.opt("body_format_override", _format_string, None),
    )
    f.done()
    return mapper


def _local_reply_config(r: _Reader, v: object, path: str) -> tuple[tuple[Mapper, ...], FormatString | None]:
    f = _Fields(r, v, path, ("mappers", "body_format"))
    mappers = f.opt("mappers", _list(_mapper), ())
    body_format = f.opt("body_format", _format_string, None)
    f.done()
    return mappers, body_format
