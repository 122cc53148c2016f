"""The embedded default :class:`~trioport.store.backend.Backend`: one SQLite file.

The shape follows Teleport's ``lib/backend/lite``. Three tables:

* ``kv(key, value, expires, revision)``: the items, keyed by the key's UTF-8 bytes
  so that ranges are plain ``key >= prefix AND key < range_end(prefix)`` scans.
* ``events(id, type, key, value, expires, created)``: one row per change, written in
  the same transaction as the change. ``id`` is ``AUTOINCREMENT``, so it is never
  reused, and it *is* the revision: an item's revision is the id of the event that
  wrote it.
* ``meta(name, value)``: the schema version.

Watches are fed by one poller task that tails ``events`` by id: immediately after
a write through this backend, and every ``poll_interval`` seconds to catch writes
from other processes (``tctl`` opening the same file). A sweeper task deletes
expired items (writing their DELETE events) every ``sweep_interval`` seconds and
prunes events older than ``event_retention`` seconds. A watcher that needs a
pruned event is broken and must resync.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so a write
is on disk before its call returns, and a process killed at any moment (even
``kill -9``) loses nothing it acknowledged. Writes run on a worker thread under a
``CapacityLimiter(1)`` (one writer, each write one ``BEGIN IMMEDIATE``
transaction); reads use a second connection and never wait for a writer. If
another process holds the write lock for longer than ``busy_timeout`` the write
raises :class:`~trioport.errors.BackendUnavailable` saying the database is locked.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from trioport.errors import (
    AlreadyExists,
    BackendUnavailable,
    CompareFailed,
    NotFound,
    StoreError,
)
from trioport.store.backend import (
    DEFAULT_MAX_PENDING,
    Background,
    Clock,
    Event,
    EventType,
    Fanout,
    Item,
    background_tasks,
    check_key,
    check_limit,
    check_prefix,
    check_prefixes,
    range_end,
)

__all__ = ["SCHEMA_VERSION", "SQLiteBackend", "open_sqlite_backend"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kv (
        key BLOB PRIMARY KEY,
        value BLOB NOT NULL,
        expires REAL,
        revision INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        expires REAL,
        created REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID",
)

#: Rows read or swept per batch, so no transaction or poll grows without bound.
_BATCH = 1000

_T = TypeVar("_T")
_Row = tuple[bytes, bytes, float | None, int]


class SQLiteBackend:
    """A store in one SQLite file; open it with :func:`open_sqlite_backend`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.5,
        sweep_interval: float = 1.0,
        event_retention: float = 600.0,
    ) -> None:
        self.clock = clock
        self.path = os.path.abspath(os.fspath(path))
        self.directory = os.path.dirname(self.path)
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.event_retention = event_retention
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._fanout = Fanout()
        self._cursor = 0  # the last event id handed to the fanout
        self._wake = trio.Event()
        self._poll_lock = trio.Lock()
        self._background: Background | None = None
        self._closed = False

    # --- reads ---------------------------------------------------------------

    async def get(self, key: str) -> Item:
        """See :meth:`Backend.get`."""
        check_key(key)
        row = await self._read(_select_live, key.encode(), self.clock())
        if row is None:
            raise NotFound(f"key {key!r} not found")
        return _item(row)

    async def get_range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """See :meth:`Backend.get_range`."""
        check_prefix(prefix)
        check_limit(limit)
        rows = await self._read(_select_range, prefix.encode(), self.clock(), limit)
        return [_item(row) for row in rows]

    # --- writes --------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        """See :meth:`Backend.put`."""
        return await self._write(_put, item, self.clock())

    async def create(self, item: Item) -> Item:
        """See :meth:`Backend.create`."""

        def create(conn: sqlite3.Connection, now: float) -> Item:
            if _select_live(conn, item.key.encode(), now) is not None:
                raise AlreadyExists(f"key {item.key!r} already exists")
            return _put(conn, item, now)

        return await self._write(create, self.clock())

    async def update(self, item: Item) -> Item:
        """See :meth:`Backend.update`."""

        def update(conn: sqlite3.Connection, now: float) -> Item:
            if _select_live(conn, item.key.encode(), now) is None:
                raise NotFound(f"key {item.key!r} not found")
            return _put(conn, item, now)

        return await self._write(update, self.clock())

    async def compare_and_swap(self, expected: Item, replace_with: Item) -> Item:
        """See :meth:`Backend.compare_and_swap`."""
        if expected.key != replace_with.key:
            raise ValueError(f"compare_and_swap of {expected.key!r} with {replace_with.key!r}")

        def swap(conn: sqlite3.Connection, now: float) -> Item:
            row = _select_live(conn, expected.key.encode(), now)
            if row is None:
                raise CompareFailed(f"key {expected.key!r} not found")
            if not hmac.compare_digest(row[1], expected.value):
                raise CompareFailed(f"key {expected.key!r} has a different value")
            return _put(conn, replace_with, now)

        return await self._write(swap, self.clock())

    async def delete(self, key: str) -> None:
        """See :meth:`Backend.delete`."""
        check_key(key)

        def delete(conn: sqlite3.Connection, now: float) -> None:
            if _select_live(conn, key.encode(), now) is None:
                raise NotFound(f"key {key!r} not found")
            _remove(conn, key.encode(), now)

        await self._write(delete, self.clock())

    async def delete_range(self, prefix: str) -> int:
        """See :meth:`Backend.delete_range`."""
        check_prefix(prefix)
        start = prefix.encode()

        def delete_range(conn: sqlite3.Connection, now: float) -> int:
            rows = conn.execute(
                "SELECT key, expires FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (start, range_end(start)),
            ).fetchall()
            for key, _expires in rows:
                _remove(conn, key, now)
            return sum(1 for _key, expires in rows if expires is None or expires > now)

        return await self._write(delete_range, self.clock())

    async def keep_alive(self, key: str, expires: float | None) -> Item:
        """See :meth:`Backend.keep_alive`."""
        check_key(key)
        # Validates ``expires`` the way every Item does.
        Item(key, expires=expires)

        def keep_alive(conn: sqlite3.Connection, now: float) -> Item:
            row = _select_live(conn, key.encode(), now)
            if row is None:
                raise NotFound(f"key {key!r} not found")
            return _put(conn, Item(key, row[1], expires), now)

        return await self._write(keep_alive, self.clock())

    # --- watches -------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, prefixes: Sequence[str], *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> AsyncIterator[trio.abc.ReceiveChannel[Event]]:
        """See :meth:`Backend.watch`."""
        checked = check_prefixes(prefixes)
        # Under the poller's lock, no change is published between reading the
        # revision and registering: the watch misses nothing and sees nothing older.
        async with self._poll_lock:
            revision = await self._read(_current_revision)
            if not len(self._fanout):
                # Nobody was watching, so the poller stood still: skip what nobody needs.
                self._cursor = max(self._cursor, revision)
            channel = self._fanout.add(checked, max_pending, revision)
        try:
            yield channel
        finally:
            self._fanout.remove(channel)

    async def _poller(self) -> None:
        while True:
            with trio.move_on_after(self.poll_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if not len(self._fanout):
                continue
            try:
                async with self._poll_lock:
                    await self._poll()
            except StoreError as exc:
                log.warning("cannot read changes from %s (will retry): %s", self.path, exc)

    async def _poll(self) -> None:
        while len(self._fanout):
            cursor = self._cursor
            rows = await self._read(_select_events, cursor)
            if not rows:
                return
            if rows[0][0] > cursor + 1:  # ids have no gaps, so these were pruned
                self._fanout.break_all(
                    f"changes {cursor + 1}..{rows[0][0] - 1} were pruned from {self.path} "
                    "before this process read them; open a new watch and re-read (resync)"
                )
            self._cursor = max(self._cursor, rows[-1][0])
            self._fanout.publish(_event(row) for row in rows)
            if len(rows) < _BATCH:
                return

    # --- expiry --------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete expired items now (with their DELETE events) and prune old events.

        Returns:
            How many expired items were deleted.
        """
        now = self.clock()
        # Events this process has not handed to its watchers yet are kept.
        keep_from = self._cursor if len(self._fanout) else None
        total = 0
        while True:
            swept = await self._write(_sweep, now, now - self.event_retention, keep_from)
            total += swept
            if swept < _BATCH:
                return total

    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("cannot sweep expired items in %s (will retry): %s", self.path, exc)

    # --- lifetime ------------------------------------------------------------

    async def open(self) -> None:
        """Create the database (and its directory) if needed and connect."""
        await trio.to_thread.run_sync(self._open_sync, limiter=self._write_limiter)

    def _open_sync(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)  # no-op if it exists
            # The file holds CA keys: create it private before SQLite opens it
            # (SQLite gives its -wal and -shm files the same mode).
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise BackendUnavailable(f"cannot create the database {self.path}: {exc}") from exc
        try:
            self._writer = self._connect()
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path} cannot use WAL mode (journal mode is {mode})")
            self._writer.execute("PRAGMA synchronous=FULL")
            version = self._schema_version(self._writer)
            if version is None:
                _transaction(self._writer, _create_schema)
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; this trioport reads "
                    f"version {SCHEMA_VERSION}"
                )
            self._reader = self._connect()
            self._reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            self._close_sync()
            raise self._translate(exc) from exc
        except BaseException:
            self._close_sync()
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int | None:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if exists is None:
            return None
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    async def aclose(self) -> None:
        """See :meth:`Backend.aclose`."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._fanout.finish_all()
        if self._background is not None:
            await self._background.aclose()
        with trio.CancelScope(shield=True):
            # Taking both limiters waits for any running statement to finish.
            async with self._write_limiter, self._read_limiter:
                await trio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    # --- plumbing ------------------------------------------------------------

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed or self._reader is None:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the backend is closed")
        try:
            return await trio.to_thread.run_sync(
                functools.partial(fn, self._reader, *args), limiter=self._read_limiter
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def _write(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed or self._writer is None:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the backend is closed")
        try:
            result = await trio.to_thread.run_sync(
                functools.partial(_transaction, self._writer, fn, *args),
                limiter=self._write_limiter,
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        self._wake.set()
        return result

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary code of an extended one
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc):
            return BackendUnavailable(
                f"the database {self.path} is locked by another process "
                f"(gave up after waiting {self.busy_timeout:g} s)"
            )
        if isinstance(exc, sqlite3.OperationalError):
            return BackendUnavailable(f"the database {self.path}: {exc}")
        return StoreError(f"the database {self.path}: {exc}")


# --- statements, run on a worker thread ----------------------------------------------


def _transaction(conn: sqlite3.Connection, fn: Callable[..., _T], *args: Any) -> _T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)",
        (SCHEMA_VERSION,),
    )


def _select_live(conn: sqlite3.Connection, key: bytes, now: float) -> _Row | None:
    return conn.execute(
        "SELECT key, value, expires, revision FROM kv "
        "WHERE key = ? AND (expires IS NULL OR expires > ?)",
        (key, now),
    ).fetchone()


def _select_range(
    conn: sqlite3.Connection, prefix: bytes, now: float, limit: int | None
) -> list[_Row]:
    return conn.execute(
        "SELECT key, value, expires, revision FROM kv "
        "WHERE key >= ? AND key < ? AND (expires IS NULL OR expires > ?) "
        "ORDER BY key LIMIT ?",
        (prefix, range_end(prefix), now, -1 if limit is None else limit),
    ).fetchall()


def _current_revision(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return 0 if row is None else int(row[0])


def _select_events(conn: sqlite3.Connection, after: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, type, key, value, expires FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (after, _BATCH),
    ).fetchall()


def _put(conn: sqlite3.Connection, item: Item, now: float) -> Item:
    key = item.key.encode()
    cur = conn.execute(
        "INSERT INTO events (type, key, value, expires, created) VALUES ('put', ?, ?, ?, ?)",
        (key, item.value, item.expires, now),
    )
    revision = cur.lastrowid
    assert revision is not None
    conn.execute(
        "INSERT INTO kv (key, value, expires, revision) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET "
        "value = excluded.value, expires = excluded.expires, revision = excluded.revision",
        (key, item.value, item.expires, revision),
    )
    return Item(item.key, item.value, item.expires, revision)


def _remove(conn: sqlite3.Connection, key: bytes, now: float) -> None:
    conn.execute("DELETE FROM kv WHERE key = ?", (key,))
    conn.execute(
        "INSERT INTO events (type, key, value, expires, created) "
        "VALUES ('delete', ?, x'', NULL, ?)",
        (key, now),
    )


def _sweep(conn: sqlite3.Connection, now: float, cutoff: float, keep_from: int | None) -> int:
    keys = conn.execute(
        "SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ? LIMIT ?", (now, _BATCH)
    ).fetchall()
    for (key,) in keys:
        _remove(conn, key, now)
    if keep_from is None:
        conn.execute("DELETE FROM events WHERE created < ?", (cutoff,))
    else:
        conn.execute("DELETE FROM events WHERE created < ? AND id <= ?", (cutoff, keep_from))
    return len(keys)


def _item(row: _Row) -> Item:
    key, value, expires, revision = row
    return Item(key.decode(), value, expires, revision)


def _event(row: tuple[Any, ...]) -> Event:
    event_id, kind, key, value, expires = row
    if kind == "put":
        return Event(EventType.PUT, Item(key.decode(), value, expires, event_id))
    return Event(EventType.DELETE, Item(key.decode(), revision=event_id))


@asynccontextmanager
async def open_sqlite_backend(
    path: str | os.PathLike[str],
    *,
    clock: Clock = time.time,
    busy_timeout: float = 5.0,
    poll_interval: float = 0.5,
    sweep_interval: float = 1.0,
    event_retention: float = 600.0,
) -> AsyncIterator[SQLiteBackend]:
    """Open (creating if needed) the store in the SQLite file ``path``; close it on exit.

    Args:
        path: the database file. SQLite keeps ``-wal`` and ``-shm`` files next to
            it. A missing directory is created private to this user (0700), and
            a new file is created 0600.
        clock: the wall clock that decides expiry.
        busy_timeout: seconds a write waits for another process's lock before
            raising BackendUnavailable.
        poll_interval: seconds between polls for other processes' writes.
        sweep_interval: seconds between sweeps of expired items.
        event_retention: seconds change events are kept for lagging pollers.

    Raises:
        BackendUnavailable: the file cannot be created, opened or locked.
        StoreError: the file is not a trioport database of this schema version.
    """
    backend = SQLiteBackend(
        path,
        clock=clock,
        busy_timeout=busy_timeout,
        poll_interval=poll_interval,
        sweep_interval=sweep_interval,
        event_retention=event_retention,
    )
    await backend.open()
    try:
        async with background_tasks() as background:
            backend._background = background
            background.start_soon(backend._poller)
            background.start_soon(backend._sweeper)
            yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()
