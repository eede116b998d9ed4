"""NIC ports: DPDK-shaped burst I/O (``rx_burst``/``tx_burst``).

Re-exported here: the :class:`Port` abstraction and its wrappers (:class:`PcapTee`,
:class:`TracePort`, and :class:`FaultPort`: a seeded bad path around any port, ``,faults=...``
in a spec), the virtual wire of the tests (:func:`memory_wire`, seeded faults under
trio's clock) and pcap replay.  Public modules of their own: :mod:`trio_yastack.nic.tap` (the
Linux kernel as the peer, through a TAP device with virtio-net offloads and a queue per core),
:mod:`trio_yastack.nic.netns` (private network namespaces for anything touching a real
interface) and :mod:`trio_yastack.nic.kernel_peer` (the kernel's own TCP as the other end in
tests and benchmarks).  A port spec string (``"tap:yas0"``, ``"pcap:FILE"``) or a :class:`Port`
object is what :func:`trio_yastack.open_stack` takes.
"""

from ._faults import SOAK_FAULTS as SOAK_FAULTS
from ._faults import FaultOptions as FaultOptions
from ._faults import FaultPort as FaultPort
from ._faults import FaultStatistics as FaultStatistics
from ._faults import parse_faults as parse_faults
from ._faults import split_fault_spec as split_fault_spec
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
