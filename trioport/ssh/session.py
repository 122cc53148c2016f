"""Serving session channels: run a command or a shell, with or without a pty.

:func:`serve_session` reads the requests of one session channel (RFC 4254 §6) and
runs what they ask for as a child process: ``exec`` and ``shell`` with pipes, or
on a pseudo-terminal after ``pty-req`` (``window-change`` resizes it, ``signal``
signals it), then reports ``exit-status`` or ``exit-signal``, sends EOF and closes.
Subsystems are looked up in a table of handlers. The node service builds on this
with its own policy (which OS login, recording); the SSH library's users get a
working shell server out of the box (see docs/ssh-library.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import signal
import struct
import subprocess
import termios
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio

from ..sshproto import events as ev
from .channel import ChannelStream

__all__ = ["SessionPolicy", "run_process_on_channel", "serve_session"]

log = logging.getLogger("trioport.ssh.session")

SubsystemHandler = Callable[[ChannelStream], Awaitable[None]]

#: Environment variables one session may set with ``env`` (OpenSSH: 128).
MAX_ENV = 128

#: pty-req mode opcodes we apply (RFC 4254 §8); others are accepted and ignored.
_TTY_OP_ISPEED, _TTY_OP_OSPEED = 128, 129


@dataclass
class SessionPolicy:
    """What a session may do, and how its processes start."""

    shell: str = "/bin/sh"
    environment: dict[str, str] = field(default_factory=dict)
    #: Environment variables a client may set with ``env`` (OpenSSH AcceptEnv).
    accept_env: tuple[str, ...] = ("LANG", "LC_*", "TERM")
    allow_pty: bool = True
    subsystems: Mapping[str, SubsystemHandler] = field(default_factory=dict)
    #: If set, run this instead of any shell, exec or subsystem (certificate force-command).
    force_command: str | None = None
    #: ``auth-agent-req@openssh.com``: set up agent forwarding for the session and
    #: return the socket path for ``SSH_AUTH_SOCK`` (None refuses); None refuses all.
    #: See :func:`trioport.ssh.agent.session_agent_forwarding`.
    agent_forwarding: Callable[[ChannelStream], Awaitable[str | None]] | None = None
    cwd: str | None = None
    user: str | int | None = None
    group: str | int | None = None
    extra_groups: list[int] | None = None


def _env_allowed(name: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _set_winsize(fd: int, rows: int, cols: int, xpixel: int = 0, ypixel: int = 0) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpixel, ypixel))


async def serve_session(chan: ChannelStream, policy: SessionPolicy | None = None) -> None:
    """Serve one "session" channel until its command ends or the client closes it."""
    policy = policy or SessionPolicy()
    env: dict[str, str] = {}
    pty: ev.PtyRequest | None = None
    agent_socket: str | None = None
    while (req := await chan.next_request()) is not None:
        request = req.request
        if isinstance(request, ev.Env):
            # OpenSSH's session_env_req ignores more than 128 variables, too.
            ok = len(env) < MAX_ENV and _env_allowed(request.name, policy.accept_env)
            if ok:
                env[request.name] = request.value
            await chan.reply(req, ok)
        elif isinstance(request, ev.PtyRequest):
            ok = policy.allow_pty and pty is None
            if ok:
                pty = request
            await chan.reply(req, ok)
        elif isinstance(request, ev.AgentForwarding):
            path = None
            if policy.agent_forwarding is not None and agent_socket is None:
                path = agent_socket = await policy.agent_forwarding(chan)
            await chan.reply(req, path is not None)
        elif isinstance(request, ev.Shell | ev.Exec):
            command = (
                None
                if isinstance(request, ev.Shell)
                else request.command.decode("utf-8", "surrogateescape")
            )
            if policy.force_command is not None:
                if command is not None:
                    env["SSH_ORIGINAL_COMMAND"] = command  # as sshd does
                command = policy.force_command
            if agent_socket is not None:
                env["SSH_AUTH_SOCK"] = agent_socket
            await chan.reply(req, True)
            await run_process_on_channel(chan, command, policy, env, pty)
            return
        elif isinstance(request, ev.Subsystem):
            handler = policy.subsystems.get(request.name)
            if policy.force_command is not None:
                if agent_socket is not None:
                    env["SSH_AUTH_SOCK"] = agent_socket
                await chan.reply(req, True)
                await run_process_on_channel(chan, policy.force_command, policy, env, pty)
                return
            if handler is None:
                await chan.reply(req, False)
                continue
            await chan.reply(req, True)
            await handler(chan)
            return
        else:
            await chan.reply(req, False)


async def run_process_on_channel(
    chan: ChannelStream,
    command: str | None,
    policy: SessionPolicy,
    env: Mapping[str, str],
    pty: ev.PtyRequest | None,
) -> None:
    """Run ``command`` (None: a login shell) wired to ``chan``; report how it ended."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **policy.environment, **env}
    if pty is not None:
        full_env["TERM"] = pty.term or "xterm"
    argv = [policy.shell, "-l"] if command is None else [policy.shell, "-c", command]
    group, extra_groups = _groups_for(policy)
    kwargs: dict[str, object] = {
        "env": full_env,
        "cwd": policy.cwd,
        "user": policy.user,
        "group": group,
        "extra_groups": extra_groups,
    }
    if pty is None:
        status = await _run_piped(chan, argv, kwargs)
    else:
        status = await _run_on_pty(chan, argv, kwargs, pty)
    await _report_exit(chan, status)


