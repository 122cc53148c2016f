"""Several auth servers starting at once on an empty etcd agree on one cluster.

Each auth server opens its own connection to a different etcd member and runs
the first-start steps at the same moment: the cluster name, both CAs (the private
half is created if absent; the loser loads the winner's) and the preset roles.
Every one must come out with the same CA keys, and the store must hold exactly
those keys.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from trioport.resources import CertAuthority
from trioport.roles.auth._storage import decode
from trioport.roles.auth.ca import ClusterAuthorities, private_key_path
from trioport.roles.auth.server import open_auth_server
from trioport.store import open_etcd_backend

from .cluster import EtcdCluster

SERVERS = 4
ROUNDS = 3


async def _start_one(
    peers: list[str], prefix: str, data_dir: Path, go: trio.Event, out: list[ClusterAuthorities]
) -> list[str]:
    async with open_etcd_backend(peers, prefix=prefix) as backend:
        await go.wait()
        async with open_auth_server(
            backend, data_dir=data_dir, cluster_name="race.test", bcrypt_cost=4
        ) as auth:
            out.append(auth.ca)
            stored = decode(await backend.get(private_key_path("host", "race.test")), CertAuthority)
            return list(stored.spec.public_keys)


async def _race(etcd: EtcdCluster, root: Path) -> None:
    prefix = f"/race-{uuid.uuid4().hex[:8]}"
    go = trio.Event()
    loaded: list[ClusterAuthorities] = []
    stored: list[list[str]] = []

    async def one(i: int) -> None:
        # Each server talks to another member first, as on separate machines.
        peers = etcd.peers[i % 3 :] + etcd.peers[: i % 3]
        stored.append(await _start_one(peers, prefix, root / f"auth{i}", go, loaded))

    async with trio.open_nursery() as nursery:
        for i in range(SERVERS):
            nursery.start_soon(one, i)
        await trio.sleep(0.5)  # every backend is open and waiting
        go.set()
    assert len(loaded) == SERVERS
    for ca_type in ("user", "host"):
        keys = {tuple(k.openssh_line() for k in ca.public_keys(ca_type)) for ca in loaded}
        assert len(keys) == 1, f"{ca_type} CAs differ: {keys}"
    host_keys = [k.openssh_line() for k in loaded[0].public_keys("host")]
    assert all(s == host_keys for s in stored)
    assert {ca.cluster_name for ca in loaded} == {"race.test"}


async def test_auth_servers_starting_together_make_one_ca(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    with trio.fail_after(120):
        for round_ in range(ROUNDS):
            await _race(etcd, tmp_path / f"round{round_}")
