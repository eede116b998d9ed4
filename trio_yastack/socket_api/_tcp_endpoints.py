"""Async TCP endpoints over the stack: a stream (``send_all``/``receive_some``, trio's
``HalfCloseableStream`` vocabulary) and a listener.  The trio ``SocketType`` subclass built on
the same connection objects comes with the socket-factory work."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

import trio

from trio_yastack.stack import TcpConnection, TcpListener

from ._waiter import Waiter

if TYPE_CHECKING:
    from trio_yastack._open_stack import Stack

__all__ = ["TcpListenerEndpoint", "TcpStreamEndpoint"]

_DEFAULT_RECEIVE = 65536


def _raise_for(conn: TcpConnection) -> None:
    if conn.error:
        raise trio.BrokenResourceError(
            f"connection failed: {errno.errorcode.get(conn.error, conn.error)}"
        ) from (OSError(conn.error, errno.errorcode.get(conn.error, "")))


class TcpStreamEndpoint:
    """One TCP connection of the stack, as a trio-style stream."""

    def __init__(self, stack: Stack, conn: TcpConnection) -> None:
        self._stack = stack
        self.conn = conn
        self._waiter = Waiter()
        conn.waiter = self._waiter
        self._closed = False

    def getsockname(self) -> tuple[str, int]:
        return str(self._stack.address), self.conn.local_port

    def getpeername(self) -> tuple[str, int]:
        return str(IPv4Address(self.conn.remote_ip)), self.conn.remote_port

    async def wait_established(self) -> None:
        """Return once the handshake completed; raise ``OSError`` with the kernel's errno if it failed."""
        conn = self.conn
        while not conn.established:
            if conn.error or conn.state == 0:
                error = conn.error or errno.ECONNREFUSED
                raise OSError(error, errno.errorcode.get(error, str(error)))
            await self._waiter.wait()
        await trio.lowlevel.checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self.conn.shut_wr:
            raise trio.ClosedResourceError("send_eof() was called: no more data can be sent")
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        stack, conn = self._stack, self.conn
        while view:
            try:
                taken = conn.send(view, trio.current_time())
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            stack.kick()
            view = view[taken:]
            if view:
                await self._waiter.wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        while not self.conn.writable:
            await self._waiter.wait()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self.conn
        while True:
            try:
                data = conn.receive(max_bytes or _DEFAULT_RECEIVE, trio.current_time())
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if data is not None:
                self._stack.kick()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            await self._waiter.wait()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.conn.shutdown(trio.current_time())
        self._stack.kick()

    def abort(self) -> None:
        self.conn.abort(trio.current_time())
        self._stack.kick()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close(trio.current_time())
            self._stack.kick()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> TcpStreamEndpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class TcpListenerEndpoint:
    """A listening TCP port of the stack."""

    def __init__(self, stack: Stack, listener: TcpListener) -> None:
        self._stack = stack
        self.listener = listener
        self._waiter = Waiter()
        listener.waiter = self._waiter

    async def accept(self) -> TcpStreamEndpoint:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self.listener.closed:
                raise trio.ClosedResourceError("listener closed")
            conn = self.listener.accept()
            if conn is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return TcpStreamEndpoint(self._stack, conn)
            await self._waiter.wait()

    async def aclose(self) -> None:
        self.listener.close(trio.current_time())
        self._stack.kick()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> TcpListenerEndpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
