"""``envoy.filters.http.ext_authz``: asks an external authorization service about each request,
over HTTP (``http_service``) or gRPC (``grpc_service``, ``envoy.service.auth.v3.Authorization/Check``).

Envoy's behaviour (source/extensions/filters/http/ext_authz/ and filters/common/ext_authz/):

- HTTP: the check is the request's method and ``path_prefix`` + its path, with no body
  (``content-length: 0``), its ``Host`` and ``Authorization`` and the headers ``allowed_headers``
  names, plus ``headers_to_add``.  With ``with_request_body`` (or a route's
  ``check_settings.with_request_body``), the request body is read first (up to
  ``max_request_bytes``; more is 413 ``Payload Too Large`` without a check, unless
  ``allow_partial_message``: then its first ``max_request_bytes``) and sent as the check's body with
  ``x-envoy-auth-partial-body: true|false``; the gRPC check carries it in ``body`` (UTF-8) or
  ``raw_body`` (``pack_as_bytes``).  An upgrade request's body is never read.  A 200 allows the
  request: the answer's headers that ``allowed_upstream_headers`` names replace the request's
  (``_to_append``: added), those ``allowed_client_headers_on_success`` names go on the response.
  Any other status but a 5xx denies it: the client gets that status, the body, and the headers
  (all but ``Host`` when ``allowed_client_headers`` is unset; else those it names, with
  ``WWW-Authenticate`` and ``Location``).  A 5xx, no answer within the timeout, or no connection is an error.
- gRPC: a ``CheckRequest`` with the peer's and our address, the request's method, path, host,
  scheme, headers (pseudo-headers included) and the route's ``context_extensions``; an OK status
  allows (``ok_response``: headers to set or append, headers to remove, response headers to add),
  any other denies (``denied_response``: its status, 403 by default, headers and body); an RPC
  failure is an error.
- Dynamic metadata: the gRPC check carries the request's ``metadata_context_namespaces``; the
  service's ``dynamic_metadata`` (gRPC) or the answer headers ``dynamic_metadata_from_headers``
  names (HTTP, when allowed) are written under ``envoy.filters.http.ext_authz`` for later filters.
- ``disallowed_headers`` are never sent (over ``allowed_headers``); ``include_tls_session`` adds
  the SNI (as the TLS inspector read it) to the gRPC check; ``deny_at_disable`` denies, with
  ``status_on_error``, a request ``filter_enabled`` leaves out.
- An error lets the request through with ``failure_mode_allow`` (and
  ``x-envoy-auth-failure-mode-allowed: true`` with ``failure_mode_allow_header_add``), else answers
  ``status_on_error`` (403) with no body.  Denials and errors carry the response flag ``UAEX``.

Counters: ``ext_authz.[<stat_prefix>.]ok``, ``denied``, ``error``, ``disabled``,
``failure_mode_allowed``.  The gRPC client is grpcio's (blocking, in a worker thread, with grpc's own
deadline); the HTTP client is :func:`~._side_call.http_call` through the cluster.
"""

from __future__ import annotations

import functools
import random
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ..config import (
    ExtAuthz,
    ExtAuthzBufferSettings,
    ExtAuthzPerRoute,
    PerRouteConfig,
    RuntimeValue,
    StringMatcher,
)
from ..stats import Scope
from ._body import buffer_body
from ._connection import connection_info
from ._side_call import SideCallError, http_call

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["ExtAuthzFilter"]

Headers = list[tuple[bytes, bytes]]

_CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
#: headers a denial never passes to the client as the service wrote them (the reply is framed here)
_NOT_TO_CLIENT = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
_ALWAYS_TO_CLIENT = frozenset({b"www-authenticate", b"location"})
#: the headers an HTTP check always carries (Envoy's defaults beside ``allowed_headers``)
_ALWAYS_CHECKED = frozenset({b"host", b"authorization"})
#: how many gRPC channels (one per authorization host) one filter keeps open
MAX_CHANNELS = 64


def _matches(patterns: Sequence[StringMatcher], name: bytes) -> bool:
    text = name.decode("latin-1")
    return any(p.matches(text) for p in patterns)


@dataclass(slots=True)
class _Decision:
    allowed: bool
    status: int = 403
    body: bytes = b""
    client_headers: Headers = field(default_factory=list)  # a denial's, or on success
    set_headers: Headers = field(default_factory=list)
    append_headers: Headers = field(default_factory=list)
    remove_headers: list[bytes] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # dynamic metadata the service gave


#: the namespace of the dynamic metadata the service's answer writes
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"


