"""Two small things several layers above the stack do with trio objects, written once.

- :func:`lingering_close`: how a server that has answered closes without losing its answer.
- :func:`unwrap_single_exception`: a nursery's lone exception given back as itself.

Only trio is imported here, so the proxy (``l7``), the journey's control channel and ``open_stack``
can all use it without any of them reaching into another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio

__all__ = ["lingering_close", "unwrap_single_exception"]


async def lingering_close(stream: trio.abc.Stream, *, max_bytes: int, receive_size: int) -> None:
    """Stop sending, then read and drop what the peer still sends, up to ``max_bytes`` or its EOF,
    as nginx's ``lingering_close`` does.

    Why: closing a socket (the kernel's or the stack's) with unread bytes in its receive buffer
    sends a reset, and a reset can destroy the reply still sitting unread in the peer's receive
    buffer.  The caller bounds the time (``trio.move_on_after``) and decides which errors end it.
    """
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    drained = 0
    while drained < max_bytes:
        data = await stream.receive_some(receive_size)
        if not data:
            return
        drained += len(data)


@contextlib.contextmanager
def unwrap_single_exception() -> Iterator[None]:
    """Re-raise an ``ExceptionGroup`` holding exactly one exception as that exception.

    trio wraps even a lone exception of a nursery in a group; code around the nursery that
    catches errors by type (a local reply, a vanished client) or a caller that should see its own
    exception as if no nursery were there wants it unwrapped.  Groups of several stay groups.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
