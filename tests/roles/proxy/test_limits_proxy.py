"""The proxy's limits on a real cluster: certificate expiry, idle connections, the
HTTPS rate limit, and sessions per connection.

A second proxy is started next to the cluster's, with the limits under test in
its ``teleport.connection_limits`` and, for expiry, a wall clock that runs ahead:
the certificate it sees has seconds left, not hours. Each test shows the refusal
or disconnection with its reason, and another user who keeps being served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.roles.proxy.cluster import LOGIN, Cluster, ClusterUser, open_cluster
from tests.roles.proxy.test_ssh_proxy import Login, _login
from trioport.config import Address, loads_config
from trioport.errors import ChannelOpenError, ChannelOpenFailureReason, ConnectionClosedError
from trioport.roles.proxy import client as pc
from trioport.roles.proxy.service import ProxyAddresses
from trioport.roles.proxy.service import serve as serve_proxy
from trioport.ssh import KeySigner, SSHConnection
from trioport.sshproto.certs import Certificate
from trioport.sshproto.keys import PrivateKey, parse_public_key, public_key_from_line
from trioport.tls import client_context

#: Bound for each test body; the tests take far less.
TIMEOUT = 60


async def _second_proxy(
    cluster: Cluster, limits: str, *, clock: Callable[[], float] = time.time
) -> ProxyAddresses:
    async with cluster.admin_client() as client:
        token = (await client.add_token(["proxy"]))["token"]
    config = loads_config(
        f"""
teleport:
  nodename: proxy2
  data_dir: {cluster.tmp_path / "proxy2"}
  auth_servers: ["{cluster.auth_addr}"]
  connection_limits:
{limits}
auth_service:
  enabled: false
ssh_service:
  enabled: false
proxy_service:
  listen_addr: 127.0.0.1:0
  web_listen_addr: 127.0.0.1:0
"""
    )
    return await cluster.nursery.start(
        lambda **kw: serve_proxy(config, join_token=token, clock=clock, **kw)
    )


def _connect(addrs: ProxyAddresses, login: Login, cluster: Cluster) -> object:
    host, port = addrs.ssh[0]
    return pc.connect_proxy(
        Address(str(host), int(port)),
        login=LOGIN,
        signers=login.signers,
        host_cas=login.host_cas,
        cluster=cluster.name,
    )


async def _closed_because(conn: SSHConnection) -> str:
    await conn.wait_closed()
    assert isinstance(conn.error, ConnectionClosedError), conn.error
    return conn.error.description


async def _login_as(cluster: Cluster, user: ClusterUser) -> Login:
    """Log ``user`` in through the cluster's proxy (what ``tsh login`` does)."""
    key = PrivateKey.generate()
    reply = await cluster.https_login(user.name, key)
    cert = public_key_from_line(reply["cert"])
    return Login(
        [KeySigner(key, certificate=cert.blob)],
        [public_key_from_line(line) for line in reply["host_ca"]],
    )


def _valid_before(login: Login) -> float:
    cert = parse_public_key(login.signers[0].public_blob)
    assert isinstance(cert, Certificate)
    return float(cert.valid_before)


