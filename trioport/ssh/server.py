"""The server side of the trio driver: accept connections, enforce limits, serve them.

:func:`serve` runs listeners; each accepted stream gets :func:`handle`, which owns
the connection's nursery, enforces the login grace time and the keepalive, and
turns every failure of one peer into a log line and a closed connection. Nothing
from one peer reaches the listener loop (trio's ``serve_listeners`` warning).

**Limits** (:class:`ServerLimits`, from ``teleport.connection_limits``). A new
connection is counted against the open connections (all, per source address, and
the number of distinct sources) and the unauthenticated ones (all and per
source); over a limit it gets a DISCONNECT ``too many connections`` with the limit
that was hit, before any key exchange. Logging in frees its unauthenticated place.
On an authenticated connection, session channels are counted (OpenSSH's
MaxSessions); one too many is refused with ``resource shortage`` and the limit,
and the connection carries on. (Channels of every kind together are capped by the
core, ``ConnectionConfig.max_channels``.)

**Graceful stop.** With ``stop`` (a :class:`trio.Event`), :func:`serve` stops
accepting when it is set (the listeners close, so new connections are refused by
the kernel), refuses new channels, disconnects every connection with no channel
open (nothing is lost there), and lets the others run until their channels end or
``shutdown_timeout`` passes; then it disconnects what is left with
``shutdown_reason`` and returns.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import metrics
from ..errors import (
    ChannelOpenError,
    ChannelOpenFailureReason,
    DisconnectReason,
    TrioportError,
)
from ..sshproto import ConnectionConfig
from ..sshproto import events as ev
from .channel import ChannelStream
from .connection import SSHConnection, SSHHandler, open_ssh

__all__ = ["CountingListener", "ServerLimits", "handle", "keepalive", "serve"]

log = logging.getLogger("trioport.ssh.server")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-server limits (defaults in line with OpenSSH and Teleport).

    The services take theirs from ``teleport.connection_limits``
    (:meth:`trioport.config.ConnectionLimits.server_limits`), whose session limit
    is OpenSSH's 10; the library sets none of its own.
    """

    #: Seconds a client has to authenticate (OpenSSH: 120; we target <= 60).
    login_grace: float = 30.0
    #: Open connections at once, authenticated or not (Teleport: 15000).
    max_connections: int = 15000
    #: Open connections at once from one source address (None: no such limit).
    max_connections_per_source: int | None = None
    #: Distinct source addresses with open connections at once (None: no such limit).
    max_sources: int | None = None
    #: Unauthenticated connections at once, in all (OpenSSH MaxStartups' hard limit is 100).
    max_unauthenticated: int = 100
    #: Unauthenticated connections at once from one source address.
    max_unauthenticated_per_source: int = 10
    #: Session channels open at once on one connection (OpenSSH MaxSessions: 10);
    #: None: only the connection's channel limit (``ConnectionConfig.max_channels``).
    max_sessions: int | None = None
    #: Seconds between keepalives on an idle authenticated connection (0: off).
    keepalive_interval: float = 300.0
    #: Unanswered keepalives before the connection is dropped (OpenSSH ClientAliveCountMax 3).
    keepalive_count: int = 3


