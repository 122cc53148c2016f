"""Join tokens: random, single-use even under races, 15 minutes at most, masked everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trioport.config import StaticToken
from trioport.errors import AuthenticationFailed, NotFound
from trioport.roles.auth.audit_log import AuditLog
from trioport.roles.auth.tokens import DEFAULT_TOKEN_TTL, INVALID_TOKEN, JoinTokens
from trioport.store.backend import Backend

from .conftest import START, FakeClock


@pytest.fixture
async def audit(tmp_path: Path, clock: FakeClock) -> AuditLog:
    log = AuditLog(tmp_path / "log", clock=clock)
    yield log  # type: ignore[misc]
    await log.aclose()


@pytest.fixture
def tokens(backend: Backend, audit: AuditLog) -> JoinTokens:
    return JoinTokens(backend, audit, static=[StaticToken(("node", "proxy"), "static-secret-1")])


async def refused(tokens: JoinTokens, token: str, role: str = "node") -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await tokens.consume(token, role)
    return str(info.value)


async def test_dynamic_token_is_random_hex_and_expires_in_15_minutes(tokens: JoinTokens) -> None:
    token = await tokens.add(["node"])
    assert len(token.name) == 32 and int(token.name, 16) >= 0
    assert token.metadata.expires is not None
    assert token.metadata.expires.timestamp() == START + DEFAULT_TOKEN_TTL
    other = await tokens.add(["node"])
    assert other.name != token.name


async def test_token_is_single_use(tokens: JoinTokens) -> None:
    token = (await tokens.add(["node"])).name
    used = await tokens.consume(token, "node")
    assert used.spec.roles == ["node"]
    assert await refused(tokens, token) == INVALID_TOKEN


async def test_token_expires(tokens: JoinTokens, clock: FakeClock) -> None:
    token = (await tokens.add(["node"])).name
    clock.advance(DEFAULT_TOKEN_TTL - 1)
    await tokens.check(token, "node")  # still valid a second before
    clock.advance(1)
    assert await refused(tokens, token) == INVALID_TOKEN


async def test_ttl_can_be_shortened_never_lengthened(tokens: JoinTokens, clock: FakeClock) -> None:
    short = (await tokens.add(["node"], ttl=60)).name
    with pytest.raises(ValueError, match="at most 900 seconds"):
        await tokens.add(["node"], ttl=DEFAULT_TOKEN_TTL + 1)
    with pytest.raises(ValueError):
        await tokens.add(["node"], ttl=0)
    clock.advance(61)
    assert await refused(tokens, short) == INVALID_TOKEN


async def test_roles_are_checked(tokens: JoinTokens) -> None:
    with pytest.raises(ValueError, match="unknown join token role"):
        await tokens.add(["admin"])
    with pytest.raises(ValueError, match="at least one role"):
        await tokens.add([])
    token = (await tokens.add(["node"])).name
    assert await refused(tokens, token, "proxy") == INVALID_TOKEN
    # A refusal for the wrong role does not spend it.
    await tokens.consume(token, "node")


async def test_every_refusal_says_the_same(tokens: JoinTokens, clock: FakeClock) -> None:
    used = (await tokens.add(["node"])).name
    await tokens.consume(used, "node")
    expired = (await tokens.add(["node"], ttl=1)).name
    wrong_role = (await tokens.add(["proxy"])).name
    clock.advance(2)
    messages = {
        await refused(tokens, "0" * 32),
        await refused(tokens, used),
        await refused(tokens, expired),
        await refused(tokens, wrong_role),
        await refused(tokens, "../users/alice"),
        await refused(tokens, "x" * 10_000),
        await refused(tokens, "static-secret-1", "auth"),
    }
    assert messages == {INVALID_TOKEN}


async def test_concurrent_joins_with_one_token_spend_it_once(
    any_backend: Backend, audit: AuditLog
) -> None:
    tokens = JoinTokens(any_backend, audit)
    token = (await tokens.add(["node"])).name
    winners: list[int] = []
    losers: list[int] = []

    async def join(i: int) -> None:
        try:
            await tokens.consume(token, "node")
        except AuthenticationFailed:
            losers.append(i)
        else:
            winners.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(join, i)
    assert len(winners) == 1
    assert len(losers) == 19
    assert await any_backend.get_range("/tokens/") == []


async def test_static_tokens_are_reusable_and_role_bound(
    tokens: JoinTokens, clock: FakeClock
) -> None:
    for _ in range(3):
        await tokens.consume("static-secret-1", "node")
    clock.advance(365 * 86400)
    await tokens.consume("static-secret-1", "proxy")
    assert await refused(tokens, "static-secret-1", "auth") == INVALID_TOKEN
    assert await refused(tokens, "static-secret-2") == INVALID_TOKEN


async def test_tokens_are_masked_in_listings_repr_and_audit(
    tokens: JoinTokens, tmp_path: Path
) -> None:
    token = await tokens.add(["node", "proxy"], by="admin")
    secret = token.name
    assert secret not in repr(token)
    listed = await tokens.list()
    names = [t.name for t in listed]
    assert secret not in names and "static-secret-1" not in names
    assert any(n.endswith(secret[-8:]) and n.startswith("*" * 24) for n in names)
    assert any(t.metadata.description.startswith("static") for t in listed)
    log_text = "".join(p.read_text() for p in (tmp_path / "log").iterdir())
    assert "join_token.create" in log_text and "TJT00I" in log_text
    assert secret not in log_text
    assert secret[-8:] in log_text


async def test_remove(tokens: JoinTokens) -> None:
    token = (await tokens.add(["node"])).name
    await tokens.remove(token)
    assert await refused(tokens, token) == INVALID_TOKEN
    with pytest.raises(NotFound):
        await tokens.remove(token)
    with pytest.raises(NotFound):
        await tokens.remove("../x")
