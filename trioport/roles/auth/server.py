"""The auth service's logic in one object: what its API (a later step) will call.

:func:`open_auth_server` starts the pieces on a backend and a data directory
(CAs, preset roles, audit log) and yields an :class:`AuthServer`. The operations
that span several pieces live here:

- :meth:`AuthServer.join`: a token and a public key in, a host certificate out.
  Everything is validated first; the token is checked (not spent), the host's
  UUID and names are reserved, and only then is the token spent, atomically. If
  spending fails (another join got there first) the reservation is undone, so two
  simultaneous joins with one token make exactly one node.
- :meth:`AuthServer.login`: password + TOTP checked by :class:`~.users.Users`, then
  a user certificate signed for her roles.
- :meth:`AuthServer.user_certificate` and :meth:`AuthServer.host_certificate`: new
  certificates for identities that are already authenticated (a web session, a
  host renewing), whose names come from the store, never from the request.

Every one of them leaves an audit event, success or failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from trioport.errors import AccessDenied, AuthError, KeyFormatError, NotFound
from trioport.resources import CertAuthority, User, mask_secret
from trioport.sshproto.certs import CERTIFICATE_KEY_TYPES, Certificate, ServiceRole
from trioport.sshproto.keys import PublicKey, public_key_from_line
from trioport.store.backend import Backend

from . import audit_log
from .audit_log import AuditLog
from .ca import DEFAULT_CA_KEY_TYPE, ClusterAuthorities, open_cluster_authorities
from .nodes import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_NODE_TTL,
    NodeRegistry,
    check_addresses,
    check_host_id,
    check_node_name,
)
from .recordings import Recordings
from .roles import RoleStore
from .tokens import DEFAULT_TOKEN_TTL, JoinTokens
from .users import BCRYPT_COST, Users

__all__ = ["AuthServer", "JoinResult", "LoginResult", "open_auth_server"]


@attrs.frozen
class JoinResult:
    """What a host gets for joining: its identity, certificate and the CAs to trust."""

    host_id: str
    certificate: Certificate
    #: Public host CA (to check other hosts) and user CA (for TrustedUserCAKeys).
    host_ca: CertAuthority
    user_ca: CertAuthority


@attrs.frozen
class LoginResult:
    """What ``tsh login`` gets: the user, her certificate and the host CA to trust."""

    user: User
    certificate: Certificate
    host_ca: CertAuthority


#: Plain key types a certificate can be made for.
_CERTIFIABLE = frozenset(plain for plain, _fields in CERTIFICATE_KEY_TYPES.values())


def certifiable_key(key: PublicKey | str) -> PublicKey:
    """The plain public key to certify, checked before anything is spent on it.

    Raises:
        KeyFormatError: not an OpenSSH public key line, a certificate, or a type
            that cannot be certified.
    """
    parsed = key if isinstance(key, PublicKey) else public_key_from_line(key)
    if isinstance(parsed, Certificate) or parsed.key_type not in _CERTIFIABLE:
        raise KeyFormatError(f"cannot certify a {parsed.key_type} key; send a plain public key")
    return parsed


@attrs.define(eq=False)
class AuthServer:
    """The auth service's state and operations. Make one with :func:`open_auth_server`."""

    backend: Backend
    cluster_name: str
    ca: ClusterAuthorities
    audit: AuditLog
    roles: RoleStore
    users: Users
    tokens: JoinTokens
    nodes: NodeRegistry
    recordings: Recordings

    # --- joining -----------------------------------------------------------------

    async def join(
        self,
        *,
        token: str,
        public_key: PublicKey | str,
        node_name: str,
        role: ServiceRole | str = ServiceRole.NODE,
        host_id: str | None = None,
        addresses: Iterable[str] = (),
        remote_addr: str | None = None,
    ) -> JoinResult:
        """Join a host with a token: register it and sign its host certificate.

        Args:
            token: a join token allowing ``role``.
            public_key: the host's own public key (its private key stays with it).
            node_name: the name it will be known by.
            role: the service it runs: node, proxy or auth.
            host_id: its UUID, when it has one from an earlier join; a new one is
                made otherwise.
            addresses: its IP addresses (principals of the certificate).
            remote_addr: where the request came from, for the audit log.

        Raises:
            AuthenticationFailed: the token is invalid, expired, used or for
                another role (one message for all).
            AccessDenied: the UUID or a name belongs to another host.
            ValueError: a malformed name, UUID, address, role or key.
            KeyFormatError: a key that cannot be certified (a certificate, say).
        """
        audit_fields = {
            "token": mask_secret(token) if isinstance(token, str) else "",
            "role": str(role.value if isinstance(role, ServiceRole) else role),
            "node_name": str(node_name),
        }
        try:
            service_role = ServiceRole(role.value if isinstance(role, ServiceRole) else role)
            key = certifiable_key(public_key)
            check_node_name(node_name)
            new_host = host_id is None
            host = str(uuid.uuid4()) if host_id is None else check_host_id(host_id)
            address_list = check_addresses(addresses)
            await self.tokens.check(token, service_role.value)
            _identity, created = await self.nodes.reserve_identity(
                host_id=host, name=node_name, public_key=key, role=service_role.value
            )
            try:
                await self.tokens.consume(token, service_role.value)
            except BaseException:
                if created:
                    with trio.CancelScope(shield=True):
                        await self.nodes.release_identity(host)
                raise
            certificate = await self.ca.sign_host_certificate(
                key,
                host_id=host,
                node_name=node_name,
                addresses=address_list,
                role=service_role,
                now=self.backend.clock(),
            )
        except (AuthError, ValueError, KeyFormatError) as exc:
            await self.audit.emit(
                audit_log.INSTANCE_JOIN_FAILURE,
                addr_remote=remote_addr,
                server_id=host_id if isinstance(host_id, str) else None,
                success=False,
                error=str(exc),
                fields=audit_fields,
            )
            raise
        await self.audit.emit(
            audit_log.INSTANCE_JOIN,
            addr_remote=remote_addr,
            server_id=host,
            success=True,
            fields={**audit_fields, "new_host_id": new_host},
        )
        await self._audit_certificate("host", certificate, server_id=host)
        return JoinResult(host, certificate, self.ca.host_ca, self.ca.user_ca)

    async def host_certificate(
        self,
        host_id: str,
        public_key: PublicKey | str,
        *,
        role: ServiceRole | str,
        addresses: Iterable[str] = (),
    ) -> Certificate:
        """A new host certificate for an authenticated host, under its registered names.

        Raises:
            AccessDenied: ``host_id`` is not registered, or ``public_key`` is not
                the key it joined with.
            ValueError: a malformed address or role.
        """
        service_role = ServiceRole(role.value if isinstance(role, ServiceRole) else role)
        key = certifiable_key(public_key)
        try:
            identity = await self.nodes.get_identity(host_id)
        except NotFound:
            raise AccessDenied("this host is not registered; join the cluster again") from None
        if identity.public_key != key.openssh_line():
            raise AccessDenied("a host certificate is only issued for the key the host joined with")
        certificate = await self.ca.sign_host_certificate(
            key,
            host_id=identity.host_id,
            node_name=identity.name,
            addresses=check_addresses(addresses),
            role=service_role,
            now=self.backend.clock(),
        )
        await self._audit_certificate("host", certificate, server_id=identity.host_id)
        return certificate

    # --- users -------------------------------------------------------------------

    async def login(
        self,
        *,
        user: str,
        password: str,
        totp_code: str,
        public_key: PublicKey | str,
        ttl: float | None = None,
        remote_addr: str | None = None,
    ) -> LoginResult:
        """``tsh login``: check password and TOTP, then sign a user certificate.

        The key is parsed before the credentials are checked, so a bad key does not
        spend a TOTP code.

        Raises:
            AuthenticationFailed: with :data:`~.users.LOGIN_FAILED`, whatever failed.
            KeyFormatError: the public key is not a plain key we can certify.
        """
        key = certifiable_key(public_key)
        found = await self.users.authenticate(user, password, totp_code, remote_addr=remote_addr)
        certificate = await self._sign_user(found, key, ttl)
        return LoginResult(found, certificate, self.ca.host_ca)

    async def user_certificate(
        self, user: str, public_key: PublicKey | str, *, ttl: float | None = None
    ) -> Certificate:
        """A user certificate for an already authenticated user (a web session).

        Raises:
            NotFound: no such user.
        """
        found = await self.users.get(user)
        return await self._sign_user(found, certifiable_key(public_key), ttl)

    async def _sign_user(self, user: User, key: PublicKey, ttl: float | None) -> Certificate:
        roles = await self.roles.get_many(user.spec.roles)
        certificate = await self.ca.sign_user_certificate(
            key, user=user, roles=roles, now=self.backend.clock(), ttl=ttl
        )
        await self._audit_certificate("user", certificate, user=user.metadata.name)
        return certificate

    async def _audit_certificate(
        self,
        kind: str,
        certificate: Certificate,
        *,
        user: str | None = None,
        server_id: str | None = None,
    ) -> None:
        await self.audit.emit(
            audit_log.CERT_CREATE,
            user=user,
            server_id=server_id,
            fields={
                "cert_type": kind,
                "identity": {
                    "key_id": certificate.key_id,
                    "principals": list(certificate.principals),
                    "valid_after": certificate.valid_after,
                    "valid_before": certificate.valid_before,
                    "serial": certificate.serial,
                    "fingerprint": certificate.fingerprint(),
                },
            },
        )


