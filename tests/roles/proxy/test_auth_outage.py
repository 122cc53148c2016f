"""The proxy keeps serving while no auth server answers, on the answers it has.

A real cluster in this trio loop (auth on SQLite, a proxy, a node with the node
service); the auth service runs in its own cancel scope so the test can take it
away. alice logs in and reaches the node once with OpenSSH's ``ssh -J``; the auth
service is stopped; a *new* ``ssh -J`` and a new ``ProxyCommand ... -s proxy:%h:%p``
connection still reach the node (the proxy uses its last node list, access answer,
role options and CAs; the node its cached login decision), and the proxy's health
says auth is unreachable and what it does meanwhile. Once the answers are older
than the proxy's ``stale_seconds`` (its cache clock is moved on rather than
waited for), a new connection is refused with a message naming the outage. A
user the proxy never answered for is refused at once, and an answer "no" given
before the outage stays "no" during it.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from tests.roles.proxy.cluster import CLUSTER, LOGIN, Cluster
from trioport.authclient import ClientIdentity, connect_auth
from trioport.config import Address, loads_config
from trioport.diag import HEALTH, Health
from trioport.roles.auth.service import serve as serve_auth
from trioport.roles.proxy.service import serve as serve_proxy
from trioport.sshproto.keys import PrivateKey

SSH = "/usr/bin/ssh"
#: The proxy's stale_seconds in this test (its cache clock jumps past it).
STALE = 120.0

DENY_SECRET = {
    "kind": "role",
    "version": "v1",
    "metadata": {"name": "no-secret"},
    "spec": {
        "allow": {"logins": [LOGIN], "node_labels": {"*": ["*"]}},
        "deny": {"node_labels": {"env": ["secret"]}},
    },
}


@dataclass
class Outage:
    cluster: Cluster
    auth_scope: trio.CancelScope
    auth_done: trio.Event
    health: Health
    #: Seconds added to the proxy's cache clock.
    skew: list[float]

    async def stop_auth(self) -> None:
        self.auth_scope.cancel()
        await self.auth_done.wait()


@asynccontextmanager
async def open_outage_cluster(tmp_path: Path) -> AsyncIterator[Outage]:
    """Auth (stoppable), a proxy with a movable cache clock, in this trio loop."""
    data_dir = tmp_path / "data"
    config = loads_config(
        f"""
teleport:
  nodename: proxy1
  data_dir: {data_dir}
auth_service:
  cluster_name: {CLUSTER}
  listen_addr: 127.0.0.1:0
proxy_service:
  listen_addr: 127.0.0.1:0
  web_listen_addr: 127.0.0.1:0
"""
    )
    auth_scope = trio.CancelScope()
    auth_done = trio.Event()
    health = Health()
    skew = [0.0]

    async def run_auth(task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
        try:
            with auth_scope:
                await serve_auth(config, bcrypt_cost=4, task_status=task_status)
        finally:
            auth_done.set()

    async def run_proxy(token: str, task_status: trio.TaskStatus[object]) -> None:
        HEALTH.set(health)
        await serve_proxy(
            config,
            join_token=token,
            task_status=task_status,
            stale_seconds=STALE,
            cache_clock=lambda: trio.current_time() + skew[0],
        )

    async with trio.open_nursery() as nursery:
        auth_addrs = await nursery.start(run_auth)
        auth_addr = Address("127.0.0.1", int(auth_addrs[0][1]))
        admin = ClientIdentity.load(data_dir / "admin")
        async with connect_auth(auth_addr, admin) as client:
            token = (await client.add_token(["proxy"]))["token"]
        config.teleport.auth_servers = [auth_addr]
        proxy = await nursery.start(run_proxy, token)
        cluster = Cluster(tmp_path, config, auth_addr, proxy, admin, nursery)  # type: ignore[arg-type]
        try:
            yield Outage(cluster, auth_scope, auth_done, health, skew)
        finally:
            nursery.cancel_scope.cancel()


async def openssh_files(cluster: Cluster, name: str, folder: Path) -> Path:
    """Log ``name`` in through the proxy's HTTPS port; an ssh_config using her
    key, certificate and the cluster's host CA."""
    key = PrivateKey.generate()
    return write_openssh_files(folder, key, await cluster.https_login(name, key))


