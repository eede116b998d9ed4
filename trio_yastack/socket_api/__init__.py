"""trio's face of the stack: tasks park on stack objects and the poll loop wakes them.

:class:`StackSocket` is a ``trio.socket.SocketType`` for AF_INET stream and datagram sockets,
:class:`StackSocket6` for AF_INET6 ones (dual-stack stream sockets unless IPV6_V6ONLY).
:func:`install_stack` (which ``open_stack`` calls) installs :class:`StackSocketFactory` and
:class:`StackHostnameResolver` for the trio run, so unmodified trio code runs over the stack:
every TCP byte an application sees goes through ``StackSocket``, mostly wrapped in trio's own
``SocketStream``/``SocketListener`` (``Stack.tcp_connect``/``tcp_listen`` return those too).
:class:`UdpEndpoint` and :class:`PingSocket` are smaller endpoints for UDP and ICMP echo
without trio's socket vocabulary.

Loopback (and, with ``kernel_unroutable``, unroutable) addresses make a stack socket the
kernel's at ``bind``/``connect``/``sendto``; :class:`StackHostnameResolver` resolves names from
the hosts table, then DNS over the stack (``nameservers``), then, if allowed, the system;
:func:`create_tcp_listener` is ``anyio.create_tcp_listener`` over the stack (anyio's own makes a
kernel socket).

This layer needs from a stack only what :class:`SocketStack` names (its core, address and
``kick``); it never imports the ``Stack`` front end above it.
"""

from ._anyio import create_tcp_listener as create_tcp_listener
from ._endpoints import EchoReply as EchoReply
from ._endpoints import PingSocket as PingSocket
from ._endpoints import UdpEndpoint as UdpEndpoint
from ._resolver import ResolverConfig as ResolverConfig
from ._resolver import ResolverStatistics as ResolverStatistics
from ._resolver import StackHostnameResolver as StackHostnameResolver
from ._socket import StackSocket as StackSocket
from ._socket import StackSocketFactory as StackSocketFactory
from ._socket import current_resolver as current_resolver
from ._socket import current_stack as current_stack
from ._socket import install_stack as install_stack
from ._socket import listening_socket as listening_socket
from ._socket import map_loopback_to as map_loopback_to
from ._socket import use_stack as use_stack
from ._socket6 import StackSocket6 as StackSocket6
from ._stack import SocketStack as SocketStack
from ._waiter import Waiter as Waiter
