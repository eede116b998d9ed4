"""IPv6 on the command line: ``yastack serve APP --ip 198.18.0.2/24 --ip 2001:2::2/64`` on a TAP in
a private namespace with IPv6 enabled there (the TAP keeps the kernel's IPv6 because the stack
has an IPv6 address), the kernel pinging the stack's IPv6 address, and ``yastack stat`` showing
the IPv6 addresses, the neighbour cache and the ip6/icmp6/nd6 counters.  Bad ``--ip`` lists are
one clear line before anything is opened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tap_helpers import STACK_ADDRESS, NamespaceProgram, requires_netns

from trio_yastack._open_stack import with_ipv6_on_tap
from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.nic.tap import parse_tap_spec

YASTACK = [sys.executable, "-m", "trio_yastack"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
KERNEL6, STACK6 = "2001:2::1", "2001:2::2"


def test_a_tap_spec_keeps_the_kernels_ipv6_when_the_stack_has_an_ipv6_address() -> None:
    both = ["198.18.0.2/24", f"{STACK6}/64"]
    assert with_ipv6_on_tap("tap:yas0", "198.18.0.2/24") == "tap:yas0"
    assert with_ipv6_on_tap("tap:yas0", both) == "tap:yas0,disable_ipv6=off"
    assert with_ipv6_on_tap("yas1,mtu=9000,faults=loss=0.1", both) == (
        "yas1,disable_ipv6=off,mtu=9000,faults=loss=0.1"
    )
    assert with_ipv6_on_tap("tap:yas0,disable_ipv6=on", both) == "tap:yas0,disable_ipv6=on"  # the user's
    assert with_ipv6_on_tap("af_packet:eth0", both) == "af_packet:eth0"
    assert not parse_tap_spec(str(with_ipv6_on_tap("tap:yas0", both))).disable_ipv6
    assert parse_tap_spec("tap:yas0").disable_ipv6


@pytest.mark.parametrize(
    ("ips", "message"),
    [
        (["198.18.0.2/24", "198.18.0.3/24"], "exactly one IPv4 address, not 2"),
        ([f"{STACK6}/64"], "exactly one IPv4 address, not 0"),
        (["198.18.0.2/24", "2001:2::zz/64"], "--ip/--gateway"),
    ],
)
def test_bad_ip_lists_are_one_clear_line(ips: list[str], message: str) -> None:
    args = [arg for ip in ips for arg in ("--ip", ip)]
    result = subprocess.run(
        [*YASTACK, "serve", "examples/hello.py:app", *args, "--nic", "tap:yas-none"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_ipv6_bind_without_an_ipv6_address_is_one_clear_line() -> None:
    result = subprocess.run(
        [*YASTACK, "serve", "examples/hello.py:app", "--ip", "198.18.0.2/24", "--bind", "[::]:8000",
         "--nic", "tap:yas-none"],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert result.returncode != 0
    assert "an IPv6 address needs one on the stack" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def netns6() -> Iterator[NetworkNamespace]:
    with NetworkNamespace() as namespace:
        for knob in ("all", "default"):
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.disable_ipv6=0"], check=True)
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.accept_dad=0"], check=True)
            namespace.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{knob}.router_solicitations=0"], check=True)
        yield namespace


@requires_netns
def test_serve_with_two_addresses_pinged_over_ipv6_and_stat_shows_ipv6(
    netns6: NetworkNamespace, tmp_path: Path
) -> None:
    control = tmp_path / "ctl"
    server = NamespaceProgram(
        netns6,
        [
            *YASTACK,
            "serve",
            "examples/hello.py:app",
            "--log-level",
            "warning",
            "--control",
            str(control),
            "--bind",
            "[::]:8000",
            "--ip",
            "198.18.0.2/24",
            "--ip",
            f"{STACK6}/64",
        ],
        env=ENV,
    )
    try:
        server.wait_for_line("# try:")
        netns6.run(["ip", "-6", "addr", "add", f"{KERNEL6}/64", "dev", "yas0", "nodad"], check=True)
        # -w: keep asking until a reply (the stack's DAD makes its address usable after a second)
        ping = netns6.run(["ping", "-6", "-n", "-c", "1", "-w", "15", STACK6], timeout=60)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        curl = netns6.run(["curl", "-sS", "--max-time", "20", f"http://{STACK_ADDRESS}:8000/"], timeout=60)
        assert curl.stdout == "Hello, world!", curl.stderr  # IPv4, on the dual-stack listener of [::]
        curl6 = netns6.run(
            ["curl", "-6", "-sS", "--max-time", "20", "-w", "|%{remote_ip}", f"http://[{STACK6}]:8000/"],
            timeout=60,
        )
        assert curl6.stdout == f"Hello, world!|{STACK6}", curl6.stderr
        text = subprocess.run(
            [*YASTACK, "stat", "--control", str(control)], capture_output=True, text=True, timeout=60, env=ENV
        )
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        ipv6 = next(line for line in lines if line.startswith("IPv6: "))
        assert f"{STACK6}/64" in ipv6 and "fe80::" in ipv6  # ours and the link-local one from the MAC
        assert any(line.split()[:1] == [KERNEL6] for line in lines)  # the kernel, in the neighbour cache
        icmp6 = next(line for line in lines if line.strip().startswith("icmp6:"))
        assert "echo_replies_sent" in icmp6
        snapshot = subprocess.run(
            [*YASTACK, "stat", "--control", str(control), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        core = json.loads(snapshot.stdout)["cores"][0]
        assert core["ip6"]["nd_cache"] >= 1
        assert core["ip6"]["layers"]["icmp6"]["counters"]["echo_replies_sent"] >= 1
    finally:
        server.send_signal(signal.SIGTERM, b"trio_yastack")
        assert server.wait(timeout=30) == 0, server.output
    assert "Traceback" not in server.output, server.output


@requires_netns
def test_serve_on_two_cores_over_both_families(netns6: NetworkNamespace) -> None:
    """``yastack serve --cores 2 --bind [::]:8000``: each core listens dual-stack, IPv6 flows are
    steered by the Toeplitz hash over their 36-byte 4-tuple; every curl -6 and the IPv4 one get
    the page, both cores accept some, and the per-core summary shows nothing lost between them."""
    server = NamespaceProgram(
        netns6,
        [*YASTACK, "serve", "examples/hello.py:app", "--log-level", "warning", "--cores", "2",
         "--bind", "[::]:8000", "--ip", "198.18.0.2/24", "--ip", f"{STACK6}/64"],
        env=ENV,
    )  # fmt: skip
    try:
        try_line = server.wait_for_line("# try:")
        assert "http://198.18.0.2:8000" in try_line, try_line  # (:: takes IPv4 too: the stack's address)
        netns6.run(["ip", "-6", "addr", "add", f"{KERNEL6}/64", "dev", "yas0", "nodad"], check=True)
        for _ in range(16):
            curl6 = netns6.run(
                ["curl", "-6", "-sS", "--max-time", "20", f"http://[{STACK6}]:8000/"], timeout=60
            )
            assert curl6.stdout == "Hello, world!", curl6.stderr
        curl = netns6.run(["curl", "-sS", "--max-time", "20", f"http://{STACK_ADDRESS}:8000/"], timeout=60)
        assert curl.stdout == "Hello, world!", curl.stderr
    finally:
        server.send_signal(signal.SIGTERM, b"trio_yastack")
        assert server.wait(timeout=30) == 0, server.output
    assert "Traceback" not in server.output, server.output
    per_core = json.loads(server.wait_for_line("# per core: ").split("# per core: ", 1)[1])
    assert sum(core["accepted"] for core in per_core) == 17 and all(core["accepted"] for core in per_core)
    assert all(core["dispatch"]["ring_drops"] == 0 for core in per_core), per_core
