"""User authentication (RFC 4252, RFC 4256): the server's and the client's side.

Theory of operation
-------------------
**Server.** :class:`ServerAuth` reads each USERAUTH_REQUEST and decides what it can
decide without I/O, the way OpenSSH's ``auth2.c`` does:

- the user name and service are fixed by the first request; a change ends the
  connection (OpenSSH: "change of username or service not allowed");
- ``none`` is answered with the list of methods; the first ``none`` of a connection
  is free, every other failure counts;
- a method not in ``auth_methods`` fails at once, without an event;
- ``publickey``: the algorithm must be accepted and belong to the key's type, and a
  signature is verified *here*, over the RFC 4252 §7 data, with the key that signed
  it. Only then does the driver see :class:`~.events.UserauthRequest` with
  ``signature_ok=True``; a query (no signature) arrives with ``signature_ok=None``.
  Bad signatures never reach the driver (x/crypto CVE-2024-45337: decide on the key
  that signed, never on the one queried);
- ``password`` and ``keyboard-interactive`` are handed to the driver as they are.

The driver answers every request it was shown, in order, with UserauthSuccess,
UserauthFailure, UserauthPKOk (queries only) or UserauthInfoRequest
(keyboard-interactive). The ``max_auth_tries``-th failure is not sent: the
connection ends with NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication
failures", as OpenSSH does.

**Client.** :class:`ClientAuth` encodes the driver's requests and decodes the
answers; message 60 means PK_OK, PASSWD_CHANGEREQ or INFO_REQUEST depending on the
method last tried. Requests go out right behind our SERVICE_REQUEST, without waiting
for SERVICE_ACCEPT: the server handles messages in order, and a round trip fewer is
a faster login (one made before SERVICE_REQUEST is held until it is sent).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..errors import DecodeError, DisconnectReason, LocalProtocolError, RemoteProtocolError
from . import events as ev
from . import messages as m
from . import wire
from .config import ConnectionConfig
from .keys import CERT_SUFFIX, HOST_KEY_ALGORITHMS, parse_public_key
from .state import ServerAuthState
from .wire import Reader

__all__ = ["SERVICE_CONNECTION", "SERVICE_USERAUTH", "ClientAuth", "ServerAuth", "data_to_sign"]

SERVICE_USERAUTH = "ssh-userauth"
SERVICE_CONNECTION = "ssh-connection"


def data_to_sign(
    session_id: bytes, username: str, algorithm: str, public_key: bytes, service: str
) -> bytes:
    """The bytes a publickey signature covers (RFC 4252 §7)."""
    return b"".join(
        (
            wire.string(session_id),
            wire.byte(m.MsgId.USERAUTH_REQUEST),
            wire.string(username),
            wire.string(service),
            wire.string("publickey"),
            wire.boolean(True),
            wire.string(algorithm),
            wire.string(public_key),
        )
    )


def _signature_algorithm(algorithm: str) -> str:
    # A certificate algorithm signs with its plain counterpart (PROTOCOL.certkeys).
    return algorithm.removesuffix(CERT_SUFFIX)


class ServerAuth:
    """The server side of RFC 4252.

    Args:
        config: the connection's configuration.
        send: queues one message for the peer.
        session_id: returns the session id (set once the first exchange is done).
    """

    def __init__(
        self,
        config: ConnectionConfig,
        send: Callable[[m.Message], None],
        session_id: Callable[[], bytes | None],
    ) -> None:
        self.config = config
        self._send = send
        self._session_id = session_id
        self.state = ServerAuthState.IDLE
        self.failures = 0
        self.attempts = 0
        self.username: str | None = None
        self._service: str | None = None
        # Answers go out in request order (RFC 4252 §5 lets a client send several
        # requests): ``None`` marks an answer the driver still owes.
        self._replies: deque[m.Message | None] = deque()
        self._owed: deque[ev.UserauthRequest] = deque()
        self._prompts = 0

    # --- from the peer ---------------------------------------------------------------

    def on_request(self, msg: m.UserauthRequest) -> ev.UserauthRequest | None:
        """Handle USERAUTH_REQUEST; returns the event for the driver, if any.

        Raises:
            RemoteProtocolError: user or service changed, an unknown service, a
                malformed request, or too many failures.
        """
        if self.username is None:
            self.username, self._service = msg.username, msg.service
        elif (msg.username, msg.service) != (self.username, self._service):
            raise RemoteProtocolError("change of username or service is not allowed")
        if msg.service != SERVICE_CONNECTION:
            raise RemoteProtocolError(
                f"unknown service {msg.service[:64]!r}", DisconnectReason.SERVICE_NOT_AVAILABLE
            )
        self.attempts += 1
        if self.state is ServerAuthState.INFO:
            # RFC 4252 §5: a new request abandons the keyboard-interactive exchange.
            self._replies.popleft()
            self._done_with_request()
            self._flush()
        if msg.method == "none":
            # OpenSSH: a first "none" only asks for the list of methods.
            self.fail(count=self.attempts > 1)
            return None
        if msg.method not in self.config.auth_methods:
            self.fail()
            return None
        parse = _PARSERS.get(msg.method)
        assert parse is not None  # config allows only methods we can parse
        event = parse(self, msg)
        if event is None:
            self.fail()
            return None
        self._owed.append(event)
        self._replies.append(None)
        self.state = ServerAuthState.DECIDING
        return event

    def _parse_publickey(self, msg: m.UserauthRequest) -> ev.UserauthRequest | None:
        r = Reader(msg.data)
        has_signature = r.boolean()
        algorithm = r.text()
        blob = r.string()
        signature = r.string() if has_signature else None
        r.end()
        if algorithm not in self.config.pubkey_algorithms:
            return None
        try:
            key = parse_public_key(blob)
        except DecodeError:
            return None
        if key.key_type != HOST_KEY_ALGORITHMS.get(algorithm):
            return None
        if signature is not None:
            session_id = self._session_id()
            assert session_id is not None
            signed = data_to_sign(session_id, msg.username, algorithm, blob, msg.service)
            if not key.verify(signature, signed, allowed=(_signature_algorithm(algorithm),)):
                return None
        return ev.UserauthRequest(
            username=msg.username,
            method="publickey",
            service=msg.service,
            public_key=blob,
            algorithm=algorithm,
            signature=signature,
            signature_ok=True if signature is not None else None,
        )

    def _parse_password(self, msg: m.UserauthRequest) -> ev.UserauthRequest | None:
        r = Reader(msg.data)
        change = r.boolean()
        password = r.text()
        if change:
            r.text()  # RFC 4252 §8: the new password; changing is not supported
        r.end()
        if change:
            return None
        return ev.UserauthRequest(
            username=msg.username, method="password", service=msg.service, password=password
        )

    def _parse_keyboard_interactive(self, msg: m.UserauthRequest) -> ev.UserauthRequest | None:
        r = Reader(msg.data)
        r.string()  # RFC 4256 §3.1: language tag, deprecated
        submethods = r.text()
        r.end()
        return ev.UserauthRequest(
            username=msg.username,
            method="keyboard-interactive",
            service=msg.service,
            submethods=submethods,
        )

    def on_info_response(self, msg: m.UserauthInfoResponse) -> ev.UserauthInfoResponse:
        """Handle INFO_RESPONSE; legal only while prompts are outstanding."""
        if self.state is not ServerAuthState.INFO:
            raise RemoteProtocolError("USERAUTH_INFO_RESPONSE without a request")
        if len(msg.responses) != self._prompts:
            raise RemoteProtocolError("keyboard-interactive answers do not match the prompts")
        self.state = ServerAuthState.DECIDING
        return ev.UserauthInfoResponse(responses=msg.responses)

    # --- from the driver -----------------------------------------------------------

    def _pending(self, what: str) -> ev.UserauthRequest:
        if self.state is not ServerAuthState.DECIDING or not self._owed:
            raise LocalProtocolError(f"{what} does not answer any authentication request")
        return self._owed[0]

    def send_pk_ok(self, event: ev.UserauthPKOk) -> None:
        """Answer a publickey query: this key would be accepted."""
        request = self._pending("UserauthPKOk")
        if request.signature_ok is not None or (event.algorithm, event.public_key) != (
            request.algorithm,
            request.public_key,
        ):
            raise LocalProtocolError("UserauthPKOk must answer a query for the same key")
        self._answer(m.UserauthPkOk(event.algorithm, event.public_key))

    def send_success(self) -> str:
        """Accept the pending request; returns the authenticated user name."""
        request = self._pending("UserauthSuccess")
        if request.method == "publickey" and request.signature_ok is not True:
            raise LocalProtocolError("a publickey query cannot succeed; answer UserauthPKOk")
        self._answer(m.UserauthSuccess())
        # Anything asked after the request that succeeded is moot (RFC 4252 §5.1).
        self._owed.clear()
        self._replies.clear()
        self.state = ServerAuthState.DONE
        assert self.username is not None
        return self.username

    def send_failure(self, event: ev.UserauthFailure) -> None:
        """Refuse the pending request (``partial`` failures do not count)."""
        self._pending("UserauthFailure")
        self._count(not event.partial)
        self._answer(m.UserauthFailure(tuple(event.methods), event.partial))

    def send_info_request(self, event: ev.UserauthInfoRequest) -> None:
        """Send keyboard-interactive prompts for the pending request (RFC 4256 §3.2)."""
        request = self._pending("UserauthInfoRequest")
        if request.method != "keyboard-interactive":
            raise LocalProtocolError("UserauthInfoRequest answers keyboard-interactive only")
        if len(event.prompts) > m.MAX_PROMPTS:
            raise LocalProtocolError(f"at most {m.MAX_PROMPTS} prompts")
        # The request being prompted for is the oldest unanswered one, and every
        # answer before it has gone out, so the prompts are in order.
        self.state = ServerAuthState.INFO
        self._prompts = len(event.prompts)
        self._send(m.UserauthInfoRequest(event.name, event.instruction, "", event.prompts))

    def _answer(self, msg: m.Message) -> None:
        self._replies[self._replies.index(None)] = msg
        self._done_with_request()
        self._flush()

    def _done_with_request(self) -> None:
        self._owed.popleft()
        self.state = ServerAuthState.DECIDING if self._owed else ServerAuthState.IDLE

    def _flush(self) -> None:
        while self._replies and self._replies[0] is not None:
            msg = self._replies.popleft()
            assert msg is not None
            self._send(msg)

    def _count(self, count: bool) -> None:
        if not count:
            return
        self.failures += 1
        if self.failures >= self.config.max_auth_tries:
            # OpenSSH auth2.c: the failure that reaches MaxAuthTries is not
            # answered; the connection ends instead.
            raise RemoteProtocolError(
                "Too many authentication failures",
                DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE,
            )

    def fail(self, *, count: bool = True) -> None:
        """Refuse the current request on the core's own authority (queued in order).

        Raises:
            RemoteProtocolError: NO_MORE_AUTH_METHODS_AVAILABLE, too many failures
                (nothing was sent; the caller sends the DISCONNECT).
        """
        self._count(count)
        self._replies.append(m.UserauthFailure(tuple(self.config.auth_methods), False))
        self._flush()


_PARSERS: dict[str, Callable[[ServerAuth, m.UserauthRequest], ev.UserauthRequest | None]] = {
    "publickey": ServerAuth._parse_publickey,
    "password": ServerAuth._parse_password,
    "keyboard-interactive": ServerAuth._parse_keyboard_interactive,
}


class ClientAuth:
    """The client side of RFC 4252.

    Args:
        send: queues one message for the peer.
    """

    def __init__(self, send: Callable[[m.Message], None]) -> None:
        self._send = send
        self.requested = False  # we asked for it: requests may follow at once
        self.success = False
        self.username: str | None = None
        self.method: str | None = None  # last method tried: decides what 60 means
        self._held: list[m.UserauthRequest] = []
        self._info_requested = False

    def send_request(self, event: ev.UserauthRequest) -> None:
        """Encode a request; held until our SERVICE_REQUEST if that is not sent yet."""
        if self.success:
            raise LocalProtocolError("already authenticated")
        method = event.method
        if method == "none":
            data = b""
        elif method == "publickey":
            if event.public_key is None or not event.algorithm:
                raise LocalProtocolError("publickey needs public_key and algorithm")
            data = (
                wire.boolean(event.signature is not None)
                + wire.string(event.algorithm)
                + wire.string(event.public_key)
            )
            if event.signature is not None:
                data += wire.string(event.signature)
        elif method == "password":
            if event.password is None:
                raise LocalProtocolError("password needs a password")
            data = wire.boolean(False) + wire.string(event.password)
        elif method == "keyboard-interactive":
            data = wire.string("") + wire.string(event.submethods)
        else:
            raise LocalProtocolError(f"unsupported authentication method {method!r}")
        msg = m.UserauthRequest(event.username, event.service, method, data)
        self.username = event.username
        self._info_requested = False
        if self.requested:
            self.method = method
            self._send(msg)
        else:
            self._held.append(msg)

    def on_service_requested(self) -> None:
        """Our SERVICE_REQUEST is queued: requests may follow it (sends the held ones)."""
        self.requested = True
        held, self._held = self._held, []
        for msg in held:
            self.method = msg.method
            self._send(msg)

    def send_info_response(self, event: ev.UserauthInfoResponse) -> None:
        """Answer keyboard-interactive prompts (RFC 4256 §3.4)."""
        if not self._info_requested:
            raise LocalProtocolError("no keyboard-interactive prompts to answer")
        self._info_requested = False
        self._send(m.UserauthInfoResponse(tuple(event.responses)))

    def on_message(self, payload: bytes) -> ev.Event | None:
        """Decode the server's answer (51, 52, 53, 60) into an event.

        Raises:
            RemoteProtocolError: an answer to a request we never sent, or a
                malformed one.
        """
        msg = m.parse(payload, auth_method=self.method)
        if isinstance(msg, m.UserauthBanner):
            return ev.UserauthBanner(message=msg.message, language=msg.language)
        if self.method is None:
            raise RemoteProtocolError(f"message {payload[0]} answers no request of ours")
        match msg:
            case m.UserauthFailure():
                return ev.UserauthFailure(methods=msg.methods, partial=msg.partial)
            case m.UserauthSuccess():
                self.success = True
                return ev.UserauthSuccess()
            case m.UserauthPkOk():
                return ev.UserauthPKOk(algorithm=msg.algorithm, public_key=msg.public_key)
            case m.UserauthInfoRequest():
                self._info_requested = True
                return ev.UserauthInfoRequest(
                    name=msg.name, instruction=msg.instruction, prompts=msg.prompts
                )
        # PASSWD_CHANGEREQ: we never offer a new password, so treat it as a refusal.
        return ev.UserauthFailure(methods=("password",), partial=False)
