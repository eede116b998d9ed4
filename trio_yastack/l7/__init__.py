"""L7 over trio streams: ASGI apps served by our lean server (or hypercorn), and an Envoy-style proxy.

- :func:`serve_asgi` (:mod:`.asgi`, ``yastack serve``): our trio-native ASGI server (HTTP/1.1 with
  httptools, WebSocket with wsproto, HTTP/2 through hypercorn's protocol) with its listeners on
  the stack or on kernel sockets; ``server="hypercorn"`` runs hypercorn's trio worker instead.
- The proxy (:mod:`.proxy`, ``yastack proxy -c CONFIG``) runs a subset of Envoy's v3 static
  bootstrap (:mod:`.config`, checked by ``yastack check-config``): listeners and filter chains, with
  TLS termination and the ``tls_inspector`` (:mod:`trio_yastack.tls`); the HTTP connection manager
  and router, HTTP/1.1 on both sides (:mod:`.http_proxy`, :mod:`.router`); ``tcp_proxy``
  (:mod:`.tcp_proxy`); clusters with health checks, outlier detection, load balancing, connection
  pools and circuit breakers (:mod:`.upstream`); Envoy's statistics, access log and admin endpoint
  (:mod:`.stats`, :mod:`.access_log`, :mod:`.admin`).

Everything here sees only trio streams and listeners, so it runs over kernel sockets or the
user-space stack unchanged; :mod:`.network` decides, per address, whose sockets the proxy gets.
"""

from .asgi import serve_asgi as serve_asgi
