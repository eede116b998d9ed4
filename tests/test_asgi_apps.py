"""Acceptance: third-party ASGI apps served unmodified over the bypass stack, by both servers.

FastAPI and Starlette apps (``examples/fastapi_app.py``, ``examples/starlette_app.py``: the same
routes) run under ``yastack serve --server yastack`` (ours) and ``--server hypercorn`` (hypercorn's
trio worker), each in a private network namespace on a TAP, met by kernel-side clients as a user
would meet them: curl, h2load and the ``websockets`` library.  Every test runs for both servers;
a feature our server lacks fails here for it, it is not skipped.

Then where ASGI leaves the server a choice (framing, HEAD, ``Expect: 100-continue``, ``date`` and
``server`` headers), a plain ASGI app (``tests/apps/asgi_choices.py``) and a raw socket client
check that the server does what uvicorn and hypercorn do.

One server per (app, server) pair is shared by the module's tests (none of them changes what
the others see: each background job has its own name); every wait is bounded.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from serve_helpers import (
    HTTP_URL,
    ROOT,
    SERVERS,
    RawResponse,
    Server,
    fetch,
    parse_responses,
    raw_http,
    serving,
)
from tap_helpers import STACK_ADDRESS, requires_netns

from trio_yastack.nic.netns import NetworkNamespace

pytestmark = [requires_netns, pytest.mark.netns]

APPS = {"fastapi": "examples/fastapi_app.py:app", "starlette": "examples/starlette_app.py:app"}
ALL = [f"{framework}-{server}" for framework in APPS for server in SERVERS]
FASTAPI = [name for name in ALL if name.startswith("fastapi-")]
#: the exception the apps' ``/error`` raises: the only traceback a server may log here
APP_ERROR = "RuntimeError: boom on purpose"


def pattern_sha256(nbytes: int) -> str:
    """SHA-256 of ``nbytes`` of the apps' stream pattern (0, 1, ..., 255 over and over)."""
    block = bytes(range(256)) * 256
    digest = hashlib.sha256()
    for offset in range(0, nbytes, len(block)):
        digest.update(block[: min(len(block), nbytes - offset)])
    return digest.hexdigest()


@dataclass
class Served:
    framework: str
    server: str
    process: Server

    @property
    def namespace(self) -> NetworkNamespace:
        return self.process.namespace


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """``yastack serve examples/FRAMEWORK_app.py:app --server SERVER`` in a namespace of its own
    (parametrized indirectly with ``FRAMEWORK-SERVER``)."""
    framework, server = request.param.split("-")
    with serving(APPS[framework], server, "--log-level", "warning", tracebacks=APP_ERROR) as process:
        yield Served(framework, server, process)


def status(response: RawResponse) -> tuple[str, int]:
    """(version, code) of a status line (hypercorn's h11 sends no reason phrase, uvicorn does)."""
    version, code, *_reason = response.status_line.split(" ", 2)
    return version, int(code)


def get_json(served: Served, path: str, *flags: str) -> tuple[int, object]:
    body, [transfer] = fetch(served.namespace, *flags, f"{HTTP_URL}{path}")
    return transfer.status, json.loads(body)


# -- 1. routing and parameters --------------------------------------------------------------------
@pytest.mark.parametrize("served", ALL, indirect=True)
def test_path_and_query_parameters(served: Served) -> None:
    """An int path parameter and a query parameter (percent-decoded), and a ``path`` parameter
    with an encoded space and plus: the app sees ``path`` decoded and ``raw_path`` as sent."""
    assert get_json(served, "/") == (200, {"framework": served.framework})
    assert get_json(served, "/items/42?q=hello%20world") == (200, {"item_id": 42, "q": "hello world"})
    assert get_json(served, "/items/7") == (200, {"item_id": 7, "q": None})
    status, document = get_json(served, "/files/a%20dir/b%2Bc.txt")
    assert (status, document) == (200, {"path": "a dir/b+c.txt", "raw_path": "/files/a%20dir/b%2Bc.txt"})


