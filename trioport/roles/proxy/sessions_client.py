"""The client side of ``tsh sessions``, ``tsh join`` and ``tsh play``.

Sessions and recordings live in the auth service. ``tsh`` reaches its API
through the proxy, as the user: it asks the proxy (already logged in with the
user's certificate, :func:`~trioport.roles.proxy.client.connect_proxy`) for the
subsystem ``trioport-auth``, which pipes to the auth service's SSH port; inside
that pipe :func:`open_auth_api` runs a second SSH connection, checks that the
server holds an auth host certificate of the cluster, logs in again with the
same certificate and calls the API with :class:`~trioport.authclient.AuthClient`.
The auth service decides what she may see: sessions she is part of, and every
session if her roles allow ``session`` ``list``/``read`` (the preset ``access``
role does, so that users can find sessions to join).

- :func:`active_sessions` and :func:`find_session` read ``GET /v1/sessions``;
- :func:`recording_pieces` reads ``GET /v1/recordings/{sid}`` in pieces, so a
  long recording starts replaying before it has all arrived;
- :func:`open_join_channel` opens, on a connection to the session's node, the
  channel that joins it: a ``session`` channel with ``env``
  ``TRIOPORT_SESSION=<sid>``, a pty, and ``shell`` (see
  :mod:`trioport.roles.node.sessions`); :func:`join_login` picks the login to
  connect to the node as.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from trioport.authclient import AuthClient, auth_host_verifier
from trioport.errors import (
    AuthenticationFailed,
    CertificateInvalid,
    ConnectionClosedError,
    HostKeyNotVerifiable,
    NotFound,
    ProtocolError,
    TrioportError,
)
from trioport.resources import Session
from trioport.ssh import ChannelStream, Signer, SSHConnection, authenticate, open_ssh
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PublicKey

from .client import CONNECT_TIMEOUT, ProxyReason, ProxyRefused
from .ssh_proxy import SUBSYSTEM_AUTH

__all__ = [
    "JOIN_ENV",
    "PIECE_BYTES",
    "NoSuchSession",
    "active_sessions",
    "check_sid",
    "find_session",
    "join_login",
    "open_auth_api",
    "open_join_channel",
    "recording_pieces",
    "session_summary",
]

#: The environment variable that asks the node to join a session (the node's
#: :data:`trioport.roles.node.sessions.JOIN_ENV`).
JOIN_ENV = "TRIOPORT_SESSION"
#: Bytes of a recording asked for at once (the auth service hands out at most 16 MiB).
PIECE_BYTES = 1024 * 1024
#: What the auth service accepts as a session id (see ``recordings.check_session_id``).
_SID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
#: How to see the session ids, for error messages.
_HINT = "'tsh sessions' lists the active sessions you can see"


class NoSuchSession(NotFound):
    """No session with that id that the user may see; the message says how to look."""


def check_sid(sid: str) -> str:
    """Return ``sid`` if it looks like a session id.

    Raises:
        NoSuchSession: it cannot be one (the message says where ids come from).
    """
    if not _SID.fullmatch(sid):
        raise NoSuchSession(f"{sid[:140]!r} is not a session id; {_HINT}")
    return sid


@asynccontextmanager
async def open_auth_api(
    proxy: SSHConnection,
    *,
    user: str,
    signers: Sequence[Signer],
    host_cas: Sequence[PublicKey],
    cluster: str,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> AsyncIterator[AuthClient]:
    """The auth API, reached through the proxy and called as ``user``.

    Args:
        proxy: a connection from :func:`~trioport.roles.proxy.client.connect_proxy`.
        user: the cluster user name (the certificate's key id).
        signers: the user's key with its certificate.
        host_cas: the cluster's host CAs; the auth server's certificate must be
            signed by one of them (never trusted on first use here).
        cluster: the cluster's name, which the certificate must carry.

    Raises:
        ProxyRefused: the proxy would not connect us (why, in the message).
        HostKeyNotVerifiable: the server at the other end is not the cluster's
            auth service.
        AuthenticationFailed: the auth service refused the certificate.
    """
    if not host_cas:
        raise CertificateInvalid("no host CA is known for this cluster: run tsh login")
    reasons: list[str] = []
    verify = auth_host_verifier(host_cas, cluster, reasons=reasons)
    chan = await proxy.open_session()
    if not await chan.request(ev.Subsystem(name=SUBSYSTEM_AUTH)):
        await trio.aclose_forcefully(chan)
        raise ProxyRefused("the proxy does not offer the auth API (is it a trioport proxy?)")
    reason = ProxyReason(chan)
    proxy.start_soon(reason.collect)
    established = False
    try:
        async with open_ssh(
            chan, ConnectionConfig(role=Role.CLIENT, verify_host_key=verify)
        ) as conn:
            with trio.fail_after(connect_timeout):
                await authenticate(conn, user, signers=signers)
            established = True
            client = AuthClient(conn, "the auth service (through the proxy)")
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
    except HostKeyNotVerifiable as exc:
        if established:
            raise
        why = reasons[-1] if reasons else exc.description
        raise HostKeyNotVerifiable(
            f"the proxy connected us to something that is not cluster {cluster!r}'s"
            f" auth service: {why}"
        ) from None
    except AuthenticationFailed:
        if established:
            raise
        raise AuthenticationFailed(
            "the auth service refused your certificate (expired?): run tsh login"
        ) from None
    except (
        ConnectionClosedError,
        ProtocolError,
        trio.BrokenResourceError,
        trio.TooSlowError,
    ) as exc:
        if established:
            raise
        why = await reason.text()
        raise ProxyRefused(
            why or f"cannot reach the auth service through the proxy: {exc}"
        ) from None
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(chan)


def _created(session: Session) -> dt.datetime:
    created = session.spec.created
    return created if created.tzinfo else created.replace(tzinfo=dt.UTC)


async def active_sessions(client: AuthClient) -> list[Session]:
    """The active sessions the user may see, oldest first."""
    found = await client.list_sessions(state="active")
    return sorted(found, key=lambda s: (_created(s), s.metadata.name))


async def find_session(client: AuthClient, sid: str) -> Session:
    """The session ``sid``, active or ended.

    Raises:
        NoSuchSession: there is none that the user may see.
    """
    check_sid(sid)
    try:
        return await client.get_session(sid)
    except NotFound:
        raise NoSuchSession(f"no session {sid!r} that you can see; {_HINT}") from None


def session_summary(session: Session) -> dict[str, Any]:
    """A session as ``tsh sessions --format=json`` prints it."""
    spec = session.spec
    return {
        "id": session.metadata.name,
        "kind": spec.kind,
        "user": spec.user,
        "login": spec.login,
        "node": spec.node_hostname or spec.node,
        "node_id": spec.node,
        "parties": [p.user for p in spec.parties],
        "started": _created(session).isoformat(),
        "state": spec.state,
    }


async def recording_pieces(
    client: AuthClient, sid: str, *, piece: int = PIECE_BYTES
) -> AsyncIterator[bytes]:
    """The complete recording of ``sid``, in pieces of at most ``piece`` bytes.

    Raises:
        NoSuchSession: no complete recording of it (still running, still
            uploading, never recorded, or not one the user may replay).
        AccessDenied: the user may not replay it.
    """
    check_sid(sid)
    offset = 0
    while True:
        try:
            data = await client.fetch_recording(sid, offset=offset, size=piece)
        except NotFound:
            if offset:
                raise
            raise NoSuchSession(
                f"no complete recording of session {sid!r}: it may still be running (see"
                " tsh sessions) or still be uploading; try again in a moment"
            ) from None
        if data:
            yield data
        if len(data) < piece:
            return
        offset += len(data)


def join_login(session: Session, principals: Sequence[str]) -> str | None:
    """The login to connect to the session's node as, to join ``session``.

    The session's own login when the certificate carries it. Otherwise the
    first login the certificate has: the node then refuses the join itself,
    saying which rule denies it (and records the refusal). None when the
    certificate has no login at all.
    """
    logins = [p for p in principals if not p.startswith("-")]
    if session.spec.login in logins:
        return session.spec.login
    return logins[0] if logins else None


async def open_join_channel(
    conn: SSHConnection,
    sid: str,
    *,
    term: str = "xterm",
    width: int = 80,
    height: int = 24,
) -> ChannelStream:
    """A channel joined to session ``sid`` on the node ``conn`` is logged in to.

    Its output is the session's (from the moment of joining); what is sent on it
    is typed into the session's terminal. The node may still refuse (the session
    is not there, or the user may not use its login): it then says why on the
    channel's stderr and exits 1.

    Raises:
        TrioportError: the node refused the request outright.
    """
    chan = await conn.open_session()
    try:
        if not await chan.request(ev.Env(name=JOIN_ENV, value=sid)):
            raise TrioportError("the node does not let sessions be joined")
        # The pty is the joiner's terminal mode; the session's size stays its owner's.
        await chan.request(ev.PtyRequest(term=term, width_chars=width, height_rows=height))
        if not await chan.request(ev.Shell()):
            raise TrioportError("the node refused to join the session")
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(chan)
        raise
    return chan
