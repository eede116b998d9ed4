"""What the ``yastack serve`` acceptance tests share: the server in a namespace (either server),
kernel-side curl with everything it saw as data, and a raw HTTP client for what curl hides.

``tests/test_serve_asgi.py`` and ``tests/test_asgi_apps.py`` use it; every wait has a bound.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tap_helpers import STACK_ADDRESS, NamespaceProgram

from trio_yastack.nic.netns import NetworkNamespace

ROOT = Path(__file__).resolve().parent.parent
HTTP_URL = f"http://{STACK_ADDRESS}:8000"
#: the two servers ``yastack serve --server NAME`` offers: ours (the default) and hypercorn's trio worker
SERVERS: tuple[Literal["yastack"], Literal["hypercorn"]] = ("yastack", "hypercorn")


class Server(NamespaceProgram):
    """A ``yastack serve`` process (or the README's command) in the namespace."""

    @classmethod
    def yastack(cls, namespace: NetworkNamespace, *args: str, console_script: bool = False) -> Server:
        command = [str(Path(sys.executable).parent / "yastack")] if console_script else []
        command = command or [sys.executable, "-m", "trio_yastack"]
        return cls(namespace, [*command, "serve", *args])

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the server itself."""
        self.send_signal(signum, b"yastack")


@contextmanager
def serving(app: str, server: str, *args: str, tracebacks: str | None = None) -> Iterator[Server]:
    """``yastack serve APP --server SERVER --bind 8000 ARGS`` in a namespace of its own, once it
    printed its ``# try:`` line; stopped with :func:`stop_cleanly` after the block."""
    with NetworkNamespace() as namespace:
        process = Server.yastack(namespace, app, "--server", server, "--bind", "8000", *args)
        process.wait_for_line("# try:")
        yield process
        stop_cleanly(process, tracebacks=tracebacks)


def stop_cleanly(server: Server, *, tracebacks: str | None = None) -> None:
    """SIGTERM a shared server after its tests: it still exits 0 promptly, without a traceback
    (except those ending in ``tracebacks``, an app's own exception that a test provoked: one
    such line per traceback)."""
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0, server.output
    provoked = server.output.count(tracebacks) if tracebacks else 0
    assert server.output.count("Traceback") == provoked, server.output


def curl(namespace: NetworkNamespace, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """curl on the kernel side of ``namespace``."""
    return namespace.run(["curl", "-sS", "--max-time", str(timeout), *args], timeout=timeout + 30)


def curl_w(namespace: NetworkNamespace, *args: str) -> tuple[str, str, int]:
    """(body, HTTP version, status) of one request (body as text)."""
    result = curl(namespace, "-w", "\n%{http_version} %{response_code}", *args)
    assert result.returncode == 0, result.stderr
    body, _, trailer = result.stdout.rpartition("\n")
    version, status = trailer.split()
    return body, version, int(status)


@dataclass
class Transfer:
    """One transfer as curl saw it: ``headers`` lower-cased names, each with its values."""

    status: int
    version: str
    headers: dict[str, list[str]]
    num_connects: int
    local_port: int

    def header(self, name: str) -> str | None:
        """The one value of header ``name`` (None if absent; two values fail the test)."""
        values = self.headers.get(name, [])
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


_TRANSFER = re.compile(rb"\n@@transfer@@(.*?)@@headers@@(.*?)@@end@@", re.DOTALL)


def fetch(namespace: NetworkNamespace, *args: str, timeout: float = 60) -> tuple[bytes, list[Transfer]]:
    """curl ``ARGS`` (one URL or several, or transfers separated by ``--next``, which resets
    curl's options: ours are repeated after each): the bytes of every body, as written to stdout,
    and what curl saw of each transfer (status, version, headers, whether it opened a connection
    for it).  ``timeout`` bounds each transfer."""
    write_out = "%{stderr}\n@@transfer@@%{json}@@headers@@%{header_json}@@end@@"
    ours = ["-sS", "--max-time", str(timeout), "-w", write_out]
    command = ["curl", *ours]
    for arg in args:
        command += [arg, *ours] if arg == "--next" else [arg]
    transfers_bound = timeout * (1 + args.count("--next"))
    result = namespace.run(command, timeout=transfers_bound + 30, text=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    transfers = []
    for found in _TRANSFER.finditer(result.stderr):
        variables: dict[str, Any] = json.loads(found.group(1))
        headers: dict[str, list[str]] = json.loads(found.group(2))
        transfers.append(
            Transfer(
                status=int(variables["response_code"]),
                version=str(variables["http_version"]),
                headers={name.lower(): values for name, values in headers.items()},
                num_connects=int(variables["num_connects"]),
                local_port=int(variables["local_port"]),
            )
        )
    assert transfers, result.stderr.decode(errors="replace")
    return result.stdout, transfers


# -- a raw HTTP client: what curl hides (interim responses, pipelining, who closes) -----------------
RAW_CLIENT = r'''
"""Raw HTTP over a kernel socket: ACTIONS (JSON) are ["send", text] (latin-1),
["read_until", marker] (up to and including it) and ["read_to_eof"]; prints what each read got,
and whether the server closed the connection (EOF) or the client gave up waiting."""
import json, socket, sys

host, port, actions = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
sock = socket.create_connection((host, port), timeout=15)
buffered, reads, eof = b"", [], False
for action, *argument in actions:
    if action == "send":
        sock.sendall(argument[0].encode("latin-1"))
    elif action == "read_until":
        marker = argument[0].encode("latin-1")
        while marker not in buffered and not eof:
            data = sock.recv(65536)
            buffered, eof = buffered + data, not data
        head, found, buffered = buffered.partition(marker)
        reads.append((head + found).decode("latin-1"))
    elif action == "read_to_eof":
        try:
            while not eof:
                data = sock.recv(65536)
                buffered, eof = buffered + data, not data
        except TimeoutError:
            pass
        reads.append(buffered.decode("latin-1"))
        buffered = b""
print(json.dumps({"reads": reads, "eof": eof}))
'''


def raw_http(
    namespace: NetworkNamespace, tmp_path: Path, actions: list[list[str]]
) -> tuple[list[bytes], bool]:
    """Run :data:`RAW_CLIENT` against the stack's port 8000: (what each read got, server closed)."""
    script = tmp_path / "raw_http.py"
    script.write_text(RAW_CLIENT)
    result = namespace.run(
        [sys.executable, str(script), STACK_ADDRESS, "8000", json.dumps(actions)], timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return [read.encode("latin-1") for read in report["reads"]], bool(report["eof"])


@dataclass
class RawResponse:
    """One HTTP/1.x response taken apart: status line, headers (lower-cased names, in order), body
    (de-chunked), and how it was framed."""

    status_line: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "content-length", "chunked", "none" (no body allowed) or "close"

    def get(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def parse_responses(data: bytes, methods: list[str]) -> list[RawResponse]:
    """The responses in ``data``, one per request method in ``methods`` (HEAD: no body; 1xx
    interim responses are their own entries, so pass ``""`` for them).  Any byte left over, a
    missing response or a bad framing fails the test."""
    responses = []
    for method in methods:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        fields = dict(headers)
        status = int(status_line.split()[1])
        if method == "HEAD" or status < 200 or status in (204, 304):
            body, framing = b"", "none"
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            pieces = []
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                pieces.append(data[:size])
                assert data[size : size + 2] == b"\r\n", data[: size + 2]
                data = data[size + 2 :]
                if size == 0:
                    break
            body, framing = b"".join(pieces), "chunked"
        elif "content-length" in fields:
            length = int(fields["content-length"])
            assert len(data) >= length, (length, data)
            body, data, framing = data[:length], data[length:], "content-length"
        else:
            body, data, framing = data, b"", "close"
        responses.append(RawResponse(status_line, headers, body, framing))
    assert data == b"", f"bytes after the last response: {data[:200]!r}"
    return responses
