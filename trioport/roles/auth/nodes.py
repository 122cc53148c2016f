"""The node registry: who joined under which name, and who is alive.

Two kinds of records:

**Host identities** (``/hosts/<uuid>``), written when a host joins and kept until
an administrator removes them. An identity binds a UUID and a name to one public
key. Every name a host certificate carries besides its addresses (``UUID``,
``UUID.cluster``, ``name``, ``name.cluster``) is reserved under
``/host_names/<lowercased principal>`` with ``create``, so two hosts can never hold
certificates with a name in common. This is the fix for Teleport CVE-2021-41393
(forged host certificates): whatever a joining host asks for, it cannot get a
certificate for another registered host's name or UUID. A host may join again
under its own UUID and name only with the same public key (a certificate for a key
the asker does not hold is useless to it).

Names are host-name shaped (letters, digits, ``.``, ``-``, ``_``): no ``*`` or
``?``, which OpenSSH would read as glob patterns in a host certificate's
principals. Addresses must be IP addresses; they are principals too but are not
reserved (hosts behind one NAT share one).

**Heartbeats** (``/nodes/<uuid>``): a :class:`~trioport.resources.Node` with the
time it was last seen, written with an expiry ``ttl`` seconds ahead on every
heartbeat. Listings show a node as *online* while its last heartbeat is at most two
intervals old, then *offline*, until the backend drops it when the TTL runs out.
A host may only heartbeat as itself, under its registered name. Proxies can watch
``/nodes/`` and read items with :func:`decode_node_item`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Iterable, Sequence

import attrs
import trio

from trioport import metrics
from trioport.errors import AccessDenied, AlreadyExists, NotFound, StoreError
from trioport.resources import Node, from_dict, to_dict
from trioport.sshproto.keys import PublicKey
from trioport.store.backend import Backend, Item

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_NODE_TTL",
    "HOSTS_PREFIX",
    "HOST_NAMES_PREFIX",
    "NODES_PREFIX",
    "HostIdentity",
    "NodeRegistry",
    "NodeStatus",
    "check_addresses",
    "check_node_name",
    "decode_node_item",
]

#: Seconds between a node's heartbeats.
DEFAULT_HEARTBEAT_INTERVAL = 30.0
#: Seconds a node stays listed after its last heartbeat (Teleport's announce TTL).
DEFAULT_NODE_TTL = 600.0

HOSTS_PREFIX = "/hosts/"
HOST_NAMES_PREFIX = "/host_names/"
NODES_PREFIX = "/nodes/"

#: A host name as a certificate principal: no glob characters, no separators.
_NODE_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")


def check_node_name(name: str) -> str:
    """Return ``name`` if it may be a node's name, else raise ValueError."""
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            "a node name is 1 to 253 letters, digits, '.', '-' and '_',"
            " starting and ending with a letter or digit"
        )
    return name


def check_host_id(host_id: str) -> str:
    """Return ``host_id`` in canonical form if it is a UUID, else raise ValueError."""
    try:
        return str(uuid.UUID(host_id))
    except (ValueError, TypeError, AttributeError):
        raise ValueError("a host id is a UUID") from None


def check_addresses(addresses: Iterable[str]) -> list[str]:
    """The addresses as canonical IP address strings; ValueError for anything else."""
    out = []
    for address in addresses:
        try:
            text = str(ipaddress.ip_address(address))
        except ValueError:
            raise ValueError(f"not an IP address: {str(address)[:64]!r}") from None
        if text not in out:
            out.append(text)
    return out


