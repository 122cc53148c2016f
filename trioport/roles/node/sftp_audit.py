"""Audit events for SFTP sessions: what the client asked for, and whether it was done.

The node serves SFTP in a child process that runs as the login
(:mod:`.sftp_server`); the node itself only copies bytes between the channel and
the child. :class:`SftpAuditor` watches both directions of that copy, sans-IO:
the client's bytes are framed and decoded as requests, the child's as
responses, and each request that changes or opens something becomes one
``sftp`` audit event once its response arrives, with Teleport's per-operation
code (``TS001I`` open ... ``TS019I`` link; the last letter ``E`` when it failed)
and these fields:

- ``action``: ``open``, ``opendir``, ``setstat``, ``fsetstat``, ``remove``,
  ``mkdir``, ``rmdir``, ``rename``, ``symlink`` or ``link``;
- ``path``: the file, as an absolute path (a relative one is joined to the
  session's start directory, ``working_directory``); a handle's requests name
  the file it was opened as;
- ``target_path``: for ``rename`` the new name, for ``symlink`` and ``link`` what
  the new link points to;
- ``flags`` (``open``: ``read``, ``write``, ``append``, ``create``, ``truncate``,
  ``exclusive``) and ``attributes`` (``setstat``: what is being set);
- ``success``, and ``error`` with the server's status message when it failed.

Reads, writes, stats, directory listings and ``realpath`` are not an event each
(a 20 MiB copy is hundreds of them): the bytes read from and written to each file
go into one ``sftp_summary`` (``TS021I``) event when the session ends, as
``file_transfer_stats: [{path, bytes_read, bytes_written}]``.

Watching the wire from the node, rather than asking the child to report, means a
login that takes over its own SFTP child (it runs as her uid) still cannot
forge or hide the record of what her client asked for.

The node hands :func:`~.sftp_server.serve_sftp` its event sink through the
context variable :data:`AUDIT_SINK`, set by the node's SSH handler for each
session channel, so the shell code between them needs no change.
"""

from __future__ import annotations

import contextvars
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trioport.errors import DecodeError, RemoteProtocolError
from trioport.roles.auth import audit_log
from trioport.roles.auth.audit_log import EventCode
from trioport.sshproto import sftp

__all__ = ["AUDIT_SINK", "MAX_PENDING", "MAX_SUMMARY_FILES", "AuditSink", "SftpAuditor"]

#: Receives ``(code, fields)`` for each event; the node adds who, where and when.
AuditSink = Callable[[EventCode, dict[str, Any]], None]

#: The sink of the session channel being served (None: no auditing).
AUDIT_SINK: contextvars.ContextVar[AuditSink | None] = contextvars.ContextVar(
    "trioport_sftp_audit_sink", default=None
)

#: Requests awaiting their response that we keep track of; beyond this (a client
#: that pipelines without reading) the oldest are forgotten, and counted.
MAX_PENDING = 4096
#: Files listed in the summary at most (the rest are counted in ``files_omitted``).
MAX_SUMMARY_FILES = 1000

_OPEN_FLAGS = (
    (sftp.OpenFlags.READ, "read"),
    (sftp.OpenFlags.WRITE, "write"),
    (sftp.OpenFlags.APPEND, "append"),
    (sftp.OpenFlags.CREAT, "create"),
    (sftp.OpenFlags.TRUNC, "truncate"),
    (sftp.OpenFlags.EXCL, "exclusive"),
)


