"""Acceptance for the journey of a packet, against the Linux kernel: ``yastack serve --trace``,
``--break`` under a scripted pdb, ``yastack trace``, ``capture`` (read by tshark) and ``stat``
on a 2-core server, each with kernel-side curl in a private network namespace.

Servers are waited for on the lines they print, clients on their exit or on the lines they
print; every wait has a bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tap_helpers import STACK_ADDRESS, NamespaceProgram, requires_netns

from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.tls.certs import make_ca

pytestmark = [requires_netns, pytest.mark.netns]

YASTACK = [sys.executable, "-m", "trio_yastack"]
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONBREAKPOINT"}, "PYTHONUNBUFFERED": "1"}


def serve(namespace: NetworkNamespace, control: Path, *args: str, stdin: bool = False) -> NamespaceProgram:
    server = NamespaceProgram(
        namespace,
        [
            *YASTACK,
            "serve",
            "examples/hello.py:app",
            "--log-level",
            "warning",
            "--control",
            str(control),
            *args,
        ],
        stdin=stdin,
        env=ENV,
    )
    server.wait_for_line("# try:")
    return server


def stop(server: NamespaceProgram) -> str:
    server.send_signal(signal.SIGTERM, b"trio_yastack")
    assert server.wait(timeout=30) == 0, server.output
    assert "Traceback" not in server.output, server.output
    return server.output


def curl(namespace: NetworkNamespace, *args: str) -> str:
    result = namespace.run(["curl", "-sS", "--max-time", "20", *args], timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def journeys_in(output: str) -> list[dict[str, Any]]:
    """The JSON journeys (``--trace-json``, ``yastack trace --json``) among other lines."""
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"id"')]


def layers(journey: dict[str, Any]) -> list[str]:
    return [hop["layer"] for hop in journey["hops"]]


def test_journey_in_and_out_of_one_request(netns: NetworkNamespace, tmp_path: Path) -> None:
    """``serve --trace --journey in`` prints the request's data segment from the driver to the
    app; ``yastack trace --journey out`` on the same server shows the response going out."""
    control = tmp_path / "ctl"
    server = serve(
        netns, control, "--bind", "8000", "--trace", "tcp port 8000", "--journey", "in", "--trace-json"
    )
    tracer = NamespaceProgram(
        netns,
        [*YASTACK, "trace", "--control", str(control), "--journey", "out", "--json", "tcp src port 8000"],
        env=ENV,
    )
    tracer.wait_for_line("# tracing out journeys on 1 core(s)")
    body = curl(netns, f"http://{STACK_ADDRESS}:8000/json")
    assert json.loads(body)["message"] == "hello from trio_yastack"
    tracer.wait_for_line('"layer": "send"')  # the response's journey has been printed
    tracer.send_signal(signal.SIGINT, b"trio_yastack")
    assert tracer.wait(timeout=30) == 0, tracer.output
    output = stop(server)

    incoming = journeys_in(output)
    assert all(journey["direction"] == "in" for journey in incoming)
    request = [j for j in incoming if "sbappend" in layers(j)]
    assert request, output
    first = request[0]
    assert layers(first)[:4] == ["rx_burst", "ether_input", "ip_input", "tcp_input"]
    assert layers(first)[-3:] == ["sbappend", "recv", "app"] or layers(first)[-4:] == [
        "sbappend",
        "accept",
        "recv",
        "app",
    ]
    tcp_input = next(hop for hop in first["hops"] if hop["layer"] == "tcp_input")
    assert tcp_input["note"].startswith("ESTABLISHED -> ESTABLISHED"), tcp_input
    assert "length 8" in first["summary"] or "length" in first["summary"]
    assert any("accept" in layers(j) for j in incoming)  # the handshake's last ACK reached accept
    # the connection's own task in the ASGI server (_Server.handle, one task per connection)
    assert any(j["hops"][-1]["note"].endswith("'handle'") for j in request), [j["hops"][-1] for j in request]

    outgoing = journeys_in(tracer.output)
    assert outgoing and all(journey["direction"] == "out" for journey in outgoing)
    response = [j for j in outgoing if layers(j)[0] == "send"]
    assert response, tracer.output
    assert layers(response[0]) == [
        "send",
        "tcp_output",
        "ip_output",
        "arpresolve",
        "ether_output",
        "tx_burst",
    ]


def test_journey_with_tls(netns: NetworkNamespace, tmp_path: Path) -> None:
    """Over HTTPS the TLS hops appear: the ClientHello's bytes end in tls_handshake, the
    response leaves through tls_write then send."""
    ca = make_ca("journey test CA")
    leaf = ca.issue([STACK_ADDRESS])
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "cert.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    tls = ["--certfile", str(tmp_path / "cert.pem"), "--keyfile", str(tmp_path / "key.pem")]
    trace = ["--trace", "tcp port 8443", "--journey", "tls", "--trace-json"]
    server = serve(netns, tmp_path / "ctl", "--bind", "8443", *tls, *trace)
    body = curl(
        netns, "--http1.1", "--cacert", str(tmp_path / "ca.pem"), f"https://{STACK_ADDRESS}:8443/json"
    )
    assert json.loads(body)["scheme"] == "https"
    server.wait_for_line('"tls_write"')
    journeys = journeys_in(stop(server))
    assert journeys and all(j["tls"] for j in journeys)
    hello = [j for j in journeys if j["direction"] == "in" and layers(j)[-1] == "tls_handshake"]
    assert hello and "recv" in layers(hello[0]) and layers(hello[0])[0] == "rx_burst"
    written = [j for j in journeys if j["direction"] == "out" and layers(j)[0] == "tls_write"]
    assert (
        written and layers(written[0])[1:3] == ["send", "tcp_output"] and layers(written[0])[-1] == "tx_burst"
    )


def test_break_at_tcp_input_under_pdb(netns: NetworkNamespace, tmp_path: Path) -> None:
    """``--break tcp_input`` stops in pdb (commands from a pipe, as a script) with the
    segment's fields readable; ``q`` turns breakpoints off and the request completes."""
    trace = ["--trace", "tcp dst port 8000 and syn", "--break", "tcp_input"]
    server = serve(netns, tmp_path / "ctl", "--bind", "8000", *trace, stdin=True)
    client = netns.popen(
        ["curl", "-sS", "--max-time", "30", f"http://{STACK_ADDRESS}:8000/"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait_for_line("# yastack: break at tcp_input")
        assert server.process.stdin is not None
        server.process.stdin.write("p ('SEGMENT', segment.dport, segment.flags, segment.payload_len)\n")
        server.process.stdin.write("p ('SOURCE', headers['ip']['src'], len(packet) >= 54)\n")
        server.process.stdin.write("q\n")
        server.process.stdin.flush()
        server.wait_for_line("# yastack: breakpoints off")
        out, _ = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert out == "Hello, world!"
    output = stop(server)
    assert "(Pdb)" in output
    assert "('SEGMENT', 8000, 'S', 0)" in output
    assert "('SOURCE', '198.18.0.1', True)" in output


def test_capture_is_read_by_tshark(netns: NetworkNamespace, tmp_path: Path) -> None:
    control = tmp_path / "ctl"
    server = serve(netns, control, "--bind", "8000")
    pcap = tmp_path / "capture.pcap"
    capture = NamespaceProgram(
        netns, [*YASTACK, "capture", "-o", str(pcap), "--control", str(control), "tcp port 8000"], env=ENV
    )
    capture.wait_for_line("# capturing on 1 core(s)")
    body = curl(netns, f"http://{STACK_ADDRESS}:8000/json")
    capture.send_signal(signal.SIGINT, b"trio_yastack")
    assert capture.wait(timeout=30) == 0, capture.output
    stop(server)
    fields = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.src", "-e", "tcp.srcport",
         "-e", "tcp.flags.str", "-e", "http.request.uri", "-e", "http.response.code", "-e", "tcp.payload"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    rows = [line.split("\t") for line in fields]
    assert rows and all(row[1] in ("8000",) or row[0] == "198.18.0.1" for row in rows)
    assert "·······S·" in rows[0][2] and rows[0][0] == "198.18.0.1"  # the client's SYN comes first
    assert any(row[3] == "/json" and row[0] == "198.18.0.1" for row in rows)
    assert any(row[4] == "200" and row[0] == STACK_ADDRESS for row in rows)
    payload = b"".join(
        bytes.fromhex(row[5]) for row in rows if row[0] == STACK_ADDRESS and len(row) > 5 and row[5]
    )
    assert body.encode() in payload  # the response body went out as captured


def test_stat_on_two_cores_matches_the_client(netns: NetworkNamespace, tmp_path: Path) -> None:
    """Both cores answer; the requests they counted are the requests curl sent."""
    control = tmp_path / "ctl"
    server = serve(netns, control, "--bind", "8000", "--cores", "2")
    sent = 12
    for _ in range(sent):
        assert curl(netns, f"http://{STACK_ADDRESS}:8000/") == "Hello, world!"
    result = subprocess.run(
        [*YASTACK, "stat", "--control", str(control), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    cores = json.loads(result.stdout)["cores"]
    assert [core["core"] for core in cores] == [0, 1] and all(core["cores"] == 2 for core in cores)
    assert sum(core["app"]["http"]["requests"] for core in cores) == sent
    accepted = sum(core["stack"]["tcp"]["counters"]["connections_accepted"] for core in cores)
    assert accepted == sent
    assert all(core["port"]["ipackets"] > 0 and core["port"]["rx_queue"] == core["core"] for core in cores)
    assert all(len(core["rings"]) == 2 for core in cores)
    text = subprocess.run(
        [*YASTACK, "stat", "--control", str(control)], capture_output=True, text=True, timeout=60, env=ENV
    ).stdout
    total_line = next(line for line in text.splitlines() if line.lstrip().startswith("all"))
    assert total_line.split()[-1] == str(sent)
    top = subprocess.run(
        [*YASTACK, "top", "--control", str(control), "--iterations", "1", "--interval", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert top.returncode == 0 and "rx pps" in top.stdout, top.stderr
    stop(server)
    assert not control.exists()
