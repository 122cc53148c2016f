"""The typed events a :class:`~trioport.sshproto.connection.Connection` emits and accepts.

The same classes travel both ways, as in h11: ``conn.next_event()`` returns them and
``conn.send(event)`` takes them. Names that match a wire message are that message;
past-tense names (:class:`KexComplete`, :class:`ChannelWindowAdjusted`,
:class:`ConnectionLost`) are facts the core derived and are never sent.

Channels are named by *our* channel id (``channel``): the core maps it to the
peer's id on the wire, so a driver never sees the peer's numbering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AgentForwarding",
    "CancelTcpipForward",
    "ChannelClose",
    "ChannelData",
    "ChannelEOF",
    "ChannelOpen",
    "ChannelOpenConfirmation",
    "ChannelOpenFailure",
    "ChannelRequest",
    "ChannelRequestReply",
    "ChannelWindowAdjusted",
    "ConnectionLost",
    "Debug",
    "Disconnect",
    "Env",
    "Eow",
    "Event",
    "Exec",
    "ExitSignal",
    "ExitStatus",
    "ExtInfoReceived",
    "GlobalRequest",
    "GlobalRequestReply",
    "KeepAlive",
    "KexComplete",
    "NoMoreSessions",
    "PtyRequest",
    "Shell",
    "Signal",
    "Subsystem",
    "TcpipForward",
    "UnknownGlobalRequest",
    "UnknownRequest",
    "UserauthBanner",
    "UserauthFailure",
    "UserauthInfoRequest",
    "UserauthInfoResponse",
    "UserauthPKOk",
    "UserauthRequest",
    "UserauthSuccess",
    "VersionReceived",
    "WindowChange",
]

_EVENT = {"frozen": True, "slots": True, "kw_only": True}


class Event:
    """Base class of every event. Don't subclass the events themselves."""

    __slots__ = ()


# --- transport ------------------------------------------------------------------------


@dataclass(**_EVENT)
class VersionReceived(Event):
    """The peer's identification line (``SSH-2.0-...``), without CR LF."""

    version: str


@dataclass(**_EVENT)
class KexComplete(Event):
    """A key exchange finished and new keys are in use in both directions.

    ``first`` is true for the initial exchange; ``algorithms`` maps each
    negotiated category ("kex", "host_key", "cipher_c2s", "cipher_s2c", "mac_c2s",
    "mac_s2c", "compression_c2s", ...) to its name; ``host_key`` is the server's
    host key (or certificate) blob; ``strict`` says whether strict kex is on.
    """

    session_id: bytes
    algorithms: dict[str, str]
    host_key: bytes
    first: bool
    strict: bool


@dataclass(**_EVENT)
class ExtInfoReceived(Event):
    """SSH_MSG_EXT_INFO (RFC 8308): extension name to raw value."""

    extensions: dict[str, bytes]


@dataclass(**_EVENT)
class Debug(Event):
    """SSH_MSG_DEBUG from the peer (RFC 4253 §11.3)."""

    message: str
    always_display: bool = False


@dataclass(**_EVENT)
class Disconnect(Event):
    """SSH_MSG_DISCONNECT: received from the peer, or sent to end the connection."""

    code: int
    description: str = ""


@dataclass(**_EVENT)
class ConnectionLost(Event):
    """The byte stream ended (``receive_data(b"")``) without a DISCONNECT."""


# --- user authentication (RFC 4252, RFC 4256) -----------------------------------------


@dataclass(**_EVENT)
class UserauthRequest(Event):
    """An authentication attempt.

    On a server this is the peer's attempt, already checked by the core: for
    ``publickey`` with ``signature_ok=None`` it is a query ("would you accept this
    key?"), answered with :class:`UserauthPKOk` or :class:`UserauthFailure`; with
    ``signature_ok=True`` the signature verified against ``public_key`` (the key
    that signed, never only the one queried), answered with :class:`UserauthSuccess`
    or :class:`UserauthFailure`. Bad signatures never reach the driver.

    On a client the driver sends it: ``method="none"``, ``"password"``,
    ``"keyboard-interactive"``, or ``"publickey"`` with ``public_key`` (a key or
    certificate blob), ``algorithm`` and ``signature`` (``None`` to only query). The
    bytes to sign come from ``Connection.publickey_data_to_sign()``, so a key held
    by an agent can sign them.
    """

    username: str
    method: str
    service: str = "ssh-connection"
    public_key: bytes | None = None
    algorithm: str | None = None
    signature: bytes | None = None
    signature_ok: bool | None = None
    password: str | None = None
    submethods: str = ""


