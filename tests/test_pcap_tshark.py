"""tshark, an independent dissector, reads the tee's capture: expected protocols, good checksums,
nothing malformed.  (tshark comes from scripts/setup.sh; CI must have it.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_yastack._demo import run_demo
from trio_yastack.nic import read_pcap

TSHARK = shutil.which("tshark")
if TSHARK is None and os.environ.get("CI") == "true":
    raise RuntimeError("tshark is missing in CI: scripts/setup.sh installs it")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (scripts/setup.sh installs it)")

CHECKSUM_PREFS = [
    "-o",
    "ip.check_checksum:TRUE",
    "-o",
    "udp.check_checksum:TRUE",
    "-o",
    "tcp.check_checksum:TRUE",
]


def tshark_fields(path: Path, *fields: str, display_filter: str | None = None) -> list[list[str]]:
    command = [
        TSHARK or "tshark",
        "-r",
        str(path),
        "-n",
        *CHECKSUM_PREFS,
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]
    for field in fields:
        command += ["-e", field]
    if display_filter:
        command += ["-Y", display_filter]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("|") for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def demo_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The demo on a lossy wire, under a mock clock that jumps whenever all tasks wait."""
    path = tmp_path_factory.mktemp("capture") / "demo.pcap"
    lines: list[str] = []
    summary = trio.run(
        lambda: run_demo(pings=5, datagrams=5, loss=0.2, seed=7, pcap=str(path), emit=lines.append),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    return path, summary


def test_capture_shows_expected_protocols(demo_capture: tuple[Path, dict[str, int]]) -> None:
    path, summary = demo_capture
    assert summary["pings_answered"] == 5 and summary["datagrams_echoed"] == 5
    rows = tshark_fields(path, "frame.protocols")
    protocols = Counter(row[0] for row in rows)
    assert len(rows) == sum(1 for _ in read_pcap(path))
    assert any(p.startswith("eth:ethertype:arp") for p in protocols)
    assert any(p.startswith("eth:ethertype:ip:icmp") for p in protocols)
    assert any(p.startswith("eth:ethertype:ip:udp") for p in protocols)
    # ICMP port unreachable quoting our UDP datagram
    assert any(p.startswith("eth:ethertype:ip:icmp:ip:udp") for p in protocols)
    fragments = tshark_fields(path, "ip.id", display_filter="ip.flags.mf == 1 || ip.frag_offset > 0")
    assert len(fragments) >= 41  # the 59 907-byte datagram, at least one way


def test_capture_has_no_malformed_frames_or_bad_checksums(demo_capture: tuple[Path, dict[str, int]]) -> None:
    path, _ = demo_capture
    assert (
        tshark_fields(path, "frame.number", display_filter="_ws.malformed || _ws.expert.severity >= error")
        == []
    )
    statuses = tshark_fields(path, "ip.checksum.status", "udp.checksum.status", display_filter="ip")
    assert statuses
    for row in statuses:
        for status in row:
            # "1" is good; the quoted header inside an ICMP error appears as a second value
            assert set(status.split(",")) <= {"1", ""}, row
    icmp_bad = tshark_fields(path, "frame.number", display_filter="icmp.checksum.status == 0")
    assert icmp_bad == []
