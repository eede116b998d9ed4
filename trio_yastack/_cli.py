"""The ``yastack`` command."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trio_yastack._open_stack import open_stack
from trio_yastack.dispatch._launcher import worker_ready
from trio_yastack.journey import (
    add_client_commands,
    add_observability_options,
    check_observability_options,
    observe_core,
)
from trio_yastack.stack import StackStatistics

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from trio_yastack._demo import run_demo

    summary = trio.run(
        lambda: run_demo(
            pings=args.pings,
            datagrams=args.datagrams,
            loss=args.loss,
            seed=args.seed,
            pcap=args.pcap,
            trace=not args.quiet,
        )
    )
    print(f"# summary: {summary}")
    if args.pcap:
        print(f"# capture written to {args.pcap} (read it with: tshark -r {args.pcap})")
    return 0


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("a probability in [0, 1)")
    return value


def _load_app(spec: str) -> Any:
    """``MODULE:APP`` or ``path/to/file.py:APP`` (``APP`` defaults to ``app``) as the object."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    path = Path(module_name)
    if module_name.endswith(".py") or path.is_file():
        if not path.is_file():
            raise SystemExit(f"yastack serve: no file {module_name}")
        sys.path.insert(0, str(path.resolve().parent))
        module_name = path.stem
    else:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SystemExit(f"yastack serve: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"yastack serve: {module_name!r} has no attribute {attribute!r}") from None


#: The young generation's threshold once a server is up (CPython's default: 700).
SERVE_GC_THRESHOLD = (20_000, 50, 100)


def _collect_less() -> None:
    """Once the server listens: its start-up objects (the app, the stack, trio's runtime) go to
    the permanent generation (``gc.freeze``), and the young generation is collected every
    20 000 net allocations instead of every 700.

    A connection leaves no reference cycles (``HttpConnection`` drops its parser's bound
    callbacks at close), so the cyclic collector frees nothing per connection: it only walks
    the live objects, and with the default threshold it did so every few connections (11-14 %
    of a ``Connection: close`` connection's CPU over the stack, py-spy).  The proxy does the
    same (``l7/proxy.py``).  Bounded: still a young collection per 20 000 allocations, so a
    cycle made by an app is freed as before, a little later."""
    gc.freeze()
    gc.set_threshold(*SERVE_GC_THRESHOLD)


def _serve(args: argparse.Namespace) -> int:
    from trio_yastack.l7 import serve_asgi

    if args.cores < 1:
        raise SystemExit("yastack serve: --cores must be at least 1")
    if bool(args.certfile) != bool(args.keyfile):
        raise SystemExit("yastack serve: --certfile and --keyfile go together")
    app = _load_app(args.app)
    if args.server == "yastack" and _counted(app)[0] is None:
        raise SystemExit(
            f"yastack serve: {args.app} is not an ASGI app (a WSGI app needs --server hypercorn)"
        )
    args.ip = args.ip or ["198.18.0.2/24"]  # (append's default would be appended to)
    config = _serve_config(args)
    _check_serve_options(args, config)
    if args.kernel:
        return _serve_kernel(args, app, config)
    worker_mode = args.cores > 1
    try_path = _try_path(app)
    counts, app = _counted(app)

    async def main(nic: Any, layout: Any = None) -> dict[str, Any]:
        # A worker of several leaves SIGINT to the launcher, which sends it SIGTERM.
        signals_wanted = (signal.SIGTERM,) if worker_mode else (signal.SIGINT, signal.SIGTERM)
        async with (
            open_stack(
                nic,
                ip=args.ip,
                gateway=args.gateway,
                layout=layout,
                nameservers=args.dns or (),
                system_resolver=args.system_resolver,
            ) as stack,
            observe_core(args, stack, layout) as observer,
        ):
            if counts is not None:
                observer.add_counters("http", lambda: dict(counts))
            with trio.open_signal_receiver(*signals_wanted) as signals:

                async def shutdown_trigger() -> None:
                    async for signum in signals:
                        where = f"core {layout.core_id}: " if layout is not None else ""
                        print(f"# {where}{signal.Signals(signum).name}: shutting down gracefully", flush=True)
                        return

                async with trio.open_nursery() as nursery:
                    urls = await nursery.start(
                        partial(serve_asgi, app, config, stack=stack, shutdown_trigger=shutdown_trigger)
                    )
                    _collect_less()
                    where = f"{args.cores} cores, " if worker_mode else ""
                    nic_name = f"{args.nic} ({where}{stack.address})"
                    lines = [f"# serving {args.app} over the user-space stack on {nic_name}"]
                    for url in urls:
                        flag = " -k" if url.startswith("https") else ""
                        lines.append(f"# try: curl{flag} {url}{try_path}")
                    if layout is None:
                        print("\n".join(lines), flush=True)
                    else:  # the launcher prints core 0's lines once every core listens
                        worker_ready("\n".join(lines) if layout.core_id == 0 else "")
            statistics = stack.statistics()
            tcp = statistics.tcp.counters
            return {
                "core": 0 if layout is None else layout.core_id,
                "accepted": tcp["connections_accepted"],
                "active_opens": tcp["active_opens"],
                "resets_sent": tcp["resets_sent"],
                "dispatch": layout.stats.snapshot() if layout is not None else {},
                "statistics": statistics.as_dict(),  # plain data: it crosses a process boundary
            }

    try:
        if not worker_mode:
            trio.run(main, args.nic)
            return 0
        from trio_yastack._open_stack import open_multicore_port, with_ipv6_on_tap
        from trio_yastack.dispatch._launcher import WorkerFailed, launch

        def announce(announcements: list[str]) -> None:
            print(announcements[0], flush=True)  # core 0's, after every core's listeners are up

        port = open_multicore_port(with_ipv6_on_tap(args.nic, args.ip), args.cores)
        try:
            summaries = launch(
                lambda layout: trio.run(main, port, layout), port=port, cores=args.cores, ready=announce
            )
        except WorkerFailed as exc:
            raise SystemExit(f"yastack serve: {exc}") from None
        merged = StackStatistics.merged(
            [StackStatistics.from_dict(summary.pop("statistics")) for summary in summaries]
        )
        print("# per core: " + json.dumps(summaries), flush=True)
        print("# all cores, tcp: " + json.dumps(dict(merged.tcp.counters)), flush=True)
    except OSError as exc:  # the NIC could not be opened (the message says what to do)
        raise SystemExit(f"yastack serve: {exc.strerror or exc}") from None
    return 0


def _serve_config(args: argparse.Namespace) -> Any:
    """The server's configuration from the options: a ``ServerConfig`` for ours, a hypercorn
    ``Config`` for ``--server hypercorn`` (both checked by :func:`_check_serve_options`)."""
    import logging

    from trio_yastack.l7.asgi import Config, ServerConfig

    if args.server == "hypercorn":
        config = Config()
        config.bind = args.bind or ["0.0.0.0:8000"]
        config.insecure_bind = args.insecure_bind or []
        config.certfile = args.certfile
        config.keyfile = args.keyfile
        config.accesslog = args.access_log
        config.errorlog = "-"
        config.loglevel = args.log_level.upper()
        config.keep_alive_timeout = args.keep_alive
        config.graceful_timeout = args.graceful_timeout
        config.backlog = args.backlog
        return config
    logging.basicConfig(
        level=args.log_level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
    )
    try:
        return ServerConfig(
            bind=tuple(args.bind or ["0.0.0.0:8000"]),
            insecure_bind=tuple(args.insecure_bind or []),
            certfile=args.certfile,
            keyfile=args.keyfile,
            access_log=args.access_log,
            keep_alive_timeout=args.keep_alive,
            graceful_timeout=args.graceful_timeout,
            backlog=args.backlog,
            max_request_body=args.max_request_body,
        )
    except ValueError as exc:
        raise SystemExit(f"yastack serve: {exc}") from None


#: routes every FastAPI app has: suggested only when the app has no route of its own
_FRAMEWORK_ROUTES = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _try_path(app: Any) -> str:
    """The path the ``# try: curl`` line suggests: one of the app's own routes, never a guess.

    Its module may name one (``YASTACK_TRY_PATH = "/json"``, as ``examples/hello.py`` does);
    else the first GET route without parameters of a Starlette or FastAPI app (``app.routes``);
    else ``/``, which every HTTP app answers somehow.  (It used to be ``/json`` for every app:
    the example's route, a 404 elsewhere.)"""
    module = sys.modules.get(getattr(app, "__module__", "") or "")
    named = getattr(module, "YASTACK_TRY_PATH", None)
    if isinstance(named, str) and named.startswith("/"):
        return named
    candidates = []
    for route in getattr(app, "routes", None) or ():
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if (
            isinstance(path, str)
            and path.startswith("/")
            and "{" not in path
            and methods
            and "GET" in methods
        ):
            candidates.append(path)
    own = [path for path in candidates if path not in _FRAMEWORK_ROUTES]
    return (own or candidates or ["/"])[0]


def _serve_kernel(args: argparse.Namespace, app: Any, config: Any) -> int:
    """``--kernel``: our server on kernel sockets, no stack, no NIC (the server measured alone)."""
    from trio_yastack.l7 import serve_asgi

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def shutdown_trigger() -> None:
                async for signum in signals:
                    print(f"# {signal.Signals(signum).name}: shutting down gracefully", flush=True)
                    return

            async with trio.open_nursery() as nursery:
                urls = await nursery.start(
                    partial(serve_asgi, app, config, kernel=True, shutdown_trigger=shutdown_trigger)
                )
                _collect_less()
                print(f"# serving {args.app} on kernel sockets (no stack)")
                try_path = _try_path(app)
                for url in urls:
                    flag = " -k" if url.startswith("https") else ""
                    print(f"# try: curl{flag} {url}{try_path}", flush=True)

    try:
        trio.run(main)
    except OSError as exc:
        raise SystemExit(f"yastack serve: {exc.strerror or exc}") from None
    return 0


def _counted(app: Any) -> tuple[dict[str, int] | None, Any]:
    """An ASGI app that counts what it serves (``yastack stat`` shows the counts per core, so a
    client can check them against what it sent); a WSGI app is served as it is, uncounted."""
    import inspect

    if not (inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__)):
        return None, app
    counts = {"requests": 0, "websocket": 0}

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind == "http":
            counts["requests"] += 1
        elif kind == "websocket":
            counts["websocket"] += 1
        await app(scope, receive, send)

    return counts, counted


