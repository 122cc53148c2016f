"""Joining hosts and logging users in through the AuthServer: races and CVE-2021-41393."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from trioport.errors import AccessDenied, AuthenticationFailed, KeyFormatError
from trioport.roles.auth.server import AuthServer, open_auth_server
from trioport.sshproto.certs import CertType, ServiceRole, check_certificate
from trioport.sshproto.keys import PrivateKey, PublicKey
from trioport.store.backend import Backend

from .conftest import CLUSTER, START, TEST_BCRYPT_COST, FakeClock, totp_now
from .test_users import PASSWORD, enrol


def new_key() -> PublicKey:
    return PrivateKey.generate().public


async def node_token(auth: AuthServer, *roles: str) -> str:
    return (await auth.tokens.add(list(roles) or ["node"])).name


async def events(auth: AuthServer, *names: str) -> list[dict[str, object]]:
    found = await auth.audit.search(since=START - 1, until=START + 10 * 86400, events=names)
    return [e.to_record() for e in found]


async def test_join_gives_a_host_certificate(auth: AuthServer, clock: FakeClock) -> None:
    key = new_key()
    result = await auth.join(
        token=await node_token(auth),
        public_key=key.openssh_line(),
        node_name="web1",
        addresses=["10.0.0.5"],
        remote_addr="10.0.0.5:41000",
    )
    host_id = result.host_id
    assert str(uuid.UUID(host_id)) == host_id
    cert = result.certificate
    assert cert.key == key
    assert cert.cert_type is CertType.HOST
    assert list(cert.principals) == [
        host_id,
        f"{host_id}.{CLUSTER}",
        "web1",
        f"web1.{CLUSTER}",
        "10.0.0.5",
    ]
    checked = check_certificate(
        cert,
        cert_type=CertType.HOST,
        trusted_cas=auth.ca.public_keys("host"),
        principal="web1",
        now=clock(),
    )
    assert checked.service_role is ServiceRole.NODE
    assert checked.cluster == CLUSTER
    assert result.host_ca.spec.private_keys == [] and result.user_ca.spec.private_keys == []
    (joined,) = await events(auth, "instance.join")
    assert joined["code"] == "TJ002I" and joined["server_id"] == host_id
    (issued,) = await events(auth, "cert.create")
    assert issued["code"] == "TC000I"
    identity = await auth.nodes.get_identity(host_id)
    assert identity.name == "web1" and identity.public_key == key.openssh_line()


async def test_join_as_proxy_needs_a_proxy_token(auth: AuthServer, clock: FakeClock) -> None:
    with pytest.raises(AuthenticationFailed):
        await auth.join(
            token=await node_token(auth, "node"),
            public_key=new_key(),
            node_name="proxy1",
            role="proxy",
        )
    token = await node_token(auth, "proxy")
    result = await auth.join(token=token, public_key=new_key(), node_name="proxy1", role="proxy")
    checked = check_certificate(
        result.certificate,
        cert_type=CertType.HOST,
        trusted_cas=auth.ca.public_keys("host"),
        principal=f"proxy1.{CLUSTER}",
        now=clock(),
    )
    assert checked.service_role is ServiceRole.PROXY


async def test_a_token_joins_one_host(auth: AuthServer) -> None:
    token = await node_token(auth)
    await auth.join(token=token, public_key=new_key(), node_name="web1")
    with pytest.raises(AuthenticationFailed):
        await auth.join(token=token, public_key=new_key(), node_name="web2")
    failure = (await events(auth, "TJ002E"))[0]
    assert failure["success"] is False
    assert token not in str(failure) and failure["token"] == "*" * 24 + token[-8:]


async def test_simultaneous_joins_with_one_token_make_one_node(
    any_backend: Backend, tmp_path: Path
) -> None:
    async with open_auth_server(
        any_backend,
        data_dir=tmp_path / "data",
        cluster_name=CLUSTER,
        bcrypt_cost=TEST_BCRYPT_COST,
    ) as auth:
        token = await node_token(auth)
        joined: list[str] = []
        refused: list[str] = []

        async def join(i: int) -> None:
            try:
                result = await auth.join(token=token, public_key=new_key(), node_name=f"n{i}")
            except AuthenticationFailed:
                refused.append(f"n{i}")
            else:
                joined.append(result.host_id)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(join, i)
        assert len(joined) == 1 and len(refused) == 7
        identities = await auth.nodes.list_identities()
        assert [i.host_id for i in identities] == joined
        # The losers' names were released: nothing but the winner's four names is held.
        assert len(await any_backend.get_range("/host_names/")) == 4


async def test_no_certificate_for_another_hosts_name_or_uuid(auth: AuthServer) -> None:
    """Teleport CVE-2021-41393: a joining host asks for a registered host's identity."""
    victim = await auth.join(
        token=await node_token(auth), public_key=new_key(), node_name="db-prod"
    )
    attacker_key = new_key()
    token = await node_token(auth)
    attempts = [
        {"node_name": "db-prod"},
        {"node_name": "DB-Prod"},
        {"node_name": f"db-prod.{CLUSTER}"},
        {"node_name": victim.host_id},
        {"node_name": f"{victim.host_id}.{CLUSTER}"},
        {"node_name": "attacker", "host_id": victim.host_id},
        {"node_name": "db-prod", "host_id": victim.host_id},
    ]
    for attempt in attempts:
        with pytest.raises(AccessDenied):
            await auth.join(token=token, public_key=attacker_key, **attempt)  # type: ignore[arg-type]
    for bad in ({"node_name": "*"}, {"node_name": "db-*"}, {"node_name": "a,b"}):
        with pytest.raises(ValueError):
            await auth.join(token=token, public_key=attacker_key, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an IP address"):
        await auth.join(
            token=token, public_key=attacker_key, node_name="attacker", addresses=["db-prod"]
        )
    # None of the refusals spent the token, and none took a name.
    result = await auth.join(token=token, public_key=attacker_key, node_name="attacker")
    assert "db-prod" not in result.certificate.principals
    assert victim.host_id not in result.certificate.principals
    # And a registered host cannot renew under another identity or key.
    with pytest.raises(AccessDenied):
        await auth.host_certificate(victim.host_id, attacker_key, role="node")


async def test_a_host_can_join_again_with_its_own_key(auth: AuthServer) -> None:
    key = new_key()
    first = await auth.join(token=await node_token(auth), public_key=key, node_name="web1")
    again = await auth.join(
        token=await node_token(auth), public_key=key, node_name="web1", host_id=first.host_id
    )
    assert again.host_id == first.host_id
    renewed = await auth.host_certificate(
        first.host_id, key, role=ServiceRole.NODE, addresses=["10.1.1.1"]
    )
    assert "web1" in renewed.principals and "10.1.1.1" in renewed.principals


async def test_a_removed_host_frees_its_name(auth: AuthServer) -> None:
    old = await auth.join(token=await node_token(auth), public_key=new_key(), node_name="web1")
    await auth.nodes.release_identity(old.host_id)
    new = await auth.join(token=await node_token(auth), public_key=new_key(), node_name="web1")
    assert new.host_id != old.host_id


async def test_a_certificate_cannot_be_certified(auth: AuthServer) -> None:
    token = await node_token(auth)
    cert = (await auth.join(token=token, public_key=new_key(), node_name="web1")).certificate
    token = await node_token(auth)
    with pytest.raises(KeyFormatError):
        await auth.join(token=token, public_key=cert, node_name="web2")
    with pytest.raises(KeyFormatError):
        await auth.join(token=token, public_key="ssh-ed25519 not-base64!", node_name="web2")
    await auth.tokens.check(token, "node")  # still unspent


# --- login ---------------------------------------------------------------------------


async def test_login_returns_a_user_certificate(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    key = new_key()
    result = await auth.login(
        user="alice",
        password=PASSWORD,
        totp_code=totp_now(secret, clock),
        public_key=key.openssh_line(),
        ttl=3600,
        remote_addr="192.0.2.7:40000",
    )
    cert = result.certificate
    assert cert.key == key and cert.key_id == "alice"
    assert sorted(cert.principals) == ["alice", "root"]
    assert cert.valid_after == int(clock()) - 60
    assert cert.valid_before == int(clock()) + 3600
    assert result.host_ca.spec.type == "host"
    (issued,) = await events(auth, "cert.create")
    assert issued["user"] == "alice"


async def test_login_with_a_bad_key_does_not_spend_the_code(
    auth: AuthServer, clock: FakeClock
) -> None:
    secret = await enrol(auth, clock, "alice")
    code = totp_now(secret, clock)
    with pytest.raises(KeyFormatError):
        await auth.login(user="alice", password=PASSWORD, totp_code=code, public_key="junk")
    await auth.login(user="alice", password=PASSWORD, totp_code=code, public_key=new_key())


async def test_login_failure(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    with pytest.raises(AuthenticationFailed):
        await auth.login(
            user="alice",
            password="wrong password!!",
            totp_code=totp_now(secret, clock),
            public_key=new_key(),
        )
    assert await events(auth, "cert.create") == []


async def test_user_certificate_for_a_web_session(auth: AuthServer, clock: FakeClock) -> None:
    await enrol(auth, clock, "alice")
    cert = await auth.user_certificate("alice", new_key(), ttl=600)
    assert cert.valid_before == int(clock()) + 600
