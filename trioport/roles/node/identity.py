"""The node's identity: its own host key, its host certificate, and the cluster's CAs.

On its first start a node has no identity. It makes an Ed25519 key, keeps it in
its data directory, and joins the cluster with the join token from the
configuration (``teleport.auth_token``; a path to a file holding the token works
too, as in Teleport): only the public key goes to the auth service, which signs a
host certificate for it (:func:`trioport.authclient.join_cluster`). From then on
the node logs in to the auth service with that certificate and presents it to SSH
clients.

On disk, ``DATA_DIR/node/`` (mode 0700) holds:

====================  ===================================================================
``key``               the host's private key, OpenSSH format, mode 0600; never sent anywhere
``key-cert.pub``      its host certificate (principals: UUID, ``UUID.cluster``, the node
                      name, ``name.cluster`` and the node's IP addresses)
``known_hosts``       ``@cert-authority *`` lines of the cluster's host CA (to check auth)
``user_ca.pub``       the cluster's user CA keys, one per line (to check users' certificates)
====================  ===================================================================

every file mode 0600, each replaced atomically. The user CA is kept so that the
node checks users' certificates without asking the auth service, and goes on
doing so while the auth service is away.

When the node's addresses change (it moved, or listens on another interface), the
next start asks the auth service for a certificate naming the new ones
(:func:`renew_certificate`), under the same UUID and name.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence

import attrs
import trio

from trioport.authclient import (
    AuthServiceUnavailable,
    ClientIdentity,
    JoinResult,
    connect_auth,
    join_cluster,
)
from trioport.config import Address, Config
from trioport.errors import ConfigError, KeyFormatError, TrioportError
from trioport.sshproto import HostKey
from trioport.sshproto.certs import Certificate
from trioport.sshproto.keys import PrivateKey, PublicKey, public_key_from_line

from .authlink import backoff_delay

__all__ = [
    "IDENTITY_DIR",
    "NodeIdentity",
    "advertise_address",
    "auth_servers",
    "join",
    "load_identity",
    "load_or_join",
    "read_token",
    "renew_certificate",
]

log = logging.getLogger("trioport.node.identity")

#: The node's directory under the data directory.
IDENTITY_DIR = "node"
_KEY = "key"
_CERT = "key-cert.pub"
_USER_CA = "user_ca.pub"


@attrs.frozen(repr=False)
class NodeIdentity:
    """A joined node: its key and host certificate, the host CA and the user CA."""

    client: ClientIdentity
    user_cas: tuple[PublicKey, ...]

    def __repr__(self) -> str:
        return f"<NodeIdentity {self.host_id} of {self.cluster_name!r}>"

    @property
    def key(self) -> PrivateKey:
        return self.client.key

    @property
    def certificate(self) -> Certificate:
        return self.client.certificate

    @property
    def cluster_name(self) -> str:
        return self.client.cluster_name

    @property
    def host_id(self) -> str:
        """The node's UUID (its certificate's key id is ``UUID.cluster``)."""
        return self.client.username

    @property
    def host_key(self) -> HostKey:
        """The key with its certificate, as the SSH server presents it."""
        return HostKey(self.key, self.certificate.blob)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write every file (blocking: call through a thread)."""
        self.client.save(directory)
        comment = f"user-ca@{self.cluster_name}"
        lines = "".join(k.openssh_line(comment) + "\n" for k in self.user_cas)
        _write_private(os.path.join(os.fspath(directory), _USER_CA), lines.encode())


def _write_private(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600, atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_user_cas(path: str) -> tuple[PublicKey, ...]:
    with open(path, encoding="ascii") as f:
        keys = tuple(public_key_from_line(line) for line in f if line.strip())
    if not keys:
        raise KeyFormatError(f"{path} holds no user CA key")
    return keys


def load_identity(directory: str | os.PathLike[str]) -> NodeIdentity | None:
    """The identity saved in ``directory``, or None if the node has not joined yet.

    Raises:
        KeyFormatError: the files are there but damaged (the node does not join
            again on its own: its UUID and name are taken by the old key).
    """
    path = os.fspath(directory)
    if not os.path.exists(os.path.join(path, _CERT)):
        return None
    try:
        client = ClientIdentity.load(path)
        user_cas = _read_user_cas(os.path.join(path, _USER_CA))
    except (OSError, TrioportError, ValueError) as exc:
        raise KeyFormatError(
            f"the node's identity in {path} is damaged ({exc}); remove the directory"
            " and the node (tctl nodes rm) and join again with a new token"
        ) from None
    return NodeIdentity(client=client, user_cas=user_cas)


def read_token(config: Config) -> str:
    """The join token: ``teleport.auth_token``, or the contents of the file it names.

    Raises:
        ConfigError: no token is configured, or its file cannot be read.
    """
    token = (config.teleport.auth_token or "").strip()
    if not token:
        raise ConfigError(
            "the node has not joined the cluster yet and has no join token;"
            " create one with 'tctl tokens add --type=node' and pass it with --token",
            key="teleport.auth_token",
        )
    if token.startswith("/"):
        try:
            with open(token, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the token file {token}: {exc.strerror}", key="teleport.auth_token"
            ) from None
    return token


def auth_servers(config: Config) -> list[Address]:
    """Where the auth service is: ``teleport.auth_servers``, else this process's own."""
    if config.teleport.auth_servers:
        return list(config.teleport.auth_servers)
    if config.auth_service.enabled:
        return [config.auth_service.listen_addr]
    raise ConfigError("the node needs the address of the auth service", key="teleport.auth_servers")


def advertise_address(config: Config, auth: Address) -> str:
    """The IP address other hosts reach this node at.

    The listen address when it is a specific one; otherwise the local address the
    kernel would use to reach the auth service (a UDP ``connect`` sends nothing).
    """
    host = config.ssh_service.listen_addr.host
    if host not in ("", "0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
        try:
            return socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0]
        except OSError:
            pass
    target = auth.host if auth.host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    try:
        family = socket.getaddrinfo(target, auth.port, proto=socket.IPPROTO_UDP)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, auth.port))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _identity_from(result: JoinResult, key: PrivateKey) -> NodeIdentity:
    user_cas = tuple(public_key_from_line(line) for line in result.user_ca.spec.public_keys)
    return NodeIdentity(client=result.identity(key), user_cas=user_cas)


