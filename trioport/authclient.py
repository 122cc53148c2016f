"""A client of the auth API: SSH to the auth service, then HTTP/1.1 inside a channel.

How a caller talks to the auth service (the server side is
:mod:`trioport.roles.auth.service` and :mod:`trioport.roles.auth.api`):

1. It connects to the auth service's SSH port (3025) and checks the server's host
   certificate: signed by the cluster's host CA, with the service role ``auth``
   and the cluster's name (:func:`auth_host_verifier`). A host joining for the
   first time does not know the CA yet: it may pin it (``ca_pin``, the value
   ``tctl status`` prints), or trust the first answer and check afterwards that
   the server's certificate was signed by the host CA it was given.
2. It logs in with its certificate (:class:`ClientIdentity`): a user or the
   administrator with a user certificate and their name as the SSH user; a host
   with its host certificate and its UUID as the SSH user. A host that has no
   certificate yet logs in as ``-join-`` with its own new key and may only call
   ``POST /v1/join`` (:func:`join_cluster`).
3. It opens ``session`` channels with the subsystem ``trioport-auth-api`` and sends
   HTTP/1.1 requests over them, keep-alive; :class:`AuthClient` keeps a few such
   channels and uses one per request at a time.

Errors keep their class across the wire: a 403 raises
:class:`~trioport.errors.AccessDenied`, a 404 :class:`~trioport.errors.NotFound`,
an invalid resource :class:`~trioport.errors.ConfigError`, and so on
(:data:`ERROR_KINDS`); anything else is an :class:`APIError`. A server that cannot
be reached is :class:`AuthServiceUnavailable`, whose message says where and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode

import attrs
import h11
import trio

from trioport.config import AUTH_PORT, Address, parse_addr
from trioport.errors import (
    AccessDenied,
    AlreadyExists,
    AuthenticationFailed,
    BackendUnavailable,
    CertificateInvalid,
    CompareFailed,
    ConfigError,
    ConnectionClosedError,
    HostKeyNotVerifiable,
    KeyFormatError,
    NotFound,
    ProtocolError,
    TrioportError,
)
from trioport.resources import CertAuthority, Node, Role, Session, Token, User, from_dict, to_dict
from trioport.ssh import KeySigner, SSHConnection, connect
from trioport.sshproto import ConnectionConfig
from trioport.sshproto import Role as SSHRole
from trioport.sshproto import events as ev
from trioport.sshproto.certs import (
    Certificate,
    CertType,
    ServiceRole,
    check_certificate,
)
from trioport.sshproto.keys import PrivateKey, PublicKey, parse_public_key, public_key_from_line

__all__ = [
    "ADMIN_USER",
    "DEFAULT_TIMEOUT",
    "ERROR_KINDS",
    "JOIN_USER",
    "SUBSYSTEM",
    "APIError",
    "AuthClient",
    "AuthServiceUnavailable",
    "ClientIdentity",
    "JoinResult",
    "LoginResult",
    "auth_host_verifier",
    "ca_pin",
    "connect_auth",
    "join_cluster",
]

#: The SSH subsystem the auth API is served on.
SUBSYSTEM = "trioport-auth-api"
#: The SSH user name of a host that logs in without a certificate, to join.
JOIN_USER = "-join-"
#: The key id (and SSH user name) of the built-in administrator's certificate.
ADMIN_USER = "-admin-"

#: Seconds to connect and log in, and per request unless told otherwise.
DEFAULT_TIMEOUT = 30.0
#: Largest response body accepted (a recording is fetched in pieces of 16 MiB).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

_KEY_FILE = "key"
_CERT_FILE = "key-cert.pub"
_CAS_FILE = "known_hosts"


class APIError(TrioportError):
    """The auth API refused a request for a reason without a class of its own.

    Attributes:
        status: the HTTP status (400, 413, 429, 500, ...).
        kind: the error kind in the body (``bad_request``, ``rate_limited``, ...).
    """

    def __init__(self, message: str, *, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class AuthServiceUnavailable(TrioportError):
    """The auth service cannot be reached, or the connection to it broke."""


#: Error kinds in API replies and the exception each one raises.
ERROR_KINDS: dict[str, Callable[[str], TrioportError]] = {
    "access_denied": AccessDenied,
    "authentication_failed": AuthenticationFailed,
    "not_found": NotFound,
    "already_exists": AlreadyExists,
    "compare_failed": CompareFailed,
    "unavailable": BackendUnavailable,
    "invalid_resource": ConfigError,
    "bad_key": KeyFormatError,
}


def _raise_for(status: int, body: bytes) -> None:
    try:
        error = json.loads(body)["error"]
        kind, message = str(error["kind"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "unknown", f"HTTP {status}: {body[:200]!r}"
    make = ERROR_KINDS.get(kind)
    if make is not None:
        raise make(message)
    raise APIError(message, status=status, kind=kind)


def ca_pin(key_blob: bytes) -> str:
    """The pin of a host CA (``tctl status`` shows it): ``sha256:<hex>`` of its key blob."""
    return "sha256:" + hashlib.sha256(key_blob).hexdigest()


# --- identities ------------------------------------------------------------------


def _write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (a new file renamed over the old one)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@attrs.frozen(repr=False)
class ClientIdentity:
    """A key, its certificate and the host CA to check the auth service against.

    On disk (:meth:`save` / :meth:`load`) it is a directory of three files, like
    the administrator's identity in ``DATA_DIR/admin/``: ``key`` (the private key,
    OpenSSH format, mode 0600), ``key-cert.pub`` (the certificate) and
    ``known_hosts`` (``@cert-authority`` lines of the host CA).
    """

    key: PrivateKey
    certificate: Certificate
    host_cas: tuple[PublicKey, ...]
    cluster_name: str

    def __repr__(self) -> str:
        return f"<ClientIdentity {self.username!r} of {self.cluster_name!r}>"

    @property
    def username(self) -> str:
        """The SSH user name to log in as: the user's name, or the host's UUID."""
        cert = self.certificate
        if cert.cert_type is CertType.USER:
            return cert.key_id
        return cert.key_id.removesuffix("." + self.cluster_name)

    def signer(self) -> KeySigner:
        """The key, presented with its certificate."""
        return KeySigner(self.key, certificate=self.certificate.blob)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the identity to ``directory`` (created 0700), each file replaced atomically."""
        path = os.fspath(directory)
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        comment = f"type=host&clustername={self.cluster_name}"
        lines = "".join(f"@cert-authority * {k.openssh_line(comment)}\n" for k in self.host_cas)
        _write_private(os.path.join(path, _KEY_FILE), self.key.to_openssh())
        _write_private(
            os.path.join(path, _CERT_FILE), (self.certificate.openssh_line() + "\n").encode()
        )
        _write_private(os.path.join(path, _CAS_FILE), lines.encode())

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ClientIdentity:
        """Read an identity :meth:`save` wrote.

        Raises:
            OSError: a file is missing or unreadable.
            KeyFormatError: a file does not hold what it should.
        """
        path = os.fspath(directory)
        with open(os.path.join(path, _KEY_FILE), "rb") as f:
            key = PrivateKey.from_openssh(f.read())
        with open(os.path.join(path, _CERT_FILE), encoding="ascii") as f:
            cert = public_key_from_line(f.read())
        if not isinstance(cert, Certificate) or cert.key != key.public:
            raise KeyFormatError(f"{path}/{_CERT_FILE} is not a certificate for {path}/{_KEY_FILE}")
        cas: list[PublicKey] = []
        cluster = ""
        with open(os.path.join(path, _CAS_FILE), encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 4 or fields[0] != "@cert-authority":
                    continue
                cas.append(public_key_from_line(f"{fields[2]} {fields[3]}"))
                for part in (fields[4] if len(fields) > 4 else "").split("&"):
                    if part.startswith("clustername="):
                        cluster = part.removeprefix("clustername=")
        if not cas:
            raise KeyFormatError(f"{path}/{_CAS_FILE} holds no @cert-authority line")
        return cls(key=key, certificate=cert, host_cas=tuple(cas), cluster_name=cluster)


def auth_host_verifier(
    host_cas: Sequence[PublicKey],
    cluster_name: str | None,
    *,
    pin: str | None = None,
    clock: Callable[[], float] = time.time,
    reasons: list[str] | None = None,
) -> Callable[[bytes, str], bool]:
    """A ``verify_host_key`` policy that accepts only an auth server of the cluster.

    The server must present a host certificate signed by one of ``host_cas`` (or,
    with ``pin``, by the CA whose :func:`~trioport.roles.auth.api.ca_pin` that is;
    with neither, by whatever CA signed it: trust on first use), valid now, whose
    service role is ``auth`` and whose cluster is ``cluster_name`` (when given).
    Why a key was refused is appended to ``reasons``.
    """

    def verify(blob: bytes, _algorithm: str) -> bool:
        try:
            key = parse_public_key(blob)
            if not isinstance(key, Certificate):
                raise CertificateInvalid("the server presented a plain host key, not a certificate")
            trusted: Sequence[PublicKey] = host_cas
            if pin is not None:
                if ca_pin(key.signature_key.blob) != pin:
                    raise CertificateInvalid("the server's host CA does not match the CA pin")
                trusted = [key.signature_key]
            elif not host_cas:
                trusted = [key.signature_key]
            result = check_certificate(
                key, cert_type=CertType.HOST, trusted_cas=trusted, principal=None, now=clock()
            )
            if result.service_role is not ServiceRole.AUTH:
                raise CertificateInvalid("the server's host certificate is not an auth server's")
            if cluster_name and result.cluster != cluster_name:
                raise CertificateInvalid(
                    f"the server belongs to cluster {result.cluster!r}, not {cluster_name!r}"
                )
            return True
        except TrioportError as exc:
            if reasons is not None:
                reasons.append(str(exc))
            return False

    return verify


# --- HTTP over a channel -------------------------------------------------------------


@attrs.frozen
class Reply:
    """An HTTP response from the auth API."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Channel:
    """One API channel: an h11 client connection over an SSH channel."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.http = h11.Connection(h11.CLIENT)

    async def exchange(
        self, method: str, target: str, body: bytes, content_type: str
    ) -> tuple[Reply, bool]:
        headers = [("host", "auth"), ("content-length", str(len(body))), ("accept", "*/*")]
        if body:
            headers.append(("content-type", content_type))
        out = self.http.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += self.http.send(h11.Data(data=body))
        out += self.http.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        response = await self._next()
        while isinstance(response, h11.InformationalResponse):
            response = await self._next()
        if not isinstance(response, h11.Response):
            raise trio.BrokenResourceError("the auth service closed the channel mid-request")
        data = bytearray()
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                data += event.data
                if len(data) > MAX_RESPONSE_BYTES:
                    raise trio.BrokenResourceError("the auth service sent too large a reply")
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise trio.BrokenResourceError("the auth service closed the channel mid-reply")
        reply = Reply(
            response.status_code,
            {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers},
            bytes(data),
        )
        reusable = self.http.our_state is h11.DONE and self.http.their_state is h11.DONE
        if reusable:
            self.http.start_next_cycle()
        return reply, reusable

    async def _next(self) -> Any:
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.stream.receive_some(65536))
                continue
            return event


