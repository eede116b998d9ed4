"""``envoy.filters.http.compressor`` with gzip: compresses responses on the way to the client.

Envoy's behaviour (source/extensions/filters/http/compressor): on the request, it notes whether the
client's ``Accept-Encoding`` takes gzip.  A response is *compressible* when the filter is enabled,
its ``Content-Length`` reaches ``min_content_length`` (or it is chunked), its ``Content-Type`` is one
of ``content_type`` (or absent), it carries no ``Cache-Control: no-transform``, no
``Content-Encoding``, and no ``ETag`` where ``disable_on_etag_header`` is set.  A compressible
response gets ``Vary: Accept-Encoding`` whatever the client accepts (so a cache in front knows);
when the client takes gzip and the response has a body, it is compressed: ``Content-Length``
removed (chunked to HTTP/1.1 clients), ``Content-Encoding: gzip``, a strong ETag weakened.  Counted
as ``http.<stat_prefix>.compressor.gzip.{compressed,not_compressed,no_accept_header,
total_uncompressed_bytes,total_compressed_bytes}``.  ``remove_accept_encoding_header`` (or a route's
``overrides``) sends the request upstream without ``Accept-Encoding``, so the upstream never
compresses before this filter does.

The response is compressed at the filter's place in the chain (:class:`CompressorResponse`, an
encoder): as in Envoy, the filters configured after it (nearer the router) see the plain response
first, and those configured before it see the compressed one (its ``content-encoding: gzip``).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..config import Compressor, CompressorPerRoute, PerRouteConfig, RuntimeValue
from ..stats import Scope

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["CompressorFilter", "CompressorResponse", "GzipStream", "accepts_gzip", "start_compression"]

Headers = list[tuple[bytes, bytes]]
PREFIX = "compressor.gzip."


def accepts_gzip(accept_encoding: bytes) -> bool:
    """RFC 9110 12.5.3: gzip (or ``*``) listed with a quality above 0, gzip not refused by name."""
    star = False
    for item in accept_encoding.split(b","):
        coding, _, params = item.strip().partition(b";")
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.strip().partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        coding = coding.strip().lower()
        if coding in (b"gzip", b"x-gzip"):
            return q > 0
        if coding == b"*":
            star = q > 0
    return star


def _get(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class GzipStream:
    """One response's gzip stream (zlib with a gzip wrapper, the configured level and window)."""

    __slots__ = ("compressed", "scope", "uncompressed", "zobj")

    def __init__(self, config: Compressor, scope: Scope) -> None:
        self.zobj = zlib.compressobj(
            config.compression_level,
            zlib.DEFLATED,
            16 + config.window_bits,
            config.memory_level,
            config.strategy,
        )
        self.scope = scope
        self.uncompressed = 0
        self.compressed = 0

    def compress(self, data: bytes) -> bytes:
        self.uncompressed += len(data)
        out = self.zobj.compress(data)
        self.compressed += len(out)
        return out

    def finish(self) -> bytes:
        out = self.zobj.flush()
        self.compressed += len(out)
        self.scope.inc(PREFIX + "total_uncompressed_bytes", self.uncompressed)
        self.scope.inc(PREFIX + "total_compressed_bytes", self.compressed)
        return out


