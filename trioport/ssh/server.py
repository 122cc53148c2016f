"""The server side of the trio driver: accept connections, enforce limits, serve them.

:func:`serve` runs listeners; each accepted stream gets :func:`handle`, which owns
the connection's nursery, enforces the login grace time and the keepalive, and
turns every failure of one peer into a log line and a closed connection. Nothing
from one peer reaches the listener loop (trio's ``serve_listeners`` warning).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import metrics
from ..errors import DisconnectReason, TrioportError
from ..sshproto import ConnectionConfig
from ..sshproto import events as ev
from .connection import SSHConnection, SSHHandler, open_ssh

__all__ = ["ServerLimits", "handle", "keepalive", "serve"]

log = logging.getLogger("trioport.ssh.server")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-server limits (defaults in line with OpenSSH and Teleport)."""

    #: Seconds a client has to authenticate (OpenSSH: 120; we target <= 60).
    login_grace: float = 30.0
    #: Unauthenticated connections at once, in all (OpenSSH MaxStartups' hard limit is 100).
    max_unauthenticated: int = 100
    #: Unauthenticated connections at once from one source address.
    max_unauthenticated_per_source: int = 10
    #: Seconds between keepalives on an idle authenticated connection (0: off).
    keepalive_interval: float = 300.0
    #: Unanswered keepalives before the connection is dropped (OpenSSH ClientAliveCountMax 3).
    keepalive_count: int = 3


class _Gate:
    """Counts unauthenticated connections, globally and per source."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_source: collections.Counter[str] = collections.Counter()

    def admit(self, source: str) -> str | None:
        """Count a new connection in, or say why it is refused."""
        if self.total >= self.limits.max_unauthenticated:
            return "too many unauthenticated connections"
        if self.by_source[source] >= self.limits.max_unauthenticated_per_source:
            return "too many unauthenticated connections from your address"
        self.total += 1
        self.by_source[source] += 1
        return None

    def release(self, source: str) -> None:
        self.total -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]


def _peer_host(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else "local"
    except OSError:
        return "unknown"


async def keepalive(conn: SSHConnection, interval: float, count: int) -> None:
    """Send keepalive@openssh.com every ``interval`` seconds; drop after ``count`` misses."""
    if interval <= 0:
        return
    misses = 0
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(interval) as scope:
            await conn.global_request(ev.KeepAlive(), want_reply=True)
        if scope.cancelled_caught:
            misses += 1
            if misses >= count:
                await conn.disconnect(DisconnectReason.CONNECTION_LOST, "keepalive timeout")
                return
        else:
            misses = 0


async def handle(
    stream: trio.abc.Stream,
    config: ConnectionConfig,
    handler: SSHHandler,
    limits: ServerLimits = ServerLimits(),
    *,
    gate: _Gate | None = None,
    on_connection: Callable[[SSHConnection], Any] | None = None,
) -> None:
    """Serve one SSH connection until it ends; never raises for a peer's misdeeds."""
    source = _peer_host(stream)
    metrics.CONNECTIONS.inc()
    metrics.OPEN_CONNECTIONS.inc()
    refusal = gate.admit(source) if gate is not None else None
    counted = gate is not None and refusal is None
    try:
        async with open_ssh(stream, config, handler) as conn:
            if on_connection is not None:
                on_connection(conn)
            if refusal is not None:
                log.info("refusing %s: %s", source, refusal)
                await conn.disconnect(DisconnectReason.TOO_MANY_CONNECTIONS, refusal)
                return
            with trio.move_on_after(limits.login_grace):
                await _wait_authenticated(conn)
            if gate is not None and counted:
                gate.release(source)
                counted = False
            if not conn.authenticated.is_set():
                if not conn.closed:
                    log.info("%s: login grace time exceeded", source)
                    await conn.disconnect(
                        DisconnectReason.BY_APPLICATION, "login grace time exceeded"
                    )
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    keepalive, conn, limits.keepalive_interval, limits.keepalive_count
                )
                await conn.wait_closed()
                nursery.cancel_scope.cancel()
    except (TrioportError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("%s: connection ended: %s", source, exc)
    except Exception:
        # A bug must not take the listener (and everyone else's sessions) down.
        log.exception("%s: connection crashed", source)
    finally:
        metrics.OPEN_CONNECTIONS.dec()
        if gate is not None and counted:
            gate.release(source)
        await trio.aclose_forcefully(stream)


async def _wait_authenticated(conn: SSHConnection) -> None:
    async with trio.open_nursery() as nursery:

        async def closed() -> None:
            await conn.wait_closed()
            nursery.cancel_scope.cancel()

        nursery.start_soon(closed)
        await conn.authenticated.wait()
        nursery.cancel_scope.cancel()


async def serve(
    listeners: list[trio.SocketListener] | int,
    config: ConnectionConfig,
    handler_factory: Callable[[], SSHHandler],
    limits: ServerLimits = ServerLimits(),
    *,
    host: str | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept SSH connections forever on ``listeners`` (or a port to listen on).

    Calls ``task_status.started(addresses)`` once listening.
    """
    if isinstance(listeners, int):
        listeners = await trio.open_tcp_listeners(listeners, host=host)
    gate = _Gate(limits)

    async def one(stream: trio.abc.Stream) -> None:
        await handle(stream, config, handler_factory(), limits, gate=gate)

    addresses = [listener.socket.getsockname()[:2] for listener in listeners]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, one, listeners)
        task_status.started(addresses)
