"""The journey of a packet, in process: trace points, breakpoints, capture and the filter.

Two stacks on a ``memory_wire`` under ``MockClock(autojump_threshold=0)``; the server's core is
traced.  Each test names the hops a journey must take, in order, and checks that turning the
tracer off puts every class back (the untraced path is then the stack's own code).  Because the
trace points are subclasses that copy the names and signatures of the methods they wrap, every
traced class is also checked against the classes it goes on, and tracing must refuse a stack
that no longer matches; and no layer below may import the journey.
"""

from __future__ import annotations

import bdb
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization

from trio_yastack import Stack, open_stack
from trio_yastack.dispatch import PollLoop, SpscRing
from trio_yastack.journey import (
    ALL_LAYERS,
    BREAK_SETS,
    JOURNEYS,
    CaptureSubscription,
    CoreTracer,
    FilterError,
    Journey,
    JourneyJoiner,
    PacketInfo,
    TraceSubscription,
    _tls,
    _tracer,
    compile_filter,
    format_journey,
    packet_info,
    parse_headers,
)
from trio_yastack.journey._overrides import TraceInstallError, check_overrides, override_problems
from trio_yastack.nic import Port, memory_wire
from trio_yastack.nic._memory import MemoryPort
from trio_yastack.stack import StackCore, TcpConnection, TcpLayer, TcpListener
from trio_yastack.stack._arp import ArpLayer
from trio_yastack.stack._icmp6 import Icmp6Layer
from trio_yastack.stack._ip import IpLayer
from trio_yastack.stack._ip6 import Ip6Layer
from trio_yastack.stack._nd6 import Nd6Layer
from trio_yastack.tls.certs import make_ca

SERVER, CLIENT = "198.18.0.2", "198.18.0.1"


def layers(journey: Journey) -> list[str]:
    return [hop.layer for hop in journey.hops]


def in_order(seen: list[str], expected: list[str]) -> bool:
    """``expected`` appears in ``seen`` in this order (other hops may be between)."""
    position = 0
    for layer in seen:
        if position < len(expected) and layer == expected[position]:
            position += 1
    return position == len(expected)


@asynccontextmanager
async def traced_pair(**wire: Any) -> AsyncIterator[tuple[Stack, Stack, CoreTracer, list[Journey]]]:
    """A server stack (traced) and a client stack on a memory wire; journeys land in the list."""
    port_a, port_b = memory_wire(latency=0.001, **wire)
    journeys: list[Journey] = []
    async with (
        open_stack(port_a, ip=f"{SERVER}/24", seed=1) as server,
        open_stack(port_b, ip=f"{CLIENT}/24", seed=2) as client,
    ):
        tracer = CoreTracer(server.core, server.port, server._loop)
        tracer.subscribe(TraceSubscription(journeys.append))
        try:
            yield server, client, tracer, journeys
        finally:
            tracer.close()


async def exchange(server: Stack, client: Stack) -> tuple[Any, Any]:
    listener = server.tcp_listen(80)
    stream = await client.tcp_connect(SERVER, 80)
    accepted = await listener.accept()
    await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
    assert await accepted.receive_some() == b"GET / HTTP/1.0\r\n\r\n"
    await accepted.send_all(b"hello")
    assert await stream.receive_some() == b"hello"
    return stream, accepted


async def test_in_and_out_journeys_name_every_layer_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with traced_pair() as (server, client, _tracer, journeys):
        await exchange(server, client)
        await trio.sleep(0.1)  # simulated: the last ACKs arrive
    data_in = [j for j in journeys if j.direction == "in" and "length 18" in j.summary]
    assert len(data_in) == 1, [j.summary for j in journeys]
    assert in_order(
        layers(data_in[0]), ["rx_burst", "ether_input", "ip_input", "tcp_input", "sbappend", "recv", "app"]
    )
    tcp_hop = next(hop for hop in data_in[0].hops if hop.layer == "tcp_input")
    assert tcp_hop.note.startswith("ESTABLISHED -> ESTABLISHED")
    syn = next(j for j in journeys if j.direction == "in" and "Flags [S]" in j.summary)
    assert next(h for h in syn.hops if h.layer == "tcp_input").note.startswith("LISTEN -> SYN_RECEIVED")
    handshake_ack = next(j for j in journeys if j.direction == "in" and "accept" in layers(j))
    assert in_order(layers(handshake_ack), ["tcp_input", "accept", "app"])
    response = [j for j in journeys if j.direction == "out" and "length 5" in j.summary]
    assert len(response) == 1
    assert layers(response[0]) == [
        "send",
        "tcp_output",
        "ip_output",
        "arpresolve",
        "ether_output",
        "tx_burst",
    ]
    # every hop is on core 0 and times never go backwards
    for journey in journeys:
        assert all(hop.core == 0 for hop in journey.hops)
        assert [hop.at for hop in journey.hops] == sorted(hop.at for hop in journey.hops) or journey.hops[
            0
        ].layer in (
            "send",
            "tls_write",
            "tls_handshake",
        )
    text = format_journey(data_in[0].as_dict())
    assert text.splitlines()[0].startswith("journey 0.") and "└─ tcp_input" in text