def _text(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def flag_names(pflags: int) -> list[str]:
    """``SSH_FXF_*`` bits as words (``["write", "create", "truncate"]``)."""
    return [name for bit, name in _OPEN_FLAGS if pflags & bit]


def attribute_fields(attrs: sftp.Attrs) -> dict[str, Any]:
    """The attributes a SETSTAT sets, as JSON (permissions in octal)."""
    out: dict[str, Any] = {}
    if attrs.size is not None:
        out["size"] = attrs.size
    if attrs.uid is not None:
        out["uid"], out["gid"] = attrs.uid, attrs.gid
    if attrs.permissions is not None:
        out["permissions"] = f"{attrs.permissions & 0o7777:04o}"
    if attrs.mtime is not None:
        out["atime"], out["mtime"] = attrs.atime, attrs.mtime
    return out


@dataclass
class _FileStats:
    path: str
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass
class _Pending:
    """A request we want to see answered."""

    #: The event to emit (None: only the bytes are counted).
    action: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    #: The file a READ or WRITE moves bytes of, and how many (WRITE) ...
    stats: _FileStats | None = None
    written: int = 0
    #: ... or the path an OPEN / OPENDIR names (to remember with its handle).
    opens: str | None = None


_ACTIONS: dict[str, tuple[EventCode, EventCode]] = {
    "open": (audit_log.SFTP_OPEN, audit_log.SFTP_OPEN_FAILURE),
    "setstat": (audit_log.SFTP_SETSTAT, audit_log.SFTP_SETSTAT_FAILURE),
    "fsetstat": (audit_log.SFTP_FSETSTAT, audit_log.SFTP_FSETSTAT_FAILURE),
    "opendir": (audit_log.SFTP_OPENDIR, audit_log.SFTP_OPENDIR_FAILURE),
    "remove": (audit_log.SFTP_REMOVE, audit_log.SFTP_REMOVE_FAILURE),
    "mkdir": (audit_log.SFTP_MKDIR, audit_log.SFTP_MKDIR_FAILURE),
    "rmdir": (audit_log.SFTP_RMDIR, audit_log.SFTP_RMDIR_FAILURE),
    "rename": (audit_log.SFTP_RENAME, audit_log.SFTP_RENAME_FAILURE),
    "symlink": (audit_log.SFTP_SYMLINK, audit_log.SFTP_SYMLINK_FAILURE),
    "link": (audit_log.SFTP_LINK, audit_log.SFTP_LINK_FAILURE),
}


class SftpAuditor:
    """Turns the two byte streams of one SFTP session into audit events.

    Feed it with :meth:`client_data` (what the client sent, before it goes to the
    server) and :meth:`server_data` (what the server answered); each returns the
    events completed by those bytes as ``(code, fields)`` pairs. :meth:`summary`
    gives the closing ``sftp_summary`` event. Never raises: a stream it cannot
    follow (the server ends such a session too) stops the auditing, and
    :attr:`broken` says so.

    Args:
        working_directory: where the session's relative paths start.
    """

    def __init__(self, working_directory: str) -> None:
        self.cwd = working_directory or "/"
        self._requests = sftp.ServerSession()
        self._responses = sftp.Framer()
        self._pending: dict[int, _Pending] = {}
        self._handles: dict[bytes, _FileStats] = {}
        self._files: list[_FileStats] = []
        #: The streams could not be followed; nothing more is reported.
        self.broken = False
        #: Requests whose answer was not tracked (too many outstanding).
        self.untracked = 0
        #: Opened files left out of the summary (more than MAX_SUMMARY_FILES).
        self.files_omitted = 0

    # --- input ---------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[tuple[EventCode, dict[str, Any]]]:
        if self.broken:
            return []
        self._requests.receive_data(data)
        try:
            while (request := self._requests.next_request()) is not None:
                self._on_request(request)
        except RemoteProtocolError:
            self.broken = True
        return []

    def server_data(self, data: bytes) -> list[tuple[EventCode, dict[str, Any]]]:
        if self.broken:
            return []
        self._responses.receive_data(data)
        out: list[tuple[EventCode, dict[str, Any]]] = []
        try:
            for payload in self._responses.payloads():
                response = sftp.decode_response(payload)
                if isinstance(response, sftp.Version):
                    continue
                event = self._on_response(response)
                if event is not None:
                    out.append(event)
        except DecodeError:
            self.broken = True
        return out

    def summary(self) -> tuple[EventCode, dict[str, Any]] | None:
        """The ``sftp_summary`` event for the files whose bytes moved (None: none did)."""
        moved = [f for f in self._files if f.bytes_read or f.bytes_written]
        if not moved and not self.files_omitted:
            return None
        stats = [
            {"path": f.path, "bytes_read": f.bytes_read, "bytes_written": f.bytes_written}
            for f in moved
        ]
        fields: dict[str, Any] = {"working_directory": self.cwd, "file_transfer_stats": stats}
        if self.files_omitted:
            fields["files_omitted"] = self.files_omitted
        return audit_log.SFTP_SUMMARY, fields

    # --- requests ------------------------------------------------------------------

    def _path(self, raw: bytes) -> str:
        text = _text(raw)
        return posixpath.join(self.cwd, text) if text else self.cwd

    def _handle_path(self, handle: bytes) -> str:
        known = self._handles.get(handle)
        return known.path if known is not None else f"<unknown handle {handle.hex()}>"

    def _on_request(self, r: sftp.Request) -> None:
        pending = self._pending_for(r)
        if pending is None:
            return
        request_id = r.id  # type: ignore[union-attr]
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
            self.untracked += 1
        self._pending[request_id] = pending

    def _pending_for(self, r: sftp.Request) -> _Pending | None:
        if isinstance(r, sftp.Read):
            stats = self._handles.get(r.handle)
            return _Pending(None, stats=stats) if stats is not None else None
        if isinstance(r, sftp.Write):
            stats = self._handles.get(r.handle)
            return _Pending(None, stats=stats, written=len(r.data)) if stats is not None else None
        if isinstance(r, sftp.Open):
            path = self._path(r.filename)
            return _Pending("open", {"path": path, "flags": flag_names(r.pflags)}, opens=path)
        if isinstance(r, sftp.Opendir):
            path = self._path(r.path)
            return _Pending("opendir", {"path": path}, opens=path)
        if isinstance(r, sftp.Setstat | sftp.Lsetstat):
            fields = {"path": self._path(r.path), "attributes": attribute_fields(r.attrs)}
            return _Pending("setstat", fields)
        if isinstance(r, sftp.Fsetstat):
            fields = {"path": self._handle_path(r.handle), "attributes": attribute_fields(r.attrs)}
            return _Pending("fsetstat", fields)
        if isinstance(r, sftp.Remove):
            return _Pending("remove", {"path": self._path(r.filename)})
        if isinstance(r, sftp.Mkdir):
            return _Pending("mkdir", {"path": self._path(r.path)})
        if isinstance(r, sftp.Rmdir):
            return _Pending("rmdir", {"path": self._path(r.path)})
        if isinstance(r, sftp.Rename | sftp.PosixRename):
            fields = {"path": self._path(r.oldpath), "target_path": self._path(r.newpath)}
            return _Pending("rename", fields)
        if isinstance(r, sftp.Symlink):
            # The link's target is stored as given (relative to the link), not joined.
            fields = {"path": self._path(r.link), "target_path": _text(r.target)}
            return _Pending("symlink", fields)
        if isinstance(r, sftp.Hardlink):
            fields = {"path": self._path(r.newpath), "target_path": self._path(r.oldpath)}
            return _Pending("link", fields)
        if isinstance(r, sftp.Close):
            self._handles.pop(r.handle, None)  # the name may be reused by the next OPEN
        return None

    # --- responses -----------------------------------------------------------------

    def _remember(self, stats: _FileStats) -> None:
        """Keep an opened file for the summary (bounded: closed files that moved
        nothing make room first, then further files are only counted)."""
        if len(self._files) >= MAX_SUMMARY_FILES:
            open_now = {id(s) for s in self._handles.values()}
            self._files = [
                f for f in self._files if f.bytes_read or f.bytes_written or id(f) in open_now
            ]
        if len(self._files) >= MAX_SUMMARY_FILES:
            self.files_omitted += 1
        else:
            self._files.append(stats)

    def _on_response(self, response: sftp.Response) -> tuple[EventCode, dict[str, Any]] | None:
        pending = self._pending.pop(getattr(response, "id", -1), None)
        if pending is None:
            return None
        ok = isinstance(response, sftp.Status) and response.code == sftp.StatusCode.OK
        if pending.stats is not None:
            if isinstance(response, sftp.Data):
                pending.stats.bytes_read += len(response.data)
            elif ok:
                pending.stats.bytes_written += pending.written
        if isinstance(response, sftp.Handle):
            ok = True
            if pending.opens is not None:
                stats = _FileStats(pending.opens)
                self._handles[response.handle] = stats
                if pending.action == "open":
                    self._remember(stats)
        if pending.action is None:
            return None
        fields = {"action": pending.action, "working_directory": self.cwd, **pending.fields}
        success, failure = _ACTIONS[pending.action]
        if ok:
            return success, {**fields, "success": True}
        message = response.message if isinstance(response, sftp.Status) else "unexpected reply"
        return failure, {**fields, "success": False, "error": message or "failed"}
