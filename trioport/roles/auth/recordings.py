"""Session recordings: uploaded in numbered chunks, complete only when marked so.

A node streams a session's recording to the auth service as it happens, in
chunks numbered 0, 1, 2, ... (:meth:`Recordings.append`). They are appended to
``<directory>/<sid>.part`` (the auth service uses ``data_dir/records``), next to a
small state file ``<sid>.part.state`` that says how many chunks and bytes are in.
The order is enforced: a chunk whose index is not the next one (a gap or a
duplicate) is refused with :class:`~trioport.errors.CompareFailed` naming the index
expected, so the node can resume from there (:meth:`Recordings.next_index`).

:meth:`Recordings.complete` flushes the file to disk and renames it to
``<sid>.rec``: the rename is the completion marker, atomic on POSIX. Only
``.rec`` files are listed (:meth:`Recordings.list`) and fetched
(:meth:`Recordings.fetch`). An upload that stops (the node crashed, the session
was cut) stays a ``.part`` for ever: it is never mistaken for a full recording
(:meth:`Recordings.list_incomplete` shows them to the operator), until someone
who knows the session is over marks it interrupted (:meth:`Recordings.interrupt`:
the node that ran it, when it starts again after a crash). That renames it to
``<sid>.cut``: kept, listed and fetched like a complete recording but flagged
``interrupted``, and never turned into a ``.rec``, so a truncated recording is
never marked complete.

Crash safety: the state file is replaced atomically *after* the chunk's bytes are
written. If the auth service dies between the two, the ``.part`` holds bytes the
state does not count; the next append cuts them off first, and the node resends
that chunk, so nothing is stored twice.

Disk errors: a write, flush or rename that fails (the disk is full, read-only or
failing) raises :class:`RecordingStorageError` naming the recording and the OS's
reason; the auth API answers it with ``507 storage_failed``. Nothing is counted
that was not written: the state file is only replaced after the chunk's bytes
are on disk, so a failed append leaves the recording as it was (a ``.part``,
never complete), and the node decides what the session does
(:mod:`trioport.roles.node.recorder`, the role option ``record_session``).

Session ids are checked against a strict pattern before they touch a path, so an
id like ``../../etc/passwd`` is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from trioport.errors import AlreadyExists, CompareFailed, NotFound, StoreError

__all__ = [
    "MAX_CHUNK_BYTES",
    "RecordingInfo",
    "RecordingStorageError",
    "Recordings",
    "check_session_id",
]

log = logging.getLogger("trioport.auth.recordings")

#: Largest chunk accepted in one append.
MAX_CHUNK_BYTES = 4 * 1024 * 1024
#: Largest piece returned by one fetch.
MAX_FETCH_BYTES = 16 * 1024 * 1024

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_PART, _STATE, _DONE, _CUT = ".part", ".part.state", ".rec", ".cut"


class RecordingStorageError(StoreError):
    """The recordings' disk refused a write, flush or rename (full, read-only, failing)."""


async def _on_disk(what: str, fn: Any, *args: Any) -> Any:
    """Run the blocking ``fn`` in a worker thread; an OSError becomes a RecordingStorageError."""
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        log.error("cannot store %s: %s", what, exc)
        raise RecordingStorageError(f"cannot store {what}: {reason} (errno {exc.errno})") from exc


def check_session_id(sid: str) -> str:
    """Return ``sid`` if it is a safe session id (a UUID, typically), else raise ValueError."""
    if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
        raise ValueError("a session id is 1 to 128 letters, digits, '-' or '_'")
    return sid


@attrs.frozen
class RecordingInfo:
    """A finished recording: its session id, size in bytes and completion time.

    ``interrupted``: the session was cut short (its node died); the recording
    holds what was uploaded before that and ends without an ``end`` event.
    """

    sid: str
    size: int
    completed: float
    interrupted: bool = False


@attrs.frozen
class _State:
    chunks: int
    size: int


