"""SSH message numbers and the typed messages that travel in binary packets.

Theory of operation
-------------------
Every message is a frozen dataclass whose fields are listed, in wire order, in its
``SPEC``: a tuple of field kinds (``"u32"``, ``"str"``, ``"text"`` ...) that one
generic encoder and one generic decoder walk. A message is ``bytes(msg)`` on the
way out and :func:`parse` on the way in; :func:`parse` refuses trailing bytes and
anything short, so a hostile packet can only ever produce
:class:`~trioport.errors.DecodeError`.

Message numbers 60 and 61 mean different things depending on the authentication
method in progress (RFC 4252 §7, RFC 4252 §8, RFC 4256 §3.2), so :func:`parse`
takes that method as context.

The second half of the module encodes and decodes the *payloads* carried inside
CHANNEL_OPEN, CHANNEL_REQUEST and GLOBAL_REQUEST (RFC 4254 §5-§7, OpenSSH
PROTOCOL §2), mapping them to and from the event classes in :mod:`.events`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..errors import DecodeError, LocalProtocolError
from . import events as ev
from . import wire
from .wire import Reader

__all__ = [
    "REGISTRY",
    "ChannelClose",
    "ChannelData",
    "ChannelEof",
    "ChannelExtendedData",
    "ChannelFailure",
    "ChannelOpen",
    "ChannelOpenConfirmation",
    "ChannelOpenFailure",
    "ChannelRequest",
    "ChannelSuccess",
    "ChannelWindowAdjust",
    "Debug",
    "Disconnect",
    "ExtInfo",
    "GlobalRequest",
    "Ignore",
    "KexEcdhInit",
    "KexEcdhReply",
    "KexInit",
    "Message",
    "MsgId",
    "NewKeys",
    "RequestFailure",
    "RequestSuccess",
    "ServiceAccept",
    "ServiceRequest",
    "Unimplemented",
    "UserauthBanner",
    "UserauthFailure",
    "UserauthInfoRequest",
    "UserauthInfoResponse",
    "UserauthPasswdChangeReq",
    "UserauthPkOk",
    "UserauthRequest",
    "UserauthSuccess",
    "decode_channel_open",
    "decode_channel_request",
    "decode_global_request",
    "decode_pty_modes",
    "encode_channel_open",
    "encode_channel_request",
    "encode_global_request",
    "encode_pty_modes",
    "parse",
]


class MsgId(enum.IntEnum):
    """Message numbers (RFC 4250 §4.1, RFC 8308 §2.3, RFC 5656 §7)."""

    DISCONNECT = 1
    IGNORE = 2
    UNIMPLEMENTED = 3
    DEBUG = 4
    SERVICE_REQUEST = 5
    SERVICE_ACCEPT = 6
    EXT_INFO = 7
    KEXINIT = 20
    NEWKEYS = 21
    KEX_ECDH_INIT = 30
    KEX_ECDH_REPLY = 31
    USERAUTH_REQUEST = 50
    USERAUTH_FAILURE = 51
    USERAUTH_SUCCESS = 52
    USERAUTH_BANNER = 53
    USERAUTH_60 = 60  # PK_OK, PASSWD_CHANGEREQ or INFO_REQUEST, by method
    USERAUTH_INFO_RESPONSE = 61
    GLOBAL_REQUEST = 80
    REQUEST_SUCCESS = 81
    REQUEST_FAILURE = 82
    CHANNEL_OPEN = 90
    CHANNEL_OPEN_CONFIRMATION = 91
    CHANNEL_OPEN_FAILURE = 92
    CHANNEL_WINDOW_ADJUST = 93
    CHANNEL_DATA = 94
    CHANNEL_EXTENDED_DATA = 95
    CHANNEL_EOF = 96
    CHANNEL_CLOSE = 97
    CHANNEL_REQUEST = 98
    CHANNEL_SUCCESS = 99
    CHANNEL_FAILURE = 100


#: Most keyboard-interactive prompts (or responses) we parse in one message.
#: OpenSSH's client and server both stop at 100 (``KBDINT_MAX_PROMPTS``-like limits).
MAX_PROMPTS = 100
#: Most extensions we read from one EXT_INFO (RFC 8308 sets no limit; OpenSSH
#: sends three or four).
MAX_EXTENSIONS = 64


# --- field kinds -----------------------------------------------------------------------


def _lenient(r: Reader) -> str:
    # Human-readable text from the peer (descriptions, banners): a stray invalid
    # byte must not be a reason to kill the connection.
    return r.string().decode("utf-8", "replace")


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "byte": wire.byte,
    "bool": wire.boolean,
    "u32": wire.uint32,
    "str": wire.string,
    "text": wire.string,
    "lenient": wire.string,
    "names": lambda v: wire.name_list(list(v)),
    "raw16": bytes,
    "rest": bytes,
}

_DECODERS: dict[str, Callable[[Reader], Any]] = {
    "byte": Reader.byte,
    "bool": Reader.boolean,
    "u32": Reader.uint32,
    "str": Reader.string,
    "text": Reader.text,
    "lenient": _lenient,
    "names": lambda r: tuple(r.name_list()),
    "raw16": lambda r: r.raw(16),
    "rest": Reader.rest,
}

_MSG = {"frozen": True, "slots": True}

#: Field names per message class, in order (``dataclasses.fields`` is slow per call).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    return names


_DATA_HEAD = struct.Struct(">BII")
_EXTENDED_HEAD = struct.Struct(">BIII")


class Message:
    """Base class: ``bytes(msg)`` is the payload, message number first."""

    __slots__ = ()
    ID: ClassVar[int]
    SPEC: ClassVar[tuple[str, ...]] = ()

    def __bytes__(self) -> bytes:
        parts = [wire.byte(self.ID)]
        for kind, name in zip(self.SPEC, _field_names(type(self))):
            parts.append(_ENCODERS[kind](getattr(self, name)))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Message:
        """Read the fields after the message number; the reader must then be empty."""
        values = [_DECODERS[kind](r) for kind in cls.SPEC]
        r.end()
        return cls(*values)


# --- transport (RFC 4253, RFC 8308, RFC 5656) ----------------------------------------


@dataclass(**_MSG)
class Disconnect(Message):
    ID = MsgId.DISCONNECT
    SPEC = ("u32", "lenient", "lenient")
    code: int
    description: str = ""
    language: str = ""


@dataclass(**_MSG)
class Ignore(Message):
    ID = MsgId.IGNORE
    SPEC = ("str",)
    data: bytes = b""


@dataclass(**_MSG)
class Unimplemented(Message):
    ID = MsgId.UNIMPLEMENTED
    SPEC = ("u32",)
    seqnr: int


@dataclass(**_MSG)
class Debug(Message):
    ID = MsgId.DEBUG
    SPEC = ("bool", "lenient", "lenient")
    always_display: bool
    message: str
    language: str = ""


@dataclass(**_MSG)
class ServiceRequest(Message):
    ID = MsgId.SERVICE_REQUEST
    SPEC = ("text",)
    service: str


@dataclass(**_MSG)
class ServiceAccept(Message):
    ID = MsgId.SERVICE_ACCEPT
    SPEC = ("text",)
    service: str


@dataclass(**_MSG)
class ExtInfo(Message):
    """SSH_MSG_EXT_INFO (RFC 8308 §2.3): ``uint32 count`` then name/value pairs."""

    ID = MsgId.EXT_INFO
    extensions: tuple[tuple[str, bytes], ...]

    def __bytes__(self) -> bytes:
        parts = [wire.byte(self.ID), wire.uint32(len(self.extensions))]
        for name, value in self.extensions:
            parts += [wire.string(name), wire.string(value)]
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> ExtInfo:
        count = r.uint32()
        if count > MAX_EXTENSIONS:
            raise DecodeError(f"EXT_INFO with {count} extensions")
        exts = tuple((r.text(), r.string()) for _ in range(count))
        r.end()
        return cls(exts)


@dataclass(**_MSG)
class KexInit(Message):
    """SSH_MSG_KEXINIT (RFC 4253 §7.1)."""

    ID = MsgId.KEXINIT
    SPEC = ("raw16",) + ("names",) * 10 + ("bool", "u32")
    cookie: bytes
    kex_algorithms: tuple[str, ...]
    server_host_key_algorithms: tuple[str, ...]
    ciphers_c2s: tuple[str, ...]
    ciphers_s2c: tuple[str, ...]
    macs_c2s: tuple[str, ...]
    macs_s2c: tuple[str, ...]
    compression_c2s: tuple[str, ...]
    compression_s2c: tuple[str, ...]
    languages_c2s: tuple[str, ...] = ()
    languages_s2c: tuple[str, ...] = ()
    first_kex_packet_follows: bool = False
    reserved: int = 0


@dataclass(**_MSG)
class NewKeys(Message):
    ID = MsgId.NEWKEYS


@dataclass(**_MSG)
class KexEcdhInit(Message):
    """SSH_MSG_KEX_ECDH_INIT (RFC 5656 §4): the client's ephemeral public value."""

    ID = MsgId.KEX_ECDH_INIT
    SPEC = ("str",)
    client_public: bytes


