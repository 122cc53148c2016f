"""Certificates in SSH connections, against OpenSSH 9.2's ssh and sshd.

- OpenSSH's ``ssh`` (``@cert-authority``, ``StrictHostKeyChecking=yes``) accepts
  our server's host certificate and refuses a wrong-name or a user-type one;
- our client (trust.py) checks sshd's ``HostCertificate`` and refuses a wrong
  principal, an expired certificate and an untrusted CA;
- sshd with ``TrustedUserCAKeys`` (and with ``AuthorizedPrincipalsFile``)
  accepts our user certificates and refuses expired, not yet valid, wrong
  principal and wrong CA ones;
- our server (UserCertificateHandler) logs ``ssh`` in with a certificate from
  ``ssh-keygen -s`` and enforces force-command, no-pty, source-address and
  permit-agent-forwarding.
"""

from __future__ import annotations

import pathlib
import pwd
import time

import pytest

from trioport.errors import AuthenticationFailed, HostKeyNotVerifiable
from trioport.ssh import connect
from trioport.ssh.client import KeySigner
from trioport.ssh.session import SessionPolicy
from trioport.ssh.trust import HostKeyPolicy, UserCertificateChecker, UserCertificateHandler
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto.authfiles import parse_known_hosts
from trioport.sshproto.certs import CertType
from trioport.sshproto.keys import PrivateKey

from .certhelpers import (
    SSH_ADD,
    SSH_KEYGEN,
    make_cert,
    openssh_agent,
    read_private_key,
    run,
    serving,
    ssh_options,
    write_key_pair,
)
from .conftest import ShellServerHandler

pytestmark = pytest.mark.interop

CA = PrivateKey.generate("ssh-ed25519")
OTHER_CA = PrivateKey.generate("ecdsa-sha2-nistp256")
HOST = PrivateKey.generate("ssh-ed25519")


# --- OpenSSH's ssh checks our server's host certificate --------------------------------------


async def ssh_to_our_server(tmp_path: pathlib.Path, user_key, host_cert):
    """``ssh`` with only an ``@cert-authority`` line for CA, strict host key checking."""
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority * {CA.public.openssh_line()}\n")
    handler = ShellServerHandler({user_key.key.public.blob})
    async with serving(handler, [HostKey(HOST, host_cert.blob)]) as port:
        return await run(
            [
                *ssh_options(
                    port,
                    UserKnownHostsFile=str(known),
                    StrictHostKeyChecking="yes",
                    IdentitiesOnly="yes",
                    LogLevel="DEBUG",
                ),
                *("-i", str(user_key.path), "root@127.0.0.1", "echo trusted"),
            ],
            check=False,
        )


async def test_ssh_accepts_our_host_certificate_with_a_cert_authority_line(
    tmp_path, user_key
) -> None:
    host_cert = make_cert(CA, HOST, cert_type=CertType.HOST, principals=["127.0.0.1"])
    result = await ssh_to_our_server(tmp_path, user_key, host_cert)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"trusted\n"
    assert b"Server host certificate: ssh-ed25519-cert-v01@openssh.com" in result.stderr
    assert b"matches the ED25519-CERT host certificate" in result.stderr


@pytest.mark.parametrize(
    ("principals", "cert_type", "reason"),
    [
        (["elsewhere.example.com"], CertType.HOST, b"name is not a listed principal"),
        (["127.0.0.1"], CertType.USER, b"not a host certificate"),
    ],
    ids=["wrong-name", "user-cert"],
)
async def test_ssh_refuses_a_wrong_name_or_user_type_host_certificate(
    tmp_path, user_key, principals, cert_type, reason
) -> None:
    host_cert = make_cert(CA, HOST, cert_type=cert_type, principals=principals)
    result = await ssh_to_our_server(tmp_path, user_key, host_cert)
    assert result.returncode == 255
    assert result.stdout == b""
    assert b"Certificate invalid: " + reason in result.stderr


