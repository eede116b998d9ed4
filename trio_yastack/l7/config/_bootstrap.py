"""The bootstrap and the loader's entry points: :func:`load_config`, :func:`load_config_file`,
:func:`parse_bootstrap`, and the cross-reference checks done once the whole document is read."""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trio_yastack.l7.envoy import normalize

from ._cluster import CircuitBreakerThresholds, Cluster, _cluster
from ._core import SocketAddress, _address
from ._hcm import AccessLog, HttpConnectionManager, _access_log
from ._listener import Listener, TcpProxy, _listener
from ._names import ROUTER_NAME, RuntimeValue
from ._reader import (
    ConfigError,
    Problem,
    _Fields,
    _join,
    _kind,
    _list,
    _nonempty_str,
    _Reader,
    _Skip,
    format_problems,
)
from ._tls import _secret


@dataclass(frozen=True, slots=True)
class Admin:
    """``admin``: where the admin endpoint listens, and its access logs (none by default)."""

    address: SocketAddress
    access_log: tuple[AccessLog, ...] = ()


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A whole config: the admin endpoint (none when absent), listeners, clusters and the runtime."""

    admin: Admin | None
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    #: ``layered_runtime``'s static layers merged into Envoy's dotted runtime keys (``a.b.c: 1``),
    #: sorted by key (a tuple keeps the config hashable); read with :meth:`runtime_value`
    runtime: tuple[tuple[str, RuntimeValue], ...] = ()

    def runtime_value(self, key: str, default: RuntimeValue = None) -> RuntimeValue:
        """The runtime's value for ``key`` (``default`` when no layer sets it)."""
        for k, value in self.runtime:
            if k == key:
                return value
        return default

    def cluster(self, name: str) -> Cluster:
        """The cluster called ``name`` (``KeyError`` if none; loading already checked every reference)."""
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def summary(self) -> str:
        """What ``yastack check-config`` prints for a valid config: enough to see at a glance that the
        proxy will listen where, terminate TLS for which names, and send traffic to which endpoints."""
        out: list[str] = []
        if self.admin is not None:
            out.append(f"admin {self.admin.address}")
        out.append(f"listeners ({len(self.listeners)}):")
        for listener in self.listeners:
            out.append(f"  {listener.name} {listener.address}")
            for i, chain in enumerate(listener.filter_chains):
                parts = [f"sni {', '.join(chain.server_names)}" if chain.server_names else "any sni"]
                if chain.transport_protocol:
                    parts.append(f"transport {chain.transport_protocol}")
                if chain.application_protocols:
                    parts.append(f"alpn match {','.join(chain.application_protocols)}")
                if chain.transport_socket is not None:
                    common = chain.transport_socket.common_tls_context
                    alpn = f" alpn {','.join(common.alpn_protocols)}" if common.alpn_protocols else ""
                    parts.append(f"tls ({len(common.tls_certificates)} cert{alpn})")
                parts.append(_describe_filter(chain.filter))
                label = f"chain {i}" + (f" {chain.name}" if chain.name else "")
                out.append(f"    {label}: {'; '.join(parts)}")
        out.append(f"clusters ({len(self.clusters)}):")
        for c in self.clusters:
            tls = ""
            if c.transport_socket is not None:
                sni = c.transport_socket.sni
                tls = " tls" + (f" sni {sni}" if sni else "")
            if c.http2 is not None:
                tls += " http2"
            out.append(
                f"  {c.name} {c.type} {c.lb_policy} connect_timeout {_fmt_seconds(c.connect_timeout)}{tls}"
            )
            out.append(f"    endpoints: {', '.join(str(a) for a in c.load_assignment.addresses)}")
            for hc in c.health_checks:
                out.append(
                    f"    health check: http {hc.path} every {_fmt_seconds(hc.interval)} "
                    f"timeout {_fmt_seconds(hc.timeout)} "
                    f"(unhealthy {hc.unhealthy_threshold}, healthy {hc.healthy_threshold})"
                )
            if c.outlier_detection is not None:
                out.append(f"    outlier detection: {c.outlier_detection.consecutive_5xx} consecutive 5xx")
            cb = c.circuit_breakers
            if cb != CircuitBreakerThresholds():
                out.append(
                    f"    circuit breakers: connections {cb.max_connections}, "
                    f"pending {cb.max_pending_requests}, requests {cb.max_requests}, retries {cb.max_retries}"
                )
        return "\n".join(out)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _describe_filter(f: HttpConnectionManager | TcpProxy) -> str:
    if isinstance(f, TcpProxy):
        return f"tcp_proxy {f.stat_prefix} -> {f.cluster}"
    vhosts = f.route_config.virtual_hosts
    n_routes = sum(len(v.routes) for v in vhosts)
    filters = [x.name.rsplit(".", 1)[-1] for x in f.http_filters if x.type_name != ROUTER_NAME]
    return (
        f"http_connection_manager {f.stat_prefix} ({f.codec_type}): "
        f"{len(vhosts)} virtual host{'s' if len(vhosts) != 1 else ''}, "
        f"{n_routes} route{'s' if n_routes != 1 else ''}"
        + (f"; filters {', '.join(filters)}" if filters else "")
    )