def _is_upgrade(headers: Headers) -> bool:
    """An upgrade (WebSocket) request: Envoy never buffers its body for the check."""
    return any(k == b"upgrade" for k, _ in headers)


class ExtAuthzFilter:
    #: ``with_request_body`` (here or on a route) reads the request body before the check
    reads_body = True

    def __init__(
        self,
        config: ExtAuthz,
        scope: Scope,
        runtime: Callable[[str], RuntimeValue],
        rng: random.Random,
        clusters: Any = None,
    ) -> None:
        self.config = config
        self.scope = scope
        self.runtime = runtime
        self.rng = rng
        self.clusters = clusters
        self.prefix = f"ext_authz.{config.stat_prefix}." if config.stat_prefix else "ext_authz."
        scope.declare(
            *(self.prefix + n for n in ("ok", "denied", "error", "disabled", "failure_mode_allowed"))
        )
        self._channels: dict[str, Any] = {}

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: Callable[[], float],
    ) -> None:
        from ._chain import sample  # the chain imports this module

        config = self.config
        per_route = override if isinstance(override, ExtAuthzPerRoute) else None
        if per_route is not None and per_route.disabled:
            return
        if config.filter_enabled is not None and not sample(config.filter_enabled, self.runtime, self.rng):
            self.scope.inc(self.prefix + "disabled")
            if config.deny_at_disable is not None and self._flag(config.deny_at_disable):
                outcome.status = config.status_on_error  # Envoy: deny_at_disable
                outcome.flags.append("UAEX")
            return
        body: tuple[bytes, bool] | None = None
        settings = self._buffer_settings(per_route)
        if settings is not None and request.body is not None and not _is_upgrade(request.headers):
            data, complete = await buffer_body(request.body, settings.max_request_bytes)
            partial = not complete or len(data) > settings.max_request_bytes
            if partial and not settings.allow_partial_message:
                # Envoy: the buffer limit is max_request_bytes; a larger body is 413, unchecked
                outcome.status, outcome.body = 413, "Payload Too Large"
                return
            if data or partial:  # an empty body: nothing to send, as Envoy (end of stream with the head)
                body = (data[: settings.max_request_bytes], partial)
        try:
            if config.kind == "http":
                decision = await self._check_http(request, body)
            else:
                decision = await self._check_grpc(
                    request, per_route.context_extensions if per_route else (), body, settings
                )
        except SideCallError:
            self.scope.inc(self.prefix + "error")
            if config.failure_mode_allow:
                self.scope.inc(self.prefix + "failure_mode_allowed")
                if config.failure_mode_allow_header_add:
                    request.headers.append((b"x-envoy-auth-failure-mode-allowed", b"true"))
                return
            outcome.status = config.status_on_error
            outcome.flags.append("UAEX")
            return
        if decision.metadata:
            if request.metadata is None:
                request.metadata = {}
            request.metadata.setdefault(METADATA_NAMESPACE, {}).update(decision.metadata)
        if not decision.allowed:
            self.scope.inc(self.prefix + "denied")
            outcome.flags.append("UAEX")
            # the service's own answer, exactly (status, headers, body), as Envoy relays it
            outcome.cached = (decision.status, decision.client_headers, decision.body)
            outcome.cached_is_local_reply = True  # (Envoy's sendLocalReply: gRPC-formatted for gRPC)
            return
        self.scope.inc(self.prefix + "ok")
        headers = request.headers
        if decision.set_headers or decision.remove_headers:
            names = {k for k, _ in decision.set_headers} | set(decision.remove_headers)
            headers[:] = [(k, v) for k, v in headers if k not in names]
        headers.extend(decision.set_headers)
        headers.extend(decision.append_headers)
        outcome.response_headers.extend(decision.client_headers)
        if config.clear_route_cache and (
            decision.set_headers or decision.append_headers or decision.remove_headers
        ):
            outcome.clear_route = True  # Envoy: the service changed the request's headers

    def _flag(self, flag: tuple[bool, str | None]) -> bool:
        """A ``RuntimeFeatureFlag``: the runtime's boolean under its key, else its default."""
        value, key = flag
        found = self.runtime(key) if key is not None else None
        return found if isinstance(found, bool) else value

    def _allowed(self, name: bytes, patterns: Sequence[StringMatcher] | None) -> bool:
        """Whether a request header goes to the service: ``allowed_headers`` (None: every one),
        then never one ``disallowed_headers`` names."""
        if patterns is not None and not _matches(patterns, name):
            return False
        disallowed = self.config.disallowed_headers
        return not (disallowed and _matches(disallowed, name))

    def _buffer_settings(self, per_route: ExtAuthzPerRoute | None) -> ExtAuthzBufferSettings | None:
        """``with_request_body`` for this request: the route's ``check_settings`` may turn it off
        (``disable_request_body_buffering``) or give its own."""
        if per_route is not None:
            if per_route.disable_request_body_buffering:
                return None
            if per_route.with_request_body is not None:
                return per_route.with_request_body
        return self.config.with_request_body

    # --- HTTP ---

    async def _check_http(self, request: RequestView, body: tuple[bytes, bool] | None = None) -> _Decision:
        """``body``: the request body read for the check and whether it is partial (sent as the
        check's body, with ``x-envoy-auth-partial-body``)."""
        config = self.config
        allowed = config.allowed_headers or ()
        disallowed = config.disallowed_headers
        check = [
            (k, v)
            for k, v in request.headers
            if (k in _ALWAYS_CHECKED or (allowed and _matches(allowed, k)))
            and not (disallowed and _matches(disallowed, k))
        ]
        check.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in config.headers_to_add)
        if body is not None:
            check.append((b"x-envoy-auth-partial-body", b"true" if body[1] else b"false"))
        if self.clusters is None:
            raise SideCallError("no cluster manager")
        host = next((v for k, v in request.headers if k == b"host"), b"").decode("latin-1")
        reply = await http_call(
            self.clusters[config.cluster],
            request.method,
            config.path_prefix + request.path,
            check,
            body[0] if body is not None else b"",
            timeout=config.timeout,
            host_header=host or None,
        )
        if reply.status >= 500:
            raise SideCallError(f"authorization service answered {reply.status}")
        if reply.status == 200:
            return _Decision(
                True,
                set_headers=[
                    (k, v) for k, v in reply.headers if _matches(config.allowed_upstream_headers, k)
                ],
                append_headers=[
                    (k, v) for k, v in reply.headers if _matches(config.allowed_upstream_headers_to_append, k)
                ],
                client_headers=[
                    (k, v) for k, v in reply.headers if _matches(config.allowed_client_headers_on_success, k)
                ],
                metadata={
                    k.decode("latin-1"): v.decode("latin-1")
                    for k, v in reply.headers
                    if config.dynamic_metadata_from_headers
                    and _matches(config.dynamic_metadata_from_headers, k)
                },
            )
        patterns = config.allowed_client_headers
        to_client = [
            (k, v)
            for k, v in reply.headers
            if k not in _NOT_TO_CLIENT
            and (patterns is None or k in _ALWAYS_TO_CLIENT or _matches(patterns, k))
        ]
        to_client.append((b"content-length", str(len(reply.body)).encode()))
        return _Decision(False, reply.status, reply.body, to_client)

    # --- gRPC ---

    async def _check_grpc(
        self, request: RequestView, context: Sequence[tuple[str, str]],
        request_body: tuple[bytes, bool] | None = None, settings: ExtAuthzBufferSettings | None = None,
    ) -> _Decision:  # fmt: skip
        import grpc  # type: ignore[import-untyped]  # grpcio ships no type stubs; checked at config load
        from envoy.service.auth.v3 import external_auth_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
        from google.protobuf import json_format

        config = self.config
        target = config.target
        if target is None:
            if self.clusters is None:
                raise SideCallError("no cluster manager")
            cluster = self.clusters[config.cluster]
            if cluster.tls_context is not None:
                raise SideCallError(
                    f"{cluster.name}: gRPC over TLS to the authorization service is not supported"
                )
            host = cluster.choose_host()
            if host is None:
                raise SideCallError(f"{cluster.name}: no healthy upstream")
            target = f"{host.address}:{host.port}"
        check = self._check_request(request, context, external_auth_pb2)
        if request_body is not None and settings is not None:
            http = check.attributes.request.http
            if settings.pack_as_bytes:
                http.raw_body = request_body[0]
            else:
                http.body = request_body[0].decode("utf-8", errors="replace")
            http.headers["x-envoy-auth-partial-body"] = "true" if request_body[1] else "false"
        call = self._channel(grpc, target).unary_unary(
            _CHECK_METHOD,
            request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
            response_deserializer=external_auth_pb2.CheckResponse.FromString,
        )
        try:
            response = await trio.to_thread.run_sync(
                functools.partial(call, check, timeout=config.timeout, wait_for_ready=False),
                abandon_on_cancel=True,
            )
        except grpc.RpcError as exc:
            raise SideCallError(f"{target}: {exc.code() if hasattr(exc, 'code') else exc}") from None
        metadata = (
            json_format.MessageToDict(response.dynamic_metadata)
            if response.HasField("dynamic_metadata")
            else {}
        )
        if response.status.code == 0:
            ok = response.ok_response
            set_headers, append_headers = _header_options(ok.headers, default_append=False)
            client_headers = [h for pair in _header_options(ok.response_headers_to_add, True) for h in pair]
            return _Decision(
                True,
                set_headers=set_headers,
                append_headers=append_headers,
                remove_headers=[n.lower().encode("latin-1") for n in ok.headers_to_remove],
                client_headers=client_headers,
                metadata=metadata,
            )
        denied = response.denied_response
        status = denied.status.code if denied.status.code >= 200 else 403
        set_headers, append_headers = _header_options(denied.headers, default_append=False)
        body = denied.body.encode("utf-8")
        to_client = [(k, v) for k, v in [*set_headers, *append_headers] if k not in _NOT_TO_CLIENT]
        to_client.append((b"content-length", str(len(body)).encode()))
        return _Decision(False, status, body, to_client, metadata=metadata)

    def _channel(self, grpc: Any, target: str) -> Any:
        channel = self._channels.get(target)
        if channel is None:
            if len(self._channels) >= MAX_CHANNELS:
                _, oldest = self._channels.popitem()
                oldest.close()
            authority = self.config.authority
            options = [("grpc.default_authority", authority)] if authority else None
            channel = self._channels[target] = grpc.insecure_channel(target, options=options)
        return channel

    def _check_request(self, request: RequestView, context: Sequence[tuple[str, str]], pb2: Any) -> Any:
        conn = connection_info(request.downstream, request.connection_state)
        check = pb2.CheckRequest()
        attributes = check.attributes
        if conn.remote is not None:
            attributes.source.address.socket_address.address = str(conn.remote)
            attributes.source.address.socket_address.port_value = conn.remote_port or 0
        if conn.tls and conn.peer_cert:
            attributes.source.principal = (conn.uri_sans() or [conn.subject()])[0]
            if self.config.include_peer_certificate and conn.peer_cert_der:
                # Envoy: the client certificate in URL-encoded PEM
                pem = ssl.DER_cert_to_PEM_cert(conn.peer_cert_der)
                attributes.source.certificate = urllib.parse.quote(pem, safe="")
        if self.config.include_tls_session and conn.tls and conn.server_name:
            attributes.tls_session.sni = conn.server_name
        if conn.local is not None:
            attributes.destination.address.socket_address.address = str(conn.local)
            attributes.destination.address.socket_address.port_value = conn.local_port or 0
        http = attributes.request.http
        host = next((v for k, v in request.headers if k == b"host"), b"").decode("latin-1")
        scheme = str(getattr(request.downstream, "scheme", "http"))
        http.method, http.path, http.host, http.scheme = request.method, request.path, host, scheme
        http.protocol = "HTTP/1.1"
        length = next((v for k, v in request.headers if k == b"content-length"), None)
        http.size = int(length) if length is not None and length.isdigit() else -1
        request_id = next((v for k, v in request.headers if k == b"x-request-id"), None)
        if request_id is not None:
            http.id = request_id.decode("latin-1")
        allowed = self.config.allowed_headers
        joined: dict[str, str] = {":authority": host, ":method": request.method, ":path": request.path,
                                  ":scheme": scheme}  # fmt: skip
        for k, v in request.headers:
            if not self._allowed(k, allowed):
                continue
            name, value = k.decode("latin-1"), v.decode("latin-1")
            joined[name] = f"{joined[name]},{value}" if name in joined else value
        http.headers.update(joined)
        attributes.context_extensions.update(dict(context))
        for namespace in self.config.metadata_context_namespaces:
            entry = (request.metadata or {}).get(namespace)
            if entry is not None:
                attributes.metadata_context.filter_metadata[namespace].update(entry)
        return check


def _header_options(options: Any, default_append: bool) -> tuple[Headers, Headers]:
    """``HeaderValueOption``s as (headers to set, headers to append): ``append_action``, else the
    deprecated ``append`` (its default depends on the message, as Envoy documents)."""
    set_headers: Headers = []
    append_headers: Headers = []
    for option in options:
        pair = (option.header.key.lower().encode("latin-1"), option.header.value.encode("latin-1"))
        if option.append_action != 0:  # OVERWRITE_IF_EXISTS_OR_ADD and the like: replace
            set_headers.append(pair)
        elif option.append.value if option.HasField("append") else default_append:
            append_headers.append(pair)
        else:
            set_headers.append(pair)
    return set_headers, append_headers
