"""``yastack proxy -c CONFIG``: the Envoy-style proxy from the command line (its parser lives here so
that ``yastack``'s other commands never import the proxy)."""

from __future__ import annotations

import argparse

__all__ = ["add_proxy_command"]


def add_proxy_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    proxy = commands.add_parser(
        "proxy",
        help="run the Envoy-style reverse proxy from a v3 static bootstrap (see check-config)",
    )
    proxy.add_argument("-c", "--config", required=True, help="the YAML (or JSON) bootstrap file")
    from trio_yastack.l7.proxy import add_proxy_options

    add_proxy_options(proxy)
    proxy.set_defaults(handler=_proxy)
    return proxy


def _proxy(args: argparse.Namespace) -> int:
    from trio_yastack.l7.proxy import main_proxy

    return main_proxy(args)
