"""High availability, proven on loopback: three etcd members, two auth services.

The auth services are real ``trioport run --roles=auth`` processes sharing one
etcd cluster of three members; a node and a proxy (in this test's trio loop) list
both auth servers. The story, in order:

1. Both auth services start at the same moment on an empty etcd: they end up with
   one cluster, one user CA and one host CA (creation is create-if-absent).
2. A user logs in through the proxy's HTTPS endpoint; the node heartbeats.
3. ``kill -9`` of the auth service everyone is connected to: logins, heartbeats
   and a new node's join go on through the other one.
4. ``kill -9`` of the etcd leader (which is also the member every auth service
   talks to first): nothing is noticed: logins work at the first try,
   heartbeats go on, ``/readyz`` stays 200 throughout.
5. Both auth services down: ``/readyz`` answers 503 "auth unreachable since ...",
   ``/healthz`` 200; shells opened before (straight to the node and through the
   proxy) keep working, and the user can open a new one straight to the node
   (the node uses its cached decision); new logins fail with 503; with auth
   back, 200 again.
6. Everything restarted (etcd, both auth services, node, proxy): the users, the
   node (same host id, no new join) and the CAs are the ones from before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import pyotp
import trio

from tests.e2e.cluster import free_ports
from trioport.authclient import AuthClient, AuthServiceUnavailable, ClientIdentity, connect_auth
from trioport.config import Address, Config, loads_config
from trioport.diag import HEALTH, Health, serve_diag
from trioport.roles.node import service as node_service
from trioport.roles.proxy import service as proxy_service
from trioport.roles.proxy.client import connect_node, connect_proxy
from trioport.ssh import ChannelStream, KeySigner, connect
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey, public_key_from_line

from .cluster import CLUSTER, JOIN_TOKEN, AuthProcess, EtcdCluster, auth_config

T = TypeVar("T")

PASSWORD = "correct horse battery staple"
USERS = ("alice", "bob", "carol", "dave")
#: Upper bound for the whole story (it takes well under a minute on a quiet machine).
STORY_TIMEOUT = 240


@attrs.define
class Story:
    """The moving parts of one run, and the helpers that drive them."""

    tmp: Path
    etcd: EtcdCluster
    auths: list[AuthProcess]
    health: Health
    secrets: dict[str, str] = attrs.Factory(dict)
    #: alice's key and certificate (from her login through the proxy).
    alice: tuple[PrivateKey, str] | None = None
    #: The host CA her login returned (to check the proxy and the node).
    host_ca: list[str] = attrs.Factory(list)

    @property
    def auth_addresses(self) -> list[str]:
        return [a.address for a in self.auths]

    def admin(self) -> ClientIdentity:
        return ClientIdentity.load(self.auths[0].data_dir / "admin")

    async def admin_call(
        self, fn: Callable[[AuthClient], Awaitable[T]], *, on: AuthProcess | None = None
    ) -> T:
        """``fn`` on the first auth service that answers (as tctl with several servers)."""
        errors = []
        for auth in self.auths if on is None else [on]:
            if auth.process is None:
                continue
            try:
                async with connect_auth(auth.address, self.admin(), connect_timeout=10) as c:
                    return await fn(c)
            except AuthServiceUnavailable as exc:
                errors.append(str(exc))
        raise AssertionError(f"no auth service answered: {errors}")

    async def add_user(self, name: str) -> None:
        async def go(c: AuthClient) -> None:
            invite = await c.add_user(name, logins=["root"])
            enrolment = await c.start_enrolment(invite["token"])
            self.secrets[name] = enrolment["secret"]
            code = pyotp.TOTP(enrolment["secret"]).at(time.time() - 30)
            await c.complete_invite(invite["token"], PASSWORD, code)

        await self.admin_call(go)

    async def login(
        self, web_port: int, name: str, key: PrivateKey | None = None
    ) -> httpx.Response:
        """``tsh login``'s request to the proxy: password, TOTP code and a new key."""
        key = key or PrivateKey.generate()
        body = {
            "user": name,
            "password": PASSWORD,
            "otp_token": pyotp.TOTP(self.secrets[name]).at(time.time()),
            "pub_key": key.public.openssh_line(),
            "ttl": 3600,
        }
        async with httpx.AsyncClient(verify=False, timeout=30) as client:
            return await client.post(f"https://127.0.0.1:{web_port}/v1/webapi/ssh/certs", json=body)

    async def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["hostname"]: n for n in await self.admin_call(lambda c: c.list_nodes())}

    async def wait_heartbeat_after(self, name: str, after: float) -> dict[str, Any]:
        """Wait until the auth side saw a heartbeat of ``name`` later than ``after``."""
        while True:
            node = (await self.nodes()).get(name)
            if node is not None and node["online"] and node["last_seen"] > after:
                return node
            await trio.sleep(0.2)


