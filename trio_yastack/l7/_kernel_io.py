"""Reads and writes on a kernel socket straight through the stdlib socket under a trio stream.

``trio.SocketStream.send_all`` and ``receive_some`` wrap each system call in a conflict detector, an
async context manager (``_try_sync``) and a method wrapper: about a fifth of the proxy's CPU time
per request went to those four calls, of which the system calls themselves were most but not all.
The proxy makes four per request (the client's request in, the upstream's request out, its
response in, the client's response out), so it calls the stdlib socket itself, with the same
scheduling as trio's own socket methods (a checkpoint before, one scheduler pass after a call that
did not have to wait, ``wait_readable``/``wait_writable`` when it would block), as the lean ASGI
server does (``l7/asgi/_http11.py``).

Only for a ``trio.SocketStream`` over a kernel socket: a stack socket has its counterpart,
:mod:`._stack_io` (the same functions, on the stack socket's non-blocking calls and its waiter;
:func:`receive_now` and :func:`send_now` serve both, through :class:`RawSocket`), and a TLS stream
or an HTTP/2 stream bridge keeps its stream's own methods (:func:`kernel_socket` answers None for
all three).  Errors stay what the proxy already handles: ``OSError`` from the system call
(trio would have turned it into ``BrokenResourceError``), ``ClosedResourceError`` when another task
closes the socket during a wait (:func:`notify_closing`, as trio's own for its waits).

The waits for a read do not go through ``trio.lowlevel.wait_readable``: trio's epoll registers a
file descriptor ``EPOLLONESHOT`` and so re-arms it with an ``epoll_ctl`` for every wait, through
five coroutine levels and an ``EpollWaiters`` record per wait (``strace -c`` of the proxy under wrk:
1.1 ``epoll_ctl`` per request, where nginx, edge-triggered, makes none).  A reader of its own
(:class:`_Reactor`, one per ``trio.run``, a system task) keeps the proxy's kernel sockets in an
epoll of its own, each registered once, edge-triggered (``EPOLLET``), as nginx does: a wait is a
dict entry and ``wait_task_rescheduled``; the reader task waits (through trio) on its epoll's file
descriptor and wakes every reader that became ready in one pass.  An edge is reported once, so the
reader keeps a "ready" mark for a socket whose edge came while nobody waited on it: the next wait
on it then reads first (a read that finds nothing, on a stale mark, costs one system call), with
no scheduler pass for that read (as :func:`receive_now`: a read that finds data after such a mark
returns without one; a cancelled caller is stopped there all the same).
"""

from __future__ import annotations

import contextlib
import select
import socket
from typing import Any, Protocol

import trio

__all__ = [
    "RawIO",
    "RawSocket",
    "expire",
    "kernel_socket",
    "notify_closing",
    "receive_later",
    "receive_now",
    "receive_some",
    "receive_until",
    "send_all",
    "send_now",
    "wait_readable",
]


class RawSocket(Protocol):
    """What :func:`receive_now` and :func:`send_now` call: a non-blocking ``socket.socket``'s
    ``recv`` and ``send`` (``BlockingIOError`` when they would wait), and ``fileno``; a kernel
    socket, or a stack socket seen this way (:class:`._stack_io.StackRaw`)."""

    def recv(self, size: int, /) -> bytes: ...
    def send(self, data: bytes, /) -> int: ...
    def fileno(self) -> int: ...


class RawIO(Protocol):
    """The waits and the general reads and writes for one kind of :class:`RawSocket`: this module
    for kernel sockets, :mod:`._stack_io` for the stack's (a connection keeps the one for its
    socket, so the callers treat both alike)."""

    async def wait_readable(self, raw: Any, deadline: float = ..., /) -> bool: ...
    def receive_now(self, raw: Any, size: int, /) -> bytes | None: ...
    async def receive_some(self, raw: Any, size: int, /) -> bytes: ...
    async def receive_later(self, raw: Any, size: int, /) -> bytes: ...
    async def send_all(self, raw: Any, data: bytes, /) -> None: ...
    def expire(self, raw: Any, /) -> None: ...
    def notify_closing(self, raw: Any, /) -> None: ...


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
        await wait_readable(raw)  # the wait is the scheduler pass
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
        await wait_readable(raw)  # a checkpoint, as receive_some's (but for a read a mark allows)
        try:
            return raw.recv(size)
        except BlockingIOError:
            continue


