"""Users: invites, passwords, TOTP enrolment, the login check, single-use codes, lockout."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pyotp
import pytest
import trio

from trioport.errors import AlreadyExists, AuthenticationFailed, NotFound
from trioport.roles.auth.server import AuthServer, open_auth_server
from trioport.roles.auth.users import (
    INVALID_INVITE,
    LOCKOUT_DURATION,
    LOGIN_FAILED,
    Users,
    invite_url,
)
from trioport.store.backend import Backend

from .conftest import CLUSTER, START, TEST_BCRYPT_COST, FakeClock, totp_now

PASSWORD = "correct horse battery"


async def enrol(auth: AuthServer, clock: FakeClock, name: str, password: str = PASSWORD) -> str:
    """Invite ``name``, complete the invite, and move past the enrolment's TOTP step."""
    invite = await auth.users.add(name, logins=["root", name])
    enrolment = await auth.users.start_enrolment(invite.token)
    await auth.users.complete_invite(invite.token, password, totp_now(enrolment.secret, clock))
    clock.advance(30)
    return enrolment.secret


async def login_fails(auth: AuthServer, name: str, password: str, code: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await auth.users.authenticate(name, password, code, remote_addr="192.0.2.7:40000")
    return str(info.value)


async def events(auth: AuthServer, *names: str) -> list[dict[str, object]]:
    found = await auth.audit.search(since=START - 1, until=START + 10 * 86400, events=names)
    return [e.to_record() for e in found]


# --- invites ------------------------------------------------------------------------


async def test_add_creates_an_invited_user_and_a_link(auth: AuthServer) -> None:
    invite = await auth.users.add("alice", logins=["root", "alice"], by="admin")
    assert len(invite.token) == 64 and int(invite.token, 16) >= 0
    assert invite.expires == START + 3600
    assert invite_url("proxy.example.test:3080", invite) == (
        f"https://proxy.example.test:3080/web/invite/{invite.token}"
    )
    assert invite.token not in repr(invite)
    alice = await auth.users.get("alice")
    assert alice.spec.status.state == "invited"
    assert alice.spec.roles == ["access"]
    assert alice.logins == ["root", "alice"]
    assert alice.spec.local_auth is None  # no credentials leave the service
    (created,) = await events(auth, "user.create")
    assert created["code"] == "T1002I" and created["name"] == "alice"
    # The token is not stored anywhere, only its hash.
    for item in await auth.backend.get_range("/"):
        assert invite.token.encode() not in item.value
    with pytest.raises(AlreadyExists):
        await auth.users.add("alice")


async def test_add_checks_names_logins_and_roles(auth: AuthServer) -> None:
    with pytest.raises(ValueError):
        await auth.users.add("a/b")
    with pytest.raises(ValueError, match="login"):
        await auth.users.add("bob", logins=["ro ot"])
    with pytest.raises(NotFound, match="role 'nope'"):
        await auth.users.add("bob", roles=["nope"])
    invite = await auth.users.add("bob", logins="root,bob", roles="access,auditor")
    assert (await auth.users.get(invite.user)).spec.roles == ["access", "auditor"]


async def test_invite_expires_after_an_hour(auth: AuthServer, clock: FakeClock) -> None:
    invite = await auth.users.add("alice")
    clock.advance(3600)
    with pytest.raises(AuthenticationFailed, match=INVALID_INVITE):
        await auth.users.start_enrolment(invite.token)


async def test_enrolment_gives_otpauth_uri_and_base32_secret(auth: AuthServer) -> None:
    invite = await auth.users.add("alice")
    enrolment = await auth.users.start_enrolment(invite.token)
    assert len(enrolment.secret) >= 32
    assert pyotp.TOTP(enrolment.secret).now().isdigit()  # valid base32
    assert enrolment.uri.startswith(f"otpauth://totp/{CLUSTER}:alice?secret={enrolment.secret}")
    assert f"issuer={CLUSTER}" in enrolment.uri
    assert enrolment.secret not in repr(enrolment)


async def test_completing_needs_a_matching_code(auth: AuthServer, clock: FakeClock) -> None:
    invite = await auth.users.add("alice")
    with pytest.raises(ValueError, match="enrol"):
        await auth.users.complete_invite(invite.token, PASSWORD, "123456")
    enrolment = await auth.users.start_enrolment(invite.token)
    wrong = pyotp.TOTP(pyotp.random_base32()).at(clock.now)
    with pytest.raises(AuthenticationFailed, match="code does not match"):
        await auth.users.complete_invite(invite.token, PASSWORD, wrong)
    # The link still works after a wrong code ...
    user = await auth.users.complete_invite(
        invite.token, PASSWORD, totp_now(enrolment.secret, clock)
    )
    assert user.spec.status.state == "active"
    # ... and not after it was used.
    with pytest.raises(AuthenticationFailed, match=INVALID_INVITE):
        await auth.users.start_enrolment(invite.token)
    with pytest.raises(AuthenticationFailed, match=INVALID_INVITE):
        await auth.users.complete_invite(invite.token, PASSWORD, totp_now(enrolment.secret, clock))


async def test_only_the_latest_enrolment_counts(auth: AuthServer, clock: FakeClock) -> None:
    invite = await auth.users.add("alice")
    first = await auth.users.start_enrolment(invite.token)
    second = await auth.users.start_enrolment(invite.token)
    assert first.secret != second.secret
    with pytest.raises(AuthenticationFailed):
        await auth.users.complete_invite(invite.token, PASSWORD, totp_now(first.secret, clock))
    await auth.users.complete_invite(invite.token, PASSWORD, totp_now(second.secret, clock))


@pytest.mark.parametrize(
    ("password", "ok"),
    [("x" * 11, False), ("x" * 12, True), ("é" * 128, True), ("x" * 129, False), (12 * " ", True)],
)
async def test_password_length(auth: AuthServer, clock: FakeClock, password: str, ok: bool) -> None:
    invite = await auth.users.add("alice")
    enrolment = await auth.users.start_enrolment(invite.token)
    code = totp_now(enrolment.secret, clock)
    if ok:
        await auth.users.complete_invite(invite.token, password, code)
    else:
        with pytest.raises(ValueError, match="characters"):
            await auth.users.complete_invite(invite.token, password, code)


async def test_long_passwords_are_never_truncated(auth: AuthServer, clock: FakeClock) -> None:
    # bcrypt alone reads only 72 bytes: these two would collide without the pre-hash.
    password = "a" * 100 + "X"
    secret = await enrol(auth, clock, "alice", password)
    assert await login_fails(auth, "alice", "a" * 100 + "Y", totp_now(secret, clock))
    clock.advance(30)
    await auth.users.authenticate("alice", password, totp_now(secret, clock))


async def test_password_is_bcrypt_at_the_configured_cost(
    auth: AuthServer, clock: FakeClock
) -> None:
    await enrol(auth, clock, "alice")
    raw = (await auth.backend.get("/users/alice")).value
    assert b'"password_hash": "$2b$04$' in raw  # tests use cost 4; the default is 12
    assert PASSWORD.encode() not in raw
    users = Users(auth.backend, auth.audit, auth.roles)
    assert users.bcrypt_cost == 12


# --- login --------------------------------------------------------------------------


async def test_login_succeeds_and_is_audited(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    user = await auth.users.authenticate(
        "alice", PASSWORD, totp_now(secret, clock), remote_addr="192.0.2.7:40000"
    )
    assert user.metadata.name == "alice" and user.spec.local_auth is None
    (event,) = await events(auth, "T1000I")
    assert event["event"] == "user.login"
    assert event["user"] == "alice"
    assert event["success"] is True
    assert event["addr.remote"] == "192.0.2.7:40000"


async def test_failures_look_the_same_for_every_cause(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    await auth.users.add("invited")
    code = totp_now(secret, clock)
    messages = {
        await login_fails(auth, "alice", "wrong password!!", code),
        await login_fails(auth, "alice", PASSWORD, "000000" if code != "000000" else "111111"),
        await login_fails(auth, "nobody", PASSWORD, code),
        await login_fails(auth, "invited", PASSWORD, code),
        await login_fails(auth, "bad/name", PASSWORD, code),
        await login_fails(auth, "alice", PASSWORD, "12345"),
    }
    assert messages == {LOGIN_FAILED}
    failures = await events(auth, "T1000W")
    assert len(failures) == 6
    assert all(f["success"] is False and f["event"] == "user.login" for f in failures)
    assert [f["user"] for f in failures] == [
        "alice",
        "alice",
        "nobody",
        "invited",
        "bad/name",
        "alice",
    ]


async def test_every_path_costs_one_bcrypt_check(
    auth: AuthServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = await enrol(auth, clock, "alice")
    await auth.users.add("invited")
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    for name in ("nobody", "invited", "alice"):
        calls.clear()
        await login_fails(auth, name, "wrong password!!", totp_now(secret, clock))
        assert len(calls) == 1
        assert calls[0].startswith(b"$2b$04$")  # the same cost for a dummy hash


async def test_a_totp_code_works_once(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    code = totp_now(secret, clock)
    await auth.users.authenticate("alice", PASSWORD, code)
    assert await login_fails(auth, "alice", PASSWORD, code) == LOGIN_FAILED
    (failure,) = await events(auth, "T1000W")
    assert failure["error"] == "TOTP code already used"
    # Nor does an older code from the window work after a newer one was used.
    clock.advance(30)
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock, steps=1))
    assert await login_fails(auth, "alice", PASSWORD, totp_now(secret, clock))


async def test_totp_window_is_one_step_each_side(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    clock.advance(300)
    await login_fails(auth, "alice", PASSWORD, totp_now(secret, clock, steps=-2))
    await login_fails(auth, "alice", PASSWORD, totp_now(secret, clock, steps=2))
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock, steps=-1))
    clock.advance(300)
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock, steps=1))


