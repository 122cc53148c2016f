"""Every state enum of the SSH core and the tables that say what is legal in each.

Theory of operation
-------------------
Rule 1 (after h11): what decides whether a message may arrive, or an event may be
sent, lives here as data. The rest of the core looks things up; it never grows an
``if state == ... and role == ...`` chain. A missing table entry is the error.

The transport walks ``VERSION -> KEX -> SERVICE -> USERAUTH -> CONNECTED`` and ends
in ``CLOSED`` (a DISCONNECT either way, or EOF) or ``ERROR`` (a protocol violation).
A re-exchange of keys does not change it: the key exchange has its own small machine
(:class:`KexPhase`), as h11 keeps keep-alive beside its main machine.

:data:`INBOUND` says, for the role *receiving* and the transport state, which message
numbers are acceptable and which part of the core handles them. Roles matter:
USERAUTH_SUCCESS (52) from a client, or SERVICE_REQUEST (5) from a server, is not a
message the receiver has any business handling (paramiko CVE-2018-1000805, libssh
CVE-2018-10933). Connection-protocol messages (80 and up) appear only in
``CONNECTED`` (Erlang/OTP CVE-2025-32433, paramiko CVE-2018-7750).

:data:`KEX_INBOUND` narrows this while the peer is re-keying (RFC 4253 §7.1: after a
KEXINIT only transport messages until NEWKEYS), and :data:`STRICT_KEX_INBOUND` while
the *initial* exchange runs under OpenSSH's strict KEX (PROTOCOL §1.9: not even
IGNORE or DEBUG).

Channels have two states, ours and theirs (RFC 4254 §5.3: a channel is gone once
both sides sent CLOSE); :data:`OUR_CHANNEL_SEND` and :data:`THEIR_CHANNEL_RECEIVE`
map (state, action) to the next state.
"""

from __future__ import annotations

import enum

from . import events as ev
from .messages import MsgId

__all__ = [
    "INBOUND",
    "KEX_EXPECTS",
    "KEX_INBOUND",
    "OUR_CHANNEL_SEND",
    "OUTBOUND",
    "STRICT_KEX_INBOUND",
    "THEIR_CHANNEL_RECEIVE",
    "ChannelAction",
    "Handler",
    "KexPhase",
    "OurChannelState",
    "Role",
    "ServerAuthState",
    "TheirChannelState",
    "TransportState",
]


class _Enum(enum.Enum):
    """An enum hashed by identity in C: state tables are looked up on every packet,
    and ``Enum.__hash__`` is Python code. Members are singletons, so it is exact."""

    __hash__ = object.__hash__


class Role(_Enum):
    """Which end of the connection we are."""

    CLIENT = "client"
    SERVER = "server"


class TransportState(_Enum):
    """The connection's main state machine."""

    VERSION = "version"  # waiting for the peer's identification line
    KEX = "kex"  # the initial key exchange
    SERVICE = "service"  # keys in place; ssh-userauth service request/accept
    USERAUTH = "userauth"  # RFC 4252 running
    CONNECTED = "connected"  # authenticated: the connection protocol (RFC 4254)
    CLOSED = "closed"  # DISCONNECT sent or received, or EOF
    ERROR = "error"  # a protocol violation; every later call raises


class KexPhase(_Enum):
    """The key-exchange machine, initial and every re-exchange (RFC 4253 §7)."""

    IDLE = "idle"  # no exchange running
    KEXINIT = "kexinit"  # one KEXINIT sent or received, the other one missing
    AWAIT_ECDH_INIT = "await_ecdh_init"  # server: both KEXINITs, waiting for 30
    AWAIT_ECDH_REPLY = "await_ecdh_reply"  # client: sent 30, waiting for 31
    AWAIT_NEWKEYS = "await_newkeys"  # we sent NEWKEYS, waiting for the peer's


