"""The auth API: JSON over HTTP/1.1 (h11), carried inside SSH channels to the auth service.

Theory of operation
-------------------
Early Teleport put its auth API inside SSH, and so does trioport: a caller logs in
to the auth service's SSH port (3025) with a certificate, opens a ``session``
channel, asks for the subsystem ``trioport-auth-api`` and then speaks HTTP/1.1 over
that channel, keep-alive, one request after another (:meth:`AuthAPI.serve_channel`).
The SSH layer (:mod:`.service`) decides *who* the caller is and hands an
:class:`Identity` to this module, which decides *what* the caller may do.

Identities (:class:`IdentityKind`) and what each may do:

- ``admin``: the built-in administrator (``tctl`` on the auth server): everything;
- ``node``: heartbeat, fetch the CAs, ask what a user may do on it, upload session
  recordings and track its sessions, emit audit events, renew its host certificate;
- ``proxy``: forward logins and invites, list nodes and sessions, read recordings,
  ask access questions, emit audit events, renew its host certificate;
- ``auth``: another auth server that joined the cluster: what a proxy may do;
- ``user``: what her roles' rules allow (:func:`trioport.rbac.check_rule`); she
  always sees her own sessions and recordings;
- ``join``: an unauthenticated caller (SSH user ``-join-``): only
  ``POST /v1/join``, rate-limited per source address (Teleport's numbers: 20 per
  minute, bursts of 40).

Every route names who may call it (:class:`_Route`); anything else is a 403 with
the reason in the body and an ``auth`` (``T3007W``) audit event. Errors keep their
class across the wire: the body is ``{"error": {"kind": ..., "message": ...}}`` and
:mod:`trioport.authclient` raises the matching :mod:`trioport.errors` class.
``docs/http-api.md`` lists every endpoint.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import trio

from trioport import __version__, rbac
from trioport.authclient import ca_pin
from trioport.errors import (
    AccessDenied,
    AlreadyExists,
    AuthenticationFailed,
    BackendUnavailable,
    CompareFailed,
    ConfigError,
    KeyFormatError,
    NotFound,
    TrioportError,
)
from trioport.resources import Node, Role, Session, from_dict, mask_secret, to_dict
from trioport.store.backend import Item

from . import audit_log
from ._http import (
    HTTPError,
    RateLimiter,
    Request,
    Response,
    Router,
    bad_request,
    field_opt_number,
    field_opt_str,
    field_str,
    field_str_list,
    int_arg,
    serve_http,
    time_arg,
)
from ._storage import decode, encode
from .ca import authorized_keys_line, known_hosts_line
from .nodes import NodeStatus, check_host_id
from .recordings import MAX_CHUNK_BYTES, RecordingStorageError, check_session_id
from .server import AuthServer, certifiable_key
from .users import Invite, invite_url

__all__ = [
    "MAX_BODY_BYTES",
    "SESSIONS_PREFIX",
    "AuthAPI",
    "Identity",
    "IdentityKind",
]

log = logging.getLogger("trioport.auth.api")

#: Largest request body: a recording chunk and some slack.
MAX_BODY_BYTES = MAX_CHUNK_BYTES + 1024

#: Tracked sessions: ``/sessions/<sid>``.
SESSIONS_PREFIX = "/sessions/"
#: An active session's record expires this long after the node last updated it.
ACTIVE_SESSION_TTL = 30 * 60.0
#: An ended session's record (who may replay it) is kept this long.
ENDED_SESSION_TTL = 30 * 86400.0

#: Join attempts per source: Teleport's limits for unauthenticated endpoints.
JOIN_RATE_PER_MINUTE = 20
JOIN_BURST = 40

#: Event fields a caller sets through the request's own keys, never through ``fields``.
_COMMON_EVENT_FIELDS = frozenset(
    {"user", "login", "sid", "server_id", "addr.local", "addr.remote", "success", "error"}
)

_HOSTS = frozenset({"node", "proxy", "auth"})
_PROXIES = frozenset({"proxy", "auth"})


class IdentityKind(enum.Enum):
    """Who a caller is, as its certificate (or the lack of one) says."""

    #: The built-in administrator (``tctl``).
    ADMIN = "admin"
    #: A person, with a user certificate.
    USER = "user"
    #: Hosts, with a host certificate naming their service role.
    NODE = "node"
    PROXY = "proxy"
    AUTH = "auth"
    #: No certificate: may only join.
    JOIN = "join"


@attrs.frozen
class Identity:
    """An authenticated caller of the API (made by the SSH layer, :mod:`.service`)."""

    kind: IdentityKind
    #: A user's name, a host's registered name, ``-admin-`` or ``-join-``.
    name: str
    #: A host's UUID (hosts only).
    host_id: str | None = None
    #: A user's roles and traits (users only; refreshed on every request).
    roles: tuple[Role, ...] = ()
    traits: Mapping[str, list[str]] = attrs.Factory(dict)
    #: The peer: ``ip:port`` for the audit log, ``ip`` for rate limiting.
    remote_addr: str | None = None
    source: str = "unknown"
    #: When the certificate that authenticated the caller expires (epoch seconds).
    valid_before: float | None = None

    def may(self, resource: str, verb: str) -> bool:
        """Whether an admin, or a user through her roles' rules, may ``verb`` ``resource``."""
        if self.kind is IdentityKind.ADMIN:
            return True
        return self.kind is IdentityKind.USER and rbac.check_rule(self.roles, resource, verb)


