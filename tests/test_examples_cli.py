"""Tier 5, as a user runs things: the `yastack demo` command and the example script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent


def test_yastack_demo_command_runs_the_whole_journey() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_yastack", "demo", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ARP who-has 198.18.0.1 tell 198.18.0.2" in out
    assert "ICMP echo reply" in out
    assert "frag id" in out
    assert "ICMP port unreachable -> ECONNREFUSED" in out
    assert "came back whole" in out
    summary = out.splitlines()[-1]
    assert "'pings_answered': 3" in summary and "'datagrams_echoed': 3" in summary
    assert "'fragmented_echoed': 1" in summary


def test_demo_rejects_a_bad_loss_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_yastack", "demo", "--loss", "1.5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "probability" in result.stderr


def test_udp_echo_example(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("udp_echo_example", ROOT / "examples" / "udp_echo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trio.run(module.main, clock=trio.testing.MockClock(autojump_threshold=0))
    out = capsys.readouterr().out
    for index in range(5):
        assert f"echoed b'hello {index}'" in out
    assert "ping 198.18.0.1" in out


def test_trio_echo_example(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's example: trio.serve_tcp and trio.open_tcp_stream, unmodified, over two stacks."""
    spec = importlib.util.spec_from_file_location("trio_echo_example", ROOT / "examples" / "trio_echo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trio.run(module.main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert capsys.readouterr().out.strip() == "echoed: hello over the bypass stack"