class _Gate:
    """Counts a server's connections (open and unauthenticated, globally and per
    source) and each connection's open channels; runs its graceful stop."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_source: collections.Counter[str] = collections.Counter()
        self.unauthenticated = 0
        self.unauthenticated_by_source: collections.Counter[str] = collections.Counter()
        #: Every served connection and its channel counter.
        self.connections: dict[SSHConnection, _ChannelLimiter] = {}
        #: The reason given to everyone once a graceful stop began.
        self.stopping: str | None = None
        self._changed = trio.Event()

    def admit_connection(self, source: str) -> str | None:
        """Count a new open connection in, or say why it is refused."""
        lim = self.limits
        if self.total >= lim.max_connections:
            return f"too many connections (at most {lim.max_connections})"
        per_source = lim.max_connections_per_source
        if per_source is not None and self.by_source[source] >= per_source:
            return f"too many connections from your address (at most {per_source})"
        sources = lim.max_sources
        if sources is not None and source not in self.by_source and len(self.by_source) >= sources:
            return f"too many client addresses connected (at most {sources})"
        self.total += 1
        self.by_source[source] += 1
        return None

    def release_connection(self, source: str) -> None:
        self.total -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]
        self.notify()

    def admit(self, source: str) -> str | None:
        """Count a new unauthenticated connection in, or say why it is refused."""
        if self.unauthenticated >= self.limits.max_unauthenticated:
            return "too many unauthenticated connections"
        if self.unauthenticated_by_source[source] >= self.limits.max_unauthenticated_per_source:
            return "too many unauthenticated connections from your address"
        self.unauthenticated += 1
        self.unauthenticated_by_source[source] += 1
        return None

    def release(self, source: str) -> None:
        self.unauthenticated -= 1
        self.unauthenticated_by_source[source] -= 1
        if self.unauthenticated_by_source[source] <= 0:
            del self.unauthenticated_by_source[source]

    def notify(self) -> None:
        """Wake the graceful stop: a channel or a connection ended."""
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    async def drain(self, timeout: float, reason: str) -> None:  # noqa: ASYNC109
        """The graceful stop: see the module's docstring."""
        self.stopping = reason
        log.info(
            "stopping: %d connections, waiting up to %gs for their sessions",
            len(self.connections),
            timeout,
        )
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(timeout):
                while self.connections:
                    for conn, channels in list(self.connections.items()):
                        if channels.open == 0 and not channels.told:
                            channels.told = True
                            nursery.start_soon(_tell, conn, reason)
                    await self.changed()
            for conn, channels in list(self.connections.items()):
                if not channels.told:
                    channels.told = True
                    nursery.start_soon(_tell, conn, reason)


async def _tell(conn: SSHConnection, reason: str) -> None:
    log.info("disconnecting %s: %s", conn.username or "a client", reason)
    await conn.disconnect(DisconnectReason.BY_APPLICATION, reason)


class _ChannelLimiter(SSHHandler):
    """A connection's handler with its channels counted and limited."""

    def __init__(self, inner: SSHHandler, limits: ServerLimits, gate: _Gate | None) -> None:
        self.inner = inner
        self.limits = limits
        self.gate = gate
        self.open = 0
        self.sessions = 0
        #: The graceful stop has disconnected this connection.
        self.told = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        if self.gate is not None and self.gate.stopping is not None:
            return False
        return await self.inner.auth(conn, request)

    async def global_request(
        self, conn: SSHConnection, request: ev.GlobalRequest
    ) -> ev.GlobalRequestReply:
        return await self.inner.global_request(conn, request)

    def auth_banner(self, conn: SSHConnection, banner: ev.UserauthBanner) -> None:
        self.inner.auth_banner(conn, banner)

    async def channel_open(
        self, conn: SSHConnection, request: ev.ChannelOpen
    ) -> Callable[[ChannelStream], Awaitable[None]]:
        lim = self.limits
        if self.gate is not None and self.gate.stopping is not None:
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, self.gate.stopping
            )
        session = request.kind == "session"
        if session and lim.max_sessions is not None and self.sessions >= lim.max_sessions:
            raise ChannelOpenError(
                ChannelOpenFailureReason.RESOURCE_SHORTAGE,
                f"too many sessions on this connection (at most {lim.max_sessions})",
            )
        self.open += 1
        self.sessions += session
        try:
            serve = await self.inner.channel_open(conn, request)
        except BaseException:
            self._release(session)
            raise

        async def counted(chan: ChannelStream) -> None:
            try:
                await serve(chan)
            finally:
                self._release(session)

        return counted

    def _release(self, session: bool) -> None:
        self.open -= 1
        self.sessions -= session
        if self.gate is not None:
            self.gate.notify()


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
    refusal = None
    open_counted = counted = False
    if gate is not None:
        refusal = gate.admit_connection(source)
        open_counted = refusal is None
        if refusal is None:
            refusal = gate.admit(source)
            counted = refusal is None
    channels = _ChannelLimiter(handler, limits, gate)
    conn: SSHConnection | None = None
    try:
        async with open_ssh(stream, config, channels) as conn:
            if on_connection is not None:
                on_connection(conn)
            if refusal is not None:
                log.info("refusing %s: %s", source, refusal)
                await _refuse(conn, stream, refusal)
                return
            if gate is not None:
                gate.connections[conn] = channels
                if gate.stopping is not None:
                    gate.notify()  # arrived as the stop began: the drain tells it too
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
        if gate is not None:
            if counted:
                gate.release(source)
            if conn is not None:
                gate.connections.pop(conn, None)
            if open_counted:
                gate.release_connection(source)
        await trio.aclose_forcefully(stream)


