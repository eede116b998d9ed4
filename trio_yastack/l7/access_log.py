"""Access logs in Envoy's default format.

Envoy's default line (``config/accesslog/v3`` ``DEFAULT_FORMAT``)::

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"

(one line; absent values are ``-``).  Lines are buffered and flushed every second and at exit, as
Envoy's ``file_flush_interval`` does, so logging costs one ``write`` per second, not one per request.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from .config import AccessLog
from .local_reply import OPERATOR_RE, FormatString

__all__ = ["FLUSH_INTERVAL", "AccessLogger", "AccessRecord", "format_record", "format_with"]

FLUSH_INTERVAL = 1.0
MAX_BUFFERED_LINES = 10_000  # beyond this a line is written through at once (the buffer is bounded)


@dataclass(init=False)
class AccessRecord:
    """What one request (or one tcp_proxy connection) leaves in the log.

    Made for every request, logged or not (the proxy notes its status and flags here on the
    way), so it is made cheaply: the defaults are the class's attributes and only what a caller
    gives is set on the instance (a dataclass ``__init__`` setting fifteen fields was ~0.6 us per
    request; this is ~0.2)."""

    start_time: float  # wall clock, seconds since the epoch
    method: str | None = None
    path: str | None = None
    protocol: str | None = None  # "HTTP/1.1"; None for tcp_proxy
    response_code: int = 0
    response_flags: str = "-"
    bytes_received: int = 0
    bytes_sent: int = 0
    duration_ms: int = 0
    upstream_service_time: str | None = None
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    #: the request's headers as the HTTP filters leave them (the general path sets them): a local
    #: reply reads whether the request is gRPC (None: unknown, not gRPC)
    request_headers: list[tuple[bytes, bytes]] | None = None
    #: the HTTP filters' response encoders (gRPC-Web, Lua, the compressor) a response the proxy
    #: makes itself passes through, as Envoy's local replies pass its encoder filters (None: none)
    encoders: list[Any] | None = None

    def __init__(self, start_time: float, **fields: str | int | None) -> None:
        self.start_time = start_time
        if fields:
            for name, value in fields.items():
                if name not in _RECORD_FIELDS:
                    raise TypeError(f"AccessRecord has no field {name!r}")
                setattr(self, name, value)


_RECORD_FIELDS = frozenset(AccessRecord.__annotations__)


def _start_time(seconds: float) -> str:
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _operator(r: AccessRecord, name: str, arg: str | None) -> str | int | None:
    """One command operator of :data:`trio_yastack.l7.local_reply.LOG_OPERATORS` (the config reader
    refuses the others) for record ``r``; None prints as ``-``."""
    if arg is not None:
        key = arg.upper()
        if name == "RESP":
            return r.upstream_service_time
        return {
            ":METHOD": r.method,
            ":PATH": r.path,
            "X-ENVOY-ORIGINAL-PATH?:PATH": r.path,
            ":AUTHORITY": r.authority,
            "X-FORWARDED-FOR": r.x_forwarded_for,
            "USER-AGENT": r.user_agent,
            "X-REQUEST-ID": r.request_id,
        }.get(key)
    return {
        "START_TIME": _start_time(r.start_time),
        "PROTOCOL": r.protocol,
        "RESPONSE_CODE": r.response_code,
        "RESPONSE_FLAGS": r.response_flags or "-",
        "BYTES_RECEIVED": r.bytes_received,
        "BYTES_SENT": r.bytes_sent,
        "DURATION": r.duration_ms,
        "UPSTREAM_HOST": r.upstream_host,
    }.get(name)


def format_with(fmt: FormatString, r: AccessRecord) -> str:
    """A record in an access log's ``log_format``: text as written (Envoy adds no newline to a
    ``text_format``; one is added here when missing, one record a line), or one JSON object a line
    whose values that are a single operator keep their type."""
    if fmt.text is not None:

        def one(m: re.Match[str]) -> str:
            value = _operator(r, m.group(1), m.group(2))
            return "-" if value is None else str(value)

        line = OPERATOR_RE.sub(one, fmt.text)
        return line if line.endswith("\n") else line + "\n"
    document = json.loads(fmt.json or "{}")
    for key, value in document.items():
        if isinstance(value, str):
            whole = OPERATOR_RE.fullmatch(value)
            if whole is not None:
                document[key] = _operator(r, whole.group(1), whole.group(2))
            else:
                document[key] = OPERATOR_RE.sub(
                    lambda m: str(_operator(r, m.group(1), m.group(2)) or "-"), value
                )
    return json.dumps(document, separators=(",", ":")) + "\n"


def format_record(r: AccessRecord) -> str:
    def q(value: str | None) -> str:
        return value if value else "-"

    return (
        f'[{_start_time(r.start_time)}] "{q(r.method)} {q(r.path)} {q(r.protocol)}" {r.response_code} '
        f"{r.response_flags or '-'} {r.bytes_received} {r.bytes_sent} {r.duration_ms} "
        f'{q(r.upstream_service_time)} "{q(r.x_forwarded_for)}" "{q(r.user_agent)}" "{q(r.request_id)}" '
        f'"{q(r.authority)}" "{q(r.upstream_host)}"\n'
    )


class AccessLogger:
    """The access logs of one filter (or of the admin endpoint): stdout and/or files."""

    def __init__(self, logs: tuple[AccessLog, ...]) -> None:
        self._targets: list[TextIO] = []
        self._owned: list[TextIO] = []
        self._formats: list[FormatString | None] = []  # per target: None is Envoy's default format
        for log in logs:
            if log.kind == "stdout":
                self._targets.append(sys.stdout)
            else:
                assert log.path is not None
                f = open(log.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
                self._targets.append(f)
                self._owned.append(f)
            self._formats.append(log.log_format)
        # one shared buffer when every target prints the default format (the common case), else one
        # buffer per target
        self._uniform = all(f is None for f in self._formats)
        self._pending: list[str] = []
        self._per_target: list[list[str]] = [[] for _ in self._targets]

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    def log(self, record: AccessRecord) -> None:
        if not self._targets:
            return
        if self._uniform:
            self._pending.append(format_record(record))
            if len(self._pending) >= MAX_BUFFERED_LINES:
                self.flush()
            return
        for lines, fmt in zip(self._per_target, self._formats, strict=True):
            lines.append(format_record(record) if fmt is None else format_with(fmt, record))
        if len(self._per_target[0]) >= MAX_BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        if self._uniform:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            texts = [text] * len(self._targets)
        else:
            texts = ["".join(lines) for lines in self._per_target]
            for lines in self._per_target:
                lines.clear()
        for target, text in zip(self._targets, texts, strict=True):
            if not text:
                continue
            try:
                target.write(text)
                target.flush()
            except (OSError, ValueError):  # a closed stdout or a full disk must not stop the proxy
                pass

    def close(self) -> None:
        self.flush()
        for f in self._owned:
            f.close()
        self._owned.clear()
