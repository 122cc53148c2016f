"""The node's certificate expiry (role option ``disconnect_expired_cert``) against
Debian's OpenSSH ``ssh``. (Its connection and session limits are the SSH server's,
tested in ``tests/test_limits.py``.)

For expiry the node runs with a wall clock ahead of the real one, so the users'
hour-long certificates have seconds left as the node sees them. A user whose
role sets ``disconnect_expired_cert`` is disconnected with the reason when hers
passes; a user without it carries on.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from trioport.config import Address, AuthService, Config, Global, ProxyService, SSHService
from trioport.resources import Metadata, Role, RoleOptions, RoleSpec
from trioport.roles.node import service as node_service

from .conftest import ALICE_LOGIN, BOB_LOGIN, Cluster, NodeHandle, UserFiles, ssh_argv
from .test_node_recording import Terminal


async def _node_with_clock(cluster: Cluster, offset: list[float]) -> NodeHandle:
    token = (await cluster.admin_call(lambda c: c.add_token(["node"])))["token"]
    config = Config(
        teleport=Global(
            nodename="clocked",  # type: ignore[arg-type]
            data_dir=str(cluster.tmp / "clocked"),
            auth_token=token,
            auth_servers=[Address("127.0.0.1", cluster.auth_port)],
        ),
        auth_service=AuthService(enabled=False),
        proxy_service=ProxyService(enabled=False),
        ssh_service=SSHService(listen_addr=Address("127.0.0.1", 0)),
    )
    scope = trio.CancelScope()
    handle = NodeHandle(name="clocked", config=config, port=0, scope=scope)

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await node_service.serve(
                    config,
                    task_status=task_status,
                    heartbeat_interval=0.5,
                    access_cache_seconds=0.5,
                    clock=lambda: time.time() + offset[0],
                )
        finally:
            handle.finished.set()

    addresses = await cluster.nursery.start(run)
    handle.port = addresses[0][1]
    cluster.nodes.append(handle)
    return handle


async def test_expired_certificates_are_disconnected_when_a_role_says_so(
    cluster: Cluster,
) -> None:
    expiring = Role(
        metadata=Metadata(name="expiring"),  # type: ignore[arg-type]
        spec=RoleSpec(options=RoleOptions(disconnect_expired_cert=True)),
    )
    await cluster.admin_call(lambda c: c.upsert_role(expiring))
    await cluster.add_user("alice", [ALICE_LOGIN], roles=("access", "expiring"))
    await cluster.add_user("bob", [BOB_LOGIN])
    alice: UserFiles = await cluster.login("alice")
    bob: UserFiles = await cluster.login("bob")
    offset = [0.0]
    node = await _node_with_clock(cluster, offset)
    # From now on the node sees both certificates with 4 s left.
    first = min(alice.certificate.valid_before, bob.certificate.valid_before)
    offset[0] = first - time.time() - 4.0
    with trio.fail_after(60):
        async with (
            Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", "echo ready; sleep 30")) as a,
            Terminal(ssh_argv(bob, node, BOB_LOGIN, "-tt", "echo ready; sleep 30")) as b,
        ):
            await a.expect(b"ready")
            await b.expect(b"ready")
            await a.proc.wait()
            assert a.proc.returncode == 255
            await a.expect(b"your certificate has expired")
            # Bob's certificate has expired too by the node's clock, but his roles
            # do not ask for a disconnection: his session goes on.
            while time.time() + offset[0] < bob.certificate.valid_before:  # noqa: ASYNC110
                await trio.sleep(0.1)
            await trio.sleep(0.5)
            assert b.proc.returncode is None
            await b.type(b"\x03")  # Ctrl-C ends his sleep; the shell exits
            await b.proc.wait()
