"""Which node a user means, and whether she may reach it.

A user names a node the way she would name any SSH host: its registered name
(``node1``), that name under the cluster (``node1.example.com``: OpenSSH's ``%h``
after ``tsh config``), its UUID, or the address it reports (``10.0.0.5``). She may
also name it by labels (``env=prod`` or ``env=prod,team=db``), which must then pick
exactly one node. :func:`parse_target` reads the ``proxy:HOST:PORT[@CLUSTER]``
subsystem name OpenSSH's ``ProxyCommand ssh -s`` sends.

:class:`NodeRouter` answers with a :class:`Route`: the node as registered and the
address to dial (always the one the node reports, whatever port the user asked
for, so ``ssh node1.example.com`` works with OpenSSH's default port 22). A node is
reachable only if the user's roles let her *see* it (:func:`trioport.rbac.can_see_node`,
asked of the auth service with ``POST /v1/access``). Whether her login is allowed
is the node's decision, made again end to end; the proxy only hides what her roles
hide, and says why:

- a node that does not exist (or that she may not see, when nothing she may see
  matches either) is :class:`~trioport.errors.NotFound`, with the nodes she can
  reach;
- a node that exists but that her roles hide is
  :class:`~trioport.errors.AccessDenied`, naming the role that denies it, or
  saying that no role's ``node_labels`` match it.

The node list comes from the auth service (``GET /v1/nodes`` as the proxy) and is
kept for :data:`NODE_CACHE_SECONDS`; access answers are asked afresh for every
connection, so a role change applies to the next one.

**While no auth server answers**, the router goes on with the last answers it
got: the node list and each (user, node, login) access answer are kept, and
used for up to ``stale_seconds`` (:data:`STALE_SECONDS`, 5 minutes, as the
node's own cache of login decisions) after they were received, but only when
the auth service cannot be reached (:class:`~trioport.authclient.AuthServiceUnavailable`
or a connection that broke mid-request). An answer the auth service gives (a
refusal included) is always the one used, and a cached refusal stays a refusal.
With a usable cached answer the router waits only :data:`FALLBACK_WAIT_SECONDS`
for the auth link instead of the link's usual wait, so new connections during an
outage are not held up. Without one (never asked, or older than
``stale_seconds``) the connection is refused saying that the auth service is
unavailable and the proxy has no recent answer to go on.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from trioport.authclient import AuthServiceUnavailable
from trioport.config import NODE_PORT, Address, parse_addr
from trioport.errors import AccessDenied, NotFound
from trioport.rbac import match_labels

__all__ = [
    "FALLBACK_WAIT_SECONDS",
    "NODE_CACHE_SECONDS",
    "STALE_SECONDS",
    "SUBSYSTEM_NODES",
    "NodeInfo",
    "NodeRouter",
    "Route",
    "Target",
    "dial_address",
    "parse_selector",
    "parse_target",
]

log = logging.getLogger("trioport.proxy.router")

#: The proxy's subsystem that lists the nodes a user may reach (as JSON).
SUBSYSTEM_NODES = "trioport-nodes"
#: Seconds the node list is reused between lookups.
NODE_CACHE_SECONDS = 2.0
#: Seconds the last answers of the auth service are used while it cannot be reached.
STALE_SECONDS = 300.0
#: Seconds to wait for the auth link when a cached answer could be used instead.
FALLBACK_WAIT_SECONDS = 1.0
#: Access answers kept for outages, at most (the oldest are forgotten first).
ANSWERS_KEPT = 10_000
#: Names listed in a "no such node" error, at most.
_LISTED = 20
#: What "the auth service cannot be reached" looks like to the router.
_UNREACHABLE = (AuthServiceUnavailable, trio.BrokenResourceError, trio.ClosedResourceError)


class AuthAPI(Protocol):
    """What the router needs of :class:`trioport.authclient.AuthClient`."""

    async def list_nodes(self) -> list[dict[str, Any]]: ...

    async def access(
        self,
        user: str,
        *,
        login: str | None = None,
        node: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]: ...


@attrs.frozen
class Target:
    """What the user asked for: ``host`` (name, UUID, address or labels), ``port``, cluster."""

    host: str
    port: int
    cluster: str | None = None


def parse_target(subsystem: str) -> Target:
    """Read ``proxy:HOST:PORT`` or ``proxy:HOST:PORT@CLUSTER`` (HOST may be ``[v6]``).

    The port is optional (``proxy:HOST``). Teleport's proxy subsystem has the same
    shape, so OpenSSH configurations written for it work here.

    Raises:
        ValueError: not a proxy subsystem request, with what is wrong.
    """
    if not subsystem.startswith("proxy:"):
        raise ValueError("expected a subsystem named proxy:HOST:PORT")
    rest = subsystem.removeprefix("proxy:")
    cluster: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        rest, cluster = rest[:at], rest[at + 1 :]
        if not cluster:
            raise ValueError("expected a cluster name after '@'")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError("missing ']' after an IPv6 address")
        host, tail = rest[1:end], rest[end + 1 :]
        port_text = tail.removeprefix(":") if tail else ""
        if tail and not tail.startswith(":"):
            raise ValueError("expected ':PORT' after ']'")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            host, port_text = rest, ""
    if not host:
        raise ValueError("expected a node name in proxy:HOST:PORT")
    if len(host) > 512:
        raise ValueError("the node name is too long")
    port = NODE_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"not a port number: {port_text[:16]!r}")
        port = int(port_text)
    return Target(host, port, cluster)


def parse_selector(text: str) -> dict[str, str] | None:
    """``env=prod,team=db`` as labels, or None if ``text`` is not a label selector."""
    if "=" not in text:
        return None
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value in a label selector, got {part[:32]!r}")
        labels[key.strip()] = value.strip()
    return labels


@attrs.frozen
class NodeInfo:
    """A registered node as the router and ``tsh ls`` see it."""

    host_id: str
    hostname: str
    addr: str
    labels: Mapping[str, str]
    online: bool = True

    @classmethod
    def from_listing(cls, entry: Mapping[str, Any]) -> NodeInfo:
        """One entry of ``GET /v1/nodes``."""
        return cls(
            host_id=str(entry["host_id"]),
            hostname=str(entry["hostname"]),
            addr=str(entry["addr"]),
            labels={str(k): str(v) for k, v in dict(entry.get("labels") or {}).items()},
            online=bool(entry.get("online", True)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "hostname": self.hostname,
            "addr": self.addr,
            "labels": dict(self.labels),
            "online": self.online,
        }


@attrs.frozen
class Route:
    """Where to send a user's connection: the node and the address to dial."""

    node: NodeInfo
    dial: Address