# --- loading ---


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated in one mapping.

    PyYAML keeps the last of duplicated keys silently, so a second ``routes:`` would quietly replace
    the first; Envoy's loader rejects the document, and so do we."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_config(text: str, *, source: str = "<string>") -> Bootstrap:
    """Parse a YAML (or JSON, a subset of YAML) document; raises :class:`ConfigError` with every problem."""
    return _load(text, source, None)


def load_config_file(path: str | Path, *, check_files: bool = False) -> Bootstrap:
    """Load a config file.  Relative certificate, key and CA file names are taken from the config
    file's directory (so a config and its ``certs/`` work from anywhere; Envoy would take them from
    its working directory) and come back resolved.  With ``check_files`` each must exist; off by
    default because the files may live only on the machine that runs it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("", f"cannot read config file: {exc}")], str(p)) from None
    return _load(text, str(p), p.parent, check_files=check_files)


def load_config_or_report(path: str | Path, *, check_files: bool) -> Bootstrap | None:
    """:func:`load_config_file` for a command: the config, or None after every problem (an unreadable
    file included) is printed to stderr with its YAML path."""
    try:
        return load_config_file(path, check_files=check_files)
    except ConfigError as exc:
        print(format_problems(exc), file=sys.stderr)
        return None


def parse_bootstrap(data: object, *, source: str = "<string>") -> Bootstrap:
    """Validate an already-loaded document (the ``yaml.safe_load`` result); raises :class:`ConfigError`."""
    return _parse(data, source, None)


def _load(text: str, source: str, file_base: Path | None, *, check_files: bool = False) -> Bootstrap:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: as safe as safe_load
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        message = f"YAML syntax error{where}: {exc.problem or exc.context}"
        raise ConfigError([Problem("", message, line)], source) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ConfigError([Problem("", f"YAML error: {exc}")], source) from None
    return _parse(data, source, file_base, check_files=check_files)


def _parse(data: object, source: str, file_base: Path | None, *, check_files: bool = False) -> Bootstrap:
    r = _Reader(file_base, check_files=check_files)
    result: Bootstrap | None = None
    with contextlib.suppress(_Skip):  # its problems are in r.problems
        result = _bootstrap(r, normalize(data), "")
    if r.problems or result is None:
        raise ConfigError(r.problems, source)
    return result


def _admin(r: _Reader, v: object, path: str) -> Admin:
    f = _Fields(r, v, path, ("address", "access_log", "access_log_path"))
    address = f.req("address", _address())
    logs = f.opt("access_log", _list(_access_log), ())
    # deprecated in Envoy v3 but still accepted: a file logger at that path
    log_path = f.opt("access_log_path", _nonempty_str, None)
    if log_path is not None:
        logs = (*logs, AccessLog("file", log_path))
    f.done()
    return Admin(address, logs)


def _static_resources(r: _Reader, v: object, path: str) -> tuple[tuple[Listener, ...], tuple[Cluster, ...]]:
    f = _Fields(r, v, path, ("listeners", "clusters", "secrets"))
    for secret in f.opt("secrets", _list(_secret), ()) or ():  # first: listeners and clusters refer to them
        r.secrets[secret.name] = secret
    listeners = f.opt("listeners", _list(_listener), ())
    clusters = f.opt("clusters", _list(_cluster), ())
    raw = f.values
    # Cross-references are checked against the raw names so that one broken cluster (a bad port, say)
    # does not also make every route to it "unknown": each mistake is reported once, where it is.
    # A `clusters` that is not even a list was reported already; checking against it would flag
    # every reference.
    raw_clusters = raw.get("clusters", [])
    cluster_names = _raw_names(raw_clusters)
    for name, ref_path in r.cluster_refs if isinstance(raw_clusters, list) else ():
        if name not in cluster_names:
            r.problems.append(
                Problem(ref_path, f"unknown cluster {name!r} (not in static_resources.clusters)")
            )
            f.failed = True
    for key in ("listeners", "clusters"):
        seen: dict[str, int] = {}
        for i, n in _raw_indexed_names(raw.get(key)):
            if n in seen:
                f.problem(f"{key}[{i}].name", f"duplicate name {n!r} (also {key}[{seen[n]}])")
            seen.setdefault(n, i)
    if listeners:
        bound: dict[tuple[str, int], int] = {}
        for i, listener in enumerate(listeners):
            key2 = (str(ipaddress.ip_address(listener.address.address)), listener.address.port_value)
            if key2 in bound and key2[1] != 0:
                f.problem(
                    f"listeners[{i}].address",
                    f"{listener.address} is already used by listeners[{bound[key2]}]",
                )
            bound.setdefault(key2, i)
    f.done()
    return listeners, clusters


def _raw_indexed_names(items: object) -> list[tuple[int, str]]:
    if not isinstance(items, list):
        return []
    return [
        (i, x["name"])
        for i, x in enumerate(items)
        if isinstance(x, Mapping) and isinstance(x.get("name"), str)
    ]


def _raw_names(items: object) -> set[str]:
    return {n for _, n in _raw_indexed_names(items)}


def _bootstrap(r: _Reader, v: object, path: str) -> Bootstrap:
    if v is None:
        r.fail(path, "the document is empty")
    f = _Fields(r, v, path, ("admin", "static_resources", "layered_runtime"))
    admin = f.opt("admin", _admin, None)
    resources = f.opt("static_resources", _static_resources, ((), ()))
    runtime = f.opt("layered_runtime", _layered_runtime, ())
    f.done()
    return Bootstrap(admin, resources[0], resources[1], runtime)


def _layered_runtime(r: _Reader, v: object, path: str) -> tuple[tuple[str, RuntimeValue], ...]:
    f = _Fields(r, v, path, ("layers",))
    layers = f.opt("layers", _list(_runtime_layer), ())
    f.done()
    merged: dict[str, RuntimeValue] = {}
    for layer in layers:  # later layers override earlier ones, as in Envoy
        merged.update(layer)
    return tuple(sorted(merged.items()))


def _runtime_layer(r: _Reader, v: object, path: str) -> dict[str, RuntimeValue]:
    """A ``static_layer`` (disk, admin and RTDS layers are outside the subset): its nested keys
    flattened into Envoy's dotted runtime keys."""
    f = _Fields(r, v, path, ("name", "static_layer"))
    f.req("name", _nonempty_str)
    layer = f.req("static_layer", _runtime_values)
    f.done()
    return layer


def _runtime_values(r: _Reader, v: object, path: str) -> dict[str, RuntimeValue]:
    if not isinstance(v, Mapping):
        r.fail(path, f"expected a mapping, got {_kind(v)}")
    out: dict[str, RuntimeValue] = {}
    stack: list[tuple[str, Mapping[Any, Any], int]] = [("", v, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        for key, value in node.items():
            full = f"{prefix}{key}"
            if isinstance(value, Mapping) and depth < 32:
                stack.append((f"{full}.", value, depth + 1))
            elif isinstance(value, (bool, int, float, str)) or value is None:
                out[full] = value
            else:
                r.fail(
                    _join(path, full),
                    f"expected a runtime value (number, string, boolean), got {_kind(value)}",
                )
    return out
