"""The access log in hypercorn's default format, so tools that read hypercorn's lines read ours.

hypercorn's ``access_log_format`` default is
``%(h)s %(l)s %(l)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"``: client ``host:port``, ``-``,
``-``, the local time as ``[06/Dec/2026:02:14:38 +0000]``, ``"METHOD PATH HTTP_VERSION"`` (the
version as ASGI spells it: ``1.1``), the status, the response's ``content-length`` (or ``-``),
the ``referer`` and ``user-agent`` (or ``-``).  Lines are buffered and written at most once a
second (and when the logger closes), so logging costs one write per second, not one per request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["AccessLogger", "format_line"]

FLUSH_INTERVAL = 1.0
MAX_BUFFERED_LINES = 10_000  # beyond this a batch is written at once (the buffer is bounded)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return "-"


def format_line(
    scope: dict[str, Any],
    status: int | None,
    response_headers: Iterable[tuple[bytes, bytes]],
    when: float | None = None,
) -> str:
    """One line of hypercorn's default format for a request ``scope`` and its response."""
    client = scope.get("client")
    host = "-" if client is None else f"{client[0]}:{client[1]}"
    method = scope.get("method", "GET")
    stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(when))
    request = f"{method} {scope['path']} {scope.get('http_version', 'ws')}"
    headers = scope.get("headers", ())
    return (
        f'{host} - - {stamp} "{request}" {"-" if status is None else status} '
        f'{_header(response_headers, b"content-length")} "{_header(headers, b"referer")}" '
        f'"{_header(headers, b"user-agent")}"'
    )


class AccessLogger:
    """Buffers access-log lines and writes them to ``target`` (``"-"``: stdout, else a path)."""

    def __init__(self, target: str | TextIO) -> None:
        self._owned = False
        if isinstance(target, str):
            if target == "-":
                self._out: TextIO = sys.stdout
            else:
                self._out = open(target, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
                self._owned = True
        else:
            self._out = target
        self._lines: list[str] = []
        self._last_flush = time.monotonic()

    def log(
        self, scope: dict[str, Any], status: int | None, response_headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        """Record one request; written with the next flush (at most a second later)."""
        self._lines.append(format_line(scope, status, response_headers))
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_INTERVAL or len(self._lines) >= MAX_BUFFERED_LINES:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self._lines:
            self._out.write("\n".join(self._lines) + "\n")
            self._out.flush()
            self._lines.clear()
        self._last_flush = time.monotonic() if now is None else now

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._out.close()
