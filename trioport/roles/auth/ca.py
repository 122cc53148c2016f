"""The cluster's certificate authorities: made on first start, then signing every certificate.

A cluster has two CAs (Teleport's layout): the **user CA** signs user certificates
(``sshd`` trusts it through ``TrustedUserCAKeys``), the **host CA** signs host
certificates (clients trust it through ``@cert-authority`` in ``known_hosts``).

Storage keeps the halves apart so the private keys can never leak through a
listing or a watch of the public resources:

- ``/authorities/<user|host>/<cluster>``: the public :class:`CertAuthority` (no
  private keys), which nodes, proxies and ``tctl auth export`` read;
- ``/authority_keys/<user|host>/<cluster>``: the same resource *with* its private
  keys, read only here;
- ``/cluster/name``: the cluster name, fixed at first start (renaming a cluster
  would invalidate every certificate, so a different ``cluster_name`` later is an
  error rather than a silent new CA).

:func:`open_cluster_authorities` is idempotent and safe when several auth servers
start at once: each private half is written with ``create``; whoever loses the race
loads the winner's key, and the public half is always derived from the private one.

Signing (:class:`ClusterAuthorities`):

- user certificates: key id = user name; principals = the logins her roles allow
  (:func:`trioport.rbac.principals_for`: never empty); valid from one minute in
  the past (clock skew) for the requested TTL, clamped by :func:`trioport.rbac.cert_ttl`
  to [1 min, 30 h] and the roles' ``max_session_ttl``; extensions ``permit-pty``,
  forwarding as the roles allow, trioport's roles and cluster extensions.
- host certificates: principals = the host's UUID, ``UUID.cluster``, its name,
  ``name.cluster`` and its addresses; trioport's service-role and cluster
  extensions. Which names a host may have is decided by the node registry before
  anything reaches this module.

RSA CAs sign with ``rsa-sha2-512``, in a worker thread (at most
:data:`MAX_CONCURRENT_SIGNATURES` at a time, Teleport's limit); Ed25519 and ECDSA
signatures are cheap and made inline.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

import attrs
import trio

from trioport import rbac
from trioport.errors import AlreadyExists, ConfigError, NotFound
from trioport.resources import (
    CertAuthority,
    CertAuthoritySpec,
    Metadata,
    Role,
    User,
    check_name,
)
from trioport.sshproto.certs import (
    EXT_PERMIT_AGENT,
    EXT_PERMIT_PORT,
    EXT_PERMIT_PTY,
    VALID_FOREVER,
    Certificate,
    CertType,
    ServiceRole,
    sign_certificate,
    trioport_extensions,
)
from trioport.sshproto.keys import DEFAULT_RSA_BITS, PrivateKey, PublicKey
from trioport.store.backend import Backend, Item

from ... import metrics
from ._storage import decode, encode

__all__ = [
    "CA_KEY_TYPES",
    "CA_TYPES",
    "CLOCK_SKEW",
    "DEFAULT_CA_KEY_TYPE",
    "MAX_CONCURRENT_SIGNATURES",
    "ClusterAuthorities",
    "authorized_keys_line",
    "known_hosts_line",
    "open_cluster_authorities",
]

CA_TYPES = ("user", "host")
DEFAULT_CA_KEY_TYPE = "ssh-ed25519"
CA_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
#: A user certificate is valid from this many seconds before it was signed.
CLOCK_SKEW = 60
#: RSA signatures running at once (Teleport bounds concurrent signing at 10).
MAX_CONCURRENT_SIGNATURES = 10

CLUSTER_NAME_KEY = "/cluster/name"
PUBLIC_PREFIX = "/authorities/"
PRIVATE_PREFIX = "/authority_keys/"

#: Standard flag extensions take no data (PROTOCOL.certkeys "Extensions"): sign
#: them as flags whatever value the RBAC layer gave.
_FLAG_EXTENSIONS = frozenset({EXT_PERMIT_PTY, EXT_PERMIT_PORT, EXT_PERMIT_AGENT})


def public_key_path(ca_type: str, cluster: str) -> str:
    """Where the public half of a CA is stored."""
    return f"{PUBLIC_PREFIX}{ca_type}/{cluster}"


def private_key_path(ca_type: str, cluster: str) -> str:
    """Where the private half of a CA is stored (read by the auth service only)."""
    return f"{PRIVATE_PREFIX}{ca_type}/{cluster}"


def authorized_keys_line(ca: CertAuthority) -> list[str]:
    """``cert-authority`` lines for ``authorized_keys`` (or keys for ``TrustedUserCAKeys``).

    One line per public key of the user CA, e.g.
    ``cert-authority ssh-ed25519 AAAA... type=user&clustername=example``.
    """
    comment = f"type={ca.spec.type}&clustername={ca.spec.cluster_name}"
    return [f"cert-authority {_key_part(k)} {comment}" for k in ca.spec.public_keys]


def known_hosts_line(ca: CertAuthority, patterns: Sequence[str] | None = None) -> list[str]:
    """``@cert-authority`` lines for ``known_hosts``, one per public key of the host CA.

    Args:
        ca: the host CA.
        patterns: host patterns the CA is trusted for; by default
            ``*.<cluster>`` (every host certificate carries ``name.cluster``).
    """
    hosts = ",".join(patterns or [f"*.{ca.spec.cluster_name}"])
    comment = f"type={ca.spec.type}&clustername={ca.spec.cluster_name}"
    return [f"@cert-authority {hosts} {_key_part(k)} {comment}" for k in ca.spec.public_keys]


def _key_part(line: str) -> str:
    return " ".join(line.split()[:2])


@attrs.define(eq=False)
class _LoadedCA:
    resource: CertAuthority  # public half
    key: PrivateKey

    def __repr__(self) -> str:
        return f"<CA {self.resource.spec.type} {self.key.public.fingerprint()}>"


class ClusterAuthorities:
    """The loaded user and host CAs of one cluster; signs certificates.

    Made by :func:`open_cluster_authorities`; holds the private keys in memory only.
    """

    def __init__(self, cluster_name: str, user: _LoadedCA, host: _LoadedCA) -> None:
        self.cluster_name = cluster_name
        self._cas = {"user": user, "host": host}
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_SIGNATURES)

    @property
    def user_ca(self) -> CertAuthority:
        """The public user CA resource."""
        return self._cas["user"].resource

    @property
    def host_ca(self) -> CertAuthority:
        """The public host CA resource."""
        return self._cas["host"].resource

    def public_keys(self, ca_type: str) -> list[PublicKey]:
        """The CA's public keys (what to trust), for ``"user"`` or ``"host"``."""
        return [self._cas[ca_type].key.public]

    def __repr__(self) -> str:
        return f"<ClusterAuthorities {self.cluster_name!r} {self._cas['user']} {self._cas['host']}>"

    async def sign_user_certificate(
        self,
        public_key: PublicKey,
        *,
        user: User,
        roles: Sequence[Role],
        now: float,
        ttl: float | None = None,
    ) -> Certificate:
        """A user certificate for ``public_key`` as the auth service issues it to ``user``.

        Args:
            public_key: the user's (plain) public key; her private key never comes here.
            user: the user (her name is the key id; her traits expand role logins).
            roles: her roles, already loaded.
            now: the current wall time.
            ttl: the requested lifetime in seconds (23 h when ``None``); clamped to
                [1 minute, 30 hours] and to the smallest ``max_session_ttl``.

        Raises:
            KeyFormatError: the key cannot be certified (a certificate, an unsupported
                type) or a role name cannot go into the roles extension.
        """
        lifetime = rbac.cert_ttl(ttl, roles)
        principals = rbac.principals_for(roles, user.spec.traits)
        extensions: dict[str, str | None] = {
            name: None if name in _FLAG_EXTENSIONS else value
            for name, value in rbac.cert_extensions(roles).items()
        }
        extensions[EXT_PERMIT_PTY] = None
        extensions.update(
            trioport_extensions(roles=[r.metadata.name for r in roles], cluster=self.cluster_name)
        )
        start = int(now)
        return await self._sign(
            "user",
            public_key,
            cert_type=CertType.USER,
            key_id=user.metadata.name,
            principals=principals,
            valid_after=max(0, start - CLOCK_SKEW),
            valid_before=start + lifetime,
            extensions=extensions,
        )

    async def sign_host_certificate(
        self,
        public_key: PublicKey,
        *,
        host_id: str,
        node_name: str,
        addresses: Iterable[str] = (),
        role: ServiceRole | str = ServiceRole.NODE,
        now: float,
        ttl: float | None = None,
    ) -> Certificate:
        """A host certificate for a joined host.

        The caller (the node registry) has already checked that this host owns
        ``host_id`` and ``node_name``; this only formats and signs.

        Args:
            public_key: the host's own public key.
            host_id: its UUID.
            node_name: its registered name.
            addresses: IP addresses it is reached at (each becomes a principal).
            role: its service role (node, proxy, auth).
            now: the current wall time.
            ttl: lifetime in seconds; ``None`` means no expiry (as Teleport's host
                certificates), since hosts have no renewal flow yet.

        Raises:
            KeyFormatError: the key cannot be certified, or an unknown service role.
        """
        cluster = self.cluster_name
        principals: list[str] = []
        for name in (host_id, f"{host_id}.{cluster}", node_name, f"{node_name}.{cluster}"):
            if name not in principals:
                principals.append(name)
        for address in addresses:
            if address not in principals:
                principals.append(address)
        if ServiceRole(role) is ServiceRole.PROXY and "localhost" not in principals:
            # A proxy is the way in, and on its own machine people dial it as
            # localhost (OpenSSH then checks that name). Nodes never get it.
            principals.append("localhost")
        start = int(now)
        return await self._sign(
            "host",
            public_key,
            cert_type=CertType.HOST,
            key_id=f"{host_id}.{cluster}",
            principals=principals,
            valid_after=max(0, start - CLOCK_SKEW),
            valid_before=VALID_FOREVER if ttl is None else start + max(1, int(ttl)),
            extensions=trioport_extensions(service_role=role, cluster=cluster),
        )

    async def _sign(
        self,
        ca_type: str,
        public_key: PublicKey,
        *,
        cert_type: CertType,
        key_id: str,
        principals: list[str],
        valid_after: int,
        valid_before: int,
        extensions: dict[str, str | None],
    ) -> Certificate:
        ca = self._cas[ca_type].key
        metrics.CERTIFICATES.labels(kind=ca_type).inc()
        nonce = secrets.token_bytes(32)
        serial = secrets.randbits(63)

        def sign() -> Certificate:
            return sign_certificate(
                ca,
                public_key,
                cert_type=cert_type,
                key_id=key_id,
                principals=principals,
                valid_after=valid_after,
                valid_before=valid_before,
                nonce=nonce,
                serial=serial,
                extensions=extensions,
            )

        if ca.public.key_type == "ssh-rsa":
            # rsa-sha2-512 is the default signature of an RSA CA key (certs.py).
            return await trio.to_thread.run_sync(sign, limiter=self._limiter)
        return sign()


