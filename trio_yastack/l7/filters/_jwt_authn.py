"""``envoy.filters.http.jwt_authn``: verifies JSON Web Tokens before the router.

Envoy's behaviour (source/extensions/filters/http/jwt_authn/, and jwt_verify_lib for the checks and
their messages): the route's ``PerRouteConfig`` (``disabled``, or a ``requirement_name`` of the
``requirement_map``), else the first rule whose match takes the request, says what it requires; no
rule: nothing.  A provider finds its token where it is told to (``from_headers``, ``from_params``,
``from_cookies``; by default ``Authorization: Bearer`` and ``access_token``), then checks, in this
order: the token's form, ``exp``/``nbf`` within ``clock_skew_seconds``, the ``issuer``, the
``audiences``, the ``subjects``, ``require_expiration``/``max_lifetime`` (both fail as ``Jwt
verification fails``), and the signature with a key of its JWKS (inline, a file, or fetched from a cluster
and cached for ``cache_duration``).  A verified token is taken off the request unless ``forward``,
and its payload and claims are copied into ``forward_payload_header`` and ``claim_to_headers``.

A request that fails gets 401 (403 for an audience not allowed) with the check's message as the
body (``Jwt is missing``, ``Jwt verification fails``, ``Jwt is expired``...) and
``WWW-Authenticate: Bearer realm="<scheme>://<host><path>"``, with ``, error="invalid_token"``
unless the token was missing; with ``strip_failure_response`` only the status.  Counters:
``jwt_authn.<stat_prefix>allowed``, ``denied``, ``cors_preflight_bypassed``, ``jwks_fetch_success``,
``jwks_fetch_failed``.

Signatures are checked by PyJWT (with ``cryptography``): nothing here does cryptography itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jwt
import trio

from ..config import (
    JwksRetryPolicy,
    JwtAuthentication,
    JwtPerRoute,
    JwtProvider,
    JwtRequirement,
    PerRouteConfig,
    RouteMatch,
)
from ..router import header_matches
from ..stats import Scope
from ._side_call import SideCallError, http_call

if TYPE_CHECKING:
    from ._chain import FilterOutcome, RequestView

__all__ = ["JwtAuthnFilter"]

Headers = list[tuple[bytes, bytes]]

# jwt_verify_lib's messages (src/status.cc), which Envoy sends as the body of its reply
MISSING = "Jwt is missing"
NOT_YET_VALID = "Jwt not yet valid"
EXPIRED = "Jwt is expired"
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
HEADER_BAD_JSON = "Jwt header is an invalid JSON"
HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
ALG_NOT_IMPLEMENTED = "Jwt header [alg] is not supported"
PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
VERIFICATION_FAILS = "Jwt verification fails"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAIL = "Jwks remote fetch is failed"
#: jwt_verify_lib's ``Status`` numbers (its enum's order) of the messages above, for
#: ``failed_status_in_metadata``
STATUS_CODES = {
    MISSING: 1,
    NOT_YET_VALID: 2,
    EXPIRED: 3,
    BAD_FORMAT: 4,
    HEADER_BAD_BASE64: 5,
    HEADER_BAD_JSON: 6,
    HEADER_BAD_ALG: 7,
    ALG_NOT_IMPLEMENTED: 8,
    PAYLOAD_BAD_BASE64: 10,
    PAYLOAD_BAD_JSON: 11,
    UNKNOWN_ISSUER: 21,
    AUDIENCE_NOT_ALLOWED: 22,
    VERIFICATION_FAILS: 23,
    KID_ALG_MISMATCH: 29,
    JWKS_FETCH_FAIL: 37,
}

#: the algorithms jwt_verify_lib implements, by the key type each needs
_ALGORITHMS = {
    **{f"RS{n}": "RSA" for n in (256, 384, 512)},
    **{f"PS{n}": "RSA" for n in (256, 384, 512)},
    **{f"ES{n}": "EC" for n in (256, 384, 512)},
    **{f"HS{n}": "oct" for n in (256, 384, 512)},
    "EdDSA": "OKP",
}
#: a token longer than this is not read (Envoy's default ``jwt_max_token_size`` is 4 KiB for its
#: cache; headers are bounded anyway: this only keeps a decode from doing needless work)
MAX_TOKEN = 64 * 1024


class _Jwt:
    """A token parsed without verification: its segments, header, payload and claims."""

    __slots__ = ("alg", "header", "kid", "payload", "payload_b64", "signed", "token")

    def __init__(self, token: str, header: dict[str, Any], payload: dict[str, Any], payload_b64: str) -> None:
        self.token = token
        self.header = header
        self.payload = payload
        self.payload_b64 = payload_b64
        self.alg: str = header["alg"]
        kid = header.get("kid")
        self.kid = kid if isinstance(kid, str) else None


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parse_jwt(token: str) -> _Jwt | str:
    """The token, or the message of the first thing wrong with its form (jwt_verify_lib's order)."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN:
        return BAD_FORMAT
    try:
        header = json.loads(_b64(parts[0]))
    except (binascii.Error, ValueError):
        return HEADER_BAD_BASE64 if not _is_b64(parts[0]) else HEADER_BAD_JSON
    if not isinstance(header, dict):
        return HEADER_BAD_JSON
    if not isinstance(header.get("alg"), str):
        return HEADER_BAD_ALG
    if header["alg"] not in _ALGORITHMS:
        return ALG_NOT_IMPLEMENTED
    try:
        payload = json.loads(_b64(parts[1]))
    except (binascii.Error, ValueError):
        return PAYLOAD_BAD_BASE64 if not _is_b64(parts[1]) else PAYLOAD_BAD_JSON
    if not isinstance(payload, dict):
        return PAYLOAD_BAD_JSON
    return _Jwt(token, header, payload, parts[1])


def _is_b64(segment: str) -> bool:
    try:
        _b64(segment)
    except (binascii.Error, ValueError):
        return False
    return True


class _Key:
    __slots__ = ("alg", "key", "kid", "kty")

    def __init__(self, kid: str | None, alg: str | None, kty: str, key: object) -> None:
        self.kid, self.alg, self.kty, self.key = kid, alg, kty, key


def load_jwks(data: bytes | str | Mapping[str, Any]) -> list[_Key]:
    """The usable keys of a JWKS document (a key PyJWT cannot read is skipped, as Envoy skips a
    key it does not support)."""
    try:
        doc = json.loads(data) if isinstance(data, (bytes, str)) else data
    except ValueError:
        return []
    raw = doc.get("keys") if isinstance(doc, Mapping) else None
    keys: list[_Key] = []
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, Mapping) or not isinstance(item.get("kty"), str):
            continue
        try:
            jwk = jwt.PyJWK(dict(item))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        kid, alg = item.get("kid"), item.get("alg")
        keys.append(
            _Key(
                kid if isinstance(kid, str) else None,
                alg if isinstance(alg, str) else None,
                item["kty"],
                jwk.key,
            )
        )
    return keys


