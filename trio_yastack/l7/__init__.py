"""L7 over the stack: ASGI apps served by hypercorn; the Envoy-style proxy's configuration
(``trio_yastack.l7.config``, checked by ``yastack check-config``); the proxy itself is to come.

Everything here sees only trio streams and listeners, so it runs over kernel sockets or the
user-space stack unchanged.
"""

from .asgi import serve_asgi as serve_asgi