class Handler(_Enum):
    """Which part of the core handles an acceptable inbound message."""

    TRANSPORT = "transport"  # DISCONNECT, IGNORE, UNIMPLEMENTED, DEBUG
    KEX = "kex"  # KEXINIT, NEWKEYS, the method's own messages
    EXT_INFO = "ext_info"  # RFC 8308; its slot is checked by the transport
    SERVICE = "service"  # SERVICE_REQUEST / SERVICE_ACCEPT
    USERAUTH = "userauth"  # RFC 4252 / RFC 4256 messages
    CONNECTION = "connection"  # RFC 4254 messages
    DROP = "drop"  # legal but meaningless now: read and ignore


_GENERIC = {
    MsgId.DISCONNECT: Handler.TRANSPORT,
    MsgId.IGNORE: Handler.TRANSPORT,
    MsgId.UNIMPLEMENTED: Handler.TRANSPORT,
    MsgId.DEBUG: Handler.TRANSPORT,
}

# The kex messages each role may receive: a client never gets 30, a server never 31.
_KEX = {
    Role.SERVER: {
        MsgId.KEXINIT: Handler.KEX,
        MsgId.NEWKEYS: Handler.KEX,
        MsgId.KEX_ECDH_INIT: Handler.KEX,
    },
    Role.CLIENT: {
        MsgId.KEXINIT: Handler.KEX,
        MsgId.NEWKEYS: Handler.KEX,
        MsgId.KEX_ECDH_REPLY: Handler.KEX,
    },
}

_CONNECTION = {
    msg: Handler.CONNECTION
    for msg in (
        MsgId.GLOBAL_REQUEST,
        MsgId.REQUEST_SUCCESS,
        MsgId.REQUEST_FAILURE,
        MsgId.CHANNEL_OPEN,
        MsgId.CHANNEL_OPEN_CONFIRMATION,
        MsgId.CHANNEL_OPEN_FAILURE,
        MsgId.CHANNEL_WINDOW_ADJUST,
        MsgId.CHANNEL_DATA,
        MsgId.CHANNEL_EXTENDED_DATA,
        MsgId.CHANNEL_EOF,
        MsgId.CHANNEL_CLOSE,
        MsgId.CHANNEL_REQUEST,
        MsgId.CHANNEL_SUCCESS,
        MsgId.CHANNEL_FAILURE,
    )
}


def _table(role: Role, extra: dict[MsgId, Handler]) -> dict[int, Handler]:
    return {**_GENERIC, **_KEX[role], **extra}


#: (receiving role, transport state) -> {message number: handler}. A number not in
#: the table is a protocol error, except that an *unknown* number after
#: authentication is answered with UNIMPLEMENTED (RFC 4253 §11.4).
INBOUND: dict[tuple[Role, TransportState], dict[int, Handler]] = {
    # Server side.
    (Role.SERVER, TransportState.KEX): _table(Role.SERVER, {}),
    (Role.SERVER, TransportState.SERVICE): _table(
        Role.SERVER, {MsgId.SERVICE_REQUEST: Handler.SERVICE}
    ),
    (Role.SERVER, TransportState.USERAUTH): _table(
        Role.SERVER,
        {
            MsgId.USERAUTH_REQUEST: Handler.USERAUTH,
            MsgId.USERAUTH_INFO_RESPONSE: Handler.USERAUTH,
        },
    ),
    (Role.SERVER, TransportState.CONNECTED): _table(
        Role.SERVER,
        # RFC 4252 §5.1: requests after SUCCESS "SHOULD be silently ignored".
        {MsgId.USERAUTH_REQUEST: Handler.DROP, **_CONNECTION},
    ),
    # Client side.
    (Role.CLIENT, TransportState.KEX): _table(Role.CLIENT, {}),
    (Role.CLIENT, TransportState.SERVICE): _table(
        Role.CLIENT,
        {MsgId.SERVICE_ACCEPT: Handler.SERVICE, MsgId.EXT_INFO: Handler.EXT_INFO},
    ),
    (Role.CLIENT, TransportState.USERAUTH): _table(
        Role.CLIENT,
        {
            MsgId.USERAUTH_FAILURE: Handler.USERAUTH,
            MsgId.USERAUTH_SUCCESS: Handler.USERAUTH,
            MsgId.USERAUTH_BANNER: Handler.USERAUTH,
            MsgId.USERAUTH_60: Handler.USERAUTH,
            # RFC 8308 §2.4: a second EXT_INFO may come just before USERAUTH_SUCCESS.
            MsgId.EXT_INFO: Handler.EXT_INFO,
        },
    ),
    (Role.CLIENT, TransportState.CONNECTED): _table(Role.CLIENT, dict(_CONNECTION)),
}