@pytest.mark.parametrize("served", FASTAPI, indirect=True)
def test_fastapi_validation_errors_are_422(served: Served) -> None:
    """FastAPI's validation: a valid JSON body is a 201 with the computed total; a body missing a
    field and a path parameter that is not an int are 422 with FastAPI's ``detail`` list naming
    the field and the error type."""
    item = json.dumps({"name": "widget", "price": 2.5, "quantity": 4})
    flags = ["-H", "content-type: application/json", "--data-binary"]
    assert get_json(served, "/items", *flags, item) == (
        201,
        {"item": {"name": "widget", "price": 2.5, "quantity": 4}, "total": 10.0},
    )
    status, document = get_json(served, "/items", *flags, json.dumps({"name": "widget"}))
    assert status == 422
    assert isinstance(document, dict)
    [error] = document["detail"]
    assert (error["type"], error["loc"], error["msg"]) == ("missing", ["body", "price"], "Field required")

    status, document = get_json(served, "/items/abc")
    assert status == 422
    assert isinstance(document, dict)
    [error] = document["detail"]
    assert (error["type"], error["loc"], error["input"]) == ("int_parsing", ["path", "item_id"], "abc")

    status, document = get_json(
        served, "/items", "-H", "content-type: application/json", "--data-binary", "{"
    )
    assert status == 422
    assert isinstance(document, dict) and document["detail"][0]["type"] == "json_invalid"


# -- 2. streaming, lifespan state, background tasks -----------------------------------------------
@pytest.mark.parametrize("served", ALL, indirect=True)
@pytest.mark.parametrize("version", ["1.1", "2"])
def test_streaming_response_arrives_whole(served: Served, version: str) -> None:
    """A ``StreamingResponse`` of 32 MiB (no Content-Length: chunked on HTTP/1.1) arrives whole
    and in order (SHA-256) over HTTP/1.1 and over h2c, and so does one in small pieces."""
    flag = "--http1.1" if version == "1.1" else "--http2-prior-knowledge"
    nbytes = 32 * 1024 * 1024 + 123
    body, [transfer] = fetch(served.namespace, flag, f"{HTTP_URL}/stream/{nbytes}", timeout=120)
    assert (transfer.status, transfer.version) == (200, version)
    if version == "1.1":
        assert transfer.header("transfer-encoding") == "chunked"
    assert transfer.header("content-length") is None
    assert len(body) == nbytes
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(nbytes)

    body, [transfer] = fetch(served.namespace, flag, f"{HTTP_URL}/stream/100001?chunk=1000")
    assert transfer.status == 200
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(100_001)


@pytest.mark.parametrize("served", ALL, indirect=True)
def test_lifespan_state_reaches_handlers(served: Served) -> None:
    """What the lifespan yielded at startup is ``request.state`` in a handler (the server passed
    ``state`` in the lifespan scope and a copy of it in every request's scope)."""
    assert get_json(served, "/state") == (200, {"greeting": "set by the lifespan at startup"})


@pytest.mark.parametrize("served", ALL, indirect=True)
def test_background_task_runs_after_the_response(served: Served) -> None:
    """``POST /jobs/NAME`` answers 202 while its background task is still waiting (another client
    sees it started and waiting: the response was not held back until the task's end); once
    released by a third request, the task finishes (``done``) in the server."""
    name = f"job-{served.server}"
    assert get_json(served, f"/jobs/{name}", "-X", "POST") == (202, {"queued": name})
    # once the task has started (the app waits for that, bounded), it waits for the release
    assert get_json(served, f"/jobs/{name}?wait=started") == (200, {"name": name, "state": "waiting"})
    assert get_json(served, f"/jobs/{name}/release", "-X", "POST") == (200, {"released": name})
    assert get_json(served, f"/jobs/{name}?wait=finished") == (200, {"name": name, "state": "done"})


@pytest.mark.parametrize("served", ALL, indirect=True)
def test_background_task_does_not_hold_the_connection(served: Served) -> None:
    """On one keep-alive connection (curl's ``--next`` reuses it): the request that queues a job,
    then one that waits for its background task to start, one that releases it and one that
    waits for its end.  The next request on a connection is served once the response is
    complete, while the app still runs its background task, as uvicorn and hypercorn do (a
    server that waited for the app to return would hold the second request until the job gave
    up waiting: curl's own limit ends that first)."""
    name = f"inline-{served.server}"
    base = f"{HTTP_URL}/jobs/{name}"
    urls = [
        ["-X", "POST", base],
        [f"{base}?wait=started"],
        ["-X", "POST", f"{base}/release"],
        [f"{base}?wait=finished"],
    ]
    args = [arg for i, url in enumerate(urls) for arg in ([] if i == 0 else ["--next"]) + url]
    body, transfers = fetch(served.namespace, *args, timeout=20)
    assert [t.status for t in transfers] == [202, 200, 200, 200]
    assert [t.num_connects for t in transfers] == [1, 0, 0, 0]
    documents = [json.loads(part + "}") for part in body.decode().rstrip("}").split("}")]
    assert documents == [
        {"queued": name},
        {"name": name, "state": "waiting"},
        {"released": name},
        {"name": name, "state": "done"},
    ]


