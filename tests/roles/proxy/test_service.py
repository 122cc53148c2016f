"""The proxy service's start-up: joining once, reusing its identity, its HTTPS files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from tests.roles.proxy.cluster import CLUSTER
from trioport.authclient import ClientIdentity, connect_auth
from trioport.config import Address, Config, loads_config
from trioport.errors import ConfigError
from trioport.roles.auth.service import serve as serve_auth
from trioport.roles.node.service import serve as serve_node
from trioport.roles.proxy.client import ProxyUnavailable, ping
from trioport.roles.proxy.service import ProxyAddresses
from trioport.roles.proxy.service import serve as serve_proxy
from trioport.tls import client_context, ensure_self_signed, file_fingerprint


def _config(data_dir: Path, **proxy: str) -> Config:
    extra = "".join(f"  {k}: {v}\n" for k, v in proxy.items())
    return loads_config(
        f"""
teleport:
  nodename: proxy1
  data_dir: {data_dir}
auth_service:
  cluster_name: {CLUSTER}
  listen_addr: 127.0.0.1:0
proxy_service:
  listen_addr: 127.0.0.1:0
  web_listen_addr: 127.0.0.1:0
{extra}"""
    )


async def _start_auth(nursery: trio.Nursery, config: Config) -> str:
    addrs = await nursery.start(lambda **kw: serve_auth(config, bcrypt_cost=4, **kw))
    auth = Address("127.0.0.1", int(addrs[0][1]))
    config.teleport.auth_servers = [auth]
    admin = ClientIdentity.load(Path(config.teleport.data_dir) / "admin")
    async with connect_auth(auth, admin) as client:
        return str((await client.add_token(["proxy"]))["token"])


async def _ping(addrs: ProxyAddresses, cafile: str | None = None) -> dict[str, object]:
    web = Address("127.0.0.1", int(addrs.web[0][1]))
    ctx = client_context(cafile=cafile) if cafile else client_context(insecure=True)
    return await trio.to_thread.run_sync(ping, web, ctx)


async def test_the_proxy_joins_once_then_restarts_with_its_identity(tmp_path: Path) -> None:
    config = _config(tmp_path / "data")
    folder = tmp_path / "data" / "proxy"
    async with trio.open_nursery() as nursery:
        token = await _start_auth(nursery, config)
        with pytest.raises(ConfigError, match="tctl tokens add --type=proxy"):
            await serve_proxy(config)
        async with trio.open_nursery() as first:
            addrs = await first.start(lambda **kw: serve_proxy(config, join_token=token, **kw))
            assert (await _ping(addrs))["cluster_name"] == CLUSTER
            first.cancel_scope.cancel()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "key").stat().st_mode) == 0o600
        host_id = (folder / "host_uuid").read_text().strip()
        key = ClientIdentity.load(folder).key.public
        https_key = folder / "https" / "key.pem"
        assert stat.S_IMODE(https_key.stat().st_mode) == 0o600
        fingerprint = file_fingerprint(folder / "https" / "cert.pem")

        # The token was single use: the second start must not need it.
        addrs = await nursery.start(lambda **kw: serve_proxy(config, **kw))
        assert (await _ping(addrs, str(folder / "https" / "cert.pem")))["cluster_name"] == CLUSTER
        assert (folder / "host_uuid").read_text().strip() == host_id
        assert file_fingerprint(folder / "https" / "cert.pem") == fingerprint
        identity = ClientIdentity.load(folder)
        assert identity.username == host_id and identity.key.public == key
        nursery.cancel_scope.cancel()


async def test_configured_https_files_are_served(tmp_path: Path) -> None:
    own = ensure_self_signed(tmp_path / "own", ["localhost", "127.0.0.1"])
    config = _config(tmp_path / "data", https_cert_file=own.cert_file, https_key_file=own.key_file)
    async with trio.open_nursery() as nursery:
        token = await _start_auth(nursery, config)
        addrs = await nursery.start(lambda **kw: serve_proxy(config, join_token=token, **kw))
        assert (await _ping(addrs, own.cert_file))["cluster_name"] == CLUSTER
        assert not (tmp_path / "data" / "proxy" / "https").exists()
        other = ensure_self_signed(tmp_path / "other", ["localhost"])
        with pytest.raises(ProxyUnavailable, match="not trusted"):
            await _ping(addrs, other.cert_file)
        nursery.cancel_scope.cancel()


async def test_a_proxy_beside_a_node_joins_as_the_same_host(tmp_path: Path) -> None:
    config = _config(tmp_path / "data")
    config.ssh_service.listen_addr = Address("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        proxy_token = await _start_auth(nursery, config)
        admin = ClientIdentity.load(tmp_path / "data" / "admin")
        async with connect_auth(config.teleport.auth_servers[0], admin) as client:
            node_token = (await client.add_token(["node"]))["token"]
        config.teleport.auth_token = node_token
        await nursery.start(lambda **kw: serve_node(config, **kw))
        node = ClientIdentity.load(tmp_path / "data" / "node")
        # Same node name, same data directory: one host with two roles.
        addrs = await nursery.start(lambda **kw: serve_proxy(config, join_token=proxy_token, **kw))
        assert (await _ping(addrs))["cluster_name"] == CLUSTER
        proxy = ClientIdentity.load(tmp_path / "data" / "proxy")
        assert proxy.username == node.username and proxy.key.public == node.key.public
        async with connect_auth(config.teleport.auth_servers[0], admin) as client:
            nodes = await client.list_nodes()
        assert [n["hostname"] for n in nodes] == ["proxy1"]
        nursery.cancel_scope.cancel()
