"""Web sessions in memory: expiry with the certificate, rotation limits, cookie parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from trioport.config import Address
from trioport.roles.proxy.webui import sessions as sessions_module
from trioport.roles.proxy.webui.sessions import (
    WebSessionStore,
    read_cookie,
    session_cookie,
)
from trioport.sshproto.keys import PrivateKey


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(clock: _Clock, **kw: Any) -> WebSessionStore:
    state = SimpleNamespace(
        # Nothing listens on port 1: a session's auth connection never comes up.
        auth_addresses=[Address("127.0.0.1", 1)],
        host_cas=[],
        identity=SimpleNamespace(host_cas=()),
        cluster_name="example.test",
    )
    return WebSessionStore(state, clock=clock, **kw)  # type: ignore[arg-type]


def _create(store: WebSessionStore, user: str, valid_for: float) -> Any:
    cert = SimpleNamespace(valid_before=store.clock() + valid_for, principals=["alice"])
    return store.create(user=user, key=PrivateKey.generate(), certificate=cert, roles=["access"])  # type: ignore[arg-type]


def test_a_session_ends_when_its_certificate_expires() -> None:
    clock = _Clock()
    store = _store(clock)
    session_id, session = _create(store, "alice", 3600)
    assert store.get(session_id) is session
    clock.now += 3599
    assert store.get(session_id) is session
    clock.now += 1
    assert store.get(session_id) is None and session.ended and len(store) == 0


async def test_ending_a_session_cancels_its_terminals() -> None:
    clock = _Clock()
    store = _store(clock)
    session_id, session = _create(store, "alice", 3600)
    cancelled = []

    async def terminal() -> None:
        with trio.CancelScope() as scope:
            session.terminals.add(scope)
            await trio.sleep_forever()
        cancelled.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(terminal)
        await trio.testing.wait_all_tasks_blocked()
        clock.now += 7200
        store.sweep()
    assert cancelled == [True] and store.get(session_id) is None


def test_the_oldest_sessions_go_first_beyond_the_limit() -> None:
    clock = _Clock()
    store = _store(clock, max_sessions=2)
    first, _ = _create(store, "a", 3600)
    clock.now += 1
    second, _ = _create(store, "b", 3600)
    clock.now += 1
    third, _ = _create(store, "c", 3600)
    assert store.get(first) is None
    assert store.get(second) is not None and store.get(third) is not None


def test_ids_are_never_kept_and_cookies_parse_strictly() -> None:
    store = _store(_Clock())
    session_id, session = _create(store, "alice", 3600)
    assert session_id.encode() not in session.digest  # only its digest is kept
    assert store.get(session_id + "x") is None and store.get("") is None
    header = f"other=1; __Host-trioport_session={session_id}; x=2"
    assert read_cookie([header]) == [session_id]
    assert read_cookie(["trioport_session=abc", "__Host-trioport_session="]) == []
    assert session_cookie("abc", 10).startswith("__Host-trioport_session=abc; Path=/;")


async def test_an_unused_auth_connection_is_closed_and_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connections: list[trio.Event] = []

    @asynccontextmanager
    async def fake_connect(addr: Any, identity: Any, **kw: Any) -> AsyncIterator[Any]:
        closed = trio.Event()
        connections.append(closed)
        conn = SimpleNamespace(wait_closed=closed.wait)
        try:
            yield SimpleNamespace(conn=conn)
        finally:
            closed.set()

    monkeypatch.setattr(sessions_module, "connect_auth", fake_connect)
    clock = _Clock()
    store = _store(clock)
    _, session = _create(store, "alice", 3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        client = await store.auth_client(session)
        assert await store.auth_client(session) is client  # one connection, reused
        assert len(connections) == 1
        clock.now += 299
        store.sweep()
        assert not connections[0].is_set()  # used recently: kept
        clock.now += 1
        store.sweep()
        await trio.testing.wait_all_tasks_blocked()
        assert connections[0].is_set() and session.link is None  # idle: closed
        assert await store.auth_client(session) is not client  # made again when needed
        assert len(connections) == 2
        store.end(session)
        await trio.testing.wait_all_tasks_blocked()
        assert connections[1].is_set()  # the session's end closes it
        nursery.cancel_scope.cancel()
