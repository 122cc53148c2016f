"""tsh: the user's client. Log in through the proxy, list nodes, open shells on them.

``tsh login`` sends the user's password, TOTP code and a fresh Ed25519 public key
to the proxy over HTTPS and keeps the certificate it gets under ``~/.tsh``
(``TSH_HOME`` overrides it; see :mod:`trioport.roles.proxy.profile`). ``tsh ssh``
reaches a node through the proxy's SSH port and runs a second SSH connection end
to end inside it (:mod:`trioport.roles.proxy.client`); ``tsh config`` prints the
OpenSSH configuration that does the same with plain ``ssh``. This module only
parses arguments, talks to the terminal and prints; ``docs/cli-tsh.md`` is its
manual.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import functools
import getpass
import json
import os
import shlex
import shutil
import signal
import stat
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from typing import Any

import trio

from trioport import __version__
from trioport.config import PROXY_WEB_PORT, parse_addr
from trioport.errors import ConfigError, TrioportError
from trioport.roles.proxy import client as proxy_client
from trioport.roles.proxy.profile import NotLoggedIn, Profile, tsh_home
from trioport.roles.proxy.router import NodeInfo, parse_selector
from trioport.ssh import ChannelStream, SSHConnection
from trioport.ssh.agent import AgentForwardingHandler, open_agent
from trioport.sshproto import events as ev
from trioport.sshproto.certs import EXT_ROLES
from trioport.sshproto.keys import PrivateKey, public_key_from_line
from trioport.tls import client_context

from . import _fanout, _invite, _sessions
from ._common import fail, run_main

#: ``tsh ssh`` exits with this when it cannot run the command at all (as OpenSSH's ssh).
SSH_FAILURE = 255
#: The node port when none is given.
NODE_PORT = 3022
_READ_SIZE = 32 * 1024


# --- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """tsh's argument parser."""
    parser = argparse.ArgumentParser(
        prog="tsh", description="trioport's client: log in to a cluster and reach its nodes."
    )
    parser.add_argument("--version", action="version", version=f"tsh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("login", help="log in to a cluster and get a certificate")
    p.add_argument("--proxy", metavar="HOST[:PORT]", help="the proxy's web address (port 3080)")
    p.add_argument("--user", help="your user name (default: $TELEPORT_USER, else your login)")
    p.add_argument("--ttl", type=int, metavar="MINUTES", help="certificate lifetime in minutes")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the proxy's HTTPS certificate (a self-signed proxy, during setup)",
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password and then the TOTP code from standard input, one per line",
    )
    p.set_defaults(run=_login)

    _invite.add_parser(sub)  # tsh invite URL: finish an invite from the terminal
    _sessions.add_parsers(sub)  # tsh sessions / join / play

    p = sub.add_parser("logout", help="delete your key and certificate for the current cluster")
    p.set_defaults(run=_logout)

    p = sub.add_parser("status", help="who you are logged in as, and until when")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=_status)

    p = sub.add_parser("ls", help="list the nodes you can reach")
    p.add_argument("labels", nargs="*", metavar="LABEL=VALUE", help="only nodes with these labels")
    p.add_argument("--format", choices=("text", "json", "names"), default="text")
    p.set_defaults(run=_ls)

    p = sub.add_parser("ssh", help="run a shell or a command on a node")
    p.add_argument("-l", "--login", help="the OS login on the node")
    p.add_argument("-p", "--port", type=int, default=NODE_PORT, help="the node's SSH port")
    tty_group = p.add_mutually_exclusive_group()
    tty_group.add_argument("-t", dest="tty", action="store_true", default=None, help="force a pty")
    tty_group.add_argument("-T", dest="tty", action="store_false", default=None, help="never a pty")
    p.add_argument("-n", dest="no_stdin", action="store_true", help="read nothing from stdin")
    p.add_argument(
        "-A", dest="forward_agent", action="store_true", help="forward the agent (SSH_AUTH_SOCK)"
    )
    p.add_argument(
        "-L",
        dest="forwards",
        action="append",
        default=[],
        metavar="[BIND:]PORT:HOST:HOSTPORT",
        help="forward a local port to HOST:HOSTPORT as seen from the node (repeatable)",
    )
    p.add_argument(
        "-N", dest="no_command", action="store_true", help="run no command, only forward (-L)"
    )
    p.add_argument(
        "destination", metavar="[LOGIN@]NODE", help="a node name, address or LABEL=VALUE"
    )
    p.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND", help="what to run")
    p.set_defaults(run=_ssh)

    p = sub.add_parser("scp", help="copy files to or from a node (over SFTP)")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories too")
    p.add_argument("-P", "--port", type=int, default=NODE_PORT, help="the node's SSH port")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("paths", nargs="+", metavar="PATH", help="SOURCE... DEST ([LOGIN@]NODE:PATH)")
    p.set_defaults(run=_scp)

    p = sub.add_parser("config", help="print an OpenSSH configuration for this cluster")
    p.set_defaults(run=_config)

    proxy = sub.add_parser("proxy", help="pipes for other programs").add_subparsers(
        dest="proxy_kind", metavar="KIND", required=True
    )
    p = proxy.add_parser("ssh", help="connect stdin/stdout to a node's SSH port (ProxyCommand)")
    p.add_argument("target", metavar="[LOGIN@]NODE[:PORT]")
    p.set_defaults(run=_proxy_ssh)
    return parser


