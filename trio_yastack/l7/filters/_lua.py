"""``envoy.filters.http.lua``: Lua scripts on requests and responses, run by ``lupa`` (Lua 5.4+).

Envoy's behaviour (docs: "Lua" HTTP filter): a script defines ``envoy_on_request(request_handle)``
and/or ``envoy_on_response(response_handle)``; one Lua state per filter (Envoy: per worker) keeps
the script's globals from request to request.  The handles offer here:

- ``headers()``: ``get(name)``, ``getAtIndex(name, index)``, ``getNumValues(name)``, ``add(name, value)``,
  ``replace(name, value)``, ``remove(name)``, and ``pairs()`` over them (names lowercased; the
  request's ``:method``, ``:path``, ``:authority`` and the response's ``:status`` can be read;
  ``:authority`` written is the ``Host`` header, other pseudo-headers cannot be written); a script
  that changed the request's headers has the route chosen again (``clear_route_cache``, Envoy's
  default true);
- ``respond(headers, body)`` (requests only): a local reply with ``headers[":status"]`` (200-599),
  the other headers and ``body``; the script ends there;
- ``body(always_wrap_body)``: the script waits until the whole request body is read (the
  connection manager's body limit applies: a larger body gets 413) and gets a buffer (``length()``,
  ``getBytes(index, length)``, ``setBytes(data)``: the body forwarded is then ``data``, its
  ``Content-Length`` updated), or nil for an empty body unless ``always_wrap_body``; in
  ``envoy_on_response`` the response's head is held until its whole body is here (at most
  :data:`MAX_RESPONSE_BODY`; a larger one fails the script and leaves as it came), the script's
  header changes after ``body()`` apply, and ``setBytes`` replaces the body the client gets (its
  ``Content-Length`` set as it leaves);
- ``trailers()``: the script waits for the end of the response (its head and body are not held)
  or of the request, and gets its trailers (nil when there are none), which it may change before
  they leave; on a request the body is read whole first (kept for the router, within the body
  limit: Envoy streams it meanwhile), and the trailers go on to an HTTP/2 cluster (an HTTP/1.1
  upstream gets none, as Envoy's HTTP/1 codec sends none without ``enable_trailers``);
- ``bodyChunks()`` on a response: each piece as it passes (the head has gone; pieces are read-only:
  ``setBytes`` fails the script);
- ``httpCall(cluster, headers, body, timeout_ms, asynchronous)`` or ``httpCall(cluster, headers,
  body, {timeout_ms=, asynchronous=, return_duplicate_headers=})`` (requests only): an HTTP/1.1
  request to a configured cluster (``:method``, ``:path`` and ``:authority`` required); the script
  waits for the answer's headers (``:status`` included) and body (nil when empty); a failure answers
  503 ``upstream failure`` as Envoy's does; asynchronous calls are not waited for;
- ``filterContext()``: the route's ``LuaPerRoute.filter_context`` as a table (empty without one);
- ``clearRouteCache()``: the route is chosen again after the script (with ``clear_route_cache:
  false`` too);
- ``logTrace``/``logDebug``/``logInfo``/``logWarn``/``logErr``/``logCritical``: the proxy's log
  (the ``trio_yastack.l7.lua`` logger).

- ``streamInfo()``: ``protocol()``, ``requestedServerName()`` (the TLS inspector's SNI),
  ``downstreamRemoteAddress()``/``downstreamDirectRemoteAddress()`` (the peer, ``ip:port``),
  ``downstreamLocalAddress()``, ``routeName()`` ("": routes have no names here),
  ``dynamicMetadata()`` (``get``, ``set``, ``pairs``: the request's dynamic metadata, which
  ``jwt_authn`` writes and ``rbac`` reads);
- ``connection():ssl()``: nil on a plain connection, else ``peerCertificatePresented()``,
  ``uriSanPeerCertificate()``, ``dnsSansPeerCertificate()``, ``subjectPeerCertificate()``;
- ``base64Escape(data)``, ``timestamp()`` and ``timestampString(resolution)``.

- ``bodyChunks()`` (requests): an iterator over the request body's pieces as they arrive,
  each a buffer (``length()``, ``getBytes()``, ``setBytes()``: that piece replaced; a body so
  changed is then read whole and its ``Content-Length`` updated); the pieces are kept for the
  router, within the body limit, since the router forwards the body after the filters;

Not available (a script calling them fails, counted below): ``metadata()``, the rest of stream
info, the other ``connection()`` calls; ``httpCall()`` in ``envoy_on_response``; ``body()`` after
``trailers()`` or ``bodyChunks()`` in ``envoy_on_response`` (the body has gone by then).

Scripts run as coroutines, as in Envoy: ``body()``, ``trailers()`` and ``httpCall()`` yield to the
filter, which awaits the body, the end or the call and resumes the script with the result.
Every call is bounded: a script that runs more than :data:`MAX_INSTRUCTIONS` Lua instructions is
stopped, and the Lua state's memory is capped at :data:`MAX_MEMORY`.  A script that fails (an error,
a limit) is counted in ``lua.errors`` and the request goes on as Envoy lets it.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lupa  # type: ignore[import-untyped]  # lupa ships no type stubs
import trio

from ..config import Lua, LuaPerRoute, PerRouteConfig
from ..stats import Scope
from ._body import buffer_body, replace_body
from ._connection import connection_info
from ._side_call import SideCallError, http_call

if TYPE_CHECKING:
    from ..upstream import ClusterRuntime
    from ._chain import FilterOutcome, RequestBody, RequestView

__all__ = ["MAX_INSTRUCTIONS", "MAX_MEMORY", "LuaFilter"]

log = logging.getLogger("trio_yastack.l7.lua")
Headers = list[tuple[bytes, bytes]]

#: the largest response body ``body()`` in ``envoy_on_response`` holds (Envoy's default buffer limit)
MAX_RESPONSE_BODY = 1024 * 1024
#: the most Lua instructions one call of ``envoy_on_request``/``envoy_on_response`` may run
MAX_INSTRUCTIONS = 1_000_000
#: the memory one filter's Lua state may hold
MAX_MEMORY = 64 * 1024 * 1024
#: how many compiled scripts (per-route ``source_code``) one filter keeps
MAX_SCRIPTS = 256
#: the longest an ``httpCall()`` may take (Envoy: a ``timeout_ms`` of 0 is no timeout; here this)
MAX_CALL_SECONDS = 60.0
#: how many asynchronous ``httpCall()``s one filter may have in flight
MAX_ASYNC_CALLS = 64
#: how many headers an ``httpCall()`` or ``respond()`` may give
MAX_CALL_HEADERS = 100
#: ``EnvoyTimestampResolution.MICROSECOND``'s value (the global the prelude defines)
_MICROSECOND = 1

# The handles are Lua tables over Python callables (so ``pairs`` and the ``obj:method()`` calls
# scripts use behave as in Envoy).  ``start`` runs an entry point as a coroutine under an
# instruction-count hook and answers a ``step`` function: each step resumes it (with the results of
# what it waited for) and says what it waits for now: "body" (``body()``), "http" (``httpCall()``),
# or that it ended ("done", "respond").  Envoy runs scripts as coroutines the same way: a script
# yields where it waits, so it reads as straight-line code.
_PRELUDE = """
EnvoyTimestampResolution = {MILLISECOND = 0, MICROSECOND = 1}
local limit_reached = "lua: the script ran more than its instruction limit"
local function header_map(py)
  local map = {}
  function map:get(name) return py.get(name) end
  function map:getAtIndex(name, index) return py.get_at(name, index) end
  function map:getNumValues(name) return py.count(name) end
  function map:add(name, value) py.add(name, value) end
  function map:replace(name, value) py.replace(name, value) end
  function map:remove(name) py.remove(name) end
  return setmetatable(map, {__pairs = function()
    local items, i = py.items(), 0
    return function()
      i = i + 1
      local item = items[i]
      if item ~= nil then return item[1], item[2] end
    end
  end})
