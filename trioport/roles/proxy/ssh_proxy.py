"""The proxy's SSH port (3023): users log in with their certificate and reach nodes.

The proxy never terminates the user's SSH session with a node: it pipes bytes,
and the client runs a second SSH connection, end to end, inside the pipe. Two
ways to ask for the pipe, both of which OpenSSH's ``ssh`` speaks:

- the subsystem ``proxy:HOST:PORT[@CLUSTER]`` on a session channel, for
  ``ProxyCommand ssh -p 3023 %r@proxy -s proxy:%h:%p`` and for ``tsh ssh``;
- a ``direct-tcpip`` channel to ``HOST:PORT`` (RFC 4254 §7.2), for ``ssh -J``.

HOST is found by :class:`~trioport.roles.proxy.router.NodeRouter`, which also asks
whether the user's roles let her see the node. The node is dialled by
:func:`~.nodedial.dial_node`, which first writes the proxy's signed line naming
the client's address (:mod:`trioport.roles.node.proxyline`), so the node's audit
events name the user's address rather than the proxy's. A refusal says why: on a
``direct-tcpip`` channel in the open failure's description (OpenSSH prints it),
on a subsystem as a line on the channel's stderr followed by exit status 1
(OpenSSH's ``ssh -s`` prints stderr; a failed subsystem request would only say
"subsystem request failed"). Each refusal is also a ``session.rejected``
(``T1006W``) audit event.

Two more subsystems serve ``tsh``:

- ``trioport-nodes`` writes, as one JSON document, the nodes the user may see
  (``tsh ls``) and exits 0;
- ``trioport-auth`` pipes to the auth service's SSH port, where the user logs in
  again with her certificate and calls the auth API as herself (her roles decide
  what she may do there).

**Who may log in.** Only ``publickey`` with a user certificate signed by the
cluster's user CA, valid now, for this cluster (the ``trioport-cluster``
extension), honouring ``source-address``. The SSH user name is not checked
against the certificate's principals: it is the node login for ``ProxyCommand``
and anything at all for ``ssh -J``, and the node checks the login end to end.
Plain keys, passwords and certificates of other clusters are refused, each an
``auth`` (``T3007W``) audit event. Shells and commands on the proxy itself are
refused with a message saying how to reach a node instead.

**Expiry and idleness.** Once a user is in, the proxy asks the auth service for
her roles' options (while it cannot be reached, the last ones it gave, for up to
``stale_seconds``: see :mod:`.router`). With ``disconnect_expired_cert`` (or when the auth service
cannot say: the proxy then fails closed) the connection is disconnected with
"your certificate has expired" when the certificate's ``valid_before`` passes.
A connection on which no channel data has moved for the idle timeout (the
shorter of ``teleport.connection_limits.client_idle_timeout`` and the roles'
``client_idle_timeout``) is disconnected with "idle timeout: ...".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from trioport.authclient import AuthServiceUnavailable
from trioport.config import Address
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    CertificateInvalid,
    ChannelOpenError,
    ChannelOpenFailureReason,
    DecodeError,
    DisconnectReason,
    NotFound,
    TrioportError,
)
from trioport.ssh import ChannelStream, SSHConnection, SSHHandler
from trioport.ssh.trust import peer_address
from trioport.sshproto import events as ev
from trioport.sshproto.certs import Certificate, CertificateCheckResult, CertType, check_certificate
from trioport.sshproto.keys import parse_public_key

from .nodedial import DialFailed, dial_node, os_reason
from .router import FALLBACK_WAIT_SECONDS, SUBSYSTEM_NODES, Route, Target, parse_target
from .state import AUTH_WAIT_SECONDS, OPTIONS_CACHE_SIZE, OPTIONS_FRESH_SECONDS, ProxyState

__all__ = [
    "COPY_SIZE",
    "DIAL_TIMEOUT",
    "SUBSYSTEM_AUTH",
    "SUBSYSTEM_NODES",
    "ProxySSHHandler",
    "ProxyUser",
    "splice",
]

log = logging.getLogger("trioport.proxy.ssh")

#: The subsystem that lists the nodes a user may see (``tsh ls``).
#: The subsystem that pipes to the auth service's SSH port.
SUBSYSTEM_AUTH = "trioport-auth"
#: Seconds to connect to a node (or the auth service).
DIAL_TIMEOUT = 10.0
#: Bytes moved per read while piping.
COPY_SIZE = 64 * 1024

_AUDIT_SESSION_REJECTED = "T1006W"
_AUDIT_AUTH_FAILURE = "T3007W"


@attrs.frozen
class ProxyUser:
    """A user logged in to the proxy: her name (the certificate's key id) and login."""

    name: str
    login: str
    check: CertificateCheckResult
    remote_addr: str | None


async def splice(
    left: trio.abc.HalfCloseableStream,
    right: trio.abc.HalfCloseableStream,
    on_data: Callable[[], object] | None = None,
) -> None:
    """Copy bytes both ways until both sides have said EOF, or either breaks.

    EOF is passed on (``send_eof``), so a client that half-closes still gets the
    rest of the answer. Backpressure is end to end: a read waits for the previous
    write, and an SSH channel's write waits for the peer's window. ``on_data`` is
    called whenever bytes move (the idle timeout's clock).
    """

    async def copy(
        src: trio.abc.ReceiveStream, dst: trio.abc.HalfCloseableStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(COPY_SIZE):
                if on_data is not None:
                    on_data()
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, left, right, nursery.cancel_scope)
        nursery.start_soon(copy, right, left, nursery.cancel_scope)


def _format_peer(conn: SSHConnection) -> str | None:
    sock = getattr(conn.stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else (None, 0)
    except OSError:
        return None
    return str(Address(str(host), int(port))) if host else None


class ProxySSHHandler(SSHHandler):
    """One user's SSH connection to the proxy (a new handler per connection)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.user: ProxyUser | None = None
        #: When channel data last moved (trio's clock; set at login).
        self.last_activity = 0.0

    def touch(self) -> None:
        """Note that channel data moved now."""
        self.last_activity = trio.current_time()

    # --- authentication --------------------------------------------------------------

    def check_user_certificate(
        self, request: ev.UserauthRequest, peer: str | None
    ) -> CertificateCheckResult:
        """Validate the certificate a publickey request presents.

        Raises:
            AuthenticationFailed: not a certificate, or a plain key.
            CertificateInvalid: the certificate is refused (the message says why).
        """
        if request.method != "publickey" or request.public_key is None:
            raise AuthenticationFailed("the proxy accepts only certificates (run tsh login)")
        try:
            key = parse_public_key(request.public_key)
        except DecodeError as exc:
            raise CertificateInvalid(f"certificate is malformed: {exc.description}") from None
        if not isinstance(key, Certificate):
            raise AuthenticationFailed("a plain key, not a certificate of this cluster")
        result = check_certificate(
            key,
            cert_type=CertType.USER,
            trusted_cas=self.state.user_cas,
            principal=None,
            now=self.state.clock(),
            source_address=peer,
        )
        if result.cluster != self.state.cluster_name:
            raise CertificateInvalid(
                f"the certificate is for cluster {result.cluster!r},"
                f" not {self.state.cluster_name!r}"
            )
        return result

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        try:
            result = self.check_user_certificate(request, peer_address(conn))
        except (AuthenticationFailed, CertificateInvalid) as exc:
            log.info("refused %r from %s: %s", request.username[:64], _format_peer(conn), exc)
            if request.signature_ok and request.method == "publickey":
                conn.start_soon(
                    _audit,
                    self.state,
                    _AUDIT_AUTH_FAILURE,
                    {
                        "user": request.username[:256],
                        "addr_remote": _format_peer(conn),
                        "success": False,
                        "error": str(exc),
                        "method": "publickey",
                        "service": "proxy",
                    },
                )
            return False
        if request.signature_ok:
            self.user = ProxyUser(result.key_id, request.username, result, _format_peer(conn))
            log.info("%s logged in to the proxy as %r", result.key_id, request.username[:64])
            self.touch()
            conn.start_soon(self._enforce, conn, self.user)
        return True

    # --- expiry and idleness ------------------------------------------------------------

    async def _options(self, user: ProxyUser) -> dict[str, object] | None:
        """The user's role options (reused briefly, and for ``stale_seconds`` while
        the auth service cannot be reached), or None when nobody can say."""
        cache = self.state.role_options
        now = self.state.cache_clock()
        cached = cache.get(user.name)
        if cached is not None and now - cached[0] < OPTIONS_FRESH_SECONDS:
            return cached[1]
        usable = cached is not None and now - cached[0] < self.state.stale_seconds
        try:
            client = await self.state.auth(FALLBACK_WAIT_SECONDS if usable else AUTH_WAIT_SECONDS)
            info = await client.access(user.name, labels={})
        except (AuthServiceUnavailable, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if cached is not None and usable:
                log.info(
                    "auth unreachable; using %s's role options of %.0fs ago",
                    user.name,
                    now - cached[0],
                )
                return cached[1]
            log.warning("cannot fetch the role options of %s: %s", user.name, exc)
            return None
        except TrioportError as exc:
            log.warning("cannot fetch the role options of %s: %s", user.name, exc)
            return None
        options = info.get("options") if info.get("known") else None
        if not isinstance(options, dict):
            return None
        if len(cache) >= OPTIONS_CACHE_SIZE:
            cache.clear()
        cache[user.name] = (now, options)
        return options

    async def _enforce(self, conn: SSHConnection, user: ProxyUser) -> None:
        """Disconnect ``conn`` when the certificate expires or it idles too long."""
        options = await self._options(user)
        valid_before = user.check.certificate.valid_before
        role_idle = options.get("client_idle_timeout") if options is not None else None
        limits = [
            float(v)
            for v in (self.state.idle_timeout, role_idle)
            if isinstance(v, int | float) and v > 0
        ]
        async with trio.open_nursery() as nursery:
            expiring = options is None or options.get("disconnect_expired_cert") is True
            if expiring and valid_before < 2**63:
                nursery.start_soon(self._expire, conn, float(valid_before))
            if limits:
                nursery.start_soon(self._idle, conn, min(limits))

    async def _expire(self, conn: SSHConnection, valid_before: float) -> None:
        await trio.sleep(max(0.0, valid_before - self.state.clock()))
        log.info("%s: the certificate expired", self.user.name if self.user else "?")
        await conn.disconnect(DisconnectReason.BY_APPLICATION, "your certificate has expired")

    async def _idle(self, conn: SSHConnection, limit: float) -> None:
        while True:
            remaining = self.last_activity + limit - trio.current_time()
            if remaining <= 0:
                break
            await trio.sleep(remaining)
        reason = f"idle timeout: no activity for {limit:g} seconds"
        log.info("%s: %s", self.user.name if self.user else "?", reason)
        await conn.disconnect(DisconnectReason.BY_APPLICATION, reason)

    # --- channels -------------------------------------------------------------------

    async def channel_open(
        self, conn: SSHConnection, request: ev.ChannelOpen
    ) -> Callable[[ChannelStream], Awaitable[None]]:
        user = self.user
        if user is None:  # the core opens no channel before authentication
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, "log in first"
            )
        if request.kind == "session":
            return lambda chan: self._serve_session(chan, user)
        if request.kind == "direct-tcpip":
            target = Target(request.host, request.port)
            try:
                _route, stream = await self._connect(user, target)
            except TrioportError as exc:
                reason = (
                    ChannelOpenFailureReason.CONNECT_FAILED
                    if isinstance(exc, AuthServiceUnavailable | DialFailed)
                    else ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED
                )
                raise ChannelOpenError(reason, str(exc)) from None

            async def pipe(chan: ChannelStream) -> None:
                async with stream:
                    await splice(chan, stream, self.touch)

            return pipe
        raise ChannelOpenError(
            ChannelOpenFailureReason.UNKNOWN_CHANNEL_TYPE,
            f"the proxy does not open {request.kind[:64]} channels",
        )

    async def _connect(
        self, user: ProxyUser, target: Target
    ) -> tuple[Route, trio.abc.HalfCloseableStream]:
        """Route ``target`` for ``user`` and connect to the node.

        Raises:
            NotFound / AccessDenied: the router's answer (audited).
            AuthServiceUnavailable: the auth service cannot be asked.
            DialFailed: the node does not answer (or does not greet).
        """
        router = self.state.router
        try:
            route = await router.route(user.name, target, login=user.login)
        except (NotFound, AccessDenied) as exc:
            await _audit(
                self.state,
                _AUDIT_SESSION_REJECTED,
                {
                    "user": user.name,
                    "login": user.login,
                    "addr_remote": user.remote_addr,
                    "success": False,
                    "error": str(exc),
                    "target": f"{target.host[:256]}:{target.port}",
                    "reason": "access denied" if isinstance(exc, AccessDenied) else "not found",
                },
            )
            raise
        try:
            stream = await dial_node(
                route,
                client_addr=user.remote_addr,
                key=self.state.identity.key,
                certificate=self.state.identity.certificate.blob,
                clock=self.state.clock,
                timeout=DIAL_TIMEOUT,
            )
        except DialFailed:
            router.forget()
            raise
        log.info(
            "%s (login %r) -> node %s at %s",
            user.name,
            user.login[:64],
            route.node.hostname,
            route.dial,
        )
        return route, stream

    async def _serve_session(self, chan: ChannelStream, user: ProxyUser) -> None:
        while (req := await chan.next_request()) is not None:
            request = req.request
            if isinstance(request, ev.Subsystem):
                name = request.name
                if name.startswith("proxy:"):
                    await chan.reply(req, True)
                    await self._proxy_subsystem(chan, user, name)
                    return
                if name == SUBSYSTEM_NODES:
                    await chan.reply(req, True)
                    await self._list_nodes(chan, user)
                    return
                if name == SUBSYSTEM_AUTH:
                    await chan.reply(req, True)
                    await self._auth_subsystem(chan)
                    return
                await chan.reply(req, False)
            elif isinstance(request, ev.Shell | ev.Exec):
                await chan.reply(req, True)
                await _fail(
                    chan,
                    "this is trioport's proxy; it runs no commands. Reach a node with"
                    " 'tsh ssh NODE', 'ssh -J USER@PROXY:PORT LOGIN@NODE', or the"
                    " ProxyCommand that 'tsh config' prints",
                )
                return
            else:
                await chan.reply(req, False)

    async def _proxy_subsystem(self, chan: ChannelStream, user: ProxyUser, name: str) -> None:
        try:
            target = parse_target(name)
            _route, stream = await self._connect(user, target)
        except ValueError as exc:
            await _fail(chan, f"bad proxy request {name[:128]!r}: {exc}")
            return
        except TrioportError as exc:
            await _fail(chan, str(exc))
            return
        async with stream:
            await splice(chan, stream, self.touch)
        await _exit(chan, 0)

    async def _list_nodes(self, chan: ChannelStream, user: ProxyUser) -> None:
        try:
            nodes = await self.state.router.visible_nodes(user.name)
        except TrioportError as exc:
            await _fail(chan, str(exc))
            return
        document = {
            "cluster_name": self.state.cluster_name,
            "nodes": [n.to_json() for n in nodes],
        }
        await chan.send_all(json.dumps(document).encode("utf-8") + b"\n")
        await _exit(chan, 0)

    async def _auth_subsystem(self, chan: ChannelStream) -> None:
        last = "no auth server is configured"
        for addr in self.state.auth_addresses:
            host, port = addr.host, addr.port
            if host in ("0.0.0.0", ""):  # noqa: S104 - a listen address: reach it on loopback
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError) as exc:
                last = f"cannot reach the auth service at {addr}: {os_reason(exc)}"
                continue
            async with stream:
                await splice(chan, stream, self.touch)
            await _exit(chan, 0)
            return
        await _fail(chan, last)


async def _exit(chan: ChannelStream, status: int) -> None:
    try:
        await chan.request(ev.ExitStatus(status=status), want_reply=False)
        await chan.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _fail(chan: ChannelStream, message: str) -> None:
    """Say why on the channel's stderr, then exit 1 (what OpenSSH's ssh -s shows)."""
    log.info("refused: %s", message)
    try:
        await chan.send_extended(f"error: {message}\r\n".encode("utf-8", "replace"))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    await _exit(chan, 1)


async def _audit(state: ProxyState, code: str, fields: dict[str, object]) -> None:
    await state.emit(code, **fields)
