"""The auth service's SSH port applies ``teleport.connection_limits``, NAT-friendly.

Nodes and proxies all hold a connection to the auth port, often many behind one
address; so the port applies ``max_connections`` (and the unauthenticated limits,
login grace and keep-alives) as configured, while the per-source and
distinct-source caps are lifted to ``max_connections``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from trioport.authclient import AuthServiceUnavailable, ClientIdentity, connect_auth
from trioport.config import Address, loads_config
from trioport.roles.auth.service import serve as serve_auth


async def test_the_auth_port_applies_max_connections_but_not_the_per_source_caps(
    tmp_path: Path,
) -> None:
    config = loads_config(
        f"""
teleport:
  nodename: auth1
  data_dir: {tmp_path / "data"}
  connection_limits:
    max_connections: 5
    max_connections_per_source: 1
    max_users: 1
    max_sessions: 1
auth_service:
  cluster_name: limits.test
  listen_addr: 127.0.0.1:0
proxy_service:
  enabled: false
ssh_service:
  enabled: false
"""
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(lambda **kw: serve_auth(config, bcrypt_cost=4, **kw))
            addr = Address("127.0.0.1", int(addrs[0][1]))
            admin = ClientIdentity.load(tmp_path / "data" / "admin")
            async with AsyncExitStack() as stack:
                # Five connections from one address (a NAT), each with requests
                # in flight on parallel channels: all served.
                clients = [
                    await stack.enter_async_context(connect_auth(addr, admin, max_channels=4))
                    for _ in range(5)
                ]
                async with trio.open_nursery() as calls:
                    for client in clients:
                        for _ in range(4):
                            calls.start_soon(client.status)
                # The sixth is over max_connections.
                with pytest.raises(AuthServiceUnavailable, match="too many connections"):
                    async with connect_auth(addr, admin, connect_timeout=10):
                        pass
            nursery.cancel_scope.cancel()
