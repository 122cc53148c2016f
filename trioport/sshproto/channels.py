"""The connection protocol (RFC 4254): channels, their windows, global requests.

Theory of operation
-------------------
Each channel is a :class:`Channel` with two states, ours and theirs
(:class:`~.state.OurChannelState`, :class:`~.state.TheirChannelState`); every
message or event moves one of them through :data:`~.state.OUR_CHANNEL_SEND` or
:data:`~.state.THEIR_CHANNEL_RECEIVE`, and a missing entry is the error (data after
EOF, a second CLOSE, a request after CLOSE ...). A channel is forgotten, and its id
can be handed out again, only once CLOSE went both ways (RFC 4254 §5.3).

Flow control follows h2: ``send_window`` is what the peer lets us send, and a
ChannelData larger than ``min(send_window, max_packet)`` is refused with
:class:`~trioport.errors.LocalProtocolError` (the driver splits). The receive window
is strict: one byte beyond it ends the connection ("peer ignored channel window";
OpenSSH tolerates 10 %), as does a CHANNEL_DATA larger than the max_packet we
advertised (OpenSSH drops it and logs; we would rather not guess what else such a
peer gets wrong). The window reopens only when the driver reports bytes consumed
(:meth:`Channels.acknowledge`), in one WINDOW_ADJUST per half window.

Replies are matched in order (RFC 4254 §4, §5.4). Global request answers the core
gives itself (``keepalive@openssh.com`` gets a failure, as OpenSSH answers it;
``no-more-sessions@openssh.com`` a success) queue behind answers the driver still
owes, so the order on the wire always matches the order of the requests.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ChannelOpenFailureReason, LocalProtocolError, RemoteProtocolError
from . import events as ev
from . import messages as m
from . import wire
from .config import ConnectionConfig
from .state import (
    OUR_CHANNEL_SEND,
    THEIR_CHANNEL_RECEIVE,
    ChannelAction,
    OurChannelState,
    TheirChannelState,
)
from .wire import Reader

__all__ = ["MAX_SEND_PACKET", "MAX_WINDOW", "Channel", "Channels"]

#: The most data we put in one CHANNEL_DATA, whatever the peer advertises: 32 KiB is
#: what OpenSSH uses for its own channels and what every implementation accepts.
MAX_SEND_PACKET = 128 * 1024
#: A window is a uint32 (RFC 4254 §5.2).
MAX_WINDOW = 2**32 - 1

_A = ChannelAction


@dataclass(slots=True, eq=False)
class Channel:
    """One channel's state, named by our id."""

    id: int
    kind: str
    inbound: bool  # the peer opened it
    ours: OurChannelState = OurChannelState.OPENING
    theirs: TheirChannelState = TheirChannelState.OPENING
    peer_id: int = 0
    send_window: int = 0  # what the peer lets us send
    peer_max_packet: int = 0
    recv_window: int = 0  # what we let the peer send
    unacked: int = 0  # received, not yet consumed by the application
    consumed: int = 0  # consumed, not yet returned with WINDOW_ADJUST
    requests_sent: int = 0  # our requests waiting for a reply
    replies_owed: int = 0  # their requests waiting for our reply


