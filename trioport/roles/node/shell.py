"""A session channel on the node: a shell, a command or a subsystem, as the OS login.

:func:`serve_session_channel` reads the channel's requests (RFC 4254 §6) the way
:func:`trioport.ssh.session.serve_session` does, with the node's policy:

- ``env``: only ``LANG``, ``LC_*`` and ``TERM`` are taken from the client (sshd's
  ``AcceptEnv`` default in Debian), plus :data:`~.sessions.JOIN_ENV` to join a
  session;
- ``pty-req``: only if the certificate has ``permit-pty``;
- ``auth-agent-req@openssh.com``: only if the certificate has
  ``permit-agent-forwarding`` *and* the user's roles allow agent forwarding; the
  socket belongs to the login's uid;
- ``shell`` / ``exec`` / ``subsystem``: the certificate's ``force-command``, if any,
  replaces all three (the original command goes in ``SSH_ORIGINAL_COMMAND``).

The process runs as the login's OS account: its uid, gid and groups, its home
directory as the working directory, its login shell from the password database
(``shell -l`` for a shell, ``shell -c COMMAND`` for a command). Its environment
is ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``PATH``, ``LANG`` (the client's, or
the node's), ``TERM`` (with a pty), ``SSH_CONNECTION``, ``SSH_CLIENT``, and
trioport's ``SSH_SESSION_ID``, ``TRIOPORT_USER`` (the cluster user) and
``TRIOPORT_CLUSTER``. A login with no OS account gets a one-line explanation on
stderr and exit status 1.

Each shell or command is a session (:mod:`.sessions`): recorded
(:mod:`.recorder`), reported to the auth service with its parties, and audited
(``session.start``, ``session.end``, and ``exec`` for a command with its exit code).

If the recording cannot be stored (the auth service's disk refuses it), the
user's roles' ``record_session.ssh`` decides: ``best_effort`` goes on unrecorded
and emits ``session.upload`` with ``success: false``; ``strict`` also emits it,
then tells the user on stderr and ends the session (exit status
:data:`RECORDING_FAILED_STATUS`). A strict session starts its command only once
the recording's header is stored.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import logging
import os
import pwd
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trioport import metrics
from trioport.roles.auth import audit_log
from trioport.ssh import ChannelStream, SSHConnection
from trioport.ssh.agent import session_agent_forwarding
from trioport.ssh.session import SessionPolicy, run_process_on_channel
from trioport.sshproto import events as ev

from .context import ActivityChannel, Login, NodeContext
from .sessions import JOIN_ENV, PARTY_QUEUE, REFRESH_SECONDS, ActiveSession, SessionChannel

__all__ = [
    "ACCEPT_ENV",
    "NO_ACCOUNT_STATUS",
    "RECORDING_FAILED_STATUS",
    "SFTP_MODULE",
    "lookup_account",
    "serve_session_channel",
]

log = logging.getLogger("trioport.node.shell")

#: Environment variables a client may set (with ``SendEnv`` / ``SetEnv``).
ACCEPT_ENV = ("LANG", "LC_*", "TERM")
#: Variables one session may set (OpenSSH's session_env_req ignores more than 128).
MAX_ENV = 128
#: The exit status of a session whose login has no OS account.
NO_ACCOUNT_STATUS = 1
#: The exit status when the shell cannot be started.
CANNOT_START_STATUS = 127
#: The exit status of a strict session whose recording cannot be stored.
RECORDING_FAILED_STATUS = 1
#: Seconds a strict session waits for its recording's header to be stored.
STRICT_START_SECONDS = 10.0
#: PATH for root and for everyone else (Debian's login.defs ENV_SUPATH / ENV_PATH).
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
#: The SFTP server, when it is installed: its ``serve_sftp(chan, *, user, group,
#: extra_groups, cwd)`` serves the ``sftp`` subsystem as the login.
SFTP_MODULE = "trioport.roles.node.sftp_server"

SubsystemHandler = Callable[[ChannelStream], Awaitable[None]]


def lookup_account(login: str) -> pwd.struct_passwd | None:
    """The OS account of ``login``, or None (blocking: NSS may ask a directory)."""
    try:
        return pwd.getpwnam(login)
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def _groups(account: pwd.struct_passwd) -> list[int]:
    try:
        return os.getgrouplist(account.pw_name, account.pw_gid)
    except OSError:
        return [account.pw_gid]


def _env_accepted(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ACCEPT_ENV)


def _policy(
    node: NodeContext, conn: SSHConnection, login: Login, account: pwd.struct_passwd
) -> SessionPolicy:
    shell = account.pw_shell or "/bin/sh"
    home = account.pw_dir if os.path.isdir(account.pw_dir) else "/"
    client_ip, _, client_port = login.remote_addr.rpartition(":")
    server_ip, _, server_port = login.local_addr.rpartition(":")
    environment = {
        "HOME": account.pw_dir,
        "USER": account.pw_name,
        "LOGNAME": account.pw_name,
        "SHELL": shell,
        "PATH": ROOT_PATH if account.pw_uid == 0 else USER_PATH,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "SSH_CONNECTION": f"{client_ip.strip('[]')} {client_port} "
        f"{server_ip.strip('[]')} {server_port}",
        "SSH_CLIENT": f"{client_ip.strip('[]')} {client_port} {server_port}",
        "TRIOPORT_USER": login.user,
        "TRIOPORT_CLUSTER": node.cluster_name,
    }
    cert = login.certificate
    agent = None
    if cert.permit_agent_forwarding and login.access.forward_agent:
        agent = session_agent_forwarding(conn, uid=account.pw_uid)
    return SessionPolicy(
        shell=shell,
        environment=environment,
        accept_env=ACCEPT_ENV,
        allow_pty=cert.permit_pty,
        force_command=cert.force_command,
        agent_forwarding=agent,
        cwd=home,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=_groups(account),
    )


def _sftp_handler(policy: SessionPolicy) -> SubsystemHandler | None:
    """The SFTP subsystem as the session's login, if the SFTP server is installed.

    The SFTP server (:mod:`trioport.roles.node.sftp_server`) runs a child process
    with the login's uid, gid and groups, starting in its home directory.
    """
    try:
        module = importlib.import_module(SFTP_MODULE)
    except ImportError:
        return None
    serve_sftp = getattr(module, "serve_sftp", None)
    if serve_sftp is None:
        return None
    return functools.partial(
        serve_sftp,
        user=policy.user,
        group=policy.group,
        extra_groups=policy.extra_groups,
        cwd=policy.cwd,
    )


async def _fail(chan: ChannelStream, message: str, status: int) -> None:
    """Tell the client why on stderr, then report ``status`` and close."""
    try:
        await chan.send_extended((message.rstrip("\r\n") + "\r\n").encode("utf-8", "replace"))
        await chan.request(ev.ExitStatus(status=status), want_reply=False)
        await chan.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def serve_session_channel(
    node: NodeContext, conn: SSHConnection, chan: ChannelStream, login: Login
) -> None:
    """Serve one session channel of a logged-in user until it ends."""
    chan = ActivityChannel(chan, login.activity)  # type: ignore[assignment]
    account = await trio.to_thread.run_sync(lookup_account, login.login)
    policy = _policy(node, conn, login, account) if account is not None else None
    env: dict[str, str] = {}
    join_sid: str | None = None
    pty: ev.PtyRequest | None = None
    agent_socket: str | None = None
    while (req := await chan.next_request()) is not None:
        request = req.request
        if isinstance(request, ev.Env):
            if request.name == JOIN_ENV:
                join_sid = request.value
                await chan.reply(req, True)
            else:
                ok = len(env) < MAX_ENV and _env_accepted(request.name)
                if ok:
                    env[request.name] = request.value
                await chan.reply(req, ok)
        elif isinstance(request, ev.PtyRequest):
            ok = pty is None and login.certificate.permit_pty
            if ok:
                pty = request
            await chan.reply(req, ok)
        elif isinstance(request, ev.AgentForwarding):
            path = None
            if policy is not None and policy.agent_forwarding is not None and agent_socket is None:
                path = agent_socket = await policy.agent_forwarding(chan)
            if path is not None:
                node.reporter.emit(
                    audit_log.AGENT_FORWARD,
                    **login.audit_fields(),
                    server_hostname=node.hostname,
                    success=True,
                )
            elif agent_socket is None:
                node.reporter.emit(
                    audit_log.AGENT_FORWARD_FAILURE,
                    **login.audit_fields(),
                    server_hostname=node.hostname,
                    success=False,
                    error=_agent_refusal(login),
                )
            await chan.reply(req, path is not None)
        elif isinstance(request, ev.Shell | ev.Exec | ev.Subsystem):
            if (
                isinstance(request, ev.Subsystem)
                and login.certificate.force_command is None
                and policy is not None
                and _subsystem_handler(policy, request.name) is None
            ):
                node.reporter.emit(
                    audit_log.SUBSYSTEM_FAILURE,
                    **login.audit_fields(),
                    server_hostname=node.hostname,
                    success=False,
                    name=request.name,
                    error="no such subsystem on this node",
                )
                await chan.reply(req, False)
                continue
            await chan.reply(req, True)
            if account is None or policy is None:
                log.info("%s: login %r has no OS account here", login.user, login.login)
                await _fail(
                    chan,
                    f"trioport: the login {login.login!r} has no account on {node.hostname};"
                    " ask an administrator to create it",
                    NO_ACCOUNT_STATUS,
                )
                return
            if agent_socket is not None:
                env["SSH_AUTH_SOCK"] = agent_socket
            await _start(node, conn, chan, login, policy, request, env, pty, join_sid)
            return
        else:
            await chan.reply(req, False)


async def _start(
    node: NodeContext,
    conn: SSHConnection,
    chan: ChannelStream,
    login: Login,
    policy: SessionPolicy,
    request: ev.Shell | ev.Exec | ev.Subsystem,
    env: dict[str, str],
    pty: ev.PtyRequest | None,
    join_sid: str | None,
) -> None:
    forced = policy.force_command
    if isinstance(request, ev.Subsystem) and forced is None:
        await _subsystem(node, chan, login, policy, request.name)
        return
    if isinstance(request, ev.Shell) and join_sid is not None and forced is None:
        await _join(node, chan, login, join_sid)
        return
    command = None
    if isinstance(request, ev.Exec):
        command = request.command.decode("utf-8", "surrogateescape")
    if forced is not None:
        if command is not None:
            env["SSH_ORIGINAL_COMMAND"] = command
        command = forced
    kind = "interactive" if isinstance(request, ev.Shell) else "exec"
    await run_session(node, chan, login, policy, command, kind, env, pty)


def _subsystem_handler(policy: SessionPolicy, name: str) -> SubsystemHandler | None:
    return _sftp_handler(policy) if name == "sftp" else None


async def _subsystem(
    node: NodeContext, chan: ChannelStream, login: Login, policy: SessionPolicy, name: str
) -> None:
    handler = _subsystem_handler(policy, name)
    assert handler is not None  # checked before the request was accepted
    node.reporter.emit(
        audit_log.SUBSYSTEM,
        **login.audit_fields(),
        server_hostname=node.hostname,
        success=True,
        name=name,
    )
    await handler(chan)


def _audit(login: Login, session: ActiveSession, node: NodeContext) -> dict[str, Any]:
    return {
        **login.audit_fields(),
        "sid": session.sid,
        "server_hostname": node.hostname,
        "session_kind": session.kind,
    }


async def run_session(
    node: NodeContext,
    chan: ChannelStream,
    login: Login,
    policy: SessionPolicy,
    command: str | None,
    kind: str,
    env: dict[str, str],
    pty: ev.PtyRequest | None,
) -> None:
    """Run a shell (``command`` None) or a command as a recorded, tracked session."""
    sid = str(uuid.uuid4())
    session = ActiveSession(
        sid=sid,
        kind=kind,
        user=login.user,
        login=login.login,
        remote_addr=login.remote_addr,
        node_id=node.host_id,
        node_hostname=node.hostname,
    )
    session.add_party(login.user, login.remote_addr)
    header = {
        "kind": kind,
        "user": login.user,
        "login": login.login,
        "server_id": node.host_id,
        "server_hostname": node.hostname,
        "cluster": node.cluster_name,
        "command": command,
        "term": pty.term if pty is not None else None,
        "width": pty.width_chars if pty is not None else None,
        "height": pty.height_rows if pty is not None else None,
        "time": node.clock(),
    }
    session.recording = node.uploader.start(
        sid, header, on_lost=functools.partial(_recording_lost, node, login, session)
    )
    interactive = pty is not None
    if interactive:
        session.input_send, session.input_receive = trio.open_memory_channel[bytes](64)
    node.registry.add(session)
    node.reporter.put_session(session.resource())
    if node.journal is not None:
        await node.journal.started(
            session.resource(),
            {
                **_audit(login, session, node),
                "participants": [login.user],
                "session_start": session.created.isoformat(),
            },
        )
    start_fields: dict[str, Any] = {}
    if pty is not None:
        start_fields["size"] = f"{pty.width_chars}:{pty.height_rows}"
        start_fields["term"] = pty.term
    if command is not None:
        start_fields["command"] = command
    if "SSH_AUTH_SOCK" in env:
        start_fields["agent_forwarding"] = True
    node.reporter.emit(audit_log.SESSION_START, **_audit(login, session, node), **start_fields)
    metrics.SESSIONS.inc()
    full_env = {**policy.environment, **env, "SSH_SESSION_ID": sid}
    wrapped = SessionChannel(chan, session, merge_input=interactive)
    try:
        async with trio.open_nursery() as nursery:
            if interactive:
                nursery.start_soon(wrapped.pump_client_input)
            nursery.start_soon(_refresh, node, session)
            nursery.start_soon(_hang_up, chan, nursery.cancel_scope)
            nursery.start_soon(
                _recording_policy, node, wrapped, login, session, nursery.cancel_scope
            )
            if login.access.strict_recording:
                await _wait_recording_stored(session)
            try:
                await run_process_on_channel(wrapped, command, policy, full_env, pty)  # type: ignore[arg-type]
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            except* OSError as group:
                exc = group.exceptions[0]
                log.warning("session %s: cannot start %s: %s", sid, policy.shell, exc)
                why = getattr(exc, "strerror", None) or exc
                await _fail(
                    wrapped,  # type: ignore[arg-type]
                    f"trioport: cannot start {policy.shell}: {why}",
                    CANNOT_START_STATUS,
                )
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):  # the session's end is told even when cancelled
            await _end(node, login, session, command)


async def _hang_up(chan: ChannelStream, scope: trio.CancelScope) -> None:
    """End the session when the client closes its channel (or the connection ends)
    before the command does: the command and everything it started are killed."""
    await chan.wait_closed()
    scope.cancel()


async def _wait_recording_stored(session: ActiveSession) -> None:
    """A strict session starts only once its recording is stored; if it cannot be,
    this never returns (:func:`_recording_policy` ends the session)."""
    recording = session.recording
    assert recording is not None
    with trio.move_on_after(STRICT_START_SECONDS):
        if await recording.wait_stored():
            return
    recording.fail(f"the auth service did not store it within {STRICT_START_SECONDS:g} s")
    await trio.sleep_forever()


async def _recording_policy(
    node: NodeContext,
    chan: Any,
    login: Login,
    session: ActiveSession,
    scope: trio.CancelScope,
) -> None:
    """Once the recording is lost, end the session if the policy is strict."""
    recording = session.recording
    assert recording is not None
    await recording.lost.wait()
    if not login.access.strict_recording:
        log.warning("session %s goes on unrecorded (record_session: best_effort)", session.sid)
        return
    log.warning("session %s ends: its recording cannot be stored (strict)", session.sid)
    await _fail(
        chan,
        f"trioport: this session ends because its recording cannot be stored"
        f" ({recording.failure}); your role requires recording (record_session: strict)",
        RECORDING_FAILED_STATUS,
    )
    scope.cancel()


def _agent_refusal(login: Login) -> str:
    if not login.certificate.permit_agent_forwarding:
        return (
            "the certificate does not permit agent forwarding"
            " (no role allowed it when it was issued: options.forward_agent)"
        )
    if not login.access.forward_agent:
        return "no role of the user allows agent forwarding (options.forward_agent)"
    return "agent forwarding could not be set up on the node"


def _recording_lost(node: NodeContext, login: Login, session: ActiveSession, why: str) -> None:
    """Audit a recording that cannot be stored (during the session or after it)."""
    node.reporter.emit(
        audit_log.SESSION_UPLOAD_FAILURE,
        **_audit(login, session, node),
        success=False,
        error=f"the session recording cannot be stored: {why}",
        record_session=login.access.record_session,
    )


async def _refresh(node: NodeContext, session: ActiveSession) -> None:
    while True:
        await trio.sleep(REFRESH_SECONDS)
        node.reporter.put_session(session.resource())


async def _end(
    node: NodeContext, login: Login, session: ActiveSession, command: str | None
) -> None:
    """Close the books on a session (the caller shields it: it runs even when cancelled)."""
    if session.recording is not None:
        session.recording.finish()
    session.ended.set()
    for queue in session.viewers.values():
        queue.close()
    session.viewers.clear()
    node.registry.remove(session)
    outcome: dict[str, Any] = {}
    if session.exit_signal is not None:
        outcome["exit_signal"] = session.exit_signal
    elif session.exit_status is not None:
        outcome["exit_code"] = session.exit_status
    node.reporter.emit(
        audit_log.SESSION_END,
        **_audit(login, session, node),
        **outcome,
        participants=sorted({p.user for p in session.parties.values()}),
        session_start=session.created.isoformat(),
    )
    if session.kind == "exec":
        failed = session.exit_status != 0
        node.reporter.emit(
            audit_log.EXEC_FAILURE if failed else audit_log.EXEC,
            **_audit(login, session, node),
            command=command,
            success=not failed,
            **outcome,
        )
    node.reporter.put_session(session.resource(state="ended"))
    if node.journal is not None:
        await node.journal.ended(session.sid)


async def _join(node: NodeContext, chan: ChannelStream, joiner: Login, sid: str) -> None:
    """Attach this channel to a running interactive session as another party."""
    session = node.registry.get(sid)
    if session is None or session.input_send is None:
        await _fail(chan, f"trioport: no interactive session {sid!r} on {node.hostname}", 1)
        return
    decision = await node.access.check(joiner.user, session.login, node.labels())
    if not decision:
        node.reporter.emit(
            audit_log.SESSION_REJECTED,
            **joiner.audit_fields(),
            sid=sid,
            success=False,
            error=f"may not join a session as {session.login!r}: {decision.reason}",
        )
        await _fail(chan, f"trioport: you may not join session {sid}: {decision.reason}", 1)
        return
    party = session.add_party(joiner.user, joiner.remote_addr)
    send, receive = trio.open_memory_channel[bytes](PARTY_QUEUE)
    session.viewers[party] = send
    if session.recording is not None:
        session.recording.party("join", joiner.user)
    node.reporter.emit(audit_log.SESSION_JOIN, **joiner.audit_fields(), sid=sid)
    node.reporter.put_session(session.resource())
    log.info("%s joined session %s", joiner.user, sid)
    try:
        async with trio.open_nursery() as nursery:

            async def output() -> None:
                try:
                    async for data in receive:
                        await chan.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            async def keystrokes() -> None:
                assert session.input_send is not None
                try:
                    while data := await chan.receive_some():
                        await session.input_send.send(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            async def requests() -> None:
                while (req := await chan.next_request()) is not None:
                    await chan.reply(req, False)  # a joined party cannot resize or signal

            nursery.start_soon(output)
            nursery.start_soon(keystrokes)
            nursery.start_soon(requests)
    finally:
        session.viewers.pop(party, None)
        send.close()
        if not session.ended.is_set():
            session.parties.pop(party, None)
            if session.recording is not None:
                session.recording.party("leave", joiner.user)
            node.reporter.put_session(session.resource())
        node.reporter.emit(audit_log.SESSION_LEAVE, **joiner.audit_fields(), sid=sid)
    if session.ended.is_set():
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                if session.exit_status is not None:
                    await chan.request(ev.ExitStatus(status=session.exit_status), want_reply=False)
                else:  # killed: by a signal, or because its owner's connection ended
                    name = session.exit_signal or "HUP"
                    await chan.request(ev.ExitSignal(name=name), want_reply=False)
                await chan.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