@attrs.frozen
class HostIdentity:
    """A joined host: its UUID, name, public key and the roles it joined as."""

    host_id: str
    name: str
    #: OpenSSH public key line of the key its certificates certify.
    public_key: str
    roles: tuple[str, ...]
    joined: float

    def principals(self, cluster: str) -> list[str]:
        """The reserved names of its certificates (addresses excluded)."""
        names = [self.host_id, f"{self.host_id}.{cluster}", self.name, f"{self.name}.{cluster}"]
        return list(dict.fromkeys(names))

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> HostIdentity:
        try:
            raw = json.loads(data)
            return cls(
                host_id=raw["host_id"],
                name=raw["name"],
                public_key=raw["public_key"],
                roles=tuple(raw["roles"]),
                joined=float(raw["joined"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"corrupt host identity: {exc}") from None


@attrs.frozen
class NodeStatus:
    """A node as listed: its last report, when that was, and whether it is online."""

    node: Node
    last_seen: float
    expires: float | None
    online: bool

    @property
    def host_id(self) -> str:
        return self.node.metadata.name


def decode_node_item(item: Item, *, now: float, interval: float) -> NodeStatus:
    """Read a ``/nodes/`` item (from a range or a watch) as a :class:`NodeStatus`.

    Raises:
        StoreError: the item is not a heartbeat record.
    """
    try:
        raw = json.loads(item.value)
        node = from_dict(raw["node"], Node)
        last_seen = float(raw["last_seen"])
    except Exception as exc:  # ValueError, KeyError, ConfigError from the converter
        raise StoreError(f"corrupt heartbeat at {item.key}: {exc}") from None
    return NodeStatus(
        node=node,
        last_seen=last_seen,
        expires=item.expires,
        online=now - last_seen <= 2 * interval,
    )


class NodeRegistry:
    """Host identities and heartbeats of one cluster.

    Args:
        backend: the cluster's store.
        cluster_name: the cluster's name (the suffix of reserved principals).
        interval: seconds between heartbeats (a node is offline after two missed).
        ttl: seconds a node stays listed after its last heartbeat.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        cluster_name: str,
        interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        ttl: float = DEFAULT_NODE_TTL,
    ) -> None:
        if not 0 < 2 * interval < ttl:
            raise ValueError("the node TTL must be longer than two heartbeat intervals")
        self.backend = backend
        self.cluster_name = cluster_name
        self.interval = interval
        self.ttl = ttl

    # --- identities ------------------------------------------------------------

    async def reserve_identity(
        self, *, host_id: str, name: str, public_key: PublicKey, role: str
    ) -> tuple[HostIdentity, bool]:
        """Bind ``host_id`` and ``name`` to ``public_key``, or confirm they already are.

        Returns:
            The identity, and whether this call created it. A caller whose join
            fails afterwards calls :meth:`release_identity` if it did.

        Raises:
            ValueError: a malformed host id or name.
            AccessDenied: the UUID or one of the names belongs to another host, or
                the UUID is registered with another public key.
        """
        host_id = check_host_id(host_id)
        check_node_name(name)
        key_line = public_key.openssh_line()
        try:
            existing = await self.get_identity(host_id)
        except NotFound:
            existing = None
        if existing is not None:
            if existing.public_key != key_line or existing.name.lower() != name.lower():
                raise AccessDenied(
                    "this host id is registered to another host;"
                    " remove it first (tctl nodes rm) to join again"
                )
            if role not in existing.roles:
                updated = attrs.evolve(existing, roles=(*existing.roles, role))
                await self.backend.put(Item(HOSTS_PREFIX + host_id, updated.to_json()))
                return updated, False
            return existing, False

        identity = HostIdentity(
            host_id=host_id,
            name=name,
            public_key=key_line,
            roles=(role,),
            joined=self.backend.clock(),
        )
        reserved: list[str] = []
        try:
            for principal in identity.principals(self.cluster_name):
                key = HOST_NAMES_PREFIX + principal.lower()
                try:
                    await self.backend.create(Item(key, host_id.encode("ascii")))
                except AlreadyExists:
                    owner = (await self.backend.get(key)).value.decode("ascii", "replace")
                    if owner != host_id:
                        raise AccessDenied(
                            f"the name {principal!r} belongs to another host"
                        ) from None
                    continue
                reserved.append(key)
            await self.backend.create(Item(HOSTS_PREFIX + host_id, identity.to_json()))
        except BaseException:
            # Undo even when cancelled: a stale reservation would block the name.
            with trio.CancelScope(shield=True):
                await self._unreserve(reserved)
            raise
        return identity, True

    async def _unreserve(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                await self.backend.delete(key)
            except NotFound:
                pass

    async def release_identity(self, host_id: str) -> None:
        """Forget a host: its identity, its reserved names and its heartbeat.

        Raises:
            NotFound: no such host.
        """
        host_id = check_host_id(host_id)
        identity = await self.get_identity(host_id)
        await self.backend.delete(HOSTS_PREFIX + host_id)
        keys = [HOST_NAMES_PREFIX + p.lower() for p in identity.principals(self.cluster_name)]
        for key in keys:
            try:
                if (await self.backend.get(key)).value == host_id.encode("ascii"):
                    await self.backend.delete(key)
            except NotFound:
                pass
        try:
            await self.backend.delete(NODES_PREFIX + host_id)
        except NotFound:
            pass

    async def get_identity(self, host_id: str) -> HostIdentity:
        """The identity of ``host_id``.

        Raises:
            NotFound: no such host.
            ValueError: not a UUID.
        """
        item = await self.backend.get(HOSTS_PREFIX + check_host_id(host_id))
        return HostIdentity.from_json(item.value)

    async def list_identities(self) -> list[HostIdentity]:
        """Every joined host."""
        items = await self.backend.get_range(HOSTS_PREFIX)
        return [HostIdentity.from_json(item.value) for item in items]

    # --- heartbeats ------------------------------------------------------------

    async def heartbeat(self, node: Node, *, caller_host_id: str) -> NodeStatus:
        """Record that ``node`` is alive now, with what it reports.

        Args:
            node: the report: ``metadata.name`` is its UUID, ``spec.hostname`` its
                name, ``metadata.labels`` and ``spec.cmd_labels`` its labels.
            caller_host_id: the UUID the caller authenticated as (its certificate).

        Raises:
            AccessDenied: the report is for another host, or under another name
                than the one the host joined with, or the host is not registered.
        """
        host_id = check_host_id(caller_host_id)
        if node.metadata.name != host_id:
            raise AccessDenied("a host may only report its own heartbeat")
        metrics.HEARTBEATS.inc()
        try:
            identity = await self.get_identity(host_id)
        except NotFound:
            raise AccessDenied("this host is not registered; join the cluster again") from None
        if node.spec.hostname.lower() != identity.name.lower():
            raise AccessDenied(
                f"this host joined as {identity.name!r} and cannot report another name"
            )
        now = self.backend.clock()
        value = json.dumps({"last_seen": now, "node": to_dict(node)}).encode("utf-8")
        item = await self.backend.put(Item(NODES_PREFIX + host_id, value, expires=now + self.ttl))
        return decode_node_item(item, now=now, interval=self.interval)

    async def get(self, host_id: str) -> NodeStatus:
        """The last heartbeat of one node.

        Raises:
            NotFound: no live heartbeat.
        """
        item = await self.backend.get(NODES_PREFIX + check_host_id(host_id))
        return decode_node_item(item, now=self.backend.clock(), interval=self.interval)

    async def list(self) -> list[NodeStatus]:
        """Every node whose heartbeat has not expired, online or offline, by UUID."""
        now = self.backend.clock()
        items = await self.backend.get_range(NODES_PREFIX)
        return [decode_node_item(item, now=now, interval=self.interval) for item in items]

    async def find(self, name: str) -> list[NodeStatus]:
        """The listed nodes whose host name or UUID is ``name`` (case-insensitive)."""
        wanted = name.lower()
        return [
            s
            for s in await self.list()
            if s.host_id == wanted or s.node.spec.hostname.lower() == wanted
        ]
