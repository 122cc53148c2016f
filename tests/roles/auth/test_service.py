"""The auth service over the network: serve(), its SSH port, identities, joining, logins.

Each test starts the real service (SQLite under a temporary data directory) on a
free loopback port and talks to it through :mod:`trioport.authclient`, the way
nodes, proxies and tctl do.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trioport.authclient import (
    ADMIN_USER,
    JOIN_USER,
    AuthClient,
    AuthServiceUnavailable,
    ClientIdentity,
    connect_auth,
    join_cluster,
)
from trioport.config import Address, AuthService, Config, Global
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    CertificateInvalid,
    ChannelOpenError,
    HostKeyNotVerifiable,
)
from trioport.resources import Metadata, Node, NodeSpec, User
from trioport.roles.auth import service
from trioport.roles.auth.api import AuthAPI, IdentityKind
from trioport.roles.auth.server import AuthServer
from trioport.ssh import KeySigner, authenticate, connect, open_ssh
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto.certs import (
    CertType,
    ServiceRole,
    check_certificate,
    parse_certificate,
    sign_certificate,
)
from trioport.sshproto.keys import PrivateKey

from .conftest import CLUSTER, TEST_BCRYPT_COST, FakeClock, totp_now
from .test_users import PASSWORD


@attrs.define
class Running:
    addr: tuple[str, int]
    data_dir: Path
    clock: FakeClock

    def admin(self) -> ClientIdentity:
        return ClientIdentity.load(self.data_dir / "admin")

    def audit(self) -> list[dict[str, object]]:
        out = []
        for path in sorted((self.data_dir / "log").glob("*.log")):
            out += [json.loads(line) for line in path.read_text().splitlines()]
        return out


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    clock = FakeClock(time.time())
    data_dir = tmp_path / "data"
    config = Config(
        teleport=Global(data_dir=str(data_dir), nodename="auth1"),
        auth_service=AuthService(listen_addr=Address("127.0.0.1", 0), cluster_name=CLUSTER),
    )
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(
            lambda task_status: service.serve(
                config, task_status=task_status, clock=clock, bcrypt_cost=TEST_BCRYPT_COST
            )
        )
        yield Running(tuple(addrs[0]), data_dir, clock)
        nursery.cancel_scope.cancel()


async def new_token(running: Running, *roles: str) -> str:
    async with connect_auth(running.addr, running.admin()) as admin:
        return str((await admin.add_token(list(roles) or ["node"]))["token"])


async def joined(running: Running, name: str, role: str = "node") -> ClientIdentity:
    key = PrivateKey.generate()
    result = await join_cluster(
        running.addr, token=await new_token(running, role), key=key, node_name=name, role=role
    )
    return result.identity(key)


async def test_first_start_writes_the_admin_identity(running: Running) -> None:
    folder = running.data_dir / "admin"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("key", "key-cert.pub", "known_hosts"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert (running.data_dir / "backend" / "sqlite.db").exists()
    identity = running.admin()
    assert identity.certificate.key_id == ADMIN_USER
    assert identity.certificate.cert_type is CertType.USER
    async with connect_auth(running.addr, identity) as admin:
        assert (await admin.whoami())["kind"] == "admin"
        # The server presented a host certificate for the auth role, from the host CA.
        server_cert = parse_certificate(admin.conn.host_key or b"")
        checked = check_certificate(
            server_cert,
            cert_type=CertType.HOST,
            trusted_cas=identity.host_cas,
            principal="auth1",
            now=time.time(),
        )
        assert checked.service_role is ServiceRole.AUTH
        assert checked.cluster == CLUSTER


async def test_the_admin_identity_is_renewed_with_the_same_key(
    tmp_path: Path, auth: AuthServer
) -> None:
    first = await service.issue_admin_identity(auth, tmp_path / "admin")
    second = await service.issue_admin_identity(auth, tmp_path / "admin")
    assert first.key.public == second.key.public
    assert first.certificate.serial != second.certificate.serial
    assert ClientIdentity.load(tmp_path / "admin").certificate == second.certificate


async def test_join_over_the_network_gives_a_host_certificate_that_validates(
    running: Running,
) -> None:
    key = PrivateKey.generate()
    token = await new_token(running, "node")
    result = await join_cluster(
        running.addr, token=token, key=key, node_name="web1", addresses=["10.0.0.7"]
    )
    assert result.cluster_name == CLUSTER
    host_cas = result.identity(key).host_cas
    checked = check_certificate(
        result.certificate,
        cert_type=CertType.HOST,
        trusted_cas=host_cas,
        principal="web1",
        now=time.time(),
    )
    assert checked.service_role is ServiceRole.NODE
    assert set(result.certificate.principals) >= {result.host_id, "web1", "10.0.0.7"}
    assert result.certificate.key == key.public
    # The token was single-use.
    with pytest.raises(AuthenticationFailed, match="invalid, expired or already used"):
        await join_cluster(running.addr, token=token, key=PrivateKey.generate(), node_name="web2")
    # From now on the node logs in with its certificate, as a node.
    identity = result.identity(key)
    identity.save(running.data_dir / "node-identity")
    identity = ClientIdentity.load(running.data_dir / "node-identity")
    async with connect_auth(running.addr, identity) as node:
        me = await node.whoami()
        assert (me["kind"], me["name"], me["host_id"]) == ("node", "web1", result.host_id)
        report = Node(
            metadata=Metadata(name=result.host_id, labels={"env": "prod"}),
            spec=NodeSpec(hostname="web1", addr="10.0.0.7:3022"),
        )
        assert (await node.heartbeat(report))["online"] is True
        with pytest.raises(AccessDenied, match="a node may not call POST /v1/users"):
            await node.add_user("mallory", logins=["root"])
    refusals = [e for e in running.audit() if e["code"] == "T3007W"]
    assert refusals[-1]["user"] == "web1"


async def test_join_with_a_ca_pin(running: Running) -> None:
    async with connect_auth(running.addr, running.admin()) as admin:
        pin = (await admin.status())["ca_pin"]
    wrong = "sha256:" + "0" * 64
    with pytest.raises(HostKeyNotVerifiable, match="does not match the CA pin"):
        await join_cluster(
            running.addr, token="x" * 32, key=PrivateKey.generate(), node_name="db1", pin=wrong
        )
    result = await join_cluster(
        running.addr,
        token=await new_token(running),
        key=PrivateKey.generate(),
        node_name="db1",
        pin=pin,
    )
    assert result.certificate.cert_type is CertType.HOST


async def test_unauthenticated_callers_may_only_join(running: Running) -> None:
    config = ConnectionConfig(role=Role.CLIENT)
    async with connect(
        *running.addr, username=JOIN_USER, signers=[KeySigner(PrivateKey.generate())], config=config
    ) as conn:
        client = AuthClient(conn, "auth")
        with pytest.raises(AccessDenied, match="only joining is allowed without a certificate"):
            await client.list_users()
        with pytest.raises(AccessDenied):
            await client.status()
        with pytest.raises(AuthenticationFailed, match="already used"):
            await client.call(
                "POST",
                "/v1/join",
                {
                    "token": "0" * 32,
                    "public_key": PrivateKey.generate().public.openssh_line(),
                    "node_name": "x1",
                },
            )
        await client.aclose()


async def test_plain_keys_and_foreign_certificates_are_refused(running: Running) -> None:
    config = ConnectionConfig(role=Role.CLIENT)
    with pytest.raises(AuthenticationFailed):
        async with connect(
            *running.addr, username="alice", signers=[PrivateKey.generate()], config=config
        ):
            pass
    refused = [e for e in running.audit() if e["code"] == "T3007W" and e["user"] == "alice"]
    assert "accepts only certificates" in str(refused[-1]["error"])
    # The admin's certificate, signed for with a key that is not its own.
    admin = running.admin()
    impostor = attrs.evolve(admin, key=PrivateKey.generate())
    with pytest.raises(AuthenticationFailed, match="refused the certificate"):
        async with connect_auth(running.addr, impostor):
            pass


async def test_login_forwarded_by_a_proxy_over_the_network(running: Running) -> None:
    proxy_identity = await joined(running, "proxy1", role="proxy")
    async with connect_auth(running.addr, running.admin()) as admin:
        invite = await admin.add_user("alice", logins=["root", "alice"])
    async with connect_auth(running.addr, proxy_identity) as proxy:
        assert (await proxy.whoami())["kind"] == "proxy"
        enrolment = await proxy.start_enrolment(invite["token"])
        await proxy.complete_invite(
            invite["token"], PASSWORD, totp_now(enrolment["secret"], running.clock)
        )
        running.clock.advance(30)
        key = PrivateKey.generate()
        login = await proxy.login(
            "alice", PASSWORD, totp_now(enrolment["secret"], running.clock), key.public, ttl=3600
        )
        assert login.certificate.key_id == "alice"
        assert set(login.certificate.principals) == {"root", "alice"}
        with pytest.raises(AuthenticationFailed, match="invalid user name, password"):
            await proxy.login("alice", "wrong password!", "000000", key.public)
        assert await proxy.list_nodes() == []
    # Alice calls the API with her new certificate, as a user with the access role.
    cas = tuple(proxy_identity.host_cas)
    alice = ClientIdentity(
        key=key, certificate=login.certificate, host_cas=cas, cluster_name=CLUSTER
    )
    async with connect_auth(running.addr, alice) as client:
        me = await client.whoami()
        assert (me["kind"], me["name"], me["roles"]) == ("user", "alice", ["access"])
        assert await client.list_nodes() == []
        with pytest.raises(AccessDenied, match="your roles do not allow create on user"):
            await client.add_user("eve")


async def test_a_removed_host_can_no_longer_log_in(running: Running) -> None:
    node = await joined(running, "web1")
    async with connect_auth(running.addr, running.admin()) as admin:
        await admin.remove_node(node.username)
    with pytest.raises(AuthenticationFailed, match="refused the certificate"):
        async with connect_auth(running.addr, node):
            pass


async def test_a_server_of_another_cluster_is_not_trusted(running: Running) -> None:
    stranger = attrs.evolve(running.admin(), host_cas=(PrivateKey.generate().public,))
    with pytest.raises(HostKeyNotVerifiable, match=r"is not trusted: .*untrusted CA"):
        async with connect_auth(running.addr, stranger):
            pass


async def test_nothing_listening_is_a_clear_error(running: Running) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        AuthServiceUnavailable, match=f"cannot reach the auth service at 127.0.0.1:{port}"
    ):
        async with connect_auth(("127.0.0.1", port), running.admin()):
            pass


async def test_only_the_api_subsystem_is_offered(running: Running) -> None:
    async with connect_auth(running.addr, running.admin()) as admin:
        with pytest.raises(ChannelOpenError, match="refused to run the command"):
            await admin.conn.run("id")
        with pytest.raises(ChannelOpenError, match="only session channels"):
            await admin.conn.open_channel("direct-tcpip", host="127.0.0.1", port=22)
        assert (await admin.whoami())["kind"] == "admin"


async def test_identify_refuses_what_it_should(auth: AuthServer, clock: FakeClock) -> None:
    key = PrivateKey.generate()
    admin_cert = await auth.ca.sign_user_certificate(
        key.public,
        user=User(metadata=Metadata(name=ADMIN_USER)),
        roles=[],
        now=clock(),
    )
    # An admin certificate for a key that was never pinned is not an admin.
    with pytest.raises(AuthenticationFailed, match="not an administrator's key"):
        await service.identify(auth, ADMIN_USER, admin_cert.blob)
    # A user certificate used under another name.
    with pytest.raises(AuthenticationFailed, match="the user name your certificate"):
        await service.identify(auth, "root", admin_cert.blob)
    # A host certificate presented as another host's UUID.
    token = (await auth.tokens.add(["node"])).name
    joined_host = await auth.join(token=token, public_key=key.public, node_name="web1")
    cert = joined_host.certificate
    who = await service.identify(auth, joined_host.host_id, cert.blob)
    assert (who.kind.value, who.name) == ("node", "web1")
    other = "00000000-0000-0000-0000-000000000001"
    with pytest.raises(AuthenticationFailed, match="not for this host id"):
        await service.identify(auth, other, cert.blob)
    # A certificate from a CA the cluster does not trust.
    stranger = PrivateKey.generate()
    forged = sign_certificate(
        stranger,
        key.public,
        cert_type=CertType.USER,
        key_id=ADMIN_USER,
        principals=["root"],
        valid_after=0,
        valid_before=int(clock()) + 3600,
        nonce=b"n" * 32,
    )
    with pytest.raises(CertificateInvalid, match="untrusted CA"):
        await service.identify(auth, ADMIN_USER, forged.blob)


def test_proxy_public_addr() -> None:
    config = Config(teleport=Global(nodename="box"))
    assert service.proxy_public_addr(config) == "box:3080"
    config.proxy_service.public_addr = Address("proxy.example.com", 443)
    assert service.proxy_public_addr(config) == "proxy.example.com:443"


async def test_a_joining_connection_is_closed_after_the_time_limit(
    auth: AuthServer, autojump_clock: trio.testing.MockClock
) -> None:
    api = AuthAPI(auth, proxy_addr="proxy:3080")
    handler = service.AuthSSHHandler(api, join_time_limit=60)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server_config = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(PrivateKey.generate())])
    async with (
        open_ssh(server_stream, server_config, handler),
        open_ssh(client_stream, ConnectionConfig(role=Role.CLIENT)) as conn,
    ):
        await authenticate(conn, JOIN_USER, signers=[PrivateKey.generate()])
        logged_in = trio.current_time()
        assert handler.identity is not None and handler.identity.kind is IdentityKind.JOIN
        await conn.wait_closed()
        assert trio.current_time() - logged_in >= 60
        assert conn.disconnect_reason is not None
        assert conn.disconnect_reason.description == "time to join is over"
