"""The ``sftp`` subsystem: SFTP version 3 served as the session's OS login.

The node runs as root and its sessions run as an OS login, so file operations must
be checked by the kernel against that login, not against root. We do what OpenSSH
does with sftp-server: :func:`serve_sftp` starts a child process (``python -I``
running this module's :func:`main`) that sets its groups, gid and uid
to the login's (after an optional chroot), and speaks the SFTP byte stream over
its stdin and stdout; the parent only copies bytes between the channel and the
child. Whatever the child can open, the login could open; nothing it does runs
with the node's privileges. When the session ends the child is killed.

Inside the child, :func:`serve_sftp_stream` runs the request loop over any trio
stream: :class:`~trioport.sshproto.sftp.ServerSession` frames and checks the
protocol (nothing before INIT, packets of at most 256 KiB, READs clamped to
255 KiB), and each request is carried out in a worker thread
(``trio.to_thread.run_sync``), one at a time and in order, as sftp-server does.
A protocol violation ends the session with exit status 2.

Paths are bytes and resolve as the login would see them: relative paths from its
start directory (by default its home), absolute paths from ``/`` (or the chroot).

When the node serves the session, each operation that opens or changes a file is
an ``sftp`` audit event and the bytes moved per file an ``sftp_summary``:
:mod:`.sftp_audit` watches the bytes the parent copies (never the child's word).
"""

from __future__ import annotations

import argparse
import errno
import grp
import logging
import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ...errors import RemoteProtocolError
from ...ssh.channel import ChannelStream
from ...sshproto import events as ev
from ...sshproto import sftp
from ...sshproto.sftp import Attrs, NameEntry, Status, StatusCode

if TYPE_CHECKING:
    from .sftp_audit import AuditSink

__all__ = ["MAX_HANDLES", "SftpIdentity", "main", "resolve_identity", "serve_sftp"]

log = logging.getLogger("trioport.node.sftp")

#: Open file and directory handles per session (reported by limits@openssh.com).
MAX_HANDLES = 512
#: Entries per READDIR reply (sftp-server sends at most 100) ...
_READDIR_ENTRIES = 100
#: ... and bytes, so a reply stays well under the client's 256 KiB packet limit.
_READDIR_BYTES = 128 * 1024
#: Exit statuses of the child: the client closed cleanly, or broke the protocol.
EXIT_OK, EXIT_PROTOCOL_ERROR = 0, 2
#: The most child stderr we copy to our log per session.
_MAX_LOGGED = 16 * 1024

_MESSAGES = {
    StatusCode.OK: "Success",
    StatusCode.EOF: "End of file",
    StatusCode.NO_SUCH_FILE: "No such file",
    StatusCode.PERMISSION_DENIED: "Permission denied",
    StatusCode.FAILURE: "Failure",
    StatusCode.BAD_MESSAGE: "Bad message",
    StatusCode.OP_UNSUPPORTED: "Operation unsupported",
}

# errno -> status, as sftp-server's errno_to_portable maps them.
_ERRNO_STATUS = {
    errno.ENOENT: StatusCode.NO_SUCH_FILE,
    errno.ENOTDIR: StatusCode.NO_SUCH_FILE,
    errno.EBADF: StatusCode.NO_SUCH_FILE,
    errno.ELOOP: StatusCode.NO_SUCH_FILE,
    errno.EPERM: StatusCode.PERMISSION_DENIED,
    errno.EACCES: StatusCode.PERMISSION_DENIED,
    errno.EFAULT: StatusCode.PERMISSION_DENIED,
    errno.ENAMETOOLONG: StatusCode.BAD_MESSAGE,
    errno.EINVAL: StatusCode.BAD_MESSAGE,
    errno.ENOSYS: StatusCode.OP_UNSUPPORTED,
    errno.EOPNOTSUPP: StatusCode.OP_UNSUPPORTED,
}


class _Failed(Exception):
    """Ends a request with a status other than OK."""

    def __init__(self, code: StatusCode) -> None:
        self.code = code


# --- the request loop (runs in the child) -------------------------------------------------