async def test_ssh_refuses_a_host_certificate_from_another_ca(tmp_path, user_key) -> None:
    host_cert = make_cert(OTHER_CA, HOST, cert_type=CertType.HOST, principals=["127.0.0.1"])
    result = await ssh_to_our_server(tmp_path, user_key, host_cert)
    assert result.returncode == 255
    assert b"Host key verification failed" in result.stderr


# --- our client checks sshd's host certificate ---------------------------------------------


@pytest.fixture
def sshd_with_host_cert(sshd, sshd_host_keys, tmp_path):
    host_key_path = sshd_host_keys["ssh-ed25519"]
    host_key = read_private_key(host_key_path)
    cert = make_cert(CA, host_key, cert_type=CertType.HOST, principals=["localhost", "127.0.0.1"])
    cert_path = tmp_path / "host-cert.pub"
    cert_path.write_text(cert.openssh_line() + "\n")
    return sshd({"HostCertificate": str(cert_path)}), cert


async def test_our_client_accepts_sshds_host_certificate(sshd_with_host_cert, user_key) -> None:
    server, cert = sshd_with_host_cert
    known = parse_known_hosts(f"@cert-authority * {CA.public.openssh_line()}\n")
    policy = HostKeyPolicy("127.0.0.1", server.port, known_hosts=known)
    async with connect(
        "127.0.0.1",
        server.port,
        username="root",
        signers=[user_key.key],
        config=ConnectionConfig(role=Role.CLIENT, verify_host_key=policy),
    ) as conn:
        assert conn.host_key == cert.blob
        assert conn.negotiated["host_key"] == "ssh-ed25519-cert-v01@openssh.com"
        assert (await conn.run("echo checked")).stdout == b"checked\n"
    assert policy.result is not None and policy.result.principal == "127.0.0.1"


@pytest.mark.parametrize(
    ("policy_kwargs", "reason"),
    [
        ({"host_key_alias": "db.example.com"}, "'db.example.com' is not a listed principal"),
        ({"clock": lambda: time.time() + 3600}, "certificate expired"),
        ({"known_hosts_ca": OTHER_CA}, "signed by a CA not trusted for it"),
    ],
    ids=["wrong-principal", "expired", "untrusted-ca"],
)
async def test_our_client_refuses_sshds_host_certificate(
    sshd_with_host_cert, user_key, policy_kwargs, reason
) -> None:
    server, _cert = sshd_with_host_cert
    ca = policy_kwargs.pop("known_hosts_ca", CA)
    known = parse_known_hosts(f"@cert-authority * {ca.public.openssh_line()}\n")
    policy = HostKeyPolicy("127.0.0.1", server.port, known_hosts=known, **policy_kwargs)
    with pytest.raises(HostKeyNotVerifiable, match=reason):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=ConnectionConfig(role=Role.CLIENT, verify_host_key=policy),
        ):
            pass
    assert policy.refusal is not None and reason in policy.refusal


# --- sshd checks our user certificates -----------------------------------------------------------


USER = PrivateKey.generate("ssh-ed25519")


async def login(port: int, cert) -> bytes:
    async with connect(
        "127.0.0.1",
        port,
        username="root",
        signers=[KeySigner(USER, certificate=cert.blob)],
        config=ConnectionConfig(role=Role.CLIENT),
    ) as conn:
        return (await conn.run("echo $USER-by-cert")).stdout


def refused_certs() -> dict[str, tuple[object, str]]:
    """Certificates sshd must refuse, with the line its log gives for each."""
    now = int(time.time())
    return {
        "expired": (
            make_cert(CA, USER, valid_after=now - 7200, valid_before=now - 3600),
            "Certificate invalid: expired",
        ),
        "not-yet-valid": (
            make_cert(CA, USER, valid_after=now + 3600, valid_before=now + 7200),
            "Certificate invalid: not yet valid",
        ),
        "other-principal": (
            make_cert(CA, USER, principals=["alice"]),
            "Certificate invalid: name is not a listed principal",
        ),
        "other-ca": (
            make_cert(OTHER_CA, USER),
            f"CA ECDSA {OTHER_CA.public.fingerprint()}",
        ),
    }