@dataclass(**_MSG)
class KexEcdhReply(Message):
    """SSH_MSG_KEX_ECDH_REPLY (RFC 5656 §4): host key, server value, signature of H."""

    ID = MsgId.KEX_ECDH_REPLY
    SPEC = ("str", "str", "str")
    host_key: bytes
    server_public: bytes
    signature: bytes


# --- user authentication (RFC 4252, RFC 4256) ------------------------------------------


@dataclass(**_MSG)
class UserauthRequest(Message):
    """SSH_MSG_USERAUTH_REQUEST; ``data`` is the method-specific tail (userauth.py)."""

    ID = MsgId.USERAUTH_REQUEST
    SPEC = ("text", "text", "text", "rest")
    username: str
    service: str
    method: str
    data: bytes = b""


@dataclass(**_MSG)
class UserauthFailure(Message):
    ID = MsgId.USERAUTH_FAILURE
    SPEC = ("names", "bool")
    methods: tuple[str, ...]
    partial: bool = False


@dataclass(**_MSG)
class UserauthSuccess(Message):
    ID = MsgId.USERAUTH_SUCCESS


@dataclass(**_MSG)
class UserauthBanner(Message):
    ID = MsgId.USERAUTH_BANNER
    SPEC = ("lenient", "lenient")
    message: str
    language: str = ""


