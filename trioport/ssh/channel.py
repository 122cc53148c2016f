"""SSH channels as trio streams.

A :class:`ChannelStream` is a :class:`trio.abc.HalfCloseableStream`: ``send_all``
waits for the peer's window, ``receive_some`` reopens *our* window only as the
application reads, ``send_eof`` sends SSH_MSG_CHANNEL_EOF and ``aclose`` sends
SSH_MSG_CHANNEL_CLOSE. So anything that speaks a byte stream (h11, a pty pump,
another SSH connection) runs over a channel unchanged, and backpressure is the SSH
window end to end.

Errors follow trio's taxonomy: the connection or the peer ended the channel →
:class:`trio.BrokenResourceError`; we closed it → :class:`trio.ClosedResourceError`;
two tasks sending (or receiving) at once → :class:`trio.BusyResourceError`.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import trio

from ..sshproto import events as ev

if TYPE_CHECKING:
    from .connection import SSHConnection

__all__ = ["ChannelStream", "StderrStream"]

#: Requests a peer may queue on one channel before we refuse the rest. OpenSSH
#: processes requests one at a time; a well-behaved client sends a handful.
MAX_QUEUED_REQUESTS = 64


class _Busy:
    """Raises BusyResourceError when two tasks use one direction at once."""

    __slots__ = ("_held", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what} this channel")
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False


class _Inbox:
    """Bytes received for one stream of a channel (ordinary data or stderr).

    Kept as the packets' own ``bytes`` objects, so a reader gets them without a copy.
    """

    __slots__ = ("busy", "chunks", "lot")

    def __init__(self, what: str) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.busy = _Busy(what)

    def take(self, max_bytes: int | None) -> bytes:
        chunk = self.chunks.popleft()
        if max_bytes is not None and len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk


class ChannelStream(trio.abc.HalfCloseableStream):
    """One SSH channel, as a trio stream of its ordinary data.

    Extended data (stderr) arrives on :attr:`stderr`; channel requests from the
    peer arrive through :meth:`next_request`; requests we make go through
    :meth:`request`. ``exit_status`` / ``exit_signal`` hold what a command reported.
    """

    def __init__(self, conn: SSHConnection, channel: int, kind: str = "session") -> None:
        self._conn = conn
        self.channel = channel
        self.kind = kind
        self._stdout = _Inbox("receiving on")
        self._stderr = _Inbox("receiving stderr on")
        self._send_busy = _Busy("sending on")
        self._send_extended_busy = _Busy("sending extended data on")
        self._window_lot = trio.lowlevel.ParkingLot()
        self._eof_received = False
        self._eof_sent = False
        self._closed_by_us = False
        self._closed_by_peer = False
        self._close_sent = False
        self._broken: BaseException | None = None
        self._pending_replies: collections.deque[trio.Event | None] = collections.deque()
        self._reply_results: dict[int, bool] = {}
        self._requests_send, self._requests_recv = trio.open_memory_channel[ev.ChannelRequest](
            MAX_QUEUED_REQUESTS
        )
        self._closed_event = trio.Event()
        self.exit_status: int | None = None
        self.exit_signal: ev.ExitSignal | None = None
        self.stderr = StderrStream(self)

    # --- called by SSHConnection's pump (synchronous, never blocks) ---------------

    def _on_data(self, data: bytes, stream: int | None) -> None:
        if data:
            inbox = self._stdout if stream is None else self._stderr
            inbox.chunks.append(data)
            inbox.lot.unpark_all()

    def _on_eof(self) -> None:
        self._eof_received = True
        self._wake_all()

    def _on_close(self) -> None:
        self._closed_by_peer = True
        self._eof_received = True
        self._closed_event.set()
        self._wake_all()
        # Pending request replies will never come.
        while self._pending_replies:
            waiter = self._pending_replies.popleft()
            if waiter is not None:
                self._reply_results[id(waiter)] = False
                waiter.set()

    def _on_window(self) -> None:
        self._window_lot.unpark_all()

    def _on_request(self, request: ev.ChannelRequest) -> bool:
        """Queue a peer's request; False means the queue is full (refuse it)."""
        match request.request:
            case ev.ExitStatus(status=status):
                self.exit_status = status
            case ev.ExitSignal() as signal:
                self.exit_signal = signal
        try:
            self._requests_send.send_nowait(request)
        except trio.WouldBlock:
            return False
        return True

    def _on_reply(self, ok: bool) -> None:
        if not self._pending_replies:
            return
        waiter = self._pending_replies.popleft()
        if waiter is not None:
            self._reply_results[id(waiter)] = ok
            waiter.set()

    def _on_broken(self, exc: BaseException) -> None:
        self._broken = exc
        self._closed_event.set()
        self._wake_all()
        self._on_close()

    def _wake_all(self) -> None:
        self._stdout.lot.unpark_all()
        self._stderr.lot.unpark_all()
        self._window_lot.unpark_all()

    # --- the stream interface ----------------------------------------------------

    def _check_sendable(self) -> None:
        if self._closed_by_us:
            raise trio.ClosedResourceError("channel was closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send after send_eof()")
        if self._broken is not None:
            raise trio.BrokenResourceError("SSH connection is gone") from self._broken
        if self._closed_by_peer:
            raise trio.BrokenResourceError("the peer closed the channel")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(data, None)

    async def send_extended(self, data: bytes | bytearray | memoryview, stream: int = 1) -> None:
        """Send extended data (``stream=1`` is stderr, RFC 4254 §5.2)."""
        await self._send(data, stream)

    async def _send(self, data: bytes | bytearray | memoryview, stream: int | None) -> None:
        # Ordinary and extended data are separate streams: one task may send
        # stdout while another sends stderr, sharing the window.
        with self._send_busy if stream is None else self._send_extended_busy:
            self._check_sendable()
            await trio.lowlevel.checkpoint()
            view = memoryview(data).cast("B")
            conn = self._conn
            while view:
                self._check_sendable()
                if conn.core_output_held():
                    await conn.wait_output_released()
                    continue
                window = conn.core_send_window(self.channel)
                if window <= 0:
                    await self._window_lot.park()
                    continue
                max_packet = max(1, conn.core_max_packet(self.channel))
                # Queue as many packets as the window allows, then one flush: one
                # send_all per batch, not per packet.
                budget = min(window, len(view))
                while budget > 0:
                    n = min(budget, max_packet)
                    # The core encodes (copies) the slice at once, so a view is safe.
                    conn.core_send(
                        ev.ChannelData(channel=self.channel, data=view[:n], stream=stream)
                    )
                    view = view[n:]
                    budget -= n
                await conn.flush()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_busy:
            self._check_sendable()
            while self._conn.core_send_window(self.channel) <= 0:
                await self._window_lot.park()
                self._check_sendable()
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._receive(self._stdout, max_bytes)

    async def receive_chunks(self) -> list[bytes]:
        """Everything received and not yet read, as the packets' own ``bytes`` objects.

        Waits for at least one chunk; returns ``[]`` at end of file. A bulk
        consumer (a command's stdin pipe, written with ``os.writev``) takes a whole
        burst of packets per wakeup this way instead of one per ``receive_some``.
        """
        inbox = self._stdout
        with inbox.busy:
            if not await self._wait_for_data(inbox):
                return []
            out = list(inbox.chunks)
            inbox.chunks.clear()
            self._consumed(sum(map(len, out)))
            return out

    async def _receive(self, inbox: _Inbox, max_bytes: int | None) -> bytes:
        if max_bytes is not None:
            if not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an integer or None")
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with inbox.busy:
            if not await self._wait_for_data(inbox):
                return b""
            out = inbox.take(max_bytes)
            self._consumed(len(out))
            return out

    async def _wait_for_data(self, inbox: _Inbox) -> bool:
        """Wait until ``inbox`` has bytes (True) or the peer's EOF came (False).

        Raises:
            trio.ClosedResourceError: we closed the channel (before or meanwhile).
            trio.BrokenResourceError: the connection is gone.
        """
        if self._closed_by_us:
            raise trio.ClosedResourceError("channel was closed")
        await trio.lowlevel.checkpoint()
        while not inbox.chunks:
            if self._closed_by_us:
                raise trio.ClosedResourceError("channel was closed")
            if self._eof_received:
                return False
            if self._broken is not None:
                raise trio.BrokenResourceError("SSH connection is gone") from self._broken
            await inbox.lot.park()
        if self._closed_by_us:
            raise trio.ClosedResourceError("channel was closed")
        return True

    def _consumed(self, n: int) -> None:
        """The application took ``n`` bytes: only now may the peer's window reopen."""
        if not self._closed_by_peer and self._broken is None:
            self._conn.core_acknowledge(self.channel, n)
            self._conn.flush_soon()

    async def send_eof(self) -> None:
        with self._send_busy:
            if self._closed_by_us:
                raise trio.ClosedResourceError("channel was closed")
            await trio.lowlevel.checkpoint()
            if self._eof_sent or self._closed_by_peer or self._broken is not None:
                return
            self._eof_sent = True
            self._conn.core_send(ev.ChannelEOF(channel=self.channel))
            self._conn.post()

    async def aclose(self) -> None:
        if not self._closed_by_us:
            self._closed_by_us = True
            self._wake_all()
            self._requests_send.close()
            if self._broken is None and not self._close_sent:
                self._close_sent = True
                self._conn.close_channel(self.channel)
        try:
            await self._conn.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await trio.lowlevel.checkpoint()

    # --- requests ------------------------------------------------------------------

    async def request(self, request: ev.ChannelRequestType, want_reply: bool = True) -> bool:
        """Send a channel request; with ``want_reply``, wait for and return the answer."""
        self._check_sendable_request()
        waiter = trio.Event() if want_reply else None
        if want_reply:
            self._pending_replies.append(waiter)
        self._conn.core_send(
            ev.ChannelRequest(channel=self.channel, request=request, want_reply=want_reply)
        )
        self._conn.post()  # written in order; a reply, if wanted, is what we wait for
        if waiter is None:
            await trio.lowlevel.checkpoint()
            return True
        await waiter.wait()
        return self._reply_results.pop(id(waiter), False)

    def _check_sendable_request(self) -> None:
        if self._closed_by_us:
            raise trio.ClosedResourceError("channel was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("SSH connection is gone") from self._broken
        if self._closed_by_peer:
            raise trio.BrokenResourceError("the peer closed the channel")

    async def next_request(self) -> ev.ChannelRequest | None:
        """The peer's next channel request, or None once the channel is closing."""
        try:
            return await self._requests_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def reply(self, request: ev.ChannelRequest, ok: bool) -> None:
        """Answer a peer's request (a no-op unless it asked for a reply)."""
        if not request.want_reply or self._closed_by_peer or self._broken is not None:
            return
        if self._closed_by_us:
            return
        self._conn.core_send(ev.ChannelRequestReply(channel=self.channel, ok=ok))
        self._conn.post()
        await trio.lowlevel.checkpoint()

    async def wait_closed(self) -> None:
        """Wait until the peer closed the channel (or the connection ended)."""
        await self._closed_event.wait()

    @property
    def eof_received(self) -> bool:
        """True once the peer sent EOF (or closed)."""
        return self._eof_received


class StderrStream(trio.abc.ReceiveStream):
    """The extended-data (stderr) half of a channel, as a receive stream."""

    def __init__(self, channel: ChannelStream) -> None:
        self._channel = channel

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._channel._receive(self._channel._stderr, max_bytes)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
