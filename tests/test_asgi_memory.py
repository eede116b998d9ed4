"""Memory per idle connection of the ASGI server (issue 22: serve's RSS per idle connection doubled).

An idle connection (accepted, no byte yet) should hold only what waiting needs: the connection
object, its task and the read it waits in.  Measured with tracemalloc over two stacks on a memory
wire under a mock clock (deterministic: no kernel, no real time), as a soak's 10 000 idle
clients would be held by ``yastack serve``.
"""

from __future__ import annotations

import gc
import tracemalloc

import trio
import trio.testing
from asgi_helpers import RawClient, hello_app, running_server
from socket_helpers import A_IP, two_stacks

from trio_yastack.l7.asgi import HttpConnection, ServerConfig

IDLE = 200
#: bytes allocated below the ASGI server's code per idle connection (the connection, its task and
#: cancel scope, the accepted StackSocket and the read's waiter): 7.2 KB after issue 22's fix,
#: 9.9 KB before (a parser, a deque block and an instance dict each, made before any byte came)
ASGI_BOUND = 8_500
#: everything per idle connection, both stacks (client and server side) and the server: 15.7 KB
#: after the fix, 18.5 KB before
TOTAL_BOUND = 17_500


def _asgi_share(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes whose allocation has a frame of the ASGI server's code anywhere in its traceback."""
    return sum(
        stat.size
        for stat in snapshot.statistics("traceback")
        if any("/l7/asgi/" in frame.filename for frame in stat.traceback)
    )


async def test_memory_per_idle_connection_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    # no timeout fires while the clock jumps: the connections stay idle, not closed as slowloris
    config = ServerConfig(bind=("8000",), request_head_timeout=3600.0, keep_alive_timeout=3600.0)
    async with two_stacks() as (a, b), running_server(hello_app, config, stack=a):
        warm = [await b.tcp_connect(A_IP, 8000) for _ in range(20)]  # caches and free lists warmed
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start(30)
        try:
            before = tracemalloc.get_traced_memory()[0]
            first = tracemalloc.take_snapshot()
            clients = [await b.tcp_connect(A_IP, 8000) for _ in range(IDLE)]
            await trio.testing.wait_all_tasks_blocked()  # every one accepted, its read waiting
            after = tracemalloc.get_traced_memory()[0]
            asgi = _asgi_share(tracemalloc.take_snapshot()) - _asgi_share(first)
        finally:
            tracemalloc.stop()
        total = (after - before) / IDLE
        per_asgi = asgi / IDLE
        print(f"per idle connection: {total:.0f} B in all, {per_asgi:.0f} B under l7/asgi")
        assert 0 < per_asgi < ASGI_BOUND
        assert total < TOTAL_BOUND
        # the idle connections are served: the last one answers as any other
        response = await RawClient(clients[-1]).request()
        assert (response.status, response.body) == (200, b"Hello, world!")
        for stream in warm + clients:
            await stream.aclose()


async def test_an_idle_connection_holds_no_parser_queue_block_or_dict() -> None:
    """What the bound above is made of: nothing per connection before its first byte."""
    left, right = trio.testing.memory_stream_pair()
    connection = HttpConnection(right, hello_app, ServerConfig())
    assert not hasattr(connection, "__dict__")  # slots
    assert connection._parser is None  # made by the first _feed
    assert connection._requests == []
    await left.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        reply = b""
        while chunk := await left.receive_some():
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"Hello, world!")
