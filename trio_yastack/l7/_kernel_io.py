"""Reads and writes on a kernel socket straight through the stdlib socket under a trio stream.

``trio.SocketStream.send_all`` and ``receive_some`` wrap each system call in a conflict detector, an
async context manager (``_try_sync``) and a method wrapper: about a fifth of the proxy's CPU time
per request went to those four calls, of which the system calls themselves were most but not all.
The proxy makes four per request (the client's request in, the upstream's request out, its
response in, the client's response out), so it calls the stdlib socket itself, with the same
scheduling as trio's own socket methods (a checkpoint before, one scheduler pass after a call that
did not have to wait, ``wait_readable``/``wait_writable`` when it would block), as the lean ASGI
server does (``l7/asgi/_http11.py``).

Only for a ``trio.SocketStream`` over a kernel socket: a stack socket, a TLS stream or an HTTP/2
stream bridge has no stdlib socket under it (:func:`kernel_socket` answers None) and keeps its
stream's own methods.  Errors stay what the proxy already handles: ``OSError`` from the system call
(trio would have turned it into ``BrokenResourceError``), ``ClosedResourceError`` when another task
closes the socket during a wait (trio's ``notify_closing``, as for its own waits).
"""

from __future__ import annotations

import socket

import trio

__all__ = ["kernel_socket", "receive_later", "receive_now", "receive_some", "send_all", "send_now"]


def kernel_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under ``stream`` when it is a ``trio.SocketStream`` over a kernel socket
    (trio keeps it in ``_sock``), else None."""
    if type(stream) is not trio.SocketStream:
        return None
    sock = stream.socket
    if type(sock).__module__ != "trio._socket":
        return None  # a custom socket factory's socket (the stack's): no stdlib socket under it
    raw = getattr(sock, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


async def receive_some(raw: socket.socket, size: int) -> bytes:
    """``SocketStream.receive_some(size)`` on ``raw``: b"" at EOF."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        data = raw.recv(size)
    except BlockingIOError:
        pass
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()  # as trio's recv: one scheduler pass
        return data
    while True:
        await trio.lowlevel.wait_readable(raw)  # the wait is the scheduler pass
        try:
            return raw.recv(size)
        except BlockingIOError:
            continue


async def send_all(raw: socket.socket, data: bytes) -> None:
    """``SocketStream.send_all(data)`` on ``raw``: returns once the kernel has taken all of it."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        await trio.lowlevel.cancel_shielded_checkpoint()  # as trio's send: one scheduler pass
        return
    with memoryview(data) as view:  # the socket buffer was full: the rest as it drains
        while sent < len(data):
            await trio.lowlevel.wait_writable(raw)
            try:
                sent += raw.send(view[sent:])
            except BlockingIOError:
                continue


async def receive_later(raw: socket.socket, size: int) -> bytes:
    """:func:`receive_some` when a read has just been found empty (:func:`receive_now`) or cannot
    have an answer yet (a request just sent): the wait first, so no system call is spent on a read
    that would only say "not yet"."""
    while True:
        await trio.lowlevel.wait_readable(raw)  # a checkpoint, as receive_some's
        try:
            return raw.recv(size)
        except BlockingIOError:
            continue


def receive_now(raw: socket.socket, size: int) -> bytes | None:
    """What ``raw`` holds already (b"" at EOF), or None when a read would have to wait: the
    caller waits (and sets up its timers, a trio cancel scope) only then.  No checkpoint: the
    caller's next wait is its scheduling point."""
    try:
        return raw.recv(size)
    except BlockingIOError:
        return None


def send_now(raw: socket.socket, data: bytes) -> int:
    """How much of ``data`` the kernel takes without waiting (0 when the socket buffer is full):
    the caller waits for the rest (with :func:`send_all`, under its timers) only when some is
    left.  No checkpoint, as :func:`receive_now`."""
    try:
        return raw.send(data)
    except BlockingIOError:
        return 0
