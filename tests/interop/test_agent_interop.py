"""The agent against OpenSSH 9.2: ssh-agent, ssh-add, ssh-keygen -Y, ssh and sshd.

- our client signs through OpenSSH's ssh-agent and adds keys (with certificates
  and lifetimes) to it;
- OpenSSH's tools use our agent: ``ssh-add`` (-l, -L, add, -d, -D, -t, -c, -x/-X),
  ``ssh-keygen -Y sign`` (verified by ``ssh-keygen -Y verify``) and ``ssh``;
- forwarding both ways: ``ssh -A`` into our server, our client into sshd; a
  forwarded agent only lists and signs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
import trio

from trioport.ssh import connect
from trioport.ssh.agent import (
    AgentForwardingHandler,
    AgentServer,
    agent_signers,
    open_agent,
    run_with_agent_forwarding,
)
from trioport.ssh.trust import UserCertificateChecker, UserCertificateHandler
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto.keys import PrivateKey

from .certhelpers import (
    SSH_ADD,
    SSH_KEYGEN,
    ForwardingShellHandler,
    askpass,
    make_cert,
    openssh_agent,
    run,
    serving,
    ssh_options,
    write_certificate,
    write_key_pair,
)

pytestmark = pytest.mark.interop

CLIENT = ConnectionConfig(role=Role.CLIENT)


@pytest.fixture
def ssh_agent(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """OpenSSH's ssh-agent, running for the test."""
    with openssh_agent(tmp_path) as path:
        yield path


@pytest.fixture
async def our_agent(nursery: trio.Nursery) -> tuple[AgentServer, str]:
    server = AgentServer()
    path = await nursery.start(server.serve)
    return server, path


def agent_env(path: str | pathlib.Path) -> dict[str, str]:
    return {"SSH_AUTH_SOCK": str(path)}


# --- our client, OpenSSH's agent -------------------------------------------------------------


async def test_our_client_logs_into_sshd_with_a_key_held_by_openssh_agent(
    sshd, user_key, ssh_agent
) -> None:
    await run([SSH_ADD, str(user_key.path)], env=agent_env(ssh_agent))
    server = sshd()
    async with open_agent(ssh_agent) as agent:
        signers = await agent_signers(agent)
        assert [s.key for s in signers] == [user_key.key.public]
        async with connect(
            "127.0.0.1", server.port, username="root", signers=signers, config=CLIENT
        ) as conn:
            assert (await conn.run("echo via-agent")).stdout == b"via-agent\n"


async def test_we_add_a_key_with_its_certificate_and_a_lifetime_to_openssh_agent(
    sshd, tmp_path, ssh_agent
) -> None:
    ca = PrivateKey.generate("ssh-ed25519")
    key = PrivateKey.generate("ecdsa-sha2-nistp256")
    cert = make_cert(ca, key, principals=["root"])
    (tmp_path / "ca.pub").write_text(ca.public.openssh_line() + "\n")
    server = sshd({"TrustedUserCAKeys": str(tmp_path / "ca.pub")}, authorized_keys="")
    async with open_agent(ssh_agent) as agent:
        await agent.add_identity(key, comment="cert-key", certificate=cert, lifetime=2)
        listing = await run([SSH_ADD, "-l"], env=agent_env(ssh_agent))
        assert b"cert-key (ECDSA-CERT)" in listing.stdout
        assert key.public.fingerprint().encode() in listing.stdout
        (signer,) = await agent_signers(agent)
        assert signer.algorithm == "ecdsa-sha2-nistp256-cert-v01@openssh.com"
        async with connect(
            "127.0.0.1", server.port, username="root", signers=[signer], config=CLIENT
        ) as conn:
            assert (await conn.run("echo cert-from-agent")).stdout == b"cert-from-agent\n"
        # OpenSSH's agent forgets the key when the lifetime we set runs out.
        with trio.fail_after(20):
            while await agent.list_identities():  # noqa: ASYNC110 - another process's clock
                await trio.sleep(0.2)


# --- OpenSSH's tools, our agent ------------------------------------------------------------------


async def test_ssh_add_lists_adds_and_removes_keys_in_our_agent(our_agent, tmp_path) -> None:
    server, path = our_agent
    env = agent_env(path)
    empty = await run([SSH_ADD, "-l"], env=env, check=False)
    assert (empty.returncode, empty.stdout) == (1, b"The agent has no identities.\n")

    ed = write_key_pair(PrivateKey.generate("ssh-ed25519"), tmp_path / "id_ed", "ed@test")
    ec = write_key_pair(PrivateKey.generate("ecdsa-sha2-nistp384"), tmp_path / "id_ec", "ec")
    added = await run([SSH_ADD, str(ed), str(ec)], env=env)
    assert added.stderr.count(b"Identity added") == 2

    keys = [k.key.public for k in server.keyring.keys]
    listing = (await run([SSH_ADD, "-l"], env=env)).stdout.decode()
    assert f"256 {keys[0].fingerprint()} ed@test (ED25519)" in listing
    assert f"384 {keys[1].fingerprint()}" in listing and "(ECDSA)" in listing
    public = (await run([SSH_ADD, "-L"], env=env)).stdout.decode().splitlines()
    assert public == [keys[0].openssh_line("ed@test"), keys[1].openssh_line("ec")]

    await run([SSH_ADD, "-d", str(ed)], env=env)
    assert [k.key.public for k in server.keyring.keys] == [keys[1]]
    await run([SSH_ADD, "-D"], env=env)
    assert server.keyring.keys == []


