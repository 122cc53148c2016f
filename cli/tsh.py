"""tsh: the user's client (login, ssh, scp, ls, join, play, ...)."""

from __future__ import annotations

import argparse

from trioport import __version__

from ._common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsh", description="trioport's client: log in to a cluster and reach its nodes."
    )
    parser.add_argument("--version", action="version", version=f"tsh {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)
