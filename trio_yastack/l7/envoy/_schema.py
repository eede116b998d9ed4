"""Read a document the way Envoy's parser does, by Envoy's own schema (``xds-protos``), before the
subset checks of :mod:`trio_yastack.l7.config` look at it.

Why a separate pass, and why not ``json_format.ParseDict`` into a ``Bootstrap`` and back: Envoy parses
YAML through protobuf's proto3 JSON mapping, which allows more spellings than the subset reader knows
(``staticResources`` as well as ``static_resources``, ``port_value: "80"``, ``connect_timeout:
{seconds: 5}``, ``lb_policy: round_robin``).  A round trip through the message would accept all of
them, but it also drops the YAML structure the errors point into, fills in or drops defaults (a
``port_value: 0`` vanishes), and stops at the first problem.  So this pass walks the document next to
the message descriptors and rewrites only spellings into the canonical ones: field names into their
proto names, integers given as strings into integers, ``{seconds, nanos}`` into ``"1.5s"``, enum names
into their declared case.  Everything else (unknown fields, wrong types, missing fields) is left
exactly as written, for the subset reader to report at its YAML path.  The pass never raises: a value
it cannot read stays as it is.

The schema of an ``Any`` (``typed_config``) is found by its ``@type``: the generated module of that
package is imported on first use, so only the extensions a config names are loaded.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = ["BOOTSTRAP", "envoy_message", "normalize", "normalize_any"]

BOOTSTRAP: Descriptor = bootstrap_pb2.Bootstrap.DESCRIPTOR

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
_WRAPPERS = frozenset(
    "google.protobuf." + n
    for n in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
_OPAQUE = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
#: an integer as proto3 JSON writes it in a string; 20 digits hold any 64-bit value, and a bound keeps
#: ``int()`` away from a 5 000-digit string
_INT_RE = re.compile(r"-?\d{1,20}")
_FLOAT_RE = re.compile(r"-?(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})(?:[eE][-+]?\d{1,3})?")
#: how deep a document may nest before the pass leaves the rest as written (YAML can nest deeper than
#: Python's recursion limit; the subset reader reports such a document)
_MAX_DEPTH = 64
_TYPE_URL_PREFIX = "type.googleapis.com/"


def normalize(data: object) -> object:
    """``data`` (a loaded YAML document) with Envoy's alternative spellings rewritten into the
    canonical proto3 field names and value forms of ``envoy.config.bootstrap.v3.Bootstrap``."""
    return _message(BOOTSTRAP, data, 0)


def normalize_any(value: object) -> object:
    """An ``Any`` (a mapping with ``@type``) read by its type's schema, as :func:`normalize` reads a
    bootstrap; as written when the type is unknown."""
    return _message(descriptor_pool.Default().FindMessageTypeByName("google.protobuf.Any"), value, 0)


def envoy_message(type_url: str) -> Descriptor | None:
    """The descriptor of an ``Any``'s ``@type`` (``type.googleapis.com/envoy...``), importing its
    generated module on first use; None for a type xds-protos does not have."""
    if not type_url.startswith(_TYPE_URL_PREFIX):
        return None
    full_name = type_url[len(_TYPE_URL_PREFIX) :]
    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        pass
    package = full_name.rpartition(".")[0]
    if not package or not all(p.isidentifier() for p in package.split(".")):
        return None
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    for directory in getattr(module, "__path__", ()):
        for pb2 in sorted(Path(directory).glob("*_pb2.py")):
            try:
                importlib.import_module(f"{package}.{pb2.stem}")
            except ImportError:  # pragma: no cover - a broken install; the type stays unknown
                continue
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def _message(desc: Descriptor, value: object, depth: int) -> object:
    if not isinstance(value, Mapping) or depth > _MAX_DEPTH:
        return value
    full = desc.full_name
    if full == "google.protobuf.Any":
        type_url = value.get("@type")
        inner = envoy_message(type_url) if isinstance(type_url, str) else None
        return _message(inner, value, depth) if inner is not None else value
    if full in _OPAQUE:
        return value
    by_name = desc.fields_by_name
    by_json = {f.json_name: f for f in desc.fields}
    out: dict[Any, object] = {}
    for key, v in value.items():
        field = by_name.get(key) if isinstance(key, str) else None
        if field is None and isinstance(key, str):
            field = by_json.get(key)
        if field is None or field.name in out:
            # unknown (the subset reader names it), or written twice under both spellings: keep the
            # second under its own key so the reader reports it as written
            out[key] = v
            continue
        out[field.name] = _field(field, v, depth + 1)
    return out


def _field(field: FieldDescriptor, value: object, depth: int) -> object:
    if value is None:
        return None
    if field.is_repeated:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            if not isinstance(value, Mapping):
                return value
            value_field = message.fields_by_name["value"]
            return {k: _single(value_field, v, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [_single(field, v, depth) for v in value]
        return value
    return _single(field, value, depth)


def _single(field: FieldDescriptor, value: object, depth: int) -> object:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        full = field.message_type.full_name
        if full == "google.protobuf.Duration":
            return _duration(value)
        if full in _WRAPPERS:
            return _single(field.message_type.fields_by_name["value"], value, depth)
        return _message(field.message_type, value, depth)
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(field, value)
    if kind in _INTEGER_TYPES:
        if isinstance(value, str) and _INT_RE.fullmatch(value):
            return int(value)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**64:
            return int(value)  # proto3 JSON: "1.0" is the integer 1
        return value
    if kind in _FLOAT_TYPES and isinstance(value, str) and _FLOAT_RE.fullmatch(value):
        return float(value)
    return value


def _enum(field: FieldDescriptor, value: object) -> object:
    """Envoy parses enum names case-insensitively (and protobuf JSON takes their numbers too)."""
    values = field.enum_type.values
    if isinstance(value, str):
        folded = value.upper()
        for v in values:
            if v.name.upper() == folded:
                return v.name
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        for v in values:
            if v.number == value:
                return v.name
    return value


def _duration(value: object) -> object:
    """``{seconds, nanos}`` (the message form, which Envoy's YAML accepts) into protobuf's JSON form
    ``"1.5s"``; strings and anything unreadable stay as written."""
    if not isinstance(value, Mapping) or not set(value) <= {"seconds", "nanos"}:
        return value
    seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
    if isinstance(seconds, str) and _INT_RE.fullmatch(seconds):
        seconds = int(seconds)
    if isinstance(nanos, str) and _INT_RE.fullmatch(nanos):
        nanos = int(nanos)
    if (
        isinstance(seconds, bool)
        or isinstance(nanos, bool)
        or not isinstance(seconds, int)
        or not isinstance(nanos, int)
        or not 0 <= nanos < 1_000_000_000
        or seconds < 0
    ):
        return value
    return f"{seconds}.{nanos:09d}s" if nanos else f"{seconds}s"