async def test_stopping_puts_every_class_back(autojump_clock: trio.testing.MockClock) -> None:
    async with traced_pair() as (server, client, tracer, _journeys):
        core = server.core
        stream, accepted = await exchange(server, client)
        conn = accepted.socket.connection  # StackSocket.connection: the stack's TcpConnection
        assert type(core) is not StackCore and isinstance(core, StackCore)
        assert type(conn) is not TcpConnection
        tracer.close()
        assert type(core) is StackCore
        assert type(core.ip_layer) is IpLayer and type(core.arp) is ArpLayer and type(core.tcp) is TcpLayer
        assert type(conn) is TcpConnection
        assert all(type(listener) is TcpListener for listener in core.tcp.listeners.values())
        assert type(server.port) is MemoryPort and type(server._loop) is PollLoop
        assert core.tcp_input.__func__ is TcpLayer.tcp_input  # type: ignore[union-attr]
        assert not tracer.tracing
        # and the stack still works untraced
        await stream.send_all(b"more")
        assert await accepted.receive_some() == b"more"


async def test_tls_hops_name_the_call_that_consumed_or_produced_the_bytes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Over ``trio.SSLStream``: the ClientHello's bytes end in ``tls_handshake``, a record's
    plaintext reaches the app through ``tls_read``, and a response leaves through ``tls_write``
    then ``send``.  The TLS trace points are on trio's class only while a tracer is on."""
    originals = {name: getattr(trio.SSLStream, name) for name in ("do_handshake", "receive_some", "send_all")}
    leaf = make_ca("journey test CA").issue([SERVER])
    (tmp_path / "ca.pem").write_bytes(leaf.ca_certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "cert.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_tls = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    async with traced_pair() as (server, client, tracer, journeys):
        assert all(getattr(trio.SSLStream, name) is not f for name, f in originals.items())
        listener = server.tcp_listen(443)
        plain = await client.tcp_connect(SERVER, 443)
        tls_client = trio.SSLStream(plain, client_tls, server_hostname=SERVER)
        tls_server = trio.SSLStream(await listener.accept(), server_tls, server_side=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tls_client.do_handshake)
            nursery.start_soon(tls_server.do_handshake)
        await tls_client.send_all(b"GET / HTTP/1.0\r\n\r\n")
        assert await tls_server.receive_some() == b"GET / HTTP/1.0\r\n\r\n"
        await tls_server.send_all(b"hello")
        assert await tls_client.receive_some() == b"hello"
        await trio.sleep(0.1)  # simulated: the last ACKs arrive
        tracer.close()
    assert all(getattr(trio.SSLStream, name) is f for name, f in originals.items())
    hello = [j for j in journeys if j.direction == "in" and layers(j)[-1] == "tls_handshake"]
    assert hello and in_order(
        layers(hello[0]), ["rx_burst", "tcp_input", "sbappend", "recv", "tls_handshake"]
    )
    request = [j for j in journeys if j.direction == "in" and "tls_read" in layers(j)]
    assert request and in_order(layers(request[0]), ["tcp_input", "sbappend", "recv", "tls_read", "app"])
    assert request[0].tls and "bytes of plaintext" in request[0].hops[-2].note
    written = [j for j in journeys if j.direction == "out" and layers(j)[0] == "tls_write"]
    assert written and layers(written[0]) == [
        "tls_write", "send", "tcp_output", "ip_output", "arpresolve", "ether_output", "tx_burst",
    ]  # fmt: skip


async def test_every_traced_method_matches_the_method_it_wraps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Tracing swaps classes for subclasses that copy the names and signatures of the methods
    they wrap: a renamed method (or a changed parameter) would silently drop a hop.  Every traced
    class, against every class it is installed on, to the annotations' text."""
    port_a, _port_b = memory_wire()
    async with open_stack(port_a, ip=f"{SERVER}/24") as stack:
        core = stack.core
        listener = stack.tcp_listen(80)
        ring = SpscRing.create(1 << 12)
        try:
            installed_on: dict[type, list[type]] = {
                _tracer._PortTrace: _port_classes(),
                _tracer._LoopTrace: [type(stack._loop)],
                _tracer._RingTrace: [type(ring)],
                _tracer._CoreTrace: [type(core)],
                _tracer._ArpTrace: [type(core.arp)],
                _tracer._IpTrace: [type(core.ip_layer)],
                _tracer._IcmpTrace: [type(core.icmp)],
                _tracer._UdpTrace: [type(core.udp)],
                _tracer._Ip6Trace: [Ip6Layer],
                _tracer._Nd6Trace: [Nd6Layer],
                _tracer._Icmp6Trace: [Icmp6Layer],
                _tracer._TcpLayerTrace: [type(core.tcp)],
                _tracer._ListenerTrace: [type(core.tcp.listeners[80])],
                _tracer._ConnTrace: [TcpConnection],
                _tls._SslStreamTrace: [trio.SSLStream],
            }
        finally:
            ring.close()
        del listener
    traced = {
        cls for name, cls in vars(_tracer).items() if isinstance(cls, type) and name.endswith("Trace")
    } | {_tls._SslStreamTrace}
    assert set(installed_on) == traced  # a new traced class is listed here, with what it goes on
    assert len(installed_on[_tracer._PortTrace]) >= 5  # Port, PortWrapper, MemoryPort, TapPort, ...
    for mixin, classes in installed_on.items():
        assert any(not name.startswith("__") for name in vars(mixin))
        for cls in classes:
            assert override_problems(cls, mixin) == [], (mixin, cls)


def _port_classes() -> list[type]:
    import trio_yastack.nic.tap  # noqa: F401  (its TapPort is a Port too)

    found: list[type] = []
    todo: list[type] = [Port]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.startswith("trio_yastack.")]


