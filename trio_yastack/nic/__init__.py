"""NIC ports: DPDK-shaped burst I/O (``rx_burst``/``tx_burst``), a virtual wire, pcap.

A port spec string (``"tap:yas0"``, ``"pcap:FILE"``) or a :class:`Port` object is what
:func:`trio_yastack.open_stack` takes.
"""

from ._memory import MemoryPort as MemoryPort
from ._memory import WireStatistics as WireStatistics
from ._memory import memory_wire as memory_wire
from ._pcap import PcapError as PcapError
from ._pcap import PcapRecord as PcapRecord
from ._pcap import PcapReplayPort as PcapReplayPort
from ._pcap import PcapTee as PcapTee
from ._pcap import PcapWriter as PcapWriter
from ._pcap import read_pcap as read_pcap
from ._port import Port as Port
from ._port import PortCapabilities as PortCapabilities
from ._port import PortStatistics as PortStatistics
from ._port import PortWrapper as PortWrapper
from ._trace import TracePort as TracePort
