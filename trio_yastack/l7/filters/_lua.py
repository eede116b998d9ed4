"""``envoy.filters.http.lua``: Lua scripts on requests and responses, run by ``lupa`` (Lua 5.4+).

Envoy's behaviour (docs: "Lua" HTTP filter): a script defines ``envoy_on_request(request_handle)``
and/or ``envoy_on_response(response_handle)``; one Lua state per filter (Envoy: per worker) keeps
the script's globals from request to request.  The handles offer here:

- ``headers()``: ``get(name)``, ``getNumValues(name)``, ``add(name, value)``,
  ``replace(name, value)``, ``remove(name)``, and ``pairs()`` over them (names lowercased; the
  request's ``:method``, ``:path``, ``:authority`` and the response's ``:status`` can be read);
- ``respond(headers, body)`` (requests only): a local reply with ``headers[":status"]``, the other
  headers and ``body``; the script ends there;
- ``logTrace``/``logDebug``/``logInfo``/``logWarn``/``logErr``/``logCritical``: the proxy's log
  (the ``trio_yastack.l7.lua`` logger);
- ``body()``: not available: the filters here run on the request's head before its body is read,
  and a response's head is sent before its body; a script calling it fails (counted below).

Every call is bounded: a script that runs more than :data:`MAX_INSTRUCTIONS` Lua instructions is
stopped, and the Lua state's memory is capped at :data:`MAX_MEMORY`.  A script that fails (an error,
a limit) is counted in ``lua.errors`` and the request goes on as Envoy lets it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lupa  # type: ignore[import-untyped]  # lupa ships no type stubs

from ..config import Lua, LuaPerRoute, PerRouteConfig
from ..stats import Scope

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["MAX_INSTRUCTIONS", "MAX_MEMORY", "LuaFilter"]

log = logging.getLogger("trio_yastack.l7.lua")
Headers = list[tuple[bytes, bytes]]

#: the most Lua instructions one call of ``envoy_on_request``/``envoy_on_response`` may run
MAX_INSTRUCTIONS = 1_000_000
#: the memory one filter's Lua state may hold
MAX_MEMORY = 64 * 1024 * 1024
#: how many compiled scripts (per-route ``source_code``) one filter keeps
MAX_SCRIPTS = 256

# The handles are Lua tables over Python callables (so ``pairs`` and the ``obj:method()`` calls
# scripts use behave as in Envoy); ``run`` calls an entry point under an instruction-count hook.
_PRELUDE = """
local limit_reached = "lua: the script ran more than its instruction limit"
local function header_map(py)
  local map = {}
  function map:get(name) return py.get(name) end
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
local function handle(py, headers)
  local h = {}
  local map = header_map(headers)
  function h:headers() return map end
  function h:respond(reply_headers, body) py.respond(reply_headers, body or "") end
  function h:body() error("body() is not available in this proxy's Lua filter", 2) end
  function h:bodyChunks() error("bodyChunks() is not available in this proxy's Lua filter", 2) end
  function h:logTrace(m) py.log(5, m) end
  function h:logDebug(m) py.log(10, m) end
  function h:logInfo(m) py.log(20, m) end
  function h:logWarn(m) py.log(30, m) end
  function h:logErr(m) py.log(40, m) end
  function h:logCritical(m) py.log(50, m) end
  return h
end
return function(entry, py, headers, limit)
  local count = 0
  debug.sethook(function()
    count = count + 1000
    if count > limit then error(limit_reached, 2) end
  end, "", 1000)
  local ok, err = pcall(entry, handle(py, headers))
  debug.sethook()
  if not ok then error(err, 0) end
end
"""


class _HeaderMap:
    """A header list as a script's ``headers()`` sees it (pseudo-headers first, read-only)."""

    def __init__(self, headers: Headers, pseudo: dict[str, str], runtime: Any) -> None:
        self.headers = headers
        self.pseudo = pseudo
        self.runtime = runtime

    @staticmethod
    def _key(name: object) -> bytes:
        return str(name).lower().encode("latin-1")

    def get(self, name: object) -> str | None:
        text = str(name).lower()
        if text in self.pseudo:
            return self.pseudo[text]
        key = self._key(name)
        values = [v.decode("latin-1") for k, v in self.headers if k == key]
        return ",".join(values) if values else None

    def count(self, name: object) -> int:
        key = self._key(name)
        return sum(1 for k, _ in self.headers if k == key)

    def add(self, name: object, value: object) -> None:
        self.headers.append((self._key(name), str(value).encode("latin-1")))

    def replace(self, name: object, value: object) -> None:
        key = self._key(name)
        self.headers[:] = [(k, v) for k, v in self.headers if k != key]
        self.add(name, value)

    def remove(self, name: object) -> None:
        key = self._key(name)
        self.headers[:] = [(k, v) for k, v in self.headers if k != key]

    def items(self) -> Any:
        pairs = [(k, v) for k, v in self.pseudo.items()]
        pairs += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers]
        return self.runtime.table_from([self.runtime.table_from(p) for p in pairs])


