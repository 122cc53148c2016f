"""The trio driver: one sans-IO :class:`~trioport.sshproto.Connection` over a trio stream.

Theory of operation (trio's SSLStream rule): interact with the core, then await
exactly one thing that makes progress, then loop. One *pump* task reads the
stream, feeds the core and dispatches events. One *flusher* task is the only
writer: it sends, in one ``send_all``, whatever every task has queued on the core
since its last write. A task that queued output and must wait for it (backpressure)
waits for the flusher's write generation to pass its own; cancelling that wait
never tears a packet in half, because the bytes stay queued. A failed write marks
the connection broken: a half-sent encrypted packet cannot be resumed.

Everything the connection starts runs in the nursery of :func:`open_ssh`, so no
task outlives its connection.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..errors import (
    ChannelOpenError,
    ChannelOpenFailureReason,
    ConnectionClosedError,
    DisconnectReason,
    LocalProtocolError,
    ProtocolError,
    TrioportError,
)
from ..sshproto import Connection, ConnectionConfig
from ..sshproto import events as ev
from .channel import ChannelStream

__all__ = ["CompletedCommand", "SSHConnection", "SSHHandler", "open_ssh"]

log = logging.getLogger("trioport.ssh")

#: Seconds we wait for our DISCONNECT to reach a peer before closing the socket.
DISCONNECT_GRACE = 2.0

#: Seconds we keep reading (and discarding) after a protocol error's DISCONNECT.
LINGER = 1.0

#: Bytes asked of the transport per read; large enough for a batch of packets.
RECEIVE_SIZE = 256 * 1024

#: The reader hands its replies to the flusher and reads on; it waits for them to be
#: written only when this much is queued (a peer that does not read cannot make us
#: buffer without bound).
PUMP_BACKLOG = 256 * 1024

ChannelHandler = Callable[[ChannelStream], Awaitable[None]]


class SSHHandler:
    """What a connection does with the peer's requests; the default refuses all.

    Subclass and override. Every method runs in the connection's nursery; an
    exception from a channel handler closes that channel, not the connection.
    """

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        """Server side: accept (True) or refuse a publickey/password attempt.

        For a publickey query (``signature_ok is None``) True answers PK_OK.
        """
        return False

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen) -> ChannelHandler:
        """Accept a channel by returning a coroutine function that serves it.

        Raise :class:`~trioport.errors.ChannelOpenError` to refuse it. A returned
        handler is always called exactly once, even if the connection ends first,
        so it may own resources (a connected socket) and release them when it ends.
        """
        raise ChannelOpenError(
            ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
            f"{request.kind} channels are not allowed",
        )

    async def global_request(
        self, conn: SSHConnection, request: ev.GlobalRequest
    ) -> ev.GlobalRequestReply:
        """Answer a global request; keepalives are answered by the connection itself."""
        return ev.GlobalRequestReply(ok=False)

    def auth_banner(self, conn: SSHConnection, banner: ev.UserauthBanner) -> None:
        """Client side: the server sent a banner to show before authentication."""


@dataclass(frozen=True, slots=True)
class CompletedCommand:
    """What :meth:`SSHConnection.run` returns."""

    exit_status: int | None
    stdout: bytes
    stderr: bytes
    exit_signal: ev.ExitSignal | None = None


class SSHConnection:
    """An SSH connection over a trio stream; made by :func:`open_ssh`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        config: ConnectionConfig,
        nursery: trio.Nursery,
        handler: SSHHandler | None = None,
        *,
        rng: Callable[[int], bytes] | None = None,
    ) -> None:
        self.stream = stream
        self.config = config
        self.handler = handler or SSHHandler()
        self._nursery = nursery
        self._core = Connection(config, rng=rng or os.urandom, now=trio.current_time())
        self._flush_wanted = trio.Event()
        self._queued_generation = 0
        self._written_generation = 0
        self._written = trio.lowlevel.ParkingLot()
        self._channels: dict[int, ChannelStream] = {}
        self._opening: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._global_replies: collections.deque[tuple[trio.Event, list[Any]]] = collections.deque()
        self._auth_events_send, self._auth_events = trio.open_memory_channel[ev.Event](16)
        self._kex_done = trio.Event()
        self._rekeyed = trio.Event()
        self._closed = trio.Event()
        self.authenticated = trio.Event()
        self.error: BaseException | None = None
        self.disconnect_reason: ev.Disconnect | None = None
        self.username: str | None = None
        self.auth_key: bytes | None = None
        self.session_id: bytes | None = None
        self.negotiated: dict[str, str] = {}
        self.peer_version: str | None = None
        self.host_key: bytes | None = None
        self.rekeys = 0

    # --- the core, for ChannelStream ---------------------------------------------

    def core_send(self, event: ev.Event) -> None:
        if self.error is not None:
            raise trio.BrokenResourceError("SSH connection is gone") from self.error
        self._core.send(event)

    def core_output_held(self) -> bool:
        return self._core.output_held

    def core_send_window(self, channel: int) -> int:
        return self._core.send_window(channel)

    def core_max_packet(self, channel: int) -> int:
        return self._core.max_packet(channel)

    async def wait_output_released(self) -> None:
        """Wait while a key exchange holds our output back (OpenSSH stops reading
        channels then too), so a peer that never finishes a rekey cannot make us
        buffer without bound."""
        while self._core.output_held and self.error is None:
            await self._wait_or_closed(self._rekeyed)

    def core_acknowledge(self, channel: int, n: int) -> None:
        try:
            self._core.acknowledge_received_data(channel, n)
        except LocalProtocolError:
            pass  # the channel closed meanwhile

    def close_channel(self, channel: int) -> None:
        try:
            self._core.send(ev.ChannelClose(channel=channel))
        except (LocalProtocolError, TrioportError):
            pass

    async def flush(self) -> None:
        """Wait until everything the core has queued so far is written, in order.

        Only the flusher task writes to the transport, so cancelling a caller here
        never leaves half a packet on the wire: the bytes stay queued and go out
        with the next batch.
        """
        if self.error is not None:
            raise trio.BrokenResourceError("SSH connection is gone") from self.error
        if self._written_generation == self._queued_generation and not self._core.has_data_to_send:
            # Nothing queued and nothing in flight: no need to wake the flusher.
            await trio.lowlevel.checkpoint()
            return
        self._queued_generation += 1
        target = self._queued_generation
        self._flush_wanted.set()
        while self._written_generation < target:
            if self.error is not None:
                raise trio.BrokenResourceError("SSH connection is gone") from self.error
            await self._written.park()
        await trio.lowlevel.checkpoint_if_cancelled()

    def flush_soon(self) -> None:
        """Ask the flusher task to send what is queued (never blocks the caller)."""
        self._flush_wanted.set()

    def post(self) -> None:
        """Hand what is queued to the flusher without waiting for the write.

        For messages whose sender waits for the peer's answer anyway (a channel
        open, a request with a reply) or needs no word that they were written (a
        reply, EOF): they go out in order with everything else, and the sender
        skips a round trip through the flusher.

        Raises:
            trio.BrokenResourceError: the connection is gone.
        """
        if self.error is not None:
            raise trio.BrokenResourceError("SSH connection is gone") from self.error
        self._flush_wanted.set()

    # --- the pump -----------------------------------------------------------------

    async def _flusher(self) -> None:
        """The one task that writes to the transport: batches whatever is queued."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            generation = self._queued_generation
            # A view of the core's arena, valid until we ask again: no copy.
            data = self._core.data_to_send_view()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._mark_broken(exc)
                    return
            self._written_generation = generation
            self._written.unpark_all()

    async def _pump(self) -> None:
        core = self._core
        quickack = _quickack_for(self.stream)
        try:
            # Our version line and KEXINIT are on the wire before we read anything.
            await self.flush()
            while True:
                while (event := core.next_event()) is not None:
                    await self._dispatch(event)
                # Waking the flusher is enough: waiting for the write would cost this
                # task a round through the scheduler per batch of packets read.
                if core.bytes_to_send > PUMP_BACKLOG or core.closed:
                    await self.flush()
                elif self.error is not None:
                    raise trio.BrokenResourceError("SSH connection is gone") from self.error
                elif core.has_data_to_send:
                    self.flush_soon()
                if core.closed:
                    # A DISCONNECT may have been queued (by disconnect()) while we
                    # were flushing: deliver it before the nursery is cancelled.
                    with trio.move_on_after(DISCONNECT_GRACE):
                        await self.flush()
                    break
                timer = core.get_timer()
                with trio.move_on_at(timer if timer is not None else math.inf) as scope:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                if quickack is not None and not self.authenticated.is_set():
                    quickack()
                if scope.cancelled_caught:
                    core.handle_timer(trio.current_time())
                    continue
                core.receive_data(data)
                if not data:
                    while (event := core.next_event()) is not None:
                        await self._dispatch(event)
                    break
        except ProtocolError as exc:
            # The core queued a DISCONNECT with the reason; try to deliver it.
            log.info("SSH connection ended: %s (%s)", exc.description, exc.code.name)
            with trio.move_on_after(1):
                try:
                    await self.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self._mark_broken(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._mark_broken(exc)
        finally:
            if self.error is None:
                reason = self.disconnect_reason
                self._mark_broken(
                    ConnectionClosedError(reason.description, reason.code)
                    if reason is not None
                    else ConnectionClosedError(
                        "connection closed", DisconnectReason.CONNECTION_LOST
                    )
                )
            self._nursery.cancel_scope.cancel()

    async def _linger(self) -> None:
        """Half-close, then drain what the peer still sends, briefly.

        Closing a socket with unread bytes makes the kernel send a reset, which can
        overtake our DISCONNECT: the peer would see "connection reset" instead of
        the reason. A lingering close lets the reason arrive first.
        """
        with trio.move_on_after(LINGER):
            try:
                if isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
                while await self.stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    def _mark_broken(self, exc: BaseException) -> None:
        if self.error is not None:
            return
        self.error = exc
        for chan in list(self._channels.values()):
            chan._on_broken(exc)
        for done, box in list(self._opening.values()):
            box.append(exc)
            done.set()
        while self._global_replies:
            done, box = self._global_replies.popleft()
            box.append(exc)
            done.set()
        self._auth_events_send.close()
        self._written.unpark_all()
        self._closed.set()

    async def _dispatch(self, event: ev.Event) -> None:
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            await handler(self, event)

    async def _on_version(self, event: ev.VersionReceived) -> None:
        self.peer_version = event.version

    async def _on_kex_complete(self, event: ev.KexComplete) -> None:
        self.session_id = event.session_id
        self.negotiated = dict(event.algorithms)
        self.host_key = event.host_key
        if event.first:
            self._kex_done.set()
        else:
            self.rekeys += 1
            self._rekeyed.set()
            self._rekeyed = trio.Event()

    async def _on_disconnect(self, event: ev.Disconnect) -> None:
        self.disconnect_reason = event
        log.info("peer disconnected: %s (%s)", event.description, event.code)

    async def _on_lost(self, event: ev.ConnectionLost) -> None:
        pass

    async def _on_auth_request(self, event: ev.UserauthRequest) -> None:
        # Server side: the decision may need I/O (RBAC); the client waits for it.
        try:
            ok = await self.handler.auth(self, event)
        except TrioportError as exc:
            log.info("auth handler refused %s: %s", event.username, exc)
            ok = False
        if ok and event.method == "publickey" and event.signature_ok is None:
            self._core.send(
                ev.UserauthPKOk(algorithm=event.algorithm or "", public_key=event.public_key or b"")
            )
        elif ok:
            self.username = event.username
            self.auth_key = event.public_key
            self._core.send(ev.UserauthSuccess())
            self.authenticated.set()
        else:
            self._core.send(ev.UserauthFailure(methods=tuple(self.config.auth_methods)))

    async def _on_auth_reply(self, event: ev.Event) -> None:
        # Client side: hand the server's answer to authenticate().
        if isinstance(event, ev.UserauthBanner):
            self.handler.auth_banner(self, event)
            return
        if isinstance(event, ev.UserauthSuccess):
            self.authenticated.set()
        try:
            self._auth_events_send.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass

    async def _on_channel_open(self, event: ev.ChannelOpen) -> None:
        self._nursery.start_soon(self._serve_channel_open, event)

    async def _serve_channel_open(self, event: ev.ChannelOpen) -> None:
        try:
            serve = await self.handler.channel_open(self, event)
        except ChannelOpenError as exc:
            if self.error is None:
                self._core.send(
                    ev.ChannelOpenFailure(
                        channel=event.channel, reason=int(exc.reason), description=exc.description
                    )
                )
                await self._safe_flush()
            return
        # An accepted handler always runs, even if the connection died meanwhile
        # (it then sees a broken channel), so whatever it holds is released in
        # its own finally blocks.
        chan = ChannelStream(self, event.channel, event.kind)
        if self.error is not None:
            chan._on_broken(self.error)
            await self._run_channel(chan, serve)
            return
        self._channels[event.channel] = chan
        self._core.send(ev.ChannelOpenConfirmation(channel=event.channel))
        self.flush_soon()
        await self._run_channel(chan, serve)

    async def _run_channel(self, chan: ChannelStream, serve: ChannelHandler) -> None:
        try:
            await serve(chan)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except TrioportError as exc:
            log.info("channel %d handler failed: %s", chan.channel, exc)
        except Exception:
            # A bug in one channel's handler closes that channel, not the connection.
            log.exception("channel %d handler crashed", chan.channel)
        except BaseExceptionGroup as group:
            # A handler's own nursery reports a client going away as a group of
            # Broken/Closed errors: routine. Only what is left is a crash.
            _, rest = group.split(
                (trio.BrokenResourceError, trio.ClosedResourceError, TrioportError)
            )
            if rest is not None:
                cancelled, other = rest.split(trio.Cancelled)
                if other is not None:
                    log.error("channel %d handler crashed", chan.channel, exc_info=other)
                if cancelled is not None:
                    raise cancelled from None
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await chan.aclose()

    async def _on_open_reply(
        self, event: ev.ChannelOpenConfirmation | ev.ChannelOpenFailure
    ) -> None:
        waiting = self._opening.pop(event.channel, None)
        if waiting is None:
            return
        done, box = waiting
        box.append(event)
        done.set()

    async def _on_channel_data(self, event: ev.ChannelData) -> None:
        chan = self._channels.get(event.channel)
        if chan is not None:
            chan._on_data(event.data, event.stream)

    async def _on_channel_eof(self, event: ev.ChannelEOF) -> None:
        chan = self._channels.get(event.channel)
        if chan is not None:
            chan._on_eof()

    async def _on_channel_close(self, event: ev.ChannelClose) -> None:
        chan = self._channels.get(event.channel)
        if chan is not None:
            chan._on_close()
            if not chan._close_sent:
                # Answer the peer's CLOSE now (RFC 4254 §5.3); the stream stays
                # readable for what was buffered.
                chan._close_sent = True
                self.close_channel(event.channel)
            self._channels.pop(event.channel, None)

    async def _on_window(self, event: ev.ChannelWindowAdjusted) -> None:
        chan = self._channels.get(event.channel)
        if chan is not None:
            chan._on_window()

    async def _on_channel_request(self, event: ev.ChannelRequest) -> None:
        chan = self._channels.get(event.channel)
        if chan is None or not chan._on_request(event):
            if event.want_reply:
                self._core.send(ev.ChannelRequestReply(channel=event.channel, ok=False))

    async def _on_channel_reply(self, event: ev.ChannelRequestReply) -> None:
        chan = self._channels.get(event.channel)
        if chan is not None:
            chan._on_reply(event.ok)

    async def _on_global_request(self, event: ev.GlobalRequest) -> None:
        if isinstance(event.request, ev.KeepAlive):
            reply = ev.GlobalRequestReply(ok=False)  # OpenSSH answers keepalives with failure
        else:
            try:
                reply = await self.handler.global_request(self, event)
            except TrioportError:
                reply = ev.GlobalRequestReply(ok=False)
        if event.want_reply:
            self._core.send(reply)

    async def _on_global_reply(self, event: ev.GlobalRequestReply) -> None:
        if self._global_replies:
            done, box = self._global_replies.popleft()
            box.append(event)
            done.set()

    _HANDLERS: dict[type, Callable[[SSHConnection, Any], Awaitable[None]]] = {
        ev.VersionReceived: _on_version,
        ev.KexComplete: _on_kex_complete,
        ev.Disconnect: _on_disconnect,
        ev.ConnectionLost: _on_lost,
        ev.UserauthRequest: _on_auth_request,
        ev.UserauthSuccess: _on_auth_reply,
        ev.UserauthFailure: _on_auth_reply,
        ev.UserauthPKOk: _on_auth_reply,
        ev.UserauthBanner: _on_auth_reply,
        ev.UserauthInfoRequest: _on_auth_reply,
        ev.ChannelOpen: _on_channel_open,
        ev.ChannelOpenConfirmation: _on_open_reply,
        ev.ChannelOpenFailure: _on_open_reply,
        ev.ChannelData: _on_channel_data,
        ev.ChannelEOF: _on_channel_eof,
        ev.ChannelClose: _on_channel_close,
        ev.ChannelWindowAdjusted: _on_window,
        ev.ChannelRequest: _on_channel_request,
        ev.ChannelRequestReply: _on_channel_reply,
        ev.GlobalRequest: _on_global_request,
        ev.GlobalRequestReply: _on_global_reply,
    }

    async def _safe_flush(self) -> None:
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _check_alive(self) -> None:
        if self.error is not None:
            raise trio.BrokenResourceError("SSH connection is gone") from self.error

    # --- the public API -------------------------------------------------------------

    async def wait_kex(self) -> None:
        """Wait until the first key exchange is done (raises if the connection died)."""
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def watch_close() -> None:
                    await self._closed.wait()
                    scope.cancel()

                nursery.start_soon(watch_close)
                await self._kex_done.wait()
                nursery.cancel_scope.cancel()
        if not self._kex_done.is_set():
            self._raise_error()

    def _raise_error(self) -> None:
        exc = self.error
        if isinstance(exc, TrioportError):
            raise exc
        raise trio.BrokenResourceError("SSH connection is gone") from exc

    async def next_auth_event(self) -> ev.Event:
        """Client side: the server's next answer to an authentication request."""
        try:
            return await self._auth_events.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._raise_error()
            raise AssertionError("unreachable") from None

    async def send_event(self, event: ev.Event) -> None:
        """Queue one event on the core and have it sent (for authentication and tests)."""
        self.core_send(event)
        self.post()
        await trio.lowlevel.checkpoint()

    def publickey_data_to_sign(self, username: str, algorithm: str, public_key: bytes) -> bytes:
        return self._core.publickey_data_to_sign(username, algorithm, public_key)

    async def open_channel(self, kind: str = "session", **fields: Any) -> ChannelStream:
        """Open a channel and wait for the peer to confirm it.

        Raises:
            ChannelOpenError: the peer refused it (with its reason code).
            trio.BrokenResourceError: the connection is gone.
        """
        self._check_alive()
        channel = self._core.new_channel_id()
        chan = ChannelStream(self, channel, kind)
        done = trio.Event()
        box: list[Any] = []
        self._opening[channel] = (done, box)
        self._channels[channel] = chan
        self.core_send(ev.ChannelOpen(channel=channel, kind=kind, **fields))
        self.post()
        await done.wait()
        result = box[0]
        if isinstance(result, ev.ChannelOpenFailure):
            self._channels.pop(channel, None)
            raise ChannelOpenError(result.reason, result.description)
        if isinstance(result, BaseException):
            self._channels.pop(channel, None)
            raise trio.BrokenResourceError("SSH connection is gone") from result
        return chan

    async def open_session(self) -> ChannelStream:
        """Open a "session" channel (RFC 4254 §6.1)."""
        return await self.open_channel("session")

    async def global_request(
        self, request: ev.Event, want_reply: bool = True
    ) -> ev.GlobalRequestReply | None:
        """Send a global request and, with ``want_reply``, return the reply."""
        self._check_alive()
        box: list[Any] = []
        done = trio.Event()
        if want_reply:
            self._global_replies.append((done, box))
        self.core_send(ev.GlobalRequest(request=request, want_reply=want_reply))
        self.post()
        if not want_reply:
            await trio.lowlevel.checkpoint()
            return None
        await done.wait()
        if isinstance(box[0], BaseException):
            raise trio.BrokenResourceError("SSH connection is gone") from box[0]
        return box[0]

    async def run(
        self, command: str | bytes, input: bytes = b"", *, env: dict[str, str] | None = None
    ) -> CompletedCommand:
        """Run ``command`` in a new session channel and collect its output."""
        if isinstance(command, str):
            command = command.encode()
        chan = await self.open_session()
        async with chan:
            for name, value in (env or {}).items():
                await chan.request(ev.Env(name=name, value=value), want_reply=False)
            if not await chan.request(ev.Exec(command=command)):
                raise ChannelOpenError(
                    ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                    "the server refused to run the command",
                )
            out = bytearray()
            err = bytearray()

            async def read(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
                while chunk := await stream.receive_some():
                    into += chunk

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, chan, out)
                nursery.start_soon(read, chan.stderr, err)
                try:
                    if input:
                        await chan.send_all(input)
                    await chan.send_eof()
                except trio.BrokenResourceError:
                    # The command ended without reading all its input (``head``):
                    # the rest is dropped, as OpenSSH's client does. A dead
                    # connection still raises.
                    if chan._broken is not None or not chan._closed_by_peer:
                        raise
            await chan.wait_closed()
        return CompletedCommand(chan.exit_status, bytes(out), bytes(err), chan.exit_signal)

    async def rekey(self) -> None:
        """Re-exchange keys now; returns once the new keys are in use both ways.

        If an exchange is already running, this waits for that one.
        """
        self._check_alive()
        done = self._rekeyed
        self._core.rekey()
        await self.flush()
        await self._wait_or_closed(done)

    async def _wait_or_closed(self, event: trio.Event) -> None:
        async with trio.open_nursery() as nursery:

            async def closed() -> None:
                await self._closed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(closed)
            await event.wait()
            nursery.cancel_scope.cancel()
        if not event.is_set():
            self._raise_error()

    async def disconnect(
        self,
        code: int = DisconnectReason.BY_APPLICATION,
        description: str = "closed by application",
    ) -> None:
        """Send DISCONNECT with a reason and close the connection."""
        if self.error is None:
            try:
                self._core.send(ev.Disconnect(code=code, description=description))
            except TrioportError:
                pass
            with trio.move_on_after(2):
                await self._safe_flush()
            self._mark_broken(ConnectionClosedError(description, code))
        elif isinstance(self.error, ProtocolError):
            # We ended it over a protocol error: let our DISCONNECT arrive first.
            await self._linger()
        await trio.aclose_forcefully(self.stream)
        self._nursery.cancel_scope.cancel()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended, for whatever reason."""
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a task in this connection's nursery (it dies with the connection)."""
        self._nursery.start_soon(fn, *args)