async def test_ssh_add_loads_a_certificate_and_a_lifetime_into_our_agent(
    our_agent, tmp_path
) -> None:
    server, path = our_agent
    ca = PrivateKey.generate("ssh-ed25519")
    key = PrivateKey.generate("ssh-ed25519")
    key_path = write_key_pair(key, tmp_path / "id_cert")
    cert = make_cert(ca, key, principals=["alice"])
    write_certificate(cert, key_path)
    result = await run([SSH_ADD, "-t", "300", str(key_path)], env=agent_env(path))
    assert b"Certificate added" in result.stderr
    assert b"Lifetime set to 300 seconds" in result.stderr
    by_blob = {k.public.blob: k for k in server.keyring.keys}
    assert cert.blob in by_blob
    entry = by_blob[cert.blob]
    assert entry.expires_at is not None
    assert entry.expires_at <= trio.current_time() + 300
    listing = await run([SSH_ADD, "-L"], env=agent_env(path))
    assert cert.openssh_line().encode() in listing.stdout


async def test_ssh_add_lock_and_unlock_our_agent(our_agent, tmp_path) -> None:
    server, path = our_agent
    server.add_key(PrivateKey.generate("ssh-ed25519"), comment="locked-away")
    env = {**agent_env(path), **askpass(tmp_path), "TEST_PASSPHRASE": "hunter2"}
    await run([SSH_ADD, "-x"], env=env)
    assert server.keyring.locked
    assert (await run([SSH_ADD, "-l"], env=env, check=False)).returncode == 1
    wrong = await run([SSH_ADD, "-X"], env={**env, "TEST_PASSPHRASE": "nope"}, check=False)
    assert wrong.returncode != 0 and server.keyring.locked
    await run([SSH_ADD, "-X"], env=env)
    assert b"locked-away" in (await run([SSH_ADD, "-l"], env=env)).stdout


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ssh-rsa"])
async def test_ssh_keygen_signs_through_our_agent_and_verifies(
    our_agent, tmp_path, key_type
) -> None:
    server, path = our_agent
    key = PrivateKey.generate(key_type, bits=2048)
    server.add_key(key, comment="signer")
    public = tmp_path / "signer.pub"  # no private key beside it: ssh-keygen must use the agent
    public.write_text(key.public.openssh_line() + "\n")
    message = tmp_path / "message.txt"
    message.write_bytes(b"signed through the trioport agent\n")
    await run(
        [SSH_KEYGEN, "-Y", "sign", "-f", str(public), "-n", "file", str(message)],
        env=agent_env(path),
    )
    signature = tmp_path / "message.txt.sig"
    assert signature.read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"alice@example.com {key.public.openssh_line()}\n")
    verify = [SSH_KEYGEN, "-Y", "verify", "-f", str(allowed), "-I", "alice@example.com"]
    verified = await run(
        [*verify, "-n", "file", "-s", str(signature)],
        stdin=message.read_bytes(),
    )
    assert b'Good "file" signature for alice@example.com' in verified.stdout


