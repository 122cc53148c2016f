"""The router: how users name nodes, and what their roles let them reach.

The auth service is replaced by a small fake that answers ``list_nodes`` and
``access`` with the real RBAC functions over real roles, so every refusal reason
here is the one a user would read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from trioport.config import Address
from trioport.errors import AccessDenied, NotFound
from trioport.rbac import can_see_node, decide_node_access
from trioport.resources import Role, from_dict
from trioport.roles.proxy.router import (
    NodeRouter,
    Target,
    dial_address,
    parse_selector,
    parse_target,
)

CLUSTER = "example.test"
WEB = "11111111-1111-4111-8111-111111111111"
DB = "22222222-2222-4222-8222-222222222222"
VAULT = "33333333-3333-4333-8333-333333333333"
TWIN = "44444444-4444-4444-8444-444444444444"

PROD_ONLY = from_dict(
    {
        "kind": "role",
        "metadata": {"name": "prod-only"},
        "spec": {"allow": {"logins": ["ops"], "node_labels": {"env": "prod"}}},
    },
    Role,
)
NO_VAULT = from_dict(
    {
        "kind": "role",
        "metadata": {"name": "no-vault"},
        "spec": {"deny": {"node_labels": {"team": "vault"}}},
    },
    Role,
)


class FakeAuth:
    """``list_nodes`` and ``access`` as the auth API answers them, counted."""

    def __init__(self, nodes: list[dict[str, Any]], users: Mapping[str, list[Role]]) -> None:
        self.listing = nodes
        self.users = users
        self.access_calls = 0
        self.list_calls = 0

    async def list_nodes(self) -> list[dict[str, Any]]:
        self.list_calls += 1
        return self.listing

    async def access(
        self,
        user: str,
        *,
        login: str | None = None,
        node: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.access_calls += 1
        if user not in self.users:
            return {"known": False, "visible": False, "reason": f"no such user {user!r}"}
        roles = self.users[user]
        found = next(n for n in self.listing if n["host_id"] == node)
        decision = decide_node_access(roles, {}, found["labels"], login) if login else None
        return {
            "known": True,
            "roles": [r.metadata.name for r in roles],
            "visible": can_see_node(roles, found["labels"]),
            "reason": decision.reason if decision is not None else "",
        }


def _node(host_id: str, name: str, addr: str, **labels: str) -> dict[str, Any]:
    return {"host_id": host_id, "hostname": name, "addr": addr, "labels": labels, "online": True}


@pytest.fixture
def auth() -> FakeAuth:
    nodes = [
        _node(WEB, "web1", "10.0.0.5:3022", env="prod", team="web"),
        _node(DB, "db1", "10.0.0.6:3022", env="prod", team="db"),
        _node(VAULT, "vault", "10.0.0.7:3022", env="prod", team="vault"),
        _node(TWIN, "twin", "10.0.0.5:4022", env="dev"),
    ]
    return FakeAuth(nodes, {"alice": [PROD_ONLY, NO_VAULT], "bob": [PROD_ONLY]})


@pytest.fixture
def router(auth: FakeAuth) -> NodeRouter:
    return NodeRouter(auth, CLUSTER)


# --- the names users give ------------------------------------------------------------


@pytest.mark.parametrize(
    ("subsystem", "target"),
    [
        ("proxy:web1:3022", Target("web1", 3022)),
        ("proxy:web1.example.test:22", Target("web1.example.test", 22)),
        ("proxy:web1", Target("web1", 3022)),
        ("proxy:10.0.0.5:3022@example.test", Target("10.0.0.5", 3022, "example.test")),
        ("proxy:[::1]:2222", Target("::1", 2222)),
        ("proxy:[::1]", Target("::1", 3022)),
        ("proxy:env=prod,team=db:3022", Target("env=prod,team=db", 3022)),
    ],
)
def test_proxy_subsystem_names_parse_as_openssh_sends_them(subsystem: str, target: Target) -> None:
    assert parse_target(subsystem) == target


@pytest.mark.parametrize(
    ("subsystem", "why"),
    [
        ("sftp", "proxy:HOST:PORT"),
        ("proxy::22", "node name"),
        ("proxy:web1:port", "not a port"),
        ("proxy:web1:70000", "not a port"),
        ("proxy:web1:22@", "cluster name"),
        ("proxy:[::1:22", "']'"),
        ("proxy:" + "a" * 600 + ":22", "too long"),
    ],
)
def test_malformed_proxy_subsystem_names_say_what_is_wrong(subsystem: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_target(subsystem)


def test_label_selectors() -> None:
    assert parse_selector("web1") is None
    assert parse_selector("env=prod, team=db") == {"env": "prod", "team": "db"}
    with pytest.raises(ValueError, match="key=value"):
        parse_selector("env=prod,oops")


def test_a_node_listening_everywhere_is_dialled_on_loopback() -> None:
    assert dial_address("0.0.0.0:3022") == Address("127.0.0.1", 3022)
    assert dial_address("[::]:3022") == Address("::1", 3022)
    assert dial_address("10.0.0.5") == Address("10.0.0.5", 3022)


# --- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "web1",
        "WEB1",
        "web1.example.test",
        "web1.example.test.",
        WEB,
        "team=web",
        "env=prod,team=web",
    ],
)
async def test_a_node_is_found_by_name_uuid_or_labels(router: NodeRouter, name: str) -> None:
    route = await router.route("alice", Target(name, 22), login="ops")
    assert route.node.host_id == WEB
    assert route.dial == Address("10.0.0.5", 3022)  # the port the node reports, not 22


async def test_an_address_shared_by_two_nodes_is_told_apart_by_port(router: NodeRouter) -> None:
    route = await router.route("alice", Target("10.0.0.5", 3022))
    assert route.node.hostname == "web1"
    with pytest.raises(AccessDenied, match="node 'twin' denied"):  # env=dev: not hers
        await router.route("alice", Target("10.0.0.5", 4022))


async def test_a_role_that_denies_the_node_is_named(router: NodeRouter) -> None:
    with pytest.raises(AccessDenied) as caught:
        await router.route("alice", Target("vault", 22), login="ops")
    assert str(caught.value) == (
        "access to node 'vault' denied: role 'no-vault' denies access to this node"
    )


async def test_a_node_no_role_matches_is_refused_with_the_roles(router: NodeRouter) -> None:
    with pytest.raises(AccessDenied, match=r"no role of yours \(prod-only, no-vault\)"):
        await router.route("alice", Target("twin", 22), login="ops")


async def test_an_unknown_node_lists_what_the_user_can_reach(router: NodeRouter) -> None:
    with pytest.raises(NotFound) as caught:
        await router.route("alice", Target("nosuch", 22))
    assert "no node 'nosuch' in cluster 'example.test'" in str(caught.value)
    assert "nodes you can reach: db1, web1" in str(caught.value)  # not vault, not twin
    with pytest.raises(NotFound, match="matches several nodes"):
        await router.route("alice", Target("env=prod", 22))


async def test_another_cluster_and_a_deleted_user_are_refused(router: NodeRouter) -> None:
    with pytest.raises(NotFound, match="not this cluster"):
        await router.route("alice", Target("web1", 22, "other.test"))
    with pytest.raises(AccessDenied, match="no longer exists"):
        await router.route("mallory", Target("web1", 22))


async def test_visible_nodes_ask_once_per_label_set(router: NodeRouter, auth: FakeAuth) -> None:
    nodes = await router.visible_nodes("bob")
    assert [n.hostname for n in nodes] == ["db1", "vault", "web1"]
    assert auth.access_calls == 4  # four distinct label sets
    await router.visible_nodes("bob")
    assert auth.list_calls == 1  # the node list is cached briefly
    router.forget()
    await router.visible_nodes("bob")
    assert auth.list_calls == 2