async def test_concurrent_logins_with_one_code_succeed_once(
    auth: AuthServer, clock: FakeClock
) -> None:
    secret = await enrol(auth, clock, "alice")
    code = totp_now(secret, clock)
    outcomes: list[bool] = []

    async def attempt() -> None:
        try:
            await auth.users.authenticate("alice", PASSWORD, code)
        except AuthenticationFailed:
            outcomes.append(False)
        else:
            outcomes.append(True)

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(attempt)
    assert sorted(outcomes) == [False] * 5 + [True]


async def test_five_failures_lock_the_account_for_30_minutes(
    auth: AuthServer, clock: FakeClock
) -> None:
    secret = await enrol(auth, clock, "alice")
    for _ in range(5):
        await login_fails(auth, "alice", "wrong password!!", totp_now(secret, clock))
        clock.advance(60)
    alice = await auth.users.get("alice")
    assert alice.spec.status.locked_until is not None
    # Locked: even correct credentials get the unknown-user message.
    assert await login_fails(auth, "alice", PASSWORD, totp_now(secret, clock)) == LOGIN_FAILED
    assert await login_fails(auth, "nobody", PASSWORD, totp_now(secret, clock)) == LOGIN_FAILED
    failures = await events(auth, "T1000W")
    assert failures[4].get("locked") is True
    assert failures[5]["error"] == "the account is locked"
    clock.advance(LOCKOUT_DURATION - 60)  # 30 minutes after the fifth failure
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))