async def test_a_confirm_key_does_not_sign_without_a_confirmation_hook(our_agent, tmp_path) -> None:
    server, path = our_agent
    key_path = write_key_pair(PrivateKey.generate("ssh-ed25519"), tmp_path / "id_confirm")
    added = await run([SSH_ADD, "-c", str(key_path)], env=agent_env(path))
    assert b"The user must confirm each use of the key" in added.stderr
    assert server.keyring.keys[0].confirm
    message = tmp_path / "m"
    message.write_bytes(b"m")
    refused = await run(
        [SSH_KEYGEN, "-Y", "sign", "-f", f"{key_path}.pub", "-n", "file", str(message)],
        env=agent_env(path),
        check=False,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert not (tmp_path / "m.sig").exists()


async def test_openssh_ssh_logs_into_sshd_using_our_agent(sshd, user_key, our_agent) -> None:
    server, path = our_agent
    server.add_key(user_key.key, comment="from-trioport-agent")
    target = sshd()
    result = await run(
        [
            *ssh_options(target.port, IdentityAgent=path, PreferredAuthentications="publickey"),
            "root@127.0.0.1",
            "echo logged-in",
        ],
    )
    assert result.stdout == b"logged-in\n"


# --- forwarding --------------------------------------------------------------------------------


async def test_ssh_A_through_our_server_forwards_an_agent_that_only_lists_and_signs(
    user_key, server_host_key, ssh_agent
) -> None:
    forwarded = PrivateKey.generate("ssh-ed25519")
    env = agent_env(ssh_agent)
    async with open_agent(ssh_agent) as agent:
        await agent.add_identity(forwarded, comment="forwarded-key")
    handler = ForwardingShellHandler({user_key.key.public.blob})
    async with serving(handler, [HostKey(server_host_key)]) as port:
        script = (
            'test -S "$SSH_AUTH_SOCK" && echo socket-ok; '
            "ssh-add -l; ssh-add -D; echo remove-rc=$?; ssh-add -l"
        )
        result = await run(
            [
                *ssh_options(port, ForwardAgent="yes", IdentitiesOnly="yes"),
                "-i",
                str(user_key.path),
                "root@127.0.0.1",
                script,
            ],
            env=env,
        )
    out = result.stdout.decode()
    assert out.startswith("socket-ok\n")
    assert out.count(f"{forwarded.public.fingerprint()} forwarded-key (ED25519)") == 2
    assert "remove-rc=1" in out
    assert b"Failed to remove all identities" in result.stderr
    async with open_agent(ssh_agent) as agent:
        assert [i.comment for i in await agent.list_identities()] == ["forwarded-key"]


async def test_without_forwarding_the_session_has_no_agent(user_key, server_host_key) -> None:
    handler = ForwardingShellHandler({user_key.key.public.blob})
    async with serving(handler, [HostKey(server_host_key)]) as port:
        result = await run(
            [
                *ssh_options(port, ForwardAgent="no", IdentitiesOnly="yes"),
                "-i",
                str(user_key.path),
                "root@127.0.0.1",
                'echo "[$SSH_AUTH_SOCK]"',
            ],
            env={"SSH_AUTH_SOCK": ""},
        )
    assert result.stdout == b"[]\n"


async def test_our_client_forwards_its_agent_to_sshd_and_it_only_lists_and_signs(
    sshd, user_key, tmp_path
) -> None:
    agent = AgentServer()
    mine = PrivateKey.generate("ssh-ed25519")
    agent.add_key(mine, comment="our-forwarded-key")
    extra = write_key_pair(PrivateKey.generate("ssh-ed25519"), tmp_path / "extra")
    server = sshd({"AllowAgentForwarding": "yes"})
    handler = AgentForwardingHandler(agent)
    remote_env = " ".join(f"{k}={v}" for k, v in askpass(tmp_path).items())
    script = (
        "ssh-add -l; "
        "ssh-add -D; echo remove-rc=$?; "
        f"ssh-add {extra}; echo add-rc=$?; "
        f"TEST_PASSPHRASE=x {remote_env} ssh-add -x; echo lock-rc=$?; "
        "ssh-add -l"
    )
    async with connect(
        "127.0.0.1",
        server.port,
        username="root",
        signers=[user_key.key],
        config=CLIENT,
        handler=handler,
    ) as conn:
        result = await run_with_agent_forwarding(conn, handler, script)
    out = result.stdout.decode()
    assert out.count(f"{mine.public.fingerprint()} our-forwarded-key (ED25519)") == 2
    assert "remove-rc=1" in out and "add-rc=1" in out and "lock-rc=1" in out
    assert [k.comment for k in agent.keyring.keys] == ["our-forwarded-key"]
    assert not agent.keyring.locked


async def test_our_client_forwards_openssh_agent_to_sshd(sshd, user_key, ssh_agent) -> None:
    key = PrivateKey.generate("ssh-ed25519")
    async with open_agent(ssh_agent) as agent:
        await agent.add_identity(key, comment="relayed")
    server = sshd()
    handler = AgentForwardingHandler(ssh_agent)
    async with connect(
        "127.0.0.1",
        server.port,
        username="root",
        signers=[user_key.key],
        config=CLIENT,
        handler=handler,
    ) as conn:
        result = await run_with_agent_forwarding(conn, handler, "ssh-add -L")
    assert result.stdout.decode().strip() == key.public.openssh_line("relayed")


async def test_ssh_A_with_a_user_certificate_from_our_agent_through_our_server(
    tmp_path, server_host_key, our_agent
) -> None:
    """Our agent holds the certificate; OpenSSH's ssh -A logs into our server with it."""
    agent, path = our_agent
    ca = PrivateKey.generate("ssh-ed25519")
    key = PrivateKey.generate("ssh-ed25519")
    agent.add_key(key, comment="cert-in-agent", certificate=make_cert(ca, key))
    handler = UserCertificateHandler(UserCertificateChecker([ca.public]), agent_forwarding=True)
    async with serving(handler, [HostKey(server_host_key)]) as port:
        result = await run(
            [
                *ssh_options(port, ForwardAgent="yes", IdentityAgent=path),
                "root@127.0.0.1",
                "ssh-add -l",
            ],
        )
    assert b"cert-in-agent (ED25519-CERT)" in result.stdout
