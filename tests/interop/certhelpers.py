"""Helpers for the agent and certificate interop tests (conftest.py has the fixtures).

Everything runs on loopback; every process started here is stopped by the context
manager that started it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace

import trio
from cryptography.hazmat.primitives import serialization

from trioport.ssh import SSHConnection, SSHHandler, serve
from trioport.ssh.agent import session_agent_forwarding
from trioport.ssh.session import serve_session
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.certs import (
    DEFAULT_USER_EXTENSIONS,
    Certificate,
    CertType,
    sign_certificate,
)
from trioport.sshproto.keyfiles import dump_private_key
from trioport.sshproto.keys import PrivateKey

from .conftest import SSH, ShellServerHandler

SSH_AGENT = shutil.which("ssh-agent") or "/usr/bin/ssh-agent"
SSH_ADD = shutil.which("ssh-add") or "/usr/bin/ssh-add"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


async def run(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes = b"",
    check: bool = True,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command from inside trio (our servers share the loop), capturing output."""
    full_env = {**os.environ, **(env or {})}
    with trio.fail_after(60):
        return await trio.run_process(
            cmd,
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=check,
            env=full_env,
            cwd=cwd,
        )


def ssh_options(port: int, **extra: str) -> list[str]:
    """``ssh`` arguments for 127.0.0.1:port with no config files and no prompts."""
    opts = {
        "UserKnownHostsFile": "/dev/null",
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "no",
        "BatchMode": "yes",
        "LogLevel": "ERROR",
        "ConnectTimeout": "20",
    }
    opts.update(extra)
    args = [SSH, "-F", "/dev/null", "-p", str(port)]
    for k, v in opts.items():
        args += ["-o", f"{k}={v}"]
    return args


def write_key_pair(key: PrivateKey, path: pathlib.Path, comment: str = "test") -> pathlib.Path:
    """An OpenSSH private key file (0600) and its ``.pub`` beside it."""
    path.write_bytes(dump_private_key(key, comment=comment))
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_text(key.public.openssh_line(comment) + "\n")
    return path


def write_certificate(cert: Certificate, key_path: pathlib.Path) -> pathlib.Path:
    """Write ``cert`` as ``<key>-cert.pub``, where ssh and ssh-add look for it."""
    path = key_path.with_name(key_path.name + "-cert.pub")
    path.write_text(cert.openssh_line("cert") + "\n")
    return path


def read_private_key(path: pathlib.Path) -> PrivateKey:
    return PrivateKey.from_cryptography(serialization.load_ssh_private_key(path.read_bytes(), None))


def make_cert(
    ca: PrivateKey,
    key: PrivateKey,
    *,
    cert_type: CertType = CertType.USER,
    principals: tuple[str, ...] | list[str] = ("root",),
    valid_after: int | None = None,
    valid_before: int | None = None,
    critical_options: dict | None = None,
    extensions: dict | None = None,
    key_id: str = "interop",
) -> Certificate:
    """A certificate valid from a minute ago for ten minutes unless told otherwise."""
    now = int(time.time())
    if extensions is None and cert_type is CertType.USER:
        extensions = DEFAULT_USER_EXTENSIONS
    return sign_certificate(
        ca,
        key.public,
        cert_type=cert_type,
        key_id=key_id,
        principals=principals,
        valid_after=now - 60 if valid_after is None else valid_after,
        valid_before=now + 600 if valid_before is None else valid_before,
        nonce=os.urandom(32),
        critical_options=critical_options,
        extensions=extensions,
    )


@contextmanager
def openssh_agent(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """OpenSSH's ssh-agent in the foreground on a socket of its own; yields the path."""
    directory = tmp_path / "openssh-agent"
    directory.mkdir(mode=0o700)
    path = directory / "agent.sock"
    process = subprocess.Popen(
        [SSH_AGENT, "-D", "-a", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.01)
        yield path
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def askpass(tmp_path: pathlib.Path) -> dict[str, str]:
    """Environment that makes ssh-add read its passphrase from $TEST_PASSPHRASE."""
    script = tmp_path / "askpass.sh"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$TEST_PASSPHRASE"\n')
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


@asynccontextmanager
async def serving(
    handler: SSHHandler, host_keys: list[HostKey], **config: object
) -> AsyncIterator[int]:
    """Our SSH server with ``handler`` on 127.0.0.1; yields the port."""
    cfg = ConnectionConfig(role=Role.SERVER, host_keys=host_keys, **config)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            lambda task_status: serve(
                0, cfg, lambda: handler, host="127.0.0.1", task_status=task_status
            )
        )
        yield addresses[0][1]
        nursery.cancel_scope.cancel()


class ForwardingShellHandler(ShellServerHandler):
    """The interop shell server, plus agent forwarding on every session."""

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):
        if request.kind == "session":
            policy = replace(self.policy, agent_forwarding=session_agent_forwarding(conn))
            return lambda chan: serve_session(chan, policy)
        return await super().channel_open(conn, request)
