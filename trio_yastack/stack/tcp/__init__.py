"""TCP, sans-IO, split as FreeBSD splits ``sys/netinet/tcp_*.c``.

- ``_layer``: ``TcpLayer.tcp_input`` (validate, demultiplex, LISTEN, SYN cookies, RST for closed
  ports) and the layer's other duties: active opens, ephemeral ports, ISNs (RFC 6528), ICMP errors
  (``tcp_ctlinput``); ``TcpListener``, the SYN and accept queues; TIME_WAIT as compact
  ``TcpTimeWait`` records with their bound and expiry (``tcp_timewait.c``'s ``tcptw``).
- ``_conn``: ``TcpConnection``, the control block (``tcpcb``) and the user calls; the rest of its
  methods are written in ``_input`` (``tcp_input.c``: header prediction, then RFC 9293 3.10.7's
  checks one function each), ``_output`` (``tcp_output.c``) and ``_timers`` (``tcp_timer.c``).
- ``_states``: the eleven states; ``_buffers``: send/receive buffers, the out-of-order queue and
  the SACK scoreboard; ``_cc``: congestion control (NewReno, CUBIC); ``_syncookie``: SYN cookies.
- ``_tcp6``: TCP over IPv6 with the same code: ``TcpConnection6`` (IPv6 pseudo-header, MSS from
  MTU - 60), ``IP6_KEY``, the mark of an IPv6 connection in the layer's tables, and ``key6``, its
  key (the peer's address, the mark, our address above).
"""

from ._conn import TcpConnection as TcpConnection
from ._layer import FLOOD_HOLD as FLOOD_HOLD
from ._layer import TcpLayer as TcpLayer
from ._layer import TcpListener as TcpListener
from ._layer import TcpTimeWait as TcpTimeWait
from ._states import TcpState as TcpState
from ._tcp6 import IP6_KEY as IP6_KEY
from ._tcp6 import TcpConnection6 as TcpConnection6
from ._tcp6 import key6 as key6
