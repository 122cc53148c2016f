"""Join tokens: how a new node, proxy or auth server proves it may join the cluster.

Two kinds:

- **Static** tokens come from the configuration file (``auth_service.tokens:
  ["node:SECRET"]``). They never expire and may be used many times; prefer
  dynamic ones.
- **Dynamic** tokens come from ``tctl tokens add`` / ``tctl nodes add``
  (:meth:`JoinTokens.add`): :data:`TOKEN_BYTES` random bytes in hex, single-use,
  valid for :data:`DEFAULT_TOKEN_TTL` (15 minutes). A shorter TTL may be asked
  for, a longer one is refused, and nothing ever extends a token's life.

A dynamic token is stored at ``/tokens/<token>`` with the backend's expiry. It is
*consumed* with a compare-and-swap from its stored value to a "used" marker, then
deleted: of any number of simultaneous joins presenting one token, exactly one
wins the swap, on every backend (:meth:`JoinTokens.consume`). Checking a token
(:meth:`JoinTokens.check`) does not consume it, so a join can validate everything
else before it spends the token.

Tokens are shown in full once, by :meth:`JoinTokens.add`; listings, ``repr`` and
the audit log show :func:`~trioport.resources.mask_secret` of them. Every refusal
says the same thing, whether the token is unknown, expired, used, or for another
role.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from trioport.errors import AuthenticationFailed, CompareFailed, NotFound
from trioport.resources import Metadata, Token, TokenSpec, mask_secret
from trioport.store.backend import Backend, Item

from . import audit_log
from ._storage import decode, encode, utc
from .audit_log import AuditLog

if TYPE_CHECKING:
    from trioport.config import StaticToken

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "INVALID_TOKEN",
    "TOKENS_PREFIX",
    "TOKEN_BYTES",
    "TOKEN_ROLES",
    "JoinTokens",
]

#: Longest (and default) life of a dynamic token, in seconds.
DEFAULT_TOKEN_TTL = 15 * 60
#: Random bytes in a dynamic token (Teleport: 16); shown as twice as many hex digits.
TOKEN_BYTES = 16
TOKEN_ROLES = ("node", "proxy", "auth")
TOKENS_PREFIX = "/tokens/"
#: The one message for every refused token.
INVALID_TOKEN = "the join token is invalid, expired or already used"  # noqa: S105

#: What a presented token may look like before it is used in a key: bounded, and
#: free of "/" and control characters. Static tokens are compared, never looked up.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_.~-]{1,256}")
#: The value a consumed token is swapped to before it is deleted.
_USED = b"used"


def _key(token: str) -> str:
    return TOKENS_PREFIX + token


def _check_roles(roles: Sequence[str]) -> list[str]:
    if isinstance(roles, str):
        roles = [roles]
    out = list(dict.fromkeys(roles))
    if not out:
        raise ValueError("a join token needs at least one role (node, proxy or auth)")
    bad = [r for r in out if r not in TOKEN_ROLES]
    if bad:
        raise ValueError(f"unknown join token role {bad[0]!r}; expected node, proxy or auth")
    return out


def _static_resource(secret: bytes, roles: Sequence[str]) -> Token:
    """A static token as a resource, named by its mask (never the secret)."""
    shown = re.sub(r"[^A-Za-z0-9_.~-]", "*", mask_secret(secret.decode("utf-8", "replace")))
    return Token(
        metadata=Metadata(
            name=shown or "*", description="static token from the configuration file"
        ),
        spec=TokenSpec(roles=list(roles)),  # type: ignore[arg-type]
    )


class JoinTokens:
    """Static and dynamic join tokens of one cluster.

    Args:
        backend: the cluster's store.
        audit: where ``join_token.create`` goes.
        static: the configuration file's tokens.
        max_ttl: the longest life of a dynamic token (also the default).
    """

    def __init__(
        self,
        backend: Backend,
        audit: AuditLog,
        *,
        static: Iterable[StaticToken] = (),
        max_ttl: float = DEFAULT_TOKEN_TTL,
    ) -> None:
        self.backend = backend
        self.audit = audit
        self.max_ttl = max_ttl
        self._static = [(t.token.encode("utf-8"), tuple(t.roles)) for t in static]

    def __repr__(self) -> str:
        return f"<JoinTokens static={len(self._static)}>"

    async def add(
        self, roles: Sequence[str], *, ttl: float | None = None, by: str | None = None
    ) -> Token:
        """Make a dynamic single-use token; the returned resource's name is the secret.

        Show ``token.name`` to the administrator once; log ``token.public()``.

        Args:
            roles: what the token lets its holder join as: ``node``, ``proxy``, ``auth``.
            ttl: seconds until it expires; at most (and by default) ``max_ttl``.
            by: who asked, for the audit log.

        Raises:
            ValueError: no or unknown roles, or a TTL that is not in (0, max_ttl].
        """
        role_list = _check_roles(roles)
        life = self.max_ttl if ttl is None else float(ttl)
        if not 0 < life <= self.max_ttl:
            raise ValueError(
                f"a join token lives at most {int(self.max_ttl)} seconds"
                f" and can only be shortened (asked for {ttl})"
            )
        token = secrets.token_hex(TOKEN_BYTES)
        expires = self.backend.clock() + life
        resource = Token(
            metadata=Metadata(name=token, expires=utc(expires)),
            spec=TokenSpec(roles=role_list),  # type: ignore[arg-type]
        )
        await self.backend.create(Item(_key(token), encode(resource), expires=expires))
        await self.audit.emit(
            audit_log.JOIN_TOKEN_CREATE,
            user=by,
            fields={"token": mask_secret(token), "roles": role_list, "expires": expires},
        )
        return resource

    async def list(self) -> list[Token]:
        """The live dynamic tokens and the static ones, masked (``Token.public()``)."""
        out = []
        for item in await self.backend.get_range(TOKENS_PREFIX):
            if item.value == _USED:
                continue
            out.append(decode(item, Token).public())
        for secret, roles in self._static:
            out.append(_static_resource(secret, roles))
        return out

    async def remove(self, token: str) -> None:
        """Delete a dynamic token before it is used.

        Raises:
            NotFound: no such live token (static tokens live in the config file).
        """
        if not _TOKEN_SHAPE.fullmatch(token):
            raise NotFound("no such join token")
        await self.backend.delete(_key(token))

    async def check(self, token: str, role: str) -> Token:
        """Whether ``token`` may join as ``role`` now, *without* consuming it.

        Returns:
            The token (for a static token, a resource describing it).

        Raises:
            AuthenticationFailed: with :data:`INVALID_TOKEN`, whatever the reason.
        """
        found = self._static_match(token, role)
        if found is not None:
            return found
        item = await self._dynamic(token)
        resource = decode(item, Token)
        if role not in resource.spec.roles:
            raise AuthenticationFailed(INVALID_TOKEN)
        return resource

    async def consume(self, token: str, role: str) -> Token:
        """Spend ``token`` for joining as ``role``: exactly once, even under races.

        Static tokens are checked and not spent.

        Raises:
            AuthenticationFailed: with :data:`INVALID_TOKEN`, whatever the reason
                (including losing the race to another join with the same token).
        """
        found = self._static_match(token, role)
        if found is not None:
            return found
        item = await self._dynamic(token)
        resource = decode(item, Token)
        if role not in resource.spec.roles:
            raise AuthenticationFailed(INVALID_TOKEN)
        try:
            await self.backend.compare_and_swap(
                item, Item(item.key, _USED, expires=item.expires or self.backend.clock() + 60)
            )
        except CompareFailed:
            raise AuthenticationFailed(INVALID_TOKEN) from None
        try:
            await self.backend.delete(item.key)
        except NotFound:
            pass  # expired in between: the marker is gone either way
        return resource

    def _static_match(self, token: str, role: str) -> Token | None:
        presented = token.encode("utf-8", "surrogatepass")
        match = None
        for secret, roles in self._static:
            # Compare against every static token (no early exit), in constant time.
            if hmac.compare_digest(presented, secret) and role in roles and match is None:
                match = _static_resource(secret, roles)
        return match

    async def _dynamic(self, token: str) -> Item:
        if not _TOKEN_SHAPE.fullmatch(token):
            raise AuthenticationFailed(INVALID_TOKEN)
        try:
            item = await self.backend.get(_key(token))
        except NotFound:
            raise AuthenticationFailed(INVALID_TOKEN) from None
        if item.value == _USED:
            raise AuthenticationFailed(INVALID_TOKEN)
        return item
