"""Two stacks on a lossy virtual wire: a UDP echo server on one, a client with retries on the
other, and a ping.  Run: ``.venv/bin/python examples/udp_echo.py``."""

from __future__ import annotations

import trio

from trio_yastack import open_stack
from trio_yastack.nic import memory_wire


async def echo_server(stack, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    async with stack.udp_socket(7) as server:
        task_status.started()
        while True:
            data, address = await server.recvfrom()
            await server.sendto(data, address)


async def main() -> None:
    port_a, port_b = memory_wire(loss=0.1, latency=0.001, seed=42)
    async with (
        open_stack(port_a, ip="198.18.0.2/24") as stack,
        open_stack(port_b, ip="198.18.0.1/24") as peer,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(echo_server, peer)
        async with stack.udp_socket() as client:
            for index in range(5):
                message = f"hello {index}".encode()
                for attempt in range(1, 11):
                    await client.sendto(message, ("198.18.0.1", 7))
                    with trio.move_on_after(0.2):
                        data, address = await client.recvfrom()
                        print(f"{address[0]}:{address[1]} echoed {data!r} (attempt {attempt})")
                        break
        async with stack.ping_socket() as pinger:
            for seq in range(10):  # a lost request or reply is a timeout: try the next seq
                try:
                    reply = await pinger.ping("198.18.0.1", seq=seq, timeout=0.5)
                except TimeoutError:
                    continue
                print(f"ping {reply.source} seq {seq}: rtt {reply.rtt * 1000:.2f} ms")
                break
        print(stack.statistics().udp.format())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
