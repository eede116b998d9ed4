"""trio_yastack: a user-space TCP/IP stack for trio, shaped like YAStack (Envoy on FreeBSD's
stack on DPDK): NIC ports with burst I/O, one stack instance per core, and trio's own
interfaces on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Stack", "current_stack", "open_port", "open_stack", "run", "use_stack"]

if TYPE_CHECKING:
    from ._open_stack import Stack as Stack
    from ._open_stack import current_stack as current_stack
    from ._open_stack import open_port as open_port
    from ._open_stack import open_stack as open_stack
    from ._open_stack import run as run
    from .socket_api import use_stack as use_stack


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the sans-IO ``trio_yastack.stack`` does not import trio.
    if name == "use_stack":
        from . import socket_api

        return socket_api.use_stack
    if name in __all__:
        from . import _open_stack

        return getattr(_open_stack, name)
    raise AttributeError(f"module 'trio_yastack' has no attribute {name!r}")
