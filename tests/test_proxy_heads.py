"""The proxy's h11 heads built without re-validation (``trio_yastack.l7._heads``), held to h11.

``request_head`` and ``response_head`` lean on ``_parsed=True``, an h11 internal.  These tests fail
if an h11 release stops honouring it in either direction: if the helpers stop making what h11's
public, validating constructors make of the same parts (the events, their raw header casing, and
the bytes h11 writes for them), or if they stop skipping the validation (the speed they exist
for).  They also hold the proxy to using them, and to using ``_parsed`` nowhere else.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
from proxy_helpers import (
    BackendApp,
    cluster,
    connect,
    http_bootstrap,
    read_response,
    running_proxy,
    start_backend,
)
from socket_helpers import two_stacks

import trio_yastack
from trio_yastack.l7 import _heads, http_proxy
from trio_yastack.l7._heads import request_head, response_head

Headers = list[tuple[bytes, bytes]]


def _parsed_request(raw: bytes) -> h11.Request:
    """The request h11's own parser makes of ``raw`` (as the proxy receives one)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return event


def _request_bytes(event: h11.Request) -> bytes:
    return h11.Connection(h11.CLIENT).send(event)


def _response_bytes(event: h11.Response) -> bytes:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    server.next_event()
    return server.send(event)


PARSED = _parsed_request(
    b"POST /a/b?c=d HTTP/1.1\r\nHost: app.test\r\nUser-Agent: curl/8\r\nContent-Length: 5\r\n"
    b"X-Forwarded-For: 198.18.0.9\r\nAccept: */*\r\n\r\n"
)

REQUESTS: list[tuple[bytes, bytes, Headers, bytes]] = [
    # what the proxy sends upstream: the client's parsed headers plus its own
    (
        PARSED.method,
        PARSED.target,
        [
            *PARSED.headers,
            (b"x-forwarded-proto", b"http"),
            (b"x-request-id", b"1b4e28ba-2fa1-41d2-883f-0016d3cca427"),
            (b"via", b"1.1 trio_yastack"),
        ],
        b"1.1",
    ),
    # mixed-case names (h11 keeps the raw casing for the wire), chunked framing, HTTP/1.0 without Host
    (
        b"GET",
        b"/",
        [(b"Host", b"a.test"), (b"X-Custom", b"v a l"), (b"Transfer-Encoding", b"chunked")],
        b"1.1",
    ),
    (b"GET", b"*", [], b"1.0"),
    (b"OPTIONS", b"/x%20y", [(b"host", b"[2001:db8::1]:8080"), (b"content-length", b"0")], b"1.1"),
]

RESPONSES: list[tuple[int, Headers, bytes]] = [
    (
        200,
        [
            (b"Server", b"nginx"),
            (b"Date", b"Sun, 06 Dec 2026 01:00:00 GMT"),
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"6"),
            (b"x-envoy-upstream-service-time", b"0"),
            (b"via", b"1.1 trio_yastack"),
        ],
        b"OK",
    ),
    (404, [(b"transfer-encoding", b"chunked")], b"Not Found"),
    (599, [], b""),
]


@pytest.mark.parametrize(("method", "target", "headers", "version"), REQUESTS)
def test_request_head_is_what_the_public_constructor_makes(
    method: bytes, target: bytes, headers: Headers, version: bytes
) -> None:
    fast = request_head(method, target, list(headers), version)
    checked = h11.Request(method=method, target=target, headers=list(headers), http_version=version)
    assert fast == checked
    assert fast.headers.raw_items() == checked.headers.raw_items()
    if version == b"1.1":  # h11 writes only HTTP/1.1 (a 1.0 head is one the proxy received)
        assert _request_bytes(fast) == _request_bytes(checked)


@pytest.mark.parametrize(("status", "headers", "reason"), RESPONSES)
def test_response_head_is_what_the_public_constructor_makes(
    status: int, headers: Headers, reason: bytes
) -> None:
    fast = response_head(status, list(headers), reason)
    checked = h11.Response(status_code=status, headers=list(headers), reason=reason)
    assert fast == checked
    assert fast.headers.raw_items() == checked.headers.raw_items()
    assert _response_bytes(fast) == _response_bytes(checked)


def test_the_rules_h11_keeps_still_apply() -> None:
    # Framing and Host are still checked with _parsed=True: skipping them would let a malformed
    # head through, which the callers do not expect.
    with pytest.raises(h11.LocalProtocolError):
        request_head(b"GET", b"/", [(b"content-length", b"1"), (b"content-length", b"2")], b"1.1")
    with pytest.raises(h11.LocalProtocolError):
        request_head(b"GET", b"/", [], b"1.1")  # HTTP/1.1 without Host
    with pytest.raises(h11.LocalProtocolError):
        response_head(200, [(b"content-length", b"x")], b"OK")


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"a.test"), (b"x-bad", b"a\x00b")],  # NUL in a value
        [(b"host", b"a.test"), (b"bad name", b"v")],  # a space in a name
    ],
)
def test_the_helpers_skip_the_header_grammar_check(headers: Headers) -> None:
    # The speed they exist for: h11 no longer matches names and values against the RFC grammar.
    # If an h11 release ignored _parsed, these would raise as the public constructors do, and the
    # proxy would pay for the check again on every head.
    with pytest.raises(h11.LocalProtocolError):
        h11.Request(method=b"GET", target=b"/", headers=list(headers))
    with pytest.raises(h11.LocalProtocolError):
        h11.Response(status_code=200, headers=list(headers), reason=b"OK")
    assert request_head(b"GET", b"/", list(headers), b"1.1").headers == headers
    assert response_head(200, list(headers), b"OK").headers == headers


def test_no_other_module_passes_parsed_to_h11() -> None:
    # The one place that knows it leans on the internal is _heads.py.
    package = Path(trio_yastack.__file__).parent
    users = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and any(k.arg == "_parsed" for k in node.keywords):
                users.append(f"{path.relative_to(package)}:{node.lineno}")
    assert users == [f"l7/_heads.py:{n}" for n in _call_lines(Path(_heads.__file__))], users
    assert len(users) == 2


def _call_lines(path: Path) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and any(k.arg == "_parsed" for k in node.keywords)
    ]


async def test_the_proxy_builds_its_heads_with_the_helpers(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An absolute-form request goes through all three places: its origin form, the upstream
    # request, and the response relayed to the client.
    calls: Counter[str] = Counter()

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)

        return spy

    monkeypatch.setattr(http_proxy, "request_head", counting("request", request_head))
    monkeypatch.setattr(http_proxy, "response_head", counting("response", response_head))
    app = BackendApp("one")
    async with two_stacks() as (a, b), trio.open_nursery() as nursery:
        backend = await start_backend(nursery, app, b, 8081)
        async with running_proxy(http_bootstrap([cluster("app", [8081])]), a):
            with trio.fail_after(60):
                stream = await connect(b)
                await stream.send_all(b"GET http://proxy.test/abs HTTP/1.1\r\nHost: ignored.test\r\n\r\n")
                response = await read_response(stream)
                await stream.aclose()
        backend.stop()
    assert response is not None and response.status == 200
    assert response.json()["path"] == "/abs"
    assert calls == {"request": 2, "response": 1}
