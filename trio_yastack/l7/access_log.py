"""Access logs in Envoy's default format.

Envoy's default line (``config/accesslog/v3`` ``DEFAULT_FORMAT``)::

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"

(one line; absent values are ``-``).  Lines are buffered and flushed every second and at exit, as
Envoy's ``file_flush_interval`` does, so logging costs one ``write`` per second, not one per request.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from .config import AccessLog

__all__ = ["FLUSH_INTERVAL", "AccessLogger", "AccessRecord", "format_record"]

FLUSH_INTERVAL = 1.0
MAX_BUFFERED_LINES = 10_000  # beyond this a line is written through at once (the buffer is bounded)


@dataclass(slots=True)
class AccessRecord:
    """What one request (or one tcp_proxy connection) leaves in the log."""

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


def _start_time(seconds: float) -> str:
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


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
        for log in logs:
            if log.kind == "stdout":
                self._targets.append(sys.stdout)
            else:
                assert log.path is not None
                f = open(log.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
                self._targets.append(f)
                self._owned.append(f)
        self._pending: list[str] = []

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    def log(self, record: AccessRecord) -> None:
        if not self._targets:
            return
        self._pending.append(format_record(record))
        if len(self._pending) >= MAX_BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        for target in self._targets:
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
