"""L7: ASGI serving with hypercorn and the Envoy-style reverse proxy, over the stack: to come."""