@attrs.frozen
class _Policy:
    """Who may call a route (an admin always may)."""

    #: Host kinds allowed outright.
    hosts: frozenset[str] = frozenset()
    #: (resource, verb) a user's roles must allow; None: users may not call it.
    rule: tuple[str, str] | None = None
    #: Users pass the route check anyway; the handler shows them only their own.
    own: bool = False
    #: Any authenticated identity may call it.
    anyone: bool = False
    #: The join route: allowed without a certificate, rate-limited per source.
    join: bool = False


_router: Router[_Policy] = Router()


def _route(
    method: str,
    template: str,
    *,
    hosts: Iterable[str] = (),
    rule: tuple[str, str] | None = None,
    own: bool = False,
    anyone: bool = False,
    join: bool = False,
) -> Callable[[Any], Any]:
    return _router.route(method, template, _Policy(frozenset(hosts), rule, own, anyone, join))


def _node_status(status: NodeStatus) -> dict[str, Any]:
    node = status.node
    return {
        "host_id": status.host_id,
        "hostname": node.spec.hostname,
        "addr": node.spec.addr,
        "labels": node.all_labels(),
        "online": status.online,
        "last_seen": status.last_seen,
        "expires": status.expires,
        "node": to_dict(node),
    }


@contextlib.contextmanager
def _named(kind: str, name: str) -> Iterator[None]:
    """Say which thing was not found, not which store key."""
    try:
        yield
    except NotFound:
        raise NotFound(f"{kind} {name!r} not found") from None


def _invite(invite: Invite, proxy_addr: str) -> dict[str, Any]:
    return {
        "user": invite.user,
        "token": invite.token,
        "kind": invite.kind,
        "expires": invite.expires,
        "url": invite_url(proxy_addr, invite),
    }


#: Our errors, mapped to (HTTP status, kind). The client maps kinds back to classes.
_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (AccessDenied, 403, "access_denied"),
    (AuthenticationFailed, 401, "authentication_failed"),
    (NotFound, 404, "not_found"),
    (AlreadyExists, 409, "already_exists"),
    (CompareFailed, 409, "compare_failed"),
    (BackendUnavailable, 503, "unavailable"),
    # The recordings' disk refused a write (full, read-only, failing): 507 with the reason.
    (RecordingStorageError, 507, "storage_failed"),
    (ConfigError, 400, "invalid_resource"),
    (KeyFormatError, 400, "bad_key"),
    (ValueError, 400, "bad_request"),
)


