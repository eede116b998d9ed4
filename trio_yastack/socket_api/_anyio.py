"""anyio over the stack: the one call of anyio's that cannot reach trio's socket factory.

anyio's trio backend makes its client sockets, UDP sockets and name lookups with
``trio.socket.socket()``/``getaddrinfo``, so they run over the stack unchanged.  Its
``anyio.create_tcp_listener`` does not: it makes a stdlib (kernel) socket, binds and listens on
it, and only then wraps it for trio, so under a stack it would listen on the kernel (or fail
with EADDRNOTAVAIL for the stack's address).  :func:`create_tcp_listener` here takes the same
arguments and returns anyio's own trio listener class around a stack socket; what it accepts
are anyio's own trio ``SocketStream`` objects.

It uses two private names of anyio's trio backend (its ``TCPSocketListener`` and the mixin
that holds the trio socket), under the pin of anyio in pyproject.toml; ``tests/test_anyio.py``
fails if they change.
"""

from __future__ import annotations

import socket as _stdlib_socket
from typing import Any

import trio

__all__ = ["create_tcp_listener"]


async def create_tcp_listener(
    *,
    local_host: str | None = None,
    local_port: int = 0,
    family: int = _stdlib_socket.AF_UNSPEC,
    backlog: int = 65536,
    reuse_port: bool = False,
) -> Any:
    """``anyio.create_tcp_listener`` for anyio's trio backend, listening on the current stack
    (``local_host`` ``None``: every address of it; a loopback host: the kernel's loopback, as
    for every stack socket).  Returns an ``anyio.abc.SocketListener``: use ``serve()`` or
    ``accept()`` as with anyio's own.  IPv4 only, as the stack."""
    from anyio import ResourceGuard
    from anyio._backends._trio import TCPSocketListener, _TrioSocketMixin

    if family not in (_stdlib_socket.AF_UNSPEC, _stdlib_socket.AF_INET):
        raise OSError(97, "the stack serves AF_INET only")

    class _StackTCPListener(TCPSocketListener):
        """anyio's trio listener, made around a trio socket instead of a stdlib one."""

        def __init__(self, trio_socket: trio.socket.SocketType) -> None:
            _TrioSocketMixin.__init__(self, trio_socket)
            self._accept_guard = ResourceGuard("accepting connections from")

    sock = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_STREAM)
    try:
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
        await sock.bind((local_host or "", local_port))
        sock.listen(min(backlog, 65536))
    except BaseException:
        sock.close()
        raise
    return _StackTCPListener(sock)
