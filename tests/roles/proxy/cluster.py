"""A real cluster in the test's trio loop: the auth service, the proxy, and nodes.

:func:`open_cluster` starts the auth service (SQLite in ``tmp_path``, bcrypt at its
lowest cost) and the proxy on loopback ports, each with the real ``serve``
functions; :meth:`Cluster.add_node` starts a node with the node service.
:meth:`Cluster.add_standin_node` starts a stand-in instead: a trioport SSH server
that joined with a node token, presents its host certificate, accepts user
certificates of the cluster's user CA
(:class:`~trioport.ssh.trust.UserCertificateHandler`: the login must be one of the
certificate's principals), serves ``sftp`` in-process and reports itself with a
heartbeat. It tests the proxy apart from the node service.

:meth:`Cluster.add_user` invites a user with the administrator's identity and
finishes the invite as she would (password and a TOTP code), so she can log in.
:class:`Totp` hands out codes the auth service will accept once each: a code is
refused after its step (or a later one) was used, so each user's codes move
forward a step at a time, waiting only if three were used within one period.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import trio

from trioport.authclient import AuthClient, ClientIdentity, connect_auth, join_cluster
from trioport.config import Address, Config, loads_config
from trioport.resources import Metadata, Node, NodeSpec, Role, from_dict
from trioport.roles.auth.service import serve as serve_auth
from trioport.roles.node.service import serve as serve_node
from trioport.roles.node.sftp_server import serve_sftp
from trioport.roles.proxy import client as pc
from trioport.roles.proxy.service import ProxyAddresses
from trioport.roles.proxy.service import serve as serve_proxy
from trioport.ssh import serve as serve_ssh
from trioport.ssh.session import SessionPolicy
from trioport.ssh.trust import UserCertificateChecker, UserCertificateHandler
from trioport.sshproto import ConnectionConfig, HostKey
from trioport.sshproto import Role as SSHRole
from trioport.sshproto.keys import PrivateKey, public_key_from_line
from trioport.tls import client_context

CLUSTER = "example.test"
PASSWORD = "correct horse battery staple"
#: The OS account the tests run as: a login the nodes can run commands as.
LOGIN = getpass.getuser()


class Totp:
    """Codes for one user's TOTP secret, each accepted once by the auth service."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.totp = pyotp.TOTP(secret)
        self.last_step = -1

    async def code(self) -> str:
        """The next usable code (waits only if this step's window is used up)."""
        while True:
            now = time.time()
            current = int(now // 30)
            step = max(self.last_step + 1, current)
            # Near the end of a step, prefer the next one: it stays valid longer.
            if step == current and now % 30 > 25:
                step += 1
            if step <= current + 1:
                self.last_step = step
                return self.totp.at(step * 30)
            await trio.sleep((current + 1) * 30 - now + 0.1)

    def wrong_code(self) -> str:
        """A well-formed code that is not valid now."""
        valid = {self.totp.at(time.time() + 30 * k) for k in range(-2, 3)}
        for candidate in ("000000", "111111", "123456", "999999"):
            if candidate not in valid:
                return candidate
        raise AssertionError("unreachable")


@dataclass
class ClusterUser:
    name: str
    password: str
    totp: Totp
    logins: list[str]


@dataclass
class ClusterNode:
    name: str
    host_id: str
    addr: Address
    labels: dict[str, str]
    #: A stand-in node's identity (the node service keeps its own).
    identity: ClientIdentity | None = None


@dataclass
class Cluster:
    tmp_path: Path
    config: Config
    auth_addr: Address
    proxy: ProxyAddresses
    admin: ClientIdentity
    nursery: trio.Nursery
    nodes: dict[str, ClusterNode] = field(default_factory=dict)
    users: dict[str, ClusterUser] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return CLUSTER

    @property
    def ssh_addr(self) -> Address:
        host, port = self.proxy.ssh[0]
        return Address(str(host), int(port))

    @property
    def web_addr(self) -> Address:
        host, port = self.proxy.web[0]
        return Address(str(host), int(port))

    @property
    def https_cert(self) -> Path:
        return Path(self.config.teleport.data_dir) / "proxy" / "https" / "cert.pem"

    @asynccontextmanager
    async def admin_client(self) -> AsyncIterator[AuthClient]:
        async with connect_auth(self.auth_addr, self.admin) as client:
            yield client

    async def add_role(self, role: Mapping[str, Any]) -> None:
        async with self.admin_client() as client:
            await client.upsert_role(from_dict(dict(role), Role))

    async def add_user(
        self, name: str, *, logins: list[str] | None = None, roles: list[str] | None = None
    ) -> ClusterUser:
        logins = [LOGIN] if logins is None else logins
        async with self.admin_client() as client:
            invite = await client.add_user(name, logins=logins, roles=roles)
            enrolment = await client.start_enrolment(invite["token"])
            totp = Totp(enrolment["secret"])
            await client.complete_invite(invite["token"], PASSWORD, await totp.code())
        user = ClusterUser(name, PASSWORD, totp, logins)
        self.users[name] = user
        return user

    async def https_login(self, name: str, key: PrivateKey) -> dict[str, Any]:
        """Log ``name`` in over the proxy's HTTPS port for ``key`` (what ``tsh login``
        does); the reply holds her certificate and the host CA lines."""
        user = self.users[name]
        code = await user.totp.code()
        ctx = client_context(cafile=self.https_cert)
        return await trio.to_thread.run_sync(
            lambda: pc.login(
                self.web_addr,
                ctx,
                user=name,
                password=user.password,
                totp_code=code,
                public_key=key.public,
            )
        )

    async def add_node(self, name: str, labels: Mapping[str, str] | None = None) -> ClusterNode:
        """Start a node with the node service, registered and heartbeating."""
        async with self.admin_client() as client:
            token = (await client.add_token(["node"]))["token"]
        text = f"""
teleport:
  nodename: {name}
  data_dir: {self.tmp_path / ("node-" + name)}
  auth_token: {token}
  auth_servers: ["{self.auth_addr}"]
auth_service:
  enabled: false
proxy_service:
  enabled: false
ssh_service:
  listen_addr: 127.0.0.1:0
"""
        config = loads_config(text)
        config.ssh_service.labels.update(labels or {})  # type: ignore[arg-type]
        addrs = await self.nursery.start(lambda **kw: serve_node(config, **kw))
        host_id = ClientIdentity.load(self.tmp_path / ("node-" + name) / "node").username
        node = ClusterNode(
            name, host_id, Address("127.0.0.1", int(addrs[0][1])), dict(labels or {})
        )
        self.nodes[name] = node
        return node

    async def add_standin_node(
        self, name: str, labels: Mapping[str, str] | None = None
    ) -> ClusterNode:
        """Start a stand-in node (see the module docstring) and register it."""
        async with self.admin_client() as client:
            token = (await client.add_token(["node"]))["token"]
        key = PrivateKey.generate()
        joined = await join_cluster(
            self.auth_addr, token=token, key=key, node_name=name, addresses=["127.0.0.1"]
        )
        identity = joined.identity(key)
        user_cas = [public_key_from_line(line) for line in joined.user_ca.spec.public_keys]
        checker = UserCertificateChecker(user_cas)
        handlers: list[UserCertificateHandler] = []

        def factory() -> UserCertificateHandler:
            handler = UserCertificateHandler(
                checker, SessionPolicy(subsystems={"sftp": serve_sftp})
            )
            handlers.append(handler)
            return handler

        config = ConnectionConfig(
            role=SSHRole.SERVER, host_keys=[HostKey(key, joined.certificate.blob)]
        )
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        addrs = await self.nursery.start(serve_ssh, listeners, config, factory)
        addr = Address("127.0.0.1", int(addrs[0][1]))
        node = ClusterNode(name, joined.host_id, addr, dict(labels or {}), identity)
        await self.heartbeat(node)
        self.nodes[name] = node
        return node

    async def heartbeat(self, node: ClusterNode, *, addr: str | None = None) -> None:
        """Report a stand-in node alive (at ``addr``, or where it listens)."""
        assert node.identity is not None, "the node service heartbeats by itself"
        report = Node(
            metadata=Metadata(name=node.host_id, labels=dict(node.labels)),  # type: ignore[arg-type]
            spec=NodeSpec(hostname=node.name, addr=addr or str(node.addr)),
        )
        async with connect_auth(self.auth_addr, node.identity) as client:
            await client.heartbeat(report)

    async def events(self, *names: str) -> list[dict[str, Any]]:
        async with self.admin_client() as client:
            return await client.search_events(events=names)


@asynccontextmanager
async def open_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Auth and proxy on loopback ports in this trio loop; stopped on exit."""
    data_dir = tmp_path / "data"
    text = f"""
teleport:
  nodename: proxy1
  data_dir: {data_dir}
auth_service:
  cluster_name: {CLUSTER}
  listen_addr: 127.0.0.1:0
proxy_service:
  listen_addr: 127.0.0.1:0
  web_listen_addr: 127.0.0.1:0
"""
    config = loads_config(text)
    async with trio.open_nursery() as nursery:
        auth_addrs = await nursery.start(lambda **kw: serve_auth(config, bcrypt_cost=4, **kw))
        auth_addr = Address("127.0.0.1", int(auth_addrs[0][1]))
        admin = ClientIdentity.load(data_dir / "admin")
        async with connect_auth(auth_addr, admin) as client:
            token = (await client.add_token(["proxy"]))["token"]
        config.teleport.auth_servers = [auth_addr]
        proxy = await nursery.start(lambda **kw: serve_proxy(config, join_token=token, **kw))
        cluster = Cluster(tmp_path, config, auth_addr, proxy, admin, nursery)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


def tsh_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for running ``tsh`` with its own home directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "TSH_HOME")}
    env["TSH_HOME"] = str(home)
    env.update(extra)
    return env