def _groups_for(policy: SessionPolicy) -> tuple[str | int | None, list[int] | None]:
    """The group and supplementary groups to run as: the login's own unless given.

    Switching only the uid would leave a child of a root server in root's groups;
    like login(1), a session gets the user's primary group and group list.
    """
    group, extra = policy.group, policy.extra_groups
    if policy.user is None:
        return group, extra
    try:
        entry = (
            pwd.getpwuid(policy.user) if isinstance(policy.user, int) else pwd.getpwnam(policy.user)
        )
    except KeyError:
        return group, extra  # subprocess reports the unknown user
    if group is None:
        group = entry.pw_gid
    if extra is None:
        extra = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return group, extra


async def _report_exit(chan: ChannelStream, returncode: int) -> None:
    try:
        if returncode < 0:
            name = signal.Signals(-returncode).name.removeprefix("SIG")
            await chan.request(ev.ExitSignal(name=name), want_reply=False)
        else:
            await chan.request(ev.ExitStatus(status=returncode), want_reply=False)
        await chan.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _signals(chan: ChannelStream, process: trio.Process, pty_fd: int | None) -> None:
    """Apply window-change and signal requests while the process runs."""
    while (req := await chan.next_request()) is not None:
        request = req.request
        if isinstance(request, ev.WindowChange) and pty_fd is not None:
            _set_winsize(
                pty_fd,
                request.height_rows,
                request.width_chars,
                request.width_pixels,
                request.height_pixels,
            )
            await chan.reply(req, True)
        elif isinstance(request, ev.Signal):
            sig = getattr(signal, "SIG" + request.name, None)
            if sig is not None and process.returncode is None:
                process.send_signal(sig)
            await chan.reply(req, sig is not None)
        else:
            await chan.reply(req, False)


#: Bytes asked of the kernel per pipe: Linux's default pipe holds 64 KiB, so a
#: bulk transfer into ``cat`` wakes both sides every two packets. A wider pipe
#: (the unprivileged maximum, ``/proc/sys/fs/pipe-max-size``, is 1 MiB by
#: default) lets each side move more per wakeup, as sshd's larger buffers do.
PIPE_SIZE = 1 << 20
PIPE_READ_SIZE = 256 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _widen_pipe(fd: int) -> None:
    """Ask for a :data:`PIPE_SIZE` pipe buffer; a refusal leaves the default."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


async def _writev_all(fd: int, chunks: list[bytes]) -> None:
    """Write ``chunks`` to the non-blocking ``fd`` with as few ``writev`` calls as it takes.

    Raises:
        BrokenPipeError: the reader is gone.
    """
    views = [memoryview(c) for c in chunks if c]  # an empty view would never drain
    while views:
        try:
            written = os.writev(fd, views[:1024])  # IOV_MAX is 1024 on Linux
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        while written:
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0] = views[0][written:]
                written = 0
    await trio.lowlevel.checkpoint()


async def _run_piped(chan: ChannelStream, argv: list[str], kwargs: dict) -> int:
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kwargs,
    )
    assert process.stdin and process.stdout and process.stderr

    for pipe in (process.stdin, process.stdout):
        _widen_pipe(pipe.fileno())

    async def feed_stdin() -> None:
        fd = process.stdin.fileno()
        try:
            while chunks := await chan.receive_chunks():
                await _writev_all(fd, chunks)
        except (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError):
            pass
        finally:
            await trio.aclose_forcefully(process.stdin)

    async def pump(source: trio.abc.ReceiveStream, stream: int | None) -> None:
        try:
            while data := await source.receive_some(PIPE_READ_SIZE):
                if stream is None:
                    await chan.send_all(data)
                else:
                    await chan.send_extended(data, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; the finally below ends the command

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed_stdin)
            nursery.start_soon(_signals, chan, process, None)
            async with trio.open_nursery() as outputs:
                outputs.start_soon(pump, process.stdout, None)
                outputs.start_soon(pump, process.stderr, 1)
            await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        # Close our ends of the pipes now, not when the garbage collector gets to
        # them: whatever the command left running (a pipeline, a background job)
        # then dies of SIGPIPE on its next write, as it would under sshd.
        for pipe in (process.stdin, process.stdout, process.stderr):
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(pipe)
        if process.returncode is None:
            _kill_group(process)
            with trio.CancelScope(shield=True):
                await process.wait()
    return process.returncode


def _kill_group(process: trio.Process) -> None:
    """Kill a session cut short, with everything it started (its own process group:
    it was started with ``start_new_session``), so nothing outlives the session."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


async def _run_on_pty(
    chan: ChannelStream, argv: list[str], kwargs: dict, pty: ev.PtyRequest
) -> int:
    master, slave = os.openpty()
    try:
        _set_winsize(slave, pty.height_rows, pty.width_chars, pty.width_pixels, pty.height_pixels)

        def make_controlling_tty() -> None:  # runs in the child, after setsid
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        process = await trio.lowlevel.open_process(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=make_controlling_tty,
            **kwargs,
        )
    finally:
        os.close(slave)
    master_stream = trio.lowlevel.FdStream(master)

    async def to_pty() -> None:
        try:
            while data := await chan.receive_some():
                await master_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def from_pty() -> None:
        try:
            while data := await master_stream.receive_some(32768):
                await chan.send_all(data)
        except (trio.BrokenResourceError, OSError):
            pass  # EIO: every process on the terminal has closed it

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(to_pty)
            nursery.start_soon(_signals, chan, process, master)
            await from_pty()
            await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            _kill_group(process)
            with trio.CancelScope(shield=True):
                await process.wait()
        await trio.aclose_forcefully(master_stream)
    return process.returncode