def dial_address(addr: str) -> Address:
    """The address to connect to for a node's reported ``host:port``.

    A node listening on every interface reports ``0.0.0.0`` (or ``::``); that is
    taken to mean this machine, as :mod:`trioport.authclient` does for the auth
    service. Nodes on other machines must report an address the proxy can reach.

    Raises:
        ValueError: not an address.
    """
    parsed = parse_addr(addr, NODE_PORT, default_host="127.0.0.1")
    host = parsed.host
    if host in ("0.0.0.0", ""):  # noqa: S104 - a listen address: reach it on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return Address(host, parsed.port)


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False


class NodeRouter:
    """Finds nodes for users, with their roles' say (see the module docstring).

    Args:
        auth: the proxy's auth API client, or a getter returning the current one
            (called with no argument, or with the seconds to wait for the link
            when a cached answer could be used instead).
        cluster_name: this cluster's name (``node.CLUSTER`` names, ``@CLUSTER``).
        clock: trio's clock, for the caches.
        stale_seconds: how old an answer may be and still be used while the auth
            service cannot be reached (0: never).
    """

    def __init__(
        self,
        auth: AuthAPI | Callable[..., Any],
        cluster_name: str,
        *,
        clock: Callable[[], float] = trio.current_time,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        self._auth = auth
        self.cluster_name = cluster_name
        self.clock = clock
        self.stale_seconds = stale_seconds
        self._cache: tuple[float, list[NodeInfo]] | None = None
        #: The last node list received, for outages (:meth:`forget` keeps it).
        self._last_nodes: tuple[float, list[NodeInfo]] | None = None
        #: The last access answer per (user, host id, login), for outages.
        self._answers: collections.OrderedDict[
            tuple[str, str, str | None], tuple[float, dict[str, Any]]
        ] = collections.OrderedDict()
        self._lock = trio.Lock()

    async def _client(self, *, fallback: bool = False) -> AuthAPI:
        auth = self._auth
        if hasattr(auth, "list_nodes"):
            return auth  # type: ignore[return-value]
        if fallback:
            return await auth(FALLBACK_WAIT_SECONDS)  # type: ignore[operator, no-any-return]
        return await auth()  # type: ignore[operator, no-any-return]

    def _usable(self, cached: tuple[float, Any] | None, now: float) -> bool:
        return cached is not None and now - cached[0] < self.stale_seconds

    def _unavailable(self, exc: BaseException) -> AuthServiceUnavailable:
        text = (
            str(exc)
            if isinstance(exc, AuthServiceUnavailable)
            else f"the auth service is unavailable: {exc}"
        )
        return AuthServiceUnavailable(
            f"{text}; the proxy has no answer from the last {self.stale_seconds:g} seconds"
            " to go on without it"
        )

    async def nodes(self) -> list[NodeInfo]:
        """Every registered node (cached for :data:`NODE_CACHE_SECONDS`; the last
        list is used while the auth service cannot be reached, see the module).

        Raises:
            AuthServiceUnavailable: unreachable, and no list recent enough.
        """
        async with self._lock:
            now = self.clock()
            if self._cache is not None and now - self._cache[0] < NODE_CACHE_SECONDS:
                return self._cache[1]
            last = self._last_nodes
            usable = self._usable(last, now)
            try:
                listing = await (await self._client(fallback=usable)).list_nodes()
            except _UNREACHABLE as exc:
                if last is not None and usable:
                    log.info("auth unreachable; using the node list of %.0fs ago", now - last[0])
                    return last[1]
                raise self._unavailable(exc) from None
            found = []
            for entry in listing:
                try:
                    found.append(NodeInfo.from_listing(entry))
                except (KeyError, TypeError, ValueError):
                    log.warning("skipping a malformed node listing entry")
            self._cache = self._last_nodes = (now, found)
            return found

    def forget(self) -> None:
        """Drop the cached node list (a node just registered, say); the last list
        is still used during an outage."""
        self._cache = None

    async def _access(self, user: str, node: NodeInfo, login: str | None) -> dict[str, Any]:
        key = (user, node.host_id, login)
        now = self.clock()
        cached = self._answers.get(key)
        usable = self._usable(cached, now)
        try:
            client = await self._client(fallback=usable)
            answer = await client.access(user, login=login, node=node.host_id)
        except _UNREACHABLE as exc:
            if cached is not None and usable:
                log.info("auth unreachable; using a %.0fs old answer for %s", now - cached[0], user)
                return cached[1]
            raise self._unavailable(exc) from None
        self._answers[key] = (now, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)
        return answer

    async def visible_nodes(self, user: str) -> list[NodeInfo]:
        """The nodes ``user``'s roles let her see, by name.

        Asks once per distinct label set, not once per node.

        Raises:
            AccessDenied: the user no longer exists.
            AuthServiceUnavailable: unreachable, and no answer recent enough.
        """
        nodes = await self.nodes()
        verdicts: dict[tuple[tuple[str, str], ...], bool] = {}
        out = []
        for node in nodes:
            key = tuple(sorted(node.labels.items()))
            if key not in verdicts:
                answer = await self._access(user, node, None)
                if not answer.get("known", True):
                    raise AccessDenied(f"user {user!r} no longer exists")
                verdicts[key] = bool(answer.get("visible"))
            if verdicts[key]:
                out.append(node)
        return sorted(out, key=lambda n: (n.hostname.lower(), n.host_id))

    def _local_name(self, host: str) -> str:
        name = host.strip().rstrip(".")
        suffix = "." + self.cluster_name.lower()
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
        return name

    def candidates(self, nodes: Sequence[NodeInfo], host: str, port: int) -> list[NodeInfo]:
        """The nodes ``host`` may mean: by labels, UUID, name, or reported address."""
        selector = parse_selector(host)
        if selector is not None:
            wanted = {k: [v] for k, v in selector.items()}
            return [n for n in nodes if match_labels(wanted, n.labels)]
        name = self._local_name(host)
        lowered = name.lower()
        exact = [n for n in nodes if n.host_id == lowered or n.hostname.lower() == lowered]
        if exact:
            return exact
        by_addr = []
        for node in nodes:
            try:
                addr = parse_addr(node.addr, NODE_PORT, default_host="")
            except ValueError:
                continue
            if addr.host.lower() == lowered or _same_ip(addr.host, name):
                by_addr.append((node, addr))
        if len(by_addr) > 1:
            same_port = [n for n, a in by_addr if a.port == port]
            if same_port:
                return same_port
        return [n for n, _ in by_addr]

    async def route(self, user: str, target: Target, *, login: str | None = None) -> Route:
        """The node ``user`` reaches with ``target``, if her roles let her.

        Args:
            user: the user's name (her certificate's key id).
            target: what she asked for.
            login: the SSH login she presented, for the reason given on refusal.

        Raises:
            NotFound: no such node (the message lists what she can reach), another
                cluster, or a label selector that matches several nodes.
            AccessDenied: the node exists but her roles hide it (which role, and why).
            AuthServiceUnavailable: the auth service cannot be asked, and the
                router has no answer recent enough (see the module).
        """
        if target.cluster is not None and target.cluster.lower() != self.cluster_name.lower():
            raise NotFound(
                f"cluster {target.cluster!r} is not this cluster ({self.cluster_name!r});"
                " trusted clusters are not supported"
            )
        try:
            found = self.candidates(await self.nodes(), target.host, target.port)
        except ValueError as exc:
            raise NotFound(str(exc)) from None
        visible: list[NodeInfo] = []
        refusal: str | None = None
        for node in found:
            answer = await self._access(user, node, login)
            if not answer.get("known", True):
                raise AccessDenied(f"user {user!r} no longer exists")
            if answer.get("visible"):
                visible.append(node)
            elif refusal is None:
                refusal = _refusal(node, answer)
        if len(visible) == 1:
            node = visible[0]
            try:
                return Route(node, dial_address(node.addr))
            except ValueError:
                raise NotFound(
                    f"node {node.hostname!r} reports an address the proxy cannot use:"
                    f" {node.addr[:64]!r}"
                ) from None
        if len(visible) > 1:
            names = ", ".join(sorted(n.hostname for n in visible)[:_LISTED])
            raise NotFound(f"{target.host!r} matches several nodes ({names}); name one of them")
        if refusal is not None:
            raise AccessDenied(refusal)
        reachable = [n.hostname for n in await self.visible_nodes(user)]
        listed = ", ".join(reachable[:_LISTED]) + (" ..." if len(reachable) > _LISTED else "")
        raise NotFound(
            f"no node {target.host!r} in cluster {self.cluster_name!r}; "
            + (f"nodes you can reach: {listed}" if reachable else "you can reach no nodes")
        )


def _refusal(node: NodeInfo, answer: Mapping[str, Any]) -> str:
    """Why a node is hidden from a user, in her words."""
    reason = str(answer.get("reason") or "")
    roles = ", ".join(str(r) for r in answer.get("roles") or []) or "none"
    if "denies access to this node" in reason:
        return f"access to node {node.hostname!r} denied: {reason}"
    return (
        f"access to node {node.hostname!r} denied: no role of yours ({roles})"
        " has node_labels that match it"
    )