end
local function buffer(py)
  local b = {}
  function b:length() return py.body_length() end
  function b:getBytes(index, length) return py.get_bytes(index, length) end
  function b:setBytes(data) py.set_bytes(data) end
  return b
end
local function stream_info(py)
  local s = {}
  function s:protocol() return py.info("protocol") end
  function s:requestedServerName() return py.info("sni") end
  function s:downstreamRemoteAddress() return py.info("remote") end
  function s:downstreamDirectRemoteAddress() return py.info("remote") end
  function s:downstreamLocalAddress() return py.info("local") end
  function s:routeName() return "" end
  function s:dynamicMetadata()
    local m = {}
    function m:get(namespace) return py.metadata_get(namespace) end
    function m:set(namespace, key, value) py.metadata_set(namespace, key, value) end
    return setmetatable(m, {__pairs = function()
      local items, i = py.metadata_items(), 0
      return function()
        i = i + 1
        local item = items[i]
        if item ~= nil then return item[1], item[2] end
      end
    end})
  end
  return s
end
local function ssl_connection(py)
  local c = {}
  function c:peerCertificatePresented() return py.info("cert_presented") end
  function c:uriSanPeerCertificate() return py.info("uri_sans") end
  function c:dnsSansPeerCertificate() return py.info("dns_sans") end
  function c:subjectPeerCertificate() return py.info("subject") end
  return c
