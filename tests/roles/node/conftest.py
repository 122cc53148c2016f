"""A real cluster for the node tests: the auth service and a node, in the test's trio loop.

- ``os_users`` (session): test OS accounts made with ``useradd`` (we run as root),
  removed with ``userdel -r`` at the end.
- ``cluster``: the auth service (:func:`trioport.roles.auth.service.serve`) on a
  loopback port with its own data directory, the administrator's API client, and
  helpers to start nodes (:func:`trioport.roles.node.service.serve`), make users
  and log them in through the auth API (invite, TOTP enrolment, login), and run
  Debian's OpenSSH ``ssh`` against a node with the user's certificate and a
  ``known_hosts`` that trusts the cluster's host CA.

Every port is on 127.0.0.1; everything started is stopped by the fixture.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyotp
import pytest
import trio

from trioport.authclient import AuthClient, ClientIdentity, connect_auth
from trioport.config import (
    Address,
    AuthService,
    CommandLabelConfig,
    Config,
    Global,
    ProxyService,
    SSHService,
)
from trioport.roles.auth import service as auth_service
from trioport.roles.node import service as node_service
from trioport.sshproto.certs import Certificate
from trioport.sshproto.keys import PrivateKey

SSH = shutil.which("ssh") or "/usr/bin/ssh"
CLUSTER = "node-test.cluster"
PASSWORD = "correct horse battery"
#: Test OS accounts, named after this test run's pid so that two runs on one
#: machine never share (or delete) each other's: one with a home and bash, one plain.
_RUN = os.getpid()
ALICE_LOGIN = f"tpna{_RUN}"
BOB_LOGIN = f"tpnb{_RUN}"
#: A login no OS account has.
GHOST_LOGIN = f"tpng{_RUN}"
_TEST_ACCOUNT = re.compile(r"tpn[abg]([0-9]+)")


@dataclass
class OSUsers:
    alice: pwd.struct_passwd
    bob: pwd.struct_passwd


def _userdel(name: str) -> None:
    subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


def _remove_leftovers() -> None:
    """Remove test accounts of earlier runs whose process is gone."""
    for entry in pwd.getpwall():
        match = _TEST_ACCOUNT.fullmatch(entry.pw_name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _userdel(entry.pw_name)


@pytest.fixture(scope="session")
def os_users() -> Iterator[OSUsers]:
    _remove_leftovers()
    for name, shell in ((ALICE_LOGIN, "/bin/bash"), (BOB_LOGIN, "/bin/sh")):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", shell, name], check=True)
    try:
        yield OSUsers(pwd.getpwnam(ALICE_LOGIN), pwd.getpwnam(BOB_LOGIN))
    finally:
        for name in (ALICE_LOGIN, BOB_LOGIN):
            _userdel(name)


@dataclass
class UserFiles:
    """A logged-in user's key, certificate and known_hosts, as ssh uses them."""

    name: str
    key: PrivateKey
    certificate: Certificate
    key_path: pathlib.Path
    cert_path: pathlib.Path
    known_hosts: pathlib.Path


@dataclass
class NodeHandle:
    name: str
    config: Config
    port: int
    scope: trio.CancelScope
    stop: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)

    @property
    def data_dir(self) -> pathlib.Path:
        return pathlib.Path(self.config.teleport.data_dir)


