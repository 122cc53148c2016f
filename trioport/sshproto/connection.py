"""The sans-IO SSH connection: bytes in, events out, events in, bytes out.

Theory of operation
-------------------
:class:`Connection` is glue. The :class:`~.transport.Transport` turns bytes into
packets; the tables in :mod:`.state` decide whether each message may arrive now
(by our role, the transport state and the key-exchange machine) and which part
handles it; :mod:`.userauth` and :mod:`.channels` do the rest. The same event
classes travel both ways (:mod:`.events`).

Usage, in the h11 shape::

    conn = Connection(config, rng=secure_random_bytes, now=clock())
    conn.receive_data(data)            # buffer only; b"" = EOF
    while (event := conn.next_event()) is not None:
        ...                            # maybe conn.send(reply)
    sock.send(conn.data_to_send())     # everything queued, replies included

Errors. A peer that breaks the protocol makes :meth:`Connection.next_event` queue a
DISCONNECT with the reason, move to ``ERROR`` and raise
:class:`~trioport.errors.RemoteProtocolError` (or a subclass) carrying the code;
``data_to_send()`` still yields that DISCONNECT, every other later call raises. A
caller that sends something illegal gets :class:`~trioport.errors.LocalProtocolError`
and the connection is unchanged. Anything else escaping is a bug.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..errors import (
    DisconnectReason,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from . import certs  # noqa: F401 - registers the *-cert-v01 key types with parse_public_key
from . import events as ev
from . import messages as m
from .channels import Channels
from .config import ConnectionConfig
from .messages import MsgId
from .state import (
    INBOUND,
    KEX_INBOUND,
    OUTBOUND,
    STRICT_KEX_INBOUND,
    Handler,
    Role,
    ServerAuthState,
    TransportState,
)
from .transport import Transport
from .userauth import SERVICE_USERAUTH, ClientAuth, ServerAuth, data_to_sign

__all__ = ["Connection"]

_KNOWN_NUMBERS = frozenset(int(n) for n in MsgId)
_S = TransportState
_KEYED_STATES = frozenset({_S.SERVICE, _S.USERAUTH, _S.CONNECTED})


class Connection:
    """One SSH connection, client or server, without I/O.

    The constructor queues our identification line and first KEXINIT.

    Args:
        config: roles, algorithms, keys, limits and policies.
        rng: ``rng(n)`` returns ``n`` random bytes (the OS CSPRNG in production).
        now: the current time in seconds, for the rekey timer.
    """

    def __init__(
        self, config: ConnectionConfig, *, rng: Callable[[int], bytes], now: float = 0.0
    ) -> None:
        self.config = config
        self.role = config.role
        self._transport = Transport(config, rng, now)
        self._state = TransportState.VERSION
        self._events: deque[ev.Event] = deque()
        self._error: RemoteProtocolError | None = None
        self._send = self._transport.send_message
        self._server_auth = (
            ServerAuth(config, self._send, lambda: self._transport.session_id)
            if self.role is Role.SERVER
            else None
        )
        self._client_auth = ClientAuth(self._send) if self.role is Role.CLIENT else None
        self._channels = Channels(config, self._send, self._transport.send_parts)
        self._ext_info_in_auth = False
        self._success_must_follow = False
        #: Extensions the peer announced in EXT_INFO (RFC 8308), name -> raw value.
        self.peer_extensions: dict[str, bytes] = {}

    # --- properties --------------------------------------------------------------------

    @property
    def state(self) -> TransportState:
        """The main state: VERSION, KEX, SERVICE, USERAUTH, CONNECTED, CLOSED or ERROR."""
        return self._state

    @property
    def session_id(self) -> bytes | None:
        """The first exchange hash (RFC 4253 §7.2), once the first exchange is done."""
        return self._transport.session_id

    @property
    def peer_version(self) -> str | None:
        """The peer's identification line, without CR LF."""
        return self._transport.peer_version

    @property
    def negotiated(self) -> dict[str, str]:
        """The algorithms in use (see :class:`~.events.KexComplete`)."""
        return dict(self._transport.negotiated)

    @property
    def host_key(self) -> bytes | None:
        """The server's host key (or certificate) blob from the key exchange."""
        return self._transport.host_key

    @property
    def is_authenticated(self) -> bool:
        """True once USERAUTH_SUCCESS was sent (server) or received (client)."""
        if self._server_auth is not None:
            return self._server_auth.state is ServerAuthState.DONE
        assert self._client_auth is not None
        return self._client_auth.success

    @property
    def username(self) -> str | None:
        """The authenticated user name (None before authentication succeeded)."""
        if not self.is_authenticated:
            return None
        auth = self._server_auth or self._client_auth
        assert auth is not None
        return auth.username

    @property
    def closed(self) -> bool:
        """True once the connection ended (DISCONNECT, EOF or a protocol error)."""
        return self._state in (TransportState.CLOSED, TransportState.ERROR)

    @property
    def strict_kex(self) -> bool:
        """True when both sides agreed on OpenSSH's strict KEX (PROTOCOL §1.9)."""
        return self._transport.strict

    # --- bytes in and out ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the stream ended. Never parses."""
        self._check_usable()
        if self._transport.eof and data:
            raise LocalProtocolError("data after end of stream")
        self._transport.receive_data(bytes(data))

    def data_to_send(self) -> bytes:
        """Drain everything queued for the peer, including the core's own replies.

        Works in every state, so a DISCONNECT queued by an error can be delivered.
        """
        return self._transport.data_to_send()

    def data_to_send_view(self) -> memoryview:
        """Like :meth:`data_to_send`, without a copy: the view is valid until the next
        call of either (a driver sends it, then asks again)."""
        return self._transport.data_to_send_view()

    @property
    def output_held(self) -> bool:
        """Whether a key exchange is holding back what :meth:`send` queues.

        Held messages go out after our NEWKEYS; a driver should not queue more
        channel data meanwhile (the peer controls how long that takes).
        """
        return self._transport.holding

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` would return anything (cheap to ask)."""
        return self._transport.has_data_to_send

    @property
    def bytes_to_send(self) -> int:
        """How many bytes :meth:`data_to_send` would return (cheap to ask)."""
        return self._transport.bytes_to_send

    def next_event(self) -> ev.Event | None:
        """The next event, or None when more data is needed (or the connection ended).

        Raises:
            RemoteProtocolError: the peer broke the protocol; a DISCONNECT is queued.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except ProtocolError as exc:
            err = self._fail(exc)
            if err is exc:
                raise
            raise err from exc

    def _next_event(self) -> ev.Event | None:
        t = self._transport
        while not self._events:
            if self._state is TransportState.CLOSED:
                return None
            if self._state is TransportState.VERSION:
                version = t.read_version()
                if version is None:
                    return self._need_data()
                self._state = TransportState.KEX
                return ev.VersionReceived(version=version)
            packet = t.read_packet()
            if packet is None:
                return self._need_data()
            self._dispatch(*packet)
            self._maybe_rekey()
        return self._events.popleft()

    def _need_data(self) -> ev.Event | None:
        if not self._transport.eof:
            return None
        self._state = TransportState.CLOSED
        return ev.ConnectionLost()

    def _fail(self, exc: ProtocolError) -> RemoteProtocolError:
        err = (
            exc
            if isinstance(exc, RemoteProtocolError)
            else RemoteProtocolError(exc.description, exc.code)
        )
        if self._state not in (TransportState.CLOSED, TransportState.ERROR):
            self._transport.send_disconnect(err.code, err.description)
        self._state = TransportState.ERROR
        self._error = err
        return err

    def _check_usable(self) -> None:
        if self._error is not None:
            raise LocalProtocolError(f"connection failed: {self._error.description}")

    # --- inbound dispatch ------------------------------------------------------------------

    def _dispatch(self, seqnr: int, payload: bytes) -> None:
        number = payload[0]
        handler = self._lookup(number)
        if handler is None:
            # RFC 4253 §11.4: an unknown message after authentication.
            self._send(m.Unimplemented(seqnr))
            return
        if self._success_must_follow and number != MsgId.USERAUTH_SUCCESS:
            raise RemoteProtocolError("EXT_INFO during user auth not followed by SUCCESS")
        _DISPATCH[handler](self, seqnr, payload)

    def _lookup(self, number: int) -> Handler | None:
        t = self._transport
        if t.strict and t.kex_count == 0:
            table = STRICT_KEX_INBOUND[self.role]
        elif t.peer_in_kex:
            table = KEX_INBOUND[self.role]
        else:
            table = INBOUND.get((self.role, self._state), {})
        handler = table.get(number)
        if handler is not None:
            return handler
        if number not in _KNOWN_NUMBERS and self.is_authenticated and not t.peer_in_kex:
            return None
        name = MsgId(number).name if number in _KNOWN_NUMBERS else "unknown"
        raise RemoteProtocolError(
            f"unexpected message {number} ({name}) in state {self._state.value}"
            + (" during key exchange" if t.peer_in_kex else "")
        )

    def _on_transport(self, seqnr: int, payload: bytes) -> None:
        msg = m.parse(payload)
        if isinstance(msg, m.Disconnect):
            self._state = TransportState.CLOSED
            self._events.append(ev.Disconnect(code=msg.code, description=msg.description))
        elif isinstance(msg, m.Debug):
            self._events.append(ev.Debug(message=msg.message, always_display=msg.always_display))
        # IGNORE and UNIMPLEMENTED need nothing.

    def _on_kex(self, seqnr: int, payload: bytes) -> None:
        event = self._transport.handle_kex(seqnr, payload)
        if event is None:
            return
        assert isinstance(event, ev.KexComplete)
        if event.first:
            self._state = TransportState.SERVICE
            if self._client_auth is not None:
                self._send(m.ServiceRequest(SERVICE_USERAUTH))
                self._client_auth.on_service_requested()
        self._events.append(event)

    def _on_ext_info(self, seqnr: int, payload: bytes) -> None:
        # RFC 8308 §2.4: right after the server's first NEWKEYS, or once just before
        # USERAUTH_SUCCESS; anywhere else it is an injection (CVE-2023-46445).
        if self._state is TransportState.SERVICE:
            if not self._transport.take_ext_info_slot():
                raise RemoteProtocolError("EXT_INFO outside its place after NEWKEYS")
        elif self._ext_info_in_auth:
            raise RemoteProtocolError("second EXT_INFO during user authentication")
        else:
            self._ext_info_in_auth = self._success_must_follow = True
        msg = m.parse(payload)
        assert isinstance(msg, m.ExtInfo)
        extensions = dict(msg.extensions)
        self.peer_extensions.update(extensions)
        self._events.append(ev.ExtInfoReceived(extensions=extensions))

    def _on_service(self, seqnr: int, payload: bytes) -> None:
        msg = m.parse(payload)
        if msg.service != SERVICE_USERAUTH:  # type: ignore[attr-defined]
            raise RemoteProtocolError(
                "service not available", DisconnectReason.SERVICE_NOT_AVAILABLE
            )
        self._state = TransportState.USERAUTH
        # A client's requests went out behind its SERVICE_REQUEST: the accept needs
        # nothing more than the state change.
        if isinstance(msg, m.ServiceRequest):
            self._send(m.ServiceAccept(SERVICE_USERAUTH))
            if self.config.banner is not None:
                self._send(m.UserauthBanner(self.config.banner))

    def _on_userauth(self, seqnr: int, payload: bytes) -> None:
        if self._server_auth is not None:
            msg = m.parse(payload)
            if isinstance(msg, m.UserauthRequest):
                event: ev.Event | None = self._server_auth.on_request(msg)
            else:
                assert isinstance(msg, m.UserauthInfoResponse)
                event = self._server_auth.on_info_response(msg)
        else:
            assert self._client_auth is not None
            event = self._client_auth.on_message(payload)
            if isinstance(event, ev.UserauthSuccess):
                self._success_must_follow = False
                self._state = TransportState.CONNECTED
        if event is not None:
            self._events.append(event)

    def _on_connection(self, seqnr: int, payload: bytes) -> None:
        event = self._channels.handle(m.parse(payload))
        if event is not None:
            self._events.append(event)

    def _on_drop(self, seqnr: int, payload: bytes) -> None:
        pass

    # --- outbound ---------------------------------------------------------------------------

    def send(self, event: ev.Event) -> None:
        """Queue an event for the peer (its bytes come out of :meth:`data_to_send`).

        Raises:
            LocalProtocolError: the event is not legal in the current state.
        """
        self._check_usable()
        allowed = OUTBOUND.get((self.role, self._state), frozenset())
        if type(event) not in allowed:
            raise LocalProtocolError(
                f"cannot send {type(event).__name__} in state {self._state.value}"
            )
        try:
            _SEND[type(event)](self, event)
        except RemoteProtocolError as exc:
            # Only the auth failure limit gets here: our own FAILURE reached
            # max_auth_tries. The next next_event() raises it.
            self._fail(exc)
            return
        self._maybe_rekey()

    def _send_disconnect(self, event: ev.Disconnect) -> None:
        self._transport.send_disconnect(event.code, event.description)
        self._state = TransportState.CLOSED

    def _send_debug(self, event: ev.Debug) -> None:
        self._send(m.Debug(event.always_display, event.message))

    def _send_userauth(self, event: ev.Event) -> None:
        if self._client_auth is not None:
            if isinstance(event, ev.UserauthRequest):
                self._client_auth.send_request(event)
            else:
                assert isinstance(event, ev.UserauthInfoResponse)
                self._client_auth.send_info_response(event)
            return
        auth = self._server_auth
        assert auth is not None
        match event:
            case ev.UserauthSuccess():
                auth.send_success()
                self._state = TransportState.CONNECTED
            case ev.UserauthFailure():
                auth.send_failure(event)
            case ev.UserauthPKOk():
                auth.send_pk_ok(event)
            case ev.UserauthInfoRequest():
                auth.send_info_request(event)
            case ev.UserauthBanner():
                self._send(m.UserauthBanner(event.message, event.language))

    def _send_connection(self, event: ev.Event) -> None:
        self._channels.send_event(event)

    # --- channels, windows, timers ------------------------------------------------------------

    def new_channel_id(self) -> int:
        """The lowest free channel id, reserved for the caller's ChannelOpen."""
        self._check_usable()
        return self._channels.new_channel_id()

    def send_window(self, channel: int) -> int:
        """Bytes of ChannelData that may be sent on ``channel`` now."""
        self._check_usable()
        return self._channels.send_window(channel)

    def max_packet(self, channel: int) -> int:
        """The largest single ChannelData for ``channel``."""
        self._check_usable()
        return self._channels.max_packet(channel)

    def acknowledge_received_data(self, channel: int, n: int) -> None:
        """The application consumed ``n`` bytes of ``channel``: the window may reopen."""
        self._check_usable()
        if self._state is TransportState.CONNECTED:
            self._channels.acknowledge(channel, n)
            self._maybe_rekey()

    def publickey_data_to_sign(
        self,
        username: str,
        algorithm: str,
        public_key_blob: bytes,
        service: str = "ssh-connection",
    ) -> bytes:
        """The bytes a client signs for publickey authentication (RFC 4252 §7).

        Raises:
            LocalProtocolError: the first key exchange has not finished yet.
        """
        session_id = self._transport.session_id
        if session_id is None:
            raise LocalProtocolError("no session id before the first key exchange")
        return data_to_sign(session_id, username, algorithm, public_key_blob, service)

    def rekey(self) -> None:
        """Start a key re-exchange now (nothing happens if one is running).

        Raises:
            LocalProtocolError: before the first exchange finished, or after the end.
        """
        self._check_usable()
        if self._state not in _KEYED_STATES:
            raise LocalProtocolError(f"cannot rekey in state {self._state.value}")
        self._transport.send_kexinit()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called (None: no deadline)."""
        if self._state not in _KEYED_STATES:
            return None
        return self._transport.get_timer()

    def handle_timer(self, now: float) -> None:
        """Tell the core the time; starts a rekey once ``rekey_seconds`` have passed."""
        self._check_usable()
        if self._state in _KEYED_STATES:
            self._transport.handle_timer(now)

    def _maybe_rekey(self) -> None:
        if self._state in _KEYED_STATES and self._transport.rekey_due():
            self._transport.send_kexinit()


_DISPATCH: dict[Handler, Callable[[Connection, int, bytes], None]] = {
    Handler.TRANSPORT: Connection._on_transport,
    Handler.KEX: Connection._on_kex,
    Handler.EXT_INFO: Connection._on_ext_info,
    Handler.SERVICE: Connection._on_service,
    Handler.USERAUTH: Connection._on_userauth,
    Handler.CONNECTION: Connection._on_connection,
    Handler.DROP: Connection._on_drop,
}

_SEND: dict[type, Callable[[Connection, ev.Event], None]] = {
    ev.Disconnect: Connection._send_disconnect,
    ev.Debug: Connection._send_debug,
    **{
        cls: Connection._send_userauth
        for cls in (
            ev.UserauthRequest,
            ev.UserauthInfoResponse,
            ev.UserauthSuccess,
            ev.UserauthFailure,
            ev.UserauthPKOk,
            ev.UserauthInfoRequest,
            ev.UserauthBanner,
        )
    },
    **{
        cls: Connection._send_connection
        for cls in (
            ev.GlobalRequest,
            ev.GlobalRequestReply,
            ev.ChannelOpen,
            ev.ChannelOpenConfirmation,
            ev.ChannelOpenFailure,
            ev.ChannelData,
            ev.ChannelEOF,
            ev.ChannelClose,
            ev.ChannelRequest,
            ev.ChannelRequestReply,
        )
    },
}  # type: ignore[dict-item]