# --- small helpers ---------------------------------------------------------------------


def _out(text: str = "") -> None:
    print(text, flush=True)


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60}m{rest % 60}s"


def _profile() -> Profile:
    profile = Profile.load()
    profile.check()
    return profile


def _split_login(destination: str, login: str | None, default: str) -> tuple[str, str]:
    if "@" in destination:
        user, _, node = destination.rpartition("@")
        return login or user, node
    return login or default, destination


def _cert_logins(profile: Profile) -> list[str]:
    """The OS logins the certificate names (its principals)."""
    return list(profile.certificate.principals) if profile.certificate else []


def _default_login(profile: Profile) -> str:
    """The login to use when none is given: the local user if allowed, else the first one."""
    cert = profile.certificate
    assert cert is not None
    local = getpass.getuser()
    if local in cert.principals or not cert.principals:
        return local
    return cert.principals[0]


# --- login, logout, status -------------------------------------------------------------


def _read_secret(prompt: str, from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            fail(f"standard input ended before the {prompt.rstrip(': ').lower()}")
        return line.rstrip("\r\n")
    return getpass.getpass(prompt)


def _login(args: argparse.Namespace) -> int:
    previous: Profile | None = None
    with contextlib.suppress(NotLoggedIn, ConfigError):
        previous = Profile.load()
    proxy_text = args.proxy or (str(previous.web_addr) if previous else None)
    if not proxy_text:
        fail("give the proxy's address: tsh login --proxy=HOST:3080")
    try:
        web = parse_addr(proxy_text.removeprefix("https://").rstrip("/"), PROXY_WEB_PORT)
    except ValueError as exc:
        fail(f"--proxy: {exc}")
    insecure = bool(args.insecure)
    ssl_context = client_context(insecure=insecure)
    answer = proxy_client.ping(web, ssl_context)
    cluster = str(answer["cluster_name"])
    ssh = proxy_client.ssh_address(answer, web.host)
    user = args.user or os.environ.get("TELEPORT_USER") or getpass.getuser()
    password = _read_secret(f"Enter password for user {user}: ", args.password_stdin)
    code = _read_secret("Enter your TOTP code: ", args.password_stdin)
    key = PrivateKey.generate("ssh-ed25519")
    reply = proxy_client.login(
        web,
        ssl_context,
        user=user,
        password=password,
        totp_code=code.strip(),
        public_key=key.public,
        ttl=None if args.ttl is None else args.ttl * 60.0,
    )
    cert = public_key_from_line(str(reply["cert"]))
    profile = Profile(
        proxy_host=web.host,
        web_port=web.port,
        ssh_host=ssh.host,
        ssh_port=ssh.port,
        user=str(reply.get("username") or user),
        cluster=str(reply.get("cluster_name") or cluster),
        insecure=insecure,
        home=tsh_home(),
        key=key,
        certificate=cert,  # type: ignore[arg-type]
        host_cas=[public_key_from_line(line) for line in reply["host_ca"]],
    )
    if previous is not None and (previous.proxy_host, previous.user) != (web.host, profile.user):
        with contextlib.suppress(OSError):
            previous.remove()
    profile.save()
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            trio.run(_add_to_agent, profile)
        except (OSError, TrioportError) as exc:
            print(f"warning: could not add the key to ssh-agent: {exc}", file=sys.stderr)
    _print_status(profile)
    return 0


async def _add_to_agent(profile: Profile) -> None:
    cert = profile.certificate
    assert profile.key is not None and cert is not None
    lifetime = max(1, int(cert.valid_before - time.time()))
    async with open_agent() as agent:
        await agent.add_identity(
            profile.key,
            comment=f"trioport:{profile.user}@{profile.cluster}",
            certificate=cert,
            lifetime=lifetime,
        )


async def _remove_from_agent(profile: Profile) -> None:
    assert profile.certificate is not None
    async with open_agent() as agent:
        await agent.remove_identity(profile.certificate)


def _logout(args: argparse.Namespace) -> int:
    try:
        profile = Profile.load()
    except NotLoggedIn:
        _out("Not logged in.")
        return 0
    if os.environ.get("SSH_AUTH_SOCK") and profile.certificate is not None:
        with contextlib.suppress(OSError, TrioportError):
            trio.run(_remove_from_agent, profile)
    profile.remove()
    _out(f"Logged out {profile.user} from {profile.proxy_host}.")
    return 0


def _status_doc(profile: Profile) -> dict[str, Any]:
    cert = profile.certificate
    assert cert is not None
    raw = cert.extensions.get(EXT_ROLES, b"")
    if len(raw) >= 4:  # the extension's data is itself an SSH string (PROTOCOL.certkeys)
        raw = raw[4 : 4 + int.from_bytes(raw[:4], "big")]
    roles = raw.decode("utf-8", "replace")
    return {
        "proxy": str(profile.web_addr),
        "ssh_proxy": str(profile.ssh_addr),
        "user": profile.user,
        "cluster": profile.cluster,
        "roles": [r for r in roles.split(",") if r],
        "logins": [p for p in cert.principals if not p.startswith("-")],
        "valid_until": cert.valid_before,
        "expired": cert.valid_before <= time.time(),
        "extensions": sorted(k for k in cert.extensions if "@" not in k),
    }


def _print_status(profile: Profile) -> None:
    doc = _status_doc(profile)
    left = doc["valid_until"] - time.time()
    validity = "EXPIRED" if doc["expired"] else f"valid for {_duration(left)}"
    _out(f"> Profile URL:  https://{doc['proxy']}")
    _out(f"  Logged in as: {doc['user']}")
    _out(f"  Cluster:      {doc['cluster']}")
    _out(f"  Roles:        {', '.join(doc['roles']) or '-'}")
    _out(f"  Logins:       {', '.join(doc['logins']) or '-'}")
    _out(f"  Valid until:  {_when(doc['valid_until'])} [{validity}]")
    _out(f"  Extensions:   {', '.join(doc['extensions']) or '-'}")


def _status(args: argparse.Namespace) -> int:
    try:
        profile = Profile.load()
    except NotLoggedIn:
        _out("Not logged in.")
        return 1
    if args.format == "json":
        _out(json.dumps(_status_doc(profile), indent=2))
    else:
        _print_status(profile)
    return 1 if profile.certificate and profile.certificate.valid_before <= time.time() else 0


# --- ls ---------------------------------------------------------------------------------


async def _fetch_nodes(profile: Profile) -> list[NodeInfo]:
    async with _proxy(profile, profile.user) as proxy:
        _cluster, nodes = await proxy_client.list_nodes(proxy)
    return nodes


def _proxy(profile: Profile, login: str) -> Any:
    return proxy_client.connect_proxy(
        profile.ssh_addr,
        login=login,
        signers=proxy_client.signers_for(profile),
        host_cas=profile.host_cas,
        cluster=profile.cluster,
    )


def _filter(nodes: Sequence[NodeInfo], labels: dict[str, str]) -> list[NodeInfo]:
    return [n for n in nodes if all(n.labels.get(k) == v for k, v in labels.items())]


def _ls(args: argparse.Namespace) -> int:
    profile = _profile()
    try:
        wanted = parse_selector(",".join(args.labels)) or {}
    except ValueError as exc:
        fail(str(exc))
    nodes = _filter(trio.run(_fetch_nodes, profile), wanted)
    if args.format == "json":
        _out(json.dumps([n.to_json() for n in nodes], indent=2))
    elif args.format == "names":
        for node in nodes:
            _out(node.hostname)
    else:
        rows = [
            [
                n.hostname,
                n.addr,
                ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())),
                "" if n.online else "offline",
            ]
            for n in nodes
        ]
        headers = ["Node Name", "Address", "Labels", ""]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        _out("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        _out("  ".join("-" * w for w in widths[:3]))
        for row in rows:
            _out("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


# --- the terminal ------------------------------------------------------------------------


def _pollable(fd: int) -> bool:
    """Whether trio can wait on ``fd`` (ttys, pipes, sockets; not files or /dev/null)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _Fd:
    """A standard stream as something trio can read or write without blocking the loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stream: trio.lowlevel.FdStream | None = None
        self.flags: int | None = None
        if _pollable(fd):
            self.flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            self.stream = trio.lowlevel.FdStream(os.dup(fd))

    async def read(self) -> bytes:
        if self.stream is not None:
            return await self.stream.receive_some(_READ_SIZE)
        await trio.lowlevel.checkpoint()
        return os.read(self.fd, _READ_SIZE)

    async def write(self, data: bytes) -> None:
        if self.stream is not None:
            await self.stream.send_all(data)
            return
        await trio.lowlevel.checkpoint()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    async def close(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        if self.flags is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self.flags)


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # not TCSAFLUSH: keep what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _window_size() -> tuple[int, int]:
    for fd in (1, 0, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.columns, size.lines
    return 80, 24


async def _run_session(
    conn: SSHConnection,
    command: str | None,
    pty: bool,
    stdin: bool,
    agent: AgentForwardingHandler | None = None,
    *,
    agent_refusal: str = "warning: the node refused agent forwarding (-A)",
) -> int:
    """Run ``command`` (or a shell) on ``conn`` wired to this terminal; its exit status."""
    chan = await conn.open_session()
    if agent is not None and not await agent.request(chan):
        _warn(agent_refusal)
    if pty:
        cols, rows = _window_size()
        term = os.environ.get("TERM", "xterm")
        if not await chan.request(ev.PtyRequest(term=term, width_chars=cols, height_rows=rows)):
            print("warning: the node refused a pty", file=sys.stderr)
    request: Any = ev.Shell() if command is None else ev.Exec(command=command.encode())
    if not await chan.request(request):
        raise TrioportError("the node refused to run the command")
    out, err = _Fd(1), _Fd(2)
    inp = _Fd(0) if stdin else None
    try:
        with _raw_terminal(0) if pty and inp is not None else contextlib.nullcontext():
            await _pump(chan, inp, out, err, pty)
    finally:
        for fd in (inp, out, err):
            if fd is not None:
                await fd.close()
    if chan.exit_status is not None:
        return chan.exit_status
    if chan.exit_signal is not None:
        print(f"\r\nremote command killed by signal {chan.exit_signal.name}", file=sys.stderr)
    return SSH_FAILURE


async def _pump(chan: ChannelStream, inp: _Fd | None, out: _Fd, err: _Fd, pty: bool) -> None:
    async def upload() -> None:
        try:
            if inp is not None:
                while data := await inp.read():
                    await chan.send_all(data)
            await chan.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def download(source: trio.abc.ReceiveStream, target: _Fd) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(_READ_SIZE):
                await target.write(data)

    async def resize() -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                cols, rows = _window_size()
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await chan.request(
                        ev.WindowChange(width_chars=cols, height_rows=rows), want_reply=False
                    )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        if pty:
            nursery.start_soon(resize)
        async with trio.open_nursery() as outputs:
            outputs.start_soon(download, chan, out)
            outputs.start_soon(download, chan.stderr, err)
        with trio.move_on_after(5):
            await chan.wait_closed()
        nursery.cancel_scope.cancel()


# --- ssh ------------------------------------------------------------------------------------


def _warn(text: str) -> None:
    """One line on stderr, readable even while the terminal is in raw mode."""
    end = "\r\n" if sys.stderr.isatty() else "\n"
    sys.stderr.write(text + end)
    sys.stderr.flush()


def _agent_refusal(profile: Profile) -> str:
    """What to say when the node refuses ``-A``, from what the certificate allows."""
    cert = profile.certificate
    if cert is None or "permit-agent-forwarding" not in cert.extensions:
        return (
            "warning: agent forwarding (-A) is not allowed: your certificate does not permit"
            " it (none of your roles sets forward_agent); continuing without it"
        )
    return (
        "warning: the node refused agent forwarding (-A): your roles do not allow it"
        " there; continuing without it"
    )


def _agent_handler(args: argparse.Namespace) -> AgentForwardingHandler | None:
    if not args.forward_agent:
        return None
    socket_path = os.environ.get("SSH_AUTH_SOCK")
    if not socket_path:
        raise TrioportError("-A: SSH_AUTH_SOCK is not set; there is no agent to forward")
    return AgentForwardingHandler(socket_path)


async def _ssh_async(args: argparse.Namespace, profile: Profile) -> int:
    login, node = _split_login(args.destination, args.login, _default_login(profile))
    # As OpenSSH does: the words are joined with spaces, and the remote shell splits them.
    command = " ".join(args.remote) if args.remote else None
    forwards: list[proxy_client.Forward] = args.forward_specs
    async with _proxy(profile, login) as proxy:
        target, principal = node, None
        selector = parse_selector(node)
        if selector is not None:
            _cluster, nodes = await proxy_client.list_nodes(proxy)
            matched = sorted(_filter(nodes, selector), key=lambda n: (n.hostname, n.host_id))
            if not matched:
                reachable = ", ".join(n.hostname for n in nodes) or "none"
                raise TrioportError(
                    f"no node you can reach has the labels {node} (nodes you can reach:"
                    f" {reachable})"
                )
            if len(matched) > 1:
                names = ", ".join(n.hostname for n in matched)
                if command is None:
                    raise TrioportError(f"{node} matches several nodes ({names}); give a command")
                if forwards:
                    raise TrioportError(f"-L needs one node, and {node} matches {names}")
                return await _fan_out(proxy, matched, login, command, args, profile)
            target = principal = matched[0].host_id
        listeners = [await proxy_client.listen_forward(f) for f in forwards]
        try:
            return await _ssh_one(
                proxy, target, principal, login, command, args, profile, forwards, listeners
            )
        finally:
            for group in listeners:
                for listener in group:
                    await trio.aclose_forcefully(listener)


async def _ssh_one(
    proxy: SSHConnection,
    target: str,
    principal: str | None,
    login: str,
    command: str | None,
    args: argparse.Namespace,
    profile: Profile,
    forwards: Sequence[proxy_client.Forward],
    listeners: Sequence[Sequence[trio.SocketListener]],
) -> int:
    interactive = command is None and not args.no_command
    pty = args.tty if args.tty is not None else (interactive and sys.stdin.isatty())
    agent = _agent_handler(args)
    async with proxy_client.connect_node(
        proxy,
        target,
        args.port,
        login=login,
        signers=proxy_client.signers_for(profile),
        host_cas=profile.host_cas,
        cluster=profile.cluster,
        principal=principal,
        handler=agent,
        logins=_cert_logins(profile),
    ) as conn:
        async with trio.open_nursery() as nursery:
            for forward, group in zip(forwards, listeners, strict=True):
                await nursery.start(
                    functools.partial(
                        proxy_client.serve_local_forward, conn, forward, group, on_error=_warn
                    )
                )
            if args.no_command:
                await conn.wait_closed()  # forward until interrupted, or the node hangs up
                why = f": {conn.error}" if conn.error is not None else ""
                _warn(f"error: the connection to the node ended{why}")
                status = SSH_FAILURE
            else:
                status = await _run_session(
                    conn,
                    command,
                    bool(pty),
                    not args.no_stdin,
                    agent,
                    agent_refusal=_agent_refusal(profile),
                )
            nursery.cancel_scope.cancel()
        return status


async def _fan_out(
    proxy: SSHConnection,
    nodes: Sequence[NodeInfo],
    login: str,
    command: str,
    args: argparse.Namespace,
    profile: Profile,
) -> int:
    """Run ``command`` on every node at once (:func:`_fanout.run_everywhere`)."""
    signers = proxy_client.signers_for(profile)

    def connect(node: NodeInfo, handler: Any) -> Any:
        return proxy_client.connect_node(
            proxy,
            node.host_id,
            args.port,
            login=login,
            signers=signers,
            host_cas=profile.host_cas,
            cluster=profile.cluster,
            principal=node.host_id,
            handler=handler,
            logins=_cert_logins(profile),
        )

    _agent_handler(args)  # no agent to forward is an error before anything runs
    return await _fanout.run_everywhere(
        nodes,
        command,
        connect,
        warn=_warn,
        agent=lambda: _agent_handler(args),
        agent_refusal=_agent_refusal(profile),
    )


def _ssh(args: argparse.Namespace) -> int:
    if args.remote and args.remote[0] == "--":
        args.remote = args.remote[1:]
    try:
        args.forward_specs = [proxy_client.parse_forward(text) for text in args.forwards]
    except ValueError as exc:
        fail(str(exc), SSH_FAILURE)
    if args.no_command and args.remote:
        fail("-N runs no command: give either -N or a command", SSH_FAILURE)
    if args.no_command and not args.forwards:
        fail("-N without -L has nothing to do", SSH_FAILURE)
    try:
        profile = _profile()
        return trio.run(_ssh_async, args, profile)
    except TrioportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return SSH_FAILURE


# --- scp -------------------------------------------------------------------------------------


class _ProgressBar:
    """``tsh scp``'s per-file progress line on a terminal, redrawn in place (``\\r``)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def __call__(self, path: str, done: int, total: int, finished: bool) -> None:
        now = time.monotonic()
        start = self.started.setdefault(path, now)
        width = shutil.get_terminal_size((80, 24)).columns
        name = os.path.basename(path.rstrip("/")) or path
        from trioport.roles.proxy import transfer

        line = transfer.format_progress(name, done, total, now - start, width - 1)
        sys.stdout.write("\r" + line + ("\n" if finished else ""))
        sys.stdout.flush()
        if finished:
            self.started.pop(path, None)


async def _scp_async(args: argparse.Namespace, profile: Profile) -> int:
    # SFTP's codecs are imported only for scp: every other command starts sooner.
    from trioport.roles.proxy import transfer
    from trioport.ssh.sftp_client import open_sftp

    *sources, dest = [transfer.parse_location(p) for p in args.paths]
    remote = [loc for loc in (*sources, dest) if loc.remote]
    if dest.remote and any(loc.remote for loc in sources):
        raise TrioportError("copying from one node to another is not supported")
    if not dest.remote and not all(loc.remote for loc in sources):
        raise TrioportError("give a remote source or destination: [LOGIN@]NODE:PATH")
    if len({(loc.host, loc.login) for loc in remote}) > 1:
        raise TrioportError("all remote paths must be on one node, as one login")
    where = remote[0]
    assert where.host is not None
    login = where.login or _default_login(profile)
    progress = _ProgressBar() if sys.stdout.isatty() and not args.quiet else None

    async with (
        _proxy(profile, login) as proxy,
        proxy_client.connect_node(
            proxy,
            where.host,
            args.port,
            login=login,
            signers=proxy_client.signers_for(profile),
            host_cas=profile.host_cas,
            cluster=profile.cluster,
            logins=_cert_logins(profile),
        ) as conn,
        open_sftp(conn) as sftp,
    ):
        if dest.remote:
            await transfer.upload(
                sftp,
                [loc.path for loc in sources],
                dest.path,
                recursive=args.recursive,
                progress=progress,
            )
        else:
            await transfer.download(
                sftp,
                [loc.path for loc in sources],
                dest.path,
                recursive=args.recursive,
                progress=progress,
            )
    return 0


def _scp(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        fail("give at least one source and a destination")
    profile = _profile()
    try:
        return trio.run(_scp_async, args, profile)
    except (TrioportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# --- proxy ssh (ProxyCommand) ----------------------------------------------------------------


async def _proxy_ssh_async(profile: Profile, login: str, node: str, port: int) -> int:
    async with _proxy(profile, login) as proxy:
        chan = await proxy.open_session()
        host = f"[{node}]" if ":" in node else node
        if not await chan.request(ev.Subsystem(name=f"proxy:{host}:{port}")):
            raise TrioportError("the proxy refused the proxy subsystem")
        out, err, inp = _Fd(1), _Fd(2), _Fd(0)
        try:
            await _pump(chan, inp, out, err, pty=False)
        finally:
            for fd in (inp, out, err):
                await fd.close()
        return chan.exit_status or 0


def _proxy_ssh(args: argparse.Namespace) -> int:
    profile = _profile()
    login, rest = _split_login(args.target, None, profile.user)
    try:
        parsed = parse_addr(rest, NODE_PORT, default_host="")
    except ValueError as exc:
        fail(f"{args.target}: {exc}")
    try:
        return trio.run(_proxy_ssh_async, profile, login, parsed.host, parsed.port)
    except TrioportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return SSH_FAILURE


# --- config ----------------------------------------------------------------------------------


def openssh_config(profile: Profile) -> str:
    """The ``~/.ssh/config`` block after which ``ssh LOGIN@NODE.CLUSTER`` goes through the proxy."""
    proxy = profile.ssh_addr
    files = {
        "UserKnownHostsFile": profile.known_hosts_path,
        "IdentityFile": profile.key_path,
        "CertificateFile": profile.cert_path,
    }
    options = " ".join(f"-o {k}={shlex.quote(v)}" for k, v in files.items())
    host = proxy.host if ":" not in proxy.host else f"[{proxy.host}]"
    lines = [
        f"# trioport cluster {profile.cluster} through the proxy {profile.proxy_host}"
        " (written by tsh config)",
        f"Host *.{profile.cluster} {proxy.host}",
        *(f'    {k} "{v}"' for k, v in files.items()),
        "    IdentitiesOnly yes",
        "",
        f"Host *.{profile.cluster} !{proxy.host}",
        f"    ProxyCommand ssh -p {proxy.port} {options} -o IdentitiesOnly=yes"
        f" %r@{host} -s proxy:%h:%p",
        "",
    ]
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> int:
    profile = Profile.load()
    _out(openssh_config(profile))
    return 0


# --- main ------------------------------------------------------------------------------------


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


__all__ = ["build_parser", "main", "openssh_config"]


if __name__ == "__main__":
    sys.exit(main())