@dataclass(**_MSG)
class UserauthPkOk(Message):
    ID = MsgId.USERAUTH_60
    SPEC = ("text", "str")
    algorithm: str
    public_key: bytes


@dataclass(**_MSG)
class UserauthPasswdChangeReq(Message):
    ID = MsgId.USERAUTH_60
    SPEC = ("lenient", "lenient")
    prompt: str
    language: str = ""


@dataclass(**_MSG)
class UserauthInfoRequest(Message):
    """SSH_MSG_USERAUTH_INFO_REQUEST (RFC 4256 §3.2)."""

    ID = MsgId.USERAUTH_60
    name: str
    instruction: str
    language: str
    prompts: tuple[tuple[str, bool], ...]

    def __bytes__(self) -> bytes:
        parts = [
            wire.byte(self.ID),
            wire.string(self.name),
            wire.string(self.instruction),
            wire.string(self.language),
            wire.uint32(len(self.prompts)),
        ]
        for prompt, echo in self.prompts:
            parts += [wire.string(prompt), wire.boolean(echo)]
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> UserauthInfoRequest:
        name, instruction, language = _lenient(r), _lenient(r), _lenient(r)
        count = r.uint32()
        if count > MAX_PROMPTS:
            raise DecodeError(f"keyboard-interactive request with {count} prompts")
        prompts = tuple((_lenient(r), r.boolean()) for _ in range(count))
        r.end()
        return cls(name, instruction, language, prompts)


