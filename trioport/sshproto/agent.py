"""The ssh-agent protocol (draft-miller-ssh-agent-04, OpenSSH PROTOCOL.agent), sans-IO.

Theory of operation
-------------------
An agent connection is a byte stream of *frames*: ``uint32 length || payload``,
and a payload is ``byte type || fields`` (§3). The client sends one request and
reads exactly one response. This module has three layers and no I/O:

1. **Codecs.** One frozen dataclass per message. :func:`encode_message` turns any
   of them into a payload, :func:`decode_request` and :func:`decode_response` turn
   payloads back. Decoders raise only :class:`~trioport.errors.DecodeError`; an
   unknown *request* type decodes to :class:`UnknownRequest` so an agent can answer
   FAILURE and keep the connection, as OpenSSH does.
2. **Framing.** :class:`AgentFramer` buffers bytes and yields payloads; a length
   over :data:`MAX_MESSAGE` (256 KiB, OpenSSH's ``AGENT_MAX_LEN``) or of zero is a
   :class:`~trioport.errors.DecodeError` and the connection should end.
3. **State.** :class:`Keyring` holds keys, certificates, lifetimes and the lock;
   one :class:`AgentState` per client connection (sharing a keyring) turns a request
   into a response with :meth:`AgentState.handle`. Time is the ``now`` argument. A
   key added with the *confirm* constraint makes :meth:`~AgentState.handle` return
   :class:`ConfirmationRequired`; the driver asks the user and calls
   :meth:`~AgentState.complete_confirmation`.

A *forwarded* agent (``AgentState(forwarded=True)``, the far end of an
``auth-agent@openssh.com`` channel) only lists and signs: add, remove, lock,
PKCS#11 and extensions are refused (OpenSSH CVE-2023-38408 is the lesson).
:func:`forwarded_request_allowed` applies the same rule to a raw payload when the
driver relays to another agent instead.

What we refuse on purpose: smartcard/PKCS#11 requests (20, 21, 26), XMSS
``max-signatures``, destination constraints (``restrict-destination-v00``) and any
unknown constraint (a constraint we cannot enforce must not be silently dropped),
and SHA-1 ``ssh-rsa`` signatures unless :attr:`Keyring.allow_sha1` is set.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import DecodeError, KeyFormatError, LocalProtocolError
from .certs import Certificate
from .keyfiles import decode_private_key, encode_private_key
from .keys import PrivateKey, PublicKey, parse_public_key
from .wire import Reader, boolean, byte, string, uint32

__all__ = [
    "MAX_BOUND_SESSIONS",
    "MAX_KEYS",
    "MAX_MESSAGE",
    "SESSION_BIND",
    "SIGN_RSA_SHA2_256",
    "SIGN_RSA_SHA2_512",
    "AddIdentity",
    "AddSmartcardKey",
    "AgentFramer",
    "AgentKey",
    "AgentState",
    "Confirm",
    "ConfirmationRequired",
    "ConstraintExtension",
    "Extension",
    "ExtensionFailure",
    "ExtensionResponse",
    "Failure",
    "IdentitiesAnswer",
    "Identity",
    "Keyring",
    "Lifetime",
    "Lock",
    "MaxSignatures",
    "MessageType",
    "RemoveAllIdentities",
    "RemoveIdentity",
    "RemoveSmartcardKey",
    "RequestIdentities",
    "SessionBind",
    "SignRequest",
    "SignResponse",
    "Success",
    "UnknownRequest",
    "Unlock",
    "decode_request",
    "decode_response",
    "encode_message",
    "forwarded_request_allowed",
    "frame",
]

#: Largest payload either side accepts (OpenSSH ``AGENT_MAX_LEN``: 256 KiB).
MAX_MESSAGE = 256 * 1024
#: Most session bindings one connection may record (OpenSSH ``AGENT_MAX_SESSION_IDS``).
MAX_BOUND_SESSIONS = 16
#: Longest session identifier accepted in a binding (OpenSSH's bound: 128 bytes).
MAX_SESSION_ID = 128
#: Most identities a keyring holds.
MAX_KEYS = 1024
#: SIGN_REQUEST flags (§4.5.1): which RSA signature algorithm the client wants.
SIGN_RSA_SHA2_256 = 0x02
SIGN_RSA_SHA2_512 = 0x04
#: The OpenSSH extension binding a connection to an SSH session (PROTOCOL.agent §1).
SESSION_BIND = "session-bind@openssh.com"


class MessageType(enum.IntEnum):
    """Message numbers (draft-miller-ssh-agent-04 §5.1)."""

    FAILURE = 5
    SUCCESS = 6
    REQUEST_IDENTITIES = 11
    IDENTITIES_ANSWER = 12
    SIGN_REQUEST = 13
    SIGN_RESPONSE = 14
    ADD_IDENTITY = 17
    REMOVE_IDENTITY = 18
    REMOVE_ALL_IDENTITIES = 19
    ADD_SMARTCARD_KEY = 20
    REMOVE_SMARTCARD_KEY = 21
    LOCK = 22
    UNLOCK = 23
    ADD_ID_CONSTRAINED = 25
    ADD_SMARTCARD_KEY_CONSTRAINED = 26
    EXTENSION = 27
    EXTENSION_FAILURE = 28
    EXTENSION_RESPONSE = 29


class _Constraint(enum.IntEnum):
    """Key constraint identifiers (§5.2; PROTOCOL.agent §3)."""

    LIFETIME = 1
    CONFIRM = 2
    MAXSIGN = 3
    EXTENSION = 255


# --- constraints ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Forget the key ``seconds`` after it is added (§4.2.6.1)."""

    seconds: int


