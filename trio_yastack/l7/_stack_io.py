"""Reads and writes on a stack socket (socket_api's) under a trio stream, as :mod:`._kernel_io` for
a kernel socket: the proxy's lean path runs over the bypass stack as it runs over kernel sockets.

Over the stack, a request of the proxy went through ``trio.SocketStream``'s ``send_all`` and
``receive_some`` (a conflict detector, an async context manager, a method wrapper, each call),
the general path's cancel scopes (the pooled upstream connection's request, the idle wait, the
response's write) and the stack socket's own ``recv``/``send`` under them: py-spy put 22 % of the
proxy's samples under the stream methods and 14 % in cancel scopes (155 us per request).  Here
the proxy calls the stack socket's non-blocking ``recv_nowait``/``send_nowait`` itself (through
:class:`StackRaw`, which has the ``recv``/``send`` of a non-blocking ``socket.socket``, so
:func:`._kernel_io.receive_now` and :func:`._kernel_io.send_now` serve both) and waits on the
socket's own readiness: the stack connection's :class:`~trio_yastack.socket_api.Waiter`, which
the poll loop wakes once per burst that changed the connection (:func:`wait_readable`).

A wait's deadline is kept as :mod:`._kernel_io` keeps it, by a timer task of its own (one per
``trio.run``, started with the first deadline), not a cancel scope per wait: when a deadline
passes, the timer marks the socket expired and wakes its waiter (``Waiter.wake`` reschedules
only the tasks parked at that moment, so a task that the poll loop woke first is never woken
twice: it finds the mark and times out, its deadline having passed all the same).  The caller's
own cancel scopes still cancel the wait (the task leaves the waiter, as from the socket's own
``recv``).  A wake-up for another change of the connection (an ACK that made room to send)
finds nothing to read and parks again, as the socket's ``recv`` does.

Errors stay what the proxy handles on kernel sockets: ``OSError`` from the socket's reads and
writes (ECONNRESET & co, EBADF once closed), ``ClosedResourceError`` for a wait whose socket
another task closed (the socket's ``close`` wakes its waiter, so :func:`notify_closing` has
nothing to do).  The general paths (a partial send, the slow path's reads) call the socket's
own ``send``/``recv``, which wait as they do for the socket's other users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..socket_api import StackSocket, Waiter
from . import _kernel_io
from . import _stack_io as _THIS  # this module, as the RawIO it is (bound once, not per call)
from ._kernel_io import RawIO, RawSocket

if TYPE_CHECKING:
    from ..stack.tcp import TcpConnection

__all__ = [
    "StackRaw",
    "expire",
    "notify_closing",
    "receive_later",
    "receive_now",
    "receive_some",
    "send_all",
    "stack_socket",
    "stream_io",
    "wait_readable",
]

_INF = float("inf")


class StackRaw:
    """A connected stack socket as :mod:`._kernel_io` sees a non-blocking kernel socket: ``recv``
    and ``send`` (the socket's ``recv_nowait``/``send_nowait``, bound once: ``BlockingIOError``
    when they would wait, so ``receive_now``/``send_now`` take this object as they take a
    ``socket.socket``), ``fileno()``; and what the waits need: the socket, its TCP connection, the
    socket's waiter (the connection's ``waiter``, which the poll loop wakes; the socket keeps it
    to the end, and its ``close`` wakes it), the mark of a wait ended by its deadline or by
    :func:`expire`, and the run's deadline timer once a wait had a deadline (kept here: a
    ``RunVar`` lookup per wait costs more than the slot)."""

    __slots__ = ("conn", "expired", "recv", "send", "sock", "timer", "waiter")

    def __init__(self, sock: StackSocket, conn: TcpConnection, waiter: Waiter) -> None:
        self.sock = sock
        self.conn = conn
        self.waiter = waiter
        self.recv: Callable[[int], bytes] = sock.recv_nowait
        self.send: Callable[[bytes], int] = sock.send_nowait
        self.expired = False
        self.timer: _Timer | None = None

    def fileno(self) -> int:
        return self.sock.fileno()


def stack_socket(stream: trio.abc.Stream) -> StackRaw | None:
    """:class:`StackRaw` for the stack socket under ``stream`` when it is a ``trio.SocketStream``
    over a connected TCP socket of the stack, else None (a kernel socket: :func:`._kernel_io.kernel_socket`;
    a TLS stream, an HTTP/2 stream bridge, a stack socket that went to the kernel: their stream's
    own methods)."""
    if type(stream) is not trio.SocketStream:
        return None
    sock = stream.socket
    if not isinstance(sock, StackSocket):
        return None
    conn = sock.connection  # None for a socket handed to the kernel (_KernelSocket)
    if conn is None or not isinstance(conn.waiter, Waiter):  # (closed already: no waiter)
        return None
    return StackRaw(sock, conn, conn.waiter)


def stream_io(stream: trio.abc.Stream) -> tuple[RawSocket | None, RawIO]:
    """The socket under ``stream`` to read and write straight (None: the stream's own methods),
    and the module whose waits and general reads and writes fit it: :mod:`._kernel_io` for a
    kernel socket, this one for a stack socket."""
    raw = _kernel_io.kernel_socket(stream)
    if raw is not None:
        return raw, _kernel_io
    return stack_socket(stream), _THIS


@trio.lowlevel.enable_ki_protection  # between the park and the wait, a KeyboardInterrupt would strand it
async def wait_readable(raw: StackRaw, deadline: float = _INF) -> bool:
    """Until ``raw`` has something to read (data, the end of the stream, an error): at once,
    without a scheduler pass, when it has already (as :func:`._kernel_io.wait_readable` on a ready
    mark; a cancelled caller is still stopped), else parked on the connection's waiter.  False
    when ``deadline`` (trio's clock) passed first, or :func:`expire` ended the wait."""
    conn = raw.conn
    if raw.expired:  # (expire() before the wait)
        raw.expired = False
        await trio.lowlevel.checkpoint()
        return False
    if conn.readable:
        await trio.lowlevel.checkpoint_if_cancelled()
        return True
    task = trio.lowlevel.current_task()
    timer = None
    if deadline != _INF:
        timer = raw.timer
        if timer is None:
            timer = raw.timer = _run_timer()
        timer.deadlines[raw] = deadline  # (one already passed: the timer, aimed at it, wakes at once)
        if deadline < timer.target:
            timer.aim(deadline)
    park, sock = raw.waiter.park, raw.sock
    try:
        while True:
            if sock.fileno() < 0:
                raise trio.ClosedResourceError("another task closed this socket")
            await trio.lowlevel.wait_task_rescheduled(park(task))  # Waiter.wait, in line
            if raw.expired:
                raw.expired = False
                return False
            if sock.fileno() < 0:
                raise trio.ClosedResourceError("another task closed this socket")
            if conn.readable:
                return True
            # woken for another change of the connection (room to send): park again
    except BaseException:
        # cancelled (or closed) after the timer marked the wait: the mark goes with this wait
        raw.expired = False
        raise
    finally:
        if timer is not None:
            timer.deadlines.pop(raw, None)


def receive_now(raw: StackRaw, size: int) -> bytes | None:
    """:func:`._kernel_io.receive_now` on ``raw``: what it holds already (b"" at the end of the
    stream), or None when a read would have to wait, told by the connection's state before the
    read (over the stack no read is needed to know: a ``BlockingIOError`` raised and caught costs
    ~1 us, and the keep-alive client's next request is mostly not there yet when asked)."""
    if raw.conn.readable:
        return raw.recv(size)  # (the connection's error, if that made it readable, raised here)
    return None


async def receive_some(raw: StackRaw, size: int) -> bytes:
    """``SocketStream.receive_some(size)`` on ``raw``'s socket without the stream's wrappers:
    the socket's own ``recv`` (one scheduler pass, or its wait); b"" at EOF."""
    return await raw.sock.recv(size)


async def receive_later(raw: StackRaw, size: int) -> bytes:
    """:func:`receive_some` (over the stack a read that finds nothing costs no system call, so
    there is no wait to put first, as :func:`._kernel_io.receive_later` does)."""
    return await raw.sock.recv(size)


async def send_all(raw: StackRaw, data: bytes) -> None:
    """``SocketStream.send_all(data)`` on ``raw``'s socket: returns once the send buffer has taken
    all of it, the socket's ``send`` waiting for room as needed."""
    send = raw.sock.send
    if not data:
        await trio.lowlevel.checkpoint()
        return
    with memoryview(data) as view:
        sent = await send(view)
        while sent < len(view):
            sent += await send(view[sent:])


def expire(raw: StackRaw) -> None:
    """End ``raw``'s wait in :func:`wait_readable` now (False), or the next one if no task waits on
    it yet (:func:`._kernel_io.expire`'s meaning: a drain closes the idle connections at once)."""
    raw.expired = True
    raw.waiter.wake()  # a task parked for another reason (a send) re-checks and parks again


def notify_closing(raw: StackRaw) -> None:
    """Nothing to do: the socket's ``close`` wakes its waiter, and :func:`wait_readable` then raises
    ``ClosedResourceError`` (:func:`._kernel_io.notify_closing`'s counterpart, for the callers that
    treat both kinds of socket alike)."""


class _Timer:
    """The waits' deadlines (:func:`wait_readable`), by socket: a system task sleeps until the
    earliest (``target``), then marks every socket whose deadline passed and wakes its waiter.
    Bounded by the waiting tasks: an entry per wait with a deadline, removed when it ends."""

    def __init__(self) -> None:
        self.deadlines: dict[StackRaw, float] = {}
        self.target = _INF  # when the timer wakes next (at or before the earliest deadline)
        self.scope: trio.CancelScope | None = None

    async def run(self) -> None:
        """Until the run ends: sleep until ``target``, wake the waits whose deadline passed, and aim
        at the earliest deadline left.  A deadline earlier than ``target`` moves the sleep
        (:meth:`aim`); one that is met first leaves a wake-up for nothing."""
        deadlines = self.deadlines
        while True:
            with trio.CancelScope(deadline=self.target) as scope:
                self.scope = scope
                await trio.sleep_forever()
            self.scope = None
            now = trio.current_time()
            target = _INF
            for raw, deadline in list(deadlines.items()):
                if deadline <= now:
                    del deadlines[raw]
                    expire(raw)
                elif deadline < target:
                    target = deadline
            self.target = target

    def aim(self, deadline: float) -> None:
        """Wake the timer by ``deadline`` (earlier than ``target``)."""
        self.target = deadline
        if self.scope is not None:
            self.scope.deadline = deadline


def _run_timer() -> _Timer:
    """This run's :class:`_Timer`, started at its first use."""
    timer = _TIMER.get()
    if timer is None:
        timer = _Timer()
        _TIMER.set(timer)
        trio.lowlevel.spawn_system_task(timer.run, name="trio_yastack.l7._stack_io timer")
    return timer


_TIMER: trio.lowlevel.RunVar[_Timer | None] = trio.lowlevel.RunVar("yastack_stack_io", default=None)