@pytest.mark.parametrize("pair", ALL)
def test_client_going_away_stops_a_stream(pair: str) -> None:
    """A client that reads 1 MB of a 1 GiB ``StreamingResponse`` and hangs up: the app's stream
    ends cut off (the server raised from ``send`` or said ``http.disconnect``), it is not run to
    its end into the void; the server goes on serving, and a client hanging up is no error: the
    server logs no traceback for it (checked once it has exited, so every line is in).  A server
    of its own, so that its output holds nothing else."""
    framework, server = pair.split("-")
    with serving(APPS[framework], server, "--log-level", "warning") as process:
        served = Served(framework, server, process)
        reader = f"curl -sS {HTTP_URL}/stream/{1 << 30} | head -c 1000000 | wc -c"
        result = served.namespace.run(["sh", "-c", reader], timeout=60)
        assert result.stdout.strip() == "1000000", result
        assert get_json(served, "/streams?ended=0") == (200, {"finished": 0, "aborted": 1})
        assert get_json(served, "/items/3") == (200, {"item_id": 3, "q": None})


@pytest.mark.parametrize("served", ALL, indirect=True)
def test_app_exception_is_a_500_and_logged(served: Served) -> None:
    """A handler that raises: the framework answers 500 and re-raises to the server, which logs
    the exception and goes on serving (the next request, on the same curl, gets its answer)."""
    body, transfers = fetch(served.namespace, f"{HTTP_URL}/error", f"{HTTP_URL}/items/4")
    assert [t.status for t in transfers] == [500, 200]
    assert body == b'Internal Server Error{"item_id":4,"q":null}'
    served.process.wait_for_line(APP_ERROR, timeout=10)


# -- 3. middleware, gzip, forms -------------------------------------------------------------------
@pytest.mark.parametrize("served", ALL, indirect=True)
def test_middleware_and_gzip(served: Served) -> None:
    """Every response carries the app's middleware header; a large JSON response is gzipped for
    a client that accepts it (and decodes to the same list), sent plain to one that does not,
    and a small one is never gzipped."""
    expected = list(range(2000))
    raw, [transfer] = fetch(served.namespace, "-H", "accept-encoding: gzip", f"{HTTP_URL}/numbers?n=2000")
    assert transfer.status == 200
    assert transfer.header("content-encoding") == "gzip"
    assert transfer.header("x-middleware") == served.framework
    assert json.loads(gzip.decompress(raw)) == expected

    body, [transfer] = fetch(served.namespace, f"{HTTP_URL}/numbers?n=2000")
    assert transfer.header("content-encoding") is None
    assert json.loads(body) == expected

    body, [transfer] = fetch(served.namespace, "-H", "accept-encoding: gzip", f"{HTTP_URL}/numbers?n=3")
    assert transfer.header("content-encoding") is None
    assert transfer.header("x-middleware") == served.framework
    assert json.loads(body) == [0, 1, 2]


