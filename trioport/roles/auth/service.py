"""The auth service: its SSH port (3025), who each caller is, and the administrator's identity.

:func:`serve` is the service (``async def serve(config, *, task_status)``, as every
trioport service). It opens the backend the configuration names (SQLite under the
data directory by default), starts the auth logic (:func:`.server.open_auth_server`),
writes the administrator's identity for ``tctl``, and listens for SSH.

**The SSH port.** The auth service presents a host certificate signed by the
cluster's host CA, with the service role ``auth``; clients check exactly that
(:func:`trioport.authclient.auth_host_verifier`). Its key is made on first start
and kept in ``DATA_DIR/auth/host_key``; the certificate is signed again at every
start. The auth service does not register itself in the node registry: it is the
CA, it never joins, and its certificate carries its own UUID
(``DATA_DIR/auth/host_uuid``).

**Who a caller is** (:func:`identify`) is decided from the key it logs in with,
and only ``publickey`` authentication is offered:

- a **host certificate** signed by the host CA, for this cluster, logging in as
  the host's UUID. The certificate's key id must be ``UUID.cluster`` and its key
  the one the host joined with (the node registry says), and its service role one
  the host joined as. Its role makes it a ``node``, ``proxy`` or ``auth`` identity.
  A host removed with ``tctl nodes rm`` can no longer log in.
- a **user certificate** signed by the user CA, for this cluster, logging in as
  the certificate's key id. The key id :data:`trioport.authclient.ADMIN_USER` is the built-in
  administrator, and only for a key pinned in the store when the service wrote
  the identity (``/admin_keys/<sha256 of the key>``); any other key id must be an
  existing user, whose roles are read from the store (and again on every request).
- the user name :data:`trioport.authclient.JOIN_USER` with a plain key: an unauthenticated
  caller who may only join (the key is the one it wants certified). Its connection
  is closed after :data:`JOIN_TIME_LIMIT` seconds whatever it does, so joining
  cannot be used to hold connections open.

A refused login is an ``auth`` audit event (``T3007W``). After logging in, a
caller opens a ``session`` channel and asks for the subsystem
:data:`trioport.authclient.SUBSYSTEM`; the channel then carries the HTTP API (:mod:`.api`).

**The administrator's identity** (``DATA_DIR/admin/``: ``key`` mode 0600,
``key-cert.pub``, ``known_hosts``; the directory 0700) is a user certificate with
key id :data:`trioport.authclient.ADMIN_USER` and the ``editor`` role, for ``tctl`` on this
machine. The key is made once; the certificate is signed at every start and
renewed while the service runs, before half its life is gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import os
import time
import uuid

import attrs
import trio

from trioport.authclient import ADMIN_USER, JOIN_USER, SUBSYSTEM, ClientIdentity
from trioport.config import Address, Config
from trioport.diag import process_health
from trioport.errors import (
    AuthenticationFailed,
    ChannelOpenError,
    ChannelOpenFailureReason,
    ConfigError,
    DisconnectReason,
    NotFound,
    TrioportError,
)
from trioport.resources import Metadata, User, UserSpec
from trioport.ssh import ChannelStream, ServerLimits, SSHConnection, SSHHandler
from trioport.ssh import serve as serve_ssh
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.certs import Certificate, CertType, ServiceRole, check_certificate
from trioport.sshproto.keys import PrivateKey, parse_public_key
from trioport.store import open_backend
from trioport.store.backend import Clock, Item

from . import audit_log
from .api import AuthAPI, Identity, IdentityKind
from .nodes import check_host_id, check_node_name
from .server import AuthServer, open_auth_server
from .storage_health import watch_storage
from .users import BCRYPT_COST

__all__ = [
    "ADMIN_DIR",
    "ADMIN_KEYS_PREFIX",
    "AuthSSHHandler",
    "identify",
    "issue_admin_identity",
    "proxy_public_addr",
    "serve",
]

log = logging.getLogger("trioport.auth")

#: The administrator's identity, under the data directory.
ADMIN_DIR = "admin"
#: The auth service's own host key and UUID, under the data directory.
AUTH_DIR = "auth"
#: Keys allowed to act as the administrator: ``/admin_keys/<sha256 hex of the key blob>``.
ADMIN_KEYS_PREFIX = "/admin_keys/"
#: Seconds a connection without a certificate (joining) may stay open.
JOIN_TIME_LIMIT = 60.0
#: Shortest wait between two renewals of the administrator's certificate.
MIN_RENEWAL_WAIT = 60.0


def _key_digest(key_blob: bytes) -> str:
    return hashlib.sha256(key_blob).hexdigest()


def _peer(conn: SSHConnection) -> tuple[str | None, str]:
    """(``ip:port`` for the audit log, ``ip`` for rate limiting) of a connection's peer."""
    sock = getattr(conn.stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("local", 0)
    except OSError:
        return None, "unknown"
    return str(Address(str(host), int(port))), str(host)


# --- who is calling -------------------------------------------------------------------


async def identify(
    auth: AuthServer,
    username: str,
    key_blob: bytes,
    *,
    remote_addr: str | None = None,
    source: str = "unknown",
) -> Identity:
    """Who logs in as ``username`` with ``key_blob`` (a key or certificate that signed).

    Raises:
        AuthenticationFailed: not an identity this auth service accepts (why, in the message).
        CertificateInvalid: a certificate that fails validation.
    """
    try:
        key = parse_public_key(key_blob)
    except TrioportError:
        raise AuthenticationFailed("malformed public key") from None
    peer = Identity(IdentityKind.JOIN, JOIN_USER, remote_addr=remote_addr, source=source)
    if username == JOIN_USER:
        if isinstance(key, Certificate):
            raise AuthenticationFailed(f"log in as {JOIN_USER} with a plain key to join")
        return peer
    if not isinstance(key, Certificate):
        raise AuthenticationFailed(
            "the auth service accepts only certificates signed by the cluster's CAs"
        )
    now = auth.backend.clock()
    if key.cert_type is CertType.HOST:
        return await _host_identity(auth, username, key, now, peer)
    return await _user_identity(auth, username, key, now, peer)


async def _host_identity(
    auth: AuthServer, username: str, cert: Certificate, now: float, peer: Identity
) -> Identity:
    cluster = auth.cluster_name
    result = check_certificate(
        cert,
        cert_type=CertType.HOST,
        trusted_cas=auth.ca.public_keys("host"),
        principal=None,
        now=now,
    )
    if result.cluster != cluster:
        raise AuthenticationFailed(f"the certificate is not for cluster {cluster!r}")
    try:
        host_id = check_host_id(username)
    except ValueError:
        raise AuthenticationFailed("a host logs in with its UUID as the user name") from None
    if username != host_id or cert.key_id != f"{host_id}.{cluster}":
        raise AuthenticationFailed("the host certificate is not for this host id")
    role = result.service_role
    if role is None:
        raise AuthenticationFailed("the host certificate names no service role")
    try:
        registered = await auth.nodes.get_identity(host_id)
    except NotFound:
        raise AuthenticationFailed("this host is not registered; join the cluster again") from None
    if registered.public_key != cert.key.openssh_line():
        raise AuthenticationFailed("this host joined with another key")
    if role.value not in registered.roles:
        raise AuthenticationFailed(f"this host did not join as {role.value}")
    return attrs.evolve(
        peer,
        kind=IdentityKind(role.value),
        name=registered.name,
        host_id=host_id,
        valid_before=float(cert.valid_before),
    )


async def _user_identity(
    auth: AuthServer, username: str, cert: Certificate, now: float, peer: Identity
) -> Identity:
    try:
        address: str | None = str(ipaddress.ip_address(peer.source))
    except ValueError:
        address = None
    result = check_certificate(
        cert,
        cert_type=CertType.USER,
        trusted_cas=auth.ca.public_keys("user"),
        principal=None,
        now=now,
        source_address=address,
    )
    if result.cluster != auth.cluster_name:
        raise AuthenticationFailed(f"the certificate is not for cluster {auth.cluster_name!r}")
    if cert.key_id != username:
        raise AuthenticationFailed("log in with the user name your certificate was issued to")
    peer = attrs.evolve(peer, name=username, valid_before=float(cert.valid_before))
    if username == ADMIN_USER:
        try:
            await auth.backend.get(ADMIN_KEYS_PREFIX + _key_digest(cert.key.blob))
        except NotFound:
            raise AuthenticationFailed("this key is not an administrator's key") from None
        return attrs.evolve(peer, kind=IdentityKind.ADMIN)
    try:
        user = await auth.users.get(username)
    except (NotFound, ValueError):
        raise AuthenticationFailed(f"no such user {username!r}") from None
    roles = await auth.roles.get_many(user.spec.roles)
    return attrs.evolve(
        peer, kind=IdentityKind.USER, roles=tuple(roles), traits=dict(user.spec.traits)
    )


class AuthSSHHandler(SSHHandler):
    """One SSH connection to the auth service: who it is, then its API channels.

    Args:
        api: the API the connection's channels serve.
        join_time_limit: seconds a connection without a certificate (a host
            joining) may stay open; it is closed after that, joined or not.
    """

    def __init__(self, api: AuthAPI, *, join_time_limit: float = JOIN_TIME_LIMIT) -> None:
        self.api = api
        self.join_time_limit = join_time_limit
        self.identity: Identity | None = None

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        if request.method != "publickey" or not request.public_key:
            return False
        remote, source = _peer(conn)
        try:
            who = await identify(
                self.api.auth,
                request.username,
                request.public_key,
                remote_addr=remote,
                source=source,
            )
        except TrioportError as exc:
            log.info("auth API: refused %r from %s: %s", request.username[:64], remote, exc)
            if request.signature_ok:
                await self._audit_refusal(request.username, remote, str(exc))
            return False
        if request.signature_ok:
            self.identity = who
            if who.kind is IdentityKind.JOIN:
                conn.start_soon(self._end_join, conn)
        return True

    async def _end_join(self, conn: SSHConnection) -> None:
        await trio.sleep(self.join_time_limit)
        await conn.disconnect(DisconnectReason.BY_APPLICATION, "time to join is over")

    async def _audit_refusal(self, username: str, remote: str | None, reason: str) -> None:
        try:
            await self.api.auth.audit.emit(
                audit_log.AUTH_ATTEMPT_FAILURE,
                user=username,
                addr_remote=remote,
                success=False,
                error=reason,
                fields={"method": "publickey", "service": "auth"},
            )
        except (OSError, trio.ClosedResourceError):
            log.warning("could not write the audit event for a refused login")

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):  # type: ignore[no-untyped-def]
        who = self.identity
        if request.kind != "session" or who is None:
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                f"only session channels with the {SUBSYSTEM} subsystem are offered",
            )

        async def serve_api(chan: ChannelStream) -> None:
            while (req := await chan.next_request()) is not None:
                if isinstance(req.request, ev.Subsystem) and req.request.name == SUBSYSTEM:
                    await chan.reply(req, True)
                    await self.api.serve_channel(chan, who)
                    return
                await chan.reply(req, False)

        return serve_api


