"""The proxy's direct kernel-socket I/O (``l7/_kernel_io.py``) and its per-request helpers that
replaced slower library calls (``_uuid4``, ``_reason``): each holds to what it replaced."""

from __future__ import annotations

import random
import uuid
from http import HTTPStatus

import pytest
import trio
import trio.testing

from trio_yastack.l7._kernel_io import kernel_socket, receive_some, send_all
from trio_yastack.l7.http_proxy import _reason, _uuid4


async def _socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair of kernel TCP streams on loopback."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    assert isinstance(server, trio.SocketStream)
    return client, server


async def test_kernel_socket_only_for_a_kernel_socket_stream() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw = kernel_socket(client)
        assert raw is not None and raw.fileno() == client.socket.fileno()
    a, _b = trio.testing.memory_stream_pair()
    assert kernel_socket(a) is None  # not a SocketStream: the stream's own methods


async def test_send_all_and_receive_some_move_every_byte_with_backpressure() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        # Far more than the socket buffers hold: send_all must wait for the reader to drain them.
        payload = random.Random(7).randbytes(8 * 1024 * 1024)
        received = bytearray()

        async def reader() -> None:
            while len(received) < len(payload):
                data = await receive_some(raw_in, 65536)
                assert data, "EOF before the whole payload"
                received.extend(data)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await send_all(raw_out, payload)
        assert bytes(received) == payload
        await client.aclose()
        with trio.fail_after(5):
            assert await receive_some(raw_in, 1024) == b""  # EOF


async def test_receive_some_waits_and_is_cancellable() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw = kernel_socket(server)
        assert raw is not None
        got: list[bytes] = []
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    got.append(await receive_some(raw, 1024))

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                assert got == []  # nothing sent: it waits
                await client.send_all(b"ping")
        assert got == [b"ping"]
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await receive_some(raw, 1024)


async def test_a_wait_ends_when_another_task_closes_the_stream() -> None:
    client, server = await _socket_streams()
    async with client:
        raw = kernel_socket(server)
        assert raw is not None
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def close_soon() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    await server.aclose()

                nursery.start_soon(close_soon)
                with pytest.raises(trio.ClosedResourceError):
                    await receive_some(raw, 1024)


async def test_checkpoints_like_trio() -> None:
    client, server = await _socket_streams()
    async with client, server:
        raw_out, raw_in = kernel_socket(client), kernel_socket(server)
        assert raw_out is not None and raw_in is not None
        with trio.testing.assert_checkpoints():
            await send_all(raw_out, b"x")
        with trio.testing.assert_checkpoints():
            assert await receive_some(raw_in, 16) == b"x"
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await send_all(raw_out, b"y")  # a cancelled caller sends nothing
        client.socket.shutdown(1)
        with trio.fail_after(5):
            assert await receive_some(raw_in, 16) == b""  # only the EOF: "y" was never sent


def test_uuid4_is_uuid_s_text() -> None:
    rng = random.Random(20)
    for bits in [0, (1 << 128) - 1, *(rng.getrandbits(128) for _ in range(20000))]:
        assert _uuid4(bits) == str(uuid.UUID(int=bits, version=4)).encode()


def test_reason_is_httpstatus_phrase() -> None:
    for status in range(0, 1000):
        try:
            expected = HTTPStatus(status).phrase.encode()
        except ValueError:
            expected = b""
        assert _reason(status) == expected
