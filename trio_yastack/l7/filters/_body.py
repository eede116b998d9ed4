"""The request body as a filter reads it before the router: Lua's ``body()`` and ext_authz's
``with_request_body``.

Why through the connection manager's own body reader (:class:`~._chain.RequestBody`) rather than a
copy of the body kept here: the reader already enforces the body limit (a 413), the request timers,
``Expect: 100-continue`` and the retry buffer; a filter only asks it to keep what it reads
(``hold``), and the router uploads the kept part first, then reads on.  Envoy buffers the same way
(the filter stops iteration and the connection manager buffers up to its limit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._chain import RequestBody

__all__ = ["buffer_body", "replace_body"]

Headers = list[tuple[bytes, bytes]]


async def buffer_body(body: RequestBody, limit: int | None = None) -> tuple[bytes, bool]:
    """Read the body until it ends (``limit`` None) or more than ``limit`` bytes are kept; returns
    every byte kept so far and whether that is the whole body.  What was read stays kept for the
    router's upload."""
    body.hold = True
    try:
        size = sum(len(c) for c in body.kept)
        while not body.complete and (limit is None or size <= limit):
            size += len(await body.read_more())
    finally:
        body.hold = False
    return b"".join(body.kept), body.complete


def replace_body(body: RequestBody, headers: Headers, data: bytes) -> None:
    """The whole (already buffered) body replaced by ``data`` (Lua's ``setBytes``): the router
    uploads ``data``, and a ``Content-Length`` request says its new length (a chunked one stays
    chunked), as Envoy updates the header when a filter changes a buffered body."""
    if not body.complete:
        raise ValueError("the body can be replaced only once it has been read whole")
    body.kept[:] = [data] if data else []
    body.replayable = True  # the kept part is the whole body now: a retry can send it again
    if body.framing != "chunked":
        headers[:] = [(k, v) for k, v in headers if k != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