def _status(id_: int, code: StatusCode) -> Status:
    return Status(id_, code, _MESSAGES.get(code, "Failure"), "")


def _attrs(st: os.stat_result) -> Attrs:
    return Attrs(
        size=st.st_size,
        uid=st.st_uid,
        gid=st.st_gid,
        permissions=st.st_mode,
        atime=int(st.st_atime) & 0xFFFFFFFF,
        mtime=int(st.st_mtime) & 0xFFFFFFFF,
    )


def _mode_string(mode: int) -> str:
    kind = {
        stat.S_IFDIR: "d",
        stat.S_IFLNK: "l",
        stat.S_IFCHR: "c",
        stat.S_IFBLK: "b",
        stat.S_IFIFO: "p",
        stat.S_IFSOCK: "s",
    }.get(stat.S_IFMT(mode), "-")
    return kind + stat.filemode(mode)[1:]


def _name_of(table: Callable[[int], object], ident: int) -> str:
    try:
        return table(ident)[0]  # type: ignore[index]
    except (KeyError, OSError):
        return str(ident)


def longname(name: bytes, st: os.stat_result, now: float) -> bytes:
    """An ``ls -l`` line for a READDIR entry (draft §7 suggests this format)."""
    when = time.localtime(st.st_mtime)
    recent = now - 182 * 86400 < st.st_mtime <= now + 3600
    date = time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", when)
    user = _name_of(pwd.getpwuid, st.st_uid)
    group = _name_of(grp.getgrgid, st.st_gid)
    head = (
        f"{_mode_string(st.st_mode)} {st.st_nlink:3d} {user:<8.8} {group:<8.8} "
        f"{st.st_size:8d} {date} "
    )
    return head.encode() + name


@dataclass
class _File:
    fd: int
    path: bytes


@dataclass
class _Dir:
    path: bytes
    entries: list[bytes] | None = None  # read on the first READDIR
    position: int = 0


@dataclass
class _Handles:
    """Open handles by their opaque id (a uint32 counter)."""

    table: dict[bytes, _File | _Dir] = field(default_factory=dict)
    counter: int = 0

    def add(self, item: _File | _Dir) -> bytes:
        if len(self.table) >= MAX_HANDLES:
            raise _Failed(StatusCode.FAILURE)
        self.counter += 1
        handle = self.counter.to_bytes(4, "big")
        self.table[handle] = item
        return handle

    def file(self, handle: bytes) -> _File:
        item = self.table.get(handle)
        if not isinstance(item, _File):
            raise _Failed(StatusCode.NO_SUCH_FILE)  # sftp-server: "invalid handle"
        return item

    def dir(self, handle: bytes) -> _Dir:
        item = self.table.get(handle)
        if not isinstance(item, _Dir):
            raise _Failed(StatusCode.NO_SUCH_FILE)
        return item

    def close(self, handle: bytes) -> None:
        item = self.table.pop(handle, None)
        if item is None:
            raise _Failed(StatusCode.NO_SUCH_FILE)
        if isinstance(item, _File):
            os.close(item.fd)

    def close_all(self) -> None:
        for item in self.table.values():
            if isinstance(item, _File):
                try:
                    os.close(item.fd)
                except OSError:
                    pass
        self.table.clear()


def _open_flags(pflags: int) -> int:
    """SSH_FXF_* to open(2) flags, as sftp-server's flags_from_portable does."""
    f = sftp.OpenFlags
    if pflags & f.READ and pflags & f.WRITE:
        flags = os.O_RDWR
    elif pflags & f.WRITE:
        flags = os.O_WRONLY
    else:
        flags = os.O_RDONLY
    if pflags & f.APPEND:
        flags |= os.O_APPEND
    if pflags & f.CREAT:
        flags |= os.O_CREAT
    if pflags & f.TRUNC:
        flags |= os.O_TRUNC
    if pflags & f.EXCL:
        flags |= os.O_EXCL
    return flags | os.O_NOCTTY | os.O_CLOEXEC


