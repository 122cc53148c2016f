"""Connection limits and the graceful stop of :func:`trioport.ssh.serve`, on loopback.

Each limit is pushed one past its value: the refused client is told why (the
DISCONNECT or channel-open failure names the limit), and the clients already in
keep being served. The graceful stop closes the port, tells connections with
nothing open to go, lets the busy ones finish within the timeout, then
disconnects them with the reason. :class:`~trioport.ssh.server.CountingListener`
does the counting for the proxy's HTTPS port; the configuration keys that set
all of these are checked here too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from trioport import config as c
from trioport.errors import (
    ChannelOpenError,
    ChannelOpenFailureReason,
    ConfigError,
    ConnectionClosedError,
    DisconnectReason,
)
from trioport.ssh import ChannelStream, SSHConnection, SSHHandler, connect
from trioport.ssh.server import CountingListener, ServerLimits, serve
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey

#: Bound for each test body; the tests take far less.
TIMEOUT = 30


class EchoHandler(SSHHandler):
    """Logs in any key; each channel echoes what it receives."""

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        return request.method == "publickey"

    async def channel_open(
        self, conn: SSHConnection, request: ev.ChannelOpen
    ) -> Callable[[ChannelStream], Awaitable[None]]:
        async def echo(chan: ChannelStream) -> None:
            while data := await chan.receive_some():
                await chan.send_all(data)
            await chan.send_eof()

        return echo


@pytest.fixture(scope="module")
def host_key() -> PrivateKey:
    return PrivateKey.generate("ssh-ed25519")


@dataclass
class Server:
    port: int
    stop: trio.Event
    done: trio.Event
    nursery: trio.Nursery

    async def client(self, source: str = "127.0.0.1") -> SSHConnection:
        """A logged-in client from ``source``; lives until the test ends."""
        return await self.nursery.start(self._client, source)

    async def _client(self, source: str, *, task_status: trio.TaskStatus[SSHConnection]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port, local_address=source)
        key = PrivateKey.generate("ssh-ed25519")
        try:
            async with connect(
                "127.0.0.1", self.port, username="u", signers=[key], stream=stream
            ) as conn:
                task_status.started(conn)
                await conn.wait_closed()
        except ConnectionClosedError:
            pass  # what the test expects; it asserts on conn.error itself

    async def refused(self, source: str = "127.0.0.1") -> ConnectionClosedError:
        """Connect from ``source`` and return the DISCONNECT that refused us."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port, local_address=source)
        with pytest.raises(ConnectionClosedError) as info:
            async with connect("127.0.0.1", self.port, username="u", stream=stream):
                pass
        return info.value


@asynccontextmanager
async def server(
    host_key: PrivateKey, limits: ServerLimits, *, shutdown_timeout: float = 30.0
) -> AsyncIterator[Server]:
    config = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(host_key)])
    stop, done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
            try:
                await serve(
                    0,
                    config,
                    EchoHandler,
                    limits,
                    host="127.0.0.1",
                    stop=stop,
                    shutdown_timeout=shutdown_timeout,
                    shutdown_reason="the test server is shutting down",
                    task_status=task_status,
                )
            finally:
                done.set()

        addresses = await nursery.start(run)
        yield Server(addresses[0][1], stop, done, nursery)
        nursery.cancel_scope.cancel()


async def echoes(conn: SSHConnection, chan: ChannelStream | None = None) -> bool:
    """The connection still works: a channel (new, or ``chan``) echoes."""
    own = chan is None
    if chan is None:
        chan = await conn.open_channel("session")
    await chan.send_all(b"ping")
    got = b""
    while len(got) < 4:
        got += await chan.receive_some()
    if own:
        await chan.aclose()
    return got == b"ping"


# --- connection limits ---------------------------------------------------------------------


