"""Join tokens, invites and lockout on the shared backends: SQLite and a real etcd.

The same rules as ``test_tokens.py`` and ``test_users.py`` (which run on the memory
backend), checked where a race is a real one: SQLite with its writer thread, and
etcd over the network, where compare-and-swap is a transaction and expiry is the
backend's clock. Several auth servers share one cluster through etcd, so the
single-use rules are also checked across two auth servers on two connections.

etcd is Debian's ``/usr/bin/etcd``, started once for this module on free loopback
ports with the helpers of ``tests/store/conftest.py``; every test gets its own key
prefix. Wall time is the shared :class:`FakeClock`: it decides expiry on every
backend (etcd's own leases run on real time and are far longer than a test).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from tests.store.conftest import ETCD, EtcdServer, start_etcd, stop_etcd
from trioport.errors import AuthenticationFailed
from trioport.roles.auth.server import AuthServer, open_auth_server
from trioport.roles.auth.tokens import DEFAULT_TOKEN_TTL, INVALID_TOKEN
from trioport.roles.auth.users import (
    FAILURE_WINDOW,
    INVALID_INVITE,
    INVITE_TTL,
    LOCKOUT_DURATION,
    LOGIN_FAILED,
    MAX_FAILED_LOGINS,
)
from trioport.sshproto.keys import PrivateKey
from trioport.store import open_etcd_backend, open_sqlite_backend
from trioport.store.backend import Backend

from .conftest import CLUSTER, TEST_BCRYPT_COST, FakeClock, totp_now

PASSWORD = "correct horse battery"
WRONG = "wrong password!!"
#: How many tasks race for one token or one code.
RACERS = 8


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for this module."""
    if not os.access(ETCD, os.X_OK):
        raise RuntimeError(f"{ETCD} is missing: install Debian's etcd-server")
    server = start_etcd(tmp_path_factory.mktemp("auth-etcd") / "data")
    try:
        yield server
    finally:
        stop_etcd(server)


@pytest.fixture
def prefix() -> str:
    """An etcd key prefix no other test uses."""
    return f"/auth-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "etcd"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _open(kind: str, clock: FakeClock, tmp_path: Path, request: pytest.FixtureRequest, prefix: str):  # type: ignore[no-untyped-def]
    if kind == "sqlite":
        return open_sqlite_backend(
            tmp_path / "store.db", clock=clock, poll_interval=0.05, sweep_interval=1.0
        )
    server: EtcdServer = request.getfixturevalue("etcd")
    return open_etcd_backend([server.url], prefix=prefix, clock=clock)


@pytest.fixture
async def store(
    kind: str, clock: FakeClock, tmp_path: Path, request: pytest.FixtureRequest, prefix: str
) -> AsyncIterator[Backend]:
    """SQLite, then etcd: a fresh store on the fake wall clock."""
    async with _open(kind, clock, tmp_path, request, prefix) as backend:
        yield backend


