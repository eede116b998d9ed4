"""Small async endpoints over the stack for UDP and ICMP echo (ping), without trio's socket
vocabulary (``Stack.udp_socket()``, ``Stack.ping_socket()``).

They park a task until the poll loop reports a change, raise ``OSError`` with the errno a
kernel would give, and are checkpoints as trio's own socket calls are.  UDP through trio's
interface is :class:`~trio_yastack.socket_api.StackSocket`; ICMP echo has no ``StackSocket``
of its own, so :class:`PingSocket` is its only face.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from ipaddress import IPv4Address

import trio

from trio_yastack.stack import EchoEndpoint, UdpPcb

from ._stack import SocketStack
from ._waiter import Waiter

__all__ = ["EchoReply", "PingSocket", "UdpEndpoint"]

Address = tuple[str, int]


def _ip_int(host: str | IPv4Address | int) -> int:
    try:
        return int(IPv4Address(host))
    except ValueError:
        raise OSError(errno.EINVAL, f"not an IPv4 address: {host!r}") from None


class UdpEndpoint:
    """A UDP socket on the stack.  Use ``async with`` or call ``close()``."""

    def __init__(self, stack: SocketStack, pcb: UdpPcb) -> None:
        self._stack = stack
        self._pcb = pcb
        self._waiter = pcb.waiter = Waiter()

    def getsockname(self) -> Address:
        pcb = self._pcb
        return str(IPv4Address(pcb.local_ip)), pcb.local_port

    def getpeername(self) -> Address:
        if not self._pcb.remote_port:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return str(IPv4Address(self._pcb.remote_ip)), self._pcb.remote_port

    def set_broadcast(self, enabled: bool) -> None:
        self._pcb.broadcast = enabled

    async def connect(self, address: Address) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._stack.core.udp.connect(self._pcb, _ip_int(address[0]), address[1])
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def sendto(self, data: bytes, address: Address) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        stack = self._stack
        if not address[1]:
            raise OSError(errno.EINVAL, "port 0")
        sent = stack.core.udp.udp_output(
            self._pcb, data, _ip_int(address[0]), address[1], trio.current_time()
        )
        stack.kick()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return sent

    async def send(self, data: bytes) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        sent = self._stack.core.udp.udp_output(self._pcb, data, 0, 0, trio.current_time())
        self._stack.kick()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return sent

    async def recvfrom(self) -> tuple[bytes, Address]:
        """The next datagram and its sender; raises the pending ICMP error of a connected socket."""
        await trio.lowlevel.checkpoint_if_cancelled()
        pcb = self._pcb
        while True:
            if pcb.closed:
                raise OSError(errno.EBADF, "Bad file descriptor")
            item = pcb.take()
            if item is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                data, (src, sport) = item
                return data, (str(IPv4Address(src)), sport)
            if pcb.so_error:
                error = pcb.take_error()
                raise OSError(error, errno.errorcode.get(error, str(error)))
            await self._waiter.wait()

    async def recv(self) -> bytes:
        return (await self.recvfrom())[0]

    def close(self) -> None:
        if not self._pcb.closed:
            self._stack.core.udp.close(self._pcb)
            self._waiter.wake()

    async def __aenter__(self) -> UdpEndpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class EchoReply:
    source: str
    seq: int
    data: bytes
    rtt: float  # seconds from the request this endpoint sent with the same seq


class PingSocket:
    """Sends ICMP echo requests with one identifier and receives the replies (like a Linux
    ``SOCK_DGRAM``/``IPPROTO_ICMP`` socket)."""

    def __init__(self, stack: SocketStack, endpoint: EchoEndpoint) -> None:
        self._stack = stack
        self._endpoint = endpoint
        self._waiter = endpoint.waiter = Waiter()
        self._sent_at: dict[int, float] = {}

    @property
    def ident(self) -> int:
        return self._endpoint.ident

    async def send_request(self, dst: str | IPv4Address, seq: int, data: bytes = b"") -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        self._stack.core.icmp.send_echo_request(self._endpoint, _ip_int(dst), seq, data, now)
        if len(self._sent_at) >= 4096:
            self._sent_at.pop(next(iter(self._sent_at)))
        self._sent_at[seq & 0xFFFF] = now
        self._stack.kick()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_reply(self) -> EchoReply:
        await trio.lowlevel.checkpoint_if_cancelled()
        replies = self._endpoint.replies
        while not replies:
            if self._endpoint.closed:
                raise OSError(errno.EBADF, "Bad file descriptor")
            await self._waiter.wait()
        src, seq, data, received_at = replies.popleft()
        sent_at = self._sent_at.pop(seq, math.nan)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return EchoReply(str(IPv4Address(src)), seq, data, received_at - sent_at)

    async def ping(
        self, dst: str | IPv4Address, seq: int, data: bytes = b"", *, timeout: float = 1.0
    ) -> EchoReply:
        """One echo request and its reply; raises ``TimeoutError`` if none comes in ``timeout``.

        Replies to other (older) requests that arrive meanwhile are discarded.
        """
        await self.send_request(dst, seq, data)
        with trio.move_on_after(timeout):
            while True:
                reply = await self.receive_reply()
                if reply.seq == seq & 0xFFFF and reply.source == str(IPv4Address(dst)):
                    return reply
        raise TimeoutError(f"no echo reply from {dst} for seq {seq} within {timeout} s")

    def close(self) -> None:
        if not self._endpoint.closed:
            self._stack.core.icmp.echo_close(self._endpoint)
            self._waiter.wake()

    async def __aenter__(self) -> PingSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
