"""The node registry: heartbeats with a TTL, online/offline, removal, and who may report what."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioport.errors import AccessDenied, NotFound
from trioport.resources import CommandLabel, Metadata, Node, NodeSpec
from trioport.roles.auth.nodes import (
    NODES_PREFIX,
    NodeRegistry,
    check_node_name,
    decode_node_item,
)
from trioport.sshproto.keys import PrivateKey
from trioport.store.backend import Backend, EventType

from .conftest import CLUSTER, FakeClock

HOST = "0b6f7c1e-3d2a-4f5b-8c9d-1e2f3a4b5c6d"
OTHER = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"


def report(host_id: str = HOST, hostname: str = "web1", **labels: str) -> Node:
    return Node(
        metadata=Metadata(name=host_id, labels=labels),
        spec=NodeSpec(
            hostname=hostname,
            addr="10.0.0.5:3022",
            cmd_labels={"arch": CommandLabel(command=["uname", "-m"], result="x86_64")},
        ),
    )


@pytest.fixture
async def registry(backend: Backend) -> NodeRegistry:
    nodes = NodeRegistry(backend, cluster_name=CLUSTER, interval=10, ttl=120)
    for host_id, name in ((HOST, "web1"), (OTHER, "web2")):
        await nodes.reserve_identity(
            host_id=host_id, name=name, public_key=PrivateKey.generate().public, role="node"
        )
    return nodes


async def test_heartbeat_lists_the_node_online(registry: NodeRegistry) -> None:
    status = await registry.heartbeat(report(env="prod"), caller_host_id=HOST)
    assert status.online
    (listed,) = await registry.list()
    assert listed.host_id == HOST
    assert listed.node.spec.hostname == "web1"
    assert listed.node.all_labels() == {"env": "prod", "arch": "x86_64"}
    assert listed.online
    assert [s.host_id for s in await registry.find("WEB1")] == [HOST]
    assert [s.host_id for s in await registry.find(HOST)] == [HOST]


async def test_offline_after_two_intervals_then_gone_after_ttl(
    registry: NodeRegistry, clock: FakeClock
) -> None:
    await registry.heartbeat(report(), caller_host_id=HOST)
    clock.advance(20)
    assert (await registry.get(HOST)).online
    clock.advance(1)
    status = await registry.get(HOST)
    assert not status.online  # missed two heartbeats: still listed, as offline
    assert [s.online for s in await registry.list()] == [False]
    clock.advance(100)  # 121 s after the last heartbeat; the TTL is 120 s
    assert await registry.list() == []
    with pytest.raises(NotFound):
        await registry.get(HOST)


async def test_heartbeats_keep_a_node_alive(registry: NodeRegistry, clock: FakeClock) -> None:
    for _ in range(30):
        await registry.heartbeat(report(), caller_host_id=HOST)
        clock.advance(10)
    assert (await registry.get(HOST)).online


async def test_watchers_see_the_expired_node_go(
    backend: Backend,
    registry: NodeRegistry,
    clock: FakeClock,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with backend.watch([NODES_PREFIX]) as events:
        await registry.heartbeat(report(), caller_host_id=HOST)
        put = await events.receive()
        assert put.type is EventType.PUT
        status = decode_node_item(put.item, now=clock(), interval=registry.interval)
        assert status.host_id == HOST and status.online
        clock.advance(121)
        with trio.fail_after(5):  # trio time: the backend's sweeper runs every second
            gone = await events.receive()
        assert gone.type is EventType.DELETE and gone.item.key == NODES_PREFIX + HOST


async def test_a_host_reports_only_itself(registry: NodeRegistry) -> None:
    with pytest.raises(AccessDenied, match="its own"):
        await registry.heartbeat(report(host_id=OTHER, hostname="web2"), caller_host_id=HOST)
    with pytest.raises(AccessDenied, match="joined as 'web1'"):
        await registry.heartbeat(report(hostname="web2"), caller_host_id=HOST)
    stranger = "11111111-2222-4333-8444-555555555555"
    with pytest.raises(AccessDenied, match="not registered"):
        await registry.heartbeat(report(host_id=stranger, hostname="x"), caller_host_id=stranger)
    assert await registry.list() == []


async def test_release_forgets_identity_names_and_heartbeat(registry: NodeRegistry) -> None:
    await registry.heartbeat(report(), caller_host_id=HOST)
    await registry.release_identity(HOST)
    assert await registry.list() == []
    with pytest.raises(NotFound):
        await registry.get_identity(HOST)
    identity, created = await registry.reserve_identity(
        host_id="22222222-3333-4444-8555-666666666666",
        name="web1",
        public_key=PrivateKey.generate().public,
        role="node",
    )
    assert created and identity.name == "web1"
    assert [i.name for i in await registry.list_identities()] == ["web1", "web2"]


def test_node_names_are_host_names() -> None:
    for good in ("web1", "db-prod.eu", "a", "node_7"):
        assert check_node_name(good) == good
    for bad in ("", "*", "web?", "a b", "-x", "x.", "a..b", "a/b", "x" * 254, "é"):
        with pytest.raises(ValueError):
            check_node_name(bad)


async def test_ttl_must_exceed_two_intervals(backend: Backend) -> None:
    with pytest.raises(ValueError):
        NodeRegistry(backend, cluster_name=CLUSTER, interval=60, ttl=120)
