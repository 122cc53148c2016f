"""The audit log: what happened in the cluster, one JSON object per line, one file per day.

Events carry Teleport's stable names and codes (``lib/events/codes.go``), so tools
that read Teleport's audit log read ours: ``user.login`` / ``T1000I`` for a
successful local login, ``T1000W`` for a failed one, ``session.start`` /
``T2000I``, and so on (:class:`EventCode` and the constants below). Each line is
the flat record :meth:`~trioport.resources.AuditEvent.to_record` gives::

    {"event": "user.login", "code": "T1000I", "time": "2024-05-01T12:00:00.123456Z",
     "uid": "…", "user": "alice", "addr.remote": "192.0.2.7:51234", "success": true}

with the common fields ``user``, ``login``, ``sid`` (session id), ``server_id``,
``addr.local``, ``addr.remote``, ``success`` and ``error`` when they apply.

Files are ``<directory>/YYYY-MM-DD.log`` by the event's UTC date (the auth service
uses ``data_dir/log``), written through trio's async file API under one lock so
lines never interleave, and read back by :meth:`AuditLog.search` (time range and
event names).

Rules:

- **Escaping.** Every string that goes into an event (values and keys, at any depth)
  has its control characters replaced by visible escapes: C0/C1 controls, DEL,
  Unicode format characters (bidirectional overrides, zero-width joiners) and line
  or paragraph separators become ``\\xNN`` / ``\\uNNNN`` text. A user name like
  ``"alice\\x1b[2J"`` can neither forge a second line nor drive the terminal of the
  auditor who prints it.
- **Bounds.** A string longer than :data:`MAX_FIELD_CHARS` is cut, and says so.
- **Secrets.** Callers pass masked tokens (:func:`~trioport.resources.mask_secret`),
  never passwords or codes; this module does not know what is secret.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import unicodedata
import uuid
from collections.abc import AsyncGenerator, Collection, Mapping
from contextlib import aclosing
from typing import Any, NamedTuple

import trio

from trioport.resources import AuditEvent, AuditEventSpec, Metadata
from trioport.store.backend import Clock

__all__ = [
    "AGENT_FORWARD",
    "AGENT_FORWARD_FAILURE",
    "AUTH_ATTEMPT_FAILURE",
    "CERT_CREATE",
    "CLIENT_DISCONNECT",
    "EVENT_CODES",
    "EXEC",
    "EXEC_FAILURE",
    "INSTANCE_JOIN",
    "INSTANCE_JOIN_FAILURE",
    "JOIN_TOKEN_CREATE",
    "MAX_FIELD_CHARS",
    "PORT_FORWARD",
    "PORT_FORWARD_FAILURE",
    "RESET_PASSWORD_TOKEN_CREATE",
    "RESIZE",
    "ROLE_CREATED",
    "ROLE_DELETED",
    "ROLE_UPDATED",
    "SCP_DOWNLOAD",
    "SCP_UPLOAD",
    "SESSION_DATA",
    "SESSION_END",
    "SESSION_JOIN",
    "SESSION_LEAVE",
    "SESSION_RECORDING_ACCESS",
    "SESSION_REJECTED",
    "SESSION_START",
    "SESSION_UPLOAD",
    "SESSION_UPLOAD_FAILURE",
    "SFTP",
    "SFTP_FAILURE",
    "SFTP_FSETSTAT",
    "SFTP_FSETSTAT_FAILURE",
    "SFTP_LINK",
    "SFTP_LINK_FAILURE",
    "SFTP_MKDIR",
    "SFTP_MKDIR_FAILURE",
    "SFTP_OPEN",
    "SFTP_OPENDIR",
    "SFTP_OPENDIR_FAILURE",
    "SFTP_OPEN_FAILURE",
    "SFTP_REMOVE",
    "SFTP_REMOVE_FAILURE",
    "SFTP_RENAME",
    "SFTP_RENAME_FAILURE",
    "SFTP_RMDIR",
    "SFTP_RMDIR_FAILURE",
    "SFTP_SETSTAT",
    "SFTP_SETSTAT_FAILURE",
    "SFTP_SUMMARY",
    "SFTP_SYMLINK",
    "SFTP_SYMLINK_FAILURE",
    "SUBSYSTEM",
    "SUBSYSTEM_FAILURE",
    "USER_CREATE",
    "USER_DELETE",
    "USER_LOGIN",
    "USER_LOGIN_FAILURE",
    "USER_PASSWORD_CHANGE",
    "USER_UPDATE",
    "AuditLog",
    "EventCode",
    "escape_controls",
]

log = logging.getLogger(__name__)

#: Longest string kept in an event field; longer ones are cut (and marked).
MAX_FIELD_CHARS = 16 * 1024
#: Bytes read at a time when searching.
_READ_CHUNK = 1024 * 1024
#: Deepest nesting of lists and mappings kept in an event.
_MAX_DEPTH = 16


class EventCode(NamedTuple):
    """An event's Teleport name (``user.login``) and code (``T1000I``).

    The code's last letter is its severity: I(nfo), W(arning) or E(rror).
    """

    event: str
    code: str


# Teleport lib/events/codes.go and api.go: the names and codes tools expect.
USER_LOGIN = EventCode("user.login", "T1000I")
USER_LOGIN_FAILURE = EventCode("user.login", "T1000W")
USER_CREATE = EventCode("user.create", "T1002I")
USER_UPDATE = EventCode("user.update", "T1003I")
USER_DELETE = EventCode("user.delete", "T1004I")
USER_PASSWORD_CHANGE = EventCode("user.password_change", "T1005I")
SESSION_REJECTED = EventCode("session.rejected", "T1006W")
SESSION_START = EventCode("session.start", "T2000I")
SESSION_JOIN = EventCode("session.join", "T2001I")
RESIZE = EventCode("resize", "T2002I")
SESSION_LEAVE = EventCode("session.leave", "T2003I")
SESSION_END = EventCode("session.end", "T2004I")
SESSION_UPLOAD = EventCode("session.upload", "T2005I")
#: A recording that could not be stored (the auth service's disk, or a refusal).
SESSION_UPLOAD_FAILURE = EventCode("session.upload", "T2005E")
SESSION_DATA = EventCode("session.data", "T2006I")
SESSION_RECORDING_ACCESS = EventCode("session.recording.access", "T2012I")
SUBSYSTEM = EventCode("subsystem", "T3001I")
SUBSYSTEM_FAILURE = EventCode("subsystem", "T3001E")
EXEC = EventCode("exec", "T3002I")
EXEC_FAILURE = EventCode("exec", "T3002E")
PORT_FORWARD = EventCode("port", "T3003I")
#: ``ssh -A``: agent forwarding granted or refused on a session (Teleport has no
#: event of its own for it; trioport's code sits in a range Teleport does not use).
AGENT_FORWARD = EventCode("agent.forward", "TP001I")
AGENT_FORWARD_FAILURE = EventCode("agent.forward", "TP001E")
PORT_FORWARD_FAILURE = EventCode("port", "T3003E")
SCP_DOWNLOAD = EventCode("scp", "T3004I")
SCP_UPLOAD = EventCode("scp", "T3005I")
CLIENT_DISCONNECT = EventCode("client.disconnect", "T3006I")
AUTH_ATTEMPT_FAILURE = EventCode("auth", "T3007W")
#: Teleport gives each SFTP operation its own TS0xx code, numbered in the order of
#: the SFTP packet types (open, close, read, write, lstat, fstat, setstat, fsetstat,
#: opendir, readdir, remove, mkdir, rmdir, realpath, stat, rename, readlink,
#: symlink, link); E instead of I when the operation failed. The node audits those
#: that open or change something (``trioport.roles.node.sftp_audit``).
SFTP_OPEN = EventCode("sftp", "TS001I")
SFTP_OPEN_FAILURE = EventCode("sftp", "TS001E")
SFTP_SETSTAT = EventCode("sftp", "TS007I")
SFTP_SETSTAT_FAILURE = EventCode("sftp", "TS007E")
SFTP_FSETSTAT = EventCode("sftp", "TS008I")
SFTP_FSETSTAT_FAILURE = EventCode("sftp", "TS008E")
SFTP_OPENDIR = EventCode("sftp", "TS009I")
SFTP_OPENDIR_FAILURE = EventCode("sftp", "TS009E")
SFTP_REMOVE = EventCode("sftp", "TS011I")
SFTP_REMOVE_FAILURE = EventCode("sftp", "TS011E")
SFTP_MKDIR = EventCode("sftp", "TS012I")
SFTP_MKDIR_FAILURE = EventCode("sftp", "TS012E")
SFTP_RMDIR = EventCode("sftp", "TS013I")
SFTP_RMDIR_FAILURE = EventCode("sftp", "TS013E")
SFTP_RENAME = EventCode("sftp", "TS016I")
SFTP_RENAME_FAILURE = EventCode("sftp", "TS016E")
SFTP_SYMLINK = EventCode("sftp", "TS018I")
SFTP_SYMLINK_FAILURE = EventCode("sftp", "TS018E")
SFTP_LINK = EventCode("sftp", "TS019I")
SFTP_LINK_FAILURE = EventCode("sftp", "TS019E")
#: The earlier names of the open codes.
SFTP = SFTP_OPEN
SFTP_FAILURE = SFTP_OPEN_FAILURE
#: Bytes read and written per file, when an SFTP session ends.
SFTP_SUMMARY = EventCode("sftp_summary", "TS021I")
RESET_PASSWORD_TOKEN_CREATE = EventCode("reset_password_token.create", "T6000I")
#: Teleport's ProvisionTokenCreateCode (T7000I is trusted_cluster.create).
JOIN_TOKEN_CREATE = EventCode("join_token.create", "TJT00I")
ROLE_CREATED = EventCode("role.created", "T9000I")
ROLE_DELETED = EventCode("role.deleted", "T9001I")
ROLE_UPDATED = EventCode("role.updated", "T9002I")
INSTANCE_JOIN = EventCode("instance.join", "TJ002I")
INSTANCE_JOIN_FAILURE = EventCode("instance.join", "TJ002E")
CERT_CREATE = EventCode("cert.create", "TC000I")

#: Every code above, by code.
EVENT_CODES: dict[str, EventCode] = {
    c.code: c for name, c in list(globals().items()) if isinstance(c, EventCode) and name.isupper()
}

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def escape_controls(text: str) -> str:
    """Replace control, format and separator characters by visible escapes.

    ``"a\\x1bb"`` becomes the seven characters ``a\\x1bb`` (a backslash, ``x1b``);
    U+202E (right-to-left override) becomes ``\\u202e``. Printable text, including
    non-ASCII letters, is kept as it is.
    """
    if text.isprintable() and text.isascii():
        return text  # the common case, fast
    out = []
    for ch in text:
        if unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _clean(value: object, depth: int = 0) -> Any:
    """A JSON-safe, escaped, bounded copy of ``value``."""
    if isinstance(value, str):
        if len(value) > MAX_FIELD_CHARS:
            value = value[:MAX_FIELD_CHARS] + f"...[{len(value) - MAX_FIELD_CHARS} more chars]"
        return escape_controls(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if depth >= _MAX_DEPTH:
        return "[nested too deeply]"
    if isinstance(value, Mapping):
        return {escape_controls(str(k)): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return _clean(value.decode("utf-8", "backslashreplace"), depth)
    return escape_controls(str(value))


def _day(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d")


_DAY_FILE = re.compile(r"\d{4}-\d{2}-\d{2}\.log")


def _as_datetime(value: float | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(value, tz=dt.UTC)


class AuditLog:
    """Writes and searches the JSON-lines audit log in one directory.

    Args:
        directory: where the ``YYYY-MM-DD.log`` files go (created 0700 if missing).
        clock: wall clock for event times (the backend's ``clock``).
    """

    def __init__(self, directory: str | os.PathLike[str], *, clock: Clock) -> None:
        self.directory = trio.Path(directory)
        self.clock = clock
        self._lock = trio.Lock()
        self._file: Any = None
        self._file_day: str | None = None
        self._closed = False

    async def emit(
        self,
        code: EventCode,
        *,
        user: str | None = None,
        login: str | None = None,
        sid: str | None = None,
        server_id: str | None = None,
        addr_local: str | None = None,
        addr_remote: str | None = None,
        success: bool | None = None,
        error: str | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> AuditEvent:
        """Append one event and return it.

        Args:
            code: what happened (:class:`EventCode`).
            user / login / sid / server_id / addr_local / addr_remote / success / error:
                the common fields, left out when ``None``. ``addr_local`` and
                ``addr_remote`` are written as ``addr.local`` and ``addr.remote``.
            fields: anything else (JSON values); escaped and bounded like the rest.
                The names ``event``, ``code``, ``time`` and ``uid`` are reserved.

        Raises:
            OSError: the log file cannot be written. The caller decides whether
                the action it was logging may go ahead without its record.
            trio.ClosedResourceError: the log was closed.
        """
        common = {
            "user": user,
            "login": login,
            "sid": sid,
            "server_id": server_id,
            "addr.local": addr_local,
            "addr.remote": addr_remote,
            "success": success,
            "error": error,
        }
        record: dict[str, Any] = {k: v for k, v in common.items() if v is not None}
        for key, value in (fields or {}).items():
            if key in ("event", "code", "time", "uid"):
                raise ValueError(f"audit field name {key!r} is reserved")
            record[key] = value
        event = AuditEvent(
            metadata=Metadata(name=str(uuid.uuid4())),
            spec=AuditEventSpec(
                event=code.event,
                code=code.code,
                time=dt.datetime.fromtimestamp(self.clock(), tz=dt.UTC),
                fields=_clean(record),
            ),
        )
        line = json.dumps(event.to_record(), ensure_ascii=False, separators=(",", ":")) + "\n"
        async with self._lock:
            if self._closed:
                raise trio.ClosedResourceError("the audit log is closed")
            handle = await self._open_for(_day(event.spec.time))
            await handle.write(line.encode("utf-8"))
            await handle.flush()
        return event

    async def _open_for(self, day: str) -> Any:
        if self._file is not None and self._file_day == day:
            return self._file
        if self._file is not None:
            await self._file.aclose()
            self._file = None
        await self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = os.fspath(self.directory / f"{day}.log")
        fd = await trio.to_thread.run_sync(
            lambda: os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        )
        self._file = trio.wrap_file(os.fdopen(fd, "ab"))
        self._file_day = day
        return self._file

    async def search(
        self,
        *,
        since: float | dt.datetime,
        until: float | dt.datetime,
        events: Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """The events with ``since <= time < until``, oldest first.

        Args:
            since / until: epoch seconds or datetimes (naive ones are UTC).
            events: keep only these event names (``"user.login"``) or codes
                (``"T1000W"``); ``None`` keeps all.
            limit: stop after this many.

        A line that does not parse (a write cut short by a crash) is skipped and
        logged; it never hides the lines after it.
        """
        start, end = _as_datetime(since), _as_datetime(until)
        if end <= start:
            return []
        wanted = set(events) if events is not None else None
        found: list[AuditEvent] = []
        # Only the days that have a file: a wide range must not cost a step per day.
        first, last = start.date().isoformat(), end.date().isoformat()
        try:
            names = await trio.to_thread.run_sync(os.listdir, os.fspath(self.directory))
        except FileNotFoundError:
            return []
        days = sorted(
            n.removesuffix(".log")
            for n in names
            if _DAY_FILE.fullmatch(n) and first <= n.removesuffix(".log") <= last
        )
        for day in days:
            path = self.directory / f"{day}.log"
            async with aclosing(_lines(path)) as lines:
                async for number, raw in lines:
                    event = _parse_line(raw, f"{path}:{number}")
                    if event is None or not start <= event.spec.time < end:
                        continue
                    if wanted is not None and not ({event.spec.event, event.spec.code} & wanted):
                        continue
                    found.append(event)
                    if limit is not None and len(found) >= limit:
                        return found
        return found

    async def aclose(self) -> None:
        """Close the current file; later :meth:`emit` calls raise ClosedResourceError."""
        async with self._lock:
            self._closed = True
            if self._file is not None:
                await self._file.aclose()
                self._file = None


async def _lines(path: trio.Path) -> AsyncGenerator[tuple[int, bytes], None]:
    """The lines of a file with their numbers, read in bounded chunks."""
    number = 0
    rest = b""
    async with await trio.open_file(path, "rb") as f:
        while chunk := await f.read(_READ_CHUNK):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                number += 1
                yield number, line
    if rest:
        yield number + 1, rest


def _parse_line(raw: bytes, where: str) -> AuditEvent | None:
    if not raw.strip():
        return None
    try:
        return AuditEvent.from_record(json.loads(raw), source=where)
    except Exception as exc:  # a torn or foreign line must not hide the rest
        log.warning("skipping unreadable audit log line %s: %s", where, exc)
        return None
