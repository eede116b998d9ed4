"""Acceptance: ASGI apps served over the bypass stack (``yastack serve`` and
:func:`trio_yastack.l7.serve_asgi`), met by real kernel-side clients, with each of the two
servers: ours (``--server yastack``, the default) and hypercorn's trio worker (``--server
hypercorn``).  Every test that serves runs once per server.

Every server runs in a private network namespace of its own: ``yastack serve`` makes the TAP
``yas0`` there (kernel side 198.18.0.1/24) and serves at 198.18.0.2; curl, wrk, h2load and a
wsproto client run on the kernel side of the same namespace.  Servers are waited for on the line
they print once listening, clients on their exit; every wait has a bound.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest
import trio
from serve_helpers import HTTP_URL, ROOT, SERVERS, Server, curl, curl_w, stop_cleanly
from tap_helpers import KERNEL_ADDRESS, STACK_ADDRESS, requires_netns, stack_on_tap

from trio_yastack.l7 import serve_asgi
from trio_yastack.l7.asgi import SUPPORTED_HYPERCORN, Config, check_hypercorn_version
from trio_yastack.nic.netns import NetworkNamespace
from trio_yastack.tls.certs import make_ca

pytestmark = [requires_netns, pytest.mark.netns]

HTTPS_URL = f"https://{STACK_ADDRESS}:8443"
BIG = 100_000_000


# -- helpers --------------------------------------------------------------------------------------
def load_hello() -> ModuleType:
    """``examples/hello.py`` as a module (for its ``pattern``)."""
    spec = importlib.util.spec_from_file_location("hello_example", ROOT / "examples" / "hello.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hello = load_hello()


@cache
def pattern_sha256(nbytes: int) -> str:
    """SHA-256 of what ``/stream?bytes=N`` sends, computed piece by piece."""
    digest = hashlib.sha256()
    for piece in hello.pattern(nbytes):
        digest.update(piece)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(partial(stream.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, nbytes: int) -> str:
    """Write ``nbytes`` random bytes to ``path``; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as stream:
        for offset in range(0, nbytes, 1 << 20):
            block = os.urandom(min(1 << 20, nbytes - offset))
            digest.update(block)
            stream.write(block)
    return digest.hexdigest()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 198.18.0.2 (an IP SAN) signed by it: (ca.pem, cert.pem, key.pem)."""
    ca = make_ca("trio_yastack test CA")
    leaf = ca.issue([STACK_ADDRESS])
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_pem.write_bytes(ca.cert_pem)
    cert_pem.write_bytes(leaf.cert_pem)
    key_pem.write_bytes(leaf.key_pem)
    return ca_pem, cert_pem, key_pem


# -- servers shared by a module's tests (each in a namespace of its own) ---------------------------
@pytest.fixture(scope="module", params=SERVERS)
def server_name(request: pytest.FixtureRequest) -> str:
    """Which server ``yastack serve --server NAME`` runs: the module's shared servers are made
    once per name, and a test that takes this fixture runs once per name."""
    return str(request.param)


@pytest.fixture(scope="module")
def http_server(server_name: str) -> Iterator[Server]:
    """``yastack serve examples/hello.py:app --bind 8000`` (plain HTTP/1.1 and h2c)."""
    with NetworkNamespace() as namespace:
        server = Server.yastack(
            namespace,
            "examples/hello.py:app",
            "--server",
            server_name,
            "--bind",
            "8000",
            "--log-level",
            "warning",
        )
        line = server.wait_for_line("# try:")
        assert line.strip() == f"# try: curl {HTTP_URL}/json"
        yield server
        stop_cleanly(server)


@dataclass
class TlsServer:
    server: Server
    ca: Path


@pytest.fixture(scope="module")
def https_server(server_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """TLS on 8443 (ALPN h2/http1.1) with a certificate for 198.18.0.2, plain HTTP on 8000."""
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("tls"))
    with NetworkNamespace() as namespace:
        server = Server.yastack(
            namespace,
            "examples/hello.py:app",
            "--server",
            server_name,
            "--bind",
            "8443",
            "--insecure-bind",
            "8000",
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
            "--log-level",
            "warning",
        )
        server.wait_for_line(f"# try: curl {HTTP_URL}/json")
        assert f"# try: curl -k {HTTPS_URL}/json\n" in server.output
        yield TlsServer(server, ca)
        stop_cleanly(server)


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """100 MB of random bytes and their SHA-256."""
    path = tmp_path_factory.mktemp("upload") / "random.bin"
    return path, random_file(path, BIG)


@dataclass
class Case:
    """How a client reaches one of the servers."""

    server: str  # the fixture
    base: str
    flags: list[str] = field(default_factory=list)
    version: str = "1.1"
    scheme: str = "http"


CASES = {
    "http-1.1": Case("http_server", HTTP_URL, ["--http1.1"]),
    "h2c-prior-knowledge": Case("http_server", HTTP_URL, ["--http2-prior-knowledge"], "2"),
    "https-1.1": Case("https_server", HTTPS_URL, ["--http1.1"], "1.1", "https"),
    "https-h2-alpn": Case("https_server", HTTPS_URL, ["--http2"], "2", "https"),
    "insecure-bind-beside-tls": Case("https_server", HTTP_URL, ["--http1.1"]),
}


def reach(request: pytest.FixtureRequest, case: Case) -> tuple[NetworkNamespace, list[str]]:
    """The namespace of ``case``'s server and curl's flags for it (``--cacert`` for TLS); the
    test takes ``server_name``, so the server is the one of its parameter."""
    served = request.getfixturevalue(case.server)
    if isinstance(served, TlsServer):
        return served.server.namespace, [*case.flags, "--cacert", str(served.ca)]
    return served.namespace, list(case.flags)


# -- 1. every endpoint with curl: http and https, HTTP/1.1 and HTTP/2 -----------------------------
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_endpoint_with_curl(
    request: pytest.FixtureRequest, server_name: str, case: Case, tmp_path: Path
) -> None:
    """curl on the kernel side gets every endpoint of the example right over plain HTTP/1.1, h2c
    with prior knowledge, HTTPS (certificate verified against the test's CA) with HTTP/1.1 and
    with h2 by ALPN, and a plain listener beside the TLS one: ``/`` byte for byte, ``/json`` says
    the HTTP version and scheme curl used, ``/stream`` and ``/upload`` carry 1 MB intact, an
    unknown path is a 404."""
    namespace, flags = reach(request, case)

    body, version, status = curl_w(namespace, *flags, f"{case.base}/")
    assert (body, version, status) == ("Hello, world!", case.version, 200)

    body, version, status = curl_w(namespace, *flags, f"{case.base}/json")
    assert (version, status) == (case.version, 200)
    document = json.loads(body)
    assert document["message"] == "hello from trio_yastack"
    assert document["http_version"] == case.version
    assert document["scheme"] == case.scheme
    assert document["client"].startswith(f"{KERNEL_ADDRESS}:")
    assert document["server"] == case.base.partition("://")[2]

    out = tmp_path / "stream.bin"
    result = curl(namespace, *flags, "-o", str(out), f"{case.base}/stream?bytes=1000000&chunk=10000")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size == 1_000_000
    assert file_sha256(out) == pattern_sha256(1_000_000)

    upload = tmp_path / "upload.bin"
    digest = random_file(upload, 1_000_000)
    body, version, status = curl_w(namespace, *flags, "--data-binary", f"@{upload}", f"{case.base}/upload")
    assert (version, status) == (case.version, 200)
    assert json.loads(body) == {"bytes": 1_000_000, "sha256": digest}

    body, version, status = curl_w(namespace, *flags, f"{case.base}/no/such/page")
    assert (version, status) == (case.version, 404)
    assert json.loads(body) == {"error": "not found", "path": "/no/such/page"}


def test_https_certificate_is_checked_by_curl(https_server: TlsServer) -> None:
    """The TLS listener really is TLS with the test's certificate: without the CA curl refuses
    it (exit 60), and plain HTTP to the TLS port gets no HTTP answer."""
    namespace = https_server.server.namespace
    untrusted = curl(namespace, f"{HTTPS_URL}/", timeout=10)
    assert untrusted.returncode == 60, (untrusted.returncode, untrusted.stderr)
    plain = curl(namespace, f"http://{STACK_ADDRESS}:8443/", timeout=10)
    assert plain.returncode != 0 or "Hello, world!" not in plain.stdout


# -- 2. 100 MB each way ---------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"], ids=["http-1.1", "h2c"])
def test_100mb_download(http_server: Server, flag: str, tmp_path: Path) -> None:
    """``/stream?bytes=100000000`` arrives whole and in order (SHA-256 of the example's pattern)
    over HTTP/1.1 and HTTP/2."""
    out = tmp_path / "download.bin"
    result = curl(
        http_server.namespace, flag, "-o", str(out), "-w", "%{http_version} %{response_code} %{time_total}",
        f"{HTTP_URL}/stream?bytes={BIG}", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    version_status, _, seconds = result.stdout.rpartition(" ")
    assert version_status == ("2 200" if "http2" in flag else "1.1 200")
    assert out.stat().st_size == BIG
    assert file_sha256(out) == pattern_sha256(BIG)
    print(f"100 MB download {flag}: {float(seconds):.2f} s (curl's time_total; reported, not asserted)")


@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"], ids=["http-1.1", "h2c"])
def test_100mb_upload(http_server: Server, upload_file: tuple[Path, str], flag: str) -> None:
    """100 MB of random bytes POSTed to ``/upload`` reach the app whole: it reports 100 000 000
    bytes and the file's SHA-256."""
    path, digest = upload_file
    body, version, status = curl_w(
        http_server.namespace, flag, "--data-binary", f"@{path}", f"{HTTP_URL}/upload"
    )
    assert (version, status) == ("2" if "http2" in flag else "1.1", 200)
    assert json.loads(body) == {"bytes": BIG, "sha256": digest}


# -- 3. load generators: wrk (HTTP/1.1 keep-alive) and h2load (HTTP/2) ----------------------------
def test_wrk_50_connections(
    http_server: Server, server_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wrk -t1 -c50 -d10s``: 50 keep-alive connections for 10 s with no socket errors and no
    non-2xx answers; the rate is reported."""
    result = http_server.namespace.run(["wrk", "-t1", "-c50", "-d10s", f"{HTTP_URL}/"], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    requests = re.search(r"(\d+) requests in ([\d.]+)s", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert requests and rate, out
    assert int(requests.group(1)) > 0, out
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert errors is None or set(errors.groups()) == {"0"}, out
    assert "Non-2xx or 3xx responses" not in out, out
    with capsys.disabled():
        print(f"\n[wrk -t1 -c50 -d10s, {server_name}] {requests.group(1)} requests, {rate.group(1)} req/s")


@pytest.mark.parametrize("scheme", ["h2c", "h2-tls"])
def test_h2load(
    request: pytest.FixtureRequest, server_name: str, scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``h2load -c10 -m10 -n2000``: 2000 HTTP/2 requests, 10 connections of 10 streams each, over
    h2c (prior knowledge) and over TLS with ALPN h2: every one succeeds with a 2xx."""
    if scheme == "h2c":
        namespace, url = request.getfixturevalue("http_server").namespace, f"{HTTP_URL}/"
    else:
        namespace, url = request.getfixturevalue("https_server").server.namespace, f"{HTTPS_URL}/"
    result = namespace.run(["h2load", "-c10", "-m10", "-n2000", url], timeout=60)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"Application protocol: {'h2c' if scheme == 'h2c' else 'h2'}\n" in out, out
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert counts and codes, out
    assert tuple(map(int, counts.groups())) == (2000, 2000, 2000, 2000, 0, 0), out
    assert tuple(map(int, codes.groups())) == (2000, 0, 0, 0), out
    finished = re.search(r"finished in (\S+), ([\d.]+) req/s", out)
    with capsys.disabled():
        print(f"\n[h2load -c10 -m10 -n2000 {scheme}, {server_name}] {finished.group(0) if finished else out}")


# -- 4. WebSocket echo ----------------------------------------------------------------------------
WS_CLIENT = r'''
"""A WebSocket client with wsproto on a plain kernel socket: echo one text and one binary message."""
import hashlib, json, socket, ssl, sys
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Message, RejectConnection, Request, TextMessage,
)

host, port, cafile = sys.argv[1], int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else None)
sock = socket.create_connection((host, port), timeout=10)
if cafile:
    sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=host)
ws = WSConnection(ConnectionType.CLIENT)
sock.sendall(ws.send(Request(host=f"{host}:{port}", target="/ws")))

def next_event(kinds):
    """The next event of one of ``kinds`` and its whole message (fragments joined)."""
    parts = []
    for _ in range(10_000):  # reads
        for event in ws.events():
            if isinstance(event, RejectConnection):
                raise SystemExit(f"rejected: {event.status_code}")
            if isinstance(event, Message):
                parts.append(event.data)
                if not event.message_finished:
                    continue
            if isinstance(event, kinds):
                return event, ("".join(parts) if isinstance(event, TextMessage) else b"".join(parts))
        data = sock.recv(65536)
        ws.receive_data(data or None)
    raise SystemExit("no event")

next_event(AcceptConnection)
text = "hello over the bypass stack \N{CHECK MARK} " * 1000
blob = bytes(range(256)) * 1024  # 256 KiB: several frames' worth
sock.sendall(ws.send(TextMessage(data=text)))
_, echoed_text = next_event(TextMessage)
sock.sendall(ws.send(BytesMessage(data=blob)))
_, echoed_blob = next_event(BytesMessage)
sock.sendall(ws.send(CloseConnection(code=1000)))
closed, _ = next_event(CloseConnection)
print(json.dumps({
    "text_ok": echoed_text == text,
    "bytes_ok": echoed_blob == blob,
    "bytes": len(echoed_blob),
    "sha256": hashlib.sha256(echoed_blob).hexdigest() == hashlib.sha256(blob).hexdigest(),
    "close_code": closed.code,
}))
'''


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_echo(
    request: pytest.FixtureRequest, server_name: str, scheme: str, tmp_path: Path
) -> None:
    """A wsproto client on a kernel socket opens ``/ws`` (plain, and over TLS), sends a 30 KB text
    message and a 256 KiB binary one and gets both back unchanged, then closes cleanly (1000)."""
    script = tmp_path / "ws_client.py"
    script.write_text(WS_CLIENT)
    if scheme == "ws":
        namespace, extra = request.getfixturevalue("http_server").namespace, ["8000"]
    else:
        tls: TlsServer = request.getfixturevalue("https_server")
        namespace, extra = tls.server.namespace, ["8443", str(tls.ca)]
    result = namespace.run([sys.executable, str(script), STACK_ADDRESS, *extra], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"text_ok": True, "bytes_ok": True, "bytes": 262144, "sha256": True, "close_code": 1000}


# -- 5, 6. graceful shutdown on SIGTERM and SIGINT ------------------------------------------------
def start_download(namespace: NetworkNamespace, url: str) -> tuple[subprocess.Popen[bytes], bytes]:
    """curl streaming ``url`` to a pipe, and the first bytes it wrote (so the response is under way)."""
    client = namespace.popen(
        ["curl", "-sS", "-N", "--max-time", "60", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert client.stdout is not None
    readable, _, _ = select.select([client.stdout], [], [], 30)
    assert readable, "no response bytes in 30 s"
    first = os.read(client.stdout.fileno(), 1 << 20)
    assert first, client.communicate(timeout=30)
    return client, first


@pytest.mark.parametrize("server_kind", SERVERS)
def test_sigterm_lets_a_running_request_finish(netns: NetworkNamespace, server_kind: str) -> None:
    """SIGTERM while a slow response (10 chunks, 0.2 s apart) is under way: the server says so,
    refuses new connections at once (curl: could not connect), lets the response finish whole
    (curl exit 0, the exact 200 000 bytes), then exits 0 without a traceback.  The graceful
    timeout is 10 minutes, longer than any wait here, so the exit can only come from the
    response's end, never from the timeout."""
    server = Server.yastack(
        netns, "examples/hello.py:app", "--server", server_kind, "--bind", "8000", "--graceful-timeout", "600"
    )
    server.wait_for_line("# try:")
    client, first = start_download(netns, f"{HTTP_URL}/stream?bytes=200000&chunk=20000&interval=0.2")

    server.signal(signal.SIGTERM)
    server.wait_for_line("# SIGTERM: shutting down gracefully", timeout=10)
    late = curl(netns, f"{HTTP_URL}/", timeout=5)
    rest, errors = client.communicate(timeout=30)
    code = server.wait(timeout=60)  # bounded; far below the graceful timeout

    assert late.returncode == 7, ("not refused after SIGTERM", late)  # 7: could not connect
    assert client.returncode == 0, errors
    assert len(first + rest) == 200_000
    assert first + rest == b"".join(hello.pattern(200_000))
    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output


@pytest.mark.parametrize("server_kind", SERVERS)
def test_graceful_timeout_cuts_off_a_request_that_runs_over(
    netns: NetworkNamespace, server_kind: str
) -> None:
    """With ``--graceful-timeout 1`` a response that would need ten more minutes (200 chunks, 3 s
    apart) is cut off: the server exits 0 without a traceback within a bounded wait the response
    itself could never meet, and curl got a true prefix of the pattern."""
    server = Server.yastack(
        netns, "examples/hello.py:app", "--server", server_kind, "--bind", "8000", "--graceful-timeout", "1"
    )
    server.wait_for_line("# try:")
    client, first = start_download(netns, f"{HTTP_URL}/stream?bytes=200000&chunk=1000&interval=3")

    server.signal(signal.SIGTERM)
    server.wait_for_line("# SIGTERM: shutting down gracefully", timeout=10)
    code = server.wait(timeout=60)  # the response alone would run for 600 s
    rest, _ = client.communicate(timeout=30)

    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output
    received = first + rest
    assert client.returncode != 0, "the response was not cut off"
    assert 0 < len(received) < 200_000
    assert received == b"".join(hello.pattern(200_000))[: len(received)]


@pytest.mark.parametrize("server_kind", SERVERS)
def test_sigint_exits_cleanly(netns: NetworkNamespace, server_kind: str) -> None:
    """The ``yastack`` console script (access log on stdout) serves a request, then on SIGINT
    (Ctrl-C) says so and exits 0 without a traceback or a KeyboardInterrupt."""
    server = Server.yastack(
        netns,
        "examples/hello.py:app",
        *("--server", server_kind, "--bind", "8000", "--access-log", "-"),
        console_script=True,
    )
    server.wait_for_line("# try:")
    body, version, status = curl_w(netns, f"{HTTP_URL}/")
    assert (body, version, status) == ("Hello, world!", "1.1", 200)
    server.wait_for_line('"GET / 1.1" 200', timeout=10)  # the access log line
    server.signal(signal.SIGINT)
    server.wait_for_line("# SIGINT: shutting down gracefully", timeout=10)
    code = server.wait(timeout=10)
    assert code == 0, server.output
    assert "Traceback" not in server.output and "KeyboardInterrupt" not in server.output, server.output


# -- 6b. --cores 2 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("server_kind", SERVERS)
def test_two_cores_serve_every_connection(netns: NetworkNamespace, server_kind: str) -> None:
    """``yastack serve --cores 2``: once both workers say they are running, 40 separate curls
    (new connections, spread over the cores by RSS) and one keep-alive curl of 20 requests all
    get ``Hello, world!``; SIGTERM stops both workers, the launcher exits 0 and its ``# per
    core:`` line shows both cores accepted connections, 41 in all."""
    server = Server.yastack(
        netns, "examples/hello.py:app", "--server", server_kind, "--bind", "8000", "--cores", "2"
    )
    server.wait_for_line("# try: curl")
    server.wait_for_count(f"Running on {HTTP_URL}", 2)
    loop = f"for i in $(seq 40); do curl -sS --max-time 10 {HTTP_URL}/ || exit 1; echo; done"
    result = netns.run(["sh", "-c", loop], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello, world!"] * 40
    keep_alive = curl(netns, *[f"{HTTP_URL}/"] * 20, timeout=30)
    assert keep_alive.returncode == 0, keep_alive.stderr
    assert keep_alive.stdout == "Hello, world!" * 20
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, server.output
    assert "Traceback" not in server.output, server.output
    [line] = [line for line in server.output.splitlines() if line.startswith("# per core: ")]
    per_core = json.loads(line.removeprefix("# per core: "))
    accepted = [core["accepted"] for core in per_core]
    assert sum(accepted) == 41 and all(count > 0 for count in accepted), per_core


# -- 7. the in-process API ------------------------------------------------------------------------
class LifespanApp:
    """An ASGI app that records its lifespan and says hello."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            for _ in range(10):
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
            return
        assert scope["type"] == "http"
        self.events.append(f"request {scope['http_version']}")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"13")]})
        await send({"type": "http.response.body", "body": b"Hello, world!"})


@pytest.mark.parametrize("server_kind", SERVERS)
async def test_serve_asgi_in_process(
    netns: NetworkNamespace, server_kind: Literal["yastack", "hypercorn"]
) -> None:
    """``serve_asgi(app, Config(), server=NAME)`` in a nursery over a stack on a TAP, for each
    server: hypercorn's default bind (127.0.0.1:8000) means the stack's own address, ``started``
    gets the URL, lifespan startup ran before it; kernel-side curl is served over HTTP/1.1 and
    h2c; the shutdown trigger stops it (the nursery exits) after the lifespan shutdown."""
    app = LifespanApp()
    stop = trio.Event()
    async with stack_on_tap(netns) as (_stack, _port):
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                urls = await nursery.start(
                    partial(serve_asgi, app, Config(), server=server_kind, shutdown_trigger=stop.wait)
                )
                assert urls == [HTTP_URL]
                assert app.events == ["startup"]
                for flag in ("--http1.1", "--http2-prior-knowledge"):
                    result = await trio.to_thread.run_sync(
                        partial(curl, netns, flag, "-w", " %{http_version}", f"{HTTP_URL}/", timeout=20),
                        abandon_on_cancel=True,
                    )
                    assert result.returncode == 0, result.stderr
                    assert result.stdout == f"Hello, world! {'2' if 'http2' in flag else '1.1'}"
                stop.set()
    assert app.events == ["startup", "request 1.1", "request 2", "shutdown"]


# -- 8. the hypercorn pin -------------------------------------------------------------------------
def test_hypercorn_pin_matches_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed hypercorn is within :data:`SUPPORTED_HYPERCORN`, which is exactly
    pyproject.toml's requirement; versions outside it are refused with a clear error."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    installed = check_hypercorn_version()
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [Requirement(text) for text in requirements if Requirement(text).name.lower() == "hypercorn"]
    assert len(pinned) == 1, requirements
    assert pinned[0].specifier == Requirement("hypercorn" + ",".join(SUPPORTED_HYPERCORN)).specifier
    assert Version(installed) in pinned[0].specifier

    # the module that defines it reads hypercorn's version through its own ``version``
    asgi = importlib.import_module(check_hypercorn_version.__module__)

    for outside in ("0.16.0", "0.19.0", "1.0"):
        assert Version(outside) not in pinned[0].specifier
        monkeypatch.setattr(asgi, "version", lambda _name, v=outside: v)
        with pytest.raises(RuntimeError, match=f"hypercorn {re.escape(outside)} is not supported"):
            check_hypercorn_version()
    for inside in ("0.17.0", "0.18.9"):
        assert Version(inside) in pinned[0].specifier
        monkeypatch.setattr(asgi, "version", lambda _name, v=inside: v)
        assert check_hypercorn_version() == inside


# -- 9. bad invocations ---------------------------------------------------------------------------
BAD = {
    "missing-file": (["nonexistent.py:app"], "no file nonexistent.py"),
    "missing-module": (["no_such_module_xyz:app"], "cannot import 'no_such_module_xyz'"),
    "missing-attribute": (["examples/hello.py:nothing"], "has no attribute 'nothing'"),
    "cores-0": (["examples/hello.py:app", "--cores", "0"], "at least 1"),
    "certfile-alone": (["examples/hello.py:app", "--certfile", "cert.pem"], "--certfile and --keyfile"),
    "keyfile-alone": (["examples/hello.py:app", "--keyfile", "key.pem"], "--certfile and --keyfile"),
}
# Was a bug (fixed): these were reported by a traceback (an ExceptionGroup from inside trio.run)
# instead of a one-line "yastack serve: ..." message, the checks happening after the NIC was open.
BAD_LATE = {
    "bind-unix": (["examples/hello.py:app", "--bind", "unix:/tmp/yas.sock"], "unix:/tmp/yas.sock"),
    "bind-port-out-of-range": (["examples/hello.py:app", "--bind", "99999"], "99999"),
    "bind-not-an-address": (["examples/hello.py:app", "--bind", "nonsense:80"], "nonsense:80"),
    "certfile-missing": (
        ["examples/hello.py:app", "--certfile", "/nonexistent/c.pem", "--keyfile", "/nonexistent/k.pem"],
        "/nonexistent/c.pem",
    ),
    "nic-without-name": (["examples/hello.py:app", "--nic", "tap:"], "tap:"),
    "ip-invalid": (["examples/hello.py:app", "--ip", "300.1.1.1/24"], "300.1.1.1"),
}


def run_bad(netns: NetworkNamespace, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``yastack serve ARGS`` in the namespace (should it get as far as opening the NIC, it does so
    there); it must exit by itself."""
    return netns.run([sys.executable, "-m", "trio_yastack", "serve", *args], cwd=ROOT, timeout=60)


@pytest.mark.parametrize("server_kind", SERVERS)
@pytest.mark.parametrize(("args", "message"), BAD.values(), ids=BAD.keys())
def test_bad_invocation_is_a_clear_error(
    netns: NetworkNamespace, args: list[str], message: str, server_kind: str
) -> None:
    """An app that cannot be found, ``--cores 0`` and half a TLS configuration exit 1 with one
    ``yastack serve: ...`` line naming the problem, no traceback, before any NIC is opened."""
    result = run_bad(netns, [*args, "--server", server_kind])
    assert result.returncode == 1, result
    assert result.stderr.startswith("yastack serve: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "yas0" not in netns.run(["ip", "-br", "link"], check=True).stdout


@pytest.mark.parametrize("server_kind", SERVERS)
@pytest.mark.parametrize(("args", "message"), BAD_LATE.values(), ids=BAD_LATE.keys())
def test_bad_option_value_is_a_clear_error(
    netns: NetworkNamespace, args: list[str], message: str, server_kind: str
) -> None:
    """A bind that is not IPV4:PORT, a certificate file that does not exist, a NIC spec without a
    name or an invalid address exit non-zero with a message naming the value, not a traceback."""
    result = run_bad(netns, [*args, "--server", server_kind])
    assert result.returncode == 1, result
    assert result.stderr.startswith("yastack serve: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "yas0" not in netns.run(["ip", "-br", "link"], check=True).stdout  # checked before opening


# -- 10. the README's main job ---------------------------------------------------------------------
def readme_main_job() -> str:
    """The main-job command the README shows (the first ``bash scripts/run.sh`` line)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.strip().startswith("bash scripts/run.sh"):
            return line.split("#", 1)[0].strip()
    raise AssertionError("README.md shows no `bash scripts/run.sh` command")


@pytest.mark.parametrize("form", ["in-namespace", "YASTACK_NETNS"])
def test_readme_main_job_serves_the_example(netns: NetworkNamespace, form: str) -> None:
    """The README's main job, ``bash scripts/run.sh`` (run inside the test's namespace, or told to
    enter it with ``YASTACK_NETNS=NAME`` as the README shows), sets up, serves the example over the
    stack and prints a ``# try: curl URL`` line; that URL answers the example's JSON; extra
    arguments reach ``yastack serve`` (``--access-log -`` logs the request); SIGTERM ends it, 0."""
    command = readme_main_job()
    assert command == "bash scripts/run.sh", command
    readme = (ROOT / "README.md").read_text()
    assert "YASTACK_NETNS=demo bash scripts/run.sh" in readme
    env = {key: value for key, value in os.environ.items() if key != "YASTACK_NETNS"}
    prefix = ["env", f"YASTACK_NETNS={netns.name}"] if form == "YASTACK_NETNS" else []
    server = Server(netns, [*prefix, *command.split(), "--access-log", "-"], env=env)
    line = server.wait_for_line("# try:", timeout=300)
    match = re.fullmatch(r"# try: curl (\S+)\n", line)
    assert match, line
    url = match.group(1)
    assert url == f"{HTTP_URL}/json"
    result = curl(netns, url, timeout=20)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["message"] == "hello from trio_yastack"
    assert document["http_version"] == "1.1" and document["scheme"] == "http"
    assert document["client"].startswith(f"{KERNEL_ADDRESS}:")
    assert document["server"] == f"{STACK_ADDRESS}:8000"
    server.wait_for_line('"GET /json 1.1" 200', timeout=10)
    server.signal(signal.SIGTERM)
    server.wait_for_line("# SIGTERM: shutting down gracefully", timeout=10)
    assert server.wait(timeout=20) == 0, server.output
    assert "Traceback" not in server.output, server.output