async def open_cluster_authorities(
    backend: Backend,
    cluster_name: str,
    *,
    key_type: str = DEFAULT_CA_KEY_TYPE,
    rsa_bits: int = DEFAULT_RSA_BITS,
) -> ClusterAuthorities:
    """Load the cluster's CAs, making them first if this is the cluster's first start.

    Args:
        backend: the cluster's store.
        cluster_name: the configured name (``auth_service.cluster_name``, default
            the host name). Fixed at first start.
        key_type: the key type of new CAs (``ssh-ed25519`` by default; one of
            :data:`CA_KEY_TYPES`). Existing CAs keep theirs.
        rsa_bits: modulus size of new RSA CAs.

    Raises:
        ConfigError: ``cluster_name`` differs from the name the cluster was created
            with, or ``key_type`` is unknown.
        StoreError: the store holds something that is not a CA where one should be.
    """
    try:
        check_name(cluster_name, "cluster name")
    except ValueError as exc:
        raise ConfigError(str(exc), key="auth_service.cluster_name") from None
    if key_type not in CA_KEY_TYPES:
        raise ConfigError(
            f"unknown CA key type {key_type!r}; expected one of {', '.join(CA_KEY_TYPES)}"
        )
    name = await _cluster_name(backend, cluster_name)
    loaded = {}
    for ca_type in CA_TYPES:
        loaded[ca_type] = await _load_or_create(backend, ca_type, name, key_type, rsa_bits)
    return ClusterAuthorities(name, loaded["user"], loaded["host"])


