"""What the proxy's SSH and HTTPS sides share: the link to auth, the CAs, the router.

The proxy keeps nothing persistent but its own host identity. Everything else it
asks of the auth service over one SSH connection, made with that identity and
kept up by :class:`AuthLink`: when the connection breaks, it is made again with
jittered exponential backoff (1 s doubling to 30 s), and callers meanwhile wait
up to :data:`AUTH_WAIT_SECONDS` before being told the auth service is unavailable
(counted from when the connection was lost: later in an outage they are told at
once).
The cluster's user CA (to accept user certificates on the SSH port) is fetched on
every (re)connection and kept, so users already connected are unaffected by a
short outage of the auth service. While no auth server answers, the link says so
in the process's :class:`~trioport.diag.Health` (``/readyz``: "auth unreachable
since ..."), from when the last connection was lost until one answers again.

During such an outage the proxy keeps serving: connections already made go on,
and new ones are decided from the last answers the auth service gave (the node
list, each user's access to each node, her role options, the CAs), each for up
to ``stale_seconds`` (:data:`~.router.STALE_SECONDS`, 5 minutes) after it was
received; see :mod:`.router`. A question the proxy has no recent enough answer
to is refused with "the auth service is unavailable".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from trioport.authclient import (
    AuthClient,
    AuthServiceUnavailable,
    ClientIdentity,
    connect_auth,
)
from trioport.config import Address
from trioport.diag import process_health
from trioport.errors import AuthenticationFailed, HostKeyNotVerifiable, TrioportError
from trioport.sshproto.keys import PublicKey, public_key_from_line

from .router import STALE_SECONDS, NodeRouter

__all__ = [
    "AUTH_WAIT_SECONDS",
    "OPTIONS_FRESH_SECONDS",
    "STALE_SECONDS",
    "AuthLink",
    "ProxyState",
]

log = logging.getLogger("trioport.proxy")

#: How long a request waits for the auth service to come back.
AUTH_WAIT_SECONDS = 10.0
#: Seconds a user's role options from the auth service are reused.
OPTIONS_FRESH_SECONDS = 10.0
#: Users whose options are kept at most.
OPTIONS_CACHE_SIZE = 10_000
#: Reconnection backoff, in seconds.
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0


class AuthLink:
    """One SSH connection to the auth service, made again whenever it breaks.

    Args:
        addresses: the auth servers, tried in turn.
        identity: the proxy's host identity.
        on_connect: called with each new client before anyone else may use it
            (to refresh the CAs).
        outage_note: added to the health report's reason while no auth server
            answers (what the proxy does meanwhile).
    """

    def __init__(
        self,
        addresses: Sequence[Address | str],
        identity: ClientIdentity,
        *,
        on_connect: Callable[[AuthClient], Any] | None = None,
        connect_timeout: float = 10.0,
        outage_note: str = "",
    ) -> None:
        if not addresses:
            raise ValueError("at least one auth server address is needed")
        self.addresses = list(addresses)
        self.identity = identity
        self.on_connect = on_connect
        self.connect_timeout = connect_timeout
        self.outage_note = outage_note
        self._client: AuthClient | None = None
        self._ready = trio.Event()
        self.last_error: str | None = None
        self.health = process_health()
        #: When the last connection was lost (None while connected or before the first).
        self.lost_since: float | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection up until cancelled; ``started`` after the first success."""
        try:
            await self._run(task_status)
        finally:
            self.health.ok("proxy: auth")

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        started = False
        delay = BACKOFF_START
        turn = 0
        while True:
            addr = self.addresses[turn % len(self.addresses)]
            turn += 1
            try:
                async with connect_auth(
                    addr, self.identity, connect_timeout=self.connect_timeout
                ) as client:
                    if self.on_connect is not None:
                        await self.on_connect(client)
                    self._client = client
                    self._ready.set()
                    self.last_error = None
                    self.lost_since = None
                    self.health.ok("proxy: auth")
                    delay = BACKOFF_START
                    log.info("connected to the auth service at %s", client.address)
                    if not started:
                        started = True
                        task_status.started()
                    await client.conn.wait_closed()
                    self.lost_since = time.time()
                    log.warning("lost the connection to the auth service at %s", client.address)
            except (AuthServiceUnavailable, HostKeyNotVerifiable, AuthenticationFailed) as exc:
                self.last_error = str(exc)
                log.warning("auth service: %s", exc)
            except TrioportError as exc:
                self.last_error = str(exc)
                log.warning("auth service at %s: %s", addr, exc)
            finally:
                self._client = None
                if self._ready.is_set():
                    self._ready = trio.Event()
            if self.last_error is not None:
                self.lost_since = self.lost_since or time.time()
                since = self.lost_since
                reason = self.last_error + (f"; {self.outage_note}" if self.outage_note else "")
                self.health.unreachable("proxy: auth", "auth", reason, since=since)
            await trio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(BACKOFF_MAX, delay * 2)

    async def client(self, wait: float = AUTH_WAIT_SECONDS) -> AuthClient:
        """The current client, waiting up to ``wait`` seconds for a connection.

        The wait is counted from when the connection was lost: once an outage has
        lasted ``wait`` seconds, callers are told at once rather than each waiting
        again (a login fails fast; the router falls back on its cached answers).

        Raises:
            AuthServiceUnavailable: no connection within ``wait`` seconds.
        """
        client = self._client
        if client is not None and not client.conn.closed:
            return client
        if self.lost_since is not None and self.last_error is not None:
            wait = max(0.0, min(wait, self.lost_since + wait - time.time()))
        with trio.move_on_after(wait):
            while True:
                await self._ready.wait()
                client = self._client
                if client is not None and not client.conn.closed:
                    return client
                await trio.sleep(0.05)
        why = f": {self.last_error}" if self.last_error else ""
        raise AuthServiceUnavailable(f"the auth service is unavailable{why}")


