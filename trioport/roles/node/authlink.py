"""The node's connection to the auth service: kept open, re-made with backoff when lost.

Everything the node asks of the auth service (heartbeats, access questions,
recording uploads, audit events, session tracking) goes through one
:class:`AuthLink`. Its :meth:`AuthLink.run` task holds one
:func:`~trioport.authclient.connect_auth` connection, logged in with the node's
host certificate, and when that connection ends (the auth service restarted, the
network broke, keepalives went unanswered) it connects again after a jittered
exponential backoff, trying each configured auth server in turn.

Callers never hold a connection themselves: :meth:`AuthLink.call` waits (up to a
timeout) for a live connection, makes one request on it, and turns any failure to
reach the auth service into :class:`~trioport.authclient.AuthServiceUnavailable`.
A caller decides what to do without auth: the heartbeat skips a beat, the
recorder keeps buffering, access questions fall back to a recent answer. So
sessions that are already running never wait for the auth service.

Backoff: attempt ``n`` (from 0) waits ``d/2 + uniform(0, d/2)`` seconds with
``d = min(max_delay, base * 2**n)`` ("equal jitter"), so nodes that lost the same
auth server do not all come back in the same instant, and none spins.

Failover: with several auth servers (``teleport.auth_servers``, all sharing one
etcd), a lost connection is made again to the *next* server after the first,
short delay, so a node whose auth server died is back within about a second and
no caller notices more than a slow request. While no server answers the link
reports itself to the process's :class:`~trioport.diag.Health` (``/readyz`` says
"auth unreachable since ..."), from the moment the last connection was lost, and
clears it as soon as one answers again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from trioport.authclient import (
    AuthClient,
    AuthServiceUnavailable,
    ClientIdentity,
    connect_auth,
)
from trioport.config import Address
from trioport.diag import Health, process_health
from trioport.errors import TrioportError
from trioport.ssh import keepalive

__all__ = ["AuthLink", "backoff_delay"]

log = logging.getLogger("trioport.node.auth")

T = TypeVar("T")

#: First reconnect delay and the cap, in seconds.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
#: Keepalives on an idle connection to auth: every this many seconds, 2 misses drop it.
KEEPALIVE_INTERVAL = 15.0


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE,
    max_delay: float = BACKOFF_MAX,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0, 1, 2, ...): equal jitter."""
    ceiling = min(max_delay, base * (2 ** min(attempt, 32)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class AuthLink:
    """A self-healing connection to the auth service, shared by the node's tasks.

    Args:
        servers: auth service addresses (``host:port``), tried in turn.
        identity: the node's key, host certificate and the host CA.
        connect_timeout: seconds to connect and log in, per attempt.
        backoff_base: the first reconnect delay.
        backoff_max: the longest reconnect delay.
        keepalive_interval: seconds between keepalives on the connection.
        rng: randomness for the jitter (tests pass a seeded one).
        health: where to report an outage (default: the process's).
        component: the name it reports under.
    """

    def __init__(
        self,
        servers: Sequence[str | Address],
        identity: ClientIdentity,
        *,
        connect_timeout: float = 10.0,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        rng: random.Random | None = None,
        health: Health | None = None,
        component: str = "node: auth",
    ) -> None:
        if not servers:
            raise ValueError("at least one auth server address is needed")
        self.servers = list(servers)
        self.identity = identity
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.keepalive_interval = keepalive_interval
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._client: AuthClient | None = None
        self._changed = trio.Event()
        self._scope: trio.CancelScope | None = None
        #: How many times a connection was made (tests and metrics read it).
        self.connections = 0
        #: Why the last attempt failed, for logs and status pages.
        self.last_error: str | None = None
        self.health = health or process_health()
        self.component = component
        #: When the last connection was lost (None while connected or before the first).
        self.lost_since: float | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection to the auth service is up right now."""
        return self._client is not None

    def _set(self, client: AuthClient | None) -> None:
        self._client = client
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection to the auth service until cancelled.

        Calls ``task_status.started()`` at once: callers wait for the connection
        through :meth:`call`, not here.
        """
        task_status.started()
        attempt = 0
        index = 0
        try:
            while True:
                where = self.servers[index % len(self.servers)]
                made = self.connections
                try:
                    await self._connect_and_hold(where)
                except (TrioportError, OSError, trio.BrokenResourceError) as exc:
                    self.last_error = str(exc)
                    log.warning("auth service at %s: %s", where, exc)
                    if self.lost_since is None:
                        self.lost_since = time.time()
                    self.health.unreachable(
                        self.component, "auth", self.last_error, since=self.lost_since
                    )
                finally:
                    self._scope = None
                    if self._client is not None:
                        self._set(None)
                if self.connections != made:
                    attempt = 0  # it was up: the next server gets the shortest wait
                index += 1
                delay = backoff_delay(
                    attempt, base=self.backoff_base, max_delay=self.backoff_max, rng=self.rng
                )
                attempt += 1
                await trio.sleep(delay)
        finally:
            self.health.ok(self.component)

    async def _connect_and_hold(self, where: str | Address) -> None:
        """Connect to ``where`` and serve callers on it until the connection ends."""
        async with connect_auth(
            where, self.identity, connect_timeout=self.connect_timeout
        ) as client:
            self.connections += 1
            self.last_error = None
            self.lost_since = None
            self.health.ok(self.component)
            log.info("connected to the auth service at %s", client.address)
            with trio.CancelScope() as scope:
                self._scope = scope
                self._set(client)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keepalive, client.conn, self.keepalive_interval, 2)
                    await client.conn.wait_closed()
                    nursery.cancel_scope.cancel()
            self._scope = None
            self._set(None)
            self.lost_since = time.time()
            log.warning("lost the connection to the auth service at %s", client.address)

    def drop(self, client: AuthClient | None = None) -> None:
        """Give up the current connection (it failed a request); :meth:`run` makes another."""
        if self._scope is not None and (client is None or client is self._client):
            self._scope.cancel()

    async def wait_connected(self) -> AuthClient:
        """Wait for a live connection and return its client."""
        while self._client is None:
            await self._changed.wait()
        return self._client

    async def call(
        self, fn: Callable[[AuthClient], Awaitable[T]], *, within: float | None = 30.0
    ) -> T:
        """Run ``fn(client)`` on the live connection, waiting for one up to ``within`` seconds.

        Raises:
            AuthServiceUnavailable: no answer within ``within`` seconds, or it broke
                during the request (the connection is then re-made).
            TrioportError: whatever the auth service answered (AccessDenied, ...).
        """
        with trio.move_on_after(within if within is not None else float("inf")) as scope:
            client = await self.wait_connected()
            try:
                return await fn(client)
            except AuthServiceUnavailable:
                self.drop(client)
                raise
        assert scope.cancelled_caught
        raise AuthServiceUnavailable(
            f"the auth service did not answer within {within:g}s"
            + (f" ({self.last_error})" if self.last_error else "")
        )