async def _refuse(conn: SSHConnection, stream: trio.abc.Stream, reason: str) -> None:
    """Send DISCONNECT (too many connections), then close lingeringly.

    The client has sent its KEXINIT already; closing a socket with unread bytes
    makes the kernel send a reset that can overtake the DISCONNECT, and the client
    would see "connection reset" instead of the reason.
    """
    try:
        conn.core_send(
            ev.Disconnect(code=DisconnectReason.TOO_MANY_CONNECTIONS, description=reason)
        )
        with trio.move_on_after(2):
            await conn.flush()
            await conn.wait_closed()
    except (TrioportError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    with trio.move_on_after(1):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(65536):
                pass
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.BusyResourceError,
            OSError,
        ):
            pass


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
    stop: trio.Event | None = None,
    shutdown_timeout: float = 30.0,
    shutdown_reason: str = "the server is shutting down",
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept SSH connections on ``listeners`` (or a port to listen on).

    Calls ``task_status.started(addresses)`` once listening. Runs until cancelled;
    with ``stop``, once it is set, stops gracefully (see the module's docstring)
    and returns.

    Args:
        listeners: the listening sockets, or a port number to open them on.
        config: the connections' configuration (host keys, algorithms).
        handler_factory: makes each connection's handler.
        limits: the limits to enforce.
        host: the address to listen on when ``listeners`` is a port.
        stop: set it to stop gracefully.
        shutdown_timeout: seconds sessions may go on after ``stop``.
        shutdown_reason: the DISCONNECT description at a graceful stop.
        task_status: see trio's ``nursery.start``.
    """
    if isinstance(listeners, int):
        listeners = await trio.open_tcp_listeners(listeners, host=host)
    gate = _Gate(limits)

    async def one(stream: trio.abc.Stream) -> None:
        await handle(stream, config, handler_factory(), limits, gate=gate)

    addresses = [listener.socket.getsockname()[:2] for listener in listeners]
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            await accepting.start(
                functools.partial(trio.serve_listeners, handler_nursery=connections),
                one,
                listeners,
            )
            task_status.started(addresses)
            if stop is None:
                await trio.sleep_forever()
            await stop.wait()
            accepting.cancel_scope.cancel()
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        await gate.drain(shutdown_timeout, shutdown_reason)
        connections.cancel_scope.cancel()


class CountingListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener that counts its open connections against :class:`ServerLimits`.

    For plain-stream servers (the proxy's HTTPS port): a connection over
    ``max_connections``, ``max_connections_per_source`` or ``max_sources`` is closed
    at once, before a byte is read. :meth:`stop_accepting` closes the socket (new
    connections are refused) while the accepted ones go on.

    Args:
        listener: the listening socket to wrap.
        limits: the connection limits to apply.
    """

    def __init__(self, listener: trio.SocketListener, limits: ServerLimits) -> None:
        self.listener = listener
        self.socket = listener.socket
        self.gate = _Gate(limits)
        self._stopped = False

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        return self.gate.total

    async def accept(self) -> trio.abc.Stream:
        while True:
            try:
                stream = await self.listener.accept()
            except trio.ClosedResourceError:
                if not self._stopped:
                    raise
                await trio.sleep_forever()
            source = _peer_host(stream)
            refusal = self.gate.admit_connection(source)
            if refusal is None:
                return _CountedStream(stream, self.gate, source)
            log.info("refusing %s: %s", source, refusal)
            await trio.aclose_forcefully(stream)

    def stop_accepting(self) -> None:
        """Close the listening socket: new connections are refused; open ones go on."""
        self._stopped = True
        self.listener.socket.close()

    async def wait_all_closed(self) -> None:
        """Wait until every accepted connection has been closed."""
        while self.gate.total > 0:
            await self.gate.changed()

    async def aclose(self) -> None:
        self._stopped = True
        await self.listener.aclose()


class _CountedStream(trio.abc.HalfCloseableStream):
    """An accepted stream that gives its place back when closed."""

    def __init__(self, stream: trio.SocketStream, gate: _Gate, source: str) -> None:
        self.stream = stream
        self.socket = stream.socket
        self._gate = gate
        self._source = source
        self._released = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._gate.release_connection(self._source)
        await self.stream.aclose()