def verify_signature(token: _Jwt, keys: list[_Key]) -> str | None:
    """None when a key of ``keys`` that fits the token's ``kid`` and ``alg`` verifies its
    signature; else jwt_verify_lib's message."""
    kty = _ALGORITHMS[token.alg]
    fitting = [
        k
        for k in keys
        if k.kty == kty
        and (token.kid is None or k.kid is None or k.kid == token.kid)
        and (k.alg is None or k.alg == token.alg)
    ]
    if not fitting:
        return KID_ALG_MISMATCH
    for key in fitting:
        try:
            jwt.PyJWS().decode_complete(token.token, key.key, algorithms=[token.alg])  # type: ignore[arg-type]  # PyJWK.key is one of the key types decode takes
            return None
        except (jwt.InvalidTokenError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
    return VERIFICATION_FAILS


def _audiences(payload: Mapping[str, Any]) -> list[str]:
    aud = payload.get("aud")
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


def _claim(payload: Mapping[str, Any], name: str) -> str | None:
    """A claim (``a.b`` reaches into nested objects) as Envoy copies it into a header: strings as
    they are, numbers and booleans written out; anything else is not copied."""
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if isinstance(value, (str, float)):
        return str(value)
    return None


def _route_matches(match: RouteMatch, path: str, headers: Headers) -> bool:
    if match.prefix is not None and not path.startswith(match.prefix):
        return False
    if match.path is not None and path.partition("?")[0] != match.path:
        return False
    return all(header_matches(m, headers) for m in match.headers)


def _set_header(headers: Headers, name: bytes, value: bytes) -> None:
    headers[:] = [(k, v) for k, v in headers if k != name]
    headers.append((name, value))


class _Token:
    """A token found in a request, and how to take it off the request again."""

    __slots__ = ("header", "value")

    def __init__(self, value: str, header: bytes | None) -> None:
        self.value, self.header = value, header


def extract(provider: JwtProvider, request: RequestView) -> list[_Token]:
    """The tokens ``provider`` looks for in ``request``, in Envoy's order: headers, then query
    parameters, then cookies."""
    found: list[_Token] = []
    locations = provider.from_headers
    params = provider.from_params
    if not (provider.from_headers or provider.from_params or provider.from_cookies):
        locations, params = (("authorization", "Bearer "),), ("access_token",)
    for name, prefix in locations:
        key = name.encode("latin-1")
        for k, v in request.headers:
            if k != key:
                continue
            text = v.decode("latin-1").strip()
            if prefix:
                # the Bearer scheme is case-insensitive (RFC 6750); other prefixes are as written
                head = text[: len(prefix)]
                if head != prefix and not (name == "authorization" and head.lower() == prefix.lower()):
                    continue
                text = text[len(prefix) :].strip()
            if text:
                found.append(_Token(text, key))
    if params:
        query = request.path.partition("?")[2].partition("#")[0]
        try:
            pairs = parse_qsl(query, keep_blank_values=False, max_num_fields=100)
        except ValueError:  # more than 100 parameters: not looked through
            pairs = []
        for param, value in pairs:
            if param in params and value:
                found.append(_Token(value, None))
    if provider.from_cookies:
        for k, v in request.headers:
            if k != b"cookie":
                continue
            for part in v.decode("latin-1").split(";"):
                cookie, _, value = part.strip().partition("=")
                if cookie in provider.from_cookies and value:
                    found.append(_Token(value, None))
    return found


class _JwksCache:
    """One provider's keys: inline or from a file (read once), or fetched from its cluster.

    Fetched on demand (a request waits for the fetch; one at a time), the keys are kept for
    ``cache_duration``.  With ``async_fetch`` a task of the proxy fetches them before the
    listeners open (:meth:`refresh`) and again every ``cache_duration`` (``failed_refetch_duration``
    after a failure), and requests never fetch: they use the last keys fetched, which do not expire
    (Envoy's), and fail when none has been fetched yet.  A fetch follows ``retry_policy``: more
    attempts on its conditions after a jittered exponential back-off (Envoy's: uniform below
    ``(2**n - 1) * base_interval``, at most ``max_interval``), all within ``http_uri.timeout``."""

    def __init__(self, provider: JwtProvider, rng: random.Random | None = None) -> None:
        self.provider = provider
        self.keys: list[_Key] | None = None
        self.fetched_at = 0.0
        self.lock = trio.Lock()
        self.rng = rng or random.Random()
        if provider.local_jwks is not None:
            try:
                self.keys = load_jwks(provider.local_jwks.read())
            except OSError:
                self.keys = []

    async def get(
        self, clusters: Any, now: Callable[[], float], scope: Scope, prefix: str = "jwt_authn."
    ) -> list[_Key] | None:
        remote = self.provider.remote_jwks
        if remote is None:
            return self.keys or []
        if remote.async_fetch is not None:
            return self.keys  # the proxy's task keeps them (None: not fetched yet)
        async with self.lock:
            if self.keys is not None and now() - self.fetched_at < remote.cache_duration:
                return self.keys
            return await self._fetch(clusters, scope, prefix)

    async def refresh(
        self,
        clusters: Any,
        scope: Scope,
        prefix: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """``async_fetch``: fetch now (``started`` once this first fetch is over, as Envoy opens
        its listeners only then unless ``fast_listener``), then keep the keys fresh until cancelled."""
        remote = self.provider.remote_jwks
        assert remote is not None and remote.async_fetch is not None  # only started for these
        started = False
        while True:
            async with self.lock:
                keys = await self._fetch(clusters, scope, prefix, keep_old=True)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(
                remote.cache_duration if keys is not None else remote.async_fetch.failed_refetch_duration
            )

    async def _fetch(
        self, clusters: Any, scope: Scope, prefix: str, keep_old: bool = False
    ) -> list[_Key] | None:
        """One fetch, retries included, counted once; the keys on success, else None (and the
        cache forgets its keys unless ``keep_old``: Envoy keeps none past ``cache_duration``)."""
        remote = self.provider.remote_jwks
        assert remote is not None  # the callers checked
        policy = remote.retry_policy
        retries = policy.num_retries if policy is not None else 0
        keys: list[_Key] | None = None
        with trio.move_on_after(remote.timeout):
            for attempt in range(retries + 1):
                status, kind = 0, "other"
                try:
                    keys = await self._fetch_once(clusters, remote.uri, remote.cluster, remote.timeout)
                    break
                except SideCallError as exc:
                    kind, status = exc.kind, exc.status
                if policy is None or attempt == retries or not _retriable(policy, status, kind):
                    break
                ceiling = min((2 ** (attempt + 1) - 1) * policy.base_interval, policy.max_interval)
                await trio.sleep(self.rng.uniform(0, ceiling))
        if keys is None:
            scope.inc(prefix + "jwks_fetch_failed")
            if not keep_old:
                self.keys = None
            return None
        scope.inc(prefix + "jwks_fetch_success")
        self.keys, self.fetched_at = keys, trio.current_time()
        return keys

    @staticmethod
    async def _fetch_once(clusters: Any, uri: str, cluster: str, timeout: float) -> list[_Key]:
        if clusters is None:
            raise SideCallError("no cluster manager")
        authority, _, path = uri.partition("://")[2].partition("/")
        reply = await http_call(
            clusters[cluster], "GET", "/" + path, [(b"accept", b"application/json")],
            timeout=timeout, host_header=authority,
        )  # fmt: skip
        if reply.status != 200:
            raise SideCallError(f"status {reply.status}", status=reply.status)
        keys = load_jwks(reply.body)
        if not keys:
            raise SideCallError("no usable key in the JWKS")
        return keys


def _retriable(policy: JwksRetryPolicy, status: int, kind: str) -> bool:
    """Envoy's retry conditions: ``5xx``, ``gateway-error`` and ``reset`` retry a broken or refused
    connection, ``connect-failure`` a refused one only; statuses as their names say (``no-host``
    is Envoy's 503 ``no healthy upstream``)."""
    on = policy.retry_on
    if kind == "no-host":
        status = 503
    if status:
        return (
            ("5xx" in on and status >= 500)
            or ("gateway-error" in on and status in (502, 503, 504))
            or ("retriable-4xx" in on and status == 409)
        )
    if kind in ("reset", "connect-failure") and any(c in on for c in ("5xx", "gateway-error", "reset")):
        return True
    return kind == "connect-failure" and "connect-failure" in on


class JwtAuthnFilter:
    def __init__(
        self,
        config: JwtAuthentication,
        scope: Scope,
        clusters: object = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.scope = scope
        self.clusters = clusters
        self.providers = {p.name: p for p in config.providers}
        self.jwks = {p.name: _JwksCache(p, rng) for p in config.providers}
        self.requirements = dict(config.requirement_map)
        # Envoy's counters: "jwt_authn." joined with the filter's stat_prefix as written
        self.prefix = prefix = "jwt_authn." + config.stat_prefix
        scope.declare(
            *(prefix + n for n in ("allowed", "denied", "cors_preflight_bypassed", "jwks_fetch_success",
                                   "jwks_fetch_failed"))
        )  # fmt: skip

    async def start(self, nursery: trio.Nursery) -> None:
        """``async_fetch``: each such provider's JWKS refreshed by a task of ``nursery``; the first
        fetch awaited unless ``fast_listener``."""
        for cache in self.jwks.values():
            remote = cache.provider.remote_jwks
            if remote is None or remote.async_fetch is None:
                continue
            refresh = partial(cache.refresh, self.clusters, self.scope, self.prefix)
            if remote.async_fetch.fast_listener:
                nursery.start_soon(refresh)
            else:
                await nursery.start(refresh)

    async def decode(
        self,
        request: RequestView,
        override: PerRouteConfig | None,
        outcome: FilterOutcome,
        now: Callable[[], float],
    ) -> None:
        config = self.config
        if (
            config.bypass_cors_preflight
            and request.method == "OPTIONS"
            and any(k == b"origin" for k, _ in request.headers)
            and any(k == b"access-control-request-method" for k, _ in request.headers)
        ):
            self.scope.inc(self.prefix + "cors_preflight_bypassed")
            return
        requirement: JwtRequirement | None = None
        if isinstance(override, JwtPerRoute):
            if override.disabled:
                return
            requirement = self.requirements.get(override.requirement_name or "")
            if requirement is None:
                # Envoy: a requirement_name the filter does not have is refused (jwt_authn's
                # "Wrong requirement_name" reply)
                self._deny(request, outcome, 403, "Wrong requirement_name is configured", invalid=False)
                return
        else:
            for rule in config.rules:
                if _route_matches(rule.match, request.path, request.headers):
                    requirement = rule.requires
                    break
        if requirement is None:
            return
        failure = await self._check(requirement, request, now, outcome)
        if failure is None:
            self.scope.inc(self.prefix + "allowed")
            return
        code = 403 if failure == AUDIENCE_NOT_ALLOWED else 401
        self._deny(request, outcome, code, failure, invalid=failure != MISSING)

    def _deny(
        self, request: RequestView, outcome: FilterOutcome, code: int, body: str, *, invalid: bool
    ) -> None:
        self.scope.inc(self.prefix + "denied")
        outcome.status = code
        if self.config.strip_failure_response:
            outcome.body = ""  # Envoy: the status alone
            return
        host = next((v for k, v in request.headers if k == b"host"), b"").decode("latin-1")
        scheme = str(getattr(request.downstream, "scheme", "http"))
        value = f'Bearer realm="{scheme}://{host}{request.path}"'
        if invalid:
            value += ', error="invalid_token"'
        outcome.status = code
        outcome.body = body
        outcome.reply_headers.append((b"www-authenticate", value.encode("latin-1")))

    async def _check(
        self, req: JwtRequirement, request: RequestView, now: Callable[[], float], outcome: FilterOutcome
    ) -> str | None:
        """None when ``request`` meets ``req``; else the message of why not."""
        if req.kind == "provider":
            return await self._verify_provider(
                self.providers[req.provider], req.audiences, request, now, outcome
            )
        if req.kind == "all":
            for child in req.requirements:
                failure = await self._check(child, request, now, outcome)
                if failure is not None:
                    return failure
            return None
        if req.kind == "any":
            failures = []
            for child in req.requirements:
                failure = await self._check(child, request, now, outcome)
                if failure is None:
                    return None
                failures.append(failure)
            # Envoy's AnyVerifier reports a token's own failure rather than a missing token
            return next((f for f in failures if f != MISSING), failures[-1])
        # allow_missing / allow_missing_or_failed: every provider's tokens are checked (a valid one
        # still has its payload forwarded); only a present, failing token fails allow_missing
        failure = None
        for provider in self.providers.values():
            if not extract(provider, request):
                continue
            result = await self._verify_provider(provider, None, request, now, outcome)
            if result is not None and result != UNKNOWN_ISSUER:
                failure = failure or result
        return failure if req.kind == "allow_missing" else None

    async def _verify_provider(
        self,
        provider: JwtProvider,
        audiences: tuple[str, ...] | None,
        request: RequestView,
        now: Callable[[], float],
        outcome: FilterOutcome,
    ) -> str | None:
        failure = await self._verify(provider, audiences, request, now, outcome)
        if failure is not None and provider.failed_status_in_metadata:
            # Envoy: the failure, as jwt_verify_lib's status number and message, for later filters
            if request.metadata is None:
                request.metadata = {}
            entry = request.metadata.setdefault(METADATA_NAMESPACE, {})
            code = STATUS_CODES.get(failure)
            entry[provider.failed_status_in_metadata] = {"code": code, "message": failure}
        return failure

    async def _verify(
        self,
        provider: JwtProvider,
        audiences: tuple[str, ...] | None,
        request: RequestView,
        now: Callable[[], float],
        outcome: FilterOutcome,
    ) -> str | None:
        tokens = extract(provider, request)
        if not tokens:
            return MISSING
        token = tokens[0]
        parsed = parse_jwt(token.value)
        if isinstance(parsed, str):
            return parsed
        payload = parsed.payload
        wall = _wall_clock()
        skew = provider.clock_skew_seconds
        exp, nbf = payload.get("exp"), payload.get("nbf")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and wall > exp + skew:
            return EXPIRED
        if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and wall + skew < nbf:
            return NOT_YET_VALID
        if provider.issuer and payload.get("iss") != provider.issuer:
            return UNKNOWN_ISSUER
        allowed = provider.audiences if audiences is None else audiences
        if allowed and not set(_audiences(payload)) & set(allowed):
            return AUDIENCE_NOT_ALLOWED
        if provider.subjects is not None:
            sub = payload.get("sub")
            if not provider.subjects.matches(sub if isinstance(sub, str) else ""):
                return VERIFICATION_FAILS  # Envoy's answer for a subject not allowed
        if provider.require_expiration or provider.max_lifetime is not None:
            # max_lifetime: the remaining lifetime must be below it (and an exp is required)
            if not isinstance(exp, (int, float)) or isinstance(exp, bool):
                return VERIFICATION_FAILS
            if provider.max_lifetime is not None and not exp - wall < provider.max_lifetime:
                return VERIFICATION_FAILS
        keys = await self.jwks[provider.name].get(self.clusters, now, self.scope, self.prefix)
        if keys is None:
            return JWKS_FETCH_FAIL
        failure = verify_signature(parsed, keys)
        if failure is not None:
            return failure
        headers = request.headers
        if not provider.forward and token.header is not None:
            headers[:] = [(k, v) for k, v in headers if k != token.header]
        if provider.forward_payload_header:
            value = parsed.payload_b64 + (
                "=" * (-len(parsed.payload_b64) % 4) if provider.pad_forward_payload_header else ""
            )
            _set_header(headers, provider.forward_payload_header.encode("latin-1"), value.encode("latin-1"))
        added = False
        for header, claim in provider.claim_to_headers:
            text = _claim(payload, claim)
            if text is not None:
                _set_header(headers, header.encode("latin-1"), text.encode("utf-8"))
                added = True
        if provider.payload_in_metadata or provider.header_in_metadata:
            _write_metadata(request, provider, parsed)
        if added and provider.clear_route_cache:
            outcome.clear_route = True  # Envoy: claim headers added, the route is chosen again
        return None


#: the namespace of the dynamic metadata this filter writes (Envoy's, whatever the filter's name)
METADATA_NAMESPACE = "envoy.filters.http.jwt_authn"


def _write_metadata(request: RequestView, provider: JwtProvider, token: _Jwt) -> None:
    """A verified token's payload and header into the request's dynamic metadata, as Envoy writes
    them (``space_delimited_claims`` split into lists of their words)."""
    if request.metadata is None:
        request.metadata = {}
    entry = request.metadata.setdefault(METADATA_NAMESPACE, {})
    if provider.payload_in_metadata:
        payload = dict(token.payload)
        for claim in provider.space_delimited_claims:
            value = payload.get(claim)
            if isinstance(value, str):
                payload[claim] = value.split()
        entry[provider.payload_in_metadata] = payload
    if provider.header_in_metadata:
        entry[provider.header_in_metadata] = dict(token.header)


def _wall_clock() -> float:
    """Seconds since the epoch: ``exp`` and ``nbf`` are wall-clock times (trio's clock is not)."""
    return time.time()