async def test_sshd_with_trusted_user_ca_keys_accepts_ours_and_refuses_bad_ones(
    sshd, tmp_path
) -> None:
    (tmp_path / "user_ca.pub").write_text(CA.public.openssh_line() + "\n")
    server = sshd(
        {"TrustedUserCAKeys": str(tmp_path / "user_ca.pub"), "LogLevel": "VERBOSE"},
        authorized_keys="",
    )
    assert await login(server.port, make_cert(CA, USER)) == b"root-by-cert\n"
    refusals = refused_certs()
    for cert, _reason in refusals.values():
        with pytest.raises(AuthenticationFailed):
            await login(server.port, cert)
    log = server.log_text()
    assert 'Accepted certificate ID "interop"' in log
    assert "Accepted publickey for root" in log and "ED25519-CERT" in log
    for name, (_cert, reason) in refusals.items():
        assert reason in log, name


async def test_sshd_with_authorized_principals_file_maps_principals_to_logins(
    sshd, tmp_path
) -> None:
    (tmp_path / "user_ca.pub").write_text(CA.public.openssh_line() + "\n")
    (tmp_path / "principals").write_text("ops\ndba\n")
    server = sshd(
        {
            "TrustedUserCAKeys": str(tmp_path / "user_ca.pub"),
            "AuthorizedPrincipalsFile": str(tmp_path / "principals"),
        },
        authorized_keys="",
    )
    assert await login(server.port, make_cert(CA, USER, principals=["ops"])) == b"root-by-cert\n"
    # The login itself is not implied once a principals file is in force.
    with pytest.raises(AuthenticationFailed):
        await login(server.port, make_cert(CA, USER, principals=["root"]))
    for cert, _reason in refused_certs().values():
        with pytest.raises(AuthenticationFailed):
            await login(server.port, cert)


# --- our server checks certificates made by ssh-keygen -s -------------------------------------


@pytest.fixture
def keygen_ca(tmp_path) -> pathlib.Path:
    path = tmp_path / "ca"
    write_key_pair(CA, path, "ca")
    return path


async def keygen_cert(
    tmp_path: pathlib.Path, ca: pathlib.Path, *options: str, name: str = "id_user"
) -> pathlib.Path:
    """A fresh user key with a certificate for ``root`` from ``ssh-keygen -s``."""
    key_path = write_key_pair(PrivateKey.generate("ssh-ed25519"), tmp_path / name)
    sign = [SSH_KEYGEN, "-q", "-s", str(ca), "-I", "keygen-user", "-n", "root", "-V", "-5m:+1h"]
    await run([*sign, *options, f"{key_path}.pub"])
    assert key_path.with_name(f"{name}-cert.pub").exists()
    return key_path


async def ssh_with_cert(
    key_path: pathlib.Path,
    *args: str,
    agent_forwarding: bool = False,
    handler: UserCertificateHandler | None = None,
    **options: str,
):
    """``ssh -i key_path`` (its certificate beside it) into our certificate server."""
    if handler is None:
        handler = UserCertificateHandler(
            UserCertificateChecker([CA.public]), agent_forwarding=agent_forwarding
        )
    async with serving(handler, [HostKey(HOST)]) as port:
        result = await run(
            [
                *ssh_options(port, IdentitiesOnly="yes", **options),
                *("-i", str(key_path), "root@127.0.0.1", *args),
            ],
            check=False,
        )
    return result, handler


async def test_ssh_logs_into_our_server_with_a_ssh_keygen_certificate(tmp_path, keygen_ca) -> None:
    key_path = await keygen_cert(tmp_path, keygen_ca)
    result, handler = await ssh_with_cert(key_path, "echo hello from $USER")
    assert result.returncode == 0, (result.stderr, list(handler.refusals))
    assert result.stdout.startswith(b"hello from")