async def _load_or_make_key(path: str) -> PrivateKey:
    try:
        return PrivateKey.from_openssh(await trio.Path(path).read_bytes())
    except FileNotFoundError:
        pass
    key = await trio.to_thread.run_sync(PrivateKey.generate)
    await trio.to_thread.run_sync(_write_private, path, key.to_openssh())
    return key


async def join(
    config: Config,
    directory: str | os.PathLike[str],
    *,
    addresses: Iterable[str],
    servers: Sequence[Address],
    connect_timeout: float = 10.0,
    max_attempts: int | None = None,
) -> NodeIdentity:
    """Join the cluster with the configured token and save the identity.

    The auth service may not be up yet (it starts in the same ``trioport run``, or
    on another machine): unreachable servers are retried with backoff, each in
    turn. A refused token is final.

    Raises:
        ConfigError: no token.
        AuthenticationFailed: the token is invalid, expired or used.
        AccessDenied: the node name belongs to another host.
        AuthServiceUnavailable: ``max_attempts`` attempts failed to reach auth.
    """
    token = read_token(config)
    path = os.fspath(directory)
    await trio.to_thread.run_sync(lambda: os.makedirs(path, mode=0o700, exist_ok=True))
    os.chmod(path, 0o700)
    key = await _load_or_make_key(os.path.join(path, _KEY))
    attempt = 0
    while True:
        where = servers[attempt % len(servers)]
        try:
            result = await join_cluster(
                where,
                token=token,
                key=key,
                node_name=config.teleport.nodename,
                role="node",
                addresses=list(addresses),
                connect_timeout=connect_timeout,
            )
            break
        except AuthServiceUnavailable as exc:
            attempt += 1
            if max_attempts is not None and attempt >= max_attempts:
                raise
            delay = backoff_delay(attempt - 1)
            log.warning("cannot join yet (%s); trying again in %.1fs", exc, delay)
            await trio.sleep(delay)
    identity = _identity_from(result, key)
    await trio.to_thread.run_sync(identity.save, path)
    log.info(
        "joined cluster %s as %s (%s)",
        identity.cluster_name,
        config.teleport.nodename,
        identity.host_id,
    )
    return identity


async def renew_certificate(
    identity: NodeIdentity,
    directory: str | os.PathLike[str],
    *,
    addresses: Iterable[str],
    servers: Sequence[Address],
    connect_timeout: float = 5.0,
) -> NodeIdentity:
    """A new host certificate naming ``addresses``, if the current one lacks any.

    Best effort: if the auth service cannot be reached within ``connect_timeout`` the old
    identity is returned (the node still works under its UUID and name).
    """
    wanted = list(addresses)
    principals = set(identity.certificate.principals)
    if all(a in principals for a in wanted):
        return identity
    for where in servers:
        try:
            with trio.fail_after(connect_timeout):
                async with connect_auth(
                    where, identity.client, connect_timeout=connect_timeout
                ) as client:
                    cert = await client.renew_host_certificate(identity.key.public, wanted)
                    cas = await client.authorities()
        except (TrioportError, OSError, trio.TooSlowError) as exc:
            log.warning("could not renew the host certificate at %s: %s", where, exc)
            continue
        user_cas = tuple(
            public_key_from_line(line) for line in cas["user"]["resource"]["spec"]["public_keys"]
        )
        client_identity = attrs.evolve(identity.client, certificate=cert)
        renewed = NodeIdentity(client=client_identity, user_cas=user_cas or identity.user_cas)
        await trio.to_thread.run_sync(renewed.save, os.fspath(directory))
        log.info("renewed the host certificate for addresses %s", ", ".join(wanted))
        return renewed
    return identity


async def load_or_join(
    config: Config,
    *,
    addresses: Iterable[str],
    servers: Sequence[Address] | None = None,
) -> NodeIdentity:
    """The node's identity from ``DATA_DIR/node``, joining the cluster first if needed."""
    directory = os.path.join(config.teleport.data_dir, IDENTITY_DIR)
    servers = list(servers) if servers is not None else auth_servers(config)
    wanted = list(addresses)
    identity = await trio.to_thread.run_sync(load_identity, directory)
    if identity is None:
        return await join(config, directory, addresses=wanted, servers=servers)
    return await renew_certificate(identity, directory, addresses=wanted, servers=servers)
