"""ASGI apps over trio streams: our lean server (HTTP/1.1 with httptools, WebSocket with
wsproto, HTTP/2 through hypercorn's protocol) and hypercorn's trio worker, both over the stack.

- :func:`serve_asgi`: our server by default (:class:`ServerConfig`); ``server="hypercorn"`` (or a
  hypercorn :class:`Config`) for hypercorn's trio worker (:mod:`._hypercorn`).
- ``python -m trio_yastack.l7.asgi APP --kernel``: our server on kernel sockets, no stack (how
  the server alone is measured against hypercorn and uvicorn).
"""

from ._access_log import AccessLogger as AccessLogger
from ._config import ServerConfig as ServerConfig
from ._http11 import ClientDisconnected as ClientDisconnected
from ._http11 import Handoffs as Handoffs
from ._http11 import HttpConnection as HttpConnection
from ._hypercorn import SUPPORTED_HYPERCORN as SUPPORTED_HYPERCORN
from ._hypercorn import Config as Config
from ._hypercorn import check_hypercorn_version as check_hypercorn_version
from ._hypercorn import parse_bind as parse_bind
from ._hypercorn import serve_asgi_hypercorn as serve_asgi_hypercorn
from ._lifespan import Lifespan as Lifespan
from ._lifespan import LifespanFailure as LifespanFailure
from ._server import serve_asgi as serve_asgi

__all__ = [
    "SUPPORTED_HYPERCORN",
    "AccessLogger",
    "ClientDisconnected",
    "Config",
    "Handoffs",
    "HttpConnection",
    "Lifespan",
    "LifespanFailure",
    "ServerConfig",
    "check_hypercorn_version",
    "parse_bind",
    "serve_asgi",
    "serve_asgi_hypercorn",
]
