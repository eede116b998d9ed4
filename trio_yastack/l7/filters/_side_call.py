"""One HTTP/1.1 request from a filter to a cluster of the proxy's own config (``jwt_authn``'s
remote JWKS, ``ext_authz``'s HTTP service), answered within a deadline and a size bound.

Why not the router's upstream pool: these calls are rare (a JWKS is cached for minutes) or are a
small side request whose failure the filter answers itself (``failure_mode_allow``,
``status_on_error``); a connection per call, taken through the cluster's own ``open_tunnel`` (its
load balancing, ``max_connections`` and TLS), keeps them out of the pool's accounting and keeps this
module independent of how the pool works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11
import trio

from ..upstream import ConnectFailure

if TYPE_CHECKING:
    from ..upstream import ClusterRuntime

__all__ = ["MAX_SIDE_RESPONSE", "SideCallError", "SideResponse", "http_call"]

#: the largest response a side call reads (a JWKS or an authorization answer is a few KB)
MAX_SIDE_RESPONSE = 1024 * 1024
_READ = 16 * 1024

Headers = list[tuple[bytes, bytes]]


class SideCallError(Exception):
    """The call failed: no healthy host, connection refused or reset, timeout, a malformed or
    oversized response.  The message says which (for logs and tests); ``kind`` says which for a
    retry policy: ``connect-failure``, ``reset`` (the connection broke), ``no-host`` (what Envoy
    answers 503), or ``other`` (a timeout, a malformed or oversized answer: not retried);
    ``status``: the answer's status when a caller refused it for that."""

    def __init__(self, message: str, kind: str = "other", status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True, slots=True)
class SideResponse:
    status: int
    headers: Headers
    body: bytes


async def http_call(
    cluster: ClusterRuntime,
    method: str,
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    timeout: float,
    host_header: str | None = None,
) -> SideResponse:
    """``method target`` to a host of ``cluster``, the whole exchange within ``timeout`` seconds."""
    with trio.move_on_after(timeout) as scope:
        return await _call(cluster, method, target, headers, body, host_header)
    assert scope.cancelled_caught
    raise SideCallError(f"{cluster.name}: no answer within {timeout:g}s")


async def _call(
    cluster: ClusterRuntime,
    method: str,
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    host_header: str | None,
) -> SideResponse:
    host = cluster.choose_host()
    if host is None:
        raise SideCallError(f"{cluster.name}: no healthy upstream", "no-host")
    try:
        stream = await cluster.open_tunnel(host)
    except (ConnectFailure, OSError, trio.BrokenResourceError) as exc:
        raise SideCallError(f"{cluster.name}: {exc}", "connect-failure") from None
    if stream is None:
        raise SideCallError(f"{cluster.name}: max_connections reached", "no-host")
    try:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        head = [(b"host", (host_header or cluster.name).encode("latin-1"))]
        head += [(k, v) for k, v in headers if k not in (b"host", b"content-length", b"transfer-encoding")]
        head.append((b"content-length", str(len(body)).encode()))
        out = conn.send(h11.Request(method=method, target=target, headers=head))
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"") if body else out or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)
        status, reply_headers, chunks, size = 0, Headers(), list[bytes](), 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(_READ)
                if not data:
                    raise SideCallError(
                        f"{cluster.name}: connection closed before the response ended", "reset"
                    )
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                status, reply_headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_SIDE_RESPONSE:
                    raise SideCallError(f"{cluster.name}: response larger than {MAX_SIDE_RESPONSE} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return SideResponse(status, reply_headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise SideCallError(f"{cluster.name}: connection closed before the response ended", "reset")
    except h11.ProtocolError as exc:
        raise SideCallError(f"{cluster.name}: malformed response: {exc}") from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise SideCallError(f"{cluster.name}: {exc}", "reset") from None
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        cluster.tunnel_closed(host)