class Recordings:
    """The recordings kept in one directory.

    Args:
        directory: where recordings are stored (created 0700 if missing).
        max_size: the largest recording accepted, in bytes (``None``: no limit).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_size: int | None = None) -> None:
        self.directory = trio.Path(directory)
        self.max_size = max_size
        self._locks: dict[str, trio.Lock] = {}

    def _paths(self, sid: str) -> tuple[trio.Path, trio.Path, trio.Path]:
        check_session_id(sid)
        return (
            self.directory / (sid + _PART),
            self.directory / (sid + _STATE),
            self.directory / (sid + _DONE),
        )

    async def _check_open(self, sid: str, done: trio.Path) -> None:
        if await done.exists():
            raise AlreadyExists(f"recording {sid} is already complete")
        if await (self.directory / (sid + _CUT)).exists():
            raise AlreadyExists(f"recording {sid} was marked interrupted")

    def _lock(self, sid: str) -> trio.Lock:
        return self._locks.setdefault(sid, trio.Lock())

    async def _state(self, state_path: trio.Path) -> _State:
        try:
            raw = json.loads(await state_path.read_bytes())
            return _State(chunks=int(raw["chunks"]), size=int(raw["size"]))
        except FileNotFoundError:
            return _State(chunks=0, size=0)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"corrupt recording state {state_path}: {exc}") from None

    async def next_index(self, sid: str) -> int:
        """The index the next chunk of ``sid`` must have (0 for a new upload).

        Raises:
            AlreadyExists: the recording is already complete.
        """
        _part, state_path, done = self._paths(sid)
        async with self._lock(sid):
            await self._check_open(sid, done)
            return (await self._state(state_path)).chunks

    async def append(self, sid: str, index: int, data: bytes) -> int:
        """Add chunk ``index`` of session ``sid``; return the index expected next.

        Raises:
            ValueError: a bad session id, a negative index, or a chunk over
                :data:`MAX_CHUNK_BYTES`.
            CompareFailed: ``index`` is not the next one (gap or duplicate).
            AlreadyExists: the recording is already complete.
            StoreError: the recording would exceed ``max_size``.
        """
        part, state_path, done = self._paths(sid)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"a chunk index is a non-negative integer, got {index!r}")
        if len(data) > MAX_CHUNK_BYTES:
            raise ValueError(f"a chunk is at most {MAX_CHUNK_BYTES} bytes")
        async with self._lock(sid):
            await self._check_open(sid, done)
            state = await self._state(state_path)
            if index != state.chunks:
                kind = "a duplicate" if index < state.chunks else "out of order"
                raise CompareFailed(
                    f"chunk {index} of recording {sid} is {kind}; expected chunk {state.chunks}"
                )
            if self.max_size is not None and state.size + len(data) > self.max_size:
                raise StoreError(f"recording {sid} would exceed {self.max_size} bytes")
            what = f"chunk {index} of recording {sid}"
            await _on_disk(what, _makedirs, os.fspath(self.directory))
            await _on_disk(what, _append_at, os.fspath(part), state.size, bytes(data))
            new = _State(chunks=state.chunks + 1, size=state.size + len(data))
            await _on_disk(what, _write_state, os.fspath(state_path), new)
            return new.chunks

    async def complete(self, sid: str, *, chunks: int | None = None) -> RecordingInfo:
        """Mark a recording complete: flush it and rename ``.part`` to ``.rec``.

        Args:
            sid: the session id.
            chunks: if given, the number of chunks the uploader sent; a mismatch
                (chunks lost on the way) refuses to complete.

        Raises:
            NotFound: no chunk of ``sid`` was uploaded.
            CompareFailed: ``chunks`` differs from the chunks received.
            AlreadyExists: already complete.
        """
        part, state_path, done = self._paths(sid)
        async with self._lock(sid):
            await self._check_open(sid, done)
            state = await self._state(state_path)
            if state.chunks == 0 or not await part.exists():
                raise NotFound(f"no upload of recording {sid}")
            if chunks is not None and chunks != state.chunks:
                raise CompareFailed(
                    f"recording {sid} has {state.chunks} chunks, the uploader sent {chunks}"
                )
            await _on_disk(
                f"recording {sid}",
                _finish,
                os.fspath(part),
                os.fspath(done),
                os.fspath(state_path),
                state.size,
            )
            stat = await done.stat()
        self._locks.pop(sid, None)
        return RecordingInfo(sid=sid, size=stat.st_size, completed=stat.st_mtime)

    async def interrupt(self, sid: str) -> RecordingInfo:
        """Keep what was uploaded of a recording whose session was cut short.

        The ``.part`` (cut to the bytes its state counts) becomes ``<sid>.cut``:
        listed and fetched, flagged ``interrupted``, closed to further chunks.

        Raises:
            NotFound: no chunk of ``sid`` was uploaded.
            AlreadyExists: already complete or already interrupted.
        """
        part, state_path, done = self._paths(sid)
        cut = self.directory / (sid + _CUT)
        async with self._lock(sid):
            await self._check_open(sid, done)
            state = await self._state(state_path)
            if state.chunks == 0 or not await part.exists():
                raise NotFound(f"no upload of recording {sid}")
            await _on_disk(
                f"recording {sid}",
                _finish,
                os.fspath(part),
                os.fspath(cut),
                os.fspath(state_path),
                state.size,
            )
            stat = await cut.stat()
        self._locks.pop(sid, None)
        return RecordingInfo(sid=sid, size=stat.st_size, completed=stat.st_mtime, interrupted=True)

    async def list(self) -> list[RecordingInfo]:
        """The finished recordings (complete or interrupted), oldest first."""
        out = []
        for suffix in (_DONE, _CUT):
            found = await trio.to_thread.run_sync(_scan, os.fspath(self.directory), suffix)
            out.extend(
                RecordingInfo(
                    sid=path[: -len(suffix)],
                    size=stat.st_size,
                    completed=stat.st_mtime,
                    interrupted=suffix == _CUT,
                )
                for path, stat in found
            )
        return sorted(out, key=lambda r: (r.completed, r.sid))

    async def list_incomplete(self) -> list[str]:
        """Session ids of uploads that were started and never completed."""
        found = await trio.to_thread.run_sync(_scan, os.fspath(self.directory), _PART)
        return sorted(name[: -len(_PART)] for name, _stat in found)

    async def fetch(self, sid: str, *, offset: int = 0, size: int | None = None) -> bytes:
        """Read a finished recording (or ``size`` bytes of it from ``offset``).

        An interrupted recording is read like a complete one.

        Raises:
            NotFound: no finished recording of ``sid`` (one still uploading included).
            ValueError: a bad session id, offset or size; or the recording is over
                :data:`MAX_FETCH_BYTES` and no ``size`` was given.
        """
        _part, _state_path, done = self._paths(sid)
        if offset < 0 or (size is not None and not 0 <= size <= MAX_FETCH_BYTES):
            raise ValueError(f"offset >= 0 and 0 <= size <= {MAX_FETCH_BYTES}")
        if not await done.exists():
            done = self.directory / (sid + _CUT)
        try:
            async with await trio.open_file(done, "rb") as f:
                if size is None:
                    total = os.fstat(f.fileno()).st_size
                    if total - offset > MAX_FETCH_BYTES:
                        raise ValueError(f"read recordings over {MAX_FETCH_BYTES} bytes in pieces")
                await f.seek(offset)
                return bytes(await f.read(-1 if size is None else size))
        except FileNotFoundError:
            raise NotFound(f"no complete recording of session {sid}") from None


# --- blocking helpers (run in worker threads) -------------------------------------


def _makedirs(directory: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)


def _append_at(path: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset``, cutting off anything after it (a torn earlier write)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)  # durable before the state file counts it
    finally:
        os.close(fd)


def _write_state(path: str, state: _State) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(attrs.asdict(state)).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _finish(part: str, done: str, state: str, size: int) -> None:
    fd = os.open(part, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)  # drop bytes of a torn write the state does not count
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(part, done)
    os.unlink(state)
    dir_fd = os.open(os.path.dirname(done) or ".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _scan(directory: str, suffix: str) -> list[tuple[str, os.stat_result]]:
    def entries() -> Iterator[tuple[str, os.stat_result]]:
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.name.endswith(suffix) and entry.is_file():
                        if _SESSION_ID.fullmatch(entry.name[: -len(suffix)]):
                            yield entry.name, entry.stat()
        except FileNotFoundError:
            return

    return list(entries())
