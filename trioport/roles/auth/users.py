"""Local users: invites, passwords, TOTP, and the login check with lockout.

**Invites.** :meth:`Users.add` creates the user in state ``invited`` and returns an
:class:`Invite` whose token the caller turns into a link
(:func:`invite_url`: ``https://PROXY:3080/web/invite/TOKEN``). The token is
:data:`INVITE_TOKEN_BYTES` random bytes in hex, valid for :data:`INVITE_TTL` (one
hour). Only its SHA-256 is stored: ``/invites/<sha256>`` (expiring with the
invite) and the user's ``local_auth.invite_token_hash``. The person with the link
calls :meth:`Users.start_enrolment` (a fresh TOTP secret, shown as an
``otpauth://`` URI and as base32 text) and then :meth:`Users.complete_invite` with
a password and a code from the new authenticator; the code must match, so nobody
ends up enrolled with a secret they never scanned. :meth:`Users.reset` clears the
password and TOTP and issues a new link the same way (``/web/reset/TOKEN``).

**Passwords** are 12 to 128 characters; longer ones are refused, never cut.
bcrypt only reads the first 72 bytes of its input, so the password is first
hashed with SHA-256 and base64-encoded (44 ASCII bytes, no NUL) and *that* goes
through bcrypt at cost :data:`BCRYPT_COST` (12). Every character counts and no
input can reach bcrypt's limit. bcrypt runs in a worker thread.

**TOTP** (RFC 6238 via pyotp): 6 digits, 30-second steps, accepted one step
either side of now. The step of the last accepted code is stored per user and a
code from that step or an earlier one is refused, so a code works once.

**Login** (:meth:`Users.authenticate`): password and code are checked in constant
time; unknown users, users without credentials and locked users cost the same
bcrypt work and get the same message, :data:`LOGIN_FAILED`. 5 failures within 30
minutes lock the account for 30 minutes (Teleport's numbers, after PCI DSS v4.0
§8.3.4); while it is locked even correct credentials are refused with that same
message. Every attempt is a ``user.login`` audit event (``T1000I`` or ``T1000W``)
whose ``error`` says what really failed, for the auditor's eyes only.

All changes to a user are compare-and-swap updates (:func:`._storage.mutate`), so
two logins racing with one code, or failures racing each other, are counted as if
they happened one after the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Sequence
from typing import Literal

import attrs
import bcrypt
import pyotp
import trio

from trioport.errors import AuthenticationFailed, CompareFailed, NotFound, StoreError
from trioport.resources import (
    LOGIN_NAME,
    LocalAuth,
    Metadata,
    User,
    UserSpec,
    UserStatus,
    check_name,
    mask_secret,
)
from trioport.store.backend import Backend, Item

from ... import metrics
from . import audit_log
from ._storage import decode, encode, epoch, mutate, utc
from .audit_log import AuditLog
from .roles import RoleStore

__all__ = [
    "BCRYPT_COST",
    "INVITE_TTL",
    "LOCKOUT_DURATION",
    "LOGIN_FAILED",
    "MAX_FAILED_LOGINS",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "TOTP_DIGITS",
    "TOTP_PERIOD",
    "Invite",
    "TOTPEnrolment",
    "Users",
    "check_password",
    "invite_url",
    "totp_step",
]

BCRYPT_COST = 12
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 128
INVITE_TTL = 3600.0
INVITE_TOKEN_BYTES = 32
MAX_FAILED_LOGINS = 5
#: Failures older than this are forgotten.
FAILURE_WINDOW = 30 * 60.0
LOCKOUT_DURATION = 30 * 60.0
TOTP_DIGITS = 6
TOTP_PERIOD = 30
#: Steps accepted either side of the current one.
TOTP_WINDOW = 1

#: The one message for every failed login (no user enumeration).
LOGIN_FAILED = "invalid user name, password or second factor code"
INVALID_INVITE = "the invite link is invalid or has expired"

USERS_PREFIX = "/users/"
INVITES_PREFIX = "/invites/"
_INVITE_TOKEN = re.compile(f"[0-9a-f]{{{2 * INVITE_TOKEN_BYTES}}}")
_USED = b"used"


@attrs.frozen(repr=False)
class Invite:
    """A pending invite or reset link: give ``token`` to the user once."""

    user: str
    token: str
    expires: float
    kind: Literal["invite", "reset"]

    def __repr__(self) -> str:
        return f"Invite(user={self.user!r}, kind={self.kind!r}, token={mask_secret(self.token)!r})"


@attrs.frozen(repr=False)
class TOTPEnrolment:
    """What the user scans: the ``otpauth://`` URI (for a QR code) and its base32 secret."""

    user: str
    secret: str
    uri: str

    def __repr__(self) -> str:
        return f"TOTPEnrolment(user={self.user!r}, secret='<redacted>')"