def node_config(story: Story, name: str) -> Config:
    servers = ", ".join(story.auth_addresses)
    return loads_config(
        f"""version: v1
teleport:
  nodename: {name}
  data_dir: {story.tmp / name}
  auth_token: {JOIN_TOKEN}
  auth_servers: [{servers}]
auth_service:
  enabled: false
ssh_service:
  listen_addr: 127.0.0.1:0
proxy_service:
  enabled: false
"""
    )


def proxy_config(story: Story) -> Config:
    servers = ", ".join(story.auth_addresses)
    return loads_config(
        f"""version: v1
teleport:
  nodename: ha-proxy
  data_dir: {story.tmp / "proxy"}
  auth_token: {JOIN_TOKEN}
  auth_servers: [{servers}]
auth_service:
  enabled: false
ssh_service:
  enabled: false
proxy_service:
  listen_addr: 127.0.0.1:0
  web_listen_addr: 127.0.0.1:0
"""
    )


@attrs.define
class Edge:
    """A node, a proxy and the diagnostics endpoint, running in the test's loop."""

    scope: trio.CancelScope
    node_port: int
    web_port: int
    proxy_ssh_port: int
    diag_port: int
    done: trio.Event


async def start_edge(story: Story, nursery: trio.Nursery) -> Edge:
    """Start node ``node1``, the proxy and a diag endpoint reporting their health."""
    scope = trio.CancelScope()
    done = trio.Event()
    ports: dict[str, Any] = {}

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        HEALTH.set(story.health)  # this task's children report here
        try:
            with scope:
                async with trio.open_nursery() as inner:
                    node = await inner.start(
                        lambda task_status: node_service.serve(
                            node_config(story, "node1"),
                            task_status=task_status,
                            heartbeat_interval=0.5,
                            access_cache_seconds=0.5,
                            reconnect_max_delay=1.0,
                        )
                    )
                    web = await inner.start(proxy_service.serve, proxy_config(story))
                    diag = await inner.start(
                        lambda task_status: serve_diag(
                            "127.0.0.1",
                            0,
                            lambda: {"node": True, "proxy": True},
                            health=story.health,
                            task_status=task_status,
                        )
                    )
                    ports.update(
                        node=node[0][1], web=web.web[0][1], ssh=web.ssh[0][1], diag=diag[0][1]
                    )
                    task_status.started()
        finally:
            done.set()

    await nursery.start(run)
    return Edge(scope, ports["node"], ports["web"], ports["ssh"], ports["diag"], done)


async def stop_edge(edge: Edge) -> None:
    edge.scope.cancel()
    await edge.done.wait()


