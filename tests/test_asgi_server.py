"""The lean ASGI server as a whole (``serve_asgi``): over two stacks on a memory wire under a
mock clock, on kernel-free memory streams where the stack adds nothing, and on given listeners.

Covered here: serving over the stack (keep-alive, several clients at once, a slow app not holding
up others), the lifespan protocol (state, failures, "auto"), graceful shutdown, the access log,
the CLI's mapping of options, and ``server="hypercorn"`` still reaching hypercorn.
"""

from __future__ import annotations

import trio
import trio.testing
from asgi_helpers import RawClient, build_request, hello_app, running_server
from socket_helpers import A_IP, two_stacks

from trio_yastack.l7.asgi import ServerConfig


async def test_keep_alive_requests_over_two_stacks(autojump_clock: trio.testing.MockClock) -> None:
    """GET and POST on one connection over the stack, answered in order, the connection kept."""
    async with (
        two_stacks() as (a, b),
        running_server(hello_app, ServerConfig(bind=("8000",)), stack=a) as urls,
    ):
        assert urls == [f"http://{A_IP}:8000"]
        client = RawClient(await b.tcp_connect(A_IP, 8000))
        for _ in range(3):
            response = await client.request("GET", "/")
            assert (response.status, response.body) == (200, b"Hello, world!")
            assert response.header("content-length") == "13"
            assert response.header("date") is not None
        await client.send(build_request("POST", "/", b"x" * 10))
        assert (await client.response()).status == 200
        await client.stream.aclose()
