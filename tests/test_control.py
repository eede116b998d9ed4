"""The control channel, in process: one core's Unix socket, its answers, and bad clients.

Stacks on a ``memory_wire``.  The control socket is a real kernel Unix socket, so a test that
talks through it waits for real: it runs on the real clock (an autojumping ``MockClock`` would
leap ahead while the kernel delivers, and fire the channel's timeouts and the stack's timers
early; a ``MockClock`` that never moves would let no timeout fire at all, and a regression would
hang), and every one of its waits is bounded by ``fail_after``.  A test that only binds or looks
at files waits on nothing real, and runs under ``MockClock(autojump_threshold=0)``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_yastack import Stack, open_stack
from trio_yastack.journey._client import (
    ClientError,
    find_sockets,
    format_stat,
    format_top,
    open_control,
    query,
    stream_all,
)
from trio_yastack.journey._control import (
    MAX_CLIENTS,
    MAX_REQUEST,
    ControlError,
    CoreObserver,
    add_observability_options,
    bind_control_socket,
    break_layers,
    check_observability_options,
    control_directory,
    observe_core,
    server_name,
)
from trio_yastack.nic import memory_wire
from trio_yastack.stack import StackCore

SERVER, CLIENT = "198.18.0.2", "198.18.0.1"


#: the bound on a test that waits for the kernel (each step takes milliseconds)
REAL_IO_TIMEOUT = 30


def options(directory: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_observability_options(parser)
    return parser.parse_args(["--control", str(directory), *extra])


@asynccontextmanager
async def observed(directory: Path, *extra: str) -> AsyncIterator[tuple[Stack, Stack, CoreObserver]]:
    port_a, port_b = memory_wire()
    async with (
        open_stack(port_a, ip=f"{SERVER}/24", seed=1) as server,
        open_stack(port_b, ip=f"{CLIENT}/24", seed=2) as client,
        observe_core(options(directory, *extra), server, None) as observer,
    ):
        yield server, client, observer


async def raw(path: Path, payload: bytes) -> list[dict[str, Any]]:
    """Send ``payload`` as it is; the JSON lines that come back until the server closes."""
    stream = await open_control(path)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()  # nothing more: the server answers and closes without waiting
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_stat_reports_the_core(tmp_path: Path) -> None:
    with trio.fail_after(REAL_IO_TIMEOUT):
        async with observed(tmp_path / "ctl") as (server, client, observer):
            observer.add_counters("http", lambda: {"requests": 3})
            listener = server.tcp_listen(80)
            stream = await client.tcp_connect(SERVER, 80)
            await listener.accept()
            await stream.send_all(b"x")
            path = tmp_path / "ctl" / "core0.sock"
            assert find_sockets(tmp_path / "ctl") == [path]
            snapshot = await query(path, {"cmd": "stat"})
            assert snapshot["core"] == 0 and snapshot["cores"] == 1 and snapshot["pid"] == os.getpid()
            assert snapshot["interface"]["address"] == f"{SERVER}/24"
            assert snapshot["tcp"]["states"] == {"ESTABLISHED": 1}
            assert snapshot["tcp"]["listeners"][0]["port"] == 80
            assert snapshot["arp"][0]["ip"] == CLIENT
            assert snapshot["port"]["ipackets"] >= 3 and snapshot["port"]["opackets"] >= 2
            assert snapshot["stack"]["tcp"]["counters"]["connections_accepted"] == 1
            assert snapshot["app"] == {"http": {"requests": 3}}
            text = format_stat([snapshot])
            assert "ESTABLISHED 1" in text and "*:80" in text and CLIENT in text
            assert "core" in format_top([snapshot], [snapshot])
            assert (await query(path, {"cmd": "ping"}))["ok"] is True


async def test_socket_is_private_and_removed_at_exit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    directory = tmp_path / "ctl"
    async with observed(directory):
        path = directory / "core0.sock"
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not directory.exists()


async def test_bad_requests_get_an_error_and_the_core_goes_on(tmp_path: Path) -> None:
    with trio.fail_after(REAL_IO_TIMEOUT):
        async with observed(tmp_path / "ctl") as (server, client, observer):
            path = tmp_path / "ctl" / "core0.sock"
            for payload in (
                b"not json\n",
                b"[1, 2]\n",
                b'{"cmd": 7}\n',
                b'{"cmd": "reboot"}\n',
                b'{"cmd": "trace", "filter": "port 99999"}\n',
                b'{"cmd": "trace", "journey": "sideways"}\n',
                b'{"cmd": "capture", "snaplen": "big"}\n',
                b"\xff\xfe\n",
                b"x" * (MAX_REQUEST + 10),
            ):
                answers = await raw(path, payload)
                assert len(answers) == 1 and "error" in answers[0], (payload[:40], answers)
            assert observer.bad_requests == 9
            assert await raw(path, b"") == []  # a client that says nothing and goes
            snapshot = await query(path, {"cmd": "stat"})
            assert snapshot["control"]["bad_requests"] == 9
            # the stack never noticed
            async with client.ping_socket() as pinger:
                await pinger.ping(SERVER, seq=1, timeout=1.0)
            assert server._loop.stats.internal_errors == 0


async def test_a_trace_the_tracer_refuses_is_answered_with_why(tmp_path: Path) -> None:
    """A stack whose traced method changed: ``trace`` gets the ``TraceInstallError`` as its
    error line (not a dropped connection), no class is swapped, and the core goes on."""
    with trio.fail_after(REAL_IO_TIMEOUT):
        async with observed(tmp_path / "ctl") as (server, client, observer):
            original = type(server.core.icmp)

            class ChangedIcmpLayer(original):  # type: ignore[misc,valid-type]  # made at run time
                __slots__ = ()

                def icmp_input(self, buf: bytes, start: int, end: int, src: int, now: float) -> None:
                    original.icmp_input(self, buf, start, end, src, 0, now)

            server.core.icmp.__class__ = ChangedIcmpLayer
            try:
                answers = await raw(tmp_path / "ctl" / "core0.sock", b'{"cmd": "trace"}\n')
            finally:
                server.core.icmp.__class__ = original
            assert len(answers) == 1 and "icmp_input" in answers[0]["error"], answers
            assert not observer.tracer.tracing and observer.bad_requests == 0
            assert type(server.core) is StackCore and not observer.tracer.subscriptions
            async with client.ping_socket() as pinger:
                await pinger.ping(SERVER, seq=1, timeout=1.0)


async def test_too_many_clients_are_told_busy(tmp_path: Path) -> None:
    with trio.fail_after(REAL_IO_TIMEOUT):
        async with observed(tmp_path / "ctl") as (_server, _client, observer):
            path = tmp_path / "ctl" / "core0.sock"
            idle = [await open_control(path) for _ in range(MAX_CLIENTS)]
            try:
                with trio.fail_after(10):
                    while observer.clients < MAX_CLIENTS:
                        await trio.sleep(0)  # the server's accept loop takes them in
                answers = await raw(path, b'{"cmd": "ping"}\n')
                assert answers and "busy" in answers[0]["error"]
            finally:
                for stream in idle:
                    await stream.aclose()


async def test_trace_and_capture_stream_until_the_client_half_closes(tmp_path: Path) -> None:
    with trio.fail_after(REAL_IO_TIMEOUT):
        directory = tmp_path / "ctl"
        journeys: list[dict[str, Any]] = []
        frames: list[dict[str, Any]] = []
        async with observed(directory) as (server, client, observer):
            listener = server.tcp_listen(80)

            async def traffic() -> None:
                stream = await client.tcp_connect(SERVER, 80)
                accepted = await listener.accept()
                await stream.send_all(b"ping")
                assert await accepted.receive_some() == b"ping"

            def on_journey(item: dict[str, Any]) -> bool:
                journeys.append(item["journey"])
                return any("sbappend" in [h["layer"] for h in j["hops"]] for j in journeys)

            def on_frame(item: dict[str, Any]) -> bool:
                frames.append(item)
                return len(frames) >= 3

            async with trio.open_nursery() as nursery:
                ready = trio.Event()
                nursery.start_soon(
                    lambda: stream_all(
                        directory,
                        {"cmd": "trace", "filter": "tcp", "journey": "in"},
                        on_journey,
                        ready=lambda _n: ready.set(),
                    )
                )
                await ready.wait()
                assert observer.tracer.tracing
                nursery.start_soon(traffic)
            assert not observer.tracer.tracing and type(server.core) is StackCore  # the last follower left
            async with trio.open_nursery() as nursery:
                ready = trio.Event()
                nursery.start_soon(
                    lambda: stream_all(
                        directory,
                        {"cmd": "capture", "filter": "tcp port 80"},
                        on_frame,
                        ready=lambda _n: ready.set(),
                    )
                )
                await ready.wait()
                await client.tcp_connect(SERVER, 80)
                await listener.accept()
        assert all(j["direction"] == "in" for j in journeys)
        assert any([h["layer"] for h in j["hops"]][-1] == "app" for j in journeys)
        assert len(frames) >= 3 and {f["dir"] for f in frames} == {"in", "out"}


async def test_a_live_socket_is_not_taken_over(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    directory = tmp_path / "ctl"
    async with observed(directory):
        with pytest.raises(ControlError, match="another server"):
            bind_control_socket(directory / "core0.sock")
    # a stale one (nobody listening) is replaced
    directory.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(directory / "core0.sock"))
    stale.close()
    bind_control_socket(directory / "core0.sock").close()


async def test_no_server_is_a_client_error(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="no server"):
        find_sockets(tmp_path / "nothing")
    with pytest.raises(ClientError, match="no server"):
        find_sockets(tmp_path)


def test_options_and_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suffix = server_name(object()).removeprefix("default")  # the namespace this test runs in
    assert server_name("tap:yas7,offloads=off") == "yas7" + suffix
    assert server_name("tap:../x") == "default" + suffix
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert control_directory("yas0") == tmp_path / "yastack" / "yas0"
    assert control_directory("yas0", tmp_path / "x") == tmp_path / "x"
    assert check_observability_options(options(tmp_path, "--trace", "port 99999")).startswith("--trace")
    assert check_observability_options(options(tmp_path, "--break", "tcp_inptu")).startswith("--break")
    assert break_layers(options(tmp_path, "--journey", "out", "--break")) >= {"tcp_output", "tx_burst"}
    assert break_layers(options(tmp_path, "--break", "tcp_input,recv")) == {"tcp_input", "recv"}
    assert check_observability_options(options(tmp_path, "--trace", "tcp port 80", "--journey", "in")) is None