async def receive_until(raw: socket.socket, size: int, deadline: float) -> bytes | None:
    """:func:`receive_later` with a deadline of its own: None when ``deadline`` (trio's clock)
    passes before anything can be read.  The deadline is kept by :class:`_Reactor`'s timer, not
    by a trio cancel scope (whose setting up and tearing down cost about as much as the wait's
    own bookkeeping, for a timer that almost never fires); the caller's cancel scopes still
    cancel the wait."""
    while True:
        if not await wait_readable(raw, deadline):
            return None
        try:
            return raw.recv(size)
        except BlockingIOError:
            continue


def receive_now(raw: RawSocket, size: int) -> bytes | None:
    """What ``raw`` holds already (b"" at EOF), or None when a read would have to wait: the
    caller waits (and sets up its timers, a trio cancel scope) only then.  No checkpoint: the
    caller's next wait is its scheduling point."""
    try:
        return raw.recv(size)
    except BlockingIOError:
        return None


def send_now(raw: RawSocket, data: bytes) -> int:
    """How much of ``data`` the kernel takes without waiting (0 when the socket buffer is full):
    the caller waits for the rest (with :func:`send_all`, under its timers) only when some is
    left.  No checkpoint, as :func:`receive_now`."""
    try:
        return raw.send(data)
    except BlockingIOError:
        return 0


def notify_closing(raw: socket.socket) -> None:
    """``raw`` is about to be closed: a task waiting here to read it gets ``ClosedResourceError``
    (as trio's ``notify_closing`` does for trio's own waits, which the stream's ``aclose`` calls;
    the kernel drops a closed descriptor from :class:`_Reactor`'s epoll without an event, so a
    closer that may race a reader in another task calls this first)."""
    reactor = _REACTOR.get()
    if reactor is None:
        return
    fd = raw.fileno()
    if fd < 0 or reactor.registered.get(fd) is not raw:
        return
    del reactor.registered[fd]
    reactor.ready.discard(fd)
    reactor.expired.discard(fd)
    with contextlib.suppress(OSError):
        reactor.epoll.unregister(fd)
    task = reactor.waiters.pop(fd, None)
    if task is not None:
        reactor.deadlines.pop(fd, None)
        trio.lowlevel.reschedule(task)  # it finds its socket gone from ``registered``: closed


def expire(raw: socket.socket) -> None:
    """End ``raw``'s wait in :func:`receive_until` now, as if its deadline had passed (None), or
    the next one if no task waits on it yet: a drain closes the idle connections at once this
    way, as cancelling their waits' scopes does (the mark goes with the wait it ends, or with the
    socket: a reused descriptor is registered anew without it)."""
    reactor = _REACTOR.get()
    if reactor is None:
        return
    fd = raw.fileno()
    if fd < 0 or reactor.registered.get(fd) is not raw:
        return
    reactor.expired.add(fd)
    task = reactor.waiters.pop(fd, None)
    if task is not None:
        reactor.deadlines.pop(fd, None)
        trio.lowlevel.reschedule(task)