@dataclass(**_MSG)
class UserauthInfoResponse(Message):
    """SSH_MSG_USERAUTH_INFO_RESPONSE (RFC 4256 §3.4)."""

    ID = MsgId.USERAUTH_INFO_RESPONSE
    responses: tuple[str, ...]

    def __bytes__(self) -> bytes:
        parts = [wire.byte(self.ID), wire.uint32(len(self.responses))]
        parts += [wire.string(resp) for resp in self.responses]
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> UserauthInfoResponse:
        count = r.uint32()
        if count > MAX_PROMPTS:
            raise DecodeError(f"keyboard-interactive response with {count} answers")
        responses = tuple(r.text() for _ in range(count))
        r.end()
        return cls(responses)


# --- connection protocol (RFC 4254) -----------------------------------------------------


@dataclass(**_MSG)
class GlobalRequest(Message):
    ID = MsgId.GLOBAL_REQUEST
    SPEC = ("text", "bool", "rest")
    name: str
    want_reply: bool
    data: bytes = b""


@dataclass(**_MSG)
class RequestSuccess(Message):
    ID = MsgId.REQUEST_SUCCESS
    SPEC = ("rest",)
    data: bytes = b""


@dataclass(**_MSG)
class RequestFailure(Message):
    ID = MsgId.REQUEST_FAILURE


@dataclass(**_MSG)
class ChannelOpen(Message):
    ID = MsgId.CHANNEL_OPEN
    SPEC = ("text", "u32", "u32", "u32", "rest")
    kind: str
    sender: int
    window: int
    max_packet: int
    data: bytes = b""


@dataclass(**_MSG)
class ChannelOpenConfirmation(Message):
    ID = MsgId.CHANNEL_OPEN_CONFIRMATION
    SPEC = ("u32", "u32", "u32", "u32", "rest")
    recipient: int
    sender: int
    window: int
    max_packet: int
    data: bytes = b""


@dataclass(**_MSG)
class ChannelOpenFailure(Message):
    ID = MsgId.CHANNEL_OPEN_FAILURE
    SPEC = ("u32", "u32", "lenient", "lenient")
    recipient: int
    reason: int
    description: str = ""
    language: str = ""


@dataclass(**_MSG)
class ChannelWindowAdjust(Message):
    ID = MsgId.CHANNEL_WINDOW_ADJUST
    SPEC = ("u32", "u32")
    recipient: int
    amount: int


@dataclass(**_MSG)
class ChannelData(Message):
    ID = MsgId.CHANNEL_DATA
    SPEC = ("u32", "str")
    recipient: int
    data: bytes

    def __bytes__(self) -> bytes:
        return channel_data_head(self.recipient, len(self.data)) + self.data

    @classmethod
    def decode(cls, r: Reader) -> Message:
        return cls(r.uint32(), r.rest_string())


@dataclass(**_MSG)
class ChannelExtendedData(Message):
    ID = MsgId.CHANNEL_EXTENDED_DATA
    SPEC = ("u32", "u32", "str")
    recipient: int
    code: int
    data: bytes

    def __bytes__(self) -> bytes:
        return extended_data_head(self.recipient, self.code, len(self.data)) + self.data

    @classmethod
    def decode(cls, r: Reader) -> Message:
        return cls(r.uint32(), r.uint32(), r.rest_string())


def channel_data_head(recipient: int, size: int) -> bytes:
    """CHANNEL_DATA up to its data: the bulk path sends the data from its own buffer."""
    return _DATA_HEAD.pack(MsgId.CHANNEL_DATA, recipient, size)


def extended_data_head(recipient: int, code: int, size: int) -> bytes:
    """CHANNEL_EXTENDED_DATA up to its data (see :func:`channel_data_head`)."""
    return _EXTENDED_HEAD.pack(MsgId.CHANNEL_EXTENDED_DATA, recipient, code, size)