def _realpath(path: bytes) -> bytes:
    """Canonicalise like sftp-server: every component must exist except the last."""
    path = path or b"."
    try:
        return os.path.realpath(path, strict=True)
    except FileNotFoundError:
        parent, base = os.path.split(os.path.abspath(path))
        resolved = os.path.realpath(parent, strict=True)
        if base in (b"", b".", b".."):
            raise
        return os.path.join(resolved, base)


class SftpFiles:
    """Carries out SFTP requests on the local file system (synchronously).

    One instance per session. Runs in a worker thread, one request at a time.
    """

    def __init__(self, home: bytes | None = None) -> None:
        self.handles = _Handles()
        self.home = home
        self._dispatch: dict[type, Callable] = {
            sftp.Open: self._open,
            sftp.Close: self._close,
            sftp.Read: self._read,
            sftp.Write: self._write,
            sftp.Lstat: lambda r: _reply_attrs(r.id, os.lstat(r.path)),
            sftp.Stat: lambda r: _reply_attrs(r.id, os.stat(r.path)),
            sftp.Fstat: lambda r: _reply_attrs(r.id, os.fstat(self.handles.file(r.handle).fd)),
            sftp.Setstat: lambda r: self._setstat(r.id, r.path, r.attrs, follow=True),
            sftp.Lsetstat: lambda r: self._setstat(r.id, r.path, r.attrs, follow=False),
            sftp.Fsetstat: lambda r: self._setstat(
                r.id, self.handles.file(r.handle).fd, r.attrs, follow=True
            ),
            sftp.Opendir: self._opendir,
            sftp.Readdir: self._readdir,
            sftp.Remove: lambda r: _ok(r.id, os.unlink(r.filename)),
            sftp.Mkdir: lambda r: _ok(r.id, os.mkdir(r.path, _perm(r.attrs, 0o777))),
            sftp.Rmdir: lambda r: _ok(r.id, os.rmdir(r.path)),
            sftp.Realpath: lambda r: _one_name(r.id, _realpath(r.path)),
            sftp.Rename: self._rename,
            sftp.Readlink: lambda r: _one_name(r.id, os.readlink(r.path)),
            sftp.Symlink: lambda r: _ok(r.id, os.symlink(r.target, r.link)),
            sftp.PosixRename: lambda r: _ok(r.id, os.rename(r.oldpath, r.newpath)),
            sftp.Hardlink: lambda r: _ok(r.id, os.link(r.oldpath, r.newpath)),
            sftp.Fsync: lambda r: _ok(r.id, os.fsync(self.handles.file(r.handle).fd)),
            sftp.Statvfs: lambda r: _statvfs(r.id, os.statvfs(r.path)),
            sftp.Fstatvfs: lambda r: _statvfs(r.id, os.fstatvfs(self.handles.file(r.handle).fd)),
            sftp.Limits: lambda r: sftp.ExtendedReply(
                r.id, sftp.LimitsReply(max_open_handles=MAX_HANDLES).encode()
            ),
            sftp.ExpandPath: lambda r: _one_name(r.id, _realpath(self._expand(r.path))),
            sftp.HomeDirectory: lambda r: _one_name(r.id, self._home_of(r.username)),
            sftp.CopyData: self._copy_data,
            sftp.UsersGroupsById: self._users_groups,
        }

    def handle(self, request: sftp.Request) -> sftp.Response:
        """The response to one request (never raises for a request's failure)."""
        fn = self._dispatch.get(type(request))
        if fn is None:  # ExtendedRequest, UnknownRequest
            return _status(request.id, StatusCode.OP_UNSUPPORTED)
        try:
            return fn(request)
        except _Failed as failed:
            return _status(request.id, failed.code)
        except OSError as exc:
            return _status(request.id, _ERRNO_STATUS.get(exc.errno, StatusCode.FAILURE))
        except (ValueError, OverflowError):  # a NUL in a path, an offset past 2**63
            return _status(request.id, StatusCode.BAD_MESSAGE)

    def close(self) -> None:
        """Close every handle still open."""
        self.handles.close_all()

    # --- files ---------------------------------------------------------------------

    def _open(self, r: sftp.Open) -> sftp.Response:
        fd = os.open(r.filename, _open_flags(r.pflags), _perm(r.attrs, 0o666))
        try:
            return sftp.Handle(r.id, self.handles.add(_File(fd, r.filename)))
        except _Failed:
            os.close(fd)
            raise

    def _close(self, r: sftp.Close) -> sftp.Response:
        self.handles.close(r.handle)
        return _status(r.id, StatusCode.OK)

    def _read(self, r: sftp.Read) -> sftp.Response:
        fd = self.handles.file(r.handle).fd
        data = os.pread(fd, min(r.length, sftp.MAX_READ), r.offset)
        if not data:
            return _status(r.id, StatusCode.EOF)
        return sftp.Data(r.id, data)

    def _write(self, r: sftp.Write) -> sftp.Response:
        fd = self.handles.file(r.handle).fd
        view, offset = memoryview(r.data), r.offset
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        return _status(r.id, StatusCode.OK)

    def _setstat(self, id_: int, target: bytes | int, attrs: Attrs, *, follow: bool) -> Status:
        # The order sftp-server uses: size, permissions, times, owner.
        if attrs.size is not None:
            if not follow:
                raise _Failed(StatusCode.OP_UNSUPPORTED)
            os.truncate(target, attrs.size)
        if attrs.permissions is not None:
            try:
                os.chmod(target, attrs.permissions & 0o7777, follow_symlinks=follow)
            except NotImplementedError:  # lchmod does not exist on Linux
                raise _Failed(StatusCode.OP_UNSUPPORTED) from None
        if attrs.atime is not None and attrs.mtime is not None:
            os.utime(target, (attrs.atime, attrs.mtime), follow_symlinks=follow)
        if attrs.uid is not None and attrs.gid is not None:
            os.chown(target, attrs.uid, attrs.gid, follow_symlinks=follow)
        return _status(id_, StatusCode.OK)

    def _copy_data(self, r: sftp.CopyData) -> sftp.Response:
        src = self.handles.file(r.read_handle).fd
        dst = self.handles.file(r.write_handle).fd
        if src == dst and r.read_offset <= r.write_offset < r.read_offset + (r.read_length or 1):
            raise _Failed(StatusCode.FAILURE)  # an overlapping copy onto itself
        left = r.read_length or None
        read_at, write_at = r.read_offset, r.write_offset
        while left is None or left > 0:
            chunk = os.pread(src, min(sftp.MAX_READ, left or sftp.MAX_READ), read_at)
            if not chunk:
                break
            written = 0
            while written < len(chunk):
                written += os.pwrite(dst, chunk[written:], write_at + written)
            read_at += len(chunk)
            write_at += len(chunk)
            if left is not None:
                left -= len(chunk)
        return _status(r.id, StatusCode.OK)

    # --- directories ------------------------------------------------------------------

    def _opendir(self, r: sftp.Opendir) -> sftp.Response:
        path = r.path or b"."
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise _Failed(StatusCode.NO_SUCH_FILE)
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))  # fail now if unreadable
        return sftp.Handle(r.id, self.handles.add(_Dir(path)))

    def _readdir(self, r: sftp.Readdir) -> sftp.Response:
        d = self.handles.dir(r.handle)
        if d.entries is None:
            d.entries = [b".", b"..", *sorted(os.listdir(d.path))]
        out: list[NameEntry] = []
        size = 0
        now = time.time()
        while d.position < len(d.entries) and len(out) < _READDIR_ENTRIES:
            name = d.entries[d.position]
            d.position += 1
            try:
                st = os.lstat(os.path.join(d.path, name))
            except OSError:
                continue  # gone since the listing, or unreachable: skip it
            entry = NameEntry(name, longname(name, st, now), _attrs(st))
            out.append(entry)
            size += len(entry.encode())
            if size > _READDIR_BYTES:
                break
        if not out:
            return _status(r.id, StatusCode.EOF)
        return sftp.Name(r.id, tuple(out))

    def _rename(self, r: sftp.Rename) -> sftp.Response:
        # Draft §6.5: SSH_FXP_RENAME must not replace an existing file
        # (posix-rename@openssh.com does). A regular file moves by link + unlink,
        # which fails atomically if the target exists, as sftp-server does.
        st = os.lstat(r.oldpath)
        if stat.S_ISREG(st.st_mode):
            try:
                os.link(r.oldpath, r.newpath)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EPERM):
                    raise
            else:
                os.unlink(r.oldpath)
                return _status(r.id, StatusCode.OK)
        if os.path.lexists(r.newpath):
            raise _Failed(StatusCode.FAILURE)
        os.rename(r.oldpath, r.newpath)
        return _status(r.id, StatusCode.OK)

    # --- names ------------------------------------------------------------------------

    def _home_of(self, username: bytes) -> bytes:
        if not username:
            if self.home is None:
                raise _Failed(StatusCode.NO_SUCH_FILE)
            return self.home
        try:
            return os.fsencode(pwd.getpwnam(os.fsdecode(username)).pw_dir)
        except KeyError:
            raise _Failed(StatusCode.NO_SUCH_FILE) from None

    def _expand(self, path: bytes) -> bytes:
        """``~`` and ``~user`` at the start of a path (PROTOCOL §4.9)."""
        if not path.startswith(b"~"):
            return path
        head, sep, rest = path[1:].partition(b"/")
        home = self._home_of(head)
        return os.path.join(home, rest) if sep else home

    def _users_groups(self, r: sftp.UsersGroupsById) -> sftp.Response:
        def names(table: Callable[[int], object], ids: list[int]) -> tuple[bytes, ...]:
            out = []
            for ident in ids:
                try:
                    out.append(os.fsencode(table(ident)[0]))  # type: ignore[index]
                except (KeyError, OSError):
                    out.append(b"")
            return tuple(out)

        uids, gids = sftp.unpack_ids(r.uids), sftp.unpack_ids(r.gids)
        if len(uids) + len(gids) > 4096:
            raise _Failed(StatusCode.FAILURE)
        reply = sftp.UsersGroupsReply(names(pwd.getpwuid, uids), names(grp.getgrgid, gids))
        return sftp.ExtendedReply(r.id, reply.encode())


