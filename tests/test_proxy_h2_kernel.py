"""HTTP/2 to the proxy from real kernel-side clients (curl, h2load), in a private network namespace:
the proxy as a ``yastack proxy`` process on kernel sockets (``reverse_proxy.yaml``) and over the
user-space stack on a TAP (``bypass_stack.yaml``), hypercorn serving ``examples/hello.py`` behind
it over HTTP/1.1.  Every process is ended by its PID; every client call has a time bound.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from pathlib import Path

import pytest
from proxy_example_helpers import EXAMPLES, ProxyProcess, curl, hello_backend, stats
from tap_helpers import KERNEL_ADDRESS, STACK_ADDRESS, requires_netns

from trio_yastack.nic.netns import NetworkNamespace

pytestmark = [requires_netns, pytest.mark.netns]

H2LOAD_COUNTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
H2LOAD_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def _h2c_checks(netns: NetworkNamespace, base: str, tmp_path: Path, requests: int) -> None:
    """curl with prior knowledge (a GET, a 1 MB download, a 300 kB upload), then h2load."""
    result = curl(
        netns, "--http2-prior-knowledge", "-w", "\n%{http_version} %{response_code}", f"{base}/json"
    )
    assert result.returncode == 0, result.stderr
    body, _, tail = result.stdout.rpartition("\n")
    assert tail == "2 200", result.stdout
    assert json.loads(body)["message"] == "hello from trio_yastack"

    out = tmp_path / "stream.bin"
    nbytes = 1_000_000
    result = curl(
        netns, "--http2-prior-knowledge", "-o", str(out), "-w", "%{http_version} %{response_code}",
        f"{base}/stream?bytes={nbytes}", timeout=30,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "2 200"), result
    assert out.read_bytes() == (bytes(range(256)) * (nbytes // 256 + 1))[:nbytes]  # hello.pattern

    upload = tmp_path / "upload.bin"
    upload.write_bytes(bytes(range(251)) * 1200)
    result = curl(
        netns, "--http2-prior-knowledge", "--data-binary", f"@{upload}",
        "-H", "content-type: application/octet-stream", f"{base}/upload", timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["bytes"] == upload.stat().st_size, seen
    assert seen["sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest(), seen

    result = netns.run(["h2load", f"-n{requests}", "-c4", "-m8", f"{base}/json"], timeout=120)
    text = result.stdout
    assert result.returncode == 0, text + result.stderr
    assert "Application protocol: h2c\n" in text, text
    counts, codes = H2LOAD_COUNTS.search(text), H2LOAD_CODES.search(text)
    assert counts and codes, text
    assert tuple(map(int, counts.groups())) == (requests, requests, requests, requests, 0, 0), text
    assert tuple(map(int, codes.groups())) == (requests, 0, 0, 0), text


def test_h2c_on_kernel_sockets(netns: NetworkNamespace, tmp_path: Path) -> None:
    """``reverse_proxy.yaml`` (codec AUTO): curl and h2load speak h2c by prior knowledge; every
    stream is one request in the proxy's counters; HTTP/1.1 still works on the same port."""
    backend = hello_backend(netns, "127.0.0.1", 8080)
    proxy = ProxyProcess.start(netns, EXAMPLES / "reverse_proxy.yaml")
    base = "http://127.0.0.1:10000"
    requests = 400
    _h2c_checks(netns, base, tmp_path, requests)
    result = curl(netns, "-w", "\n%{http_version}", f"{base}/json")
    assert result.returncode == 0 and result.stdout.endswith("\n1.1"), result

    counters = stats(netns)
    assert counters["http.ingress_http.downstream_cx_http2_total"] == 3 + 4, counters
    assert counters["http.ingress_http.downstream_cx_http1_total"] == 1, counters
    assert counters["http.ingress_http.downstream_rq_2xx"] == 3 + requests + 1, counters
    assert proxy.drain(signal.SIGTERM) == 0, proxy.output
    assert "Traceback" not in proxy.output, proxy.output
    backend.stop()


def test_h2c_over_the_stack(netns: NetworkNamespace, tmp_path: Path) -> None:
    """``bypass_stack.yaml`` with ``--nic tap:yas0``: the same h2c checks with the proxy's
    downstream and upstream legs on the user-space stack."""
    proxy = ProxyProcess.start(
        netns, EXAMPLES / "bypass_stack.yaml", "--nic", "tap:yas0", "--ip", f"{STACK_ADDRESS}/24"
    )
    backend = hello_backend(netns, KERNEL_ADDRESS, 8080)
    requests = 200
    _h2c_checks(netns, f"http://{STACK_ADDRESS}:80", tmp_path, requests)
    counters = stats(netns)
    assert counters["http.bypass_http.downstream_cx_http2_total"] == 3 + 4, counters
    assert counters["http.bypass_http.downstream_rq_2xx"] == 3 + requests, counters
    assert proxy.drain(signal.SIGTERM) == 0, proxy.output
    assert "Traceback" not in proxy.output, proxy.output
    backend.stop()