@dataclass(**_MSG)
class ChannelEof(Message):
    ID = MsgId.CHANNEL_EOF
    SPEC = ("u32",)
    recipient: int


@dataclass(**_MSG)
class ChannelClose(Message):
    ID = MsgId.CHANNEL_CLOSE
    SPEC = ("u32",)
    recipient: int


@dataclass(**_MSG)
class ChannelRequest(Message):
    ID = MsgId.CHANNEL_REQUEST
    SPEC = ("u32", "text", "bool", "rest")
    recipient: int
    name: str
    want_reply: bool
    data: bytes = b""


@dataclass(**_MSG)
class ChannelSuccess(Message):
    ID = MsgId.CHANNEL_SUCCESS
    SPEC = ("u32",)
    recipient: int


@dataclass(**_MSG)
class ChannelFailure(Message):
    ID = MsgId.CHANNEL_FAILURE
    SPEC = ("u32",)
    recipient: int


#: Message number -> class, for every number whose meaning does not depend on context.
REGISTRY: dict[int, type[Message]] = {
    cls.ID: cls
    for cls in (
        Disconnect,
        Ignore,
        Unimplemented,
        Debug,
        ServiceRequest,
        ServiceAccept,
        ExtInfo,
        KexInit,
        NewKeys,
        KexEcdhInit,
        KexEcdhReply,
        UserauthRequest,
        UserauthFailure,
        UserauthSuccess,
        UserauthBanner,
        UserauthInfoResponse,
        GlobalRequest,
        RequestSuccess,
        RequestFailure,
        ChannelOpen,
        ChannelOpenConfirmation,
        ChannelOpenFailure,
        ChannelWindowAdjust,
        ChannelData,
        ChannelExtendedData,
        ChannelEof,
        ChannelClose,
        ChannelRequest,
        ChannelSuccess,
        ChannelFailure,
    )
}

#: What message 60 means, by the authentication method in progress.
_MSG_60: dict[str, type[Message]] = {
    "publickey": UserauthPkOk,
    "password": UserauthPasswdChangeReq,
    "keyboard-interactive": UserauthInfoRequest,
}


def parse(payload: bytes, *, auth_method: str | None = None) -> Message:
    """Decode one packet payload into its message.

    Args:
        payload: the packet payload, message number first.
        auth_method: the client's authentication method in progress, which decides
            what message 60 is (RFC 4252 §7, §8; RFC 4256 §3.2).

    Raises:
        DecodeError: unknown or context-less number, or malformed fields.
    """
    if not payload:
        raise DecodeError("empty packet payload")
    number = payload[0]
    cls = REGISTRY.get(number)
    if cls is None and number == MsgId.USERAUTH_60 and auth_method is not None:
        cls = _MSG_60.get(auth_method)
    if cls is None:
        raise DecodeError(f"cannot decode message number {number} here")
    return cls.decode(Reader(payload, 1))


# --- channel open payloads (RFC 4254 §6.1, §7.2; OpenSSH PROTOCOL.agent) --------------

_TCPIP_KINDS = ("direct-tcpip", "forwarded-tcpip")
_EMPTY_KINDS = ("session", "auth-agent@openssh.com")


def encode_channel_open(event: ev.ChannelOpen) -> bytes:
    """The type-specific tail of CHANNEL_OPEN for ``event.kind``."""
    if event.kind in _TCPIP_KINDS:
        return (
            wire.string(event.host)
            + wire.uint32(event.port)
            + wire.string(event.originator_address)
            + wire.uint32(event.originator_port)
        )
    if event.kind == "x11":
        return wire.string(event.originator_address) + wire.uint32(event.originator_port)
    return event.extra if event.kind not in _EMPTY_KINDS else b""