@attrs.frozen
class LoginResult:
    """What a forwarded login returns: the user, her certificate and the host CA."""

    user: User
    certificate: Certificate
    host_ca: CertAuthority
    known_hosts: list[str]


@attrs.frozen
class JoinResult:
    """What joining returns: the host's UUID, its certificate, and the cluster's CAs."""

    host_id: str
    cluster_name: str
    certificate: Certificate
    host_ca: CertAuthority
    user_ca: CertAuthority

    def identity(self, key: PrivateKey) -> ClientIdentity:
        """The identity to call the API with from now on (``key`` is the one that joined)."""
        cas = tuple(public_key_from_line(line) for line in self.host_ca.spec.public_keys)
        return ClientIdentity(
            key=key, certificate=self.certificate, host_cas=cas, cluster_name=self.cluster_name
        )


class AuthClient:
    """The auth API over one SSH connection; made by :func:`connect_auth`.

    Requests may be made from several tasks at once: each uses its own channel
    (at most ``max_channels``, reused between requests).
    """

    def __init__(self, conn: SSHConnection, address: str, *, max_channels: int = 4) -> None:
        self.conn = conn
        self.address = address
        self._slots = trio.Semaphore(max_channels)
        self._idle: list[_Channel] = []

    async def aclose(self) -> None:
        """Close the idle channels (the connection closes with :func:`connect_auth`)."""
        while self._idle:
            await trio.aclose_forcefully(self._idle.pop().stream)

    async def _open(self) -> _Channel:
        chan = await self.conn.open_session()
        if not await chan.request(ev.Subsystem(name=SUBSYSTEM)):
            await trio.aclose_forcefully(chan)
            raise AuthServiceUnavailable(
                f"{self.address} does not offer the auth API (subsystem {SUBSYSTEM})"
            )
        return _Channel(chan)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        body: bytes | None = None,
        query: Mapping[str, object] | None = None,
        content_type: str = "application/octet-stream",
    ) -> Reply:
        """Send one request and return the reply, whatever its status.

        Raises:
            AuthServiceUnavailable: the connection broke.
        """
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            content_type = "application/json"
        async with self._slots:
            try:
                chan = self._idle.pop() if self._idle else await self._open()
            except (trio.BrokenResourceError, trio.ClosedResourceError, TrioportError) as exc:
                if isinstance(exc, AuthServiceUnavailable):
                    raise
                raise AuthServiceUnavailable(
                    f"lost the connection to the auth service at {self.address}: {exc}"
                ) from exc
            reusable = False
            try:
                reply, reusable = await chan.exchange(method, path, body or b"", content_type)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
                raise AuthServiceUnavailable(
                    f"lost the connection to the auth service at {self.address}: {exc}"
                ) from exc
            finally:
                if reusable:
                    self._idle.append(chan)
                else:
                    await trio.aclose_forcefully(chan.stream)
        return reply

    async def call(self, method: str, path: str, json_body: object = None, **kw: Any) -> Any:
        """A request whose reply is JSON; a refusal raises its error class."""
        reply = await self.request(method, path, json_body=json_body, **kw)
        if reply.status >= 400:
            _raise_for(reply.status, reply.body)
        return reply.json()

    # --- who, CAs, status ------------------------------------------------------------

    async def whoami(self) -> dict[str, Any]:
        """Who the server says we are: ``kind``, ``name``, ``host_id``, ``roles``."""
        return await self.call("GET", "/v1/whoami")

    async def authorities(self) -> dict[str, Any]:
        """The public CAs with their ``lines`` for authorized_keys / known_hosts."""
        return await self.call("GET", "/v1/authorities")

    async def export_authority(self, ca_type: str) -> list[str]:
        """``cert-authority`` lines (``user``) or ``@cert-authority *`` lines (``host``)."""
        if ca_type not in ("user", "host"):
            raise ValueError("the CA type is user or host")
        return list((await self.authorities())[ca_type]["lines"])

    async def status(self) -> dict[str, Any]:
        """Cluster name, CA fingerprints, the CA pin and counts."""
        return await self.call("GET", "/v1/status")

    # --- hosts -------------------------------------------------------------------------

    async def heartbeat(self, node: Node) -> dict[str, Any]:
        """Report this node alive, with its labels; returns its listing."""
        return await self.call("POST", "/v1/nodes/heartbeat", to_dict(node))

    async def renew_host_certificate(
        self, public_key: PublicKey, addresses: Iterable[str] = ()
    ) -> Certificate:
        """A new host certificate for this host's key, under its registered names."""
        reply = await self.call(
            "POST",
            "/v1/hosts/certificate",
            {"public_key": public_key.openssh_line(), "addresses": list(addresses)},
        )
        return _certificate(reply["certificate"])

    async def access(
        self,
        user: str,
        *,
        login: str | None = None,
        node: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """What ``user`` may do on a node: ``logins``, ``allowed`` (for ``login``), options."""
        body: dict[str, Any] = {"user": user, "login": login, "node": node}
        if labels is not None:
            body["labels"] = dict(labels)
        return await self.call("POST", "/v1/access", body)

    async def list_nodes(self) -> list[dict[str, Any]]:
        """The nodes that heartbeat recently (those a user's roles let her see)."""
        return list((await self.call("GET", "/v1/nodes"))["nodes"])

    async def get_node(self, host_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/nodes/{_seg(host_id)}")

    async def remove_node(self, host_id: str) -> None:
        """Forget a host: its UUID and names are released, its certificate stops working here."""
        await self.call("DELETE", f"/v1/nodes/{_seg(host_id)}")

    # --- logins and invites ------------------------------------------------------------

    async def login(
        self,
        user: str,
        password: str,
        totp_code: str,
        public_key: PublicKey | str,
        *,
        ttl: float | None = None,
        remote_addr: str | None = None,
    ) -> LoginResult:
        """Forward ``tsh login``: password + TOTP + public key in, a user certificate out."""
        key = public_key if isinstance(public_key, str) else public_key.openssh_line()
        reply = await self.call(
            "POST",
            "/v1/login",
            {
                "user": user,
                "password": password,
                "totp_code": totp_code,
                "public_key": key,
                "ttl": ttl,
                "remote_addr": remote_addr,
            },
        )
        return LoginResult(
            user=from_dict(reply["user"], User),
            certificate=_certificate(reply["certificate"]),
            host_ca=from_dict(reply["host_ca"], CertAuthority),
            known_hosts=list(reply["known_hosts"]),
        )

    async def start_enrolment(self, token: str) -> dict[str, str]:
        """Begin an invite: a fresh TOTP secret (``user``, ``secret``, ``uri``)."""
        return await self.call("POST", f"/v1/invites/{_seg(token)}/totp")

    async def complete_invite(
        self, token: str, password: str, totp_code: str, *, remote_addr: str | None = None
    ) -> User:
        """Finish an invite or reset: set the password, confirm the TOTP code."""
        reply = await self.call(
            "POST",
            f"/v1/invites/{_seg(token)}",
            {"password": password, "totp_code": totp_code, "remote_addr": remote_addr},
        )
        return from_dict(reply["user"], User)

    # --- users, tokens, roles ------------------------------------------------------------

    async def add_user(
        self, name: str, *, logins: Sequence[str] = (), roles: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Create an invited user; returns the invite (``url``, ``token``, ``expires``)."""
        body = {
            "name": name,
            "logins": list(logins),
            "roles": None if roles is None else list(roles),
        }
        return await self.call("POST", "/v1/users", body)

    async def list_users(self) -> list[User]:
        return [from_dict(u, User) for u in (await self.call("GET", "/v1/users"))["users"]]

    async def get_user(self, name: str) -> User:
        return from_dict(await self.call("GET", f"/v1/users/{_seg(name)}"), User)

    async def update_user(
        self, name: str, *, logins: Sequence[str] | None = None, roles: Sequence[str] | None = None
    ) -> User:
        body = {
            "logins": None if logins is None else list(logins),
            "roles": None if roles is None else list(roles),
        }
        return from_dict(await self.call("PUT", f"/v1/users/{_seg(name)}", body), User)

    async def remove_user(self, name: str) -> None:
        await self.call("DELETE", f"/v1/users/{_seg(name)}")

    async def reset_user(self, name: str) -> dict[str, Any]:
        """A new invite or reset link for ``name`` (``url``, ``token``, ``expires``)."""
        return await self.call("POST", f"/v1/users/{_seg(name)}/reset")

    async def unlock_user(self, name: str) -> None:
        await self.call("POST", f"/v1/users/{_seg(name)}/unlock")

    async def add_token(
        self, roles: Sequence[str] = ("node",), *, ttl: float | None = None
    ) -> dict[str, Any]:
        """A new single-use join token: ``token`` (shown once), ``roles``, ``expires``."""
        return await self.call("POST", "/v1/tokens", {"roles": list(roles), "ttl": ttl})

    async def list_tokens(self) -> list[Token]:
        return [from_dict(t, Token) for t in (await self.call("GET", "/v1/tokens"))["tokens"]]

    async def remove_token(self, token: str) -> None:
        await self.call("DELETE", f"/v1/tokens/{_seg(token)}")

    async def list_roles(self) -> list[Role]:
        return [from_dict(r, Role) for r in (await self.call("GET", "/v1/roles"))["roles"]]

    async def get_role(self, name: str) -> Role:
        return from_dict(await self.call("GET", f"/v1/roles/{_seg(name)}"), Role)

    async def upsert_role(self, role: Role) -> bool:
        """Create or replace a role; True if it was created."""
        reply = await self.call("PUT", f"/v1/roles/{_seg(role.metadata.name)}", to_dict(role))
        return bool(reply["created"])

    async def remove_role(self, name: str) -> None:
        await self.call("DELETE", f"/v1/roles/{_seg(name)}")

    # --- audit events, sessions, recordings -----------------------------------------------

    async def emit_event(self, code: str, **fields: Any) -> str:
        """Record an audit event by code (``T2000I``); top-level fields are ``user``,
        ``login``, ``sid``, ``addr_local``, ``addr_remote``, ``success``, ``error``,
        anything else goes under ``fields``. Returns the event's uid."""
        top = ("user", "login", "sid", "server_id", "addr_local", "addr_remote", "success", "error")
        body: dict[str, Any] = {"code": code, "fields": {}}
        for name, value in fields.items():
            if name in top:
                body[name] = value
            else:
                body["fields"][name] = value
        return str((await self.call("POST", "/v1/events", body))["uid"])

    async def search_events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        events: Iterable[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Audit events in ``[since, until)`` (the last day by default), oldest first."""
        query = {"since": since, "until": until, "limit": limit, "event": list(events) or None}
        return list((await self.call("GET", "/v1/events", query=query))["events"])

    async def put_session(self, session: Session) -> bool:
        """Create or update a tracked session (a node reports its own); True if new."""
        reply = await self.call(
            "PUT", f"/v1/sessions/{_seg(session.metadata.name)}", to_dict(session)
        )
        return bool(reply["created"])

    async def list_sessions(self, *, state: str | None = None) -> list[Session]:
        reply = await self.call("GET", "/v1/sessions", query={"state": state})
        return [from_dict(s, Session) for s in reply["sessions"]]

    async def get_session(self, sid: str) -> Session:
        return from_dict(await self.call("GET", f"/v1/sessions/{_seg(sid)}"), Session)

    async def upload_chunk(self, sid: str, index: int, data: bytes) -> int:
        """Upload chunk ``index`` of a recording; returns the index expected next."""
        reply = await self.call("PUT", f"/v1/recordings/{_seg(sid)}/chunks/{int(index)}", body=data)
        return int(reply["next"])

    async def next_chunk(self, sid: str) -> int:
        """The index of the next chunk to upload (where to resume)."""
        return int((await self.call("GET", f"/v1/recordings/{_seg(sid)}/upload"))["next"])

    async def complete_recording(self, sid: str, *, chunks: int | None = None) -> dict[str, Any]:
        """Mark an upload complete (``chunks``: how many were sent, checked)."""
        return await self.call("POST", f"/v1/recordings/{_seg(sid)}/complete", {"chunks": chunks})

    async def list_recordings(self) -> dict[str, Any]:
        """``recordings`` (sid, size, completed) and, for those who may, ``incomplete``."""
        return await self.call("GET", "/v1/recordings")

    async def fetch_recording(self, sid: str, *, offset: int = 0, size: int | None = None) -> bytes:
        """A complete recording's bytes (or ``size`` of them from ``offset``)."""
        reply = await self.request(
            "GET", f"/v1/recordings/{_seg(sid)}", query={"offset": offset, "size": size}
        )
        if reply.status >= 400:
            _raise_for(reply.status, reply.body)
        return reply.body


def _seg(value: str) -> str:
    return quote(value, safe="")


def _certificate(line: str) -> Certificate:
    cert = public_key_from_line(line)
    if not isinstance(cert, Certificate):
        raise KeyFormatError("the auth service sent a key where a certificate belongs")
    return cert


# --- connecting ----------------------------------------------------------------------------


def _address(addr: str | Address | tuple[str, int]) -> tuple[str, int]:
    if isinstance(addr, Address):
        host, port = addr.host, addr.port
    elif isinstance(addr, tuple):
        host, port = addr
    else:
        try:
            parsed = parse_addr(addr, AUTH_PORT, default_host="127.0.0.1")
        except ValueError as exc:
            raise ConfigError(str(exc), key="--auth-server") from None
        host, port = parsed.host, parsed.port
    if host in ("0.0.0.0", ""):  # noqa: S104 - a listen address: reach it on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def _reason(exc: BaseException) -> str:
    """The most specific words for why a connection failed ("Connection refused")."""
    while isinstance(exc.__cause__, BaseExceptionGroup) and exc.__cause__.exceptions:
        exc = exc.__cause__.exceptions[0]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.rsplit(": ", 1)[-1]  # trio prefixes "Error connecting to ..."
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def _connected(
    addr: str | Address | tuple[str, int],
    *,
    username: str,
    signer: KeySigner,
    verify: Callable[[bytes, str], bool],
    reasons: list[str],
    connect_timeout: float,
) -> AsyncIterator[tuple[SSHConnection, str]]:
    host, port = _address(addr)
    where = str(Address(host, port))
    config = ConnectionConfig(role=SSHRole.CLIENT, verify_host_key=verify)
    async with AsyncExitStack() as stack:
        try:
            with trio.fail_after(connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
            conn = await stack.enter_async_context(
                connect(
                    host,
                    port,
                    username=username,
                    signers=[signer],
                    config=config,
                    stream=stream,
                    connect_timeout=connect_timeout,
                )
            )
        except HostKeyNotVerifiable as exc:
            why = reasons[-1] if reasons else exc.description
            raise HostKeyNotVerifiable(
                f"the auth service at {where} is not trusted: {why}"
            ) from None
        except AuthenticationFailed:
            raise AuthenticationFailed(
                f"the auth service at {where} refused the certificate of {username!r}"
                " (expired, revoked, or from another cluster?)"
            ) from None
        except trio.TooSlowError:
            raise AuthServiceUnavailable(
                f"cannot reach the auth service at {where}: no answer within {connect_timeout:g}s"
            ) from None
        except (OSError, ProtocolError, ConnectionClosedError, trio.BrokenResourceError) as exc:
            raise AuthServiceUnavailable(
                f"cannot reach the auth service at {where}: {_reason(exc)}"
            ) from None
        yield conn, where


@asynccontextmanager
async def connect_auth(
    addr: str | Address | tuple[str, int],
    identity: ClientIdentity,
    *,
    connect_timeout: float = DEFAULT_TIMEOUT,
    max_channels: int = 4,
) -> AsyncIterator[AuthClient]:
    """Connect to the auth service as ``identity`` and yield an :class:`AuthClient`.

    Args:
        addr: ``host:port`` (port 3025 if omitted; ``0.0.0.0`` means loopback).
        identity: the caller's key, certificate and the host CA to trust.
        connect_timeout: seconds to connect and log in.
        max_channels: requests in flight at once.

    Raises:
        AuthServiceUnavailable: nothing answers there, or not an SSH server.
        HostKeyNotVerifiable: the server is not an auth server of the cluster.
        AuthenticationFailed: the server refused the certificate.
    """
    reasons: list[str] = []
    verify = auth_host_verifier(identity.host_cas, identity.cluster_name, reasons=reasons)
    async with _connected(
        addr,
        username=identity.username,
        signer=identity.signer(),
        verify=verify,
        reasons=reasons,
        connect_timeout=connect_timeout,
    ) as (conn, where):
        client = AuthClient(conn, where, max_channels=max_channels)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()


async def join_cluster(
    addr: str | Address | tuple[str, int],
    *,
    token: str,
    key: PrivateKey,
    node_name: str,
    role: str = "node",
    addresses: Iterable[str] = (),
    host_id: str | None = None,
    pin: str | None = None,
    connect_timeout: float = DEFAULT_TIMEOUT,
) -> JoinResult:
    """Join the cluster with a token: send our public key, get a host certificate.

    The private key never leaves this process; it only signs the SSH login.

    Args:
        addr: the auth service.
        token: the join token (``tctl tokens add``).
        key: this host's key (its certificate is made for it).
        node_name: the name to register.
        role: ``node``, ``proxy`` or ``auth``.
        addresses: this host's IP addresses (principals of its certificate).
        host_id: the UUID of an earlier join, to join again as the same host.
        pin: the host CA's pin (``sha256:...``, from ``tctl status``); without it the
            first auth server that answers is trusted, and only checked afterwards
            against the host CA it returns.
        connect_timeout: seconds to connect, and for the request.

    Raises:
        AuthenticationFailed: the token is invalid, expired, used or for another role.
        AccessDenied: the name or UUID belongs to another host.
        APIError: rate limited (``kind="rate_limited"``) or a malformed request.
        AuthServiceUnavailable / HostKeyNotVerifiable: see :func:`connect_auth`.
    """
    reasons: list[str] = []
    verify = auth_host_verifier((), None, pin=pin, reasons=reasons)
    async with _connected(
        addr,
        username=JOIN_USER,
        signer=KeySigner(key),
        verify=verify,
        reasons=reasons,
        connect_timeout=connect_timeout,
    ) as (conn, where):
        client = AuthClient(conn, where, max_channels=1)
        try:
            with trio.fail_after(connect_timeout):
                reply = await client.call(
                    "POST",
                    "/v1/join",
                    {
                        "token": token,
                        "public_key": key.public.openssh_line(),
                        "node_name": node_name,
                        "role": role,
                        "addresses": list(addresses),
                        "host_id": host_id,
                    },
                )
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
        server_key = conn.host_key
    result = JoinResult(
        host_id=str(reply["host_id"]),
        cluster_name=str(reply["cluster_name"]),
        certificate=_certificate(reply["certificate"]),
        host_ca=from_dict(reply["host_ca"], CertAuthority),
        user_ca=from_dict(reply["user_ca"], CertAuthority),
    )
    if result.certificate.key != key.public:
        raise KeyFormatError("the auth service certified another key than ours")
    cas = [public_key_from_line(line) for line in result.host_ca.spec.public_keys]
    check = auth_host_verifier(cas, result.cluster_name, reasons=reasons)
    if server_key is None or not check(server_key, ""):
        why = reasons[-1] if reasons else "no host key"
        raise HostKeyNotVerifiable(
            f"the auth service at {where} is not signed by the host CA it sent: {why}"
        )
    return result
