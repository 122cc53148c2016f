"""tctl: the administrator's tool (users, tokens, roles, nodes, the CAs, status).

tctl runs on the auth server's machine. It reads the configuration file
(``--config``, else ``/etc/trioport.yaml`` when it exists) to find the data
directory (``--data-dir`` overrides it) and the auth service's address
(``--auth-server`` overrides it), loads the administrator's identity the auth
service wrote to ``DATA_DIR/admin/``, and calls the auth API over SSH
(:mod:`trioport.authclient`). This module only parses arguments and prints;
``docs/cli.md`` is its manual.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from trioport import __version__
from trioport.authclient import AuthClient, ClientIdentity, connect_auth
from trioport.config import DEFAULT_CONFIG_PATH, Address, Config, load_config, parse_addr
from trioport.errors import AlreadyExists, ConfigError, NotFound
from trioport.resources import (
    CertAuthority,
    Node,
    Role,
    Token,
    User,
    format_duration,
    from_dict,
    from_yaml_all,
    parse_duration,
    to_dict,
    to_yaml,
)

from ._common import run_main

#: Seconds to reach and log in to the auth service.
CONNECT_TIMEOUT = 10.0

#: What ``get`` and ``rm`` accept, and the kind each name means.
KIND_ALIASES = {
    "role": "role",
    "roles": "role",
    "user": "user",
    "users": "user",
    "token": "token",
    "tokens": "token",
    "node": "node",
    "nodes": "node",
    "cert_authority": "cert_authority",
    "cert_authorities": "cert_authority",
    "ca": "cert_authority",
    "cas": "cert_authority",
}


# --- the parser ------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """The options every command takes, before or after the command name."""
    parser.add_argument(
        "-c",
        "--config",
        default=default,
        metavar="PATH",
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH} if it exists)",
    )
    parser.add_argument(
        "-d",
        "--data-dir",
        default=default,
        metavar="DIR",
        help="the auth service's data directory (holds the admin identity)",
    )
    parser.add_argument(
        "--auth-server",
        default=default,
        metavar="HOST:PORT",
        help="the auth service's address (default: auth_service.listen_addr)",
    )


def _format(parser: argparse.ArgumentParser, choices: Sequence[str] = ("text", "json")) -> None:
    parser.add_argument(
        "--format", choices=choices, default=choices[0], help=f"output format ({choices[0]})"
    )


def build_parser() -> argparse.ArgumentParser:
    """tctl's argument parser."""
    parser = argparse.ArgumentParser(
        prog="tctl", description="trioport's admin tool: manage a cluster's users, roles and nodes."
    )
    parser.add_argument("--version", action="version", version=f"tctl {__version__}")
    _common(parser, default=None)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        group: Any, name: str, help_text: str, fn: Callable[..., Any]
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(run=fn)
        return p

    users = sub.add_parser("users", help="add, list, remove and reset users").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = command(users, "add", "invite a new user", _users_add)
    p.add_argument("name")
    p.add_argument("legacy_logins", nargs="?", metavar="LOGINS", help="(older form of --logins)")
    p.add_argument("--logins", help="comma-separated OS logins, e.g. root,alice")
    p.add_argument("--roles", help="comma-separated roles (default: access)")
    _format(p)
    p = command(users, "ls", "list users", _users_ls)
    _format(p)
    p = command(users, "rm", "remove a user", _users_rm)
    p.add_argument("name")
    p = command(users, "reset", "reset a user's password and second factor", _users_reset)
    p.add_argument("name")
    _format(p)
    p = command(users, "unlock", "lift a user's lockout", _users_unlock)
    p.add_argument("name")

    tokens = sub.add_parser("tokens", help="join tokens").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = command(tokens, "add", "make a single-use join token", _tokens_add)
    p.add_argument("--type", default="node", help="comma-separated roles: node, proxy, auth")
    p.add_argument("--ttl", help="lifetime, at most and by default 15m")
    _format(p)
    p = command(tokens, "ls", "list join tokens (masked)", _tokens_ls)
    _format(p)
    p = command(tokens, "rm", "delete a join token", _tokens_rm)
    p.add_argument("token")

    nodes = sub.add_parser("nodes", help="nodes").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = command(nodes, "add", "make a join token for a new node", _tokens_add)
    p.add_argument("--roles", dest="type", default="node", help="roles: node (default), proxy")
    p.add_argument("--ttl", help="lifetime, at most and by default 15m")
    _format(p)
    p = command(nodes, "ls", "list the nodes", _nodes_ls)
    _format(p)
    p = command(nodes, "rm", "forget a host (by UUID): it must join again", _nodes_rm)
    p.add_argument("host_id", metavar="UUID")

    p = command(sub, "create", "create roles, users or tokens from a YAML file", _create)
    p.add_argument("file", metavar="FILE", help="YAML file, '-' for standard input")
    p.add_argument("-f", "--force", action="store_true", help="overwrite what exists")

    p = command(sub, "get", "print resources: KIND or KIND/NAME", _get)
    p.add_argument("ref", metavar="KIND[/NAME]")
    _format(p, ("yaml", "json", "text"))

    p = command(sub, "rm", "remove a resource: KIND/NAME", _rm)
    p.add_argument("ref", metavar="KIND/NAME")

    p = command(sub, "status", "the cluster's name, CAs and counts", _status)
    _format(p)

    auth = sub.add_parser("auth", help="the cluster's certificate authorities").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = command(auth, "export", "print the CAs as OpenSSH lines", _auth_export)
    p.add_argument("--type", choices=("user", "host"), help="user or host CA (default: both)")
    return parser