@dataclass(**_EVENT)
class UserauthSuccess(Event):
    """SSH_MSG_USERAUTH_SUCCESS: the server accepts; the connection protocol starts."""


@dataclass(**_EVENT)
class UserauthFailure(Event):
    """SSH_MSG_USERAUTH_FAILURE: methods that may continue, and partial success."""

    methods: tuple[str, ...]
    partial: bool = False


@dataclass(**_EVENT)
class UserauthPKOk(Event):
    """SSH_MSG_USERAUTH_PK_OK: the server would accept a signature by this key."""

    algorithm: str
    public_key: bytes


@dataclass(**_EVENT)
class UserauthBanner(Event):
    """SSH_MSG_USERAUTH_BANNER: text the server wants shown before authentication."""

    message: str
    language: str = ""


@dataclass(**_EVENT)
class UserauthInfoRequest(Event):
    """Keyboard-interactive prompts (RFC 4256 §3.2): (prompt, echo) pairs."""

    name: str
    instruction: str
    prompts: tuple[tuple[str, bool], ...]


@dataclass(**_EVENT)
class UserauthInfoResponse(Event):
    """Keyboard-interactive answers (RFC 4256 §3.4), in prompt order."""

    responses: tuple[str, ...]


# --- global requests (RFC 4254 §4, §7.1; OpenSSH PROTOCOL) -----------------------------


@dataclass(**_EVENT)
class TcpipForward(Event):
    """``tcpip-forward``: listen on ``address:port`` (port 0: the server picks)."""

    address: str
    port: int


@dataclass(**_EVENT)
class CancelTcpipForward(Event):
    """``cancel-tcpip-forward``."""

    address: str
    port: int


@dataclass(**_EVENT)
class KeepAlive(Event):
    """``keepalive@openssh.com``: only asks for a reply (any reply is liveness)."""


@dataclass(**_EVENT)
class NoMoreSessions(Event):
    """``no-more-sessions@openssh.com``: refuse further session channels."""


@dataclass(**_EVENT)
class UnknownGlobalRequest(Event):
    """A global request this core does not model; ``data`` is its raw payload."""

    name: str
    data: bytes = b""


@dataclass(**_EVENT)
class GlobalRequest(Event):
    """SSH_MSG_GLOBAL_REQUEST. Answer with :class:`GlobalRequestReply` if ``want_reply``."""

    request: TcpipForward | CancelTcpipForward | KeepAlive | NoMoreSessions | UnknownGlobalRequest
    want_reply: bool = False


@dataclass(**_EVENT)
class GlobalRequestReply(Event):
    """REQUEST_SUCCESS / REQUEST_FAILURE. ``port`` answers a ``tcpip-forward`` to port 0."""

    ok: bool
    port: int | None = None
    data: bytes = b""


# --- channels (RFC 4254 §5, §6) --------------------------------------------------------


@dataclass(**_EVENT)
class ChannelOpen(Event):
    """SSH_MSG_CHANNEL_OPEN, for ``kind`` "session", "direct-tcpip",
    "forwarded-tcpip", "auth-agent@openssh.com" or another type.

    For the tcpip kinds, ``host``/``port`` is where to connect (direct-tcpip) or the
    address that was connected (forwarded-tcpip), and ``originator_address`` /
    ``originator_port`` is the peer that started it. A sender takes ``channel`` from
    ``Connection.new_channel_id()``; a receiver gets the id the core allocated.
    Answer with :class:`ChannelOpenConfirmation` or :class:`ChannelOpenFailure`.
    """

    channel: int
    kind: str
    host: str = ""
    port: int = 0
    originator_address: str = ""
    originator_port: int = 0
    extra: bytes = b""


