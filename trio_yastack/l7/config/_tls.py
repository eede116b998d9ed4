"""TLS transport sockets: ``DownstreamTlsContext`` / ``UpstreamTlsContext`` and SDS secrets."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trio_yastack.l7.envoy import normalize_any as envoy_normalize_any
from trio_yastack.tls.config import (
    TLS_VERSIONS,
    CommonTlsContext,
    DataSource,
    DownstreamTlsContext,
    SubjectAltNameMatcher,
    TlsCertificate,
    TlsParams,
    UpstreamTlsContext,
)

from ._core import _string_matcher
from ._names import DOWNSTREAM_TLS_TYPE, TLS_NAME, UPSTREAM_TLS_TYPE
from ._reader import _bool, _enum, _extension, _Fields, _join, _list, _nonempty_str, _Reader


def _data_source(r: _Reader, v: object, path: str) -> DataSource:
    """A ``DataSource``: ``filename``, ``inline_string`` or ``inline_bytes`` (base64, as proto3 JSON
    writes bytes); ``environment_variable`` is outside the subset."""
    f = _Fields(r, v, path, ("filename", "inline_string", "inline_bytes"))
    which = f.exactly_one("filename", "inline_string", "inline_bytes")
    source = DataSource()
    if which == "filename":
        filename = f.req("filename", _nonempty_str)
        if filename is not None:
            source = DataSource(filename=r.resolve_file(filename, _join(path, "filename")))
    elif which == "inline_string":
        text = f.req("inline_string", _nonempty_str)
        source = DataSource(inline=text.encode("utf-8") if text is not None else b"")
    elif which == "inline_bytes":
        source = DataSource(inline=f.req("inline_bytes", _base64))
    f.done()
    return source


def _base64(r: _Reader, v: object, path: str) -> bytes:
    text = _nonempty_str(r, v, path)
    try:
        # proto3 JSON accepts the standard and the URL-safe alphabets, padded or not
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        r.fail(path, "not valid base64")


def _tls_certificate(r: _Reader, v: object, path: str) -> TlsCertificate:
    f = _Fields(r, v, path, ("certificate_chain", "private_key"))
    chain = f.req("certificate_chain", _data_source)
    key = f.req("private_key", _data_source)
    f.done()
    return TlsCertificate(chain, key)


def _validation_context(
    r: _Reader, v: object, path: str
) -> tuple[DataSource, tuple[SubjectAltNameMatcher, ...]]:
    f = _Fields(r, v, path, ("trusted_ca", "match_typed_subject_alt_names"))
    ca = f.req("trusted_ca", _data_source)
    sans = f.opt("match_typed_subject_alt_names", _list(_san_matcher), ())
    f.done()
    return ca, sans


_SAN_TYPES = ("DNS", "URI", "EMAIL", "IP_ADDRESS")


def _san_matcher(r: _Reader, v: object, path: str) -> SubjectAltNameMatcher:
    f = _Fields(r, v, path, ("san_type", "matcher"))
    san_type = f.req("san_type", _enum(_SAN_TYPES))
    matcher = f.req("matcher", _string_matcher)
    f.done()  # raises if either failed, before matcher is used
    return SubjectAltNameMatcher(san_type, matcher.kind, matcher.value, matcher.ignore_case)  # type: ignore[arg-type]  # _enum returned one of _SAN_TYPES


def _tls_params(r: _Reader, v: object, path: str) -> TlsParams:
    f = _Fields(r, v, path, ("tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites"))
    params = TlsParams(
        tls_minimum_protocol_version=f.opt("tls_minimum_protocol_version", _enum(TLS_VERSIONS), "TLS_AUTO"),
        tls_maximum_protocol_version=f.opt("tls_maximum_protocol_version", _enum(TLS_VERSIONS), "TLS_AUTO"),
        cipher_suites=f.opt("cipher_suites", _list(_nonempty_str), ()),
    )
    lo, hi = params.tls_minimum_protocol_version, params.tls_maximum_protocol_version
    if "TLS_AUTO" not in (lo, hi) and TLS_VERSIONS.index(lo) > TLS_VERSIONS.index(hi):
        f.problem("tls_maximum_protocol_version", f"{hi} is below tls_minimum_protocol_version {lo}")
    f.done()
    return params


def _common_tls_context(*, downstream: bool) -> Callable[[_Reader, Any, str], CommonTlsContext]:
    def parse(r: _Reader, v: object, path: str) -> CommonTlsContext:
        f = _Fields(
            r,
            v,
            path,
            (
                "tls_certificates",
                "tls_certificate_sds_secret_configs",
                "validation_context",
                "validation_context_sds_secret_config",
                "alpn_protocols",
                "tls_params",
            ),
        )
        certs = f.opt("tls_certificates", _list(_tls_certificate, min_items=1 if downstream else 0), ())
        sds_certs = f.opt("tls_certificate_sds_secret_configs", _list(_sds_certificate), ())
        certs = (*(certs or ()), *(sds_certs or ()))
        if downstream and not certs and not f.failed:
            f.problem(
                "tls_certificates",
                "required field 'tls_certificates' (or tls_certificate_sds_secret_configs) is missing: "
                "TLS termination needs a certificate",
            )
        if f.has("validation_context") and f.has("validation_context_sds_secret_config"):
            f.problem(
                "validation_context_sds_secret_config", "only one of validation_context and it may be set"
            )
        validation = f.opt("validation_context", _validation_context, (None, ()))
        if f.has("validation_context_sds_secret_config"):
            validation = f.req("validation_context_sds_secret_config", _sds_validation)
        ca, sans = validation or (None, ())  # None: failed, f.done() raises
        alpn = f.opt("alpn_protocols", _list(_nonempty_str), ())
        params = f.opt("tls_params", _tls_params, TlsParams())
        f.done()
        return CommonTlsContext(certs, ca, alpn, sans, params)

    return parse


@dataclass(frozen=True, slots=True)
class Secret:
    """A ``Secret`` (``static_resources.secrets[]`` or an SDS file's resource): a ``tls_certificate``
    or a ``validation_context``."""

    name: str
    tls_certificate: TlsCertificate | None = None
    validation_context: tuple[DataSource, tuple[SubjectAltNameMatcher, ...]] | None = None


SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def _secret(r: _Reader, v: object, path: str) -> Secret:
    f = _Fields(r, v, path, ("@type", "name", "tls_certificate", "validation_context"))
    if f.has("@type") and f.values["@type"] != SECRET_TYPE:
        f.problem("@type", f"{f.values['@type']!r}: an SDS resource here is a {SECRET_TYPE}")
    name = f.req("name", _nonempty_str)
    which = f.exactly_one("tls_certificate", "validation_context")
    cert = f.req("tls_certificate", _tls_certificate) if which == "tls_certificate" else None
    validation = f.req("validation_context", _validation_context) if which == "validation_context" else None
    f.done()
    return Secret(name, cert, validation)


def _sds_secret(r: _Reader, v: object, path: str) -> Secret:
    """An ``SdsSecretConfig``: ``name``, found in ``sds_config``'s file (``path_config_source.path``
    or the deprecated ``path``; read once, at load: Envoy would also watch it) or, without
    ``sds_config``, among ``static_resources.secrets``."""
    f = _Fields(r, v, path, ("name", "sds_config"))
    name = f.req("name", _nonempty_str)
    source = f.opt("sds_config", _sds_path, None)
    f.done()
    if source is None:
        found = r.secrets.get(name)
        if found is None:
            r.fail(
                _join(path, "name"),
                f"unknown secret {name!r} (not in static_resources.secrets, no sds_config)",
            )
        return found
    file_path, where = source
    try:
        document = yaml.safe_load(Path(file_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as exc:
        r.fail(where, f"cannot read the SDS file {file_path}: {exc}")
    resources = document.get("resources") if isinstance(document, Mapping) else None
    if not isinstance(resources, list):
        r.fail(where, f"{file_path}: expected a mapping with a 'resources' list (a DiscoveryResponse)")
    for i, resource in enumerate(resources):
        if isinstance(resource, Mapping) and resource.get("name") == name:
            return _secret(r, normalize_secret(resource), f"{file_path}:resources[{i}]")
    r.fail(_join(path, "name"), f"secret {name!r} is not among the resources of {file_path}")


def normalize_secret(resource: Mapping[str, Any]) -> object:
    """An SDS file's resource read the way Envoy reads it (its own schema: camelCase and all)."""
    return envoy_normalize_any(dict(resource))