def decode_channel_open(channel: int, kind: str, data: bytes) -> ev.ChannelOpen:
    """Build the :class:`~.events.ChannelOpen` event for an incoming open.

    Raises:
        DecodeError: a known kind with malformed or trailing fields.
    """
    r = Reader(data)
    if kind in _TCPIP_KINDS:
        out = ev.ChannelOpen(
            channel=channel,
            kind=kind,
            host=r.text(),
            port=r.uint32(),
            originator_address=r.text(),
            originator_port=r.uint32(),
        )
    elif kind == "x11":
        out = ev.ChannelOpen(
            channel=channel, kind=kind, originator_address=r.text(), originator_port=r.uint32()
        )
    elif kind in _EMPTY_KINDS:
        out = ev.ChannelOpen(channel=channel, kind=kind)
    else:
        return ev.ChannelOpen(channel=channel, kind=kind, extra=r.rest())
    r.end()
    return out


# --- pty modes (RFC 4254 §8) -------------------------------------------------------------

TTY_OP_END = 0
#: Opcodes 160-255 "are not yet defined, and cause parsing to stop" (RFC 4254 §8).
_TTY_OP_LAST_WITH_ARG = 159


def encode_pty_modes(modes: dict[int, int]) -> bytes:
    """Encode terminal modes: ``byte opcode || uint32 value`` each, then TTY_OP_END."""
    out = []
    for opcode, value in sorted(modes.items()):
        if not 1 <= opcode <= _TTY_OP_LAST_WITH_ARG:
            raise LocalProtocolError(f"terminal mode opcode {opcode} is not 1..159")
        out.append(wire.byte(opcode) + wire.uint32(value))
    return b"".join(out) + wire.byte(TTY_OP_END)


def decode_pty_modes(data: bytes) -> dict[int, int]:
    """Decode terminal modes; stops at TTY_OP_END or at an opcode >= 160."""
    r = Reader(data)
    modes: dict[int, int] = {}
    while r.remaining:
        opcode = r.byte()
        if opcode == TTY_OP_END or opcode > _TTY_OP_LAST_WITH_ARG:
            break
        modes[opcode] = r.uint32()
    return modes


# --- channel requests (RFC 4254 §6, OpenSSH PROTOCOL §2.1, PROTOCOL.agent) -------------


def _env_text(r: Reader) -> str:
    # Environment values are bytes to the OS; keep undecodable ones round-trippable.
    return r.string().decode("utf-8", "surrogateescape")


def _env_bytes(value: str) -> bytes:
    return wire.string(value.encode("utf-8", "surrogateescape"))


_REQUEST_DECODERS: dict[str, Callable[[Reader], ev.ChannelRequestType]] = {
    "pty-req": lambda r: ev.PtyRequest(
        term=r.text(),
        width_chars=r.uint32(),
        height_rows=r.uint32(),
        width_pixels=r.uint32(),
        height_pixels=r.uint32(),
        modes=decode_pty_modes(r.string()),
    ),
    "shell": lambda r: ev.Shell(),
    "exec": lambda r: ev.Exec(command=r.string()),
    "subsystem": lambda r: ev.Subsystem(name=r.text()),
    "window-change": lambda r: ev.WindowChange(
        width_chars=r.uint32(),
        height_rows=r.uint32(),
        width_pixels=r.uint32(),
        height_pixels=r.uint32(),
    ),
    "env": lambda r: ev.Env(name=_env_text(r), value=_env_text(r)),
    "signal": lambda r: ev.Signal(name=r.text()),
    "exit-status": lambda r: ev.ExitStatus(status=r.uint32()),
    "exit-signal": lambda r: ev.ExitSignal(
        name=r.text(), core_dumped=r.boolean(), message=_lenient(r), language=_lenient(r)
    ),
    "eow@openssh.com": lambda r: ev.Eow(),
    "auth-agent-req@openssh.com": lambda r: ev.AgentForwarding(),
}


