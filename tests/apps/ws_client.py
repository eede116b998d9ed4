"""A kernel-side WebSocket client with the ``websockets`` library (its sync client, on a plain
kernel socket), run in the test's namespace against ``/ws`` of the example apps: subprotocol
choice, text and binary echo, the lifespan state, a server-chosen close code, a client close.

Then two upgrades that are refused: a path with no WebSocket route (the app closes before
accepting: the server answers 403) and ``/ws-denied`` (the app sends a 401 with a body through
the denial response extension).

Usage: ``python ws_client.py ws://HOST:PORT``; prints one JSON line of what it saw.
"""

from __future__ import annotations

import hashlib
import json
import sys

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

base = sys.argv[1]
url = f"{base}/ws"
report: dict[str, object] = {}
text = "echo over the bypass stack \N{CHECK MARK} " * 2000  # ~60 KB, several frames
blob = bytes(range(256)) * 2048  # 512 KiB
with connect(
    url, subprotocols=[Subprotocol("chat.v1"), Subprotocol("chat.v2")], open_timeout=15, max_size=1 << 21
) as ws:
    report["subprotocol"] = ws.subprotocol
    ws.send(text)
    report["text_ok"] = ws.recv(timeout=15) == text
    ws.send(blob)
    echoed = ws.recv(timeout=15)
    report["bytes_sha256_ok"] = (
        isinstance(echoed, bytes) and hashlib.sha256(echoed).digest() == hashlib.sha256(blob).digest()
    )
    ws.send("state")
    report["state"] = ws.recv(timeout=15)
    ws.send("close 4001")
    try:
        ws.recv(timeout=15)
        report["closed_by_server"] = None
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, closed
        report["closed_by_server"] = [closed.rcvd.code, closed.rcvd.reason]
with connect(url, subprotocols=[Subprotocol("chat.v1")], open_timeout=15) as ws:
    report["second_subprotocol"] = ws.subprotocol
    ws.send("still there?")
    report["second_echo"] = ws.recv(timeout=15)
    ws.close(code=1000, reason="done")
    report["client_close"] = [ws.close_code, ws.close_reason]
with connect(url, open_timeout=15) as ws:
    report["no_subprotocol"] = ws.subprotocol
for path in ("/no-such-ws", "/ws-denied"):
    try:
        with connect(f"{base}{path}", open_timeout=15):
            report[path] = "accepted"
    except InvalidStatus as refused:
        report[path] = [refused.response.status_code, refused.response.body.decode(errors="replace")]
print(json.dumps(report))