class AuthAPI:
    """The auth API's handlers over one :class:`~.server.AuthServer`.

    Args:
        auth: the auth service's logic.
        proxy_addr: ``host:port`` of the proxy's web endpoint, for invite links.
        join_limiter: the per-source limiter of ``POST /v1/join``.
    """

    def __init__(
        self,
        auth: AuthServer,
        *,
        proxy_addr: str,
        join_limiter: RateLimiter | None = None,
    ) -> None:
        self.auth = auth
        self.proxy_addr = proxy_addr
        self.join_limiter = join_limiter or RateLimiter(
            per_minute=JOIN_RATE_PER_MINUTE, burst=JOIN_BURST
        )

    # --- dispatch ------------------------------------------------------------------

    async def handle(self, who: Identity, method: str, target: str, body: bytes = b"") -> Response:
        """Answer one request from ``who``; never raises for a caller's mistake."""
        try:
            route, request = _router.find(method, target, body)
            who = await self._check(route.policy, route.template, who, request)
            result = await route.handler(self, who, request)
        except HTTPError as exc:
            return Response.error(exc.status, exc.kind, exc.message)
        except AccessDenied as exc:
            await self._audit_refusal(who, method, target, str(exc))
            return Response.error(403, "access_denied", str(exc))
        except Exception as exc:
            for cls, status, kind in _ERRORS:
                if isinstance(exc, cls):
                    return Response.error(status, kind, str(exc))
            if isinstance(exc, TrioportError):
                return Response.error(500, "internal", str(exc))
            log.exception("auth API: %s %s failed", method, target[:200])
            return Response.error(500, "internal", "internal error; see the auth service's log")
        if isinstance(result, Response):
            return result
        return Response.json(result)

    async def _check(
        self, policy: _Policy, template: str, who: Identity, request: Request
    ) -> Identity:
        """Whether ``who`` may call the route: raise AccessDenied, or return a fresh identity."""
        kind = who.kind
        if kind is IdentityKind.JOIN and not policy.join:
            raise AccessDenied("only joining is allowed without a certificate")
        if who.valid_before is not None and self.auth.backend.clock() >= who.valid_before:
            raise AuthenticationFailed("your certificate has expired; log in again")
        if kind is IdentityKind.USER:
            who = await self._refresh(who)
        if policy.join:
            if not self.join_limiter.allow(who.source):
                raise HTTPError(429, "rate_limited", "too many join attempts; try again later")
            return who
        if kind is IdentityKind.ADMIN or policy.anyone or kind.value in policy.hosts:
            return who
        if kind is IdentityKind.USER and policy.rule is not None:
            resource, verb = policy.rule
            if policy.own or rbac.check_rule(who.roles, resource, verb):
                return who
            raise AccessDenied(f"your roles do not allow {verb} on {resource}")
        raise AccessDenied(f"a {kind.value} may not call {request.method} {template}")

    async def _refresh(self, who: Identity) -> Identity:
        """A user's current roles and traits (a deleted user, or role, loses access now)."""
        try:
            user = await self.auth.users.get(who.name)
        except NotFound:
            raise AccessDenied(f"user {who.name!r} no longer exists") from None
        roles = await self.auth.roles.get_many(user.spec.roles)
        return attrs.evolve(who, roles=tuple(roles), traits=dict(user.spec.traits))

    async def _audit_refusal(self, who: Identity, method: str, target: str, reason: str) -> None:
        try:
            await self.auth.audit.emit(
                audit_log.AUTH_ATTEMPT_FAILURE,
                user=who.name,
                server_id=who.host_id,
                addr_remote=who.remote_addr,
                success=False,
                error=reason,
                fields={
                    "method": "auth-api",
                    "request": f"{method} {target[:512]}",
                    "identity": who.kind.value,
                },
            )
        except (OSError, trio.ClosedResourceError):
            log.warning("could not write the audit event for a refused API call")

    # --- HTTP over a channel ---------------------------------------------------------

    async def serve_channel(self, stream: trio.abc.Stream, who: Identity) -> None:
        """Serve HTTP/1.1 requests from ``who`` on ``stream`` until the peer is done.

        Raises:
            trio.BrokenResourceError: the channel or its connection died.
        """

        async def handle(method: str, target: str, body: bytes) -> Response:
            return await self.handle(who, method, target, body)

        await serve_http(stream, handle, max_body=MAX_BODY_BYTES)

    # --- joining ---------------------------------------------------------------------

    @_route("POST", "/v1/join", join=True)
    async def _join(self, who: Identity, req: Request) -> Any:
        body = req.json()
        addresses = field_str_list(body, "addresses", [])
        result = await self.auth.join(
            token=field_str(body, "token"),
            public_key=field_str(body, "public_key"),
            node_name=field_str(body, "node_name"),
            role=field_str(body, "role", "node"),
            host_id=field_opt_str(body, "host_id"),
            addresses=addresses,
            remote_addr=who.remote_addr,
        )
        return {
            "host_id": result.host_id,
            "cluster_name": self.auth.cluster_name,
            "certificate": result.certificate.openssh_line(),
            "host_ca": to_dict(result.host_ca),
            "user_ca": to_dict(result.user_ca),
        }

    @_route("POST", "/v1/hosts/certificate", hosts=_HOSTS)
    async def _host_certificate(self, who: Identity, req: Request) -> Any:
        body = req.json()
        if who.kind is IdentityKind.ADMIN:
            raise AccessDenied("only a host renews its own certificate")
        assert who.host_id is not None
        cert = await self.auth.host_certificate(
            who.host_id,
            field_str(body, "public_key"),
            role=who.kind.value,
            addresses=field_str_list(body, "addresses", []),
        )
        return {"certificate": cert.openssh_line()}

    # --- who, CAs, status -------------------------------------------------------------

    @_route("GET", "/v1/whoami", anyone=True)
    async def _whoami(self, who: Identity, req: Request) -> Any:
        return {
            "kind": who.kind.value,
            "name": who.name,
            "host_id": who.host_id,
            "roles": [r.metadata.name for r in who.roles],
            "cluster_name": self.auth.cluster_name,
        }

    @_route("GET", "/v1/authorities", anyone=True)
    async def _authorities(self, who: Identity, req: Request) -> Any:
        user_ca, host_ca = self.auth.ca.user_ca, self.auth.ca.host_ca
        return {
            "cluster_name": self.auth.cluster_name,
            "user": {
                "resource": to_dict(user_ca),
                "fingerprints": [k.fingerprint() for k in self.auth.ca.public_keys("user")],
                "lines": authorized_keys_line(user_ca),
            },
            "host": {
                "resource": to_dict(host_ca),
                "fingerprints": [k.fingerprint() for k in self.auth.ca.public_keys("host")],
                "lines": known_hosts_line(host_ca, ["*"]),
                "pin": ca_pin(self.auth.ca.public_keys("host")[0].blob),
            },
        }

    @_route("GET", "/v1/status", rule=("cert_authority", "read"))
    async def _status(self, who: Identity, req: Request) -> Any:
        auth = self.auth
        nodes = await auth.nodes.list()
        host_keys = auth.ca.public_keys("host")
        return {
            "cluster_name": auth.cluster_name,
            "version": __version__,
            "authorities": {
                "user": [k.fingerprint() for k in auth.ca.public_keys("user")],
                "host": [k.fingerprint() for k in host_keys],
            },
            "ca_pin": ca_pin(host_keys[0].blob),
            "counts": {
                "users": len(await auth.users.list()),
                "roles": len(await auth.roles.list()),
                "tokens": len(await auth.tokens.list()),
                "nodes": len(nodes),
                "nodes_online": sum(1 for n in nodes if n.online),
                "hosts": len(await auth.nodes.list_identities()),
                "recordings": len(await auth.recordings.list()),
            },
        }

    # --- nodes ------------------------------------------------------------------------

    @_route("POST", "/v1/nodes/heartbeat", hosts={"node"})
    async def _heartbeat(self, who: Identity, req: Request) -> Any:
        node = from_dict(req.json(), Node, source="heartbeat")
        if who.host_id is None:
            raise AccessDenied("only a node reports heartbeats")
        status = await self.auth.nodes.heartbeat(node, caller_host_id=who.host_id)
        return _node_status(status)

    @_route("GET", "/v1/nodes", hosts=_PROXIES, rule=("node", "list"))
    async def _nodes(self, who: Identity, req: Request) -> Any:
        found = await self.auth.nodes.list()
        if who.kind is IdentityKind.USER:
            found = [s for s in found if rbac.can_see_node(who.roles, s.node.all_labels())]
        return {"nodes": [_node_status(s) for s in found]}

    @_route("GET", "/v1/nodes/{host_id}", hosts=_PROXIES, rule=("node", "read"))
    async def _node(self, who: Identity, req: Request) -> Any:
        with _named("node", req.params["host_id"]):
            status = await self.auth.nodes.get(check_host_id(req.params["host_id"]))
        if who.kind is IdentityKind.USER and not rbac.can_see_node(
            who.roles, status.node.all_labels()
        ):
            raise NotFound("no such node")
        return _node_status(status)

    @_route("DELETE", "/v1/nodes/{host_id}", rule=("node", "delete"))
    async def _remove_node(self, who: Identity, req: Request) -> Any:
        with _named("host", req.params["host_id"]):
            await self.auth.nodes.release_identity(check_host_id(req.params["host_id"]))
        return {}

    @_route("POST", "/v1/access", hosts=_HOSTS)
    async def _access(self, who: Identity, req: Request) -> Any:
        body = req.json()
        name = field_str(body, "user")
        login = field_opt_str(body, "login")
        node_id = field_opt_str(body, "node")
        labels = body.get("labels")
        if labels is not None and (
            not isinstance(labels, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise bad_request("labels: expected a mapping of strings to strings")
        if who.kind is IdentityKind.NODE:
            if node_id is not None and node_id != who.host_id:
                raise AccessDenied("a node may only ask about access to itself")
            node_id = who.host_id
        if labels is None:
            if node_id is None:
                raise bad_request("give node (a host id) or labels")
            try:
                labels = (await self.auth.nodes.get(node_id)).node.all_labels()
            except NotFound:
                if who.kind is not IdentityKind.NODE:
                    raise
                labels = {}
        try:
            user = await self.auth.users.get(name)
        except NotFound:
            return {
                "user": name,
                "known": False,
                "allowed": False,
                "logins": [],
                "reason": f"no such user {name!r}",
                "roles": [],
                "login": login,
            }
        roles = await self.auth.roles.get_many(user.spec.roles)
        traits = user.spec.traits
        decision = rbac.decide_node_access(roles, traits, labels, login) if login else None
        return {
            "user": name,
            "known": True,
            "roles": [r.metadata.name for r in roles],
            "logins": sorted(rbac.allowed_logins(roles, traits, labels)),
            "login": login,
            "allowed": bool(decision) if decision is not None else None,
            "reason": decision.reason if decision is not None else "",
            "visible": rbac.can_see_node(roles, labels),
            "options": {
                "forward_agent": rbac.can_forward_agent(roles),
                "port_forwarding": rbac.can_port_forward(roles),
                "client_idle_timeout": rbac.client_idle_timeout(roles),
                "disconnect_expired_cert": rbac.disconnect_expired_cert(roles),
                "max_session_ttl": rbac.max_session_ttl(roles),
                "record_session": rbac.record_session_mode(roles),
            },
        }

    # --- logins and invites (forwarded by the proxy) ------------------------------------

    @_route("POST", "/v1/login", hosts=_PROXIES)
    async def _login(self, who: Identity, req: Request) -> Any:
        body = req.json()
        result = await self.auth.login(
            user=field_str(body, "user"),
            password=field_str(body, "password"),
            totp_code=field_str(body, "totp_code"),
            public_key=field_str(body, "public_key"),
            ttl=field_opt_number(body, "ttl"),
            remote_addr=field_opt_str(body, "remote_addr") or who.remote_addr,
        )
        cert = result.certificate
        return {
            "user": to_dict(result.user),
            "certificate": cert.openssh_line(),
            "valid_after": cert.valid_after,
            "valid_before": cert.valid_before,
            "principals": list(cert.principals),
            "host_ca": to_dict(result.host_ca),
            "known_hosts": known_hosts_line(result.host_ca, ["*"]),
        }

    @_route("POST", "/v1/invites/{token}/totp", hosts=_PROXIES)
    async def _start_enrolment(self, who: Identity, req: Request) -> Any:
        enrolment = await self.auth.users.start_enrolment(req.params["token"])
        return {"user": enrolment.user, "secret": enrolment.secret, "uri": enrolment.uri}

    @_route("POST", "/v1/invites/{token}", hosts=_PROXIES)
    async def _complete_invite(self, who: Identity, req: Request) -> Any:
        body = req.json()
        # With a public key, the new user also gets a certificate (the web UI's
        # invite lands her logged in). The key is checked before the invite is
        # used, so a bad key does not spend it.
        key_line = field_opt_str(body, "public_key")
        key = certifiable_key(key_line) if key_line is not None else None
        ttl = field_opt_number(body, "ttl")
        user = await self.auth.users.complete_invite(
            req.params["token"],
            field_str(body, "password"),
            field_str(body, "totp_code"),
            remote_addr=field_opt_str(body, "remote_addr") or who.remote_addr,
        )
        if key is None:
            return {"user": to_dict(user)}
        cert = await self.auth.user_certificate(user.metadata.name, key, ttl=ttl)
        return {
            "user": to_dict(user),
            "certificate": cert.openssh_line(),
            "valid_after": cert.valid_after,
            "valid_before": cert.valid_before,
            "principals": list(cert.principals),
        }

    # --- users ------------------------------------------------------------------------

    @_route("POST", "/v1/users", rule=("user", "create"))
    async def _add_user(self, who: Identity, req: Request) -> Any:
        body = req.json()
        name = field_str(body, "name")
        if name.startswith("-"):
            raise bad_request("user names starting with '-' are reserved")
        invite = await self.auth.users.add(
            name,
            logins=field_str_list(body, "logins", []),
            roles=field_str_list(body, "roles", ["access"]),
            by=who.name,
        )
        return _invite(invite, self.proxy_addr)

    @_route("GET", "/v1/users", rule=("user", "list"))
    async def _users(self, who: Identity, req: Request) -> Any:
        return {"users": [to_dict(u) for u in await self.auth.users.list()]}

    @_route("GET", "/v1/users/{name}", rule=("user", "read"))
    async def _user(self, who: Identity, req: Request) -> Any:
        with _named("user", req.params["name"]):
            return to_dict(await self.auth.users.get(req.params["name"]))

    @_route("PUT", "/v1/users/{name}", rule=("user", "update"))
    async def _update_user(self, who: Identity, req: Request) -> Any:
        body = req.json()
        logins = None if body.get("logins") is None else field_str_list(body, "logins")
        roles = None if body.get("roles") is None else field_str_list(body, "roles")
        with _named("user", req.params["name"]):
            await self.auth.users.get(req.params["name"])
        user = await self.auth.users.update(
            req.params["name"], logins=logins, roles=roles, by=who.name
        )
        return to_dict(user)

    @_route("DELETE", "/v1/users/{name}", rule=("user", "delete"))
    async def _remove_user(self, who: Identity, req: Request) -> Any:
        with _named("user", req.params["name"]):
            await self.auth.users.remove(req.params["name"], by=who.name)
        return {}

    @_route("POST", "/v1/users/{name}/reset", rule=("user", "update"))
    async def _reset_user(self, who: Identity, req: Request) -> Any:
        with _named("user", req.params["name"]):
            invite = await self.auth.users.reset(req.params["name"], by=who.name)
        return _invite(invite, self.proxy_addr)

    @_route("POST", "/v1/users/{name}/unlock", rule=("user", "update"))
    async def _unlock_user(self, who: Identity, req: Request) -> Any:
        with _named("user", req.params["name"]):
            await self.auth.users.unlock(req.params["name"], by=who.name)
        return {}

    # --- tokens -----------------------------------------------------------------------

    @_route("POST", "/v1/tokens", rule=("token", "create"))
    async def _add_token(self, who: Identity, req: Request) -> Any:
        body = req.json()
        token = await self.auth.tokens.add(
            field_str_list(body, "roles", ["node"]), ttl=field_opt_number(body, "ttl"), by=who.name
        )
        expires = token.metadata.expires
        return {
            "token": token.name,
            "roles": list(token.spec.roles),
            "expires": expires.timestamp() if expires else None,
            "auth_ca_pin": ca_pin(self.auth.ca.public_keys("host")[0].blob),
        }

    @_route("GET", "/v1/tokens", rule=("token", "list"))
    async def _tokens(self, who: Identity, req: Request) -> Any:
        return {"tokens": [to_dict(t) for t in await self.auth.tokens.list()]}

    @_route("DELETE", "/v1/tokens/{token}", rule=("token", "delete"))
    async def _remove_token(self, who: Identity, req: Request) -> Any:
        with _named("join token", mask_secret(req.params["token"])):
            await self.auth.tokens.remove(req.params["token"])
        return {}

    # --- roles ------------------------------------------------------------------------

    @_route("GET", "/v1/roles", rule=("role", "list"))
    async def _roles(self, who: Identity, req: Request) -> Any:
        return {"roles": [to_dict(r) for r in await self.auth.roles.list()]}

    @_route("GET", "/v1/roles/{name}", rule=("role", "read"))
    async def _role(self, who: Identity, req: Request) -> Any:
        with _named("role", req.params["name"]):
            return to_dict(await self.auth.roles.get(req.params["name"]))

    @_route("PUT", "/v1/roles/{name}", rule=("role", "update"), own=True)
    async def _put_role(self, who: Identity, req: Request) -> Any:
        name = req.params["name"]
        try:
            await self.auth.roles.get(name)
            verb = "update"
        except NotFound:
            verb = "create"
        if not who.may("role", verb):
            raise AccessDenied(f"your roles do not allow {verb} on role")
        role = from_dict(req.json(), Role, source="role")
        if role.metadata.name != name:
            raise bad_request("the role's metadata.name differs from the name in the path")
        created = await self.auth.roles.upsert(role, by=who.name)
        return {"created": created}

    @_route("DELETE", "/v1/roles/{name}", rule=("role", "delete"))
    async def _remove_role(self, who: Identity, req: Request) -> Any:
        with _named("role", req.params["name"]):
            await self.auth.roles.delete(req.params["name"], by=who.name)
        return {}

    # --- audit events -----------------------------------------------------------------

    @_route("POST", "/v1/events", hosts=_HOSTS)
    async def _emit(self, who: Identity, req: Request) -> Any:
        body = req.json()
        code = audit_log.EVENT_CODES.get(field_str(body, "code"))
        if code is None:
            raise bad_request("code: not a known event code (T2000I, T3002I, ...)")
        fields = body.get("fields") or {}
        if not isinstance(fields, dict):
            raise bad_request("fields: expected a JSON object")
        clash = sorted(set(fields) & _COMMON_EVENT_FIELDS)
        if clash:
            raise bad_request(f"fields: {clash[0]!r} is a top-level field of the request")
        success = body.get("success")
        if success is not None and not isinstance(success, bool):
            raise bad_request("success: expected true or false")
        server_id = (
            who.host_id if who.kind is not IdentityKind.ADMIN else field_opt_str(body, "server_id")
        )
        event = await self.auth.audit.emit(
            code,
            user=field_opt_str(body, "user"),
            login=field_opt_str(body, "login"),
            sid=field_opt_str(body, "sid"),
            server_id=server_id,
            addr_local=field_opt_str(body, "addr_local"),
            addr_remote=field_opt_str(body, "addr_remote"),
            success=success,
            error=field_opt_str(body, "error"),
            fields=fields,
        )
        return {"uid": event.metadata.name}

    @_route("GET", "/v1/events", rule=("event", "list"))
    async def _search(self, who: Identity, req: Request) -> Any:
        now = self.auth.backend.clock()
        names = [n for v in req.query.get("event", []) for n in v.split(",") if n]
        limit = int_arg(req.arg("limit"), "limit", 1000)
        if limit is None or not 1 <= limit <= 10_000:
            raise bad_request("limit: 1 to 10000")
        found = await self.auth.audit.search(
            since=time_arg(req.arg("since"), "since", now - 86400),
            until=time_arg(req.arg("until"), "until", now + 1),
            events=names or None,
            limit=limit,
        )
        return {"events": [e.to_record() for e in found]}

    # --- sessions ---------------------------------------------------------------------

    async def _sessions(self) -> list[Session]:
        items = await self.auth.backend.get_range(SESSIONS_PREFIX)
        return [decode(item, Session) for item in items]

    async def _session(self, sid: str) -> Session | None:
        try:
            return decode(
                await self.auth.backend.get(SESSIONS_PREFIX + check_session_id(sid)), Session
            )
        except NotFound:
            return None

    @staticmethod
    def _involves(session: Session, name: str) -> bool:
        return session.spec.user == name or any(p.user == name for p in session.spec.parties)

    def _may_see(self, who: Identity, session: Session | None, verb: str) -> bool:
        if who.kind is IdentityKind.ADMIN or who.kind.value in _PROXIES:
            return True
        if who.may("session", verb):
            return True
        return session is not None and self._involves(session, who.name)

    @_route("PUT", "/v1/sessions/{sid}", hosts={"node"})
    async def _put_session(self, who: Identity, req: Request) -> Any:
        sid = check_session_id(req.params["sid"])
        session = from_dict(req.json(), Session, source="session")
        if session.metadata.name != sid:
            raise bad_request("the session's metadata.name differs from the id in the path")
        existing = await self._session(sid)
        if who.kind is IdentityKind.NODE:
            if session.spec.node != who.host_id:
                raise AccessDenied("a node may only report its own sessions")
            if existing is not None and existing.spec.node != who.host_id:
                raise AccessDenied("this session belongs to another node")
        ttl = ENDED_SESSION_TTL if session.spec.state == "ended" else ACTIVE_SESSION_TTL
        now = self.auth.backend.clock()
        await self.auth.backend.put(Item(SESSIONS_PREFIX + sid, encode(session), expires=now + ttl))
        return {"created": existing is None}

    @_route("GET", "/v1/sessions", hosts=_PROXIES, rule=("session", "list"), own=True)
    async def _list_sessions(self, who: Identity, req: Request) -> Any:
        found = [s for s in await self._sessions() if self._may_see(who, s, "list")]
        if req.arg("state"):
            found = [s for s in found if s.spec.state == req.arg("state")]
        return {"sessions": [to_dict(s) for s in found]}

    @_route("GET", "/v1/sessions/{sid}", hosts=_PROXIES, rule=("session", "read"), own=True)
    async def _get_session(self, who: Identity, req: Request) -> Any:
        session = await self._session(req.params["sid"])
        if session is None or not self._may_see(who, session, "read"):
            raise NotFound("no such session")
        return to_dict(session)

    # --- recordings -------------------------------------------------------------------

    async def _check_uploader(self, who: Identity, sid: str) -> None:
        session = await self._session(sid)
        if who.kind is IdentityKind.NODE and session is not None:
            if session.spec.node != who.host_id:
                raise AccessDenied("this session's recording belongs to another node")

    @_route("PUT", "/v1/recordings/{sid}/chunks/{index}", hosts={"node"})
    async def _upload(self, who: Identity, req: Request) -> Any:
        sid = check_session_id(req.params["sid"])
        index = int_arg(req.params["index"], "index")
        await self._check_uploader(who, sid)
        assert index is not None
        return {"next": await self.auth.recordings.append(sid, index, req.body)}

    @_route("GET", "/v1/recordings/{sid}/upload", hosts={"node"})
    async def _upload_state(self, who: Identity, req: Request) -> Any:
        sid = check_session_id(req.params["sid"])
        await self._check_uploader(who, sid)
        return {"next": await self.auth.recordings.next_index(sid)}

    @_route("POST", "/v1/recordings/{sid}/complete", hosts={"node"})
    async def _complete(self, who: Identity, req: Request) -> Any:
        sid = check_session_id(req.params["sid"])
        await self._check_uploader(who, sid)
        chunks = field_opt_number(req.json(), "chunks")
        info = await self.auth.recordings.complete(
            sid, chunks=None if chunks is None else int(chunks)
        )
        await self.auth.audit.emit(
            audit_log.SESSION_UPLOAD,
            sid=sid,
            server_id=who.host_id,
            fields={"size": info.size},
        )
        return attrs.asdict(info)

    @_route("POST", "/v1/recordings/{sid}/interrupted", hosts={"node"})
    async def _interrupted(self, who: Identity, req: Request) -> Any:
        sid = check_session_id(req.params["sid"])
        await self._check_uploader(who, sid)
        info = await self.auth.recordings.interrupt(sid)
        await self.auth.audit.emit(
            audit_log.SESSION_UPLOAD,
            sid=sid,
            server_id=who.host_id,
            fields={"size": info.size, "interrupted": True},
        )
        return attrs.asdict(info)

    @_route("GET", "/v1/recordings", hosts=_PROXIES, rule=("session", "list"), own=True)
    async def _recordings(self, who: Identity, req: Request) -> Any:
        found = await self.auth.recordings.list()
        if not self._may_see(who, None, "list"):
            mine = {s.metadata.name for s in await self._sessions() if self._involves(s, who.name)}
            found = [r for r in found if r.sid in mine]
        out: dict[str, Any] = {"recordings": [attrs.asdict(r) for r in found]}
        if who.kind is IdentityKind.ADMIN or who.may("session", "list"):
            out["incomplete"] = await self.auth.recordings.list_incomplete()
        return out

    @_route("GET", "/v1/recordings/{sid}", hosts=_PROXIES, rule=("session", "read"), own=True)
    async def _fetch(self, who: Identity, req: Request) -> Any:
        sid = check_session_id(req.params["sid"])
        if not self._may_see(who, await self._session(sid), "read"):
            raise AccessDenied("you may only replay your own sessions")
        data = await self.auth.recordings.fetch(
            sid,
            offset=int_arg(req.arg("offset"), "offset", 0) or 0,
            size=int_arg(req.arg("size"), "size"),
        )
        await self.auth.audit.emit(
            audit_log.SESSION_RECORDING_ACCESS,
            user=who.name,
            sid=sid,
            addr_remote=who.remote_addr,
        )
        return Response(200, data, "application/octet-stream")