@dataclass(frozen=True, slots=True)
class Confirm:
    """Ask the user before each signature (§4.2.6.2)."""


@dataclass(frozen=True, slots=True)
class MaxSignatures:
    """XMSS signature budget (PROTOCOL.agent §3); trioport refuses it."""

    count: int


@dataclass(frozen=True, slots=True)
class ConstraintExtension:
    """A named constraint (§4.2.6.3); ``data`` is its raw encoding after the name."""

    name: str
    data: bytes = b""


Constraint = Lifetime | Confirm | MaxSignatures | ConstraintExtension

#: Constraint extensions whose layout we know, so we can step over them.
_STRING_CONSTRAINTS = {"restrict-destination-v00@openssh.com", "sk-provider@openssh.com"}


def _encode_constraints(constraints: tuple[Constraint, ...]) -> bytes:
    out = []
    for c in constraints:
        if isinstance(c, Lifetime):
            out.append(byte(_Constraint.LIFETIME) + uint32(c.seconds))
        elif isinstance(c, Confirm):
            out.append(byte(_Constraint.CONFIRM))
        elif isinstance(c, MaxSignatures):
            out.append(byte(_Constraint.MAXSIGN) + uint32(c.count))
        else:
            out.append(byte(_Constraint.EXTENSION) + string(c.name) + c.data)
    return b"".join(out)


def _decode_constraints(reader: Reader) -> tuple[Constraint, ...]:
    out: list[Constraint] = []
    while reader.remaining:
        kind = reader.byte()
        if kind == _Constraint.LIFETIME:
            out.append(Lifetime(reader.uint32()))
        elif kind == _Constraint.CONFIRM:
            out.append(Confirm())
        elif kind == _Constraint.MAXSIGN:
            out.append(MaxSignatures(reader.uint32()))
        elif kind == _Constraint.EXTENSION:
            name = reader.text()
            if name in _STRING_CONSTRAINTS:
                data = string(reader.string())
            elif name == "associated-certs-v00@openssh.com":
                data = boolean(reader.boolean()) + string(reader.string())
            else:
                # Unknown layout: it runs to the end of the message.
                data = reader.rest()
            out.append(ConstraintExtension(name, data))
        else:
            raise DecodeError(f"unknown key constraint {kind}")
    return tuple(out)


# --- messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestIdentities:
    """List the agent's keys (§4.4)."""


@dataclass(frozen=True, slots=True)
class SignRequest:
    """Sign ``data`` with the key whose blob is ``key_blob`` (§4.5)."""

    key_blob: bytes
    data: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class AddIdentity:
    """Add a private key, optionally with its certificate and constraints (§4.2).

    Encoded as ``ADD_IDENTITY`` without constraints, ``ADD_ID_CONSTRAINED`` with.
    Two of these are equal when they encode to the same bytes.
    """

    key: PrivateKey
    comment: str = ""
    certificate: Certificate | None = None
    constraints: tuple[Constraint, ...] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AddIdentity):
            return NotImplemented
        return hmac.compare_digest(encode_message(self), encode_message(other))

    def __hash__(self) -> int:
        return hash((self.key.public, self.comment, self.certificate, self.constraints))

    def __repr__(self) -> str:  # never print private material
        return f"AddIdentity({self.key!r}, comment={self.comment!r}, certificate={self.certificate!r}, constraints={self.constraints!r})"  # noqa: E501