end
local function handle(py, headers, on_request)
  local h = {}
  function h:streamInfo() return stream_info(py) end
  function h:connection()
    local c = {}
    function c:ssl() if py.info("tls") then return ssl_connection(py) end return nil end
    return c
  end
  function h:base64Escape(data) return py.base64(data) end
  function h:timestamp() return py.timestamp(false) end
  function h:timestampString(resolution) return py.timestamp(true, resolution) end
  local map = header_map(headers)
  local body = nil
  function h:headers() return map end
  function h:respond(reply_headers, reply_body)
    py.respond(reply_headers, reply_body)
    coroutine.yield("respond")
  end
  local trailers = nil
  function h:trailers()
    if trailers == nil then
      local map = coroutine.yield("trailers")
      if map == nil then return nil end
      trailers = header_map(map)
    end
    return trailers
  end
  function h:body(always_wrap_body)
    if always_wrap_body ~= nil and type(always_wrap_body) ~= "boolean" then
      error("body(): always_wrap_body must be a boolean", 2)
    end
    if body == nil then
      coroutine.yield("body")
      body = buffer(py)
    end
    if py.body_length() == 0 and not always_wrap_body then return nil end
    return body
  end
  function h:bodyChunks()
    return function()
      if not coroutine.yield("chunk") then return nil end
      local c = {}
      local index = py.chunk_index()
      function c:length() return py.chunk_length(index) end
      function c:getBytes(i, n) return py.chunk_get_bytes(index, i, n) end
      function c:setBytes(data) py.chunk_set_bytes(index, data) end
      return c
    end
  end
  function h:filterContext() return py.filter_context() end
  function h:clearRouteCache()
    if not on_request then error("clearRouteCache() is only available in envoy_on_request", 2) end
    py.clear_route()
  end
  function h:httpCall(cluster, call_headers, call_body, timeout_ms, asynchronous)
    if not on_request then error("httpCall() is not available in envoy_on_response here", 2) end
    local duplicates = false
    if type(timeout_ms) == "table" then
      local options = timeout_ms
      timeout_ms, asynchronous = options.timeout_ms, options.asynchronous
      duplicates = options.return_duplicate_headers == true
    end
    if asynchronous ~= nil and type(asynchronous) ~= "boolean" then
      error("http call asynchronous flag must be 'true', 'false', or empty", 2)
    end
    py.http_call(cluster, call_headers, call_body, timeout_ms or 0, asynchronous == true, duplicates)
    if asynchronous then return end
    return coroutine.yield("http")
  end
  function h:logTrace(m) py.log(5, m) end
  function h:logDebug(m) py.log(10, m) end
  function h:logInfo(m) py.log(20, m) end
  function h:logWarn(m) py.log(30, m) end
  function h:logErr(m) py.log(40, m) end
  function h:logCritical(m) py.log(50, m) end
  return h
end
return function(entry, py, headers, limit, on_request)
  local count = 0
  local co = coroutine.create(entry)
  debug.sethook(co, function()
    count = count + 1000
    if count > limit then error(limit_reached, 2) end
  end, "", 1000)
  local h = handle(py, headers, on_request)
  local started = false
  return function(...)
    local ok, what
    if started then
      ok, what = coroutine.resume(co, ...)
    else
      started = true
      ok, what = coroutine.resume(co, h)
    end
    if not ok then error(what, 0) end
    if coroutine.status(co) == "dead" then return "done" end
    return what
  end
end
"""


class _HeaderMap:
    """A header list as a script's ``headers()`` sees it (pseudo-headers first, read-only)."""

    def __init__(self, headers: Headers, pseudo: dict[str, str], runtime: Any) -> None:
        self.headers = headers
        self.pseudo = pseudo
        self.runtime = runtime
        self.modified = False  # a request's headers changed: the route is chosen again

    def _key(self, name: object, write: bool = False) -> bytes:
        text = str(name).lower()
        if write:
            if text == ":authority":
                text = "host"  # HTTP/1.1's name for it, as the request carries it here
            elif text.startswith(":"):
                raise lupa.LuaError(f"{text} cannot be changed by a script here")
            self.modified = True
        return text.encode("latin-1")

    def get(self, name: object) -> str | None:
        text = str(name).lower()
        if text in self.pseudo:
            return self.pseudo[text]
        key = self._key(name)
        values = [v.decode("latin-1") for k, v in self.headers if k == key]
        return ",".join(values) if values else None

    def get_at(self, name: object, index: object) -> str | None:
        """``getAtIndex``: the value at 0-based ``index`` of the header's values (nil past the end)."""
        key = self._key(name)
        values = [v.decode("latin-1") for k, v in self.headers if k == key]
        if isinstance(index, bool) or not isinstance(index, (int, float)) or index != int(index):
            raise lupa.LuaError("getAtIndex(): the index must be an integer")
        return values[int(index)] if 0 <= int(index) < len(values) else None

    def count(self, name: object) -> int:
        key = self._key(name)
        return sum(1 for k, _ in self.headers if k == key)

    def add(self, name: object, value: object) -> None:
        self.headers.append((self._key(name, True), str(value).encode("latin-1")))

    def replace(self, name: object, value: object) -> None:
        key = self._key(name, True)
        self.headers[:] = [(k, v) for k, v in self.headers if k != key]
        self.headers.append((key, str(value).encode("latin-1")))

    def remove(self, name: object) -> None:
        key = self._key(name, True)
        self.headers[:] = [(k, v) for k, v in self.headers if k != key]

    def items(self) -> Any:
        pairs = [(k, v) for k, v in self.pseudo.items()]
        pairs += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers]
        return self.runtime.table_from([self.runtime.table_from(p) for p in pairs])