@asynccontextmanager
async def open_ssh(
    stream: trio.abc.Stream,
    config: ConnectionConfig,
    handler: SSHHandler | None = None,
    *,
    rng: Callable[[int], bytes] | None = None,
) -> AsyncIterator[SSHConnection]:
    """Run an SSH connection over ``stream`` for the duration of the block.

    The connection's tasks live in a nursery owned by this context manager; leaving
    the block sends DISCONNECT (by application) and closes the stream. An exception
    from the block comes out as itself, not wrapped in an exception group.
    """
    try:
        async with trio.open_nursery() as nursery:
            # The connection's own tasks get a nursery of their own, so that when
            # the connection ends it cancels them, not the caller's block: the
            # block learns of the end from the errors its calls raise.
            try:
                conn = await nursery.start(_run_connection, stream, config, handler, rng)
            except BaseException:
                # Cancelled (or failed) before the connection took the stream over.
                await trio.aclose_forcefully(stream)
                raise
            try:
                yield conn
            finally:
                with trio.CancelScope(shield=True):
                    await conn.disconnect()
    except BaseExceptionGroup as group:
        single = _only_exception(group)
        if single is None:
            raise
        raise single from None


def _quickack_for(stream: trio.abc.Stream) -> Callable[[], None] | None:
    """A function re-arming TCP_QUICKACK on ``stream``'s socket, if it has one.

    During the handshake both sides send small packets; a peer with Nagle's
    algorithm on (OpenSSH, until the session starts) then waits for our delayed ACK,
    about 40 ms a round on Linux. Linux clears quick-ACK mode by itself, so it is
    re-armed after every read until the connection is authenticated.
    """
    sock = getattr(stream, "socket", None)
    option = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None

    def rearm() -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
        except OSError:
            pass

    return rearm


async def _run_connection(
    stream: trio.abc.Stream,
    config: ConnectionConfig,
    handler: SSHHandler | None,
    rng: Callable[[int], bytes] | None,
    *,
    task_status: trio.TaskStatus[SSHConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio.open_nursery() as tasks:
        conn = SSHConnection(stream, config, tasks, handler, rng=rng)
        tasks.start_soon(conn._pump)
        tasks.start_soon(conn._flusher)
        task_status.started(conn)


def _only_exception(group: BaseExceptionGroup) -> BaseException | None:
    """The one exception inside nested single-member groups, if that is all there is."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return None