async def test_force_command_in_the_certificate_runs_instead(tmp_path, keygen_ca) -> None:
    key_path = await keygen_cert(
        tmp_path, keygen_ca, "-O", "force-command=echo forced, asked: $SSH_ORIGINAL_COMMAND"
    )
    result, _ = await ssh_with_cert(key_path, "echo I asked for this")
    assert result.stdout == b"forced, asked: echo I asked for this\n"
    shell, _ = await ssh_with_cert(key_path)  # no command: a shell, also replaced
    assert shell.stdout == b"forced, asked:\n"


async def test_a_certificate_without_permit_pty_gets_no_pty(tmp_path, keygen_ca) -> None:
    key_path = await keygen_cert(tmp_path, keygen_ca, "-O", "no-pty")
    result, _ = await ssh_with_cert(key_path, "-tt", "tty; echo ran")
    # ssh -tt treats a refused pty as fatal: the command never runs.
    assert b"PTY allocation request failed" in result.stderr
    assert (result.returncode, result.stdout) == (255, b"")
    plain, _ = await ssh_with_cert(key_path, "tty; echo ran")
    assert plain.stdout == b"not a tty\nran\n"
    with_pty = await keygen_cert(tmp_path, keygen_ca, name="id_pty")
    allowed, _ = await ssh_with_cert(with_pty, "-tt", "tty")
    assert allowed.stdout.startswith(b"/dev/pts/")


async def test_source_address_mismatch_is_refused(tmp_path, keygen_ca) -> None:
    key_path = await keygen_cert(tmp_path, keygen_ca, "-O", "source-address=192.0.2.0/24")
    result, handler = await ssh_with_cert(key_path, "echo should-not-run")
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr
    assert result.stdout == b""
    assert "does not allow 127.0.0.1" in handler.refusals[-1]


async def test_permit_agent_forwarding_decides_whether_ssh_A_gets_an_agent(
    tmp_path, keygen_ca, user_key
) -> None:
    with openssh_agent(tmp_path) as agent_path:
        await run([SSH_ADD, str(user_key.path)], env={"SSH_AUTH_SOCK": str(agent_path)})
        env_opts = {"ForwardAgent": "yes", "IdentityAgent": str(agent_path)}
        allowed_key = await keygen_cert(tmp_path, keygen_ca, name="id_fwd")
        allowed, _ = await ssh_with_cert(
            allowed_key, "ssh-add -l", agent_forwarding=True, **env_opts
        )
        denied_key = await keygen_cert(
            tmp_path, keygen_ca, "-O", "no-agent-forwarding", name="id_nofwd"
        )
        denied, _ = await ssh_with_cert(
            denied_key, 'echo "[$SSH_AUTH_SOCK]"', agent_forwarding=True, **env_opts
        )
    assert user_key.key.public.fingerprint().encode() in allowed.stdout
    assert denied.stdout == b"[]\n"


async def test_a_session_running_as_another_user_reaches_its_forwarded_agent(
    tmp_path, keygen_ca, user_key
) -> None:
    nobody = pwd.getpwnam("nobody")
    handler = UserCertificateHandler(
        UserCertificateChecker([CA.public]),
        SessionPolicy(user=nobody.pw_name, group=nobody.pw_gid, cwd="/"),
        agent_forwarding=True,
    )
    key_path = await keygen_cert(tmp_path, keygen_ca)
    script = 'id -u; stat -c %U "$SSH_AUTH_SOCK"; ssh-add -l'
    with openssh_agent(tmp_path) as agent_path:
        await run([SSH_ADD, str(user_key.path)], env={"SSH_AUTH_SOCK": str(agent_path)})
        options = {"ForwardAgent": "yes", "IdentityAgent": str(agent_path)}
        result, _ = await ssh_with_cert(key_path, script, handler=handler, **options)
    lines = result.stdout.decode().splitlines()
    assert lines[:2] == [str(nobody.pw_uid), nobody.pw_name], result.stderr
    assert user_key.key.public.fingerprint() in lines[2]
