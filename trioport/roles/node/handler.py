"""The node's SSH server: who may log in, and what a logged-in user's channels do.

**Logging in** (:meth:`NodeSSHHandler.auth`). Only ``publickey`` with a user
certificate is accepted; passwords, keyboard-interactive and plain keys never
are. The certificate must be signed by the cluster's user CA, valid now, for this
cluster, usable from the client's address (``source-address``), and name the
requested login among its principals
(:class:`~trioport.ssh.trust.UserCertificateChecker`). Then, once the client has
proved it holds the key (the signature verified), the node asks the auth service
whether the user's roles allow that login on a node with this node's labels
(:class:`~.access.AccessChecker`). The client's address, for ``source-address``
and for the audit log, is the one the proxy's signed line names when the
connection came through the proxy (:mod:`.proxied`), else the socket's peer.
Any refusal is logged and, for a key holder, an
``auth`` (``T3007W``) audit event with the reason. The client only learns
"Permission denied".

A key *query* (no signature yet) is answered yes for any certificate of the
cluster's user CA that is valid now, so that OpenSSH goes on to sign and the
precise refusal lands in the audit log; the decision is always made on the key
that signed (CVE-2024-45337's lesson).

**Channels.** ``session`` channels run a shell, a command or a subsystem as the OS
login (:mod:`.shell`); ``direct-tcpip`` (``ssh -L``) connects to the requested
address only when the certificate has ``permit-port-forwarding`` and the user's
roles allow port forwarding, each attempt a ``port`` audit event (with the
forwarded ``addr``). Nothing else is accepted (no X11, no ``tcpip-forward``).
The SFTP server of a session channel reports each operation as an ``sftp``
audit event through the sink this handler gives it (:mod:`.sftp_audit`).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trioport.config import Address
from trioport.errors import (
    AuthenticationFailed,
    CertificateInvalid,
    ChannelOpenError,
    ChannelOpenFailureReason,
    DecodeError,
    DisconnectReason,
    TrioportError,
)
from trioport.roles.auth import audit_log
from trioport.ssh import ChannelStream, SSHConnection, SSHHandler
from trioport.sshproto import events as ev
from trioport.sshproto.certs import Certificate, CertType, check_certificate
from trioport.sshproto.keys import parse_public_key

from .context import (
    ActivityChannel,
    Login,
    NodeContext,
    address_of,
    client_address,
    idle_limit,
    watch_idle,
)
from .sftp_audit import AUDIT_SINK, AuditSink
from .shell import serve_session_channel

__all__ = ["NodeSSHHandler"]

log = logging.getLogger("trioport.node")

#: Seconds to connect to a port-forwarding target.
FORWARD_CONNECT_TIMEOUT = 10.0


class NodeSSHHandler(SSHHandler):
    """One SSH connection to the node."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self._logins: weakref.WeakKeyDictionary[SSHConnection, Login] = weakref.WeakKeyDictionary()

    def login_for(self, conn: SSHConnection) -> Login | None:
        return self._logins.get(conn)

    # --- logging in ------------------------------------------------------------------

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        if request.method != "publickey" or request.public_key is None:
            return False
        try:
            key = parse_public_key(request.public_key)
        except DecodeError:
            return False
        if not isinstance(key, Certificate):
            log.info(
                "%s: refused a plain key for %r", client_address(conn)[0], request.username[:64]
            )
            return False
        # Through the proxy, the client's address comes from the proxy's signed
        # line (.proxied): it is the one source-address and the audit log see.
        remote, peer = client_address(conn)
        if request.signature_ok is None:
            return self._query_ok(key, peer)
        if not request.signature_ok:
            return False
        local = address_of(conn, local=True)
        node = self.node
        try:
            if node.draining:
                raise AuthenticationFailed("the node is shutting down")
            result = node.checker().check(request, peer_address=peer)
            if result.cluster and result.cluster != node.cluster_name:
                raise CertificateInvalid(
                    f"the certificate is for cluster {result.cluster!r}, not {node.cluster_name!r}"
                )
        except (CertificateInvalid, AuthenticationFailed) as exc:
            self._refuse(conn, key.key_id, request.username, remote, local, str(exc))
            return False
        decision = await node.access.check(key.key_id, request.username, node.labels())
        if not decision:
            self._refuse(conn, key.key_id, request.username, remote, local, decision.reason)
            return False
        login = Login(
            user=key.key_id,
            login=request.username,
            certificate=result,
            access=decision,
            remote_addr=remote,
            local_addr=local,
        )
        self._logins[conn] = login
        node.connections.add(conn)
        log.info(
            "%s logged in as %s from %s (certificate serial %d)",
            login.user,
            login.login,
            remote,
            key.serial,
        )
        if decision.disconnect_expired_cert and key.valid_before < 2**63:
            conn.start_soon(self._expire, conn, float(key.valid_before))
        limit = idle_limit(node.idle_timeout, decision.client_idle_timeout)
        if limit is not None:

            async def idle(reason: str) -> None:
                log.info("%s (%s): %s", login.user, remote, reason)
                await conn.disconnect(DisconnectReason.BY_APPLICATION, reason)

            conn.start_soon(watch_idle, login.activity, limit, idle)
        return True

    def _query_ok(self, cert: Certificate, peer: str | None) -> bool:
        try:
            check_certificate(
                cert,
                cert_type=CertType.USER,
                trusted_cas=self.node.user_cas,
                principal=None,
                now=self.node.clock(),
                source_address=peer,
            )
        except CertificateInvalid:
            return False
        return True

    def _refuse(
        self, conn: SSHConnection, user: str, login: str, remote: str, local: str, reason: str
    ) -> None:
        """Audit a refused login and tell the client why, in a banner ahead of the
        failure: the request was signed by the certificate's key, so its holder
        learns only about their own certificate and roles (OpenSSH prints it)."""
        log.info("refused %r as %r from %s: %s", user[:64], login[:64], remote, reason)
        with contextlib.suppress(TrioportError, trio.BrokenResourceError):
            where = f"{login[:64]}@{self.node.hostname}"
            conn.core_send(ev.UserauthBanner(message=f"trioport: {where}: {reason}\r\n"))
        self.node.reporter.emit(
            audit_log.AUTH_ATTEMPT_FAILURE,
            user=user,
            login=login,
            addr_remote=remote,
            addr_local=local,
            success=False,
            error=reason,
            method="publickey",
            service="node",
            server_hostname=self.node.hostname,
        )

    async def _expire(self, conn: SSHConnection, valid_before: float) -> None:
        await trio.sleep(max(0.0, valid_before - self.node.clock()))
        await conn.disconnect(DisconnectReason.BY_APPLICATION, "your certificate has expired")

    # --- channels ----------------------------------------------------------------------

    async def channel_open(
        self, conn: SSHConnection, request: ev.ChannelOpen
    ) -> Callable[[ChannelStream], Awaitable[None]]:
        login = self._logins.get(conn)
        if login is None:  # the core opens no channel before authentication
            raise ChannelOpenError(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, "not logged in"
            )
        if request.kind == "session":

            async def session(chan: ChannelStream) -> None:
                token = AUDIT_SINK.set(self._sftp_sink(login))
                try:
                    await serve_session_channel(self.node, conn, chan, login)
                finally:
                    AUDIT_SINK.reset(token)

            return session
        if request.kind == "direct-tcpip":
            return await self._direct_tcpip(login, request)
        raise ChannelOpenError(
            ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
            f"{request.kind} channels are not allowed on this node",
        )

    def _sftp_sink(self, login: Login) -> AuditSink:
        """Where the SFTP server of this login's session channel reports (:mod:`.sftp_audit`)."""
        reporter, hostname = self.node.reporter, self.node.hostname

        def emit(code: audit_log.EventCode, fields: dict[str, Any]) -> None:
            reporter.emit(code, **login.audit_fields(), server_hostname=hostname, **fields)

        return emit

    async def _direct_tcpip(
        self, login: Login, request: ev.ChannelOpen
    ) -> Callable[[ChannelStream], Awaitable[None]]:
        target = str(Address(request.host, request.port))
        reporter = self.node.reporter
        where = {"server_hostname": self.node.hostname}
        reason = None
        if not login.certificate.permit_port_forwarding:
            reason = "your certificate does not permit port forwarding"
        elif not login.access.port_forwarding:
            reason = "your roles do not allow port forwarding"
        if reason is not None:
            reporter.emit(
                audit_log.PORT_FORWARD_FAILURE,
                **login.audit_fields(),
                **where,
                success=False,
                error=reason,
                addr=target,
            )
            raise ChannelOpenError(ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, reason)
        try:
            with trio.fail_after(FORWARD_CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(request.host, request.port)
        except (OSError, trio.TooSlowError) as exc:
            why = f"cannot connect to {target}: {getattr(exc, 'strerror', None) or 'timed out'}"
            reporter.emit(
                audit_log.PORT_FORWARD_FAILURE,
                **login.audit_fields(),
                **where,
                success=False,
                error=why,
                addr=target,
            )
            raise ChannelOpenError(ChannelOpenFailureReason.CONNECT_FAILED, why) from None
        reporter.emit(
            audit_log.PORT_FORWARD, **login.audit_fields(), **where, success=True, addr=target
        )
        log.info("%s forwards a connection to %s", login.user, target)

        async def relay(chan: ChannelStream) -> None:
            async with stream:
                await _relay(ActivityChannel(chan, login.activity), stream)  # type: ignore[arg-type]

        return relay


async def _relay(chan: ChannelStream, stream: trio.SocketStream) -> None:
    """Copy bytes both ways; each side's EOF is passed on; done when both are."""

    async def to_socket() -> None:
        try:
            while data := await chan.receive_some():
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def to_channel() -> None:
        try:
            while data := await stream.receive_some(32768):
                await chan.send_all(data)
            await chan.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(to_socket)
        nursery.start_soon(to_channel)