class Cluster:
    """The auth service and nodes of one test."""

    def __init__(self, nursery: trio.Nursery, tmp: pathlib.Path) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.auth_port = 0
        self.auth_scope: trio.CancelScope | None = None
        self.auth_done: trio.Event | None = None
        self.admin_identity: ClientIdentity | None = None
        self.nodes: list[NodeHandle] = []

    # --- the auth service -----------------------------------------------------------

    def auth_config(self) -> Config:
        return Config(
            teleport=Global(nodename="auth", data_dir=str(self.tmp / "auth")),  # type: ignore[arg-type]
            auth_service=AuthService(
                listen_addr=Address("127.0.0.1", self.auth_port),
                cluster_name=CLUSTER,  # type: ignore[arg-type]
            ),
            ssh_service=SSHService(enabled=False),
            proxy_service=ProxyService(enabled=False),
        )

    async def start_auth(self) -> None:
        scope = trio.CancelScope()
        done = trio.Event()

        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await auth_service.serve(
                        self.auth_config(), task_status=task_status, bcrypt_cost=4
                    )
            finally:
                done.set()

        addresses = await self.nursery.start(run)
        self.auth_port = addresses[0][1]
        self.auth_scope, self.auth_done = scope, done
        self.admin_identity = ClientIdentity.load(self.tmp / "auth" / "admin")

    async def stop_auth(self) -> None:
        assert self.auth_scope is not None and self.auth_done is not None
        self.auth_scope.cancel()
        await self.auth_done.wait()

    async def admin_call(self, fn: Any) -> Any:
        """Call the auth API as the administrator on a fresh connection."""
        assert self.admin_identity is not None
        async with connect_auth(("127.0.0.1", self.auth_port), self.admin_identity) as client:
            return await fn(client)

    # --- nodes -----------------------------------------------------------------------

    async def start_node(
        self,
        name: str = "node1",
        *,
        labels: Mapping[str, str] | None = None,
        commands: Sequence[CommandLabelConfig] = (),
        token: str | None = None,
        data_dir: pathlib.Path | None = None,
        graceful: bool = False,
    ) -> NodeHandle:
        if token is None and data_dir is None:
            token = (await self.admin_call(lambda c: c.add_token(["node"])))["token"]
        config = Config(
            teleport=Global(
                nodename=name,  # type: ignore[arg-type]
                data_dir=str(data_dir or self.tmp / name),
                auth_token=token,
                auth_servers=[Address("127.0.0.1", self.auth_port)],
            ),
            auth_service=AuthService(enabled=False),
            proxy_service=ProxyService(enabled=False),
            ssh_service=SSHService(
                listen_addr=Address("127.0.0.1", 0),
                labels=dict(labels if labels is not None else {"env": "test"}),  # type: ignore[arg-type]
                commands=list(commands),
            ),
        )
        scope = trio.CancelScope()
        handle = NodeHandle(name=name, config=config, port=0, scope=scope)

        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await node_service.serve(
                        config,
                        task_status=task_status,
                        stop=handle.stop if graceful else None,
                        shutdown_grace=2.0,
                        heartbeat_interval=0.5,
                        access_cache_seconds=0.5,
                        recording_flush_seconds=0.2,
                        reconnect_max_delay=0.5,
                    )
            finally:
                handle.finished.set()

        addresses = await self.nursery.start(run)
        handle.port = addresses[0][1]
        self.nodes.append(handle)
        return handle

    async def online_nodes(self) -> dict[str, dict[str, Any]]:
        """The nodes the auth service lists as online, by name."""
        nodes = await self.admin_call(lambda c: c.list_nodes())
        return {n["hostname"]: n for n in nodes if n["online"]}

    async def wait_online(self, node: NodeHandle) -> dict[str, Any]:
        """Wait for the node's heartbeat to reach the auth service; its listing."""

        async def listed() -> dict[str, Any] | None:
            return (await self.online_nodes()).get(node.name)

        return await wait_for(listed)

    async def stop_node(self, node: NodeHandle) -> None:
        node.scope.cancel()
        await node.finished.wait()

    # --- users -----------------------------------------------------------------------

    async def add_user(
        self, name: str, logins: Sequence[str], roles: Sequence[str] = ("access",)
    ) -> None:
        """Invite ``name`` and complete the invite (password + TOTP) through the API."""

        async def go(c: AuthClient) -> None:
            invite = await c.add_user(name, logins=list(logins), roles=list(roles))
            enrolment = await c.start_enrolment(invite["token"])
            self.secrets[name] = enrolment["secret"]
            code = pyotp.TOTP(enrolment["secret"]).at(time.time() - 30)
            await c.complete_invite(invite["token"], PASSWORD, code)

        await self.admin_call(go)

    secrets: dict[str, str] = {}

    async def login(self, name: str, *, ttl: float = 3600) -> UserFiles:
        """Log ``name`` in (password + a fresh TOTP code) and write her files for ssh."""
        key = PrivateKey.generate()
        code = pyotp.TOTP(self.secrets[name]).at(time.time())
        result = await self.admin_call(lambda c: c.login(name, PASSWORD, code, key.public, ttl=ttl))
        host_lines = await self.admin_call(lambda c: c.export_authority("host"))
        return self.write_user_files(name, key, result.certificate, host_lines)

    def write_user_files(
        self, name: str, key: PrivateKey, cert: Certificate, host_lines: Sequence[str]
    ) -> UserFiles:
        folder = self.tmp / "users" / f"{name}-{cert.serial}"
        folder.mkdir(parents=True, exist_ok=True)
        key_path = folder / "id"
        key_path.write_bytes(key.to_openssh())
        key_path.chmod(0o600)
        cert_path = folder / "id-cert.pub"
        cert_path.write_text(cert.openssh_line() + "\n")
        known_hosts = folder / "known_hosts"
        known_hosts.write_text("".join(line + "\n" for line in host_lines))
        return UserFiles(name, key, cert, key_path, cert_path, known_hosts)