def test_the_check_names_a_missing_or_changed_method() -> None:
    class RenamedTcpLayer:  # as if tcp_input had been renamed
        def tcp_segment_arrives(self) -> None: ...

        def tcp6_input(
            self, buf: bytes, start: int, end: int, src: int, dst: int, ip_offset: int, now: float
        ) -> None: ...

        def _attach(self, conn: TcpConnection) -> None: ...

        def detach(self, conn: TcpConnection) -> None: ...  # a parameter gone

        def listen(self, port: int, backlog: int = 128) -> TcpListener: ...

        def listen6(self, port: int, backlog: int = 128, v6only: bool = False) -> TcpListener: ...

    problems = override_problems(RenamedTcpLayer, _tracer._TcpLayerTrace)
    assert len(problems) == 2
    assert "tcp_input wraps" in problems[0] and "does not exist" in problems[0]
    assert "detach" in problems[1] and "does not match" in problems[1]
    with pytest.raises(TraceInstallError, match="tcp_input"):
        check_overrides(RenamedTcpLayer, _tracer._TcpLayerTrace)


async def test_tracing_refuses_to_start_on_a_changed_stack_and_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A layer whose traced method has other parameters than the traced copy: subscribing
    raises ``TraceInstallError`` before any class is swapped, and the stack goes on untraced."""
    port_a, port_b = memory_wire(latency=0.001)
    async with (
        open_stack(port_a, ip=f"{SERVER}/24", seed=1) as server,
        open_stack(port_b, ip=f"{CLIENT}/24", seed=2) as client,
    ):
        core = server.core
        original = type(core.udp)

        class ChangedUdpLayer(original):  # type: ignore[misc,valid-type]  # a class made at run time
            __slots__ = ()

            def udp_input(self, buf: bytes, start: int, end: int, src: int, dst: int, now: float) -> None:
                return original.udp_input(self, buf, start, end, src, dst, 14, now)  # type: ignore[no-any-return]

        core.udp.__class__ = ChangedUdpLayer
        tracer = CoreTracer(core, server.port, server._loop)
        with pytest.raises(TraceInstallError, match="udp_input"):
            tracer.subscribe(TraceSubscription(lambda journey: None))
        assert not tracer.tracing and tracer.subscriptions == []
        assert type(core) is StackCore and type(core.tcp) is TcpLayer and type(server.port) is MemoryPort
        assert not _tls.installed()
        core.udp.__class__ = original
        tracer.subscribe(TraceSubscription(lambda journey: None))  # once it matches again
        assert tracer.tracing
        tracer.close()
        async with client.ping_socket() as pinger:
            await pinger.ping(SERVER, seq=1, timeout=1.0)


def test_the_layers_below_do_not_import_the_journey() -> None:
    """The journey looks at every layer from above: importing the layers (TLS and l7 included)
    loads nothing of it; they meet it only through the objects it swaps."""
    layers_below = (
        "trio_yastack.nic, trio_yastack.nic.tap, trio_yastack.dispatch, trio_yastack.stack, "
        "trio_yastack.socket_api, trio_yastack.tls.contexts, trio_yastack.tls.certs, "
        "trio_yastack.tls.client_hello, trio_yastack._open_stack, trio_yastack.l7"
    )
    code = f"import sys, {layers_below}; print(sorted(m for m in sys.modules if 'journey' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_filter_limits_what_is_followed(autojump_clock: trio.testing.MockClock) -> None:
    port_a, port_b = memory_wire(latency=0.001)
    seen: list[Journey] = []
    async with (
        open_stack(port_a, ip=f"{SERVER}/24") as server,
        open_stack(port_b, ip=f"{CLIENT}/24") as client,
    ):
        tracer = CoreTracer(server.core, server.port, server._loop)
        tracer.subscribe(TraceSubscription(seen.append, compile_filter("tcp and syn"), JOURNEYS["in"]))
        await exchange(server, client)
        tracer.close()
    assert seen and all("Flags [S]" in j.summary and j.direction == "in" for j in seen)


async def test_icmp_udp_and_arp_journeys(autojump_clock: trio.testing.MockClock) -> None:
    async with traced_pair() as (server, client, _tracer, journeys):
        async with client.ping_socket() as pinger:
            await pinger.ping(SERVER, seq=1, timeout=1.0)
        async with server.udp_socket(7) as sink, client.udp_socket() as sender:
            await sender.sendto(b"datagram", (SERVER, 7))
            await sink.recvfrom()
        await trio.sleep(0.1)
    assert any(in_order(layers(j), ["ether_input", "ip_input", "icmp_input"]) for j in journeys)
    assert any(in_order(layers(j), ["ether_input", "ip_input", "udp_input"]) for j in journeys)
    assert any(in_order(layers(j), ["ether_input", "arp_input"]) for j in journeys)
    echo_reply = [j for j in journeys if j.direction == "out" and "echo reply" in j.summary]
    assert echo_reply and layers(echo_reply[0])[0] == "ip_output"


async def test_arpresolve_holds_the_first_packet_and_its_journey_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with traced_pair() as (server, client, _tracer, journeys):
        async with client.udp_socket(9) as sink, server.udp_socket() as sender:
            await sender.sendto(b"first", (CLIENT, 9))  # the server does not know the client's MAC yet
            assert (await sink.recvfrom())[0] == b"first"
        await trio.sleep(0.1)
    udp_out = next(j for j in journeys if j.direction == "out" and "UDP" in j.summary)
    arpresolve = next(hop for hop in udp_out.hops if hop.layer == "arpresolve")
    assert "unresolved" in arpresolve.note
    assert layers(udp_out)[-2:] == ["ether_output", "tx_burst"]
    assert any(j.direction == "out" and "who-has" in j.summary for j in journeys)


async def test_breakpoint_has_the_segment_in_scope(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[dict[str, Any]] = []

    def hook() -> None:
        scope = sys._getframe(1).f_locals  # the frame that called the breakpoint hook
        seen.append({name: scope[name] for name in ("packet", "headers", "segment", "conn", "journey")})

    port_a, port_b = memory_wire(latency=0.001)
    async with (
        open_stack(port_a, ip=f"{SERVER}/24") as server,
        open_stack(port_b, ip=f"{CLIENT}/24") as client,
    ):
        tracer = CoreTracer(server.core, server.port, server._loop)
        tracer.breakpoint_hook = hook
        tracer.set_breaks(["tcp_input"], compile_filter("tcp dst port 80 and syn"))
        assert tracer.tracing
        await exchange(server, client)
        tracer.close()
    assert len(seen) == 1  # only the SYN matched
    segment = seen[0]["segment"]
    assert segment.dport == 80 and segment.flags == "S" and segment.payload_len == 0
    assert seen[0]["headers"]["tcp"]["dport"] == 80 and seen[0]["headers"]["ip"]["src"] == CLIENT
    assert seen[0]["packet"][12:14] == b"\x08\x00"
    assert seen[0]["conn"] is None  # no connection yet: the SYN meets the listener


async def test_quitting_the_debugger_turns_breakpoints_off(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    def hook() -> None:
        nonlocal calls
        calls += 1
        raise bdb.BdbQuit

    port_a, port_b = memory_wire(latency=0.001)
    async with (
        open_stack(port_a, ip=f"{SERVER}/24") as server,
        open_stack(port_b, ip=f"{CLIENT}/24") as client,
    ):
        tracer = CoreTracer(server.core, server.port, server._loop)
        tracer.breakpoint_hook = hook
        tracer.set_breaks(BREAK_SETS["in"])
        await exchange(server, client)  # the stack goes on after the quit
        await trio.sleep(0.1)
        assert calls == 1 and not tracer.breaks
        assert not tracer.tracing and type(server.core) is StackCore  # nothing else wanted tracing
        assert server._loop.stats.internal_errors == 0
        tracer.close()


def test_unknown_break_layer_is_refused() -> None:
    tracer = CoreTracer(object(), object())
    with pytest.raises(ValueError, match="unknown layer"):
        tracer.set_breaks(["tcp_inptu"])
    assert {"rx_burst", "tcp_input", "tx_burst", "tls_read", "app"} <= set(ALL_LAYERS)


async def test_capture_sees_both_directions_through_its_filter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    port_a, port_b = memory_wire(latency=0.001)
    frames: list[tuple[str, bytes]] = []
    async with (
        open_stack(port_a, ip=f"{SERVER}/24") as server,
        open_stack(port_b, ip=f"{CLIENT}/24") as client,
    ):
        tracer = CoreTracer(server.core, server.port, server._loop)
        capture = CaptureSubscription(
            lambda _t, direction, frame: frames.append((direction, frame)), compile_filter("tcp")
        )
        tracer.add_capture(capture)
        assert not tracer.tracing  # capture alone swaps the port, not the stack
        await exchange(server, client)
        tracer.remove_capture(capture)
        assert type(server.port) is MemoryPort
    assert {"in", "out"} == {direction for direction, _ in frames}
    assert all(packet_info(frame).proto == 6 for _, frame in frames)
    assert any(b"GET / HTTP/1.0" in frame for direction, frame in frames if direction == "in")
    assert any(frame.endswith(b"hello") for direction, frame in frames if direction == "out")


def test_parse_headers_never_raises_on_junk() -> None:
    for junk in (b"", b"\x00" * 13, b"\xff" * 14 + b"\x45", bytes(range(60))):
        assert isinstance(parse_headers(junk), dict)


def test_joiner_joins_the_halves_of_a_journey_that_crossed_cores() -> None:
    printed: list[dict[str, Any]] = []
    joiner = JourneyJoiner(printed.append)
    hop = {"at": 0.0, "core": 0, "note": ""}
    first = {
        "id": "0.1",
        "key": "abcd",
        "end": "",
        "hops": [{**hop, "layer": "rx_burst"}, {**hop, "layer": "ring_enqueue"}],
    }
    second = {"id": "1.7", "key": "abcd", "end": "", "hops": [{**hop, "core": 1, "layer": "ring_dequeue"}]}
    joiner.add(first)
    assert printed == []
    joiner.add(second)
    assert len(printed) == 1 and printed[0]["id"] == "0.1+1.7"
    assert [h["layer"] for h in printed[0]["hops"]] == ["rx_burst", "ring_enqueue", "ring_dequeue"]
    joiner.add({**first, "key": "ffff"})
    joiner.flush()
    assert len(printed) == 2


# -- the filter -----------------------------------------------------------------------------
def info(**fields: Any) -> PacketInfo:
    base = {"proto": 6, "src": 0xC6120001, "dst": 0xC6120002, "sport": 40000, "dport": 80, "flags": 0x02}
    return PacketInfo(**{**base, **fields})


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("tcp port 80", {}, True),
        ("tcp and port 81", {}, False),
        ("host 198.18.0.1", {}, True),
        ("src host 198.18.0.2", {}, False),
        ("dst host 198.18.0.2 && dst port 80", {}, True),
        ("net 198.18.0.0/15", {}, True),
        ("udp or icmp", {}, False),
        ("not udp", {}, True),
        ("tcp-syn", {}, True),
        ("syn and not ack", {"flags": 0x12}, False),
        ("(port 22 or port 80) and !rst", {}, True),
        ("fin", {"flags": None}, True),  # no segment yet: flag tests do not exclude
        ("arp", {"proto": -1}, True),
        ("ip", {"proto": -1}, False),
        ("port 80", {"proto": 1}, False),
    ],
)
def test_filter_matches(text: str, fields: dict[str, Any], expected: bool) -> None:
    compiled = compile_filter(text)
    assert compiled is not None and compiled.match(info(**fields)) is expected


@pytest.mark.parametrize(
    "text",
    [
        "port",
        "port 99999",
        "host 1.2.3",
        "tcp and",
        "(tcp",
        "tcp)",
        "src tcp",
        "frobnicate",
        "x" * 1001,
        "not " * 60 + "tcp",
    ],
)
def test_bad_filters_are_filter_errors(text: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(text)


def test_empty_filter_is_none() -> None:
    assert compile_filter(None) is None and compile_filter("  ") is None


def test_packet_info_reads_untrusted_bytes_without_raising() -> None:
    for junk in (
        b"",
        b"\x00" * 14,
        b"\xff" * 13,
        b"\x00" * 12 + b"\x08\x00" + b"\x45" * 10,
        bytes(range(256)) * 2,
    ):
        packet_info(junk)


async def test_a_journey_through_a_ring_to_another_core(autojump_clock: trio.testing.MockClock) -> None:
    """Two cores of one server in one process (software RSS: core 0 reads the port and
    dispatches): a frame for a flow core 1 owns ends its journey on core 0 at ring_enqueue and
    goes on from ring_dequeue on core 1, under the same frame key."""
    from dataclasses import replace

    from trio_yastack.dispatch._launcher import make_layouts
    from trio_yastack.dispatch._ring import SpscRing

    port_a, port_b = memory_wire(latency=0.001)
    layouts = make_layouts(2, multi_queue=False, ring_capacity=1 << 16)

    def other_side(ring: SpscRing) -> SpscRing:  # as a forked worker sees it: its own object
        return SpscRing.attach(ring.memory, doorbell_fd=ring.doorbell_fd)

    layouts[1] = replace(
        layouts[1],
        rings_out={peer: other_side(ring) for peer, ring in layouts[1].rings_out.items()},
        rings_in=[other_side(ring) for ring in layouts[1].rings_in],
    )
    journeys: list[Journey] = []
    async with (
        open_stack(port_a, ip=f"{SERVER}/24", seed=1, layout=layouts[0]) as core0,
        open_stack(port_a, ip=f"{SERVER}/24", seed=3, layout=layouts[1]) as core1,
        open_stack(port_b, ip=f"{CLIENT}/24", seed=2) as client,
    ):
        tracers = [
            CoreTracer(stack.core, stack.port, stack._loop, core_id=index, layout=layout)
            for index, (stack, layout) in enumerate(((core0, layouts[0]), (core1, layouts[1])))
        ]
        tracers[0].subscribe(TraceSubscription(journeys.append, compile_filter("tcp"), JOURNEYS["in"]))
        tracers[1].subscribe(TraceSubscription(journeys.append, compile_filter("tcp"), JOURNEYS["in"]))
        listeners = [core0.tcp_listen(80), core1.tcp_listen(80)]
        accepted_on = [0, 0]

        async def accept(index: int) -> None:
            while True:
                stream = await listeners[index].accept()
                accepted_on[index] += 1
                assert await stream.receive_some() == b"hi"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept, 0)
            nursery.start_soon(accept, 1)
            for _ in range(8):
                stream = await client.tcp_connect(SERVER, 80)
                await stream.send_all(b"hi")
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        for tracer in tracers:
            tracer.close()
    assert accepted_on[1] > 0, accepted_on  # some flows belong to core 1
    sent = {j.key: j for j in journeys if j.core == 0 and layers(j)[-1] == "ring_enqueue"}
    arrived = [j for j in journeys if j.core == 1 and layers(j)[0] == "ring_dequeue"]
    assert sent and arrived
    joined = [(sent[j.key], j) for j in arrived if j.key in sent]
    assert joined
    first, second = joined[0]
    assert layers(first)[:3] == ["rx_burst", "dispatch", "ring_enqueue"]
    assert "core 1" in first.hops[1].note
    assert in_order(layers(second), ["ring_dequeue", "ether_input", "ip_input", "tcp_input"])
    assert all(hop.core == 1 for hop in second.hops)
    for layout in layouts:
        assert all(
            type(ring).__name__ == "SpscRing" for ring in [*layout.rings_out.values(), *layout.rings_in]
        )
    for layout in reversed(layouts):  # core 1's objects attach to what core 0's own: closed first
        for ring in [*layout.rings_out.values(), *layout.rings_in]:
            ring.close()
