"""Envoy's ``local_reply_config``: rewrite the answers the proxy makes itself (404 no route, 503 no
healthy upstream, 429 rate limited, a fault's abort, ...), and Envoy's substitution format strings.

Envoy's behaviour (docs: "Local reply modification"): the first ``mappers[]`` entry whose ``filter``
matches the reply may change its ``status_code``, its ``body`` and add ``headers_to_add``, and give
a ``body_format_override``; then the body is formatted by that override or by ``body_format`` (a
``text_format``, ``text_format_source`` or ``json_format``; ``%LOCAL_REPLY_BODY%`` is the body so
far).  Without any format the body stays plain text.  ext_authz's denial is a local reply in
Envoy (``sendLocalReply``) and is rewritten too, its body kept exactly where nothing changes it
(``rewrite(newline=False)``); so is a route's ``direct_response``, which Envoy's router sends through
``sendLocalReply`` as well (its configured body is ``%LOCAL_REPLY_BODY%``), and to a gRPC request it
is gRPC-formatted as below.

The command operators understood here: ``%LOCAL_REPLY_BODY%``, ``%RESPONSE_CODE%``,
``%RESPONSE_FLAGS%``, ``%PROTOCOL%``, ``%START_TIME%`` and ``%REQ(NAME)%`` / ``%REQ(A?B)%`` (with
``:method``, ``:path`` and ``:authority``); the config reader refuses any other.

A local reply to a gRPC request (``content-type`` ``application/grpc`` or ``application/grpc+...``,
as Envoy's ``Grpc::Common::hasGrpcContentType`` reads it; gRPC-Web is not gRPC) is sent as gRPC's
"trailers-only" answer, as Envoy's ``Http::Utility::sendLocalReply`` sends it
(:func:`grpc_reply_headers`): HTTP 200, ``content-type: application/grpc``, ``grpc-status`` (one a
filter or mapper set, else the filter's own, else the HTTP status mapped by
:func:`http_to_grpc_status`) and ``grpc-message`` (the reply's body, percent-encoded), no body.
A gRPC client sees the proxy's 503 as UNAVAILABLE with the message "no healthy upstream" instead
of an HTTP error it cannot read.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "GRPC_UNAVAILABLE",
    "KNOWN_OPERATORS",
    "LOG_OPERATORS",
    "OPERATOR_RE",
    "FormatString",
    "LocalReplyContext",
    "Mapper",
    "ReplyFilter",
    "grpc_reply_headers",
    "http_to_grpc_status",
    "is_grpc_request",
    "percent_encode",
    "rewrite",
]

#: a command operator: %NAME% or %NAME(ARG)% (Envoy also takes a :Z length suffix, refused here)
OPERATOR_RE = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?%")
KNOWN_OPERATORS = ("LOCAL_REPLY_BODY", "RESPONSE_CODE", "RESPONSE_FLAGS", "PROTOCOL", "START_TIME", "REQ")
#: what an access log's ``log_format`` may use: the fields of Envoy's default format (the access
#: record keeps those, not every header)
LOG_OPERATORS = frozenset(
    {
        "START_TIME",
        "PROTOCOL",
        "RESPONSE_CODE",
        "RESPONSE_FLAGS",
        "BYTES_RECEIVED",
        "BYTES_SENT",
        "DURATION",
        "UPSTREAM_HOST",
        "REQ(:METHOD)",
        "REQ(:PATH)",
        "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)",
        "REQ(:AUTHORITY)",
        "REQ(X-FORWARDED-FOR)",
        "REQ(USER-AGENT)",
        "REQ(X-REQUEST-ID)",
        "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)",
    }
)


@dataclass(slots=True)
class LocalReplyContext:
    """What the operators read: the reply as it stands and the request it answers."""

    status: int
    body: str
    flags: str
    protocol: str
    start_time: float
    request_headers: Sequence[tuple[bytes, bytes]]
    method: str
    path: str
    authority: str


def _req(ctx: LocalReplyContext, arg: str) -> str | None:
    for name in arg.split("?"):
        key = name.strip().lower()
        if key == ":method":
            return ctx.method
        if key == ":path":
            return ctx.path
        if key in (":authority", "host"):
            return ctx.authority or None
        for k, v in ctx.request_headers:
            if k.lower() == key.encode("latin-1"):
                return v.decode("latin-1")
    return None


def _value(ctx: LocalReplyContext, name: str, arg: str | None) -> str | int | None:
    if name == "LOCAL_REPLY_BODY":
        return ctx.body
    if name == "RESPONSE_CODE":
        return ctx.status
    if name == "RESPONSE_FLAGS":
        return ctx.flags
    if name == "PROTOCOL":
        return ctx.protocol
    if name == "START_TIME":
        whole = int(ctx.start_time)
        return (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            + f".{int((ctx.start_time - whole) * 1000):03d}Z"
        )
    return _req(ctx, arg or "")


def _substitute(template: str, ctx: LocalReplyContext) -> str:
    def one(m: re.Match[str]) -> str:
        value = _value(ctx, m.group(1), m.group(2))
        return "-" if value is None else str(value)

    return OPERATOR_RE.sub(one, template)


@dataclass(frozen=True, slots=True)
class FormatString:
    """A ``SubstitutionFormatString``: ``text`` (from ``text_format`` or ``text_format_source``) or
    ``json`` (``json_format``, a JSON object whose string values may hold operators; a value that is
    one operator alone keeps its type, e.g. ``%RESPONSE_CODE%`` a number), and ``content_type``."""

    text: str | None = None
    json: str | None = None  # the json_format object, serialized (frozen dataclasses need hashables)
    content_type: str | None = None

    def render(self, ctx: LocalReplyContext) -> tuple[str, str]:
        """(body, content type)."""
        if self.text is not None:
            return _substitute(self.text, ctx), self.content_type or "text/plain"
        assert self.json is not None  # one of the two: the config reader checks

        def walk(node: object) -> object:
            if isinstance(node, str):
                whole = OPERATOR_RE.fullmatch(node)
                if whole is not None:
                    return _value(ctx, whole.group(1), whole.group(2))
                return _substitute(node, ctx)
            if isinstance(node, Mapping):
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            return node

        document = walk(json.loads(self.json))
        return json.dumps(document, separators=(",", ":")) + "\n", self.content_type or "application/json"


@dataclass(frozen=True, slots=True)
class ReplyFilter:
    """An ``AccessLogFilter`` of the kinds a mapper uses: ``status_code_filter`` (``op`` EQ / GE / LE
    against ``value``), ``header_filter`` (a header matcher's name, kind and value),
    ``response_flag_filter`` (any of ``flags``; empty: any flag), ``and_filter`` / ``or_filter``."""

    kind: str
    op: str = "EQ"
    value: int = 0
    flags: tuple[str, ...] = ()
    children: tuple[ReplyFilter, ...] = ()
    header: Callable[[Sequence[tuple[bytes, bytes]]], bool] | None = None

    def matches(self, ctx: LocalReplyContext) -> bool:
        if self.kind == "status_code_filter":
            if self.op == "GE":
                return ctx.status >= self.value
            if self.op == "LE":
                return ctx.status <= self.value
            return ctx.status == self.value
        if self.kind == "header_filter":
            return self.header is not None and self.header(ctx.request_headers)
        if self.kind == "response_flag_filter":
            present = set(ctx.flags.split(",")) - {"-", ""}
            return bool(present) if not self.flags else bool(present & set(self.flags))
        if self.kind == "and_filter":
            return all(c.matches(ctx) for c in self.children)
        return any(c.matches(ctx) for c in self.children)


@dataclass(frozen=True, slots=True)
class Mapper:
    """``mappers[]``: when ``filter`` matches, the new ``status_code`` / ``body`` / headers / format."""

    filter: ReplyFilter
    status_code: int | None = None
    body: str | None = None
    headers_to_add: tuple[tuple[str, str], ...] = ()
    body_format_override: FormatString | None = None


def rewrite(
    mappers: tuple[Mapper, ...], body_format: FormatString | None, ctx: LocalReplyContext,
    *, newline: bool = True,
) -> tuple[int, bytes, str, list[tuple[bytes, bytes]]]:  # fmt: skip
    """The reply after ``local_reply_config``: (status, body, content type, headers to add).
    ``newline``: an unformatted body ends with one (the proxy's own texts); False leaves it as it
    is (ext_authz's denial: the service's body, or a mapper's, as Envoy sends them)."""
    headers: list[tuple[bytes, bytes]] = []
    fmt = body_format
    for mapper in mappers:
        if mapper.filter.matches(ctx):
            if mapper.status_code is not None:
                ctx.status = mapper.status_code
            if mapper.body is not None:
                ctx.body = mapper.body
            headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in mapper.headers_to_add)
            fmt = mapper.body_format_override or body_format
            break
    if fmt is None:
        text = ctx.body + "\n" if ctx.body and newline else ctx.body
        return ctx.status, text.encode(), "text/plain", headers
    text, content_type = fmt.render(ctx)
    return ctx.status, text.encode(), content_type, headers


#: gRPC status codes (grpc/grpc's doc/statuscodes.md) that the mapping below gives
GRPC_UNKNOWN = 2
GRPC_PERMISSION_DENIED = 7
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16
#: Envoy's ``Grpc::Utility::httpToGrpcStatus`` (from grpc's doc/http-grpc-status-mapping.md)
_HTTP_TO_GRPC = {
    400: GRPC_INTERNAL,
    401: GRPC_UNAUTHENTICATED,
    403: GRPC_PERMISSION_DENIED,
    404: GRPC_UNIMPLEMENTED,
    429: GRPC_UNAVAILABLE,
    502: GRPC_UNAVAILABLE,
    503: GRPC_UNAVAILABLE,
    504: GRPC_UNAVAILABLE,
}
_GRPC = b"application/grpc"


def http_to_grpc_status(status: int) -> int:
    """The gRPC status Envoy gives a local reply of HTTP ``status`` (UNKNOWN for the rest)."""
    return _HTTP_TO_GRPC.get(status, GRPC_UNKNOWN)


def is_grpc_request(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request is gRPC by Envoy's rule: its content type is exactly ``application/grpc`` or
    ``application/grpc+`` something (``application/grpc-web`` is not)."""
    for key, value in headers:
        if key.lower() == b"content-type":
            return value == _GRPC or value.startswith(b"application/grpc+")
    return False


def percent_encode(text: str) -> bytes:
    """``grpc-message``'s encoding, as Envoy's ``PercentEncoding::encode``: the UTF-8 bytes below
    0x20, from 0x7E up, and ``%`` as ``%XX`` (upper-case hex), the rest as they are."""
    data = text.encode("utf-8")
    if all(0x20 <= b < 0x7E and b != 0x25 for b in data):
        return data
    return b"".join(b"%%%02X" % b if b < 0x20 or b >= 0x7E or b == 0x25 else bytes((b,)) for b in data)


def grpc_reply_headers(
    status: int, message: str, headers: Sequence[tuple[bytes, bytes]], grpc_status: int | None, head: bool
) -> list[tuple[bytes, bytes]]:
    """The head of a gRPC local reply (sent with HTTP status 200 and no body): ``headers`` (what
    the filters and ``local_reply_config`` added) with ``content-type: application/grpc``, their
    ``grpc-status`` if they have one, else ``grpc_status`` (a filter's), else ``status`` mapped; and
    ``grpc-message``, ``message`` percent-encoded, unless it is empty or the request a HEAD."""
    out = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    out.append((b"content-type", _GRPC))
    if not any(k.lower() == b"grpc-status" for k, _ in out):
        code = grpc_status if grpc_status is not None else http_to_grpc_status(status)
        out.append((b"grpc-status", str(code).encode()))
    if message and not head:
        out = [(k, v) for k, v in out if k.lower() != b"grpc-message"]
        out.append((b"grpc-message", percent_encode(message)))
    return out