def ssh_options(
    user: UserFiles,
    *,
    options: Mapping[str, str] | None = None,
    certificate: bool = True,
) -> list[str]:
    """``-o`` options for ssh, sftp and scp: no config file, the user's key and
    certificate, the cluster's host CA."""
    key_path = user.key_path
    if not certificate:
        # ssh also loads KEY-cert.pub by itself: offer a copy with no certificate beside it.
        key_path = user.key_path.with_name("plain-key")
        if not key_path.exists():
            key_path.write_bytes(user.key_path.read_bytes())
            key_path.chmod(0o600)
    opts = {
        "IdentityFile": str(key_path),
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "UserKnownHostsFile": str(user.known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "BatchMode": "yes",
        "LogLevel": "ERROR",
        "ConnectTimeout": "20",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
    }
    if certificate:
        opts["CertificateFile"] = str(user.cert_path)
    opts.update(options or {})
    argv = ["-F", "/dev/null"]
    for key, value in opts.items():
        argv += ["-o", f"{key}={value}"]
    return argv


def ssh_argv(
    user: UserFiles,
    node: NodeHandle,
    login: str,
    *args: str,
    options: Mapping[str, str] | None = None,
    certificate: bool = True,
) -> list[str]:
    """``ssh`` to ``login`` on ``node`` with :func:`ssh_options`, then ``args``."""
    opts = ssh_options(user, options=options, certificate=certificate)
    return [SSH, "-p", str(node.port), *opts, f"{login}@127.0.0.1", *args]


async def run_ssh(
    argv: list[str], *, stdin: bytes = b"", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            argv,
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **(env or {})},
        )


async def wait_for(predicate: Any, *, seconds: float = 20.0, step: float = 0.1) -> Any:
    """Poll an async predicate until it returns something truthy."""
    with trio.fail_after(seconds):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(step)


def label_command(name: str, argv: Sequence[str], seconds: float = 1.0) -> CommandLabelConfig:
    return CommandLabelConfig(
        name=name,  # type: ignore[arg-type]
        command=list(argv),
        period=dt.timedelta(seconds=seconds),
    )


@pytest.fixture
async def cluster(
    nursery: trio.Nursery, tmp_path: pathlib.Path, os_users: OSUsers
) -> AsyncIterator[Cluster]:
    c = Cluster(nursery, tmp_path)
    c.secrets = {}
    await c.start_auth()
    yield c
    for node in c.nodes:
        node.scope.cancel()
    if c.auth_scope is not None:
        c.auth_scope.cancel()
