"""What the node's connections share, who is logged in on one, and when it was last active.

**Idle connections.** A logged-in connection on which no channel data has moved
(either way) for the idle timeout is disconnected with the reason. The timeout
is the shorter of ``teleport.connection_limits.client_idle_timeout`` (15 minutes
by default; 0 turns it off) and the user's roles' ``client_idle_timeout``.
Keepalives do not count as activity.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from trioport.config import Address
from trioport.ssh import SSHConnection
from trioport.ssh.trust import UserCertificateChecker
from trioport.sshproto.certs import CertificateCheckResult
from trioport.sshproto.keys import PublicKey

from .access import AccessChecker, AccessDecision
from .journal import SessionJournal
from .recorder import RecordingUploader
from .sessions import Reporter, SessionRegistry

__all__ = [
    "Activity",
    "ActivityChannel",
    "Login",
    "NodeContext",
    "address_of",
    "client_address",
    "idle_limit",
    "watch_idle",
]


def address_of(conn: SSHConnection, *, local: bool = False) -> str:
    """``ip:port`` of the connection's peer (or our end); ``""`` if not a socket."""
    sock = getattr(conn.stream, "socket", None)
    try:
        name = sock.getsockname() if local else sock.getpeername()  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return ""
    return str(Address(str(name[0]), int(name[1]))) if isinstance(name, tuple) else ""


def client_address(conn: SSHConnection) -> tuple[str, str | None]:
    """The client's ``ip:port`` and IP: from the proxy's verified line when the
    connection came through the proxy (:mod:`.proxied`), else the socket's peer."""
    proxied = getattr(conn.stream, "client_addr", None)
    if isinstance(proxied, str):
        host = proxied.rpartition(":")[0]
        return proxied, host[1:-1] if host.startswith("[") else host
    remote = address_of(conn)
    host = remote.rpartition(":")[0]
    return remote, (host[1:-1] if host.startswith("[") else host) or None


@attrs.define(eq=False)
class NodeContext:
    """What every connection to the node shares (built by :func:`.service.serve`)."""

    host_id: str
    hostname: str
    cluster_name: str
    user_cas: tuple[PublicKey, ...]
    access: AccessChecker
    labels: Callable[[], Mapping[str, str]]
    registry: SessionRegistry
    reporter: Reporter
    uploader: RecordingUploader
    clock: Callable[[], float] = time.time
    #: The node's idle timeout in seconds (None: none); roles may shorten it.
    idle_timeout: float | None = None
    #: Running sessions on disk, for recovery after a crash (None: not kept).
    journal: SessionJournal | None = None
    #: The node is shutting down: no new logins.
    draining: bool = False
    #: Connections with a logged-in user, to disconnect at shutdown.
    connections: weakref.WeakSet[SSHConnection] = attrs.Factory(weakref.WeakSet)

    def checker(self) -> UserCertificateChecker:
        return UserCertificateChecker(self.user_cas, clock=self.clock)


class Activity:
    """When data last moved on a connection's channels (trio's clock)."""

    def __init__(self) -> None:
        self.last = trio.current_time()

    def touch(self) -> None:
        self.last = trio.current_time()


class ActivityChannel:
    """A channel that notes each send and receive in an :class:`Activity`."""

    def __init__(self, chan: Any, activity: Activity) -> None:
        self._chan = chan
        self.activity = activity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chan, name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.activity.touch()
        await self._chan.send_all(data)

    async def send_extended(self, data: bytes | bytearray | memoryview, stream: int = 1) -> None:
        self.activity.touch()
        await self._chan.send_extended(data, stream)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self._chan.receive_some(max_bytes)
        self.activity.touch()
        return data


def idle_limit(*limits: float | None) -> float | None:
    """The shortest of the limits that are set (None or 0: no limit)."""
    values = [v for v in limits if v]
    return min(values) if values else None


async def watch_idle(activity: Activity, limit: float, disconnect: Callable[[str], Any]) -> None:
    """Call ``disconnect(reason)`` once nothing has moved for ``limit`` seconds."""
    while True:
        remaining = activity.last + limit - trio.current_time()
        if remaining <= 0:
            await disconnect(f"idle timeout: no activity for {limit:g} seconds")
            return
        await trio.sleep(remaining)


@attrs.frozen
class Login:
    """A logged-in user on one connection."""

    #: The user (her certificate's key id).
    user: str
    #: The OS login she asked for.
    login: str
    certificate: CertificateCheckResult
    access: AccessDecision
    remote_addr: str
    local_addr: str
    activity: Activity = attrs.field(factory=lambda: Activity())

    def audit_fields(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "login": self.login,
            "addr_remote": self.remote_addr,
            "addr_local": self.local_addr,
        }
