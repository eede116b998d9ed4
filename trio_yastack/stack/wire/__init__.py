"""Wire formats: parse and emit, byte-exact, for every protocol the stack speaks.

Each module holds one protocol: its field layout under the RFC's diagram, a fast
``parse_*`` function returning a tuple (what the stack's input path uses), and a small frozen
``*Repr`` with ``parse``, ``buffer_len`` and ``emit_into``/``to_bytes`` (what tests, tools and
the output path use).  Every parser returns or raises :class:`WireError`; nothing else.
"""

from ._address import BROADCAST_MAC as BROADCAST_MAC
from ._address import MacAddress as MacAddress
from ._address import ip4 as ip4
from ._address import ip4_int as ip4_int
from ._checksum import internet_checksum as internet_checksum
from ._checksum import pseudo_header_sum as pseudo_header_sum
from ._describe import describe_frame as describe_frame
from ._errors import BadChecksum as BadChecksum
from ._errors import Malformed as Malformed
from ._errors import Truncated as Truncated
from ._errors import Unsupported as Unsupported
from ._errors import WireError as WireError
from ._errors import WireReason as WireReason
from .arp import ARP_REPLY as ARP_REPLY
from .arp import ARP_REQUEST as ARP_REQUEST
from .arp import ArpRepr as ArpRepr
from .ethernet import ETHERTYPE_ARP as ETHERTYPE_ARP
from .ethernet import ETHERTYPE_IPV4 as ETHERTYPE_IPV4
from .ethernet import ETHERTYPE_VLAN as ETHERTYPE_VLAN
from .ethernet import EthernetRepr as EthernetRepr
from .ethernet import VlanTag as VlanTag
from .icmp import IcmpRepr as IcmpRepr
from .ipv4 import IPPROTO_ICMP as IPPROTO_ICMP
from .ipv4 import IPPROTO_TCP as IPPROTO_TCP
from .ipv4 import IPPROTO_UDP as IPPROTO_UDP
from .ipv4 import Ipv4Repr as Ipv4Repr
from .tcp import TcpOptions as TcpOptions
from .tcp import TcpRepr as TcpRepr
from .udp import UdpRepr as UdpRepr