# --- identities on disk -------------------------------------------------------------------


async def _read_or_make_key(path: trio.Path) -> PrivateKey:
    try:
        return PrivateKey.from_openssh(await path.read_bytes())
    except FileNotFoundError:
        pass
    key = await trio.to_thread.run_sync(PrivateKey.generate)
    await trio.to_thread.run_sync(_write_new, os.fspath(path), key.to_openssh())
    return key


def _write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


async def issue_admin_identity(
    auth: AuthServer, directory: str | os.PathLike[str]
) -> ClientIdentity:
    """Write (or renew) the administrator's identity in ``directory`` and return it.

    The key is made the first time and kept; it is pinned in the store as an
    administrator's key; the certificate (key id :data:`trioport.authclient.ADMIN_USER`, role
    ``editor``) is signed anew.
    """
    folder = trio.Path(directory)
    await folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    await folder.chmod(0o700)
    key = await _read_or_make_key(folder / "key")
    await auth.backend.put(Item(ADMIN_KEYS_PREFIX + _key_digest(key.public.blob), b"admin"))
    roles = await auth.roles.get_many(["editor"])
    admin = User(metadata=Metadata(name=ADMIN_USER), spec=UserSpec(roles=["editor"]))  # type: ignore[list-item]
    cert = await auth.ca.sign_user_certificate(
        key.public, user=admin, roles=roles, now=auth.backend.clock()
    )
    await auth.audit.emit(
        audit_log.CERT_CREATE,
        user=ADMIN_USER,
        fields={
            "cert_type": "user",
            "identity": {
                "key_id": cert.key_id,
                "valid_before": cert.valid_before,
                "fingerprint": cert.fingerprint(),
            },
        },
    )
    identity = ClientIdentity(
        key=key,
        certificate=cert,
        host_cas=tuple(auth.ca.public_keys("host")),
        cluster_name=auth.cluster_name,
    )
    await trio.to_thread.run_sync(identity.save, os.fspath(folder))
    return identity


