"""trio's face of the stack: tasks park on stack objects and the poll loop wakes them.

:class:`StackSocket` is a ``trio.socket.SocketType`` for AF_INET stream and datagram sockets;
``open_stack`` installs :class:`StackSocketFactory` and :class:`StackHostnameResolver`, so
unmodified trio code runs over the stack.  The smaller endpoints (:class:`UdpEndpoint`,
:class:`PingSocket`, :class:`TcpStreamEndpoint`) are the same objects without trio's socket
vocabulary.
"""

from ._endpoints import EchoReply as EchoReply
from ._endpoints import PingSocket as PingSocket
from ._endpoints import UdpEndpoint as UdpEndpoint
from ._socket import StackHostnameResolver as StackHostnameResolver
from ._socket import StackSocket as StackSocket
from ._socket import StackSocketFactory as StackSocketFactory
from ._socket import current_stack as current_stack
from ._socket import use_stack as use_stack
from ._tcp_endpoints import TcpListenerEndpoint as TcpListenerEndpoint
from ._tcp_endpoints import TcpStreamEndpoint as TcpStreamEndpoint
from ._waiter import Waiter as Waiter