@dataclass(frozen=True, slots=True)
class RemoveIdentity:
    """Remove the key whose blob is ``key_blob`` (§4.3)."""

    key_blob: bytes


@dataclass(frozen=True, slots=True)
class RemoveAllIdentities:
    """Remove every key (§4.3)."""


@dataclass(frozen=True, slots=True)
class AddSmartcardKey:
    """Load keys from a PKCS#11 provider (§4.2.5); trioport refuses it."""

    reader_id: str
    pin: str = field(repr=False)
    constraints: tuple[Constraint, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveSmartcardKey:
    """Unload a PKCS#11 provider (§4.3); trioport refuses it."""

    reader_id: str
    pin: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Lock:
    """Lock the agent with a passphrase (§4.6)."""

    passphrase: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Unlock:
    """Unlock the agent (§4.6)."""

    passphrase: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Extension:
    """A vendor extension request (§4.7); ``data`` follows the name."""

    name: str
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionBind:
    """``session-bind@openssh.com`` (PROTOCOL.agent §1), an :class:`Extension`."""

    host_key: bytes
    session_id: bytes
    signature: bytes
    is_forwarding: bool


@dataclass(frozen=True, slots=True)
class UnknownRequest:
    """A request type we do not know; answered with FAILURE."""

    type: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Failure:
    """SSH_AGENT_FAILURE (§4.1)."""


@dataclass(frozen=True, slots=True)
class Success:
    """SSH_AGENT_SUCCESS (§4.1); after an extension it may carry ``data``."""

    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Identity:
    """One entry of :class:`IdentitiesAnswer`: a key or certificate blob and comment."""

    key_blob: bytes
    comment: str = ""


@dataclass(frozen=True, slots=True)
class IdentitiesAnswer:
    """The answer to :class:`RequestIdentities` (§4.4)."""

    identities: tuple[Identity, ...] = ()


@dataclass(frozen=True, slots=True)
class SignResponse:
    """The answer to :class:`SignRequest`: an SSH signature blob (§4.5)."""

    signature: bytes


@dataclass(frozen=True, slots=True)
class ExtensionFailure:
    """SSH_AGENT_EXTENSION_FAILURE (§4.7)."""


@dataclass(frozen=True, slots=True)
class ExtensionResponse:
    """SSH_AGENT_EXTENSION_RESPONSE: an extension's reply, ``name`` then ``data``."""

    name: str
    data: bytes = b""


Request = (
    RequestIdentities
    | SignRequest
    | AddIdentity
    | RemoveIdentity
    | RemoveAllIdentities
    | AddSmartcardKey
    | RemoveSmartcardKey
    | Lock
    | Unlock
    | Extension
    | SessionBind
    | UnknownRequest
)
Response = (
    Failure | Success | IdentitiesAnswer | SignResponse | ExtensionFailure | ExtensionResponse
)


def _text(value: str) -> bytes:
    # Comments may be any bytes in OpenSSH; surrogateescape round-trips them.
    return string(value.encode("utf-8", "surrogateescape"))


def _read_text(reader: Reader) -> str:
    return reader.string().decode("utf-8", "surrogateescape")


def encode_message(message: Request | Response) -> bytes:
    """The payload (``byte type || fields``) of a message, without the length frame.

    Raises:
        LocalProtocolError: the payload would exceed :data:`MAX_MESSAGE`.
    """
    payload = _encode(message)
    if len(payload) > MAX_MESSAGE:
        raise LocalProtocolError(f"agent message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
    return payload


def _encode(m: Request | Response) -> bytes:
    t = MessageType
    if isinstance(m, RequestIdentities):
        return byte(t.REQUEST_IDENTITIES)
    if isinstance(m, SignRequest):
        return byte(t.SIGN_REQUEST) + string(m.key_blob) + string(m.data) + uint32(m.flags)
    if isinstance(m, AddIdentity):
        body = encode_private_key(m.key, m.certificate) + _text(m.comment)
        if m.constraints:
            return byte(t.ADD_ID_CONSTRAINED) + body + _encode_constraints(m.constraints)
        return byte(t.ADD_IDENTITY) + body
    if isinstance(m, RemoveIdentity):
        return byte(t.REMOVE_IDENTITY) + string(m.key_blob)
    if isinstance(m, RemoveAllIdentities):
        return byte(t.REMOVE_ALL_IDENTITIES)
    if isinstance(m, AddSmartcardKey):
        body = string(m.reader_id) + string(m.pin)
        if m.constraints:
            return byte(t.ADD_SMARTCARD_KEY_CONSTRAINED) + body + _encode_constraints(m.constraints)
        return byte(t.ADD_SMARTCARD_KEY) + body
    if isinstance(m, RemoveSmartcardKey):
        return byte(t.REMOVE_SMARTCARD_KEY) + string(m.reader_id) + string(m.pin)
    if isinstance(m, Lock):
        return byte(t.LOCK) + string(m.passphrase)
    if isinstance(m, Unlock):
        return byte(t.UNLOCK) + string(m.passphrase)
    if isinstance(m, Extension):
        return byte(t.EXTENSION) + string(m.name) + m.data
    if isinstance(m, SessionBind):
        data = string(m.host_key) + string(m.session_id) + string(m.signature)
        return byte(t.EXTENSION) + string(SESSION_BIND) + data + boolean(m.is_forwarding)
    if isinstance(m, UnknownRequest):
        return byte(m.type) + m.body
    if isinstance(m, Failure):
        return byte(t.FAILURE)
    if isinstance(m, Success):
        return byte(t.SUCCESS) + m.data
    if isinstance(m, IdentitiesAnswer):
        entries = b"".join(string(i.key_blob) + _text(i.comment) for i in m.identities)
        return byte(t.IDENTITIES_ANSWER) + uint32(len(m.identities)) + entries
    if isinstance(m, SignResponse):
        return byte(t.SIGN_RESPONSE) + string(m.signature)
    if isinstance(m, ExtensionFailure):
        return byte(t.EXTENSION_FAILURE)
    if isinstance(m, ExtensionResponse):
        return byte(t.EXTENSION_RESPONSE) + string(m.name) + m.data
    raise LocalProtocolError(f"not an agent message: {type(m).__name__}")


def _decode_add(reader: Reader, constrained: bool) -> AddIdentity:
    try:
        key, certificate = decode_private_key(reader)
    except KeyFormatError as exc:  # defensive: the codec speaks DecodeError
        raise DecodeError(str(exc)) from None
    comment = _read_text(reader)
    constraints = _decode_constraints(reader) if constrained else ()
    if constrained and not constraints:
        raise DecodeError("ADD_ID_CONSTRAINED without constraints")
    return AddIdentity(key, comment, certificate, constraints)


def decode_request(payload: bytes) -> Request:
    """Decode a request payload (what a client sends an agent).

    Raises:
        DecodeError: an empty, truncated, malformed or over-long message, or
            trailing bytes. An unknown type is not an error: it decodes to
            :class:`UnknownRequest`.
    """
    if not payload:
        raise DecodeError("empty agent message")
    if len(payload) > MAX_MESSAGE:
        raise DecodeError(f"agent message longer than {MAX_MESSAGE} bytes")
    reader = Reader(payload, 1)
    kind = payload[0]
    t = MessageType
    message: Request
    if kind == t.REQUEST_IDENTITIES:
        message = RequestIdentities()
    elif kind == t.SIGN_REQUEST:
        message = SignRequest(reader.string(), reader.string(), reader.uint32())
    elif kind in (t.ADD_IDENTITY, t.ADD_ID_CONSTRAINED):
        message = _decode_add(reader, kind == t.ADD_ID_CONSTRAINED)
    elif kind == t.REMOVE_IDENTITY:
        message = RemoveIdentity(reader.string())
    elif kind == t.REMOVE_ALL_IDENTITIES:
        message = RemoveAllIdentities()
    elif kind in (t.ADD_SMARTCARD_KEY, t.ADD_SMARTCARD_KEY_CONSTRAINED):
        reader_id, pin = reader.text(), reader.text()
        constraints = _decode_constraints(reader) if kind == t.ADD_SMARTCARD_KEY_CONSTRAINED else ()
        message = AddSmartcardKey(reader_id, pin, constraints)
    elif kind == t.REMOVE_SMARTCARD_KEY:
        message = RemoveSmartcardKey(reader.text(), reader.text())
    elif kind == t.LOCK:
        message = Lock(reader.string())
    elif kind == t.UNLOCK:
        message = Unlock(reader.string())
    elif kind == t.EXTENSION:
        name = reader.text()
        if name == SESSION_BIND:
            host_key, session_id, signature = reader.string(), reader.string(), reader.string()
            message = SessionBind(host_key, session_id, signature, reader.boolean())
        else:
            message = Extension(name, reader.rest())
    else:
        return UnknownRequest(kind, reader.rest())
    reader.end()
    return message


def decode_response(payload: bytes) -> Response:
    """Decode a response payload (what an agent answers).

    Raises:
        DecodeError: an empty, unknown, truncated or malformed message.
    """
    if not payload:
        raise DecodeError("empty agent message")
    if len(payload) > MAX_MESSAGE:
        raise DecodeError(f"agent message longer than {MAX_MESSAGE} bytes")
    reader = Reader(payload, 1)
    kind = payload[0]
    t = MessageType
    message: Response
    if kind == t.FAILURE:
        message = Failure()
    elif kind == t.SUCCESS:
        message = Success(reader.rest())
    elif kind == t.IDENTITIES_ANSWER:
        count = reader.uint32()
        if count > reader.remaining // 8:  # each entry is at least two empty strings
            raise DecodeError(f"identities answer claims {count} keys")
        message = IdentitiesAnswer(
            tuple(Identity(reader.string(), _read_text(reader)) for _ in range(count))
        )
    elif kind == t.SIGN_RESPONSE:
        message = SignResponse(reader.string())
    elif kind == t.EXTENSION_FAILURE:
        message = ExtensionFailure()
    elif kind == t.EXTENSION_RESPONSE:
        message = ExtensionResponse(reader.text(), reader.rest())
    else:
        raise DecodeError(f"unknown agent response type {kind}")
    reader.end()
    return message


# --- framing ---------------------------------------------------------------------------


def frame(message: Request | Response | bytes) -> bytes:
    """``uint32 length || payload``, ready for the socket or channel.

    Raises:
        LocalProtocolError: the payload exceeds :data:`MAX_MESSAGE`.
    """
    payload = message if isinstance(message, bytes) else encode_message(message)
    if not payload or len(payload) > MAX_MESSAGE:
        raise LocalProtocolError(f"agent payload must be 1..{MAX_MESSAGE} bytes")
    return uint32(len(payload)) + payload


class AgentFramer:
    """Splits an agent byte stream into payloads. Buffers at most one frame.

    ``receive_data(data)`` then iterate :meth:`payloads` (or call
    :meth:`next_payload` until it returns ``None``).
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the stream."""
        self._buffer += data

    def next_payload(self) -> bytes | None:
        """The next complete payload, or ``None`` if more bytes are needed.

        Raises:
            DecodeError: a frame of length zero or over :data:`MAX_MESSAGE`; the
                connection must be closed.
        """
        if len(self._buffer) < 4:
            return None
        length = int.from_bytes(self._buffer[:4], "big")
        if length == 0 or length > MAX_MESSAGE:
            raise DecodeError(f"agent frame of {length} bytes (limit {MAX_MESSAGE})")
        if len(self._buffer) < 4 + length:
            return None
        payload = bytes(self._buffer[4 : 4 + length])
        del self._buffer[: 4 + length]
        return payload

    def payloads(self) -> Iterator[bytes]:
        """Every complete payload buffered so far."""
        while (payload := self.next_payload()) is not None:
            yield payload

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a frame."""
        return len(self._buffer)


def forwarded_request_allowed(payload: bytes) -> bool:
    """Whether a request may pass through a forwarded agent: list and sign only."""
    return bool(payload) and payload[0] in (
        MessageType.REQUEST_IDENTITIES,
        MessageType.SIGN_REQUEST,
    )


# --- the keyring and per-connection state ------------------------------------------


@dataclass(slots=True, eq=False)
class AgentKey:
    """A key held by the agent."""

    key: PrivateKey
    comment: str = ""
    certificate: Certificate | None = None
    #: When the key is forgotten (``now`` units), or ``None``.
    expires_at: float | None = None
    #: Each signature needs the user's confirmation.
    confirm: bool = False

    @property
    def public(self) -> PublicKey:
        """What the agent lists: the certificate if there is one, else the public key."""
        return self.certificate if self.certificate is not None else self.key.public


class Keyring:
    """The keys an agent holds, shared by all its connections.

    Args:
        default_lifetime: seconds a key lives when added without a lifetime
            (``ssh-agent -t``); ``None`` keeps keys until removed.
        allow_sha1: sign ``ssh-rsa`` (SHA-1) requests, which are refused by default.
    """

    def __init__(self, *, default_lifetime: float | None = None, allow_sha1: bool = False) -> None:
        self.keys: list[AgentKey] = []
        self.default_lifetime = default_lifetime
        self.allow_sha1 = allow_sha1
        self._lock_digest: bytes | None = None
        #: Failed UNLOCK attempts since the last lock; a driver may delay replies.
        self.unlock_failures = 0

    @property
    def locked(self) -> bool:
        """Whether the agent is locked."""
        return self._lock_digest is not None

    def expire(self, now: float) -> None:
        """Forget every key whose lifetime has run out."""
        self.keys = [k for k in self.keys if k.expires_at is None or k.expires_at > now]

    def next_expiry(self) -> float | None:
        """When the next key expires, for the driver's timer."""
        times = [k.expires_at for k in self.keys if k.expires_at is not None]
        return min(times) if times else None

    def find(self, blob: bytes) -> AgentKey | None:
        """The key listed with ``blob``."""
        for entry in self.keys:
            if entry.public.blob == blob:
                return entry
        return None

    def add(self, entry: AgentKey) -> None:
        """Add a key, replacing one with the same blob (as OpenSSH does).

        Raises:
            LocalProtocolError: the keyring is full.
        """
        self.keys = [k for k in self.keys if k.public.blob != entry.public.blob]
        if len(self.keys) >= MAX_KEYS:
            raise LocalProtocolError(f"the agent already holds {MAX_KEYS} keys")
        self.keys.append(entry)

    def lock(self, passphrase: bytes) -> bool:
        """Lock with ``passphrase``; ``False`` if already locked."""
        if self.locked:
            return False
        self._lock_digest = hashlib.sha512(passphrase).digest()
        self.unlock_failures = 0
        return True

    def unlock(self, passphrase: bytes) -> bool:
        """Unlock if ``passphrase`` matches (compared in constant time)."""
        if self._lock_digest is None:
            return False
        if hmac.compare_digest(hashlib.sha512(passphrase).digest(), self._lock_digest):
            self._lock_digest = None
            self.unlock_failures = 0
            return True
        self.unlock_failures += 1
        return False


@dataclass(frozen=True, slots=True)
class ConfirmationRequired:
    """A sign request waiting for the user (the key has the confirm constraint).

    Pass it back to :meth:`AgentState.complete_confirmation` with the user's answer.
    """

    entry: AgentKey
    request: SignRequest
    algorithm: str


@dataclass(frozen=True, slots=True)
class _Binding:
    host_key: PublicKey
    session_id: bytes
    is_forwarding: bool


class AgentState:
    """One agent connection: turns each request into its response.

    Args:
        keyring: shared with the agent's other connections (a new one by default).
        forwarded: the connection arrived over agent forwarding: only list and sign.
    """

    def __init__(self, keyring: Keyring | None = None, *, forwarded: bool = False) -> None:
        self.keyring = keyring if keyring is not None else Keyring()
        self.forwarded = forwarded
        self.bindings: list[_Binding] = []

    def handle(self, request: Request | bytes, *, now: float) -> Response | ConfirmationRequired:
        """Process one request.

        A payload that does not decode (say, an RSA key under 2048 bits in an ADD
        request) is answered with FAILURE, as OpenSSH's agent does; only framing
        errors (:class:`AgentFramer`) end a connection.

        Args:
            request: a decoded request, or its payload (decoded here).
            now: the current time, for lifetimes.

        Returns:
            The response to send, or :class:`ConfirmationRequired`.
        """
        if isinstance(request, bytes):
            try:
                request = decode_request(request)
            except DecodeError:
                return Failure()
        ring = self.keyring
        ring.expire(now)
        if self.forwarded and not isinstance(request, RequestIdentities | SignRequest):
            return Failure()
        if isinstance(request, RequestIdentities):
            if ring.locked:
                return IdentitiesAnswer()
            return IdentitiesAnswer(tuple(Identity(k.public.blob, k.comment) for k in ring.keys))
        if isinstance(request, SignRequest):
            return self._sign(request)
        if isinstance(request, Lock):
            return Success() if ring.lock(request.passphrase) else Failure()
        if isinstance(request, Unlock):
            return Success() if ring.unlock(request.passphrase) else Failure()
        if ring.locked:
            return Failure()
        if isinstance(request, AddIdentity):
            return self._add(request, now)
        if isinstance(request, RemoveIdentity):
            entry = ring.find(request.key_blob)
            if entry is None:
                return Failure()
            ring.keys.remove(entry)
            return Success()
        if isinstance(request, RemoveAllIdentities):
            ring.keys.clear()
            return Success()
        if isinstance(request, SessionBind):
            return self._bind(request)
        # Smartcards, unknown extensions and unknown requests.
        return Failure()

    def complete_confirmation(
        self, pending: ConfirmationRequired, approved: bool, *, now: float
    ) -> Response:
        """Finish a sign request the user answered.

        The key must still be held (not expired or removed meanwhile) and the agent
        unlocked.
        """
        self.keyring.expire(now)
        if not approved or self.keyring.locked or pending.entry not in self.keyring.keys:
            return Failure()
        return SignResponse(pending.entry.key.sign(pending.request.data, pending.algorithm))

    def next_expiry(self) -> float | None:
        """When the keyring next changes on its own (for the driver's timer)."""
        return self.keyring.next_expiry()

    def _sign(self, request: SignRequest) -> Response | ConfirmationRequired:
        if self.keyring.locked:
            return Failure()
        entry = self.keyring.find(request.key_blob)
        if entry is None:
            return Failure()
        algorithms = entry.key.public.signature_algorithms()
        if entry.key.public.key_type == "ssh-rsa":
            # §4.5.1: the flags pick the hash; none means SHA-1 "ssh-rsa".
            if request.flags & SIGN_RSA_SHA2_512:
                algorithm = "rsa-sha2-512"
            elif request.flags & SIGN_RSA_SHA2_256:
                algorithm = "rsa-sha2-256"
            elif self.keyring.allow_sha1:
                algorithm = "ssh-rsa"
            else:
                return Failure()
        else:
            algorithm = algorithms[0]
        if entry.confirm:
            return ConfirmationRequired(entry, request, algorithm)
        return SignResponse(entry.key.sign(request.data, algorithm))

    def _add(self, request: AddIdentity, now: float) -> Response:
        expires_at = (
            now + self.keyring.default_lifetime
            if self.keyring.default_lifetime is not None
            else None
        )
        confirm = False
        for constraint in request.constraints:
            if isinstance(constraint, Lifetime):
                expires_at = now + constraint.seconds
            elif isinstance(constraint, Confirm):
                confirm = True
            else:
                return Failure()  # a constraint we cannot enforce
        entry = AgentKey(request.key, request.comment, request.certificate, expires_at, confirm)
        try:
            self.keyring.add(entry)
        except LocalProtocolError:
            return Failure()
        return Success()

    def _bind(self, request: SessionBind) -> Response:
        # PROTOCOL.agent §1: verify the host key's signature over the session id,
        # refuse a duplicate id for another key and any rebinding of a connection
        # already bound for authentication.
        if not request.session_id or len(request.session_id) > MAX_SESSION_ID:
            return Failure()
        try:
            host_key = parse_public_key(request.host_key)
        except DecodeError:
            return Failure()
        if not host_key.verify(request.signature, request.session_id):
            return Failure()
        for bound in self.bindings:
            if not bound.is_forwarding:
                return Failure()
            if bound.session_id == request.session_id:
                return Success() if bound.host_key == host_key else Failure()
        if len(self.bindings) >= MAX_BOUND_SESSIONS:
            return Failure()
        self.bindings.append(_Binding(host_key, request.session_id, request.is_forwarding))
        return Success()