# --- finding the auth service -------------------------------------------------------------


def _settings(args: argparse.Namespace) -> tuple[Config, str, str]:
    """The configuration, the data directory and the auth service's address.

    Raises:
        ConfigError: the file is broken (file:line: key), or a flag is.
    """
    if args.config:
        config = load_config(args.config)
    elif os.path.exists(DEFAULT_CONFIG_PATH):
        config = load_config(DEFAULT_CONFIG_PATH)
    else:
        config = Config()
    data_dir = args.data_dir or config.teleport.data_dir
    if args.auth_server:
        try:
            addr = parse_addr(args.auth_server, 3025, default_host="127.0.0.1")
        except ValueError as exc:
            raise ConfigError(str(exc), key="--auth-server") from None
    elif not config.auth_service.enabled and config.teleport.auth_servers:
        addr = config.teleport.auth_servers[0]
    else:
        addr = config.auth_service.listen_addr
    if addr.port == 0:
        raise ConfigError(
            "auth_service.listen_addr uses port 0 (any free port): give the auth service's"
            " address with --auth-server HOST:PORT",
            key="--auth-server",
        )
    if addr.host in ("0.0.0.0", "::", ""):  # noqa: S104 - reach a listen address on loopback
        addr = Address("127.0.0.1" if addr.host != "::" else "::1", addr.port)
    return config, data_dir, str(addr)


def _identity(data_dir: str) -> ClientIdentity:
    folder = os.path.join(data_dir, "admin")
    try:
        return ClientIdentity.load(folder)
    except FileNotFoundError:
        raise ConfigError(
            f"no administrator identity in {folder}: run tctl on the auth server's machine,"
            " after the auth service has started once with this data directory",
            key="--data-dir",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"cannot read the administrator identity in {folder}: permission denied"
            " (run tctl as the user the auth service runs as)",
            key="--data-dir",
        ) from None