async def _cluster_name(backend: Backend, wanted: str) -> str:
    try:
        await backend.create(Item(CLUSTER_NAME_KEY, wanted.encode("utf-8")))
        return wanted
    except AlreadyExists:
        pass
    stored = (await backend.get(CLUSTER_NAME_KEY)).value.decode("utf-8")
    if stored != wanted:
        raise ConfigError(
            f"this cluster is named {stored!r}; a cluster cannot be renamed"
            f" (set cluster_name: {stored} or start from an empty data directory)",
            key="auth_service.cluster_name",
        )
    return stored


async def _load_or_create(
    backend: Backend, ca_type: str, cluster: str, key_type: str, rsa_bits: int
) -> _LoadedCA:
    private_path = private_key_path(ca_type, cluster)
    try:
        stored = decode(await backend.get(private_path), CertAuthority)
    except NotFound:
        key = await trio.to_thread.run_sync(lambda: PrivateKey.generate(key_type, bits=rsa_bits))
        candidate = _resource(ca_type, cluster, key)
        try:
            await backend.create(Item(private_path, encode(candidate)))
            stored = candidate
        except AlreadyExists:  # another auth server made it first: use theirs
            stored = decode(await backend.get(private_path), CertAuthority)
    key = PrivateKey.from_openssh(stored.spec.private_keys[0].encode("ascii"))
    public = stored.public()
    try:
        await backend.create(Item(public_key_path(ca_type, cluster), encode(public)))
    except AlreadyExists:
        current = decode(await backend.get(public_key_path(ca_type, cluster)), CertAuthority)
        if current.spec.public_keys != public.spec.public_keys:
            # The public half is derived data: repair it from the private half.
            await backend.put(Item(public_key_path(ca_type, cluster), encode(public)))
    return _LoadedCA(public, key)


def _resource(ca_type: str, cluster: str, key: PrivateKey) -> CertAuthority:
    return CertAuthority(
        metadata=Metadata(
            name=cluster,
            description=f"{ca_type} certificate authority of {cluster}",
        ),
        spec=CertAuthoritySpec(
            type=ca_type,  # type: ignore[arg-type]
            cluster_name=cluster,
            public_keys=[key.public.openssh_line()],
            private_keys=[key.to_openssh().decode("ascii")],
        ),
    )
