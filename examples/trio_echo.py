"""Unmodified trio code over the user-space stack: ``trio.serve_tcp`` on one stack,
``trio.open_tcp_stream`` (with a name from the stack's hosts table) on the other, both on one
virtual wire.  Run: ``.venv/bin/python examples/trio_echo.py``."""

from __future__ import annotations

import trio

import trio_yastack
from trio_yastack.nic import memory_wire


async def echo(stream: trio.SocketStream) -> None:
    async for chunk in stream:
        await stream.send_all(chunk)


async def main() -> None:
    port_a, port_b = memory_wire(latency=0.001)
    async with (
        trio_yastack.open_stack(port_a, ip="198.18.0.2/24", hosts={"echo.test": "198.18.0.1"}),
        trio_yastack.open_stack(port_b, ip="198.18.0.1/24") as server_stack,
        trio.open_nursery() as nursery,
    ):
        with trio_yastack.use_stack(server_stack):
            await nursery.start(trio.serve_tcp, echo, 7)
        stream = await trio.open_tcp_stream("echo.test", 7)  # plain trio, on the user-space stack
        await stream.send_all(b"hello over the bypass stack")
        print(f"echoed: {(await stream.receive_some()).decode()}")
        await stream.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
