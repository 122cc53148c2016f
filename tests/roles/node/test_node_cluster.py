"""The node in its cluster: joining, its identity on disk, heartbeats, auth outages, stopping."""

from __future__ import annotations

import platform
import shutil
import stat
import subprocess
from typing import Any

import pytest
import trio

from trioport.errors import AuthenticationFailed
from trioport.resources import LabelSelector, Metadata, Role, RoleConditions, RoleOptions, RoleSpec
from trioport.roles.node.heartbeat import run_label_command
from trioport.roles.node.identity import load_identity
from trioport.roles.node.recorder import parse_recording

from .conftest import (
    ALICE_LOGIN,
    CLUSTER,
    Cluster,
    label_command,
    run_ssh,
    ssh_argv,
    wait_for,
)
from .test_node_recording import Terminal


async def test_first_start_joins_and_keeps_a_private_identity(cluster: Cluster) -> None:
    token = (await cluster.admin_call(lambda c: c.add_token(["node"])))["token"]
    node = await cluster.start_node(token=token)
    listing = await cluster.wait_online(node)
    folder = node.data_dir / "node"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("key", "key-cert.pub", "known_hosts", "user_ca.pub"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    identity = load_identity(folder)
    assert identity is not None
    host_id = identity.host_id
    assert listing["host_id"] == host_id
    assert listing["addr"] == f"127.0.0.1:{node.port}"
    principals = set(identity.certificate.principals)
    assert {host_id, f"{host_id}.{CLUSTER}", "node1", f"node1.{CLUSTER}", "127.0.0.1"} <= principals
    # The token was single-use: it is gone.
    tokens = await cluster.admin_call(lambda c: c.list_tokens())
    assert token not in [t.metadata.name for t in tokens]
    # A restart uses the saved identity (no token needed) and keeps the UUID.
    await cluster.stop_node(node)
    again = await cluster.start_node(data_dir=node.data_dir)
    assert (await cluster.wait_online(again))["host_id"] == host_id


async def test_a_used_token_cannot_join_a_second_node(cluster: Cluster) -> None:
    token = (await cluster.admin_call(lambda c: c.add_token(["node"])))["token"]
    await cluster.start_node("node1", token=token)
    with pytest.raises(AuthenticationFailed):
        await cluster.start_node("node2", token=token)
    assert not (cluster.tmp / "node2" / "node" / "key-cert.pub").exists()


async def test_heartbeats_carry_static_and_command_labels(cluster: Cluster) -> None:
    counter = cluster.tmp / "count"
    bump = f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; echo $n"
    node = await cluster.start_node(
        labels={"env": "test", "team": "db"},
        commands=[
            label_command("arch", ["uname", "-m"]),
            label_command("count", ["sh", "-c", bump]),
            label_command("broken", ["/nonexistent/label-command"]),
        ],
    )
    first = await cluster.wait_online(node)
    assert first["hostname"] == "node1"
    labels = first["labels"]
    assert (labels["env"], labels["team"]) == ("test", "db")
    assert labels["arch"] == platform.machine()
    assert labels["broken"] == ""
    seen = int(labels["count"])

    async def counted_on() -> bool:
        listing = (await cluster.online_nodes())["node1"]
        return int(listing["labels"]["count"]) > seen

    await wait_for(counted_on)


async def test_command_labels_decide_access_like_static_ones(cluster: Cluster) -> None:
    role = Role(
        metadata=Metadata(name="blue-only"),  # type: ignore[arg-type]
        spec=RoleSpec(
            allow=RoleConditions(
                logins=[ALICE_LOGIN],  # type: ignore[list-item]
                node_labels=LabelSelector({"flavour": ["blue"]}),
            )
        ),
    )
    await cluster.admin_call(lambda c: c.upsert_role(role))
    await cluster.add_user("alice", [], roles=["blue-only"])
    alice = await cluster.login("alice")
    blue = await cluster.start_node("blue", commands=[label_command("flavour", ["echo", "blue"])])
    red = await cluster.start_node("red", commands=[label_command("flavour", ["echo", "red"])])
    await cluster.wait_online(blue)
    ok = await run_ssh(ssh_argv(alice, blue, ALICE_LOGIN, "echo in"))
    assert ok.stdout == b"in\n"
    refused = await run_ssh(ssh_argv(alice, red, ALICE_LOGIN, "echo in"))
    assert b"Permission denied" in refused.stderr


async def test_label_commands_that_fail_or_hang_give_an_empty_value() -> None:
    assert await run_label_command(["echo", "  padded  "], 5) == "padded"
    assert await run_label_command(["/nonexistent/command"], 5) == ""
    assert await run_label_command(["sleep", "10"], 0.2) == ""


async def test_sessions_survive_an_auth_restart(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    await cluster.wait_online(node)
    assert (await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "true"))).returncode == 0
    script = "echo ready; read x; echo during-$x; read y; echo after-$y"
    async with Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", script)) as term:
        await term.expect(b"ready")
        await cluster.stop_auth()
        # The running session does not notice ...
        await term.type(b"outage\n")
        await term.expect(b"during-outage")
        # ... and a login the node decided moments ago is still decided the same way.
        again = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "echo still"))
        assert again.stdout == b"still\n"
        await cluster.start_auth()
        await term.type(b"back\n")
        await term.expect(b"after-back")
        with trio.fail_after(30):
            assert await term.proc.wait() == 0
    # The node reconnects: heartbeats resume, and the recordings arrive complete.

    async def recordings() -> list[dict[str, Any]]:
        listing = await cluster.admin_call(lambda c: c.list_recordings())
        return listing["recordings"] if len(listing["recordings"]) >= 3 else []

    found = await wait_for(recordings, seconds=30)
    outputs = []
    for rec in found:
        data = await cluster.admin_call(lambda c, sid=rec["sid"]: c.fetch_recording(sid))
        _, events = parse_recording(data)
        assert events[-1].type == "end"
        outputs.append(b"".join(e.data for e in events if e.type == "o"))
    assert any(b"during-outage" in o and b"after-back" in o for o in outputs)
    assert b"still\n" in outputs

    # Audit events travel apart from recordings (the node's report queue): wait for them.
    async def ends() -> list[dict[str, Any]]:
        found = await cluster.admin_call(lambda c: c.search_events(events=["session.end"]))
        return found if len(found) >= 3 else []

    assert len(await wait_for(ends, seconds=30)) >= 3