async def test_max_connections_refuses_one_more_and_keeps_the_others(
    host_key: PrivateKey,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with server(host_key, ServerLimits(max_connections=2)) as srv:
            first = await srv.client("127.0.0.1")
            second = await srv.client("127.0.0.2")
            refusal = await srv.refused("127.0.0.3")
            assert refusal.code == DisconnectReason.TOO_MANY_CONNECTIONS
            assert refusal.description == "too many connections (at most 2)"
            assert await echoes(first) and await echoes(second)
            # A place freed is a place taken.
            await first.disconnect()
            with trio.fail_after(5):
                while True:
                    try:
                        third = await srv.client("127.0.0.3")
                        break
                    except ConnectionClosedError:  # the server has not noticed yet
                        await trio.sleep(0.05)
            assert await echoes(third) and await echoes(second)


async def test_max_connections_per_source(host_key: PrivateKey) -> None:
    limits = ServerLimits(max_connections_per_source=2)
    with trio.fail_after(TIMEOUT):
        async with server(host_key, limits) as srv:
            held = [await srv.client(), await srv.client()]
            refusal = await srv.refused()
            assert refusal.code == DisconnectReason.TOO_MANY_CONNECTIONS
            assert refusal.description == "too many connections from your address (at most 2)"
            other = await srv.client("127.0.0.2")
            assert await echoes(other)
            for conn in held:
                assert await echoes(conn)


async def test_max_sources_counts_distinct_addresses(host_key: PrivateKey) -> None:
    with trio.fail_after(TIMEOUT):
        async with server(host_key, ServerLimits(max_sources=2)) as srv:
            a = await srv.client("127.0.0.1")
            b = await srv.client("127.0.0.2")
            refusal = await srv.refused("127.0.0.3")
            assert refusal.description == "too many client addresses connected (at most 2)"
            # A known address may open more connections.
            again = await srv.client("127.0.0.1")
            for conn in (a, b, again):
                assert await echoes(conn)


async def test_max_sessions_per_connection(host_key: PrivateKey) -> None:
    with trio.fail_after(TIMEOUT):
        async with server(host_key, ServerLimits(max_sessions=2)) as srv:
            conn = await srv.client()
            sessions = [await conn.open_channel("session") for _ in range(2)]
            with pytest.raises(ChannelOpenError) as info:
                await conn.open_channel("session")
            assert info.value.reason == ChannelOpenFailureReason.RESOURCE_SHORTAGE
            assert info.value.description == "too many sessions on this connection (at most 2)"
            # Other kinds of channels are not sessions; the open ones still work.
            tunnel = await conn.open_channel(
                "direct-tcpip",
                host="example",
                port=1,
                originator_address="127.0.0.1",
                originator_port=2,
            )
            assert await echoes(conn, tunnel)
            assert await echoes(conn, sessions[0]) and await echoes(conn, sessions[1])
            # Closing one makes room; another connection has its own count.
            await sessions[0].aclose()
            with trio.fail_after(5):
                while True:
                    try:
                        replacement = await conn.open_channel("session")
                        break
                    except ChannelOpenError:  # the close is still on its way
                        await trio.sleep(0.05)
            assert await echoes(conn, replacement)
            other = await srv.client()
            assert all([await echoes(other) for _ in range(3)])


async def test_max_channels_is_the_cores_limit(host_key: PrivateKey) -> None:
    config = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(host_key)], max_channels=3)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            lambda task_status: serve(
                0, config, EchoHandler, host="127.0.0.1", task_status=task_status
            )
        )
        key = PrivateKey.generate("ssh-ed25519")
        async with connect("127.0.0.1", addresses[0][1], username="u", signers=[key]) as conn:
            chans = [await conn.open_channel("session") for _ in range(3)]
            with pytest.raises(ChannelOpenError) as info:
                await conn.open_channel("session")
            assert info.value.reason == ChannelOpenFailureReason.RESOURCE_SHORTAGE
            assert "too many channels" in info.value.description
            assert await echoes(conn, chans[2])
        nursery.cancel_scope.cancel()


# --- the graceful stop ---------------------------------------------------------------------