#: While the peer is in a key exchange (its KEXINIT seen, its NEWKEYS not yet), only
#: these may arrive (RFC 4253 §7.1).
KEX_INBOUND: dict[Role, dict[int, Handler]] = {role: {**_GENERIC, **_KEX[role]} for role in Role}

#: During the initial exchange under strict KEX: the kex messages themselves and
#: DISCONNECT; IGNORE, DEBUG and UNIMPLEMENTED end the connection (PROTOCOL §1.9).
STRICT_KEX_INBOUND: dict[Role, dict[int, Handler]] = {
    role: {MsgId.DISCONNECT: Handler.TRANSPORT, **_KEX[role]} for role in Role
}

#: Which kex message each phase of the exchange waits for (beyond KEXINIT).
KEX_EXPECTS: dict[tuple[Role, KexPhase], int] = {
    (Role.SERVER, KexPhase.AWAIT_ECDH_INIT): MsgId.KEX_ECDH_INIT,
    (Role.CLIENT, KexPhase.AWAIT_ECDH_REPLY): MsgId.KEX_ECDH_REPLY,
    (Role.SERVER, KexPhase.AWAIT_NEWKEYS): MsgId.NEWKEYS,
    (Role.CLIENT, KexPhase.AWAIT_NEWKEYS): MsgId.NEWKEYS,
}


_CONNECTION_EVENTS = frozenset(
    {
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
    }
)
_ANY = frozenset({ev.Disconnect})
_KEYED = _ANY | {ev.Debug}

#: (our role, transport state) -> the event types :meth:`Connection.send` accepts.
#: A client may send its first UserauthRequest before the ssh-userauth service is
#: accepted: the core holds it until SERVICE_ACCEPT arrives.
OUTBOUND: dict[tuple[Role, TransportState], frozenset[type[ev.Event]]] = {
    (Role.SERVER, TransportState.VERSION): _ANY,
    (Role.SERVER, TransportState.KEX): _ANY,
    (Role.SERVER, TransportState.SERVICE): _KEYED,
    (Role.SERVER, TransportState.USERAUTH): _KEYED
    | {
        ev.UserauthSuccess,
        ev.UserauthFailure,
        ev.UserauthPKOk,
        ev.UserauthBanner,
        ev.UserauthInfoRequest,
    },
    (Role.SERVER, TransportState.CONNECTED): _KEYED | _CONNECTION_EVENTS,
    (Role.CLIENT, TransportState.VERSION): _ANY | {ev.UserauthRequest},
    (Role.CLIENT, TransportState.KEX): _ANY | {ev.UserauthRequest},
    (Role.CLIENT, TransportState.SERVICE): _KEYED | {ev.UserauthRequest},
    (Role.CLIENT, TransportState.USERAUTH): _KEYED | {ev.UserauthRequest, ev.UserauthInfoResponse},
    (Role.CLIENT, TransportState.CONNECTED): _KEYED | _CONNECTION_EVENTS,
}