@dataclass(**_EVENT)
class ChannelOpenConfirmation(Event):
    """The channel is open; from now on data may flow within the windows."""

    channel: int


@dataclass(**_EVENT)
class ChannelOpenFailure(Event):
    """The open was refused, with an SSH_OPEN_* reason code; the id is free again."""

    channel: int
    reason: int
    description: str = ""


@dataclass(**_EVENT)
class ChannelData(Event):
    """Channel bytes; ``stream=1`` is SSH_EXTENDED_DATA_STDERR, ``None`` ordinary data."""

    channel: int
    data: bytes
    stream: int | None = None


@dataclass(**_EVENT)
class ChannelEOF(Event):
    """No more data will be sent in this direction (RFC 4254 §5.3)."""

    channel: int


@dataclass(**_EVENT)
class ChannelClose(Event):
    """The channel is closing; it is gone once both sides sent CLOSE."""

    channel: int


@dataclass(**_EVENT)
class ChannelWindowAdjusted(Event):
    """The peer opened our send window on ``channel``: blocked senders may go on."""

    channel: int


# Channel request payloads (RFC 4254 §6).


@dataclass(**_EVENT)
class PtyRequest(Event):
    """``pty-req``: terminal type, size and encoded modes (RFC 4254 §8) as opcode->value."""

    term: str
    width_chars: int
    height_rows: int
    width_pixels: int = 0
    height_pixels: int = 0
    modes: dict[int, int] = field(default_factory=dict)


@dataclass(**_EVENT)
class Shell(Event):
    """``shell``: start the user's login shell."""


@dataclass(**_EVENT)
class Exec(Event):
    """``exec``: run ``command`` (bytes, as sent)."""

    command: bytes


@dataclass(**_EVENT)
class Subsystem(Event):
    """``subsystem``: start a named subsystem such as "sftp"."""

    name: str


@dataclass(**_EVENT)
class WindowChange(Event):
    """``window-change``: the terminal was resized."""

    width_chars: int
    height_rows: int
    width_pixels: int = 0
    height_pixels: int = 0


@dataclass(**_EVENT)
class Env(Event):
    """``env``: set one environment variable."""

    name: str
    value: str


@dataclass(**_EVENT)
class Signal(Event):
    """``signal``: deliver a signal, named without "SIG" ("INT", "TERM", ...)."""

    name: str


@dataclass(**_EVENT)
class ExitStatus(Event):
    """``exit-status``: the command exited with this status."""

    status: int


@dataclass(**_EVENT)
class ExitSignal(Event):
    """``exit-signal``: the command was killed by a signal."""

    name: str
    core_dumped: bool = False
    message: str = ""
    language: str = ""


@dataclass(**_EVENT)
class Eow(Event):
    """``eow@openssh.com``: end of writing (the peer's stdin closed, output continues)."""


@dataclass(**_EVENT)
class AgentForwarding(Event):
    """``auth-agent-req@openssh.com``: forward the client's agent on this session."""


@dataclass(**_EVENT)
class UnknownRequest(Event):
    """A channel request this core does not model; ``data`` is its raw payload."""

    name: str
    data: bytes = b""


ChannelRequestType = (
    PtyRequest
    | Shell
    | Exec
    | Subsystem
    | WindowChange
    | Env
    | Signal
    | ExitStatus
    | ExitSignal
    | Eow
    | AgentForwarding
    | UnknownRequest
)


@dataclass(**_EVENT)
class ChannelRequest(Event):
    """SSH_MSG_CHANNEL_REQUEST; answer with :class:`ChannelRequestReply` if ``want_reply``."""

    channel: int
    request: ChannelRequestType
    want_reply: bool = False


@dataclass(**_EVENT)
class ChannelRequestReply(Event):
    """CHANNEL_SUCCESS / CHANNEL_FAILURE, answering requests on ``channel`` in order."""

    channel: int
    ok: bool