class Channels:
    """Every channel of one connection, and its global requests.

    Args:
        config: the connection's configuration.
        send: queues one message for the peer.
        send_parts: queues the message ``head || body`` for the peer (channel data,
            encrypted straight from the application's buffer).
    """

    def __init__(
        self,
        config: ConnectionConfig,
        send: Callable[[m.Message], None],
        send_parts: Callable[[bytes, bytes | bytearray | memoryview], None],
    ) -> None:
        self.config = config
        self._send = send
        self._send_parts = send_parts
        self._channels: dict[int, Channel] = {}
        self._reserved: set[int] = set()
        # Lowest-free-id allocation in O(log n): ids below _next_id that are free
        # again sit in the heap.
        self._next_id = 0
        self._freed: list[int] = []
        self._our_globals: deque[m.GlobalRequest] = deque()
        self._global_replies: deque[m.Message | None] = deque()
        self.no_more_sessions = False  # the peer said it opens no more sessions
        self._we_said_no_more_sessions = False

    # --- ids and windows ----------------------------------------------------------------

    def _allocate(self) -> int:
        if self._freed:
            return heapq.heappop(self._freed)
        if self._next_id > MAX_WINDOW:
            raise LocalProtocolError("channel ids exhausted")
        self._next_id += 1
        return self._next_id - 1

    def _forget(self, chan: Channel) -> None:
        del self._channels[chan.id]
        heapq.heappush(self._freed, chan.id)

    def new_channel_id(self) -> int:
        """Reserve the lowest free id for an outgoing :class:`~.events.ChannelOpen`.

        The id stays reserved until a ChannelOpen uses it.
        """
        channel_id = self._allocate()
        self._reserved.add(channel_id)
        return channel_id

    def _get(self, channel_id: int) -> Channel:
        chan = self._channels.get(channel_id)
        if chan is None:
            raise LocalProtocolError(f"no channel {channel_id}")
        return chan

    def send_window(self, channel_id: int) -> int:
        """How many bytes of ChannelData may be sent now (0 unless the channel is open)."""
        chan = self._get(channel_id)
        return chan.send_window if chan.ours is OurChannelState.OPEN else 0

    def max_packet(self, channel_id: int) -> int:
        """The largest single ChannelData for this channel."""
        chan = self._get(channel_id)
        return min(chan.peer_max_packet, MAX_SEND_PACKET)

    def acknowledge(self, channel_id: int, n: int) -> None:
        """The application consumed ``n`` received bytes; maybe reopen the window.

        A channel that is gone or closing is ignored: its window no longer matters.
        """
        if n < 0:
            raise LocalProtocolError("cannot acknowledge a negative amount")
        chan = self._channels.get(channel_id)
        if chan is None:
            return
        if n > chan.unacked:
            raise LocalProtocolError(f"acknowledged {n} bytes, only {chan.unacked} received")
        chan.unacked -= n
        chan.consumed += n
        if (
            chan.consumed >= max(1, self.config.window_size // 2)
            and chan.theirs is TheirChannelState.OPEN
            and chan.ours is not OurChannelState.CLOSE_SENT
        ):
            chan.recv_window += chan.consumed
            self._send(m.ChannelWindowAdjust(chan.peer_id, chan.consumed))
            chan.consumed = 0

    # --- events from the driver ------------------------------------------------------------

    def _ours(self, chan: Channel, action: ChannelAction) -> None:
        nxt = OUR_CHANNEL_SEND.get((chan.ours, action))
        if nxt is None:
            raise LocalProtocolError(
                f"cannot send {action.value} on channel {chan.id} in state {chan.ours.value}"
            )
        chan.ours = nxt

    def _closed_both_ways(self, chan: Channel) -> None:
        if (
            chan.ours is OurChannelState.CLOSE_SENT
            and chan.theirs is TheirChannelState.CLOSE_RECEIVED
        ):
            self._forget(chan)

    def send_event(self, event: ev.Event) -> None:
        """Encode one connection-protocol event from the driver.

        Raises:
            LocalProtocolError: illegal in the channel's state, over the window, an
                unknown channel, or a reply nobody asked for.
        """
        sender = _SENDERS.get(type(event))
        if sender is None:
            raise LocalProtocolError(f"not a connection-protocol event: {type(event).__name__}")
        sender(self, event)

    def _send_open(self, event: ev.ChannelOpen) -> None:
        cid = event.channel
        if cid not in self._reserved:
            raise LocalProtocolError(f"channel id {cid} does not come from new_channel_id()")
        if len(self._channels) >= self.config.max_channels:
            raise LocalProtocolError("too many channels")
        if event.kind == "session" and self._we_said_no_more_sessions:
            raise LocalProtocolError("session channel after no-more-sessions@openssh.com")
        self._reserved.discard(cid)
        cfg = self.config
        self._channels[cid] = Channel(
            id=cid, kind=event.kind, inbound=False, recv_window=cfg.window_size
        )
        data = m.encode_channel_open(event)
        self._send(m.ChannelOpen(event.kind, cid, cfg.window_size, cfg.max_packet, data))

    def _answer_open(self, channel_id: int) -> Channel:
        chan = self._get(channel_id)
        if not chan.inbound or chan.ours is not OurChannelState.OPENING:
            raise LocalProtocolError(f"channel {channel_id} is not waiting for our answer")
        return chan

    def _send_confirmation(self, event: ev.ChannelOpenConfirmation) -> None:
        chan = self._answer_open(event.channel)
        self._ours(chan, _A.CONFIRM)
        chan.theirs = TheirChannelState.OPEN
        cfg = self.config
        self._send(
            m.ChannelOpenConfirmation(chan.peer_id, chan.id, cfg.window_size, cfg.max_packet)
        )

    def _send_open_failure(self, event: ev.ChannelOpenFailure) -> None:
        chan = self._answer_open(event.channel)
        self._forget(chan)
        self._send(m.ChannelOpenFailure(chan.peer_id, int(event.reason), event.description))

    def _send_data(self, event: ev.ChannelData) -> None:
        chan = self._get(event.channel)
        self._ours(chan, _A.DATA)
        n = len(event.data)
        limit = min(chan.send_window, self.max_packet(chan.id))
        if n > limit:
            raise LocalProtocolError(
                f"{n} bytes on channel {chan.id}: window and max packet allow {limit}"
            )
        chan.send_window -= n
        if event.stream is None:
            self._send_parts(m.channel_data_head(chan.peer_id, n), event.data)
        else:
            self._send_parts(m.extended_data_head(chan.peer_id, event.stream, n), event.data)

    def _send_eof(self, event: ev.ChannelEOF) -> None:
        chan = self._get(event.channel)
        self._ours(chan, _A.EOF)
        self._send(m.ChannelEof(chan.peer_id))

    def _send_close(self, event: ev.ChannelClose) -> None:
        chan = self._get(event.channel)
        self._ours(chan, _A.CLOSE)
        self._send(m.ChannelClose(chan.peer_id))
        self._closed_both_ways(chan)

    def _send_request(self, event: ev.ChannelRequest) -> None:
        chan = self._get(event.channel)
        name, data = m.encode_channel_request(event.request)
        self._ours(chan, _A.REQUEST)
        if event.want_reply:
            chan.requests_sent += 1
        self._send(m.ChannelRequest(chan.peer_id, name, event.want_reply, data))

    def _send_request_reply(self, event: ev.ChannelRequestReply) -> None:
        chan = self._get(event.channel)
        if chan.replies_owed == 0:
            raise LocalProtocolError(f"no request on channel {chan.id} waits for a reply")
        self._ours(chan, _A.REPLY)
        chan.replies_owed -= 1
        reply = m.ChannelSuccess if event.ok else m.ChannelFailure
        self._send(reply(chan.peer_id))

    def _send_global(self, event: ev.GlobalRequest) -> None:
        name, data = m.encode_global_request(event.request)
        msg = m.GlobalRequest(name, event.want_reply, data)
        if isinstance(event.request, ev.NoMoreSessions):
            self._we_said_no_more_sessions = True
        if event.want_reply:
            self._our_globals.append(msg)
        self._send(msg)

    def _send_global_reply(self, event: ev.GlobalRequestReply) -> None:
        try:
            slot = self._global_replies.index(None)
        except ValueError:
            raise LocalProtocolError("no global request waits for a reply") from None
        if not event.ok:
            self._global_replies[slot] = m.RequestFailure()
        elif event.port is not None:
            self._global_replies[slot] = m.RequestSuccess(wire.uint32(event.port))
        else:
            self._global_replies[slot] = m.RequestSuccess(event.data)
        self._flush_global_replies()

    def _flush_global_replies(self) -> None:
        while self._global_replies and self._global_replies[0] is not None:
            msg = self._global_replies.popleft()
            assert msg is not None
            self._send(msg)

    # --- messages from the peer -------------------------------------------------------------

    def handle(self, msg: m.Message) -> ev.Event | None:
        """Handle one connection-protocol message; returns the event for the driver.

        Raises:
            RemoteProtocolError: unknown channel, illegal in the channel's state,
                window or max packet exceeded, a reply nobody asked for.
        """
        return _HANDLERS[type(msg)](self, msg)

    def _theirs(self, recipient: int, action: ChannelAction) -> Channel:
        chan = self._channels.get(recipient)
        if chan is None:
            raise RemoteProtocolError(f"{action.value} for unknown channel {recipient}")
        nxt = THEIR_CHANNEL_RECEIVE.get((chan.theirs, action))
        if nxt is None:
            raise RemoteProtocolError(
                f"{action.value} on channel {recipient} in state {chan.theirs.value}"
            )
        chan.theirs = nxt
        return chan

    @staticmethod
    def _live(chan: Channel) -> bool:
        # After our CLOSE the peer may still send what crossed it in flight; the
        # driver has let go of the channel, so the core drops it.
        return chan.ours is not OurChannelState.CLOSE_SENT

    def _on_open(self, msg: m.ChannelOpen) -> ev.Event | None:
        if len(self._channels) >= self.config.max_channels:
            self._send(
                m.ChannelOpenFailure(
                    msg.sender, ChannelOpenFailureReason.RESOURCE_SHORTAGE, "too many channels"
                )
            )
            return None
        if msg.kind == "session" and self.no_more_sessions:
            # OpenSSH PROTOCOL §2.2: "refuse ... and instead immediately abort".
            raise RemoteProtocolError("session channel after no-more-sessions@openssh.com")
        if msg.max_packet == 0:
            # Nothing could ever be sent on it; a sender would spin on empty packets.
            raise RemoteProtocolError("channel open with a maximum packet size of 0")
        cid = self._allocate()
        event = m.decode_channel_open(cid, msg.kind, msg.data)
        self._channels[cid] = Channel(
            id=cid,
            kind=msg.kind,
            inbound=True,
            peer_id=msg.sender,
            send_window=msg.window,
            peer_max_packet=msg.max_packet,
            recv_window=self.config.window_size,
        )
        return event

    def _on_open_confirmation(self, msg: m.ChannelOpenConfirmation) -> ev.Event:
        chan = self._channels.get(msg.recipient)
        if chan is None or chan.inbound or chan.ours is not OurChannelState.OPENING:
            raise RemoteProtocolError(f"unexpected open confirmation for {msg.recipient}")
        if msg.max_packet == 0:
            raise RemoteProtocolError("channel confirmed with a maximum packet size of 0")
        self._theirs(chan.id, _A.CONFIRM)
        chan.ours = OurChannelState.OPEN
        chan.peer_id = msg.sender
        chan.send_window = msg.window
        chan.peer_max_packet = msg.max_packet
        return ev.ChannelOpenConfirmation(channel=chan.id)

    def _on_open_failure(self, msg: m.ChannelOpenFailure) -> ev.Event:
        chan = self._channels.get(msg.recipient)
        if chan is None or chan.inbound or chan.ours is not OurChannelState.OPENING:
            raise RemoteProtocolError(f"unexpected open failure for {msg.recipient}")
        self._forget(chan)
        return ev.ChannelOpenFailure(
            channel=chan.id, reason=msg.reason, description=msg.description
        )

    def _on_data(self, msg: m.ChannelData | m.ChannelExtendedData) -> ev.Event | None:
        chan = self._theirs(msg.recipient, _A.DATA)
        n = len(msg.data)
        if n > self.config.max_packet:
            raise RemoteProtocolError(
                f"{n} bytes of channel data, more than the max packet we advertised"
            )
        if n > chan.recv_window:
            raise RemoteProtocolError("peer ignored channel window")
        chan.recv_window -= n
        if not self._live(chan):
            return None
        chan.unacked += n
        stream = msg.code if isinstance(msg, m.ChannelExtendedData) else None
        return ev.ChannelData(channel=chan.id, data=msg.data, stream=stream)

    def _on_eof(self, msg: m.ChannelEof) -> ev.Event | None:
        chan = self._theirs(msg.recipient, _A.EOF)
        return ev.ChannelEOF(channel=chan.id) if self._live(chan) else None

    def _on_close(self, msg: m.ChannelClose) -> ev.Event:
        chan = self._theirs(msg.recipient, _A.CLOSE)
        self._closed_both_ways(chan)
        return ev.ChannelClose(channel=chan.id)

    def _on_request(self, msg: m.ChannelRequest) -> ev.Event | None:
        chan = self._theirs(msg.recipient, _A.REQUEST)
        request = m.decode_channel_request(msg.name, msg.data)
        if not self._live(chan):
            return None  # we can no longer answer it
        if msg.want_reply:
            chan.replies_owed += 1
        return ev.ChannelRequest(channel=chan.id, request=request, want_reply=msg.want_reply)

    def _on_request_reply(self, msg: m.ChannelSuccess | m.ChannelFailure) -> ev.Event | None:
        chan = self._theirs(msg.recipient, _A.REPLY)
        if chan.requests_sent == 0:
            raise RemoteProtocolError(f"reply on channel {chan.id} to no request")
        chan.requests_sent -= 1
        if not self._live(chan):
            return None
        return ev.ChannelRequestReply(channel=chan.id, ok=isinstance(msg, m.ChannelSuccess))

    def _on_window_adjust(self, msg: m.ChannelWindowAdjust) -> ev.Event | None:
        chan = self._theirs(msg.recipient, _A.WINDOW_ADJUST)
        if chan.send_window + msg.amount > MAX_WINDOW:
            raise RemoteProtocolError("channel window adjusted beyond 2**32 - 1")
        chan.send_window += msg.amount
        return ev.ChannelWindowAdjusted(channel=chan.id) if self._live(chan) else None

    def _on_global(self, msg: m.GlobalRequest) -> ev.Event | None:
        request = m.decode_global_request(msg.name, msg.data)
        if isinstance(request, ev.KeepAlive | ev.NoMoreSessions):
            # Answered by the core: OpenSSH fails keepalives (any reply is proof of
            # life) and accepts no-more-sessions.
            if isinstance(request, ev.NoMoreSessions):
                self.no_more_sessions = True
            if msg.want_reply:
                ok = isinstance(request, ev.NoMoreSessions)
                self._global_replies.append(m.RequestSuccess() if ok else m.RequestFailure())
                self._flush_global_replies()
            return None
        if msg.want_reply:
            self._global_replies.append(None)
        return ev.GlobalRequest(request=request, want_reply=msg.want_reply)

    def _on_global_reply(self, msg: m.RequestSuccess | m.RequestFailure) -> ev.Event:
        if not self._our_globals:
            raise RemoteProtocolError("global request reply to no request")
        request = self._our_globals.popleft()
        if isinstance(msg, m.RequestFailure):
            return ev.GlobalRequestReply(ok=False)
        port = None
        if request.name == "tcpip-forward" and len(msg.data) == 4:
            # RFC 4254 §7.1: the bound port, when port 0 was requested.
            port = Reader(msg.data).uint32()
        return ev.GlobalRequestReply(ok=True, port=port, data=msg.data)


_SENDERS: dict[type, Callable[[Channels, ev.Event], None]] = {
    ev.ChannelOpen: Channels._send_open,
    ev.ChannelOpenConfirmation: Channels._send_confirmation,
    ev.ChannelOpenFailure: Channels._send_open_failure,
    ev.ChannelData: Channels._send_data,
    ev.ChannelEOF: Channels._send_eof,
    ev.ChannelClose: Channels._send_close,
    ev.ChannelRequest: Channels._send_request,
    ev.ChannelRequestReply: Channels._send_request_reply,
    ev.GlobalRequest: Channels._send_global,
    ev.GlobalRequestReply: Channels._send_global_reply,
}  # type: ignore[dict-item]

_HANDLERS: dict[type, Callable[[Channels, m.Message], ev.Event | None]] = {
    m.ChannelOpen: Channels._on_open,
    m.ChannelOpenConfirmation: Channels._on_open_confirmation,
    m.ChannelOpenFailure: Channels._on_open_failure,
    m.ChannelData: Channels._on_data,
    m.ChannelExtendedData: Channels._on_data,
    m.ChannelEof: Channels._on_eof,
    m.ChannelClose: Channels._on_close,
    m.ChannelRequest: Channels._on_request,
    m.ChannelSuccess: Channels._on_request_reply,
    m.ChannelFailure: Channels._on_request_reply,
    m.ChannelWindowAdjust: Channels._on_window_adjust,
    m.GlobalRequest: Channels._on_global,
    m.RequestSuccess: Channels._on_global_reply,
    m.RequestFailure: Channels._on_global_reply,
}  # type: ignore[dict-item]