def _perm(attrs: Attrs, default: int) -> int:
    return attrs.permissions & 0o7777 if attrs.permissions is not None else default


def _ok(id_: int, _result: object) -> Status:
    return _status(id_, StatusCode.OK)


def _reply_attrs(id_: int, st: os.stat_result) -> sftp.StatReply:
    return sftp.StatReply(id_, _attrs(st))


def _one_name(id_: int, path: bytes) -> sftp.Name:
    return sftp.Name(id_, (NameEntry(path, path, Attrs()),))


def _statvfs(id_: int, st: os.statvfs_result) -> sftp.ExtendedReply:
    flag = (1 if st.f_flag & os.ST_RDONLY else 0) | (2 if st.f_flag & os.ST_NOSUID else 0)
    reply = sftp.StatvfsReply(
        st.f_bsize,
        st.f_frsize,
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
        st.f_favail,
        st.f_fsid & 0xFFFFFFFFFFFFFFFF,
        flag,
        st.f_namemax,
    )
    return sftp.ExtendedReply(id_, reply.encode())


async def serve_sftp_stream(
    receive: trio.abc.ReceiveStream, send: trio.abc.SendStream, *, home: bytes | None = None
) -> int:
    """Serve one SFTP session over a byte stream until EOF or a protocol error.

    Runs in the current process with its permissions: :func:`serve_sftp` calls
    this inside a child that already runs as the session's login.

    Args:
        receive: the client's bytes.
        send: where responses go.
        home: the login's home directory (for ``~`` and ``home-directory``).

    Returns:
        :data:`EXIT_OK` after EOF from the client, :data:`EXIT_PROTOCOL_ERROR` if
        it broke the protocol (the session then ends, as with sftp-server).
    """
    session = sftp.ServerSession()
    files = SftpFiles(home)
    try:
        while data := await receive.receive_some(65536):
            session.receive_data(data)
            while (request := session.next_request()) is not None:
                if isinstance(request, sftp.Init):
                    response: sftp.Response = sftp.Version(3, sftp.SERVER_EXTENSIONS)
                else:
                    response = await trio.to_thread.run_sync(files.handle, request)
                await send.send_all(session.send(response))
    except RemoteProtocolError as exc:
        log.warning("sftp session ended: %s", exc.description)
        return EXIT_PROTOCOL_ERROR
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return EXIT_OK
    finally:
        files.close()
    return EXIT_OK


