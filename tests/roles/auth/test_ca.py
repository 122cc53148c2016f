"""The cluster CAs: first start, restarts, and the certificates they sign (read by ssh-keygen)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import trio

from trioport.errors import CertificateInvalid, ConfigError
from trioport.resources import (
    CertAuthority,
    Metadata,
    Role,
    RoleConditions,
    RoleOptions,
    RoleSpec,
    User,
    UserSpec,
    from_json,
    preset_roles,
)
from trioport.roles.auth.ca import (
    authorized_keys_line,
    known_hosts_line,
    open_cluster_authorities,
    private_key_path,
    public_key_path,
)
from trioport.sshproto.certs import (
    Certificate,
    CertType,
    ServiceRole,
    check_certificate,
)
from trioport.sshproto.keys import PrivateKey
from trioport.store.backend import Backend

from .conftest import CLUSTER, SSH_KEYGEN, START, FakeClock

ALICE = User(
    metadata=Metadata(name="alice"),
    spec=UserSpec(roles=["access"], traits={"logins": ["root", "alice"]}),
)


async def keygen_list(tmp_path: Path, cert: Certificate) -> dict[str, object]:
    """``ssh-keygen -L`` of a certificate, as a dict of its fields (times in UTC)."""
    path = tmp_path / "id-cert.pub"
    path.write_text(cert.openssh_line() + "\n")
    result = await trio.run_process(
        [SSH_KEYGEN, "-L", "-f", str(path)],
        capture_stdout=True,
        env={**os.environ, "TZ": "UTC"},
    )
    out = result.stdout.decode()
    fields: dict[str, object] = {}
    current: list[str] | None = None
    for line in out.splitlines()[1:]:
        stripped = line.strip()
        if line.startswith("\t\t") or line.startswith("                "):
            assert current is not None
            current.append(stripped)
            continue
        key, _, value = stripped.partition(":")
        value = value.strip()
        if value in ("", "(none)"):
            current = []
            fields[key] = current
        else:
            fields[key] = value
            current = None
    return fields


def utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def role(
    name: str, *, max_ttl: dt.timedelta | None = None, logins: list[str] | None = None
) -> Role:
    options = RoleOptions() if max_ttl is None else RoleOptions(max_session_ttl=max_ttl)
    return Role(
        metadata=Metadata(name=name),
        spec=RoleSpec(
            options=options,
            allow=RoleConditions(logins=logins or [], node_labels={"*": ["*"]}),
        ),
    )


async def test_first_start_makes_two_ed25519_cas(backend: Backend) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER)
    assert cas.cluster_name == CLUSTER
    for ca, kind in ((cas.user_ca, "user"), (cas.host_ca, "host")):
        assert ca.spec.type == kind
        assert ca.spec.public_keys[0].startswith("ssh-ed25519 ")
        assert ca.spec.private_keys == []
        stored = from_json((await backend.get(public_key_path(kind, CLUSTER))).value)
        assert isinstance(stored, CertAuthority)
        assert stored.spec.private_keys == []  # the public half never holds a private key
        secret = from_json((await backend.get(private_key_path(kind, CLUSTER))).value)
        assert secret.spec.private_keys[0].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert cas.user_ca.spec.public_keys != cas.host_ca.spec.public_keys
    for item in await backend.get_range("/authorities/"):
        assert b"PRIVATE KEY" not in item.value


async def test_restart_keeps_the_same_cas(backend: Backend) -> None:
    first = await open_cluster_authorities(backend, CLUSTER)
    second = await open_cluster_authorities(backend, CLUSTER)
    assert second.user_ca.spec.public_keys == first.user_ca.spec.public_keys
    assert second.host_ca.spec.public_keys == first.host_ca.spec.public_keys


async def test_two_auth_servers_starting_at_once_agree(backend: Backend) -> None:
    results = []

    async def start() -> None:
        results.append(await open_cluster_authorities(backend, CLUSTER))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(start)
    keys = {tuple(r.user_ca.spec.public_keys + r.host_ca.spec.public_keys) for r in results}
    assert len(keys) == 1
    stored = from_json((await backend.get(public_key_path("user", CLUSTER))).value)
    assert tuple(stored.spec.public_keys) == next(iter(keys))[:1]


async def test_cluster_cannot_be_renamed(backend: Backend) -> None:
    await open_cluster_authorities(backend, CLUSTER)
    with pytest.raises(ConfigError, match="cannot be renamed") as info:
        await open_cluster_authorities(backend, "other.test")
    assert info.value.key == "auth_service.cluster_name"


async def test_bad_cluster_name_and_key_type_are_config_errors(backend: Backend) -> None:
    with pytest.raises(ConfigError):
        await open_cluster_authorities(backend, "a/b")
    with pytest.raises(ConfigError, match="CA key type"):
        await open_cluster_authorities(backend, CLUSTER, key_type="ssh-dss")


async def test_user_certificate_default_ttl(
    backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER)
    key = PrivateKey.generate().public
    cert = await cas.sign_user_certificate(
        key, user=ALICE, roles=[preset_roles()["access"]], now=clock()
    )
    listed = await keygen_list(tmp_path, cert)
    assert listed["Type"] == "ssh-ed25519-cert-v01@openssh.com user certificate"
    assert listed["Key ID"] == '"alice"'
    assert listed["Valid"] == f"from {utc(START - 60)} to {utc(START + 23 * 3600)}"
    assert listed["Principals"] == ["alice", "root"]
    assert listed["Critical Options"] == []
    extensions = listed["Extensions"]
    assert isinstance(extensions, list)
    assert "permit-pty" in extensions
    assert "permit-port-forwarding" in extensions
    assert "permit-agent-forwarding" in extensions
    assert not any(e.startswith("permit-X11") or e == "permit-user-rc" for e in extensions)
    assert any(e.startswith("trioport-roles@trioport.dev") for e in extensions)

    checked = check_certificate(
        cert,
        cert_type=CertType.USER,
        trusted_cas=cas.public_keys("user"),
        principal="root",
        now=clock(),
    )
    assert checked.permit_pty and checked.permit_agent_forwarding
    assert checked.roles == ("access",)
    assert checked.cluster == CLUSTER
    assert checked.key_id == "alice"


@pytest.mark.parametrize(
    ("requested", "max_ttl", "expected"),
    [
        (10, None, 60),  # below the floor: one minute
        (100 * 3600, dt.timedelta(hours=48), 30 * 3600),  # above the ceiling: thirty hours
        (100 * 3600, None, 23 * 3600),  # a role's default limit is 23 hours
        (3600, None, 3600),
        (None, dt.timedelta(hours=2), 2 * 3600),  # the role's limit wins
        (30 * 3600, dt.timedelta(hours=8), 8 * 3600),
    ],
)
async def test_user_certificate_ttl_is_clamped(
    backend: Backend,
    clock: FakeClock,
    tmp_path: Path,
    requested: float | None,
    max_ttl: dt.timedelta | None,
    expected: int,
) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER)
    roles = [role("dev", max_ttl=max_ttl, logins=["dev"])]
    cert = await cas.sign_user_certificate(
        PrivateKey.generate().public, user=ALICE, roles=roles, now=clock(), ttl=requested
    )
    valid = (await keygen_list(tmp_path, cert))["Valid"]
    assert valid == f"from {utc(START - 60)} to {utc(START + expected)}"
    assert cert.valid_before - int(START) == expected


async def test_smallest_role_limit_wins(backend: Backend, clock: FakeClock) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER)
    roles = [
        role("a", max_ttl=dt.timedelta(hours=10), logins=["a"]),
        role("b", max_ttl=dt.timedelta(hours=3), logins=["b"]),
    ]
    cert = await cas.sign_user_certificate(
        PrivateKey.generate().public, user=ALICE, roles=roles, now=clock()
    )
    assert cert.valid_before - int(START) == 3 * 3600


async def test_user_without_logins_gets_a_placeholder_principal(
    backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER)
    nobody = User(metadata=Metadata(name="auditor1"), spec=UserSpec(roles=["auditor"]))
    cert = await cas.sign_user_certificate(
        PrivateKey.generate().public, user=nobody, roles=[preset_roles()["auditor"]], now=clock()
    )
    principals = (await keygen_list(tmp_path, cert))["Principals"]
    assert isinstance(principals, list) and len(principals) == 1
    assert principals[0].startswith("-trioport-nologin-")
    # And no forwarding for a role that does not allow it.
    assert set(cert.extensions) == {
        "permit-pty",
        "trioport-roles@trioport.dev",
        "trioport-cluster@trioport.dev",
    }


async def test_host_certificate(backend: Backend, clock: FakeClock, tmp_path: Path) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER)
    host_id = "5f0c7a8e-8c44-4c2e-9d6a-0a1b2c3d4e5f"
    cert = await cas.sign_host_certificate(
        PrivateKey.generate().public,
        host_id=host_id,
        node_name="web1",
        addresses=["10.0.0.5", "::1"],
        role=ServiceRole.NODE,
        now=clock(),
    )
    listed = await keygen_list(tmp_path, cert)
    assert listed["Type"] == "ssh-ed25519-cert-v01@openssh.com host certificate"
    assert listed["Principals"] == [
        host_id,
        f"{host_id}.{CLUSTER}",
        "web1",
        f"web1.{CLUSTER}",
        "10.0.0.5",
        "::1",
    ]
    checked = check_certificate(
        cert,
        cert_type=CertType.HOST,
        trusted_cas=cas.public_keys("host"),
        principal=f"web1.{CLUSTER}",
        now=clock() + 365 * 86400,
    )
    assert checked.service_role is ServiceRole.NODE
    assert checked.cluster == CLUSTER
    # A host certificate is not trusted as a user certificate, nor by the user CA.
    with pytest.raises(CertificateInvalid, match="untrusted CA"):
        check_certificate(
            cert,
            cert_type=CertType.HOST,
            trusted_cas=cas.public_keys("user"),
            principal="web1",
            now=clock(),
        )


async def test_rsa_ca_signs_with_rsa_sha2_512(
    backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER, key_type="ssh-rsa", rsa_bits=2048)
    assert cas.user_ca.spec.public_keys[0].startswith("ssh-rsa ")
    cert = await cas.sign_user_certificate(
        PrivateKey.generate().public, user=ALICE, roles=[preset_roles()["access"]], now=clock()
    )
    assert cert.signature_algorithm == "rsa-sha2-512"
    assert str((await keygen_list(tmp_path, cert))["Signing CA"]).endswith("(using rsa-sha2-512)")


async def test_export_lines(backend: Backend, tmp_path: Path) -> None:
    cas = await open_cluster_authorities(backend, CLUSTER)
    (user_line,) = authorized_keys_line(cas.user_ca)
    assert user_line.startswith("cert-authority ssh-ed25519 AAAA")
    assert user_line.endswith(f" type=user&clustername={CLUSTER}")
    (host_line,) = known_hosts_line(cas.host_ca)
    assert host_line.startswith(f"@cert-authority *.{CLUSTER} ssh-ed25519 AAAA")
    assert host_line.split()[2:4] == cas.host_ca.spec.public_keys[0].split()[:2]
    # ssh-keygen reads the authorized_keys line as the user CA's key.
    path = tmp_path / "authorized_keys"
    path.write_text(user_line + "\n")
    result = await trio.run_process([SSH_KEYGEN, "-l", "-f", str(path)], capture_stdout=True)
    assert result.stdout.decode().split()[1] == cas.public_keys("user")[0].fingerprint()