def write_openssh_files(folder: Path, key: PrivateKey, reply: dict[str, Any]) -> Path:
    folder.mkdir()
    (folder / "key").write_bytes(key.to_openssh())
    (folder / "key").chmod(0o600)
    (folder / "key-cert.pub").write_text(reply["cert"] + "\n")
    (folder / "known_hosts").write_text(
        "".join(f"@cert-authority * {line}\n" for line in reply["host_ca"])
    )
    config = folder / "ssh_config"
    config.write_text(
        f"""Host *
  IdentityFile {folder / "key"}
  CertificateFile {folder / "key-cert.pub"}
  IdentitiesOnly yes
  UserKnownHostsFile {folder / "known_hosts"}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 30
"""
    )
    return config


async def ssh(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [SSH, "-F", str(config), *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def jump(cluster: Cluster, user: str) -> tuple[str, str]:
    return "-J", f"{user}@127.0.0.1:{cluster.ssh_addr.port}"


def proxy_command(cluster: Cluster, config: Path, user: str) -> tuple[str, str]:
    command = f"{SSH} -F {config} -p {cluster.ssh_addr.port} {user}@127.0.0.1 -s proxy:%h:%p"
    return "-o", f"ProxyCommand={command}"


async def test_new_connections_through_the_proxy_use_its_cached_answers_during_an_outage(
    tmp_path: Path,
) -> None:
    async with open_outage_cluster(tmp_path) as outage:
        cluster = outage.cluster
        await cluster.add_role(DENY_SECRET)
        await cluster.add_node("node1", {"env": "prod"})
        await cluster.add_node("vault", {"env": "secret"})
        await cluster.add_user("alice", roles=["no-secret"])
        await cluster.add_user("bob", roles=["no-secret"])
        alice = await openssh_files(cluster, "alice", tmp_path / "alice")
        bob = await openssh_files(cluster, "bob", tmp_path / "bob")
        node1 = f"{LOGIN}@node1.{CLUSTER}"
        vault = f"{LOGIN}@vault.{CLUSTER}"

        # Before: alice reaches node1 (both ways); vault is refused by her roles.
        done = await ssh(alice, *jump(cluster, "alice"), node1, "echo before")
        assert done.stdout == b"before\n", done.stderr.decode()
        done = await ssh(alice, *proxy_command(cluster, alice, "alice"), node1, "echo before")
        assert done.stdout == b"before\n", done.stderr.decode()
        done = await ssh(alice, *jump(cluster, "alice"), vault, "true")
        assert done.returncode == 255
        assert "role 'no-secret' denies access" in done.stderr.decode()
        assert outage.health.problems() == {}

        await outage.stop_auth()

        # During: new connections to node1 still work, on the cached answers.
        done = await ssh(alice, *jump(cluster, "alice"), node1, "echo during -J")
        assert done.stdout == b"during -J\n", done.stderr.decode()
        done = await ssh(alice, *proxy_command(cluster, alice, "alice"), node1, "echo during PC")
        assert done.stdout == b"during PC\n", done.stderr.decode()
        problems = outage.health.problems()
        assert problems["proxy: auth"].startswith("auth unreachable since 20")
        assert f"answers it gave in the last {STALE:g} seconds" in problems["proxy: auth"]
        # A cached refusal stays a refusal.
        done = await ssh(alice, *jump(cluster, "alice"), vault, "true")
        assert done.returncode == 255
        assert "role 'no-secret' denies access" in done.stderr.decode()
        # bob never came through the proxy: nothing to go on.
        done = await ssh(bob, *jump(cluster, "bob"), node1, "true")
        assert done.returncode == 255
        assert "the auth service is unavailable" in done.stderr.decode()
        assert f"no answer from the last {STALE:g} seconds" in done.stderr.decode()

        # After stale_seconds: alice's answers are too old to use.
        outage.skew[0] = STALE + 1
        done = await ssh(alice, *jump(cluster, "alice"), node1, "true")
        assert done.returncode == 255
        stderr = done.stderr.decode()
        assert "open failed: connect failed" in stderr
        assert "the auth service is unavailable" in stderr
        assert f"no answer from the last {STALE:g} seconds" in stderr
        done = await ssh(alice, *proxy_command(cluster, alice, "alice"), node1, "true")
        assert done.returncode == 255
        assert "the auth service is unavailable" in done.stderr.decode()