# --- the parent side (runs in the node) ----------------------------------------------------

#: Where the ``trioport`` package lives. The child runs ``python -I`` (no
#: environment variables, no user site, no working directory on ``sys.path``, so
#: nothing of the login's can be imported) and finds trioport through this path
#: even when the node itself was started with PYTHONPATH.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from trioport.roles.node.sftp_server import main; sys.exit(main(sys.argv[1:]))"
)


@dataclass(frozen=True)
class SftpIdentity:
    """Who the child runs as: ids, supplementary groups and home directory."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str


def resolve_identity(
    user: str | int, group: str | int | None = None, extra_groups: list[int] | None = None
) -> SftpIdentity:
    """Look up a login the way a login does: its gid and its groups from the databases.

    Raises:
        KeyError: no such user or group.
    """
    pw = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
    if group is None:
        gid = pw.pw_gid
    else:
        gid = grp.getgrnam(group).gr_gid if isinstance(group, str) else group
    groups = extra_groups if extra_groups is not None else os.getgrouplist(pw.pw_name, gid)
    return SftpIdentity(pw.pw_uid, gid, tuple(groups), pw.pw_dir, pw.pw_name)


async def serve_sftp(
    chan: ChannelStream,
    *,
    root: str | None = None,
    user: str | int | None = None,
    group: str | int | None = None,
    extra_groups: list[int] | None = None,
    cwd: str | None = None,
    umask: int = 0o022,
) -> None:
    """Serve the ``sftp`` subsystem on ``chan`` as ``user``, in a child process.

    Use it in :class:`~trioport.ssh.session.SessionPolicy` as
    ``subsystems={"sftp": functools.partial(serve_sftp, user=login)}``.

    Args:
        chan: the session channel that asked for the subsystem.
        root: chroot to this directory first (as OpenSSH's ChrootDirectory; needs
            root, and every path the client sees is then inside it).
        user: the OS login (name or uid) whose permissions apply; None keeps
            ours (only sensible when the node itself runs as that login).
        group: its primary group (default: from the password database).
        extra_groups: its supplementary groups (default: from the group database).
        cwd: where relative paths start (default: the login's home, else ``/``).
        umask: the file creation mask (sshd's default 022).

    Reports the child's exit status on the channel (0 after a clean end, 2 after a
    protocol violation, 1 if it could not start: an unknown login, a chroot that
    fails) and sends EOF; the caller closes the channel. Never raises for the
    client's or the login's sake.

    When :data:`~.sftp_audit.AUDIT_SINK` holds a sink (the node sets it for each
    session channel), the session's operations are reported to it as audit events.
    """
    argv = [sys.executable, "-I", "-c", _BOOTSTRAP, _PACKAGE_PARENT, "--umask", oct(umask)]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if user is not None:
        try:
            ident = resolve_identity(user, group, extra_groups)
        except KeyError:
            log.warning("sftp: no OS account for login %r", user)
            await _end(chan, 1, f"sftp: no such user: {user}\r\n")
            return
        argv += ["--uid", str(ident.uid), "--gid", str(ident.gid), "--home", ident.home]
        argv += ["--groups", ",".join(map(str, ident.groups))]
        env.update(HOME=ident.home, USER=ident.name, LOGNAME=ident.name)
    elif (home := os.environ.get("HOME")) is not None:
        argv += ["--home", home]
    if root is not None:
        argv += ["--root", root]
    if cwd is not None:
        argv += ["--cwd", cwd]
    try:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("sftp: cannot start the server process: %s", exc)
        await _end(chan, 1, "sftp: cannot start the server\r\n")
        return
    assert process.stdin and process.stdout and process.stderr
    # Imported here: the child imports this module too, and needs none of it.
    from .sftp_audit import AUDIT_SINK, SftpAuditor

    sink = AUDIT_SINK.get()
    start_dir = cwd or (ident.home if user is not None else os.environ.get("HOME")) or "/"
    auditor = SftpAuditor(start_dir) if sink is not None else None

    async def to_child() -> None:
        try:
            while data := await chan.receive_some(65536):
                if auditor is not None:
                    _report(sink, auditor.client_data(data))
                await process.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the child exited (a protocol error) or the channel went away
        finally:
            await trio.aclose_forcefully(process.stdin)

    async def from_child() -> None:
        try:
            while data := await process.stdout.receive_some(65536):
                if auditor is not None:
                    _report(sink, auditor.server_data(data))
                await chan.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            process.kill()  # nobody is listening any more

    async def child_log() -> None:
        logged = 0
        while data := await process.stderr.receive_some(4096):
            if logged < _MAX_LOGGED:
                text = data[: _MAX_LOGGED - logged].decode("utf-8", "replace").rstrip()
                logged += len(data)
                log.info("sftp child %d: %s", process.pid, text)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(to_child)
            nursery.start_soon(child_log)
            await from_child()
            await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        if auditor is not None and (summary := auditor.summary()) is not None:
            _report(sink, [summary])
    code = process.returncode
    await _end(chan, code if code >= 0 else 128 - code)


def _report(sink: AuditSink | None, events: list[tuple[Any, dict[str, Any]]]) -> None:
    if sink is None:
        return
    for code, fields in events:
        try:
            sink(code, fields)
        except Exception:  # an audit sink's bug must not end the user's session
            log.exception("sftp: cannot report %s", code)


async def _end(chan: ChannelStream, status: int, message: str = "") -> None:
    """Report how the subsystem ended (stderr message, exit-status, EOF)."""
    try:
        if message:
            await chan.send_extended(message.encode())
        await chan.request(ev.ExitStatus(status=status), want_reply=False)
        await chan.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# --- the child's entry point ----------------------------------------------------------------


def _drop_privileges(args: argparse.Namespace) -> None:
    """chroot if asked, then become the login for good (real, effective and saved ids)."""
    # Load what the C library reads lazily (name service modules, the time zone)
    # while the real root is still visible, as sftp-server does before chroot.
    _name_of(pwd.getpwuid, os.getuid())
    _name_of(grp.getgrgid, os.getgid())
    time.localtime()
    if args.root:
        os.chroot(args.root)
        os.chdir("/")
    if args.uid is not None:
        groups = [int(g) for g in args.groups.split(",") if g] if args.groups else []
        if os.geteuid() == 0:
            os.setgroups(groups)
            os.setresgid(args.gid, args.gid, args.gid)
            os.setresuid(args.uid, args.uid, args.uid)
        if os.getresuid() != (args.uid,) * 3 or os.getresgid() != (args.gid,) * 3:
            raise SystemExit(f"sftp: cannot run as uid {args.uid}")
        if args.uid != 0:
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise SystemExit("sftp: privileges were not dropped")


def main(argv: list[str] | None = None) -> int:
    """The child: drop privileges, then serve SFTP on stdin/stdout."""
    parser = argparse.ArgumentParser(prog="trioport-sftp-server")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--groups", default="")
    parser.add_argument("--root")
    parser.add_argument("--home")
    parser.add_argument("--cwd")
    parser.add_argument("--umask", type=lambda s: int(s, 8), default=0o022)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        _drop_privileges(args)
    except OSError as exc:
        log.warning("sftp: cannot become the login: %s", exc)
        return 1
    os.umask(args.umask)
    for start in (args.cwd, args.home, "/"):
        if start:
            try:
                os.chdir(start)
                break
            except OSError:
                continue
    home = os.fsencode(args.home) if args.home else None

    async def run() -> int:
        receive = trio.lowlevel.FdStream(os.dup(0))
        send = trio.lowlevel.FdStream(os.dup(1))
        async with receive, send:
            return await serve_sftp_stream(receive, send, home=home)

    return trio.run(run)


if __name__ == "__main__":
    sys.exit(main())
