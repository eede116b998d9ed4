"""The rough edges of ``yastack stat`` and ``yastack serve`` that issue 21 listed: the control
channel's name carries the network namespace (so a client never answers for another
namespace's server), ``yastack stat | head`` ends quietly, the proxy's requests are counted in
the ``requests`` column, and the ``# try: curl`` hint names one of the app's real routes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from tap_helpers import requires_netns

from trio_yastack._cli import _load_app, _try_path
from trio_yastack.journey._client import _requests
from trio_yastack.journey._control import server_name
from trio_yastack.nic.netns import NetworkNamespace

ROOT = Path(__file__).resolve().parent.parent


def test_server_name_carries_this_namespace() -> None:
    """Was a bug (fixed): the suffix was left out whenever ``/proc/1/ns/net`` could not be
    read (EACCES in containers, even as root), so every ``tap:yas0`` server used one name."""
    inode = os.stat("/proc/self/ns/net").st_ino
    assert server_name("tap:yas0") == f"yas0.netns-{inode}"


@requires_netns
def test_another_namespace_gets_another_name(netns: NetworkNamespace) -> None:
    """``ip netns exec NS yastack stat`` looks for NS's server, never this namespace's."""
    code = "from trio_yastack.journey._control import server_name; print(server_name('tap:yas0'))"
    theirs = netns.run([sys.executable, "-c", code], check=True).stdout.strip()
    assert theirs.startswith("yas0.netns-") and theirs != server_name("tap:yas0")


def test_stat_into_a_closed_pipe_ends_quietly() -> None:
    """Was a bug (fixed): ``yastack stat | head`` ended in a BrokenPipeError traceback."""
    code = (
        "import sys; from trio_yastack.journey._client import _print_to_pipe; "
        "sys.exit(_print_to_pipe('x' * 200000))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.close()  # the reader went away (head has read its lines)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_requests_column_counts_the_proxy() -> None:
    """Was a bug (fixed): the column read only ``yastack serve``'s counters and showed ``-``
    for the proxy, whose HTTP connection managers count ``downstream_rq_total`` as Envoy's."""
    proxy = {"proxy": {"http.ingress.downstream_rq_total": 5, "http.admin.downstream_rq_total": 2,
                       "cluster.app.upstream_rq_total": 7}}  # fmt: skip
    assert _requests({"app": proxy}) == "7"
    assert _requests({"app": {"http": {"requests": 3}}}) == "3"
    assert _requests({"app": {"proxy": {"tcp.db.downstream_cx_total": 1}}}) == "-"
    assert _requests({"app": {}}) == "-"


def test_curl_hint_names_a_real_route() -> None:
    """Was ``/json`` for every app: the example's route, a 404 for the rest."""
    assert _try_path(_load_app(str(ROOT / "examples" / "hello.py"))) == "/json"  # it names it

    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/items/{id}", ok), Route("/health", ok), Route("/submit", ok, methods=["POST"])]
    )
    assert _try_path(app) == "/health"  # the first GET route without parameters

    async def raw(scope: object, receive: object, send: object) -> None:
        return None

    assert _try_path(raw) == "/"  # nothing known: the neutral root