def _check_serve_options(args: argparse.Namespace, config: Any) -> None:
    """Every option value checked before anything is opened: a bad one is one clear line."""
    from ipaddress import IPv4Address, IPv4Interface, IPv6Interface

    from trio_yastack.l7.asgi import parse_bind
    from trio_yastack.nic import split_fault_spec
    from trio_yastack.nic.tap import parse_tap_spec

    def fail(message: str) -> None:
        raise SystemExit(f"yastack serve: {message}")

    if args.kernel and args.server == "hypercorn":
        fail("--kernel serves with our server only (hypercorn on kernel sockets is plain `hypercorn`)")
    if args.kernel and args.cores > 1:
        fail("--kernel serves on one core (run one process per core behind SO_REUSEPORT yourself)")
    if args.kernel and (args.trace is not None or args.break_layers is not None or args.control is not None):
        fail("--trace, --break and --control follow packets through the stack: not with --kernel")
    if args.max_request_body is not None and args.max_request_body < 0:
        fail("--max-request-body must not be negative")
    for bind in [*config.bind, *config.insecure_bind]:
        try:
            host, _port = parse_bind(bind)
        except ValueError as exc:
            fail(str(exc))
        if host is not None and ":" in host and not args.kernel and not any(":" in ip for ip in args.ip):
            fail(
                f"--bind {bind}: an IPv6 address needs one on the stack "
                "(--ip 2001:2::2/64 beside the IPv4 one)"
            )
    try:
        v4 = [IPv4Interface(ip) for ip in args.ip if ":" not in ip]
        for ip in args.ip:
            if ":" in ip:
                IPv6Interface(ip)
        if len(v4) != 1:
            fail(f"--ip: exactly one IPv4 address, not {len(v4)} (IPv6 ones may be added beside it)")
        if args.gateway is not None:
            IPv4Address(args.gateway)
    except ValueError as exc:
        fail(f"--ip/--gateway: {exc}")
    try:  # ",faults=..." wraps any port (nic/_faults.py); the rest is the port's own spec
        nic, _ = split_fault_spec(args.nic)
    except ValueError as exc:
        fail(str(exc))
    if nic.startswith("tap:") or ":" not in nic:
        try:
            parse_tap_spec(nic)
        except ValueError as exc:
            fail(str(exc))
    elif nic.startswith("af_packet:"):
        from trio_yastack.nic.af_packet import parse_af_packet_spec

        try:
            parse_af_packet_spec(nic)
        except ValueError as exc:
            fail(str(exc))
    elif nic.startswith("af_xdp:"):
        from trio_yastack.nic.af_xdp import parse_af_xdp_spec

        try:
            parse_af_xdp_spec(nic)
        except ValueError as exc:
            fail(str(exc))
    problem = check_observability_options(args)
    if problem:
        fail(problem)
    if args.break_layers is not None and args.cores > 1:
        fail("--break needs one core (every core's debugger would read the same terminal)")
    for option, path in (("--certfile", args.certfile), ("--keyfile", args.keyfile)):
        if path and not Path(path).is_file():
            fail(f"{option} {path}: no such file")
    if args.certfile:
        import ssl

        try:
            if args.server == "hypercorn":
                config.create_ssl_context()
            else:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    args.certfile, args.keyfile
                )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            fail(f"--certfile {args.certfile} / --keyfile {args.keyfile}: {exc}")