# --- printing --------------------------------------------------------------------------------


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _json(data: object) -> None:
    _out(json.dumps(data, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    _out(line(headers))
    _out(line(["-" * w for w in widths]))
    for row in rows:
        _out(line(row))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _ttl(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise ConfigError(str(exc), key="--ttl") from None


def _print_invite(invite: dict[str, Any], fmt: str, *, created: bool) -> None:
    if fmt == "json":
        _json(invite)
        return
    hours = max(0.0, invite["expires"] - time.time()) / 3600
    what = "has been created but requires a password" if created else "has been reset"
    _out(
        f'User "{invite["user"]}" {what}. Share this URL with the user to complete'
        f" user setup; the link is valid for {hours:.0f}h:"
    )
    _out(invite["url"])
    proxy = invite["url"].split("/")[2]
    _out()
    _out(f"NOTE: make sure {proxy} points at a trioport proxy that users can reach.")


# --- commands -------------------------------------------------------------------------------
# Each takes (client, args, addr) and prints; errors are TrioportErrors for run_main.


async def _users_add(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    if args.legacy_logins and args.logins:
        raise ConfigError("give the logins once: either --logins or the second argument")
    logins = _split(args.logins or args.legacy_logins)
    roles = _split(args.roles) or None
    invite = await client.add_user(args.name, logins=logins, roles=roles)
    _print_invite(invite, args.format, created=True)


async def _users_ls(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    users = await client.list_users()
    if args.format == "json":
        _json([to_dict(u) for u in users])
        return
    rows = []
    for u in users:
        status = u.spec.status
        state = status.state
        if status.locked_until and status.locked_until.timestamp() > time.time():
            state += " (locked)"
        rows.append([u.metadata.name, ",".join(u.spec.roles), ",".join(u.logins), state])
    _table(["User", "Roles", "Logins", "State"], rows)


async def _users_rm(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    await client.remove_user(args.name)
    _out(f'User "{args.name}" has been deleted')


async def _users_reset(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    _print_invite(await client.reset_user(args.name), args.format, created=False)


async def _users_unlock(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    await client.unlock_user(args.name)
    _out(f'User "{args.name}" has been unlocked')


async def _tokens_add(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    token = await client.add_token(_split(args.type) or ["node"], ttl=_ttl(args.ttl))
    if args.format == "json":
        _json({**token, "auth_server": addr})
        return
    left = format_duration(dt.timedelta(seconds=round(token["expires"] - time.time())))
    roles = ",".join(token["roles"])
    _out(f"The invite token: {token['token']}")
    _out(f"This token will expire in {left}.")
    _out()
    _out(f"Run this on the new {roles} to join the cluster:")
    _out()
    _out(f"> trioport run --roles={roles} --token={token['token']} --auth-server={addr}")
    _out()
    _out(f"The auth service's CA pin is {token['auth_ca_pin']}.")
    _out(f"Make sure {addr} is reachable from the new host.")


async def _tokens_ls(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    tokens = await client.list_tokens()
    if args.format == "json":
        _json([to_dict(t) for t in tokens])
        return
    rows = [
        [
            t.metadata.name,
            ",".join(t.spec.roles),
            _when(t.metadata.expires.timestamp() if t.metadata.expires else None),
        ]
        for t in tokens
    ]
    _table(["Token", "Type", "Expiry Time (UTC)"], rows)


async def _tokens_rm(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    await client.remove_token(args.token)
    _out("The token has been deleted")


async def _nodes_ls(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    nodes = await client.list_nodes()
    if args.format == "json":
        _json(nodes)
        return
    rows = [
        [
            n["hostname"],
            n["host_id"],
            n["addr"],
            ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
            "online" if n["online"] else "offline",
        ]
        for n in nodes
    ]
    _table(["Host", "UUID", "Address", "Labels", "Status"], rows)


async def _nodes_rm(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    await client.remove_node(args.host_id)
    _out(f"Host {args.host_id} has been removed; it must join the cluster again")


def _read_file(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", path=path) from None


async def _create(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    source = "stdin" if args.file == "-" else args.file
    resources = from_yaml_all(_read_file(args.file), source=source)
    if not resources:
        raise ConfigError("the file holds no resources", path=source)
    for resource in resources:
        if not isinstance(resource, Role | User | Token):
            raise ConfigError(
                f"cannot create {resource.kind} resources (only roles, users and tokens)",
                path=source,
            )
    for resource in resources:
        await _create_one(client, resource, force=args.force)


async def _exists(fetch: Callable[[], Any]) -> bool:
    try:
        await fetch()
    except NotFound:
        return False
    return True


async def _create_one(client: AuthClient, resource: Role | User | Token, *, force: bool) -> None:
    name = resource.metadata.name
    if isinstance(resource, Token):
        expires = resource.metadata.expires
        ttl = None if expires is None else expires.timestamp() - time.time()
        token = await client.add_token(list(resource.spec.roles), ttl=ttl)
        _out(f"token {token['token']} ({','.join(token['roles'])}) has been created")
        return
    kind = resource.kind
    exists = await _exists(
        lambda: client.get_role(name) if kind == "role" else client.get_user(name)
    )
    if exists and not force:
        raise AlreadyExists(f"{kind} {name!r} already exists; use -f to overwrite it")
    if isinstance(resource, Role):
        created = await client.upsert_role(resource)
        _out(f"role {name!r} has been {'created' if created else 'updated'}")
    elif exists:
        await client.update_user(name, logins=resource.logins, roles=resource.spec.roles)
        _out(f"user {name!r} has been updated")
    else:
        invite = await client.add_user(
            name, logins=resource.logins, roles=list(resource.spec.roles) or None
        )
        _out(f"user {name!r} has been created; invite link: {invite['url']}")


def _ref(text: str, *, name_required: bool) -> tuple[str, str | None]:
    kind_text, _, name = text.partition("/")
    kind = KIND_ALIASES.get(kind_text.lower())
    if kind is None:
        known = ", ".join(sorted({k for k in KIND_ALIASES.values()}))
        raise ConfigError(f"unknown resource kind {kind_text!r}; expected one of {known}")
    if name_required and not name:
        raise ConfigError(f"name the resource: {kind}/NAME")
    return kind, name or None


async def _fetch(client: AuthClient, kind: str, name: str | None) -> list[Any]:
    if kind == "role":
        return [await client.get_role(name)] if name else await client.list_roles()
    if kind == "user":
        return [await client.get_user(name)] if name else await client.list_users()
    if kind == "token":
        tokens = await client.list_tokens()
        return [t for t in tokens if name is None or t.metadata.name == name]
    if kind == "node":
        nodes = [from_dict(n["node"], Node) for n in await client.list_nodes()]
        found = [n for n in nodes if name is None or name in (n.metadata.name, n.spec.hostname)]
        if name and not found:
            raise NotFound(f"no node {name!r}")
        return found
    cas = await client.authorities()
    out = [from_dict(cas[t]["resource"], CertAuthority) for t in ("user", "host")]
    if name is not None:
        out = [ca for ca in out if name in (ca.spec.type, ca.metadata.name)]
        if not out:
            raise NotFound(f"no certificate authority {name!r}; try user or host")
    return out


def _text_rows(kind: str, items: list[Any]) -> tuple[list[str], list[list[str]]]:
    if kind == "role":
        return ["Role", "Allowed logins", "Node labels", "Description"], [
            [
                r.metadata.name,
                ",".join(r.spec.allow.logins),
                ",".join(f"{k}={'|'.join(v)}" for k, v in r.spec.allow.node_labels.items()),
                r.metadata.description,
            ]
            for r in items
        ]
    if kind == "user":
        return ["User", "Roles", "Logins", "State"], [
            [u.metadata.name, ",".join(u.spec.roles), ",".join(u.logins), u.spec.status.state]
            for u in items
        ]
    if kind == "token":
        return ["Token", "Type", "Expires"], [
            [t.metadata.name, ",".join(t.spec.roles), str(t.metadata.expires or "never")]
            for t in items
        ]
    if kind == "node":
        return ["Host", "UUID", "Address", "Labels"], [
            [
                n.spec.hostname,
                n.metadata.name,
                n.spec.addr,
                ",".join(f"{k}={v}" for k, v in sorted(n.all_labels().items())),
            ]
            for n in items
        ]
    return ["Type", "Cluster", "Public key"], [
        [c.spec.type, c.spec.cluster_name, " ".join(k.split()[:2])[:60] + "..."]
        for c in items
        for k in c.spec.public_keys
    ]


async def _get(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    kind, name = _ref(args.ref, name_required=False)
    items = await _fetch(client, kind, name)
    if args.format == "json":
        _json([to_dict(i) for i in items])
    elif args.format == "yaml":
        if items:
            sys.stdout.write(to_yaml(items))
    else:
        _table(*_text_rows(kind, items))


async def _rm(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    kind, name = _ref(args.ref, name_required=True)
    assert name is not None
    if kind == "role":
        await client.remove_role(name)
    elif kind == "user":
        await client.remove_user(name)
    elif kind == "token":
        await client.remove_token(name)
    elif kind == "node":
        await client.remove_node(name)
    else:
        raise ConfigError("certificate authorities cannot be removed")
    _out(f"{kind} {name!r} has been deleted")


async def _status(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    status = await client.status()
    if args.format == "json":
        _json({**status, "auth_server": addr})
        return
    c = status["counts"]
    _out(f"Cluster:      {status['cluster_name']}")
    _out(f"Version:      {status['version']}")
    _out(f"Auth server:  {addr}")
    for ca_type in ("user", "host"):
        for fingerprint in status["authorities"][ca_type]:
            _out(f"{ca_type.capitalize()} CA:      {fingerprint}")
    _out(f"CA pin:       {status['ca_pin']}")
    _out(f"Users:        {c['users']}")
    _out(f"Roles:        {c['roles']}")
    _out(f"Nodes:        {c['nodes']} ({c['nodes_online']} online)")
    _out(f"Join tokens:  {c['tokens']}")
    _out(f"Recordings:   {c['recordings']}")


async def _auth_export(client: AuthClient, args: argparse.Namespace, addr: str) -> None:
    types = [args.type] if args.type else ["user", "host"]
    for ca_type in types:
        for line in await client.export_authority(ca_type):
            _out(line)


# --- main ------------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> None:
    _config, data_dir, addr = _settings(args)
    identity = _identity(data_dir)
    async with connect_auth(addr, identity, connect_timeout=CONNECT_TIMEOUT) as client:
        await args.run(client, args, addr)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None or not hasattr(args, "run"):
        parser.print_help()
        return 0
    trio.run(_run, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """tctl's entry point: exit 0, or 1 with one line on stderr naming what is wrong."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