async def test_failures_older_than_30_minutes_are_forgotten(
    auth: AuthServer, clock: FakeClock
) -> None:
    secret = await enrol(auth, clock, "alice")
    for _ in range(8):
        await login_fails(auth, "alice", "wrong password!!", totp_now(secret, clock))
        clock.advance(8 * 60)  # never 5 within 30 minutes
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))


async def test_success_clears_earlier_failures(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    for _ in range(4):
        await login_fails(auth, "alice", "wrong password!!", totp_now(secret, clock))
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))
    clock.advance(30)
    await login_fails(auth, "alice", "wrong password!!", totp_now(secret, clock))
    assert (await auth.users.get("alice")).spec.status.locked_until is None


async def test_admin_unlock(auth: AuthServer, clock: FakeClock) -> None:
    secret = await enrol(auth, clock, "alice")
    for _ in range(5):
        await login_fails(auth, "alice", "wrong password!!", totp_now(secret, clock))
    await auth.users.unlock("alice", by="admin")
    await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))


# --- reset, update, remove ----------------------------------------------------------


async def test_reset_clears_credentials_and_issues_a_new_link(
    auth: AuthServer, clock: FakeClock
) -> None:
    first = await auth.users.add("alice")
    enrolment = await auth.users.start_enrolment(first.token)
    await auth.users.complete_invite(first.token, PASSWORD, totp_now(enrolment.secret, clock))
    clock.advance(30)
    reset = await auth.users.reset("alice", by="admin")
    assert reset.kind == "reset"
    assert invite_url("p:3080", reset) == f"https://p:3080/web/reset/{reset.token}"
    assert await login_fails(auth, "alice", PASSWORD, totp_now(enrolment.secret, clock))
    new = await auth.users.start_enrolment(reset.token)
    await auth.users.complete_invite(reset.token, "a new password!", totp_now(new.secret, clock))
    clock.advance(30)
    await auth.users.authenticate("alice", "a new password!", totp_now(new.secret, clock))
    assert len(await events(auth, "reset_password_token.create")) == 2


async def test_reset_invalidates_the_previous_link(auth: AuthServer) -> None:
    first = await auth.users.add("alice")
    second = await auth.users.reset("alice")
    assert second.kind == "invite"  # she never finished the first one
    with pytest.raises(AuthenticationFailed):
        await auth.users.start_enrolment(first.token)
    await auth.users.start_enrolment(second.token)


async def test_list_update_remove(auth: AuthServer, clock: FakeClock) -> None:
    await enrol(auth, clock, "alice")
    await auth.users.add("bob")
    listed = await auth.users.list()
    assert [u.metadata.name for u in listed] == ["alice", "bob"]
    assert all(u.spec.local_auth is None for u in listed)
    updated = await auth.users.update("bob", logins=["ubuntu"], roles=["access", "editor"])
    assert updated.logins == ["ubuntu"] and updated.spec.roles == ["access", "editor"]
    await auth.users.remove("bob", by="admin")
    with pytest.raises(NotFound):
        await auth.users.get("bob")
    assert [e["name"] for e in await events(auth, "user.delete")] == ["bob"]
    assert await auth.backend.get_range("/invites/") == []


async def test_users_survive_a_restart(
    any_backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    async with open_auth_server(
        any_backend,
        data_dir=tmp_path / "data",
        cluster_name=CLUSTER,
        bcrypt_cost=TEST_BCRYPT_COST,
    ) as auth:
        secret = await enrol(auth, clock, "alice")
    async with open_auth_server(
        any_backend,
        data_dir=tmp_path / "data",
        cluster_name=CLUSTER,
        bcrypt_cost=TEST_BCRYPT_COST,
    ) as auth:
        await auth.users.authenticate("alice", PASSWORD, totp_now(secret, clock))
