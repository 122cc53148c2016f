"""Who to trust: host keys and host certificates (client), user certificates (server).

The one validation function is :func:`trioport.sshproto.certs.check_certificate`;
this module decides *which* CAs, names and addresses go into it, reads the clock,
and hooks the answer into the trio driver.

Client: :class:`HostKeyPolicy` is the ``verify_host_key(blob, algorithm)`` callable
of a client :class:`~trioport.sshproto.ConnectionConfig`. It follows OpenSSH's
``ssh`` (sshconnect.c ``check_host_key``): a ``@revoked`` key (or CA) is refused; a
host certificate signed by a CA that ``known_hosts`` trusts for this host
(``@cert-authority``) must pass every check, with the host name as a glob-matched
principal, and is refused otherwise; a certificate from any other CA is judged as
its plain key; a plain key must be listed for the host. Every refusal records a
precise reason in :attr:`HostKeyPolicy.refusal`.

Server: :class:`UserCertificateChecker` validates the certificate in a publickey
authentication request: a trusted user CA, the requested login as principal (or
the principals an ``AuthorizedPrincipalsFile``-style lookup allows for it), and
``source-address`` against the peer's address. Its
:class:`~trioport.sshproto.certs.CertificateCheckResult` carries force-command and
the permissions, which :func:`session_policy_for` turns into the
:class:`~trioport.ssh.session.SessionPolicy` that enforces them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pwd
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

from ..errors import AuthenticationFailed, CertificateInvalid, DecodeError, HostKeyNotVerifiable
from ..sshproto import certs  # also registers the certificate key types
from ..sshproto import events as ev
from ..sshproto.authfiles import (
    KnownHost,
    host_lookup_name,
    known_hosts_lookup,
    parse_known_hosts,
)
from ..sshproto.certs import (
    DEFAULT_CA_SIGNATURE_ALGORITHMS,
    DEFAULT_CLOCK_SKEW,
    Certificate,
    CertificateCheckResult,
    CertType,
)
from ..sshproto.keys import PublicKey, parse_public_key
from .agent import session_agent_forwarding
from .channel import ChannelStream
from .connection import SSHConnection, SSHHandler
from .session import SessionPolicy, serve_session

__all__ = [
    "HostKeyPolicy",
    "UserCertificateChecker",
    "UserCertificateHandler",
    "peer_address",
    "session_policy_for",
]

log = logging.getLogger("trioport.ssh.trust")


class HostKeyPolicy:
    """A client's host-key check for one host: ``known_hosts`` and host CAs.

    Pass it as ``ConnectionConfig(verify_host_key=policy)``.

    Args:
        host: the host name as the user gave it (matched against ``known_hosts``
            and, lowercased, against host certificate principals).
        port: the SSH port (``known_hosts`` names ports other than 22 ``[host]:port``).
        known_hosts: parsed ``known_hosts`` lines (:meth:`from_files` reads files).
        host_cas: CA keys trusted for this host besides ``@cert-authority`` lines
            (trioport's cluster host CA).
        host_keys: plain keys trusted for this host besides ``known_hosts``.
        host_key_alias: check certificates against this name instead (OpenSSH's
            ``HostKeyAlias``); ``known_hosts`` lookups use it too.
        clock: seconds since the epoch, for certificate validity.
        skew: seconds of grace before a certificate's ``valid_after``.
        allowed_ca_signature_algorithms: OpenSSH's ``CASignatureAlgorithms``.
        raise_refusals: raise :class:`~trioport.errors.HostKeyNotVerifiable` with
            the reason (so the connection error names it) instead of returning
            False. Either way the reason is kept in :attr:`refusal`.
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        *,
        known_hosts: Iterable[KnownHost] = (),
        host_cas: Iterable[PublicKey] = (),
        host_keys: Iterable[PublicKey] = (),
        host_key_alias: str | None = None,
        clock: Callable[[], float] = time.time,
        skew: float = DEFAULT_CLOCK_SKEW,
        allowed_ca_signature_algorithms: Collection[str] = DEFAULT_CA_SIGNATURE_ALGORITHMS,
        raise_refusals: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.known_hosts = tuple(known_hosts)
        self.host_cas = tuple(host_cas)
        self.host_keys = tuple(host_keys)
        self.host_key_alias = host_key_alias
        self.clock = clock
        self.skew = skew
        self.allowed_ca_signature_algorithms = allowed_ca_signature_algorithms
        self.raise_refusals = raise_refusals
        #: Why the last key was refused (``None`` after an accepted key).
        self.refusal: str | None = None
        #: What the last accepted host certificate says (service role, cluster ...).
        self.result: CertificateCheckResult | None = None

    @classmethod
    def from_files(
        cls, host: str, port: int = 22, *, paths: Iterable[str | os.PathLike[str]], **kwargs: object
    ) -> HostKeyPolicy:
        """Read ``known_hosts`` files (``~`` expanded; missing files and bad lines skipped).

        OpenSSH's ``ssh`` also skips lines it cannot parse: a broken line trusts nothing.
        """
        entries: list[KnownHost] = []
        for path in paths:
            try:
                with open(
                    os.path.expanduser(path), encoding="utf-8", errors="surrogateescape"
                ) as f:
                    entries += parse_known_hosts(f.read())
            except FileNotFoundError:
                continue
        return cls(host, port, known_hosts=entries, **kwargs)  # type: ignore[arg-type]

    def __call__(self, blob: bytes, algorithm: str) -> bool:
        """The ``verify_host_key`` hook: True to trust the key.

        Raises:
            HostKeyNotVerifiable: with the reason, if ``raise_refusals``.
        """
        try:
            self.result = self.check(blob)
        except HostKeyNotVerifiable as exc:
            self.refusal = exc.description
            self.result = None
            log.info("host key for %s refused: %s", self._lookup_name, exc.description)
            if self.raise_refusals:
                raise
            return False
        self.refusal = None
        return True

    @property
    def _name(self) -> str:
        return (self.host_key_alias or self.host).lower()

    @property
    def _lookup_name(self) -> str:
        if self.host_key_alias is not None:
            return self.host_key_alias
        return host_lookup_name(self.host, self.port)

    def check(self, blob: bytes) -> CertificateCheckResult | None:
        """Decide on a host key or certificate blob.

        Returns:
            The check result for an accepted certificate, ``None`` for an accepted
            plain key.

        Raises:
            HostKeyNotVerifiable: the reason the key is not trusted.
        """
        try:
            key = parse_public_key(blob)
        except DecodeError as exc:
            raise HostKeyNotVerifiable(f"host key is malformed: {exc.description}") from None
        if self.host_key_alias is not None:
            match = known_hosts_lookup(self.known_hosts, self.host_key_alias)
        else:
            match = known_hosts_lookup(self.known_hosts, self.host, self.port)
        name = self._lookup_name
        if match.is_revoked(key):
            raise HostKeyNotVerifiable(
                f"host key {key.fingerprint()} for {name} is marked @revoked in known_hosts"
            )
        cas = [*match.cert_authorities, *self.host_cas]
        keys = [*match.keys, *self.host_keys]
        prefix = ""
        if isinstance(key, Certificate):
            if key.signature_key in cas:
                try:
                    return certs.check_certificate(
                        key,
                        cert_type=CertType.HOST,
                        trusted_cas=cas,
                        principal=self._name,
                        now=self.clock(),
                        skew=self.skew,
                        allowed_signature_algorithms=self.allowed_ca_signature_algorithms,
                    )
                except CertificateInvalid as exc:
                    raise HostKeyNotVerifiable(f"host certificate for {name}: {exc}") from None
            # No CA trusted for this host signed it: judge it as its plain key, as
            # OpenSSH's ssh does ("No matching CA found. Retry with plain key").
            prefix = (
                f"host certificate for {name} is signed by a CA not trusted for it"
                f" ({key.signature_key.key_type} {key.signature_key.fingerprint()}), and "
            )
            key = key.key
        if key in keys:
            return None
        if keys:
            raise HostKeyNotVerifiable(
                f"{prefix}host key for {name} has CHANGED: {key.key_type} {key.fingerprint()}"
                " is not the key known_hosts lists (possible man-in-the-middle attack)"
            )
        raise HostKeyNotVerifiable(
            f"{prefix}host key {key.key_type} {key.fingerprint()} for {name} is not in known_hosts"
        )


class UserCertificateChecker:
    """Validates user certificates in publickey authentication (sshd's TrustedUserCAKeys).

    Args:
        trusted_cas: CA keys trusted to sign user certificates.
        authorized_principals: login -> the principals accepted for it (sshd's
            ``AuthorizedPrincipalsFile``), as a mapping or a callable; a login it
            does not list gets no principals. By default the principal must be the
            login itself.
        clock: seconds since the epoch.
        skew: seconds of grace before ``valid_after``.
        allowed_signature_algorithms: CA signature algorithms accepted.
    """

    def __init__(
        self,
        trusted_cas: Iterable[PublicKey],
        *,
        authorized_principals: Mapping[str, Collection[str]]
        | Callable[[str], Collection[str]]
        | None = None,
        clock: Callable[[], float] = time.time,
        skew: float = DEFAULT_CLOCK_SKEW,
        allowed_signature_algorithms: Collection[str] = DEFAULT_CA_SIGNATURE_ALGORITHMS,
    ) -> None:
        self.trusted_cas = tuple(trusted_cas)
        self.authorized_principals = authorized_principals
        self.clock = clock
        self.skew = skew
        self.allowed_signature_algorithms = allowed_signature_algorithms

    def principals_for(self, login: str) -> Collection[str]:
        """The certificate principals that may log in as ``login``."""
        lookup = self.authorized_principals
        if lookup is None:
            return (login,)
        if callable(lookup):
            return tuple(lookup(login))
        return tuple(lookup.get(login, ()))

    def check(
        self, request: ev.UserauthRequest, *, peer_address: str | None
    ) -> CertificateCheckResult:
        """Validate the certificate a publickey request (or query) presents.

        Args:
            request: the server-side :class:`~trioport.sshproto.events.UserauthRequest`.
            peer_address: the client's IP address, for ``source-address``.

        Returns:
            The result, with force-command and permissions to enforce.

        Raises:
            AuthenticationFailed: not a publickey request, or a plain key.
            CertificateInvalid: the certificate is refused; the message says why.
        """
        if request.method != "publickey" or request.public_key is None:
            raise AuthenticationFailed(f"{request.method} is not certificate authentication")
        try:
            key = parse_public_key(request.public_key)
        except DecodeError as exc:
            raise CertificateInvalid(f"certificate is malformed: {exc.description}") from None
        if not isinstance(key, Certificate):
            raise AuthenticationFailed("a plain key, not a certificate")
        principals = self.principals_for(request.username)
        if not principals:
            raise CertificateInvalid(
                f"no certificate principals are authorised for {request.username!r}"
            )
        return certs.check_certificate(
            key,
            cert_type=CertType.USER,
            trusted_cas=self.trusted_cas,
            principal=principals,
            now=self.clock(),
            skew=self.skew,
            source_address=peer_address,
            allowed_signature_algorithms=self.allowed_signature_algorithms,
        )


def _uid_of(user: str | int | None) -> int | None:
    """The uid a session runs as (it must be able to reach its agent socket)."""
    if user is None or isinstance(user, int):
        return user
    return pwd.getpwnam(user).pw_uid


def peer_address(conn: SSHConnection) -> str | None:
    """The client's IP address, if the connection runs over a socket."""
    sock = getattr(conn.stream, "socket", None)
    if sock is None:
        return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return str(peer[0]) if isinstance(peer, tuple) else None


def session_policy_for(result: CertificateCheckResult, base: SessionPolicy) -> SessionPolicy:
    """``base`` narrowed by what a user certificate permits.

    force-command replaces every shell, exec and subsystem; without ``permit-pty``
    pty requests are refused; without ``permit-agent-forwarding`` agent forwarding
    is refused. A certificate only takes permissions away, never adds them.
    """
    return dataclasses.replace(
        base,
        force_command=result.force_command
        if result.force_command is not None
        else base.force_command,
        allow_pty=base.allow_pty and result.permit_pty,
        agent_forwarding=base.agent_forwarding if result.permit_agent_forwarding else None,
    )


class UserCertificateHandler(SSHHandler):
    """A server handler that logs users in by certificate and enforces what it says.

    Authentication accepts only user certificates that pass ``checker`` (the
    decision is made on the key that signed; a query is answered the same way).
    Session channels are served by
    :func:`~trioport.ssh.session.serve_session` with ``policy`` narrowed by the
    certificate (:func:`session_policy_for`): force-command, permit-pty and, when
    ``agent_forwarding`` is on, permit-agent-forwarding. Other channel kinds are
    refused. Subclass to add more.

    Args:
        checker: which CAs and principals to accept.
        policy: the session policy before the certificate narrows it.
        agent_forwarding: serve ``auth-agent-req@openssh.com`` with a per-session
            socket (:func:`~trioport.ssh.agent.session_agent_forwarding`).
    """

    def __init__(
        self,
        checker: UserCertificateChecker,
        policy: SessionPolicy | None = None,
        *,
        agent_forwarding: bool = False,
    ) -> None:
        self.checker = checker
        self.policy = policy or SessionPolicy()
        self.agent_forwarding = agent_forwarding
        #: The most recent refusal reasons, newest last (for logs and tests).
        self.refusals: collections.deque[str] = collections.deque(maxlen=32)
        self._results: weakref.WeakKeyDictionary[SSHConnection, CertificateCheckResult] = (
            weakref.WeakKeyDictionary()
        )

    def result_for(self, conn: SSHConnection) -> CertificateCheckResult | None:
        """The certificate check that logged ``conn`` in (``None`` before login)."""
        return self._results.get(conn)

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        try:
            result = self.checker.check(request, peer_address=peer_address(conn))
        except (CertificateInvalid, AuthenticationFailed) as exc:
            reason = f"{request.username}: {exc}"
            self.refusals.append(reason)
            log.info("certificate refused: %s", reason)
            return False
        if request.signature_ok:
            self._results[conn] = result
            log.info(
                "%s logged in with certificate %r (serial %d)",
                request.username,
                result.key_id,
                result.certificate.serial,
            )
        return True

    def session_policy(self, conn: SSHConnection) -> SessionPolicy:
        """The policy for ``conn``'s sessions."""
        result = self._results.get(conn)
        if result is None:  # the core never opens channels before authentication
            raise AuthenticationFailed("no certificate login on this connection")
        base = self.policy
        if self.agent_forwarding:
            hook = session_agent_forwarding(conn, uid=_uid_of(base.user))
            base = dataclasses.replace(base, agent_forwarding=hook)
        return session_policy_for(result, base)

    async def channel_open(
        self, conn: SSHConnection, request: ev.ChannelOpen
    ) -> Callable[[ChannelStream], Awaitable[None]]:
        if request.kind != "session":
            return await super().channel_open(conn, request)
        policy = self.session_policy(conn)
        return lambda chan: serve_session(chan, policy)
