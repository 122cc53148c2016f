"""The one exception tree of trioport.

Every error trioport raises on purpose is a :class:`TrioportError`. Callers branch
on the class, never on the message text. Protocol errors carry the SSH disconnect
reason code to send (RFC 4253 §11.1 / RFC 4250 §4.2.2); authentication errors
carry the message a user should see; configuration errors name the file and key.

At stream surfaces trio's own ``BrokenResourceError``, ``ClosedResourceError`` and
``BusyResourceError`` are used instead of inventing parallels.
"""

from __future__ import annotations

import enum


class DisconnectReason(enum.IntEnum):
    """SSH_DISCONNECT_* reason codes (RFC 4250 §4.2.2)."""

    HOST_NOT_ALLOWED_TO_CONNECT = 1
    PROTOCOL_ERROR = 2
    KEY_EXCHANGE_FAILED = 3
    RESERVED = 4
    MAC_ERROR = 5
    COMPRESSION_ERROR = 6
    SERVICE_NOT_AVAILABLE = 7
    PROTOCOL_VERSION_NOT_SUPPORTED = 8
    HOST_KEY_NOT_VERIFIABLE = 9
    CONNECTION_LOST = 10
    BY_APPLICATION = 11
    TOO_MANY_CONNECTIONS = 12
    AUTH_CANCELLED_BY_USER = 13
    NO_MORE_AUTH_METHODS_AVAILABLE = 14
    ILLEGAL_USER_NAME = 15


class ChannelOpenFailureReason(enum.IntEnum):
    """SSH_OPEN_* reason codes for a refused channel (RFC 4254 §5.1)."""

    ADMINISTRATIVELY_PROHIBITED = 1
    CONNECT_FAILED = 2
    UNKNOWN_CHANNEL_TYPE = 3
    RESOURCE_SHORTAGE = 4


class TrioportError(Exception):
    """The root of every error trioport raises on purpose."""


# --- SSH protocol ----------------------------------------------------------------


class ProtocolError(TrioportError):
    """The SSH protocol was broken; ``code`` is the disconnect reason to send.

    Not raised directly: use :class:`LocalProtocolError` (we, or our caller, tried
    something illegal) or :class:`RemoteProtocolError` (the peer did).
    """

    default_code: DisconnectReason = DisconnectReason.PROTOCOL_ERROR

    def __init__(self, description: str, code: DisconnectReason | int | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.code = DisconnectReason(code) if code is not None else self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, code={self.code.name})"


class LocalProtocolError(ProtocolError):
    """Our side tried something the protocol forbids in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; its connection ends with ``code``."""


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode as the SSH data type or message they claim to be."""


class KeyExchangeFailed(RemoteProtocolError):
    """No common algorithm, a bad public value, or a bad exchange-hash signature."""

    default_code = DisconnectReason.KEY_EXCHANGE_FAILED


class MACError(RemoteProtocolError):
    """A packet failed its MAC or AEAD check: corrupt or forged."""

    default_code = DisconnectReason.MAC_ERROR


class HostKeyNotVerifiable(RemoteProtocolError):
    """The server's host key or host certificate is not trusted for this host."""

    default_code = DisconnectReason.HOST_KEY_NOT_VERIFIABLE


class ProtocolVersionNotSupported(RemoteProtocolError):
    """The peer's version line is not SSH-2.0 (or 1.99)."""

    default_code = DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED


class ConnectionClosedError(TrioportError):
    """The peer sent DISCONNECT; ``code`` and ``description`` are what it said."""

    def __init__(self, description: str, code: int = DisconnectReason.BY_APPLICATION) -> None:
        super().__init__(description)
        self.description = description
        self.code = code


class ChannelOpenError(TrioportError):
    """The peer refused to open a channel (RFC 4254 §5.1)."""

    def __init__(self, reason: ChannelOpenFailureReason | int, description: str = "") -> None:
        super().__init__(description or f"channel open failed ({reason})")
        self.reason = reason
        self.description = description


# --- keys and certificates ---------------------------------------------------------


class KeyFormatError(TrioportError):
    """A key, certificate or key file that cannot be read (or written)."""


class CertificateInvalid(TrioportError):
    """A certificate that fails validation; the message says exactly why."""


# --- authentication and authorization --------------------------------------------


class AuthError(TrioportError):
    """Authentication or authorization failed; ``str(exc)`` is safe to show the user."""


class AuthenticationFailed(AuthError):
    """Wrong credentials, a locked account or an unknown user (all look the same)."""


class AccessDenied(AuthError):
    """Authenticated, but the roles do not allow this."""


# --- storage -----------------------------------------------------------------------


class StoreError(TrioportError):
    """A backend operation failed."""


class NotFound(StoreError):
    """The key or resource does not exist."""


class AlreadyExists(StoreError):
    """A create found the key already present."""


class CompareFailed(StoreError):
    """A compare-and-swap found a different value than expected."""


class BackendUnavailable(StoreError):
    """The backend cannot be reached or is locked; the operation may be retried."""


# --- configuration -----------------------------------------------------------------


class ConfigError(TrioportError):
    """A configuration file or flag is wrong; names the file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        where = ""
        if path:
            where = path + (f":{line}" if line else "")
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.key = key
        self.line = line
        self.message = message
