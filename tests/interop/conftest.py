"""Fixtures that run real OpenSSH beside trioport on loopback.

- ``sshd``: a factory that starts Debian's sshd on a free port with its own host
  keys, config and authorized_keys, and stops it after the test.
- ``trioport_server``: our SSH server in the test's own trio loop, serving shells
  and commands with :func:`trioport.ssh.session.serve_session`.
- ``user_key``: an Ed25519 key pair on disk, usable by ssh (``-i``) and by us.

Every port is on 127.0.0.1; every process is stopped by the fixture that started it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from trioport.errors import ChannelOpenError, ChannelOpenFailureReason
from trioport.ssh import SSHConnection, SSHHandler, serve
from trioport.ssh.server import ServerLimits
from trioport.ssh.session import SessionPolicy, serve_session
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_private_key(key: PrivateKey, path: pathlib.Path) -> pathlib.Path:
    data = key.to_cryptography().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.write_bytes(data)
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_text(key.public.openssh_line("test") + "\n")
    return path


@dataclass
class UserKey:
    key: PrivateKey
    path: pathlib.Path


@pytest.fixture(scope="session")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> UserKey:
    key = PrivateKey.generate("ssh-ed25519")
    path = write_private_key(key, tmp_path_factory.mktemp("userkey") / "id_ed25519")
    return UserKey(key, path)


@dataclass
class Sshd:
    port: int
    dir: pathlib.Path
    host_keys: dict[str, PrivateKey]
    process: subprocess.Popen[bytes]
    log: pathlib.Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def sshd_host_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("sshd-hostkeys")
    keys = {
        "ssh-ed25519": PrivateKey.generate("ssh-ed25519"),
        "ssh-rsa": PrivateKey.generate("ssh-rsa", bits=3072),
        "ecdsa-sha2-nistp256": PrivateKey.generate("ecdsa-sha2-nistp256"),
    }
    return {
        name: write_private_key(key, d / f"host_{i}") for i, (name, key) in enumerate(keys.items())
    }


@pytest.fixture
def sshd(
    tmp_path: pathlib.Path, user_key: UserKey, sshd_host_keys: dict[str, pathlib.Path]
) -> Iterator[Callable[..., Sshd]]:
    started: list[Sshd] = []
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def start(options: dict[str, str] | None = None, authorized_keys: str | None = None) -> Sshd:
        d = tmp_path / f"sshd{len(started)}"
        d.mkdir()
        port = free_port()
        auth = d / "authorized_keys"
        auth.write_text(
            authorized_keys
            if authorized_keys is not None
            else user_key.key.public.openssh_line("user") + "\n"
        )
        conf = {
            "ListenAddress": f"127.0.0.1:{port}",
            "AuthorizedKeysFile": str(auth),
            "PidFile": "none",
            "UsePAM": "no",
            "StrictModes": "no",
            "PermitRootLogin": "prohibit-password",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "LogLevel": "ERROR",
            "AllowTcpForwarding": "yes",
            "AcceptEnv": "LANG LC_* TRIOPORT_*",
            "Subsystem": "sftp internal-sftp",
        }
        conf.update(options or {})
        lines = [f"HostKey {p}" for p in sshd_host_keys.values()]
        lines += [f"{k} {v}" for k, v in conf.items()]
        (d / "sshd_config").write_text("\n".join(lines) + "\n")
        log = d / "sshd.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start:\n" + log.read_text()) from None
                time.sleep(0.02)
        host_keys = {
            name: PrivateKey.from_cryptography(
                serialization.load_ssh_private_key(p.read_bytes(), None)
            )
            for name, p in sshd_host_keys.items()
        }
        server = Sshd(port, d, host_keys, process, log)
        started.append(server)
        return server

    yield start
    for server in started:
        server.process.terminate()
        try:
            server.process.wait(5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


class ShellServerHandler(SSHHandler):
    """Our test server: publickey auth against a set of keys, sessions, port forwarding."""

    def __init__(self, authorized: set[bytes], policy: SessionPolicy | None = None) -> None:
        self.authorized = authorized
        self.policy = policy or SessionPolicy()
        self.forwards: dict[tuple[str, int], trio.CancelScope] = {}

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        return request.method == "publickey" and request.public_key in self.authorized

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):
        if request.kind == "session":
            return lambda chan: serve_session(chan, self.policy)
        if request.kind == "direct-tcpip":
            try:
                target = await trio.open_tcp_stream(request.host, request.port)
            except OSError as exc:
                raise ChannelOpenError(ChannelOpenFailureReason.CONNECT_FAILED, str(exc)) from None
            return lambda chan: splice(chan, target)
        return await super().channel_open(conn, request)

    async def global_request(self, conn: SSHConnection, request: ev.GlobalRequest):
        req = request.request
        if isinstance(req, ev.TcpipForward):
            listeners = await trio.open_tcp_listeners(req.port, host=req.address or "127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            scope = trio.CancelScope()
            self.forwards[(req.address, port)] = scope

            async def accept_loop() -> None:
                with scope:

                    async def one(stream: trio.SocketStream) -> None:
                        peer = stream.socket.getpeername()
                        try:
                            chan = await conn.open_channel(
                                "forwarded-tcpip",
                                host=req.address,
                                port=port,
                                originator_address=peer[0],
                                originator_port=peer[1],
                            )
                        except ChannelOpenError:
                            await stream.aclose()
                            return
                        await splice(chan, stream)

                    await trio.serve_listeners(one, listeners)

            conn.start_soon(accept_loop)
            return ev.GlobalRequestReply(ok=True, port=port if req.port == 0 else None)
        if isinstance(req, ev.CancelTcpipForward):
            scope = self.forwards.pop((req.address, req.port), None)
            if scope is not None:
                scope.cancel()
            return ev.GlobalRequestReply(ok=scope is not None)
        return ev.GlobalRequestReply(ok=False)


async def splice(a: trio.abc.HalfCloseableStream, b: trio.abc.HalfCloseableStream) -> None:
    """Copy both ways until both directions ended, passing EOF along."""

    async def copy(src: trio.abc.HalfCloseableStream, dst: trio.abc.HalfCloseableStream) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, a, b)
            nursery.start_soon(copy, b, a)
    finally:
        # Under an outer cancellation the first close re-raises Cancelled, so the
        # second must run in a finally of its own.
        try:
            await trio.aclose_forcefully(a)
        finally:
            await trio.aclose_forcefully(b)


@dataclass
class TrioportServer:
    port: int
    host_key: PrivateKey
    handler: ShellServerHandler
    nursery: trio.Nursery


@pytest.fixture(scope="session")
def server_host_key() -> PrivateKey:
    return PrivateKey.generate("ssh-ed25519")


@pytest.fixture
async def trioport_server(
    nursery: trio.Nursery, user_key: UserKey, server_host_key: PrivateKey
) -> Callable[..., TrioportServer]:
    async def start(
        config: ConnectionConfig | None = None,
        limits: ServerLimits | None = None,
        host_keys=None,
    ) -> TrioportServer:
        keys = host_keys or [server_host_key]
        cfg = config or ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(k) for k in keys])
        handler = ShellServerHandler({user_key.key.public.blob})
        addresses = await nursery.start(
            lambda task_status: serve(
                0,
                cfg,
                lambda: handler,
                limits or ServerLimits(),
                host="127.0.0.1",
                task_status=task_status,
            )
        )
        return TrioportServer(addresses[0][1], keys[0], handler, nursery)

    return start


def ssh_command(
    port: int,
    key: pathlib.Path,
    *args: str,
    options: dict[str, str] | None = None,
    user: str = "root",
) -> list[str]:
    """An ``ssh`` command line for our server: no config files, no known_hosts prompts."""
    opts = {
        "StrictHostKeyChecking": "no",
        "UserKnownHostsFile": "/dev/null",
        "GlobalKnownHostsFile": "/dev/null",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "LogLevel": "ERROR",
        "ConnectTimeout": "20",
    }
    opts.update(options or {})
    cmd = [SSH, "-F", "/dev/null", "-p", str(port), "-i", str(key)]
    for k, v in opts.items():
        cmd += ["-o", f"{k}={v}"]
    return [*cmd, f"{user}@127.0.0.1", *args]
