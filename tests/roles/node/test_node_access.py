"""Who gets in: user certificates of the cluster, for a login the roles allow on this node."""

from __future__ import annotations

import datetime as dt
import os
import time

import trio

from trioport.resources import LabelSelector, Metadata, Role, RoleConditions, RoleOptions, RoleSpec
from trioport.sshproto.certs import Certificate, CertType, sign_certificate, trioport_extensions
from trioport.sshproto.keys import PrivateKey

from .conftest import ALICE_LOGIN, BOB_LOGIN, CLUSTER, Cluster, run_ssh, ssh_argv, wait_for


def _role(name: str, logins: list[str], labels: dict[str, list[str]], **options: bool) -> Role:
    return Role(
        metadata=Metadata(name=name),  # type: ignore[arg-type]
        spec=RoleSpec(
            options=RoleOptions(**options),
            allow=RoleConditions(logins=logins, node_labels=LabelSelector(labels)),  # type: ignore[arg-type]
        ),
    )


#: OpenSSH's default log level, at which it prints USERAUTH_BANNER messages.
SHOW_BANNER = {"LogLevel": "INFO"}


async def _auth_failures(cluster: Cluster) -> list[dict]:
    return await cluster.admin_call(lambda c: c.search_events(events=["auth"]))


async def test_login_the_roles_do_not_allow_on_this_node_is_refused(cluster: Cluster) -> None:
    node = await cluster.start_node(labels={"env": "test"})
    role = _role("prod-bob", [BOB_LOGIN], {"env": ["prod"]})
    await cluster.admin_call(lambda c: c.upsert_role(role))
    await cluster.add_user("alice", [ALICE_LOGIN], roles=["access", "prod-bob"])
    alice = await cluster.login("alice")
    # Her certificate names the login (some node allows it) ...
    assert BOB_LOGIN in alice.certificate.principals
    # ... but not on a node labelled env=test.
    # At LogLevel INFO (its default) OpenSSH prints the node's banner.
    refused = await run_ssh(ssh_argv(alice, node, BOB_LOGIN, "true", options=SHOW_BANNER))
    assert refused.returncode == 255
    assert b"Permission denied" in refused.stderr
    # OpenSSH prints the node's banner: which login was refused, and why.
    assert f"trioport: {BOB_LOGIN}@".encode() in refused.stderr
    assert b"no role allows login" in refused.stderr
    allowed = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "echo in"))
    assert allowed.stdout == b"in\n"

    async def refusal() -> list[dict]:
        return [e for e in await _auth_failures(cluster) if e.get("login") == BOB_LOGIN]

    events = await wait_for(refusal)
    assert events[0]["user"] == "alice"
    assert events[0]["success"] is False
    assert "no role allows login" in events[0]["error"]
    assert events[0]["server_id"]


async def test_login_outside_the_certificate_principals_is_refused(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    refused = await run_ssh(ssh_argv(alice, node, BOB_LOGIN, "true", options=SHOW_BANNER))
    assert refused.returncode == 255
    assert b"Permission denied" in refused.stderr
    assert b"principal" in refused.stderr  # the banner says why

    async def refusal() -> list[dict]:
        return [e for e in await _auth_failures(cluster) if e.get("login") == BOB_LOGIN]

    events = await wait_for(refusal)
    assert "principal" in events[0]["error"]


async def test_a_role_change_reaches_the_node_within_seconds(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    assert (await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "true"))).returncode == 0
    # Her certificate is still valid, but her roles no longer allow the login.
    await cluster.admin_call(lambda c: c.update_user("alice", roles=["auditor"]))

    async def refused() -> bool:
        result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "true"))
        return result.returncode == 255 and b"Permission denied" in result.stderr

    await wait_for(refused, step=0.3)


async def test_a_plain_key_is_never_accepted(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "true", certificate=False))
    assert result.returncode == 255
    assert b"Permission denied (publickey)" in result.stderr