def _sds_path(r: _Reader, v: object, path: str) -> tuple[str, str]:
    f = _Fields(r, v, path, ("path_config_source", "path", "resource_api_version"))
    which = f.exactly_one("path_config_source", "path")
    file_path = ""
    where = _join(path, which or "path")
    if which == "path":
        file_path = f.req("path", _nonempty_str)
    elif which == "path_config_source":
        inner = _Fields(r, f.values["path_config_source"], where, ("path",))
        file_path = inner.req("path", _nonempty_str)
        inner.done()
        where = _join(where, "path")
    f.opt("resource_api_version", _enum(("AUTO", "V3")), "AUTO")
    f.done()
    return r.resolve_file(file_path, where), where


def _sds_certificate(r: _Reader, v: object, path: str) -> TlsCertificate:
    secret = _sds_secret(r, v, path)
    if secret.tls_certificate is None:
        r.fail(path, f"secret {secret.name!r} is not a tls_certificate")
    return secret.tls_certificate


def _sds_validation(r: _Reader, v: object, path: str) -> tuple[DataSource, tuple[SubjectAltNameMatcher, ...]]:
    secret = _sds_secret(r, v, path)
    if secret.validation_context is None:
        r.fail(path, f"secret {secret.name!r} is not a validation_context")
    return secret.validation_context


def _downstream_tls(r: _Reader, v: object, path: str) -> DownstreamTlsContext:
    _, f, tc = _extension(r, v, path, {TLS_NAME: DOWNSTREAM_TLS_TYPE})
    common = tc.req("common_tls_context", _common_tls_context(downstream=True))
    require = tc.opt("require_client_certificate", _bool, False)
    if require and common is not None and common.trusted_ca is None:
        # stricter than Envoy, which would accept it and then refuse every client
        tc.problem(
            "require_client_certificate",
            "needs common_tls_context.validation_context.trusted_ca to verify client certificates with",
        )
    tc.done()
    f.done()
    return DownstreamTlsContext(common, require)


def _upstream_tls(r: _Reader, v: object, path: str) -> UpstreamTlsContext:
    _, f, tc = _extension(r, v, path, {TLS_NAME: UPSTREAM_TLS_TYPE})
    common = tc.opt("common_tls_context", _common_tls_context(downstream=False), CommonTlsContext())
    sni = tc.opt("sni", _nonempty_str, None)
    tc.done()
    f.done()
    return UpstreamTlsContext(common, sni)
