"""The ASGI servers the ASGI benchmarks put side by side, each started the same way in namespaces
of its own, and the load (wrk) run against them.

- ``ours_stack``: ``yastack serve --server yastack`` on TAP ``yas0`` in a private namespace, the
  load on the kernel side of the TAP (the main job);
- ``ours_kernel``: the same server on kernel sockets (``yastack serve --kernel``: no stack, no
  NIC; one core), in a namespace joined by a veth pair to the load's (the server alone);
- ``hypercorn_kernel``: ``hypercorn --worker-class trio`` on kernel sockets, same veth set-up;
- ``uvicorn_kernel``: ``uvicorn --loop uvloop --http httptools`` on kernel sockets, same set-up
  (what Python users pick today);
- ``hypercorn_stack``: ``yastack serve --server hypercorn`` over the stack (the main job before
  issue 16, kept so the earlier table rows, hypercorn over the stack against hypercorn on kernel
  sockets, go on being measured).

Every address is in 198.18.0.0/15 inside namespaces made here; the server is 198.18.0.2:8000, the
load 198.18.0.1.  The load's namespace lets a new connection reuse a local port still in TIME_WAIT
(``net.ipv4.tcp_tw_reuse=1``) from ports 1024-65000: one load generator opening a thousand
connections a second holds more ports in TIME_WAIT (60 s) than ``connect()`` finds free by
default (it stalled at ~14 000, half of 32768-60999), and would measure its own port exhaustion.
With two CPUs, a one-core server is pinned to the first and the load to the
second (``taskset``), so "1 core" means one core and the load never steals it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from _common import parse_wrk, stop_process, tail, wait_until

from trio_yastack.nic.netns import NetworkNamespace, veth_pair

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "examples" / "hello.py") + ":app"
URL = "http://198.18.0.2:8000/"
BODY = "Hello, world!"
VENV_BIN = str(Path(sys.executable).parent)


class BenchFailure(RuntimeError):
    """A run that must not count: the server did not come up, crashed, or answered wrongly."""


def _yastack(server: str) -> Callable[[int, Path], list[str]]:
    def argv(cores: int, tmp: Path) -> list[str]:
        return [sys.executable, "-m", "trio_yastack", "serve", APP, "--nic", "tap:yas0", "--bind", "8000",
                "--cores", str(cores), "--server", server, "--control", str(tmp / "control")]  # fmt: skip

    return argv


def _ours_kernel(cores: int, tmp: Path) -> list[str]:
    return [sys.executable, "-m", "trio_yastack", "serve", APP, "--kernel", "--bind", "198.18.0.2:8000"]


def _hypercorn(cores: int, tmp: Path) -> list[str]:
    hypercorn = shutil.which("hypercorn", path=VENV_BIN) or "hypercorn"
    # --backlog 1024 as ours (`yastack serve`'s listen backlog): hypercorn's default 100 overflowed ~1100
    # times a 10 s churn round (SYN retransmits of 1 s each), which measured its backlog, not the server
    return [hypercorn, "--worker-class", "trio", "--workers", str(cores), "--backlog", "1024",
            "--bind", "198.18.0.2:8000", APP]  # fmt: skip


def _uvicorn(cores: int, tmp: Path) -> list[str]:
    uvicorn = shutil.which("uvicorn", path=VENV_BIN) or "uvicorn"
    return [uvicorn, "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
            "--workers", str(cores), "--host", "198.18.0.2", "--port", "8000",
            "--app-dir", str(ROOT / "examples"), "hello:app"]  # fmt: skip


@dataclass(frozen=True)
class Side:
    """One server of the comparison and how to start it."""

    name: str
    label: str
    over_stack: bool
    argv: Callable[[int, Path], list[str]]
    max_cores: int | None = None  # None: any number of cores


SIDES: dict[str, Side] = {
    side.name: side
    for side in (
        Side("ours_stack", "ours over the stack (TAP)", True, _yastack("yastack")),
        # `yastack serve --kernel` serves on one core (no SO_REUSEPORT process per core)
        Side("ours_kernel", "ours on kernel sockets (veth)", False, _ours_kernel, max_cores=1),
        Side("hypercorn_kernel", "hypercorn's trio worker on kernel sockets (veth)", False, _hypercorn),
        Side("uvicorn_kernel", "uvicorn (httptools + uvloop) on kernel sockets (veth)", False, _uvicorn),
        Side("hypercorn_stack", "hypercorn's trio worker over the stack (TAP)", True, _yastack("hypercorn")),
    )
}

#: ``BENCH_ASGI_BASELINE=DIR`` (a checkout of this repository with its own ``.venv``, e.g. the main
#: branch) adds ``base_stack`` and ``base_kernel``: that checkout's server run the same way, so a
#: change is measured against the code before it side by side in one run (``-P``: the checkout's
#: own package, not the one in the working directory)
BASELINE = os.environ.get("BENCH_ASGI_BASELINE")
if BASELINE:
    _python = str(Path(BASELINE) / ".venv" / "bin" / "python")

    def _base_stack(cores: int, tmp: Path) -> list[str]:
        return [_python, "-P", *_yastack("yastack")(cores, tmp)[1:]]

    def _base_kernel(cores: int, tmp: Path) -> list[str]:
        return [_python, "-P", *_ours_kernel(cores, tmp)[1:]]

    SIDES["base_stack"] = Side("base_stack", f"{BASELINE}'s server over the stack (TAP)", True, _base_stack)
    SIDES["base_kernel"] = Side(
        "base_kernel", f"{BASELINE}'s server on kernel sockets (veth)", False, _base_kernel, max_cores=1
    )
#: what bench_asgi.py runs without ``--sides``: the issue's four servers and hypercorn over the stack,
#: and the baseline's two when ``BENCH_ASGI_BASELINE`` is set (so ``run_all.py``, which passes no
#: ``--sides``, gets the before/after rows too; they were left out without a word)
DEFAULT_SIDES: tuple[str, ...] = (
    "ours_stack", "ours_kernel", "hypercorn_kernel", "uvicorn_kernel", "hypercorn_stack",
    *(("base_stack", "base_kernel") if BASELINE else ()),
)  # fmt: skip


@dataclass
class Running:
    """A server up and answering, and where its load runs."""

    side: Side
    client: NetworkNamespace  # where wrk, curl and ss run (the kernel side)
    serving: NetworkNamespace  # the server's namespace (the same as client over the stack)
    process: subprocess.Popen[bytes]
    log: Path
    control: Path  # the stack server's control directory (``yastack stat --control``)
    load_cpu: int | None  # the CPU the load is pinned to, or None

    def pinned(self, args: list[str]) -> list[str]:
        return args if self.load_cpu is None else ["taskset", "-c", str(self.load_cpu), *args]

    def get(self) -> str:
        """One request with curl; its body ('' when it failed)."""
        done = self.client.run(["curl", "-sS", "-m", "2", URL], timeout=10)
        return done.stdout if done.returncode == 0 else ""

    def wrk(self, seconds: int, connections: int = 50, close: bool = False) -> dict[str, float]:
        """``wrk -t1 -cN -dS --latency`` against the server, bounded by a timeout of its own."""
        args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", URL]
        if close:
            args[1:1] = ["-H", "Connection: close"]
        done = self.client.run(self.pinned(args), timeout=seconds + 60)
        if done.returncode:
            raise BenchFailure(f"{self.side.name}: wrk failed: {(done.stderr or done.stdout).strip()[-500:]}")
        if self.process.poll() is not None:
            raise BenchFailure(f"{self.side.name}: the server died under load:\n{tail(self.log)}")
        try:
            return parse_wrk(done.stdout)
        except ValueError as exc:
            raise BenchFailure(f"{self.side.name}: {exc}") from None


@contextlib.contextmanager
def running(side: Side, cores: int, tmp: Path, cpus: tuple[int, int] | None) -> Iterator[Running]:
    """``side``'s server started in namespaces of its own, answering ``GET /`` with the right body;
    stopped by its PID (SIGINT, then SIGKILL) and the namespaces deleted at the end."""
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(NetworkNamespace("yasb"))
        for knob in ("net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000"):
            client.run(["sysctl", "-q", "-w", knob], check=True)
        serving = client
        if not side.over_stack:
            serving = stack.enter_context(NetworkNamespace("yasb"))
            veth_pair(client, serving, left_address="198.18.0.1/24", right_address="198.18.0.2/24")
        (tmp / "control").mkdir(exist_ok=True)
        log = tmp / f"{side.name}.log"
        argv = side.argv(cores, tmp)
        if cpus is not None and cores == 1:
            argv = ["taskset", "-c", str(cpus[0]), *argv]
        with log.open("wb") as out:
            process = serving.popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        server = Running(side, client, serving, process, log, tmp / "control", cpus[1] if cpus else None)
        try:
            # Up when it answers (the first request also warms the stack's ARP entry).
            answered = wait_until(lambda: process.poll() is not None or server.get() == BODY, timeout=60)
            if process.poll() is not None or not answered:
                raise BenchFailure(f"{side.name}: the server did not come up:\n{tail(log)}")
            yield server
        finally:
            stop_process(process)
