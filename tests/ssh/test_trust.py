"""trust.py: the client's host-key policy and the server's user-certificate checks.

The policy is tested as a plain function first (every refusal with its reason),
then hooked into real trioport connections: our server offering a host
certificate, our client checking it, and our server enforcing what a user
certificate says (force-command, permit-pty, source-address).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trioport.errors import AuthenticationFailed, CertificateInvalid, HostKeyNotVerifiable
from trioport.ssh import SSHConnection, authenticate, connect, open_ssh, serve
from trioport.ssh.client import KeySigner
from trioport.ssh.session import SessionPolicy
from trioport.ssh.trust import (
    HostKeyPolicy,
    UserCertificateChecker,
    UserCertificateHandler,
    session_policy_for,
)
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.authfiles import parse_known_hosts
from trioport.sshproto.certs import (
    DEFAULT_USER_EXTENSIONS,
    EXT_PERMIT_AGENT,
    CertType,
    ServiceRole,
    sign_certificate,
    trioport_extensions,
)
from trioport.sshproto.keys import PrivateKey

HOST_CA = PrivateKey.generate("ssh-ed25519")
USER_CA = PrivateKey.generate("ssh-ed25519")
OTHER_CA = PrivateKey.generate("ssh-ed25519")
HOST = PrivateKey.generate("ssh-ed25519")
USER = PrivateKey.generate("ssh-ed25519")
NOW = 1_800_000_000


def cert(
    key: PrivateKey = HOST,
    *,
    ca: PrivateKey = HOST_CA,
    cert_type: CertType = CertType.HOST,
    principals=("node1.example.com",),
    valid_after: int = NOW - 3600,
    valid_before: int = NOW + 3600,
    **options,
):
    return sign_certificate(
        ca,
        key.public,
        cert_type=cert_type,
        key_id="test",
        principals=principals,
        valid_after=valid_after,
        valid_before=valid_before,
        nonce=b"0123456789abcdef",
        **options,
    )


def user_cert(principals=("alice",), **options):
    options.setdefault("extensions", DEFAULT_USER_EXTENSIONS)
    return cert(USER, ca=USER_CA, cert_type=CertType.USER, principals=principals, **options)


def policy(text: str, host: str = "node1.example.com", port: int = 22, **kwargs) -> HostKeyPolicy:
    kwargs.setdefault("clock", lambda: NOW)
    kwargs.setdefault("raise_refusals", False)
    return HostKeyPolicy(host, port, known_hosts=parse_known_hosts(text), **kwargs)


def ca_line(pattern: str = "*.example.com", ca: PrivateKey = HOST_CA) -> str:
    return f"@cert-authority {pattern} {ca.public.openssh_line()}\n"


def refuse(p: HostKeyPolicy, blob: bytes, reason: str) -> None:
    assert p(blob, "ssh-ed25519") is False
    assert p.refusal is not None
    assert reason in p.refusal, p.refusal


# --- the client's host-key policy, as a function ------------------------------------------


def test_a_listed_plain_key_is_trusted_and_others_are_refused_with_reasons() -> None:
    p = policy(f"node1.example.com {HOST.public.openssh_line()}\n")
    assert p(HOST.public.blob, "ssh-ed25519") is True
    assert p.refusal is None and p.result is None
    other = PrivateKey.generate("ssh-ed25519")
    refuse(p, other.public.blob, "has CHANGED")
    refuse(policy(""), HOST.public.blob, "is not in known_hosts")
    revoked = policy(
        f"node1.example.com {HOST.public.openssh_line()}\n@revoked * {HOST.public.openssh_line()}"
    )
    refuse(revoked, HOST.public.blob, "marked @revoked")


def test_ports_other_than_22_are_looked_up_as_host_port() -> None:
    text = f"[node1.example.com]:2222 {HOST.public.openssh_line()}\n"
    assert policy(text, port=2222)(HOST.public.blob, "ssh-ed25519")
    refuse(policy(text, port=22), HOST.public.blob, "not in known_hosts")


def test_a_host_certificate_from_a_trusted_ca_is_accepted_with_its_typed_extensions() -> None:
    c = cert(extensions=trioport_extensions(service_role="node", cluster="main"))
    p = policy(ca_line())
    assert p(c.blob, "ssh-ed25519-cert-v01@openssh.com") is True
    assert p.result is not None
    assert p.result.principal == "node1.example.com"
    assert p.result.service_role is ServiceRole.NODE
    assert p.result.cluster == "main"


def test_host_certificate_principals_are_globs_matched_against_the_lowercased_name() -> None:
    c = cert(principals=["*.example.com"])
    assert policy(ca_line(), host="NODE1.example.com")(c.blob, "x")
    refuse(policy(ca_line("*"), host="node1.example.org"), c.blob, "not a listed principal")


@pytest.mark.parametrize(
    ("certificate", "reason"),
    [
        (cert(principals=["node2.example.com"]), "is not a listed principal"),
        (cert(valid_before=NOW - 1), "certificate expired"),
        (cert(valid_before=NOW), "certificate expired"),
        (cert(valid_after=NOW + 3600, valid_before=NOW + 7200), "not valid until"),
        (cert(cert_type=CertType.USER), "is a user certificate, not a host certificate"),
        (cert(critical_options={"force-command": "ls"}), "carries critical options"),
    ],
    ids=["wrong-principal", "expired", "valid-before-now", "not-yet-valid", "user-cert", "opts"],
)
def test_a_bad_certificate_from_a_trusted_ca_is_refused(certificate, reason) -> None:
    p = policy(ca_line())
    refuse(p, certificate.blob, reason)
    assert p.refusal.startswith("host certificate for node1.example.com: ")
    assert p.result is None


def test_a_certificate_from_a_ca_not_trusted_for_the_host_falls_back_to_its_plain_key() -> None:
    c = cert(ca=OTHER_CA)
    refuse(policy(ca_line()), c.blob, "signed by a CA not trusted for it")
    # The CA is trusted only for other hosts: still untrusted here.
    refuse(policy(ca_line("*.example.org")), cert().blob, "not trusted for it")
    # ... but the certified key itself may be listed, as OpenSSH allows.
    assert policy(f"node1.example.com {HOST.public.openssh_line()}\n")(c.blob, "x")


def test_a_revoked_ca_or_certified_key_refuses_the_certificate() -> None:
    refuse(
        policy(ca_line() + f"@revoked * {HOST_CA.public.openssh_line()}\n"),
        cert().blob,
        "@revoked",
    )
    refuse(
        policy(ca_line() + f"@revoked * {HOST.public.openssh_line()}\n"), cert().blob, "@revoked"
    )


def test_host_cas_and_host_key_alias() -> None:
    c = cert(principals=["node-7f3a"])
    aliased = HostKeyPolicy(
        "10.1.2.3", host_cas=[HOST_CA.public], host_key_alias="node-7f3a", clock=lambda: NOW
    )
    assert aliased(c.blob, "x")
    with pytest.raises(HostKeyNotVerifiable, match="not a listed principal"):
        HostKeyPolicy("10.1.2.3", host_cas=[HOST_CA.public], clock=lambda: NOW)(c.blob, "x")


def test_refusals_raise_by_default_and_garbage_is_refused() -> None:
    p = HostKeyPolicy("h", known_hosts=[])
    with pytest.raises(HostKeyNotVerifiable, match="not in known_hosts"):
        p(HOST.public.blob, "ssh-ed25519")
    with pytest.raises(HostKeyNotVerifiable, match="malformed"):
        p(b"\x00\x00\x00\x03abc", "ssh-ed25519")
    assert p.refusal is not None and "malformed" in p.refusal


def test_from_files_reads_known_hosts_and_skips_missing_files(tmp_path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("# comment\nnot a valid line\n" + ca_line())
    p = HostKeyPolicy.from_files(
        "node1.example.com", paths=[tmp_path / "missing", path], clock=lambda: NOW
    )
    assert p(cert().blob, "x")


# --- the server's user certificate checks, as functions ----------------------------------


def request(blob: bytes, username: str = "alice") -> ev.UserauthRequest:
    return ev.UserauthRequest(
        username=username,
        method="publickey",
        public_key=blob,
        algorithm="ssh-ed25519-cert-v01@openssh.com",
        signature_ok=True,
    )


def checker(**kwargs) -> UserCertificateChecker:
    return UserCertificateChecker([USER_CA.public], clock=lambda: NOW, **kwargs)


def test_user_certificates_need_the_login_as_principal() -> None:
    result = checker().check(request(user_cert().blob), peer_address="192.0.2.1")
    assert result.principal == "alice"
    assert result.permit_pty
    with pytest.raises(CertificateInvalid, match="'root' is not a listed principal"):
        checker().check(request(user_cert().blob, "root"), peer_address=None)
    with pytest.raises(CertificateInvalid, match="untrusted CA"):
        other = cert(USER, ca=OTHER_CA, cert_type=CertType.USER, principals=["alice"])
        checker().check(request(other.blob), peer_address=None)
    with pytest.raises(AuthenticationFailed, match="plain key"):
        checker().check(request(USER.public.blob), peer_address=None)
    with pytest.raises(AuthenticationFailed):
        checker().check(
            ev.UserauthRequest(username="alice", method="password", password="x"),
            peer_address=None,
        )


def test_authorized_principals_map_logins_to_certificate_principals() -> None:
    c = user_cert(principals=["team-db"])
    by_map = checker(authorized_principals={"postgres": ["team-db", "dba"]})
    assert by_map.check(request(c.blob, "postgres"), peer_address=None).principal == "team-db"
    with pytest.raises(CertificateInvalid, match="no certificate principals"):
        by_map.check(request(c.blob, "alice"), peer_address=None)
    by_call = checker(authorized_principals=lambda login: ["team-db"] if login == "x" else [])
    assert by_call.check(request(c.blob, "x"), peer_address=None).principal == "team-db"


def test_source_address_is_checked_against_the_peer() -> None:
    c = user_cert(critical_options={"source-address": "10.0.0.0/8"})
    assert checker().check(request(c.blob), peer_address="10.1.2.3").source_addresses
    with pytest.raises(CertificateInvalid, match=r"does not allow 192\.0\.2\.1"):
        checker().check(request(c.blob), peer_address="192.0.2.1")
    with pytest.raises(CertificateInvalid, match="address is unknown"):
        checker().check(request(c.blob), peer_address=None)


def test_a_certificate_only_narrows_the_session_policy() -> None:
    base = SessionPolicy(force_command=None, allow_pty=True)
    plain = checker().check(request(user_cert(extensions={}).blob), peer_address=None)
    narrowed = session_policy_for(plain, base)
    assert narrowed.allow_pty is False
    assert narrowed.force_command is None
    forced = user_cert(critical_options={"force-command": "echo hi"})
    result = checker().check(request(forced.blob), peer_address=None)
    assert session_policy_for(result, base).force_command == "echo hi"
    assert session_policy_for(result, base).allow_pty is True
    # A certificate cannot switch on what the server switched off.
    assert session_policy_for(result, SessionPolicy(allow_pty=False)).allow_pty is False


# --- hooked into real connections -----------------------------------------------------------


@asynccontextmanager
async def cert_server(
    handler: UserCertificateHandler, host_key: HostKey
) -> AsyncIterator[tuple[int, UserCertificateHandler]]:
    config = ConnectionConfig(role=Role.SERVER, host_keys=[host_key])
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            lambda task_status: serve(
                0, config, lambda: handler, host="127.0.0.1", task_status=task_status
            )
        )
        yield addresses[0][1], handler
        nursery.cancel_scope.cancel()


def real_user_cert(**options):
    now = int(time.time())
    options.setdefault("extensions", DEFAULT_USER_EXTENSIONS)
    return cert(
        USER,
        ca=USER_CA,
        cert_type=CertType.USER,
        principals=["alice"],
        valid_after=now - 60,
        valid_before=now + 600,
        **options,
    )


def real_host_cert(principals=("127.0.0.1",), ca: PrivateKey = HOST_CA):
    now = int(time.time())
    return cert(principals=principals, ca=ca, valid_after=now - 60, valid_before=now + 600)


def client_config(**policy_kwargs) -> ConnectionConfig:
    return ConnectionConfig(
        role=Role.CLIENT,
        verify_host_key=HostKeyPolicy("127.0.0.1", host_cas=[HOST_CA.public], **policy_kwargs),
    )


async def test_our_client_accepts_our_servers_host_certificate_and_runs_force_command() -> None:
    handler = UserCertificateHandler(UserCertificateChecker([USER_CA.public]))
    host_cert = real_host_cert()
    forced = real_user_cert(
        critical_options={"force-command": "echo forced: $SSH_ORIGINAL_COMMAND"}
    )
    async with cert_server(handler, HostKey(HOST, host_cert.blob)) as (port, _):
        config = client_config()
        async with connect(
            "127.0.0.1",
            port,
            username="alice",
            signers=[KeySigner(USER, certificate=forced.blob)],
            config=config,
        ) as conn:
            assert conn.host_key == host_cert.blob
            assert conn.negotiated["host_key"] == "ssh-ed25519-cert-v01@openssh.com"
            result = await conn.run("echo asked")
    assert result.stdout == b"forced: echo asked\n"
    assert config.verify_host_key.result.principal == "127.0.0.1"


async def test_our_client_refuses_a_wrong_name_host_certificate_with_the_reason() -> None:
    handler = UserCertificateHandler(UserCertificateChecker([USER_CA.public]))
    host_cert = real_host_cert(principals=["elsewhere.example.com"])
    async with cert_server(handler, HostKey(HOST, host_cert.blob)) as (port, _):
        with pytest.raises(HostKeyNotVerifiable, match="not a listed principal"):
            async with connect(
                "127.0.0.1", port, username="alice", signers=[USER], config=client_config()
            ):
                pass


async def test_a_certificate_without_permit_pty_gets_no_pty() -> None:
    handler = UserCertificateHandler(UserCertificateChecker([USER_CA.public]))
    no_pty = real_user_cert(extensions={EXT_PERMIT_AGENT: None})
    async with cert_server(handler, HostKey(HOST, real_host_cert().blob)) as (port, _):
        async with connect(
            "127.0.0.1",
            port,
            username="alice",
            signers=[KeySigner(USER, certificate=no_pty.blob)],
            config=client_config(),
        ) as conn:
            chan = await conn.open_session()
            pty = ev.PtyRequest(term="xterm", width_chars=80, height_rows=24)
            assert not await chan.request(pty)
            await chan.aclose()
            assert (await conn.run("echo still works")).stdout == b"still works\n"


async def test_source_address_mismatch_refuses_the_login() -> None:
    handler = UserCertificateHandler(UserCertificateChecker([USER_CA.public]))
    far = real_user_cert(critical_options={"source-address": "192.0.2.0/24"})
    near = real_user_cert(critical_options={"source-address": "127.0.0.1/32,::1"})
    async with cert_server(handler, HostKey(HOST, real_host_cert().blob)) as (port, _):
        with pytest.raises(AuthenticationFailed):
            async with connect(
                "127.0.0.1",
                port,
                username="alice",
                signers=[KeySigner(USER, certificate=far.blob)],
                config=client_config(),
            ):
                pass
        assert "does not allow 127.0.0.1" in handler.refusals[-1]
        async with connect(
            "127.0.0.1",
            port,
            username="alice",
            signers=[KeySigner(USER, certificate=near.blob)],
            config=client_config(),
        ) as conn:
            assert (await conn.run("echo in")).stdout == b"in\n"


async def test_the_handler_decides_on_the_key_that_signed_over_memory_streams() -> None:
    # No socket, so no peer address: the policy still works for plain user certs.
    handler = UserCertificateHandler(UserCertificateChecker([USER_CA.public]))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server_cfg = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(HOST)])
    async with (
        open_ssh(server_stream, server_cfg, handler) as server,
        open_ssh(client_stream, ConnectionConfig(role=Role.CLIENT)) as client,
    ):
        good = KeySigner(USER, certificate=real_user_cert().blob)
        await authenticate(client, "alice", signers=[USER, good])
        await client.wait_kex()
        assert isinstance(server, SSHConnection)
        result = handler.result_for(server)
        assert result is not None and result.principal == "alice"
        assert "plain key" in handler.refusals[0]
