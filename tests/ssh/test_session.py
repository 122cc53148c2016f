"""serve_session runs commands as the session's login, with that login's groups."""

from __future__ import annotations

import hashlib
import os

import trio
import trio.testing

from trioport.ssh import SSHConnection, SSHHandler, authenticate, open_ssh
from trioport.ssh.session import SessionPolicy, serve_session
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey

HOST_KEY = PrivateKey.generate("ssh-ed25519")
USER_KEY = PrivateKey.generate("ssh-ed25519")


class Sessions(SSHHandler):
    def __init__(self, policy: SessionPolicy) -> None:
        self.policy = policy

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        return request.public_key == USER_KEY.public.blob

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):
        return lambda chan: serve_session(chan, self.policy)


async def run_as(policy: SessionPolicy, command: str):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server_cfg = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(HOST_KEY)])
    with trio.fail_after(30):
        async with (
            open_ssh(server_stream, server_cfg, Sessions(policy)),
            open_ssh(client_stream, ConnectionConfig(role=Role.CLIENT)) as client,
        ):
            await authenticate(client, "alice", signers=[USER_KEY])
            return await client.run(command)


async def test_a_session_gets_the_logins_groups_not_roots() -> None:
    assert os.geteuid() == 0, "switching users needs root (CI runs as root)"
    result = await run_as(SessionPolicy(user="nobody"), "id -u; id -g; id -G")
    uid, gid, groups = result.stdout.decode().split("\n")[:3]
    assert (uid, gid) == ("65534", "65534")
    assert "0" not in groups.split()


async def test_exit_status_stdout_and_stderr_come_back() -> None:
    result = await run_as(SessionPolicy(), "echo out; echo err >&2; exit 9")
    assert (result.exit_status, result.stdout, result.stderr) == (9, b"out\n", b"err\n")


async def test_a_killed_command_reports_its_signal() -> None:
    result = await run_as(SessionPolicy(), "kill -TERM $$")
    assert result.exit_status is None
    assert result.exit_signal is not None and result.exit_signal.name == "TERM"


async def test_megabytes_of_stdin_reach_a_slow_command_intact() -> None:
    data = os.urandom(6 * 1024 * 1024 + 123)
    result = await run_as_with_input(data, "sleep 0.3; sha256sum")
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_a_command_that_stops_reading_does_not_wedge_the_session() -> None:
    result = await run_as_with_input(
        os.urandom(4 * 1024 * 1024), "head -c 10 >/dev/null; echo done"
    )
    assert (result.exit_status, result.stdout) == (0, b"done\n")


async def run_as_with_input(data: bytes, command: str):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server_cfg = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(HOST_KEY)])
    with trio.fail_after(60):
        async with (
            open_ssh(server_stream, server_cfg, Sessions(SessionPolicy())),
            open_ssh(client_stream, ConnectionConfig(role=Role.CLIENT)) as client,
        ):
            await authenticate(client, "alice", signers=[USER_KEY])
            return await client.run(command, input=data)
