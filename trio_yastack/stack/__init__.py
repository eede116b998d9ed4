"""The user-space TCP/IP stack, sans-IO: fed frames and ``now``, it leaves frames, events and
its next deadline.  It never imports trio, ``time`` or ``socket`` (a test checks).

The journey of a packet, by FreeBSD's names: ``ether_input`` -> ``arp_input`` | ``ip_input``
-> ``icmp_input`` | ``udp_input`` | ``tcp_input`` (-> ``segment_arrives`` of the connection) on
the way in; ``tcp_output`` | ``udp_output`` -> ``ip_output`` -> ``arpresolve`` -> ``ether_output``
on the way out.  TCP is the subpackage :mod:`.tcp`; every layer counts what it drops by a reason
registered in ``_drops.py``.
"""

from ._config import ArpConfig as ArpConfig
from ._config import IcmpConfig as IcmpConfig
from ._config import InterfaceConfig as InterfaceConfig
from ._config import Ip6Config as Ip6Config
from ._config import IpConfig as IpConfig
from ._config import StackConfig as StackConfig
from ._config import TcpConfig as TcpConfig
from ._config import UdpConfig as UdpConfig
from ._core import StackCore as StackCore
from ._drops import ArpDrop as ArpDrop
from ._drops import EtherDrop as EtherDrop
from ._drops import IcmpDrop as IcmpDrop
from ._drops import IpDrop as IpDrop
from ._drops import TcpDrop as TcpDrop
from ._drops import UdpDrop as UdpDrop
from ._icmp import EchoEndpoint as EchoEndpoint
from ._offload import ChecksumVerified as ChecksumVerified
from ._offload import OffloadPacket as OffloadPacket
from ._stats import LayerStatistics as LayerStatistics
from ._stats import StackStatistics as StackStatistics
from ._timers import TimerQueue as TimerQueue
from ._udp import UdpPcb as UdpPcb
from .tcp import IP6_KEY as IP6_KEY
from .tcp import TcpConnection as TcpConnection
from .tcp import TcpConnection6 as TcpConnection6
from .tcp import TcpLayer as TcpLayer
from .tcp import TcpListener as TcpListener
from .tcp import TcpState as TcpState
from .tcp import key6 as key6