@pytest.mark.parametrize("served", ALL, indirect=True)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_form_and_file_upload(served: Served, framing: str, tmp_path: Path) -> None:
    """A multipart form (curl ``-F``) with a text field and a 3 MB file, sent with a
    Content-Length and sent chunked: the app gets the field, the file's name, and its bytes
    whole (SHA-256)."""
    path = tmp_path / "report.bin"
    data = os.urandom(3_000_000)
    path.write_bytes(data)
    chunked = ["-H", "transfer-encoding: chunked"] if framing == "chunked" else []
    status, document = get_json(served, "/upload", *chunked, "-F", "name=quarterly", "-F", f"file=@{path}")
    assert (status, document) == (
        200,
        {
            "name": "quarterly",
            "filename": "report.bin",
            "bytes": 3_000_000,
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    )


# -- 4. connections: HTTP/1.0, keep-alive, HTTP/2 and pipelining with h2load ------------------------
@pytest.mark.parametrize("served", ALL, indirect=True)
def test_keep_alive_reuses_one_connection(served: Served) -> None:
    """curl with two URLs (HTTP/1.1): the second request goes over the first one's connection."""
    body, transfers = fetch(served.namespace, f"{HTTP_URL}/items/1", f"{HTTP_URL}/items/2")
    assert [t.status for t in transfers] == [200, 200]
    assert [t.num_connects for t in transfers] == [1, 0]
    assert transfers[0].local_port == transfers[1].local_port
    assert body == b'{"item_id":1,"q":null}{"item_id":2,"q":null}'


@pytest.mark.parametrize("served", ALL, indirect=True)
def test_http10_client(served: Served) -> None:
    """An HTTP/1.0 client (no keep-alive asked for) is served, and each request gets a connection
    of its own: the server closed the first one."""
    body, transfers = fetch(served.namespace, "--http1.0", f"{HTTP_URL}/items/1", f"{HTTP_URL}/state")
    assert [t.status for t in transfers] == [200, 200]
    assert [t.num_connects for t in transfers] == [1, 1]
    assert body == b'{"item_id":1,"q":null}{"greeting":"set by the lifespan at startup"}'


H2LOAD_COUNTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
H2LOAD_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


@pytest.mark.parametrize("served", ALL, indirect=True)
def test_h2load_over_h2c(served: Served) -> None:
    """h2load: 1000 requests on 4 connections with 8 streams in flight on each, over h2c (prior
    knowledge): every one succeeds with a 2xx.  (Not ``h2load --h1``: it counts hypercorn's
    status line, which has no reason phrase, as a failure.)"""
    result = served.namespace.run(
        ["h2load", "-n1000", "-c4", "-m8", f"{HTTP_URL}/items/5?q=load"], timeout=120
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Application protocol: h2c\n" in out, out
    counts, codes = H2LOAD_COUNTS.search(out), H2LOAD_CODES.search(out)
    assert counts and codes, out
    assert tuple(map(int, counts.groups())) == (1000, 1000, 1000, 1000, 0, 0), out
    assert tuple(map(int, codes.groups())) == (1000, 0, 0, 0), out


@pytest.mark.parametrize("served", ALL, indirect=True)
def test_pipelined_requests_are_answered_in_order(served: Served, tmp_path: Path) -> None:
    """40 requests written at once on one connection (more than a server parses ahead: ours
    stops reading at its bound and goes on as the queue drains), the last with ``Connection:
    close``: 40 responses, in order, each the app's answer to its own request."""
    count = 40
    requests = "".join(
        f"GET /items/{i}?q=p{i} HTTP/1.1\r\nHost: t\r\n{'Connection: close' if last else 'X-N: 1'}\r\n\r\n"
        for i, last in ((i, i == count - 1) for i in range(count))
    )
    [read], eof = raw_http(served.namespace, tmp_path, [["send", requests], ["read_to_eof"]])
    assert eof
    responses = parse_responses(read, ["GET"] * count)
    assert [json.loads(r.body) for r in responses] == [{"item_id": i, "q": f"p{i}"} for i in range(count)]
    assert {status(r) for r in responses} == {("HTTP/1.1", 200)}


# -- 5. WebSocket with the websockets library ------------------------------------------------------
@pytest.mark.parametrize("served", ALL, indirect=True)
def test_websocket_with_the_websockets_client(served: Served) -> None:
    """The ``websockets`` library's client on a kernel socket: the app picks ``chat.v2`` of the
    two offered (``chat.v1`` when only it is offered, none when none is), a 60 KB text and a
    512 KiB binary message come back unchanged, the lifespan state reaches the websocket scope,
    the app's close code and reason (4001, ``bye``) reach the client, and a client close is
    answered with 1000.  An upgrade to a path without a WebSocket route is refused with a 403
    (the app closed before accepting: what uvicorn and hypercorn answer), and the app's own
    denial response (401 with a JSON body) reaches the client as the app sent it."""
    client = ROOT / "tests" / "apps" / "ws_client.py"
    result = served.namespace.run([sys.executable, str(client), f"ws://{STACK_ADDRESS}:8000"], timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "subprotocol": "chat.v2",
        "text_ok": True,
        "bytes_sha256_ok": True,
        "state": "set by the lifespan at startup",
        "closed_by_server": [4001, "bye"],
        "second_subprotocol": "chat.v1",
        "second_echo": "still there?",
        "client_close": [1000, "done"],
        "no_subprotocol": None,
        "/no-such-ws": [403, ""],
        "/ws-denied": [401, '{"denied":"no token"}'],
    }


@pytest.mark.parametrize("server", SERVERS)
def test_lifespan_startup_failure_aborts_the_server(netns: NetworkNamespace, server: str) -> None:
    """A FastAPI app whose lifespan startup raises: the server says why (the app's message) and
    exits non-zero by itself; ours never listens (no ``# try:`` line).  hypercorn's trio worker
    sets "started" before its lifespan task's failure reaches it, so it may listen for a moment
    first (its own behaviour, kept by ``--server hypercorn``)."""
    process = Server.yastack(netns, "tests/apps/failing_startup.py:app", "--server", server, "--bind", "8000")
    code = process.wait(timeout=60)
    assert code != 0, process.output
    assert "database unreachable at startup" in process.output, process.output
    if server == "yastack":
        assert "# try:" not in process.output, process.output


# -- 6. where ASGI leaves a choice: what uvicorn and hypercorn do ----------------------------------
#: the ``server`` header each server sends by default (uvicorn: ``uvicorn``; ours: none, by design)
SERVER_HEADER = {"yastack": [], "hypercorn": ["hypercorn-h11"]}


@pytest.fixture(scope="module", params=SERVERS)
def choices(request: pytest.FixtureRequest) -> Iterator[Served]:
    """``yastack serve tests/apps/asgi_choices.py:app --server SERVER``."""
    with serving("tests/apps/asgi_choices.py:app", request.param, "--log-level", "warning") as process:
        yield Served("asgi", request.param, process)


def test_date_header_and_no_server_header(choices: Served, tmp_path: Path) -> None:
    """Every response has a ``date`` header in HTTP's date format (as uvicorn and hypercorn);
    ``server`` is as the server documents it (ours sends none by default)."""
    [read], eof = raw_http(
        choices.namespace,
        tmp_path,
        [["send", "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"], ["read_to_eof"]],
    )
    assert eof
    [response] = parse_responses(read, ["GET"])
    assert status(response) == ("HTTP/1.1", 200)
    [date] = response.get("date")
    assert email.utils.parsedate_to_datetime(date).tzname() == "UTC", date
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date), date
    assert response.get("server") == SERVER_HEADER[choices.server]
    assert response.body == b"Hello, world!"


#: a single body without Content-Length: ours adds the length (the head is held until the first
#: body, so it is known); hypercorn (h11) and uvicorn send it chunked.  Both are valid HTTP/1.1.
SINGLE_BODY_FRAMING = {"yastack": "content-length", "hypercorn": "chunked"}


def test_framing_when_the_app_gives_no_length(choices: Served, tmp_path: Path) -> None:
    """A single body message without Content-Length is framed as the server documents
    (:data:`SINGLE_BODY_FRAMING`); a body in several messages without one is chunked by both;
    either way the client gets exactly the app's bytes and the connection stays usable."""
    requests = (
        "GET /no-length HTTP/1.1\r\nHost: t\r\n\r\n"
        "GET /streamed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    [read], eof = raw_http(choices.namespace, tmp_path, [["send", requests], ["read_to_eof"]])
    assert eof
    single, streamed = parse_responses(read, ["GET", "GET"])
    assert (single.body, single.framing) == (b"no length given", SINGLE_BODY_FRAMING[choices.server])
    if single.framing == "content-length":
        assert single.get("content-length") == ["15"]
    assert (streamed.body, streamed.framing) == (b"one two three", "chunked")


def test_head_gets_the_get_headers_and_no_body(choices: Served, tmp_path: Path) -> None:
    """HEAD then GET pipelined on one connection: the HEAD response has GET's Content-Length but
    not one byte of the body the app sent anyway (the GET's response follows it at once)."""
    requests = "HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    [read], eof = raw_http(choices.namespace, tmp_path, [["send", requests], ["read_to_eof"]])
    assert eof
    head, get = parse_responses(read, ["HEAD", "GET"])
    assert status(head) == status(get) == ("HTTP/1.1", 200)
    assert head.get("content-length") == get.get("content-length") == ["13"]
    assert get.body == b"Hello, world!"


def test_expect_100_continue(choices: Served, tmp_path: Path) -> None:
    """A client that sends ``Expect: 100-continue`` and waits: the server answers
    ``100 Continue`` when the app first reads the body, then the final response."""
    body = bytes(range(256)) * 40
    head = (
        f"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    actions = [["send", head], ["read_until", "\r\n\r\n"], ["send", body.decode("latin-1")], ["read_to_eof"]]
    (interim, final), eof = raw_http(choices.namespace, tmp_path, actions)
    assert eof
    [continued] = parse_responses(interim, [""])
    assert status(continued) == ("HTTP/1.1", 100)
    [response] = parse_responses(final, ["POST"])
    assert response.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


def test_http10_without_keep_alive_is_closed(choices: Served, tmp_path: Path) -> None:
    """An HTTP/1.0 request without ``Connection: keep-alive``: one response, then the server
    closes the connection (the client sees EOF, it does not give up waiting)."""
    [read], eof = raw_http(choices.namespace, tmp_path, [["send", "GET / HTTP/1.0\r\n\r\n"], ["read_to_eof"]])
    assert eof, read
    [response] = parse_responses(read, ["GET"])
    assert status(response)[1] == 200
    assert response.body == b"Hello, world!"
