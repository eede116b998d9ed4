"""The proxy on several cores (``yastack proxy --cores N``): one admin endpoint answering for all.

Each core is a process with its own proxy, stats, connection pools, health checks and outlier
detection (as each Envoy worker keeps its own pools and ejects on what it sees).  Envoy's admin
sums its workers' statistics; here the workers are processes, so core 0, which alone opens the
admin listener, asks the others for theirs over a link made before the fork (one Unix socketpair
per other core), merges them and answers.  ``POST /healthcheck/fail`` and ``/healthcheck/ok`` go
to every core the same way, so every core's responses say ``connection: close``.

The link carries one request at a time each way: a length-prefixed command (``snapshot``,
``healthcheck/fail``, ``healthcheck/ok``), a length-prefixed JSON reply.  A core that does not
answer in :data:`PEER_TIMEOUT` is left out from then on (its late reply would answer the wrong
request) and counted in the merged ``server.admin_cores_unreachable``.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["CoreLinks", "CorePeers", "merge_clusters_json", "merge_clusters_text", "serve_core_link"]

PEER_TIMEOUT = 5.0
#: a snapshot is a few hundred bytes per cluster and listener; anything near this is a broken peer
MAX_MESSAGE = 32 * 1024 * 1024
MAX_COMMAND = 256
_LENGTH = struct.Struct("!I")
#: per-host /clusters stats that count (summed across cores); the others are core 0's
_SUMMED_HOST_STATS = frozenset({"cx_active", "rq_active", "rq_success", "rq_error", "rq_total"})


class CoreLinks:
    """Made in the launcher's process before the fork: a socketpair between core 0 and each
    other core.  Each worker calls :meth:`take` for its ends (the others are closed there)."""

    def __init__(self, cores: int) -> None:
        self._pairs = {core: socket.socketpair() for core in range(1, cores)}

    def take(self, core: int) -> dict[int, socket.socket]:
        """Core 0: ``{k: its end toward core k}``; core k: ``{0: its end toward core 0}``."""
        mine: dict[int, socket.socket] = {}
        for peer, (zero_end, peer_end) in self._pairs.items():
            if core == 0:
                mine[peer] = zero_end
                peer_end.close()
            elif core == peer:
                mine[0] = peer_end
                zero_end.close()
            else:
                zero_end.close()
                peer_end.close()
        return mine

    def close(self) -> None:
        """The launcher's copies (after the workers ended)."""
        for pair in self._pairs.values():
            for end in pair:
                end.close()


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(min(n - len(data), 1 << 20))
        if not chunk:
            raise trio.BrokenResourceError("the other core closed its link")
        data += chunk
    return bytes(data)


async def _receive_message(stream: trio.SocketStream, limit: int) -> bytes:
    (length,) = _LENGTH.unpack(await _receive_exactly(stream, _LENGTH.size))
    if length > limit:
        raise trio.BrokenResourceError(f"a message of {length} bytes (at most {limit})")
    return await _receive_exactly(stream, length)


def _stream(sock: socket.socket) -> trio.SocketStream:
    # from_stdlib_socket, not trio.socket.socket(): with a stack open, trio's factory is the stack's
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


class CorePeers:
    """Core 0's side: ask every other core, collect the answers by core."""

    def __init__(self, links: dict[int, socket.socket]) -> None:
        self._streams = {core: _stream(sock) for core, sock in sorted(links.items())}
        self._locks = {core: trio.Lock() for core in self._streams}
        self.unreachable: set[int] = set()

    @property
    def cores(self) -> int:
        """How many cores in all (core 0 and its peers)."""
        return len(self._streams) + 1

    async def ask(self, command: str) -> dict[int, Any]:
        """``command``'s answer from every reachable core (its JSON, by core), all asked at once."""
        answers: dict[int, Any] = {}

        async def one(core: int, stream: trio.SocketStream) -> None:
            async with self._locks[core]:
                if core in self.unreachable:
                    return
                with trio.move_on_after(PEER_TIMEOUT):
                    try:
                        payload = command.encode()
                        await stream.send_all(_LENGTH.pack(len(payload)) + payload)
                        answers[core] = json.loads(await _receive_message(stream, MAX_MESSAGE))
                        return
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
                        pass
                self.unreachable.add(core)  # timed out or broke: never asked again (see the module)

        async with trio.open_nursery() as nursery:
            for core, stream in self._streams.items():
                nursery.start_soon(one, core, stream)
        return answers

    async def aclose(self) -> None:
        for stream in self._streams.values():
            await trio.aclose_forcefully(stream)


async def serve_core_link(sock: socket.socket, answer: Callable[[str], Any]) -> None:
    """Core k's side: answer core 0's commands with ``answer(command)`` (JSON-able) until the
    link closes (core 0 ended) or this task is cancelled."""
    stream = _stream(sock)
    try:
        while True:
            try:
                command = (await _receive_message(stream, MAX_COMMAND)).decode(errors="replace")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            reply = json.dumps(answer(command)).encode()
            try:
                await stream.send_all(_LENGTH.pack(len(reply)) + reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
    finally:
        await trio.aclose_forcefully(stream)


def merge_clusters_text(texts: list[str]) -> str:
    """Envoy's ``/clusters`` text of every core as one: per-host counts (``rq_total``,
    ``cx_active``...) summed, ``health_flags`` the union of every core's flags (a host any core
    finds failing shows it), everything else (circuit breakers, hostnames) as core 0 says."""
    order: list[str] = []
    values: dict[str, str] = {}
    for text in texts:
        for line in text.splitlines():
            head, sep, value = line.rpartition("::")
            if not sep:
                continue
            stat = head.rpartition("::")[2]
            if head not in values:
                order.append(head)
                values[head] = value
            elif stat in _SUMMED_HOST_STATS and value.isdigit() and values[head].isdigit():
                values[head] = str(int(values[head]) + int(value))
            elif stat == "health_flags":
                values[head] = _union_flags(values[head], value)
    return "".join(f"{head}::{values[head]}\n" for head in order)


def _union_flags(a: str, b: str) -> str:
    flags = [flag for text in (a, b) for flag in text.split("/") if flag and flag != "healthy"]
    return "".join(f"/{flag}" for flag in dict.fromkeys(flags)) or "healthy"


def merge_clusters_json(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """``/clusters?format=json`` of every core as one, by the same rule as the text form (the
    first document's shape; hosts matched by cluster and position, which every core shares)."""
    if not documents:
        return {"cluster_statuses": []}
    merged: dict[str, Any] = json.loads(json.dumps(documents[0]))  # a deep copy of plain data
    for other in documents[1:]:
        by_name = {c["name"]: c for c in other.get("cluster_statuses", [])}
        for cluster in merged["cluster_statuses"]:
            theirs = by_name.get(cluster["name"])
            if theirs is None:
                continue
            for host, their_host in zip(cluster["host_statuses"], theirs["host_statuses"], strict=False):
                ours, others = host["health_status"], their_host["health_status"]
                for flag in ("failed_active_health_check", "failed_outlier_check", "pending_active_hc"):
                    ours[flag] = bool(ours.get(flag)) or bool(others.get(flag))
                if others.get("eds_health_status") == "UNHEALTHY":
                    ours["eds_health_status"] = "UNHEALTHY"
                their_stats = {s["name"]: s["value"] for s in their_host["stats"]}
                for stat in host["stats"]:
                    stat["value"] += their_stats.get(stat["name"], 0)
    return merged