@pytest.fixture
async def auth(store: Backend, tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with open_auth_server(
        store, data_dir=tmp_path / "data", cluster_name=CLUSTER, bcrypt_cost=TEST_BCRYPT_COST
    ) as server:
        yield server


async def refused(auth: AuthServer, token: str, role: str = "node") -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await auth.tokens.consume(token, role)
    return str(info.value)


async def race(n: int, attempt) -> tuple[list[object], int]:  # type: ignore[no-untyped-def]
    """Run ``attempt(i)`` in ``n`` tasks at once: (what the winners returned, losers)."""
    won: list[object] = []
    lost = [0]

    async def one(i: int) -> None:
        try:
            won.append(await attempt(i))
        except AuthenticationFailed:
            lost[0] += 1

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return won, lost[0]


# --- join tokens ----------------------------------------------------------------------


async def test_a_token_expires_after_its_ttl(auth: AuthServer, clock: FakeClock) -> None:
    token = (await auth.tokens.add(["node"])).name
    short = (await auth.tokens.add(["node"], ttl=60)).name
    clock.advance(59)
    await auth.tokens.check(short, "node")
    clock.advance(1)
    assert await refused(auth, short) == INVALID_TOKEN
    clock.advance(DEFAULT_TOKEN_TTL - 61)
    await auth.tokens.check(token, "node")  # a second before its 15 minutes are up
    clock.advance(1)
    assert await refused(auth, token) == INVALID_TOKEN
    # Gone from the listing too, and not usable for joining.
    assert [t for t in await auth.tokens.list() if t.name.endswith(token[-8:])] == []
    with pytest.raises(AuthenticationFailed):
        await auth.join(token=token, public_key=PrivateKey.generate().public, node_name="late")
    assert await auth.nodes.list_identities() == []


async def test_a_token_is_spent_once_by_racing_consumers(auth: AuthServer) -> None:
    token = (await auth.tokens.add(["node", "proxy"])).name
    won, lost = await race(RACERS, lambda i: auth.tokens.consume(token, "node"))
    assert len(won) == 1 and lost == RACERS - 1
    assert await refused(auth, token, "proxy") == INVALID_TOKEN
    assert await auth.backend.get_range("/tokens/") == []


async def test_racing_joins_with_one_token_make_one_node(auth: AuthServer) -> None:
    token = (await auth.tokens.add(["node"])).name

    async def join(i: int) -> str:
        key = PrivateKey.generate().public
        result = await auth.join(token=token, public_key=key, node_name=f"web{i}")
        return result.host_id

    won, lost = await race(RACERS, join)
    assert len(won) == 1 and lost == RACERS - 1
    identities = await auth.nodes.list_identities()
    assert [i.host_id for i in identities] == won
    # Only the winner's names are held (UUID, UUID.cluster, name, name.cluster).
    assert len(await auth.backend.get_range("/host_names/")) == 4
    assert len(await audited(auth, "TJ002E")) == RACERS - 1


async def test_a_token_raced_at_its_expiry_is_spent_at_most_once(
    auth: AuthServer, clock: FakeClock
) -> None:
    token = (await auth.tokens.add(["node"], ttl=30)).name
    clock.advance(30)
    won, lost = await race(RACERS, lambda i: auth.tokens.consume(token, "node"))
    assert won == [] and lost == RACERS


async def audited(auth: AuthServer, code: str) -> list[dict[str, object]]:
    """The audit events with ``code`` from the last day."""
    now = auth.backend.clock()
    found = await auth.audit.search(since=now - 86400, until=now + 1, events=[code])
    return [e.to_record() for e in found]


# --- two auth servers sharing one etcd --------------------------------------------------


@pytest.fixture
async def two_auth_servers(
    etcd: EtcdServer, clock: FakeClock, prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[AuthServer, AuthServer]]:
    """Two auth servers of one cluster, each with its own etcd connection and data dir."""
    async with (
        open_etcd_backend([etcd.url], prefix=prefix, clock=clock) as first_store,
        open_auth_server(
            first_store,
            data_dir=tmp_path / "a",
            cluster_name=CLUSTER,
            bcrypt_cost=TEST_BCRYPT_COST,
        ) as first,
        open_etcd_backend([etcd.url], prefix=prefix, clock=clock) as second_store,
        open_auth_server(
            second_store,
            data_dir=tmp_path / "b",
            cluster_name=CLUSTER,
            bcrypt_cost=TEST_BCRYPT_COST,
        ) as second,
    ):
        yield first, second


async def test_two_auth_servers_share_one_ca(
    two_auth_servers: tuple[AuthServer, AuthServer],
) -> None:
    first, second = two_auth_servers
    assert first.ca.public_keys("host") == second.ca.public_keys("host")
    assert first.ca.public_keys("user") == second.ca.public_keys("user")


async def test_joins_racing_on_two_auth_servers_make_one_node(
    two_auth_servers: tuple[AuthServer, AuthServer],
) -> None:
    first, second = two_auth_servers
    token = (await first.tokens.add(["node"])).name

    async def join(i: int) -> str:
        server = (first, second)[i % 2]
        key = PrivateKey.generate().public
        return (await server.join(token=token, public_key=key, node_name=f"db{i}")).host_id

    won, lost = await race(RACERS, join)
    assert len(won) == 1 and lost == RACERS - 1
    for server in (first, second):
        assert [i.host_id for i in await server.nodes.list_identities()] == won


async def test_one_totp_code_logs_in_once_across_two_auth_servers(
    two_auth_servers: tuple[AuthServer, AuthServer], clock: FakeClock
) -> None:
    first, second = two_auth_servers
    secret = await enrol(first, clock, "alice")
    code = totp_now(secret, clock)

    async def login(i: int) -> str:
        server = (first, second)[i % 2]
        user = await server.users.authenticate("alice", PASSWORD, code)
        return user.metadata.name

    won, lost = await race(RACERS, login)
    assert won == ["alice"] and lost == RACERS - 1


# --- invites ----------------------------------------------------------------------------


async def enrol(auth: AuthServer, clock: FakeClock, name: str) -> str:
    """Invite ``name``, complete the invite, and move past the enrolment's TOTP step."""
    invite = await auth.users.add(name, logins=["root", name])
    enrolment = await auth.users.start_enrolment(invite.token)
    await auth.users.complete_invite(invite.token, PASSWORD, totp_now(enrolment.secret, clock))
    clock.advance(30)
    return enrolment.secret


async def test_an_invite_expires_after_an_hour(auth: AuthServer, clock: FakeClock) -> None:
    invite = await auth.users.add("alice")
    clock.advance(INVITE_TTL - 1)
    enrolment = await auth.users.start_enrolment(invite.token)
    clock.advance(1)
    code = totp_now(enrolment.secret, clock)
    with pytest.raises(AuthenticationFailed, match=INVALID_INVITE):
        await auth.users.complete_invite(invite.token, PASSWORD, code)
    with pytest.raises(AuthenticationFailed, match=INVALID_INVITE):
        await auth.users.start_enrolment(invite.token)
    alice = await auth.users.get("alice")
    assert alice.spec.status.state == "invited"
    # She can still be given a new link, which works.
    again = await auth.users.reset("alice")
    enrolment = await auth.users.start_enrolment(again.token)
    await auth.users.complete_invite(again.token, PASSWORD, totp_now(enrolment.secret, clock))
    assert (await auth.users.get("alice")).spec.status.state == "active"


async def test_an_invite_completes_once_under_a_race(auth: AuthServer, clock: FakeClock) -> None:
    invite = await auth.users.add("alice")
    enrolment = await auth.users.start_enrolment(invite.token)
    code = totp_now(enrolment.secret, clock)

    async def complete(i: int) -> str:
        user = await auth.users.complete_invite(invite.token, f"{PASSWORD} {i}", code)
        return user.metadata.name

    won, lost = await race(4, complete)
    assert won == ["alice"] and lost == 3


# --- lockout ------------------------------------------------------------------------------


async def login_fails(auth: AuthServer, name: str, password: str, code: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await auth.users.authenticate(name, password, code, remote_addr="192.0.2.7:40000")
    return str(info.value)


async def test_five_failures_lock_for_30_minutes(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    for _ in range(MAX_FAILED_LOGINS):
        await login_fails(auth, "alice", WRONG, totp_now(secret, clock))
        clock.advance(60)
    assert (await auth.users.get("alice")).spec.status.locked_until is not None
    # Locked: correct credentials get the same message as an unknown user.
    assert await login_fails(auth, "alice", PASSWORD, totp_now(secret, clock)) == LOGIN_FAILED
    assert await login_fails(auth, "nobody", PASSWORD, totp_now(secret, clock)) == LOGIN_FAILED
    clock.advance(LOCKOUT_DURATION - 60 - 1)  # a second before the lock ends
    assert await login_fails(auth, "alice", PASSWORD, totp_now(secret, clock)) == LOGIN_FAILED
    clock.advance(31)
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))


async def test_failures_spread_over_more_than_30_minutes_do_not_lock(
    auth: AuthServer, clock: FakeClock
) -> None:
    secret = await enrol(auth, clock, "alice")
    for _ in range(MAX_FAILED_LOGINS * 2):
        await login_fails(auth, "alice", WRONG, totp_now(secret, clock))
        clock.advance(FAILURE_WINDOW / (MAX_FAILED_LOGINS - 1) + 1)
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))


async def test_failures_made_at_once_still_lock(auth: AuthServer, clock: FakeClock) -> None:
    """A brute force in parallel: no failure is lost to a compare-and-swap race."""
    secret = await enrol(auth, clock, "alice")
    code = totp_now(secret, clock)

    async def guess(i: int) -> None:
        await auth.users.authenticate("alice", f"{WRONG} {i}", code)

    won, lost = await race(RACERS, guess)
    assert won == [] and lost == RACERS
    alice = await auth.users.get("alice")
    assert alice.spec.status.locked_until is not None
    clock.advance(30)
    assert await login_fails(auth, "alice", PASSWORD, totp_now(secret, clock)) == LOGIN_FAILED
    failures = await audited(auth, "T1000W")
    assert sum(1 for e in failures if e.get("locked") is True) == 1


async def test_admin_unlock_lifts_the_lock(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    for _ in range(MAX_FAILED_LOGINS):
        await login_fails(auth, "alice", WRONG, totp_now(secret, clock))
    await auth.users.unlock("alice", by="admin")
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))