async def test_passwords_are_not_offered(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    argv = ssh_argv(
        alice,
        node,
        ALICE_LOGIN,
        "true",
        certificate=False,
        options={"PasswordAuthentication": "yes", "PreferredAuthentications": "password"},
    )
    result = await run_ssh(argv)
    assert result.returncode == 255
    assert b"Permission denied (publickey)" in result.stderr


async def test_a_certificate_from_another_ca_is_refused(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    rogue_ca = PrivateKey.generate()
    key = PrivateKey.generate()
    cert = _sign(rogue_ca, key, "alice", [ALICE_LOGIN])
    forged = cluster.write_user_files(
        "alice", key, cert, alice.known_hosts.read_text().splitlines()
    )
    result = await run_ssh(ssh_argv(forged, node, ALICE_LOGIN, "true"))
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


def _sign(
    ca: PrivateKey,
    key: PrivateKey,
    user: str,
    principals: list[str],
    *,
    options: dict[str, str] | None = None,
) -> Certificate:
    """A user certificate as the auth service would make it, but from ``ca``."""
    now = int(time.time())
    extensions: dict[str, str | None] = {"permit-pty": None}
    extensions.update(trioport_extensions(roles=["access"], cluster=CLUSTER))
    return sign_certificate(
        ca,
        key.public,
        cert_type=CertType.USER,
        key_id=user,
        principals=principals,
        valid_after=now - 60,
        valid_before=now + 3600,
        critical_options=options or {},
        extensions=extensions,
        serial=1,
        nonce=os.urandom(32),
    )


async def test_force_command_from_the_certificate_is_enforced(cluster: Cluster) -> None:
    """A certificate with force-command runs that command whatever the client asks.

    The auth service does not issue such certificates, so the test adds a CA of
    its own to the node's trusted user CAs (in its data directory, between two
    starts: this also checks that a node restarts from its saved identity).
    """
    node = await cluster.start_node()
    await cluster.wait_online(node)
    await cluster.stop_node(node)
    test_ca = PrivateKey.generate()
    ca_file = node.data_dir / "node" / "user_ca.pub"
    with ca_file.open("a") as f:
        f.write(test_ca.public.openssh_line("test-ca") + "\n")
    node = await cluster.start_node(data_dir=node.data_dir)
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    key = PrivateKey.generate()
    cert = _sign(test_ca, key, "alice", [ALICE_LOGIN], options={"force-command": "echo forced"})
    forced = cluster.write_user_files(
        "alice", key, cert, alice.known_hosts.read_text().splitlines()
    )
    result = await run_ssh(ssh_argv(forced, node, ALICE_LOGIN, "echo asked"))
    assert (result.returncode, result.stdout) == (0, b"forced\n")
    original = _sign(
        test_ca,
        key,
        "alice",
        [ALICE_LOGIN],
        options={"force-command": 'echo "$SSH_ORIGINAL_COMMAND"'},
    )
    shown = cluster.write_user_files(
        "alice", key, original, alice.known_hosts.read_text().splitlines()
    )
    result = await run_ssh(ssh_argv(shown, node, ALICE_LOGIN, "echo asked"))
    assert result.stdout == b"echo asked\n"


async def test_port_forwarding_needs_certificate_and_role(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    node = await cluster.start_node()
    target = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    target_port = target.socket.getsockname()[1]

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())

    nursery.start_soon(trio.serve_listeners, echo, [target])
    no_forward = _role("no-forward", [ALICE_LOGIN], {"*": ["*"]}, port_forwarding=False)
    await cluster.admin_call(lambda c: c.upsert_role(no_forward))
    await cluster.add_user("alice", [ALICE_LOGIN])  # access: forwarding allowed
    await cluster.add_user("carol", [ALICE_LOGIN], roles=["no-forward"])
    alice = await cluster.login("alice")
    carol = await cluster.login("carol")

    # ssh -W is a direct-tcpip channel with stdin/stdout as the socket.
    def forward(user: object) -> list[str]:
        return ssh_argv(user, node, ALICE_LOGIN, "-W", f"127.0.0.1:{target_port}")  # type: ignore[arg-type]

    allowed = await run_ssh(forward(alice), stdin=b"hello\n")
    assert allowed.stdout == b"HELLO\n"
    # Carol's roles forbid it, so her certificate does not permit it either.
    refused = await run_ssh(forward(carol), stdin=b"hello\n")
    assert refused.stdout == b""
    assert b"forwarding failed" in refused.stderr
    # Alice's certificate permits it, but her roles no longer do.
    await cluster.admin_call(lambda c: c.update_user("alice", roles=["no-forward"]))

    async def refused_by_roles() -> bool:
        result = await run_ssh(forward(alice), stdin=b"hello\n")
        return result.stdout == b"" and b"forwarding failed" in result.stderr

    await wait_for(refused_by_roles, step=0.3)

    async def port_events() -> list[dict]:
        found = await cluster.admin_call(lambda c: c.search_events(events=["port"]))
        return found if len(found) >= 3 else []

    events = await wait_for(port_events)
    allowed_event = next(e for e in events if e["code"] == "T3003I")
    assert allowed_event["user"] == "alice"
    assert allowed_event["addr"] == f"127.0.0.1:{target_port}"
    errors = {(e["user"], e["error"]) for e in events if e["code"] == "T3003E"}
    assert ("carol", "your certificate does not permit port forwarding") in errors
    assert ("alice", "your roles do not allow port forwarding") in errors


async def test_an_idle_connection_is_disconnected_after_the_role_timeout(
    cluster: Cluster,
) -> None:
    node = await cluster.start_node()
    role = Role(
        metadata=Metadata(name="impatient"),  # type: ignore[arg-type]
        spec=RoleSpec(
            options=RoleOptions(client_idle_timeout=dt.timedelta(seconds=1)),
            allow=RoleConditions(logins=[ALICE_LOGIN], node_labels=LabelSelector({"*": ["*"]})),  # type: ignore[list-item]
        ),
    )
    await cluster.admin_call(lambda c: c.upsert_role(role))
    await cluster.add_user("alice", [], roles=["impatient"])
    alice = await cluster.login("alice")
    # Output keeps it alive ...
    chatty = "for i in 1 2 3 4; do echo $i; sleep 0.4; done"
    busy = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, chatty))
    assert (busy.returncode, busy.stdout) == (0, b"1\n2\n3\n4\n")
    # ... silence does not.
    idle = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "sleep 20; echo late"))
    assert idle.returncode == 255
    assert idle.stdout == b""
    assert b"idle timeout" in idle.stderr