async def test_graceful_stop_refuses_logins_then_ends_sessions(cluster: Cluster) -> None:
    node = await cluster.start_node(graceful=True)
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    async with Terminal(ssh_argv(alice, node, ALICE_LOGIN, "-tt", "echo ready; sleep 60")) as term:
        await term.expect(b"ready")
        node.stop.set()
        refused = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "true"))
        assert refused.returncode == 255
        # After the grace period (2 s here) the session is disconnected with a reason.
        with trio.fail_after(30):
            await term.proc.wait()
            await node.finished.wait()
        assert term.proc.returncode == 255
        await term.expect(b"shutting down")


async def test_agent_forwarding_only_when_roles_allow(cluster: Cluster) -> None:
    node = await cluster.start_node()
    no_agent = Role(
        metadata=Metadata(name="no-agent"),  # type: ignore[arg-type]
        spec=RoleSpec(
            options=RoleOptions(forward_agent=False),
            allow=RoleConditions(logins=[ALICE_LOGIN], node_labels=LabelSelector({"*": ["*"]})),  # type: ignore[list-item]
        ),
    )
    await cluster.admin_call(lambda c: c.upsert_role(no_agent))
    await cluster.add_user("alice", [ALICE_LOGIN])
    await cluster.add_user("carol", [], roles=["no-agent"])
    alice = await cluster.login("alice")
    carol = await cluster.login("carol")
    agent_dir = cluster.tmp / "agent"
    agent_dir.mkdir()
    sock = agent_dir / "sock"
    agent = await trio.lowlevel.open_process(
        [shutil.which("ssh-agent") or "/usr/bin/ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def listening() -> bool:
        return sock.exists()

    try:
        await wait_for(listening)
        env = {"SSH_AUTH_SOCK": str(sock)}
        added = await run_ssh(["ssh-add", str(alice.key_path)], env=env)
        assert added.returncode == 0, added.stderr
        fingerprint = alice.key.public.fingerprint()
        agent_opts = {"IdentityAgent": "SSH_AUTH_SOCK"}
        listed = await run_ssh(
            ssh_argv(alice, node, ALICE_LOGIN, "-A", "ssh-add -l", options=agent_opts), env=env
        )
        assert listed.returncode == 0, listed.stderr
        assert fingerprint.encode() in listed.stdout
        plain = await run_ssh(
            ssh_argv(
                carol, node, ALICE_LOGIN, "-A", 'echo "sock=$SSH_AUTH_SOCK"', options=agent_opts
            ),
            env=env,
        )
        assert plain.stdout == b"sock=\n"
        start = await cluster.admin_call(lambda c: c.search_events(events=["session.start"]))
        assert any(e.get("agent_forwarding") is True and e["user"] == "alice" for e in start)

        async def agent_events() -> list[dict[str, Any]]:
            found = await cluster.admin_call(lambda c: c.search_events(events=["agent.forward"]))
            return found if {e["user"] for e in found} >= {"alice", "carol"} else []

        events = {e["user"]: e for e in await wait_for(agent_events)}
        assert (events["alice"]["code"], events["alice"]["success"]) == ("TP001I", True)
        assert (events["carol"]["code"], events["carol"]["success"]) == ("TP001E", False)
        assert "forward_agent" in events["carol"]["error"]
    finally:
        agent.terminate()
        await agent.wait()


async def test_the_node_presents_its_host_certificate(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    host_id = (await cluster.wait_online(node))["host_id"]
    for name in ("node1", f"node1.{CLUSTER}", host_id):
        ok = await run_ssh(
            ssh_argv(alice, node, ALICE_LOGIN, "echo in", options={"HostKeyAlias": name})
        )
        assert ok.stdout == b"in\n", (name, ok.stderr)
    # A client expecting another host refuses it.
    wrong = await run_ssh(
        ssh_argv(alice, node, ALICE_LOGIN, "echo in", options={"HostKeyAlias": "node2"})
    )
    assert wrong.returncode == 255
    assert b"Host key verification failed" in wrong.stderr
