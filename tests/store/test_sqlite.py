"""What the SQLite backend promises beyond the compliance suite: durability,
private files, clear errors when locked or handed a wrong file, and watches that
see other openers' writes."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.store.conftest import FAST, FakeClock
from trioport.errors import BackendUnavailable, StoreError
from trioport.store import EventType, Item, open_backend, open_sqlite_backend

WRITER = """
import sys, trio
from trioport.store.backend import Item
from trioport.store.sqlite import open_sqlite_backend

async def main(path):
    async with open_sqlite_backend(path) as db:
        i = 0
        while True:
            await db.put(Item(f"/acked/{i:08d}", b"x" * 2000 + str(i).encode()))
            print(i, flush=True)  # acknowledged: the put returned
            i += 1

trio.run(main, sys.argv[1])
"""

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO meta (name, value) VALUES ('held-by-test', 1)")
print("locked", flush=True)
sys.stdin.read()
"""


async def read_lines_until(stream: trio.abc.ReceiveStream, enough: int) -> bytes:
    data = b""
    while data.count(b"\n") < enough:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


async def test_state_survives_reopen_and_revisions_keep_growing(tmp_path: Path) -> None:
    async with open_sqlite_backend(tmp_path / "db") as db:
        first = await db.put(Item("/users/alice", b"alice", expires=2e9))
    async with open_sqlite_backend(tmp_path / "db") as db:
        assert await db.get("/users/alice") == first
        second = await db.put(Item("/users/bob", b"bob"))
        assert second.revision > first.revision


async def test_the_database_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "backend"
    async with open_sqlite_backend(directory / "sqlite.db") as db:
        await db.put(Item("/ca/key", b"secret"))
        files = sorted(p.name for p in directory.iterdir())
        assert files == ["sqlite.db", "sqlite.db-shm", "sqlite.db-wal"]
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WRITER, str(tmp_path / "db")], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    with trio.fail_after(60):
        output = await read_lines_until(process.stdout, 150)
        process.kill()  # SIGKILL, in the middle of the next write
        await process.wait()
        output += await read_lines_until(process.stdout, 10**9)
    assert process.returncode == -9
    acknowledged = [int(line) for line in output.split()]
    assert acknowledged == list(range(len(acknowledged)))
    assert len(acknowledged) >= 150

    conn = sqlite3.connect(tmp_path / "db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    async with open_sqlite_backend(tmp_path / "db") as db:
        stored = {item.key: item.value for item in await db.get_range("/acked/")}
    for i in acknowledged:
        assert stored[f"/acked/{i:08d}"] == b"x" * 2000 + str(i).encode()


async def test_a_locked_database_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with open_sqlite_backend(path, busy_timeout=0.2) as db:
        await db.put(Item("/users/alice", b"v1"))
        locker = await trio.lowlevel.open_process(
            [sys.executable, "-c", LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert locker.stdin is not None
        assert locker.stdout is not None
        try:
            with trio.fail_after(30):
                assert await read_lines_until(locker.stdout, 1) == b"locked\n"
            with pytest.raises(BackendUnavailable, match="locked by another process") as info:
                await db.put(Item("/users/alice", b"v2"))
            assert str(path) in str(info.value)
            # Readers do not wait for writers (WAL), and another opener still opens.
            assert (await db.get("/users/alice")).value == b"v1"
            async with open_sqlite_backend(path, busy_timeout=0.2) as other:
                assert (await other.get("/users/alice")).value == b"v1"
        finally:
            await locker.stdin.aclose()
            with trio.fail_after(30):
                await locker.wait()
        # The lock is gone (the holder rolled back); writing works again.
        await db.put(Item("/users/alice", b"v2"))
        assert (await db.get("/users/alice")).value == b"v2"


async def test_watchers_see_writes_from_another_opener(tmp_path: Path) -> None:
    async with (
        open_sqlite_backend(tmp_path / "db", poll_interval=FAST) as watcher_side,
        open_sqlite_backend(tmp_path / "db") as writer_side,
        watcher_side.watch(["/nodes/"]) as events,
    ):
        put = await writer_side.put(Item("/nodes/n1", b"hello"))
        await writer_side.delete("/nodes/n1")
        with trio.fail_after(10):
            first = await events.receive()
            second = await events.receive()
    assert (first.type, first.item) == (EventType.PUT, put)
    assert (second.type, second.item.key) == (EventType.DELETE, "/nodes/n1")


async def test_expired_items_and_old_events_leave_the_file(tmp_path: Path) -> None:
    clock = FakeClock()
    async with open_sqlite_backend(tmp_path / "db", clock=clock, event_retention=60) as db:
        for i in range(5):
            await db.put(Item(f"/nodes/{i}", b"v", expires=clock() + 10))
        await db.put(Item("/users/alice", b"v"))
        clock.advance(120)
        assert await db.sweep() == 5
        assert await db.sweep() == 0
    conn = sqlite3.connect(tmp_path / "db")
    try:
        assert conn.execute("SELECT key FROM kv").fetchall() == [(b"/users/alice",)]
        # The six puts are older than the retention; the five sweep deletions are not.
        assert conn.execute("SELECT count(*), min(type) FROM events").fetchone() == (5, "delete")
    finally:
        conn.close()


async def test_a_watcher_that_missed_pruned_events_must_resync(tmp_path: Path) -> None:
    clock = FakeClock()
    async with (
        # This side polls only after its own writes.
        open_sqlite_backend(tmp_path / "db", clock=clock, poll_interval=3600) as lagging,
        open_sqlite_backend(tmp_path / "db", clock=clock, event_retention=1) as pruner,
        lagging.watch(["/"]) as events,
    ):
        for i in range(3):
            await pruner.put(Item(f"/k/{i}", b"v"))
        clock.advance(10)
        await pruner.sweep()  # prunes the three events nobody on this side has read
        await lagging.put(Item("/k/mine", b"v"))  # wakes the lagging poller
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError, match="resync"):
            await events.receive()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "db").write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(StoreError, match="not a database") as info:
        async with open_sqlite_backend(tmp_path / "db"):
            pass
    assert str(tmp_path / "db") in str(info.value)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    async with open_sqlite_backend(tmp_path / "db"):
        pass
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        async with open_sqlite_backend(tmp_path / "db"):
            pass


async def test_an_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BackendUnavailable, match="cannot create"):
        async with open_sqlite_backend(blocker / "sub" / "db"):
            pass


async def test_open_backend_opens_sqlite_from_a_storage_section(tmp_path: Path) -> None:
    async with open_backend({"type": "sqlite", "path": str(tmp_path / "st.db")}) as db:
        await db.put(Item("/k", b"v"))
    # A missing path is backend/sqlite.db under the data directory.
    async with open_backend({"type": "sqlite"}, data_dir=str(tmp_path / "data")) as db:
        await db.put(Item("/k", b"w"))
    async with open_backend(
        {"type": "sqlite", "path": "backend/sqlite.db"}, data_dir=str(tmp_path / "data")
    ) as db:
        assert (await db.get("/k")).value == b"w"
    async with open_sqlite_backend(tmp_path / "st.db") as db:
        assert (await db.get("/k")).value == b"v"
