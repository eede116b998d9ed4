"""What the socket layer needs from a stack, and no more.

The socket layer sits under the ``Stack`` front end that ``open_stack`` returns, so it cannot
import it (layers point down only).  It names instead the three things its sockets touch: the
sans-IO core they call, the address they report, and ``kick()``, the poll loop's doorbell.  Any
object with them serves (``trio_yastack.Stack`` does; a test may pass a smaller one).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Protocol

from trio_yastack.stack import StackCore

__all__ = ["SocketStack"]


class SocketStack(Protocol):
    """A stack running in the current trio run, as the socket layer sees it."""

    @property
    def core(self) -> StackCore:
        """The sans-IO stack the sockets call (``core.tcp``, ``core.udp``, ``core.icmp``)."""
        ...

    @property
    def address(self) -> IPv4Address:
        """The interface address: what ``getsockname()`` reports for a connected socket."""
        ...

    def kick(self) -> None:
        """Called after every call into ``core`` that may have queued output, made an object
        ready or set a timer: the poll loop takes it from there (see ``PollLoop.kick``)."""
        ...
