"""The proxy's SSH port: who may log in, what each channel and subsystem does.

The certificate checks are tested on :class:`ProxySSHHandler` with a CA made here
(so expiry, other clusters and source addresses are easy to build); the rest runs
over a real cluster with a stand-in node, through the client library tsh uses.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from tests.roles.proxy.cluster import LOGIN, Cluster, open_cluster
from trioport.authclient import AuthClient, auth_host_verifier
from trioport.errors import AuthenticationFailed, CertificateInvalid, ChannelOpenError
from trioport.roles.proxy import client as pc
from trioport.roles.proxy.ssh_proxy import SUBSYSTEM_AUTH, ProxySSHHandler
from trioport.ssh import KeySigner, Signer, authenticate, connect, open_ssh
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto.certs import (
    Certificate,
    CertType,
    ServiceRole,
    check_certificate,
    sign_certificate,
    trioport_extensions,
)
from trioport.sshproto.keys import PrivateKey, PublicKey, parse_public_key, public_key_from_line

CLUSTER = "example.test"
NOW = 1_700_000_000


@dataclass
class _State:
    cluster_name: str
    user_cas: list[PublicKey]
    clock: object = field(default=lambda: float(NOW))


def _cert(
    ca: PrivateKey,
    key: PrivateKey,
    *,
    cert_type: CertType = CertType.USER,
    cluster: str = CLUSTER,
    valid: tuple[int, int] = (NOW - 60, NOW + 3600),
    critical: dict[str, str] | None = None,
) -> Certificate:
    return sign_certificate(
        ca,
        key.public,
        cert_type=cert_type,
        key_id="alice",
        principals=["alice"],
        valid_after=valid[0],
        valid_before=valid[1],
        nonce=secrets.token_bytes(32),
        critical_options=critical or {},
        extensions={"permit-pty": None, **trioport_extensions(roles=["access"], cluster=cluster)},
    )


def _request(blob: bytes) -> ev.UserauthRequest:
    return ev.UserauthRequest(
        username="root", method="publickey", public_key=blob, algorithm="x", signature_ok=True
    )


@pytest.fixture(scope="module")
def keys() -> tuple[PrivateKey, PrivateKey]:
    return PrivateKey.generate(), PrivateKey.generate()


def test_a_certificate_of_the_cluster_logs_in_whatever_the_login(
    keys: tuple[PrivateKey, PrivateKey],
) -> None:
    ca, user = keys
    handler = ProxySSHHandler(_State(CLUSTER, [ca.public]))  # type: ignore[arg-type]
    result = handler.check_user_certificate(_request(_cert(ca, user).blob), "127.0.0.1")
    assert result.key_id == "alice" and result.roles == ("access",)


@pytest.mark.parametrize(
    ("make", "error", "why"),
    [
        (lambda ca, user, other: user.public.blob, AuthenticationFailed, "plain key"),
        (lambda ca, user, other: _cert(other, user).blob, CertificateInvalid, "CA"),
        (
            lambda ca, user, other: _cert(ca, user, valid=(NOW - 7200, NOW - 60)).blob,
            CertificateInvalid,
            "expired",
        ),
        (
            lambda ca, user, other: _cert(ca, user, cluster="other.test").blob,
            CertificateInvalid,
            "cluster 'other.test'",
        ),
        (
            lambda ca, user, other: _cert(ca, user, cert_type=CertType.HOST).blob,
            CertificateInvalid,
            "host certificate",
        ),
        (
            lambda ca, user, other: (
                _cert(ca, user, critical={"source-address": "192.0.2.0/24"}).blob
            ),
            CertificateInvalid,
            "source",
        ),
    ],
    ids=["plain-key", "other-ca", "expired", "other-cluster", "host-cert", "source-address"],
)
def test_certificates_the_proxy_refuses(
    keys: tuple[PrivateKey, PrivateKey], make: object, error: type[Exception], why: str
) -> None:
    ca, user = keys
    other = PrivateKey.generate()
    handler = ProxySSHHandler(_State(CLUSTER, [ca.public]))  # type: ignore[arg-type]
    with pytest.raises(error, match=why):
        handler.check_user_certificate(_request(make(ca, user, other)), "127.0.0.1")  # type: ignore[operator]


# --- over a real cluster ----------------------------------------------------------------


@dataclass
class Login:
    signers: list[Signer]
    host_cas: list[PublicKey]


async def _login(cluster: Cluster, name: str) -> Login:
    await cluster.add_user(name)
    key = PrivateKey.generate()
    reply = await cluster.https_login(name, key)
    cert = public_key_from_line(reply["cert"])
    return Login(
        [KeySigner(key, certificate=cert.blob)],
        [public_key_from_line(line) for line in reply["host_ca"]],
    )


def _proxy(cluster: Cluster, login: Login, as_login: str = LOGIN) -> object:
    return pc.connect_proxy(
        cluster.ssh_addr,
        login=as_login,
        signers=login.signers,
        host_cas=login.host_cas,
        cluster=cluster.name,
    )


async def test_the_proxy_presents_a_proxy_host_certificate(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await _login(cluster, "alice")
        async with _proxy(cluster, alice) as proxy:  # type: ignore[attr-defined]
            blob = proxy.host_key
        cert = parse_public_key(blob)
        assert isinstance(cert, Certificate)
        result = check_certificate(
            cert,
            cert_type=CertType.HOST,
            trusted_cas=alice.host_cas,
            principal="127.0.0.1",
            now=time.time(),
        )
        assert result.service_role is ServiceRole.PROXY and result.cluster == cluster.name
        assert {"proxy1", f"proxy1.{cluster.name}", "::1"} <= set(cert.principals)


async def test_plain_keys_are_refused_and_audited(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await _login(cluster, "alice")
        config = ConnectionConfig(
            role=Role.CLIENT,
            verify_host_key=pc.host_verifier(alice.host_cas, cluster.name, ServiceRole.PROXY),
        )
        with pytest.raises(AuthenticationFailed):
            async with connect(
                "127.0.0.1",
                cluster.ssh_addr.port,
                username="mallory",
                signers=[PrivateKey.generate()],
                config=config,
            ):
                pass
        with trio.fail_after(10):
            # The proxy records the event in the background: poll the audit log.
            while not (events := await cluster.events("auth")):  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert events[-1]["user"] == "mallory" and events[-1]["success"] is False
        assert events[-1]["service"] == "proxy"


async def test_the_proxy_runs_nothing_itself_and_offers_only_its_subsystems(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await _login(cluster, "alice")
        async with _proxy(cluster, alice) as proxy:  # type: ignore[attr-defined]
            result = await proxy.run("id")
            assert result.exit_status == 1
            assert b"this is trioport's proxy" in result.stderr and b"tsh ssh" in result.stderr
            chan = await proxy.open_session()
            assert not await chan.request(ev.Subsystem(name="sftp"))
            await chan.aclose()
            with pytest.raises(ChannelOpenError, match="does not open"):
                await proxy.open_channel("x11")


async def test_node_listing_and_direct_tcpip_refusals(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_standin_node("web1", {"env": "prod"})
        alice = await _login(cluster, "alice")
        async with _proxy(cluster, alice) as proxy:  # type: ignore[attr-defined]
            name, nodes = await pc.list_nodes(proxy)
            assert name == cluster.name
            assert [(n.hostname, dict(n.labels)) for n in nodes] == [("web1", {"env": "prod"})]
            with pytest.raises(ChannelOpenError, match=r"no node 'nosuch'.*web1"):
                await proxy.open_channel("direct-tcpip", host="nosuch", port=22)
            chan = await proxy.open_channel("direct-tcpip", host=f"web1.{cluster.name}", port=22)
            assert (await chan.receive_some()).startswith(b"SSH-2.0-")  # the node's banner
            await chan.aclose()


async def test_an_unreachable_node_is_reported(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        node = await cluster.add_standin_node("gone")
        alice = await _login(cluster, "alice")
        # The node now reports a port nothing listens on.
        spare = trio.socket.socket()
        await spare.bind(("127.0.0.1", 0))
        dead = spare.getsockname()[1]
        spare.close()
        await cluster.heartbeat(node, addr=f"127.0.0.1:{dead}")
        async with _proxy(cluster, alice) as proxy:  # type: ignore[attr-defined]
            with pytest.raises(pc.ProxyRefused, match="cannot reach node 'gone'"):
                async with pc.connect_node(
                    proxy,
                    "gone",
                    22,
                    login=LOGIN,
                    signers=alice.signers,
                    host_cas=alice.host_cas,
                    cluster=cluster.name,
                ):
                    pass


async def test_the_auth_subsystem_reaches_the_auth_api_as_the_user(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await _login(cluster, "alice")
        async with _proxy(cluster, alice) as proxy:  # type: ignore[attr-defined]
            chan = await proxy.open_session()
            assert await chan.request(ev.Subsystem(name=SUBSYSTEM_AUTH))
            verify = auth_host_verifier(alice.host_cas, cluster.name)
            config = ConnectionConfig(role=Role.CLIENT, verify_host_key=verify)
            async with open_ssh(chan, config) as conn:
                await authenticate(conn, "alice", signers=alice.signers)
                client = AuthClient(conn, "via proxy")
                whoami = await client.whoami()
                assert (whoami["kind"], whoami["name"]) == ("user", "alice")
                nodes = await client.call("GET", "/v1/nodes")
                assert json.dumps(nodes)  # her roles let her list nodes
                await client.aclose()
