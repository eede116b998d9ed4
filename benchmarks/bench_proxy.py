"""``yastack proxy`` against nginx proxying the same nginx backend, over kernel sockets and over the stack.

One private network namespace per round holds everything: a backend fast enough not to be the
bottleneck (nginx, one worker, ``GET /`` answered with the 6-byte ``hello\\n`` from memory) and, one
after the other, the three reverse proxies in front of it, each loaded by ``wrk -t1 -c50 --latency``
(HTTP/1.1 keep-alive) from the kernel side:

- ``nginx_proxy``, the peer: nginx, one worker, ``proxy_pass`` to an upstream block with a keep-alive
  pool (``keepalive 64``, ``proxy_http_version 1.1``, ``proxy_set_header Connection ""``), kernel
  sockets, 127.0.0.1;
- ``ours_kernel``: ``yastack proxy`` with a listener and a STATIC cluster on 127.0.0.1 (kernel sockets);
- ``ours_bypass``: ``yastack proxy --nic tap:yasp0 --ip 198.18.0.2/24``, listener on 198.18.0.2 (the
  stack's own address), cluster 198.18.0.1 (the TAP's kernel side): both legs cross the user-space
  stack, as in ``examples/proxy/bypass_stack.yaml``; wrk connects from the kernel side;
- ``backend_direct``, a reference: wrk on the backend itself, the ceiling the proxies are under;
- on two cores (``--cores 2`` rows, issue 20): ``nginx_proxy_2w`` (nginx, ``worker_processes 2``,
  ``worker_cpu_affinity auto``, ``reuseport``), ``ours_kernel_2c`` and ``ours_bypass_2c``
  (``yastack proxy --cores 2``: a process per core, each pinned to its CPU by the launcher,
  SO_REUSEPORT on kernel sockets; on the bypass path a TAP with a queue per core and a stack each).

With two CPUs or more the proxy under test (nginx's worker, or ours) gets one core to itself
(``taskset``) and wrk and the backend share another.  Reported per case: requests/s, p50/p99
latency, the proxy's CPU time per request (``/proc/PID/stat``) and how busy each of the two cores
was, as median (min-max) over the rounds, and the ratio ours/nginx for both of ours (the target is
0.2).  On a 2-CPU machine nginx fills the load core too (wrk and the backend), so its figure is a
floor of what it does on one core, and the ratio errs in our favour.  Any socket error, non-2xx
answer (wrk counts one slower than 5 s as a timeout error), proxy crash or unclean exit on
SIGTERM fails the run (exit status 1, after the JSON).

The two-core rows are not taskset: each proxy process (nginx's workers, our cores) sits on its own
CPU, so one of them shares CPU 1 with wrk and the backend (still pinned there).  On a 2-CPU machine
these rows measure the spread across processes more than the capacity of two cores: compare them
with each other (``ratio_*_2c``), and with the one-core rows of the same run.

With ``--syscalls`` (issue 20), after each one-core proxy's measured load (nginx's and ours on
kernel sockets), one more ``wrk`` run of ``--seconds`` with ``strace -c -f`` attached to the proxy
(nginx's worker, or our process) counts its system calls, reported per request (``syscalls``:
calls and failed calls by name; strace slows the proxy several times, which changes how many
events one ``epoll_wait`` returns, but not the sends and reads a request takes).

HTTP/2 rows (``--h2``, the default; ``--no-h2`` leaves them out): after each proxy's wrk load, the
same proxy process under ``h2load -t1 -c10 -m10 -D S`` (h2c with prior knowledge: 10 connections of
10 concurrent streams, bounded in time, and by the subprocess's timeout), cases ``*_h2``: nginx
listens ``http2`` on a second port (nginx 1.22's syntax: ``listen ... http2``; plain TCP, so prior
knowledge) and proxies to the same backend through the same keep-alive pool; ours serves h2c on its
one listener (``codec_type`` AUTO sniffs the preface).  h2load prints no percentiles: p50/p99 come
from its ``--log-file`` (one line per request, the microseconds until its response ended).  Any
failed, errored or timed-out request, or a non-2xx, fails the run as with wrk.

    python benchmarks/bench_proxy.py [--seconds S] [--rounds R] [--quick] [--no-cores] [--syscalls]
                                     [--h2 | --no-h2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import _required, machine, parse_wrk, spread
from bench_asgi import cpu_seconds

from trio_yastack.nic.netns import KERNEL_ADDRESS, STACK_ADDRESS, NetworkNamespace, netns_unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"

BODY = "hello\n"
BACKEND_PORT = 8080
NGINX_PROXY_PORT = 10001
NGINX_PROXY_H2_PORT = 10002  # nginx's h2c listener (nginx cannot sniff the preface on one port)
OURS_PORT = 10000
TAP_NAME = "yasp0"
TARGET_RATIO = 0.2
CASES = ("backend_direct", "nginx_proxy", "ours_kernel", "ours_bypass")
CASES_2C = ("nginx_proxy_2w", "ours_kernel_2c", "ours_bypass_2c")
#: the HTTP/2 cases: the same proxies (the same processes) under h2load
H2_SUFFIX = "_h2"
H2_STREAMS = (10, 10)  # h2load's connections, and concurrent streams on each
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)

BACKEND_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    server {{
        # every address of the benchmark's own namespace: 127.0.0.1, and 198.18.0.1 once the TAP
        # of the bypass case is up (it comes and goes with that proxy)
        listen {port} backlog=1024;
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
}}
"""