async def _renew_admin(auth: AuthServer, directory: trio.Path, identity: ClientIdentity) -> None:
    while True:
        cert = identity.certificate
        life = cert.valid_before - cert.valid_after
        wait = (cert.valid_before - auth.backend.clock()) - life / 2
        await trio.sleep(max(MIN_RENEWAL_WAIT, wait))
        try:
            identity = await issue_admin_identity(auth, directory)
        except (OSError, TrioportError) as exc:
            log.warning("could not renew the administrator's identity: %s", exc)


async def _host_key(auth: AuthServer, config: Config, folder: trio.Path) -> HostKey:
    """The auth service's own host key, and a fresh host certificate for it."""
    await folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = await _read_or_make_key(folder / "host_key")
    id_path = folder / "host_uuid"
    try:
        host_id = check_host_id((await id_path.read_text()).strip())
    except FileNotFoundError:
        host_id = str(uuid.uuid4())
        await id_path.write_text(host_id + "\n")
    name = config.teleport.nodename
    try:
        check_node_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc), key="teleport.nodename") from None
    addresses = ["127.0.0.1", "::1"]
    listen = config.auth_service.listen_addr.host
    try:
        if not ipaddress.ip_address(listen).is_unspecified:
            addresses.append(str(ipaddress.ip_address(listen)))
    except ValueError:
        pass
    cert = await auth.ca.sign_host_certificate(
        key.public,
        host_id=host_id,
        node_name=name,
        addresses=addresses,
        role=ServiceRole.AUTH,
        now=auth.backend.clock(),
    )
    return HostKey(key, cert.blob)