def _check_config(args: argparse.Namespace) -> int:
    """Validate an Envoy-style proxy configuration: every problem with its YAML path, or a summary."""
    from trio_yastack.l7.config import load_config_or_report

    bootstrap = load_config_or_report(args.config, check_files=args.check_files)
    if bootstrap is None:
        return 1
    print(bootstrap.summary())
    return 0


def _certs(args: argparse.Namespace) -> int:
    """Development certificates: a CA (made once, then reused) and a leaf per host."""
    from trio_yastack.tls.certs import main_certs

    hosts = [host.strip() for host in args.hosts.split(",") if host.strip()]
    if not hosts:
        raise SystemExit("yastack certs: --hosts needs at least one name or address")
    try:
        written = main_certs(args.directory, hosts, days=args.days, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        message = str(exc).replace("pass overwrite=True", "use --overwrite")
        raise SystemExit(f"yastack certs: {message}") from None
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yastack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="two stacks on a virtual wire: ARP, ping, UDP, fragments, ICMP errors, printed as they pass",
    )
    demo.add_argument("--pings", type=int, default=3)
    demo.add_argument("--datagrams", type=int, default=3)
    demo.add_argument("--loss", type=_probability, default=0.0, help="per-frame loss probability on the wire")
    demo.add_argument("--seed", type=int, default=1, help="seed for the wire's faults and the stacks")
    demo.add_argument("--pcap", help="also write the stack's frames to this pcap file")
    demo.add_argument("--quiet", action="store_true", help="do not print each frame")
    demo.set_defaults(handler=_demo)
    serve = commands.add_parser(
        "serve",
        help="serve an ASGI app over the user-space stack (our lean server, or hypercorn)",
        description="Serve an ASGI app over the user-space stack with trio_yastack's lean server "
        "(HTTP/1.1, WebSocket, HTTP/2 via hypercorn's protocol), or with hypercorn's trio worker "
        "(--server hypercorn, which also serves WSGI apps).",
    )
    serve.add_argument("app", help="MODULE:APP or path/to/file.py:APP (APP defaults to app)")
    serve.add_argument(
        "--server",
        choices=["yastack", "hypercorn"],
        default="yastack",
        help="our lean server (default) or hypercorn's trio worker",
    )
    serve.add_argument(
        "--kernel",
        action="store_true",
        help="serve on kernel sockets, no stack and no NIC (our server alone, for comparisons)",
    )
    serve.add_argument(
        "--max-request-body",
        type=int,
        default=100 * 1024 * 1024,
        metavar="BYTES",
        help="larger request bodies get 413 (default 100 MiB; our server only)",
    )
    serve.add_argument("--nic", default="tap:yas0", help="the NIC port spec (default tap:yas0)")
    serve.add_argument(
        "--ip",
        action="append",
        metavar="ADDRESS/PREFIX",
        help="an address of the stack, repeatable: one IPv4 address (default 198.18.0.2/24) and any "
        "IPv6 ones (e.g. --ip 198.18.0.2/24 --ip 2001:2::2/64; a TAP keeps the kernel's IPv6 then)",
    )
    serve.add_argument("--gateway", default=None, help="the default gateway's address")
    serve.add_argument(
        "--dns",
        action="append",
        metavar="IP[:PORT]",
        help="a DNS server the app's name lookups ask over the stack, repeatable (default: the "
        "stack's hosts table only)",
    )
    serve.add_argument(
        "--system-resolver",
        action="store_true",
        help="let the system's resolver answer names the stack's DNS does not know (last)",
    )
    serve.add_argument(
        "--bind",
        action="append",
        help="HOST:PORT, [IPV6]:PORT or PORT to listen on, repeatable "
        "(default 0.0.0.0:8000; [::]:PORT: both families)",
    )
    serve.add_argument("--insecure-bind", action="append", help="plain HTTP listeners beside TLS ones")
    serve.add_argument("--certfile", help="TLS certificate chain (PEM): HTTPS, ALPN h2/http1.1")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument("--access-log", default=None, help="access log file, - for stdout (default: none)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--keep-alive", type=float, default=5.0, help="idle keep-alive timeout, seconds")
    serve.add_argument(
        "--graceful-timeout", type=float, default=5.0, help="seconds requests get after SIGINT/SIGTERM"
    )
    serve.add_argument(
        "--backlog", type=int, default=1024, help="listen queue length (default 1024, as ServerConfig's)"
    )
    serve.add_argument(
        "--cores", type=int, default=1, help="runtimes, one process per core (a TAP gets a queue each)"
    )
    add_observability_options(serve)
    serve.set_defaults(handler=_serve)
    check = commands.add_parser(
        "check-config",
        help="validate an Envoy-style proxy configuration (the documented v3 subset)",
    )
    check.add_argument("config", help="the YAML (or JSON) bootstrap file")
    check.add_argument(
        "--check-files", action="store_true", help="also check that certificate and key files exist"
    )
    check.set_defaults(handler=_check_config)
    certs = commands.add_parser(
        "certs", help="make a development CA and a certificate per host (for TLS tests and examples)"
    )
    certs.add_argument("directory", help="where to write ca.pem/ca.key and HOST.pem/HOST.key")
    certs.add_argument("--hosts", required=True, help="comma-separated names or IP addresses")
    certs.add_argument("--days", type=int, default=30)
    certs.add_argument("--overwrite", action="store_true", help="replace existing host files")
    certs.set_defaults(handler=_certs)
    add_client_commands(commands)
    from trio_yastack.l7.cli import add_proxy_command

    add_proxy_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
