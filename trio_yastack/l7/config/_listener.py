"""Listeners and filter chains (``listener.v3``), and the ``tcp_proxy`` network filter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from trio_yastack.tls.config import DownstreamTlsContext

from ._core import SocketAddress, _address, _cluster_ref
from ._hcm import HttpConnectionManager, _hcm
from ._names import HCM_NAME, HCM_TYPE, TCP_PROXY_NAME, TCP_PROXY_TYPE, TLS_INSPECTOR_NAME, TLS_INSPECTOR_TYPE
from ._reader import _duration_ge0, _enum, _extension, _Fields, _list, _nonempty_str, _Reader, _str
from ._tls import _downstream_tls


@dataclass(frozen=True, slots=True)
class TcpProxy:
    """The ``envoy.filters.network.tcp_proxy`` filter; ``idle_timeout`` defaults to Envoy's 1 hour."""

    stat_prefix: str
    cluster: str
    idle_timeout: float = 3600.0


@dataclass(frozen=True, slots=True)
class FilterChain:
    """``filter_chains[]``: chosen as Envoy chooses, most specific first at each step: by SNI
    (``filter_chain_match.server_names``; empty matches any name), then ``transport_protocol``
    (``tls`` or ``raw_buffer``, as the TLS inspector saw the connection; None matches both), then
    ``application_protocols`` (any of the client's ALPN offer; empty matches any); then optionally
    terminating TLS and handing the connection to its one filter."""

    filter: HttpConnectionManager | TcpProxy
    server_names: tuple[str, ...] = ()
    transport_socket: DownstreamTlsContext | None = None
    name: str | None = None
    transport_protocol: Literal["tls", "raw_buffer"] | None = None
    application_protocols: tuple[str, ...] = ()

    @property
    def needs_inspector(self) -> bool:
        """Whether choosing this chain needs the ClientHello read first."""
        return bool(self.server_names or self.transport_protocol or self.application_protocols)


@dataclass(frozen=True, slots=True)
class Listener:
    """``listeners[]``: an address and its filter chains; ``name`` is optional as in Envoy (an unnamed
    listener is called by its address, e.g. ``0.0.0.0:10000``).  ``tls_inspector`` records an explicit
    ``envoy.filters.listener.tls_inspector`` listener filter (Envoy adds one itself when SNI is matched)."""

    name: str
    address: SocketAddress
    filter_chains: tuple[FilterChain, ...]
    tls_inspector: bool = False


def _tcp_proxy(r: _Reader, f: _Fields) -> TcpProxy:
    proxy = TcpProxy(
        stat_prefix=f.req("stat_prefix", _nonempty_str),
        cluster=f.req("cluster", _cluster_ref),
        idle_timeout=f.opt("idle_timeout", _duration_ge0, 3600.0),
    )
    f.done()
    return proxy


def _network_filter(r: _Reader, v: object, path: str) -> HttpConnectionManager | TcpProxy:
    name, f, tc = _extension(r, v, path, {HCM_NAME: HCM_TYPE, TCP_PROXY_NAME: TCP_PROXY_TYPE})
    try:
        result: HttpConnectionManager | TcpProxy = _hcm(r, tc) if name == HCM_NAME else _tcp_proxy(r, tc)
    finally:
        f.done()
    return result


_TRANSPORT_PROTOCOLS: tuple[Literal["tls", "raw_buffer"], ...] = ("tls", "raw_buffer")


def _filter_chain_match(
    r: _Reader, v: object, path: str
) -> tuple[tuple[str, ...], Literal["tls", "raw_buffer"] | None, tuple[str, ...]]:
    f = _Fields(r, v, path, ("server_names", "transport_protocol", "application_protocols"))
    names = f.opt("server_names", _list(_nonempty_str), ())
    transport = f.opt("transport_protocol", _enum(_TRANSPORT_PROTOCOLS), None)
    alpn = f.opt("application_protocols", _list(_nonempty_str), ())
    f.done()
    return tuple(n.lower() for n in names), transport, alpn


def _filter_chain(r: _Reader, v: object, path: str) -> FilterChain:
    f = _Fields(r, v, path, ("name", "filter_chain_match", "transport_socket", "filters"))
    name = f.opt("name", _str, None)
    chain_match = f.opt("filter_chain_match", _filter_chain_match, ((), None, ()))
    server_names, transport, alpn = chain_match or ((), None, ())  # None: failed, f.done() raises
    tls = f.opt("transport_socket", _downstream_tls, None)
    filters = f.req("filters", _list(_network_filter, min_items=1))
    if filters is not None and len(filters) > 1:
        f.problem(
            "filters", "must hold exactly one filter: http_connection_manager and tcp_proxy are both terminal"
        )
    f.done()
    return FilterChain(filters[0], server_names, tls, name, transport, alpn)


def _listener_filter(r: _Reader, v: object, path: str) -> str:
    if isinstance(v, Mapping) and v.get("name") == TLS_INSPECTOR_NAME and v.get("typed_config") is None:
        f = _Fields(r, v, path, ("name", "typed_config"))  # found by name, as Envoy finds it
        f.done()
        return TLS_INSPECTOR_NAME
    name, f, tc = _extension(r, v, path, {TLS_INSPECTOR_NAME: TLS_INSPECTOR_TYPE})
    tc.done()
    f.done()
    return name


def _listener(r: _Reader, v: object, path: str) -> Listener:
    f = _Fields(r, v, path, ("name", "address", "listener_filters", "filter_chains"))
    address = f.req("address", _address())
    # Envoy names an unnamed listener with a generated UUID; its address is as unique here (two
    # listeners on one address are an error) and tells the operator more in logs and stats.
    name = f.opt("name", _nonempty_str, str(address) if address is not None else "")
    listener_filters = f.opt("listener_filters", _list(_listener_filter), ())
    chains = f.req("filter_chains", _list(_filter_chain, min_items=1))
    if chains is not None:
        seen: dict[tuple[object, ...], int] = {}
        for i, chain in enumerate(chains):
            names = tuple(sorted(chain.server_names))
            key = (names, chain.transport_protocol, tuple(sorted(chain.application_protocols)))
            if key in seen:
                parts = [f"server_names {', '.join(names)}"] if names else []
                if chain.transport_protocol:
                    parts.append(f"transport_protocol {chain.transport_protocol}")
                if chain.application_protocols:
                    parts.append(f"application_protocols {', '.join(chain.application_protocols)}")
                match = "; ".join(parts) or "no filter_chain_match"
                f.problem(f"filter_chains[{i}]", f"same match as filter_chains[{seen[key]}] ({match})")
            seen.setdefault(key, i)
    f.done()
    return Listener(name, address, chains, TLS_INSPECTOR_NAME in listener_filters)
