"""Envoy's own schema (``xds-protos``) under the proxy's config: the proto3 JSON spellings Envoy
accepts, read into the canonical ones before the subset reader checks the document."""

from ._schema import BOOTSTRAP as BOOTSTRAP
from ._schema import envoy_message as envoy_message
from ._schema import normalize as normalize
from ._schema import normalize_any as normalize_any