async def test_graceful_stop_drains_then_disconnects_with_the_reason(
    host_key: PrivateKey,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with server(host_key, ServerLimits(), shutdown_timeout=1.5) as srv:
            busy = await srv.client()
            idle = await srv.client("127.0.0.2")
            chan = await busy.open_channel("session")
            assert await echoes(busy, chan)
            srv.stop.set()
            # The idle connection (nothing open) is told at once.
            await idle.wait_closed()
            assert isinstance(idle.error, ConnectionClosedError)
            assert idle.error.description == "the test server is shutting down"
            # New connections are refused by the kernel: the port is closed.
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", srv.port)
            # The busy session goes on, but takes no new channel.
            assert await echoes(busy, chan)
            with pytest.raises(ChannelOpenError, match="the test server is shutting down"):
                await busy.open_channel("session")
            assert await echoes(busy, chan)
            # When the timeout passes, it is disconnected with the reason too.
            await busy.wait_closed()
            assert isinstance(busy.error, ConnectionClosedError)
            assert busy.error.code == DisconnectReason.BY_APPLICATION
            assert busy.error.description == "the test server is shutting down"
            await srv.done.wait()


async def test_graceful_stop_ends_when_the_last_session_does(host_key: PrivateKey) -> None:
    with trio.fail_after(TIMEOUT):
        # A timeout far beyond the test's bound: only the session's end can stop it.
        async with server(host_key, ServerLimits(), shutdown_timeout=3600) as srv:
            conn = await srv.client()
            chan = await conn.open_channel("session")
            srv.stop.set()
            assert await echoes(conn, chan)
            await chan.send_eof()
            assert await chan.receive_some() == b""
            await chan.aclose()
            await srv.done.wait()
            assert isinstance(conn.error, ConnectionClosedError)
            assert conn.error.description == "the test server is shutting down"


# --- a counting listener (the HTTPS port) ---------------------------------------------------


async def test_counting_listener_limits_and_stops_accepting() -> None:
    async def echo(stream: trio.abc.Stream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)

    async def talks(stream: trio.abc.Stream) -> bool:
        await stream.send_all(b"hi")
        return await stream.receive_some() == b"hi"

    with trio.fail_after(TIMEOUT):
        (raw,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = CountingListener(raw, ServerLimits(max_connections_per_source=2))
        port = raw.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo, [listener])
            first = await trio.open_tcp_stream("127.0.0.1", port)
            second = await trio.open_tcp_stream("127.0.0.1", port)
            assert await talks(first) and await talks(second)
            # One too many from this address: closed before a byte is read.
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            await extra.send_all(b"hi")
            try:
                assert await extra.receive_some() == b""
            except trio.BrokenResourceError:
                pass  # or reset: either way, refused
            elsewhere = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            assert await talks(elsewhere) and await talks(first)
            assert listener.open_connections == 3
            await second.aclose()
            with trio.fail_after(5):
                while listener.open_connections != 2:  # noqa: ASYNC110 - polling a counter
                    await trio.sleep(0.02)
            # A graceful stop: the port closes, the open connections carry on.
            listener.stop_accepting()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            assert await talks(first) and await talks(elsewhere)
            async with trio.open_nursery() as waiting:
                waiting.start_soon(listener.wait_all_closed)
                for stream in (first, extra, elsewhere):
                    await stream.aclose()
            assert listener.open_connections == 0
            nursery.cancel_scope.cancel()


# --- the configuration ----------------------------------------------------------------------


def test_limits_come_from_the_configuration() -> None:
    cfg = c.loads_config(
        """
teleport:
  connection_limits:
    max_connections: 500
    max_connections_per_source: 50
    max_users: 20
    max_unauthenticated: 40
    max_unauthenticated_per_source: 4
    max_sessions: 3
    max_channels: 30
    login_grace_time: 20s
    client_idle_timeout: 10m
    keep_alive_interval: 1m
    keep_alive_count_max: 2
    shutdown_timeout: 2m
    rates:
      - period: 1m
        average: 10
        burst: 15
      - period: 1h
        average: 100
        burst: 100
"""
    )
    lim = cfg.teleport.connection_limits
    server_limits = lim.server_limits()
    assert server_limits == ServerLimits(
        login_grace=20,
        max_connections=500,
        max_connections_per_source=50,
        max_sources=20,
        max_unauthenticated=40,
        max_unauthenticated_per_source=4,
        max_sessions=3,
        keepalive_interval=60,
        keepalive_count=2,
    )
    assert lim.shutdown_timeout == dt.timedelta(minutes=2)
    assert [(r.per_minute, r.burst) for r in lim.rates] == [(10, 15), (100 / 60, 100)]
    # And back: the dump reads the same.
    assert c.loads_config(c.dump_config(cfg)) == cfg


def test_safe_defaults() -> None:
    lim = c.Config().teleport.connection_limits
    assert lim.max_sessions == 10  # OpenSSH MaxSessions
    assert lim.max_connections_per_source <= lim.max_connections
    assert lim.shutdown_timeout == dt.timedelta(seconds=30)
    assert [(r.average, r.burst, r.period) for r in lim.rates] == [
        (20, 40, dt.timedelta(minutes=1))  # Teleport's unauthenticated-endpoint rate
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_sessions: 0", "teleport.connection_limits.max_sessions: must be at least 1"),
        ("max_users: 0", "teleport.connection_limits.max_users: must be at least 1"),
        (
            "rates: [{period: 0s, average: 1, burst: 1}]",
            "teleport.connection_limits.rates[0].period: must be at least 1s",
        ),
        (
            "rates: [{average: 0}]",
            "teleport.connection_limits.rates[0].average: must be at least 1",
        ),
        ("shutdown_timeout: 5", "teleport.connection_limits.shutdown_timeout: expected a"),
        ("max_sesions: 3", "teleport.connection_limits.max_sesions: unknown key"),
    ],
)
def test_bad_limits_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        c.loads_config(f"teleport:\n  connection_limits:\n    {text}\n")