@dataclass(slots=True)
class _HttpCall:
    """What ``httpCall()`` asked for, checked when the script called it."""

    cluster: ClusterRuntime
    method: str
    path: str
    authority: str
    headers: Headers
    body: bytes
    timeout: float
    duplicates: bool


def _text(value: object) -> str:
    """A Lua string (lupa hands it over decoded as latin-1) or number as text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise lupa.LuaError(f"expected a string, got {lupa.lua_type(value) or type(value).__name__}")
    return str(value)


def _header_table(table: Any, what: str) -> list[tuple[str, str]]:
    """A Lua table of headers (a value may be a table of strings, as Envoy allows)."""
    if lupa.lua_type(table) != "table":
        raise lupa.LuaError(f"{what}: expected a table of headers")
    out: list[tuple[str, str]] = []
    for name, value in table.items():
        if len(out) >= MAX_CALL_HEADERS:
            raise lupa.LuaError(f"{what}: more than {MAX_CALL_HEADERS} headers")
        if lupa.lua_type(value) == "table":
            out.extend((_text(name).lower(), _text(v)) for v in value.values())
        else:
            out.append((_text(name).lower(), _text(value)))
    return out


class _Call:
    """What one run of a script asks of the proxy (Python's side of the handle)."""

    def __init__(
        self, filter_: LuaFilter, allow_respond: bool, body: RequestBody | None = None,
        request_headers: Headers | None = None,
    ) -> None:  # fmt: skip
        self.filter = filter_
        self.allow_respond = allow_respond
        self.reply: tuple[int, Headers, bytes] | None = None
        self.body_source = body
        self.request_headers = request_headers
        self.body = b""
        self.pending: _HttpCall | None = None
        self.route_cleared = False  # clearRouteCache() was called
        self.chunks_seen = 0  # bodyChunks(): how many pieces the script was given
        self.chunks_changed = False
        self.header_map: _HeaderMap | None = None
        self.view: RequestView | None = None  # the request, for streamInfo() and connection()
        self.context = "{}"  # the route's filter_context (JSON), for filterContext()
        self.on_response = False  # envoy_on_response's call: body() is the response's
        self.response_chunk: bytes | None = None  # bodyChunks() on a response: the piece passing

    def info(self, what: str) -> Any:
        """``streamInfo()`` and ``connection():ssl()``'s answers, from the downstream connection
        (looked up once per connection, as the other filters do)."""
        view = self.view
        if view is None:
            return None
        if what == "protocol":
            return getattr(view.downstream, "protocol", None) or "HTTP/1.1"
        conn = connection_info(view.downstream, view.connection_state)
        if what == "sni":
            return conn.server_name or ""
        if what in ("remote", "local"):
            address, port = (
                (conn.remote, conn.remote_port) if what == "remote" else (conn.local, conn.local_port)
            )
            if address is None:
                return ""
            return f"[{address}]:{port or 0}" if address.version == 6 else f"{address}:{port or 0}"
        if what == "tls":
            return conn.tls
        if what == "cert_presented":
            return bool(conn.peer_cert)
        if what == "uri_sans":
            return self.filter.runtime.table_from(conn.uri_sans())
        if what == "dns_sans":
            return self.filter.runtime.table_from(conn.dns_sans())
        return conn.subject()  # "subject"

    # --- streamInfo():dynamicMetadata() ---

    def _metadata(self) -> dict[str, dict[str, Any]]:
        view = self.view
        if view is None:
            raise lupa.LuaError("dynamicMetadata(): no request here")
        if view.metadata is None:
            view.metadata = {}
        return view.metadata

    def metadata_get(self, namespace: object) -> Any:
        """``get(namespace)``: that namespace's entries as a table (nil when it has none)."""
        entry = self._metadata().get(_text(namespace))
        return _to_lua(self.filter.runtime, entry) if entry is not None else None

    def metadata_set(self, namespace: object, key: object, value: object) -> None:
        """``set(namespace, key, value)``: a string, number, boolean or table (as JSON: a table
        with keys 1..n is a list) under ``key``; other filters (RBAC) read it."""
        entries = self._metadata().setdefault(_text(namespace), {})
        if len(entries) >= MAX_CALL_HEADERS and _text(key) not in entries:
            raise lupa.LuaError(f"dynamicMetadata(): more than {MAX_CALL_HEADERS} keys in one namespace")
        entries[_text(key)] = _from_lua(value)

    def metadata_items(self) -> Any:
        runtime = self.filter.runtime
        pairs = [runtime.table_from([k, _to_lua(runtime, v)]) for k, v in self._metadata().items()]
        return runtime.table_from(pairs)

    @staticmethod
    def base64(data: object) -> str:
        """``base64Escape``: standard base64 of the string's bytes."""
        return base64.b64encode(_text(data).encode("latin-1")).decode("ascii")

    @staticmethod
    def timestamp(as_string: bool, resolution: object = None) -> object:
        """``timestamp()`` (milliseconds since the epoch, a number) and ``timestampString()``
        (milliseconds, or microseconds with ``EnvoyTimestampResolution.MICROSECOND``)."""
        now_ns = time.time_ns()
        if not as_string:
            return now_ns // 1_000_000
        micro = resolution == _MICROSECOND
        return str(now_ns // 1_000 if micro else now_ns // 1_000_000)

    def clear_route(self) -> None:
        """``clearRouteCache()``: the route is chosen again once the script ends."""
        self.route_cleared = True

    def filter_context(self) -> Any:
        """``filterContext()``: the route's ``filter_context`` as a Lua table (empty without one)."""
        return _to_lua(self.filter.runtime, json.loads(self.context))

    def respond(self, headers: Any, body: object) -> None:
        if not self.allow_respond:
            raise lupa.LuaError("respond() is only available in envoy_on_request")
        status, out = 200, []
        for name, value in _header_table(headers, "respond()") if headers is not None else ():
            if name == ":status":
                status = int(value) if value.isdigit() else 0
            else:
                out.append((name.encode("latin-1"), value.encode("latin-1")))
        if not 200 <= status <= 599:
            raise lupa.LuaError(":status must be between 200-599")
        body_bytes = str(body).encode("latin-1") if body is not None else b""
        out.append((b"content-length", str(len(body_bytes)).encode()))
        self.reply = (status, out, body_bytes)

    # --- body() ---

    def body_length(self) -> int:
        return len(self.body)

    def get_bytes(self, index: object, length: object) -> str:
        """``getBytes(index, length)``: Envoy's bounds (``index + length`` within the buffer)."""
        if isinstance(index, bool) or isinstance(length, bool):
            raise lupa.LuaError("getBytes(): index and length must be integers")
        if not isinstance(index, int) or not isinstance(length, int):
            raise lupa.LuaError("getBytes(): index and length must be integers")
        if index < 0 or length < 0 or index + length > len(self.body):
            raise lupa.LuaError("index/length must be >= 0 and (index + length) must be <= buffer size")
        return self.body[index : index + length].decode("latin-1")

    def set_bytes(self, data: object) -> None:
        """``setBytes``: the body is now ``data`` (the request's ``Content-Length`` follows; the
        response's is set as it leaves)."""
        raw = _text(data).encode("latin-1")
        if self.on_response:  # the response's body: the connection manager frames it when it leaves
            self.body = raw
            return
        if self.body_source is None or self.request_headers is None:
            raise lupa.LuaError("setBytes(): no request body here")
        replace_body(self.body_source, self.request_headers, raw)
        self.body = raw

    # --- bodyChunks() ---

    async def next_chunk(self) -> bool:
        """The next piece of the request body for ``bodyChunks()`` (False: no more).  Pieces an
        earlier reader kept come first; then each is read from the client and kept for the
        router (as the body reader does for a filter)."""
        source = self.body_source
        if source is None:
            return False
        self.chunks_seen += 1
        while self.chunks_seen > len(source.kept):
            if source.complete:
                return False
            source.hold = True
            await source.read_more()
        return True

    def chunk_index(self) -> int:
        return self.chunks_seen - 1

    def _chunk(self, index: object) -> bytes:
        if self.on_response:  # only the piece passing now
            if index != self.chunks_seen - 1 or self.response_chunk is None:
                raise lupa.LuaError("bodyChunks(): that chunk has already been passed on")
            return self.response_chunk
        source = self.body_source
        if source is None or not isinstance(index, int) or not 0 <= index < len(source.kept):
            raise lupa.LuaError("bodyChunks(): that chunk has already been passed on")
        return source.kept[index]

    def chunk_length(self, index: object) -> int:
        return len(self._chunk(index))

    def chunk_get_bytes(self, index: object, i: object, n: object) -> str:
        data = self._chunk(index)
        if isinstance(i, bool) or isinstance(n, bool) or not isinstance(i, int) or not isinstance(n, int):
            raise lupa.LuaError("getBytes(): index and length must be integers")
        if i < 0 or n < 0 or i + n > len(data):
            raise lupa.LuaError("index/length must be >= 0 and (index + length) must be <= buffer size")
        return data[i : i + n].decode("latin-1")

    def chunk_set_bytes(self, index: object, data: object) -> None:
        if self.on_response:  # its head (and length) has gone: Envoy's chunks stream by, read-only here
            raise lupa.LuaError("setBytes(): a response's chunks cannot be changed here")
        self._chunk(index)
        assert self.body_source is not None and isinstance(index, int)
        self.body_source.kept[index] = _text(data).encode("latin-1")
        self.chunks_changed = True

    async def chunks_done(self) -> None:
        """After the script: the reader stops keeping what it reads; a body whose chunks the
        script changed is read whole, so its ``Content-Length`` can say its new length."""
        source = self.body_source
        if source is None or not self.chunks_seen:
            return
        if self.chunks_changed and self.request_headers is not None:
            data, _ = await buffer_body(source)
            replace_body(source, self.request_headers, data)

    # --- httpCall() ---

    def http_call(
        self, cluster: object, headers: Any, body: object, timeout_ms: object, asynchronous: bool,
        duplicates: bool,
    ) -> None:  # fmt: skip
        """Check an ``httpCall()`` as Envoy does and keep it for the filter to make (a synchronous
        call: the script waits; an asynchronous one: started and not waited for)."""
        name = _text(cluster)
        clusters = self.filter.clusters
        try:
            runtime = clusters[name] if clusters is not None else None
        except KeyError:
            runtime = None
        if runtime is None:
            raise lupa.LuaError(f"http call cluster invalid. Must be configured: {name}")
        pairs = _header_table(headers, "httpCall()")
        pseudo = {k: v for k, v in pairs if k.startswith(":")}
        if not all(k in pseudo for k in (":method", ":path", ":authority")):
            raise lupa.LuaError("http call headers must include ':path', ':method', and ':authority'")
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
            raise lupa.LuaError("http call timeout must be >= 0")
        raw = _text(body).encode("latin-1") if body is not None else b""
        timeout = timeout_ms / 1000 if timeout_ms > 0 else MAX_CALL_SECONDS  # Envoy: 0 is no timeout
        self.pending = _HttpCall(
            runtime, pseudo[":method"], pseudo[":path"], pseudo[":authority"],
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs if not k.startswith(":")],
            raw, min(timeout, MAX_CALL_SECONDS), duplicates,
        )  # fmt: skip
        if asynchronous:
            self.filter.start_async(self.pending)
            self.pending = None

    @staticmethod
    def log(level: int, message: object) -> None:
        log.log(level, "script log: %s", message)


def _to_lua(runtime: Any, value: object) -> object:
    """A JSON value as Lua sees it: objects and arrays as tables (arrays from index 1)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def _from_lua(value: object, depth: int = 0) -> object:
    """A Lua value as JSON: tables with keys 1..n as lists, other tables as objects (bounded depth)."""
    if depth > 16:
        raise lupa.LuaError("dynamicMetadata(): a table nested too deep")
    if lupa.lua_type(value) == "table":
        items = list(value.items())  # type: ignore[attr-defined]  # a Lua table (lupa's _LuaTable)
        if (
            items
            and all(isinstance(k, int) for k, _ in items)
            and sorted(k for k, _ in items) == list(range(1, len(items) + 1))
        ):
            return [_from_lua(v, depth + 1) for _, v in sorted(items)]
        return {str(k): _from_lua(v, depth + 1) for k, v in items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise lupa.LuaError(f"dynamicMetadata(): cannot keep a {lupa.lua_type(value) or type(value).__name__}")


class _Script:
    """One compiled script in the filter's Lua state: its two entry points (either may be absent)."""

    def __init__(self, runtime: Any, code: str) -> None:
        env = runtime.eval("setmetatable({}, {__index = _G})")
        chunk = runtime.globals().load(code, "=lua filter", "t", env)
        if isinstance(chunk, tuple):
            raise lupa.LuaError(str(chunk[-1]))
        chunk()
        self.on_request = env["envoy_on_request"]
        self.on_response = env["envoy_on_response"]


class _LuaResponse:
    """The response side of one request (an encoder of :class:`~._chain.FilterOutcome`):
    ``envoy_on_response`` runs on the response's head; a script that calls ``body()`` holds the head
    (:attr:`holding`, which the connection manager honours) until the whole body is here, then goes
    on, and the head (with the script's changes), the body (``setBytes``' if it set one) and the
    trailers leave; one that calls ``trailers()`` lets the head and body go and goes on at the end
    with the trailers (nil when there are none), changing them before they leave.  A body larger
    than :data:`MAX_RESPONSE_BODY` fails the script (counted) and leaves as it came."""

    def __init__(self, filter_: LuaFilter, script: _Script, view: RequestView) -> None:
        self.filter = filter_
        self.script = script
        self.view = view
        self.step: Any = None  # the script, waiting ("body" or "trailers"), or None once it ended
        self.waiting = ""
        self.holding = False
        self.call: _Call | None = None
        self.kept: list[bytes] = []
        self.kept_bytes = 0

    def encode_headers(self, status: int, headers: Headers) -> Headers:
        headers = list(headers)
        pseudo = {":status": str(status)}
        started = self.filter.start_response(self.script.on_response, headers, pseudo, self.view)
        if started is not None:
            self.step, self.waiting, self.call = started
            self.holding = self.waiting == "body"
        return headers

    def encode_data(self, data: bytes) -> bytes:
        if self.waiting == "chunk" and data:
            self._next_chunk(data)
        if not self.holding:
            return data
        self.kept.append(bytes(data))
        self.kept_bytes += len(data)
        if self.kept_bytes > MAX_RESPONSE_BODY:  # let go: the script fails, the body leaves as it is
            self.filter._failed(_ScriptFailed(f"body(): the response is over {MAX_RESPONSE_BODY} bytes"))
            self.holding, self.step = False, None
            out = b"".join(self.kept)
            self.kept.clear()
            return out
        return b""

    def _next_chunk(self, data: bytes) -> None:
        """``bodyChunks()``: the script sees this piece (which passes on unchanged) and goes on
        until it asks for the next one, waits for the trailers, or ends."""
        call = self.call
        assert call is not None and self.step is not None  # waiting for a chunk
        call.response_chunk = bytes(data)
        call.chunks_seen += 1
        try:
            what = self.filter._step(self.step, True)
            if what not in ("chunk", "trailers", "done"):
                raise _ScriptFailed(f"{what} is not available while reading chunks here")
        except _ScriptFailed as exc:
            self.filter._failed(exc)
            what = "done"
        finally:
            call.response_chunk = None
        self.waiting = what
        if what == "done":
            self.step = None

    def encode_end(self, trailers: Headers) -> tuple[bytes, Headers]:
        step, call = self.step, self.call
        body = b"".join(self.kept)
        self.kept.clear()
        self.step = None
        self.holding = False
        if step is None or call is None:
            return body, trailers
        call.body = body
        trailers = list(trailers)
        what = self.waiting
        try:
            while what != "done":
                if what == "chunk":  # no more pieces: the iterator ends
                    what = self.filter._step(step, False)
                elif what == "body":
                    if self.waiting != "body":  # trailers() first: the body has gone
                        raise _ScriptFailed("body() after the body has been sent")
                    what = self.filter._step(step)
                elif what == "trailers":
                    table = _HeaderMap(trailers, {}, self.filter.runtime) if trailers else None
                    what = self.filter._step(step, table)
                else:
                    raise _ScriptFailed(f"{what} is not available in envoy_on_response here")
        except _ScriptFailed as exc:
            self.filter._failed(exc)
            return body, trailers
        return (call.body if self.waiting == "body" else body), trailers


class _ScriptFailed(Exception):
    """A script's error, or a limit it reached: counted, and the request goes on."""


class LuaFilter:
    #: a script may call ``body()``: the connection manager hands this filter the request body
    reads_body = True

    def __init__(self, config: Lua, scope: Scope, clusters: Any = None) -> None:
        """``clusters``: the proxy's cluster manager, for ``httpCall()``."""
        self.config = config
        self.scope = scope
        self.clusters = clusters
        self.errors = f"lua.{config.stat_prefix}.errors" if config.stat_prefix else "lua.errors"
        scope.declare(self.errors)
        self.runtime = lupa.LuaRuntime(encoding="latin-1", max_memory=MAX_MEMORY)
        self._start = self.runtime.execute(_PRELUDE)
        self.default = _Script(self.runtime, config.code) if config.code else None
        self.named = {name: _Script(self.runtime, code) for name, code in config.source_codes}
        self.by_code: dict[str, _Script] = {}
        self.async_calls = 0

    def _script(self, override: PerRouteConfig | None) -> _Script | None:
        if not isinstance(override, LuaPerRoute):
            return self.default
        if override.disabled:
            return None
        if override.name is not None:
            return self.named.get(override.name)
        if override.code is None:
            return self.default  # a per-route config with only a filter_context
        code = override.code
        script = self.by_code.get(code)
        if script is None:
            if len(self.by_code) >= MAX_SCRIPTS:
                self.by_code.clear()
            script = self.by_code[code] = _Script(self.runtime, code)
        return script

    def _failed(self, exc: BaseException) -> None:
        self.scope.inc(self.errors)
        log.error("script error: %s", exc)

    def _step(self, step: Any, *args: object) -> str:
        """One resume of a script: what it waits for now ("done" once it ended)."""
        try:
            what = step(*args)
        except (lupa.LuaError, lupa.LuaMemoryError, ValueError, TypeError) as exc:
            raise _ScriptFailed(exc) from None
        if what not in ("done", "respond", "body", "http", "chunk", "trailers"):
            raise _ScriptFailed("script performed an unexpected yield")
        return str(what)

    def start_response(
        self, entry: Any, headers: Headers, pseudo: dict[str, str], view: RequestView | None = None
    ) -> tuple[Any, str, _Call] | None:
        """``envoy_on_response(handle)`` on the response's head, within the limits, until it ends
        (None) or waits for the body or the trailers: then the script, what it waits for, and its
        call, for :class:`_LuaResponse` to go on with.  A failure is counted and logged, never
        raised."""
        if entry is None:
            return None
        call = _Call(self, False)
        call.view = view
        call.on_response = True
        try:
            step = self._start(
                entry, call, _HeaderMap(headers, pseudo, self.runtime), MAX_INSTRUCTIONS, False
            )
            what = self._step(step)
        except _ScriptFailed as exc:
            self._failed(exc)
            return None
        if what in ("body", "trailers", "chunk"):
            return step, what, call
        if what != "done":
            self._failed(_ScriptFailed(f"{what} is not available in envoy_on_response here"))
        return None

    async def run_request(self, entry: Any, request: RequestView, call: _Call) -> None:
        """``envoy_on_request(handle)`` as a coroutine: resumed after each wait it yields for (the
        whole body read, an ``httpCall()`` answered) until it ends or responds.  A script that fails
        is counted and logged, and the request goes on; the body's own errors (a 413, a client
        gone) are the connection manager's and propagate."""
        host = next((v for k, v in request.headers if k == b"host"), b"").decode("latin-1")
        pseudo = {":method": request.method, ":path": request.path, ":authority": host}
        headers = call.header_map = _HeaderMap(request.headers, pseudo, self.runtime)
        try:
            step = self._start(entry, call, headers, MAX_INSTRUCTIONS, True)
            what = self._step(step)
            while what in ("body", "http", "chunk", "trailers"):
                if what == "body":
                    if request.body is not None:
                        call.body, _ = await buffer_body(request.body)
                    what = self._step(step)
                elif what == "trailers":  # the body read whole (kept for the router), then its trailers
                    trailers = None
                    if request.body is not None:
                        await buffer_body(request.body)
                        if request.body.trailers:  # changed in place: the router forwards them
                            trailers = _HeaderMap(request.body.trailers, {}, self.runtime)
                    what = self._step(step, trailers)
                elif what == "chunk":
                    what = self._step(step, await call.next_chunk())
                else:
                    what = self._step(step, *await self._http(call))
        except _ScriptFailed as exc:
            self._failed(exc)
        finally:
            if request.body is not None and call.chunks_seen:
                request.body.hold = False  # bodyChunks() read with it set
        await call.chunks_done()

    async def _http(self, call: _Call) -> tuple[Any, Any]:
        """Make the call the script waits for: the response's headers as a Lua table (``:status``
        included; a repeated header's last value, or all of them in a table with
        ``return_duplicate_headers``) and its body (nil when empty).  A failure answers as Envoy's
        does: 503 with the body ``upstream failure``."""
        pending = call.pending
        assert pending is not None
        call.pending = None
        try:
            reply = await http_call(
                pending.cluster, pending.method, pending.path, pending.headers, pending.body,
                timeout=pending.timeout, host_header=pending.authority,
            )  # fmt: skip
            status, headers, body = reply.status, reply.headers, reply.body
        except SideCallError as exc:
            log.debug("httpCall to %s failed: %s", pending.cluster.name, exc)
            status, headers, body = 503, [], b"upstream failure"
        table: dict[str, Any] = {":status": str(status)}
        for k, v in headers:
            name, value = k.decode("latin-1"), v.decode("latin-1")
            if pending.duplicates and name in table:
                previous = table[name]
                table[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                table[name] = value
        lua_table = self.runtime.table_from(
            {k: self.runtime.table_from(v) if isinstance(v, list) else v for k, v in table.items()}
        )
        return lua_table, body.decode("latin-1") if body else None

    def start_async(self, pending: _HttpCall) -> None:
        """An asynchronous ``httpCall()``: made in the background, its answer dropped; at most
        :data:`MAX_ASYNC_CALLS` at once (more are counted in ``lua.errors`` and not made)."""
        if self.async_calls >= MAX_ASYNC_CALLS:
            raise lupa.LuaError(f"more than {MAX_ASYNC_CALLS} asynchronous http calls in flight")
        self.async_calls += 1

        async def call() -> None:
            try:
                await http_call(
                    pending.cluster, pending.method, pending.path, pending.headers, pending.body,
                    timeout=pending.timeout, host_header=pending.authority,
                )  # fmt: skip
            except SideCallError as exc:
                log.debug("asynchronous httpCall to %s failed: %s", pending.cluster.name, exc)
            except Exception:  # a system task's exception would end the whole run: logged here
                log.exception("asynchronous httpCall to %s", pending.cluster.name)
            finally:
                self.async_calls -= 1

        trio.lowlevel.spawn_system_task(call, name="lua asynchronous httpCall")

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: Callable[[], float],
    ) -> None:
        try:
            script = self._script(override)
        except lupa.LuaError as exc:
            self._failed(exc)
            return
        if script is None:
            return
        if script.on_request is not None:
            call = _Call(self, True, request.body, request.headers)
            call.view = request
            if isinstance(override, LuaPerRoute) and override.filter_context is not None:
                call.context = override.filter_context
            await self.run_request(script.on_request, request, call)
            if call.reply is not None:
                outcome.cached = call.reply  # the script's reply, exactly
                return
            changed = call.header_map is not None and call.header_map.modified
            if call.route_cleared or (self.config.clear_route_cache and changed):
                outcome.clear_route = True  # Envoy: changed headers (or the script) clear the route cache
        if script.on_response is not None:
            outcome.encoders.append(_LuaResponse(self, script, request))