class _Reactor:
    """The readers' epoll (module docstring): the kernel sockets registered in it, edge-triggered,
    by descriptor (the socket object is kept to tell a reused descriptor from the one registered),
    the task waiting to read each, and the descriptors whose edge came while nobody waited; and
    the waits' deadlines (:func:`receive_until`), kept by a timer task that sleeps until the
    earliest (``target``) and then wakes every waiter whose deadline passed.

    Bounded by the process's descriptors: an entry per descriptor number, replaced when the number
    is reused by a new socket; ``deadlines`` and ``expired`` hold only waiters."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.registered: dict[int, socket.socket] = {}
        self.waiters: dict[int, trio.lowlevel.Task] = {}
        self.ready: set[int] = set()
        self.deadlines: dict[int, float] = {}  # a waiter's deadline, if it has one
        self.expired: set[int] = set()  # waits ended by their deadline or expire(), not by their socket
        self.target = _INF  # when the timer wakes next (at or before the earliest deadline)
        self.timer_scope: trio.CancelScope | None = None

    async def run(self) -> None:
        """Until the run ends: wait (through trio) for the epoll to be readable, then wake every
        reader that became ready, in one pass (one epoll_wait for the batch)."""
        epoll, waiters, ready, deadlines = self.epoll, self.waiters, self.ready, self.deadlines
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _events in epoll.poll(0):
                    task = waiters.pop(fd, None)
                    if task is not None:
                        if deadlines:
                            deadlines.pop(fd, None)
                        reschedule(task)
                    else:
                        ready.add(fd)
        finally:
            epoll.close()

    async def run_timer(self) -> None:
        """Until the run ends: sleep until ``target``, then wake the waiters whose deadline passed
        and aim at the earliest deadline left.  A deadline earlier than ``target`` moves the sleep
        (:meth:`aim`); one that is met first leaves a wake-up for nothing, at most one per deadline
        set earlier than every other."""
        deadlines, waiters = self.deadlines, self.waiters
        while True:
            with trio.CancelScope(deadline=self.target) as scope:
                self.timer_scope = scope
                await trio.sleep_forever()
            self.timer_scope = None
            now = trio.current_time()
            target = _INF
            for fd, deadline in list(deadlines.items()):
                if deadline <= now:
                    del deadlines[fd]
                    self.expired.add(fd)
                    trio.lowlevel.reschedule(waiters.pop(fd))
                elif deadline < target:
                    target = deadline
            self.target = target

    def aim(self, deadline: float) -> None:
        """Wake the timer by ``deadline`` (earlier than ``target``)."""
        self.target = deadline
        if self.timer_scope is not None:
            self.timer_scope.deadline = deadline


_INF = float("inf")
_REACTOR: trio.lowlevel.RunVar[_Reactor | None] = trio.lowlevel.RunVar("yastack_kernel_io", default=None)


async def wait_readable(raw: socket.socket, deadline: float = _INF) -> bool:
    """``trio.lowlevel.wait_readable(raw)`` through :class:`_Reactor`: returns at once (without a
    scheduler pass) when an edge came since the last wait, else parks until the next one.  False
    when ``deadline`` passed first (as :func:`receive_until`'s None).  Called straight by a
    caller that reads with :func:`receive_now` after it, the wait is one coroutine level fewer
    to resume than :func:`receive_until`'s (the proxy's upstream wait)."""
    reactor = _REACTOR.get()
    if reactor is None:
        reactor = _Reactor()
        _REACTOR.set(reactor)
        trio.lowlevel.spawn_system_task(reactor.run, name="trio_yastack.l7._kernel_io reader")
        trio.lowlevel.spawn_system_task(reactor.run_timer, name="trio_yastack.l7._kernel_io timer")
    fd = raw.fileno()
    if reactor.registered.get(fd) is not raw:  # new (or a reused descriptor): register it
        try:
            reactor.epoll.register(fd, _EDGE_READ)
        except FileExistsError:
            reactor.epoll.modify(fd, _EDGE_READ)
        reactor.registered[fd] = raw
        reactor.ready.discard(fd)  # the registration reports what is there already
        reactor.expired.discard(fd)
    elif reactor.expired and fd in reactor.expired:  # (expire() before the wait)
        reactor.expired.discard(fd)
        await trio.lowlevel.checkpoint()
        return False
    elif fd in reactor.ready:
        # Mostly a stale mark (its data was read by receive_now before the reactor saw the edge):
        # the caller's read tells, and parks if it finds nothing; no scheduler pass for it, as for
        # receive_now's read (a cancelled caller is still stopped here).
        reactor.ready.discard(fd)
        await trio.lowlevel.checkpoint_if_cancelled()
        return True
    waiters = reactor.waiters
    if fd in waiters:
        raise trio.BusyResourceError("another task is already reading from this socket")
    waiters[fd] = trio.lowlevel.current_task()
    deadlines = reactor.deadlines
    if deadline != _INF:  # (one already passed: the timer, aimed at it, wakes at once)
        deadlines[fd] = deadline
        if deadline < reactor.target:
            reactor.aim(deadline)

    def abort(_: object) -> trio.lowlevel.Abort:
        waiters.pop(fd, None)
        deadlines.pop(fd, None)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
    if reactor.expired and fd in reactor.expired:
        reactor.expired.discard(fd)
        return False
    if reactor.registered.get(fd) is not raw:
        raise trio.ClosedResourceError("another task closed this socket")
    return True


_EDGE_READ = select.EPOLLIN | select.EPOLLET