@asynccontextmanager
async def open_auth_server(
    backend: Backend,
    *,
    data_dir: str | os.PathLike[str],
    cluster_name: str,
    static_tokens: Sequence[object] = (),
    ca_key_type: str = DEFAULT_CA_KEY_TYPE,
    bcrypt_cost: int = BCRYPT_COST,
    token_ttl: float = DEFAULT_TOKEN_TTL,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    node_ttl: float = DEFAULT_NODE_TTL,
) -> AsyncIterator[AuthServer]:
    """Start the auth service's logic on ``backend``; the audit log closes on exit.

    Idempotent across restarts: existing CAs, roles and users are used as they are.

    Args:
        backend: the cluster's store.
        data_dir: the data directory; the audit log goes to ``log/`` and
            recordings to ``records/`` under it.
        cluster_name: the cluster's name (fixed at first start).
        static_tokens: the config file's tokens (:class:`trioport.config.StaticToken`).
        ca_key_type: the key type of new CAs.
        bcrypt_cost: bcrypt's work factor (12; tests may lower it).
        token_ttl: the longest (and default) life of a dynamic join token.
        heartbeat_interval / node_ttl: see :class:`~.nodes.NodeRegistry`.

    Raises:
        ConfigError: the cluster name differs from the stored one, or a bad CA key type.
    """
    root = trio.Path(data_dir)
    audit = AuditLog(root / "log", clock=backend.clock)
    try:
        ca = await open_cluster_authorities(backend, cluster_name, key_type=ca_key_type)
        roles = RoleStore(backend, audit)
        await roles.ensure_presets()
        users = Users(backend, audit, roles, issuer=ca.cluster_name, bcrypt_cost=bcrypt_cost)
        await users.prepare()
        yield AuthServer(
            backend=backend,
            cluster_name=ca.cluster_name,
            ca=ca,
            audit=audit,
            roles=roles,
            users=users,
            tokens=JoinTokens(backend, audit, static=static_tokens, max_ttl=token_ttl),  # type: ignore[arg-type]
            nodes=NodeRegistry(
                backend, cluster_name=ca.cluster_name, interval=heartbeat_interval, ttl=node_ttl
            ),
            recordings=Recordings(root / "records"),
        )
    finally:
        with trio.CancelScope(shield=True):
            await audit.aclose()
