"""The ``yastack`` command."""

from __future__ import annotations

import argparse
import sys

import trio

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
