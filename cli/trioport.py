"""trioport: runs the cluster's services (auth, proxy, node) in one process."""

from __future__ import annotations

import argparse

from trioport import __version__

from ._common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioport", description="Run trioport's services: auth, proxy and node."
    )
    parser.add_argument("--version", action="version", version=f"trioport {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run one or more services in this process")
    run.add_argument("--roles", default="auth,proxy,node", help="comma-separated: auth,proxy,node")
    return parser


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    parser.error("the services are not built yet; see the open issues")
    return 2


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)