class _Call:
    """What one call of a script asks of the proxy (Python's side of the handle)."""

    def __init__(self, allow_respond: bool) -> None:
        self.allow_respond = allow_respond
        self.reply: tuple[int, Headers, bytes] | None = None

    def respond(self, headers: Any, body: object) -> None:
        if not self.allow_respond:
            raise lupa.LuaError("respond() is only available in envoy_on_request")
        status, out = 200, []
        for name, value in headers.items() if headers is not None else ():
            if str(name) == ":status":
                status = int(str(value))
            else:
                out.append((str(name).lower().encode("latin-1"), str(value).encode("latin-1")))
        if not 200 <= status <= 599:
            raise lupa.LuaError(f"respond(): :status {status} is not a final status")
        body_bytes = str(body).encode("latin-1")
        out.append((b"content-length", str(len(body_bytes)).encode()))
        self.reply = (status, out, body_bytes)
        raise _Responded  # the script ends here, as in Envoy

    @staticmethod
    def log(level: int, message: object) -> None:
        log.log(level, "script log: %s", message)


class _Responded(Exception):
    """Raised through the Lua call by ``respond()`` to end the script."""


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
    """The response side of one request: ``envoy_on_response`` on the response's head (an encoder
    of :class:`~._chain.FilterOutcome`)."""

    def __init__(self, filter_: LuaFilter, script: _Script) -> None:
        self.filter = filter_
        self.script = script

    def encode_headers(self, status: int, headers: Headers) -> Headers:
        headers = list(headers)
        self.filter.run(self.script.on_response, headers, {":status": str(status)}, _Call(False))
        return headers

    def encode_data(self, data: bytes) -> bytes:
        return data

    def encode_end(self, trailers: Headers) -> tuple[bytes, Headers]:
        return b"", trailers


class LuaFilter:
    def __init__(self, config: Lua, scope: Scope) -> None:
        self.config = config
        self.scope = scope
        self.errors = f"lua.{config.stat_prefix}.errors" if config.stat_prefix else "lua.errors"
        scope.declare(self.errors)
        self.runtime = lupa.LuaRuntime(encoding="latin-1", max_memory=MAX_MEMORY)
        self._run = self.runtime.execute(_PRELUDE)
        self.default = _Script(self.runtime, config.code) if config.code else None
        self.named = {name: _Script(self.runtime, code) for name, code in config.source_codes}
        self.by_code: dict[str, _Script] = {}

    def _script(self, override: PerRouteConfig | None) -> _Script | None:
        if not isinstance(override, LuaPerRoute):
            return self.default
        if override.disabled:
            return None
        if override.name is not None:
            return self.named.get(override.name)
        code = override.code or ""
        script = self.by_code.get(code)
        if script is None:
            if len(self.by_code) >= MAX_SCRIPTS:
                self.by_code.clear()
            script = self.by_code[code] = _Script(self.runtime, code)
        return script

    def run(self, entry: Any, headers: Headers, pseudo: dict[str, str], call: _Call) -> None:
        """``entry(handle)`` within the limits; a failure is counted and logged, never raised."""
        if entry is None:
            return
        try:
            self._run(entry, call, _HeaderMap(headers, pseudo, self.runtime), MAX_INSTRUCTIONS)
        except _Responded:
            pass
        except (lupa.LuaError, lupa.LuaMemoryError, ValueError, TypeError) as exc:
            if call.reply is not None:
                return  # respond() ended the script (its exception surfaces as a Lua error)
            self.scope.inc(self.errors)
            log.error("script error: %s", exc)

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
            self.scope.inc(self.errors)
            log.error("script error: %s", exc)
            return
        if script is None:
            return
        if script.on_request is not None:
            host = next((v for k, v in request.headers if k == b"host"), b"").decode("latin-1")
            pseudo = {":method": request.method, ":path": request.path, ":authority": host}
            call = _Call(True)
            self.run(script.on_request, request.headers, pseudo, call)
            if call.reply is not None:
                outcome.cached = call.reply  # the script's reply, exactly
                return
        if script.on_response is not None:
            outcome.encoders.append(_LuaResponse(self, script))
