"""The stack's own cost of one short connection, sans-IO: what a `Connection: close` request costs
the serving stack, with no trio, no port and no server around it.

Two ``StackCore``s in one process: a client stack opens a connection the way curl does (SYN; the
handshake's ACK and the GET in one burst), the server stack under test answers as the runtime
and our ASGI server drive it (bursts through ``ether_input_burst`` with autocorking on, accept,
read, a response written and closed, the output of the turn), and the client reads the response
and closes (its FIN+ACK), which takes the server's side into TIME_WAIT.  Only the server stack's
calls are timed (thread CPU time), so the figure is the stack's share of a connection over a
port: SYN in -> SYN-ACK out, ACK+GET in, accept, response+FIN out, FIN+ACK in -> ACK out.

    python benchmarks/bench_conn_cycle.py [--connections N] [--rounds R] [--ports P] [--profile]
                                          [--time-wait-limit L] [--against DIR]

``--ports P`` has the client take its ports from P in turn (a new one each connection by
default), so that each SYN after the first P meets the pair's TIME_WAIT record on the server
(RFC 6191's reuse): what a server that closes first sees under load, its clients' ports coming
round again within 2MSL (wrk's 50 connections against our server over the TAP).
``--time-wait-limit L`` bounds the server's TIME_WAIT table at L records (the stack's default,
16 384, otherwise): with a new port each connection and more connections than L, every new
record ends the oldest, as on a server whose clients' kernels pick a new port each time (wrk's
``Connection: close`` over the TAP: ~4 600 connections a second fill 16 384 in four seconds).
``--profile`` runs cProfile over the server's calls only and prints the top of it.
``--against DIR`` compares this tree with another checkout's (``DIR/trio_yastack``; its native
part built, or copied from here: the C is the same unless a change touched it) side by side:
rounds alternate between the two, each in a fresh process (``PYTHONPATH``), and the medians of
both and their ratio are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import trio_yastack
from trio_yastack.stack import InterfaceConfig, StackConfig, StackCore, TcpConfig
from trio_yastack.stack.wire import MacAddress

CLIENT_IP, SERVER_IP = IPv4Address("198.18.0.2"), IPv4Address("198.18.0.1")
CLIENT_MAC, SERVER_MAC = MacAddress("02:00:00:00:00:02"), MacAddress("02:00:00:00:00:01")
REQUEST = b"GET / HTTP/1.1\r\nHost: 198.18.0.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n"
    b"connection: close\r\n\r\nHello, world!"
)


def make_pair(time_wait_limit: int = 0) -> tuple[StackCore, StackCore]:
    tcp = TcpConfig(time_wait_limit=time_wait_limit) if time_wait_limit else TcpConfig()
    client = StackCore(StackConfig(InterfaceConfig(CLIENT_MAC, CLIENT_IP), tcp=tcp), rng=random.Random(1))
    server = StackCore(StackConfig(InterfaceConfig(SERVER_MAC, SERVER_IP), tcp=tcp), rng=random.Random(2))
    client.arp._learn(int(SERVER_IP), bytes(SERVER_MAC), 0.0)
    server.arp._learn(int(CLIENT_IP), bytes(CLIENT_MAC), 0.0)
    server.autocork = True  # as the runtime runs it
    return client, server


def run(
    connections: int, profile: cProfile.Profile | None = None, n_ports: int = 0, time_wait_limit: int = 0
) -> tuple[list[float], int]:
    """CPU seconds the server stack spent on ``connections`` connections in each of its three
    turns (the SYN; the ACK and GET with the application's calls; the FIN), and the frames it sent.
    ``n_ports``: the client's ports in turn (0: a new one each time); ``time_wait_limit``: the
    server's TIME_WAIT bound (0: the default)."""
    client_core, server = make_pair(time_wait_limit)
    listener = server.tcp.listen(80, backlog=1024)
    # A new port each time (a random one may find the pair in TIME_WAIT, taken over by the SYN),
    # or n_ports in turn, each SYN after the first n_ports meeting its pair's TIME_WAIT record.
    ports = (
        itertools.cycle(range(10000, 10000 + n_ports)) if n_ports else iter(range(10000, 10000 + connections))
    )
    client_core.tcp.port_selector = lambda _ip, _port: next(ports)
    clock = time.thread_time
    spent = [0.0, 0.0, 0.0]
    sent = 0
    now = 0.0

    def serve(frames: list[bytes], turn: int) -> list[bytes]:
        """One turn of the runtime on the server: the burst in, the app's calls, the output."""
        nonlocal spent, sent
        if profile is not None:
            profile.enable()
        start = clock()
        server.begin_burst()
        server.ether_input_burst(frames, now)
        server.end_burst(now)
        if turn == 1:
            conn = listener.accept()
            assert conn is not None
            data = conn.receive(65536, now)
            assert data == REQUEST, data
            conn.send(RESPONSE, now)
            conn.close(now)
            server.run_pending_output(now)
        server.take_ready()
        server.run_timers(now)
        out = server.take_outbox()
        spent[turn] += clock() - start
        if profile is not None:
            profile.disable()
        sent += len(out)
        return [bytes(frame) for frame in out]

    def to_client(frames: list[bytes]) -> list[bytes]:
        for frame in frames:
            client_core.ether_input(frame, now)
        client_core.run_timers(now)
        return [bytes(frame) for frame in client_core.take_outbox()]

    for _ in range(connections):
        now += 0.001
        client = client_core.tcp.connect(int(SERVER_IP), 80, now)
        syn_ack = serve([bytes(f) for f in client_core.take_outbox()], 0)
        ack = to_client(syn_ack)  # the handshake's ACK
        client.send(REQUEST, now)
        ack_get = ack + [bytes(f) for f in client_core.take_outbox()]
        response = serve(ack_get, 1)
        # curl reads the response and its FIN in one wake-up and closes: its FIN carries the ACK
        client_core.begin_burst()
        for frame in response:
            client_core.ether_input(frame, now)
        while (data := client.receive(65536, now)) is not None and data:
            pass
        client.close(now)
        client_core.end_burst(now)
        fin = [bytes(f) for f in client_core.take_outbox()]
        assert len(fin) == 1, fin
        last = serve(fin, 2)
        to_client(last)
    stats = server.stats_tcp
    assert stats.connections_accepted == connections, stats.connections_accepted
    assert len(server.tcp.connections) == 0, len(server.tcp.connections)
    held = min(connections, n_ports) if n_ports else connections
    assert len(server.tcp.time_wait) == min(held, server.config.tcp.time_wait_limit)
    if n_ports and connections > n_ports:  # every later SYN reused its pair
        assert stats.connections_closed == connections - n_ports, stats.connections_closed
    return spent, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--ports", type=int, default=0, help="the client's ports in turn (0: a new one each time)"
    )
    parser.add_argument(
        "--time-wait-limit", type=int, default=0, help="the server's TIME_WAIT bound (0: the stack's default)"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--against", default=None, help="another checkout to compare with, side by side")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one round's figures
    args = parser.parse_args()
    if args.against:
        compare(args.against, args.connections, args.rounds, args.ports, args.time_wait_limit)
        return
    print(f"tree: {trio_yastack.__file__}", file=sys.stderr)
    # The collector as `yastack serve` sets it (trio_yastack._cli): start-up objects frozen, young
    # collections every 20 000 allocations; otherwise its passes over the TIME_WAIT records land on
    # whichever call allocates at the time.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    if args.profile:
        profile = cProfile.Profile()
        run(args.connections, profile, args.ports, args.time_wait_limit)
        pstats.Stats(profile).sort_stats("tottime").print_stats(35)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(45)
        return
    run(200, n_ports=args.ports, time_wait_limit=args.time_wait_limit)  # warm up
    if args.json:
        spent, frames = run(args.connections, n_ports=args.ports, time_wait_limit=args.time_wait_limit)
        print(json.dumps([seconds / args.connections * 1e6 for seconds in spent]))
        return
    per_conn: list[float] = []
    turns: list[list[float]] = [[], [], []]
    frames = 0
    for _ in range(args.rounds):
        spent, frames = run(args.connections, n_ports=args.ports, time_wait_limit=args.time_wait_limit)
        per_conn.append(sum(spent) / args.connections * 1e6)
        for turn, seconds in zip(turns, spent, strict=True):
            turn.append(seconds / args.connections * 1e6)
    frames_per = frames / args.connections
    syn, request, fin = (statistics.median(turn) for turn in turns)
    print(
        f"server stack CPU per connection: median {statistics.median(per_conn):.1f} us "
        f"(min {min(per_conn):.1f}, max {max(per_conn):.1f}; {args.rounds} x {args.connections}): "
        f"SYN {syn:.1f}, ACK+GET+accept+response+close {request:.1f}, FIN {fin:.1f}; "
        f"{frames_per:.1f} frames out per connection"
    )


def compare(other: str, connections: int, rounds: int, n_ports: int = 0, time_wait_limit: int = 0) -> None:
    """This tree and ``other`` in alternate rounds, each round a fresh process."""
    here = str(Path(__file__).resolve().parent.parent)
    trees = {"this tree": here, other: str(Path(other).resolve())}
    figures: dict[str, list[list[float]]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run(
                [sys.executable, __file__, "--json", "--connections", str(connections),
                 "--ports", str(n_ports), "--time-wait-limit", str(time_wait_limit)],
                env=env, check=True, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            figures[name].append(json.loads(out.stdout))
    medians = {}
    for name, runs in figures.items():
        totals = [sum(turns) for turns in runs]
        turns = [statistics.median(run[i] for run in runs) for i in range(3)]
        medians[name] = statistics.median(totals)
        print(
            f"{name}: {medians[name]:.1f} us per connection (min {min(totals):.1f}, max {max(totals):.1f}; "
            f"SYN {turns[0]:.1f}, ACK+GET+response {turns[1]:.1f}, FIN {turns[2]:.1f})"
        )
    ratio = medians[other] / medians["this tree"]
    print(
        f"{other} / this tree: {ratio:.3f} ({rounds} rounds of {connections}"
        f"{f', {n_ports} client ports' if n_ports else ''}"
        f"{f', TIME_WAIT bound {time_wait_limit}' if time_wait_limit else ''}, load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
