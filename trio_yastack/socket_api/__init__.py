"""trio's face of the stack: tasks park on stack objects and the poll loop wakes them.

For now: async UDP endpoints and ping sockets (:class:`UdpEndpoint`, :class:`PingSocket`),
opened from a :class:`trio_yastack.Stack`.  The ``trio.socket.SocketType`` subclass and the
socket factory that let unmodified trio code run over the stack build on these.
"""

from ._endpoints import EchoReply as EchoReply
from ._endpoints import PingSocket as PingSocket
from ._endpoints import UdpEndpoint as UdpEndpoint
from ._tcp_endpoints import TcpListenerEndpoint as TcpListenerEndpoint
from ._tcp_endpoints import TcpStreamEndpoint as TcpStreamEndpoint
from ._waiter import Waiter as Waiter
