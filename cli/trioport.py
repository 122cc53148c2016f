"""trioport: runs the cluster's services (auth, proxy, node) in one process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import trio

from trioport import __version__
from trioport.config import DEFAULT_DATA_DIR, Config, apply_flags, load_config

from ._common import run_main

#: Where ``--config`` points when not given; its absence means "all defaults".
DEFAULT_CONFIG = "/etc/trioport.yaml"


def default_data_dir() -> str:
    """/var/lib/trioport for root; otherwise a directory the user can write."""
    if os.geteuid() == 0:
        return DEFAULT_DATA_DIR
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "trioport")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioport", description="Run trioport's services: auth, proxy and node."
    )
    parser.add_argument("--version", action="version", version=f"trioport {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run one or more services in this process",
        description="Run trioport's services. With no arguments and no config file, "
        "all three run on this machine with their state under the data directory.",
    )
    run.add_argument("--config", help=f"YAML configuration file (default {DEFAULT_CONFIG})")
    run.add_argument("--roles", help="comma-separated services to run: auth,proxy,node")
    run.add_argument("--data-dir", help="where state lives (default /var/lib/trioport as root)")
    run.add_argument("--nodename", help="this machine's name in the cluster")
    run.add_argument("--auth-server", help="host[:port] of the auth service")
    run.add_argument("--token", help="join token for a node or proxy's first start")
    run.add_argument("--labels", help="static node labels: k=v,k2=v2")
    run.add_argument("--diag-addr", help="host:port for /healthz, /readyz and /metrics")
    run.add_argument("--debug", action="store_true", help="log debug messages")
    return parser


def config_file(args: argparse.Namespace) -> str | None:
    """The configuration file in use: ``--config``, else /etc/trioport.yaml if present."""
    if args.config is not None:
        return args.config
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def load(args: argparse.Namespace) -> Config:
    """The file (if any), then the flags over it."""
    path = config_file(args)
    config = load_config(path) if path else Config.default(default_data_dir())
    data_dir = args.data_dir
    if data_dir is None and path is None:
        data_dir = default_data_dir()
    return apply_flags(
        config,
        roles=args.roles,
        data_dir=data_dir,
        nodename=args.nodename,
        auth_servers=args.auth_server,
        token=args.token,
        labels=args.labels,
        diag_addr=args.diag_addr,
    )


def _addr(started: Any) -> str:
    """The first address a service reported, as host:port."""
    if hasattr(started, "web"):  # the proxy: its HTTPS address is what users need
        started = started.web
    first = started[0] if isinstance(started, list | tuple) and started else started
    if isinstance(first, tuple) and len(first) >= 2:
        host, port = first[0], first[1]
        if host in ("0.0.0.0", "::", ""):  # noqa: S104
            host = "127.0.0.1"
        return f"{host}:{port}"
    return str(first)


def announce(config: Config, started: dict[str, Any], config_path: str | None = None) -> None:
    """Tell the person who typed ``trioport run`` what is running and what to do next."""
    lines = [f"trioport {__version__}: cluster {config.cluster_name!r} is running."]
    for name, what in started.items():
        if hasattr(what, "ssh"):
            lines.append(f"  {name:<5} {_addr(what)} (HTTPS), {_addr(what.ssh)} (SSH)")
        else:
            lines.append(f"  {name:<5} {_addr(what)}")
    data_dir = config.teleport.data_dir
    lines.append(f"  state in {data_dir}")
    if config_path is not None:
        tctl = f"tctl --config={config_path}"
    elif data_dir != DEFAULT_DATA_DIR:
        tctl = f"tctl --data-dir={data_dir}"
    else:
        tctl = "tctl"
    if "auth" in started:
        lines += [
            "",
            "Next:",
            f"  {tctl} users add alice --logins=root    # prints an invitation link",
            f"  {tctl} tokens add --type=node           # lets another machine join",
        ]
    if "proxy" in started:
        web = started["proxy"]
        lines.append(f"  tsh login --proxy={_addr(web)} --user=alice --insecure")
        lines.append(f"  tsh ssh root@{config.teleport.nodename}")
    lines.append("Stop with Ctrl-C.")
    print("\n".join(lines), flush=True)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = load(args)
    path = config_file(args)
    from trioport.process import serve_until_signalled

    trio.run(serve_until_signalled, config, lambda c, s: announce(c, s, path))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)