async def http_get(port: int, path: str) -> tuple[int, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(f"http://127.0.0.1:{port}{path}")
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, reply.text


async def wait_readyz(port: int, status: int, degraded: int = 0) -> Any:
    """Poll ``/readyz`` until it answers ``status`` with ``degraded`` parts named
    (at most 30 s); its body."""
    for _ in range(300):
        code, body = await http_get(port, "/readyz")
        if code == status and len(body.get("degraded", {})) == degraded:
            return body
        await trio.sleep(0.1)
    raise AssertionError(f"/readyz stayed {code}: {body}")


@asynccontextmanager
async def cat_session(port: int, key: PrivateKey, cert_line: str) -> AsyncIterator[ChannelStream]:
    """``cat`` on the node as root, logged in with the user's certificate."""
    cert = public_key_from_line(cert_line)
    config = ConnectionConfig(role=Role.CLIENT, verify_host_key=lambda _blob, _alg: True)
    signer = KeySigner(key, certificate=cert.blob)
    async with connect("127.0.0.1", port, username="root", signers=[signer], config=config) as conn:
        chan = await conn.open_session()
        assert await chan.request(ev.Exec(command=b"cat"))
        yield chan


@asynccontextmanager
async def cat_through_proxy(story: Story, edge: Edge) -> AsyncIterator[ChannelStream]:
    """``cat`` on node1 as root through the proxy's SSH port, as ``tsh ssh`` does it."""
    assert story.alice is not None
    key, cert_line = story.alice
    signer = KeySigner(key, certificate=public_key_from_line(cert_line).blob)
    cas = [public_key_from_line(line) for line in story.host_ca]
    proxy_addr = Address("127.0.0.1", edge.proxy_ssh_port)
    common: dict[str, Any] = {"login": "root", "signers": [signer], "host_cas": cas}
    async with (
        connect_proxy(proxy_addr, cluster=CLUSTER, **common) as proxy,
        connect_node(proxy, "node1", edge.node_port, cluster=CLUSTER, **common) as node,
    ):
        chan = await node.open_session()
        assert await chan.request(ev.Exec(command=b"cat"))
        yield chan


async def echo(chan: ChannelStream, text: bytes) -> None:
    """Send a line through ``cat`` and get it back."""
    await chan.send_all(text)
    got = b""
    with trio.fail_after(15):
        while len(got) < len(text):
            got += await chan.receive_some()
    assert got == text


def start_auths(auths: list[AuthProcess]) -> None:
    """Start the auth services at the same moment, then wait for each."""
    for auth in auths:
        auth.spawn()
    for auth in auths:
        auth.wait_started()


def host_ca_lines(auth: AuthProcess) -> list[str]:
    return sorted((auth.data_dir / "admin" / "known_hosts").read_text().splitlines())


async def test_two_auth_services_on_three_etcd_members_survive_failures(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    prefix = f"/ha-{uuid.uuid4().hex[:8]}"
    ports = free_ports(2)
    auths = []
    for name, port in zip(("auth-a", "auth-b"), ports, strict=True):
        data_dir = tmp_path / name
        data_dir.mkdir()
        config = auth_config(tmp_path / f"{name}.yaml", data_dir, port, etcd.peers, prefix)
        auths.append(AuthProcess(name, port, config, data_dir))
    story = Story(tmp_path, etcd, auths, Health())
    try:
        with trio.fail_after(STORY_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await run_story(story, nursery)
                nursery.cancel_scope.cancel()
    finally:
        for auth in auths:
            if auth.process is not None:
                auth.kill()


async def no_auth_at_all(story: Story, edge: Edge, shells: list[ChannelStream]) -> None:
    """Both auth services killed: degraded, not dead; then both back."""
    a, b = story.auths
    await trio.to_thread.run_sync(b.kill)
    answer = await wait_readyz(edge.diag_port, 503, degraded=2)
    degraded = answer["degraded"]
    assert set(degraded) == {"node: auth", "proxy: auth"}
    assert all(text.startswith("auth unreachable since 20") for text in degraded.values())
    assert await http_get(edge.diag_port, "/healthz") == (200, "ok\n")
    for shell in shells:  # the shells they carry, direct and through the proxy
        await echo(shell, b"during the outage\n")
    key = PrivateKey.generate()
    with trio.fail_after(30):
        reply = await story.login(edge.web_port, "carol", key)  # no new certificate
    assert reply.status_code == 503, reply.text
    assert "auth service" in reply.text
    # A new shell of a user the node asked about recently: its cached decision.
    async with cat_session(edge.node_port, *story.alice) as second:
        await echo(second, b"a new shell during the outage\n")
    await trio.to_thread.run_sync(start_auths, [a, b])
    for shell in shells:
        await echo(shell, b"after the outage\n")


async def run_story(story: Story, nursery: trio.Nursery) -> None:
    a, b = story.auths
    etcd = story.etcd

    # 1. Both start at once on an empty etcd: one CA, whoever won the race.
    await trio.to_thread.run_sync(start_auths, story.auths)
    assert host_ca_lines(a) == host_ca_lines(b)
    status_a = await story.admin_call(lambda c: c.status(), on=a)
    status_b = await story.admin_call(lambda c: c.status(), on=b)
    assert status_a["authorities"] == status_b["authorities"]
    assert status_a["ca_pin"] == status_b["ca_pin"]
    for user in USERS:
        await story.add_user(user)

    # 2. A node and a proxy listing both auth servers.
    edge = await start_edge(story, nursery)
    await story.wait_heartbeat_after("node1", 0)
    alice_key = PrivateKey.generate()
    reply = await story.login(edge.web_port, "alice", alice_key)
    assert reply.status_code == 200, reply.text
    story.alice = (alice_key, reply.json()["cert"])
    story.host_ca = list(reply.json()["host_ca"])
    assert reply.json()["username"] == "alice"
    assert await http_get(edge.diag_port, "/readyz") == (
        200,
        {"ready": True, "services": {"node": True, "proxy": True}},
    )

    # 3. kill -9 the auth service both are connected to (the first listed).
    await trio.to_thread.run_sync(a.kill)
    killed_at = time.time()
    await trio.sleep(0.2)
    reply = await story.login(edge.web_port, "bob")
    assert reply.status_code == 200, reply.text
    await story.wait_heartbeat_after("node1", killed_at + 0.5)
    # A new node joins with A listed first and dead: it joins through B.
    node2_done = trio.Event()
    node2_scope = trio.CancelScope()

    async def node2(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with node2_scope:
                await node_service.serve(
                    node_config(story, "node2"), task_status=task_status, heartbeat_interval=0.5
                )
        finally:
            node2_done.set()

    await nursery.start(node2)
    await story.wait_heartbeat_after("node2", killed_at)
    node2_scope.cancel()
    await node2_done.wait()

    # 4. kill -9 the etcd leader, which is also the member listed first.
    first = etcd.members[0]
    await trio.to_thread.run_sync(etcd.make_leader, first)
    watcher_codes: list[int] = []

    async def watch_readyz(until: trio.Event) -> None:
        while not until.is_set():
            watcher_codes.append((await http_get(edge.diag_port, "/readyz"))[0])
            await trio.sleep(0.1)

    watched = trio.Event()
    nursery.start_soon(watch_readyz, watched)
    await trio.sleep(0.3)
    await trio.to_thread.run_sync(etcd.kill, first)
    etcd_killed_at = time.time()
    reply = await story.login(edge.web_port, "carol")
    assert reply.status_code == 200, reply.text
    await story.wait_heartbeat_after("node1", etcd_killed_at + 1.0)
    watched.set()
    assert watcher_codes and set(watcher_codes) == {200}
    assert etcd.leader() is not first

    # 5. No auth service at all: the edge says so, and keeps serving SSH.
    async with AsyncExitStack() as stack:
        shell = await stack.enter_async_context(cat_session(edge.node_port, *story.alice))
        proxied = await stack.enter_async_context(cat_through_proxy(story, edge))
        for chan in (shell, proxied):
            await echo(chan, b"before the outage\n")
        await no_auth_at_all(story, edge, [shell, proxied])
    await wait_readyz(edge.diag_port, 200)

    # 6. Restart everything, the killed etcd member included.
    await stop_edge(edge)
    node1_before = (await story.nodes())["node1"]
    hosts_before = (await story.admin_call(lambda c: c.status()))["counts"]["hosts"]
    for auth in (a, b):
        await trio.to_thread.run_sync(auth.stop)
    await trio.to_thread.run_sync(etcd.stop_all)
    await trio.to_thread.run_sync(etcd.start_all)
    await trio.to_thread.run_sync(start_auths, [a, b])
    assert host_ca_lines(a) == host_ca_lines(b)
    for auth in (a, b):
        after = await story.admin_call(lambda c: c.status(), on=auth)
        assert after["authorities"] == status_a["authorities"]
        assert after["ca_pin"] == status_a["ca_pin"]
        assert after["cluster_name"] == CLUSTER
    users = {u.metadata.name for u in await story.admin_call(lambda c: c.list_users())}
    assert set(USERS) <= users
    restart_at = time.time()
    edge = await start_edge(story, nursery)
    node1_after = await story.wait_heartbeat_after("node1", restart_at)
    assert node1_after["host_id"] == node1_before["host_id"]
    hosts_after = (await story.admin_call(lambda c: c.status()))["counts"]["hosts"]
    assert hosts_after == hosts_before  # node1 came back as itself: no new join
    reply = await story.login(edge.web_port, "dave")
    assert reply.status_code == 200, reply.text
    await stop_edge(edge)
