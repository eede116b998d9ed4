"""The router's own answers on the lean path (:meth:`HttpConnectionManagerRuntime._proxy_plain`:
bodyless requests of the fast path) pass the response side of the filters that ran, as on the
general path and as Envoy's local replies pass the encoder filters: with ``[cors, local_ratelimit,
router]`` a GET's 502 (nothing listens for the cluster) carries CORS's ``access-control-allow-origin``,
so a browser can read it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from proxy_helpers import BackendApp, Client, connect
from test_proxy_filters_order import CORS_THEN_LIMIT, ORIGIN
from test_proxy_http import setup

from trio_yastack.l7.config import load_config
from trio_yastack.l7.http_proxy import HttpConnectionManagerRuntime


def _lean(on: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lean path as it is, recording per request how it left it ("kept": answered; "raised": a
    router's answer raised to be sent; "declined": left to the general path), or declining all."""
    seen: list[str] = []
    lean = HttpConnectionManagerRuntime._proxy_plain

    async def recorded(self: HttpConnectionManagerRuntime, *args: Any) -> bool | None:
        if not on:
            return None
        try:
            keep = await lean(self, *args)
        except Exception:
            seen.append("raised")
            raise
        seen.append("declined" if keep is None else "kept")
        return keep

    monkeypatch.setattr(HttpConnectionManagerRuntime, "_proxy_plain", recorded)
    return seen


@pytest.mark.parametrize("lean_on", [True, False])
async def test_router_answers_on_the_lean_path_pass_cors(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, lean_on: bool
) -> None:
    """The same answers with the lean path on and off (the general objects then take them)."""
    taken = _lean(lean_on, monkeypatch)
    app = BackendApp("app")
    async with setup(load_config(CORS_THEN_LIMIT), (app, 8080)) as (_, b, proxy):
        with trio.fail_after(60):
            client = Client(await connect(b))
            origin = [("origin", ORIGIN)]
            r = await client.request("GET", "/gone", origin)
            assert r.status == 502 and r.header("access-control-allow-origin") == ORIGIN
            assert [k for k, _ in r.headers].count(b"access-control-allow-origin") == 1
            r = await client.request("GET", "/gone")  # no Origin: CORS adds nothing
            assert r.status == 502 and r.header("access-control-allow-origin") is None
            r = await client.request("GET", "/doc", origin)  # the bucket (2 tokens) is empty now
            assert r.status == 429 and r.header("access-control-allow-origin") == ORIGIN
            assert [k for k, _ in r.headers].count(b"access-control-allow-origin") == 1
            await client.aclose()
            assert taken == (["raised", "raised", "kept"] if lean_on else [])
            assert proxy.stats.value("http.ingress.downstream_rq_5xx") == 2