class ServerAuthState(_Enum):
    """The server's user-authentication machine (RFC 4252 §5, RFC 4256 §3)."""

    IDLE = "idle"  # waiting for a USERAUTH_REQUEST
    DECIDING = "deciding"  # the driver owes an answer to the request it was shown
    INFO = "info"  # keyboard-interactive prompts sent, waiting for INFO_RESPONSE
    DONE = "done"  # USERAUTH_SUCCESS sent


# --- channels (RFC 4254 §5) -------------------------------------------------------------


class OurChannelState(_Enum):
    """What we have sent on a channel."""

    OPENING = "opening"  # we sent CHANNEL_OPEN, or owe an answer to theirs
    OPEN = "open"
    EOF_SENT = "eof_sent"
    CLOSE_SENT = "close_sent"


class TheirChannelState(_Enum):
    """What the peer has sent on a channel."""

    OPENING = "opening"  # no confirmation yet (theirs, or ours to their open)
    OPEN = "open"
    EOF_RECEIVED = "eof_received"
    CLOSE_RECEIVED = "close_received"


class ChannelAction(_Enum):
    """Things that happen on a channel, in either direction."""

    CONFIRM = "confirm"
    DATA = "data"
    EOF = "eof"
    CLOSE = "close"
    REQUEST = "request"
    REPLY = "reply"
    WINDOW_ADJUST = "window_adjust"


_OC = OurChannelState
_TC = TheirChannelState
_A = ChannelAction

#: (our state, what we send) -> our next state. Missing: LocalProtocolError.
OUR_CHANNEL_SEND: dict[tuple[OurChannelState, ChannelAction], OurChannelState] = {
    (_OC.OPENING, _A.CONFIRM): _OC.OPEN,
    (_OC.OPEN, _A.DATA): _OC.OPEN,
    (_OC.OPEN, _A.EOF): _OC.EOF_SENT,
    (_OC.OPEN, _A.CLOSE): _OC.CLOSE_SENT,
    (_OC.EOF_SENT, _A.CLOSE): _OC.CLOSE_SENT,
    # Requests and their replies may follow our EOF (exit-status after EOF is how
    # OpenSSH ends a session), never our CLOSE.
    (_OC.OPEN, _A.REQUEST): _OC.OPEN,
    (_OC.EOF_SENT, _A.REQUEST): _OC.EOF_SENT,
    (_OC.OPEN, _A.REPLY): _OC.OPEN,
    (_OC.EOF_SENT, _A.REPLY): _OC.EOF_SENT,
    (_OC.OPEN, _A.WINDOW_ADJUST): _OC.OPEN,
    (_OC.EOF_SENT, _A.WINDOW_ADJUST): _OC.EOF_SENT,
}

#: (their state, what they send) -> their next state. Missing: RemoteProtocolError
#: (data after EOF, a second EOF or CLOSE, anything after CLOSE ...).
THEIR_CHANNEL_RECEIVE: dict[tuple[TheirChannelState, ChannelAction], TheirChannelState] = {
    (_TC.OPENING, _A.CONFIRM): _TC.OPEN,
    (_TC.OPEN, _A.DATA): _TC.OPEN,
    (_TC.OPEN, _A.EOF): _TC.EOF_RECEIVED,
    (_TC.OPEN, _A.CLOSE): _TC.CLOSE_RECEIVED,
    (_TC.EOF_RECEIVED, _A.CLOSE): _TC.CLOSE_RECEIVED,
    (_TC.OPEN, _A.REQUEST): _TC.OPEN,
    (_TC.EOF_RECEIVED, _A.REQUEST): _TC.EOF_RECEIVED,
    (_TC.OPEN, _A.REPLY): _TC.OPEN,
    (_TC.EOF_RECEIVED, _A.REPLY): _TC.EOF_RECEIVED,
    (_TC.OPEN, _A.WINDOW_ADJUST): _TC.OPEN,
    (_TC.EOF_RECEIVED, _A.WINDOW_ADJUST): _TC.EOF_RECEIVED,
}
