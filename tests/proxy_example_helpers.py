"""Running the example proxy configs for real: ``yastack proxy``, its backends and its clients, each
a process inside a private network namespace the test made (``netns`` fixture).

Every wait here has a bound: programs are waited for on the lines they print
(:meth:`NamespaceProgram.wait_for_line`), state on a condition polled in a bounded loop
(:func:`poll`), clients on their exit (``timeout=``).  Every process started is ended by its PID
(:meth:`Program.stop`: SIGTERM, a bounded wait, then SIGKILL); the namespace's own close does the
same for anything a failing test left behind, then deletes the namespace.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tap_helpers import NamespaceProgram

from trio_yastack.nic.netns import NetworkNamespace

__all__ = [
    "ACCESS_LOG",
    "ADMIN",
    "EXAMPLES",
    "REPO",
    "Program",
    "ProxyProcess",
    "admin",
    "clusters",
    "curl",
    "curl_status",
    "hello_backend",
    "poll",
    "stats",
]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "proxy"
ADMIN = "http://127.0.0.1:9901"
#: how long a stop (SIGTERM) may take before SIGKILL
STOP_TIMEOUT = 10.0

#: Envoy's default access log format (``config/accesslog/v3`` DEFAULT_FORMAT), one line per request
ACCESS_LOG = re.compile(
    r"\[(?P<start_time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" (?P<response_code>\d{3}) (?P<response_flags>\S+) '
    r"(?P<bytes_received>\d+) (?P<bytes_sent>\d+) (?P<duration>\d+) (?P<upstream_service_time>\d+|-) "
    r'"(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)"\n?'
)

T = TypeVar("T")


class Program(NamespaceProgram):
    """A program in the namespace (output drained by a thread), ended by its PID."""

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """``signum`` to the program (if it still runs), up to ``timeout`` s for it to exit, then
        SIGKILL; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait(timeout)


class ProxyProcess(Program):
    """``yastack proxy -c CONFIG OPTIONS`` in the namespace, ready (``# proxy ready`` printed)."""

    @classmethod
    def start(
        cls, namespace: NetworkNamespace, config: Path | str, *options: str, cwd: Path | None = None
    ) -> ProxyProcess:
        """Start it and wait for ``# proxy ready``; with ``cwd`` it runs there (``env -C`` execs
        it, so the PID is still the proxy's)."""
        command = [sys.executable, "-m", "trio_yastack", "proxy", "-c", str(config), *options]
        if cwd is not None:
            command = ["env", "-C", str(cwd), *command]
        proxy = cls(namespace, command)
        try:
            proxy.wait_for_line("# proxy ready")
        except BaseException:
            proxy.stop(signal.SIGKILL)
            raise
        return proxy

    def drain(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """``signum`` (checked to go to the proxy), the drain lines awaited; the exit status."""
        self.send_signal(signum, b"trio_yastack")
        self.wait_for_line(f"# {signum.name}: draining", timeout=timeout)
        self.wait_for_line("# drained; exiting", timeout=timeout)
        return self.wait(timeout)


def hello_backend(namespace: NetworkNamespace, address: str, port: int) -> Program:
    """hypercorn serving ``examples/hello.py`` on ``address:port`` (kernel sockets), ready.

    ``--workers 0``: hypercorn serves in its own process (its default, one worker, is a child
    process that a SIGKILL of the parent would leave serving, and that no PID we hold names)."""
    backend = Program(
        namespace,
        [sys.executable, "-m", "hypercorn", "examples.hello:app", "--bind", f"{address}:{port}",
         "--workers", "0", "--error-logfile", "-", "--log-level", "info"],
    )  # fmt: skip
    try:
        backend.wait_for_line(f"Running on http://{address}:{port}")
    except BaseException:
        backend.stop(signal.SIGKILL)
        raise
    return backend


def curl(namespace: NetworkNamespace, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """curl on the kernel side of ``namespace`` (``--max-time timeout``)."""
    return namespace.run(["curl", "-sS", "--max-time", str(timeout), *args], timeout=timeout + 20)


def curl_status(namespace: NetworkNamespace, *args: str, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of one request, which must complete (curl exit 0)."""
    result = curl(namespace, "-w", "\n%{response_code}", *args, timeout=timeout)
    assert result.returncode == 0, (args, result.returncode, result.stderr)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def admin(namespace: NetworkNamespace, path: str, *, method: str = "GET") -> str:
    """The body of a 200 from the admin endpoint at 127.0.0.1:9901."""
    status, body = curl_status(namespace, "-X", method, f"{ADMIN}{path}")
    assert status == 200, (path, status, body)
    return body


def stats(namespace: NetworkNamespace) -> dict[str, int]:
    """``GET /stats`` as ``{name: value}``."""
    out: dict[str, int] = {}
    for line in admin(namespace, "/stats").splitlines():
        name, _, value = line.rpartition(": ")
        if name:
            out[name] = int(value)
    return out


def clusters(namespace: NetworkNamespace) -> dict[str, dict[str, str]]:
    """``GET /clusters`` host lines as ``{"cluster::host:port": {stat: value}}``."""
    out: dict[str, dict[str, str]] = {}
    for line in admin(namespace, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[1] != "default_priority":
            out.setdefault(f"{parts[0]}::{parts[1]}", {})[parts[2]] = parts[3]
    return out


def poll(condition: Callable[[], T], what: str, timeout: float, interval: float = 0.1) -> T:
    """``condition()`` once it is truthy, calling it at most every ``interval`` s for up to
    ``timeout`` s (a bounded poll of state, not a guess at how long something takes)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        time.sleep(interval)