@attrs.define(eq=False)
class ProxyState:
    """The proxy's shared state; made by :func:`~trioport.roles.proxy.service.serve`.

    Attributes:
        cluster_name: the cluster this proxy belongs to.
        identity: the proxy's host identity (key, host certificate, host CA).
        link: the connection to the auth service.
        router: finds nodes for users.
        user_cas: the cluster's user CA keys (refreshed on each reconnection).
        host_cas: the cluster's host CA keys.
        ssh_addr: where the proxy's SSH port listens (set once listening).
        web_addr: where its HTTPS port listens (set once listening).
        public_addr: where users reach the web endpoint, if configured.
        auth_addresses: the auth servers (the ``trioport-auth`` subsystem dials them).
        clock: the wall clock, for certificate validity.
        idle_timeout: seconds a logged-in connection may move no channel data
            before it is disconnected (None: no limit); roles may shorten it.
        role_options: users' role options as the auth service last gave them,
            with when (trio's clock); reused for :data:`OPTIONS_FRESH_SECONDS`,
            and for ``stale_seconds`` while the auth service cannot be reached.
        stale_seconds: how old the auth service's last answers may be and still
            be used while it cannot be reached (:data:`STALE_SECONDS`).
    """

    cluster_name: str
    identity: ClientIdentity
    link: AuthLink
    router: NodeRouter
    auth_addresses: list[Address]
    user_cas: list[PublicKey] = attrs.Factory(list)
    host_cas: list[PublicKey] = attrs.Factory(list)
    ssh_addr: Address | None = None
    web_addr: Address | None = None
    public_addr: Address | None = None
    clock: Callable[[], float] = time.time
    idle_timeout: float | None = None
    role_options: dict[str, tuple[float, dict[str, Any]]] = attrs.Factory(dict)
    stale_seconds: float = STALE_SECONDS
    #: The clock of the caches (trio's; tests move it on).
    cache_clock: Callable[[], float] = trio.current_time

    async def auth(self, wait: float = AUTH_WAIT_SECONDS) -> AuthClient:
        """The auth API client (see :meth:`AuthLink.client`)."""
        return await self.link.client(wait)

    async def refresh_authorities(self, client: AuthClient) -> None:
        """Fetch the cluster's CAs from ``client`` and keep them."""
        found = await client.authorities()
        user = [
            public_key_from_line(line) for line in found["user"]["resource"]["spec"]["public_keys"]
        ]
        host = [
            public_key_from_line(line) for line in found["host"]["resource"]["spec"]["public_keys"]
        ]
        if user:
            self.user_cas = user
        if host:
            self.host_cas = host

    async def emit(self, code: str, **fields: Any) -> None:
        """Best-effort audit event: logged, never raised, never waits long."""
        with trio.move_on_after(5):
            try:
                client = await self.link.client(wait=2)
                await client.emit_event(code, **fields)
            except (TrioportError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.warning("could not record audit event %s: %s", code, exc)
