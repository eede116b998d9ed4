"""trio_yastack: a user-space TCP/IP stack for trio, shaped like YAStack (Envoy on FreeBSD's
stack on DPDK): NIC ports with burst I/O, one stack instance per core, and trio's own
interfaces on top.
"""

from ._open_stack import Stack as Stack
from ._open_stack import open_port as open_port
from ._open_stack import open_stack as open_stack

__version__ = "0.1.0"
