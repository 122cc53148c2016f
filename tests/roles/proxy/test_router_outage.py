"""The router's answers while the auth service cannot be reached (a fake auth API).

The last node list and access answers are used for ``stale_seconds`` only when
the auth service is unreachable; whatever it answers (a refusal too) wins.
"""

from __future__ import annotations

from typing import Any

import pytest

from trioport.authclient import AuthServiceUnavailable
from trioport.errors import AccessDenied
from trioport.roles.proxy.router import NodeRouter, Target

CLUSTER = "example.test"
NODE = {"host_id": "h1", "hostname": "web1", "addr": "10.0.0.5:3022", "labels": {}}


class FlakyAuth:
    def __init__(self) -> None:
        self.down = False
        self.visible = True
        self.calls = 0

    async def list_nodes(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.down:
            raise AuthServiceUnavailable("the auth service is unavailable: connection refused")
        return [NODE]

    async def access(self, user: str, **_: Any) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise AuthServiceUnavailable("the auth service is unavailable: connection refused")
        return {"known": True, "visible": self.visible, "roles": ["r"], "reason": ""}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cached_answers_serve_an_outage_until_they_are_too_old() -> None:
    auth, clock = FlakyAuth(), Clock()
    router = NodeRouter(auth, CLUSTER, clock=clock, stale_seconds=300)
    target = Target("web1", 3022)
    assert (await router.route("alice", target)).node.host_id == "h1"
    auth.down = True
    clock.now += 299
    assert (await router.route("alice", target)).node.host_id == "h1"
    assert [n.hostname for n in await router.visible_nodes("alice")] == ["web1"]
    with pytest.raises(AuthServiceUnavailable, match="no answer from the last 300 seconds"):
        await router.route("bob", target)  # never asked about
    clock.now += 2
    with pytest.raises(AuthServiceUnavailable, match="no answer from the last 300 seconds"):
        await router.route("alice", target)


async def test_an_answer_from_auth_always_wins_and_a_cached_no_stays_no() -> None:
    auth, clock = FlakyAuth(), Clock()
    router = NodeRouter(auth, CLUSTER, clock=clock)
    target = Target("web1", 3022)
    await router.route("alice", target)
    auth.visible = False  # a role change: auth now says no
    clock.now += 5
    with pytest.raises(AccessDenied):
        await router.route("alice", target)
    auth.down = True  # and during the outage, the last answer (no) holds
    clock.now += 5
    with pytest.raises(AccessDenied):
        await router.route("alice", target)


async def test_without_stale_seconds_an_outage_refuses_at_once() -> None:
    auth, clock = FlakyAuth(), Clock()
    router = NodeRouter(auth, CLUSTER, clock=clock, stale_seconds=0)
    await router.route("alice", Target("web1", 3022))
    auth.down = True
    clock.now += 3
    with pytest.raises(AuthServiceUnavailable):
        await router.route("alice", Target("web1", 3022))