def _encode_request(req: ev.ChannelRequestType) -> tuple[str, bytes]:
    match req:
        case ev.PtyRequest():
            return "pty-req", (
                wire.string(req.term)
                + wire.uint32(req.width_chars)
                + wire.uint32(req.height_rows)
                + wire.uint32(req.width_pixels)
                + wire.uint32(req.height_pixels)
                + wire.string(encode_pty_modes(req.modes))
            )
        case ev.Shell():
            return "shell", b""
        case ev.Exec():
            return "exec", wire.string(req.command)
        case ev.Subsystem():
            return "subsystem", wire.string(req.name)
        case ev.WindowChange():
            return "window-change", (
                wire.uint32(req.width_chars)
                + wire.uint32(req.height_rows)
                + wire.uint32(req.width_pixels)
                + wire.uint32(req.height_pixels)
            )
        case ev.Env():
            return "env", _env_bytes(req.name) + _env_bytes(req.value)
        case ev.Signal():
            return "signal", wire.string(req.name)
        case ev.ExitStatus():
            return "exit-status", wire.uint32(req.status)
        case ev.ExitSignal():
            return "exit-signal", (
                wire.string(req.name)
                + wire.boolean(req.core_dumped)
                + wire.string(req.message)
                + wire.string(req.language)
            )
        case ev.Eow():
            return "eow@openssh.com", b""
        case ev.AgentForwarding():
            return "auth-agent-req@openssh.com", b""
        case ev.UnknownRequest():
            return req.name, req.data
    raise LocalProtocolError(f"not a channel request: {type(req).__name__}")


def encode_channel_request(req: ev.ChannelRequestType) -> tuple[str, bytes]:
    """The request name and type-specific data for a channel request event."""
    return _encode_request(req)


def decode_channel_request(name: str, data: bytes) -> ev.ChannelRequestType:
    """The event for an incoming channel request; unknown names become UnknownRequest.

    Raises:
        DecodeError: a known request with malformed or trailing fields.
    """
    decoder = _REQUEST_DECODERS.get(name)
    if decoder is None:
        return ev.UnknownRequest(name=name, data=data)
    r = Reader(data)
    req = decoder(r)
    r.end()
    return req


# --- global requests (RFC 4254 §4, §7.1; OpenSSH PROTOCOL §2.2) --------------------------

GlobalRequestType = (
    ev.TcpipForward
    | ev.CancelTcpipForward
    | ev.KeepAlive
    | ev.NoMoreSessions
    | ev.UnknownGlobalRequest
)


def encode_global_request(req: GlobalRequestType) -> tuple[str, bytes]:
    """The request name and data for a global request event."""
    match req:
        case ev.TcpipForward():
            return "tcpip-forward", wire.string(req.address) + wire.uint32(req.port)
        case ev.CancelTcpipForward():
            return "cancel-tcpip-forward", wire.string(req.address) + wire.uint32(req.port)
        case ev.KeepAlive():
            return "keepalive@openssh.com", b""
        case ev.NoMoreSessions():
            return "no-more-sessions@openssh.com", b""
        case ev.UnknownGlobalRequest():
            return req.name, req.data
    raise LocalProtocolError(f"not a global request: {type(req).__name__}")


_GLOBAL_DECODERS: dict[str, Callable[[Reader], GlobalRequestType]] = {
    "tcpip-forward": lambda r: ev.TcpipForward(address=r.text(), port=r.uint32()),
    "cancel-tcpip-forward": lambda r: ev.CancelTcpipForward(address=r.text(), port=r.uint32()),
    "keepalive@openssh.com": lambda r: ev.KeepAlive(),
    "no-more-sessions@openssh.com": lambda r: ev.NoMoreSessions(),
}


def decode_global_request(name: str, data: bytes) -> GlobalRequestType:
    """The event for an incoming global request; unknown names become UnknownGlobalRequest.

    Raises:
        DecodeError: a known request with malformed or trailing fields.
    """
    decoder = _GLOBAL_DECODERS.get(name)
    if decoder is None:
        return ev.UnknownGlobalRequest(name=name, data=data)
    r = Reader(data)
    req = decoder(r)
    r.end()
    return req