NGINX_PROXY_CONF = """\
worker_processes {workers};
{affinity}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024{reuseport};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        # h2c with prior knowledge (nginx 1.22: "listen ... http2"; "http2 on;" came in 1.25.1)
        listen 127.0.0.1:{h2_port} http2 backlog=1024{reuseport};
        http2_max_requests 1000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def ours_config(listen: str, upstream: str) -> dict[str, Any]:
    """The Envoy v3 bootstrap of ``yastack proxy``: one listener, one route, one STATIC cluster
    (no admin endpoint, no access log)."""
    return {
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": listen, "port_value": OURS_PORT}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress_http",
                        "route_config": {
                            "name": "local_route",
                            "virtual_hosts": [{
                                "name": "backend",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                            }],
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            },
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "backend",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "backend",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": upstream, "port_value": BACKEND_PORT}
                    }}}]}],
                },
            }],
        }
    }  # fmt: skip


#: (name, our case, nginx's case): each ratio reported, ours over nginx's in the same run
RATIOS = (
    ("kernel", "ours_kernel", "nginx_proxy"),
    ("bypass", "ours_bypass", "nginx_proxy"),
    ("kernel_2c", "ours_kernel_2c", "nginx_proxy_2w"),
    ("bypass_2c", "ours_bypass_2c", "nginx_proxy_2w"),
    ("kernel_2c_over_1c", "ours_kernel_2c", "ours_kernel"),
    ("kernel_h2", "ours_kernel_h2", "nginx_proxy_h2"),
    ("bypass_h2", "ours_bypass_h2", "nginx_proxy_h2"),
    ("kernel_2c_h2", "ours_kernel_2c_h2", "nginx_proxy_2w_h2"),
    ("bypass_2c_h2", "ours_bypass_2c_h2", "nginx_proxy_2w_h2"),
)


class BenchFailure(RuntimeError):
    """A case that must not count: errors, non-2xx, a crash, a wrong body."""


class Round:
    """One round's namespace, temp dir, CPU pinning and the processes started in it."""

    def __init__(
        self,
        namespace: NetworkNamespace,
        tmp: Path,
        cpus: tuple[int, int] | None,
        syscalls: bool = False,
        h2: bool = False,
    ) -> None:
        self.namespace = namespace
        self.tmp = tmp
        self.cpus = cpus  # (the proxy under test's core, wrk's and the backend's core)
        self.syscalls = syscalls  # count the one-core proxies' system calls too (--syscalls)
        self.h2 = h2  # each proxy under h2load too (the *_h2 cases)

    def pinned(self, args: Sequence[str], under_test: bool | None) -> list[str]:
        """``under_test=None``: several processes that pin themselves, one per CPU (not taskset)."""
        if self.cpus is None or under_test is None:
            return list(args)
        return ["taskset", "-c", str(self.cpus[0 if under_test else 1]), *args]

    def start(self, args: Sequence[str], log: Path, under_test: bool | None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return self.namespace.popen(
                self.pinned(args, under_test), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )

    def nginx(
        self, name: str, template: str, under_test: bool | None, workers: int = 1, **values: int
    ) -> subprocess.Popen[bytes]:
        prefix = self.tmp / name
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        several = workers > 1
        conf.write_text(
            template.format(
                prefix=prefix,
                workers=workers,
                affinity="worker_cpu_affinity auto;" if several else "",
                reuseport=" reuseport" if several else "",
                **values,
            )
        )
        args = [str(NGINX), "-p", f"{prefix}/", "-e", str(prefix / "error.log"), "-c", str(conf)]
        return self.start([*args, "-g", "daemon off;"], prefix / "stdout.log", under_test)

    def ours(
        self, name: str, listen: str, upstream: str, nic: list[str], cores: int = 1
    ) -> subprocess.Popen[bytes]:
        config = self.tmp / f"{name}.json"
        config.write_text(json.dumps(ours_config(listen, upstream), indent=1))
        log = self.tmp / f"{name}.log"
        process = self.start(
            [sys.executable, "-m", "trio_yastack", "proxy", "-c", str(config), "--drain-time", "1",
             "--cores", str(cores), *nic],
            log,
            under_test=True if cores == 1 else None,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while "# proxy ready" not in log.read_text(errors="replace"):
            if process.poll() is not None:
                raise BenchFailure(f"{name}: yastack proxy exited {process.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise BenchFailure(f"{name}: yastack proxy not ready after 60 s:\n{tail(log)}")
            time.sleep(0.05)
        return process

    def get(self, url: str, attempts: int = 100, h2: bool = False) -> None:
        """``GET url`` until it answers (bounded); the answer must be the backend's body
        (``h2``: over h2c with prior knowledge)."""
        curl = ["curl", "-sS", "-m", "2", *(["--http2-prior-knowledge"] if h2 else []), url]
        for _ in range(attempts):
            done = self.namespace.run(curl, timeout=10)
            if done.returncode == 0:
                if done.stdout != BODY:
                    raise BenchFailure(f"GET {url}: unexpected body {done.stdout[:200]!r}")
                return
            time.sleep(0.1)
        raise BenchFailure(f"GET {url}: no answer: {done.stderr.strip()}")

    def wrk(self, url: str, seconds: int, server: subprocess.Popen[bytes] | None) -> dict[str, float]:
        """``wrk -t1 -c50`` keep-alive on ``url``; ``server``'s CPU time per request if given."""
        before = cpu_seconds(server.pid) if server else 0.0
        busy_before = core_times()
        args = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "5s", "--latency", url]
        done = self.namespace.run(self.pinned(args, under_test=False), timeout=seconds + 60)
        busy_after = core_times()
        after = cpu_seconds(server.pid) if server else 0.0
        out = done.stdout
        if done.returncode or "Requests/sec" not in out:
            raise BenchFailure(f"wrk {url} failed ({done.returncode}):\n{out[-2000:]}\n{done.stderr[-2000:]}")
        result = parse_wrk(out)
        requests = result["requests"]
        if server:
            result["cpu_us_per_request"] = (after - before) / max(requests, 1) * 1e6
        if self.cpus is not None:  # how busy each core was (anything on it, softirqs included)
            for key, cpu in (("proxy_core_busy", self.cpus[0]), ("load_core_busy", self.cpus[1])):
                (busy0, total0), (busy1, total1) = busy_before[cpu], busy_after[cpu]
                result[key] = (busy1 - busy0) / max(total1 - total0, 1)
        if result["socket_errors"] or result["non_2xx"] or not requests:
            raise BenchFailure(f"wrk {url}: {result}\n{out[-2000:]}")
        if server and server.poll() is not None:
            raise BenchFailure(f"{url}: the proxy exited ({server.returncode}) during the load")
        return result

    def h2load(self, url: str, seconds: int, server: subprocess.Popen[bytes]) -> dict[str, float]:
        """``h2load`` (h2c prior knowledge, :data:`H2_STREAMS`) on ``url`` for ``seconds``: the
        same figures as :meth:`wrk`, p50/p99 from its per-request log."""
        log = self.tmp / "h2load.log"
        log.unlink(missing_ok=True)
        clients, streams = H2_STREAMS
        before = cpu_seconds(server.pid)
        busy_before = core_times()
        args = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{seconds}", f"--log-file={log}", url]
        done = self.namespace.run(self.pinned(args, under_test=False), timeout=seconds + 60)
        busy_after = core_times()
        after = cpu_seconds(server.pid)
        out = done.stdout
        if done.returncode or "finished in" not in out:
            raise BenchFailure(
                f"h2load {url} failed ({done.returncode}):\n{out[-2000:]}\n{done.stderr[-2000:]}"
            )
        try:
            result = parse_h2load(out, log.read_text() if log.exists() else "")
        except ValueError as exc:  # a report without its figures
            raise BenchFailure(f"h2load {url}: {exc}") from None
        result["cpu_us_per_request"] = (after - before) / max(result["requests"], 1) * 1e6
        if self.cpus is not None:
            for key, cpu in (("proxy_core_busy", self.cpus[0]), ("load_core_busy", self.cpus[1])):
                (busy0, total0), (busy1, total1) = busy_before[cpu], busy_after[cpu]
                result[key] = (busy1 - busy0) / max(total1 - total0, 1)
        if result["socket_errors"] or result["non_2xx"] or not result["requests"]:
            raise BenchFailure(f"h2load {url}: {result}\n{out[-2000:]}")
        if server.poll() is not None:
            raise BenchFailure(f"{url}: the proxy exited ({server.returncode}) during the h2 load")
        return result

    def count_syscalls(self, url: str, seconds: int, pid: int) -> dict[str, dict[str, float]]:
        """System calls per request of process ``pid`` (and its threads) under one more bounded
        ``wrk`` run on ``url``: ``strace -c -f`` attached for the run's length (then SIGINT, which
        makes it print its table), each count divided by wrk's requests."""
        out = self.tmp / f"strace-{pid}.txt"
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # attached (strace needs a moment per thread)
            measured = self.wrk(url, seconds, None)
        finally:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
        requests = max(measured["requests"], 1)
        table: dict[str, dict[str, float]] = {}
        for line in out.read_text().splitlines():
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) in (5, 6) and fields[0][0].isdigit() and fields[-1] != "total":
                errors = int(fields[4]) if len(fields) == 6 else 0
                table[fields[-1]] = {"calls": int(fields[3]) / requests, "errors": errors / requests}
        if not table:
            raise BenchFailure(f"strace -c -p {pid}: no table in {out.read_text()[-500:]!r}")
        return table


def parse_h2load(out: str, log: str) -> dict[str, float]:
    """h2load's report and ``--log-file`` as wrk's figures: requests (those done), req/s, p50/p99 in
    ms (from the log's third column, microseconds until the response ended), ``socket_errors``
    (failed + errored + timed out: h2load's own failures) and ``non_2xx``."""
    rate = float(_required(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    counts = _required(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    ).groups()
    _total, _started, done, _succeeded, failed, errored, timeout = (int(x) for x in counts)
    codes = _required(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out).groups()
    times = sorted(int(line.split("\t")[2]) for line in log.splitlines() if line.count("\t") >= 2)
    if not times:
        raise BenchFailure(f"h2load: an empty --log-file:\n{out[-1000:]}")

    def percentile(p: float) -> float:
        return times[min(len(times) - 1, int(len(times) * p))] / 1000

    return {
        "requests": done,
        "requests_per_s": rate,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "socket_errors": failed + errored + timeout,
        "non_2xx": int(codes[1]) + int(codes[2]) + int(codes[3]),
    }


def core_times() -> dict[int, tuple[int, int]]:
    """Per CPU, (busy, total) jiffies from ``/proc/stat`` (busy: all but idle and iowait)."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (sum(values) - values[3] - values[4], sum(values))
    return times


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def stop(process: subprocess.Popen[bytes], name: str, log: Path | None = None) -> None:
    """SIGTERM to a process we started, a bounded wait, SIGKILL; ours must exit 0 (drained)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise BenchFailure(f"{name}: still running 15 s after SIGTERM (killed)") from None
    if log is not None and process.returncode != 0:
        raise BenchFailure(f"{name}: exit status {process.returncode} after SIGTERM:\n{tail(log)}")


def run_round(
    seconds: int, cpus: tuple[int, int] | None, two_cores: bool, syscalls: bool = False, h2: bool = False
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """The four cases (and the three two-core ones) in one namespace of our own (deleted at the
    end, whatever happens); with ``h2``, each proxy's ``*_h2`` case too; and, with ``syscalls``,
    the one-core proxies' system calls per request."""
    results: dict[str, dict[str, float]] = {}
    counted: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp, NetworkNamespace("yasp") as namespace:
        os.chmod(tmp, 0o755)  # nginx's workers run as nobody
        bench = Round(namespace, Path(tmp), cpus, syscalls, h2)
        backend = bench.nginx("backend", BACKEND_CONF, under_test=False, port=BACKEND_PORT)
        bench.get(f"http://127.0.0.1:{BACKEND_PORT}/")
        results["backend_direct"] = bench.wrk(f"http://127.0.0.1:{BACKEND_PORT}/", seconds, None)

        for name, workers in (("nginx_proxy", 1), ("nginx_proxy_2w", 2))[: 2 if two_cores else 1]:
            peer = bench.nginx(
                name,
                NGINX_PROXY_CONF,
                under_test=True if workers == 1 else None,
                workers=workers,
                port=NGINX_PROXY_PORT,
                h2_port=NGINX_PROXY_H2_PORT,
                backend_port=BACKEND_PORT,
            )
            try:
                bench.get(f"http://127.0.0.1:{NGINX_PROXY_PORT}/")
                results[name] = bench.wrk(f"http://127.0.0.1:{NGINX_PROXY_PORT}/", seconds, peer)
                if h2:
                    url = f"http://127.0.0.1:{NGINX_PROXY_H2_PORT}/"
                    bench.get(url, h2=True)
                    # nginx's CPU: its workers' (the master only waits); cpu_seconds counts the tree
                    results[name + H2_SUFFIX] = bench.h2load(url, seconds, peer)
                if syscalls and workers == 1:
                    worker = nginx_worker(peer.pid)
                    counted[name] = bench.count_syscalls(
                        f"http://127.0.0.1:{NGINX_PROXY_PORT}/", seconds, worker
                    )
            finally:
                stop(peer, name)

        bypass = ["--nic", f"tap:{TAP_NAME}", "--ip", f"{STACK_ADDRESS}/24"]
        ours = [
            ("ours_kernel", "127.0.0.1", "127.0.0.1", [], 1),
            ("ours_bypass", STACK_ADDRESS, KERNEL_ADDRESS, bypass, 1),
        ]
        if two_cores:
            ours += [
                ("ours_kernel_2c", "127.0.0.1", "127.0.0.1", [], 2),
                ("ours_bypass_2c", STACK_ADDRESS, KERNEL_ADDRESS, bypass, 2),
            ]
        for name, listen, upstream, nic, cores in ours:
            proxy = bench.ours(name, listen, upstream, nic, cores)
            log = bench.tmp / f"{name}.log"
            try:
                bench.get(f"http://{listen}:{OURS_PORT}/")  # also warms ARP on the bypass path
                results[name] = bench.wrk(f"http://{listen}:{OURS_PORT}/", seconds, proxy)
                if h2:
                    bench.get(f"http://{listen}:{OURS_PORT}/", h2=True)
                    results[name + H2_SUFFIX] = bench.h2load(f"http://{listen}:{OURS_PORT}/", seconds, proxy)
                if syscalls and name == "ours_kernel":
                    counted[name] = bench.count_syscalls(f"http://{listen}:{OURS_PORT}/", seconds, proxy.pid)
            except BenchFailure as exc:
                with contextlib.suppress(BenchFailure):
                    stop(proxy, name)
                raise BenchFailure(f"{name}: {exc}\nyastack proxy's output:\n{tail(log)}") from None
            stop(proxy, f"yastack proxy ({name})", log)  # a clean drain: exit status 0
        stop(backend, "nginx backend")
    return results, counted


def nginx_worker(master: int) -> int:
    """The PID of nginx's (one) worker under ``master`` (``taskset`` execs nginx: the same PID)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise BenchFailure(f"nginx {master}: {len(children)} workers, expected 1")
    return int(children[0])


def pick_cpus() -> tuple[int, int] | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None
    return cpus[0], cpus[1]


def nginx_version() -> str:
    done = subprocess.run([str(NGINX), "-v"], capture_output=True, text=True)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2-second runs, 1 round (CI smoke)")
    parser.add_argument("--no-cores", action="store_true", help="without the two-core rows")
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="count the one-core proxies' system calls per request (strace)",
    )
    parser.add_argument(
        "--h2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the HTTP/2 rows too: each proxy under h2load, h2c prior knowledge (default: on)",
    )
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    tools = ("wrk", "curl") + (("strace",) if args.syscalls else ()) + (("h2load",) if args.h2 else ())
    missing = [tool for tool in tools if not shutil.which(tool)] + ([] if NGINX else ["nginx"])
    if reason or missing:
        sys.exit(f"bench_proxy: needs network namespaces, wrk, nginx and curl (h2load): {reason or missing}")
    seconds, rounds = (2, 1) if args.quick else (args.seconds, args.rounds)
    seconds, rounds = max(1, min(seconds, 120)), max(1, min(rounds, 20))  # every load bounded
    cpus = pick_cpus()
    names = CASES if args.no_cores else CASES + CASES_2C
    if args.h2:
        names += tuple(name + H2_SUFFIX for name in names if name != "backend_direct")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    syscalls: dict[str, list[dict[str, dict[str, float]]]] = {}
    failures: list[str] = []
    for number in range(rounds):
        try:
            measured_round, counted = run_round(seconds, cpus, not args.no_cores, args.syscalls, args.h2)
            for name, measured in measured_round.items():
                runs[name].append(measured)
            for name, table in counted.items():
                syscalls.setdefault(name, []).append(table)
        except (BenchFailure, subprocess.TimeoutExpired) as exc:
            failures.append(f"round {number + 1}: {exc}")
            print(f"bench_proxy: FAILED: round {number + 1}: {exc}", file=sys.stderr, flush=True)
    cases = {
        name: {key: spread(run[key] for run in case_runs) for key in case_runs[0]}
        for name, case_runs in runs.items()
        if case_runs
    }
    result: dict[str, Any] = {
        "benchmark": "proxy",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "nginx": nginx_version(),
        "load": f"wrk -t1 -c50 -d{seconds}s --latency, keep-alive, GET / (6-byte body from an nginx backend)",
        "load_h2": f"h2load -t1 -c{H2_STREAMS[0]} -m{H2_STREAMS[1]} -D{seconds}, h2c prior knowledge, GET /"
        if args.h2
        else None,
        "pinning": f"proxy under test on cpu {cpus[0]}, wrk and the backend on cpu {cpus[1]}"
        if cpus
        else "none (1 cpu)",
        "rounds": rounds,
        "target_ratio": TARGET_RATIO,
        "cases": cases,
        "failures": failures,
    }
    if syscalls:  # per case and system call: calls and failed calls per request, median over rounds
        result["syscalls_per_request"] = {
            name: {
                call: {
                    key: spread(t.get(call, {}).get(key, 0.0) for t in tables) for key in ("calls", "errors")
                }
                for call in sorted({call for t in tables for call in t})
            }
            for name, tables in syscalls.items()
        }
    complete = [i for i in range(rounds) if all(len(runs[name]) > i for name in names)]
    for mode, ours_case, peer_case in RATIOS:
        if ours_case in cases and peer_case in cases:
            ours = cases[ours_case]["requests_per_s"]["median"]
            peer = cases[peer_case]["requests_per_s"]["median"]
            result[f"ratio_{mode}"] = ours / peer
        if complete and ours_case in runs and peer_case in runs:
            per_round = (
                runs[ours_case][i]["requests_per_s"] / runs[peer_case][i]["requests_per_s"] for i in complete
            )
            result[f"ratio_{mode}_per_round"] = spread(per_round)
    print(json.dumps(result, indent=2))
    print(f"\n{'case':20} {'req/s (median, min-max)':>28} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}"
          f" {'busy: proxy core, load core':>28}")  # fmt: skip
    for name, case in cases.items():
        r = case["requests_per_s"]
        cpu_us = case.get("cpu_us_per_request")
        cpu = f"{cpu_us['median']:11.0f}" if cpu_us else f"{'-':>11}"
        busy = (
            f"{case['proxy_core_busy']['median']:14.0%} {case['load_core_busy']['median']:13.0%}"
            if "proxy_core_busy" in case
            else ""
        )
        print(f"{name:20} {r['median']:10.0f} ({r['min']:.0f}-{r['max']:.0f}) {'':4}"
              f"{case['p50_ms']['median']:8.2f} {case['p99_ms']['median']:8.2f} {cpu} {busy}")  # fmt: skip
    for mode, ours_case, peer_case in RATIOS:
        if f"ratio_{mode}" in result:
            ratio = result[f"ratio_{mode}"]
            if peer_case.startswith("nginx"):
                verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
                print(f"ratio {ours_case}/{peer_case}: {ratio:.3f} ({verdict} the {TARGET_RATIO} target)")
            else:
                print(f"ratio {ours_case}/{peer_case}: {ratio:.3f} (what the second core adds)")
    for name, calls in result.get("syscalls_per_request", {}).items():
        common = sorted(calls.items(), key=lambda item: -item[1]["calls"]["median"])
        shown = [
            f"{call} {c['calls']['median']:.2f}"
            + (f" ({c['errors']['median']:.2f} failed)" if c["errors"]["median"] else "")
            for call, c in common
            if c["calls"]["median"] >= 0.005
        ]
        print(f"system calls per request, {name}: " + ", ".join(shown))
    if failures:
        sys.exit(f"bench_proxy: {len(failures)} round(s) failed; nothing written")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "proxy.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
