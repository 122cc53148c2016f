"""Web sessions: who a browser is, in the proxy's memory, behind an opaque cookie.

A login through the web UI makes a :class:`WebSession`: the proxy generates a key
pair for it, the auth service certifies the key for the user (``POST /v1/login``,
password and TOTP code checked there), and the key and certificate stay in this
process's memory, never on disk and never in the browser. The browser holds two
values:

- the cookie :data:`COOKIE_NAME` (``__Host-`` prefix: Secure, ``Path=/``, no
  Domain; plus HttpOnly and ``SameSite=Strict``) carrying 32 random bytes, the
  session id. A new id is made at every login (the old session, if the browser
  still had one, is dropped: rotation), and the id is kept only as its SHA-256
  digest, so the session table holds nothing a browser could present.
- the CSRF token (32 random bytes too), returned in the login's JSON and required
  in ``X-CSRF-Token`` on every state-changing request and, as a bearer token, on
  the terminal websocket (:mod:`.terminal`): a cookie alone never authorises.

A session ends at logout, when its certificate expires (the auth service sets the
certificate's life: :data:`SESSION_TTL` asked, capped by the user's roles), or
when the proxy stops. When it ends its terminals are cut and its connection to the
auth service closes.

**Acting as the user.** Whatever the web UI shows that is the user's to see
(nodes, sessions, recordings, the audit log) is asked of the auth service *as
her*: the session keeps its own SSH connection to the auth service
(:class:`UserLink`), logged in with her certificate, exactly as ``tsh`` reaches
the auth API through the proxy's ``trioport-auth`` subsystem. Her roles decide
there what she gets. The connection is made on first use and closed after
:data:`LINK_IDLE_SECONDS` unused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trioport.authclient import AuthClient, AuthServiceUnavailable, ClientIdentity, connect_auth
from trioport.errors import TrioportError
from trioport.sshproto.certs import Certificate
from trioport.sshproto.keys import PrivateKey

from ..state import ProxyState

__all__ = [
    "COOKIE_NAME",
    "MAX_SESSIONS",
    "SESSION_TTL",
    "WebSession",
    "WebSessionStore",
    "clear_cookie",
    "read_cookie",
    "session_cookie",
]

log = logging.getLogger("trioport.proxy.webui")

#: The session cookie (``__Host-``: the browser insists on Secure, Path=/, no Domain).
COOKIE_NAME = "__Host-trioport_session"
#: The certificate life asked for a web session (the user's roles may cap it).
SESSION_TTL = 12 * 3600.0
#: Web sessions held at most; the oldest are dropped first beyond it.
MAX_SESSIONS = 10_000
#: Seconds between sweeps for expired sessions.
SWEEP_SECONDS = 60.0
#: Seconds to wait for the user's connection to the auth service.
USER_AUTH_WAIT = 10.0
#: A session's connection to the auth service closes after this long unused
#: (it is made again on the next request).
LINK_IDLE_SECONDS = 300.0
_TOKEN_BYTES = 32


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()


def session_cookie(session_id: str, max_age: int) -> str:
    """The ``Set-Cookie`` value that gives the browser ``session_id``."""
    return (
        f"{COOKIE_NAME}={session_id}; Path=/; Max-Age={max(0, max_age)}; "
        "Secure; HttpOnly; SameSite=Strict"
    )


def clear_cookie() -> str:
    """The ``Set-Cookie`` value that makes the browser forget the session."""
    return f"{COOKIE_NAME}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"


def read_cookie(header_values: list[str]) -> list[str]:
    """The values of our cookie in ``Cookie`` headers (RFC 6265 §5.4), in order."""
    found = []
    for header in header_values:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == COOKIE_NAME and value:
                found.append(value.strip('"'))
    return found


class UserLink:
    """One SSH connection to the auth service as a web session's user, while it lasts.

    Unlike the proxy's own :class:`~..state.AuthLink` it does not retry by itself
    and reports nothing to the process's health: a user's connection failing
    (her certificate refused, say) is her request's error, not the proxy's.
    """

    def __init__(self, addresses: list[Any], identity: ClientIdentity) -> None:
        self.addresses = addresses
        self.identity = identity
        self.client: AuthClient | None = None
        self.error: str | None = None
        self.ready = trio.Event()
        self.done = False

    async def run(self) -> None:
        """Connect (each auth server in turn) and hold the connection until it closes."""
        try:
            for addr in self.addresses:
                try:
                    async with connect_auth(
                        addr, self.identity, connect_timeout=USER_AUTH_WAIT
                    ) as client:
                        self.client = client
                        self.ready.set()
                        await client.conn.wait_closed()
                        return
                except TrioportError as exc:
                    self.error = str(exc)
        finally:
            self.client = None
            self.done = True
            self.ready.set()


@attrs.define(eq=False, repr=False)
class WebSession:
    """One browser's login: the user, her certificate and key, the CSRF token.

    Attributes:
        user: her name (the certificate's key id).
        key: the private key the proxy made for this session.
        certificate: her user certificate for ``key``.
        csrf_token: the token state-changing requests must carry.
        roles: her roles at login.
        expires: when the certificate, and so the session, expires (epoch seconds).
        remote_addr: where she logged in from.
    """

    digest: bytes
    user: str
    key: PrivateKey
    certificate: Certificate
    csrf_token: str
    roles: list[str]
    expires: float
    remote_addr: str | None = None
    created: float = attrs.Factory(time.time)
    #: Cancel scopes of the session's terminals, cancelled when it ends.
    terminals: set[trio.CancelScope] = attrs.Factory(set)
    link: UserLink | None = None
    link_scope: trio.CancelScope | None = None
    link_used: float = 0.0
    ended: bool = False

    def __repr__(self) -> str:
        return f"<WebSession of {self.user!r}>"

    @property
    def logins(self) -> list[str]:
        """The OS logins her certificate names."""
        return list(self.certificate.principals)

    def check_csrf(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant time)."""
        if not token:
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"), self.csrf_token.encode())

    def document(self) -> dict[str, Any]:
        """What login and ``GET /v1/webapi/sessions/web`` answer."""
        return {
            "user": self.user,
            "csrf_token": self.csrf_token,
            "expires": int(self.expires),
            "logins": self.logins,
            "roles": list(self.roles),
        }


class WebSessionStore:
    """The proxy's web sessions, and each one's connection to the auth service as her.

    Args:
        state: the proxy's state (auth addresses, CAs, cluster name).
        clock: the wall clock (certificates expire by it).
        max_sessions: sessions held at most.
    """

    def __init__(
        self,
        state: ProxyState,
        *,
        clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.state = state
        self.clock = clock
        self.max_sessions = max_sessions
        self._sessions: dict[bytes, WebSession] = {}
        self._nursery: trio.Nursery | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the sessions' auth connections and sweep expired sessions, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(SWEEP_SECONDS)
                    self.sweep()
        finally:
            self._nursery = None
            for session in list(self._sessions.values()):
                self.end(session)

    def create(
        self,
        *,
        user: str,
        key: PrivateKey,
        certificate: Certificate,
        roles: list[str],
        remote_addr: str | None = None,
    ) -> tuple[str, WebSession]:
        """A new session; returns its id (for the cookie, never stored) and the session."""
        session_id = secrets.token_urlsafe(_TOKEN_BYTES)
        session = WebSession(
            digest=_digest(session_id),
            user=user,
            key=key,
            certificate=certificate,
            csrf_token=secrets.token_urlsafe(_TOKEN_BYTES),
            roles=roles,
            expires=float(certificate.valid_before),
            remote_addr=remote_addr,
            created=self.clock(),
        )
        self._sessions[session.digest] = session
        while len(self._sessions) > self.max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: s.created)
            self.end(oldest)
        return session_id, session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session of ``session_id``, or None (unknown, ended or expired)."""
        if not session_id or len(session_id) > 256:
            return None
        session = self._sessions.get(_digest(session_id))
        if session is None:
            return None
        if self.clock() >= session.expires:
            self.end(session)
            return None
        return session

    def find(self, session_ids: list[str]) -> WebSession | None:
        """The first live session among the cookie values a browser sent."""
        for value in session_ids:
            session = self.get(value)
            if session is not None:
                return session
        return None

    def end(self, session: WebSession) -> None:
        """Forget ``session``: its terminals are cut and its auth connection closes."""
        self._sessions.pop(session.digest, None)
        session.ended = True
        for scope in list(session.terminals):
            scope.cancel()
        if session.link_scope is not None:
            session.link_scope.cancel()

    def sweep(self) -> None:
        """End every expired session; close auth connections left unused."""
        now = self.clock()
        for session in [s for s in self._sessions.values() if now >= s.expires]:
            log.info("web session of %s expired", session.user)
            self.end(session)
        for session in self._sessions.values():
            idle = now - session.link_used >= LINK_IDLE_SECONDS
            if session.link_scope is not None and idle and not session.terminals:
                session.link_scope.cancel()
                session.link = session.link_scope = None

    def identity(self, session: WebSession) -> ClientIdentity:
        """The user's identity for connections the proxy makes on her behalf."""
        return ClientIdentity(
            key=session.key,
            certificate=session.certificate,
            host_cas=tuple(self.state.host_cas) or self.state.identity.host_cas,
            cluster_name=self.state.cluster_name,
        )

    async def auth_client(self, session: WebSession) -> AuthClient:
        """The auth API as the session's user (her own SSH connection, made on first use).

        Raises:
            AuthServiceUnavailable: no connection within :data:`USER_AUTH_WAIT`
                seconds (the reason says why: down, or her certificate refused).
        """
        session.link_used = self.clock()
        link = session.link
        if link is None or link.done:
            if self._nursery is None:
                raise RuntimeError("the web session store is not running")
            link = UserLink(list(self.state.auth_addresses), self.identity(session))
            scope = trio.CancelScope()
            session.link, session.link_scope = link, scope
            if session.ended:
                scope.cancel()

            async def hold() -> None:
                with scope:
                    await link.run()

            self._nursery.start_soon(hold)
        with trio.move_on_after(USER_AUTH_WAIT + 1):
            await link.ready.wait()
        if link.client is None:
            why = f": {link.error}" if link.error else ""
            raise AuthServiceUnavailable(f"the auth service is unavailable{why}")
        return link.client