def start_compression(
    config: Compressor,
    accepts: bool,
    scope: Scope,
    status: int,
    method: str | None,
    upstream_headers: Sequence[tuple[bytes, bytes]],
    headers: Headers,
) -> GzipStream | None:
    """Decide for one response (``headers``: what goes to the client, changed in place) and return its
    gzip stream, or None to pass it on as it is."""
    content_length = _get(upstream_headers, b"content-length")
    if content_length is not None:
        big_enough = content_length.isdigit() and int(content_length) >= config.min_content_length
    else:
        big_enough = b"chunked" in (_get(upstream_headers, b"transfer-encoding") or b"").lower()
    content_type = (_get(headers, b"content-type") or b"").split(b";")[0].strip().lower().decode("latin-1")
    etag = _get(headers, b"etag")
    compressible = (
        big_enough
        and (not content_type or content_type in config.content_types)
        and b"no-transform" not in (_get(headers, b"cache-control") or b"").lower()
        and not (config.disable_on_etag_header and etag is not None)
        and _get(headers, b"content-encoding") is None
        and status >= 200
        and status not in (204, 304)
    )
    stream = None
    if compressible and accepts and method != "HEAD":
        if etag is not None and not etag.startswith(b"W/"):
            headers[:] = [(k, b"W/" + v if k.lower() == b"etag" else v) for k, v in headers]
        headers[:] = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-encoding", b"gzip"))
        scope.inc(PREFIX + "compressed")
        stream = GzipStream(config, scope)
    else:
        scope.inc(PREFIX + "not_compressed")
    if compressible:
        vary = _get(headers, b"vary")
        if vary is None:
            headers.append((b"vary", b"Accept-Encoding"))
        elif b"accept-encoding" not in vary.lower() and vary.strip() != b"*":
            headers[:] = [(k, v + b", Accept-Encoding" if k.lower() == b"vary" else v) for k, v in headers]
    return stream


class CompressorResponse:
    """The compressor's part of one response (an encoder of :class:`~._chain.FilterOutcome`, run at
    the filter's place): decides on the head it is given, then compresses each piece and ends the
    gzip stream at the end of the body.  ``upstream_headers``: the upstream's own head, set by the
    connection manager before the response passes (its framing, ``Transfer-Encoding: chunked``,
    is gone from the head the filters see)."""

    __slots__ = ("accepts", "config", "method", "scope", "stream", "upstream_headers")

    def __init__(self, config: Compressor, accepts: bool, scope: Scope, method: str) -> None:
        self.config = config
        self.accepts = accepts
        self.scope = scope
        self.method = method
        self.stream: GzipStream | None = None
        self.upstream_headers: Sequence[tuple[bytes, bytes]] = ()

    def encode_headers(self, status: int, headers: Headers) -> Headers:
        if status == 101:
            return headers
        headers = list(headers)
        framing = [(k, v) for k, v in self.upstream_headers if k.lower() == b"transfer-encoding"]
        self.stream = start_compression(
            self.config, self.accepts, self.scope, status, self.method, [*headers, *framing], headers
        )
        return headers

    def encode_data(self, data: bytes) -> bytes:
        return data if self.stream is None or not data else self.stream.compress(data)

    def encode_end(self, trailers: Headers) -> tuple[bytes, Headers]:
        stream, self.stream = self.stream, None
        return (b"" if stream is None else stream.finish()), trailers


class CompressorFilter:
    def __init__(
        self, config: Compressor, scope: Scope, runtime: Callable[[str], RuntimeValue], rng: random.Random
    ) -> None:
        self.config = config
        self.scope = scope
        self.runtime = runtime
        scope.declare(*(PREFIX + s for s in ("compressed", "not_compressed", "no_accept_header")))

    async def decode(
        self, request: RequestView, override: PerRouteConfig | None, outcome: FilterOutcome, now: object
    ) -> None:
        if isinstance(override, CompressorPerRoute) and override.disabled:
            return
        enabled = self.config.enabled
        if self.config.enabled_runtime_key is not None:
            value = self.runtime(self.config.enabled_runtime_key)
            if isinstance(value, bool):
                enabled = value
        if not enabled:
            return
        accept = _get(request.headers, b"accept-encoding")
        if accept is None:
            self.scope.inc(PREFIX + "no_accept_header")
        accepts = accept is not None and accepts_gzip(accept)
        outcome.encoders.append(CompressorResponse(self.config, accepts, self.scope, request.method))
        remove = self.config.remove_accept_encoding
        if isinstance(override, CompressorPerRoute) and override.remove_accept_encoding is not None:
            remove = override.remove_accept_encoding
        if remove and accept is not None:  # the upstream answers uncompressed; this filter compresses
            request.headers[:] = [(k, v) for k, v in request.headers if k.lower() != b"accept-encoding"]