async def test_an_expired_certificate_is_disconnected_when_a_role_says_so(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        with trio.fail_after(TIMEOUT):
            await cluster.add_role(
                {
                    "kind": "role",
                    "version": "v1",
                    "metadata": {"name": "expiring"},
                    "spec": {"options": {"disconnect_expired_cert": True}},
                }
            )
            await cluster.add_standin_node("web1")
            alice = await _login_as(cluster, await cluster.add_user("alice"))
            carol = await _login_as(
                cluster, await cluster.add_user("carol", roles=["access", "expiring"])
            )
            # The second proxy's clock runs ahead: the certificates have 3 s left.
            ahead = min(_valid_before(alice), _valid_before(carol)) - time.time() - 3.0
            addrs = await _second_proxy(
                cluster, "    max_sessions: 10", clock=lambda: time.time() + ahead
            )
            async with (
                _connect(addrs, carol, cluster) as carol_conn,  # type: ignore[attr-defined]
                _connect(addrs, alice, cluster) as alice_conn,  # type: ignore[attr-defined]
            ):
                assert await _closed_because(carol_conn) == "your certificate has expired"
                # Alice's roles do not ask for it: her connection stays, and
                # still reaches nodes, once her certificate too has expired.
                with trio.fail_after(10):
                    while time.time() + ahead < _valid_before(alice):  # noqa: ASYNC110
                        await trio.sleep(0.1)
                assert not alice_conn.closed
                _name, nodes = await pc.list_nodes(alice_conn)
                assert [n.hostname for n in nodes] == ["web1"]


async def test_an_idle_connection_is_disconnected_and_a_busy_one_is_not(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        with trio.fail_after(TIMEOUT):
            await cluster.add_standin_node("web1")
            alice = await _login(cluster, "alice")
            bob = await _login(cluster, "bob")
            addrs = await _second_proxy(cluster, "    client_idle_timeout: 1s")
            async with (
                _connect(addrs, alice, cluster) as idle,  # type: ignore[attr-defined]
                _connect(addrs, bob, cluster) as busy,  # type: ignore[attr-defined]
                pc.connect_node(
                    busy,
                    "web1",
                    22,
                    login=LOGIN,
                    signers=bob.signers,
                    host_cas=bob.host_cas,
                    cluster=cluster.name,
                ) as node,
            ):
                async with trio.open_nursery() as nursery:

                    async def keep_busy() -> None:
                        # Well past the timeout, a command every 0.3 s.
                        for _ in range(10):
                            result = await node.run("echo busy")
                            assert result.stdout == b"busy\n"
                            await trio.sleep(0.3)

                    nursery.start_soon(keep_busy)
                    reason = await _closed_because(idle)
                    assert reason == "idle timeout: no activity for 1 seconds"
                assert not busy.closed


async def test_login_attempts_are_rate_limited_per_source(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        with trio.fail_after(TIMEOUT):
            addrs = await _second_proxy(
                cluster, "    rates:\n      - period: 1m\n        average: 1\n        burst: 2"
            )
            host, port = addrs.web[0]
            cert = cluster.tmp_path / "proxy2" / "proxy" / "https" / "cert.pem"

            def attempts() -> tuple[list[int], int]:
                ctx = client_context(cafile=cert)
                with httpx.Client(verify=ctx, base_url=f"https://{host}:{port}") as http:
                    body = {"user": "nobody", "password": "x", "otp_token": "000000"}
                    statuses = [
                        http.post("/v1/webapi/ssh/certs", json=body).status_code for _ in range(3)
                    ]
                    return statuses, http.get("/v1/webapi/ping").status_code

            statuses, ping = await trio.to_thread.run_sync(attempts)
            assert statuses[:2] != [429, 429] and statuses[2] == 429
            assert ping == 200  # endpoints without credentials are not limited


async def test_sessions_per_connection_on_the_proxy(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        with trio.fail_after(TIMEOUT):
            await cluster.add_standin_node("web1")
            alice = await _login(cluster, "alice")
            addrs = await _second_proxy(cluster, "    max_sessions: 2")
            async with _connect(addrs, alice, cluster) as conn:  # type: ignore[attr-defined]
                held = [await conn.open_session() for _ in range(2)]
                with pytest.raises(ChannelOpenError) as info:
                    await conn.open_session()
                assert info.value.reason == ChannelOpenFailureReason.RESOURCE_SHORTAGE
                assert "too many sessions on this connection (at most 2)" in str(info.value)
                # ssh -J's channels are not sessions, and still reach the node.
                tunnel = await conn.open_channel("direct-tcpip", host="web1", port=22)
                assert (await tunnel.receive_some()).startswith(b"SSH-2.0-")
                for chan in held:
                    await chan.aclose()
