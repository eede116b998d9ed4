"""The journey of a packet: trace points, breakpoints, capture, and each core's control channel.

YAStack followed a packet through FreeBSD's functions with gdb breakpoints; this package does the
same by the same names (``rx_burst`` -> ``ether_input`` -> ``ip_input`` -> ``tcp_input`` -> ...
-> ``tx_burst``), from outside the layers it follows:

- :class:`CoreTracer` (``_tracer``) installs the trace points of one core only while something
  follows it, by swapping the classes of that core's objects for traced subclasses, and refuses
  (:class:`TraceInstallError`) when a traced method no longer matches the one it wraps
  (``_overrides``); the TLS hops wrap ``trio.SSLStream`` likewise (``_tls``);
- what a journey is and how it reads (``_journey``), and the BPF-like filter that picks packets
  (``_filter``);
- each core's control channel, a private Unix socket, with the ``serve``/``proxy`` options that
  open it (``_control``), and its clients ``yastack stat``, ``top``, ``trace``, ``capture``
  (``_client``).

It sits above everything it looks at: nothing in ``nic``, ``dispatch``, ``stack``,
``socket_api`` or ``tls`` imports it.  They meet it only where they already look up a method
on an object each time (the poll loop reads ``core.ether_input`` once per burst; TLS calls
``trio.SSLStream``'s methods), so a swapped class is seen there, and nowhere else.
"""

from ._client import ClientError as ClientError
from ._client import JourneyJoiner as JourneyJoiner
from ._client import add_client_commands as add_client_commands
from ._client import find_sockets as find_sockets
from ._client import format_stat as format_stat
from ._client import format_top as format_top
from ._client import open_control as open_control
from ._client import query as query
from ._client import query_all as query_all
from ._client import stream_all as stream_all
from ._control import ControlError as ControlError
from ._control import CoreObserver as CoreObserver
from ._control import add_observability_options as add_observability_options
from ._control import check_observability_options as check_observability_options
from ._control import control_directory as control_directory
from ._control import core_snapshot as core_snapshot
from ._control import observe_core as observe_core
from ._control import server_name as server_name
from ._filter import FilterError as FilterError
from ._filter import PacketFilter as PacketFilter
from ._filter import PacketInfo as PacketInfo
from ._filter import compile_filter as compile_filter
from ._filter import packet_info as packet_info
from ._journey import ALL_LAYERS as ALL_LAYERS
from ._journey import BREAK_SETS as BREAK_SETS
from ._journey import JOURNEYS as JOURNEYS
from ._journey import CaptureSubscription as CaptureSubscription
from ._journey import Hop as Hop
from ._journey import Journey as Journey
from ._journey import JourneyPreset as JourneyPreset
from ._journey import TcpSegment as TcpSegment
from ._journey import TraceSubscription as TraceSubscription
from ._journey import format_journey as format_journey
from ._journey import frame_summary as frame_summary
from ._journey import parse_headers as parse_headers
from ._overrides import TraceInstallError as TraceInstallError
from ._tracer import CoreTracer as CoreTracer