def invite_url(proxy_addr: str, invite: Invite) -> str:
    """The link for an invite or reset: ``https://PROXY:3080/web/invite/TOKEN``."""
    path = "invite" if invite.kind == "invite" else "reset"
    return f"https://{proxy_addr}/web/{path}/{invite.token}"


def check_password(password: object) -> str:
    """Return ``password`` if it is acceptable, else raise ValueError saying why.

    12 to 128 characters (Unicode code points), valid Unicode.
    """
    if not isinstance(password, str):
        raise ValueError("the password must be text")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"the password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"the password must be at most {MAX_PASSWORD_CHARS} characters")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the password is not valid Unicode text") from None
    return password


def _prehash(password: str) -> bytes:
    """SHA-256 then base64: what bcrypt sees (44 bytes; bcrypt reads at most 72)."""
    digest = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
    return base64.b64encode(digest)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def totp_step(secret: str, code: str, now: float, *, after: int | None = None) -> int | None:
    """The time step ``code`` belongs to, if it is valid now, else ``None``.

    Every candidate step (now and :data:`TOTP_WINDOW` either side) is compared in
    constant time, with no early exit. A step not greater than ``after`` (the
    last one used) does not count.
    """
    code = "".join(code.split()) if isinstance(code, str) else ""
    well_formed = len(code) == TOTP_DIGITS and code.isascii() and code.isdigit()
    presented = code.encode("ascii", "replace") if well_formed else b"\x00" * TOTP_DIGITS
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)
    current = int(now // TOTP_PERIOD)
    matched = None
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        expected = totp.at(step * TOTP_PERIOD).encode("ascii")
        if hmac.compare_digest(expected, presented) and matched is None:
            matched = step
    if not well_formed or matched is None:
        return None
    if after is not None and matched <= after:
        return None
    return matched


class _Refused(Exception):
    """Internal: a login check failed inside a compare-and-swap update."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Users:
    """The cluster's local users.

    Args:
        backend: the cluster's store.
        audit: the audit log (every login attempt and change is recorded).
        roles: the role store (roles named on a user must exist).
        issuer: the name authenticator apps show (the cluster name).
        bcrypt_cost: bcrypt's work factor. Keep the default (12) outside tests.
        invite_ttl: seconds an invite or reset link is valid.
    """

    def __init__(
        self,
        backend: Backend,
        audit: AuditLog,
        roles: RoleStore,
        *,
        issuer: str = "trioport",
        bcrypt_cost: int = BCRYPT_COST,
        invite_ttl: float = INVITE_TTL,
    ) -> None:
        if not 4 <= bcrypt_cost <= 31:
            raise ValueError("bcrypt cost is 4..31 (12 or more outside tests)")
        self.backend = backend
        self.audit = audit
        self.roles = roles
        self.issuer = issuer
        self.bcrypt_cost = bcrypt_cost
        self.invite_ttl = invite_ttl
        self._limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self._dummy_hash: bytes | None = None

    async def prepare(self) -> None:
        """Make the dummy bcrypt hash now, so no login attempt pays for it (and shows it)."""
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_hex(16))

    # --- administration --------------------------------------------------------

    async def add(
        self,
        name: str,
        *,
        logins: Sequence[str] = (),
        roles: Sequence[str] = ("access",),
        by: str | None = None,
    ) -> Invite:
        """Create a user and return her invite (valid :data:`INVITE_TTL`).

        Args:
            name: the user name.
            logins: her OS logins (the ``logins`` trait ``{{internal.logins}}`` expands to).
            roles: role names; each must exist. ``access`` unless told.
            by: who did it, for the audit log.

        Raises:
            ValueError: a bad name or login, or no roles.
            NotFound: a role does not exist.
            AlreadyExists: the user exists.
        """
        check_name(name, "user name")
        login_list = self._check_logins(logins)
        role_list = await self._check_roles(roles)
        now = self.backend.clock()
        token = secrets.token_hex(INVITE_TOKEN_BYTES)
        digest = _token_hash(token)
        expires = now + self.invite_ttl
        user = User(
            metadata=Metadata(name=name),
            spec=UserSpec(
                roles=role_list,  # type: ignore[arg-type]
                traits={"logins": login_list},
                created=utc(now),
                status=UserStatus(state="invited", invite_expires=utc(expires)),
                local_auth=LocalAuth(invite_token_hash=digest),
            ),
        )
        await self.backend.create(Item(USERS_PREFIX + name, encode(user)))
        await self._put_invite(digest, name, "invite", expires)
        await self.audit.emit(
            audit_log.USER_CREATE,
            user=by,
            fields={"name": name, "roles": role_list, "logins": login_list},
        )
        await self._audit_link(name, token, "invite", by)
        return Invite(user=name, token=token, expires=expires, kind="invite")

    async def reset(self, name: str, *, by: str | None = None) -> Invite:
        """Clear a user's password and TOTP and return a new link to set them.

        Any earlier invite or reset link stops working; a lockout is lifted.

        Raises:
            NotFound: no such user.
        """
        now = self.backend.clock()
        token = secrets.token_hex(INVITE_TOKEN_BYTES)
        digest = _token_hash(token)
        expires = now + self.invite_ttl
        old: list[str | None] = []

        def change(user: User) -> User:
            auth = user.spec.local_auth or LocalAuth()
            old[:] = [auth.invite_token_hash]
            status = attrs.evolve(
                user.spec.status,
                state="invited" if user.spec.status.state == "invited" else "reset",
                invite_expires=utc(expires),
                locked_until=None,
                lock_reason="",
                failed_logins=[],
            )
            auth = LocalAuth(invite_token_hash=digest)
            return attrs.evolve(user, spec=attrs.evolve(user.spec, status=status, local_auth=auth))

        user = await mutate(self.backend, self._key(name), User, change)
        if old and old[0]:
            await self._delete_quietly(INVITES_PREFIX + old[0])
        invited = user.spec.status.state == "invited"
        kind: Literal["invite", "reset"] = "invite" if invited else "reset"
        await self._put_invite(digest, name, kind, expires)
        await self._audit_link(name, token, kind, by)
        return Invite(user=name, token=token, expires=expires, kind=kind)

    async def get(self, name: str) -> User:
        """A user, without credentials.

        Raises:
            NotFound: no such user.
        """
        return (await self._load(name)).public()

    async def list(self) -> list[User]:
        """Every user, without credentials, by name."""
        items = await self.backend.get_range(USERS_PREFIX)
        return [decode(item, User).public() for item in items]

    async def remove(self, name: str, *, by: str | None = None) -> None:
        """Delete a user and her pending link.

        Raises:
            NotFound: no such user.
        """
        user = await self._load(name)
        await self.backend.delete(self._key(name))
        if user.spec.local_auth and user.spec.local_auth.invite_token_hash:
            await self._delete_quietly(INVITES_PREFIX + user.spec.local_auth.invite_token_hash)
        await self.audit.emit(audit_log.USER_DELETE, user=by, fields={"name": name})

    async def update(
        self,
        name: str,
        *,
        logins: Sequence[str] | None = None,
        roles: Sequence[str] | None = None,
        by: str | None = None,
    ) -> User:
        """Change a user's logins and/or roles.

        Raises:
            NotFound: no such user, or a role that does not exist.
            ValueError: a bad login, or no roles.
        """
        login_list = None if logins is None else self._check_logins(logins)
        role_list = None if roles is None else await self._check_roles(roles)

        def change(user: User) -> User:
            spec = user.spec
            if login_list is not None:
                spec = attrs.evolve(spec, traits={**spec.traits, "logins": login_list})
            if role_list is not None:
                spec = attrs.evolve(spec, roles=role_list)
            return attrs.evolve(user, spec=spec)

        user = await mutate(self.backend, self._key(name), User, change)
        await self.audit.emit(
            audit_log.USER_UPDATE,
            user=by,
            fields={"name": name, "roles": user.spec.roles, "logins": user.logins},
        )
        return user.public()

    async def unlock(self, name: str, *, by: str | None = None) -> None:
        """Lift a lockout and forget recent failures.

        Raises:
            NotFound: no such user.
        """

        def change(user: User) -> User:
            status = attrs.evolve(
                user.spec.status, locked_until=None, lock_reason="", failed_logins=[]
            )
            return attrs.evolve(user, spec=attrs.evolve(user.spec, status=status))

        await mutate(self.backend, self._key(name), User, change)
        await self.audit.emit(
            audit_log.USER_UPDATE, user=by, fields={"name": name, "unlocked": True}
        )

    # --- invites -----------------------------------------------------------------

    async def start_enrolment(self, token: str) -> TOTPEnrolment:
        """Begin completing an invite: make the TOTP secret the user will scan.

        Each call makes a new secret; only the latest one can complete the invite.

        Raises:
            AuthenticationFailed: the link is unknown, expired or used.
        """
        item, record = await self._invite(token)
        user = record["user"]
        secret = pyotp.random_base32()
        replacement = json.dumps({**record, "totp_secret": secret}).encode("utf-8")
        try:
            await self.backend.compare_and_swap(
                item, Item(item.key, replacement, expires=item.expires)
            )
        except CompareFailed:
            raise AuthenticationFailed(INVALID_INVITE) from None
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
            name=user, issuer_name=self.issuer
        )
        return TOTPEnrolment(user=user, secret=secret, uri=uri)

    async def complete_invite(
        self, token: str, password: str, totp_code: str, *, remote_addr: str | None = None
    ) -> User:
        """Finish an invite or reset: set the password and confirm the TOTP enrolment.

        Raises:
            ValueError: the password is not acceptable (:func:`check_password`), or
                :meth:`start_enrolment` was not called first.
            AuthenticationFailed: the link is unknown, expired or used, or the code
                does not match the secret being enrolled (the link stays valid).
        """
        check_password(password)
        item, record = await self._invite(token)
        name, secret = record["user"], record.get("totp_secret")
        if not secret:
            raise ValueError("enrol an authenticator first (start_enrolment)")
        now = self.backend.clock()
        step = totp_step(secret, totp_code, now)
        if step is None:
            raise AuthenticationFailed(
                "the code does not match; check the authenticator and the device clock"
            )
        password_hash = await self._hash(password)
        try:
            await self.backend.compare_and_swap(item, Item(item.key, _USED, expires=item.expires))
        except CompareFailed:
            raise AuthenticationFailed(INVALID_INVITE) from None
        digest = item.key.removeprefix(INVITES_PREFIX)

        def change(user: User) -> User:
            auth = user.spec.local_auth or LocalAuth()
            if not auth.invite_token_hash or not hmac.compare_digest(
                auth.invite_token_hash, digest
            ):
                raise AuthenticationFailed(INVALID_INVITE)
            status = attrs.evolve(
                user.spec.status,
                state="active",
                invite_expires=None,
                locked_until=None,
                lock_reason="",
                failed_logins=[],
            )
            auth = LocalAuth(password_hash=password_hash, totp_secret=secret, totp_last_step=step)
            return attrs.evolve(user, spec=attrs.evolve(user.spec, status=status, local_auth=auth))

        try:
            user = await mutate(self.backend, self._key(name), User, change)
        except NotFound:
            raise AuthenticationFailed(INVALID_INVITE) from None
        finally:
            await self._delete_quietly(item.key)
        await self.audit.emit(
            audit_log.USER_PASSWORD_CHANGE,
            user=name,
            addr_remote=remote_addr,
            success=True,
            fields={"reason": record.get("kind", "invite"), "mfa": "totp"},
        )
        return user.public()

    # --- login -------------------------------------------------------------------

    async def authenticate(
        self, name: str, password: str, totp_code: str, *, remote_addr: str | None = None
    ) -> User:
        """Check a login: password and TOTP code, with lockout and single-use codes.

        Returns:
            The user (without credentials).

        Raises:
            AuthenticationFailed: with :data:`LOGIN_FAILED`, whatever went wrong.
        """
        now = self.backend.clock()
        try:
            user: User | None = await self._load(name)
        except (NotFound, ValueError):
            user = None
        auth = user.spec.local_auth if user is not None else None
        usable = bool(user and auth and auth.password_hash and auth.totp_secret)
        stored_hash = auth.password_hash if usable and auth else None

        # The same bcrypt work for every path: unknown, locked or credential-less users.
        candidate = password if isinstance(password, str) else ""
        password_ok = await self._verify(candidate, stored_hash)
        password_ok = password_ok and MIN_PASSWORD_CHARS <= len(candidate) <= MAX_PASSWORD_CHARS
        secret = auth.totp_secret if usable and auth else pyotp.random_base32()
        step = totp_step(secret, totp_code, now)

        reason: str | None = None
        if user is None:
            reason = "unknown user"
        elif not usable:
            reason = "the user has not set a password and TOTP yet"
        elif _locked(user, now):
            reason = "the account is locked"
        elif not password_ok:
            reason = "wrong password"
        elif step is None:
            reason = "wrong or expired TOTP code"

        if reason is None:
            assert user is not None and step is not None
            try:
                user = await self._record_success(user.metadata.name, step, now)
            except _Refused as refused:
                reason = refused.reason
            except NotFound:
                reason = "unknown user"
        if reason is not None:
            locked_now = False
            if user is not None and usable and reason != "the account is locked":
                locked_now = await self._record_failure(user.metadata.name, now)
            await self.audit.emit(
                audit_log.USER_LOGIN_FAILURE,
                user=name if isinstance(name, str) else repr(name),
                addr_remote=remote_addr,
                success=False,
                error=reason,
                fields={"method": "local", **({"locked": True} if locked_now else {})},
            )
            metrics.LOGINS.labels(result="failure").inc()
            raise AuthenticationFailed(LOGIN_FAILED)
        metrics.LOGINS.labels(result="success").inc()
        assert user is not None
        await self.audit.emit(
            audit_log.USER_LOGIN,
            user=user.metadata.name,
            addr_remote=remote_addr,
            success=True,
            fields={"method": "local", "mfa": "totp"},
        )
        return user.public()

    async def _record_success(self, name: str, step: int, now: float) -> User:
        def change(user: User) -> User:
            auth = user.spec.local_auth
            if auth is None or not auth.totp_secret:
                raise _Refused("the user has not set a password and TOTP yet")
            if _locked(user, now):
                raise _Refused("the account is locked")
            if auth.totp_last_step is not None and step <= auth.totp_last_step:
                raise _Refused("TOTP code already used")
            status = attrs.evolve(
                user.spec.status, failed_logins=[], locked_until=None, lock_reason=""
            )
            auth = attrs.evolve(auth, totp_last_step=step)
            return attrs.evolve(user, spec=attrs.evolve(user.spec, status=status, local_auth=auth))

        return await mutate(self.backend, self._key(name), User, change)

    async def _record_failure(self, name: str, now: float) -> bool:
        """Count a failure; return True if it locked the account."""
        locked = [False]

        def change(user: User) -> User:
            status = user.spec.status
            locked[0] = False
            if _locked(user, now):
                return user
            recent = [t for t in status.failed_logins if epoch(t) > now - FAILURE_WINDOW]
            recent.append(utc(now))
            if len(recent) >= MAX_FAILED_LOGINS:
                locked[0] = True
                status = attrs.evolve(
                    status,
                    failed_logins=[],
                    locked_until=utc(now + LOCKOUT_DURATION),
                    lock_reason=f"{len(recent)} failed logins within"
                    f" {int(FAILURE_WINDOW // 60)} minutes",
                )
            else:
                status = attrs.evolve(status, failed_logins=recent)
            return attrs.evolve(user, spec=attrs.evolve(user.spec, status=status))

        try:
            await mutate(self.backend, self._key(name), User, change)
        except (NotFound, StoreError):
            return False
        return locked[0]

    # --- helpers -----------------------------------------------------------------

    @staticmethod
    def _key(name: str) -> str:
        check_name(name, "user name")
        return USERS_PREFIX + name

    async def _load(self, name: str) -> User:
        return decode(await self.backend.get(self._key(name)), User)

    @staticmethod
    def _check_logins(logins: Sequence[str]) -> list[str]:
        if isinstance(logins, str):
            logins = [x for x in logins.split(",") if x]
        out = []
        for login in logins:
            if not isinstance(login, str) or not LOGIN_NAME.fullmatch(login):
                raise ValueError(f"not a valid login name: {str(login)[:64]!r}")
            if login not in out:
                out.append(login)
        return out

    async def _check_roles(self, roles: Sequence[str]) -> list[str]:
        if isinstance(roles, str):
            roles = [x for x in roles.split(",") if x]
        out = list(dict.fromkeys(roles))
        if not out:
            raise ValueError("a user needs at least one role")
        for role in out:
            try:
                await self.roles.get(role)
            except NotFound:
                raise NotFound(f"role {role!r} does not exist") from None
        return out

    async def _hash(self, password: str) -> bytes:
        prehashed = _prehash(password)
        salt = bcrypt.gensalt(self.bcrypt_cost)
        return await trio.to_thread.run_sync(bcrypt.hashpw, prehashed, salt, limiter=self._limiter)

    async def _verify(self, password: str, stored: bytes | None) -> bool:
        if stored is None:
            await self.prepare()
            assert self._dummy_hash is not None
            stored = self._dummy_hash
            real = False
        else:
            real = True
        try:
            ok = await trio.to_thread.run_sync(
                bcrypt.checkpw, _prehash(password), stored, limiter=self._limiter
            )
        except ValueError:  # a corrupt stored hash
            ok = False
        return ok and real

    async def _put_invite(
        self, digest: str, name: str, kind: Literal["invite", "reset"], expires: float
    ) -> None:
        record = json.dumps({"user": name, "kind": kind, "totp_secret": None}).encode("utf-8")
        await self.backend.put(Item(INVITES_PREFIX + digest, record, expires=expires))

    async def _invite(self, token: str) -> tuple[Item, dict[str, str]]:
        if not isinstance(token, str) or not _INVITE_TOKEN.fullmatch(token):
            raise AuthenticationFailed(INVALID_INVITE)
        try:
            item = await self.backend.get(INVITES_PREFIX + _token_hash(token))
        except NotFound:
            raise AuthenticationFailed(INVALID_INVITE) from None
        if item.value == _USED:
            raise AuthenticationFailed(INVALID_INVITE)
        try:
            record = json.loads(item.value)
        except ValueError:
            raise StoreError(f"corrupt invite at {item.key}") from None
        return item, record

    async def _audit_link(self, name: str, token: str, kind: str, by: str | None) -> None:
        await self.audit.emit(
            audit_log.RESET_PASSWORD_TOKEN_CREATE,
            user=by,
            fields={"name": name, "token": mask_secret(token), "type": kind},
        )

    async def _delete_quietly(self, key: str) -> None:
        try:
            await self.backend.delete(key)
        except NotFound:
            pass


def _locked(user: User, now: float) -> bool:
    until = user.spec.status.locked_until
    return until is not None and epoch(until) > now