def proxy_public_addr(config: Config) -> str:
    """Where users reach the proxy's web endpoint, for invite links (``host:3080``)."""
    proxy = config.proxy_service
    if proxy.public_addr is not None:
        return str(proxy.public_addr)
    host = proxy.web_listen_addr.host
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = not host
    return str(
        Address(config.teleport.nodename if unspecified else host, proxy.web_listen_addr.port)
    )


def _limits(config: Config) -> ServerLimits:
    """``teleport.connection_limits`` as the auth port applies them.

    Every limit applies as configured except three. The per-source and
    distinct-source caps (``max_connections_per_source``, ``max_users``) are lifted
    to the service's own ``max_connections``: every node and proxy of the cluster
    holds a connection here, and thousands of nodes behind one NAT address all
    come from that one address. ``max_sessions`` is not applied either: a node's
    or proxy's one connection carries its API requests on parallel channels
    (capped by the SSH core's channel limit), not shells. The unauthenticated
    limits (per source too), the login grace time and the keep-alives apply as
    configured, so a flood of half-open handshakes is still refused.
    """
    limits: ServerLimits = config.teleport.connection_limits.server_limits()
    return dataclasses.replace(
        limits, max_connections_per_source=None, max_sources=None, max_sessions=None
    )


# --- the service ---------------------------------------------------------------------------


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    clock: Clock = time.time,
    bcrypt_cost: int = BCRYPT_COST,
) -> None:
    """Run the auth service until cancelled.

    Calls ``task_status.started(addresses)`` with the ``(host, port)`` pairs it
    listens on, once the administrator's identity is written and the port is open.

    Args:
        config: the configuration (``teleport.data_dir``, ``teleport.storage``,
            ``auth_service.*``, ``proxy_service.public_addr`` for invite links,
            ``teleport.connection_limits``).
        task_status: see trio's ``nursery.start``.
        clock: the wall clock (tests move it by hand).
        bcrypt_cost: bcrypt's work factor; keep the default outside tests.

    Raises:
        ConfigError: a bad setting (the cluster name differs from the stored one,
            a node name that cannot be a certificate principal, bad storage).
        BackendUnavailable: the store cannot be opened.
        OSError: the port cannot be opened.
    """
    data_dir = trio.Path(config.teleport.data_dir)
    await data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with (
        open_backend(config.teleport.storage, data_dir=os.fspath(data_dir), clock=clock) as backend,
        open_auth_server(
            backend,
            data_dir=data_dir,
            cluster_name=config.cluster_name,
            static_tokens=config.auth_service.tokens,
            bcrypt_cost=bcrypt_cost,
        ) as auth,
    ):
        host_key = await _host_key(auth, config, data_dir / AUTH_DIR)
        admin = await issue_admin_identity(auth, data_dir / ADMIN_DIR)
        api = AuthAPI(auth, proxy_addr=proxy_public_addr(config))
        ssh_config = ConnectionConfig(
            role=Role.SERVER, host_keys=[host_key], auth_methods=("publickey",)
        )
        listen = config.auth_service.listen_addr
        listeners = await trio.open_tcp_listeners(listen.port, host=listen.host or None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_renew_admin, auth, data_dir / ADMIN_DIR, admin)
            nursery.start_soon(watch_storage, backend, process_health())
            addresses = await nursery.start(
                serve_ssh, listeners, ssh_config, lambda: AuthSSHHandler(api), _limits(config)
            )
            log.info("auth service of %s listening on %s", auth.cluster_name, addresses)
            task_status.started(addresses)
