"""Every bound of the lean ASGI server in one frozen place.

Defaults are uvicorn's or hypercorn's where they have one (named per field), so an app that
works behind either behaves the same behind ours.  The CLI (``yastack serve``) maps its options
onto these fields; :meth:`ServerConfig.from_hypercorn` maps a hypercorn ``Config`` for callers
that still build one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ServerConfig"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What :func:`~trio_yastack.l7.asgi.serve_asgi` serves, and every limit it holds clients to."""

    #: ``HOST:PORT`` listeners; TLS ones when ``certfile``/``keyfile`` are set (hypercorn's rule)
    bind: tuple[str, ...] = ("0.0.0.0:8000",)
    #: plain HTTP listeners beside TLS ones (ignored without TLS: then ``bind`` is plain)
    insecure_bind: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    #: the listen backlog (uvicorn's 2048, hypercorn's 100: we take 1024)
    backlog: int = 1024
    #: seconds an idle keep-alive connection waits for its next request (uvicorn 5 s); serve_asgi
    #: checks this and request_head_timeout every SWEEP_INTERVAL (0.5 s), their resolution
    keep_alive_timeout: float = 5.0
    #: seconds in-flight requests get after a shutdown request (hypercorn 3 s)
    graceful_timeout: float = 3.0
    #: seconds from a request's first byte to its complete head: past it 408 and close (slowloris)
    request_head_timeout: float = 10.0
    #: the largest request head (request line + headers); larger: 431
    max_header_bytes: int = 64 * 1024
    #: the largest request body (declared or streamed); larger: 413.  None: no limit
    max_request_body: int | None = 100 * MiB
    #: requests parsed ahead of the one being served; at this many (or max_header_bytes *
    #: max_pipelined bytes queued) the connection stops reading until the queue drains.  One read
    #: (``receive_size`` bytes) is parsed whole, so a single read of tiny requests may queue more.
    max_pipelined: int = 16
    #: a WebSocket message larger than this closes the connection with 1009 (hypercorn 16 MiB)
    ws_max_message_size: int = 16 * MiB
    #: seconds between server pings on a WebSocket (None: the server does not ping)
    ws_ping_interval: float | None = None
    #: the ASGI ``root_path`` (the app is mounted below this prefix)
    root_path: str = ""
    #: access log: None off, ``"-"`` stdout, else a file path (hypercorn's format)
    access_log: str | None = None
    #: send ``server: trio_yastack`` (uvicorn sends ``server: uvicorn``); ``date`` is always sent
    server_header: bool = False
    #: the ASGI lifespan protocol: "auto" (an app that raises on it does not support it), "on", "off"
    lifespan: Literal["auto", "on", "off"] = "auto"
    #: the bytes one read asks the stream for
    receive_size: int = field(default=64 * 1024, repr=False)

    def __post_init__(self) -> None:
        problems = []
        for name in ("backlog", "max_header_bytes", "max_pipelined", "ws_max_message_size", "receive_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("keep_alive_timeout", "graceful_timeout", "request_head_timeout"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.max_request_body is not None and self.max_request_body < 0:
            problems.append("max_request_body must not be negative")
        if self.lifespan not in ("auto", "on", "off"):
            problems.append(f"lifespan must be auto, on or off, not {self.lifespan!r}")
        if bool(self.certfile) != bool(self.keyfile):
            problems.append("certfile and keyfile go together")
        if isinstance(self.bind, str) or isinstance(self.insecure_bind, str):
            problems.append("bind and insecure_bind are tuples of HOST:PORT strings")
        if problems:
            raise ValueError("ServerConfig: " + "; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @classmethod
    def from_hypercorn(cls, config: Any) -> ServerConfig:
        """The fields a hypercorn ``Config`` shares with ours (the rest mean nothing here)."""
        accesslog = config.accesslog
        return cls(
            bind=tuple(config.bind),
            insecure_bind=tuple(config.insecure_bind),
            certfile=config.certfile,
            keyfile=config.keyfile,
            backlog=config.backlog,
            keep_alive_timeout=config.keep_alive_timeout,
            graceful_timeout=config.graceful_timeout,
            ws_max_message_size=config.websocket_max_message_size,
            ws_ping_interval=config.websocket_ping_interval,
            root_path=config.root_path,
            access_log=accesslog if isinstance(accesslog, str) else None,
        )
